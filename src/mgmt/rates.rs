//! Rates from counts: the control plane keeps the last two readings of
//! each queue's counts (and the node's), and a rate is the change since
//! the older reading that is at least `RATE_SAMPLE_MIN` old, per second.
//! Readings are taken when someone asks, so rates cost nothing while
//! nobody watches; a poller every few seconds (as RabbitMQ's UI and
//! monitoring agents poll) sees rates over its own interval.

use std::collections::HashMap;
use std::time::Instant;

use crate::config;

/// Counts per queue, in this order (see `QUEUE_FIELDS`).
pub(crate) const QUEUE_FIELDS: usize = 10;
/// Counts per shard for /api/overview's `warren_shards`: messages its
/// connections published, messages its queues delivered, and its
/// reactor's busy time in microseconds (whose rate per second, divided by
/// a million, is the busy fraction).
pub(crate) const SHARD_FIELDS: usize = 3;

#[derive(Clone, Copy)]
struct Reading<const N: usize> {
    at: Instant,
    counts: [u64; N],
}

#[derive(Default)]
pub(crate) struct Readings<const N: usize> {
    last: Option<Reading<N>>,
    older: Option<Reading<N>>,
}

impl<const N: usize> Readings<N> {
    /// Rates per second of each count, from `counts` read `now`, and
    /// remembers the reading.
    pub(crate) fn observe(&mut self, now: Instant, counts: [u64; N]) -> [f64; N] {
        self.observe_since(now, counts).unwrap_or([0.0; N])
    }

    /// As `observe`, but None when there was no earlier reading to compare
    /// with (the first time someone asks).
    pub(crate) fn observe_since(&mut self, now: Instant, counts: [u64; N]) -> Option<[f64; N]> {
        let min = config::MANAGEMENT_RATE_SAMPLE_MIN;
        let base = match (self.last, self.older) {
            (Some(last), _) if now.duration_since(last.at) >= min => Some(last),
            (_, Some(older)) => Some(older),
            (Some(last), None) => Some(last),
            (None, None) => None,
        };
        let rates = base.map(|base| {
            let mut rates = [0.0; N];
            let seconds = now.duration_since(base.at).as_secs_f64();
            if seconds > 0.0 {
                for (i, rate) in rates.iter_mut().enumerate() {
                    let change = counts[i] as f64 - base.counts[i] as f64;
                    // One decimal, as RabbitMQ's UI shows them.
                    *rate = (change / seconds * 10.0).round() / 10.0;
                }
            }
            rates
        });
        match self.last {
            Some(last) if now.duration_since(last.at) < min => {}
            _ => {
                self.older = self.last;
                self.last = Some(Reading { at: now, counts });
            }
        }
        rates
    }
}

/// The readings the API keeps, on its own thread.
#[derive(Default)]
pub(crate) struct Rates {
    pub(crate) queues: HashMap<(u16, u64), Readings<QUEUE_FIELDS>>,
    pub(crate) overview: Readings<QUEUE_FIELDS>,
    /// By shard index.
    pub(crate) shards: Vec<Readings<SHARD_FIELDS>>,
}

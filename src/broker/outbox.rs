//! What a shard has for one peer: the batch it is filling, emptied batches
//! to fill next, and when the last one went (`--mailbox-interval-us`).
//!
//! Every batch that reaches a sleeping peer wakes it, and every sleep costs
//! the peer a `membarrier` (glommio); under heavy traffic a shard therefore
//! sends each peer at most one batch per interval, unless the batch is
//! full. Light traffic is never held: a batch after a small one goes at
//! the end of the reactor turn that filled it, so a confirm or a reply at a
//! moderate rate waits for nothing.
//!
//! Emptied batches from the peer are filled again as the next batch to it:
//! a batch then never grows from nothing (a realloc and copy at every
//! doubling) and is rarely freed on another thread than the one that
//! allocated it.

use std::time::{Duration, Instant};

use super::ShardMsg;
use crate::config::{
    MAILBOX_BATCH_FULL, MAILBOX_HOLD_AFTER, SPARE_BATCHES_MAX, SPARE_BATCH_CAPACITY_MAX,
};

/// A shard's outgoing side towards one peer.
pub(crate) struct Outbox {
    batch: Vec<ShardMsg>,
    spares: Vec<Vec<ShardMsg>>,
    pace: MailboxPace,
}

impl Outbox {
    pub(crate) fn new(now: Instant) -> Outbox {
        Outbox {
            batch: Vec::new(),
            spares: Vec::new(),
            pace: MailboxPace::new(now),
        }
    }

    /// Adds `msg` to the batch; true if it was the first (the flusher is
    /// to be woken).
    pub(crate) fn push(&mut self, msg: ShardMsg) -> bool {
        self.batch.push(msg);
        self.batch.len() == 1
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.batch.len()
    }

    /// The batch, to send now, with an emptied one in its place; or, when
    /// `now` is given and the pace holds it, the instant it is due.
    pub(crate) fn take(
        &mut self,
        now: Option<Instant>,
        interval: Duration,
    ) -> Result<Vec<ShardMsg>, Instant> {
        if let Some(now) = now {
            let len = self.batch.len();
            if let Some(at) = self.pace.held_until(now, interval, len) {
                return Err(at);
            }
            self.pace.sent(now, len);
        }
        let spare = self.spares.pop().unwrap_or_default();
        Ok(std::mem::replace(&mut self.batch, spare))
    }

    /// A batch the mailbox refused: it goes first again, before anything
    /// added since.
    pub(crate) fn put_back(&mut self, batch: Vec<ShardMsg>) {
        let mut newer = std::mem::replace(&mut self.batch, batch);
        if newer.is_empty() {
            self.spares.push(newer);
        } else {
            self.batch.append(&mut newer);
        }
    }

    /// A batch this peer sent and this shard emptied, kept to be filled
    /// again unless enough are kept or it grew large in a burst.
    pub(crate) fn recycle(&mut self, batch: Vec<ShardMsg>) {
        debug_assert!(batch.is_empty());
        if self.spares.len() < SPARE_BATCHES_MAX && batch.capacity() <= SPARE_BATCH_CAPACITY_MAX {
            self.spares.push(batch);
        }
    }
}

/// The last batch a shard sent one peer.
#[derive(Clone, Copy, Debug)]
struct MailboxPace {
    sent_at: Instant,
    sent_len: usize,
}

impl MailboxPace {
    fn new(now: Instant) -> MailboxPace {
        MailboxPace {
            sent_at: now,
            sent_len: 0,
        }
    }

    /// When a batch of `len` messages may go: `None` for now, or the
    /// instant the interval since the last batch ends.
    fn held_until(&self, now: Instant, interval: Duration, len: usize) -> Option<Instant> {
        let at = self.sent_at + interval;
        let heavy = self.sent_len >= MAILBOX_HOLD_AFTER;
        (heavy && at > now && len < MAILBOX_BATCH_FULL).then_some(at)
    }

    /// A batch of `len` messages went at `now`.
    fn sent(&mut self, now: Instant, len: usize) {
        self.sent_at = now;
        self.sent_len = len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ids::{ConsumerId, QueueId};

    fn msg() -> ShardMsg {
        ShardMsg::ConsumerResume {
            queue: QueueId(1),
            consumer: ConsumerId(1),
        }
    }

    #[test]
    fn an_emptied_batch_is_filled_again() {
        let t0 = Instant::now();
        let mut outbox = Outbox::new(t0);
        assert!(outbox.push(msg()));
        assert!(!outbox.push(msg()));
        let mut sent = outbox.take(None, Duration::ZERO).unwrap();
        assert_eq!(sent.len(), 2);
        assert!(outbox.is_empty());
        // The peer's emptied batch comes back and replaces the next batch
        // sent, to carry the one after it.
        sent.clear();
        let (at, capacity) = (sent.as_ptr(), sent.capacity());
        outbox.recycle(sent);
        outbox.push(msg());
        outbox.take(None, Duration::ZERO).unwrap();
        outbox.push(msg());
        let again = outbox.take(None, Duration::ZERO).unwrap();
        assert_eq!((again.as_ptr(), again.capacity()), (at, capacity));
    }

    #[test]
    fn a_refused_batch_goes_first_again() {
        let t0 = Instant::now();
        let mut outbox = Outbox::new(t0);
        outbox.push(ShardMsg::ConsumerResume {
            queue: QueueId(1),
            consumer: ConsumerId(1),
        });
        let refused = outbox.take(None, Duration::ZERO).unwrap();
        outbox.push(ShardMsg::ConsumerResume {
            queue: QueueId(2),
            consumer: ConsumerId(2),
        });
        outbox.put_back(refused);
        let batch = outbox.take(None, Duration::ZERO).unwrap();
        let queues: Vec<u64> = batch
            .iter()
            .map(|m| match m {
                ShardMsg::ConsumerResume { queue, .. } => queue.0,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(queues, [1, 2]);
    }

    #[test]
    fn a_held_batch_says_when_it_is_due() {
        let t0 = Instant::now();
        let interval = Duration::from_micros(400);
        let mut outbox = Outbox::new(t0);
        for _ in 0..MAILBOX_HOLD_AFTER {
            outbox.push(msg());
        }
        outbox.take(Some(t0), interval).unwrap();
        outbox.push(msg());
        assert_eq!(outbox.take(Some(t0), interval).unwrap_err(), t0 + interval);
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox.take(Some(t0 + interval), interval).unwrap().len(), 1);
    }

    const INTERVAL: Duration = Duration::from_micros(400);

    #[test]
    fn light_traffic_is_never_held() {
        let t0 = Instant::now();
        let mut pace = MailboxPace::new(t0);
        assert_eq!(pace.held_until(t0, INTERVAL, 1), None);
        pace.sent(t0, MAILBOX_HOLD_AFTER - 1);
        // Right after a small batch, the next goes at once, whatever its size.
        assert_eq!(pace.held_until(t0, INTERVAL, 1), None);
        assert_eq!(pace.held_until(t0, INTERVAL, 500), None);
    }

    #[test]
    fn after_a_large_batch_the_next_waits_for_the_interval() {
        let t0 = Instant::now();
        let mut pace = MailboxPace::new(t0);
        pace.sent(t0, MAILBOX_HOLD_AFTER);
        let soon = t0 + Duration::from_micros(100);
        assert_eq!(pace.held_until(soon, INTERVAL, 1), Some(t0 + INTERVAL));
        assert_eq!(pace.held_until(t0 + INTERVAL, INTERVAL, 1), None);
        assert_eq!(pace.held_until(t0 + 2 * INTERVAL, INTERVAL, 1), None);
    }

    #[test]
    fn a_full_batch_goes_at_once() {
        let t0 = Instant::now();
        let mut pace = MailboxPace::new(t0);
        pace.sent(t0, MAILBOX_BATCH_FULL);
        assert_eq!(
            pace.held_until(t0, INTERVAL, MAILBOX_BATCH_FULL - 1),
            Some(t0 + INTERVAL)
        );
        assert_eq!(pace.held_until(t0, INTERVAL, MAILBOX_BATCH_FULL), None);
    }

    #[test]
    fn a_zero_interval_holds_nothing() {
        let t0 = Instant::now();
        let mut pace = MailboxPace::new(t0);
        pace.sent(t0, MAILBOX_BATCH_FULL);
        assert_eq!(pace.held_until(t0, Duration::ZERO, 1), None);
    }
}

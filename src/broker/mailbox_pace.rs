//! When a shard sends a peer its next batch (`--mailbox-interval-us`).
//!
//! Every batch that reaches a sleeping peer wakes it, and every sleep costs
//! the peer a `membarrier` (glommio); under heavy traffic a shard therefore
//! sends each peer at most one batch per interval, unless the batch is
//! full. Light traffic is never held: a batch after a small one goes at
//! the end of the reactor turn that filled it, so a confirm or a reply at a
//! moderate rate waits for nothing.

use std::time::{Duration, Instant};

use crate::config::{MAILBOX_BATCH_FULL, MAILBOX_HOLD_AFTER};

/// The last batch a shard sent one peer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MailboxPace {
    sent_at: Instant,
    sent_len: usize,
}

impl MailboxPace {
    pub(crate) fn new(now: Instant) -> MailboxPace {
        MailboxPace {
            sent_at: now,
            sent_len: 0,
        }
    }

    /// When a batch of `len` messages may go: `None` for now, or the
    /// instant the interval since the last batch ends.
    pub(crate) fn held_until(
        &self,
        now: Instant,
        interval: Duration,
        len: usize,
    ) -> Option<Instant> {
        let at = self.sent_at + interval;
        let heavy = self.sent_len >= MAILBOX_HOLD_AFTER;
        (heavy && at > now && len < MAILBOX_BATCH_FULL).then_some(at)
    }

    /// A batch of `len` messages went at `now`.
    pub(crate) fn sent(&mut self, now: Instant, len: usize) {
        self.sent_at = now;
        self.sent_len = len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

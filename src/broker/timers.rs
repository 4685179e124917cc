//! The shard's clock and timer wheel: what happens later (message TTL, queue
//! expiry, delayed delivery) is one entry in one wheel per shard, not a task
//! or a sleep per message. The shard's timer task sleeps until the earliest
//! deadline; inserting an earlier one wakes it.

use std::time::{Duration, Instant};

use crate::model::ids::QueueId;
use crate::util::signal::Notify;
use crate::util::timer_wheel::{TimerId, TimerWheel};

/// The longest the timer task sleeps with nothing due: a bound, not a need.
const IDLE_WAKE_MS: u64 = 1000;

/// What a timer does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerEvent {
    /// A ready message's TTL ran out. `level` is its priority level, so the
    /// queue finds it without a search across levels.
    MessageExpiry { queue: QueueId, level: u8, seq: u64 },
    /// An `x-expires` queue may have been unused long enough.
    QueueExpiry { queue: QueueId },
    /// A message held by an `x-delayed-message` exchange is due.
    Delayed { id: u64 },
}

pub struct Timers {
    wheel: TimerWheel<TimerEvent>,
    started: Instant,
    /// Unix time in milliseconds when `started` was taken: the store keeps
    /// deadlines as wall-clock time, so they mean the same after a restart.
    started_epoch_ms: u64,
    /// When the timer task will next wake, in shard milliseconds.
    planned_ms: u64,
    /// Wakes the timer task when a deadline earlier than `planned_ms` arrives.
    pub(crate) wake: Notify,
    fired: Vec<(u64, TimerEvent)>,
}

impl Default for Timers {
    fn default() -> Self {
        Timers::new()
    }
}

impl Timers {
    pub fn new() -> Timers {
        Timers {
            wheel: TimerWheel::new(0),
            started: Instant::now(),
            started_epoch_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            planned_ms: 0,
            wake: Notify::new(),
            fired: Vec::new(),
        }
    }

    /// Milliseconds since the shard started: the wheel's time base. Read only
    /// where a deadline is involved, so plain publishes never read the clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A deadline in shard milliseconds as Unix time in milliseconds.
    pub(crate) fn epoch_ms_of(&self, shard_ms: u64) -> u64 {
        self.started_epoch_ms.saturating_add(shard_ms)
    }

    /// A Unix-time deadline (ms) in shard milliseconds; one that passed
    /// before the shard started is 0, already due.
    pub(crate) fn shard_ms_of_epoch(&self, epoch_ms: u64) -> u64 {
        epoch_ms.saturating_sub(self.started_epoch_ms)
    }

    /// The deadline `delay_ms` from now, rounded up to the next whole
    /// millisecond, so the timer never fires before `delay_ms` has passed
    /// (`now_ms` rounds down).
    pub(crate) fn deadline_after_ms(&self, delay_ms: u64) -> u64 {
        let elapsed = self.started.elapsed();
        let partial_ms = !elapsed.subsec_nanos().is_multiple_of(1_000_000);
        let started_ms = elapsed.as_millis() as u64 + u64::from(partial_ms);
        started_ms.saturating_add(delay_ms)
    }

    /// Seconds since the Unix epoch: AMQP timestamps (x-death `time`) are seconds.
    pub(crate) fn unix_seconds() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    pub(crate) fn insert(&mut self, deadline_ms: u64, event: TimerEvent) -> TimerId {
        let id = self.wheel.insert(deadline_ms, event);
        if deadline_ms < self.planned_ms {
            self.planned_ms = deadline_ms;
            self.wake.notify();
        }
        id
    }

    pub(crate) fn cancel(&mut self, id: TimerId) {
        self.wheel.cancel(id);
    }

    pub fn len(&self) -> usize {
        self.wheel.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes every timer due by now, in deadline order. Give the vector back
    /// with `restore_fired` so that firing allocates nothing.
    pub(crate) fn take_due(&mut self) -> Vec<(u64, TimerEvent)> {
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        let now = self.now_ms();
        self.wheel.advance(now, &mut fired);
        fired
    }

    pub(crate) fn restore_fired(&mut self, mut fired: Vec<(u64, TimerEvent)>) {
        fired.clear();
        self.fired = fired;
    }

    /// How long the timer task may sleep, and records when it will wake.
    /// `next_deadline` is a lower bound, so waking early only costs a turn.
    pub(crate) fn plan_sleep(&mut self) -> Duration {
        let now = self.now_ms();
        let next = self
            .wheel
            .next_deadline()
            .unwrap_or(u64::MAX)
            .min(now + IDLE_WAKE_MS);
        let next = next.max(now + 1);
        self.planned_ms = next;
        Duration::from_millis(next - now)
    }
}

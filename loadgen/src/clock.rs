//! One monotonic origin for the whole process. Producers stamp each body with the
//! intended send time in nanoseconds from this origin, and consumers in the same
//! process subtract it from their receive time, so end-to-end latency needs no
//! clock synchronisation.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Fixes the origin; call once at start, before any executor runs.
pub fn init() {
    ORIGIN.get_or_init(Instant::now);
}

/// Nanoseconds since the origin.
#[inline]
pub fn now_ns() -> u64 {
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The `Instant` at `ns` nanoseconds from the origin.
pub fn instant_at(ns: u64) -> Instant {
    *ORIGIN.get_or_init(Instant::now) + Duration::from_nanos(ns)
}

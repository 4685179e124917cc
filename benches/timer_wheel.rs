//! Microbenchmarks of the shard's timer wheel, with the standard library
//! only, in the style of `hot_path.rs`: each case runs a few rounds of
//! 1,000,000 timers and prints the best ns per timer. The payload is what
//! the broker will store, a (QueueId, seq) key. A `BTreeMap` keyed by
//! (deadline, seq) is the baseline. Run with `cargo bench --bench timer_wheel`.
//!
//! The wheel is reused from round to round, so its slab is already grown:
//! this is the steady state of a shard, not the first million timers.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use warren::model::ids::QueueId;
use warren::util::timer_wheel::{TimerId, TimerWheel, LEVEL_COUNT};

const TIMER_COUNT: u64 = 1_000_000;

type Key = (QueueId, u64);

fn best_ns_per_timer(mut round: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        round();
        best = best.min(start.elapsed().as_nanos() as f64 / TIMER_COUNT as f64);
    }
    best
}

fn report(name: &str, ns: f64) {
    println!(
        "{:<60} {:>7.1} ns/timer {:>12.0} timers/s",
        name,
        ns,
        1e9 / ns
    );
}

/// The n-th of TIMER_COUNT distinct offsets in 1..=TIMER_COUNT, shuffled:
/// 999,983 is prime, so multiplying by it permutes the residues.
fn shuffled_offset(n: u64) -> u64 {
    1 + n * 999_983 % TIMER_COUNT
}

fn ascending_offset(n: u64) -> u64 {
    1 + n
}

fn key(n: u64) -> Key {
    (QueueId(n % 64), n)
}

/// Inserts TIMER_COUNT timers 1 ms apart, then fires them all, advancing
/// `step_ms` at a time (1 ms: a shard that wakes every millisecond).
fn wheel_insert_fire(offset: fn(u64) -> u64, step_ms: u64) -> f64 {
    let mut wheel = TimerWheel::new(0);
    let mut now_ms = 0;
    let mut fired = Vec::with_capacity(TIMER_COUNT as usize);
    best_ns_per_timer(|| {
        let base_ms = now_ms;
        for n in 0..TIMER_COUNT {
            wheel.insert(base_ms + offset(n), key(n));
        }
        let mut count = 0;
        while now_ms < base_ms + TIMER_COUNT {
            now_ms = (now_ms + step_ms).min(base_ms + TIMER_COUNT);
            fired.clear();
            wheel.advance(now_ms, &mut fired);
            count += fired.len();
            black_box(&fired);
        }
        assert_eq!(count as u64, TIMER_COUNT);
        assert!(wheel.is_empty());
    })
}

fn btree_insert_fire(offset: fn(u64) -> u64) -> f64 {
    let mut timers: BTreeMap<(u64, u64), Key> = BTreeMap::new();
    let mut now_ms = 0;
    let mut fired = Vec::with_capacity(16);
    best_ns_per_timer(|| {
        let base_ms = now_ms;
        for n in 0..TIMER_COUNT {
            timers.insert((base_ms + offset(n), n), key(n));
        }
        while now_ms < base_ms + TIMER_COUNT {
            now_ms += 1;
            fired.clear();
            while let Some(entry) = timers.first_entry() {
                if entry.key().0 > now_ms {
                    break;
                }
                let ((deadline_ms, _), payload) = entry.remove_entry();
                fired.push((deadline_ms, payload));
            }
            black_box(&fired);
        }
        assert!(timers.is_empty());
    })
}

/// Inserts TIMER_COUNT timers, then cancels them all, in insertion order
/// (messages acked about in the order they came) or shuffled.
fn wheel_insert_cancel(offset: fn(u64) -> u64, shuffled_cancel: bool) -> f64 {
    let mut wheel = TimerWheel::new(0);
    let mut ids: Vec<TimerId> = Vec::with_capacity(TIMER_COUNT as usize);
    best_ns_per_timer(|| {
        ids.clear();
        for n in 0..TIMER_COUNT {
            ids.push(wheel.insert(offset(n) * 1000, key(n)));
        }
        for n in 0..TIMER_COUNT {
            let index = if shuffled_cancel {
                shuffled_offset(n) - 1
            } else {
                n
            };
            black_box(wheel.cancel(ids[index as usize]));
        }
        assert!(wheel.is_empty());
    })
}

fn btree_insert_cancel(offset: fn(u64) -> u64) -> f64 {
    let mut timers: BTreeMap<(u64, u64), Key> = BTreeMap::new();
    best_ns_per_timer(|| {
        for n in 0..TIMER_COUNT {
            timers.insert((offset(n) * 1000, n), key(n));
        }
        for n in 0..TIMER_COUNT {
            black_box(timers.remove(&(offset(n) * 1000, n)));
        }
        assert!(timers.is_empty());
    })
}

fn memory() {
    let entry_bytes = TimerWheel::<Key>::ENTRY_BYTES;
    let empty = TimerWheel::<Key>::new(0);
    let fixed_bytes = std::mem::size_of::<TimerWheel<Key>>() + empty.heap_bytes();
    let amortised = entry_bytes as f64 + fixed_bytes as f64 / TIMER_COUNT as f64;
    println!(
        "memory per pending (QueueId, u64) timer: {entry_bytes} B entry + {fixed_bytes} B per wheel \
         ({LEVEL_COUNT} levels) / {TIMER_COUNT} timers = {amortised:.3} B"
    );
    let mut wheel = TimerWheel::<Key>::new(0);
    for n in 0..TIMER_COUNT {
        wheel.insert(shuffled_offset(n), key(n));
    }
    let held = std::mem::size_of::<TimerWheel<Key>>() + wheel.heap_bytes();
    println!(
        "  held after inserting {TIMER_COUNT} into a new wheel (slab doubling slack included): \
         {:.1} B/timer",
        held as f64 / TIMER_COUNT as f64
    );
}

fn main() {
    report(
        "wheel insert + fire, ascending deadlines, advance every 1 ms",
        wheel_insert_fire(ascending_offset, 1),
    );
    report(
        "wheel insert + fire, shuffled deadlines, advance every 1 ms",
        wheel_insert_fire(shuffled_offset, 1),
    );
    report(
        "wheel insert + fire, shuffled deadlines, one 1,000 s jump",
        wheel_insert_fire(shuffled_offset, TIMER_COUNT),
    );
    report(
        "  baseline BTreeMap, shuffled deadlines, every 1 ms",
        btree_insert_fire(shuffled_offset),
    );
    report(
        "wheel insert + cancel, cancelled in insertion order",
        wheel_insert_cancel(shuffled_offset, false),
    );
    report(
        "wheel insert + cancel, cancelled shuffled",
        wheel_insert_cancel(shuffled_offset, true),
    );
    report(
        "  baseline BTreeMap insert + remove",
        btree_insert_cancel(shuffled_offset),
    );
    memory();
}

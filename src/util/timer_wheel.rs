//! A hierarchical hashed timer wheel: one per shard, for everything the shard
//! does later (message TTL, queue expiry, delayed delivery). It owns the
//! pending timers and decides which are due; it knows no clock, spawns no
//! task and performs no I/O. The caller passes `now_ms` (milliseconds since
//! shard start, 1 ms resolution), sleeps until `next_deadline`, and acts on
//! what `advance` hands back.
//!
//! # Layout
//!
//! ```text
//!  level 6  [64 slots × 2^36 ms]  ≈ 139 years in all     overflow: beyond the
//!  level 5  [64 slots × 2^30 ms]  ≈ 2.2 years            top level, re-examined
//!  ...                                                   when time reaches the
//!  level 1  [64 slots × 64 ms]    = 4.1 s                earliest of them
//!  level 0  [64 slots × 1 ms]     = 64 ms                due: deadline <= now,
//!                                                        fires on the next advance
//! ```
//!
//! A timer's level is the level of the highest bit in which its deadline
//! differs from the wheel's time (`elapsed_ms`), and its slot is the
//! deadline's 6 bits at that level (the placement tokio's timer wheel uses).
//! So every timer at level L is due in a later slot of the current level-L+1
//! block, every timer at level 0 is due within the current 64 ms, and the
//! earliest timer is always in the lowest non-empty level's lowest occupied
//! slot. When time reaches a slot at level L > 0, its timers are placed
//! again, one or more levels lower ("cascade").
//!
//! Timers live in one slab (`entries`); each slot is an intrusive doubly
//! linked list through it, so `cancel` is O(1) and inserting allocates only
//! when the slab grows. Lists are FIFO and a cascade keeps their order, which
//! is why timers with equal deadlines fire in insertion order. A bitmap per
//! level (one `u64`) marks the non-empty slots, so `advance` jumps straight to
//! the next occupied slot however far ahead `now_ms` is.

use std::num::NonZeroU16;

/// Slots per level is 2^SLOT_BITS.
const SLOT_BITS: u32 = 6;
const SLOT_COUNT: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOT_COUNT as u64 - 1;

/// Seven levels cover 2^42 ms, about 139 years, far beyond any TTL,
/// x-expires or x-delay met in practice. Deadlines further out (u64::MAX as
/// "never") wait in the overflow list.
pub const LEVEL_COUNT: usize = 7;
const WHEEL_BITS: u32 = SLOT_BITS * LEVEL_COUNT as u32;
const WHEEL_MASK: u64 = (1 << WHEEL_BITS) - 1;

// Lists are numbered: level * SLOT_COUNT + slot for the wheel, then the due
// list and the overflow list.
const WHEEL_LIST_COUNT: usize = LEVEL_COUNT * SLOT_COUNT;
const DUE: usize = WHEEL_LIST_COUNT;
const OVERFLOW: usize = WHEEL_LIST_COUNT + 1;
const LIST_COUNT: usize = WHEEL_LIST_COUNT + 2;
// The list number is stored + 1 in a NonZeroU16, whose niche lets `Entry`
// carry its vacant/occupied tag for free.
const _: () = assert!(LIST_COUNT < u16::MAX as usize);

/// "No entry" in a link or list head.
const NIL: u32 = u32::MAX;

/// A handle on one pending timer. The generation makes a handle kept after
/// its timer fired or was cancelled harmless: its slab entry may hold another
/// timer by then, and `cancel` refuses it. (A stale handle could only match
/// again after its entry is reused 2^32 times.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

/// A slab entry. Vacant entries keep their generation so the next timer in
/// them gets a fresh one.
enum Entry<T> {
    Vacant { generation: u32, next_free: u32 },
    Occupied(Timer<T>),
}

struct Timer<T> {
    generation: u32,
    deadline_ms: u64,
    prev: u32,
    next: u32,
    /// The list the timer is linked into, + 1.
    list: NonZeroU16,
    payload: T,
}

#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

const EMPTY_LIST: List = List {
    head: NIL,
    tail: NIL,
};

/// What `advance` processes next: a wheel slot, or the overflow list.
#[derive(Clone, Copy, Debug)]
enum Event {
    Slot { level: usize, slot: usize },
    Overflow,
}

/// The shard's pending timers; see the module documentation.
///
/// The slab never shrinks: after a burst of a million pending timers the
/// wheel keeps about 40 MB until it is dropped. Freeing entries would break
/// the promise that a stale `TimerId` cancels nothing.
pub struct TimerWheel<T> {
    entries: Vec<Entry<T>>,
    free_head: u32,
    lists: Box<[List; LIST_COUNT]>,
    /// Bit s of `occupied[level]` is set iff that slot's list is non-empty.
    occupied: [u64; LEVEL_COUNT],
    /// The wheel's time: the latest `now_ms` passed to `new` or `advance`.
    elapsed_ms: u64,
    len: usize,
    /// Lower bounds on the deadlines in the due and overflow lists (exact
    /// until a cancel removes the earliest; u64::MAX when the list is empty).
    due_deadline_min: u64,
    overflow_deadline_min: u64,
}

impl<T> TimerWheel<T> {
    /// Bytes of one slab entry: what each pending timer costs, besides the
    /// slab's spare capacity and the fixed `LIST_COUNT` list heads.
    pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry<T>>();

    /// An empty wheel whose time is `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        TimerWheel {
            entries: Vec::new(),
            free_head: NIL,
            lists: Box::new([EMPTY_LIST; LIST_COUNT]),
            occupied: [0; LEVEL_COUNT],
            elapsed_ms: now_ms,
            len: 0,
            due_deadline_min: u64::MAX,
            overflow_deadline_min: u64::MAX,
        }
    }

    /// The number of pending timers.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes held (slab capacity and list heads), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * Self::ENTRY_BYTES + std::mem::size_of::<[List; LIST_COUNT]>()
    }

    /// Adds a timer. A deadline at or before the wheel's time fires on the
    /// next `advance`, whatever `now_ms` that passes.
    ///
    /// Panics if 2^32 - 1 timers are pending: at 32 bytes or more each, the
    /// shard has run out of memory long before.
    pub fn insert(&mut self, deadline_ms: u64, payload: T) -> TimerId {
        let (index, generation) = if self.free_head != NIL {
            let index = self.free_head;
            match self.entries[index as usize] {
                Entry::Vacant {
                    generation,
                    next_free,
                } => {
                    self.free_head = next_free;
                    (index, generation)
                }
                Entry::Occupied(_) => unreachable!("free list points at a pending timer"),
            }
        } else {
            assert!(self.entries.len() < NIL as usize, "timer wheel is full");
            self.entries.push(Entry::Vacant {
                generation: 0,
                next_free: NIL,
            });
            ((self.entries.len() - 1) as u32, 0)
        };
        let list = self.list_for(deadline_ms);
        self.entries[index as usize] = Entry::Occupied(Timer {
            generation,
            deadline_ms,
            prev: NIL,
            next: NIL,
            list: list_tag(list),
            payload,
        });
        self.push_back(list, index);
        self.len += 1;
        TimerId { index, generation }
    }

    /// Removes a pending timer and returns its payload, in O(1). None if the
    /// timer already fired or was cancelled.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        match self.entries.get(id.index as usize) {
            Some(Entry::Occupied(timer)) if timer.generation == id.generation => {}
            _ => return None,
        }
        self.unlink(id.index);
        Some(self.release(id.index).1)
    }

    /// Moves the wheel's time to `now_ms` and appends to `fired` every timer
    /// due by then, as (deadline, payload), in deadline order, equal
    /// deadlines in insertion order. Time never goes back: an earlier
    /// `now_ms` only fires the timers already due.
    ///
    /// The work is proportional to the timers fired or cascaded plus the
    /// occupied slots passed, never to the milliseconds skipped.
    pub fn advance(&mut self, now_ms: u64, fired: &mut Vec<(u64, T)>) {
        let now_ms = now_ms.max(self.elapsed_ms);
        // Due timers are at or before the old time, so before any other.
        self.fire_due(fired);
        while let Some((time_ms, event)) = self.next_event() {
            if time_ms > now_ms {
                break;
            }
            debug_assert!(time_ms > self.elapsed_ms, "events lie ahead");
            self.elapsed_ms = time_ms;
            match event {
                Event::Slot { level, slot } => {
                    self.occupied[level] &= !(1 << slot);
                    self.expire_list(level * SLOT_COUNT + slot, fired);
                }
                Event::Overflow => {
                    // Placing them again recomputes the minimum.
                    self.overflow_deadline_min = u64::MAX;
                    self.expire_list(OVERFLOW, fired);
                }
            }
        }
        // No occupied slot starts in (elapsed_ms, now_ms], so every pending
        // timer keeps its level and slot at the new time.
        self.elapsed_ms = now_ms;
    }

    /// A lower bound on the earliest pending deadline, None if no timer is
    /// pending; cheap (a look at `LEVEL_COUNT` bitmaps), so the shard can ask
    /// after every turn how long it may sleep.
    ///
    /// - If the earliest timer is due within the current 64 ms block (level
    ///   0), this is exactly its deadline.
    /// - If it sits higher up, this is the start of its slot. Advancing to
    ///   that time moves it at least one level down, so a shard that sleeps
    ///   until `next_deadline` and then advances wakes at most `LEVEL_COUNT`
    ///   times for one timer (once more if it waits in the overflow list).
    /// - A timer already due (deadline at or before the wheel's time) gives
    ///   a value at or before the wheel's time, which means "advance now".
    /// - The due and overflow lists keep their minimum as a bound that a
    ///   `cancel` may leave early; such a value is still a lower bound.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        if self.lists[DUE].head != NIL {
            return Some(self.due_deadline_min);
        }
        self.next_event().map(|(time_ms, event)| match event {
            Event::Slot { .. } => time_ms,
            Event::Overflow => self.overflow_deadline_min,
        })
    }

    /// The list a deadline belongs in at the wheel's current time.
    fn list_for(&self, deadline_ms: u64) -> usize {
        if deadline_ms <= self.elapsed_ms {
            return DUE;
        }
        let level = level_for(self.elapsed_ms, deadline_ms);
        if level >= LEVEL_COUNT {
            return OVERFLOW;
        }
        level * SLOT_COUNT + slot_for(level, deadline_ms)
    }

    /// The earliest slot (or the overflow list) that holds timers, and the
    /// time at which it must be processed.
    fn next_event(&self) -> Option<(u64, Event)> {
        for (level, &bits) in self.occupied.iter().enumerate() {
            if bits != 0 {
                let slot = bits.trailing_zeros() as usize;
                let shift = level as u32 * SLOT_BITS;
                let block_mask = (1u64 << (shift + SLOT_BITS)) - 1;
                let time_ms = (self.elapsed_ms & !block_mask) | ((slot as u64) << shift);
                return Some((time_ms, Event::Slot { level, slot }));
            }
        }
        if self.lists[OVERFLOW].head != NIL {
            // Time reaches the top-level block of the earliest overflow
            // timer; from there it fits in the wheel.
            return Some((self.overflow_deadline_min & !WHEEL_MASK, Event::Overflow));
        }
        None
    }

    /// Fires every timer in the due list, sorted by deadline.
    fn fire_due(&mut self, fired: &mut Vec<(u64, T)>) {
        let start = fired.len();
        let mut index = std::mem::replace(&mut self.lists[DUE], EMPTY_LIST).head;
        self.due_deadline_min = u64::MAX;
        while index != NIL {
            let next = self.timer(index).next;
            fired.push(self.release(index));
            index = next;
        }
        // The due list is in insertion order; a stable sort keeps that order
        // among equal deadlines. It only sorts (and may allocate) when past
        // deadlines were inserted out of order since the last advance.
        let due = &mut fired[start..];
        if !due.is_sorted_by_key(|(deadline_ms, _)| *deadline_ms) {
            due.sort_by_key(|(deadline_ms, _)| *deadline_ms);
        }
    }

    /// Takes every timer out of a list whose time has come: fires those due
    /// now, places the others again (lower down, or back in the overflow).
    /// Walking the list in order keeps equal deadlines in insertion order.
    fn expire_list(&mut self, list: usize, fired: &mut Vec<(u64, T)>) {
        let mut index = std::mem::replace(&mut self.lists[list], EMPTY_LIST).head;
        while index != NIL {
            let (next, deadline_ms) = {
                let timer = self.timer(index);
                (timer.next, timer.deadline_ms)
            };
            if deadline_ms <= self.elapsed_ms {
                debug_assert_eq!(deadline_ms, self.elapsed_ms, "fired late");
                fired.push(self.release(index));
            } else {
                let target = self.list_for(deadline_ms);
                debug_assert!(
                    list == OVERFLOW || target < list,
                    "a cascade moves timers down"
                );
                self.push_back(target, index);
            }
            index = next;
        }
    }

    fn timer(&self, index: u32) -> &Timer<T> {
        match &self.entries[index as usize] {
            Entry::Occupied(timer) => timer,
            Entry::Vacant { .. } => unreachable!("a list links a vacant entry"),
        }
    }

    fn timer_mut(&mut self, index: u32) -> &mut Timer<T> {
        match &mut self.entries[index as usize] {
            Entry::Occupied(timer) => timer,
            Entry::Vacant { .. } => unreachable!("a list links a vacant entry"),
        }
    }

    /// Links a timer (unlinked, or in a list already detached) at the tail.
    fn push_back(&mut self, list: usize, index: u32) {
        let tail = self.lists[list].tail;
        let timer = self.timer_mut(index);
        timer.list = list_tag(list);
        timer.prev = tail;
        timer.next = NIL;
        let deadline_ms = timer.deadline_ms;
        if tail == NIL {
            self.lists[list].head = index;
        } else {
            self.timer_mut(tail).next = index;
        }
        self.lists[list].tail = index;
        match list {
            DUE => self.due_deadline_min = self.due_deadline_min.min(deadline_ms),
            OVERFLOW => self.overflow_deadline_min = self.overflow_deadline_min.min(deadline_ms),
            _ => self.occupied[list / SLOT_COUNT] |= 1 << (list % SLOT_COUNT),
        }
    }

    fn unlink(&mut self, index: u32) {
        let (prev, next, list) = {
            let timer = self.timer(index);
            (timer.prev, timer.next, list_number(timer.list))
        };
        if prev == NIL {
            self.lists[list].head = next;
        } else {
            self.timer_mut(prev).next = next;
        }
        if next == NIL {
            self.lists[list].tail = prev;
        } else {
            self.timer_mut(next).prev = prev;
        }
        if self.lists[list].head == NIL {
            match list {
                DUE => self.due_deadline_min = u64::MAX,
                OVERFLOW => self.overflow_deadline_min = u64::MAX,
                _ => self.occupied[list / SLOT_COUNT] &= !(1 << (list % SLOT_COUNT)),
            }
        }
    }

    /// Frees an entry (already unlinked, or in a detached list) and returns
    /// its deadline and payload.
    fn release(&mut self, index: u32) -> (u64, T) {
        let generation = self.timer(index).generation.wrapping_add(1);
        let entry = std::mem::replace(
            &mut self.entries[index as usize],
            Entry::Vacant {
                generation,
                next_free: self.free_head,
            },
        );
        self.free_head = index;
        self.len -= 1;
        match entry {
            Entry::Occupied(timer) => (timer.deadline_ms, timer.payload),
            Entry::Vacant { .. } => unreachable!("released a vacant entry"),
        }
    }
}

/// The level of the highest bit in which a deadline differs from the
/// wheel's time. The `| SLOT_MASK` keeps the argument of `leading_zeros`
/// non-zero and maps every difference within the 64 ms block to level 0.
fn level_for(elapsed_ms: u64, deadline_ms: u64) -> usize {
    let highest_bit = 63 - ((elapsed_ms ^ deadline_ms) | SLOT_MASK).leading_zeros();
    (highest_bit / SLOT_BITS) as usize
}

fn slot_for(level: usize, deadline_ms: u64) -> usize {
    ((deadline_ms >> (level as u32 * SLOT_BITS)) & SLOT_MASK) as usize
}

fn list_tag(list: usize) -> NonZeroU16 {
    NonZeroU16::new(list as u16 + 1).expect("LIST_COUNT < u16::MAX")
}

fn list_number(tag: NonZeroU16) -> usize {
    tag.get() as usize - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// splitmix64: a small deterministic generator, so failures replay.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    fn advance<T>(wheel: &mut TimerWheel<T>, now_ms: u64) -> Vec<(u64, T)> {
        let mut fired = Vec::new();
        wheel.advance(now_ms, &mut fired);
        fired
    }

    /// Deadlines on and around every level boundary, from a start that is
    /// not block-aligned.
    fn boundary_offsets() -> Vec<u64> {
        let mut offsets = vec![1, 2, 62, 63, 64, 65, 100, 127, 128];
        for level in 1..LEVEL_COUNT as u32 {
            let span = 1u64 << (SLOT_BITS * (level + 1));
            offsets.extend([span - 1, span, span + 1, span * 3 + 7]);
        }
        offsets
    }

    #[test]
    fn entry_is_small() {
        // The list tag's niche holds the vacant/occupied tag: a 16-byte key
        // such as (QueueId, seq) costs 24 bytes of bookkeeping.
        const { assert!(TimerWheel::<(u64, u64)>::ENTRY_BYTES <= 40) };
        const { assert!(TimerWheel::<u64>::ENTRY_BYTES <= 32) };
    }

    #[test]
    fn timer_fires_at_its_deadline_not_before() {
        for start in [0, 1_000_003, (1 << 40) + 12_345] {
            for offset in boundary_offsets() {
                let deadline = start + offset;
                let mut wheel = TimerWheel::new(start);
                wheel.insert(deadline, "t");
                assert_eq!(wheel.len(), 1);
                assert!(wheel.next_deadline().unwrap() <= deadline);
                assert!(
                    advance(&mut wheel, deadline - 1).is_empty(),
                    "early at {offset}"
                );
                assert_eq!(advance(&mut wheel, deadline), vec![(deadline, "t")]);
                assert!(wheel.is_empty());
                assert_eq!(wheel.next_deadline(), None);
            }
        }
    }

    #[test]
    fn next_deadline_is_exact_within_64_ms_and_a_lower_bound_beyond() {
        let mut wheel = TimerWheel::new(1000);
        wheel.insert(1010, ());
        assert_eq!(wheel.next_deadline(), Some(1010));

        let mut wheel = TimerWheel::new(0);
        let deadline = 5 * 3_600_000 + 12_345;
        wheel.insert(deadline, ());
        // Sleeping until next_deadline and advancing reaches the timer in at
        // most LEVEL_COUNT wakes, never past its deadline.
        let mut wakes = 0;
        loop {
            let next = wheel.next_deadline().unwrap();
            assert!(next <= deadline);
            wakes += 1;
            if !advance(&mut wheel, next).is_empty() {
                assert_eq!(next, deadline);
                break;
            }
            assert!(wakes <= LEVEL_COUNT);
        }
    }

    #[test]
    fn cancel_before_fire_removes_the_timer() {
        let mut wheel = TimerWheel::new(0);
        let kept = wheel.insert(100, 1);
        let cancelled = wheel.insert(100, 2);
        let far = wheel.insert(1 << 30, 3);
        assert_eq!(wheel.cancel(cancelled), Some(2));
        assert_eq!(wheel.cancel(far), Some(3));
        assert_eq!(wheel.len(), 1);
        assert_eq!(advance(&mut wheel, 1 << 31), vec![(100, 1)]);
        assert_eq!(wheel.cancel(kept), None);
        assert!(wheel.is_empty());
    }

    #[test]
    fn stale_id_cancels_nothing() {
        let mut wheel = TimerWheel::new(0);
        let first = wheel.insert(10, 'a');
        assert_eq!(wheel.cancel(first), Some('a'));
        assert_eq!(wheel.cancel(first), None);
        // The new timer reuses the entry; the old id must not reach it.
        let second = wheel.insert(20, 'b');
        assert_eq!(second.index, first.index);
        assert_eq!(wheel.cancel(first), None);
        assert_eq!(advance(&mut wheel, 20), vec![(20, 'b')]);
        // Nor may the id of a timer that fired.
        let third = wheel.insert(30, 'c');
        assert_eq!(wheel.cancel(second), None);
        assert_eq!(wheel.cancel(first), None);
        assert_eq!(wheel.cancel(third), Some('c'));
    }

    #[test]
    fn cascade_fires_on_the_exact_millisecond() {
        // Every deadline crosses one to three levels before firing, and the
        // wheel is advanced one millisecond at a time past each.
        let mut wheel = TimerWheel::new(0);
        let deadlines = [
            64,
            65,
            4095,
            4096,
            4097,
            64 * 64 * 3 + 1,
            262_143,
            262_144,
            262_145,
        ];
        for &deadline in &deadlines {
            wheel.insert(deadline, deadline);
        }
        let mut fired = Vec::new();
        for now in 1..=262_200 {
            fired.clear();
            wheel.advance(now, &mut fired);
            let expected: Vec<(u64, u64)> = deadlines
                .iter()
                .filter(|&&d| d == now)
                .map(|&d| (d, d))
                .collect();
            assert_eq!(fired, expected, "at {now} ms");
        }
        assert!(wheel.is_empty());
    }

    #[test]
    fn ten_thousand_equal_deadlines_fire_once_in_insertion_order() {
        let deadline = 10_000_000;
        let mut wheel = TimerWheel::new(0);
        // Half go in far ahead and cascade down through levels; the other
        // half go in late, straight into lower levels, after the first half.
        for n in 0..5_000u32 {
            wheel.insert(deadline, n);
        }
        for (round, now) in [1_000_000, 9_000_000, deadline - 4000, deadline - 50]
            .into_iter()
            .enumerate()
        {
            assert!(advance(&mut wheel, now).is_empty());
            for n in 0..1_250u32 {
                wheel.insert(deadline, 5_000 + round as u32 * 1_250 + n);
            }
        }
        let fired = advance(&mut wheel, deadline + 1_000_000);
        assert_eq!(fired.len(), 10_000);
        assert!(fired.iter().all(|&(d, _)| d == deadline));
        let order: Vec<u32> = fired.iter().map(|&(_, n)| n).collect();
        assert_eq!(order, (0..10_000).collect::<Vec<u32>>());
        assert!(wheel.is_empty());
    }

    #[test]
    fn far_deadlines_fire_exactly() {
        const DAY_MS: u64 = 86_400_000;
        let deadlines = [
            3 * DAY_MS + 17,
            400 * DAY_MS + 1,
            5 * 365 * DAY_MS + 3,
            100 * 365 * DAY_MS,
            (1 << WHEEL_BITS) - 1,
            1 << WHEEL_BITS,
            (1 << WHEEL_BITS) + 1,
            1 << 50,
            u64::MAX / 2,
            u64::MAX - 1,
            u64::MAX,
        ];
        for start in [0, 12_345, (1 << WHEEL_BITS) - 10] {
            let mut wheel = TimerWheel::new(start);
            let ahead: Vec<u64> = deadlines.into_iter().filter(|&d| d > start).collect();
            for &deadline in &ahead {
                wheel.insert(deadline, deadline);
            }
            for &deadline in &ahead {
                assert!(wheel.next_deadline().unwrap() <= deadline);
                assert!(advance(&mut wheel, deadline - 1).is_empty());
                assert_eq!(advance(&mut wheel, deadline), vec![(deadline, deadline)]);
            }
            assert!(wheel.is_empty());
        }
    }

    #[test]
    fn overflow_timers_cancel_and_survive_reexamination() {
        let mut wheel = TimerWheel::new(0);
        let never = wheel.insert(u64::MAX, 'n');
        let soon_after_top = wheel.insert((1 << WHEEL_BITS) + 5, 's');
        let later = wheel.insert(3 << WHEEL_BITS, 'l');
        assert_eq!(wheel.cancel(soon_after_top), Some('s'));
        // The minimum is now stale: a lower bound, never later than 'l'.
        assert!(wheel.next_deadline().unwrap() <= 3 << WHEEL_BITS);
        assert!(advance(&mut wheel, (3 << WHEEL_BITS) - 1).is_empty());
        assert_eq!(
            advance(&mut wheel, 3 << WHEEL_BITS),
            vec![(3 << WHEEL_BITS, 'l')]
        );
        assert_eq!(wheel.cancel(later), None);
        assert_eq!(wheel.next_deadline(), Some(u64::MAX));
        assert_eq!(wheel.cancel(never), Some('n'));
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn past_and_present_deadlines_fire_on_next_advance_in_deadline_order() {
        let mut wheel = TimerWheel::new(0);
        assert!(advance(&mut wheel, 100).is_empty());
        wheel.insert(100, 'a');
        wheel.insert(5, 'b');
        wheel.insert(3, 'c');
        wheel.insert(5, 'd');
        let cancelled = wheel.insert(1, 'e');
        wheel.insert(101, 'f');
        assert_eq!(wheel.cancel(cancelled), Some('e'));
        assert!(wheel.next_deadline().unwrap() <= 3);
        // Advancing to the same time, or to an earlier one, still fires them.
        assert_eq!(
            advance(&mut wheel, 50),
            vec![(3, 'c'), (5, 'b'), (5, 'd'), (100, 'a')]
        );
        assert_eq!(wheel.next_deadline(), Some(101));
        assert_eq!(advance(&mut wheel, 101), vec![(101, 'f')]);
    }

    #[test]
    fn big_jumps_and_millisecond_steps_fire_the_same() {
        let mut rng = Rng(7);
        let mut stepped = TimerWheel::new(0);
        let mut jumped = TimerWheel::new(0);
        let mut expected = Vec::new();
        for n in 0..20_000u64 {
            let deadline = match n % 3 {
                0 => rng.below(300),
                1 => rng.below(20_000),
                _ => rng.below(300_000),
            };
            stepped.insert(deadline, n);
            jumped.insert(deadline, n);
            expected.push((deadline, n));
        }
        // Stable: equal deadlines keep insertion order.
        expected.sort_by_key(|&(deadline, _)| deadline);

        let mut by_steps = Vec::new();
        for now in 0..=300_000 {
            stepped.advance(now, &mut by_steps);
        }
        let mut by_jumps = Vec::new();
        let mut now = 0;
        while now < 300_000 {
            now = (now + rng.below(70_000)).min(300_000);
            jumped.advance(now, &mut by_jumps);
        }
        assert_eq!(by_steps, expected);
        assert_eq!(by_jumps, expected);
    }

    #[test]
    fn matches_a_btreemap_model_under_random_operations() {
        for seed in 1..=20 {
            check_against_model(seed, 20_000);
        }
    }

    fn check_against_model(seed: u64, operations: usize) {
        let mut rng = Rng(seed);
        let start = rng.below(1 << 45);
        let mut wheel = TimerWheel::new(start);
        // Key: (deadline, insertion sequence) orders like the wheel fires.
        let mut model: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        let mut live: Vec<(TimerId, (u64, u64))> = Vec::new();
        let mut dead: Vec<TimerId> = Vec::new();
        let mut now = start;
        let mut sequence = 0u64;
        let mut fired = Vec::new();
        for _ in 0..operations {
            match rng.below(10) {
                0..=4 => {
                    let deadline = match rng.below(8) {
                        0 => now.saturating_sub(rng.below(100)),
                        1 => now + rng.below(64),
                        2 => now + rng.below(5_000),
                        3 => now + rng.below(1 << 20),
                        4 => now + rng.below(1 << 36),
                        5 => now + rng.below(1 << 44),
                        6 => u64::MAX - rng.below(3),
                        // Many equal deadlines: ties must keep their order.
                        _ => (now | 0xfff) + 1,
                    };
                    let payload = rng.next();
                    let id = wheel.insert(deadline, payload);
                    model.insert((deadline, sequence), payload);
                    live.push((id, (deadline, sequence)));
                    sequence += 1;
                }
                5 | 6 => {
                    if live.is_empty() || rng.below(4) == 0 {
                        if let Some(&id) = dead.get(rng.below(dead.len() as u64 + 1) as usize) {
                            assert_eq!(wheel.cancel(id), None, "stale id, seed {seed}");
                        }
                    } else {
                        let (id, key) = live.swap_remove(rng.below(live.len() as u64) as usize);
                        let expected = model.remove(&key);
                        assert!(expected.is_some(), "a live id is in the model");
                        assert_eq!(wheel.cancel(id), expected, "seed {seed}");
                        dead.push(id);
                    }
                }
                _ => {
                    now = match rng.below(6) {
                        0 => now,
                        1 => now + 1,
                        2 => now + rng.below(100),
                        3 => now + rng.below(100_000),
                        4 => now + rng.below(1 << 40),
                        // Exactly to the next deadline or to the wheel's lower
                        // bound, unless that is out near the end of time (the
                        // final advance gets there).
                        _ => {
                            let earliest = model.keys().next().map_or(now, |key| key.0);
                            let bound = wheel.next_deadline().unwrap_or(now);
                            let target = if rng.below(2) == 0 { earliest } else { bound };
                            if target > now && target - now < 1 << 44 {
                                target
                            } else {
                                now + 1
                            }
                        }
                    };
                    fired.clear();
                    wheel.advance(now, &mut fired);
                    // Sequence numbers stay below u64::MAX, so this splits at deadline > now.
                    let remaining = model.split_off(&(now, u64::MAX));
                    let expected: Vec<(u64, u64)> = model
                        .iter()
                        .map(|(&(deadline, _), &payload)| (deadline, payload))
                        .collect();
                    model = remaining;
                    assert_eq!(fired, expected, "advance to {now}, seed {seed}");
                    live.retain(|(id, key)| {
                        let pending = key.0 > now;
                        if !pending {
                            dead.push(*id);
                        }
                        pending
                    });
                }
            }
            assert_eq!(wheel.len(), model.len(), "seed {seed}");
            match model.keys().next() {
                Some(&(earliest, _)) => {
                    let next = wheel
                        .next_deadline()
                        .expect("pending timers have a deadline");
                    assert!(next <= earliest, "next_deadline {next} > {earliest}");
                }
                None => assert_eq!(wheel.next_deadline(), None),
            }
        }
        // Everything left fires once, at the end of time.
        fired.clear();
        wheel.advance(u64::MAX, &mut fired);
        let expected: Vec<(u64, u64)> = model
            .iter()
            .map(|(&(deadline, _), &payload)| (deadline, payload))
            .collect();
        assert_eq!(fired, expected, "final advance, seed {seed}");
        assert!(wheel.is_empty());
    }
}

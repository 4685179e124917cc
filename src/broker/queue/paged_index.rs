//! The index entries of one priority level's paged messages (`Paged`), in
//! order, held compactly: a backlog of millions of messages must not cost
//! tens of bytes of memory each.
//!
//! Consecutive entries go into blocks of at most `BLOCK_ENTRIES_MAX`, each
//! a byte string in which an entry is written as its difference from the
//! one before it (the first from a fixed start, so that a block decodes on
//! its own). Messages published one after another into a queue differ
//! little: the next `seq`, the next record in the same segment, the same
//! record length and header size, no expiry. Such an entry is one flag
//! byte. Any field that differs is written after the flags as a LEB128
//! varint (signed differences zigzag-encoded); an entry whose varints
//! would take more than a plain entry (`PLAIN_BYTES`) is written plain, so
//! that no sequence costs more than that per entry. Whether a message is
//! transient (written only to be paged) is carried from the entry before:
//! an entry that differs from it there is written plain, with the
//! `PLAIN_TRANSIENT` bit.
//!
//! ```text
//! flags  u8   SEQ_NEXT | SAME_SEGMENT | OFFSET_NEXT | SAME_LEN
//!             | SAME_OVERHEAD | NEVER_EXPIRES | REDELIVERED | PLAIN
//! delta form, each field present only when its flag says it differs:
//!   seq       varint  seq - previous seq
//!   segment   varint  the segment number (and then offset is absolute)
//!   offset    varint  zigzag(offset - previous record's end), same segment
//!                     varint  offset, in another segment
//!   len       varint  zigzag(len - previous len)
//!   overhead  varint  zigzag((len - body_bytes) - previous one)
//!   expiry    varint  zigzag(expires_at_ms - the last expiry before it)
//! plain form: seq u64, segment u32, offset u64, len u32, body_bytes u64,
//!             expires_at_ms u64, little-endian
//! ```
//!
//! The queue pushes at the back and pops at the front, both O(1): the front
//! block is decoded as it is popped (a cursor and the last entry read) and
//! freed once read to its end (the last block is emptied and kept for the
//! next entries, until the queue releases it when its backlog is drained).
//! Entries put back at the front (a read that failed) wait in a plain deque
//! ahead of the blocks: one read's worth at most.

use std::collections::VecDeque;

use super::{Paged, NEVER};
use crate::store::log::Location;

/// Entries per block, at most: the memory of a partly read front block and
/// of the growing back block is bounded by one block's, and a block's own
/// bookkeeping is shared by this many entries.
pub(super) const BLOCK_ENTRIES_MAX: u32 = 4096;

const SEQ_NEXT: u8 = 1;
const SAME_SEGMENT: u8 = 1 << 1;
const OFFSET_NEXT: u8 = 1 << 2;
const SAME_LEN: u8 = 1 << 3;
const SAME_OVERHEAD: u8 = 1 << 4;
const NEVER_EXPIRES: u8 = 1 << 5;
const REDELIVERED: u8 = 1 << 6;
const PLAIN: u8 = 1 << 7;
/// In a plain entry's flags (where the delta bits are unused): transient.
const PLAIN_TRANSIENT: u8 = SEQ_NEXT;

/// The plain form's fields after the flag byte.
const PLAIN_FIELDS_BYTES: usize = 8 + 4 + 8 + 4 + 8 + 8;
/// An entry's encoding, at most: the flag byte and the plain fields.
pub(super) const PLAIN_BYTES: usize = 1 + PLAIN_FIELDS_BYTES;
/// The delta form, at most: flags, then four 64-bit varints (seq, offset,
/// overhead, expiry) and two of at most 35 bits (segment, len).
const DELTA_BYTES_MAX: usize = 1 + 4 * 10 + 2 * 5;

/// What the next entry is encoded against: the entry before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    seq: u64,
    segment: u32,
    offset: u64,
    len: u32,
    /// `len - body_bytes`, wrapping: the record's header and properties.
    overhead: u64,
    /// The last expiry before it that was not `NEVER` (0 if none).
    expiry: u64,
    transient: bool,
}

impl State {
    /// A block's first entry is encoded against this.
    const START: State = State {
        seq: 0,
        segment: 0,
        offset: 0,
        len: 0,
        overhead: 0,
        expiry: 0,
        transient: false,
    };

    fn end(&self) -> u64 {
        self.offset.wrapping_add(u64::from(self.len))
    }

    fn after(&self, paged: &Paged) -> State {
        State {
            seq: paged.seq,
            segment: paged.location.segment,
            offset: paged.location.offset,
            len: paged.location.len,
            overhead: u64::from(paged.location.len).wrapping_sub(paged.body_bytes),
            expiry: if paged.expires_at_ms == NEVER {
                self.expiry
            } else {
                paged.expires_at_ms
            },
            transient: paged.transient,
        }
    }
}

fn zigzag(delta: u64) -> u64 {
    let signed = delta as i64;
    ((signed << 1) ^ (signed >> 63)) as u64
}

fn unzigzag(value: u64) -> u64 {
    ((value >> 1) as i64 ^ -((value & 1) as i64)) as u64
}

fn put_varint(out: &mut [u8; DELTA_BYTES_MAX], at: &mut usize, mut value: u64) {
    while value >= 0x80 {
        out[*at] = (value as u8) | 0x80;
        *at += 1;
        value >>= 7;
    }
    out[*at] = value as u8;
    *at += 1;
}

/// Reads a varint the index wrote itself; a truncated one (which would be
/// a bug) reads as what is there.
fn get_varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    let mut shift = 0;
    while let Some(&byte) = bytes.get(*at) {
        *at += 1;
        if shift < 64 {
            value |= u64::from(byte & 0x7f) << shift;
        }
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    value
}

fn get_u64(bytes: &[u8], at: &mut usize) -> u64 {
    let mut raw = [0u8; 8];
    if let Some(src) = bytes.get(*at..*at + 8) {
        raw.copy_from_slice(src);
    }
    *at += 8;
    u64::from_le_bytes(raw)
}

fn get_u32(bytes: &[u8], at: &mut usize) -> u32 {
    let mut raw = [0u8; 4];
    if let Some(src) = bytes.get(*at..*at + 4) {
        raw.copy_from_slice(src);
    }
    *at += 4;
    u32::from_le_bytes(raw)
}

/// Appends `paged`, encoded against `prev`, to `out`.
fn encode(prev: &State, paged: &Paged, out: &mut Vec<u8>) {
    let location = &paged.location;
    let overhead = u64::from(location.len).wrapping_sub(paged.body_bytes);
    let mut buf = [0u8; DELTA_BYTES_MAX];
    let mut at = 1;
    let mut flags = 0u8;
    if paged.redelivered {
        flags |= REDELIVERED;
    }
    if paged.seq == prev.seq.wrapping_add(1) {
        flags |= SEQ_NEXT;
    } else {
        put_varint(&mut buf, &mut at, paged.seq.wrapping_sub(prev.seq));
    }
    if location.segment == prev.segment {
        flags |= SAME_SEGMENT;
        if location.offset == prev.end() {
            flags |= OFFSET_NEXT;
        } else {
            put_varint(
                &mut buf,
                &mut at,
                zigzag(location.offset.wrapping_sub(prev.end())),
            );
        }
    } else {
        put_varint(&mut buf, &mut at, u64::from(location.segment));
        put_varint(&mut buf, &mut at, location.offset);
    }
    if location.len == prev.len {
        flags |= SAME_LEN;
    } else {
        let delta = i64::from(location.len) - i64::from(prev.len);
        put_varint(&mut buf, &mut at, zigzag(delta as u64));
    }
    if overhead == prev.overhead {
        flags |= SAME_OVERHEAD;
    } else {
        put_varint(
            &mut buf,
            &mut at,
            zigzag(overhead.wrapping_sub(prev.overhead)),
        );
    }
    if paged.expires_at_ms == NEVER {
        flags |= NEVER_EXPIRES;
    } else {
        put_varint(
            &mut buf,
            &mut at,
            zigzag(paged.expires_at_ms.wrapping_sub(prev.expiry)),
        );
    }
    if at <= PLAIN_BYTES && paged.transient == prev.transient {
        buf[0] = flags;
        out.extend_from_slice(&buf[..at]);
        return;
    }
    let transient = if paged.transient { PLAIN_TRANSIENT } else { 0 };
    out.push(PLAIN | (flags & REDELIVERED) | transient);
    out.extend_from_slice(&paged.seq.to_le_bytes());
    out.extend_from_slice(&location.segment.to_le_bytes());
    out.extend_from_slice(&location.offset.to_le_bytes());
    out.extend_from_slice(&location.len.to_le_bytes());
    out.extend_from_slice(&paged.body_bytes.to_le_bytes());
    out.extend_from_slice(&paged.expires_at_ms.to_le_bytes());
}

/// Reads the entry at `*at` in `bytes`, encoded against `prev`.
fn decode(prev: &State, bytes: &[u8], at: &mut usize, level: u8) -> Paged {
    let flags = bytes.get(*at).copied().unwrap_or(PLAIN);
    *at += 1;
    let redelivered = flags & REDELIVERED != 0;
    if flags & PLAIN != 0 {
        let seq = get_u64(bytes, at);
        let segment = get_u32(bytes, at);
        let offset = get_u64(bytes, at);
        let len = get_u32(bytes, at);
        let body_bytes = get_u64(bytes, at);
        let expires_at_ms = get_u64(bytes, at);
        return Paged {
            seq,
            location: Location {
                segment,
                offset,
                len,
            },
            body_bytes,
            expires_at_ms,
            redelivered,
            level,
            transient: flags & PLAIN_TRANSIENT != 0,
        };
    }
    let seq = if flags & SEQ_NEXT != 0 {
        prev.seq.wrapping_add(1)
    } else {
        prev.seq.wrapping_add(get_varint(bytes, at))
    };
    let (segment, offset) = if flags & SAME_SEGMENT != 0 {
        let offset = if flags & OFFSET_NEXT != 0 {
            prev.end()
        } else {
            prev.end().wrapping_add(unzigzag(get_varint(bytes, at)))
        };
        (prev.segment, offset)
    } else {
        let segment = get_varint(bytes, at) as u32;
        (segment, get_varint(bytes, at))
    };
    let len = if flags & SAME_LEN != 0 {
        prev.len
    } else {
        (i64::from(prev.len).wrapping_add(unzigzag(get_varint(bytes, at)) as i64)) as u32
    };
    let overhead = if flags & SAME_OVERHEAD != 0 {
        prev.overhead
    } else {
        prev.overhead.wrapping_add(unzigzag(get_varint(bytes, at)))
    };
    let expires_at_ms = if flags & NEVER_EXPIRES != 0 {
        NEVER
    } else {
        prev.expiry.wrapping_add(unzigzag(get_varint(bytes, at)))
    };
    Paged {
        seq,
        location: Location {
            segment,
            offset,
            len,
        },
        body_bytes: u64::from(len).wrapping_sub(overhead),
        expires_at_ms,
        redelivered,
        level,
        transient: prev.transient,
    }
}

/// Consecutive entries, encoded (see the module docs).
#[derive(Debug)]
struct Block {
    bytes: Vec<u8>,
    count: u32,
}

/// One level's paged entries, in order (see the module docs).
#[derive(Debug)]
pub(super) struct PagedIndex {
    level: u8,
    /// Entries put back at the front, ahead of the blocks.
    front: VecDeque<Paged>,
    blocks: VecDeque<Block>,
    /// The front block's next entry: its byte offset, its index, and the
    /// entry before it.
    read_at: usize,
    read_index: u32,
    read_state: State,
    /// The back block's last entry, which the next one is encoded against.
    write_state: State,
    /// Entries, all told.
    len: usize,
    /// The heap bytes of every block but the back one (which still grows).
    sealed_bytes: usize,
}

impl PagedIndex {
    pub(super) fn new(level: u8) -> PagedIndex {
        PagedIndex {
            level,
            front: VecDeque::new(),
            blocks: VecDeque::new(),
            read_at: 0,
            read_index: 0,
            read_state: State::START,
            write_state: State::START,
            len: 0,
            sealed_bytes: 0,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room for `count` more entries' blocks, so that a restored backlog's
    /// block list is allocated once.
    pub(super) fn reserve(&mut self, count: usize) {
        self.blocks
            .reserve(count.div_ceil(BLOCK_ENTRIES_MAX as usize));
    }

    pub(super) fn push_back(&mut self, paged: Paged) {
        debug_assert_eq!(paged.level, self.level, "paged entry on another level");
        let full = self
            .blocks
            .back()
            .is_none_or(|b| b.count >= BLOCK_ENTRIES_MAX);
        if full {
            if let Some(back) = self.blocks.back_mut() {
                back.bytes.shrink_to_fit();
                self.sealed_bytes += back.bytes.capacity();
            }
            self.blocks.push_back(Block {
                bytes: Vec::new(),
                count: 0,
            });
            self.write_state = State::START;
        }
        if let Some(back) = self.blocks.back_mut() {
            encode(&self.write_state, &paged, &mut back.bytes);
            back.count += 1;
            self.write_state = self.write_state.after(&paged);
            self.len += 1;
        }
    }

    /// Puts an entry taken from the front back there.
    pub(super) fn push_front(&mut self, paged: Paged) {
        self.front.push_front(paged);
        self.len += 1;
    }

    /// The first entry, left in place.
    pub(super) fn front(&self) -> Option<Paged> {
        if let Some(&paged) = self.front.front() {
            return Some(paged);
        }
        let block = self.blocks.front()?;
        if self.read_index >= block.count {
            return None;
        }
        let mut at = self.read_at;
        Some(decode(&self.read_state, &block.bytes, &mut at, self.level))
    }

    pub(super) fn pop_front(&mut self) -> Option<Paged> {
        if let Some(paged) = self.front.pop_front() {
            self.len -= 1;
            return Some(paged);
        }
        let block = self.blocks.front()?;
        if self.read_index >= block.count {
            return None;
        }
        let paged = decode(
            &self.read_state,
            &block.bytes,
            &mut self.read_at,
            self.level,
        );
        self.read_index += 1;
        self.read_state = self.read_state.after(&paged);
        self.len -= 1;
        if self.read_index == block.count {
            // Read to its end. If it was the back block too, the index is
            // empty, and the next entry starts the block afresh (its
            // memory kept, as a queue that pages keeps paging).
            if self.blocks.len() == 1 {
                if let Some(back) = self.blocks.back_mut() {
                    back.bytes.clear();
                    back.count = 0;
                }
                self.write_state = State::START;
            } else if let Some(done) = self.blocks.pop_front() {
                self.sealed_bytes -= done.bytes.capacity();
            }
            self.read_at = 0;
            self.read_index = 0;
            self.read_state = State::START;
        }
        Some(paged)
    }

    /// Every entry, in order, decoded as it goes (the clean-stop index
    /// lists them; the index is left as it is).
    pub(super) fn iter(&self) -> impl Iterator<Item = Paged> + Clone + '_ {
        let mut block = 0;
        let mut index = self.read_index;
        let mut at = self.read_at;
        let mut state = self.read_state;
        let blocks = std::iter::from_fn(move || loop {
            let current = self.blocks.get(block)?;
            if index < current.count {
                let paged = decode(&state, &current.bytes, &mut at, self.level);
                index += 1;
                state = state.after(&paged);
                return Some(paged);
            }
            block += 1;
            index = 0;
            at = 0;
            state = State::START;
        });
        self.front.iter().copied().chain(blocks)
    }

    /// Lets the memory go if no entry is left (the queue's backlog is
    /// drained).
    pub(super) fn release_if_empty(&mut self) {
        if self.len == 0 {
            *self = PagedIndex::new(self.level);
        }
    }

    /// Takes every entry out, in order, and lets the memory go.
    pub(super) fn drain(&mut self, mut each: impl FnMut(Paged)) {
        while let Some(paged) = self.pop_front() {
            each(paged);
        }
        *self = PagedIndex::new(self.level);
    }

    /// The heap bytes the index holds (what the memory alarm counts).
    pub(super) fn memory_bytes(&self) -> usize {
        let back = self.blocks.back().map_or(0, |b| b.bytes.capacity());
        self.sealed_bytes
            + back
            + self.blocks.capacity() * std::mem::size_of::<Block>()
            + self.front.capacity() * std::mem::size_of::<Paged>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), so that a failure
    /// repeats.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn entry(seq: u64, segment: u32, offset: u64, len: u32, body_bytes: u64) -> Paged {
        Paged {
            seq,
            location: Location {
                segment,
                offset,
                len,
            },
            body_bytes,
            expires_at_ms: NEVER,
            redelivered: false,
            level: 0,
            transient: false,
        }
    }

    /// A typical backlog: one publisher's messages into one queue, records
    /// back to back, a padded gap where a write batch ended, a new segment
    /// every 64 MiB.
    fn typical(count: u64) -> Vec<Paged> {
        let mut out = Vec::new();
        let (mut segment, mut offset) = (1u32, 0u64);
        for seq in 0..count {
            let len = 1024 + 90;
            if offset + u64::from(len) > 64 << 20 {
                segment += 1;
                offset = 0;
            }
            out.push(entry(seq, segment, offset, len, 1024));
            offset += u64::from(len);
            if seq % 500 == 499 {
                offset = offset.next_multiple_of(4096);
            }
        }
        out
    }

    /// Every field random, any value: the worst the encoding can see.
    fn adversarial(rng: &mut Rng, count: usize) -> Vec<Paged> {
        let mut seq = 0u64;
        (0..count)
            .map(|_| {
                seq = seq.wrapping_add(1 + rng.next());
                Paged {
                    seq,
                    location: Location {
                        segment: rng.next() as u32,
                        offset: rng.next(),
                        len: rng.next() as u32,
                    },
                    body_bytes: rng.next(),
                    expires_at_ms: if rng.below(4) == 0 { NEVER } else { rng.next() },
                    redelivered: rng.below(2) == 0,
                    level: 0,
                    transient: rng.below(2) == 0,
                }
            })
            .collect()
    }

    /// Mostly typical, with every kind of break in it: sequence gaps,
    /// requeued (redelivered) messages, TTLs, other segments and sizes.
    fn mixed(rng: &mut Rng, count: usize) -> Vec<Paged> {
        let mut out = Vec::new();
        let (mut seq, mut segment, mut offset) = (rng.next() >> 20, 7u32, 0u64);
        let mut len = 200u32;
        let mut now = 1_000_000u64;
        for _ in 0..count {
            match rng.below(20) {
                0 => seq += 1 + rng.below(1000),
                1 => segment = segment.wrapping_add(1 + rng.below(3) as u32),
                2 => segment = segment.wrapping_sub(1 + rng.below(3) as u32),
                3 => len = 50 + rng.below(100_000) as u32,
                4 => offset = offset.saturating_sub(rng.below(10_000)),
                5 => offset += rng.below(1 << 40),
                _ => {}
            }
            now += rng.below(3);
            let ttl = rng.below(3) == 0;
            out.push(Paged {
                seq,
                location: Location {
                    segment,
                    offset,
                    len,
                },
                body_bytes: u64::from(len).saturating_sub(rng.below(3) * 40),
                expires_at_ms: if ttl { now + 60_000 } else { NEVER },
                redelivered: rng.below(10) == 0,
                level: 0,
                transient: rng.below(50) == 0,
            });
            seq += 1;
            offset += u64::from(len);
        }
        out
    }

    fn same(a: &Paged, b: &Paged) -> bool {
        a.seq == b.seq
            && a.location == b.location
            && a.body_bytes == b.body_bytes
            && a.expires_at_ms == b.expires_at_ms
            && a.redelivered == b.redelivered
            && a.level == b.level
            && a.transient == b.transient
    }

    /// `iter` lists what is left, in order, from a partly read front block
    /// and put-back entries on, and leaves the index as it was.
    #[test]
    fn iter_lists_what_is_left_in_order() {
        let mut rng = Rng(0x5eed_1735);
        let entries = mixed(&mut rng, 3 * BLOCK_ENTRIES_MAX as usize + 17);
        let mut index = PagedIndex::new(0);
        for &paged in &entries {
            index.push_back(paged);
        }
        let taken = BLOCK_ENTRIES_MAX as usize + 5;
        let popped: Vec<Paged> = (0..taken).filter_map(|_| index.pop_front()).collect();
        index.push_front(popped[taken - 1]);
        index.push_front(popped[taken - 2]);
        let listed: Vec<Paged> = index.iter().collect();
        assert_eq!(listed.len(), entries.len() - taken + 2);
        assert!(listed
            .iter()
            .zip(&entries[taken - 2..])
            .all(|(a, b)| same(a, b)));
        for expected in &entries[taken - 2..] {
            let paged = index.pop_front().expect("an entry per listed one");
            assert!(same(&paged, expected));
        }
        assert!(index.pop_front().is_none());
    }

    /// Pushes them all, then pops them all, peeking first; gives back what
    /// each block took (encoded bytes, entries) when all were in.
    fn round_trip(entries: &[Paged]) -> Vec<(usize, u32)> {
        let mut index = PagedIndex::new(0);
        for &paged in entries {
            index.push_back(paged);
        }
        assert_eq!(index.len(), entries.len());
        let blocks = index
            .blocks
            .iter()
            .map(|b| (b.bytes.len(), b.count))
            .collect();
        for expected in entries {
            let peeked = index.front().expect("an entry left");
            assert!(same(&peeked, expected), "{peeked:?} != {expected:?}");
            let popped = index.pop_front().expect("an entry left");
            assert!(same(&popped, expected), "{popped:?} != {expected:?}");
        }
        assert!(index.is_empty());
        assert!(index.pop_front().is_none());
        assert!(index.front().is_none());
        assert!(index.blocks.len() <= 1);
        index.release_if_empty();
        assert_eq!(index.memory_bytes(), 0);
        blocks
    }

    #[test]
    fn varints_and_zigzag_round_trip() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut values = vec![
            0,
            1,
            127,
            128,
            16383,
            16384,
            u64::MAX,
            u64::MAX - 1,
            1 << 63,
        ];
        values.extend((0..1000).map(|_| rng.next() >> rng.below(64)));
        for value in values {
            let mut buf = [0u8; DELTA_BYTES_MAX];
            let mut at = 0;
            put_varint(&mut buf, &mut at, value);
            assert!(at <= 10);
            let mut read = 0;
            assert_eq!(get_varint(&buf, &mut read), value);
            assert_eq!(read, at);
            assert_eq!(unzigzag(zigzag(value)), value);
        }
        assert_eq!(zigzag((-1i64) as u64), 1);
        assert_eq!(zigzag(1), 2);
    }

    #[test]
    fn typical_backlog_round_trips_in_about_a_byte_each() {
        let entries = typical(3 * u64::from(BLOCK_ENTRIES_MAX) + 17);
        let encoded: usize = round_trip(&entries).iter().map(|b| b.0).sum();
        assert!(
            encoded < entries.len() * 11 / 10,
            "{encoded} bytes for {} entries",
            entries.len()
        );
    }

    #[test]
    fn random_and_adversarial_sequences_round_trip() {
        let mut rng = Rng(42);
        for round in 0..20 {
            let count = rng.below(3 * u64::from(BLOCK_ENTRIES_MAX)) as usize + round;
            let entries = mixed(&mut rng, count);
            round_trip(&entries);
            let entries = adversarial(&mut rng, count / 4);
            for (bytes, count) in round_trip(&entries) {
                assert!(bytes <= count as usize * PLAIN_BYTES);
            }
        }
        // Extremes of every field, including the values next to the start
        // state and to NEVER.
        let extremes = [
            0u64,
            1,
            2,
            u64::MAX,
            u64::MAX - 1,
            1 << 32,
            u64::from(u32::MAX),
        ];
        let mut entries = Vec::new();
        for (i, &a) in extremes.iter().enumerate() {
            for &b in &extremes {
                entries.push(Paged {
                    seq: a.wrapping_add(i as u64),
                    location: Location {
                        segment: b as u32,
                        offset: a ^ b,
                        len: a as u32,
                    },
                    body_bytes: b,
                    expires_at_ms: a.wrapping_sub(b),
                    redelivered: i % 2 == 0,
                    level: 0,
                    transient: i % 3 == 0,
                });
            }
        }
        round_trip(&entries);
    }

    #[test]
    fn interleaved_pushes_pops_and_put_backs_keep_the_order() {
        let mut rng = Rng(7);
        let entries = mixed(&mut rng, 20_000);
        let mut index = PagedIndex::new(0);
        let mut model: VecDeque<Paged> = VecDeque::new();
        let mut next = 0;
        while next < entries.len() || !model.is_empty() {
            match rng.below(10) {
                0..=4 if next < entries.len() => {
                    let burst = rng.below(5000) as usize;
                    for &paged in entries.iter().skip(next).take(burst) {
                        index.push_back(paged);
                        model.push_back(paged);
                    }
                    next = (next + burst).min(entries.len());
                }
                5 => {
                    // A read that failed: its entries go back to the front.
                    let mut taken = Vec::new();
                    for _ in 0..rng.below(100) {
                        match index.pop_front() {
                            Some(paged) => taken.push(paged),
                            None => break,
                        }
                        model.pop_front();
                    }
                    while let Some(paged) = taken.pop() {
                        index.push_front(paged);
                        model.push_front(paged);
                    }
                }
                _ => {
                    for _ in 0..rng.below(3000) {
                        let got = index.pop_front();
                        let expected = model.pop_front();
                        match (got, expected) {
                            (Some(got), Some(expected)) => assert!(same(&got, &expected)),
                            (None, None) => break,
                            (got, expected) => panic!("{got:?} != {expected:?}"),
                        }
                    }
                }
            }
            assert_eq!(index.len(), model.len());
        }
        assert!(index.pop_front().is_none());
        // Emptied, it keeps one block for the next entries, until released.
        assert!(index.blocks.len() <= 1);
        index.release_if_empty();
        assert_eq!(index.memory_bytes(), 0);
    }

    #[test]
    fn memory_per_entry_is_bounded() {
        // Typical: at most 12 bytes an entry, every overhead counted (it
        // is about one).
        let count = 1_000_000;
        let mut index = PagedIndex::new(0);
        for paged in typical(count) {
            index.push_back(paged);
        }
        let per_entry = index.memory_bytes() as f64 / count as f64;
        assert!(per_entry <= 2.0, "{per_entry} bytes an entry");
        // Adversarial: no more than a plain entry, with the bookkeeping and
        // the growing back block's slack, and less than a `Paged` in a
        // VecDeque (what the index replaced).
        let mut rng = Rng(3);
        let count = 200_000;
        let mut index = PagedIndex::new(0);
        for paged in adversarial(&mut rng, count) {
            index.push_back(paged);
        }
        let per_entry = index.memory_bytes() as f64 / count as f64;
        assert!(
            per_entry < std::mem::size_of::<Paged>() as f64,
            "{per_entry} bytes an entry"
        );
        // Drained, it lets its memory go.
        let mut drained = 0;
        index.drain(|_| drained += 1);
        assert_eq!(drained, count);
        assert_eq!(index.memory_bytes(), 0);
    }

    #[test]
    fn a_read_to_its_end_frees_the_front_block() {
        let entries = typical(u64::from(BLOCK_ENTRIES_MAX) * 4);
        let mut index = PagedIndex::new(0);
        for &paged in &entries {
            index.push_back(paged);
        }
        let full = index.memory_bytes();
        for _ in 0..BLOCK_ENTRIES_MAX * 2 {
            index.pop_front();
        }
        assert_eq!(index.blocks.len(), 2);
        assert!(index.memory_bytes() < full);
    }
}

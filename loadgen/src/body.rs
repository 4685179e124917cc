//! The body every loadgen message carries, so consumers can check order and loss and
//! measure latency without any broker help (properties and headers stay empty).
//!
//! A body of 20 bytes or more starts with the full stamp:
//!
//! ```text
//! +-------------+-----------+----------------------+------------------+
//! | producer id | sequence  | intended send time   | padding (zeros)  |
//! | u32 BE      | u64 BE    | u64 BE, ns (clock.rs)| up to --size     |
//! +-------------+-----------+----------------------+------------------+
//! ```
//!
//! A smaller one (PerfTest's bodies go down to 12 bytes) has the compact stamp, which
//! fills 12 bytes:
//!
//! ```text
//! +-------------+-------------------+---------------------------+---------+
//! | producer id | sequence, low 32  | intended send time, ns,   | padding |
//! | u16 BE      | bits, u32 BE      | low 48 bits (78 hours)    |         |
//! +-------------+-------------------+---------------------------+---------+
//! ```
//!
//! The reader of a compact stamp widens the sequence back to 64 bits with the one
//! nearest to the highest it has seen from that producer ([`Stamp::sequence_near`]), so
//! runs of more than 4 billion messages per producer stay exact as long as messages
//! are not reordered by 2 billion; the time is taken back from the reader's own clock
//! the same way. Which stamp a body has follows from its length alone: producers
//! choose by the body size, so the per-message path adds one predictable branch.

/// The size of the full stamp: bodies this large or larger carry it.
pub const BODY_HEADER_SIZE: usize = 20;
/// The smallest body loadgen can send: the compact stamp (PerfTest's minimum too).
pub const BODY_SIZE_MIN: usize = 12;
/// Producers a run with compact stamps may have (their ids are 16 bits).
pub const COMPACT_PRODUCERS_MAX: usize = 1 << 16;

const COMPACT_TIME_BITS: u32 = 48;
const COMPACT_TIME_MASK: u64 = (1 << COMPACT_TIME_BITS) - 1;

/// What a consumer reads from the front of a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub producer_id: u32,
    /// The full sequence number, or only its low 32 bits when `compact`.
    pub sequence: u64,
    pub intended_ns: u64,
    /// Read from a compact stamp: `sequence` needs [`Stamp::sequence_near`].
    pub compact: bool,
}

impl Stamp {
    /// The full sequence number: as written, or for a compact stamp the one with these
    /// low 32 bits that is nearest to `near` (the next sequence the reader expects).
    #[inline]
    pub fn sequence_near(&self, near: u64) -> u64 {
        if !self.compact {
            return self.sequence;
        }
        widen(self.sequence, near, 32)
    }
}

/// The value with the low `bits` of `low` that is nearest to `near`.
#[inline]
fn widen(low: u64, near: u64, bits: u32) -> u64 {
    let span = 1u64 << bits;
    let candidate = (near & !(span - 1)) | low;
    if candidate > near.saturating_add(span / 2) && candidate >= span {
        candidate - span
    } else if candidate.saturating_add(span / 2) < near {
        candidate.saturating_add(span)
    } else {
        candidate
    }
}

/// Writes the stamp into the front of `body`: the full one when the body has room for
/// it, the compact one otherwise (the body must have at least [`BODY_SIZE_MIN`] bytes).
#[inline]
pub fn write_stamp(body: &mut [u8], stamp: Stamp) {
    if body.len() >= BODY_HEADER_SIZE {
        body[0..4].copy_from_slice(&stamp.producer_id.to_be_bytes());
        body[4..12].copy_from_slice(&stamp.sequence.to_be_bytes());
        body[12..20].copy_from_slice(&stamp.intended_ns.to_be_bytes());
    } else {
        body[0..2].copy_from_slice(&(stamp.producer_id as u16).to_be_bytes());
        body[2..6].copy_from_slice(&(stamp.sequence as u32).to_be_bytes());
        body[6..12].copy_from_slice(&stamp.intended_ns.to_be_bytes()[2..8]);
    }
}

/// Reads the stamp from the front of a body, or `None` if it is too short (a message
/// loadgen did not send). `now_ns` (the reader's clock) widens a compact stamp's time.
#[inline]
pub fn read_stamp(body: &[u8], now_ns: u64) -> Option<Stamp> {
    if let Some(head) = body.get(..BODY_HEADER_SIZE) {
        return Some(Stamp {
            producer_id: u32::from_be_bytes(head[0..4].try_into().ok()?),
            sequence: u64::from_be_bytes(head[4..12].try_into().ok()?),
            intended_ns: u64::from_be_bytes(head[12..20].try_into().ok()?),
            compact: false,
        });
    }
    let head = body.get(..BODY_SIZE_MIN)?;
    let mut time = [0u8; 8];
    time[2..8].copy_from_slice(&head[6..12]);
    // The send time is before the receive time; of the candidates with these low bits,
    // the latest not after now (a message from the future is someone else's).
    let low = u64::from_be_bytes(time) & COMPACT_TIME_MASK;
    let mut intended_ns = (now_ns & !COMPACT_TIME_MASK) | low;
    if intended_ns > now_ns {
        intended_ns = intended_ns.saturating_sub(1 << COMPACT_TIME_BITS);
    }
    Some(Stamp {
        producer_id: u32::from(u16::from_be_bytes(head[0..2].try_into().ok()?)),
        sequence: u64::from(u32::from_be_bytes(head[2..6].try_into().ok()?)),
        intended_ns,
        compact: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_short_bodies_are_refused() {
        let stamp = Stamp {
            producer_id: 7,
            sequence: u64::MAX - 3,
            intended_ns: 123_456_789,
            compact: false,
        };
        let mut body = vec![0u8; 32];
        write_stamp(&mut body, stamp);
        assert_eq!(read_stamp(&body, 200_000_000), Some(stamp));
        assert_eq!(read_stamp(&body[..11], 200_000_000), None);
    }

    #[test]
    fn compact_stamps_widen_back_to_the_full_values() {
        let now_ns = (5u64 << 48) + 1_000;
        let sequence = (3u64 << 32) + 17;
        let stamp = Stamp {
            producer_id: 65_535,
            sequence,
            intended_ns: now_ns - 2_000,
            compact: false,
        };
        let mut body = vec![0u8; 12];
        write_stamp(&mut body, stamp);
        let read = read_stamp(&body, now_ns).unwrap();
        assert!(read.compact);
        assert_eq!(
            (read.producer_id, read.intended_ns),
            (65_535, now_ns - 2_000)
        );
        assert_eq!(read.sequence_near(sequence - 5), sequence);
        assert_eq!(read.sequence_near(sequence + 1_000), sequence);
        // Across a wrap of the low 32 bits, in both directions.
        assert_eq!(widen(2, (1 << 32) - 3, 32), (1 << 32) + 2);
        assert_eq!(widen((1 << 32) - 2, (1 << 32) + 3, 32), (1 << 32) - 2);
        assert_eq!(widen(5, 0, 32), 5);
    }
}

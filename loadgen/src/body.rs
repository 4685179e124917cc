//! The body every loadgen message carries, so consumers can check order and loss and
//! measure latency without any broker help (properties and headers stay empty).
//!
//! ```text
//! +-------------+-----------+----------------------+------------------+
//! | producer id | sequence  | intended send time   | padding (zeros)  |
//! | u32 BE      | u64 BE    | u64 BE, ns (clock.rs)| up to --size     |
//! +-------------+-----------+----------------------+------------------+
//! ```

/// The smallest body loadgen can send: the three fields above.
pub const BODY_HEADER_SIZE: usize = 20;

/// What a consumer reads from the front of a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub producer_id: u32,
    pub sequence: u64,
    pub intended_ns: u64,
}

/// Writes the stamp into the first 20 bytes of `body`.
#[inline]
pub fn write_stamp(body: &mut [u8], stamp: Stamp) {
    body[0..4].copy_from_slice(&stamp.producer_id.to_be_bytes());
    body[4..12].copy_from_slice(&stamp.sequence.to_be_bytes());
    body[12..20].copy_from_slice(&stamp.intended_ns.to_be_bytes());
}

/// Reads the stamp from the front of a body, or `None` if it is too short (a message
/// loadgen did not send).
#[inline]
pub fn read_stamp(body: &[u8]) -> Option<Stamp> {
    let head = body.get(..BODY_HEADER_SIZE)?;
    Some(Stamp {
        producer_id: u32::from_be_bytes(head[0..4].try_into().ok()?),
        sequence: u64::from_be_bytes(head[4..12].try_into().ok()?),
        intended_ns: u64::from_be_bytes(head[12..20].try_into().ok()?),
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
        };
        let mut body = vec![0u8; 32];
        write_stamp(&mut body, stamp);
        assert_eq!(read_stamp(&body), Some(stamp));
        assert_eq!(read_stamp(&body[..19]), None);
    }
}

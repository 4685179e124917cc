//! The hasher behind every map on the per-message path.
//!
//! std's SipHash cost a fifth of a shard's time at full load: each publish
//! looks up its channel, exchange, binding and queue, and each delivery its
//! connection and channel. This is a multiply-and-fold hash over 8-byte words,
//! seeded once per process so that the placement of client-chosen names
//! (routing keys, queue names) in a table cannot be predicted from outside.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

pub(crate) type FastMap<K, V> = HashMap<K, V, FastBuild>;
pub(crate) type FastSet<K> = HashSet<K, FastBuild>;

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        // RandomState draws its keys from the OS; one hash of it is our seed.
        std::collections::hash_map::RandomState::new().hash_one(0x7761_7272_656e_u64)
    })
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct FastBuild {
    seed: u64,
}

impl Default for FastBuild {
    fn default() -> Self {
        FastBuild {
            seed: process_seed(),
        }
    }
}

impl BuildHasher for FastBuild {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher { state: self.seed }
    }
}

pub(crate) struct FastHasher {
    state: u64,
}

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.state = (self.state.rotate_left(5) ^ word).wrapping_mul(MULTIPLIER);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            // The tail is padded with zeros, so its length goes into the
            // byte the padding never reaches: otherwise "a" and "a\0" would
            // be the same word, and every name ending in NULs would collide
            // with the name without them.
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            last[7] = rest.len() as u8;
            self.add(u64::from_le_bytes(last));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    /// Folds the high half of a full 128-bit product back in: hashbrown picks
    /// buckets from the low bits and control bytes from the top seven, and
    /// both must depend on every input bit.
    #[inline]
    fn finish(&self) -> u64 {
        let full = u128::from(self.state) * u128::from(MULTIPLIER);
        (full as u64) ^ ((full >> 64) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_keys_hash_equal_and_neighbours_spread() {
        let build = FastBuild::default();
        assert_eq!(build.hash_one("amq.direct"), build.hash_one("amq.direct"));
        let mut top_bits = FastSet::default();
        let mut low_bits = FastSet::default();
        for n in 0u64..4096 {
            let h = build.hash_one(n);
            top_bits.insert(h >> 57);
            low_bits.insert(h & 0xfff);
        }
        // Sequential ids (queue ids, channel numbers) must not pile into a few
        // buckets or share control bytes.
        assert_eq!(top_bits.len(), 128);
        assert!(low_bits.len() > 2500, "{}", low_bits.len());
    }

    #[test]
    fn strings_differing_only_in_the_tail_differ() {
        let build = FastBuild::default();
        assert_ne!(build.hash_one("queue-1"), build.hash_one("queue-2"));
        assert_ne!(build.hash_one("abcdefgh1"), build.hash_one("abcdefgh2"));
        assert_ne!(build.hash_one(""), build.hash_one("\0"));
    }

    #[test]
    fn trailing_nuls_change_the_hash() {
        let build = FastBuild::default();
        assert_ne!(build.hash_one("a"), build.hash_one("a\0"));
        assert_ne!(build.hash_one("a\0"), build.hash_one("a\0\0"));
        assert_ne!(build.hash_one("abcdefgh"), build.hash_one("abcdefgh\0"));
        assert_ne!(build.hash_one(&b"ab"[..]), build.hash_one(&b"ab\0"[..]));
        let mut one = build.build_hasher();
        one.write(b"queue");
        let mut other = build.build_hasher();
        other.write(b"queue\0\0");
        assert_ne!(one.finish(), other.finish());
    }
}

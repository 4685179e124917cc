//! Which sequence numbers of one producer a consumer has seen on one queue: a bitmap
//! whose fully-seen prefix is dropped as it completes, so a consumer that gets every
//! message of a producer holds only the window of messages still arriving out of
//! order. No allocation per message: the bitmap grows a word (64 messages) at a time.
//!
//! With several consumers on one queue each sees only some of the messages, its
//! prefix never completes, and it keeps one bit per message of the run (125 KB per
//! million messages). The bitmaps of all consumers are merged word by word at the end
//! (`merge`), which finds messages nobody received and messages received twice.
//!
//! Order is judged per (producer, queue, consumer connection): a message is out of
//! order when it arrives after a higher sequence number from the same producer on
//! the same queue and connection. Across consumers of one queue, interleaving is
//! normal and not counted.

use std::collections::VecDeque;

/// Sequence numbers this far beyond the highest seen are not a loadgen producer's
/// (a corrupt or foreign body); they are counted as foreign instead of growing the
/// bitmap by gigabytes.
const SEQUENCE_JUMP_MAX: u64 = 1 << 32;

#[derive(Clone, Debug, Default)]
pub struct SeqBits {
    /// Every sequence number below `base` has been seen; a multiple of 64.
    base: u64,
    /// Bit i of word w stands for sequence `base + 64 * w + i`.
    words: VecDeque<u64>,
    /// One more than the highest sequence number seen (0: none yet).
    next: u64,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub foreign: u64,
}

impl SeqBits {
    /// One more than the highest sequence number seen (0: none yet).
    #[inline]
    pub fn next(&self) -> u64 {
        self.next
    }

    #[inline]
    pub fn record(&mut self, sequence: u64) {
        if sequence >= self.next.saturating_add(SEQUENCE_JUMP_MAX) {
            self.foreign += 1;
            return;
        }
        self.received += 1;
        if sequence < self.base {
            self.duplicates += 1;
            return;
        }
        let offset = sequence - self.base;
        let word = (offset / 64) as usize;
        let bit = 1u64 << (offset % 64);
        while self.words.len() <= word {
            self.words.push_back(0);
        }
        if self.words[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.words[word] |= bit;
        if sequence < self.next {
            self.out_of_order += 1;
        } else {
            self.next = sequence + 1;
        }
        while self.words.front() == Some(&u64::MAX) {
            self.words.pop_front();
            self.base += 64;
        }
    }

    /// Word `index` of the absolute bitmap (sequences `64 * index ..`).
    fn word(&self, index: u64) -> u64 {
        let first = self.base / 64;
        if index < first {
            u64::MAX
        } else {
            self.words
                .get((index - first) as usize)
                .copied()
                .unwrap_or(0)
        }
    }

    /// One past the last word that may hold a set bit.
    fn end_word(&self) -> u64 {
        self.base / 64 + self.words.len() as u64
    }
}

/// What the consumers of one queue saw of one producer, all consumers together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    pub received: u64,
    /// Deliveries of a sequence number already delivered (to any consumer).
    pub duplicates: u64,
    pub out_of_order: u64,
    pub foreign: u64,
    /// Sequence numbers in `0..sent` that no consumer received.
    pub missing: u64,
}

/// Merges the bitmaps of every consumer that saw this (producer, queue), and counts
/// what is missing of the `sent` messages. `is_seen_by_any` answers for single
/// sequence numbers afterwards (for the confirmed-but-lost check).
pub fn merge<'a>(parts: &'a [&'a SeqBits], sent: u64) -> (Merged, impl Fn(u64) -> bool + 'a) {
    let mut merged = Merged::default();
    for part in parts {
        merged.received += part.received;
        merged.duplicates += part.duplicates;
        merged.out_of_order += part.out_of_order;
        merged.foreign += part.foreign;
    }
    let end_word = parts
        .iter()
        .map(|p| p.end_word())
        .max()
        .unwrap_or(0)
        .max(sent.div_ceil(64));
    for w in 0..end_word {
        let mut union = 0u64;
        for part in parts {
            let bits = part.word(w);
            merged.duplicates += u64::from((union & bits).count_ones());
            union |= bits;
        }
        // Count only sequences below `sent` as missing.
        let first = w * 64;
        if first < sent {
            let valid = if sent - first >= 64 {
                u64::MAX
            } else {
                (1u64 << (sent - first)) - 1
            };
            merged.missing += u64::from((!union & valid).count_ones());
        }
    }
    let seen = move |sequence: u64| {
        let w = sequence / 64;
        let bit = 1u64 << (sequence % 64);
        parts.iter().any(|p| p.word(w) & bit != 0)
    };
    (merged, seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_keeps_no_window() {
        let mut bits = SeqBits::default();
        for s in 0..10_000 {
            bits.record(s);
        }
        assert_eq!(bits.words.len(), 1, "only the partial last word is kept");
        assert_eq!(bits.base, 9_984);
        assert_eq!(
            (bits.received, bits.duplicates, bits.out_of_order),
            (10_000, 0, 0)
        );
        let parts = [&bits];
        let (merged, seen) = merge(&parts, 10_000);
        assert_eq!(merged.missing, 0);
        assert!(seen(5) && !seen(10_000));
    }

    #[test]
    fn gaps_duplicates_and_reordering_are_counted() {
        let mut bits = SeqBits::default();
        for s in [0, 1, 3, 2, 2, 5, 0] {
            bits.record(s);
        }
        assert_eq!(bits.received, 7);
        assert_eq!(bits.duplicates, 2);
        assert_eq!(bits.out_of_order, 1);
        let parts = [&bits];
        let (merged, seen) = merge(&parts, 8);
        // 4, 6 and 7 never arrived.
        assert_eq!(merged.missing, 3);
        assert!(!seen(4) && seen(5));
    }

    #[test]
    fn two_consumers_sharing_a_queue_merge_to_complete() {
        let (mut a, mut b) = (SeqBits::default(), SeqBits::default());
        for s in 0..1_000u64 {
            if s % 2 == 0 {
                a.record(s)
            } else {
                b.record(s)
            }
        }
        b.record(10); // a duplicate across consumers
        let (merged, _) = merge(&[&a, &b], 1_000);
        assert_eq!(merged.missing, 0);
        assert_eq!(merged.duplicates, 1);
        assert_eq!(merged.out_of_order, 1, "b saw 10 after 999");
        assert_eq!(merged.received, 1_001);
    }

    #[test]
    fn absurd_sequence_numbers_are_foreign() {
        let mut bits = SeqBits::default();
        bits.record(u64::MAX - 1);
        assert_eq!((bits.foreign, bits.received, bits.words.len()), (1, 0, 0));
    }
}

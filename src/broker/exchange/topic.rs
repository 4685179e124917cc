//! Topic exchange: binding keys are dot-separated words where `*` matches
//! exactly one word and `#` zero or more. Bindings live in a trie keyed by
//! word, so a publish walks the words of its routing key once instead of
//! testing every binding (RabbitMQ's rabbit_exchange_type_topic does the same
//! with a Mnesia trie).
//!
//! As in RabbitMQ, an empty key has zero words and "a..b" has three
//! ("a", "", "b").
//!
//! Matching costs at most O(trie nodes x key words), whatever the patterns:
//! a walk is a set of (node, word position) states, and a state reached
//! twice is not walked twice. Only a node below two `#`s can be reached
//! twice at one position (two `#`s can share the same words in several
//! ways: `#.#.#.z` against a long key has a number of ways exponential in
//! the number of `#`s), so the walk remembers states only there, and a
//! publish matching common patterns (`a.*.c`, `lazy.#`) allocates nothing.
//! RabbitMQ bounds neither pattern nor key by words; nor does warren,
//! beyond the 255 bytes of a short string.

use crate::util::hash::{FastMap, FastSet};

use crate::metadata::exchange::{Binding, Destination};
use warren_protocol::ShortStr;

/// Routing keys with more words than this are split into a heap buffer;
/// below it, matching allocates nothing.
const WORDS_ON_STACK: usize = 32;

#[derive(Debug, Default)]
struct Node {
    words: FastMap<ShortStr, Node>,
    star: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    destinations: Vec<Destination>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
            && self.destinations.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct TopicRouter {
    root: Node,
}

fn split_words(key: &str) -> impl Iterator<Item = &str> {
    // An empty key has no words at all, not one empty word.
    let mut words = key.split('.');
    if key.is_empty() {
        words.next();
    }
    words
}

impl TopicRouter {
    pub fn bind(&mut self, binding: &Binding) {
        let mut node = &mut self.root;
        for word in split_words(binding.routing_key.as_str()) {
            node = match word {
                "*" => node.star.get_or_insert_with(Default::default),
                "#" => node.hash.get_or_insert_with(Default::default),
                word => node.words.entry(ShortStr::from(word)).or_default(),
            };
        }
        node.destinations.push(binding.destination.clone());
    }

    pub(crate) fn unbind(&mut self, binding: &Binding) {
        let words: Vec<&str> = split_words(binding.routing_key.as_str()).collect();
        remove(&mut self.root, &words, &binding.destination);
    }

    pub fn route(&self, routing_key: &str, out: &mut Vec<Destination>) {
        let mut stack: [&str; WORDS_ON_STACK] = [""; WORDS_ON_STACK];
        let mut count = 0;
        let mut heap: Vec<&str> = Vec::new();
        for word in split_words(routing_key) {
            if count < WORDS_ON_STACK {
                stack[count] = word;
            } else {
                if heap.is_empty() {
                    heap.extend_from_slice(&stack);
                }
                heap.push(word);
            }
            count += 1;
        }
        let words = if count <= WORDS_ON_STACK {
            &stack[..count]
        } else {
            &heap[..]
        };
        match_words(&self.root, words, out);
    }
}

/// Removes one destination at the node the words lead to, pruning empty nodes.
fn remove(node: &mut Node, words: &[&str], destination: &Destination) -> bool {
    match words.split_first() {
        None => {
            if let Some(at) = node.destinations.iter().position(|d| d == destination) {
                node.destinations.swap_remove(at);
            }
        }
        Some((&"*", rest)) => {
            if let Some(child) = node.star.as_deref_mut() {
                if remove(child, rest, destination) {
                    node.star = None;
                }
            }
        }
        Some((&"#", rest)) => {
            if let Some(child) = node.hash.as_deref_mut() {
                if remove(child, rest, destination) {
                    node.hash = None;
                }
            }
        }
        Some((word, rest)) => {
            if let Some(child) = node.words.get_mut(*word) {
                if remove(child, rest, destination) {
                    node.words.remove(*word);
                }
            }
        }
    }
    node.is_empty()
}

fn match_words(node: &Node, words: &[&str], out: &mut Vec<Destination>) {
    let mut seen = None;
    visit(node, words, 0, 0, out, &mut seen);
}

/// The states a walk has met below a second `#`: (node address, word
/// position, true for "in the `#` loop"). Made on first need only.
type Seen = Option<FastSet<(usize, usize, bool)>>;

/// Matches `words[at..]` against `node`, which `hashes` `#` words lead to
/// from the root.
fn visit(
    node: &Node,
    words: &[&str],
    at: usize,
    hashes: u32,
    out: &mut Vec<Destination>,
    seen: &mut Seen,
) {
    // Above a second `#`, a state can be met only once.
    if hashes >= 2 && !first_time(seen, node, at, false) {
        return;
    }
    if let Some(hash) = node.hash.as_deref() {
        // `#` swallows zero or more words: its child is tried at every
        // position from here on.
        if hashes == 0 {
            for from in at..=words.len() {
                visit(hash, words, from, 1, out, seen);
            }
        } else {
            // A position already tried from this `#` means every later one
            // was tried too.
            for from in at..=words.len() {
                if !first_time(seen, hash, from, true) {
                    break;
                }
                visit(hash, words, from, hashes + 1, out, seen);
            }
        }
    }
    let Some(word) = words.get(at) else {
        out.extend(node.destinations.iter().cloned());
        return;
    };
    if let Some(child) = node.words.get(*word) {
        visit(child, words, at + 1, hashes, out, seen);
    }
    if let Some(star) = node.star.as_deref() {
        visit(star, words, at + 1, hashes, out, seen);
    }
}

/// True the first time a state is met.
#[cold]
fn first_time(seen: &mut Seen, node: &Node, at: usize, in_hash: bool) -> bool {
    let key = (node as *const Node as usize, at, in_hash);
    seen.get_or_insert_with(FastSet::default).insert(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ids::{QueueId, QueueRef, ShardId};
    use warren_protocol::FieldTable;

    fn queue(n: u64) -> Destination {
        Destination::Queue(QueueRef {
            id: QueueId(n),
            shard: ShardId(0),
        })
    }

    fn binding(key: &str, n: u64) -> Binding {
        Binding {
            source: ShortStr::from("t"),
            destination: queue(n),
            routing_key: ShortStr::from(key),
            arguments: FieldTable::default(),
        }
    }

    fn routed(router: &TopicRouter, key: &str) -> Vec<u64> {
        let mut out = Vec::new();
        router.route(key, &mut out);
        let mut ids: Vec<u64> = out
            .into_iter()
            .map(|d| match d {
                Destination::Queue(q) => q.id.0,
                Destination::Exchange(_) => unreachable!(),
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn matches(pattern: &str, key: &str) -> bool {
        let mut router = TopicRouter::default();
        router.bind(&binding(pattern, 1));
        routed(&router, key) == vec![1]
    }

    #[test]
    fn star_matches_exactly_one_word() {
        assert!(matches("kern.*", "kern.critical"));
        assert!(!matches("kern.*", "kern"));
        assert!(!matches("kern.*", "kern.a.b"));
        assert!(matches("*.critical", "kern.critical"));
        assert!(!matches("*.critical", "critical"));
        assert!(matches("*", "a"));
        assert!(!matches("*", ""));
        assert!(matches("a.*.c", "a..c"));
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        assert!(matches("#", ""));
        assert!(matches("#", "a"));
        assert!(matches("#", "a.b.c"));
        assert!(matches("a.#", "a"));
        assert!(matches("a.#", "a.b.c"));
        assert!(matches("a.#.b", "a.b"));
        assert!(matches("a.#.b", "a.x.y.b"));
        assert!(!matches("a.#.b", "a.x.y.c"));
        assert!(matches("#.b", "b"));
        assert!(matches("#.b", "x.b"));
        assert!(matches("lazy.#", "lazy.orange.male.rabbit"));
        assert!(!matches("*.orange.*", "quick.orange.male.rabbit"));
        assert!(matches("#.#", "a"));
        assert!(matches("*.#", "a"));
        assert!(!matches("*.#", ""));
    }

    #[test]
    fn literal_words_and_empty_keys() {
        assert!(matches("", ""));
        assert!(!matches("", "a"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.bb"));
        assert!(matches("a..b", "a..b"));
    }

    #[test]
    fn unbind_prunes_only_its_destination() {
        let mut router = TopicRouter::default();
        router.bind(&binding("a.*", 1));
        router.bind(&binding("a.*", 2));
        router.bind(&binding("#", 3));
        assert_eq!(routed(&router, "a.b"), vec![1, 2, 3]);
        router.unbind(&binding("a.*", 1));
        assert_eq!(routed(&router, "a.b"), vec![2, 3]);
        router.unbind(&binding("#", 3));
        router.unbind(&binding("a.*", 2));
        assert!(router.root.is_empty());
    }

    #[test]
    fn long_keys_spill_to_the_heap() {
        let key = vec!["w"; 100].join(".");
        assert!(matches("#.w", &key));
        assert!(matches("w.#", &key));
    }

    /// The matcher before the walk remembered states: exponential on
    /// patterns with many `#`s, kept here as the reference.
    fn match_words_backtracking(node: &Node, words: &[&str], out: &mut Vec<Destination>) {
        if let Some(hash) = node.hash.as_deref() {
            for skip in 0..=words.len() {
                match_words_backtracking(hash, &words[skip..], out);
            }
        }
        let Some((first, rest)) = words.split_first() else {
            out.extend(node.destinations.iter().cloned());
            return;
        };
        if let Some(child) = node.words.get(*first) {
            match_words_backtracking(child, rest, out);
        }
        if let Some(star) = node.star.as_deref() {
            match_words_backtracking(star, rest, out);
        }
    }

    /// A third opinion, with no trie: one pattern against one key by
    /// dynamic programming over (pattern words, key words).
    fn matches_by_table(pattern: &str, key: &str) -> bool {
        let p: Vec<&str> = split_words(pattern).collect();
        let k: Vec<&str> = split_words(key).collect();
        // can[i][j]: pattern words i.. match key words j..
        let mut can = vec![vec![false; k.len() + 1]; p.len() + 1];
        can[p.len()][k.len()] = true;
        for i in (0..p.len()).rev() {
            for j in (0..=k.len()).rev() {
                can[i][j] = match p[i] {
                    "#" => can[i + 1][j] || (j < k.len() && can[i][j + 1]),
                    "*" => j < k.len() && can[i + 1][j + 1],
                    word => j < k.len() && k[j] == word && can[i + 1][j + 1],
                };
            }
        }
        can[0][0]
    }

    /// A small deterministic generator (xorshift), so failures repeat.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }

        fn words(&mut self, choices: &[&str], max: u64) -> String {
            let count = self.below(max + 1);
            (0..count)
                .map(|_| choices[self.below(choices.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(".")
        }
    }

    #[test]
    fn random_patterns_route_as_the_backtracking_matcher_and_the_table() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..300 {
            let mut router = TopicRouter::default();
            let mut patterns = Vec::new();
            for n in 0..6 {
                let pattern = rng.words(&["#", "#", "*", "a", "b", ""], 7);
                router.bind(&binding(&pattern, n));
                patterns.push(pattern);
            }
            for _ in 0..20 {
                let key = rng.words(&["a", "b", "c", ""], 9);
                let words: Vec<&str> = split_words(&key).collect();
                let mut expected = Vec::new();
                match_words_backtracking(&router.root, &words, &mut expected);
                expected.sort_unstable();
                expected.dedup();
                let mut got = Vec::new();
                router.route(&key, &mut got);
                got.sort_unstable();
                got.dedup();
                assert_eq!(got, expected, "patterns {patterns:?}, key {key:?}");
                let by_table: Vec<u64> = (0..6u64)
                    .filter(|&n| matches_by_table(&patterns[n as usize], &key))
                    .collect();
                assert_eq!(
                    routed(&router, &key),
                    by_table,
                    "patterns {patterns:?}, key {key:?}"
                );
            }
        }
    }

    /// Counts the states a walk visits, to check the bound without a clock.
    fn states_walked(router: &TopicRouter, key: &str) -> usize {
        let words: Vec<&str> = split_words(key).collect();
        let mut out = Vec::new();
        let mut seen = None;
        visit(&router.root, &words, 0, 0, &mut out, &mut seen);
        seen.map_or(0, |seen| seen.len())
    }

    #[test]
    fn many_hashes_against_a_long_key_cost_nodes_times_words() {
        let pattern = ["#"; 12].join(".") + ".z";
        let mut router = TopicRouter::default();
        router.bind(&binding(&pattern, 1));
        // 256 empty words: the longest key a short string can hold.
        let key = ".".repeat(255);
        assert!(routed(&router, &key).is_empty());
        let nodes = 14;
        assert!(states_walked(&router, &key) <= nodes * 2 * 257);
        let key = ["a"; 127].join(".") + ".z";
        assert_eq!(routed(&router, &key), vec![1]);
        let alternating = ["#.a"; 20].join(".") + ".#.z";
        router.bind(&binding(&alternating, 2));
        let key = ["a"; 126].join(".") + ".y";
        assert!(routed(&router, &key).is_empty());
        let key = ["a"; 126].join(".") + ".z";
        assert_eq!(routed(&router, &key), vec![1, 2]);
    }

    #[test]
    fn common_patterns_remember_nothing() {
        let mut router = TopicRouter::default();
        router.bind(&binding("lazy.#", 1));
        router.bind(&binding("#.rabbit", 2));
        router.bind(&binding("*.orange.*", 3));
        router.bind(&binding("a.#.b", 4));
        assert_eq!(states_walked(&router, "lazy.orange.male.rabbit"), 0);
        assert_eq!(routed(&router, "lazy.orange.male.rabbit"), vec![1, 2]);
    }

    #[test]
    fn ten_thousand_bindings_route_to_the_right_ones() {
        let mut router = TopicRouter::default();
        for n in 0..10_000u64 {
            router.bind(&binding(&format!("stock.{}.*", n), n));
        }
        assert_eq!(routed(&router, "stock.4242.nyse"), vec![4242]);
        assert!(routed(&router, "stock.4242").is_empty());
    }
}

//! Topic exchange: binding keys are dot-separated words where `*` matches
//! exactly one word and `#` zero or more. Bindings live in a trie keyed by
//! word, so a publish walks the words of its routing key once instead of
//! testing every binding (RabbitMQ's rabbit_exchange_type_topic does the same
//! with a Mnesia trie).
//!
//! As in RabbitMQ, an empty key has zero words and "a..b" has three
//! ("a", "", "b").

use crate::util::hash::FastMap;

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

    pub fn unbind(&mut self, binding: &Binding) {
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
    if let Some(hash) = node.hash.as_deref() {
        // `#` swallows zero or more words: try every suffix.
        for skip in 0..=words.len() {
            match_words(hash, &words[skip..], out);
        }
    }
    let Some((first, rest)) = words.split_first() else {
        out.extend(node.destinations.iter().cloned());
        return;
    };
    if let Some(child) = node.words.get(*first) {
        match_words(child, rest, out);
    }
    if let Some(star) = node.star.as_deref() {
        match_words(star, rest, out);
    }
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

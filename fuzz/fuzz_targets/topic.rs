//! Topic matching: random binding keys and a routing key, over an alphabet
//! that makes `*`, `#`, empty words and near-misses common, checked against
//! a plain reference matcher (memoised over word positions, so it is itself
//! polynomial). Unbinding some keys must leave exactly the others. The cost
//! is bounded by the run's `-timeout`: a matcher that backtracks on `#`
//! takes seconds on a key of a few dozen words.

#![no_main]

use libfuzzer_sys::fuzz_target;
use warren::fuzzing::{topic_route, topic_route_after_unbind};

/// Bytes to characters: mostly the few that matter.
fn text(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ab*#..#*a.";
    let s: String = bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    // Keys are short strings: at most 255 bytes.
    s.chars().take(255).collect()
}

fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// Whether `pattern` matches `key`, word by word: `*` is one word, `#` zero
/// or more; `matches[p][k]` is for the pattern's words from p and the
/// key's from k.
fn reference(pattern: &str, key: &str) -> bool {
    let p = words(pattern);
    let k = words(key);
    let mut matches = vec![vec![false; k.len() + 1]; p.len() + 1];
    matches[p.len()][k.len()] = true;
    for i in (0..p.len()).rev() {
        for j in (0..=k.len()).rev() {
            matches[i][j] = match p[i] {
                "#" => matches[i + 1][j] || (j < k.len() && matches[i][j + 1]),
                "*" => j < k.len() && matches[i + 1][j + 1],
                word => j < k.len() && k[j] == word && matches[i + 1][j + 1],
            };
        }
    }
    matches[0][0]
}

fuzz_target!(|data: &[u8]| {
    // Segments split at 0xff: the routing key, then binding keys.
    let mut segments = data.split(|b| *b == 0xff);
    let Some(key) = segments.next() else {
        return;
    };
    let key = text(key);
    let patterns: Vec<String> = segments.take(32).map(text).collect();
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();

    let expected: Vec<usize> = (0..patterns.len())
        .filter(|n| reference(patterns[*n], &key))
        .collect();
    assert_eq!(
        topic_route(&patterns, &key),
        expected,
        "key {key:?}, patterns {patterns:?}"
    );

    // Unbind every other pattern, chosen by the key's length.
    let unbind: Vec<bool> = (0..patterns.len())
        .map(|n| (n + key.len()) % 2 == 0)
        .collect();
    let kept: Vec<usize> = expected.iter().copied().filter(|n| !unbind[*n]).collect();
    assert_eq!(
        topic_route_after_unbind(&patterns, &unbind, &key),
        kept,
        "after unbinding, key {key:?}, patterns {patterns:?}"
    );
});

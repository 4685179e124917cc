//! Topic routing against pathological binding keys, with the standard
//! library only, in the style of `hot_path.rs`. Each case binds one
//! pattern on a fresh `TopicRouter` and routes one key of N words that
//! never matches (the worst case: every way of matching is tried), and
//! prints the best time per route over a few rounds. A plain `a.b.c` key
//! and `lazy.#` beside them show that the common cases stay as fast.
//!
//! Run with `cargo bench --bench topic` (add `-- quick` for the smaller
//! sizes only).

use std::hint::black_box;
use std::time::{Duration, Instant};

use warren::broker::exchange::topic::TopicRouter;
use warren::metadata::exchange::{Binding, Destination};
use warren::model::ids::{QueueId, QueueRef, ShardId};
use warren_protocol::{FieldTable, ShortStr};

/// Each case runs for about this long (at least one route).
const CASE_TIME: Duration = Duration::from_millis(300);

fn router(pattern: &str) -> TopicRouter {
    let mut router = TopicRouter::default();
    router.bind(&Binding {
        source: ShortStr::from("amq.topic"),
        destination: Destination::Queue(QueueRef {
            id: QueueId(1),
            shard: ShardId(0),
        }),
        routing_key: ShortStr::from(pattern),
        arguments: FieldTable::default(),
    });
    router
}

fn best_ns_per_route(router: &TopicRouter, key: &str) -> f64 {
    let mut out = Vec::new();
    let mut best = f64::MAX;
    let began = Instant::now();
    let mut rounds = 0;
    while rounds < 3 || began.elapsed() < CASE_TIME {
        let mut routes = 0u64;
        let start = Instant::now();
        while routes == 0 || start.elapsed() < CASE_TIME / 10 {
            out.clear();
            router.route(black_box(key), &mut out);
            black_box(&out);
            routes += 1;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / routes as f64);
        rounds += 1;
        if began.elapsed() > CASE_TIME * 10 {
            break;
        }
    }
    best
}

fn case(pattern: &str, key: &str, what: &str) {
    let router = router(pattern);
    let ns = best_ns_per_route(&router, key);
    println!("{:<64} {:>14.0} ns/route", what, ns);
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let sizes: &[usize] = if quick {
        &[8, 12, 16]
    } else {
        &[8, 12, 16, 32, 64, 128]
    };
    case("a.b.c", "a.b.c", "a.b.c, key a.b.c");
    case(
        "lazy.#",
        "lazy.orange.male.rabbit",
        "lazy.#, key of 4 words",
    );
    case(
        "#.rabbit",
        "lazy.orange.male.rabbit",
        "#.rabbit, key of 4 words",
    );
    let hashes = ["#"; 12].join(".") + ".z";
    for &n in sizes {
        let key = vec!["a"; n].join(".");
        case(
            &hashes,
            &key,
            &format!("#.#.#.#.#.#.#.#.#.#.#.#.z, key of {} words", n),
        );
    }
    let alternating = ["#.a"; 8].join(".") + ".z";
    for &n in sizes {
        let key = vec!["a"; n].join(".");
        case(
            &alternating,
            &key,
            &format!("#.a repeated 8 times then z, key of {} words", n),
        );
    }
}

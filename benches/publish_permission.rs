//! What the write permission check costs a publish: the whole publish path
//! of a one-shard broker run in-process (`warren::fuzzing::Broker`: frames
//! in, parsed, checked, routed, queued), for guest (whose write permission
//! is checked, cached per channel) and for the same path with the check
//! skipped. Each case runs a fixed number of batches a few times on one
//! connection, the two variants in turn (each first every other round, so
//! that neither always runs on a warmer cache), and prints the best ns per
//! message of each.
//!
//! Run with `cargo bench --features fuzzing --bench publish_permission`.

use std::time::Instant;

use bytes::BytesMut;
// The fuzz targets' opening frames (guest's login, "/" and channel 1) and
// frame_max: the bench drives the same in-process broker.
#[path = "../fuzz/fuzz_targets/common/mod.rs"]
mod common;
use common::{opening, FRAME_MAX};
use warren::fuzzing::{Broker, Client, Step};
use warren_protocol::{
    write_body, write_content_header, write_method, BasicPublish, FieldTable, FieldValue, Method,
    Properties, QueueBind, QueueDeclare, ShortStr,
};

/// Publishes handed to the connection at once, as one socket read would.
const BATCH: usize = 256;
const BATCHES: usize = 2_000;
const ROUNDS: usize = 10;

fn s(text: &str) -> ShortStr {
    ShortStr::from(text)
}

/// A batch of publishes of a 16-byte body to `exchange` with `routing_key`.
fn publishes(exchange: &str, routing_key: &str) -> BytesMut {
    let mut out = BytesMut::new();
    let body = [7u8; 16];
    let publish: Method = BasicPublish {
        exchange: s(exchange),
        routing_key: s(routing_key),
        mandatory: false,
        immediate: false,
    }
    .into();
    for _ in 0..BATCH {
        write_method(&mut out, 1, &publish);
        write_content_header(&mut out, 1, 60, body.len() as u64, &Properties::empty());
        write_body(&mut out, 1, &body, FRAME_MAX);
    }
    out
}

/// Feeds `buf` to the connection until it is consumed.
fn feed(broker: &mut Broker, client: Client, buf: &mut BytesMut) {
    loop {
        let step = broker.input(client, buf);
        let _ = broker.take_output(client);
        match step {
            Step::Yield => continue,
            Step::NeedMore if buf.is_empty() => return,
            other => panic!("the connection stopped: {other:?}"),
        }
    }
}

/// A connection, logged in, channel 1 open; with queue `bench` (at most
/// 1,000 messages, the oldest dropped, bound to amq.direct with key
/// `bench`) when `queue` is set.
fn session(queue: bool) -> (Broker, Client) {
    let mut broker = Broker::default();
    let client = broker.connect();
    let mut buf = opening();
    if queue {
        let mut arguments = FieldTable::new();
        arguments.insert("x-max-length", FieldValue::I32(1_000));
        write_method(
            &mut buf,
            1,
            &QueueDeclare {
                queue: s("bench"),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments,
            }
            .into(),
        );
        write_method(
            &mut buf,
            1,
            &QueueBind {
                queue: s("bench"),
                exchange: s("amq.direct"),
                routing_key: s("bench"),
                nowait: false,
                arguments: FieldTable::default(),
            }
            .into(),
        );
    }
    feed(&mut broker, client, &mut buf);
    assert!(!broker.is_closed(client), "the session did not open");
    (broker, client)
}

/// Best ns per message over `ROUNDS`, publishing `batch` `BATCHES` times.
fn run(broker: &mut Broker, client: Client, batch: &BytesMut) -> f64 {
    let mut buf = BytesMut::with_capacity(batch.len());
    let start = Instant::now();
    for _ in 0..BATCHES {
        buf.extend_from_slice(batch);
        feed(broker, client, &mut buf);
    }
    let ns = start.elapsed().as_nanos() as f64 / (BATCHES * BATCH) as f64;
    assert!(!broker.is_closed(client), "a publish was refused");
    ns
}

fn case(name: &str, queue: bool, exchange: &str, routing_key: &str) {
    let batch = publishes(exchange, routing_key);
    let (mut broker, client) = session(queue);
    let (mut with, mut without) = (f64::MAX, f64::MAX);
    let fills = Broker::publish_access_fills();
    for round in 0..ROUNDS {
        for check in [round % 2 == 0, round % 2 == 1] {
            Broker::set_publish_permission_check(check);
            let ns = run(&mut broker, client, &batch);
            if check {
                with = with.min(ns);
            } else {
                without = without.min(ns);
            }
        }
    }
    Broker::set_publish_permission_check(true);
    let fills = Broker::publish_access_fills() - fills;
    println!(
        "{name:<50} checked {with:>7.1} ns/message   unchecked {without:>7.1} ns/message   \
         difference {:>5.1} ns ({:+.1}%), full checks {fills} of {}",
        with - without,
        (with - without) / without * 100.0,
        ROUNDS * BATCHES * BATCH
    );
}

fn main() {
    case(
        "publish 16 B to amq.direct, unroutable",
        false,
        "amq.direct",
        "nowhere",
    );
    case(
        "publish 16 B to the default exchange, unroutable",
        false,
        "",
        "nowhere",
    );
    case(
        "publish 16 B to a queue (default exchange)",
        true,
        "",
        "bench",
    );
    case(
        "publish 16 B to a queue (amq.direct)",
        true,
        "amq.direct",
        "bench",
    );
}

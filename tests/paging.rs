//! Queues larger than memory: with a tiny in-memory window
//! (`--queue-window`), a backlog many times the window is paged to the
//! message store and read back ahead of delivery. It drains exactly once,
//! in order, with the right redelivered flags: through consumers and
//! through basic.get, for persistent messages in durable queues and for
//! transient ones, across a restart and across a kill -9 mid-drain.
//!
//! Each test starts the real broker (1 and 2 shards) and drives it with
//! lapin.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);
/// Ready bytes a queue keeps in memory in these tests: a few dozen
/// messages, so that the backlogs below are paged many times over.
const WINDOW: &str = "16384";
/// Messages in each backlog, and their body size: about 30 windows.
const BACKLOG: u32 = 4000;
const BODY_LEN: usize = 120;

/// `$name_shards_1` and `$name_shards_2` calling `$body(shards)`.
macro_rules! with_shards {
    ($name:ident) => {
        paste::paste! {
            #[test]
            fn [<$name _shards_1>]() {
                $name(1);
            }

            #[test]
            fn [<$name _shards_2>]() {
                $name(2);
            }
        }
    };
}

fn start(shards: usize) -> Broker {
    Broker::start_with(
        shards,
        &["--queue-window", WINDOW, "--shard-window", "65536"],
    )
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn transient() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(1)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Message `n`'s body: its number, padded.
fn body(n: u32) -> Vec<u8> {
    let mut body = format!("{n:06}-").into_bytes();
    body.resize(BODY_LEN, b'.');
    body
}

fn number(data: &[u8]) -> u32 {
    String::from_utf8_lossy(&data[..6])
        .parse()
        .expect("a body the test published")
}

/// Publishes messages `from..to` to `queue` with confirms, 200 in flight.
async fn publish_confirmed(
    ch: &Channel,
    queue: &str,
    range: std::ops::Range<u32>,
    props: BasicProperties,
) {
    let numbers: Vec<u32> = range.collect();
    for window in numbers.chunks(200) {
        let mut confirms = Vec::new();
        for &n in window {
            let confirm = ch
                .basic_publish(
                    "",
                    queue,
                    BasicPublishOptions::default(),
                    &body(n),
                    props.clone(),
                )
                .await
                .expect("basic.publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert!(step("confirm", confirm).await.expect("confirm").is_ack());
        }
    }
}

/// Takes `count` deliveries, checking they are `first..first+count` in
/// order with `redelivered` false, acking every 50th with `multiple`
/// (and the last one).
async fn receive_in_order(consumer: &mut Consumer, first: u32, count: u32) {
    for at in 0..count {
        let delivery = next_delivery(consumer).await;
        assert_eq!(number(&delivery.data), first + at, "out of order");
        assert!(!delivery.redelivered, "message {} redelivered", first + at);
        if at % 50 == 49 || at + 1 == count {
            delivery
                .ack(BasicAckOptions { multiple: true })
                .await
                .expect("basic.ack");
        }
    }
}

/// Every message left in `queue`, by basic.get with no_ack:
/// (number, redelivered).
async fn drain_by_get(ch: &Channel, queue: &str) -> Vec<(u32, bool)> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push((number(&m.delivery.data), m.delivery.redelivered));
    }
    out
}

/// A durable queue's persistent backlog and a transient queue's transient
/// one, each ~30 windows: both drain in order through a consumer; the
/// durable one is half drained, a restart comes with 100 deliveries
/// unacknowledged, and the rest drains by basic.get (which waits for the
/// head to be read back), the unacknowledged ones marked redelivered.
fn a_backlog_drains_once_in_order_across_a_restart(shards: usize) {
    let mut broker = start(shards);
    if broker.is_external() {
        eprintln!("skipped: --queue-window is warren's");
        return;
    }
    let url = broker.url();
    let half = BACKLOG / 2;
    run_for(DEADLINE, async {
        let (conn, ch) = open_confirming(&url).await;
        declare_queue_with(&ch, "pg.durable", durable(), FieldTable::default())
            .await
            .expect("queue.declare");
        declare_queue_with(
            &ch,
            "pg.transient",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
        publish_confirmed(&ch, "pg.durable", 0..BACKLOG, persistent()).await;
        publish_confirmed(&ch, "pg.transient", 0..BACKLOG, transient()).await;
        assert_eq!(message_count(&conn, "pg.durable").await, BACKLOG);
        assert_eq!(message_count(&conn, "pg.transient").await, BACKLOG);

        let consumer_ch = channel(&conn).await;
        consumer_ch
            .basic_qos(100, BasicQosOptions::default())
            .await
            .expect("basic.qos");
        let mut transient_consumer = consume(
            &consumer_ch,
            "pg.transient",
            "t",
            BasicConsumeOptions::default(),
        )
        .await;
        receive_in_order(&mut transient_consumer, 0, BACKLOG).await;
        wait_message_count(&conn, "pg.transient", 0).await;

        let mut consumer = consume(
            &consumer_ch,
            "pg.durable",
            "d",
            BasicConsumeOptions::default(),
        )
        .await;
        receive_in_order(&mut consumer, 0, half).await;
        // 100 more (the prefetch), left unacknowledged.
        for n in half..half + 100 {
            let delivery = next_delivery(&mut consumer).await;
            assert_eq!(number(&delivery.data), n);
        }
        wait_message_count(&conn, "pg.durable", BACKLOG - half - 100).await;
        // The broker closes the connection while stopping.
        std::mem::forget(consumer);
        std::mem::forget(transient_consumer);
        std::mem::forget(conn);
    });
    broker.restart();
    let url = broker.url();
    run_for(DEADLINE, async {
        let (conn, ch) = open(&url).await;
        assert!(!queue_exists(&conn, "pg.transient").await);
        assert_eq!(message_count(&conn, "pg.durable").await, BACKLOG - half);
        let found = drain_by_get(&ch, "pg.durable").await;
        let expected: Vec<(u32, bool)> = (half..BACKLOG).map(|n| (n, n < half + 100)).collect();
        assert!(
            found == expected,
            "{:?}...\n{}",
            &found[..found.len().min(20)],
            broker.log()
        );
    });
    // Taken with no_ack: gone for good.
    broker.restart();
    let url = broker.url();
    run_for(DEADLINE, async {
        let (conn, _ch) = open(&url).await;
        assert_eq!(message_count(&conn, "pg.durable").await, 0);
    });
}

with_shards!(a_backlog_drains_once_in_order_across_a_restart);

/// What the consumer saw before the kill.
#[derive(Default)]
struct Seen {
    delivered: BTreeSet<u32>,
    /// Acked (the ack sent; it may not have reached the disk).
    acked: BTreeSet<u32>,
}

/// Consumes `queue` with a prefetch of 50, acking each message, until the
/// broker dies.
async fn consume_until_killed(url: String, queue: String, seen: Arc<Mutex<Seen>>) {
    use futures_lite::StreamExt;
    let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    if ch.basic_qos(50, BasicQosOptions::default()).await.is_err() {
        return;
    }
    let Ok(mut consumer) = ch
        .basic_consume(
            &queue,
            "drainer",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    else {
        return;
    };
    while let Some(Ok(delivery)) = consumer.next().await {
        let n = number(&delivery.data);
        seen.lock().unwrap().delivered.insert(n);
        if delivery.ack(BasicAckOptions::default()).await.is_err() {
            return;
        }
        seen.lock().unwrap().acked.insert(n);
    }
}

/// A confirmed backlog of ~30 windows, drained by a consumer that acks
/// every message, with a kill -9 after a third of it: after the restart,
/// every message not acked is there, once, in order; those the broker
/// never delivered are not marked redelivered.
fn a_kill_mid_drain_loses_nothing_confirmed(shards: usize) {
    let mut broker = start(shards);
    if broker.is_external() {
        eprintln!("skipped: --queue-window is warren's");
        return;
    }
    let url = broker.url();
    run_for(DEADLINE, async {
        let (_conn, ch) = open_confirming(&url).await;
        declare_queue_with(&ch, "pg.killed", durable(), FieldTable::default())
            .await
            .expect("queue.declare");
        publish_confirmed(&ch, "pg.killed", 0..BACKLOG, persistent()).await;
    });
    let seen = Arc::new(Mutex::new(Seen::default()));
    let client = {
        let (url, seen) = (url.clone(), seen.clone());
        std::thread::spawn(move || {
            futures_lite::future::block_on(consume_until_killed(url, "pg.killed".to_string(), seen))
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), || {
            seen.lock().unwrap().acked.len() >= BACKLOG as usize / 3
        }),
        "the consumer did not get far\n{}",
        broker.log()
    );
    broker.crash_and_restart();
    if wait_until(Duration::from_secs(10), || client.is_finished()) {
        client.join().expect("the client thread");
    } else {
        eprintln!("the client did not notice the kill within 10 s: left behind");
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let url = broker.url();
    run_for(DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        let found = drain_by_get(&ch, "pg.killed").await;
        let numbers: Vec<u32> = found.iter().map(|&(n, _)| n).collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "out of order or twice: {:?}",
            &numbers[..numbers.len().min(50)]
        );
        let present: BTreeSet<u32> = numbers.iter().copied().collect();
        let lost: Vec<u32> = (0..BACKLOG)
            .filter(|n| !present.contains(n) && !seen.acked.contains(n))
            .collect();
        assert!(lost.is_empty(), "lost: {lost:?}\n{}", broker.log());
        // The broker may have sent up to a prefetch (50) more than the
        // client saw before the kill, and a consumer on another shard than
        // its queue is sent 16 prefetches ahead of its acks (held by its
        // channel, counted as delivered by the queue); none beyond is
        // marked redelivered.
        const PREFETCH: u32 = 50;
        const REMOTE_LOOKAHEAD_FACTOR: u32 = 16;
        let sent_at_most =
            seen.delivered.last().map_or(0, |&n| n + 1) + PREFETCH * (1 + REMOTE_LOOKAHEAD_FACTOR);
        for &(n, redelivered) in &found {
            assert!(
                !redelivered || n < sent_at_most,
                "{n} marked redelivered, never delivered"
            );
        }
        // Acks before the last group commit stay acked: at most the
        // prefetch and a commit's worth come back.
        let back = present.intersection(&seen.acked).count();
        eprintln!(
            "{} delivered, {} acked, {} found, {} acked ones back",
            seen.delivered.len(),
            seen.acked.len(),
            found.len(),
            back
        );
    });
}

with_shards!(a_kill_mid_drain_loses_nothing_confirmed);

/// A priority queue pages each level: higher priorities still come first,
/// each level in order, with the backlog several windows deep.
fn a_paged_priority_queue_keeps_priority_order(shards: usize) {
    let broker = start(shards);
    if broker.is_external() {
        eprintln!("skipped: --queue-window is warren's");
        return;
    }
    let url = broker.url();
    run_for(DEADLINE, async {
        let (conn, ch) = open_confirming(&url).await;
        declare_queue_with(
            &ch,
            "pg.priority",
            durable(),
            table(&[("x-max-priority", AMQPValue::ShortShortUInt(2))]),
        )
        .await
        .expect("queue.declare");
        let count = 1500u32;
        for n in 0..count {
            let props = persistent().with_priority((n % 3) as u8);
            ch.basic_publish(
                "",
                "pg.priority",
                BasicPublishOptions::default(),
                &body(n),
                props,
            )
            .await
            .expect("basic.publish");
        }
        ch.wait_for_confirms().await.expect("confirms");
        assert_eq!(message_count(&conn, "pg.priority").await, count);
        let found = drain_by_get(&ch, "pg.priority").await;
        let expected: Vec<(u32, bool)> = [2u32, 1, 0]
            .iter()
            .flat_map(|&p| (0..count).filter(move |n| n % 3 == p))
            .map(|n| (n, false))
            .collect();
        assert!(found == expected, "{:?}", &found[..found.len().min(20)]);
    });
}

with_shards!(a_paged_priority_queue_keeps_priority_order);

/// The queue's `memory` figure from the management API (what the memory
/// alarm counts for it: messages in memory and the index of paged ones).
fn queue_memory_bytes(base: &str, queue: &str) -> u64 {
    let response = ureq::get(&format!("{base}/api/queues/%2f/{queue}"))
        .timeout(Duration::from_secs(30))
        .set("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
        .call()
        .expect("GET /api/queues/%2f/QUEUE");
    let text = response.into_string().expect("a JSON body");
    let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    value["memory"]
        .as_u64()
        .unwrap_or_else(|| panic!("no memory figure: {text}"))
}

/// A backlog of many windows published one message after another keeps
/// an index of a few bytes per paged message, and that index counts in
/// the queue's memory (what the memory alarm adds up): more than the
/// window alone, less than 12 bytes a message beyond it. Drained, in
/// order, the figure falls back.
fn a_paged_backlog_index_is_compact_and_counted(shards: usize) {
    let broker = start(shards);
    if broker.is_external() {
        eprintln!("skipped: --queue-window is warren's");
        return;
    }
    let base = broker
        .management_url()
        .unwrap_or_else(|| panic!("no management API address\n{}", broker.log()));
    let url = broker.url();
    let count = 40_000u32;
    let window: u64 = WINDOW.parse().expect("a number");
    run_for(DEADLINE * 2, async {
        let (conn, ch) = open_confirming(&url).await;
        declare_queue_with(&ch, "pg.index", durable(), FieldTable::default())
            .await
            .expect("queue.declare");
        publish_confirmed(&ch, "pg.index", 0..count, persistent()).await;
        assert_eq!(message_count(&conn, "pg.index").await, count);
        let memory = queue_memory_bytes(&base, "pg.index");
        // The window holds its messages' bodies and headers (at most one
        // message past the window); the index at least a byte for every
        // second paged message, at most 12 for each.
        assert!(
            memory > window + u64::from(count) / 2,
            "{memory} bytes: the index is not counted"
        );
        assert!(
            memory < 2 * window + 12 * u64::from(count),
            "{memory} bytes for {count} messages"
        );

        let consumer_ch = channel(&conn).await;
        consumer_ch
            .basic_qos(100, BasicQosOptions::default())
            .await
            .expect("basic.qos");
        let mut consumer = consume(
            &consumer_ch,
            "pg.index",
            "i",
            BasicConsumeOptions::default(),
        )
        .await;
        receive_in_order(&mut consumer, 0, count).await;
        wait_message_count(&conn, "pg.index", 0).await;
        let mut left = u64::MAX;
        let freed = wait_until(Duration::from_secs(30), || {
            left = queue_memory_bytes(&base, "pg.index");
            left < window
        });
        assert!(freed, "{left} bytes held after the drain");
    });
}

with_shards!(a_paged_backlog_index_is_compact_and_counted);

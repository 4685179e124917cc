//! The message store: persistent messages in durable queues survive a
//! restart and a kill -9, confirms mean "on disk", torn writes are dropped,
//! TTLs run while the broker is down, empty segments are deleted, and a
//! committed transaction is on disk when commit-ok arrives.
//!
//! Each test starts the real broker (1 and 2 shards), drives it with lapin,
//! stops or kills it, starts it again on the same data directory and port,
//! and checks exactly which messages came back, in which order, and with
//! which redelivered flag.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous for restarts and kills on a loaded machine.
const RESTART_TEST_DEADLINE: Duration = Duration::from_secs(60);

/// `$name_shards_1` and `$name_shards_2` calling `$body(shards)`.
macro_rules! with_shards {
    ($name:ident, $body:ident) => {
        paste::paste! {
            #[test]
            fn [<$name _shards_1>]() {
                $body(1);
            }

            #[test]
            fn [<$name _shards_2>]() {
                $body(2);
            }
        }
    };
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

async fn declare(ch: &Channel, name: &str, options: QueueDeclareOptions, args: FieldTable) {
    declare_queue_with(ch, name, options, args)
        .await
        .unwrap_or_else(|e| panic!("queue.declare {name}: {e}"));
}

async fn declare_x(ch: &Channel, name: &str, kind: ExchangeKind, durable: bool) {
    step(
        "exchange.declare",
        ch.exchange_declare(
            name,
            kind,
            ExchangeDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("exchange.declare {name}: {e}"));
}

/// Every message of a queue, by basic.get with no_ack: (body, redelivered).
async fn drain(ch: &Channel, queue: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push((
            String::from_utf8_lossy(&m.delivery.data).into_owned(),
            m.delivery.redelivered,
        ));
    }
    out
}

/// Publishes `count` copies of `body`, persistent, to `queue` with all of
/// them in flight at once (group commit confirms them in a few fsyncs),
/// and waits until every one is confirmed.
async fn publish_persistent_confirmed(ch: &Channel, queue: &str, body: &[u8], count: usize) {
    let mut confirms = Vec::new();
    for _ in 0..count {
        let confirm = ch
            .basic_publish(
                "",
                queue,
                BasicPublishOptions::default(),
                body,
                persistent(),
            )
            .await
            .expect("basic.publish");
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(step("confirm", confirm).await.expect("confirm").is_ack());
    }
}

/// Takes `count` deliveries, acking them with one multiple ack per `every`.
async fn receive_and_ack(consumer: &mut Consumer, count: u32, every: u32) {
    for n in 1..=count {
        let delivery = next_delivery(consumer).await;
        if n.is_multiple_of(every) {
            delivery
                .ack(BasicAckOptions { multiple: true })
                .await
                .expect("basic.ack");
        }
    }
}

fn bodies(messages: &[(String, bool)]) -> Vec<String> {
    messages.iter().map(|(b, _)| b.clone()).collect()
}

/// Every segment file under the broker's data directory, with its size.
fn segment_files(data_dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let root = data_dir.join("messages");
    let Ok(generations) = std::fs::read_dir(&root) else {
        return out;
    };
    for generation in generations.flatten() {
        let Ok(shards) = std::fs::read_dir(generation.path()) else {
            continue;
        };
        for shard in shards.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                if path.extension().is_some_and(|e| e == "seg") {
                    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    out.push((path, size));
                }
            }
        }
    }
    out.sort();
    out
}

/// A small deterministic generator: the seed is printed, so a failure can
/// be replayed.
struct Rng(u64);

impl Rng {
    fn from_time() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        eprintln!("random seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

// ------------------------------------------------------------------ restart

fn persistent_messages_survive_a_restart(shards: usize) {
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        eprintln!("skipped: restarting an external broker is not this test's business");
        return;
    }
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&url).await;
        declare_x(&ch, "dm.durable-x", ExchangeKind::Direct, true).await;
        declare_x(&ch, "dm.transient-x", ExchangeKind::Direct, false).await;
        declare(&ch, "dm.durable", durable(), FieldTable::default()).await;
        declare(
            &ch,
            "dm.transient",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
        bind(&ch, "dm.durable", "dm.durable-x", "k").await;
        bind(&ch, "dm.durable", "dm.transient-x", "k").await;
        bind(&ch, "dm.transient", "dm.durable-x", "k").await;
        // Through both exchanges, persistent and transient, interleaved.
        publish_props(&ch, "dm.durable-x", "k", b"p1", persistent()).await;
        publish_props(&ch, "dm.durable-x", "k", b"t1", transient()).await;
        publish_props(&ch, "dm.transient-x", "k", b"p2", persistent()).await;
        publish_props(&ch, "", "dm.durable", b"p3", persistent()).await;
        publish_props(&ch, "", "dm.durable", b"t2", BasicProperties::default()).await;
        publish_props(&ch, "", "dm.durable", b"p4", persistent()).await;

        // A consumer with a prefetch of 3 takes p1, t1 and p2, acks p1,
        // which lets p3 come: t1, p2 and p3 stay delivered but
        // unacknowledged when the broker stops.
        let consumer_ch = channel(&conn).await;
        consumer_ch
            .basic_qos(3, BasicQosOptions::default())
            .await
            .expect("basic.qos");
        let mut consumer = consume(
            &consumer_ch,
            "dm.durable",
            "c",
            BasicConsumeOptions::default(),
        )
        .await;
        let first = next_delivery(&mut consumer).await;
        let second = next_delivery(&mut consumer).await;
        let third = next_delivery(&mut consumer).await;
        assert_eq!(
            [body_str(&first), body_str(&second), body_str(&third)],
            ["p1", "t1", "p2"]
        );
        first
            .ack(BasicAckOptions::default())
            .await
            .expect("basic.ack");
        assert_eq!(body_str(&next_delivery(&mut consumer).await), "p3");
        wait_message_count(&conn, "dm.durable", 2).await;
        // Keep the connection open: the broker closes it while stopping.
        std::mem::forget(consumer);
        std::mem::forget(conn);
    });
    broker.restart();
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (conn, ch) = open(&url).await;
        assert!(exchange_exists(&conn, "dm.durable-x").await);
        assert!(!exchange_exists(&conn, "dm.transient-x").await);
        assert!(!queue_exists(&conn, "dm.transient").await);
        assert_eq!(message_count(&conn, "dm.durable").await, 3);
        let messages = drain(&ch, "dm.durable").await;
        assert_eq!(
            messages,
            [
                ("p2".to_string(), true),
                ("p3".to_string(), true),
                ("p4".to_string(), false)
            ],
            "{}",
            broker.log()
        );
    });
    // Once more: what was taken with no_ack is gone for good.
    broker.restart();
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        assert_eq!(drain(&ch, "dm.durable").await, []);
    });
}

with_shards!(
    persistent_messages_survive_a_restart,
    persistent_messages_survive_a_restart
);

fn removed_messages_stay_removed_after_a_restart(shards: usize) {
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        eprintln!("skipped: restarting an external broker is not this test's business");
        return;
    }
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open_confirming(&url).await;
        for queue in ["dm.purged", "dm.deleted", "dm.rejected"] {
            declare(&ch, queue, durable(), FieldTable::default()).await;
            for body in ["m1", "m2", "m3"] {
                publish_props(&ch, "", queue, body.as_bytes(), persistent()).await;
            }
        }
        step(
            "queue.purge",
            ch.queue_purge("dm.purged", QueuePurgeOptions::default()),
        )
        .await
        .expect("queue.purge");
        step(
            "queue.delete",
            ch.queue_delete("dm.deleted", QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");
        declare(&ch, "dm.deleted", durable(), FieldTable::default()).await;
        publish_props(&ch, "", "dm.deleted", b"new", persistent()).await;
        // m1 rejected for good, m2 back in the queue, m3 never delivered.
        let m1 = get(&ch, "dm.rejected", false).await.expect("m1");
        m1.delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .expect("basic.reject");
        let m2 = get(&ch, "dm.rejected", false).await.expect("m2");
        m2.delivery
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .expect("basic.nack");
    });
    broker.restart();
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        assert_eq!(drain(&ch, "dm.purged").await, []);
        assert_eq!(bodies(&drain(&ch, "dm.deleted").await), ["new"]);
        assert_eq!(
            drain(&ch, "dm.rejected").await,
            [("m2".to_string(), true), ("m3".to_string(), false)]
        );
    });
}

with_shards!(
    removed_messages_stay_removed_after_a_restart,
    removed_messages_stay_removed_after_a_restart
);

/// Bodies larger than a frame, a chunk buffer and a segment come back
/// byte for byte, with their properties.
fn large_messages_survive_kill_9(shards: usize) {
    let mut broker = Broker::start_with(shards, &["--segment-size", "1048576"]);
    if broker.is_external() {
        eprintln!("skipped: killing an external broker is not this test's business");
        return;
    }
    let url = broker.url();
    let mut rng = Rng::from_time();
    let sizes = [0usize, 1, 131_072, 3 << 20, 9 << 20];
    let bodies_sent: Vec<Vec<u8>> = sizes
        .iter()
        .map(|&size| (0..size).map(|_| rng.below(256) as u8).collect())
        .collect();
    let props = || {
        persistent()
            .with_content_type("application/octet-stream".into())
            .with_headers(table(&[("k", ls("v"))]))
    };
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open_confirming(&url).await;
        declare(&ch, "dm.large", durable(), FieldTable::default()).await;
        for body in &bodies_sent {
            publish_props(&ch, "", "dm.large", body, props()).await;
        }
    });
    broker.crash_and_restart();
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        for (body, size) in bodies_sent.iter().zip(sizes) {
            let m = get(&ch, "dm.large", true).await.expect("a large message");
            assert_eq!(m.delivery.data.len(), size);
            assert!(m.delivery.data == *body, "body of {size} bytes differs");
            assert_eq!(m.delivery.properties, props());
        }
        assert!(get(&ch, "dm.large", true).await.is_none());
    });
}

with_shards!(large_messages_survive_kill_9, large_messages_survive_kill_9);

// ------------------------------------------------------------------ kill -9

/// What the clients saw before the kill.
#[derive(Default)]
struct Seen {
    confirmed: BTreeSet<u32>,
    /// Acks sent (they may or may not have reached the broker).
    acked: BTreeSet<u32>,
}

/// Publishes persistent messages "0", "1", ... with confirms (windows of
/// 50) and acks some of them with a consumer, until the broker dies.
async fn publish_until_killed(url: String, queue: String, seen: Arc<Mutex<Seen>>) {
    let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    if ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .is_err()
    {
        return;
    }
    let Ok(consumer_ch) = conn.create_channel().await else {
        return;
    };
    let Ok(mut consumer) = consumer_ch
        .basic_consume(
            &queue,
            "acker",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    else {
        return;
    };
    let acking = {
        let seen = seen.clone();
        async move {
            use futures_lite::StreamExt;
            while let Some(Ok(delivery)) = consumer.next().await {
                let n: u32 = String::from_utf8_lossy(&delivery.data).parse().unwrap();
                // Every third message is acked, the rest stay unacked.
                if n.is_multiple_of(3) {
                    seen.lock().unwrap().acked.insert(n);
                    if delivery.ack(BasicAckOptions::default()).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let publishing = async move {
        let mut next = 0u32;
        loop {
            let mut window = Vec::new();
            for _ in 0..50 {
                let body = next.to_string();
                let Ok(confirm) = ch
                    .basic_publish(
                        "",
                        &queue,
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        persistent(),
                    )
                    .await
                else {
                    return;
                };
                window.push((next, confirm));
                next += 1;
            }
            for (n, confirm) in window {
                match confirm.await {
                    Ok(c) if c.is_ack() => {
                        seen.lock().unwrap().confirmed.insert(n);
                    }
                    _ => return,
                }
            }
        }
    };
    futures_lite::future::zip(acking, publishing).await;
}

fn confirmed_messages_survive_kill_9(shards: usize) {
    let mut rng = Rng::from_time();
    for round in 0..3 {
        let mut broker = Broker::start(shards);
        if broker.is_external() {
            eprintln!("skipped: killing an external broker is not this test's business");
            return;
        }
        let url = broker.url();
        let queue = format!("dm.crash-{round}");
        run(async {
            let (_conn, ch) = open(&url).await;
            declare(&ch, &queue, durable(), FieldTable::default()).await;
        });
        let seen = Arc::new(Mutex::new(Seen::default()));
        let client = {
            let (url, queue, seen) = (url.clone(), queue.clone(), seen.clone());
            std::thread::spawn(move || {
                futures_lite::future::block_on(publish_until_killed(url, queue, seen))
            })
        };
        // Wait for some confirms, then a random moment more.
        assert!(
            wait_until(Duration::from_secs(10), || {
                seen.lock().unwrap().confirmed.len() >= 50
            }),
            "no confirms\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        broker.crash_and_restart();
        // The client ends when it sees its connection go. lapin has been
        // seen to leave a publish pending forever after its broker was
        // killed; what the client saw before the kill is all that matters,
        // so a client that has not ended is left behind rather than waited
        // for (nothing can be confirmed on a dead connection).
        if wait_until(Duration::from_secs(10), || client.is_finished()) {
            client.join().expect("the client thread");
        } else {
            eprintln!("the client did not notice the kill within 10 s: left behind");
        }
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        let url = broker.url();
        run_for(RESTART_TEST_DEADLINE, async {
            let (conn, ch) = open(&url).await;
            let count = message_count(&conn, &queue).await;
            let found = drain(&ch, &queue).await;
            assert_eq!(found.len() as u32, count);
            let mut times: HashMap<u32, u32> = HashMap::new();
            let mut order = Vec::new();
            for (body, _) in &found {
                let n: u32 = body.parse().expect("a body the test published");
                *times.entry(n).or_default() += 1;
                order.push(n);
            }
            assert!(
                times.values().all(|&t| t == 1),
                "a message came back twice: {order:?}"
            );
            assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "out of order: {order:?}"
            );
            let lost: Vec<u32> = seen
                .confirmed
                .iter()
                .filter(|n| !times.contains_key(n) && !seen.acked.contains(n))
                .copied()
                .collect();
            assert!(
                lost.is_empty(),
                "round {round}: confirmed, never acked, and lost: {lost:?} ({} confirmed, {} found)\n{}",
                seen.confirmed.len(),
                found.len(),
                broker.log()
            );
            // Unacked ones that the consumer had come back redelivered;
            // the rest were never seen by anyone.
            eprintln!(
                "round {round}: {} confirmed, {} acked, {} recovered",
                seen.confirmed.len(),
                seen.acked.len(),
                found.len()
            );
        });
    }
}

with_shards!(
    confirmed_messages_survive_kill_9,
    confirmed_messages_survive_kill_9
);

// ------------------------------------------------------------------ torn write

fn a_torn_last_write_loses_only_what_it_held(shards: usize) {
    let mut rng = Rng::from_time();
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        eprintln!("skipped: an external broker's files are not this test's business");
        return;
    }
    let url = broker.url();
    let data_dir = broker.data_dir().expect("a warren child").to_path_buf();
    let body = |n: u32| format!("message-{n:04}-{}", "x".repeat(200));
    let mut size_after_first = 0;
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open_confirming(&url).await;
        declare(&ch, "dm.torn", durable(), FieldTable::default()).await;
        for n in 0..100 {
            publish_props(&ch, "", "dm.torn", body(n).as_bytes(), persistent()).await;
        }
        // Everything up to here is confirmed, so on disk.
        size_after_first = segment_files(&data_dir).iter().map(|(_, s)| s).sum::<u64>();
        for n in 100..200 {
            publish_props(&ch, "", "dm.torn", body(n).as_bytes(), persistent()).await;
        }
    });
    broker.kill();
    // The file with data is the queue's shard's only segment.
    let files = segment_files(&data_dir);
    let (path, size) = files
        .iter()
        .max_by_key(|(_, size)| *size)
        .cloned()
        .expect("a segment file");
    assert!(size > size_after_first, "{files:?}");
    // As if the writes after the first 100 had been torn at a random byte.
    let cut = size_after_first + 1 + rng.below(size - size_after_first - 1);
    let bytes = std::fs::read(&path).unwrap();
    // The cut tore a chunk if it removed some of its bytes: a non-zero byte
    // between the cut and the next chunk (a block starting with "WRNC").
    let next_chunk = (cut as usize..bytes.len())
        .find(|&at| at % 512 == 0 && bytes[at..].starts_with(b"WRNC"))
        .unwrap_or(bytes.len());
    let torn_inside_a_chunk = bytes[cut as usize..next_chunk].iter().any(|&b| b != 0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    eprintln!("cut {} of {size} bytes at {cut}", path.display());
    broker.crash_and_restart();
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        let found = bodies(&drain(&ch, "dm.torn").await);
        assert!(
            found.len() >= 100,
            "lost confirmed messages: {}",
            found.len()
        );
        let expected: Vec<String> = (0..found.len() as u32).map(body).collect();
        assert_eq!(found, expected, "not a prefix of what was published");
        assert!(found.len() < 200, "nothing lost although the file was cut");
    });
    if torn_inside_a_chunk {
        assert!(
            broker
                .log()
                .contains("dropped the torn or corrupt end of a segment"),
            "{}",
            broker.log()
        );
    }
}

with_shards!(
    a_torn_last_write_loses_only_what_it_held,
    a_torn_last_write_loses_only_what_it_held
);

// ------------------------------------------------------------------ TTL

fn messages_that_expire_while_the_broker_is_down_are_dead_lettered_at_start(shards: usize) {
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        eprintln!("skipped: restarting an external broker is not this test's business");
        return;
    }
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open_confirming(&url).await;
        declare_x(&ch, "dm.dlx", ExchangeKind::Fanout, true).await;
        declare(&ch, "dm.dead", durable(), FieldTable::default()).await;
        bind(&ch, "dm.dead", "dm.dlx", "").await;
        declare(
            &ch,
            "dm.ttl",
            durable(),
            table(&[
                ("x-message-ttl", AMQPValue::LongInt(1500)),
                ("x-dead-letter-exchange", ls("dm.dlx")),
            ]),
        )
        .await;
        declare(
            &ch,
            "dm.long",
            durable(),
            table(&[("x-max-priority", AMQPValue::LongInt(5))]),
        )
        .await;
        publish_props(&ch, "", "dm.ttl", b"a", persistent()).await;
        publish_props(&ch, "", "dm.ttl", b"b", persistent()).await;
        // Per-message TTLs: one that runs out while down, one that does not.
        publish_props(
            &ch,
            "",
            "dm.long",
            b"short",
            persistent().with_expiration("1000".into()),
        )
        .await;
        publish_props(
            &ch,
            "",
            "dm.long",
            b"low",
            persistent().with_expiration("600000".into()),
        )
        .await;
        publish_props(&ch, "", "dm.long", b"high", persistent().with_priority(5)).await;
    });
    broker.restart_after(Duration::from_millis(2000));
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (conn, ch) = open(&url).await;
        wait_message_count(&conn, "dm.dead", 2).await;
        assert_eq!(message_count(&conn, "dm.ttl").await, 0);
        let first = get(&ch, "dm.dead", true).await.expect("a dead letter");
        assert_eq!(&first.delivery.data[..], b"a");
        let headers = first
            .delivery
            .properties
            .headers()
            .clone()
            .expect("x-death headers");
        assert_eq!(death_reason(&headers).as_deref(), Some("expired"));
        let second = get(&ch, "dm.dead", true).await.expect("a dead letter");
        assert_eq!(&second.delivery.data[..], b"b");
        // The priority level and the unexpired TTL are kept.
        assert_eq!(bodies(&drain(&ch, "dm.long").await), ["high", "low"]);
    });
}

with_shards!(
    messages_that_expire_while_the_broker_is_down_are_dead_lettered_at_start,
    messages_that_expire_while_the_broker_is_down_are_dead_lettered_at_start
);

/// The `reason` of the newest x-death entry.
fn death_reason(headers: &FieldTable) -> Option<String> {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return None;
    };
    let Some(AMQPValue::FieldTable(newest)) = deaths.as_slice().first() else {
        return None;
    };
    match newest.inner().get("reason") {
        Some(AMQPValue::LongString(reason)) => {
            Some(String::from_utf8_lossy(reason.as_bytes()).into_owned())
        }
        _ => None,
    }
}

// ------------------------------------------------------------------ reclaim

fn segments_are_deleted_once_their_messages_are_acked(shards: usize) {
    let mut broker = Broker::start_with(shards, &["--segment-size", "65536"]);
    if broker.is_external() {
        eprintln!("skipped: an external broker's files are not this test's business");
        return;
    }
    let url = broker.url();
    let data_dir = broker.data_dir().expect("a warren child").to_path_buf();
    let body = vec![b'r'; 1024];
    run_for(RESTART_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&url).await;
        declare(&ch, "dm.reclaim", durable(), FieldTable::default()).await;
        publish_persistent_confirmed(&ch, "dm.reclaim", &body, 2000).await;
        let written = segment_files(&data_dir);
        assert!(written.len() >= 20, "{written:?}");
        let consumer_ch = channel(&conn).await;
        consumer_ch
            .basic_qos(100, BasicQosOptions::default())
            .await
            .expect("basic.qos");
        let mut consumer = consume(
            &consumer_ch,
            "dm.reclaim",
            "c",
            BasicConsumeOptions::default(),
        )
        .await;
        receive_and_ack(&mut consumer, 2000, 50).await;
        let reclaimed = eventually(Duration::from_secs(10), || {
            segment_files(&data_dir).len() <= 2
        })
        .await;
        assert!(
            reclaimed,
            "segments left: {:?}\n{}",
            segment_files(&data_dir),
            broker.log()
        );
        // Confirmed after the acks, so the acks are on disk too.
        for n in 0..10 {
            let body = format!("after-{n}");
            publish_props(&ch, "", "dm.reclaim", body.as_bytes(), persistent()).await;
        }
        drop(consumer);
    });
    // With segments deleted, nothing acknowledged may come back.
    broker.crash_and_restart();
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        let expected: Vec<String> = (0..10).map(|n| format!("after-{n}")).collect();
        assert_eq!(bodies(&drain(&ch, "dm.reclaim").await), expected);
    });
}

with_shards!(
    segments_are_deleted_once_their_messages_are_acked,
    segments_are_deleted_once_their_messages_are_acked
);

/// Publishes persistent messages `from..to` (bodies: the number, padded to
/// 1 KiB) to `queue`, 200 in flight, each confirmed.
async fn publish_numbered(ch: &Channel, queue: &str, from: u32, to: u32) {
    let mut n = from;
    while n < to {
        let end = (n + 200).min(to);
        let mut confirms = Vec::new();
        for k in n..end {
            let mut body = format!("{k:08}").into_bytes();
            body.resize(1024, b'.');
            let confirm = ch
                .basic_publish(
                    "",
                    queue,
                    BasicPublishOptions::default(),
                    &body,
                    persistent(),
                )
                .await
                .expect("basic.publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert!(step("confirm", confirm).await.expect("confirm").is_ack());
        }
        n = end;
    }
}

fn number_of(data: &[u8]) -> u32 {
    std::str::from_utf8(&data[..8])
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("a numbered body")
}

/// A restart keeps a backlog where it is: the same segment files, nothing
/// rewritten, at a SIGTERM restart, a second one, and a kill -9 in a row
/// (with deliveries left unacknowledged and acknowledgements in between).
/// The backlog then drains exactly once, in order, the unacknowledged ones
/// marked redelivered, and its segments are deleted as it is consumed.
fn a_backlog_stays_in_place_across_restarts_and_gives_its_segments_back(shards: usize) {
    let mut broker = Broker::start_with(shards, &["--segment-size", "65536"]);
    if broker.is_external() {
        eprintln!("skipped: an external broker's files are not this test's business");
        return;
    }
    let data_dir = broker.data_dir().expect("a warren child").to_path_buf();
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open_confirming(&url).await;
        declare(&ch, "dm.backlog", durable(), FieldTable::default()).await;
        publish_numbered(&ch, "dm.backlog", 0, 1000).await;
    });
    let written = segment_files(&data_dir);
    assert!(written.len() >= 10, "{written:?}");
    broker.restart();
    assert_eq!(
        segment_files(&data_dir),
        written,
        "the backlog was rewritten"
    );
    // 100 taken and acknowledged, 20 more delivered and left unacknowledged
    // at the restart.
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (conn, ch) = open(&url).await;
        assert_eq!(message_count(&conn, "dm.backlog").await, 1000);
        ch.basic_qos(20, BasicQosOptions::default())
            .await
            .expect("basic.qos");
        let mut consumer = consume(&ch, "dm.backlog", "c", BasicConsumeOptions::default()).await;
        for n in 0..120u32 {
            let delivery = next_delivery(&mut consumer).await;
            assert_eq!(number_of(&delivery.data), n);
            assert!(!delivery.redelivered);
            if n < 100 {
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("basic.ack");
            }
        }
        // The acks are on disk once a publish confirmed after them is.
        let (_c, confirming) = open_confirming(&url).await;
        declare(&confirming, "dm.marker", durable(), FieldTable::default()).await;
        publish_numbered(&confirming, "dm.marker", 0, 1).await;
    });
    broker.restart();
    broker.crash_and_restart();
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (conn, ch) = open(&url).await;
        assert_eq!(message_count(&conn, "dm.backlog").await, 900);
        ch.basic_qos(100, BasicQosOptions::default())
            .await
            .expect("basic.qos");
        let mut consumer = consume(&ch, "dm.backlog", "c", BasicConsumeOptions::default()).await;
        for n in 100..1000u32 {
            let delivery = next_delivery(&mut consumer).await;
            assert_eq!(number_of(&delivery.data), n, "out of order or twice");
            // Delivered before the restarts: redelivered. A consumer on
            // another shard than its queue was also sent up to 16
            // prefetches (20) ahead, which its channel held unseen and the
            // queue counted as delivered: those may come back marked too.
            if !(120..120 + 16 * 20).contains(&n) {
                assert_eq!(delivery.redelivered, n < 120, "message {n}");
            }
            if n % 50 == 49 {
                delivery
                    .ack(BasicAckOptions { multiple: true })
                    .await
                    .expect("basic.ack");
            }
        }
        assert_no_delivery(&mut consumer).await;
        // Of the backlog's 10 and more segments at most three per shard
        // stay: the active one, and up to two whose records the last
        // removals and acks still point into (they go once those roll
        // over with later writes; none come here).
        let reclaimed = eventually(Duration::from_secs(10), || {
            segment_files(&data_dir).len() <= 3 * shards
        })
        .await;
        assert!(reclaimed, "segments left: {:?}", segment_files(&data_dir));
    });
    let left = segment_files(&data_dir);
    assert!(
        left.iter().all(|f| !written.contains(f)),
        "the old segments are still there: {left:?}"
    );
    broker.restart();
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (conn, _ch) = open(&url).await;
        assert_eq!(message_count(&conn, "dm.backlog").await, 0);
        assert_eq!(message_count(&conn, "dm.marker").await, 1);
    });
}

with_shards!(
    a_backlog_stays_in_place_across_restarts_and_gives_its_segments_back,
    a_backlog_stays_in_place_across_restarts_and_gives_its_segments_back
);

/// A start with fewer shards than the last run had finds messages in the
/// log of a shard it does not have: the store is rewritten for the new
/// shard count, and every queue's messages come back in order; a start
/// with more shards again keeps them in place.
#[test]
fn a_start_with_fewer_shards_keeps_every_message() {
    let mut broker = Broker::start(2);
    if broker.is_external() {
        eprintln!("skipped: restarting an external broker is not this test's business");
        return;
    }
    let queues = ["dm.s0", "dm.s1", "dm.s2", "dm.s3"];
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open_confirming(&url).await;
        for queue in queues {
            declare(&ch, queue, durable(), FieldTable::default()).await;
            publish_numbered(&ch, queue, 0, 50).await;
        }
    });
    broker.restart_with_shards(1);
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        for queue in queues {
            // Half now, half after the next restart.
            for n in 0..25 {
                let m = get(&ch, queue, true).await.expect("a message");
                assert_eq!(number_of(&m.delivery.data), n, "{queue}");
            }
        }
    });
    broker.restart_with_shards(2);
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        for queue in queues {
            let rest: Vec<u32> = drain(&ch, queue)
                .await
                .iter()
                .map(|(body, _)| number_of(body.as_bytes()))
                .collect();
            assert_eq!(rest, (25..50).collect::<Vec<u32>>(), "{queue}");
        }
    });
}

/// This run's part of the broker's log: after the test's last restart mark.
fn this_run_log(broker: &Broker) -> String {
    let log = broker.log();
    match log.rfind("---- restarted by the test") {
        Some(at) => log[at..].to_string(),
        None => log,
    }
}

/// The clean-stop index files under the data directory.
fn index_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(generations) = std::fs::read_dir(data_dir.join("messages")) else {
        return out;
    };
    for generation in generations.flatten() {
        let Ok(shards) = std::fs::read_dir(generation.path()) else {
            continue;
        };
        for shard in shards.flatten() {
            let path = shard.path().join("clean-stop.index");
            if path.exists() {
                out.push(path);
            }
        }
    }
    out
}

/// A SIGTERM leaves an index of each shard's live records, and the next
/// start reads it instead of the segments (its log says so) and removes
/// it: the backlog (part of it in memory, the rest paged) comes back
/// exactly, in order, the messages delivered before marked redelivered,
/// the transient ones paged to the store gone. A kill -9 after that start
/// finds no index, scans, and loses nothing that was confirmed.
fn a_clean_stop_leaves_an_index_the_next_start_reads_and_a_crash_never_uses(shards: usize) {
    let mut broker = Broker::start_with(
        shards,
        &["--segment-size", "65536", "--queue-window", "131072"],
    );
    if broker.is_external() {
        eprintln!("skipped: an external broker's files are not this test's business");
        return;
    }
    let data_dir = broker.data_dir().expect("a warren child").to_path_buf();
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open_confirming(&url).await;
        for queue in ["ix.backlog", "ix.other", "ix.transient"] {
            declare(&ch, queue, durable(), FieldTable::default()).await;
        }
        publish_numbered(&ch, "ix.backlog", 0, 1000).await;
        publish_numbered(&ch, "ix.other", 0, 300).await;
        // Past the window, transient messages are paged to the store too.
        for _ in 0..300 {
            publish_props(&ch, "", "ix.transient", &[b't'; 1024], transient()).await;
        }
    });
    // 100 taken and acknowledged, 20 delivered and left unacknowledged.
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        ch.basic_qos(20, BasicQosOptions::default())
            .await
            .expect("basic.qos");
        let mut consumer = consume(&ch, "ix.backlog", "c", BasicConsumeOptions::default()).await;
        for n in 0..120u32 {
            let delivery = next_delivery(&mut consumer).await;
            assert_eq!(number_of(&delivery.data), n);
            if n < 100 {
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("basic.ack");
            }
        }
        let (_c, confirming) = open_confirming(&url).await;
        declare(&confirming, "ix.marker", durable(), FieldTable::default()).await;
        publish_numbered(&confirming, "ix.marker", 0, 1).await;
    });
    broker.restart();
    let log = this_run_log(&broker);
    assert_eq!(
        log.matches("recovered from the clean-stop index").count(),
        shards,
        "{log}"
    );
    assert_eq!(
        broker.log().matches("clean-stop index written").count(),
        shards
    );
    assert!(
        index_files(&data_dir).is_empty(),
        "an index outlived its start"
    );
    // A consumer on another shard than its queue was sent up to 16
    // prefetches (20) ahead, which its channel held unseen and the queue
    // counted as delivered: those may come back marked too.
    let maybe_marked = |n: u32| shards > 1 && (120..120 + 16 * 20).contains(&n);
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (conn, ch) = open(&url).await;
        assert_eq!(message_count(&conn, "ix.backlog").await, 900);
        assert_eq!(message_count(&conn, "ix.transient").await, 0);
        let other = drain(&ch, "ix.other").await;
        let numbers: Vec<u32> = other.iter().map(|(b, _)| number_of(b.as_bytes())).collect();
        assert_eq!(numbers, (0..300).collect::<Vec<u32>>());
        assert!(other.iter().all(|(_, redelivered)| !redelivered));
        // 300 taken, in order, with their flags; the removals are on disk
        // once a publish confirmed after them is.
        for n in 100..400u32 {
            let m = get(&ch, "ix.backlog", true).await.expect("a message");
            assert_eq!(number_of(&m.delivery.data), n, "out of order or twice");
            if !maybe_marked(n) {
                assert_eq!(m.delivery.redelivered, n < 120, "message {n}");
            }
        }
        let (_c, confirming) = open_confirming(&url).await;
        publish_numbered(&confirming, "ix.marker", 1, 2).await;
    });
    broker.crash_and_restart();
    let log = this_run_log(&broker);
    assert!(
        !log.contains("recovered from the clean-stop index"),
        "a start after kill -9 used an index: {log}"
    );
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (conn, ch) = open(&url).await;
        let rest = drain(&ch, "ix.backlog").await;
        let numbers: Vec<u32> = rest.iter().map(|(b, _)| number_of(b.as_bytes())).collect();
        assert_eq!(numbers, (400..1000).collect::<Vec<u32>>());
        for (n, (_, redelivered)) in (400..).zip(&rest) {
            assert!(!redelivered || maybe_marked(n), "message {n} redelivered");
        }
        assert_eq!(message_count(&conn, "ix.other").await, 0);
        assert_eq!(message_count(&conn, "ix.marker").await, 2);
    });
}

with_shards!(
    a_clean_stop_leaves_an_index_the_next_start_reads_and_a_crash_never_uses,
    a_clean_stop_leaves_an_index_the_next_start_reads_and_a_crash_never_uses
);

/// An index cut short while the broker was down is refused (its log says
/// why) and the segments are scanned: every message comes back once, in
/// order.
fn a_truncated_index_is_refused_and_the_segments_scanned(shards: usize) {
    let mut broker = Broker::start_with(shards, &["--segment-size", "65536"]);
    if broker.is_external() {
        eprintln!("skipped: an external broker's files are not this test's business");
        return;
    }
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open_confirming(&url).await;
        for queue in ["ix.t0", "ix.t1"] {
            declare(&ch, queue, durable(), FieldTable::default()).await;
            publish_numbered(&ch, queue, 0, 300).await;
        }
    });
    broker.restart_changing(|data_dir| {
        let found = index_files(data_dir);
        assert_eq!(found.len(), shards, "{found:?}");
        for path in found {
            let bytes = std::fs::read(&path).expect("the index");
            std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("a shorter index");
        }
    });
    let log = this_run_log(&broker);
    assert!(
        !log.contains("recovered from the clean-stop index"),
        "{log}"
    );
    assert_eq!(
        log.matches("the clean-stop index cannot be used").count(),
        shards,
        "{log}"
    );
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        for queue in ["ix.t0", "ix.t1"] {
            let all = drain(&ch, queue).await;
            let numbers: Vec<u32> = all.iter().map(|(b, _)| number_of(b.as_bytes())).collect();
            assert_eq!(numbers, (0..300).collect::<Vec<u32>>(), "{queue}");
            assert!(all.iter().all(|(_, redelivered)| !redelivered));
        }
    });
}

with_shards!(
    a_truncated_index_is_refused_and_the_segments_scanned,
    a_truncated_index_is_refused_and_the_segments_scanned
);

/// A queue nobody consumes beside a busy one: its old messages are copied
/// forward (compaction) so that the busy queue's segments can go, and they
/// survive a restart, delivered ones still marked so.
fn old_messages_do_not_keep_the_log(shards: usize) {
    let mut broker = Broker::start_with(shards, &["--segment-size", "65536"]);
    if broker.is_external() {
        eprintln!("skipped: an external broker's files are not this test's business");
        return;
    }
    let url = broker.url();
    let data_dir = broker.data_dir().expect("a warren child").to_path_buf();
    let body = vec![b'c'; 1024];
    run_for(RESTART_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&url).await;
        // Both queues on the same shard: exclusive ones would not be durable,
        // so with 2 shards every other queue lands on the same shard.
        for queue in ["dm.old", "dm.spacer", "dm.busy"] {
            declare(&ch, queue, durable(), FieldTable::default()).await;
        }
        publish_props(&ch, "", "dm.old", b"held", persistent()).await;
        publish_props(&ch, "", "dm.old", b"waiting", persistent()).await;
        let holder = channel(&conn).await;
        holder
            .basic_qos(1, BasicQosOptions::default())
            .await
            .expect("basic.qos");
        let mut held = consume(&holder, "dm.old", "holder", BasicConsumeOptions::default()).await;
        assert_eq!(body_str(&next_delivery(&mut held).await), "held");

        let acker = channel(&conn).await;
        acker
            .basic_qos(200, BasicQosOptions::default())
            .await
            .expect("basic.qos");
        let mut busy = consume(&acker, "dm.busy", "busy", BasicConsumeOptions::default()).await;
        let mut most = 0;
        for _round in 0..30 {
            publish_persistent_confirmed(&ch, "dm.busy", &body, 100).await;
            receive_and_ack(&mut busy, 100, 25).await;
            most = most.max(segment_files(&data_dir).len());
        }
        // 3 MB went through 64 KiB segments; a few remain at any time.
        let few = eventually(Duration::from_secs(10), || {
            segment_files(&data_dir).len() <= 6
        })
        .await;
        assert!(
            few,
            "segments left: {:?} (at most {most} at once)\n{}",
            segment_files(&data_dir),
            broker.log()
        );
        std::mem::forget(held);
        std::mem::forget(conn);
    });
    broker.restart();
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        assert_eq!(
            drain(&ch, "dm.old").await,
            [("held".to_string(), true), ("waiting".to_string(), false)]
        );
        assert_eq!(drain(&ch, "dm.busy").await, []);
    });
}

with_shards!(
    old_messages_do_not_keep_the_log,
    old_messages_do_not_keep_the_log
);

// ------------------------------------------------------------------ transactions

fn a_committed_transaction_survives_kill_9_and_a_rolled_back_one_never_was(shards: usize) {
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        eprintln!("skipped: killing an external broker is not this test's business");
        return;
    }
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        declare(&ch, "dm.tx-a", durable(), FieldTable::default()).await;
        declare(&ch, "dm.tx-b", durable(), FieldTable::default()).await;
        ch.tx_select().await.expect("tx.select");
        for queue in ["dm.tx-a", "dm.tx-b"] {
            for body in ["c1", "c2", "c3"] {
                publish_props(&ch, "", queue, body.as_bytes(), persistent()).await;
            }
        }
        step("tx.commit", ch.tx_commit()).await.expect("tx.commit");
        for body in ["r1", "r2"] {
            publish_props(&ch, "", "dm.tx-a", body.as_bytes(), persistent()).await;
        }
        step("tx.rollback", ch.tx_rollback())
            .await
            .expect("tx.rollback");
    });
    // Right after commit-ok: no time for anything but what commit-ok promised.
    broker.crash_and_restart();
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        for queue in ["dm.tx-a", "dm.tx-b"] {
            assert_eq!(
                bodies(&drain(&ch, queue).await),
                ["c1", "c2", "c3"],
                "{queue}"
            );
        }
    });
}

with_shards!(
    a_committed_transaction_survives_kill_9_and_a_rolled_back_one_never_was,
    a_committed_transaction_survives_kill_9_and_a_rolled_back_one_never_was
);

/// A confirm for a persistent message means it is on disk: kill -9 right
/// after the last confirm loses nothing.
fn a_confirm_means_on_disk(shards: usize) {
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        eprintln!("skipped: killing an external broker is not this test's business");
        return;
    }
    let url = broker.url();
    let started = Instant::now();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open_confirming(&url).await;
        declare(&ch, "dm.confirmed", durable(), FieldTable::default()).await;
        for n in 0..20 {
            publish_props(
                &ch,
                "",
                "dm.confirmed",
                format!("m{n}").as_bytes(),
                persistent(),
            )
            .await;
        }
    });
    broker.crash_and_restart();
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        let expected: Vec<String> = (0..20).map(|n| format!("m{n}")).collect();
        assert_eq!(bodies(&drain(&ch, "dm.confirmed").await), expected);
    });
    eprintln!("took {:?}", started.elapsed());
}

with_shards!(a_confirm_means_on_disk, a_confirm_means_on_disk);

//! Backlogs larger than memory keep the broker's memory bounded: with small
//! windows (`--queue-window`, `--shard-window`), a thousand queues each
//! holding a backlog, and one transient backlog larger than the memory
//! watermark, are paged to the store. The broker's peak resident size
//! (VmHWM in /proc/PID/status) stays under `--vm-memory-high-watermark`,
//! publishers are never blocked by the memory alarm, and every queue then
//! drains exactly once, in order, with the right redelivered flags.
//! Transient messages are paged without an fsync and are gone after a
//! restart.
//!
//! Each test starts the real broker (1 and 2 shards) and drives it with
//! lapin over real sockets.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::time::Duration;

use futures_lite::StreamExt;

const DEADLINE: Duration = Duration::from_secs(240);

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

/// A body of `len` bytes starting with the message's queue and number.
fn body(queue: u32, n: u32, len: usize) -> Vec<u8> {
    let mut body = format!("{queue:04}-{n:06}-").into_bytes();
    body.resize(len, b'.');
    body
}

/// (queue, number) of a body made by `body`.
fn parse(data: &[u8]) -> (u32, u32) {
    let text = String::from_utf8_lossy(&data[..11]);
    let queue = text[..4].parse().expect("a body the test published");
    let n = text[5..11].parse().expect("a body the test published");
    (queue, n)
}

// ------------------------------------------------------ a thousand backlogs

const QUEUES: u32 = 1000;
/// Messages per queue and their size: 1000 x 32 x 2 KiB, about 64 MB in
/// all, eight queue windows each and sixty times the shard window.
const PER_QUEUE: u32 = 32;
const BODY_LEN: usize = 2048;
/// Taken by basic.get and left unacknowledged, then requeued: these come
/// back first, marked redelivered.
const REQUEUED: u32 = 3;
const THOUSAND_WATERMARK: &str = "96MiB";
const THOUSAND_WATERMARK_BYTES: u64 = 96 << 20;

fn queue_name(q: u32) -> String {
    format!("pm.{q:04}")
}

/// Even queues are durable and take persistent and transient messages in
/// turn; odd ones are not durable and take transient messages.
fn props(q: u32, n: u32) -> BasicProperties {
    let mode = if q.is_multiple_of(2) && n.is_multiple_of(2) {
        2
    } else {
        1
    };
    BasicProperties::default().with_delivery_mode(mode)
}

/// Consumes all of queue `q` on `ch`, checking order and redelivered flags,
/// acking each delivery.
async fn drain_queue(ch: Channel, q: u32) -> Result<(), String> {
    let mut consumer = ch
        .basic_consume(
            &queue_name(q),
            &format!("drain-{q}"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("basic.consume on {q}: {e}"))?;
    for expected in 0..PER_QUEUE {
        let delivery = match within(Duration::from_secs(60), consumer.next()).await {
            Some(Some(Ok(delivery))) => delivery,
            other => {
                return Err(format!(
                    "queue {q}: no delivery {expected}: {:?}",
                    other.map(|o| o.map(|r| r.err()))
                ))
            }
        };
        let (from, n) = parse(&delivery.data);
        if from != q || n != expected {
            return Err(format!("queue {q}: got {from}/{n}, expected {expected}"));
        }
        if delivery.redelivered != (n < REQUEUED) {
            return Err(format!(
                "queue {q}: message {n} redelivered={}",
                delivery.redelivered
            ));
        }
        // One by one: the channel carries other queues' deliveries too.
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| format!("basic.ack: {e}"))?;
    }
    Ok(())
}

fn a_thousand_backlogs_stay_under_the_watermark_and_drain_once(shards: usize) {
    let broker = Broker::start_with(
        shards,
        &[
            "--vm-memory-high-watermark",
            THOUSAND_WATERMARK,
            "--queue-window",
            "8192",
            "--shard-window",
            "1048576",
        ],
    );
    if broker.is_external() {
        eprintln!("skipped: --queue-window is warren's");
        return;
    }
    let url = broker.url();
    run_for(DEADLINE, async {
        let (pconn, pch) = open_confirming(&url).await;
        for q in 0..QUEUES {
            let options = QueueDeclareOptions {
                durable: q % 2 == 0,
                ..Default::default()
            };
            declare_queue_with(&pch, &queue_name(q), options, FieldTable::default())
                .await
                .expect("queue.declare");
        }
        // Round after round, one message to every queue, a round's
        // confirms awaited before the next: the backlogs grow side by side.
        for n in 0..PER_QUEUE {
            let mut confirms = Vec::with_capacity(QUEUES as usize);
            for q in 0..QUEUES {
                let confirm = pch
                    .basic_publish(
                        "",
                        &queue_name(q),
                        BasicPublishOptions::default(),
                        &body(q, n, BODY_LEN),
                        props(q, n),
                    )
                    .await
                    .expect("basic.publish");
                confirms.push(confirm);
            }
            for confirm in confirms {
                assert!(step("confirm", confirm).await.expect("confirm").is_ack());
            }
            assert!(
                !pconn.status().blocked(),
                "the publisher was blocked after {n} rounds\n{}",
                broker.log()
            );
        }
        assert_eq!(message_count(&pconn, &queue_name(0)).await, PER_QUEUE);
        assert_eq!(
            message_count(&pconn, &queue_name(QUEUES - 1)).await,
            PER_QUEUE
        );

        // The first messages of every queue are taken and not acked, then
        // requeued by closing their channel: they are back at the head,
        // redelivered, before the paged rest.
        let getter = channel(&pconn).await;
        for q in 0..QUEUES {
            for n in 0..REQUEUED {
                // Not acked: a basic.get waits for a paged head to be read.
                let m = get(&getter, &queue_name(q), false)
                    .await
                    .unwrap_or_else(|| panic!("queue {q} is empty"));
                assert_eq!(parse(&m.delivery.data), (q, n));
                assert!(!m.delivery.redelivered);
            }
        }
        getter.close(200, "requeue").await.expect("channel.close");
        for q in [0, QUEUES - 1] {
            wait_message_count(&pconn, &queue_name(q), PER_QUEUE).await;
        }

        // Every queue drains at once, over four connections.
        let mut channels = Vec::new();
        for _ in 0..4 {
            let (conn, ch) = open(&url).await;
            // Per consumer: 1000 consumers hold 5,000 deliveries (10 MB)
            // unacknowledged at most, which memory must hold.
            ch.basic_qos(5, BasicQosOptions::default())
                .await
                .expect("basic.qos");
            channels.push((conn, ch));
        }
        let tasks: Vec<_> = (0..QUEUES)
            .map(|q| {
                let ch = channels[q as usize % channels.len()].1.clone();
                async_global_executor::spawn(drain_queue(ch, q))
            })
            .collect();
        for task in tasks {
            if let Err(e) = task.await {
                panic!("{e}\n{}", broker.log());
            }
        }
        for q in [0, 1, QUEUES / 2, QUEUES - 1] {
            wait_message_count(&pconn, &queue_name(q), 0).await;
        }
    });
    let log = broker.log();
    assert!(
        !log.contains("memory resource limit alarm set"),
        "the memory alarm was raised\n{log}"
    );
    let peak = broker.peak_resident_bytes();
    eprintln!(
        "peak resident size {} MiB, watermark {} MiB",
        peak >> 20,
        THOUSAND_WATERMARK_BYTES >> 20
    );
    assert!(
        peak < THOUSAND_WATERMARK_BYTES,
        "peak resident size {peak} bytes, over the watermark"
    );
}

with_shards!(a_thousand_backlogs_stay_under_the_watermark_and_drain_once);

// ---------------------------------------------- a transient backlog > memory

/// 10,000 transient messages of 12 KiB: about 120 MB, beyond the watermark.
const TRANSIENT_COUNT: u32 = 10_000;
const TRANSIENT_BODY_LEN: usize = 12 * 1024;
const TRANSIENT_WATERMARK: &str = "96MiB";
const TRANSIENT_WATERMARK_BYTES: u64 = 96 << 20;

/// The sum over shards of `warren_shard_store_fsyncs_total`.
fn store_fsyncs(broker: &Broker) -> u64 {
    let base = broker
        .prometheus_url()
        .unwrap_or_else(|| panic!("no Prometheus address in the log\n{}", broker.log()));
    let text = ureq::get(&format!("{base}/metrics"))
        .call()
        .expect("GET /metrics")
        .into_string()
        .expect("a text body");
    text.lines()
        .filter(|line| line.starts_with("warren_shard_store_fsyncs_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn publish_transient(ch: &Channel, conn: &Connection, queue: &str, broker: &Broker) {
    let props = BasicProperties::default().with_delivery_mode(1);
    for window in (0..TRANSIENT_COUNT).collect::<Vec<_>>().chunks(500) {
        let mut confirms = Vec::new();
        for &n in window {
            confirms.push(
                ch.basic_publish(
                    "",
                    queue,
                    BasicPublishOptions::default(),
                    &body(0, n, TRANSIENT_BODY_LEN),
                    props.clone(),
                )
                .await
                .expect("basic.publish"),
            );
        }
        for confirm in confirms {
            assert!(step("confirm", confirm).await.expect("confirm").is_ack());
        }
        assert!(
            !conn.status().blocked(),
            "the publisher was blocked\n{}",
            broker.log()
        );
    }
}

fn a_transient_backlog_beyond_the_watermark_is_paged_without_fsync(shards: usize) {
    let mut broker = Broker::start_with(
        shards,
        &[
            "--vm-memory-high-watermark",
            TRANSIENT_WATERMARK,
            "--queue-window",
            "262144",
            "--shard-window",
            "1048576",
        ],
    );
    if broker.is_external() {
        eprintln!("skipped: --queue-window is warren's");
        return;
    }
    let url = broker.url();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    run_for(DEADLINE, async {
        let (conn, ch) = open_confirming(&url).await;
        declare_queue_with(&ch, "tb.backlog", durable, FieldTable::default())
            .await
            .expect("queue.declare");
        let fsyncs_before = store_fsyncs(&broker);
        publish_transient(&ch, &conn, "tb.backlog", &broker).await;
        assert_eq!(message_count(&conn, "tb.backlog").await, TRANSIENT_COUNT);
        // Paging transient messages out asks nothing of the disk's sync.
        assert_eq!(
            store_fsyncs(&broker),
            fsyncs_before,
            "transient messages paged out with an fsync"
        );

        let cch = channel(&conn).await;
        cch.basic_qos(100, BasicQosOptions::default())
            .await
            .expect("basic.qos");
        let mut consumer = consume(&cch, "tb.backlog", "c", BasicConsumeOptions::default()).await;
        for expected in 0..TRANSIENT_COUNT {
            let delivery = next_delivery(&mut consumer).await;
            assert_eq!(parse(&delivery.data), (0, expected), "out of order or lost");
            assert!(!delivery.redelivered);
            if expected % 50 == 49 || expected + 1 == TRANSIENT_COUNT {
                delivery
                    .ack(BasicAckOptions { multiple: true })
                    .await
                    .expect("basic.ack");
            }
        }
        assert_no_delivery(&mut consumer).await;
        wait_message_count(&conn, "tb.backlog", 0).await;
        cch.close(200, "drained").await.expect("channel.close");

        // Another backlog, left there for a kill -9.
        publish_transient(&ch, &conn, "tb.backlog", &broker).await;
        assert_eq!(message_count(&conn, "tb.backlog").await, TRANSIENT_COUNT);
    });
    let log = broker.log();
    assert!(
        !log.contains("memory resource limit alarm set"),
        "the memory alarm was raised\n{log}"
    );
    let peak = broker.peak_resident_bytes();
    eprintln!(
        "peak resident size {} MiB, watermark {} MiB",
        peak >> 20,
        TRANSIENT_WATERMARK_BYTES >> 20
    );
    assert!(
        peak < TRANSIENT_WATERMARK_BYTES,
        "peak resident size {peak} bytes, over the watermark"
    );
    // Transient messages do not survive the broker, paged or not.
    broker.crash_and_restart();
    let url = broker.url();
    run_for(DEADLINE, async {
        let (conn, ch) = open(&url).await;
        assert_eq!(message_count(&conn, "tb.backlog").await, 0);
        assert!(get(&ch, "tb.backlog", true).await.is_none());
    });
}

with_shards!(a_transient_backlog_beyond_the_watermark_is_paged_without_fsync);

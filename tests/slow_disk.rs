//! A slow disk: every synced batch of the message store takes 100 ms
//! longer (`WARREN_TEST_SYNC_DELAY_MS`, a switch for tests read at start).
//! Publishers with confirms are confirmed only what is on disk: killed
//! with -9 in the middle, the broker comes back with every confirmed
//! message, once, in order. A publisher flooding faster than the disk
//! writes is held back by the memory alarm (records waiting for the disk
//! count as memory), so the broker's peak resident size stays under the
//! watermark, and every message arrives.
//!
//! Every test of this file starts its brokers with the same delay: the
//! variable is set in this test process, which the brokers inherit.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

#[path = "slow_disk_support/mod.rs"]
mod slow_disk_support;
use slow_disk_support::{body, drain_in_order, durable, number};

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);
const SYNC_DELAY_MS: &str = "100";
const WATERMARK: &str = "128MiB";
const WATERMARK_BYTES: u64 = 128 << 20;

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

fn start(shards: usize) -> Option<Broker> {
    slow_disk_support::start(shards, SYNC_DELAY_MS, WATERMARK)
}

/// 1,200 persistent messages of 64 KiB (about 75 MB) without confirms.
const FLOOD_COUNT: u32 = 1200;
const FLOOD_BODY_LEN: usize = 64 * 1024;

fn a_flood_on_a_slow_disk_stays_under_the_watermark_and_arrives(shards: usize) {
    let Some(broker) = start(shards) else { return };
    let url = broker.url();
    run_for(DEADLINE, async {
        let (conn, ch) = open(&url).await;
        declare_queue_with(&ch, "sd.flood", durable(), FieldTable::default())
            .await
            .expect("queue.declare");
        let props = BasicProperties::default().with_delivery_mode(2);
        for n in 0..FLOOD_COUNT {
            ch.basic_publish(
                "",
                "sd.flood",
                BasicPublishOptions::default(),
                &body(n, FLOOD_BODY_LEN),
                props.clone(),
            )
            .await
            .expect("basic.publish");
        }
        // A blocked publisher's messages are sent once it is unblocked.
        let (other, cch) = open(&url).await;
        assert!(
            eventually(Duration::from_secs(90), || !conn.status().blocked()).await,
            "the publisher stayed blocked\n{}",
            broker.log()
        );
        wait_message_count(&other, "sd.flood", FLOOD_COUNT).await;
        drain_in_order(&cch, "sd.flood", FLOOD_COUNT).await;
    });
    let peak = broker.peak_resident_bytes();
    eprintln!(
        "peak resident size {} MiB, watermark {} MiB; memory alarm raised: {}",
        peak >> 20,
        WATERMARK_BYTES >> 20,
        broker.log().contains("memory resource limit alarm set")
    );
    assert!(
        peak < WATERMARK_BYTES,
        "peak resident size {peak} bytes, over the watermark"
    );
}

with_shards!(a_flood_on_a_slow_disk_stays_under_the_watermark_and_arrives);

/// What the publisher knows before the kill.
#[derive(Default)]
struct Published {
    /// Sent (basic.publish written), confirmed or not.
    sent: u32,
    confirmed: BTreeSet<u32>,
}

/// Publishes 1 KiB persistent messages with confirms, 100 in flight,
/// recording what was sent and confirmed, until the broker dies.
async fn publish_until_killed(url: String, published: Arc<Mutex<Published>>) {
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
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut n = 0u32;
    // Bounded: the test kills the broker long before.
    while n < 1_000_000 {
        let mut confirms = Vec::new();
        for _ in 0..100 {
            let Ok(confirm) = ch
                .basic_publish(
                    "",
                    "sd.killed",
                    BasicPublishOptions::default(),
                    &body(n, 1024),
                    props.clone(),
                )
                .await
            else {
                return;
            };
            published.lock().unwrap().sent = n + 1;
            confirms.push((n, confirm));
            n += 1;
        }
        for (at, confirm) in confirms {
            match confirm.await {
                Ok(c) if c.is_ack() => {
                    published.lock().unwrap().confirmed.insert(at);
                }
                _ => return,
            }
        }
    }
}

fn a_kill_on_a_slow_disk_keeps_every_confirmed_message(shards: usize) {
    let Some(mut broker) = start(shards) else {
        return;
    };
    let url = broker.url();
    run_for(DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        declare_queue_with(&ch, "sd.killed", durable(), FieldTable::default())
            .await
            .expect("queue.declare");
    });
    let published = Arc::new(Mutex::new(Published::default()));
    let client = {
        let (url, published) = (url.clone(), published.clone());
        std::thread::spawn(move || {
            futures_lite::future::block_on(publish_until_killed(url, published))
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), || {
            published.lock().unwrap().confirmed.len() >= 1000
        }),
        "the publisher did not get far\n{}",
        broker.log()
    );
    broker.crash_and_restart();
    if wait_until(Duration::from_secs(10), || client.is_finished()) {
        client.join().expect("the client thread");
    } else {
        eprintln!("the client did not notice the kill within 10 s: left behind");
    }
    let published = std::mem::take(&mut *published.lock().unwrap());
    let url = broker.url();
    run_for(DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        let mut numbers = Vec::new();
        while let Some(m) = get(&ch, "sd.killed", true).await {
            numbers.push(number(&m.delivery.data));
        }
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "out of order or twice: {:?}",
            &numbers[..numbers.len().min(40)]
        );
        let present: BTreeSet<u32> = numbers.iter().copied().collect();
        let lost: Vec<u32> = published.confirmed.difference(&present).copied().collect();
        assert!(
            lost.is_empty(),
            "confirmed and lost: {lost:?}\n{}",
            broker.log()
        );
        assert!(
            numbers.last().is_none_or(|&n| n < published.sent),
            "a message never sent"
        );
        eprintln!(
            "{} sent, {} confirmed, {} back",
            published.sent,
            published.confirmed.len(),
            numbers.len()
        );
    });
}

with_shards!(a_kill_on_a_slow_disk_keeps_every_confirmed_message);

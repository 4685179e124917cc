//! A disk far slower than the publishers: every synced batch of the
//! message store takes 2 s longer (`WARREN_TEST_SYNC_DELAY_MS`, a switch
//! for tests read at start; a file of its own, as the brokers inherit the
//! test process's value). Records waiting for the disk count toward the
//! memory alarm, so a publisher flooding 150 MB of persistent messages
//! under a 64 MiB watermark is blocked by it (`connection.blocked`) while
//! they wait, unblocked once they are written, and every message arrives
//! once, in order. Nothing is dropped to stay under the limit.

mod common;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

#[path = "slow_disk_support/mod.rs"]
mod slow_disk_support;
use slow_disk_support::{body, drain_in_order, durable};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(180);
/// Long enough that even a slow client sends more than the memory budget
/// (the watermark less the broker's resident size at start, about 30 MB
/// for a debug build) while one batch is being synced.
const SYNC_DELAY_MS: &str = "2000";
const WATERMARK: &str = "64MiB";
/// 2,400 persistent messages of 64 KiB (about 150 MB) without confirms.
const FLOOD_COUNT: u32 = 2400;
const FLOOD_BODY_LEN: usize = 64 * 1024;
const ALARM_SET: &str = "memory resource limit alarm set";
const ALARM_CLEARED: &str = "memory resource limit alarm cleared";

fn records_waiting_for_the_disk_raise_the_memory_alarm(shards: usize) {
    let Some(broker) = slow_disk_support::start(shards, SYNC_DELAY_MS, WATERMARK) else {
        return;
    };
    let url = broker.url();
    run_for(DEADLINE, async {
        let (conn, ch) = open(&url).await;
        declare_queue_with(&ch, "sda.flood", durable(), FieldTable::default())
            .await
            .expect("queue.declare");
        let published = Arc::new(AtomicBool::new(false));
        let publisher = {
            let published = published.clone();
            async_global_executor::spawn(async move {
                let props = BasicProperties::default().with_delivery_mode(2);
                for n in 0..FLOOD_COUNT {
                    ch.basic_publish(
                        "",
                        "sda.flood",
                        BasicPublishOptions::default(),
                        &body(n, FLOOD_BODY_LEN),
                        props.clone(),
                    )
                    .await
                    .expect("basic.publish");
                }
                published.store(true, Ordering::SeqCst);
                ch
            })
        };
        // The publisher is blocked while the records wait for the disk...
        assert!(
            eventually(Duration::from_secs(60), || conn.status().blocked()).await,
            "the publisher was never blocked\n{}",
            broker.log()
        );
        // The log reaches its file through a pipe: its line may come after
        // the frame that blocked the client.
        assert!(
            eventually(Duration::from_secs(10), || broker.log().contains(ALARM_SET)).await,
            "{}",
            broker.log()
        );
        // ...and unblocked once they are written: the flood gets through.
        assert!(
            eventually(Duration::from_secs(120), || published
                .load(Ordering::SeqCst))
            .await,
            "the publisher never finished\n{}",
            broker.log()
        );
        let _ch = publisher.await;
        let (other, cch) = open(&url).await;
        wait_message_count(&other, "sda.flood", FLOOD_COUNT).await;
        assert!(
            eventually(Duration::from_secs(30), || !conn.status().blocked()).await,
            "the publisher stayed blocked\n{}",
            broker.log()
        );
        assert!(
            eventually(Duration::from_secs(10), || broker
                .log()
                .contains(ALARM_CLEARED))
            .await,
            "{}",
            broker.log()
        );
        drain_in_order(&cch, "sda.flood", FLOOD_COUNT).await;
    });
}

#[test]
fn records_waiting_for_the_disk_raise_the_memory_alarm_shards_1() {
    records_waiting_for_the_disk_raise_the_memory_alarm(1);
}

#[test]
fn records_waiting_for_the_disk_raise_the_memory_alarm_shards_2() {
    records_waiting_for_the_disk_raise_the_memory_alarm(2);
}

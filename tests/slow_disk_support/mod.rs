//! Shared by the slow-disk tests: a broker whose every synced store batch
//! is slowed (`WARREN_TEST_SYNC_DELAY_MS`, a switch for tests read at
//! start) and numbered message bodies. Each test file sets its own delay:
//! the brokers inherit the test process's value, so one file, one delay.
//!
//! Include with `#[path = "slow_disk_support/mod.rs"] mod slow_disk_support;`
//! after `common` and `lapin_support`.
#![allow(dead_code)]

use crate::common::Broker;
use crate::lapin_support::*;

/// Starts warren with every synced batch `sync_delay_ms` slower, the memory
/// watermark `watermark`, a 64 KiB queue window and a 1 MiB shard window;
/// None (the test skips) against an external broker.
pub fn start(shards: usize, sync_delay_ms: &str, watermark: &str) -> Option<Broker> {
    // The same value in every test of this process: setting it again
    // changes nothing another test's broker sees.
    std::env::set_var("WARREN_TEST_SYNC_DELAY_MS", sync_delay_ms);
    let broker = Broker::start_with(
        shards,
        &[
            "--vm-memory-high-watermark",
            watermark,
            "--queue-window",
            "65536",
            "--shard-window",
            "1048576",
        ],
    );
    if broker.is_external() {
        eprintln!("skipped: the slow disk is a switch of warren's");
        return None;
    }
    assert!(
        broker.log().contains("every synced store batch slowed"),
        "{}",
        broker.log()
    );
    Some(broker)
}

pub fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// A body of `len` bytes starting with `n` in six digits.
pub fn body(n: u32, len: usize) -> Vec<u8> {
    let mut body = format!("{n:06}-").into_bytes();
    body.resize(len, b'.');
    body
}

/// The number a [`body`] starts with.
pub fn number(data: &[u8]) -> u32 {
    String::from_utf8_lossy(&data[..6])
        .parse()
        .expect("a body the test published")
}

/// Consumes `count` messages from `queue` with prefetch 50, each [`body`]'s
/// number in order from 0, none redelivered, and then nothing more.
pub async fn drain_in_order(ch: &Channel, queue: &str, count: u32) {
    ch.basic_qos(50, BasicQosOptions::default())
        .await
        .expect("basic.qos");
    let mut consumer = consume(ch, queue, "c", BasicConsumeOptions::default()).await;
    for expected in 0..count {
        let delivery = next_delivery(&mut consumer).await;
        assert_eq!(number(&delivery.data), expected, "out of order or lost");
        assert!(!delivery.redelivered);
        delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("basic.ack");
    }
    assert_no_delivery(&mut consumer).await;
}

//! Memory and disk alarms (`--vm-memory-high-watermark`, `--disk-free-limit`):
//! a publishing connection is blocked (connection.blocked to clients that
//! announce the capability, and its socket is no longer read) while an alarm
//! is raised; consumers keep draining; connection.unblocked follows when the
//! alarm clears, and nothing published is lost.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::cell::Cell;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue as RawValue, FieldTable as RawTable};
use lapin_support::raw::RawConn;

/// Bodies big enough that a few dozen MiB fill the watermark quickly.
const BODY_BYTES: usize = 32 * 1024;
/// Above warren's resident size at start (about 15 MiB for a debug build),
/// so that the alarm clears once the queue is drained.
const WATERMARK: &str = "48MiB";
/// 256 MiB: a publisher that sent this much was never blocked.
const MESSAGES_MAX: usize = 8192;
/// Published after the publisher saw connection.blocked: lapin holds them
/// until connection.unblocked, and they must all arrive.
const AFTER_BLOCKED: usize = 100;
const DEADLINE: Duration = Duration::from_secs(120);

fn body(i: usize) -> Vec<u8> {
    let mut b = vec![b'x'; BODY_BYTES];
    b[..8].copy_from_slice(&(i as u64).to_be_bytes());
    b
}

fn index_of(data: &[u8]) -> usize {
    u64::from_be_bytes(data[..8].try_into().unwrap()) as usize
}

fn memory_alarm_blocks_then_unblocks(shards: usize) {
    // Windows larger than the watermark: the queue keeps every message in
    // memory (below them it would page them to disk, and memory would not
    // grow).
    let broker = Broker::start_with(
        shards,
        &[
            "--vm-memory-high-watermark",
            WATERMARK,
            "--queue-window",
            "1073741824",
            "--shard-window",
            "1073741824",
        ],
    );
    let url = broker.url();
    run_for(DEADLINE, async {
        let (pconn, pch) = open(&url).await;
        let q = unique("alarm-q");
        declare_queue(&pch, &q).await;
        // How many messages the publisher sent in all, once it is done.
        let total: Cell<Option<usize>> = Cell::new(None);

        // The publisher sends until it is blocked (the alarm is raised
        // within 100 ms of the watermark), then a few more, which lapin
        // holds while the connection is blocked and sends after.
        let publisher = async {
            let mut sent = 0;
            let mut after_blocked = 0;
            while after_blocked < AFTER_BLOCKED {
                assert!(
                    sent < MESSAGES_MAX,
                    "the publisher was never blocked\n{}",
                    broker.log()
                );
                pch.basic_publish(
                    "",
                    &q,
                    BasicPublishOptions::default(),
                    &body(sent),
                    BasicProperties::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("publish {}: {}", sent, e));
                sent += 1;
                if after_blocked > 0 || pconn.status().blocked() {
                    after_blocked += 1;
                }
            }
            total.set(Some(sent));
        };

        let observer = async {
            let blocked = eventually(Duration::from_secs(60), || pconn.status().blocked()).await;
            assert!(blocked, "the publisher was never blocked\n{}", broker.log());
            // Consumers and passive declares go on; the queue stops growing,
            // since the publisher's socket is not read.
            let (cconn, cch) = open(&url).await;
            let held = message_count(&cconn, &q).await;
            assert!(held > 0, "nothing was queued before the alarm");
            sleep(Duration::from_millis(500)).await;
            assert_eq!(
                message_count(&cconn, &q).await,
                held,
                "a blocked publisher's messages still arrive"
            );
            assert!(pconn.status().blocked());
            assert!(broker
                .log()
                .contains("memory resource limit alarm set on node"));

            // A consumer drains the queue: the alarm clears, the publisher is
            // unblocked, and every message arrives, once, in order.
            step("basic.qos", cch.basic_qos(200, BasicQosOptions::default()))
                .await
                .unwrap();
            let mut consumer = consume(&cch, &q, "drain", BasicConsumeOptions::default()).await;
            let mut expected = 0;
            let mut quiet_since = Instant::now();
            while total.get() != Some(expected) {
                match within(Duration::from_millis(100), consumer.next()).await {
                    Some(Some(Ok(d))) => {
                        assert_eq!(index_of(&d.data), expected, "out of order or lost");
                        d.ack(BasicAckOptions::default()).await.unwrap();
                        expected += 1;
                        quiet_since = Instant::now();
                    }
                    Some(other) => panic!("consumer ended: {:?}", other.map(|r| r.err())),
                    None => assert!(
                        quiet_since.elapsed() < STEP_DEADLINE,
                        "no delivery for {:?} after {} messages (publisher blocked: {})\n{}",
                        STEP_DEADLINE,
                        expected,
                        pconn.status().blocked(),
                        broker.log()
                    ),
                }
            }
            assert!(!pconn.status().blocked(), "the publisher is still blocked");
            assert_no_delivery(&mut consumer).await;
            assert!(
                eventually(STEP_DEADLINE, || broker
                    .log()
                    .contains("memory resource limit alarm cleared on node"))
                .await
            );
            assert_eq!(message_count(&cconn, &q).await, 0);
        };
        futures_lite::future::zip(publisher, observer).await;
    });
}

#[test]
fn memory_watermark_blocks_a_publisher_until_a_consumer_drains_shards_1() {
    memory_alarm_blocks_then_unblocks(1);
}

#[test]
fn memory_watermark_blocks_a_publisher_until_a_consumer_drains_shards_2() {
    memory_alarm_blocks_then_unblocks(2);
}

// ---------------------------------------------------------------- raw clients

/// A handshake whose client-properties announce (or not) `connection.blocked`,
/// then channel 1 open.
fn raw_client(broker: &Broker, blocked_capability: bool) -> RawConn {
    let mut c = RawConn::open(broker.addr());
    c.read_start();
    let mut capabilities = RawTable::default();
    capabilities.insert(
        "connection.blocked".into(),
        RawValue::Boolean(blocked_capability),
    );
    let mut client_properties = RawTable::default();
    client_properties.insert("capabilities".into(), RawValue::FieldTable(capabilities));
    c.send(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties,
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        })),
    ));
    let tune = match c.read() {
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
        other => panic!("expected connection.tune, got {:?}", other),
    };
    c.send(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: tune.channel_max,
            frame_max: tune.frame_max,
            heartbeat: 0,
        })),
    ));
    c.send(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    ));
    match c.read() {
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
        other => panic!("expected connection.open-ok, got {:?}", other),
    }
    c.send(&AMQPFrame::Method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ));
    match c.read() {
        AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) => {}
        other => panic!("expected channel.open-ok, got {:?}", other),
    }
    c
}

fn raw_publish(c: &mut RawConn, queue: &str, body: &[u8]) {
    c.send(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: queue.into(),
            mandatory: false,
            immediate: false,
        })),
    ));
    c.send(&AMQPFrame::Header(
        1,
        60,
        Box::new(AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: basic::AMQPProperties::default(),
        }),
    ));
    c.send(&AMQPFrame::Body(1, body.to_vec()));
}

fn raw_qos(c: &mut RawConn) {
    c.send(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 10,
            global: false,
        })),
    ));
}

/// True if the broker sends nothing within `quiet` (the socket's read
/// timeout is set to it).
fn nothing_arrives(c: &mut RawConn, quiet: Duration) -> bool {
    use std::io::Read;
    c.stream.set_read_timeout(Some(quiet)).unwrap();
    let mut byte = [0u8; 1];
    let quiet_so_far = match c.stream.read(&mut byte) {
        Ok(0) => panic!("broker closed the socket"),
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    quiet_so_far
}

fn disk_alarm_blocks_publishers_at_once(shards: usize) {
    // No disk here has a petabyte free: the alarm is raised at start.
    let broker = Broker::start_with(shards, &["--disk-free-limit", "1000000GB"]);
    assert!(broker
        .log()
        .contains("disk resource limit alarm set on node"));
    let url = broker.url();
    let q = unique("disk-q");
    run_for(Duration::from_secs(30), async {
        let (cconn, cch) = open(&url).await;
        declare_queue(&cch, &q).await;

        // A client with the capability hears why, on its first publish.
        let mut told = raw_client(&broker, true);
        raw_publish(&mut told, &q, b"first");
        match told.read() {
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Blocked(b))) => {
                assert_eq!(b.reason.as_str(), "low on disk")
            }
            other => panic!("expected connection.blocked, got {:?}", other),
        }
        // Nothing after the publish is read: no qos-ok comes back.
        raw_qos(&mut told);
        assert!(nothing_arrives(&mut told, Duration::from_millis(500)));

        // One without it is told nothing, and not read either.
        let mut untold = raw_client(&broker, false);
        raw_publish(&mut untold, &q, b"second");
        raw_qos(&mut untold);
        assert!(nothing_arrives(&mut untold, Duration::from_millis(500)));

        // A lapin publisher sees connection.blocked.
        let (pconn, pch) = open(&url).await;
        let _ = within(
            Duration::from_millis(500),
            pch.basic_publish(
                "",
                &q,
                BasicPublishOptions::default(),
                b"third",
                BasicProperties::default(),
            ),
        )
        .await;
        assert!(
            eventually(STEP_DEADLINE, || pconn.status().blocked()).await,
            "lapin was not told connection.blocked"
        );

        // No message got in; the consuming connection works as usual.
        assert_eq!(message_count(&cconn, &q).await, 0);
        assert!(get(&cch, &q, true).await.is_none());
        let other = declare_server_named(&cch).await;
        let mut consumer = consume(&cch, &other, "c", BasicConsumeOptions::default()).await;
        assert_no_delivery(&mut consumer).await;
        drop(told);
        drop(untold);
    });
}

#[test]
fn disk_free_limit_blocks_publishers_at_once_and_consumers_keep_working_shards_1() {
    disk_alarm_blocks_publishers_at_once(1);
}

#[test]
fn disk_free_limit_blocks_publishers_at_once_and_consumers_keep_working_shards_2() {
    disk_alarm_blocks_publishers_at_once(2);
}

#[test]
fn sigterm_stops_a_broker_whose_publisher_is_blocked() {
    let mut broker = Broker::start_with(2, &["--disk-free-limit", "1000000GB"]);
    let url = broker.url();
    let q = unique("disk-q");
    run_for(Duration::from_secs(30), async {
        let (pconn, pch) = open(&url).await;
        declare_queue(&pch, &q).await;
        let _ = within(
            Duration::from_millis(500),
            pch.basic_publish(
                "",
                &q,
                BasicPublishOptions::default(),
                b"blocked",
                BasicProperties::default(),
            ),
        )
        .await;
        assert!(eventually(STEP_DEADLINE, || pconn.status().blocked()).await);
        // A blocked connection is read again to hear its close-ok (lapin
        // writes nothing while blocked, so the broker's deadline ends it).
        let status = broker
            .stop_with(libc::SIGTERM, Duration::from_secs(15))
            .expect("warren did not exit after SIGTERM");
        assert!(status.success(), "{:?}\n{}", status, broker.log());
    });
}

// ---------------------------------------------------------------- flags

#[test]
fn bad_alarm_flags_stop_the_broker_with_a_message() {
    for (flag, value) in [
        ("--vm-memory-high-watermark", "lots"),
        ("--vm-memory-high-watermark", "0"),
        ("--vm-memory-high-watermark", "0.0"),
        ("--disk-free-limit", "50 furlongs"),
        ("--disk-free-limit", "mem_relative:x"),
    ] {
        let dir = fresh_temp_dir("warren-alarm-flags");
        let (status, output) = start_expecting_exit(1, &dir, &[flag, value]);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(status.code(), Some(1), "{} {}: {}", flag, value, output);
        assert!(
            output.contains(&format!("invalid {}", flag)),
            "{} {}: {}",
            flag,
            value,
            output
        );
    }
}

#[test]
fn good_alarm_flags_are_accepted() {
    let started = Instant::now();
    let broker = Broker::start_with(
        1,
        &[
            "--vm-memory-high-watermark",
            "0.6",
            "--disk-free-limit",
            "mem_relative:0.001",
        ],
    );
    assert!(broker.log().contains("memory high watermark set"));
    assert!(started.elapsed() < Duration::from_secs(30));
}

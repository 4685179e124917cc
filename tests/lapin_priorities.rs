//! Priority queues through lapin: with x-max-priority, higher priorities first and
//! FIFO within a priority, no priority as 0, priorities above the maximum as the
//! maximum, requeued messages back in their place. Expected orders are RabbitMQ
//! 3.10's, observed: run with
//! `WARREN_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f` to check them.
//!
//! Messages are published (and confirmed) before any consumer exists, so the
//! order seen is the queue's, not the order of arrival.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::time::Duration;

/// Overall deadline of a test body (longer than `run`'s, for a loaded machine).
const PRIORITY_TEST_DEADLINE: Duration = Duration::from_secs(30);

fn int(v: i32) -> AMQPValue {
    AMQPValue::LongInt(v)
}

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    }
}

/// Declares a queue named `prefix-…` with `args` on its own connection's channel.
async fn queue_with(ch: &Channel, prefix: &str, args: &[(&str, AMQPValue)]) -> String {
    let q = unique(prefix);
    declare_queue_with(ch, &q, QueueDeclareOptions::default(), table(args))
        .await
        .unwrap_or_else(|e| panic!("declare {q}: {e}"));
    q
}

/// Publishes each (body, priority) on a confirm channel, in order.
async fn publish_all(ch: &Channel, queue: &str, messages: &[(&str, Option<u8>)]) {
    for (body, priority) in messages {
        let mut props = BasicProperties::default();
        if let Some(p) = priority {
            props = props.with_priority(*p);
        }
        publish_props(ch, "", queue, body.as_bytes(), props).await;
    }
}

/// Consumes `n` messages from `queue` on a new channel of `conn`: (body, priority).
async fn consume_n(conn: &Connection, queue: &str, n: usize) -> Vec<(String, Option<u8>)> {
    let ch = channel(conn).await;
    let mut consumer = consume(&ch, queue, "", no_ack()).await;
    let mut out = Vec::new();
    for _ in 0..n {
        let d = next_delivery(&mut consumer).await;
        out.push((body_str(&d), *d.properties.priority()));
    }
    assert_no_delivery(&mut consumer).await;
    // Dropping a lapin channel does not close it: close it, consumer and all.
    step("channel.close", ch.close(200, "done")).await.unwrap();
    out
}

fn bodies(got: &[(String, Option<u8>)]) -> Vec<&str> {
    got.iter().map(|(b, _)| b.as_str()).collect()
}

broker_test!(higher_priority_first_and_fifo_within_a_priority, |b| {
    run_for(PRIORITY_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let q = queue_with(&ch, "prio-q", &[("x-max-priority", int(10))]).await;
        let messages = [
            ("low-1", Some(1)),
            ("mid-1", Some(5)),
            ("low-2", Some(1)),
            ("high-1", Some(9)),
            ("mid-2", Some(5)),
            ("high-2", Some(9)),
            ("low-3", Some(1)),
            ("top-1", Some(10)),
        ];
        publish_all(&ch, &q, &messages).await;
        let got = consume_n(&conn, &q, messages.len()).await;
        assert_eq!(
            bodies(&got),
            ["top-1", "high-1", "high-2", "mid-1", "mid-2", "low-1", "low-2", "low-3"]
        );
        // basic.get sees the same order.
        publish_all(&ch, &q, &messages).await;
        let mut via_get = Vec::new();
        while let Some(m) = get(&ch, &q, true).await {
            via_get.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
        }
        assert_eq!(
            via_get,
            ["top-1", "high-1", "high-2", "mid-1", "mid-2", "low-1", "low-2", "low-3"]
        );
    })
});

broker_test!(
    no_priority_counts_as_zero_and_above_the_maximum_as_the_maximum,
    |b| {
        run_for(PRIORITY_TEST_DEADLINE, async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let q = queue_with(&ch, "prio-edge-q", &[("x-max-priority", int(5))]).await;
            let messages = [
                ("none-1", None),
                ("zero-1", Some(0)),
                ("nine", Some(9)),
                ("five", Some(5)),
                ("three-1", Some(3)),
                ("none-2", None),
                ("two-hundred", Some(200)),
                ("three-2", Some(3)),
            ];
            publish_all(&ch, &q, &messages).await;
            let got = consume_n(&conn, &q, messages.len()).await;
            // 9, 5 and 200 all count as 5 (FIFO among them); none and 0 are both 0.
            assert_eq!(
                bodies(&got),
                [
                    "nine",
                    "five",
                    "two-hundred",
                    "three-1",
                    "three-2",
                    "none-1",
                    "zero-1",
                    "none-2"
                ]
            );
            // The priority property is delivered as published, not capped.
            let priority_of = |name: &str| got.iter().find(|(b, _)| b == name).unwrap().1;
            assert_eq!(priority_of("nine"), Some(9));
            assert_eq!(priority_of("two-hundred"), Some(200));
            assert_eq!(priority_of("none-1"), None);
            assert_eq!(priority_of("zero-1"), Some(0));
        })
    }
);

broker_test!(without_x_max_priority_priorities_are_ignored, |b| {
    run_for(PRIORITY_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let q = queue_with(&ch, "no-prio-q", &[]).await;
        let messages = [("a", Some(1)), ("b", Some(9)), ("c", None), ("d", Some(5))];
        publish_all(&ch, &q, &messages).await;
        let got = consume_n(&conn, &q, messages.len()).await;
        assert_eq!(bodies(&got), ["a", "b", "c", "d"]);
    })
});

broker_test!(
    requeued_messages_keep_their_place_within_their_priority,
    |b| {
        run_for(PRIORITY_TEST_DEADLINE, async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let q = queue_with(&ch, "prio-requeue-q", &[("x-max-priority", int(10))]).await;
            publish_all(
                &ch,
                &q,
                &[
                    ("a1", Some(3)),
                    ("a2", Some(3)),
                    ("a3", Some(3)),
                    ("b1", Some(1)),
                    ("b2", Some(1)),
                ],
            )
            .await;
            let mut taken = Vec::new();
            for expected in ["a1", "a2", "a3", "b1"] {
                let m = get(&ch, &q, false).await.expect(expected);
                assert_eq!(m.delivery.data, expected.as_bytes());
                taken.push(m);
            }
            // Requeued in another order than they were taken (b1, a2, a1), with a3
            // acked: each goes back to where it was in its priority.
            for i in [3, 1, 0] {
                step(
                    "basic.nack",
                    ch.basic_nack(
                        taken[i].delivery.delivery_tag,
                        BasicNackOptions {
                            requeue: true,
                            multiple: false,
                        },
                    ),
                )
                .await
                .unwrap();
            }
            step(
                "basic.ack",
                ch.basic_ack(taken[2].delivery.delivery_tag, BasicAckOptions::default()),
            )
            .await
            .unwrap();
            // All requeued before anyone consumes.
            wait_message_count(&conn, &q, 4).await;
            let cch = channel(&conn).await;
            let mut consumer = consume(&cch, &q, "", no_ack()).await;
            let mut got = Vec::new();
            for _ in 0..4 {
                let d = next_delivery(&mut consumer).await;
                got.push((body_str(&d), d.redelivered));
            }
            assert_eq!(
                got,
                [
                    ("a1".to_string(), true),
                    ("a2".to_string(), true),
                    ("b1".to_string(), true),
                    ("b2".to_string(), false),
                ]
            );
            assert_no_delivery(&mut consumer).await;
        })
    }
);

broker_test!(
    requeued_low_priority_messages_stay_behind_newer_high_priority_ones,
    |b| {
        run_for(PRIORITY_TEST_DEADLINE, async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let q = queue_with(&ch, "prio-requeue2-q", &[("x-max-priority", int(10))]).await;
            publish_all(
                &ch,
                &q,
                &[("high-1", Some(9)), ("low-1", Some(1)), ("low-2", Some(1))],
            )
            .await;
            let high = get(&ch, &q, false).await.expect("high-1");
            let low = get(&ch, &q, false).await.expect("low-1");
            assert_eq!(high.delivery.data, b"high-1");
            assert_eq!(low.delivery.data, b"low-1");
            // Published while the first two are out.
            publish_all(&ch, &q, &[("high-2", Some(9))]).await;
            for m in [&low, &high] {
                step(
                    "basic.nack",
                    ch.basic_nack(
                        m.delivery.delivery_tag,
                        BasicNackOptions {
                            requeue: true,
                            multiple: false,
                        },
                    ),
                )
                .await
                .unwrap();
            }
            // Both requeued before anyone consumes.
            wait_message_count(&conn, &q, 4).await;
            let cch = channel(&conn).await;
            let mut consumer = consume(&cch, &q, "", no_ack()).await;
            let mut got = Vec::new();
            for _ in 0..4 {
                let d = next_delivery(&mut consumer).await;
                got.push((body_str(&d), d.redelivered));
            }
            assert_eq!(
                got,
                [
                    ("high-1".to_string(), true),
                    ("high-2".to_string(), false),
                    ("low-1".to_string(), true),
                    ("low-2".to_string(), false),
                ]
            );
        })
    }
);

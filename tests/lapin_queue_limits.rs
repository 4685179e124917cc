//! Queue length limits through lapin: x-max-length and x-max-length-bytes with each
//! x-overflow behaviour (drop-head, reject-publish, reject-publish-dlx), what the
//! limits count, and a limit of 0. Expected behaviour is RabbitMQ 3.10's, observed:
//! run with `WARREN_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f` to check it.
//!
//! Every test that dead-letters uses a second queue, so that under `--shards 2`
//! dead letters may cross shards.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::time::Duration;

use futures_lite::StreamExt;

/// Overall deadline of a test body (longer than `run`'s, for a loaded machine).
const LIMIT_TEST_DEADLINE: Duration = Duration::from_secs(30);

fn int(v: i32) -> AMQPValue {
    AMQPValue::LongInt(v)
}

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        multiple: false,
    }
}

/// Declares a queue named `prefix-…` with `args`; returns its name.
async fn queue_with(ch: &Channel, prefix: &str, args: &[(&str, AMQPValue)]) -> String {
    let q = unique(prefix);
    declare_queue_with(ch, &q, QueueDeclareOptions::default(), table(args))
        .await
        .unwrap_or_else(|e| panic!("declare {q}: {e}"));
    q
}

/// A dead-letter queue, and arguments sending dead letters to it.
async fn dead_letter_queue(ch: &Channel) -> (String, Vec<(&'static str, AMQPValue)>) {
    let dlq = queue_with(ch, "lim-dlq", &[]).await;
    let args = vec![
        ("x-dead-letter-exchange", ls("")),
        ("x-dead-letter-routing-key", ls(&dlq)),
    ];
    (dlq, args)
}

/// Publishes on a confirm channel and returns whether the broker acked it.
async fn acked(ch: &Channel, queue: &str, body: &[u8]) -> bool {
    acked_props(ch, queue, body, BasicProperties::default()).await
}

async fn acked_props(ch: &Channel, queue: &str, body: &[u8], props: BasicProperties) -> bool {
    let c = publish_confirmed(ch, "", queue, BasicPublishOptions::default(), body, props)
        .await
        .expect("publish");
    match c {
        Confirmation::Ack(_) => true,
        Confirmation::Nack(_) => false,
        other => panic!("not a confirmation: {other:?}"),
    }
}

/// Every ready message of `queue`, taken with basic.get (no-ack).
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    out
}

/// The `reason` and `queue` of the newest x-death entry of a delivery.
fn newest_death(d: &Delivery) -> (String, String) {
    let headers = d
        .properties
        .headers()
        .as_ref()
        .unwrap_or_else(|| panic!("dead letter {:?} has no headers", body_str(d)));
    let entry = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => match a.as_slice().first() {
            Some(AMQPValue::FieldTable(t)) => t.clone(),
            other => panic!("x-death entry is {other:?}"),
        },
        other => panic!("x-death is {other:?}"),
    };
    let text = |k: &str| match entry.inner().get(k) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("x-death {k} is {other:?}"),
    };
    (text("reason"), text("queue"))
}

/// Asserts the consumer gets nothing (no delivery, no cancel) for `period`.
async fn assert_quiet_for(consumer: &mut Consumer, period: Duration) {
    if let Some(item) = within(period, consumer.next()).await {
        match item {
            Some(Ok(d)) => panic!("unexpected delivery {:?}", body_str(&d)),
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => panic!("consumer was cancelled"),
        }
    }
}

fn maxlen(queue: &str) -> (String, String) {
    ("maxlen".to_string(), queue.to_string())
}

// ---------------------------------------------------------------- drop-head

broker_test!(max_length_drop_head_drops_the_oldest, |b| {
    run_for(LIMIT_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let q = queue_with(&ch, "maxlen-q", &[("x-max-length", int(2))]).await;
        for body in ["1", "2", "3", "4", "5"] {
            // drop-head (the default) accepts every publish.
            assert!(acked(&ch, &q, body.as_bytes()).await, "{body} nacked");
        }
        assert_eq!(message_count(&conn, &q).await, 2);
        assert_eq!(drain(&ch, &q).await, ["4", "5"]);
    })
});

broker_test!(
    max_length_drop_head_dead_letters_the_oldest_as_maxlen,
    |b| {
        run_for(LIMIT_TEST_DEADLINE, async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let (dlq, mut args) = dead_letter_queue(&ch).await;
            args.push(("x-max-length", int(2)));
            args.push(("x-overflow", ls("drop-head")));
            let q = queue_with(&ch, "maxlen-dl-q", &args).await;
            let dch = channel(&conn).await;
            let mut dead = consume(&dch, &dlq, "", no_ack()).await;
            for body in ["1", "2", "3", "4"] {
                assert!(acked(&ch, &q, body.as_bytes()).await, "{body} nacked");
            }
            for expected in ["1", "2"] {
                let d = next_delivery(&mut dead).await;
                assert_eq!(body_str(&d), expected);
                assert_eq!(newest_death(&d), maxlen(&q));
            }
            assert_quiet_for(&mut dead, Duration::from_millis(300)).await;
            assert_eq!(drain(&ch, &q).await, ["3", "4"]);
        })
    }
);

broker_test!(max_length_bytes_counts_body_bytes_only, |b| {
    run_for(LIMIT_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let q = queue_with(&ch, "maxbytes-q", &[("x-max-length-bytes", int(10))]).await;
        // Large headers do not count, only bodies: 3 x 4 bytes is over 10.
        let big_headers = table(&[("padding", ls(&"x".repeat(1000)))]);
        for body in ["aaaa", "bbbb", "cccc"] {
            let props = BasicProperties::default().with_headers(big_headers.clone());
            assert!(acked_props(&ch, &q, body.as_bytes(), props).await);
        }
        assert_eq!(message_count(&conn, &q).await, 2);
        assert_eq!(drain(&ch, &q).await, ["bbbb", "cccc"]);
        // Exactly at the limit is within it.
        for body in ["12345", "67890"] {
            assert!(acked(&ch, &q, body.as_bytes()).await);
        }
        assert_eq!(drain(&ch, &q).await, ["12345", "67890"]);
    })
});

broker_test!(a_body_over_max_length_bytes_is_dropped_at_once, |b| {
    run_for(LIMIT_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let (dlq, mut args) = dead_letter_queue(&ch).await;
        args.push(("x-max-length-bytes", int(10)));
        let q = queue_with(&ch, "maxbytes-big-q", &args).await;
        // drop-head: accepted, and dropped (dead-lettered) straight away, even
        // though the queue was empty.
        assert!(acked(&ch, &q, b"0123456789AB").await);
        let dch = channel(&conn).await;
        let mut dead = consume(&dch, &dlq, "", no_ack()).await;
        let d = next_delivery(&mut dead).await;
        assert_eq!(body_str(&d), "0123456789AB");
        assert_eq!(newest_death(&d), maxlen(&q));
        assert_eq!(message_count(&conn, &q).await, 0);

        // reject-publish: refused, while a small one still fits.
        let strict = queue_with(
            &ch,
            "maxbytes-strict-q",
            &[
                ("x-max-length-bytes", int(10)),
                ("x-overflow", ls("reject-publish")),
            ],
        )
        .await;
        assert!(!acked(&ch, &strict, b"0123456789AB").await);
        assert!(acked(&ch, &strict, b"x").await);
        assert_eq!(drain(&ch, &strict).await, ["x"]);
    })
});

// ---------------------------------------------------------------- reject-publish

broker_test!(reject_publish_nacks_and_keeps_the_first_n, |b| {
    run_for(LIMIT_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let q = queue_with(
            &ch,
            "rejpub-q",
            &[
                ("x-max-length", int(2)),
                ("x-overflow", ls("reject-publish")),
            ],
        )
        .await;
        let mut confirms = Vec::new();
        for body in ["1", "2", "3", "4"] {
            confirms.push(acked(&ch, &q, body.as_bytes()).await);
        }
        assert_eq!(confirms, [true, true, false, false]);
        assert_eq!(message_count(&conn, &q).await, 2);
        // Room again after one is taken.
        let first = get(&ch, &q, true).await.expect("1");
        assert_eq!(first.delivery.data, b"1");
        assert!(acked(&ch, &q, b"5").await);
        assert!(!acked(&ch, &q, b"6").await);
        assert_eq!(drain(&ch, &q).await, ["2", "5"]);
        assert_channel_usable(&ch).await;
    })
});

broker_test!(reject_publish_without_confirms_drops_silently, |b| {
    run_for(LIMIT_TEST_DEADLINE, async {
        let (conn, ch) = open(&b.url()).await;
        let q = queue_with(
            &ch,
            "rejpub-plain-q",
            &[
                ("x-max-length", int(1)),
                ("x-overflow", ls("reject-publish")),
            ],
        )
        .await;
        publish(&ch, "", &q, b"kept").await;
        publish(&ch, "", &q, b"refused").await;
        wait_message_count(&conn, &q, 1).await;
        // basic.get on the publishing channel comes after both publishes.
        assert_eq!(drain(&ch, &q).await, ["kept"]);
        assert!(ch.status().connected());
        assert_eq!(message_count(&conn, &q).await, 0);
    })
});

broker_test!(reject_publish_does_not_dead_letter, |b| {
    run_for(LIMIT_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let (dlq, mut args) = dead_letter_queue(&ch).await;
        args.push(("x-max-length", int(1)));
        args.push(("x-overflow", ls("reject-publish")));
        let q = queue_with(&ch, "rejpub-dlx-q", &args).await;
        assert!(acked(&ch, &q, b"kept").await);
        assert!(!acked(&ch, &q, b"refused").await);
        let dch = channel(&conn).await;
        let mut dead = consume(&dch, &dlq, "", no_ack()).await;
        assert_quiet_for(&mut dead, Duration::from_millis(500)).await;
        assert_eq!(drain(&ch, &q).await, ["kept"]);
    })
});

broker_test!(reject_publish_dlx_nacks_and_dead_letters, |b| {
    run_for(LIMIT_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let (dlq, mut args) = dead_letter_queue(&ch).await;
        args.push(("x-max-length", int(1)));
        args.push(("x-overflow", ls("reject-publish-dlx")));
        let q = queue_with(&ch, "rejpubdlx-q", &args).await;
        let dch = channel(&conn).await;
        let mut dead = consume(&dch, &dlq, "", no_ack()).await;
        assert!(acked(&ch, &q, b"kept").await);
        assert!(!acked(&ch, &q, b"refused").await);
        let d = next_delivery(&mut dead).await;
        assert_eq!(body_str(&d), "refused");
        assert_eq!(newest_death(&d), maxlen(&q));
        assert_quiet_for(&mut dead, Duration::from_millis(300)).await;
        assert_eq!(drain(&ch, &q).await, ["kept"]);

        // Without a DLX configured, reject-publish-dlx just nacks.
        let plain = queue_with(
            &ch,
            "rejpubdlx-plain-q",
            &[
                ("x-max-length", int(1)),
                ("x-overflow", ls("reject-publish-dlx")),
            ],
        )
        .await;
        assert!(acked(&ch, &plain, b"kept").await);
        assert!(!acked(&ch, &plain, b"refused").await);
        assert_eq!(drain(&ch, &plain).await, ["kept"]);
    })
});

// ---------------------------------------------------------------- what counts

broker_test!(limits_count_ready_messages_not_unacked_ones, |b| {
    run_for(LIMIT_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let (dlq, mut args) = dead_letter_queue(&ch).await;
        args.push(("x-max-length", int(2)));
        let q = queue_with(&ch, "ready-only-q", &args).await;
        let dch = channel(&conn).await;
        let mut dead = consume(&dch, &dlq, "", no_ack()).await;
        assert!(acked(&ch, &q, b"1").await);
        assert!(acked(&ch, &q, b"2").await);
        let m1 = get(&ch, &q, false).await.expect("1");
        let m2 = get(&ch, &q, false).await.expect("2");
        // Two unacked, none ready: two more fit; the third pushes out the oldest
        // ready one.
        for body in ["3", "4", "5"] {
            assert!(acked(&ch, &q, body.as_bytes()).await);
        }
        let d = next_delivery(&mut dead).await;
        assert_eq!(body_str(&d), "3");
        assert_eq!(newest_death(&d), maxlen(&q));
        assert_eq!(message_count(&conn, &q).await, 2);
        // Requeued messages go back to the head, over the limit: the head is
        // dropped, so the requeued messages themselves go.
        for m in [&m1, &m2] {
            step(
                "basic.nack",
                ch.basic_nack(m.delivery.delivery_tag, requeue()),
            )
            .await
            .unwrap();
        }
        for expected in ["1", "2"] {
            let d = next_delivery(&mut dead).await;
            assert_eq!(body_str(&d), expected);
            assert_eq!(newest_death(&d), maxlen(&q));
        }
        assert_eq!(drain(&ch, &q).await, ["4", "5"]);
        assert_quiet_for(&mut dead, Duration::from_millis(300)).await;
    })
});

broker_test!(reject_publish_counts_ready_messages_not_unacked_ones, |b| {
    run_for(LIMIT_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let q = queue_with(
            &ch,
            "rejpub-ready-q",
            &[
                ("x-max-length", int(1)),
                ("x-overflow", ls("reject-publish")),
            ],
        )
        .await;
        let cch = channel(&conn).await;
        step("basic.qos", cch.basic_qos(1, BasicQosOptions::default()))
            .await
            .unwrap();
        let mut consumer = consume(&cch, &q, "", BasicConsumeOptions::default()).await;
        // 1 goes to the consumer and stays unacked, 2 is the one ready message,
        // 3 is over the limit.
        let confirms = [
            acked(&ch, &q, b"1").await,
            acked(&ch, &q, b"2").await,
            acked(&ch, &q, b"3").await,
        ];
        assert_eq!(confirms, [true, true, false]);
        let d = next_delivery(&mut consumer).await;
        assert_eq!(body_str(&d), "1");
        assert_eq!(message_count(&conn, &q).await, 1);
        step(
            "basic.ack",
            cch.basic_ack(d.delivery_tag, BasicAckOptions::default()),
        )
        .await
        .unwrap();
        assert_eq!(body_str(&next_delivery(&mut consumer).await), "2");
        assert_quiet_for(&mut consumer, Duration::from_millis(300)).await;
    })
});

// ---------------------------------------------------------------- a limit of 0

broker_test!(
    max_length_zero_drop_head_delivers_to_a_waiting_consumer,
    |b| {
        run_for(LIMIT_TEST_DEADLINE, async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let (dlq, mut args) = dead_letter_queue(&ch).await;
            args.push(("x-max-length", int(0)));
            let q = queue_with(&ch, "zero-q", &args).await;
            let dch = channel(&conn).await;
            let mut dead = consume(&dch, &dlq, "", no_ack()).await;
            // Nobody waiting: accepted and dropped (dead-lettered) at once.
            assert!(acked(&ch, &q, b"nobody-waiting").await);
            let d = next_delivery(&mut dead).await;
            assert_eq!(body_str(&d), "nobody-waiting");
            assert_eq!(newest_death(&d), maxlen(&q));
            assert_eq!(message_count(&conn, &q).await, 0);
            // A waiting consumer gets it: it never has to be kept in the queue.
            let cch = channel(&conn).await;
            let mut consumer = consume(&cch, &q, "", no_ack()).await;
            assert!(acked(&ch, &q, b"waited-for").await);
            assert_eq!(body_str(&next_delivery(&mut consumer).await), "waited-for");
            assert_quiet_for(&mut dead, Duration::from_millis(300)).await;
        })
    }
);

broker_test!(
    max_length_zero_reject_publish_refuses_even_a_waiting_consumer,
    |b| {
        run_for(LIMIT_TEST_DEADLINE, async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let (dlq, base) = dead_letter_queue(&ch).await;
            let dch = channel(&conn).await;
            let mut dead = consume(&dch, &dlq, "", no_ack()).await;
            let cch = channel(&conn).await;
            for overflow in ["reject-publish", "reject-publish-dlx"] {
                let mut args = base.clone();
                args.push(("x-max-length", int(0)));
                args.push(("x-overflow", ls(overflow)));
                let q = queue_with(&ch, "zero-rej-q", &args).await;
                let mut consumer = consume(&cch, &q, "", no_ack()).await;
                assert!(!acked(&ch, &q, overflow.as_bytes()).await, "{overflow}");
                if overflow == "reject-publish-dlx" {
                    let d = next_delivery(&mut dead).await;
                    assert_eq!(body_str(&d), overflow);
                    assert_eq!(newest_death(&d), maxlen(&q));
                }
                assert_quiet_for(&mut consumer, Duration::from_millis(300)).await;
            }
            assert_quiet_for(&mut dead, Duration::from_millis(1)).await;
        })
    }
);

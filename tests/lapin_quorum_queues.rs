//! Quorum queues on one node through lapin: `x-queue-type: quorum` is
//! accepted with the rules and semantics of RabbitMQ's quorum queues where
//! they differ from classic ones. Expected behaviour is RabbitMQ 3.10's,
//! observed: run with
//! `WARREN_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f` to check it.
//!
//! - Declaring: durable only; exclusive, auto-delete and the arguments of
//!   other queue types (`x-max-priority`, ...) are refused with RabbitMQ's
//!   406 texts; a redeclaration compares the quorum queue's arguments.
//! - A message that comes back (nack or reject with requeue, its channel
//!   closing) counts a delivery: from then on it carries `x-delivery-count`
//!   (a long) and is marked redelivered; basic.get shows the header always.
//! - With `x-delivery-limit` N, a message that comes back for the N+1th
//!   time is dead-lettered (reason `delivery_limit`), or dropped without a
//!   dead-letter exchange.
//! - Messages requeued by a nack or reject go to the back of the queue, in
//!   the order they came back (not to their old place, as in a classic
//!   queue); those of a channel that closes come back ahead of the others.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

fn quorum() -> (&'static str, AMQPValue) {
    ("x-queue-type", ls("quorum"))
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Declares a durable quorum queue with these extra arguments.
async fn quorum_queue(ch: &Channel, prefix: &str, extra: &[(&str, AMQPValue)]) -> String {
    let q = unique(prefix);
    let mut entries = vec![quorum()];
    entries.extend(extra.iter().cloned());
    declare_queue_with(ch, &q, durable(), table(&entries))
        .await
        .unwrap_or_else(|e| panic!("declare {q}: {e}"));
    q
}

/// Declares `name` and expects a 406; returns the reply text.
async fn refused(
    b: &Broker,
    name: &str,
    options: QueueDeclareOptions,
    args: &[(&str, AMQPValue)],
) -> String {
    let (_conn, ch) = open(&b.url()).await;
    expect_code(
        declare_queue_with(&ch, name, options, table(args)).await,
        406,
    )
}

fn delivery_count(props: &BasicProperties) -> Option<i64> {
    let headers = props.headers().clone()?;
    match headers.inner().get("x-delivery-count") {
        None => None,
        Some(AMQPValue::LongLongInt(n)) => Some(*n),
        Some(other) => panic!("x-delivery-count should be a long ('l'), is {other:?}"),
    }
}

async fn nack_requeue(ch: &Channel, tag: u64) {
    step(
        "basic.nack",
        ch.basic_nack(
            tag,
            BasicNackOptions {
                requeue: true,
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
}

broker_test!(a_durable_quorum_queue_is_declared_and_redeclared, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let q = quorum_queue(&ch, "qq", &[("x-delivery-limit", AMQPValue::LongInt(5))]).await;
        // The same declaration again, and passively.
        declare_queue_with(
            &ch,
            &q,
            durable(),
            table(&[quorum(), ("x-delivery-limit", AMQPValue::LongInt(5))]),
        )
        .await
        .unwrap();
        assert!(queue_exists(&conn, &q).await);
        fill_queue_plain(&ch, &q, &["a", "b"]).await;
        wait_message_count(&conn, &q, 2).await;
        // A quorum queue compares its own arguments: another delivery limit
        // is inequivalent.
        let (_c2, ch2) = open(&b.url()).await;
        let text = expect_code(
            declare_queue_with(
                &ch2,
                &q,
                durable(),
                table(&[quorum(), ("x-delivery-limit", AMQPValue::LongInt(6))]),
            )
            .await,
            406,
        );
        assert_eq!(
            text,
            format!(
                "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue '{q}' in vhost '/': received '6' but current is '5'"
            )
        );
        let (_c3, ch3) = open(&b.url()).await;
        let text = expect_code(
            declare_queue_with(&ch3, &q, durable(), FieldTable::default()).await,
            406,
        );
        assert_eq!(
            text,
            format!(
                "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{q}' in vhost '/': received none but current is the value 'quorum' of type 'longstr'"
            )
        );
        step(
            "queue.delete",
            ch.queue_delete(&q, QueueDeleteOptions::default()),
        )
        .await
        .unwrap();
    })
});

broker_test!(quorum_queues_refuse_what_rabbitmq_refuses, |b| {
    run(async {
        let q = unique("qq-refused");
        let text = refused(b, &q, QueueDeclareOptions::default(), &[quorum()]).await;
        assert_eq!(
            text,
            format!(
                "PRECONDITION_FAILED - invalid property 'non-durable' for queue '{q}' in vhost '/'"
            )
        );
        let text = refused(
            b,
            &q,
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            &[quorum()],
        )
        .await;
        assert_eq!(
            text,
            format!("PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue '{q}' in vhost '/'")
        );
        let text = refused(
            b,
            &q,
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            &[quorum()],
        )
        .await;
        assert_eq!(
            text,
            format!(
                "PRECONDITION_FAILED - invalid property 'auto-delete' for queue '{q}' in vhost '/'"
            )
        );
        for key in ["x-max-priority", "x-queue-version"] {
            let text = refused(b, &q, durable(), &[quorum(), (key, AMQPValue::LongInt(2))]).await;
            assert_eq!(
                text,
                format!("PRECONDITION_FAILED - invalid arg '{key}' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue")
            );
        }
        let text = refused(b, &q, durable(), &[quorum(), ("x-queue-mode", ls("lazy"))]).await;
        assert_eq!(
            text,
            format!("PRECONDITION_FAILED - invalid arg 'x-queue-mode' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue")
        );
        let text = refused(
            b,
            &q,
            durable(),
            &[quorum(), ("x-dead-letter-strategy", ls("sometimes"))],
        )
        .await;
        assert_eq!(
            text,
            format!("PRECONDITION_FAILED - invalid arg 'x-dead-letter-strategy' for queue '{q}' in vhost '/': invalid_dlx_strategy")
        );
        let text = refused(b, &q, durable(), &[("x-queue-type", ls("fancy"))]).await;
        assert_eq!(
            text,
            format!("PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{q}' in vhost '/': \"unsupported queue type 'fancy'\"")
        );
        let text = refused(b, "", durable(), &[quorum()]).await;
        assert_eq!(
            text,
            "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue"
        );
        // Nothing was created.
        let (conn, _ch) = open(&b.url()).await;
        assert!(!queue_exists(&conn, &q).await);
        // "classic" is a queue type too.
        let (_c, ch) = open(&b.url()).await;
        let classic = unique("classic");
        declare_queue_with(
            &ch,
            &classic,
            QueueDeclareOptions::default(),
            table(&[("x-queue-type", ls("classic"))]),
        )
        .await
        .unwrap();
    })
});

/// Publishes bodies to the default exchange without confirms; the caller
/// waits for the count it needs.
async fn fill_queue_plain(ch: &Channel, q: &str, bodies: &[&str]) {
    for body in bodies {
        publish(ch, "", q, body.as_bytes()).await;
    }
}

broker_test!(a_message_that_comes_back_carries_its_delivery_count, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let q = quorum_queue(&ch, "qq-count", &[]).await;
        fill_queue_plain(&ch, &q, &["m"]).await;
        wait_message_count(&conn, &q, 1).await;
        let mut consumer = consume(&ch, &q, "c", BasicConsumeOptions::default()).await;
        let first = next_delivery(&mut consumer).await;
        assert!(!first.redelivered);
        assert_eq!(delivery_count(&first.properties), None);
        nack_requeue(&ch, first.delivery_tag).await;
        let second = next_delivery(&mut consumer).await;
        assert!(second.redelivered);
        assert_eq!(delivery_count(&second.properties), Some(1));
        nack_requeue(&ch, second.delivery_tag).await;
        let third = next_delivery(&mut consumer).await;
        assert_eq!(delivery_count(&third.properties), Some(2));
        assert_eq!(body_str(&third), "m");
        // The channel closing counts as the message coming back too.
        step("channel.close", ch.close(200, "bye")).await.unwrap();
        let ch2 = channel(&conn).await;
        let got = get_within(&ch2, &q, STEP_DEADLINE).await;
        assert!(got.delivery.redelivered);
        assert_eq!(delivery_count(&got.delivery.properties), Some(3));
    })
});

broker_test!(basic_get_shows_the_delivery_count_from_zero, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let q = quorum_queue(&ch, "qq-get", &[]).await;
        fill_queue_plain(&ch, &q, &["m"]).await;
        wait_message_count(&conn, &q, 1).await;
        let got = get(&ch, &q, false).await.expect("a message");
        assert!(!got.delivery.redelivered);
        assert_eq!(delivery_count(&got.delivery.properties), Some(0));
        step(
            "basic.reject",
            ch.basic_reject(
                got.delivery.delivery_tag,
                BasicRejectOptions { requeue: true },
            ),
        )
        .await
        .unwrap();
        let again = get_within(&ch, &q, STEP_DEADLINE).await;
        assert!(again.delivery.redelivered);
        assert_eq!(delivery_count(&again.delivery.properties), Some(1));
    })
});

broker_test!(a_message_beyond_the_delivery_limit_is_dead_lettered, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let dead = unique("qq-dead");
        declare_queue(&ch, &dead).await;
        let q = quorum_queue(
            &ch,
            "qq-limit",
            &[
                ("x-delivery-limit", AMQPValue::LongInt(1)),
                ("x-dead-letter-exchange", ls("")),
                ("x-dead-letter-routing-key", ls(&dead)),
            ],
        )
        .await;
        fill_queue_plain(&ch, &q, &["poison"]).await;
        wait_message_count(&conn, &q, 1).await;
        let mut consumer = consume(&ch, &q, "c", BasicConsumeOptions::default()).await;
        let first = next_delivery(&mut consumer).await;
        nack_requeue(&ch, first.delivery_tag).await;
        let second = next_delivery(&mut consumer).await;
        assert_eq!(delivery_count(&second.properties), Some(1));
        // Back a second time: beyond the limit of 1.
        nack_requeue(&ch, second.delivery_tag).await;
        assert_no_delivery(&mut consumer).await;
        let letter = get_within(&ch, &dead, STEP_DEADLINE).await;
        assert_eq!(letter.delivery.data, b"poison");
        let headers = letter
            .delivery
            .properties
            .headers()
            .clone()
            .expect("the dead letter has headers");
        let deaths = match headers.inner().get("x-death") {
            Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
            other => panic!("x-death should be an array, is {other:?}"),
        };
        let entry = match &deaths[0] {
            AMQPValue::FieldTable(t) => t.inner().clone(),
            other => panic!("an x-death entry should be a table, is {other:?}"),
        };
        assert_eq!(
            entry.get("reason"),
            Some(&AMQPValue::LongString("delivery_limit".into()))
        );
        assert_eq!(
            entry.get("queue"),
            Some(&AMQPValue::LongString(q.as_str().into()))
        );
        assert_eq!(delivery_count(&letter.delivery.properties), None);
        assert_eq!(message_count(&conn, &q).await, 0);
    })
});

broker_test!(
    without_a_dead_letter_exchange_a_message_beyond_the_limit_is_dropped,
    |b| {
        run(async {
            let (conn, ch) = open(&b.url()).await;
            let q = quorum_queue(
                &ch,
                "qq-drop",
                &[("x-delivery-limit", AMQPValue::LongInt(0))],
            )
            .await;
            fill_queue_plain(&ch, &q, &["poison", "fine"]).await;
            wait_message_count(&conn, &q, 2).await;
            let got = get(&ch, &q, false).await.expect("a message");
            assert_eq!(got.delivery.data, b"poison");
            step(
                "basic.reject",
                ch.basic_reject(
                    got.delivery.delivery_tag,
                    BasicRejectOptions { requeue: true },
                ),
            )
            .await
            .unwrap();
            wait_message_count(&conn, &q, 1).await;
            let next = get(&ch, &q, true).await.expect("a message");
            assert_eq!(next.delivery.data, b"fine");
        })
    }
);

broker_test!(
    returned_messages_go_to_the_back_in_the_order_they_came_back,
    |b| {
        run(async {
            let (conn, ch) = open(&b.url()).await;
            let q = quorum_queue(&ch, "qq-order", &[]).await;
            fill_queue_plain(&ch, &q, &["1", "2", "3", "4", "5"]).await;
            wait_message_count(&conn, &q, 5).await;
            let mut tags = Vec::new();
            for expected in ["1", "2", "3"] {
                let got = get(&ch, &q, false).await.expect("a message");
                assert_eq!(got.delivery.data, expected.as_bytes());
                tags.push(got.delivery.delivery_tag);
            }
            // 3 comes back, then 1; 2 stays unacknowledged.
            for tag in [tags[2], tags[0]] {
                step(
                    "basic.reject",
                    ch.basic_reject(tag, BasicRejectOptions { requeue: true }),
                )
                .await
                .unwrap();
            }
            wait_message_count(&conn, &q, 4).await;
            let mut order = Vec::new();
            for _ in 0..4 {
                let got = get(&ch, &q, true).await.expect("a message");
                order.push(String::from_utf8_lossy(&got.delivery.data).into_owned());
            }
            assert_eq!(order, ["4", "5", "3", "1"]);
        })
    }
);

broker_test!(messages_of_a_closed_channel_come_back_ahead_in_order, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let q = quorum_queue(&ch, "qq-close", &[]).await;
        fill_queue_plain(&ch, &q, &["1", "2", "3", "4"]).await;
        wait_message_count(&conn, &q, 4).await;
        let consumer_ch = channel(&conn).await;
        step(
            "basic.qos",
            consumer_ch.basic_qos(2, BasicQosOptions::default()),
        )
        .await
        .unwrap();
        let mut consumer = consume(&consumer_ch, &q, "c", BasicConsumeOptions::default()).await;
        assert_eq!(next_bodies(&mut consumer, 2).await, ["1", "2"]);
        step("channel.close", consumer_ch.close(200, "bye"))
            .await
            .unwrap();
        wait_message_count(&conn, &q, 4).await;
        let mut order = Vec::new();
        for _ in 0..4 {
            let got = get(&ch, &q, true).await.expect("a message");
            order.push(String::from_utf8_lossy(&got.delivery.data).into_owned());
        }
        assert_eq!(order, ["1", "2", "3", "4"]);
    })
});

/// A quorum queue and its persistent messages survive a restart, its type
/// is in the definitions file as RabbitMQ exports it (`"type": "quorum"`
/// beside the `x-queue-type` argument), and its delivery limit still holds.
/// warren only: the test restarts the broker.
fn a_quorum_queue_survives_a_restart(shards: usize) {
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        return;
    }
    let q = unique("qq-restart");
    run(async {
        let (_conn, ch) = open_confirming(&broker.url()).await;
        declare_queue_with(
            &ch,
            &q,
            durable(),
            table(&[quorum(), ("x-delivery-limit", AMQPValue::LongInt(0))]),
        )
        .await
        .unwrap();
        let persistent = BasicProperties::default().with_delivery_mode(2);
        publish_props(&ch, "", &q, b"kept", persistent.clone()).await;
        publish_props(&ch, "", &q, b"kept too", persistent).await;
    });
    broker.restart();
    let defs = std::fs::read_to_string(
        broker
            .data_dir()
            .expect("a data directory")
            .join("definitions.json"),
    )
    .expect("definitions.json");
    let at = defs
        .find(&format!("\"name\":\"{q}\""))
        .or_else(|| defs.find(&format!("\"name\": \"{q}\"")));
    assert!(at.is_some(), "{q} is not in {defs}");
    assert!(
        defs.contains("\"type\":\"quorum\"") || defs.contains("\"type\": \"quorum\""),
        "{defs}"
    );
    run(async {
        let (conn, ch) = open(&broker.url()).await;
        declare_queue_with(
            &ch,
            &q,
            durable(),
            table(&[quorum(), ("x-delivery-limit", AMQPValue::LongInt(0))]),
        )
        .await
        .unwrap();
        wait_message_count(&conn, &q, 2).await;
        let got = get(&ch, &q, false).await.expect("a message");
        assert_eq!(got.delivery.data, b"kept");
        step(
            "basic.reject",
            ch.basic_reject(
                got.delivery.delivery_tag,
                BasicRejectOptions { requeue: true },
            ),
        )
        .await
        .unwrap();
        // A delivery limit of 0: the first return drops it.
        wait_message_count(&conn, &q, 1).await;
        assert_eq!(
            get(&ch, &q, true).await.expect("a message").delivery.data,
            b"kept too"
        );
    });
}

#[test]
fn a_quorum_queue_survives_a_restart_shards_1() {
    a_quorum_queue_survives_a_restart(1);
}

#[test]
fn a_quorum_queue_survives_a_restart_shards_2() {
    a_quorum_queue_survives_a_restart(2);
}

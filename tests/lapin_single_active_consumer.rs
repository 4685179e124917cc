//! Single active consumer through lapin: with x-single-active-consumer=true only
//! the first consumer receives; when it cancels, or its channel or connection
//! closes, the next one in subscription order takes over, and what the old one
//! had unacked goes to the new one once it is requeued. Expected behaviour is
//! RabbitMQ 3.10's, observed: run with
//! `WARREN_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f` to check it.
//!
//! basic.cancel does not requeue anything (AMQP 0-9-1): the cancelled consumer's
//! unacked messages stay with its channel, which may still ack or nack them; they
//! are requeued when it nacks them or when the channel closes.
//!
//! The cancel tests cancel the active consumer while no message is ready. RabbitMQ
//! 3.10.8 has a bug there: after the active consumer's basic.cancel, messages that
//! were already ready are not pushed to the new active consumer, and the next
//! publish then crashes the classic queue process (badmatch in
//! rabbit_amqqueue_process:attempt_delivery/4), losing its messages. Warren need
//! not copy that, and these tests do not depend on it.
//!
//! Every consumer is on its own connection, the queue's owner on another one.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::time::Duration;

/// Overall deadline of a test body (longer than `run`'s, for a loaded machine).
const SAC_TEST_DEADLINE: Duration = Duration::from_secs(30);

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    }
}

fn manual_ack() -> BasicConsumeOptions {
    BasicConsumeOptions::default()
}

/// Declares a single-active-consumer queue; returns its name.
async fn sac_queue(ch: &Channel) -> String {
    let q = unique("sac-q");
    declare_queue_with(
        ch,
        &q,
        QueueDeclareOptions::default(),
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await
    .unwrap_or_else(|e| panic!("declare {q}: {e}"));
    q
}

/// A consumer on a connection of its own. Subscriptions are made one after the
/// other (each waits for its consume-ok), which fixes the subscription order.
async fn consumer_on_own_connection(
    b: &Broker,
    q: &str,
    tag: &str,
    options: BasicConsumeOptions,
    prefetch: Option<u16>,
) -> (Connection, Channel, Consumer) {
    let (conn, ch) = open(&b.url()).await;
    if let Some(n) = prefetch {
        step("basic.qos", ch.basic_qos(n, BasicQosOptions::default()))
            .await
            .unwrap();
    }
    let consumer = consume(&ch, q, tag, options).await;
    (conn, ch, consumer)
}

async fn publish_bodies(ch: &Channel, q: &str, bodies: &[&str]) {
    for body in bodies {
        publish(ch, "", q, body.as_bytes()).await;
    }
}

/// The next `n` deliveries: (body, redelivered).
async fn next_n(consumer: &mut Consumer, n: usize) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = next_delivery(consumer).await;
        out.push((body_str(&d), d.redelivered));
    }
    out
}

fn fresh(bodies: &[&str]) -> Vec<(String, bool)> {
    bodies.iter().map(|b| (b.to_string(), false)).collect()
}

fn redelivered(bodies: &[&str]) -> Vec<(String, bool)> {
    bodies.iter().map(|b| (b.to_string(), true)).collect()
}

broker_test!(only_the_first_consumer_receives, |b| {
    run_for(SAC_TEST_DEADLINE, async {
        let (_conn, ch) = open_confirming(&b.url()).await;
        let q = sac_queue(&ch).await;
        let (_c1, _ch1, mut k1) = consumer_on_own_connection(b, &q, "c1", no_ack(), None).await;
        let (_c2, _ch2, mut k2) = consumer_on_own_connection(b, &q, "c2", no_ack(), None).await;
        let (_c3, _ch3, mut k3) = consumer_on_own_connection(b, &q, "c3", no_ack(), None).await;
        let bodies = ["1", "2", "3", "4", "5", "6"];
        publish_bodies(&ch, &q, &bodies).await;
        assert_eq!(next_n(&mut k1, 6).await, fresh(&bodies));
        assert_no_delivery(&mut k2).await;
        assert_no_delivery(&mut k3).await;
    })
});

broker_test!(
    cancel_hands_over_to_the_next_consumer_in_subscription_order,
    |b| {
        run_for(SAC_TEST_DEADLINE, async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let q = sac_queue(&ch).await;
            let (_c1, ch1, mut k1) =
                consumer_on_own_connection(b, &q, "c1", manual_ack(), None).await;
            let (_c2, ch2, mut k2) = consumer_on_own_connection(b, &q, "c2", no_ack(), None).await;
            let (_c3, _ch3, mut k3) = consumer_on_own_connection(b, &q, "c3", no_ack(), None).await;
            publish_bodies(&ch, &q, &["1", "2"]).await;
            let d1 = next_delivery(&mut k1).await;
            let d2 = next_delivery(&mut k1).await;
            assert_eq!((body_str(&d1), body_str(&d2)), ("1".into(), "2".into()));
            assert_eq!(message_count(&conn, &q).await, 0);

            step(
                "basic.cancel",
                ch1.basic_cancel("c1", BasicCancelOptions::default()),
            )
            .await
            .unwrap();
            // c2, the next to subscribe, is now the active consumer.
            publish_bodies(&ch, &q, &["3"]).await;
            assert_eq!(next_n(&mut k2, 1).await, fresh(&["3"]));
            assert_no_delivery(&mut k3).await;

            // The cancel requeued nothing: c1's channel still holds 1 and 2.
            assert_no_delivery(&mut k2).await;
            step(
                "basic.ack",
                ch1.basic_ack(d1.delivery_tag, BasicAckOptions::default()),
            )
            .await
            .unwrap();
            step(
                "basic.nack",
                ch1.basic_nack(
                    d2.delivery_tag,
                    BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    },
                ),
            )
            .await
            .unwrap();
            // The requeued one goes to the new active consumer.
            assert_eq!(next_n(&mut k2, 1).await, redelivered(&["2"]));
            assert_no_delivery(&mut k3).await;
            assert_channel_usable(&ch1).await;

            // And after c2, c3.
            step(
                "basic.cancel",
                ch2.basic_cancel("c2", BasicCancelOptions::default()),
            )
            .await
            .unwrap();
            publish_bodies(&ch, &q, &["4"]).await;
            assert_eq!(next_n(&mut k3, 1).await, fresh(&["4"]));
        })
    }
);

broker_test!(
    closing_the_cancelled_consumers_channel_requeues_to_the_new_active_one,
    |b| {
        run_for(SAC_TEST_DEADLINE, async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let q = sac_queue(&ch).await;
            let (_c1, ch1, mut k1) =
                consumer_on_own_connection(b, &q, "c1", manual_ack(), None).await;
            let (_c2, _ch2, mut k2) = consumer_on_own_connection(b, &q, "c2", no_ack(), None).await;
            let (_c3, _ch3, mut k3) = consumer_on_own_connection(b, &q, "c3", no_ack(), None).await;
            publish_bodies(&ch, &q, &["1", "2"]).await;
            assert_eq!(next_n(&mut k1, 2).await, fresh(&["1", "2"]));
            assert_eq!(message_count(&conn, &q).await, 0);
            step(
                "basic.cancel",
                ch1.basic_cancel("c1", BasicCancelOptions::default()),
            )
            .await
            .unwrap();
            publish_bodies(&ch, &q, &["3"]).await;
            assert_eq!(next_n(&mut k2, 1).await, fresh(&["3"]));
            // Closing the channel requeues its unacked messages, in order, to c2.
            step("channel.close", ch1.close(200, "bye")).await.unwrap();
            assert_eq!(next_n(&mut k2, 2).await, redelivered(&["1", "2"]));
            assert_no_delivery(&mut k3).await;
        })
    }
);

broker_test!(
    closing_the_active_consumers_connection_hands_over_with_requeue,
    |b| {
        run_for(SAC_TEST_DEADLINE, async {
            let (_conn, ch) = open_confirming(&b.url()).await;
            let q = sac_queue(&ch).await;
            let (c1, _ch1, mut k1) =
                consumer_on_own_connection(b, &q, "c1", manual_ack(), Some(1)).await;
            let (_c2, _ch2, mut k2) = consumer_on_own_connection(b, &q, "c2", no_ack(), None).await;
            let (_c3, _ch3, mut k3) = consumer_on_own_connection(b, &q, "c3", no_ack(), None).await;
            // c1 takes 1 and, at its prefetch limit, leaves 2 and 3 ready.
            publish_bodies(&ch, &q, &["1", "2", "3"]).await;
            assert_eq!(next_n(&mut k1, 1).await, fresh(&["1"]));
            assert_no_delivery(&mut k2).await;
            step("connection.close", c1.close(200, "bye"))
                .await
                .unwrap();
            // c2 takes over: the requeued 1 first, then the ready ones.
            let mut expected = redelivered(&["1"]);
            expected.extend(fresh(&["2", "3"]));
            assert_eq!(next_n(&mut k2, 3).await, expected);
            assert_no_delivery(&mut k3).await;
        })
    }
);

broker_test!(
    exclusive_consume_on_a_single_active_consumer_queue_is_refused_403,
    |b| {
        run(async {
            let (conn, ch) = open(&b.url()).await;
            let q = sac_queue(&ch).await;
            let cch = channel(&conn).await;
            let r = step(
                "basic.consume",
                cch.basic_consume(
                    &q,
                    "exclusive",
                    BasicConsumeOptions {
                        exclusive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await;
            let text = expect_code(r, 403);
            assert_eq!(
                text,
                format!("ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use")
            );
            wait_channel_closed(&cch).await;
            assert_channel_usable(&ch).await;
        })
    }
);

//! Message TTL and queue expiry through lapin: x-message-ttl, the per-message
//! `expiration` property, TTL 0, invalid expirations, dead-lettering of expired
//! messages, x-expires, and what a TTL means for a message that is out with a
//! consumer. Expected behaviour is RabbitMQ 3.10's, observed: run with
//! `WARREN_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f` to check it.
//!
//! Timers are slow on a loaded two-core CI machine, so every wait for an expiry has
//! a deadline of several seconds, and the bodies run under `run_for` with a longer
//! overall deadline than `run`'s.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::time::{Duration, Instant};

use futures_lite::StreamExt;

/// Overall deadline of a test body that waits on broker timers.
const TIMER_TEST_DEADLINE: Duration = Duration::from_secs(40);
/// How long an expiry that is due now may take to be carried out.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(10);

fn int(v: i32) -> AMQPValue {
    AMQPValue::LongInt(v)
}

fn qopts() -> QueueDeclareOptions {
    QueueDeclareOptions::default()
}

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    }
}

fn expiring(ms: &str) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.into())
}

/// Declares a (non-exclusive) queue named `prefix-…` with `args`; returns its name.
async fn queue_with(ch: &Channel, prefix: &str, args: &[(&str, AMQPValue)]) -> String {
    let q = unique(prefix);
    declare_queue_with(ch, &q, qopts(), table(args))
        .await
        .unwrap_or_else(|e| panic!("declare {q}: {e}"));
    q
}

/// A dead-letter queue and the arguments that send a queue's dead letters to it
/// through the default exchange.
async fn dead_letter_queue(ch: &Channel) -> (String, Vec<(&'static str, AMQPValue)>) {
    let dlq = queue_with(ch, "ttl-dlq", &[]).await;
    let args = vec![
        ("x-dead-letter-exchange", ls("")),
        ("x-dead-letter-routing-key", ls(&dlq)),
    ];
    (dlq, args)
}

/// Waits (EXPIRY_DEADLINE at most) until `queue` has `n` ready messages.
async fn wait_count_within(conn: &Connection, queue: &str, n: u32) {
    let end = Instant::now() + EXPIRY_DEADLINE;
    loop {
        let c = message_count(conn, queue).await;
        if c == n {
            return;
        }
        assert!(
            Instant::now() < end,
            "queue {queue} still has {c} ready messages after {EXPIRY_DEADLINE:?}, expected {n}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// The next delivery within EXPIRY_DEADLINE.
async fn next_within_expiry(consumer: &mut Consumer) -> Delivery {
    match within(EXPIRY_DEADLINE, consumer.next()).await {
        Some(Some(Ok(d))) => d,
        Some(Some(Err(e))) => panic!("consumer error: {e}"),
        Some(None) => panic!("consumer was cancelled"),
        None => panic!("no delivery within {EXPIRY_DEADLINE:?}"),
    }
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

/// The `reason` and `queue` of the newest x-death entry of a delivery.
fn newest_death(d: &Delivery) -> (String, String) {
    let headers = d
        .properties
        .headers()
        .as_ref()
        .unwrap_or_else(|| panic!("dead letter {:?} has no headers", body_str(d)));
    let deaths = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        other => panic!("x-death is {other:?}"),
    };
    let entry = match deaths.first() {
        Some(AMQPValue::FieldTable(t)) => t.clone(),
        other => panic!("x-death entry is {other:?}"),
    };
    let text = |k: &str| match entry.inner().get(k) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("x-death {k} is {other:?}"),
    };
    (text("reason"), text("queue"))
}

/// Whether `name` exists, checked so as not to keep it alive: a passive declare
/// counts as a use of the queue and restarts its x-expires timer (RabbitMQ 3.10,
/// observed), so checks are spaced `every` apart, which must exceed the queue's
/// x-expires. Waits at most `limit` for the queue to disappear.
async fn wait_queue_gone(conn: &Connection, name: &str, every: Duration, limit: Duration) {
    let end = Instant::now() + limit;
    loop {
        sleep(every).await;
        if !queue_exists(conn, name).await {
            return;
        }
        assert!(
            Instant::now() < end,
            "queue {name} still exists after {limit:?}"
        );
    }
}

// ---------------------------------------------------------------- x-message-ttl

broker_test!(queue_message_ttl_expires_ready_messages, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let q = queue_with(&ch, "ttl-q", &[("x-message-ttl", int(2000))]).await;
        publish(&ch, "", &q, b"short-lived").await;
        // Well within its 2 s, the message is there.
        assert_eq!(message_count(&conn, &q).await, 1);
        wait_count_within(&conn, &q, 0).await;
        assert!(
            get(&ch, &q, true).await.is_none(),
            "basic.get returned an expired message"
        );
        let cch = channel(&conn).await;
        let mut consumer = consume(&cch, &q, "", no_ack()).await;
        assert_quiet_for(&mut consumer, Duration::from_millis(500)).await;
        // The queue still works for messages that have not expired.
        publish(&ch, "", &q, b"fresh").await;
        assert_eq!(body_str(&next_delivery(&mut consumer).await), "fresh");
    })
});

broker_test!(per_message_expiration_expires_that_message_only, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let q = queue_with(&ch, "exp-q", &[]).await;
        publish_props(&ch, "", &q, b"soon", expiring("300")).await;
        publish_props(&ch, "", &q, b"later", expiring("60000")).await;
        publish(&ch, "", &q, b"never").await;
        wait_count_within(&conn, &q, 2).await;
        let later = get(&ch, &q, true).await.expect("the 60 s message");
        assert_eq!(later.delivery.data, b"later");
        // A message delivered before its deadline keeps its expiration property.
        assert_eq!(
            later
                .delivery
                .properties
                .expiration()
                .as_ref()
                .map(|s| s.as_str()),
            Some("60000")
        );
        let never = get(&ch, &q, true).await.expect("the message without TTL");
        assert_eq!(never.delivery.data, b"never");
        assert!(never.delivery.properties.expiration().is_none());
        assert!(get(&ch, &q, true).await.is_none());
    })
});

broker_test!(smaller_of_queue_ttl_and_message_expiration_wins, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        // Queue TTL long, message expiration short: the message's wins.
        let long_queue = queue_with(&ch, "ttl-long-q", &[("x-message-ttl", int(60_000))]).await;
        // Queue TTL short, message expiration long: the queue's wins.
        let short_queue = queue_with(&ch, "ttl-short-q", &[("x-message-ttl", int(300))]).await;
        let start = Instant::now();
        publish_props(&ch, "", &long_queue, b"a", expiring("300")).await;
        publish_props(&ch, "", &short_queue, b"b", expiring("60000")).await;
        wait_count_within(&conn, &long_queue, 0).await;
        wait_count_within(&conn, &short_queue, 0).await;
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the larger TTL was applied"
        );
        assert!(get(&ch, &long_queue, true).await.is_none());
        assert!(get(&ch, &short_queue, true).await.is_none());
    })
});

broker_test!(ttl_zero_delivers_to_a_waiting_consumer_only, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let (dlq, mut args) = dead_letter_queue(&ch).await;
        args.push(("x-message-ttl", int(0)));
        let q = queue_with(&ch, "ttl0-q", &args).await;
        let dch = channel(&conn).await;
        let mut dead = consume(&dch, &dlq, "", no_ack()).await;

        // Nobody waiting: expired at once (and dead-lettered).
        publish(&ch, "", &q, b"nobody-waiting").await;
        let d = next_within_expiry(&mut dead).await;
        assert_eq!(body_str(&d), "nobody-waiting");
        assert_eq!(newest_death(&d), ("expired".to_string(), q.clone()));
        assert_eq!(message_count(&conn, &q).await, 0);

        // A consumer that can take it: delivered, with no expiration property added.
        let cch = channel(&conn).await;
        step("basic.qos", cch.basic_qos(1, BasicQosOptions::default()))
            .await
            .unwrap();
        let mut consumer = consume(&cch, &q, "", BasicConsumeOptions::default()).await;
        publish(&ch, "", &q, b"taken").await;
        let taken = next_within_expiry(&mut consumer).await;
        assert_eq!(body_str(&taken), "taken");
        assert!(taken.properties.expiration().is_none());

        // The consumer is at its prefetch limit, so nobody can take this one: it
        // expires, and is not delivered once the consumer has room again.
        publish(&ch, "", &q, b"no-room").await;
        let d = next_within_expiry(&mut dead).await;
        assert_eq!(body_str(&d), "no-room");
        step(
            "basic.ack",
            cch.basic_ack(taken.delivery_tag, BasicAckOptions::default()),
        )
        .await
        .unwrap();
        assert_quiet_for(&mut consumer, Duration::from_millis(500)).await;
    })
});

broker_test!(expiration_zero_delivers_to_a_waiting_consumer, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let q = queue_with(&ch, "exp0-q", &[]).await;
        publish_props(&ch, "", &q, b"nobody-waiting", expiring("0")).await;
        wait_count_within(&conn, &q, 0).await;
        let cch = channel(&conn).await;
        let mut consumer = consume(&cch, &q, "", no_ack()).await;
        publish_props(&ch, "", &q, b"waited-for", expiring("0")).await;
        let d = next_within_expiry(&mut consumer).await;
        assert_eq!(body_str(&d), "waited-for");
        // Delivered as published, property included.
        assert_eq!(
            d.properties.expiration().as_ref().map(|s| s.as_str()),
            Some("0")
        );
        assert_quiet_for(&mut consumer, Duration::from_millis(300)).await;
    })
});

// ---------------------------------------------------------------- invalid expiration

broker_test!(invalid_expiration_closes_the_channel_406, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let q = queue_with(&ch, "bad-exp-q", &[]).await;
        // RabbitMQ 3.10 texts: the value, then the parse error as an Erlang term.
        let cases = [
            ("-1", "{value_negative,-1}"),
            ("abc", "no_integer"),
            ("", "no_integer"),
            ("1.5", "{leftover_string,\".5\"}"),
        ];
        for (value, why) in cases {
            let pch = channel(&conn).await;
            let watch = ErrorWatch::channel(&pch);
            // The publish itself is fire-and-forget; the close follows.
            let _ = pch
                .basic_publish(
                    "",
                    &q,
                    BasicPublishOptions::default(),
                    b"bad",
                    expiring(value),
                )
                .await;
            let text = watch.expect_code(406).await;
            assert_eq!(
                text,
                format!("PRECONDITION_FAILED - invalid expiration '{value}': {why}"),
                "expiration {value:?}"
            );
            wait_channel_closed(&pch).await;
        }
        // Only the channels were closed, and nothing was enqueued.
        assert_connection_usable(&conn).await;
        assert_eq!(message_count(&conn, &q).await, 0);
    })
});

broker_test!(leading_zero_and_plus_sign_expirations_are_accepted, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let q = queue_with(&ch, "odd-exp-q", &[]).await;
        // Both parse as integers (10 ms and 5 ms) in RabbitMQ 3.10.
        publish_props(&ch, "", &q, b"a", expiring("010")).await;
        publish_props(&ch, "", &q, b"b", expiring("+5")).await;
        assert!(ch.status().connected());
        wait_count_within(&conn, &q, 0).await;
    })
});

// ---------------------------------------------------------------- dead-lettering

broker_test!(expired_messages_are_dead_lettered, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let dlx = unique("ttl-dlx");
        declare_exchange(&ch, &dlx, ExchangeKind::Fanout).await;
        let dlq = queue_with(&ch, "ttl-dlq", &[]).await;
        bind(&ch, &dlq, &dlx, "").await;
        let by_queue = queue_with(
            &ch,
            "ttl-src-q",
            &[
                ("x-message-ttl", int(200)),
                ("x-dead-letter-exchange", ls(&dlx)),
            ],
        )
        .await;
        let by_message =
            queue_with(&ch, "exp-src-q", &[("x-dead-letter-exchange", ls(&dlx))]).await;
        let dch = channel(&conn).await;
        let mut dead = consume(&dch, &dlq, "", no_ack()).await;

        publish(&ch, "", &by_queue, b"queue-ttl").await;
        let d = next_within_expiry(&mut dead).await;
        assert_eq!(body_str(&d), "queue-ttl");
        assert_eq!(d.exchange.as_str(), dlx);
        assert_eq!(newest_death(&d), ("expired".to_string(), by_queue.clone()));

        publish_props(&ch, "", &by_message, b"message-ttl", expiring("200")).await;
        let d = next_within_expiry(&mut dead).await;
        assert_eq!(body_str(&d), "message-ttl");
        assert_eq!(
            newest_death(&d),
            ("expired".to_string(), by_message.clone())
        );
        // The dead letter no longer carries the expiration.
        assert!(d.properties.expiration().is_none());

        assert_eq!(message_count(&conn, &by_queue).await, 0);
        assert_eq!(message_count(&conn, &by_message).await, 0);
    })
});

// ---------------------------------------------------------------- unacked messages

broker_test!(ttl_does_not_apply_to_unacked_messages_until_requeued, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let (dlq, args) = dead_letter_queue(&ch).await;
        let mut ttl_args = args.clone();
        ttl_args.push(("x-message-ttl", int(500)));
        let by_queue = queue_with(&ch, "unacked-ttl-q", &ttl_args).await;
        let by_message = queue_with(&ch, "unacked-exp-q", &args).await;
        // Consumers first, so the messages cannot expire before they are delivered.
        let cch = channel(&conn).await;
        let mut consumer = consume(&cch, &by_queue, "", BasicConsumeOptions::default()).await;
        let mut consumer2 = consume(&cch, &by_message, "", BasicConsumeOptions::default()).await;
        publish(&ch, "", &by_queue, b"acked-late").await;
        publish(&ch, "", &by_queue, b"requeued-late").await;
        publish_props(&ch, "", &by_message, b"requeued-late-2", expiring("500")).await;
        let acked = next_delivery(&mut consumer).await;
        let requeued = next_delivery(&mut consumer).await;
        let requeued2 = next_delivery(&mut consumer2).await;
        assert_eq!(body_str(&acked), "acked-late");
        assert_eq!(body_str(&requeued), "requeued-late");
        assert_eq!(body_str(&requeued2), "requeued-late-2");

        // Three times the TTL pass while the messages are out with the consumer:
        // nothing is dead-lettered.
        let dch = channel(&conn).await;
        let mut dead = consume(&dch, &dlq, "", no_ack()).await;
        assert_quiet_for(&mut dead, Duration::from_millis(1500)).await;

        // The late ack is an ordinary ack.
        step(
            "basic.ack",
            cch.basic_ack(acked.delivery_tag, BasicAckOptions::default()),
        )
        .await
        .unwrap();
        // Back in the queue past its deadline, a message expires at once.
        for d in [&requeued, &requeued2] {
            step(
                "basic.nack",
                cch.basic_nack(
                    d.delivery_tag,
                    BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    },
                ),
            )
            .await
            .unwrap();
        }
        // Either may come first.
        let mut got = [
            next_within_expiry(&mut dead).await,
            next_within_expiry(&mut dead).await,
        ];
        got.sort_by_key(body_str);
        assert_eq!(body_str(&got[0]), "requeued-late");
        assert_eq!(
            newest_death(&got[0]),
            ("expired".to_string(), by_queue.clone())
        );
        assert_eq!(body_str(&got[1]), "requeued-late-2");
        assert_eq!(
            newest_death(&got[1]),
            ("expired".to_string(), by_message.clone())
        );
        // Neither goes back to the consumer, and the acked one is never dead-lettered.
        assert_quiet_for(&mut consumer, Duration::from_millis(300)).await;
        assert_quiet_for(&mut consumer2, Duration::from_millis(1)).await;
        assert_quiet_for(&mut dead, Duration::from_millis(300)).await;
        assert_channel_usable(&cch).await;
        assert_eq!(message_count(&conn, &by_queue).await, 0);
        assert_eq!(message_count(&conn, &by_message).await, 0);
    })
});

// ---------------------------------------------------------------- x-expires

broker_test!(x_expires_deletes_an_unused_queue, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let q = queue_with(&ch, "expires-q", &[("x-expires", int(500))]).await;
        // Messages in it do not count as use.
        publish(&ch, "", &q, b"left-behind").await;
        wait_queue_gone(
            &conn,
            &q,
            Duration::from_millis(1500),
            Duration::from_secs(20),
        )
        .await;
        let pch = channel(&conn).await;
        let text = expect_code(passive_declare_queue(&pch, &q).await, 404);
        assert_eq!(text, format!("NOT_FOUND - no queue '{q}' in vhost '/'"));
    })
});

broker_test!(x_expires_timer_restarts_on_declare_and_get, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open(&b.url()).await;
        let q = queue_with(&ch, "expires-used-q", &[("x-expires", int(3000))]).await;
        // A passive declare or a basic.get every 300 ms for 4.5 s (half as long
        // again as x-expires) keeps the queue alive.
        let end = Instant::now() + Duration::from_millis(4500);
        let mut turn = 0;
        while Instant::now() < end {
            sleep(Duration::from_millis(300)).await;
            if turn % 2 == 0 {
                assert!(queue_exists(&conn, &q).await, "{q} expired while in use");
            } else {
                assert!(get(&ch, &q, true).await.is_none());
            }
            turn += 1;
        }
        assert!(queue_exists(&conn, &q).await);
        // Left alone, it goes.
        wait_queue_gone(
            &conn,
            &q,
            Duration::from_millis(4000),
            Duration::from_secs(25),
        )
        .await;
    })
});

broker_test!(x_expires_spares_a_queue_with_a_consumer, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open(&b.url()).await;
        let q = queue_with(&ch, "expires-busy-q", &[("x-expires", int(500))]).await;
        let cch = channel(&conn).await;
        let mut consumer = consume(&cch, &q, "busy", no_ack()).await;
        // Four times x-expires: a deleted queue would cancel the consumer.
        assert_quiet_for(&mut consumer, Duration::from_secs(2)).await;
        assert!(queue_exists(&conn, &q).await);
        step(
            "basic.cancel",
            cch.basic_cancel("busy", BasicCancelOptions::default()),
        )
        .await
        .unwrap();
        // Without its consumer, the queue expires.
        wait_queue_gone(
            &conn,
            &q,
            Duration::from_millis(1500),
            Duration::from_secs(20),
        )
        .await;
    })
});

// ---------------------------------------------------------------- warren only

broker_test!(
    warren_expires_a_message_behind_a_longer_lived_one_on_time,
    |b| {
        if b.is_external() {
            eprintln!(
                "SKIPPED against {EXTERNAL_URL_VAR}: RabbitMQ only expires messages at the \
                 head of a queue, so a short-lived message waits behind a long-lived one"
            );
            return;
        }
        run_for(TIMER_TEST_DEADLINE, async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let (dlq, args) = dead_letter_queue(&ch).await;
            let q = queue_with(&ch, "behind-q", &args).await;
            let dch = channel(&conn).await;
            let mut dead = consume(&dch, &dlq, "", no_ack()).await;
            publish_props(&ch, "", &q, b"A", expiring("60000")).await;
            let start = Instant::now();
            publish_props(&ch, "", &q, b"B", expiring("1000")).await;
            let d = next_within_expiry(&mut dead).await;
            let at = start.elapsed();
            assert_eq!(body_str(&d), "B");
            assert_eq!(newest_death(&d), ("expired".to_string(), q.clone()));
            // B's deadline is 1 s after the broker received it, which is after
            // `start`; 0.9 s allows for a coarse timer. The tolerance after the
            // deadline is 1.5 s, for a loaded two-core CI machine.
            assert!(
                at >= Duration::from_millis(900),
                "B dead-lettered after only {at:?}"
            );
            assert!(
                at <= Duration::from_millis(1000 + 1500),
                "B dead-lettered only after {at:?}"
            );
            // A is still waiting in the source queue.
            assert_eq!(message_count(&conn, &q).await, 1);
            let a = get(&ch, &q, true).await.expect("A");
            assert_eq!(a.delivery.data, b"A");
        })
    }
);

//! x-delayed-message exchanges through lapin, checked against the
//! rabbitmq-delayed-message-exchange plugin's behaviour: messages wait for
//! their x-delay and then route by the x-delayed-type (direct, topic, fanout,
//! headers, onward through exchange-to-exchange bindings); no or non-positive
//! x-delay routes at once; declaration errors carry the plugin's texts; a
//! deleted exchange drops what it held; a held message is confirmed at once,
//! and a mandatory one is returned at once (and still delivered), as the
//! plugin does.
//!
//! Timing: a message must never arrive before its delay (measured from just
//! before the publish, so the bound is strict), and must arrive within
//! `LATE_TOLERANCE` after it, generous for a loaded CI machine.
//!
//! The plugin is not part of a stock RabbitMQ, so these tests run against
//! warren only.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::time::{Duration, Instant};

/// How late after its delay a message may arrive.
const LATE_TOLERANCE: Duration = Duration::from_millis(2000);

fn delayed_kind() -> ExchangeKind {
    ExchangeKind::Custom("x-delayed-message".into())
}

async fn declare_delayed(ch: &Channel, name: &str, args: FieldTable) -> lapin::Result<()> {
    step(
        "exchange.declare",
        ch.exchange_declare(
            name,
            delayed_kind(),
            ExchangeDeclareOptions::default(),
            args,
        ),
    )
    .await
}

/// A new delayed exchange routing as `delayed_type`.
async fn delayed_exchange(ch: &Channel, delayed_type: &str) -> String {
    let x = unique("delayed-x");
    declare_delayed(ch, &x, table(&[("x-delayed-type", ls(delayed_type))]))
        .await
        .unwrap_or_else(|e| panic!("declare {}: {}", x, e));
    x
}

async fn new_queue(ch: &Channel) -> String {
    let q = unique("delayed-q");
    declare_queue(ch, &q).await;
    q
}

async fn delete_queues(ch: &Channel, qs: &[String]) {
    for q in qs {
        let _ = ch.queue_delete(q, QueueDeleteOptions::default()).await;
    }
}

fn delay_header(ms: i32) -> FieldTable {
    table(&[("x-delay", AMQPValue::LongInt(ms))])
}

fn with_delay(ms: i32) -> BasicProperties {
    BasicProperties::default().with_headers(delay_header(ms))
}

/// Publishes on a confirm channel, expects an ack, returns when the publish
/// started.
async fn publish_delayed(
    ch: &Channel,
    x: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Instant {
    let started = Instant::now();
    let c = publish_confirmed(ch, x, key, BasicPublishOptions::default(), body, props)
        .await
        .expect("publish");
    assert!(c.is_ack(), "{:?}", c);
    started
}

/// Checks an arrival against its delay: never early, at most LATE_TOLERANCE late.
#[track_caller]
fn assert_on_time(what: &str, published: Instant, arrived: Instant, delay_ms: u64) {
    let waited = arrived - published;
    let delay = Duration::from_millis(delay_ms);
    assert!(
        waited >= delay,
        "{} arrived after {:?}, before its delay of {:?}",
        what,
        waited,
        delay
    );
    assert!(
        waited <= delay + LATE_TOLERANCE,
        "{} arrived after {:?}, more than {:?} after its delay of {:?}",
        what,
        waited,
        LATE_TOLERANCE,
        delay
    );
}

/// basic.get on `queue` until a message arrives; returns it with the time.
async fn get_arrival(ch: &Channel, queue: &str, limit: Duration) -> (BasicGetMessage, Instant) {
    let m = get_within(ch, queue, limit).await;
    (m, Instant::now())
}

broker_test!(
    messages_arrive_in_delay_order_and_not_before_their_delay,
    |b| {
        run(async {
            let (_c1, setup) = open(&b.url()).await;
            let (_c2, publisher) = open_confirming(&b.url()).await;
            let (_c3, reader) = open(&b.url()).await;
            let x = delayed_exchange(&setup, "direct").await;
            let q = new_queue(&setup).await;
            bind(&setup, &q, &x, "k").await;
            let mut consumer = consume(
                &reader,
                &q,
                "delay-order",
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
            )
            .await;
            let mut published = Vec::new();
            for (delay_ms, header) in [
                (300, AMQPValue::LongInt(300)),
                (100, AMQPValue::LongLongInt(100)),
                // A string delay is read as an integer, as the plugin reads it.
                (200, ls("200")),
            ] {
                let props = BasicProperties::default().with_headers(table(&[("x-delay", header)]));
                let at =
                    publish_delayed(&publisher, &x, "k", delay_ms.to_string().as_bytes(), props)
                        .await;
                published.push((delay_ms, at));
            }
            let mut order = Vec::new();
            for _ in 0..3 {
                let d = next_delivery(&mut consumer).await;
                let arrived = Instant::now();
                let body = body_str(&d);
                let delay_ms: u64 = body.parse().unwrap();
                let (_, at) = published.iter().find(|(ms, _)| *ms == delay_ms).unwrap();
                assert_on_time(&body, *at, arrived, delay_ms);
                // The plugin routes a held message with x-delay set to -delay.
                let headers = d.properties.headers().clone().expect("headers");
                assert_eq!(
                    headers.inner().get("x-delay"),
                    Some(&AMQPValue::LongInt(-(delay_ms as i32))),
                    "{}",
                    body
                );
                assert_eq!(d.exchange.as_str(), x);
                assert_eq!(d.routing_key.as_str(), "k");
                order.push(body);
            }
            assert_eq!(order, ["100", "200", "300"]);
            delete_queues(&setup, &[q]).await;
            let _ = setup
                .exchange_delete(&x, ExchangeDeleteOptions::default())
                .await;
        })
    }
);

broker_test!(
    a_topic_delayed_type_routes_by_pattern_after_the_delay,
    |b| {
        run(async {
            let (_c1, setup) = open(&b.url()).await;
            let (_c2, publisher) = open_confirming(&b.url()).await;
            let x = delayed_exchange(&setup, "topic").await;
            let mut qs = Vec::new();
            for pattern in ["a.*", "*.z", "b.#"] {
                let q = new_queue(&setup).await;
                bind(&setup, &q, &x, pattern).await;
                qs.push(q);
            }
            let at = publish_delayed(&publisher, &x, "a.z", b"topic", with_delay(250)).await;
            for q in &qs[..2] {
                let (m, arrived) = get_arrival(&setup, q, STEP_DEADLINE).await;
                assert_eq!(m.delivery.data, b"topic");
                assert_on_time(q, at, arrived, 250);
            }
            assert!(get(&setup, &qs[2], true).await.is_none(), "b.# matched a.z");
            delete_queues(&setup, &qs).await;
        })
    }
);

broker_test!(a_fanout_delayed_type_reaches_every_bound_queue, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let x = delayed_exchange(&setup, "fanout").await;
        let mut qs = Vec::new();
        for key in ["", "ignored", "x.y"] {
            let q = new_queue(&setup).await;
            bind(&setup, &q, &x, key).await;
            qs.push(q);
        }
        let at = publish_delayed(&publisher, &x, "any", b"fan", with_delay(200)).await;
        for q in &qs {
            let (m, arrived) = get_arrival(&setup, q, STEP_DEADLINE).await;
            assert_eq!(m.delivery.data, b"fan");
            assert_on_time(q, at, arrived, 200);
        }
        delete_queues(&setup, &qs).await;
    })
});

broker_test!(a_headers_delayed_type_matches_the_message_headers, |b| {
    run(async {
        let (conn, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let x = delayed_exchange(&setup, "headers").await;
        let (hit, miss) = (new_queue(&setup).await, new_queue(&setup).await);
        bind_with(
            &setup,
            &hit,
            &x,
            "",
            table(&[("x-match", ls("all")), ("kind", ls("a"))]),
        )
        .await;
        bind_with(
            &setup,
            &miss,
            &x,
            "",
            table(&[("x-match", ls("all")), ("kind", ls("b"))]),
        )
        .await;
        let headers = table(&[("x-delay", AMQPValue::LongInt(150)), ("kind", ls("a"))]);
        let at = publish_delayed(
            &publisher,
            &x,
            "",
            b"headers",
            BasicProperties::default().with_headers(headers),
        )
        .await;
        let (m, arrived) = get_arrival(&setup, &hit, STEP_DEADLINE).await;
        assert_eq!(m.delivery.data, b"headers");
        assert_on_time("headers", at, arrived, 150);
        assert!(get(&setup, &miss, true).await.is_none());
        // A delayed headers exchange checks x-match like a headers exchange.
        let other = channel(&conn).await;
        let watch = ErrorWatch::channel(&other);
        let _ = other
            .queue_bind(
                &miss,
                &x,
                "",
                QueueBindOptions::default(),
                table(&[("x-match", ls("some"))]),
            )
            .await;
        let text = watch.expect_code(406).await;
        assert!(text.contains("Invalid x-match field value"), "{}", text);
        delete_queues(&setup, &[hit, miss]).await;
    })
});

broker_test!(without_a_positive_x_delay_a_message_routes_at_once, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let x = delayed_exchange(&setup, "direct").await;
        let q = new_queue(&setup).await;
        bind(&setup, &q, &x, "k").await;
        let cases: Vec<(&str, BasicProperties)> = vec![
            ("no headers", BasicProperties::default()),
            (
                "other headers",
                BasicProperties::default().with_headers(table(&[("a", ls("b"))])),
            ),
            ("zero", with_delay(0)),
            ("negative", with_delay(-500)),
            (
                "not a number",
                BasicProperties::default().with_headers(table(&[("x-delay", ls("soon"))])),
            ),
            (
                "a boolean",
                BasicProperties::default()
                    .with_headers(table(&[("x-delay", AMQPValue::Boolean(true))])),
            ),
            (
                "beyond Erlang's timer",
                BasicProperties::default()
                    .with_headers(table(&[("x-delay", AMQPValue::LongLongInt(1 << 32))])),
            ),
        ];
        for (what, props) in cases {
            publish_delayed(&publisher, &x, "k", what.as_bytes(), props).await;
            // The ack of an immediate route means the queue has the message.
            let m = get(&setup, &q, true)
                .await
                .unwrap_or_else(|| panic!("{}: not routed at once", what));
            assert_eq!(m.delivery.data, what.as_bytes());
        }
        // x-delay on an ordinary exchange means nothing.
        let plain = unique("plain-x");
        declare_exchange(&setup, &plain, ExchangeKind::Direct).await;
        bind(&setup, &q, &plain, "k").await;
        publish_delayed(&publisher, &plain, "k", b"plain", with_delay(5000)).await;
        let m = get(&setup, &q, true).await.expect("routed at once");
        assert_eq!(m.delivery.data, b"plain");
        delete_queues(&setup, &[q]).await;
        let _ = setup
            .exchange_delete(&plain, ExchangeDeleteOptions::default())
            .await;
    })
});

broker_test!(declare_errors_carry_the_plugins_texts, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        for (args, expected) in [
            (
                FieldTable::default(),
                "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type",
            ),
            (
                table(&[("x-delayed-type", AMQPValue::LongInt(1))]),
                "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type",
            ),
            (
                table(&[("x-delayed-type", ls("x-delayed-message"))]),
                "PRECONDITION_FAILED - Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'",
            ),
        ] {
            let ch = channel(&conn).await;
            let name = unique("bad-delayed");
            let text = expect_code(declare_delayed(&ch, &name, args).await, 406);
            assert_eq!(text, expected);
            wait_channel_closed(&ch).await;
            assert!(!exchange_exists(&conn, &name).await);
        }
        assert_connection_usable(&conn).await;
        // An unknown x-delayed-type is an unknown exchange type: 503, which
        // closes the connection (rabbit_exchange:check_type).
        let ch = channel(&conn).await;
        let text = expect_code(
            declare_delayed(
                &ch,
                &unique("bad-delayed"),
                table(&[("x-delayed-type", ls("bogus"))]),
            )
            .await,
            503,
        );
        assert_eq!(text, "COMMAND_INVALID - unknown exchange type 'bogus'");
        wait_connection_closed(&conn).await;
    })
});

broker_test!(
    redeclaring_a_delayed_exchange_compares_its_x_delayed_type,
    |b| {
        run(async {
            let conn = connect(&b.url()).await;
            let ch = channel(&conn).await;
            let x = delayed_exchange(&ch, "direct").await;
            // The same declaration again, and a passive one, are fine.
            declare_delayed(&ch, &x, table(&[("x-delayed-type", ls("direct"))]))
                .await
                .unwrap();
            step(
                "passive exchange.declare",
                ch.exchange_declare(
                    &x,
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await
            .unwrap();
            for (kind, args, expected) in [
            (
                delayed_kind(),
                table(&[("x-delayed-type", ls("topic"))]),
                format!(
                    "PRECONDITION_FAILED - inequivalent arg 'x-delayed-type' for exchange '{}' in vhost '/': received 'topic' but current is 'direct'",
                    x
                ),
            ),
            (
                delayed_kind(),
                FieldTable::default(),
                format!(
                    "PRECONDITION_FAILED - inequivalent arg 'x-delayed-type' for exchange '{}' in vhost '/': received none but current is the value 'direct' of type 'longstr'",
                    x
                ),
            ),
            (
                ExchangeKind::Direct,
                FieldTable::default(),
                format!(
                    "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{}' in vhost '/': received 'direct' but current is 'x-delayed-message'",
                    x
                ),
            ),
        ] {
            let ch = channel(&conn).await;
            let r = step(
                "exchange.declare",
                ch.exchange_declare(&x, kind, ExchangeDeclareOptions::default(), args),
            )
            .await;
            assert_eq!(expect_code(r, 406), expected);
            wait_channel_closed(&ch).await;
        }
            let ch = channel(&conn).await;
            ch.exchange_delete(&x, ExchangeDeleteOptions::default())
                .await
                .unwrap();
        })
    }
);

broker_test!(deleting_the_exchange_drops_the_messages_it_holds, |b| {
    run(async {
        let (conn, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let x = delayed_exchange(&setup, "direct").await;
        let q = new_queue(&setup).await;
        bind(&setup, &q, &x, "k").await;
        let at = publish_delayed(&publisher, &x, "k", b"doomed", with_delay(400)).await;
        setup
            .exchange_delete(&x, ExchangeDeleteOptions::default())
            .await
            .unwrap();
        // Even an exchange declared again under the name does not get them.
        declare_delayed(&setup, &x, table(&[("x-delayed-type", ls("direct"))]))
            .await
            .unwrap();
        bind(&setup, &q, &x, "k").await;
        let after = at + Duration::from_millis(400) + Duration::from_millis(300);
        sleep(after.saturating_duration_since(Instant::now())).await;
        assert_eq!(message_count(&conn, &q).await, 0);
        // The new exchange delays and delivers its own messages.
        let at = publish_delayed(&publisher, &x, "k", b"new", with_delay(100)).await;
        let (m, arrived) = get_arrival(&setup, &q, STEP_DEADLINE).await;
        assert_eq!(m.delivery.data, b"new");
        assert_on_time("new", at, arrived, 100);
        delete_queues(&setup, &[q]).await;
        let _ = setup
            .exchange_delete(&x, ExchangeDeleteOptions::default())
            .await;
    })
});

broker_test!(a_held_message_is_confirmed_before_it_is_delivered, |b| {
    run(async {
        let (conn, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let x = delayed_exchange(&setup, "direct").await;
        let q = new_queue(&setup).await;
        bind(&setup, &q, &x, "k").await;
        // The plugin confirms once it has stored the message, whatever
        // happens to it later: acked at once, delivered after the delay.
        let at = publish_delayed(&publisher, &x, "k", b"confirmed", with_delay(2000)).await;
        assert!(
            at.elapsed() < Duration::from_millis(2000),
            "ack waited for the delay"
        );
        assert_eq!(message_count(&conn, &q).await, 0);
        // Confirms stay in publish order across held and routed messages.
        let confirms = vec![
            publisher
                .basic_publish(
                    &x,
                    "k",
                    BasicPublishOptions::default(),
                    b"held",
                    with_delay(100),
                )
                .await
                .unwrap(),
            publisher
                .basic_publish(
                    &x,
                    "k",
                    BasicPublishOptions::default(),
                    b"now",
                    BasicProperties::default(),
                )
                .await
                .unwrap(),
            publisher
                .basic_publish(
                    &x,
                    "nobody",
                    BasicPublishOptions::default(),
                    b"unroutable later",
                    with_delay(100),
                )
                .await
                .unwrap(),
        ];
        for c in confirms {
            let c = step("publisher confirm", c).await.unwrap();
            assert!(c.is_ack(), "{:?}", c);
        }
        let (m, arrived) = get_arrival(&setup, &q, STEP_DEADLINE).await;
        assert_eq!(m.delivery.data, b"now");
        let (m, _) = get_arrival(&setup, &q, STEP_DEADLINE).await;
        assert_eq!(m.delivery.data, b"held");
        let (m, arrived_late) = get_arrival(&setup, &q, STEP_DEADLINE).await;
        assert_eq!(m.delivery.data, b"confirmed");
        assert_on_time("confirmed", at, arrived_late, 2000);
        assert!(arrived < arrived_late);
        delete_queues(&setup, &[q]).await;
    })
});

broker_test!(
    a_mandatory_held_message_is_returned_and_still_delivered,
    |b| {
        run(async {
            let (_c1, setup) = open(&b.url()).await;
            let (_c2, publisher) = open_confirming(&b.url()).await;
            let x = delayed_exchange(&setup, "direct").await;
            let q = new_queue(&setup).await;
            bind(&setup, &q, &x, "k").await;
            let at = Instant::now();
            let c = publish_confirmed(
                &publisher,
                &x,
                "k",
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"returned yet delivered",
                with_delay(200),
            )
            .await
            .unwrap();
            // The plugin's known behaviour (its issues #7 and #136): routing
            // finds no queue at publish time, so basic.return 312 NO_ROUTE
            // comes first, then the ack, and the message is delivered later.
            assert!(c.is_ack(), "{:?}", c);
            let returned = c.take_message().expect("basic.return before the ack");
            assert_eq!(returned.reply_code, 312);
            assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
            assert_eq!(returned.delivery.data, b"returned yet delivered");
            let (m, arrived) = get_arrival(&setup, &q, STEP_DEADLINE).await;
            assert_eq!(m.delivery.data, b"returned yet delivered");
            assert_on_time("mandatory", at, arrived, 200);
            // Without a delay a mandatory routable publish is not returned.
            let c = publish_confirmed(
                &publisher,
                &x,
                "k",
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"now",
                BasicProperties::default(),
            )
            .await
            .unwrap();
            assert!(c.take_message().is_none());
            delete_queues(&setup, &[q]).await;
        })
    }
);

broker_test!(exchange_to_exchange_bindings_route_after_the_delay, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        // A delayed source: D --k--> F (fanout) --> q1.
        let d = delayed_exchange(&setup, "direct").await;
        let f = unique("e2e-fanout");
        declare_exchange(&setup, &f, ExchangeKind::Fanout).await;
        setup
            .exchange_bind(
                &f,
                &d,
                "k",
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let q1 = new_queue(&setup).await;
        bind(&setup, &q1, &f, "").await;
        let at = publish_delayed(&publisher, &d, "k", b"via source", with_delay(200)).await;
        let (m, arrived) = get_arrival(&setup, &q1, STEP_DEADLINE).await;
        assert_eq!(m.delivery.data, b"via source");
        assert_eq!(m.delivery.exchange.as_str(), d);
        assert_on_time("via source", at, arrived, 200);
        // A delayed destination: S (direct) --k--> D2 (delayed fanout) --> q2;
        // S --k--> q3 directly. The plugin delays at D2 only.
        let s = unique("e2e-source");
        declare_exchange(&setup, &s, ExchangeKind::Direct).await;
        let d2 = delayed_exchange(&setup, "fanout").await;
        setup
            .exchange_bind(
                &d2,
                &s,
                "k",
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (q2, q3) = (new_queue(&setup).await, new_queue(&setup).await);
        bind(&setup, &q2, &d2, "").await;
        bind(&setup, &q3, &s, "k").await;
        let at = publish_delayed(&publisher, &s, "k", b"via destination", with_delay(200)).await;
        let m = get(&setup, &q3, true)
            .await
            .expect("the direct path routes at once");
        assert_eq!(m.delivery.data, b"via destination");
        let (m, arrived) = get_arrival(&setup, &q2, STEP_DEADLINE).await;
        assert_eq!(m.delivery.data, b"via destination");
        assert_eq!(m.delivery.exchange.as_str(), s, "the exchange published to");
        assert_on_time("via destination", at, arrived, 200);
        delete_queues(&setup, &[q1, q2, q3]).await;
        for x in [&d, &f, &s, &d2] {
            let _ = setup
                .exchange_delete(x, ExchangeDeleteOptions::default())
                .await;
        }
    })
});

broker_test!(cc_and_bcc_keys_are_routed_after_the_delay, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let x = delayed_exchange(&setup, "direct").await;
        let mut qs = Vec::new();
        for key in ["to", "cc", "bcc"] {
            let q = new_queue(&setup).await;
            bind(&setup, &q, &x, key).await;
            qs.push(q);
        }
        let headers = table(&[
            ("x-delay", AMQPValue::LongInt(150)),
            ("CC", AMQPValue::FieldArray(vec![ls("cc")].into())),
            ("BCC", AMQPValue::FieldArray(vec![ls("bcc")].into())),
        ]);
        let at = publish_delayed(
            &publisher,
            &x,
            "to",
            b"copies",
            BasicProperties::default().with_headers(headers),
        )
        .await;
        for q in &qs {
            let (m, arrived) = get_arrival(&setup, q, STEP_DEADLINE).await;
            assert_eq!(m.delivery.data, b"copies");
            assert_on_time(q, at, arrived, 150);
            let headers = m.delivery.properties.headers().clone().unwrap();
            assert!(!headers.inner().contains_key("BCC"));
            assert!(headers.inner().contains_key("CC"));
        }
        delete_queues(&setup, &qs).await;
    })
});

broker_test!(a_transaction_holds_delayed_publishes_until_commit, |b| {
    run(async {
        let (conn, setup) = open(&b.url()).await;
        let x = delayed_exchange(&setup, "direct").await;
        let q = new_queue(&setup).await;
        bind(&setup, &q, &x, "k").await;
        let tx = channel(&conn).await;
        tx.tx_select().await.unwrap();
        tx.basic_publish(
            &x,
            "k",
            BasicPublishOptions::default(),
            b"rolled back",
            with_delay(100),
        )
        .await
        .unwrap();
        tx.tx_rollback().await.unwrap();
        tx.basic_publish(
            &x,
            "k",
            BasicPublishOptions::default(),
            b"committed",
            with_delay(100),
        )
        .await
        .unwrap();
        let at = Instant::now();
        tx.tx_commit().await.unwrap();
        let (m, arrived) = get_arrival(&setup, &q, STEP_DEADLINE).await;
        assert_eq!(m.delivery.data, b"committed");
        assert_on_time("committed", at, arrived, 100);
        sleep(QUIET_PERIOD).await;
        assert!(
            get(&setup, &q, true).await.is_none(),
            "a rolled back publish arrived"
        );
        delete_queues(&setup, &[q]).await;
    })
});

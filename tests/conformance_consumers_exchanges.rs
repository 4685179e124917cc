//! Alternate exchanges, consumer priorities and exclusive consumers answered as RabbitMQ
//! 3.10 answers them, through lapin: unroutable messages forwarded along a chain of
//! `alternate-exchange`s (a missing or looping one ends in a mandatory return), the
//! argument's type and its equivalence on a redeclare; `x-priority` on basic.consume
//! (higher priorities first while they have room, equal ones round-robin, 406 for a
//! value that is no integer); basic.consume exclusive=true refused with 403 while the
//! queue has consumers, and every other consumer refused while it holds the queue. Each
//! was first observed on a real RabbitMQ 3.10 with `WARREN_TEST_AMQP_URL`. At 2 shards the
//! tests declare several queues, which are spread over the shards, so exchanges routing
//! to them and consumers reading them work across shards.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

fn longstr(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn with_ae(ae: &str) -> FieldTable {
    table(&[("alternate-exchange", longstr(ae))])
}

async fn declare_exchange_with(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    arguments: FieldTable,
) -> lapin::Result<()> {
    declare_exchange_opts(ch, name, kind, ExchangeDeclareOptions::default(), arguments).await
}

async fn declare_exchange_opts(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
    arguments: FieldTable,
) -> lapin::Result<()> {
    step(
        "exchange.declare",
        ch.exchange_declare(name, kind, options, arguments),
    )
    .await
}

/// Publishes mandatory on a confirm channel: None when some queue took the message,
/// Some(reply code, text) when it came back with basic.return.
async fn publish_mandatory(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
) -> Option<(u16, String)> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let c = publish_confirmed(
        ch,
        exchange,
        key,
        options,
        body.as_bytes(),
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    match c {
        Confirmation::Ack(None) => None,
        Confirmation::Ack(Some(r)) => Some((r.reply_code, r.reply_text.to_string())),
        other => panic!("publish of {body} was not acked: {other:?}"),
    }
}

/// The bodies in `queue` now, taken with basic.get.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        bodies.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    bodies
}

async fn delete_queues(ch: &Channel, queues: &[&str]) {
    for q in queues {
        ch.queue_delete(q, QueueDeleteOptions::default())
            .await
            .unwrap();
    }
}

async fn delete_exchanges(ch: &Channel, exchanges: &[&str]) {
    for x in exchanges {
        ch.exchange_delete(x, ExchangeDeleteOptions::default())
            .await
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// alternate exchanges
// ---------------------------------------------------------------------------------------

// rabbit_exchange:route: an exchange whose own routing finds nothing passes the message
// to its alternate exchange; a message that some binding routes never goes there.
broker_test!(unroutable_messages_go_to_the_alternate_exchange, |b| {
    run(async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let (x, ae) = (unique("ae-source"), unique("ae-fanout"));
        let (q, q_ae) = (unique("ae-routed-q"), unique("ae-unroutable-q"));
        declare_exchange(&ch, &ae, ExchangeKind::Fanout).await;
        declare_exchange_with(&ch, &x, ExchangeKind::Direct, with_ae(&ae))
            .await
            .unwrap();
        declare_queue(&ch, &q).await;
        declare_queue(&ch, &q_ae).await;
        bind(&ch, &q, &x, "k").await;
        bind(&ch, &q_ae, &ae, "").await;
        assert_eq!(publish_mandatory(&ch, &x, "k", "routed").await, None);
        assert_eq!(
            publish_mandatory(&ch, &x, "other", "unroutable").await,
            None
        );
        let reader = channel(&conn).await;
        assert_eq!(drain(&reader, &q).await, ["routed"]);
        assert_eq!(drain(&reader, &q_ae).await, ["unroutable"]);
        // The alternate exchange of an exchange reached by an exchange-to-exchange
        // binding is that exchange's own: the first exchange did route (to it).
        let (inner, inner_ae) = (unique("ae-inner"), unique("ae-inner-ae"));
        let q_inner_ae = unique("ae-inner-q");
        declare_exchange(&ch, &inner_ae, ExchangeKind::Fanout).await;
        declare_exchange_with(&ch, &inner, ExchangeKind::Direct, with_ae(&inner_ae))
            .await
            .unwrap();
        declare_queue(&ch, &q_inner_ae).await;
        bind(&ch, &q_inner_ae, &inner_ae, "").await;
        step(
            "exchange.bind",
            ch.exchange_bind(
                &inner,
                &x,
                "to-inner",
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(publish_mandatory(&ch, &x, "to-inner", "inner").await, None);
        assert_eq!(drain(&reader, &q_inner_ae).await, ["inner"]);
        assert!(drain(&reader, &q_ae).await.is_empty());
        delete_queues(&ch, &[&q, &q_ae, &q_inner_ae]).await;
        delete_exchanges(&ch, &[&x, &ae, &inner, &inner_ae]).await;
    })
});

broker_test!(
    a_chain_of_alternate_exchanges_ends_at_the_first_that_routes,
    |b| {
        run(async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let (x1, x2, x3) = (
                unique("ae-chain-1"),
                unique("ae-chain-2"),
                unique("ae-chain-3"),
            );
            let (q2, q3) = (unique("ae-chain-q2"), unique("ae-chain-q3"));
            declare_exchange(&ch, &x3, ExchangeKind::Fanout).await;
            declare_exchange_with(&ch, &x2, ExchangeKind::Topic, with_ae(&x3))
                .await
                .unwrap();
            declare_exchange_with(&ch, &x1, ExchangeKind::Direct, with_ae(&x2))
                .await
                .unwrap();
            declare_queue(&ch, &q2).await;
            declare_queue(&ch, &q3).await;
            bind(&ch, &q2, &x2, "a.*").await;
            bind(&ch, &q3, &x3, "").await;
            assert_eq!(publish_mandatory(&ch, &x1, "a.b", "second").await, None);
            assert_eq!(publish_mandatory(&ch, &x1, "z", "third").await, None);
            let reader = channel(&conn).await;
            assert_eq!(drain(&reader, &q2).await, ["second"]);
            assert_eq!(drain(&reader, &q3).await, ["third"]);
            delete_queues(&ch, &[&q2, &q3]).await;
            delete_exchanges(&ch, &[&x1, &x2, &x3]).await;
        })
    }
);

// A missing alternate exchange, or a loop of them, routes nothing: a mandatory message
// comes back 312 NO_ROUTE, and a loop still reaches a queue bound along it.
broker_test!(
    a_missing_or_looping_alternate_exchange_returns_a_mandatory_message,
    |b| {
        run(async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let (missing, lone) = (unique("ae-missing"), unique("ae-lone"));
            declare_exchange_with(&ch, &lone, ExchangeKind::Direct, with_ae(&missing))
                .await
                .unwrap();
            let no_route = Some((312, "NO_ROUTE".to_string()));
            assert_eq!(publish_mandatory(&ch, &lone, "k", "lost").await, no_route);
            let (a, z, own) = (unique("ae-loop-a"), unique("ae-loop-z"), unique("ae-self"));
            declare_exchange_with(&ch, &a, ExchangeKind::Direct, with_ae(&z))
                .await
                .unwrap();
            declare_exchange_with(&ch, &z, ExchangeKind::Topic, with_ae(&a))
                .await
                .unwrap();
            declare_exchange_with(&ch, &own, ExchangeKind::Fanout, with_ae(&own))
                .await
                .unwrap();
            assert_eq!(publish_mandatory(&ch, &a, "k", "loop").await, no_route);
            assert_eq!(publish_mandatory(&ch, &z, "k", "loop").await, no_route);
            assert_eq!(publish_mandatory(&ch, &own, "k", "self").await, no_route);
            // Created later, the missing alternate exchange is used from then on.
            let q = unique("ae-late-q");
            declare_exchange(&ch, &missing, ExchangeKind::Fanout).await;
            declare_queue(&ch, &q).await;
            bind(&ch, &q, &missing, "").await;
            assert_eq!(publish_mandatory(&ch, &lone, "k", "found").await, None);
            // A queue bound along the loop is reached from either end.
            let q_loop = unique("ae-loop-q");
            declare_queue(&ch, &q_loop).await;
            bind(&ch, &q_loop, &z, "k.#").await;
            assert_eq!(publish_mandatory(&ch, &a, "k.1", "from a").await, None);
            assert_eq!(publish_mandatory(&ch, &z, "k.2", "from z").await, None);
            let reader = channel(&conn).await;
            assert_eq!(drain(&reader, &q).await, ["found"]);
            assert_eq!(drain(&reader, &q_loop).await, ["from a", "from z"]);
            delete_queues(&ch, &[&q, &q_loop]).await;
            delete_exchanges(&ch, &[&lone, &missing, &a, &z, &own]).await;
        })
    }
);

// rabbit_exchange:assert_args_equivalence compares alternate-exchange on a redeclare
// (rabbit_misc:assert_args_equivalence's texts); a new exchange's alternate-exchange
// must be a longstr (rabbit_channel, before declaring).
broker_test!(
    alternate_exchange_is_checked_on_declare_and_redeclare,
    |b| {
        run(async {
            let (conn, ch) = open(&b.url()).await;
            let x = unique("ae-redeclare");
            declare_exchange_with(&ch, &x, ExchangeKind::Direct, with_ae("ae-1"))
                .await
                .unwrap();
            // The same alternate exchange again is fine.
            declare_exchange_with(&ch, &x, ExchangeKind::Direct, with_ae("ae-1"))
                .await
                .unwrap();
            let cases = [
                (
                    with_ae("ae-2"),
                    format!(
                        "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange \
                     '{x}' in vhost '/': received 'ae-2' but current is 'ae-1'"
                    ),
                ),
                (
                    FieldTable::default(),
                    format!(
                        "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange \
                     '{x}' in vhost '/': received none but current is the value 'ae-1' of \
                     type 'longstr'"
                    ),
                ),
            ];
            for (arguments, expected) in cases {
                let ch = channel(&conn).await;
                let r = declare_exchange_with(&ch, &x, ExchangeKind::Direct, arguments).await;
                assert_eq!(expect_code(r, 406), expected);
            }
            let plain = unique("ae-redeclare-plain");
            declare_exchange(&ch, &plain, ExchangeKind::Fanout).await;
            let ch2 = channel(&conn).await;
            let r =
                declare_exchange_with(&ch2, &plain, ExchangeKind::Fanout, with_ae("ae-1")).await;
            assert_eq!(
                expect_code(r, 406),
                format!(
                    "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange \
                 '{plain}' in vhost '/': received the value 'ae-1' of type 'longstr' but \
                 current is none"
                )
            );
            // On a new exchange, only a longstr names an alternate exchange.
            let typed = unique("ae-typed");
            for (value, type_name) in [
                (AMQPValue::LongInt(1), "signedint"),
                (AMQPValue::Boolean(true), "bool"),
            ] {
                let ch = channel(&conn).await;
                let arguments = table(&[("alternate-exchange", value)]);
                let r = declare_exchange_with(&ch, &typed, ExchangeKind::Direct, arguments).await;
                assert_eq!(
                    expect_code(r, 406),
                    format!(
                        "PRECONDITION_FAILED - invalid type '{type_name}' for arg \
                     'alternate-exchange' in exchange '{typed}' in vhost '/'"
                    )
                );
            }
            assert!(!exchange_exists(&conn, &typed).await);
            let ch = channel(&conn).await;
            delete_exchanges(&ch, &[&x, &plain]).await;
        })
    }
);

// A durable exchange's alternate-exchange is part of its definition: imported from a
// RabbitMQ definitions file, and kept across a restart.
fn alternate_exchange_from_definitions_survives_a_restart(shards: usize) {
    let dir = fresh_temp_dir("ae-definitions");
    let file = dir.join("import.json");
    std::fs::write(
        &file,
        r#"{"rabbit_version":"3.10.8",
            "exchanges":[
              {"name":"orders","vhost":"/","type":"direct","durable":true,"auto_delete":false,
               "internal":false,"arguments":{"alternate-exchange":"orders.unroutable"}},
              {"name":"orders.unroutable","vhost":"/","type":"fanout","durable":true,
               "auto_delete":false,"internal":false,"arguments":{}}],
            "queues":[
              {"name":"orders.eu","vhost":"/","durable":true,"auto_delete":false,"arguments":{}},
              {"name":"orders.lost","vhost":"/","durable":true,"auto_delete":false,"arguments":{}}],
            "bindings":[
              {"source":"orders","vhost":"/","destination":"orders.eu","destination_type":"queue",
               "routing_key":"eu","arguments":{}},
              {"source":"orders.unroutable","vhost":"/","destination":"orders.lost",
               "destination_type":"queue","routing_key":"","arguments":{}}]}"#,
    )
    .unwrap();
    let mut broker = Broker::start_with(shards, &["--definitions", file.to_str().unwrap()]);
    if broker.is_external() {
        eprintln!("skipped: an external broker imports no definitions file of this test's");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let check = |broker: &Broker, round: &str| {
        run(async {
            let (conn, ch) = open_confirming(&broker.url()).await;
            let eu = format!("eu {round}");
            let lost = format!("lost {round}");
            assert_eq!(publish_mandatory(&ch, "orders", "eu", &eu).await, None);
            assert_eq!(publish_mandatory(&ch, "orders", "us", &lost).await, None);
            let reader = channel(&conn).await;
            assert_eq!(drain(&reader, "orders.eu").await, [eu]);
            assert_eq!(drain(&reader, "orders.lost").await, [lost]);
            // Redeclared as defined, it is equivalent; without its alternate, it is not.
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            declare_exchange_opts(
                &ch,
                "orders",
                ExchangeKind::Direct,
                durable,
                with_ae("orders.unroutable"),
            )
            .await
            .unwrap();
            let other = channel(&conn).await;
            let r = declare_exchange_opts(
                &other,
                "orders",
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await;
            expect_code(r, 406);
        })
    };
    check(&broker, "imported");
    broker.restart_with(&[]);
    check(&broker, "restarted");
    let exported = std::fs::read_to_string(broker.data_dir().unwrap().join("definitions.json"))
        .unwrap_or_default();
    assert!(
        exported.contains("\"alternate-exchange\""),
        "the definitions file keeps the argument: {exported}"
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn alternate_exchange_from_definitions_survives_a_restart_shards_1() {
    alternate_exchange_from_definitions_survives_a_restart(1);
}

#[test]
fn alternate_exchange_from_definitions_survives_a_restart_shards_2() {
    alternate_exchange_from_definitions_survives_a_restart(2);
}

// ---------------------------------------------------------------------------------------
// consumer priorities
// ---------------------------------------------------------------------------------------

async fn consume_with(ch: &Channel, queue: &str, arguments: FieldTable) -> lapin::Result<Consumer> {
    step(
        "basic.consume",
        ch.basic_consume(queue, "", BasicConsumeOptions::default(), arguments),
    )
    .await
}

fn priority(p: i32) -> FieldTable {
    table(&[("x-priority", AMQPValue::LongInt(p))])
}

async fn qos(ch: &Channel, prefetch_count: u16) {
    step(
        "basic.qos",
        ch.basic_qos(prefetch_count, BasicQosOptions::default()),
    )
    .await
    .unwrap();
}

// rabbit_queue_consumers: a consumer of a higher priority takes every message while it
// has room under its prefetch; a lower one gets messages only while it is blocked.
broker_test!(
    higher_priority_consumers_take_messages_while_they_have_room,
    |b| {
        run(async {
            let (conn, ch) = open_confirming(&b.url()).await;
            for round in 0..2 {
                let q = unique("prio-consumers-q");
                declare_queue(&ch, &q).await;
                let (high_ch, low_ch) = (channel(&conn).await, channel(&conn).await);
                qos(&high_ch, 2).await;
                qos(&low_ch, 10).await;
                // The low-priority consumer comes first, so arrival order does not explain
                // who is served.
                let mut low = consume_with(&low_ch, &q, priority(-1)).await.unwrap();
                let arguments = if round == 0 {
                    priority(10)
                } else {
                    table(&[("x-priority", AMQPValue::ShortInt(3))])
                };
                let mut high = consume_with(&high_ch, &q, arguments).await.unwrap();
                for i in 1..=5 {
                    publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
                }
                let first = next_delivery(&mut high).await;
                assert_eq!(body_str(&first), "m1");
                assert_eq!(next_bodies(&mut high, 1).await, ["m2"]);
                assert_eq!(next_bodies(&mut low, 3).await, ["m3", "m4", "m5"]);
                assert_no_delivery(&mut high).await;
                // With room again, the high-priority consumer takes the next message.
                step(
                    "basic.ack",
                    high_ch.basic_ack(first.delivery_tag, BasicAckOptions::default()),
                )
                .await
                .unwrap();
                publish(&ch, "", &q, b"m6").await;
                assert_eq!(next_bodies(&mut high, 1).await, ["m6"]);
                assert_no_delivery(&mut low).await;
                ch.queue_delete(&q, QueueDeleteOptions::default())
                    .await
                    .unwrap();
            }
        })
    }
);

broker_test!(equal_priority_consumers_share_round_robin, |b| {
    run(async {
        let (conn, ch) = open_confirming(&b.url()).await;
        // Two queues: at 2 shards they are on different shards.
        for _ in 0..2 {
            let q = unique("prio-round-robin-q");
            declare_queue(&ch, &q).await;
            let cch = channel(&conn).await;
            let mut low = consume_with(&cch, &q, FieldTable::default()).await.unwrap();
            let mut a = consume_with(&cch, &q, priority(5)).await.unwrap();
            let mut b = consume_with(&cch, &q, priority(5)).await.unwrap();
            for i in 1..=4 {
                publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
            }
            assert_eq!(next_bodies(&mut a, 2).await, ["m1", "m3"]);
            assert_eq!(next_bodies(&mut b, 2).await, ["m2", "m4"]);
            assert_no_delivery(&mut low).await;
            // The equal ones gone, the lower one is served.
            for consumer in [&a, &b] {
                step(
                    "basic.cancel",
                    cch.basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default()),
                )
                .await
                .unwrap();
            }
            publish(&ch, "", &q, b"m5").await;
            assert_eq!(next_bodies(&mut low, 1).await, ["m5"]);
            ch.queue_delete(&q, QueueDeleteOptions::default())
                .await
                .unwrap();
        }
    })
});

// rabbit_amqqueue:check_consume_arguments: x-priority must be an integer type, and the
// 406 prints check_int_arg's reason as a quoted string.
broker_test!(x_priority_of_a_wrong_type_is_refused_406, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let q = unique("prio-type-q");
        declare_queue(&ch, &q).await;
        for (value, type_name) in [
            (longstr("high"), "longstr"),
            (AMQPValue::Double(1.0), "double"),
            (AMQPValue::Boolean(true), "bool"),
        ] {
            let ch = channel(&conn).await;
            let r = consume_with(&ch, &q, table(&[("x-priority", value)])).await;
            assert_eq!(
                expect_code(r.map(|_| ()), 406),
                format!(
                    "PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{q}' in vhost \
                     '/': \"expected integer, got {type_name}\""
                )
            );
        }
        // Every integer type is accepted, negative ones too.
        for value in [
            AMQPValue::ShortShortInt(-3),
            AMQPValue::ShortUInt(7),
            AMQPValue::LongLongInt(-100),
            AMQPValue::LongUInt(1),
        ] {
            let ch = channel(&conn).await;
            consume_with(&ch, &q, table(&[("x-priority", value)]))
                .await
                .unwrap();
        }
        assert_connection_usable(&conn).await;
        let ch = channel(&conn).await;
        ch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

// ---------------------------------------------------------------------------------------
// exclusive consumers
// ---------------------------------------------------------------------------------------

fn exclusive() -> BasicConsumeOptions {
    BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    }
}

async fn try_consume(
    ch: &Channel,
    queue: &str,
    options: BasicConsumeOptions,
) -> lapin::Result<Consumer> {
    step(
        "basic.consume",
        ch.basic_consume(queue, "", options, FieldTable::default()),
    )
    .await
}

fn in_exclusive_use(queue: &str) -> String {
    format!("ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use")
}

// rabbit_amqqueue_process:check_exclusive_access: an exclusive consumer is refused while
// the queue has any consumer, on the same connection or another.
broker_test!(
    an_exclusive_consumer_is_refused_while_the_queue_has_consumers,
    |b| {
        run(async {
            let (conn, ch) = open(&b.url()).await;
            let (other, _och) = open(&b.url()).await;
            for _ in 0..2 {
                let q = unique("excl-refused-q");
                declare_queue(&ch, &q).await;
                let cch = channel(&conn).await;
                let _plain = try_consume(&cch, &q, BasicConsumeOptions::default())
                    .await
                    .unwrap();
                for from in [&conn, &other] {
                    let ch = channel(from).await;
                    let r = try_consume(&ch, &q, exclusive()).await;
                    assert_eq!(expect_code(r.map(|_| ()), 403), in_exclusive_use(&q));
                    assert_connection_usable(from).await;
                }
                // The refused consumer left nothing behind: a plain one is still welcome.
                let ch2 = channel(&other).await;
                try_consume(&ch2, &q, BasicConsumeOptions::default())
                    .await
                    .unwrap();
                ch.queue_delete(&q, QueueDeleteOptions::default())
                    .await
                    .unwrap();
            }
        })
    }
);

// While an exclusive consumer holds the queue every other consumer is refused, exclusive
// or not, on the consumer's own channel, its connection or another; once it is cancelled
// (or its channel closes) the queue is free again, and it alone got the messages.
broker_test!(an_exclusive_consumer_holds_the_queue_until_it_goes, |b| {
    run(async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let (other, _och) = open(&b.url()).await;
        for _ in 0..2 {
            let q = unique("excl-holds-q");
            declare_queue(&ch, &q).await;
            let holder_ch = channel(&conn).await;
            let mut holder = try_consume(&holder_ch, &q, exclusive()).await.unwrap();
            for from in [&conn, &other] {
                for options in [BasicConsumeOptions::default(), exclusive()] {
                    let ch = channel(from).await;
                    let r = try_consume(&ch, &q, options).await;
                    assert_eq!(expect_code(r.map(|_| ()), 403), in_exclusive_use(&q));
                }
            }
            publish(&ch, "", &q, b"held").await;
            assert_eq!(next_bodies(&mut holder, 1).await, ["held"]);
            step(
                "basic.cancel",
                holder_ch.basic_cancel(holder.tag().as_str(), BasicCancelOptions::default()),
            )
            .await
            .unwrap();
            // Free again: another connection takes it exclusively, and when its channel
            // closes the queue is free for anyone.
            let och = channel(&other).await;
            let _second = try_consume(&och, &q, exclusive()).await.unwrap();
            let ch3 = channel(&conn).await;
            let r = try_consume(&ch3, &q, BasicConsumeOptions::default()).await;
            assert_eq!(expect_code(r.map(|_| ()), 403), in_exclusive_use(&q));
            step("channel.close", och.close(200, "bye")).await.unwrap();
            let ch4 = channel(&conn).await;
            try_consume(&ch4, &q, BasicConsumeOptions::default())
                .await
                .unwrap();
            ch.queue_delete(&q, QueueDeleteOptions::default())
                .await
                .unwrap();
        }
    })
});

// The holder's own channel too: a second consumer there is refused, and the channel
// exception closes that channel (and its exclusive consumer with it).
broker_test!(
    an_exclusive_consumer_refuses_a_second_consumer_on_its_own_channel,
    |b| {
        run(async {
            let (conn, ch) = open(&b.url()).await;
            let q = unique("excl-same-channel-q");
            declare_queue(&ch, &q).await;
            let holder_ch = channel(&conn).await;
            let _holder = try_consume(&holder_ch, &q, exclusive()).await.unwrap();
            let r = try_consume(&holder_ch, &q, BasicConsumeOptions::default()).await;
            assert_eq!(expect_code(r.map(|_| ()), 403), in_exclusive_use(&q));
            wait_channel_closed(&holder_ch).await;
            let ch2 = channel(&conn).await;
            try_consume(&ch2, &q, exclusive()).await.unwrap();
            ch.queue_delete(&q, QueueDeleteOptions::default())
                .await
                .unwrap();
        })
    }
);

// A single active consumer queue keeps its first consumer active whatever the priorities
// of those that come later; when it goes, the highest-priority one takes over.
broker_test!(
    single_active_consumer_hands_over_to_the_highest_priority,
    |b| {
        run(async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let q = unique("sac-priority-q");
            let sac = table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]);
            step(
                "queue.declare",
                ch.queue_declare(&q, QueueDeclareOptions::default(), sac),
            )
            .await
            .unwrap();
            let cch = channel(&conn).await;
            let mut first = consume_with(&cch, &q, FieldTable::default()).await.unwrap();
            let mut second = consume_with(&cch, &q, FieldTable::default()).await.unwrap();
            let mut high = consume_with(&cch, &q, priority(10)).await.unwrap();
            publish(&ch, "", &q, b"m1").await;
            assert_eq!(next_bodies(&mut first, 1).await, ["m1"]);
            step(
                "basic.cancel",
                cch.basic_cancel(first.tag().as_str(), BasicCancelOptions::default()),
            )
            .await
            .unwrap();
            publish(&ch, "", &q, b"m2").await;
            assert_eq!(next_bodies(&mut high, 1).await, ["m2"]);
            assert_no_delivery(&mut second).await;
            ch.queue_delete(&q, QueueDeleteOptions::default())
                .await
                .unwrap();
        })
    }
);

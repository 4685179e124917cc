//! Message validation and routing answered as RabbitMQ 3.10 answers them (issue 15),
//! through lapin: a delivery-mode other than 1 or 2, headers-exchange matching of numbers
//! across AMQP integer and float types, unbinding what is missing, exchange.delete
//! if-unused with exchange-to-exchange bindings, a transaction committed over a
//! reject-publish limit, and basic.qos global together with per-consumer prefetch. Each
//! was first observed on a real RabbitMQ 3.10 with `WARREN_TEST_AMQP_URL`. The answers to
//! single methods (channel.flow, the method a close names, update-secret, tune-ok
//! negotiation) are checked on raw frames in `protocol_errors.rs`.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use futures_lite::{future, StreamExt};

// ---------------------------------------------------------------------------------------
// delivery-mode
// ---------------------------------------------------------------------------------------

// rabbit_basic:message refuses any delivery-mode but 1 and 2 (an absent one is fine):
// channel.close 406 "invalid message: {delivery_mode_unknown,N}", routed or not.
broker_test!(a_delivery_mode_other_than_1_or_2_is_refused, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let q = unique("delivery-mode");
        declare_queue(&ch, &q).await;
        for mode in [1u8, 2] {
            let props = BasicProperties::default().with_delivery_mode(mode);
            publish_props(&ch, "", &q, b"fine", props).await;
        }
        publish(&ch, "", &q, b"no delivery-mode").await;
        wait_message_count(&conn, &q, 3).await;
        for (mode, key) in [(0u8, q.as_str()), (3, q.as_str()), (255, "routed-nowhere")] {
            let ch = channel(&conn).await;
            let watch = ErrorWatch::channel(&ch);
            let props = BasicProperties::default().with_delivery_mode(mode);
            let _ = ch
                .basic_publish("", key, BasicPublishOptions::default(), b"bad", props)
                .await;
            let text = watch.expect_code(406).await;
            assert_eq!(
                text,
                format!("PRECONDITION_FAILED - invalid message: {{delivery_mode_unknown,{mode}}}")
            );
        }
        assert_eq!(message_count(&conn, &q).await, 3);
        let ch = channel(&conn).await;
        ch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

// ---------------------------------------------------------------------------------------
// headers exchange
// ---------------------------------------------------------------------------------------

// rabbit_exchange_type_headers compares values with Erlang's `==`: numbers by value
// whatever their AMQP type.
broker_test!(headers_exchange_matches_numbers_across_types, |b| {
    run(async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let x = unique("headers-numbers");
        declare_exchange(&ch, &x, ExchangeKind::Headers).await;
        let q = unique("headers-numbers-q");
        declare_queue(&ch, &q).await;
        let mut args = FieldTable::default();
        args.insert("x-match".into(), AMQPValue::LongString("all".into()));
        args.insert("n".into(), AMQPValue::LongInt(1));
        bind_with(&ch, &q, &x, "", args).await;
        let matching = [
            ("byte", AMQPValue::ShortShortInt(1)),
            ("unsigned byte", AMQPValue::ShortShortUInt(1)),
            ("short", AMQPValue::ShortInt(1)),
            ("unsigned short", AMQPValue::ShortUInt(1)),
            ("int", AMQPValue::LongInt(1)),
            ("unsigned int", AMQPValue::LongUInt(1)),
            ("long", AMQPValue::LongLongInt(1)),
            ("float", AMQPValue::Float(1.0)),
            ("double", AMQPValue::Double(1.0)),
        ];
        let other = [
            ("double 1.5", AMQPValue::Double(1.5)),
            ("long 2", AMQPValue::LongLongInt(2)),
            ("string", AMQPValue::LongString("1".into())),
            ("bool", AMQPValue::Boolean(true)),
        ];
        for (name, value) in matching.iter().chain(other.iter()) {
            let mut headers = FieldTable::default();
            headers.insert("n".into(), value.clone());
            let props = BasicProperties::default().with_headers(headers);
            publish_props(&ch, &x, "", name.as_bytes(), props).await;
        }
        wait_message_count(&conn, &q, matching.len() as u32).await;
        let mut got = Vec::new();
        while let Some(m) = get(&ch, &q, true).await {
            got.push(String::from_utf8(m.delivery.data).unwrap());
        }
        let expected: Vec<String> = matching.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(got, expected);
        ch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
        ch.exchange_delete(&x, ExchangeDeleteOptions::default())
            .await
            .unwrap();
    })
});

// ---------------------------------------------------------------------------------------
// unbind and exchange.delete
// ---------------------------------------------------------------------------------------

// RabbitMQ 3.10 answers unbind-ok when the binding's queue or an exchange is missing.
broker_test!(unbinding_from_a_missing_queue_or_exchange_is_ok, |b| {
    run(async {
        let (_conn, ch) = open(&b.url()).await;
        let q = unique("unbind-q");
        declare_queue(&ch, &q).await;
        let x = unique("unbind-x");
        declare_exchange(&ch, &x, ExchangeKind::Direct).await;
        let (missing_q, missing_x) = (unique("missing-q"), unique("missing-x"));
        let none = FieldTable::default;
        for (queue, exchange) in [
            (q.as_str(), x.as_str()),
            (missing_q.as_str(), x.as_str()),
            (q.as_str(), missing_x.as_str()),
            (missing_q.as_str(), missing_x.as_str()),
        ] {
            step(
                "queue.unbind",
                ch.queue_unbind(queue, exchange, "k", none()),
            )
            .await
            .unwrap_or_else(|e| panic!("queue.unbind {queue} from {exchange}: {e}"));
        }
        for (destination, source) in [
            (x.as_str(), "amq.direct"),
            (missing_x.as_str(), "amq.direct"),
            (x.as_str(), missing_x.as_str()),
        ] {
            step(
                "exchange.unbind",
                ch.exchange_unbind(
                    destination,
                    source,
                    "k",
                    ExchangeUnbindOptions::default(),
                    none(),
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("exchange.unbind {destination} from {source}: {e}"));
        }
        assert_channel_usable(&ch).await;
        ch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
        ch.exchange_delete(&x, ExchangeDeleteOptions::default())
            .await
            .unwrap();
    })
});

// if-unused counts the exchange's own bindings (rabbit_binding:has_for_source), not those
// of other exchanges to it, which go with it.
broker_test!(exchange_delete_if_unused_counts_bindings_from_it, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let (source, destination) = (unique("e2e-source"), unique("e2e-destination"));
        declare_exchange(&ch, &source, ExchangeKind::Direct).await;
        declare_exchange(&ch, &destination, ExchangeKind::Direct).await;
        step(
            "exchange.bind",
            ch.exchange_bind(
                &destination,
                &source,
                "k",
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        let if_unused = ExchangeDeleteOptions {
            if_unused: true,
            ..ExchangeDeleteOptions::default()
        };
        // The source is in use.
        let sch = channel(&conn).await;
        let r = step("exchange.delete", sch.exchange_delete(&source, if_unused)).await;
        let text = expect_code(r, 406);
        assert_eq!(
            text,
            format!("PRECONDITION_FAILED - exchange '{source}' in vhost '/' in use")
        );
        // The destination is not; deleting it removes the binding, and then the source
        // is unused too.
        step(
            "exchange.delete",
            ch.exchange_delete(&destination, if_unused),
        )
        .await
        .expect("the destination of an exchange-to-exchange binding is unused");
        step("exchange.delete", ch.exchange_delete(&source, if_unused))
            .await
            .expect("the source lost its only binding with its destination");
        assert!(!exchange_exists(&conn, &source).await);
    })
});

// ---------------------------------------------------------------------------------------
// transactions
// ---------------------------------------------------------------------------------------

// A commit some of whose publishes a reject-publish queue refused: channel.close 406
// "partial tx completion" on tx.commit; what the queue took stays.
broker_test!(a_commit_over_a_reject_publish_limit_fails, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let q = unique("tx-reject-publish");
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(1));
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        declare_queue_with(&ch, &q, QueueDeclareOptions::default(), args)
            .await
            .unwrap();
        let tx = channel(&conn).await;
        step("tx.select", tx.tx_select()).await.unwrap();
        // Within the limit the commit succeeds.
        publish(&tx, "", &q, b"first").await;
        step("tx.commit", tx.tx_commit()).await.expect("tx.commit");
        wait_message_count(&conn, &q, 1).await;
        publish(&tx, "", &q, b"second").await;
        publish(&tx, "", &q, b"third").await;
        let r = step("tx.commit", tx.tx_commit()).await;
        let text = expect_code(r, 406);
        assert_eq!(text, "PRECONDITION_FAILED - partial tx completion");
        assert_eq!(message_count(&conn, &q).await, 1);
        ch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

// ---------------------------------------------------------------------------------------
// basic.qos
// ---------------------------------------------------------------------------------------

/// Everything both consumers receive until they stay quiet for QUIET_PERIOD.
async fn drain_two(k1: &mut Consumer, k2: &mut Consumer) -> (Vec<Delivery>, Vec<Delivery>) {
    let (mut one, mut two) = (Vec::new(), Vec::new());
    loop {
        let next = within(
            QUIET_PERIOD,
            future::or(async { (1, k1.next().await) }, async {
                (2, k2.next().await)
            }),
        )
        .await;
        match next {
            Some((1, Some(Ok(d)))) => one.push(d),
            Some((_, Some(Ok(d)))) => two.push(d),
            Some((n, other)) => panic!("consumer {n} ended: {:?}", other.map(|r| r.is_ok())),
            None => return (one, two),
        }
    }
}

// RabbitMQ applies both limits at once: a consumer takes at most the per-consumer
// prefetch it was created with, the channel at most the global one, and what the channel
// may not take stays ready in its queue.
broker_test!(global_and_per_consumer_prefetch_both_apply, |b| {
    run(async {
        let (conn, pch) = open_confirming(&b.url()).await;
        let (q1, q2) = (unique("qos-both-1"), unique("qos-both-2"));
        for q in [&q1, &q2] {
            declare_queue(&pch, q).await;
            let bodies: Vec<&[u8]> = vec![b"m"; 5];
            fill_queue(&pch, q, &bodies).await;
        }
        let (_cc, ch) = open(&b.url()).await;
        ch.basic_qos(2, BasicQosOptions { global: false })
            .await
            .unwrap();
        ch.basic_qos(3, BasicQosOptions { global: true })
            .await
            .unwrap();
        let mut k1 = consume(&ch, &q1, "k1", BasicConsumeOptions::default()).await;
        let mut k2 = consume(&ch, &q2, "k2", BasicConsumeOptions::default()).await;
        let (one, two) = drain_two(&mut k1, &mut k2).await;
        assert!(
            one.len() <= 2 && two.len() <= 2,
            "per consumer: {} and {}",
            one.len(),
            two.len()
        );
        assert_eq!(one.len() + two.len(), 3, "per channel");
        let ready = message_count(&conn, &q1).await + message_count(&conn, &q2).await;
        assert_eq!(ready, 7, "what the channel may not take stays ready");
        // One ack frees one place on the channel, for a consumer under its own limit.
        let first = one.first().or(two.first()).unwrap();
        first.ack(BasicAckOptions::default()).await.unwrap();
        let (more1, more2) = drain_two(&mut k1, &mut k2).await;
        assert_eq!(more1.len() + more2.len(), 1, "one ack, one delivery");
        assert!(one.len() - usize::from(!one.is_empty()) + more1.len() <= 2);
        assert!(two.len() + more2.len() <= 2);
        for q in [&q1, &q2] {
            pch.queue_delete(q, QueueDeleteOptions::default())
                .await
                .unwrap();
        }
    })
});

// A global limit set after the consumer started applies to it too, as RabbitMQ's limiter
// does; the messages it may not take stay ready for other consumers.
broker_test!(
    a_global_prefetch_set_after_consume_limits_the_consumer,
    |b| {
        run(async {
            let (conn, pch) = open_confirming(&b.url()).await;
            let q = unique("qos-late");
            declare_queue(&pch, &q).await;
            let (_cc, ch) = open(&b.url()).await;
            let mut k = consume(&ch, &q, "late", BasicConsumeOptions::default()).await;
            ch.basic_qos(2, BasicQosOptions { global: true })
                .await
                .unwrap();
            let bodies: Vec<&[u8]> = vec![b"m"; 6];
            fill_queue(&pch, &q, &bodies).await;
            let mut got = vec![next_delivery(&mut k).await, next_delivery(&mut k).await];
            assert_no_delivery(&mut k).await;
            assert_eq!(message_count(&conn, &q).await, 4);
            // Another channel's consumer takes what this one may not.
            let (_oc, other) = open(&b.url()).await;
            let mut o = consume(&other, &q, "other", BasicConsumeOptions::default()).await;
            for _ in 0..4 {
                next_delivery(&mut o)
                    .await
                    .ack(BasicAckOptions::default())
                    .await
                    .unwrap();
            }
            assert_no_delivery(&mut k).await;
            got.pop()
                .unwrap()
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            assert_no_delivery(&mut k).await;
            pch.queue_delete(&q, QueueDeleteOptions::default())
                .await
                .unwrap();
        })
    }
);

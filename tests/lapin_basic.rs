//! basic.* through lapin: publish (mandatory, immediate, errors), consume and
//! cancel, get, ack/nack/reject, requeue order, recover, prefetch, round-robin,
//! requeue on close, properties and bodies. Publisher, consumer and queue owner
//! are different connections wherever placement could matter.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::time::Duration;

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    }
}

/// A shared queue declared on its own connection (kept open by the caller).
async fn shared_queue(b: &Broker, prefix: &str) -> (Connection, Channel, String) {
    let (conn, ch) = open(&b.url()).await;
    let q = unique(prefix);
    declare_queue(&ch, &q).await;
    (conn, ch, q)
}

fn bodies(n: usize) -> Vec<Vec<u8>> {
    (1..=n).map(|i| i.to_string().into_bytes()).collect()
}

async fn fill_n(ch: &Channel, q: &str, n: usize) {
    let owned = bodies(n);
    let refs: Vec<&[u8]> = owned.iter().map(|v| v.as_slice()).collect();
    fill_queue(ch, q, &refs).await;
}

broker_test!(mandatory_unroutable_publish_is_returned_312_no_route, |b| {
    run(async {
        let (_c, ch) = open(&b.url()).await;
        let key = unique("nobody-bound");
        let props = BasicProperties::default().with_message_id("m-1".into());
        ch.basic_publish(
            "amq.direct",
            &key,
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            props,
        )
        .await
        .unwrap();
        let mut returned = Vec::new();
        for _ in 0..200 {
            returned.extend(ch.wait_for_confirms().await.unwrap());
            if !returned.is_empty() {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(returned.len(), 1, "expected one basic.return");
        let r = &returned[0];
        assert_eq!(r.reply_code, 312);
        assert_eq!(r.reply_text.as_str(), "NO_ROUTE");
        assert_eq!(r.delivery.exchange.as_str(), "amq.direct");
        assert_eq!(r.delivery.routing_key.as_str(), key);
        assert_eq!(r.delivery.data, b"lost");
        assert_eq!(
            r.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some("m-1")
        );
        assert_channel_usable(&ch).await;
    })
});

broker_test!(mandatory_routable_publish_is_not_returned, |b| {
    run(async {
        let (_c1, _qch, q) = shared_queue(b, "mand-q").await;
        let (_c2, ch) = open_confirming(&b.url()).await;
        let c = publish_confirmed(
            &ch,
            "",
            &q,
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"ok",
            BasicProperties::default(),
        )
        .await
        .unwrap();
        assert_eq!(c, Confirmation::Ack(None));
        assert_eq!(
            get_within(&ch, &q, STEP_DEADLINE).await.delivery.data,
            b"ok"
        );
        ch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(publish_with_immediate_flag_closes_connection_540, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let q = declare_server_named(&ch).await;
        let watch = ErrorWatch::connection(&conn);
        ch.basic_publish(
            "",
            &q,
            BasicPublishOptions {
                immediate: true,
                ..Default::default()
            },
            b"now",
            BasicProperties::default(),
        )
        .await
        .unwrap();
        // RabbitMQ 3.x: connection.close 540 "NOT_IMPLEMENTED - immediate=true".
        let text = watch.expect_code(540).await;
        assert!(text.starts_with("NOT_IMPLEMENTED"), "{:?}", text);
        wait_connection_closed(&conn).await;
        assert_connection_usable(&connect(&b.url()).await).await;
    })
});

broker_test!(publish_to_missing_exchange_closes_channel_404, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let other = channel(&conn).await;
        let watch = ErrorWatch::channel(&ch);
        let x = unique("missing-x");
        ch.basic_publish(
            &x,
            "k",
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .unwrap();
        let text = watch.expect_code(404).await;
        assert_eq!(
            text,
            format!("NOT_FOUND - no exchange '{}' in vhost '/'", x)
        );
        wait_channel_closed(&ch).await;
        assert_channel_usable(&other).await;
    })
});

broker_test!(publish_with_foreign_user_id_closes_channel_406, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let q = declare_server_named(&ch).await;
        let watch = ErrorWatch::channel(&ch);
        let props = BasicProperties::default().with_user_id("someone-else".into());
        ch.basic_publish("", &q, BasicPublishOptions::default(), b"x", props)
            .await
            .unwrap();
        let text = watch.expect_code(406).await;
        assert!(
            text.starts_with("PRECONDITION_FAILED - user_id property set to 'someone-else'"),
            "{:?}",
            text
        );
        assert_connection_usable(&conn).await;
    })
});

broker_test!(
    consumer_gets_messages_published_on_a_third_connection,
    |b| {
        run(async {
            let (_owner, _och, q) = shared_queue(b, "three-q").await;
            let (_cc, cch) = open(&b.url()).await;
            let mut consumer = consume(&cch, &q, "", no_ack()).await;
            let (_pc, pch) = open(&b.url()).await;
            for i in 0..10 {
                publish(&pch, "", &q, format!("m{}", i).as_bytes()).await;
            }
            let got = next_bodies(&mut consumer, 10).await;
            let want: Vec<String> = (0..10).map(|i| format!("m{}", i)).collect();
            assert_eq!(got, want, "deliveries must keep publish order");
            cch.queue_delete(&q, QueueDeleteOptions::default())
                .await
                .unwrap();
        })
    }
);

broker_test!(consume_uses_the_client_consumer_tag, |b| {
    run(async {
        let (_c1, ch) = open(&b.url()).await;
        let q = declare_server_named(&ch).await;
        let tag = unique("my-tag");
        let mut consumer = consume(&ch, &q, &tag, BasicConsumeOptions::default()).await;
        assert_eq!(consumer.tag().as_str(), tag);
        publish(&ch, "", &q, b"hello").await;
        let d = next_delivery(&mut consumer).await;
        assert_eq!(d.data, b"hello");
        assert_eq!(d.routing_key.as_str(), q);
        assert_eq!(d.exchange.as_str(), "");
        assert!(!d.redelivered);
        d.ack(BasicAckOptions::default()).await.unwrap();
    })
});

broker_test!(consume_without_tag_gets_amq_ctag_prefix, |b| {
    run(async {
        let (_c1, ch) = open(&b.url()).await;
        let q = declare_server_named(&ch).await;
        let c1 = consume(&ch, &q, "", BasicConsumeOptions::default()).await;
        let c2 = consume(&ch, &q, "", BasicConsumeOptions::default()).await;
        assert!(c1.tag().as_str().starts_with("amq.ctag-"), "{:?}", c1.tag());
        assert!(c2.tag().as_str().starts_with("amq.ctag-"), "{:?}", c2.tag());
        assert_ne!(c1.tag(), c2.tag());
    })
});

broker_test!(
    duplicate_consumer_tag_on_one_channel_closes_connection_530,
    |b| {
        run(async {
            let (conn, ch) = open(&b.url()).await;
            let q = declare_server_named(&ch).await;
            let tag = unique("dup");
            let _first = consume(&ch, &q, &tag, BasicConsumeOptions::default()).await;
            let r = step(
                "basic.consume",
                ch.basic_consume(
                    &q,
                    &tag,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await;
            // RabbitMQ: connection.close 530 "NOT_ALLOWED - attempt to reuse consumer tag '<tag>'".
            let text = expect_code(r.map(|_| ()), 530);
            assert_eq!(
                text,
                format!("NOT_ALLOWED - attempt to reuse consumer tag '{}'", tag)
            );
            wait_connection_closed(&conn).await;
        })
    }
);

broker_test!(same_consumer_tag_on_two_channels_is_allowed, |b| {
    run(async {
        let (conn, ch1) = open(&b.url()).await;
        let ch2 = channel(&conn).await;
        let q = declare_server_named(&ch1).await;
        let _a = consume(&ch1, &q, "shared-tag", BasicConsumeOptions::default()).await;
        let _b = consume(&ch2, &q, "shared-tag", BasicConsumeOptions::default()).await;
        assert!(ch1.status().connected() && ch2.status().connected());
    })
});

broker_test!(exclusive_consumer_refuses_other_consumers_403, |b| {
    run(async {
        let (_owner, _och, q) = shared_queue(b, "exclc-q").await;
        let (_c1, ch1) = open(&b.url()).await;
        let _excl = consume(
            &ch1,
            &q,
            "",
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .await;
        let (c2, ch2) = open(&b.url()).await;
        let r = step(
            "basic.consume",
            ch2.basic_consume(
                &q,
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await;
        let text = expect_code(r.map(|_| ()), 403);
        assert!(text.starts_with("ACCESS_REFUSED"), "{:?}", text);
        assert_connection_usable(&c2).await;
        // And an exclusive consumer is refused while any consumer exists.
        let (_c3, ch3) = open(&b.url()).await;
        let r = step(
            "basic.consume",
            ch3.basic_consume(
                &q,
                "",
                BasicConsumeOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await;
        expect_code(r.map(|_| ()), 403);
        ch1.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(consume_on_missing_queue_closes_channel_404, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let r = step(
            "basic.consume",
            ch.basic_consume(
                &unique("missing-q"),
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await;
        expect_code(r.map(|_| ()), 404);
        assert_connection_usable(&conn).await;
    })
});

broker_test!(no_ack_consumer_takes_messages_off_the_queue, |b| {
    run(async {
        let (owner, _och, q) = shared_queue(b, "noack-q").await;
        let (_pc, pch) = open_confirming(&b.url()).await;
        fill_n(&pch, &q, 3).await;
        let (cc, cch) = open(&b.url()).await;
        let mut consumer = consume(&cch, &q, "", no_ack()).await;
        assert_eq!(next_bodies(&mut consumer, 3).await, vec!["1", "2", "3"]);
        cc.close(200, "bye").await.unwrap();
        // Nothing comes back: no_ack deliveries are settled on sending.
        sleep(QUIET_PERIOD).await;
        assert_eq!(message_count(&owner, &q).await, 0);
        pch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(cancel_stops_deliveries_and_leaves_messages_queued, |b| {
    run(async {
        let (owner, _och, q) = shared_queue(b, "cancel-q").await;
        let (_cc, cch) = open(&b.url()).await;
        let mut consumer = consume(&cch, &q, "to-cancel", no_ack()).await;
        let (_pc, pch) = open_confirming(&b.url()).await;
        publish(&pch, "", &q, b"before").await;
        assert_eq!(body_str(&next_delivery(&mut consumer).await), "before");
        step(
            "basic.cancel",
            cch.basic_cancel("to-cancel", BasicCancelOptions::default()),
        )
        .await
        .unwrap();
        publish(&pch, "", &q, b"after").await;
        assert_eq!(message_count(&owner, &q).await, 1);
        // The stream ends after a client cancel too.
        assert!(
            within(STEP_DEADLINE, futures_lite::StreamExt::next(&mut consumer))
                .await
                .is_some_and(|n| n.is_none())
        );
        pch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(basic_get_on_empty_queue_returns_get_empty, |b| {
    run(async {
        let (_c, ch) = open(&b.url()).await;
        let q = declare_server_named(&ch).await;
        assert!(get(&ch, &q, false).await.is_none());
        assert!(get(&ch, &q, true).await.is_none());
        assert!(ch.status().connected());
    })
});

broker_test!(basic_get_reports_remaining_message_count, |b| {
    run(async {
        let (_owner, _och, q) = shared_queue(b, "get-q").await;
        let (_pc, pch) = open_confirming(&b.url()).await;
        fill_n(&pch, &q, 3).await;
        let (_gc, gch) = open(&b.url()).await;
        for (body, remaining) in [("1", 2), ("2", 1), ("3", 0)] {
            let m = get(&gch, &q, true).await.expect("get-ok");
            assert_eq!(m.delivery.data, body.as_bytes());
            assert_eq!(m.message_count, remaining);
            assert!(!m.delivery.redelivered);
            assert_eq!(m.delivery.routing_key.as_str(), q);
        }
        assert!(get(&gch, &q, true).await.is_none());
        gch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(basic_get_on_missing_queue_closes_channel_404, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        expect_code(
            step(
                "basic.get",
                ch.basic_get(&unique("missing-q"), BasicGetOptions::default()),
            )
            .await
            .map(|_| ()),
            404,
        );
        assert_connection_usable(&conn).await;
    })
});

/// Gets `n` messages without acking; returns their delivery tags in order.
async fn get_unacked(ch: &Channel, q: &str, n: usize) -> Vec<u64> {
    let mut tags = Vec::new();
    for _ in 0..n {
        let m = get(ch, q, false).await.expect("get-ok");
        tags.push(m.delivery.delivery_tag);
    }
    tags
}

/// Drains the queue with no-ack gets: (body, redelivered) pairs.
async fn drain(ch: &Channel, q: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, q, true).await {
        out.push((
            String::from_utf8_lossy(&m.delivery.data).into_owned(),
            m.delivery.redelivered,
        ));
    }
    out
}

fn pairs(v: &[(&str, bool)]) -> Vec<(String, bool)> {
    v.iter().map(|(s, r)| (s.to_string(), *r)).collect()
}

broker_test!(ack_multiple_settles_every_tag_up_to_it, |b| {
    run(async {
        let (owner, _och, q) = shared_queue(b, "ackm-q").await;
        let (_pc, pch) = open_confirming(&b.url()).await;
        fill_n(&pch, &q, 4).await;
        let (_cc, ch) = open(&b.url()).await;
        let tags = get_unacked(&ch, &q, 4).await;
        assert_eq!(
            tags,
            vec![1, 2, 3, 4],
            "delivery tags count from 1 per channel"
        );
        ch.basic_ack(3, BasicAckOptions { multiple: true })
            .await
            .unwrap();
        // Closing the channel returns only the still-unacked message 4.
        ch.close(200, "bye").await.unwrap();
        wait_message_count(&owner, &q, 1).await;
        assert_eq!(drain(&pch, &q).await, pairs(&[("4", true)]));
        pch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(reject_and_nack_without_requeue_drop_messages, |b| {
    run(async {
        let (owner, _och, q) = shared_queue(b, "drop-q").await;
        let (_pc, pch) = open_confirming(&b.url()).await;
        fill_n(&pch, &q, 4).await;
        let (_cc, ch) = open(&b.url()).await;
        get_unacked(&ch, &q, 4).await;
        ch.basic_reject(1, BasicRejectOptions { requeue: false })
            .await
            .unwrap();
        ch.basic_nack(
            3,
            BasicNackOptions {
                multiple: true,
                requeue: false,
            },
        )
        .await
        .unwrap();
        ch.basic_nack(
            4,
            BasicNackOptions {
                multiple: false,
                requeue: false,
            },
        )
        .await
        .unwrap();
        assert_channel_usable(&ch).await;
        assert_eq!(message_count(&owner, &q).await, 0);
        ch.close(200, "bye").await.unwrap();
        sleep(QUIET_PERIOD).await;
        assert_eq!(message_count(&owner, &q).await, 0);
        pch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(
    requeued_message_is_redelivered_at_its_original_position,
    |b| {
        run(async {
            let (owner, _och, q) = shared_queue(b, "requeue-q").await;
            let (_pc, pch) = open_confirming(&b.url()).await;
            fill_n(&pch, &q, 3).await;
            let (_cc, ch) = open(&b.url()).await;
            get_unacked(&ch, &q, 3).await;
            ch.basic_nack(
                2,
                BasicNackOptions {
                    multiple: false,
                    requeue: true,
                },
            )
            .await
            .unwrap();
            let m = get_within(&ch, &q, STEP_DEADLINE).await;
            assert_eq!(m.delivery.data, b"2");
            assert!(m.delivery.redelivered);
            ch.basic_ack(3, BasicAckOptions { multiple: true })
                .await
                .unwrap();
            assert_channel_usable(&ch).await;
            assert_eq!(message_count(&owner, &q).await, 0);
            pch.queue_delete(&q, QueueDeleteOptions::default())
                .await
                .unwrap();
        })
    }
);

broker_test!(
    several_requeued_messages_return_in_original_order_ahead_of_new_ones,
    |b| {
        run(async {
            let (owner, _och, q) = shared_queue(b, "order-q").await;
            let (_pc, pch) = open_confirming(&b.url()).await;
            fill_n(&pch, &q, 5).await;
            let (_cc, ch) = open(&b.url()).await;
            get_unacked(&ch, &q, 5).await;
            publish(&pch, "", &q, b"6").await;
            // Requeue out of order: 4, then 2, then reject 5, then nack-multiple 3 (1 and 3).
            ch.basic_nack(
                4,
                BasicNackOptions {
                    multiple: false,
                    requeue: true,
                },
            )
            .await
            .unwrap();
            ch.basic_reject(2, BasicRejectOptions { requeue: true })
                .await
                .unwrap();
            ch.basic_reject(5, BasicRejectOptions { requeue: true })
                .await
                .unwrap();
            ch.basic_nack(
                3,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await
            .unwrap();
            wait_message_count(&owner, &q, 6).await;
            assert_eq!(
                drain(&pch, &q).await,
                pairs(&[
                    ("1", true),
                    ("2", true),
                    ("3", true),
                    ("4", true),
                    ("5", true),
                    ("6", false)
                ])
            );
            pch.queue_delete(&q, QueueDeleteOptions::default())
                .await
                .unwrap();
        })
    }
);

broker_test!(ack_of_unknown_delivery_tag_closes_channel_406, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let other = channel(&conn).await;
        let q = declare_server_named(&ch).await;
        publish(&ch, "", &q, b"x").await;
        let watch = ErrorWatch::channel(&ch);
        ch.basic_ack(99, BasicAckOptions::default()).await.unwrap();
        let text = watch.expect_code(406).await;
        assert_eq!(text, "PRECONDITION_FAILED - unknown delivery tag 99");
        wait_channel_closed(&ch).await;
        assert_channel_usable(&other).await;
    })
});

broker_test!(double_ack_closes_channel_406, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let q = declare_server_named(&ch).await;
        publish(&ch, "", &q, b"x").await;
        let m = get_within_unacked(&ch, &q).await;
        let tag = m.delivery.delivery_tag;
        let watch = ErrorWatch::channel(&ch);
        ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
        ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
        let text = watch.expect_code(406).await;
        assert_eq!(
            text,
            format!("PRECONDITION_FAILED - unknown delivery tag {}", tag)
        );
        assert_connection_usable(&conn).await;
    })
});

broker_test!(nack_and_reject_of_unknown_tag_close_channel_406, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let watch = ErrorWatch::channel(&ch);
        ch.basic_nack(7, BasicNackOptions::default()).await.unwrap();
        watch.expect_code(406).await;
        let ch2 = channel(&conn).await;
        let watch = ErrorWatch::channel(&ch2);
        ch2.basic_reject(7, BasicRejectOptions::default())
            .await
            .unwrap();
        watch.expect_code(406).await;
        assert_connection_usable(&conn).await;
    })
});

async fn get_within_unacked(ch: &Channel, q: &str) -> BasicGetMessage {
    for _ in 0..200 {
        if let Some(m) = get(ch, q, false).await {
            return m;
        }
        sleep(Duration::from_millis(10)).await;
    }
    panic!("no message in {}", q);
}

broker_test!(recover_with_requeue_redelivers_unacked_messages, |b| {
    run(async {
        let (_owner, _och, q) = shared_queue(b, "recover-q").await;
        let (_pc, pch) = open_confirming(&b.url()).await;
        fill_n(&pch, &q, 2).await;
        let (_cc, ch) = open(&b.url()).await;
        let mut consumer = consume(&ch, &q, "", BasicConsumeOptions::default()).await;
        let first = next_bodies(&mut consumer, 2).await;
        assert_eq!(first, vec!["1", "2"]);
        step(
            "basic.recover",
            ch.basic_recover(BasicRecoverOptions { requeue: true }),
        )
        .await
        .unwrap();
        let d1 = next_delivery(&mut consumer).await;
        let d2 = next_delivery(&mut consumer).await;
        assert_eq!((body_str(&d1), d1.redelivered), ("1".to_string(), true));
        assert_eq!((body_str(&d2), d2.redelivered), ("2".to_string(), true));
        d2.ack(BasicAckOptions { multiple: true }).await.unwrap();
        assert_no_delivery(&mut consumer).await;
        ch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(per_consumer_prefetch_limits_unacked_deliveries, |b| {
    run(async {
        let (_owner, _och, q) = shared_queue(b, "qos-q").await;
        let (_pc, pch) = open_confirming(&b.url()).await;
        fill_n(&pch, &q, 6).await;
        let (_cc, ch) = open(&b.url()).await;
        ch.basic_qos(2, BasicQosOptions { global: false })
            .await
            .unwrap();
        let mut consumer = consume(&ch, &q, "", BasicConsumeOptions::default()).await;
        let d1 = next_delivery(&mut consumer).await;
        let d2 = next_delivery(&mut consumer).await;
        assert_eq!((body_str(&d1), body_str(&d2)), ("1".into(), "2".into()));
        assert_no_delivery(&mut consumer).await;
        d1.ack(BasicAckOptions::default()).await.unwrap();
        let d3 = next_delivery(&mut consumer).await;
        assert_eq!(body_str(&d3), "3");
        assert_no_delivery(&mut consumer).await;
        // A multiple ack frees two slots at once.
        d3.ack(BasicAckOptions { multiple: true }).await.unwrap();
        assert_eq!(next_bodies(&mut consumer, 2).await, vec!["4", "5"]);
        assert_no_delivery(&mut consumer).await;
        ch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(
    per_consumer_prefetch_applies_to_each_consumer_separately,
    |b| {
        run(async {
            let (_owner, _och, q1) = shared_queue(b, "qos1-q").await;
            let (_o2, _och2, q2) = shared_queue(b, "qos2-q").await;
            let (_pc, pch) = open_confirming(&b.url()).await;
            fill_n(&pch, &q1, 5).await;
            fill_n(&pch, &q2, 5).await;
            let (_cc, ch) = open(&b.url()).await;
            ch.basic_qos(2, BasicQosOptions { global: false })
                .await
                .unwrap();
            let mut k1 = consume(&ch, &q1, "", BasicConsumeOptions::default()).await;
            let mut k2 = consume(&ch, &q2, "", BasicConsumeOptions::default()).await;
            next_bodies(&mut k1, 2).await;
            next_bodies(&mut k2, 2).await;
            assert_no_delivery(&mut k1).await;
            assert_no_delivery(&mut k2).await;
            ch.queue_delete(&q1, QueueDeleteOptions::default())
                .await
                .unwrap();
            ch.queue_delete(&q2, QueueDeleteOptions::default())
                .await
                .unwrap();
        })
    }
);

broker_test!(global_prefetch_limits_the_channel_across_consumers, |b| {
    run(async {
        let (_owner, _och, q1) = shared_queue(b, "gqos1-q").await;
        let (_o2, _och2, q2) = shared_queue(b, "gqos2-q").await;
        let (_pc, pch) = open_confirming(&b.url()).await;
        fill_n(&pch, &q1, 5).await;
        fill_n(&pch, &q2, 5).await;
        let (_cc, ch) = open(&b.url()).await;
        ch.basic_qos(3, BasicQosOptions { global: true })
            .await
            .unwrap();
        let mut k1 = consume(&ch, &q1, "", BasicConsumeOptions::default()).await;
        let mut k2 = consume(&ch, &q2, "", BasicConsumeOptions::default()).await;
        // Count everything that arrives on either consumer during a quiet period.
        let mut got = Vec::new();
        loop {
            let next = within(
                QUIET_PERIOD,
                futures_lite::future::or(
                    async { futures_lite::StreamExt::next(&mut k1).await },
                    async { futures_lite::StreamExt::next(&mut k2).await },
                ),
            )
            .await;
            match next {
                Some(Some(Ok(d))) => got.push(d),
                Some(other) => panic!(
                    "consumer ended: {:?}",
                    other.map(|r| r.map(|d| d.delivery_tag))
                ),
                None => break,
            }
        }
        assert_eq!(
            got.len(),
            3,
            "a global prefetch of 3 allows 3 unacked messages per channel"
        );
        got[0].ack(BasicAckOptions::default()).await.unwrap();
        let more = within(
            STEP_DEADLINE,
            futures_lite::future::or(
                async { futures_lite::StreamExt::next(&mut k1).await },
                async { futures_lite::StreamExt::next(&mut k2).await },
            ),
        )
        .await;
        assert!(matches!(more, Some(Some(Ok(_)))), "one ack frees one slot");
        ch.queue_delete(&q1, QueueDeleteOptions::default())
            .await
            .unwrap();
        ch.queue_delete(&q2, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(
    two_consumers_on_different_connections_share_round_robin,
    |b| {
        run(async {
            let (_owner, _och, q) = shared_queue(b, "rr-q").await;
            let (_c1, ch1) = open(&b.url()).await;
            let (_c2, ch2) = open(&b.url()).await;
            let mut k1 = consume(&ch1, &q, "", no_ack()).await;
            let mut k2 = consume(&ch2, &q, "", no_ack()).await;
            let (_pc, pch) = open_confirming(&b.url()).await;
            fill_n(&pch, &q, 10).await;
            let a = next_bodies(&mut k1, 5).await;
            let c = next_bodies(&mut k2, 5).await;
            assert_no_delivery(&mut k1).await;
            assert_no_delivery(&mut k2).await;
            let mut all: Vec<u32> = a
                .iter()
                .chain(c.iter())
                .map(|s| s.parse().unwrap())
                .collect();
            all.sort();
            assert_eq!(all, (1..=10).collect::<Vec<u32>>());
            // Round-robin: each consumer got every other message.
            let parity = |v: &[String]| {
                v.iter()
                    .map(|s| s.parse::<u32>().unwrap() % 2)
                    .collect::<std::collections::HashSet<_>>()
                    .len()
            };
            assert_eq!((parity(&a), parity(&c)), (1, 1), "got {:?} and {:?}", a, c);
            pch.queue_delete(&q, QueueDeleteOptions::default())
                .await
                .unwrap();
        })
    }
);

broker_test!(unacked_messages_are_requeued_when_the_channel_closes, |b| {
    run(async {
        let (_owner, _och, q) = shared_queue(b, "chclose-q").await;
        let (_pc, pch) = open_confirming(&b.url()).await;
        fill_n(&pch, &q, 3).await;
        let (cc, ch) = open(&b.url()).await;
        let mut consumer = consume(&ch, &q, "", BasicConsumeOptions::default()).await;
        let d1 = next_delivery(&mut consumer).await;
        next_bodies(&mut consumer, 2).await;
        d1.ack(BasicAckOptions::default()).await.unwrap();
        ch.close(200, "bye").await.unwrap();
        let (_c2, ch2) = open(&b.url()).await;
        let mut other = consume(&ch2, &q, "", no_ack()).await;
        let d2 = next_delivery(&mut other).await;
        let d3 = next_delivery(&mut other).await;
        assert_eq!((body_str(&d2), d2.redelivered), ("2".into(), true));
        assert_eq!((body_str(&d3), d3.redelivered), ("3".into(), true));
        assert_no_delivery(&mut other).await;
        assert!(cc.status().connected());
        ch2.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(
    unacked_messages_are_requeued_when_the_connection_closes,
    |b| {
        run(async {
            let (_owner, _och, q) = shared_queue(b, "connclose-q").await;
            let (_pc, pch) = open_confirming(&b.url()).await;
            fill_n(&pch, &q, 2).await;
            let (cc, ch) = open(&b.url()).await;
            let m1 = get(&ch, &q, false).await.expect("message 1");
            let m2 = get(&ch, &q, false).await.expect("message 2");
            assert_eq!(
                (m1.delivery.data.as_slice(), m2.delivery.data.as_slice()),
                (&b"1"[..], &b"2"[..])
            );
            cc.close(200, "bye").await.unwrap();
            let (_c2, ch2) = open(&b.url()).await;
            let r1 = get_within(&ch2, &q, STEP_DEADLINE).await;
            let r2 = get_within(&ch2, &q, STEP_DEADLINE).await;
            assert_eq!(
                (r1.delivery.data.as_slice(), r1.delivery.redelivered),
                (&b"1"[..], true)
            );
            assert_eq!(
                (r2.delivery.data.as_slice(), r2.delivery.redelivered),
                (&b"2"[..], true)
            );
            ch2.queue_delete(&q, QueueDeleteOptions::default())
                .await
                .unwrap();
        })
    }
);

broker_test!(all_basic_properties_arrive_unchanged, |b| {
    run(async {
        let (_owner, _och, q) = shared_queue(b, "props-q").await;
        let mut nested = FieldTable::default();
        nested.insert("inner-str".into(), ls("deep"));
        nested.insert("inner-int".into(), AMQPValue::LongLongInt(-1234567890123));
        let mut deeper = FieldTable::default();
        deeper.insert("level".into(), AMQPValue::LongInt(3));
        nested.insert("deeper".into(), AMQPValue::FieldTable(deeper));
        let array: FieldArray = vec![
            ls("a"),
            AMQPValue::LongInt(2),
            AMQPValue::Boolean(true),
            AMQPValue::FieldArray(vec![ls("nested")].into()),
        ]
        .into();
        let headers = table(&[
            ("string", ls("value")),
            ("long-int", AMQPValue::LongInt(-42)),
            ("long-long", AMQPValue::LongLongInt(1 << 40)),
            ("bool", AMQPValue::Boolean(false)),
            ("double", AMQPValue::Double(2.5)),
            ("float", AMQPValue::Float(1.5)),
            ("short-short", AMQPValue::ShortShortInt(-7)),
            ("short", AMQPValue::ShortInt(-300)),
            ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
            ("bytes", AMQPValue::ByteArray(vec![0u8, 1, 2, 255].into())),
            ("void", AMQPValue::Void),
            ("table", AMQPValue::FieldTable(nested)),
            ("array", AMQPValue::FieldArray(array)),
        ]);
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("gzip".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(7)
            .with_correlation_id("corr-1".into())
            .with_reply_to("reply-queue".into())
            .with_expiration("600000".into())
            .with_message_id("msg-1".into())
            .with_timestamp(1_700_000_123)
            .with_type("order.created".into())
            .with_user_id("guest".into())
            .with_app_id("warren-tests".into())
            .with_cluster_id("cluster-x".into());
        // The URL's user must be the one named in user_id.
        let (_pc, pch) = open(&b.url_as("guest", "guest")).await;
        publish_props(&pch, "", &q, b"{}", props.clone()).await;
        let (_cc, cch) = open(&b.url()).await;
        let mut consumer = consume(&cch, &q, "", no_ack()).await;
        let d = next_delivery(&mut consumer).await;
        assert_eq!(d.properties, props);
        // The same through basic.get.
        cch.basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default())
            .await
            .unwrap();
        publish_props(&pch, "", &q, b"{}", props.clone()).await;
        let m = get_within(&cch, &q, STEP_DEADLINE).await;
        assert_eq!(m.delivery.properties, props);
        cch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(message_without_properties_arrives_without_properties, |b| {
    run(async {
        let (_c, ch) = open(&b.url()).await;
        let q = declare_server_named(&ch).await;
        publish(&ch, "", &q, b"plain").await;
        let m = get_within(&ch, &q, STEP_DEADLINE).await;
        assert_eq!(m.delivery.properties, BasicProperties::default());
    })
});

broker_test!(large_bodies_spanning_many_frames_arrive_intact, |b| {
    run(async {
        let (_owner, _och, q) = shared_queue(b, "large-q").await;
        let (_pc, pch) = open_confirming(&b.url()).await;
        let (_cc, cch) = open(&b.url()).await;
        let mut consumer = consume(&cch, &q, "", no_ack()).await;
        // 1 MiB (8+ frames at frame_max 131072) and sizes around one frame's payload.
        let sizes = [
            1 << 20,
            131_064,
            131_065,
            131_072,
            262_128,
            3 * (1 << 20) + 7,
        ];
        for (i, &n) in sizes.iter().enumerate() {
            let body: Vec<u8> = (0..n).map(|j| ((j * 31 + i) % 256) as u8).collect();
            publish(&pch, "", &q, &body).await;
            let d = next_delivery(&mut consumer).await;
            assert_eq!(d.data.len(), n);
            assert!(d.data == body, "body of {} bytes corrupted", n);
        }
        cch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(zero_length_bodies_arrive_as_empty_messages, |b| {
    run(async {
        let (_owner, _och, q) = shared_queue(b, "empty-q").await;
        let (_pc, pch) = open_confirming(&b.url()).await;
        let props = BasicProperties::default().with_message_id("empty".into());
        publish_props(&pch, "", &q, b"", props.clone()).await;
        publish_props(&pch, "", &q, b"", props.clone()).await;
        publish(&pch, "", &q, b"after").await;
        let (_cc, cch) = open(&b.url()).await;
        let m = get_within(&cch, &q, STEP_DEADLINE).await;
        assert!(m.delivery.data.is_empty());
        assert_eq!(m.delivery.properties, props);
        let mut consumer = consume(&cch, &q, "", no_ack()).await;
        let d = next_delivery(&mut consumer).await;
        assert!(d.data.is_empty());
        assert_eq!(d.properties, props);
        assert_eq!(body_str(&next_delivery(&mut consumer).await), "after");
        cch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

// Flow control slows a publisher only while its queue's consumers are taking
// messages: a consumer that takes nothing (prefetch used up, no acks) must
// never hold the publisher up, however long the queue grows.
broker_test!(
    a_consumer_that_takes_nothing_never_holds_up_publishers,
    |b| {
        run_for(Duration::from_secs(90), async {
            let (qc, _qch, q) = shared_queue(b, "flow-stalled").await;
            let (_cc, cch) = open(&b.url()).await;
            step("basic.qos", cch.basic_qos(1, BasicQosOptions::default()))
                .await
                .unwrap();
            let _consumer = consume(&cch, &q, "stalled", BasicConsumeOptions::default()).await;
            let (_pc, pch) = open_confirming(&b.url()).await;
            let count = 3 * 4096 + 500;
            let mut confirms = Vec::with_capacity(count);
            for i in 0..count {
                let body = i.to_string();
                let confirm = pch
                    .basic_publish(
                        "",
                        &q,
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        BasicProperties::default(),
                    )
                    .await
                    .expect("basic.publish");
                confirms.push(confirm);
            }
            for confirm in confirms {
                let c = step("publisher confirm", confirm).await.expect("confirm");
                assert!(c.is_ack(), "not acked: {:?}", c);
            }
            // One message is with the consumer, unacknowledged.
            wait_message_count(&qc, &q, count as u32 - 1).await;
        });
    }
);

// A message requeued from the middle of a consumer's unacknowledged ones and
// delivered again must be settled by its new delivery tag: the consumer's
// prefetch credit comes back, so it goes on receiving.
broker_test!(
    a_redelivered_message_from_the_middle_is_settled_and_frees_its_credit,
    |b| {
        run(async {
            let (_oc, _och, q) = shared_queue(b, "redeliver-mid").await;
            let (_pc, pch) = open_confirming(&b.url()).await;
            fill_n(&pch, &q, 10).await;
            let (_cc, ch) = open(&b.url()).await;
            step("basic.qos", ch.basic_qos(10, BasicQosOptions::default()))
                .await
                .unwrap();
            let mut consumer = consume(&ch, &q, "mid", BasicConsumeOptions::default()).await;
            let first: Vec<Delivery> = {
                let mut v = Vec::new();
                for _ in 0..10 {
                    v.push(next_delivery(&mut consumer).await);
                }
                v
            };
            ch.basic_nack(
                first[4].delivery_tag,
                BasicNackOptions {
                    multiple: false,
                    requeue: true,
                },
            )
            .await
            .unwrap();
            let again = next_delivery(&mut consumer).await;
            assert!(again.redelivered);
            assert_eq!(again.data, first[4].data);
            ch.basic_ack(again.delivery_tag, BasicAckOptions::default())
                .await
                .unwrap();
            ch.basic_ack(first[9].delivery_tag, BasicAckOptions { multiple: true })
                .await
                .unwrap();
            // All ten settled: a prefetch of 10 takes ten more at once.
            fill_n(&pch, &q, 10).await;
            let more = next_bodies(&mut consumer, 10).await;
            assert_eq!(more.len(), 10);
        })
    }
);

//! Publisher confirms through lapin, plus the two tx/confirm mode conflicts
//! (transactions themselves are in `lapin_transactions.rs`).

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

broker_test!(every_publish_on_a_confirm_channel_is_acked, |b| {
    run(async {
        let (owner, och) = open(&b.url()).await;
        let q = unique("confirm-q");
        declare_queue(&och, &q).await;
        let (_pc, ch) = open_confirming(&b.url()).await;
        assert!(ch.status().confirm());
        let mut pending = Vec::new();
        for i in 0..200 {
            let c = ch
                .basic_publish(
                    "",
                    &q,
                    BasicPublishOptions::default(),
                    format!("{}", i).as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .unwrap();
            pending.push(c);
        }
        // Confirms may be coalesced with multiple=true, but each publish resolves as an ack, in order.
        for (i, c) in pending.into_iter().enumerate() {
            let c = step("confirm", c)
                .await
                .unwrap_or_else(|e| panic!("confirm {}: {}", i, e));
            assert_eq!(c, Confirmation::Ack(None), "publish {}", i);
        }
        let returned = step("wait_for_confirms", ch.wait_for_confirms())
            .await
            .unwrap();
        assert!(returned.is_empty());
        assert_eq!(message_count(&owner, &q).await, 200);
        och.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(wait_for_confirms_covers_fire_and_forget_publishes, |b| {
    run(async {
        let (owner, och) = open(&b.url()).await;
        let q = unique("confirm-q");
        declare_queue(&och, &q).await;
        let (_pc, ch) = open_confirming(&b.url()).await;
        for i in 0..100 {
            // Dropping the PublisherConfirm registers it for wait_for_confirms.
            drop(
                ch.basic_publish(
                    "",
                    &q,
                    BasicPublishOptions::default(),
                    format!("{}", i).as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .unwrap(),
            );
        }
        let returned = step("wait_for_confirms", ch.wait_for_confirms())
            .await
            .unwrap();
        assert!(returned.is_empty());
        assert_eq!(message_count(&owner, &q).await, 100);
        och.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(
    confirms_for_publishes_fanned_out_to_queues_on_several_connections,
    |b| {
        run(async {
            let x = unique("confirm-fanout");
            let (c1, ch1) = open(&b.url()).await;
            declare_exchange(&ch1, &x, ExchangeKind::Fanout).await;
            let mut qs = Vec::new();
            let mut conns = Vec::new();
            for _ in 0..4 {
                let (c, ch) = open(&b.url()).await;
                let q = unique("fan-q");
                declare_queue(&ch, &q).await;
                bind(&ch, &q, &x, "").await;
                qs.push(q);
                conns.push(c);
            }
            let (_pc, pch) = open_confirming(&b.url()).await;
            for i in 0..50 {
                publish(&pch, &x, "", format!("{}", i).as_bytes()).await;
            }
            // Acked means every queue has it.
            for q in &qs {
                assert_eq!(message_count(&c1, q).await, 50);
                ch1.queue_delete(q, QueueDeleteOptions::default())
                    .await
                    .unwrap();
            }
            ch1.exchange_delete(&x, ExchangeDeleteOptions::default())
                .await
                .unwrap();
        })
    }
);

broker_test!(publish_to_exchange_without_bindings_is_still_acked, |b| {
    run(async {
        let (_c, setup) = open(&b.url()).await;
        let x = unique("lonely-x");
        declare_exchange(&setup, &x, ExchangeKind::Direct).await;
        let (_pc, ch) = open_confirming(&b.url()).await;
        let c = publish_confirmed(
            &ch,
            &x,
            "k",
            BasicPublishOptions::default(),
            b"void",
            BasicProperties::default(),
        )
        .await
        .unwrap();
        assert_eq!(c, Confirmation::Ack(None));
        let c = publish_confirmed(
            &ch,
            "",
            &unique("no-such-queue"),
            BasicPublishOptions::default(),
            b"void",
            BasicProperties::default(),
        )
        .await
        .unwrap();
        assert_eq!(c, Confirmation::Ack(None));
        setup
            .exchange_delete(&x, ExchangeDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(
    mandatory_unroutable_publish_is_returned_before_it_is_acked,
    |b| {
        run(async {
            let (_pc, ch) = open_confirming(&b.url()).await;
            let key = unique("unroutable");
            let c = publish_confirmed(
                &ch,
                "amq.topic",
                &key,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"bounced",
                BasicProperties::default().with_correlation_id("c-9".into()),
            )
            .await
            .unwrap();
            // lapin attaches a basic.return to the confirmation only when the return
            // arrives before the ack, which is what RabbitMQ guarantees.
            assert!(c.is_ack(), "{:?}", c);
            let returned = c
                .take_message()
                .expect("the basic.return must precede the basic.ack");
            assert_eq!(returned.reply_code, 312);
            assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
            assert_eq!(returned.delivery.exchange.as_str(), "amq.topic");
            assert_eq!(returned.delivery.routing_key.as_str(), key);
            assert_eq!(returned.delivery.data, b"bounced");
            assert_eq!(
                returned
                    .delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|s| s.as_str()),
                Some("c-9")
            );
            // A routable publish right after is a plain ack.
            let q = declare_server_named(&ch).await;
            let c = publish_confirmed(
                &ch,
                "",
                &q,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"fine",
                BasicProperties::default(),
            )
            .await
            .unwrap();
            assert_eq!(c, Confirmation::Ack(None));
        })
    }
);

broker_test!(confirm_select_twice_is_ok, |b| {
    run(async {
        let (_c, ch) = open_confirming(&b.url()).await;
        step(
            "confirm.select",
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .unwrap();
        let q = declare_server_named(&ch).await;
        publish(&ch, "", &q, b"x").await;
    })
});

broker_test!(persistent_message_to_durable_queue_is_acked, |b| {
    run(async {
        let (_c, setup) = open(&b.url()).await;
        let q = unique("durable-q");
        declare_queue_with(
            &setup,
            &q,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let (_pc, ch) = open_confirming(&b.url()).await;
        let c = publish_confirmed(
            &ch,
            "",
            &q,
            BasicPublishOptions::default(),
            b"keep",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap();
        assert_eq!(c, Confirmation::Ack(None));
        let m = get_within(&setup, &q, STEP_DEADLINE).await;
        assert_eq!(m.delivery.properties.delivery_mode(), &Some(2));
        setup
            .queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(
    publish_to_missing_exchange_in_confirm_mode_closes_channel_404,
    |b| {
        run(async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let r = publish_confirmed(
                &ch,
                &unique("missing-x"),
                "k",
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default(),
            )
            .await;
            expect_code(r, 404);
            wait_channel_closed(&ch).await;
            assert_connection_usable(&conn).await;
        })
    }
);

broker_test!(
    confirm_select_on_a_transactional_channel_closes_channel_406,
    |b| {
        run(async {
            let (conn, ch) = open(&b.url()).await;
            step("tx.select", ch.tx_select()).await.unwrap();
            let r = step(
                "confirm.select",
                ch.confirm_select(ConfirmSelectOptions::default()),
            )
            .await;
            let text = expect_code(r, 406);
            assert_eq!(
                text,
                "PRECONDITION_FAILED - cannot switch from tx to confirm mode"
            );
            wait_channel_closed(&ch).await;
            assert_connection_usable(&conn).await;
        })
    }
);

broker_test!(tx_select_on_a_confirm_channel_closes_channel_406, |b| {
    run(async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let r = step("tx.select", ch.tx_select()).await;
        let text = expect_code(r, 406);
        assert_eq!(
            text,
            "PRECONDITION_FAILED - cannot switch from confirm to tx mode"
        );
        wait_channel_closed(&ch).await;
        assert_connection_usable(&conn).await;
    })
});

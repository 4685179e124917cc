//! Queues through lapin: naming, declaration and equivalence, exclusivity,
//! auto-delete, counts, bindings, purge and delete.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

fn qopts() -> QueueDeclareOptions {
    QueueDeclareOptions::default()
}

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..qopts()
    }
}

broker_test!(server_named_queue_gets_amq_gen_prefix, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let q1 = declare_server_named(&ch).await;
        let q2 = declare_server_named(&ch).await;
        assert!(q1.starts_with("amq.gen-"), "{:?}", q1);
        assert!(q2.starts_with("amq.gen-"), "{:?}", q2);
        assert_ne!(q1, q2);
        assert!(queue_exists(&conn, &q1).await);
    })
});

broker_test!(passive_declare_of_missing_queue_closes_channel_404, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let other = channel(&conn).await;
        let text = expect_code(passive_declare_queue(&ch, &unique("missing-q")).await, 404);
        assert!(text.starts_with("NOT_FOUND - no queue"), "{:?}", text);
        wait_channel_closed(&ch).await;
        assert_channel_usable(&other).await;
        assert_connection_usable(&conn).await;
    })
});

broker_test!(declare_is_idempotent_with_equal_properties, |b| {
    run(async {
        let (_c, ch) = open(&b.url()).await;
        let q = unique("same-q");
        let args = table(&[("x-max-length", AMQPValue::LongInt(10))]);
        declare_queue_with(&ch, &q, qopts(), args.clone())
            .await
            .unwrap();
        let again = declare_queue_with(&ch, &q, qopts(), args).await.unwrap();
        assert_eq!(again.name().as_str(), q);
        // A passive declare ignores flags and arguments.
        let passive = QueueDeclareOptions {
            passive: true,
            durable: true,
            ..qopts()
        };
        declare_queue_with(&ch, &q, passive, FieldTable::default())
            .await
            .unwrap();
        ch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

async fn redeclare_mismatch(
    b: &Broker,
    first: (QueueDeclareOptions, FieldTable),
    second: (QueueDeclareOptions, FieldTable),
    code: u16,
) -> String {
    let (conn, ch) = open(&b.url()).await;
    let other = channel(&conn).await;
    let q = unique("mismatch-q");
    declare_queue_with(&ch, &q, first.0, first.1).await.unwrap();
    let text = expect_code(declare_queue_with(&ch, &q, second.0, second.1).await, code);
    wait_channel_closed(&ch).await;
    assert_channel_usable(&other).await;
    assert!(queue_exists(&conn, &q).await);
    let _ = other.queue_delete(&q, QueueDeleteOptions::default()).await;
    text
}

broker_test!(
    redeclare_queue_with_other_durable_flag_closes_channel_406,
    |b| {
        run(async {
            let text = redeclare_mismatch(
                b,
                (qopts(), FieldTable::default()),
                (
                    QueueDeclareOptions {
                        durable: true,
                        ..qopts()
                    },
                    FieldTable::default(),
                ),
                406,
            )
            .await;
            assert!(
                text.starts_with("PRECONDITION_FAILED - inequivalent arg 'durable'"),
                "{:?}",
                text
            );
        })
    }
);

broker_test!(
    redeclare_queue_with_other_auto_delete_flag_closes_channel_406,
    |b| {
        run(async {
            let text = redeclare_mismatch(
                b,
                (qopts(), FieldTable::default()),
                (
                    QueueDeclareOptions {
                        auto_delete: true,
                        ..qopts()
                    },
                    FieldTable::default(),
                ),
                406,
            )
            .await;
            assert!(
                text.starts_with("PRECONDITION_FAILED - inequivalent arg 'auto_delete'"),
                "{:?}",
                text
            );
        })
    }
);

broker_test!(
    redeclare_queue_with_other_arguments_closes_channel_406,
    |b| {
        run(async {
            let text = redeclare_mismatch(
                b,
                (qopts(), table(&[("x-max-length", AMQPValue::LongInt(10))])),
                (qopts(), table(&[("x-max-length", AMQPValue::LongInt(20))])),
                406,
            )
            .await;
            assert!(
                text.starts_with("PRECONDITION_FAILED - inequivalent arg 'x-max-length'"),
                "{:?}",
                text
            );
            // Adding an argument the queue was declared without is also inequivalent.
            redeclare_mismatch(
                b,
                (qopts(), FieldTable::default()),
                (
                    qopts(),
                    table(&[("x-message-ttl", AMQPValue::LongInt(1000))]),
                ),
                406,
            )
            .await;
        })
    }
);

broker_test!(
    redeclare_shared_queue_as_exclusive_closes_channel_405,
    |b| {
        run(async {
            // RabbitMQ treats an exclusive redeclare of a non-exclusive queue as a
            // lock conflict (405 RESOURCE_LOCKED), not an equivalence failure (406).
            let text = redeclare_mismatch(
                b,
                (qopts(), FieldTable::default()),
                (exclusive(), FieldTable::default()),
                405,
            )
            .await;
            assert!(text.starts_with("RESOURCE_LOCKED"), "{:?}", text);
        })
    }
);

broker_test!(
    redeclare_own_exclusive_queue_as_shared_closes_channel_405,
    |b| {
        run(async {
            // Also a lock conflict in RabbitMQ, even on the owning connection:
            // "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '...' in
            // vhost '/'. It could be originally declared on another connection or the
            // exclusive property value does not match that of the original declaration."
            let (conn, ch) = open(&b.url()).await;
            let q = unique("excl-q");
            declare_queue_with(&ch, &q, exclusive(), FieldTable::default())
                .await
                .unwrap();
            let text = expect_code(
                declare_queue_with(&ch, &q, qopts(), FieldTable::default()).await,
                405,
            );
            assert!(
                text.starts_with("RESOURCE_LOCKED - cannot obtain exclusive access"),
                "{:?}",
                text
            );
            wait_channel_closed(&ch).await;
            assert!(queue_exists(&conn, &q).await);
            assert_connection_usable(&conn).await;
        })
    }
);

broker_test!(exclusive_queue_is_locked_to_its_connection_405, |b| {
    run(async {
        let (owner, och) = open(&b.url()).await;
        let q = unique("excl-q");
        declare_queue_with(&och, &q, exclusive(), FieldTable::default())
            .await
            .unwrap();

        let (other, ch) = open(&b.url()).await;
        let text = expect_code(passive_declare_queue(&ch, &q).await, 405);
        assert!(text.starts_with("RESOURCE_LOCKED"), "{:?}", text);
        let ch = channel(&other).await;
        expect_code(
            step(
                "basic.consume",
                ch.basic_consume(
                    &q,
                    "",
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await,
            405,
        );
        let ch = channel(&other).await;
        expect_code(
            step("basic.get", ch.basic_get(&q, BasicGetOptions::default())).await,
            405,
        );
        let ch = channel(&other).await;
        expect_code(
            step(
                "queue.delete",
                ch.queue_delete(&q, QueueDeleteOptions::default()),
            )
            .await,
            405,
        );

        // Publishing to it from another connection is allowed, and the owner still uses it.
        let ch = channel(&other).await;
        assert_channel_usable(&ch).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish(&ch, "", &q, b"for the owner").await;
        let got = get_within(&och, &q, STEP_DEADLINE).await;
        assert_eq!(got.delivery.data, b"for the owner");
        assert!(owner.status().connected());
    })
});

broker_test!(an_exclusive_queue_is_never_durable, |b| {
    run(async {
        // RabbitMQ ignores durable=true on an exclusive queue, so the same
        // queue redeclared exclusive and transient is equivalent.
        let (_conn, ch) = open(&b.url()).await;
        let q = unique("excl-durable-q");
        let durable_exclusive = QueueDeclareOptions {
            durable: true,
            exclusive: true,
            ..Default::default()
        };
        declare_queue_with(&ch, &q, durable_exclusive, FieldTable::default())
            .await
            .unwrap();
        declare_queue_with(&ch, &q, exclusive(), FieldTable::default())
            .await
            .expect("exclusive + transient redeclare of an exclusive + durable queue");
        declare_queue_with(&ch, &q, durable_exclusive, FieldTable::default())
            .await
            .expect("and back");
        assert_channel_usable(&ch).await;
    })
});

broker_test!(exclusive_queue_is_deleted_when_its_connection_closes, |b| {
    run(async {
        let (owner, och) = open(&b.url()).await;
        let q = unique("excl-q");
        declare_queue_with(&och, &q, exclusive(), FieldTable::default())
            .await
            .unwrap();
        let watcher = connect(&b.url()).await;
        // From the outside the queue exists but is locked.
        let ch = channel(&watcher).await;
        expect_code(passive_declare_queue(&ch, &q).await, 405);
        owner.close(200, "bye").await.unwrap();
        let mut gone = false;
        for _ in 0..100 {
            if !queue_exists(&watcher, &q).await {
                gone = true;
                break;
            }
            sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(gone, "exclusive queue survived its connection");
    })
});

broker_test!(
    auto_delete_queue_lives_until_its_last_consumer_cancels,
    |b| {
        run(async {
            let (setup_conn, setup) = open(&b.url()).await;
            let q = unique("ad-q");
            declare_queue_with(
                &setup,
                &q,
                QueueDeclareOptions {
                    auto_delete: true,
                    ..qopts()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
            // No consumer yet: it stays.
            sleep(QUIET_PERIOD).await;
            assert!(queue_exists(&setup_conn, &q).await);

            let (_c1, ch1) = open(&b.url()).await;
            let (_c2, ch2) = open(&b.url()).await;
            let _k1 = consume(&ch1, &q, "first", BasicConsumeOptions::default()).await;
            let _k2 = consume(&ch2, &q, "second", BasicConsumeOptions::default()).await;
            ch1.basic_cancel("first", BasicCancelOptions::default())
                .await
                .unwrap();
            assert!(queue_exists(&setup_conn, &q).await, "one consumer is left");
            ch2.basic_cancel("second", BasicCancelOptions::default())
                .await
                .unwrap();
            let mut gone = false;
            for _ in 0..100 {
                if !queue_exists(&setup_conn, &q).await {
                    gone = true;
                    break;
                }
                sleep(std::time::Duration::from_millis(20)).await;
            }
            assert!(gone, "auto-delete queue survived its last consumer");
        })
    }
);

broker_test!(
    auto_delete_queue_goes_when_its_consumers_channel_closes,
    |b| {
        run(async {
            let (setup_conn, setup) = open(&b.url()).await;
            let q = unique("ad-q");
            declare_queue_with(
                &setup,
                &q,
                QueueDeclareOptions {
                    auto_delete: true,
                    ..qopts()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
            let (_c1, ch1) = open(&b.url()).await;
            let _k = consume(&ch1, &q, "", BasicConsumeOptions::default()).await;
            ch1.close(200, "bye").await.unwrap();
            let mut gone = false;
            for _ in 0..100 {
                if !queue_exists(&setup_conn, &q).await {
                    gone = true;
                    break;
                }
                sleep(std::time::Duration::from_millis(20)).await;
            }
            assert!(gone);
        })
    }
);

broker_test!(declare_ok_reports_ready_messages_and_consumers, |b| {
    run(async {
        let (_c1, ch) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let q = unique("count-q");
        let fresh = declare_queue(&ch, &q).await;
        assert_eq!((fresh.message_count(), fresh.consumer_count()), (0, 0));
        fill_queue(&publisher, &q, &[b"1", b"2", b"3"]).await;
        let d = declare_queue(&ch, &q).await;
        assert_eq!((d.message_count(), d.consumer_count()), (3, 0));

        let q2 = unique("count-q");
        declare_queue(&ch, &q2).await;
        let (_c3, cch) = open(&b.url()).await;
        let _k1 = consume(&cch, &q2, "", BasicConsumeOptions::default()).await;
        let _k2 = consume(&cch, &q2, "", BasicConsumeOptions::default()).await;
        let d = passive_declare_queue(&ch, &q2).await.unwrap();
        assert_eq!((d.message_count(), d.consumer_count()), (0, 2));

        // Unacknowledged deliveries are not counted as ready.
        let m = get(&ch, &q, false).await.expect("a message");
        let d = passive_declare_queue(&ch, &q).await.unwrap();
        assert_eq!(d.message_count(), 2);
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
        ch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
        ch.queue_delete(&q2, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(declare_queue_with_amq_prefix_closes_channel_403, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let q = format!("amq.{}", unique("foo"));
        let text = expect_code(
            declare_queue_with(&ch, &q, qopts(), FieldTable::default()).await,
            403,
        );
        assert!(text.starts_with("ACCESS_REFUSED"), "{:?}", text);
        wait_channel_closed(&ch).await;
        assert_connection_usable(&conn).await;
    })
});

broker_test!(bind_and_unbind_control_routing, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let q = vec![unique("bind-q")];
        declare_queue(&setup, &q[0]).await;
        assert!(routed_to(&publisher, &setup, "amq.direct", &q[0], None, &q)
            .await
            .is_empty());
        bind(&setup, &q[0], "amq.direct", "k1").await;
        assert_eq!(
            routed_to(&publisher, &setup, "amq.direct", "k1", None, &q).await,
            vec![0]
        );
        // Binding twice is a no-op.
        bind(&setup, &q[0], "amq.direct", "k1").await;
        setup
            .queue_unbind(&q[0], "amq.direct", "k1", FieldTable::default())
            .await
            .unwrap();
        assert!(routed_to(&publisher, &setup, "amq.direct", "k1", None, &q)
            .await
            .is_empty());
        setup
            .queue_delete(&q[0], QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(unbind_of_missing_binding_is_ok, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let q = declare_server_named(&ch).await;
        step(
            "queue.unbind",
            ch.queue_unbind(&q, "amq.direct", "never-bound", FieldTable::default()),
        )
        .await
        .expect("RabbitMQ answers unbind-ok for a binding that does not exist");
        assert!(ch.status().connected());
        assert_connection_usable(&conn).await;
    })
});

broker_test!(bind_to_missing_exchange_closes_channel_404, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let keep = channel(&conn).await;
        let q = declare_server_named(&keep).await;
        let r = step(
            "queue.bind",
            ch.queue_bind(
                &q,
                &unique("missing-x"),
                "k",
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await;
        let text = expect_code(r, 404);
        assert!(text.starts_with("NOT_FOUND - no exchange"), "{:?}", text);
        assert_channel_usable(&keep).await;
    })
});

broker_test!(bind_of_missing_queue_closes_channel_404, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let r = step(
            "queue.bind",
            ch.queue_bind(
                &unique("missing-q"),
                "amq.direct",
                "k",
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await;
        let text = expect_code(r, 404);
        assert!(text.starts_with("NOT_FOUND - no queue"), "{:?}", text);
        assert_connection_usable(&conn).await;
    })
});

broker_test!(purge_removes_ready_messages_and_returns_their_count, |b| {
    run(async {
        let (_c1, ch) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let q = unique("purge-q");
        declare_queue(&ch, &q).await;
        fill_queue(&publisher, &q, &[b"1", b"2", b"3", b"4"]).await;
        // One message is out for delivery and unacked: purge leaves it alone.
        let held = get(&ch, &q, false).await.expect("message");
        assert_eq!(
            step(
                "queue.purge",
                ch.queue_purge(&q, QueuePurgeOptions::default())
            )
            .await
            .unwrap(),
            3
        );
        assert_eq!(
            step(
                "queue.purge",
                ch.queue_purge(&q, QueuePurgeOptions::default())
            )
            .await
            .unwrap(),
            0
        );
        held.delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let back = get_within(&ch, &q, STEP_DEADLINE).await;
        assert_eq!(back.delivery.data, b"1");
        assert!(back.delivery.redelivered);
        ch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(purge_of_missing_queue_closes_channel_404, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        expect_code(
            step(
                "queue.purge",
                ch.queue_purge(&unique("missing-q"), QueuePurgeOptions::default()),
            )
            .await,
            404,
        );
        assert_connection_usable(&conn).await;
    })
});

broker_test!(delete_returns_the_number_of_messages_deleted, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let q = unique("del-q");
        declare_queue(&ch, &q).await;
        fill_queue(&publisher, &q, &[b"1", b"2", b"3"]).await;
        let n = step(
            "queue.delete",
            ch.queue_delete(&q, QueueDeleteOptions::default()),
        )
        .await
        .unwrap();
        assert_eq!(n, 3);
        assert!(!queue_exists(&conn, &q).await);
    })
});

broker_test!(delete_of_missing_queue_is_ok_with_zero_messages, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let n = step(
            "queue.delete",
            ch.queue_delete(&unique("missing-q"), QueueDeleteOptions::default()),
        )
        .await
        .expect("RabbitMQ answers delete-ok for a missing queue");
        assert_eq!(n, 0);
        assert_channel_usable(&ch).await;
        assert_connection_usable(&conn).await;
    })
});

broker_test!(delete_if_unused_with_a_consumer_closes_channel_406, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let (_c2, cch) = open(&b.url()).await;
        let q = unique("used-q");
        declare_queue(&ch, &q).await;
        let _k = consume(&cch, &q, "", BasicConsumeOptions::default()).await;
        let r = step(
            "queue.delete",
            ch.queue_delete(
                &q,
                QueueDeleteOptions {
                    if_unused: true,
                    ..Default::default()
                },
            ),
        )
        .await;
        let text = expect_code(r, 406);
        assert!(text.starts_with("PRECONDITION_FAILED"), "{:?}", text);
        assert!(queue_exists(&conn, &q).await);
        let ch2 = channel(&conn).await;
        ch2.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(delete_if_empty_with_messages_closes_channel_406, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let q = unique("full-q");
        declare_queue(&ch, &q).await;
        fill_queue(&publisher, &q, &[b"1"]).await;
        let r = step(
            "queue.delete",
            ch.queue_delete(
                &q,
                QueueDeleteOptions {
                    if_empty: true,
                    ..Default::default()
                },
            ),
        )
        .await;
        let text = expect_code(r, 406);
        assert!(text.starts_with("PRECONDITION_FAILED"), "{:?}", text);
        assert_eq!(message_count(&conn, &q).await, 1);
        // Once empty, if-empty deletes it.
        let ch2 = channel(&conn).await;
        get_within(&ch2, &q, STEP_DEADLINE).await;
        let n = ch2
            .queue_delete(
                &q,
                QueueDeleteOptions {
                    if_empty: true,
                    if_unused: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(n, 0);
        assert!(!queue_exists(&conn, &q).await);
    })
});

broker_test!(deleting_a_queue_cancels_its_consumers, |b| {
    run(async {
        let (_c1, ch) = open(&b.url()).await;
        let (c2, cch) = open(&b.url()).await;
        let (_c3, cch3) = open(&b.url()).await;
        let q = unique("doomed-q");
        declare_queue(&ch, &q).await;
        let mut k1 = consume(&cch, &q, "", BasicConsumeOptions::default()).await;
        let mut k2 = consume(
            &cch3,
            &q,
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .await;
        ch.queue_delete(&q, QueueDeleteOptions::default())
            .await
            .unwrap();
        // The broker sends basic.cancel (consumer_cancel_notify); lapin ends the stream.
        expect_cancelled(&mut k1).await;
        expect_cancelled(&mut k2).await;
        // The consumers' channels and connections are still fine.
        assert!(cch.status().connected());
        assert_channel_usable(&cch).await;
        assert_connection_usable(&c2).await;
    })
});

//! Sender-selected distribution through lapin: the CC and BCC headers add
//! routing keys to a publish (direct, topic and default exchanges), BCC never
//! reaches a consumer, a queue matched by several keys gets one copy, and a
//! CC that is not an array is refused as RabbitMQ refuses it, and a dead
//! letter is routed with the BCC keys too. Every test also runs against
//! RabbitMQ with WARREN_TEST_AMQP_URL.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

fn keys(keys: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(keys.iter().map(|k| ls(k)).collect::<Vec<_>>().into())
}

/// A fresh exchange of `kind` with one new queue per binding key, each bound
/// with its key. Returns the exchange and the queues, in binding order.
async fn topology(
    ch: &Channel,
    kind: ExchangeKind,
    binding_keys: &[&str],
) -> (String, Vec<String>) {
    let x = unique("ssd-x");
    step(
        "exchange.declare",
        ch.exchange_declare(
            &x,
            kind,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let mut queues = Vec::new();
    for key in binding_keys {
        let q = unique("ssd-q");
        declare_queue(ch, &q).await;
        bind(ch, &q, &x, key).await;
        queues.push(q);
    }
    (x, queues)
}

async fn cleanup(ch: &Channel, queues: &[String]) {
    for q in queues {
        let _ = ch.queue_delete(q, QueueDeleteOptions::default()).await;
    }
}

broker_test!(cc_and_bcc_keys_route_on_a_direct_exchange, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let (x, qs) = topology(&setup, ExchangeKind::Direct, &["a", "b", "c", "d"]).await;
        let cc_and_bcc = table(&[("CC", keys(&["b"])), ("BCC", keys(&["c"]))]);
        assert_eq!(
            routed_to(&publisher, &setup, &x, "a", Some(cc_and_bcc), &qs).await,
            vec![0, 1, 2]
        );
        let cc_only = table(&[("CC", keys(&["c", "d", "nobody"]))]);
        assert_eq!(
            routed_to(&publisher, &setup, &x, "nobody", Some(cc_only), &qs).await,
            vec![2, 3]
        );
        let bcc_only = table(&[("BCC", keys(&["d"]))]);
        assert_eq!(
            routed_to(&publisher, &setup, &x, "a", Some(bcc_only), &qs).await,
            vec![0, 3]
        );
        // Without the headers, only the routing key counts.
        assert_eq!(
            routed_to(&publisher, &setup, &x, "b", None, &qs).await,
            vec![1]
        );
        cleanup(&setup, &qs).await;
    })
});

broker_test!(cc_and_bcc_keys_route_on_a_topic_exchange, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let (x, qs) = topology(
            &setup,
            ExchangeKind::Topic,
            &["stock.#", "*.eu", "news.*", "sport.#"],
        )
        .await;
        let headers = table(&[
            ("CC", keys(&["weather.eu"])),
            ("BCC", keys(&["news.today"])),
        ]);
        assert_eq!(
            routed_to(&publisher, &setup, &x, "stock.nyse.ibm", Some(headers), &qs).await,
            vec![0, 1, 2]
        );
        let headers = table(&[("BCC", keys(&["sport.eu.football"]))]);
        assert_eq!(
            routed_to(&publisher, &setup, &x, "nothing", Some(headers), &qs).await,
            vec![3]
        );
        cleanup(&setup, &qs).await;
    })
});

broker_test!(cc_keys_name_queues_on_the_default_exchange, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let mut qs = Vec::new();
        for _ in 0..3 {
            let q = unique("ssd-default");
            declare_queue(&setup, &q).await;
            qs.push(q);
        }
        let headers = table(&[("CC", keys(&[&qs[1]])), ("BCC", keys(&[&qs[2]]))]);
        assert_eq!(
            routed_to(&publisher, &setup, "", &qs[0], Some(headers), &qs).await,
            vec![0, 1, 2]
        );
        cleanup(&setup, &qs).await;
    })
});

broker_test!(a_queue_matched_by_several_keys_gets_one_copy, |b| {
    run(async {
        let (conn, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let (x, qs) = topology(&setup, ExchangeKind::Direct, &["a"]).await;
        bind(&setup, &qs[0], &x, "b").await;
        let headers = table(&[("CC", keys(&["b", "a", "b"])), ("BCC", keys(&["a", "b"]))]);
        let c = publish_confirmed(
            &publisher,
            &x,
            "a",
            BasicPublishOptions::default(),
            b"once",
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap();
        assert!(c.is_ack(), "{:?}", c);
        wait_message_count(&conn, &qs[0], 1).await;
        let got = get(&setup, &qs[0], true).await.expect("one copy");
        assert_eq!(got.delivery.data, b"once");
        assert!(get(&setup, &qs[0], true).await.is_none(), "a second copy");
        cleanup(&setup, &qs).await;
    })
});

broker_test!(bcc_is_removed_before_delivery_and_cc_stays, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let (x, qs) = topology(&setup, ExchangeKind::Direct, &["to", "cc", "bcc"]).await;
        let headers = table(&[
            ("before", AMQPValue::LongInt(7)),
            ("BCC", keys(&["bcc"])),
            ("CC", keys(&["cc"])),
            ("after", ls("kept")),
        ]);
        let props = BasicProperties::default()
            .with_headers(headers)
            .with_message_id("ssd-1".into())
            .with_priority(4);
        let c = publish_confirmed(
            &publisher,
            &x,
            "to",
            BasicPublishOptions::default(),
            b"secret recipients",
            props,
        )
        .await
        .unwrap();
        assert!(c.is_ack(), "{:?}", c);
        for q in &qs {
            let tag = unique("ssd-consumer");
            let mut consumer = consume(&setup, q, &tag, BasicConsumeOptions::default()).await;
            let d = next_delivery(&mut consumer).await;
            assert_eq!(d.data, b"secret recipients");
            assert_eq!(d.routing_key.as_str(), "to", "the publish's routing key");
            let headers = d.properties.headers().clone().expect("headers");
            let inner = headers.inner();
            assert!(!inner.contains_key("BCC"), "{} saw BCC: {:?}", q, inner);
            assert_eq!(inner.get("CC"), Some(&keys(&["cc"])), "{}", q);
            assert_eq!(inner.get("before"), Some(&AMQPValue::LongInt(7)));
            assert_eq!(inner.get("after"), Some(&ls("kept")));
            assert_eq!(
                d.properties.message_id().as_ref().map(|s| s.as_str()),
                Some("ssd-1")
            );
            assert_eq!(*d.properties.priority(), Some(4));
            d.ack(BasicAckOptions::default()).await.unwrap();
            setup
                .basic_cancel(&tag, BasicCancelOptions::default())
                .await
                .unwrap();
        }
        // A table that only held BCC stays, empty.
        let c = publish_confirmed(
            &publisher,
            &x,
            "to",
            BasicPublishOptions::default(),
            b"only bcc",
            BasicProperties::default().with_headers(table(&[("BCC", keys(&["bcc"]))])),
        )
        .await
        .unwrap();
        assert!(c.is_ack(), "{:?}", c);
        for q in [&qs[0], &qs[2]] {
            let got = get_within(&setup, q, STEP_DEADLINE).await;
            assert_eq!(got.delivery.data, b"only bcc");
            let headers = got.delivery.properties.headers().clone();
            assert_eq!(headers.map(|h| h.inner().len()), Some(0), "{}", q);
        }
        cleanup(&setup, &qs).await;
    })
});

broker_test!(elements_that_are_not_longstr_are_ignored, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let (x, qs) = topology(&setup, ExchangeKind::Direct, &["a", "1", "b"]).await;
        let mixed = AMQPValue::FieldArray(
            vec![AMQPValue::LongInt(1), ls("b"), AMQPValue::Boolean(true)].into(),
        );
        let headers = table(&[("CC", mixed)]);
        assert_eq!(
            routed_to(&publisher, &setup, &x, "a", Some(headers), &qs).await,
            vec![0, 2]
        );
        cleanup(&setup, &qs).await;
    })
});

broker_test!(a_routable_cc_key_keeps_a_mandatory_publish, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let (x, qs) = topology(&setup, ExchangeKind::Direct, &["a"]).await;
        let c = publish_confirmed(
            &publisher,
            &x,
            "nobody",
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"kept",
            BasicProperties::default().with_headers(table(&[("BCC", keys(&["a"]))])),
        )
        .await
        .unwrap();
        assert!(c.is_ack(), "{:?}", c);
        assert!(c.take_message().is_none(), "returned although routed");
        let got = get_within(&setup, &qs[0], STEP_DEADLINE).await;
        assert_eq!(got.delivery.data, b"kept");
        cleanup(&setup, &qs).await;
    })
});

broker_test!(
    a_cc_header_that_is_not_an_array_closes_the_channel_406,
    |b| {
        run(async {
            let (conn, ch) = open(&b.url()).await;
            let (_c2, setup) = open(&b.url()).await;
            let q = unique("ssd-bad");
            declare_queue(&setup, &q).await;
            let watch = ErrorWatch::channel(&ch);
            ch.basic_publish(
                "",
                &q,
                BasicPublishOptions::default(),
                b"bad",
                BasicProperties::default().with_headers(table(&[("CC", ls("other"))])),
            )
            .await
            .unwrap();
            let text = watch.expect_code(406).await;
            assert_eq!(
            text,
            "PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,\"CC\",longstr}"
        );
            wait_channel_closed(&ch).await;
            assert_connection_usable(&conn).await;
            // Nothing was enqueued.
            assert!(get(&setup, &q, true).await.is_none());
            let _ = setup.queue_delete(&q, QueueDeleteOptions::default()).await;
        })
    }
);

broker_test!(
    a_bcc_header_that_is_not_an_array_closes_the_channel_406,
    |b| {
        run(async {
            let (conn, ch) = open(&b.url()).await;
            let watch = ErrorWatch::channel(&ch);
            ch.basic_publish(
                "amq.direct",
                "k",
                BasicPublishOptions::default(),
                b"bad",
                BasicProperties::default()
                    .with_headers(table(&[("BCC", AMQPValue::LongLongInt(5))])),
            )
            .await
            .unwrap();
            let text = watch.expect_code(406).await;
            assert_eq!(
                text,
                "PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,\"BCC\",long}"
            );
            wait_channel_closed(&ch).await;
            assert_connection_usable(&conn).await;
        })
    }
);

broker_test!(lower_case_cc_is_an_ordinary_header, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let (x, qs) = topology(&setup, ExchangeKind::Direct, &["a", "b"]).await;
        let headers = table(&[("cc", keys(&["b"])), ("Bcc", ls("not checked"))]);
        assert_eq!(
            routed_to(&publisher, &setup, &x, "a", Some(headers), &qs).await,
            vec![0]
        );
        cleanup(&setup, &qs).await;
    })
});

/// A source queue dead-lettering to a direct exchange whose queues are bound
/// with `dl_keys`; the source is bound to its own exchange with "k-orig".
async fn dead_letter_setup(
    ch: &Channel,
    dl_keys: &[&str],
    dlrk: Option<&str>,
) -> (String, String, String, Vec<String>) {
    let (src_x, src) = (unique("ssd-src-x"), unique("ssd-src"));
    let dlx = unique("ssd-dlx");
    declare_exchange(ch, &src_x, ExchangeKind::Direct).await;
    declare_exchange(ch, &dlx, ExchangeKind::Direct).await;
    let mut args = vec![("x-dead-letter-exchange", ls(&dlx))];
    if let Some(key) = dlrk {
        args.push(("x-dead-letter-routing-key", ls(key)));
    }
    declare_queue_with(ch, &src, QueueDeclareOptions::default(), table(&args))
        .await
        .unwrap();
    bind(ch, &src, &src_x, "k-orig").await;
    let mut dlqs = Vec::new();
    for key in dl_keys {
        let q = unique("ssd-dlq");
        declare_queue(ch, &q).await;
        bind(ch, &q, &dlx, key).await;
        dlqs.push(q);
    }
    (src_x, dlx, src, dlqs)
}

broker_test!(bcc_keys_route_a_dead_letter_but_are_not_in_x_death, |b| {
    run(async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let (src_x, dlx, src, dlqs) =
            dead_letter_setup(&ch, &["k-orig", "k-cc", "k-bcc", "k-other"], None).await;
        let headers = table(&[("CC", keys(&["k-cc"])), ("BCC", keys(&["k-bcc"]))]);
        publish_props(
            &ch,
            &src_x,
            "k-orig",
            b"dead",
            BasicProperties::default().with_headers(headers),
        )
        .await;
        wait_message_count(&conn, &src, 1).await;
        let m = get(&ch, &src, false).await.expect("the message");
        ch.basic_reject(
            m.delivery.delivery_tag,
            BasicRejectOptions { requeue: false },
        )
        .await
        .unwrap();
        // RabbitMQ routes a dead letter with every key the message was
        // published with, BCC included; x-death lists the routing key and
        // the CC keys only.
        for q in &dlqs[..3] {
            let d = get_within(&ch, q, STEP_DEADLINE).await;
            assert_eq!(d.delivery.data, b"dead");
            let headers = d.delivery.properties.headers().clone().unwrap();
            let inner = headers.inner();
            assert!(!inner.contains_key("BCC"), "{:?}", inner);
            let Some(AMQPValue::FieldArray(deaths)) = inner.get("x-death") else {
                panic!("no x-death: {:?}", inner);
            };
            let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
                panic!("no x-death entry: {:?}", deaths);
            };
            assert_eq!(
                death.inner().get("routing-keys"),
                Some(&keys(&["k-orig", "k-cc"]))
            );
        }
        assert!(get(&ch, &dlqs[3], true).await.is_none());
        cleanup(&ch, &dlqs).await;
        cleanup(&ch, &[src]).await;
        for x in [&src_x, &dlx] {
            let _ = ch
                .exchange_delete(x, ExchangeDeleteOptions::default())
                .await;
        }
    })
});

broker_test!(
    a_dead_letter_routing_key_replaces_every_published_key,
    |b| {
        run(async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let (src_x, dlx, src, dlqs) =
                dead_letter_setup(&ch, &["k-orig", "k-cc", "k-bcc", "k-dl"], Some("k-dl")).await;
            let headers = table(&[("CC", keys(&["k-cc"])), ("BCC", keys(&["k-bcc"]))]);
            publish_props(
                &ch,
                &src_x,
                "k-orig",
                b"dead",
                BasicProperties::default().with_headers(headers),
            )
            .await;
            wait_message_count(&conn, &src, 1).await;
            let m = get(&ch, &src, false).await.expect("the message");
            ch.basic_reject(
                m.delivery.delivery_tag,
                BasicRejectOptions { requeue: false },
            )
            .await
            .unwrap();
            let d = get_within(&ch, &dlqs[3], STEP_DEADLINE).await;
            assert_eq!(d.delivery.data, b"dead");
            // The CC header goes with the keys it named.
            let headers = d.delivery.properties.headers().clone().unwrap();
            assert!(!headers.inner().contains_key("CC"), "{:?}", headers);
            for q in &dlqs[..3] {
                assert!(
                    get(&ch, q, true).await.is_none(),
                    "{} got the dead letter",
                    q
                );
            }
            cleanup(&ch, &dlqs).await;
            cleanup(&ch, &[src]).await;
            for x in [&src_x, &dlx] {
                let _ = ch
                    .exchange_delete(x, ExchangeDeleteOptions::default())
                    .await;
            }
        })
    }
);

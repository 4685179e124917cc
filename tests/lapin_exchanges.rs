//! Exchanges through lapin: declaration and its errors, deletion, exchange-to-
//! exchange bindings, auto-delete, and routing by type (direct, fanout, topic,
//! headers). Publishes go through one connection and reads through another, so
//! with two shards the queues are often on a shard other than the publisher's.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

fn opts() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions::default()
}

async fn declare_x(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
) -> lapin::Result<()> {
    step(
        "exchange.declare",
        ch.exchange_declare(name, kind, options, FieldTable::default()),
    )
    .await
}

/// `n` shared (non-exclusive) queues, declared on `ch`.
async fn queues(ch: &Channel, prefix: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let q = unique(prefix);
        declare_queue(ch, &q).await;
        out.push(q);
    }
    out
}

async fn cleanup(ch: &Channel, qs: &[String]) {
    for q in qs {
        let _ = ch.queue_delete(q, QueueDeleteOptions::default()).await;
    }
}

broker_test!(default_exchange_routes_by_queue_name, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let qs = queues(&setup, "default-x", 2).await;
        assert_eq!(
            routed_to(&publisher, &setup, "", &qs[0], None, &qs).await,
            vec![0]
        );
        assert_eq!(
            routed_to(&publisher, &setup, "", &qs[1], None, &qs).await,
            vec![1]
        );
        assert!(
            routed_to(&publisher, &setup, "", "no-such-queue", None, &qs)
                .await
                .is_empty()
        );
        cleanup(&setup, &qs).await;
    })
});

broker_test!(predeclared_amq_exchanges_exist, |b| {
    run(async {
        let (_c, ch) = open(&b.url()).await;
        for (name, kind) in [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
            ("amq.rabbitmq.trace", ExchangeKind::Topic),
        ] {
            let passive = ExchangeDeclareOptions {
                passive: true,
                durable: true,
                ..opts()
            };
            declare_x(&ch, name, kind, passive)
                .await
                .unwrap_or_else(|e| panic!("{} should exist: {}", name, e));
        }
    })
});

broker_test!(
    passive_declare_of_missing_exchange_closes_channel_404,
    |b| {
        run(async {
            let (conn, ch) = open(&b.url()).await;
            let other = channel(&conn).await;
            let name = unique("missing-x");
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..opts()
            };
            let text = expect_code(
                declare_x(&ch, &name, ExchangeKind::Direct, passive).await,
                404,
            );
            assert!(text.starts_with("NOT_FOUND - no exchange"), "{:?}", text);
            wait_channel_closed(&ch).await;
            assert_channel_usable(&other).await;
            assert_connection_usable(&conn).await;
        })
    }
);

broker_test!(redeclare_exchange_with_same_properties_is_ok, |b| {
    run(async {
        let (_c, ch) = open(&b.url()).await;
        let name = unique("same-x");
        declare_x(&ch, &name, ExchangeKind::Topic, opts())
            .await
            .unwrap();
        declare_x(&ch, &name, ExchangeKind::Topic, opts())
            .await
            .unwrap();
        // A passive declare does not compare the type.
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..opts()
        };
        declare_x(&ch, &name, ExchangeKind::Fanout, passive)
            .await
            .unwrap();
        ch.exchange_delete(&name, ExchangeDeleteOptions::default())
            .await
            .unwrap();
    })
});

async fn redeclare_mismatch(
    b: &Broker,
    first: ExchangeDeclareOptions,
    second: ExchangeDeclareOptions,
    kind2: ExchangeKind,
) {
    let (conn, ch) = open(&b.url()).await;
    let other = channel(&conn).await;
    let name = unique("mismatch-x");
    declare_x(&ch, &name, ExchangeKind::Direct, first)
        .await
        .unwrap();
    let text = expect_code(declare_x(&ch, &name, kind2, second).await, 406);
    assert!(
        text.starts_with("PRECONDITION_FAILED - inequivalent arg"),
        "{:?}",
        text
    );
    wait_channel_closed(&ch).await;
    assert_channel_usable(&other).await;
    // The original exchange is untouched.
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..opts()
    };
    declare_x(&other, &name, ExchangeKind::Direct, passive)
        .await
        .unwrap();
    other
        .exchange_delete(&name, ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

broker_test!(redeclare_exchange_with_other_type_closes_channel_406, |b| {
    run(redeclare_mismatch(b, opts(), opts(), ExchangeKind::Fanout))
});

broker_test!(
    redeclare_exchange_with_other_durable_flag_closes_channel_406,
    |b| {
        run(redeclare_mismatch(
            b,
            opts(),
            ExchangeDeclareOptions {
                durable: true,
                ..opts()
            },
            ExchangeKind::Direct,
        ))
    }
);

broker_test!(
    redeclare_exchange_with_other_auto_delete_flag_closes_channel_406,
    |b| {
        run(redeclare_mismatch(
            b,
            opts(),
            ExchangeDeclareOptions {
                auto_delete: true,
                ..opts()
            },
            ExchangeKind::Direct,
        ))
    }
);

broker_test!(
    redeclare_exchange_with_other_internal_flag_closes_channel_406,
    |b| {
        run(redeclare_mismatch(
            b,
            opts(),
            ExchangeDeclareOptions {
                internal: true,
                ..opts()
            },
            ExchangeKind::Direct,
        ))
    }
);

broker_test!(declare_exchange_with_amq_prefix_closes_channel_403, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let name = format!("amq.{}", unique("mine"));
        let text = expect_code(
            declare_x(&ch, &name, ExchangeKind::Direct, opts()).await,
            403,
        );
        assert_eq!(
            text,
            format!(
                "ACCESS_REFUSED - exchange name '{}' contains reserved prefix 'amq.*'",
                name
            )
        );
        assert!(text.starts_with("ACCESS_REFUSED"), "{:?}", text);
        wait_channel_closed(&ch).await;
        assert_connection_usable(&conn).await;
        assert!(!exchange_exists(&conn, &name).await);
        // RabbitMQ checks the reserved prefix only when it would create the
        // exchange: an equivalent redeclare of amq.direct is fine...
        let ch2 = channel(&conn).await;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..opts()
        };
        declare_x(&ch2, "amq.direct", ExchangeKind::Direct, durable)
            .await
            .unwrap();
        // ...and an inequivalent one is the usual 406.
        let text = expect_code(
            declare_x(&ch2, "amq.direct", ExchangeKind::Direct, opts()).await,
            406,
        );
        assert_eq!(
            text,
            "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'amq.direct' in vhost '/': received 'false' but current is 'true'"
        );
        assert_connection_usable(&conn).await;
    })
});

broker_test!(declare_of_the_default_exchange_closes_channel_403, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..opts()
        };
        let text = expect_code(declare_x(&ch, "", ExchangeKind::Direct, durable).await, 403);
        assert!(text.starts_with("ACCESS_REFUSED"), "{:?}", text);
        assert_connection_usable(&conn).await;
    })
});

broker_test!(
    declare_exchange_of_unknown_type_closes_connection_503,
    |b| {
        run(async {
            let (conn, ch) = open(&b.url()).await;
            let name = unique("weird-x");
            let r = declare_x(
                &ch,
                &name,
                ExchangeKind::Custom("x-no-such-type".into()),
                opts(),
            )
            .await;
            // RabbitMQ: connection.close 503 COMMAND_INVALID
            // "COMMAND_INVALID - unknown exchange type 'x-no-such-type'".
            let text = expect_code(r, 503);
            assert!(
                text.starts_with("COMMAND_INVALID - unknown exchange type"),
                "{:?}",
                text
            );
            wait_connection_closed(&conn).await;
            let conn2 = connect(&b.url()).await;
            assert!(!exchange_exists(&conn2, &name).await);
        })
    }
);

broker_test!(publish_to_internal_exchange_closes_channel_403, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let name = unique("internal-x");
        let internal = ExchangeDeclareOptions {
            internal: true,
            ..opts()
        };
        declare_x(&ch, &name, ExchangeKind::Fanout, internal)
            .await
            .unwrap();
        let watch = ErrorWatch::channel(&ch);
        ch.basic_publish(
            &name,
            "",
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .unwrap();
        let text = watch.expect_code(403).await;
        assert!(
            text.starts_with("ACCESS_REFUSED - cannot publish to internal exchange"),
            "{:?}",
            text
        );
        let ch2 = channel(&conn).await;
        ch2.exchange_delete(&name, ExchangeDeleteOptions::default())
            .await
            .unwrap();
        assert_channel_usable(&ch2).await;
    })
});

broker_test!(internal_exchange_still_routes_from_a_bound_exchange, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let front = unique("front-x");
        let inner = unique("inner-x");
        declare_exchange(&setup, &front, ExchangeKind::Fanout).await;
        let internal = ExchangeDeclareOptions {
            internal: true,
            ..opts()
        };
        declare_x(&setup, &inner, ExchangeKind::Fanout, internal)
            .await
            .unwrap();
        setup
            .exchange_bind(
                &inner,
                &front,
                "",
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let qs = queues(&setup, "inner-q", 1).await;
        bind(&setup, &qs[0], &inner, "").await;
        assert_eq!(
            routed_to(&publisher, &setup, &front, "k", None, &qs).await,
            vec![0]
        );
        cleanup(&setup, &qs).await;
        setup
            .exchange_delete(&front, ExchangeDeleteOptions::default())
            .await
            .unwrap();
        setup
            .exchange_delete(&inner, ExchangeDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(
    delete_exchange_if_unused_with_bindings_closes_channel_406,
    |b| {
        run(async {
            let (conn, ch) = open(&b.url()).await;
            let x = unique("used-x");
            declare_exchange(&ch, &x, ExchangeKind::Direct).await;
            let q = declare_server_named(&ch).await;
            bind(&ch, &q, &x, "k").await;
            let r = step(
                "exchange.delete",
                ch.exchange_delete(
                    &x,
                    ExchangeDeleteOptions {
                        if_unused: true,
                        ..Default::default()
                    },
                ),
            )
            .await;
            let text = expect_code(r, 406);
            assert!(text.starts_with("PRECONDITION_FAILED"), "{:?}", text);
            wait_channel_closed(&ch).await;
            assert!(exchange_exists(&conn, &x).await);
            // Without bindings, if-unused deletes it.
            let ch2 = channel(&conn).await;
            ch2.queue_unbind(&q, &x, "k", FieldTable::default())
                .await
                .unwrap();
            ch2.exchange_delete(
                &x,
                ExchangeDeleteOptions {
                    if_unused: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            assert!(!exchange_exists(&conn, &x).await);
        })
    }
);

broker_test!(delete_of_missing_exchange_is_ok, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let x = unique("never-x");
        step(
            "exchange.delete",
            ch.exchange_delete(&x, ExchangeDeleteOptions::default()),
        )
        .await
        .expect("RabbitMQ answers delete-ok for a missing exchange");
        assert!(ch.status().connected());
        assert_connection_usable(&conn).await;
    })
});

broker_test!(
    exchange_to_exchange_binding_routes_and_unbind_stops_it,
    |b| {
        run(async {
            let (_c1, setup) = open(&b.url()).await;
            let (_c2, publisher) = open_confirming(&b.url()).await;
            let src = unique("src-x");
            let dst = unique("dst-x");
            declare_exchange(&setup, &src, ExchangeKind::Direct).await;
            declare_exchange(&setup, &dst, ExchangeKind::Topic).await;
            let qs = queues(&setup, "e2e-q", 2).await;
            bind(&setup, &qs[0], &dst, "a.*").await;
            bind(&setup, &qs[1], &src, "a.b").await;
            setup
                .exchange_bind(
                    &dst,
                    &src,
                    "a.b",
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            // src --a.b--> dst --a.*--> q0, and src --a.b--> q1 directly.
            assert_eq!(
                routed_to(&publisher, &setup, &src, "a.b", None, &qs).await,
                vec![0, 1]
            );
            assert!(routed_to(&publisher, &setup, &src, "a.c", None, &qs)
                .await
                .is_empty());
            assert_eq!(
                routed_to(&publisher, &setup, &dst, "a.c", None, &qs).await,
                vec![0]
            );
            setup
                .exchange_unbind(
                    &dst,
                    &src,
                    "a.b",
                    ExchangeUnbindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            assert_eq!(
                routed_to(&publisher, &setup, &src, "a.b", None, &qs).await,
                vec![1]
            );
            cleanup(&setup, &qs).await;
            setup
                .exchange_delete(&src, ExchangeDeleteOptions::default())
                .await
                .unwrap();
            setup
                .exchange_delete(&dst, ExchangeDeleteOptions::default())
                .await
                .unwrap();
        })
    }
);

broker_test!(exchange_bindings_never_deliver_twice_through_a_cycle, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let x1 = unique("cycle1-x");
        let x2 = unique("cycle2-x");
        declare_exchange(&setup, &x1, ExchangeKind::Fanout).await;
        declare_exchange(&setup, &x2, ExchangeKind::Fanout).await;
        setup
            .exchange_bind(
                &x2,
                &x1,
                "",
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        setup
            .exchange_bind(
                &x1,
                &x2,
                "",
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let qs = queues(&setup, "cycle-q", 2).await;
        bind(&setup, &qs[0], &x1, "").await;
        bind(&setup, &qs[1], &x2, "").await;
        // routed_to asserts at most one copy per queue.
        assert_eq!(
            routed_to(&publisher, &setup, &x1, "", None, &qs).await,
            vec![0, 1]
        );
        cleanup(&setup, &qs).await;
        setup
            .exchange_delete(&x1, ExchangeDeleteOptions::default())
            .await
            .unwrap();
        setup
            .exchange_delete(&x2, ExchangeDeleteOptions::default())
            .await
            .unwrap();
    })
});

broker_test!(bind_exchange_to_missing_exchange_closes_channel_404, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let missing = unique("missing-x");
        let r = step(
            "exchange.bind",
            ch.exchange_bind(
                "amq.fanout",
                &missing,
                "",
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await;
        expect_code(r, 404);
        assert_connection_usable(&conn).await;
    })
});

broker_test!(auto_delete_exchange_goes_when_its_last_binding_goes, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let x = unique("ad-x");
        let ad = ExchangeDeclareOptions {
            auto_delete: true,
            ..opts()
        };
        declare_x(&ch, &x, ExchangeKind::Direct, ad).await.unwrap();
        // Never bound: it stays.
        assert!(exchange_exists(&conn, &x).await);
        let q1 = declare_server_named(&ch).await;
        let q2 = declare_server_named(&ch).await;
        bind(&ch, &q1, &x, "k").await;
        bind(&ch, &q2, &x, "k").await;
        ch.queue_unbind(&q1, &x, "k", FieldTable::default())
            .await
            .unwrap();
        assert!(exchange_exists(&conn, &x).await, "one binding is left");
        ch.queue_unbind(&q2, &x, "k", FieldTable::default())
            .await
            .unwrap();
        assert!(
            !exchange_exists(&conn, &x).await,
            "auto-delete exchange should be gone"
        );
    })
});

broker_test!(
    auto_delete_exchange_goes_when_its_last_bound_queue_is_deleted,
    |b| {
        run(async {
            let (conn, ch) = open(&b.url()).await;
            let x = unique("ad-x");
            let ad = ExchangeDeclareOptions {
                auto_delete: true,
                ..opts()
            };
            declare_x(&ch, &x, ExchangeKind::Fanout, ad).await.unwrap();
            let q = declare_server_named(&ch).await;
            bind(&ch, &q, &x, "").await;
            ch.queue_delete(&q, QueueDeleteOptions::default())
                .await
                .unwrap();
            assert!(!exchange_exists(&conn, &x).await);
        })
    }
);

broker_test!(
    direct_exchange_routes_on_exact_key_to_every_matching_queue,
    |b| {
        run(async {
            let (_c1, setup) = open(&b.url()).await;
            let (_c2, publisher) = open_confirming(&b.url()).await;
            let x = unique("direct-x");
            declare_exchange(&setup, &x, ExchangeKind::Direct).await;
            let qs = queues(&setup, "direct-q", 3).await;
            bind(&setup, &qs[0], &x, "red").await;
            bind(&setup, &qs[1], &x, "red").await;
            bind(&setup, &qs[2], &x, "green").await;
            // Two bindings of one queue still deliver one copy.
            bind(&setup, &qs[2], &x, "red").await;
            bind(&setup, &qs[2], &x, "red").await;
            assert_eq!(
                routed_to(&publisher, &setup, &x, "red", None, &qs).await,
                vec![0, 1, 2]
            );
            assert_eq!(
                routed_to(&publisher, &setup, &x, "green", None, &qs).await,
                vec![2]
            );
            assert!(routed_to(&publisher, &setup, &x, "Red", None, &qs)
                .await
                .is_empty());
            assert!(routed_to(&publisher, &setup, &x, "", None, &qs)
                .await
                .is_empty());
            setup
                .queue_unbind(&qs[2], &x, "red", FieldTable::default())
                .await
                .unwrap();
            assert_eq!(
                routed_to(&publisher, &setup, &x, "red", None, &qs).await,
                vec![0, 1]
            );
            cleanup(&setup, &qs).await;
            setup
                .exchange_delete(&x, ExchangeDeleteOptions::default())
                .await
                .unwrap();
        })
    }
);

// A publisher that sends to one exchange and key again and again sees every
// change of bindings, queues or exchanges at its very next publish.
broker_test!(a_repeated_route_follows_every_binding_change, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let x = unique("repeat-x");
        declare_exchange(&setup, &x, ExchangeKind::Direct).await;
        let qs = queues(&setup, "repeat-q", 2).await;
        bind(&setup, &qs[0], &x, "k").await;
        for _ in 0..3 {
            assert_eq!(
                routed_to(&publisher, &setup, &x, "k", None, &qs).await,
                vec![0]
            );
        }
        setup
            .queue_unbind(&qs[0], &x, "k", FieldTable::default())
            .await
            .unwrap();
        assert!(routed_to(&publisher, &setup, &x, "k", None, &qs)
            .await
            .is_empty());
        bind(&setup, &qs[1], &x, "k").await;
        assert_eq!(
            routed_to(&publisher, &setup, &x, "k", None, &qs).await,
            vec![1]
        );
        setup
            .queue_delete(&qs[1], QueueDeleteOptions::default())
            .await
            .unwrap();
        assert!(routed_to(&publisher, &setup, &x, "k", None, &qs[..1])
            .await
            .is_empty());
        setup
            .exchange_delete(&x, ExchangeDeleteOptions::default())
            .await
            .unwrap();
        let watch = ErrorWatch::channel(&publisher);
        let _ = publisher
            .basic_publish(
                &x,
                "k",
                BasicPublishOptions::default(),
                b"gone",
                BasicProperties::default(),
            )
            .await;
        let text = watch.expect_code(404).await;
        assert_eq!(
            text,
            format!("NOT_FOUND - no exchange '{}' in vhost '/'", x)
        );
        cleanup(&setup, &qs).await;
    })
});

broker_test!(fanout_exchange_ignores_the_routing_key, |b| {
    run(async {
        let (_c1, setup) = open(&b.url()).await;
        let (_c2, publisher) = open_confirming(&b.url()).await;
        let x = unique("fanout-x");
        declare_exchange(&setup, &x, ExchangeKind::Fanout).await;
        let qs = queues(&setup, "fanout-q", 3).await;
        bind(&setup, &qs[0], &x, "").await;
        bind(&setup, &qs[1], &x, "whatever").await;
        assert_eq!(
            routed_to(&publisher, &setup, &x, "anything", None, &qs).await,
            vec![0, 1]
        );
        assert_eq!(
            routed_to(&publisher, &setup, &x, "", None, &qs).await,
            vec![0, 1]
        );
        cleanup(&setup, &qs).await;
        setup
            .exchange_delete(&x, ExchangeDeleteOptions::default())
            .await
            .unwrap();
    })
});

/// Binds one queue per pattern to a new topic exchange, then checks, for each
/// routing key, exactly which patterns match.
async fn topic_table(b: &Broker, patterns: &[&str], cases: &[(&str, &[&str])]) {
    let (_c1, setup) = open(&b.url()).await;
    let (_c2, publisher) = open_confirming(&b.url()).await;
    let x = unique("topic-x");
    declare_exchange(&setup, &x, ExchangeKind::Topic).await;
    let qs = queues(&setup, "topic-q", patterns.len()).await;
    for (q, p) in qs.iter().zip(patterns) {
        bind(&setup, q, &x, p).await;
    }
    for (key, expected) in cases {
        let hit = routed_to(&publisher, &setup, &x, key, None, &qs).await;
        let hit: Vec<&str> = hit.iter().map(|&i| patterns[i]).collect();
        let mut want: Vec<&str> = expected.to_vec();
        want.sort_by_key(|p| patterns.iter().position(|q| q == p).unwrap());
        assert_eq!(hit, want, "routing key {:?}", key);
    }
    cleanup(&setup, &qs).await;
    setup
        .exchange_delete(&x, ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

broker_test!(topic_star_matches_exactly_one_word, |b| {
    run(topic_table(
        b,
        &["a.*", "*.b", "*", "a.*.c", "*.*"],
        &[
            ("a.b", &["a.*", "*.b", "*.*"]),
            ("a", &["*"]),
            ("a.b.c", &["a.*.c"]),
            ("x.y", &["*.*"]),
            ("a.", &["a.*", "*.*"]),
            ("", &[]),
            ("b", &["*"]),
        ],
    ))
});

broker_test!(topic_hash_matches_zero_or_more_words, |b| {
    run(topic_table(
        b,
        &["a.#", "#.b", "a.#.b", "#.x.#"],
        &[
            ("a", &["a.#"]),
            ("a.b", &["a.#", "#.b", "a.#.b"]),
            ("b", &["#.b"]),
            ("a.x.y.b", &["a.#", "#.b", "a.#.b", "#.x.#"]),
            ("x", &["#.x.#"]),
            ("q.x", &["#.x.#"]),
            ("ab", &[]),
            ("b.a", &[]),
        ],
    ))
});

broker_test!(topic_hash_alone_matches_every_key_including_empty, |b| {
    run(topic_table(
        b,
        &["#", "#.#", ""],
        &[
            ("", &["#", "#.#", ""]),
            ("a", &["#", "#.#"]),
            ("a.b.c", &["#", "#.#"]),
            (".", &["#", "#.#"]),
        ],
    ))
});

broker_test!(topic_keys_with_empty_words_match_word_by_word, |b| {
    run(topic_table(
        b,
        &["a.*.b", "a..b", "a.#", "*.*.*", "#.b"],
        &[
            ("a..b", &["a.*.b", "a..b", "a.#", "*.*.*", "#.b"]),
            ("a.x.b", &["a.*.b", "a.#", "*.*.*", "#.b"]),
            ("a.b", &["a.#", "#.b"]),
            (".b", &["#.b"]),
        ],
    ))
});

broker_test!(topic_matching_is_case_sensitive_and_literal, |b| {
    run(topic_table(
        b,
        &["stock.usd.nyse", "stock.*.nyse"],
        &[
            ("stock.usd.nyse", &["stock.usd.nyse", "stock.*.nyse"]),
            ("Stock.usd.nyse", &[]),
            ("stock.eur.nyse", &["stock.*.nyse"]),
            ("stock.usd.nyse.x", &[]),
        ],
    ))
});

/// One queue per binding-argument table on a new headers exchange; returns
/// which bindings match each message-header table.
async fn headers_table(b: &Broker, bindings: &[FieldTable], cases: &[(FieldTable, Vec<usize>)]) {
    let (_c1, setup) = open(&b.url()).await;
    let (_c2, publisher) = open_confirming(&b.url()).await;
    let x = unique("headers-x");
    declare_exchange(&setup, &x, ExchangeKind::Headers).await;
    let qs = queues(&setup, "headers-q", bindings.len()).await;
    for (q, args) in qs.iter().zip(bindings) {
        bind_with(&setup, q, &x, "", args.clone()).await;
    }
    for (i, (headers, expected)) in cases.iter().enumerate() {
        let hit = routed_to(
            &publisher,
            &setup,
            &x,
            "ignored",
            Some(headers.clone()),
            &qs,
        )
        .await;
        assert_eq!(&hit, expected, "case {} headers {:?}", i, headers);
    }
    cleanup(&setup, &qs).await;
    setup
        .exchange_delete(&x, ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

fn int(v: i32) -> AMQPValue {
    AMQPValue::LongInt(v)
}

broker_test!(headers_exchange_x_match_all_and_any, |b| {
    run(headers_table(
        b,
        &[
            table(&[
                ("x-match", ls("all")),
                ("format", ls("pdf")),
                ("type", ls("report")),
            ]),
            table(&[
                ("x-match", ls("any")),
                ("format", ls("pdf")),
                ("type", ls("report")),
            ]),
            // x-match absent means all.
            table(&[("format", ls("pdf"))]),
        ],
        &[
            (
                table(&[("format", ls("pdf")), ("type", ls("report"))]),
                vec![0, 1, 2],
            ),
            (table(&[("format", ls("pdf"))]), vec![1, 2]),
            (table(&[("type", ls("report")), ("extra", int(1))]), vec![1]),
            (table(&[("format", ls("zip")), ("type", ls("log"))]), vec![]),
            (table(&[]), vec![]),
        ],
    ))
});

broker_test!(
    headers_exchange_all_with_no_other_arguments_matches_everything,
    |b| {
        run(headers_table(
            b,
            &[
                table(&[("x-match", ls("all"))]),
                table(&[("x-match", ls("any"))]),
            ],
            &[(table(&[("a", int(1))]), vec![0]), (table(&[]), vec![0])],
        ))
    }
);

broker_test!(headers_exchange_ignores_x_headers_unless_asked, |b| {
    run(headers_table(
        b,
        &[
            table(&[("x-match", ls("any")), ("x-tenant", ls("blue"))]),
            table(&[
                ("x-match", ls("all")),
                ("x-tenant", ls("blue")),
                ("k", int(1)),
            ]),
        ],
        &[
            // x- prefixed binding keys are not compared with all/any.
            (table(&[("x-tenant", ls("blue"))]), vec![]),
            (table(&[("k", int(1))]), vec![1]),
            (table(&[("k", int(1)), ("x-tenant", ls("red"))]), vec![1]),
        ],
    ))
});

broker_test!(
    headers_exchange_any_with_x_and_all_with_x_compare_x_headers,
    |b| {
        run(headers_table(
            b,
            &[
                table(&[
                    ("x-match", ls("any-with-x")),
                    ("x-tenant", ls("blue")),
                    ("k", int(1)),
                ]),
                table(&[
                    ("x-match", ls("all-with-x")),
                    ("x-tenant", ls("blue")),
                    ("k", int(1)),
                ]),
            ],
            &[
                (table(&[("x-tenant", ls("blue"))]), vec![0]),
                (table(&[("k", int(1))]), vec![0]),
                (
                    table(&[("k", int(1)), ("x-tenant", ls("blue"))]),
                    vec![0, 1],
                ),
                (table(&[("k", int(2)), ("x-tenant", ls("red"))]), vec![]),
            ],
        ))
    }
);

broker_test!(
    headers_exchange_void_binding_value_matches_on_presence,
    |b| {
        run(headers_table(
            b,
            &[table(&[("x-match", ls("all")), ("flag", AMQPValue::Void)])],
            &[
                (table(&[("flag", ls("anything"))]), vec![0]),
                (table(&[("flag", int(7))]), vec![0]),
                (table(&[("other", int(7))]), vec![]),
            ],
        ))
    }
);

broker_test!(
    headers_exchange_with_message_without_headers_matches_nothing_with_arguments,
    |b| {
        run(async {
            let (_c1, setup) = open(&b.url()).await;
            let (_c2, publisher) = open_confirming(&b.url()).await;
            let qs = queues(&setup, "amqmatch-q", 1).await;
            bind_with(
                &setup,
                &qs[0],
                "amq.match",
                "",
                table(&[("x-match", ls("any")), ("k", ls("v"))]),
            )
            .await;
            assert!(routed_to(&publisher, &setup, "amq.match", "", None, &qs)
                .await
                .is_empty());
            assert_eq!(
                routed_to(
                    &publisher,
                    &setup,
                    "amq.match",
                    "",
                    Some(table(&[("k", ls("v"))])),
                    &qs
                )
                .await,
                vec![0]
            );
            cleanup(&setup, &qs).await;
        })
    }
);

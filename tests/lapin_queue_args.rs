//! Queue arguments through lapin: each argument accepted with valid values,
//! each refused (406, RabbitMQ's exact text) with a wrong type or value, and
//! the texts of a redeclaration whose arguments differ. The expected texts are
//! RabbitMQ 3.10's own: run with
//! `WARREN_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f` to check them.
//!
//! lapin sends a table's keys in sorted order, so "table order" below is
//! alphabetical.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin::types::{ByteArray, DecimalValue};
use lapin_support::*;

// ---------------------------------------------------------------- values

fn byte(v: i8) -> AMQPValue {
    AMQPValue::ShortShortInt(v)
}
fn ubyte(v: u8) -> AMQPValue {
    AMQPValue::ShortShortUInt(v)
}
fn short(v: i16) -> AMQPValue {
    AMQPValue::ShortInt(v)
}
fn ushort(v: u16) -> AMQPValue {
    AMQPValue::ShortUInt(v)
}
fn int(v: i32) -> AMQPValue {
    AMQPValue::LongInt(v)
}
fn uint(v: u32) -> AMQPValue {
    AMQPValue::LongUInt(v)
}
fn long(v: i64) -> AMQPValue {
    AMQPValue::LongLongInt(v)
}
fn boolean(v: bool) -> AMQPValue {
    AMQPValue::Boolean(v)
}

/// One value of every type that is not an integer, with RabbitMQ's name for it.
fn non_integers() -> Vec<(AMQPValue, &'static str)> {
    vec![
        (ls("10"), "longstr"),
        (boolean(true), "bool"),
        (AMQPValue::Double(10.0), "double"),
        (AMQPValue::Float(10.0), "float"),
        (AMQPValue::Timestamp(10), "timestamp"),
        (
            AMQPValue::DecimalValue(DecimalValue {
                scale: 0,
                value: 10,
            }),
            "decimal",
        ),
        (AMQPValue::ByteArray(ByteArray::from(vec![1u8])), "binary"),
        (AMQPValue::Void, "void"),
        (
            AMQPValue::FieldArray(FieldArray::from(vec![int(10)])),
            "array",
        ),
        (AMQPValue::FieldTable(table(&[("a", int(10))])), "table"),
    ]
}

/// Table entries, as `table` takes them.
type Args = Vec<(&'static str, AMQPValue)>;

fn qopts() -> QueueDeclareOptions {
    QueueDeclareOptions::default()
}

/// Exclusive, so whatever a test leaves behind goes with its connection.
fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..qopts()
    }
}

// ---------------------------------------------------------------- texts

/// RabbitMQ's cut of a reply text: over 255 bytes, the first 252 and "...".
fn reply(text: String) -> String {
    if text.len() > 255 {
        format!("{}...", &text[..252])
    } else {
        text
    }
}

fn invalid(q: &str, key: &str, term: &str) -> String {
    reply(format!(
        "PRECONDITION_FAILED - invalid arg '{key}' for queue '{q}' in vhost '/': {term}"
    ))
}

fn expected_integer(q: &str, key: &str, type_name: &str) -> String {
    invalid(q, key, &format!("\"expected integer, got {type_name}\""))
}

fn inequivalent(q: &str, key: &str, received: &str, current: &str) -> String {
    reply(format!(
        "PRECONDITION_FAILED - inequivalent arg '{key}' for queue '{q}' in vhost '/': \
         received {received} but current is {current}"
    ))
}

// ---------------------------------------------------------------- helpers

/// Declares `name` with `args` on a fresh channel of `conn` and expects a 406
/// that closes only that channel and creates nothing; returns the reply text.
async fn refused(
    conn: &Connection,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> String {
    let ch = channel(conn).await;
    let text = expect_code(declare_queue_with(&ch, name, options, args).await, 406);
    wait_channel_closed(&ch).await;
    if !name.is_empty() {
        assert!(
            !queue_exists(conn, name).await,
            "a refused declare created {name}"
        );
    }
    text
}

/// Declares `name` with `args` on a fresh channel of `conn`, expecting success.
async fn accepted(conn: &Connection, name: &str, options: QueueDeclareOptions, args: FieldTable) {
    let ch = channel(conn).await;
    declare_queue_with(&ch, name, options, args.clone())
        .await
        .unwrap_or_else(|e| panic!("declare {name} with {args:?}: {e}"));
    let _ = ch.close(200, "ok").await;
}

async fn close(conn: Connection) {
    let _ = step("connection.close", conn.close(200, "ok")).await;
}

// ---------------------------------------------------------------- accepted

broker_test!(every_argument_accepts_its_valid_values, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        let max_ms = 315_360_000_000i64;
        let cases: Vec<(&str, AMQPValue)> = vec![
            ("x-message-ttl", int(0)),
            ("x-message-ttl", long(max_ms)),
            ("x-expires", int(1)),
            ("x-expires", long(max_ms)),
            ("x-max-length", int(0)),
            ("x-max-length", long(i64::MAX)),
            ("x-max-length-bytes", int(0)),
            ("x-max-length-bytes", uint(u32::MAX)),
            ("x-max-priority", int(0)),
            ("x-max-priority", int(255)),
            ("x-overflow", ls("drop-head")),
            ("x-overflow", ls("reject-publish")),
            ("x-overflow", ls("reject-publish-dlx")),
            ("x-dead-letter-exchange", ls("")),
            ("x-dead-letter-exchange", ls("no-such-exchange")),
            ("x-single-active-consumer", boolean(true)),
            ("x-single-active-consumer", boolean(false)),
            ("x-queue-mode", ls("default")),
            ("x-queue-mode", ls("lazy")),
            ("x-queue-version", int(1)),
            ("x-queue-version", byte(2)),
            ("x-queue-type", ls("classic")),
            ("x-queue-master-locator", ls("anything")),
            // Unknown arguments, x- or not, are ignored whatever their type.
            ("x-no-such-argument", AMQPValue::Void),
            ("plain", int(-1)),
        ];
        for (key, value) in cases {
            let q = unique("qargs-ok");
            accepted(&conn, &q, exclusive(), table(&[(key, value)])).await;
        }
        // Every integer type, for every integer argument.
        for key in [
            "x-message-ttl",
            "x-expires",
            "x-max-length",
            "x-max-length-bytes",
            "x-max-priority",
        ] {
            for value in [
                byte(7),
                ubyte(7),
                short(7),
                ushort(7),
                int(7),
                uint(7),
                long(7),
            ] {
                let q = unique("qargs-int");
                accepted(&conn, &q, exclusive(), table(&[(key, value)])).await;
            }
        }
        // All of them at once, then the same again: equivalent.
        let all = table(&[
            ("x-message-ttl", int(60_000)),
            ("x-expires", int(600_000)),
            ("x-max-length", int(10)),
            ("x-max-length-bytes", int(1 << 20)),
            ("x-max-priority", int(9)),
            ("x-overflow", ls("reject-publish")),
            ("x-dead-letter-exchange", ls("amq.direct")),
            ("x-dead-letter-routing-key", ls("dead")),
            ("x-single-active-consumer", boolean(true)),
            ("x-queue-mode", ls("lazy")),
            ("x-queue-version", int(2)),
            ("x-queue-type", ls("classic")),
        ]);
        let q = unique("qargs-all");
        accepted(&conn, &q, exclusive(), all.clone()).await;
        accepted(&conn, &q, exclusive(), all).await;
        assert!(queue_exists(&conn, &q).await);
        close(conn).await;
    })
});

broker_test!(passive_declare_ignores_arguments, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        let q = unique("qargs-passive");
        accepted(&conn, &q, exclusive(), FieldTable::default()).await;
        let passive = QueueDeclareOptions {
            passive: true,
            ..qopts()
        };
        accepted(&conn, &q, passive, table(&[("x-message-ttl", int(-1))])).await;
        close(conn).await;
    })
});

// ---------------------------------------------------------------- refused

broker_test!(integer_arguments_refuse_every_other_type, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        let q = unique("qargs-type");
        for key in [
            "x-message-ttl",
            "x-expires",
            "x-max-length",
            "x-max-length-bytes",
            "x-max-priority",
            "x-queue-version",
        ] {
            for (value, type_name) in non_integers() {
                let text = refused(&conn, &q, exclusive(), table(&[(key, value)])).await;
                assert_eq!(text, expected_integer(&q, key, type_name));
            }
        }
        close(conn).await;
    })
});

broker_test!(integer_arguments_refuse_negative_values, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        let q = unique("qargs-neg");
        for key in [
            "x-message-ttl",
            "x-expires",
            "x-max-length",
            "x-max-length-bytes",
            "x-max-priority",
            "x-queue-version",
        ] {
            for (value, n) in [
                (byte(-1), -1i64),
                (short(-300), -300),
                (int(-70_000), -70_000),
                (long(i64::MIN), i64::MIN),
            ] {
                let text = refused(&conn, &q, exclusive(), table(&[(key, value)])).await;
                assert_eq!(text, invalid(&q, key, &format!("{{value_negative,{n}}}")));
            }
        }
        close(conn).await;
    })
});

broker_test!(integer_arguments_refuse_values_out_of_range, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        let q = unique("qargs-range");
        let cases: Vec<(&str, AMQPValue, &str)> = vec![
            ("x-expires", int(0), "{value_zero,0}"),
            ("x-expires", ubyte(0), "{value_zero,0}"),
            ("x-expires", long(0), "{value_zero,0}"),
            (
                "x-expires",
                long(315_360_000_001),
                "{value_too_large,315360000001}",
            ),
            (
                "x-message-ttl",
                long(315_360_000_001),
                "{value_too_large,315360000001}",
            ),
            (
                "x-message-ttl",
                long(i64::MAX),
                "{value_too_large,9223372036854775807}",
            ),
            ("x-max-priority", short(256), "{max_value_exceeded,256}"),
            (
                "x-max-priority",
                uint(u32::MAX),
                "{max_value_exceeded,4294967295}",
            ),
            (
                "x-queue-version",
                int(3),
                "\"unsupported queue version '3'\"",
            ),
            (
                "x-queue-version",
                int(0),
                "\"unsupported queue version '0'\"",
            ),
        ];
        for (key, value, term) in cases {
            let text = refused(&conn, &q, exclusive(), table(&[(key, value)])).await;
            assert_eq!(text, invalid(&q, key, term));
        }
        close(conn).await;
    })
});

broker_test!(
    string_and_bool_arguments_refuse_wrong_types_and_values,
    |b| {
        run(async {
            let conn = connect(&b.url()).await;
            let q = unique("qargs-str");
            let cases: Vec<(Args, &str, &str)> = vec![
                (
                    vec![("x-overflow", ls("drop-tail"))],
                    "x-overflow",
                    "invalid_overflow",
                ),
                (
                    vec![("x-overflow", ls(""))],
                    "x-overflow",
                    "invalid_overflow",
                ),
                (
                    vec![("x-overflow", int(1))],
                    "x-overflow",
                    "{unacceptable_type,signedint}",
                ),
                (
                    vec![("x-dead-letter-routing-key", ls("k"))],
                    "x-dead-letter-routing-key",
                    "routing_key_but_no_dlx_defined",
                ),
                (
                    vec![
                        ("x-dead-letter-exchange", ls("dlx")),
                        ("x-dead-letter-routing-key", int(1)),
                    ],
                    "x-dead-letter-routing-key",
                    "{unacceptable_type,signedint}",
                ),
                (
                    vec![("x-single-active-consumer", ls("true"))],
                    "x-single-active-consumer",
                    "{unacceptable_type,longstr}",
                ),
                (
                    vec![("x-single-active-consumer", ubyte(1))],
                    "x-single-active-consumer",
                    "{unacceptable_type,unsignedbyte}",
                ),
                (
                    vec![("x-queue-mode", ls("eager"))],
                    "x-queue-mode",
                    "\"unsupported queue mode 'eager'\"",
                ),
                // Erlang's ~p: printable Latin-1 (UTF-8 "é" is 0xC3 0xA9) is quoted
                // and escaped; anything else is a list of character codes.
                (
                    vec![("x-queue-mode", ls("é\"\\"))],
                    "x-queue-mode",
                    "\"unsupported queue mode 'é\\\"\\\\'\"",
                ),
                (
                    vec![("x-queue-mode", ls("€"))],
                    "x-queue-mode",
                    "[117,110,115,117,112,112,111,114,116,101,100,32,113,117,101,117,101,32,\
                     109,111,100,101,32,39,226,130,172,39]",
                ),
                (
                    vec![("x-queue-mode", boolean(true))],
                    "x-queue-mode",
                    "{unacceptable_type,bool}",
                ),
                (
                    vec![("x-queue-type", ls("fancy"))],
                    "x-queue-type",
                    "\"unsupported queue type 'fancy'\"",
                ),
                (
                    vec![("x-queue-type", long(1))],
                    "x-queue-type",
                    "{unacceptable_type,long}",
                ),
            ];
            for (args, key, term) in cases {
                let text = refused(&conn, &q, exclusive(), table(&args)).await;
                assert_eq!(text, invalid(&q, key, term));
            }
            close(conn).await;
        })
    }
);

broker_test!(dead_letter_exchange_of_another_type_is_refused_first, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        let q = unique("qargs-dlx");
        for (value, type_name) in [
            (int(1), "signedint"),
            (boolean(false), "bool"),
            (
                AMQPValue::ByteArray(ByteArray::from(b"dlx".to_vec())),
                "binary",
            ),
        ] {
            // Checked before every other argument, whatever the table's order.
            let args = table(&[
                ("x-dead-letter-exchange", value),
                ("x-expires", int(0)),
                ("x-message-ttl", int(-1)),
            ]);
            let text = refused(&conn, &q, exclusive(), args).await;
            assert_eq!(
                text,
                format!(
                    "PRECONDITION_FAILED - invalid type '{type_name}' for arg \
                     'x-dead-letter-exchange' in queue '{q}' in vhost '/'"
                )
            );
        }
        close(conn).await;
    })
});

broker_test!(arguments_are_checked_in_rabbitmq_order, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        let q = unique("qargs-order");
        // x-queue-type first, then RabbitMQ's own list: x-expires before x-max-length.
        let cases: Vec<(Args, String)> = vec![
            (
                vec![("x-max-length", int(-1)), ("x-expires", int(0))],
                invalid(&q, "x-expires", "{value_zero,0}"),
            ),
            (
                vec![("x-message-ttl", int(-1)), ("x-queue-type", ls("fancy"))],
                invalid(&q, "x-queue-type", "\"unsupported queue type 'fancy'\""),
            ),
            (
                vec![
                    ("x-dead-letter-routing-key", ls("k")),
                    ("x-max-priority", int(256)),
                ],
                invalid(
                    &q,
                    "x-dead-letter-routing-key",
                    "routing_key_but_no_dlx_defined",
                ),
            ),
            (
                vec![("x-max-priority", int(256)), ("x-overflow", ls("no"))],
                invalid(&q, "x-max-priority", "{max_value_exceeded,256}"),
            ),
            // Other queue types' arguments come after all of the classic ones.
            (
                vec![("x-delivery-limit", int(5)), ("x-overflow", ls("no"))],
                invalid(&q, "x-overflow", "invalid_overflow"),
            ),
        ];
        for (args, expected) in cases {
            let text = refused(&conn, &q, exclusive(), table(&args)).await;
            assert_eq!(text, expected);
        }
        close(conn).await;
    })
});

broker_test!(
    other_queue_types_arguments_are_refused_on_classic_queues,
    |b| {
        run(async {
            let conn = connect(&b.url()).await;
            let q = unique("qargs-qq");
            for (key, value) in [
                ("x-delivery-limit", int(5)),
                ("x-dead-letter-strategy", ls("at-least-once")),
                ("x-max-in-memory-length", int(5)),
                ("x-max-in-memory-bytes", int(5)),
                ("x-quorum-initial-group-size", int(3)),
                ("x-queue-leader-locator", ls("balanced")),
                ("x-max-age", ls("1D")),
                ("x-stream-max-segment-size-bytes", int(5)),
                ("x-initial-cluster-size", int(3)),
            ] {
                for args in [
                    table(&[(key, value.clone())]),
                    table(&[(key, value), ("x-queue-type", ls("classic"))]),
                ] {
                    let text = refused(&conn, &q, exclusive(), args).await;
                    assert_eq!(
                        text,
                        format!(
                        "PRECONDITION_FAILED - invalid arg '{key}' for queue '{q}' in vhost '/' \
                         of queue type rabbit_classic_queue"
                    )
                    );
                }
            }
            close(conn).await;
        })
    }
);

broker_test!(quorum_and_stream_queue_types, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        // Server-named: RabbitMQ refuses these before anything else, and so does warren.
        for (kind, module) in [
            ("quorum", "rabbit_quorum_queue"),
            ("stream", "rabbit_stream_queue"),
        ] {
            let text = refused(&conn, "", qopts(), table(&[("x-queue-type", ls(kind))])).await;
            assert_eq!(
                text,
                format!(
                    "PRECONDITION_FAILED - Cannot declare a server-named queue for type {module}"
                )
            );
        }
        let durable = QueueDeclareOptions {
            durable: true,
            ..qopts()
        };
        // Quorum queues are accepted (tests/lapin_quorum_queues.rs has their rules).
        let q = unique("qargs-kind");
        accepted(&conn, &q, durable, table(&[("x-queue-type", ls("quorum"))])).await;
        let ch = channel(&conn).await;
        step(
            "queue.delete",
            ch.queue_delete(&q, QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");
        let q = unique("qargs-kind");
        let args = table(&[("x-queue-type", ls("stream"))]);
        if b.is_external() {
            // RabbitMQ has streams.
            accepted(&conn, &q, durable, args).await;
            let ch = channel(&conn).await;
            step(
                "queue.delete",
                ch.queue_delete(&q, QueueDeleteOptions::default()),
            )
            .await
            .expect("queue.delete");
        } else {
            // warren has no streams, and says so.
            let text = refused(&conn, &q, durable, args).await;
            assert_eq!(
                text,
                format!(
                    "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{q}' in \
                     vhost '/': queue type 'stream' is not supported by warren, which has \
                     classic and quorum queues only"
                )
            );
        }
        close(conn).await;
    })
});

broker_test!(long_reply_texts_are_cut_as_rabbitmq_cuts_them, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        let q = format!("{}-{}", unique("qargs-long"), "n".repeat(200));
        let text = refused(&conn, &q, exclusive(), table(&[("x-message-ttl", int(-1))])).await;
        assert_eq!(text.len(), 255);
        assert!(text.ends_with("nnn..."), "{text:?}");
        assert_eq!(text, invalid(&q, "x-message-ttl", "{value_negative,-1}"));
        close(conn).await;
    })
});

// ---------------------------------------------------------------- equivalence

/// Declares `q` with `first`, then again with `second` on a new channel, and
/// returns the 406 text.
async fn redeclare_refused(
    conn: &Connection,
    q: &str,
    first: Vec<(&str, AMQPValue)>,
    second: Vec<(&str, AMQPValue)>,
) -> String {
    accepted(conn, q, exclusive(), table(&first)).await;
    let ch = channel(conn).await;
    let text = expect_code(
        declare_queue_with(&ch, q, exclusive(), table(&second)).await,
        406,
    );
    wait_channel_closed(&ch).await;
    assert!(queue_exists(conn, q).await, "{q} went away");
    text
}

broker_test!(redeclare_with_other_value_reports_both_values, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        let cases: Vec<(&str, AMQPValue, AMQPValue, &str, &str)> = vec![
            ("x-expires", int(60_000), int(70_000), "'70000'", "'60000'"),
            ("x-message-ttl", int(1000), long(2000), "'2000'", "'1000'"),
            (
                "x-dead-letter-exchange",
                ls("dlx-a"),
                ls("dlx-b"),
                "'dlx-b'",
                "'dlx-a'",
            ),
            ("x-max-length", int(10), byte(20), "'20'", "'10'"),
            ("x-max-length-bytes", int(10), uint(20), "'20'", "'10'"),
            ("x-max-priority", int(5), ubyte(10), "'10'", "'5'"),
            (
                "x-overflow",
                ls("drop-head"),
                ls("reject-publish"),
                "'reject-publish'",
                "'drop-head'",
            ),
            (
                "x-queue-mode",
                ls("default"),
                ls("lazy"),
                "'lazy'",
                "'default'",
            ),
            ("x-queue-version", int(1), int(2), "'2'", "'1'"),
            (
                "x-single-active-consumer",
                boolean(true),
                boolean(false),
                "'false'",
                "'true'",
            ),
            (
                "x-queue-type",
                ls("classic"),
                ls("quorum"),
                "'quorum'",
                "'classic'",
            ),
            (
                "x-queue-master-locator",
                ls("min-masters"),
                ls("client-local"),
                "'client-local'",
                "'min-masters'",
            ),
            // Types compared by value: a string and an integer print alike.
            ("x-message-ttl", int(1000), ls("1000"), "'1000'", "'1000'"),
            (
                "x-message-ttl",
                long(1000),
                AMQPValue::Double(1000.0),
                "'1.0e3'",
                "'1000'",
            ),
            // A float is widened to a double before it is printed.
            (
                "x-message-ttl",
                long(1),
                AMQPValue::Float(1.1),
                "'1.100000023841858'",
                "'1'",
            ),
            // Void's value is `undefined`, which RabbitMQ prints as if it were missing.
            ("x-max-length", long(1), AMQPValue::Void, "none", "'1'"),
            (
                "x-max-length",
                long(1),
                AMQPValue::FieldTable(table(&[("a", int(1))])),
                "'[{<<\"a\">>,signedint,1}]'",
                "'1'",
            ),
        ];
        for (key, first, second, received, current) in cases {
            let q = unique("qargs-neq");
            let text = redeclare_refused(&conn, &q, vec![(key, first)], vec![(key, second)]).await;
            assert_eq!(text, inequivalent(&q, key, received, current));
        }
        // The routing key needs its exchange on both sides.
        let q = unique("qargs-neq");
        let text = redeclare_refused(
            &conn,
            &q,
            vec![
                ("x-dead-letter-exchange", ls("dlx")),
                ("x-dead-letter-routing-key", ls("a")),
            ],
            vec![
                ("x-dead-letter-exchange", ls("dlx")),
                ("x-dead-letter-routing-key", ls("b")),
            ],
        )
        .await;
        assert_eq!(
            text,
            inequivalent(&q, "x-dead-letter-routing-key", "'b'", "'a'")
        );
        close(conn).await;
    })
});

broker_test!(
    redeclare_adding_or_dropping_an_argument_reports_its_type,
    |b| {
        run(async {
            let conn = connect(&b.url()).await;
            let cases: Vec<(&str, AMQPValue, &str)> = vec![
                (
                    "x-expires",
                    int(60_000),
                    "the value '60000' of type 'signedint'",
                ),
                (
                    "x-message-ttl",
                    long(2000),
                    "the value '2000' of type 'long'",
                ),
                (
                    "x-dead-letter-exchange",
                    ls("dlx"),
                    "the value 'dlx' of type 'longstr'",
                ),
                ("x-max-length", short(3), "the value '3' of type 'short'"),
                (
                    "x-max-length-bytes",
                    uint(4096),
                    "the value '4096' of type 'unsignedint'",
                ),
                (
                    "x-max-priority",
                    ubyte(10),
                    "the value '10' of type 'unsignedbyte'",
                ),
                (
                    "x-overflow",
                    ls("reject-publish-dlx"),
                    "the value 'reject-publish-dlx' of type 'longstr'",
                ),
                (
                    "x-queue-mode",
                    ls("lazy"),
                    "the value 'lazy' of type 'longstr'",
                ),
                ("x-queue-version", byte(2), "the value '2' of type 'byte'"),
                (
                    "x-single-active-consumer",
                    boolean(true),
                    "the value 'true' of type 'bool'",
                ),
                (
                    "x-queue-master-locator",
                    ls("random"),
                    "the value 'random' of type 'longstr'",
                ),
            ];
            for (key, value, described) in cases {
                let q = unique("qargs-add");
                let text = redeclare_refused(&conn, &q, vec![], vec![(key, value.clone())]).await;
                assert_eq!(text, inequivalent(&q, key, described, "none"));
                let q = unique("qargs-drop");
                let text = redeclare_refused(&conn, &q, vec![(key, value)], vec![]).await;
                assert_eq!(text, inequivalent(&q, key, "none", described));
            }
            // The routing key, with the exchange on both sides.
            let q = unique("qargs-add");
            let text = redeclare_refused(
                &conn,
                &q,
                vec![("x-dead-letter-exchange", ls("dlx"))],
                vec![
                    ("x-dead-letter-exchange", ls("dlx")),
                    ("x-dead-letter-routing-key", ls("rk")),
                ],
            )
            .await;
            assert_eq!(
                text,
                inequivalent(
                    &q,
                    "x-dead-letter-routing-key",
                    "the value 'rk' of type 'longstr'",
                    "none"
                )
            );
            // A non-classic x-queue-type on an existing classic queue.
            let q = unique("qargs-add");
            let text =
                redeclare_refused(&conn, &q, vec![], vec![("x-queue-type", ls("quorum"))]).await;
            assert_eq!(
                text,
                inequivalent(
                    &q,
                    "x-queue-type",
                    "the value 'quorum' of type 'longstr'",
                    "none"
                )
            );
            close(conn).await;
        })
    }
);

broker_test!(redeclare_compares_arguments_but_does_not_check_them, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        // An invalid value on an existing queue is an equivalence failure, not a
        // validation failure.
        let q = unique("qargs-recheck");
        let text = redeclare_refused(&conn, &q, vec![], vec![("x-message-ttl", int(-1))]).await;
        assert_eq!(
            text,
            inequivalent(
                &q,
                "x-message-ttl",
                "the value '-1' of type 'signedint'",
                "none"
            )
        );
        // The first key in RabbitMQ's order is the one reported.
        let q = unique("qargs-recheck");
        let text = redeclare_refused(
            &conn,
            &q,
            vec![],
            vec![("x-max-length", int(1)), ("x-expires", int(1000))],
        )
        .await;
        assert_eq!(
            text,
            inequivalent(
                &q,
                "x-expires",
                "the value '1000' of type 'signedint'",
                "none"
            )
        );
        // Keys outside RabbitMQ's list are neither checked nor compared.
        let q = unique("qargs-recheck");
        accepted(&conn, &q, exclusive(), FieldTable::default()).await;
        accepted(
            &conn,
            &q,
            exclusive(),
            table(&[
                ("x-delivery-limit", ls("not even an integer")),
                ("x-no-such-argument", int(1)),
            ]),
        )
        .await;
        close(conn).await;
    })
});

broker_test!(equal_values_of_other_types_are_equivalent, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        let q = unique("qargs-eq");
        accepted(
            &conn,
            &q,
            exclusive(),
            table(&[("x-message-ttl", long(100))]),
        )
        .await;
        // Every integer width, and even a timestamp: RabbitMQ compares the numbers.
        for value in [
            byte(100),
            ubyte(100),
            short(100),
            ushort(100),
            int(100),
            uint(100),
            long(100),
            AMQPValue::Timestamp(100),
        ] {
            accepted(&conn, &q, exclusive(), table(&[("x-message-ttl", value)])).await;
        }
        // A longstr and a byte array with the same bytes are the same Erlang binary.
        let q = unique("qargs-eq");
        accepted(
            &conn,
            &q,
            exclusive(),
            table(&[("x-dead-letter-exchange", ls("dlx"))]),
        )
        .await;
        accepted(
            &conn,
            &q,
            exclusive(),
            table(&[(
                "x-dead-letter-exchange",
                AMQPValue::ByteArray(ByteArray::from(b"dlx".to_vec())),
            )]),
        )
        .await;
        // A missing x-queue-type is "classic", both ways.
        let q = unique("qargs-eq");
        accepted(&conn, &q, exclusive(), FieldTable::default()).await;
        accepted(
            &conn,
            &q,
            exclusive(),
            table(&[("x-queue-type", ls("classic"))]),
        )
        .await;
        let q = unique("qargs-eq");
        accepted(
            &conn,
            &q,
            exclusive(),
            table(&[("x-queue-type", ls("classic"))]),
        )
        .await;
        accepted(&conn, &q, exclusive(), FieldTable::default()).await;
        close(conn).await;
    })
});

broker_test!(redeclare_with_a_different_decimal, |b| {
    run(async {
        // RabbitMQ prints a differing value with rabbit_misc:val/1, which takes
        // the decimal {Scale,Value} for a {Type,Value} pair and crashes on it:
        // 541 INTERNAL_ERROR closes the connection. warren answers 406 and prints
        // the decimal as Erlang would.
        let conn = connect(&b.url()).await;
        let q = unique("qargs-decimal");
        accepted(&conn, &q, exclusive(), table(&[("x-max-length", long(1))])).await;
        let ch = channel(&conn).await;
        let decimal = AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 5 });
        let result =
            declare_queue_with(&ch, &q, exclusive(), table(&[("x-max-length", decimal)])).await;
        if b.is_external() {
            expect_code(result, 541);
            wait_connection_closed(&conn).await;
        } else {
            let text = expect_code(result, 406);
            assert_eq!(text, inequivalent(&q, "x-max-length", "'{2,5}'", "'1'"));
            wait_channel_closed(&ch).await;
            assert_connection_usable(&conn).await;
            close(conn).await;
        }
    })
});

broker_test!(server_named_queue_of_an_unknown_type, |b| {
    run(async {
        // RabbitMQ looks the type up to decide whether it may name the queue,
        // and crashes on a type it does not know (541, connection closed). warren
        // refuses it like any other bad x-queue-type, with a 406.
        for value in [ls("fancy"), int(1)] {
            let conn = connect(&b.url()).await;
            let ch = channel(&conn).await;
            let result =
                declare_queue_with(&ch, "", qopts(), table(&[("x-queue-type", value)])).await;
            if b.is_external() {
                expect_code(result, 541);
                wait_connection_closed(&conn).await;
            } else {
                let text = expect_code(result, 406);
                assert!(
                    text.starts_with(
                        "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'amq.gen-"
                    ),
                    "{text}"
                );
                wait_channel_closed(&ch).await;
                assert_connection_usable(&conn).await;
                close(conn).await;
            }
        }
    })
});

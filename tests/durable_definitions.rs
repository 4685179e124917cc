//! Durable definitions survive a restart and a kill -9; `--definitions`
//! imports a RabbitMQ export; a bad definitions file stops the broker with a
//! clear message.
//!
//! Each test starts the real broker (1 and 2 shards), drives it with lapin,
//! restarts it on the same data directory and port (SIGTERM or SIGKILL, then
//! start again), and checks exactly what came back: passive declares,
//! publishing through the restored bindings, argument equivalence on
//! redeclare, and the definitions file, which every start brings up to date
//! with the definitions log (`definitions.log`, the changes made since the
//! file was last written).

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Generous for a restart (SIGTERM, exit, start again) on a loaded machine.
const RESTART_TEST_DEADLINE: Duration = Duration::from_secs(60);

/// `$name_shards_1` and `$name_shards_2` calling `$body(shards)`.
macro_rules! with_shards {
    ($name:ident, $body:ident) => {
        paste::paste! {
            #[test]
            fn [<$name _shards_1>]() {
                $body(1);
            }

            #[test]
            fn [<$name _shards_2>]() {
                $body(2);
            }
        }
    };
}

fn export_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rabbitmq-3.10.8-export.json")
}

fn definitions_file(broker: &Broker) -> PathBuf {
    broker
        .data_dir()
        .expect("a warren child")
        .join("definitions.json")
}

fn definitions_log(broker: &Broker) -> PathBuf {
    broker
        .data_dir()
        .expect("a warren child")
        .join("definitions.log")
}

/// Bytes of a log that holds no change: its header.
const EMPTY_LOG_LEN: u64 = 16;

/// The log's bytes in use: its header and whole records. The file is
/// longer: past the records it holds zeros, preallocated in steps of
/// `LOG_PREALLOCATE_BYTES`, so that an append does not change its size.
fn log_len(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut at = EMPTY_LOG_LEN as usize;
    while at + 8 <= bytes.len() {
        let payload_len =
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        if payload_len == 0 || at + 8 + payload_len > bytes.len() {
            break;
        }
        at += 8 + payload_len;
    }
    at as u64
}

/// The step in which the log file grows (config::DEFINITIONS_LOG_PREALLOCATE_BYTES).
const LOG_PREALLOCATE_BYTES: u64 = 64 * 1024;

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len()
}

/// The bindings in a definitions file as "source>type:destination:key", sorted.
fn bindings_in(defs: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = defs["bindings"]
        .as_array()
        .unwrap_or_else(|| panic!("bindings is not an array: {defs}"))
        .iter()
        .map(|b| {
            format!(
                "{}>{}:{}:{}",
                b["source"].as_str().unwrap(),
                b["destination_type"].as_str().unwrap(),
                b["destination"].as_str().unwrap(),
                b["routing_key"].as_str().unwrap()
            )
        })
        .collect();
    keys.sort();
    keys
}

/// The definitions file as JSON (read with serde_json, an independent parser).
fn read_definitions(broker: &Broker) -> serde_json::Value {
    let text = std::fs::read_to_string(definitions_file(broker)).expect("definitions.json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The `name`s in one category of the definitions file, sorted.
fn names_in(defs: &serde_json::Value, category: &str) -> Vec<String> {
    let mut names: Vec<String> = defs[category]
        .as_array()
        .unwrap_or_else(|| panic!("{category} is not an array: {defs}"))
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn declare_x(ch: &Channel, name: &str, kind: ExchangeKind, options: ExchangeDeclareOptions) {
    step(
        "exchange.declare",
        ch.exchange_declare(name, kind, options, FieldTable::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("exchange.declare {name}: {e}"));
}

async fn declare_q(ch: &Channel, name: &str, options: QueueDeclareOptions, args: FieldTable) {
    step("queue.declare", ch.queue_declare(name, options, args))
        .await
        .unwrap_or_else(|e| panic!("queue.declare {name}: {e}"));
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Arguments with the types a client sends them with (32-bit integers).
fn limited_args() -> FieldTable {
    table(&[
        ("x-message-ttl", AMQPValue::LongInt(60_000)),
        ("x-max-length", AMQPValue::LongInt(10)),
        ("x-dead-letter-exchange", ls("d.fanout")),
    ])
}

/// Headers binding arguments with a 32-bit integer: warren's headers match
/// compares types, so the restart must keep this one a signedint.
fn headers_args() -> FieldTable {
    table(&[("x-match", ls("all")), ("level", AMQPValue::LongInt(3))])
}

fn delayed_kind() -> ExchangeKind {
    ExchangeKind::Custom("x-delayed-message".into())
}

fn delayed_args() -> FieldTable {
    table(&[("x-delayed-type", ls("direct"))])
}

fn level_3_header() -> BasicProperties {
    BasicProperties::default().with_headers(table(&[("level", AMQPValue::LongInt(3))]))
}

async fn close(conn: Connection) {
    let _ = conn.close(200, "bye").await;
}

fn durable_definitions_survive_a_restart(shards: usize) {
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        eprintln!("skipped: restarting an external broker is not this test's business");
        return;
    }
    let url = broker.url();
    let mut server_named = String::new();
    run_for(RESTART_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&url).await;
        declare_x(&ch, "d.direct", ExchangeKind::Direct, durable_exchange()).await;
        declare_x(&ch, "d.topic", ExchangeKind::Topic, durable_exchange()).await;
        declare_x(&ch, "d.fanout", ExchangeKind::Fanout, durable_exchange()).await;
        declare_x(&ch, "d.headers", ExchangeKind::Headers, durable_exchange()).await;
        declare_x(
            &ch,
            "d.internal",
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                internal: true,
                ..Default::default()
            },
        )
        .await;
        declare_x(
            &ch,
            "t.direct",
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
        )
        .await;
        step(
            "exchange.declare",
            ch.exchange_declare(
                "d.delayed",
                delayed_kind(),
                durable_exchange(),
                delayed_args(),
            ),
        )
        .await
        .expect("declare d.delayed");

        declare_q(&ch, "d.q", durable_queue(), FieldTable::default()).await;
        declare_q(&ch, "d.limited", durable_queue(), limited_args()).await;
        declare_q(
            &ch,
            "d.autodelete",
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
        declare_q(
            &ch,
            "d.expires",
            durable_queue(),
            table(&[("x-expires", AMQPValue::LongInt(3_000))]),
        )
        .await;
        declare_q(&ch, "d.internal.q", durable_queue(), FieldTable::default()).await;
        declare_q(
            &ch,
            "t.q",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
        declare_q(
            &ch,
            "x.q",
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
        server_named = declare_server_named(&ch).await;

        bind(&ch, "d.q", "d.direct", "k").await;
        bind(&ch, "d.limited", "d.topic", "a.#").await;
        bind(&ch, "d.q", "amq.topic", "amq.key").await;
        bind_with(&ch, "d.q", "d.headers", "", headers_args()).await;
        bind(&ch, "d.internal.q", "d.internal", "").await;
        bind(&ch, "d.q", "d.delayed", "later").await;
        // Transient at one end: gone after the restart.
        bind(&ch, "t.q", "d.direct", "k").await;
        bind(&ch, "d.q", "t.direct", "k").await;
        bind(&ch, "x.q", "d.direct", "k").await;
        // Exchange to exchange: d.fanout -> d.topic, d.topic -> d.internal.
        for (source, destination, key) in [
            ("d.fanout", "d.topic", ""),
            ("d.topic", "d.internal", "audit.#"),
        ] {
            step(
                "exchange.bind",
                ch.exchange_bind(
                    destination,
                    source,
                    key,
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("exchange.bind {source} -> {destination}: {e}"));
        }
        // A message in a durable queue: messages are not kept yet.
        fill_queue(&ch, "d.q", &[b"before the restart"]).await;
        close(conn).await;
    });

    // The file says what survived: the start wrote it, the log replayed on
    // it (while the broker ran, the changes were in the log).
    broker.restart();
    let defs = read_definitions(&broker);
    assert_eq!(
        names_in(&defs, "exchanges"),
        [
            "d.delayed",
            "d.direct",
            "d.fanout",
            "d.headers",
            "d.internal",
            "d.topic"
        ]
    );
    assert_eq!(
        names_in(&defs, "queues"),
        [
            "d.autodelete",
            "d.expires",
            "d.internal.q",
            "d.limited",
            "d.q"
        ]
    );
    assert_eq!(defs["bindings"].as_array().unwrap().len(), 8, "{defs}");

    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let conn = connect(&url).await;
        for name in [
            "d.direct",
            "d.topic",
            "d.fanout",
            "d.headers",
            "d.internal",
            "d.delayed",
        ] {
            assert!(
                exchange_exists(&conn, name).await,
                "exchange {name} survives"
            );
        }
        assert!(
            !exchange_exists(&conn, "t.direct").await,
            "transient exchange is gone"
        );
        for name in [
            "d.q",
            "d.limited",
            "d.autodelete",
            "d.expires",
            "d.internal.q",
        ] {
            assert!(queue_exists(&conn, name).await, "queue {name} survives");
        }
        for name in ["t.q", "x.q", server_named.as_str()] {
            assert!(!queue_exists(&conn, name).await, "queue {name} is gone");
        }
        assert_eq!(
            message_count(&conn, "d.q").await,
            0,
            "messages are not kept yet"
        );

        let ch = channel(&conn).await;
        // Arguments are equivalent to what was declared, with the client's types...
        declare_q(&ch, "d.limited", durable_queue(), limited_args()).await;
        // ...and still checked: another TTL is refused as RabbitMQ refuses it.
        let other_ttl = table(&[
            ("x-message-ttl", AMQPValue::LongInt(1_000)),
            ("x-max-length", AMQPValue::LongInt(10)),
            ("x-dead-letter-exchange", ls("d.fanout")),
        ]);
        let r = step(
            "queue.declare",
            ch.queue_declare("d.limited", durable_queue(), other_ttl),
        )
        .await;
        let text = expect_code(r, 406);
        assert!(
            text.contains("inequivalent arg 'x-message-ttl' for queue 'd.limited'"),
            "{text}"
        );
        let ch = channel(&conn).await;
        let r = step(
            "queue.declare",
            ch.queue_declare("d.q", QueueDeclareOptions::default(), FieldTable::default()),
        )
        .await;
        let text = expect_code(r, 406);
        assert!(text.contains("inequivalent arg 'durable'"), "{text}");
        let r = step(
            "exchange.declare",
            channel(&conn).await.exchange_declare(
                "d.internal",
                ExchangeKind::Fanout,
                durable_exchange(),
                FieldTable::default(),
            ),
        )
        .await;
        let text = expect_code(r, 406);
        assert!(text.contains("inequivalent arg 'internal'"), "{text}");

        // The delayed exchange keeps its type and routing type.
        let ch = channel(&conn).await;
        step(
            "exchange.declare",
            ch.exchange_declare(
                "d.delayed",
                delayed_kind(),
                durable_exchange(),
                delayed_args(),
            ),
        )
        .await
        .expect("redeclare d.delayed as declared");

        // Every restored binding routes; the transient ones are gone.
        let ch = channel(&conn).await;
        publish(&ch, "d.direct", "k", b"direct").await;
        publish(&ch, "amq.topic", "amq.key", b"amq.topic").await;
        publish_props(&ch, "d.headers", "", b"headers", level_3_header()).await;
        publish(&ch, "d.delayed", "later", b"not delayed").await;
        // d.fanout -> d.topic -> d.limited ("a.#") or -> d.internal -> d.internal.q.
        publish(&ch, "d.fanout", "a.b", b"e2e").await;
        publish(&ch, "d.fanout", "audit.x", b"e2e, twice").await;
        wait_message_count(&conn, "d.q", 4).await;
        wait_message_count(&conn, "d.limited", 1).await;
        wait_message_count(&conn, "d.internal.q", 1).await;

        // The auto-delete queue goes when its first consumer leaves.
        let consumer_ch = channel(&conn).await;
        let _consumer = consume(
            &consumer_ch,
            "d.autodelete",
            "c1",
            BasicConsumeOptions::default(),
        )
        .await;
        assert!(queue_exists(&conn, "d.autodelete").await);
        step(
            "basic.cancel",
            consumer_ch.basic_cancel("c1", BasicCancelOptions::default()),
        )
        .await
        .expect("basic.cancel");
        assert!(
            wait_for_queue_gone(&conn, "d.autodelete").await,
            "the auto-delete queue is deleted when its consumer goes"
        );

        // x-expires counts from the start: unused for 3 s, the queue goes.
        // Watched through the definitions log (the start emptied it, so the
        // name appears in it only once the queue's deletion is logged),
        // since a passive declare is a use of the queue and would keep it
        // alive.
        let log = definitions_log(&broker);
        let expired = eventually(Duration::from_secs(15), || {
            std::fs::read(&log).is_ok_and(|b| b.windows(9).any(|w| w == b"d.expires"))
        })
        .await;
        assert!(expired, "d.expires expires after the restart");
        assert!(!queue_exists(&conn, "d.expires").await);

        // Deletions are written too.
        let ch = channel(&conn).await;
        step(
            "exchange.delete",
            ch.exchange_delete("d.headers", ExchangeDeleteOptions::default()),
        )
        .await
        .expect("exchange.delete");
        step(
            "queue.unbind",
            ch.queue_unbind("d.q", "d.direct", "k", FieldTable::default()),
        )
        .await
        .expect("queue.unbind");
        close(conn).await;
    });

    broker.restart();
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let conn = connect(&url).await;
        assert!(
            !exchange_exists(&conn, "d.headers").await,
            "deleted exchange stays deleted"
        );
        assert!(!queue_exists(&conn, "d.autodelete").await);
        assert!(!queue_exists(&conn, "d.expires").await);
        let ch = channel(&conn).await;
        publish(&ch, "d.direct", "k", b"unbound").await;
        publish(&ch, "amq.topic", "amq.key", b"still bound").await;
        wait_message_count(&conn, "d.q", 1).await;
        close(conn).await;
    });
    let defs = read_definitions(&broker);
    assert_eq!(
        names_in(&defs, "queues"),
        ["d.internal.q", "d.limited", "d.q"]
    );
}

/// Polls passive declares until the queue is gone (or 10 s pass).
async fn wait_for_queue_gone(conn: &Connection, name: &str) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < end {
        if !queue_exists(conn, name).await {
            return true;
        }
        sleep(Duration::from_millis(100)).await;
    }
    false
}

with_shards!(
    durable_definitions_survive_a_restart_and_transient_ones_do_not,
    durable_definitions_survive_a_restart
);

fn durable_changes_are_logged(shards: usize) {
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        return;
    }
    let file = definitions_file(&broker);
    let log = definitions_log(&broker);
    let inode = |path: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).expect("definitions.json").ino()
    };
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        let before = std::fs::read_to_string(&file).unwrap();
        let before_inode = inode(&file);
        assert_eq!(log_len(&log), EMPTY_LOG_LEN, "a start leaves the log empty");
        // Preallocated: appends write over zeros the file already has.
        let allocated = file_len(&log);
        assert_eq!(allocated, LOG_PREALLOCATE_BYTES);
        // Transient, exclusive and server-named things are never written.
        declare_x(
            &ch,
            "t.x",
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
        )
        .await;
        declare_q(
            &ch,
            "t.q",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
        declare_q(
            &ch,
            "x.q",
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
        let _server_named = declare_server_named(&ch).await;
        bind(&ch, "t.q", "amq.direct", "k").await;
        bind(&ch, "x.q", "amq.direct", "k").await;
        assert_eq!(log_len(&log), EMPTY_LOG_LEN);

        // Each durable change is in the log by the time the client hears
        // -ok: a record of its own, far smaller than the file; the file
        // itself is left alone (it is rewritten only when the log outgrows it).
        for i in 0..20 {
            let name = format!("durable-{i}");
            let len = log_len(&log);
            declare_q(&ch, &name, durable_queue(), FieldTable::default()).await;
            let grown = log_len(&log) - len;
            assert!((10..100).contains(&grown), "a declare wrote {grown} bytes");
            let text = std::fs::read(&log).unwrap();
            assert!(text.windows(name.len()).any(|w| w == name.as_bytes()));
            if i % 2 == 0 {
                let len = log_len(&log);
                step(
                    "queue.delete",
                    ch.queue_delete(&name, QueueDeleteOptions::default()),
                )
                .await
                .expect("queue.delete");
                assert!(log_len(&log) > len, "the delete is logged");
            }
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
        assert_eq!(inode(&file), before_inode, "the file was not rewritten");
        assert_eq!(file_len(&log), allocated, "the log file did not grow");
        // No close, no SIGTERM.
    });
    broker.crash_and_restart();
    let mut entries: Vec<String> = std::fs::read_dir(broker.data_dir().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            ".lock",
            "broker.log",
            "definitions.json",
            "definitions.log",
            "messages"
        ],
        "no temp file is left"
    );
    // The start replayed the log into the file and emptied the log.
    let defs = read_definitions(&broker);
    let expected: Vec<String> = (0..20)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("durable-{i}"))
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(names_in(&defs, "queues"), expected_sorted);
    assert_eq!(log_len(&log), EMPTY_LOG_LEN);
}

/// A clean shutdown (SIGTERM) writes the log's changes into the file and
/// empties the log: the next start replays nothing, and finds everything.
fn sigterm_compacts_the_log(shards: usize) {
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        return;
    }
    let log = definitions_log(&broker);
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        declare_x(&ch, "s.x", ExchangeKind::Direct, durable_exchange()).await;
        for i in 0..30 {
            let queue = format!("s.q{i:02}");
            declare_q(&ch, &queue, durable_queue(), FieldTable::default()).await;
            bind(&ch, &queue, "s.x", &format!("k{i}")).await;
        }
        step(
            "queue.delete",
            ch.queue_delete("s.q00", QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");
    });
    assert!(log_len(&log) > EMPTY_LOG_LEN, "the changes are in the log");
    let before = read_definitions(&broker);
    assert!(
        names_in(&before, "queues").is_empty(),
        "not in the file yet"
    );
    broker.restart();
    let text = broker.log();
    let (stop, start) = text
        .split_once("---- restarted by the test after SIGTERM ----")
        .expect("the restart marker");
    let compacted = stop
        .lines()
        .find(|l| l.contains("definitions log written into the definitions file"))
        .unwrap_or_else(|| panic!("no compaction at exit:\n{stop}"));
    // An exchange, 30 queues, 30 bindings and a delete (which may also log
    // the removal of the deleted queue's binding).
    let changes: usize = compacted
        .split("changes=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{compacted}"));
    assert!((62..=63).contains(&changes), "{compacted}");
    let restored = start
        .lines()
        .find(|l| l.contains("definitions restored"))
        .expect("the start's definitions line");
    assert!(restored.contains("logged_changes=0"), "{restored}");
    assert!(restored.contains("queues=29"), "{restored}");
    assert_eq!(log_len(&log), EMPTY_LOG_LEN);
    let defs = read_definitions(&broker);
    let queues: Vec<String> = (1..30).map(|i| format!("s.q{i:02}")).collect();
    assert_eq!(names_in(&defs, "queues"), queues);
    assert_eq!(bindings_in(&defs).len(), 29);
    // The restored bindings route.
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (conn, ch) = open(&url).await;
        publish(&ch, "s.x", "k7", b"routed").await;
        wait_message_count(&conn, "s.q07", 1).await;
    });
}

with_shards!(
    sigterm_writes_the_definitions_log_into_the_file,
    sigterm_compacts_the_log
);

fn declare_ok_means_durable(shards: usize) {
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        return;
    }
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        declare_x(&ch, "k.x", ExchangeKind::Topic, durable_exchange()).await;
        declare_q(&ch, "k.q", durable_queue(), FieldTable::default()).await;
        bind(&ch, "k.q", "k.x", "k.#").await;
        // No close, no SIGTERM: the broker dies right after the last -ok.
    });
    broker.crash_and_restart();
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (conn, ch) = open(&url).await;
        assert!(exchange_exists(&conn, "k.x").await);
        publish(&ch, "k.x", "k.1", b"routed").await;
        wait_message_count(&conn, "k.q", 1).await;
        close(conn).await;
    });
}

with_shards!(
    what_was_declared_ok_survives_a_kill_9,
    declare_ok_means_durable
);

with_shards!(
    durable_changes_are_logged_before_their_ok_and_transient_ones_never_written,
    durable_changes_are_logged
);

fn a_rabbitmq_export_is_imported(shards: usize) {
    if std::env::var(EXTERNAL_URL_VAR).is_ok_and(|u| !u.trim().is_empty()) {
        return;
    }
    let export = export_path();
    let mut broker = Broker::start_with(shards, &["--definitions", export.to_str().unwrap()]);
    let log = broker.log();
    assert!(!log.contains("policies skipped"), "{log}");
    // The export's policy is kept with the definitions.
    let kept = std::fs::read_to_string(broker.data_dir().unwrap().join("definitions.json"))
        .unwrap_or_default();
    assert!(kept.contains("\"ttl-policy\""), "{kept}");
    for expected in [
        "binding from exchange 'events' to exchange 'internal.fanout' (routing key 'audit.#') skipped",
        "--default-user not created",
    ] {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
    let check = |broker: &Broker, after_restart: bool| {
        let users = [
            ("alice", "alice-secret"),                   // sha256
            ("bob", "b0b%20p%40ss%20%C3%BCn%C3%AFcode"), // sha256, "b0b p@ss ünïcode"
            ("carol", "carol-512"),                      // sha512
            ("dave", "dave-md5"),                        // md5
            ("guest", "guest"),                          // RabbitMQ's guest hash
        ];
        run_for(RESTART_TEST_DEADLINE, async {
            // Each logs in; what each may do is its permissions' affair
            // (alice may not declare server-named queues, dave not read).
            for (user, password) in users {
                let conn = connect(&broker.url_as(user, password)).await;
                let _ = channel(&conn).await;
                close(conn).await;
            }
            // Every vhost is imported, with its permissions.
            let other = broker
                .url_as("alice", "alice-secret")
                .replace("/%2f", "/other");
            let conn = connect(&other).await;
            assert_connection_usable(&conn).await;
            close(conn).await;
            for (user, password) in [("alice", "wrong"), ("admin", "admin")] {
                let r = step(
                    "refused connection",
                    Connection::connect(
                        &broker.url_as(user, password),
                        ConnectionProperties::default(),
                    ),
                )
                .await;
                let text = expect_code(r.map(|_| ()), 403);
                assert!(text.starts_with("ACCESS_REFUSED"), "{user}: {text}");
            }

            // bob may configure everything (alice only "^alice\\..*").
            let conn = connect(&broker.url_as("bob", "b0b%20p%40ss%20%C3%BCn%C3%AFcode")).await;
            for name in [
                "orders",
                "events",
                "broadcast",
                "by-header",
                "dead-letters",
                "with-ae",
                "autodel-x",
            ] {
                assert!(exchange_exists(&conn, name).await, "exchange {name}");
            }
            for name in [
                "orders.eu",
                "orders.limited",
                "events.all",
                "events.expiring",
                "jobs.priority",
                "dlq",
                "headers.q",
                "autodel.q",
            ] {
                assert!(queue_exists(&conn, name).await, "queue {name}");
            }
            // transient.q is not durable: imported, but gone after a restart;
            // transient-x likewise.
            assert_eq!(queue_exists(&conn, "transient.q").await, !after_restart);
            assert_eq!(exchange_exists(&conn, "transient-x").await, !after_restart);
            assert!(!exchange_exists(&conn, "internal.fanout").await);

            // Arguments as exported (JSON numbers, declared here as 32-bit
            // integers) are equivalent.
            let ch = channel(&conn).await;
            declare_q(
                &ch,
                "orders.limited",
                durable_queue(),
                table(&[
                    ("x-message-ttl", AMQPValue::LongInt(60_000)),
                    ("x-max-length", AMQPValue::LongInt(1_000)),
                    ("x-overflow", ls("reject-publish")),
                    ("x-dead-letter-exchange", ls("dead-letters")),
                    ("x-dead-letter-routing-key", ls("dl")),
                ]),
            )
            .await;
            publish(&ch, "orders", "eu", b"order").await;
            publish(&ch, "broadcast", "user.created", b"event").await;
            // An imported binding argument is a JSON integer, a long.
            publish_props(
                &ch,
                "by-header",
                "",
                b"headers",
                BasicProperties::default().with_headers(table(&[
                    ("region", ls("eu")),
                    ("level", AMQPValue::LongLongInt(3)),
                ])),
            )
            .await;
            wait_message_count(&conn, "orders.eu", 1).await;
            wait_message_count(&conn, "events.all", 1).await;
            wait_message_count(&conn, "events.expiring", 1).await;
            wait_message_count(&conn, "headers.q", 1).await;
            // Drained, so the next round counts from zero.
            for q in ["orders.eu", "events.all", "events.expiring", "headers.q"] {
                step(
                    "queue.purge",
                    ch.queue_purge(q, QueuePurgeOptions::default()),
                )
                .await
                .expect("queue.purge");
            }
            close(conn).await;
        });
    };
    check(&broker, false);

    // Persisted: without --definitions the next start has it all (the
    // durable part), users and passwords included.
    let defs = read_definitions(&broker);
    assert_eq!(
        names_in(&defs, "users"),
        ["alice", "bob", "carol", "dave", "guest"]
    );
    let carol = defs["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "carol")
        .unwrap();
    assert_eq!(carol["hashing_algorithm"], "rabbit_password_hashing_sha512");
    broker.restart_with(&[]);
    check(&broker, true);
    assert!(!broker.log().contains("panicked"), "{}", broker.log());
}

with_shards!(
    a_rabbitmq_3_10_export_is_imported_and_kept,
    a_rabbitmq_export_is_imported
);

fn permissions_and_cleartext_passwords_from_a_hand_written_file(shards: usize) {
    if std::env::var(EXTERNAL_URL_VAR).is_ok_and(|u| !u.trim().is_empty()) {
        return;
    }
    let dir = fresh_temp_dir("warren-defs-input");
    let file = dir.join("defs.json");
    std::fs::write(
        &file,
        r#"{
          "users": [
            {"name": "ops", "password": "ops-pw", "tags": ["administrator"]},
            {"name": "nobody", "password": "nobody-pw", "tags": []}
          ],
          "vhosts": [{"name": "/"}],
          "permissions": [
            {"user": "ops", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
          ],
          "queues": [{"name": "work", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}]
        }"#,
    )
    .unwrap();
    let broker = Broker::start_with(shards, &["--definitions", file.to_str().unwrap()]);
    run(async {
        let conn = connect(&broker.url_as("ops", "ops-pw")).await;
        assert!(queue_exists(&conn, "work").await);
        close(conn).await;
        // No permissions on "/": RabbitMQ refuses connection.open with 530.
        let r = step(
            "connection without vhost access",
            Connection::connect(
                &broker.url_as("nobody", "nobody-pw"),
                ConnectionProperties::default(),
            ),
        )
        .await;
        let text = expect_code(r.map(|_| ()), 530);
        assert!(
            text.contains("access to vhost '/' refused for user 'nobody'"),
            "{text}"
        );
        // guest is not created when users are imported.
        let r = step(
            "guest",
            Connection::connect(&broker.url(), ConnectionProperties::default()),
        )
        .await;
        expect_code(r.map(|_| ()), 403);
    });
    // The cleartext password is stored hashed.
    let text = std::fs::read_to_string(definitions_file(&broker)).unwrap();
    assert!(!text.contains("ops-pw"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

with_shards!(
    permissions_and_cleartext_passwords_from_a_hand_written_file,
    permissions_and_cleartext_passwords_from_a_hand_written_file
);

/// Starts warren on `data_dir` with `extra_args`, expecting it to refuse to
/// start; returns what it printed.
fn refused_start(shards: usize, data_dir: &Path, extra_args: &[&str]) -> String {
    let (status, output) = start_expecting_exit(shards, data_dir, extra_args);
    assert_eq!(status.code(), Some(1), "exit status {status:?}:\n{output}");
    assert!(!output.contains("panicked"), "{output}");
    output
}

fn bad_definitions_stop_the_broker_with_a_clear_message(shards: usize) {
    if std::env::var(EXTERNAL_URL_VAR).is_ok_and(|u| !u.trim().is_empty()) {
        return;
    }
    // A corrupt definitions file in the data directory.
    let data_dir = fresh_temp_dir("warren-bad-defs");
    let own = data_dir.join("definitions.json");
    let corrupt = "{\n  \"queues\": [\n    {\"name\": \"q\",}\n  ]\n}\n";
    std::fs::write(&own, corrupt).unwrap();
    let output = refused_start(shards, &data_dir, &[]);
    assert!(
        output.contains(&format!(
            "cannot use the definitions in {}: invalid JSON at line 3, column 18",
            own.display()
        )),
        "{output}"
    );
    assert_eq!(
        std::fs::read_to_string(&own).unwrap(),
        corrupt,
        "a file that cannot be read is left as it is"
    );

    // Imports: bad JSON, an unknown exchange type, a missing file.
    let fresh = fresh_temp_dir("warren-bad-import");
    let inputs = fresh_temp_dir("warren-bad-import-input");
    let cases = [
        (
            "bad.json",
            "{\"users\": [",
            "invalid JSON at line 1, column 12",
        ),
        (
            "hash.json",
            r#"{"exchanges": [{"name": "spread", "vhost": "/", "type": "x-consistent-hash", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}]}"#,
            "exchanges[0] ('spread'): unknown exchange type 'x-consistent-hash'",
        ),
        (
            "stream.json",
            r#"{"queues": [{"name": "qq", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {"x-queue-type": "stream"}}]}"#,
            "queue 'qq': ",
        ),
    ];
    for (name, text, expected) in cases {
        let path = inputs.join(name);
        std::fs::write(&path, text).unwrap();
        let output = refused_start(shards, &fresh, &["--definitions", path.to_str().unwrap()]);
        assert!(
            output.contains(&format!(
                "cannot use the definitions in {}: {}",
                path.display(),
                expected
            )),
            "{name}: {output}"
        );
    }
    let missing = inputs.join("missing.json");
    let output = refused_start(
        shards,
        &fresh,
        &["--definitions", missing.to_str().unwrap()],
    );
    assert!(
        output.contains(&format!(
            "cannot use the definitions in {}:",
            missing.display()
        )) && output.contains("No such file"),
        "{output}"
    );
    // Nothing was written for a refused import.
    assert!(!fresh.join("definitions.json").exists());
    for dir in [data_dir, fresh, inputs] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

with_shards!(
    bad_definitions_stop_the_broker_with_a_clear_message,
    bad_definitions_stop_the_broker_with_a_clear_message
);

/// A directory where the definitions file goes makes every rewrite of it
/// fail (the rename onto it is refused). Durable declares are still appended
/// to the log, until the log outgrows the file and the file must be
/// rewritten: the durable declare that needs it must not be answered
/// declare-ok. The client gets 541 INTERNAL_ERROR (a connection error, as
/// RabbitMQ answers an operation that failed inside the broker), other
/// clients keep publishing and getting, and once the disk takes the file
/// again the next declare succeeds and the file catches up.
fn failed_definitions_write(shards: usize) {
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        return;
    }
    let url = broker.url();
    let file = definitions_file(&broker);
    let mut logged = Vec::new();
    let mut lost = String::new();
    run_for(RESTART_TEST_DEADLINE, async {
        let (other, other_ch) = open(&url).await;
        declare_q(&other_ch, "w.kept", durable_queue(), FieldTable::default()).await;

        std::fs::remove_file(&file).expect("definitions.json");
        std::fs::create_dir(&file).unwrap();
        std::fs::write(file.join("in-the-way"), b"").unwrap();

        // 8 KiB records: the log outgrows its 64 KiB floor within a few.
        let note = table(&[("x-note", AMQPValue::LongString("n".repeat(8 << 10).into()))]);
        let (conn, ch) = open(&url).await;
        let mut failure = None;
        for i in 0..64 {
            let name = format!("w.big-{i:02}");
            match ch.queue_declare(&name, durable_queue(), note.clone()).await {
                Ok(_) => logged.push(name),
                Err(e) => {
                    failure = Some(e);
                    lost = name;
                    break;
                }
            }
        }
        let failure = failure.expect("a declare fails once the file must be rewritten");
        assert!(
            logged.len() >= 4,
            "{} declares were logged first",
            logged.len()
        );
        let text = expect_code::<()>(Err(failure), 541);
        assert!(text.contains("definitions"), "{text}");
        wait_connection_closed(&conn).await;

        // The broker is up, and the other client's connection works.
        publish(&other_ch, "", "w.kept", b"still here").await;
        let got = get_within(&other_ch, "w.kept", STEP_DEADLINE).await;
        assert_eq!(got.delivery.data, b"still here");

        std::fs::remove_dir_all(&file).unwrap();
        declare_q(&other_ch, "w.after", durable_queue(), FieldTable::default()).await;
        // The failed declare's queue was applied in memory before the write
        // failed (as after any 541, the client cannot know); the first
        // write that succeeds (a rewrite of the whole file: the one for
        // w.after, or one for the closed connection's cleanup just before)
        // stores it too.
        let mut expected = logged.clone();
        expected.extend(["w.kept".to_string(), lost.clone()]);
        expected.sort();
        let mut in_file = names_in(&read_definitions(&broker), "queues");
        in_file.retain(|q| q != "w.after");
        assert_eq!(in_file, expected);
        close(other).await;
    });
    assert!(
        broker.log().contains("cannot write the definitions file"),
        "{}",
        broker.log()
    );
    broker.crash_and_restart();
    let mut expected = logged;
    expected.extend(["w.after".to_string(), "w.kept".to_string(), lost]);
    expected.sort();
    assert_eq!(names_in(&read_definitions(&broker), "queues"), expected);
}

with_shards!(
    a_failed_definitions_write_fails_the_declare_with_541_and_the_broker_stays_up,
    failed_definitions_write
);

/// Many durable exchanges, queues and bindings declared, some deleted (with
/// the bindings that go with them), a few queues with large arguments so
/// that the log is compacted into the file while the broker runs; then a
/// kill -9 right after the last -ok, and exactly the expected definitions
/// come back. Twice, so that the second run's changes go to a log started
/// after a recovery.
fn many_changes_survive_kill_9(shards: usize) {
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        return;
    }
    let note = table(&[("x-note", AMQPValue::LongString("n".repeat(8 << 10).into()))]);
    let exchange = |i: usize| format!("m.x{:02}", i % 20);
    let exchange_deleted = |i: usize| (i % 20).is_multiple_of(4);
    let queue_deleted = |i: usize| i.is_multiple_of(3);
    let unbound = |i: usize| i.is_multiple_of(5);
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        for i in 0..20 {
            declare_x(&ch, &exchange(i), ExchangeKind::Topic, durable_exchange()).await;
        }
        step(
            "exchange.bind",
            ch.exchange_bind(
                "m.x02",
                "m.x01",
                "#",
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("exchange.bind");
        step(
            "exchange.bind",
            ch.exchange_bind(
                "m.x04",
                "m.x01",
                "gone",
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("exchange.bind");
        for i in 0..200 {
            let args = if i % 10 == 7 {
                note.clone()
            } else {
                FieldTable::default()
            };
            let queue = format!("m.q{i:03}");
            declare_q(&ch, &queue, durable_queue(), args).await;
            bind(&ch, &queue, &exchange(i), &format!("k{i}")).await;
        }
        for i in 0..200 {
            let queue = format!("m.q{i:03}");
            if queue_deleted(i) {
                step(
                    "queue.delete",
                    ch.queue_delete(&queue, QueueDeleteOptions::default()),
                )
                .await
                .expect("queue.delete");
            } else if unbound(i) {
                step(
                    "queue.unbind",
                    ch.queue_unbind(
                        &queue,
                        &exchange(i),
                        &format!("k{i}"),
                        FieldTable::default(),
                    ),
                )
                .await
                .expect("queue.unbind");
            }
        }
        for i in (0..20).filter(|&i| exchange_deleted(i)) {
            step(
                "exchange.delete",
                ch.exchange_delete(&exchange(i), ExchangeDeleteOptions::default()),
            )
            .await
            .expect("exchange.delete");
        }
        // No close: killed right after the last -ok.
    });
    broker.crash_and_restart();

    let mut exchanges: Vec<String> = (0..20)
        .filter(|&i| !exchange_deleted(i))
        .map(exchange)
        .collect();
    exchanges.sort();
    let queues: Vec<String> = (0..200)
        .filter(|&i| !queue_deleted(i))
        .map(|i| format!("m.q{i:03}"))
        .collect();
    let mut bindings: Vec<String> = (0..200)
        .filter(|&i| !queue_deleted(i) && !unbound(i) && !exchange_deleted(i))
        .map(|i| format!("{}>queue:m.q{i:03}:k{i}", exchange(i)))
        .collect();
    bindings.push("m.x01>exchange:m.x02:#".to_string());
    bindings.sort();
    let defs = read_definitions(&broker);
    assert_eq!(names_in(&defs, "exchanges"), exchanges);
    assert_eq!(names_in(&defs, "queues"), queues);
    assert_eq!(bindings_in(&defs), bindings);
    let big = defs["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "m.q007")
        .expect("m.q007");
    assert_eq!(
        big["arguments"]["x-note"].as_str().map(str::len),
        Some(8 << 10)
    );
    assert_eq!(log_len(&definitions_log(&broker)), EMPTY_LOG_LEN);

    // A second run on the recovered definitions: the restored bindings
    // route, and more changes made now survive another kill -9.
    let url = broker.url();
    run_for(RESTART_TEST_DEADLINE, async {
        let (conn, ch) = open(&url).await;
        publish(&ch, "m.x01", "k1", b"routed").await;
        wait_message_count(&conn, "m.q001", 1).await;
        publish(&ch, "m.x01", "k2", b"through m.x02").await;
        wait_message_count(&conn, "m.q002", 1).await;
        for i in [1, 2, 4] {
            step(
                "queue.delete",
                ch.queue_delete(&format!("m.q{i:03}"), QueueDeleteOptions::default()),
            )
            .await
            .expect("queue.delete");
        }
        declare_q(&ch, "m.q004", durable_queue(), FieldTable::default()).await;
        declare_x(&ch, "m.x00", ExchangeKind::Fanout, durable_exchange()).await;
        bind(&ch, "m.q004", "m.x00", "").await;
    });
    broker.crash_and_restart();
    let defs = read_definitions(&broker);
    exchanges.push("m.x00".to_string());
    exchanges.sort();
    let queues: Vec<String> = queues
        .into_iter()
        .filter(|q| q != "m.q001" && q != "m.q002")
        .chain(["m.q004".to_string()])
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    bindings
        .retain(|b| !b.contains(":m.q001:") && !b.contains(":m.q002:") && !b.contains(":m.q004:"));
    bindings.push("m.x00>queue:m.q004:".to_string());
    bindings.sort();
    assert_eq!(names_in(&defs, "exchanges"), exchanges);
    assert_eq!(names_in(&defs, "queues"), queues);
    assert_eq!(bindings_in(&defs), bindings);
}

with_shards!(
    many_durable_changes_and_deletes_survive_a_kill_9_exactly,
    many_changes_survive_kill_9
);

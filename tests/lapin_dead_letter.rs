//! Dead-lettering through lapin: the x-death header and its companions after a
//! rejection, a nack, an expiry (queue TTL and per-message) and a max-length drop;
//! where the dead letter is routed (DLX, x-dead-letter-routing-key, CC and BCC);
//! repeated deaths; cycles. Expected values are RabbitMQ 3.10's, observed: run with
//! `WARREN_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f` to check them.
//!
//! What RabbitMQ 3.10 does, in short:
//! - each x-death entry is a table {count: long (signed 64-bit, 'l'), reason,
//!   queue, time: timestamp (seconds), exchange, routing-keys: array of longstr,
//!   and original-expiration when the message had an expiration}; newest first;
//! - x-first-death-{exchange,queue,reason} are set by the first death only;
//! - x-last-death-* are not set (3.13 adds them; the tests accept them if they
//!   agree with the newest entry);
//! - the `expiration` property is removed from a dead letter;
//! - a repeated (queue, reason) death increments that entry's count and moves it
//!   to the front, leaving its time, exchange and routing keys as they were;
//! - a cycle with no rejection in it drops the message (only the copy that would
//!   cycle: other queues the DLX routes it to still get theirs);
//! - without x-dead-letter-routing-key the dead letter is routed with all the keys
//!   the message was published with, CC and BCC included, yet x-death's
//!   routing-keys lists only the routing key and the CC keys; with it, the CC
//!   header is removed and only that key routes it;
//! - on the wire, a dead letter's whole headers table is rewritten sorted by key; a
//!   new x-death entry's keys come in the order listed above, an entry whose count
//!   was incremented comes back with its keys sorted.
//!
//! Every test but the two about a queue dead-lettering into itself uses two queues
//! or more, so that under `--shards 2` (queues placed round-robin) dead letters
//! also cross shards.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::raw::RawConn;
use lapin_support::wire;
use lapin_support::*;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::StreamExt;

/// Overall deadline of a test body that waits on broker timers.
const TIMER_TEST_DEADLINE: Duration = Duration::from_secs(40);
/// How long an expiry or a dead-lettering that is due now may take.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(10);

fn int(v: i32) -> AMQPValue {
    AMQPValue::LongInt(v)
}

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn str_array(items: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(
        items.iter().map(|s| ls(s)).collect::<Vec<_>>(),
    ))
}

/// Declares a queue named `prefix-…` with `args`; returns its name.
async fn queue_with(ch: &Channel, prefix: &str, args: &[(&str, AMQPValue)]) -> String {
    let q = unique(prefix);
    declare_queue_with(ch, &q, QueueDeclareOptions::default(), table(args))
        .await
        .unwrap_or_else(|e| panic!("declare {q}: {e}"));
    q
}

/// Dead-letter arguments through the default exchange to `target`.
fn dl_to(target: &str) -> Vec<(&'static str, AMQPValue)> {
    vec![
        ("x-dead-letter-exchange", ls("")),
        ("x-dead-letter-routing-key", ls(target)),
    ]
}

/// basic.get (manual ack) repeated until a message arrives, EXPIRY_DEADLINE at most.
async fn get_one(ch: &Channel, queue: &str) -> BasicGetMessage {
    let end = Instant::now() + EXPIRY_DEADLINE;
    loop {
        if let Some(m) = get(ch, queue, false).await {
            return m;
        }
        assert!(
            Instant::now() < end,
            "no message arrived in {queue} within {EXPIRY_DEADLINE:?}"
        );
        sleep(Duration::from_millis(10)).await;
    }
}

async fn reject(ch: &Channel, tag: u64) {
    step(
        "basic.reject",
        ch.basic_reject(tag, BasicRejectOptions { requeue: false }),
    )
    .await
    .expect("basic.reject");
}

/// The next delivery within EXPIRY_DEADLINE.
async fn next_within_expiry(consumer: &mut Consumer) -> Delivery {
    match within(EXPIRY_DEADLINE, consumer.next()).await {
        Some(Some(Ok(d))) => d,
        Some(Some(Err(e))) => panic!("consumer error: {e}"),
        Some(None) => panic!("consumer was cancelled"),
        None => panic!("no delivery within {EXPIRY_DEADLINE:?}"),
    }
}

/// Asserts the consumer gets nothing (no delivery, no cancel) for `period`.
async fn assert_quiet_for(consumer: &mut Consumer, period: Duration) {
    if let Some(item) = within(period, consumer.next()).await {
        match item {
            Some(Ok(d)) => panic!("unexpected delivery {:?}", body_str(&d)),
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => panic!("consumer was cancelled"),
        }
    }
}

/// Waits (EXPIRY_DEADLINE at most) until `queue` has `n` ready messages.
async fn wait_count_within(conn: &Connection, queue: &str, n: u32) {
    let end = Instant::now() + EXPIRY_DEADLINE;
    loop {
        let c = message_count(conn, queue).await;
        if c == n {
            return;
        }
        assert!(
            Instant::now() < end,
            "queue {queue} has {c} ready messages after {EXPIRY_DEADLINE:?}, expected {n}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- reading x-death

/// One x-death entry, each field checked for its type on the way in.
#[derive(Debug, Clone, PartialEq)]
struct Death {
    count: i64,
    reason: String,
    queue: String,
    time: u64,
    exchange: String,
    routing_keys: Vec<String>,
    original_expiration: Option<String>,
}

fn long_str(v: &AMQPValue, what: &str) -> String {
    match v {
        AMQPValue::LongString(s) => s.to_string(),
        other => panic!("{what} should be a longstr, is {other:?}"),
    }
}

fn headers_of(props: &BasicProperties) -> FieldTable {
    props
        .headers()
        .clone()
        .expect("the dead letter has no headers")
}

fn header_str(h: &FieldTable, key: &str) -> Option<String> {
    h.inner().get(key).map(|v| long_str(v, key))
}

/// The x-death entries, newest first, asserting every field's type and that an
/// entry has exactly RabbitMQ's keys.
fn deaths(h: &FieldTable) -> Vec<Death> {
    let entries = match h.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        other => panic!("x-death should be an array, is {other:?}"),
    };
    entries
        .iter()
        .map(|e| {
            let t = match e {
                AMQPValue::FieldTable(t) => t.inner(),
                other => panic!("an x-death entry should be a table, is {other:?}"),
            };
            let mut keys: Vec<&str> = t.keys().map(|k| k.as_str()).collect();
            keys.sort_unstable();
            let mut expected = vec![
                "count",
                "exchange",
                "queue",
                "reason",
                "routing-keys",
                "time",
            ];
            if t.contains_key("original-expiration") {
                expected.push("original-expiration");
                expected.sort_unstable();
            }
            assert_eq!(keys, expected, "keys of x-death entry {t:?}");
            let field = |k: &str| t.get(k).unwrap();
            Death {
                // A long: signed 64-bit, tag 'l'.
                count: match field("count") {
                    AMQPValue::LongLongInt(n) => *n,
                    other => panic!("x-death count should be a long ('l'), is {other:?}"),
                },
                reason: long_str(field("reason"), "reason"),
                queue: long_str(field("queue"), "queue"),
                time: match field("time") {
                    AMQPValue::Timestamp(s) => *s,
                    other => panic!("x-death time should be a timestamp, is {other:?}"),
                },
                exchange: long_str(field("exchange"), "exchange"),
                routing_keys: match field("routing-keys") {
                    AMQPValue::FieldArray(a) => a
                        .as_slice()
                        .iter()
                        .map(|k| long_str(k, "a routing key"))
                        .collect(),
                    other => panic!("x-death routing-keys should be an array, is {other:?}"),
                },
                original_expiration: t
                    .get("original-expiration")
                    .map(|v| long_str(v, "original-expiration")),
            }
        })
        .collect()
}

/// A death as expected; `time` is checked separately.
fn death(
    count: i64,
    reason: &str,
    queue: &str,
    exchange: &str,
    routing_keys: &[&str],
    original_expiration: Option<&str>,
) -> Death {
    Death {
        count,
        reason: reason.into(),
        queue: queue.into(),
        time: 0,
        exchange: exchange.into(),
        routing_keys: routing_keys.iter().map(|s| s.to_string()).collect(),
        original_expiration: original_expiration.map(|s| s.to_string()),
    }
}

/// Asserts the entries equal `expected` except for their times, which must be
/// within [`from`, `to`] (Unix seconds, inclusive; one second of slack each side).
#[track_caller]
fn assert_deaths(h: &FieldTable, expected: &[Death], from: u64, to: u64) -> Vec<Death> {
    let got = deaths(h);
    let untimed: Vec<Death> = got
        .iter()
        .map(|d| Death {
            time: 0,
            ..d.clone()
        })
        .collect();
    assert_eq!(untimed, expected, "x-death of {h:?}");
    for d in &got {
        assert!(
            d.time + 1 >= from && d.time <= to + 1,
            "x-death time {} not within [{from}, {to}] (seconds since the epoch)",
            d.time
        );
    }
    got
}

#[track_caller]
fn assert_first_death(h: &FieldTable, queue: &str, reason: &str, exchange: &str) {
    assert_eq!(
        (
            header_str(h, "x-first-death-queue"),
            header_str(h, "x-first-death-reason"),
            header_str(h, "x-first-death-exchange"),
        ),
        (
            Some(queue.to_string()),
            Some(reason.to_string()),
            Some(exchange.to_string())
        ),
        "x-first-death-* of {h:?}"
    );
}

/// RabbitMQ 3.10 does not set x-last-death-*; 3.13 does, to the newest death. Accept
/// either: absent, or all three agreeing with the newest x-death entry.
#[track_caller]
fn assert_last_death_absent_or_newest(h: &FieldTable) {
    let last = (
        header_str(h, "x-last-death-queue"),
        header_str(h, "x-last-death-reason"),
        header_str(h, "x-last-death-exchange"),
    );
    if last == (None, None, None) {
        return;
    }
    let newest = deaths(h).into_iter().next().expect("an x-death entry");
    assert_eq!(
        last,
        (
            Some(newest.queue),
            Some(newest.reason),
            Some(newest.exchange)
        ),
        "x-last-death-* disagree with the newest x-death entry in {h:?}"
    );
}

// ---------------------------------------------------------------- the reasons

broker_test!(reject_dead_letters_with_full_x_death, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let src_x = unique("dl-src-x");
        let dlx = unique("dl-dlx");
        declare_exchange(&ch, &src_x, ExchangeKind::Direct).await;
        declare_exchange(&ch, &dlx, ExchangeKind::Direct).await;
        let src = queue_with(&ch, "dl-src", &[("x-dead-letter-exchange", ls(&dlx))]).await;
        bind(&ch, &src, &src_x, "rk").await;
        let dlq = queue_with(&ch, "dl-dlq", &[]).await;
        bind(&ch, &dlq, &dlx, "rk").await;
        let dch = channel(&conn).await;
        let mut dead = consume(&dch, &dlq, "", no_ack()).await;

        let props = BasicProperties::default()
            .with_headers(table(&[("app", ls("v"))]))
            .with_message_id("m-1".into())
            .with_correlation_id("c-1".into())
            .with_priority(3)
            .with_delivery_mode(2);
        let before = now_secs();
        publish_props(&ch, &src_x, "rk", b"rejected body", props).await;
        let m = get_one(&ch, &src).await;
        reject(&ch, m.delivery.delivery_tag).await;
        let d = next_within_expiry(&mut dead).await;
        let after = now_secs();

        assert_eq!(body_str(&d), "rejected body");
        // Delivered from the DLX with the original routing key.
        assert_eq!(d.exchange.as_str(), dlx);
        assert_eq!(d.routing_key.as_str(), "rk");
        assert!(!d.redelivered);
        let h = headers_of(&d.properties);
        assert_deaths(
            &h,
            &[death(1, "rejected", &src, &src_x, &["rk"], None)],
            before,
            after,
        );
        assert_first_death(&h, &src, "rejected", &src_x);
        assert_last_death_absent_or_newest(&h);
        // The publisher's headers and properties are kept.
        assert_eq!(header_str(&h, "app").as_deref(), Some("v"));
        assert_eq!(
            d.properties.message_id().as_ref().map(|s| s.as_str()),
            Some("m-1")
        );
        assert_eq!(
            d.properties.correlation_id().as_ref().map(|s| s.as_str()),
            Some("c-1")
        );
        assert_eq!(*d.properties.priority(), Some(3));
        assert_eq!(*d.properties.delivery_mode(), Some(2));
        assert!(d.properties.expiration().is_none());
        assert_eq!(message_count(&conn, &src).await, 0);
    })
});

broker_test!(
    nack_dead_letters_with_reason_rejected_to_the_dead_letter_routing_key,
    |b| {
        run_for(TIMER_TEST_DEADLINE, async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let dlx = unique("dl-dlx");
            declare_exchange(&ch, &dlx, ExchangeKind::Direct).await;
            let dlq = queue_with(&ch, "dl-dlq", &[]).await;
            bind(&ch, &dlq, &dlx, "dl-key").await;
            let src = queue_with(
                &ch,
                "dl-src",
                &[
                    ("x-dead-letter-exchange", ls(&dlx)),
                    ("x-dead-letter-routing-key", ls("dl-key")),
                ],
            )
            .await;
            // Bound with the original key: must not get the dead letter.
            let by_original_key = queue_with(&ch, "dl-orig-key", &[]).await;
            bind(&ch, &by_original_key, &dlx, &src).await;
            let dch = channel(&conn).await;
            let mut dead = consume(&dch, &dlq, "", no_ack()).await;

            let before = now_secs();
            // An expiration that has not passed: still reported, and removed.
            let props = BasicProperties::default().with_expiration("60000".into());
            publish_props(&ch, "", &src, b"nacked", props).await;
            let m = get_one(&ch, &src).await;
            step(
                "basic.nack",
                ch.basic_nack(
                    m.delivery.delivery_tag,
                    BasicNackOptions {
                        requeue: false,
                        multiple: false,
                    },
                ),
            )
            .await
            .unwrap();
            let d = next_within_expiry(&mut dead).await;
            let after = now_secs();

            assert_eq!(body_str(&d), "nacked");
            assert_eq!(d.exchange.as_str(), dlx);
            assert_eq!(d.routing_key.as_str(), "dl-key");
            let h = headers_of(&d.properties);
            // The routing keys are the message's own, not the dead-letter key.
            assert_deaths(
                &h,
                &[death(1, "rejected", &src, "", &[&src], Some("60000"))],
                before,
                after,
            );
            assert_first_death(&h, &src, "rejected", "");
            assert_last_death_absent_or_newest(&h);
            assert!(d.properties.expiration().is_none());
            assert_eq!(message_count(&conn, &by_original_key).await, 0);
        })
    }
);

broker_test!(queue_ttl_expiry_dead_letters_with_reason_expired, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let src_x = unique("dl-src-x");
        declare_exchange(&ch, &src_x, ExchangeKind::Fanout).await;
        let dlq = queue_with(&ch, "dl-dlq", &[]).await;
        let mut args = dl_to(&dlq);
        args.push(("x-message-ttl", int(100)));
        let src = queue_with(&ch, "dl-ttl-src", &args).await;
        bind(&ch, &src, &src_x, "").await;
        let dch = channel(&conn).await;
        let mut dead = consume(&dch, &dlq, "", no_ack()).await;

        let before = now_secs();
        publish(&ch, &src_x, "any-key", b"expired by the queue").await;
        let d = next_within_expiry(&mut dead).await;
        let after = now_secs();

        assert_eq!(body_str(&d), "expired by the queue");
        assert_eq!(d.exchange.as_str(), "");
        assert_eq!(d.routing_key.as_str(), dlq);
        let h = headers_of(&d.properties);
        // No original-expiration: the message had none.
        assert_deaths(
            &h,
            &[death(1, "expired", &src, &src_x, &["any-key"], None)],
            before,
            after,
        );
        assert_first_death(&h, &src, "expired", &src_x);
        assert_last_death_absent_or_newest(&h);
        assert!(d.properties.expiration().is_none());
    })
});

broker_test!(per_message_expiry_reports_original_expiration, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let dlq = queue_with(&ch, "dl-dlq", &[]).await;
        let src = queue_with(&ch, "dl-exp-src", &dl_to(&dlq)).await;
        let mut args = dl_to(&dlq);
        args.push(("x-message-ttl", int(100)));
        let ttl_src = queue_with(&ch, "dl-ttl-src", &args).await;
        let dch = channel(&conn).await;
        let mut dead = consume(&dch, &dlq, "", no_ack()).await;

        let before = now_secs();
        let props = BasicProperties::default().with_expiration("100".into());
        publish_props(&ch, "", &src, b"own expiration", props).await;
        let d = next_within_expiry(&mut dead).await;
        let after = now_secs();
        assert_eq!(body_str(&d), "own expiration");
        let h = headers_of(&d.properties);
        assert_deaths(
            &h,
            &[death(1, "expired", &src, "", &[&src], Some("100"))],
            before,
            after,
        );
        assert_first_death(&h, &src, "expired", "");
        assert_last_death_absent_or_newest(&h);
        // The expiration property is taken off the dead letter.
        assert!(d.properties.expiration().is_none());

        // Expired by the queue's shorter TTL: the message's own expiration is
        // still what original-expiration reports.
        let before = now_secs();
        let props = BasicProperties::default().with_expiration("60000".into());
        publish_props(&ch, "", &ttl_src, b"queue ttl first", props).await;
        let d = next_within_expiry(&mut dead).await;
        let after = now_secs();
        assert_eq!(body_str(&d), "queue ttl first");
        let h = headers_of(&d.properties);
        assert_deaths(
            &h,
            &[death(
                1,
                "expired",
                &ttl_src,
                "",
                &[&ttl_src],
                Some("60000"),
            )],
            before,
            after,
        );
        assert!(d.properties.expiration().is_none());
    })
});

broker_test!(max_length_drop_head_dead_letters_with_reason_maxlen, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let dlq = queue_with(&ch, "dl-dlq", &[]).await;
        let mut args = dl_to(&dlq);
        args.push(("x-max-length", int(1)));
        let src = queue_with(&ch, "dl-maxlen-src", &args).await;
        let dch = channel(&conn).await;
        let mut dead = consume(&dch, &dlq, "", no_ack()).await;

        let before = now_secs();
        publish(&ch, "", &src, b"oldest").await;
        publish(&ch, "", &src, b"newest").await;
        let d = next_within_expiry(&mut dead).await;
        let after = now_secs();
        assert_eq!(body_str(&d), "oldest");
        let h = headers_of(&d.properties);
        assert_deaths(
            &h,
            &[death(1, "maxlen", &src, "", &[&src], None)],
            before,
            after,
        );
        assert_first_death(&h, &src, "maxlen", "");
        assert_last_death_absent_or_newest(&h);
        let kept = get(&ch, &src, true).await.expect("the newest message");
        assert_eq!(kept.delivery.data, b"newest");
    })
});

// ---------------------------------------------------------------- CC and BCC

/// A source exchange and queue (bound with "k-orig") dead-lettering to a direct DLX
/// with one queue per key in `dl_keys`; `dlrk` is the x-dead-letter-routing-key.
struct CcSetup {
    src_x: String,
    src: String,
    dlx: String,
    dlqs: Vec<(String, String)>,
}

async fn cc_setup(ch: &Channel, dl_keys: &[&str], dlrk: Option<&str>) -> CcSetup {
    let src_x = unique("dl-cc-x");
    let dlx = unique("dl-cc-dlx");
    declare_exchange(ch, &src_x, ExchangeKind::Direct).await;
    declare_exchange(ch, &dlx, ExchangeKind::Direct).await;
    let mut args = vec![("x-dead-letter-exchange", ls(&dlx))];
    if let Some(k) = dlrk {
        args.push(("x-dead-letter-routing-key", ls(k)));
    }
    let src = queue_with(ch, "dl-cc-src", &args).await;
    bind(ch, &src, &src_x, "k-orig").await;
    let mut dlqs = Vec::new();
    for key in dl_keys {
        let q = queue_with(ch, "dl-cc-dlq", &[]).await;
        bind(ch, &q, &dlx, key).await;
        dlqs.push((key.to_string(), q));
    }
    CcSetup {
        src_x,
        src,
        dlx,
        dlqs,
    }
}

broker_test!(cc_keys_are_in_x_death_and_route_the_dead_letter, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let s = cc_setup(&ch, &["k-orig", "k-cc", "k-other"], None).await;
        let before = now_secs();
        let props = BasicProperties::default().with_headers(table(&[("CC", str_array(&["k-cc"]))]));
        publish_props(&ch, &s.src_x, "k-orig", b"cc", props).await;
        let m = get_one(&ch, &s.src).await;
        reject(&ch, m.delivery.delivery_tag).await;
        for (key, q) in &s.dlqs {
            if key == "k-other" {
                continue;
            }
            let d = get_one(&ch, q).await;
            let after = now_secs();
            assert_eq!(d.delivery.data, b"cc", "dead letter in the {key} queue");
            assert_eq!(d.delivery.exchange.as_str(), s.dlx);
            // Whichever key routed it, the delivery carries the first one.
            assert_eq!(d.delivery.routing_key.as_str(), "k-orig");
            let h = headers_of(&d.delivery.properties);
            assert_deaths(
                &h,
                &[death(
                    1,
                    "rejected",
                    &s.src,
                    &s.src_x,
                    &["k-orig", "k-cc"],
                    None,
                )],
                before,
                after,
            );
            // Without a dead-letter routing key, the CC header stays.
            assert_eq!(h.inner().get("CC"), Some(&str_array(&["k-cc"])));
        }
        assert_eq!(message_count(&conn, &s.dlqs[2].1).await, 0);
    })
});

broker_test!(
    dead_letter_routing_key_replaces_the_keys_and_drops_cc,
    |b| {
        run_for(TIMER_TEST_DEADLINE, async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let s = cc_setup(&ch, &["k-dl", "k-orig", "k-cc"], Some("k-dl")).await;
            let before = now_secs();
            let props =
                BasicProperties::default().with_headers(table(&[("CC", str_array(&["k-cc"]))]));
            publish_props(&ch, &s.src_x, "k-orig", b"dlrk", props).await;
            let m = get_one(&ch, &s.src).await;
            reject(&ch, m.delivery.delivery_tag).await;
            let d = get_one(&ch, &s.dlqs[0].1).await;
            let after = now_secs();
            assert_eq!(d.delivery.routing_key.as_str(), "k-dl");
            let h = headers_of(&d.delivery.properties);
            // x-death still lists the keys the message was published with.
            assert_deaths(
                &h,
                &[death(
                    1,
                    "rejected",
                    &s.src,
                    &s.src_x,
                    &["k-orig", "k-cc"],
                    None,
                )],
                before,
                after,
            );
            assert!(h.inner().get("CC").is_none(), "CC kept: {h:?}");
            // Only the dead-letter routing key routed it.
            assert_eq!(message_count(&conn, &s.dlqs[1].1).await, 0);
            assert_eq!(message_count(&conn, &s.dlqs[2].1).await, 0);
        })
    }
);

broker_test!(
    bcc_keys_are_not_in_x_death_but_still_route_the_dead_letter,
    |b| {
        run_for(TIMER_TEST_DEADLINE, async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let s = cc_setup(&ch, &["k-orig", "k-bcc", "k-other"], None).await;
            let before = now_secs();
            let props =
                BasicProperties::default().with_headers(table(&[("BCC", str_array(&["k-bcc"]))]));
            publish_props(&ch, &s.src_x, "k-orig", b"bcc", props).await;
            let m = get_one(&ch, &s.src).await;
            // The BCC header never reaches a consumer.
            let h = headers_of(&m.delivery.properties);
            assert!(h.inner().get("BCC").is_none(), "BCC delivered: {h:?}");
            reject(&ch, m.delivery.delivery_tag).await;
            // RabbitMQ 3.10 routes the dead letter with every key the message was
            // published with, BCC included, though x-death lists only the routing key
            // and the CC keys.
            for (key, q) in &s.dlqs[..2] {
                let d = get_one(&ch, q).await;
                let after = now_secs();
                assert_eq!(d.delivery.data, b"bcc", "dead letter in the {key} queue");
                assert_eq!(d.delivery.routing_key.as_str(), "k-orig");
                let h = headers_of(&d.delivery.properties);
                assert!(h.inner().get("BCC").is_none(), "BCC dead-lettered: {h:?}");
                assert_deaths(
                    &h,
                    &[death(1, "rejected", &s.src, &s.src_x, &["k-orig"], None)],
                    before,
                    after,
                );
            }
            assert_eq!(message_count(&conn, &s.dlqs[2].1).await, 0);
        })
    }
);

// ---------------------------------------------------------------- wire format

/// Publishes a message whose headers table is `entries` in this order (lapin
/// would sort them) and with `expiration`, on a raw connection.
fn raw_publish_unsorted(
    raw: &mut RawConn,
    queue: &str,
    entries: &[(&str, &str)],
    expiration: &str,
) {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{basic, AMQPClass};
    use std::io::Write;
    raw.send(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: queue.into(),
            mandatory: false,
            immediate: false,
        })),
    ));
    let mut tbl = Vec::new();
    for (k, v) in entries {
        tbl.push(k.len() as u8);
        tbl.extend_from_slice(k.as_bytes());
        tbl.push(b'S');
        tbl.extend_from_slice(&(v.len() as u32).to_be_bytes());
        tbl.extend_from_slice(v.as_bytes());
    }
    let body = b"wire";
    let mut payload = Vec::new();
    payload.extend_from_slice(&60u16.to_be_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    payload.extend_from_slice(&(body.len() as u64).to_be_bytes());
    // headers (bit 13) and expiration (bit 8)
    payload.extend_from_slice(&((1u16 << 13) | (1u16 << 8)).to_be_bytes());
    payload.extend_from_slice(&(tbl.len() as u32).to_be_bytes());
    payload.extend_from_slice(&tbl);
    payload.push(expiration.len() as u8);
    payload.extend_from_slice(expiration.as_bytes());
    let mut frames = vec![2u8];
    frames.extend_from_slice(&1u16.to_be_bytes());
    frames.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frames.extend_from_slice(&payload);
    frames.push(0xCE);
    frames.push(3);
    frames.extend_from_slice(&1u16.to_be_bytes());
    frames.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frames.extend_from_slice(body);
    frames.push(0xCE);
    raw.stream.write_all(&frames).unwrap();
}

/// The keys and type tags of a wire-order table, leaving out x-last-death-* (which
/// RabbitMQ 3.10 does not send and 3.13 does).
fn keys_and_tags(t: &[(String, char, wire::Value)]) -> Vec<(String, char)> {
    t.iter()
        .filter(|(k, _, _)| !k.starts_with("x-last-death-"))
        .map(|(k, c, _)| (k.clone(), *c))
        .collect()
}

fn kt(items: &[(&str, char)]) -> Vec<(String, char)> {
    items.iter().map(|(k, c)| (k.to_string(), *c)).collect()
}

fn x_death_entries(h: &[(String, char, wire::Value)]) -> Vec<Vec<(String, char, wire::Value)>> {
    match wire::lookup(h, "x-death") {
        Some(('A', wire::Value::Array(items))) => items
            .iter()
            .map(|(c, v)| match (c, v) {
                ('F', wire::Value::Table(t)) => t.clone(),
                other => panic!("x-death entry on the wire is {other:?}"),
            })
            .collect(),
        other => panic!("x-death on the wire is {other:?}"),
    }
}

broker_test!(x_death_wire_order_and_types, |b| {
    let (src, dlq, self_q) = (
        unique("dl-wire-src"),
        unique("dl-wire-dlq"),
        unique("dl-wire-self"),
    );
    run_for(TIMER_TEST_DEADLINE, async {
        let (_conn, ch) = open(&b.url()).await;
        declare_queue(&ch, &dlq).await;
        declare_queue_with(
            &ch,
            &src,
            QueueDeclareOptions::default(),
            table(&dl_to(&dlq)),
        )
        .await
        .unwrap();
        declare_queue_with(
            &ch,
            &self_q,
            QueueDeclareOptions::default(),
            table(&[("x-dead-letter-exchange", ls(""))]),
        )
        .await
        .unwrap();
    });
    let mut raw = RawConn::open_channel_1(b.addr(), "guest", "guest");
    raw_publish_unsorted(
        &mut raw,
        &src,
        &[("zzz", "1"), ("aaa", "2"), ("mmm", "3")],
        "60000",
    );
    raw_publish_unsorted(&mut raw, &self_q, &[("zzz", "1"), ("aaa", "2")], "60000");
    // An ordinary delivery passes the headers on exactly as published.
    raw_publish_unsorted(&mut raw, &dlq, &[("zzz", "1"), ("aaa", "2")], "60000");
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open(&b.url()).await;
        // The plain message first, so that it is the first in dlq.
        wait_count_within(&conn, &dlq, 1).await;
        let m = get_one(&ch, &src).await;
        reject(&ch, m.delivery.delivery_tag).await;
        // Twice in the same queue for the same reason.
        for _ in 0..2 {
            let m = get_one(&ch, &self_q).await;
            reject(&ch, m.delivery.delivery_tag).await;
        }
        wait_count_within(&conn, &dlq, 2).await;
        wait_count_within(&conn, &self_q, 1).await;
    });

    let plain = raw.get_wire_properties(&dlq).expect("the plain message");
    let h = plain.headers.expect("headers");
    assert_eq!(
        keys_and_tags(&h),
        kt(&[("zzz", 'S'), ("aaa", 'S')]),
        "headers of an ordinary delivery: {}",
        wire::render(&h)
    );
    assert_eq!(plain.expiration.as_deref(), Some("60000"));

    let dead = raw.get_wire_properties(&dlq).expect("the dead letter");
    assert!(dead.expiration.is_none(), "expiration kept");
    let h = dead.headers.expect("headers");
    // Dead-lettering rewrites the whole headers table sorted by key (byte order).
    assert_eq!(
        keys_and_tags(&h),
        kt(&[
            ("aaa", 'S'),
            ("mmm", 'S'),
            ("x-death", 'A'),
            ("x-first-death-exchange", 'S'),
            ("x-first-death-queue", 'S'),
            ("x-first-death-reason", 'S'),
            ("zzz", 'S'),
        ]),
        "headers of a dead letter: {}",
        wire::render(&h)
    );
    let entries = x_death_entries(&h);
    assert_eq!(entries.len(), 1);
    // A new entry: count first, then in this (unsorted) order.
    assert_eq!(
        keys_and_tags(&entries[0]),
        kt(&[
            ("count", 'l'),
            ("reason", 'S'),
            ("queue", 'S'),
            ("time", 'T'),
            ("exchange", 'S'),
            ("routing-keys", 'A'),
            ("original-expiration", 'S'),
        ]),
        "a new x-death entry: {}",
        wire::render(&entries[0])
    );
    match wire::lookup(&entries[0], "routing-keys") {
        Some((_, wire::Value::Array(keys))) => {
            assert_eq!(keys.len(), 1);
            assert_eq!(keys[0].0, 'S');
            assert_eq!(keys[0].1.str().as_deref(), Some(src.as_str()));
        }
        other => panic!("routing-keys {other:?}"),
    }

    // The message rejected twice in self_q sits there again.
    let twice = raw
        .get_wire_properties(&self_q)
        .expect("the twice-dead message");
    let h = twice.headers.expect("headers");
    let entries = x_death_entries(&h);
    assert_eq!(entries.len(), 1, "{}", wire::render(&h));
    // An entry whose count was incremented comes back with its keys sorted.
    assert_eq!(
        keys_and_tags(&entries[0]),
        kt(&[
            ("count", 'l'),
            ("exchange", 'S'),
            ("original-expiration", 'S'),
            ("queue", 'S'),
            ("reason", 'S'),
            ("routing-keys", 'A'),
            ("time", 'T'),
        ]),
        "an incremented x-death entry: {}",
        wire::render(&entries[0])
    );
    assert_eq!(
        wire::lookup(&entries[0], "count"),
        Some(('l', &wire::Value::Int(2)))
    );
});

// ---------------------------------------------------------------- repeated deaths

broker_test!(
    same_death_again_increments_count_and_keeps_the_first_time,
    |b| {
        run_for(TIMER_TEST_DEADLINE, async {
            let (conn, ch) = open_confirming(&b.url()).await;
            let dlq = queue_with(&ch, "dl-dlq", &[]).await;
            let src = queue_with(&ch, "dl-again-src", &dl_to(&dlq)).await;
            let x = unique("dl-again-x");
            declare_exchange(&ch, &x, ExchangeKind::Direct).await;
            bind(&ch, &src, &x, "first-key").await;
            let before = now_secs();
            // First through an exchange of its own with a key of its own...
            publish(&ch, &x, "first-key", b"again").await;
            let m = get_one(&ch, &src).await;
            reject(&ch, m.delivery.delivery_tag).await;
            let first = get_one(&ch, &dlq).await;
            let after = now_secs();
            let h1 = headers_of(&first.delivery.properties);
            let d1 = assert_deaths(
                &h1,
                &[death(1, "rejected", &src, &x, &["first-key"], None)],
                before,
                after,
            );
            // Let the wall clock reach a later second, so a rewritten time would show.
            assert!(
                eventually(Duration::from_secs(3), || now_secs() > d1[0].time).await,
                "the clock did not move"
            );
            // ...then republished, headers and all, through the default exchange, and
            // rejected again in the same queue.
            publish_props(&ch, "", &src, b"again", first.delivery.properties.clone()).await;
            let m = get_one(&ch, &src).await;
            reject(&ch, m.delivery.delivery_tag).await;
            let second = get_one(&ch, &dlq).await;
            let h2 = headers_of(&second.delivery.properties);
            let d2 = deaths(&h2);
            assert_eq!(d2.len(), 1, "{h2:?}");
            assert_eq!(
                d2[0],
                Death {
                    count: 2,
                    ..d1[0].clone()
                },
                "the entry changes only in its count: time, exchange and routing keys \
                 stay those of the first death"
            );
            assert_first_death(&h2, &src, "rejected", &x);
            assert_last_death_absent_or_newest(&h2);
            assert_eq!(message_count(&conn, &src).await, 0);
        })
    }
);

broker_test!(
    rejection_ping_pong_moves_the_repeated_death_to_the_front,
    |b| {
        run_for(TIMER_TEST_DEADLINE, async {
            let (_conn, ch) = open_confirming(&b.url()).await;
            // q1 and q2 dead-letter into each other: a cycle, but one made of
            // rejections, so nothing is dropped.
            let q1 = unique("dl-pp1");
            let q2 = unique("dl-pp2");
            for (q, other) in [(&q1, &q2), (&q2, &q1)] {
                declare_queue_with(&ch, q, QueueDeclareOptions::default(), table(&dl_to(other)))
                    .await
                    .unwrap();
            }
            let before = now_secs();
            publish(&ch, "", &q1, b"ping").await;
            // q1 -> q2
            let m = get_one(&ch, &q1).await;
            reject(&ch, m.delivery.delivery_tag).await;
            // q2 -> q1
            let m = get_one(&ch, &q2).await;
            let h = headers_of(&m.delivery.properties);
            assert_deaths(
                &h,
                &[death(1, "rejected", &q1, "", &[&q1], None)],
                before,
                now_secs(),
            );
            reject(&ch, m.delivery.delivery_tag).await;
            // q1 -> q2 again
            let m = get_one(&ch, &q1).await;
            let h = headers_of(&m.delivery.properties);
            // Two different deaths: two entries, newest first.
            assert_deaths(
                &h,
                &[
                    death(1, "rejected", &q2, "", &[&q2], None),
                    death(1, "rejected", &q1, "", &[&q1], None),
                ],
                before,
                now_secs(),
            );
            reject(&ch, m.delivery.delivery_tag).await;
            let m = get_one(&ch, &q2).await;
            let h = headers_of(&m.delivery.properties);
            // q1's entry counted twice and moved to the front.
            assert_deaths(
                &h,
                &[
                    death(2, "rejected", &q1, "", &[&q1], None),
                    death(1, "rejected", &q2, "", &[&q2], None),
                ],
                before,
                now_secs(),
            );
            assert_first_death(&h, &q1, "rejected", "");
            assert_last_death_absent_or_newest(&h);
            step(
                "basic.ack",
                ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default()),
            )
            .await
            .unwrap();
        })
    }
);

broker_test!(expiry_after_rejection_adds_a_second_entry_in_front, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (_conn, ch) = open_confirming(&b.url()).await;
        let q1 = unique("dl-rej");
        let q2 = unique("dl-ttl");
        declare_queue_with(&ch, &q1, QueueDeclareOptions::default(), table(&dl_to(&q2)))
            .await
            .unwrap();
        let mut args = dl_to(&q1);
        args.push(("x-message-ttl", int(100)));
        declare_queue_with(&ch, &q2, QueueDeclareOptions::default(), table(&args))
            .await
            .unwrap();
        let before = now_secs();
        publish(&ch, "", &q1, b"pong").await;
        let m = get_one(&ch, &q1).await;
        reject(&ch, m.delivery.delivery_tag).await;
        // Rejected into q2, expired back into q1: that cycle has a rejection in it.
        let m = get_one(&ch, &q1).await;
        let h = headers_of(&m.delivery.properties);
        assert_deaths(
            &h,
            &[
                death(1, "expired", &q2, "", &[&q2], None),
                death(1, "rejected", &q1, "", &[&q1], None),
            ],
            before,
            now_secs(),
        );
        assert_first_death(&h, &q1, "rejected", "");
        assert_last_death_absent_or_newest(&h);
        step(
            "basic.ack",
            ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default()),
        )
        .await
        .unwrap();
    })
});

// ---------------------------------------------------------------- cycles

broker_test!(a_queue_expiring_into_itself_drops_the_message, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        // The default exchange and no routing key override: dead letters go back
        // to the queue itself, with nothing but expiries in the cycle.
        let q = queue_with(
            &ch,
            "dl-self-ttl",
            &[
                ("x-message-ttl", int(100)),
                ("x-dead-letter-exchange", ls("")),
            ],
        )
        .await;
        publish(&ch, "", &q, b"loop").await;
        wait_count_within(&conn, &q, 0).await;
        // Were it looping, a consumer would soon get it.
        let cch = channel(&conn).await;
        let mut consumer = consume(&cch, &q, "", no_ack()).await;
        assert_quiet_for(&mut consumer, Duration::from_secs(1)).await;
    })
});

broker_test!(
    a_dead_letter_is_dropped_only_for_the_queue_it_would_cycle_to,
    |b| {
        run_for(TIMER_TEST_DEADLINE, async {
            let (conn, ch) = open_confirming(&b.url()).await;
            // The DLX fans out to the expiring queue itself and to a witness.
            let dlx = unique("dl-fan-dlx");
            declare_exchange(&ch, &dlx, ExchangeKind::Fanout).await;
            let q = queue_with(
                &ch,
                "dl-fan-ttl",
                &[
                    ("x-message-ttl", int(100)),
                    ("x-dead-letter-exchange", ls(&dlx)),
                ],
            )
            .await;
            let witness = queue_with(&ch, "dl-fan-witness", &[]).await;
            bind(&ch, &q, &dlx, "").await;
            bind(&ch, &witness, &dlx, "").await;
            let wch = channel(&conn).await;
            let mut witnessed = consume(&wch, &witness, "", no_ack()).await;
            let before = now_secs();
            publish(&ch, "", &q, b"fan").await;
            let d = next_within_expiry(&mut witnessed).await;
            assert_eq!(body_str(&d), "fan");
            let h = headers_of(&d.properties);
            assert_deaths(
                &h,
                &[death(1, "expired", &q, "", &[&q], None)],
                before,
                now_secs(),
            );
            // One copy only, and none back in the cycling queue.
            wait_count_within(&conn, &q, 0).await;
            let cch = channel(&conn).await;
            let mut consumer = consume(&cch, &q, "", no_ack()).await;
            assert_quiet_for(&mut consumer, Duration::from_secs(1)).await;
            assert_quiet_for(&mut witnessed, Duration::from_millis(1)).await;
        })
    }
);

broker_test!(an_expiry_cycle_between_two_queues_drops_the_message, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let q1 = unique("dl-tp1");
        let q2 = unique("dl-tp2");
        for (q, other) in [(&q1, &q2), (&q2, &q1)] {
            let mut args = dl_to(other);
            args.push(("x-message-ttl", int(100)));
            declare_queue_with(&ch, q, QueueDeclareOptions::default(), table(&args))
                .await
                .unwrap();
        }
        publish(&ch, "", &q1, b"round and round").await;
        wait_count_within(&conn, &q1, 0).await;
        wait_count_within(&conn, &q2, 0).await;
        let cch = channel(&conn).await;
        let mut c1 = consume(&cch, &q1, "", no_ack()).await;
        let mut c2 = consume(&cch, &q2, "", no_ack()).await;
        assert_quiet_for(&mut c1, Duration::from_secs(1)).await;
        assert_quiet_for(&mut c2, Duration::from_millis(1)).await;
    })
});

broker_test!(a_rejection_cycle_on_one_queue_keeps_the_message, |b| {
    run_for(TIMER_TEST_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let q = queue_with(&ch, "dl-self-rej", &[("x-dead-letter-exchange", ls(""))]).await;
        let before = now_secs();
        publish(&ch, "", &q, b"again and again").await;
        for n in 1..=3i64 {
            let m = get_one(&ch, &q).await;
            if n > 1 {
                let h = headers_of(&m.delivery.properties);
                assert_deaths(
                    &h,
                    &[death(n - 1, "rejected", &q, "", &[&q], None)],
                    before,
                    now_secs(),
                );
            }
            reject(&ch, m.delivery.delivery_tag).await;
        }
        let m = get_one(&ch, &q).await;
        let h = headers_of(&m.delivery.properties);
        assert_deaths(
            &h,
            &[death(3, "rejected", &q, "", &[&q], None)],
            before,
            now_secs(),
        );
        assert_first_death(&h, &q, "rejected", "");
        assert_eq!(message_count(&conn, &q).await, 0);
    })
});

//! Prometheus metrics (`--prometheus-listen`, RabbitMQ's rabbitmq_prometheus
//! names) scraped over HTTP with ureq after a lapin workload, parsed with
//! the `prometheus-parse` crate and checked line by line against the text
//! format. Each runs at 1 and 2 shards.

mod common;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prometheus_parse::{Sample, Scrape, Value};

/// How long figures that settle asynchronously (acks travel to their
/// queue's shard) may take to show.
const DEADLINE: Duration = Duration::from_secs(10);

fn fetch(url: &str) -> String {
    let response = ureq::get(url)
        .timeout(Duration::from_secs(30))
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200);
    let content_type = response.header("Content-Type").unwrap_or("").to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content type {content_type}"
    );
    response.into_string().expect("body")
}

/// Checks every line against the text format: each sample's family has a
/// TYPE and a HELP line before it, names and labels are well formed, and
/// values parse as numbers.
fn check_text_format(text: &str) {
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped: Vec<String> = Vec::new();
    let name_ok = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(name_ok(name), "bad name in {line}");
            assert!(
                ["counter", "gauge", "untyped", "histogram", "summary"].contains(&kind),
                "bad type in {line}"
            );
            assert!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "family typed twice: {line}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect("HELP name text");
            helped.push(name.to_string());
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment: {line}");
        assert!(!line.is_empty(), "empty line in the scrape");
        let (series, value) = line.rsplit_once(' ').expect("series value");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("closing brace");
                for pair in split_labels(labels) {
                    let (key, quoted) = pair.split_once('=').expect("label=value");
                    assert!(name_ok(key), "bad label name in {line}");
                    assert!(
                        quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'),
                        "unquoted label value in {line}"
                    );
                }
                name
            }
            None => series,
        };
        assert!(name_ok(name), "bad metric name in {line}");
        assert!(typed.contains_key(name), "no TYPE before {line}");
        assert!(helped.iter().any(|h| h == name), "no HELP before {line}");
    }
}

/// Splits `a="x",b="y,z"` at the commas between labels.
fn split_labels(labels: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < labels.len() {
        parts.push(&labels[start..]);
    }
    parts
}

fn scrape(url: &str) -> Scrape {
    let text = fetch(url);
    check_text_format(&text);
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("prometheus text format")
}

fn value_of(sample: &Sample) -> f64 {
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        _ => panic!("{} is not a plain sample", sample.metric),
    }
}

/// The sum of a metric's samples whose labels include `labels`.
fn total(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let samples: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(k).is_some_and(|l| l == *v))
        })
        .collect();
    if samples.is_empty() {
        None
    } else {
        Some(samples.iter().map(|s| value_of(s)).sum())
    }
}

/// A metric's name, the labels its samples must have, and the sum wanted.
type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Scrapes until every expectation holds (or the deadline passes, then
/// fails naming what differs).
fn expect_eventually(url: &str, expected: &[Expected]) -> Scrape {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let scrape = scrape(url);
        let wrong: Vec<String> = expected
            .iter()
            .filter_map(|(name, labels, want)| {
                let got = total(&scrape, name, labels);
                (got != Some(*want)).then(|| format!("{name}{labels:?}: {got:?}, want {want}"))
            })
            .collect();
        if wrong.is_empty() {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never matched: {wrong:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

broker_test!(
    metrics_carry_rabbitmqs_names_and_the_workloads_figures,
    |b| {
        let base = b
            .prometheus_url()
            .expect("the Prometheus endpoint's address");
        run_for(Duration::from_secs(30), async {
            let (_conn, ch) = open_confirming(&b.url()).await;
            declare_queue(&ch, "pm-a").await;
            declare_queue(&ch, "pm-b").await;
            for _ in 0..10 {
                publish(&ch, "", "pm-a", b"a").await;
            }
            for _ in 0..5 {
                publish(&ch, "", "pm-b", b"b").await;
            }
            // Unroutable: confirmed all the same, as RabbitMQ does.
            for _ in 0..3 {
                publish(&ch, "amq.direct", "nobody-bound", b"lost").await;
            }
            for _ in 0..4 {
                let got = step(
                    "basic.get",
                    ch.basic_get("pm-a", BasicGetOptions::default()),
                )
                .await
                .expect("basic.get")
                .expect("a message");
                step("basic.ack", got.delivery.ack(BasicAckOptions::default()))
                    .await
                    .expect("basic.ack");
            }

            let classic: &[(&str, &str)] = &[("queue_type", "rabbit_classic_queue")];
            let aggregated = expect_eventually(
                &format!("{base}/metrics"),
                &[
                    ("rabbitmq_connections", &[], 1.0),
                    ("rabbitmq_channels", &[], 1.0),
                    ("rabbitmq_queues", &[], 2.0),
                    ("rabbitmq_consumers", &[], 0.0),
                    ("rabbitmq_queue_messages", &[], 11.0),
                    ("rabbitmq_queue_messages_ready", &[], 11.0),
                    ("rabbitmq_queue_messages_unacked", &[], 0.0),
                    ("rabbitmq_queue_consumers", &[], 0.0),
                    (
                        "rabbitmq_global_messages_received_total",
                        &[("protocol", "amqp091")],
                        18.0,
                    ),
                    ("rabbitmq_global_messages_routed_total", &[], 15.0),
                    (
                        "rabbitmq_global_messages_unroutable_dropped_total",
                        &[],
                        3.0,
                    ),
                    ("rabbitmq_global_messages_confirmed_total", &[], 18.0),
                    ("rabbitmq_global_messages_delivered_total", classic, 4.0),
                    ("rabbitmq_global_messages_acknowledged_total", classic, 4.0),
                    ("rabbitmq_global_publishers", &[], 1.0),
                    ("rabbitmq_global_consumers", &[], 0.0),
                    ("warren_shard_messages_routed_total", &[], 15.0),
                ],
            );
            // Aggregated: no per-queue series.
            assert!(aggregated
                .samples
                .iter()
                .all(|s| s.labels.get("queue").is_none()));
            let resident = total(&aggregated, "rabbitmq_process_resident_memory_bytes", &[])
                .expect("resident memory");
            assert!(resident > 0.0);
            let build = aggregated
                .samples
                .iter()
                .find(|s| s.metric == "rabbitmq_build_info")
                .expect("rabbitmq_build_info");
            assert!(build.labels.get("rabbitmq_version").is_some());
            let identity = aggregated
                .samples
                .iter()
                .find(|s| s.metric == "rabbitmq_identity_info")
                .expect("rabbitmq_identity_info");
            assert!(identity
                .labels
                .get("rabbitmq_node")
                .is_some_and(|n| n.starts_with("warren@")));
            // One series per shard for warren's own figures.
            for name in [
                "warren_shard_messages_routed_total",
                "warren_shard_mailbox_batches_sent_total",
                "warren_shard_mailbox_messages_sent_total",
                "warren_shard_mailbox_batch_size_mean",
                "warren_shard_reactor_busy_seconds_total",
                "warren_shard_reactor_busy_ratio",
                "warren_shard_store_fsyncs_total",
                "warren_shard_store_written_bytes_total",
            ] {
                for shard in 0..b.shards() {
                    let shard = shard.to_string();
                    assert!(
                        total(&aggregated, name, &[("shard", &shard)]).is_some(),
                        "{name} for shard {shard}"
                    );
                }
            }
            let busy = total(&aggregated, "warren_shard_reactor_busy_seconds_total", &[])
                .expect("busy seconds");
            assert!(busy > 0.0, "the shards ran tasks");
            // A counter: a later scrape never reads less, whatever ran between.
            let later = scrape(&format!("{base}/metrics"));
            let busy_later = total(&later, "warren_shard_reactor_busy_seconds_total", &[])
                .expect("busy seconds");
            assert!(
                busy_later >= busy,
                "reactor busy seconds went down: {busy} then {busy_later}"
            );

            let per_object = expect_eventually(
                &format!("{base}/metrics/per-object"),
                &[
                    (
                        "rabbitmq_queue_messages",
                        &[("vhost", "/"), ("queue", "pm-a")],
                        6.0,
                    ),
                    (
                        "rabbitmq_queue_messages",
                        &[("vhost", "/"), ("queue", "pm-b")],
                        5.0,
                    ),
                    ("rabbitmq_queue_messages_ready", &[("queue", "pm-a")], 6.0),
                    (
                        "rabbitmq_queue_messages_published_total",
                        &[("queue", "pm-a")],
                        10.0,
                    ),
                    (
                        "rabbitmq_queue_messages_delivered_total",
                        &[("queue", "pm-a")],
                        4.0,
                    ),
                    (
                        "rabbitmq_queue_messages_acked_total",
                        &[("queue", "pm-a")],
                        4.0,
                    ),
                    ("rabbitmq_connections", &[], 1.0),
                ],
            );
            assert_eq!(
                per_object
                    .samples
                    .iter()
                    .filter(|s| s.metric == "rabbitmq_queue_messages")
                    .count(),
                2
            );
        });
    }
);

broker_test!(persistent_messages_count_store_writes, |b| {
    let base = b
        .prometheus_url()
        .expect("the Prometheus endpoint's address");
    run_for(Duration::from_secs(30), async {
        let (_conn, ch) = open_confirming(&b.url()).await;
        step(
            "queue.declare",
            ch.queue_declare(
                "pm-durable",
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("queue.declare");
        for _ in 0..3 {
            publish_props(
                &ch,
                "",
                "pm-durable",
                b"kept",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await;
        }
        let scrape = scrape(&format!("{base}/metrics"));
        let fsyncs = total(&scrape, "warren_shard_store_fsyncs_total", &[]).expect("fsyncs");
        let bytes = total(&scrape, "warren_shard_store_written_bytes_total", &[]).expect("bytes");
        assert!(fsyncs >= 1.0, "confirmed persistent messages were synced");
        assert!(bytes >= 3.0 * 4.0, "the bodies were written: {bytes}");
    });
});

#[test]
fn no_prometheus_means_no_listener() {
    let broker = common::Broker::start_with(1, &["--no-prometheus"]);
    assert!(broker.prometheus_url().is_none());
}

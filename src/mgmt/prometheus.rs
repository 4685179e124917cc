//! Prometheus metrics on `--prometheus-listen`, as RabbitMQ's
//! rabbitmq_prometheus plugin serves them: `/metrics` aggregated (one
//! figure per metric, as RabbitMQ returns by default) and
//! `/metrics/per-object` with a series per queue (labels `vhost` and
//! `queue`), in the Prometheus text format (version 0.0.4), without
//! authentication as RabbitMQ's.
//!
//! RabbitMQ's metric names are used where RabbitMQ has the figure
//! (`rabbitmq_queue_messages`, `rabbitmq_global_messages_received_total`,
//! ...); warren's own per-shard figures are `warren_shard_*`, labelled
//! `shard`. A scrape asks every shard once through the control plane
//! (`ControlRequest::Metrics`) and sums what they send: no shard shares a
//! counter with anyone.
//!
//! It runs on the control-plane thread, beside the management API.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::broker::control::{ControlReply, ControlRequest};
use crate::broker::metrics::ShardMetrics;
use crate::broker::queue::QueueStats;
use crate::mgmt::plane::Plane;
use crate::mgmt::NodeInfo;

/// The text format's content type, as Prometheus asks for it.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The version of the Prometheus client RabbitMQ 3.10 ships, shown in
/// `rabbitmq_build_info` as RabbitMQ shows its own.
const PROMETHEUS_CLIENT_VERSION: &str = "4.9.1";

#[derive(Clone)]
pub(crate) struct Metrics {
    pub(crate) plane: Plane,
    pub(crate) node: Arc<NodeInfo>,
}

pub(crate) fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(aggregated))
        .route("/metrics/per-object", get(per_object))
        .with_state(metrics)
}

async fn aggregated(State(metrics): State<Metrics>) -> Response {
    scrape(&metrics, false).await
}

async fn per_object(State(metrics): State<Metrics>) -> Response {
    scrape(&metrics, true).await
}

async fn scrape(metrics: &Metrics, per_object: bool) -> Response {
    let replies = metrics
        .plane
        .ask_all(|| ControlRequest::Metrics { per_object })
        .await;
    let shards: Vec<ShardMetrics> = match replies {
        Ok(replies) => replies
            .into_iter()
            .filter_map(|reply| match reply {
                ControlReply::Metrics(m) => Some(*m),
                _ => None,
            })
            .collect(),
        Err(error) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the broker did not answer: {}\n", error.reason),
            )
                .into_response()
        }
    };
    let text = render(&metrics.node, &shards, per_object);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// A metric family's header lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "# HELP {name} {help}");
}

/// One family with a single unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value as the text format writes it: backslash, double quote
/// and line feed escaped.
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A family's name, help text and how to read its figure off one shard.
type ShardFamily = (&'static str, &'static str, fn(&ShardMetrics) -> u64);
/// The same, off a queue's counts.
type StatsFamily = (&'static str, &'static str, fn(&QueueStats) -> u64);
/// A family's name, type, help text and how to read it off one shard.
type TypedShardFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardMetrics) -> u64,
);

/// Messages a queue handed out: deliveries and basic.get, with and
/// without acks (RabbitMQ's `deliver_get`).
pub(crate) fn delivered(stats: &QueueStats) -> u64 {
    stats.deliver + stats.deliver_no_ack + stats.get + stats.get_no_ack
}

/// The scrape's text, from every shard's answer.
pub(crate) fn render(node: &NodeInfo, shards: &[ShardMetrics], per_object: bool) -> String {
    let sum = |f: fn(&ShardMetrics) -> u64| shards.iter().map(f).sum::<u64>();
    let mut out = String::with_capacity(8192);

    single(
        &mut out,
        "rabbitmq_connections",
        "gauge",
        "Connections currently open",
        sum(|s| s.connections),
    );
    single(
        &mut out,
        "rabbitmq_channels",
        "gauge",
        "Channels currently open",
        sum(|s| s.channels),
    );
    single(
        &mut out,
        "rabbitmq_consumers",
        "gauge",
        "Consumers currently connected",
        sum(|s| s.consumers),
    );
    single(
        &mut out,
        "rabbitmq_queues",
        "gauge",
        "Queues available",
        sum(|s| s.queues),
    );
    single(
        &mut out,
        "rabbitmq_process_resident_memory_bytes",
        "gauge",
        "Memory used in bytes",
        (node.resident_bytes)(),
    );
    single(
        &mut out,
        "rabbitmq_resident_memory_limit_bytes",
        "gauge",
        "Memory high watermark in bytes",
        node.memory_limit_bytes,
    );

    // Queue figures: one sample each, or one per queue.
    let queue_families: [ShardFamily; 5] = [
        (
            "rabbitmq_queue_messages_ready",
            "Messages ready to be delivered to consumers",
            |s| s.messages_ready,
        ),
        (
            "rabbitmq_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            |s| s.messages_unacked,
        ),
        (
            "rabbitmq_queue_messages",
            "Sum of ready and unacknowledged messages - total queue depth",
            |s| s.messages_ready + s.messages_unacked,
        ),
        ("rabbitmq_queue_consumers", "Consumers on a queue", |s| {
            s.consumers
        }),
        (
            "rabbitmq_queue_process_memory_bytes",
            "Memory in bytes used by the Erlang queue process",
            |s| s.queue_memory_bytes,
        ),
    ];
    type PerQueue = fn(&crate::broker::metrics::QueueFigures) -> u64;
    let per_queue: [PerQueue; 5] = [
        |q| u64::from(q.ready),
        |q| u64::from(q.unacked),
        |q| u64::from(q.ready) + u64::from(q.unacked),
        |q| u64::from(q.consumers),
        |q| q.memory_bytes,
    ];
    // Each queue's labels, escaped once for all its lines.
    let queues: Vec<(&crate::broker::metrics::QueueFigures, String)> = shards
        .iter()
        .flat_map(|s| &s.queue_figures)
        .map(|queue| {
            let labels = format!(
                "{{vhost=\"{}\",queue=\"{}\"}}",
                escape(queue.vhost.as_str()),
                escape(queue.name.as_str())
            );
            (queue, labels)
        })
        .collect();
    if per_object {
        out.reserve(queues.len() * 8 * 64);
    }
    for ((name, help, total), per_queue) in queue_families.iter().zip(per_queue) {
        family(&mut out, name, "gauge", help);
        if per_object {
            for (queue, labels) in &queues {
                let _ = writeln!(out, "{name}{labels} {}", per_queue(queue));
            }
        } else {
            let _ = writeln!(out, "{name} {}", sum(*total));
        }
    }
    if per_object {
        let counters: [StatsFamily; 3] = [
            (
                "rabbitmq_queue_messages_published_total",
                "Total number of messages published to queues",
                |s| s.publish,
            ),
            (
                "rabbitmq_queue_messages_delivered_total",
                "Total number of messages delivered to consumers",
                delivered,
            ),
            (
                "rabbitmq_queue_messages_acked_total",
                "Total number of messages acknowledged by consumers",
                |s| s.ack,
            ),
        ];
        for (name, help, value) in counters {
            family(&mut out, name, "counter", help);
            for (queue, labels) in &queues {
                let _ = writeln!(out, "{name}{labels} {}", value(&queue.stats));
            }
        }
    }

    // RabbitMQ's global counters, labelled by protocol (and queue type
    // where RabbitMQ splits them).
    const PROTOCOL: &str = "protocol=\"amqp091\"";
    let global: [(&str, &str, &str, u64); 7] = [
        (
            "rabbitmq_global_messages_received_total",
            "counter",
            "Total number of messages received from publishers",
            sum(|s| s.published),
        ),
        (
            "rabbitmq_global_messages_routed_total",
            "counter",
            "Total number of messages routed to queues or streams",
            sum(|s| s.counts.routed),
        ),
        (
            "rabbitmq_global_messages_unroutable_dropped_total",
            "counter",
            "Total number of messages published as non-mandatory into an exchange and \
             dropped as unroutable",
            sum(|s| s.counts.unroutable),
        ),
        (
            "rabbitmq_global_messages_confirmed_total",
            "counter",
            "Total number of messages confirmed to publishers",
            sum(|s| s.counts.confirmed),
        ),
        (
            "rabbitmq_global_publishers",
            "gauge",
            "Current number of publishers",
            sum(|s| s.publishers),
        ),
        (
            "rabbitmq_global_consumers",
            "gauge",
            "Current number of consumers",
            sum(|s| s.consumers),
        ),
        (
            "rabbitmq_global_messages_redelivered_total",
            "counter",
            "Total number of messages redelivered to consumers",
            sum(|s| s.classic.redeliver + s.quorum.redeliver),
        ),
    ];
    for (name, kind, help, value) in global {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name}{{{PROTOCOL}}} {value}");
    }
    let by_type: [StatsFamily; 2] = [
        (
            "rabbitmq_global_messages_delivered_total",
            "Total number of messages delivered to consumers",
            delivered,
        ),
        (
            "rabbitmq_global_messages_acknowledged_total",
            "Total number of messages acknowledged by consumers",
            |s| s.ack,
        ),
    ];
    for (name, help, value) in by_type {
        family(&mut out, name, "counter", help);
        let classic: u64 = shards.iter().map(|s| value(&s.classic)).sum();
        let quorum: u64 = shards.iter().map(|s| value(&s.quorum)).sum();
        let _ = writeln!(
            out,
            "{name}{{{PROTOCOL},queue_type=\"rabbit_classic_queue\"}} {classic}"
        );
        let _ = writeln!(
            out,
            "{name}{{{PROTOCOL},queue_type=\"rabbit_quorum_queue\"}} {quorum}"
        );
    }

    family(
        &mut out,
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
    );
    let _ = writeln!(
        out,
        "rabbitmq_build_info{{rabbitmq_version=\"{}\",prometheus_plugin_version=\"{}\",\
         prometheus_client_version=\"{PROMETHEUS_CLIENT_VERSION}\",erlang_version=\"none\",\
         product_name=\"warren\",product_version=\"{}\"}} 1",
        crate::mgmt::RABBITMQ_VERSION,
        crate::mgmt::RABBITMQ_VERSION,
        env!("CARGO_PKG_VERSION")
    );
    family(
        &mut out,
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
    );
    let node_name = escape(&node.name);
    let _ = writeln!(
        out,
        "rabbitmq_identity_info{{rabbitmq_node=\"{node_name}\",rabbitmq_cluster=\"{node_name}\",\
         rabbitmq_cluster_permanent_id=\"{node_name}\"}} 1"
    );

    // warren's own figures, per shard.
    let shard_families: [TypedShardFamily; 5] = [
        (
            "warren_shard_messages_routed_total",
            "counter",
            "Messages published on the shard's connections that reached a queue",
            |s| s.counts.routed,
        ),
        (
            "warren_shard_mailbox_batches_sent_total",
            "counter",
            "Batches the shard sent to its peers' mailboxes",
            |s| s.mailbox_batches_sent,
        ),
        (
            "warren_shard_mailbox_messages_sent_total",
            "counter",
            "Messages in the batches the shard sent to its peers' mailboxes",
            |s| s.mailbox_messages_sent,
        ),
        (
            "warren_shard_store_fsyncs_total",
            "counter",
            "Group commits (one fdatasync each) of the shard's message store",
            |s| s.store_fsyncs,
        ),
        (
            "warren_shard_store_written_bytes_total",
            "counter",
            "Bytes the shard's message store wrote",
            |s| s.store_bytes_written,
        ),
    ];
    for (name, kind, help, value) in shard_families {
        family(&mut out, name, kind, help);
        for shard in shards {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", shard.shard, value(shard));
        }
    }
    family(
        &mut out,
        "warren_shard_mailbox_batch_size_mean",
        "gauge",
        "Mean messages per mailbox batch since the shard started",
    );
    for shard in shards {
        let mean = if shard.mailbox_batches_sent == 0 {
            0.0
        } else {
            shard.mailbox_messages_sent as f64 / shard.mailbox_batches_sent as f64
        };
        let _ = writeln!(
            out,
            "warren_shard_mailbox_batch_size_mean{{shard=\"{}\"}} {mean}",
            shard.shard
        );
    }
    family(
        &mut out,
        "warren_shard_reactor_busy_seconds_total",
        "counter",
        "Time the shard's reactor spent running tasks; its rate is the busy fraction",
    );
    for shard in shards {
        let _ = writeln!(
            out,
            "warren_shard_reactor_busy_seconds_total{{shard=\"{}\"}} {}",
            shard.shard,
            shard.reactor_busy.as_secs_f64()
        );
    }
    family(
        &mut out,
        "warren_shard_reactor_busy_ratio",
        "gauge",
        "Busy time over uptime since the shard started (rate() of the busy seconds is the \
         fraction now)",
    );
    let uptime_s = node.started.elapsed().as_secs_f64().max(1e-9);
    for shard in shards {
        let ratio = (shard.reactor_busy.as_secs_f64() / uptime_s).min(1.0);
        let _ = writeln!(
            out,
            "warren_shard_reactor_busy_ratio{{shard=\"{}\"}} {ratio}",
            shard.shard
        );
    }
    out
}

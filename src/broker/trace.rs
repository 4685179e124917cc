//! The firehose tracer, as RabbitMQ's `rabbit_trace`: while tracing is on
//! for a vhost, every message published in it is copied to the topic
//! exchange `amq.rabbitmq.trace` with routing key `publish.<exchange>`,
//! and every delivery (basic.deliver and basic.get-ok) with
//! `deliver.<queue>`, carrying the original body and RabbitMQ's trace
//! headers (exchange_name, routing_keys, routed_queues, properties, node,
//! redelivered, user, channel, connection, vhost).
//!
//! The cost when off is one branch per message: the vhost replica's
//! `tracing` flag at publish and the connection's copy of it at delivery.
//! When on, a connection hands a `Trace` to its own shard as an effect
//! (`ShardMsg::Trace`), and the shard routes the trace message here,
//! outside the connection's turn. Messages published to the trace
//! exchange itself are never traced, so a consumer of trace messages
//! makes no trace of its own.
//!
//! The switch (`set_tracing`) is per shard, reached from the control plane
//! (`ControlRequest::SetTracing`), and is not durable, as in RabbitMQ.
//!
//! Trace log files (rabbitmq_tracing's traces) take their records from the
//! same place: where RabbitMQ's plugin binds a queue to
//! `amq.rabbitmq.trace` with the trace's pattern, a shard matches the
//! trace message's routing key against the patterns of its vhost's file
//! traces (`FileTraces`) and hands a `TraceEvent` to the trace writer
//! thread (`mgmt::trace_files`) over its own bounded channel. It never
//! waits: when the channel is full the event is dropped and counted per
//! trace, in the shard's own counters, which the management API sums.
//! With no file trace the firehose costs what it did; with the firehose
//! off, nothing reaches this code at all.
//!
//! It imports what `broker` may import.

use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use warren_protocol::{BasicProperties, FieldTable, FieldValue, ShortStr};

use crate::config;
use crate::metadata::exchange::TRACE_EXCHANGE;
use crate::model::ids::QueueId;
use crate::model::message::Message;
use crate::util::hash::FastMap;

/// A publish or a delivery to copy to the trace exchange.
#[derive(Debug)]
pub struct Trace {
    pub kind: TraceKind,
    pub vhost: ShortStr,
    pub channel: u16,
    /// The connection's name, "PEER -> LOCAL".
    pub connection: String,
    pub user: String,
    pub message: Message,
}

#[derive(Debug)]
pub enum TraceKind {
    /// Published, and routed to these queues.
    Publish { routed: Vec<QueueId> },
    /// Delivered from this queue.
    Deliver { queue: QueueId, redelivered: bool },
}

/// One trace log file as the shards know it: its id (given by the
/// management API) and its topic pattern over `publish.<exchange>` and
/// `deliver.<queue>`.
#[derive(Clone, Debug)]
pub struct FileTraceSpec {
    pub id: u64,
    pub pattern: String,
    /// The body bytes its records keep (all when None).
    pub max_payload_bytes: Option<u64>,
}

/// A publish or a delivery for the trace writer: what a trace log record
/// shows, for the file traces (`traces`, by id) whose pattern matched.
#[derive(Debug)]
pub struct TraceEvent {
    pub traces: Vec<u64>,
    pub kind: TraceEventKind,
    pub vhost: String,
    pub channel: u16,
    pub connection: String,
    pub user: String,
    /// The message as published: exchange, routing key, properties, body.
    pub message: Message,
}

#[derive(Debug)]
pub enum TraceEventKind {
    /// "Message published", routed to these queues.
    Published { routed_queues: Vec<String> },
    /// "Message received" from this queue.
    Received { queue: String },
}

#[derive(Debug)]
struct FileTrace {
    id: u64,
    /// The pattern's words, split as a topic exchange splits them.
    words: Vec<String>,
    max_payload_bytes: Option<u64>,
    /// Events this shard dropped for it because the writer was behind.
    dropped: u64,
}

/// A shard's part of the trace log files: the file traces of each vhost
/// and the channel to the writer thread. Empty, and never looked at, while
/// no trace exists.
#[derive(Debug, Default)]
pub(crate) struct FileTraces {
    writer: Option<Sender<TraceEvent>>,
    by_vhost: FastMap<String, Vec<FileTrace>>,
    /// Drops not yet logged, and when the last drop log line was written:
    /// at most one line per `config::TRACE_DROP_LOG_INTERVAL`.
    dropped_unlogged: u64,
    logged_at: Option<Instant>,
}

impl FileTraces {
    /// Replaces `vhost`'s file traces; a trace that stays keeps its count.
    pub(crate) fn set(
        &mut self,
        vhost: &str,
        specs: Vec<FileTraceSpec>,
        writer: Sender<TraceEvent>,
    ) {
        let mut old = self.by_vhost.remove(vhost).unwrap_or_default();
        let traces: Vec<FileTrace> = specs
            .into_iter()
            .map(|spec| {
                let dropped = old
                    .iter_mut()
                    .find(|t| t.id == spec.id)
                    .map_or(0, |t| t.dropped);
                FileTrace {
                    id: spec.id,
                    words: topic_words(&spec.pattern).map(str::to_string).collect(),
                    max_payload_bytes: spec.max_payload_bytes,
                    dropped,
                }
            })
            .collect();
        if !traces.is_empty() {
            self.by_vhost.insert(vhost.to_string(), traces);
        }
        self.writer = Some(writer);
    }

    /// Each file trace's id and the events this shard dropped for it.
    pub(crate) fn dropped(&self) -> Vec<(u64, u64)> {
        self.by_vhost
            .values()
            .flatten()
            .map(|t| (t.id, t.dropped))
            .collect()
    }

    /// The ids of `vhost`'s file traces whose pattern matches `routing_key`,
    /// and the most body bytes any of them keeps (None: all of it).
    fn matching(&self, vhost: &str, routing_key: &str) -> (Vec<u64>, Option<u64>) {
        let Some(traces) = self.by_vhost.get(vhost) else {
            return (Vec::new(), None);
        };
        let key: Vec<&str> = topic_words(routing_key).collect();
        let mut ids = Vec::new();
        let mut payload_max = Some(0);
        for trace in traces.iter().filter(|t| topic_matches(&t.words, &key)) {
            ids.push(trace.id);
            payload_max = payload_max
                .zip(trace.max_payload_bytes)
                .map(|(a, b)| a.max(b));
        }
        (ids, payload_max)
    }

    /// Hands `event` to the writer, or drops and counts it if the writer's
    /// channel is full: a shard never waits for a file.
    fn hand_over(&mut self, event: TraceEvent, now: Instant) {
        let Some(writer) = &self.writer else {
            return;
        };
        let event = match writer.try_send(event) {
            Ok(()) => return,
            Err(TrySendError::Full(event) | TrySendError::Disconnected(event)) => event,
        };
        if let Some(traces) = self.by_vhost.get_mut(event.vhost.as_str()) {
            for trace in traces.iter_mut().filter(|t| event.traces.contains(&t.id)) {
                trace.dropped += 1;
            }
        }
        self.dropped_unlogged += 1;
        let due = self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= config::TRACE_DROP_LOG_INTERVAL);
        if due {
            tracing::warn!(
                dropped = self.dropped_unlogged,
                vhost = %event.vhost,
                "the trace writer is behind: trace log records dropped"
            );
            self.dropped_unlogged = 0;
            self.logged_at = Some(now);
        }
    }
}

/// A routing key's or pattern's words, as a topic exchange splits them:
/// an empty key has none, "a..b" has three.
fn topic_words(key: &str) -> impl Iterator<Item = &str> {
    let mut words = key.split('.');
    if key.is_empty() {
        words.next();
    }
    words
}

/// Whether a topic pattern (`*` one word, `#` zero or more) matches a
/// key, as a binding to a topic exchange would. Two cursors with one
/// backtracking point, the last `#` seen: a `#` that took too few words
/// takes one more, so the cost is at most pattern words times key words.
fn topic_matches(pattern: &[String], key: &[&str]) -> bool {
    let (mut p, mut k) = (0, 0);
    let mut retry: Option<(usize, usize)> = None;
    while k < key.len() {
        match pattern.get(p).map(String::as_str) {
            Some("#") => {
                retry = Some((p, k));
                p += 1;
            }
            Some(word) if word == "*" || word == key[k] => {
                p += 1;
                k += 1;
            }
            _ => match retry {
                Some((hash, taken)) => {
                    p = hash + 1;
                    k = taken + 1;
                    retry = Some((hash, taken + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|w| w == "#")
}

/// Whether a message is one the tracer copies: not a trace message itself.
pub(crate) fn traced(message: &Message) -> bool {
    message.exchange() != TRACE_EXCHANGE
}

fn long_str(value: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(value.as_bytes()))
}

/// A message's properties as a field table, with RabbitMQ's names
/// (`rabbit_basic`'s property names: `content_type`, `delivery_mode`, ...),
/// for the trace's `properties` header.
fn properties_table(properties: &BasicProperties) -> FieldTable {
    let mut table = FieldTable::new();
    let strings = [
        ("content_type", &properties.content_type),
        ("content_encoding", &properties.content_encoding),
        ("correlation_id", &properties.correlation_id),
        ("reply_to", &properties.reply_to),
        ("expiration", &properties.expiration),
        ("message_id", &properties.message_id),
        ("type", &properties.kind),
        ("user_id", &properties.user_id),
        ("app_id", &properties.app_id),
        ("cluster_id", &properties.cluster_id),
    ];
    for (name, value) in strings {
        if let Some(value) = value {
            table.insert(name, long_str(value.as_str()));
        }
    }
    if let Some(headers) = &properties.headers {
        table.insert("headers", FieldValue::Table(headers.clone()));
    }
    if let Some(mode) = properties.delivery_mode {
        table.insert("delivery_mode", FieldValue::I32(i32::from(mode)));
    }
    if let Some(priority) = properties.priority {
        table.insert("priority", FieldValue::I32(i32::from(priority)));
    }
    if let Some(timestamp) = properties.timestamp {
        table.insert("timestamp", FieldValue::Timestamp(timestamp));
    }
    table
}

/// A routing key no longer than AMQP allows (255 bytes), cut at a
/// character boundary.
fn short_key(prefix: &str, name: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + name.len());
    key.push_str(prefix);
    for c in name.chars() {
        if key.len() + c.len_utf8() > 255 {
            break;
        }
        key.push(c);
    }
    key
}

impl super::ShardState {
    /// Turns the firehose on or off for `vhost` on this shard: its replica
    /// and the connections in it (which keep a copy for their deliveries).
    pub(crate) fn set_tracing(&mut self, vhost: &str, on: bool) {
        if let Some(replica) = self.vhosts.get_mut(vhost) {
            replica.tracing = on;
        }
        for connection in self.connections.values_mut() {
            if connection.vhost.as_str() == vhost {
                connection.tracing = on;
            }
        }
    }

    /// The vhosts whose firehose is on, on this shard.
    pub(crate) fn tracing_vhosts(&self) -> Vec<String> {
        self.vhosts
            .iter()
            .filter(|(_, replica)| replica.tracing)
            .map(|(name, _)| name.as_str().to_string())
            .collect()
    }

    /// Routes one trace message through the vhost's `amq.rabbitmq.trace`,
    /// and hands it to the trace log files whose pattern matches.
    pub(crate) fn firehose(&mut self, trace: Trace) {
        let Some(vhost) = self.vhosts.get(trace.vhost.as_str()) else {
            return;
        };
        // Turned off since the connection made it.
        if !vhost.tracing {
            return;
        }
        let queue_name = |id: QueueId| -> String {
            vhost
                .queue_by_id(id)
                .map(|meta| meta.name.as_str().to_string())
                .unwrap_or_default()
        };
        let message = &trace.message;
        let routing_key = match &trace.kind {
            TraceKind::Publish { .. } => short_key("publish.", message.exchange()),
            TraceKind::Deliver { queue, .. } => short_key("deliver.", &queue_name(*queue)),
        };
        let (files, payload_max) = self
            .file_traces
            .matching(trace.vhost.as_str(), &routing_key);
        let event_kind = (!files.is_empty()).then(|| match &trace.kind {
            TraceKind::Publish { routed } => TraceEventKind::Published {
                routed_queues: routed.iter().map(|&id| queue_name(id)).collect(),
            },
            TraceKind::Deliver { queue, .. } => TraceEventKind::Received {
                queue: queue_name(*queue),
            },
        });
        self.firehose_exchange(&trace, &routing_key);
        if let Some(kind) = event_kind {
            let now = self.now;
            let mut message = trace.message;
            // A record waiting for the writer holds what it will write, not
            // the whole body, when every matching trace keeps only a prefix.
            if let Some(max) = payload_max.and_then(|max| usize::try_from(max).ok()) {
                if message.body.len() > max {
                    message.body = Bytes::copy_from_slice(&message.body[..max]);
                }
            }
            let event = TraceEvent {
                traces: files,
                kind,
                vhost: trace.vhost.as_str().to_string(),
                channel: trace.channel,
                connection: trace.connection,
                user: trace.user,
                message,
            };
            self.file_traces.hand_over(event, now);
        }
    }

    /// Copies one publish or delivery to the vhost's `amq.rabbitmq.trace`
    /// with RabbitMQ's trace headers, if anything is bound there.
    fn firehose_exchange(&mut self, trace: &Trace, routing_key: &str) {
        let Some(vhost) = self.vhosts.get(trace.vhost.as_str()) else {
            return;
        };
        let Some(exchange) = vhost.exchanges.get(TRACE_EXCHANGE) else {
            return;
        };
        let message = &trace.message;
        let queue_name = |id: QueueId| -> String {
            vhost
                .queue_by_id(id)
                .map(|meta| meta.name.as_str().to_string())
                .unwrap_or_default()
        };
        let mut headers = FieldTable::new();
        headers.insert("exchange_name", long_str(message.exchange()));
        let mut routing_keys = vec![long_str(message.routing_key())];
        if let Some(cc) = message
            .properties()
            .decode()
            .headers
            .as_ref()
            .and_then(|h| h.get("CC"))
            .and_then(FieldValue::as_array)
        {
            routing_keys.extend(cc.iter().cloned());
        }
        headers.insert("routing_keys", FieldValue::Array(routing_keys));
        match &trace.kind {
            TraceKind::Publish { routed } => {
                let names = routed.iter().map(|&id| long_str(&queue_name(id))).collect();
                headers.insert("routed_queues", FieldValue::Array(names));
            }
            TraceKind::Deliver { redelivered, .. } => {
                headers.insert("redelivered", FieldValue::I32(i32::from(*redelivered)));
            }
        }
        headers.insert(
            "properties",
            FieldValue::Table(properties_table(&message.properties().decode())),
        );
        headers.insert("node", long_str(&self.node_name));
        headers.insert("vhost", long_str(trace.vhost.as_str()));
        headers.insert("connection", long_str(&trace.connection));
        headers.insert("channel", FieldValue::I32(i32::from(trace.channel)));
        headers.insert("user", long_str(&trace.user));
        let properties = BasicProperties {
            headers: Some(headers),
            ..BasicProperties::default()
        }
        .encode();
        let mut scratch = Vec::new();
        let mut routed = super::vhost::Routed::default();
        let no_keys: &[&str] = &[];
        vhost.route(
            exchange,
            routing_key,
            no_keys,
            &properties,
            &mut scratch,
            &mut routed,
        );
        if routed.queues.is_empty() {
            return;
        }
        let copy = Message::new(
            TRACE_EXCHANGE,
            routing_key,
            &properties,
            message.body.clone(),
            None,
        );
        for queue in &routed.queues {
            self.send(
                queue.shard,
                super::ShardMsg::Enqueue {
                    queue: queue.id,
                    message: copy.clone(),
                    confirm: None,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, key: &str) -> bool {
        let words: Vec<String> = topic_words(pattern).map(str::to_string).collect();
        let key: Vec<&str> = topic_words(key).collect();
        topic_matches(&words, &key)
    }

    #[test]
    fn trace_patterns_match_as_topic_bindings() {
        assert!(matches("#", "publish.amq.direct"));
        assert!(matches("#", "publish."));
        assert!(matches("publish.#", "publish."));
        assert!(matches("publish.#", "publish.amq.direct"));
        assert!(!matches("publish.#", "deliver.q"));
        assert!(matches("deliver.#", "deliver.q"));
        assert!(matches("deliver.*", "deliver.q"));
        assert!(!matches("deliver.*", "deliver.a.b"));
        assert!(matches("#.q", "deliver.q"));
        assert!(matches("#.amq.direct", "publish.amq.direct"));
        assert!(!matches("#.amq.direct", "publish.amq.fanout"));
        assert!(matches("*.#.b.#", "x.a.b.c"));
        assert!(matches("#.#.z", "a.b.c.z"));
        assert!(!matches("#.#.z", "a.b.c.y"));
        assert!(matches("publish.", "publish."));
        assert!(!matches("publish", "publish."));
        assert!(matches("#", ""));
        assert!(!matches("*", ""));
    }
}

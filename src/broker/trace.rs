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
//! It imports what `broker` may import.

use bytes::Bytes;
use warren_protocol::{BasicProperties, FieldTable, FieldValue, ShortStr};

use crate::metadata::exchange::TRACE_EXCHANGE;
use crate::model::ids::QueueId;
use crate::model::message::Message;

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

    /// Routes one trace message through the vhost's `amq.rabbitmq.trace`.
    pub(crate) fn firehose(&mut self, trace: Trace) {
        let Some(vhost) = self.vhosts.get(trace.vhost.as_str()) else {
            return;
        };
        // Turned off since the connection made it.
        if !vhost.tracing {
            return;
        }
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
        let routing_key = match &trace.kind {
            TraceKind::Publish { routed } => {
                let names = routed.iter().map(|&id| long_str(&queue_name(id))).collect();
                headers.insert("routed_queues", FieldValue::Array(names));
                short_key("publish.", message.exchange())
            }
            TraceKind::Deliver { queue, redelivered } => {
                headers.insert("redelivered", FieldValue::I32(i32::from(*redelivered)));
                short_key("deliver.", &queue_name(*queue))
            }
        };
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
            &routing_key,
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
            &routing_key,
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

//! The columns ("info items") of each list command, named as rabbitmqctl 3.10 names
//! them, their defaults, and where each one is found in the management API's JSON.
//!
//! rabbitmqctl shows Erlang process ids (`pid`, `channel_pid`, `connection`); the API
//! has no pids, so those columns show the connection's or channel's name instead, which
//! is also what `close_connection` takes.
//!
//! Imports only serde_json; never the broker.

use serde_json::Value;

pub const QUEUE_KEYS: &[&str] = &[
    "arguments",
    "auto_delete",
    "consumer_capacity",
    "consumer_utilisation",
    "consumers",
    "disk_reads",
    "disk_writes",
    "durable",
    "exclusive",
    "exclusive_consumer_pid",
    "exclusive_consumer_tag",
    "head_message_timestamp",
    "leader",
    "members",
    "memory",
    "message_bytes",
    "message_bytes_persistent",
    "message_bytes_ram",
    "message_bytes_ready",
    "message_bytes_unacknowledged",
    "messages",
    "messages_persistent",
    "messages_ram",
    "messages_ready",
    "messages_ready_ram",
    "messages_unacknowledged",
    "messages_unacknowledged_ram",
    "name",
    "online",
    "owner_pid",
    "pid",
    "policy",
    "slave_pids",
    "state",
    "synchronised_slave_pids",
    "type",
];
pub const QUEUE_DEFAULT: &[&str] = &["name", "messages"];

pub const EXCHANGE_KEYS: &[&str] = &[
    "arguments",
    "auto_delete",
    "durable",
    "internal",
    "name",
    "policy",
    "type",
];
pub const EXCHANGE_DEFAULT: &[&str] = &["name", "type"];

pub const BINDING_KEYS: &[&str] = &[
    "arguments",
    "destination_kind",
    "destination_name",
    "routing_key",
    "source_kind",
    "source_name",
];
pub const BINDING_DEFAULT: &[&str] = &[
    "source_name",
    "source_kind",
    "destination_name",
    "destination_kind",
    "routing_key",
    "arguments",
];

pub const CONNECTION_KEYS: &[&str] = &[
    "auth_mechanism",
    "channel_max",
    "channels",
    "client_properties",
    "connected_at",
    "frame_max",
    "host",
    "name",
    "peer_cert_issuer",
    "peer_cert_subject",
    "peer_cert_validity",
    "peer_host",
    "peer_port",
    "pid",
    "port",
    "protocol",
    "recv_cnt",
    "recv_oct",
    "send_cnt",
    "send_oct",
    "send_pend",
    "ssl",
    "ssl_cipher",
    "ssl_hash",
    "ssl_key_exchange",
    "ssl_protocol",
    "state",
    "timeout",
    "user",
    "vhost",
];
pub const CONNECTION_DEFAULT: &[&str] = &["user", "peer_host", "peer_port", "state"];

pub const CHANNEL_KEYS: &[&str] = &[
    "acks_uncommitted",
    "confirm",
    "connection",
    "consumer_count",
    "global_prefetch_count",
    "messages_unacknowledged",
    "messages_uncommitted",
    "messages_unconfirmed",
    "name",
    "number",
    "pid",
    "prefetch_count",
    "transactional",
    "user",
    "vhost",
];
pub const CHANNEL_DEFAULT: &[&str] = &["pid", "user", "consumer_count", "messages_unacknowledged"];

pub const CONSUMER_KEYS: &[&str] = &[
    "ack_required",
    "active",
    "activity_status",
    "arguments",
    "channel_pid",
    "consumer_tag",
    "prefetch_count",
    "queue_name",
];
pub const CONSUMER_DEFAULT: &[&str] = &[
    "queue_name",
    "channel_pid",
    "consumer_tag",
    "ack_required",
    "prefetch_count",
    "active",
    "arguments",
];

pub const VHOST_KEYS: &[&str] = &[
    "cluster_state",
    "default_queue_type",
    "description",
    "name",
    "tags",
    "tracing",
];
pub const VHOST_DEFAULT: &[&str] = &["name"];

/// What a list command lists, to pick each column out of an API object.
#[derive(Clone, Copy)]
pub enum Kind {
    Queue,
    Exchange,
    Binding,
    Connection,
    Channel,
    Consumer,
    Vhost,
}

/// The columns asked for (each argument may hold several, comma-separated, as
/// rabbitmqctl accepts), or the command's defaults.
pub fn chosen(asked: &[String], default: &[&str]) -> Vec<String> {
    let asked: Vec<String> = asked
        .iter()
        .flat_map(|a| a.split(','))
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if asked.is_empty() {
        default.iter().map(|c| c.to_string()).collect()
    } else {
        asked
    }
}

/// The columns in `asked` that `allowed` does not have.
pub fn unknown(asked: &[String], allowed: &[&str]) -> Vec<String> {
    asked
        .iter()
        .filter(|a| !allowed.contains(&a.as_str()))
        .cloned()
        .collect()
}

fn path(object: &Value, keys: &[&str]) -> Value {
    let mut at = object;
    for key in keys {
        match at.get(key) {
            Some(v) => at = v,
            None => return Value::Null,
        }
    }
    at.clone()
}

/// The value of `column` for one object of the API's list.
pub fn pick(kind: Kind, column: &str, object: &Value) -> Value {
    let field = |k: &str| object.get(k).cloned().unwrap_or(Value::Null);
    match (kind, column) {
        (Kind::Queue, "leader") => field("node"),
        (Kind::Queue, "members" | "online") => match object.get("node") {
            Some(node) => Value::Array(vec![node.clone()]),
            None => Value::Null,
        },
        (Kind::Queue, "owner_pid") => path(object, &["owner_pid_details", "name"]),
        (Kind::Queue, "pid" | "exclusive_consumer_pid") => Value::Null,
        (Kind::Queue, "disk_reads" | "disk_writes") => path(object, &["message_stats", column]),
        (Kind::Queue, "slave_pids" | "synchronised_slave_pids") => match field(column) {
            Value::Null => Value::String(String::new()),
            v => v,
        },
        (Kind::Binding, "source_name") => field("source"),
        (Kind::Binding, "source_kind") => Value::String("exchange".into()),
        (Kind::Binding, "destination_name") => field("destination"),
        (Kind::Binding, "destination_kind") => field("destination_type"),
        (Kind::Connection, "pid") => field("name"),
        (Kind::Channel, "pid") => field("name"),
        (Kind::Channel, "connection") => path(object, &["connection_details", "name"]),
        (Kind::Consumer, "queue_name") => path(object, &["queue", "name"]),
        (Kind::Consumer, "channel_pid") => path(object, &["channel_details", "name"]),
        (Kind::Vhost, "cluster_state") => cluster_state(object.get("cluster_state")),
        _ => field(column),
    }
}

/// `{"node": "running"}` as rabbitmqctl prints a vhost's cluster state:
/// `[{node, running}]`.
fn cluster_state(state: Option<&Value>) -> Value {
    let Some(Value::Object(map)) = state else {
        return Value::Null;
    };
    let pairs: Vec<String> = map
        .iter()
        .map(|(node, s)| format!("{{{node}, {}}}", s.as_str().unwrap_or_default()))
        .collect();
    Value::String(format!("[{}]", pairs.join(", ")))
}

/// A user's tags as a list: the API gives an array (3.10) or a comma-separated string
/// (older versions).
pub fn tags(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

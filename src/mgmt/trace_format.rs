//! The records of trace log files, as rabbitmq_tracing writes them
//! (`rabbit_tracing_consumer`): `text`, a block per message that starts
//! with a line of 80 `=` and names the node, connection, virtual host,
//! user, channel, exchange, routing keys, routed queues or queue,
//! properties and payload, the lists and properties printed as Erlang
//! terms the way Erlang's `~tp` prints them; or `json`, one object per
//! line with the payload in base64.
//!
//! ```text
//!
//! ================================================================================
//! 2026-12-02T11:24:15.369+00:00: Message published
//!
//! Node:         warren@host
//! Connection:   127.0.0.1:56506 -> 127.0.0.1:5672
//! Virtual host: /
//! User:         guest
//! Channel:      1
//! Exchange:     
//! Routing keys: [<<"work">>]
//! Routed queues: [<<"work">>]
//! Properties:   [{<<"delivery_mode">>,signedint,2},
//!                {<<"content_type">>,longstr,<<"text/plain">>}]
//! Payload:
//! hello
//! ```
//!
//! Pure functions of a `TraceEvent`; the writer thread (`trace_files`)
//! calls them. It imports `broker` (the event) and `metadata` (base64).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use warren_protocol::{BasicProperties, FieldTable, FieldValue};

use crate::broker::trace::{TraceEvent, TraceEventKind};
use crate::metadata::password::base64_encode;

/// A trace's `format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TraceFormat {
    Text,
    Json,
}

impl TraceFormat {
    pub(crate) fn parse(name: &str) -> Option<TraceFormat> {
        match name {
            "text" => Some(TraceFormat::Text),
            "json" => Some(TraceFormat::Json),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            TraceFormat::Text => "text",
            TraceFormat::Json => "json",
        }
    }
}

/// Erlang's default line length for `~tp`.
const LINE_LEN: usize = 80;

/// Appends one record for `event` to `out`.
pub(crate) fn record(
    format: TraceFormat,
    event: &TraceEvent,
    node: &str,
    timestamp: &str,
    max_payload_bytes: Option<u64>,
    out: &mut Vec<u8>,
) {
    let body = &event.message.body;
    let payload = match max_payload_bytes {
        Some(max) if (body.len() as u64) > max => &body[..max as usize],
        _ => &body[..],
    };
    let properties = event.message.properties().decode();
    let routing_keys = routing_keys(event, &properties);
    match format {
        TraceFormat::Text => text(
            event,
            node,
            timestamp,
            &routing_keys,
            &properties,
            payload,
            out,
        ),
        TraceFormat::Json => json(
            event,
            node,
            timestamp,
            &routing_keys,
            &properties,
            payload,
            out,
        ),
    }
}

/// The routing key and the CC keys, as the firehose's `routing_keys`.
fn routing_keys(event: &TraceEvent, properties: &BasicProperties) -> Vec<Vec<u8>> {
    let mut keys = vec![event.message.routing_key().as_bytes().to_vec()];
    if let Some(cc) = properties
        .headers
        .as_ref()
        .and_then(|h| h.get("CC"))
        .and_then(FieldValue::as_array)
    {
        for key in cc {
            if let FieldValue::LongStr(key) = key {
                keys.push(key.to_vec());
            }
        }
    }
    keys
}

fn text(
    event: &TraceEvent,
    node: &str,
    timestamp: &str,
    routing_keys: &[Vec<u8>],
    properties: &BasicProperties,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let mut s = String::with_capacity(512);
    s.push('\n');
    s.push_str(&"=".repeat(80));
    let kind = match event.kind {
        TraceEventKind::Published { .. } => "published",
        TraceEventKind::Received { .. } => "received",
    };
    let _ = write!(
        s,
        "\n{timestamp}: Message {kind}\n\nNode:         {node}\nConnection:   {}\n\
         Virtual host: {}\nUser:         {}\nChannel:      {}\nExchange:     {}\n",
        event.connection,
        event.vhost,
        event.user,
        event.channel,
        event.message.exchange(),
    );
    let keys = Term::List(routing_keys.iter().map(|k| Term::Bin(k.clone())).collect());
    s.push_str("Routing keys: ");
    keys.pretty(14, 0, &mut s);
    s.push('\n');
    match &event.kind {
        TraceEventKind::Received { queue } => {
            let _ = writeln!(s, "Queue:        {queue}");
        }
        TraceEventKind::Published { routed_queues } => {
            let queues = Term::List(
                routed_queues
                    .iter()
                    .map(|q| Term::Bin(q.as_bytes().to_vec()))
                    .collect(),
            );
            s.push_str("Routed queues: ");
            queues.pretty(15, 0, &mut s);
            s.push('\n');
        }
    }
    s.push_str("Properties:   ");
    properties_term(properties).pretty(14, 0, &mut s);
    s.push_str("\nPayload: \n");
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(payload);
    out.push(b'\n');
}

fn json(
    event: &TraceEvent,
    node: &str,
    timestamp: &str,
    routing_keys: &[Vec<u8>],
    properties: &BasicProperties,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    // serde_json's map keeps its keys sorted, as RabbitMQ's encoder does.
    let mut record = Map::new();
    record.insert("timestamp".into(), timestamp.into());
    let (kind, queue, routed) = match &event.kind {
        TraceEventKind::Published { routed_queues } => (
            "published",
            Value::from("none"),
            Value::from(routed_queues.clone()),
        ),
        TraceEventKind::Received { queue } => {
            ("received", Value::from(queue.as_str()), Value::from("none"))
        }
    };
    record.insert("type".into(), kind.into());
    record.insert("node".into(), node.into());
    record.insert("connection".into(), event.connection.as_str().into());
    record.insert("vhost".into(), event.vhost.as_str().into());
    record.insert("user".into(), event.user.as_str().into());
    record.insert("channel".into(), event.channel.into());
    record.insert("exchange".into(), event.message.exchange().into());
    record.insert("queue".into(), queue);
    record.insert("routed_queues".into(), routed);
    record.insert(
        "routing_keys".into(),
        Value::Array(routing_keys.iter().map(|k| json_bytes(k)).collect()),
    );
    record.insert("properties".into(), properties_json(properties));
    record.insert("payload".into(), base64_encode(payload).into());
    if serde_json::to_writer(&mut *out, &Value::Object(record)).is_ok() {
        out.push(b'\n');
    }
}

/// A message's properties as `rabbit_basic` lists them for the firehose
/// (last property first), each `{<<"name">>, type, value}`.
fn property_list(properties: &BasicProperties) -> Vec<(&'static str, FieldValue)> {
    let long_str = |s: &Option<warren_protocol::ShortStr>| {
        s.as_ref()
            .map(|s| FieldValue::LongStr(bytes::Bytes::copy_from_slice(s.as_str().as_bytes())))
    };
    let mut list = Vec::new();
    let mut add = |name: &'static str, value: Option<FieldValue>| {
        if let Some(value) = value {
            list.push((name, value));
        }
    };
    add("content_type", long_str(&properties.content_type));
    add("content_encoding", long_str(&properties.content_encoding));
    add("headers", properties.headers.clone().map(FieldValue::Table));
    add(
        "delivery_mode",
        properties
            .delivery_mode
            .map(|m| FieldValue::I32(i32::from(m))),
    );
    add(
        "priority",
        properties.priority.map(|p| FieldValue::I32(i32::from(p))),
    );
    add("correlation_id", long_str(&properties.correlation_id));
    add("reply_to", long_str(&properties.reply_to));
    add("expiration", long_str(&properties.expiration));
    add("message_id", long_str(&properties.message_id));
    // The firehose carries the timestamp as a plain integer (signedint).
    add(
        "timestamp",
        properties
            .timestamp
            .map(|t| FieldValue::I64(i64::try_from(t).unwrap_or(i64::MAX))),
    );
    add("type", long_str(&properties.kind));
    add("user_id", long_str(&properties.user_id));
    add("app_id", long_str(&properties.app_id));
    add("cluster_id", long_str(&properties.cluster_id));
    list.reverse();
    list
}

fn properties_term(properties: &BasicProperties) -> Term {
    Term::List(
        property_list(properties)
            .into_iter()
            .map(|(name, value)| {
                // delivery_mode, priority and timestamp are signedint in
                // the firehose's table, whatever their width.
                let (kind, value) = match value {
                    FieldValue::I64(n) if name == "timestamp" => ("signedint", Term::Int(n.into())),
                    other => value_term(&other),
                };
                Term::Tuple(vec![
                    Term::Bin(name.as_bytes().to_vec()),
                    Term::Atom(kind),
                    value,
                ])
            })
            .collect(),
    )
}

fn properties_json(properties: &BasicProperties) -> Value {
    let mut map = Map::new();
    for (name, value) in property_list(properties) {
        map.insert(name.into(), value_json(&value));
    }
    Value::Object(map)
}

fn table_term(table: &FieldTable) -> Term {
    Term::List(
        table
            .iter()
            .map(|(key, value)| {
                let (kind, value) = value_term(value);
                Term::Tuple(vec![
                    Term::Bin(key.as_str().as_bytes().to_vec()),
                    Term::Atom(kind),
                    value,
                ])
            })
            .collect(),
    )
}

/// An AMQP value's type, as `rabbit_binary_parser` names it, and the value.
fn value_term(value: &FieldValue) -> (&'static str, Term) {
    match value {
        FieldValue::Bool(b) => ("bool", Term::Atom(if *b { "true" } else { "false" })),
        FieldValue::I8(n) => ("byte", Term::Int((*n).into())),
        FieldValue::U8(n) => ("unsignedbyte", Term::Int((*n).into())),
        FieldValue::I16(n) => ("short", Term::Int((*n).into())),
        FieldValue::U16(n) => ("unsignedshort", Term::Int((*n).into())),
        FieldValue::I32(n) => ("signedint", Term::Int((*n).into())),
        FieldValue::U32(n) => ("unsignedint", Term::Int((*n).into())),
        FieldValue::I64(n) => ("long", Term::Int((*n).into())),
        FieldValue::F32(x) => ("float", Term::Float(f64::from(*x))),
        FieldValue::F64(x) => ("double", Term::Float(*x)),
        FieldValue::Decimal { scale, value } => (
            "decimal",
            Term::Tuple(vec![Term::Int((*scale).into()), Term::Int((*value).into())]),
        ),
        FieldValue::LongStr(b) => ("longstr", Term::Bin(b.to_vec())),
        FieldValue::ByteArray(b) => ("binary", Term::Bin(b.to_vec())),
        FieldValue::Array(items) => (
            "array",
            Term::List(
                items
                    .iter()
                    .map(|item| {
                        let (kind, value) = value_term(item);
                        Term::Tuple(vec![Term::Atom(kind), value])
                    })
                    .collect(),
            ),
        ),
        FieldValue::Timestamp(t) => ("timestamp", Term::Int((*t).into())),
        FieldValue::Table(table) => ("table", table_term(table)),
        FieldValue::Void => ("void", Term::Atom("undefined")),
    }
}

/// An AMQP value as `rabbit_mgmt_format:amqp_table` renders it, non-UTF-8
/// text as the plugin shows it.
fn value_json(value: &FieldValue) -> Value {
    crate::mgmt::json::value_to_json_with(value, &json_bytes)
}

/// Text as a JSON string; bytes that are not UTF-8 as RabbitMQ shows them.
fn json_bytes(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.into(),
        Err(_) => format!("Not UTF-8, base64 is: {}", base64_encode(bytes)).into(),
    }
}

/// The Erlang terms a text record prints.
enum Term {
    Bin(Vec<u8>),
    Atom(&'static str),
    Int(i128),
    Float(f64),
    List(Vec<Term>),
    Tuple(Vec<Term>),
}

impl Term {
    fn flat(&self, out: &mut String) {
        match self {
            Term::Bin(bytes) => binary(bytes, out),
            Term::Atom(a) => out.push_str(a),
            Term::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Term::Float(x) => float(*x, out),
            Term::List(items) | Term::Tuple(items) => {
                let (open, close) = self.brackets();
                out.push(open);
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.flat(out);
                }
                out.push(close);
            }
        }
    }

    fn brackets(&self) -> (char, char) {
        match self {
            Term::Tuple(_) => ('{', '}'),
            _ => ('[', ']'),
        }
    }

    fn flat_string(&self) -> String {
        let mut s = String::new();
        self.flat(&mut s);
        s
    }

    /// Prints the term starting at column `column`, followed by `trailing`
    /// characters the caller adds, as Erlang's pretty printer lays it out
    /// on lines of 80: flat if it fits; a list that does not fit one
    /// element per line, aligned after its bracket; a tuple that does not
    /// fit with as many elements per line as fit, the rest below, indented
    /// one past its brace.
    fn pretty(&self, column: usize, trailing: usize, out: &mut String) {
        let flat = self.flat_string();
        let items = match self {
            Term::List(items) | Term::Tuple(items)
                if column + flat.chars().count() + trailing > LINE_LEN && !items.is_empty() =>
            {
                items
            }
            _ => {
                out.push_str(&flat);
                return;
            }
        };
        let (open, close) = self.brackets();
        let inner = column + 1;
        out.push(open);
        let last = items.len() - 1;
        match self {
            Term::List(_) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(",\n");
                        push_spaces(inner, out);
                    }
                    item.pretty(inner, if i == last { trailing + 1 } else { 1 }, out);
                }
            }
            _ => {
                let mut at = inner;
                for (i, item) in items.iter().enumerate() {
                    let after = if i == last { trailing + 1 } else { 1 };
                    let text = item.flat_string();
                    let width = text.chars().count();
                    if i > 0 {
                        out.push(',');
                        at += 1;
                        if at + width + after > LINE_LEN {
                            out.push('\n');
                            push_spaces(inner, out);
                            at = inner;
                        }
                    }
                    if at + width + after > LINE_LEN {
                        item.pretty(at, after, out);
                        // Past a term laid out on several lines, the next
                        // element starts a line of its own.
                        at = LINE_LEN;
                    } else {
                        out.push_str(&text);
                        at += width;
                    }
                }
            }
        }
        out.push(close);
    }
}

fn push_spaces(n: usize, out: &mut String) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// A binary as `~tp` prints it: `<<"text">>` when every byte is a
/// printable Latin-1 character (the bytes written as they are),
/// `<<"text"/utf8>>` for other printable UTF-8, else its bytes.
fn binary(bytes: &[u8], out: &mut String) {
    let escaped = |c: char, out: &mut String| match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\u{1b}' => out.push_str("\\e"),
        c => out.push(c),
    };
    let special = |b: u32| matches!(b, 8..=13 | 27);
    let latin1 = bytes
        .iter()
        .all(|&b| matches!(b, 32..=126 | 160..=255) || special(u32::from(b)));
    if latin1 {
        // The bytes go to the file as they are (a UTF-8 text shows as
        // itself), as Erlang writes a Latin-1 binary.
        out.push_str("<<\"");
        match std::str::from_utf8(bytes) {
            Ok(text) => text.chars().for_each(|c| escaped(c, out)),
            Err(_) => bytes.iter().for_each(|&b| escaped(char::from(b), out)),
        }
        out.push_str("\">>");
        return;
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        if text
            .chars()
            .all(|c| !c.is_control() || special(u32::from(c)))
        {
            out.push_str("<<\"");
            text.chars().for_each(|c| escaped(c, out));
            out.push_str("\"/utf8>>");
            return;
        }
    }
    out.push_str("<<");
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{b}");
    }
    out.push_str(">>");
}

/// A float as Erlang prints it: the shortest text that reads back, always
/// with a fraction (`1.0`, `1.0e20`).
fn float(x: f64, out: &mut String) {
    let text = format!("{x:?}");
    match text.split_once('e') {
        Some((mantissa, exponent)) if !mantissa.contains('.') => {
            let _ = write!(out, "{mantissa}.0e{exponent}");
        }
        _ => out.push_str(&text),
    }
}

/// Now, as RabbitMQ's `rabbit_mgmt_format:now_to_str` writes it in the
/// records: `2026-12-02T11:24:15.369+00:00` (UTC).
pub(crate) fn timestamp_now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    timestamp(since.as_millis() as u64)
}

fn timestamp(epoch_ms: u64) -> String {
    let seconds = epoch_ms / 1000;
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        epoch_ms % 1000
    )
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (the
/// era arithmetic of H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pretty(term: &Term, column: usize) -> String {
        let mut s = String::new();
        term.pretty(column, 0, &mut s);
        s
    }

    fn bin(s: &str) -> Term {
        Term::Bin(s.as_bytes().to_vec())
    }

    fn prop(name: &str, kind: &'static str, value: Term) -> Term {
        Term::Tuple(vec![bin(name), Term::Atom(kind), value])
    }

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000+00:00");
        assert_eq!(
            timestamp(1_700_000_000_123),
            "2023-11-14T22:13:20.123+00:00"
        );
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000+00:00");
    }

    #[test]
    fn binaries_print_as_erlang_prints_them() {
        let mut s = String::new();
        binary(b"tf-work", &mut s);
        binary("héllo".as_bytes(), &mut s);
        binary(&[1, 2, 255], &mut s);
        binary(b"a\"b\\c\n", &mut s);
        binary("€".as_bytes(), &mut s);
        assert_eq!(
            s,
            "<<\"tf-work\">><<\"héllo\">><<1,2,255>><<\"a\\\"b\\\\c\\n\">><<\"€\"/utf8>>"
        );
        let mut f = String::new();
        float(1.5, &mut f);
        f.push(' ');
        float(1e20, &mut f);
        assert_eq!(f, "1.5 1.0e20");
    }

    #[test]
    fn short_lists_stay_on_one_line() {
        let keys = Term::List(vec![bin("tf-work")]);
        assert_eq!(pretty(&keys, 14), "[<<\"tf-work\">>]");
        assert_eq!(pretty(&Term::List(vec![]), 14), "[]");
    }

    /// The layout RabbitMQ 3.10 wrote for these properties (column 14,
    /// after "Properties:   ").
    #[test]
    fn long_properties_wrap_as_rabbitmq_3_10_wrote_them() {
        let headers = Term::List(vec![
            prop("l", "long", Term::Int(1_234_567_890_123)),
            prop(
                "arr",
                "array",
                Term::List(vec![
                    Term::Tuple(vec![Term::Atom("longstr"), bin("x")]),
                    Term::Tuple(vec![Term::Atom("signedint"), Term::Int(2)]),
                ]),
            ),
            prop(
                "longer-header-name-to-wrap",
                "longstr",
                bin("some rather long value to force wrapping of the pretty printer"),
            ),
            prop("n", "signedint", Term::Int(5)),
            prop(
                "t",
                "table",
                Term::List(vec![prop("k", "longstr", bin("w"))]),
            ),
        ]);
        let properties = Term::List(vec![
            prop("timestamp", "signedint", Term::Int(1_700_000_000)),
            prop("correlation_id", "longstr", bin("c1")),
            prop("headers", "table", headers),
            prop("content_type", "longstr", bin("text/plain")),
        ]);
        let expected = r#"[{<<"timestamp">>,signedint,1700000000},
               {<<"correlation_id">>,longstr,<<"c1">>},
               {<<"headers">>,table,
                [{<<"l">>,long,1234567890123},
                 {<<"arr">>,array,[{longstr,<<"x">>},{signedint,2}]},
                 {<<"longer-header-name-to-wrap">>,longstr,
                  <<"some rather long value to force wrapping of the pretty printer">>},
                 {<<"n">>,signedint,5},
                 {<<"t">>,table,[{<<"k">>,longstr,<<"w">>}]}]},
               {<<"content_type">>,longstr,<<"text/plain">>}]"#;
        assert_eq!(pretty(&properties, 14), expected);
    }
}

//! AMQP values as the management API shows and takes them: field tables
//! (arguments, headers) and basic properties to and from JSON, the way
//! RabbitMQ's `rabbit_mgmt_format` renders them.

use bytes::Bytes;
use serde_json::{Map, Value};
use warren_protocol::{BasicProperties, FieldTable, FieldValue, ShortStr};

pub(crate) fn table_to_json(table: &FieldTable) -> Value {
    let mut map = Map::new();
    for (key, value) in table.iter() {
        map.insert(key.as_str().to_string(), value_to_json(value));
    }
    Value::Object(map)
}

fn value_to_json(value: &FieldValue) -> Value {
    value_to_json_with(value, &|bytes| {
        Value::String(String::from_utf8_lossy(bytes).into_owned())
    })
}

/// An AMQP value as `rabbit_mgmt_format:amqp_table` renders it, with
/// `bytes` deciding how long strings and byte arrays read (the API shows
/// them lossily, a trace file's JSON shows non-UTF-8 ones in base64).
pub(crate) fn value_to_json_with(value: &FieldValue, bytes: &dyn Fn(&[u8]) -> Value) -> Value {
    match value {
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::I8(n) => (*n).into(),
        FieldValue::U8(n) => (*n).into(),
        FieldValue::I16(n) => (*n).into(),
        FieldValue::U16(n) => (*n).into(),
        FieldValue::I32(n) => (*n).into(),
        FieldValue::U32(n) => (*n).into(),
        FieldValue::I64(n) => (*n).into(),
        FieldValue::Timestamp(n) => (*n).into(),
        FieldValue::F32(x) => f64::from(*x).into(),
        FieldValue::F64(x) => (*x).into(),
        FieldValue::Decimal { scale, value } => {
            (f64::from(*value) / 10f64.powi(i32::from(*scale))).into()
        }
        FieldValue::LongStr(b) | FieldValue::ByteArray(b) => bytes(b),
        FieldValue::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| value_to_json_with(item, bytes))
                .collect(),
        ),
        FieldValue::Table(table) => {
            let mut map = Map::new();
            for (key, value) in table.iter() {
                map.insert(key.as_str().to_string(), value_to_json_with(value, bytes));
            }
            Value::Object(map)
        }
        FieldValue::Void => Value::Null,
    }
}

/// A JSON object as a field table (queue and exchange arguments, binding
/// arguments, headers), typed as RabbitMQ's `rabbit_mgmt_util:args` types
/// them: integers as long, strings as longstr.
pub(crate) fn json_to_table(value: &Value, what: &str) -> Result<FieldTable, String> {
    let mut table = FieldTable::default();
    match value {
        Value::Null => {}
        Value::Object(map) => {
            for (key, value) in map {
                let key = short_str(key, what)?;
                table.insert(key, json_to_value(value, what)?);
            }
        }
        _ => return Err(format!("{what} must be a JSON object")),
    }
    Ok(table)
}

fn json_to_value(value: &Value, what: &str) -> Result<FieldValue, String> {
    Ok(match value {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes())),
        Value::Array(items) => FieldValue::Array(
            items
                .iter()
                .map(|i| json_to_value(i, what))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(_) => FieldValue::Table(json_to_table(value, what)?),
    })
}

/// A name for AMQP: at most 255 bytes.
pub(crate) fn short_str(s: &str, what: &str) -> Result<ShortStr, String> {
    if s.len() > 255 {
        return Err(format!("{what}: '{s}' is longer than 255 bytes"));
    }
    Ok(ShortStr::from(s))
}

/// The properties that are set, by RabbitMQ's names.
pub(crate) fn properties_to_json(p: &BasicProperties) -> Value {
    let mut map = Map::new();
    let mut text = |key: &str, v: &Option<ShortStr>| {
        if let Some(v) = v {
            map.insert(key.to_string(), Value::String(v.as_str().to_string()));
        }
    };
    text("content_type", &p.content_type);
    text("content_encoding", &p.content_encoding);
    text("correlation_id", &p.correlation_id);
    text("reply_to", &p.reply_to);
    text("expiration", &p.expiration);
    text("message_id", &p.message_id);
    text("type", &p.kind);
    text("user_id", &p.user_id);
    text("app_id", &p.app_id);
    text("cluster_id", &p.cluster_id);
    if let Some(headers) = &p.headers {
        map.insert("headers".into(), table_to_json(headers));
    }
    if let Some(mode) = p.delivery_mode {
        map.insert("delivery_mode".into(), mode.into());
    }
    if let Some(priority) = p.priority {
        map.insert("priority".into(), priority.into());
    }
    if let Some(timestamp) = p.timestamp {
        map.insert("timestamp".into(), timestamp.into());
    }
    Value::Object(map)
}

/// The `properties` of a publish through the API.
pub(crate) fn properties_from_json(value: &Value) -> Result<BasicProperties, String> {
    let mut p = BasicProperties::default();
    let Some(map) = value.as_object() else {
        return match value {
            Value::Null => Ok(p),
            _ => Err("properties must be a JSON object".into()),
        };
    };
    for (key, value) in map {
        let text = || -> Result<Option<ShortStr>, String> {
            match value {
                Value::String(s) => short_str(s, key).map(Some),
                _ => Err(format!("property {key} must be a string")),
            }
        };
        let octet = || -> Result<Option<u8>, String> {
            value
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| format!("property {key} must be an integer from 0 to 255"))
        };
        match key.as_str() {
            "content_type" => p.content_type = text()?,
            "content_encoding" => p.content_encoding = text()?,
            "correlation_id" => p.correlation_id = text()?,
            "reply_to" => p.reply_to = text()?,
            "expiration" => p.expiration = text()?,
            "message_id" => p.message_id = text()?,
            "type" => p.kind = text()?,
            "user_id" => p.user_id = text()?,
            "app_id" => p.app_id = text()?,
            "cluster_id" => p.cluster_id = text()?,
            "delivery_mode" => p.delivery_mode = octet()?,
            "priority" => p.priority = octet()?,
            "timestamp" => {
                p.timestamp = Some(
                    value
                        .as_u64()
                        .ok_or_else(|| "property timestamp must be an integer".to_string())?,
                )
            }
            "headers" => p.headers = Some(json_to_table(value, "headers")?),
            other => return Err(format!("unknown property {other}")),
        }
    }
    Ok(p)
}

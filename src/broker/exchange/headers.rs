//! Headers exchange: a binding's arguments are matched against the message's
//! `headers` property. `x-match` is `all` (the default), `any`, or (RabbitMQ
//! 3.10+) `all-with-x` / `any-with-x`, which also compare keys starting
//! with `x-`; plain `all`/`any` ignore those keys on both sides. A binding
//! argument whose value is void matches on the key's presence alone. Values
//! compare as RabbitMQ's Erlang `==` compares the decoded terms: numbers by
//! value whatever their AMQP type (an integer 1 matches a byte, a long, a
//! timestamp or a double 1), long strings and byte arrays by their bytes, and
//! everything else (arrays, tables, decimals) by type and value.

use crate::metadata::exchange::{Binding, Destination, MatchMode};
use warren_protocol::{FieldTable, FieldValue};

#[derive(Debug)]
struct Entry {
    mode: MatchMode,
    arguments: FieldTable,
    destination: Destination,
}

#[derive(Debug, Default)]
pub(crate) struct HeadersRouter {
    entries: Vec<Entry>,
}

impl HeadersRouter {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn bind(&mut self, binding: &Binding) {
        self.entries.push(Entry {
            mode: MatchMode::from_arguments(&binding.arguments).unwrap_or(MatchMode::All),
            arguments: binding.arguments.clone(),
            destination: binding.destination.clone(),
        });
    }

    pub(crate) fn unbind(&mut self, binding: &Binding) {
        if let Some(at) = self
            .entries
            .iter()
            .position(|e| e.destination == binding.destination && e.arguments == binding.arguments)
        {
            self.entries.remove(at);
        }
    }

    pub(crate) fn route(&self, headers: &FieldTable, out: &mut Vec<Destination>) {
        for entry in &self.entries {
            if headers_match(entry.mode, &entry.arguments, headers) {
                out.push(entry.destination.clone());
            }
        }
    }
}

pub(crate) fn headers_match(mode: MatchMode, arguments: &FieldTable, headers: &FieldTable) -> bool {
    let with_x = matches!(mode, MatchMode::AllWithX | MatchMode::AnyWithX);
    let all = matches!(mode, MatchMode::All | MatchMode::AllWithX);
    let mut any_matched = false;
    for (key, expected) in arguments.iter() {
        if key.as_str() == "x-match" || (!with_x && key.starts_with("x-")) {
            continue;
        }
        let matched = match headers.get(key.as_str()) {
            None => false,
            Some(_) if *expected == FieldValue::Void => true,
            Some(actual) => values_equal(expected, actual),
        };
        if all && !matched {
            return false;
        }
        any_matched |= matched;
    }
    // "all" with no argument to compare matches everything, as in RabbitMQ.
    all || any_matched
}

/// A number as Erlang holds it after decoding: an integer or a float.
enum Number {
    Integer(i128),
    Float(f64),
}

fn number(value: &FieldValue) -> Option<Number> {
    Some(match *value {
        FieldValue::I8(n) => Number::Integer(n.into()),
        FieldValue::U8(n) => Number::Integer(n.into()),
        FieldValue::I16(n) => Number::Integer(n.into()),
        FieldValue::U16(n) => Number::Integer(n.into()),
        FieldValue::I32(n) => Number::Integer(n.into()),
        FieldValue::U32(n) => Number::Integer(n.into()),
        FieldValue::I64(n) => Number::Integer(n.into()),
        // RabbitMQ decodes a timestamp to a bare integer.
        FieldValue::Timestamp(n) => Number::Integer(n.into()),
        FieldValue::F32(f) => Number::Float(f.into()),
        FieldValue::F64(f) => Number::Float(f),
        _ => return None,
    })
}

/// Erlang's `==` on the terms RabbitMQ decodes the two values to.
fn values_equal(a: &FieldValue, b: &FieldValue) -> bool {
    match (number(a), number(b)) {
        (Some(Number::Integer(x)), Some(Number::Integer(y))) => return x == y,
        (Some(Number::Float(x)), Some(Number::Float(y))) => return x == y,
        (Some(Number::Integer(i)), Some(Number::Float(f)))
        | (Some(Number::Float(f)), Some(Number::Integer(i))) => {
            // Exact: a float equals an integer only if it has no fraction
            // and the same value (i128 holds every u64 and i64).
            return f.fract() == 0.0 && f.abs() < 1e38 && f as i128 == i;
        }
        _ => {}
    }
    match (a, b) {
        (
            FieldValue::LongStr(x) | FieldValue::ByteArray(x),
            FieldValue::LongStr(y) | FieldValue::ByteArray(y),
        ) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(*k, v.clone());
        }
        t
    }

    fn s(v: &'static str) -> FieldValue {
        FieldValue::LongStr(Bytes::from_static(v.as_bytes()))
    }

    #[test]
    fn all_needs_every_argument() {
        let args = table(&[("format", s("pdf")), ("type", s("report"))]);
        let both = table(&[("format", s("pdf")), ("type", s("report")), ("x", s("y"))]);
        let one = table(&[("format", s("pdf"))]);
        assert!(headers_match(MatchMode::All, &args, &both));
        assert!(!headers_match(MatchMode::All, &args, &one));
        assert!(headers_match(MatchMode::Any, &args, &one));
        assert!(!headers_match(MatchMode::Any, &args, &table(&[])));
    }

    #[test]
    fn x_keys_only_count_with_x() {
        let args = table(&[("x-match", s("any")), ("x-tag", s("a"))]);
        let headers = table(&[("x-tag", s("a"))]);
        assert!(!headers_match(MatchMode::Any, &args, &headers));
        assert!(headers_match(MatchMode::AnyWithX, &args, &headers));
        assert!(headers_match(MatchMode::All, &args, &table(&[])));
    }

    #[test]
    fn numbers_match_across_integer_and_float_types() {
        let args = table(&[("n", FieldValue::I32(1))]);
        for header in [
            FieldValue::I8(1),
            FieldValue::U8(1),
            FieldValue::I16(1),
            FieldValue::U16(1),
            FieldValue::U32(1),
            FieldValue::I64(1),
            FieldValue::Timestamp(1),
            FieldValue::F32(1.0),
            FieldValue::F64(1.0),
        ] {
            let headers = table(&[("n", header.clone())]);
            assert!(headers_match(MatchMode::All, &args, &headers), "{header:?}");
        }
        for header in [
            FieldValue::F64(1.5),
            FieldValue::I64(2),
            FieldValue::Bool(true),
            s("1"),
        ] {
            let headers = table(&[("n", header.clone())]);
            assert!(
                !headers_match(MatchMode::All, &args, &headers),
                "{header:?}"
            );
        }
        let args = table(&[("f", FieldValue::F64(2.5))]);
        assert!(headers_match(
            MatchMode::All,
            &args,
            &table(&[("f", FieldValue::F32(2.5))])
        ));
        let args = table(&[("b", FieldValue::ByteArray(Bytes::from_static(b"v")))]);
        assert!(headers_match(
            MatchMode::All,
            &args,
            &table(&[("b", s("v"))])
        ));
    }

    #[test]
    fn void_argument_matches_presence() {
        let args = table(&[("k", FieldValue::Void)]);
        assert!(headers_match(
            MatchMode::All,
            &args,
            &table(&[("k", s("v"))])
        ));
        assert!(!headers_match(MatchMode::All, &args, &table(&[])));
    }
}

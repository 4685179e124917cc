//! Headers exchange: a binding's arguments are matched against the message's
//! `headers` property. `x-match` is `all` (the default), `any`, or (RabbitMQ
//! 3.10+) `all-with-x` / `any-with-x`, which also compare keys starting
//! with `x-`; plain `all`/`any` ignore those keys on both sides. A binding
//! argument whose value is void matches on the key's presence alone.

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
            Some(actual) => actual == expected,
        };
        if all && !matched {
            return false;
        }
        any_matched |= matched;
    }
    // "all" with no argument to compare matches everything, as in RabbitMQ.
    all || any_matched
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

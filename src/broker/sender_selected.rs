//! Sender-selected distribution, RabbitMQ's extension: a publish whose
//! headers hold `CC` and/or `BCC`, arrays of longstr routing keys, is routed
//! with its routing key and every one of those keys, and reaches each
//! matching queue once. `BCC` is removed from the message before it is
//! stored, so no consumer sees it; `CC` stays.
//!
//! As RabbitMQ 3.10 does it (`rabbit_basic:header_routes` and
//! `strip_header`): the keys are case-sensitive; array elements other than
//! longstr are ignored; a `CC` or `BCC` that is not an array refuses the
//! publish with 406 PRECONDITION_FAILED "invalid message:
//! {unacceptable_type_in_header,"CC",longstr}"; only the first `BCC` entry
//! is removed, and a table it empties stays as an empty table. The BCC keys
//! stay with the message (`Message::bcc_keys`, not visible to consumers):
//! RabbitMQ routes a dead letter with every key the message was published
//! with, BCC ones included, though its x-death lists only the routing key
//! and the CC keys.
//!
//! Unlike RabbitMQ, warren refuses a publish whose CC and BCC together
//! hold more than `config::SENDER_SELECTED_KEYS_MAX` routing keys, with 406
//! PRECONDITION_FAILED, as each key routes the message once more.
//!
//! A publish without headers pays one flag test; one with headers but no
//! CC or BCC pays a walk over the raw table, with nothing decoded or
//! allocated.

use crate::config::SENDER_SELECTED_KEYS_MAX;
use warren_protocol::{AmqpError, FieldValue, Properties};

pub(crate) const CC_HEADER: &str = "CC";
pub(crate) const BCC_HEADER: &str = "BCC";

/// What a publish with a BCC header is stored as.
#[derive(Debug, PartialEq)]
pub struct BccRemoved {
    /// The properties without the BCC header.
    pub properties: Properties,
    /// Where the BCC keys start in the keys `routing_keys` filled in.
    pub bcc_at: usize,
}

/// Puts the publish's CC and then BCC routing keys in `keys` (emptied
/// first); when there is a BCC header, returns the properties without it.
pub fn routing_keys(
    properties: &Properties,
    keys: &mut Vec<String>,
) -> Result<Option<BccRemoved>, AmqpError> {
    keys.clear();
    if !properties.has_headers() {
        return Ok(None);
    }
    let [cc, bcc] = properties.header_values([CC_HEADER, BCC_HEADER]);
    let key_count: usize = [&cc, &bcc]
        .into_iter()
        .map(|value| match value {
            Some(FieldValue::Array(routes)) => routes
                .iter()
                .filter(|route| matches!(route, FieldValue::LongStr(_)))
                .count(),
            _ => 0,
        })
        .sum();
    if key_count > SENDER_SELECTED_KEYS_MAX {
        return Err(AmqpError::precondition_failed(format!(
            "invalid message: CC and BCC hold {} routing keys, more than the {} allowed",
            key_count, SENDER_SELECTED_KEYS_MAX
        )));
    }
    let mut bcc_at = 0;
    for (header, value) in [(CC_HEADER, &cc), (BCC_HEADER, &bcc)] {
        bcc_at = keys.len();
        match value {
            None => {}
            Some(FieldValue::Array(routes)) => {
                // Routing keys are binaries to RabbitMQ and text to warren's
                // routers; a key that is not UTF-8 can only match a topic
                // wildcard, which its lossy form matches the same way.
                keys.extend(routes.iter().filter_map(|route| match route {
                    FieldValue::LongStr(key) => Some(String::from_utf8_lossy(key).into_owned()),
                    _ => None,
                }));
            }
            Some(other) => {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid message: {{unacceptable_type_in_header,\"{}\",{}}}",
                    header,
                    other.type_name()
                )));
            }
        }
    }
    Ok(match bcc {
        Some(_) => properties
            .without_header(BCC_HEADER)
            .map(|properties| BccRemoved { properties, bcc_at }),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use warren_protocol::{BasicProperties, FieldTable};

    fn ls(s: &'static str) -> FieldValue {
        FieldValue::LongStr(Bytes::from_static(s.as_bytes()))
    }

    fn with_headers(entries: Vec<(&str, FieldValue)>) -> Properties {
        let mut headers = FieldTable::new();
        for (k, v) in entries {
            headers.0.push((k.into(), v));
        }
        BasicProperties {
            headers: Some(headers),
            content_type: Some("text/plain".into()),
            priority: Some(3),
            ..Default::default()
        }
        .encode()
    }

    #[test]
    fn no_headers_no_keys() {
        let mut keys = vec!["stale".to_string()];
        assert_eq!(routing_keys(&Properties::empty(), &mut keys), Ok(None));
        assert!(keys.is_empty());
        let p = with_headers(vec![("a", FieldValue::I32(1))]);
        assert_eq!(routing_keys(&p, &mut keys), Ok(None));
        assert!(keys.is_empty());
    }

    #[test]
    fn cc_then_bcc_keys_and_bcc_removed() {
        let p = with_headers(vec![
            ("x", FieldValue::I32(1)),
            ("BCC", FieldValue::Array(vec![ls("b1"), FieldValue::I32(9)])),
            ("CC", FieldValue::Array(vec![ls("c1"), ls("c2")])),
            ("y", ls("kept")),
        ]);
        let mut keys = Vec::new();
        let removed = routing_keys(&p, &mut keys).unwrap().expect("BCC removed");
        assert_eq!(keys, ["c1", "c2", "b1"]);
        assert_eq!(removed.bcc_at, 2);
        let stripped = removed.properties;
        let decoded = stripped.decode();
        let headers = decoded.headers.clone().unwrap();
        let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["x", "CC", "y"]);
        // Everything else is untouched.
        let mut expected = p.decode();
        expected.headers = Some(headers);
        assert_eq!(decoded, expected);
        let again = Properties::from_wire(stripped.flags(), stripped.raw().clone()).unwrap();
        assert_eq!(again, stripped);
    }

    #[test]
    fn only_the_first_bcc_goes_and_an_emptied_table_stays() {
        let p = with_headers(vec![("BCC", FieldValue::Array(vec![]))]);
        let removed = routing_keys(&p, &mut Vec::new()).unwrap().unwrap();
        assert_eq!(removed.properties.headers(), Some(FieldTable::new()));
        assert_eq!(removed.bcc_at, 0);
        let p = with_headers(vec![
            ("BCC", FieldValue::Array(vec![ls("one")])),
            ("BCC", FieldValue::Array(vec![ls("two")])),
        ]);
        let mut keys = Vec::new();
        let removed = routing_keys(&p, &mut keys).unwrap().unwrap();
        assert_eq!(keys, ["one"]);
        assert_eq!(removed.properties.headers().unwrap().len(), 1);
    }

    #[test]
    fn more_keys_than_the_limit_are_refused() {
        let keys = |n: usize| FieldValue::Array(vec![ls("k"); n]);
        let half = SENDER_SELECTED_KEYS_MAX / 2;
        let p = with_headers(vec![("CC", keys(half)), ("BCC", keys(half))]);
        let mut out = Vec::new();
        assert!(routing_keys(&p, &mut out).is_ok());
        assert_eq!(out.len(), SENDER_SELECTED_KEYS_MAX);
        let p = with_headers(vec![("CC", keys(half)), ("BCC", keys(half + 1))]);
        let error = routing_keys(&p, &mut out).unwrap_err();
        assert_eq!(
            error.reply_text().as_str(),
            format!(
                "PRECONDITION_FAILED - invalid message: CC and BCC hold {} routing keys, more than the {} allowed",
                SENDER_SELECTED_KEYS_MAX + 1,
                SENDER_SELECTED_KEYS_MAX
            )
        );
    }

    #[test]
    fn a_header_that_is_no_array_is_refused_as_rabbitmq_refuses_it() {
        let p = with_headers(vec![("CC", ls("q"))]);
        let error = routing_keys(&p, &mut Vec::new()).unwrap_err();
        assert_eq!(
            error.reply_text(),
            "PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,\"CC\",longstr}"
        );
        let p = with_headers(vec![("BCC", FieldValue::I32(1))]);
        let error = routing_keys(&p, &mut Vec::new()).unwrap_err();
        assert!(error.reply_text().ends_with("\"BCC\",signedint}"));
    }
}

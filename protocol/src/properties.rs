//! Basic-class content properties (the part of a content header after the body size).
//!
//! ```text
//! +-----------------+---------------------------------------------+
//! | flags u16       | property list: each property whose flag is  |
//! |                 | set, in flag order, without padding          |
//! +-----------------+---------------------------------------------+
//!  bit 15 content-type     shortstr    bit 7 message-id  shortstr
//!  bit 14 content-encoding shortstr    bit 6 timestamp   u64
//!  bit 13 headers          table       bit 5 type        shortstr
//!  bit 12 delivery-mode    octet       bit 4 user-id     shortstr
//!  bit 11 priority         octet       bit 3 app-id      shortstr
//!  bit 10 correlation-id   shortstr    bit 2 cluster-id  shortstr
//!  bit  9 reply-to         shortstr    bit 1 unused
//!  bit  8 expiration       shortstr    bit 0 continuation (never set for basic)
//! ```
//!
//! `Properties` keeps the wire form as received, so the broker forwards it untouched on
//! delivery, and decodes a field only when asked. `from_wire` walks the list once, so
//! no accessor can fail later. `BasicProperties` is the decoded, owned form, for code
//! that builds or rewrites properties (dead-lettering, the management API).

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::FrameError;
use super::table::{decode_value, skip_value, validate_table, FieldTable, FieldValue};
use super::types::{put_shortstr, Reader, ShortStr};

/// Flag bit of each property, in wire order.
pub mod flag {
    pub const CONTENT_TYPE: u16 = 1 << 15;
    pub const CONTENT_ENCODING: u16 = 1 << 14;
    pub const HEADERS: u16 = 1 << 13;
    pub const DELIVERY_MODE: u16 = 1 << 12;
    pub const PRIORITY: u16 = 1 << 11;
    pub const CORRELATION_ID: u16 = 1 << 10;
    pub const REPLY_TO: u16 = 1 << 9;
    pub const EXPIRATION: u16 = 1 << 8;
    pub const MESSAGE_ID: u16 = 1 << 7;
    pub const TIMESTAMP: u16 = 1 << 6;
    pub const TYPE: u16 = 1 << 5;
    pub const USER_ID: u16 = 1 << 4;
    pub const APP_ID: u16 = 1 << 3;
    pub const CLUSTER_ID: u16 = 1 << 2;
    pub const CONTINUATION: u16 = 1;
}

/// How each property is laid out, so a reader can skip the ones before the one it wants.
#[derive(Clone, Copy)]
enum Kind {
    ShortStr,
    Table,
    Octet,
    Timestamp,
}

/// Every property flag with its layout, in wire order.
const LAYOUT: [(u16, Kind); 14] = [
    (flag::CONTENT_TYPE, Kind::ShortStr),
    (flag::CONTENT_ENCODING, Kind::ShortStr),
    (flag::HEADERS, Kind::Table),
    (flag::DELIVERY_MODE, Kind::Octet),
    (flag::PRIORITY, Kind::Octet),
    (flag::CORRELATION_ID, Kind::ShortStr),
    (flag::REPLY_TO, Kind::ShortStr),
    (flag::EXPIRATION, Kind::ShortStr),
    (flag::MESSAGE_ID, Kind::ShortStr),
    (flag::TIMESTAMP, Kind::Timestamp),
    (flag::TYPE, Kind::ShortStr),
    (flag::USER_ID, Kind::ShortStr),
    (flag::APP_ID, Kind::ShortStr),
    (flag::CLUSTER_ID, Kind::ShortStr),
];

/// The decoded basic properties. `kind` is the spec's `type` property.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BasicProperties {
    pub content_type: Option<ShortStr>,
    pub content_encoding: Option<ShortStr>,
    pub headers: Option<FieldTable>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<ShortStr>,
    pub reply_to: Option<ShortStr>,
    pub expiration: Option<ShortStr>,
    pub message_id: Option<ShortStr>,
    pub timestamp: Option<u64>,
    pub kind: Option<ShortStr>,
    pub user_id: Option<ShortStr>,
    pub app_id: Option<ShortStr>,
    pub cluster_id: Option<ShortStr>,
}

impl BasicProperties {
    /// Encodes to the wire form.
    pub fn encode(&self) -> Properties {
        let mut flags = 0u16;
        let mut buf = BytesMut::with_capacity(self.list_len());
        let shortstr = |buf: &mut BytesMut, flags: &mut u16, bit: u16, v: &Option<ShortStr>| {
            if let Some(v) = v {
                *flags |= bit;
                put_shortstr(buf, v);
            }
        };
        shortstr(&mut buf, &mut flags, flag::CONTENT_TYPE, &self.content_type);
        shortstr(
            &mut buf,
            &mut flags,
            flag::CONTENT_ENCODING,
            &self.content_encoding,
        );
        if let Some(headers) = &self.headers {
            flags |= flag::HEADERS;
            headers.encode(&mut buf);
        }
        if let Some(v) = self.delivery_mode {
            flags |= flag::DELIVERY_MODE;
            buf.put_u8(v);
        }
        if let Some(v) = self.priority {
            flags |= flag::PRIORITY;
            buf.put_u8(v);
        }
        shortstr(
            &mut buf,
            &mut flags,
            flag::CORRELATION_ID,
            &self.correlation_id,
        );
        shortstr(&mut buf, &mut flags, flag::REPLY_TO, &self.reply_to);
        shortstr(&mut buf, &mut flags, flag::EXPIRATION, &self.expiration);
        shortstr(&mut buf, &mut flags, flag::MESSAGE_ID, &self.message_id);
        if let Some(v) = self.timestamp {
            flags |= flag::TIMESTAMP;
            buf.put_u64(v);
        }
        shortstr(&mut buf, &mut flags, flag::TYPE, &self.kind);
        shortstr(&mut buf, &mut flags, flag::USER_ID, &self.user_id);
        shortstr(&mut buf, &mut flags, flag::APP_ID, &self.app_id);
        shortstr(&mut buf, &mut flags, flag::CLUSTER_ID, &self.cluster_id);
        debug_assert_eq!(buf.len(), self.list_len());
        Properties {
            flags,
            raw: buf.freeze(),
        }
    }

    /// Length of the property list, flags excluded.
    fn list_len(&self) -> usize {
        let s = |v: &Option<ShortStr>| v.as_ref().map_or(0, |s| 1 + s.len());
        s(&self.content_type)
            + s(&self.content_encoding)
            + self.headers.as_ref().map_or(0, FieldTable::encoded_len)
            + self.delivery_mode.map_or(0, |_| 1)
            + self.priority.map_or(0, |_| 1)
            + s(&self.correlation_id)
            + s(&self.reply_to)
            + s(&self.expiration)
            + s(&self.message_id)
            + self.timestamp.map_or(0, |_| 8)
            + s(&self.kind)
            + s(&self.user_id)
            + s(&self.app_id)
            + s(&self.cluster_id)
    }
}

/// Basic properties in wire form: the flags and the property list bytes, validated.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Properties {
    flags: u16,
    raw: Bytes,
}

impl Properties {
    /// No properties set.
    pub fn empty() -> Properties {
        Properties::default()
    }

    /// Validates a received property list (every set property present, well formed,
    /// nothing left over) without decoding it. Tables are walked, not built.
    pub fn from_wire(flags: u16, raw: Bytes) -> Result<Properties, FrameError> {
        Properties::check_wire(flags, &raw)?;
        Ok(Properties { flags, raw })
    }

    fn check_wire(flags: u16, raw: &Bytes) -> Result<(), FrameError> {
        if flags & flag::CONTINUATION != 0 {
            return Err(FrameError::Syntax(
                "property flags continuation bit set".into(),
            ));
        }
        if flags == 0 && raw.is_empty() {
            // Most publishes set no property: nothing to walk.
            return Ok(());
        }
        let mut r = Reader::new(raw);
        for &(bit, kind) in &LAYOUT {
            if flags & bit == 0 {
                continue;
            }
            match kind {
                Kind::ShortStr => r.shortstr().map(drop)?,
                Kind::Table => validate_table(&mut r, 0)?,
                Kind::Octet => r.skip(1, "octet property")?,
                Kind::Timestamp => r.skip(8, "timestamp property")?,
            }
        }
        r.finish("property list")
    }

    /// Properties known to be valid: a slice of a list `from_wire` or
    /// `BasicProperties::encode` made.
    pub fn from_validated(flags: u16, raw: Bytes) -> Properties {
        Properties { flags, raw }
    }

    pub fn flags(&self) -> u16 {
        self.flags
    }

    /// The property list, flags excluded.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Bytes on the wire: the flags and the property list.
    pub fn encoded_len(&self) -> usize {
        2 + self.raw.len()
    }

    /// Decodes every property.
    pub fn decode(&self) -> BasicProperties {
        match self.decode_list() {
            Ok(p) => p,
            Err(error) => {
                // `from_wire` and `BasicProperties::encode` are the only constructors,
                // and both guarantee a well-formed list.
                debug_assert!(false, "validated properties failed to decode: {error}");
                BasicProperties::default()
            }
        }
    }

    fn decode_list(&self) -> Result<BasicProperties, FrameError> {
        let f = self.flags;
        let mut r = Reader::new(&self.raw);
        let shortstr = |r: &mut Reader<'_>, bit: u16| -> Result<Option<ShortStr>, FrameError> {
            if f & bit != 0 {
                r.shortstr().map(Some)
            } else {
                Ok(None)
            }
        };
        let octet = |r: &mut Reader<'_>, bit: u16| -> Result<Option<u8>, FrameError> {
            if f & bit != 0 {
                r.octet().map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(BasicProperties {
            content_type: shortstr(&mut r, flag::CONTENT_TYPE)?,
            content_encoding: shortstr(&mut r, flag::CONTENT_ENCODING)?,
            headers: if f & flag::HEADERS != 0 {
                Some(r.table()?)
            } else {
                None
            },
            delivery_mode: octet(&mut r, flag::DELIVERY_MODE)?,
            priority: octet(&mut r, flag::PRIORITY)?,
            correlation_id: shortstr(&mut r, flag::CORRELATION_ID)?,
            reply_to: shortstr(&mut r, flag::REPLY_TO)?,
            expiration: shortstr(&mut r, flag::EXPIRATION)?,
            message_id: shortstr(&mut r, flag::MESSAGE_ID)?,
            timestamp: if f & flag::TIMESTAMP != 0 {
                Some(r.timestamp()?)
            } else {
                None
            },
            kind: shortstr(&mut r, flag::TYPE)?,
            user_id: shortstr(&mut r, flag::USER_ID)?,
            app_id: shortstr(&mut r, flag::APP_ID)?,
            cluster_id: shortstr(&mut r, flag::CLUSTER_ID)?,
        })
    }

    /// A reader positioned at the property `bit`, or None if it is not set. Skips the
    /// properties before it without decoding them.
    fn seek(&self, bit: u16) -> Option<Reader<'_>> {
        seek_in(self.flags, &self.raw, 0, bit)
    }

    fn shortstr(&self, bit: u16) -> Option<ShortStr> {
        let value = self.seek(bit)?.shortstr();
        debug_assert!(value.is_ok(), "validated property failed to decode");
        value.ok()
    }

    fn octet(&self, bit: u16) -> Option<u8> {
        self.seek(bit)?.octet().ok()
    }

    pub fn content_type(&self) -> Option<ShortStr> {
        self.shortstr(flag::CONTENT_TYPE)
    }

    pub fn content_encoding(&self) -> Option<ShortStr> {
        self.shortstr(flag::CONTENT_ENCODING)
    }

    pub fn headers(&self) -> Option<FieldTable> {
        let value = self.seek(flag::HEADERS)?.table();
        debug_assert!(value.is_ok(), "validated headers failed to decode");
        value.ok()
    }

    /// True if the headers property is set. Publishes without headers skip every
    /// header-driven feature (sender-selected distribution, `x-delay`) on this test.
    pub fn has_headers(&self) -> bool {
        self.flags & flag::HEADERS != 0
    }

    /// The first value stored under each of `keys` in the headers table (the entry
    /// `rabbit_misc:table_lookup` finds). Only those values are decoded; every other
    /// entry is stepped over, so a lookup allocates nothing for a table without them.
    pub fn header_values<const N: usize>(&self, keys: [&str; N]) -> [Option<FieldValue>; N] {
        let mut found: [Option<FieldValue>; N] = std::array::from_fn(|_| None);
        if let Some(mut r) = self.seek(flag::HEADERS) {
            let walked = walk_headers(&mut r, |key, r| {
                match keys.iter().position(|k| k.as_bytes() == key) {
                    Some(at) if found[at].is_none() => found[at] = Some(decode_value(r, 0)?),
                    _ => skip_value(r)?,
                }
                Ok(found.iter().all(Option::is_some))
            });
            debug_assert!(walked.is_ok(), "validated headers failed to walk");
        }
        found
    }

    /// These properties without the first entry under `key` in the headers table (as
    /// RabbitMQ's `strip_header` removes BCC), or None if there is no such entry. The
    /// entry is cut out of the wire form and the table's length fixed: one copy of the
    /// property list, nothing decoded. An emptied table stays, as in RabbitMQ.
    pub fn without_header(&self, key: &str) -> Option<Properties> {
        let mut r = self.seek(flag::HEADERS)?;
        let len_at = r.position();
        let mut cut = None;
        let walked = walk_headers(&mut r, |entry_key, r| {
            let start = r.position() - 1 - entry_key.len();
            skip_value(r)?;
            if entry_key == key.as_bytes() {
                cut = Some(start..r.position());
                return Ok(true);
            }
            Ok(false)
        });
        debug_assert!(walked.is_ok(), "validated headers failed to walk");
        let cut = cut?;
        let table_len = u32::from_be_bytes(self.raw[len_at..len_at + 4].try_into().ok()?);
        let mut raw = BytesMut::with_capacity(self.raw.len() - cut.len());
        raw.put_slice(&self.raw[..len_at]);
        raw.put_u32(table_len - cut.len() as u32);
        raw.put_slice(&self.raw[len_at + 4..cut.start]);
        raw.put_slice(&self.raw[cut.end..]);
        Some(Properties {
            flags: self.flags,
            raw: raw.freeze(),
        })
    }

    pub fn delivery_mode(&self) -> Option<u8> {
        self.octet(flag::DELIVERY_MODE)
    }

    pub fn priority(&self) -> Option<u8> {
        self.octet(flag::PRIORITY)
    }

    pub fn correlation_id(&self) -> Option<ShortStr> {
        self.shortstr(flag::CORRELATION_ID)
    }

    pub fn reply_to(&self) -> Option<ShortStr> {
        self.shortstr(flag::REPLY_TO)
    }

    pub fn expiration(&self) -> Option<ShortStr> {
        self.shortstr(flag::EXPIRATION)
    }

    pub fn message_id(&self) -> Option<ShortStr> {
        self.shortstr(flag::MESSAGE_ID)
    }

    pub fn timestamp(&self) -> Option<u64> {
        self.seek(flag::TIMESTAMP)?.timestamp().ok()
    }

    pub fn kind(&self) -> Option<ShortStr> {
        self.shortstr(flag::TYPE)
    }

    pub fn user_id(&self) -> Option<ShortStr> {
        self.shortstr(flag::USER_ID)
    }

    pub fn app_id(&self) -> Option<ShortStr> {
        self.shortstr(flag::APP_ID)
    }

    pub fn cluster_id(&self) -> Option<ShortStr> {
        self.shortstr(flag::CLUSTER_ID)
    }
}

/// Walks a length-prefixed headers table at `r`: for each entry, `visit` gets the key
/// and the reader at the value, must consume the value, and returns true to stop.
fn walk_headers(
    r: &mut Reader<'_>,
    mut visit: impl FnMut(&[u8], &mut Reader<'_>) -> Result<bool, FrameError>,
) -> Result<(), FrameError> {
    let len = r.long()? as usize;
    let end = r.position() + len;
    while r.position() < end {
        let key_len = r.octet()? as usize;
        let key = r.borrow(key_len, "shortstr")?;
        if visit(key, r)? {
            break;
        }
    }
    Ok(())
}

impl From<&BasicProperties> for Properties {
    fn from(p: &BasicProperties) -> Self {
        p.encode()
    }
}

/// A reader positioned at the property `bit` in a validated property list,
/// (from `start` to the end of `raw`), or None if it is not set. Skips the
/// properties before it without decoding them.
fn seek_in(flags: u16, raw: &Bytes, start: usize, bit: u16) -> Option<Reader<'_>> {
    if flags & bit == 0 {
        return None;
    }
    let mut r = Reader::new_at(raw, start);
    for &(other, kind) in &LAYOUT {
        if other == bit {
            return Some(r);
        }
        if flags & other == 0 {
            continue;
        }

        let skipped = match kind {
            Kind::ShortStr => r.skip_shortstr(),
            Kind::Table => r.long().and_then(|len| r.skip(len as usize, "table")),
            Kind::Octet => r.skip(1, "octet"),
            Kind::Timestamp => r.skip(8, "timestamp"),
        };
        debug_assert!(skipped.is_ok(), "validated properties failed to skip");
        skipped.ok()?;
    }
    None
}

/// An octet property (`delivery-mode`, `priority`) of a validated property
/// list that runs from `start` to the end of `raw`, read in place.
pub fn octet_in(flags: u16, raw: &Bytes, start: usize, bit: u16) -> Option<u8> {
    seek_in(flags, raw, start, bit)?.octet().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::table::FieldValue;

    pub(crate) fn all_set() -> BasicProperties {
        let mut headers = FieldTable::new();
        headers.insert("x-match", FieldValue::LongStr(Bytes::from_static(b"all")));
        headers.insert("n", FieldValue::I64(42));
        BasicProperties {
            content_type: Some("application/json".into()),
            content_encoding: Some("gzip".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(7),
            correlation_id: Some("corr-1".into()),
            reply_to: Some("amq.rabbitmq.reply-to".into()),
            expiration: Some("60000".into()),
            message_id: Some("msg-1".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("order.created".into()),
            user_id: Some("guest".into()),
            app_id: Some("warren-test".into()),
            cluster_id: Some("c1".into()),
        }
    }

    /// `all_set` with only the properties whose flag bit is in `mask`.
    pub(crate) fn subset(mask: u16) -> BasicProperties {
        let all = all_set();
        let pick = |bit: u16, v: &Option<ShortStr>| if mask & bit != 0 { v.clone() } else { None };
        BasicProperties {
            content_type: pick(flag::CONTENT_TYPE, &all.content_type),
            content_encoding: pick(flag::CONTENT_ENCODING, &all.content_encoding),
            headers: if mask & flag::HEADERS != 0 {
                all.headers.clone()
            } else {
                None
            },
            delivery_mode: all
                .delivery_mode
                .filter(|_| mask & flag::DELIVERY_MODE != 0),
            priority: all.priority.filter(|_| mask & flag::PRIORITY != 0),
            correlation_id: pick(flag::CORRELATION_ID, &all.correlation_id),
            reply_to: pick(flag::REPLY_TO, &all.reply_to),
            expiration: pick(flag::EXPIRATION, &all.expiration),
            message_id: pick(flag::MESSAGE_ID, &all.message_id),
            timestamp: all.timestamp.filter(|_| mask & flag::TIMESTAMP != 0),
            kind: pick(flag::TYPE, &all.kind),
            user_id: pick(flag::USER_ID, &all.user_id),
            app_id: pick(flag::APP_ID, &all.app_id),
            cluster_id: pick(flag::CLUSTER_ID, &all.cluster_id),
        }
    }

    #[test]
    fn all_properties_round_trip() {
        let p = all_set();
        let wire = p.encode();
        assert_eq!(wire.flags(), 0xfffc);
        let back = Properties::from_wire(wire.flags(), wire.raw().clone()).unwrap();
        assert_eq!(back.decode(), p);
        assert_eq!(back.encoded_len(), 2 + wire.raw().len());
    }

    #[test]
    fn empty_properties() {
        let p = Properties::empty();
        assert_eq!(p.flags(), 0);
        assert_eq!(p.decode(), BasicProperties::default());
        assert_eq!(BasicProperties::default().encode(), p);
        assert_eq!(p.headers(), None);
        assert_eq!(p.delivery_mode(), None);
    }

    #[test]
    fn lazy_accessors_agree_with_full_decode_for_random_flag_sets() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mask = (seed as u16) & 0xfffc;
            let expected = subset(mask);
            let wire = expected.encode();
            assert_eq!(wire.flags(), mask);
            let p = Properties::from_wire(wire.flags(), wire.raw().clone()).unwrap();
            let full = p.decode();
            assert_eq!(full, expected);
            assert_eq!(p.content_type(), full.content_type);
            assert_eq!(p.content_encoding(), full.content_encoding);
            assert_eq!(p.headers(), full.headers);
            assert_eq!(p.delivery_mode(), full.delivery_mode);
            assert_eq!(p.priority(), full.priority);
            assert_eq!(p.correlation_id(), full.correlation_id);
            assert_eq!(p.reply_to(), full.reply_to);
            assert_eq!(p.expiration(), full.expiration);
            assert_eq!(p.message_id(), full.message_id);
            assert_eq!(p.timestamp(), full.timestamp);
            assert_eq!(p.kind(), full.kind);
            assert_eq!(p.user_id(), full.user_id);
            assert_eq!(p.app_id(), full.app_id);
            assert_eq!(p.cluster_id(), full.cluster_id);
        }
    }

    #[test]
    fn header_values_and_without_header_agree_with_the_decoded_table() {
        let mut table = crate::table::tests::every_type_table();
        table.0.push(("i32".into(), FieldValue::I32(2)));
        let p = BasicProperties {
            headers: Some(table.clone()),
            ..all_set()
        }
        .encode();
        for (key, _) in table.iter() {
            let [found, missing] = p.header_values([key.as_str(), "absent"]);
            assert_eq!(found.as_ref(), table.get(key), "{key}");
            assert_eq!(missing, None);
            let stripped = p.without_header(key).expect("entry present");
            let again = Properties::from_wire(stripped.flags(), stripped.raw().clone()).unwrap();
            let mut expected = table.clone();
            let at = expected.0.iter().position(|(k, _)| k == key).unwrap();
            expected.0.remove(at);
            let mut decoded = again.decode();
            assert_eq!(decoded.headers.take(), Some(expected), "{key}");
            assert_eq!(
                decoded,
                BasicProperties {
                    headers: None,
                    ..all_set()
                }
            );
        }
        assert_eq!(p.without_header("absent"), None);
        assert_eq!(Properties::empty().without_header("i32"), None);
        assert_eq!(Properties::empty().header_values(["i32"]), [None]);
    }

    #[test]
    fn continuation_flag_is_rejected() {
        assert!(matches!(
            Properties::from_wire(1, Bytes::new()),
            Err(FrameError::Syntax(_))
        ));
    }

    #[test]
    fn truncated_or_overlong_lists_are_rejected() {
        let wire = all_set().encode();
        let raw = wire.raw().clone();
        for cut in 0..raw.len() {
            assert!(
                Properties::from_wire(wire.flags(), raw.slice(..cut)).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = BytesMut::from(&raw[..]);
        longer.put_u8(0);
        assert!(Properties::from_wire(wire.flags(), longer.freeze()).is_err());
    }

    #[test]
    fn bad_utf8_in_a_shortstr_property_is_rejected() {
        let raw = Bytes::from_static(&[2, 0xff, 0xfe]);
        assert!(Properties::from_wire(flag::CONTENT_TYPE, raw).is_err());
    }
}

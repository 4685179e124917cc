//! Field tables and field arrays: the typed key/value maps used by method `arguments`,
//! `server_properties`/`client_properties` and the `headers` message property.
//!
//! ```text
//! table  = long-uint length, then entries until the length is used up
//! entry  = shortstr key, value
//! value  = one type octet, then the payload for that type
//! array  = long-uint length, then values (no keys) until the length is used up
//! ```
//!
//! The type octets are RabbitMQ's (`rabbit_binary_parser`, and amq-protocol's "we follow
//! RabbitMQ" comment), not the 0-9-1 spec's, which clash with them ('s' is a signed short
//! here, a short string in the spec):
//!
//! ```text
//! t bool   b i8   B u8   s i16   u u16   I i32   i u32   l i64   f f32   d f64
//! D decimal (scale u8, value u32)   S longstr   x byte array   A array
//! T timestamp u64   F table   V void
//! ```
//!
//! RabbitMQ also decodes 'L' as a signed 64-bit integer, and so do we; we always encode
//! 'l'. Any other type octet is a syntax error.
//!
//! A table keeps its entries in wire order, duplicates included, as RabbitMQ does;
//! lookups return the first match (`rabbit_misc:table_lookup`).

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::FrameError;
use super::types::{put_longstr, put_shortstr, Reader, ShortStr, TABLE_DEPTH_MAX};

/// One typed value in a field table or field array. The comment on each variant is its
/// type octet.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    /// t
    Bool(bool),
    /// b
    I8(i8),
    /// B
    U8(u8),
    /// s
    I16(i16),
    /// u
    U16(u16),
    /// I
    I32(i32),
    /// i
    U32(u32),
    /// l (and L on decode)
    I64(i64),
    /// f
    F32(f32),
    /// d
    F64(f64),
    /// D
    Decimal { scale: u8, value: u32 },
    /// S
    LongStr(Bytes),
    /// x
    ByteArray(Bytes),
    /// A
    Array(Vec<FieldValue>),
    /// T
    Timestamp(u64),
    /// F
    Table(FieldTable),
    /// V
    Void,
}

impl FieldValue {
    /// The text of a `LongStr` holding valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongStr(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// Any integer type, widened. RabbitMQ accepts any integer type for numeric
    /// arguments such as `x-message-ttl`; timestamps and floats are not integers here.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::I8(v) => Some(v.into()),
            FieldValue::U8(v) => Some(v.into()),
            FieldValue::I16(v) => Some(v.into()),
            FieldValue::U16(v) => Some(v.into()),
            FieldValue::I32(v) => Some(v.into()),
            FieldValue::U32(v) => Some(v.into()),
            FieldValue::I64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_table(&self) -> Option<&FieldTable> {
        match self {
            FieldValue::Table(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[FieldValue]> {
        match self {
            FieldValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The raw bytes of a `LongStr` or `ByteArray`.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            FieldValue::LongStr(b) | FieldValue::ByteArray(b) => Some(b),
            _ => None,
        }
    }

    /// RabbitMQ's name for this value's type (the atom `rabbit_binary_parser` tags it
    /// with), as its error texts print it: "expected integer, got longstr".
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldValue::Bool(_) => "bool",
            FieldValue::I8(_) => "byte",
            FieldValue::U8(_) => "unsignedbyte",
            FieldValue::I16(_) => "short",
            FieldValue::U16(_) => "unsignedshort",
            FieldValue::I32(_) => "signedint",
            FieldValue::U32(_) => "unsignedint",
            FieldValue::I64(_) => "long",
            FieldValue::F32(_) => "float",
            FieldValue::F64(_) => "double",
            FieldValue::Decimal { .. } => "decimal",
            FieldValue::LongStr(_) => "longstr",
            FieldValue::ByteArray(_) => "binary",
            FieldValue::Array(_) => "array",
            FieldValue::Timestamp(_) => "timestamp",
            FieldValue::Table(_) => "table",
            FieldValue::Void => "void",
        }
    }

    /// The type octet this value is encoded with.
    pub fn type_tag(&self) -> u8 {
        match self {
            FieldValue::Bool(_) => b't',
            FieldValue::I8(_) => b'b',
            FieldValue::U8(_) => b'B',
            FieldValue::I16(_) => b's',
            FieldValue::U16(_) => b'u',
            FieldValue::I32(_) => b'I',
            FieldValue::U32(_) => b'i',
            FieldValue::I64(_) => b'l',
            FieldValue::F32(_) => b'f',
            FieldValue::F64(_) => b'd',
            FieldValue::Decimal { .. } => b'D',
            FieldValue::LongStr(_) => b'S',
            FieldValue::ByteArray(_) => b'x',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::Void => b'V',
        }
    }

    /// Bytes this value takes on the wire, type octet included.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            FieldValue::Bool(_) | FieldValue::I8(_) | FieldValue::U8(_) => 1,
            FieldValue::I16(_) | FieldValue::U16(_) => 2,
            FieldValue::I32(_) | FieldValue::U32(_) | FieldValue::F32(_) => 4,
            FieldValue::I64(_) | FieldValue::F64(_) | FieldValue::Timestamp(_) => 8,
            FieldValue::Decimal { .. } => 5,
            FieldValue::LongStr(b) | FieldValue::ByteArray(b) => 4 + b.len(),
            FieldValue::Array(a) => 4 + a.iter().map(FieldValue::encoded_len).sum::<usize>(),
            FieldValue::Table(t) => t.encoded_len(),
            FieldValue::Void => 0,
        }
    }

    /// Writes the type octet and the value.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(self.type_tag());
        match self {
            FieldValue::Bool(v) => buf.put_u8(u8::from(*v)),
            FieldValue::I8(v) => buf.put_i8(*v),
            FieldValue::U8(v) => buf.put_u8(*v),
            FieldValue::I16(v) => buf.put_i16(*v),
            FieldValue::U16(v) => buf.put_u16(*v),
            FieldValue::I32(v) => buf.put_i32(*v),
            FieldValue::U32(v) => buf.put_u32(*v),
            FieldValue::I64(v) => buf.put_i64(*v),
            FieldValue::F32(v) => buf.put_f32(*v),
            FieldValue::F64(v) => buf.put_f64(*v),
            FieldValue::Decimal { scale, value } => {
                buf.put_u8(*scale);
                buf.put_u32(*value);
            }
            FieldValue::LongStr(b) | FieldValue::ByteArray(b) => put_longstr(buf, b),
            FieldValue::Array(values) => {
                let len_at = begin_length(buf);
                for v in values {
                    v.encode(buf);
                }
                end_length(buf, len_at);
            }
            FieldValue::Timestamp(v) => buf.put_u64(*v),
            FieldValue::Table(t) => t.encode(buf),
            FieldValue::Void => {}
        }
    }
}

/// A field table, in wire order. Lookups are linear: tables are small, and a `Vec`
/// keeps decoding to one allocation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldTable(pub Vec<(ShortStr, FieldValue)>);

impl FieldTable {
    pub fn new() -> Self {
        FieldTable(Vec::new())
    }

    /// The first value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Replaces the first value stored under `key`, or appends the entry.
    pub fn insert(&mut self, key: impl Into<ShortStr>, value: FieldValue) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes every entry under `key` and returns the first one's value.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let index = self.0.iter().position(|(k, _)| k.as_str() == key)?;
        let (_, value) = self.0.remove(index);
        self.0.retain(|(k, _)| k.as_str() != key);
        Some(value)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, (ShortStr, FieldValue)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Decodes a table's content: the bytes after its u32 length prefix.
    pub fn decode(bytes: &Bytes) -> Result<FieldTable, FrameError> {
        Self::decode_at_depth(bytes, 0)
    }

    pub(crate) fn decode_at_depth(bytes: &Bytes, depth: u32) -> Result<FieldTable, FrameError> {
        if depth >= TABLE_DEPTH_MAX {
            return Err(FrameError::Syntax("field table nested too deeply".into()));
        }
        let mut r = Reader::new(bytes);
        let mut entries = Vec::new();
        while r.remaining() > 0 {
            let key = r.shortstr()?;
            let value = decode_value(&mut r, depth)?;
            entries.push((key, value));
        }
        Ok(FieldTable(entries))
    }

    /// Writes the table with its u32 length prefix.
    pub fn encode(&self, buf: &mut BytesMut) {
        let len_at = begin_length(buf);
        for (key, value) in &self.0 {
            put_shortstr(buf, key);
            value.encode(buf);
        }
        end_length(buf, len_at);
    }

    /// Bytes the table takes on the wire, length prefix included.
    pub fn encoded_len(&self) -> usize {
        4 + self
            .0
            .iter()
            .map(|(k, v)| 1 + k.len() + v.encoded_len())
            .sum::<usize>()
    }
}

impl<'a> IntoIterator for &'a FieldTable {
    type Item = &'a (ShortStr, FieldValue);
    type IntoIter = std::slice::Iter<'a, (ShortStr, FieldValue)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromIterator<(ShortStr, FieldValue)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (ShortStr, FieldValue)>>(iter: I) -> Self {
        FieldTable(iter.into_iter().collect())
    }
}

/// Reserves a u32 length prefix; `end_length` fills it in. Encoding a nested table
/// this way needs one pass, where computing lengths first would need one per level.
fn begin_length(buf: &mut BytesMut) -> usize {
    let at = buf.len();
    buf.put_u32(0);
    at
}

fn end_length(buf: &mut BytesMut, len_at: usize) {
    let len = buf.len() - len_at - 4;
    assert!(len <= u32::MAX as usize, "field table longer than 4 GiB");
    buf[len_at..len_at + 4].copy_from_slice(&(len as u32).to_be_bytes());
}

pub(crate) fn decode_value(r: &mut Reader<'_>, depth: u32) -> Result<FieldValue, FrameError> {
    let tag = r.octet()?;
    Ok(match tag {
        b't' => FieldValue::Bool(r.octet()? != 0),
        b'b' => FieldValue::I8(r.i8()?),
        b'B' => FieldValue::U8(r.octet()?),
        b's' => FieldValue::I16(r.i16()?),
        b'u' => FieldValue::U16(r.short()?),
        b'I' => FieldValue::I32(r.i32()?),
        b'i' => FieldValue::U32(r.long()?),
        b'l' | b'L' => FieldValue::I64(r.i64()?),
        b'f' => FieldValue::F32(r.f32()?),
        b'd' => FieldValue::F64(r.f64()?),
        b'D' => FieldValue::Decimal {
            scale: r.octet()?,
            value: r.long()?,
        },
        b'S' => FieldValue::LongStr(r.longstr()?),
        b'x' => FieldValue::ByteArray(r.longstr()?),
        b'A' => FieldValue::Array(decode_array(&r.longstr()?, depth + 1)?),
        b'T' => FieldValue::Timestamp(r.timestamp()?),
        b'F' => FieldValue::Table(r.table_at_depth(depth + 1)?),
        b'V' => FieldValue::Void,
        other => return Err(unknown_tag(other)),
    })
}

fn decode_array(bytes: &Bytes, depth: u32) -> Result<Vec<FieldValue>, FrameError> {
    if depth >= TABLE_DEPTH_MAX {
        return Err(FrameError::Syntax("field array nested too deeply".into()));
    }
    let mut r = Reader::new(bytes);
    let mut values = Vec::new();
    while r.remaining() > 0 {
        values.push(decode_value(&mut r, depth)?);
    }
    Ok(values)
}

fn unknown_tag(tag: u8) -> FrameError {
    FrameError::Syntax(format!("unknown field value type 0x{tag:02x}"))
}

/// Checks a length-prefixed table without building it: every later `decode` of the
/// same bytes then succeeds. Used by `Properties::from_wire` so a publish with headers
/// costs no allocation until someone asks for the headers.
pub(crate) fn validate_table(r: &mut Reader<'_>, depth: u32) -> Result<(), FrameError> {
    let content = r.longstr()?;
    validate_table_content(&content, depth)
}

fn validate_table_content(content: &Bytes, depth: u32) -> Result<(), FrameError> {
    if depth >= TABLE_DEPTH_MAX {
        return Err(FrameError::Syntax("field table nested too deeply".into()));
    }
    let mut r = Reader::new(content);
    while r.remaining() > 0 {
        let key_len = r.octet()? as usize;
        let key = r.take(key_len, "shortstr")?;
        ShortStr::from_bytes(key)?;
        validate_value(&mut r, depth)?;
    }
    Ok(())
}

fn validate_value(r: &mut Reader<'_>, depth: u32) -> Result<(), FrameError> {
    let tag = r.octet()?;
    match tag {
        b't' | b'b' | b'B' => r.skip(1, "octet"),
        b's' | b'u' => r.skip(2, "short"),
        b'I' | b'i' | b'f' => r.skip(4, "long"),
        b'l' | b'L' | b'd' | b'T' => r.skip(8, "longlong"),
        b'D' => r.skip(5, "decimal"),
        b'S' | b'x' => r.longstr().map(drop),
        b'A' => {
            let content = r.longstr()?;
            if depth + 1 >= TABLE_DEPTH_MAX {
                return Err(FrameError::Syntax("field array nested too deeply".into()));
            }
            let mut inner = Reader::new(&content);
            while inner.remaining() > 0 {
                validate_value(&mut inner, depth + 1)?;
            }
            Ok(())
        }
        b'F' => validate_table(r, depth + 1),
        b'V' => Ok(()),
        other => Err(unknown_tag(other)),
    }
}

/// Skips one value (type octet included) of a table already validated, reading only
/// the lengths it needs: nested tables and arrays are stepped over whole.
pub(crate) fn skip_value(r: &mut Reader<'_>) -> Result<(), FrameError> {
    let tag = r.octet()?;
    match tag {
        b't' | b'b' | b'B' => r.skip(1, "octet"),
        b's' | b'u' => r.skip(2, "short"),
        b'I' | b'i' | b'f' => r.skip(4, "long"),
        b'l' | b'L' | b'd' | b'T' => r.skip(8, "longlong"),
        b'D' => r.skip(5, "decimal"),
        b'S' | b'x' | b'A' | b'F' => {
            let len = r.long()? as usize;
            r.skip(len, "field value")
        }
        b'V' => Ok(()),
        other => Err(unknown_tag(other)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A table holding every value type, nested tables and arrays included.
    pub(crate) fn every_type_table() -> FieldTable {
        let mut inner = FieldTable::new();
        inner.insert("deep", FieldValue::LongStr(Bytes::from_static(b"value")));
        inner.insert("n", FieldValue::I32(-7));
        let mut t = FieldTable::new();
        t.insert("bool", FieldValue::Bool(true));
        t.insert("i8", FieldValue::I8(-5));
        t.insert("u8", FieldValue::U8(250));
        t.insert("i16", FieldValue::I16(-30000));
        t.insert("u16", FieldValue::U16(60000));
        t.insert("i32", FieldValue::I32(-2_000_000_000));
        t.insert("u32", FieldValue::U32(4_000_000_000));
        t.insert("i64", FieldValue::I64(-9_000_000_000_000));
        t.insert("f32", FieldValue::F32(1.5));
        t.insert("f64", FieldValue::F64(-2.25));
        t.insert(
            "decimal",
            FieldValue::Decimal {
                scale: 2,
                value: 12345,
            },
        );
        t.insert(
            "longstr",
            FieldValue::LongStr(Bytes::from_static("héllo".as_bytes())),
        );
        t.insert(
            "bytes",
            FieldValue::ByteArray(Bytes::from_static(&[0, 1, 2, 0xff])),
        );
        t.insert(
            "array",
            FieldValue::Array(vec![
                FieldValue::I32(1),
                FieldValue::LongStr(Bytes::from_static(b"two")),
                FieldValue::Array(vec![FieldValue::Bool(false), FieldValue::Void]),
                FieldValue::Table(inner.clone()),
            ]),
        );
        t.insert("timestamp", FieldValue::Timestamp(1_700_000_000));
        t.insert("table", FieldValue::Table(inner));
        t.insert("void", FieldValue::Void);
        t
    }

    fn encoded(t: &FieldTable) -> Bytes {
        let mut buf = BytesMut::new();
        t.encode(&mut buf);
        assert_eq!(buf.len(), t.encoded_len());
        buf.freeze()
    }

    #[test]
    fn every_type_round_trips() {
        let t = every_type_table();
        let wire = encoded(&t);
        let content = wire.slice(4..);
        assert_eq!(
            u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize,
            content.len()
        );
        assert_eq!(FieldTable::decode(&content).unwrap(), t);
        let mut r = Reader::new(&wire);
        validate_table(&mut r, 0).unwrap();
        r.finish("table").unwrap();
    }

    #[test]
    fn type_tags_are_rabbitmqs() {
        let tags: Vec<u8> = every_type_table()
            .iter()
            .map(|(_, v)| v.type_tag())
            .collect();
        assert_eq!(tags, b"tbBsuIilfdDSxATFV");
    }

    #[test]
    fn capital_l_decodes_as_i64() {
        let content = Bytes::from_static(&[
            1, b'k', b'L', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
        ]);
        let t = FieldTable::decode(&content).unwrap();
        assert_eq!(t.get("k"), Some(&FieldValue::I64(-2)));
    }

    #[test]
    fn unknown_tag_is_a_syntax_error() {
        let content = Bytes::from_static(&[1, b'k', b'U', 0, 1]);
        assert!(matches!(
            FieldTable::decode(&content),
            Err(FrameError::Syntax(_))
        ));
    }

    #[test]
    fn truncation_at_every_offset_is_an_error() {
        let wire = encoded(&every_type_table());
        let content = wire.slice(4..);
        for cut in 0..content.len() {
            let part = content.slice(..cut);
            // A cut can land exactly on an entry boundary, which is a valid shorter table.
            if let Ok(t) = FieldTable::decode(&part) {
                assert!(t.len() < every_type_table().len(), "cut {cut}");
            }
            // With the length prefix kept, every cut is a truncation.
            let prefixed = wire.slice(..4 + cut);
            assert!(Reader::new(&prefixed).table().is_err(), "cut {cut}");
            assert!(
                validate_table(&mut Reader::new(&prefixed), 0).is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflowing_the_stack() {
        // 100k nested arrays: "A" + length, each wrapping the next.
        let depth = 100_000usize;
        let mut buf = Vec::with_capacity(depth * 5 + 8);
        buf.extend_from_slice(&[1, b'k']);
        for i in 0..depth {
            let remaining = (depth - i - 1) * 5;
            buf.push(b'A');
            buf.extend_from_slice(&(remaining as u32).to_be_bytes());
        }
        let content = Bytes::from(buf);
        assert!(FieldTable::decode(&content).is_err());
        let mut prefixed = BytesMut::new();
        put_longstr(&mut prefixed, &content);
        let prefixed = prefixed.freeze();
        assert!(validate_table(&mut Reader::new(&prefixed), 0).is_err());

        // Within the limit, nesting works.
        let mut t = FieldTable::new();
        for _ in 0..TABLE_DEPTH_MAX - 2 {
            let mut outer = FieldTable::new();
            outer.insert("t", FieldValue::Table(t));
            t = outer;
        }
        let wire = encoded(&t);
        assert_eq!(FieldTable::decode(&wire.slice(4..)).unwrap(), t);
    }

    #[test]
    fn insert_replaces_get_and_remove_use_the_first_match() {
        let mut t = FieldTable(vec![
            ("a".into(), FieldValue::I32(1)),
            ("b".into(), FieldValue::I32(2)),
            ("a".into(), FieldValue::I32(3)),
        ]);
        assert_eq!(t.get("a"), Some(&FieldValue::I32(1)));
        t.insert("b", FieldValue::I32(20));
        assert_eq!(t.get("b"), Some(&FieldValue::I32(20)));
        assert_eq!(t.len(), 3);
        t.insert("c", FieldValue::Void);
        assert_eq!(t.len(), 4);
        assert_eq!(t.remove("a"), Some(FieldValue::I32(1)));
        assert_eq!(t.get("a"), None);
        assert_eq!(t.remove("a"), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn value_helpers() {
        assert_eq!(FieldValue::U8(3).as_i64(), Some(3));
        assert_eq!(FieldValue::U32(u32::MAX).as_i64(), Some(u32::MAX as i64));
        assert_eq!(FieldValue::Timestamp(3).as_i64(), None);
        assert_eq!(
            FieldValue::LongStr(Bytes::from_static(b"x")).as_str(),
            Some("x")
        );
        assert_eq!(
            FieldValue::LongStr(Bytes::from_static(b"\xff")).as_str(),
            None
        );
        assert_eq!(FieldValue::Bool(true).as_bool(), Some(true));
        assert_eq!(FieldValue::I8(1).as_bool(), None);
    }
}

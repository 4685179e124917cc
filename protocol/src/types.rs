//! Wire primitives shared by the rest of the codec: the `ShortStr` string type, a
//! bounds-checked reader over a frame payload, and the argument sinks that method
//! encoding writes through.
//!
//! AMQP 0-9-1 domains, as they appear on the wire (all integers big-endian):
//!
//! ```text
//! octet     u8
//! short     u16
//! long      u32
//! longlong  u64 (also `timestamp`)
//! shortstr  +-----+------------------+
//!           | len | len bytes (UTF-8)|   len: u8, so at most 255 bytes
//!           +-----+------------------+
//! longstr   +---------+--------------+
//!           | len u32 | len bytes    |
//!           +---------+--------------+
//! table     +---------+--------------+
//!           | len u32 | entries      |   see table.rs
//!           +---------+--------------+
//! bit       consecutive bit arguments share one octet, first bit in the least
//!           significant position; a ninth bit starts a new octet (RabbitMQ's codegen)
//! ```
//!
//! The reader never panics and never indexes out of bounds: every read that runs past
//! the payload returns `FrameError::Syntax`. Everything a client sends passes through it.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::FrameError;
use super::table::FieldTable;

/// The longest a `shortstr` can be, in bytes: its length prefix is one octet.
pub const SHORTSTR_LEN_MAX: usize = 255;

/// An AMQP `shortstr`: at most 255 bytes of valid UTF-8, held as a zero-copy `Bytes`.
///
/// Every constructor checks both properties, so `as_str` can skip the UTF-8 check.
/// `Hash`, `Eq` and `Ord` agree with those of `str`, so a `HashMap<ShortStr, _>` can be
/// queried with a plain `&str`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShortStr(Bytes);

impl ShortStr {
    /// Wraps a string constant. A constant longer than 255 bytes is a programmer error.
    pub const fn from_static(s: &'static str) -> Self {
        assert!(
            s.len() <= SHORTSTR_LEN_MAX,
            "shortstr constant longer than 255 bytes"
        );
        ShortStr(Bytes::from_static(s.as_bytes()))
    }

    /// Checks that `b` is a valid shortstr (UTF-8, at most 255 bytes) without copying it.
    pub fn from_bytes(b: Bytes) -> Result<ShortStr, FrameError> {
        ShortStr::check(&b)?;
        Ok(ShortStr(b))
    }

    /// Whether `b` would make a valid shortstr: UTF-8, at most 255 bytes.
    pub fn check(b: &[u8]) -> Result<(), FrameError> {
        if b.len() > SHORTSTR_LEN_MAX {
            return Err(FrameError::Syntax("shortstr longer than 255 bytes".into()));
        }
        // Names are nearly always ASCII: a word-at-a-time check inline is
        // cheaper than the general UTF-8 validator's call for short strings.
        if !b.is_ascii() && std::str::from_utf8(b).is_err() {
            // RabbitMQ: rabbit_binary_parser:assert_utf8, "Malformed UTF-8 in shortstr".
            return Err(FrameError::Syntax("malformed UTF-8 in shortstr".into()));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor (`from_static`, `from_bytes`, the `From` impls) only
        // ever stores bytes that are valid UTF-8, and the bytes are immutable afterwards.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

/// The longest prefix of `s` that fits a shortstr and ends on a char boundary.
pub(crate) fn truncate_to_shortstr(s: &str) -> &str {
    truncate_at_char_boundary(s, SHORTSTR_LEN_MAX)
}

pub(crate) fn truncate_at_char_boundary(s: &str, len_max: usize) -> &str {
    if s.len() <= len_max {
        return s;
    }
    let mut end = len_max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl From<&str> for ShortStr {
    /// Copies `s`, truncated at a char boundary to at most 255 bytes.
    fn from(s: &str) -> Self {
        ShortStr(Bytes::copy_from_slice(truncate_to_shortstr(s).as_bytes()))
    }
}

impl From<String> for ShortStr {
    /// Takes `s` without copying, truncated at a char boundary to at most 255 bytes.
    fn from(mut s: String) -> Self {
        let len = truncate_to_shortstr(&s).len();
        s.truncate(len);
        ShortStr(Bytes::from(s.into_bytes()))
    }
}

impl From<&String> for ShortStr {
    fn from(s: &String) -> Self {
        ShortStr::from(s.as_str())
    }
}

impl From<ShortStr> for String {
    fn from(s: ShortStr) -> Self {
        s.as_str().to_owned()
    }
}

impl Deref for ShortStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ShortStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for ShortStr {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<str> for ShortStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Hash for ShortStr {
    // Hashes as `str` does, which `Borrow<str>` requires.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialEq<str> for ShortStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ShortStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<ShortStr> for str {
    fn eq(&self, other: &ShortStr) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<ShortStr> for &str {
    fn eq(&self, other: &ShortStr) -> bool {
        *self == other.as_str()
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

/// Field tables nest (tables in tables, arrays in tables); this bounds the recursion so
/// a hostile client cannot overflow the stack. RabbitMQ has no limit; real clients
/// nest two or three levels deep.
pub(crate) const TABLE_DEPTH_MAX: u32 = 64;

fn truncated(what: &'static str) -> FrameError {
    FrameError::Syntax(format!("truncated {what}"))
}

/// A cursor over a frame payload (or part of one). Reads are zero-copy: strings and
/// tables are `Bytes::slice`s of the input.
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    /// The octet that holds the current run of bit arguments.
    bit_octet: u8,
    /// How many bits of `bit_octet` have been read; 0 means no run is open.
    bit_count: u8,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a Bytes) -> Self {
        Reader {
            buf,
            pos: 0,
            bit_octet: 0,
            bit_count: 0,
        }
    }

    /// A reader of `buf` from `pos` to its end.
    pub(crate) fn new_at(buf: &'a Bytes, pos: usize) -> Self {
        Reader {
            buf,
            pos: pos.min(buf.len()),
            bit_octet: 0,
            bit_count: 0,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Fails if any bytes are left: RabbitMQ's generated decoder matches the whole
    /// argument binary, so trailing bytes are a decode error ("cannot decode").
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), FrameError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(FrameError::Syntax(format!(
                "{} trailing bytes after {what}",
                self.remaining()
            )))
        }
    }

    /// Takes the next `len` bytes as a zero-copy slice.
    pub(crate) fn take(&mut self, len: usize, what: &'static str) -> Result<Bytes, FrameError> {
        self.bit_count = 0;
        if len > self.remaining() {
            return Err(truncated(what));
        }
        let start = self.pos;
        self.pos += len;
        Ok(self.buf.slice(start..self.pos))
    }

    /// Borrows the next `len` bytes, for a comparison that needs no `Bytes` handle.
    pub(crate) fn borrow(
        &mut self,
        len: usize,
        what: &'static str,
    ) -> Result<&'a [u8], FrameError> {
        self.bit_count = 0;
        if len > self.remaining() {
            return Err(truncated(what));
        }
        let start = self.pos;
        self.pos += len;
        let buf: &'a Bytes = self.buf;
        Ok(&buf[start..self.pos])
    }

    /// Skips the next `len` bytes.
    pub(crate) fn skip(&mut self, len: usize, what: &'static str) -> Result<(), FrameError> {
        self.bit_count = 0;
        if len > self.remaining() {
            return Err(truncated(what));
        }
        self.pos += len;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FrameError> {
        self.bit_count = 0;
        let end = self.pos.checked_add(N).ok_or_else(|| truncated(what))?;
        match self.buf.get(self.pos..end) {
            Some(slice) => {
                let mut out = [0u8; N];
                out.copy_from_slice(slice);
                self.pos = end;
                Ok(out)
            }
            None => Err(truncated(what)),
        }
    }

    pub(crate) fn octet(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>("octet")?[0])
    }

    pub(crate) fn short(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.array("short")?))
    }

    pub(crate) fn long(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.array("long")?))
    }

    pub(crate) fn longlong(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.array("longlong")?))
    }

    pub(crate) fn timestamp(&mut self) -> Result<u64, FrameError> {
        self.longlong()
    }

    pub(crate) fn i8(&mut self) -> Result<i8, FrameError> {
        Ok(i8::from_be_bytes(self.array("octet")?))
    }

    pub(crate) fn i16(&mut self) -> Result<i16, FrameError> {
        Ok(i16::from_be_bytes(self.array("short")?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, FrameError> {
        Ok(i32::from_be_bytes(self.array("long")?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, FrameError> {
        Ok(i64::from_be_bytes(self.array("longlong")?))
    }

    pub(crate) fn f32(&mut self) -> Result<f32, FrameError> {
        Ok(f32::from_be_bytes(self.array("float")?))
    }

    pub(crate) fn f64(&mut self) -> Result<f64, FrameError> {
        Ok(f64::from_be_bytes(self.array("double")?))
    }

    /// Reads one bit argument; consecutive calls share an octet, eight to an octet.
    pub(crate) fn bit(&mut self) -> Result<bool, FrameError> {
        if self.bit_count == 0 || self.bit_count == 8 {
            self.bit_octet = self.octet()?;
            self.bit_count = 0;
        }
        let value = self.bit_octet & (1 << self.bit_count) != 0;
        self.bit_count += 1;
        Ok(value)
    }

    pub(crate) fn shortstr(&mut self) -> Result<ShortStr, FrameError> {
        let len = self.octet()? as usize;
        ShortStr::from_bytes(self.take(len, "shortstr")?)
    }

    pub(crate) fn skip_shortstr(&mut self) -> Result<(), FrameError> {
        let len = self.octet()? as usize;
        self.skip(len, "shortstr")
    }

    pub(crate) fn longstr(&mut self) -> Result<Bytes, FrameError> {
        let len = self.long()? as usize;
        self.take(len, "longstr")
    }

    /// Reads a length-prefixed field table.
    pub(crate) fn table(&mut self) -> Result<FieldTable, FrameError> {
        self.table_at_depth(0)
    }

    pub(crate) fn table_at_depth(&mut self, depth: u32) -> Result<FieldTable, FrameError> {
        let len = self.long()? as usize;
        let content = self.take(len, "field table")?;
        FieldTable::decode_at_depth(&content, depth)
    }
}

/// Where method arguments are encoded to: a buffer (`ArgWriter`) or a byte counter
/// (`ArgLen`), so `write_method` can reserve exactly once and then put. The methods are
/// named after the AMQP domains; each takes a reference so reserved fields can pass a
/// default of the right type.
pub trait ArgSink {
    fn octet(&mut self, value: &u8);
    fn short(&mut self, value: &u16);
    fn long(&mut self, value: &u32);
    fn longlong(&mut self, value: &u64);
    fn bit(&mut self, value: &bool);
    fn shortstr(&mut self, value: &ShortStr);
    fn longstr(&mut self, value: &Bytes);
    fn table(&mut self, value: &FieldTable);
}

/// Writes method arguments into a buffer, packing consecutive bits into one octet.
pub(crate) struct ArgWriter<'a> {
    buf: &'a mut BytesMut,
    /// Index in `buf` of the octet holding the open run of bits.
    bit_index: usize,
    /// How many bits the open run holds; 0 means no run is open.
    bit_count: u8,
}

impl<'a> ArgWriter<'a> {
    pub(crate) fn new(buf: &'a mut BytesMut) -> Self {
        ArgWriter {
            buf,
            bit_index: 0,
            bit_count: 0,
        }
    }
}

impl ArgSink for ArgWriter<'_> {
    fn octet(&mut self, value: &u8) {
        self.bit_count = 0;
        self.buf.put_u8(*value);
    }
    fn short(&mut self, value: &u16) {
        self.bit_count = 0;
        self.buf.put_u16(*value);
    }
    fn long(&mut self, value: &u32) {
        self.bit_count = 0;
        self.buf.put_u32(*value);
    }
    fn longlong(&mut self, value: &u64) {
        self.bit_count = 0;
        self.buf.put_u64(*value);
    }
    fn bit(&mut self, value: &bool) {
        if self.bit_count == 0 || self.bit_count == 8 {
            self.bit_index = self.buf.len();
            self.buf.put_u8(0);
            self.bit_count = 0;
        }
        if *value {
            self.buf[self.bit_index] |= 1 << self.bit_count;
        }
        self.bit_count += 1;
    }
    fn shortstr(&mut self, value: &ShortStr) {
        self.bit_count = 0;
        put_shortstr(self.buf, value);
    }
    fn longstr(&mut self, value: &Bytes) {
        self.bit_count = 0;
        put_longstr(self.buf, value);
    }
    fn table(&mut self, value: &FieldTable) {
        self.bit_count = 0;
        value.encode(self.buf);
    }
}

/// Counts the bytes `ArgWriter` would write, with the same bit packing.
#[derive(Default)]
pub(crate) struct ArgLen {
    pub(crate) len: usize,
    bit_count: u8,
}

impl ArgSink for ArgLen {
    fn octet(&mut self, _: &u8) {
        self.bit_count = 0;
        self.len += 1;
    }
    fn short(&mut self, _: &u16) {
        self.bit_count = 0;
        self.len += 2;
    }
    fn long(&mut self, _: &u32) {
        self.bit_count = 0;
        self.len += 4;
    }
    fn longlong(&mut self, _: &u64) {
        self.bit_count = 0;
        self.len += 8;
    }
    fn bit(&mut self, _: &bool) {
        if self.bit_count == 0 || self.bit_count == 8 {
            self.len += 1;
            self.bit_count = 0;
        }
        self.bit_count += 1;
    }
    fn shortstr(&mut self, value: &ShortStr) {
        self.bit_count = 0;
        self.len += 1 + value.len();
    }
    fn longstr(&mut self, value: &Bytes) {
        self.bit_count = 0;
        self.len += 4 + value.len();
    }
    fn table(&mut self, value: &FieldTable) {
        self.bit_count = 0;
        self.len += value.encoded_len();
    }
}

pub(crate) fn put_shortstr(buf: &mut BytesMut, value: &ShortStr) {
    // A ShortStr is at most 255 bytes by construction, so the cast cannot truncate.
    debug_assert!(value.len() <= SHORTSTR_LEN_MAX);
    buf.put_u8(value.len() as u8);
    buf.put_slice(value.as_bytes());
}

pub(crate) fn put_longstr(buf: &mut BytesMut, value: &[u8]) {
    assert!(
        value.len() <= u32::MAX as usize,
        "longstr longer than 4 GiB"
    );
    buf.put_u32(value.len() as u32);
    buf.put_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn shortstr_from_str_truncates_at_char_boundary() {
        let long = "é".repeat(200); // 400 bytes, 2 bytes per char
        let s = ShortStr::from(long.as_str());
        assert_eq!(s.len(), 254);
        assert!(s.as_str().chars().all(|c| c == 'é'));
        let s = ShortStr::from(long.clone());
        assert_eq!(s.len(), 254);
        let s = ShortStr::from("a".repeat(300));
        assert_eq!(s.len(), 255);
    }

    #[test]
    fn shortstr_from_bytes_rejects_bad_utf8_and_long_input() {
        assert!(ShortStr::from_bytes(Bytes::from_static(b"\xff\xfe")).is_err());
        assert!(ShortStr::from_bytes(Bytes::from(vec![b'a'; 256])).is_err());
        assert_eq!(
            ShortStr::from_bytes(Bytes::from_static(b"ok")).unwrap(),
            "ok"
        );
    }

    #[test]
    fn shortstr_works_as_hashmap_key_queried_by_str() {
        let mut map = HashMap::new();
        map.insert(ShortStr::from("orders"), 1);
        map.insert(ShortStr::from_static("amq.direct"), 2);
        assert_eq!(map.get("orders"), Some(&1));
        assert_eq!(map.get("amq.direct"), Some(&2));
        assert_eq!(map.get("nope"), None);
    }

    #[test]
    fn shortstr_debug_and_display_print_the_string() {
        let s = ShortStr::from("q1");
        assert_eq!(format!("{s}"), "q1");
        assert_eq!(format!("{s:?}"), "\"q1\"");
    }

    #[test]
    fn reader_returns_errors_on_truncation() {
        let b = Bytes::from_static(&[0, 1, 2]);
        let mut r = Reader::new(&b);
        assert_eq!(r.short().unwrap(), 1);
        assert!(r.long().is_err());
        assert!(Reader::new(&b).longlong().is_err());
        let b = Bytes::from_static(&[5, b'a']);
        assert!(Reader::new(&b).shortstr().is_err());
        let b = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0]);
        assert!(Reader::new(&b).longstr().is_err());
        assert!(Reader::new(&b).table().is_err());
    }

    #[test]
    fn bits_pack_lsb_first_and_a_ninth_bit_starts_a_new_octet() {
        let mut buf = BytesMut::new();
        let mut w = ArgWriter::new(&mut buf);
        let bits = [true, false, true, true, false, false, false, false, true];
        for b in &bits {
            w.bit(b);
        }
        w.octet(&7);
        w.bit(&true);
        assert_eq!(&buf[..], &[0b0000_1101, 0b1, 7, 1]);
        let mut len = ArgLen::default();
        for b in &bits {
            len.bit(b);
        }
        len.octet(&7);
        len.bit(&true);
        assert_eq!(len.len, 4);

        let frozen = buf.freeze();
        let mut r = Reader::new(&frozen);
        for b in &bits {
            assert_eq!(r.bit().unwrap(), *b);
        }
        assert_eq!(r.octet().unwrap(), 7);
        assert!(r.bit().unwrap());
        r.finish("test").unwrap();
    }
}

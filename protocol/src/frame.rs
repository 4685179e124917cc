//! Frames: bytes in, typed frames out, and typed frames back to bytes. No I/O.
//!
//! ```text
//! +------+------------+----------+--------------------+------+
//! | type | channel    | size     | payload            | end  |
//! | u8   | u16        | u32      | size bytes         | 0xCE |
//! +------+------------+----------+--------------------+------+
//!  1 method   payload = class-id u16, method-id u16, arguments (method.rs)
//!  2 header   payload = class-id u16, weight u16 (0), body-size u64,
//!                       property flags u16, property list (properties.rs)
//!  3 body     payload = a slice of the message body
//!  8 heartbeat payload empty, channel 0
//! ```
//!
//! `parse_frame` is the read side: it returns `Ok(None)` while a frame is incomplete,
//! which is the normal case on a socket and costs nothing. A complete frame is split
//! off the read buffer, and every `Bytes` in it (body payloads, strings, tables, the
//! property list) is a zero-copy slice of that buffer.
//!
//! The 8-byte protocol header (`PROTOCOL_HEADER`) that opens a connection is not a
//! frame; the connection reads it before calling `parse_frame`.
//!
//! Errors follow RabbitMQ (`rabbit_reader`, `rabbit_command_assembler`): every framing
//! error closes the connection with 501 FRAME_ERROR; see `FrameError::reply_code`.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::method::{Method, MethodArgs};
use super::properties::Properties;
use super::reply::{AmqpError, ReplyCode};
use super::types::Reader;

/// The protocol header a 0-9-1 client sends first.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub const FRAME_END: u8 = 0xCE;
/// The smallest frame_max a peer may negotiate, and the limit before tuning
/// (RabbitMQ reads pre-tune frames with frame_max = 4096).
pub const FRAME_MIN_SIZE: u32 = 4096;
/// Type, channel and size.
pub const FRAME_HEADER_SIZE: usize = 7;
/// Header plus frame-end octet: what a frame costs beyond its payload.
pub const FRAME_OVERHEAD: u32 = 8;

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;

/// Class-id, weight and body-size: the part of a header payload before the properties.
const CONTENT_HEADER_FIXED_SIZE: usize = 12;

/// A content header: it follows a method that carries content and announces the body.
#[derive(Clone, Debug, PartialEq)]
pub struct ContentHeader {
    pub class_id: u16,
    pub body_size: u64,
    pub properties: Properties,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Method { channel: u16, method: Method },
    Header { channel: u16, header: ContentHeader },
    Body { channel: u16, payload: Bytes },
    Heartbeat { channel: u16 },
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match *self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. }
            | Frame::Heartbeat { channel } => channel,
        }
    }
}

/// Why bytes from a peer could not be read as a frame. Each one is a connection error.
#[derive(Clone, Debug, PartialEq)]
pub enum FrameError {
    /// The frame's payload plus the 8 bytes of framing exceeds the negotiated frame_max.
    TooLarge {
        size: u32,
        max: u32,
    },
    /// The octet after the payload is not 0xCE.
    BadFrameEnd(u8),
    UnknownFrameType(u8),
    /// The payload is malformed: truncated, overlong, invalid UTF-8 in a shortstr, an
    /// unknown field type, a heartbeat with a payload or on a channel other than 0, ...
    Syntax(String),
    /// A method frame names a class/method pair that 0-9-1 does not define.
    UnknownMethod {
        class_id: u16,
        method_id: u16,
    },
}

impl FrameError {
    /// The reply code the connection closes with.
    ///
    /// RabbitMQ answers every framing error with 501 FRAME_ERROR: frame too large,
    /// bad frame end and unknown frame type (`rabbit_reader:frame_error`), and also
    /// arguments it cannot decode (`rabbit_misc:frame_error`, "cannot decode"), malformed
    /// UTF-8 in a shortstr, and a heartbeat with a payload. So `Syntax` is 501 too, not
    /// the spec's 502 SYNTAX_ERROR, which RabbitMQ does not send for these. For an
    /// unknown method RabbitMQ's `lookup_method_name` exits and the socket is dropped
    /// without a close; warren sends 540 NOT_IMPLEMENTED instead, the spec's code for
    /// functionality the server does not implement.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            FrameError::TooLarge { .. }
            | FrameError::BadFrameEnd(_)
            | FrameError::UnknownFrameType(_)
            | FrameError::Syntax(_) => ReplyCode::FrameError,
            FrameError::UnknownMethod { .. } => ReplyCode::NotImplemented,
        }
    }

    pub fn to_amqp_error(&self) -> AmqpError {
        let error = AmqpError::new(self.reply_code(), self.to_string());
        match *self {
            FrameError::UnknownMethod {
                class_id,
                method_id,
            } => error.with_method(class_id, method_id),
            _ => error,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { size, max } => {
                // RabbitMQ's wording, which names the spec's payload limit.
                write!(
                    f,
                    "{{frame_too_large,{size},{}}}: frame payload exceeds frame_max {max}",
                    max.saturating_sub(FRAME_OVERHEAD)
                )
            }
            FrameError::BadFrameEnd(octet) => write!(f, "invalid frame end marker 0x{octet:02x}"),
            FrameError::UnknownFrameType(t) => write!(f, "unknown frame type {t}"),
            FrameError::Syntax(what) => write!(f, "malformed frame: {what}"),
            FrameError::UnknownMethod {
                class_id,
                method_id,
            } => {
                write!(f, "unknown method {class_id}/{method_id}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

impl From<FrameError> for AmqpError {
    fn from(e: FrameError) -> Self {
        e.to_amqp_error()
    }
}

/// Parses one frame from the front of `buf`. `Ok(None)` = need more bytes (`buf`
/// untouched).
///
/// On success the frame's bytes are removed from `buf` (split_to + freeze: the body
/// payload and all `Bytes` fields are zero-copy slices of the read buffer). A declared
/// size with size + 8 > frame_max is an error as soon as the 7-byte header is visible,
/// without waiting for the payload, and so is an unknown frame type. frame_max == 0
/// means no limit; before tuning, pass `FRAME_MIN_SIZE` as RabbitMQ does. After an
/// error the connection must close, and `buf` holds unspecified bytes.
///
/// Like RabbitMQ (`FRAME_SIZE_FUDGE`: "off-by 1 or 8 ... are typical"), a
/// payload of up to frame_max bytes is accepted, 8 bytes over the spec's
/// limit, because clients that forget the frame overhead work with RabbitMQ.
pub fn parse_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_SIZE) else {
        return Ok(None);
    };
    let frame_type = header[0];
    let channel = u16::from_be_bytes([header[1], header[2]]);
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
    if frame_max != 0 && size > frame_max {
        return Err(FrameError::TooLarge {
            size,
            max: frame_max,
        });
    }
    if !matches!(
        frame_type,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(FrameError::UnknownFrameType(frame_type));
    }
    // Only a 32-bit target with frame_max == 0 can overflow here.
    let Some(frame_len) = (size as usize).checked_add(FRAME_OVERHEAD as usize) else {
        return Err(FrameError::TooLarge {
            size,
            max: frame_max,
        });
    };
    let Some(&end) = buf.get(frame_len - 1) else {
        return Ok(None);
    };
    if end != FRAME_END {
        return Err(FrameError::BadFrameEnd(end));
    }
    let frame = buf.split_to(frame_len).freeze();
    let payload = frame.slice(FRAME_HEADER_SIZE..frame_len - 1);
    decode_payload(frame_type, channel, payload).map(Some)
}

/// Where the parts of a publish lie in the read buffer: a basic.publish
/// method frame, its content header and one body frame, back to back on one
/// channel. Offsets are from the start of the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishShape {
    pub channel: u16,
    pub exchange: std::ops::Range<usize>,
    pub routing_key: std::ops::Range<usize>,
    pub mandatory: bool,
    pub flags: u16,
    pub properties: std::ops::Range<usize>,
    pub body: std::ops::Range<usize>,
    /// Bytes the three frames take.
    pub len: usize,
}

/// Recognises the common shape of a publish at the front of `buf` — method,
/// header and a single body frame, complete, well framed, on one channel,
/// immediate not set — without consuming or allocating. Anything else
/// (incomplete, unusual or malformed framing) is None, and the general
/// parser reads the same bytes with its full checks and error reporting.
/// The names' UTF-8 and the property list are not checked here:
/// `ShortStr::from_bytes` and `Properties::from_wire` check them once.
pub fn peek_publish(buf: &[u8], frame_max: u32) -> Option<PublishShape> {
    let frame = |at: usize, kind: u8| frame_at(buf, at, kind, frame_max);
    let (channel, method) = frame(0, FRAME_METHOD)?;
    let m = &buf[method.clone()];
    // class 60, method 40, reserved short, then the exchange's length.
    if channel == 0 || m.len() < 7 || m[..4] != [0, 60, 0, 40] {
        return None;
    }
    let exchange_at = method.start + 7;
    let exchange = exchange_at..exchange_at + m[6] as usize;
    let key_len_at = exchange.end;
    let routing_key = key_len_at + 1..key_len_at + 1 + *buf.get(key_len_at)? as usize;
    // The bits octet must be the last argument byte.
    if routing_key.end + 1 != method.end {
        return None;
    }
    let bits = buf[routing_key.end];
    if bits & !1 != 0 {
        // immediate (refused with its own error) or stray bits.
        return None;
    }

    let (header_channel, header) = frame(method.end + 1, FRAME_HEADER)?;
    let h = &buf[header.clone()];
    if header_channel != channel || h.len() < 14 || h[..4] != [0, 60, 0, 0] {
        return None;
    }
    let body_size = u64::from_be_bytes(h[4..12].try_into().ok()?);
    let flags = u16::from_be_bytes([h[12], h[13]]);
    let (body_channel, body) = frame(header.end + 1, FRAME_BODY)?;
    if body_channel != channel || body.len() as u64 != body_size || body_size == 0 {
        return None;
    }
    Some(PublishShape {
        channel,
        exchange,
        routing_key,
        mandatory: bits & 1 != 0,
        flags,
        properties: header.start + 14..header.end,
        body: body.clone(),
        len: body.end + 1,
    })
}

/// The frame of type `kind` that starts at `at` in `buf`, complete and well
/// ended: its channel and where its payload lies. None for anything else.
fn frame_at(
    buf: &[u8],
    at: usize,
    kind: u8,
    frame_max: u32,
) -> Option<(u16, std::ops::Range<usize>)> {
    let header = buf.get(at..at + FRAME_HEADER_SIZE)?;
    if header[0] != kind {
        return None;
    }
    let channel = u16::from_be_bytes([header[1], header[2]]);
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
    if frame_max != 0 && size > frame_max {
        return None;
    }
    let start = at + FRAME_HEADER_SIZE;
    let end = start.checked_add(size as usize)?;
    (*buf.get(end)? == FRAME_END).then_some((channel, start..end))
}

/// A basic.deliver with its content at the front of a client's read buffer,
/// as `peek_deliver` finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliverShape {
    pub channel: u16,
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub body: std::ops::Range<usize>,
    /// Bytes the three frames take.
    pub len: usize,
}

/// The client's side of `peek_publish`: a basic.deliver method frame, its
/// content header and one body frame, complete and on one channel, read
/// in place (a consumer that only needs the tag and the body then costs no
/// allocation or reference count per message). Anything else is None, for
/// the general parser. Names and properties are skipped, not checked.
pub fn peek_deliver(buf: &[u8], frame_max: u32) -> Option<DeliverShape> {
    let (channel, method) = frame_at(buf, 0, FRAME_METHOD, frame_max)?;
    let m = &buf[method.clone()];
    // class 60, method 60, then the consumer tag's length.
    if channel == 0 || m.len() < 5 || m[..4] != [0, 60, 0, 60] {
        return None;
    }
    let tag_end = 5 + m[4] as usize;
    let delivery_tag = u64::from_be_bytes(m.get(tag_end..tag_end + 8)?.try_into().ok()?);
    let bits = *m.get(tag_end + 8)?;
    let exchange_len_at = tag_end + 9;
    let key_len_at = exchange_len_at + 1 + *m.get(exchange_len_at)? as usize;
    if key_len_at + 1 + *m.get(key_len_at)? as usize != m.len() || bits & !1 != 0 {
        return None;
    }
    let (header_channel, header) = frame_at(buf, method.end + 1, FRAME_HEADER, frame_max)?;
    let h = &buf[header.clone()];
    if header_channel != channel || h.len() < 14 || h[..4] != [0, 60, 0, 0] {
        return None;
    }
    let body_size = u64::from_be_bytes(h[4..12].try_into().ok()?);
    let (body_channel, body) = frame_at(buf, header.end + 1, FRAME_BODY, frame_max)?;
    if body_channel != channel || body.len() as u64 != body_size || body_size == 0 {
        return None;
    }
    Some(DeliverShape {
        channel,
        delivery_tag,
        redelivered: bits & 1 != 0,
        len: body.end + 1,
        body,
    })
}

fn decode_payload(frame_type: u8, channel: u16, payload: Bytes) -> Result<Frame, FrameError> {
    match frame_type {
        FRAME_METHOD => {
            let mut r = Reader::new(&payload);
            let class_id = r.short()?;
            let method_id = r.short()?;
            let args = payload.slice(r.position()..);
            let method = Method::decode(class_id, method_id, &args)?;
            Ok(Frame::Method { channel, method })
        }
        FRAME_HEADER => {
            let mut r = Reader::new(&payload);
            let class_id = r.short()?;
            let weight = r.short()?;
            let body_size = r.longlong()?;
            let flags = r.short()?;
            if weight != 0 {
                return Err(FrameError::Syntax(format!(
                    "content header weight {weight}, expected 0"
                )));
            }
            let raw = payload.slice(r.position()..);
            let properties = Properties::from_wire(flags, raw)?;
            Ok(Frame::Header {
                channel,
                header: ContentHeader {
                    class_id,
                    body_size,
                    properties,
                },
            })
        }
        FRAME_BODY => Ok(Frame::Body { channel, payload }),
        FRAME_HEARTBEAT => {
            // RabbitMQ: a heartbeat with a payload is an unknown frame (501); on a
            // channel other than 0 it is an unexpected frame (505), which the
            // connection decides, since it is well-formed.
            if !payload.is_empty() {
                return Err(FrameError::Syntax("heartbeat frame with a payload".into()));
            }
            Ok(Frame::Heartbeat { channel })
        }
        other => Err(FrameError::UnknownFrameType(other)),
    }
}

/// Writes one method frame.
pub fn write_method(buf: &mut BytesMut, channel: u16, method: &Method) {
    let payload_len = 4 + method.args_len();
    let start = start_method_frame(
        buf,
        channel,
        payload_len,
        method.class_id(),
        method.method_id(),
    );
    method.encode_args(buf);
    buf.put_u8(FRAME_END);
    debug_assert_eq!(buf.len() - start, payload_len + FRAME_OVERHEAD as usize);
}

/// Writes one method frame straight from a method's struct.
pub fn write_method_args<M: MethodArgs>(buf: &mut BytesMut, channel: u16, method: &M) {
    let payload_len = 4 + method.args_len();
    let start = start_method_frame(buf, channel, payload_len, M::CLASS_ID, M::METHOD_ID);
    method.encode_args(buf);
    buf.put_u8(FRAME_END);
    // The counted length and the written length come from two passes over the same
    // arguments; check that they agree.
    debug_assert_eq!(buf.len() - start, payload_len + FRAME_OVERHEAD as usize);
}

fn start_method_frame(
    buf: &mut BytesMut,
    channel: u16,
    payload_len: usize,
    class_id: u16,
    method_id: u16,
) -> usize {
    buf.reserve(payload_len + FRAME_OVERHEAD as usize);
    let start = buf.len();
    buf.put_u8(FRAME_METHOD);
    buf.put_u16(channel);
    buf.put_u32(frame_size(payload_len));
    buf.put_u16(class_id);
    buf.put_u16(method_id);
    start
}

/// Writes one content header frame.
pub fn write_content_header(
    buf: &mut BytesMut,
    channel: u16,
    class_id: u16,
    body_size: u64,
    properties: &Properties,
) {
    write_content_header_raw(
        buf,
        channel,
        class_id,
        body_size,
        properties.flags(),
        properties.raw(),
    );
}

/// `write_content_header` from the flags and a property list already
/// validated (a message's, kept in wire form).
pub fn write_content_header_raw(
    buf: &mut BytesMut,
    channel: u16,
    class_id: u16,
    body_size: u64,
    flags: u16,
    raw: &[u8],
) {
    let payload_len = CONTENT_HEADER_FIXED_SIZE + 2 + raw.len();
    let size = frame_size(payload_len);
    buf.reserve(payload_len + FRAME_OVERHEAD as usize);
    buf.put_u8(FRAME_HEADER);
    buf.put_u16(channel);
    buf.put_u32(size);
    buf.put_u16(class_id);
    buf.put_u16(0); // weight
    buf.put_u64(body_size);
    buf.put_u16(flags);
    buf.put_slice(raw);
    buf.put_u8(FRAME_END);
}

/// A basic.deliver method frame from borrowed names (each at most 255
/// bytes, as the message and the consumer they come from guarantee): the
/// busiest frame a broker writes, with nothing built for it.
pub fn write_deliver_method(
    buf: &mut BytesMut,
    channel: u16,
    consumer_tag: &[u8],
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
) {
    debug_assert!(consumer_tag.len() <= 255 && exchange.len() <= 255 && routing_key.len() <= 255);
    let payload_len =
        4 + 1 + consumer_tag.len() + 8 + 1 + 1 + exchange.len() + 1 + routing_key.len();
    start_method_frame(buf, channel, payload_len, 60, 60);
    buf.put_u8(consumer_tag.len() as u8);
    buf.put_slice(consumer_tag);
    buf.put_u64(delivery_tag);
    buf.put_u8(u8::from(redelivered));
    buf.put_u8(exchange.len() as u8);
    buf.put_slice(exchange);
    buf.put_u8(routing_key.len() as u8);
    buf.put_slice(routing_key);
    buf.put_u8(FRAME_END);
}

/// A basic.deliver and its content, all borrowed: the parts `write_deliver`
/// writes the three frames from.
pub struct Deliver<'a> {
    pub channel: u16,
    pub consumer_tag: &'a [u8],
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub exchange: &'a [u8],
    pub routing_key: &'a [u8],
    pub property_flags: u16,
    pub properties_raw: &'a [u8],
    pub body: &'a [u8],
}

/// Writes a basic.deliver, its content header and its body. A body that
/// fits one frame (nearly every message) gets one reservation and one pass
/// over the buffer's spare room, with no capacity check per field: this is
/// the frame sequence a broker writes most.
pub fn write_deliver(buf: &mut BytesMut, d: &Deliver<'_>, frame_max: u32) {
    let body_frame_max = frame_max.saturating_sub(FRAME_OVERHEAD) as usize;
    if frame_max != 0 && d.body.len() > body_frame_max {
        write_deliver_method(
            buf,
            d.channel,
            d.consumer_tag,
            d.delivery_tag,
            d.redelivered,
            d.exchange,
            d.routing_key,
        );
        let body_size = d.body.len() as u64;
        write_content_header_raw(
            buf,
            d.channel,
            60,
            body_size,
            d.property_flags,
            d.properties_raw,
        );
        write_body(buf, d.channel, d.body, frame_max);
        return;
    }
    debug_assert!(
        d.consumer_tag.len() <= 255 && d.exchange.len() <= 255 && d.routing_key.len() <= 255
    );
    let method_len =
        4 + 1 + d.consumer_tag.len() + 8 + 1 + 1 + d.exchange.len() + 1 + d.routing_key.len();
    let header_len = CONTENT_HEADER_FIXED_SIZE + 2 + d.properties_raw.len();
    let body_frame_len = if d.body.is_empty() {
        0
    } else {
        FRAME_OVERHEAD as usize + d.body.len()
    };
    let total = method_len + header_len + 2 * FRAME_OVERHEAD as usize + body_frame_len;
    buf.reserve(total);
    let mut w = SpareWriter {
        spare: &mut buf.spare_capacity_mut()[..total],
        at: 0,
    };
    w.u8(FRAME_METHOD);
    w.u16(d.channel);
    w.u32(frame_size(method_len));
    w.u16(60);
    w.u16(60);
    w.u8(d.consumer_tag.len() as u8);
    w.bytes(d.consumer_tag);
    w.u64(d.delivery_tag);
    w.u8(u8::from(d.redelivered));
    w.u8(d.exchange.len() as u8);
    w.bytes(d.exchange);
    w.u8(d.routing_key.len() as u8);
    w.bytes(d.routing_key);
    w.u8(FRAME_END);
    w.u8(FRAME_HEADER);
    w.u16(d.channel);
    w.u32(frame_size(header_len));
    w.u16(60);
    w.u16(0); // weight
    w.u64(d.body.len() as u64);
    w.u16(d.property_flags);
    w.bytes(d.properties_raw);
    w.u8(FRAME_END);
    if !d.body.is_empty() {
        w.u8(FRAME_BODY);
        w.u16(d.channel);
        w.u32(frame_size(d.body.len()));
        w.bytes(d.body);
        w.u8(FRAME_END);
    }
    assert_eq!(w.at, total, "deliver frames written short");
    // SAFETY: the writer initialised all `total` bytes after the buffer's
    // length (checked just above), within the capacity reserved for them.
    unsafe { buf.set_len(buf.len() + total) };
}

/// Writes into a buffer's spare room, each field bounds-checked against
/// the room taken for the whole frame sequence rather than by a reserve.
struct SpareWriter<'a> {
    spare: &'a mut [std::mem::MaybeUninit<u8>],
    at: usize,
}

impl SpareWriter<'_> {
    #[inline]
    fn bytes(&mut self, bytes: &[u8]) {
        let to = &mut self.spare[self.at..self.at + bytes.len()];
        // SAFETY: `to` is exactly `bytes.len()` slots long (the slice above
        // checked it), and MaybeUninit<u8> has the layout of u8.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), to.as_mut_ptr().cast::<u8>(), bytes.len())
        };
        self.at += bytes.len();
    }

    #[inline]
    fn u8(&mut self, value: u8) {
        self.spare[self.at].write(value);
        self.at += 1;
    }

    #[inline]
    fn u16(&mut self, value: u16) {
        self.bytes(&value.to_be_bytes());
    }

    #[inline]
    fn u32(&mut self, value: u32) {
        self.bytes(&value.to_be_bytes());
    }

    #[inline]
    fn u64(&mut self, value: u64) {
        self.bytes(&value.to_be_bytes());
    }
}

/// Splits `body` into body frames of at most frame_max - 8 payload bytes (frame_max 0
/// = one frame). Writes nothing for an empty body.
pub fn write_body(buf: &mut BytesMut, channel: u16, body: &[u8], frame_max: u32) {
    if body.is_empty() {
        return;
    }
    let chunk_max = if frame_max == 0 {
        body.len()
    } else {
        // A frame_max below 4096 is refused during tuning; the max(1) only keeps a
        // broken caller from looping forever.
        (frame_max.saturating_sub(FRAME_OVERHEAD) as usize).max(1)
    };
    let frames = body.len().div_ceil(chunk_max);
    buf.reserve(body.len() + frames * FRAME_OVERHEAD as usize);
    for chunk in body.chunks(chunk_max) {
        buf.put_u8(FRAME_BODY);
        buf.put_u16(channel);
        buf.put_u32(frame_size(chunk.len()));
        buf.put_slice(chunk);
        buf.put_u8(FRAME_END);
    }
}

/// Writes a heartbeat frame (always on channel 0).
pub fn write_heartbeat(buf: &mut BytesMut) {
    buf.reserve(FRAME_OVERHEAD as usize);
    buf.put_u8(FRAME_HEARTBEAT);
    buf.put_u16(0);
    buf.put_u32(0);
    buf.put_u8(FRAME_END);
}

/// A frame payload length as the u32 the header carries. Outgoing frames are bounded
/// by frame_max, so a longer payload is a programmer error.
fn frame_size(payload_len: usize) -> u32 {
    u32::try_from(payload_len).expect("frame payload longer than 4 GiB")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::tests::sample_methods;
    use crate::method::BasicPublish;
    use crate::properties::tests::all_set;

    fn publish_frames(channel: u16, immediate: bool, body: &[u8]) -> BytesMut {
        let publish = BasicPublish {
            exchange: "amq.direct".into(),
            routing_key: "key".into(),
            mandatory: true,
            immediate,
        };
        content_frames(channel, publish.into(), body)
    }

    /// A method and its content (every property set) as a client or the
    /// broker writes them.
    fn content_frames(channel: u16, method: Method, body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        write_method(&mut buf, channel, &method);
        write_content_header(
            &mut buf,
            channel,
            60,
            body.len() as u64,
            &all_set().encode(),
        );
        write_body(&mut buf, channel, &Bytes::copy_from_slice(body), 131_072);
        buf
    }

    #[test]
    fn peek_publish_finds_the_three_frames() {
        let buf = publish_frames(3, false, b"hello");
        let shape = peek_publish(&buf, 131_072).expect("a publish");
        assert_eq!(shape.channel, 3);
        assert_eq!(&buf[shape.exchange.clone()], b"amq.direct");
        assert_eq!(&buf[shape.routing_key.clone()], b"key");
        assert!(shape.mandatory);
        assert_eq!(&buf[shape.body.clone()], b"hello");
        assert_eq!(shape.len, buf.len());
        let properties = Bytes::copy_from_slice(&buf[shape.properties.clone()]);
        assert_eq!(
            Properties::from_wire(shape.flags, properties).unwrap(),
            all_set().encode()
        );
    }

    /// Every single corrupted byte of `whole`: `peek` (giving the body and
    /// the length it found) never panics, and never finds a shape that
    /// reaches past the buffer.
    fn every_corrupted_byte(
        whole: &[u8],
        peek: impl Fn(&[u8]) -> Option<(std::ops::Range<usize>, usize)>,
    ) {
        for at in 0..whole.len() {
            for value in [0u8, 1, 2, 3, 0x7f, 0xce, 0xff] {
                let mut bytes = whole.to_vec();
                bytes[at] = value;
                if let Some((body, len)) = peek(&bytes) {
                    assert!(len <= bytes.len());
                    assert!(body.end < len);
                }
            }
        }
    }

    #[test]
    fn peek_publish_leaves_anything_else_to_the_general_parser() {
        let whole = publish_frames(3, false, b"hello");
        // Every incomplete prefix.
        for end in 0..whole.len() {
            assert_eq!(peek_publish(&whole[..end], 131_072), None, "prefix {end}");
        }
        assert_eq!(peek_publish(&publish_frames(3, true, b"x"), 131_072), None);
        assert_eq!(peek_publish(&publish_frames(0, false, b"x"), 131_072), None);
        assert_eq!(peek_publish(&publish_frames(3, false, b""), 131_072), None);
        // A frame over frame_max, and every single corrupted byte: never a
        // panic, and never a shape that reaches past the buffer.
        assert_eq!(peek_publish(&whole, 16), None);
        every_corrupted_byte(&whole, |bytes| {
            peek_publish(bytes, 131_072).map(|shape| (shape.body, shape.len))
        });
    }

    fn deliver_frames(channel: u16, redelivered: bool, body: &[u8]) -> BytesMut {
        let deliver = crate::method::BasicDeliver {
            consumer_tag: "ctag-1".into(),
            delivery_tag: 0x0102_0304_0506_0708,
            redelivered,
            exchange: "amq.direct".into(),
            routing_key: "key".into(),
        };
        content_frames(channel, deliver.into(), body)
    }

    #[test]
    fn peek_deliver_reads_what_the_general_parser_reads() {
        for redelivered in [false, true] {
            let buf = deliver_frames(7, redelivered, b"hello");
            let shape = peek_deliver(&buf, 131_072).expect("a delivery");
            assert_eq!(shape.channel, 7);
            assert_eq!(shape.delivery_tag, 0x0102_0304_0506_0708);
            assert_eq!(shape.redelivered, redelivered);
            assert_eq!(&buf[shape.body.clone()], b"hello");
            assert_eq!(shape.len, buf.len());
            let mut parsed = buf.clone();
            let Some(Frame::Method {
                method: Method::BasicDeliver(deliver),
                ..
            }) = parse_frame(&mut parsed, 131_072).unwrap()
            else {
                panic!("not a delivery");
            };
            assert_eq!(deliver.delivery_tag, shape.delivery_tag);
            assert_eq!(deliver.redelivered, shape.redelivered);
        }
    }

    #[test]
    fn deliver_written_from_borrowed_names_is_the_struct_encoding() {
        for redelivered in [false, true] {
            let deliver = crate::method::BasicDeliver {
                consumer_tag: "ctag-1".into(),
                delivery_tag: 77,
                redelivered,
                exchange: "amq.topic".into(),
                routing_key: "a.b".into(),
            };
            let mut expected = BytesMut::new();
            write_method(&mut expected, 5, &deliver.into());
            let mut written = BytesMut::new();
            write_deliver_method(
                &mut written,
                5,
                b"ctag-1",
                77,
                redelivered,
                b"amq.topic",
                b"a.b",
            );
            assert_eq!(written, expected);
        }
    }

    #[test]
    fn deliver_frames_written_in_one_pass_match_the_frame_by_frame_encoding() {
        let properties = crate::BasicProperties {
            content_type: Some("text/plain".into()),
            delivery_mode: Some(2),
            ..Default::default()
        }
        .encode();
        let mut raw = BytesMut::new();
        write_content_header(&mut raw, 1, 60, 0, &properties);
        // The property list after type, channel, size, class, weight,
        // body size and flags; without the frame end.
        let flags = u16::from_be_bytes([raw[19], raw[20]]);
        let list = raw[21..raw.len() - 1].to_vec();
        let long = vec![0xA5u8; 10_000];
        for body in [&b""[..], &b"hello"[..], &long[..]] {
            for frame_max in [0, 4096, 131_072] {
                let deliver = Deliver {
                    channel: 9,
                    consumer_tag: b"amq.ctag-xyz",
                    delivery_tag: 1 << 40,
                    redelivered: true,
                    exchange: b"ex",
                    routing_key: b"a.b.c",
                    property_flags: flags,
                    properties_raw: &list,
                    body,
                };
                let mut expected = BytesMut::from(&b"already here"[..]);
                write_deliver_method(
                    &mut expected,
                    9,
                    b"amq.ctag-xyz",
                    1 << 40,
                    true,
                    b"ex",
                    b"a.b.c",
                );
                write_content_header(&mut expected, 9, 60, body.len() as u64, &properties);
                write_body(&mut expected, 9, body, frame_max);
                let mut written = BytesMut::from(&b"already here"[..]);
                write_deliver(&mut written, &deliver, frame_max);
                assert_eq!(
                    written,
                    expected,
                    "body {} frame_max {}",
                    body.len(),
                    frame_max
                );
            }
        }
    }

    #[test]
    fn peek_deliver_leaves_anything_else_to_the_general_parser() {
        let whole = deliver_frames(7, false, b"hello");
        for end in 0..whole.len() {
            assert_eq!(peek_deliver(&whole[..end], 131_072), None, "prefix {end}");
        }
        assert_eq!(peek_deliver(&deliver_frames(7, false, b""), 131_072), None);
        assert_eq!(peek_deliver(&publish_frames(7, false, b"x"), 131_072), None);
        assert_eq!(peek_deliver(&whole, 16), None);
        every_corrupted_byte(&whole, |bytes| {
            peek_deliver(bytes, 131_072).map(|shape| (shape.body, shape.len))
        });
    }

    fn one_frame(bytes: &[u8], frame_max: u32) -> Result<Option<Frame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        parse_frame(&mut buf, frame_max)
    }

    #[test]
    fn every_method_round_trips_through_a_frame() {
        for (i, method) in sample_methods().into_iter().enumerate() {
            let channel = i as u16;
            let mut buf = BytesMut::new();
            write_method(&mut buf, channel, &method);
            let written = buf.len();
            let frame = parse_frame(&mut buf, 131_072).unwrap().unwrap();
            assert!(
                buf.is_empty(),
                "{} left {} of {written} bytes",
                method.name(),
                buf.len()
            );
            assert_eq!(frame, Frame::Method { channel, method });
        }
    }

    #[test]
    fn content_header_round_trips() {
        let properties = all_set().encode();
        let mut buf = BytesMut::new();
        write_content_header(&mut buf, 3, 60, 1 << 33, &properties);
        let frame = parse_frame(&mut buf, 0).unwrap().unwrap();
        let Frame::Header { channel, header } = frame else {
            panic!("not a header: {frame:?}")
        };
        assert_eq!(channel, 3);
        assert_eq!(header.class_id, 60);
        assert_eq!(header.body_size, 1 << 33);
        assert_eq!(header.properties, properties);
        assert_eq!(header.properties.decode(), all_set());
    }

    #[test]
    fn content_header_with_nonzero_weight_is_rejected() {
        let mut buf = BytesMut::new();
        write_content_header(&mut buf, 1, 60, 5, &Properties::empty());
        buf[FRAME_HEADER_SIZE + 3] = 1; // weight low byte
        assert!(matches!(
            parse_frame(&mut buf, 0),
            Err(FrameError::Syntax(_))
        ));
    }

    #[test]
    fn incomplete_input_at_every_split_point_needs_more() {
        let mut stream = BytesMut::new();
        for method in sample_methods() {
            write_method(&mut stream, 1, &method);
        }
        write_content_header(&mut stream, 1, 60, 10, &all_set().encode());
        write_body(&mut stream, 1, b"0123456789", 0);
        write_heartbeat(&mut stream);
        let whole = stream.freeze();

        // Find frame boundaries by parsing the whole stream once.
        let mut boundaries = vec![0];
        let mut buf = BytesMut::from(&whole[..]);
        let mut expected = Vec::new();
        while let Some(frame) = parse_frame(&mut buf, 0).unwrap() {
            expected.push(frame);
            boundaries.push(whole.len() - buf.len());
        }
        assert_eq!(*boundaries.last().unwrap(), whole.len());

        for pair in boundaries.windows(2) {
            let (start, end) = (pair[0], pair[1]);
            for split in start..end {
                let mut partial = BytesMut::from(&whole[start..split]);
                assert_eq!(parse_frame(&mut partial, 0), Ok(None), "split at {split}");
                assert_eq!(partial.len(), split - start, "buffer must be untouched");
            }
        }

        // Feeding the stream a few bytes at a time yields the same frames.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in whole.chunks(3) {
            buf.extend_from_slice(piece);
            while let Some(frame) = parse_frame(&mut buf, 0).unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn bad_frame_end_is_rejected() {
        let mut buf = BytesMut::new();
        write_heartbeat(&mut buf);
        let last = buf.len() - 1;
        buf[last] = 0xCD;
        assert_eq!(parse_frame(&mut buf, 0), Err(FrameError::BadFrameEnd(0xCD)));
    }

    #[test]
    fn unknown_frame_type_is_rejected_from_the_header() {
        assert_eq!(
            one_frame(&[4, 0, 0, 0, 0, 0, 9], 0),
            Err(FrameError::UnknownFrameType(4))
        );
    }

    #[test]
    fn frame_too_large_is_detected_from_the_header_alone() {
        // Up to frame_max itself fits (RabbitMQ's fudge); one more byte does not.
        let header = |size: u32| {
            let mut h = vec![FRAME_BODY, 0, 1];
            h.extend_from_slice(&size.to_be_bytes());
            h
        };
        assert_eq!(one_frame(&header(131_072), 131_072), Ok(None));
        assert_eq!(
            one_frame(&header(131_073), 131_072),
            Err(FrameError::TooLarge {
                size: 131_073,
                max: 131_072
            })
        );
        assert_eq!(
            one_frame(&header(u32::MAX), 4096),
            Err(FrameError::TooLarge {
                size: u32::MAX,
                max: 4096
            })
        );
        // No limit before tuning when the caller passes 0.
        assert_eq!(one_frame(&header(u32::MAX), 0), Ok(None));
    }

    #[test]
    fn heartbeat_parses_and_writes() {
        let mut buf = BytesMut::new();
        write_heartbeat(&mut buf);
        assert_eq!(&buf[..], &[8, 0, 0, 0, 0, 0, 0, 0xCE]);
        assert_eq!(
            parse_frame(&mut buf, 4096),
            Ok(Some(Frame::Heartbeat { channel: 0 }))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn heartbeat_with_a_payload_is_rejected_and_on_a_channel_is_left_to_the_connection() {
        assert_eq!(
            one_frame(&[8, 0, 1, 0, 0, 0, 0, 0xCE], 0),
            Ok(Some(Frame::Heartbeat { channel: 1 }))
        );
        let err = one_frame(&[8, 0, 0, 0, 0, 0, 1, 0, 0xCE], 0).unwrap_err();
        assert!(matches!(err, FrameError::Syntax(_)));
    }

    #[test]
    fn short_method_and_header_payloads_are_rejected() {
        assert!(one_frame(&[1, 0, 1, 0, 0, 0, 3, 0, 10, 0, 0xCE], 0).is_err());
        assert!(one_frame(&[2, 0, 1, 0, 0, 0, 2, 0, 60, 0xCE], 0).is_err());
    }

    #[test]
    fn unknown_method_maps_to_not_implemented_with_its_ids() {
        let err = one_frame(&[1, 0, 1, 0, 0, 0, 4, 0, 60, 0, 99, 0xCE], 0).unwrap_err();
        assert_eq!(
            err,
            FrameError::UnknownMethod {
                class_id: 60,
                method_id: 99
            }
        );
        let amqp = err.to_amqp_error();
        assert_eq!(amqp.code, ReplyCode::NotImplemented);
        assert_eq!((amqp.class_id, amqp.method_id), (60, 99));
    }

    #[test]
    fn body_payload_is_a_zero_copy_slice_of_the_read_buffer() {
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut buf = BytesMut::with_capacity(20_000);
        write_body(&mut buf, 5, &body, 0);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.capacity();
        let Some(Frame::Body { channel, payload }) = parse_frame(&mut buf, 0).unwrap() else {
            panic!("not a body frame")
        };
        assert_eq!(channel, 5);
        assert_eq!(&payload[..], &body[..]);
        assert!(range.contains(&(payload.as_ptr() as usize)));
        assert!(range.contains(&(payload.as_ptr() as usize + payload.len() - 1)));
    }

    #[test]
    fn method_strings_are_zero_copy_slices_of_the_read_buffer() {
        let method: Method = BasicPublish {
            exchange: "orders".into(),
            routing_key: "order.created".into(),
            mandatory: false,
            immediate: false,
        }
        .into();
        let mut buf = BytesMut::with_capacity(256);
        write_method(&mut buf, 1, &method);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.capacity();
        let Some(Frame::Method {
            method: Method::BasicPublish(p),
            ..
        }) = parse_frame(&mut buf, 0).unwrap()
        else {
            panic!("not a publish")
        };
        assert!(range.contains(&(p.routing_key.as_bytes().as_ptr() as usize)));
    }

    #[test]
    fn body_splits_at_frame_max() {
        let body = vec![7u8; 10_000];
        let mut buf = BytesMut::new();
        write_body(&mut buf, 2, &body, 4096);
        let mut sizes = Vec::new();
        let mut joined = Vec::new();
        while let Some(frame) = parse_frame(&mut buf, 4096).unwrap() {
            let Frame::Body { payload, .. } = frame else {
                panic!("not a body")
            };
            sizes.push(payload.len());
            joined.extend_from_slice(&payload);
        }
        assert_eq!(sizes, [4088, 4088, 1824]);
        assert_eq!(joined, body);

        let mut buf = BytesMut::new();
        write_body(&mut buf, 2, &[], 4096);
        assert!(buf.is_empty());
        write_body(&mut buf, 2, &body, 0);
        assert_eq!(buf.len(), body.len() + 8);
    }

    #[test]
    fn writing_into_an_exactly_sized_buffer_does_not_reallocate() {
        let properties = all_set().encode();
        for method in sample_methods() {
            let exact = 8 + 4 + method.args_len();
            let mut buf = BytesMut::with_capacity(exact);
            let ptr = buf.as_ptr();
            write_method(&mut buf, 1, &method);
            assert_eq!(buf.len(), exact, "{}", method.name());
            assert_eq!(buf.as_ptr(), ptr, "{} reallocated", method.name());
        }
        let exact = 8 + 12 + properties.encoded_len();
        let mut buf = BytesMut::with_capacity(exact);
        let ptr = buf.as_ptr();
        write_content_header(&mut buf, 1, 60, 3, &properties);
        assert_eq!((buf.len(), buf.as_ptr()), (exact, ptr));
        let body = [1u8; 9000];
        let exact = 9000 + 3 * 8;
        let mut buf = BytesMut::with_capacity(exact);
        let ptr = buf.as_ptr();
        write_body(&mut buf, 1, &body, 4096);
        assert_eq!((buf.len(), buf.as_ptr()), (exact, ptr));
    }

    /// A tiny xorshift PRNG: deterministic, no extra crates.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn mutated_frames_never_panic() {
        let mut valid: Vec<Vec<u8>> = Vec::new();
        for method in sample_methods() {
            let mut buf = BytesMut::new();
            write_method(&mut buf, 1, &method);
            valid.push(buf.to_vec());
        }
        let mut buf = BytesMut::new();
        write_content_header(&mut buf, 1, 60, 100, &all_set().encode());
        valid.push(buf.to_vec());
        let mut buf = BytesMut::new();
        write_body(&mut buf, 1, b"hello", 0);
        valid.push(buf.to_vec());

        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut outcomes = [0usize; 3]; // complete, incomplete, error
        for _ in 0..100_000 {
            let mut bytes = valid[rng.below(valid.len())].clone();
            for _ in 0..1 + rng.below(4) {
                match rng.below(4) {
                    0 => {
                        let i = rng.below(bytes.len());
                        bytes[i] ^= 1 << rng.below(8);
                    }
                    1 => {
                        let i = rng.below(bytes.len());
                        bytes[i] = rng.next() as u8;
                    }
                    2 => {
                        let len = rng.below(bytes.len() + 1);
                        bytes.truncate(len);
                    }
                    _ => {
                        // Mutate the payload but keep the frame well-formed around it,
                        // so the decoders (not just the framing checks) see the damage.
                        if bytes.len() > 8 {
                            let i = 7 + rng.below(bytes.len() - 8);
                            bytes[i] = rng.next() as u8;
                        }
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let mut buf = BytesMut::from(&bytes[..]);
            match parse_frame(&mut buf, 131_072) {
                Ok(Some(_)) => outcomes[0] += 1,
                Ok(None) => outcomes[1] += 1,
                Err(_) => outcomes[2] += 1,
            }
        }
        // Every kind of outcome must occur, or the mutations are not reaching the parser.
        assert!(outcomes.iter().all(|&n| n > 1000), "{outcomes:?}");
    }
}

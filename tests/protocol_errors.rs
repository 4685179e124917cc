//! Protocol violations, written as raw bytes over a TcpStream, and the exact answer RabbitMQ
//! 3.10 gives to each (reply code, and the reply text's `NAME - ` prefix). After each one a
//! fresh connection must still complete the handshake and declare a queue.

mod common;

use common::{unique, Broker};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// A small raw AMQP 0-9-1 client
// ---------------------------------------------------------------------------------------

const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
const FRAME_END: u8 = 0xCE;
const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

// (class, method)
const CONNECTION_START: (u16, u16) = (10, 10);
const CONNECTION_START_OK: (u16, u16) = (10, 11);
const CONNECTION_TUNE: (u16, u16) = (10, 30);
const CONNECTION_TUNE_OK: (u16, u16) = (10, 31);
const CONNECTION_OPEN: (u16, u16) = (10, 40);
const CONNECTION_OPEN_OK: (u16, u16) = (10, 41);
const CONNECTION_CLOSE: (u16, u16) = (10, 50);
const CONNECTION_CLOSE_OK: (u16, u16) = (10, 51);
const CHANNEL_OPEN: (u16, u16) = (20, 10);
const CHANNEL_OPEN_OK: (u16, u16) = (20, 11);
const CHANNEL_FLOW: (u16, u16) = (20, 20);
const CHANNEL_FLOW_OK: (u16, u16) = (20, 21);
const CHANNEL_CLOSE: (u16, u16) = (20, 40);
const CHANNEL_CLOSE_OK: (u16, u16) = (20, 41);
const CONNECTION_UPDATE_SECRET: (u16, u16) = (10, 70);
const CONNECTION_UPDATE_SECRET_OK: (u16, u16) = (10, 71);
const QUEUE_DECLARE: (u16, u16) = (50, 10);
const QUEUE_DECLARE_OK: (u16, u16) = (50, 11);
const QUEUE_DELETE: (u16, u16) = (50, 40);
const QUEUE_DELETE_OK: (u16, u16) = (50, 41);
const BASIC_CONSUME: (u16, u16) = (60, 20);
const BASIC_CONSUME_OK: (u16, u16) = (60, 21);
const BASIC_CANCEL: (u16, u16) = (60, 30);
const BASIC_PUBLISH: (u16, u16) = (60, 40);

/// One frame as read from the socket. `class`/`method` are 0 unless it is a method frame;
/// `payload` is the whole frame payload (for a method frame, starting with class and method).
#[derive(Debug, Clone)]
struct Frame {
    ty: u8,
    channel: u16,
    class: u16,
    method: u16,
    payload: Vec<u8>,
}

impl Frame {
    fn is(&self, (class, method): (u16, u16)) -> bool {
        self.ty == FRAME_METHOD && self.class == class && self.method == method
    }

    /// The method's arguments.
    fn args(&self) -> Reader<'_> {
        Reader {
            b: &self.payload[4.min(self.payload.len())..],
        }
    }
}

/// Encoder for method arguments and field tables.
#[derive(Default)]
struct Args(Vec<u8>);

impl Args {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn shortstr(mut self, s: &str) -> Self {
        assert!(s.len() < 256);
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn longstr(mut self, s: &[u8]) -> Self {
        self.0.extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.0.extend_from_slice(s);
        self
    }
    /// A field table from already encoded entries.
    fn table(self, entries: &[u8]) -> Self {
        self.longstr(entries)
    }
    fn bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Decoder for method arguments.
struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        assert!(self.b.len() >= n, "method arguments too short");
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        head
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn shortstr(&mut self) -> String {
        let n = self.take(1)[0] as usize;
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
    fn longstr(&mut self) -> Vec<u8> {
        let n = self.u32() as usize;
        self.take(n).to_vec()
    }
}

fn frame(ty: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 8);
    f.push(ty);
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(FRAME_END);
    f
}

fn method_frame(channel: u16, (class, method): (u16, u16), args: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(args.len() + 4);
    p.extend_from_slice(&class.to_be_bytes());
    p.extend_from_slice(&method.to_be_bytes());
    p.extend_from_slice(args);
    frame(FRAME_METHOD, channel, &p)
}

/// A content header frame for class basic with no properties.
fn content_header_frame(channel: u16, body_size: u64) -> Vec<u8> {
    let p = Args::default().u16(60).u16(0).u64(body_size).u16(0).bytes();
    frame(FRAME_HEADER, channel, &p)
}

fn basic_publish_args(exchange: &str, routing_key: &str) -> Vec<u8> {
    Args::default()
        .u16(0)
        .shortstr(exchange)
        .shortstr(routing_key)
        .u8(0)
        .bytes()
}

/// client-properties, optionally announcing `authentication_failure_close`.
fn client_properties(auth_failure_close: bool) -> Vec<u8> {
    // Every connection takes the broker's basic.cancel for consumers of a deleted queue.
    let mut caps = Args::default()
        .shortstr("consumer_cancel_notify")
        .u8(b't')
        .u8(1)
        .bytes();
    if auth_failure_close {
        caps.extend(
            Args::default()
                .shortstr("authentication_failure_close")
                .u8(b't')
                .u8(1)
                .bytes(),
        );
    }
    let mut t = Args::default()
        .shortstr("product")
        .u8(b'S')
        .longstr(b"warren protocol_errors test")
        .bytes();
    t.extend(
        Args::default()
            .shortstr("capabilities")
            .u8(b'F')
            .table(&caps)
            .bytes(),
    );
    t
}

#[derive(Clone)]
struct Handshake {
    user: String,
    pass: String,
    mechanism: &'static str,
    vhost: String,
    channel_max: u16,
    /// 0 = accept the server's proposal.
    frame_max: u32,
    heartbeat: u16,
    auth_failure_close: bool,
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake {
            user: "guest".into(),
            pass: "guest".into(),
            mechanism: "PLAIN",
            vhost: "/".into(),
            channel_max: 0,
            frame_max: 0,
            heartbeat: 0,
            auth_failure_close: true,
        }
    }
}

/// What the server proposed in connection.tune and what was agreed in tune-ok.
#[derive(Debug, Clone, Copy, Default)]
struct Tune {
    channel_max: u16,
    frame_max: u32,
    heartbeat: u16,
}

struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
    tune: Tune,
    /// The class and method ids of the last close `expect_connection_close` saw.
    close_ids: (u16, u16),
}

impl Conn {
    fn connect(b: &Broker) -> Conn {
        let sock =
            TcpStream::connect(b.addr()).unwrap_or_else(|e| panic!("connect to {}: {e}", b.addr()));
        sock.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        sock.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        sock.set_nodelay(true).unwrap();
        Conn {
            sock,
            buf: Vec::new(),
            tune: Tune::default(),
            close_ids: (0, 0),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("write to broker");
    }

    fn send_method(&mut self, channel: u16, m: (u16, u16), args: &[u8]) {
        self.send(&method_frame(channel, m, args));
    }

    /// Fills the buffer to at least `n` bytes. Ok(false) on a clean EOF.
    fn fill(&mut self, n: usize) -> io::Result<bool> {
        let mut chunk = [0u8; 16384];
        while self.buf.len() < n {
            match self.sock.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// The next frame; Err(UnexpectedEof) if the peer closed the socket, or the read timeout.
    fn read_frame(&mut self) -> io::Result<Frame> {
        if !self.fill(7)? {
            return Err(io::Error::new(ErrorKind::UnexpectedEof, "socket closed"));
        }
        let ty = self.buf[0];
        let channel = u16::from_be_bytes([self.buf[1], self.buf[2]]);
        let size =
            u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]) as usize;
        if !self.fill(7 + size + 1)? {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "socket closed mid-frame",
            ));
        }
        let payload = self.buf[7..7 + size].to_vec();
        let end = self.buf[7 + size];
        self.buf.drain(..8 + size);
        assert_eq!(end, FRAME_END, "broker sent a bad frame-end octet");
        let (class, method) = if ty == FRAME_METHOD && payload.len() >= 4 {
            (
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            )
        } else {
            (0, 0)
        };
        Ok(Frame {
            ty,
            channel,
            class,
            method,
            payload,
        })
    }

    /// The next frame that is not a heartbeat; panics if there is none.
    fn next(&mut self) -> Frame {
        loop {
            match self.read_frame() {
                Ok(f) if f.ty == FRAME_HEARTBEAT => continue,
                Ok(f) => return f,
                Err(e) => panic!("expected a frame from the broker, got {e}"),
            }
        }
    }

    fn expect(&mut self, m: (u16, u16)) -> Frame {
        let f = self.next();
        assert!(f.is(m), "expected method {m:?}, got {f:?}");
        f
    }

    /// Drives the handshake up to and including connection.open-ok.
    fn handshake(b: &Broker, h: &Handshake) -> Conn {
        let mut c = Conn::connect(b);
        c.send(PROTOCOL_HEADER);
        c.expect(CONNECTION_START);
        c.send_start_ok(h);
        let tune = c.expect(CONNECTION_TUNE);
        c.tune_ok(h, &tune);
        c.open(&h.vhost);
        c.expect(CONNECTION_OPEN_OK);
        c
    }

    fn send_start_ok(&mut self, h: &Handshake) {
        let response = match h.mechanism {
            "PLAIN" => format!("\0{}\0{}", h.user, h.pass).into_bytes(),
            // AMQPLAIN: a field table's entries without the table's length prefix.
            "AMQPLAIN" => Args::default()
                .shortstr("LOGIN")
                .u8(b'S')
                .longstr(h.user.as_bytes())
                .shortstr("PASSWORD")
                .u8(b'S')
                .longstr(h.pass.as_bytes())
                .bytes(),
            m => panic!("unknown mechanism {m}"),
        };
        let args = Args::default()
            .table(&client_properties(h.auth_failure_close))
            .shortstr(h.mechanism)
            .longstr(&response)
            .shortstr("en_US")
            .bytes();
        self.send_method(0, CONNECTION_START_OK, &args);
    }

    fn tune_ok(&mut self, h: &Handshake, tune: &Frame) {
        let mut r = tune.args();
        let proposed = Tune {
            channel_max: r.u16(),
            frame_max: r.u32(),
            heartbeat: r.u16(),
        };
        self.tune = Tune {
            channel_max: if h.channel_max == 0 {
                proposed.channel_max
            } else {
                h.channel_max
            },
            frame_max: if h.frame_max == 0 {
                proposed.frame_max
            } else {
                h.frame_max
            },
            heartbeat: h.heartbeat,
        };
        let args = Args::default()
            .u16(self.tune.channel_max)
            .u32(self.tune.frame_max)
            .u16(self.tune.heartbeat)
            .bytes();
        self.send_method(0, CONNECTION_TUNE_OK, &args);
    }

    fn open(&mut self, vhost: &str) {
        let args = Args::default().shortstr(vhost).shortstr("").u8(0).bytes();
        self.send_method(0, CONNECTION_OPEN, &args);
    }

    fn open_channel(&mut self, channel: u16) {
        self.send_method(channel, CHANNEL_OPEN, &Args::default().shortstr("").bytes());
        let f = self.expect(CHANNEL_OPEN_OK);
        assert_eq!(f.channel, channel);
    }

    /// queue.declare of an exclusive queue; returns the frame answering it.
    fn declare_queue(&mut self, channel: u16, name: &str) -> Frame {
        let args = Args::default()
            .u16(0)
            .shortstr(name)
            .u8(0b0000_0100) // exclusive
            .table(&[])
            .bytes();
        self.send_method(channel, QUEUE_DECLARE, &args);
        self.next()
    }

    /// Expects connection.close with `code`, answers close-ok, and expects the socket to be
    /// closed by the broker. Returns the reply text.
    fn expect_connection_close(&mut self, code: u16) -> String {
        let f = self.next();
        assert!(
            f.is(CONNECTION_CLOSE) && f.channel == 0,
            "expected connection.close {code}, got {f:?}"
        );
        let mut r = f.args();
        let got = r.u16();
        let text = r.shortstr();
        let (class, method) = (r.u16(), r.u16());
        eprintln!("connection.close {got} {text:?} class={class} method={method}");
        self.close_ids = (class, method);
        assert_eq!(got, code, "connection.close reply code (text {text:?})");
        let name = reply_name(code);
        assert!(
            text.starts_with(&format!("{name} - ")),
            "reply text should start with \"{name} - \", got {text:?}"
        );
        self.send_method(0, CONNECTION_CLOSE_OK, &[]);
        self.expect_eof();
        text
    }

    /// Expects channel.close with `code` on `channel` and answers close-ok. Returns the
    /// reply text and the class and method ids the close names.
    fn expect_channel_close(&mut self, channel: u16, code: u16) -> (String, (u16, u16)) {
        let f = self.next();
        assert!(
            f.is(CHANNEL_CLOSE) && f.channel == channel,
            "expected channel.close {code} on channel {channel}, got {f:?}"
        );
        let mut r = f.args();
        let got = r.u16();
        let text = r.shortstr();
        let ids = (r.u16(), r.u16());
        eprintln!("channel.close {got} {text:?} ids={ids:?}");
        assert_eq!(got, code, "channel.close reply code (text {text:?})");
        self.send_method(channel, CHANNEL_CLOSE_OK, &[]);
        (text, ids)
    }

    /// Expects no frame within `wait` (the socket may be closed or stay open).
    fn expect_nothing_more(&mut self, wait: Duration) {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        match self.read_frame() {
            Err(e) if is_closed(&e) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("expected silence, got {e}"),
            Ok(f) => panic!("expected no more frames, got {f:?}"),
        }
        self.sock.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    }

    /// Expects the broker to close the socket (no more frames) within the read timeout.
    fn expect_eof(&mut self) {
        match self.read_frame() {
            Err(e) if is_closed(&e) => {}
            Err(e) => panic!("expected the broker to close the socket, got {e}"),
            Ok(f) => panic!("expected the broker to close the socket, got {f:?}"),
        }
    }
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
    )
}

fn reply_name(code: u16) -> &'static str {
    match code {
        200 => "OK",
        320 => "CONNECTION_FORCED",
        402 => "INVALID_PATH",
        403 => "ACCESS_REFUSED",
        404 => "NOT_FOUND",
        405 => "RESOURCE_LOCKED",
        406 => "PRECONDITION_FAILED",
        501 => "FRAME_ERROR",
        502 => "SYNTAX_ERROR",
        503 => "COMMAND_INVALID",
        504 => "CHANNEL_ERROR",
        505 => "UNEXPECTED_FRAME",
        506 => "RESOURCE_ERROR",
        530 => "NOT_ALLOWED",
        540 => "NOT_IMPLEMENTED",
        541 => "INTERNAL_ERROR",
        _ => "?",
    }
}

/// A fresh connection completes the handshake and declares a queue: the broker still serves.
fn assert_still_serving(b: &Broker) {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    let name = unique("still-serving");
    let f = c.declare_queue(1, &name);
    assert!(f.is(QUEUE_DECLARE_OK), "queue.declare answered {f:?}");
    assert_eq!(f.args().shortstr(), name);
    c.send_method(
        0,
        CONNECTION_CLOSE,
        &Args::default()
            .u16(200)
            .shortstr("bye")
            .u16(0)
            .u16(0)
            .bytes(),
    );
    c.expect(CONNECTION_CLOSE_OK);
}

/// Sends an 8-byte protocol header the broker does not speak; it must answer with its own
/// header, AMQP 0-9-1, and close the socket.
fn refused_header(b: &Broker, header: &[u8; 8]) {
    let mut c = Conn::connect(b);
    c.send(header);
    let mut got = Vec::new();
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut chunk = [0u8; 64];
    loop {
        match c.sock.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_closed(&e) => break,
            Err(e) => panic!(
                "{:?}: expected the broker to answer and close, got {e} after {got:?}",
                String::from_utf8_lossy(header)
            ),
        }
        assert!(Instant::now() < deadline, "the broker kept the socket open");
    }
    assert_eq!(
        got,
        PROTOCOL_HEADER.to_vec(),
        "answer to header {:?}",
        String::from_utf8_lossy(header)
    );
}

// ---------------------------------------------------------------------------------------
// Protocol header
// ---------------------------------------------------------------------------------------

broker_test!(wrong_protocol_version_gets_091_header, |b| {
    refused_header(b, b"AMQP\x00\x00\x09\x00");
    refused_header(b, b"AMQP\x01\x01\x00\x0a");
    assert_still_serving(b);
});

broker_test!(http_request_gets_amqp_header, |b| {
    refused_header(b, b"HTTP/1.1");
    refused_header(b, b"GET / HT");
    assert_still_serving(b);
});

// ---------------------------------------------------------------------------------------
// Framing errors: connection.close 501 FRAME_ERROR
// ---------------------------------------------------------------------------------------

broker_test!(unknown_frame_type_is_frame_error, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.send(&frame(9, 0, b"junk"));
    c.expect_connection_close(501);
    assert_still_serving(b);
});

broker_test!(unknown_frame_type_on_open_channel_is_frame_error, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    c.send(&frame(0x41, 1, b"junk"));
    c.expect_connection_close(501);
    assert_still_serving(b);
});

broker_test!(bad_frame_end_is_frame_error, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    let mut f = method_frame(1, CHANNEL_OPEN, &Args::default().shortstr("").bytes());
    *f.last_mut().unwrap() = 0xCD;
    c.send(&f);
    c.expect_connection_close(501);
    assert_still_serving(b);
});

broker_test!(frame_larger_than_frame_max_is_frame_error, |b| {
    let h = Handshake {
        frame_max: 4096,
        ..Handshake::default()
    };
    let mut c = Conn::handshake(b, &h);
    c.open_channel(1);
    // Exactly frame_max octets in all (payload frame_max - 8) is allowed: a body that fills a
    // whole frame, published to a queue that does not exist (so it is dropped).
    c.send_method(
        1,
        BASIC_PUBLISH,
        &basic_publish_args("", &unique("nowhere")),
    );
    c.send(&content_header_frame(1, 4088));
    c.send(&frame(FRAME_BODY, 1, &[b'x'; 4088]));
    let f = c.declare_queue(1, &unique("after-full-frame"));
    assert!(
        f.is(QUEUE_DECLARE_OK),
        "a frame of exactly frame_max: {f:?}"
    );
    // A payload larger than frame_max is not (RabbitMQ tolerates up to 8 octets over, see
    // frame_max_tolerates_rabbitmq_fudge). The broker may judge the header alone.
    c.send_method(
        1,
        BASIC_PUBLISH,
        &basic_publish_args("", &unique("nowhere")),
    );
    c.send(&content_header_frame(1, 4097));
    c.send(&frame(FRAME_BODY, 1, &[b'x'; 4097]));
    let text = c.expect_connection_close(501);
    assert!(text.contains("frame_too_large"), "{text:?}");
    assert_still_serving(b);
});

// RabbitMQ (rabbit_reader's FRAME_SIZE_FUDGE) accepts payloads up to frame_max octets, i.e.
// frames up to 8 octets over the negotiated frame_max, for clients that forget the frame
// overhead. A compatible broker must accept what RabbitMQ accepts.
broker_test!(frame_max_tolerates_rabbitmq_fudge, |b| {
    let h = Handshake {
        frame_max: 4096,
        ..Handshake::default()
    };
    let mut c = Conn::handshake(b, &h);
    c.open_channel(1);
    c.send_method(
        1,
        BASIC_PUBLISH,
        &basic_publish_args("", &unique("nowhere")),
    );
    c.send(&content_header_frame(1, 4096));
    c.send(&frame(FRAME_BODY, 1, &[b'x'; 4096]));
    let f = c.declare_queue(1, &unique("after-fudge-frame"));
    assert!(
        f.is(QUEUE_DECLARE_OK),
        "a payload of frame_max octets: {f:?}"
    );
});

broker_test!(huge_frame_header_is_frame_error, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    // Only the 7-octet header of a 1 GiB frame: the broker must not wait for (or allocate)
    // the payload.
    let mut f = vec![FRAME_METHOD, 0, 1];
    f.extend_from_slice(&(1u32 << 30).to_be_bytes());
    c.send(&f);
    c.expect_connection_close(501);
    assert_still_serving(b);
});

// ---------------------------------------------------------------------------------------
// Channels and content
// ---------------------------------------------------------------------------------------

broker_test!(method_on_unopened_channel_is_channel_error, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    let args = Args::default()
        .u16(0)
        .shortstr(&unique("q"))
        .u8(0)
        .table(&[])
        .bytes();
    c.send_method(5, QUEUE_DECLARE, &args);
    let text = c.expect_connection_close(504);
    assert!(text.contains("expected 'channel.open'"), "{text:?}");
    assert_eq!(c.close_ids, QUEUE_DECLARE);
    assert_still_serving(b);
});

broker_test!(publish_on_unopened_channel_is_channel_error, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    // A content method is judged once its content is complete (here: empty, header only).
    c.send_method(5, BASIC_PUBLISH, &basic_publish_args("", "q"));
    c.send(&content_header_frame(5, 0));
    let text = c.expect_connection_close(504);
    assert!(text.contains("expected 'channel.open'"), "{text:?}");
    assert_still_serving(b);
});

broker_test!(channel_method_on_channel_zero_is_channel_error, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.send_method(0, CHANNEL_OPEN, &Args::default().shortstr("").bytes());
    c.expect_connection_close(504);
    let mut c = Conn::handshake(b, &Handshake::default());
    let args = Args::default()
        .u16(0)
        .shortstr(&unique("q"))
        .u8(0)
        .table(&[])
        .bytes();
    c.send_method(0, QUEUE_DECLARE, &args);
    c.expect_connection_close(504);
    assert_still_serving(b);
});

broker_test!(heartbeat_on_nonzero_channel_is_unexpected_frame, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    c.send(&frame(FRAME_HEARTBEAT, 1, &[]));
    c.expect_connection_close(505);
    assert_still_serving(b);
});

// RabbitMQ answers undecodable method arguments with 501 FRAME_ERROR ("cannot decode"), not
// 502 SYNTAX_ERROR.
broker_test!(truncated_method_arguments_are_frame_error, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    // queue.declare whose queue name claims 5 octets but has 1, and nothing after it.
    c.send_method(1, QUEUE_DECLARE, &[0, 0, 5, b'a']);
    c.expect_connection_close(501);
    assert_still_serving(b);
});

// RabbitMQ 3.10's connection process crashes on an unknown class or method id and resets the
// socket; a broker may answer more politely (connection.close 540 or 503). Either way the
// connection ends and the broker keeps serving.
broker_test!(unknown_method_ends_connection, |b| {
    for m in [(60, 99), (99, 10)] {
        let mut c = Conn::handshake(b, &Handshake::default());
        c.open_channel(1);
        c.send_method(1, m, &[]);
        loop {
            match c.read_frame() {
                Ok(f) if f.is(CONNECTION_CLOSE) => {
                    let mut r = f.args();
                    let code = r.u16();
                    assert!(
                        code == 540 || code == 503,
                        "unknown method {m:?}: connection.close {code} {:?}",
                        r.shortstr()
                    );
                    let _ = c.sock.write_all(&method_frame(0, CONNECTION_CLOSE_OK, &[]));
                }
                Ok(f) if f.ty == FRAME_HEARTBEAT => {}
                Ok(f) => panic!("unknown method {m:?}: unexpected frame {f:?}"),
                Err(e) if is_closed(&e) => break,
                Err(e) => panic!("unknown method {m:?}: connection not ended: {e}"),
            }
        }
    }
    assert_still_serving(b);
});

broker_test!(second_channel_open_is_channel_error, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    c.send_method(1, CHANNEL_OPEN, &Args::default().shortstr("").bytes());
    c.expect_connection_close(504);
    assert_still_serving(b);
});

broker_test!(body_without_publish_is_unexpected_frame, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    c.send(&frame(FRAME_BODY, 1, b"hello"));
    c.expect_connection_close(505);
    // No method caused it: RabbitMQ names none.
    assert_eq!(c.close_ids, (0, 0));
    assert_still_serving(b);
});

broker_test!(header_without_publish_is_unexpected_frame, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    c.send(&content_header_frame(1, 5));
    c.expect_connection_close(505);
    assert_still_serving(b);
});

broker_test!(body_without_content_header_is_unexpected_frame, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    c.send_method(1, BASIC_PUBLISH, &basic_publish_args("", "q"));
    c.send(&frame(FRAME_BODY, 1, b"hello"));
    let text = c.expect_connection_close(505);
    // RabbitMQ's close names the publish whose content went wrong.
    assert_eq!(
        text,
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead"
    );
    assert_eq!(c.close_ids, BASIC_PUBLISH);
    assert_still_serving(b);
});

broker_test!(method_inside_content_is_unexpected_frame, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    c.send_method(1, BASIC_PUBLISH, &basic_publish_args("", "q"));
    c.send(&content_header_frame(1, 10));
    c.send(&frame(FRAME_BODY, 1, b"hello"));
    // 5 of 10 body octets sent; a method now interrupts the content.
    c.send_method(1, BASIC_PUBLISH, &basic_publish_args("", "q"));
    c.expect_connection_close(505);
    assert_eq!(c.close_ids, BASIC_PUBLISH);
    assert_still_serving(b);
});

broker_test!(channel_above_channel_max_is_refused, |b| {
    let h = Handshake {
        channel_max: 2,
        ..Handshake::default()
    };
    let mut c = Conn::handshake(b, &h);
    c.open_channel(1);
    c.open_channel(2);
    c.send_method(3, CHANNEL_OPEN, &Args::default().shortstr("").bytes());
    c.expect_connection_close(530);
    // RabbitMQ refuses the channel before any method on it runs, and names none.
    assert_eq!(c.close_ids, (0, 0));
    assert_still_serving(b);
});

broker_test!(truncated_frame_then_hangup_leaves_broker_up, |b| {
    for cut in [1usize, 3, 7, 12] {
        let mut c = Conn::handshake(b, &Handshake::default());
        let f = method_frame(0, CHANNEL_OPEN, &Args::default().shortstr("").bytes());
        c.send(&f[..cut.min(f.len() - 1)]);
        c.sock.shutdown(Shutdown::Both).unwrap();
    }
    // Also mid-handshake: half a protocol header, and half a start-ok.
    let mut c = Conn::connect(b);
    c.send(&PROTOCOL_HEADER[..4]);
    drop(c);
    let mut c = Conn::connect(b);
    c.send(PROTOCOL_HEADER);
    c.expect(CONNECTION_START);
    c.send(&method_frame(0, CONNECTION_START_OK, &[0; 20])[..15]);
    drop(c);
    assert_still_serving(b);
});

// ---------------------------------------------------------------------------------------
// Connection lifecycle
// ---------------------------------------------------------------------------------------

broker_test!(client_close_gets_close_ok_then_eof, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    c.send_method(
        0,
        CONNECTION_CLOSE,
        &Args::default()
            .u16(200)
            .shortstr("bye")
            .u16(0)
            .u16(0)
            .bytes(),
    );
    let f = c.expect(CONNECTION_CLOSE_OK);
    assert_eq!(f.channel, 0);
    // RabbitMQ then leaves closing the socket to the client (it gives up after 30 s); a
    // broker may also close at once. Either way nothing more is sent.
    c.expect_nothing_more(Duration::from_secs(1));
    drop(c);
    assert_still_serving(b);
});

broker_test!(heartbeat_timeout_closes_connection, |b| {
    let h = Handshake {
        heartbeat: 1,
        ..Handshake::default()
    };
    let start = Instant::now();
    let mut c = Conn::handshake(b, &h);
    c.sock
        .set_read_timeout(Some(Duration::from_secs(12)))
        .unwrap();
    // Send nothing; count the broker's heartbeats until it gives up on us.
    let mut heartbeats = 0;
    let closed_after = loop {
        match c.read_frame() {
            Ok(f) if f.ty == FRAME_HEARTBEAT => {
                assert_eq!(f.channel, 0, "heartbeat on channel {}", f.channel);
                assert!(
                    f.payload.is_empty(),
                    "heartbeat with payload {:?}",
                    f.payload
                );
                heartbeats += 1;
            }
            // Closing with connection.close first is tolerated; RabbitMQ just closes.
            Ok(f) if f.is(CONNECTION_CLOSE) => {
                let mut r = f.args();
                eprintln!(
                    "heartbeat timeout: connection.close {} {:?}",
                    r.u16(),
                    r.shortstr()
                );
            }
            Ok(f) => panic!("unexpected frame while idle: {f:?}"),
            Err(e) if is_closed(&e) => break start.elapsed(),
            Err(e) => panic!("the broker did not close an idle heartbeat=1 connection: {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not closed within 10 s"
        );
    };
    eprintln!("idle heartbeat=1 connection closed after {closed_after:?}, {heartbeats} heartbeats");
    assert!(
        closed_after >= Duration::from_secs(1),
        "closed too early: {closed_after:?}"
    );
    assert!(
        closed_after <= Duration::from_secs(10),
        "closed too late: {closed_after:?}"
    );
    assert!(
        heartbeats >= 1,
        "the broker sent no heartbeats in {closed_after:?}"
    );
    assert_still_serving(b);
});

broker_test!(heartbeats_keep_an_idle_client_alive, |b| {
    let h = Handshake {
        heartbeat: 1,
        ..Handshake::default()
    };
    let mut c = Conn::handshake(b, &h);
    // Answer every heartbeat for 4 s: the connection stays open.
    let start = Instant::now();
    let mut heartbeats = 0;
    while start.elapsed() < Duration::from_secs(4) {
        let f = c
            .read_frame()
            .expect("connection stays open while we heartbeat");
        assert_eq!(f.ty, FRAME_HEARTBEAT, "unexpected frame {f:?}");
        heartbeats += 1;
        c.send(&frame(FRAME_HEARTBEAT, 0, &[]));
    }
    assert!(heartbeats >= 2, "only {heartbeats} heartbeats in 4 s");
    c.open_channel(1);
    let f = c.declare_queue(1, &unique("hb"));
    assert!(f.is(QUEUE_DECLARE_OK), "{f:?}");
});

// ---------------------------------------------------------------------------------------
// Authentication and vhosts
// ---------------------------------------------------------------------------------------

broker_test!(wrong_password_with_capability_is_access_refused, |b| {
    let h = Handshake {
        pass: "wrong".into(),
        ..Handshake::default()
    };
    let mut c = Conn::connect(b);
    c.send(PROTOCOL_HEADER);
    c.expect(CONNECTION_START);
    c.send_start_ok(&h);
    c.expect_connection_close(403);
    assert_still_serving(b);
});

broker_test!(wrong_password_without_capability_just_closes, |b| {
    let h = Handshake {
        pass: "wrong".into(),
        auth_failure_close: false,
        ..Handshake::default()
    };
    let mut c = Conn::connect(b);
    c.send(PROTOCOL_HEADER);
    c.expect(CONNECTION_START);
    c.send_start_ok(&h);
    c.expect_eof();
    assert_still_serving(b);
});

broker_test!(unknown_user_is_access_refused, |b| {
    let h = Handshake {
        user: unique("nobody"),
        ..Handshake::default()
    };
    let mut c = Conn::connect(b);
    c.send(PROTOCOL_HEADER);
    c.expect(CONNECTION_START);
    c.send_start_ok(&h);
    c.expect_connection_close(403);
});

broker_test!(start_offers_plain_and_amqplain, |b| {
    let mut c = Conn::connect(b);
    c.send(PROTOCOL_HEADER);
    let f = c.expect(CONNECTION_START);
    assert_eq!(f.channel, 0);
    let mut r = f.args();
    let (major, minor) = (r.take(1)[0], r.take(1)[0]);
    assert_eq!((major, minor), (0, 9));
    let _server_properties = r.longstr();
    let mechanisms = String::from_utf8(r.longstr()).unwrap();
    let locales = String::from_utf8(r.longstr()).unwrap();
    let mechs: Vec<&str> = mechanisms.split(' ').collect();
    assert!(mechs.contains(&"PLAIN"), "mechanisms {mechanisms:?}");
    assert!(mechs.contains(&"AMQPLAIN"), "mechanisms {mechanisms:?}");
    assert!(
        locales.split(' ').any(|l| l == "en_US"),
        "locales {locales:?}"
    );
});

broker_test!(guest_and_admin_log_in_with_plain_and_amqplain, |b| {
    for (user, pass) in [("guest", "guest"), ("admin", "admin")] {
        for mechanism in ["PLAIN", "AMQPLAIN"] {
            let h = Handshake {
                user: user.into(),
                pass: pass.into(),
                mechanism,
                ..Handshake::default()
            };
            let mut c = Conn::handshake(b, &h);
            c.open_channel(1);
            let f = c.declare_queue(1, &unique("login"));
            assert!(f.is(QUEUE_DECLARE_OK), "{user} with {mechanism}: {f:?}");
        }
    }
});

broker_test!(unknown_mechanism_is_refused, |b| {
    let mut c = Conn::connect(b);
    c.send(PROTOCOL_HEADER);
    c.expect(CONNECTION_START);
    let args = Args::default()
        .table(&client_properties(true))
        .shortstr("NOPE")
        .longstr(b"\0guest\0guest")
        .shortstr("en_US")
        .bytes();
    c.send_method(0, CONNECTION_START_OK, &args);
    // RabbitMQ: a handshake error other than a failed login is answered by silence (it waits
    // 3 s, SILENT_CLOSE_DELAY) and closing the socket, with no connection.close.
    c.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    c.expect_eof();
    assert_still_serving(b);
});

broker_test!(open_unknown_vhost_is_not_allowed, |b| {
    let mut c = Conn::connect(b);
    c.send(PROTOCOL_HEADER);
    c.expect(CONNECTION_START);
    let h = Handshake::default();
    c.send_start_ok(&h);
    let tune = c.expect(CONNECTION_TUNE);
    c.tune_ok(&h, &tune);
    c.open("/nope");
    c.expect_connection_close(530);
    assert_still_serving(b);
});

// ---------------------------------------------------------------------------------------
// Answers as RabbitMQ 3.10 gives them (issue 15): channel.flow, the method a close names,
// connection.update-secret, connection.tune-ok negotiation, protocol headers
// ---------------------------------------------------------------------------------------

broker_test!(channel_flow_active_is_acknowledged, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    c.send_method(1, CHANNEL_FLOW, &[1]);
    let f = c.expect(CHANNEL_FLOW_OK);
    assert_eq!((f.channel, f.args().take(1)[0]), (1, 1));
    // The channel still works.
    let f = c.declare_queue(1, &unique("flow"));
    assert!(f.is(QUEUE_DECLARE_OK), "{f:?}");
});

// rabbit_channel: `protocol_error(not_implemented, "active=false")`, a hard error.
broker_test!(channel_flow_inactive_is_not_implemented, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    c.send_method(1, CHANNEL_FLOW, &[0]);
    let text = c.expect_connection_close(540);
    assert_eq!(text, "NOT_IMPLEMENTED - active=false");
    assert_eq!(c.close_ids, CHANNEL_FLOW);
    assert_still_serving(b);
});

broker_test!(a_refused_declare_names_queue_declare, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    let name = unique("inequivalent");
    let declare = |durable: bool| {
        Args::default()
            .u16(0)
            .shortstr(&name)
            .u8(if durable { 0b10 } else { 0 })
            .table(&[])
            .bytes()
    };
    c.send_method(1, QUEUE_DECLARE, &declare(false));
    c.expect(QUEUE_DECLARE_OK);
    c.send_method(1, QUEUE_DECLARE, &declare(true));
    let (text, ids) = c.expect_channel_close(1, 406);
    assert!(text.contains("inequivalent arg 'durable'"), "{text:?}");
    assert_eq!(ids, QUEUE_DECLARE);
    // A refused passive declare, answered by the shard that owns the metadata, too.
    c.open_channel(2);
    let passive = Args::default()
        .u16(0)
        .shortstr(&unique("missing"))
        .u8(0b1)
        .table(&[])
        .bytes();
    c.send_method(2, QUEUE_DECLARE, &passive);
    let (_, ids) = c.expect_channel_close(2, 404);
    assert_eq!(ids, QUEUE_DECLARE);
    // Clean up the non-exclusive queue.
    c.open_channel(3);
    let delete = Args::default().u16(0).shortstr(&name).u8(0).bytes();
    c.send_method(3, (50, 40), &delete);
    c.expect((50, 41));
});

broker_test!(a_publish_to_a_missing_exchange_names_basic_publish, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    c.send_method(
        1,
        BASIC_PUBLISH,
        &basic_publish_args(&unique("no-such-x"), "rk"),
    );
    c.send(&content_header_frame(1, 0));
    let (text, ids) = c.expect_channel_close(1, 404);
    assert!(text.starts_with("NOT_FOUND - no exchange"), "{text:?}");
    assert_eq!(ids, BASIC_PUBLISH);
    // A basic.get on a missing queue: refused by the queue's shard, named as basic.get.
    c.open_channel(2);
    let get = Args::default()
        .u16(0)
        .shortstr(&unique("no-such-q"))
        .u8(0)
        .bytes();
    c.send_method(2, (60, 70), &get);
    let (_, ids) = c.expect_channel_close(2, 404);
    assert_eq!(ids, (60, 70));
});

broker_test!(a_content_header_of_another_class_names_basic_publish, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    c.send_method(1, BASIC_PUBLISH, &basic_publish_args("", "q"));
    let header = Args::default().u16(61).u16(0).u64(0).u16(0).bytes();
    c.send(&frame(FRAME_HEADER, 1, &header));
    let text = c.expect_connection_close(505);
    assert_eq!(
        text,
        "UNEXPECTED_FRAME - expected content header for class 60, got one for class 61 instead"
    );
    assert_eq!(c.close_ids, BASIC_PUBLISH);
    assert_still_serving(b);
});

// RabbitMQ 3.10's internal user database accepts any new secret for a PLAIN login
// (rabbit_auth_backend_internal:update_state keeps the user): update-secret-ok, and the
// connection goes on.
broker_test!(update_secret_is_acknowledged, |b| {
    let mut c = Conn::handshake(b, &Handshake::default());
    c.open_channel(1);
    for secret in [&b"guest"[..], b"another"] {
        let args = Args::default().longstr(secret).shortstr("rotation").bytes();
        c.send_method(0, CONNECTION_UPDATE_SECRET, &args);
        let f = c.expect(CONNECTION_UPDATE_SECRET_OK);
        assert_eq!(f.channel, 0);
    }
    let f = c.declare_queue(1, &unique("secret"));
    assert!(f.is(QUEUE_DECLARE_OK), "{f:?}");
});

/// Sends connection.tune-ok with these values and expects what RabbitMQ 3.10 does with a
/// refused negotiation: no close frame, silence, then the socket closed (after its 3 s
/// SILENT_CLOSE_DELAY).
fn refused_tune_ok(b: &Broker, channel_max: u16, frame_max: u32) {
    let mut c = Conn::connect(b);
    c.send(PROTOCOL_HEADER);
    c.expect(CONNECTION_START);
    c.send_start_ok(&Handshake::default());
    c.expect(CONNECTION_TUNE);
    let args = Args::default()
        .u16(channel_max)
        .u32(frame_max)
        .u16(0)
        .bytes();
    c.send_method(0, CONNECTION_TUNE_OK, &args);
    c.open("/");
    c.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match c.read_frame() {
        Err(e) if is_closed(&e) => {}
        other => {
            panic!("tune-ok {channel_max}/{frame_max}: expected the socket closed, got {other:?}")
        }
    }
}

broker_test!(tune_ok_outside_the_servers_limits_is_refused, |b| {
    let mut c = Conn::connect(b);
    c.send(PROTOCOL_HEADER);
    c.expect(CONNECTION_START);
    c.send_start_ok(&Handshake::default());
    let tune = c.expect(CONNECTION_TUNE);
    let mut r = tune.args();
    let (channel_max, frame_max) = (r.u16(), r.u32());
    drop(c);
    // channel_max 0 means "no limit", above the server's.
    refused_tune_ok(b, 0, frame_max);
    refused_tune_ok(b, channel_max + 1, frame_max);
    // frame_max 0 is "no limit" too; below 4096 is under the protocol's minimum.
    refused_tune_ok(b, channel_max, 0);
    refused_tune_ok(b, channel_max, 4095);
    refused_tune_ok(b, channel_max, frame_max + 1);
    // At the limits, and below the server's, the connection opens.
    for (cm, fm) in [(channel_max, frame_max), (1, 4096)] {
        let h = Handshake {
            channel_max: cm,
            frame_max: fm,
            ..Handshake::default()
        };
        let mut c = Conn::handshake(b, &h);
        c.open_channel(1);
    }
    assert_still_serving(b);
});

// AMQP 0-9's header RabbitMQ serves as 0-9-1; 0-8's and 1.0's get 0-9-1's header back.
broker_test!(protocol_headers_of_other_versions, |b| {
    let mut c = Conn::connect(b);
    c.send(b"AMQP\x01\x01\x00\x09");
    let f = c.expect(CONNECTION_START);
    let mut r = f.args();
    assert_eq!((r.take(1)[0], r.take(1)[0]), (0, 9));
    refused_header(b, b"AMQP\x01\x01\x00\x08");
    refused_header(b, b"AMQP\x00\x01\x00\x00");
    refused_header(b, b"AMQP\x03\x01\x00\x00");
    refused_header(b, b"AMQP\x00\x00\x0a\x00");
    assert_still_serving(b);
});

// ---------------------------------------------------------------------------------------
// The order of answers
// ---------------------------------------------------------------------------------------

// rabbit_channel sends queue.delete-ok from the call that deleted the queue and the
// basic.cancel of its own consumers when the queue's exit reaches it, later; py-amqp fails
// a queue_delete that sees the cancel first (kombu's test_ack_from_another_thread).
broker_test!(
    queue_delete_ok_precedes_the_cancel_of_the_deleting_channels_consumer,
    |b| {
        let mut c = Conn::handshake(b, &Handshake::default());
        let name = unique("delete-cancel");
        c.open_channel(1);
        c.open_channel(2);
        let f = c.declare_queue(1, &name);
        assert!(f.is(QUEUE_DECLARE_OK), "{f:?}");
        for channel in [1, 2] {
            let consume = Args::default()
                .u16(0)
                .shortstr(&name)
                .shortstr(&format!("ctag-{channel}"))
                .u8(0)
                .table(&[])
                .bytes();
            c.send_method(channel, BASIC_CONSUME, &consume);
            c.expect(BASIC_CONSUME_OK);
        }
        let delete = Args::default().u16(0).shortstr(&name).u8(0).bytes();
        c.send_method(1, QUEUE_DELETE, &delete);
        // Channel 1: delete-ok, then the cancel; channel 2's cancel may come at any point.
        let frames: Vec<Frame> = (0..3).map(|_| c.next()).collect();
        let on = |channel: u16| -> Vec<&Frame> {
            frames.iter().filter(|f| f.channel == channel).collect()
        };
        let first = on(1);
        assert_eq!(first.len(), 2, "{frames:?}");
        assert!(first[0].is(QUEUE_DELETE_OK), "{frames:?}");
        assert!(first[1].is(BASIC_CANCEL), "{frames:?}");
        assert_eq!(first[1].args().shortstr(), "ctag-1");
        let second = on(2);
        assert!(
            second.len() == 1 && second[0].is(BASIC_CANCEL),
            "{frames:?}"
        );
        assert_eq!(second[0].args().shortstr(), "ctag-2");
        assert_still_serving(b);
    }
);

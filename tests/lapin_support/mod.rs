//! Shared helpers for the `lapin_*` integration tests: deadlines around every
//! await, connection and channel shortcuts, and ways to observe the channel and
//! connection closes that lapin only reports asynchronously.
//!
//! Include with `#[path = "lapin_support/mod.rs"] mod lapin_support;`.
#![allow(dead_code, unused_imports)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::{future, StreamExt};

pub use lapin::message::{BasicGetMessage, BasicReturnMessage, Delivery};
pub use lapin::options::*;
pub use lapin::publisher_confirm::Confirmation;
pub use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
pub use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, Error, ExchangeKind,
};

/// Every test body must finish within this, so a broken broker fails the test
/// instead of hanging the suite.
pub const TEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long a single expected event (a delivery, a close) may take.
pub const STEP_DEADLINE: Duration = Duration::from_secs(5);
/// How long we watch for something that must *not* happen.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// Runs an async test body on the current thread with the overall deadline.
pub fn run<F: Future<Output = ()>>(body: F) {
    future::block_on(future::or(body, async {
        async_io::Timer::after(TEST_DEADLINE).await;
        panic!("test did not finish within {:?}", TEST_DEADLINE);
    }))
}

/// Like `run`, with a longer overall deadline for bodies that wait on timers
/// (TTLs, queue expiry) on a loaded machine.
pub fn run_for<F: Future<Output = ()>>(limit: Duration, body: F) {
    future::block_on(future::or(body, async {
        async_io::Timer::after(limit).await;
        panic!("test did not finish within {:?}", limit);
    }))
}

/// `Some(output)` if `fut` finishes within `limit`, else `None`.
pub async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(fut.await) }, async {
        async_io::Timer::after(limit).await;
        None
    })
    .await
}

/// Awaits `fut` for at most STEP_DEADLINE, panicking with `what` otherwise.
pub async fn step<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match within(STEP_DEADLINE, fut).await {
        Some(v) => v,
        None => panic!("timed out after {:?} waiting for {}", STEP_DEADLINE, what),
    }
}

pub async fn sleep(d: Duration) {
    async_io::Timer::after(d).await;
}

/// Polls `cond` every 10 ms until it holds or `limit` passes (async flavour of
/// `common::wait_until`, usable inside `run`).
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- connecting

pub async fn connect(url: &str) -> Connection {
    step(
        "connection",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {} failed: {}", url, e))
}

pub async fn channel(conn: &Connection) -> Channel {
    step("channel.open", conn.create_channel())
        .await
        .expect("channel.open")
}

/// A connection and one channel on it.
pub async fn open(url: &str) -> (Connection, Channel) {
    let conn = connect(url).await;
    let ch = channel(&conn).await;
    (conn, ch)
}

/// A channel in confirm mode on a fresh connection.
pub async fn open_confirming(url: &str) -> (Connection, Channel) {
    let (conn, ch) = open(url).await;
    step(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    (conn, ch)
}

// ---------------------------------------------------------------- errors

/// The AMQP reply code carried by a lapin error, if it is a protocol error.
pub fn code_of(e: &Error) -> Option<u16> {
    match e {
        Error::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

pub fn text_of(e: &Error) -> String {
    match e {
        Error::ProtocolError(amqp) => amqp.get_message().to_string(),
        other => other.to_string(),
    }
}

/// Asserts that `r` failed with AMQP reply `code`; returns the reply text.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(r: lapin::Result<T>, code: u16) -> String {
    match r {
        Ok(v) => panic!("expected a close with reply code {}, got Ok({:?})", code, v),
        Err(e) => {
            assert_eq!(
                code_of(&e),
                Some(code),
                "expected reply code {}, got error {:?}",
                code,
                e
            );
            // Printed so that `--nocapture` runs document the exact reply texts.
            eprintln!("observed close {}: {}", code, text_of(&e));
            text_of(&e)
        }
    }
}

/// Catches the error a channel or connection reports when the server closes it.
/// Create it *before* the operation that should fail.
#[derive(Clone, Default)]
pub struct ErrorWatch(Arc<Mutex<Option<Error>>>);

impl ErrorWatch {
    pub fn channel(ch: &Channel) -> ErrorWatch {
        let w = ErrorWatch::default();
        let slot = w.0.clone();
        ch.on_error(move |e| {
            slot.lock().unwrap().get_or_insert(e);
        });
        w
    }

    pub fn connection(conn: &Connection) -> ErrorWatch {
        let w = ErrorWatch::default();
        let slot = w.0.clone();
        conn.on_error(move |e| {
            slot.lock().unwrap().get_or_insert(e);
        });
        w
    }

    pub fn get(&self) -> Option<Error> {
        self.0.lock().unwrap().clone()
    }

    /// Waits for the error; panics after STEP_DEADLINE.
    pub async fn wait(&self) -> Error {
        let slot = self.0.clone();
        if !eventually(STEP_DEADLINE, || slot.lock().unwrap().is_some()).await {
            panic!("no close arrived within {:?}", STEP_DEADLINE);
        }
        self.get().unwrap()
    }

    /// Waits for the error and asserts its reply code; returns the reply text.
    pub async fn expect_code(&self, code: u16) -> String {
        let e = self.wait().await;
        assert_eq!(code_of(&e), Some(code), "unexpected close: {:?}", e);
        eprintln!("observed close {}: {}", code, text_of(&e));
        text_of(&e)
    }
}

/// Waits until the channel is no longer usable (closed by the server).
pub async fn wait_channel_closed(ch: &Channel) {
    let ok = eventually(STEP_DEADLINE, || !ch.status().connected()).await;
    assert!(
        ok,
        "channel {} still open, state {:?}",
        ch.id(),
        ch.status().state()
    );
}

pub async fn wait_connection_closed(conn: &Connection) {
    let ok = eventually(STEP_DEADLINE, || !conn.status().connected()).await;
    assert!(
        ok,
        "connection still open, state {:?}",
        conn.status().state()
    );
}

/// Proves a connection still works: a new channel can declare, publish to and
/// get from a fresh queue.
pub async fn assert_connection_usable(conn: &Connection) {
    let ch = channel(conn).await;
    assert_channel_usable(&ch).await;
    let _ = ch.close(200, "ok").await;
}

/// Proves a channel still works with a full declare → publish → get round trip.
pub async fn assert_channel_usable(ch: &Channel) {
    let q = declare_server_named(ch).await;
    publish(ch, "", &q, b"still alive").await;
    let got = get_within(ch, &q, STEP_DEADLINE).await;
    assert_eq!(got.delivery.data, b"still alive");
}

// ---------------------------------------------------------------- topology

pub async fn declare_queue(ch: &Channel, name: &str) -> lapin::Queue {
    step(
        "queue.declare",
        ch.queue_declare(name, QueueDeclareOptions::default(), FieldTable::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("queue.declare {}: {}", name, e))
}

pub async fn declare_queue_with(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> lapin::Result<lapin::Queue> {
    step("queue.declare", ch.queue_declare(name, options, args)).await
}

/// An exclusive server-named queue (lives on the declaring connection's shard).
pub async fn declare_server_named(ch: &Channel) -> String {
    let q = step(
        "queue.declare",
        ch.queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("server-named queue.declare");
    q.name().to_string()
}

pub async fn passive_declare_queue(ch: &Channel, name: &str) -> lapin::Result<lapin::Queue> {
    step(
        "passive queue.declare",
        ch.queue_declare(
            name,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
}

pub async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    step(
        "exchange.declare",
        ch.exchange_declare(
            name,
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("exchange.declare {}: {}", name, e))
}

pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    bind_with(ch, queue, exchange, key, FieldTable::default()).await
}

pub async fn bind_with(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    step(
        "queue.bind",
        ch.queue_bind(queue, exchange, key, QueueBindOptions::default(), args),
    )
    .await
    .unwrap_or_else(|e| panic!("queue.bind {} -> {} ({}): {}", exchange, queue, key, e))
}

/// Whether a queue exists, checked on a throw-away channel of `conn`.
pub async fn queue_exists(conn: &Connection, name: &str) -> bool {
    let ch = channel(conn).await;
    match passive_declare_queue(&ch, name).await {
        Ok(_) => {
            let _ = ch.close(200, "ok").await;
            true
        }
        Err(e) if code_of(&e) == Some(404) => false,
        Err(e) => panic!("passive declare of {}: {}", name, e),
    }
}

pub async fn exchange_exists(conn: &Connection, name: &str) -> bool {
    let ch = channel(conn).await;
    let r = step(
        "passive exchange.declare",
        ch.exchange_declare(
            name,
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    match r {
        Ok(()) => {
            let _ = ch.close(200, "ok").await;
            true
        }
        Err(e) if code_of(&e) == Some(404) => false,
        Err(e) => panic!("passive declare of exchange {}: {}", name, e),
    }
}

/// Ready-message count of a queue, via a passive declare on a new channel.
pub async fn message_count(conn: &Connection, name: &str) -> u32 {
    let ch = channel(conn).await;
    let q = passive_declare_queue(&ch, name)
        .await
        .unwrap_or_else(|e| panic!("passive declare {}: {}", name, e));
    let _ = ch.close(200, "ok").await;
    q.message_count()
}

/// Waits until the queue's ready count reaches `n` (deliveries and acks are
/// asynchronous, so counts are always checked with a deadline).
pub async fn wait_message_count(conn: &Connection, name: &str, n: u32) {
    let end = Instant::now() + STEP_DEADLINE;
    loop {
        let c = message_count(conn, name).await;
        if c == n {
            return;
        }
        if Instant::now() >= end {
            panic!("queue {} has {} ready messages, expected {}", name, c, n);
        }
        sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- messages

/// Publishes with default properties (not mandatory) and waits for the frames
/// to be written; on a confirm channel also waits for the ack.
pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_props(ch, exchange, key, body, BasicProperties::default()).await
}

pub async fn publish_props(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let confirm = step(
        "basic.publish",
        ch.basic_publish(exchange, key, BasicPublishOptions::default(), body, props),
    )
    .await
    .expect("basic.publish");
    if ch.status().confirm() {
        let c = step("publisher confirm", confirm).await.expect("confirm");
        assert!(c.is_ack(), "publish was not acked: {:?}", c);
    }
}

/// Publishes on a confirm channel and returns the confirmation.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    options: BasicPublishOptions,
    body: &[u8],
    props: BasicProperties,
) -> lapin::Result<Confirmation> {
    let confirm = step(
        "basic.publish",
        ch.basic_publish(exchange, key, options, body, props),
    )
    .await?;
    step("publisher confirm", confirm).await
}

/// Publishes `bodies` to the default exchange on a confirm channel, so the
/// messages are known to be enqueued when this returns.
pub async fn fill_queue(ch: &Channel, queue: &str, bodies: &[&[u8]]) {
    for body in bodies {
        let c = publish_confirmed(
            ch,
            "",
            queue,
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .expect("publish");
        assert!(c.is_ack(), "not acked: {:?}", c);
    }
}

pub async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<BasicGetMessage> {
    step("basic.get", ch.basic_get(queue, BasicGetOptions { no_ack }))
        .await
        .unwrap_or_else(|e| panic!("basic.get {}: {}", queue, e))
}

/// basic.get (no_ack) repeated until a message arrives or `limit` passes.
pub async fn get_within(ch: &Channel, queue: &str, limit: Duration) -> BasicGetMessage {
    let end = Instant::now() + limit;
    loop {
        if let Some(m) = get(ch, queue, true).await {
            return m;
        }
        if Instant::now() >= end {
            panic!("no message arrived in {} within {:?}", queue, limit);
        }
        sleep(Duration::from_millis(10)).await;
    }
}

pub async fn consume(
    ch: &Channel,
    queue: &str,
    tag: &str,
    options: BasicConsumeOptions,
) -> Consumer {
    step(
        "basic.consume",
        ch.basic_consume(queue, tag, options, FieldTable::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("basic.consume {}: {}", queue, e))
}

/// The next delivery of a consumer; panics on timeout, error or cancel.
pub async fn next_delivery(consumer: &mut Consumer) -> Delivery {
    match within(STEP_DEADLINE, consumer.next()).await {
        Some(Some(Ok(d))) => d,
        Some(Some(Err(e))) => panic!("consumer error: {}", e),
        Some(None) => panic!("consumer was cancelled"),
        None => panic!("no delivery within {:?}", STEP_DEADLINE),
    }
}

/// Asserts the consumer receives nothing during QUIET_PERIOD.
pub async fn assert_no_delivery(consumer: &mut Consumer) {
    if let Some(item) = within(QUIET_PERIOD, consumer.next()).await {
        match item {
            Some(Ok(d)) => panic!(
                "unexpected delivery {:?} (tag {})",
                String::from_utf8_lossy(&d.data),
                d.delivery_tag
            ),
            Some(Err(e)) => panic!("consumer error: {}", e),
            None => panic!("consumer was cancelled"),
        }
    }
}

/// Waits for the server to cancel the consumer (basic.cancel from the broker):
/// lapin ends the consumer stream.
pub async fn expect_cancelled(consumer: &mut Consumer) {
    loop {
        match within(STEP_DEADLINE, consumer.next()).await {
            Some(None) => return,
            Some(Some(Ok(_))) => continue,
            Some(Some(Err(e))) => panic!("consumer error instead of cancel: {}", e),
            None => panic!("consumer not cancelled within {:?}", STEP_DEADLINE),
        }
    }
}

/// Collects bodies of the next `n` deliveries as strings.
pub async fn next_bodies(consumer: &mut Consumer, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = next_delivery(consumer).await;
        out.push(String::from_utf8_lossy(&d.data).into_owned());
    }
    out
}

pub fn body_str(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

// ---------------------------------------------------------------- routing

/// Publishes one message through `exchange` on a confirm channel and returns
/// the indices of `queues` that received it (each checked with basic.get on
/// `reader`, a channel of another connection). Leaves the queues empty.
pub async fn routed_to(
    publisher: &Channel,
    reader: &Channel,
    exchange: &str,
    key: &str,
    headers: Option<FieldTable>,
    queues: &[String],
) -> Vec<usize> {
    let mut props = BasicProperties::default();
    if let Some(h) = headers {
        props = props.with_headers(h);
    }
    let body = format!("routed {} {:?}", exchange, key);
    let c = publish_confirmed(
        publisher,
        exchange,
        key,
        BasicPublishOptions::default(),
        body.as_bytes(),
        props,
    )
    .await
    .expect("publish");
    assert!(c.is_ack(), "not acked: {:?}", c);
    let mut hit = Vec::new();
    for (i, q) in queues.iter().enumerate() {
        let mut copies = 0;
        while let Some(m) = get(reader, q, true).await {
            assert_eq!(m.delivery.data, body.as_bytes());
            copies += 1;
        }
        assert!(
            copies <= 1,
            "queue {} got {} copies of one message",
            q,
            copies
        );
        if copies == 1 {
            hit.push(i);
        }
    }
    hit
}

pub fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

pub fn ls(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

// ---------------------------------------------------------------- raw frames

/// A bare TCP conversation with the broker, for what lapin does not expose
/// (server properties, the server's tune proposal).
pub mod raw {
    use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, WriteContext};
    use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    pub struct RawConn {
        pub stream: TcpStream,
        buf: Vec<u8>,
    }

    impl RawConn {
        /// Connects and sends the AMQP 0-9-1 protocol header.
        pub fn open(addr: SocketAddr) -> RawConn {
            let stream =
                TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("tcp connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            stream.set_nodelay(true).unwrap();
            let mut c = RawConn {
                stream,
                buf: Vec::new(),
            };
            c.stream.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
            c
        }

        pub fn send(&mut self, frame: &AMQPFrame) {
            let ctx = gen_frame(frame)(WriteContext::from(Vec::new())).expect("serialise frame");
            self.stream.write_all(&ctx.write).unwrap();
        }

        /// Reads one frame (panics on EOF or after the 5 s read timeout).
        pub fn read(&mut self) -> AMQPFrame {
            loop {
                if !self.buf.is_empty() {
                    let parsed = parse_frame(&self.buf[..]).map(|(rest, f)| (rest.len(), f));
                    match parsed {
                        Ok((rest_len, frame)) => {
                            let used = self.buf.len() - rest_len;
                            self.buf.drain(..used);
                            return frame;
                        }
                        Err(e) if e.is_incomplete() => {}
                        Err(e) => panic!("unparsable frame from server: {:?}", e),
                    }
                }
                let mut chunk = [0u8; 65536];
                let n = self.stream.read(&mut chunk).expect("read from broker");
                assert!(n > 0, "broker closed the socket");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        pub fn read_start(&mut self) -> connection::Start {
            match self.read() {
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(s))) => s,
                other => panic!("expected connection.start, got {:?}", other),
            }
        }

        /// Answers connection.start with PLAIN credentials and returns the tune.
        pub fn start_ok_plain(&mut self, user: &str, pass: &str) -> connection::Tune {
            let start_ok = connection::StartOk {
                client_properties: Default::default(),
                mechanism: "PLAIN".into(),
                response: format!("\0{}\0{}", user, pass).into(),
                locale: "en_US".into(),
            };
            self.send(&AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
            ));
            match self.read() {
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
                other => panic!("expected connection.tune, got {:?}", other),
            }
        }

        /// A whole handshake (PLAIN, the server's tune, vhost "/") and channel 1 open.
        pub fn open_channel_1(addr: SocketAddr, user: &str, pass: &str) -> RawConn {
            let mut c = RawConn::open(addr);
            c.read_start();
            let tune = c.start_ok_plain(user, pass);
            c.send(&AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                    channel_max: tune.channel_max,
                    frame_max: tune.frame_max,
                    heartbeat: 0,
                })),
            ));
            c.send(&AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                    virtual_host: "/".into(),
                })),
            ));
            match c.read() {
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
                other => panic!("expected connection.open-ok, got {:?}", other),
            }
            c.send(&AMQPFrame::Method(
                1,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            ));
            match c.read() {
                AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) => {}
                other => panic!("expected channel.open-ok, got {:?}", other),
            }
            c
        }

        /// Reads one frame undecoded: (type, channel, payload). Panics on EOF or after
        /// the 5 s read timeout.
        pub fn read_undecoded(&mut self) -> (u8, u16, Vec<u8>) {
            loop {
                if self.buf.len() >= 7 {
                    let size =
                        u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]])
                            as usize;
                    // Header, payload and the frame-end octet.
                    if self.buf.len() > 7 + size {
                        let kind = self.buf[0];
                        let chan = u16::from_be_bytes([self.buf[1], self.buf[2]]);
                        let payload = self.buf[7..7 + size].to_vec();
                        assert_eq!(self.buf[7 + size], 0xCE, "bad frame end");
                        self.buf.drain(..7 + size + 1);
                        return (kind, chan, payload);
                    }
                }
                let mut chunk = [0u8; 65536];
                let n = self.stream.read(&mut chunk).expect("read from broker");
                assert!(n > 0, "broker closed the socket");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        /// basic.get (no-ack) on channel 1 of a connection made by `open_channel_1`;
        /// returns the message's content header properties as they were on the wire,
        /// or None for basic.get-empty.
        pub fn get_wire_properties(&mut self, queue: &str) -> Option<super::wire::Properties> {
            self.send(&AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                    queue: queue.into(),
                    no_ack: true,
                })),
            ));
            let (kind, _, payload) = self.read_undecoded();
            assert_eq!(kind, 1, "expected a method frame");
            let method = (
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            );
            match method {
                (60, 72) => return None,
                (60, 71) => {}
                other => panic!("expected basic.get-ok or get-empty, got method {:?}", other),
            }
            let (kind, _, header) = self.read_undecoded();
            assert_eq!(kind, 2, "expected a content header frame");
            let props = super::wire::parse_properties(&header);
            let mut left = props.body_size;
            while left > 0 {
                let (kind, _, body) = self.read_undecoded();
                assert_eq!(kind, 3, "expected a body frame");
                left -= body.len() as u64;
            }
            Some(props)
        }
    }
}

/// Content header properties decoded by hand, keeping field-table entries in wire order
/// with their type tags (lapin's tables are sorted maps and lose both).
pub mod wire {
    #[derive(Debug, Clone, PartialEq)]
    pub enum Value {
        Bool(bool),
        /// Every integer type, with its tag telling which one it was.
        Int(i64),
        UInt(u64),
        Float(f64),
        Decimal(u8, u32),
        Str(Vec<u8>),
        Bytes(Vec<u8>),
        Array(Vec<(char, Value)>),
        Timestamp(u64),
        Table(Vec<(String, char, Value)>),
        Void,
    }

    impl Value {
        pub fn str(&self) -> Option<String> {
            match self {
                Value::Str(s) => Some(String::from_utf8_lossy(s).into_owned()),
                _ => None,
            }
        }
    }

    /// A compact rendering of a wire-order table, `{key:tag=value, ...}`, for messages.
    pub fn render(t: &[(String, char, Value)]) -> String {
        let items: Vec<String> = t
            .iter()
            .map(|(k, c, v)| format!("{k}:{c}={}", render_value(v)))
            .collect();
        format!("{{{}}}", items.join(", "))
    }

    fn render_value(v: &Value) -> String {
        match v {
            Value::Str(s) => format!("{:?}", String::from_utf8_lossy(s)),
            Value::Array(items) => {
                let items: Vec<String> = items
                    .iter()
                    .map(|(c, v)| format!("{c}={}", render_value(v)))
                    .collect();
                format!("[{}]", items.join(", "))
            }
            Value::Table(t) => render(t),
            other => format!("{other:?}"),
        }
    }

    /// Looks a key up in a wire-order table.
    pub fn lookup<'a>(t: &'a [(String, char, Value)], key: &str) -> Option<(char, &'a Value)> {
        t.iter().find(|(k, _, _)| k == key).map(|(_, c, v)| (*c, v))
    }

    /// The keys of a wire-order table, in order.
    pub fn keys(t: &[(String, char, Value)]) -> Vec<String> {
        t.iter().map(|(k, _, _)| k.clone()).collect()
    }

    #[derive(Debug, Clone, Default)]
    pub struct Properties {
        pub body_size: u64,
        pub flags: u16,
        pub headers: Option<Vec<(String, char, Value)>>,
        pub expiration: Option<String>,
        pub priority: Option<u8>,
    }

    struct Cursor<'a> {
        b: &'a [u8],
        at: usize,
    }

    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> &'a [u8] {
            let s = &self.b[self.at..self.at + n];
            self.at += n;
            s
        }
        fn u8(&mut self) -> u8 {
            self.take(1)[0]
        }
        fn u16(&mut self) -> u16 {
            u16::from_be_bytes(self.take(2).try_into().unwrap())
        }
        fn u32(&mut self) -> u32 {
            u32::from_be_bytes(self.take(4).try_into().unwrap())
        }
        fn u64(&mut self) -> u64 {
            u64::from_be_bytes(self.take(8).try_into().unwrap())
        }
        fn short_str(&mut self) -> String {
            let n = self.u8() as usize;
            String::from_utf8_lossy(self.take(n)).into_owned()
        }
        fn long_bytes(&mut self) -> Vec<u8> {
            let n = self.u32() as usize;
            self.take(n).to_vec()
        }
        fn value(&mut self) -> (char, Value) {
            let tag = self.u8() as char;
            let v = match tag {
                't' => Value::Bool(self.u8() != 0),
                'b' => Value::Int(self.u8() as i8 as i64),
                'B' => Value::UInt(self.u8() as u64),
                's' => Value::Int(self.u16() as i16 as i64),
                'u' => Value::UInt(self.u16() as u64),
                'I' => Value::Int(self.u32() as i32 as i64),
                'i' => Value::UInt(self.u32() as u64),
                'l' => Value::Int(self.u64() as i64),
                'L' => Value::UInt(self.u64()),
                'f' => Value::Float(f32::from_bits(self.u32()) as f64),
                'd' => Value::Float(f64::from_bits(self.u64())),
                'D' => {
                    let scale = self.u8();
                    Value::Decimal(scale, self.u32())
                }
                'S' => Value::Str(self.long_bytes()),
                'x' => Value::Bytes(self.long_bytes()),
                'T' => Value::Timestamp(self.u64()),
                'V' => Value::Void,
                'F' => Value::Table(self.table()),
                'A' => {
                    let n = self.u32() as usize;
                    let end = self.at + n;
                    let mut items = Vec::new();
                    while self.at < end {
                        items.push(self.value());
                    }
                    Value::Array(items)
                }
                other => panic!("unknown field type {:?}", other),
            };
            (tag, v)
        }
        fn table(&mut self) -> Vec<(String, char, Value)> {
            let n = self.u32() as usize;
            let end = self.at + n;
            let mut out = Vec::new();
            while self.at < end {
                let k = self.short_str();
                let (tag, v) = self.value();
                out.push((k, tag, v));
            }
            out
        }
    }

    /// Decodes a basic content header frame payload.
    pub fn parse_properties(payload: &[u8]) -> Properties {
        let mut c = Cursor { b: payload, at: 0 };
        let _class = c.u16();
        let _weight = c.u16();
        let body_size = c.u64();
        let flags = c.u16();
        let mut p = Properties {
            body_size,
            flags,
            ..Default::default()
        };
        let has = |bit: u16| flags & (1 << bit) != 0;
        if has(15) {
            c.short_str();
        }
        if has(14) {
            c.short_str();
        }
        if has(13) {
            p.headers = Some(c.table());
        }
        if has(12) {
            c.u8();
        }
        if has(11) {
            p.priority = Some(c.u8());
        }
        if has(10) {
            c.short_str();
        }
        if has(9) {
            c.short_str();
        }
        if has(8) {
            p.expiration = Some(c.short_str());
        }
        p
    }
}

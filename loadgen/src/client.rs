//! A minimal AMQP 0-9-1 client connection on a glommio socket, built on warren's
//! codec: the handshake (start/tune/open, PLAIN), synchronous methods for set-up
//! (declare, bind, qos, consume, confirm.select), and the raw read/write primitives
//! the producer and consumer loops use on their hot paths.
//!
//! The socket sits in an `Rc<RefCell<..>>` borrowed only inside a single poll, so a
//! reader task and a writer task of the same connection can share it on one executor.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::future::{self, poll_fn};
use glommio::net::TcpStream;
use warren_protocol::{
    parse_frame, write_method, ChannelClose, ChannelCloseOk, ChannelOpen, ConnectionClose,
    ConnectionOpen, ConnectionStartOk, ConnectionTuneOk, FieldTable, FieldValue, Frame, Method,
    FRAME_MIN_SIZE, PROTOCOL_HEADER,
};

use crate::error::{Error, Result};
use crate::uri::AmqpUri;

/// How much the read buffer grows by; a read never has less than a quarter of it.
pub const READ_BUFFER_SIZE: usize = 256 * 1024;
/// The frame_max loadgen asks for unless -M says otherwise (the broker may offer less).
pub const FRAME_MAX_DEFAULT: u32 = 131_072;
/// The frame_max every connection of this run asks for (-M); 0 takes the broker's offer.
/// Set once at start, before any connection opens.
static FRAME_MAX_WANTED: AtomicU32 = AtomicU32::new(FRAME_MAX_DEFAULT);

/// Sets the frame_max that connections ask for (-M); call before opening any.
pub fn want_frame_max(frame_max: u32) {
    FRAME_MAX_WANTED.store(frame_max, Ordering::Relaxed);
}
/// How long set-up steps may take before loadgen gives up on the broker.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// The server property in which a warren started with WARREN_TEST_PLACEMENT
/// names the shard that accepted the connection.
const SHARD_PROPERTY: &str = "warren_shard";
/// Connections `open_on_shard` tries before it gives up: with the kernel
/// spreading connections at random over N shards, 64 misses in a row are
/// as good as impossible at the shard counts tests use.
const SHARD_ATTEMPTS_MAX: usize = 64;

pub use crate::socket::{write_all, Stream};

pub struct Connection {
    pub stream: Stream,
    pub read_buf: BytesMut,
    pub write_buf: BytesMut,
    pub frame_max: u32,
    pub channel_max: u16,
    /// Frames that arrived during a set-up call but belong to another
    /// channel: a consumer set up on a queue with a backlog is sent its first
    /// deliveries before the next channel's consume-ok. The consume loop
    /// takes these first.
    pub held: VecDeque<Frame>,
}

/// Reads whatever the socket has into `buf` (warren's own reader), keeping
/// room for a large read first. 0 = closed.
pub async fn read_some(stream: &Stream, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < READ_BUFFER_SIZE / 4 {
        buf.reserve(READ_BUFFER_SIZE);
    }
    crate::socket::read_into(stream, buf).await
}

/// Runs `fut` with a deadline.
pub async fn with_timeout<T>(
    what: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    future::or(fut, async {
        glommio::timer::sleep(limit).await;
        Err(Error::new(format!(
            "timed out after {limit:?} waiting for {what}"
        )))
    })
    .await
}

/// Turns a close method from the broker into an error naming its reply.
pub fn close_error(method: &Method) -> Option<Error> {
    match method {
        Method::ConnectionClose(c) => Some(Error::new(format!(
            "broker closed the connection: {} {}",
            c.reply_code, c.reply_text
        ))),
        Method::ChannelClose(c) => Some(Error::new(format!(
            "broker closed a channel: {} {}",
            c.reply_code, c.reply_text
        ))),
        _ => None,
    }
}

impl Connection {
    /// Connects and runs the handshake up to connection.open-ok.
    pub async fn open(addr: SocketAddr, uri: &AmqpUri, name: &str) -> Result<Connection> {
        Ok(Self::open_once(addr, uri, name).await?.0)
    }

    /// `open`, reconnecting until the connection lands on warren's shard
    /// `shard` (tests and benchmarks of placement only: the kernel spreads
    /// connections over the shards, and a warren started with
    /// WARREN_TEST_PLACEMENT names its shard in connection.start).
    pub async fn open_on_shard(
        addr: SocketAddr,
        uri: &AmqpUri,
        name: &str,
        shard: Option<u16>,
    ) -> Result<Connection> {
        let Some(wanted) = shard else {
            return Self::open(addr, uri, name).await;
        };
        for _ in 0..SHARD_ATTEMPTS_MAX {
            let (conn, landed) = Self::open_once(addr, uri, name).await?;
            match landed {
                None => {
                    return Err(Error::new(
                        "the broker does not name its shard: start warren with WARREN_TEST_PLACEMENT set",
                    ))
                }
                Some(landed) if landed == wanted => return Ok(conn),
                Some(_) => drop(conn),
            }
        }
        Err(Error::new(format!(
            "no connection landed on shard {wanted} in {SHARD_ATTEMPTS_MAX} attempts"
        )))
    }

    async fn open_once(
        addr: SocketAddr,
        uri: &AmqpUri,
        name: &str,
    ) -> Result<(Connection, Option<u16>)> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::new(format!("cannot connect to {addr}: {e}")))?;
        stream.set_nodelay(true)?;
        let mut conn = Connection {
            stream: if uri.tls {
                crate::socket::tls_stream(stream, &uri.host)
                    .await
                    .map_err(|e| Error::new(format!("TLS with {addr}: {e}")))?
            } else {
                crate::socket::stream(stream)
            },
            read_buf: BytesMut::with_capacity(READ_BUFFER_SIZE),
            write_buf: BytesMut::with_capacity(64 * 1024),
            frame_max: FRAME_MIN_SIZE,
            channel_max: 0,
            held: VecDeque::new(),
        };
        let shard =
            with_timeout("the AMQP handshake", RPC_TIMEOUT, conn.handshake(uri, name)).await?;
        Ok((conn, shard))
    }

    /// Returns the shard warren names in connection.start, if it does.
    async fn handshake(&mut self, uri: &AmqpUri, name: &str) -> Result<Option<u16>> {
        write_all(&self.stream, PROTOCOL_HEADER).await?;
        let shard = match self.next_method().await? {
            (0, Method::ConnectionStart(start)) => {
                let mechanisms = String::from_utf8_lossy(&start.mechanisms).to_string();
                if !mechanisms.split(' ').any(|m| m == "PLAIN") {
                    return Err(Error::new(format!(
                        "the broker does not offer PLAIN authentication (offers {mechanisms})"
                    )));
                }
                match start.server_properties.get(SHARD_PROPERTY) {
                    Some(FieldValue::I32(shard)) => u16::try_from(*shard).ok(),
                    _ => None,
                }
            }
            (_, other) => return Err(unexpected("connection.start", &other)),
        };
        let mut capabilities = FieldTable::new();
        for cap in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
        ] {
            capabilities.insert(cap, FieldValue::Bool(true));
        }
        let mut client_properties = FieldTable::new();
        client_properties.insert(
            "product",
            FieldValue::LongStr(Bytes::from_static(b"loadgen")),
        );
        client_properties.insert(
            "version",
            FieldValue::LongStr(Bytes::from_static(env!("CARGO_PKG_VERSION").as_bytes())),
        );
        client_properties.insert(
            "connection_name",
            FieldValue::LongStr(Bytes::copy_from_slice(name.as_bytes())),
        );
        client_properties.insert("capabilities", FieldValue::Table(capabilities));
        let mut response = Vec::with_capacity(uri.user.len() + uri.password.len() + 2);
        response.push(0);
        response.extend_from_slice(uri.user.as_bytes());
        response.push(0);
        response.extend_from_slice(uri.password.as_bytes());
        self.send(
            0,
            &ConnectionStartOk {
                client_properties,
                mechanism: "PLAIN".into(),
                response: response.into(),
                locale: "en_US".into(),
            }
            .into(),
        )
        .await?;
        let tune = match self.next_method().await? {
            (0, Method::ConnectionTune(tune)) => tune,
            (_, Method::ConnectionClose(c)) => {
                return Err(Error::new(format!(
                    "the broker refused the login as {:?}: {} {}",
                    uri.user, c.reply_code, c.reply_text
                )))
            }
            (_, other) => return Err(unexpected("connection.tune", &other)),
        };
        self.frame_max = match (tune.frame_max, FRAME_MAX_WANTED.load(Ordering::Relaxed)) {
            (0, 0) => FRAME_MAX_DEFAULT,
            (0, wanted) => wanted,
            (offered, 0) => offered,
            (offered, wanted) => offered.min(wanted),
        };
        self.channel_max = match tune.channel_max {
            0 => 2047,
            offered => offered.min(2047),
        };
        // Heartbeats off: loadgen's connections are never idle for long, and a run
        // that stalls should show the stall rather than be cut by a heartbeat timeout.
        self.send(
            0,
            &ConnectionTuneOk {
                channel_max: self.channel_max,
                frame_max: self.frame_max,
                heartbeat: 0,
            }
            .into(),
        )
        .await?;
        self.send(
            0,
            &ConnectionOpen {
                virtual_host: uri.vhost.as_str().into(),
            }
            .into(),
        )
        .await?;
        match self.next_method().await? {
            (0, Method::ConnectionOpenOk(_)) => Ok(shard),
            (_, Method::ConnectionClose(c)) => Err(Error::new(format!(
                "the broker refused vhost {:?}: {} {}",
                uri.vhost, c.reply_code, c.reply_text
            ))),
            (_, other) => Err(unexpected("connection.open-ok", &other)),
        }
    }

    /// Writes one method frame at once.
    pub async fn send(&mut self, channel: u16, method: &Method) -> Result<()> {
        self.write_buf.clear();
        write_method(&mut self.write_buf, channel, method);
        write_all(&self.stream, &self.write_buf).await?;
        self.write_buf.clear();
        Ok(())
    }

    /// The next frame, reading as needed.
    pub async fn next_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = parse_frame(&mut self.read_buf, self.frame_max)? {
                return Ok(frame);
            }
            if read_some(&self.stream, &mut self.read_buf).await? == 0 {
                return Err(Error::new("the broker closed the socket"));
            }
        }
    }

    /// The next method frame, skipping heartbeats.
    async fn next_method(&mut self) -> Result<(u16, Method)> {
        loop {
            match self.next_frame().await? {
                Frame::Method { channel, method } => return Ok((channel, method)),
                Frame::Heartbeat { .. } => {}
                other => {
                    return Err(Error::new(format!(
                        "unexpected content frame during set-up: {other:?}"
                    )))
                }
            }
        }
    }

    /// Sends a synchronous method and waits for its reply on the same channel. A
    /// channel or connection close from the broker becomes the error.
    pub async fn rpc(&mut self, channel: u16, method: Method) -> Result<Method> {
        let name = method.name();
        with_timeout(name, RPC_TIMEOUT, async {
            self.send(channel, &method).await?;
            loop {
                let frame = self.next_frame().await?;
                if let Frame::Method { method: reply, .. } = &frame {
                    if let Some(e) = close_error(reply) {
                        return Err(Error::new(format!("{name}: {e}")));
                    }
                }
                match frame {
                    Frame::Method {
                        channel: on,
                        method,
                    } if on == channel => return Ok(method),
                    Frame::Heartbeat { .. } => {}
                    other => self.held.push_back(other),
                }
            }
        })
        .await
    }

    /// Sends a passive declare on `channel` (opened here and closed again): the
    /// declare-ok when the exchange or queue exists, `None` when the broker answers
    /// 404 NOT_FOUND (the channel is then closed by the broker).
    pub async fn probe(&mut self, channel: u16, method: Method) -> Result<Option<Method>> {
        self.open_channel(channel).await?;
        let name = method.name();
        let reply = with_timeout(name, RPC_TIMEOUT, async {
            self.send(channel, &method).await?;
            loop {
                match self.next_frame().await? {
                    Frame::Method {
                        channel: on,
                        method: Method::ChannelClose(close),
                    } if on == channel && close.reply_code == 404 => {
                        self.send(channel, &ChannelCloseOk {}.into()).await?;
                        return Ok(None);
                    }
                    Frame::Method { method, .. } if close_error(&method).is_some() => {
                        return Err(close_error(&method)
                            .unwrap_or_else(|| Error::new(format!("{name} failed"))));
                    }
                    Frame::Method {
                        channel: on,
                        method,
                    } if on == channel => return Ok(Some(method)),
                    Frame::Heartbeat { .. } => {}
                    other => self.held.push_back(other),
                }
            }
        })
        .await?;
        if reply.is_some() {
            let close = ChannelClose {
                reply_code: 200,
                reply_text: "probed".into(),
                class_id: 0,
                method_id: 0,
            };
            match self.rpc(channel, close.into()).await? {
                Method::ChannelCloseOk(_) => {}
                other => return Err(unexpected("channel.close-ok", &other)),
            }
        }
        Ok(reply)
    }

    pub async fn open_channel(&mut self, channel: u16) -> Result<()> {
        match self.rpc(channel, ChannelOpen {}.into()).await? {
            Method::ChannelOpenOk(_) => Ok(()),
            other => Err(unexpected("channel.open-ok", &other)),
        }
    }

    /// Closes the connection politely, waiting a little for close-ok.
    pub async fn close(&mut self) {
        let close = ConnectionClose {
            reply_code: 200,
            reply_text: "loadgen done".into(),
            class_id: 0,
            method_id: 0,
        };
        if self.send(0, &close.into()).await.is_err() {
            return;
        }
        let _ = with_timeout("connection.close-ok", Duration::from_secs(2), async {
            loop {
                if let Frame::Method {
                    method: Method::ConnectionCloseOk(_) | Method::ConnectionClose(_),
                    ..
                } = self.next_frame().await?
                {
                    return Ok(());
                }
            }
        })
        .await;
    }
}

pub fn unexpected(wanted: &str, got: &Method) -> Error {
    if let Some(e) = close_error(got) {
        return e;
    }
    Error::new(format!("expected {wanted}, the broker sent {}", got.name()))
}

/// A one-slot wake-up between two tasks of one executor: `notify` sets a flag and
/// wakes the waiter, `wait` returns once the flag is set (and clears it).
#[derive(Default)]
pub struct Signal {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

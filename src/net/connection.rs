//! The two tasks of a connection. The reader reads into a buffer that grows
//! with what the client sends, and hands it to the connection's host (the
//! shard that owns the connection), which parses every complete frame in it
//! and says what the reader does next; the writer sleeps until the host has output, then writes all of it
//! at once. Neither holds the host's state across an await.
//!
//! `ConnectionHost` is all a socket sees of the broker: this module imports
//! only `util` and `config` of warren, and `shard/` implements the trait.
//!
//! A TLS connection (`net::tls`) finishes its handshake before the host
//! hears of it; then its reader decrypts what it reads into the same buffer
//! a plain connection reads into, and its writer encrypts what the host
//! hands it. Each of the two paths is one branch on `Option<Session>`; a
//! plain connection does exactly what it did without TLS.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::future::{self, poll_fn};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::ServerConnection;
use tracing::{debug, warn};

use crate::config;
use crate::net::tls::{self, TlsPeer, TlsServer};
use crate::util::signal::Notify;

/// A socket shared by a connection's reader and writer tasks, borrowed only
/// inside a single poll.
pub(crate) type Stream = Rc<RefCell<TcpStream>>;
/// A TLS connection's session, shared by its reader (which decrypts) and
/// writer (which encrypts), borrowed only between awaits.
type Session = Rc<RefCell<ServerConnection>>;

/// How long a closing connection waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(1);
/// How often a paused connection's socket is asked whether the client hung up.
const PAUSED_HANG_UP_CHECK: Duration = Duration::from_millis(100);

/// What the reader does after the host has taken the bytes it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Every complete frame was handled: read more bytes.
    Read,
    /// A turn's worth was handled: let the shard's other tasks run, then
    /// hand the buffer over again before reading.
    Yield,
    /// The connection waits for something else (another shard's answer, a
    /// resource alarm to clear): wait for the reader's wake-up, then hand
    /// the buffer over again.
    Paused,
    /// The connection is done: stop reading; the writer flushes and closes.
    Closed,
}

/// After `take_output`: whether the connection still writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Open,
    /// Closed, or gone: write what was taken, then close the socket.
    Closed,
}

/// What `open` gives a new connection's tasks.
pub(crate) struct Opened<Id> {
    pub(crate) id: Id,
    /// Wakes the reader: paused input may go on, flow control let go, or the
    /// connection was closed while the reader waited for bytes.
    pub(crate) reader: Notify,
    /// Wakes the writer: output is waiting, or the connection closed.
    pub(crate) writer: Notify,
}

/// Everything a connection's socket tasks need of the shard that owns the
/// connection. Each call is complete in itself (no borrow is held across an
/// await).
pub(crate) trait ConnectionHost {
    type Id: Copy;
    /// Registers a new connection from `peer`; `tls` for one that came
    /// through a TLS listener and finished its handshake.
    fn open(&self, peer: SocketAddr, local: SocketAddr, tls: Option<TlsPeer>) -> Opened<Self::Id>;
    /// Hands over the bytes read so far; the host consumes the complete
    /// frames from the front of `buf` and says what to do next.
    fn input(&self, id: Self::Id, buf: &mut BytesMut) -> Next;
    /// Swaps the connection's pending output into `out` (which is empty).
    fn take_output(&self, id: Self::Id, out: &mut BytesMut) -> Output;
    /// Backpressure: true while the reader must not read (the shard's
    /// mailboxes are backed up, or the client does not read what we write).
    fn must_wait_to_read(&self, id: Self::Id) -> bool;
    /// Flow control: true if the reader is to wait for its wake-up before
    /// reading on; `leave_flow` once it was woken.
    fn in_flow(&self, id: Self::Id) -> bool;
    fn leave_flow(&self, id: Self::Id);
    fn is_closed(&self, id: Self::Id) -> bool;
    /// True if the client asked to close (it then closes the socket first).
    fn closed_by_client(&self, id: Self::Id) -> bool;
    /// The socket failed or reached its end.
    fn lost(&self, id: Self::Id);
    /// Both tasks are done: the connection is forgotten.
    fn remove(&self, id: Self::Id);
}

/// Serves one accepted connection until both of its tasks are done; with
/// `tls`, once its TLS handshake is done.
pub(crate) async fn serve<H: ConnectionHost + Clone + 'static>(
    stream: TcpStream,
    host: H,
    tls: Option<Arc<TlsServer>>,
) {
    let _ = stream.set_nodelay(true);
    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let fd = stream.as_raw_fd();
    let stream: Stream = Rc::new(RefCell::new(stream));
    let (session, tls_peer) = match &tls {
        None => (None, None),
        Some(server) => match handshake(&stream, server).await {
            Ok(session) => {
                let tls_peer = server.peer(&session);
                (Some(Rc::new(RefCell::new(session))), Some(tls_peer))
            }
            Err(why) => {
                // As RabbitMQ logs a failed TLS handshake: at the listener,
                // before there is an AMQP connection.
                warn!(%peer, error = %why, "TLS handshake failed");
                let _ = poll_fn(|cx| {
                    let mut stream = stream.borrow_mut();
                    Pin::new(&mut *stream).poll_close(cx)
                })
                .await;
                return;
            }
        },
    };
    let Opened { id, reader, writer } = host.open(peer, local, tls_peer);
    let write_task = glommio::spawn_local(write_loop(
        stream.clone(),
        session.clone(),
        host.clone(),
        id,
        writer.clone(),
    ));
    read_loop(&stream, session.as_ref(), fd, &host, id, &reader, &writer).await;
    host.lost(id);
    writer.notify();
    write_task.await;
    host.remove(id);
    debug!(%peer, "connection closed");
}

/// Runs a TLS handshake on an accepted socket, within
/// `TLS_HANDSHAKE_TIMEOUT`.
async fn handshake(stream: &Stream, server: &TlsServer) -> Result<ServerConnection, String> {
    let mut session = server.session().map_err(|e| e.to_string())?;
    let done = future::or(
        async { drive_handshake(stream, &mut session).await.map(|()| true) },
        async {
            glommio::timer::sleep(config::TLS_HANDSHAKE_TIMEOUT).await;
            Ok(false)
        },
    )
    .await?;
    if !done {
        return Err("timed out".into());
    }
    Ok(session)
}

async fn drive_handshake(stream: &Stream, session: &mut ServerConnection) -> Result<(), String> {
    let mut receive = vec![0u8; config::TLS_HANDSHAKE_READ_SIZE];
    let mut out = Vec::new();
    loop {
        tls::take_ciphertext(session, &mut out);
        if !out.is_empty() {
            write_all(stream, &out).await.map_err(|e| e.to_string())?;
            out.clear();
        }
        if !session.is_handshaking() {
            return Ok(());
        }
        let n = read_raw(stream, &mut receive)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the client closed the connection".into());
        }
        let mut data = &receive[..n];
        while !data.is_empty() {
            let processed = session
                .read_tls(&mut data)
                .map_err(|e| rustls::Error::General(e.to_string()))
                .and_then(|_| session.process_new_packets().map(|_| ()));
            if let Err(e) = processed {
                // The alert rustls queued tells the client why (a client
                // speaking plain AMQP gets one and the socket's end, not a
                // hang).
                tls::take_ciphertext(session, &mut out);
                let _ = write_all(stream, &out).await;
                return Err(e.to_string());
            }
        }
    }
}

async fn read_loop<H: ConnectionHost>(
    stream: &Stream,
    session: Option<&Session>,
    fd: RawFd,
    host: &H,
    id: H::Id,
    wake: &Notify,
    writer: &Notify,
) {
    // Both buffers start small and grow with what the client sends: most
    // connections are idle or quiet, and an idle one then costs a few KiB,
    // not the 64 + 128 KiB a busy one reads with (tuning.md).
    let mut receive = ReceiveBuffer::new();
    let mut buf = BytesMut::with_capacity(config::RECEIVE_BUFFER_SIZE_MIN);
    if let Some(session) = session {
        // The client may have sent its first frames with the handshake's
        // last flight.
        tls::take_early_plaintext(&mut session.borrow_mut(), &mut buf);
    }
    // A socket that always has bytes never makes a read wait, so the loop
    // yields by itself after a budget of bytes: otherwise one publisher
    // would starve every other task of its shard (consumers, mailboxes).
    let mut read_since_yield = 0usize;
    loop {
        match host.input(id, &mut buf) {
            Next::Read => {}
            Next::Yield => {
                if !wait_in_flow(host, id, wake).await {
                    glommio::executor().yield_task_queue_now().await;
                }
                continue;
            }
            Next::Paused => {
                if !wait_unless_hung_up(fd, wake).await {
                    return;
                }
                continue;
            }
            Next::Closed => return,
        }
        // Backpressure: a full mailbox or a client that does not read its
        // deliveries stops us reading, so nothing piles up without bound.
        while host.must_wait_to_read(id) {
            glommio::timer::sleep(config::TICK).await;
        }
        wait_in_flow(host, id, wake).await;
        if receive.is_full_size() && buf.capacity() - buf.len() < config::READ_BUFFER_SIZE / 4 {
            buf.reserve(config::READ_BUFFER_SIZE);
        }
        // A read takes no more than a turn's budget: all of it is parsed and
        // handled before anything else of the shard runs (consumers' acks,
        // and so their next deliveries, among them).
        let read = future::or(
            async { Some(receive.read(stream, session, &mut buf).await) },
            async {
                wake.wait().await;
                None
            },
        )
        .await;
        match read {
            // Woken while waiting for bytes: the host may have closed the
            // connection (heartbeat timeout); look again.
            None => {
                if host.is_closed(id) {
                    return;
                }
            }
            Some(Ok(0)) | Some(Err(_)) => return,
            Some(Ok(n)) => {
                // TLS may have something of its own to say (a key update's
                // answer); the writer sends it.
                if session.is_some_and(|s| s.borrow().wants_write()) {
                    writer.notify();
                }
                read_since_yield += n;
                if read_since_yield >= config::READ_BYTES_PER_TURN_MAX {
                    read_since_yield = 0;
                    next_reactor_turn().await;
                } else {
                    glommio::yield_if_needed().await;
                }
            }
        }
    }
}

/// Flow control: the queue this connection publishes into is not being
/// drained as fast, and the shard has no time to spare; its consumers go
/// first. Waits until the queue has drained or the tick lets it go (either
/// wakes the reader). True if it waited.
async fn wait_in_flow<H: ConnectionHost>(host: &H, id: H::Id, wake: &Notify) -> bool {
    if !host.in_flow(id) {
        return false;
    }
    wake.wait().await;
    host.leave_flow(id);
    true
}

/// Waits for the reader's wake-up; false if the client hung up meanwhile.
/// A paused connection is not read, so its end of stream would not be seen
/// (nor would its heartbeats, which a blocked connection is spared): a
/// client blocked by a resource alarm that goes away must still release
/// what it holds (an open transaction, a body half received), or the alarm
/// it helped raise might never clear. So the socket is asked, every
/// `PAUSED_HANG_UP_CHECK`, whether the peer closed it.
async fn wait_unless_hung_up(fd: RawFd, wake: &Notify) -> bool {
    loop {
        let woken = future::or(
            async {
                wake.wait().await;
                true
            },
            async {
                glommio::timer::sleep(PAUSED_HANG_UP_CHECK).await;
                false
            },
        )
        .await;
        if woken {
            return true;
        }
        if peer_hung_up(fd) {
            return false;
        }
    }
}

/// True if the peer closed the connection (a FIN, even behind unread data,
/// or a reset), without reading anything.
fn peer_hung_up(fd: RawFd) -> bool {
    let mut poll_fd = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd it is given, which
    // outlives the call; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut poll_fd, 1, 0) };
    ready > 0 && poll_fd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Waits until the executor has polled io_uring again, so that every other
/// socket of the shard has had its turn: a fair share per reactor turn for
/// a connection that always has bytes to read.
async fn next_reactor_turn() {
    glommio::timer::sleep(std::time::Duration::from_micros(1)).await;
}

/// Where the kernel writes what a connection receives: initialised memory
/// (recv(2) into `BytesMut`'s spare capacity would need a `&mut [u8]` over
/// uninitialised memory), copied to the end of the connection's buffer.
/// It starts at `RECEIVE_BUFFER_SIZE_MIN` and doubles, up to a turn's
/// budget, each time a read fills it: a busy connection soon takes a turn's
/// worth per recv(2), and an idle one never pays for it.
struct ReceiveBuffer {
    bytes: Vec<u8>,
}

impl ReceiveBuffer {
    fn new() -> ReceiveBuffer {
        ReceiveBuffer {
            bytes: vec![0; config::RECEIVE_BUFFER_SIZE_MIN],
        }
    }

    fn is_full_size(&self) -> bool {
        self.bytes.len() >= config::READ_BYTES_PER_TURN_MAX
    }

    /// Reads whatever the socket has (at most a turn's budget), appending
    /// it (decrypted, for a TLS connection) to `buf`; 0 is EOF, or TLS's
    /// close_notify.
    async fn read(
        &mut self,
        stream: &Stream,
        session: Option<&Session>,
        buf: &mut BytesMut,
    ) -> io::Result<usize> {
        let n = match session {
            None => read_into(stream, &mut self.bytes, buf).await?,
            Some(session) => {
                let n = read_raw(stream, &mut self.bytes).await?;
                let closed = tls::decrypt(&mut session.borrow_mut(), &self.bytes[..n], buf)
                    .map_err(io::Error::other)?;
                if closed {
                    return Ok(0);
                }
                n
            }
        };
        if n == self.bytes.len() && !self.is_full_size() {
            let size = (self.bytes.len() * 2).min(config::READ_BYTES_PER_TURN_MAX);
            self.bytes.resize(size, 0);
        }
        Ok(n)
    }
}

/// One recv(2) into `receive`, whose bytes are appended to `buf`.
async fn read_into(stream: &Stream, receive: &mut [u8], buf: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| {
        let mut stream = stream.borrow_mut();
        let n = futures_lite::ready!(Pin::new(&mut *stream).poll_read(cx, receive))?;
        buf.extend_from_slice(&receive[..n]);
        Poll::Ready(Ok(n))
    })
    .await
}

/// One recv(2) into `receive`.
async fn read_raw(stream: &Stream, receive: &mut [u8]) -> io::Result<usize> {
    poll_fn(|cx| {
        let mut stream = stream.borrow_mut();
        Pin::new(&mut *stream).poll_read(cx, receive)
    })
    .await
}

/// Writes `data` to the socket, encrypted for a TLS connection (through
/// `cipher`, the writer's own buffer).
async fn send(
    stream: &Stream,
    session: Option<&Session>,
    data: &[u8],
    cipher: &mut Vec<u8>,
) -> io::Result<()> {
    let Some(session) = session else {
        return write_all(stream, data).await;
    };
    cipher.clear();
    tls::encrypt(&mut session.borrow_mut(), data, cipher)?;
    write_all(stream, cipher).await?;
    // A burst of deliveries must not pin its size for the connection's life.
    if cipher.capacity() > config::WRITE_BUFFER_HIGH_WATERMARK {
        *cipher = Vec::new();
    }
    Ok(())
}

/// Writes what TLS itself has to send (alerts, key updates, close_notify).
async fn flush_tls(stream: &Stream, session: &Session, cipher: &mut Vec<u8>) -> io::Result<()> {
    cipher.clear();
    tls::take_ciphertext(&mut session.borrow_mut(), cipher);
    if cipher.is_empty() {
        return Ok(());
    }
    write_all(stream, cipher).await
}

/// Writes all of `data`.
pub(crate) async fn write_all(stream: &Stream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| {
            let mut stream = stream.borrow_mut();
            Pin::new(&mut *stream).poll_write(cx, data)
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

async fn write_loop<H: ConnectionHost>(
    stream: Stream,
    session: Option<Session>,
    host: H,
    id: H::Id,
    wake: Notify,
) {
    // Swapped with the connection's output buffer at each write, so the two
    // take turns: it needs no capacity of its own to start with.
    let mut spare = BytesMut::new();
    let mut cipher = Vec::new();
    loop {
        let output = loop {
            let output = host.take_output(id, &mut spare);
            if spare.is_empty() {
                break output;
            }
            if send(&stream, session.as_ref(), &spare, &mut cipher)
                .await
                .is_err()
            {
                host.lost(id);
                return;
            }
            spare.clear();
        };
        if let Some(session) = &session {
            if flush_tls(&stream, session, &mut cipher).await.is_err() {
                host.lost(id);
                return;
            }
        }
        if output == Output::Closed {
            break;
        }
        wake.wait().await;
    }
    // Unless the client closed the connection (then it closes the socket,
    // as with RabbitMQ), close our side first and let the client close its
    // own, so that the last frames we wrote are not lost to a reset.
    let by_client = host.closed_by_client(id);
    if !by_client {
        // TLS's own end of stream goes first, so that the client reads a
        // clean close rather than a truncation.
        if let Some(session) = &session {
            session.borrow_mut().send_close_notify();
            let _ = flush_tls(&stream, session, &mut cipher).await;
        }
        let _ = poll_fn(|cx| {
            let mut stream = stream.borrow_mut();
            Pin::new(&mut *stream).poll_close(cx)
        })
        .await;
    }
    let linger = if by_client { LINGER * 10 } else { LINGER };
    let deadline = Instant::now() + linger;
    let mut receive = [0u8; 512];
    let mut sink = BytesMut::with_capacity(receive.len());
    while Instant::now() < deadline {
        sink.clear();
        let read = future::or(
            async { Some(read_into(&stream, &mut receive, &mut sink).await) },
            async {
                glommio::timer::sleep(linger).await;
                None
            },
        )
        .await;
        match read {
            Some(Ok(n)) if n > 0 => continue,
            _ => break,
        }
    }
}

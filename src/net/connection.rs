//! The two tasks of a connection. The reader reads into a large buffer and
//! hands it to the connection's state machine, which parses every complete
//! frame in it; the writer sleeps until the state machine has output, then
//! writes all of it at once. Neither holds the shard's state across an await.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures_lite::future::{self, poll_fn};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use tracing::debug;

use crate::broker::connection::Input;
use crate::broker::ShardState;
use crate::config;
use crate::model::ids::ConnId;
use crate::util::signal::Notify;

type Shared = Rc<RefCell<ShardState>>;
/// A socket shared by a connection's reader and writer tasks (and loadgen's).
pub type Stream = Rc<RefCell<TcpStream>>;

/// How long a closing connection waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(1);

pub async fn serve(stream: TcpStream, state: Shared) {
    let _ = stream.set_nodelay(true);
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let (id, reader_wake, writer_wake) = state.borrow_mut().open_connection(peer);
    let stream: Stream = Rc::new(RefCell::new(stream));
    let writer = glommio::spawn_local(write_loop(
        stream.clone(),
        state.clone(),
        id,
        writer_wake.clone(),
    ));
    read_loop(&stream, &state, id, &reader_wake).await;
    state.borrow_mut().connection_lost(id);
    writer_wake.notify();
    writer.await;
    state.borrow_mut().remove_connection(id);
    debug!(%peer, "connection closed");
}

async fn read_loop(stream: &Stream, state: &Shared, id: ConnId, wake: &Notify) {
    let mut buf = BytesMut::with_capacity(config::READ_BUFFER_SIZE);
    // A socket that always has bytes never makes a read wait, so the loop
    // yields by itself after a budget of bytes: otherwise one publisher
    // would starve every other task of its shard (consumers, mailboxes).
    let mut read_since_yield = 0usize;
    loop {
        let input = state.borrow_mut().connection_input(id, &mut buf);
        match input {
            Input::NeedMore => {}
            Input::Yield => {
                if !wait_in_flow(state, id, wake).await {
                    glommio::executor().yield_task_queue_now().await;
                }
                continue;
            }
            Input::Paused => {
                wake.wait().await;
                continue;
            }
            Input::Closed => return,
        }
        // Backpressure: a full mailbox or a client that does not read its
        // deliveries stops us reading, so nothing piles up without bound.
        while state.borrow().should_stop_reading(id) {
            glommio::timer::sleep(config::TICK).await;
        }
        wait_in_flow(state, id, wake).await;
        if buf.capacity() - buf.len() < config::READ_BUFFER_SIZE / 4 {
            buf.reserve(config::READ_BUFFER_SIZE);
        }
        // A read takes no more than a turn's budget: all of it is parsed and
        // handled before anything else of the shard runs (consumers' acks,
        // and so their next deliveries, among them).
        let read = future::or(
            async { Some(read_at_most(stream, &mut buf, config::READ_BYTES_PER_TURN_MAX).await) },
            async {
                wake.wait().await;
                None
            },
        )
        .await;
        match read {
            // Woken while waiting for bytes: the state machine may have
            // closed the connection (heartbeat timeout); look again.
            None => {
                if state.borrow().connection_is_closed(id) {
                    return;
                }
            }
            Some(Ok(0)) | Some(Err(_)) => return,
            Some(Ok(n)) => {
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
async fn wait_in_flow(state: &Shared, id: ConnId, wake: &Notify) -> bool {
    if !state.borrow_mut().in_flow(id) {
        return false;
    }
    wake.wait().await;
    state.borrow_mut().leave_flow(id);
    true
}

/// Waits until the executor has polled io_uring again, so that every other
/// socket of the shard has had its turn: a fair share per reactor turn for
/// a connection that always has bytes to read.
async fn next_reactor_turn() {
    glommio::timer::sleep(std::time::Duration::from_micros(1)).await;
}

/// Reads whatever the socket has into the spare capacity of `buf`; 0 is EOF.
pub async fn read_some(stream: &Stream, buf: &mut BytesMut) -> io::Result<usize> {
    read_at_most(stream, buf, usize::MAX).await
}

/// `read_some`, taking at most `limit` bytes.
async fn read_at_most(stream: &Stream, buf: &mut BytesMut, limit: usize) -> io::Result<usize> {
    let n = poll_fn(|cx| {
        let spare = buf.chunk_mut();
        let len = spare.len().min(limit);
        // SAFETY: recv(2) only writes into this memory and we only expose
        // the bytes it reports as written (set by advance_mut below).
        let spare = unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr(), len) };
        let mut stream = stream.borrow_mut();
        Pin::new(&mut *stream).poll_read(cx, spare)
    })
    .await?;
    // SAFETY: the kernel initialised exactly n bytes of the spare capacity.
    unsafe { buf.advance_mut(n) };
    Ok(n)
}

/// Writes all of `data`.
pub async fn write_all(stream: &Stream, mut data: &[u8]) -> io::Result<()> {
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

async fn write_loop(stream: Stream, state: Shared, id: ConnId, wake: Notify) {
    let mut spare = BytesMut::with_capacity(64 * 1024);
    loop {
        let closed = loop {
            // A connection that is gone counts as closed.
            let closed = state
                .borrow_mut()
                .take_output(id, &mut spare)
                .unwrap_or(true);
            if spare.is_empty() {
                break closed;
            }
            if write_all(&stream, &spare).await.is_err() {
                state.borrow_mut().connection_lost(id);
                return;
            }
            spare.clear();
        };
        if closed {
            break;
        }
        wake.wait().await;
    }
    // Unless the client closed the connection (then it closes the socket,
    // as with RabbitMQ), close our side first and let the client close its
    // own, so that the last frames we wrote are not lost to a reset.
    let by_client = state.borrow().connection_closed_by_client(id);
    if !by_client {
        let _ = poll_fn(|cx| {
            let mut stream = stream.borrow_mut();
            Pin::new(&mut *stream).poll_close(cx)
        })
        .await;
    }
    let linger = if by_client { LINGER * 10 } else { LINGER };
    let deadline = Instant::now() + linger;
    let mut sink = BytesMut::with_capacity(4096);
    while Instant::now() < deadline {
        sink.clear();
        let read = future::or(async { Some(read_some(&stream, &mut sink).await) }, async {
            glommio::timer::sleep(linger).await;
            None
        })
        .await;
        match read {
            Some(Ok(n)) if n > 0 => continue,
            _ => break,
        }
    }
}

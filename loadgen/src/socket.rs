//! The socket a loadgen connection shares between its reader and writer tasks,
//! and the two primitives both hot loops use: read what is there, write it all.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use bytes::BytesMut;
use futures_lite::future::poll_fn;
use futures_lite::{AsyncBufRead, AsyncWrite};
use glommio::net::{Preallocated, TcpStream};

/// A socket shared by a connection's reader and writer tasks, borrowed only
/// inside a single poll. It reads through a receive buffer of its own, so
/// that the kernel writes into initialised memory (see `read_into`).
pub type Stream = Rc<RefCell<TcpStream<Preallocated>>>;

/// The socket's receive buffer: as large as the connection's read buffer
/// (`client::READ_BUFFER_SIZE`), so that a busy consumer takes as much per
/// recv(2) as it did reading into that buffer directly.
const RECEIVE_BUFFER_SIZE: usize = crate::client::READ_BUFFER_SIZE;

/// Wraps a connected socket for `read_into` and `write_all`.
pub fn stream(socket: TcpStream) -> Stream {
    Rc::new(RefCell::new(
        socket.buffered_with(Preallocated::new(RECEIVE_BUFFER_SIZE)),
    ))
}

/// Reads whatever the socket has, appending it to `buf`; 0 is EOF. The
/// kernel writes into the stream's receive buffer and what arrived is
/// copied: recv(2) into `buf`'s spare capacity would need a `&mut [u8]`
/// over uninitialised memory.
pub async fn read_into(stream: &Stream, buf: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| {
        let mut stream = stream.borrow_mut();
        let mut stream = Pin::new(&mut *stream);
        let data = futures_lite::ready!(stream.as_mut().poll_fill_buf(cx))?;
        let n = data.len();
        buf.extend_from_slice(data);
        stream.consume(n);
        Poll::Ready(Ok(n))
    })
    .await
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

/// Raises RLIMIT_MEMLOCK so that glommio's reactors can register their
/// memory (`needed` bytes in all): to infinity where allowed, else to the
/// hard limit.
pub fn raise_memlock(needed: u64) -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        let to_hard = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &to_hard) };
    }
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if limit.rlim_cur >= needed {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "RLIMIT_MEMLOCK is {} bytes and could not be raised to {needed}: raise it with `ulimit -l unlimited` (or --ulimit memlock=-1 in a container)",
            limit.rlim_cur
        )))
    }
}

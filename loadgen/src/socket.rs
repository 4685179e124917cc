//! The socket a loadgen connection shares between its reader and writer tasks,
//! and the two primitives both hot loops use: read what is there, write it all.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;

use bytes::{BufMut, BytesMut};
use futures_lite::future::poll_fn;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// A socket shared by a connection's reader and writer tasks, borrowed only
/// inside a single poll.
pub type Stream = Rc<RefCell<TcpStream>>;

/// Reads whatever the socket has into the spare capacity of `buf`; 0 is EOF.
pub async fn read_into_spare(stream: &Stream, buf: &mut BytesMut) -> io::Result<usize> {
    let n = poll_fn(|cx| {
        let spare = buf.chunk_mut();
        let len = spare.len();
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

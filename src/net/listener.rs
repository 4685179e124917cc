//! Listening sockets and the accept loop. Every shard binds the same address
//! with SO_REUSEPORT (the kernel then spreads connections over the shards).
//! An IPv6 socket is dual-stack (it takes IPv4 clients too, as Linux's default
//! and RabbitMQ's `[::]` listener do) unless an IPv4 address on the same port
//! is listened on as well, as in the default pair 0.0.0.0 and [::]: then it
//! stays IPv6-only so that the IPv4 socket has its clients. A start is refused while another
//! process listens on the address. The accept loop survives running out of
//! file descriptors: it says so once, backs off, and accepts again once
//! connections have closed. Imports only `util` and `config` of warren.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use crate::config;
use crate::net::connection::{self, ConnectionHost};
use crate::net::tls::TlsServer;
use crate::util::signal::Notify;

/// Connections the kernel queues for a listening socket before accept.
const BACKLOG: i32 = 1024;
/// How long the start-up probe retries an address that is in use. A broker
/// killed a moment ago still holds its sockets for a few milliseconds while
/// the kernel tears its io_uring down; a live process holds them for good.
const PROBE_DEADLINE: Duration = Duration::from_secs(2);
const PROBE_RETRY: Duration = Duration::from_millis(20);
/// How long the accept loop waits before trying again while the process has
/// no file descriptor to spare: the connections waiting in the backlog stay
/// there, and the open ones are served meanwhile.
const FD_EXHAUSTED_BACKOFF: Duration = Duration::from_millis(50);
/// An episode of file-descriptor exhaustion ends with the first accept that
/// comes this long after the last failed one: at the limit, every close
/// lets one accept through before the next fails, and that is one episode,
/// not one per close.
const FD_EXHAUSTED_QUIET: Duration = Duration::from_secs(1);

/// Why the listeners could not be set up.
#[derive(Debug)]
pub enum ListenError {
    /// Another process listens on the address.
    InUse(SocketAddr),
    Io(SocketAddr, io::Error),
}

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenError::InUse(addr) => write!(
                f,
                "{} is in use: another process listens on it (another warren, or RabbitMQ?)",
                addr
            ),
            ListenError::Io(addr, e) => write!(f, "cannot listen on {}: {}", addr, e),
        }
    }
}

impl std::error::Error for ListenError {}

/// Whether the IPv6 socket for `addr` is IPv6-only: when one of `addrs` is an
/// IPv4 address on the same port, which then serves the IPv4 clients.
fn only_v6(addr: SocketAddr, addrs: &[SocketAddr]) -> bool {
    addr.is_ipv6() && addrs.iter().any(|a| a.is_ipv4() && a.port() == addr.port())
}

fn socket_for(addr: SocketAddr, only_v6: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A port held only by connections in TIME_WAIT is free to listen on.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // Set either way: the sysctl net.ipv6.bindv6only may have changed the default.
        socket.set_only_v6(only_v6)?;
    }
    Ok(socket)
}

/// Binds one listening socket with SO_REUSEPORT.
pub(crate) fn bind(addr: SocketAddr, only_v6: bool, backlog: i32) -> io::Result<OwnedFd> {
    let socket = socket_for(addr, only_v6)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Fails if another process listens on `addr`. SO_REUSEPORT would let the
/// shards bind beside a listener of the same user (another warren) and
/// share its connections; a socket without it cannot bind while anyone
/// listens there.
fn ensure_free(addr: SocketAddr, only_v6: bool) -> Result<(), ListenError> {
    let deadline = Instant::now() + PROBE_DEADLINE;
    loop {
        let probe = socket_for(addr, only_v6).and_then(|s| s.bind(&addr.into()));
        match probe {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if Instant::now() >= deadline {
                    return Err(ListenError::InUse(addr));
                }
                std::thread::sleep(PROBE_RETRY);
            }
            Err(e) => return Err(ListenError::Io(addr, e)),
        }
    }
}

/// One socket per shard for each address. A port of 0 is resolved by the
/// first bind, and the other shards bind the port it got.
pub(crate) fn bind_all(
    addrs: &[SocketAddr],
    shards: usize,
) -> Result<(Vec<Vec<OwnedFd>>, Vec<SocketAddr>), ListenError> {
    let mut per_shard: Vec<Vec<OwnedFd>> = (0..shards).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for addr in addrs {
        let only_v6 = only_v6(*addr, addrs);
        let mut addr = *addr;
        if addr.port() != 0 {
            ensure_free(addr, only_v6)?;
        }
        for sockets in per_shard.iter_mut() {
            let fd = bind(addr, only_v6, BACKLOG).map_err(|e| ListenError::Io(addr, e))?;
            if addr.port() == 0 {
                addr.set_port(local_port(&fd).map_err(|e| ListenError::Io(addr, e))?);
            }
            sockets.push(fd);
        }
        bound.push(addr);
    }
    Ok((per_shard, bound))
}

fn local_port(fd: &OwnedFd) -> io::Result<u16> {
    let socket = socket2::SockRef::from(fd);
    socket
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("not an inet socket"))
}

/// Raises RLIMIT_NOFILE to its hard limit, so that the number of clients is
/// bounded by what the system allows rather than the shell's default soft
/// limit (often 1024). Returns the limit in force.
pub(crate) fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given, which lives
    // across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// An episode of file-descriptor exhaustion: when it began, the last
/// accept that failed, and how many did.
struct Exhaustion {
    since: Instant,
    last: Instant,
    failed: u64,
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Accepts connections on one of the shard's listening sockets and serves
/// each on `host` (over TLS when `tls` is given), until `stop` (then the
/// socket is closed, so that new clients are refused).
pub(crate) async fn accept_loop<H: ConnectionHost + Clone + 'static>(
    listener: TcpListener,
    host: H,
    stop: Notify,
    tls: Option<Arc<TlsServer>>,
) {
    // An episode of file-descriptor exhaustion gets one line when it starts
    // and one when it ends, however many accepts fail in between.
    let mut exhaustion: Option<Exhaustion> = None;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stop.wait().await;
            None
        })
        .await;
        let Some(accepted) = accepted else {
            return;
        };
        match accepted {
            Ok(stream) => {
                if let Some(episode) =
                    exhaustion.take_if(|e| e.last.elapsed() >= FD_EXHAUSTED_QUIET)
                {
                    info!(
                        failed_accepts = episode.failed,
                        lasted_ms = episode.since.elapsed().as_millis() as u64,
                        "file descriptors available again: accepting connections"
                    );
                }
                glommio::spawn_local(connection::serve(stream, host.clone(), tls.clone())).detach();
            }
            Err(e) => {
                let e = io::Error::from(e);
                if !is_fd_exhaustion(&e) {
                    warn!(error = %e, "accept failed");
                    glommio::timer::sleep(config::TICK).await;
                    continue;
                }
                let now = Instant::now();
                match &mut exhaustion {
                    Some(episode) => {
                        episode.failed += 1;
                        episode.last = now;
                    }
                    None => {
                        warn!(
                            error = %e,
                            "out of file descriptors: new connections wait in the backlog \
                             until open ones close (raise `ulimit -n`, or LimitNOFILE= in \
                             the systemd unit)"
                        );
                        exhaustion = Some(Exhaustion {
                            since: now,
                            last: now,
                            failed: 1,
                        });
                    }
                }
                glommio::timer::sleep(FD_EXHAUSTED_BACKOFF).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_shared_by_every_shard() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (sockets, bound) = bind_all(&[addr], 3).unwrap();
        assert_eq!(sockets.len(), 3);
        assert_ne!(bound[0].port(), 0);
        for shard in &sockets {
            assert_eq!(local_port(&shard[0]).unwrap(), bound[0].port());
        }
    }

    #[test]
    fn an_address_another_listener_holds_is_refused() {
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = other.local_addr().unwrap();
        match bind_all(&[addr], 1) {
            Err(ListenError::InUse(refused)) => assert_eq!(refused, addr),
            other => panic!("expected InUse, got {:?}", other.map(|(_, bound)| bound)),
        }
    }

    #[test]
    fn a_lone_ipv6_wildcard_is_dual_stack_and_a_pair_is_not() {
        let v6: SocketAddr = "[::]:5672".parse().unwrap();
        let v4: SocketAddr = "0.0.0.0:5672".parse().unwrap();
        assert!(!only_v6(v6, &[v6]));
        assert!(only_v6(v6, &[v4, v6]));
        assert!(!only_v6(v6, &["0.0.0.0:5673".parse().unwrap(), v6]));
        assert!(!only_v6(v4, &[v4, v6]));
    }

    #[test]
    fn a_reuseport_listener_is_refused_too() {
        let (_sockets, bound) = bind_all(&["127.0.0.1:0".parse().unwrap()], 1).unwrap();
        assert!(matches!(
            bind_all(&bound, 1),
            Err(ListenError::InUse(addr)) if addr == bound[0]
        ));
    }
}

//! Listening sockets, made by hand so that every shard can bind the same
//! address with SO_REUSEPORT (the kernel then spreads connections over the
//! shards) and so that an IPv6 wildcard stays IPv6-only, leaving the IPv4
//! wildcard to its own socket, as RabbitMQ listens on both.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn set_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: fd is a socket we own and value lives across the call.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

fn to_raw(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn local_port(fd: RawFd) -> io::Result<u16> {
    // SAFETY: getsockname writes at most `len` bytes into storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    check(unsafe {
        libc::getsockname(fd, &mut storage as *mut _ as *mut libc::sockaddr, &mut len)
    })?;
    let port = match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let sin = unsafe { &*(&storage as *const _ as *const libc::sockaddr_in) };
            u16::from_be(sin.sin_port)
        }
        _ => {
            // SAFETY: the family says it is a sockaddr_in6.
            let sin6 = unsafe { &*(&storage as *const _ as *const libc::sockaddr_in6) };
            u16::from_be(sin6.sin6_port)
        }
    };
    Ok(port)
}

/// Binds one listening socket with SO_REUSEPORT.
pub fn bind(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = check(unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: fd was just returned by socket(2) and nobody else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_option(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    if addr.is_ipv6() {
        set_option(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    let (storage, len) = to_raw(&addr);
    // SAFETY: storage holds a valid address of length len.
    check(unsafe { libc::bind(fd, &storage as *const _ as *const libc::sockaddr, len) })?;
    check(unsafe { libc::listen(fd, backlog) })?;
    Ok(owned)
}

/// One socket per shard for each address. A port of 0 is resolved by the
/// first bind, and the other shards bind the port it got.
pub fn bind_all(
    addrs: &[SocketAddr],
    shards: usize,
) -> io::Result<(Vec<Vec<OwnedFd>>, Vec<SocketAddr>)> {
    let mut per_shard: Vec<Vec<OwnedFd>> = (0..shards).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for addr in addrs {
        let mut addr = *addr;
        for sockets in per_shard.iter_mut() {
            let fd = bind(addr, 1024)?;
            if addr.port() == 0 {
                use std::os::fd::AsRawFd;
                addr.set_port(local_port(fd.as_raw_fd())?);
            }
            sockets.push(fd);
        }
        bound.push(addr);
    }
    Ok((per_shard, bound))
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
            use std::os::fd::AsRawFd;
            assert_eq!(local_port(shard[0].as_raw_fd()).unwrap(), bound[0].port());
        }
    }
}

//! Opens many connections to an AMQP 0-9-1 broker and keeps them idle, to
//! measure what an idle connection costs the broker (tuning.md).
//!
//! ```text
//! cargo run --release --example idle_connections -- [--slow] ADDR COUNT [SECONDS]
//! ```
//!
//! Without `--slow`: COUNT connections log in as guest (heartbeats off),
//! each opens channel 1, and all stay open for SECONDS (default: until
//! killed). With `--slow`: COUNT sockets send half a protocol header and
//! nothing more; the program reports when the broker dropped them (its
//! handshake timeout). RLIMIT_NOFILE is raised to its hard limit first.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use warren_protocol::{
    parse_frame, write_method, ChannelOpen, ConnectionOpen, ConnectionStartOk, ConnectionTuneOk,
    FieldTable, Frame, Method, ShortStr, PROTOCOL_HEADER,
};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let slow = args.first().is_some_and(|a| a == "--slow");
    if slow {
        args.remove(0);
    }
    let (Some(addr), Some(count)) = (args.first(), args.get(1).and_then(|c| c.parse().ok())) else {
        eprintln!("usage: idle_connections [--slow] ADDR COUNT [SECONDS]");
        std::process::exit(2);
    };
    let hold = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    raise_nofile();
    if slow {
        slow_handshakes(addr, count);
    } else {
        idle(addr, count, hold);
    }
}

fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`, a valid
    // rlimit owned by this frame.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn idle(addr: &str, count: usize, hold: Option<Duration>) {
    let started = Instant::now();
    let mut open = Vec::with_capacity(count);
    for n in 0..count {
        match open_connection(addr) {
            Ok(stream) => open.push(stream),
            Err(e) => {
                eprintln!("connection {n}: {e}");
                break;
            }
        }
    }
    println!(
        "{} connections open, with a channel each, in {:.1} s",
        open.len(),
        started.elapsed().as_secs_f64()
    );
    match hold {
        Some(hold) => std::thread::sleep(hold),
        None => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
}

fn open_connection(addr: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.write_all(PROTOCOL_HEADER)?;
    let mut buf = BytesMut::new();
    expect(&mut stream, &mut buf, |m| {
        matches!(m, Method::ConnectionStart(_))
    })?;
    let mut out = BytesMut::new();
    write_method(
        &mut out,
        0,
        &ConnectionStartOk {
            client_properties: FieldTable::default(),
            mechanism: ShortStr::from("PLAIN"),
            response: Bytes::from_static(b"\0guest\0guest"),
            locale: ShortStr::from("en_US"),
        }
        .into(),
    );
    stream.write_all(&out)?;
    expect(&mut stream, &mut buf, |m| {
        matches!(m, Method::ConnectionTune(_))
    })?;
    out.clear();
    write_method(
        &mut out,
        0,
        &ConnectionTuneOk {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 0,
        }
        .into(),
    );
    write_method(
        &mut out,
        0,
        &ConnectionOpen {
            virtual_host: ShortStr::from("/"),
        }
        .into(),
    );
    write_method(&mut out, 1, &ChannelOpen {}.into());
    stream.write_all(&out)?;
    expect(&mut stream, &mut buf, |m| {
        matches!(m, Method::ConnectionOpenOk(_))
    })?;
    expect(&mut stream, &mut buf, |m| {
        matches!(m, Method::ChannelOpenOk(_))
    })?;
    Ok(stream)
}

fn expect(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    wanted: impl Fn(&Method) -> bool,
) -> std::io::Result<()> {
    loop {
        match parse_frame(buf, 0) {
            Ok(Some(Frame::Method { method, .. })) if wanted(&method) => return Ok(()),
            Ok(Some(frame)) => {
                return Err(std::io::Error::other(format!("unexpected {frame:?}")));
            }
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::other(format!("{e:?}"))),
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sockets that start a handshake and stall: each should be dropped once
/// the broker's handshake timeout has passed.
fn slow_handshakes(addr: &str, count: usize) {
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.write_all(&PROTOCOL_HEADER[..4]).expect("write");
        stream.set_nonblocking(true).expect("nonblocking");
        sockets.push(Some((stream, Instant::now())));
    }
    println!(
        "{count} stalled sockets open in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut dropped_after: Vec<Duration> = Vec::with_capacity(count);
    let deadline = Instant::now() + Duration::from_secs(60);
    while dropped_after.len() < count && Instant::now() < deadline {
        for slot in sockets.iter_mut() {
            let Some((stream, opened)) = slot else {
                continue;
            };
            let mut bytes = [0u8; 64];
            let closed = match stream.read(&mut bytes) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            if closed {
                dropped_after.push(opened.elapsed());
                *slot = None;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    dropped_after.sort();
    let at = |q: f64| {
        dropped_after
            .get(
                ((dropped_after.len() as f64 * q) as usize)
                    .min(dropped_after.len().saturating_sub(1)),
            )
            .map_or(f64::NAN, Duration::as_secs_f64)
    };
    println!(
        "{} of {count} dropped; after (s): min {:.2}, p50 {:.2}, max {:.2}",
        dropped_after.len(),
        at(0.0),
        at(0.5),
        at(1.0)
    );
}

//! The listener's limits, at 1 and 2 shards: a broker refuses to start on an
//! address another process listens on, raises its soft RLIMIT_NOFILE to the
//! hard limit, and out of file descriptors stays up, says so once (per
//! shard), serves the connections it has, and accepts again once some close.

mod common;
use common::*;
#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::{declare_queue, get_within, open, publish, run, STEP_DEADLINE};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";
const FD_EXHAUSTED: &str = "out of file descriptors";
const FD_AVAILABLE: &str = "file descriptors available again";

#[test]
fn a_second_broker_on_the_same_address_refuses_to_start_1_shard() {
    second_broker_on_the_same_address(1);
}

#[test]
fn a_second_broker_on_the_same_address_refuses_to_start_2_shards() {
    second_broker_on_the_same_address(2);
}

fn second_broker_on_the_same_address(shards: usize) {
    let broker = Broker::start(shards);
    if broker.is_external() {
        eprintln!("skipped: needs a warren of its own");
        return;
    }
    let addr = broker.addr().to_string();
    let data_dir = fresh_temp_dir("warren-test-in-use");
    let (status, output) = start_expecting_exit(shards, &data_dir, &["--listen", &addr]);
    let _ = std::fs::remove_dir_all(&data_dir);
    assert!(!status.success(), "{output}");
    assert!(
        output.contains(&format!("{addr} is in use")),
        "the error names the address: {output}"
    );
    // The first broker still serves.
    let mut client = TcpStream::connect(broker.addr()).unwrap();
    assert!(gets_connection_start(&mut client));
}

/// A warren child of `shards` shards whose RLIMIT_NOFILE (soft and hard) is `fds`.
struct LimitedBroker {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    data_dir: std::path::PathBuf,
}

impl LimitedBroker {
    fn start(fds: u64, shards: usize) -> LimitedBroker {
        LimitedBroker::start_with_limits(fds, fds, shards)
    }

    /// With a soft limit `soft` and a hard limit `hard`.
    fn start_with_limits(soft: u64, hard: u64, shards: usize) -> LimitedBroker {
        let data_dir = fresh_temp_dir("warren-test-fds");
        let mut command = Command::new(env!("CARGO_BIN_EXE_warren"));
        command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--shards",
                &shards.to_string(),
                "--log-level",
                "info",
                "--management-listen",
                "127.0.0.1:0",
                "--prometheus-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and calls
        // only setrlimit(2), which is async-signal-safe, on a local struct.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("start warren");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                    if let Some(addr) = ready_address(&line) {
                        let _ = tx.send(addr);
                    }
                }
            });
        }
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!("warren not ready:\n{}", log.lock().unwrap());
        };
        LimitedBroker {
            child,
            addr,
            log,
            data_dir,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn lines_with(&self, text: &str) -> usize {
        self.log().lines().filter(|l| l.contains(text)).count()
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for LimitedBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn ready_address(line: &str) -> Option<SocketAddr> {
    if !line.contains("ready to accept connections") {
        return None;
    }
    let start = line.find("address=")? + "address=".len();
    let rest = line[start..].trim_start_matches(['"', '\'']);
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',' || c == '\u{1b}')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// After connection.start: a malformed connection.start-ok is answered
/// (connection.close, then the socket closed) by a broker that serves the
/// connection; false if nothing comes.
fn still_served(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A method frame on channel 0 whose arguments are missing.
    let malformed = [1, 0, 0, 0, 0, 0, 4, 0, 10, 0, 11, 0xCE];
    if stream.write_all(&malformed).is_err() {
        return false;
    }
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).is_ok()
}

/// Sends the protocol header and reads the start of connection.start: a
/// frame of type 1 on channel 0 (false if the broker does not answer).
fn gets_connection_start(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    if stream.write_all(PROTOCOL_HEADER).is_err() {
        return false;
    }
    let mut head = [0u8; 3];
    stream.read_exact(&mut head).is_ok() && head == [1, 0, 0]
}

#[test]
fn out_of_file_descriptors_the_broker_stays_up_and_accepts_again_1_shard() {
    out_of_file_descriptors(1);
}

#[test]
fn out_of_file_descriptors_the_broker_stays_up_and_accepts_again_2_shards() {
    out_of_file_descriptors(2);
}

/// Each shard accepts on its own listener and logs its own episode, so a
/// broker logs at most one line per shard per episode.
fn out_of_file_descriptors(shards: usize) {
    // What the broker holds at rest (io_uring rings, store files, the
    // listener...), measured on a first run, plus room for a few clients.
    // With two shards, a few clients so that each shard has had one (what
    // a shard opens on its first connection is part of its rest).
    let baseline = {
        let probe = LimitedBroker::start(1024, shards);
        let clients: Vec<TcpStream> = (0..4 * shards)
            .map(|_| {
                let mut client = TcpStream::connect(probe.addr).unwrap();
                assert!(gets_connection_start(&mut client), "{}", probe.log());
                client
            })
            .collect();
        (probe.open_fds() - clients.len() + 1) as u64
    };
    let broker = LimitedBroker::start(baseline + 4, shards);

    // Accepted before the flood: with two shards, a connection made first
    // may still wait in its shard's backlog while the other shard accepts
    // the flood, so the test waits for its connection.start.
    let mut early = TcpStream::connect(broker.addr).unwrap();
    assert!(gets_connection_start(&mut early), "{}", broker.log());
    // Connections beyond the limit complete in the kernel's backlog; the
    // broker cannot accept them.
    let mut flood = Vec::new();
    for _ in 0..32 {
        flood.push(TcpStream::connect(broker.addr).unwrap());
        if broker.lines_with(FD_EXHAUSTED) > 0 {
            break;
        }
    }
    assert!(
        wait_until(Duration::from_secs(10), || broker.lines_with(FD_EXHAUSTED)
            > 0),
        "no exhaustion line:\n{}",
        broker.log()
    );
    // An open connection is still served meanwhile.
    assert!(still_served(&mut early), "{}", broker.log());
    // A few more failing accepts (the loop backs off 50 ms between them)
    // are one episode: still one line.
    std::thread::sleep(Duration::from_millis(300));
    let episode_lines = broker.lines_with(FD_EXHAUSTED);
    assert!((1..=shards).contains(&episode_lines), "{}", broker.log());

    drop(flood);
    drop(early);
    // Served again, and the episode over: its end is logged by the first
    // accept a second after the last failed one.
    let recovered = wait_until(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(100));
        TcpStream::connect(broker.addr)
            .map(|mut s| gets_connection_start(&mut s))
            .unwrap_or(false)
            && broker.lines_with(FD_AVAILABLE) == broker.lines_with(FD_EXHAUSTED)
    });
    assert!(recovered, "not accepting again:\n{}", broker.log());
    assert!(
        (1..=shards).contains(&broker.lines_with(FD_EXHAUSTED)),
        "{}",
        broker.log()
    );
    // A normal client is served, and correctly.
    let url = format!("amqp://guest:guest@{}/%2f", broker.addr);
    run(async {
        let (_conn, ch) = open(&url).await;
        let queue = unique("after-fds");
        declare_queue(&ch, &queue).await;
        publish(&ch, "", &queue, b"back").await;
        let got = get_within(&ch, &queue, STEP_DEADLINE).await;
        assert_eq!(got.delivery.data, b"back");
    });
}

/// The soft RLIMIT_NOFILE (often 1024) would cap the clients long before
/// the hard one: the broker raises it to the hard limit at start.
fn raises_the_fd_limit(shards: usize) {
    let broker = LimitedBroker::start_with_limits(256, 4096, shards);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", broker.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{line}");
    let mut client = TcpStream::connect(broker.addr).unwrap();
    assert!(gets_connection_start(&mut client), "{}", broker.log());
}

#[test]
fn the_fd_limit_is_raised_to_the_hard_limit_1_shard() {
    raises_the_fd_limit(1);
}

#[test]
fn the_fd_limit_is_raised_to_the_hard_limit_2_shards() {
    raises_the_fd_limit(2);
}

/// A lone IPv6 wildcard listener takes IPv4 clients too (dual-stack, as Linux's default and
/// RabbitMQ's `[::]` listener); the default pair 0.0.0.0 and [::] keeps IPv6 to itself,
/// which the listener's unit tests check.
#[test]
fn a_lone_ipv6_wildcard_takes_ipv4_clients() {
    let Some(broker) = Broker::start_listening(2, "[::]:0") else {
        eprintln!("skipped: needs a warren of its own");
        return;
    };
    let port = broker.addr().port();
    for ip in ["127.0.0.1", "::1"] {
        let mut sock = TcpStream::connect((ip, port)).unwrap_or_else(|e| panic!("{ip}: {e}"));
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sock.write_all(PROTOCOL_HEADER).unwrap();
        let mut head = [0u8; 11];
        sock.read_exact(&mut head)
            .unwrap_or_else(|e| panic!("{ip}: no connection.start: {e}"));
        // A method frame on channel 0: connection.start (class 10, method 10).
        assert_eq!((head[0], &head[7..11]), (1, &[0, 10, 0, 10][..]), "{ip}");
    }
}

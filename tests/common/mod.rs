//! Shared test support: start a warren broker on a free loopback port, or point at an
//! external broker named by `WARREN_TEST_AMQP_URL` (this is how the tests are checked
//! against RabbitMQ).
//!
//! Every test file uses a different subset of this module.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The environment variable naming an external broker to test against instead of warren.
pub const EXTERNAL_URL_VAR: &str = "WARREN_TEST_AMQP_URL";
/// With `WARREN_TEST_AMQP_URL`, the external broker's management API
/// (http://HOST:PORT), for the management API's tests.
pub const EXTERNAL_MANAGEMENT_URL_VAR: &str = "WARREN_TEST_MANAGEMENT_URL";
/// The log line that names the management API's address.
const MANAGEMENT_LINE: &str = "management API listening";
/// The log line that names the Prometheus endpoint's address.
const PROMETHEUS_LINE: &str = "prometheus metrics listening";

const READY_LINE: &str = "ready to accept connections";
const READY_DEADLINE: Duration = Duration::from_secs(30);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A broker under test: either a warren child process owned by this value (killed and its
/// data directory removed on Drop), or an external broker from `WARREN_TEST_AMQP_URL`.
pub struct Broker {
    child: Option<Child>,
    data_dir: Option<PathBuf>,
    addr: SocketAddr,
    /// The external broker's URL as given, when there is one.
    external_url: Option<String>,
    /// `--shards` and the extra arguments, to start it again the same way.
    shards: usize,
    extra_args: Vec<String>,
}

/// How long a restart keeps trying to listen on the old port again.
const REBIND_DEADLINE: Duration = Duration::from_secs(10);

impl Broker {
    /// Starts warren with `--shards shards` (or uses the external broker).
    pub fn start(shards: usize) -> Broker {
        Broker::start_with(shards, &[])
    }

    /// Starts warren with `--listen 127.0.0.1:0 --shards N --data-dir <fresh temp dir>
    /// --default-user admin --default-pass admin --log-level info` plus `extra_args`, and
    /// waits (30 s at most) for its "ready to accept connections address=IP:PORT" line.
    pub fn start_with(shards: usize, extra_args: &[&str]) -> Broker {
        if let Some(url) = external_url() {
            return Broker::external(url, shards);
        }
        Broker::start_in(shards, fresh_temp_dir("warren-test"), extra_args)
    }

    /// Like [`Broker::start_with`], on a data directory the caller prepared (it is removed
    /// on Drop like a fresh one).
    pub fn start_in(shards: usize, data_dir: PathBuf, extra_args: &[&str]) -> Broker {
        if let Some(url) = external_url() {
            return Broker::external(url, shards);
        }
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        match spawn_warren(shards, &data_dir, "127.0.0.1:0", &extra_args) {
            Ok((child, addr)) => Broker {
                child: Some(child),
                data_dir: Some(data_dir),
                addr,
                external_url: None,
                shards,
                extra_args,
            },
            Err(why) => {
                let _ = fs::remove_dir_all(&data_dir);
                panic!("{why}");
            }
        }
    }

    /// Starts warren listening on `listen` (e.g. "[::]:0") instead of 127.0.0.1:0; None
    /// with an external broker, whose listeners the test cannot choose.
    pub fn start_listening(shards: usize, listen: &str) -> Option<Broker> {
        if external_url().is_some() {
            return None;
        }
        let data_dir = fresh_temp_dir("warren-test");
        match spawn_warren(shards, &data_dir, listen, &[]) {
            Ok((child, addr)) => Some(Broker {
                child: Some(child),
                data_dir: Some(data_dir),
                addr,
                external_url: None,
                shards,
                extra_args: Vec::new(),
            }),
            Err(why) => {
                let _ = fs::remove_dir_all(&data_dir);
                panic!("{why}");
            }
        }
    }

    fn external(url: String, shards: usize) -> Broker {
        let addr = addr_of_url(&url);
        Broker {
            child: None,
            data_dir: None,
            addr,
            external_url: Some(url),
            shards,
            extra_args: Vec::new(),
        }
    }

    /// Like [`Broker::restart`], with these extra arguments instead of the first start's
    /// (e.g. none, to start again without `--definitions`).
    pub fn restart_with(&mut self, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        self.restart();
    }

    /// Like [`Broker::restart`], with `--shards` set to `shards` from now on.
    pub fn restart_with_shards(&mut self, shards: usize) {
        self.shards = shards;
        self.restart();
    }

    /// Stops warren with SIGTERM (it closes its clients and exits 0) and starts it again
    /// with the same arguments, data directory and port. Panics if it does not exit 0 or
    /// does not come back. Does nothing for an external broker.
    pub fn restart(&mut self) {
        self.restart_changing(|_| {});
    }

    /// Like [`Broker::restart`], running `between` on the data directory
    /// while warren is down (to damage or replace its files).
    pub fn restart_changing(&mut self, between: impl FnOnce(&std::path::Path)) {
        let Some(data_dir) = self.data_dir.clone() else {
            return;
        };
        let status = self
            .stop_with(libc::SIGTERM, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("warren did not exit after SIGTERM\n{}", self.log()));
        assert!(
            status.success(),
            "warren exited with {status:?}\n{}",
            self.log()
        );
        between(&data_dir);
        self.start_again("restarted by the test after SIGTERM");
    }

    /// Like [`Broker::restart`], staying down for `down` between the exit and
    /// the start (for deadlines that must pass while the broker is not running).
    pub fn restart_after(&mut self, down: Duration) {
        if self.data_dir.is_none() {
            return;
        }
        let status = self
            .stop_with(libc::SIGTERM, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("warren did not exit after SIGTERM\n{}", self.log()));
        assert!(
            status.success(),
            "warren exited with {status:?}\n{}",
            self.log()
        );
        thread::sleep(down);
        self.start_again("restarted by the test after SIGTERM and a pause");
    }

    /// Kills warren with SIGKILL (no chance to write anything) and starts it again with
    /// the same arguments, data directory and port. Does nothing for an external broker.
    pub fn crash_and_restart(&mut self) {
        if self.data_dir.is_none() {
            return;
        }
        self.kill();
        self.start_again("restarted by the test after SIGKILL");
    }

    fn start_again(&mut self, why: &str) {
        let data_dir = self.data_dir.clone().expect("a warren child");
        append_to(&data_dir.join("broker.log"), &format!("---- {why} ----\n"));
        let listen = self.addr.to_string();
        // The old listening socket is closed, but another process may take the port
        // for a moment (parallel tests bind port 0): try again until the deadline.
        let deadline = Instant::now() + REBIND_DEADLINE;
        loop {
            match spawn_warren(self.shards, &data_dir, &listen, &self.extra_args) {
                Ok((child, addr)) => {
                    assert_eq!(addr, self.addr, "warren came back on another address");
                    self.child = Some(child);
                    return;
                }
                Err(why) if why.contains("cannot listen") && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100));
                }
                Err(why) => panic!("warren did not come back: {why}"),
            }
        }
    }

    /// The address the broker listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The shard count it was started with (as the test asked, for an
    /// external broker).
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`, or the external URL as given.
    pub fn url(&self) -> String {
        match &self.external_url {
            Some(u) => u.clone(),
            None => self.url_as("guest", "guest"),
        }
    }

    /// `amqp://USER:PASS@IP:PORT/%2f`.
    pub fn url_as(&self, user: &str, pass: &str) -> String {
        format!("amqp://{user}:{pass}@{}/%2f", self.addr)
    }

    /// The broker process's id (None for an external broker), to read its
    /// /proc entries.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A field of its /proc/PID/status in bytes (`"VmRSS:"`, `"VmHWM:"`);
    /// for a broker the test started.
    pub fn proc_status_bytes(&self, field: &str) -> u64 {
        let pid = self.pid().expect("a broker started by the test");
        let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in {status}"));
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("a number of kB");
        kib * 1024
    }

    /// Its peak resident size so far (VmHWM), in bytes.
    pub fn peak_resident_bytes(&self) -> u64 {
        self.proc_status_bytes("VmHWM:")
    }

    /// True when the tests run against `WARREN_TEST_AMQP_URL` rather than a warren child.
    pub fn is_external(&self) -> bool {
        self.external_url.is_some()
    }

    /// What the broker wrote to stdout and stderr so far (empty for an external broker).
    pub fn log(&self) -> String {
        match &self.data_dir {
            Some(d) => fs::read_to_string(d.join("broker.log")).unwrap_or_default(),
            None => String::new(),
        }
    }

    /// The Prometheus endpoint's base URL (http://IP:PORT), from warren's
    /// log; None for an external broker or one started without it.
    pub fn prometheus_url(&self) -> Option<String> {
        if self.is_external() {
            return None;
        }
        self.log()
            .lines()
            .filter(|line| line.contains(PROMETHEUS_LINE))
            .find_map(parse_address)
            .map(|address| format!("http://{address}"))
    }

    /// The management API's base URL (http://IP:PORT): the first address
    /// warren logged, or `WARREN_TEST_MANAGEMENT_URL` for an external broker.
    /// Warren is started with `--management-listen 127.0.0.1:0` unless the
    /// test chose otherwise.
    pub fn management_url(&self) -> Option<String> {
        if self.is_external() {
            return std::env::var(EXTERNAL_MANAGEMENT_URL_VAR)
                .ok()
                .map(|u| u.trim_end_matches('/').to_string());
        }
        // Logged before the ready line, on the same stream: it is in the
        // log once the broker is ready.
        self.log()
            .lines()
            .filter(|line| line.contains(MANAGEMENT_LINE))
            .find_map(parse_address)
            .map(|a| format!("http://{a}"))
    }

    /// The broker's data directory (None for an external broker).
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.data_dir.as_deref()
    }

    /// Sends `signal` (SIGTERM, SIGINT) to warren and waits up to `limit`
    /// for it to exit. None for an external broker, or if it did not exit
    /// in time (it is then killed by Drop).
    pub fn stop_with(
        &mut self,
        signal: libc::c_int,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let pid = libc::pid_t::try_from(child.id()).ok()?;
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, signal);
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL and wait. Does nothing for an external broker or a broker already killed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill_group(&mut child);
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if let Some(d) = self.data_dir.take() {
            if thread::panicking() {
                if let Ok(log) = fs::read_to_string(d.join("broker.log")) {
                    report_log_of_failed_test(&d, &log);
                }
            }
            let _ = fs::remove_dir_all(&d);
        }
    }
}

/// Lines of a failed test's broker log printed after its panic message. A
/// CI report shows the end of the output, so the whole log would push the
/// panic message out of it; the whole log is kept in the target's tmp dir.
const FAILED_LOG_TAIL_LINES: usize = 30;

fn report_log_of_failed_test(data_dir: &std::path::Path, log: &str) {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "broker".to_string());
    let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("failed-broker-logs")
        .join(format!("{name}.log"));
    let kept_note = match fs::create_dir_all(kept.parent().expect("has a parent"))
        .and_then(|()| fs::write(&kept, log))
    {
        Ok(()) => format!("whole log kept in {}", kept.display()),
        Err(e) => format!("cannot keep the whole log in {}: {e}", kept.display()),
    };
    let lines: Vec<&str> = log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(FAILED_LOG_TAIL_LINES)..];
    eprintln!(
        "---- warren broker.log ({}): last {} of {} lines; {kept_note} ----\n{}",
        data_dir.display(),
        tail.len(),
        lines.len(),
        tail.join("\n")
    );
}

/// Starts warren on `data_dir` listening on `listen` and waits for its ready line.
/// Its output goes to `data_dir/broker.log` (appended to). Err explains a failure to start.
fn spawn_warren(
    shards: usize,
    data_dir: &std::path::Path,
    listen: &str,
    extra_args: &[String],
) -> Result<(Child, SocketAddr), String> {
    let log_path = data_dir.join("broker.log");
    let log = Arc::new(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open broker.log"),
    ));
    let args = warren_args(shards, data_dir, listen, extra_args);
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(&args)
        // Its own process group, so kill() also reaches anything it starts.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", env!("CARGO_BIN_EXE_warren")));

    // Both streams are drained by their own thread for the broker's whole life, into
    // broker.log; until the broker is ready, lines are also sent here.
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("stderr piped");
    let stdout = child.stdout.take().expect("stdout piped");
    spawn_drain(stderr, log.clone(), tx.clone());
    spawn_drain(stdout, log, tx);

    let deadline = Instant::now() + READY_DEADLINE;
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(READY_LINE) {
                    return match parse_address(&line) {
                        Some(a) => Ok((child, a)),
                        None => {
                            let _ = kill_group(&mut child);
                            Err(format!(
                                "warren's ready line has no address=IP:PORT: {line:?}\n\
                                 output so far:\n{seen}"
                            ))
                        }
                    };
                }
            }
            Err(e) => {
                let status = kill_group(&mut child);
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("not ready after {READY_DEADLINE:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => {
                        format!("exited before it was ready ({status:?})")
                    }
                };
                // Give the drain threads a moment to flush what is left.
                thread::sleep(Duration::from_millis(50));
                return Err(format!(
                    "warren {why}; args {args:?}\noutput so far:\n{seen}"
                ));
            }
        }
    }
}

fn warren_args(
    shards: usize,
    data_dir: &std::path::Path,
    listen: &str,
    extra_args: &[String],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--listen",
        listen,
        "--shards",
        &shards.to_string(),
        "--data-dir",
        &data_dir.to_string_lossy(),
        "--default-user",
        "admin",
        "--default-pass",
        "admin",
        "--log-level",
        "info",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    // A test that sets its own log level replaces the default one (clap
    // refuses the flag twice).
    if extra_args.iter().any(|a| a == "--log-level") {
        args.truncate(args.len() - 2);
    }
    // The management API on a port of its own choosing, never the default
    // 15672 that parallel tests would fight over. A test that asks for it
    // over HTTPS alone gets it so (no plain listener, as warren does).
    if !extra_args.iter().any(|a| {
        a == "--management-listen" || a == "--no-management" || a == "--management-tls-listen"
    }) {
        args.extend(["--management-listen".to_string(), "127.0.0.1:0".to_string()]);
    }
    // Prometheus likewise, never on the default 15692.
    if !extra_args.iter().any(|a| {
        a == "--prometheus-listen" || a == "--no-prometheus" || a == "--prometheus-tls-listen"
    }) {
        args.extend(["--prometheus-listen".to_string(), "127.0.0.1:0".to_string()]);
    }
    args.extend(extra_args.iter().cloned());
    args
}

/// Runs warren as [`Broker::start_in`] would, for a start that must fail: waits (30 s at
/// most) for it to exit and returns its exit status and everything it printed. Panics if
/// it becomes ready instead (after stopping it).
pub fn start_expecting_exit(
    shards: usize,
    data_dir: &std::path::Path,
    extra_args: &[&str],
) -> (std::process::ExitStatus, String) {
    let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
    let args = warren_args(shards, data_dir, "127.0.0.1:0", &extra_args);
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(&args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", env!("CARGO_BIN_EXE_warren")));
    let mut stderr = child.stderr.take().expect("stderr piped");
    let mut stdout = child.stdout.take().expect("stdout piped");
    let err_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let out_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + READY_DEADLINE;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = kill_group(&mut child);
            panic!("warren did not exit within {READY_DEADLINE:?}; args {args:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let output = err_reader.join().unwrap_or_default() + &out_reader.join().unwrap_or_default();
    assert!(
        !output.contains(READY_LINE),
        "warren became ready instead of refusing to start:\n{output}"
    );
    (status, output)
}

/// SIGKILL to the child's process group (the child leads it), then reap the child.
fn kill_group(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    child.wait()
}

fn spawn_drain(
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<File>>,
    tx: mpsc::Sender<String>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        let mut tx = Some(tx);
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Ok(mut f) = log.lock() {
                        let _ = f.write_all(&buf);
                    }
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if let Some(t) = &tx {
                        if line.contains(READY_LINE) || t.send(line.clone()).is_err() {
                            let _ = t.send(line);
                            // Ready (or nobody listens any more): from now on, only the log.
                            tx = None;
                        }
                    }
                }
            }
        }
    });
}

/// Finds `address=IP:PORT` in the ready line (tolerating quotes and ANSI colour codes).
fn parse_address(line: &str) -> Option<SocketAddr> {
    let clean = strip_ansi(line);
    let start = clean.find("address=")? + "address=".len();
    let rest = clean[start..].trim_start_matches(['"', '\'']);
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn external_url() -> Option<String> {
    std::env::var(EXTERNAL_URL_VAR)
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// host:port of an amqp:// URL (port 5672 when absent), resolved.
fn addr_of_url(url: &str) -> SocketAddr {
    let rest = url
        .strip_prefix("amqp://")
        .unwrap_or_else(|| panic!("{EXTERNAL_URL_VAR} must start with amqp://, got {url:?}"));
    let authority = rest.split('/').next().unwrap_or(rest);
    let hostport = authority.rsplit('@').next().unwrap_or(authority);
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5672")
    };
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("cannot resolve {hostport:?} from {EXTERNAL_URL_VAR}={url:?}"))
}

/// A fresh directory std::env::temp_dir()/PREFIX-<pid>-<counter>.
pub fn fresh_temp_dir(prefix: &str) -> PathBuf {
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Left over from an earlier process with the same pid.
                let _ = fs::remove_dir_all(&dir);
            }
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
}

/// Polls `cond` every 10 ms until it is true or `timeout` has passed; returns whether it
/// became true. Tests wait on conditions with a deadline, never with a bare sleep.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A name unique to this call: `PREFIX-<pid>-<counter>`, so tests don't collide on a shared
/// external broker.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Appends to a file, creating it (used by helpers that keep their own logs).
pub fn append_to(path: &std::path::Path, text: &str) {
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(text.as_bytes());
    }
}

#[doc(hidden)]
#[allow(unused_imports)] // not every test file uses broker_test!
pub use paste as __paste;

/// `broker_test!(name, |b| { ... })` generates `#[test] fn name_shards_1()` and
/// `#[test] fn name_shards_2()`, each starting its own [`Broker`] with that many shards and
/// running the body with `b: &Broker`. Under `WARREN_TEST_AMQP_URL` both run against the
/// external broker.
#[macro_export]
macro_rules! broker_test {
    ($name:ident, |$b:ident| $body:block) => {
        $crate::common::__paste::paste! {
            #[test]
            fn [<$name _shards_1>]() {
                let broker = $crate::common::Broker::start(1);
                let $b: &$crate::common::Broker = &broker;
                $body
            }

            #[test]
            fn [<$name _shards_2>]() {
                let broker = $crate::common::Broker::start(2);
                let $b: &$crate::common::Broker = &broker;
                $body
            }
        }
    };
}

// ---- Management API support (used by tests/warrenctl.rs) ----------------------------------

/// A loopback port nobody listens on at the moment of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

impl Broker {
    /// The broker under test with its management API, and the API's URL with
    /// credentials: warren with the API on the port it chose itself (see
    /// [`Broker::management_url`]; URL `http://guest:guest@127.0.0.1:PORT`, guest being
    /// allowed on loopback), or the external broker of `WARREN_TEST_AMQP_URL` with the API
    /// of `WARREN_TEST_MANAGEMENT_URL` (both must be set).
    /// None against an external broker without a management URL: the caller skips.
    pub fn start_with_management(shards: usize) -> Option<(Broker, String)> {
        if let Ok(url) = std::env::var(EXTERNAL_MANAGEMENT_URL_VAR) {
            assert!(
                external_url().is_some(),
                "{EXTERNAL_MANAGEMENT_URL_VAR} is set: set {EXTERNAL_URL_VAR} to the same broker's AMQP URL too"
            );
            return Some((Broker::start(shards), url));
        }
        if external_url().is_some() {
            return None;
        }
        let broker = Broker::start(shards);
        let base = broker.management_url().unwrap_or_else(|| {
            panic!("warren logged no management API address:\n{}", broker.log())
        });
        let url = base.replacen("http://", "http://guest:guest@", 1);
        Some((broker, url))
    }
}

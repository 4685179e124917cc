//! The Go example programs in `examples/go/` (the RabbitMQ tutorials' scenarios, written
//! against amqp091-go), built from the repository and run against the broker the way the
//! tutorials run them: consumers in the background until killed, producers to completion.
//! Each program reads the broker's URL from `AMQP_URL`, which the tests set to the broker
//! under test (warren's guest URL on loopback, or `WARREN_TEST_AMQP_URL`).
//!
//! Needs `go` and the amqp091-go sources from Debian
//! (`apt-get install -y golang-go golang-github-rabbitmq-amqp091-go-dev`); scripts/test
//! installs them. The programs build offline in GOPATH mode, against those sources.

mod common;

use common::{fresh_temp_dir, unique, wait_until, Broker};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

const AMQP091_SRC: &str = "/usr/share/gocode/src/github.com/rabbitmq/amqp091-go";
const INSTALL_HINT: &str =
    "apt-get update && apt-get install -y golang-go golang-github-rabbitmq-amqp091-go-dev";

/// The twelve programs, each `examples/go/NAME/main.go`.
const PROGRAMS: [&str; 12] = [
    "send",
    "receive",
    "new_task",
    "worker",
    "emit_log",
    "receive_logs",
    "emit_log_direct",
    "receive_logs_direct",
    "emit_log_topic",
    "receive_logs_topic",
    "rpc_server",
    "rpc_client",
];

/// How long a consumer may take to print its "Waiting for" line, a producer to finish, and a
/// message to show up in a consumer's output.
const STEP: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Locating and building the programs
// ---------------------------------------------------------------------------------------

/// `<repo>/examples/go`.
fn examples_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join("go");
    for name in PROGRAMS {
        assert!(
            dir.join(name).join("main.go").is_file(),
            "{}/{name}/main.go is missing",
            dir.display()
        );
    }
    dir
}

/// `target/` (the parent of the directory holding the warren binary).
fn target_dir() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_warren"));
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Checks once per process that the Go toolchain and the amqp091-go sources are installed;
/// fails (never skips) with the command that installs them.
fn check_toolchain() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECK.get_or_init(|| {
        match Command::new("go").arg("version").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(format!(
                    "`go version` failed: {}\ninstall with: {INSTALL_HINT}",
                    String::from_utf8_lossy(&o.stderr)
                ))
            }
            Err(e) => {
                return Err(format!(
                    "`go` not found ({e})\ninstall with: {INSTALL_HINT}"
                ))
            }
        }
        if !Path::new(AMQP091_SRC).is_dir() {
            return Err(format!(
                "{AMQP091_SRC} is missing\ninstall with: {INSTALL_HINT}"
            ));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The given programs, built from `examples/go/` into a temporary directory (removed on Drop),
/// and the URL they are to dial.
struct GoPrograms {
    dir: PathBuf,
    url: String,
}

impl GoPrograms {
    fn build(b: &Broker, programs: &[&str]) -> GoPrograms {
        check_toolchain();
        let examples = examples_dir();
        let dir = fresh_temp_dir("warren-go");
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).unwrap();
        let cache = target_dir().join("go-cache");
        fs::create_dir_all(&cache).unwrap();
        let packages: Vec<String> = programs.iter().map(|p| format!("./{p}")).collect();
        // GOPATH mode: the programs' one import resolves to Debian's sources under
        // /usr/share/gocode, with no module download. The temporary directory comes first
        // so that nothing is ever written under /usr/share/gocode.
        let out = Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(format!("{}/", bin.display()))
            .args(&packages)
            .current_dir(&examples)
            .env("GO111MODULE", "off")
            .env("GOPATH", format!("{}:/usr/share/gocode", dir.display()))
            .env("GOCACHE", &cache)
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0")
            .output()
            .expect("run go build");
        if !out.status.success() {
            let _ = fs::remove_dir_all(&dir);
            panic!(
                "go build {packages:?} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        GoPrograms { dir, url: b.url() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    /// Starts a program in the background (killed on Drop).
    fn spawn(&self, name: &str, args: &[&str]) -> GoProc {
        GoProc::spawn(&self.path(name), name, args, &self.url)
    }

    /// Runs a program to completion; panics with its output if it fails or hangs.
    fn run(&self, name: &str, args: &[&str]) -> String {
        let mut p = self.spawn(name, args);
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = p.child.try_wait().expect("try_wait") {
                // Let the drain threads catch the last lines.
                p.wait_drained(Duration::from_secs(5));
                let out = p.output();
                assert!(
                    status.success(),
                    "{name} {args:?} failed ({status}):\n{out}"
                );
                return out;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{name} {args:?} did not finish within {STEP:?}:\n{}",
                    p.output()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for GoPrograms {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A running Go program whose stdout and stderr (Go's log package writes to stderr) are
/// collected into one string.
struct GoProc {
    name: String,
    child: Child,
    output: Arc<Mutex<String>>,
    drains: Vec<thread::JoinHandle<()>>,
}

impl GoProc {
    fn spawn(path: &Path, name: &str, args: &[&str], url: &str) -> GoProc {
        let mut child = Command::new(path)
            .args(args)
            .env("AMQP_URL", url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        let output = Arc::new(Mutex::new(String::new()));
        let drains = vec![
            drain(child.stdout.take().unwrap(), output.clone()),
            drain(child.stderr.take().unwrap(), output.clone()),
        ];
        GoProc {
            name: name.to_string(),
            child,
            output,
            drains,
        }
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Lines that end with `suffix` (log lines start with a timestamp).
    fn lines_ending(&self, suffix: &str) -> usize {
        self.output()
            .lines()
            .filter(|l| l.ends_with(suffix))
            .count()
    }

    /// The messages a receive_logs* consumer printed (` [x] BODY`).
    fn received_logs(&self) -> Vec<String> {
        self.output()
            .lines()
            .filter_map(|l| l.split_once(" [x] ").map(|(_, body)| body.to_string()))
            .collect()
    }

    /// The messages a receive/worker consumer printed (`Received a message: BODY`).
    fn received_messages(&self) -> Vec<String> {
        self.output()
            .lines()
            .filter_map(|l| {
                l.split_once("Received a message: ")
                    .map(|(_, body)| body.to_string())
            })
            .collect()
    }

    /// Waits until the output contains `needle`; panics with the output if it does not within
    /// STEP, or if the program exits first.
    fn wait_for(&mut self, needle: &str) {
        let mut exited = None;
        let ok = wait_until(STEP, || {
            if self.output().contains(needle) {
                return true;
            }
            if exited.is_none() {
                exited = self.child.try_wait().ok().flatten();
            }
            false
        });
        if !ok {
            let status = match exited {
                Some(s) => format!("it exited ({s})"),
                None => "it is still running".to_string(),
            };
            panic!(
                "{} never printed {needle:?} within {STEP:?} ({status}); output:\n{}",
                self.name,
                self.output()
            );
        }
    }

    fn wait_drained(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.drains.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for GoProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drain(stream: impl Read + Send + 'static, out: Arc<Mutex<String>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => out
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&String::from_utf8_lossy(&line)),
            }
        }
    })
}

// ---------------------------------------------------------------------------------------
// Sharing an external broker
// ---------------------------------------------------------------------------------------

/// The programs use fixed names ("hello", "task_queue", "logs", ...). A warren broker belongs
/// to one test, but an external broker is shared by both shard variants of every test, so
/// there the tests take turns, and stale queues from earlier runs are deleted first.
fn exclusive_use(b: &Broker) -> Option<MutexGuard<'static, ()>> {
    if !b.is_external() {
        return None;
    }
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    delete_queues(b, &["hello", "task_queue", "rpc_queue"]);
    Some(guard)
}

fn delete_queues(b: &Broker, queues: &[&str]) {
    use lapin::options::QueueDeleteOptions;
    let url = b.url();
    async_global_executor::block_on(async {
        let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let ch = conn.create_channel().await.expect("channel.open");
        for q in queues {
            ch.queue_delete(q, QueueDeleteOptions::default())
                .await
                .unwrap_or_else(|e| panic!("queue.delete {q}: {e}"));
        }
        let _ = conn.close(200, "bye").await;
    });
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// The tutorials
// ---------------------------------------------------------------------------------------

// 1. Hello world: receive, then send (with its default message, then one of the test's).
broker_test!(hello_world, |b| {
    let _turn = exclusive_use(b);
    let go = GoPrograms::build(b, &["send", "receive"]);
    let mut receive = go.spawn("receive", &[]);
    receive.wait_for("Waiting for messages");
    let sent = go.run("send", &[]);
    assert!(
        sent.contains(" [x] Sent Hello World!"),
        "send printed:\n{sent}"
    );
    let body = format!("hello {}", unique("hello"));
    go.run("send", &[&body]);
    receive.wait_for(&format!("Received a message: {body}"));
    assert_eq!(
        receive.received_messages(),
        vec!["Hello World!".to_string(), body],
        "{}",
        receive.output()
    );
});

// 2. Work queues: two workers with prefetch 1, six tasks of one second each, persistent
// messages on a durable queue, confirmed before new_task reports them sent.
broker_test!(work_queues, |b| {
    let _turn = exclusive_use(b);
    let go = GoPrograms::build(b, &["new_task", "worker"]);
    let mut w1 = go.spawn("worker", &[]);
    let mut w2 = go.spawn("worker", &[]);
    w1.wait_for("Waiting for messages");
    w2.wait_for("Waiting for messages");

    let tag = unique("wq");
    let words = ["First", "Second", "Third", "Fourth", "Fifth", "Sixth"];
    // Equal work (one dot = one second) for each task, so fair dispatch splits them evenly.
    let bodies: Vec<String> = words
        .iter()
        .map(|w| format!("{w} message {tag}."))
        .collect();
    for body in &bodies {
        let out = go.run("new_task", &[body]);
        assert!(
            out.contains(&format!(" [x] Sent {body}")),
            "new_task printed:\n{out}"
        );
    }

    let all_done = wait_until(Duration::from_secs(30), || {
        w1.lines_ending("Done") + w2.lines_ending("Done") >= bodies.len()
    });
    let (got1, got2) = (w1.received_messages(), w2.received_messages());
    assert!(
        all_done,
        "the workers did not finish 6 tasks in 30 s\nworker 1:\n{}\nworker 2:\n{}",
        w1.output(),
        w2.output()
    );
    let mut all = got1.clone();
    all.extend(got2.iter().cloned());
    assert_eq!(
        sorted(all),
        sorted(bodies.clone()),
        "every task must be processed exactly once\nworker 1:\n{}\nworker 2:\n{}",
        w1.output(),
        w2.output()
    );
    assert!(
        got1.len() >= 2 && got2.len() >= 2,
        "fair dispatch (prefetch 1) should give each worker at least 2 of 6 tasks, got {} and {}",
        got1.len(),
        got2.len()
    );
});

// 3. Publish/subscribe: a fanout exchange reaches every bound queue.
broker_test!(fanout, |b| {
    let _turn = exclusive_use(b);
    let go = GoPrograms::build(b, &["emit_log", "receive_logs"]);
    let mut r1 = go.spawn("receive_logs", &[]);
    let mut r2 = go.spawn("receive_logs", &[]);
    r1.wait_for("Waiting for logs");
    r2.wait_for("Waiting for logs");
    let body = format!("hello {}", unique("fanout"));
    go.run("emit_log", &[&body]);
    r1.wait_for(&format!(" [x] {body}"));
    r2.wait_for(&format!(" [x] {body}"));
    assert_eq!(r1.received_logs(), vec![body.clone()], "{}", r1.output());
    assert_eq!(r2.received_logs(), vec![body.clone()], "{}", r2.output());
});

// 4. Routing: a direct exchange delivers by exact routing key. The consumers print
// ` [x] KEY: BODY`.
broker_test!(direct_routing, |b| {
    let _turn = exclusive_use(b);
    let go = GoPrograms::build(b, &["emit_log_direct", "receive_logs_direct"]);
    let mut warn_err = go.spawn("receive_logs_direct", &["warning", "error"]);
    let mut info = go.spawn("receive_logs_direct", &["info"]);
    warn_err.wait_for("Waiting for logs");
    info.wait_for("Waiting for logs");

    let tag = unique("direct");
    let debug = format!("debug goes nowhere {tag}");
    let error = format!("Run. Run. {tag}");
    let info_msg = format!("info message {tag}");
    let warning = format!("warning message {tag}");
    // The unroutable one first, so it would have arrived before the others if misrouted.
    go.run("emit_log_direct", &["debug", &debug]);
    go.run("emit_log_direct", &["error", &error]);
    go.run("emit_log_direct", &["info", &info_msg]);
    go.run("emit_log_direct", &["warning", &warning]);

    warn_err.wait_for(&format!(" [x] error: {error}"));
    warn_err.wait_for(&format!(" [x] warning: {warning}"));
    info.wait_for(&format!(" [x] info: {info_msg}"));
    assert_eq!(
        warn_err.received_logs(),
        vec![format!("error: {error}"), format!("warning: {warning}")],
        "the warning/error consumer got the wrong messages:\n{}",
        warn_err.output()
    );
    assert_eq!(
        info.received_logs(),
        vec![format!("info: {info_msg}")],
        "the info consumer got the wrong messages:\n{}",
        info.output()
    );
});

// 5. Topics: `*` is exactly one word (possibly empty: "kern." matches "kern.*", as in
// RabbitMQ), a message that matches two bindings of one queue arrives there once, and keys
// that match no binding reach nobody.
broker_test!(topic_routing, |b| {
    let _turn = exclusive_use(b);
    let go = GoPrograms::build(b, &["emit_log_topic", "receive_logs_topic"]);
    let mut kern = go.spawn("receive_logs_topic", &["kern.*"]);
    let mut critical = go.spawn("receive_logs_topic", &["*.critical"]);
    let mut both_patterns = go.spawn("receive_logs_topic", &["kern.*", "*.critical"]);
    kern.wait_for("Waiting for logs");
    critical.wait_for("Waiting for logs");
    both_patterns.wait_for("Waiting for logs");

    let tag = unique("topic");
    let msg = |key: &str| format!("{key} says {tag}");
    let line = |key: &str| format!("{key}: {}", msg(key));
    // Keys that match neither binding, sent first.
    for key in [
        "kern",
        "quick.orange.rabbit",
        "critical",
        "kern.info.extra",
        "app.critical.extra",
    ] {
        go.run("emit_log_topic", &[key, &msg(key)]);
    }
    for key in ["kern.critical", "kern.info", "app.critical", "kern."] {
        go.run("emit_log_topic", &[key, &msg(key)]);
    }

    kern.wait_for(&format!(" [x] {}", line("kern.")));
    critical.wait_for(&format!(" [x] {}", line("app.critical")));
    both_patterns.wait_for(&format!(" [x] {}", line("kern.")));
    assert_eq!(
        kern.received_logs(),
        vec![line("kern.critical"), line("kern.info"), line("kern.")],
        "the kern.* consumer got the wrong messages:\n{}",
        kern.output()
    );
    assert_eq!(
        critical.received_logs(),
        vec![line("kern.critical"), line("app.critical")],
        "the *.critical consumer got the wrong messages:\n{}",
        critical.output()
    );
    assert_eq!(
        both_patterns.received_logs(),
        vec![
            line("kern.critical"),
            line("kern.info"),
            line("app.critical"),
            line("kern.")
        ],
        "the kern.* + *.critical consumer got the wrong messages:\n{}",
        both_patterns.output()
    );
});

// 6. RPC: reply_to + correlation_id through an exclusive server-named queue; a request that
// is no number is rejected without an answer, and the server goes on serving.
broker_test!(rpc, |b| {
    let _turn = exclusive_use(b);
    let go = GoPrograms::build(b, &["rpc_server", "rpc_client"]);
    let mut server = go.spawn("rpc_server", &[]);
    server.wait_for("Awaiting RPC requests");
    let out = go.run("rpc_client", &["30"]);
    assert!(
        out.contains(" [x] Requesting fib(30)"),
        "rpc_client printed:\n{out}"
    );
    assert!(
        out.contains(" [.] Got 832040"),
        "rpc_client printed:\n{out}"
    );
    server.wait_for(" [.] fib(30)");
    let out = go.run("rpc_client", &["10"]);
    assert!(out.contains(" [.] Got 55"), "rpc_client printed:\n{out}");
});

// The examples are kept as gofmt writes them.
#[test]
fn examples_are_gofmt_clean() {
    check_toolchain();
    let out = Command::new("gofmt")
        .arg("-l")
        .arg(examples_dir())
        .output()
        .expect("run gofmt");
    assert!(out.status.success(), "gofmt failed: {out:?}");
    let unformatted = String::from_utf8_lossy(&out.stdout);
    assert!(
        unformatted.trim().is_empty(),
        "not gofmt-formatted (run gofmt -w examples/go):\n{unformatted}"
    );
}

//! A short functional loadgen run against the real warren broker, with one shard and
//! with two: every message must arrive exactly once, and the report files must exist
//! and parse. Nothing here is timed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The broker process; killed when dropped, whatever the test's outcome.
struct Broker {
    child: Child,
    address: String,
    data_dir: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("loadgen-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// target/debug/warren (or the profile's directory), built if missing.
fn warren_binary() -> PathBuf {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_loadgen"));
    let dir = loadgen.parent().expect("binary directory");
    let warren = dir.join("warren");
    if !warren.exists() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let status = Command::new(env!("CARGO"))
            .args(["build", "--bin", "warren"])
            .current_dir(workspace)
            .status()
            .expect("run cargo build --bin warren");
        assert!(status.success(), "cargo build --bin warren failed");
    }
    assert!(warren.exists(), "no warren binary at {}", warren.display());
    warren
}

/// A broker of its own for each test (`name`): tests run in parallel.
fn start_broker(name: &str, shards: usize) -> Broker {
    let data_dir = std::env::temp_dir().join(format!(
        "loadgen-test-{}-warren-{name}-{shards}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&data_dir);
    let mut child = Command::new(warren_binary())
        .args(["--listen", "127.0.0.1:0", "--shards", &shards.to_string()])
        // The HTTP listeners on loopback ports of their own, never the
        // defaults (0.0.0.0:15672 and :15692) that parallel tests share.
        .args(["--management-listen", "127.0.0.1:0"])
        .args(["--prometheus-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start warren");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep reading so the broker never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !line.contains("ready to accept connections") {
                continue;
            }
            if let Some(rest) = line.split("address=").nth(1) {
                let address = rest.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(address);
            }
        }
    });
    let mut broker = Broker {
        child,
        address: String::new(),
        data_dir,
    };
    broker.address = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("warren did not print its ready line within 30 s");
    broker
}

/// A number at the top level of the summary.
fn json_number(json: &str, key: &str) -> f64 {
    let summary: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    summary[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {json}"))
}

/// The text is one JSON object.
fn assert_json_shape(json: &str) {
    let value: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert!(value.is_object(), "{json}");
}

fn check_hgrm(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"],
        "{}",
        path.display()
    );
    let data: Vec<Vec<f64>> = lines
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.split_whitespace()
                .map(|f| f.parse::<f64>().unwrap())
                .collect()
        })
        .collect();
    assert!(data.len() > 5, "too few data lines in {}", path.display());
    assert_eq!(data.last().unwrap()[1], 1.0, "ends at percentile 1");
    assert!(text.contains("#[Max     ="), "{}", path.display());
}

fn run_loadgen_against_warren(shards: usize) {
    let broker = start_broker("once", shards);
    let report = TempDir::new(&format!("report-{shards}"));
    let uri = format!("amqp://guest:guest@{}/%2f", broker.address);
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--uri", &uri])
        .args([
            "-x", "2", "-y", "2", "-C", "20000", "-c", "500", "-q", "500",
        ])
        .args(["--multi-ack-every", "50", "--threads", "2", "--json"])
        .arg("--report")
        .arg(&report.0)
        .stderr(Stdio::piped())
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadgen failed with {:?} after {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status,
        started.elapsed()
    );
    let summary = stdout.trim();
    assert_json_shape(summary);
    let sent = json_number(summary, "sent");
    assert_eq!(sent, 40_000.0, "-C is per producer: 2 x 20000");
    assert_eq!(json_number(summary, "received"), sent, "{summary}");
    assert_eq!(json_number(summary, "confirmed"), sent, "{summary}");
    assert_eq!(json_number(summary, "lost"), 0.0, "{summary}");
    assert_eq!(json_number(summary, "lost_confirmed"), 0.0, "{summary}");
    assert_eq!(json_number(summary, "duplicated"), 0.0, "{summary}");

    check_hgrm(&report.0.join("latency-e2e.hgrm"));
    check_hgrm(&report.0.join("latency-confirm.hgrm"));
    let json = std::fs::read_to_string(report.0.join("summary.json")).unwrap();
    assert_json_shape(&json);
    for key in [
        "sent",
        "received",
        "lost",
        "duplicated",
        "out_of_order",
        "latency_e2e_ms",
        "latency_confirm_ms",
        "timeline",
        "per_producer_queue",
    ] {
        assert!(json.contains(&format!("\"{key}\":")), "no {key} in {json}");
    }
    let html = std::fs::read_to_string(report.0.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("</html>"), "{html}");
    assert!(
        !html.contains("http://") || !html.contains("<script"),
        "self-contained"
    );
}

#[test]
fn every_message_arrives_once_with_one_shard() {
    run_loadgen_against_warren(1);
}

#[test]
fn every_message_arrives_once_with_two_shards() {
    run_loadgen_against_warren(2);
}

fn loadgen_json(uri: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--uri", uri, "--threads", "1", "--json"])
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success(),
        "loadgen {args:?} failed with {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Fills queue `name` with `count` messages in one run (no consumer), then
/// drains it with another run's `drain` flags; the drain's JSON summary.
fn drain_after_fill(name: &str, shards: usize, count: &str, drain: &[&str]) -> String {
    let broker = start_broker(name, shards);
    let uri = format!("amqp://guest:guest@{}/%2f", broker.address);
    let queue = ["-u", name, "--auto-delete", "false"];
    let fill = ["-x", "1", "-y", "0", "-c", "100", "-C", count];
    let filled = loadgen_json(&uri, &[&fill[..], &queue].concat());
    assert_eq!(json_number(&filled, "sent").to_string(), count, "{filled}");
    loadgen_json(&uri, &[&["-x", "0", "-y", "1"][..], drain, &queue].concat())
}

/// A consumer-only run (-x 0) on a queue that already holds a backlog: the
/// broker sends the first deliveries of each channel right after its
/// consume-ok, before the next channel is set up, and stops at the prefetch
/// until they are acked. loadgen used to leave those unread and wait forever.
#[test]
fn consumers_drain_a_queue_that_already_has_a_backlog() {
    let drain = [
        "--consumer-channel-count",
        "2",
        "-q",
        "20",
        "--multi-ack-every",
        "5",
    ];
    let drained = drain_after_fill(
        "backlog",
        1,
        "5000",
        &[&drain[..], &["-z", "2", "--drain-timeout", "1"]].concat(),
    );
    // The messages come from another run: loadgen counts them as foreign.
    assert_eq!(json_number(&drained, "received"), 5000.0, "{drained}");
}

/// -D (PerfTest's --cmessages) ends a consumer-only run once every consumer has
/// received its count, without -z: the drain half of a fill-then-drain benchmark.
#[test]
fn a_consumer_only_run_ends_after_its_message_count() {
    let drain = ["-q", "50", "--multi-ack-every", "10", "-D", "3000"];
    let drained = drain_after_fill("cmessages", 2, "3000", &drain);
    assert_eq!(json_number(&drained, "received"), 3000.0, "{drained}");
}

/// A PerfTest command line, unchanged: -h, -X/-Y, -f persistent -f mandatory, a queue
/// pattern, -ad, -M and 12-byte bodies. A second run with -p (predeclared) uses the
/// durable queues the first one left, where a declare without -f persistent would be
/// refused as inequivalent.
#[test]
fn perftest_command_lines_run_unchanged() {
    let broker = start_broker("perftest", 2);
    let uri = format!("amqp://guest:guest@{}/%2f", broker.address);
    let pattern = format!("perftest-{}-%d", std::process::id());
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["-h", &uri, "--threads", "1", "--json"])
            .args(args)
            .stderr(Stdio::piped())
            .output()
            .expect("run loadgen");
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
        assert!(
            output.status.success(),
            "loadgen {args:?} failed with {:?}\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let queues = ["-qp", &pattern, "-qpf", "1", "-qpt", "2", "-ad", "false"];
    let first = run(&[
        &[
            "-x",
            "2",
            "-y",
            "2",
            "-X",
            "2",
            "-Y",
            "1",
            "-f",
            "persistent",
            "-f",
            "mandatory",
        ][..],
        &[
            "-M", "8192", "-s", "12", "-C", "3000", "-c", "100", "-q", "100",
        ],
        &queues,
    ]
    .concat());
    // -C is per producer: 2 connections x 2 channels x 3000.
    assert_eq!(json_number(&first, "sent"), 12_000.0, "{first}");
    assert_eq!(json_number(&first, "received"), 12_000.0, "{first}");
    assert_eq!(json_number(&first, "confirmed"), 12_000.0, "{first}");
    assert_eq!(json_number(&first, "lost"), 0.0, "{first}");
    assert_eq!(json_number(&first, "duplicated"), 0.0, "{first}");
    assert_eq!(json_number(&first, "returned"), 0.0, "{first}");
    let second = run(&[&["-p", "-x", "1", "-y", "2", "-C", "1000"][..], &queues].concat());
    assert_eq!(json_number(&second, "received"), 1000.0, "{second}");
    assert_eq!(json_number(&second, "lost"), 0.0, "{second}");
}

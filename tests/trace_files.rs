//! Trace log files as the rabbitmq_tracing plugin has them, through real
//! clients: traces created, listed and stopped through the management API
//! (raw HTTP) and warrenctl, messages published and consumed with lapin,
//! and the log files read back through /api/trace-files: the text format's
//! blocks with their fields, the JSON format's lines, a `deliver.#`
//! pattern that records only deliveries, and a flooding publisher that
//! never waits for a trace writer stuck on a full pipe (every record is
//! written or counted as dropped, and some are dropped). Each runs at 1 and 2 shards; against an external broker
//! (`WARREN_TEST_AMQP_URL` with `WARREN_TEST_MANAGEMENT_URL`, RabbitMQ
//! with the rabbitmq_tracing plugin) the API shapes are checked the same
//! way, without warren's own `dropped` figure.

mod common;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// `guest:guest`, the API's credentials from loopback.
const GUEST_BASIC: &str = "Basic Z3Vlc3Q6Z3Vlc3Q=";
const DEADLINE: Duration = Duration::from_secs(60);
const RULE: &str =
    "================================================================================";

struct Api {
    base: String,
}

impl Api {
    fn of(b: &common::Broker) -> Api {
        Api {
            base: b.management_url().expect("the management API's address"),
        }
    }

    /// Status and body of a request as guest.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        self.call_as(GUEST_BASIC, method, path, body)
    }

    fn call_as(
        &self,
        authorization: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let request = ureq::request(method, &format!("{}{path}", self.base))
            .set("Authorization", authorization)
            .timeout(Duration::from_secs(30));
        let result = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
            None => request.call(),
        };
        match result {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(status, r)) => (status, r.into_string().unwrap_or_default()),
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    fn json(&self, path: &str) -> Value {
        let (status, text) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
    }

    fn start_trace(&self, name: &str, body: Value) {
        let (status, text) = self.call("PUT", &format!("/api/traces/%2F/{name}"), Some(body));
        assert_eq!(status, 201, "PUT trace {name}: {text}");
    }

    fn stop_trace(&self, name: &str) {
        let (status, text) = self.call("DELETE", &format!("/api/traces/%2F/{name}"), None);
        assert_eq!(status, 204, "DELETE trace {name}: {text}");
    }

    fn file(&self, name: &str) -> String {
        let (status, text) = self.call("GET", &format!("/api/trace-files/{name}"), None);
        assert_eq!(status, 200, "GET trace file {name}: {text}");
        text
    }

    fn delete_file(&self, name: &str) {
        let (status, text) = self.call("DELETE", &format!("/api/trace-files/{name}"), None);
        assert_eq!(status, 204, "DELETE trace file {name}: {text}");
    }

    /// Reads the file until `done` says it has what the test waits for.
    fn file_until(&self, name: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let text = self.file(name);
            if done(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "{what}; {name} has:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn vhost_tracing(&self) -> Value {
        self.json("/api/vhosts/%2F")["tracing"].clone()
    }
}

/// A text file's blocks: each starts after a line of 80 `=`.
fn blocks(text: &str) -> Vec<&str> {
    text.split(&format!("\n{RULE}\n"))
        .filter(|b| !b.is_empty())
        .collect()
}

/// The value after `label` on its line of a block.
fn field<'a>(block: &'a str, label: &str) -> &'a str {
    block
        .lines()
        .find_map(|line| line.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in block:\n{block}"))
}

fn is_kind(block: &str, kind: &str) -> bool {
    block
        .lines()
        .next()
        .is_some_and(|line| line.ends_with(&format!(": Message {kind}")))
}

broker_test!(
    text_trace_file_has_rabbitmqs_blocks_for_publishes_and_deliveries,
    |b| {
        let api = Api::of(b);
        let trace = common::unique("tf-text");
        let queue = common::unique("tf-text-q");
        let file = format!("{trace}.log");
        api.start_trace(&trace, json!({"format": "text", "pattern": "#"}));
        // Creating a trace turns the vhost's firehose on, as the plugin does.
        assert_eq!(api.vhost_tracing(), json!(true));
        let listed = api.json("/api/traces");
        let mine = listed
            .as_array()
            .expect("a list")
            .iter()
            .find(|t| t["name"] == json!(trace))
            .unwrap_or_else(|| panic!("{trace} not in {listed}"));
        assert_eq!(mine["vhost"], json!("/"));
        assert_eq!(mine["format"], json!("text"));
        assert_eq!(mine["pattern"], json!("#"));
        assert!(mine.get("max_payload_bytes").is_none(), "{mine}");
        if !b.is_external() {
            assert_eq!(mine["dropped"], json!(0));
        }
        assert_eq!(
            api.json(&format!("/api/traces/%2F/{trace}"))["name"],
            json!(trace)
        );
        let files = api.json("/api/trace-files");
        assert!(
            files
                .as_array()
                .expect("a list")
                .iter()
                .any(|f| f["name"] == json!(file) && f["size"].is_u64()),
            "{file} not in {files}"
        );

        run_for(DEADLINE, async {
            let (_c, ch) = open_confirming(&b.url()).await;
            declare_queue(&ch, &queue).await;
            let mut headers = FieldTable::default();
            headers.insert("app-header".into(), AMQPValue::LongString("v".into()));
            let props = BasicProperties::default()
                .with_content_type("text/plain".into())
                .with_delivery_mode(2)
                .with_headers(headers);
            publish_props(&ch, "", &queue, b"traced body", props).await;
            let mut work = consume(&ch, &queue, "tf-worker", BasicConsumeOptions::default()).await;
            let delivery = next_delivery(&mut work).await;
            step("basic.ack", delivery.ack(BasicAckOptions::default()))
                .await
                .expect("basic.ack");
            publish(&ch, "amq.direct", "tf-nobody", b"unrouted").await;
        });

        let text = api.file_until(&file, "three blocks", |text| blocks(text).len() >= 3);
        assert!(text.starts_with(&format!("\n{RULE}\n")), "{text}");
        let all = blocks(&text);
        assert_eq!(all.len(), 3, "{text}");
        let published: Vec<&str> = all
            .iter()
            .copied()
            .filter(|b| is_kind(b, "published"))
            .collect();
        let received: Vec<&str> = all
            .iter()
            .copied()
            .filter(|b| is_kind(b, "received"))
            .collect();
        assert_eq!((published.len(), received.len()), (2, 1), "{text}");
        for block in &all {
            assert!(!field(block, "Node:         ").is_empty());
            assert!(field(block, "Connection:   ").contains(" -> "), "{block}");
            assert_eq!(field(block, "Virtual host: "), "/");
            assert_eq!(field(block, "User:         "), "guest");
            assert_eq!(field(block, "Channel:      "), "1");
        }
        let to_queue = published
            .iter()
            .find(|b| field(b, "Exchange:     ").is_empty())
            .unwrap_or_else(|| panic!("no publish to the default exchange:\n{text}"));
        let keys = format!("[<<\"{queue}\">>]");
        assert_eq!(field(to_queue, "Routing keys: "), keys);
        assert_eq!(field(to_queue, "Routed queues: "), keys);
        let properties = field(to_queue, "Properties:   ");
        assert!(properties.starts_with('['), "{to_queue}");
        for expected in [
            "{<<\"delivery_mode\">>,signedint,2}",
            "{<<\"content_type\">>,longstr,<<\"text/plain\">>}",
            "{<<\"app-header\">>,longstr,<<\"v\">>}",
        ] {
            assert!(to_queue.contains(expected), "{expected} in\n{to_queue}");
        }
        assert!(
            to_queue.ends_with("Payload: \ntraced body\n"),
            "{to_queue:?}"
        );
        let unrouted = published
            .iter()
            .find(|b| field(b, "Exchange:     ") == "amq.direct")
            .unwrap_or_else(|| panic!("no publish to amq.direct:\n{text}"));
        assert_eq!(field(unrouted, "Routing keys: "), "[<<\"tf-nobody\">>]");
        assert_eq!(field(unrouted, "Routed queues: "), "[]");
        assert_eq!(field(unrouted, "Properties:   "), "[]");
        let delivered = received[0];
        assert_eq!(field(delivered, "Queue:        "), queue);
        assert_eq!(field(delivered, "Exchange:     "), "");
        assert_eq!(field(delivered, "Routing keys: "), keys);
        assert!(!delivered.contains("Routed queues:"), "{delivered}");
        assert!(delivered.ends_with("Payload: \ntraced body\n"));

        // Stopping the vhost's last trace turns its firehose off; the file
        // stays until it is deleted.
        api.stop_trace(&trace);
        assert_eq!(api.vhost_tracing(), json!(false));
        let (status, _) = api.call("GET", &format!("/api/traces/%2F/{trace}"), None);
        assert_eq!(status, 404);
        assert_eq!(blocks(&api.file(&file)).len(), 3);
        api.delete_file(&file);
        let (status, _) = api.call("GET", &format!("/api/trace-files/{file}"), None);
        assert_eq!(status, 404);
    }
);

broker_test!(
    json_trace_with_a_deliver_pattern_records_only_deliveries,
    |b| {
        let api = Api::of(b);
        let trace = common::unique("tf-json");
        let queue = common::unique("tf-json-q");
        let file = format!("{trace}.log");
        api.start_trace(
            &trace,
            json!({"format": "json", "pattern": "deliver.#", "max_payload_bytes": 5}),
        );
        let shown = api.json(&format!("/api/traces/%2F/{trace}"));
        assert_eq!(shown["format"], json!("json"));
        assert_eq!(shown["pattern"], json!("deliver.#"));
        assert_eq!(shown["max_payload_bytes"], json!(5));

        let bodies = ["first body", "second body", "third body"];
        run_for(DEADLINE, async {
            let (_c, ch) = open_confirming(&b.url()).await;
            declare_queue(&ch, &queue).await;
            for body in bodies {
                let props = BasicProperties::default().with_content_type("text/plain".into());
                publish_props(&ch, "", &queue, body.as_bytes(), props).await;
            }
            let mut work = consume(
                &ch,
                &queue,
                "tf-json-worker",
                BasicConsumeOptions::default(),
            )
            .await;
            for _ in bodies {
                let delivery = next_delivery(&mut work).await;
                step("basic.ack", delivery.ack(BasicAckOptions::default()))
                    .await
                    .expect("basic.ack");
            }
        });

        let text = api.file_until(&file, "three lines", |t| t.lines().count() >= 3);
        let records: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        assert_eq!(records.len(), 3, "{text}");
        for (record, body) in records.iter().zip(bodies) {
            assert_eq!(record["type"], json!("received"), "{record}");
            assert_eq!(record["queue"], json!(queue));
            assert_eq!(record["routed_queues"], json!("none"));
            assert_eq!(record["exchange"], json!(""));
            assert_eq!(record["routing_keys"], json!([queue]));
            assert_eq!(record["vhost"], json!("/"));
            assert_eq!(record["user"], json!("guest"));
            assert_eq!(record["channel"], json!(1));
            assert!(record["node"].as_str().is_some_and(|n| !n.is_empty()));
            assert!(record["connection"]
                .as_str()
                .is_some_and(|c| c.contains(" -> ")));
            assert!(record["timestamp"].as_str().is_some_and(|t| t.len() >= 23));
            assert_eq!(record["properties"], json!({"content_type": "text/plain"}));
            // max_payload_bytes: the first five bytes, in base64.
            let expected = base64_of(&body.as_bytes()[..5]);
            assert_eq!(record["payload"], json!(expected), "{record}");
        }
        api.stop_trace(&trace);
        api.delete_file(&file);
    }
);

broker_test!(a_flooding_publisher_never_waits_for_the_trace_writer, |b| {
    if b.is_external() {
        // Dropping and counting is warren's: RabbitMQ's tracer queues.
        return;
    }
    let api = Api::of(b);
    let trace = common::unique("tf-flood");
    let queue = common::unique("tf-flood-q");
    // The trace's file is a pipe the test does not read until every
    // publish is confirmed: the writer is stuck on its first full pipe,
    // and everything past its shard's channel must be dropped.
    let directory = b.data_dir().expect("warren's data dir").join("traces");
    std::fs::create_dir_all(&directory).expect("create the trace directory");
    let fifo = directory.join(format!("{trace}.log"));
    let path = std::ffi::CString::new(fifo.to_str().expect("a UTF-8 path")).expect("a path");
    // SAFETY: mkfifo reads a NUL-terminated path and nothing else.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
    let mut reader = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .expect("open the pipe for reading")
    };
    api.start_trace(&trace, json!({"format": "json", "pattern": "publish.#"}));
    // More than a shard's channel to the writer holds (16,384) plus what
    // a pipe and the writer's buffer take.
    const COUNT: usize = 30_000;
    run_for(Duration::from_secs(300), async {
        let (_c, ch) = open_confirming(&b.url()).await;
        declare_queue(&ch, &queue).await;
        let body = vec![b'x'; 256];
        let mut confirms = Vec::with_capacity(COUNT);
        for _ in 0..COUNT {
            let confirm = step(
                "basic.publish",
                ch.basic_publish(
                    "",
                    &queue,
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                ),
            )
            .await
            .expect("basic.publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = step("confirm", confirm).await.expect("confirm");
            assert!(confirmation.is_ack(), "{confirmation:?}");
        }
    });
    // Every publish was confirmed while the writer was stuck. Now each one
    // is a record read from the pipe or a dropped one: none is lost
    // without being counted.
    let deadline = Instant::now() + DEADLINE;
    let mut written = 0;
    let mut buffer = vec![0u8; 1 << 16];
    let dropped = loop {
        use std::io::Read;
        match reader.read(&mut buffer) {
            Ok(n) => written += buffer[..n].iter().filter(|&&c| c == b'\n').count(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("read the pipe: {e}"),
        }
        let dropped = api.json(&format!("/api/traces/%2F/{trace}"))["dropped"]
            .as_u64()
            .expect("dropped is a count") as usize;
        assert!(written + dropped <= COUNT, "{written} + {dropped}");
        if written + dropped == COUNT {
            break dropped;
        }
        assert!(
            Instant::now() < deadline,
            "{written} written + {dropped} dropped of {COUNT}"
        );
    };
    assert!(dropped > 0, "{written} written, none dropped");
    assert!(
        b.log().contains("trace log records dropped"),
        "the drops are logged"
    );
    api.stop_trace(&trace);
    drop(reader);
    std::fs::remove_file(&fifo).expect("remove the pipe");
});

broker_test!(trace_api_answers_as_rabbitmq_tracing_does, |b| {
    let api = Api::of(b);
    let error = |status: u16, text: &str| -> (u16, Value) {
        (status, serde_json::from_str(text).unwrap_or(Value::Null))
    };
    let put = |name: &str, body: Value| {
        let (status, text) = api.call("PUT", &format!("/api/traces/%2F/{name}"), Some(body));
        error(status, &text)
    };
    let name = common::unique("tf-api");
    assert_eq!(
        put(&name, json!({"format": "text"})),
        (
            400,
            json!({"error": "bad_request", "reason": "[{key_missing,pattern}]"})
        )
    );
    assert_eq!(
        put(&name, json!({"format": "xml", "pattern": "#"})),
        (
            400,
            json!({"error": "bad_request", "reason": "format not json or text"})
        )
    );
    assert_eq!(
        put(
            &name,
            json!({"format": "text", "pattern": "#", "max_payload_bytes": "x"})
        ),
        (
            400,
            json!({"error": "bad_request", "reason": "max_payload_bytes not integer"})
        )
    );
    let not_found = json!({"error": "Object Not Found", "reason": "Not Found"});
    for (method, path) in [
        ("GET", format!("/api/traces/%2F/{name}")),
        ("DELETE", format!("/api/traces/%2F/{name}")),
        ("GET", format!("/api/trace-files/{name}.log")),
        ("DELETE", format!("/api/trace-files/{name}.log")),
    ] {
        let (status, text) = api.call(method, &path, None);
        assert_eq!(
            error(status, &text),
            (404, not_found.clone()),
            "{method} {path}"
        );
    }
    // Administrators only, as the plugin's is_authorized_admin.
    let user = common::unique("tf-monitor");
    let (status, text) = api.call(
        "PUT",
        &format!("/api/users/{user}"),
        Some(json!({"password": "pw", "tags": "monitoring"})),
    );
    assert!(matches!(status, 201 | 204), "{status} {text}");
    let monitor = format!("Basic {}", base64_of(format!("{user}:pw").as_bytes()));
    for path in ["/api/traces", "/api/trace-files"] {
        let (status, _) = api.call_as(&monitor, "GET", path, None);
        assert_eq!(status, 401, "GET {path} as a monitoring user");
    }
    let (status, _) = api.call("DELETE", &format!("/api/users/{user}"), None);
    assert_eq!(status, 204);

    // A file is served as text.
    api.start_trace(&name, json!({"format": "text", "pattern": "publish.#"}));
    let response = ureq::get(&format!("{}/api/trace-files/{name}.log", api.base))
        .set("Authorization", GUEST_BASIC)
        .call()
        .expect("GET the trace file");
    assert_eq!(response.content_type(), "text/plain");
    api.stop_trace(&name);
    api.delete_file(&format!("{name}.log"));
    if !b.is_external() {
        // warren refuses what RabbitMQ 3.10 crashes on (500): a missing
        // vhost, a name that is no file name.
        let (status, _) = api.call(
            "PUT",
            "/api/traces/no-such-vhost/t",
            Some(json!({"format": "text", "pattern": "#"})),
        );
        assert_eq!(status, 404);
        assert_eq!(
            put("a%2Fb", json!({"format": "text", "pattern": "#"})).0,
            400
        );
        let (status, _) = api.call("GET", "/api/trace-files/..%2Fbroker.log", None);
        assert_eq!(status, 404);
    }
});

broker_test!(warrenctl_starts_lists_and_stops_traces, |b| {
    if b.is_external() {
        return;
    }
    let api = Api::of(b);
    let url = api.base.replacen("http://", "http://guest:guest@", 1);
    let warrenctl = |args: &[&str]| -> String {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_warrenctl"))
            .args(["--url", &url, "--quiet"])
            .args(args)
            .output()
            .expect("run warrenctl");
        assert!(
            output.status.success(),
            "warrenctl {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let trace = common::unique("tf-ctl");
    let file = format!("{trace}.log");
    warrenctl(&[
        "add_trace",
        &trace,
        "--format",
        "json",
        "--pattern",
        "publish.#",
    ]);
    let listed = warrenctl(&["list_traces"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&format!("/\t{trace}\tjson\tpublish.#\t"))),
        "{listed}"
    );
    run_for(DEADLINE, async {
        let (_c, ch) = open_confirming(&b.url()).await;
        publish(&ch, "amq.fanout", "", b"ctl").await;
    });
    api.file_until(&file, "one line", |t| t.lines().count() >= 1);
    let files = warrenctl(&["list_trace_files"]);
    assert!(
        files.lines().any(|l| l.starts_with(&format!("{file}\t"))),
        "{files}"
    );
    let content = warrenctl(&["get_trace_file", &file]);
    let record: Value = serde_json::from_str(content.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {content}"));
    assert_eq!(record["exchange"], json!("amq.fanout"));
    assert_eq!(record["payload"], json!(base64_of(b"ctl")));
    warrenctl(&["delete_trace", &trace]);
    assert!(!warrenctl(&["list_traces"]).contains(&trace));
    warrenctl(&["delete_trace_file", &file]);
    assert!(!warrenctl(&["list_trace_files"]).contains(&file));
});

/// Traces are run-time state, as the plugin's (an ETS table): gone after
/// a restart, with the vhost's firehose; their files stay.
fn traces_are_gone_after_a_restart_and_their_files_stay(shards: usize) {
    let mut broker = common::Broker::start(shards);
    if broker.is_external() {
        return;
    }
    // The address the broker logged last: a restart logs a new one.
    let api_of = |b: &common::Broker| -> Api {
        let log = b.log();
        let line = log
            .lines()
            .rfind(|l| l.contains("management API listening"))
            .expect("the management API's address in the log");
        let at = line.find("127.0.0.1:").expect("a loopback address");
        let address: String = line[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect();
        Api {
            base: format!("http://{address}"),
        }
    };
    let api = api_of(&broker);
    api.start_trace("kept", json!({"format": "text", "pattern": "#"}));
    assert_eq!(api.vhost_tracing(), json!(true));
    broker.restart();
    let api = api_of(&broker);
    assert_eq!(api.json("/api/traces"), json!([]));
    assert_eq!(api.vhost_tracing(), json!(false));
    let files = api.json("/api/trace-files");
    assert_eq!(files, json!([{"name": "kept.log", "size": 0}]));
    // A trace of the same name appends to the file it finds.
    api.start_trace("kept", json!({"format": "text", "pattern": "#"}));
    api.stop_trace("kept");
}

#[test]
fn traces_are_gone_after_a_restart_and_their_files_stay_shards_1() {
    traces_are_gone_after_a_restart_and_their_files_stay(1);
}

#[test]
fn traces_are_gone_after_a_restart_and_their_files_stay_shards_2() {
    traces_are_gone_after_a_restart_and_their_files_stay(2);
}

fn base64_of(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

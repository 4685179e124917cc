//! The management HTTP API through real clients of RabbitMQ's API: Debian's
//! `rabbitmqadmin` (the tool shipped with rabbitmq-server) and raw HTTP
//! (ureq) for the error shapes, with lapin on the AMQP side to make and
//! check state. Each runs at 1 and 2 shards (queues spread over both).
//!
//! Against RabbitMQ: WARREN_TEST_AMQP_URL=amqp://guest:guest@HOST:PORT/%2f
//! WARREN_TEST_MANAGEMENT_URL=http://HOST:MGMT_PORT (with loopback_users = none).

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const RABBITMQADMIN: &str = "/usr/bin/rabbitmqadmin";
/// How long a condition polled through the API may take to hold.
const DEADLINE: Duration = Duration::from_secs(10);

/// The API of a broker under test, as the AMQP URL's user.
struct Api {
    base: String,
    host: String,
    port: u16,
    user: String,
    pass: String,
}

impl Api {
    fn of(b: &Broker) -> Api {
        let base = b
            .management_url()
            .expect("the broker's management API address (WARREN_TEST_MANAGEMENT_URL?)");
        // WARREN_TEST_MANAGEMENT_URL may carry credentials (http://USER:PASS@HOST:PORT).
        let authority = base.trim_start_matches("http://");
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let base = format!("http://{authority}");
        let (host, port) = authority.rsplit_once(':').expect("host:port");
        let url = b.url();
        let creds = url
            .trim_start_matches("amqp://")
            .split('@')
            .next()
            .unwrap_or("guest:guest");
        let (user, pass) = creds.split_once(':').unwrap_or(("guest", "guest"));
        Api {
            base: base.clone(),
            host: host.to_string(),
            port: port.parse().expect("port"),
            user: user.to_string(),
            pass: pass.to_string(),
        }
    }

    /// One request with these credentials (None: without any); the status
    /// and the body.
    fn call_as(
        &self,
        creds: Option<(&str, &str)>,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, String) {
        let mut request = ureq::request(method, &format!("{}{}", self.base, path))
            .timeout(Duration::from_secs(30));
        if let Some((user, pass)) = creds {
            let token = base64(format!("{user}:{pass}").as_bytes());
            request = request.set("Authorization", &format!("Basic {token}"));
        }
        let result = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
            None => request.call(),
        };
        match result {
            Ok(response) => {
                let status = response.status();
                (status, response.into_string().unwrap_or_default())
            }
            Err(ureq::Error::Status(status, response)) => {
                (status, response.into_string().unwrap_or_default())
            }
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        self.call_as(Some((&self.user, &self.pass)), method, path, body)
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// Runs rabbitmqadmin against this API; its standard output.
    fn rabbitmqadmin(&self, args: &[&str]) -> String {
        let output = Command::new(RABBITMQADMIN)
            .args(["-H", &self.host, "-P", &self.port.to_string()])
            .args(["-u", &self.user, "-p", &self.pass])
            .args(args)
            .output()
            .expect("run rabbitmqadmin (apt-get install rabbitmq-server)");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "rabbitmqadmin {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// `rabbitmqadmin -f raw_json list WHAT COLUMNS...`, parsed.
    fn list(&self, what: &str, columns: &[&str]) -> Vec<Value> {
        let mut args = vec!["-f", "raw_json", "list", what];
        args.extend_from_slice(columns);
        let out = self.rabbitmqadmin(&args);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Polls `path` until `check` holds, within DEADLINE; the last answer.
    fn until(&self, path: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let value = self.get(path);
            if check(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} never matched: {value}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn queue_named<'a>(items: &'a [Value], name: &str) -> &'a Value {
    items
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("no queue {name} in {items:?}"))
}

/// An error answer in RabbitMQ's shape: {"error": ..., "reason": ...}.
fn error_of(status_and_body: (u16, String), status: u16) -> (String, String) {
    let (got, body) = status_and_body;
    assert_eq!(got, status, "body: {body}");
    let value: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    let error = value["error"].as_str().expect("error member").to_string();
    let reason = value["reason"].as_str().expect("reason member").to_string();
    (error, reason)
}

broker_test!(
    rabbitmqadmin_lists_every_shards_queues_with_their_counts,
    |b| {
        let api = Api::of(b);
        let prefix = unique("mgmt-list");
        let names: Vec<String> = (0..6).map(|i| format!("{prefix}-{i}")).collect();
        run(async {
            let (conn, ch) = open_confirming(&b.url()).await;
            // Spread over the shards, whatever the declaring connection's
            // shard (RabbitMQ's locator argument for classic queues).
            let mut spread = lapin::types::FieldTable::default();
            spread.insert(
                "x-queue-master-locator".into(),
                lapin::types::AMQPValue::LongString("random".into()),
            );
            for (i, name) in names.iter().enumerate() {
                declare_queue_with(&ch, name, Default::default(), spread.clone())
                    .await
                    .unwrap_or_else(|e| panic!("queue.declare {name}: {e}"));
                let bodies: Vec<&[u8]> = (0..=i).map(|_| &b"m"[..]).collect();
                fill_queue(&ch, name, &bodies).await;
            }
            // One delivery left unacknowledged on the first queue.
            let consumer_ch = channel(&conn).await;
            consumer_ch
                .basic_qos(1, BasicQosOptions::default())
                .await
                .unwrap();
            let mut consumer = consume(
                &consumer_ch,
                &names[0],
                "mgmt-consumer",
                BasicConsumeOptions::default(),
            )
            .await;
            next_delivery(&mut consumer).await;

            // RabbitMQ updates its figures every few seconds; warren at once.
            let deadline = Instant::now() + DEADLINE;
            let listed = loop {
                let listed = api.list(
                    "queues",
                    &[
                        "name",
                        "messages",
                        "messages_ready",
                        "messages_unacknowledged",
                        "consumers",
                    ],
                );
                let settled = names.iter().enumerate().all(|(i, name)| {
                    listed.iter().any(|q| {
                        q["name"] == name.as_str()
                            && q["messages"] == i as u64 + 1
                            && (i > 0 || q["messages_unacknowledged"] == 1)
                    })
                });
                if settled || Instant::now() > deadline {
                    break listed;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            for (i, name) in names.iter().enumerate() {
                let q = queue_named(&listed, name);
                let count = i as u64 + 1;
                assert_eq!(q["messages"], count, "{q}");
                if i == 0 {
                    assert_eq!(q["messages_unacknowledged"], 1, "{q}");
                    assert_eq!(q["messages_ready"], 0, "{q}");
                    assert_eq!(q["consumers"], 1, "{q}");
                } else {
                    assert_eq!(q["messages_ready"], count, "{q}");
                    assert_eq!(q["consumers"], 0, "{q}");
                }
            }
            // The queues really are on both shards of a 2-shard warren.
            if !b.is_external() && b.shards() == 2 {
                let all = api.get("/api/queues?columns=name,warren_shard");
                let shards: std::collections::BTreeSet<u64> = all
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|q| q["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
                    .filter_map(|q| q["warren_shard"].as_u64())
                    .collect();
                assert_eq!(shards.len(), 2, "{all}");
            }
            // One queue by name, through the vhost's path.
            let one = api.get(&format!("/api/queues/%2F/{}", names[3]));
            assert_eq!(one["messages"], 4, "{one}");
            assert_eq!(one["vhost"], "/");
            assert_eq!(one["durable"], false);
            drop(consumer);
            conn.close(200, "bye").await.ok();
        });
        for name in &names {
            api.rabbitmqadmin(&["delete", "queue", &format!("name={name}")]);
        }
    }
);

broker_test!(
    rabbitmqadmin_declares_publishes_gets_purges_and_deletes,
    |b| {
        let api = Api::of(b);
        let exchange = unique("mgmt-x");
        let queue = unique("mgmt-q");
        api.rabbitmqadmin(&[
            "declare",
            "exchange",
            &format!("name={exchange}"),
            "type=topic",
            "durable=false",
        ]);
        api.rabbitmqadmin(&[
            "declare",
            "queue",
            &format!("name={queue}"),
            "durable=false",
        ]);
        api.rabbitmqadmin(&[
            "declare",
            "binding",
            &format!("source={exchange}"),
            &format!("destination={queue}"),
            "routing_key=a.#",
        ]);
        let bindings = api.list("bindings", &["source", "destination", "routing_key"]);
        assert!(
            bindings
                .iter()
                .any(|x| x["source"] == exchange.as_str() && x["routing_key"] == "a.#"),
            "{bindings:?}"
        );
        for body in ["one", "two", "three"] {
            let out = api.rabbitmqadmin(&[
                "publish",
                &format!("exchange={exchange}"),
                "routing_key=a.b",
                &format!("payload={body}"),
            ]);
            assert!(out.contains("Message published"), "{out}");
        }
        let out = api.rabbitmqadmin(&[
            "publish",
            &format!("exchange={exchange}"),
            "routing_key=nowhere",
            "payload=lost",
        ]);
        assert!(out.to_lowercase().contains("not routed"), "{out}");
        api.until(&format!("/api/queues/%2F/{queue}"), |q| q["messages"] == 3);

        // A get that requeues leaves the message, redelivered.
        let got = api.rabbitmqadmin(&[
            "-f",
            "raw_json",
            "get",
            &format!("queue={queue}"),
            "ackmode=ack_requeue_true",
        ]);
        let got: Value = serde_json::from_str(got.trim()).unwrap();
        assert_eq!(got[0]["payload"], "one", "{got}");
        assert_eq!(got[0]["routing_key"], "a.b");
        assert_eq!(got[0]["message_count"], 2);
        // ...and one that acks takes it: the AMQP side sees the rest.
        let got = api.rabbitmqadmin(&[
            "-f",
            "raw_json",
            "get",
            &format!("queue={queue}"),
            "ackmode=ack_requeue_false",
        ]);
        let got: Value = serde_json::from_str(got.trim()).unwrap();
        assert_eq!(got[0]["payload"], "one", "{got}");
        assert_eq!(got[0]["redelivered"], true, "{got}");
        run(async {
            let (_conn, ch) = open(&b.url()).await;
            let passive = passive_declare_queue(&ch, &queue).await.unwrap();
            assert_eq!(passive.message_count(), 2);
        });
        api.rabbitmqadmin(&["purge", "queue", &format!("name={queue}")]);
        api.until(&format!("/api/queues/%2F/{queue}"), |q| q["messages"] == 0);
        api.rabbitmqadmin(&[
            "delete",
            "binding",
            &format!("source={exchange}"),
            &format!("destination={queue}"),
            "destination_type=queue",
            "properties_key=a.%23",
        ]);
        let bindings = api.get(&format!("/api/queues/%2F/{queue}/bindings"));
        assert!(
            bindings
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x["source"] != exchange.as_str()),
            "{bindings}"
        );
        api.rabbitmqadmin(&["delete", "queue", &format!("name={queue}")]);
        api.rabbitmqadmin(&["delete", "exchange", &format!("name={exchange}")]);
        run(async {
            let (_conn, ch) = open(&b.url()).await;
            expect_code(passive_declare_queue(&ch, &queue).await, 404);
        });
        let (status, _) = api.call("GET", &format!("/api/exchanges/%2F/{exchange}"), None);
        assert_eq!(status, 404);
    }
);

broker_test!(errors_have_rabbitmqs_status_and_json_shape, |b| {
    let api = Api::of(b);
    let queue = unique("mgmt-err");
    // Unauthenticated: 401 (RabbitMQ sends no body without credentials).
    let (status, _) = api.call_as(None, "GET", "/api/queues", None);
    assert_eq!(status, 401);
    let (error, reason) = error_of(
        api.call_as(Some((&api.user, "wrong")), "GET", "/api/queues", None),
        401,
    );
    assert_eq!(
        (error.as_str(), reason.as_str()),
        ("not_authorized", "Login failed")
    );
    // Missing objects, vhosts and paths: 404.
    let not_found = ("Object Not Found".to_string(), "Not Found".to_string());
    assert_eq!(
        error_of(
            api.call("GET", &format!("/api/queues/%2F/{queue}"), None),
            404
        ),
        not_found
    );
    assert_eq!(
        error_of(api.call("GET", "/api/queues/no-such-vhost", None), 404),
        not_found
    );
    assert_eq!(
        error_of(
            api.call("DELETE", &format!("/api/queues/%2F/{queue}"), None),
            404
        ),
        not_found
    );
    assert_eq!(
        error_of(api.call("GET", "/api/no-such-thing", None), 404),
        not_found
    );
    // Bad bodies and refused declares: 400.
    let (status, body) = api.call(
        "PUT",
        &format!("/api/queues/%2F/{queue}"),
        Some(&json!({"durable": true})),
    );
    assert_eq!(status, 201, "{body}");
    let raw = ureq::request("PUT", &format!("{}/api/queues/%2F/{queue}", api.base))
        .set(
            "Authorization",
            &format!(
                "Basic {}",
                base64(format!("{}:{}", api.user, api.pass).as_bytes())
            ),
        )
        .set("Content-Type", "application/json")
        .send_string("{not json");
    let (status, body) = match raw {
        Err(ureq::Error::Status(status, response)) => (status, response.into_string().unwrap()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        error_of((status, body), 400),
        ("bad_request".to_string(), "not_json".to_string())
    );
    let (error, reason) = error_of(
        api.call(
            "PUT",
            &format!("/api/queues/%2F/{queue}"),
            Some(&json!({"durable": false})),
        ),
        400,
    );
    assert_eq!(error, "bad_request");
    assert!(
        reason.starts_with(&format!("inequivalent arg 'durable' for queue '{queue}'")),
        "{reason}"
    );
    let (error, reason) = error_of(api.call("GET", "/api/queues?page=0", None), 400);
    assert_eq!(error, "invalid_pagination_parameters", "{reason}");
    // Declaring again as declared: 204.
    let (status, _) = api.call(
        "PUT",
        &format!("/api/queues/%2F/{queue}"),
        Some(&json!({"durable": true})),
    );
    assert_eq!(status, 204);
    let (status, _) = api.call("DELETE", &format!("/api/queues/%2F/{queue}"), None);
    assert_eq!(status, 204);
});

broker_test!(
    connections_channels_and_consumers_are_listed_and_closed,
    |b| {
        let api = Api::of(b);
        let queue = unique("mgmt-conn");
        let tag = unique("mgmt-tag");
        run(async {
            let (conn, ch) = open(&b.url()).await;
            declare_queue(&ch, &queue).await;
            let _consumer = consume(&ch, &queue, &tag, BasicConsumeOptions::default()).await;
            // The consumer names its connection (other tests' connections
            // may be listed too).
            let consumers = api.until("/api/consumers/%2F", |c| {
                c.as_array()
                    .is_some_and(|all| all.iter().any(|c| c["consumer_tag"] == tag.as_str()))
            });
            let consumer = consumers
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["consumer_tag"] == tag.as_str())
                .unwrap_or_else(|| panic!("{consumers}"));
            assert_eq!(consumer["queue"]["name"], queue.as_str());
            assert_eq!(consumer["ack_required"], true);
            let name = consumer["channel_details"]["connection_name"]
                .as_str()
                .unwrap()
                .to_string();
            let connections = api.until("/api/connections", |c| {
                c.as_array().is_some_and(|all| {
                    all.iter()
                        .any(|c| c["name"] == name.as_str() && c["channels"] == 1)
                })
            });
            let connections = connections.as_array().unwrap();
            assert!(
                connections.iter().all(|c| c["vhost"] == "/"),
                "{connections:?}"
            );
            let ours = connections.iter().find(|c| c["name"] == name.as_str());
            assert_eq!(ours.unwrap()["user"], api.user.as_str());
            api.until("/api/channels", |c| {
                c.as_array().is_some_and(|all| {
                    all.iter().any(|c| {
                        c["name"].as_str().is_some_and(|n| n.starts_with(&name))
                            && c["consumer_count"] == 1
                    })
                })
            });

            // Closing it through the API closes it with 320, as RabbitMQ does.
            let watch = ErrorWatch::connection(&conn);
            let encoded: String = name
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            let (status, body) = api.call("DELETE", &format!("/api/connections/{encoded}"), None);
            assert_eq!(status, 204, "{body}");
            let text = watch.expect_code(320).await;
            assert!(text.contains("Closed via management plugin"), "{text}");
        });
        api.until("/api/consumers", |c| {
            c.as_array()
                .is_some_and(|all| all.iter().all(|c| c["consumer_tag"] != tag.as_str()))
        });
        api.rabbitmqadmin(&["delete", "queue", &format!("name={queue}")]);
    }
);

broker_test!(message_stats_count_publishes_deliveries_and_acks, |b| {
    let api = Api::of(b);
    let queue = unique("mgmt-stats");
    run(async {
        let (_conn, ch) = open_confirming(&b.url()).await;
        declare_queue(&ch, &queue).await;
        fill_queue(&ch, &queue, &[b"1", b"2", b"3", b"4", b"5"]).await;
        let mut consumer = consume(&ch, &queue, "stats", BasicConsumeOptions::default()).await;
        for _ in 0..5 {
            let delivery = next_delivery(&mut consumer).await;
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    });
    // RabbitMQ updates its statistics every few seconds (a queue's counts
    // and its message_stats separately); warren at once.
    let q = api.until(&format!("/api/queues/%2F/{queue}"), |q| {
        q["message_stats"]["ack"] == 5 && q["messages"] == 0
    });
    let stats = &q["message_stats"];
    assert_eq!(stats["publish"], 5, "{q}");
    assert_eq!(stats["deliver"], 5, "{q}");
    assert_eq!(stats["deliver_get"], 5, "{q}");
    assert!(stats["publish_details"]["rate"].is_number(), "{q}");
    assert_eq!(q["messages"], 0, "{q}");
    let overview = api.get("/api/overview");
    assert!(
        overview["message_stats"]["publish"].as_u64().unwrap() >= 5,
        "{overview}"
    );
    assert!(
        overview["object_totals"]["queues"].as_u64().unwrap() >= 1,
        "{overview}"
    );
    assert!(overview["rabbitmq_version"].is_string(), "{overview}");
    api.rabbitmqadmin(&["delete", "queue", &format!("name={queue}")]);
});

/// `/api/overview`'s `warren_shards`, checked against what the test
/// knows: one entry per shard, in order, with rates that never go below 0
/// and a busy fraction between 0 and 1.
fn shard_entries(overview: &Value, shards: usize) -> Vec<Value> {
    let entries = overview["warren_shards"]
        .as_array()
        .unwrap_or_else(|| panic!("no warren_shards list: {overview}"))
        .clone();
    assert_eq!(entries.len(), shards, "{overview}");
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry["id"], i, "{overview}");
        for count in ["connections", "channels", "queues", "messages"] {
            assert!(entry[count].is_u64(), "{count}: {overview}");
        }
        for rate in ["publish_rate", "deliver_rate"] {
            let value = entry[rate].as_f64().unwrap_or(-1.0);
            assert!(value >= 0.0, "{rate}: {overview}");
        }
        let busy = entry["busy_ratio"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&busy), "busy_ratio: {overview}");
    }
    entries
}

broker_test!(
    overview_shows_each_shards_connections_queues_messages_and_rates,
    |b| {
        if b.is_external() {
            eprintln!("skipped: warren_shards is warren's own figure, not RabbitMQ's");
            return;
        }
        let api = Api::of(b);
        let shards = b.shards();
        let queue = unique("mgmt-shards");
        // Before any client: no connections, no queues, no messages.
        let idle = shard_entries(&api.get("/api/overview"), shards);
        for entry in &idle {
            assert_eq!(entry["connections"], 0, "{entry}");
            assert_eq!(entry["queues"], 0, "{entry}");
            assert_eq!(entry["messages"], 0, "{entry}");
        }
        run(async {
            // Four connections, wherever the kernel puts them: each shard's
            // count is the number of connections the API lists on it.
            let mut held = Vec::new();
            for _ in 0..4 {
                held.push(open_confirming(&b.url()).await);
            }
            let connections = api.until("/api/connections", |c| {
                c.as_array().is_some_and(|all| all.len() == 4)
            });
            let on_shard = |i: usize| {
                connections.as_array().map_or(0, |all| {
                    all.iter().filter(|c| c["warren_shard"] == i).count()
                })
            };
            let overview = api.get("/api/overview");
            let entries = shard_entries(&overview, shards);
            for (i, entry) in entries.iter().enumerate() {
                assert_eq!(entry["connections"], on_shard(i), "{overview}");
                assert_eq!(entry["channels"], on_shard(i), "{overview}");
            }

            // A queue and 100 messages: they show on the queue's shard, and
            // the publishing connection's shard publishes at a rate above 0
            // (the reading above precedes the publishes, so the next rate
            // covers them).
            let ch = &held[0].1;
            declare_queue(ch, &queue).await;
            let bodies: Vec<&[u8]> = vec![b"shard figures"; 100];
            fill_queue(ch, &queue, &bodies).await;
            let owner = api.get(&format!("/api/queues/%2F/{queue}"))["warren_shard"]
                .as_u64()
                .expect("the queue's warren_shard") as usize;
            let publisher = api
                .get("/api/connections")
                .as_array()
                .and_then(|all| all.iter().find(|c| c["warren_published"] == 100).cloned())
                .expect("the publishing connection");
            let publisher = publisher["warren_shard"].as_u64().expect("its shard") as usize;
            let overview = api.get("/api/overview");
            let entries = shard_entries(&overview, shards);
            for (i, entry) in entries.iter().enumerate() {
                let mine = i == owner;
                assert_eq!(entry["queues"], u64::from(mine), "{overview}");
                assert_eq!(entry["messages"], if mine { 100 } else { 0 }, "{overview}");
            }
            assert!(
                entries[publisher]["publish_rate"].as_f64().unwrap_or(0.0) > 0.0,
                "{overview}"
            );

            // Consumed and acked: the queue's shard delivers at a rate above
            // 0, and its messages go back to 0.
            let mut consumer = consume(ch, &queue, "shards", BasicConsumeOptions::default()).await;
            for _ in 0..100 {
                let delivery = next_delivery(&mut consumer).await;
                delivery.ack(BasicAckOptions::default()).await.unwrap();
            }
            let overview = api.get("/api/overview");
            let entries = shard_entries(&overview, shards);
            assert!(
                entries[owner]["deliver_rate"].as_f64().unwrap_or(0.0) > 0.0,
                "{overview}"
            );
            let overview = api.until("/api/overview", |o| {
                o["warren_shards"][owner]["messages"] == 0
            });
            shard_entries(&overview, shards);
            for (conn, _) in held {
                let _ = conn.close(200, "bye").await;
            }
        });
        api.until("/api/overview", |o| {
            o["warren_shards"]
                .as_array()
                .is_some_and(|all| all.iter().all(|s| s["connections"] == 0))
        });
        api.rabbitmqadmin(&["delete", "queue", &format!("name={queue}")]);
    }
);

broker_test!(definitions_export_and_import_round_trip, |b| {
    let api = Api::of(b);
    let exchange = unique("mgmt-defs-x");
    let queue = unique("mgmt-defs-q");
    let (status, body) = api.call(
        "PUT",
        &format!("/api/exchanges/%2F/{exchange}"),
        Some(&json!({"type": "direct", "durable": true})),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.call(
        "PUT",
        &format!("/api/queues/%2F/{queue}"),
        Some(&json!({"durable": true, "arguments": {"x-max-length": 10}})),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.call(
        "POST",
        &format!("/api/bindings/%2F/e/{exchange}/q/{queue}"),
        Some(&json!({"routing_key": "rk"})),
    );
    assert_eq!(status, 201, "{body}");
    let export = api.get("/api/definitions");
    let has = |what: &str, name: &str| {
        export[what]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == name)
    };
    assert!(
        has("exchanges", &exchange) && has("queues", &queue),
        "{export}"
    );
    assert!(export["users"].as_array().is_some_and(|u| !u.is_empty()));
    assert!(export["rabbit_version"].is_string());

    api.call("DELETE", &format!("/api/queues/%2F/{queue}"), None);
    api.call("DELETE", &format!("/api/exchanges/%2F/{exchange}"), None);
    let (status, _) = api.call("GET", &format!("/api/queues/%2F/{queue}"), None);
    assert_eq!(status, 404);

    let (status, body) = api.call("POST", "/api/definitions", Some(&export));
    assert!(status == 204 || status == 201, "{status} {body}");
    let q = api.get(&format!("/api/queues/%2F/{queue}"));
    assert_eq!(q["arguments"]["x-max-length"], 10, "{q}");
    let bindings = api.get(&format!("/api/exchanges/%2F/{exchange}/bindings/source"));
    assert!(
        bindings
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["destination"] == queue.as_str() && x["routing_key"] == "rk"),
        "{bindings}"
    );
    api.call("DELETE", &format!("/api/queues/%2F/{queue}"), None);
    api.call("DELETE", &format!("/api/exchanges/%2F/{exchange}"), None);
});

broker_test!(node_health_vhosts_and_whoami_answer, |b| {
    let api = Api::of(b);
    assert_eq!(api.get("/api/aliveness-test/%2F"), json!({"status": "ok"}));
    assert_eq!(
        api.get("/api/health/checks/alarms"),
        json!({"status": "ok"})
    );
    let whoami = api.get("/api/whoami");
    assert_eq!(whoami["name"], api.user.as_str());
    let nodes = api.list("nodes", &["name", "type", "running"]);
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["running"], true);
    let vhosts = api.list("vhosts", &["name", "messages"]);
    assert!(vhosts.iter().any(|v| v["name"] == "/"), "{vhosts:?}");
    assert_eq!(
        error_of(
            api.call("GET", "/api/aliveness-test/no-such-vhost", None),
            404
        )
        .1,
        "Not Found"
    );
    let overview = api.rabbitmqadmin(&["show", "overview"]);
    assert!(overview.contains("rabbitmq_version"), "{overview}");
    // Paging and columns, as the web UI and tools ask for them.
    for i in 0..3 {
        let (status, _) = api.call("PUT", &format!("/api/queues/%2F/mgmt-page-{i}"), None);
        assert!(status == 201 || status == 204);
    }
    let page = api.get("/api/queues?page=1&page_size=2&name=mgmt-page-&columns=name");
    assert_eq!(page["filtered_count"], 3, "{page}");
    assert_eq!(page["page_count"], 2, "{page}");
    assert_eq!(
        page["items"],
        json!([{"name": "mgmt-page-0"}, {"name": "mgmt-page-1"}])
    );
    for i in 0..3 {
        api.call("DELETE", &format!("/api/queues/%2F/mgmt-page-{i}"), None);
    }
});

broker_test!(queue_lists_follow_declares_and_deletes, |b| {
    // The API keeps what never changes about a queue from one list to the
    // next: lists after declares and deletes must still show exactly the
    // live queues, each with its own arguments.
    let api = Api::of(b);
    let prefix = unique("mgmt-follow");
    let put = |name: &str, max_length: Option<u64>| {
        let body = match max_length {
            Some(n) => json!({"durable": false, "arguments": {"x-max-length": n}}),
            None => json!({"durable": false}),
        };
        let (status, text) = api.call("PUT", &format!("/api/queues/%2F/{name}"), Some(&body));
        assert!(
            status == 201 || status == 204,
            "PUT {name}: {status} {text}"
        );
    };
    let listed = |path: &str| -> Vec<(String, Value)> {
        let all = api.get(path);
        all.as_array()
            .unwrap_or_else(|| panic!("not a list: {all}"))
            .iter()
            .filter(|q| q["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
            .map(|q| {
                (
                    q["name"].as_str().unwrap().to_string(),
                    q["arguments"].clone(),
                )
            })
            .collect()
    };
    let name = |i: u32| format!("{prefix}-{i}");
    for i in 0..4 {
        put(&name(i), Some(u64::from(i) + 10));
    }
    let first = listed("/api/queues");
    let expected: Vec<(String, Value)> = (0..4)
        .map(|i| (name(i), json!({"x-max-length": i + 10})))
        .collect();
    assert_eq!(first, expected);
    // One gone, two more (one without arguments), listed per vhost too.
    let (status, _) = api.call("DELETE", &format!("/api/queues/%2F/{}", name(1)), None);
    assert_eq!(status, 204);
    put(&name(4), None);
    put(&name(5), Some(15));
    let expected: Vec<(String, Value)> = vec![
        (name(0), json!({"x-max-length": 10})),
        (name(2), json!({"x-max-length": 12})),
        (name(3), json!({"x-max-length": 13})),
        (name(4), json!({})),
        (name(5), json!({"x-max-length": 15})),
    ];
    assert_eq!(listed("/api/queues"), expected);
    assert_eq!(listed("/api/queues/%2F"), expected);
    // Sorting and columns pick members (nested ones too) of the same items.
    let sorted = api.get(&format!(
        "/api/queues?name={prefix}&sort=arguments.x-max-length&sort_reverse=true\
         &columns=name,arguments.x-max-length,message_stats.publish"
    ));
    assert_eq!(
        sorted,
        json!([
            {"name": name(5), "arguments": {"x-max-length": 15}, "message_stats": {"publish": 0}},
            {"name": name(3), "arguments": {"x-max-length": 13}, "message_stats": {"publish": 0}},
            {"name": name(2), "arguments": {"x-max-length": 12}, "message_stats": {"publish": 0}},
            {"name": name(0), "arguments": {"x-max-length": 10}, "message_stats": {"publish": 0}},
            // A column the item lacks is left out, as the old selection did.
            {"name": name(4), "message_stats": {"publish": 0}},
        ]),
        "{sorted}"
    );
    let page = api.get(&format!(
        "/api/queues?page=2&page_size=2&name={prefix}&columns=name,messages"
    ));
    assert_eq!(
        page["items"],
        json!([{"name": name(3), "messages": 0}, {"name": name(4), "messages": 0}]),
        "{page}"
    );
    assert_eq!(
        (page["filtered_count"].clone(), page["page_count"].clone()),
        (json!(5), json!(3)),
        "{page}"
    );
    for i in [0, 2, 3, 4, 5] {
        api.call("DELETE", &format!("/api/queues/%2F/{}", name(i)), None);
    }
    assert_eq!(listed("/api/queues"), vec![]);
});

#[test]
fn a_user_without_a_management_tag_is_refused() {
    if std::env::var(EXTERNAL_URL_VAR).is_ok() {
        return; // Users are made from a definitions file at start.
    }
    let dir = fresh_temp_dir("warren-mgmt-users");
    let definitions = dir.join("import.json");
    std::fs::write(
        &definitions,
        json!({
            "users": [
                {"name": "plain", "password": "plain", "tags": ""},
                {"name": "watcher", "password": "plain", "tags": "monitoring"}
            ],
            "permissions": [
                {"user": "plain", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
                {"user": "watcher", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let b = Broker::start_with(1, &["--definitions", definitions.to_str().unwrap()]);
    let api = Api::of(&b);
    let (error, reason) = error_of(
        api.call_as(Some(("plain", "plain")), "GET", "/api/queues", None),
        401,
    );
    assert_eq!(
        (error.as_str(), reason.as_str()),
        ("not_authorised", "Not management user")
    );
    let (status, _) = api.call_as(Some(("watcher", "plain")), "GET", "/api/nodes", None);
    assert_eq!(status, 200);
    let (error, reason) = error_of(
        api.call_as(Some(("watcher", "plain")), "GET", "/api/users", None),
        401,
    );
    assert_eq!(
        (error.as_str(), reason.as_str()),
        ("not_authorised", "Not administrator user")
    );
    drop(b);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_management_api_can_be_turned_off() {
    if std::env::var(EXTERNAL_URL_VAR).is_ok() {
        return;
    }
    let b = Broker::start_with(1, &["--no-management"]);
    assert_eq!(b.management_url(), None);
}

// ---- Access control written through the API --------------------------------------------

/// `vhost` as one path segment of an API URL.
fn segment(vhost: &str) -> String {
    vhost.replace('%', "%25").replace('/', "%2F")
}

/// The broker's AMQP URL for `user` in `vhost`.
fn amqp_url(b: &Broker, user: &str, pass: &str, vhost: &str) -> String {
    let authority = b.url();
    let host = authority
        .trim_start_matches("amqp://")
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_string();
    format!("amqp://{user}:{pass}@{host}/{}", segment(vhost))
}

/// Asserts a request's status, with its body in the message.
#[track_caller]
fn expect_status(status_and_body: (u16, String), status: u16) {
    assert_eq!(status_and_body.0, status, "{}", status_and_body.1);
}

/// Makes a vhost, a user and that user's full permissions on it through
/// raw HTTP; the names.
fn vhost_with_user(api: &Api, prefix: &str, tags: &str) -> (String, String) {
    let vhost = unique(&format!("{prefix}-v"));
    let user = unique(&format!("{prefix}-u"));
    expect_status(
        api.call("PUT", &format!("/api/vhosts/{}", segment(&vhost)), None),
        201,
    );
    expect_status(
        api.call(
            "PUT",
            &format!("/api/users/{user}"),
            Some(&json!({"password": "pw", "tags": tags})),
        ),
        201,
    );
    expect_status(
        api.call(
            "PUT",
            &format!("/api/permissions/{}/{user}", segment(&vhost)),
            Some(&json!({"configure": ".*", "write": ".*", "read": ".*"})),
        ),
        201,
    );
    (vhost, user)
}

/// Removes what [`vhost_with_user`] made.
fn remove_vhost_and_user(api: &Api, vhost: &str, user: &str) {
    expect_status(
        api.call("DELETE", &format!("/api/vhosts/{}", segment(vhost)), None),
        204,
    );
    expect_status(api.call("DELETE", &format!("/api/users/{user}"), None), 204);
}

broker_test!(
    rabbitmqadmin_declares_lists_and_deletes_vhosts_users_and_permissions,
    |b| {
        let api = Api::of(b);
        let vhost = unique("admin-v");
        let user = unique("admin-u");
        api.rabbitmqadmin(&["declare", "vhost", &format!("name={vhost}")]);
        // Its creator may use it at once, as in RabbitMQ.
        let permissions = api.get(&format!("/api/vhosts/{}/permissions", segment(&vhost)));
        assert_eq!(
            permissions,
            json!([{"vhost": vhost, "user": api.user, "configure": ".*", "write": ".*", "read": ".*"}])
        );
        api.rabbitmqadmin(&[
            "declare",
            "user",
            &format!("name={user}"),
            "password=secret",
            "tags=monitoring",
        ]);
        let vhosts = api.list("vhosts", &["name"]);
        assert!(
            vhosts.iter().any(|v| v["name"] == vhost.as_str()),
            "{vhosts:?}"
        );
        let users = api.list("users", &["name", "tags"]);
        let listed = users
            .iter()
            .find(|u| u["name"] == user.as_str())
            .unwrap_or_else(|| panic!("{users:?}"));
        assert_eq!(listed["tags"], json!(["monitoring"]), "{listed}");

        // Without permissions, the user may not open the vhost.
        run(async {
            let r = Connection::connect(
                &amqp_url(b, &user, "secret", &vhost),
                ConnectionProperties::default(),
            )
            .await;
            let text = expect_code(r.map(|_| ()), 530);
            assert!(text.contains(&vhost), "{text}");
        });
        api.rabbitmqadmin(&[
            "declare",
            "permission",
            &format!("vhost={vhost}"),
            &format!("user={user}"),
            "configure=^mine\\.",
            "write=.*",
            "read=.*",
        ]);
        let permissions = api.list(
            "permissions",
            &["user", "vhost", "configure", "write", "read"],
        );
        assert!(
            permissions.iter().any(|p| p["user"] == user.as_str()
                && p["vhost"] == vhost.as_str()
                && p["configure"] == "^mine\\."
                && p["write"] == ".*"),
            "{permissions:?}"
        );
        // Now the user logs in, and its configure pattern holds.
        run(async {
            let (conn, ch) = open(&amqp_url(b, &user, "secret", &vhost)).await;
            declare_queue(&ch, "mine.q").await;
            publish(&ch, "", "mine.q", b"in the new vhost").await;
            let got = get_within(&ch, "mine.q", Duration::from_secs(10)).await;
            assert_eq!(got.delivery.data, b"in the new vhost");
            let r = ch
                .queue_declare(
                    "theirs.q",
                    QueueDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await;
            expect_code(r, 403);
            let _ = conn.close(200, "bye").await;
        });
        let queues = api.get(&format!("/api/queues/{}", segment(&vhost)));
        let queues = queues.as_array().unwrap();
        assert_eq!(queue_named(queues, "mine.q")["vhost"], vhost.as_str());

        api.rabbitmqadmin(&[
            "delete",
            "permission",
            &format!("vhost={vhost}"),
            &format!("user={user}"),
        ]);
        let permissions = api.list("permissions", &["user", "vhost"]);
        assert!(
            permissions.iter().all(|p| p["user"] != user.as_str()),
            "{permissions:?}"
        );
        api.rabbitmqadmin(&["delete", "user", &format!("name={user}")]);
        api.rabbitmqadmin(&["delete", "vhost", &format!("name={vhost}")]);
        let users = api.list("users", &["name"]);
        assert!(
            users.iter().all(|u| u["name"] != user.as_str()),
            "{users:?}"
        );
        let vhosts = api.list("vhosts", &["name"]);
        assert!(
            vhosts.iter().all(|v| v["name"] != vhost.as_str()),
            "{vhosts:?}"
        );
        // A deleted user no longer logs in anywhere.
        run(async {
            let r = Connection::connect(
                &amqp_url(b, &user, "secret", "/"),
                ConnectionProperties::default(),
            )
            .await;
            assert!(r.is_err(), "a deleted user logged in");
        });
    }
);

broker_test!(
    deleting_a_vhost_closes_its_connections_and_removes_its_queues,
    |b| {
        let api = Api::of(b);
        let (vhost, user) = vhost_with_user(&api, "del", "");
        let queues: Vec<String> = (0..4).map(|i| format!("del-q{i}")).collect();
        run(async {
            let (conn, ch) = open_confirming(&amqp_url(b, &user, "pw", &vhost)).await;
            for q in &queues {
                declare_queue_with(
                    &ch,
                    q,
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("queue.declare");
                fill_queue(&ch, q, &[b"1", b"2"]).await;
            }
            api.until(&format!("/api/queues/{}", segment(&vhost)), |qs| {
                qs.as_array().is_some_and(|all| {
                    all.len() == queues.len() && all.iter().all(|q| q["messages"] == 2)
                })
            });
            // Connections elsewhere stay open.
            let (other, _) = open(&b.url()).await;
            let watch = ErrorWatch::connection(&conn);
            expect_status(
                api.call("DELETE", &format!("/api/vhosts/{}", segment(&vhost)), None),
                204,
            );
            if b.is_external() {
                // Against RabbitMQ 3.10 lapin sees the socket reset
                // (ECONNRESET) rather than a connection.close.
                watch.wait().await;
            } else {
                let text = watch.expect_code(320).await;
                assert_eq!(
                    text,
                    format!("CONNECTION_FORCED - vhost '{vhost}' is deleted")
                );
            }
            assert_connection_usable(&other).await;
        });
        expect_status(
            api.call("GET", &format!("/api/queues/{}", segment(&vhost)), None),
            404,
        );
        let all = api.get("/api/queues");
        assert!(
            all.as_array()
                .unwrap()
                .iter()
                .all(|q| q["vhost"] != vhost.as_str()),
            "{all}"
        );
        // A vhost of the same name starts empty.
        expect_status(
            api.call("PUT", &format!("/api/vhosts/{}", segment(&vhost)), None),
            201,
        );
        assert_eq!(
            api.get(&format!("/api/queues/{}", segment(&vhost))),
            json!([])
        );
        remove_vhost_and_user(&api, &vhost, &user);
    }
);

broker_test!(a_user_without_permissions_on_a_vhost_gets_401, |b| {
    let api = Api::of(b);
    let (vhost, user) = vhost_with_user(&api, "perm", "management");
    let other = unique("perm-other");
    expect_status(
        api.call("PUT", &format!("/api/vhosts/{}", segment(&other)), None),
        201,
    );
    let as_user = |path: &str| api.call_as(Some((&user, "pw")), "GET", path, None);
    expect_status(as_user(&format!("/api/queues/{}", segment(&vhost))), 200);
    let (error, _) = error_of(as_user(&format!("/api/queues/{}", segment(&other))), 401);
    assert_eq!(error, "not_authorised");
    // Lists over every vhost leave the other vhost out.
    let (status, body) = as_user("/api/vhosts");
    assert_eq!(status, 200, "{body}");
    let vhosts: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = vhosts
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(names.contains(&vhost.as_str()), "{names:?}");
    assert!(!names.contains(&other.as_str()), "{names:?}");
    // Permissions granted through the API open it.
    expect_status(
        api.call(
            "PUT",
            &format!("/api/permissions/{}/{user}", segment(&other)),
            Some(&json!({"configure": "", "write": "", "read": ""})),
        ),
        201,
    );
    expect_status(as_user(&format!("/api/queues/{}", segment(&other))), 200);
    // A new password takes over at once: the old one is refused on the
    // next request. Tags dropped through the API take the API away, and a
    // PUT without a password leaves the user none, as in RabbitMQ.
    let put_user = |body: Value| {
        expect_status(
            api.call("PUT", &format!("/api/users/{user}"), Some(&body)),
            204,
        )
    };
    put_user(json!({"password": "new-pw", "tags": "management"}));
    expect_status(as_user("/api/whoami"), 401);
    let as_new = |path: &str| api.call_as(Some((&user, "new-pw")), "GET", path, None);
    expect_status(as_new("/api/whoami"), 200);
    put_user(json!({"password": "new-pw", "tags": ""}));
    let (_, reason) = error_of(as_new("/api/whoami"), 401);
    assert_eq!(reason, "Not management user");
    put_user(json!({"tags": "management"}));
    let (_, reason) = error_of(as_new("/api/whoami"), 401);
    assert_eq!(reason, "Login failed");
    expect_status(
        api.call("DELETE", &format!("/api/vhosts/{}", segment(&other)), None),
        204,
    );
    remove_vhost_and_user(&api, &vhost, &user);
});

broker_test!(topic_permissions_set_through_the_api_are_enforced, |b| {
    let api = Api::of(b);
    let (vhost, user) = vhost_with_user(&api, "topic", "");
    let path = format!("/api/topic-permissions/{}/{user}", segment(&vhost));
    expect_status(
        api.call(
            "PUT",
            &path,
            Some(&json!({"exchange": "amq.topic", "write": "^allowed\\.", "read": ".*"})),
        ),
        201,
    );
    let listed = api.get(&path);
    assert_eq!(listed[0]["exchange"], "amq.topic", "{listed}");
    assert_eq!(listed[0]["write"], "^allowed\\.", "{listed}");
    let url = amqp_url(b, &user, "pw", &vhost);
    run(async {
        let (_conn, ch) = open_confirming(&url).await;
        let confirmation = publish_confirmed(
            &ch,
            "amq.topic",
            "allowed.key",
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
        assert!(confirmation.is_ack(), "{confirmation:?}");
        let watch = ErrorWatch::channel(&ch);
        let _ = ch
            .basic_publish(
                "amq.topic",
                "denied.key",
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default(),
            )
            .await;
        let text = watch.expect_code(403).await;
        assert!(text.contains("denied.key"), "{text}");
    });
    // Cleared through the API, the key is free again.
    expect_status(api.call("DELETE", &path, None), 204);
    run(async {
        let (_conn, ch) = open_confirming(&url).await;
        let confirmation = publish_confirmed(
            &ch,
            "amq.topic",
            "denied.key",
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
        assert!(confirmation.is_ack(), "{confirmation:?}");
    });
    remove_vhost_and_user(&api, &vhost, &user);
});

broker_test!(a_vhost_queue_limit_set_through_the_api_is_enforced, |b| {
    let api = Api::of(b);
    let (vhost, user) = vhost_with_user(&api, "limit", "");
    api.rabbitmqadmin(&[
        "declare",
        "vhost_limit",
        &format!("vhost={vhost}"),
        "name=max-queues",
        "value=1",
    ]);
    let limits = api.get(&format!("/api/vhost-limits/{}", segment(&vhost)));
    assert_eq!(
        limits,
        json!([{"vhost": vhost, "value": {"max-queues": 1}}])
    );
    let url = amqp_url(b, &user, "pw", &vhost);
    run(async {
        let (_conn, ch) = open(&url).await;
        declare_queue(&ch, "first").await;
        let r = ch
            .queue_declare(
                "second",
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await;
        let text = expect_code(r, 406);
        assert!(text.contains("queue limit in vhost"), "{text}");
    });
    api.rabbitmqadmin(&[
        "delete",
        "vhost_limit",
        &format!("vhost={vhost}"),
        "name=max-queues",
    ]);
    assert_eq!(
        api.get(&format!("/api/vhost-limits/{}", segment(&vhost))),
        json!([])
    );
    run(async {
        let (_conn, ch) = open(&url).await;
        declare_queue(&ch, "second").await;
    });
    remove_vhost_and_user(&api, &vhost, &user);
});

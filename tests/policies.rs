//! Policies through the management API (raw HTTP and Debian's
//! `rabbitmqadmin`), with their effect checked over AMQP (lapin): a
//! policy's limits apply to queues declared before and after it, the
//! smaller of a queue argument and a policy value wins, the policy of
//! highest priority applies, deleting a policy lifts its limits, an
//! exchange gets its alternate exchange from a policy, and policies
//! survive a restart. Each runs at 1 and 2 shards.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const RABBITMQADMIN: &str = "/usr/bin/rabbitmqadmin";
const DEADLINE: Duration = Duration::from_secs(10);

/// The broker's management API, as guest.
struct Api {
    base: String,
}

impl Api {
    /// The address the broker logged last (a restart logs a new one).
    fn of(b: &Broker) -> Api {
        if b.is_external() {
            return Api {
                base: b.management_url().expect("WARREN_TEST_MANAGEMENT_URL"),
            };
        }
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
    }

    fn host_port(&self) -> (String, String) {
        let authority = self.base.trim_start_matches("http://");
        let (host, port) = authority.rsplit_once(':').expect("host:port");
        (host.to_string(), port.to_string())
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        let request = ureq::request(method, &format!("{}{}", self.base, path))
            .timeout(Duration::from_secs(30))
            .set("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=");
        let result = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
            None => request.call(),
        };
        match result {
            Ok(r) => {
                let status = r.status();
                (status, r.into_string().unwrap_or_default())
            }
            Err(ureq::Error::Status(status, r)) => (status, r.into_string().unwrap_or_default()),
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    fn put_policy(&self, name: &str, body: Value) {
        let (status, text) = self.call("PUT", &format!("/api/policies/%2F/{name}"), Some(&body));
        assert!(
            status == 201 || status == 204,
            "PUT policy {name}: {status} {text}"
        );
    }

    fn delete_policy(&self, name: &str) {
        let (status, text) = self.call("DELETE", &format!("/api/policies/%2F/{name}"), None);
        assert_eq!(status, 204, "DELETE policy {name}: {text}");
    }

    fn rabbitmqadmin(&self, args: &[&str]) -> String {
        let (host, port) = self.host_port();
        let output = Command::new(RABBITMQADMIN)
            .args(["-H", &host, "-P", &port, "-u", "guest", "-p", "guest"])
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

    /// Polls `path` until `check` holds, within DEADLINE.
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

fn long(n: i64) -> AMQPValue {
    AMQPValue::LongLongInt(n)
}

fn args_of(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert((*k).into(), v.clone());
    }
    table
}

async fn publish_n(ch: &Channel, queue: &str, n: usize) {
    let bodies: Vec<&[u8]> = (0..n).map(|_| &b"m"[..]).collect();
    fill_queue(ch, queue, &bodies).await;
}

broker_test!(
    a_max_length_policy_limits_queues_declared_before_and_after_it,
    |b| {
        let api = Api::of(b);
        run(async {
            let (conn, ch) = open_confirming(&b.url()).await;
            declare_queue(&ch, "lim.before").await;
            declare_queue(&ch, "lim.full").await;
            declare_queue(&ch, "other").await;
            publish_n(&ch, "lim.full", 5).await;
            api.rabbitmqadmin(&[
                "declare",
                "policy",
                "name=limit",
                "pattern=^lim\\.",
                "definition={\"max-length\": 2}",
                "apply-to=queues",
            ]);
            // The queue that held 5 is cut to 2 when the policy reaches it.
            wait_message_count(&conn, "lim.full", 2).await;
            declare_queue(&ch, "lim.after").await;
            for q in ["lim.before", "lim.after", "other"] {
                publish_n(&ch, q, 5).await;
            }
            assert_eq!(message_count(&conn, "lim.before").await, 2);
            assert_eq!(message_count(&conn, "lim.after").await, 2);
            assert_eq!(message_count(&conn, "other").await, 5);
            let q = api.get("/api/queues/%2F/lim.after");
            assert_eq!(q["policy"], "limit", "{q}");
            assert_eq!(q["effective_policy_definition"], json!({"max-length": 2}));
            assert_eq!(api.get("/api/queues/%2F/other")["policy"], Value::Null);

            // Deleting the policy lifts the limit.
            api.delete_policy("limit");
            publish_n(&ch, "lim.before", 3).await;
            assert_eq!(message_count(&conn, "lim.before").await, 5);
            let listed = api.get("/api/policies");
            assert_eq!(listed, json!([]));
        });
    }
);

broker_test!(a_message_ttl_policy_expires_messages, |b| {
    let api = Api::of(b);
    run(async {
        let (conn, ch) = open_confirming(&b.url()).await;
        declare_queue(&ch, "ttl.q").await;
        api.put_policy(
            "ttl",
            json!({"pattern": "^ttl\\.", "definition": {"message-ttl": 50}, "apply-to": "all"}),
        );
        publish_n(&ch, "ttl.q", 3).await;
        wait_message_count(&conn, "ttl.q", 0).await;
    });
});

broker_test!(the_smaller_of_argument_and_policy_wins, |b| {
    let api = Api::of(b);
    run(async {
        let (conn, ch) = open_confirming(&b.url()).await;
        api.put_policy(
            "three",
            json!({"pattern": "^arg\\.", "definition": {"max-length": 3}, "apply-to": "queues"}),
        );
        for (name, own) in [("arg.one", 1), ("arg.five", 5)] {
            declare_queue_with(
                &ch,
                name,
                QueueDeclareOptions::default(),
                args_of(&[("x-max-length", long(own))]),
            )
            .await
            .unwrap();
            publish_n(&ch, name, 6).await;
        }
        assert_eq!(message_count(&conn, "arg.one").await, 1);
        assert_eq!(message_count(&conn, "arg.five").await, 3);
    });
});

broker_test!(the_policy_of_highest_priority_applies, |b| {
    let api = Api::of(b);
    run(async {
        let (conn, ch) = open_confirming(&b.url()).await;
        declare_queue(&ch, "prio.q").await;
        api.put_policy(
            "low",
            json!({"pattern": "^prio\\.", "definition": {"max-length": 4}, "priority": 1}),
        );
        api.put_policy(
            "high",
            json!({"pattern": "^prio\\.q$", "definition": {"max-length": 1}, "priority": 2}),
        );
        publish_n(&ch, "prio.q", 5).await;
        assert_eq!(message_count(&conn, "prio.q").await, 1);
        api.until("/api/queues/%2F/prio.q", |q| q["policy"] == "high");
        // The lower one applies once the higher one goes.
        api.delete_policy("high");
        publish_n(&ch, "prio.q", 5).await;
        assert_eq!(message_count(&conn, "prio.q").await, 4);
    });
});

broker_test!(
    an_exchange_takes_its_alternate_exchange_from_a_policy,
    |b| {
        let api = Api::of(b);
        run(async {
            let (conn, ch) = open_confirming(&b.url()).await;
            declare_exchange(&ch, "ae.main", ExchangeKind::Direct).await;
            declare_exchange(&ch, "ae.alt", ExchangeKind::Fanout).await;
            declare_queue(&ch, "ae.caught").await;
            bind(&ch, "ae.caught", "ae.alt", "").await;
            api.put_policy(
                "ae",
                json!({"pattern": "^ae\\.main$", "definition": {"alternate-exchange": "ae.alt"},
                   "apply-to": "exchanges"}),
            );
            let x = api.get("/api/exchanges/%2F/ae.main");
            assert_eq!(x["policy"], "ae", "{x}");
            publish_confirmed(
                &ch,
                "ae.main",
                "nowhere",
                BasicPublishOptions::default(),
                b"m",
                BasicProperties::default(),
            )
            .await
            .unwrap();
            wait_message_count(&conn, "ae.caught", 1).await;
        });
    }
);

broker_test!(policies_are_checked_as_rabbitmq_checks_them, |b| {
    let api = Api::of(b);
    let bad = |definition: Value, says: &str| {
        let body = json!({"pattern": ".*", "definition": definition});
        let (status, text) = api.call("PUT", "/api/policies/%2F/bad", Some(&body));
        assert_eq!(status, 400, "{text}");
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["error"], "bad_request", "{text}");
        let reason = value["reason"].as_str().unwrap();
        assert!(reason.contains(says), "{reason}");
    };
    bad(
        json!({"max-length": 2, "foo": 1}),
        "are not recognised policy settings",
    );
    bad(
        json!({"max-length": "two"}),
        "is not a valid maximum length",
    );
    bad(
        json!({"overflow": "sideways"}),
        "is not a valid overflow value",
    );
    let (status, _) = api.call("DELETE", "/api/policies/%2F/none", None);
    assert_eq!(status, 404);
    let (status, _) = api.call("GET", "/api/policies/%2F/none", None);
    assert_eq!(status, 404);
    api.put_policy(
        "good",
        json!({"pattern": "^x", "definition": {"expires": 60000, "queue-mode": "lazy"}}),
    );
    let one = api.get("/api/policies/%2F/good");
    assert_eq!(
        one,
        json!({"vhost": "/", "name": "good", "pattern": "^x", "apply-to": "all",
               "definition": {"expires": 60000, "queue-mode": "lazy"}, "priority": 0})
    );
    assert_eq!(api.get("/api/policies/%2F"), json!([one]));
});

fn policies_survive_a_restart(shards: usize) {
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        return;
    }
    let api = Api::of(&broker);
    api.put_policy(
        "kept",
        json!({"pattern": "^kept\\.", "definition": {"max-length": 2}, "apply-to": "queues"}),
    );
    run(async {
        let (_conn, ch) = open_confirming(&broker.url()).await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        declare_queue_with(&ch, "kept.q", durable, FieldTable::default())
            .await
            .unwrap();
    });
    broker.restart();
    let api = Api::of(&broker);
    let listed = api.get("/api/policies/%2F");
    assert_eq!(listed[0]["name"], "kept", "{listed}");
    run(async {
        let (conn, ch) = open_confirming(&broker.url()).await;
        publish_n(&ch, "kept.q", 4).await;
        assert_eq!(message_count(&conn, "kept.q").await, 2);
    });
}

#[test]
fn policies_survive_a_restart_shards_1() {
    policies_survive_a_restart(1);
}

#[test]
fn policies_survive_a_restart_shards_2() {
    policies_survive_a_restart(2);
}

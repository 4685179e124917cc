//! warrenctl, the rabbitmqctl-style tool, run as a binary against the broker under test's
//! management API: a warren started here with `--management-listen`, or RabbitMQ when
//! `WARREN_TEST_AMQP_URL` and `WARREN_TEST_MANAGEMENT_URL` name one (this is how the
//! expected output was checked against RabbitMQ 3.10's own rabbitmqctl and API).
//!
//! Tests that need the API skip themselves (saying so on stderr) while the warren binary
//! has no `--management-listen`; the others (help, usage errors, an unreachable broker)
//! always run.
//!
//! Statistics (message counts, consumers) reach RabbitMQ's API some seconds late, so
//! those checks poll with a deadline.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long the broker's statistics may take to show a change (RabbitMQ collects them
/// every 5 s).
const STATS_DEADLINE: Duration = Duration::from_secs(30);

/// The overall limit of a test body that waits on statistics.
const BODY_DEADLINE: Duration = Duration::from_secs(90);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs warrenctl with `args` (and no WARRENCTL_URL from the environment), feeding
/// `stdin` to it.
fn warrenctl_with(args: &[&str], envs: &[(&str, &str)], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warrenctl"))
        .env_remove("WARRENCTL_URL")
        .envs(envs.iter().copied())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start warrenctl");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("warrenctl output");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn warrenctl(args: &[&str]) -> Run {
    warrenctl_with(args, &[], "")
}

/// warrenctl against the API at `url`.
fn ctl(url: &str, args: &[&str]) -> Run {
    let mut all = vec!["--url", url];
    all.extend_from_slice(args);
    warrenctl(&all)
}

/// warrenctl against `url` that must succeed; its stdout.
fn ok(url: &str, args: &[&str]) -> String {
    let run = ctl(url, args);
    assert_eq!(run.code, 0, "warrenctl {args:?} failed:\n{run:?}");
    run.stdout
}

/// The rows of a `--silent` table (no informational lines, no header).
fn rows(url: &str, args: &[&str]) -> Vec<Vec<String>> {
    let mut all = vec!["--silent"];
    all.extend_from_slice(args);
    ok(url, &all)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// A URL to a port nobody listens on.
fn dead_url() -> String {
    format!("http://guest:guest@127.0.0.1:{}", free_port())
}

/// Starts the broker with its management API and waits until the API answers; None
/// (after saying why) when warren has no API yet.
fn api(shards: usize) -> Option<(Broker, String)> {
    let Some((broker, url)) = Broker::start_with_management(shards) else {
        eprintln!(
            "skipped: the warren binary has no --management-listen yet (set {EXTERNAL_MANAGEMENT_URL_VAR} \
             and {EXTERNAL_URL_VAR} to run against RabbitMQ)"
        );
        return None;
    };
    ok(&url, &["await_startup", "--timeout", "30"]);
    Some((broker, url))
}

// ---- Help and usage: no broker needed ----------------------------------------------------

const COMMANDS: &[&str] = &[
    "list_queues",
    "list_exchanges",
    "list_bindings",
    "list_connections",
    "list_channels",
    "list_consumers",
    "status",
    "cluster_status",
    "trace_on",
    "trace_off",
    "list_traces",
    "add_trace",
    "delete_trace",
    "list_trace_files",
    "get_trace_file",
    "delete_trace_file",
    "add_user",
    "delete_user",
    "change_password",
    "set_user_tags",
    "list_users",
    "set_permissions",
    "list_permissions",
    "add_vhost",
    "delete_vhost",
    "list_vhosts",
    "set_policy",
    "clear_policy",
    "list_policies",
    "purge_queue",
    "delete_queue",
    "export_definitions",
    "import_definitions",
    "close_connection",
    "await_startup",
];

#[test]
fn help_lists_every_command_and_the_global_options() {
    let run = warrenctl(&["--help"]);
    assert_eq!(run.code, 0, "{run:?}");
    for command in COMMANDS {
        assert!(
            run.stdout.contains(command),
            "--help lacks {command}:\n{run:?}"
        );
    }
    for option in [
        "--url",
        "WARRENCTL_URL",
        "--vhost",
        "--quiet",
        "--silent",
        "--formatter",
        "--timeout",
        "69",
    ] {
        assert!(
            run.stdout.contains(option),
            "--help lacks {option}:\n{run:?}"
        );
    }
}

#[test]
fn every_command_has_its_own_help() {
    for command in COMMANDS {
        let run = warrenctl(&["help", command]);
        assert_eq!(run.code, 0, "help {command}: {run:?}");
        assert!(
            run.stdout.contains(&format!("warrenctl {command}")),
            "help {command} has no usage line:\n{run:?}"
        );
    }
    let run = warrenctl(&["list_queues", "--help"]);
    assert_eq!(run.code, 0, "{run:?}");
    for column in ["messages_unacknowledged", "consumers", "durable", "policy"] {
        assert!(run.stdout.contains(column), "{run:?}");
    }
    let run = warrenctl(&["set_policy", "--help"]);
    for option in ["--priority", "--apply-to", "<DEFINITION>"] {
        assert!(run.stdout.contains(option), "{run:?}");
    }
}

#[test]
fn usage_errors_exit_64() {
    let run = warrenctl(&["no_such_command"]);
    assert_eq!(run.code, 64, "{run:?}");
    let run = ctl(&dead_url(), &["list_queues", "name", "no_such_column"]);
    assert_eq!(run.code, 64, "{run:?}");
    assert!(
        run.stderr
            .contains("Info key(s) no_such_column are not supported"),
        "{run:?}"
    );
    let run = warrenctl(&["--url", "https://guest:guest@localhost:15671", "status"]);
    assert_eq!(run.code, 64, "{run:?}");
    assert!(
        !run.stderr.contains("guest:guest"),
        "the password is echoed: {run:?}"
    );
    let run = warrenctl(&["set_policy", "p", "^q", "{}", "--apply-to", "everything"]);
    assert_eq!(run.code, 64, "{run:?}");
}

#[test]
fn an_unreachable_broker_exits_69() {
    let url = dead_url();
    let run = ctl(&url, &["list_queues"]);
    assert_eq!(run.code, 69, "{run:?}");
    assert!(
        run.stderr.contains("unable to perform an operation"),
        "{run:?}"
    );
    assert!(
        !run.stderr.contains("guest:guest"),
        "the password is echoed: {run:?}"
    );
    // The same through WARRENCTL_URL instead of --url.
    let run = warrenctl_with(&["status"], &[("WARRENCTL_URL", &url)], "");
    assert_eq!(run.code, 69, "{run:?}");
    let port = url.rsplit(':').next().unwrap_or_default();
    assert!(run.stderr.contains(port), "{run:?}");
}

#[test]
fn await_startup_gives_up_after_its_timeout_with_69() {
    let run = ctl(&dead_url(), &["await_startup", "--timeout", "1"]);
    assert_eq!(run.code, 69, "{run:?}");
    assert!(
        run.stderr.contains("did not start within 1 seconds"),
        "{run:?}"
    );
}

// ---- Against the management API -----------------------------------------------------------

fn queue_listing(shards: usize) {
    let Some((b, url)) = api(shards) else { return };
    run_for(BODY_DEADLINE, async {
        let (_conn, ch) = open_confirming(&b.url()).await;
        let q = unique("ctl-q");
        declare_queue(&ch, &q).await;
        fill_queue(&ch, &q, &[b"one", b"two", b"three"]).await;
        let want = vec![
            q.clone(),
            "3".to_string(),
            "0".to_string(),
            "false".to_string(),
        ];
        let seen = wait_until(STATS_DEADLINE, || {
            rows(
                &url,
                &["list_queues", "name", "messages", "consumers", "durable"],
            )
            .contains(&want)
        });
        assert!(
            seen,
            "{q} never listed with 3 messages:\n{}",
            ok(
                &url,
                &["list_queues", "name", "messages", "consumers", "durable"]
            )
        );

        // rabbitmqctl's informational lines, then the header, then the rows.
        let text = ok(&url, &["list_queues", "name", "messages"]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Timeout: 60.0 seconds ...", "{text}");
        assert_eq!(lines[1], "Listing queues for vhost / ...", "{text}");
        assert_eq!(lines[2], "name\tmessages", "{text}");
        assert!(lines.contains(&format!("{q}\t3").as_str()), "{text}");

        // Columns may also come comma-separated; the default is name and messages.
        let text = ok(&url, &["--quiet", "list_queues", "name,messages_ready"]);
        assert!(text.starts_with("name\tmessages_ready\n"), "{text}");
        let text = ok(&url, &["-q", "list_queues"]);
        assert!(text.starts_with("name\tmessages\n"), "{text}");
        let text = ok(&url, &["--no-table-headers", "list_queues"]);
        assert!(
            text.contains("Listing queues") && !text.contains("name\tmessages"),
            "{text}"
        );

        // JSON: one object per queue with the columns asked for, in that order.
        let text = ok(
            &url,
            &["list_queues", "name", "messages", "--formatter", "json"],
        );
        let list: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let mine = list
            .as_array()
            .expect("an array")
            .iter()
            .find(|e| e["name"] == q.as_str())
            .unwrap_or_else(|| panic!("{q} missing from {text}"));
        assert_eq!(mine["messages"], 3, "{text}");
        assert!(
            text.contains(&format!("{{\"name\":\"{q}\",\"messages\":3}}")),
            "{text}"
        );

        // Another vhost that does not exist is an error, not an empty list.
        let run = ctl(&url, &["list_queues", "-p", &unique("no-vhost")]);
        assert_eq!(run.code, 65, "{run:?}");
        ok(&url, &["delete_queue", &q]);
    });
}

#[test]
fn list_queues_shows_counts_columns_and_json_shards_1() {
    queue_listing(1);
}

#[test]
fn list_queues_shows_counts_columns_and_json_shards_2() {
    queue_listing(2);
}

#[test]
fn exchanges_and_bindings_are_listed() {
    let Some((b, url)) = api(1) else { return };
    run_for(BODY_DEADLINE, async {
        let (_conn, ch) = open(&b.url()).await;
        let x = unique("ctl-x");
        let q = unique("ctl-q");
        declare_exchange(&ch, &x, ExchangeKind::Topic).await;
        declare_queue(&ch, &q).await;
        bind(&ch, &q, &x, "a.#").await;

        let exchanges = rows(&url, &["list_exchanges"]);
        assert!(
            exchanges.contains(&vec![x.clone(), "topic".into()]),
            "{exchanges:?}"
        );
        assert!(
            exchanges.contains(&vec!["amq.direct".into(), "direct".into()]),
            "{exchanges:?}"
        );
        // The default exchange has the empty name.
        assert!(
            exchanges.contains(&vec![String::new(), "direct".into()]),
            "{exchanges:?}"
        );
        let text = ok(
            &url,
            &["list_exchanges", "name", "type", "durable", "internal"],
        );
        assert!(
            text.starts_with("Listing exchanges for vhost / ...\nname\ttype\tdurable\tinternal\n"),
            "{text}"
        );

        let text = ok(&url, &["list_bindings"]);
        assert!(
            text.starts_with("Listing bindings for vhost /...\nsource_name\tsource_kind\tdestination_name\tdestination_kind\trouting_key\targuments\n"),
            "{text}"
        );
        let bindings = rows(&url, &["list_bindings"]);
        let want: Vec<String> = [x.as_str(), "exchange", q.as_str(), "queue", "a.#", "[]"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(bindings.contains(&want), "{bindings:?}");
        let default_binding: Vec<String> = ["", "exchange", q.as_str(), "queue", q.as_str(), "[]"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(bindings.contains(&default_binding), "{bindings:?}");
        ok(&url, &["delete_queue", &q]);
    });
}

#[test]
fn connections_channels_consumers_and_close_connection() {
    let Some((b, url)) = api(1) else { return };
    run_for(BODY_DEADLINE, async {
        let (conn, ch) = open(&b.url()).await;
        let q = unique("ctl-q");
        declare_queue(&ch, &q).await;
        step("basic.qos", ch.basic_qos(7, BasicQosOptions::default()))
            .await
            .expect("basic.qos");
        let _consumer = consume(&ch, &q, "ctl-tag", BasicConsumeOptions::default()).await;

        let seen = wait_until(STATS_DEADLINE, || {
            rows(&url, &["list_consumers"]).iter().any(|r| r[0] == q)
        });
        assert!(seen, "{}", ok(&url, &["list_consumers"]));
        let text = ok(&url, &["list_consumers"]);
        assert!(
            text.starts_with("Listing consumers in vhost / ...\nqueue_name\tchannel_pid\tconsumer_tag\tack_required\tprefetch_count\tactive\targuments\n"),
            "{text}"
        );
        let mine: Vec<Vec<String>> = rows(&url, &["list_consumers"])
            .into_iter()
            .filter(|r| r[0] == q)
            .collect();
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(&mine[0][2..6], ["ctl-tag", "true", "7", "true"], "{mine:?}");

        // Our connection, found by its peer port among the others of a shared broker.
        let connections = rows(
            &url,
            &["list_connections", "name", "user", "peer_port", "state"],
        );
        assert!(!connections.is_empty(), "no connections listed");
        let text = ok(&url, &["list_connections"]);
        assert!(
            text.starts_with("Listing connections ...\nuser\tpeer_host\tpeer_port\tstate\n"),
            "{text}"
        );
        let text = ok(&url, &["list_channels"]);
        assert!(
            text.starts_with(
                "Listing channels ...\npid\tuser\tconsumer_count\tmessages_unacknowledged\n"
            ),
            "{text}"
        );
        // The consumer's channel, by the name the consumers listing gives it.
        let channel_name = mine[0][1].clone();
        let columns = [
            "list_channels",
            "pid",
            "consumer_count",
            "prefetch_count",
            "connection",
        ];
        // The channel's own statistics may lag behind the consumer's.
        let counted = wait_until(STATS_DEADLINE, || {
            rows(&url, &columns)
                .iter()
                .any(|r| r[0] == channel_name && r[1] == "1")
        });
        let channels = rows(&url, &columns);
        assert!(counted, "{channel_name} never had 1 consumer: {channels:?}");
        let my_channel = channels
            .iter()
            .find(|r| r[0] == channel_name)
            .unwrap_or_else(|| panic!("{channel_name} not among {channels:?}"));
        let connection_name = my_channel[3].clone();
        assert!(
            connections.iter().any(|r| r[0] == connection_name),
            "{connection_name} not among {connections:?}"
        );

        let json = ok(
            &url,
            &["list_connections", "name", "user", "--formatter", "json"],
        );
        let list: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert!(
            list.as_array()
                .is_some_and(|l| l.iter().any(|c| c["name"] == connection_name.as_str())),
            "{json}"
        );

        let run = ctl(&url, &["close_connection", "no such connection", "test"]);
        assert_eq!(run.code, 65, "{run:?}");
        let text = ok(
            &url,
            &["close_connection", &connection_name, "closed by a test"],
        );
        assert!(text.contains("Closing connection"), "{text}");
        wait_connection_closed(&conn).await;
        let (_conn2, ch2) = open(&b.url()).await;
        step(
            "queue.delete",
            ch2.queue_delete(&q, QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");
    });
}

#[test]
fn users_tags_passwords_and_permissions() {
    let Some((_b, url)) = api(1) else { return };
    let user = unique("ctl-user");
    let text = ok(&url, &["add_user", &user, "first-pass"]);
    assert!(
        text.starts_with(&format!("Adding user \"{user}\" ...\n")),
        "{text}"
    );
    let run = ctl(&url, &["add_user", &user, "again"]);
    assert_eq!(run.code, 70, "{run:?}");
    assert!(run.stderr.contains("already exists"), "{run:?}");

    let users = rows(&url, &["list_users"]);
    assert!(
        users.contains(&vec![user.clone(), "[]".to_string()]),
        "{users:?}"
    );
    ok(
        &url,
        &["set_user_tags", &user, "administrator", "monitoring"],
    );
    let users = rows(&url, &["list_users"]);
    assert!(
        users.contains(&vec![
            user.clone(),
            "[administrator, monitoring]".to_string()
        ]),
        "{users:?}"
    );
    let text = ok(&url, &["list_users", "--formatter", "json"]);
    assert!(
        text.contains(&format!(
            "{{\"user\":\"{user}\",\"tags\":[\"administrator\",\"monitoring\"]}}"
        )),
        "{text}"
    );

    // Setting tags keeps the password; changing the password keeps the tags.
    let base = url.split('@').nth(1).expect("URL with credentials");
    let as_user = |pass: &str| format!("http://{user}:{pass}@{base}");
    ok(&as_user("first-pass"), &["list_users"]);
    ok(&url, &["change_password", &user, "second-pass"]);
    ok(&as_user("second-pass"), &["list_users"]);
    let run = ctl(&as_user("first-pass"), &["list_users"]);
    assert_eq!(run.code, 77, "{run:?}");
    assert!(run.stderr.contains("access refused"), "{run:?}");

    // A user without the administrator tag lacks the rights to change users.
    ok(&url, &["set_user_tags", &user, "monitoring"]);
    let run = ctl(
        &as_user("second-pass"),
        &["add_user", &unique("other"), "x"],
    );
    assert_eq!(run.code, 77, "{run:?}");

    ok(&url, &["set_permissions", &user, "^ctl-", ".*", ""]);
    let text = ok(&url, &["list_permissions"]);
    assert!(
        text.starts_with("Listing permissions for vhost \"/\" ...\nuser\tconfigure\twrite\tread\n"),
        "{text}"
    );
    let permissions = rows(&url, &["list_permissions", "-p", "/"]);
    let want: Vec<String> = [user.as_str(), "^ctl-", ".*", ""]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert!(permissions.contains(&want), "{permissions:?}");

    let nobody = unique("nobody");
    for args in [
        vec!["change_password", nobody.as_str(), "x"],
        vec!["set_user_tags", nobody.as_str(), "management"],
        vec!["set_permissions", nobody.as_str(), ".*", ".*", ".*"],
        vec!["delete_user", nobody.as_str()],
    ] {
        let run = ctl(&url, &args);
        assert_eq!(run.code, 67, "{args:?}: {run:?}");
        assert!(run.stderr.contains("does not exist"), "{run:?}");
    }
    ok(&url, &["delete_user", &user]);
    assert!(!rows(&url, &["list_users"]).iter().any(|r| r[0] == user));

    // add_user reads the password from standard input when it is not given.
    let piped = unique("ctl-piped");
    let run = warrenctl_with(&["--url", &url, "add_user", &piped], &[], "from-stdin\n");
    assert_eq!(run.code, 0, "{run:?}");
    ok(&url, &["set_user_tags", &piped, "monitoring"]);
    ok(
        &format!("http://{piped}:from-stdin@{base}"),
        &["list_vhosts"],
    );
    ok(&url, &["delete_user", &piped]);
}

#[test]
fn vhosts_and_tracing() {
    let Some((_b, url)) = api(1) else { return };
    let vhost = unique("ctl-vhost");
    let text = ok(
        &url,
        &["add_vhost", &vhost, "--description", "for warrenctl"],
    );
    assert_eq!(text, format!("Adding vhost \"{vhost}\" ...\n"));
    let vhosts = rows(&url, &["list_vhosts", "name", "description", "tracing"]);
    assert!(
        vhosts.contains(&vec![vhost.clone(), "for warrenctl".into(), "false".into()]),
        "{vhosts:?}"
    );
    let text = ok(&url, &["list_vhosts"]);
    assert!(text.starts_with("Listing vhosts ...\nname\n"), "{text}");

    let text = ok(&url, &["trace_on", "-p", &vhost]);
    assert_eq!(
        text,
        format!("Starting tracing for vhost \"{vhost}\" ...\nTrace enabled for vhost {vhost}\n")
    );
    let vhosts = rows(&url, &["list_vhosts", "name", "description", "tracing"]);
    assert!(
        vhosts.contains(&vec![vhost.clone(), "for warrenctl".into(), "true".into()]),
        "tracing on lost the description or did not turn on: {vhosts:?}"
    );
    ok(&url, &["trace_off", "--vhost", &vhost]);
    let vhosts = rows(&url, &["list_vhosts", "name", "tracing"]);
    assert!(
        vhosts.contains(&vec![vhost.clone(), "false".into()]),
        "{vhosts:?}"
    );

    let missing = unique("no-vhost");
    let run = ctl(&url, &["trace_on", "-p", &missing]);
    assert_eq!(run.code, 65, "{run:?}");
    assert!(run.stderr.contains("does not exist"), "{run:?}");
    assert!(
        !rows(&url, &["list_vhosts"]).iter().any(|r| r[0] == missing),
        "trace_on created the vhost"
    );

    ok(&url, &["delete_vhost", &vhost]);
    let run = ctl(&url, &["delete_vhost", &vhost]);
    assert_eq!(run.code, 65, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("Virtual host '{vhost}' does not exist")),
        "{run:?}"
    );
}

#[test]
fn policies_are_set_listed_and_cleared() {
    let Some((_b, url)) = api(1) else { return };
    let name = unique("ctl-policy");
    let text = ok(
        &url,
        &[
            "set_policy",
            &name,
            "^ctl-ttl\\.",
            r#"{"message-ttl":60000}"#,
            "--apply-to",
            "queues",
            "--priority",
            "3",
        ],
    );
    assert!(
        text.starts_with(&format!("Setting policy \"{name}\" for pattern")),
        "{text}"
    );
    let text = ok(&url, &["list_policies"]);
    assert!(
        text.starts_with("Listing policies for vhost \"/\" ...\nvhost\tname\tpattern\tapply-to\tdefinition\tpriority\n"),
        "{text}"
    );
    let policies = rows(&url, &["list_policies"]);
    let want: Vec<String> = [
        "/",
        name.as_str(),
        "^ctl-ttl\\.",
        "queues",
        r#"{"message-ttl":60000}"#,
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert!(policies.contains(&want), "{policies:?}");
    let json = ok(&url, &["list_policies", "--formatter", "json"]);
    let list: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let mine = list
        .as_array()
        .and_then(|l| l.iter().find(|p| p["name"] == name.as_str()).cloned())
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(mine["priority"], 3);
    assert_eq!(mine["apply-to"], "queues");

    let run = ctl(&url, &["set_policy", &unique("bad"), ".*", "not json"]);
    assert_eq!(run.code, 65, "{run:?}");
    assert!(run.stderr.contains("JSON"), "{run:?}");
    let run = ctl(
        &url,
        &["set_policy", &unique("bad"), ".*", r#"{"no-such-key":1}"#],
    );
    assert_eq!(run.code, 65, "{run:?}");

    ok(&url, &["clear_policy", &name]);
    assert!(!rows(&url, &["list_policies"]).iter().any(|r| r[1] == name));
    let run = ctl(&url, &["clear_policy", &name]);
    assert_eq!(run.code, 65, "{run:?}");
}

#[test]
fn purge_and_delete_queue() {
    let Some((b, url)) = api(1) else { return };
    run_for(BODY_DEADLINE, async {
        let (conn, ch) = open_confirming(&b.url()).await;
        let q = unique("ctl-q");
        declare_queue(&ch, &q).await;
        fill_queue(&ch, &q, &[b"a", b"b"]).await;
        let text = ok(&url, &["purge_queue", &q]);
        assert_eq!(text, format!("Purging queue '{q}' in vhost '/' ...\n"));
        assert_eq!(message_count(&conn, &q).await, 0);

        fill_queue(&ch, &q, &[b"c"]).await;
        let seen = wait_until(STATS_DEADLINE, || {
            rows(&url, &["list_queues", "name", "messages_ready"])
                .contains(&vec![q.clone(), "1".into()])
        });
        assert!(
            seen,
            "{}",
            ok(&url, &["list_queues", "name", "messages_ready"])
        );
        let run = ctl(&url, &["delete_queue", &q, "--if-empty"]);
        assert_eq!(run.code, 65, "{run:?}");
        assert!(queue_exists(&conn, &q).await);
        let text = ok(&url, &["delete_queue", &q]);
        assert!(
            text.starts_with(&format!("Deleting queue '{q}' on vhost '/' ...\n")),
            "{text}"
        );
        assert!(!queue_exists(&conn, &q).await);

        for args in [["purge_queue", q.as_str()], ["delete_queue", q.as_str()]] {
            let run = ctl(&url, &args);
            assert_eq!(run.code, 65, "{args:?}: {run:?}");
            assert!(run.stderr.contains("not found"), "{run:?}");
        }
    });
}

#[test]
fn definitions_export_and_import_round_trip() {
    let Some((b, url)) = api(1) else { return };
    let dir = fresh_temp_dir("warrenctl-defs");
    let file = dir.join("definitions.json");
    let file = file.to_str().expect("UTF-8 path").to_string();
    run_for(BODY_DEADLINE, async {
        let (conn, ch) = open(&b.url()).await;
        let q = unique("ctl-durable");
        step(
            "queue.declare",
            ch.queue_declare(
                &q,
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("queue.declare");

        let text = ok(&url, &["export_definitions", &file]);
        assert_eq!(
            text,
            format!("Exporting definitions in JSON to a file at \"{file}\" ...\n")
        );
        let exported: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("the export"))
                .expect("JSON");
        assert!(
            exported["queues"]
                .as_array()
                .is_some_and(|l| l.iter().any(|e| e["name"] == q.as_str())),
            "{exported}"
        );
        // To standard output, nothing but the JSON.
        let stdout = ok(&url, &["export_definitions", "-"]);
        let _: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");

        step(
            "queue.delete",
            ch.queue_delete(&q, QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");
        assert!(!queue_exists(&conn, &q).await);
        let text = ok(&url, &["import_definitions", &file]);
        assert!(
            text.starts_with(&format!(
                "Importing definitions in JSON from a file at \"{file}\" ...\n"
            )),
            "{text}"
        );
        assert!(
            queue_exists(&conn, &q).await,
            "the import did not bring {q} back"
        );

        // From standard input.
        step(
            "queue.delete",
            ch.queue_delete(&q, QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");
        let run = warrenctl_with(&["--url", &url, "import_definitions", "-"], &[], &stdout);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(
            queue_exists(&conn, &q).await,
            "the import from stdin did not bring {q} back"
        );
        step(
            "queue.delete",
            ch.queue_delete(&q, QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");

        let run = ctl(&url, &["import_definitions", &format!("{file}.missing")]);
        assert_eq!(run.code, 65, "{run:?}");
        let run = warrenctl_with(&["--url", &url, "import_definitions"], &[], "not json");
        assert_eq!(run.code, 65, "{run:?}");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_and_cluster_status_describe_the_node() {
    let Some((_b, url)) = api(1) else { return };
    let text = ok(&url, &["status"]);
    assert!(text.starts_with("Status of node "), "{text}");
    for section in [
        "Runtime",
        "Alarms",
        "Totals",
        "Listeners",
        "Virtual host count: ",
    ] {
        assert!(text.contains(section), "status lacks {section}:\n{text}");
    }
    assert!(text.contains("protocol: amqp"), "{text}");
    let quiet = ok(&url, &["-q", "status"]);
    assert!(quiet.starts_with("Runtime"), "{quiet}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["status", "--formatter", "json"])).expect("JSON");
    assert!(
        json["totals"]["virtual_host_count"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{json}"
    );
    let node = json["node_name"].as_str().expect("node_name").to_string();

    let text = ok(&url, &["cluster_status"]);
    assert!(
        text.starts_with(&format!("Cluster status of node {node} ...\n")),
        "{text}"
    );
    for section in [
        "Disk Nodes",
        "Running Nodes",
        "Versions",
        "Network Partitions",
    ] {
        assert!(
            text.contains(section),
            "cluster_status lacks {section}:\n{text}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&url, &["cluster_status", "--formatter", "json"])).expect("JSON");
    assert_eq!(json["running_nodes"], serde_json::json!([node]), "{json}");
}

#[test]
fn await_startup_returns_at_once_when_the_broker_is_up() {
    let Some((_b, url)) = api(1) else { return };
    let run = ctl(&url, &["await_startup", "--timeout", "5"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "");
    // A wrong password is not cured by waiting.
    let base = url.split('@').nth(1).expect("URL with credentials");
    let run = ctl(
        &format!("http://guest:wrong@{base}"),
        &["await_startup", "--timeout", "30"],
    );
    assert_eq!(run.code, 77, "{run:?}");
}

//! Virtual hosts, permissions, topic permissions, the `user_id` property
//! and vhost limits, through lapin, with users and vhosts given by a
//! definitions file at start (`tests/data/access-control-definitions.json`).
//!
//! Against RabbitMQ (`WARREN_TEST_AMQP_URL`), import the same file first and
//! set the limit its import does not carry:
//!
//! ```text
//! rabbitmqctl import_definitions tests/data/access-control-definitions.json
//! rabbitmqctl set_vhost_limits -p limited '{"max-queues": 1}'
//! rabbitmqctl set_vhost_limits -p one-conn '{"max-connections": 1}'
//! rabbitmqctl set_user_limits lim '{"max-connections": 1, "max-channels": 2}'
//! ```
//!
//! Every reply text is compared with RabbitMQ 3.10's.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

/// `name_shards_1` and `name_shards_2`, running `body(shards)`.
macro_rules! with_shards {
    ($name:ident, $body:ident) => {
        paste::paste! {
            #[test]
            fn [<$name _shards_1>]() {
                $body(1);
            }

            #[test]
            fn [<$name _shards_2>]() {
                $body(2);
            }
        }
    };
}

const DEFINITIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/access-control-definitions.json"
);

fn start(shards: usize) -> Broker {
    Broker::start_with(shards, &["--definitions", DEFINITIONS])
}

/// The broker's URL for `user` in `vhost` (escaped as a URL path).
fn url(b: &Broker, user: &str, pass: &str, vhost: &str) -> String {
    let vhost = vhost.replace('%', "%25").replace('/', "%2f");
    format!("amqp://{user}:{pass}@{}/{vhost}", b.addr())
}

async fn refused_open(url: &str) -> String {
    let r = step(
        "connection.open",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await;
    expect_code(r.map(|_| ()), 530)
}

/// A publish on a fresh confirm channel, refused with 403 or 406: the text.
async fn refused_publish(
    conn: &Connection,
    exchange: &str,
    key: &str,
    props: BasicProperties,
    code: u16,
) -> String {
    let ch = channel(conn).await;
    step(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let watch = ErrorWatch::channel(&ch);
    let _ = publish_confirmed(
        &ch,
        exchange,
        key,
        BasicPublishOptions::default(),
        b"x",
        props,
    )
    .await;
    watch.expect_code(code).await
}

fn vhosts_are_isolated(shards: usize) {
    let b = start(shards);
    run(async {
        let admin_a = connect(&url(&b, "admin", "admin", "team-a")).await;
        let admin_root = connect(&url(&b, "admin", "admin", "/")).await;
        // Each vhost has its own queues: the definitions put alice.q in
        // team-a only.
        assert!(queue_exists(&admin_a, "alice.q").await);
        assert!(!queue_exists(&admin_root, "alice.q").await);
        // The same name in two vhosts is two queues.
        let name = unique("same");
        let ch_a = channel(&admin_a).await;
        ch_a.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let ch_root = channel(&admin_root).await;
        declare_queue(&ch_a, &name).await;
        declare_queue(&ch_root, &name).await;
        fill_queue(&ch_a, &name, &[b"a1", b"a2"]).await;
        assert_eq!(message_count(&admin_a, &name).await, 2);
        assert_eq!(message_count(&admin_root, &name).await, 0);
        // Each vhost has the amq.* exchanges, with bindings of its own.
        for x in [
            "amq.direct",
            "amq.fanout",
            "amq.topic",
            "amq.headers",
            "amq.match",
            "amq.rabbitmq.trace",
        ] {
            assert!(exchange_exists(&admin_a, x).await, "{x}");
        }
        bind(&ch_a, &name, "amq.fanout", "").await;
        let ch = channel(&admin_root).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish(&ch, "amq.fanout", "", b"root").await;
        assert_eq!(message_count(&admin_a, &name).await, 2);
        // A message published to the team-a binding from definitions.
        let ch = channel(&admin_a).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish(&ch, "alice.x", "k", b"to alice").await;
        let got = get_within(&ch, "alice.q", STEP_DEADLINE).await;
        assert_eq!(got.delivery.data, b"to alice");
        for ch in [&ch_a, &ch_root] {
            ch.queue_delete(&name, QueueDeleteOptions::default())
                .await
                .unwrap();
        }
    });
}

with_shards!(vhosts_are_isolated, vhosts_are_isolated);

fn opening_a_missing_or_forbidden_vhost_is_refused_with_530(shards: usize) {
    let b = start(shards);
    run(async {
        assert_eq!(
            refused_open(&url(&b, "admin", "admin", "nosuch")).await,
            "NOT_ALLOWED - vhost nosuch not found"
        );
        assert_eq!(
            refused_open(&url(&b, "ro", "ro-pw", "team-a")).await,
            "NOT_ALLOWED - access to vhost 'team-a' refused for user 'ro'"
        );
        assert_eq!(
            refused_open(&url(&b, "nobody", "nobody-pw", "/")).await,
            "NOT_ALLOWED - access to vhost '/' refused for user 'nobody'"
        );
    });
}

with_shards!(
    opening_a_missing_or_forbidden_vhost_is_refused_with_530,
    opening_a_missing_or_forbidden_vhost_is_refused_with_530
);

fn configure_write_and_read_patterns_are_enforced(shards: usize) {
    let b = start(shards);
    let alice_url = url(&b, "alice", "alice-pw", "team-a");
    let refused = |kind: &str, name: &str| {
        format!(
            "ACCESS_REFUSED - access to {kind} '{name}' in vhost 'team-a' refused for user 'alice'"
        )
    };
    run(async {
        let conn = connect(&alice_url).await;
        // configure: queue.declare, exchange.declare, queue.delete.
        let ch = channel(&conn).await;
        let r = ch
            .queue_declare(
                "bob.q",
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(expect_code(r, 403), refused("queue", "bob.q"));
        let ch = channel(&conn).await;
        let r = ch
            .exchange_declare(
                "bob.x",
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(expect_code(r, 403), refused("exchange", "bob.x"));
        let ch = channel(&conn).await;
        let r = ch
            .queue_delete("other.q", QueueDeleteOptions::default())
            .await;
        assert_eq!(expect_code(r, 403), refused("queue", "other.q"));
        // A passive declare needs no permission.
        let ch = channel(&conn).await;
        assert!(passive_declare_queue(&ch, "other.q").await.is_ok());
        // Server-named queues are checked by the name they would get.
        let r = ch
            .queue_declare("", QueueDeclareOptions::default(), FieldTable::default())
            .await;
        let text = expect_code(r, 403);
        assert!(
            text.starts_with("ACCESS_REFUSED - access to queue 'amq.gen-")
                && text.ends_with("' in vhost 'team-a' refused for user 'alice'"),
            "{text}"
        );
        // What alice may configure, she declares.
        let ch = channel(&conn).await;
        let mine = unique("alice.mine");
        declare_queue(&ch, &mine).await;
        // queue.bind: write on the queue, read on the exchange.
        let r = ch
            .queue_bind(
                &mine,
                "amq.direct",
                "k",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(expect_code(r, 403), refused("exchange", "amq.direct"));
        let ch = channel(&conn).await;
        let r = ch
            .queue_bind(
                "other.q",
                "alice.x",
                "k",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(expect_code(r, 403), refused("queue", "other.q"));
        let ch = channel(&conn).await;
        bind(&ch, &mine, "alice.x", "mine").await;
        // basic.publish: write on the exchange; the default exchange is
        // amq.default.
        let text = refused_publish(&conn, "amq.direct", "k", BasicProperties::default(), 403).await;
        assert_eq!(text, refused("exchange", "amq.direct"));
        let ch = channel(&conn).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish(&ch, "", &mine, b"via default").await;
        publish(&ch, "alice.x", "mine", b"via alice.x").await;
        // basic.get, basic.consume, queue.purge: read on the queue.
        assert_eq!(message_count(&conn, &mine).await, 2);
        let r = ch
            .basic_get("other.q", BasicGetOptions::default())
            .await
            .map(|m| m.is_some());
        assert_eq!(expect_code(r, 403), refused("queue", "other.q"));
        let ch = channel(&conn).await;
        let r = ch
            .basic_consume(
                "other.q",
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map(|_| ());
        assert_eq!(expect_code(r, 403), refused("queue", "other.q"));
        let ch = channel(&conn).await;
        let r = ch
            .queue_purge("other.q", QueuePurgeOptions::default())
            .await;
        assert_eq!(expect_code(r, 403), refused("queue", "other.q"));
        let ch = channel(&conn).await;
        let got = get_within(&ch, &mine, STEP_DEADLINE).await;
        assert_eq!(got.delivery.data, b"via default");
        ch.queue_delete(&mine, QueueDeleteOptions::default())
            .await
            .unwrap();
        // A user whose patterns are "^$" can neither declare nor publish,
        // but may read where its read pattern says.
        let ro = connect(&url(&b, "ro", "ro-pw", "/")).await;
        let ch = channel(&ro).await;
        let r = ch
            .queue_declare(
                "ro.new",
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(
            expect_code(r, 403),
            "ACCESS_REFUSED - access to queue 'ro.new' in vhost '/' refused for user 'ro'"
        );
        let text = refused_publish(&ro, "", "ro.q", BasicProperties::default(), 403).await;
        assert_eq!(
            text,
            "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'ro'"
        );
        let ch = channel(&ro).await;
        assert!(ch
            .basic_get("ro.q", BasicGetOptions::default())
            .await
            .unwrap()
            .is_none());
    });
}

with_shards!(
    configure_write_and_read_patterns_are_enforced,
    configure_write_and_read_patterns_are_enforced
);

fn topic_permissions_expand_username_and_vhost(shards: usize) {
    let b = start(shards);
    run(async {
        let conn = connect(&url(&b, "tp", "tp-pw", "team-a")).await;
        let ch = channel(&conn).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish(&ch, "amq.topic", "tp.events", b"mine").await;
        // Other exchanges have no topic permission: anything goes.
        publish(&ch, "amq.direct", "anything", b"x").await;
        let text = refused_publish(
            &conn,
            "amq.topic",
            "bob.events",
            BasicProperties::default(),
            403,
        )
        .await;
        assert_eq!(
            text,
            "ACCESS_REFUSED - access to topic 'bob.events' in exchange 'amq.topic' in vhost \
             'team-a' refused for user 'tp'"
        );
        // Binding from a topic exchange needs read on the binding key.
        let ch = channel(&conn).await;
        let q = declare_server_named(&ch).await;
        bind(&ch, &q, "amq.topic", "tp.#").await;
        bind(&ch, &q, "amq.topic", "team-a").await;
        let r = ch
            .queue_bind(
                &q,
                "amq.topic",
                "bob.#",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(
            expect_code(r, 403),
            "ACCESS_REFUSED - access to topic 'bob.#' in exchange 'amq.topic' in vhost \
             'team-a' refused for user 'tp'"
        );
    });
}

with_shards!(
    topic_permissions_expand_username_and_vhost,
    topic_permissions_expand_username_and_vhost
);

fn user_id_must_be_the_connections_user(shards: usize) {
    let b = start(shards);
    run(async {
        let conn = connect(&url(&b, "admin", "admin", "/")).await;
        let props = BasicProperties::default().with_user_id("mallory".into());
        let text = refused_publish(&conn, "amq.direct", "k", props, 406).await;
        assert_eq!(
            text,
            "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user \
             was 'admin'"
        );
        let ch = channel(&conn).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let own = BasicProperties::default().with_user_id("admin".into());
        publish_props(&ch, "amq.direct", "k", b"x", own).await;
        // An impersonator may set any user_id.
        let imp = connect(&url(&b, "imp", "imp-pw", "/")).await;
        let ch = channel(&imp).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let other = BasicProperties::default().with_user_id("mallory".into());
        publish_props(&ch, "amq.direct", "k", b"x", other).await;
    });
}

with_shards!(
    user_id_must_be_the_connections_user,
    user_id_must_be_the_connections_user
);

fn a_vhost_queue_limit_refuses_the_next_queue(shards: usize) {
    let b = start(shards);
    run(async {
        let conn = connect(&url(&b, "admin", "admin", "limited")).await;
        let ch = channel(&conn).await;
        let first = unique("first");
        declare_queue(&ch, &first).await;
        let second = unique("second");
        let r = ch
            .queue_declare(
                &second,
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(
            expect_code(r, 406),
            format!(
                "PRECONDITION_FAILED - cannot declare queue '{second}': queue limit in vhost \
                 'limited' (1) is reached"
            )
        );
        let ch = channel(&conn).await;
        ch.queue_delete(&first, QueueDeleteOptions::default())
            .await
            .unwrap();
    });
}

with_shards!(
    a_vhost_queue_limit_refuses_the_next_queue,
    a_vhost_queue_limit_refuses_the_next_queue
);

fn connection_and_channel_limits_refuse_with_530(shards: usize) {
    let b = start(shards);
    run(async {
        // A vhost's max-connections.
        let first = connect(&url(&b, "admin", "admin", "one-conn")).await;
        assert_eq!(
            refused_open(&url(&b, "admin", "admin", "one-conn")).await,
            "NOT_ALLOWED - access to vhost 'one-conn' refused for user 'admin': connection \
             limit (1) is reached"
        );
        first.close(200, "bye").await.unwrap();
        // Closed connections no longer count (the count is node-wide, so
        // the next one may land on any shard).
        let again = within(STEP_DEADLINE, async {
            loop {
                let r = Connection::connect(
                    &url(&b, "admin", "admin", "one-conn"),
                    ConnectionProperties::default(),
                )
                .await;
                if let Ok(conn) = r {
                    return conn;
                }
                sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the vhost takes a connection again");
        again.close(200, "bye").await.unwrap();
        // A user's max-connections and max-channels.
        let lim = connect(&url(&b, "lim", "lim-pw", "/")).await;
        let text = refused_open(&url(&b, "lim", "lim-pw", "/")).await;
        assert_eq!(
            text,
            "NOT_ALLOWED - connection refused for user 'lim': user connection limit (1) is reached"
        );
        let _one = channel(&lim).await;
        let _two = channel(&lim).await;
        let watch = ErrorWatch::connection(&lim);
        let _ = lim.create_channel().await;
        assert_eq!(
            watch.expect_code(530).await,
            "NOT_ALLOWED - number of channels opened for user 'lim' has reached the maximum \
             allowed user limit of (2)"
        );
    });
}

with_shards!(
    connection_and_channel_limits_refuse_with_530,
    connection_and_channel_limits_refuse_with_530
);

fn a_vhosts_durable_queues_and_messages_survive_a_restart(shards: usize) {
    if std::env::var(EXTERNAL_URL_VAR).is_ok_and(|u| !u.trim().is_empty()) {
        return;
    }
    let mut b = start(shards);
    let name = unique("kept");
    let persistent = BasicProperties::default().with_delivery_mode(2);
    run(async {
        // The same name in two vhosts, declared while the broker runs:
        // team-a's is written with the whole definitions file, "/"'s to
        // the definitions log.
        for (vhost, count) in [("team-a", 2), ("/", 1)] {
            let conn = connect(&url(&b, "admin", "admin", vhost)).await;
            let ch = channel(&conn).await;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            ch.queue_declare(
                &name,
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
            for _ in 0..count {
                publish_props(&ch, "", &name, b"kept", persistent.clone()).await;
            }
            conn.close(200, "bye").await.unwrap();
        }
    });
    b.restart();
    run(async {
        let in_a = connect(&url(&b, "admin", "admin", "team-a")).await;
        let in_root = connect(&url(&b, "admin", "admin", "/")).await;
        assert_eq!(message_count(&in_a, &name).await, 2);
        assert_eq!(message_count(&in_root, &name).await, 1);
    });
}

with_shards!(
    a_vhosts_durable_queues_and_messages_survive_a_restart,
    a_vhosts_durable_queues_and_messages_survive_a_restart
);

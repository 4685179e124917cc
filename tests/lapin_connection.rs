//! Connection-level behaviour through lapin (and raw frames where lapin hides
//! the server's side of the handshake): authentication, server properties,
//! tuning, clean close, many channels.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::raw::RawConn;
use lapin_support::*;

broker_test!(guest_can_log_in_with_plain_from_loopback, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        assert!(conn.status().connected());
        assert_eq!(conn.status().username(), "guest");
        assert_connection_usable(&conn).await;
        conn.close(200, "bye").await.unwrap();
    })
});

broker_test!(default_admin_user_can_log_in, |b| {
    run(async {
        let conn = connect(&b.url_as("admin", "admin")).await;
        assert!(conn.status().connected());
        assert_connection_usable(&conn).await;
        conn.close(200, "bye").await.unwrap();
    })
});

broker_test!(wrong_password_is_refused_with_403_access_refused, |b| {
    run(async {
        let r = step(
            "refused connection",
            Connection::connect(
                &b.url_as("guest", "not-the-password"),
                ConnectionProperties::default(),
            ),
        )
        .await;
        let text = expect_code(r.map(|_| ()), 403);
        // RabbitMQ 3.10: "ACCESS_REFUSED - Login was refused using authentication
        // mechanism PLAIN. For details see the broker logfile."
        assert!(text.starts_with("ACCESS_REFUSED"), "reply text {:?}", text);
        // The broker keeps serving others.
        let conn = connect(&b.url()).await;
        assert_connection_usable(&conn).await;
    })
});

broker_test!(unknown_user_is_refused_with_403_access_refused, |b| {
    run(async {
        let user = unique("nobody");
        let r = step(
            "refused connection",
            Connection::connect(&b.url_as(&user, "x"), ConnectionProperties::default()),
        )
        .await;
        let text = expect_code(r.map(|_| ()), 403);
        assert!(text.starts_with("ACCESS_REFUSED"), "reply text {:?}", text);
    })
});

broker_test!(
    server_properties_announce_product_version_platform_and_capabilities,
    |b| {
        let mut raw = RawConn::open(b.addr());
        let start = raw.read_start();
        assert_eq!((start.version_major, start.version_minor), (0, 9));
        let props = start.server_properties.inner();
        for key in ["product", "version", "platform"] {
            match props.get(key) {
                Some(AMQPValue::LongString(s)) => {
                    assert!(!s.as_bytes().is_empty(), "{} is empty", key)
                }
                other => panic!(
                    "server property {} should be a long string, got {:?}",
                    key, other
                ),
            }
        }
        let caps = match props.get("capabilities") {
            Some(AMQPValue::FieldTable(t)) => t.inner().clone(),
            other => panic!("capabilities should be a table, got {:?}", other),
        };
        for cap in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
            "per_consumer_qos",
        ] {
            assert_eq!(
                caps.get(cap),
                Some(&AMQPValue::Boolean(true)),
                "capability {} should be the boolean true",
                cap
            );
        }
    }
);

broker_test!(connection_start_offers_plain_and_en_us, |b| {
    let mut raw = RawConn::open(b.addr());
    let start = raw.read_start();
    let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
    assert!(
        mechanisms.split(' ').any(|m| m == "PLAIN"),
        "mechanisms {:?}",
        mechanisms
    );
    let locales = String::from_utf8_lossy(start.locales.as_bytes()).into_owned();
    assert!(
        locales.split(' ').any(|l| l == "en_US"),
        "locales {:?}",
        locales
    );
});

broker_test!(
    tune_proposes_frame_max_131072_channel_max_2047_heartbeat_60,
    |b| {
        let mut raw = RawConn::open(b.addr());
        raw.read_start();
        let tune = raw.start_ok_plain("guest", "guest");
        assert_eq!(tune.frame_max, 131072);
        assert_eq!(tune.channel_max, 2047);
        assert_eq!(tune.heartbeat, 60);
    }
);

broker_test!(lapin_negotiates_the_servers_defaults, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        let cfg = conn.configuration();
        assert_eq!(cfg.frame_max(), 131072);
        assert_eq!(cfg.channel_max(), 2047);
        assert_eq!(cfg.heartbeat(), 60);
    })
});

broker_test!(
    client_may_tune_lower_frame_max_channel_max_and_heartbeat,
    |b| {
        run(async {
            let url = format!("{}?frame_max=8192&channel_max=16&heartbeat=10", b.url());
            let conn = connect(&url).await;
            let cfg = conn.configuration();
            assert_eq!(
                (cfg.frame_max(), cfg.channel_max(), cfg.heartbeat()),
                (8192, 16, 10)
            );
            // A body far larger than the negotiated frame size travels in many frames,
            // both ways.
            let ch = channel(&conn).await;
            let q = declare_server_named(&ch).await;
            let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            publish(&ch, "", &q, &body).await;
            let got = get_within(&ch, &q, STEP_DEADLINE).await;
            assert_eq!(got.delivery.data, body);
        })
    }
);

broker_test!(client_close_is_answered_with_close_ok, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        let _ch = channel(&conn).await;
        step("connection.close", conn.close(200, "done"))
            .await
            .expect("close-ok");
        assert!(
            eventually(STEP_DEADLINE, || conn.status().closed()).await,
            "state {:?}",
            conn.status().state()
        );
        assert!(conn.create_channel().await.is_err());
    })
});

broker_test!(many_channels_on_one_connection_work_independently, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        let mut channels = Vec::new();
        for _ in 0..64 {
            channels.push(channel(&conn).await);
        }
        let ids: std::collections::HashSet<u16> = channels.iter().map(|c| c.id()).collect();
        assert_eq!(ids.len(), 64);
        // Each channel gets its own queue and sees only its own message.
        let mut queues = Vec::new();
        for (i, ch) in channels.iter().enumerate() {
            let q = declare_server_named(ch).await;
            publish(ch, "", &q, format!("m{}", i).as_bytes()).await;
            queues.push(q);
        }
        for (i, ch) in channels.iter().enumerate() {
            let got = get_within(ch, &queues[i], STEP_DEADLINE).await;
            assert_eq!(got.delivery.data, format!("m{}", i).as_bytes());
        }
        // Closing half of them leaves the rest working.
        for ch in channels.iter().step_by(2) {
            step("channel.close", ch.close(200, "bye")).await.unwrap();
        }
        for ch in channels.iter().skip(1).step_by(2) {
            assert!(ch.status().connected());
        }
        assert_channel_usable(&channels[1]).await;
        assert_channel_usable(&channels[63]).await;
    })
});

broker_test!(closing_a_channel_leaves_the_connection_open, |b| {
    run(async {
        let conn = connect(&b.url()).await;
        let ch = channel(&conn).await;
        step("channel.close", ch.close(200, "bye")).await.unwrap();
        assert!(!ch.status().connected());
        assert!(conn.status().connected());
        assert_connection_usable(&conn).await;
    })
});

broker_test!(channel_error_does_not_disturb_other_connections, |b| {
    run(async {
        let (c1, ch1) = open(&b.url()).await;
        let (_c2, ch2) = open(&b.url()).await;
        let missing = unique("missing");
        expect_code(passive_declare_queue(&ch1, &missing).await, 404);
        wait_channel_closed(&ch1).await;
        assert!(c1.status().connected());
        assert_channel_usable(&ch2).await;
        assert_connection_usable(&c1).await;
    })
});

//! The firehose tracer through lapin: a queue bound to `amq.rabbitmq.trace`
//! with `#` sees a copy of every publish (`publish.<exchange>`) and every
//! delivery (`deliver.<queue>`) with RabbitMQ's trace headers, while
//! tracing is on (PUT /api/vhosts/%2F {"tracing": true}, as `warrenctl
//! trace_on` sends), and nothing while it is off. Each runs at 1 and 2
//! shards.

mod common;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::time::Duration;

/// `guest:guest`, the API's credentials from loopback.
const GUEST_BASIC: &str = "Basic Z3Vlc3Q6Z3Vlc3Q=";

fn set_tracing(b: &common::Broker, on: bool) {
    let base = b.management_url().expect("the management API's address");
    let response = ureq::put(&format!("{base}/api/vhosts/%2F"))
        .set("Authorization", GUEST_BASIC)
        .set("Content-Type", "application/json")
        .timeout(Duration::from_secs(30))
        .send_string(&format!("{{\"tracing\": {on}}}"));
    match response {
        Ok(r) => assert!(matches!(r.status(), 201 | 204), "status {}", r.status()),
        Err(e) => panic!("PUT /api/vhosts/%2F: {e}"),
    }
    let text = ureq::get(&format!("{base}/api/vhosts/%2F"))
        .set("Authorization", GUEST_BASIC)
        .call()
        .expect("GET /api/vhosts/%2F")
        .into_string()
        .expect("body");
    let vhost: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(vhost["tracing"], serde_json::json!(on));
}

fn header<'a>(delivery: &'a Delivery, name: &str) -> &'a AMQPValue {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
        .unwrap_or_else(|| panic!("trace header {name} missing"))
}

fn long_str(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => s.to_string(),
        other => panic!("not a long string: {other:?}"),
    }
}

fn strings(value: &AMQPValue) -> Vec<String> {
    match value {
        AMQPValue::FieldArray(a) => a.as_slice().iter().map(long_str).collect(),
        other => panic!("not an array: {other:?}"),
    }
}

fn int(value: &AMQPValue) -> i64 {
    match value {
        AMQPValue::LongInt(i) => i64::from(*i),
        AMQPValue::ShortInt(i) => i64::from(*i),
        AMQPValue::LongLongInt(i) => *i,
        other => panic!("not an integer: {other:?}"),
    }
}

/// The headers both kinds of trace message carry.
fn check_common(trace: &Delivery, body: &[u8]) {
    assert_eq!(trace.exchange.as_str(), "amq.rabbitmq.trace");
    assert_eq!(trace.data, body);
    assert_eq!(long_str(header(trace, "exchange_name")), "");
    assert_eq!(strings(header(trace, "routing_keys")), vec!["fh-work"]);
    assert_eq!(long_str(header(trace, "vhost")), "/");
    assert_eq!(long_str(header(trace, "user")), "guest");
    assert!(long_str(header(trace, "node")).starts_with("warren@"));
    assert!(long_str(header(trace, "connection")).contains("->"));
    assert!(int(header(trace, "channel")) >= 1);
    let AMQPValue::FieldTable(properties) = header(trace, "properties") else {
        panic!("properties is not a table");
    };
    assert_eq!(
        properties.inner().get("content_type"),
        Some(&AMQPValue::LongString("text/plain".into()))
    );
    let Some(AMQPValue::FieldTable(headers)) = properties.inner().get("headers") else {
        panic!("the message's own headers are in properties");
    };
    assert_eq!(
        headers.inner().get("app-header"),
        Some(&AMQPValue::LongString("v".into()))
    );
}

broker_test!(
    firehose_copies_publishes_and_deliveries_with_rabbitmqs_headers,
    |b| {
        set_tracing(b, true);
        run_for(Duration::from_secs(30), async {
            let (_tc, tch) = open(&b.url()).await;
            declare_queue(&tch, "fh-trace").await;
            bind(&tch, "fh-trace", "amq.rabbitmq.trace", "#").await;
            let mut traces = consume(
                &tch,
                "fh-trace",
                "fh-tracer",
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
            )
            .await;

            let (_c, ch) = open_confirming(&b.url()).await;
            declare_queue(&ch, "fh-work").await;
            let mut app_headers = FieldTable::default();
            app_headers.insert("app-header".into(), AMQPValue::LongString("v".into()));
            let props = BasicProperties::default()
                .with_content_type("text/plain".into())
                .with_headers(app_headers);
            publish_props(&ch, "", "fh-work", b"traced body", props).await;

            let published = next_delivery(&mut traces).await;
            assert_eq!(published.routing_key.as_str(), "publish.");
            check_common(&published, b"traced body");
            assert_eq!(
                strings(header(&published, "routed_queues")),
                vec!["fh-work"]
            );

            let mut work =
                consume(&ch, "fh-work", "fh-worker", BasicConsumeOptions::default()).await;
            let delivery = next_delivery(&mut work).await;
            step("basic.ack", delivery.ack(BasicAckOptions::default()))
                .await
                .expect("basic.ack");
            let delivered = next_delivery(&mut traces).await;
            assert_eq!(delivered.routing_key.as_str(), "deliver.fh-work");
            check_common(&delivered, b"traced body");
            assert_eq!(int(header(&delivered, "redelivered")), 0);

            // The trace exchange is internal: clients cannot publish to it.
            let (_pc, pch) = open(&b.url()).await;
            let refused = pch
                .basic_publish(
                    "amq.rabbitmq.trace",
                    "publish.x",
                    BasicPublishOptions::default(),
                    b"forged",
                    BasicProperties::default(),
                )
                .await;
            if refused.is_ok() {
                wait_channel_closed(&pch).await;
            }

            // Off: nothing is traced. On again: the next trace is the next
            // publish, so the publish and delivery made while off left none.
            set_tracing(b, false);
            publish(&ch, "", "fh-work", b"untraced").await;
            let untraced = next_delivery(&mut work).await;
            assert_eq!(untraced.data, b"untraced");
            step("basic.ack", untraced.ack(BasicAckOptions::default()))
                .await
                .expect("basic.ack");
            set_tracing(b, true);
            publish(&ch, "amq.direct", "fh-nobody", b"marker").await;
            let marker = next_delivery(&mut traces).await;
            assert_eq!(marker.routing_key.as_str(), "publish.amq.direct");
            assert_eq!(marker.data, b"marker");
            assert_eq!(
                strings(header(&marker, "routed_queues")),
                Vec::<String>::new()
            );
            set_tracing(b, false);
        });
    }
);

broker_test!(basic_get_is_traced_as_a_delivery, |b| {
    set_tracing(b, true);
    run_for(Duration::from_secs(30), async {
        let (_tc, tch) = open(&b.url()).await;
        declare_queue(&tch, "fh-get-trace").await;
        bind(&tch, "fh-get-trace", "amq.rabbitmq.trace", "deliver.#").await;
        let (_c, ch) = open(&b.url()).await;
        declare_queue(&ch, "fh-get").await;
        publish(&ch, "", "fh-get", b"got").await;
        let got = step(
            "basic.get",
            ch.basic_get("fh-get", BasicGetOptions::default()),
        )
        .await
        .expect("basic.get")
        .expect("a message");
        step("basic.ack", got.delivery.ack(BasicAckOptions::default()))
            .await
            .expect("basic.ack");
        let mut traces = consume(
            &tch,
            "fh-get-trace",
            "fh-get-tracer",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .await;
        let trace = next_delivery(&mut traces).await;
        assert_eq!(trace.routing_key.as_str(), "deliver.fh-get");
        assert_eq!(trace.data, b"got");
    });
});

broker_test!(warrenctl_trace_on_and_trace_off_switch_the_firehose, |b| {
    let base = b.management_url().expect("the management API's address");
    let url = base.replacen("http://", "http://guest:guest@", 1);
    let tracing = || -> serde_json::Value {
        let text = ureq::get(&format!("{base}/api/vhosts/%2F"))
            .set("Authorization", GUEST_BASIC)
            .call()
            .expect("GET /api/vhosts/%2F")
            .into_string()
            .expect("body");
        serde_json::from_str::<serde_json::Value>(&text).expect("JSON")["tracing"].clone()
    };
    for (command, on) in [("trace_on", true), ("trace_off", false)] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_warrenctl"))
            .args(["--url", &url, command])
            .output()
            .expect("run warrenctl");
        assert!(
            output.status.success(),
            "warrenctl {command}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(tracing(), serde_json::json!(on), "after {command}");
    }
});

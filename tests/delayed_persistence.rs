//! Messages held by a durable x-delayed-message exchange survive a restart
//! and a kill -9 when they are persistent, as the delayed-message plugin
//! keeps them: each comes back on its schedule, one whose time passed while
//! the broker was down at start, and once routed it does not come back.
//!
//! Each test starts the real broker (1 and 2 shards) and drives it with
//! lapin.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(90);

/// `$name_shards_1` and `$name_shards_2` calling `$body(shards, kill)`.
macro_rules! with_shards {
    ($name:ident, $kill:expr) => {
        paste::paste! {
            #[test]
            fn [<$name _shards_1>]() {
                held_messages_come_back_on_schedule(1, $kill);
            }

            #[test]
            fn [<$name _shards_2>]() {
                held_messages_come_back_on_schedule(2, $kill);
            }
        }
    };
}

fn delayed(ms: i32, mode: u8) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(mode)
        .with_headers(table(&[("x-delay", AMQPValue::LongInt(ms))]))
}

/// Held messages: "soon" (its time passes while the broker is down) and
/// "later" (due after the start), persistent; confirmed, then the broker
/// is stopped (SIGTERM or SIGKILL). Both are routed after the start, in
/// their order, with `x-delay` turned negative; after another restart
/// neither is held again.
fn held_messages_come_back_on_schedule(shards: usize, kill: bool) {
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        eprintln!("skipped: restarting an external broker is not this test's business");
        return;
    }
    let url = broker.url();
    run_for(DEADLINE, async {
        let (_conn, ch) = open_confirming(&url).await;
        step(
            "exchange.declare",
            ch.exchange_declare(
                "dp.x",
                ExchangeKind::Custom("x-delayed-message".into()),
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                table(&[("x-delayed-type", ls("direct"))]),
            ),
        )
        .await
        .expect("exchange.declare");
        declare_queue_with(
            &ch,
            "dp.q",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
        bind(&ch, "dp.q", "dp.x", "k").await;
        for (body, props) in [
            (&b"soon"[..], delayed(200, 2)),
            (b"later", delayed(3000, 2)),
        ] {
            let confirm = ch
                .basic_publish("dp.x", "k", BasicPublishOptions::default(), body, props)
                .await
                .expect("basic.publish");
            assert!(step("confirm", confirm).await.expect("confirm").is_ack());
        }
    });
    if kill {
        broker.crash_and_restart();
    } else {
        broker.restart();
    }
    let url = broker.url();
    run_for(DEADLINE, async {
        let (conn, ch) = open(&url).await;
        let mut consumer = consume(&ch, "dp.q", "c", BasicConsumeOptions::default()).await;
        for (expected, delay) in [("soon", -200), ("later", -3000)] {
            let delivery = within(Duration::from_secs(30), next_delivery(&mut consumer))
                .await
                .unwrap_or_else(|| panic!("{expected} never came\n{}", broker.log()));
            assert_eq!(body_str(&delivery), expected);
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            assert_eq!(
                headers.inner().get("x-delay"),
                Some(&AMQPValue::LongInt(delay))
            );
            delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("basic.ack");
        }
        // basic.ack has no reply: only the close handshake, answered after
        // the acks before it, says they were taken before the restart.
        conn.close(200, "done").await.expect("connection.close");
    });
    broker.restart();
    let url = broker.url();
    run_for(DEADLINE, async {
        let (conn, _ch) = open(&url).await;
        // Nothing held any more: the queue stays empty.
        assert_eq!(message_count(&conn, "dp.q").await, 0);
    });
    let log = broker.log();
    assert!(!log.contains("ERROR"), "{log}");
}

with_shards!(held_messages_survive_a_restart, false);
with_shards!(held_messages_survive_kill_9, true);

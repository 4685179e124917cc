//! Transactions (tx.select / tx.commit / tx.rollback) through lapin, checked
//! against RabbitMQ's `rabbit_channel`: publishes, acks, nacks and rejects
//! in a transaction take effect at commit; a rollback discards the
//! publishes and puts the acknowledged deliveries back among the channel's
//! unacknowledged ones (they are not requeued); a mandatory publish no queue
//! takes is returned at commit. The tx/confirm mode conflicts are in
//! `lapin_confirms.rs`. Durability of transactions comes with the store.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::time::Duration;

/// A transactional channel on a connection of its own.
async fn open_tx(url: &str) -> (Connection, Channel) {
    let (conn, ch) = open(url).await;
    step("tx.select", ch.tx_select()).await.expect("tx.select");
    (conn, ch)
}

async fn commit(ch: &Channel) {
    step("tx.commit", ch.tx_commit()).await.expect("tx.commit");
}

async fn rollback(ch: &Channel) {
    step("tx.rollback", ch.tx_rollback())
        .await
        .expect("tx.rollback");
}

/// Publishes without waiting for anything but the frames (not a confirm channel).
async fn send(ch: &Channel, key: &str, body: &[u8]) {
    step(
        "basic.publish",
        ch.basic_publish(
            "",
            key,
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        ),
    )
    .await
    .expect("basic.publish");
}

/// basic.get with manual ack; panics if the queue is empty.
async fn get_unacked(ch: &Channel, q: &str) -> BasicGetMessage {
    get(ch, q, false)
        .await
        .unwrap_or_else(|| panic!("{} is empty", q))
}

/// A queue on an observer connection, filled with `bodies` (confirmed).
async fn queue_with(b: &Broker, bodies: &[&[u8]]) -> (Connection, Channel, String) {
    let (conn, ch) = open_confirming(&b.url()).await;
    let q = unique("tx-q");
    declare_queue(&ch, &q).await;
    fill_queue(&ch, &q, bodies).await;
    (conn, ch, q)
}

/// Returned messages lapin has collected on a (non-confirm) channel.
async fn returned(ch: &Channel) -> Vec<BasicReturnMessage> {
    step("returns", ch.wait_for_confirms()).await.unwrap()
}

broker_test!(publishes_in_a_transaction_are_invisible_until_commit, |b| {
    run(async {
        let (observer, och, q) = queue_with(b, &[]).await;
        let mut consumer = consume(&och, &q, "watch", BasicConsumeOptions::default()).await;
        let (_tc, tx) = open_tx(&b.url()).await;
        for body in [&b"one"[..], b"two", b"three"] {
            send(&tx, &q, body).await;
        }
        assert_no_delivery(&mut consumer).await;
        step(
            "basic.cancel",
            och.basic_cancel("watch", BasicCancelOptions::default()),
        )
        .await
        .unwrap();
        assert_eq!(message_count(&observer, &q).await, 0);
        commit(&tx).await;
        wait_message_count(&observer, &q, 3).await;
        for body in [&b"one"[..], b"two", b"three"] {
            assert_eq!(
                get_within(&och, &q, STEP_DEADLINE).await.delivery.data,
                body
            );
        }
    })
});

broker_test!(
    rollback_discards_the_publishes_and_the_channel_stays_transactional,
    |b| {
        run(async {
            let (observer, och, q) = queue_with(b, &[]).await;
            let (_tc, tx) = open_tx(&b.url()).await;
            send(&tx, &q, b"rolled back 1").await;
            send(&tx, &q, b"rolled back 2").await;
            rollback(&tx).await;
            assert_eq!(message_count(&observer, &q).await, 0);
            send(&tx, &q, b"committed").await;
            commit(&tx).await;
            wait_message_count(&observer, &q, 1).await;
            sleep(QUIET_PERIOD).await;
            assert_eq!(message_count(&observer, &q).await, 1);
            assert_eq!(
                get(&och, &q, true).await.unwrap().delivery.data,
                b"committed"
            );
        })
    }
);

broker_test!(
    several_commits_on_one_channel_each_take_their_own_work,
    |b| {
        run(async {
            let (observer, och, q) = queue_with(b, &[]).await;
            let (_tc, tx) = open_tx(&b.url()).await;
            for round in 1..=3u32 {
                for i in 0..round {
                    send(&tx, &q, format!("{}-{}", round, i).as_bytes()).await;
                }
                commit(&tx).await;
                // 1, then 1 + 2, then 1 + 2 + 3 messages.
                wait_message_count(&observer, &q, round * (round + 1) / 2).await;
            }
            // An empty commit is fine too.
            commit(&tx).await;
            let mut seen = Vec::new();
            while let Some(m) = get(&och, &q, true).await {
                seen.push(String::from_utf8(m.delivery.data).unwrap());
            }
            assert_eq!(seen, ["1-0", "2-0", "2-1", "3-0", "3-1", "3-2"]);
        })
    }
);

broker_test!(acks_in_a_transaction_take_effect_at_commit, |b| {
    run(async {
        let (observer, _och, q) = queue_with(b, &[b"a", b"b", b"c"]).await;
        let (tconn, tx) = open_tx(&b.url()).await;
        let mut tags = Vec::new();
        for _ in 0..3 {
            tags.push(get_unacked(&tx, &q).await.delivery.delivery_tag);
        }
        tx.basic_ack(tags[0], BasicAckOptions::default())
            .await
            .unwrap();
        tx.basic_ack(tags[2], BasicAckOptions { multiple: true })
            .await
            .unwrap();
        commit(&tx).await;
        // Everything was acked: closing the channel returns nothing.
        step("channel.close", tx.close(200, "bye")).await.unwrap();
        sleep(QUIET_PERIOD).await;
        assert_eq!(message_count(&observer, &q).await, 0);
        drop(tconn);
    })
});

broker_test!(uncommitted_acks_are_undone_when_the_channel_closes, |b| {
    run(async {
        let (observer, och, q) = queue_with(b, &[b"a", b"b"]).await;
        let (_tconn, tx) = open_tx(&b.url()).await;
        let first = get_unacked(&tx, &q).await.delivery.delivery_tag;
        let second = get_unacked(&tx, &q).await.delivery.delivery_tag;
        tx.basic_ack(first, BasicAckOptions::default())
            .await
            .unwrap();
        tx.basic_ack(second, BasicAckOptions::default())
            .await
            .unwrap();
        // Not committed: both come back, in order, marked redelivered.
        step("channel.close", tx.close(200, "bye")).await.unwrap();
        wait_message_count(&observer, &q, 2).await;
        for body in [&b"a"[..], b"b"] {
            let m = get(&och, &q, true).await.unwrap();
            assert_eq!(m.delivery.data, body);
            assert!(m.delivery.redelivered);
        }
    })
});

broker_test!(rollback_leaves_acked_messages_unacked_not_requeued, |b| {
    run(async {
        let (observer, och, q) = queue_with(b, &[b"a", b"b"]).await;
        let (_tconn, tx) = open_tx(&b.url()).await;
        let first = get_unacked(&tx, &q).await.delivery.delivery_tag;
        let _second = get_unacked(&tx, &q).await.delivery.delivery_tag;
        tx.basic_ack(first, BasicAckOptions::default())
            .await
            .unwrap();
        rollback(&tx).await;
        // As RabbitMQ: the rolled-back ack puts the delivery back among the
        // channel's unacked ones; nothing returns to the queue.
        sleep(QUIET_PERIOD).await;
        assert_eq!(message_count(&observer, &q).await, 0);
        // So the same tag can be acked again, and this time committed.
        tx.basic_ack(first, BasicAckOptions::default())
            .await
            .unwrap();
        commit(&tx).await;
        step("channel.close", tx.close(200, "bye")).await.unwrap();
        // Only the second message, never acked, comes back.
        wait_message_count(&observer, &q, 1).await;
        let m = get(&och, &q, true).await.unwrap();
        assert_eq!(m.delivery.data, b"b");
        assert!(m.delivery.redelivered);
    })
});

broker_test!(
    reject_and_nack_in_a_transaction_take_effect_at_commit,
    |b| {
        run(async {
            let (observer, och, q) = queue_with(b, &[b"requeued", b"dropped", b"nacked"]).await;
            let (_tconn, tx) = open_tx(&b.url()).await;
            let requeued = get_unacked(&tx, &q).await.delivery.delivery_tag;
            let dropped = get_unacked(&tx, &q).await.delivery.delivery_tag;
            let nacked = get_unacked(&tx, &q).await.delivery.delivery_tag;
            tx.basic_reject(requeued, BasicRejectOptions { requeue: true })
                .await
                .unwrap();
            tx.basic_reject(dropped, BasicRejectOptions { requeue: false })
                .await
                .unwrap();
            tx.basic_nack(
                nacked,
                BasicNackOptions {
                    multiple: false,
                    requeue: true,
                },
            )
            .await
            .unwrap();
            sleep(QUIET_PERIOD).await;
            assert_eq!(
                message_count(&observer, &q).await,
                0,
                "a reject or nack took effect before commit"
            );
            commit(&tx).await;
            wait_message_count(&observer, &q, 2).await;
            let mut bodies = Vec::new();
            while let Some(m) = get(&och, &q, true).await {
                assert!(m.delivery.redelivered);
                bodies.push(m.delivery.data);
            }
            assert_eq!(bodies, [b"requeued".to_vec(), b"nacked".to_vec()]);
        })
    }
);

broker_test!(
    ack_of_an_unknown_tag_in_a_transaction_closes_the_channel_at_once,
    |b| {
        run(async {
            let (_observer, _och, q) = queue_with(b, &[b"a"]).await;
            let (conn, tx) = open_tx(&b.url()).await;
            let tag = get_unacked(&tx, &q).await.delivery.delivery_tag;
            tx.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
            // Acking it twice in the same transaction is an unknown tag, as in
            // RabbitMQ, which takes acked tags out at once, not at commit.
            let watch = ErrorWatch::channel(&tx);
            tx.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
            let text = watch.expect_code(406).await;
            assert_eq!(
                text,
                format!("PRECONDITION_FAILED - unknown delivery tag {}", tag)
            );
            wait_channel_closed(&tx).await;
            assert_connection_usable(&conn).await;
        })
    }
);

broker_test!(commit_or_rollback_without_select_closes_channel_406, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let text = expect_code(step("tx.commit", ch.tx_commit()).await, 406);
        assert_eq!(text, "PRECONDITION_FAILED - channel is not transactional");
        wait_channel_closed(&ch).await;
        let ch = channel(&conn).await;
        let text = expect_code(step("tx.rollback", ch.tx_rollback()).await, 406);
        assert_eq!(text, "PRECONDITION_FAILED - channel is not transactional");
        wait_channel_closed(&ch).await;
        assert_connection_usable(&conn).await;
    })
});

broker_test!(
    mandatory_unroutable_publish_in_a_transaction_is_returned_at_commit,
    |b| {
        run(async {
            let (_tconn, tx) = open_tx(&b.url()).await;
            let key = unique("nobody-bound");
            let mandatory = BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            };
            step(
                "basic.publish",
                tx.basic_publish(
                    "amq.direct",
                    &key,
                    mandatory,
                    b"rolled back",
                    BasicProperties::default(),
                ),
            )
            .await
            .unwrap();
            sleep(QUIET_PERIOD).await;
            assert!(returned(&tx).await.is_empty(), "returned before commit");
            // A rollback discards the return with the publish.
            rollback(&tx).await;
            sleep(QUIET_PERIOD).await;
            assert!(returned(&tx).await.is_empty(), "returned after rollback");

            step(
                "basic.publish",
                tx.basic_publish(
                    "amq.direct",
                    &key,
                    mandatory,
                    b"committed",
                    BasicProperties::default(),
                ),
            )
            .await
            .unwrap();
            sleep(QUIET_PERIOD).await;
            assert!(returned(&tx).await.is_empty(), "returned before commit");
            commit(&tx).await;
            let mut got = Vec::new();
            let deadline = std::time::Instant::now() + STEP_DEADLINE;
            while got.is_empty() && std::time::Instant::now() < deadline {
                got.extend(returned(&tx).await);
                sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(got.len(), 1, "expected one basic.return at commit");
            assert_eq!(got[0].reply_code, 312);
            assert_eq!(got[0].reply_text.as_str(), "NO_ROUTE");
            assert_eq!(got[0].delivery.data, b"committed");
        })
    }
);

//! Direct reply-to through lapin: a channel consumes the pseudo-queue
//! `amq.rabbitmq.reply-to` in no-ack mode, publishes a request with
//! `reply_to` set to it, and the reply, published to the default exchange
//! with the rewritten `reply_to` as routing key, reaches that channel
//! without a queue, from another connection (at 2 shards, from one on the
//! other shard). Expected behaviour is RabbitMQ 3.10's, observed: run with
//! `WARREN_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f` to check it.
//!
//! RabbitMQ's answers, as these tests expect them:
//! - connection.start's capabilities include `direct_reply_to`;
//! - consuming with acks: 406 "reply consumer cannot acknowledge"; a second
//!   reply consumer on a channel: 406 "reply consumer already set";
//!   publishing with `reply_to` = `amq.rabbitmq.reply-to` without consuming
//!   it: 406 "fast reply consumer does not exist";
//! - a reply routes to no queue: published mandatory it comes back as
//!   basic.return 312 NO_ROUTE even when it was delivered; to a channel that
//!   is gone it is dropped (returned if mandatory); confirms are acks;
//! - the delivery of a reply carries the channel's next delivery tag
//!   without taking it;
//! - queue.declare of `amq.rabbitmq.reply-to` is declare-ok with one
//!   consumer; of a token, declare-ok while its channel consumes, 404 after.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::raw::RawConn;
use lapin_support::*;

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    }
}

fn reply_to() -> BasicProperties {
    BasicProperties::default().with_reply_to(REPLY_TO.into())
}

/// Consumes the reply pseudo-queue on `ch` under `tag`.
async fn consume_replies(ch: &Channel, tag: &str) -> Consumer {
    consume(ch, REPLY_TO, tag, no_ack()).await
}

/// The token `ch` (which consumes replies) publishes as its reply address:
/// a request through a fresh queue, read back with basic.get.
async fn token_of(ch: &Channel) -> String {
    let q = declare_server_named(ch).await;
    publish_props(ch, "", &q, b"who am i", reply_to()).await;
    let got = get_within(ch, &q, STEP_DEADLINE).await;
    let token = got
        .delivery
        .properties
        .reply_to()
        .clone()
        .expect("the request has a reply_to")
        .to_string();
    assert!(
        token.starts_with("amq.rabbitmq.reply-to.") && token.len() > REPLY_TO.len() + 1,
        "rewritten reply_to {token:?}"
    );
    token
}

/// warren's token names the shard of the channel's connection; None on an
/// external broker, whose tokens are opaque.
fn shard_of(b: &Broker, token: &str) -> Option<String> {
    if b.is_external() {
        return None;
    }
    token
        .strip_prefix("amq.rabbitmq.reply-to.")
        .and_then(|t| t.split('.').next())
        .map(str::to_string)
}

/// A connection whose channel consumes replies, on another shard than
/// `other` where the broker is warren with 2 shards (connections land on
/// shards as the kernel spreads them: a bounded number of tries).
async fn connection_apart_from(b: &Broker, other: &str) -> (Connection, Channel, String) {
    for _ in 0..64 {
        let (conn, ch) = open(&b.url()).await;
        let _replies = consume_replies(&ch, "probe").await;
        let token = token_of(&ch).await;
        let apart = match (shard_of(b, other), shard_of(b, &token)) {
            (Some(a), Some(b)) => a != b,
            _ => true,
        };
        if apart || b.shards() == 1 {
            return (conn, ch, token);
        }
        conn.close(200, "same shard").await.ok();
    }
    panic!("no connection landed on another shard in 64 tries");
}

broker_test!(connection_start_announces_direct_reply_to, |b| {
    let mut raw = RawConn::open(b.addr());
    let start = raw.read_start();
    let caps = match start.server_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t.inner().clone(),
        other => panic!("capabilities should be a table, got {other:?}"),
    };
    assert_eq!(caps.get("direct_reply_to"), Some(&AMQPValue::Boolean(true)));
});

broker_test!(
    a_reply_reaches_the_requesting_channel_without_a_queue,
    |b| {
        run(async {
            let (_client_conn, client) = open(&b.url()).await;
            let mut replies = consume_replies(&client, "rpc-client").await;
            let (server_conn, server) = open(&b.url()).await;
            let requests = declare_server_named(&server).await;
            let mut incoming = consume(&server, &requests, "rpc-server", no_ack()).await;

            publish_props(
                &client,
                "",
                &requests,
                b"ping",
                reply_to().with_correlation_id("c-1".into()),
            )
            .await;
            let request = next_delivery(&mut incoming).await;
            let token = request
                .properties
                .reply_to()
                .clone()
                .expect("reply_to")
                .to_string();
            assert!(token.starts_with("amq.rabbitmq.reply-to."), "{token}");
            assert_ne!(token, REPLY_TO);

            for (i, body) in ["pong", "pong again"].iter().enumerate() {
                publish_props(
                    &server,
                    "",
                    &token,
                    body.as_bytes(),
                    BasicProperties::default().with_correlation_id("c-1".into()),
                )
                .await;
                let reply = next_delivery(&mut replies).await;
                assert_eq!(body_str(&reply), *body, "reply {i}");
                assert_eq!(reply.exchange.as_str(), "");
                assert_eq!(reply.routing_key.as_str(), token);
                assert!(!reply.redelivered);
                assert_eq!(
                    reply
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(|c| c.as_str()),
                    Some("c-1")
                );
                // The channel's next tag, not taken: both replies carry 1.
                assert_eq!(reply.delivery_tag, 1, "reply {i}");
            }
            // No queue by the token's name exists to list or purge, but the
            // replier's channel is fine.
            assert_channel_usable(&server).await;
            drop(server_conn);
        })
    }
);

broker_test!(replies_cross_shards, |b| {
    run_for(std::time::Duration::from_secs(30), async {
        let (_client_conn, client) = open(&b.url()).await;
        let mut replies = consume_replies(&client, "rpc-client").await;
        let token = token_of(&client).await;
        let (_server_conn, server, _) = connection_apart_from(b, &token).await;
        for i in 0..20u32 {
            publish(&server, "", &token, format!("reply {i}").as_bytes()).await;
        }
        for i in 0..20u32 {
            assert_eq!(
                body_str(&next_delivery(&mut replies).await),
                format!("reply {i}")
            );
        }
    })
});

broker_test!(misuse_is_refused_as_rabbitmq_refuses_it, |b| {
    run(async {
        let (conn, _) = open(&b.url()).await;

        let ch = channel(&conn).await;
        let r = ch
            .basic_consume(
                REPLY_TO,
                "acking",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(
            expect_code(r.map(|_| ()), 406),
            "PRECONDITION_FAILED - reply consumer cannot acknowledge"
        );

        let ch = channel(&conn).await;
        let _first = consume_replies(&ch, "first").await;
        let r = ch
            .basic_consume(REPLY_TO, "second", no_ack(), FieldTable::default())
            .await;
        assert_eq!(
            expect_code(r.map(|_| ()), 406),
            "PRECONDITION_FAILED - reply consumer already set"
        );

        let ch = channel(&conn).await;
        let q = declare_server_named(&ch).await;
        let watch = ErrorWatch::channel(&ch);
        ch.basic_publish("", &q, BasicPublishOptions::default(), b"x", reply_to())
            .await
            .ok();
        assert_eq!(
            watch.expect_code(406).await,
            "PRECONDITION_FAILED - fast reply consumer does not exist"
        );
        assert_connection_usable(&conn).await;
    })
});

broker_test!(a_cancelled_reply_consumer_takes_no_more_replies, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let replies = step(
            "basic.consume",
            ch.basic_consume(REPLY_TO, "", no_ack(), FieldTable::default()),
        )
        .await
        .unwrap();
        let tag = replies.tag().to_string();
        assert!(tag.starts_with("amq.ctag-"), "{tag}");
        let token = token_of(&ch).await;
        step(
            "basic.cancel",
            ch.basic_cancel(&tag, BasicCancelOptions::default()),
        )
        .await
        .unwrap();
        // Its token names no queue any more.
        let probe = channel(&conn).await;
        let r = passive_declare_queue(&probe, &token).await;
        assert_eq!(
            expect_code(r.map(|_| ()), 404),
            format!("NOT_FOUND - no queue '{token}' in vhost '/'")
        );
        // Publishing with reply_to needs a reply consumer again.
        let q = declare_server_named(&ch).await;
        let watch = ErrorWatch::channel(&ch);
        ch.basic_publish("", &q, BasicPublishOptions::default(), b"x", reply_to())
            .await
            .ok();
        assert_eq!(
            watch.expect_code(406).await,
            "PRECONDITION_FAILED - fast reply consumer does not exist"
        );
    })
});

broker_test!(queue_declare_of_the_pseudo_queue_and_of_a_token, |b| {
    run(async {
        let (conn, ch) = open(&b.url()).await;
        let declared = passive_declare_queue(&ch, REPLY_TO).await.unwrap();
        assert_eq!(declared.name().as_str(), REPLY_TO);
        assert_eq!(
            (declared.message_count(), declared.consumer_count()),
            (0, 1)
        );
        let _replies = consume_replies(&ch, "replies").await;
        let token = token_of(&ch).await;
        // Asked from another connection (at 2 shards, maybe another shard).
        let (_other_conn, other) = open(&b.url()).await;
        let declared = passive_declare_queue(&other, &token).await.unwrap();
        assert_eq!(declared.name().as_str(), token);
        assert_eq!(
            (declared.message_count(), declared.consumer_count()),
            (0, 1)
        );
        drop(conn);
    })
});

broker_test!(
    replies_to_a_channel_that_is_gone_are_dropped_or_returned,
    |b| {
        run(async {
            let (client_conn, client) = open(&b.url()).await;
            let _replies = consume_replies(&client, "gone").await;
            let token = token_of(&client).await;
            step("channel.close", client.close(200, "bye"))
                .await
                .unwrap();
            drop(client_conn);

            let (_server_conn, server) = open_confirming(&b.url()).await;
            let c = publish_confirmed(
                &server,
                "",
                &token,
                BasicPublishOptions::default(),
                b"lost",
                BasicProperties::default(),
            )
            .await
            .unwrap();
            assert_eq!(c, Confirmation::Ack(None));
            let c = publish_confirmed(
                &server,
                "",
                &token,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"bounced",
                BasicProperties::default(),
            )
            .await
            .unwrap();
            assert!(c.is_ack(), "{c:?}");
            let returned = c.take_message().expect("a basic.return before the ack");
            assert_eq!(
                (returned.reply_code, returned.reply_text.as_str()),
                (312, "NO_ROUTE")
            );
            assert_channel_usable(&server).await;
        })
    }
);

broker_test!(a_mandatory_reply_is_returned_though_delivered, |b| {
    run(async {
        let (_client_conn, client) = open(&b.url()).await;
        let mut replies = consume_replies(&client, "rpc-client").await;
        let token = token_of(&client).await;
        let (_server_conn, server) = open_confirming(&b.url()).await;
        let c = publish_confirmed(
            &server,
            "",
            &token,
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"both",
            BasicProperties::default(),
        )
        .await
        .unwrap();
        assert!(c.is_ack(), "{c:?}");
        let returned = c.take_message().expect("a basic.return before the ack");
        assert_eq!(returned.reply_code, 312);
        assert_eq!(body_str(&next_delivery(&mut replies).await), "both");
    })
});

//! Direct reply-to (RabbitMQ's `amq.rabbitmq.reply-to`): a channel consumes
//! the pseudo-queue `amq.rabbitmq.reply-to` in no-ack mode; its publishes
//! with `reply_to` set to that name leave with `reply_to` rewritten to
//! `amq.rabbitmq.reply-to.<token>`; a message published to the default
//! exchange with that routing key goes straight to the channel, without a
//! queue, from any connection on any shard.
//!
//! The token names the channel: `<shard>.<connection>.<channel>.<secret>`.
//! The shard and connection ids route the reply (`ShardMsg::DirectReply`),
//! and the secret, drawn when the channel began to consume, tells a reply
//! to this consumer from one to an earlier consumer of a channel with the
//! same number, and makes tokens hard to guess (RabbitMQ's key does both).
//!
//! As in RabbitMQ (`rabbit_channel`, `rabbit_exchange:route`):
//! - consuming it with acks is 406 "reply consumer cannot acknowledge",
//!   twice on a channel 406 "reply consumer already set";
//! - publishing with `reply_to` = `amq.rabbitmq.reply-to` on a channel that
//!   does not consume it is 406 "fast reply consumer does not exist";
//! - a reply routes to no queue: a mandatory one is returned (312
//!   NO_ROUTE) even when it reaches its channel, a confirm is an ack at
//!   once, and a reply to a channel that is gone (or stopped consuming) is
//!   dropped silently;
//! - queue.declare of `amq.rabbitmq.reply-to` answers declare-ok (0
//!   messages, 1 consumer); of a token, declare-ok if its channel still
//!   consumes, else 404.
//!
//! It imports what `channel` does; the channel keeps its reply consumer in
//! `Channel::reply_consumer`.

use crate::broker::channel::check_publish_exchange;
use crate::broker::connection::{Connection, Env};
use crate::broker::metadata::{generated_name, no_queue};
use crate::broker::ShardMsg;
use crate::model::ids::{ConnId, ConnRef, ShardId};
use crate::model::message::Message;
use warren_protocol::{
    AmqpError, BasicCancel, BasicCancelOk, BasicConsume, BasicConsumeOk, QueueDeclare,
    QueueDeclareOk, ShortStr,
};

/// The pseudo-queue a channel consumes to receive replies.
pub(crate) const REPLY_TO_QUEUE: &str = "amq.rabbitmq.reply-to";
/// What a reply's routing key (the rewritten `reply_to`) starts with.
const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// A channel's consumer of `amq.rabbitmq.reply-to`.
#[derive(Clone, Debug)]
pub(crate) struct ReplyConsumer {
    pub(crate) tag: ShortStr,
    /// The token's secret part (22 URL-safe base64 characters).
    pub(crate) secret: ShortStr,
}

/// Where a token points.
#[derive(Debug, PartialEq, Eq)]
struct Token<'a> {
    conn: ConnRef,
    channel: u16,
    secret: &'a str,
}

/// Reads `<shard>.<connection>.<channel>.<secret>`; None for anything else
/// (a reply to it goes nowhere, as in RabbitMQ).
fn parse_token(token: &str) -> Option<Token<'_>> {
    let mut parts = token.splitn(4, '.');
    let shard = parts.next()?.parse().ok()?;
    let conn = parts.next()?.parse().ok()?;
    let channel = parts.next()?.parse().ok()?;
    let secret = parts.next()?;
    Some(Token {
        conn: ConnRef {
            shard: ShardId(shard),
            conn: ConnId(conn),
        },
        channel,
        secret,
    })
}

impl Connection {
    /// basic.consume of `amq.rabbitmq.reply-to`.
    pub(crate) fn reply_to_consume(&mut self, id: u16, m: BasicConsume) -> Result<(), AmqpError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        // RabbitMQ looks the tag up among the channel's queue consumers
        // first (an empty tag is never there).
        if ch.has_consumer(m.consumer_tag.as_str()) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{}'",
                m.consumer_tag
            )));
        }
        if !m.no_ack {
            return Err(AmqpError::precondition_failed(
                "reply consumer cannot acknowledge",
            ));
        }
        if ch.reply_consumer.is_some() {
            return Err(AmqpError::precondition_failed("reply consumer already set"));
        }
        let tag = if m.consumer_tag.is_empty() {
            generated_name("amq.ctag-", &mut self.name_state)
        } else {
            m.consumer_tag
        };
        let secret = generated_name("", &mut self.name_state);
        ch.reply_consumer = Some(ReplyConsumer {
            tag: tag.clone(),
            secret,
        });
        if !m.nowait {
            self.wire
                .method(id, &BasicConsumeOk { consumer_tag: tag }.into());
        }
        Ok(())
    }

    /// basic.cancel of the reply consumer: true if it was that (and is
    /// answered here).
    pub(crate) fn reply_to_cancel(&mut self, id: u16, m: &BasicCancel) -> bool {
        let Some(ch) = self.channels.get_mut(&id) else {
            return false;
        };
        if ch
            .reply_consumer
            .as_ref()
            .is_none_or(|c| c.tag != m.consumer_tag)
        {
            return false;
        }
        ch.reply_consumer = None;
        if !m.nowait {
            let ok = BasicCancelOk {
                consumer_tag: m.consumer_tag.clone(),
            };
            self.wire.method(id, &ok.into());
        }
        true
    }

    /// A publish with `reply_to` = `amq.rabbitmq.reply-to` leaves with the
    /// channel's token instead; without a reply consumer it is refused. Other
    /// publishes pass untouched (one flag test).
    pub(crate) fn reply_to_set(
        &self,
        id: u16,
        message: &mut Message,
        env: &Env,
    ) -> Result<(), AmqpError> {
        if message.property_flags() & warren_protocol::properties::flag::REPLY_TO == 0 {
            return Ok(());
        }
        let properties = message.properties();
        if properties.reply_to().as_deref() != Some(REPLY_TO_QUEUE) {
            return Ok(());
        }
        // RabbitMQ finds the exchange before it looks at the properties.
        check_publish_exchange(env, message.exchange())?;
        let Some(consumer) = self
            .channels
            .get(&id)
            .and_then(|ch| ch.reply_consumer.as_ref())
        else {
            return Err(AmqpError::precondition_failed(
                "fast reply consumer does not exist",
            ));
        };
        let token = format!(
            "{}{}.{}.{}.{}",
            REPLY_TO_PREFIX, self.conn.shard.0, self.conn.conn.0, id, consumer.secret
        );
        let mut decoded = properties.decode();
        decoded.reply_to = Some(ShortStr::from(token));
        *message = Message::new(
            message.exchange(),
            message.routing_key(),
            &decoded.encode(),
            message.body.clone(),
            message.bcc_keys().map(<[String]>::to_vec),
        );
        Ok(())
    }

    /// Sends a reply (a publish to the default exchange whose routing key is
    /// a token) to its channel's shard. Routing found no queue for it, so
    /// the publish is otherwise unroutable, as in RabbitMQ.
    pub(crate) fn reply_to_route(&mut self, message: &Message) {
        if !message.exchange().is_empty() {
            return;
        }
        let Some(token) = message.routing_key().strip_prefix(REPLY_TO_PREFIX) else {
            return;
        };
        let Some(token) = parse_token(token) else {
            return;
        };
        let msg = ShardMsg::DirectReply {
            conn: token.conn.conn,
            channel: token.channel,
            secret: ShortStr::from(token.secret),
            message: message.clone(),
        };
        self.effects.push((token.conn.shard, msg));
    }

    /// queue.declare of `amq.rabbitmq.reply-to` or of a token: answered
    /// here, or by the token's shard. None for any other queue.
    pub(crate) fn reply_to_declare(
        &mut self,
        id: u16,
        m: &QueueDeclare,
    ) -> Option<Result<(), AmqpError>> {
        if m.queue.as_str() == REPLY_TO_QUEUE {
            if !m.nowait {
                let ok = QueueDeclareOk {
                    queue: m.queue.clone(),
                    message_count: 0,
                    consumer_count: 1,
                };
                self.wire.method(id, &ok.into());
            }
            return Some(Ok(()));
        }
        let token = m.queue.as_str().strip_prefix(REPLY_TO_PREFIX)?;
        let from = self.conn;
        let Some(token) = parse_token(token) else {
            return Some(Err(no_queue(m.queue.as_str())));
        };
        let msg = ShardMsg::DirectReplyDeclare {
            conn: token.conn.conn,
            channel: token.channel,
            secret: ShortStr::from(token.secret),
            queue: m.queue.clone(),
            from,
            from_channel: id,
        };
        let shard = token.conn.shard;
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.waiting_nowait = m.nowait;
        }
        self.effects.push((shard, msg));
        self.pause();
        Some(Ok(()))
    }

    /// True if channel `channel` consumes replies under `secret`.
    pub(crate) fn has_reply_consumer(&self, channel: u16, secret: &str) -> bool {
        self.channels.get(&channel).is_some_and(|ch| {
            !ch.closing
                && ch
                    .reply_consumer
                    .as_ref()
                    .is_some_and(|c| c.secret.as_str() == secret)
        })
    }

    /// Writes a reply to its channel, if the channel still consumes under
    /// `secret`; otherwise it is dropped. The delivery tag is the channel's
    /// next one, not taken: RabbitMQ writes `next_tag` without counting it
    /// (no ack comes for it).
    pub(crate) fn deliver_reply(&mut self, channel: u16, secret: &str, message: &Message) {
        if !self.has_reply_consumer(channel, secret) {
            return;
        }
        let Some(ch) = self.channels.get(&channel) else {
            return;
        };
        let Some(consumer) = ch.reply_consumer.as_ref() else {
            return;
        };
        let delivery_tag = ch.next_delivery_tag();
        self.wire.deliver(
            channel,
            consumer.tag.as_bytes(),
            delivery_tag,
            false,
            message,
        );
    }
}

/// The answer to a queue.declare of a token, on the token's shard.
pub(crate) fn declare_answer(consumes: bool, queue: ShortStr) -> Result<QueueDeclareOk, AmqpError> {
    if consumes {
        Ok(QueueDeclareOk {
            queue,
            message_count: 0,
            consumer_count: 1,
        })
    } else {
        Err(no_queue(queue.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_shard_connection_channel_and_secret() {
        assert_eq!(
            parse_token("1.42.7.abc-_XYZ"),
            Some(Token {
                conn: ConnRef {
                    shard: ShardId(1),
                    conn: ConnId(42)
                },
                channel: 7,
                secret: "abc-_XYZ"
            })
        );
        assert_eq!(parse_token("1.42.70000.s"), None);
        assert_eq!(parse_token("x.1.1.s"), None);
        assert_eq!(parse_token("1.1.1"), None);
    }
}

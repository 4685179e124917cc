//! Channels: everything a client does on a channel other than 0. Publishing
//! (method, header and body frames assembled into one message, routed on
//! this shard's replica), consuming, basic.get, acknowledgements, prefetch,
//! publisher confirms and transactions. Definition changes go to the
//! metadata owner and pause the connection until it answers, so a client's
//! methods take effect in the order it sent them.
//!
//! Each method a client may send on a channel is one function named after
//! it (`basic_publish`, `queue_declare`, `tx_commit`, ...), called from the
//! one flat `match` of `channel_method`; `channel_frame_method` first
//! decides whether the channel takes methods at all.

use std::collections::VecDeque;

use crate::util::hash::FastMap;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::broker::connection::{Connection, Env, LocalPublish};
use crate::broker::delayed::DelayedPublish;
use crate::broker::direct_reply_to::{ReplyConsumer, REPLY_TO_QUEUE};
use crate::broker::metadata::{
    check_exclusive, generated_name, no_exchange, no_queue, topic_refused, MetaRequest, Scope,
};
use crate::broker::queue::{
    consumer_priority, parse_expiration, ConsumerSpec, Delivery, DeliveryHead, Settle,
};
use crate::broker::sender_selected;
use crate::broker::{ChannelReply, ConfirmTarget, ShardMsg};
use crate::metadata::auth::{check_user_id, Access};
use crate::metadata::exchange::ExchangeKind;
use crate::metadata::vhost::QueueMeta;
use crate::model::ids::{ConsumerId, QueueRef, ShardId};
use crate::model::message::Message;
use warren_protocol::{
    AmqpError, BasicAck, BasicCancel, BasicCancelOk, BasicConsume, BasicConsumeOk, BasicGet,
    BasicGetEmpty, BasicGetOk, BasicNack, BasicPublish, BasicQos, BasicQosOk, BasicRecover,
    BasicRecoverAsync, BasicRecoverOk, BasicReject, BasicReturn, ChannelCloseOk, ChannelFlow,
    ChannelFlowOk, ChannelOpenOk, ConfirmSelect, ConfirmSelectOk, ContentHeader, ExchangeBind,
    ExchangeDeclare, ExchangeDelete, ExchangeUnbind, Method, Properties, PublishShape, QueueBind,
    QueueDeclare, QueueDelete, QueuePurge, QueuePurgeOk, QueueUnbind, ShortStr, TxCommit,
    TxCommitOk, TxRollback, TxRollbackOk, TxSelect, TxSelectOk,
};

/// The class id of `basic`, the only content class.
const BASIC_CLASS: u16 = 60;

#[derive(Debug)]
struct Unacked {
    delivery_tag: u64,
    queue: QueueRef,
    seq: u64,
    consumer: ConsumerId,
}

#[derive(Debug)]
struct ChannelConsumer {
    queue: QueueRef,
    /// The queue's id for it, once consume-ok came back.
    id: Option<ConsumerId>,
    /// Its prefetch if its queue sends deliveries ahead (`Tagged::held`),
    /// otherwise 0.
    lookahead_prefetch: u32,
}

/// A consumer as its deliveries find it (they carry the queue's id for
/// it, not its tag).
#[derive(Debug)]
struct Tagged {
    tag: ShortStr,
    /// Nonzero when its queue, on another shard, sends deliveries ahead of
    /// the client's acks (`config::REMOTE_LOOKAHEAD_FACTOR`): the prefetch
    /// the channel keeps the client to, holding the rest in `held`.
    prefetch: u32,
    /// Deliveries written to the client and not yet settled; counted only
    /// when `prefetch` is nonzero.
    unacked: u32,
    /// Deliveries the queue sent ahead, in order, written as the client's
    /// acks make room; given back to the queue (not redelivered) if the
    /// consumer or channel goes.
    held: VecDeque<Delivery>,
}

impl Tagged {
    /// Counts deliveries the client settled.
    fn settled(&mut self, count: u32) {
        if self.prefetch > 0 {
            self.unacked = self.unacked.saturating_sub(count);
        }
    }
}

/// Gives a consumer's held deliveries back to their queue: the client never
/// saw them, so they are not marked redelivered (`Settle::Return`).
fn return_held(effects: &mut Vec<(ShardId, ShardMsg)>, tagged: &mut Tagged) {
    for delivery in tagged.held.drain(..) {
        let head = delivery.head;
        effects.push((
            head.queue.shard,
            ShardMsg::Settle {
                queue: head.queue.id,
                seq: head.seq,
                consumer: head.consumer,
                settle: Settle::Return,
            },
        ));
    }
}

/// A publish whose header or body frames are still arriving.
#[derive(Debug)]
struct Content {
    publish: BasicPublish,
    header: Option<ContentHeader>,
    body: Body,
    received: u64,
}

/// A body in one frame stays a slice of the read buffer; only bodies split
/// over several frames are copied together.
#[derive(Debug)]
enum Body {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Body {
    /// Appends a body frame. The buffer grows with what has arrived, never
    /// with the size the header announced: a client may announce any size
    /// up to `max_message_size` and then send nothing.
    fn push(&mut self, payload: Bytes) {
        *self = match std::mem::replace(self, Body::Empty) {
            Body::Empty => Body::One(payload),
            Body::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + payload.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&payload);
                Body::Many(joined)
            }
            Body::Many(mut joined) => {
                joined.extend_from_slice(&payload);
                Body::Many(joined)
            }
        }
    }

    /// Bytes the body holds while it is assembled: a joined body's whole
    /// buffer, which grows ahead of what arrived.
    fn held_bytes(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::One(bytes) => bytes.len() as u64,
            Body::Many(joined) => joined.capacity() as u64,
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::One(bytes) => bytes,
            Body::Many(joined) => joined.freeze(),
        }
    }
}

/// RabbitMQ's refusal of a body over `max_message_size`
/// (rabbit_channel:check_msg_size). RabbitMQ reads the whole body before it
/// refuses it; warren refuses on the content header, before reading any.
fn message_too_large(body_size: u64, message_size_max: u64) -> AmqpError {
    let configured = if message_size_max == crate::config::MESSAGE_SIZE_LIMIT {
        ""
    } else {
        "configured "
    };
    AmqpError::precondition_failed(format!(
        "message size {} is larger than {}max size {}",
        body_size, configured, message_size_max
    ))
}

/// Publisher confirms: publish sequence numbers waiting for their queues.
/// Sequence numbers in `pending` are contiguous, so one is found by offset.
#[derive(Debug, Default)]
struct Confirms {
    next_seq: u64,
    pending: VecDeque<PendingConfirm>,
}

#[derive(Debug)]
struct PendingConfirm {
    seq: u64,
    remaining: u32,
    nacked: bool,
}

impl Confirms {
    fn new() -> Confirms {
        Confirms {
            next_seq: 1,
            pending: VecDeque::new(),
        }
    }

    fn publish(&mut self, queue_count: u32) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(PendingConfirm {
            seq,
            remaining: queue_count,
            nacked: false,
        });
        seq
    }

    /// True if the oldest pending publish is now complete.
    fn resolve(&mut self, seq: u64, accepted: bool) -> bool {
        let Some(front) = self.pending.front() else {
            return false;
        };
        let Some(offset) = seq.checked_sub(front.seq) else {
            return false;
        };
        if let Some(pending) = self.pending.get_mut(offset as usize) {
            pending.remaining = pending.remaining.saturating_sub(1);
            pending.nacked |= !accepted;
        }
        self.pending.front().is_some_and(|p| p.remaining == 0)
    }
}

/// Transactional work held until tx.commit. Publishes are kept as the very
/// shard messages a commit sends, so commit moves them without rebuilding.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum TxOp {
    Publish(ShardId, ShardMsg),
    /// The basic.return of a mandatory publish no queue took: RabbitMQ
    /// routes at publish but delivers, or returns, at commit (and a
    /// rollback discards the return with the publish).
    Return {
        method: Method,
        properties: Properties,
        body: Bytes,
    },
    /// Deliveries an ack, nack or reject named, already taken out of the
    /// channel's unacked ones (RabbitMQ's collect_acks runs at once, so an
    /// unknown tag fails at once); settled at commit, put back on rollback.
    Settle {
        taken: Vec<Unacked>,
        settle: Settle,
    },
}

#[derive(Debug)]
pub(crate) struct Channel {
    pub(crate) id: u16,
    /// We sent channel.close and wait for close-ok.
    pub(crate) closing: bool,
    content: Option<Content>,
    next_delivery_tag: u64,
    unacked: VecDeque<Unacked>,
    consumers: FastMap<ShortStr, ChannelConsumer>,
    /// The consumers by the queue's id for them: how a delivery finds its
    /// consumer tag (a delivery carries the id, not the tag).
    consumer_tags: FastMap<(QueueRef, ConsumerId), Tagged>,
    /// basic.qos with global=false: the limit of consumers created after it.
    consumer_prefetch: u16,
    /// basic.qos with global=true: the channel's limit.
    channel_prefetch: u16,
    confirms: Option<Confirms>,
    tx: Option<Vec<TxOp>>,
    /// Publishes in `tx` (at most `TX_PUBLISHES_MAX`) and the bytes of
    /// their messages, which count toward the memory alarm.
    tx_publishes: u32,
    tx_bytes: u64,
    /// Publishes of the last tx.commit not yet in their queues (and, when
    /// stored, not yet on disk); commit-ok goes out when this reaches 0.
    tx_commit_waiting: u32,
    /// A queue of the last tx.commit refused one of its publishes (an
    /// `x-overflow: reject-publish` limit): the commit fails as RabbitMQ's
    /// does, with 406 "partial tx completion", once every answer is in.
    tx_commit_refused: bool,
    /// For the empty-queue-name shortcut of the spec.
    last_queue: Option<ShortStr>,
    pub(crate) waiting_nowait: bool,
    /// The consumer of `amq.rabbitmq.reply-to`, if the channel has one.
    pub(crate) reply_consumer: Option<ReplyConsumer>,
    /// A metadata request (declare, delete, bind ...) of this channel awaits its answer.
    awaiting_meta: bool,
    /// Consumers of this channel the broker cancelled while `awaiting_meta`: their
    /// basic.cancel follows the answer, as in RabbitMQ, where a queue.delete's
    /// delete-ok precedes the cancel of the deleting channel's own consumers (clients
    /// such as py-amqp fail a queue.delete that sees the cancel first).
    cancels_after_meta: Vec<ShortStr>,
    /// The class and method ids of the last method the channel began: an
    /// answer that comes back later from another shard (a refused declare,
    /// consume or get) is about it, since the connection reads nothing more
    /// while it waits, and RabbitMQ's close names the method that failed.
    method_ids: (u16, u16),
    pending_consumer: Option<ShortStr>,
    /// Deliveries to consumers not acknowledged yet (basic.get ones excluded).
    consumer_unacked: u32,
    /// Consumers whose queue got a delivery back because the channel's
    /// global prefetch was reached; resumed once it is not.
    limited: Vec<(QueueRef, ConsumerId)>,
}

impl Channel {
    /// What the management API shows of this channel.
    pub(crate) fn info(&self) -> crate::broker::control::ChannelInfo {
        crate::broker::control::ChannelInfo {
            number: self.id,
            consumers: self.consumers.len() as u32,
            unacked: self.unacked.len() as u32,
            prefetch_count: self.consumer_prefetch,
            global_prefetch_count: self.channel_prefetch,
            confirm: self.confirms.is_some(),
            transactional: self.tx.is_some(),
        }
    }

    /// Removes a consumer by tag, from both maps; the deliveries held for
    /// it go back to its queue.
    fn forget_consumer(
        &mut self,
        tag: &str,
        effects: &mut Vec<(ShardId, ShardMsg)>,
    ) -> Option<ChannelConsumer> {
        let consumer = self.consumers.remove(tag)?;
        if let Some(id) = consumer.id {
            if let Some(mut tagged) = self.consumer_tags.remove(&(consumer.queue, id)) {
                return_held(effects, &mut tagged);
            }
        }
        Some(consumer)
    }

    /// Counts `count` settled deliveries of one consumer.
    fn count_consumer_settled(&mut self, queue: QueueRef, consumer: ConsumerId, count: u32) {
        if let Some(tagged) = self.consumer_tags.get_mut(&(queue, consumer)) {
            tagged.settled(count);
        }
    }

    fn new(id: u16) -> Channel {
        Channel {
            id,
            closing: false,
            content: None,
            next_delivery_tag: 1,
            unacked: VecDeque::new(),
            consumers: FastMap::default(),
            consumer_tags: FastMap::default(),
            consumer_prefetch: 0,
            channel_prefetch: 0,
            confirms: None,
            tx: None,
            tx_publishes: 0,
            tx_bytes: 0,
            tx_commit_waiting: 0,
            tx_commit_refused: false,
            last_queue: None,
            waiting_nowait: false,
            reply_consumer: None,
            awaiting_meta: false,
            cancels_after_meta: Vec::new(),
            method_ids: (0, 0),
            pending_consumer: None,
            consumer_unacked: 0,
            limited: Vec::new(),
        }
    }

    /// Client data the channel holds: the body being assembled and the
    /// publishes of its open transaction.
    pub(crate) fn held_bytes(&self) -> u64 {
        self.content.as_ref().map_or(0, |c| c.body.held_bytes()) + self.tx_bytes
    }

    /// The transaction's publishes were committed, rolled back or dropped.
    fn tx_emptied(&mut self) {
        self.tx_publishes = 0;
        self.tx_bytes = 0;
    }

    /// True if a queue consumer has this tag.
    pub(crate) fn has_consumer(&self, tag: &str) -> bool {
        self.consumers.contains_key(tag)
    }

    /// The tag the channel's next delivery gets.
    pub(crate) fn next_delivery_tag(&self) -> u64 {
        self.next_delivery_tag
    }

    /// The consumers the queues acknowledged, by queue.
    pub(crate) fn consumer_ids(&self) -> impl Iterator<Item = (QueueRef, ConsumerId)> + '_ {
        self.consumers
            .values()
            .filter_map(|c| c.id.map(|id| (c.queue, id)))
    }

    fn expand_queue(&self, name: ShortStr) -> Result<ShortStr, AmqpError> {
        if !name.is_empty() {
            return Ok(name);
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    fn at_channel_prefetch(&self) -> bool {
        self.channel_prefetch > 0 && self.consumer_unacked >= self.channel_prefetch as u32
    }

    fn count_settled(&mut self, u: &Unacked) {
        if u.consumer != ConsumerId::GET {
            self.consumer_unacked = self.consumer_unacked.saturating_sub(1);
            self.count_consumer_settled(u.queue, u.consumer, 1);
        }
    }

    /// The limit a new consumer gets at its queue. A channel-wide limit is
    /// applied per consumer (exact for the usual one consumer per channel).
    fn effective_prefetch(&self) -> u32 {
        match (self.consumer_prefetch, self.channel_prefetch) {
            (0, c) => c as u32,
            (p, 0) => p as u32,
            (p, c) => p.min(c) as u32,
        }
    }
}

fn lookup_queue<'a>(env: &'a Env, name: &ShortStr) -> Result<&'a QueueMeta, AmqpError> {
    env.vhost
        .queues
        .get(name.as_str())
        .ok_or_else(|| no_queue(name))
}

/// Benchmarks only, compiled with the `fuzzing` feature alone: publishes
/// skip the write permission check, so that `benches/publish_permission.rs`
/// can measure the same path with and without it (`fuzzing` sets it).
#[cfg(feature = "fuzzing")]
pub(crate) static SKIP_PUBLISH_PERMISSION_CHECK: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);
/// Benchmarks only: how many times a channel's cached publish check was
/// filled (checked in full), to show the bench that the cache holds.
#[cfg(feature = "fuzzing")]
pub(crate) static PUBLISH_ACCESS_FILLS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// Access checks (`rabbit_channel`'s `check_*_permitted`), for the
/// connection's user in its vhost.
impl Connection {
    fn permit_queue_read(&self, name: &str, env: &Env) -> Result<(), AmqpError> {
        env.users
            .check_resource(&self.user, &self.vhost, "queue", name, Access::Read)
    }

    /// Write on the exchange, and on the routing key if the user has a
    /// topic permission on it. Remembered for the last exchange, so that a
    /// run of publishes to it costs one comparison each (plus the topic
    /// pattern's match where one applies).
    fn permit_publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        env: &Env,
    ) -> Result<(), AmqpError> {
        #[cfg(feature = "fuzzing")]
        if SKIP_PUBLISH_PERMISSION_CHECK.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let access = &self.publish_access;
        if access.generation != env.users.generation() + 1
            || access.vhost_generation != env.vhost.generation()
            || access.exchange != exchange.as_bytes()
        {
            self.fill_publish_access(exchange, env)?;
        }
        match &self.publish_access.topic {
            None => Ok(()),
            Some(Some(pattern)) if pattern.is_match(routing_key) => Ok(()),
            Some(_) => Err(topic_refused(
                &self.user,
                &self.vhost,
                exchange,
                routing_key,
            )),
        }
    }

    #[cold]
    fn fill_publish_access(&mut self, exchange: &str, env: &Env) -> Result<(), AmqpError> {
        #[cfg(feature = "fuzzing")]
        PUBLISH_ACCESS_FILLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.publish_access.generation = 0;
        env.users
            .check_resource(&self.user, &self.vhost, "exchange", exchange, Access::Write)?;
        // The internal backend checks topic permissions on topic exchanges
        // only (rabbit_channel:check_topic_authorisation).
        let is_topic = env
            .vhost
            .exchanges
            .get(exchange)
            .is_some_and(|e| e.def.kind == ExchangeKind::Topic);
        self.publish_access.topic = if is_topic {
            env.users.topic_pattern(
                &self.user,
                &self.vhost,
                exchange,
                Access::Write,
                self.client_id.as_deref(),
            )
        } else {
            None
        };
        self.publish_access.exchange.clear();
        self.publish_access
            .exchange
            .extend_from_slice(exchange.as_bytes());
        // Valid until the users or the vhost change (an exchange deleted and
        // declared again with another type changes whether the topic check
        // applies).
        self.publish_access.generation = env.users.generation() + 1;
        self.publish_access.vhost_generation = env.vhost.generation();
        Ok(())
    }
}

impl Connection {
    pub(crate) fn channel_frame_method(&mut self, channel: u16, method: Method, env: &Env) {
        let now = env.now;
        let (class_id, method_id) = (method.class_id(), method.method_id());
        let Some(ch) = self.channels.get_mut(&channel) else {
            match method {
                // RabbitMQ limits how many channels are open, not their numbers,
                // and refuses one before the method runs: the close names none.
                Method::ChannelOpen(_) if self.channels.len() >= self.channel_max as usize => {
                    let open = self.channels.len();
                    self.connection_error(
                        AmqpError::not_allowed(format!(
                            "number of channels opened ({}) has reached the negotiated channel_max ({})",
                            open, self.channel_max
                        )),
                        now,
                    )
                }
                Method::ChannelOpen(_) => match self.count_channel(env) {
                    Ok(()) => {
                        self.channels.insert(channel, Channel::new(channel));
                        self.wire.method(channel, &ChannelOpenOk {}.into());
                    }
                    Err(error) => {
                        self.connection_error(error.with_method(class_id, method_id), now)
                    }
                },
                Method::ChannelCloseOk(_) => {}
                _ => self.connection_error(
                    AmqpError::channel_error(format!(
                        "expected 'channel.open' on channel {}",
                        channel
                    ))
                    .with_method(class_id, method_id),
                    now,
                ),
            }
            return;
        };
        if ch.closing {
            match method {
                Method::ChannelCloseOk(_) => {
                    self.channels.remove(&channel);
                    self.uncount_channel();
                }
                Method::ChannelClose(_) => {
                    self.wire.method(channel, &ChannelCloseOk {}.into());
                    self.channels.remove(&channel);
                    self.uncount_channel();
                }
                _ => {}
            }
            return;
        }
        if let Some(content) = &ch.content {
            // rabbit_command_assembler: the close names the publish whose
            // content was interrupted, not the method that interrupted it.
            let expected = if content.header.is_some() {
                "expected content body, got non content body frame instead"
            } else {
                "expected content header for class 60, got non content header frame instead"
            };
            self.connection_error(
                AmqpError::unexpected_frame(expected).with_method(60, 40),
                now,
            );
            return;
        }
        ch.method_ids = (class_id, method_id);
        if let Err(error) = self.channel_method(channel, method, env) {
            self.fail(channel, error.with_method(class_id, method_id), now);
        }
    }

    /// One method on an open channel that waits for no content, passed to
    /// the function named after it (the flat dispatch of LavinMQ's
    /// `process_frame`). A handler that no longer finds its channel drops
    /// the method.
    fn channel_method(&mut self, id: u16, method: Method, env: &Env) -> Result<(), AmqpError> {
        match method {
            Method::ChannelOpen(_) => Err(AmqpError::channel_error("second 'channel.open' seen")),
            Method::ChannelClose(_) => self.channel_close(id),
            Method::ChannelCloseOk(_) => Ok(()),
            Method::ChannelFlow(m) => self.channel_flow(id, m),
            Method::ChannelFlowOk(_) => Ok(()),
            Method::ExchangeDeclare(m) => self.exchange_declare(id, m),
            Method::ExchangeDelete(m) => self.exchange_delete(id, m),
            Method::ExchangeBind(m) => self.exchange_bind(id, m),
            Method::ExchangeUnbind(m) => self.exchange_unbind(id, m),
            Method::QueueDeclare(m) => self.queue_declare(id, m),
            Method::QueueBind(m) => self.queue_bind(id, m),
            Method::QueueUnbind(m) => self.queue_unbind(id, m),
            Method::QueueDelete(m) => self.queue_delete(id, m),
            Method::QueuePurge(m) => self.queue_purge(id, m, env),
            Method::BasicQos(m) => self.basic_qos(id, m),
            Method::BasicConsume(m) => self.basic_consume(id, m, env),
            Method::BasicCancel(m) => self.basic_cancel(id, m),
            Method::BasicPublish(m) => self.basic_publish(id, m, env),
            Method::BasicGet(m) => self.basic_get(id, m, env),
            Method::BasicAck(m) => self.basic_ack(id, m),
            Method::BasicReject(m) => self.basic_reject(id, m),
            Method::BasicNack(m) => self.basic_nack(id, m),
            Method::BasicRecover(m) => self.basic_recover(id, m),
            Method::BasicRecoverAsync(m) => self.basic_recover_async(id, m),
            Method::ConfirmSelect(m) => self.confirm_select(id, m),
            Method::TxSelect(m) => self.tx_select(id, m),
            Method::TxCommit(m) => self.tx_commit(id, m),
            Method::TxRollback(m) => self.tx_rollback(id, m),
            other => Err(AmqpError::command_invalid(format!(
                "unexpected method {} from a client",
                other.name()
            ))),
        }
    }

    fn channel_close(&mut self, id: u16) -> Result<(), AmqpError> {
        self.release_channel(id);
        self.channels.remove(&id);
        self.uncount_channel();
        self.wire.method(id, &ChannelCloseOk {}.into());
        Ok(())
    }

    /// RabbitMQ 3.x acknowledges `active=true` and refuses `active=false`
    /// with a connection error (rabbit_channel: `protocol_error(not_implemented,
    /// "active=false")`): clients that need to stop deliveries use basic.qos.
    fn channel_flow(&mut self, id: u16, m: ChannelFlow) -> Result<(), AmqpError> {
        if !m.active {
            return Err(AmqpError::not_implemented("active=false"));
        }
        self.wire.method(id, &ChannelFlowOk { active: true }.into());
        Ok(())
    }

    fn exchange_declare(&mut self, id: u16, m: ExchangeDeclare) -> Result<(), AmqpError> {
        self.meta(id, m.nowait, MetaRequest::ExchangeDeclare(m));
        Ok(())
    }

    fn exchange_delete(&mut self, id: u16, m: ExchangeDelete) -> Result<(), AmqpError> {
        self.meta(id, m.nowait, MetaRequest::ExchangeDelete(m));
        Ok(())
    }

    fn exchange_bind(&mut self, id: u16, m: ExchangeBind) -> Result<(), AmqpError> {
        self.meta(id, m.nowait, MetaRequest::ExchangeBind(m));
        Ok(())
    }

    fn exchange_unbind(&mut self, id: u16, m: ExchangeUnbind) -> Result<(), AmqpError> {
        self.meta(id, m.nowait, MetaRequest::ExchangeUnbind(m));
        Ok(())
    }

    fn queue_declare(&mut self, id: u16, m: QueueDeclare) -> Result<(), AmqpError> {
        if let Some(answered) = self.reply_to_declare(id, &m) {
            return answered;
        }
        self.meta(id, m.nowait, MetaRequest::QueueDeclare(m));
        Ok(())
    }

    fn queue_bind(&mut self, id: u16, mut m: QueueBind) -> Result<(), AmqpError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        let shortcut = m.queue.is_empty();
        m.queue = ch.expand_queue(m.queue)?;
        if shortcut && m.routing_key.is_empty() {
            m.routing_key = m.queue.clone();
        }
        self.meta(id, m.nowait, MetaRequest::QueueBind(m));
        Ok(())
    }

    fn queue_unbind(&mut self, id: u16, mut m: QueueUnbind) -> Result<(), AmqpError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        m.queue = ch.expand_queue(m.queue)?;
        self.meta(id, false, MetaRequest::QueueUnbind(m));
        Ok(())
    }

    fn queue_delete(&mut self, id: u16, mut m: QueueDelete) -> Result<(), AmqpError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        m.queue = ch.expand_queue(m.queue)?;
        self.meta(id, m.nowait, MetaRequest::QueueDelete(m));
        Ok(())
    }

    fn queue_purge(&mut self, id: u16, m: QueuePurge, env: &Env) -> Result<(), AmqpError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        let name = ch.expand_queue(m.queue)?;
        self.permit_queue_read(&name, env)?;
        let meta = lookup_queue(env, &name)?;
        check_exclusive(meta, Some(self.conn))?;
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        ch.waiting_nowait = m.nowait;
        let queue = meta.queue_ref();
        let msg = ShardMsg::Purge {
            queue: queue.id,
            conn: self.conn,
            channel: id,
            nowait: m.nowait,
        };
        self.effects.push((queue.shard, msg));
        self.pause();
        Ok(())
    }

    fn basic_qos(&mut self, id: u16, m: BasicQos) -> Result<(), AmqpError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        if m.prefetch_size != 0 {
            return Err(AmqpError::not_implemented(format!(
                "prefetch_size!=0 ({})",
                m.prefetch_size
            )));
        }
        if m.global {
            ch.channel_prefetch = m.prefetch_count;
        } else {
            ch.consumer_prefetch = m.prefetch_count;
        }
        self.wire.method(id, &BasicQosOk {}.into());
        // A larger (or no) global limit lets the limited consumers go on.
        self.resume_limited(id);
        Ok(())
    }

    fn basic_consume(&mut self, id: u16, m: BasicConsume, env: &Env) -> Result<(), AmqpError> {
        if m.queue.as_str() == REPLY_TO_QUEUE {
            return self.reply_to_consume(id, m);
        }
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        let name = ch.expand_queue(m.queue)?;
        self.permit_queue_read(&name, env)?;
        let meta = lookup_queue(env, &name)?;
        check_exclusive(meta, Some(self.conn))?;
        let priority = consumer_priority(&self.vhost, &name, &m.arguments)?;
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        let tag = if m.consumer_tag.is_empty() {
            generated_name("amq.ctag-", &mut self.name_state)
        } else {
            m.consumer_tag
        };
        if ch.consumers.contains_key(tag.as_str()) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{}'",
                tag
            )));
        }
        let queue = meta.queue_ref();
        let prefetch_count = ch.effective_prefetch();
        let lookahead = if queue.shard != self.conn.shard && !m.no_ack && ch.channel_prefetch == 0 {
            remote_lookahead(prefetch_count)
        } else {
            0
        };
        ch.consumers.insert(
            tag.clone(),
            ChannelConsumer {
                queue,
                id: None,
                lookahead_prefetch: if lookahead > 0 { prefetch_count } else { 0 },
            },
        );
        ch.pending_consumer = Some(tag.clone());
        let spec = ConsumerSpec {
            conn: self.conn,
            channel: id,
            tag,
            no_ack: m.no_ack,
            exclusive: m.exclusive,
            prefetch_count,
            lookahead,
            priority,
        };
        self.effects.push((
            queue.shard,
            ShardMsg::Consume {
                queue: queue.id,
                spec,
                nowait: m.nowait,
            },
        ));
        self.pause();
        Ok(())
    }

    fn basic_cancel(&mut self, id: u16, m: BasicCancel) -> Result<(), AmqpError> {
        if self.reply_to_cancel(id, &m) {
            return Ok(());
        }
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        let Some(consumer) = ch.consumers.get(m.consumer_tag.as_str()) else {
            // RabbitMQ answers a cancel of an unknown tag with cancel-ok.
            if !m.nowait {
                let ok = BasicCancelOk {
                    consumer_tag: m.consumer_tag,
                };
                self.wire.method(id, &ok.into());
            }
            return Ok(());
        };
        let queue = consumer.queue;
        if m.nowait {
            ch.forget_consumer(m.consumer_tag.as_str(), &mut self.effects);
        } else {
            // The consumer stays until the queue confirms: deliveries
            // already on their way still reach the client, and once
            // cancel-ok is out the queue has stopped, as in RabbitMQ.
            self.pause();
        }
        let msg = ShardMsg::Cancel {
            queue: queue.id,
            conn: self.conn,
            channel: id,
            tag: m.consumer_tag,
            answer: !m.nowait,
        };
        self.effects.push((queue.shard, msg));
        Ok(())
    }

    /// The method frame of a publish: its header and body frames follow
    /// (`channel_frame_header`, `channel_frame_body`).
    fn basic_publish(&mut self, id: u16, m: BasicPublish, env: &Env) -> Result<(), AmqpError> {
        if !self.channels.contains_key(&id) {
            return Ok(());
        }
        if m.immediate {
            return Err(AmqpError::not_implemented("immediate=true"));
        }
        self.permit_publish(&m.exchange, &m.routing_key, env)?;
        check_publish_exchange(env, &m.exchange)?;
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        ch.content = Some(Content {
            publish: m,
            header: None,
            body: Body::Empty,
            received: 0,
        });
        Ok(())
    }

    fn basic_get(&mut self, id: u16, m: BasicGet, env: &Env) -> Result<(), AmqpError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        let name = ch.expand_queue(m.queue)?;
        self.permit_queue_read(&name, env)?;
        let meta = lookup_queue(env, &name)?;
        check_exclusive(meta, Some(self.conn))?;
        let queue = meta.queue_ref();
        let msg = ShardMsg::Get {
            queue: queue.id,
            conn: self.conn,
            channel: id,
            no_ack: m.no_ack,
        };
        self.effects.push((queue.shard, msg));
        self.pause();
        Ok(())
    }

    fn basic_ack(&mut self, id: u16, m: BasicAck) -> Result<(), AmqpError> {
        self.settle(id, m.delivery_tag, m.multiple, Settle::Ack)
    }

    fn basic_reject(&mut self, id: u16, m: BasicReject) -> Result<(), AmqpError> {
        let settle = if m.requeue {
            Settle::Requeue
        } else {
            Settle::Discard
        };
        self.settle(id, m.delivery_tag, false, settle)
    }

    fn basic_nack(&mut self, id: u16, m: BasicNack) -> Result<(), AmqpError> {
        let settle = if m.requeue {
            Settle::Requeue
        } else {
            Settle::Discard
        };
        self.settle(id, m.delivery_tag, m.multiple, settle)
    }

    fn basic_recover(&mut self, id: u16, m: BasicRecover) -> Result<(), AmqpError> {
        if !m.requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        self.requeue_unacked(id);
        self.wire.method(id, &BasicRecoverOk {}.into());
        Ok(())
    }

    fn basic_recover_async(&mut self, id: u16, m: BasicRecoverAsync) -> Result<(), AmqpError> {
        if !m.requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        self.requeue_unacked(id);
        Ok(())
    }

    fn confirm_select(&mut self, id: u16, m: ConfirmSelect) -> Result<(), AmqpError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        if ch.tx.is_some() {
            return Err(AmqpError::precondition_failed(
                "cannot switch from tx to confirm mode",
            ));
        }
        ch.confirms.get_or_insert_with(Confirms::new);
        if !m.nowait {
            self.wire.method(id, &ConfirmSelectOk {}.into());
        }
        Ok(())
    }

    fn tx_select(&mut self, id: u16, _: TxSelect) -> Result<(), AmqpError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        if ch.confirms.is_some() {
            return Err(AmqpError::precondition_failed(
                "cannot switch from confirm to tx mode",
            ));
        }
        ch.tx.get_or_insert_with(Vec::new);
        self.wire.method(id, &TxSelectOk {}.into());
        Ok(())
    }

    fn tx_commit(&mut self, id: u16, _: TxCommit) -> Result<(), AmqpError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        let Some(ops) = ch.tx.as_mut().map(std::mem::take) else {
            return Err(AmqpError::precondition_failed(
                "channel is not transactional",
            ));
        };
        ch.tx_emptied();
        // Each committed publish answers the channel once its queue
        // has it, after the fsync when it is stored: commit-ok means
        // every persistent publish of the transaction is on disk.
        let target = ConfirmTarget {
            conn: self.conn,
            channel: id,
            publish_seq: ConfirmTarget::TX_COMMIT,
        };
        let mut waiting = 0u32;
        for op in ops {
            match op {
                TxOp::Settle { taken, settle } => self.settle_taken(id, taken, settle),
                TxOp::Publish(shard, mut msg) => {
                    if let ShardMsg::Enqueue { confirm, .. } = &mut msg {
                        *confirm = Some(target);
                        waiting += 1;
                    }
                    self.effects.push((shard, msg))
                }
                TxOp::Return {
                    method,
                    properties,
                    body,
                } => self.wire.content(id, &method, &properties, &body),
            }
        }
        if waiting == 0 {
            self.wire.method(id, &TxCommitOk {}.into());
        } else {
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.tx_commit_waiting = waiting;
            }
            self.pause();
        }
        Ok(())
    }

    fn tx_rollback(&mut self, id: u16, _: TxRollback) -> Result<(), AmqpError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        let Some(ops) = ch.tx.as_mut() else {
            return Err(AmqpError::precondition_failed(
                "channel is not transactional",
            ));
        };
        ch.tx_publishes = 0;
        ch.tx_bytes = 0;
        // Publishes are dropped; acknowledged deliveries go back
        // among the unacked ones, in tag order, not to their queues
        // (RabbitMQ's tx.rollback).
        let mut restored = false;
        for op in ops.drain(..) {
            if let TxOp::Settle { taken, .. } = op {
                ch.unacked.extend(taken);
                restored = true;
            }
        }
        if restored {
            ch.unacked
                .make_contiguous()
                .sort_unstable_by_key(|u| u.delivery_tag);
        }
        self.wire.method(id, &TxRollbackOk {}.into());
        Ok(())
    }

    fn meta(&mut self, channel: u16, nowait: bool, request: MetaRequest) {
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.waiting_nowait = nowait;
            ch.awaiting_meta = true;
        }
        let scope = Box::new(Scope {
            vhost: self.vhost.clone(),
            user: self.user.clone(),
            checked: true,
        });
        self.effects.push((
            ShardId(0),
            ShardMsg::Meta {
                from: Some((self.conn, channel)),
                scope: Some(scope),
                request: Box::new(request),
            },
        ));
        self.pause();
    }

    /// The publish a header (`header` true) or body frame continues, as
    /// RabbitMQ's command assembler checks it: Ok(None) on a closing channel
    /// (the frame is dropped), an error if the frame is out of place.
    fn content_for_frame(
        &mut self,
        channel: u16,
        header: bool,
    ) -> Result<Option<&mut Content>, AmqpError> {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Err(AmqpError::channel_error(format!(
                "expected 'channel.open' on channel {}",
                channel
            )));
        };
        if ch.closing {
            return Ok(None);
        }
        match ch.content.as_mut() {
            None => Err(AmqpError::unexpected_frame(
                "expected method frame, got non method frame instead",
            )),
            Some(content) if content.header.is_some() == header => {
                Err(AmqpError::unexpected_frame(if header {
                    "expected content body, got non content body frame instead"
                } else {
                    "expected content header for class 60, got non content header frame instead"
                })
                .with_method(60, 40))
            }
            Some(content) => Ok(Some(content)),
        }
    }

    pub(crate) fn channel_frame_header(&mut self, channel: u16, header: ContentHeader, env: &Env) {
        let content = match self.content_for_frame(channel, true) {
            Ok(Some(content)) => content,
            Ok(None) => return,
            Err(error) => return self.connection_error(error, env.now),
        };
        if header.class_id != BASIC_CLASS {
            let error = AmqpError::unexpected_frame(format!(
                "expected content header for class 60, got one for class {} instead",
                header.class_id
            ))
            .with_method(60, 40);
            return self.connection_error(error, env.now);
        }
        if header.body_size > env.config.message_size_max {
            let error = message_too_large(header.body_size, env.config.message_size_max);
            return self.fail(channel, error.with_method(60, 40), env.now);
        }
        let complete = header.body_size == 0;
        content.header = Some(header);
        if complete {
            self.complete_publish(channel, env);
        }
    }

    pub(crate) fn channel_frame_body(&mut self, channel: u16, payload: Bytes, env: &Env) {
        let now = env.now;
        let content = match self.content_for_frame(channel, false) {
            Ok(Some(content)) => content,
            Ok(None) => return,
            Err(error) => return self.connection_error(error, now),
        };
        let body_size = content.header.as_ref().map_or(0, |h| h.body_size);
        content.received += payload.len() as u64;
        if content.received > body_size {
            let received = content.received;
            self.connection_error(
                AmqpError::frame_error(format!(
                    "content body frame exceeds remaining content size ({} > {})",
                    received, body_size
                ))
                .with_method(60, 40),
                now,
            );
            return;
        }
        content.body.push(payload);
        if content.received == body_size {
            self.complete_publish(channel, env);
        }
    }

    /// A publish whose three frames `peek_publish` found complete at the
    /// front of `buf`, handled in one step with one split of the buffer.
    /// Only on an open channel with no content pending; otherwise false,
    /// nothing consumed, and the general path takes the same bytes. Errors
    /// come out as the general path gives them, in the same order: a bad
    /// name closes the connection, a missing or internal exchange closes the
    /// channel (whose header and body frames the general path would then
    /// ignore), a bad property list closes the connection.
    pub(crate) fn fast_publish(
        &mut self,
        shape: PublishShape,
        buf: &mut BytesMut,
        env: &Env,
    ) -> bool {
        match self.channels.get(&shape.channel) {
            Some(ch) if !ch.closing && ch.content.is_none() => {}
            _ => return false,
        }
        // A body over the limit is refused by the general path.
        if shape.body.len() as u64 > env.config.message_size_max {
            return false;
        }
        let frames = buf.split_to(shape.len).freeze();
        let body = frames.slice(shape.body.clone());
        let properties = shape.properties.clone();
        let message = match Message::in_frames(
            &frames,
            shape.exchange,
            shape.routing_key,
            shape.flags,
            shape.properties,
            body,
        ) {
            Ok(message) => message,
            Err(error) => {
                self.connection_error(error.to_amqp_error(), env.now);
                return true;
            }
        };
        // Most publishes set no property: nothing to check or slice.
        let checked = if shape.flags == 0 && properties.is_empty() {
            Ok(())
        } else {
            Properties::from_wire(shape.flags, frames.slice(properties)).map(drop)
        };
        if let Err(error) = checked {
            // The general path would have judged the exchange on the
            // method frame before it met the bad header.
            if let Err(refused) = check_publish_exchange(env, message.exchange()) {
                self.fail(shape.channel, refused.with_method(60, 40), env.now);
            }
            self.connection_error(error.to_amqp_error(), env.now);
            return true;
        }
        // The exchange is checked once, by `route_publish`, as it routes;
        // the permission here, as `basic_publish` checks it on the general
        // path.
        let routed = self
            .permit_publish(message.exchange(), message.routing_key(), env)
            .and_then(|()| self.route_publish(shape.channel, message, shape.mandatory, env));
        if let Err(error) = routed {
            self.fail(shape.channel, error.with_method(60, 40), env.now);
        }
        true
    }

    fn complete_publish(&mut self, id: u16, env: &Env) {
        let Some(content) = self.channels.get_mut(&id).and_then(|ch| ch.content.take()) else {
            return;
        };
        let (class_id, method_id) = (60, 40);
        if let Err(error) = self.publish(id, content, env) {
            self.fail(id, error.with_method(class_id, method_id), env.now);
        }
    }

    /// Routes a complete message and hands it to its queues.
    fn publish(&mut self, id: u16, content: Content, env: &Env) -> Result<(), AmqpError> {
        let Content {
            publish,
            header,
            body,
            ..
        } = content;
        let properties = header.map(|h| h.properties).unwrap_or_default();
        let message = Message::new(
            &publish.exchange,
            &publish.routing_key,
            &properties,
            body.freeze(),
            None,
        );
        self.route_publish(id, message, publish.mandatory, env)
    }

    /// Routes a complete message and hands it to its queues.
    fn route_publish(
        &mut self,
        id: u16,
        mut message: Message,
        mandatory: bool,
        env: &Env,
    ) -> Result<(), AmqpError> {
        // The write permission was checked by the caller (`basic_publish`
        // on the general path, `fast_publish` on the fast one).
        self.reply_to_set(id, &mut message, env)?;
        self.published += 1;
        let properties = message.properties();
        if let Some(user_id) = properties.user_id() {
            if user_id.as_str() != self.user {
                check_user_id(env.users.user(&self.user), &self.user, user_id.as_str())?;
            }
        }
        if let Some(expiration) = properties.expiration() {
            if let Err(error) = parse_expiration(expiration.as_str()) {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid expiration '{}': {}",
                    expiration, error
                )));
            }
        }
        let generation = env.vhost.generation();
        let headers = message.property_flags() & warren_protocol::properties::flag::HEADERS != 0;
        let routed_before = !headers
            && self
                .route_cache
                .holds(generation, message.exchange(), message.routing_key());
        let properties = if routed_before {
            self.route_keys.clear();
            properties
        } else {
            self.route_cache.forget();
            let properties = self.route(&mut message, properties, env)?;
            if !headers && self.routed.delayed.is_empty() {
                self.route_cache
                    .remember(generation, message.exchange(), message.routing_key());
            }
            properties
        };
        // RabbitMQ refuses a delivery-mode other than 1 or 2 once the
        // exchange is known to exist (rabbit_basic:message).
        if let Some(mode) = message.delivery_mode() {
            if !matches!(mode, 1 | 2) {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid message: {{delivery_mode_unknown,{}}}",
                    mode
                )));
            }
        }
        if env.vhost.tracing {
            self.trace_publish(id, &message);
        }
        // A reply goes to its channel at once, in a transaction too (as
        // RabbitMQ routes it at publish).
        self.reply_to_route(&message);
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        if ch.tx.is_some() {
            if ch.tx_publishes >= crate::config::TX_PUBLISHES_MAX {
                return Err(AmqpError::precondition_failed(format!(
                    "transaction holds {} uncommitted publishes, the most a channel may",
                    crate::config::TX_PUBLISHES_MAX
                )));
            }
            ch.tx_publishes += 1;
            // Held until commit in allocations of its own: a slice of the
            // read buffer would keep the whole buffer alive, uncounted.
            message = message.detached();
            ch.tx_bytes += message.memory_size();
        }
        // A delayed exchange holding the message counts as one destination:
        // it confirms once it holds the message, as the plugin does.
        let destination_count = self.routed.destination_count();
        let confirm = ch.confirms.as_mut().map(|c| ConfirmTarget {
            conn: self.conn,
            channel: id,
            publish_seq: c.publish(destination_count as u32),
        });
        if self.routed.queues.is_empty() && mandatory {
            // A delayed message is returned too, though it is delivered
            // later: routing found no queue now. The plugin does the same.
            let method: Method = BasicReturn {
                reply_code: 312,
                reply_text: ShortStr::from_static("NO_ROUTE"),
                exchange: message.exchange_name(),
                routing_key: message.routing_key_name(),
            }
            .into();
            match ch.tx.as_mut() {
                Some(ops) => ops.push(TxOp::Return {
                    method,
                    properties,
                    body: message.body.clone(),
                }),
                None => self.wire.content(id, &method, &properties, &message.body),
            }
        }
        if destination_count == 0 {
            self.counts.unroutable += 1;
            return Ok(());
        }
        self.counts.routed += 1;
        if let [queue] = self.routed.queues[..] {
            if self.routed.delayed.is_empty() {
                if ch.tx.is_none() && queue.shard == self.conn.shard && self.effects.is_empty() {
                    self.local_publishes.push(LocalPublish {
                        queue: queue.id,
                        message,
                        confirm: confirm.map(|c| (c.channel, c.publish_seq)),
                    });
                    return Ok(());
                }
                // The common case, with no clone or option in the way.
                let msg = ShardMsg::Enqueue {
                    queue: queue.id,
                    message,
                    confirm,
                };
                hand_over(ch.tx.as_mut(), &mut self.effects, queue.shard, msg);
                return Ok(());
            }
        }
        let mut message = Some(message);
        // Every destination but the last takes a clone (refcounts only).
        let mut left = destination_count;
        let mut take_message = || {
            left -= 1;
            if left == 0 {
                message.take()
            } else {
                message.clone()
            }
        };
        for queue in &self.routed.queues {
            let Some(message) = take_message() else { break };
            let msg = ShardMsg::Enqueue {
                queue: queue.id,
                message,
                confirm,
            };
            hand_over(ch.tx.as_mut(), &mut self.effects, queue.shard, msg);
        }
        // The publishing shard holds delayed messages, after a commit in a
        // transaction (RabbitMQ's plugin holds them at publish, even if the
        // transaction rolls back).
        for exchange in self.routed.delayed.drain(..) {
            let Some(message) = take_message() else { break };
            let msg = ShardMsg::Delay(Box::new(DelayedPublish {
                vhost: self.vhost.clone(),
                exchange,
                message,
                extra_keys: self.route_keys.clone(),
                delay_ms: self.routed.delay_ms,
                confirm,
            }));
            hand_over(ch.tx.as_mut(), &mut self.effects, self.conn.shard, msg);
        }
        Ok(())
    }

    /// Routes a publish into `routed`, its CC and BCC keys into
    /// `route_keys`. Returns its properties without a BCC header, and
    /// rebuilds the message without it too.
    fn route(
        &mut self,
        message: &mut Message,
        properties: Properties,
        env: &Env,
    ) -> Result<Properties, AmqpError> {
        let exchange = match env.vhost.exchanges.get(message.exchange()) {
            None => return Err(no_exchange(message.exchange())),
            Some(exchange) if exchange.def.internal => {
                return Err(internal_exchange(message.exchange()))
            }
            Some(exchange) => exchange,
        };
        // Sender-selected distribution: only a publish with headers pays.
        let properties = match sender_selected::routing_keys(&properties, &mut self.route_keys)? {
            None => properties,
            Some(removed) => {
                let bcc = &self.route_keys[removed.bcc_at..];
                let bcc = (!bcc.is_empty()).then(|| bcc.to_vec());
                *message = Message::new(
                    message.exchange(),
                    message.routing_key(),
                    &removed.properties,
                    message.body.clone(),
                    bcc,
                );
                removed.properties
            }
        };
        env.vhost.route(
            exchange,
            message.routing_key(),
            &self.route_keys,
            &properties,
            &mut self.route_scratch,
            &mut self.routed,
        );
        Ok(properties)
    }

    fn settle(
        &mut self,
        id: u16,
        delivery_tag: u64,
        multiple: bool,
        settle: Settle,
    ) -> Result<(), AmqpError> {
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        let range = collect_acks(ch, delivery_tag, multiple)?;
        if let Some(ops) = ch.tx.as_mut() {
            let taken = ch.unacked.drain(range).collect();
            ops.push(TxOp::Settle { taken, settle });
            return Ok(());
        }
        if range.len() == 1 {
            if let Some(u) = ch.unacked.remove(range.start) {
                ch.count_settled(&u);
                self.effects.push(settle_msg(&u, settle));
            }
            self.resume_limited(id);
            self.write_held(id);
            return Ok(());
        }
        // Drained in place: nothing allocated for a multiple ack.
        let Channel {
            unacked,
            consumer_unacked,
            consumer_tags,
            ..
        } = ch;
        settle_runs(
            &mut self.effects,
            consumer_unacked,
            consumer_tags,
            unacked.drain(range),
            settle,
        );
        self.resume_limited(id);
        self.write_held(id);
        Ok(())
    }

    /// Settles what a transaction's ack, nack or reject took, at commit.
    fn settle_taken(&mut self, id: u16, taken: Vec<Unacked>, settle: Settle) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        settle_runs(
            &mut self.effects,
            &mut ch.consumer_unacked,
            &mut ch.consumer_tags,
            taken.into_iter(),
            settle,
        );
        self.resume_limited(id);
        self.write_held(id);
    }

    fn requeue_unacked(&mut self, id: u16) {
        if let Some(ch) = self.channels.get_mut(&id) {
            for u in ch.unacked.drain(..) {
                self.effects.push(settle_msg(&u, Settle::Requeue));
            }
            ch.consumer_unacked = 0;
            for tagged in ch.consumer_tags.values_mut() {
                tagged.unacked = 0;
            }
        }
        self.resume_limited(id);
        self.write_held(id);
    }

    /// Writes the deliveries held for the channel's consumers
    /// (`Tagged::held`) while their prefetch allows: after the client
    /// settled some, these go out at once, while the queue's next ones
    /// are still on their way from its shard.
    fn write_held(&mut self, id: u16) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if ch.closing {
            return;
        }
        let Channel {
            consumer_tags,
            next_delivery_tag,
            consumer_unacked,
            unacked,
            ..
        } = ch;
        let mut traced: Vec<Delivery> = Vec::new();
        for tagged in consumer_tags.values_mut() {
            while tagged.unacked < tagged.prefetch {
                let Some(delivery) = tagged.held.pop_front() else {
                    break;
                };
                let delivery_tag =
                    take_delivery_tag(next_delivery_tag, consumer_unacked, unacked, &delivery.head);
                tagged.unacked += 1;
                self.wire.deliver(
                    id,
                    tagged.tag.as_bytes(),
                    delivery_tag,
                    delivery.head.redelivered,
                    &delivery.message,
                );
                if self.tracing {
                    traced.push(delivery);
                }
            }
        }
        for delivery in traced {
            self.trace_delivery(&delivery.head, &delivery.message);
        }
    }

    /// Cancels a channel's consumers and returns its unacknowledged messages
    /// to their queues, in order and marked redelivered.
    pub(crate) fn release_channel(&mut self, id: u16) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let mut tags = std::mem::take(&mut ch.consumer_tags);
        for (tag, consumer) in ch.consumers.drain() {
            self.effects.push((
                consumer.queue.shard,
                ShardMsg::Cancel {
                    queue: consumer.queue.id,
                    conn: self.conn,
                    channel: id,
                    tag,
                    answer: false,
                },
            ));
        }
        // Acks of a transaction never committed are undone first, so those
        // deliveries return to their queues with the rest, in order.
        if let Some(ops) = ch.tx.take() {
            let before = ch.unacked.len();
            for op in ops {
                if let TxOp::Settle { taken, .. } = op {
                    ch.unacked.extend(taken);
                }
            }
            if ch.unacked.len() > before {
                ch.unacked
                    .make_contiguous()
                    .sort_unstable_by_key(|u| u.delivery_tag);
            }
        }
        for u in ch.unacked.drain(..) {
            self.effects.push(settle_msg(&u, Settle::Released));
        }
        // After the cancels: a queue gives what it gets back to its other
        // consumers, not to these.
        for tagged in tags.values_mut() {
            return_held(&mut self.effects, tagged);
        }
        ch.consumer_unacked = 0;
        ch.limited.clear();
        ch.content = None;
        ch.confirms = None;
        ch.tx = None;
        ch.tx_emptied();
    }

    pub(crate) fn channel_reply(
        &mut self,
        id: u16,
        reply: ChannelReply,
        now: Instant,
    ) -> Option<ChannelReply> {
        let Some(ch) = self.channels.get_mut(&id) else {
            self.resume();
            return Some(reply);
        };
        if ch.closing {
            self.resume();
            return Some(reply);
        }
        match reply {
            ChannelReply::ConsumeOk {
                tag,
                nowait,
                queue,
                consumer,
            } => {
                ch.pending_consumer = None;
                if let Some(c) = ch.consumers.get_mut(tag.as_str()) {
                    c.id = Some(consumer);
                    let tagged = Tagged {
                        tag: tag.clone(),
                        prefetch: c.lookahead_prefetch,
                        unacked: 0,
                        held: VecDeque::new(),
                    };
                    ch.consumer_tags.insert((queue, consumer), tagged);
                }
                if !nowait {
                    self.wire
                        .method(id, &BasicConsumeOk { consumer_tag: tag }.into());
                }
                self.resume();
            }
            ChannelReply::CancelOk { tag } => {
                ch.forget_consumer(tag.as_str(), &mut self.effects);
                self.wire
                    .method(id, &BasicCancelOk { consumer_tag: tag }.into());
                self.resume();
            }
            ChannelReply::GetEmpty => {
                self.wire.method(id, &BasicGetEmpty {}.into());
                self.resume();
            }
            ChannelReply::PurgeOk {
                message_count,
                nowait,
            } => {
                if !nowait {
                    self.wire.method(id, &QueuePurgeOk { message_count }.into());
                }
                self.resume();
            }
            ChannelReply::Meta(Ok(method)) => {
                if let Method::QueueDeclareOk(ok) = &method {
                    ch.last_queue = Some(ok.queue.clone());
                }
                if !ch.waiting_nowait {
                    self.wire.method(id, &method);
                }
                ch.awaiting_meta = false;
                if self.capabilities.consumer_cancel_notify {
                    for tag in ch.cancels_after_meta.drain(..) {
                        self.wire.method(
                            id,
                            &BasicCancel {
                                consumer_tag: tag,
                                nowait: true,
                            }
                            .into(),
                        );
                    }
                }
                ch.cancels_after_meta.clear();
                self.resume();
            }
            ChannelReply::Meta(Err(error)) | ChannelReply::Error(error) => {
                ch.awaiting_meta = false;
                ch.cancels_after_meta.clear();
                if let Some(tag) = ch.pending_consumer.take() {
                    ch.forget_consumer(tag.as_str(), &mut self.effects);
                }
                let error = if error.class_id == 0 {
                    error.with_method(ch.method_ids.0, ch.method_ids.1)
                } else {
                    error
                };
                self.resume();
                self.fail(id, error, now);
            }
            ChannelReply::ConsumerCancelled { tag } => {
                if ch
                    .forget_consumer(tag.as_str(), &mut self.effects)
                    .is_some()
                {
                    if ch.awaiting_meta {
                        ch.cancels_after_meta.push(tag);
                    } else if self.capabilities.consumer_cancel_notify {
                        self.wire.method(
                            id,
                            &BasicCancel {
                                consumer_tag: tag,
                                nowait: true,
                            }
                            .into(),
                        );
                    }
                }
            }
        }
        None
    }

    /// Writes a delivery to its channel. Returns it if the channel or the
    /// consumer is gone, so the shard can put the message back.
    pub(crate) fn deliver(&mut self, delivery: Delivery) -> Option<Delivery> {
        if delivery.message_count.is_some() {
            match self.channels.get(&delivery.head.channel) {
                Some(ch) if !ch.closing => {}
                _ => return Some(delivery),
            }
            self.write_get_ok(delivery);
            self.resume();
            return None;
        }
        match self.write_to_consumer(&delivery.head, &delivery.message, true) {
            Consumed::Written => None,
            Consumed::Held => {
                self.hold(delivery);
                None
            }
            Consumed::Limited => {
                self.give_back(&delivery.head);
                None
            }
            Consumed::Gone => Some(delivery),
        }
    }

    /// Keeps a delivery sent ahead of the client's acks until they make
    /// room (`write_to_consumer` said `Held`).
    fn hold(&mut self, delivery: Delivery) {
        let head = &delivery.head;
        let tagged = self
            .channels
            .get_mut(&head.channel)
            .and_then(|ch| ch.consumer_tags.get_mut(&(head.queue, head.consumer)));
        if let Some(tagged) = tagged {
            tagged.held.push_back(delivery);
        }
    }

    /// `deliver` for a message the queue keeps until the ack, written from
    /// the queue's copy. Gone if the channel or consumer is gone: the caller
    /// returns the message to its queue. Limited if the channel is at its
    /// global prefetch: the caller, which holds the queue, hands the message
    /// to `deliver` afterwards, which gives it back.
    pub(crate) fn deliver_kept(&mut self, head: &DeliveryHead, message: &Message) -> Consumed {
        // A local queue sends nothing ahead (`ConsumerSpec::lookahead`).
        self.write_to_consumer(head, message, false)
    }

    /// True if the connection has work for the shard to carry out.
    pub(crate) fn has_effects(&self) -> bool {
        self.effect_count() > 0
    }

    /// Writes a consumer's delivery, with one lookup of the channel and one
    /// of the consumer tag: the path of every message a consumer receives.
    /// `may_hold`: the caller owns the delivery and keeps it at the
    /// channel if the answer is `Held`.
    fn write_to_consumer(
        &mut self,
        head: &DeliveryHead,
        message: &Message,
        may_hold: bool,
    ) -> Consumed {
        let Some(ch) = self.channels.get_mut(&head.channel) else {
            return Consumed::Gone;
        };
        if ch.closing {
            return Consumed::Gone;
        }
        let at_channel_prefetch = ch.at_channel_prefetch();
        let Some(tagged) = ch.consumer_tags.get_mut(&(head.queue, head.consumer)) else {
            return Consumed::Gone;
        };
        if !head.no_ack && at_channel_prefetch {
            return Consumed::Limited;
        }
        if tagged.prefetch > 0 && !head.no_ack {
            // Sent ahead: it waits for room under the prefetch, behind
            // those already waiting.
            if may_hold && (tagged.unacked >= tagged.prefetch || !tagged.held.is_empty()) {
                return Consumed::Held;
            }
            tagged.unacked += 1;
        }
        let delivery_tag = take_delivery_tag(
            &mut ch.next_delivery_tag,
            &mut ch.consumer_unacked,
            &mut ch.unacked,
            head,
        );
        self.wire.deliver(
            head.channel,
            tagged.tag.as_bytes(),
            delivery_tag,
            head.redelivered,
            message,
        );
        if self.tracing {
            self.trace_delivery(head, message);
        }
        Consumed::Written
    }

    /// Hands a publish to the firehose tracer (`trace`).
    fn trace_publish(&mut self, channel: u16, message: &Message) {
        use crate::broker::trace::{traced, Trace, TraceKind};
        if !traced(message) {
            return;
        }
        let routed = self.routed.queues.iter().map(|q| q.id).collect();
        let trace = Trace {
            kind: TraceKind::Publish { routed },
            vhost: self.vhost.clone(),
            channel,
            connection: self.name.clone(),
            user: self.user.clone(),
            message: message.clone(),
        };
        self.effects
            .push((self.conn.shard, ShardMsg::Trace(Box::new(trace))));
    }

    /// Hands a delivery to the firehose tracer (`trace`).
    fn trace_delivery(&mut self, head: &DeliveryHead, message: &Message) {
        use crate::broker::trace::{traced, Trace, TraceKind};
        if !traced(message) {
            return;
        }
        let trace = Trace {
            kind: TraceKind::Deliver {
                queue: head.queue.id,
                redelivered: head.redelivered,
            },
            vhost: self.vhost.clone(),
            channel: head.channel,
            connection: self.name.clone(),
            user: self.user.clone(),
            message: message.clone(),
        };
        self.effects
            .push((self.conn.shard, ShardMsg::Trace(Box::new(trace))));
    }

    /// The channel's global prefetch is reached: the delivery goes back to
    /// its queue, to the head, for any consumer with room (RabbitMQ's queue
    /// asks the channel's limiter before it delivers, with the same effect),
    /// and its consumer waits for `resume_limited`.
    fn give_back(&mut self, head: &DeliveryHead) {
        let Some(ch) = self.channels.get_mut(&head.channel) else {
            return;
        };
        let consumer = (head.queue, head.consumer);
        if !ch.limited.contains(&consumer) {
            ch.limited.push(consumer);
        }
        self.effects.push((
            head.queue.shard,
            ShardMsg::Settle {
                queue: head.queue.id,
                seq: head.seq,
                consumer: head.consumer,
                settle: Settle::Return,
            },
        ));
    }

    /// A basic.get's answer with its message.
    fn write_get_ok(&mut self, delivery: Delivery) {
        let Some(ch) = self.channels.get_mut(&delivery.head.channel) else {
            return;
        };
        let delivery_tag = take_delivery_tag(
            &mut ch.next_delivery_tag,
            &mut ch.consumer_unacked,
            &mut ch.unacked,
            &delivery.head,
        );
        let get_ok = BasicGetOk {
            delivery_tag,
            redelivered: delivery.head.redelivered,
            exchange: delivery.message.exchange_name(),
            routing_key: delivery.message.routing_key_name(),
            message_count: delivery.message_count.unwrap_or(0),
        };
        let message = &delivery.message;
        self.wire.content_of(
            delivery.head.channel,
            &get_ok,
            &message.properties(),
            &message.body,
        );
        if self.tracing {
            self.trace_delivery(&delivery.head, &delivery.message);
        }
    }

    /// Writes held deliveries while the channel's prefetch allows.
    /// Below its global prefetch again, the channel resumes the consumers
    /// whose queues it gave deliveries back to.
    fn resume_limited(&mut self, id: u16) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if ch.limited.is_empty() || ch.at_channel_prefetch() {
            return;
        }
        for (queue, consumer) in ch.limited.drain(..) {
            self.effects.push((
                queue.shard,
                ShardMsg::ConsumerResume {
                    queue: queue.id,
                    consumer,
                },
            ));
        }
    }

    /// True if the channel has confirms ready to send. A transactional
    /// publish's answer counts down its commit instead.
    pub(crate) fn confirm_resolved(&mut self, channel: u16, seq: u64, accepted: bool) -> bool {
        if seq == ConfirmTarget::TX_COMMIT {
            let Some(ch) = self.channels.get_mut(&channel) else {
                return false;
            };
            if ch.tx_commit_waiting > 0 {
                ch.tx_commit_waiting -= 1;
                ch.tx_commit_refused |= !accepted;
                if ch.tx_commit_waiting == 0 {
                    if std::mem::take(&mut ch.tx_commit_refused) {
                        let error = AmqpError::precondition_failed("partial tx completion")
                            .with_method(90, 20);
                        // A soft error: `now` only dates a connection close.
                        self.fail(channel, error, Instant::now());
                    } else {
                        self.wire.method(channel, &TxCommitOk {}.into());
                    }
                    self.resume();
                }
            }
            return false;
        }
        self.channels
            .get_mut(&channel)
            .and_then(|ch| ch.confirms.as_mut())
            .is_some_and(|c| c.resolve(seq, accepted))
    }

    /// Sends basic.ack (coalesced with `multiple`) and basic.nack for every
    /// publish at the front of the channel's confirm queue that is complete.
    pub(crate) fn flush_confirms(&mut self, channel: u16) {
        let Some(confirms) = self
            .channels
            .get_mut(&channel)
            .and_then(|ch| ch.confirms.as_mut())
        else {
            return;
        };
        let mut run: Option<(u64, u64)> = None;
        while let Some(front) = confirms.pending.front() {
            if front.remaining > 0 {
                break;
            }
            let Some(done) = confirms.pending.pop_front() else {
                break;
            };
            if done.nacked {
                if let Some((first, last)) = run.take() {
                    write_ack(&mut self.wire, channel, first, last);
                }
                self.wire.method(
                    channel,
                    &BasicNack {
                        delivery_tag: done.seq,
                        multiple: false,
                        requeue: false,
                    }
                    .into(),
                );
            } else {
                self.counts.confirmed += 1;
                run = Some(match run {
                    Some((first, _)) => (first, done.seq),
                    None => (done.seq, done.seq),
                });
            }
        }
        if let Some((first, last)) = run {
            write_ack(&mut self.wire, channel, first, last);
        }
    }

    pub(crate) fn flush_all_confirms(&mut self) {
        let ready: Vec<u16> = self
            .channels
            .values()
            .filter(|ch| {
                ch.confirms
                    .as_ref()
                    .is_some_and(|c| c.pending.front().is_some_and(|p| p.remaining == 0))
            })
            .map(|ch| ch.id)
            .collect();
        for channel in ready {
            self.flush_confirms(channel);
        }
    }
}

fn write_ack(wire: &mut crate::broker::connection::Wire, channel: u16, first: u64, last: u64) {
    wire.method(
        channel,
        &BasicAck {
            delivery_tag: last,
            multiple: last > first,
        }
        .into(),
    );
}

/// What became of a consumer's delivery at its channel.
pub(crate) enum Consumed {
    Written,
    /// Sent ahead of the client's acks by a queue on another shard: the
    /// channel keeps it until the consumer's prefetch has room.
    Held,
    /// The channel's global prefetch is reached: the delivery goes back.
    Limited,
    /// The channel or the consumer is gone.
    Gone,
}

/// The deliveries a queue on another shard may send a consumer beyond its
/// prefetch (`config::REMOTE_LOOKAHEAD_FACTOR`).
fn remote_lookahead(prefetch_count: u32) -> u32 {
    if prefetch_count < crate::config::REMOTE_LOOKAHEAD_PREFETCH_MIN {
        return 0;
    }
    prefetch_count
        .saturating_mul(crate::config::REMOTE_LOOKAHEAD_FACTOR)
        .min(crate::config::REMOTE_LOOKAHEAD_MAX)
}

/// The delivery tag of a message written now, recorded for its ack. Takes
/// the channel's fields, not the channel, so that the caller can hold the
/// consumer tag it borrowed from the same channel.
fn take_delivery_tag(
    next_delivery_tag: &mut u64,
    consumer_unacked: &mut u32,
    unacked: &mut VecDeque<Unacked>,
    delivery: &DeliveryHead,
) -> u64 {
    let delivery_tag = *next_delivery_tag;
    *next_delivery_tag += 1;
    if !delivery.no_ack {
        if delivery.consumer != ConsumerId::GET {
            *consumer_unacked += 1;
        }
        unacked.push_back(Unacked {
            delivery_tag,
            queue: delivery.queue,
            seq: delivery.seq,
            consumer: delivery.consumer,
        });
    }
    delivery_tag
}

fn settle_msg(u: &Unacked, settle: Settle) -> (ShardId, ShardMsg) {
    (
        u.queue.shard,
        ShardMsg::Settle {
            queue: u.queue.id,
            seq: u.seq,
            consumer: u.consumer,
            settle,
        },
    )
}

/// Where an ack, nack or reject's deliveries sit in the channel's unacked
/// ones, resolved as RabbitMQ's collect_acks does: the tag must be
/// outstanding; `multiple` also takes every older one; tag 0 with
/// `multiple` takes all.
fn collect_acks(
    ch: &Channel,
    delivery_tag: u64,
    multiple: bool,
) -> Result<std::ops::Range<usize>, AmqpError> {
    if multiple && delivery_tag == 0 {
        return Ok(0..ch.unacked.len());
    }
    let at = ch
        .unacked
        .binary_search_by_key(&delivery_tag, |u| u.delivery_tag)
        .map_err(|_| {
            AmqpError::precondition_failed(format!("unknown delivery tag {}", delivery_tag))
        })?;
    Ok(if multiple { 0..at + 1 } else { at..at + 1 })
}

/// Settles deliveries taken from a channel: one message per run of
/// deliveries from the same queue and consumer, not one per delivery, so a
/// multiple ack of 50 is one mailbox entry and one dispatch at the queue.
fn settle_runs(
    effects: &mut Vec<(ShardId, ShardMsg)>,
    consumer_unacked: &mut u32,
    consumer_tags: &mut FastMap<(QueueRef, ConsumerId), Tagged>,
    taken: impl Iterator<Item = Unacked>,
    settle: Settle,
) {
    let mut run: Option<(Unacked, Vec<u64>)> = None;
    for u in taken {
        if u.consumer != ConsumerId::GET {
            *consumer_unacked = consumer_unacked.saturating_sub(1);
        }
        match &mut run {
            Some((first, seqs)) if first.queue == u.queue && first.consumer == u.consumer => {
                seqs.push(u.seq)
            }
            _ => {
                if let Some(done) = run.take() {
                    effects.push(settle_run(done, settle, consumer_tags));
                }
                run = Some((u, Vec::new()));
            }
        }
    }
    if let Some(done) = run {
        effects.push(settle_run(done, settle, consumer_tags));
    }
}

/// A run of deliveries of one queue to one consumer, settled alike.
fn settle_run(
    (first, more): (Unacked, Vec<u64>),
    settle: Settle,
    consumer_tags: &mut FastMap<(QueueRef, ConsumerId), Tagged>,
) -> (ShardId, ShardMsg) {
    if first.consumer != ConsumerId::GET {
        if let Some(tagged) = consumer_tags.get_mut(&(first.queue, first.consumer)) {
            tagged.settled(1 + more.len() as u32);
        }
    }
    if more.is_empty() {
        return settle_msg(&first, settle);
    }
    (
        first.queue.shard,
        ShardMsg::SettleMany {
            queue: first.queue.id,
            first: first.seq,
            more,
            consumer: first.consumer,
            settle,
        },
    )
}

/// A routed message goes to its queue's shard now, or waits for the
/// commit of the channel's transaction.
fn hand_over(
    tx: Option<&mut Vec<TxOp>>,
    effects: &mut Vec<(ShardId, ShardMsg)>,
    shard: ShardId,
    msg: ShardMsg,
) {
    match tx {
        Some(ops) => ops.push(TxOp::Publish(shard, msg)),
        None => effects.push((shard, msg)),
    }
}

/// What basic.publish requires of its exchange: that it exists and is not
/// internal.
pub(crate) fn check_publish_exchange(env: &Env, name: &str) -> Result<(), AmqpError> {
    match env.vhost.exchanges.get(name) {
        None => Err(no_exchange(name)),
        Some(exchange) if exchange.def.internal => Err(internal_exchange(name)),
        Some(_) => Ok(()),
    }
}

fn internal_exchange(name: &str) -> AmqpError {
    AmqpError::access_refused(format!(
        "cannot publish to internal exchange '{}' in vhost '/'",
        name
    ))
}

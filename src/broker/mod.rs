//! AMQP semantics on one shard: connections and channels, the replica of the
//! definitions, the queues this shard owns, and the messages shards send each
//! other. Everything here is synchronous and performs no I/O: the tasks in
//! `shard/` and `net/` feed bytes and mailbox batches in, and drain socket
//! output and outgoing batches.
//!
//! Work that crosses shards is a `ShardMsg`. A message addressed to this
//! shard goes through the same path as one from a peer (the `local` queue),
//! so local and remote queues behave identically, in the same order; only
//! `runs_now` lets such work skip that queue, when nothing waits in it.
//! Queue operations get the queue's context and the sink their deliveries
//! go to from `queue_parts`, through `with_queue` for one queue.
//!
//! It imports `store`, `metadata`, `config`, `model`, `util` and the codec,
//! never `net` or `shard` (tests/layers.rs keeps it so).
//!
//! Flow control lives here too, as credit per queue: a publisher into a
//! local queue its consumers do not keep up with waits (`in_flow`,
//! `FlowWait`); one into another shard's queue spends that queue's credit,
//! which the queue's shard grants back per mailbox batch and holds while
//! that queue outpaces its consumers (`ShardMsg::Credit`, `handle_batch`).
//! Deliveries on their way to a consumer on another shard are bounded and
//! counted the same way (`ShardMsg::Delivered`).

pub(crate) mod channel;
pub(crate) mod connection;
pub mod control;
mod dead_letter;
pub mod delayed;
mod direct_reply_to;
pub mod exchange;
pub(crate) mod login_delay;
pub(crate) mod metadata;
pub mod metrics;
pub(crate) mod outbox;
pub mod queue;
pub mod sender_selected;
pub mod timers;
pub mod trace;
pub(crate) mod vhost;

use std::collections::VecDeque;

use crate::util::hash::FastMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::model::alarms::{AlarmBoard, AlarmSet};

use crate::config::Config;
use crate::metadata::auth::{self as metadata_auth, Users};
use crate::metadata::policy;
use crate::metadata::vhost::MetaChange;
use crate::model::ids::{ConnId, ConnRef, ConsumerId, QueueId, QueueRef, ShardId};
use crate::model::message::Message;
use crate::store::log::MessageStore;
use crate::store::recovery::RecoveredQueue;
use crate::util::signal::{Notify, OneshotSender};
use connection::{Connection, LocalPublish};
use delayed::{DelayedPublish, Held};
use metadata::{MetaReply, MetaRequest, RpcReply, RpcRequest, Scope};
use outbox::Outbox;
use queue::{
    ConsumerSpec, DeadLetter, Delivery, DeliveryHead, DeliverySink, Enqueued, Queue, QueueCtx,
    Settle,
};
use timers::{TimerEvent, Timers};
use vhost::Vhost;
use warren_protocol::{AmqpError, ShortStr};

/// Where a publisher confirm goes back to.
#[derive(Clone, Copy, Debug)]
pub struct ConfirmTarget {
    pub conn: ConnRef,
    pub channel: u16,
    /// The publish's sequence number, or `TX_COMMIT` for a publish of a
    /// transaction's commit (a channel is never in both modes).
    pub publish_seq: u64,
}

impl ConfirmTarget {
    /// The `publish_seq` of a committed transactional publish: tx.commit-ok
    /// waits until every one of them is in its queue (and, if stored, on
    /// disk). Confirm sequence numbers start at 1, so 0 is free.
    pub(crate) const TX_COMMIT: u64 = 0;
}

/// What a paused or waiting channel hears back from another shard (or from
/// its own, through the same path).
#[derive(Debug)]
pub enum ChannelReply {
    ConsumeOk {
        tag: ShortStr,
        queue: QueueRef,
        consumer: ConsumerId,
        nowait: bool,
    },
    /// The queue let the consumer go: cancel-ok may be sent.
    CancelOk {
        tag: ShortStr,
    },
    GetEmpty,
    PurgeOk {
        message_count: u32,
        nowait: bool,
    },
    Meta(Result<MetaReply, AmqpError>),
    /// A request failed: the channel (or connection) closes with this error.
    Error(AmqpError),
    /// The broker cancelled a consumer (its queue was deleted).
    ConsumerCancelled {
        tag: ShortStr,
    },
}

/// The one type that travels between shards.
#[derive(Debug)]
pub enum ShardMsg {
    Enqueue {
        queue: QueueId,
        message: Message,
        confirm: Option<ConfirmTarget>,
    },
    Deliver(Delivery),
    /// A message for a delayed exchange to hold, sent by a channel to its
    /// own shard. Boxed: it is rare and larger than the common messages.
    Delay(Box<DelayedPublish>),
    /// A publish or delivery for the firehose tracer, sent by a connection
    /// to its own shard (`trace`). Boxed: rare, and only while tracing.
    Trace(Box<trace::Trace>),
    Settle {
        queue: QueueId,
        seq: u64,
        consumer: ConsumerId,
        settle: Settle,
    },
    /// A consumer's channel has room under its global prefetch again: the
    /// queue delivers to the consumer once more (after `Settle::Return`).
    ConsumerResume {
        queue: QueueId,
        consumer: ConsumerId,
    },
    /// Several deliveries of one queue to one consumer, settled alike (a
    /// multiple ack).
    SettleMany {
        queue: QueueId,
        first: u64,
        more: Vec<u64>,
        consumer: ConsumerId,
        settle: Settle,
    },
    Confirm {
        target: ConfirmTarget,
        accepted: bool,
    },
    Consume {
        queue: QueueId,
        spec: ConsumerSpec,
        nowait: bool,
    },
    /// The consumer's connection has more output than it may hold
    /// (`full`), or has written it down again: the queue stops or restarts
    /// handing the consumer messages.
    ConsumerOutput {
        queue: QueueId,
        consumer: ConsumerId,
        full: bool,
    },
    Cancel {
        queue: QueueId,
        conn: ConnRef,
        channel: u16,
        tag: ShortStr,
        /// Send cancel-ok back once the queue has let the consumer go.
        answer: bool,
    },
    Get {
        queue: QueueId,
        conn: ConnRef,
        channel: u16,
        no_ack: bool,
    },
    Purge {
        queue: QueueId,
        conn: ConnRef,
        channel: u16,
        nowait: bool,
    },
    ToChannel {
        conn: ConnId,
        channel: u16,
        reply: ChannelReply,
    },
    /// A definitions change for the metadata owner (shard 0) to serialise;
    /// `scope` names the vhost and user of a client's request. Boxed: a
    /// declare is rare next to the messages of the data path, which would
    /// otherwise all take its size.
    Meta {
        from: Option<(ConnRef, u16)>,
        scope: Option<Box<Scope>>,
        request: Box<MetaRequest>,
    },
    Rpc {
        from: ShardId,
        id: u64,
        request: RpcRequest,
    },
    RpcReply {
        id: u64,
        reply: RpcReply,
    },
    /// A direct reply-to reply for channel `channel` of connection `conn` on
    /// the receiving shard, if it still consumes replies under `secret`.
    DirectReply {
        conn: ConnId,
        channel: u16,
        secret: ShortStr,
        message: Message,
    },
    /// queue.declare of a direct reply-to token, answered to `from`'s
    /// channel by the shard of the token's connection.
    DirectReplyDeclare {
        conn: ConnId,
        channel: u16,
        secret: ShortStr,
        queue: ShortStr,
        from: ConnRef,
        from_channel: u16,
    },
    /// Flow control across shards: the sending shard's queues took
    /// enqueues worth this much credit (`flow_credit_cost`) of those this
    /// shard sent them, and do not outpace their consumers; this shard may
    /// spend it again (`ShardState::credit`). One per mailbox batch, never
    /// per message.
    Credit {
        grants: Vec<(QueueId, u32)>,
    },
    /// Deliveries of a queue to its consumer on another shard arrived
    /// there (written, or given back): `bytes` of them no longer count
    /// against the consumer's transit bound (`Queue::delivered`). One per
    /// consumer and mailbox batch.
    Delivered {
        queue: QueueId,
        consumer: ConsumerId,
        bytes: u64,
    },
}

// Everything that crosses shards must be Send; this fails to compile if a
// shard-local type (an Rc, a Notify) ever slips into a ShardMsg.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<ShardMsg>();
};

/// A metadata request waiting for the owner: where it came from, the
/// client's scope, the request, and the control plane's reply when it came
/// from there.
pub(crate) type MetaQueued = (
    Option<(ConnRef, u16)>,
    Option<Box<Scope>>,
    MetaRequest,
    Option<control::ReplyFn>,
);

/// Requests waiting for the metadata owner's task, on shard 0 only.
#[derive(Default)]
pub(crate) struct MetaInbox {
    /// Each from a channel, or from the control plane (with its reply).
    pub(crate) requests: VecDeque<MetaQueued>,
    pub(crate) notify: Notify,
}

pub(crate) struct ShardState {
    pub(crate) id: ShardId,
    pub(crate) shard_count: usize,
    pub(crate) config: Rc<Config>,
    /// The access-control database (users, vhosts, permissions), as the
    /// metadata owner last changed it.
    pub(crate) users: Rc<Users>,
    /// Each vhost's replica, by name.
    pub(crate) vhosts: FastMap<ShortStr, Vhost>,
    /// What a connection sees before it opens a vhost, or after its vhost
    /// was deleted and before it is closed: the default exchanges only.
    no_vhost: Vhost,
    pub(crate) queues: FastMap<QueueId, Queue>,
    pub(crate) connections: FastMap<ConnId, Connection>,
    pub(crate) now: Instant,
    /// Outgoing batches, one per peer shard (this shard's own slot stays empty).
    pub(crate) outbox: Vec<Outbox>,
    /// Set when an outbox has something; the shard's flusher waits on it.
    pub(crate) outbox_ready: Notify,
    local: VecDeque<ShardMsg>,
    /// Deliveries a queue could not write at once (`ShardDeliveries`).
    deliveries: Vec<Delivery>,
    /// Deliveries whose channel or consumer was gone: back to their queue.
    bounced: Vec<Delivery>,
    confirm_dirty: Vec<(ConnId, u16)>,
    pub(crate) timers: Timers,
    /// The shard's message log: persistent messages of durable queues.
    pub(crate) store: MessageStore<ConfirmTarget>,
    /// basic.gets waiting for their queue's head to be read back from
    /// the store: (queue, connection, channel, no_ack), in arrival order.
    gets_paging: Vec<(QueueId, ConnRef, u16, bool)>,
    dead_letters: Vec<DeadLetter>,
    /// Queues whose dead-letter cycle was logged: once each, as RabbitMQ does.
    dead_letter_cycles_logged: crate::util::hash::FastSet<ShortStr>,
    /// Messages held by delayed exchanges, by the id their timer carries.
    delayed: FastMap<u64, Held>,
    /// The bytes of the messages in `delayed`, for the memory alarm.
    delayed_bytes: u64,
    /// Connections whose output just went over its bound: their consumers
    /// are stopped at the end of the turn (`stop_filled_consumers`).
    output_filled: Vec<ConnId>,
    next_delayed_id: u64,
    next_conn_id: u64,
    next_rpc_id: u64,
    rpc_pending: FastMap<u64, OneshotSender<RpcReply>>,
    pub(crate) meta_inbox: MetaInbox,
    /// True while some outbox is over its limit: readers stop reading (they
    /// look again every tick).
    pub(crate) backpressure: bool,
    /// The node's resource alarms as this shard last read them.
    pub(crate) alarms: AlarmSet,
    /// Where shards publish their memory use and read the alarm state.
    pub(crate) alarm_board: Arc<AlarmBoard>,
    /// Connections in flow: waiting for a queue of this shard to drain.
    flow: Vec<FlowWait>,
    /// Flow control across shards, sending side: the enqueues this shard
    /// may still send each queue of another shard before its publishers
    /// into that queue wait (`config::FLOW_CREDIT` to start with, less
    /// `flow_credit_cost` per enqueue;
    /// below zero by at most what the publishers read in the turn that
    /// used the last).
    credit: FastMap<QueueId, i64>,
    /// Publishing connections waiting for credit for a queue of a peer.
    credit_waits: Vec<(ConnId, QueueId)>,
    /// Flow control across shards, receiving side: the credit of the
    /// enqueues taken from each peer (indexed by shard), per queue, not yet
    /// granted back.
    credit_owed: Vec<FastMap<QueueId, u32>>,
    /// Queues of this shard that outpace their consumers: no credit goes
    /// back for them to any peer until they drain (or their consumers
    /// stall); the other queues' credit goes back as usual.
    credit_held: Vec<CreditHold>,
    /// Deliveries from peers' queues that arrived in the batch being
    /// handled, per consumer: reported back at its end (`Delivered`).
    arrived: Vec<(QueueRef, ConsumerId, u64)>,
    /// Addresses whose logins failed lately, and when they are next answered.
    login_delays: std::cell::RefCell<login_delay::LoginDelays>,
    /// Messages published by this shard's connections that have closed
    /// (the open ones count their own), for the management API.
    pub(crate) published_by_closed: u64,
    /// The shard's own figures for Prometheus (`metrics`).
    pub(crate) counters: metrics::ShardCounters,
    /// `warren@HOST`, for the firehose's `node` header.
    pub(crate) node_name: String,
    /// The trace log files fed by this shard's firehose (`trace`).
    pub(crate) file_traces: trace::FileTraces,
}

/// Whether work made on shard `this` for shard `target` runs now, or
/// queues behind the local work waiting in `local`: the one place that
/// decides. Local work runs in the order it was made; with none waiting,
/// work for this shard would be next anyway, so it runs at once, which
/// spares two moves of the message on the busiest path. Behind local work
/// it waits its turn: a delivery must reach its channel after any reply
/// sent before it (a consume-ok precedes the consumer's first delivery).
/// Work for another shard always goes through its mailbox.
fn runs_now(this: ShardId, local: &VecDeque<ShardMsg>, target: ShardId) -> bool {
    target == this && local.is_empty()
}

/// Where a queue on this shard hands its deliveries: a consumer on this
/// shard is written to at once, from the queue's copy of the message, so
/// that a delivery costs no clone of the message and no move of it. A
/// consumer elsewhere, or one whose delivery must wait behind local work
/// (a consume-ok precedes the consumer's first delivery), gets an owned
/// delivery, sent on afterwards.
struct ShardDeliveries<'a> {
    shard: ShardId,
    /// Local work waiting (see `runs_now`).
    local: &'a VecDeque<ShardMsg>,
    connections: &'a mut FastMap<ConnId, Connection>,
    later: &'a mut Vec<Delivery>,
    /// Deliveries whose channel or consumer was gone: back to the queue.
    bounced: &'a mut Vec<Delivery>,
    /// Connections a delivery took over their output bound.
    filled: &'a mut Vec<ConnId>,
}

impl DeliverySink for ShardDeliveries<'_> {
    fn kept(&mut self, head: DeliveryHead, message: &Message) {
        if !runs_now(self.shard, self.local, head.conn.shard) {
            self.later.push(head.with(message.clone()));
            return;
        }
        let consumed = match self.connections.get_mut(&head.conn.conn) {
            Some(connection) => {
                let consumed = connection.deliver_kept(&head, message);
                if connection.output_filled() {
                    self.filled.push(head.conn.conn);
                }
                consumed
            }
            None => channel::Consumed::Gone,
        };
        match consumed {
            channel::Consumed::Written => {}
            // Given back by `deliver` once the queue is free again.
            // Never `Held` here: a queue of this shard sends nothing ahead.
            channel::Consumed::Limited | channel::Consumed::Held => {
                self.later.push(head.with(message.clone()))
            }
            channel::Consumed::Gone => self.bounced.push(head.with(message.clone())),
        }
    }

    fn given(&mut self, head: DeliveryHead, message: Message) {
        if !runs_now(self.shard, self.local, head.conn.shard) {
            self.later.push(head.with(message));
            return;
        }
        // A message no ack was asked for is dropped if its consumer is
        // gone, as `bounce` would.
        if let Some(connection) = self.connections.get_mut(&head.conn.conn) {
            connection.deliver(head.with(message));
            if connection.output_filled() {
                self.filled.push(head.conn.conn);
            }
        }
    }
}

impl ShardState {
    pub(crate) fn new(
        id: ShardId,
        shard_count: usize,
        config: Rc<Config>,
        users: Rc<Users>,
        alarm_board: Arc<AlarmBoard>,
    ) -> Self {
        let segment_size = config.segment_size;
        ShardState {
            id,
            shard_count,
            config,
            vhosts: users
                .vhosts()
                .map(|v| (ShortStr::from(v.name.clone()), Vhost::new()))
                .collect(),
            users,
            no_vhost: Vhost::new(),
            queues: FastMap::default(),
            connections: FastMap::default(),
            now: Instant::now(),
            outbox: (0..shard_count)
                .map(|_| Outbox::new(Instant::now()))
                .collect(),
            outbox_ready: Notify::new(),
            local: VecDeque::new(),
            deliveries: Vec::new(),
            bounced: Vec::new(),
            confirm_dirty: Vec::new(),
            timers: Timers::new(),
            store: MessageStore::new(segment_size, &[]),
            gets_paging: Vec::new(),
            dead_letters: Vec::new(),
            dead_letter_cycles_logged: Default::default(),
            delayed: FastMap::default(),
            delayed_bytes: 0,
            output_filled: Vec::new(),
            next_delayed_id: 1,
            next_conn_id: 1,
            next_rpc_id: 1,
            rpc_pending: FastMap::default(),
            meta_inbox: MetaInbox::default(),
            backpressure: false,
            flow: Vec::new(),
            credit: FastMap::default(),
            credit_waits: Vec::new(),
            credit_owed: (0..shard_count).map(|_| FastMap::default()).collect(),
            credit_held: Vec::new(),
            arrived: Vec::new(),
            login_delays: Default::default(),
            published_by_closed: 0,
            counters: metrics::ShardCounters::default(),
            node_name: crate::util::node::name(),
            file_traces: trace::FileTraces::default(),
            alarms: alarm_board.raised(),
            alarm_board,
        }
    }

    pub(crate) fn next_conn_id(&mut self) -> ConnId {
        let id = ConnId(self.next_conn_id);
        self.next_conn_id += 1;
        id
    }

    pub(crate) fn conn_ref(&self, conn: ConnId) -> ConnRef {
        ConnRef {
            shard: self.id,
            conn,
        }
    }

    /// Sends a message to a shard; to this one, it runs at the end of the turn.
    pub(crate) fn send(&mut self, shard: ShardId, msg: ShardMsg) {
        self.send_spending(shard, msg);
    }

    /// `send`, which also says whether the message was an enqueue into a
    /// queue of another shard that has spent its queue's last credit (its
    /// publisher waits): one lookup of the credit per publish.
    fn send_spending(&mut self, shard: ShardId, msg: ShardMsg) -> Option<QueueId> {
        if shard == self.id {
            self.local.push_back(msg);
            return None;
        }
        let mut spent = None;
        if let ShardMsg::Enqueue { queue, message, .. } = &msg {
            let credit = self
                .credit
                .entry(*queue)
                .or_insert(crate::config::FLOW_CREDIT);
            *credit -= i64::from(flow_credit_cost(message));
            if *credit <= 0 {
                spent = Some(*queue);
            }
        }
        if self.outbox[shard.index()].push(msg) {
            self.outbox_ready.notify();
        }
        spent
    }

    /// See `runs_now`.
    fn runs_now(&self, shard: ShardId) -> bool {
        runs_now(self.id, &self.local, shard)
    }

    pub(crate) fn send_meta(&mut self, from: Option<(ConnRef, u16)>, request: MetaRequest) {
        self.send(
            ShardId(0),
            ShardMsg::Meta {
                from,
                scope: None,
                request: Box::new(request),
            },
        );
    }

    /// Starts an RPC to a shard; the reply arrives through `rpc_pending`.
    pub(crate) fn start_rpc(
        &mut self,
        shard: ShardId,
        request: RpcRequest,
        reply: OneshotSender<RpcReply>,
    ) {
        if shard == self.id {
            let answer = self.handle_rpc(request);
            reply.send(answer);
            self.run_local();
            return;
        }
        let id = self.next_rpc_id;
        self.next_rpc_id += 1;
        self.rpc_pending.insert(id, reply);
        let from = self.id;
        self.send(shard, ShardMsg::Rpc { from, id, request });
    }

    /// Handles a batch from a peer shard, then everything it caused
    /// locally. The peer's enqueues are granted back as credit at once,
    /// queue by queue, except for the queues of this shard that outpace
    /// their consumers: their credit waits until they drain.
    ///
    /// Unlike a local publisher, one on another shard could not be told
    /// to wait by the queue itself: credit is how it is held, and only
    /// the publishers into the held queue are. Consumers that take nothing
    /// for `FLOW_STALL` slow no publisher (`release_credit_holds`).
    ///
    /// Deliveries from the peer's queues are reported arrived at the end,
    /// after anything the batch caused (a consumer's connection filling up
    /// stops the consumer first, through the same mailbox).
    pub(crate) fn handle_batch(&mut self, peer: ShardId, mut batch: Vec<ShardMsg>) {
        // Enqueues into one queue in a row, counted once per run.
        let mut run: Option<(QueueId, u32)> = None;
        for msg in batch.drain(..) {
            match msg {
                ShardMsg::Enqueue {
                    queue,
                    message,
                    confirm,
                } => {
                    let cost = flow_credit_cost(&message);
                    match &mut run {
                        Some((q, n)) if *q == queue => *n += cost,
                        _ => {
                            if let Some((q, n)) = run.replace((queue, cost)) {
                                *self.credit_owed[peer.index()].entry(q).or_insert(0) += n;
                            }
                        }
                    }
                    if let Some(deliveries) = self.enqueue(queue, message, confirm) {
                        self.hold_credit(queue, deliveries);
                    }
                }
                ShardMsg::Deliver(delivery) => {
                    if delivery.head.consumer != ConsumerId::GET {
                        self.note_arrived(&delivery);
                    }
                    self.deliver(delivery);
                }
                msg => self.handle_msg(msg),
            }
        }
        if let Some((q, n)) = run {
            *self.credit_owed[peer.index()].entry(q).or_insert(0) += n;
        }
        self.outbox[peer.index()].recycle(batch);
        self.grant_credit();
        self.run_local();
        self.report_arrived();
    }

    /// A delivery from a peer's queue arrived (see `Queue::delivered`).
    fn note_arrived(&mut self, delivery: &Delivery) {
        let (queue, consumer) = (delivery.head.queue, delivery.head.consumer);
        let bytes = delivery.message.memory_size();
        match self
            .arrived
            .iter_mut()
            .rev()
            .find(|(q, c, _)| *q == queue && *c == consumer)
        {
            Some((_, _, sum)) => *sum += bytes,
            None => self.arrived.push((queue, consumer, bytes)),
        }
    }

    /// Tells the queues whose deliveries arrived in this batch: one
    /// message per consumer.
    fn report_arrived(&mut self) {
        if self.arrived.is_empty() {
            return;
        }
        let mut arrived = std::mem::take(&mut self.arrived);
        for (queue, consumer, bytes) in arrived.drain(..) {
            self.send(
                queue.shard,
                ShardMsg::Delivered {
                    queue: queue.id,
                    consumer,
                    bytes,
                },
            );
        }
        self.arrived = arrived;
    }

    /// A queue outpaces its consumers: its credit waits until it has drained.
    fn hold_credit(&mut self, queue: QueueId, deliveries: u64) {
        if !self.credit_held.iter().any(|h| h.queue == queue) {
            self.credit_held.push(CreditHold {
                queue,
                deliveries,
                progress_at: self.now,
            });
        }
    }

    /// Sends each peer the credit owed to it for the queues not held: one
    /// message per peer, listing the queues.
    fn grant_credit(&mut self) {
        for peer in 0..self.shard_count {
            if self.credit_owed[peer].is_empty() {
                continue;
            }
            let held = &self.credit_held;
            let mut grants = Vec::new();
            self.credit_owed[peer].retain(|&queue, &mut messages| {
                if held.iter().any(|h| h.queue == queue) {
                    return true;
                }
                grants.push((queue, messages));
                false
            });
            if !grants.is_empty() {
                self.send(ShardId(peer as u16), ShardMsg::Credit { grants });
            }
        }
    }

    /// A peer granted credit: the publishers that waited for it read again.
    fn credit_granted(&mut self, grants: Vec<(QueueId, u32)>) {
        for (queue, messages) in grants {
            // A queue deleted meanwhile has no entry any more.
            let Some(credit) = self.credit.get_mut(&queue) else {
                continue;
            };
            *credit += i64::from(messages);
            if *credit <= 0 {
                continue;
            }
            let connections = &self.connections;
            self.credit_waits.retain(|&(conn, waited)| {
                if waited != queue {
                    return true;
                }
                if let Some(connection) = connections.get(&conn) {
                    connection.reader.notify();
                }
                false
            });
        }
    }

    /// The tick lets holds go whose queue is gone or whose consumers took
    /// nothing for `FLOW_STALL` (stalled consumers slow no
    /// publisher, as in `release_flow_holds`, but a delivery's
    /// round trip through another shard can take longer than a tick on a
    /// loaded machine); then the credit they held goes back.
    fn release_credit_holds(&mut self) {
        if self.credit_held.is_empty() {
            return;
        }
        let now = self.now;
        let queues = &mut self.queues;
        let held = self.credit_held.len();
        self.credit_held.retain_mut(|hold| {
            let Some(q) = queues.get_mut(&hold.queue) else {
                return false;
            };
            if !q.outpaces_consumers_still() {
                return false;
            }
            if q.deliveries() != hold.deliveries {
                hold.deliveries = q.deliveries();
                hold.progress_at = now;
                return true;
            }
            if now.saturating_duration_since(hold.progress_at) < crate::config::FLOW_STALL {
                return true;
            }
            q.flow_waited_in_vain(hold.deliveries);
            false
        });
        if self.credit_held.len() != held {
            self.grant_credit();
        }
    }

    /// Runs messages this shard sent itself until none are left, then emits
    /// the publisher confirms that became due.
    pub(crate) fn run_local(&mut self) {
        loop {
            while let Some(msg) = self.local.pop_front() {
                self.handle_msg(msg);
            }
            if !self.output_filled.is_empty() {
                self.stop_filled_consumers();
                continue;
            }
            if self.dead_letters.is_empty() {
                break;
            }
            self.route_dead_letters();
        }
        if !self.confirm_dirty.is_empty() {
            let dirty = std::mem::take(&mut self.confirm_dirty);
            for (conn, channel) in &dirty {
                if let Some(connection) = self.connections.get_mut(conn) {
                    connection.flush_confirms(*channel);
                }
            }
            self.confirm_dirty = dirty;
            self.confirm_dirty.clear();
        }
    }

    fn handle_msg(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Enqueue {
                queue,
                message,
                confirm,
            } => {
                self.enqueue(queue, message, confirm);
            }
            ShardMsg::Deliver(delivery) => self.deliver(delivery),
            ShardMsg::Delay(publish) => self.hold_delayed(*publish),
            ShardMsg::Trace(trace) => self.firehose(*trace),
            ShardMsg::Settle {
                queue,
                seq,
                consumer,
                settle,
            } => {
                if self
                    .with_queue(queue, |q, _, ctx| q.settle(seq, consumer, settle, ctx))
                    .is_some()
                {
                    self.dispatch(queue);
                }
            }
            ShardMsg::ConsumerResume { queue, consumer } => {
                if self.with_queue(queue, |q, _, _| q.resume(consumer)) == Some(true) {
                    self.dispatch(queue);
                }
            }
            ShardMsg::SettleMany {
                queue,
                first,
                more,
                consumer,
                settle,
            } => {
                let settled = self.with_queue(queue, |q, _, ctx| {
                    q.settle(first, consumer, settle, ctx);
                    for seq in more {
                        q.settle(seq, consumer, settle, ctx);
                    }
                });
                if settled.is_some() {
                    self.dispatch(queue);
                }
            }
            ShardMsg::Confirm { target, accepted } => {
                if let Some(connection) = self.connections.get_mut(&target.conn.conn) {
                    if connection.confirm_resolved(target.channel, target.publish_seq, accepted) {
                        self.confirm_dirty.push((target.conn.conn, target.channel));
                    }
                }
            }
            ShardMsg::Consume {
                queue,
                spec,
                nowait,
            } => self.consume(queue, spec, nowait),
            ShardMsg::ConsumerOutput {
                queue,
                consumer,
                full,
            } => {
                let known =
                    self.with_queue(queue, |q, _, _| q.set_consumer_stopped(consumer, full));
                if !full && known == Some(true) {
                    self.dispatch(queue);
                }
            }
            ShardMsg::Cancel {
                queue,
                conn,
                channel,
                tag,
                answer,
            } => {
                let unused = self.with_queue(queue, |q, _, ctx| {
                    (q.cancel_consumer(conn, channel, &tag, ctx) && q.should_auto_delete())
                        .then(|| q.meta.queue_ref())
                });
                if let Some(queue) = unused.flatten() {
                    self.send_meta(None, MetaRequest::QueueAutoDelete { queue });
                }
                if answer {
                    self.reply(conn, channel, ChannelReply::CancelOk { tag });
                }
            }
            ShardMsg::Get {
                queue,
                conn,
                channel,
                no_ack,
            } => self.get(queue, conn, channel, no_ack),
            ShardMsg::Purge {
                queue,
                conn,
                channel,
                nowait,
            } => {
                let reply = match self.with_queue(queue, |q, _, ctx| q.purge(ctx)) {
                    Some(message_count) => ChannelReply::PurgeOk {
                        message_count,
                        nowait,
                    },
                    None => ChannelReply::Error(no_queue_by_id()),
                };
                self.reply(conn, channel, reply);
            }
            ShardMsg::ToChannel {
                conn,
                channel,
                reply,
            } => self.channel_reply(conn, channel, reply),
            ShardMsg::Meta {
                from,
                scope,
                request,
            } => {
                debug_assert_eq!(self.id, ShardId(0), "only shard 0 owns metadata");
                self.meta_inbox
                    .requests
                    .push_back((from, scope, *request, None));
                self.meta_inbox.notify.notify();
            }
            ShardMsg::Rpc { from, id, request } => {
                let reply = self.handle_rpc(request);
                self.send(from, ShardMsg::RpcReply { id, reply });
            }
            ShardMsg::RpcReply { id, reply } => {
                if let Some(pending) = self.rpc_pending.remove(&id) {
                    pending.send(reply);
                }
            }
            ShardMsg::Credit { grants } => self.credit_granted(grants),
            ShardMsg::Delivered {
                queue,
                consumer,
                bytes,
            } => {
                if self.with_queue(queue, |q, _, _| q.delivered(consumer, bytes)) == Some(true) {
                    self.dispatch(queue);
                }
            }
            ShardMsg::DirectReply {
                conn,
                channel,
                secret,
                message,
            } => {
                if let Some(connection) = self.connections.get_mut(&conn) {
                    connection.deliver_reply(channel, &secret, &message);
                    if connection.output_filled() {
                        self.output_filled.push(conn);
                    }
                }
            }
            ShardMsg::DirectReplyDeclare {
                conn,
                channel,
                secret,
                queue,
                from,
                from_channel,
            } => {
                let consumes = self
                    .connections
                    .get(&conn)
                    .is_some_and(|c| c.has_reply_consumer(channel, &secret));
                let reply = match direct_reply_to::declare_answer(consumes, queue) {
                    Ok(ok) => ChannelReply::Meta(Ok(ok.into())),
                    Err(error) => ChannelReply::Error(error),
                };
                self.reply(from, from_channel, reply);
            }
        }
    }

    pub(crate) fn reply(&mut self, conn: ConnRef, channel: u16, reply: ChannelReply) {
        self.send(
            conn.shard,
            ShardMsg::ToChannel {
                conn: conn.conn,
                channel,
                reply,
            },
        );
    }

    fn consume(&mut self, queue: QueueId, spec: ConsumerSpec, nowait: bool) {
        let (conn, channel, tag) = (spec.conn, spec.channel, spec.tag.clone());
        let reply = match self.queues.get_mut(&queue) {
            None => ChannelReply::Error(no_queue_by_id()),
            Some(q) => match q.add_consumer(spec) {
                Ok(consumer) => ChannelReply::ConsumeOk {
                    tag,
                    queue: q.meta.queue_ref(),
                    consumer,
                    nowait,
                },
                Err(error) => ChannelReply::Error(error),
            },
        };
        // The consume-ok must reach the channel before the first delivery.
        self.reply(conn, channel, reply);
        self.dispatch(queue);
    }

    fn get(&mut self, queue: QueueId, conn: ConnRef, channel: u16, no_ack: bool) {
        let got = self.with_queue(queue, |q, _, ctx| {
            q.get(no_ack, ctx)
                .map(|(queued, remaining)| (q.meta.queue_ref(), queued, remaining))
        });
        match got {
            None => self.reply(conn, channel, ChannelReply::Error(no_queue_by_id())),
            Some(None) if self.queues.get(&queue).is_some_and(Queue::is_paging_in) => {
                // Its head is on disk: the answer waits until it is read.
                self.gets_paging.push((queue, conn, channel, no_ack));
            }
            Some(None) => self.reply(conn, channel, ChannelReply::GetEmpty),
            Some(Some((queue, queued, remaining))) => {
                let delivery = Delivery {
                    head: DeliveryHead {
                        conn,
                        channel,
                        consumer: ConsumerId::GET,
                        queue,
                        seq: queued.seq,
                        redelivered: queued.redelivered,
                        no_ack,
                        ahead: false,
                    },
                    message_count: Some(remaining),
                    message: queued.message,
                };
                self.send(conn.shard, ShardMsg::Deliver(delivery));
            }
        }
    }

    /// A publish reaches its local queue. If it leaves the queue with more
    /// ready messages than flow control allows, the publisher should let
    /// the consumers catch up: the queue's deliveries count, for its flow
    /// wait (or credit hold), is returned. Whatever the shards' load: an
    /// idle shard says nothing about whether the consumers keep up (a
    /// faster host left the queue growing without bound at 1 → 1 with
    /// acks while the shard was never saturated).
    fn enqueue(
        &mut self,
        queue: QueueId,
        message: Message,
        confirm: Option<ConfirmTarget>,
    ) -> Option<u64> {
        let (enqueued, in_flow) = self
            .with_queue(queue, |q, out, ctx| {
                // One clock reading for both steps: a TTL-0 message goes to
                // a waiting consumer however long they take.
                let enqueued = q.publish(message, out, ctx);
                q.dispatch(out, ctx);
                let in_flow = q.outpaces_consumers().then(|| q.deliveries());
                (enqueued, in_flow)
            })
            .unwrap_or((Enqueued::Accepted, None));
        if let Some(target) = confirm {
            match enqueued {
                // Confirmed once the store's next fsync covers it.
                Enqueued::Stored => self.store.defer_confirm(target),
                Enqueued::Accepted | Enqueued::Rejected => {
                    let accepted = enqueued == Enqueued::Accepted;
                    self.send(target.conn.shard, ShardMsg::Confirm { target, accepted });
                }
            }
        }
        in_flow
    }

    /// Lets a queue hand messages to its consumers, wherever they are.
    fn dispatch(&mut self, queue: QueueId) {
        let drained = self.with_queue(queue, |q, out, ctx| {
            q.dispatch(out, ctx);
            !q.outpaces_consumers_still()
        });
        if drained == Some(true) && self.credit_held.iter().any(|h| h.queue == queue) {
            self.credit_held.retain(|hold| hold.queue != queue);
            self.grant_credit();
        }
        if drained == Some(true) && !self.flow.is_empty() {
            let connections = &self.connections;
            self.flow.retain(|wait| {
                if wait.queue != queue {
                    return true;
                }
                if let Some(connection) = connections.get(&wait.conn) {
                    connection.reader.notify();
                }
                false
            });
        }
    }

    /// The shard's state split for work on its queues: the queues, the sink
    /// their deliveries go to and the context their operations take. The
    /// one place both are built; `with_queue` uses it for one queue.
    fn queue_parts(
        &mut self,
    ) -> (
        &mut FastMap<QueueId, Queue>,
        ShardDeliveries<'_>,
        QueueCtx<'_>,
    ) {
        let ShardState {
            id,
            queues,
            connections,
            local,
            deliveries,
            bounced,
            timers,
            dead_letters,
            store,
            output_filled,
            ..
        } = self;
        let out = ShardDeliveries {
            shard: *id,
            local,
            connections,
            later: deliveries,
            bounced,
            filled: output_filled,
        };
        (queues, out, QueueCtx::new(timers, dead_letters, store))
    }

    /// Runs `work` on a queue of this shard, its deliveries going to the
    /// shard's `ShardDeliveries`; then sends on those that could not be
    /// written at once. None if the queue is gone.
    fn with_queue<R>(
        &mut self,
        queue: QueueId,
        work: impl FnOnce(&mut Queue, &mut ShardDeliveries<'_>, &mut QueueCtx<'_>) -> R,
    ) -> Option<R> {
        let (queues, mut out, mut ctx) = self.queue_parts();
        let q = queues.get_mut(&queue)?;
        let result = work(q, &mut out, &mut ctx);
        self.deliver_later();
        Some(result)
    }

    /// The deliveries a queue could not write at once: those for other
    /// shards, or queued behind local work, and the bounced ones.
    fn deliver_later(&mut self) {
        if !self.deliveries.is_empty() {
            let deliveries = std::mem::take(&mut self.deliveries);
            self.route_deliveries(deliveries);
        }
        if !self.bounced.is_empty() {
            let mut bounced = std::mem::take(&mut self.bounced);
            for delivery in bounced.drain(..) {
                self.bounce(delivery);
            }
            self.bounced = bounced;
        }
    }

    /// Sends a queue's deliveries to their consumers' connections, and keeps
    /// the vector for the next time.
    fn route_deliveries(&mut self, mut deliveries: Vec<Delivery>) {
        let mut drain = deliveries.drain(..).peekable();
        while let Some(delivery) = drain.next() {
            if !self.runs_now(delivery.head.conn.shard) {
                self.send(delivery.head.conn.shard, ShardMsg::Deliver(delivery));
                continue;
            }
            // A queue's batch mostly goes to one consumer: its connection is
            // looked up once for the whole run.
            let conn = delivery.head.conn;
            let Some(connection) = self.connections.get_mut(&conn.conn) else {
                self.bounce(delivery);
                continue;
            };
            let mut bounced = connection.deliver(delivery);
            while let Some(next) = drain.next_if(|d| d.head.conn == conn && bounced.is_none()) {
                bounced = connection.deliver(next);
            }
            if connection.output_filled() {
                self.output_filled.push(conn.conn);
            }
            let given_back = connection.has_effects();
            if let Some(delivery) = bounced {
                self.bounce(delivery);
            }
            // Deliveries the channel gave back (its global prefetch) go to
            // their queues now, not at the connection's next input.
            if given_back {
                self.drain_connection_effects(conn.conn);
            }
        }
        drop(drain);
        self.deliveries = deliveries;
    }

    fn deliver(&mut self, delivery: Delivery) {
        let conn = delivery.head.conn.conn;
        let (bounced, given_back) = match self.connections.get_mut(&conn) {
            Some(connection) => {
                let bounced = connection.deliver(delivery);
                if connection.output_filled() {
                    self.output_filled.push(conn);
                }
                (bounced, connection.has_effects())
            }
            None => (Some(delivery), false),
        };
        if let Some(delivery) = bounced {
            self.bounce(delivery);
        }
        if given_back {
            self.drain_connection_effects(conn);
        }
    }

    /// The channel or consumer went away while the message travelled: it
    /// goes back to its queue, marked redelivered as RabbitMQ marks what
    /// was on its way to a channel that closed, unless it was sent beyond
    /// the prefetch, which the client could not have seen
    /// (`DeliveryHead::ahead`).
    fn bounce(&mut self, delivery: Delivery) {
        if !delivery.head.no_ack {
            let queue = delivery.head.queue;
            let settle = if delivery.head.ahead {
                Settle::Return
            } else {
                Settle::Released
            };
            self.send(
                queue.shard,
                ShardMsg::Settle {
                    queue: queue.id,
                    seq: delivery.head.seq,
                    consumer: delivery.head.consumer,
                    settle,
                },
            );
        }
    }

    fn channel_reply(&mut self, conn: ConnId, channel: u16, reply: ChannelReply) {
        let Some(connection) = self.connections.get_mut(&conn) else {
            self.orphan_reply(conn, channel, reply);
            return;
        };
        let now = self.now;
        let consumer = match &reply {
            ChannelReply::ConsumeOk {
                queue, consumer, ..
            } => Some((*queue, *consumer)),
            _ => None,
        };
        match connection.on_reply(channel, reply, now) {
            Some(orphan) => self.orphan_reply(conn, channel, orphan),
            // A consumer that starts while its connection's output is full
            // waits, as its elder siblings do, until it drains.
            None if connection.output_full => {
                if let Some((queue, consumer)) = consumer {
                    self.send(
                        queue.shard,
                        ShardMsg::ConsumerOutput {
                            queue: queue.id,
                            consumer,
                            full: true,
                        },
                    );
                }
            }
            None => {}
        }
        self.drain_connection_effects(conn);
    }

    /// Stops, at their queues, the consumers of connections whose output
    /// went over `DELIVERY_OUTPUT_BYTES_MAX`.
    fn stop_filled_consumers(&mut self) {
        let filled = std::mem::take(&mut self.output_filled);
        for &conn in &filled {
            self.send_consumer_output(conn, true);
        }
        self.output_filled = filled;
        self.output_filled.clear();
    }

    /// Tells the queues of every consumer of a connection that its output
    /// is full, or written down again.
    fn send_consumer_output(&mut self, conn: ConnId, full: bool) {
        let Some(connection) = self.connections.get(&conn) else {
            return;
        };
        let consumers: Vec<(QueueRef, ConsumerId)> = connection
            .channels
            .values()
            .flat_map(|ch| ch.consumer_ids())
            .collect();
        for (queue, consumer) in consumers {
            self.send(
                queue.shard,
                ShardMsg::ConsumerOutput {
                    queue: queue.id,
                    consumer,
                    full,
                },
            );
        }
    }

    /// A reply whose channel has gone: undo what it set up.
    fn orphan_reply(&mut self, conn: ConnId, channel: u16, reply: ChannelReply) {
        if let ChannelReply::ConsumeOk { tag, queue, .. } = reply {
            let conn = self.conn_ref(conn);
            self.send(
                queue.shard,
                ShardMsg::Cancel {
                    queue: queue.id,
                    conn,
                    channel,
                    tag,
                    answer: false,
                },
            );
        }
    }

    /// Moves what a connection queued for other shards into the mailboxes.
    pub(crate) fn drain_connection_effects(&mut self, conn: ConnId) {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return;
        };
        let (mut publishes, mut effects) = connection.take_effects();
        if publishes.is_empty() && effects.is_empty() {
            connection.restore_effects(publishes, effects);
            return;
        }
        let mut flow_for: Option<(QueueId, u64)> = None;
        let from = ConnRef {
            shard: self.id,
            conn,
        };
        for publish in publishes.drain(..) {
            let LocalPublish {
                queue,
                message,
                confirm,
            } = publish;
            let confirm = confirm.map(|(channel, publish_seq)| ConfirmTarget {
                conn: from,
                channel,
                publish_seq,
            });
            if !self.runs_now(self.id) {
                let msg = ShardMsg::Enqueue {
                    queue,
                    message,
                    confirm,
                };
                self.send(self.id, msg);
            } else if let Some(deliveries) = self.enqueue(queue, message, confirm) {
                flow_for = Some((queue, deliveries));
            }
        }
        let mut credit_for: Option<QueueId> = None;
        for (shard, msg) in effects.drain(..) {
            if shard != self.id {
                // Only publishes wait for credit: acks, nacks and the rest
                // always go, or a held publisher could hold its consumers.
                if let Some(queue) = self.send_spending(shard, msg) {
                    credit_for = Some(queue);
                }
            } else if !self.runs_now(shard) {
                self.send(shard, msg);
            } else if let ShardMsg::Enqueue {
                queue,
                message,
                confirm,
            } = msg
            {
                if let Some(deliveries) = self.enqueue(queue, message, confirm) {
                    flow_for = Some((queue, deliveries));
                }
            } else {
                self.handle_msg(msg);
            }
        }
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.restore_effects(publishes, effects);
        }
        if let Some(queue) = credit_for {
            if !self.credit_waits.iter().any(|&(c, _)| c == conn) {
                self.credit_waits.push((conn, queue));
            }
        }
        if let Some((queue, deliveries)) = flow_for {
            if !self.flow.iter().any(|w| w.conn == conn) {
                self.flow.push(FlowWait {
                    conn,
                    queue,
                    deliveries,
                    progress_at: self.now,
                });
            }
        }
    }

    fn handle_rpc(&mut self, request: RpcRequest) -> RpcReply {
        match request {
            RpcRequest::Apply { vhost, changes } => {
                for change in &changes {
                    self.apply_change(&vhost, change);
                }
                RpcReply::Applied
            }
            RpcRequest::Access(change) => {
                self.apply_access(&change);
                RpcReply::Applied
            }
            RpcRequest::QueueStats(queue) => self
                .with_queue(queue, |q, _, ctx| {
                    // A redeclare is a use of the queue (x-expires).
                    q.touch(ctx);
                    RpcReply::QueueStats {
                        message_count: q.message_count(),
                        consumer_count: q.consumer_count(),
                    }
                })
                .unwrap_or(RpcReply::QueueStats {
                    message_count: 0,
                    consumer_count: 0,
                }),
            RpcRequest::CheckDelete {
                queue,
                if_unused,
                if_empty,
            } => RpcReply::CheckDelete(match self.queues.get(&queue) {
                None => Ok(0),
                Some(q) if if_unused && q.consumer_count() > 0 => {
                    Err(AmqpError::precondition_failed(format!(
                        "queue '{}' in vhost '{}' in use",
                        q.name(),
                        q.meta.vhost
                    )))
                }
                Some(q) if if_empty && q.message_count() > 0 => {
                    Err(AmqpError::precondition_failed(format!(
                        "queue '{}' in vhost '{}' is not empty",
                        q.name(),
                        q.meta.vhost
                    )))
                }
                Some(q) => Ok(q.message_count()),
            }),
        }
    }

    /// Applies a definitions change to the replica, and to the queues this
    /// shard owns. Returns auto-delete exchanges it left unused.
    pub(crate) fn apply_change(&mut self, vhost: &str, change: &MetaChange) -> Vec<ShortStr> {
        let Some(replica) = self.vhosts.get_mut(vhost) else {
            return Vec::new();
        };
        let emptied = replica.apply(change);
        match change {
            MetaChange::QueueCreated(meta) if meta.shard == self.id => {
                self.queues.insert(meta.id, Queue::new(meta.clone()));
                let users = Rc::clone(&self.users);
                self.with_queue(meta.id, |q, _, ctx| {
                    let policy = policy::matching(users.policies(vhost), meta.name.as_str(), true);
                    q.set_policy(policy.map(|p| &p.settings), ctx);
                    q.touch(ctx)
                });
            }
            MetaChange::ExchangeCreated(def) => {
                let users = Rc::clone(&self.users);
                let policy = policy::matching(users.policies(vhost), def.name.as_str(), false);
                if let Some(exchange) = replica.exchanges.get_mut(def.name.as_str()) {
                    exchange.set_policy_alternate(
                        policy.and_then(|p| p.settings.alternate_exchange.as_ref()),
                    );
                }
            }
            MetaChange::ExchangeDeleted(name) => self.drop_delayed_of(vhost, name),
            MetaChange::QueueDeleted(queue) if queue.shard == self.id => {
                self.with_queue(queue.id, |q, _, ctx| q.forget_all(ctx));
                if let Some(q) = self.queues.remove(&queue.id) {
                    self.count_deleted_queue(&q);
                    let cancelled: Vec<(ConnRef, u16, ShortStr)> = q
                        .consumer_specs()
                        .map(|s| (s.conn, s.channel, s.tag.clone()))
                        .collect();
                    for (conn, channel, tag) in cancelled {
                        self.reply(conn, channel, ChannelReply::ConsumerCancelled { tag });
                    }
                }
            }
            MetaChange::QueueDeleted(queue) => self.forget_credit(queue.id),
            _ => {}
        }
        emptied
    }

    /// A queue of another shard was deleted: its credit goes, and the
    /// publishers that waited for it read again (their next publish to
    /// it is unroutable).
    fn forget_credit(&mut self, queue: QueueId) {
        if self.credit.remove(&queue).is_none() {
            return;
        }
        let connections = &self.connections;
        self.credit_waits.retain(|&(conn, waited)| {
            if waited != queue {
                return true;
            }
            if let Some(connection) = connections.get(&conn) {
                connection.reader.notify();
            }
            false
        });
    }

    /// Gives the queues the messages the store recovered at start, then
    /// lets them dispatch (expiring what expired while the broker was down).
    pub(crate) fn restore_messages(&mut self, queues: Vec<RecoveredQueue>) {
        for recovered in queues {
            let queue = recovered.id;
            if !self.queues.contains_key(&queue) {
                // Not this shard's queue after all: its records are void.
                for message in recovered.into_messages() {
                    self.store
                        .append_removal(queue.0, message.seq, message.segment);
                }
                continue;
            }
            let next_seq = recovered.next_seq;
            let count = recovered.len();
            self.with_queue(queue, |q, _, ctx| {
                q.reserve_restored(count);
                for message in recovered.into_messages() {
                    q.restore(message, ctx);
                }
                q.finish_restore(next_seq, ctx);
            });
            self.dispatch(queue);
        }
        self.run_local();
    }

    /// The pager's next reads: for each queue that asked, its next paged
    /// messages, as many as its window has room for. Once the shard's
    /// window is full, only a queue whose next message is paged reads, and
    /// a little (`PAGE_READ_FULL_BYTES`), so that a queue with consumers
    /// never starves behind the others and the window is overrun by at
    /// most that much per queue. A queue without consumers (it asks for its
    /// head only, e.g. after a restart) reads that little too. What this call asks for counts at once:
    /// the queues' own figures are summed only on the alarm check.
    pub(crate) fn page_reads(&mut self) -> Vec<queue::PageRead> {
        let wanted = std::mem::take(&mut self.store.paging.wanted);
        let paging = &self.store.paging;
        let window = paging.queue_window_bytes;
        let shard_window = paging.shard_window_bytes;
        let mut resident = paging.resident_bytes;
        let mut reads = Vec::new();
        let mut again = Vec::new();
        let (queues, _, mut ctx) = self.queue_parts();
        for id in wanted {
            let Some(q) = queues.get_mut(&id) else {
                continue;
            };
            let room = window.saturating_sub(q.memory_bytes());
            // A queue nobody consumes from wants its head only.
            let budget = if q.consumer_count() == 0 {
                room.min(crate::config::PAGE_READ_FULL_BYTES)
            } else if resident < shard_window {
                room.min(shard_window - resident)
            } else if q.head_is_paged() {
                room.min(crate::config::PAGE_READ_FULL_BYTES)
            } else {
                q.page_deferred();
                continue;
            };
            let (read, waiting) = q.page_read(budget.max(1), &mut ctx);
            resident += read.as_ref().map_or(0, queue::PageRead::body_bytes);
            reads.extend(read);
            if waiting {
                again.push(id);
            }
        }
        // These wait for their records to be written; the batch's end
        // wakes the pager again.
        self.store.paging.wanted.extend(again);
        reads
    }

    /// The pager read a queue's paged messages back (None: the read
    /// failed, they stay paged): they join its ready messages in memory.
    pub(crate) fn page_loaded(&mut self, read: queue::PageRead, messages: Option<Vec<Message>>) {
        let queue = read.queue;
        self.with_queue(queue, |q, _, ctx| q.loaded(read, messages, ctx));
        if self.gets_paging.iter().any(|g| g.0 == queue) {
            let (waiting, others) = std::mem::take(&mut self.gets_paging)
                .into_iter()
                .partition(|g| g.0 == queue);
            self.gets_paging = others;
            let waiting: Vec<(QueueId, ConnRef, u16, bool)> = waiting;
            for (queue, conn, channel, no_ack) in waiting {
                self.get(queue, conn, channel, no_ack);
            }
        }
        self.dispatch(queue);
        self.run_local();
    }

    /// basic.gets that waited for a queue deleted meanwhile get its 404.
    fn answer_gets_of_gone_queues(&mut self) {
        let queues = &self.queues;
        let (gone, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.gets_paging)
            .into_iter()
            .partition(|g| !queues.contains_key(&g.0));
        self.gets_paging = waiting;
        for (queue, conn, channel, no_ack) in gone {
            self.get(queue, conn, channel, no_ack);
        }
    }

    /// Adds up what the shard's queues hold in memory, for the shard's
    /// paging window (on the alarm check).
    pub(crate) fn update_paging(&mut self) {
        self.store.paging.resident_bytes = self.queues.values().map(Queue::memory_bytes).sum();
    }

    /// Compacts the oldest store segment that keeps emptied ones from
    /// being deleted (see `MessageStore::compaction_candidate`): its live
    /// messages are copied forward. Scans every queue of the shard, which
    /// happens at most once per two segments' worth of records.
    pub(crate) fn compact_store(&mut self) {
        let Some(from) = self.store.compaction_candidate() else {
            return;
        };
        let (queues, _, mut ctx) = self.queue_parts();
        for q in queues.values_mut() {
            q.relocate(from, &mut ctx);
        }
        tracing::debug!(segment = from, "store segment compacted");
    }

    /// The store wrote and synced a batch: the confirms that waited for it
    /// go out. (A batch the disk refuses is written again until it is
    /// taken, its confirms held meanwhile: see `shard::write_until_taken`.)
    pub(crate) fn store_written(&mut self, confirms: Vec<ConfirmTarget>) {
        self.store.stats.confirms += confirms.len() as u64;
        for &target in &confirms {
            self.send(
                target.conn.shard,
                ShardMsg::Confirm {
                    target,
                    accepted: true,
                },
            );
        }
        self.store.recycle_confirms(confirms);
        self.run_local();
    }

    /// Fires the timers that are due, then runs what they caused.
    pub(crate) fn run_timers(&mut self) {
        let mut fired = self.timers.take_due();
        for (_, event) in fired.drain(..) {
            self.timer_fired(event);
        }
        self.timers.restore_fired(fired);
        self.run_local();
    }

    fn timer_fired(&mut self, event: TimerEvent) {
        match event {
            TimerEvent::MessageExpiry { queue, level, seq } => {
                self.with_queue(queue, |q, _, ctx| q.expire(level, seq, ctx));
            }
            TimerEvent::QueueExpiry { queue } => {
                let expired = self.with_queue(queue, |q, _, ctx| {
                    q.expiry_due(ctx).then(|| q.meta.queue_ref())
                });
                if let Some(queue) = expired.flatten() {
                    self.send_meta(None, MetaRequest::QueueAutoDelete { queue });
                }
            }
            TimerEvent::Delayed { id } => self.delayed_due(id),
        }
    }

    /// The timer tick: heartbeats and handshake/close deadlines.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.now = now;
        if !self.gets_paging.is_empty() {
            self.answer_gets_of_gone_queues();
        }
        self.release_flow_holds();
        self.release_credit_holds();
        let ids: Vec<ConnId> = self.connections.keys().copied().collect();
        for id in ids {
            if let Some(connection) = self.connections.get_mut(&id) {
                connection.tick(now);
                if connection.is_closed() {
                    connection.reader.notify();
                    connection.wire.writer.notify();
                }
            }
            self.finish_connection_turn(id);
        }
    }

    /// After a connection did something: its effects into the mailboxes and
    /// the local work they cause run.
    pub(crate) fn finish_connection_turn(&mut self, id: ConnId) {
        self.drain_connection_effects(id);
        self.run_local();
        // Deliveries run above may have bounced and queued new effects.
        self.drain_connection_effects(id);
        self.run_local();
    }

    /// The broker is stopping: every client connection is told so.
    pub(crate) fn shut_down_connections(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self.connections.keys().copied().collect();
        for id in ids {
            if let Some(connection) = self.connections.get_mut(&id) {
                connection.shut_down(now);
                if connection.is_closed() {
                    connection.reader.notify();
                    connection.wire.writer.notify();
                }
            }
            self.finish_connection_turn(id);
        }
    }

    /// Publishes what this shard's queues hold, for the deciding shard to add up
    /// (`broker::alarms`). O(queues): called on the alarm check only.
    pub(crate) fn publish_memory_use(&self) {
        let queued: u64 = self
            .queues
            .values()
            .map(|q| q.memory_bytes() + q.index_bytes())
            .sum();
        let connections: u64 = self.connections.values().map(Connection::held_bytes).sum();
        // Records waiting for the disk hold their message's bytes too (a
        // paged message's only copy): a disk slower than the publishers
        // raises the memory alarm rather than let them pile up.
        let unwritten = self.store.unwritten_bytes();
        self.alarm_board.publish_queued_bytes(
            self.id.index(),
            queued + connections + self.delayed_bytes + unwritten,
        );
    }

    /// Takes the node's alarm state; once no alarm is raised, blocked
    /// connections are unblocked and read again.
    pub(crate) fn set_alarms(&mut self, alarms: AlarmSet) {
        if alarms == self.alarms {
            return;
        }
        self.alarms = alarms;
        if alarms.is_empty() {
            let now = Instant::now();
            for connection in self.connections.values_mut() {
                connection.unblock(now);
            }
        }
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// True while this connection is in flow: it published into a queue
    /// of this shard whose consumers are not keeping up (`enqueue`), or
    /// into a queue of another shard that has not granted it credit
    /// (`handle_batch`). It then waits until the queue has drained or the
    /// credit comes (its reader is woken), or until the queue's consumers
    /// stall (`release_flow_holds`). Leaves flow once the queue has
    /// drained, lost its consumers or gone.
    pub(crate) fn in_flow(&mut self, id: ConnId) -> bool {
        // Flow across shards: waiting for a peer's credit.
        if let Some(at) = self.credit_waits.iter().position(|&(c, _)| c == id) {
            let queue = self.credit_waits[at].1;
            if self.credit.get(&queue).is_none_or(|&c| c > 0) {
                self.credit_waits.swap_remove(at);
            } else {
                return true;
            }
        }
        let Some(at) = self.flow.iter().position(|w| w.conn == id) else {
            return false;
        };
        let queue = self.flow[at].queue;
        let still = self
            .queues
            .get(&queue)
            .is_some_and(|q| q.outpaces_consumers_still());
        if !still {
            self.flow.swap_remove(at);
        }
        still
    }

    /// The connection's reader was woken while in flow: it reads again.
    pub(crate) fn leave_flow(&mut self, id: ConnId) {
        self.flow.retain(|w| w.conn != id);
        self.credit_waits.retain(|&(c, _)| c != id);
    }

    /// The tick lets go of publishers whose queue's consumers stalled:
    /// took nothing for `FLOW_STALL`. Stalled consumers slow no publisher;
    /// while consumers make progress, their publisher is held to their
    /// pace. (Timers of their own would cost a submission and a
    /// cancellation per wait.)
    fn release_flow_holds(&mut self) {
        let ShardState {
            now,
            flow,
            queues,
            connections,
            ..
        } = self;
        flow.retain_mut(|wait| {
            if let Some(q) = queues.get_mut(&wait.queue) {
                if q.outpaces_consumers_still() {
                    if q.deliveries() != wait.deliveries {
                        wait.deliveries = q.deliveries();
                        wait.progress_at = *now;
                        return true;
                    }
                    if now.saturating_duration_since(wait.progress_at) < crate::config::FLOW_STALL {
                        return true;
                    }
                    q.flow_waited_in_vain(wait.deliveries);
                }
            }
            if let Some(connection) = connections.get(&wait.conn) {
                connection.reader.notify();
            }
            false
        });
    }

    /// A vhost's replica, if it exists.
    pub(crate) fn vhost(&self, name: &str) -> Option<&Vhost> {
        self.vhosts.get(name)
    }

    /// A vhost's replica, or an empty one if it does not exist (any more).
    pub(crate) fn vhost_or_empty(&self, name: &str) -> &Vhost {
        self.vhosts.get(name).unwrap_or(&self.no_vhost)
    }

    /// Applies an access-control change made by the metadata owner: to the
    /// users, and to the set of vhost replicas. A deleted vhost's (or
    /// user's) connections on this shard are closed with 320
    /// CONNECTION_FORCED, as RabbitMQ closes them.
    pub(crate) fn apply_access(&mut self, change: &metadata_auth::AccessChange) {
        use metadata_auth::AccessChange;
        Rc::make_mut(&mut self.users).apply(change);
        let closing: Option<(bool, &str, String)> = match change {
            AccessChange::VhostAdded(def) => {
                self.vhosts
                    .entry(ShortStr::from(def.name.clone()))
                    .or_insert_with(Vhost::new);
                None
            }
            AccessChange::VhostDeleted(name) => {
                self.vhosts.remove(name.as_str());
                Some((true, name, format!("vhost '{}' is deleted", name)))
            }
            AccessChange::UserDeleted(name) => {
                Some((false, name, format!("user '{}' is deleted", name)))
            }
            AccessChange::PolicySet(p) => {
                self.apply_policies(&p.vhost);
                None
            }
            AccessChange::PolicyCleared { vhost, .. } => {
                self.apply_policies(vhost);
                None
            }
            _ => None,
        };
        if let Some((by_vhost, name, text)) = closing {
            let ids: Vec<ConnId> = self
                .connections
                .iter()
                .filter(|(_, c)| {
                    if by_vhost {
                        c.vhost.as_str() == name
                    } else {
                        c.user == name
                    }
                })
                .map(|(id, _)| *id)
                .collect();
            let now = self.now;
            for id in ids {
                if let Some(connection) = self.connections.get_mut(&id) {
                    connection.force_close(AmqpError::connection_forced(text.clone()), now);
                }
                self.finish_connection_turn(id);
            }
        }
    }

    /// Applies `vhost`'s policies, as they now are, to its exchanges in
    /// this shard's replica and to the queues this shard owns there;
    /// a queue whose effective arguments changed is dispatched (a lower
    /// length limit drops or dead-letters its oldest messages).
    fn apply_policies(&mut self, vhost: &str) {
        let users = Rc::clone(&self.users);
        if let Some(replica) = self.vhosts.get_mut(vhost) {
            replica.apply_policies(users.policies(vhost));
        }
        let owned: Vec<QueueId> = self
            .queues
            .iter()
            .filter(|(_, q)| q.meta.vhost.as_str() == vhost)
            .map(|(id, _)| *id)
            .collect();
        for id in owned {
            let changed = self.with_queue(id, |q, _, ctx| {
                let policy = policy::matching(users.policies(vhost), q.meta.name.as_str(), true);
                q.set_policy(policy.map(|p| &p.settings), ctx)
            });
            if changed == Some(true) {
                self.dispatch(id);
            }
        }
    }

    /// Called by the socket tasks once both of them are done.
    pub(crate) fn remove_connection(&mut self, id: ConnId) {
        self.leave_flow(id);
        self.connection_lost(id);
        if let Some(mut connection) = self.connections.remove(&id) {
            connection.release_usage();
            self.published_by_closed += connection.published;
            self.counters.closed.add(&connection.counts);
        }
    }
}

/// A publishing connection in flow (`ShardState::in_flow`).
struct FlowWait {
    conn: ConnId,
    /// The queue it waits for, and that queue's deliveries count when it
    /// last changed, and when (`release_flow_holds`).
    queue: QueueId,
    deliveries: u64,
    progress_at: Instant,
}

/// A queue holding back the credit of the shards that publish into it
/// (`ShardState::credit_held`).
struct CreditHold {
    queue: QueueId,
    /// The queue's deliveries count when it last changed, and when.
    deliveries: u64,
    progress_at: Instant,
}

/// What an enqueue into another shard's queue costs in credit (see
/// `config::FLOW_CREDIT`): the same on both sides, from the message alone.
fn flow_credit_cost(message: &Message) -> u32 {
    let units = message.memory_size() / crate::config::FLOW_CREDIT_BYTES_PER_UNIT;
    1 + u32::try_from(units).unwrap_or(u32::MAX - 1)
}

fn no_queue_by_id() -> AmqpError {
    AmqpError::not_found("queue was deleted")
}

/// The entry points the socket tasks use.
impl ShardState {
    /// Registers a new connection; returns its id and the reader's and
    /// writer's wake-up signals.
    pub(crate) fn open_connection(
        &mut self,
        addrs: (std::net::SocketAddr, std::net::SocketAddr),
        external: crate::metadata::auth::External,
    ) -> (ConnId, Notify, Notify) {
        let id = self.next_conn_id();
        let conn = self.conn_ref(id);
        // The clock, not the shard's cached `now` (as old as its last tick or
        // read batch): the handshake timeout counts from the accept, and a
        // stale start would drop a slow handshake before its 10 s.
        let connection = Connection::new(conn, addrs, external, &self.config, Instant::now());
        let signals = (connection.reader.clone(), connection.wire.writer.clone());
        self.connections.insert(id, connection);
        (id, signals.0, signals.1)
    }

    /// Feeds bytes read from a connection's socket to its state machine,
    /// carrying out the effects it hands over on the way; never returns
    /// `HandOver`.
    pub(crate) fn connection_input(
        &mut self,
        id: ConnId,
        buf: &mut bytes::BytesMut,
    ) -> connection::Input {
        self.now = Instant::now();
        let input = loop {
            let ShardState {
                connections,
                vhosts,
                no_vhost,
                users,
                config,
                now,
                alarms,
                login_delays,
                ..
            } = self;
            let Some(connection) = connections.get_mut(&id) else {
                return connection::Input::Closed;
            };
            // Resolved once per call, for every frame the call handles.
            let vhost = vhosts.get(connection.vhost.as_str()).unwrap_or(no_vhost);
            // The firehose switch as the vhost has it now, for this
            // connection's deliveries (`trace`).
            connection.tracing = vhost.tracing;
            let env = connection::Env {
                vhost,
                users,
                config,
                now: *now,
                alarms: *alarms,
                login_delays,
            };
            match connection.input(buf, &env) {
                connection::Input::HandOver => self.drain_connection_effects(id),
                input => break input,
            }
        };
        self.finish_connection_turn(id);
        input
    }

    pub(crate) fn connection_is_closed(&self, id: ConnId) -> bool {
        self.connections.get(&id).is_none_or(|c| c.is_closed())
    }

    /// True if the client sent connection.close: as RabbitMQ does, we
    /// answer close-ok and leave closing the socket to the client.
    pub(crate) fn connection_closed_by_client(&self, id: ConnId) -> bool {
        self.connections
            .get(&id)
            .is_some_and(|c| c.closed_by_client)
    }

    /// The socket failed or the reader finished: release what is left.
    pub(crate) fn connection_lost(&mut self, id: ConnId) {
        if let Some(connection) = self.connections.get_mut(&id) {
            connection.lost();
        }
        self.finish_connection_turn(id);
    }

    /// Swaps the connection's pending output into `spare`. None if the
    /// connection is gone; otherwise whether it is closed.
    pub(crate) fn take_output(&mut self, id: ConnId, spare: &mut bytes::BytesMut) -> Option<bool> {
        let connection = self.connections.get_mut(&id)?;
        std::mem::swap(&mut connection.wire.out, spare);
        // What the writer took before was written: it asks again only then.
        connection.wire.writing_bytes = spare.len();
        if !spare.is_empty() {
            connection.wire.last_write = self.now;
        }
        let closed = connection.is_closed();
        if connection.output_drained() {
            self.send_consumer_output(id, false);
            self.run_local();
        }
        Some(closed)
    }

    /// True while this connection should not read: the shard's mailboxes are
    /// backed up, or the client is not reading what we write.
    pub(crate) fn should_stop_reading(&self, id: ConnId) -> bool {
        self.backpressure
            || self
                .connections
                .get(&id)
                .is_some_and(|c| c.wire.out.len() > crate::config::WRITE_BUFFER_HIGH_WATERMARK)
    }
}

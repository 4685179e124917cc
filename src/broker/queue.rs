//! A queue, as its owning shard holds it: ready messages in order, messages
//! delivered but not yet acknowledged, and consumers served round-robin while
//! they have prefetch credit, those of a higher `x-priority` first.
//!
//! The queue performs no I/O: `dispatch` appends `Delivery`s for the shard to
//! route to the consumers' connections, wherever they are.
//!
//! # Paging
//!
//! A queue keeps at most a window of its ready messages in memory
//! (`Paging::over_window`: its own `--queue-window`, the shard's
//! `--shard-window`). Past it, a new message is kept as an index entry
//! (`Paged`: where its publish record is in the store, and what ordering
//! and expiry need; `paged_index` holds them a byte or two each, in
//! delta-encoded blocks) and its body is let go; transient messages are
//! written to the store for that (without waiting for the disk, and void
//! at restart). Paged messages always follow the messages in memory, so a
//! level is: messages in memory, then those being read back (`loading`),
//! then the paged ones. When the window has room, the queue asks the
//! shard's pager (`Paging::want`) to read the next paged messages back;
//! they rejoin the ready messages in memory (`loaded`). Paged messages
//! expire when they are back in memory, as RabbitMQ's do at the head.
//! Quorum queues are not paged (a returned message goes to their back).

mod paged_index;

use std::collections::VecDeque;

use crate::util::hash::FastMap;

use paged_index::PagedIndex;

use crate::broker::timers::{TimerEvent, Timers};
use crate::broker::ConfirmTarget;
use crate::metadata::policy::{effective_args, PolicyDefinition};
use crate::metadata::queue_args::{Overflow, QueueArgs, QueueType, EXPIRY_MS_MAX};
use crate::metadata::vhost::QueueMeta;
use crate::model::ids::{ConnRef, ConsumerId, QueueId, QueueRef};
use crate::model::message::Message;
use crate::store::index::{HeldRecord, QueueRecords};
use crate::store::log::{Location, MessageStore};
use crate::store::record::PublishHead;
use crate::store::recovery::RecoveredMessage;
use crate::util::timer_wheel::TimerId;
use warren_protocol::{AmqpError, FieldTable, FieldValue, ShortStr};

/// `QueuedMessage::expires_at_ms` of a message without a TTL.
const NEVER: u64 = u64::MAX;

/// `delivery-mode` of a persistent message.
const PERSISTENT: u8 = 2;

#[derive(Clone, Debug)]
pub(crate) struct QueuedMessage {
    /// Position in the queue: requeued messages go back to their place.
    pub(crate) seq: u64,
    pub(crate) redelivered: bool,
    /// Priority level: 0 unless the queue has `x-max-priority`.
    pub(crate) level: u8,
    /// A quorum queue's count of the times the message came back
    /// (rabbit_fifo's `delivery_count`), shown as `x-delivery-count`. A
    /// u16 fits in the padding after `level`; it saturates, so a delivery
    /// limit above 65534 acts as none.
    pub(crate) delivery_count: u16,
    /// When the message expires, in shard milliseconds (`Timers::now_ms`);
    /// `NEVER` if it does not. (Not an `Option`: eight bytes fewer make a
    /// ready slot 128 bytes, which moves inline.)
    expires_at_ms: u64,
    /// The store segment holding its publish record; 0 if it is not
    /// stored (transient, or its queue is not durable). It fits in the
    /// padding after `level`.
    pub(crate) segment: u32,
    pub(crate) message: Message,
}

impl QueuedMessage {
    /// When the message expires, in shard milliseconds, if it does.
    pub(crate) fn expires_at_ms(&self) -> Option<u64> {
        (self.expires_at_ms != NEVER).then_some(self.expires_at_ms)
    }
}

/// Records that a stored message left its queue (acked, rejected, expired,
/// dead-lettered, purged, dropped, or its queue deleted).
fn forget(queue: QueueId, queued: &QueuedMessage, store: &mut MessageStore<ConfirmTarget>) {
    if queued.segment != 0 {
        store.append_removal(queue.0, queued.seq, queued.segment);
    }
}

/// Records a stored message's first delivery that awaits an ack, so that
/// after a restart it comes back marked redelivered.
fn mark_delivered(queue: QueueId, queued: &QueuedMessage, store: &mut MessageStore<ConfirmTarget>) {
    if queued.segment != 0 && !queued.redelivered {
        store.append_delivered(queue.0, queued.seq, queued.segment);
    }
}

/// Why a message left its queue dead, in RabbitMQ's words (x-death `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    Maxlen,
    /// A quorum queue's message came back more often than `x-delivery-limit`.
    DeliveryLimit,
}

impl DeathReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::Maxlen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message a queue dead-lettered; the shard republishes it to the queue's
/// dead-letter exchange.
#[derive(Debug)]
pub struct DeadLetter {
    pub queue: QueueId,
    pub reason: DeathReason,
    pub message: Message,
}

/// What a queue operation may need beyond the queue: the shard's timers,
/// where dead letters go, and the shard's message store.
pub struct QueueCtx<'a> {
    pub timers: &'a mut Timers,
    pub dead: &'a mut Vec<DeadLetter>,
    pub store: &'a mut MessageStore<ConfirmTarget>,
    now_ms: Option<u64>,
}

impl<'a> QueueCtx<'a> {
    pub fn new(
        timers: &'a mut Timers,
        dead: &'a mut Vec<DeadLetter>,
        store: &'a mut MessageStore<ConfirmTarget>,
    ) -> QueueCtx<'a> {
        QueueCtx {
            timers,
            dead,
            store,
            now_ms: None,
        }
    }

    /// The clock is read once per operation, and only when a deadline is
    /// involved.
    pub(crate) fn now_ms(&mut self) -> u64 {
        match self.now_ms {
            Some(now) => now,
            None => {
                let now = self.timers.now_ms();
                self.now_ms = Some(now);
                now
            }
        }
    }
}

/// A message on its way from a queue to a channel, for a consumer or for
/// basic.get (`message_count` is then Some: the get-ok's count).
#[derive(Debug)]
pub struct Delivery {
    pub head: DeliveryHead,
    pub message_count: Option<u32>,
    pub message: Message,
}

/// A delivery without its message: who it is for and what the channel
/// needs to write it.
#[derive(Clone, Copy, Debug)]
pub struct DeliveryHead {
    pub conn: ConnRef,
    pub channel: u16,
    pub consumer: ConsumerId,
    pub queue: QueueRef,
    pub seq: u64,
    pub redelivered: bool,
    pub no_ack: bool,
    /// Sent beyond the consumer's prefetch (`ConsumerSpec::lookahead`):
    /// if its channel or consumer is gone when it arrives, the client
    /// never saw it, and it goes back unmarked (`Settle::Return`).
    pub ahead: bool,
}

impl DeliveryHead {
    /// A consumer's delivery of `message`.
    pub(crate) fn with(self, message: Message) -> Delivery {
        Delivery {
            head: self,
            message_count: None,
            message,
        }
    }
}

/// Where a queue hands its deliveries. A consumer on the queue's own shard
/// can be written to as the queue hands the message over, from the queue's
/// own copy; one elsewhere needs an owned `Delivery` to travel.
pub trait DeliverySink {
    /// The queue keeps `message` until the consumer settles it.
    fn kept(&mut self, head: DeliveryHead, message: &Message);
    /// The queue is done with `message`: no ack is coming.
    fn given(&mut self, head: DeliveryHead, message: Message);
}

/// Deliveries collected to be sent on.
impl DeliverySink for Vec<Delivery> {
    fn kept(&mut self, head: DeliveryHead, message: &Message) {
        self.push(head.with(message.clone()));
    }

    fn given(&mut self, head: DeliveryHead, message: Message) {
        self.push(head.with(message));
    }
}

/// What a channel wants done with a delivered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Back into the queue at its old position, marked redelivered.
    Requeue,
    /// Like `Requeue`, for a delivery whose channel or connection closed
    /// before it was settled. Only a quorum queue tells the two apart: it
    /// appends a requeued message but puts a released one back ahead
    /// (rabbit_fifo returns a gone consumer's messages to the head).
    Released,
    /// The consumer's channel could not take the delivery, its global
    /// prefetch being reached: back at its old position as it was, and the
    /// consumer gets nothing more until its channel resumes it
    /// (RabbitMQ's limiter blocking a consumer).
    Return,
    /// Rejected without requeue: gone (dead-lettering comes with its issue).
    Discard,
}

/// A consumer as the client asked for it, sent to the queue's shard.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    pub conn: ConnRef,
    pub channel: u16,
    pub tag: ShortStr,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Unacknowledged deliveries allowed at once; 0 is unlimited.
    pub prefetch_count: u32,
    /// Deliveries the queue may send beyond `prefetch_count`, for the
    /// consumer's channel on another shard to hold until the client's
    /// acks make room (`config::REMOTE_LOOKAHEAD_FACTOR`); 0 for most.
    pub lookahead: u32,
    /// Its `x-priority` (0 unless given): consumers of a higher priority
    /// take messages while they have credit, lower ones only when every
    /// higher one is blocked, as in RabbitMQ.
    pub priority: i64,
}

#[derive(Debug)]
struct Consumer {
    id: ConsumerId,
    spec: ConsumerSpec,
    in_flight: u32,
    /// Its connection's output is full (`DELIVERY_OUTPUT_BYTES_MAX`): it
    /// takes nothing until the connection says it drained.
    stopped: bool,
    /// Its channel gave a delivery back (`Settle::Return`) and has not
    /// resumed it yet.
    limited: bool,
    /// Its connection is on another shard than the queue, and no
    /// prefetch bounds its deliveries (autoack, or prefetch 0): those
    /// travelling through the mailbox are bounded by `transit_bytes`. A
    /// prefetch bounds them already, and they count as unacknowledged.
    remote: bool,
    /// `Message::memory_size` of the deliveries sent to this (remote)
    /// consumer that its shard has not yet reported arrived
    /// (`ShardMsg::Delivered`). Past `DELIVERY_TRANSIT_BYTES_MAX` it takes
    /// nothing more, so that a consumer without prefetch (autoack, or
    /// prefetch 0) cannot draw a whole backlog into one mailbox batch
    /// before its connection can say that its output is full.
    transit_bytes: u64,
    /// `Message::memory_size` of its unacknowledged deliveries, kept for a
    /// consumer sent deliveries ahead (`ConsumerSpec::lookahead`) only:
    /// beyond its prefetch the queue sends while these are below
    /// `REMOTE_LOOKAHEAD_BYTES_MAX`.
    unacked_bytes: u64,
}

/// The consumers of one priority: a run of `Queue::consumers`, which are
/// kept sorted by priority, highest first, and in arrival order within one
/// priority. With all priorities equal (the usual case) there is one group,
/// and choosing a consumer is the plain round-robin it always was.
#[derive(Debug)]
struct PriorityGroup {
    priority: i64,
    /// One past its last consumer in `Queue::consumers` (it starts where
    /// the group before it ends).
    end: usize,
    /// Where its round-robin resumes, relative to the group's start.
    next: usize,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        !self.stopped
            && (!self.remote || self.transit_bytes < crate::config::DELIVERY_TRANSIT_BYTES_MAX)
            && (self.spec.no_ack
                || (!self.limited
                    && (self.spec.prefetch_count == 0
                        || self.in_flight < self.spec.prefetch_count
                        || (self.in_flight < self.spec.prefetch_count + self.spec.lookahead
                            && self.unacked_bytes < crate::config::REMOTE_LOOKAHEAD_BYTES_MAX))))
    }
}

/// One place in a priority level: a ready message, or the tombstone of one
/// that expired in the middle of the queue. Tombstones keep removal O(1) and
/// the level sorted by `seq`; they are dropped when they reach either end.
#[derive(Debug)]
struct Slot {
    seq: u64,
    queued: Option<QueuedMessage>,
    timer: Option<TimerId>,
}

/// A ready message held as an index entry only (see Paging above): its
/// publish record is read back from the store before it is delivered.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Paged {
    pub(crate) seq: u64,
    pub(crate) location: Location,
    body_bytes: u64,
    expires_at_ms: u64,
    redelivered: bool,
    level: u8,
    /// Written to the store only to be paged (a transient message, or one
    /// of a queue that is not durable): void at restart.
    transient: bool,
}

// A bool fits in the padding: an index entry stays 48 bytes.
const _: () = assert!(std::mem::size_of::<Paged>() <= 48);

/// Slots a level's deque keeps however few messages it holds.
const SLOTS_KEPT: usize = 64;

/// Paged messages a queue asks the pager to read back at once, at most.
const PAGE_READ_MESSAGES_MAX: usize = 4096;

/// What the pager reads for a queue: the first `entries.len()` messages
/// being loaded at `level`, as they were when asked (`epoch`: a purge
/// since voids the read).
#[derive(Debug)]
pub struct PageRead {
    pub queue: QueueId,
    pub(crate) epoch: u64,
    pub(crate) level: u8,
    pub(crate) entries: Vec<Paged>,
}

impl PageRead {
    /// The bodies it reads back: what it adds to its shard's window.
    pub(crate) fn body_bytes(&self) -> u64 {
        self.entries.iter().map(|p| p.body_bytes).sum()
    }
}

/// Ready messages: one FIFO per priority level, each ordered by `seq`.
#[derive(Debug)]
struct Ready {
    levels: Vec<VecDeque<Slot>>,
    /// Live (not tombstoned) messages per level.
    live: Vec<usize>,
    /// Per level, paged messages being read back (one read's worth), then
    /// those still paged: all after the level's messages in memory.
    loading: Vec<VecDeque<Paged>>,
    paged: Vec<PagedIndex>,
    /// Messages in `loading` and `paged`, all levels.
    pending: usize,
    /// Counts the clears: a read asked before one is void.
    epoch: u64,
    /// All ready messages, paged ones included.
    count: usize,
    body_bytes: u64,
    /// `Message::memory_size` of the live messages, for the memory alarm.
    memory_bytes: u64,
}

impl Ready {
    fn new(level_count: usize) -> Ready {
        Ready {
            levels: (0..level_count).map(|_| VecDeque::new()).collect(),
            live: vec![0; level_count],
            loading: (0..level_count).map(|_| VecDeque::new()).collect(),
            paged: (0..level_count).map(|l| PagedIndex::new(l as u8)).collect(),
            pending: 0,
            epoch: 0,
            count: 0,
            body_bytes: 0,
            memory_bytes: 0,
        }
    }

    /// Adds a message at `key` in its level: its `seq`, or for a quorum
    /// queue's returned message its new place at the back.
    fn add(&mut self, queued: QueuedMessage, key: u64, timer: Option<TimerId>) {
        let level = queued.level as usize;
        self.live[level] += 1;
        self.count += 1;
        self.body_bytes += queued.message.body_size();
        self.memory_bytes += queued.message.memory_size();
        let deque = &mut self.levels[level];
        let slot = Slot {
            seq: key,
            queued: Some(queued),
            timer,
        };
        // New messages go to the back; requeued ones back to their place,
        // usually near the head.
        if deque.back().is_none_or(|b| b.seq < slot.seq) {
            deque.push_back(slot);
        } else {
            let at = deque.partition_point(|m| m.seq < slot.seq);
            deque.insert(at, slot);
        }
    }

    fn took(&mut self, level: usize, queued: &QueuedMessage) {
        self.live[level] -= 1;
        self.count -= 1;
        self.body_bytes -= queued.message.body_size();
        self.memory_bytes -= queued.message.memory_size();
    }

    /// The highest non-empty level (paged messages count: a level whose
    /// next message is being read back is waited for).
    fn top_level(&self) -> Option<usize> {
        if self.pending == 0 {
            return (0..self.levels.len()).rev().find(|&l| self.live[l] > 0);
        }
        (0..self.levels.len())
            .rev()
            .find(|&l| self.live[l] > 0 || !self.loading[l].is_empty() || !self.paged[l].is_empty())
    }

    /// Whether a message of `level` must be paged to keep the order: its
    /// level already has paged messages.
    fn has_pending(&self, level: usize) -> bool {
        self.pending > 0 && (!self.loading[level].is_empty() || !self.paged[level].is_empty())
    }

    fn add_paged(&mut self, paged: Paged) {
        self.count += 1;
        self.pending += 1;
        self.body_bytes += paged.body_bytes;
        self.paged[paged.level as usize].push_back(paged);
    }

    /// A paged message is back (or gone): it no longer counts as paged.
    fn took_paged(&mut self, paged: &Paged) {
        self.count -= 1;
        self.pending -= 1;
        self.body_bytes -= paged.body_bytes;
    }

    fn pop_front(&mut self) -> Option<(QueuedMessage, Option<TimerId>)> {
        let level = self.top_level()?;
        let slot = self.levels[level].pop_front()?;
        let queued = slot.queued?;
        self.took(level, &queued);
        self.trim(level);
        Some((queued, slot.timer))
    }

    /// Takes the message `seq` out of `level`, wherever it is.
    fn take(&mut self, level: usize, seq: u64) -> Option<(QueuedMessage, Option<TimerId>)> {
        let deque = self.levels.get_mut(level)?;
        let at = deque.partition_point(|m| m.seq < seq);
        let slot = deque.get_mut(at).filter(|m| m.seq == seq)?;
        let queued = slot.queued.take()?;
        let timer = slot.timer.take();
        self.took(level, &queued);
        self.trim(level);
        Some((queued, timer))
    }

    fn get(&self, level: usize, seq: u64) -> Option<&QueuedMessage> {
        let deque = self.levels.get(level)?;
        let at = deque.partition_point(|m| m.seq < seq);
        deque.get(at).filter(|m| m.seq == seq)?.queued.as_ref()
    }

    fn trim(&mut self, level: usize) {
        let deque = &mut self.levels[level];
        while deque.front().is_some_and(|s| s.queued.is_none()) {
            deque.pop_front();
        }
        while deque.back().is_some_and(|s| s.queued.is_none()) {
            deque.pop_back();
        }
        // A deque keeps the capacity of the most it ever held: a thousand
        // queues that each once read a window back would keep a window's
        // slots each. Halved once three quarters are unused: amortised
        // O(1), and a queue that refills soon grows it again.
        if deque.capacity() > SLOTS_KEPT && deque.len() < deque.capacity() / 4 {
            deque.shrink_to(deque.capacity() / 2);
        }
    }

    /// Empties the queue, handing back each message and its timer, and
    /// each paged message.
    fn clear(
        &mut self,
        mut each: impl FnMut(Option<TimerId>, Option<QueuedMessage>, Option<Paged>),
    ) -> usize {
        let count = self.count;
        for deque in &mut self.levels {
            for slot in deque.drain(..) {
                each(slot.timer, slot.queued, None);
            }
        }
        if self.pending > 0 {
            for deque in self.loading.iter_mut() {
                deque.drain(..).for_each(|p| each(None, None, Some(p)));
            }
            for index in self.paged.iter_mut() {
                index.drain(|p| each(None, None, Some(p)));
            }
            self.pending = 0;
        }
        self.epoch += 1;
        self.live.iter_mut().for_each(|l| *l = 0);
        self.count = 0;
        self.body_bytes = 0;
        self.memory_bytes = 0;
        count
    }
}

/// A message delivered and not yet settled, and the consumer that holds it.
type Held = (QueuedMessage, ConsumerId);

/// The unacknowledged messages, by seq. A queue delivers its oldest ready
/// message first, so deliveries nearly always come in seq order and are
/// settled roughly in that order: they sit in a deque, found by their seq
/// with no hashing, and a settled one leaves a hole until the front passes
/// it. The few that arrive out of order (a requeued message delivered
/// again, a higher priority overtaking) go to a map.
#[derive(Debug, Default)]
struct Unacked {
    in_order: VecDeque<(u64, Option<Held>)>,
    /// Messages in `in_order` that are not holes.
    in_order_live: usize,
    out_of_order: FastMap<u64, Held>,
}

impl Unacked {
    fn len(&self) -> usize {
        self.in_order_live + self.out_of_order.len()
    }

    fn insert(&mut self, seq: u64, held: Held) {
        if self.in_order.back().is_none_or(|&(last, _)| last < seq) {
            self.in_order.push_back((seq, Some(held)));
            self.in_order_live += 1;
        } else {
            self.out_of_order.insert(seq, held);
        }
    }

    fn remove(&mut self, seq: u64) -> Option<Held> {
        let first = self.in_order.front().map_or(u64::MAX, |&(first, _)| first);
        if seq >= first {
            let at = if seq == first {
                0
            } else {
                self.in_order.partition_point(|&(s, _)| s < seq)
            };
            // A hole with this seq means it was settled and, if it is
            // unacked again (requeued and delivered anew), it is in the map.
            if let Some((_, slot)) = self.in_order.get_mut(at).filter(|(s, _)| *s == seq) {
                if let Some(held) = slot.take() {
                    self.in_order_live -= 1;
                    self.trim();
                    return Some(held);
                }
            }
        }
        self.out_of_order.remove(&seq)
    }

    /// Drops the holes at both ends. A message left unsettled at the front
    /// while many after it are settled would keep every hole behind it:
    /// when holes outnumber messages four to one, the front message moves
    /// to the map.
    fn trim(&mut self) {
        loop {
            while self.in_order.front().is_some_and(|(_, h)| h.is_none()) {
                self.in_order.pop_front();
            }
            while self.in_order.back().is_some_and(|(_, h)| h.is_none()) {
                self.in_order.pop_back();
            }
            if self.in_order.len() <= 64 || self.in_order.len() <= 4 * self.in_order_live {
                return;
            }
            if let Some((seq, Some(held))) = self.in_order.pop_front() {
                self.in_order_live -= 1;
                self.out_of_order.insert(seq, held);
            }
        }
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Held> {
        self.in_order
            .iter_mut()
            .filter_map(|(_, h)| h.as_mut())
            .chain(self.out_of_order.values_mut())
    }

    fn drain(&mut self) -> impl Iterator<Item = Held> + '_ {
        self.in_order_live = 0;
        self.in_order
            .drain(..)
            .filter_map(|(_, h)| h)
            .chain(self.out_of_order.drain().map(|(_, h)| h))
    }
}

#[derive(Debug)]
pub struct Queue {
    /// The arguments as declared, checked; `meta.args` holds the
    /// effective ones (these combined with the policy that applies).
    declared_args: QueueArgs,
    pub(crate) meta: QueueMeta,
    ready: Ready,
    unacked: Unacked,
    /// `Message::memory_size` of the unacknowledged messages.
    unacked_memory_bytes: u64,
    consumers: Vec<Consumer>,
    /// `consumers` by priority, highest first (see `PriorityGroup`).
    groups: Vec<PriorityGroup>,
    next_seq: u64,
    next_consumer_id: u64,
    had_consumers: bool,
    /// Published with a TTL of 0 (or already past): delivered at once to a
    /// waiting consumer or expired, never left waiting.
    expire_now: Vec<(u8, u64)>,
    /// Last use for `x-expires` (a consumer leaving, basic.get, redeclare).
    last_used_ms: u64,
    /// One `x-expires` timer at a time, however often the queue is used.
    expiry_armed: bool,
    /// Messages handed to consumers so far: flow control's sign that the
    /// consumers are taking messages at all.
    deliveries: u64,
    /// `deliveries` when a publisher in flow waited a whole tick for these
    /// consumers in vain: a stalled consumer slows no publisher, until it
    /// takes a message again.
    flow_stalled_at: Option<u64>,
    /// It is in `Paging::wanted`, waiting for the pager.
    page_wanted: bool,
    /// What the management API shows as the queue's message_stats: owned
    /// by the queue's shard, summed by nobody, read on request.
    pub(crate) stats: QueueStats,
}

/// A queue's counts since it was created, as RabbitMQ's management API
/// names them (`message_stats`); rates are computed by the control plane
/// from two readings. Plain fields on the queue, which its shard alone
/// touches: no shared counter, no branch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub publish: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub ack: u64,
    pub redeliver: u64,
}

/// What became of a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    Accepted,
    /// Refused by `x-overflow` reject-publish(-dlx): the publisher gets a nack.
    Rejected,
    /// Accepted and appended to the store: its confirm waits for the fsync.
    Stored,
}

impl Queue {
    pub fn new(meta: QueueMeta) -> Queue {
        let level_count = meta.args.max_priority.map_or(1, |max| max as usize + 1);
        Queue {
            declared_args: meta.args.clone(),
            meta,
            ready: Ready::new(level_count),
            unacked: Unacked::default(),
            unacked_memory_bytes: 0,
            consumers: Vec::new(),
            groups: Vec::new(),
            next_seq: 1,
            next_consumer_id: 1,
            had_consumers: false,
            expire_now: Vec::new(),
            last_used_ms: 0,
            expiry_armed: false,
            deliveries: 0,
            flow_stalled_at: None,
            stats: QueueStats::default(),
            page_wanted: false,
        }
    }

    /// Messages delivered (or got) and not acknowledged yet.
    pub(crate) fn unacked_count(&self) -> u32 {
        self.unacked.len() as u32
    }

    fn is_quorum(&self) -> bool {
        self.meta.args.queue_type == QueueType::Quorum
    }

    /// The message as a quorum queue hands it out: with `x-delivery-count`
    /// once it came back (always, for basic.get), as rabbit_fifo_client
    /// adds it. Other queues hand out the message as it is.
    fn as_delivered(&self, queued: &QueuedMessage, get: bool) -> Option<Message> {
        if !self.is_quorum() || (queued.delivery_count == 0 && !get) {
            return None;
        }
        Some(with_delivery_count(&queued.message, queued.delivery_count))
    }

    pub(crate) fn name(&self) -> &ShortStr {
        &self.meta.name
    }

    /// Messages ready for delivery (what queue.declare-ok and purge count).
    pub(crate) fn message_count(&self) -> u32 {
        self.ready.count as u32
    }

    /// What the memory alarm and the paging window count for this queue:
    /// its ready messages in memory and its unacknowledged ones
    /// (`Message::memory_size`), and the autoack deliveries on their way to
    /// a consumer on another shard (the queue no longer holds them, and the
    /// consumer's connection does not yet). O(consumers): called on the
    /// alarm check and the paging decision, not per message.
    pub(crate) fn memory_bytes(&self) -> u64 {
        let transit: u64 = self
            .consumers
            .iter()
            .filter(|c| c.spec.no_ack)
            .map(|c| c.transit_bytes)
            .sum();
        self.ready.memory_bytes + self.unacked_memory_bytes + transit
    }

    /// The consumer's shard reports deliveries arrived (`ShardMsg::Delivered`):
    /// they no longer count against its transit bound. True if the consumer
    /// is still there (the caller dispatches).
    pub(crate) fn delivered(&mut self, consumer: ConsumerId, bytes: u64) -> bool {
        match self.consumers.iter_mut().find(|c| c.id == consumer) {
            Some(c) => {
                c.transit_bytes = c.transit_bytes.saturating_sub(bytes);
                true
            }
            None => false,
        }
    }

    /// What its paged messages' index entries take, as allocated (the
    /// memory alarm counts it; the paging window does not, as it is not
    /// theirs to page). O(priority levels).
    pub(crate) fn index_bytes(&self) -> u64 {
        let paged: usize = self.ready.paged.iter().map(PagedIndex::memory_bytes).sum();
        let loading: usize = self.ready.loading.iter().map(VecDeque::capacity).sum();
        (paged + loading * std::mem::size_of::<Paged>()) as u64
    }

    pub(crate) fn consumer_count(&self) -> u32 {
        self.consumers.len() as u32
    }

    /// Flow control's test: more ready messages than its consumers are
    /// taking, while it has consumers to take them. A queue without
    /// consumers is a buffer, and filling it is what it is for.
    pub(crate) fn outpaces_consumers(&self) -> bool {
        self.ready.count > crate::config::FLOW_READY_HIGH
            && !self.consumers.is_empty()
            && self.flow_stalled_at != Some(self.deliveries)
    }

    /// Whether a publisher in flow still waits: until the backlog is down
    /// to the low mark (hysteresis, so that it does not pause again at once).
    pub(crate) fn outpaces_consumers_still(&self) -> bool {
        self.ready.count > crate::config::FLOW_READY_LOW && !self.consumers.is_empty()
    }

    pub(crate) fn deliveries(&self) -> u64 {
        self.deliveries
    }

    /// A publisher waited a whole tick in flow and these consumers took
    /// nothing meanwhile (`deliveries` is still `since`).
    pub(crate) fn flow_waited_in_vain(&mut self, since: u64) {
        if self.deliveries == since {
            self.flow_stalled_at = Some(since);
        }
    }

    /// The message's TTL: the smaller of the queue's and its own expiration.
    fn ttl_ms(&self, message: &Message) -> Option<u64> {
        let own = message
            .expiration()
            .and_then(|e| parse_expiration(e.as_str()).ok());
        match (self.meta.args.message_ttl_ms, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn level_of(&self, message: &Message) -> u8 {
        match self.meta.args.max_priority {
            None => 0,
            Some(max) => message.priority().unwrap_or(0).min(max),
        }
    }

    fn over_limit_with(&self, extra_count: usize, extra_bytes: u64) -> bool {
        let args = &self.meta.args;
        args.max_length
            .is_some_and(|max| (self.ready.count + extra_count) as u64 > max)
            || args
                .max_length_bytes
                .is_some_and(|max| self.ready.body_bytes + extra_bytes > max)
    }

    /// Takes a published message: straight to a consumer when nothing is
    /// waiting ahead of it, otherwise among the ready ones. Deliveries go to
    /// `out`; the caller dispatches the queue afterwards as usual.
    pub fn publish(
        &mut self,
        message: Message,
        out: &mut impl DeliverySink,
        ctx: &mut QueueCtx,
    ) -> Enqueued {
        if self.meta.args.overflow != Overflow::DropHead
            && self.over_limit_with(1, message.body_size())
        {
            if self.meta.args.overflow == Overflow::RejectPublishDlx {
                self.dead_letter(message, DeathReason::Maxlen, ctx);
            }
            return Enqueued::Rejected;
        }
        self.stats.publish += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        let level = self.level_of(&message);
        let expires_at_ms = self
            .ttl_ms(&message)
            .map(|ttl| ctx.now_ms().saturating_add(ttl));
        let mut queued = QueuedMessage {
            seq,
            redelivered: false,
            level,
            delivery_count: 0,
            expires_at_ms: expires_at_ms.unwrap_or(NEVER),
            segment: 0,
            message,
        };
        // Only persistent messages in durable queues are written; the
        // durable check comes first, as it is free.
        let stored = self.meta.durable && queued.message.delivery_mode() == Some(PERSISTENT);
        let mut location = None;
        if stored {
            let expires_at_epoch_ms = expires_at_ms.map(|at| ctx.timers.epoch_ms_of(at));
            let at = ctx.store.append_publish_at(&PublishHead {
                queue_id: self.meta.id.0,
                seq,
                delivered: false,
                transient: false,
                level,
                expires_at_epoch_ms,
                vhost: self.meta.vhost.as_str(),
                queue_name: self.meta.name.as_str(),
                message: &queued.message,
            });
            queued.segment = at.segment;
            location = Some(at);
        }
        let enqueued = if stored {
            Enqueued::Stored
        } else {
            Enqueued::Accepted
        };
        // It would leave the ready FIFO at once: skip it (and its timer).
        // Strictly past is expired, as in `next_ready`.
        if self.ready.count == 0 && expires_at_ms.is_none_or(|at| at >= ctx.now_ms()) {
            if let Some(at) = self.next_consumer_with_credit() {
                self.deliver_to(at, queued, out, ctx);
                return enqueued;
            }
        }
        if self.should_page(level, ctx) {
            self.page_out(queued, location, ctx);
        } else {
            self.add_ready(queued, ctx);
        }
        enqueued
    }

    /// Whether some of its ready messages are paged out: a basic.get
    /// that found none in memory waits for them.
    pub(crate) fn is_paging_in(&self) -> bool {
        self.ready.pending > 0
    }

    /// Whether a new ready message of `level` is paged out rather than
    /// kept in memory: its level already has paged messages (they come
    /// first), or the window is full.
    fn should_page(&self, level: u8, ctx: &QueueCtx) -> bool {
        !self.is_quorum()
            && (self.ready.has_pending(level as usize)
                || ctx.store.paging.over_window(self.ready.memory_bytes))
    }

    /// Keeps a ready message as an index entry only. One not in the store
    /// yet (transient, or in a queue that is not durable) is written now,
    /// marked transient: it is read back from there, and never restored.
    fn page_out(
        &mut self,
        mut queued: QueuedMessage,
        location: Option<Location>,
        ctx: &mut QueueCtx,
    ) {
        let transient = location.is_none();
        let location = match location {
            Some(location) => location,
            None => {
                let expires_at_epoch_ms =
                    queued.expires_at_ms().map(|at| ctx.timers.epoch_ms_of(at));
                let at = ctx.store.append_publish_at(&PublishHead {
                    queue_id: self.meta.id.0,
                    seq: queued.seq,
                    delivered: queued.redelivered,
                    transient: true,
                    level: queued.level,
                    expires_at_epoch_ms,
                    vhost: self.meta.vhost.as_str(),
                    queue_name: self.meta.name.as_str(),
                    message: &queued.message,
                });
                queued.segment = at.segment;
                at
            }
        };
        ctx.store.paged_out(location.segment);
        self.ready.add_paged(Paged {
            seq: queued.seq,
            location,
            body_bytes: queued.message.body_size(),
            expires_at_ms: queued.expires_at_ms,
            redelivered: queued.redelivered,
            level: queued.level,
            transient,
        });
    }

    /// Asks the pager for the next paged messages, if the queue has some
    /// and room for them, and is not waiting for a read already.
    fn want_pages(&mut self, ctx: &mut QueueCtx) {
        if self.ready.pending == 0 || self.page_wanted {
            return;
        }
        if self.ready.loading.iter().any(|l| !l.is_empty()) {
            return;
        }
        // Read ahead once half the window is free, for consumers to take;
        // at once if the next message to deliver is paged (its level's
        // others in memory are of no use to it), consumers or not, so that
        // the head is in memory for basic.get, expiry and length limits
        // as in a queue that was never paged. A queue nobody consumes from
        // reads nothing more: with many idle backlogs, their read-ahead
        // would fill memory with messages nobody asked for.
        let paging = &ctx.store.paging;
        if !self.head_is_paged() {
            if self.ready.memory_bytes >= paging.queue_window_bytes / 2 {
                return;
            }
            if self.consumers.is_empty() {
                return;
            }
        }
        self.page_wanted = true;
        ctx.store.paging.want(self.meta.id);
    }

    /// Whether the next message to deliver is paged out: the highest level
    /// with messages has none in memory.
    pub(crate) fn head_is_paged(&self) -> bool {
        self.ready
            .top_level()
            .is_some_and(|l| self.ready.live[l] == 0)
    }

    /// The pager will not read for this queue now (its shard's window is
    /// full and the queue still has messages in memory to deliver): it asks
    /// again at its next dispatch.
    pub(crate) fn page_deferred(&mut self) {
        self.page_wanted = false;
    }

    /// The pager's read for this queue: the first paged messages of the
    /// highest level that has some, up to `budget_bytes` (at least one),
    /// those already on disk only. They move to `loading`. None if there is
    /// nothing to read yet; `waiting` says whether the queue still wants
    /// pages (the next batch write will let them be read).
    pub(crate) fn page_read(
        &mut self,
        budget_bytes: u64,
        ctx: &mut QueueCtx,
    ) -> (Option<PageRead>, bool) {
        self.page_wanted = false;
        let Some(level) = (0..self.ready.paged.len())
            .rev()
            .find(|&l| !self.ready.paged[l].is_empty())
        else {
            return (None, false);
        };
        if !self.ready.loading[level].is_empty() {
            return (None, false);
        }
        let mut entries = Vec::new();
        let mut bytes = 0u64;
        while let Some(next) = self.ready.paged[level].front() {
            let too_much = !entries.is_empty()
                && (bytes + next.body_bytes > budget_bytes
                    || entries.len() >= PAGE_READ_MESSAGES_MAX);
            if too_much || !ctx.store.is_written(next.location) {
                break;
            }
            bytes += next.body_bytes;
            if let Some(paged) = self.ready.paged[level].pop_front() {
                self.ready.loading[level].push_back(paged);
                entries.push(paged);
            }
        }
        if entries.is_empty() {
            // Its records are still being written.
            self.page_wanted = true;
            return (None, true);
        }
        let read = PageRead {
            queue: self.meta.id,
            epoch: self.ready.epoch,
            level: level as u8,
            entries,
        };
        (Some(read), false)
    }

    /// The pager read these paged messages back (`messages`, in order, or
    /// None if the read failed: they are paged again, to be read later).
    pub(crate) fn loaded(
        &mut self,
        read: PageRead,
        messages: Option<Vec<Message>>,
        ctx: &mut QueueCtx,
    ) {
        if read.epoch != self.ready.epoch {
            // Purged meanwhile: they are gone already.
            return;
        }
        let level = read.level as usize;
        let Some(messages) = messages else {
            let loading = &mut self.ready.loading[level];
            while let Some(paged) = loading.pop_back() {
                self.ready.paged[level].push_front(paged);
            }
            // Asked again: the pager waits a moment after a failed read.
            self.want_pages(ctx);
            return;
        };
        for message in messages {
            let Some(paged) = self.ready.loading[level].pop_front() else {
                break;
            };
            self.ready.took_paged(&paged);
            ctx.store.paged_in(paged.location.segment);
            let queued = QueuedMessage {
                seq: paged.seq,
                redelivered: paged.redelivered,
                level: paged.level,
                delivery_count: 0,
                expires_at_ms: paged.expires_at_ms,
                segment: paged.location.segment,
                message,
            };
            self.add_ready(queued, ctx);
        }
        // Any the pager could not read back are gone (logged there).
        while let Some(paged) = self.ready.loading[level].pop_front() {
            self.ready.took_paged(&paged);
            ctx.store.paged_in(paged.location.segment);
            ctx.store
                .append_removal(self.meta.id.0, paged.seq, paged.location.segment);
        }
        if self.ready.pending == 0 {
            // The backlog is drained: its index's memory goes too.
            for loading in &mut self.ready.loading {
                loading.shrink_to_fit();
            }
            for paged in &mut self.ready.paged {
                paged.release_if_empty();
            }
        }
    }

    /// A paged message is gone without being read back (purge, deletion).
    fn forget_paged(queue: QueueId, paged: Paged, store: &mut MessageStore<ConfirmTarget>) {
        store.paged_in(paged.location.segment);
        store.append_removal(queue.0, paged.seq, paged.location.segment);
    }

    /// Room for `count` restored messages as index entries, so that a
    /// backlog's block list is allocated once, not doubled as it comes.
    pub(crate) fn reserve_restored(&mut self, count: u64) {
        if self.is_quorum() {
            return;
        }
        let level = self.ready.levels.len() - 1;
        if let Some(paged) = self.ready.paged.get_mut(level) {
            paged.reserve(count as usize);
        }
    }

    /// The queue's messages are all restored. New messages take sequence
    /// numbers past every one the queue's records carry (removed ones too:
    /// a removal in the log must never cancel a new message). The head of
    /// the backlog is read back at once, as a running queue keeps it: a
    /// message whose TTL ran out while the broker was down expires now,
    /// consumer or not.
    pub(crate) fn finish_restore(&mut self, next_seq: u64, ctx: &mut QueueCtx) {
        self.next_seq = self.next_seq.max(next_seq);
        self.want_pages(ctx);
    }

    /// Takes back a message recovered from the store at start (its record
    /// where the last run wrote it, or rewritten), after those restored
    /// before it: its sequence number is the one its record carries. A deadline
    /// that passed while the broker was down makes it expire at the next
    /// dispatch (dead-lettered if the queue says so).
    pub(crate) fn restore(&mut self, recovered: RecoveredMessage, ctx: &mut QueueCtx) {
        let seq = recovered.seq;
        debug_assert!(seq >= self.next_seq, "restored out of order");
        self.next_seq = self.next_seq.max(seq + 1);
        let top_level = (self.ready.levels.len() - 1) as u8;
        let level = recovered.level.min(top_level);
        let expires_at_ms = recovered
            .expires_at_epoch_ms
            .map_or(NEVER, |at| ctx.timers.shard_ms_of_epoch(at));
        let location = Location {
            segment: recovered.segment,
            offset: recovered.offset,
            len: recovered.len,
        };
        let Some(message) = recovered.message else {
            // Past the queue's window: it stays on disk until its turn.
            ctx.store.paged_out(location.segment);
            self.ready.add_paged(Paged {
                seq,
                location,
                body_bytes: recovered.body_bytes,
                expires_at_ms,
                redelivered: recovered.redelivered,
                level,
                transient: false,
            });
            return;
        };
        let queued = QueuedMessage {
            seq,
            redelivered: recovered.redelivered,
            level,
            delivery_count: 0,
            expires_at_ms,
            segment: recovered.segment,
            message,
        };
        if recovered.len > 0 && self.should_page(queued.level, ctx) {
            self.page_out(queued, Some(location), ctx);
        } else {
            self.add_ready(queued, ctx);
        }
    }

    /// Copies this queue's stored messages that live in segment `from`
    /// into the store's active segment (compaction: see
    /// `MessageStore::compaction_candidate`). A message delivered and not
    /// acknowledged, or delivered before, is copied as delivered.
    pub(crate) fn relocate(&mut self, from: u32, ctx: &mut QueueCtx) {
        let QueueCtx { timers, store, .. } = ctx;
        let meta = &self.meta;
        let mut copy = |queued: &mut QueuedMessage, delivered: bool| {
            if queued.segment != from {
                return;
            }
            queued.segment = store.append_moved(
                &PublishHead {
                    queue_id: meta.id.0,
                    seq: queued.seq,
                    delivered,
                    // A transient message read back from a page stays void
                    // at restart.
                    transient: !meta.durable || queued.message.delivery_mode() != Some(PERSISTENT),
                    level: queued.level,
                    expires_at_epoch_ms: queued.expires_at_ms().map(|at| timers.epoch_ms_of(at)),
                    vhost: meta.vhost.as_str(),
                    queue_name: meta.name.as_str(),
                    message: &queued.message,
                },
                from,
            );
        };
        for level in &mut self.ready.levels {
            for slot in level.iter_mut() {
                if let Some(queued) = slot.queued.as_mut() {
                    let delivered = queued.redelivered;
                    copy(queued, delivered);
                }
            }
        }
        for (queued, _) in self.unacked.values_mut() {
            copy(queued, true);
        }
    }

    /// The queue's stored messages, for the clean-stop index
    /// (`store::index`): those it holds in memory, ready or unacknowledged
    /// (where their records are is for the store to find), and per
    /// priority level its paged ones, in sequence order.
    pub(crate) fn stored_records<'a>(
        &'a self,
        timers: &'a Timers,
    ) -> QueueRecords<impl Iterator<Item = HeldRecord> + Clone + 'a> {
        let persistent = |queued: &QueuedMessage| {
            self.meta.durable && queued.message.delivery_mode() == Some(PERSISTENT)
        };
        let held = |queued: &QueuedMessage, delivered: bool| HeldRecord {
            seq: queued.seq,
            segment: queued.segment,
            place: None,
            body_bytes: queued.message.body_size(),
            expires_at_epoch_ms: queued.expires_at_ms().map(|at| timers.epoch_ms_of(at)),
            level: queued.level,
            delivered,
            persistent: persistent(queued),
        };
        let mut in_memory = Vec::new();
        for level in &self.ready.levels {
            for queued in level.iter().filter_map(|s| s.queued.as_ref()) {
                if queued.segment != 0 {
                    in_memory.push(held(queued, queued.redelivered));
                }
            }
        }
        let unacked = self.unacked.in_order.iter().filter_map(|(_, h)| h.as_ref());
        for (queued, _) in unacked.chain(self.unacked.out_of_order.values()) {
            if queued.segment != 0 {
                in_memory.push(held(queued, true));
            }
        }
        let durable = self.meta.durable;
        let paged = self
            .ready
            .loading
            .iter()
            .zip(&self.ready.paged)
            .map(move |(loading, paged)| {
                loading
                    .iter()
                    .copied()
                    .chain(paged.iter())
                    .map(move |p| HeldRecord {
                        seq: p.seq,
                        segment: p.location.segment,
                        place: Some((p.location.offset, p.location.len)),
                        body_bytes: p.body_bytes,
                        expires_at_epoch_ms: (p.expires_at_ms != NEVER)
                            .then(|| timers.epoch_ms_of(p.expires_at_ms)),
                        level: p.level,
                        delivered: p.redelivered,
                        persistent: durable && !p.transient,
                    })
            })
            .collect();
        QueueRecords {
            id: self.meta.id.0,
            vhost: self.meta.vhost.as_str().to_string(),
            name: self.meta.name.as_str().to_string(),
            durable,
            next_seq: self.next_seq,
            in_memory,
            paged,
        }
    }

    /// The queue is being deleted: every stored message of it is gone.
    pub(crate) fn forget_all(&mut self, ctx: &mut QueueCtx) {
        let id = self.meta.id;
        self.expire_now.clear();
        let QueueCtx { timers, store, .. } = ctx;
        self.ready.clear(|timer, queued, paged| {
            if let Some(timer) = timer {
                timers.cancel(timer);
            }
            if let Some(queued) = queued {
                forget(id, &queued, store);
            }
            if let Some(paged) = paged {
                Queue::forget_paged(id, paged, store);
            }
        });
        for (queued, _) in self.unacked.drain() {
            forget(id, &queued, ctx.store);
        }
    }

    /// Puts a message among the ready ones, with a timer if it can expire.
    fn add_ready(&mut self, queued: QueuedMessage, ctx: &mut QueueCtx) {
        let key = queued.seq;
        self.add_ready_at(queued, key, ctx);
    }

    /// A quorum queue's message coming back goes to the back of the queue,
    /// as if published now: RabbitMQ 3.10's rabbit_fifo turns a return into
    /// a `requeue` command that appends the message (observed: of 1..5
    /// with 1, 2 and 3 fetched, 3 and then 1 rejected with requeue, the
    /// queue hands out 4, 5, 3, 1). Its place is a fresh sequence number,
    /// while the message keeps its own `seq`, the store's name for it.
    fn add_returned(&mut self, queued: QueuedMessage, ctx: &mut QueueCtx) {
        let key = self.next_seq;
        self.next_seq += 1;
        self.add_ready_at(queued, key, ctx);
    }

    /// `add_ready` at `key` in the message's level (see `Ready::add`); the
    /// expiry timer names the message by the same key.
    fn add_ready_at(&mut self, queued: QueuedMessage, key: u64, ctx: &mut QueueCtx) {
        let timer = match queued.expires_at_ms() {
            None => None,
            Some(at) if at <= ctx.now_ms() => {
                self.expire_now.push((queued.level, key));
                None
            }
            Some(at) => Some(ctx.timers.insert(
                at,
                TimerEvent::MessageExpiry {
                    queue: self.meta.id,
                    level: queued.level,
                    seq: key,
                },
            )),
        };
        self.ready.add(queued, key, timer);
    }

    /// The next ready message that has not expired; expired ones met on the
    /// way are dead-lettered, so an expired message is never delivered.
    fn next_ready(&mut self, ctx: &mut QueueCtx) -> Option<QueuedMessage> {
        loop {
            let (queued, timer) = self.ready.pop_front()?;
            if let Some(id) = timer {
                ctx.timers.cancel(id);
            }
            // Strictly past: a TTL-0 message (deadline = now) may still go
            // to a consumer that can take it right now.
            if queued.expires_at_ms().is_some_and(|at| at < ctx.now_ms()) {
                forget(self.meta.id, &queued, ctx.store);
                self.dead_letter(queued.message, DeathReason::Expired, ctx);
                continue;
            }
            return Some(queued);
        }
    }

    fn dead_letter(&self, message: Message, reason: DeathReason, ctx: &mut QueueCtx) {
        if self.meta.args.dead_letter_exchange.is_some() {
            ctx.dead.push(DeadLetter {
                queue: self.meta.id,
                reason,
                message,
            });
        }
    }

    /// A message timer fired: the message expires if it is still ready.
    pub(crate) fn expire(&mut self, level: u8, seq: u64, ctx: &mut QueueCtx) {
        let now = ctx.now_ms();
        let due = self
            .ready
            .get(level as usize, seq)
            .is_some_and(|q| q.expires_at_ms().is_some_and(|at| at <= now));
        if !due {
            return;
        }
        if let Some((queued, _)) = self.ready.take(level as usize, seq) {
            forget(self.meta.id, &queued, ctx.store);
            self.dead_letter(queued.message, DeathReason::Expired, ctx);
        }
    }

    pub fn add_consumer(&mut self, spec: ConsumerSpec) -> Result<ConsumerId, AmqpError> {
        let locked = self.consumers.iter().any(|c| c.spec.exclusive);
        // RabbitMQ refuses an exclusive consumer on a single-active-consumer
        // queue even when it has no consumer yet.
        let exclusive_refused =
            spec.exclusive && (!self.consumers.is_empty() || self.meta.args.single_active_consumer);
        if locked || exclusive_refused {
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '/' in exclusive use",
                self.meta.name
            )));
        }
        let id = ConsumerId(self.next_consumer_id);
        self.next_consumer_id += 1;
        let remote =
            spec.conn.shard != self.meta.shard && (spec.no_ack || spec.prefetch_count == 0);
        let at = if self.meta.args.single_active_consumer {
            // The first consumer is the active one, whatever its priority;
            // the others wait by priority, so that when it goes the
            // highest-priority one (the earliest among equals) takes over,
            // as in RabbitMQ 3.10. Groups are not used here.
            let waiting = self.consumers.get(1..).unwrap_or_default();
            self.consumers.len().min(
                1 + waiting
                    .iter()
                    .position(|c| c.spec.priority < spec.priority)
                    .unwrap_or(waiting.len()),
            )
        } else {
            self.group_insert(spec.priority)
        };
        self.consumers.insert(
            at,
            Consumer {
                id,
                spec,
                in_flight: 0,
                stopped: false,
                limited: false,
                remote,
                transit_bytes: 0,
                unacked_bytes: 0,
            },
        );
        self.had_consumers = true;
        Ok(id)
    }

    /// Makes room in the groups for one more consumer of `priority`, after
    /// those of its priority; returns its place in `consumers`.
    fn group_insert(&mut self, priority: i64) -> usize {
        let found = self.groups.iter().position(|g| g.priority <= priority);
        let index = match found {
            Some(index) if self.groups[index].priority == priority => index,
            _ => {
                let index = found.unwrap_or(self.groups.len());
                let start = index.checked_sub(1).map_or(0, |i| self.groups[i].end);
                self.groups.insert(
                    index,
                    PriorityGroup {
                        priority,
                        end: start,
                        next: 0,
                    },
                );
                index
            }
        };
        let at = self.groups[index].end;
        for group in &mut self.groups[index..] {
            group.end += 1;
        }
        at
    }

    /// Takes the consumer at `at` out of its group, keeping the group's
    /// round-robin where it was.
    fn group_remove(&mut self, at: usize) {
        let Some(index) = self.groups.iter().position(|g| at < g.end) else {
            return;
        };
        let start = index.checked_sub(1).map_or(0, |i| self.groups[i].end);
        for group in &mut self.groups[index..] {
            group.end -= 1;
        }
        let group = &mut self.groups[index];
        let len = group.end - start;
        if len == 0 {
            self.groups.remove(index);
            return;
        }
        if group.next > at - start {
            group.next -= 1;
        }
        if group.next >= len {
            group.next = 0;
        }
    }

    /// Stops or restarts a consumer whose connection's output filled or
    /// drained. True if it was there (the caller dispatches after a restart).
    pub(crate) fn set_consumer_stopped(&mut self, consumer: ConsumerId, stopped: bool) -> bool {
        match self.consumers.iter_mut().find(|c| c.id == consumer) {
            Some(c) => {
                c.stopped = stopped;
                true
            }
            None => false,
        }
    }

    /// Removes a consumer; true if it was there.
    pub(crate) fn cancel_consumer(
        &mut self,
        conn: ConnRef,
        channel: u16,
        tag: &str,
        ctx: &mut QueueCtx,
    ) -> bool {
        let Some(at) = self.consumers.iter().position(|c| {
            c.spec.conn == conn && c.spec.channel == channel && c.spec.tag.as_str() == tag
        }) else {
            return false;
        };
        self.consumers.remove(at);
        self.group_remove(at);
        if self.consumers.is_empty() {
            // Unused from now on: x-expires counts from here.
            self.touch(ctx);
        }
        true
    }

    /// Takes the policy that now applies (None: no policy): the effective
    /// arguments become the declared ones combined with it. A shorter
    /// `expires` arms the expiry timer sooner; a lower length limit takes
    /// effect at the next dispatch, which the caller runs. A new
    /// `message-ttl` applies to messages published from now on, as in
    /// RabbitMQ. True if the effective arguments changed.
    pub(crate) fn set_policy(
        &mut self,
        policy: Option<&PolicyDefinition>,
        ctx: &mut QueueCtx,
    ) -> bool {
        let args = effective_args(&self.declared_args, &self.meta.arguments, policy);
        if args == self.meta.args {
            return false;
        }
        let old_expires = self.meta.args.expires_ms;
        self.meta.args = args;
        if let Some(expires) = self.meta.args.expires_ms {
            if old_expires.is_none() {
                self.last_used_ms = ctx.now_ms();
            }
            if old_expires.is_none_or(|old| expires < old) && self.consumers.is_empty() {
                self.arm_expiry(self.last_used_ms.saturating_add(expires), ctx);
            }
        }
        true
    }

    /// Records a use (basic.get, redeclare, the last consumer leaving) and
    /// sets the `x-expires` timer from it.
    pub(crate) fn touch(&mut self, ctx: &mut QueueCtx) {
        let Some(expires) = self.meta.args.expires_ms else {
            return;
        };
        self.last_used_ms = ctx.now_ms();
        if !self.expiry_armed {
            self.arm_expiry(self.last_used_ms.saturating_add(expires), ctx);
        }
    }

    fn arm_expiry(&mut self, at_ms: u64, ctx: &mut QueueCtx) {
        self.expiry_armed = true;
        let queue = self.meta.id;
        ctx.timers.insert(at_ms, TimerEvent::QueueExpiry { queue });
    }

    /// The `x-expires` timer fired: true if the queue has been unused for its
    /// whole period and should be deleted. If it was used meanwhile, the
    /// timer is set again from the last use; with consumers, the last one
    /// to leave sets it.
    pub(crate) fn expiry_due(&mut self, ctx: &mut QueueCtx) -> bool {
        self.expiry_armed = false;
        let Some(expires) = self.meta.args.expires_ms else {
            return false;
        };
        if !self.consumers.is_empty() {
            return false;
        }
        let at = self.last_used_ms.saturating_add(expires);
        if ctx.now_ms() >= at {
            return true;
        }
        self.arm_expiry(at, ctx);
        false
    }

    /// RabbitMQ deletes an auto-delete queue when its last consumer goes,
    /// but never before it had one.
    pub(crate) fn should_auto_delete(&self) -> bool {
        self.meta.auto_delete && self.had_consumers && self.consumers.is_empty()
    }

    /// The consumers' tags and where they are, for basic.cancel notifications
    /// when the queue is deleted.
    pub(crate) fn consumer_specs(&self) -> impl Iterator<Item = &ConsumerSpec> {
        self.consumers.iter().map(|c| &c.spec)
    }

    pub fn settle(&mut self, seq: u64, consumer: ConsumerId, settle: Settle, ctx: &mut QueueCtx) {
        let Some((mut queued, holder)) = self.unacked.remove(seq) else {
            return;
        };
        self.unacked_memory_bytes -= queued.message.memory_size();
        debug_assert_eq!(holder, consumer);
        if let Some(c) = self.consumers.iter_mut().find(|c| c.id == holder) {
            c.in_flight = c.in_flight.saturating_sub(1);
            if c.spec.lookahead > 0 {
                c.unacked_bytes = c.unacked_bytes.saturating_sub(queued.message.memory_size());
            }
            c.limited |= settle == Settle::Return;
        }
        match settle {
            Settle::Ack => {
                self.stats.ack += 1;
                forget(self.meta.id, &queued, ctx.store)
            }
            Settle::Discard => {
                forget(self.meta.id, &queued, ctx.store);
                self.dead_letter(queued.message, DeathReason::Rejected, ctx)
            }
            Settle::Requeue | Settle::Released | Settle::Return => {
                // A returned message was never seen by the client.
                queued.redelivered |= settle != Settle::Return;
                if self.is_quorum() && settle != Settle::Return {
                    // rabbit_fifo counts every return, and one beyond the
                    // limit dead-letters the message instead.
                    queued.delivery_count = queued.delivery_count.saturating_add(1);
                    let limit = self.meta.args.delivery_limit;
                    if limit.is_some_and(|limit| u64::from(queued.delivery_count) > limit) {
                        forget(self.meta.id, &queued, ctx.store);
                        self.dead_letter(queued.message, DeathReason::DeliveryLimit, ctx);
                        return;
                    }
                }
                // A message whose TTL ran out while it was delivered expires
                // when it comes back, as in RabbitMQ.
                if queued.expires_at_ms().is_some_and(|at| at <= ctx.now_ms()) {
                    forget(self.meta.id, &queued, ctx.store);
                    self.dead_letter(queued.message, DeathReason::Expired, ctx);
                } else if self.is_quorum() && settle == Settle::Requeue {
                    self.add_returned(queued, ctx);
                } else {
                    self.add_ready(queued, ctx);
                }
            }
        }
    }

    /// The consumer's channel has room again: it receives once more. False
    /// if the queue has no such consumer.
    pub(crate) fn resume(&mut self, consumer: ConsumerId) -> bool {
        match self.consumers.iter_mut().find(|c| c.id == consumer) {
            Some(c) => {
                c.limited = false;
                true
            }
            None => false,
        }
    }

    /// basic.get: the head message, and how many remain after it.
    pub(crate) fn get(&mut self, no_ack: bool, ctx: &mut QueueCtx) -> Option<(QueuedMessage, u32)> {
        self.touch(ctx);
        let next = self.next_ready(ctx);
        self.want_pages(ctx);
        let mut queued = next?;
        let remaining = self.ready.count as u32;
        let delivered = self.as_delivered(&queued, true);
        if no_ack {
            self.stats.get_no_ack += 1;
        } else {
            self.stats.get += 1;
        }
        self.stats.redeliver += u64::from(queued.redelivered);
        if no_ack {
            forget(self.meta.id, &queued, ctx.store);
        } else {
            mark_delivered(self.meta.id, &queued, ctx.store);
            self.unacked_memory_bytes += queued.message.memory_size();
            self.unacked
                .insert(queued.seq, (queued.clone(), ConsumerId::GET));
        }
        if let Some(message) = delivered {
            queued.message = message;
        }
        Some((queued, remaining))
    }

    /// Removes the ready messages (not those awaiting acks), as RabbitMQ does;
    /// purged messages are not dead-lettered.
    pub fn purge(&mut self, ctx: &mut QueueCtx) -> u32 {
        self.expire_now.clear();
        let id = self.meta.id;
        let QueueCtx { timers, store, .. } = ctx;
        self.ready.clear(|timer, queued, paged| {
            if let Some(timer) = timer {
                timers.cancel(timer);
            }
            if let Some(queued) = queued {
                forget(id, &queued, store);
            }
            if let Some(paged) = paged {
                Queue::forget_paged(id, paged, store);
            }
        }) as u32
    }

    /// Hands ready messages to consumers with credit, round-robin (or to the
    /// single active consumer), then applies what must not wait: TTL-0
    /// messages nobody took expire, and a queue over its length limit drops
    /// (dead-letters) from the head.
    pub fn dispatch(&mut self, out: &mut impl DeliverySink, ctx: &mut QueueCtx) {
        self.deliver_ready(out, ctx);
        if !self.expire_now.is_empty() {
            let now = std::mem::take(&mut self.expire_now);
            for &(level, seq) in &now {
                if let Some((queued, _)) = self.ready.take(level as usize, seq) {
                    forget(self.meta.id, &queued, ctx.store);
                    self.dead_letter(queued.message, DeathReason::Expired, ctx);
                }
            }
            self.expire_now = now;
            self.expire_now.clear();
        }
        while self.ready.count > 0 && self.over_limit_with(0, 0) {
            let Some((queued, timer)) = self.ready.pop_front() else {
                break;
            };
            if let Some(id) = timer {
                ctx.timers.cancel(id);
            }
            forget(self.meta.id, &queued, ctx.store);
            self.dead_letter(queued.message, DeathReason::Maxlen, ctx);
        }
        self.want_pages(ctx);
    }

    fn deliver_ready(&mut self, out: &mut impl DeliverySink, ctx: &mut QueueCtx) {
        while self.ready.count > 0 {
            let Some(at) = self.next_consumer_with_credit() else {
                return;
            };
            let Some(queued) = self.next_ready(ctx) else {
                return;
            };
            self.deliver_to(at, queued, out, ctx);
        }
    }

    /// The consumer the next message goes to: round-robin among those with
    /// credit in the highest priority that has one, or the single active
    /// consumer if it has credit.
    fn next_consumer_with_credit(&mut self) -> Option<usize> {
        if self.consumers.is_empty() {
            return None;
        }
        if self.meta.args.single_active_consumer {
            // Only the earliest consumer still subscribed receives.
            return self.consumers[0].has_credit().then_some(0);
        }
        let mut start = 0;
        for group in &mut self.groups {
            let len = group.end - start;
            let found = (0..len)
                .map(|i| (group.next + i) % len)
                .find(|&i| self.consumers[start + i].has_credit());
            if let Some(offset) = found {
                group.next = (offset + 1) % len;
                return Some(start + offset);
            }
            start = group.end;
        }
        None
    }

    fn deliver_to(
        &mut self,
        at: usize,
        queued: QueuedMessage,
        out: &mut impl DeliverySink,
        ctx: &mut QueueCtx,
    ) {
        let queue_id = self.meta.id;
        let delivered = self.as_delivered(&queued, false);
        let consumer = &mut self.consumers[at];
        self.deliveries += 1;
        // Branch-free: the delivery path's counters cost two additions.
        let no_ack = u64::from(consumer.spec.no_ack);
        self.stats.deliver_no_ack += no_ack;
        self.stats.deliver += 1 - no_ack;
        self.stats.redeliver += u64::from(queued.redelivered);
        let head = DeliveryHead {
            conn: consumer.spec.conn,
            channel: consumer.spec.channel,
            consumer: consumer.id,
            queue: self.meta.queue_ref(),
            seq: queued.seq,
            redelivered: queued.redelivered,
            no_ack: consumer.spec.no_ack,
            ahead: consumer.spec.lookahead > 0
                && consumer.in_flight >= consumer.spec.prefetch_count,
        };
        if consumer.remote {
            consumer.transit_bytes += queued.message.memory_size();
        }
        if consumer.spec.no_ack {
            forget(queue_id, &queued, ctx.store);
            out.given(head, delivered.unwrap_or(queued.message));
        } else {
            mark_delivered(queue_id, &queued, ctx.store);
            consumer.in_flight += 1;
            if consumer.spec.lookahead > 0 {
                consumer.unacked_bytes += queued.message.memory_size();
            }
            self.unacked_memory_bytes += queued.message.memory_size();
            // The queue keeps the message without the header: it is set
            // afresh at each delivery, and a dead letter has none.
            out.kept(head, delivered.as_ref().unwrap_or(&queued.message));
            self.unacked.insert(head.seq, (queued, head.consumer));
        }
    }
}

/// A consumer's `x-priority` from basic.consume's arguments (0 without
/// one), checked as RabbitMQ's `rabbit_amqqueue:check_consume_arguments`
/// checks it: any integer type, else 406 with `check_int_arg`'s reason
/// printed as a quoted string.
pub(crate) fn consumer_priority(
    vhost: &str,
    queue: &str,
    arguments: &FieldTable,
) -> Result<i64, AmqpError> {
    let Some(value) = arguments.get("x-priority") else {
        return Ok(0);
    };
    value.as_i64().ok_or_else(|| {
        AmqpError::precondition_failed(format!(
            "invalid arg 'x-priority' for queue '{}' in vhost '{}': \"expected integer, got {}\"",
            queue,
            vhost,
            value.type_name()
        ))
    })
}

/// `message` with the header `x-delivery-count` (a long) set to `count`.
fn with_delivery_count(message: &Message, count: u16) -> Message {
    let mut properties = message.properties().decode();
    let mut headers = properties.headers.take().unwrap_or_default();
    headers.insert("x-delivery-count", FieldValue::I64(i64::from(count)));
    properties.headers = Some(headers);
    Message::new(
        message.exchange(),
        message.routing_key(),
        &properties.encode(),
        message.body.clone(),
        message.bcc_keys().map(<[String]>::to_vec),
    )
}

/// A per-message `expiration` property: milliseconds as a decimal string,
/// read as RabbitMQ reads it (`rabbit_basic:parse_expiration`, which uses
/// Erlang's `string:to_integer`). The error is RabbitMQ's term, printed.
pub(crate) fn parse_expiration(value: &str) -> Result<u64, String> {
    let digits_from = usize::from(value.starts_with(['+', '-']));
    let digits_len = value[digits_from..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    if digits_len == 0 {
        return Err("no_integer".to_string());
    }
    let (number, rest) = value.split_at(digits_from + digits_len);
    if !rest.is_empty() {
        return Err(format!("{{leftover_string,{:?}}}", rest));
    }
    // Too many digits for an i128 is certainly too large.
    let ms: i128 = number.parse().unwrap_or(i128::MAX);
    if ms < 0 {
        return Err(format!("{{value_negative,{}}}", ms));
    }
    if ms > i128::from(EXPIRY_MS_MAX) {
        return Err(format!("{{value_too_large,{}}}", ms));
    }
    Ok(ms as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ids::{ConnId, ShardId};
    use warren_protocol::{FieldTable, Properties};

    fn queue() -> Queue {
        Queue::new(QueueMeta {
            id: QueueId(1),
            vhost: ShortStr::from("/"),
            name: ShortStr::from("q"),
            shard: ShardId(0),
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
            args: Default::default(),
        })
    }

    fn consumer(prefetch_count: u32) -> ConsumerSpec {
        ConsumerSpec {
            conn: ConnRef {
                shard: ShardId(0),
                conn: ConnId(1),
            },
            channel: 1,
            tag: ShortStr::from("c"),
            no_ack: false,
            exclusive: false,
            prefetch_count,
            lookahead: 0,
            priority: 0,
        }
    }

    fn message() -> Message {
        Message::new(
            "",
            "q",
            &Properties::empty(),
            bytes::Bytes::from_static(b"m"),
            None,
        )
    }

    fn held(seq: u64) -> Held {
        (
            QueuedMessage {
                seq,
                redelivered: false,
                level: 0,
                delivery_count: 0,
                expires_at_ms: NEVER,
                segment: 0,
                message: message(),
            },
            ConsumerId(1),
        )
    }

    #[test]
    fn unacked_messages_are_found_by_seq_in_any_order() {
        let mut u = Unacked::default();
        for seq in 1..=10 {
            u.insert(seq, held(seq));
        }
        // A requeued message delivered again comes after newer ones.
        u.insert(0, held(0));
        assert_eq!(u.out_of_order.len(), 1);
        assert_eq!(u.remove(5).map(|h| h.0.seq), Some(5));
        assert!(u.remove(5).is_none(), "settled twice");
        for seq in [1, 2, 3, 4, 10, 0, 7] {
            assert_eq!(u.remove(seq).map(|h| h.0.seq), Some(seq));
        }
        assert!(u.remove(11).is_none());
        // Requeued and delivered again while its old place is still a hole
        // (6 is unsettled ahead of it): it is found in the map.
        u.insert(7, held(7));
        assert_eq!(u.remove(7).map(|h| h.0.seq), Some(7));
        let mut left: Vec<u64> = u.values_mut().map(|h| h.0.seq).collect();
        left.sort();
        assert_eq!(left, [6, 8, 9]);
        // Holes at either end are dropped at once.
        assert_eq!(u.in_order.front().map(|e| e.0), Some(6));
        assert_eq!(u.in_order.back().map(|e| e.0), Some(9));
        let mut drained: Vec<u64> = u.drain().map(|h| h.0.seq).collect();
        drained.sort();
        assert_eq!(drained, [6, 8, 9]);
        assert!(u.in_order.is_empty() && u.out_of_order.is_empty());
    }

    #[test]
    fn a_message_never_settled_does_not_keep_the_holes_behind_it() {
        let mut u = Unacked::default();
        for seq in 1..=1000 {
            u.insert(seq, held(seq));
        }
        // All but the first and the last settled.
        for seq in 2..1000 {
            assert!(u.remove(seq).is_some());
        }
        assert!(u.in_order.len() <= 64, "{} slots kept", u.in_order.len());
        assert_eq!(u.remove(1).map(|h| h.0.seq), Some(1));
        assert_eq!(u.remove(1000).map(|h| h.0.seq), Some(1000));
        assert_eq!(u.values_mut().count(), 0);
    }

    #[test]
    fn flow_holds_publishers_of_a_backlog_its_consumers_are_taking() {
        let mut timers = Timers::new();
        let mut dead = Vec::new();
        let mut store = MessageStore::new(crate::config::SEGMENT_SIZE, &[]);
        let mut ctx = QueueCtx::new(&mut timers, &mut dead, &mut store);
        let mut q = queue();
        let mut out = Vec::new();
        for _ in 0..crate::config::FLOW_READY_HIGH + 100 {
            q.publish(message(), &mut out, &mut ctx);
        }
        // A queue without consumers is a buffer: filling it is no reason
        // to slow anyone.
        assert!(!q.outpaces_consumers());
        let id = q.add_consumer(consumer(10)).unwrap();
        q.dispatch(&mut out, &mut ctx);
        assert_eq!(out.len(), 10);
        assert!(q.outpaces_consumers());
        // A publisher waited a whole tick and the consumer took nothing:
        // it stalled, and slows nobody until it takes a message again.
        let since = q.deliveries();
        q.flow_waited_in_vain(since);
        assert!(!q.outpaces_consumers());
        q.settle(out[0].head.seq, id, Settle::Ack, &mut ctx);
        q.dispatch(&mut out, &mut ctx);
        assert!(q.outpaces_consumers());
        // The wait ends once the backlog is down to the low mark.
        assert!(q.outpaces_consumers_still());
        q.purge(&mut ctx);
        assert!(!q.outpaces_consumers_still());
    }

    #[test]
    fn consumers_are_served_by_priority_then_round_robin() {
        let mut timers = Timers::new();
        let mut dead = Vec::new();
        let mut store = MessageStore::new(crate::config::SEGMENT_SIZE, &[]);
        let mut ctx = QueueCtx::new(&mut timers, &mut dead, &mut store);
        let mut q = queue();
        let add = |q: &mut Queue, tag: &str, priority: i64, prefetch_count: u32| {
            let mut spec = consumer(prefetch_count);
            spec.tag = ShortStr::from(tag);
            spec.priority = priority;
            q.add_consumer(spec).unwrap()
        };
        let low = add(&mut q, "low", 0, 10);
        let b = add(&mut q, "b", 5, 2);
        let mid = add(&mut q, "mid", 1, 1);
        let c = add(&mut q, "c", 5, 2);
        let mut out = Vec::new();
        for _ in 0..10 {
            q.publish(message(), &mut out, &mut ctx);
        }
        q.dispatch(&mut out, &mut ctx);
        let order: Vec<ConsumerId> = out.iter().map(|d| d.head.consumer).collect();
        assert_eq!(order, [b, c, b, c, mid, low, low, low, low, low]);
        // Room again at the top: the top takes the next message.
        let first_of_b = out[0].head.seq;
        q.settle(first_of_b, b, Settle::Ack, &mut ctx);
        out.clear();
        q.publish(message(), &mut out, &mut ctx);
        assert_eq!(out.iter().map(|d| d.head.consumer).collect::<Vec<_>>(), [b]);
        // Without the top ones, the next priority down is served.
        let conn = consumer(0).conn;
        assert!(q.cancel_consumer(conn, 1, "b", &mut ctx));
        assert!(q.cancel_consumer(conn, 1, "c", &mut ctx));
        assert!(q.cancel_consumer(conn, 1, "mid", &mut ctx));
        out.clear();
        q.publish(message(), &mut out, &mut ctx);
        assert_eq!(
            out.iter().map(|d| d.head.consumer).collect::<Vec<_>>(),
            [low]
        );
        assert_eq!(q.groups.len(), 1);
        assert_eq!(q.groups[0].end, 1);
    }

    #[test]
    fn round_robin_resumes_where_it_was_after_a_cancel() {
        let mut timers = Timers::new();
        let mut dead = Vec::new();
        let mut store = MessageStore::new(crate::config::SEGMENT_SIZE, &[]);
        let mut ctx = QueueCtx::new(&mut timers, &mut dead, &mut store);
        let mut q = queue();
        let ids: Vec<ConsumerId> = ["a", "b", "c"]
            .iter()
            .map(|tag| {
                let mut spec = consumer(0);
                spec.tag = ShortStr::from(*tag);
                q.add_consumer(spec).unwrap()
            })
            .collect();
        let mut out = Vec::new();
        q.publish(message(), &mut out, &mut ctx);
        q.publish(message(), &mut out, &mut ctx);
        // a and b served; c is next. Cancelling a keeps c next.
        assert!(q.cancel_consumer(consumer(0).conn, 1, "a", &mut ctx));
        q.publish(message(), &mut out, &mut ctx);
        q.publish(message(), &mut out, &mut ctx);
        let order: Vec<ConsumerId> = out.iter().map(|d| d.head.consumer).collect();
        assert_eq!(order, [ids[0], ids[1], ids[2], ids[1]]);
    }

    #[test]
    fn expiration_is_read_as_rabbitmq_reads_it() {
        assert_eq!(parse_expiration("1000"), Ok(1000));
        assert_eq!(parse_expiration("0"), Ok(0));
        assert_eq!(parse_expiration("+5"), Ok(5));
        assert_eq!(parse_expiration("-1"), Err("{value_negative,-1}".into()));
        assert_eq!(parse_expiration("abc"), Err("no_integer".into()));
        assert_eq!(parse_expiration(""), Err("no_integer".into()));
        assert_eq!(
            parse_expiration("12ab"),
            Err("{leftover_string,\"ab\"}".into())
        );
        assert_eq!(
            parse_expiration("315360000001"),
            Err("{value_too_large,315360000001}".into())
        );
    }
}

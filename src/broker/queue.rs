//! A queue, as its owning shard holds it: ready messages in order, messages
//! delivered but not yet acknowledged, and consumers served round-robin while
//! they have prefetch credit.
//!
//! The queue performs no I/O: `dispatch` appends `Delivery`s for the shard to
//! route to the consumers' connections, wherever they are.

use std::collections::VecDeque;

use crate::broker::fast_hash::FastMap;

use crate::broker::ids::{ConnRef, ConsumerId, QueueId, QueueRef};
use crate::broker::message::Message;
use crate::broker::vhost::QueueMeta;
use crate::protocol::{AmqpError, ShortStr};

#[derive(Clone, Debug)]
pub struct QueuedMessage {
    /// Position in the queue: requeued messages go back to their place.
    pub seq: u64,
    pub redelivered: bool,
    pub message: Message,
}

/// A message on its way from a queue to a channel, for a consumer or for
/// basic.get (`message_count` is then Some: the get-ok's count).
#[derive(Debug)]
pub struct Delivery {
    pub conn: ConnRef,
    pub channel: u16,
    pub consumer_tag: ShortStr,
    pub consumer: ConsumerId,
    pub queue: QueueRef,
    pub seq: u64,
    pub redelivered: bool,
    pub no_ack: bool,
    pub message_count: Option<u32>,
    pub message: Message,
}

/// What a channel wants done with a delivered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Back into the queue at its old position, marked redelivered.
    Requeue,
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
}

#[derive(Debug)]
struct Consumer {
    id: ConsumerId,
    spec: ConsumerSpec,
    in_flight: u32,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        self.spec.no_ack
            || self.spec.prefetch_count == 0
            || self.in_flight < self.spec.prefetch_count
    }
}

#[derive(Debug)]
pub struct Queue {
    pub meta: QueueMeta,
    ready: VecDeque<QueuedMessage>,
    unacked: FastMap<u64, (QueuedMessage, ConsumerId)>,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    next_seq: u64,
    next_consumer_id: u64,
    had_consumers: bool,
}

impl Queue {
    pub fn new(meta: QueueMeta) -> Queue {
        Queue {
            meta,
            ready: VecDeque::new(),
            unacked: FastMap::default(),
            consumers: Vec::new(),
            next_consumer: 0,
            next_seq: 1,
            next_consumer_id: 1,
            had_consumers: false,
        }
    }

    pub fn id(&self) -> QueueId {
        self.meta.id
    }

    pub fn name(&self) -> &ShortStr {
        &self.meta.name
    }

    /// Messages ready for delivery (what queue.declare-ok and purge count).
    pub fn message_count(&self) -> u32 {
        self.ready.len() as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.consumers.len() as u32
    }

    pub fn publish(&mut self, message: Message) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready.push_back(QueuedMessage {
            seq,
            redelivered: false,
            message,
        });
    }

    pub fn add_consumer(&mut self, spec: ConsumerSpec) -> Result<ConsumerId, AmqpError> {
        let locked = self.consumers.iter().any(|c| c.spec.exclusive);
        if locked || (spec.exclusive && !self.consumers.is_empty()) {
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '/' in exclusive use",
                self.meta.name
            )));
        }
        let id = ConsumerId(self.next_consumer_id);
        self.next_consumer_id += 1;
        self.consumers.push(Consumer {
            id,
            spec,
            in_flight: 0,
        });
        self.had_consumers = true;
        Ok(id)
    }

    /// Removes a consumer; true if it was there.
    pub fn cancel_consumer(&mut self, conn: ConnRef, channel: u16, tag: &str) -> bool {
        let Some(at) = self.consumers.iter().position(|c| {
            c.spec.conn == conn && c.spec.channel == channel && c.spec.tag.as_str() == tag
        }) else {
            return false;
        };
        self.consumers.remove(at);
        if self.next_consumer > at {
            self.next_consumer -= 1;
        }
        if self.next_consumer >= self.consumers.len() {
            self.next_consumer = 0;
        }
        true
    }

    /// RabbitMQ deletes an auto-delete queue when its last consumer goes,
    /// but never before it had one.
    pub fn should_auto_delete(&self) -> bool {
        self.meta.auto_delete && self.had_consumers && self.consumers.is_empty()
    }

    /// The consumers' tags and where they are, for basic.cancel notifications
    /// when the queue is deleted.
    pub fn consumer_specs(&self) -> impl Iterator<Item = &ConsumerSpec> {
        self.consumers.iter().map(|c| &c.spec)
    }

    pub fn settle(&mut self, seq: u64, consumer: ConsumerId, settle: Settle) {
        let Some((mut queued, holder)) = self.unacked.remove(&seq) else {
            return;
        };
        debug_assert_eq!(holder, consumer);
        if let Some(c) = self.consumers.iter_mut().find(|c| c.id == holder) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
        match settle {
            Settle::Ack | Settle::Discard => {}
            Settle::Requeue => {
                queued.redelivered = true;
                self.requeue(queued);
            }
        }
    }

    fn requeue(&mut self, queued: QueuedMessage) {
        // Requeues usually land at the head; search from the front.
        let at = self.ready.partition_point(|m| m.seq < queued.seq);
        self.ready.insert(at, queued);
    }

    /// basic.get: the head message, and how many remain after it.
    pub fn get(&mut self, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        let queued = self.ready.pop_front()?;
        let remaining = self.ready.len() as u32;
        if !no_ack {
            self.unacked
                .insert(queued.seq, (queued.clone(), ConsumerId::GET));
        }
        Some((queued, remaining))
    }

    /// Removes the ready messages (not those awaiting acks), as RabbitMQ does.
    pub fn purge(&mut self) -> u32 {
        let count = self.ready.len() as u32;
        self.ready.clear();
        count
    }

    /// Hands ready messages to consumers with credit, round-robin.
    pub fn dispatch(&mut self, out: &mut Vec<Delivery>) {
        while !self.ready.is_empty() && !self.consumers.is_empty() {
            let count = self.consumers.len();
            let Some(at) = (0..count)
                .map(|i| (self.next_consumer + i) % count)
                .find(|&i| self.consumers[i].has_credit())
            else {
                return;
            };
            self.next_consumer = (at + 1) % count;
            let Some(queued) = self.ready.pop_front() else {
                return;
            };
            let consumer = &mut self.consumers[at];
            let (seq, redelivered) = (queued.seq, queued.redelivered);
            let message = if consumer.spec.no_ack {
                queued.message
            } else {
                consumer.in_flight += 1;
                let message = queued.message.clone();
                self.unacked.insert(seq, (queued, consumer.id));
                message
            };
            out.push(Delivery {
                conn: consumer.spec.conn,
                channel: consumer.spec.channel,
                consumer_tag: consumer.spec.tag.clone(),
                consumer: consumer.id,
                queue: self.meta.queue_ref(),
                seq,
                redelivered,
                no_ack: consumer.spec.no_ack,
                message_count: None,
                message,
            });
        }
    }
}

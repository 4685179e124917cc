//! The figures one shard owns for Prometheus, and its answer to a scrape.
//!
//! Every counter here is a plain integer in the shard's own state (or on
//! its connections and queues), changed only by the shard's thread: no
//! atomic, no lock, nothing shared on the message path. A scrape asks each
//! shard through the control plane (`ControlRequest::Metrics`), and the
//! control-plane thread sums the answers (`mgmt::prometheus`). Counts of
//! connections that closed and queues that were deleted are folded into
//! `ShardCounters` when they go, so that the totals never go backwards.
//!
//! It imports what `broker` may import.

use std::time::Duration;

use warren_protocol::ShortStr;

use crate::broker::queue::QueueStats;
use crate::metadata::queue_args::QueueType;

/// Counters the shard keeps besides those of its live connections and
/// queues.
#[derive(Debug, Default)]
pub(crate) struct ShardCounters {
    /// Connections' counts, once they closed.
    pub(crate) closed: ConnectionCounts,
    /// Queues' counts, once they were deleted, by queue type.
    pub(crate) deleted_classic: QueueStats,
    pub(crate) deleted_quorum: QueueStats,
    /// Batches sent to peer shards' mailboxes, and the messages in them
    /// (their ratio is the mean batch size).
    pub(crate) mailbox_batches_sent: u64,
    pub(crate) mailbox_messages_sent: u64,
    /// Time the shard's executor spent running tasks since it started,
    /// as the tick last read it from the runtime.
    pub(crate) reactor_busy: Duration,
}

/// What a connection counts of the messages its publishers send, besides
/// `Connection::published` (RabbitMQ's `messages_received`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Published messages that reached at least one queue (or a delayed
    /// exchange).
    pub routed: u64,
    /// Published messages that reached none.
    pub unroutable: u64,
    /// Publishes confirmed with basic.ack.
    pub confirmed: u64,
}

impl ConnectionCounts {
    pub(crate) fn add(&mut self, other: &ConnectionCounts) {
        self.routed += other.routed;
        self.unroutable += other.unroutable;
        self.confirmed += other.confirmed;
    }
}

/// One shard's answer to a scrape.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// The shard's index.
    pub shard: usize,
    pub connections: u64,
    pub channels: u64,
    /// Connections that have published at least once.
    pub publishers: u64,
    /// Consumers of this shard's queues.
    pub consumers: u64,
    /// Queues this shard owns.
    pub queues: u64,
    pub messages_ready: u64,
    pub messages_unacked: u64,
    pub queue_memory_bytes: u64,
    /// basic.publish received, closed connections included.
    pub published: u64,
    pub counts: ConnectionCounts,
    /// Deliveries and acks by queue type, live and deleted queues alike.
    pub classic: QueueStats,
    pub quorum: QueueStats,
    pub mailbox_batches_sent: u64,
    pub mailbox_messages_sent: u64,
    pub reactor_busy: Duration,
    pub store_fsyncs: u64,
    pub store_bytes_written: u64,
    /// Per queue, when asked (`/metrics/per-object`).
    pub queue_figures: Vec<QueueFigures>,
}

/// One queue's figures for `/metrics/per-object`.
#[derive(Debug)]
pub struct QueueFigures {
    pub vhost: ShortStr,
    pub name: ShortStr,
    pub ready: u32,
    pub unacked: u32,
    pub consumers: u32,
    pub memory_bytes: u64,
    pub stats: QueueStats,
}

/// Adds `other`'s counts to `total`.
pub(crate) fn add_stats(total: &mut QueueStats, other: &QueueStats) {
    total.publish += other.publish;
    total.deliver += other.deliver;
    total.deliver_no_ack += other.deliver_no_ack;
    total.get += other.get;
    total.get_no_ack += other.get_no_ack;
    total.ack += other.ack;
    total.redeliver += other.redeliver;
}

impl super::ShardState {
    /// Keeps a deleted queue's counts (see the module's doc).
    pub(crate) fn count_deleted_queue(&mut self, queue: &super::queue::Queue) {
        let total = match queue.meta.args.queue_type {
            QueueType::Quorum => &mut self.counters.deleted_quorum,
            _ => &mut self.counters.deleted_classic,
        };
        add_stats(total, &queue.stats);
    }

    /// The shard's figures, as a scrape asks for them.
    pub(crate) fn metrics(&self, per_object: bool) -> ShardMetrics {
        let mut metrics = ShardMetrics {
            shard: self.id.index(),
            published: self.published_by_closed,
            counts: self.counters.closed,
            classic: self.counters.deleted_classic,
            quorum: self.counters.deleted_quorum,
            mailbox_batches_sent: self.counters.mailbox_batches_sent,
            mailbox_messages_sent: self.counters.mailbox_messages_sent,
            reactor_busy: self.counters.reactor_busy,
            store_fsyncs: self.store.stats.fsyncs,
            store_bytes_written: self.store.stats.bytes,
            ..ShardMetrics::default()
        };
        for connection in self.connections.values() {
            metrics.connections += 1;
            metrics.channels += connection.channels.len() as u64;
            metrics.publishers += u64::from(connection.published > 0);
            metrics.published += connection.published;
            metrics.counts.add(&connection.counts);
        }
        for queue in self.queues.values() {
            metrics.queues += 1;
            let ready = queue.message_count();
            let unacked = queue.unacked_count();
            let consumers = queue.consumer_count();
            let memory_bytes = queue.memory_bytes() + queue.index_bytes();
            metrics.messages_ready += u64::from(ready);
            metrics.messages_unacked += u64::from(unacked);
            metrics.consumers += u64::from(consumers);
            metrics.queue_memory_bytes += memory_bytes;
            let total = match queue.meta.args.queue_type {
                QueueType::Quorum => &mut metrics.quorum,
                _ => &mut metrics.classic,
            };
            add_stats(total, &queue.stats);
            if per_object {
                metrics.queue_figures.push(QueueFigures {
                    vhost: queue.meta.vhost.clone(),
                    name: queue.meta.name.clone(),
                    ready,
                    unacked,
                    consumers,
                    memory_bytes,
                    stats: queue.stats,
                });
            }
        }
        metrics
    }
}

//! The control plane's questions to one shard, and the shard's answers.
//!
//! The management API runs on a thread of its own (`mgmt`), never on a
//! shard. It asks each shard through a channel the shard drains from its
//! tick (`ShardState::control`); the shard answers from its own state, at
//! a point where nothing else touches it, through the `ReplyFn` the
//! request carries. Definitions change through the metadata owner exactly
//! as an AMQP declare does (`ControlRequest::Meta`, shard 0 only). Nothing
//! here is on the message path: the figures a report carries (a queue's
//! `QueueStats`, a connection's publish count) are plain fields their
//! shard alone updates, read here on request.
//!
//! Every type here is `Send` (it crosses threads); it imports what
//! `broker` may import.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::broker::metadata::{MetaRequest, Scope};
use crate::broker::queue::QueueStats;
use crate::broker::trace::{FileTraceSpec, TraceEvent};
use crate::metadata::auth::Users;
use crate::metadata::exchange::ExchangeDef;
use crate::metadata::vhost::QueueMeta;
use crate::model::ids::{ConnId, ConnRef, QueueId, ShardId};
use warren_protocol::{AmqpError, BasicProperties, FieldTable, Method, ShortStr};

/// How a shard answers: called once, on the shard's thread.
pub type ReplyFn = Box<dyn FnOnce(ControlReply) + Send>;

/// A question for one shard and where its answer goes.
pub struct Control {
    pub request: ControlRequest,
    pub reply: ReplyFn,
    /// When the control plane asked: how long a request waited for its
    /// shard shows in the debug log.
    pub asked: std::time::Instant,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

/// What to do with the messages `ControlRequest::Get` takes, as the
/// management API's `ackmode` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetAckMode {
    /// `ack_requeue_true`, `reject_requeue_true`: back in place, redelivered.
    Requeue,
    /// `ack_requeue_false`: gone.
    Ack,
    /// `reject_requeue_false`: rejected, so dead-lettered if the queue says so.
    Reject,
}

#[derive(Debug)]
pub enum ControlRequest {
    /// What this shard holds: its queues and/or its connections (with their
    /// channels) and the consumers of its queues.
    Report { queues: bool, connections: bool },
    /// Each of this shard's queues' figures, for a list of queues: plain
    /// numbers copied in one pass, and the definitions (`QueueMeta`) only
    /// of the queues with ids above `meta_after`. A queue's name,
    /// arguments and flags never change, so the control plane keeps them
    /// from earlier answers; the metadata owner numbers queues in the
    /// order every shard creates them, so the new ones are those above
    /// the highest id it already knows of this shard.
    QueueFigures { meta_after: Option<QueueId> },
    /// The definitions of every vhost as this shard's replica has them;
    /// with `export`, also the durable ones and the users in the
    /// definitions file's JSON.
    Definitions { export: bool },
    /// The access-control database as this shard's copy has it: vhosts,
    /// users, permissions, limits.
    Users,
    /// One queue as the replica has it (where it lives, its arguments).
    FindQueue { vhost: ShortStr, name: ShortStr },
    /// One queue's figures, from the shard that owns it.
    QueueReport(QueueId),
    /// HTTP basic auth: the user's tags if the password is right (and the
    /// user may log in from `peer`, as `loopback_users` says).
    Authenticate {
        user: String,
        password: String,
        peer: IpAddr,
    },
    /// A definitions change in the scope's vhost, for the metadata owner
    /// (shard 0); checked against the scope's user's permissions when the
    /// scope says so, as RabbitMQ's management API acts as its user.
    Meta { scope: Scope, request: MetaRequest },
    /// Removes the queue's ready messages (queue.purge).
    Purge(QueueId),
    /// Takes up to `count` messages from the head of the queue.
    Get {
        queue: QueueId,
        count: u32,
        ack_mode: GetAckMode,
    },
    /// Publishes one message to an exchange, as basic.publish without a
    /// channel would (no confirm, not mandatory).
    Publish(Box<ControlPublish>),
    /// Closes a connection with 320 CONNECTION_FORCED and this text.
    CloseConnection { conn: ConnId, reason: String },
    /// The shard's figures for a Prometheus scrape; per queue too with
    /// `per_object`.
    Metrics { per_object: bool },
    /// Turns the firehose tracer on or off for a vhost on this shard
    /// (`on: None` only asks); the answer lists the vhosts it is on for.
    SetTracing { vhost: String, on: Option<bool> },
    /// Replaces a vhost's trace log files on this shard, with the channel
    /// to the trace writer this shard hands their records to.
    SetFileTraces {
        vhost: String,
        traces: Vec<FileTraceSpec>,
        writer: crossbeam_channel::Sender<TraceEvent>,
    },
    /// The trace log records this shard dropped, per trace.
    FileTraceDrops,
}

/// A message published through the management API. Boxed in its request:
/// it is rare and larger than the rest.
#[derive(Debug)]
pub struct ControlPublish {
    pub vhost: ShortStr,
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    pub properties: BasicProperties,
    pub body: Bytes,
}

// `Users` is crate-internal; the enum is public only as part of `Control`.
#[allow(private_interfaces)]
#[derive(Debug)]
pub enum ControlReply {
    Report(ShardReport),
    QueueFigures(QueueFiguresReport),
    Definitions(DefinitionsReport),
    Users(Box<Users>),
    Queue(Option<QueueMeta>),
    QueueReport(Option<QueueInfo>),
    /// The user's name and tags, or None when authentication failed.
    User(Option<(String, Vec<String>)>),
    Meta(Result<Method, AmqpError>),
    /// The count purged, or None if the queue is not on this shard.
    Purged(Option<u32>),
    /// None if the queue is not on this shard.
    Messages(Option<Vec<GotMessage>>),
    /// Whether the message reached a queue; Err if the exchange is missing.
    Routed(Result<bool, AmqpError>),
    /// False if no such connection was open on this shard.
    Closed(bool),
    Metrics(Box<crate::broker::metrics::ShardMetrics>),
    /// The vhosts whose firehose is on.
    Tracing(Vec<String>),
    /// Each file trace's id and the records this shard dropped for it.
    FileTraceDrops(Vec<(u64, u64)>),
}

/// One shard's state, as `ControlRequest::Report` asked for it.
#[derive(Debug)]
pub struct ShardReport {
    pub shard: ShardId,
    pub queues: Vec<QueueInfo>,
    pub connections: Vec<ConnectionInfo>,
    pub consumers: Vec<ConsumerInfo>,
    /// Messages published by this shard's connections since it started,
    /// closed ones included.
    pub published: u64,
    /// Bytes this shard's queues hold (what the memory alarm counts).
    pub queue_memory_bytes: u64,
}

/// One shard's answer to `ControlRequest::QueueFigures`.
#[derive(Debug)]
pub struct QueueFiguresReport {
    pub shard: ShardId,
    pub queues: Vec<QueueFigures>,
    /// The definitions of the queues with ids above the request's
    /// `meta_after`.
    pub metas: Vec<QueueMeta>,
}

/// One queue's figures as a list shows them: numbers only (no names, no
/// allocation), so that a shard answers for 10,000 queues in a copy.
#[derive(Clone, Copy, Debug)]
pub struct QueueFigures {
    pub id: QueueId,
    pub ready: u32,
    pub unacked: u32,
    pub consumers: u32,
    pub memory_bytes: u64,
    pub stats: QueueStats,
}

#[derive(Debug)]
pub struct QueueInfo {
    pub meta: QueueMeta,
    pub ready: u32,
    pub unacked: u32,
    pub consumers: u32,
    pub memory_bytes: u64,
    pub stats: QueueStats,
}

#[derive(Debug)]
pub struct ConnectionInfo {
    pub conn: ConnRef,
    pub peer: SocketAddr,
    pub user: String,
    pub vhost: ShortStr,
    /// running, blocked, closing, starting (RabbitMQ's connection states).
    pub state: &'static str,
    /// Milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat_s: u16,
    pub published: u64,
    pub client_properties: FieldTable,
    pub channels: Vec<ChannelInfo>,
}

#[derive(Debug)]
pub struct ChannelInfo {
    pub number: u16,
    pub consumers: u32,
    pub unacked: u32,
    /// basic.qos global=false, for consumers created after it.
    pub prefetch_count: u16,
    /// basic.qos global=true.
    pub global_prefetch_count: u16,
    pub confirm: bool,
    pub transactional: bool,
}

#[derive(Debug)]
pub struct ConsumerInfo {
    pub vhost: ShortStr,
    pub queue: ShortStr,
    pub conn: ConnRef,
    pub channel: u16,
    pub tag: ShortStr,
    pub no_ack: bool,
    pub exclusive: bool,
    pub prefetch_count: u32,
}

/// One binding as the replica has it, its destination by name.
#[derive(Debug)]
pub struct BindingInfo {
    pub vhost: ShortStr,
    pub source: ShortStr,
    pub destination: ShortStr,
    /// "queue" or "exchange", as RabbitMQ's `destination_type`.
    pub destination_type: &'static str,
    pub routing_key: ShortStr,
    pub arguments: FieldTable,
}

#[derive(Debug, Default)]
pub struct DefinitionsReport {
    /// Each with its vhost.
    pub exchanges: Vec<(ShortStr, ExchangeDef)>,
    pub queues: Vec<QueueMeta>,
    pub bindings: Vec<BindingInfo>,
    /// The durable definitions and the users, as the definitions file
    /// holds them (RabbitMQ's export format), when asked for.
    pub export_json: Option<String>,
}

/// A message `ControlRequest::Get` took.
#[derive(Debug)]
pub struct GotMessage {
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    pub redelivered: bool,
    pub properties: BasicProperties,
    pub body: Bytes,
    /// Ready messages left behind it.
    pub message_count: u32,
}

// The control plane's types cross threads.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Control>();
    assert_send::<ControlReply>();
};

fn queue_info(queue: &super::queue::Queue) -> QueueInfo {
    QueueInfo {
        meta: queue.meta.clone(),
        ready: queue.message_count(),
        unacked: queue.unacked_count(),
        consumers: queue.consumer_count(),
        memory_bytes: queue.memory_bytes() + queue.index_bytes(),
        stats: queue.stats,
    }
}

impl super::ShardState {
    /// Answers one control-plane request (called from the shard's tick).
    pub(crate) fn control(&mut self, control: Control) {
        let Control {
            request,
            reply,
            asked,
        } = control;
        match request {
            ControlRequest::Report {
                queues,
                connections,
            } => {
                let started = std::time::Instant::now();
                let report = self.report(queues, connections);
                tracing::debug!(
                    shard = self.id.index(),
                    queues = report.queues.len(),
                    waited_us = (started - asked).as_micros() as u64,
                    took_us = started.elapsed().as_micros() as u64,
                    "control-plane report"
                );
                reply(ControlReply::Report(report))
            }
            ControlRequest::QueueFigures { meta_after } => {
                let started = std::time::Instant::now();
                let report = self.queue_figures(meta_after);
                tracing::debug!(
                    shard = self.id.index(),
                    queues = report.queues.len(),
                    metas = report.metas.len(),
                    waited_us = (started - asked).as_micros() as u64,
                    took_us = started.elapsed().as_micros() as u64,
                    "control-plane queue figures"
                );
                reply(ControlReply::QueueFigures(report))
            }
            ControlRequest::Definitions { export } => {
                reply(ControlReply::Definitions(self.definitions(export)))
            }
            ControlRequest::QueueReport(queue) => {
                let info = self.queues.get(&queue).map(queue_info);
                reply(ControlReply::QueueReport(info))
            }
            ControlRequest::Users => reply(ControlReply::Users(Box::new((*self.users).clone()))),
            ControlRequest::FindQueue { vhost, name } => reply(ControlReply::Queue(
                self.vhost_or_empty(&vhost)
                    .queues
                    .get(name.as_str())
                    .cloned(),
            )),
            ControlRequest::Authenticate {
                user,
                password,
                peer,
            } => {
                let mut response = Vec::with_capacity(user.len() + password.len() + 2);
                response.push(0);
                response.extend_from_slice(user.as_bytes());
                response.push(0);
                response.extend_from_slice(password.as_bytes());
                let found = self
                    .users
                    .authenticate("PLAIN", &Bytes::from(response), peer)
                    .ok()
                    .map(|u| (u.name.clone(), u.tags.clone()));
                reply(ControlReply::User(found));
            }
            ControlRequest::Meta { scope, request } => {
                debug_assert_eq!(self.id, ShardId(0), "only shard 0 owns metadata");
                self.meta_inbox.requests.push_back((
                    None,
                    Some(Box::new(scope)),
                    request,
                    Some(reply),
                ));
                self.meta_inbox.notify.notify();
            }
            ControlRequest::Purge(queue) => {
                let purged = self.with_queue(queue, |q, _, ctx| q.purge(ctx));
                reply(ControlReply::Purged(purged));
            }
            ControlRequest::Get {
                queue,
                count,
                ack_mode,
            } => {
                let got = self.with_queue(queue, |q, _, ctx| {
                    let mut taken = Vec::new();
                    let mut seqs = Vec::new();
                    while taken.len() < count as usize {
                        let Some((queued, message_count)) = q.get(false, ctx) else {
                            break;
                        };
                        seqs.push(queued.seq);
                        taken.push(GotMessage {
                            exchange: queued.message.exchange_name(),
                            routing_key: queued.message.routing_key_name(),
                            redelivered: queued.redelivered,
                            properties: queued.message.properties().decode(),
                            body: queued.message.body.clone(),
                            message_count,
                        });
                    }
                    // Settled only once all are taken, so that a requeued
                    // message is not taken again.
                    let settle = match ack_mode {
                        GetAckMode::Requeue => super::Settle::Requeue,
                        GetAckMode::Ack => super::Settle::Ack,
                        GetAckMode::Reject => super::Settle::Discard,
                    };
                    for seq in seqs {
                        q.settle(seq, crate::model::ids::ConsumerId::GET, settle, ctx);
                    }
                    taken
                });
                if got.is_some() {
                    self.dispatch(queue);
                }
                reply(ControlReply::Messages(got));
            }
            ControlRequest::Publish(publish) => {
                let ControlPublish {
                    vhost,
                    exchange,
                    routing_key,
                    properties,
                    body,
                } = *publish;
                let routed =
                    self.publish_from_control(&vhost, &exchange, &routing_key, &properties, body);
                reply(ControlReply::Routed(routed));
            }
            ControlRequest::CloseConnection { conn, reason } => {
                let now = self.now;
                let closed = match self.connections.get_mut(&conn) {
                    Some(connection) => {
                        connection.close_forced(reason, now);
                        if connection.is_closed() {
                            connection.reader.notify();
                            connection.wire.writer.notify();
                        }
                        true
                    }
                    None => false,
                };
                if closed {
                    self.finish_connection_turn(conn);
                }
                reply(ControlReply::Closed(closed));
            }
            ControlRequest::Metrics { per_object } => {
                reply(ControlReply::Metrics(Box::new(self.metrics(per_object))))
            }
            ControlRequest::SetTracing { vhost, on } => {
                if let Some(on) = on {
                    self.set_tracing(&vhost, on);
                }
                reply(ControlReply::Tracing(self.tracing_vhosts()))
            }
            ControlRequest::SetFileTraces {
                vhost,
                traces,
                writer,
            } => {
                self.file_traces.set(&vhost, traces, writer);
                reply(ControlReply::FileTraceDrops(self.file_traces.dropped()))
            }
            ControlRequest::FileTraceDrops => {
                reply(ControlReply::FileTraceDrops(self.file_traces.dropped()))
            }
        }
        self.run_local();
    }

    fn report(&self, queues: bool, connections: bool) -> ShardReport {
        let mut report = ShardReport {
            shard: self.id,
            queues: Vec::new(),
            connections: Vec::new(),
            consumers: Vec::new(),
            published: self.published_by_closed,
            queue_memory_bytes: 0,
        };
        for connection in self.connections.values() {
            report.published += connection.published;
            if connections {
                report.connections.push(connection.info());
            }
        }
        for queue in self.queues.values() {
            report.queue_memory_bytes += queue.memory_bytes() + queue.index_bytes();
            if !queues {
                continue;
            }
            report.queues.push(queue_info(queue));
            if connections {
                for spec in queue.consumer_specs() {
                    report.consumers.push(ConsumerInfo {
                        vhost: queue.meta.vhost.clone(),
                        queue: queue.meta.name.clone(),
                        conn: spec.conn,
                        channel: spec.channel,
                        tag: spec.tag.clone(),
                        no_ack: spec.no_ack,
                        exclusive: spec.exclusive,
                        prefetch_count: spec.prefetch_count,
                    });
                }
            }
        }
        report
    }

    fn queue_figures(&self, meta_after: Option<QueueId>) -> QueueFiguresReport {
        let mut report = QueueFiguresReport {
            shard: self.id,
            queues: Vec::with_capacity(self.queues.len()),
            metas: Vec::new(),
        };
        for queue in self.queues.values() {
            let id = queue.meta.id;
            report.queues.push(QueueFigures {
                id,
                ready: queue.message_count(),
                unacked: queue.unacked_count(),
                consumers: queue.consumer_count(),
                memory_bytes: queue.memory_bytes() + queue.index_bytes(),
                stats: queue.stats,
            });
            if meta_after.is_none_or(|after| id > after) {
                report.metas.push(queue.meta.clone());
            }
        }
        report
    }

    fn definitions(&self, export: bool) -> DefinitionsReport {
        use crate::metadata::exchange::Destination;
        let mut report = DefinitionsReport {
            export_json: export.then(|| {
                crate::metadata::definitions::Definitions::snapshot(
                    self.vhosts.iter().map(|(n, v)| (n.as_str(), v)),
                    &self.users,
                )
                .to_json()
            }),
            ..DefinitionsReport::default()
        };
        for (name, vhost) in &self.vhosts {
            for exchange in vhost.exchanges.values() {
                report.exchanges.push((name.clone(), exchange.def.clone()));
                for binding in &exchange.bindings {
                    let (destination, destination_type) = match &binding.destination {
                        Destination::Exchange(name) => (name.clone(), "exchange"),
                        Destination::Queue(queue) => match vhost.queue_by_id(queue.id) {
                            Some(meta) => (meta.name.clone(), "queue"),
                            None => continue,
                        },
                    };
                    report.bindings.push(BindingInfo {
                        vhost: name.clone(),
                        source: binding.source.clone(),
                        destination,
                        destination_type,
                        routing_key: binding.routing_key.clone(),
                        arguments: binding.arguments.clone(),
                    });
                }
            }
            report.queues.extend(vhost.queues.values().cloned());
        }
        report
    }

    /// Routes a message published through the management API and hands it
    /// to its queues, as a channel's publish would (no confirm; delayed
    /// exchanges do not hold it).
    fn publish_from_control(
        &mut self,
        vhost: &str,
        exchange: &ShortStr,
        routing_key: &ShortStr,
        properties: &BasicProperties,
        body: Bytes,
    ) -> Result<bool, AmqpError> {
        let Some(target) = self.vhost_or_empty(vhost).exchanges.get(exchange.as_str()) else {
            let mut error = crate::broker::metadata::no_exchange(exchange);
            error.text = crate::broker::metadata::in_vhost(&error.text, vhost);
            return Err(error);
        };
        let properties = properties.encode();
        let mut scratch = Vec::new();
        let mut routed = crate::broker::vhost::Routed::default();
        let no_keys: &[&str] = &[];
        self.vhost_or_empty(vhost).route(
            target,
            routing_key.as_str(),
            no_keys,
            &properties,
            &mut scratch,
            &mut routed,
        );
        let message = crate::model::message::Message::new(
            exchange.as_str(),
            routing_key.as_str(),
            &properties,
            body,
            None,
        );
        for queue in &routed.queues {
            self.send(
                queue.shard,
                super::ShardMsg::Enqueue {
                    queue: queue.id,
                    message: message.clone(),
                    confirm: None,
                },
            );
        }
        Ok(!routed.queues.is_empty())
    }
}

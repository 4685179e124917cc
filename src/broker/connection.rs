//! One AMQP connection: the handshake (protocol header, start/start-ok,
//! tune/tune-ok, open), heartbeats, the channel table, and the close rules.
//! Channel methods are in `channel.rs`.
//!
//! A connection never touches a socket. `input` takes the bytes a reader
//! task read, and frames to send go into `wire.out`, which the connection's
//! writer task flushes (many frames per write). Work for queues goes into
//! `effects` as shard messages.
//!
//! Close rules (RabbitMQ's `map_exception`): a soft error on a channel closes
//! that channel; a hard error, or any error on channel 0, closes the
//! connection. After sending connection.close we read and drop every frame
//! except close-ok, as the spec asks.

use crate::util::hash::FastMap;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::{debug, error, info, warn};

use crate::broker::channel::Channel;
use crate::broker::login_delay::{LoginDelays, LoginTurn};
use crate::broker::metadata::MetaRequest;
use crate::broker::vhost::{Routed, Vhost};
use crate::broker::{ChannelReply, ShardMsg};
use crate::config::{self, Config};
use crate::metadata::auth::{AuthFailure, External, Users};
use crate::metadata::exchange::Destination;
use crate::model::alarms::AlarmSet;
use crate::model::ids::{ConnRef, QueueId, ShardId};
use crate::model::message::Message;
use crate::util::signal::Notify;
use warren_protocol::frame::{write_method_args, FRAME_BODY, FRAME_HEADER, FRAME_METHOD};
use warren_protocol::method::MethodArgs;
use warren_protocol::{
    close_method, parse_frame, peek_publish, write_body, write_content_header, write_deliver,
    write_heartbeat, write_method, AmqpError, ConnectionBlocked, ConnectionCloseOk,
    ConnectionOpenOk, ConnectionStart, ConnectionTune, ConnectionUnblocked,
    ConnectionUpdateSecretOk, Deliver, FieldTable, FieldValue, Frame, Method, Properties, ShortStr,
    PROTOCOL_HEADER,
};

/// A publish for a queue of the connection's own shard: the queue, the
/// message, and the channel and sequence number of its confirm, if the
/// channel is in confirm mode.
#[derive(Debug)]
pub(crate) struct LocalPublish {
    pub(crate) queue: QueueId,
    pub(crate) message: Message,
    pub(crate) confirm: Option<(u16, u64)>,
}

/// Effects `input` gathers before the shard carries them out.
const EFFECTS_PER_HAND_OVER: usize = 32;

/// What `Connection::input` stopped at: the contract between the
/// connection and its shard (`ShardState::connection_input`), which passes
/// everything but `HandOver` on to the socket's reader.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Input {
    /// Every complete frame in the buffer was handled: read more bytes.
    NeedMore,
    /// The effects gathered a batch (`EFFECTS_PER_HAND_OVER`): the shard
    /// carries them out, then calls `input` again on the same buffer.
    HandOver,
    /// Waiting for another shard's answer, or for a resource alarm to clear:
    /// wait for `reader` before parsing on.
    Paused,
    /// Parsed a turn's worth: yield, then call `input` again.
    Yield,
    /// The connection is done: flush, then close the socket.
    Closed,
}

/// The outgoing side: frames waiting for the writer task.
pub(crate) struct Wire {
    pub(crate) out: BytesMut,
    pub(crate) frame_max: u32,
    /// Woken when `out` goes from empty to non-empty.
    pub(crate) writer: Notify,
    pub(crate) last_write: Instant,
    /// Bytes the writer took from `out` and is writing still: output the
    /// connection holds as much as `out` (see `held_bytes`).
    pub(crate) writing_bytes: usize,
}

impl Wire {
    /// Output waiting for the socket: queued frames and the write in progress.
    pub(crate) fn held_bytes(&self) -> usize {
        self.out.len() + self.writing_bytes
    }

    fn wake(&mut self, was_empty: bool) {
        if was_empty {
            self.writer.notify();
        }
    }

    pub(crate) fn method(&mut self, channel: u16, method: &Method) {
        let was_empty = self.out.is_empty();
        write_method(&mut self.out, channel, method);
        self.wake(was_empty);
    }

    /// A content-bearing method followed by its header and body frames.
    pub(crate) fn content(
        &mut self,
        channel: u16,
        method: &Method,
        properties: &Properties,
        body: &Bytes,
    ) {
        let was_empty = self.out.is_empty();
        write_method(&mut self.out, channel, method);
        write_content_header(&mut self.out, channel, 60, body.len() as u64, properties);
        write_body(&mut self.out, channel, body, self.frame_max);
        self.wake(was_empty);
    }

    /// `content` for the per-message methods (deliver, get-ok), written from
    /// their structs.
    pub(crate) fn content_of<M: MethodArgs>(
        &mut self,
        channel: u16,
        method: &M,
        properties: &Properties,
        body: &Bytes,
    ) {
        let was_empty = self.out.is_empty();
        write_method_args(&mut self.out, channel, method);
        write_content_header(&mut self.out, channel, 60, body.len() as u64, properties);
        write_body(&mut self.out, channel, body, self.frame_max);
        self.wake(was_empty);
    }

    /// A basic.deliver and its content, written from the message's wire form.
    pub(crate) fn deliver(
        &mut self,
        channel: u16,
        consumer_tag: &[u8],
        delivery_tag: u64,
        redelivered: bool,
        message: &Message,
    ) {
        let was_empty = self.out.is_empty();
        let deliver = Deliver {
            channel,
            consumer_tag,
            delivery_tag,
            redelivered,
            exchange: message.exchange().as_bytes(),
            routing_key: message.routing_key().as_bytes(),
            property_flags: message.property_flags(),
            properties_raw: message.properties_raw(),
            body: &message.body,
        };
        write_deliver(&mut self.out, &deliver, self.frame_max);
        self.wake(was_empty);
    }

    fn heartbeat(&mut self) {
        let was_empty = self.out.is_empty();
        write_heartbeat(&mut self.out);
        self.wake(was_empty);
    }

    fn raw(&mut self, bytes: &[u8]) {
        let was_empty = self.out.is_empty();
        self.out.extend_from_slice(bytes);
        self.wake(was_empty);
    }
}

/// The exchange and routing key a connection's `routed` holds the queues
/// of, at a generation of the vhost. Only a publish without headers is
/// remembered: with none, routing depends on nothing else (no CC or BCC
/// keys, no `x-delay`, nothing for a headers exchange to match), and the
/// vhost's generation changes with every exchange, queue and binding.
#[derive(Debug, Default)]
pub(crate) struct RouteCache {
    /// None: `routed` holds nothing reusable.
    generation: Option<u64>,
    exchange: Vec<u8>,
    routing_key: Vec<u8>,
}

impl RouteCache {
    pub(crate) fn holds(&self, generation: u64, exchange: &str, routing_key: &str) -> bool {
        self.generation == Some(generation)
            && self.routing_key == routing_key.as_bytes()
            && self.exchange == exchange.as_bytes()
    }

    pub(crate) fn remember(&mut self, generation: u64, exchange: &str, routing_key: &str) {
        self.generation = Some(generation);
        self.exchange.clear();
        self.exchange.extend_from_slice(exchange.as_bytes());
        self.routing_key.clear();
        self.routing_key.extend_from_slice(routing_key.as_bytes());
    }

    pub(crate) fn forget(&mut self) {
        self.generation = None;
    }
}

/// The write check of the last exchange published to (see
/// `Connection::publish_access`).
#[derive(Debug, Default)]
pub(crate) struct PublishAccess {
    /// The users' generation + 1 when filled; 0 holds nothing.
    pub(crate) generation: u64,
    /// The vhost replica's generation when filled.
    pub(crate) vhost_generation: u64,
    pub(crate) exchange: Vec<u8>,
    /// The user's topic write pattern on this exchange, if it is a topic
    /// exchange and the user has one: every routing key is matched.
    /// `Some(None)` is a pattern that does not compile: nothing passes.
    pub(crate) topic: Option<Option<regex::Regex>>,
}

/// What the client said it understands, from client-properties.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Capabilities {
    pub(crate) consumer_cancel_notify: bool,
    pub(crate) authentication_failure_close: bool,
    pub(crate) connection_blocked: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    ProtocolHeader,
    StartOk,
    TuneOk,
    Open,
    Running,
    /// We sent connection.close and wait for close-ok until the deadline.
    CloseSent {
        deadline: Instant,
    },
    /// The client sent connection.close; close-ok follows once cleanup is done.
    ClosingByClient,
    Closed,
}

/// The shared, read-only state a connection needs while handling frames.
pub(crate) struct Env<'a> {
    pub(crate) vhost: &'a Vhost,
    pub(crate) users: &'a Users,
    pub(crate) config: &'a Config,
    pub(crate) now: Instant,
    /// The node's raised resource alarms: while any is, a publish blocks
    /// its connection.
    pub(crate) alarms: AlarmSet,
    /// The shard's memory of failed logins, by address.
    pub(crate) login_delays: &'a RefCell<LoginDelays>,
}

/// A login held back because its address failed to log in lately.
#[derive(Debug)]
struct HeldLogin {
    answer_at: Instant,
    mechanism: ShortStr,
    response: Bytes,
}

pub(crate) struct Connection {
    pub(crate) conn: ConnRef,
    pub(crate) peer: SocketAddr,
    /// RabbitMQ's connection name, "PEER -> LOCAL" (as its log lines and
    /// management API show it).
    pub(crate) name: String,
    /// What EXTERNAL logs in with (TLS connections only).
    external: External,
    /// The vhost connection.open opened, for the closing log line.
    vhost_opened: Option<String>,
    phase: Phase,
    pub(crate) wire: Wire,
    /// Woken when a paused connection may parse again.
    pub(crate) reader: Notify,
    paused: bool,
    /// Bytes parsed since the reader's turn began (`input` may be called
    /// several times in one turn).
    parsed_in_turn: usize,
    pub(crate) channels: FastMap<u16, Channel>,
    pub(crate) effects: Vec<(ShardId, ShardMsg)>,
    /// Publishes routed to a single queue of this shard outside a
    /// transaction, the commonest effect, in a form a third smaller than a
    /// `ShardMsg`. They all precede `effects`: a publish goes here only
    /// while `effects` is empty, so handing these over first keeps the
    /// order in which the client's frames made them.
    pub(crate) local_publishes: Vec<LocalPublish>,
    pub(crate) channel_max: u16,
    heartbeat_s: u16,
    last_read: Instant,
    opened_at: Instant,
    pub(crate) user: String,
    /// The vhost connection.open opened ("" before).
    pub(crate) vhost: ShortStr,
    /// The node's connection and channel counts, once this connection is
    /// counted (from connection.open-ok until `release_usage`).
    usage: Option<std::sync::Arc<crate::metadata::auth::Usage>>,
    /// The channels counted for the user's max-channels.
    channels_counted: u64,
    /// The `client_id` client property, for topic permission patterns.
    pub(crate) client_id: Option<String>,
    /// connection.start-ok's client properties, as the management API
    /// shows them (bounded by the frame that carried them).
    client_properties: FieldTable,
    /// The last exchange a publish was allowed to write to, at a
    /// generation of the users: the check a publish costs is one
    /// comparison while a channel publishes to one exchange.
    pub(crate) publish_access: PublishAccess,
    pub(crate) capabilities: Capabilities,
    pub(crate) name_state: u64,
    /// Scratch space for routing, reused by every publish on this connection.
    pub(crate) route_scratch: Vec<Destination>,
    pub(crate) routed: Routed,
    /// What `routed` was computed for, so that a run of publishes to one
    /// exchange and routing key is routed once.
    pub(crate) route_cache: RouteCache,
    /// A publish's CC and BCC routing keys.
    pub(crate) route_keys: Vec<String>,
    /// The client closed the connection: it closes the socket too.
    pub(crate) closed_by_client: bool,
    /// A login waiting for its turn (see `broker::login_delay`).
    held_login: Option<HeldLogin>,
    /// Blocked by a resource alarm: it published while one was raised, and
    /// nothing more is read from it until the alarm clears (RabbitMQ's
    /// "blocked"; a connection that has not published yet is "blocking"
    /// and keeps being read, so consumers can ack and drain the queues).
    blocked: bool,
    /// The output went over `DELIVERY_OUTPUT_BYTES_MAX`: this connection's
    /// consumers were (or are being) stopped at their queues until the
    /// writer has drained it (`ShardState::output_flow`).
    pub(crate) output_full: bool,
    /// Messages published on this connection, for the management API.
    pub(crate) published: u64,
    /// Routed, unroutable and confirmed publishes, for Prometheus.
    pub(crate) counts: crate::broker::metrics::ConnectionCounts,
    /// The firehose tracer is on for this connection's vhost (`trace`).
    pub(crate) tracing: bool,
    /// When it was accepted, for the management API (`connected_at`).
    opened_at_epoch_ms: u64,
}

impl Connection {
    pub(crate) fn new(
        conn: ConnRef,
        (peer, local): (SocketAddr, SocketAddr),
        external: External,
        config: &Config,
        now: Instant,
    ) -> Connection {
        let name = format!("{peer} -> {local}");
        info!(connection = %conn.label(), "accepting AMQP connection {} ({})", conn.label(), name);
        Connection {
            conn,
            peer,
            name,
            external,
            vhost_opened: None,
            phase: Phase::ProtocolHeader,
            wire: Wire {
                // Grows with what is written: an idle connection keeps
                // only its handshake's worth (the writer task swaps its
                // buffer with this one, so a busy one keeps both large).
                out: BytesMut::new(),
                // Until tune-ok, frames are read with the spec's minimum, as
                // RabbitMQ does.
                frame_max: config::FRAME_SIZE_MIN,
                writer: Notify::new(),
                last_write: now,
                writing_bytes: 0,
            },
            reader: Notify::new(),
            paused: false,
            parsed_in_turn: 0,
            channels: FastMap::default(),
            effects: Vec::new(),
            local_publishes: Vec::new(),
            channel_max: config.channel_max,
            heartbeat_s: 0,
            last_read: now,
            opened_at: now,
            user: String::new(),
            vhost: ShortStr::from_static(""),
            client_id: None,
            client_properties: FieldTable::default(),
            usage: None,
            channels_counted: 0,
            publish_access: PublishAccess::default(),
            capabilities: Capabilities::default(),
            name_state: conn.conn.0.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ conn.shard.0 as u64,
            route_scratch: Vec::new(),
            routed: Routed::default(),
            route_cache: RouteCache::default(),
            route_keys: Vec::new(),
            closed_by_client: false,
            published: 0,
            counts: Default::default(),
            tracing: false,
            opened_at_epoch_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            held_login: None,
            blocked: false,
            output_full: false,
        }
    }

    /// True once, when a delivery just took the output over
    /// `DELIVERY_OUTPUT_BYTES_MAX`: the caller stops the consumers. One
    /// comparison per delivery.
    pub(crate) fn output_filled(&mut self) -> bool {
        if self.output_full || self.wire.held_bytes() <= config::DELIVERY_OUTPUT_BYTES_MAX {
            return false;
        }
        self.output_full = true;
        true
    }

    /// True once, when the writer has taken the output down to
    /// `DELIVERY_OUTPUT_BYTES_RESUME` after it filled: the caller lets the
    /// consumers go on.
    pub(crate) fn output_drained(&mut self) -> bool {
        if !self.output_full || self.wire.held_bytes() > config::DELIVERY_OUTPUT_BYTES_RESUME {
            return false;
        }
        self.output_full = false;
        true
    }

    /// Bytes of client data this connection holds outside the queues, for
    /// the memory alarm: output not yet written, bodies being assembled and
    /// publishes of open transactions. O(channels): for the alarm check.
    pub(crate) fn held_bytes(&self) -> u64 {
        self.wire.held_bytes() as u64
            + self
                .channels
                .values()
                .map(|ch| ch.held_bytes())
                .sum::<u64>()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The publishes to this shard's queues, then the other effects, in
    /// the order they were made (see `local_publishes`).
    pub(crate) fn take_effects(&mut self) -> (Vec<LocalPublish>, Vec<(ShardId, ShardMsg)>) {
        (
            std::mem::take(&mut self.local_publishes),
            std::mem::take(&mut self.effects),
        )
    }

    /// Gives back the emptied vectors, to be filled again without
    /// allocating.
    pub(crate) fn restore_effects(
        &mut self,
        local_publishes: Vec<LocalPublish>,
        effects: Vec<(ShardId, ShardMsg)>,
    ) {
        debug_assert!(local_publishes.is_empty() && effects.is_empty());
        if self.local_publishes.is_empty() {
            self.local_publishes = local_publishes;
        }
        if self.effects.is_empty() {
            self.effects = effects;
        }
    }

    /// Effects made and not yet handed over.
    pub(crate) fn effect_count(&self) -> usize {
        self.local_publishes.len() + self.effects.len()
    }

    pub(crate) fn pause(&mut self) {
        self.paused = true;
    }

    pub(crate) fn resume(&mut self) {
        if self.paused {
            self.paused = false;
            self.reader.notify();
        }
    }

    /// Parses and handles the complete frames in `buf`: all of them, a
    /// turn's budget of bytes, or until `effects` holds a batch for the
    /// shard to carry out (`HandOver`: call again once they are).
    /// A small batch stays in the CPU's nearest cache between the frame
    /// that made it and the queue that takes it.
    pub(crate) fn input(&mut self, buf: &mut BytesMut, env: &Env) -> Input {
        self.last_read = env.now;
        let result = loop {
            if self.phase == Phase::Closed {
                break Input::Closed;
            }
            if let Some(held) = self.held_login.take() {
                if held.answer_at > env.now {
                    self.held_login = Some(held);
                    self.paused = true;
                    break Input::Paused;
                }
                self.paused = false;
                self.log_in(held.mechanism.as_str(), &held.response, env);
                continue;
            }
            if self.paused || self.blocked {
                break Input::Paused;
            }
            if self.phase == Phase::ProtocolHeader {
                if !self.protocol_header(buf, env) {
                    break Input::NeedMore;
                }
                continue;
            }
            // One test per frame while no alarm is raised. With one, the
            // publish that finds it is left unread in the buffer: nothing
            // more enters the broker from this connection until it clears.
            // So is the header or body frame of a publish begun before the
            // alarm: RabbitMQ reads a content on until the next publish,
            // but a body being assembled is memory the alarm counts, and a
            // client sending a large one slowly would hold it past any limit.
            if !env.alarms.is_empty() && self.phase == Phase::Running && starts_with_content(buf) {
                self.block(env.alarms);
                break Input::Paused;
            }
            if self.phase == Phase::Running && buf.first() == Some(&FRAME_METHOD) {
                if let Some(shape) = peek_publish(buf, self.wire.frame_max) {
                    let len = shape.len;
                    if self.fast_publish(shape, buf, env) {
                        self.parsed_in_turn += len;
                        if self.parsed_in_turn >= config::READ_BYTES_PER_TURN_MAX {
                            break Input::Yield;
                        }
                        if self.effect_count() >= EFFECTS_PER_HAND_OVER {
                            return Input::HandOver;
                        }
                        continue;
                    }
                }
            }
            let before = buf.len();
            match parse_frame(buf, self.wire.frame_max) {
                Ok(None) => break Input::NeedMore,
                Ok(Some(frame)) => {
                    self.parsed_in_turn += before - buf.len();
                    self.frame(frame, env);
                }
                Err(error) => {
                    debug!(peer = %self.peer, %error, "frame error");
                    let error = error.to_amqp_error();
                    self.connection_error(error, env.now);
                    // The stream is no longer in sync: nothing after this parses.
                    buf.clear();
                    self.phase = Phase::Closed;
                }
            }
            if self.parsed_in_turn >= config::READ_BYTES_PER_TURN_MAX {
                break Input::Yield;
            }
            if self.effect_count() >= EFFECTS_PER_HAND_OVER {
                return Input::HandOver;
            }
        };
        self.parsed_in_turn = 0;
        self.flush_all_confirms();
        result
    }

    /// Checks the 8-byte protocol header; false if more bytes are needed.
    /// RabbitMQ also takes AMQP 0-9's header (`AMQP\x01\x01\x00\x09`) as
    /// 0-9-1, whose framing it shares; any other header, AMQP 0-8 and 1.0
    /// included, gets ours back and the socket closed, as the spec says.
    fn protocol_header(&mut self, buf: &mut BytesMut, env: &Env) -> bool {
        let n = buf.len().min(PROTOCOL_HEADER.len());
        if buf[..n] != PROTOCOL_HEADER[..n] && buf[..n] != PROTOCOL_HEADER_0_9[..n] {
            self.wire.raw(PROTOCOL_HEADER);
            self.phase = Phase::Closed;
            buf.clear();
            return true;
        }
        if n < PROTOCOL_HEADER.len() {
            return false;
        }
        let _ = buf.split_to(PROTOCOL_HEADER.len());
        // Tests of placement need to know which shard they reached.
        let shard = env.config.placement_test.map(|_| self.conn.shard);
        self.wire
            .method(0, &start_method(shard, self.external.mechanisms()));
        self.phase = Phase::StartOk;
        true
    }

    fn frame(&mut self, frame: Frame, env: &Env) {
        if let Phase::CloseSent { .. } = self.phase {
            if let Frame::Method {
                channel: 0,
                method: Method::ConnectionCloseOk(_) | Method::ConnectionClose(_),
            } = frame
            {
                if let Frame::Method {
                    method: Method::ConnectionClose(_),
                    ..
                } = frame
                {
                    self.wire.method(0, &ConnectionCloseOk {}.into());
                }
                self.phase = Phase::Closed;
            }
            return;
        }
        if self.phase == Phase::ClosingByClient {
            return;
        }
        match frame {
            Frame::Heartbeat { channel: 0 } => {}
            Frame::Heartbeat { channel } => self.connection_error(
                AmqpError::unexpected_frame(format!("heartbeat frame on channel {}", channel)),
                env.now,
            ),
            Frame::Method { channel: 0, method } => {
                let (class_id, method_id) = (method.class_id(), method.method_id());
                if let Err(error) = self.connection_method(method, env) {
                    self.connection_error(error.with_method(class_id, method_id), env.now);
                }
            }
            _ if self.phase != Phase::Running => {
                self.connection_error(
                    AmqpError::command_invalid("connection is not open yet"),
                    env.now,
                );
            }
            Frame::Method { channel, method } => self.channel_frame_method(channel, method, env),
            Frame::Header { channel, header } => self.channel_frame_header(channel, header, env),
            Frame::Body { channel, payload } => self.channel_frame_body(channel, payload, env),
        }
    }

    fn connection_method(&mut self, method: Method, env: &Env) -> Result<(), AmqpError> {
        match (&self.phase, method) {
            (Phase::StartOk, Method::ConnectionStartOk(m)) => {
                self.capabilities = capabilities(&m.client_properties);
                self.client_properties = m.client_properties.clone();
                self.client_id = match m.client_properties.get("client_id") {
                    Some(FieldValue::LongStr(id)) => {
                        std::str::from_utf8(id).ok().map(str::to_string)
                    }
                    _ => None,
                };
                let turn = env.login_delays.borrow_mut().turn(self.peer.ip(), env.now);
                match turn {
                    LoginTurn::Now => self.log_in(m.mechanism.as_str(), &m.response, env),
                    // Held until the tick lets it go; nothing else of the
                    // shard waits.
                    LoginTurn::At(answer_at) => {
                        self.held_login = Some(HeldLogin {
                            answer_at,
                            mechanism: m.mechanism,
                            response: m.response,
                        });
                        self.pause();
                    }
                    LoginTurn::Refused => {
                        warn!(peer = %self.peer, "login refused unchecked: too many logins wait after failures from this address");
                        let failure = AuthFailure::Refused {
                            user: String::new(),
                        };
                        self.refuse_login(m.mechanism.as_str(), failure, env.now);
                    }
                }
                Ok(())
            }
            (Phase::TuneOk, Method::ConnectionTuneOk(m)) => {
                let refusal = negotiation_refusal(
                    "frame_max",
                    m.frame_max,
                    config::FRAME_SIZE_MIN,
                    env.config.frame_size_max,
                )
                .or_else(|| {
                    negotiation_refusal(
                        "channel_max",
                        m.channel_max.into(),
                        1,
                        env.config.channel_max.into(),
                    )
                });
                if let Some(why) = refusal {
                    // RabbitMQ 3.10 sends no close frame here: it logs, stays
                    // silent for SILENT_CLOSE_DELAY and drops the socket.
                    error!(peer = %self.peer, reason = %why, "failed to negotiate connection parameters");
                    self.phase = Phase::CloseSent {
                        deadline: env.now + config::SILENT_CLOSE_DELAY,
                    };
                    return Ok(());
                }
                self.wire.frame_max = if m.frame_max == 0 {
                    env.config.frame_size_max
                } else {
                    m.frame_max
                };
                self.channel_max = match m.channel_max {
                    0 => env.config.channel_max,
                    n => n,
                };
                self.heartbeat_s = m.heartbeat;
                self.phase = Phase::Open;
                Ok(())
            }
            (Phase::Open, Method::ConnectionOpen(m)) => {
                // rabbit_reader's order: the vhost must exist (its
                // connection limit is looked up first), then the user
                // needs permissions on it
                // (rabbit_access_control:check_vhost_access).
                if env.users.vhost(m.virtual_host.as_str()).is_none() {
                    return Err(AmqpError::not_allowed(format!(
                        "vhost {} not found",
                        m.virtual_host
                    )));
                }
                let vhost = m.virtual_host.as_str();
                let usage = env.users.usage();
                let vhost_max = env
                    .users
                    .vhost(vhost)
                    .and_then(|v| v.limits.max_connections);
                let user_max = env
                    .users
                    .user(&self.user)
                    .and_then(|u| u.limits.max_connections);
                usage.open_connection(vhost, &self.user, vhost_max, user_max)?;
                if !env.users.may_open_vhost(&self.user, vhost) {
                    usage.close_connection(vhost, &self.user);
                    return Err(AmqpError::not_allowed(format!(
                        "access to vhost '{}' refused for user '{}'",
                        m.virtual_host, self.user
                    )));
                }
                self.usage = Some(usage.clone());
                self.vhost = m.virtual_host;
                self.wire.method(0, &ConnectionOpenOk {}.into());
                self.phase = Phase::Running;
                // RabbitMQ's line, word for word.
                info!(
                    connection = %self.conn.label(), user = %self.user, vhost = %self.vhost,
                    "connection {} ({}): user '{}' authenticated and granted access to vhost '{}'",
                    self.conn.label(), self.name, self.user, self.vhost
                );
                self.vhost_opened = Some(self.vhost.as_str().to_string());
                Ok(())
            }
            (_, Method::ConnectionClose(_)) => {
                self.close_by_client();
                Ok(())
            }
            (_, Method::ConnectionCloseOk(_)) => {
                self.phase = Phase::Closed;
                Ok(())
            }
            // RabbitMQ 3.10 with its internal user database accepts any new
            // secret (rabbit_auth_backend_internal:update_state keeps the user
            // as it is) and answers update-secret-ok; so do we, whose users
            // are that database.
            (Phase::Running, Method::ConnectionUpdateSecret(m)) => {
                info!(peer = %self.peer, user = %self.user, reason = %m.reason, "user updated secret");
                self.wire.method(0, &ConnectionUpdateSecretOk {}.into());
                Ok(())
            }
            (Phase::Running, method) => Err(AmqpError::channel_error(format!(
                "unexpected method {} in connection state running",
                method.name()
            ))),
            (_, method) => Err(AmqpError::command_invalid(format!(
                "unexpected method {} during the handshake",
                method.name()
            ))),
        }
    }

    /// Checks the credentials of connection.start-ok: tune, or refusal.
    fn log_in(&mut self, mechanism: &str, response: &Bytes, env: &Env) {
        let checked = if mechanism == "EXTERNAL" {
            env.users
                .authenticate_external(&self.external, self.peer.ip())
        } else {
            env.users.authenticate(mechanism, response, self.peer.ip())
        };
        match checked {
            Ok(user) => {
                self.user = user.name.clone();
                self.wire.method(
                    0,
                    &ConnectionTune {
                        channel_max: env.config.channel_max,
                        frame_max: env.config.frame_size_max,
                        heartbeat: env.config.heartbeat_s,
                    }
                    .into(),
                );
                self.phase = Phase::TuneOk;
            }
            Err(failure) => {
                env.login_delays
                    .borrow_mut()
                    .failed(self.peer.ip(), env.now);
                self.refuse_login(mechanism, failure, env.now);
            }
        }
    }

    fn refuse_login(&mut self, mechanism: &str, failure: AuthFailure, now: Instant) {
        let text = match &failure {
            AuthFailure::LoopbackOnly { user } => {
                format!("user '{}' can only connect via localhost", user)
            }
            AuthFailure::UnknownMechanism => {
                format!("unsupported authentication mechanism '{}'", mechanism)
            }
            _ => format!(
                "Login was refused using authentication mechanism {}. For details see the broker logfile.",
                mechanism
            ),
        };
        let user = match &failure {
            AuthFailure::Refused { user } | AuthFailure::LoopbackOnly { user } => user.as_str(),
            AuthFailure::Malformed
            | AuthFailure::UnknownMechanism
            | AuthFailure::External { .. } => "",
        };
        // RabbitMQ's words ("Error on AMQP connection ... state: starting"
        // then "PLAIN login refused: user 'x' - invalid credentials"), on
        // one line so that journald keeps them in one entry.
        let reason = match &failure {
            AuthFailure::Refused { user } => format!("user '{user}' - invalid credentials"),
            AuthFailure::LoopbackOnly { user } => {
                format!("user '{user}' can only connect via localhost")
            }
            AuthFailure::Malformed => "malformed response".to_string(),
            AuthFailure::UnknownMechanism => "unsupported mechanism".to_string(),
            AuthFailure::External { reason } => reason.to_string(),
        };
        error!(
            connection = %self.conn.label(), peer = %self.peer, user, mechanism,
            "Error on AMQP connection {} ({}, state: starting): {} login refused: {}",
            self.conn.label(), self.name, mechanism, reason
        );
        if self.capabilities.authentication_failure_close
            && failure != AuthFailure::UnknownMechanism
        {
            self.connection_error(AmqpError::access_refused(text), now);
        } else {
            // Without the capability RabbitMQ just drops the socket.
            self.phase = Phase::Closed;
        }
    }

    fn close_by_client(&mut self) {
        self.closed_by_client = true;
        if let Some(vhost) = &self.vhost_opened {
            info!(
                connection = %self.conn.label(), user = %self.user, vhost = %vhost,
                "closing AMQP connection {} ({}, vhost: '{}', user: '{}')",
                self.conn.label(), self.name, vhost, self.user
            );
        }
        // Close-ok only once the exclusive queues are gone, so that a client
        // that reconnects never sees them.
        if self.release_connection(true) {
            self.phase = Phase::ClosingByClient;
            self.pause();
        } else {
            self.wire.method(0, &ConnectionCloseOk {}.into());
            self.phase = Phase::Closed;
        }
    }

    /// Sends connection.close with the error and releases everything.
    pub(crate) fn connection_error(&mut self, error: AmqpError, now: Instant) {
        if matches!(self.phase, Phase::Closed | Phase::CloseSent { .. }) {
            return;
        }
        debug!(peer = %self.peer, code = error.code.code(), text = %error.text, "connection error");
        self.wire.method(0, &close_method(&error, 0));
        self.release_connection(false);
        self.phase = Phase::CloseSent {
            deadline: now + config::CLOSE_OK_TIMEOUT,
        };
    }

    /// Counts a new channel for the user's max-channels.
    pub(crate) fn count_channel(&mut self, env: &Env) -> Result<(), AmqpError> {
        let Some(usage) = &self.usage else {
            return Ok(());
        };
        let max = env
            .users
            .user(&self.user)
            .and_then(|u| u.limits.max_channels);
        usage.open_channel(&self.user, max)?;
        self.channels_counted += 1;
        Ok(())
    }

    /// A channel left the channel table.
    pub(crate) fn uncount_channel(&mut self) {
        if let Some(usage) = &self.usage {
            if self.channels_counted > 0 {
                self.channels_counted -= 1;
                usage.close_channels(&self.user, 1);
            }
        }
    }

    /// The connection is gone: it and its channels no longer count.
    pub(crate) fn release_usage(&mut self) {
        if let Some(usage) = self.usage.take() {
            usage.close_channels(&self.user, self.channels_counted);
            usage.close_connection(&self.vhost, &self.user);
            self.channels_counted = 0;
        }
    }

    /// Closes the connection from the broker's side (a deleted vhost or
    /// user): connection.close with `error`, as RabbitMQ's
    /// `rabbit_reader:shutdown` sends it.
    pub(crate) fn force_close(&mut self, error: AmqpError, now: Instant) {
        if self.phase == Phase::Running {
            info!(peer = %self.peer, user = %self.user, vhost = %self.vhost, reason = %error.text, "closing connection");
        }
        self.connection_error(error, now);
    }

    /// Closes a channel with a soft error, or the connection with a hard one.
    pub(crate) fn fail(&mut self, channel: u16, mut error: AmqpError, now: Instant) {
        // Texts written for "/" name the connection's vhost.
        if !self.vhost.is_empty()
            && self.vhost.as_str() != "/"
            && error.text.contains("in vhost '/'")
        {
            error.text = crate::broker::metadata::in_vhost(&error.text, &self.vhost);
        }
        if channel == 0 || error.code.is_hard() {
            self.connection_error(error, now);
            return;
        }
        debug!(peer = %self.peer, channel, code = error.code.code(), text = %error.text, "channel error");
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        if ch.closing {
            return;
        }
        ch.closing = true;
        self.wire.method(channel, &close_method(&error, channel));
        self.release_channel(channel);
    }

    /// A resource alarm stops this connection: connection.blocked to a client
    /// that announced the capability, then no more reading.
    fn block(&mut self, alarms: AlarmSet) {
        self.blocked = true;
        debug!(peer = %self.peer, reason = alarms.reason(), "connection blocked");
        if self.capabilities.connection_blocked {
            let blocked = ConnectionBlocked {
                reason: ShortStr::from_static(alarms.reason()),
            };
            self.wire.method(0, &blocked.into());
        }
    }

    /// Every alarm has cleared: connection.unblocked, and reading resumes.
    pub(crate) fn unblock(&mut self, now: Instant) {
        if !self.blocked {
            return;
        }
        self.blocked = false;
        // The client's heartbeats were not read meanwhile.
        self.last_read = now;
        debug!(peer = %self.peer, "connection unblocked");
        if self.capabilities.connection_blocked && self.phase == Phase::Running {
            self.wire.method(0, &ConnectionUnblocked {}.into());
        }
        self.reader.notify();
    }

    /// The broker is stopping: connection.close 320, in RabbitMQ's words.
    pub(crate) fn shut_down(&mut self, now: Instant) {
        self.close_forced(
            "broker forced connection closure with reason 'shutdown'".to_string(),
            now,
        );
    }

    /// connection.close 320 CONNECTION_FORCED with `reason` (the broker
    /// stopping, or an operator closing it through the management API).
    pub(crate) fn close_forced(&mut self, reason: String, now: Instant) {
        // A blocked connection is read again, so that its close-ok arrives.
        if self.blocked {
            self.blocked = false;
            self.reader.notify();
        }
        match self.phase {
            Phase::ProtocolHeader => {
                // Nothing was said yet: just close the socket.
                self.phase = Phase::Closed;
            }
            Phase::ClosingByClient => {}
            _ => self.connection_error(AmqpError::connection_forced(reason), now),
        }
    }

    /// What the management API shows of this connection and its channels.
    pub(crate) fn info(&self) -> crate::broker::control::ConnectionInfo {
        let state = match self.phase {
            Phase::Running if self.blocked => "blocked",
            Phase::Running => "running",
            Phase::CloseSent { .. } | Phase::ClosingByClient | Phase::Closed => "closing",
            _ => "starting",
        };
        let mut channels: Vec<_> = self.channels.values().map(|c| c.info()).collect();
        channels.sort_by_key(|c| c.number);
        crate::broker::control::ConnectionInfo {
            conn: self.conn,
            peer: self.peer,
            user: self.user.clone(),
            vhost: self.vhost.clone(),
            state,
            connected_at_ms: self.opened_at_epoch_ms,
            channel_max: self.channel_max,
            frame_max: self.wire.frame_max,
            heartbeat_s: self.heartbeat_s,
            published: self.published,
            client_properties: self.client_properties.clone(),
            channels,
        }
    }

    /// The socket is gone: release everything without a word to the client.
    pub(crate) fn lost(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        if let (Some(vhost), false) = (&self.vhost_opened, self.closed_by_client) {
            warn!(
                connection = %self.conn.label(), user = %self.user, vhost = %vhost,
                "closing AMQP connection {} ({}, vhost: '{}', user: '{}'): client unexpectedly closed TCP connection",
                self.conn.label(), self.name, vhost, self.user
            );
        }
        self.release_connection(false);
        self.phase = Phase::Closed;
    }

    /// Releases every channel and, if the connection was open, tells the
    /// metadata owner so that its exclusive queues go (answering on channel 0
    /// when `answer`). Returns whether the connection was open.
    fn release_connection(&mut self, answer: bool) -> bool {
        let opened = self.phase == Phase::Running;
        self.release_all_channels();
        if opened {
            let from = answer.then_some((self.conn, 0));
            let request = MetaRequest::ConnectionGone { conn: self.conn };
            self.effects.push((
                ShardId(0),
                ShardMsg::Meta {
                    from,
                    scope: None,
                    request: Box::new(request),
                },
            ));
        }
        opened
    }

    fn release_all_channels(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            self.release_channel(id);
        }
    }

    /// The heartbeat and deadline checks of the shard's tick.
    pub(crate) fn tick(&mut self, now: Instant) {
        if self
            .held_login
            .as_ref()
            .is_some_and(|held| now >= held.answer_at)
        {
            self.resume();
        }
        match self.phase {
            Phase::CloseSent { deadline } if now >= deadline => {
                self.phase = Phase::Closed;
                self.wire.writer.notify();
            }
            Phase::ProtocolHeader | Phase::StartOk | Phase::TuneOk | Phase::Open
                if now.duration_since(self.opened_at) > config::HANDSHAKE_TIMEOUT =>
            {
                info!(peer = %self.peer, "handshake timed out");
                self.phase = Phase::Closed;
                self.wire.writer.notify();
            }
            Phase::Running if self.heartbeat_s > 0 => {
                let interval = Duration::from_secs(self.heartbeat_s as u64);
                // A blocked connection is not read, so its heartbeats are not
                // seen: RabbitMQ pauses the heartbeat monitor too.
                if !self.blocked && now.duration_since(self.last_read) > interval * 2 {
                    // RabbitMQ closes the socket without a close frame.
                    warn!(peer = %self.peer, timeout_s = self.heartbeat_s, "missed heartbeats from client");
                    self.lost();
                    self.wire.writer.notify();
                } else if now.duration_since(self.wire.last_write) >= interval / 2 {
                    self.wire.heartbeat();
                    self.wire.last_write = now;
                }
            }
            _ => {}
        }
    }

    /// Handles the answer to a request this connection sent to a shard.
    /// Returns the reply back if its channel is gone, so the caller can undo it.
    pub(crate) fn on_reply(
        &mut self,
        channel: u16,
        reply: ChannelReply,
        now: Instant,
    ) -> Option<ChannelReply> {
        if channel == 0 {
            if self.phase == Phase::ClosingByClient {
                self.wire.method(0, &ConnectionCloseOk {}.into());
                self.phase = Phase::Closed;
            }
            self.resume();
            return None;
        }
        self.channel_reply(channel, reply, now)
    }
}

/// The protocol header of AMQP 0-9, which RabbitMQ serves as 0-9-1.
const PROTOCOL_HEADER_0_9: &[u8; 8] = b"AMQP\x01\x01\x00\x09";

/// RabbitMQ's check of a value the client chose in connection.tune-ok
/// (rabbit_reader:validate_negotiated_integer_value): below the protocol's
/// minimum, or 0 ("no limit") or above the server's own limit when it has one,
/// is refused, with RabbitMQ's words.
fn negotiation_refusal(field: &str, client: u32, min: u32, server: u32) -> Option<String> {
    if client != 0 && client < min {
        return Some(format!(
            "negotiated {field} = {client} is lower than the minimum allowed value ({min})"
        ));
    }
    if server != 0 && (client == 0 || client > server) {
        let detail = if field == "channel_max" && client == 0 {
            " (no limit)"
        } else {
            ""
        };
        return Some(format!(
            "negotiated {field} = {client}{detail} is higher than the maximum allowed value ({server})"
        ));
    }
    None
}

/// connection.start; `shard` is named only for tests of placement
/// (`config::PlacementTest`).
fn start_method(shard: Option<ShardId>, mechanisms: &'static str) -> Method {
    let mut capabilities = FieldTable::default();
    for name in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        capabilities.insert(name, FieldValue::Bool(true));
    }
    let text = |s: &str| FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()));
    let mut properties = FieldTable::default();
    properties.insert("capabilities", FieldValue::Table(capabilities));
    properties.insert("cluster_name", text("warren@localhost"));
    properties.insert("copyright", text("Copyright (c) the warren developers"));
    properties.insert(
        "information",
        text("Licensed under the Apache License 2.0. An AMQP 0-9-1 broker wire-compatible with RabbitMQ."),
    );
    properties.insert("platform", text("Rust"));
    properties.insert("product", text("warren"));
    properties.insert("version", text(env!("CARGO_PKG_VERSION")));
    if let Some(shard) = shard {
        properties.insert("warren_shard", FieldValue::I32(i32::from(shard.0)));
    }
    ConnectionStart {
        version_major: 0,
        version_minor: 9,
        server_properties: properties,
        mechanisms: Bytes::from_static(mechanisms.as_bytes()),
        locales: Bytes::from_static(b"en_US"),
    }
    .into()
}

fn capabilities(client_properties: &FieldTable) -> Capabilities {
    let Some(FieldValue::Table(table)) = client_properties.get("capabilities") else {
        return Capabilities::default();
    };
    let flag = |name: &str| table.get(name).and_then(|v| v.as_bool()).unwrap_or(false);
    Capabilities {
        consumer_cancel_notify: flag("consumer_cancel_notify"),
        authentication_failure_close: flag("authentication_failure_close"),
        connection_blocked: flag("connection.blocked"),
    }
}

/// True if `buf` starts with a basic.publish method frame (its first 11
/// bytes are enough: frame type, channel, size, class 60, method 40), or
/// with a content header or body frame, which only a publish has.
fn starts_with_content(buf: &[u8]) -> bool {
    match buf.first() {
        Some(&FRAME_METHOD) => buf.len() >= 11 && buf[7..11] == [0, 60, 0, 40],
        Some(&FRAME_HEADER) | Some(&FRAME_BODY) => true,
        _ => false,
    }
}

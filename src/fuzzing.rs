//! What the fuzz targets (`fuzz/`) drive, behind the `fuzzing` feature: a
//! broker of one shard run in-process, without glommio or sockets, and the
//! parsers a client or an operator feeds (topic matching, the definitions
//! import). Nothing here is an API: it only wraps, as narrowly as it can,
//! what the targets need of items that are otherwise the crate's own.
//!
//! The broker layer is synchronous (it takes bytes and returns frames), so a
//! `Broker` here is a `ShardState` plus the metadata owner's task, polled by
//! hand: the owner awaits nothing but its inbox and, with one shard and no
//! data directory, answers of its own shard that are ready at once.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Waker};

use bytes::BytesMut;

use crate::broker::connection::Input;
use crate::broker::exchange::topic::TopicRouter;
use crate::broker::metadata::{run_owner, OwnerStart};
use crate::broker::ShardState;
use crate::config::Config;
use crate::metadata::auth::Users;
use crate::metadata::definitions::{Definitions, Source};
use crate::metadata::exchange::{Binding, Destination};
use crate::model::alarms::AlarmBoard;
use crate::model::ids::{ConnId, QueueId, QueueRef, ShardId};
use crate::util::signal::Notify;
use warren_protocol::{FieldTable, ShortStr};

/// What a connection's reader would do after `Broker::input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Every complete frame was handled: more bytes are welcome.
    NeedMore,
    /// A turn's worth was handled: call `input` again with the same buffer.
    Yield,
    /// Waiting (a held login, an alarm): nothing more is parsed for now.
    Paused,
    /// The connection is closed.
    Closed,
}

/// A broker of one shard, as its sockets' tasks see it, with a `guest`
/// user that may log in from the loopback address every connection here
/// comes from.
pub struct Broker {
    state: Rc<RefCell<ShardState>>,
    owner: Pin<Box<dyn Future<Output = ()>>>,
    /// Each connection's reader wake-up, by connection.
    readers: Vec<(ConnId, Notify)>,
}

/// A connection of a `Broker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client(ConnId);

impl Default for Broker {
    fn default() -> Self {
        Broker::new(Config::default())
    }
}

impl Broker {
    pub fn new(config: Config) -> Broker {
        let state = Rc::new(RefCell::new(ShardState::new(
            ShardId(0),
            1,
            Rc::new(config),
            Rc::new(Users::new(None)),
            Arc::new(AlarmBoard::new(1)),
        )));
        let owner = Box::pin(run_owner(state.clone(), OwnerStart::default(), ()));
        let mut broker = Broker {
            state,
            owner,
            readers: Vec::new(),
        };
        broker.run_owner();
        broker
    }

    /// A new connection from 127.0.0.1.
    pub fn connect(&mut self) -> Client {
        let peer = SocketAddr::from(([127, 0, 0, 1], 40_000));
        let (id, reader, _writer) = self
            .state
            .borrow_mut()
            .open_connection((peer, peer), Default::default());
        self.readers.push((id, reader));
        Client(id)
    }

    /// Hands `buf` to the connection as its reader would, then lets the
    /// metadata owner answer what it was asked; the bytes of complete
    /// frames are consumed from the front of `buf`. A connection paused
    /// for the owner's answer goes on once it has it, as its reader would
    /// when woken.
    pub fn input(&mut self, client: Client, buf: &mut BytesMut) -> Step {
        let mut input;
        // A request answered at once resumes the connection; a bounded
        // number of rounds, since every round consumes input or ends.
        let mut rounds = 0;
        loop {
            input = self.state.borrow_mut().connection_input(client.0, buf);
            self.run_owner();
            rounds += 1;
            if input != Input::Paused || !self.woken(client) || rounds > 1024 {
                break;
            }
        }
        match input {
            Input::NeedMore => Step::NeedMore,
            Input::HandOver | Input::Yield => Step::Yield,
            Input::Paused => Step::Paused,
            Input::Closed => Step::Closed,
        }
    }

    /// The shard's tick: heartbeats, handshake and close deadlines, timers.
    pub fn tick(&mut self) {
        self.state.borrow_mut().tick(std::time::Instant::now());
        self.state.borrow_mut().run_timers();
        self.run_owner();
    }

    /// What the connection wrote since the last call (whole frames).
    pub fn take_output(&mut self, client: Client) -> BytesMut {
        let mut out = BytesMut::new();
        self.state.borrow_mut().take_output(client.0, &mut out);
        out
    }

    pub fn is_closed(&self, client: Client) -> bool {
        self.state.borrow().connection_is_closed(client.0)
    }

    /// The socket is gone: the connection releases what it holds.
    pub fn disconnect(&mut self, client: Client) {
        self.state.borrow_mut().connection_lost(client.0);
        self.state.borrow_mut().remove_connection(client.0);
        self.readers.retain(|(id, _)| *id != client.0);
        self.run_owner();
    }

    /// Whether publishes check the user's write permission (they do unless
    /// told otherwise): off, the same path without the check, for
    /// `benches/publish_permission.rs` to measure what it costs. It holds
    /// for every `Broker` of the process.
    pub fn set_publish_permission_check(on: bool) {
        crate::broker::channel::SKIP_PUBLISH_PERMISSION_CHECK
            .store(!on, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many times a channel checked a publish's permission in full
    /// rather than from its cache, in every `Broker` of the process.
    pub fn publish_access_fills() -> u64 {
        crate::broker::channel::PUBLISH_ACCESS_FILLS.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues on the shard, and messages they hold.
    pub fn queue_count(&self) -> usize {
        self.state.borrow().queues.len()
    }

    /// Whether the connection's reader was woken since it last looked.
    fn woken(&self, client: Client) -> bool {
        let Some((_, reader)) = self.readers.iter().find(|(id, _)| *id == client.0) else {
            return false;
        };
        let mut cx = Context::from_waker(Waker::noop());
        std::pin::pin!(reader.wait()).poll(&mut cx).is_ready()
    }

    fn run_owner(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        // The owner loops for ever; each poll handles its inbox, and its
        // replies may ask it for more (auto-delete), hence a few rounds.
        for _ in 0..4 {
            let pending = !self.state.borrow().meta_inbox.requests.is_empty();
            if self.owner.as_mut().poll(&mut cx).is_ready() || !pending {
                break;
            }
        }
    }
}

/// Binds each of `patterns` (topic binding keys) to a queue of its own,
/// numbered from 0, and returns the numbers of those `routing_key` routes
/// to, sorted, each once.
pub fn topic_route(patterns: &[&str], routing_key: &str) -> Vec<usize> {
    let mut router = TopicRouter::default();
    for (n, pattern) in patterns.iter().enumerate() {
        router.bind(&topic_binding(n, pattern));
    }
    let mut out = Vec::new();
    router.route(routing_key, &mut out);
    let mut matched: Vec<usize> = out
        .iter()
        .filter_map(|d| match d {
            Destination::Queue(queue) => Some(queue.id.0 as usize),
            Destination::Exchange(_) => None,
        })
        .collect();
    matched.sort_unstable();
    matched.dedup();
    matched
}

/// `topic_route` after unbinding the patterns whose `unbind` is true: what
/// stays must route as if only it had been bound.
pub fn topic_route_after_unbind(
    patterns: &[&str],
    unbind: &[bool],
    routing_key: &str,
) -> Vec<usize> {
    let mut router = TopicRouter::default();
    for (n, pattern) in patterns.iter().enumerate() {
        router.bind(&topic_binding(n, pattern));
    }
    for (n, pattern) in patterns.iter().enumerate() {
        if unbind.get(n).copied().unwrap_or(false) {
            router.unbind(&topic_binding(n, pattern));
        }
    }
    let mut out = Vec::new();
    router.route(routing_key, &mut out);
    let mut matched: Vec<usize> = out
        .iter()
        .filter_map(|d| match d {
            Destination::Queue(queue) => Some(queue.id.0 as usize),
            Destination::Exchange(_) => None,
        })
        .collect();
    matched.sort_unstable();
    matched.dedup();
    matched
}

fn topic_binding(n: usize, pattern: &str) -> Binding {
    Binding {
        source: ShortStr::from("amq.topic"),
        destination: Destination::Queue(QueueRef {
            id: QueueId(n as u64),
            shard: ShardId(0),
        }),
        routing_key: ShortStr::from(pattern),
        arguments: FieldTable::default(),
    }
}

/// Reads `text` as a RabbitMQ definitions import, as `--definitions` does,
/// and plans its restore; whatever parses must survive a write and a read
/// back as warren's own definitions file unchanged. Returns whether it
/// parsed. Panics only on a broken invariant.
pub fn definitions_import(text: &str) -> bool {
    let Ok(parsed) = Definitions::from_json(text, Source::Import) else {
        return false;
    };
    let definitions = parsed.definitions;
    let _ = definitions.restore_plan(2);
    let written = definitions.to_json();
    let back = Definitions::from_json(&written, Source::DataDir)
        .unwrap_or_else(|e| panic!("warren cannot read back what it wrote: {e}\n{written}"));
    assert_eq!(
        back.definitions.to_json(),
        written,
        "a definitions file read back is written differently"
    );
    true
}

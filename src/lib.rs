//! warren: an AMQP 0-9-1 message broker, wire-compatible with RabbitMQ,
//! thread-per-core on io_uring.
//!
//! # Layout
//!
//! - `protocol`: bytes ⇄ frames ⇄ methods; no sockets, no broker types.
//! - `broker`: AMQP semantics on one shard (connections, channels, exchange
//!   routers, queues, the metadata owner and each shard's replica);
//!   synchronous, no I/O (the metadata owner writes through a sink that
//!   `store` provides).
//! - `metadata`: the definitions as data (users, passwords, queues and
//!   their arguments, exchanges and bindings as declared, changes to them)
//!   and RabbitMQ's definitions JSON format; below `store` and `broker`.
//! - `shard`: one glommio executor per CPU, the mailbox mesh, the tick.
//! - `net`: listening sockets, the accept loop, and each connection's reader
//!   and writer tasks; it sees the shard only through `ConnectionHost`
//!   (implemented in `shard::host`).
//! - `store`: what is kept under `--data-dir`: the definitions file and the
//!   message store (each shard's segment log of persistent messages); it
//!   never sees a broker type (confirms are opaque tokens to it).
//! - `config`: defaults and every limit.
//! - `fuzzing` (feature `fuzzing`): a one-shard broker driven in-process,
//!   and the parsers, for the fuzz targets under `fuzz/`; not an API.
//!
//! # A message's way
//!
//! `net::connection` reads bytes → `shard::host` hands them to
//! `broker::connection`, which parses frames →
//! `broker::channel` assembles method + header + body and routes it on the
//! shard's replica (`broker::vhost`, `broker::exchange::*`) → a
//! `ShardMsg::Enqueue` per queue, run at once for local queues or batched
//! into `shard`'s mailbox for others → `broker::queue` dispatches to a
//! consumer → `broker::channel` writes basic.deliver into the connection's
//! output → `net::connection`'s writer flushes it, many frames per write.
//!
//! A persistent message taken by a durable queue is also appended, by
//! `broker::queue`, to its shard's `store::log`; the shard's store task
//! (`shard`) writes what a reactor turn appended with one write and one
//! fdatasync (`store::segments`), then sends the publisher confirms that
//! waited for it.

pub mod broker;
pub mod config;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod metadata;
pub mod model;
pub mod net;
pub mod shard;
pub mod store;
pub mod util;

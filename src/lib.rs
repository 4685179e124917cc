//! warren: an AMQP 0-9-1 message broker, wire-compatible with RabbitMQ,
//! thread-per-core on io_uring.
//!
//! # Layout
//!
//! Each folder is a layer and imports go one way only; `tests/layers.rs`
//! reads every `crate::` path and fails on an import the table does not
//! allow (and on a cycle in the table):
//!
//! | layer | what it holds | may import |
//! | --- | --- | --- |
//! | `util` | std-only helpers: hasher, timer wheel, notify, JSON, digests, CRC32C, rlimit | nothing |
//! | `model` | ids, `Message`, the alarm state shards share | `util` |
//! | `config` | `Config`, defaults and every limit | `util`, `model` |
//! | `metadata` | users, passwords, queues and exchanges as declared, the definitions JSON format | `util`, `model`, `config` |
//! | `store` | the definitions file and log, the message store (segment logs, recovery) | the above |
//! | `broker` | AMQP semantics on one shard, synchronous and without I/O | the above and `store` |
//! | `net` | listening sockets and each connection's reader and writer | `util`, `config` |
//! | `mgmt` | the control-plane thread: the management HTTP API, which asks shards over `broker::control` | `util`, `model`, `config`, `metadata`, `broker` |
//! | `shard` | the composition root: executors, mailboxes, tasks, boot | everything |
//!
//! The AMQP codec (bytes ⇄ frames ⇄ methods and field tables) is its own
//! crate, `warren-protocol` (`protocol/`), which every layer may use and
//! which `loadgen` and the fuzz targets use too. `net` sees a shard only
//! through `net::connection::ConnectionHost` (implemented in
//! `shard::host`); `store` never sees a broker type (publisher confirms are
//! opaque tokens to it).
//!
//! With the feature `fuzzing`, `fuzzing` drives a one-shard broker
//! in-process, and the parsers, for the fuzz targets under `fuzz/`; it is
//! not an API.
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
pub(crate) mod mgmt;
pub mod model;
pub(crate) mod net;
pub mod shard;
pub mod store;
pub mod util;

//! Helpers that know nothing of AMQP or of the broker: they use only `std`
//! (with `bytes` and `libc`), and every other folder may use them. Nothing here imports
//! another folder of the crate.
//!
//! - `hash`: the map hasher for the broker's short keys.
//! - `timer_wheel`: the hierarchical timer wheel each shard drives from its tick.
//! - `signal`: a single-task notify and a oneshot, for tasks of one executor.
//! - `json`: a small JSON reader and writer that keeps key order.
//! - `digest`: SHA-256/512 and MD5, for RabbitMQ's password hashes.
//! - `crc32c`: the checksum of the message store's records.
//! - `rlimit`: raising RLIMIT_MEMLOCK, which io_uring needs.
//! - `node`: the node's name, `warren@HOST`.

pub(crate) mod crc32c;
pub(crate) mod digest;
pub(crate) mod hash;
pub(crate) mod json;
pub(crate) mod node;
pub(crate) mod rlimit;
pub(crate) mod signal;
pub mod timer_wheel;

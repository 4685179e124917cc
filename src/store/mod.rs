//! What warren keeps on disk under `--data-dir`: the durable definitions
//! (`definitions`) and the message store, one segment log per shard.
//!
//! - `record`: the segment file format (chunks of records, checksummed);
//! - `log`: the shard's in-memory side of its log (append, group commit
//!   batches, segment accounting and reclaim), free of I/O;
//! - `segments`: the shard's segment files, written through io_uring;
//! - `recovery`: reading the last run's log at start and rewriting it for
//!   this run (generations);
//! - `crc32c`: the chunks' checksum.
//!
//! Like `shard/` and `net/`, this module may name glommio: its writes go
//! through io_uring so that a shard never blocks on the disk.

pub mod definitions;
pub mod log;
pub mod record;
pub mod recovery;
pub mod segments;

//! What warren keeps on disk under `--data-dir`: the durable definitions
//! (`definitions`) and the message store, one segment log per shard.
//!
//! - `record`: the segment file format (chunks of records, checksummed);
//! - `log`: the shard's in-memory side of its log (append, group commit
//!   batches, segment accounting and reclaim), free of I/O;
//! - `segments`: the shard's segment files, written through io_uring, and
//!   read back the same way for paged messages (`SegmentReader`);
//! - `scan`: start-up in place: the last run's logs scanned into an index
//!   of the live records (heads only, never bodies), queues given back the
//!   ids and shards their records carry, and the logs carried on;
//! - `index`: the clean-stop index a shard writes at the end of a clean
//!   stop, which the next start reads instead of the segments;
//! - `recovery`: what a shard starts with, and the fallback that rewrites
//!   the log into a new generation (when the logs cannot be kept);
//! - `definitions`: the definitions file (atomic replace) and the
//!   `DefinitionsSink` the metadata owner writes through;
//! - `definitions_log`: the log of durable definition changes beside the
//!   file (a record per change, compacted into the file), and its replay.
//!
//! The store imports `metadata`, `model`, `util`, `config` and the codec,
//! never `broker`: a publisher confirm is an opaque token it hands back once
//! the records appended before it are durable, and recovery reads the
//! queues to restore as `metadata::vhost::QueueMeta`.
//!
//! Like `shard/` and `net/`, this module may name glommio: its writes go
//! through io_uring so that a shard never blocks on the disk.

pub(crate) mod definitions;
pub(crate) mod definitions_log;
pub(crate) mod disk;
pub(crate) mod index;
pub mod log;
pub(crate) mod record;
pub(crate) mod recovery;
pub(crate) mod scan;
pub(crate) mod segments;

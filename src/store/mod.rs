//! What warren keeps on disk under `--data-dir`. For now that is the
//! definitions file (`definitions`); the message store's segment logs will
//! live here too. Like `shard/` and `net/`, this module may name glommio:
//! its writes go through io_uring so that a shard never blocks on the disk.

pub mod definitions;

//! Memory and disk alarms, as RabbitMQ raises them: when the node uses more
//! memory than its high watermark (`--vm-memory-high-watermark`, 0.4 of RAM by
//! default) or its data directory's disk has less free space than
//! `--disk-free-limit` (50 MB by default), publishing connections are blocked
//! until the alarm clears. No message is ever dropped to stay under a limit.
//! The disk alarm is also raised while a shard's message store cannot
//! write at all (a full disk, a file size limit, an I/O error): it holds
//! the batch and writes it again until the disk takes it.
//!
//! This module is the pure part: the flag values and how they are parsed,
//! the set of raised alarms and the `connection.blocked` reason it gives, and
//! the board through which shards share their memory use and the alarm state.
//! Measuring (RSS at start, RAM, `statvfs`) is I/O and lives in
//! `shard::alarms`; blocking a connection is in `broker::connection`.
//!
//! # What "memory used" means
//!
//! RabbitMQ compares the Erlang VM's total memory with the watermark. warren
//! compares *the process's resident size at start* (code, io_uring memory,
//! mailboxes: a fixed baseline) *plus the bytes of client data it holds*:
//! every message in a queue, ready or waiting for an ack (body, properties,
//! exchange and routing key, and a fixed per-message overhead for the
//! broker's own structures); every message held by a delayed exchange;
//! every publish of an open transaction; every body being assembled from
//! its frames; and every connection's output not yet written. Why not the
//! live RSS: freed memory often stays in the allocator (and RSS with it), so
//! an alarm set on RSS might never clear after consumers drain the queues;
//! these bytes fall exactly when messages leave, so unblocking is reliable
//! and testable. Each of those buffers also has a bound of its own, so that
//! none grows without limit while the alarm blocks publishers: a connection's
//! output stops its consumers at their queues past
//! `config::DELIVERY_OUTPUT_BYTES_MAX`, a transaction holds at most
//! `config::TX_PUBLISHES_MAX` publishes, a body at most `--max-message-size`,
//! and a connection in the middle of a publish is blocked at its next
//! content frame. What this does not count: messages in transit between
//! shards, and a read buffer kept alive by one small message sliced from it
//! (bodies are slices of the buffer they arrived in). The relative default
//! (0.4) leaves room for them.
//!
//! # No locks on the message path
//!
//! Each queue keeps its own byte count, and each shard one for its delayed
//! messages (plain integers on its shard). Every `ALARM_CHECK_INTERVAL` each
//! shard sums its queues and connections (O(queues + channels), off the
//! message path) and stores the sum in its own slot of the `AlarmBoard`.
//! One shard alone (the first started) decides: it adds the slots to the
//! baseline, compares with the watermark, polls the disk, logs alarm
//! set/clear as RabbitMQ does, and stores the raised set, which every shard
//! reads on its next check. So the alarm is node-wide, as in RabbitMQ, and
//! the only memory shards share is one word per shard plus one byte,
//! touched a few times a second.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

/// How often shards publish their memory use and pick up the alarm state.
/// What a fast publisher adds between two checks is how far memory can go
/// past the watermark (at 100 ms a flood over loopback went a third past a
/// 64 MiB one); each check sums a shard's queues and channels.
pub(crate) const ALARM_CHECK_INTERVAL: Duration = Duration::from_millis(25);
/// How often the deciding shard asks the filesystem for the data directory's free space.
pub(crate) const DISK_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// RabbitMQ's default `vm_memory_high_watermark.relative`.
pub(crate) const MEMORY_HIGH_WATERMARK_DEFAULT: f64 = 0.4;
/// RabbitMQ's default `disk_free_limit` ("50MB", powers of ten).
pub(crate) const DISK_FREE_LIMIT_DEFAULT_BYTES: u64 = 50_000_000;
/// What a queued message costs beyond its bytes: the queue's slot, the
/// message struct and its handles, a deque slot while unacknowledged.
pub(crate) const MESSAGE_OVERHEAD_BYTES: u64 = 160;

/// `--vm-memory-high-watermark`: a fraction of RAM or a number of bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MemoryWatermark {
    Relative(f64),
    Absolute(u64),
}

impl Default for MemoryWatermark {
    fn default() -> Self {
        MemoryWatermark::Relative(MEMORY_HIGH_WATERMARK_DEFAULT)
    }
}

impl MemoryWatermark {
    /// The watermark in bytes, for a machine with `total_memory` bytes.
    pub(crate) fn bytes(self, total_memory: u64) -> u64 {
        match self {
            MemoryWatermark::Relative(fraction) => (fraction * total_memory as f64) as u64,
            MemoryWatermark::Absolute(bytes) => bytes,
        }
    }
}

impl std::str::FromStr for MemoryWatermark {
    type Err = String;

    /// `0.4` (a fraction of RAM, as `vm_memory_high_watermark.relative`), or
    /// an amount as `vm_memory_high_watermark.absolute` takes it: `1073741824`,
    /// `1024MiB`, `1GB`. A bare number is a fraction when it has a decimal
    /// point and bytes otherwise, since a fraction of 1 or more is no
    /// watermark at all and RabbitMQ's relative form is always written as one.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.contains('.') {
            let fraction: f64 = text.parse().map_err(|_| {
                format!(
                    "invalid --vm-memory-high-watermark {:?}: expected a fraction of RAM such as \
                     0.4, or an amount such as 1073741824, 1024MiB or 1GB",
                    text
                )
            })?;
            if !(fraction > 0.0 && fraction.is_finite()) {
                return Err(format!(
                    "invalid --vm-memory-high-watermark {:?}: a fraction of RAM must be above 0",
                    text
                ));
            }
            return Ok(MemoryWatermark::Relative(fraction));
        }
        match parse_information_unit(text) {
            Some(0) => Err(format!(
                "invalid --vm-memory-high-watermark {:?}: must be above 0",
                text
            )),
            Some(bytes) => Ok(MemoryWatermark::Absolute(bytes)),
            None => Err(format!(
                "invalid --vm-memory-high-watermark {:?}: expected a fraction of RAM such as 0.4, \
                 or an amount such as 1073741824, 1024MiB or 1GB",
                text
            )),
        }
    }
}

/// `--disk-free-limit`: bytes, or a multiple of RAM (`mem_relative`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DiskFreeLimit {
    Absolute(u64),
    MemRelative(f64),
}

impl Default for DiskFreeLimit {
    fn default() -> Self {
        DiskFreeLimit::Absolute(DISK_FREE_LIMIT_DEFAULT_BYTES)
    }
}

impl DiskFreeLimit {
    pub(crate) fn bytes(self, total_memory: u64) -> u64 {
        match self {
            DiskFreeLimit::Absolute(bytes) => bytes,
            DiskFreeLimit::MemRelative(factor) => (factor * total_memory as f64) as u64,
        }
    }
}

impl std::str::FromStr for DiskFreeLimit {
    type Err = String;

    /// `50MB`, `1GB`, `2GiB`, `1000000` (bytes), or `mem_relative:1.0` for
    /// RabbitMQ's `{mem_relative, 1.0}` (`disk_free_limit.relative`).
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(factor) = text.strip_prefix("mem_relative:") {
            return match factor.trim().parse::<f64>() {
                Ok(f) if f >= 0.0 && f.is_finite() => Ok(DiskFreeLimit::MemRelative(f)),
                _ => Err(format!(
                    "invalid --disk-free-limit {:?}: mem_relative takes a factor of RAM such as \
                     mem_relative:1.0",
                    text
                )),
            };
        }
        parse_information_unit(text)
            .map(DiskFreeLimit::Absolute)
            .ok_or_else(|| {
                format!(
                    "invalid --disk-free-limit {:?}: expected an amount such as 50MB, 1GB, \
                     2GiB or 1000000, or mem_relative:1.0",
                    text
                )
            })
    }
}

/// An amount of bytes written as RabbitMQ's
/// `rabbit_resource_monitor_misc:parse_information_unit` reads it: digits,
/// then optionally kB/MB/GB (powers of 1000, any case of the first letter)
/// or k/M/G/kiB/MiB/GiB (powers of 1024). None for anything else.
pub(crate) fn parse_information_unit(text: &str) -> Option<u64> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits_end == 0 {
        return None;
    }
    let value: u64 = text[..digits_end].parse().ok()?;
    let multiplier: u64 = match &text[digits_end..] {
        "" => 1,
        "kB" | "KB" | "kb" | "Kb" => 1000,
        "MB" | "mb" | "Mb" => 1000 * 1000,
        "GB" | "gb" | "Gb" => 1000 * 1000 * 1000,
        "k" | "K" | "kiB" | "KiB" | "kib" | "KIB" => 1 << 10,
        "m" | "M" | "MiB" | "mib" | "MIB" => 1 << 20,
        "g" | "G" | "GiB" | "gib" | "GIB" => 1 << 30,
        _ => return None,
    };
    value.checked_mul(multiplier)
}

/// A resource whose alarm blocks publishers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resource {
    Memory,
    Disk,
}

impl Resource {
    fn bit(self) -> u8 {
        match self {
            Resource::Memory => 1,
            Resource::Disk => 2,
        }
    }
}

/// The alarms raised on the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AlarmSet(u8);

impl AlarmSet {
    pub(crate) const NONE: AlarmSet = AlarmSet(0);

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub(crate) fn contains(self, resource: Resource) -> bool {
        self.0 & resource.bit() != 0
    }

    pub(crate) fn with(self, resource: Resource, raised: bool) -> AlarmSet {
        if raised {
            AlarmSet(self.0 | resource.bit())
        } else {
            AlarmSet(self.0 & !resource.bit())
        }
    }

    /// The reason `connection.blocked` carries, in RabbitMQ's words
    /// (`rabbit_reader`'s "low on memory" / "low on disk"). With both alarms
    /// raised, memory is named, as it is usually the one to act on first.
    pub(crate) fn reason(self) -> &'static str {
        if self.contains(Resource::Memory) {
            "low on memory"
        } else if self.contains(Resource::Disk) {
            "low on disk"
        } else {
            ""
        }
    }
}

/// What the shards share about resources: one memory-use slot per shard,
/// each written only by its shard, and the raised alarms, written only by
/// the deciding shard. Read and written on the alarm check, never per
/// message.
#[derive(Debug)]
pub(crate) struct AlarmBoard {
    queued_bytes: Box<[AtomicU64]>,
    raised: AtomicU8,
    /// The watermark less the baseline, once the deciding shard knows it:
    /// what the slots may add up to (`over_memory_budget`).
    memory_budget_bytes: AtomicU64,
    /// Per shard: its message store cannot write (a full disk, a file size
    /// limit, an I/O error) and holds a batch to write again. Raises the
    /// disk alarm, as a disk below its free limit does.
    store_failing: Box<[AtomicBool]>,
}

impl AlarmBoard {
    pub(crate) fn new(shard_count: usize) -> AlarmBoard {
        AlarmBoard {
            queued_bytes: (0..shard_count.max(1)).map(|_| AtomicU64::new(0)).collect(),
            raised: AtomicU8::new(0),
            memory_budget_bytes: AtomicU64::new(u64::MAX),
            store_failing: (0..shard_count.max(1))
                .map(|_| AtomicBool::new(false))
                .collect(),
        }
    }

    /// Shard `shard`'s store failed to write a batch (`failing`), or wrote
    /// it at last.
    pub(crate) fn set_store_failing(&self, shard: usize, failing: bool) {
        if let Some(slot) = self.store_failing.get(shard) {
            slot.store(failing, Ordering::Relaxed);
        }
    }

    /// True while some shard's store cannot write.
    pub(crate) fn store_failing(&self) -> bool {
        self.store_failing.iter().any(|s| s.load(Ordering::Relaxed))
    }

    pub(crate) fn set_memory_budget(&self, bytes: u64) {
        self.memory_budget_bytes.store(bytes, Ordering::Relaxed);
    }

    /// True if the shards' published figures add up to more than the
    /// memory budget. Every shard asks on its check, right after
    /// publishing its own figure, and blocks its publishers at once
    /// (`shard::alarms`): waiting for the deciding shard's next check, and
    /// then for its own, let a publisher on one shard flood a queue on
    /// another for two check intervals past the watermark.
    pub(crate) fn over_memory_budget(&self) -> bool {
        self.queued_bytes() > self.memory_budget_bytes.load(Ordering::Relaxed)
    }

    /// The bytes of client data a shard holds (see the module doc).
    pub(crate) fn publish_queued_bytes(&self, shard: usize, bytes: u64) {
        if let Some(slot) = self.queued_bytes.get(shard) {
            slot.store(bytes, Ordering::Relaxed);
        }
    }

    /// The sum of every shard's last published figure.
    pub(crate) fn queued_bytes(&self) -> u64 {
        self.queued_bytes
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn raised(&self) -> AlarmSet {
        AlarmSet(self.raised.load(Ordering::Acquire))
    }

    pub(crate) fn set_raised(&self, alarms: AlarmSet) {
        self.raised.store(alarms.0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn information_units_as_rabbitmq_reads_them() {
        assert_eq!(parse_information_unit("1000"), Some(1000));
        assert_eq!(parse_information_unit("50MB"), Some(50_000_000));
        assert_eq!(parse_information_unit("1GB"), Some(1_000_000_000));
        assert_eq!(parse_information_unit("2kB"), Some(2000));
        assert_eq!(parse_information_unit("1024MiB"), Some(1 << 30));
        assert_eq!(parse_information_unit("600M"), Some(600 << 20));
        assert_eq!(parse_information_unit("1GiB"), Some(1 << 30));
        assert_eq!(parse_information_unit("3k"), Some(3072));
        for bad in ["", "MB", "1.5GB", "-1", "10 MB", "10TB", "ten", "1GiBs"] {
            assert_eq!(parse_information_unit(bad), None, "{:?}", bad);
        }
        assert_eq!(parse_information_unit("99999999999999999999"), None);
        assert_eq!(parse_information_unit("99999999999G"), None);
    }

    #[test]
    fn memory_watermark_is_a_fraction_or_an_amount() {
        assert_eq!(
            "0.4".parse::<MemoryWatermark>(),
            Ok(MemoryWatermark::Relative(0.4))
        );
        assert_eq!(
            "512MiB".parse::<MemoryWatermark>(),
            Ok(MemoryWatermark::Absolute(512 << 20))
        );
        assert_eq!(
            "1GB".parse::<MemoryWatermark>(),
            Ok(MemoryWatermark::Absolute(1_000_000_000))
        );
        assert_eq!(
            "1048576".parse::<MemoryWatermark>(),
            Ok(MemoryWatermark::Absolute(1 << 20))
        );
        for bad in ["", "0", "0.0", "-0.4", "lots", "1.2.3", "NaN", "4XB"] {
            let e = bad.parse::<MemoryWatermark>().unwrap_err();
            assert!(e.contains("--vm-memory-high-watermark"), "{}", e);
        }
        assert_eq!(MemoryWatermark::Relative(0.5).bytes(1000), 500);
        assert_eq!(MemoryWatermark::Absolute(7).bytes(1000), 7);
    }

    #[test]
    fn disk_free_limit_is_an_amount_or_relative_to_ram() {
        assert_eq!(
            "50MB".parse::<DiskFreeLimit>(),
            Ok(DiskFreeLimit::Absolute(50_000_000))
        );
        assert_eq!(
            "mem_relative:1.5".parse::<DiskFreeLimit>(),
            Ok(DiskFreeLimit::MemRelative(1.5))
        );
        assert_eq!(DiskFreeLimit::MemRelative(2.0).bytes(100), 200);
        assert_eq!(DiskFreeLimit::default().bytes(1), 50_000_000);
        for bad in ["", "fifty", "mem_relative:", "mem_relative:-1", "1.5GB"] {
            let e = bad.parse::<DiskFreeLimit>().unwrap_err();
            assert!(e.contains("--disk-free-limit"), "{}", e);
        }
    }

    #[test]
    fn alarm_set_names_its_reason() {
        let none = AlarmSet::NONE;
        assert!(none.is_empty());
        let disk = none.with(Resource::Disk, true);
        assert_eq!(disk.reason(), "low on disk");
        let both = disk.with(Resource::Memory, true);
        assert_eq!(both.reason(), "low on memory");
        assert!(both.with(Resource::Memory, false).contains(Resource::Disk));
        assert!(both
            .with(Resource::Memory, false)
            .with(Resource::Disk, false)
            .is_empty());
    }

    #[test]
    fn board_sums_shards() {
        let board = AlarmBoard::new(3);
        board.publish_queued_bytes(0, 5);
        board.publish_queued_bytes(2, 7);
        board.publish_queued_bytes(9, 100);
        assert_eq!(board.queued_bytes(), 12);
        board.set_raised(AlarmSet::NONE.with(Resource::Disk, true));
        assert!(board.raised().contains(Resource::Disk));
    }
}

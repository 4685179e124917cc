//! The resource monitor: the deciding shard's half of `broker::alarms`. It
//! measures what the broker module may not (RAM, the process's resident
//! size, free disk space), decides whether the memory and disk alarms are raised, logs it
//! when they change, and writes the result to the `AlarmBoard` every shard
//! reads. Runs on that shard's alarm check, never on the message path.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use crate::config::Config;
use crate::model::alarms::{AlarmBoard, AlarmSet, Resource, DISK_CHECK_INTERVAL};

pub(crate) struct Monitor {
    board: Arc<AlarmBoard>,
    data_dir: PathBuf,
    memory_limit_bytes: u64,
    disk_free_limit_bytes: u64,
    /// The resident size when the shards had started: what the broker uses
    /// before it holds any message (see `broker::alarms`).
    baseline_bytes: Option<u64>,
    raised: AlarmSet,
    next_disk_check: Instant,
    disk_warned: bool,
    /// The data directory's disk has less free space than the limit, as
    /// last measured.
    disk_low: bool,
}

impl Monitor {
    /// Works the limits out and checks the disk once, so that a node that
    /// starts short of disk blocks its first publisher. Blocking I/O: called
    /// before the executors run.
    pub(crate) fn new(config: &Config, board: Arc<AlarmBoard>) -> Monitor {
        let total_memory_bytes = total_memory_bytes();
        let memory_limit_bytes = config.memory_high_watermark.bytes(total_memory_bytes);
        let disk_free_limit_bytes = config.disk_free_limit.bytes(total_memory_bytes);
        info!(
            limit_bytes = memory_limit_bytes,
            total_memory_bytes,
            setting = ?config.memory_high_watermark,
            "memory high watermark set"
        );
        info!(
            limit_bytes = disk_free_limit_bytes,
            setting = ?config.disk_free_limit,
            dir = %config.data_dir.display(),
            "disk free limit set"
        );
        let mut monitor = Monitor {
            board,
            data_dir: config.data_dir.clone(),
            memory_limit_bytes,
            disk_free_limit_bytes,
            baseline_bytes: None,
            raised: AlarmSet::NONE,
            next_disk_check: Instant::now(),
            disk_warned: false,
            disk_low: false,
        };
        monitor.check_disk(Instant::now());
        monitor.decide_disk();
        monitor.board.set_raised(monitor.raised);
        monitor
    }

    /// The memory high watermark and the disk free limit, in bytes.
    pub(crate) fn limits_bytes(&self) -> (u64, u64) {
        (self.memory_limit_bytes, self.disk_free_limit_bytes)
    }

    /// Adds the shards' published memory use to the baseline, polls the disk
    /// when due, and publishes the alarms.
    pub(crate) fn check(&mut self, now: Instant) {
        let baseline = match self.baseline_bytes {
            Some(baseline) => baseline,
            None => {
                let baseline = resident_bytes();
                self.baseline_bytes = Some(baseline);
                self.board
                    .set_memory_budget(self.memory_limit_bytes.saturating_sub(baseline));
                baseline
            }
        };
        let used_bytes = baseline + self.board.queued_bytes();
        let memory = used_bytes > self.memory_limit_bytes;
        if memory != self.raised.contains(Resource::Memory) {
            if memory {
                warn!(
                    resource = "memory",
                    used_bytes,
                    baseline_bytes = baseline,
                    limit_bytes = self.memory_limit_bytes,
                    "memory resource limit alarm set on node; publishers will be blocked until \
                     it clears"
                );
            } else {
                info!(
                    resource = "memory",
                    used_bytes,
                    baseline_bytes = baseline,
                    limit_bytes = self.memory_limit_bytes,
                    "memory resource limit alarm cleared on node"
                );
            }
            self.raised = self.raised.with(Resource::Memory, memory);
        }
        if now >= self.next_disk_check {
            self.check_disk(now);
        }
        self.decide_disk();
        self.board.set_raised(self.raised);
    }

    /// The disk alarm: free space below the limit, or a shard's store that
    /// cannot write (checked on every alarm check, as it is one load per
    /// shard).
    fn decide_disk(&mut self) {
        let store_failing = self.board.store_failing();
        let disk = self.disk_low || store_failing;
        if disk == self.raised.contains(Resource::Disk) {
            return;
        }
        let cause = if store_failing {
            "the message store cannot write"
        } else {
            "free space below the limit"
        };
        if disk {
            warn!(
                resource = "disk",
                cause,
                limit_bytes = self.disk_free_limit_bytes,
                "disk resource limit alarm set on node; publishers will be blocked until \
                 it clears"
            );
        } else {
            info!(
                resource = "disk",
                limit_bytes = self.disk_free_limit_bytes,
                "disk resource limit alarm cleared on node"
            );
        }
        self.raised = self.raised.with(Resource::Disk, disk);
    }

    fn check_disk(&mut self, now: Instant) {
        self.next_disk_check = now + DISK_CHECK_INTERVAL;
        let free_bytes = match disk_free_bytes(&self.data_dir) {
            Ok(free) => free,
            Err(e) => {
                // As RabbitMQ with an unknown free space: the alarm stays
                // as it was.
                if !self.disk_warned {
                    self.disk_warned = true;
                    warn!(dir = %self.data_dir.display(), error = %e, "cannot read free disk space");
                }
                return;
            }
        };
        let low = free_bytes < self.disk_free_limit_bytes;
        if low != self.disk_low {
            info!(
                free_bytes,
                limit_bytes = self.disk_free_limit_bytes,
                low,
                "free disk space crossed the limit"
            );
        }
        self.disk_low = low;
    }
}

/// RAM, or the cgroup's memory limit when it is lower (a container's
/// `--memory`): a watermark of 0.4 of the host's RAM would be above what
/// the kernel lets a container use.
fn total_memory_bytes() -> u64 {
    // SAFETY: sysinfo fills the struct it is given; all-zero is valid.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: sysinfo writes into the struct it is given, which outlives the call.
    let ram = if unsafe { libc::sysinfo(&mut info) } == 0 {
        info.totalram as u64 * info.mem_unit.max(1) as u64
    } else {
        0
    };
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    match cgroup {
        Some(limit) if ram == 0 || limit < ram => limit,
        _ => ram,
    }
}

/// The process's resident set size, from /proc/self/statm.
pub(crate) fn resident_bytes() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// Bytes available to the broker (not root's reserve) on `dir`'s filesystem,
/// as RabbitMQ's disk monitor reads them.
fn disk_free_bytes(dir: &Path) -> std::io::Result<u64> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes into the struct it is given; all-zero is valid.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `stat` outlives the call.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_give_plausible_figures() {
        assert!(total_memory_bytes() > 16 << 20);
        assert!(resident_bytes() > 0);
        assert!(disk_free_bytes(Path::new("/")).is_ok());
        assert!(disk_free_bytes(Path::new("/no/such/dir/at/all")).is_err());
    }

    #[test]
    fn alarms_follow_the_limits() {
        let dir = std::env::temp_dir();
        let config = Config {
            data_dir: dir,
            memory_high_watermark: crate::model::alarms::MemoryWatermark::Absolute(u64::MAX / 2),
            disk_free_limit: crate::model::alarms::DiskFreeLimit::Absolute(u64::MAX),
            ..Config::default()
        };
        let board = Arc::new(AlarmBoard::new(2));
        let mut monitor = Monitor::new(&config, board.clone());
        // No disk has u64::MAX bytes free: raised at once.
        assert!(board.raised().contains(Resource::Disk));
        assert!(!board.raised().contains(Resource::Memory));
        monitor.memory_limit_bytes = resident_bytes() + (64 << 20);
        board.publish_queued_bytes(1, 128 << 20);
        monitor.check(Instant::now());
        assert!(board.raised().contains(Resource::Memory));
        board.publish_queued_bytes(1, 0);
        monitor.check(Instant::now());
        assert!(!board.raised().contains(Resource::Memory));
    }
}

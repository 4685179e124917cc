//! The data directory as the broker holds it: created private to its
//! owner, and locked, so that a second broker started on the same
//! directory refuses to start instead of writing over the first one's
//! segment files and definitions.
//!
//! The lock is `flock(2)` on `<data-dir>/.lock`, taken before recovery and
//! held (the file stays open) until the process exits; the kernel lets it
//! go when the process dies, even by `kill -9`, so a stale file never
//! keeps a broker from starting. The file holds the holder's pid, for the
//! refusal's message. Files the broker creates are 0600 and directories
//! 0700 (the process umask is 077): messages and password hashes are no
//! other user's to read.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub(crate) const LOCK_FILE: &str = ".lock";

/// Permission bits no file or directory the broker creates has: group and
/// others get nothing.
const UMASK: libc::mode_t = 0o077;

/// Why the data directory cannot be used.
#[derive(Debug)]
pub enum DataDirError {
    /// Another process holds the lock; its pid, if the file names one.
    InUse {
        dir: PathBuf,
        pid: Option<u32>,
    },
    Io {
        dir: PathBuf,
        error: io::Error,
    },
}

impl fmt::Display for DataDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataDirError::InUse {
                dir,
                pid: Some(pid),
            } => write!(
                f,
                "the data directory {} is in use by another warren (pid {})",
                dir.display(),
                pid
            ),
            DataDirError::InUse { dir, pid: None } => write!(
                f,
                "the data directory {} is in use by another warren",
                dir.display()
            ),
            DataDirError::Io { dir, error } => {
                write!(
                    f,
                    "cannot use the data directory {}: {}",
                    dir.display(),
                    error
                )
            }
        }
    }
}

/// The held lock: dropping it (or exiting) lets the directory go.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

/// Makes everything the process creates from now on private to its owner.
pub(crate) fn restrict_new_files() {
    // SAFETY: umask(2) only changes this process's file creation mask.
    unsafe {
        libc::umask(UMASK);
    }
}

/// Creates the data directory (0700) if it is missing and takes its lock.
pub(crate) fn lock(dir: &Path) -> Result<DataDirLock, DataDirError> {
    let io_error = |error| DataDirError::Io {
        dir: dir.to_path_buf(),
        error,
    };
    fs::create_dir_all(dir).map_err(io_error)?;
    // No truncate on open: the file may be another broker's, whose pid we
    // want to read, not erase.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))
        .map_err(io_error)?;
    // SAFETY: flock(2) on a descriptor this function owns.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_error(error));
        }
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        return Err(DataDirError::InUse {
            dir: dir.to_path_buf(),
            pid: text.trim().parse().ok(),
        });
    }
    let written = (|| {
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_data()
    })();
    written.map_err(io_error)?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("warren-data-dir-{}-{}", name, std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_second_lock_names_the_holder_until_the_first_goes() {
        let dir = temp_dir("lock");
        let held = lock(&dir).expect("first lock");
        let text = fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        // flock locks belong to the open file, so a second open in the same
        // process is refused as another process would be.
        match lock(&dir) {
            Err(DataDirError::InUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(held);
        let again = lock(&dir).expect("lock after release");
        drop(again);
        fs::remove_dir_all(&dir).unwrap();
    }
}

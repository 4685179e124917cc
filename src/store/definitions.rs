//! `<data-dir>/definitions.json`: the durable definitions in RabbitMQ's
//! definitions format (see `metadata::definitions` for the contents).
//!
//! Every write replaces the whole file atomically, so that a crash at any
//! moment leaves either the old file or the new one, never a mix:
//!
//! ```text
//! 1. write definitions.json.tmp (same directory, so the rename below stays
//!    on one filesystem), fdatasync it
//! 2. rename definitions.json.tmp -> definitions.json (atomic on POSIX)
//! 3. fsync the directory, so the rename itself survives a power cut
//! ```
//!
//! A temp file found at start is what a crash between 1 and 2 left; it
//! is removed (the complete file beside it is the truth). The file is
//! created readable by its owner only (0600): it holds password hashes.
//!
//! At start the file is read and written with plain blocking calls: no
//! executor runs yet. While the broker runs, the metadata owner writes it
//! through [`DefinitionsFile`], whose steps are io_uring operations
//! (glommio's `BufferedFile`, `rename`, `Directory::sync`), so shard 0's
//! connections keep being served while the disk syncs.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use glommio::io::{Directory, OpenOptions};

use std::future::Future;

pub(crate) const FILE_NAME: &str = "definitions.json";
const TEMP_FILE_NAME: &str = "definitions.json.tmp";
/// Owner read and write only: the file holds password hashes.
const FILE_MODE: u32 = 0o600;

pub(crate) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

fn temp_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TEMP_FILE_NAME)
}

/// The file's text, or None if there is none (a fresh node). Removes a
/// temp file an interrupted write left behind. Blocking: for start-up.
pub(crate) fn read(data_dir: &Path) -> io::Result<Option<String>> {
    match std::fs::remove_file(temp_path(data_dir)) {
        Ok(()) => tracing::warn!(
            file = %temp_path(data_dir).display(),
            "removed a definitions file left half-written by an earlier run"
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match std::fs::read(path(data_dir)) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the file is not UTF-8")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces the file atomically with blocking calls. For start-up, before
/// any executor runs.
pub(crate) fn write_blocking(data_dir: &Path, contents: &str) -> io::Result<()> {
    let temp = temp_path(data_dir);
    let result = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&temp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_data()?;
        drop(file);
        std::fs::rename(&temp, path(data_dir))?;
        std::fs::File::open(data_dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Where the metadata owner makes durable definitions durable: the file in
/// the data directory ([`DefinitionsFile`]), or nothing in tests. The owner
/// (`broker::metadata`) takes a sink from below, so the store never names it.
pub(crate) trait DefinitionsSink {
    /// Replaces the stored definitions with `contents`, durably.
    fn store(&self, contents: String) -> impl Future<Output = io::Result<()>>;
}

/// Keeps nothing: for a broker without a data directory (tests).
impl DefinitionsSink for () {
    fn store(&self, _contents: String) -> impl Future<Output = io::Result<()>> {
        std::future::ready(Ok(()))
    }
}

/// The metadata owner's way to the file, on shard 0's executor.
pub(crate) struct DefinitionsFile {
    data_dir: PathBuf,
}

impl DefinitionsFile {
    pub(crate) fn new(data_dir: PathBuf) -> DefinitionsFile {
        DefinitionsFile { data_dir }
    }

    async fn write(&self, contents: String) -> io::Result<()> {
        let temp = temp_path(&self.data_dir);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .buffered_open(&temp)
            .await?;
        let bytes = contents.into_bytes();
        let mut at = 0;
        while at < bytes.len() {
            // A write may take less than it was given (see write(2)).
            let written = file.write_at(bytes[at..].to_vec(), at as u64).await?;
            if written == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the disk took no bytes",
                ));
            }
            at += written;
        }
        file.fdatasync().await?;
        file.close().await?;
        glommio::io::rename(&temp, path(&self.data_dir)).await?;
        let directory = Directory::open(&self.data_dir).await?;
        directory.sync().await?;
        directory.close().await?;
        Ok(())
    }
}

impl DefinitionsSink for DefinitionsFile {
    async fn store(&self, contents: String) -> io::Result<()> {
        let result = self.write(contents).await;
        if result.is_err() {
            let _ = glommio::io::remove(temp_path(&self.data_dir)).await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glommio's reactor needs locked memory (see `util::rlimit::raise_memlock`).
    fn executor() -> glommio::LocalExecutorBuilder {
        crate::util::rlimit::raise_memlock(4 << 20).expect("locked memory for io_uring");
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(1 << 20)
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("warren-store-{}-{}", name, std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn blocking_write_replaces_the_file_and_leaves_no_temp_file() {
        let dir = temp_dir("blocking");
        assert_eq!(read(&dir).unwrap(), None);
        write_blocking(&dir, "{\"a\": 1}\n").unwrap();
        write_blocking(&dir, "{\"b\": 2}\n").unwrap();
        assert_eq!(read(&dir).unwrap().as_deref(), Some("{\"b\": 2}\n"));
        assert_eq!(entries(&dir), [FILE_NAME]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(&dir)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, FILE_MODE, "{mode:o}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_temp_file_left_by_a_crash_is_removed_and_the_old_file_kept() {
        let dir = temp_dir("crash");
        write_blocking(&dir, "old\n").unwrap();
        std::fs::write(temp_path(&dir), "half a new fi").unwrap();
        assert_eq!(read(&dir).unwrap().as_deref(), Some("old\n"));
        assert_eq!(entries(&dir), [FILE_NAME]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_io_uring_write_replaces_the_file_and_leaves_no_temp_file() {
        let dir = temp_dir("uring");
        write_blocking(&dir, "old\n").unwrap();
        let sink = DefinitionsFile::new(dir.clone());
        let big = "x".repeat(300_000);
        let expected = big.clone();
        executor()
            .spawn(move || async move {
                sink.store("first\n".to_string()).await.unwrap();
                sink.store(big).await.unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(read(&dir).unwrap().as_deref(), Some(expected.as_str()));
        assert_eq!(entries(&dir), [FILE_NAME]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(&dir)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, FILE_MODE, "{mode:o}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = temp_dir("missing");
        let gone = dir.join("no-such-dir");
        assert!(write_blocking(&gone, "x").is_err());
        let sink = DefinitionsFile::new(gone.clone());
        let failed = executor()
            .spawn(move || async move { sink.store("x".to_string()).await.is_err() })
            .unwrap()
            .join()
            .unwrap();
        assert!(failed);
        assert!(!gone.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

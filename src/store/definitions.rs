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
//! is removed (by `definitions_log::load_on`) (the complete file beside it is the truth). The file is
//! created readable by its owner only (0600): it holds password hashes.
//!
//! The file is not rewritten for every durable change: the changes are
//! appended to `definitions.log` beside it (`store::definitions_log`), and
//! the file is rewritten only when the log has grown past it (compaction),
//! and at every start. So while the broker runs, the file alone may lag
//! behind the definitions by the changes in the log; what `--definitions`
//! imports and what an export reads is the file as of the last compaction,
//! and a stopped broker's file is brought up to date at its next start.
//!
//! At start the file is read and written with plain blocking calls: no
//! executor runs yet. While the broker runs, the metadata owner writes the
//! log and the file through [`DefinitionsFile`], whose steps are io_uring
//! operations (glommio's `BufferedFile`, `rename`, `Directory::sync`), so
//! shard 0's connections keep being served while the disk syncs.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use glommio::io::{BufferedFile, OpenOptions};

use std::future::Future;

use crate::store::definitions_log::{self, CompactionRule, DefChange};
use crate::store::segments;

pub(crate) const FILE_NAME: &str = "definitions.json";
const TEMP_FILE_NAME: &str = "definitions.json.tmp";
/// Owner read and write only: the file holds password hashes.
pub(crate) const FILE_MODE: u32 = 0o600;

pub(crate) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

pub(crate) fn temp_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TEMP_FILE_NAME)
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

/// Where the metadata owner makes durable definitions durable: the log and
/// the file in the data directory ([`DefinitionsFile`]), or nothing in
/// tests. The owner (`broker::metadata`) takes a sink from below, so the
/// store never names it.
pub(crate) trait DefinitionsSink {
    /// Makes `changes` durable: appended to the log, or, when the log has
    /// grown past the file (or an earlier write failed), by writing the
    /// whole file from `snapshot` (which holds every change made, these
    /// included) and emptying the log.
    fn store(
        &mut self,
        changes: &[DefChange],
        snapshot: impl FnOnce() -> String,
    ) -> impl Future<Output = io::Result<()>>;

    /// Writes the whole file from `snapshot` and empties the log: for
    /// changes the log does not record (vhosts other than "/", users and
    /// permissions).
    fn rewrite(
        &mut self,
        snapshot: impl FnOnce() -> String,
    ) -> impl Future<Output = io::Result<()>>;
}

/// Keeps nothing: for a broker without a data directory (tests).
impl DefinitionsSink for () {
    fn store(
        &mut self,
        _changes: &[DefChange],
        _snapshot: impl FnOnce() -> String,
    ) -> impl Future<Output = io::Result<()>> {
        std::future::ready(Ok(()))
    }

    fn rewrite(
        &mut self,
        _snapshot: impl FnOnce() -> String,
    ) -> impl Future<Output = io::Result<()>> {
        std::future::ready(Ok(()))
    }
}

/// Where the log stands after start: what the metadata owner's
/// [`DefinitionsFile`] carries on from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogStart {
    /// The generation of the empty log start-up left.
    pub(crate) generation: u64,
    /// The size of the file start-up wrote.
    pub(crate) file_bytes: u64,
}

/// The metadata owner's way to the log and the file, on shard 0's executor.
pub(crate) struct DefinitionsFile {
    data_dir: PathBuf,
    /// The log, opened at the first append.
    log: Option<BufferedFile>,
    /// The log file's size: zeros past the records, preallocated
    /// (`definitions_log::allocation_for`). Known once the log is open.
    allocated: u64,
    generation: u64,
    rule: CompactionRule,
    /// A write failed: what the log holds past its last synced record is
    /// unknown, so the next store compacts (which empties the log).
    broken: bool,
}

impl DefinitionsFile {
    pub(crate) fn new(data_dir: PathBuf, start: LogStart) -> DefinitionsFile {
        DefinitionsFile {
            data_dir,
            log: None,
            allocated: 0,
            generation: start.generation,
            rule: CompactionRule::after_compaction(start.file_bytes),
            broken: false,
        }
    }

    /// Steps 1 to 3 of the module doc.
    async fn write(&self, contents: String) -> io::Result<()> {
        let temp = temp_path(&self.data_dir);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .buffered_open(&temp)
            .await?;
        write_all_at(&file, contents.into_bytes(), 0).await?;
        file.fdatasync().await?;
        file.close().await?;
        glommio::io::rename(&temp, path(&self.data_dir)).await?;
        segments::sync_dir(&self.data_dir).await
    }

    /// `definitions_log::append_on` over io_uring: the records overwrite
    /// preallocated zeros, so the sync flushes their page alone; the few
    /// appends that need more room write the next allocation's zeros with
    /// them, under the same sync.
    async fn append(&mut self, mut records: Vec<u8>) -> io::Result<()> {
        let log = match self.log.take() {
            Some(log) => log,
            // Start-up created the log (and synced its name).
            None => {
                let log = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .mode(FILE_MODE)
                    .buffered_open(definitions_log::path(&self.data_dir))
                    .await?;
                self.allocated = log.file_size().await?;
                log
            }
        };
        let len = records.len() as u64;
        let at = self.rule.log_bytes;
        let allocation = definitions_log::with_allocation(&mut records, at, self.allocated);
        let result = async {
            write_log_at(&log, &records, at).await?;
            log.fdatasync().await
        }
        .await;
        self.log = Some(log);
        result?;
        self.rule.log_bytes += len;
        self.allocated = allocation;
        Ok(())
    }

    /// `definitions_log::compact_on` over io_uring: the file first, then
    /// the log emptied under a new generation.
    async fn compact(&mut self, contents: String) -> io::Result<()> {
        let file_bytes = contents.len() as u64;
        let result = self.write(contents).await;
        if result.is_err() {
            let _ = glommio::io::remove(temp_path(&self.data_dir)).await;
            return result;
        }
        if let Some(log) = self.log.take() {
            let _ = log.close().await;
        }
        self.generation = definitions_log::next_generation(Some(self.generation));
        let log = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .buffered_open(definitions_log::path(&self.data_dir))
            .await?;
        let empty = definitions_log::empty_log(self.generation);
        let allocated = empty.len() as u64;
        write_log_at(&log, &empty, 0).await?;
        log.fdatasync().await?;
        segments::sync_dir(&self.data_dir).await?;
        self.log = Some(log);
        self.allocated = allocated;
        self.rule = CompactionRule::after_compaction(file_bytes);
        Ok(())
    }
}

/// Writes `bytes` to the log at `at`, a page at most per write
/// (`definitions_log::pieces`: small folios, so a record makes the disk
/// write its page, not a larger folio).
async fn write_log_at(log: &BufferedFile, bytes: &[u8], at: u64) -> io::Result<()> {
    for (from, position, len) in definitions_log::pieces(at, bytes.len()) {
        write_all_at(log, bytes[from..from + len].to_vec(), position).await?;
    }
    Ok(())
}

/// Writes all of `bytes` at `at`: a write may take less than it was given
/// (see write(2)).
async fn write_all_at(file: &BufferedFile, bytes: Vec<u8>, at: u64) -> io::Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        let written = file
            .write_at(bytes[done..].to_vec(), at + done as u64)
            .await?;
        if written == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the disk took no bytes",
            ));
        }
        done += written;
    }
    Ok(())
}

impl DefinitionsSink for DefinitionsFile {
    async fn store(
        &mut self,
        changes: &[DefChange],
        snapshot: impl FnOnce() -> String,
    ) -> io::Result<()> {
        let mut records = Vec::new();
        definitions_log::encode(&mut records, self.generation, changes);
        let result = if self.broken || self.rule.compact_instead(records.len() as u64) {
            self.compact(snapshot()).await
        } else {
            self.append(records).await
        };
        self.broken = result.is_err();
        result
    }

    async fn rewrite(&mut self, snapshot: impl FnOnce() -> String) -> io::Result<()> {
        let result = self.compact(snapshot()).await;
        self.broken = result.is_err();
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

    /// The file's text as start-up reads it.
    fn read(dir: &Path) -> io::Result<Option<String>> {
        definitions_log::load_on(&crate::store::disk::StdDisk, dir).map(|stored| stored.file)
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

    fn queue(name: &str) -> DefChange {
        DefChange::QueueDeclared(crate::metadata::definitions::QueueDef {
            name: name.into(),
            durable: true,
            auto_delete: false,
            arguments: Default::default(),
        })
    }

    /// Appends go to the log and leave the file alone; once the log would
    /// outgrow the file, the file is replaced (no temp file left) and the
    /// log emptied under a new generation.
    #[test]
    fn the_io_uring_writes_append_then_compact() {
        use crate::store::definitions_log::{load_on, reset_blocking};
        use crate::store::disk::StdDisk;
        let dir = temp_dir("uring");
        write_blocking(&dir, "old\n").unwrap();
        reset_blocking(&dir, 5).unwrap();
        let start = LogStart {
            generation: 5,
            file_bytes: 4,
        };
        let many: Vec<DefChange> = (0..5000).map(|i| queue(&format!("q{i}"))).collect();
        let big = "x".repeat(300_000);
        let expected = big.clone();
        let dir2 = dir.clone();
        executor()
            .spawn(move || async move {
                // Not Send (it holds a glommio file): made on the executor.
                let mut sink = DefinitionsFile::new(dir2.clone(), start);
                sink.store(&[queue("a")], || unreachable!("no compaction yet"))
                    .await
                    .unwrap();
                sink.store(&[queue("b"), queue("c")], || unreachable!())
                    .await
                    .unwrap();
                let stored = load_on(&StdDisk, &dir2).unwrap();
                assert_eq!(stored.file.as_deref(), Some("old\n"));
                assert_eq!(stored.log.generation, Some(5));
                assert_eq!(stored.log.changes, [queue("a"), queue("b"), queue("c")]);
                // More than DEFINITIONS_LOG_MIN_BYTES of records.
                sink.store(&many, || big).await.unwrap();
                sink.store(&[queue("d")], || unreachable!()).await.unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
        let stored = load_on(&StdDisk, &dir).unwrap();
        assert_eq!(stored.file.as_deref(), Some(expected.as_str()));
        assert_eq!(stored.log.generation, Some(6));
        assert_eq!(stored.log.changes, [queue("d")]);
        assert_eq!(stored.log.torn_bytes, 0);
        assert_eq!(entries(&dir), [FILE_NAME, definitions_log::FILE_NAME]);
        use std::os::unix::fs::PermissionsExt;
        for file in [path(&dir), definitions_log::path(&dir)] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, FILE_MODE, "{mode:o}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = temp_dir("missing");
        let gone = dir.join("no-such-dir");
        assert!(write_blocking(&gone, "x").is_err());
        let start = LogStart {
            generation: 1,
            file_bytes: 0,
        };
        let gone2 = gone.clone();
        let failed = executor()
            .spawn(move || async move {
                let mut sink = DefinitionsFile::new(gone2, start);
                let append = sink.store(&[queue("a")], String::new).await.is_err();
                // After a failure the next store compacts; it fails too.
                let compact = sink.store(&[], || "x".to_string()).await.is_err();
                append && compact
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(failed);
        assert!(!gone.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! A shard's segment files under `messages/<generation>/shard-<n>/`, written
//! through io_uring: O_DIRECT (glommio `DmaFile`, aligned `DmaBuffer`s) where
//! the filesystem allows it, buffered writes otherwise. Each group commit is
//! one write per chunk and one fdatasync per file it touched. Paged
//! messages are read back through io_uring as well (`SegmentReader`),
//! neighbouring records in one read.
//!
//! O_DIRECT is refused by some filesystems (glommio #605); the first refusal
//! is logged and the shard falls back to buffered writes + fdatasync, which
//! are as durable, only slower and through the page cache. On tmpfs glommio
//! itself turns O_DIRECT off (tmpfs has no disk: nothing survives a reboot
//! there anyway); that is logged too.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use glommio::io::{BufferedFile, Directory, DmaFile, OpenOptions};
use tracing::{error, info, warn};

use crate::model::message::Message;
use crate::store::log::{Batch, Location};
use crate::store::record;

/// Paged records closer than this are read together, gap included.
const READ_GAP_MAX: u64 = 64 * 1024;
/// The most one read of paged records takes at once.
const READ_SPAN_MAX: u64 = 1 << 20;
/// Segment files the reader keeps open.
const READ_FILES_OPEN_MAX: usize = 8;

/// The file name of segment `number`: zero-padded so names sort like numbers.
pub(crate) fn file_name(number: u32) -> String {
    format!("{:010}.seg", number)
}

/// The segment number a file name stands for.
pub(crate) fn parse_file_name(name: &str) -> Option<u32> {
    name.strip_suffix(".seg")?.parse().ok()
}

enum SegmentFile {
    Direct(DmaFile),
    Buffered(BufferedFile),
}

struct OpenSegment {
    number: u32,
    file: SegmentFile,
    /// Written since its last fdatasync by a batch that must be synced.
    unsynced: bool,
}

pub(crate) struct SegmentFiles {
    dir: PathBuf,
    open: Vec<OpenSegment>,
    /// None until the first file is opened; then whether O_DIRECT works.
    direct: Option<bool>,
    /// The newest segment whose file this run created: a batch written
    /// again after a failure opens such a file again without truncating it.
    created_up_to: u32,
    /// For tests only (`config::SYNC_DELAY_TEST_ENV`): every synced batch
    /// takes this much longer, as on a slow disk.
    sync_delay: Option<std::time::Duration>,
}

impl SegmentFiles {
    /// The shard's segment directory, created at start (`recovery`).
    pub(crate) fn new(dir: PathBuf) -> SegmentFiles {
        if is_tmpfs(&dir) {
            info!(
                dir = %dir.display(),
                "the data directory is on tmpfs: segment writes are buffered (no O_DIRECT there)"
            );
        }
        SegmentFiles {
            dir,
            open: Vec::new(),
            direct: None,
            created_up_to: 0,
            sync_delay: None,
        }
    }

    /// Makes every synced batch take `delay` longer (tests of a slow disk).
    pub(crate) fn with_sync_delay(mut self, delay: Option<std::time::Duration>) -> SegmentFiles {
        self.sync_delay = delay;
        self
    }

    /// Files written with buffered writes only, as after O_DIRECT was
    /// refused (tests reach that path without such a filesystem).
    #[cfg(test)]
    fn buffered(dir: PathBuf) -> SegmentFiles {
        SegmentFiles {
            dir,
            open: Vec::new(),
            direct: Some(false),
            created_up_to: 0,
            sync_delay: None,
        }
    }

    async fn open_segment(&mut self, number: u32) -> io::Result<usize> {
        if let Some(at) = self.open.iter().position(|s| s.number == number) {
            return Ok(at);
        }
        // Segments only grow: files older than this one are complete.
        let older: Vec<OpenSegment> = {
            let (keep, old) = std::mem::take(&mut self.open)
                .into_iter()
                .partition(|s| s.number > number);
            self.open = keep;
            old
        };
        for segment in older {
            // Its records of a batch being written are synced before the
            // file is let go: the batch's sync below covers open files only.
            if segment.unsynced {
                sync(&segment.file).await?;
            }
            close(segment.file).await;
        }
        let path = self.dir.join(file_name(number));
        let mut options = OpenOptions::new();
        // A file this run created holds records already (a batch written
        // again after a failure): it is opened as it is.
        let fresh = number > self.created_up_to;
        options.write(true).create(true).truncate(fresh);
        let file = if self.direct != Some(false) {
            match options.dma_open(&path).await {
                Ok(file) => {
                    self.direct = Some(true);
                    SegmentFile::Direct(file)
                }
                Err(e) => {
                    // EINVAL is how a filesystem says it has no O_DIRECT;
                    // anything else (permissions, a full disk) is an error.
                    // (glommio keeps the error's kind, not always its errno.)
                    let e: io::Error = e.into();
                    if e.kind() != io::ErrorKind::InvalidInput {
                        return Err(e);
                    }
                    warn!(
                        dir = %self.dir.display(),
                        error = %e,
                        "O_DIRECT refused: segment writes fall back to buffered writes + fdatasync"
                    );
                    self.direct = Some(false);
                    SegmentFile::Buffered(options.buffered_open(&path).await?)
                }
            }
        } else {
            SegmentFile::Buffered(options.buffered_open(&path).await?)
        };
        // The new file's name must survive a crash as surely as its data.
        sync_dir(&self.dir).await?;
        self.created_up_to = self.created_up_to.max(number);
        self.open.push(OpenSegment {
            number,
            file,
            unsynced: false,
        });
        Ok(self.open.len() - 1)
    }

    /// Writes a batch's chunks and, unless the batch holds only transient
    /// messages paged out (`Batch::sync`), syncs every file they went to.
    /// Returns the bytes written.
    ///
    /// Each chunk goes to the place the store gave it when its records
    /// were appended (`log::Chunk::at`; every chunk is padded alike), so a
    /// batch whose write failed (a full disk, EFBIG, EIO) can be written
    /// again, whole, with the same result: the store task holds it and
    /// its confirms and tries again until the disk takes it.
    pub(crate) async fn write<T>(&mut self, batch: &mut Batch<T>) -> io::Result<u64> {
        let mut written = 0u64;
        for chunk in &mut batch.chunks {
            let at = self.open_segment(chunk.segment).await?;
            let segment = &mut self.open[at];
            if let SegmentFile::Direct(file) = &segment.file {
                if !record::CHUNK_ALIGNMENT.is_multiple_of(file.alignment() as usize) {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("a disk block of {} bytes", file.alignment()),
                    ));
                }
            }
            if !chunk.sealed {
                record::seal_chunk(&mut chunk.bytes, record::CHUNK_ALIGNMENT);
                chunk.sealed = true;
            }
            segment.unsynced |= batch.sync;
            write_all(&segment.file, &chunk.bytes, chunk.at).await?;
            written += chunk.bytes.len() as u64;
        }
        if batch.sync {
            for segment in &mut self.open {
                if segment.unsynced {
                    sync(&segment.file).await?;
                    segment.unsynced = false;
                }
            }
            if let Some(delay) = self.sync_delay {
                glommio::timer::sleep(delay).await;
            }
        }
        Ok(written)
    }

    /// Deletes these segments' files, then syncs the directory.
    pub(crate) async fn delete(&mut self, numbers: &[u32]) -> io::Result<()> {
        for &number in numbers {
            if let Some(at) = self.open.iter().position(|s| s.number == number) {
                let segment = self.open.remove(at);
                close(segment.file).await;
            }
            match glommio::io::remove(self.dir.join(file_name(number))).await {
                Ok(()) => {}
                Err(e) if matches!(&e, glommio::GlommioError::IoError(io) if io.kind() == io::ErrorKind::NotFound) =>
                    {}
                Err(e) => return Err(e.into()),
            }
        }
        sync_dir(&self.dir).await
    }

    #[cfg(test)]
    pub(crate) async fn close_all(&mut self) {
        for segment in std::mem::take(&mut self.open) {
            close(segment.file).await;
        }
    }
}

/// Reads paged messages back from the shard's segment files (the pager's
/// side of the store): neighbouring records in one read, through io_uring
/// like the writes.
pub(crate) struct SegmentReader {
    dir: PathBuf,
    open: Vec<(u32, SegmentFile)>,
    direct: bool,
}

impl SegmentReader {
    pub(crate) fn new(dir: PathBuf) -> SegmentReader {
        SegmentReader {
            dir,
            open: Vec::new(),
            direct: true,
        }
    }

    async fn file(&mut self, number: u32) -> io::Result<&SegmentFile> {
        if let Some(at) = self.open.iter().position(|(n, _)| *n == number) {
            return Ok(&self.open[at].1);
        }
        if self.open.len() >= READ_FILES_OPEN_MAX {
            let (_, file) = self.open.remove(0);
            close(file).await;
        }
        let path = self.dir.join(file_name(number));
        let file = if self.direct {
            match DmaFile::open(&path).await {
                Ok(file) => SegmentFile::Direct(file),
                Err(e) => {
                    let e: io::Error = e.into();
                    if e.kind() != io::ErrorKind::InvalidInput {
                        return Err(e);
                    }
                    self.direct = false;
                    SegmentFile::Buffered(BufferedFile::open(&path).await?)
                }
            }
        } else {
            SegmentFile::Buffered(BufferedFile::open(&path).await?)
        };
        self.open.push((number, file));
        Ok(&self.open[self.open.len() - 1].1)
    }

    /// Closes the files of segments that `keep` says are gone, so that
    /// their disk space is given back.
    pub(crate) async fn close_unless(&mut self, keep: impl Fn(u32) -> bool) {
        let (kept, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|(n, _)| keep(*n));
        self.open = kept;
        for (_, file) in gone {
            close(file).await;
        }
    }

    async fn read(&mut self, segment: u32, offset: u64, len: usize) -> io::Result<Bytes> {
        let file = self.file(segment).await?;
        let bytes = match file {
            SegmentFile::Direct(file) => Bytes::copy_from_slice(&file.read_at(offset, len).await?),
            SegmentFile::Buffered(file) => {
                Bytes::copy_from_slice(&file.read_at(offset, len).await?)
            }
        };
        if bytes.len() < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("segment {segment} ends before a paged message"),
            ));
        }
        Ok(bytes)
    }

    /// Reads the publish records of queue `queue_id` at these places, in
    /// order, and gives back their messages. A record that is not the one
    /// expected (a bug) ends the list there, logged; a failed read is an
    /// error, and nothing is lost (the queue pages them again).
    pub(crate) async fn read_publishes(
        &mut self,
        queue_id: u64,
        entries: &[(u64, Location)],
    ) -> io::Result<Vec<Message>> {
        let mut messages = Vec::with_capacity(entries.len());
        let mut at = 0;
        while at < entries.len() {
            // A span: the next records of one segment, close together.
            let first = entries[at].1;
            let mut end = at + 1;
            let mut span_end = first.offset + u64::from(first.len);
            while let Some(&(_, next)) = entries.get(end) {
                let next_end = next.offset + u64::from(next.len);
                if next.segment != first.segment
                    || next.offset < span_end
                    || next.offset - span_end > READ_GAP_MAX
                    || next_end - first.offset > READ_SPAN_MAX
                {
                    break;
                }
                span_end = next_end;
                end += 1;
            }
            let span = self
                .read(
                    first.segment,
                    first.offset,
                    (span_end - first.offset) as usize,
                )
                .await?;
            // A span with other records in it (another queue's, interleaved
            // in the log) is not kept alive by the bodies sliced from it:
            // they get their own copies, so that memory holds what the
            // queue's window counts, not whole reads.
            let used: u64 = entries[at..end].iter().map(|(_, l)| u64::from(l.len)).sum();
            let copy_bodies = used < span_end - first.offset;
            for &(seq, location) in &entries[at..end] {
                let from = (location.offset - first.offset) as usize;
                let record = span.slice(from..from + location.len as usize);
                match record::decode_publish(record) {
                    Ok(mut publish) if publish.queue_id == queue_id && publish.seq == seq => {
                        if copy_bodies {
                            publish.message.own_body();
                        }
                        messages.push(publish.message)
                    }
                    found => {
                        error!(
                            segment = location.segment,
                            offset = location.offset,
                            queue_id,
                            seq,
                            found = ?found.map(|p| (p.queue_id, p.seq)),
                            "a paged message is not where its index says: it is dropped"
                        );
                        return Ok(messages);
                    }
                }
            }
            at = end;
        }
        Ok(messages)
    }
}

async fn sync(file: &SegmentFile) -> io::Result<()> {
    match file {
        SegmentFile::Direct(file) => file.fdatasync().await?,
        SegmentFile::Buffered(file) => file.fdatasync().await?,
    }
    Ok(())
}

async fn close(file: SegmentFile) {
    let _ = match file {
        SegmentFile::Direct(file) => file.close().await,
        SegmentFile::Buffered(file) => file.close().await,
    };
}

async fn write_all(file: &SegmentFile, bytes: &[u8], at: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < bytes.len() {
        let n = match file {
            SegmentFile::Direct(file) => {
                // A short O_DIRECT write still ends on a block boundary.
                let mut buffer = file.alloc_dma_buffer(bytes.len() - done);
                buffer.as_bytes_mut().copy_from_slice(&bytes[done..]);
                file.write_at(buffer, at + done as u64).await?
            }
            SegmentFile::Buffered(file) => {
                file.write_at(bytes[done..].to_vec(), at + done as u64)
                    .await?
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the disk took no bytes",
            ));
        }
        done += n;
    }
    Ok(())
}

/// Makes a directory's entries durable (files created, renamed or removed
/// in it): the segment files' and the definitions file's.
pub(crate) async fn sync_dir(dir: &Path) -> io::Result<()> {
    let directory = Directory::open(dir).await?;
    directory.sync().await?;
    directory.close().await?;
    Ok(())
}

fn is_tmpfs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string and a zeroed statfs for the kernel to fill.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(path.as_ptr(), &mut stat) == 0 && stat.f_type == libc::TMPFS_MAGIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::message::Message;
    use crate::store::log::MessageStore;
    use crate::store::record::{PublishHead, StoredPublish};
    use std::collections::BTreeMap;

    fn executor() -> glommio::LocalExecutorBuilder {
        crate::util::rlimit::raise_memlock(4 << 20).expect("locked memory for io_uring");
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(1 << 20)
    }

    fn message(n: u64) -> Message {
        Message::new(
            "",
            "q",
            &Default::default(),
            bytes::Bytes::from(format!("body-{n}-{}", "y".repeat(n as usize % 700))),
            None,
        )
    }

    /// Writes 300 publishes (acking every third) in several batches and
    /// segments, then reads the files back as recovery does. `twice`: every
    /// batch is written a second time, as after a write error (the store
    /// task writes a refused batch again, whole).
    fn write_and_read_back(dir: PathBuf, direct: bool, twice: bool) {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let written_dir = dir.clone();
        let reader_dir = dir.clone();
        executor()
            .spawn(move || async move {
                let mut store = MessageStore::<u64>::new(16 * 1024, &[]);
                let mut files = if direct {
                    SegmentFiles::new(written_dir)
                } else {
                    SegmentFiles::buffered(written_dir)
                };
                let mut kept = Vec::new();
                for n in 0..300u64 {
                    let m = message(n);
                    let at = store.append_publish_at(&PublishHead {
                        queue_id: 1,
                        seq: n,
                        delivered: false,
                        transient: false,
                        level: 0,
                        expires_at_epoch_ms: None,
                        vhost: "/",
                        queue_name: "q",
                        message: &m,
                    });
                    if n % 3 == 0 {
                        store.append_removal(1, n, at.segment);
                    } else {
                        kept.push((n, at));
                    }
                    if n % 40 == 39 {
                        let mut batch = store.take_batch().unwrap();
                        files.write(&mut batch).await.unwrap();
                        if twice {
                            files.write(&mut batch).await.unwrap();
                        }
                        store.batch_written(batch.chunks.into_iter().map(|c| c.bytes), 0);
                    }
                }
                let mut batch = store.take_batch().unwrap();
                assert!(!store.is_written(kept.last().unwrap().1));
                files.write(&mut batch).await.unwrap();
                store.batch_written(batch.chunks.into_iter().map(|c| c.bytes), 0);
                assert!(store.is_written(kept.last().unwrap().1));
                files.close_all().await;
                // Every kept message reads back from where it was appended
                // (as a queue that paged it out reads it).
                let mut reader = SegmentReader::new(reader_dir);
                if !direct {
                    reader.direct = false;
                }
                let messages = reader.read_publishes(1, &kept).await.unwrap();
                assert_eq!(messages.len(), kept.len());
                for ((n, _), m) in kept.iter().zip(&messages) {
                    assert_eq!(m.body, message(*n).body);
                }
                // One at a time too (no neighbours to read along).
                let one = reader.read_publishes(1, &kept[5..6]).await.unwrap();
                assert_eq!(one[0].body, message(kept[5].0).body);
                // A wrong index entry is refused, not misread.
                let wrong = reader
                    .read_publishes(1, &[(kept[5].0 + 1, kept[5].1)])
                    .await
                    .unwrap();
                assert!(wrong.is_empty());
            })
            .unwrap()
            .join()
            .unwrap();
        let mut names: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                Some((parse_file_name(&e.file_name().to_string_lossy())?, e.path()))
            })
            .collect();
        names.sort();
        assert!(names.len() > 3, "{names:?}");
        let mut live: BTreeMap<(u64, u64), StoredPublish> = BTreeMap::new();
        for (_, path) in &names {
            let bytes = bytes::Bytes::from(std::fs::read(path).unwrap());
            assert_eq!(bytes.len() % record::BLOCK, 0);
            crate::store::recovery::replay_segment(path, &bytes, &mut live);
        }
        let expected: Vec<u64> = (0..300).filter(|n| n % 3 != 0).collect();
        let seqs: Vec<u64> = live.keys().map(|&(_, seq)| seq).collect();
        assert_eq!(seqs, expected);
        for ((_, seq), stored) in &live {
            assert_eq!(stored.message.body, message(*seq).body);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn batches_written_to_disk_read_back_exactly() {
        write_and_read_back(
            std::env::temp_dir().join(format!("warren-segments-{}", std::process::id())),
            true,
            false,
        );
    }

    /// A batch written again (after a write error) leaves the same files.
    #[test]
    fn a_batch_written_again_reads_back_exactly() {
        write_and_read_back(
            std::env::temp_dir().join(format!("warren-segments-again-{}", std::process::id())),
            true,
            true,
        );
    }

    /// The fallback when O_DIRECT is refused: buffered writes + fdatasync.
    #[test]
    fn batches_written_with_buffered_writes_read_back_exactly() {
        write_and_read_back(
            std::env::temp_dir().join(format!("warren-segments-buffered-{}", std::process::id())),
            false,
            false,
        );
    }

    /// tmpfs has no O_DIRECT: the writes are buffered, and still correct.
    #[test]
    fn batches_written_to_tmpfs_read_back_exactly() {
        let shm = Path::new("/dev/shm");
        if !is_tmpfs(shm) {
            eprintln!("no tmpfs at /dev/shm: nothing to check here");
            return;
        }
        write_and_read_back(
            shm.join(format!("warren-segments-{}", std::process::id())),
            true,
            false,
        );
    }
}

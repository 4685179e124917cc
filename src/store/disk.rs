//! The store's narrow way to the disk: a [`Disk`] is a directory tree of
//! files that can be created, written at an offset, read at an offset,
//! synced, renamed, removed and listed, and nothing more (in the spirit of
//! redb's `StorageBackend`). Recovery (`recovery`) does all of its I/O
//! through it, and so do the tests of the log's write and reclaim rules.
//!
//! - [`StdDisk`]: the real one, blocking `std::fs` calls, used at start
//!   before any executor runs.
//! - [`MemDisk`] (tests only): files in memory that keep the bytes written
//!   apart from the bytes made durable, and directory entries apart from the
//!   entries made durable. [`MemDisk::crash_image`] is the disk after a
//!   power cut: the durable names, each file's durable bytes plus a prefix
//!   (chosen by the caller) of what was written after the last sync.
//!
//! # Where the line is drawn
//!
//! The running shard's writes do not go through this trait: they are
//! io_uring operations on glommio DMA files (O_DIRECT, aligned buffers,
//! falling back to buffered files where O_DIRECT is refused) in
//! `segments::SegmentFiles`, awaited by the shard's store task. What crosses
//! from the log to that writer is a `log::Batch`: sealed chunk buffers,
//! each for one segment, in order, to be appended, then one sync per file
//! touched, then the confirms; and reclaim hands it segment numbers to
//! remove, then one directory sync. [`append_batch`] and
//! [`remove_segments`] are those same two steps over any `Disk`, so the
//! tests exercise the log's rules (what is written, when it is synced, what
//! may be deleted) against the crash-simulating disk; `SegmentFiles` is
//! the same sequence over io_uring, checked against real files by its own
//! tests. Making `SegmentFiles` generic over an asynchronous version of
//! this trait would put a boxed or generic future on every batch write of
//! the DMA path for no gain in what the tests can show.

#[cfg(test)]
use crate::store::log::Batch;
#[cfg(test)]
use crate::store::{record, segments};
#[cfg(test)]
use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// A directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) is_dir: bool,
}

/// The file operations the store's synchronous parts need.
pub(crate) trait Disk {
    /// An open file, for writing.
    type File;

    /// Creates a file (truncating one that exists), for writing.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Writes all of `bytes` at `offset`.
    fn write_at(&self, file: &mut Self::File, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Makes what was written to `file` durable (fdatasync).
    fn sync(&self, file: &mut Self::File) -> io::Result<()>;
    /// The length of the file at `path`.
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many.
    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// The entries of a directory, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<Entry>>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to` (atomic, as rename(2)).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes the names created, renamed or removed in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Makes what was written to the existing file at `path` durable.
    fn sync_file(&self, path: &Path) -> io::Result<()>;

    /// The whole file at `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let len = self.len(path)? as usize;
        let mut bytes = vec![0u8; len];
        let mut at = 0;
        while at < len {
            let n = self.read_at(path, at as u64, &mut bytes[at..])?;
            if n == 0 {
                bytes.truncate(at);
                break;
            }
            at += n;
        }
        Ok(bytes)
    }
}

/// The real disk, through blocking `std::fs` calls (start-up only).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StdDisk;

impl Disk for StdDisk {
    type File = std::fs::File;

    fn create(&self, path: &Path) -> io::Result<std::fs::File> {
        std::fs::File::create(path)
    }

    fn write_at(&self, file: &mut std::fs::File, offset: u64, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        file.write_all_at(bytes, offset)
    }

    fn sync(&self, file: &mut std::fs::File) -> io::Result<()> {
        file.sync_data()
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        std::fs::File::open(path)?.read_at(buf, offset)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            entries.push(Entry {
                name: entry.file_name().to_string_lossy().into_owned(),
                is_dir: entry.file_type()?.is_dir(),
            });
        }
        Ok(entries)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(dir)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .sync_data()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

/// Writes a batch's chunks to the shard's segment files in `dir`, as
/// `segments::SegmentFiles::write` does over io_uring: each chunk sealed
/// and padded to `alignment`, appended to its segment (created, and its
/// name synced, on first use), then every file touched synced once.
/// `ends` is each open segment's length. Returns the bytes written.
#[cfg(test)]
pub(crate) fn append_batch<D: Disk, T>(
    disk: &D,
    dir: &Path,
    files: &mut BTreeMap<u32, (D::File, u64)>,
    batch: &mut Batch<T>,
    alignment: usize,
) -> io::Result<u64> {
    let mut written = 0;
    let mut touched: Vec<u32> = Vec::new();
    for chunk in &mut batch.chunks {
        let (file, end) = match files.entry(chunk.segment) {
            std::collections::btree_map::Entry::Occupied(open) => open.into_mut(),
            std::collections::btree_map::Entry::Vacant(new) => {
                let file = disk.create(&dir.join(segments::file_name(chunk.segment)))?;
                disk.sync_dir(dir)?;
                new.insert((file, 0))
            }
        };
        record::seal_chunk(&mut chunk.bytes, alignment.max(record::BLOCK));
        disk.write_at(file, *end, &chunk.bytes)?;
        *end += chunk.bytes.len() as u64;
        written += chunk.bytes.len() as u64;
        if !touched.contains(&chunk.segment) {
            touched.push(chunk.segment);
        }
    }
    for segment in touched {
        if let Some((file, _)) = files.get_mut(&segment) {
            disk.sync(file)?;
        }
    }
    Ok(written)
}

/// Deletes reclaimed segments, then syncs the directory, as
/// `segments::SegmentFiles::delete` does.
#[cfg(test)]
pub(crate) fn remove_segments<D: Disk>(
    disk: &D,
    dir: &Path,
    files: &mut BTreeMap<u32, (D::File, u64)>,
    numbers: &[u32],
) -> io::Result<()> {
    for &number in numbers {
        files.remove(&number);
        match disk.remove_file(&dir.join(segments::file_name(number))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    disk.sync_dir(dir)
}

#[cfg(test)]
pub(crate) use mem::MemDisk;

#[cfg(test)]
mod mem {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    #[derive(Clone, Debug, Default)]
    struct Inode {
        /// What reads see.
        written: Vec<u8>,
        /// What survives a crash for certain.
        durable: Vec<u8>,
    }

    #[derive(Clone, Debug, Default)]
    struct State {
        inodes: Vec<Inode>,
        /// Live names: files (to their inode) and directories.
        files: BTreeMap<PathBuf, usize>,
        dirs: BTreeSet<PathBuf>,
        /// Names as of each directory's last sync.
        durable_files: BTreeMap<PathBuf, usize>,
        durable_dirs: BTreeSet<PathBuf>,
    }

    /// A disk in memory that can crash (see the module doc).
    #[derive(Debug, Default)]
    pub(crate) struct MemDisk {
        state: RefCell<State>,
    }

    /// A file of a `MemDisk`: its inode.
    #[derive(Debug)]
    pub(crate) struct MemFile(usize);

    fn not_found(path: &Path) -> io::Error {
        io::Error::new(io::ErrorKind::NotFound, path.display().to_string())
    }

    impl MemDisk {
        pub(crate) fn new() -> MemDisk {
            MemDisk::default()
        }

        /// Bytes written to files and not yet synced, by path (what a
        /// crash may tear).
        pub(crate) fn unsynced(&self) -> BTreeMap<PathBuf, usize> {
            let state = self.state.borrow();
            state
                .durable_files
                .iter()
                .filter_map(|(path, &inode)| {
                    let i = &state.inodes[inode];
                    let extra = i.written.len().saturating_sub(i.durable.len());
                    (extra > 0).then(|| (path.clone(), extra))
                })
                .collect()
        }

        /// The disk after a power cut: the names durable at the last
        /// directory syncs, each file's durable bytes, and of the bytes
        /// written after them (when the file only grew since) the first
        /// `keep(path, unsynced_len)` ones: a torn write.
        pub(crate) fn crash_image(&self, keep: impl FnMut(&Path, usize) -> usize) -> MemDisk {
            self.crash_image_with(false, keep)
        }

        /// Like [`MemDisk::crash_image`], for files also written over in
        /// place (a preallocated log): of the bytes written since the last
        /// sync, from the first that differs from the durable ones, the
        /// first `keep(path, len)` reached the disk, over the durable
        /// bytes.
        pub(crate) fn crash_image_overwritten(
            &self,
            keep: impl FnMut(&Path, usize) -> usize,
        ) -> MemDisk {
            self.crash_image_with(true, keep)
        }

        fn crash_image_with(
            &self,
            overwrites: bool,
            mut keep: impl FnMut(&Path, usize) -> usize,
        ) -> MemDisk {
            let state = self.state.borrow();
            let mut image = State::default();
            for dir in &state.durable_dirs {
                image.dirs.insert(dir.clone());
                image.durable_dirs.insert(dir.clone());
            }
            for (path, &inode) in &state.durable_files {
                // A name in a directory whose own name was never made
                // durable is lost with the directory.
                let reachable = path
                    .ancestors()
                    .skip(1)
                    .filter(|a| !a.as_os_str().is_empty())
                    .all(|a| state.durable_dirs.contains(a));
                if !reachable {
                    continue;
                }
                let old = &state.inodes[inode];
                let mut bytes = old.durable.clone();
                let common = old
                    .written
                    .iter()
                    .zip(&old.durable)
                    .take_while(|(w, d)| w == d)
                    .count();
                if overwrites && common < old.durable.len() && old.written.len() > common {
                    let tail = &old.written[common..];
                    let kept = keep(path, tail.len()).min(tail.len());
                    let end = common + kept;
                    let durable_len = bytes.len();
                    let over = end.min(durable_len);
                    bytes[common..over].copy_from_slice(&old.written[common..over]);
                    if end > durable_len {
                        bytes.extend_from_slice(&old.written[durable_len..end]);
                    }
                } else if old.written.len() > bytes.len() && old.written.starts_with(&bytes) {
                    let tail = &old.written[bytes.len()..];
                    let kept = keep(path, tail.len()).min(tail.len());
                    bytes.extend_from_slice(&tail[..kept]);
                }
                image.inodes.push(Inode {
                    written: bytes.clone(),
                    durable: bytes,
                });
                let at = image.inodes.len() - 1;
                image.files.insert(path.clone(), at);
                image.durable_files.insert(path.clone(), at);
            }
            MemDisk {
                state: RefCell::new(image),
            }
        }
    }

    impl State {
        fn parent_exists(&self, path: &Path) -> bool {
            path.parent()
                .is_none_or(|p| p.as_os_str().is_empty() || self.dirs.contains(p))
        }
    }

    impl Disk for MemDisk {
        type File = MemFile;

        fn create(&self, path: &Path) -> io::Result<MemFile> {
            let mut state = self.state.borrow_mut();
            if !state.parent_exists(path) {
                return Err(not_found(path));
            }
            if let Some(&inode) = state.files.get(path) {
                state.inodes[inode].written.clear();
                return Ok(MemFile(inode));
            }
            state.inodes.push(Inode::default());
            let inode = state.inodes.len() - 1;
            state.files.insert(path.to_path_buf(), inode);
            Ok(MemFile(inode))
        }

        fn write_at(&self, file: &mut MemFile, offset: u64, bytes: &[u8]) -> io::Result<()> {
            let mut state = self.state.borrow_mut();
            let written = &mut state.inodes[file.0].written;
            let end = offset as usize + bytes.len();
            if written.len() < end {
                written.resize(end, 0);
            }
            written[offset as usize..end].copy_from_slice(bytes);
            Ok(())
        }

        fn sync(&self, file: &mut MemFile) -> io::Result<()> {
            let mut state = self.state.borrow_mut();
            let inode = &mut state.inodes[file.0];
            inode.durable = inode.written.clone();
            Ok(())
        }

        fn len(&self, path: &Path) -> io::Result<u64> {
            let state = self.state.borrow();
            let inode = *state.files.get(path).ok_or_else(|| not_found(path))?;
            Ok(state.inodes[inode].written.len() as u64)
        }

        fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            let state = self.state.borrow();
            let inode = *state.files.get(path).ok_or_else(|| not_found(path))?;
            let bytes = &state.inodes[inode].written;
            let from = (offset as usize).min(bytes.len());
            let n = buf.len().min(bytes.len() - from);
            buf[..n].copy_from_slice(&bytes[from..from + n]);
            Ok(n)
        }

        fn list(&self, dir: &Path) -> io::Result<Vec<Entry>> {
            let state = self.state.borrow();
            if !state.dirs.contains(dir) {
                return Err(not_found(dir));
            }
            let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
            let mut entries = Vec::new();
            for path in state.files.keys() {
                if path.parent() == Some(dir) {
                    entries.extend(name(path).map(|name| Entry {
                        name,
                        is_dir: false,
                    }));
                }
            }
            for path in &state.dirs {
                if path.parent() == Some(dir) {
                    entries.extend(name(path).map(|name| Entry { name, is_dir: true }));
                }
            }
            Ok(entries)
        }

        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            let mut state = self.state.borrow_mut();
            for ancestor in dir.ancestors() {
                if !ancestor.as_os_str().is_empty() {
                    state.dirs.insert(ancestor.to_path_buf());
                }
            }
            // The root of a test's tree is there before the test starts.
            if let Some(root) = dir.ancestors().filter(|a| !a.as_os_str().is_empty()).last() {
                state.durable_dirs.insert(root.to_path_buf());
            }
            Ok(())
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            let mut state = self.state.borrow_mut();
            let inode = state.files.remove(from).ok_or_else(|| not_found(from))?;
            state.files.insert(to.to_path_buf(), inode);
            Ok(())
        }

        fn remove_file(&self, path: &Path) -> io::Result<()> {
            let mut state = self.state.borrow_mut();
            state.files.remove(path).ok_or_else(|| not_found(path))?;
            Ok(())
        }

        fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
            let mut state = self.state.borrow_mut();
            if !state.dirs.contains(dir) {
                return Err(not_found(dir));
            }
            state.files.retain(|p, _| !p.starts_with(dir));
            state.dirs.retain(|p| !p.starts_with(dir));
            Ok(())
        }

        fn sync_file(&self, path: &Path) -> io::Result<()> {
            let mut state = self.state.borrow_mut();
            let inode = *state.files.get(path).ok_or_else(|| not_found(path))?;
            let inode = &mut state.inodes[inode];
            inode.durable = inode.written.clone();
            Ok(())
        }

        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            let mut state = self.state.borrow_mut();
            if !state.dirs.contains(dir) {
                return Err(not_found(dir));
            }
            let State {
                files,
                dirs,
                durable_files,
                durable_dirs,
                ..
            } = &mut *state;
            durable_files.retain(|p, _| p.parent() != Some(dir));
            for (path, &inode) in files.iter() {
                if path.parent() == Some(dir) {
                    durable_files.insert(path.clone(), inode);
                }
            }
            // A removed subdirectory goes with everything under it.
            let gone: Vec<PathBuf> = durable_dirs
                .iter()
                .filter(|p| p.parent() == Some(dir) && !dirs.contains(*p))
                .cloned()
                .collect();
            for path in gone {
                durable_dirs.retain(|p| !p.starts_with(&path));
                durable_files.retain(|p, _| !p.starts_with(&path));
            }
            for path in dirs.iter() {
                if path.parent() == Some(dir) {
                    durable_dirs.insert(path.clone());
                }
            }
            Ok(())
        }
    }
}

//! The clean-stop index: what the start-up scan (`store::scan`) would find
//! in a shard's log, written by the shard at the end of a clean stop, so
//! that the next start reads it instead of every segment byte.
//!
//! A clean stop ends with everything the shard's store holds written and
//! synced. The shard then hands this module what its queues and delayed
//! exchanges hold ([`QueueRecords`], [`HeldDelayed`]); the store's own
//! accounting checks that they cover every live record of the log (the
//! live count of each segment), the records kept in memory are located in
//! their segments (read back, as the scan would, but only the segments
//! that hold them), and the index is written beside the segments
//! (temporary file, fsync, rename, directory fsync). Anything that does
//! not add up writes no index: the next start scans, as after a crash.
//!
//! At the next start the scan takes a shard's index instead of reading its
//! segments when the index is whole (magic, version, every frame's
//! checksum, the end record) and names exactly the segment files there
//! are, each with the length it has. Whatever it finds, the scan removes
//! the index (and syncs the directory) before the store appends a record:
//! a later crash can never meet an index older than the log.
//!
//! # Format
//!
//! ```text
//! file:    magic "WRNINDEX" | version u32 | frame*
//! frame:   payload_len u32 | crc32c(payload) u32 | payload (≤ 1 MiB)
//! payload: records, none split across frames, in this order:
//!   SHARD    1 | queue_id_max u64 | next_segment u32
//!   SEGMENT  2 | number u32 | oldest_ref u32 | len u64        (ascending)
//!   QUEUE    3 | id u64 | seq_max u64 | entries u64 | vhost | name
//!            followed by `entries` ENTRY, ascending seq:
//!   ENTRY      seq u64 | expires_at_epoch_ms u64 | offset u64 |
//!              segment u32 | len u32 | body_bytes u32 | level u8 |
//!              flags u8 | 0 u16                              (40 bytes)
//!   DELAYED  4 | id u64 | segment u32 | offset u64 | len u32 |
//!              due_epoch_ms u64 | vhost | exchange
//!   END      5 | queues u32 | entries u64 | delayed u32
//! strings: len u16 | bytes.  Integers little-endian.
//! ```
//!
//! Both sides hold one frame at a time: a 5 million message index (about
//! 200 MB) is written and read through a 1 MiB buffer, and the reader
//! checks every count against the bytes left before it allocates.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use crate::store::disk::Disk;
use crate::store::log::MessageStore;
use crate::store::record::{RecordHead, DELAYED_QUEUE_ID};
use crate::store::scan::{self, DelayedScan, IndexEntry, QueueScan, ShardScan};
use crate::store::segments;
use crate::util::crc32c;

/// The index's name in its shard directory.
pub(crate) const FILE_NAME: &str = "clean-stop.index";
/// Where it is written before the rename.
pub(crate) const TEMP_NAME: &str = "clean-stop.index.tmp";
const MAGIC: &[u8; 8] = b"WRNINDEX";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 12;
const FRAME_HEADER_LEN: usize = 8;
/// A frame's payload at most: the buffer each side holds.
const FRAME_BYTES_MAX: usize = 1 << 20;
const ENTRY_LEN: usize = 40;
/// A string's bytes at most (AMQP short strings are 255).
const NAME_BYTES_MAX: usize = 1024;

const TAG_SHARD: u8 = 1;
const TAG_SEGMENT: u8 = 2;
const TAG_QUEUE: u8 = 3;
const TAG_DELAYED: u8 = 4;
const TAG_END: u8 = 5;

/// Writes an index frame by frame into the temporary file; [`finish`]
/// puts it in place.
///
/// [`finish`]: IndexWriter::finish
pub(crate) struct IndexWriter<'d, D: Disk> {
    disk: &'d D,
    dir: PathBuf,
    file: D::File,
    /// Bytes in the file so far.
    at: u64,
    /// The open frame: header room, then its payload.
    frame: Vec<u8>,
    queues: u32,
    entries: u64,
    delayed: u32,
    /// Entries the last queue record announced and not yet written, and
    /// the last one's seq: the writer refuses to write a wrong index.
    owed: u64,
    last_seq: Option<u64>,
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why.to_string())
}

fn put_str(out: &mut Vec<u8>, s: &str) -> io::Result<()> {
    if s.len() > NAME_BYTES_MAX {
        return Err(invalid("a name too long for the index"));
    }
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

impl<'d, D: Disk> IndexWriter<'d, D> {
    /// Starts the temporary file in `dir`, with the shard's figures.
    pub(crate) fn create(
        disk: &'d D,
        dir: &Path,
        queue_id_max: u64,
        next_segment: u32,
    ) -> io::Result<IndexWriter<'d, D>> {
        let mut file = disk.create(&dir.join(TEMP_NAME))?;
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        disk.write_at(&mut file, 0, &header)?;
        let mut frame = Vec::with_capacity(FRAME_BYTES_MAX + FRAME_HEADER_LEN);
        frame.resize(FRAME_HEADER_LEN, 0);
        let mut writer = IndexWriter {
            disk,
            dir: dir.to_path_buf(),
            file,
            at: HEADER_LEN,
            frame,
            queues: 0,
            entries: 0,
            delayed: 0,
            owed: 0,
            last_seq: None,
        };
        let out = writer.room(13)?;
        out.push(TAG_SHARD);
        out.extend_from_slice(&queue_id_max.to_le_bytes());
        out.extend_from_slice(&next_segment.to_le_bytes());
        Ok(writer)
    }

    /// The open frame, with room for `n` more bytes (the full one written
    /// first).
    fn room(&mut self, n: usize) -> io::Result<&mut Vec<u8>> {
        if self.frame.len() - FRAME_HEADER_LEN + n > FRAME_BYTES_MAX {
            self.flush()?;
        }
        Ok(&mut self.frame)
    }

    fn flush(&mut self) -> io::Result<()> {
        let len = self.frame.len() - FRAME_HEADER_LEN;
        if len == 0 {
            return Ok(());
        }
        let crc = crc32c::checksum(&self.frame[FRAME_HEADER_LEN..]);
        self.frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
        self.frame[4..8].copy_from_slice(&crc.to_le_bytes());
        self.disk.write_at(&mut self.file, self.at, &self.frame)?;
        self.at += self.frame.len() as u64;
        self.frame.truncate(FRAME_HEADER_LEN);
        Ok(())
    }

    /// A segment file, in ascending order, before any queue.
    pub(crate) fn segment(&mut self, number: u32, oldest_ref: u32, len: u64) -> io::Result<()> {
        let out = self.room(17)?;
        out.push(TAG_SEGMENT);
        out.extend_from_slice(&number.to_le_bytes());
        out.extend_from_slice(&oldest_ref.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        Ok(())
    }

    /// A queue, whose `entries` entries follow ([`IndexWriter::entry`]).
    pub(crate) fn queue(
        &mut self,
        id: u64,
        vhost: &str,
        name: &str,
        seq_max: u64,
        entries: u64,
    ) -> io::Result<()> {
        if self.owed != 0 {
            return Err(invalid("a queue's entries are missing"));
        }
        let out = self.room(29 + vhost.len() + name.len())?;
        out.push(TAG_QUEUE);
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&seq_max.to_le_bytes());
        out.extend_from_slice(&entries.to_le_bytes());
        put_str(out, vhost)?;
        put_str(out, name)?;
        self.queues += 1;
        self.owed = entries;
        self.last_seq = None;
        Ok(())
    }

    /// The next entry of the last queue.
    pub(crate) fn entry(&mut self, e: &IndexEntry) -> io::Result<()> {
        if self.owed == 0 || self.last_seq.is_some_and(|last| last >= e.seq) || !e.is_live() {
            return Err(invalid("an index entry out of order"));
        }
        self.owed -= 1;
        self.last_seq = Some(e.seq);
        self.entries += 1;
        let out = self.room(ENTRY_LEN)?;
        out.extend_from_slice(&e.seq.to_le_bytes());
        out.extend_from_slice(&e.expires_at_epoch_ms.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.segment.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
        out.extend_from_slice(&e.body_bytes.to_le_bytes());
        out.push(e.level);
        out.push(e.flags);
        out.extend_from_slice(&[0, 0]);
        Ok(())
    }

    /// A message a delayed exchange holds.
    pub(crate) fn delayed(&mut self, id: u64, d: &DelayedScan) -> io::Result<()> {
        if self.owed != 0 {
            return Err(invalid("a queue's entries are missing"));
        }
        let out = self.room(37 + d.vhost.len() + d.exchange.len())?;
        out.push(TAG_DELAYED);
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&d.segment.to_le_bytes());
        out.extend_from_slice(&d.offset.to_le_bytes());
        out.extend_from_slice(&d.len.to_le_bytes());
        out.extend_from_slice(&d.due_epoch_ms.to_le_bytes());
        put_str(out, &d.vhost)?;
        put_str(out, &d.exchange)?;
        self.delayed += 1;
        Ok(())
    }

    /// Ends the index and puts it in place: synced, renamed, the
    /// directory synced. Returns its size in bytes.
    pub(crate) fn finish(mut self) -> io::Result<u64> {
        if self.owed != 0 {
            return Err(invalid("a queue's entries are missing"));
        }
        let (queues, entries, delayed) = (self.queues, self.entries, self.delayed);
        let out = self.room(17)?;
        out.push(TAG_END);
        out.extend_from_slice(&queues.to_le_bytes());
        out.extend_from_slice(&entries.to_le_bytes());
        out.extend_from_slice(&delayed.to_le_bytes());
        self.flush()?;
        self.disk.sync(&mut self.file)?;
        drop(self.file);
        self.disk
            .rename(&self.dir.join(TEMP_NAME), &self.dir.join(FILE_NAME))?;
        self.disk.sync_dir(&self.dir)?;
        Ok(self.at)
    }
}

/// Writes the index of what `found` holds (tests: an index equal to a scan).
#[cfg(test)]
pub(crate) fn write_scan<D: Disk>(
    disk: &D,
    found: &ShardScan,
    files: &BTreeMap<u32, u64>,
    queue_id_max: u64,
) -> io::Result<u64> {
    let next = files.keys().last().map_or(1, |n| n + 1);
    let mut w = IndexWriter::create(disk, &found.dir, queue_id_max, next)?;
    for (&number, &len) in files {
        let oldest = found.segments.get(&number).copied().unwrap_or(number);
        w.segment(number, oldest, len)?;
    }
    let mut ids: Vec<&u64> = found.queues.keys().collect();
    ids.sort();
    for id in ids {
        let q = &found.queues[id];
        let live = q.blocks.iter().flatten().filter(|e| e.is_live());
        w.queue(
            *id,
            &q.vhost,
            &q.name,
            q.seq_max,
            live.clone().count() as u64,
        )?;
        for e in live {
            w.entry(e)?;
        }
    }
    for (&id, d) in &found.delayed {
        w.delayed(id, d)?;
    }
    w.finish()
}

/// Why an index was not used (logged; the scan reads the segments).
pub(crate) type Refused = String;

/// Reads frames back, one at a time, each checked before its records are.
struct FrameReader<'d, D: Disk> {
    disk: &'d D,
    path: PathBuf,
    file_len: u64,
    /// Where the next frame starts.
    at: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl<D: Disk> FrameReader<'_, D> {
    fn read_exact(&self, offset: u64, out: &mut [u8]) -> Result<(), Refused> {
        let mut done = 0;
        while done < out.len() {
            let n = self
                .disk
                .read_at(&self.path, offset + done as u64, &mut out[done..])
                .map_err(|e| format!("cannot read the index: {e}"))?;
            if n == 0 {
                return Err("truncated".into());
            }
            done += n;
        }
        Ok(())
    }

    /// Bytes left in the file, the current frame's included.
    fn left(&self) -> u64 {
        (self.file_len - self.at) + (self.buf.len() - self.pos) as u64
    }

    /// The next `n` bytes of a record.
    fn take(&mut self, n: usize) -> Result<&[u8], Refused> {
        if self.pos == self.buf.len() {
            if self.file_len - self.at < FRAME_HEADER_LEN as u64 {
                return Err("truncated: the end record is missing".into());
            }
            let mut head = [0u8; FRAME_HEADER_LEN];
            self.read_exact(self.at, &mut head)?;
            let len = u32::from_le_bytes(head[..4].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_le_bytes(head[4..].try_into().unwrap_or_default());
            if len == 0 || len > FRAME_BYTES_MAX {
                return Err(format!("a frame of {len} bytes"));
            }
            let start = self.at + FRAME_HEADER_LEN as u64;
            if self.file_len - start < len as u64 {
                return Err("truncated: a frame runs past the end of the file".into());
            }
            self.buf.resize(len, 0);
            let mut buf = std::mem::take(&mut self.buf);
            let read = self.read_exact(start, &mut buf);
            self.buf = buf;
            read?;
            if crc32c::checksum(&self.buf) != crc {
                return Err(format!(
                    "a frame's checksum does not match (at byte {})",
                    self.at
                ));
            }
            self.at = start + len as u64;
            self.pos = 0;
        }
        if self.buf.len() - self.pos < n {
            return Err("a record split across frames".into());
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Refused> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Refused> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Refused> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Refused> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self) -> Result<String, Refused> {
        let len = self.u16()? as usize;
        if len > NAME_BYTES_MAX {
            return Err(format!("a name of {len} bytes"));
        }
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// What an index gave: the shard's log as the scan would have found it.
#[derive(Debug)]
pub(crate) struct Indexed {
    pub(crate) shard: ShardScan,
    pub(crate) queue_id_max: u64,
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
}

/// Reads the index in `dir`, whose segment files are `files` (number to
/// length): the shard's scan, or why the index cannot stand for it.
pub(crate) fn read<D: Disk>(
    disk: &D,
    dir: &Path,
    files: &BTreeMap<u32, u64>,
) -> Result<Indexed, Refused> {
    let path = dir.join(FILE_NAME);
    let file_len = disk
        .len(&path)
        .map_err(|e| format!("cannot read the index: {e}"))?;
    let mut r = FrameReader {
        disk,
        path,
        file_len,
        at: HEADER_LEN,
        buf: Vec::new(),
        pos: 0,
    };
    if file_len < HEADER_LEN {
        return Err("truncated: no header".into());
    }
    let mut header = [0u8; HEADER_LEN as usize];
    r.read_exact(0, &mut header)?;
    if &header[..8] != MAGIC {
        return Err("not an index (bad magic)".into());
    }
    let version = le_u32(&header[8..]);
    if version != VERSION {
        return Err(format!(
            "index version {version}, this broker reads {VERSION}"
        ));
    }
    if r.u8()? != TAG_SHARD {
        return Err("the shard record is missing".into());
    }
    let queue_id_max = r.u64()?;
    let _next_segment = r.u32()?;
    let mut shard = ShardScan {
        dir: dir.to_path_buf(),
        ..ShardScan::default()
    };
    let mut listed: BTreeMap<u32, u64> = BTreeMap::new();
    let (mut entries_total, mut queues_total, mut delayed_total) = (0u64, 0u32, 0u32);
    loop {
        match r.u8()? {
            TAG_SEGMENT => {
                let number = r.u32()?;
                let oldest_ref = r.u32()?;
                let len = r.u64()?;
                if listed.keys().last().is_some_and(|&last| last >= number) {
                    return Err("segments out of order".into());
                }
                match files.get(&number) {
                    None => return Err(format!("segment {number} is missing")),
                    Some(&on_disk) if on_disk != len => {
                        return Err(format!(
                            "segment {number} is {on_disk} bytes, the index says {len}"
                        ))
                    }
                    Some(_) => {}
                }
                listed.insert(number, len);
                shard.segments.insert(number, oldest_ref.min(number));
            }
            TAG_QUEUE => {
                let id = r.u64()?;
                let seq_max = r.u64()?;
                let count = r.u64()?;
                let vhost = r.string()?;
                let name = r.string()?;
                if count > r.left() / ENTRY_LEN as u64 {
                    return Err(format!("a queue of {count} entries in a shorter file"));
                }
                if id == DELAYED_QUEUE_ID || shard.queues.contains_key(&id) {
                    return Err(format!("queue id {id} twice"));
                }
                let mut queue = QueueScan::named(vhost, name);
                queue.seq_max = seq_max;
                let mut left = count;
                let mut last: Option<u64> = None;
                while left > 0 {
                    let b = r.take(ENTRY_LEN)?;
                    let e = IndexEntry {
                        seq: le_u64(&b[0..]),
                        expires_at_epoch_ms: le_u64(&b[8..]),
                        offset: le_u64(&b[16..]),
                        segment: le_u32(&b[24..]),
                        len: le_u32(&b[28..]),
                        body_bytes: le_u32(&b[32..]),
                        level: b[36],
                        flags: b[37],
                    };
                    if last.is_some_and(|l| l >= e.seq) || e.seq > seq_max {
                        return Err(format!("queue {id}: entries out of order"));
                    }
                    let fits = listed
                        .get(&e.segment)
                        .is_some_and(|&len| e.offset.saturating_add(u64::from(e.len)) <= len);
                    if e.len == 0 || !fits {
                        return Err(format!("queue {id}: an entry outside its segment"));
                    }
                    last = Some(e.seq);
                    queue.push_in_order(e, left);
                    left -= 1;
                }
                entries_total += count;
                queues_total += 1;
                shard.queues.insert(id, queue);
            }
            TAG_DELAYED => {
                let id = r.u64()?;
                let segment = r.u32()?;
                let offset = r.u64()?;
                let len = r.u32()?;
                let due_epoch_ms = r.u64()?;
                let vhost = r.string()?;
                let exchange = r.string()?;
                let fits = listed
                    .get(&segment)
                    .is_some_and(|&l| offset.saturating_add(u64::from(len)) <= l);
                if len == 0 || !fits {
                    return Err("a delayed message outside its segment".into());
                }
                shard.delayed.insert(
                    id,
                    DelayedScan {
                        segment,
                        offset,
                        len,
                        vhost,
                        exchange,
                        due_epoch_ms,
                    },
                );
                delayed_total += 1;
            }
            TAG_END => {
                let queues = r.u32()?;
                let entries = r.u64()?;
                let delayed = r.u32()?;
                if (queues, entries, delayed) != (queues_total, entries_total, delayed_total) {
                    return Err("the end record's counts do not match".into());
                }
                if r.left() != 0 {
                    return Err("bytes after the end record".into());
                }
                if let Some((&extra, _)) = files.iter().find(|(n, _)| !listed.contains_key(n)) {
                    return Err(format!("segment {extra} is not in the index"));
                }
                return Ok(Indexed {
                    shard,
                    queue_id_max,
                    messages: entries_total + u64::from(delayed_total),
                    bytes: file_len,
                });
            }
            tag => return Err(format!("an unknown record ({tag})")),
        }
    }
}

/// The segment files in `dir`, number to length.
pub(crate) fn segment_files<D: Disk>(disk: &D, dir: &Path) -> io::Result<BTreeMap<u32, u64>> {
    let mut files = BTreeMap::new();
    for e in disk.list(dir)? {
        if e.is_dir {
            continue;
        }
        if let Some(number) = segments::parse_file_name(&e.name) {
            files.insert(number, disk.len(&dir.join(&e.name))?);
        }
    }
    Ok(files)
}

/// A stored message a queue holds at the clean stop.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeldRecord {
    pub(crate) seq: u64,
    pub(crate) segment: u32,
    /// Offset and length of its record, when the queue knows them (paged
    /// messages); found in the segment otherwise.
    pub(crate) place: Option<(u64, u32)>,
    pub(crate) body_bytes: u64,
    pub(crate) expires_at_epoch_ms: Option<u64>,
    pub(crate) level: u8,
    pub(crate) delivered: bool,
    /// A persistent message of a durable queue (a restart brings it back);
    /// otherwise a transient one paged to the store, void at restart.
    pub(crate) persistent: bool,
}

/// A queue's stored messages at the clean stop: those it holds in memory
/// (any order), and its paged ones, a run per priority level in sequence
/// order.
pub(crate) struct QueueRecords<P> {
    pub(crate) id: u64,
    pub(crate) vhost: String,
    pub(crate) name: String,
    pub(crate) durable: bool,
    pub(crate) next_seq: u64,
    pub(crate) in_memory: Vec<HeldRecord>,
    pub(crate) paged: Vec<P>,
}

/// A message a delayed exchange holds in the store: its id and segment.
pub(crate) type HeldDelayed = (u64, u32);

/// What a clean stop wrote.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) queues: u32,
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
}

/// Writes the shard's clean-stop index in `dir` (see the module doc), once
/// its store is idle: everything appended is written and synced. An error
/// says why none was written (a stale temporary file may stay; the next
/// start removes it).
pub(crate) fn write_clean_stop<D: Disk, T, P>(
    disk: &D,
    dir: &Path,
    store: &MessageStore<T>,
    mut queues: Vec<QueueRecords<P>>,
    mut delayed: Vec<HeldDelayed>,
) -> Result<Written, String>
where
    P: Iterator<Item = HeldRecord> + Clone,
{
    let files = segment_files(disk, dir).map_err(|e| format!("cannot list the segments: {e}"))?;
    // Every live record of the log is one the queues or the delayed
    // exchanges hold: each segment's live count is what they hold in it.
    let mut held: BTreeMap<u32, u64> = BTreeMap::new();
    for q in &queues {
        for r in q
            .in_memory
            .iter()
            .copied()
            .chain(q.paged.iter().cloned().flatten())
        {
            *held.entry(r.segment).or_default() += 1;
        }
    }
    for &(_, segment) in &delayed {
        *held.entry(segment).or_default() += 1;
    }
    let mut oldest: BTreeMap<u32, u32> = BTreeMap::new();
    for (number, live, oldest_ref, kept) in store.segment_states() {
        let holds = held.remove(&number).unwrap_or(0);
        let expected = if kept { live } else { 0 };
        if holds != expected {
            return Err(format!(
                "segment {number} has {expected} live records, the queues hold {holds}"
            ));
        }
        if !files.contains_key(&number) && live > 0 {
            return Err(format!(
                "segment {number} holds live records and has no file"
            ));
        }
        oldest.insert(number, oldest_ref);
    }
    if let Some((number, _)) = held.iter().next() {
        return Err(format!(
            "records held in segment {number}, which the store does not know"
        ));
    }
    if let Some(number) = files.keys().find(|n| !oldest.contains_key(n)) {
        return Err(format!("segment file {number} the store does not know"));
    }
    // The records held in memory are found in their segments.
    let mut wanted: BTreeMap<u32, HashMap<(u64, u64), usize>> = BTreeMap::new();
    let mut in_memory: Vec<(u64, usize)> = Vec::new();
    for (at_queue, q) in queues.iter_mut().enumerate() {
        q.in_memory.retain(|r| r.persistent && q.durable);
        q.in_memory.sort_unstable_by_key(|r| r.seq);
        for (at, r) in q.in_memory.iter().enumerate() {
            let key = (q.id, r.seq);
            wanted
                .entry(r.segment)
                .or_default()
                .insert(key, in_memory.len());
            in_memory.push((at_queue as u64, at));
        }
    }
    let mut delayed_found: HashMap<u64, DelayedScan> = HashMap::new();
    for &(id, segment) in &delayed {
        wanted
            .entry(segment)
            .or_default()
            .insert((DELAYED_QUEUE_ID, id), usize::MAX);
    }
    let mut buffer = Vec::new();
    let mut found = 0usize;
    for (&segment, keys) in &wanted {
        let path = dir.join(segments::file_name(segment));
        let len = scan::read_into(disk, &path, &mut buffer)
            .map_err(|e| format!("cannot read segment {segment}: {e}"))?;
        scan::walk(&path, &buffer[..len], |offset, len, head| {
            let RecordHead::Publish {
                queue_id,
                seq,
                transient: false,
                expires_at_epoch_ms,
                level,
                vhost,
                queue_name,
                body_bytes,
                ..
            } = head
            else {
                return;
            };
            let Some(&slot) = keys.get(&(queue_id, seq)) else {
                return;
            };
            if queue_id == DELAYED_QUEUE_ID {
                let old = delayed_found.insert(
                    seq,
                    DelayedScan {
                        segment,
                        offset,
                        len,
                        vhost: String::from_utf8_lossy(vhost).into_owned(),
                        exchange: String::from_utf8_lossy(queue_name).into_owned(),
                        due_epoch_ms: expires_at_epoch_ms.unwrap_or(0),
                    },
                );
                found += usize::from(old.is_none());
                return;
            }
            let (q, at) = in_memory[slot];
            let r = &mut queues[q as usize].in_memory[at];
            found += usize::from(r.place.is_none());
            r.place = Some((offset, len));
            r.expires_at_epoch_ms = expires_at_epoch_ms;
            r.level = level;
            r.body_bytes = body_bytes;
        });
    }
    if found != in_memory.len() + delayed.len() {
        return Err(format!(
            "{} of the records held in memory are not in their segments",
            in_memory.len() + delayed.len() - found
        ));
    }
    let next_segment = files
        .keys()
        .last()
        .copied()
        .max(oldest.keys().last().copied())
        .map_or(1, |n| n + 1);
    let fail = |e: io::Error| format!("cannot write the index: {e}");
    let mut w = IndexWriter::create(disk, dir, store.queue_id_max, next_segment).map_err(fail)?;
    for (&number, &len) in &files {
        w.segment(number, oldest[&number], len).map_err(fail)?;
    }
    queues.sort_unstable_by_key(|q| q.id);
    let mut messages = 0;
    let mut queue_count = 0;
    for q in &queues {
        if !q.durable {
            continue;
        }
        let paged_count: usize = q
            .paged
            .iter()
            .map(|p| p.clone().filter(|r| r.persistent).count())
            .sum();
        let count = (q.in_memory.len() + paged_count) as u64;
        if count == 0 {
            continue;
        }
        w.queue(q.id, &q.vhost, &q.name, q.next_seq.saturating_sub(1), count)
            .map_err(fail)?;
        queue_count += 1;
        messages += count;
        // A merge of the runs, each in sequence order.
        let mut runs: Vec<std::iter::Peekable<_>> = q
            .paged
            .iter()
            .map(|p| p.clone().filter(|r| r.persistent).peekable())
            .collect();
        let mut memory = q.in_memory.iter().copied().peekable();
        loop {
            let mut best: Option<(u64, usize)> = memory.peek().map(|r| (r.seq, usize::MAX));
            for (at, run) in runs.iter_mut().enumerate() {
                if let Some(r) = run.peek() {
                    if best.is_none_or(|(seq, _)| r.seq < seq) {
                        best = Some((r.seq, at));
                    }
                }
            }
            let next = match best {
                None => break,
                Some((_, usize::MAX)) => memory.next(),
                Some((_, at)) => runs[at].next(),
            };
            let Some(r) = next else { break };
            let Some((offset, len)) = r.place else {
                return Err("a record without its place".into());
            };
            let entry = IndexEntry {
                seq: r.seq,
                expires_at_epoch_ms: r.expires_at_epoch_ms.unwrap_or(scan::NEVER),
                offset,
                segment: r.segment,
                len,
                body_bytes: u32::try_from(r.body_bytes).unwrap_or(u32::MAX),
                level: r.level,
                flags: if r.delivered { scan::FLAG_DELIVERED } else { 0 },
            };
            w.entry(&entry).map_err(fail)?;
        }
    }
    delayed.sort_unstable();
    for (id, _) in &delayed {
        if let Some(d) = delayed_found.get(id) {
            w.delayed(*id, d).map_err(fail)?;
        }
    }
    let bytes = w.finish().map_err(fail)?;
    Ok(Written {
        queues: queue_count,
        messages: messages + delayed.len() as u64,
        bytes,
    })
}

/// Removes the index and its temporary file from `dir`, if there, and
/// syncs the directory: whatever happens next, no start uses them.
pub(crate) fn remove<D: Disk>(disk: &D, dir: &Path) -> io::Result<()> {
    let mut removed = false;
    for name in [FILE_NAME, TEMP_NAME] {
        match disk.remove_file(&dir.join(name)) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if removed {
        disk.sync_dir(dir)?;
    }
    Ok(())
}

//! Start-up without rewriting the backlog: the scan of the last run's
//! segment logs into an index of the records that are still live, and the
//! recovery that hands each queue its index entries where the records
//! already are. Blocking file I/O, like the definitions: no executor runs
//! yet.
//!
//! # Identity across runs
//!
//! A record names its queue by id (and, for a reader, by vhost and name),
//! and the removals and delivered marks that follow it name it by that id
//! and its sequence number. For the records to stay where they are, a
//! queue must come back with the id it had and on the shard whose log
//! holds them. The log itself says both: the scan finds, for each durable
//! queue of the definitions (by vhost and name), the id its live records
//! carry and the shard directory they are in; [`place_queues`] gives the
//! queue that id and that shard. Queues without live records get fresh
//! ids above every id any record carries, so no id is ever reused while a
//! record with it exists (a removal of an old queue's message must never
//! cancel a new queue's publish). A queue's sequence numbers carry on past
//! the highest one its records carry, for the same reason.
//!
//! Records of a queue that no longer exists (or of an id a queue of the
//! same name no longer has) are void: the shard appends a removal for each
//! at start, so that they never come back and their segments can go.
//!
//! When the log cannot be kept as it is — the broker now runs fewer shards
//! than the directory that holds some live records — the start falls back
//! to the rewrite of `recovery` (a new generation).
//!
//! # The clean-stop index
//!
//! A shard directory holding a clean-stop index (`store::index`) that is
//! whole and names exactly its segment files, each at the length it has,
//! is not read: the index gives what its scan would. The index is removed
//! (and the directory synced) whatever it holds, before the store
//! appends anything.
//!
//! # Memory
//!
//! The scan reads each segment file once into one reused buffer, checks
//! its chunks' checksums and decodes the records' heads only (a
//! publish's properties and body are skipped). It keeps an [`IndexEntry`]
//! (40 bytes) per live message, in blocks of a queue's messages in
//! sequence order; a block whose messages are all removed is freed at
//! once, so a log of messages published and acknowledged costs little.
//! The queue takes the entries block by block, each freed once taken.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::{info, warn};

use crate::metadata::definitions::RestorePlan;
use crate::metadata::exchange::Destination;
use crate::metadata::queue_args::QueueType;
use crate::metadata::vhost::{MetaChange, QueueMeta};
use crate::model::ids::{QueueId, QueueRef, ShardId};
use crate::model::message::Message;
use crate::store::disk::{Disk, StdDisk};
use crate::store::index;
use crate::store::log::RecoveredSegment;
use crate::store::record::{self, ChunkAt, RecordHead, DELAYED_QUEUE_ID};
use crate::store::recovery::{
    self, RecoveredDelayed, RecoveredMessage, RecoveredMessages, RecoveredQueue, ShardRecovery,
};
use crate::store::segments;

/// Entries per block of a queue's index during the scan.
const BLOCK_ENTRIES: usize = 16 * 1024;
pub(super) const NEVER: u64 = u64::MAX;
pub(super) const FLAG_DELIVERED: u8 = 1;

/// One live message as the scan found it: where its record is, and what
/// its queue needs to hold it as an index entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IndexEntry {
    pub(super) seq: u64,
    pub(super) expires_at_epoch_ms: u64,
    pub(super) offset: u64,
    pub(super) segment: u32,
    /// The record's length; 0 once a removal was found for it.
    pub(super) len: u32,
    pub(super) body_bytes: u32,
    pub(super) level: u8,
    pub(super) flags: u8,
}

const _: () = assert!(std::mem::size_of::<IndexEntry>() <= 40);

impl IndexEntry {
    pub(super) fn is_live(&self) -> bool {
        self.len > 0
    }

    /// The message as its queue takes it back, if it is live.
    pub(crate) fn live_recovered(self) -> Option<RecoveredMessage> {
        self.is_live().then(|| self.into_recovered())
    }

    fn into_recovered(self) -> RecoveredMessage {
        RecoveredMessage {
            seq: self.seq,
            redelivered: self.flags & FLAG_DELIVERED != 0,
            segment: self.segment,
            offset: self.offset,
            len: self.len,
            level: self.level,
            expires_at_epoch_ms: (self.expires_at_epoch_ms != NEVER)
                .then_some(self.expires_at_epoch_ms),
            body_bytes: u64::from(self.body_bytes),
            message: None,
        }
    }
}

/// A queue's records in one shard's log.
#[derive(Debug)]
pub(crate) struct QueueScan {
    pub(super) vhost: String,
    pub(super) name: String,
    /// The highest sequence number any record of it carries.
    pub(super) seq_max: u64,
    /// Its live entries in sequence order, in blocks: each block's
    /// sequence numbers are below the next block's.
    pub(super) blocks: Vec<Vec<IndexEntry>>,
    /// Removed entries still in each block.
    removed: Vec<u32>,
}

impl QueueScan {
    fn new(vhost: &[u8], name: &[u8]) -> QueueScan {
        QueueScan::named(
            String::from_utf8_lossy(vhost).into_owned(),
            String::from_utf8_lossy(name).into_owned(),
        )
    }

    pub(super) fn named(vhost: String, name: String) -> QueueScan {
        QueueScan {
            vhost,
            name,
            seq_max: 0,
            blocks: Vec::new(),
            removed: Vec::new(),
        }
    }

    /// Appends a live entry above every one it holds (an index read
    /// back); `left` entries are still to come, this one included, so
    /// that a block is never allocated larger than needed.
    pub(super) fn push_in_order(&mut self, entry: IndexEntry, left: u64) {
        debug_assert!(self
            .blocks
            .last()
            .and_then(|b| b.last())
            .is_none_or(|last| last.seq < entry.seq));
        match self.blocks.last_mut() {
            Some(block) if block.len() < BLOCK_ENTRIES => block.push(entry),
            _ => {
                let capacity = usize::try_from(left).unwrap_or(BLOCK_ENTRIES);
                let mut block = Vec::with_capacity(capacity.min(BLOCK_ENTRIES));
                block.push(entry);
                self.blocks.push(block);
                self.removed.push(0);
            }
        }
    }

    fn live(&self) -> u64 {
        let total: usize = self.blocks.iter().map(Vec::len).sum();
        let removed: u64 = self.removed.iter().map(|&r| u64::from(r)).sum();
        total as u64 - removed
    }

    /// Where the entry of `seq` is, or would go: its block and place.
    fn position(&self, seq: u64) -> (usize, Result<usize, usize>) {
        let block = self
            .blocks
            .partition_point(|b| b.first().is_some_and(|e| e.seq <= seq))
            .saturating_sub(1);
        match self.blocks.get(block) {
            Some(entries) => (block, entries.binary_search_by_key(&seq, |e| e.seq)),
            None => (0, Err(0)),
        }
    }

    fn find(&mut self, seq: u64) -> Option<&mut IndexEntry> {
        let (block, Ok(at)) = self.position(seq) else {
            return None;
        };
        self.blocks[block].get_mut(at).filter(|e| e.is_live())
    }

    /// A publish: appended when its sequence number is the highest yet
    /// (always, but for a compaction's copy). Returns the segment of the
    /// live copy it replaces, if any.
    fn publish(&mut self, entry: IndexEntry) -> Option<u32> {
        self.seq_max = self.seq_max.max(entry.seq);
        let in_order = self
            .blocks
            .last()
            .and_then(|b| b.last())
            .is_none_or(|last| last.seq < entry.seq);
        if in_order {
            match self.blocks.last_mut() {
                Some(block) if block.len() < BLOCK_ENTRIES => block.push(entry),
                _ => {
                    let mut block = Vec::with_capacity(BLOCK_ENTRIES);
                    block.push(entry);
                    self.blocks.push(block);
                    self.removed.push(0);
                }
            }
            return None;
        }
        let (block, at) = self.position(entry.seq);
        match at {
            Ok(at) => {
                let old = self.blocks[block][at];
                if !old.is_live() {
                    self.removed[block] -= 1;
                }
                self.blocks[block][at] = entry;
                old.is_live().then_some(old.segment)
            }
            Err(at) => {
                self.blocks[block].insert(at, entry);
                None
            }
        }
    }

    /// A removal: the entry goes; returns the segment that held it.
    fn remove(&mut self, seq: u64) -> Option<u32> {
        self.seq_max = self.seq_max.max(seq);
        let (block, Ok(at)) = self.position(seq) else {
            return None;
        };
        let entry = &mut self.blocks[block][at];
        if !entry.is_live() {
            return None;
        }
        let segment = entry.segment;
        entry.len = 0;
        self.removed[block] += 1;
        if self.removed[block] as usize == self.blocks[block].len() {
            // All gone (the common case: consumed in order).
            self.blocks.remove(block);
            self.removed.remove(block);
        }
        Some(segment)
    }
}

/// A message a delayed exchange held, as the scan found it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DelayedScan {
    pub(super) segment: u32,
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) vhost: String,
    pub(super) exchange: String,
    pub(super) due_epoch_ms: u64,
}

/// One shard directory's log.
#[derive(Debug, Default)]
pub(crate) struct ShardScan {
    pub(super) dir: PathBuf,
    /// Every segment file, by number: the oldest segment its records
    /// point into.
    pub(super) segments: BTreeMap<u32, u32>,
    pub(super) queues: HashMap<u64, QueueScan>,
    pub(super) delayed: BTreeMap<u64, DelayedScan>,
}

impl ShardScan {
    fn refers(&mut self, segment: u32, to: Option<u32>) {
        if let (Some(to), Some(oldest)) = (to, self.segments.get_mut(&segment)) {
            *oldest = (*oldest).min(to);
        }
    }

    fn apply(&mut self, segment: u32, offset: u64, len: u32, head: RecordHead) {
        match head {
            RecordHead::Publish { transient, .. } if transient => {}
            RecordHead::Publish {
                queue_id,
                seq,
                expires_at_epoch_ms,
                vhost,
                queue_name,
                ..
            } if queue_id == DELAYED_QUEUE_ID => {
                self.delayed.insert(
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
            }
            RecordHead::Publish {
                queue_id,
                seq,
                delivered,
                level,
                expires_at_epoch_ms,
                vhost,
                queue_name,
                body_bytes,
                ..
            } => {
                let queue = self
                    .queues
                    .entry(queue_id)
                    .or_insert_with(|| QueueScan::new(vhost, queue_name));
                let replaced = queue.publish(IndexEntry {
                    seq,
                    expires_at_epoch_ms: expires_at_epoch_ms.unwrap_or(NEVER),
                    offset,
                    segment,
                    len,
                    body_bytes: u32::try_from(body_bytes).unwrap_or(u32::MAX),
                    level,
                    flags: if delivered { FLAG_DELIVERED } else { 0 },
                });
                // A compaction's copy: the segment of the older copy must
                // go before this one, or a replay would find it alone.
                self.refers(segment, replaced);
            }
            RecordHead::Removal { queue_id, seq } if queue_id == DELAYED_QUEUE_ID => {
                let held = self.delayed.remove(&seq).map(|d| d.segment);
                self.refers(segment, held);
            }
            RecordHead::Removal { queue_id, seq } => {
                let held = self.queues.get_mut(&queue_id).and_then(|q| q.remove(seq));
                self.refers(segment, held);
            }
            RecordHead::Delivered { queue_id, seq } => {
                let held = self
                    .queues
                    .get_mut(&queue_id)
                    .and_then(|q| q.find(seq))
                    .map(|e| {
                        e.flags |= FLAG_DELIVERED;
                        e.segment
                    });
                self.refers(segment, held);
            }
        }
    }
}

/// What the scan of the live generation found.
#[derive(Debug)]
pub(crate) struct Scan {
    generation: u64,
    /// By shard number (the `shard-<n>` directories; missing ones empty).
    shards: Vec<ShardScan>,
    /// The highest queue id any record carries.
    queue_id_max: u64,
}

impl Scan {
    /// Whether every live record is in the log of a shard this run has.
    pub(crate) fn fits(&self, shard_count: usize) -> bool {
        self.shards
            .iter()
            .skip(shard_count)
            .all(|s| s.delayed.is_empty() && s.queues.values().all(|q| q.live() == 0))
            && self.shards.iter().skip(1).all(|s| s.delayed.is_empty())
    }
}

/// Scans the live generation (see the module doc). The generation is
/// created on a fresh node.
pub(crate) fn scan(data_dir: &Path) -> io::Result<Scan> {
    scan_on(&StdDisk, data_dir)
}

/// [`scan`] on any [`Disk`].
pub(crate) fn scan_on<D: Disk>(disk: &D, data_dir: &Path) -> io::Result<Scan> {
    let root = data_dir.join(recovery::DIR_NAME);
    disk.create_dir_all(&root)?;
    disk.sync_dir(data_dir)?;
    let current = recovery::read_current(disk, &root)?;
    recovery::remove_other_generations(disk, &root, current)?;
    let generation = match current {
        Some(generation) => generation,
        None => {
            disk.create_dir_all(&root.join("1"))?;
            disk.sync_dir(&root)?;
            recovery::write_current(disk, &root, 1)?;
            1
        }
    };
    let generation_dir = root.join(generation.to_string());
    let mut shards: Vec<ShardScan> = Vec::new();
    let mut queue_id_max = 0u64;
    let mut buffer: Vec<u8> = Vec::new();
    for entry in disk.list(&generation_dir)? {
        let Some(number) = entry
            .name
            .strip_prefix("shard-")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if !entry.is_dir {
            continue;
        }
        if shards.len() <= number {
            shards.resize_with(number + 1, ShardScan::default);
        }
        let dir = generation_dir.join(&entry.name);
        let shard = &mut shards[number];
        let lengths = index::segment_files(disk, &dir)?;
        let names = disk.list(&dir)?;
        if names.iter().any(|e| e.name == index::FILE_NAME) {
            let read = index::read(disk, &dir, &lengths);
            // Gone before the store appends anything: a crash from here
            // on finds no index older than the log, and scans.
            index::remove(disk, &dir)?;
            match read {
                Ok(indexed) => {
                    info!(
                        shard = number,
                        messages = indexed.messages,
                        queues = indexed.shard.queues.len(),
                        segments = indexed.shard.segments.len(),
                        index_bytes = indexed.bytes,
                        "recovered from the clean-stop index"
                    );
                    queue_id_max = queue_id_max.max(indexed.queue_id_max);
                    *shard = indexed.shard;
                    continue;
                }
                Err(reason) => warn!(
                    shard = number,
                    dir = %dir.display(),
                    reason = %reason,
                    "the clean-stop index cannot be used: scanning the segments"
                ),
            }
        } else if names.iter().any(|e| e.name == index::TEMP_NAME) {
            index::remove(disk, &dir)?;
        }
        shard.dir = dir.clone();
        for &segment in lengths.keys() {
            let path = dir.join(segments::file_name(segment));
            shard.segments.insert(segment, segment);
            let len = read_into(disk, &path, &mut buffer)?;
            walk(&path, &buffer[..len], |offset, len, head| {
                let (RecordHead::Publish { queue_id, .. }
                | RecordHead::Removal { queue_id, .. }
                | RecordHead::Delivered { queue_id, .. }) = &head;
                if *queue_id != DELAYED_QUEUE_ID {
                    queue_id_max = queue_id_max.max(*queue_id);
                }
                shard.apply(segment, offset, len, head);
            });
            // What a crash left unsynced at the end of the last run's
            // files is read now and must read the same at the next start:
            // the records appended from here on rely on it.
            disk.sync_file(&path)?;
        }
    }
    for (number, shard) in shards.iter_mut().enumerate() {
        if shard.dir.as_os_str().is_empty() {
            shard.dir = recovery::shard_dir(data_dir, generation, number);
        }
    }
    Ok(Scan {
        generation,
        shards,
        queue_id_max,
    })
}

/// Reads the file at `path` into `buffer` (reused from file to file, never
/// cleared: only the bytes read are looked at); returns its length.
pub(super) fn read_into<D: Disk>(disk: &D, path: &Path, buffer: &mut Vec<u8>) -> io::Result<usize> {
    let len = disk.len(path)? as usize;
    if buffer.len() < len {
        buffer.resize(len, 0);
    }
    let mut at = 0;
    while at < len {
        let n = disk.read_at(path, at as u64, &mut buffer[at..len])?;
        if n == 0 {
            break;
        }
        at += n;
    }
    Ok(at)
}

/// Hands each record head of a segment's good chunks to `each`, with the
/// record's offset in the file and its length; stops at a bad chunk
/// (logged), and drops a chunk whose checksum matched but that does not
/// decode whole (none of its records is applied).
pub(super) fn walk(path: &Path, file: &[u8], mut each: impl FnMut(u64, u32, RecordHead)) {
    let mut at = 0usize;
    loop {
        match record::chunk_at(file, at) {
            ChunkAt::End => return,
            ChunkAt::Padding => at += record::BLOCK,
            ChunkAt::Bad(why) => {
                warn!(
                    file = %path.display(),
                    offset = at,
                    bytes_dropped = file.len() - at,
                    reason = why,
                    "dropped the torn or corrupt end of a segment (records never confirmed)"
                );
                return;
            }
            ChunkAt::Chunk { payload, next } => {
                let payload_at = payload.start as u64;
                let payload = &file[payload];
                if let Err(why) = record::decode_heads_at(payload, |_, _, _| {}) {
                    warn!(
                        file = %path.display(),
                        offset = at,
                        bytes_dropped = file.len() - at,
                        reason = why,
                        "dropped a segment's end: a chunk with a good checksum does not decode"
                    );
                    return;
                }
                let _ = record::decode_heads_at(payload, |offset, len, head| {
                    each(payload_at + offset as u64, len as u32, head)
                });
                at = next;
            }
        }
    }
}

/// Gives each durable queue of the plan the id and shard its live records
/// carry (see the module doc), and the others fresh ids above every id in
/// the log. Call only when the scan [`Scan::fits`] the shard count.
pub(crate) fn place_queues(scan: &Scan, plan: &mut RestorePlan) {
    // For each (vhost, name), the highest id with live records: ids grow,
    // so it is the latest queue of that name.
    let mut owners: HashMap<(&str, &str), (u64, usize)> = HashMap::new();
    for (shard, found) in scan.shards.iter().enumerate() {
        for (&id, queue) in &found.queues {
            if queue.live() == 0 {
                continue;
            }
            let key = (queue.vhost.as_str(), queue.name.as_str());
            let owner = owners.entry(key).or_insert((id, shard));
            if id > owner.0 {
                *owner = (id, shard);
            }
        }
    }
    let mut next_id = scan.queue_id_max + 1;
    // Plan ids are unique across vhosts: the old id names the queue.
    let mut placed: HashMap<QueueId, QueueRef> = HashMap::new();
    for (vhost, change) in plan.changes.iter_mut() {
        let MetaChange::QueueCreated(meta) = change else {
            continue;
        };
        let adopted = meta
            .durable
            .then(|| owners.get(&(vhost.as_str(), meta.name.as_str())))
            .flatten();
        let old = meta.id;
        match adopted {
            Some(&(id, shard)) => {
                meta.id = QueueId(id);
                meta.shard = ShardId(shard as u16);
            }
            None => {
                meta.id = QueueId(next_id);
                next_id += 1;
            }
        }
        placed.insert(old, meta.queue_ref());
    }
    plan.next_queue_id = plan.next_queue_id.max(next_id);
    // Bindings name their queue by id and shard: they follow.
    for (_, change) in plan.changes.iter_mut() {
        let queue = match change {
            MetaChange::BindingAdded(binding) | MetaChange::BindingRemoved(binding) => {
                match &mut binding.destination {
                    Destination::Queue(queue) => queue,
                    Destination::Exchange(_) => continue,
                }
            }
            MetaChange::QueueDeleted(queue) => queue,
            _ => continue,
        };
        if let Some(now) = placed.get(&queue.id) {
            *queue = *now;
        }
    }
}

/// The scanned log becomes the queues' messages, where the records are
/// (no rewrite). `queues` are the queues this run restores, placed by
/// [`place_queues`].
pub(crate) fn recover_in_place(
    data_dir: &Path,
    scan: Scan,
    queues: &[QueueMeta],
    shard_count: usize,
) -> io::Result<Vec<ShardRecovery>> {
    recover_in_place_on(&StdDisk, data_dir, scan, queues, shard_count)
}

/// [`recover_in_place`] on any [`Disk`].
pub(crate) fn recover_in_place_on<D: Disk>(
    disk: &D,
    data_dir: &Path,
    scan: Scan,
    queues: &[QueueMeta],
    shard_count: usize,
) -> io::Result<Vec<ShardRecovery>> {
    let by_id: HashMap<u64, &QueueMeta> = queues
        .iter()
        .filter(|q| q.durable)
        .map(|q| (q.id.0, q))
        .collect();
    let Scan {
        generation,
        shards: mut scanned,
        queue_id_max,
    } = scan;
    scanned.resize_with(scanned.len().max(shard_count), ShardScan::default);
    let generation_dir = data_dir
        .join(recovery::DIR_NAME)
        .join(generation.to_string());
    for number in 0..shard_count {
        disk.create_dir_all(&recovery::shard_dir(data_dir, generation, number))?;
    }
    // The shards' directories' names are durable before a segment in them
    // can be.
    disk.sync_dir(&generation_dir)?;
    let mut out = Vec::with_capacity(shard_count);
    let mut messages_total = 0u64;
    let mut void_total = 0u64;
    for (number, found) in scanned.into_iter().enumerate() {
        if number >= shard_count {
            // Fits: no live record is left there; the directory stays
            // until a run with that many shards again writes to it.
            continue;
        }
        let dir = recovery::shard_dir(data_dir, generation, number);
        let mut live: BTreeMap<u32, u64> = BTreeMap::new();
        let mut recovered = ShardRecovery {
            dir: dir.clone(),
            queue_id_max,
            ..Default::default()
        };
        let ShardScan {
            segments: found_segments,
            queues: found_queues,
            delayed,
            ..
        } = found;
        let mut found_queues: Vec<(u64, QueueScan)> = found_queues.into_iter().collect();
        found_queues.sort_by_key(|(id, _)| *id);
        for (id, queue) in found_queues {
            let owner = by_id.get(&id).filter(|meta| {
                meta.shard.index() == number
                    && meta.name.as_str() == queue.name
                    && meta.vhost.as_str() == queue.vhost
            });
            for entry in queue.blocks.iter().flatten().filter(|e| e.is_live()) {
                *live.entry(entry.segment).or_default() += 1;
            }
            let Some(meta) = owner else {
                for entry in queue.blocks.iter().flatten().filter(|e| e.is_live()) {
                    recovered.void.push((id, entry.seq, entry.segment));
                }
                if queue.live() > 0 {
                    info!(queue = %queue.name, messages = queue.live(), "dropped stored messages of a queue that no longer exists");
                }
                void_total += queue.live();
                continue;
            };
            messages_total += queue.live();
            let count = queue.live();
            let next_seq = queue.seq_max + 1;
            let messages = if meta.args.queue_type == QueueType::Quorum {
                // Quorum queues are not paged: their bodies come in now.
                let mut loaded = Vec::with_capacity(count as usize);
                for entry in queue.blocks.into_iter().flatten().filter(|e| e.is_live()) {
                    let mut message = entry.into_recovered();
                    message.message = Some(read_message(disk, &dir, &message)?);
                    loaded.push(message);
                }
                RecoveredMessages::Loaded(loaded)
            } else {
                RecoveredMessages::Index {
                    blocks: queue.blocks,
                    count,
                }
            };
            recovered.queues.push(RecoveredQueue {
                id: meta.id,
                next_seq,
                messages,
            });
        }
        for (id, held) in delayed {
            *live.entry(held.segment).or_default() += 1;
            let record = read_record(disk, &dir, held.segment, held.offset, held.len)?;
            let mut message = record::decode_publish(record)
                .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))?
                .message;
            message.own_body();
            recovered.delayed.push(RecoveredDelayed {
                id,
                segment: held.segment,
                vhost: held.vhost,
                exchange: held.exchange,
                due_epoch_ms: held.due_epoch_ms,
                message,
            });
        }
        recovered.segments = found_segments
            .iter()
            .map(|(&number, &oldest_ref)| RecoveredSegment {
                number,
                live: live.get(&number).copied().unwrap_or(0),
                oldest_ref,
            })
            .collect();
        out.push(recovered);
    }
    info!(
        generation,
        messages = messages_total,
        dropped = void_total,
        "message store recovered in place"
    );
    Ok(out)
}

fn read_record<D: Disk>(
    disk: &D,
    dir: &Path,
    segment: u32,
    offset: u64,
    len: u32,
) -> io::Result<Bytes> {
    let path = dir.join(segments::file_name(segment));
    let mut buf = vec![0u8; len as usize];
    let mut at = 0;
    while at < buf.len() {
        let n = disk.read_at(&path, offset + at as u64, &mut buf[at..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a record past the end of its file",
            ));
        }
        at += n;
    }
    Ok(Bytes::from(buf))
}

fn read_message<D: Disk>(disk: &D, dir: &Path, message: &RecoveredMessage) -> io::Result<Message> {
    let record = read_record(disk, dir, message.segment, message.offset, message.len)?;
    record::decode_publish(record)
        .map(|p| p.message)
        .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metadata::queue_args::QueueArgs;
    use crate::metadata::vhost::DEFAULT_VHOST;
    use crate::store::disk::{append_batch, remove_segments, MemDisk};
    use crate::store::log::MessageStore;
    use crate::store::record::PublishHead;
    use std::collections::BTreeSet;
    use warren_protocol::{FieldTable, ShortStr};

    const SEGMENT_SIZE: u64 = 8 * 1024;

    fn data_dir() -> PathBuf {
        PathBuf::from("/data")
    }

    fn queue(name: &str, shard: u16) -> QueueMeta {
        QueueMeta {
            id: QueueId(0),
            vhost: ShortStr::from(DEFAULT_VHOST),
            name: ShortStr::from(name),
            shard: ShardId(shard),
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
            args: QueueArgs::default(),
        }
    }

    /// A start as the broker makes it, with these queues in the
    /// definitions (placed as the plan would, then as the logs say).
    pub(crate) fn start_with(
        disk: &MemDisk,
        shard_count: usize,
        queues: &[QueueMeta],
    ) -> (Vec<ShardRecovery>, Vec<QueueMeta>) {
        disk.create_dir_all(&data_dir()).unwrap();
        disk.sync_dir(Path::new("/")).unwrap();
        let scan = scan_on(disk, &data_dir()).expect("a scan of a crash image");
        assert!(scan.fits(shard_count));
        let mut plan = RestorePlan {
            changes: queues
                .iter()
                .enumerate()
                .map(|(at, q)| {
                    let mut meta = q.clone();
                    meta.id = QueueId(at as u64 + 1);
                    (q.vhost.clone(), MetaChange::QueueCreated(meta))
                })
                .collect(),
            next_queue_id: queues.len() as u64 + 1,
            ..RestorePlan::default()
        };
        place_queues(&scan, &mut plan);
        let placed: Vec<QueueMeta> = plan
            .changes
            .iter()
            .filter_map(|(_, c)| match c {
                MetaChange::QueueCreated(meta) => Some(meta.clone()),
                _ => None,
            })
            .collect();
        let shards = recover_in_place_on(disk, &data_dir(), scan, &placed, shard_count)
            .expect("recovery in place");
        assert_eq!(shards.len(), shard_count);
        (shards, placed)
    }

    /// A start with one durable queue "q" on shard 0.
    pub(crate) fn start(disk: &MemDisk, shard_count: usize) -> Vec<ShardRecovery> {
        start_with(disk, shard_count, &[queue("q", 0)]).0
    }

    fn message(seq: u64) -> Message {
        Message::new(
            "",
            "q",
            &Default::default(),
            Bytes::from(format!("m{seq}{}", "-".repeat(seq as usize % 300))),
            None,
        )
    }

    fn head<'a>(queue_id: u64, seq: u64, delivered: bool, m: &'a Message) -> PublishHead<'a> {
        PublishHead {
            queue_id,
            seq,
            delivered,
            transient: false,
            level: 0,
            expires_at_epoch_ms: None,
            vhost: DEFAULT_VHOST,
            queue_name: "q",
            message: m,
        }
    }

    fn segment_files(disk: &MemDisk, dir: &Path) -> BTreeSet<u32> {
        disk.list(dir)
            .unwrap()
            .into_iter()
            .filter_map(|e| segments::parse_file_name(&e.name))
            .collect()
    }

    /// A live message of the model: its segment, whether the queue holds
    /// its body (else an index entry, paged), and whether it was delivered.
    #[derive(Clone, Copy, Debug)]
    struct Live {
        segment: u32,
        in_memory: bool,
        delivered: bool,
    }

    /// Several runs on one crash-simulating disk, each ended by a power cut
    /// with its last batch torn at a random length: every run starts in
    /// place (no record rewritten, no file created at start), publishes,
    /// acknowledges (recovered messages too), marks deliveries, reclaims
    /// and compacts; every start gives back exactly what was confirmed and
    /// not acknowledged (acknowledgements in the torn batch may be lost),
    /// in order, with the redelivered flags of the delivered marks; and
    /// once everything is acknowledged, reclaim leaves only the active
    /// segment's file.
    #[test]
    fn restarts_in_place_keep_exactly_the_confirmed_messages() {
        let mut rng = 0x853C_49E6_748F_EA9Bu64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _scenario in 0..20 {
            let mut disk = MemDisk::new();
            // What must come back (with its delivered flag), what may come
            // back (published in the torn batch), what must not be
            // marked redelivered unless the torn batch marked it.
            let mut must: BTreeMap<u64, bool> = BTreeMap::new();
            let mut may: BTreeSet<u64> = BTreeSet::new();
            let mut marked_in_tail: BTreeSet<u64> = BTreeSet::new();
            let mut was_delivered: BTreeSet<u64> = BTreeSet::new();
            let runs = 3 + next(3);
            for run in 0..=runs {
                let (shards, placed) = start_with(&disk, 1, &[queue("q", 0)]);
                let shard = shards.into_iter().next().unwrap();
                let dir = shard.dir.clone();
                let files_at_start = segment_files(&disk, &dir);
                let queue_id = placed[0].id.0;
                let mut store: MessageStore<u64> =
                    MessageStore::resume(SEGMENT_SIZE + next(4096), &shard.segments);
                for &(q, s, segment) in &shard.void {
                    store.append_removal(q, s, segment);
                }
                let mut live: BTreeMap<u64, Live> = BTreeMap::new();
                let mut next_seq = 1;
                for recovered in shard.queues {
                    assert_eq!(recovered.id.0, queue_id);
                    next_seq = recovered.next_seq;
                    for m in recovered.into_messages() {
                        assert!(m.message.is_none(), "a body read at start");
                        assert!(m.seq < next_seq);
                        store.paged_out(m.segment);
                        let old = live.insert(
                            m.seq,
                            Live {
                                segment: m.segment,
                                in_memory: false,
                                delivered: m.redelivered,
                            },
                        );
                        assert!(old.is_none(), "{} came back twice", m.seq);
                    }
                }
                // Exactly once, in order (a BTreeMap is), the right flags.
                for (seq, &delivered) in &must {
                    let found = live.get(seq);
                    assert!(found.is_some(), "run {run}: lost {seq}");
                    if delivered {
                        assert!(found.unwrap().delivered, "run {run}: {seq} not redelivered");
                    }
                }
                for (seq, found) in &live {
                    assert!(
                        must.contains_key(seq) || may.contains(seq),
                        "run {run}: {seq} came back"
                    );
                    if found.delivered && !was_delivered.contains(seq) {
                        assert!(marked_in_tail.contains(seq), "run {run}: {seq} redelivered");
                    }
                }
                // A start in place writes no segment.
                assert_eq!(segment_files(&disk, &dir), files_at_start);
                if run == runs {
                    // The last run: everything is acknowledged, and the
                    // log gives its space back.
                    for (&seq, l) in &live {
                        if !l.in_memory {
                            store.paged_in(l.segment);
                        }
                        store.append_removal(queue_id, seq, l.segment);
                    }
                    let mut files = BTreeMap::new();
                    let mut batch = store.take_batch().unwrap();
                    append_batch(&disk, &dir, &mut files, &mut batch, 4096).unwrap();
                    store.batch_written(batch.chunks.into_iter().map(|c| c.bytes), 0);
                    loop {
                        let dead = store.reclaimable();
                        if dead.is_empty() {
                            break;
                        }
                        remove_segments(&disk, &dir, &mut files, &dead).unwrap();
                        for number in dead {
                            store.segment_deleted(number);
                        }
                    }
                    let left = segment_files(&disk, &dir);
                    assert_eq!(left, [store.active_segment()].into(), "{left:?}");
                    let again = start(&disk, 1);
                    assert!(again[0].queues.iter().all(|q| q.len() == 0));
                    break;
                }
                let mut files = BTreeMap::new();
                let mut durable: BTreeMap<u64, Live> = live.clone();
                for _ in 0..3 + next(20) {
                    for _ in 0..1 + next(30) {
                        match next(10) {
                            0..=4 => {
                                let m = message(next_seq);
                                let segment =
                                    store.append_publish(&head(queue_id, next_seq, false, &m));
                                live.insert(
                                    next_seq,
                                    Live {
                                        segment,
                                        in_memory: true,
                                        delivered: false,
                                    },
                                );
                                next_seq += 1;
                            }
                            5..=7 if !live.is_empty() => {
                                // Mostly the oldest, as consumers take them.
                                let at = if next(3) == 0 {
                                    next(live.len() as u64) as usize
                                } else {
                                    0
                                };
                                let (&seq, &l) = live.iter().nth(at).unwrap();
                                live.remove(&seq);
                                if !l.in_memory {
                                    store.paged_in(l.segment);
                                }
                                store.append_removal(queue_id, seq, l.segment);
                            }
                            8 if !live.is_empty() => {
                                let at = next(live.len() as u64) as usize;
                                let (&seq, l) = live.iter_mut().nth(at).unwrap();
                                l.delivered = true;
                                store.append_delivered(queue_id, seq, l.segment);
                            }
                            _ => {}
                        }
                    }
                    if let Some(mut batch) = store.take_batch() {
                        append_batch(&disk, &dir, &mut files, &mut batch, 4096).unwrap();
                        store.batch_written(batch.chunks.into_iter().map(|c| c.bytes), 0);
                        durable = live.clone();
                    }
                    loop {
                        let dead = store.reclaimable();
                        if dead.is_empty() {
                            break;
                        }
                        remove_segments(&disk, &dir, &mut files, &dead).unwrap();
                        for number in dead {
                            store.segment_deleted(number);
                        }
                    }
                    if let Some(from) = store.compaction_candidate() {
                        for (&seq, l) in live.iter_mut() {
                            if l.segment == from {
                                assert!(l.in_memory, "compaction of a paged message");
                                let m = message(seq);
                                l.segment =
                                    store.append_moved(&head(queue_id, seq, l.delivered, &m), from);
                            }
                        }
                    }
                }
                // The batch in flight at the power cut: written, not synced.
                let mut acked_in_tail = BTreeSet::new();
                marked_in_tail.clear();
                may.clear();
                for _ in 0..next(20) {
                    match next(3) {
                        0 if !live.is_empty() => {
                            let (&seq, &l) = live.iter().next().unwrap();
                            live.remove(&seq);
                            acked_in_tail.insert(seq);
                            store.append_removal(queue_id, seq, l.segment);
                        }
                        1 if !live.is_empty() => {
                            let at = next(live.len() as u64) as usize;
                            let (&seq, l) = live.iter_mut().nth(at).unwrap();
                            marked_in_tail.insert(seq);
                            store.append_delivered(queue_id, seq, l.segment);
                        }
                        _ => {
                            let m = message(next_seq);
                            store.append_publish(&head(queue_id, next_seq, false, &m));
                            may.insert(next_seq);
                            next_seq += 1;
                        }
                    }
                }
                if let Some(mut batch) = store.take_batch() {
                    for chunk in &mut batch.chunks {
                        record::seal_chunk(&mut chunk.bytes, 4096);
                        let (file, end) = files.entry(chunk.segment).or_insert_with(|| {
                            let path = dir.join(segments::file_name(chunk.segment));
                            (disk.create(&path).unwrap(), 0)
                        });
                        disk.write_at(file, *end, &chunk.bytes).unwrap();
                        *end += chunk.bytes.len() as u64;
                    }
                }
                drop(files);
                let image = disk.crash_image(|_, tail| next(tail as u64 + 1) as usize);
                must = durable
                    .iter()
                    .filter(|(seq, _)| !acked_in_tail.contains(seq))
                    .map(|(&seq, l)| (seq, l.delivered))
                    .collect();
                may.extend(acked_in_tail);
                was_delivered = durable
                    .iter()
                    .filter(|(_, l)| l.delivered)
                    .map(|(&seq, _)| seq)
                    .collect();
                disk = image;
            }
        }
    }

    /// Writes `count` publishes of queue `queue_id` named `name` into shard
    /// `shard`'s log, acking those `acked` says, all synced.
    fn fill(
        disk: &MemDisk,
        shard: usize,
        queue_id: u64,
        name: &str,
        count: u64,
        acked: impl Fn(u64) -> bool,
    ) {
        let dir = recovery::shard_dir(&data_dir(), 1, shard);
        let numbers = segment_files(disk, &dir);
        let segments: Vec<RecoveredSegment> = numbers
            .iter()
            .map(|&number| RecoveredSegment {
                number,
                live: 0,
                oldest_ref: number,
            })
            .collect();
        let mut store: MessageStore<u64> = MessageStore::resume(SEGMENT_SIZE, &segments);
        let mut files = BTreeMap::new();
        for seq in 1..=count {
            let m = message(seq);
            let mut h = head(queue_id, seq, false, &m);
            h.queue_name = name;
            let segment = store.append_publish(&h);
            if acked(seq) {
                store.append_removal(queue_id, seq, segment);
            }
        }
        let mut batch = store.take_batch().unwrap();
        append_batch(disk, &dir, &mut files, &mut batch, 4096).unwrap();
    }

    /// Each queue comes back with the id and on the shard its records
    /// carry, whatever the plan said; a queue without records gets an id
    /// above every id in the logs; the records of a queue that is gone are
    /// void; and a start with fewer shards than the logs does not fit.
    #[test]
    fn queues_come_back_with_the_id_and_shard_their_records_carry() {
        let disk = MemDisk::new();
        start_with(&disk, 2, &[]);
        fill(&disk, 1, 7, "a", 50, |s| s <= 10);
        fill(&disk, 0, 3, "b", 20, |_| false);
        fill(&disk, 0, 9, "gone", 5, |s| s == 1);
        // "c" had messages once, all acknowledged.
        fill(&disk, 1, 12, "c", 5, |_| true);
        let (shards, placed) = start_with(
            &disk,
            2,
            &[queue("a", 0), queue("b", 1), queue("c", 0), queue("new", 1)],
        );
        let by_name: HashMap<&str, &QueueMeta> =
            placed.iter().map(|q| (q.name.as_str(), q)).collect();
        assert_eq!((by_name["a"].id.0, by_name["a"].shard.index()), (7, 1));
        assert_eq!((by_name["b"].id.0, by_name["b"].shard.index()), (3, 0));
        assert!(by_name["c"].id.0 > 12 && by_name["new"].id.0 > 12);
        assert_ne!(by_name["c"].id, by_name["new"].id);
        let a = shards[1].queues.iter().find(|q| q.id.0 == 7).unwrap();
        assert_eq!((a.len(), a.next_seq), (40, 51));
        let b = shards[0].queues.iter().find(|q| q.id.0 == 3).unwrap();
        assert_eq!(b.len(), 20);
        let void: Vec<u64> = shards[0]
            .void
            .iter()
            .map(|&(q, s, _)| {
                assert_eq!(q, 9);
                s
            })
            .collect();
        assert_eq!(void, [2, 3, 4, 5]);
        assert!(shards[1].void.is_empty());
        // The segments' live counts add up to what comes back, voids too.
        let live: u64 = shards
            .iter()
            .flat_map(|s| &s.segments)
            .map(|s| s.live)
            .sum();
        assert_eq!(live, 40 + 20 + 4);
        // One shard only: shard 1's log holds live messages.
        assert!(!scan_on(&disk, &data_dir()).unwrap().fits(1));
        assert!(scan_on(&disk, &data_dir()).unwrap().fits(3));
    }

    /// A drained backlog gives its segments back after a restart: the
    /// recovered messages' acknowledgements in the new run's segment let
    /// every old segment go, and the files on disk go with them.
    #[test]
    fn a_recovered_backlog_drained_frees_its_segments() {
        let disk = MemDisk::new();
        start(&disk, 1);
        fill(&disk, 0, 1, "q", 400, |_| false);
        let (shards, placed) = start_with(&disk, 1, &[queue("q", 0)]);
        assert_eq!(placed[0].id.0, 1);
        let shard = shards.into_iter().next().unwrap();
        let dir = shard.dir.clone();
        let before = segment_files(&disk, &dir);
        assert!(before.len() > 5, "{before:?}");
        let mut store: MessageStore<u64> = MessageStore::resume(SEGMENT_SIZE, &shard.segments);
        let mut files = BTreeMap::new();
        let mut taken = 0;
        for queue in shard.queues {
            for m in queue.into_messages() {
                store.paged_out(m.segment);
                store.paged_in(m.segment);
                store.append_removal(1, m.seq, m.segment);
                taken += 1;
            }
        }
        assert_eq!(taken, 400);
        let mut batch = store.take_batch().unwrap();
        append_batch(&disk, &dir, &mut files, &mut batch, 4096).unwrap();
        store.batch_written(batch.chunks.into_iter().map(|c| c.bytes), 0);
        let mut deleted = 0;
        loop {
            let dead = store.reclaimable();
            if dead.is_empty() {
                break;
            }
            deleted += dead.len();
            remove_segments(&disk, &dir, &mut files, &dead).unwrap();
            for number in dead {
                store.segment_deleted(number);
            }
        }
        assert_eq!(deleted, before.len());
        assert_eq!(segment_files(&disk, &dir), [store.active_segment()].into());
    }

    /// A copy of the disk (everything in these tests is synced).
    fn copy(disk: &MemDisk) -> MemDisk {
        disk.crash_image(|_, n| n)
    }

    /// Replaces the file at `path` with `bytes`, synced.
    fn overwrite(disk: &MemDisk, path: &Path, bytes: &[u8]) {
        let mut file = disk.create(path).unwrap();
        disk.write_at(&mut file, 0, bytes).unwrap();
        disk.sync(&mut file).unwrap();
        disk.sync_dir(path.parent().unwrap()).unwrap();
    }

    /// What a scan found, in a form to compare: per shard the segments,
    /// each queue's live entries and figures, and the delayed messages.
    type Seen = Vec<(
        BTreeMap<u32, u32>,
        BTreeMap<
            u64,
            (
                String,
                String,
                u64,
                Vec<(u64, u64, u64, u32, u32, u32, u8, u8)>,
            ),
        >,
        Vec<(u64, u32, u64, u32, String, String, u64)>,
    )>;

    fn seen(scan: &Scan) -> (Seen, u64) {
        let shards = scan
            .shards
            .iter()
            .map(|s| {
                let queues = s
                    .queues
                    .iter()
                    .filter(|(_, q)| q.live() > 0)
                    .map(|(&id, q)| {
                        let entries = q
                            .blocks
                            .iter()
                            .flatten()
                            .filter(|e| e.is_live())
                            .map(|e| {
                                (
                                    e.seq,
                                    e.expires_at_epoch_ms,
                                    e.offset,
                                    e.segment,
                                    e.len,
                                    e.body_bytes,
                                    e.level,
                                    e.flags,
                                )
                            })
                            .collect();
                        (id, (q.vhost.clone(), q.name.clone(), q.seq_max, entries))
                    })
                    .collect();
                let delayed = s
                    .delayed
                    .iter()
                    .map(|(&id, d)| {
                        (
                            id,
                            d.segment,
                            d.offset,
                            d.len,
                            d.vhost.clone(),
                            d.exchange.clone(),
                            d.due_epoch_ms,
                        )
                    })
                    .collect();
                (s.segments.clone(), queues, delayed)
            })
            .collect();
        (shards, scan.queue_id_max)
    }

    /// Two shards' logs: queues with acknowledged, delivered and
    /// expiring messages, and messages held by a delayed exchange.
    fn two_shard_log() -> MemDisk {
        let disk = MemDisk::new();
        start_with(&disk, 2, &[]);
        fill(&disk, 0, 3, "b", 300, |s| s % 7 == 0);
        fill(&disk, 1, 7, "a", 200, |s| s <= 50);
        let dir = recovery::shard_dir(&data_dir(), 1, 0);
        let numbers = segment_files(&disk, &dir);
        let segments: Vec<RecoveredSegment> = numbers
            .iter()
            .map(|&number| RecoveredSegment {
                number,
                live: 0,
                oldest_ref: number,
            })
            .collect();
        let mut store: MessageStore<u64> = MessageStore::resume(SEGMENT_SIZE, &segments);
        let mut files = BTreeMap::new();
        for seq in (10..40).step_by(3) {
            store.append_delivered(3, seq, 1);
        }
        let m = message(5);
        for id in 1..=4 {
            let mut h = head(DELAYED_QUEUE_ID, id, false, &m);
            h.queue_name = "delays";
            h.expires_at_epoch_ms = Some(1_000 + id);
            store.append_publish(&h);
        }
        let mut h = head(3, 301, false, &m);
        h.queue_name = "b";
        h.expires_at_epoch_ms = Some(77);
        h.level = 0;
        store.append_publish(&h);
        let mut batch = store.take_batch().unwrap();
        append_batch(&disk, &dir, &mut files, &mut batch, 4096).unwrap();
        disk
    }

    /// Writes each shard's index from what a scan of `disk` finds.
    fn write_indexes(disk: &MemDisk) {
        let scan = scan_on(disk, &data_dir()).unwrap();
        for shard in &scan.shards {
            let files = index::segment_files(disk, &shard.dir).unwrap();
            index::write_scan(disk, shard, &files, scan.queue_id_max).unwrap();
        }
    }

    fn has_index(disk: &MemDisk, shard: usize) -> bool {
        let dir = recovery::shard_dir(&data_dir(), 1, shard);
        disk.list(&dir)
            .unwrap()
            .iter()
            .any(|e| e.name == index::FILE_NAME)
    }

    /// An index written from a scan reads back as that scan, and is used:
    /// a segment's body damaged after it was written (which the scan would
    /// drop from there on) changes nothing. The index is gone once read.
    #[test]
    fn a_clean_stop_index_reads_back_as_the_scan() {
        let disk = two_shard_log();
        let expected = seen(&scan_on(&disk, &data_dir()).unwrap());
        assert_eq!(expected.0[0].2.len(), 4, "delayed messages in the log");
        write_indexes(&disk);
        assert!(has_index(&disk, 0) && has_index(&disk, 1));
        // A byte of a body in the middle of shard 0's first segment: the
        // scan would stop at that chunk; the index does not read it.
        let path = recovery::shard_dir(&data_dir(), 1, 0).join(segments::file_name(1));
        let mut bytes = disk.read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x5a;
        overwrite(&disk, &path, &bytes);
        let from_index = scan_on(&disk, &data_dir()).unwrap();
        assert_eq!(seen(&from_index), expected);
        assert!(!has_index(&disk, 0) && !has_index(&disk, 1));
        // The next start scans (and finds the damage).
        assert_ne!(seen(&scan_on(&disk, &data_dir()).unwrap()), expected);
    }

    /// A change made to a disk while the broker is down.
    type Damage = Box<dyn Fn(&MemDisk)>;

    /// Whatever is wrong with an index (truncated anywhere, a flipped
    /// byte, bad magic or version, a segment longer, missing or extra, a
    /// count larger than the file), the start scans the segments and finds
    /// what a start without an index finds; no panic, and the index is
    /// gone afterwards.
    #[test]
    fn a_damaged_or_stale_index_falls_back_to_the_scan() {
        let base = two_shard_log();
        write_indexes(&base);
        let dir = recovery::shard_dir(&data_dir(), 1, 0);
        let index_path = dir.join(index::FILE_NAME);
        let good = base.read(&index_path).unwrap();
        assert!(good.len() > 1000, "{}", good.len());
        let mut cases: Vec<(String, Damage)> = Vec::new();
        for cut in [
            0,
            5,
            12,
            19,
            good.len() / 3,
            good.len() - 17,
            good.len() - 1,
        ] {
            let good = good.clone();
            let path = index_path.clone();
            cases.push((
                format!("truncated to {cut}"),
                Box::new(move |d: &MemDisk| overwrite(d, &path, &good[..cut])),
            ));
        }
        for (name, at) in [("magic", 0), ("version", 8), ("frame", 40), ("end", 0)] {
            let mut bad = good.clone();
            let at = if name == "end" { bad.len() - 3 } else { at };
            bad[at] ^= 1;
            let path = index_path.clone();
            cases.push((
                format!("a flipped byte: {name}"),
                Box::new(move |d: &MemDisk| overwrite(d, &path, &bad)),
            ));
        }
        let segment = dir.join(segments::file_name(1));
        let last = *segment_files(&base, &dir).last().unwrap();
        let seg = segment.clone();
        cases.push((
            "a segment grew".into(),
            Box::new(move |d: &MemDisk| {
                let mut bytes = d.read(&seg).unwrap();
                bytes.extend_from_slice(&[0u8; 4096]);
                overwrite(d, &seg, &bytes);
            }),
        ));
        let seg = dir.join(segments::file_name(last));
        cases.push((
            "a segment missing".into(),
            Box::new(move |d: &MemDisk| {
                d.remove_file(&seg).unwrap();
                d.sync_dir(seg.parent().unwrap()).unwrap();
            }),
        ));
        let seg = dir.join(segments::file_name(last + 1));
        cases.push((
            "an extra segment".into(),
            Box::new(move |d: &MemDisk| overwrite(d, &seg, &[])),
        ));
        {
            // A well-formed frame announcing a queue of 2^40 entries.
            let mut payload = vec![1u8];
            payload.extend_from_slice(&9u64.to_le_bytes());
            payload.extend_from_slice(&9u32.to_le_bytes());
            payload.push(3);
            payload.extend_from_slice(&3u64.to_le_bytes());
            payload.extend_from_slice(&5u64.to_le_bytes());
            payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
            payload.extend_from_slice(&[1, 0, b'/', 1, 0, b'b']);
            let mut bytes = good[..12].to_vec();
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crate::util::crc32c::checksum(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
            let path = index_path.clone();
            cases.push((
                "a huge count".into(),
                Box::new(move |d: &MemDisk| overwrite(d, &path, &bytes)),
            ));
        }
        for (name, damage) in &cases {
            let disk = copy(&base);
            damage(&disk);
            let files = index::segment_files(&disk, &dir).unwrap();
            let refused = index::read(&disk, &dir, &files);
            assert!(refused.is_err(), "{name}: {refused:?}");
            let reference = copy(&disk);
            for shard in 0..2 {
                let dir = recovery::shard_dir(&data_dir(), 1, shard);
                index::remove(&reference, &dir).unwrap();
            }
            let expected = seen(&scan_on(&reference, &data_dir()).unwrap());
            let found = seen(&scan_on(&disk, &data_dir()).unwrap());
            // Shard 1's index is fine: it is used, and reads the same.
            assert_eq!(found, expected, "{name}");
            assert!(!has_index(&disk, 0) && !has_index(&disk, 1), "{name}");
        }
    }

    /// The index a clean stop writes from what the queues hold (some in
    /// memory, found in their segments; the rest paged) reads back as the
    /// scan; one the store's counts do not agree with is not written.
    #[test]
    fn a_clean_stop_writes_what_the_queues_hold() {
        use crate::store::index::{HeldRecord, QueueRecords};
        let disk = two_shard_log();
        let expected = seen(&scan_on(&disk, &data_dir()).unwrap());
        let (shards, placed) = start_with(&disk, 2, &[queue("a", 0), queue("b", 0)]);
        for shard in shards {
            let mut store: MessageStore<u64> = MessageStore::resume(SEGMENT_SIZE, &shard.segments);
            store.queue_id_max = shard.queue_id_max;
            let mut queues = Vec::new();
            for q in shard.queues {
                let meta = placed.iter().find(|m| m.id == q.id).unwrap();
                let next_seq = q.next_seq;
                let mut in_memory = Vec::new();
                let mut paged = Vec::new();
                for (at, m) in q.into_messages().enumerate() {
                    let mut r = HeldRecord {
                        seq: m.seq,
                        segment: m.segment,
                        place: Some((m.offset, m.len)),
                        body_bytes: m.body_bytes,
                        expires_at_epoch_ms: m.expires_at_epoch_ms,
                        level: m.level,
                        delivered: m.redelivered,
                        persistent: true,
                    };
                    if at % 3 == 0 {
                        // In memory: where its record is, is for the
                        // store to find.
                        r.place = None;
                        r.expires_at_epoch_ms = Some(1);
                        in_memory.push(r);
                    } else {
                        paged.push(r);
                    }
                }
                queues.push(QueueRecords {
                    id: meta.id.0,
                    vhost: meta.vhost.as_str().to_string(),
                    name: meta.name.as_str().to_string(),
                    durable: true,
                    next_seq,
                    in_memory,
                    paged: vec![paged.into_iter()],
                });
            }
            let delayed: Vec<(u64, u32)> =
                shard.delayed.iter().map(|d| (d.id, d.segment)).collect();
            if let Some(q) = queues.first_mut() {
                // One record short: the counts disagree, nothing is written.
                let kept = q.in_memory.pop().unwrap();
                let refused = index::write_clean_stop(
                    &disk,
                    &shard.dir,
                    &store,
                    queues_clone(&queues),
                    delayed.clone(),
                );
                assert!(refused.is_err(), "{refused:?}");
                queues[0].in_memory.push(kept);
            }
            let written =
                index::write_clean_stop(&disk, &shard.dir, &store, queues, delayed).unwrap();
            assert!(written.messages > 0);
        }
        assert!(has_index(&disk, 0) && has_index(&disk, 1));
        let found = seen(&scan_on(&disk, &data_dir()).unwrap());
        assert_eq!(found.0, expected.0);
        assert!(found.1 >= expected.1);
    }

    fn queues_clone(
        queues: &[crate::store::index::QueueRecords<
            std::vec::IntoIter<crate::store::index::HeldRecord>,
        >],
    ) -> Vec<crate::store::index::QueueRecords<std::vec::IntoIter<crate::store::index::HeldRecord>>>
    {
        queues
            .iter()
            .map(|q| crate::store::index::QueueRecords {
                id: q.id,
                vhost: q.vhost.clone(),
                name: q.name.clone(),
                durable: q.durable,
                next_seq: q.next_seq,
                in_memory: q.in_memory.clone(),
                paged: q.paged.clone(),
            })
            .collect()
    }

    /// Bindings name their queue by id and shard: they follow the queue to
    /// the id and shard its records carry.
    #[test]
    fn bindings_follow_their_queue() {
        use crate::metadata::exchange::Binding;
        let disk = MemDisk::new();
        start_with(&disk, 2, &[]);
        fill(&disk, 1, 7, "a", 3, |_| false);
        let scan = scan_on(&disk, &data_dir()).unwrap();
        let mut meta = queue("a", 0);
        meta.id = QueueId(1);
        let binding = Binding {
            source: ShortStr::from("amq.direct"),
            destination: Destination::Queue(meta.queue_ref()),
            routing_key: ShortStr::from("k"),
            arguments: FieldTable::default(),
        };
        let vhost = ShortStr::from(DEFAULT_VHOST);
        let mut plan = RestorePlan {
            changes: vec![
                (vhost.clone(), MetaChange::QueueCreated(meta)),
                (vhost, MetaChange::BindingAdded(binding)),
            ],
            next_queue_id: 2,
            ..RestorePlan::default()
        };
        place_queues(&scan, &mut plan);
        let MetaChange::BindingAdded(binding) = &plan.changes[1].1 else {
            panic!("the binding is still there");
        };
        let now = QueueRef {
            id: QueueId(7),
            shard: ShardId(1),
        };
        assert_eq!(binding.destination, Destination::Queue(now));
        assert!(plan.next_queue_id > 7);
    }
}

//! Boot: the message log of the last run becomes the queues' messages of
//! this one. Blocking file I/O, like the definitions: no executor runs yet.
//!
//! # Generations
//!
//! ```text
//! <data-dir>/messages/CURRENT                 the live generation's number
//! <data-dir>/messages/<gen>/shard-<n>/<segment>.seg
//! ```
//!
//! Queue ids and shard placement change from one run to the next (queues
//! are placed round-robin when definitions are restored), so a run never
//! appends to the previous run's files. At start:
//!
//! 1. read every segment of generation g (every shard's directory, each in
//!    segment order), checking each chunk's checksums; a torn or corrupt
//!    chunk ends its segment, and what was dropped is logged;
//! 2. replay the records: publishes minus removals, delivered marks turned
//!    into redelivered flags; keep the messages whose queue (by vhost and
//!    name) still exists and is durable, in their original order;
//! 3. write them to generation g+1, segments 1, 2, ... (of `--segment-size`
//!    each) of the directory of the shard that owns each queue now, with new
//!    queue ids and sequence numbers; fdatasync the files, fsync the
//!    directories;
//! 4. switch `CURRENT` to g+1 (temp file, fdatasync, rename, directory
//!    fsync: atomic), then delete generation g.
//!
//! A crash anywhere in 1-3 leaves `CURRENT` naming g, whose files are
//! untouched; the half-written g+1 is removed at the next start. A crash
//! after 4 leaves g+1 complete; a left-over g is removed at the next start.
//! The price is that every start rewrites the backlog once: start-up time
//! and disk writes grow with the messages waiting in durable queues.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::{info, warn};

use crate::metadata::vhost::{QueueMeta, DEFAULT_VHOST};
use crate::model::ids::{QueueId, ShardId};
use crate::model::message::Message;
use crate::store::disk::{Disk, StdDisk};
use crate::store::record::{self, ChunkRead, PublishHead, Record, StoredPublish};
use crate::store::segments;

pub(crate) const DIR_NAME: &str = "messages";
const CURRENT: &str = "CURRENT";
const CURRENT_TEMP: &str = "CURRENT.tmp";
/// Recovered messages are written in chunks of about this size.
const CHUNK_BYTES: usize = 4 << 20;
/// The alignment recovery pads chunks to (what O_DIRECT needs on any disk).
const ALIGNMENT: usize = record::CHUNK_ALIGNMENT;

/// A message of a durable queue, as the queue takes it back at start.
#[derive(Debug)]
pub(crate) struct RecoveredMessage {
    /// Delivered before (with an ack pending) or requeued: redelivered.
    pub(crate) redelivered: bool,
    /// The segment of the new generation that holds it, where in it, and
    /// the record's length: a queue over its window keeps only these.
    pub(crate) segment: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) level: u8,
    pub(crate) expires_at_epoch_ms: Option<u64>,
    pub(crate) message: Message,
}

/// What one shard starts with.
#[derive(Debug, Default)]
pub(crate) struct ShardRecovery {
    /// `messages/<gen>/shard-<n>`: where the shard's store writes.
    pub(crate) dir: PathBuf,
    /// Each queue's messages, in order.
    pub(crate) queues: Vec<(QueueId, Vec<RecoveredMessage>)>,
    /// Messages in segments 1, 2, ...: the store's next segment follows.
    pub(crate) live_per_segment: Vec<u64>,
}

pub(crate) fn shard_dir(data_dir: &Path, generation: u64, shard: usize) -> PathBuf {
    data_dir
        .join(DIR_NAME)
        .join(generation.to_string())
        .join(format!("shard-{}", shard))
}

/// Reads the last generation, writes the next, switches to it. `queues`
/// are the queues this run restores (with their new ids and shards).
pub(crate) fn recover(
    data_dir: &Path,
    queues: &[QueueMeta],
    shard_count: usize,
    segment_size: u64,
) -> io::Result<Vec<ShardRecovery>> {
    recover_on(&StdDisk, data_dir, queues, shard_count, segment_size)
}

/// [`recover`] on any [`Disk`].
pub(crate) fn recover_on<D: Disk>(
    disk: &D,
    data_dir: &Path,
    queues: &[QueueMeta],
    shard_count: usize,
    segment_size: u64,
) -> io::Result<Vec<ShardRecovery>> {
    let root = data_dir.join(DIR_NAME);
    disk.create_dir_all(&root)?;
    // On a fresh node `messages` is new: its name must be durable before
    // anything under it can be.
    disk.sync_dir(data_dir)?;
    let current = read_current(disk, &root)?;
    remove_other_generations(disk, &root, current)?;

    let mut survivors: BTreeMap<(u64, u64), StoredPublish> = BTreeMap::new();
    if let Some(generation) = current {
        replay_generation(disk, &root.join(generation.to_string()), &mut survivors)?;
    }

    // The queues of this run, by vhost and name.
    let by_name: HashMap<(&str, &str), &QueueMeta> = queues
        .iter()
        .filter(|q| q.durable)
        .map(|q| ((DEFAULT_VHOST, q.name.as_str()), q))
        .collect();
    let next = current.map_or(1, |g| g + 1);
    let mut shards: Vec<ShardRecovery> = (0..shard_count)
        .map(|n| ShardRecovery {
            dir: shard_dir(data_dir, next, n),
            ..Default::default()
        })
        .collect();
    let mut per_queue: BTreeMap<u64, (QueueId, ShardId, Vec<RecoveredMessage>)> = BTreeMap::new();
    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    for (_, stored) in survivors {
        let Some(meta) = by_name.get(&(stored.vhost.as_str(), stored.queue_name.as_str())) else {
            *dropped.entry(stored.queue_name).or_default() += 1;
            continue;
        };
        let entry = per_queue
            .entry(meta.id.0)
            .or_insert_with(|| (meta.id, meta.shard, Vec::new()));
        entry.2.push(RecoveredMessage {
            redelivered: stored.delivered,
            segment: 0,
            offset: 0,
            len: 0,
            level: stored.level,
            expires_at_epoch_ms: stored.expires_at_epoch_ms,
            message: stored.message,
        });
    }
    for (queue, count) in &dropped {
        info!(queue = %queue, messages = count, "dropped stored messages of a queue that no longer exists");
    }
    for (_, (id, shard, messages)) in per_queue {
        if let Some(target) = shards.get_mut(shard.index()) {
            target.queues.push((id, messages));
        }
    }

    let generation_dir = root.join(next.to_string());
    disk.create_dir_all(&generation_dir)?;
    let names: HashMap<u64, &str> = queues.iter().map(|q| (q.id.0, q.name.as_str())).collect();
    for shard in &mut shards {
        disk.create_dir_all(&shard.dir)?;
        shard.live_per_segment =
            write_segments(disk, &shard.dir, &mut shard.queues, &names, segment_size)?;
        disk.sync_dir(&shard.dir)?;
    }
    disk.sync_dir(&generation_dir)?;
    disk.sync_dir(&root)?;
    write_current(disk, &root, next)?;
    if let Some(old) = current {
        disk.remove_dir_all(&root.join(old.to_string()))?;
        disk.sync_dir(&root)?;
    }
    let total: u64 = shards.iter().flat_map(|s| &s.live_per_segment).sum();
    info!(
        generation = next,
        messages = total,
        dropped = dropped.values().sum::<u64>(),
        "message store recovered"
    );
    Ok(shards)
}

fn read_current<D: Disk>(disk: &D, root: &Path) -> io::Result<Option<u64>> {
    match disk.read(&root.join(CURRENT)) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            text.trim().parse().map(Some).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} does not hold a generation number: {:?}", CURRENT, text),
                )
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_current<D: Disk>(disk: &D, root: &Path, generation: u64) -> io::Result<()> {
    let temp = root.join(CURRENT_TEMP);
    let mut file = disk.create(&temp)?;
    disk.write_at(&mut file, 0, format!("{}\n", generation).as_bytes())?;
    disk.sync(&mut file)?;
    drop(file);
    disk.rename(&temp, &root.join(CURRENT))?;
    disk.sync_dir(root)
}

/// Generations other than the live one are what an interrupted start left.
fn remove_other_generations<D: Disk>(
    disk: &D,
    root: &Path,
    current: Option<u64>,
) -> io::Result<()> {
    for entry in disk.list(root)? {
        let stale = match entry.name.parse::<u64>() {
            Ok(generation) => Some(generation) != current,
            Err(_) => entry.name == CURRENT_TEMP,
        };
        if stale {
            let path = root.join(&entry.name);
            warn!(entry = %path.display(), "removing what an interrupted start left in the message store");
            if entry.is_dir {
                disk.remove_dir_all(&path)?;
            } else {
                disk.remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// Replays every shard directory of a generation into `live`.
fn replay_generation<D: Disk>(
    disk: &D,
    dir: &Path,
    live: &mut BTreeMap<(u64, u64), StoredPublish>,
) -> io::Result<()> {
    let mut shard_dirs: Vec<PathBuf> = match disk.list(dir) {
        Ok(entries) => entries
            .into_iter()
            .filter(|e| e.is_dir)
            .map(|e| dir.join(e.name))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    shard_dirs.sort();
    for shard_dir in shard_dirs {
        let mut segments: Vec<(u32, PathBuf)> = disk
            .list(&shard_dir)?
            .into_iter()
            .filter(|e| !e.is_dir)
            .filter_map(|e| Some((segments::parse_file_name(&e.name)?, shard_dir.join(e.name))))
            .collect();
        segments.sort();
        for (_, path) in segments {
            let file = Bytes::from(disk.read(&path)?);
            replay_segment(&path, &file, live);
        }
    }
    Ok(())
}

/// Applies a segment's good chunks to `live`; stops at a bad one.
pub(crate) fn replay_segment(
    path: &Path,
    file: &Bytes,
    live: &mut BTreeMap<(u64, u64), StoredPublish>,
) {
    let mut at = 0usize;
    loop {
        match record::read_chunk(file, at) {
            ChunkRead::End => return,
            ChunkRead::Padding => at += record::BLOCK,
            ChunkRead::Bad(why) => {
                warn!(
                    file = %path.display(),
                    offset = at,
                    bytes_dropped = file.len() - at,
                    reason = why,
                    "dropped the torn or corrupt end of a segment (records never confirmed)"
                );
                return;
            }
            ChunkRead::Chunk { payload, next } => {
                match record::decode_records(payload) {
                    Ok(records) => {
                        for record in records {
                            apply(record, live);
                        }
                    }
                    Err(why) => {
                        warn!(
                            file = %path.display(),
                            offset = at,
                            bytes_dropped = file.len() - at,
                            reason = why,
                            "dropped a segment's end: a chunk with a good checksum does not decode"
                        );
                        return;
                    }
                }
                at = next;
            }
        }
    }
}

fn apply(record: Record, live: &mut BTreeMap<(u64, u64), StoredPublish>) {
    match record {
        Record::Publish(publish) if publish.transient => {
            // A transient message paged out under memory pressure: it does
            // not survive a restart.
        }
        Record::Publish(mut publish) => {
            // Copies, so that a few survivors do not keep whole segment
            // files in memory.
            // (`Message::new`, as decoding made it, has a head of its own.)
            let m = &mut publish.message;
            m.body = Bytes::copy_from_slice(&m.body);
            live.insert((publish.queue_id, publish.seq), *publish);
        }
        Record::Removal { queue_id, seq } => {
            live.remove(&(queue_id, seq));
        }
        Record::Delivered { queue_id, seq } => {
            if let Some(p) = live.get_mut(&(queue_id, seq)) {
                p.delivered = true;
            }
        }
    }
}

/// A shard's segments in the new generation: its queues' messages, with
/// the queues' new ids and sequence numbers 1, 2, ... in order, a new
/// segment every `segment_size` bytes (so that the backlog's space is given
/// back segment by segment as it is consumed). Sets each message's segment;
/// returns the live messages per segment.
fn write_segments<D: Disk>(
    disk: &D,
    dir: &Path,
    queues: &mut [(QueueId, Vec<RecoveredMessage>)],
    names: &HashMap<u64, &str>,
    segment_size: u64,
) -> io::Result<Vec<u64>> {
    let mut live_per_segment: Vec<u64> = Vec::new();
    let mut file: Option<D::File> = None;
    let mut file_bytes = 0u64;
    let mut chunk = Vec::new();
    record::open_chunk(&mut chunk);
    for (queue, messages) in queues.iter_mut() {
        let name = names.get(&queue.0).copied().unwrap_or_default();
        for (at, m) in messages.iter_mut().enumerate() {
            if file.is_none() || file_bytes + chunk.len() as u64 >= segment_size {
                if let Some(mut full) = file.take() {
                    write_chunk(disk, &mut full, file_bytes, &mut chunk)?;
                    disk.sync(&mut full)?;
                }
                live_per_segment.push(0);
                let number = live_per_segment.len() as u32;
                file = Some(disk.create(&dir.join(segments::file_name(number)))?);
                file_bytes = 0;
            }
            let before = chunk.len();
            record::put_publish(
                &mut chunk,
                &PublishHead {
                    queue_id: queue.0,
                    seq: at as u64 + 1,
                    delivered: m.redelivered,
                    transient: false,
                    level: m.level,
                    expires_at_epoch_ms: m.expires_at_epoch_ms,
                    vhost: DEFAULT_VHOST,
                    queue_name: name,
                    message: &m.message,
                },
            );
            m.segment = live_per_segment.len() as u32;
            // Chunks are written back to back, each padded to ALIGNMENT.
            m.offset = file_bytes + before as u64;
            m.len = (chunk.len() - before) as u32;
            if let Some(count) = live_per_segment.last_mut() {
                *count += 1;
            }
            if chunk.len() >= CHUNK_BYTES {
                if let Some(f) = file.as_mut() {
                    file_bytes += write_chunk(disk, f, file_bytes, &mut chunk)?;
                }
            }
        }
    }
    if let Some(mut last) = file.take() {
        write_chunk(disk, &mut last, file_bytes, &mut chunk)?;
        disk.sync(&mut last)?;
    }
    Ok(live_per_segment)
}

/// Seals the chunk in `chunk` and writes it at `offset`, then opens the
/// next one in it. Returns the bytes written.
fn write_chunk<D: Disk>(
    disk: &D,
    file: &mut D::File,
    offset: u64,
    chunk: &mut Vec<u8>,
) -> io::Result<u64> {
    if chunk.len() <= record::CHUNK_HEADER_LEN {
        return Ok(0);
    }
    record::seal_chunk(chunk, ALIGNMENT);
    disk.write_at(file, offset, chunk)?;
    let written = chunk.len() as u64;
    chunk.clear();
    record::open_chunk(chunk);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::queue_args::QueueArgs;
    use crate::store::disk::{append_batch, remove_segments, MemDisk};
    use crate::store::log::MessageStore;
    use std::collections::BTreeSet;
    use warren_protocol::{FieldTable, ShortStr};

    const SEGMENT_SIZE: u64 = 8 * 1024;

    fn data_dir() -> PathBuf {
        PathBuf::from("/data")
    }

    fn queue(id: u64, name: &str) -> QueueMeta {
        QueueMeta {
            id: QueueId(id),
            name: ShortStr::from(name),
            shard: ShardId(0),
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
            args: QueueArgs::default(),
        }
    }

    /// A message whose body names its sequence number.
    fn message(seq: u64) -> Message {
        Message::new(
            "",
            "q",
            &Default::default(),
            Bytes::from(format!("m{seq}{}", "-".repeat(seq as usize % 300))),
            None,
        )
    }

    fn seq_of(m: &RecoveredMessage) -> u64 {
        let body = std::str::from_utf8(&m.message.body).unwrap();
        body.trim_start_matches('m')
            .trim_end_matches('-')
            .parse()
            .unwrap()
    }

    fn publish(store: &mut MessageStore<u64>, seq: u64) -> u32 {
        store.append_publish(&PublishHead {
            queue_id: 1,
            seq,
            delivered: false,
            transient: false,
            level: 0,
            expires_at_epoch_ms: None,
            vhost: DEFAULT_VHOST,
            queue_name: "q",
            message: &message(seq),
        })
    }

    /// The sequence numbers a start on `disk` gives back, in queue order.
    fn recovered(disk: &MemDisk) -> Vec<u64> {
        let shards = recover_on(disk, &data_dir(), &[queue(1, "q")], 1, SEGMENT_SIZE)
            .expect("recovery on a crash image");
        shards
            .iter()
            .flat_map(|s| &s.queues)
            .flat_map(|(_, messages)| messages.iter().map(seq_of))
            .collect()
    }

    /// The first start: an empty generation 1 for the store to write into.
    fn fresh_store_dir(disk: &MemDisk) -> PathBuf {
        // The data directory exists before the broker starts.
        disk.create_dir_all(&data_dir()).unwrap();
        disk.sync_dir(Path::new("/")).unwrap();
        let shards = recover_on(disk, &data_dir(), &[queue(1, "q")], 1, SEGMENT_SIZE).unwrap();
        shards[0].dir.clone()
    }

    /// Batches synced before their confirms went out, then one batch written
    /// but not synced when the power went: for every length of the torn
    /// write (each byte of the last chunk), the confirmed messages come back
    /// exactly, the torn chunk is dropped whole, and nothing panics. Only a
    /// last chunk that reached the disk complete is replayed.
    #[test]
    fn a_torn_last_chunk_is_dropped_and_everything_synced_is_recovered() {
        let disk = MemDisk::new();
        let dir = fresh_store_dir(&disk);
        let mut store: MessageStore<u64> = MessageStore::new(SEGMENT_SIZE, &[]);
        let mut files = BTreeMap::new();
        let mut live: BTreeMap<u64, u32> = BTreeMap::new();
        let mut seq = 0;
        for batch_number in 0..3u64 {
            for _ in 0..5 {
                seq += 1;
                live.insert(seq, publish(&mut store, seq));
            }
            let (&first, &segment) = live.iter().next().unwrap();
            store.append_removal(1, first, segment);
            live.remove(&first);
            store.defer_confirm(batch_number);
            let mut batch = store.take_batch().unwrap();
            append_batch(&disk, &dir, &mut files, &mut batch, 4096).unwrap();
            // The store hands back the token it was given, once synced.
            assert_eq!(batch.confirms, [batch_number]);
            store.batch_written(batch.chunks.into_iter().map(|c| c.bytes), 0);
        }
        let confirmed: Vec<u64> = live.keys().copied().collect();

        // The last batch: two publishes and an ack, written, never synced.
        let mut after = live.clone();
        for _ in 0..2 {
            seq += 1;
            after.insert(seq, publish(&mut store, seq));
        }
        let (&acked, &segment) = after.iter().next().unwrap();
        store.append_removal(1, acked, segment);
        after.remove(&acked);
        let mut batch = store.take_batch().unwrap();
        assert_eq!(batch.chunks.len(), 1, "one chunk in the last batch");
        let chunk = &mut batch.chunks[0];
        let complete_len = chunk.bytes.len();
        record::seal_chunk(&mut chunk.bytes, 4096);
        let (file, end) = files.get_mut(&chunk.segment).unwrap();
        disk.write_at(file, *end, &chunk.bytes).unwrap();
        let unsynced = disk.unsynced();
        assert_eq!(unsynced.len(), 1, "{unsynced:?}");
        let tail_len = *unsynced.values().next().unwrap();
        assert_eq!(tail_len, chunk.bytes.len());

        let with_last: Vec<u64> = after.keys().copied().collect();
        for cut in 0..=tail_len {
            let image = disk.crash_image(|_, _| cut);
            let found = recovered(&image);
            if cut < complete_len {
                assert_eq!(found, confirmed, "torn after {cut} of {complete_len} bytes");
            } else {
                assert_eq!(found, with_last, "complete at {cut} bytes");
            }
        }

        // A start from a crash image leaves a store the next start reads
        // the same, even if it crashes again right after.
        let image = disk.crash_image(|_, _| complete_len / 2);
        assert_eq!(recovered(&image), confirmed);
        let again = image.crash_image(|_, _| 0);
        assert_eq!(recovered(&again), confirmed);
    }

    /// The reclaim rule against the crash-simulating disk: random publishes,
    /// acks and delivered marks, batches written and synced, segments
    /// deleted whenever `reclaimable` allows and old messages compacted
    /// forward, then a crash after a random batch with the next batch
    /// written but torn at a random length. Every message live at the last
    /// sync and not acked in the torn batch comes back; nothing comes back
    /// that was acked in a synced batch, or never published.
    #[test]
    fn reclaim_and_a_crash_anywhere_keep_exactly_what_was_confirmed() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _run in 0..60 {
            let disk = MemDisk::new();
            let dir = fresh_store_dir(&disk);
            let mut store: MessageStore<u64> = MessageStore::new(1024 + next(4096), &[]);
            let mut files = BTreeMap::new();
            let mut live: BTreeMap<u64, u32> = BTreeMap::new();
            let mut durable_live: BTreeSet<u64> = BTreeSet::new();
            let mut seq = 0u64;
            let batches = 5 + next(40);
            for _ in 0..batches {
                for _ in 0..1 + next(30) {
                    match next(10) {
                        0..=4 => {
                            seq += 1;
                            live.insert(seq, publish(&mut store, seq));
                        }
                        5..=7 if !live.is_empty() => {
                            let at = next(live.len() as u64) as usize;
                            let (&s, &segment) = live.iter().nth(at).unwrap();
                            live.remove(&s);
                            store.append_removal(1, s, segment);
                        }
                        8 if !live.is_empty() => {
                            let at = next(live.len() as u64) as usize;
                            let (&s, &segment) = live.iter().nth(at).unwrap();
                            store.append_delivered(1, s, segment);
                        }
                        _ => {}
                    }
                }
                let Some(mut batch) = store.take_batch() else {
                    continue;
                };
                append_batch(&disk, &dir, &mut files, &mut batch, record::BLOCK).unwrap();
                store.batch_written(batch.chunks.into_iter().map(|c| c.bytes), 0);
                durable_live = live.keys().copied().collect();
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
                    for (&s, segment) in live.iter_mut() {
                        if *segment == from {
                            *segment = store.append_moved(
                                &PublishHead {
                                    queue_id: 1,
                                    seq: s,
                                    delivered: false,
                                    transient: false,
                                    level: 0,
                                    expires_at_epoch_ms: None,
                                    vhost: DEFAULT_VHOST,
                                    queue_name: "q",
                                    message: &message(s),
                                },
                                from,
                            );
                        }
                    }
                }
            }
            // The batch in flight at the crash: written, not synced.
            let mut acked_in_tail = BTreeSet::new();
            let first_unconfirmed = seq + 1;
            for _ in 0..next(20) {
                if next(2) == 0 && !live.is_empty() {
                    let at = next(live.len() as u64) as usize;
                    let (&s, &segment) = live.iter().nth(at).unwrap();
                    live.remove(&s);
                    acked_in_tail.insert(s);
                    store.append_removal(1, s, segment);
                } else {
                    seq += 1;
                    live.insert(seq, publish(&mut store, seq));
                }
            }
            if let Some(mut batch) = store.take_batch() {
                for chunk in &mut batch.chunks {
                    record::seal_chunk(&mut chunk.bytes, record::BLOCK);
                    let (file, end) = files.entry(chunk.segment).or_insert_with(|| {
                        let path = dir.join(segments::file_name(chunk.segment));
                        (disk.create(&path).unwrap(), 0)
                    });
                    disk.write_at(file, *end, &chunk.bytes).unwrap();
                    *end += chunk.bytes.len() as u64;
                }
            }
            let image = disk.crash_image(|_, tail| next(tail as u64 + 1) as usize);
            let found: BTreeSet<u64> = recovered(&image).into_iter().collect();
            let must: BTreeSet<u64> = durable_live.difference(&acked_in_tail).copied().collect();
            assert!(
                must.is_subset(&found),
                "lost {:?}",
                must.difference(&found).collect::<Vec<_>>()
            );
            let unexpected: Vec<u64> = found
                .iter()
                .copied()
                .filter(|s| !durable_live.contains(s) && *s < first_unconfirmed)
                .collect();
            assert!(unexpected.is_empty(), "came back: {unexpected:?}");
        }
    }
}

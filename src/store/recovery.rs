//! What a shard starts with (`ShardRecovery`), and the start that rewrites
//! the message log into a new generation. A start normally keeps the log
//! where it is (`store::scan`); the rewrite below is the fallback for a
//! start with fewer shards than the log's directories hold live records
//! for. Blocking file I/O, like the definitions: no executor runs yet.
//!
//! # Generations
//!
//! ```text
//! <data-dir>/messages/CURRENT                 the live generation's number
//! <data-dir>/messages/<gen>/shard-<n>/<segment>.seg
//! ```
//!
//! When the rewrite runs, queues are placed as the definitions' restore
//! plan places them (round-robin), so it never appends to the previous
//! run's files:
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
//! The price is that the rewrite copies the backlog once: its time and
//! disk writes grow with the messages waiting in durable queues.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::{info, warn};

use crate::metadata::queue_args::QueueType;
use crate::metadata::vhost::{QueueMeta, DEFAULT_VHOST};
use crate::model::ids::QueueId;
use crate::model::message::Message;
use crate::store::disk::{Disk, StdDisk};
use crate::store::log::RecoveredSegment;
#[cfg(test)]
use crate::store::record::StoredPublish;
use crate::store::record::{self, ChunkRead, PublishHead, Record, DELAYED_QUEUE_ID};
use crate::store::scan::IndexEntry;
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
    /// Its sequence number in its queue: the one its record carries (the
    /// queue's removals of it name it so).
    pub(crate) seq: u64,
    /// Delivered before (with an ack pending) or requeued: redelivered.
    pub(crate) redelivered: bool,
    /// The segment of the new generation that holds it, where in it, and
    /// the record's length: a queue over its window keeps only these.
    pub(crate) segment: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) level: u8,
    pub(crate) expires_at_epoch_ms: Option<u64>,
    pub(crate) body_bytes: u64,
    /// None past its queue's window: the queue pages it in when its turn
    /// comes.
    pub(crate) message: Option<Message>,
}

/// A message a durable delayed exchange held, as the shard takes it back.
#[derive(Debug)]
pub(crate) struct RecoveredDelayed {
    /// Its id in the new generation (the sequence number of its record).
    pub(crate) id: u64,
    pub(crate) segment: u32,
    pub(crate) vhost: String,
    pub(crate) exchange: String,
    pub(crate) due_epoch_ms: u64,
    pub(crate) message: Message,
}

/// A queue's messages as recovery found them, in order.
#[derive(Debug)]
pub(crate) enum RecoveredMessages {
    /// Index entries in blocks (`store::scan`), live ones among removed
    /// ones; `count` live in all.
    Index {
        blocks: Vec<Vec<IndexEntry>>,
        count: u64,
    },
    /// Messages as such (rewritten, or read whole for a quorum queue).
    Loaded(Vec<RecoveredMessage>),
}

/// A durable queue's messages, as its shard restores them.
#[derive(Debug)]
pub(crate) struct RecoveredQueue {
    pub(crate) id: QueueId,
    /// Past every sequence number a record of the queue carries.
    pub(crate) next_seq: u64,
    pub(crate) messages: RecoveredMessages,
}

impl RecoveredQueue {
    /// How many messages come back.
    pub(crate) fn len(&self) -> u64 {
        match &self.messages {
            RecoveredMessages::Index { count, .. } => *count,
            RecoveredMessages::Loaded(messages) => messages.len() as u64,
        }
    }

    /// The messages in order; each block of index entries is freed once
    /// taken, so that the queue's entries and the scan's are not both held
    /// whole.
    pub(crate) fn into_messages(self) -> Box<dyn Iterator<Item = RecoveredMessage>> {
        match self.messages {
            RecoveredMessages::Index { blocks, .. } => Box::new(
                blocks
                    .into_iter()
                    .flat_map(|block| block.into_iter().filter_map(IndexEntry::live_recovered)),
            ),
            RecoveredMessages::Loaded(messages) => Box::new(messages.into_iter()),
        }
    }
}

/// What one shard starts with.
#[derive(Debug, Default)]
pub(crate) struct ShardRecovery {
    /// `messages/<gen>/shard-<n>`: where the shard's store writes.
    pub(crate) dir: PathBuf,
    /// Each queue's messages, in order.
    pub(crate) queues: Vec<RecoveredQueue>,
    /// The segment files there are: the store's next segment follows.
    pub(crate) segments: Vec<RecoveredSegment>,
    /// Messages held by delayed exchanges (all on shard 0).
    pub(crate) delayed: Vec<RecoveredDelayed>,
    /// Live records no queue takes back (queue id, sequence number,
    /// segment): the shard appends a removal for each.
    pub(crate) void: Vec<(u64, u64, u32)>,
    /// At least the highest queue id a record of the log carries (any
    /// shard's): the store carries it on for its clean-stop index.
    pub(crate) queue_id_max: u64,
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
    window_bytes: u64,
) -> io::Result<Vec<ShardRecovery>> {
    recover_on(
        &StdDisk,
        data_dir,
        queues,
        shard_count,
        segment_size,
        window_bytes,
    )
}

/// [`recover`] on any [`Disk`]. Each queue gets the bodies of its first
/// `window_bytes` of messages (quorum queues all of theirs); the rest come
/// as index entries, to be paged in.
pub(crate) fn recover_on<D: Disk>(
    disk: &D,
    data_dir: &Path,
    queues: &[QueueMeta],
    shard_count: usize,
    segment_size: u64,
    window_bytes: u64,
) -> io::Result<Vec<ShardRecovery>> {
    let root = data_dir.join(DIR_NAME);
    disk.create_dir_all(&root)?;
    // On a fresh node `messages` is new: its name must be durable before
    // anything under it can be.
    disk.sync_dir(data_dir)?;
    let current = read_current(disk, &root)?;
    remove_other_generations(disk, &root, current)?;

    let mut replayed = Replayed::default();
    if let Some(generation) = current {
        replay_generation(disk, &root.join(generation.to_string()), &mut replayed)?;
    }

    // The queues of this run, by vhost and name.
    let by_name: HashMap<(&str, &str), &QueueMeta> = queues
        .iter()
        .filter(|q| q.durable)
        .map(|q| ((q.vhost.as_str(), q.name.as_str()), q))
        .collect();
    let next = current.map_or(1, |g| g + 1);
    let mut shards: Vec<ShardRecovery> = (0..shard_count)
        .map(|n| ShardRecovery {
            dir: shard_dir(data_dir, next, n),
            queue_id_max: queues.iter().map(|q| q.id.0).max().unwrap_or(0),
            ..Default::default()
        })
        .collect();
    // Each surviving message, in its queue's order: which queue of which
    // shard, its place there, and whether its body comes into memory.
    let mut items: Vec<Vec<Item>> = (0..shard_count).map(|_| Vec::new()).collect();
    let mut slots: HashMap<u64, (usize, usize)> = HashMap::new();
    let mut kept_bytes: HashMap<u64, u64> = HashMap::new();
    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    let survivors = std::mem::take(&mut replayed.live);
    let mut delayed_count = 0u64;
    for ((queue_id, _), survivor) in survivors {
        let (vhost, name) = &replayed.names[survivor.queue as usize];
        if queue_id == DELAYED_QUEUE_ID {
            // Held by a delayed exchange: shard 0 holds it again (whether
            // its exchange still exists is for the shard to say).
            delayed_count += 1;
            items[0].push(Item {
                survivor,
                queue: DELAYED_QUEUE_ID,
                slot: usize::MAX,
                seq: delayed_count,
                keep: true,
            });
            continue;
        }
        let Some(meta) = by_name.get(&(vhost.as_str(), name.as_str())) else {
            *dropped.entry(name.clone()).or_default() += 1;
            continue;
        };
        let shard = meta.shard.index();
        let Some(shard_items) = items.get_mut(shard) else {
            continue;
        };
        let (slot, count) = slots.entry(meta.id.0).or_insert_with(|| {
            shards[shard].queues.push(RecoveredQueue {
                id: meta.id,
                next_seq: 1,
                messages: RecoveredMessages::Loaded(Vec::new()),
            });
            (shards[shard].queues.len() - 1, 0)
        });
        let kept = kept_bytes.entry(meta.id.0).or_default();
        let keep = *kept < window_bytes || meta.args.queue_type == QueueType::Quorum;
        *kept += u64::from(survivor.len);
        shard_items.push(Item {
            survivor,
            queue: meta.id.0,
            slot: *slot,
            seq: *count as u64 + 1,
            keep,
        });
        *count += 1;
    }
    for (queue, count) in &dropped {
        info!(queue = %queue, messages = count, "dropped stored messages of a queue that no longer exists");
    }

    let generation_dir = root.join(next.to_string());
    disk.create_dir_all(&generation_dir)?;
    let names: HashMap<u64, &str> = queues.iter().map(|q| (q.id.0, q.name.as_str())).collect();
    let replayed_names = &replayed.names;
    for (shard, mut shard_items) in shards.iter_mut().zip(items) {
        disk.create_dir_all(&shard.dir)?;
        // Read in the old files' order (each file once), written in it too.
        shard_items.sort_by_key(|i| (i.survivor.file, i.survivor.offset));
        let (live_per_segment, recovered) = write_segments(
            disk,
            &shard.dir,
            &replayed.files,
            &shard_items,
            &names,
            replayed_names,
            segment_size,
        )?;
        shard.segments = live_per_segment
            .iter()
            .enumerate()
            .map(|(at, &live)| RecoveredSegment {
                number: at as u32 + 1,
                live,
                oldest_ref: at as u32 + 1,
            })
            .collect();
        // Back into each queue's order.
        let mut placed: Vec<(usize, u64, RecoveredMessage)> = shard_items
            .iter()
            .zip(recovered)
            .map(|(item, message)| (item.slot, item.seq, message))
            .collect();
        placed.sort_by_key(|&(slot, seq, _)| (slot, seq));
        // Held delayed messages by id, so that each is found in O(1).
        let delayed_items: HashMap<u64, _> = shard_items
            .iter()
            .filter(|i| i.slot == usize::MAX)
            .map(|i| (i.seq, i))
            .collect();
        for (slot, seq, message) in placed {
            if slot == usize::MAX {
                let segment = message.segment;
                let (Some(body), Some(at)) = (message.message, message.expires_at_epoch_ms) else {
                    continue;
                };
                let item = delayed_items.get(&seq);
                let (vhost, exchange) = item
                    .map(|i| replayed_names[i.survivor.queue as usize].clone())
                    .unwrap_or_default();
                shard.delayed.push(RecoveredDelayed {
                    id: seq,
                    segment,
                    vhost,
                    exchange,
                    due_epoch_ms: at,
                    message: body,
                });
                continue;
            }
            let queue = &mut shard.queues[slot];
            queue.next_seq = queue.next_seq.max(message.seq + 1);
            if let RecoveredMessages::Loaded(messages) = &mut queue.messages {
                messages.push(message);
            }
        }
        disk.sync_dir(&shard.dir)?;
    }
    disk.sync_dir(&generation_dir)?;
    disk.sync_dir(&root)?;
    write_current(disk, &root, next)?;
    if let Some(old) = current {
        disk.remove_dir_all(&root.join(old.to_string()))?;
        disk.sync_dir(&root)?;
    }
    let total: u64 = shards
        .iter()
        .flat_map(|s| &s.segments)
        .map(|s| s.live)
        .sum();
    info!(
        generation = next,
        messages = total,
        dropped = dropped.values().sum::<u64>(),
        "message store recovered"
    );
    Ok(shards)
}

pub(crate) fn read_current<D: Disk>(disk: &D, root: &Path) -> io::Result<Option<u64>> {
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

pub(crate) fn write_current<D: Disk>(disk: &D, root: &Path, generation: u64) -> io::Result<()> {
    let temp = root.join(CURRENT_TEMP);
    let mut file = disk.create(&temp)?;
    disk.write_at(&mut file, 0, format!("{}\n", generation).as_bytes())?;
    disk.sync(&mut file)?;
    drop(file);
    disk.rename(&temp, &root.join(CURRENT))?;
    disk.sync_dir(root)
}

/// Generations other than the live one are what an interrupted start left.
pub(crate) fn remove_other_generations<D: Disk>(
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

/// A live publish found by the replay, by where its record is: its body
/// stays on disk until the rewrite copies it, so that recovering a
/// backlog larger than memory does not need its size in memory.
#[derive(Clone, Copy, Debug)]
struct Survivor {
    /// Its file in `Replayed::files`, and its record's place there.
    file: u32,
    offset: u64,
    len: u32,
    delivered: bool,
    /// Its queue's vhost and name in `Replayed::names`.
    queue: u32,
}

/// What the replay of a generation found.
#[derive(Default)]
struct Replayed {
    files: Vec<PathBuf>,
    names: Vec<(String, String)>,
    name_ids: HashMap<(String, String), u32>,
    live: BTreeMap<(u64, u64), Survivor>,
}

/// A surviving message on its way into the new generation.
#[derive(Debug)]
struct Item {
    survivor: Survivor,
    /// Its queue's id in this run, its index in the shard's recovered
    /// queues, and its new sequence number there.
    queue: u64,
    slot: usize,
    seq: u64,
    /// Its body comes into memory (within the queue's window).
    keep: bool,
}

/// Replays every shard directory of a generation into `replayed`.
fn replay_generation<D: Disk>(disk: &D, dir: &Path, replayed: &mut Replayed) -> io::Result<()> {
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
            let number = replayed.files.len() as u32;
            walk_segment(&path, &file, |offset, len, record| {
                apply_index(replayed, number, offset, len, record)
            });
            replayed.files.push(path);
        }
    }
    Ok(())
}

fn apply_index(replayed: &mut Replayed, file: u32, offset: u64, len: u32, record: Record) {
    match record {
        Record::Publish(publish) if publish.transient => {}
        Record::Publish(publish) => {
            let key = (publish.vhost, publish.queue_name);
            let queue = match replayed.name_ids.get(&key) {
                Some(&id) => id,
                None => {
                    let id = replayed.names.len() as u32;
                    replayed.names.push(key.clone());
                    replayed.name_ids.insert(key, id);
                    id
                }
            };
            replayed.live.insert(
                (publish.queue_id, publish.seq),
                Survivor {
                    file,
                    offset,
                    len,
                    delivered: publish.delivered,
                    queue,
                },
            );
        }
        Record::Removal { queue_id, seq } => {
            replayed.live.remove(&(queue_id, seq));
        }
        Record::Delivered { queue_id, seq } => {
            if let Some(s) = replayed.live.get_mut(&(queue_id, seq)) {
                s.delivered = true;
            }
        }
    }
}

/// Applies a segment's good chunks to `live`, bodies and all (for tests
/// that check what a replay finds); stops at a bad one.
#[cfg(test)]
pub(crate) fn replay_segment(
    path: &Path,
    file: &Bytes,
    live: &mut BTreeMap<(u64, u64), StoredPublish>,
) {
    walk_segment(path, file, |_, _, record| apply(record, live));
}

/// Hands each record of a segment's good chunks to `each`, with its offset
/// in the file and its length; stops at a bad chunk, logged.
fn walk_segment(path: &Path, file: &Bytes, mut each: impl FnMut(u64, u32, Record)) {
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
                let payload_at = (at + record::CHUNK_HEADER_LEN) as u64;
                let mut records = Vec::new();
                match record::decode_records_at(payload, |offset, len, record| {
                    records.push((payload_at + offset as u64, len as u32, record))
                }) {
                    Ok(()) => {
                        for (offset, len, record) in records {
                            each(offset, len, record);
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

#[cfg(test)]
fn apply(record: Record, live: &mut BTreeMap<(u64, u64), StoredPublish>) {
    match record {
        Record::Publish(publish) if publish.transient => {}
        Record::Publish(mut publish) => {
            publish.message.own_body();
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

/// A shard's segments in the new generation: the surviving messages of its
/// queues, read from the old files in `items`' order (each old file read
/// once, whole) and written in that order with their queues' new ids and
/// sequence numbers, a new segment every `segment_size` bytes (so that the
/// backlog's space is given back segment by segment as it is consumed).
/// Returns the live messages per segment, and each item's message as its
/// queue takes it back (its body only if `keep`).
fn write_segments<D: Disk>(
    disk: &D,
    dir: &Path,
    files: &[PathBuf],
    items: &[Item],
    names: &HashMap<u64, &str>,
    replayed_names: &[(String, String)],
    segment_size: u64,
) -> io::Result<(Vec<u64>, Vec<RecoveredMessage>)> {
    let mut live_per_segment: Vec<u64> = Vec::new();
    let mut recovered = Vec::with_capacity(items.len());
    let mut file: Option<D::File> = None;
    let mut file_bytes = 0u64;
    let mut chunk = Vec::new();
    record::open_chunk(&mut chunk);
    let mut source: Option<(u32, Bytes)> = None;
    for item in items {
        let s = item.survivor;
        if source.as_ref().is_none_or(|(n, _)| *n != s.file) {
            let path = files.get(s.file as usize).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "a record of an unknown file")
            })?;
            source = Some((s.file, Bytes::from(disk.read(path)?)));
        }
        let Some((_, old)) = source.as_ref() else {
            continue;
        };
        let end = s.offset as usize + s.len as usize;
        let stored = old
            .get(s.offset as usize..end)
            .ok_or("a record past the end of its file")
            .and_then(|_| record::decode_publish(old.slice(s.offset as usize..end)))
            .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))?;
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
        let name = if item.queue == DELAYED_QUEUE_ID {
            // A delayed exchange's message keeps its exchange's name.
            replayed_names[s.queue as usize].1.as_str()
        } else {
            names.get(&item.queue).copied().unwrap_or_default()
        };
        let before = chunk.len();
        record::put_publish(
            &mut chunk,
            &PublishHead {
                queue_id: item.queue,
                seq: item.seq,
                delivered: s.delivered,
                transient: false,
                level: stored.level,
                expires_at_epoch_ms: stored.expires_at_epoch_ms,
                vhost: DEFAULT_VHOST,
                queue_name: name,
                message: &stored.message,
            },
        );
        let mut message = stored.message;
        let body_bytes = message.body.len() as u64;
        recovered.push(RecoveredMessage {
            seq: item.seq,
            redelivered: s.delivered,
            segment: live_per_segment.len() as u32,
            // Chunks are written back to back, each padded to ALIGNMENT.
            offset: file_bytes + before as u64,
            len: (chunk.len() - before) as u32,
            level: stored.level,
            expires_at_epoch_ms: stored.expires_at_epoch_ms,
            body_bytes,
            message: item.keep.then(|| {
                // Its own copy: a slice would keep the whole old file.
                message.own_body();
                message
            }),
        });
        if let Some(count) = live_per_segment.last_mut() {
            *count += 1;
        }
        if chunk.len() >= CHUNK_BYTES {
            if let Some(f) = file.as_mut() {
                file_bytes += write_chunk(disk, f, file_bytes, &mut chunk)?;
            }
        }
    }
    if let Some(mut last) = file.take() {
        write_chunk(disk, &mut last, file_bytes, &mut chunk)?;
        disk.sync(&mut last)?;
    }
    Ok((live_per_segment, recovered))
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
    use crate::model::ids::ShardId;
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
            vhost: ShortStr::from(DEFAULT_VHOST),
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

    /// The sequence numbers a start on `disk` gives back, in queue order:
    /// a start in place (`store::scan`), as the broker makes.
    fn recovered(disk: &MemDisk) -> Vec<u64> {
        crate::store::scan::tests::start(disk, 1)
            .into_iter()
            .flat_map(|s| s.queues)
            .flat_map(|q| q.into_messages().map(|m| m.seq))
            .collect()
    }

    /// The first start: an empty generation 1 for the store to write into.
    fn fresh_store_dir(disk: &MemDisk) -> PathBuf {
        // The data directory exists before the broker starts.
        disk.create_dir_all(&data_dir()).unwrap();
        disk.sync_dir(Path::new("/")).unwrap();
        crate::store::scan::tests::start(disk, 1)[0].dir.clone()
    }

    /// The rewrite (a start with fewer shards than the logs): with a
    /// window, a queue gets the bodies of its first messages only; the rest
    /// are index entries whose places in the new generation hold exactly
    /// their records (as the pager reads them), in queue order.
    #[test]
    fn past_the_window_messages_come_back_as_index_entries() {
        let disk = MemDisk::new();
        let dir = fresh_store_dir(&disk);
        let mut store: MessageStore<u64> = MessageStore::new(SEGMENT_SIZE, &[]);
        let mut files = BTreeMap::new();
        for seq in 1..=200 {
            let segment = publish(&mut store, seq);
            if seq % 10 == 0 {
                store.append_removal(1, seq, segment);
            }
        }
        let mut batch = store.take_batch().unwrap();
        append_batch(&disk, &dir, &mut files, &mut batch, 4096).unwrap();
        let shards =
            recover_on(&disk, &data_dir(), &[queue(1, "q")], 1, SEGMENT_SIZE, 4096).unwrap();
        let RecoveredMessages::Loaded(messages) = &shards[0].queues[0].messages else {
            panic!("a rewrite gives messages, not index entries");
        };
        let expected: Vec<u64> = (1..=200).filter(|s| s % 10 != 0).collect();
        assert_eq!(messages.len(), expected.len());
        let kept = messages.iter().take_while(|m| m.message.is_some()).count();
        assert!(kept > 0 && kept < messages.len() / 2, "{kept} kept");
        assert!(messages[kept..].iter().all(|m| m.message.is_none()));
        for (at, (m, &old_seq)) in messages.iter().zip(&expected).enumerate() {
            let path = shards[0].dir.join(segments::file_name(m.segment));
            let mut buf = vec![0u8; m.len as usize];
            assert_eq!(disk.read_at(&path, m.offset, &mut buf).unwrap(), buf.len());
            let stored = record::decode_publish(Bytes::from(buf)).unwrap();
            assert_eq!((stored.queue_id, stored.seq), (1, at as u64 + 1));
            assert_eq!(stored.message.body, message(old_seq).body);
            assert_eq!(m.body_bytes, stored.message.body.len() as u64);
        }
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

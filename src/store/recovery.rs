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
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::{info, warn};

use crate::metadata::vhost::{QueueMeta, DEFAULT_VHOST};
use crate::model::ids::{QueueId, ShardId};
use crate::model::message::Message;
use crate::store::record::{self, ChunkRead, PublishHead, Record, StoredPublish};
use crate::store::segments;

pub const DIR_NAME: &str = "messages";
const CURRENT: &str = "CURRENT";
const CURRENT_TEMP: &str = "CURRENT.tmp";
/// Recovered messages are written in chunks of about this size.
const CHUNK_BYTES: usize = 4 << 20;
/// The alignment recovery pads chunks to (what O_DIRECT needs on any disk).
const ALIGNMENT: usize = 4096;

/// A message of a durable queue, as the queue takes it back at start.
#[derive(Debug)]
pub struct RecoveredMessage {
    /// Delivered before (with an ack pending) or requeued: redelivered.
    pub redelivered: bool,
    /// The segment of the new generation that holds it.
    pub segment: u32,
    pub level: u8,
    pub expires_at_epoch_ms: Option<u64>,
    pub message: Message,
}

/// What one shard starts with.
#[derive(Debug, Default)]
pub struct ShardRecovery {
    /// `messages/<gen>/shard-<n>`: where the shard's store writes.
    pub dir: PathBuf,
    /// Each queue's messages, in order.
    pub queues: Vec<(QueueId, Vec<RecoveredMessage>)>,
    /// Messages in segments 1, 2, ...: the store's next segment follows.
    pub live_per_segment: Vec<u64>,
}

pub fn shard_dir(data_dir: &Path, generation: u64, shard: usize) -> PathBuf {
    data_dir
        .join(DIR_NAME)
        .join(generation.to_string())
        .join(format!("shard-{}", shard))
}

/// Reads the last generation, writes the next, switches to it. `queues`
/// are the queues this run restores (with their new ids and shards).
pub fn recover(
    data_dir: &Path,
    queues: &[QueueMeta],
    shard_count: usize,
    segment_size: u64,
) -> io::Result<Vec<ShardRecovery>> {
    let root = data_dir.join(DIR_NAME);
    fs::create_dir_all(&root)?;
    let current = read_current(&root)?;
    remove_other_generations(&root, current)?;

    let mut survivors: BTreeMap<(u64, u64), StoredPublish> = BTreeMap::new();
    if let Some(generation) = current {
        replay_generation(&root.join(generation.to_string()), &mut survivors)?;
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
    fs::create_dir_all(&generation_dir)?;
    let names: HashMap<u64, &str> = queues.iter().map(|q| (q.id.0, q.name.as_str())).collect();
    for shard in &mut shards {
        fs::create_dir_all(&shard.dir)?;
        shard.live_per_segment =
            write_segments(&shard.dir, &mut shard.queues, &names, segment_size)?;
        sync_dir(&shard.dir)?;
    }
    sync_dir(&generation_dir)?;
    sync_dir(&root)?;
    write_current(&root, next)?;
    if let Some(old) = current {
        fs::remove_dir_all(root.join(old.to_string()))?;
        sync_dir(&root)?;
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

fn read_current(root: &Path) -> io::Result<Option<u64>> {
    match fs::read_to_string(root.join(CURRENT)) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} does not hold a generation number: {:?}", CURRENT, text),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_current(root: &Path, generation: u64) -> io::Result<()> {
    let temp = root.join(CURRENT_TEMP);
    let mut file = fs::File::create(&temp)?;
    file.write_all(format!("{}\n", generation).as_bytes())?;
    file.sync_data()?;
    drop(file);
    fs::rename(&temp, root.join(CURRENT))?;
    sync_dir(root)
}

/// Generations other than the live one are what an interrupted start left.
fn remove_other_generations(root: &Path, current: Option<u64>) -> io::Result<()> {
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = match name.parse::<u64>() {
            Ok(generation) => Some(generation) != current,
            Err(_) => name == CURRENT_TEMP,
        };
        if stale {
            warn!(entry = %entry.path().display(), "removing what an interrupted start left in the message store");
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(())
}

/// Replays every shard directory of a generation into `live`.
fn replay_generation(dir: &Path, live: &mut BTreeMap<(u64, u64), StoredPublish>) -> io::Result<()> {
    let mut shard_dirs: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    shard_dirs.sort();
    for shard_dir in shard_dirs {
        let mut segments: Vec<(u32, PathBuf)> = fs::read_dir(&shard_dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let number = segments::parse_file_name(&e.file_name().to_string_lossy())?;
                Some((number, e.path()))
            })
            .collect();
        segments.sort();
        for (_, path) in segments {
            let file = Bytes::from(fs::read(&path)?);
            replay_segment(&path, &file, live);
        }
    }
    Ok(())
}

/// Applies a segment's good chunks to `live`; stops at a bad one.
pub fn replay_segment(path: &Path, file: &Bytes, live: &mut BTreeMap<(u64, u64), StoredPublish>) {
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
fn write_segments(
    dir: &Path,
    queues: &mut [(QueueId, Vec<RecoveredMessage>)],
    names: &HashMap<u64, &str>,
    segment_size: u64,
) -> io::Result<Vec<u64>> {
    let mut live_per_segment: Vec<u64> = Vec::new();
    let mut file: Option<fs::File> = None;
    let mut file_bytes = 0u64;
    let mut chunk = Vec::new();
    record::open_chunk(&mut chunk);
    for (queue, messages) in queues.iter_mut() {
        let name = names.get(&queue.0).copied().unwrap_or_default();
        for (at, m) in messages.iter_mut().enumerate() {
            if file.is_none() || file_bytes + chunk.len() as u64 >= segment_size {
                if let Some(full) = file.take() {
                    finish_segment(full, &mut chunk)?;
                }
                live_per_segment.push(0);
                let number = live_per_segment.len() as u32;
                file = Some(fs::File::create(dir.join(segments::file_name(number)))?);
                file_bytes = 0;
            }
            record::put_publish(
                &mut chunk,
                &PublishHead {
                    queue_id: queue.0,
                    seq: at as u64 + 1,
                    delivered: m.redelivered,
                    level: m.level,
                    expires_at_epoch_ms: m.expires_at_epoch_ms,
                    vhost: DEFAULT_VHOST,
                    queue_name: name,
                    message: &m.message,
                },
            );
            m.segment = live_per_segment.len() as u32;
            if let Some(count) = live_per_segment.last_mut() {
                *count += 1;
            }
            if chunk.len() >= CHUNK_BYTES {
                if let Some(f) = file.as_mut() {
                    file_bytes += write_chunk(f, &mut chunk)?;
                }
            }
        }
    }
    if let Some(last) = file.take() {
        finish_segment(last, &mut chunk)?;
    }
    Ok(live_per_segment)
}

/// Seals and writes the chunk in `chunk`, then opens the next one in it.
fn write_chunk(file: &mut fs::File, chunk: &mut Vec<u8>) -> io::Result<u64> {
    if chunk.len() <= record::CHUNK_HEADER_LEN {
        return Ok(0);
    }
    record::seal_chunk(chunk, ALIGNMENT);
    file.write_all(chunk)?;
    let written = chunk.len() as u64;
    chunk.clear();
    record::open_chunk(chunk);
    Ok(written)
}

fn finish_segment(mut file: fs::File, chunk: &mut Vec<u8>) -> io::Result<()> {
    write_chunk(&mut file, chunk)?;
    file.sync_data()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

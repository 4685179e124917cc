//! The shard's message log as the queues see it: records are encoded
//! straight into the current chunk (one growing buffer per group commit),
//! and each segment counts the live messages it holds. No I/O happens here:
//! the shard's store task (`shard`, through `store::segments`) takes the
//! pending chunks once per reactor turn, writes them with one write per
//! segment and one fdatasync, and then releases the publisher confirms that
//! waited for them.
//!
//! Appending is a few copies into a `Vec` that is reused from batch to
//! batch: no lock, no syscall and no allocation per message.
//!
//! Every chunk is padded to `CHUNK_ALIGNMENT` when written, so a record's
//! offset in its segment file is known as it is appended (`Location`):
//! a queue that pages a message out keeps only that, and the shard's
//! pager reads it back once `is_written` says it is on disk. The store
//! also holds the paging limits and the queues waiting for the pager
//! (`Paging`), and counts the paged messages per segment, since
//! compaction cannot copy a message it does not hold.
//!
//! # Reclaiming segments
//!
//! A segment file is deleted once none of its publishes is live. A removal
//! (or delivered) record in a later segment cancels a publish in an earlier
//! one, so a segment holding such records must outlive the segments they
//! point into: if it went first, a restart would find the publish without
//! its removal and bring an acknowledged message back. Each segment
//! remembers the oldest segment its records point into; it is deleted only
//! when it has no live messages and no segment from that oldest one up to
//! itself still exists. Deletions are made durable (directory fsync) before
//! segments that depended on them are considered.
//!
//! That rule alone lets one old message keep the whole log: the segment
//! after it holds acks pointing into it, the next one acks pointing into
//! that one, and so on. So when emptied segments pile up behind an old one
//! that still holds live messages, those few messages are copied forward
//! into the active segment (same queue id and sequence number; a replay
//! finds the newer copy) and the old segment goes once the copies are on
//! disk, freeing the chain behind it (`compaction_candidate`).

use std::collections::VecDeque;

use crate::model::ids::QueueId;
use crate::store::record::{self, PublishHead, CHUNK_ALIGNMENT};
use crate::util::signal::Notify;

/// A chunk grows to about this size before the next record starts another
/// (a write buffer larger than this buys nothing).
const CHUNK_BYTES_MAX: usize = 8 << 20;
/// Empty segments kept only because older ones still hold live messages,
/// before the oldest of those is compacted.
const PINNED_SEGMENTS_MAX: usize = 2;
/// Buffers kept for the next batches; larger ones are let go.
const SPARE_BUFFER_BYTES_MAX: usize = 16 << 20;

/// Records for one segment, not yet written.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) segment: u32,
    /// Where the chunk starts in its segment file: every chunk is padded
    /// to `CHUNK_ALIGNMENT`, so a record's place in the file is known as
    /// it is appended (a paged message is read back from there).
    pub(crate) at: u64,
    /// Header room (filled when sealed) and the records.
    pub(crate) bytes: Vec<u8>,
    /// Its header is filled and it is padded (`record::seal_chunk`, once:
    /// a batch whose write failed is written again as it is).
    pub(crate) sealed: bool,
}

/// What one group commit writes, and what waits for it.
#[derive(Debug)]
pub(crate) struct Batch<T> {
    pub(crate) chunks: Vec<Chunk>,
    /// The tokens given to `defer_confirm` before this batch was taken,
    /// handed back once it is on disk (publisher confirms and transaction
    /// commits, to the broker; the store never looks inside them).
    pub(crate) confirms: Vec<T>,
    pub(crate) records: u64,
    /// Whether the batch must be synced: false when it holds nothing but
    /// transient messages paged out, which no restart brings back and no
    /// confirm waits for (written, and read back, without an fdatasync).
    pub(crate) sync: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SegmentFate {
    Kept,
    Deleting,
    Deleted,
}

#[derive(Debug)]
struct Segment {
    number: u32,
    /// Publishes in this segment not yet removed.
    live: u64,
    /// The oldest segment a removal or delivered record in this one points
    /// into (its own number if none points further back).
    oldest_ref: u32,
    fate: SegmentFate,
    /// Its live messages were copied forward in this batch (see
    /// `append_moved`): the file must stay until that batch is on disk.
    moved_in_batch: u64,
    /// Its messages that queues hold only as an index entry (paged out):
    /// compaction cannot copy them forward without reading them, so it
    /// leaves a segment holding any alone.
    paged: u64,
}

/// A segment file the last run left, as recovery found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecoveredSegment {
    pub(crate) number: u32,
    /// Publishes in it that no later record removed.
    pub(crate) live: u64,
    /// The oldest segment its removal, delivered and moved records point
    /// into: it is deleted only after every segment from there on.
    pub(crate) oldest_ref: u32,
}

/// Where a record was appended: its segment, its offset in the segment
/// file and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) segment: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

/// How much of its queues a shard keeps in memory (`--queue-window`,
/// `--shard-window`), and the queues waiting for paged messages to be
/// read back (the shard's pager task serves them).
pub struct Paging {
    /// Bytes of ready messages a queue keeps in memory before it pages
    /// new ones out.
    pub queue_window_bytes: u64,
    /// Bytes of ready messages all queues of the shard keep in memory
    /// before every queue pages new ones out.
    pub shard_window_bytes: u64,
    /// The shard's queues' ready bytes in memory, as last added up (on
    /// the alarm check): queues page out while it is above the window.
    pub(crate) resident_bytes: u64,
    /// Queues that want paged messages read back, once each.
    pub(crate) wanted: Vec<QueueId>,
    /// Set when `wanted` gets a queue or a batch was written; the pager
    /// waits on it.
    pub(crate) wake: Notify,
}

impl std::fmt::Debug for Paging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paging")
            .field("queue_window_bytes", &self.queue_window_bytes)
            .field("shard_window_bytes", &self.shard_window_bytes)
            .field("resident_bytes", &self.resident_bytes)
            .field("wanted", &self.wanted.len())
            .finish()
    }
}

impl Default for Paging {
    fn default() -> Paging {
        Paging {
            queue_window_bytes: crate::config::QUEUE_WINDOW_BYTES,
            shard_window_bytes: crate::config::SHARD_WINDOW_BYTES,
            resident_bytes: 0,
            wanted: Vec::new(),
            wake: Notify::new(),
        }
    }
}

impl Paging {
    /// Whether a queue holding `queue_bytes` in memory pages a new message
    /// out rather than keep it.
    pub(crate) fn over_window(&self, queue_bytes: u64) -> bool {
        queue_bytes >= self.queue_window_bytes || self.resident_bytes >= self.shard_window_bytes
    }

    /// The queue has paged messages and room in its window to read some.
    pub(crate) fn want(&mut self, queue: QueueId) {
        self.wanted.push(queue);
        self.wake.notify();
    }
}

/// A chunk of `len` bytes (header included) as written: padded to the
/// chunk alignment.
fn padded(len: usize) -> u64 {
    (len.div_ceil(CHUNK_ALIGNMENT) * CHUNK_ALIGNMENT) as u64
}

/// Counters for the debug log line the store task writes.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StoreStats {
    pub(crate) fsyncs: u64,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) confirms: u64,
    /// Time spent writing and syncing batches, in microseconds.
    pub(crate) write_us: u64,
}

/// The shard's message log, in memory. `T` is whatever the caller wants
/// back once the records appended before it are durable (the broker's
/// confirm target): like the `drain_confirmed` of RabbitMQ's backing queue,
/// the store returns what it was given and never knows what it stands for.
pub struct MessageStore<T> {
    segment_size: u64,
    active: u32,
    /// Where the next chunk of the active segment starts: the padded
    /// sizes of its chunks closed so far.
    active_end: u64,
    /// Contiguous segment numbers, oldest first; deleted ones leave the front.
    segments: VecDeque<Segment>,
    chunks: Vec<Chunk>,
    spare: Vec<Vec<u8>>,
    waiting: Vec<T>,
    /// The last batch's confirm list, emptied, for the next one.
    spare_confirms: Vec<T>,
    pending_records: u64,
    /// Bytes of records appended and not yet written: the pending chunks,
    /// and the batch being written (`in_flight_bytes`). They count toward
    /// the memory alarm, so that a disk slower than the publishers blocks
    /// them rather than let the buffers grow.
    in_flight_bytes: u64,
    /// A record other than a transient message's page-out, or a confirm,
    /// was added since the last batch was taken: the next one is synced.
    pending_sync: bool,
    /// Whether the batch being written is synced (`Batch::sync`).
    in_flight_sync: bool,
    /// Batches taken and batches written so far: a batch's number is the
    /// value of `batches_taken` once it is taken.
    batches_taken: u64,
    batches_written: u64,
    /// Where the batch being written starts: records from there on are
    /// not on disk yet, so they are not read back.
    in_flight_from: Option<(u32, u64)>,
    /// Messages held only as index entries, in every segment.
    paged_total: u64,
    /// At least the highest queue id any record in the log carries (the
    /// start's, then every publish's): the clean-stop index records it, so
    /// that the next run never gives a new queue an id a record still has.
    pub(crate) queue_id_max: u64,
    pub paging: Paging,
    /// Set when records are pending; the store task waits on it.
    pub(crate) ready: Notify,
    pub(crate) stats: StoreStats,
}

impl<T> MessageStore<T> {
    /// A store whose segments 1, 2, ... were written at start with
    /// `recovered_live` messages each; new records go to the segment after
    /// them. Without any, segment 1 is the first one written.
    pub fn new(segment_size: u64, recovered_live: &[u64]) -> MessageStore<T> {
        let segments: Vec<RecoveredSegment> = recovered_live
            .iter()
            .enumerate()
            .map(|(at, &live)| RecoveredSegment {
                number: at as u32 + 1,
                live,
                oldest_ref: at as u32 + 1,
            })
            .collect();
        MessageStore::resume(segment_size, &segments)
    }

    /// A store that carries on the segment files the last run left (in
    /// ascending order; numbers missing between them were deleted): new
    /// records go to a new segment after the last one, never to a file a
    /// crash may have torn.
    pub(crate) fn resume(segment_size: u64, recovered: &[RecoveredSegment]) -> MessageStore<T> {
        debug_assert!(recovered.windows(2).all(|w| w[0].number < w[1].number));
        let mut segments = VecDeque::new();
        for found in recovered {
            let mut number = segments
                .back()
                .map_or(found.number, |s: &Segment| s.number + 1);
            while number < found.number {
                // A gap: deleted in an earlier run.
                segments.push_back(Segment {
                    number,
                    live: 0,
                    oldest_ref: number,
                    fate: SegmentFate::Deleted,
                    moved_in_batch: 0,
                    paged: 0,
                });
                number += 1;
            }
            segments.push_back(Segment {
                number: found.number,
                live: found.live,
                oldest_ref: found.oldest_ref.min(found.number),
                fate: SegmentFate::Kept,
                moved_in_batch: 0,
                paged: 0,
            });
        }
        let active = recovered.last().map_or(1, |s| s.number + 1);
        segments.push_back(Segment {
            number: active,
            live: 0,
            oldest_ref: active,
            fate: SegmentFate::Kept,
            moved_in_batch: 0,
            paged: 0,
        });
        MessageStore {
            segment_size: segment_size.max(record::BLOCK as u64),
            active,
            active_end: 0,
            segments,
            chunks: Vec::new(),
            spare: Vec::new(),
            waiting: Vec::new(),
            spare_confirms: Vec::new(),
            pending_records: 0,
            batches_taken: 0,
            batches_written: 0,
            in_flight_bytes: 0,
            pending_sync: false,
            in_flight_sync: false,
            in_flight_from: None,
            paged_total: 0,
            queue_id_max: 0,
            paging: Paging::default(),
            ready: Notify::new(),
            stats: StoreStats::default(),
        }
    }

    fn segment_mut(&mut self, number: u32) -> Option<&mut Segment> {
        let first = self.segments.front()?.number;
        let at = number.checked_sub(first)? as usize;
        self.segments.get_mut(at)
    }

    /// The chunk the next record goes into: a new segment once the active
    /// one is full, a new chunk when the segment changed or the chunk is big.
    fn chunk(&mut self) -> &mut Chunk {
        let open_len = match self.chunks.last() {
            Some(last) if last.segment == self.active => last.bytes.len() as u64,
            _ => 0,
        };
        if self.active_end + open_len >= self.segment_size {
            self.active += 1;
            self.active_end = 0;
            self.segments.push_back(Segment {
                number: self.active,
                live: 0,
                oldest_ref: self.active,
                fate: SegmentFate::Kept,
                moved_in_batch: 0,
                paged: 0,
            });
        }
        let fresh = match self.chunks.last() {
            None => {
                self.ready.notify();
                true
            }
            Some(last) if last.segment != self.active => true,
            Some(last) if last.bytes.len() >= CHUNK_BYTES_MAX => {
                // The full chunk is closed: the next starts after it.
                self.active_end += padded(last.bytes.len());
                true
            }
            Some(_) => false,
        };
        if fresh {
            let mut bytes = self.spare.pop().unwrap_or_default();
            bytes.clear();
            record::open_chunk(&mut bytes);
            self.chunks.push(Chunk {
                segment: self.active,
                at: self.active_end,
                bytes,
                sealed: false,
            });
        }
        self.pending_records += 1;
        let last = self.chunks.len() - 1;
        &mut self.chunks[last]
    }

    /// Appends a publish; returns the segment that holds it.
    pub(crate) fn append_publish(&mut self, head: &PublishHead) -> u32 {
        self.append_publish_at(head).segment
    }

    /// Appends a publish; returns where it is.
    pub(crate) fn append_publish_at(&mut self, head: &PublishHead) -> Location {
        self.pending_sync |= !head.transient;
        if head.queue_id != record::DELAYED_QUEUE_ID {
            self.queue_id_max = self.queue_id_max.max(head.queue_id);
        }
        let chunk = self.chunk();
        let before = chunk.bytes.len();
        record::put_publish(&mut chunk.bytes, head);
        let location = Location {
            segment: chunk.segment,
            offset: chunk.at + before as u64,
            len: (chunk.bytes.len() - before) as u32,
        };
        if let Some(segment) = self.segment_mut(location.segment) {
            segment.live += 1;
        }
        location
    }

    /// Whether the record at `location` is on disk, so that it may be read
    /// back: every batch before the one being written is.
    pub(crate) fn is_written(&self, location: Location) -> bool {
        let end = (location.segment, location.offset + u64::from(location.len));
        let from = match (self.in_flight_from, self.chunks.first()) {
            (Some(at), _) => at,
            (None, Some(chunk)) => (chunk.segment, chunk.at),
            (None, None) => return true,
        };
        end <= from
    }

    /// A queue now holds the message in `segment` as an index entry only.
    pub(crate) fn paged_out(&mut self, segment: u32) {
        self.paged_total += 1;
        if let Some(s) = self.segment_mut(segment) {
            s.paged += 1;
        }
    }

    /// A paged message of `segment` is in memory again, or gone.
    pub(crate) fn paged_in(&mut self, segment: u32) {
        self.paged_total = self.paged_total.saturating_sub(1);
        if let Some(s) = self.segment_mut(segment) {
            s.paged = s.paged.saturating_sub(1);
        }
    }

    /// The message `seq` of `queue_id`, stored in `segment`, is gone.
    pub(crate) fn append_removal(&mut self, queue_id: u64, seq: u64, segment: u32) {
        self.pending_sync = true;
        record::put_removal(&mut self.chunk().bytes, queue_id, seq);
        if let Some(s) = self.segment_mut(segment) {
            debug_assert!(s.live > 0, "a removal for a segment with no live message");
            s.live = s.live.saturating_sub(1);
        }
        self.refers_to(segment);
    }

    /// Copies a live message of an old segment (`from`) forward into the
    /// active one, as a publish record with the same queue id and sequence
    /// number: replaying both finds the message once, with the newer
    /// record's delivered flag. `from` loses the message without a removal
    /// record, so it may go once the batch holding the copy is on disk.
    /// Returns the message's new segment.
    pub(crate) fn append_moved(&mut self, head: &PublishHead, from: u32) -> u32 {
        let segment = self.append_publish(head);
        let batch = self.batches_taken + 1;
        if let Some(s) = self.segment_mut(from) {
            debug_assert!(s.live > 0, "a move out of a segment with no live message");
            s.live = s.live.saturating_sub(1);
            s.moved_in_batch = batch;
        }
        segment
    }

    /// A segment worth compacting, if any: when at least
    /// `PINNED_SEGMENTS_MAX` segments hold no live message but must stay
    /// because records in them point into older segments that still hold
    /// live ones, the oldest segment with live messages is the root of
    /// that chain. Copying its few live messages forward
    /// (`append_moved`) lets it and then the whole chain be deleted: one
    /// old message (a queue nobody consumes beside a busy one) cannot keep
    /// the whole log. The copy costs at most one segment per
    /// `PINNED_SEGMENTS_MAX` segments given back.
    pub(crate) fn compaction_candidate(&self) -> Option<u32> {
        // One compaction at a time: the last one's segments go first.
        if self
            .segments
            .iter()
            .any(|s| s.moved_in_batch > self.batches_written)
        {
            return None;
        }
        let root = self
            .segments
            .iter()
            .find(|s| s.fate == SegmentFate::Kept && s.live > 0 && s.number != self.active)?;
        if root.paged > 0 {
            // Its paged messages are not in memory to be copied: the
            // segment stays until they are consumed or read back.
            return None;
        }
        let pinned = self
            .segments
            .iter()
            .filter(|s| {
                s.number > root.number
                    && s.number != self.active
                    && s.fate == SegmentFate::Kept
                    && s.live == 0
            })
            .count();
        (pinned >= PINNED_SEGMENTS_MAX).then_some(root.number)
    }

    /// The message was handed to a consumer that must acknowledge it.
    pub(crate) fn append_delivered(&mut self, queue_id: u64, seq: u64, segment: u32) {
        self.pending_sync = true;
        record::put_delivered(&mut self.chunk().bytes, queue_id, seq);
        self.refers_to(segment);
    }

    fn refers_to(&mut self, segment: u32) {
        let active = self.active;
        if let Some(s) = self.segment_mut(active) {
            s.oldest_ref = s.oldest_ref.min(segment);
        }
    }

    /// Sends this confirm once the records appended so far are on disk.
    pub(crate) fn defer_confirm(&mut self, target: T) {
        if self.waiting.is_empty() && self.chunks.is_empty() {
            self.ready.notify();
        }
        self.pending_sync = true;
        self.waiting.push(target);
    }

    /// True if nothing waits to be written.
    pub(crate) fn is_idle(&self) -> bool {
        self.chunks.is_empty() && self.waiting.is_empty()
    }

    /// Everything appended since the last batch: the next group commit.
    pub(crate) fn take_batch(&mut self) -> Option<Batch<T>> {
        if self.is_idle() {
            return None;
        }
        let records = std::mem::take(&mut self.pending_records);
        self.batches_taken += 1;
        // The last chunk of the active segment is closed now: the next
        // one starts after its padding.
        if let Some(last) = self.chunks.last() {
            if last.segment == self.active {
                self.active_end += padded(last.bytes.len());
            }
        }
        self.in_flight_from = self.chunks.first().map(|c| (c.segment, c.at));
        self.in_flight_bytes = self.chunks.iter().map(|c| c.bytes.len() as u64).sum();
        self.in_flight_sync = self.pending_sync;
        Some(Batch {
            chunks: std::mem::take(&mut self.chunks),
            confirms: std::mem::replace(
                &mut self.waiting,
                std::mem::take(&mut self.spare_confirms),
            ),
            records,
            sync: std::mem::take(&mut self.pending_sync),
        })
    }

    /// A batch was written (and synced, if it asked to be): its buffers
    /// come back for reuse.
    pub(crate) fn batch_written(&mut self, buffers: impl IntoIterator<Item = Vec<u8>>, bytes: u64) {
        self.stats.fsyncs += u64::from(self.in_flight_sync);
        self.stats.bytes += bytes;
        self.batches_written += 1;
        self.in_flight_from = None;
        self.in_flight_bytes = 0;
        if self.paged_total > 0 {
            // Paged messages of this batch may be read back now.
            self.paging.wake.notify();
        }
        for buffer in buffers {
            if self.spare.len() < 2 && buffer.capacity() <= SPARE_BUFFER_BYTES_MAX {
                self.spare.push(buffer);
            }
        }
    }

    /// A batch's confirm list, once sent, comes back for the next batch.
    pub(crate) fn recycle_confirms(&mut self, mut confirms: Vec<T>) {
        confirms.clear();
        self.spare_confirms = confirms;
    }

    /// Bytes of records not on disk yet: those appended since the last
    /// batch was taken, and the batch being written (held, and written
    /// again, while the disk refuses it). Summed over the pending chunks:
    /// called on the alarm check, not per message.
    pub(crate) fn unwritten_bytes(&self) -> u64 {
        let pending: u64 = self.chunks.iter().map(|c| c.bytes.len() as u64).sum();
        pending + self.in_flight_bytes
    }

    /// The active segment (records go there; it is never reclaimed).
    #[cfg(test)]
    pub(crate) fn active_segment(&self) -> u32 {
        self.active
    }

    /// Segments that may be deleted now; they are marked as being deleted.
    pub(crate) fn reclaimable(&mut self) -> Vec<u32> {
        let mut out = Vec::new();
        let first = match self.segments.front() {
            Some(s) => s.number,
            None => return out,
        };
        for at in 0..self.segments.len() {
            let s = &self.segments[at];
            if s.fate != SegmentFate::Kept || s.live > 0 || s.number == self.active {
                continue;
            }
            if s.moved_in_batch > self.batches_written {
                continue;
            }
            if self.chunks.iter().any(|c| c.segment == s.number) {
                continue;
            }
            // The batch being written (or written again after a failure:
            // reclaiming is how a full disk gets space back) goes to this
            // segment or an older one's successors: their files stay.
            if self
                .in_flight_from
                .is_some_and(|(segment, _)| s.number >= segment)
            {
                continue;
            }
            let from = s.oldest_ref.max(first);
            let older_all_gone = (from..s.number)
                .all(|n| self.segments[(n - first) as usize].fate == SegmentFate::Deleted);
            if older_all_gone {
                out.push(s.number);
            }
        }
        for &number in &out {
            if let Some(s) = self.segment_mut(number) {
                s.fate = SegmentFate::Deleting;
            }
        }
        out
    }

    /// The segment's file is gone (and the directory synced).
    pub(crate) fn segment_deleted(&mut self, number: u32) {
        if let Some(s) = self.segment_mut(number) {
            s.fate = SegmentFate::Deleted;
        }
        while self
            .segments
            .front()
            .is_some_and(|s| s.fate == SegmentFate::Deleted)
        {
            self.segments.pop_front();
        }
    }

    /// Whether segment `number` is still there (not deleted).
    pub(crate) fn has_segment(&self, number: u32) -> bool {
        let Some(first) = self.segments.front() else {
            return false;
        };
        number
            .checked_sub(first.number)
            .and_then(|at| self.segments.get(at as usize))
            .is_some_and(|s| s.fate != SegmentFate::Deleted)
    }

    /// Each segment not deleted: its number, its live publishes, the
    /// oldest segment its records point into, and whether it is kept
    /// (not being deleted). For the clean-stop index, once the store is
    /// idle.
    pub(crate) fn segment_states(&self) -> impl Iterator<Item = (u32, u64, u32, bool)> + '_ {
        self.segments
            .iter()
            .filter(|s| s.fate != SegmentFate::Deleted)
            .map(|s| (s.number, s.live, s.oldest_ref, s.fate == SegmentFate::Kept))
    }

    /// Segments not deleted yet (for logs and tests).
    pub(crate) fn segment_count(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| s.fate != SegmentFate::Deleted)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::message::Message;

    /// The tests' confirm token: a number.
    type Store = MessageStore<u64>;

    fn publish(store: &mut Store, seq: u64, message: &Message) -> u32 {
        store.append_publish(&PublishHead {
            queue_id: 1,
            seq,
            delivered: false,
            transient: false,
            level: 0,
            expires_at_epoch_ms: None,
            vhost: "/",
            queue_name: "q",
            message,
        })
    }

    fn moved(store: &mut Store, seq: u64, message: &Message, from: u32) -> u32 {
        store.append_moved(
            &PublishHead {
                queue_id: 1,
                seq,
                delivered: false,
                transient: false,
                level: 0,
                expires_at_epoch_ms: None,
                vhost: "/",
                queue_name: "q",
                message,
            },
            from,
        )
    }

    /// One message that stays while others come and go must not keep every
    /// segment written after it.
    #[test]
    fn one_old_message_does_not_keep_the_log() {
        let m = message();
        let mut store = Store::new(4096, &[]);
        let mut old_segment = publish(&mut store, 0, &m);
        let mut files: std::collections::BTreeSet<u32> = [old_segment].into();
        let mut most = 0;
        let mut segment_of = std::collections::HashMap::new();
        for seq in 1..2000u64 {
            let segment = publish(&mut store, seq, &m);
            segment_of.insert(seq, segment);
            files.insert(segment);
            // Acked a little later: the removal often lands in the next segment.
            if seq > 3 {
                let acked = seq - 3;
                store.append_removal(1, acked, segment_of[&acked]);
            }
            flush(&mut store);
            loop {
                let dead = store.reclaimable();
                if dead.is_empty() {
                    break;
                }
                for number in dead {
                    files.remove(&number);
                    store.segment_deleted(number);
                }
            }
            if let Some(from) = store.compaction_candidate() {
                assert_eq!(from, old_segment);
                old_segment = moved(&mut store, 0, &m, from);
                files.insert(old_segment);
            }
            most = most.max(files.len());
        }
        // The old message's segment, two emptied ones, the one being
        // written, and those whose records point into it.
        assert!(most <= 8, "{most} segment files at once");
        assert!(files.len() <= 8, "{files:?}");
    }

    fn message() -> Message {
        Message::new(
            "",
            "q",
            &Default::default(),
            bytes::Bytes::from(vec![7u8; 1000]),
            None,
        )
    }

    fn flush(store: &mut Store) {
        if let Some(batch) = store.take_batch() {
            store.batch_written(batch.chunks.into_iter().map(|c| c.bytes), 0);
        }
    }

    #[test]
    fn segments_roll_and_are_reclaimed_when_empty() {
        let m = message();
        let mut store = Store::new(4096, &[]);
        let segments: Vec<u32> = (1..=20).map(|seq| publish(&mut store, seq, &m)).collect();
        assert!(segments.windows(2).all(|w| w[0] <= w[1]));
        assert!(*segments.last().unwrap() >= 4, "{segments:?}");
        flush(&mut store);
        assert!(store.reclaimable().is_empty(), "all hold live messages");
        // Ack every message of segment 1 but the last one.
        let in_first: Vec<u64> = (1..=20)
            .filter(|&s| segments[s as usize - 1] == 1)
            .collect();
        for &seq in &in_first[..in_first.len() - 1] {
            store.append_removal(1, seq, 1);
        }
        flush(&mut store);
        assert!(store.reclaimable().is_empty());
        store.append_removal(1, *in_first.last().unwrap(), 1);
        flush(&mut store);
        assert_eq!(store.reclaimable(), vec![1]);
        store.segment_deleted(1);
        assert!(store.reclaimable().is_empty());
    }

    #[test]
    fn a_segment_with_removals_outlives_the_segment_they_point_into() {
        let m = message();
        let mut store = Store::new(4096, &[]);
        // Segment 1: one message that stays for now, then fill it.
        assert_eq!(publish(&mut store, 1, &m), 1);
        let mut seq = 2;
        while publish(&mut store, seq, &m) == 1 {
            seq += 1;
        }
        // `seq` is the first message of segment 2.
        let second = seq;
        for s in 2..second {
            store.append_removal(1, s, 1);
        }
        // Ack the second segment's message; its removal points into 2.
        store.append_removal(1, second, 2);
        // Roll on: segment 3 and 4 get messages that are acked at once.
        let mut next = second + 1;
        while store.active_segment() < 4 {
            let segment = publish(&mut store, next, &m);
            store.append_removal(1, next, segment);
            next += 1;
        }
        flush(&mut store);
        // Segment 1 still holds message 1. Segment 2's removals point into
        // 1, so it must stay too; segment 3 points only into 2 and 3.
        let deletable = store.reclaimable();
        assert!(
            !deletable.contains(&1) && !deletable.contains(&2),
            "{deletable:?}"
        );
        store.append_removal(1, 1, 1);
        flush(&mut store);
        let deletable = store.reclaimable();
        assert_eq!(deletable, vec![1]);
        store.segment_deleted(1);
        let deletable = store.reclaimable();
        assert!(deletable.contains(&2), "{deletable:?}");
    }

    /// The reclaim rule against a simulated disk: random publishes,
    /// removals and delivered marks, batches "written" to in-memory segment
    /// files, segments deleted whenever `reclaimable` allows, and a crash
    /// after a random batch. Replaying what is left must give exactly the
    /// messages live at that batch: deleting a segment never resurrects a
    /// removed message nor loses a live one.
    #[test]
    fn reclaiming_never_changes_what_a_replay_finds() {
        use crate::store::record::StoredPublish;
        use std::collections::{BTreeMap, BTreeSet};
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let m = Message::new(
            "",
            "q",
            &Default::default(),
            bytes::Bytes::from_static(b"x"),
            None,
        );
        for _run in 0..100 {
            let mut store = Store::new(1024 + next(4096), &[]);
            let mut files: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
            // seq -> segment, for messages live in memory.
            let mut live: BTreeMap<u64, u32> = BTreeMap::new();
            let mut durable_live: BTreeSet<u64> = BTreeSet::new();
            let mut seq = 0u64;
            let ops = 200 + next(2000);
            let crash_after = next(ops);
            for op in 0..ops {
                match next(10) {
                    0..=4 => {
                        seq += 1;
                        live.insert(seq, publish(&mut store, seq, &m));
                    }
                    5..=7 if !live.is_empty() => {
                        // Mostly old messages, sometimes recent ones.
                        let at = if next(2) == 0 {
                            next(live.len().min(5) as u64) as usize
                        } else {
                            next(live.len() as u64) as usize
                        };
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
                if next(8) == 0 || op + 1 == ops {
                    if let Some(mut batch) = store.take_batch() {
                        for chunk in &mut batch.chunks {
                            record::seal_chunk(&mut chunk.bytes, record::BLOCK);
                            files
                                .entry(chunk.segment)
                                .or_default()
                                .extend_from_slice(&chunk.bytes);
                        }
                        store.batch_written(batch.chunks.into_iter().map(|c| c.bytes), 0);
                        durable_live = live.keys().copied().collect();
                    }
                    loop {
                        let dead = store.reclaimable();
                        if dead.is_empty() {
                            break;
                        }
                        for number in dead {
                            files.remove(&number);
                            store.segment_deleted(number);
                        }
                    }
                    if let Some(from) = store.compaction_candidate() {
                        for (&s, segment) in live.iter_mut() {
                            if *segment == from {
                                *segment = moved(&mut store, s, &m, from);
                            }
                        }
                    }
                }
                if op == crash_after {
                    break;
                }
            }
            let mut replayed: BTreeMap<(u64, u64), StoredPublish> = BTreeMap::new();
            for (number, bytes) in &files {
                let path = std::path::PathBuf::from(format!("segment-{number}"));
                crate::store::recovery::replay_segment(
                    &path,
                    &bytes::Bytes::from(bytes.clone()),
                    &mut replayed,
                );
            }
            let found: BTreeSet<u64> = replayed.keys().map(|&(_, s)| s).collect();
            assert_eq!(found, durable_live);
        }
    }

    /// While a batch is being written (or written again after a write
    /// error), the segments it goes to are not reclaimed, even emptied;
    /// older emptied ones are, so that a full disk gets space back.
    #[test]
    fn segments_of_the_batch_being_written_are_not_reclaimed() {
        let m = message();
        let mut store = Store::new(64 * 1024, &[]);
        let mut segment_of = Vec::new();
        let mut seq = 0;
        while publish(&mut store, seq, &m) == 1 {
            segment_of.push((seq, 1));
            seq += 1;
        }
        segment_of.push((seq, 2));
        flush(&mut store);
        // Segment 2 is filled, segment 3 begun, and that batch is taken
        // (being written, or refused and held).
        loop {
            seq += 1;
            let segment = publish(&mut store, seq, &m);
            if segment == 3 {
                break;
            }
            segment_of.push((seq, segment));
        }
        let batch = store.take_batch().unwrap();
        // Everything in 1 and 2 is acknowledged meanwhile (the removals go
        // to segment 3's next chunk).
        for &(s, segment) in &segment_of {
            store.append_removal(1, s, segment);
        }
        assert_eq!(store.reclaimable(), vec![1]);
        store.segment_deleted(1);
        assert!(store.reclaimable().is_empty(), "segment 2 is being written");
        store.batch_written(batch.chunks.into_iter().map(|c| c.bytes), 0);
        flush(&mut store);
        assert_eq!(store.reclaimable(), vec![2]);
    }

    #[test]
    fn recovered_segments_are_reclaimed_one_by_one() {
        let mut store = Store::new(1 << 20, &[3, 1]);
        assert_eq!(store.active_segment(), 3);
        store.append_removal(9, 4, 2);
        flush(&mut store);
        assert_eq!(store.reclaimable(), vec![2]);
        for seq in 1..=3 {
            store.append_removal(9, seq, 1);
        }
        flush(&mut store);
        assert_eq!(store.reclaimable(), vec![1]);
    }
}

//! `<data-dir>/definitions.log`: the durable definition changes made since
//! `definitions.json` was last written, so that a durable declare costs a
//! record, not a rewrite of every definition.
//!
//! The metadata owner appends one record per durable change (a
//! [`DefChange`]: an exchange, queue or binding declared or deleted, by
//! name), a batch of requests at a time with one fdatasync before it
//! answers them (group commit). When the log has grown past the size of the
//! definitions file (and at least [`config::DEFINITIONS_LOG_MIN_BYTES`]),
//! the owner writes the whole file instead, atomically as before
//! (`store::definitions`), and empties the log: the cost of compaction is
//! spread over at least as many bytes of records as it writes. At start,
//! recovery reads the file, replays the log on top, writes the file again
//! and empties the log. Users and permissions change only at start, so they
//! are never in the log.
//!
//! While the broker runs, `definitions.json` alone may lag behind: the
//! definitions are the file plus the log. An operator reading the file (or
//! copying it as an export) sees the definitions as of the last compaction;
//! a stopped broker's file is complete after its next start.
//!
//! ```text
//! definitions.log = header, record, record, ...     (integers big-endian)
//!
//! header (written and synced when the log is emptied, before any record)
//!   0   magic       u32  "WRND" (0x5752_4E44)
//!   4   generation  u64  different every time the log is emptied
//!   12  header_crc  u32  CRC32C of bytes 0..12
//!
//! record (one change)
//!   0   payload_len u32  never 0
//!   4   crc         u32  CRC32C of generation u64 | payload_len u32 | payload
//!   8   payload
//!
//! zeros (the space preallocated past the last record: the log ends at the
//!        first payload_len of 0)
//!
//! payload (str8 = u8 length + UTF-8; table = AMQP field table with its
//!          u32 length; flags bits: 0 durable, 1 auto_delete, 2 internal,
//!          3 delayed)
//!   1 exchange declared  name str8 | kind u8 (1 direct 2 fanout 3 topic
//!                        4 headers) | flags u8 | arguments table
//!   2 exchange deleted   name str8
//!   3 queue declared     name str8 | flags u8 | arguments table
//!   4 queue deleted      name str8
//!   5 binding added      source str8 | destination kind u8 (1 queue,
//!                        2 exchange) | destination str8 | routing key str8
//!                        | arguments table
//!   6 binding removed    as binding added
//! ```
//!
//! # Preallocation
//!
//! The log is extended with zeros, [`config::DEFINITIONS_LOG_PREALLOCATE_BYTES`]
//! at a time, and synced, before records are written there ([`allocation_for`]).
//! An append then overwrites bytes the file already has, so its fdatasync
//! flushes the record's page alone: a file that grows also needs its new
//! size on disk, a journal commit of the filesystem's, which cost a durable
//! declare more than the record itself (about twice the latency on ext4).
//! The extension is one write with the records that need it, under their
//! sync. Zeros read as the end of the log, not as a torn record.
//!
//! Every write to the log is cut at page boundaries ([`pieces`]): the page
//! cache gives a write a folio as large as the write (up to 64 KiB or more
//! on recent kernels), and a record written later into a large folio
//! dirties, and makes the disk write, the whole folio, not its page.
//!
//! # Crash safety
//!
//! - A record is acknowledged only after the fdatasync that follows it. A
//!   crash during an append leaves a torn tail: the reader stops at the
//!   first record whose length runs past the end of the file or whose
//!   checksum does not match, and recovery empties the log once the file
//!   holds everything before it.
//! - Because each record's checksum covers the log's generation, records an
//!   earlier generation left past the current end (a truncation that did
//!   not reach the disk) never read as current ones.
//! - Compaction writes the new file (temp, fdatasync, rename, directory
//!   fsync) and only then empties the log. A crash between the two leaves a
//!   file that already holds the log's changes, and the log is replayed on
//!   top of it again. Replay is idempotent: each change sets its object to
//!   a value that does not depend on what was there (a declare replaces the
//!   object of that name, a delete removes it and every binding that
//!   names it, a binding is added once or removed), so each object ends as
//!   the last change that touched it left it, however often the log is
//!   replayed ([`replay`]).
//!
//! The boot path reads through the [`Disk`] trait ([`load_on`]); the steps
//! of an append and of a compaction are written once over `Disk`
//! ([`append_on`], [`compact_on`]) for the crash tests, and the metadata
//! owner performs the same steps over io_uring (`store::definitions::
//! DefinitionsFile`), as `disk::append_batch` mirrors `SegmentFiles`.

use std::io;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use crate::config;
use crate::metadata::definitions::{
    binding_is_durable, changes_durable_definitions, BindingDef, Definitions, DestinationKind,
    QueueDef,
};
use crate::metadata::exchange::{Destination, ExchangeDef, ExchangeKind};
use crate::metadata::vhost::{DefinitionsView, MetaChange};
use crate::store::definitions;
use crate::store::disk::Disk;
use crate::util::crc32c;
use warren_protocol::{FieldTable, ShortStr};

pub(crate) const FILE_NAME: &str = "definitions.log";
pub(crate) const HEADER_LEN: usize = 16;
pub(crate) const RECORD_HEADER_LEN: usize = 8;
const MAGIC: u32 = 0x5752_4E44;

const EXCHANGE_DECLARED: u8 = 1;
const EXCHANGE_DELETED: u8 = 2;
const QUEUE_DECLARED: u8 = 3;
const QUEUE_DELETED: u8 = 4;
const BINDING_ADDED: u8 = 5;
const BINDING_REMOVED: u8 = 6;

const FLAG_DURABLE: u8 = 1;
const FLAG_AUTO_DELETE: u8 = 2;
const FLAG_INTERNAL: u8 = 4;
const FLAG_DELAYED: u8 = 8;

pub(crate) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// The size the log file is extended to (with zeros) so that `end` bytes
/// fit: `end` rounded up to whole preallocation steps.
pub(crate) fn allocation_for(end: u64) -> u64 {
    let step = config::DEFINITIONS_LOG_PREALLOCATE_BYTES;
    end.div_ceil(step).max(1) * step
}

/// The bytes to write at `at` (the log's logical end) in a file of
/// `allocated` bytes: `records`, followed by the zeros that extend the file
/// to its next allocation when they do not fit. Returns the new allocation.
pub(crate) fn with_allocation(records: &mut Vec<u8>, at: u64, allocated: u64) -> u64 {
    let end = at + records.len() as u64;
    if end <= allocated {
        return allocated;
    }
    let allocation = allocation_for(end);
    records.resize((allocation - at) as usize, 0);
    allocation
}

/// The bytes a write to the log at `at` may cover at most: a page, so that
/// each write lands in page-sized folios (see the module doc).
pub(crate) const WRITE_PIECE_BYTES: u64 = 4096;

/// `bytes`, to be written at `at`, cut where they cross a page boundary:
/// (offset in `bytes`, file position, length) of each piece.
pub(crate) fn pieces(at: u64, len: usize) -> impl Iterator<Item = (usize, u64, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let position = at + done as u64;
        let room = (WRITE_PIECE_BYTES - position % WRITE_PIECE_BYTES) as usize;
        let piece = room.min(len - done);
        let item = (done, position, piece);
        done += piece;
        Some(item)
    })
}

/// An empty log of `generation`: its header, then zeros up to the first
/// allocation.
pub(crate) fn empty_log(generation: u64) -> Vec<u8> {
    let mut bytes = header(generation).to_vec();
    with_allocation(&mut bytes, 0, 0);
    bytes
}

/// One durable change, by name: queue ids and placement are chosen anew at
/// every start, names are what the definitions file keeps.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum DefChange {
    ExchangeDeclared(ExchangeDef),
    ExchangeDeleted(ShortStr),
    QueueDeclared(QueueDef),
    QueueDeleted(ShortStr),
    BindingAdded(BindingDef),
    BindingRemoved(BindingDef),
}

impl DefChange {
    /// The record for `change`, about to be applied to `vhost`, if it
    /// alters the durable definitions (what `Definitions::snapshot` keeps).
    pub(crate) fn durable(vhost: &impl DefinitionsView, change: &MetaChange) -> Option<DefChange> {
        if !changes_durable_definitions(vhost, change) {
            return None;
        }
        Some(match change {
            MetaChange::ExchangeCreated(def) => DefChange::ExchangeDeclared(def.clone()),
            MetaChange::ExchangeDeleted(name) => DefChange::ExchangeDeleted(name.clone()),
            MetaChange::QueueCreated(meta) => DefChange::QueueDeclared(QueueDef {
                name: meta.name.clone(),
                durable: meta.durable,
                auto_delete: meta.auto_delete,
                arguments: meta.arguments.clone(),
            }),
            MetaChange::QueueDeleted(queue) => {
                DefChange::QueueDeleted(vhost.queue_by_id(queue.id)?.name.clone())
            }
            MetaChange::BindingAdded(binding) | MetaChange::BindingRemoved(binding) => {
                debug_assert!(binding_is_durable(vhost, binding));
                let (destination, destination_kind) = match &binding.destination {
                    Destination::Exchange(name) => (name.clone(), DestinationKind::Exchange),
                    Destination::Queue(queue) => (
                        vhost.queue_by_id(queue.id)?.name.clone(),
                        DestinationKind::Queue,
                    ),
                };
                let def = BindingDef {
                    source: binding.source.clone(),
                    destination,
                    destination_kind,
                    routing_key: binding.routing_key.clone(),
                    arguments: binding.arguments.clone(),
                };
                if matches!(change, MetaChange::BindingAdded(_)) {
                    DefChange::BindingAdded(def)
                } else {
                    DefChange::BindingRemoved(def)
                }
            }
        })
    }
}

/// Applies logged changes to definitions read from the file. Idempotent in
/// the sense the module doc needs: replaying a log on definitions that
/// already hold it gives the same definitions.
pub(crate) fn replay(defs: &mut Definitions, changes: &[DefChange]) {
    for change in changes {
        match change {
            DefChange::ExchangeDeclared(def) => {
                match defs.exchanges.iter_mut().find(|x| x.name == def.name) {
                    Some(existing) => *existing = def.clone(),
                    None => defs.exchanges.push(def.clone()),
                }
            }
            DefChange::ExchangeDeleted(name) => {
                defs.exchanges.retain(|x| &x.name != name);
                defs.bindings.retain(|b| {
                    &b.source != name
                        && !(b.destination_kind == DestinationKind::Exchange
                            && &b.destination == name)
                });
            }
            DefChange::QueueDeclared(def) => {
                match defs.queues.iter_mut().find(|q| q.name == def.name) {
                    Some(existing) => *existing = def.clone(),
                    None => defs.queues.push(def.clone()),
                }
            }
            DefChange::QueueDeleted(name) => {
                defs.queues.retain(|q| &q.name != name);
                defs.bindings.retain(|b| {
                    !(b.destination_kind == DestinationKind::Queue && &b.destination == name)
                });
            }
            DefChange::BindingAdded(def) => {
                if !defs.bindings.contains(def) {
                    defs.bindings.push(def.clone());
                }
            }
            DefChange::BindingRemoved(def) => defs.bindings.retain(|b| b != def),
        }
    }
}

/// The log's first bytes, for `generation`.
pub(crate) fn header(generation: u64) -> [u8; HEADER_LEN] {
    let mut bytes = [0u8; HEADER_LEN];
    bytes[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    bytes[4..12].copy_from_slice(&generation.to_be_bytes());
    let crc = crc32c::checksum(&bytes[0..12]);
    bytes[12..16].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// A generation unlike `previous` (the last one read, if any).
pub(crate) fn next_generation(previous: Option<u64>) -> u64 {
    match previous {
        Some(g) => g.wrapping_add(1),
        // No readable header: any earlier generation is unknown, so take
        // one that is unlikely to be it.
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

fn put_str8(buf: &mut Vec<u8>, s: &ShortStr) {
    // A ShortStr holds 255 bytes at most.
    buf.push(s.len() as u8);
    buf.extend_from_slice(s.as_bytes());
}

fn put_table(buf: &mut Vec<u8>, table: &FieldTable) {
    let mut encoded = BytesMut::with_capacity(table.encoded_len());
    table.encode(&mut encoded);
    buf.extend_from_slice(&encoded);
}

fn flags(durable: bool, auto_delete: bool, internal: bool, delayed: bool) -> u8 {
    let mut flags = 0;
    for (set, bit) in [
        (durable, FLAG_DURABLE),
        (auto_delete, FLAG_AUTO_DELETE),
        (internal, FLAG_INTERNAL),
        (delayed, FLAG_DELAYED),
    ] {
        if set {
            flags |= bit;
        }
    }
    flags
}

fn kind_code(kind: ExchangeKind) -> u8 {
    match kind {
        ExchangeKind::Direct => 1,
        ExchangeKind::Fanout => 2,
        ExchangeKind::Topic => 3,
        ExchangeKind::Headers => 4,
    }
}

fn put_binding(buf: &mut Vec<u8>, def: &BindingDef) {
    put_str8(buf, &def.source);
    buf.push(match def.destination_kind {
        DestinationKind::Queue => 1,
        DestinationKind::Exchange => 2,
    });
    put_str8(buf, &def.destination);
    put_str8(buf, &def.routing_key);
    put_table(buf, &def.arguments);
}

fn put_payload(buf: &mut Vec<u8>, change: &DefChange) {
    match change {
        DefChange::ExchangeDeclared(def) => {
            buf.push(EXCHANGE_DECLARED);
            put_str8(buf, &def.name);
            buf.push(kind_code(def.kind));
            buf.push(flags(
                def.durable,
                def.auto_delete,
                def.internal,
                def.delayed,
            ));
            put_table(buf, &def.arguments);
        }
        DefChange::ExchangeDeleted(name) => {
            buf.push(EXCHANGE_DELETED);
            put_str8(buf, name);
        }
        DefChange::QueueDeclared(def) => {
            buf.push(QUEUE_DECLARED);
            put_str8(buf, &def.name);
            buf.push(flags(def.durable, def.auto_delete, false, false));
            put_table(buf, &def.arguments);
        }
        DefChange::QueueDeleted(name) => {
            buf.push(QUEUE_DELETED);
            put_str8(buf, name);
        }
        DefChange::BindingAdded(def) => {
            buf.push(BINDING_ADDED);
            put_binding(buf, def);
        }
        DefChange::BindingRemoved(def) => {
            buf.push(BINDING_REMOVED);
            put_binding(buf, def);
        }
    }
}

fn record_crc(generation: u64, len_and_payload: &[u8]) -> u32 {
    let mut covered = Vec::with_capacity(8 + len_and_payload.len());
    covered.extend_from_slice(&generation.to_be_bytes());
    covered.extend_from_slice(len_and_payload);
    crc32c::checksum(&covered)
}

/// Appends one record per change to `buf`, for a log of `generation`.
pub(crate) fn encode(buf: &mut Vec<u8>, generation: u64, changes: &[DefChange]) {
    for change in changes {
        let start = buf.len();
        buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        put_payload(buf, change);
        let payload_len = (buf.len() - start - RECORD_HEADER_LEN) as u32;
        buf[start..start + 4].copy_from_slice(&payload_len.to_be_bytes());
        let mut covered = Vec::with_capacity(4 + payload_len as usize);
        covered.extend_from_slice(&payload_len.to_be_bytes());
        covered.extend_from_slice(&buf[start + RECORD_HEADER_LEN..]);
        let crc = record_crc(generation, &covered);
        buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    }
}

/// What a log holds.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct LogContents {
    /// The header's generation; None when there is no readable header (no
    /// log, or one torn before its first sync).
    pub(crate) generation: Option<u64>,
    pub(crate) changes: Vec<DefChange>,
    /// Bytes after the last whole record, up to the last one that is not
    /// zero (the preallocated space is zeros): a torn append.
    pub(crate) torn_bytes: usize,
}

/// Reads a log's bytes. A torn tail is reported, not an error; a record
/// whose checksum matches but whose payload cannot be read is (it was
/// written so by a broken broker, not by a crash).
pub(crate) fn decode(bytes: &[u8]) -> Result<LogContents, String> {
    let mut contents = LogContents::default();
    if bytes.len() < HEADER_LEN
        || bytes[0..4] != MAGIC.to_be_bytes()
        || crc32c::checksum(&bytes[0..12]).to_be_bytes() != bytes[12..16]
    {
        contents.torn_bytes = torn_len(bytes);
        return Ok(contents);
    }
    let mut generation_bytes = [0u8; 8];
    generation_bytes.copy_from_slice(&bytes[4..12]);
    let generation = u64::from_be_bytes(generation_bytes);
    contents.generation = Some(generation);
    let mut at = HEADER_LEN;
    while bytes.len() - at >= RECORD_HEADER_LEN {
        let mut word = [0u8; 4];
        word.copy_from_slice(&bytes[at..at + 4]);
        let payload_len = u32::from_be_bytes(word) as usize;
        word.copy_from_slice(&bytes[at + 4..at + 8]);
        let crc = u32::from_be_bytes(word);
        let end = at + RECORD_HEADER_LEN + payload_len;
        if payload_len == 0 || end > bytes.len() {
            break;
        }
        let mut covered = Vec::with_capacity(4 + payload_len);
        covered.extend_from_slice(&bytes[at..at + 4]);
        covered.extend_from_slice(&bytes[at + RECORD_HEADER_LEN..end]);
        if record_crc(generation, &covered) != crc {
            break;
        }
        let payload = Bytes::copy_from_slice(&bytes[at + RECORD_HEADER_LEN..end]);
        let change = Payload {
            bytes: payload,
            at: 0,
        }
        .change()
        .map_err(|e| format!("the record at byte {} of {}: {}", at, FILE_NAME, e))?;
        contents.changes.push(change);
        at = end;
    }
    contents.torn_bytes = torn_len(&bytes[at..]);
    Ok(contents)
}

/// The length of `rest` without its trailing zeros (preallocated space).
fn torn_len(rest: &[u8]) -> usize {
    rest.iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1)
}

struct Payload {
    bytes: Bytes,
    at: usize,
}

impl Payload {
    fn take(&mut self, n: usize) -> Result<Bytes, &'static str> {
        if self.bytes.len() - self.at < n {
            return Err("it ends early");
        }
        let taken = self.bytes.slice(self.at..self.at + n);
        self.at += n;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn str8(&mut self) -> Result<ShortStr, &'static str> {
        let len = self.u8()? as usize;
        ShortStr::from_bytes(self.take(len)?).map_err(|_| "a name is not UTF-8")
    }

    fn table(&mut self) -> Result<FieldTable, &'static str> {
        let len = self.take(4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        FieldTable::decode(&self.take(len)?).map_err(|_| "a field table cannot be read")
    }

    fn binding(&mut self) -> Result<BindingDef, &'static str> {
        let source = self.str8()?;
        let destination_kind = match self.u8()? {
            1 => DestinationKind::Queue,
            2 => DestinationKind::Exchange,
            _ => return Err("unknown destination kind"),
        };
        Ok(BindingDef {
            source,
            destination_kind,
            destination: self.str8()?,
            routing_key: self.str8()?,
            arguments: self.table()?,
        })
    }

    fn change(mut self) -> Result<DefChange, &'static str> {
        let change = match self.u8()? {
            EXCHANGE_DECLARED => {
                let name = self.str8()?;
                let kind = match self.u8()? {
                    1 => ExchangeKind::Direct,
                    2 => ExchangeKind::Fanout,
                    3 => ExchangeKind::Topic,
                    4 => ExchangeKind::Headers,
                    _ => return Err("unknown exchange kind"),
                };
                let flags = self.u8()?;
                DefChange::ExchangeDeclared(ExchangeDef {
                    name,
                    kind,
                    delayed: flags & FLAG_DELAYED != 0,
                    durable: flags & FLAG_DURABLE != 0,
                    auto_delete: flags & FLAG_AUTO_DELETE != 0,
                    internal: flags & FLAG_INTERNAL != 0,
                    arguments: self.table()?,
                })
            }
            EXCHANGE_DELETED => DefChange::ExchangeDeleted(self.str8()?),
            QUEUE_DECLARED => {
                let name = self.str8()?;
                let flags = self.u8()?;
                DefChange::QueueDeclared(QueueDef {
                    name,
                    durable: flags & FLAG_DURABLE != 0,
                    auto_delete: flags & FLAG_AUTO_DELETE != 0,
                    arguments: self.table()?,
                })
            }
            QUEUE_DELETED => DefChange::QueueDeleted(self.str8()?),
            BINDING_ADDED => DefChange::BindingAdded(self.binding()?),
            BINDING_REMOVED => DefChange::BindingRemoved(self.binding()?),
            _ => return Err("unknown record type"),
        };
        if self.at != self.bytes.len() {
            return Err("bytes left after the record");
        }
        Ok(change)
    }
}

/// When the owner writes the whole file instead of appending: once the log
/// would hold more bytes than the file (and more than a floor, so a small
/// file is not rewritten every few changes).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CompactionRule {
    /// Bytes in the log now, header included.
    pub(crate) log_bytes: u64,
    /// Bytes of `definitions.json` as last written.
    pub(crate) file_bytes: u64,
}

impl CompactionRule {
    pub(crate) fn after_compaction(file_bytes: u64) -> CompactionRule {
        CompactionRule {
            log_bytes: HEADER_LEN as u64,
            file_bytes,
        }
    }

    /// True if appending `more` bytes should be a compaction instead.
    pub(crate) fn compact_instead(&self, more: u64) -> bool {
        self.log_bytes + more > self.file_bytes.max(config::DEFINITIONS_LOG_MIN_BYTES)
    }
}

/// The stored definitions at start: the file's text and the log.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) file: Option<String>,
    pub(crate) log: LogContents,
}

/// Reads `definitions.json` and `definitions.log` from `data_dir`, removing
/// a temp file an interrupted compaction left (the complete file beside it
/// is the truth).
pub(crate) fn load_on<D: Disk>(disk: &D, data_dir: &Path) -> io::Result<Stored> {
    let temp = definitions::temp_path(data_dir);
    match disk.remove_file(&temp) {
        Ok(()) => tracing::warn!(
            file = %temp.display(),
            "removed a definitions file left half-written by an earlier run"
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file = match disk.read(&definitions::path(data_dir)) {
        Ok(bytes) => Some(
            String::from_utf8(bytes)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the file is not UTF-8"))?,
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let log = match disk.read(&path(data_dir)) {
        Ok(bytes) => decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => LogContents::default(),
        Err(e) => return Err(e),
    };
    Ok(Stored { file, log })
}

/// Appends `records` at `end` of the open log of `allocated` bytes
/// (extending it with zeros when they do not fit) and syncs it: the step
/// the owner takes before it answers a batch.
#[cfg(test)]
pub(crate) fn append_on<D: Disk>(
    disk: &D,
    log: &mut D::File,
    end: &mut u64,
    allocated: &mut u64,
    records: &[u8],
) -> io::Result<()> {
    let mut bytes = records.to_vec();
    let allocation = with_allocation(&mut bytes, *end, *allocated);
    disk.write_at(log, *end, &bytes)?;
    disk.sync(log)?;
    *end += records.len() as u64;
    *allocated = allocation;
    Ok(())
}

/// Replaces `definitions.json` with `contents` atomically, then empties the
/// log (a new header of `generation`), in the order the module doc needs.
/// Returns the open, empty log.
#[cfg(test)]
pub(crate) fn compact_on<D: Disk>(
    disk: &D,
    data_dir: &Path,
    contents: &str,
    generation: u64,
) -> io::Result<D::File> {
    let temp = definitions::temp_path(data_dir);
    let mut file = disk.create(&temp)?;
    disk.write_at(&mut file, 0, contents.as_bytes())?;
    disk.sync(&mut file)?;
    disk.rename(&temp, &definitions::path(data_dir))?;
    disk.sync_dir(data_dir)?;
    let mut log = disk.create(&path(data_dir))?;
    disk.write_at(&mut log, 0, &empty_log(generation))?;
    disk.sync(&mut log)?;
    disk.sync_dir(data_dir)?;
    Ok(log)
}

/// Empties the log with blocking calls (a new header of `generation`, then
/// the first allocation's zeros), creating it owner-only like the
/// definitions file. For start-up and the end of a clean shutdown, after
/// the file was written.
pub(crate) fn reset_blocking(data_dir: &Path, generation: u64) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut log = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(definitions::FILE_MODE)
        .open(path(data_dir))?;
    let empty = empty_log(generation);
    for (from, _, len) in pieces(0, empty.len()) {
        log.write_all(&empty[from..from + len])?;
    }
    log.sync_data()?;
    drop(log);
    std::fs::File::open(data_dir)?.sync_all()
}

/// Writes the log's changes into the file and empties the log, with
/// blocking calls, if the log holds any: what a clean shutdown does once
/// every shard has stopped (nothing writes the log any more), so that the
/// file alone is complete while the broker is down and the next start
/// replays nothing. Returns how many changes were moved. The steps and
/// their crash safety are a start's (and `compact_on`'s): the file first,
/// then the log emptied under a new generation.
pub(crate) fn compact_blocking(data_dir: &Path) -> io::Result<usize> {
    use crate::metadata::definitions::Source;
    let stored = load_on(&crate::store::disk::StdDisk, data_dir)?;
    if stored.log.changes.is_empty() && stored.log.torn_bytes == 0 {
        return Ok(0);
    }
    let mut defs = match &stored.file {
        Some(text) => {
            Definitions::from_json(text, Source::DataDir)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
                .definitions
        }
        None => Definitions::default(),
    };
    replay(&mut defs, &stored.log.changes);
    definitions::write_blocking(data_dir, &defs.to_json())?;
    reset_blocking(data_dir, next_generation(stored.log.generation))?;
    Ok(stored.log.changes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::definitions::Source;
    use crate::store::disk::MemDisk;
    use warren_protocol::FieldValue;

    fn exchange(name: &str, kind: ExchangeKind) -> ExchangeDef {
        ExchangeDef {
            name: ShortStr::from(name),
            kind,
            delayed: false,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
        }
    }

    fn queue(name: &str, ttl_ms: Option<i64>) -> QueueDef {
        let mut arguments = FieldTable::default();
        if let Some(ttl_ms) = ttl_ms {
            arguments.insert("x-message-ttl", FieldValue::I64(ttl_ms));
        }
        QueueDef {
            name: ShortStr::from(name),
            durable: true,
            auto_delete: false,
            arguments,
        }
    }

    fn binding(source: &str, kind: DestinationKind, destination: &str, key: &str) -> BindingDef {
        BindingDef {
            source: ShortStr::from(source),
            destination: ShortStr::from(destination),
            destination_kind: kind,
            routing_key: ShortStr::from(key),
            arguments: FieldTable::default(),
        }
    }

    /// Every kind of change, with deletes that cascade and redeclares.
    fn history() -> Vec<DefChange> {
        use DefChange::*;
        use DestinationKind::*;
        let mut delayed = exchange("delayed", ExchangeKind::Topic);
        delayed.delayed = true;
        delayed.internal = true;
        delayed.arguments.insert(
            "x-delayed-type",
            FieldValue::LongStr(Bytes::from_static(b"topic")),
        );
        let mut headers_binding = binding("h", Queue, "q1", "");
        headers_binding
            .arguments
            .insert("x-match", FieldValue::LongStr(Bytes::from_static(b"any")));
        headers_binding
            .arguments
            .insert("level", FieldValue::I32(3));
        vec![
            ExchangeDeclared(exchange("x", ExchangeKind::Direct)),
            ExchangeDeclared(exchange("h", ExchangeKind::Headers)),
            ExchangeDeclared(delayed),
            QueueDeclared(queue("q1", Some(60_000))),
            QueueDeclared(queue("q2", None)),
            BindingAdded(binding("x", Queue, "q1", "a")),
            BindingAdded(binding("x", Queue, "q2", "b")),
            BindingAdded(binding("x", Exchange, "delayed", "c")),
            BindingAdded(headers_binding),
            BindingAdded(binding("delayed", Queue, "q2", "#")),
            BindingRemoved(binding("x", Queue, "q1", "a")),
            QueueDeleted(ShortStr::from("q2")),
            QueueDeclared(queue("q2", Some(5))),
            BindingAdded(binding("x", Queue, "q2", "again")),
            ExchangeDeleted(ShortStr::from("delayed")),
            ExchangeDeclared(exchange("gone", ExchangeKind::Fanout)),
            BindingAdded(binding("gone", Queue, "q1", "")),
            ExchangeDeleted(ShortStr::from("gone")),
        ]
    }

    /// The definitions after `history` on an empty start, as a set.
    fn expected() -> Definitions {
        let mut defs = Definitions::default();
        replay(&mut defs, &history());
        defs
    }

    /// Definitions compared as sets: replay keeps order stable only where
    /// it matters to nobody.
    fn canonical(defs: &Definitions) -> String {
        let mut defs = defs.clone();
        defs.exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        defs.queues.sort_by(|a, b| a.name.cmp(&b.name));
        defs.bindings
            .sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        defs.to_json()
    }

    #[test]
    fn every_change_reads_back_as_written() {
        let changes = history();
        let mut bytes = header(7).to_vec();
        encode(&mut bytes, 7, &changes);
        let read = decode(&bytes).unwrap();
        assert_eq!(read.generation, Some(7));
        assert_eq!(read.changes, changes);
        assert_eq!(read.torn_bytes, 0);
        let defs = expected();
        let names = |v: Vec<&ShortStr>| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(defs.exchanges.iter().map(|x| &x.name).collect()),
            ["x", "h"]
        );
        assert_eq!(
            names(defs.queues.iter().map(|q| &q.name).collect()),
            ["q1", "q2"]
        );
        assert_eq!(
            defs.queues[1].arguments.get("x-message-ttl"),
            Some(&FieldValue::I64(5))
        );
        let keys: Vec<String> = defs
            .bindings
            .iter()
            .map(|b| format!("{}>{}:{}", b.source, b.destination, b.routing_key))
            .collect();
        assert_eq!(keys, ["h>q1:", "x>q2:again"]);
    }

    #[test]
    fn records_of_another_generation_do_not_read() {
        let mut bytes = header(8).to_vec();
        encode(&mut bytes, 7, &history());
        let read = decode(&bytes).unwrap();
        assert!(read.changes.is_empty());
        assert_eq!(read.torn_bytes, bytes.len() - HEADER_LEN);
    }

    /// A replay on definitions that already hold every prefix of the log
    /// (a compaction at any point, then a crash before the log was
    /// emptied) ends where one replay on the old file ends.
    #[test]
    fn replaying_a_log_again_changes_nothing() {
        let changes = history();
        let want = canonical(&expected());
        for compacted_at in 0..=changes.len() {
            let mut defs = Definitions::default();
            replay(&mut defs, &changes[..compacted_at]);
            // The file is written and read back (as at start), then the
            // whole log replayed on top.
            let text = defs.to_json();
            let mut read = Definitions::from_json(&text, Source::DataDir)
                .unwrap()
                .definitions;
            replay(&mut read, &changes);
            assert_eq!(canonical(&read), want, "compacted after {compacted_at}");
            replay(&mut read, &changes);
            assert_eq!(canonical(&read), want, "replayed twice");
        }
    }

    fn data_dir() -> PathBuf {
        PathBuf::from("/data")
    }

    fn fresh(disk: &MemDisk) -> D {
        disk.create_dir_all(&data_dir()).unwrap();
        disk.sync_dir(Path::new("/")).unwrap();
        let log = compact_on(disk, &data_dir(), &Definitions::default().to_json(), 1).unwrap();
        D {
            log,
            end: HEADER_LEN as u64,
            allocated: allocation_for(HEADER_LEN as u64),
            generation: 1,
        }
    }

    struct D {
        log: <MemDisk as Disk>::File,
        end: u64,
        allocated: u64,
        generation: u64,
    }

    /// What a start on `disk` restores, as recovery does: the file, then
    /// the log on top.
    fn restored(disk: &MemDisk) -> String {
        let stored = load_on(disk, &data_dir()).unwrap();
        let mut defs = match stored.file {
            Some(text) => {
                Definitions::from_json(&text, Source::DataDir)
                    .unwrap()
                    .definitions
            }
            None => Definitions::default(),
        };
        replay(&mut defs, &stored.log.changes);
        canonical(&defs)
    }

    /// What a start does after reading: the file written with everything,
    /// the log emptied under a new generation.
    fn start(disk: &MemDisk) {
        let stored = load_on(disk, &data_dir()).unwrap();
        let mut defs = match stored.file {
            Some(text) => {
                Definitions::from_json(&text, Source::DataDir)
                    .unwrap()
                    .definitions
            }
            None => Definitions::default(),
        };
        replay(&mut defs, &stored.log.changes);
        let generation = next_generation(stored.log.generation);
        compact_on(disk, &data_dir(), &defs.to_json(), generation).unwrap();
    }

    fn state_after(changes: &[DefChange]) -> String {
        let mut defs = Definitions::default();
        replay(&mut defs, changes);
        canonical(&defs)
    }

    /// Batches appended and synced, then one batch written but not synced
    /// when the power went: torn at every byte, a start restores exactly
    /// the synced batches, plus the last batch's records that reached the
    /// disk whole (never answered, so either way is allowed), and never
    /// anything else; and never fails.
    #[test]
    fn a_torn_last_append_is_dropped_at_every_byte() {
        let changes = history();
        let disk = MemDisk::new();
        let mut d = fresh(&disk);
        let (synced, last) = changes.split_at(changes.len() - 3);
        for batch in synced.chunks(4) {
            let mut records = Vec::new();
            encode(&mut records, d.generation, batch);
            append_on(&disk, &mut d.log, &mut d.end, &mut d.allocated, &records).unwrap();
        }
        let mut records = Vec::new();
        encode(&mut records, d.generation, last);
        disk.write_at(&mut d.log, d.end, &records).unwrap();
        let mut ends = Vec::new();
        let mut at = 0;
        for change in last {
            let mut one = Vec::new();
            encode(&mut one, d.generation, std::slice::from_ref(change));
            at += one.len();
            ends.push(at);
        }
        // The records overwrite preallocated zeros: the image's torn write
        // begins at their first byte that is not zero.
        let zeros = records.iter().take_while(|&&b| b == 0).count();
        for cut in 0..=records.len() {
            let image = disk.crash_image_overwritten(|_, _| cut.saturating_sub(zeros));
            // Zeros right after the cut are on the disk anyway (they were
            // preallocated): a record that ends with them is whole.
            let seen = cut + records[cut..].iter().take_while(|&&b| b == 0).count();
            let whole = ends.iter().filter(|&&end| end <= seen).count();
            let mut want: Vec<DefChange> = synced.to_vec();
            want.extend_from_slice(&last[..whole]);
            assert_eq!(restored(&image), state_after(&want), "torn at {cut}");
            let stored = load_on(&image, &data_dir()).unwrap();
            let torn = &records[ends[..whole].last().copied().unwrap_or(0)..seen];
            assert_eq!(stored.log.torn_bytes, torn_len(torn), "torn at {cut}");
        }
    }

    /// A compaction interrupted at every step (each write torn anywhere,
    /// each sync and rename done or not) restores the same definitions:
    /// the file is either the old one with the whole log, or the new one
    /// with the log replayed on it again, or the new one with an empty log.
    #[test]
    fn a_crash_anywhere_in_a_compaction_loses_and_repeats_nothing() {
        let changes = history();
        let want = state_after(&changes);
        // The log holds every change; the file holds none of them.
        let disk = MemDisk::new();
        let mut d = fresh(&disk);
        let mut records = Vec::new();
        encode(&mut records, d.generation, &changes);
        append_on(&disk, &mut d.log, &mut d.end, &mut d.allocated, &records).unwrap();
        assert_eq!(restored(&disk), want);

        let mut compacted = Definitions::default();
        replay(&mut compacted, &changes);
        let contents = compacted.to_json();
        // Replays compact_on one step at a time, crashing after each, with
        // every unsynced tail torn at a few lengths.
        let temp = definitions::temp_path(&data_dir());
        type Step<'a> = Box<dyn Fn(&MemDisk, &mut Option<<MemDisk as Disk>::File>) + 'a>;
        let steps: Vec<Step> = vec![
            Box::new(|disk, file| *file = Some(disk.create(&temp).unwrap())),
            Box::new(|disk, file| {
                disk.write_at(file.as_mut().unwrap(), 0, contents.as_bytes())
                    .unwrap()
            }),
            Box::new(|disk, file| disk.sync(file.as_mut().unwrap()).unwrap()),
            Box::new(|disk, _| disk.rename(&temp, &definitions::path(&data_dir())).unwrap()),
            Box::new(|disk, _| disk.sync_dir(&data_dir()).unwrap()),
            Box::new(|disk, file| *file = Some(disk.create(&path(&data_dir())).unwrap())),
            Box::new(|disk, file| {
                disk.write_at(file.as_mut().unwrap(), 0, &empty_log(2))
                    .unwrap()
            }),
            Box::new(|disk, file| disk.sync(file.as_mut().unwrap()).unwrap()),
            Box::new(|disk, _| disk.sync_dir(&data_dir()).unwrap()),
        ];
        let mut file = None;
        for (step, run) in steps.iter().enumerate() {
            run(&disk, &mut file);
            for keep in [0, 1, 7, 100, usize::MAX] {
                let image = disk.crash_image_overwritten(|_, len| keep.min(len));
                assert_eq!(
                    restored(&image),
                    want,
                    "crash after step {step}, kept {keep}"
                );
                // The start after it compacts too; a start after that one
                // (crashed at once, its writes all synced) finds the same.
                start(&image);
                let again = image.crash_image(|_, _| 0);
                assert_eq!(restored(&again), want, "second start after step {step}");
            }
        }
        // The whole compaction, through the function the owner mirrors.
        let disk2 = MemDisk::new();
        let mut d2 = fresh(&disk2);
        append_on(
            &disk2,
            &mut d2.log,
            &mut d2.end,
            &mut d2.allocated,
            &records,
        )
        .unwrap();
        let _log = compact_on(&disk2, &data_dir(), &contents, 2).unwrap();
        assert!(disk2.unsynced().is_empty());
        let stored = load_on(&disk2, &data_dir()).unwrap();
        assert_eq!(stored.log.generation, Some(2));
        assert!(stored.log.changes.is_empty());
        assert_eq!(restored(&disk2), want);
    }

    /// A truncation that never reached the disk leaves old records past
    /// the new header; they belong to the old generation and are not read,
    /// even where a new record ends exactly where an old one did.
    #[test]
    fn old_records_past_a_lost_truncation_are_not_replayed() {
        let old = [
            DefChange::QueueDeclared(queue("q", None)),
            DefChange::QueueDeleted(ShortStr::from("q")),
        ];
        let mut bytes = header(1).to_vec();
        encode(&mut bytes, 1, &old);
        // The new generation's header and a record the same size as the
        // first old one, written over the old bytes.
        let mut new = header(2).to_vec();
        encode(&mut new, 2, &[DefChange::QueueDeclared(queue("q", None))]);
        bytes[..new.len()].copy_from_slice(&new);
        let read = decode(&bytes).unwrap();
        assert_eq!(read.changes, [DefChange::QueueDeclared(queue("q", None))]);
        assert!(read.torn_bytes > 0);
    }

    /// Appends past the first allocation extend the file with zeros, in
    /// whole steps; the zeros read as the end of the log, not a torn tail,
    /// and every record reads back, also after a crash that kept none of
    /// the last batch.
    #[test]
    fn preallocated_space_reads_as_the_end_of_the_log() {
        let disk = MemDisk::new();
        let mut d = fresh(&disk);
        let step = config::DEFINITIONS_LOG_PREALLOCATE_BYTES;
        assert_eq!(disk.read(&path(&data_dir())).unwrap().len() as u64, step);
        let changes: Vec<DefChange> = (0..3000)
            .map(|i| DefChange::QueueDeclared(queue(&format!("queue-{i}"), Some(i))))
            .collect();
        for batch in changes.chunks(7) {
            let mut records = Vec::new();
            encode(&mut records, d.generation, batch);
            append_on(&disk, &mut d.log, &mut d.end, &mut d.allocated, &records).unwrap();
            let len = disk.read(&path(&data_dir())).unwrap().len() as u64;
            assert_eq!(len, d.allocated);
            assert!(len.is_multiple_of(step) && len >= d.end && len - d.end < step);
        }
        assert!(d.allocated > 2 * step, "the test crossed allocations");
        let stored = load_on(&disk, &data_dir()).unwrap();
        assert_eq!(stored.log.changes, changes);
        assert_eq!(stored.log.torn_bytes, 0);
        let image = disk.crash_image_overwritten(|_, _| 0);
        assert_eq!(load_on(&image, &data_dir()).unwrap().log.changes, changes);
        assert_eq!(allocation_for(0), step);
        assert_eq!(allocation_for(step), step);
        assert_eq!(allocation_for(step + 1), 2 * step);
    }

    #[test]
    fn writes_are_cut_at_page_boundaries() {
        let cut: Vec<_> = pieces(4000, 9000).collect();
        assert_eq!(
            cut,
            [
                (0, 4000, 96),
                (96, 4096, 4096),
                (4192, 8192, 4096),
                (8288, 12288, 712)
            ]
        );
        assert_eq!(pieces(16, 40).collect::<Vec<_>>(), [(0, 16, 40)]);
        assert_eq!(pieces(0, 0).count(), 0);
    }

    #[test]
    fn compaction_comes_once_the_log_outgrows_the_file() {
        let small = CompactionRule::after_compaction(1_000);
        assert!(!small.compact_instead(100));
        assert!(small.compact_instead(config::DEFINITIONS_LOG_MIN_BYTES));
        let big = CompactionRule {
            log_bytes: 600_000,
            file_bytes: 640_000,
        };
        assert!(!big.compact_instead(40_000));
        assert!(big.compact_instead(40_001));
    }
}

//! The bytes of a segment file: chunks of records. Pure encoding and
//! decoding, no I/O; `log` fills chunks, `segments` writes them, `recovery`
//! reads them back.
//!
//! ```text
//! segment file = chunk, zero padding, chunk, zero padding, ...
//!   every chunk starts at a multiple of BLOCK (512 bytes); the padding after
//!   a chunk fills up to the writer's alignment (512 or 4096 for O_DIRECT),
//!   so that every write starts and ends on a block boundary and never
//!   rewrites a block that holds data already synced.
//!
//!   The live store pads every chunk to CHUNK_ALIGNMENT (4096), whatever
//!   the disk's block size, so that a record's offset in its file is known
//!   when it is appended: a paged message is read back from there.
//!
//! chunk (one group commit, all of its records or none of them)
//!   0   magic        u32  "WRNC" (0x57524E43)
//!   4   payload_len  u32
//!   8   payload_crc  u32  CRC32C of the payload
//!   12  header_crc   u32  CRC32C of bytes 0..12
//!   16  payload      records, back to back
//!
//! record (integers big-endian; str8 = u8 length + bytes)
//!   publish   1 u8 | flags u8 (bit 0: delivered before; bit 1: transient,
//!             paged out under memory pressure and void at restart)
//!             | priority level u8
//!             | queue id u64 | seq u64 | expires_at epoch ms u64 (u64::MAX: never)
//!             | vhost str8 | queue name str8 | exchange str8 | routing key str8
//!             | property flags u16 | property list len u32 + bytes
//!             | BCC key count u16, each u16 length + bytes
//!             | body len u64 + bytes
//!   removal   2 u8 | queue id u64 | seq u64      (acked, rejected, expired,
//!             dead-lettered, purged, dropped by overflow, queue deleted)
//!   delivered 3 u8 | queue id u64 | seq u64      (first delivery with acks
//!             pending: comes back redelivered)
//! ```
//!
//! A publish record may appear twice for one message: compaction copies a
//! live message from an old segment into the active one with the same
//! queue id and sequence number (`log`); a replay keeps the later copy.
//!
//! A queue keeps its id across restarts (`scan`: the id its records carry
//! is given back to the queue of the definitions with the same vhost and
//! name, and ids are never reused while a record carries them), and a
//! publish carries its queue's vhost and name so that the start can match
//! them.
//!
//! A chunk whose header or payload checksum does not match, or that runs
//! past the end of the file, is what a crash during a write leaves (a torn
//! write); the reader stops at it and reports it.

use bytes::Bytes;

use crate::model::message::Message;
use crate::util::crc32c;
use warren_protocol::{Properties, ShortStr};

/// Chunks start at multiples of this many bytes.
pub(crate) const BLOCK: usize = 512;
pub(crate) const CHUNK_HEADER_LEN: usize = 16;
/// The queue id of the records of messages held by delayed exchanges (no
/// queue has it): their queue name is the exchange's, their sequence
/// number the held message's id, their deadline when it is due.
pub(crate) const DELAYED_QUEUE_ID: u64 = u64::MAX;

/// What the live store pads each chunk to (O_DIRECT's block on any disk).
pub(crate) const CHUNK_ALIGNMENT: usize = 4096;
const MAGIC: u32 = 0x5752_4E43;

const PUBLISH: u8 = 1;
const REMOVAL: u8 = 2;
const DELIVERED: u8 = 3;
const FLAG_DELIVERED: u8 = 1;
const FLAG_TRANSIENT: u8 = 2;
const NEVER: u64 = u64::MAX;

/// Starts a chunk in `buf` (empty): room for the header, filled by `seal`.
pub(crate) fn open_chunk(buf: &mut Vec<u8>) {
    debug_assert!(buf.is_empty());
    buf.extend_from_slice(&[0u8; CHUNK_HEADER_LEN]);
}

/// Fills in the header of the chunk in `buf` and pads it with zeros to a
/// multiple of `alignment`.
pub(crate) fn seal_chunk(buf: &mut Vec<u8>, alignment: usize) {
    debug_assert!(buf.len() >= CHUNK_HEADER_LEN);
    let payload_len = (buf.len() - CHUNK_HEADER_LEN) as u32;
    let payload_crc = crc32c::checksum(&buf[CHUNK_HEADER_LEN..]);
    buf[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    buf[4..8].copy_from_slice(&payload_len.to_be_bytes());
    buf[8..12].copy_from_slice(&payload_crc.to_be_bytes());
    let header_crc = crc32c::checksum(&buf[0..12]);
    buf[12..16].copy_from_slice(&header_crc.to_be_bytes());
    let padded = buf.len().div_ceil(alignment) * alignment;
    buf.resize(padded, 0);
}

fn put_str8(buf: &mut Vec<u8>, s: &[u8]) {
    // Every name here is an AMQP shortstr: 255 bytes at most.
    let len = s.len().min(255);
    buf.push(len as u8);
    buf.extend_from_slice(&s[..len]);
}

/// What a publish record says besides the message.
pub(crate) struct PublishHead<'a> {
    pub(crate) queue_id: u64,
    pub(crate) seq: u64,
    pub(crate) delivered: bool,
    /// Written only to be paged out: no restart brings it back.
    pub(crate) transient: bool,
    pub(crate) level: u8,
    pub(crate) expires_at_epoch_ms: Option<u64>,
    pub(crate) vhost: &'a str,
    pub(crate) queue_name: &'a str,
    pub(crate) message: &'a Message,
}

/// Appends a publish record: the message's bytes are copied once, here,
/// straight into the chunk.
pub(crate) fn put_publish(buf: &mut Vec<u8>, head: &PublishHead) {
    let message = head.message;
    let raw = message.properties_raw();
    let bcc: &[String] = message.bcc_keys().unwrap_or(&[]);
    buf.reserve(64 + raw.len() + message.body.len());
    buf.push(PUBLISH);
    let mut flags = 0;
    if head.delivered {
        flags |= FLAG_DELIVERED;
    }
    if head.transient {
        flags |= FLAG_TRANSIENT;
    }
    buf.push(flags);
    buf.push(head.level);
    buf.extend_from_slice(&head.queue_id.to_be_bytes());
    buf.extend_from_slice(&head.seq.to_be_bytes());
    buf.extend_from_slice(&head.expires_at_epoch_ms.unwrap_or(NEVER).to_be_bytes());
    put_str8(buf, head.vhost.as_bytes());
    put_str8(buf, head.queue_name.as_bytes());
    put_str8(buf, message.exchange().as_bytes());
    put_str8(buf, message.routing_key().as_bytes());
    buf.extend_from_slice(&message.property_flags().to_be_bytes());
    buf.extend_from_slice(&(raw.len() as u32).to_be_bytes());
    buf.extend_from_slice(raw);
    let bcc_count = bcc.len().min(u16::MAX as usize);
    buf.extend_from_slice(&(bcc_count as u16).to_be_bytes());
    for key in &bcc[..bcc_count] {
        let len = key.len().min(u16::MAX as usize);
        buf.extend_from_slice(&(len as u16).to_be_bytes());
        buf.extend_from_slice(&key.as_bytes()[..len]);
    }
    buf.extend_from_slice(&(message.body.len() as u64).to_be_bytes());
    buf.extend_from_slice(&message.body);
}

pub(crate) fn put_removal(buf: &mut Vec<u8>, queue_id: u64, seq: u64) {
    buf.push(REMOVAL);
    buf.extend_from_slice(&queue_id.to_be_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
}

pub(crate) fn put_delivered(buf: &mut Vec<u8>, queue_id: u64, seq: u64) {
    buf.push(DELIVERED);
    buf.extend_from_slice(&queue_id.to_be_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
}

/// A stored message as recovery reads it back.
#[derive(Debug)]
pub(crate) struct StoredPublish {
    pub(crate) queue_id: u64,
    pub(crate) seq: u64,
    pub(crate) delivered: bool,
    pub(crate) transient: bool,
    pub(crate) level: u8,
    pub(crate) expires_at_epoch_ms: Option<u64>,
    pub(crate) vhost: String,
    pub(crate) queue_name: String,
    pub(crate) message: Message,
}

#[derive(Debug)]
pub(crate) enum Record {
    Publish(Box<StoredPublish>),
    Removal { queue_id: u64, seq: u64 },
    Delivered { queue_id: u64, seq: u64 },
}

/// What the reader found at an offset.
#[derive(Debug)]
pub(crate) enum ChunkRead {
    /// A good chunk's payload, and where the next chunk may start.
    Chunk { payload: Bytes, next: usize },
    /// Zeros: padding (or a block never written). Skip one block.
    Padding,
    /// The file ends here.
    End,
    /// A chunk that cannot be trusted: a torn or corrupt write.
    Bad(&'static str),
}

/// Reads the chunk at `at` (a multiple of BLOCK) of `file`.
pub(crate) fn read_chunk(file: &Bytes, at: usize) -> ChunkRead {
    match chunk_at(file, at) {
        ChunkAt::Chunk { payload, next } => ChunkRead::Chunk {
            payload: file.slice(payload),
            next,
        },
        ChunkAt::Padding => ChunkRead::Padding,
        ChunkAt::End => ChunkRead::End,
        ChunkAt::Bad(why) => ChunkRead::Bad(why),
    }
}

/// [`ChunkRead`] over a borrowed file: where a good chunk's payload is.
#[derive(Debug)]
pub(crate) enum ChunkAt {
    Chunk {
        payload: std::ops::Range<usize>,
        next: usize,
    },
    Padding,
    End,
    Bad(&'static str),
}

/// Reads the chunk at `at` (a multiple of BLOCK) of `file`, checksums and
/// all, without taking a reference to it.
pub(crate) fn chunk_at(file: &[u8], at: usize) -> ChunkAt {
    if at + CHUNK_HEADER_LEN > file.len() {
        return if file[at.min(file.len())..].iter().all(|&b| b == 0) {
            ChunkAt::End
        } else {
            ChunkAt::Bad("a partial chunk header at the end of the file")
        };
    }
    let header = &file[at..at + CHUNK_HEADER_LEN];
    if header.iter().all(|&b| b == 0) {
        return ChunkAt::Padding;
    }
    let word =
        |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    if word(0) != MAGIC {
        return ChunkAt::Bad("no chunk header where one should start");
    }
    if crc32c::checksum(&header[0..12]) != word(12) {
        return ChunkAt::Bad("the chunk header's checksum does not match");
    }
    let start = at + CHUNK_HEADER_LEN;
    let end = start + word(4) as usize;
    if end > file.len() {
        return ChunkAt::Bad("the chunk runs past the end of the file");
    }
    if crc32c::checksum(&file[start..end]) != word(8) {
        return ChunkAt::Bad("the chunk's checksum does not match");
    }
    ChunkAt::Chunk {
        payload: start..end,
        next: end.div_ceil(BLOCK) * BLOCK,
    }
}

/// A bounds-checked reader over a chunk's payload.
struct Cursor {
    data: Bytes,
    at: usize,
}

impl Cursor {
    fn take(&mut self, n: usize) -> Result<Bytes, &'static str> {
        if self.data.len() - self.at < n {
            return Err("a record runs past its chunk");
        }
        let out = self.data.slice(self.at..self.at + n);
        self.at += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        let b = self.take(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(&b);
        Ok(u64::from_be_bytes(word))
    }

    fn str8(&mut self) -> Result<ShortStr, &'static str> {
        let len = self.u8()? as usize;
        ShortStr::from_bytes(self.take(len)?).map_err(|_| "a name is not UTF-8")
    }
}

/// Decodes every record of a chunk's payload. A payload whose checksum
/// matched but that does not decode is a bug or a foreign file: an error,
/// never a half-read message.
pub(crate) fn decode_records(payload: Bytes) -> Result<Vec<Record>, &'static str> {
    let mut records = Vec::new();
    decode_records_at(payload, |_, _, record| records.push(record))?;
    Ok(records)
}

/// Decodes every record of a chunk's payload, handing each to `each` with
/// its offset in the payload and its length.
pub(crate) fn decode_records_at(
    payload: Bytes,
    mut each: impl FnMut(usize, usize, Record),
) -> Result<(), &'static str> {
    let mut c = Cursor {
        data: payload,
        at: 0,
    };
    while c.at < c.data.len() {
        let start = c.at;
        let record = match c.u8()? {
            PUBLISH => {
                let flags = c.u8()?;
                let level = c.u8()?;
                let queue_id = c.u64()?;
                let seq = c.u64()?;
                let expires = c.u64()?;
                let vhost = c.str8()?.as_str().to_string();
                let queue_name = c.str8()?.as_str().to_string();
                let exchange = c.str8()?;
                let routing_key = c.str8()?;
                let property_flags = c.u16()?;
                let raw_len = c.u32()? as usize;
                let raw = c.take(raw_len)?;
                let properties = Properties::from_wire(property_flags, raw)
                    .map_err(|_| "a message's properties do not decode")?;
                let bcc_count = c.u16()? as usize;
                let mut bcc = Vec::with_capacity(bcc_count);
                for _ in 0..bcc_count {
                    let len = c.u16()? as usize;
                    let key = c.take(len)?;
                    bcc.push(
                        String::from_utf8(key.to_vec()).map_err(|_| "a BCC key is not UTF-8")?,
                    );
                }
                let body_len = c.u64()?;
                let body_len = usize::try_from(body_len).map_err(|_| "a body too long")?;
                let body = c.take(body_len)?;
                Record::Publish(Box::new(StoredPublish {
                    queue_id,
                    seq,
                    delivered: flags & FLAG_DELIVERED != 0,
                    transient: flags & FLAG_TRANSIENT != 0,
                    level,
                    expires_at_epoch_ms: (expires != NEVER).then_some(expires),
                    vhost,
                    queue_name,
                    message: Message::new(
                        &exchange,
                        &routing_key,
                        &properties,
                        body,
                        (!bcc.is_empty()).then_some(bcc),
                    ),
                }))
            }
            REMOVAL => Record::Removal {
                queue_id: c.u64()?,
                seq: c.u64()?,
            },
            DELIVERED => Record::Delivered {
                queue_id: c.u64()?,
                seq: c.u64()?,
            },
            _ => return Err("an unknown record type"),
        };
        each(start, c.at - start, record);
    }
    Ok(())
}

/// What recovery needs of a record: everything but the message's
/// properties and body, which it skips without copying (a restart reads
/// the index of a backlog, not its bodies).
#[derive(Debug)]
pub(crate) enum RecordHead<'a> {
    Publish {
        queue_id: u64,
        seq: u64,
        delivered: bool,
        transient: bool,
        level: u8,
        expires_at_epoch_ms: Option<u64>,
        vhost: &'a [u8],
        queue_name: &'a [u8],
        body_bytes: u64,
    },
    Removal {
        queue_id: u64,
        seq: u64,
    },
    Delivered {
        queue_id: u64,
        seq: u64,
    },
}

/// A bounds-checked reader over a borrowed payload (no `Bytes` per field).
struct SliceCursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> SliceCursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.data.len() - self.at < n {
            return Err("a record runs past its chunk");
        }
        let out = &self.data[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(word))
    }

    fn str8(&mut self) -> Result<&'a [u8], &'static str> {
        let len = self.u8()? as usize;
        self.take(len)
    }
}

/// Walks every record of a chunk's payload as [`decode_records_at`] does,
/// handing each record's head to `each` with its offset in the payload and
/// its length; a publish's properties and body are skipped, not decoded.
pub(crate) fn decode_heads_at(
    payload: &[u8],
    mut each: impl FnMut(usize, usize, RecordHead),
) -> Result<(), &'static str> {
    let mut c = SliceCursor {
        data: payload,
        at: 0,
    };
    while c.at < c.data.len() {
        let start = c.at;
        let head = match c.u8()? {
            PUBLISH => {
                let flags = c.u8()?;
                let level = c.u8()?;
                let queue_id = c.u64()?;
                let seq = c.u64()?;
                let expires = c.u64()?;
                let vhost = c.str8()?;
                let queue_name = c.str8()?;
                let _exchange = c.str8()?;
                let _routing_key = c.str8()?;
                let _property_flags = c.u16()?;
                let raw_len = c.u32()? as usize;
                c.take(raw_len)?;
                let bcc_count = c.u16()? as usize;
                for _ in 0..bcc_count {
                    let len = c.u16()? as usize;
                    c.take(len)?;
                }
                let body_bytes = c.u64()?;
                let body_len = usize::try_from(body_bytes).map_err(|_| "a body too long")?;
                c.take(body_len)?;
                RecordHead::Publish {
                    queue_id,
                    seq,
                    delivered: flags & FLAG_DELIVERED != 0,
                    transient: flags & FLAG_TRANSIENT != 0,
                    level,
                    expires_at_epoch_ms: (expires != NEVER).then_some(expires),
                    vhost,
                    queue_name,
                    body_bytes,
                }
            }
            REMOVAL => RecordHead::Removal {
                queue_id: c.u64()?,
                seq: c.u64()?,
            },
            DELIVERED => RecordHead::Delivered {
                queue_id: c.u64()?,
                seq: c.u64()?,
            },
            _ => return Err("an unknown record type"),
        };
        each(start, c.at - start, head);
    }
    Ok(())
}

/// Decodes the one publish record in `bytes` (a paged message read back).
pub(crate) fn decode_publish(bytes: Bytes) -> Result<StoredPublish, &'static str> {
    match decode_records(bytes)?.into_iter().next() {
        Some(Record::Publish(publish)) => Ok(*publish),
        _ => Err("no publish record where a paged message should be"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::BasicProperties;

    fn message(body: &'static [u8]) -> Message {
        let props = BasicProperties {
            delivery_mode: Some(2),
            priority: Some(3),
            ..Default::default()
        };
        Message::new(
            "x",
            "key",
            &(&props).into(),
            Bytes::from_static(body),
            Some(vec!["bcc1".to_string()]),
        )
    }

    fn chunk_with(records: impl FnOnce(&mut Vec<u8>), alignment: usize) -> Vec<u8> {
        let mut buf = Vec::new();
        open_chunk(&mut buf);
        records(&mut buf);
        seal_chunk(&mut buf, alignment);
        buf
    }

    #[test]
    fn records_come_back_as_written() {
        let m = message(b"hello");
        let chunk = chunk_with(
            |buf| {
                put_publish(
                    buf,
                    &PublishHead {
                        queue_id: 7,
                        seq: 9,
                        delivered: true,
                        transient: false,
                        level: 3,
                        expires_at_epoch_ms: Some(123),
                        vhost: "/",
                        queue_name: "q",
                        message: &m,
                    },
                );
                put_delivered(buf, 7, 9);
                put_removal(buf, 7, 9);
            },
            512,
        );
        assert_eq!(chunk.len() % 512, 0);
        let file = Bytes::from(chunk);
        let ChunkRead::Chunk { payload, next } = read_chunk(&file, 0) else {
            panic!("no chunk");
        };
        assert_eq!(next, 512);
        let records = decode_records(payload).unwrap();
        assert_eq!(records.len(), 3);
        let Record::Publish(p) = &records[0] else {
            panic!("{records:?}")
        };
        assert_eq!((p.queue_id, p.seq, p.delivered, p.level), (7, 9, true, 3));
        assert_eq!(p.expires_at_epoch_ms, Some(123));
        assert_eq!((p.vhost.as_str(), p.queue_name.as_str()), ("/", "q"));
        assert_eq!(&p.message.body[..], b"hello");
        assert_eq!(p.message.properties(), m.properties());
        assert_eq!(p.message.bcc_keys(), Some(&["bcc1".to_string()][..]));
        assert!(matches!(
            records[1],
            Record::Delivered {
                queue_id: 7,
                seq: 9
            }
        ));
        assert!(matches!(
            records[2],
            Record::Removal {
                queue_id: 7,
                seq: 9
            }
        ));
        assert!(matches!(read_chunk(&file, 512), ChunkRead::End));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_detected() {
        let m = message(b"a body long enough to matter");
        let chunk = chunk_with(
            |buf| {
                for seq in 0..3 {
                    put_publish(
                        buf,
                        &PublishHead {
                            queue_id: 1,
                            seq,
                            delivered: false,
                            transient: false,
                            level: 0,
                            expires_at_epoch_ms: None,
                            vhost: "/",
                            queue_name: "q",
                            message: &m,
                        },
                    );
                }
            },
            512,
        );
        let used = CHUNK_HEADER_LEN + u32::from_be_bytes(chunk[4..8].try_into().unwrap()) as usize;
        for cut in 1..used {
            let file = Bytes::from(chunk[..cut].to_vec());
            assert!(
                matches!(read_chunk(&file, 0), ChunkRead::Bad(_)),
                "cut at {cut}"
            );
        }
        for at in 0..used {
            let mut bad = chunk.clone();
            bad[at] ^= 0x40;
            let file = Bytes::from(bad);
            assert!(
                !matches!(read_chunk(&file, 0), ChunkRead::Chunk { .. }),
                "flip at {at}"
            );
        }
    }

    #[test]
    fn zeros_are_padding_and_garbage_is_bad() {
        let zeros = Bytes::from(vec![0u8; 1024]);
        assert!(matches!(read_chunk(&zeros, 0), ChunkRead::Padding));
        let garbage = Bytes::from(vec![0xAB; 1024]);
        assert!(matches!(read_chunk(&garbage, 0), ChunkRead::Bad(_)));
        assert!(decode_records(Bytes::from_static(&[9])).is_err());
        assert!(decode_records(Bytes::from_static(&[2, 0, 0])).is_err());
    }
}

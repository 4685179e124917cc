//! A message as the broker carries it: the publish's exchange and routing key
//! and the content header's properties in wire form (decoded only when a
//! feature needs a field), all in one `head` buffer, and the body.
//!
//! A publish read whole from a socket (`peek_publish`) keeps both as slices
//! of the read buffer it arrived in: its head is the stretch of frames from
//! the exchange name to the end of the property list, with the bytes between
//! them skipped by offset. Anything else (a publish split across reads, a
//! dead letter, a recovered message) gets a head of its own, packed.
//!
//! Cloning a `Message` clones two `Bytes` handles (refcount increments), never
//! the payload: that is how one publish reaches several queues and shards.
//! It is 80 bytes, so moving it along the per-message path is cheap.

use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use warren_protocol::properties::{self, flag};
use warren_protocol::{FrameError, Properties, ShortStr};

#[derive(Clone, Debug)]
pub struct Message {
    /// The exchange name, the routing key and the property list, at the
    /// offsets below (the list runs to the end).
    head: Bytes,
    pub(crate) body: Bytes,
    exchange_len: u8,
    routing_key_len: u8,
    routing_key_at: u16,
    properties_at: u16,
    property_flags: u16,
    /// The BCC routing keys it was published with (sender-selected
    /// distribution): gone from its headers, kept because dead-lettering
    /// routes with every key a message was published with, as RabbitMQ's
    /// `routing_keys` does. None for nearly every message: one word and
    /// no refcount.
    bcc_keys: Option<Arc<Vec<String>>>,
}

impl Message {
    /// A message with a head of its own: the names and properties are copied.
    pub fn new(
        exchange: &str,
        routing_key: &str,
        properties: &Properties,
        body: Bytes,
        bcc_keys: Option<Vec<String>>,
    ) -> Message {
        debug_assert!(exchange.len() <= 255 && routing_key.len() <= 255);
        let raw = properties.raw();
        let mut head = BytesMut::with_capacity(exchange.len() + routing_key.len() + raw.len());
        head.put_slice(exchange.as_bytes());
        head.put_slice(routing_key.as_bytes());
        head.put_slice(raw);
        Message {
            head: head.freeze(),
            body,
            exchange_len: exchange.len() as u8,
            routing_key_len: routing_key.len() as u8,
            routing_key_at: exchange.len() as u16,
            properties_at: (exchange.len() + routing_key.len()) as u16,
            property_flags: properties.flags(),
            bcc_keys: bcc_keys.map(Arc::new),
        }
    }

    /// A message whose names and property list are slices of `frames`, the
    /// publish's frames as read: no copy, one refcount for all three. The
    /// names are checked here (`ShortStr::check`: `exchange()` and
    /// `routing_key()` rely on it); the caller validates the property list
    /// (`Properties::from_wire`) before the message goes anywhere.
    pub(crate) fn in_frames(
        frames: &Bytes,
        exchange: Range<usize>,
        routing_key: Range<usize>,
        property_flags: u16,
        properties: Range<usize>,
        body: Bytes,
    ) -> Result<Message, FrameError> {
        assert!(exchange.end <= routing_key.start && routing_key.end <= properties.start);
        ShortStr::check(&frames[exchange.clone()])?;
        ShortStr::check(&frames[routing_key.clone()])?;
        let start = exchange.start;
        Ok(Message {
            head: frames.slice(start..properties.end),
            body,
            exchange_len: exchange.len() as u8,
            routing_key_len: routing_key.len() as u8,
            routing_key_at: (routing_key.start - start) as u16,
            properties_at: (properties.start - start) as u16,
            property_flags,
            bcc_keys: None,
        })
    }

    pub(crate) fn exchange(&self) -> &str {
        self.str_at(0, self.exchange_len)
    }

    pub(crate) fn routing_key(&self) -> &str {
        self.str_at(self.routing_key_at as usize, self.routing_key_len)
    }

    fn str_at(&self, at: usize, len: u8) -> &str {
        let bytes = &self.head[at..at + len as usize];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: both constructors take UTF-8 names only: `new` takes
        // `&str`s, and `in_frames` checks its names with `ShortStr::check`;
        // the head is immutable afterwards. A check here would cost every
        // routed and delivered message.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// The exchange name as a `ShortStr` (a slice of the head).
    pub(crate) fn exchange_name(&self) -> ShortStr {
        ShortStr::from_bytes(self.head.slice(0..self.exchange_len as usize)).unwrap_or_default()
    }

    /// The routing key as a `ShortStr` (a slice of the head).
    pub(crate) fn routing_key_name(&self) -> ShortStr {
        let at = self.routing_key_at as usize;
        ShortStr::from_bytes(self.head.slice(at..at + self.routing_key_len as usize))
            .unwrap_or_default()
    }

    /// The properties (a slice of the head).
    pub(crate) fn properties(&self) -> Properties {
        Properties::from_validated(
            self.property_flags,
            self.head.slice(self.properties_at as usize..),
        )
    }

    pub(crate) fn property_flags(&self) -> u16 {
        self.property_flags
    }

    /// The property list, flags excluded.
    pub(crate) fn properties_raw(&self) -> &[u8] {
        &self.head[self.properties_at as usize..]
    }

    /// `delivery-mode`, read in place.
    pub(crate) fn delivery_mode(&self) -> Option<u8> {
        properties::octet_in(
            self.property_flags,
            &self.head,
            self.properties_at as usize,
            flag::DELIVERY_MODE,
        )
    }

    /// `priority`, read in place.
    pub(crate) fn priority(&self) -> Option<u8> {
        properties::octet_in(
            self.property_flags,
            &self.head,
            self.properties_at as usize,
            flag::PRIORITY,
        )
    }

    /// `expiration`, read only if set.
    pub(crate) fn expiration(&self) -> Option<ShortStr> {
        if self.property_flags & flag::EXPIRATION == 0 {
            return None;
        }
        self.properties().expiration()
    }

    pub(crate) fn bcc_keys(&self) -> Option<&[String]> {
        self.bcc_keys.as_deref().map(Vec::as_slice)
    }

    /// Gives the body an allocation of its own: a message decoded from a
    /// read of the store (its head is its own already) would otherwise keep
    /// the whole read alive.
    pub(crate) fn own_body(&mut self) {
        self.body = Bytes::copy_from_slice(&self.body);
    }

    /// The same message in allocations of its own. A message fresh from a
    /// publish is slices of its connection's read buffer, which a message
    /// held for long (by a transaction or a delayed exchange) would keep
    /// alive whole while the memory alarm counts only the message.
    pub(crate) fn detached(&self) -> Message {
        Message::new(
            self.exchange(),
            self.routing_key(),
            &self.properties(),
            Bytes::copy_from_slice(&self.body),
            None,
        )
        .with_bcc_keys_of(self)
    }

    /// Keeps `other`'s BCC keys.
    pub(crate) fn with_bcc_keys_of(mut self, other: &Message) -> Message {
        self.bcc_keys = other.bcc_keys.clone();
        self
    }

    pub(crate) fn body_size(&self) -> u64 {
        self.body.len() as u64
    }

    /// What holding this message costs, as the memory alarm counts it
    /// (`broker::alarms`): its bytes and a fixed overhead.
    pub(crate) fn memory_size(&self) -> u64 {
        (self.body.len() + self.head.len()) as u64 + crate::model::alarms::MESSAGE_OVERHEAD_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::BasicProperties;

    #[test]
    fn a_message_is_small_enough_to_move_inline() {
        assert!(std::mem::size_of::<Message>() <= 80);
    }

    #[test]
    fn names_in_frames_must_be_shortstrs() {
        let frames = Bytes::from_static(b"ok\xff\xfeprops");
        let made = |exchange, key| {
            Message::in_frames(&frames, exchange, key, 0, 4..9, Bytes::new()).map(|_| ())
        };
        assert!(made(0..2, 2..2).is_ok());
        assert!(made(0..2, 2..4).is_err(), "a routing key that is not UTF-8");
        assert!(made(2..3, 3..3).is_err(), "an exchange that is not UTF-8");
    }

    #[test]
    fn both_constructors_read_back_the_same() {
        let properties = BasicProperties {
            delivery_mode: Some(2),
            priority: Some(7),
            expiration: Some("1000".into()),
            ..Default::default()
        }
        .encode();
        let body = Bytes::from_static(b"body");
        let packed = Message::new("amq.direct", "key", &properties, body.clone(), None);
        // The frames' layout: names with their length octets and whatever
        // lies between the routing key and the property list.
        let mut frames = BytesMut::new();
        frames.put_slice(b"\x00\x0aamq.direct\x03key\x00junk-between");
        let property_list = frames.len();
        frames.put_slice(properties.raw());
        let frames = frames.freeze();
        let sliced = Message::in_frames(
            &frames,
            2..12,
            13..16,
            properties.flags(),
            property_list..frames.len(),
            body,
        )
        .unwrap();
        for m in [&packed, &sliced] {
            assert_eq!(m.exchange(), "amq.direct");
            assert_eq!(m.routing_key(), "key");
            assert_eq!(m.exchange_name().as_str(), "amq.direct");
            assert_eq!(m.routing_key_name().as_str(), "key");
            assert_eq!(m.properties(), properties);
            assert_eq!(m.delivery_mode(), Some(2));
            assert_eq!(m.priority(), Some(7));
            assert_eq!(m.expiration().as_deref(), Some("1000"));
            assert_eq!(&m.body[..], b"body");
        }
    }
}

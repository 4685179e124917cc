//! A message as the broker carries it: the publish's exchange and routing key,
//! the content header's properties in wire form (decoded only when a feature
//! needs a field), and the body as a slice of the read buffer it arrived in.
//!
//! Cloning a `Message` clones four `Bytes` handles (refcount increments), never
//! the payload: that is how one publish reaches several queues and shards.

use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::{Properties, ShortStr};

#[derive(Clone, Debug)]
pub struct Message {
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    pub properties: Properties,
    pub body: Bytes,
    /// The BCC routing keys it was published with (sender-selected
    /// distribution): gone from its headers, kept because dead-lettering
    /// routes with every key a message was published with, as RabbitMQ's
    /// `routing_keys` does. None for nearly every message: two words
    /// and no refcount.
    pub bcc_keys: Option<Arc<[String]>>,
}

impl Message {
    pub fn body_size(&self) -> u64 {
        self.body.len() as u64
    }

    /// What holding this message costs, as the memory alarm counts it
    /// (`broker::alarms`): its bytes and a fixed overhead.
    pub fn memory_size(&self) -> u64 {
        (self.body.len()
            + self.properties.raw().len()
            + self.exchange.len()
            + self.routing_key.len()) as u64
            + crate::broker::alarms::MESSAGE_OVERHEAD_BYTES
    }
}

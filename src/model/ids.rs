//! Identifiers that cross module and shard boundaries, as newtypes so that two
//! numbers of different kinds cannot be swapped silently.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl ShardId {
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A connection, unique within its shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A connection anywhere in the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnRef {
    pub shard: ShardId,
    pub conn: ConnId,
}

impl ConnRef {
    /// How log lines name the connection, in the shape of the Erlang
    /// process id RabbitMQ's lines show: `<SHARD.CONN.0>`.
    pub fn label(&self) -> String {
        format!("<{}.{}.0>", self.shard.0, self.conn.0)
    }
}

/// A queue, unique in the broker for its lifetime; assigned by the metadata owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

/// Where a queue lives: enough to send it a message without a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueRef {
    pub id: QueueId,
    pub shard: ShardId,
}

/// A consumer's id within its queue (0 is "no consumer": a basic.get delivery).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerId(pub u64);

impl ConsumerId {
    pub(crate) const GET: ConsumerId = ConsumerId(0);
}

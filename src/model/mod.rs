//! The nouns every layer above the codec shares: ids (`ids`), a message as
//! the broker holds it (`message`), and the alarm state shards share
//! (`alarms`). It imports only `util` and the codec crate, so both the broker
//! and the store can name a `Message` without naming each other.

pub(crate) mod alarms;
pub mod ids;
pub mod message;

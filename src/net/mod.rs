//! Sockets: the listening sockets every shard shares through SO_REUSEPORT,
//! and the two tasks that serve one connection (a reader that feeds bytes to
//! the connection's state machine, and a writer that flushes its output,
//! many frames per write).

pub mod connection;
pub mod listener;

//! Sockets: the listening sockets every shard shares through SO_REUSEPORT
//! and the accept loop, and the two tasks that serve one connection (a
//! reader that feeds bytes to the connection's host, and a writer that
//! flushes its output, many frames per write), and TLS between the socket
//! and those tasks (`tls`). The shard is seen only
//! through `connection::ConnectionHost`: this module imports `util` and
//! `config` of warren, never `broker`.

pub(crate) mod connection;
pub(crate) mod listener;
pub mod tls;

//! The metadata as what it is: users and their passwords, vhost names,
//! queues as declared (`QueueMeta`) with their checked arguments, the
//! declared shapes of exchanges and bindings, the changes made to them
//! (`MetaChange`), and the RabbitMQ definitions JSON format they are kept
//! in. Plain data and pure functions: no I/O, no runtime, no routing.
//!
//! This layer sits below `store` and `broker`, and imports only `model`,
//! `util`, `config` and the codec crate (`warren_protocol`). The broker's
//! runtime parts (the metadata owner that serialises changes and applies
//! them to every shard, each shard's routing replica, the routers) live in
//! `broker` and import from here; the store reads `QueueMeta` at recovery.
//!
//! - `auth`: the access-control database (users, vhosts, permissions,
//!   topic permissions, limits) and its checks, SASL PLAIN/AMQPLAIN, the
//!   loopback rule;
//! - `password`: RabbitMQ's salted password hashes;
//! - `policy`: policies, their checks, and a queue's effective arguments;
//! - `exchange`: exchange types, `ExchangeDef`, `Binding`, `Destination`,
//!   and the checks of `x-delayed-type` and `x-match`;
//! - `queue_args`: queue arguments checked as RabbitMQ checks them;
//! - `vhost`: `DEFAULT_VHOST`, `QueueMeta`, `MetaChange`, the
//!   `DefinitionsView` the format reads, and `Catalog`, a vhost's plain
//!   definitions;
//! - `definitions`: the RabbitMQ definitions JSON format, and the plan that
//!   restores it at start.

pub(crate) mod auth;
pub(crate) mod definitions;
pub mod exchange;
pub(crate) mod password;
pub(crate) mod policy;
pub(crate) mod queue_args;
pub mod vhost;

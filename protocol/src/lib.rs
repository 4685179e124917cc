//! The AMQP 0-9-1 codec: bytes ⇄ frames ⇄ methods. No sockets, no runtime, no broker
//! types; `net/` feeds it bytes and `broker/` consumes what it returns.
//!
//! - `types`: `ShortStr`, and the bounds-checked reader and argument writers.
//! - `table`: field tables and arrays, with RabbitMQ's type tags.
//! - `properties`: basic properties, kept in wire form and decoded on demand.
//! - `method`: every class and method, generated from one table in spec order.
//! - `frame`: frame parsing and writing, and `FrameError`.
//! - `reply`: reply codes, `AmqpError`, and the error → close-method rule.

pub mod frame;
pub mod method;
pub mod properties;
pub mod reply;
pub mod table;
pub mod types;

pub use frame::{
    parse_frame, peek_deliver, peek_publish, write_body, write_content_header,
    write_content_header_raw, write_deliver, write_deliver_method, write_heartbeat, write_method,
    ContentHeader, Deliver, DeliverShape, Frame, FrameError, PublishShape, FRAME_END,
    FRAME_HEADER_SIZE, FRAME_MIN_SIZE, FRAME_OVERHEAD, PROTOCOL_HEADER,
};
pub use method::*;
pub use properties::{BasicProperties, Properties};
pub use reply::{close_method, AmqpError, ReplyCode};
pub use table::{FieldTable, FieldValue};
pub use types::ShortStr;

#[cfg(test)]
mod oracle_tests;

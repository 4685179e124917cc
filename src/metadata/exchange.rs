//! The declared shape of exchanges and bindings: an exchange's type, flags
//! and arguments, a binding's ends, key and arguments, and the checks on
//! them that do not depend on any other definition (`x-delayed-type`,
//! `x-match`). The routers that act on these shapes live in
//! `broker::exchange`; this module only says what was declared.

use crate::model::ids::QueueRef;
use warren_protocol::{AmqpError, FieldTable, FieldValue, ShortStr};

/// The exchanges RabbitMQ declares in every vhost, with their types.
pub(crate) const DEFAULT_EXCHANGES: [(&str, ExchangeKind); 7] = [
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
    (TRACE_EXCHANGE, ExchangeKind::Topic),
];

/// The firehose tracer's exchange: a topic exchange in every vhost,
/// internal (clients bind to it but cannot publish to it), as RabbitMQ's.
pub const TRACE_EXCHANGE: &str = "amq.rabbitmq.trace";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    /// False for the types whose routing ignores the routing key.
    pub(crate) fn routes_by_key(self) -> bool {
        matches!(self, ExchangeKind::Direct | ExchangeKind::Topic)
    }

    pub(crate) fn parse(name: &str) -> Option<ExchangeKind> {
        match name {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// The exchange type of the delayed-message plugin.
pub(crate) const DELAYED_TYPE: &str = "x-delayed-message";
/// The argument naming a delayed exchange's routing type.
pub(crate) const DELAYED_TYPE_ARGUMENT: &str = "x-delayed-type";

/// The argument naming an exchange's alternate exchange, where messages go
/// that the exchange routes nowhere.
pub(crate) const ALTERNATE_EXCHANGE_ARGUMENT: &str = "alternate-exchange";

/// Checks a new exchange's `alternate-exchange` as RabbitMQ's channel does
/// before declaring (`rabbit_misc:r_arg`): absent, or a longstr.
pub(crate) fn check_alternate_exchange(
    exchange: &str,
    arguments: &FieldTable,
) -> Result<(), AmqpError> {
    match arguments.get(ALTERNATE_EXCHANGE_ARGUMENT) {
        None | Some(FieldValue::LongStr(_)) => Ok(()),
        Some(other) => Err(AmqpError::precondition_failed(format!(
            "invalid type '{}' for arg '{}' in exchange '{}' in vhost '/'",
            other.type_name(),
            ALTERNATE_EXCHANGE_ARGUMENT,
            exchange
        ))),
    }
}

/// Where a binding leads: a queue, or another exchange (exchange-to-exchange
/// bindings, a RabbitMQ extension).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    Queue(QueueRef),
    Exchange(ShortStr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub source: ShortStr,
    pub destination: Destination,
    pub routing_key: ShortStr,
    pub arguments: FieldTable,
}

impl Binding {
    /// RabbitMQ identifies a binding by source, destination, key and arguments.
    pub(crate) fn same_as(&self, other: &Binding) -> bool {
        self.source == other.source
            && self.destination == other.destination
            && self.routing_key == other.routing_key
            && self.arguments == other.arguments
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ExchangeDef {
    pub name: ShortStr,
    /// How the exchange routes: its type, or for a delayed exchange its
    /// `x-delayed-type`.
    pub kind: ExchangeKind,
    /// An `x-delayed-message` exchange: messages with a positive `x-delay`
    /// are held for that long before they are routed.
    pub delayed: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

impl ExchangeDef {
    /// One of the exchanges every vhost has (`DEFAULT_EXCHANGES`).
    pub(crate) fn default_exchange(name: &str, kind: ExchangeKind) -> ExchangeDef {
        ExchangeDef {
            name: ShortStr::from(name),
            kind,
            delayed: false,
            durable: true,
            auto_delete: false,
            internal: name == TRACE_EXCHANGE,
            arguments: FieldTable::default(),
        }
    }

    /// The type as declared and as RabbitMQ lists it.
    pub(crate) fn type_name(&self) -> &'static str {
        if self.delayed {
            DELAYED_TYPE
        } else {
            self.kind.name()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MatchMode {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl MatchMode {
    /// Reads `x-match` from binding arguments; None for an invalid value
    /// (RabbitMQ refuses such a binding with 406).
    pub(crate) fn from_arguments(arguments: &FieldTable) -> Option<MatchMode> {
        match arguments.get("x-match") {
            None => Some(MatchMode::All),
            Some(value) => match value.as_str() {
                Some("all") => Some(MatchMode::All),
                Some("any") => Some(MatchMode::Any),
                Some("all-with-x") => Some(MatchMode::AllWithX),
                Some("any-with-x") => Some(MatchMode::AnyWithX),
                _ => None,
            },
        }
    }
}

pub(crate) fn unknown_exchange_type(kind: &[u8]) -> AmqpError {
    AmqpError::command_invalid(format!(
        "unknown exchange type '{}'",
        String::from_utf8_lossy(kind)
    ))
}

/// The routing type of a new `x-delayed-message` exchange, checked as the
/// plugin's `validate/1` checks `x-delayed-type` (first entry of the key):
/// a string (longstr or byte array) naming a known type other than
/// x-delayed-message itself.
pub(crate) fn delayed_type(arguments: &FieldTable) -> Result<ExchangeKind, AmqpError> {
    match arguments
        .get(DELAYED_TYPE_ARGUMENT)
        .and_then(FieldValue::as_bytes)
    {
        Some(kind) if kind.as_ref() == DELAYED_TYPE.as_bytes() => {
            Err(AmqpError::precondition_failed(
                "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'",
            ))
        }
        Some(kind) => std::str::from_utf8(kind)
            .ok()
            .and_then(ExchangeKind::parse)
            .ok_or_else(|| unknown_exchange_type(kind)),
        None => Err(AmqpError::precondition_failed(
            "Invalid argument, 'x-delayed-type' must be an existing exchange type",
        )),
    }
}

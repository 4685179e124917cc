//! Exchanges and their bindings: one file per exchange type, each answering
//! one question, "which destinations does this message go to?".
//!
//! Every shard holds a replica of every exchange (see `broker::vhost`), so
//! routing never leaves the publishing connection's shard.
//!
//! An `x-delayed-message` exchange (the rabbitmq-delayed-message-exchange
//! plugin's type) is an exchange of its `x-delayed-type` with `delayed` set:
//! it binds and routes exactly like that type, and `broker::vhost::route`
//! holds a message with a positive `x-delay` instead of routing it (see
//! `broker::delayed`).

pub mod direct;
pub mod fanout;
pub mod headers;
pub mod topic;

use crate::model::ids::QueueRef;
use warren_protocol::{FieldTable, Properties, ShortStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(name: &str) -> Option<ExchangeKind> {
        match name {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    /// False for the types whose routing ignores the routing key.
    pub fn routes_by_key(self) -> bool {
        matches!(self, ExchangeKind::Direct | ExchangeKind::Topic)
    }

    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// The exchange type of the delayed-message plugin.
pub const DELAYED_TYPE: &str = "x-delayed-message";
/// The argument naming a delayed exchange's routing type.
pub const DELAYED_TYPE_ARGUMENT: &str = "x-delayed-type";

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
    pub fn same_as(&self, other: &Binding) -> bool {
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
    /// The type as declared and as RabbitMQ lists it.
    pub fn type_name(&self) -> &'static str {
        if self.delayed {
            DELAYED_TYPE
        } else {
            self.kind.name()
        }
    }
}

/// The routing structure of one exchange type.
#[derive(Debug)]
pub enum Router {
    Direct(direct::DirectRouter),
    Fanout(fanout::FanoutRouter),
    Topic(topic::TopicRouter),
    Headers(headers::HeadersRouter),
}

impl Router {
    fn new(kind: ExchangeKind) -> Router {
        match kind {
            ExchangeKind::Direct => Router::Direct(Default::default()),
            ExchangeKind::Fanout => Router::Fanout(Default::default()),
            ExchangeKind::Topic => Router::Topic(Default::default()),
            ExchangeKind::Headers => Router::Headers(Default::default()),
        }
    }
}

#[derive(Debug)]
pub struct Exchange {
    pub def: ExchangeDef,
    router: Router,
    /// Bindings whose source is this exchange, in the order they were made.
    pub bindings: Vec<Binding>,
}

impl Exchange {
    pub fn new(def: ExchangeDef) -> Exchange {
        Exchange {
            router: Router::new(def.kind),
            def,
            bindings: Vec::new(),
        }
    }

    /// Adds a binding; false if an identical one already exists.
    pub fn bind(&mut self, binding: Binding) -> bool {
        if self.bindings.iter().any(|b| b.same_as(&binding)) {
            return false;
        }
        match &mut self.router {
            Router::Direct(r) => r.bind(&binding),
            Router::Fanout(r) => r.bind(&binding),
            Router::Topic(r) => r.bind(&binding),
            Router::Headers(r) => r.bind(&binding),
        }
        self.bindings.push(binding);
        true
    }

    /// Removes a binding; false if there was none.
    pub fn unbind(&mut self, binding: &Binding) -> bool {
        let Some(at) = self.bindings.iter().position(|b| b.same_as(binding)) else {
            return false;
        };
        let removed = self.bindings.remove(at);
        match &mut self.router {
            Router::Direct(r) => r.unbind(&removed),
            Router::Fanout(r) => r.unbind(&removed),
            Router::Topic(r) => r.unbind(&removed),
            Router::Headers(r) => r.unbind(&removed),
        }
        true
    }

    /// Removes every binding to `destination`; returns how many went.
    pub fn unbind_destination(&mut self, destination: &Destination) -> usize {
        let doomed: Vec<Binding> = self
            .bindings
            .iter()
            .filter(|b| &b.destination == destination)
            .cloned()
            .collect();
        for binding in &doomed {
            self.unbind(binding);
        }
        doomed.len()
    }

    /// Appends this exchange's destinations for a message to `out` (possibly
    /// with duplicates; the caller deduplicates once for the whole route).
    pub fn route(&self, routing_key: &str, properties: &Properties, out: &mut Vec<Destination>) {
        match &self.router {
            Router::Direct(r) => r.route(routing_key, out),
            Router::Fanout(r) => r.route(out),
            Router::Topic(r) => r.route(routing_key, out),
            Router::Headers(r) => {
                if !r.is_empty() {
                    let headers = properties.headers().unwrap_or_default();
                    r.route(&headers, out)
                }
            }
        }
    }
}

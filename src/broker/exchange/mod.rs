//! Exchanges and their bindings: one file per exchange type, each answering
//! one question, "which destinations does this message go to?".
//!
//! Every shard holds a replica of every exchange (see `broker::vhost`), so
//! routing never leaves the publishing connection's shard. What an exchange
//! and a binding are as declared (`ExchangeDef`, `Binding`, `Destination`)
//! lives in `metadata::exchange`; this module holds the routers built from
//! them.
//!
//! An `x-delayed-message` exchange (the rabbitmq-delayed-message-exchange
//! plugin's type) is an exchange of its `x-delayed-type` with `delayed` set:
//! it binds and routes exactly like that type, and `broker::vhost::route`
//! holds a message with a positive `x-delay` instead of routing it (see
//! `broker::delayed`).

pub(crate) mod direct;
pub(crate) mod fanout;
pub(crate) mod headers;
pub mod topic;

use crate::metadata::exchange::{
    Binding, Destination, ExchangeDef, ExchangeKind, ALTERNATE_EXCHANGE_ARGUMENT,
};
use warren_protocol::{FieldValue, Properties, ShortStr};

/// The routing structure of one exchange type.
#[derive(Debug)]
pub(crate) enum Router {
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

/// The `alternate-exchange` an exchange was declared with.
fn declared_alternate(def: &ExchangeDef) -> Option<ShortStr> {
    match def.arguments.get(ALTERNATE_EXCHANGE_ARGUMENT) {
        Some(FieldValue::LongStr(name)) => ShortStr::from_bytes(name.clone()).ok(),
        _ => None,
    }
}

#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) def: ExchangeDef,
    router: Router,
    /// Bindings whose source is this exchange, in the order they were made.
    pub(crate) bindings: Vec<Binding>,
    /// Its `alternate-exchange`: where a message goes that this exchange
    /// routes nowhere. Only a longstr names one, as in RabbitMQ (whose
    /// declare refuses any other type).
    pub(crate) alternate: Option<ShortStr>,
}

impl Exchange {
    pub(crate) fn new(def: ExchangeDef) -> Exchange {
        let alternate = declared_alternate(&def);
        Exchange {
            router: Router::new(def.kind),
            def,
            bindings: Vec::new(),
            alternate,
        }
    }

    /// Takes the `alternate-exchange` of the policy that now applies: the
    /// exchange's own argument wins over it, as `rabbit_policy:get_arg`
    /// has it.
    pub(crate) fn set_policy_alternate(&mut self, policy: Option<&ShortStr>) {
        self.alternate = declared_alternate(&self.def).or_else(|| policy.cloned());
    }

    /// Adds a binding; false if an identical one already exists.
    pub(crate) fn bind(&mut self, binding: Binding) -> bool {
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
    pub(crate) fn unbind(&mut self, binding: &Binding) -> bool {
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
    pub(crate) fn unbind_destination(&mut self, destination: &Destination) -> usize {
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
    pub(crate) fn route(
        &self,
        routing_key: &str,
        properties: &Properties,
        out: &mut Vec<Destination>,
    ) {
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

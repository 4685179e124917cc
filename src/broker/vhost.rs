//! One virtual host's definitions as every shard sees them: exchanges with
//! their bindings, and the directory of queues (name → id, owning shard,
//! flags). Each shard holds an identical replica; the metadata owner changes
//! them all through `MetaChange`s applied in the same order everywhere.
//!
//! Routing reads only this replica, so a publish is routed on the shard that
//! received it without asking anyone.
//!
//! The definitions themselves (`QueueMeta`, `MetaChange`, the exchanges'
//! declared shapes) live in `metadata`; this is their routing replica.

use crate::util::hash::{FastMap, FastSet};

use crate::broker::delayed;
use crate::broker::exchange::Exchange;
use crate::metadata::exchange::{Binding, Destination, ExchangeDef, DEFAULT_EXCHANGES};
use crate::metadata::policy::{self, Policy};
use crate::metadata::vhost::{DefinitionsView, MetaChange, QueueMeta};
use crate::model::ids::{QueueId, QueueRef};
use warren_protocol::{Properties, ShortStr};

#[derive(Debug)]
pub(crate) struct Vhost {
    pub(crate) exchanges: FastMap<ShortStr, Exchange>,
    pub(crate) queues: FastMap<ShortStr, QueueMeta>,
    queue_names: FastMap<QueueId, ShortStr>,
    /// Changes applied so far: a routing result remembered at one
    /// generation holds until the next change.
    generation: u64,
    /// The firehose tracer is on (`ShardState::set_tracing`): publishes
    /// and deliveries are copied to `amq.rabbitmq.trace`. One branch per
    /// message when off.
    pub(crate) tracing: bool,
}

impl Vhost {
    /// A vhost with the exchanges RabbitMQ declares in every vhost.
    pub(crate) fn new() -> Vhost {
        let mut vhost = Vhost {
            exchanges: FastMap::default(),
            queues: FastMap::default(),
            queue_names: FastMap::default(),
            generation: 0,
            tracing: false,
        };
        for (name, kind) in DEFAULT_EXCHANGES {
            vhost.apply(&MetaChange::ExchangeCreated(ExchangeDef::default_exchange(
                name, kind,
            )));
        }
        vhost
    }

    /// Applies `policies` (the vhost's, all of them) to its exchanges:
    /// their alternate exchanges follow the policy that matches each. A
    /// routing result remembered before no longer holds.
    pub(crate) fn apply_policies<'a>(
        &mut self,
        policies: impl Iterator<Item = &'a Policy> + Clone,
    ) {
        self.generation += 1;
        for exchange in self.exchanges.values_mut() {
            let policy = policy::matching(policies.clone(), exchange.def.name.as_str(), false);
            exchange
                .set_policy_alternate(policy.and_then(|p| p.settings.alternate_exchange.as_ref()));
        }
    }

    /// How many changes this replica has applied.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn queue_by_id(&self, id: QueueId) -> Option<&QueueMeta> {
        self.queue_names
            .get(&id)
            .and_then(|name| self.queues.get(name))
    }

    /// Applies a change; returns auto-delete exchanges it left without
    /// bindings (only the metadata owner acts on them).
    pub(crate) fn apply(&mut self, change: &MetaChange) -> Vec<ShortStr> {
        self.generation += 1;
        let mut emptied = Vec::new();
        match change {
            MetaChange::ExchangeCreated(def) => {
                self.exchanges
                    .entry(def.name.clone())
                    .or_insert_with(|| Exchange::new(def.clone()));
            }
            MetaChange::ExchangeDeleted(name) => {
                self.exchanges.remove(name.as_str());
                let destination = Destination::Exchange(name.clone());
                self.unbind_everywhere(&destination, &mut emptied);
            }
            MetaChange::QueueCreated(meta) => {
                self.queue_names.insert(meta.id, meta.name.clone());
                self.queues.insert(meta.name.clone(), meta.clone());
            }
            MetaChange::QueueDeleted(queue) => {
                if let Some(name) = self.queue_names.remove(&queue.id) {
                    self.queues.remove(name.as_str());
                }
                self.unbind_everywhere(&Destination::Queue(*queue), &mut emptied);
            }
            MetaChange::BindingAdded(binding) => {
                if let Some(exchange) = self.exchanges.get_mut(binding.source.as_str()) {
                    exchange.bind(binding.clone());
                }
            }
            MetaChange::BindingRemoved(binding) => {
                if let Some(exchange) = self.exchanges.get_mut(binding.source.as_str()) {
                    if exchange.unbind(binding)
                        && exchange.def.auto_delete
                        && exchange.bindings.is_empty()
                    {
                        emptied.push(exchange.def.name.clone());
                    }
                }
            }
        }
        emptied
    }

    fn unbind_everywhere(&mut self, destination: &Destination, emptied: &mut Vec<ShortStr>) {
        for exchange in self.exchanges.values_mut() {
            if exchange.unbind_destination(destination) > 0
                && exchange.def.auto_delete
                && exchange.bindings.is_empty()
            {
                emptied.push(exchange.def.name.clone());
            }
        }
    }

    /// Where a message published to `exchange` goes, in `out`: the queues it
    /// reaches now, deduplicated, and the delayed exchanges that hold it.
    /// The message is routed with `routing_key` and then each of `extra_keys`
    /// (its CC and BCC keys), and a queue reached by several keys or paths is
    /// listed once. Follows exchange-to-exchange bindings, each exchange at
    /// most once. An exchange that routes the message nowhere passes it to
    /// its alternate exchange, if it has one, as RabbitMQ's
    /// `rabbit_exchange:route` does: the alternate is one more exchange to
    /// visit, so a chain of them ends at the first that routes, and a loop
    /// or a missing one ends the walk (bounded by the number of exchanges).
    /// An `x-delayed-message` exchange reached with a positive
    /// `x-delay` (read from the headers only then, and at most once) goes to
    /// `out.delayed` instead of routing further, as the plugin's route
    /// returns no queues for a message it delays. `scratch` and `out` are
    /// reused between publishes, so routing allocates nothing.
    pub(crate) fn route<K: AsRef<str>>(
        &self,
        exchange: &Exchange,
        routing_key: &str,
        extra_keys: &[K],
        properties: &Properties,
        scratch: &mut Vec<Destination>,
        out: &mut Routed,
    ) {
        out.clear();
        scratch.clear();
        // A publish with CC or BCC keys routes with each distinct key once.
        let mut distinct: Vec<&str> = Vec::new();
        if !extra_keys.is_empty() {
            distinct.push(routing_key);
            distinct.extend(extra_keys.iter().map(AsRef::as_ref));
            distinct.sort_unstable();
            distinct.dedup();
        }
        let keys: &[&str] = if distinct.is_empty() {
            std::slice::from_ref(&routing_key)
        } else {
            &distinct
        };
        let mut seen = None;
        let mut delay = DelayLookup::default();
        if exchange.def.delayed {
            if let Some(delay_ms) = delay.get(properties) {
                out.delayed.push(exchange.def.name.clone());
                out.delay_ms = delay_ms;
                return;
            }
        }
        if exchange.def.name.is_empty() {
            // The default exchange binds every queue by its own name.
            for key in keys {
                if let Some(meta) = self.queues.get(*key) {
                    out.queues.push(meta.queue_ref());
                }
            }
        } else {
            if !route_with_keys(exchange, keys, properties, scratch, &mut seen) {
                push_alternate(exchange, scratch);
            }
            let mut visited: Vec<ShortStr> = Vec::new();
            let mut at = 0;
            while at < scratch.len() {
                let name = match &scratch[at] {
                    Destination::Queue(queue) => {
                        out.queues.push(*queue);
                        at += 1;
                        continue;
                    }
                    Destination::Exchange(name) => name.clone(),
                };
                if name != exchange.def.name && !visited.contains(&name) {
                    if let Some(next) = self.exchanges.get(name.as_str()) {
                        match next.def.delayed.then(|| delay.get(properties)).flatten() {
                            Some(delay_ms) => {
                                out.delayed.push(name.clone());
                                out.delay_ms = delay_ms;
                            }
                            None => {
                                if !route_with_keys(next, keys, properties, scratch, &mut seen) {
                                    push_alternate(next, scratch);
                                }
                            }
                        }
                    }
                    visited.push(name);
                }
                at += 1;
            }
        }
        if out.queues.len() > 1 {
            out.queues.sort_unstable();
            out.queues.dedup();
        }
    }
}

impl DefinitionsView for Vhost {
    fn exchange(&self, name: &str) -> Option<(&ExchangeDef, &[Binding])> {
        self.exchanges
            .get(name)
            .map(|e| (&e.def, e.bindings.as_slice()))
    }

    fn exchanges(&self) -> impl Iterator<Item = (&ExchangeDef, &[Binding])> {
        self.exchanges
            .values()
            .map(|e| (&e.def, e.bindings.as_slice()))
    }

    fn queue(&self, name: &str) -> Option<&QueueMeta> {
        self.queues.get(name)
    }

    fn queue_by_id(&self, id: QueueId) -> Option<&QueueMeta> {
        Vhost::queue_by_id(self, id)
    }

    fn queues(&self) -> impl Iterator<Item = &QueueMeta> {
        self.queues.values()
    }
}

/// Queues `exchange`'s alternate exchange to be visited after it routed a
/// message nowhere. Only this unroutable case pays for the lookup.
fn push_alternate(exchange: &Exchange, scratch: &mut Vec<Destination>) {
    if let Some(alternate) = &exchange.alternate {
        scratch.push(Destination::Exchange(alternate.clone()));
    }
}

/// Appends `exchange`'s destinations for a message routed with `keys` to
/// `scratch`; false if the exchange routed it nowhere (its alternate
/// exchange's turn). With one key, as `Exchange::route`. With several (CC and
/// BCC), an exchange whose type ignores the routing key (fanout, headers)
/// routes once, as RabbitMQ's do, and each destination is appended once
/// (`seen`, made on first need): 1,024 keys on a topic exchange whose `#`
/// binds 2,000 queues append 2,000 destinations, not two million.
fn route_with_keys(
    exchange: &Exchange,
    keys: &[&str],
    properties: &Properties,
    scratch: &mut Vec<Destination>,
    seen: &mut Option<FastSet<Destination>>,
) -> bool {
    let [first, rest @ ..] = keys else {
        return false;
    };
    if rest.is_empty() || !exchange.def.kind.routes_by_key() {
        let before = scratch.len();
        exchange.route(first, properties, scratch);
        return scratch.len() > before;
    }
    let seen = seen.get_or_insert_with(|| scratch.iter().cloned().collect());
    let mut one = Vec::new();
    let mut routed = false;
    for key in keys {
        exchange.route(key, properties, &mut one);
        routed |= !one.is_empty();
        for destination in one.drain(..) {
            if seen.insert(destination.clone()) {
                scratch.push(destination);
            }
        }
    }
    routed
}

/// Where routing sent one message.
#[derive(Debug, Default)]
pub(crate) struct Routed {
    /// The queues to enqueue it on now.
    pub(crate) queues: Vec<QueueRef>,
    /// The `x-delayed-message` exchanges holding it: each routes its copy
    /// from itself when `delay_ms` has passed.
    pub(crate) delayed: Vec<ShortStr>,
    pub(crate) delay_ms: u64,
}

impl Routed {
    pub(crate) fn clear(&mut self) {
        self.queues.clear();
        self.delayed.clear();
        self.delay_ms = 0;
    }

    /// How many destinations took the message: queues and holding exchanges.
    pub(crate) fn destination_count(&self) -> usize {
        self.queues.len() + self.delayed.len()
    }
}

/// A message's `x-delay`, read once when a delayed exchange first needs it.
#[derive(Default)]
struct DelayLookup(Option<Option<u64>>);

impl DelayLookup {
    fn get(&mut self, properties: &Properties) -> Option<u64> {
        *self.0.get_or_insert_with(|| delayed::delay_of(properties))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::exchange::{ExchangeKind, ALTERNATE_EXCHANGE_ARGUMENT};
    use crate::model::ids::ShardId;
    use warren_protocol::{FieldTable, FieldValue};

    fn exchange(vhost: &mut Vhost, name: &str, kind: ExchangeKind, alternate: Option<&str>) {
        let mut arguments = FieldTable::default();
        if let Some(alternate) = alternate {
            arguments.insert(
                ALTERNATE_EXCHANGE_ARGUMENT,
                FieldValue::LongStr(bytes::Bytes::copy_from_slice(alternate.as_bytes())),
            );
        }
        vhost.apply(&MetaChange::ExchangeCreated(ExchangeDef {
            name: ShortStr::from(name),
            kind,
            delayed: false,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments,
        }));
    }

    fn queue(id: u64) -> QueueRef {
        QueueRef {
            id: QueueId(id),
            shard: ShardId((id % 2) as u16),
        }
    }

    fn bind(vhost: &mut Vhost, source: &str, destination: Destination, key: &str) {
        vhost.apply(&MetaChange::BindingAdded(Binding {
            source: ShortStr::from(source),
            destination,
            routing_key: ShortStr::from(key),
            arguments: FieldTable::default(),
        }));
    }

    fn route(vhost: &Vhost, name: &str, key: &str) -> Vec<QueueRef> {
        let mut scratch = Vec::new();
        let mut out = Routed::default();
        let no_keys: [&str; 0] = [];
        vhost.route(
            &vhost.exchanges[name],
            key,
            &no_keys,
            &Properties::empty(),
            &mut scratch,
            &mut out,
        );
        out.queues
    }

    #[test]
    fn alternate_exchanges_take_what_an_exchange_routes_nowhere() {
        let mut vhost = Vhost::new();
        exchange(&mut vhost, "x1", ExchangeKind::Direct, Some("x2"));
        exchange(&mut vhost, "x2", ExchangeKind::Topic, Some("x3"));
        exchange(&mut vhost, "x3", ExchangeKind::Fanout, Some("x1"));
        bind(&mut vhost, "x1", Destination::Queue(queue(1)), "k");
        bind(&mut vhost, "x2", Destination::Queue(queue(2)), "a.*");
        assert_eq!(route(&vhost, "x1", "k"), [queue(1)]);
        assert_eq!(route(&vhost, "x1", "a.b"), [queue(2)]);
        // x3 routes nothing and its alternate is x1 again: the loop ends.
        assert!(route(&vhost, "x1", "z").is_empty());
        bind(&mut vhost, "x3", Destination::Queue(queue(3)), "");
        assert_eq!(route(&vhost, "x1", "z"), [queue(3)]);
        // A missing alternate exchange routes nothing.
        exchange(&mut vhost, "lone", ExchangeKind::Direct, Some("missing"));
        assert!(route(&vhost, "lone", "k").is_empty());
        // An exchange that routes to another exchange routed the message, so
        // its alternate is not used; the other exchange's alternate is.
        exchange(&mut vhost, "outer", ExchangeKind::Direct, Some("x3"));
        exchange(&mut vhost, "inner", ExchangeKind::Direct, Some("x2"));
        bind(
            &mut vhost,
            "outer",
            Destination::Exchange(ShortStr::from("inner")),
            "a.b",
        );
        assert_eq!(route(&vhost, "outer", "a.b"), [queue(2)]);
    }
}

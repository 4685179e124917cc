//! What one virtual host defines, as data: its queues (`QueueMeta`), the
//! changes the metadata owner makes to its definitions (`MetaChange`), and
//! a read-only view of a vhost's definitions (`DefinitionsView`) that the
//! definitions format reads from. `Catalog` is the plain implementation: the
//! definitions and nothing else, for building and checking a restore. The
//! broker's replica (`broker::vhost::Vhost`, with routers) implements the
//! view as well.

use std::collections::BTreeMap;

use crate::metadata::exchange::{Binding, Destination, ExchangeDef, DEFAULT_EXCHANGES};
use crate::metadata::queue_args::QueueArgs;
use crate::model::ids::{ConnRef, QueueId, QueueRef, ShardId};
use warren_protocol::{FieldTable, ShortStr};

pub(crate) const DEFAULT_VHOST: &str = "/";

#[derive(Clone, Debug, PartialEq)]
pub struct QueueMeta {
    pub id: QueueId,
    /// The vhost the queue is in: its name is unique there.
    pub vhost: ShortStr,
    pub name: ShortStr,
    pub shard: ShardId,
    pub durable: bool,
    pub exclusive_owner: Option<ConnRef>,
    pub auto_delete: bool,
    /// The arguments as declared, kept for equivalence checks and listings.
    pub arguments: FieldTable,
    /// The same arguments, checked and typed, for the queue's owner.
    pub args: QueueArgs,
}

impl QueueMeta {
    pub(crate) fn queue_ref(&self) -> QueueRef {
        QueueRef {
            id: self.id,
            shard: self.shard,
        }
    }

    /// Survives a restart: durable and not exclusive.
    pub(crate) fn is_durable(&self) -> bool {
        self.durable && self.exclusive_owner.is_none()
    }
}

/// A change to the definitions, made by the metadata owner and applied by
/// every shard to its replica.
#[derive(Clone, Debug)]
pub enum MetaChange {
    ExchangeCreated(ExchangeDef),
    ExchangeDeleted(ShortStr),
    QueueCreated(QueueMeta),
    QueueDeleted(QueueRef),
    BindingAdded(Binding),
    BindingRemoved(Binding),
}

/// A vhost's definitions, read-only: what the definitions format needs to
/// write a snapshot and to tell whether a change alters it.
pub(crate) trait DefinitionsView {
    /// An exchange's declaration and its bindings (as source), in the
    /// order they were made.
    fn exchange(&self, name: &str) -> Option<(&ExchangeDef, &[Binding])>;
    /// Every exchange, in no particular order.
    fn exchanges(&self) -> impl Iterator<Item = (&ExchangeDef, &[Binding])>;
    fn queue(&self, name: &str) -> Option<&QueueMeta>;
    fn queue_by_id(&self, id: QueueId) -> Option<&QueueMeta>;
    /// Every queue, in no particular order.
    fn queues(&self) -> impl Iterator<Item = &QueueMeta>;
}

/// A vhost's definitions without routing: exchanges with their bindings and
/// queues, changed by the same `MetaChange`s as the broker's replicas.
#[derive(Clone, Debug)]
pub(crate) struct Catalog {
    exchanges: BTreeMap<ShortStr, (ExchangeDef, Vec<Binding>)>,
    queues: BTreeMap<ShortStr, QueueMeta>,
}

impl Catalog {
    /// A vhost with the exchanges RabbitMQ declares in every vhost.
    pub(crate) fn new() -> Catalog {
        let mut catalog = Catalog {
            exchanges: BTreeMap::new(),
            queues: BTreeMap::new(),
        };
        for (name, kind) in DEFAULT_EXCHANGES {
            catalog.apply(&MetaChange::ExchangeCreated(ExchangeDef::default_exchange(
                name, kind,
            )));
        }
        catalog
    }

    /// Applies a change as `broker::vhost::Vhost::apply` does, without
    /// reporting emptied auto-delete exchanges (the owner acts on those).
    pub(crate) fn apply(&mut self, change: &MetaChange) {
        match change {
            MetaChange::ExchangeCreated(def) => {
                self.exchanges
                    .entry(def.name.clone())
                    .or_insert_with(|| (def.clone(), Vec::new()));
            }
            MetaChange::ExchangeDeleted(name) => {
                self.exchanges.remove(name.as_str());
                self.unbind_everywhere(&Destination::Exchange(name.clone()));
            }
            MetaChange::QueueCreated(meta) => {
                self.queues.insert(meta.name.clone(), meta.clone());
            }
            MetaChange::QueueDeleted(queue) => {
                self.queues.retain(|_, meta| meta.id != queue.id);
                self.unbind_everywhere(&Destination::Queue(*queue));
            }
            MetaChange::BindingAdded(binding) => {
                if let Some((_, bindings)) = self.exchanges.get_mut(binding.source.as_str()) {
                    if !bindings.iter().any(|b| b.same_as(binding)) {
                        bindings.push(binding.clone());
                    }
                }
            }
            MetaChange::BindingRemoved(binding) => {
                if let Some((_, bindings)) = self.exchanges.get_mut(binding.source.as_str()) {
                    bindings.retain(|b| !b.same_as(binding));
                }
            }
        }
    }

    fn unbind_everywhere(&mut self, destination: &Destination) {
        for (_, bindings) in self.exchanges.values_mut() {
            bindings.retain(|b| &b.destination != destination);
        }
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::new()
    }
}

impl DefinitionsView for Catalog {
    fn exchange(&self, name: &str) -> Option<(&ExchangeDef, &[Binding])> {
        self.exchanges
            .get(name)
            .map(|(def, bindings)| (def, bindings.as_slice()))
    }

    fn exchanges(&self) -> impl Iterator<Item = (&ExchangeDef, &[Binding])> {
        self.exchanges
            .values()
            .map(|(def, bindings)| (def, bindings.as_slice()))
    }

    fn queue(&self, name: &str) -> Option<&QueueMeta> {
        self.queues.get(name)
    }

    fn queue_by_id(&self, id: QueueId) -> Option<&QueueMeta> {
        self.queues.values().find(|meta| meta.id == id)
    }

    fn queues(&self) -> impl Iterator<Item = &QueueMeta> {
        self.queues.values()
    }
}

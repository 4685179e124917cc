//! The metadata owner: every change to exchanges, queues and bindings is
//! validated by one task on shard 0, applied to every shard's replica, and
//! only then answered. A declare-ok therefore means every shard can route
//! to the new queue, and routing never waits on another shard.
//!
//! Error texts follow RabbitMQ's, since clients log and sometimes match them.
//!
//! Durable definitions are made durable here too: when a batch of requests
//! changed any (a durable exchange or queue, a binding between durable
//! ends), the owner hands the batch's changes (`DefChange`s, by name) to
//! its [`DefinitionsSink`], which appends them to the definitions log with
//! one sync (or, now and then, rewrites the whole definitions file instead;
//! see `store::definitions_log`), before it answers the batch's requests,
//! so a declare-ok for a durable queue means the queue survives a restart.
//! When that write fails, every request of the batch is answered with 541
//! INTERNAL_ERROR (a connection error, as RabbitMQ answers an operation
//! that failed inside the broker), and so is every later batch until a
//! write succeeds: nothing is acknowledged that is not on disk. The changes
//! stay applied in memory (they were routed on already), so a client that
//! saw the error may find the object there, as after any 541; the next
//! successful write (a rewrite of the whole file) stores them.
//! Requests that arrive while one is handled join the batch, and the batch
//! costs one write (group commit). Transient and exclusive declares never
//! write.

use std::cell::RefCell;
use std::rc::Rc;

use crate::broker::control::ControlReply;
use crate::broker::{ChannelReply, ShardState};
use crate::metadata::auth::{Access, AccessChange};
use crate::metadata::definitions::Definitions;
use crate::metadata::exchange::{
    check_alternate_exchange, delayed_type, unknown_exchange_type, Binding, Destination,
    ExchangeDef, ExchangeKind, MatchMode, ALTERNATE_EXCHANGE_ARGUMENT, DELAYED_TYPE,
    DELAYED_TYPE_ARGUMENT,
};
use crate::metadata::queue_args::{self, QueueArgs};
use crate::metadata::vhost::DEFAULT_VHOST;
use crate::metadata::vhost::{MetaChange, QueueMeta};
use crate::model::ids::{ConnRef, QueueId, QueueRef, ShardId};
use crate::store::definitions::DefinitionsSink;
use crate::store::definitions_log::DefChange;
use crate::util::signal::oneshot;
use warren_protocol::{
    AmqpError, ExchangeBind, ExchangeBindOk, ExchangeDeclare, ExchangeDeclareOk, ExchangeDelete,
    ExchangeDeleteOk, ExchangeUnbind, ExchangeUnbindOk, FieldTable, Method, QueueBind, QueueBindOk,
    QueueDeclare, QueueDeclareOk, QueueDelete, QueueDeleteOk, QueueUnbind, QueueUnbindOk,
    ReplyCode, ShortStr,
};

// `AccessChange` is crate-internal (the management API that sends it is in
// the crate); these enums are public only as parts of `ShardMsg`.
#[allow(private_interfaces)]
#[derive(Debug)]
pub enum MetaRequest {
    ExchangeDeclare(ExchangeDeclare),
    ExchangeDelete(ExchangeDelete),
    ExchangeBind(ExchangeBind),
    ExchangeUnbind(ExchangeUnbind),
    QueueDeclare(QueueDeclare),
    QueueDelete(QueueDelete),
    QueueBind(QueueBind),
    QueueUnbind(QueueUnbind),
    /// The owner of an auto-delete queue saw its last consumer go.
    QueueAutoDelete {
        queue: QueueRef,
    },
    /// A connection closed: its exclusive queues go with it.
    ConnectionGone {
        conn: ConnRef,
    },
    /// A change to vhosts, users or permissions (`AccessChange`), from the
    /// control plane: checked (`Users::refusal`), applied on every shard,
    /// written to the definitions file, then answered on `reply` with
    /// Ok or the refusal. Deleting a vhost deletes its queues (and their
    /// stored messages) first; each shard then closes the connections of
    /// a deleted vhost or user with 320 CONNECTION_FORCED.
    /// Boxed: rare, and larger than the messages of the data path, which
    /// share `ShardMsg`'s size.
    Access {
        change: Box<AccessChange>,
        reply: Option<crossbeam_channel::Sender<Result<(), String>>>,
    },
}

/// Who made a client's request: the vhost its connection opened and the
/// user whose permissions the owner checks.
#[derive(Clone, Debug)]
pub struct Scope {
    pub vhost: ShortStr,
    pub user: String,
    /// False for the management API's definitions import, which RabbitMQ
    /// does not check against the importing user's permissions.
    pub checked: bool,
}

/// The -ok method to send back to the client.
pub(crate) type MetaReply = Method;

#[allow(private_interfaces)]
#[derive(Debug)]
pub enum RpcRequest {
    Apply {
        vhost: ShortStr,
        changes: Vec<MetaChange>,
    },
    Access(Box<AccessChange>),
    QueueStats(QueueId),
    CheckDelete {
        queue: QueueId,
        if_unused: bool,
        if_empty: bool,
    },
}

#[derive(Debug)]
pub enum RpcReply {
    Applied,
    QueueStats {
        message_count: u32,
        consumer_count: u32,
    },
    CheckDelete(Result<u32, AmqpError>),
}

type Shared = Rc<RefCell<ShardState>>;

/// Requests handled before their answers wait for one definitions write;
/// bounds how long the first request of a busy batch waits.
const REQUESTS_PER_WRITE_MAX: usize = 64;

/// Where the owner starts after the definitions were restored at boot.
#[derive(Clone, Debug)]
pub(crate) struct OwnerStart {
    pub(crate) next_queue_id: u64,
    pub(crate) next_shard: usize,
}

impl Default for OwnerStart {
    fn default() -> Self {
        OwnerStart {
            next_queue_id: 1,
            next_shard: 0,
        }
    }
}

/// Serves metadata requests on shard 0 until the shard stops: a batch at a
/// time, then one write of the definitions if the batch changed durable
/// ones, then the batch's answers.
pub(crate) async fn run_owner<S: DefinitionsSink>(state: Shared, start: OwnerStart, mut sink: S) {
    let notify = state.borrow().meta_inbox.notify.clone();
    let mut owner = Owner {
        state,
        next_queue_id: start.next_queue_id,
        next_name: 0x9e37_79b9_7f4a_7c15,
        next_shard: start.next_shard,
        unwritten: RefCell::new(Vec::new()),
        failed: false,
        rewrite: std::cell::Cell::new(false),
        vhost: ShortStr::from_static(DEFAULT_VHOST),
    };
    loop {
        notify.wait().await;
        loop {
            let mut replies = Vec::new();
            let mut control_replies = Vec::new();
            let mut handled = 0;
            while handled < REQUESTS_PER_WRITE_MAX {
                let next = owner.state.borrow_mut().meta_inbox.requests.pop_front();
                let Some((from, scope, request, control)) = next else {
                    break;
                };
                let result = owner.handle(from, scope.as_deref(), request).await;
                if let Some((conn, channel)) = from {
                    replies.push((conn, channel, result));
                } else if let Some(reply) = control {
                    control_replies.push((reply, result));
                }
                handled += 1;
            }
            if handled == 0 {
                break;
            }
            // Nothing is answered as done that is not on disk: while the
            // file lags what the shards hold, every answer of the batch is
            // 541 INTERNAL_ERROR, as RabbitMQ closes the connection of a
            // channel whose operation failed inside the broker.
            let stored = owner.write_definitions(&mut sink).await;
            let mut state = owner.state.borrow_mut();
            for (conn, channel, result) in replies {
                let result = match &stored {
                    Ok(()) => result,
                    Err(e) => Err(AmqpError::internal_error(format!(
                        "cannot make the definitions durable: {}",
                        e
                    ))),
                };
                state.reply(conn, channel, ChannelReply::Meta(result));
            }
            // The management API's requests, answered on the same terms.
            for (reply, result) in control_replies {
                let result = match &stored {
                    Ok(()) => result,
                    Err(e) => Err(AmqpError::internal_error(format!(
                        "cannot make the definitions durable: {}",
                        e
                    ))),
                };
                reply(ControlReply::Meta(result));
            }
            state.run_local();
        }
    }
}

struct Owner {
    state: Shared,
    next_queue_id: u64,
    next_name: u64,
    next_shard: usize,
    /// The durable changes made since the last successful write, in order.
    unwritten: RefCell<Vec<DefChange>>,
    /// The last write failed: the next batch writes even if it changed
    /// nothing durable.
    failed: bool,
    /// The batch changed durable definitions the definitions log does not
    /// record (another vhost's, users, vhosts, permissions): the whole file
    /// is written.
    rewrite: std::cell::Cell<bool>,
    /// The vhost of the request being handled.
    vhost: ShortStr,
}

impl Owner {
    async fn rpc(&self, shard: ShardId, request: RpcRequest) -> RpcReply {
        let (sender, receiver) = oneshot();
        self.state.borrow_mut().start_rpc(shard, request, sender);
        // A peer shard never drops an RPC; None would mean it stopped.
        receiver.await.unwrap_or(RpcReply::Applied)
    }

    /// Makes the durable changes since the last write durable (appended to
    /// the log, or the whole file rewritten). A failed write is logged and
    /// returned (the batch's requests fail with it); it is tried again
    /// before the next batch is answered, as a rewrite of the whole file,
    /// so the file catches up as soon as the disk takes it.
    async fn write_definitions<S: DefinitionsSink>(&mut self, sink: &mut S) -> std::io::Result<()> {
        let changes = std::mem::take(&mut *self.unwritten.borrow_mut());
        if changes.is_empty() && !self.failed && !self.rewrite.get() {
            return Ok(());
        }
        let state = &self.state;
        let snapshot = || {
            let state = state.borrow();
            Definitions::snapshot(
                state.vhosts.iter().map(|(name, v)| (name.as_str(), v)),
                &state.users,
            )
            .to_json()
        };
        let result = if self.rewrite.get() {
            sink.rewrite(snapshot).await
        } else {
            sink.store(&changes, snapshot).await
        };
        self.rewrite.set(false);
        match result {
            Ok(()) => {
                self.failed = false;
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                tracing::error!(
                    error = %e,
                    "cannot write the definitions file: the metadata requests waiting for it \
                     fail with 541 INTERNAL_ERROR until a write succeeds"
                );
                Err(e)
            }
        }
    }

    /// Applies changes here (collecting auto-delete exchanges they empty),
    /// then on every other shard, and waits for all of them.
    async fn commit(&self, mut changes: Vec<MetaChange>) {
        let shard_count = {
            let mut state = self.state.borrow_mut();
            let mut at = 0;
            while at < changes.len() {
                let durable = DefChange::durable(state.vhost_or_empty(&self.vhost), &changes[at]);
                if let Some(change) = durable {
                    // The log records "/" only; another vhost's change is
                    // written with the whole file.
                    if self.vhost.as_str() == DEFAULT_VHOST {
                        self.unwritten.borrow_mut().push(change);
                    } else {
                        self.rewrite.set(true);
                    }
                }
                let emptied = state.apply_change(&self.vhost, &changes[at]);
                for name in emptied {
                    changes.push(MetaChange::ExchangeDeleted(name));
                }
                at += 1;
            }
            state.run_local();
            state.shard_count
        };
        let mut replies = Vec::new();
        for shard in 1..shard_count {
            let (sender, receiver) = oneshot();
            self.state.borrow_mut().start_rpc(
                ShardId(shard as u16),
                RpcRequest::Apply {
                    vhost: self.vhost.clone(),
                    changes: changes.clone(),
                },
                sender,
            );
            replies.push(receiver);
        }
        for reply in replies {
            reply.await;
        }
    }

    async fn handle(
        &mut self,
        from: Option<(ConnRef, u16)>,
        scope: Option<&Scope>,
        request: MetaRequest,
    ) -> Result<Method, AmqpError> {
        self.vhost = match scope {
            Some(scope) => scope.vhost.clone(),
            None => ShortStr::from_static(DEFAULT_VHOST),
        };
        let vhost = self.vhost.clone();
        let scope = scope.filter(|s| s.checked);
        let result = self.handle_in_vhost(from, scope, request).await;
        // The texts shared with "/" name the request's vhost.
        result.map_err(|mut e| {
            if vhost.as_str() != DEFAULT_VHOST {
                e.text = in_vhost(&e.text, &vhost);
            }
            e
        })
    }

    /// `rabbit_access_control:check_resource_access` for a client's
    /// request (the owner's own requests are not checked).
    fn permit(
        &self,
        scope: Option<&Scope>,
        kind: &str,
        name: &str,
        access: Access,
    ) -> Result<(), AmqpError> {
        let Some(scope) = scope else {
            return Ok(());
        };
        self.state
            .borrow()
            .users
            .check_resource(&scope.user, &scope.vhost, kind, name, access)
    }

    /// The topic read check of a binding from a topic exchange
    /// (`check_read_permitted_on_topic`).
    fn permit_topic_read(
        &self,
        scope: Option<&Scope>,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), AmqpError> {
        let Some(scope) = scope else {
            return Ok(());
        };
        let state = self.state.borrow();
        let is_topic = state
            .vhost_or_empty(&self.vhost)
            .exchanges
            .get(exchange)
            .is_some_and(|e| e.def.kind == ExchangeKind::Topic);
        if !is_topic {
            return Ok(());
        }
        match state
            .users
            .topic_pattern(&scope.user, &scope.vhost, exchange, Access::Read, None)
        {
            Some(Some(pattern)) if pattern.is_match(routing_key) => Ok(()),
            None => Ok(()),
            Some(_) => Err(topic_refused(
                &scope.user,
                &scope.vhost,
                exchange,
                routing_key,
            )),
        }
    }

    /// The checks of queue.bind, exchange.bind and their unbinds, in
    /// RabbitMQ's order (`rabbit_channel:binding_action`): write on the
    /// destination, then the default exchange refused, then read on the
    /// source and on its topic.
    fn permit_binding(
        &self,
        scope: Option<&Scope>,
        destination_kind: &str,
        destination: &str,
        source: &str,
        routing_key: &str,
    ) -> Result<(), AmqpError> {
        if scope.is_none() {
            return Ok(());
        }
        self.permit(scope, destination_kind, destination, Access::Write)?;
        if source.is_empty() || (destination_kind == "exchange" && destination.is_empty()) {
            return Err(default_exchange_refused());
        }
        self.permit(scope, "exchange", source, Access::Read)?;
        self.permit_topic_read(scope, source, routing_key)
    }

    async fn handle_in_vhost(
        &mut self,
        from: Option<(ConnRef, u16)>,
        scope: Option<&Scope>,
        request: MetaRequest,
    ) -> Result<Method, AmqpError> {
        let conn = from.map(|(c, _)| c);
        match request {
            MetaRequest::ExchangeDeclare(m) => self.exchange_declare(m, scope).await,
            MetaRequest::ExchangeDelete(m) => {
                if !m.exchange.is_empty() && !m.exchange.starts_with("amq.") {
                    self.permit(scope, "exchange", &m.exchange, Access::Configure)?;
                }
                self.exchange_delete(m).await
            }
            MetaRequest::ExchangeBind(m) => {
                self.permit_binding(scope, "exchange", &m.destination, &m.source, &m.routing_key)?;
                let binding =
                    self.exchange_binding(&m.source, &m.destination, &m.routing_key, &m.arguments)?;
                self.bind(binding).await?;
                Ok(ExchangeBindOk {}.into())
            }
            // RabbitMQ 3.10 answers unbind-ok when an exchange or the queue
            // of the binding is missing: there is no such binding to remove.
            MetaRequest::ExchangeUnbind(m) => {
                self.permit_binding(scope, "exchange", &m.destination, &m.source, &m.routing_key)?;
                let binding =
                    self.exchange_binding(&m.source, &m.destination, &m.routing_key, &m.arguments);
                if let Some(binding) = unless_missing(binding)? {
                    self.unbind(binding).await;
                }
                Ok(ExchangeUnbindOk {}.into())
            }
            MetaRequest::QueueDeclare(m) => self.queue_declare(m, conn, scope).await,
            MetaRequest::QueueDelete(m) => {
                self.permit(scope, "queue", &m.queue, Access::Configure)?;
                self.queue_delete(m, conn).await
            }
            MetaRequest::QueueBind(m) => {
                self.permit_binding(scope, "queue", &m.queue, &m.exchange, &m.routing_key)?;
                let binding =
                    self.queue_binding(&m.queue, &m.exchange, &m.routing_key, &m.arguments, conn)?;
                self.bind(binding).await?;
                Ok(QueueBindOk {}.into())
            }
            MetaRequest::QueueUnbind(m) => {
                self.permit_binding(scope, "queue", &m.queue, &m.exchange, &m.routing_key)?;
                let binding =
                    self.queue_binding(&m.queue, &m.exchange, &m.routing_key, &m.arguments, conn);
                if let Some(binding) = unless_missing(binding)? {
                    self.unbind(binding).await;
                }
                Ok(QueueUnbindOk {}.into())
            }
            MetaRequest::QueueAutoDelete { queue } => {
                let vhost = self
                    .state
                    .borrow()
                    .vhosts
                    .iter()
                    .find(|(_, v)| v.queue_by_id(queue.id).is_some())
                    .map(|(name, _)| name.clone());
                if let Some(vhost) = vhost {
                    self.vhost = vhost;
                    self.commit(vec![MetaChange::QueueDeleted(queue)]).await;
                }
                Ok(QueueDeleteOk { message_count: 0 }.into())
            }
            MetaRequest::ConnectionGone { conn } => {
                let exclusive: Vec<(ShortStr, Vec<QueueRef>)> = self
                    .state
                    .borrow()
                    .vhosts
                    .iter()
                    .map(|(name, v)| {
                        let queues = v
                            .queues
                            .values()
                            .filter(|q| q.exclusive_owner == Some(conn))
                            .map(|q| q.queue_ref())
                            .collect::<Vec<_>>();
                        (name.clone(), queues)
                    })
                    .filter(|(_, queues)| !queues.is_empty())
                    .collect();
                for (vhost, queues) in exclusive {
                    self.vhost = vhost;
                    self.commit(queues.into_iter().map(MetaChange::QueueDeleted).collect())
                        .await;
                }
                Ok(QueueDeleteOk { message_count: 0 }.into())
            }
            MetaRequest::Access { change, reply } => {
                let result = self.access(*change).await;
                if let Some(reply) = reply {
                    // The asker may have given up waiting; nothing to do then.
                    let _ = reply.send(result);
                }
                Ok(QueueDeleteOk { message_count: 0 }.into())
            }
        }
    }

    /// Checks and applies a change to vhosts, users or permissions on
    /// every shard, and has the definitions file rewritten with it.
    async fn access(&mut self, change: AccessChange) -> Result<(), String> {
        if let Some(refusal) = self.state.borrow().users.refusal(&change) {
            return Err(refusal);
        }
        if let AccessChange::VhostDeleted(name) = &change {
            // Its queues go first, through the path every queue delete
            // takes: their consumers are cancelled and their stored
            // messages removed.
            let queues: Vec<QueueRef> = self
                .state
                .borrow()
                .vhost(name)
                .map(|v| v.queues.values().map(QueueMeta::queue_ref).collect())
                .unwrap_or_default();
            if !queues.is_empty() {
                self.vhost = ShortStr::from(name.clone());
                self.commit(queues.into_iter().map(MetaChange::QueueDeleted).collect())
                    .await;
            }
        }
        let shard_count = {
            let mut state = self.state.borrow_mut();
            state.apply_access(&change);
            state.run_local();
            state.shard_count
        };
        let mut replies = Vec::new();
        for shard in 1..shard_count {
            let (sender, receiver) = oneshot();
            self.state.borrow_mut().start_rpc(
                ShardId(shard as u16),
                RpcRequest::Access(Box::new(change.clone())),
                sender,
            );
            replies.push(receiver);
        }
        for reply in replies {
            reply.await;
        }
        self.rewrite.set(true);
        Ok(())
    }

    async fn exchange_declare(
        &mut self,
        m: ExchangeDeclare,
        scope: Option<&Scope>,
    ) -> Result<Method, AmqpError> {
        let ok: Method = ExchangeDeclareOk {}.into();
        if m.exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        if !m.passive {
            self.permit(scope, "exchange", &m.exchange, Access::Configure)?;
        }
        let existing = self
            .state
            .borrow()
            .vhost_or_empty(&self.vhost)
            .exchanges
            .get(m.exchange.as_str())
            .map(|e| e.def.clone());
        if m.passive {
            return match existing {
                Some(_) => Ok(ok),
                None => Err(no_exchange(&m.exchange)),
            };
        }
        let delayed = m.kind.as_str() == DELAYED_TYPE;
        let kind = match ExchangeKind::parse(m.kind.as_str()) {
            Some(kind) => Some(kind),
            None if delayed => None,
            None => return Err(unknown_exchange_type(m.kind.as_bytes())),
        };
        if let Some(current) = existing {
            check_equivalent(
                "type",
                &m.exchange,
                "exchange",
                m.kind.as_str(),
                current.type_name(),
            )?;
            check_equivalent_flag(
                "durable",
                &m.exchange,
                "exchange",
                m.durable,
                current.durable,
            )?;
            check_equivalent_flag(
                "auto_delete",
                &m.exchange,
                "exchange",
                m.auto_delete,
                current.auto_delete,
            )?;
            check_equivalent_flag(
                "internal",
                &m.exchange,
                "exchange",
                m.internal,
                current.internal,
            )?;
            queue_args::check_arg_equivalent(
                "exchange",
                &m.exchange,
                ALTERNATE_EXCHANGE_ARGUMENT,
                m.arguments.get(ALTERNATE_EXCHANGE_ARGUMENT),
                current.arguments.get(ALTERNATE_EXCHANGE_ARGUMENT),
            )?;
            if current.delayed {
                // The plugin leaves this to the x-delayed-type's own check,
                // which compares only alternate-exchange, so RabbitMQ would
                // accept any x-delayed-type here and keep routing by the
                // first one. warren refuses the mismatch instead.
                queue_args::check_arg_equivalent(
                    "exchange",
                    &m.exchange,
                    DELAYED_TYPE_ARGUMENT,
                    m.arguments.get(DELAYED_TYPE_ARGUMENT),
                    current.arguments.get(DELAYED_TYPE_ARGUMENT),
                )?;
            }
            return Ok(ok);
        }
        if m.exchange.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                m.exchange
            )));
        }
        // With an alternate exchange: read on this one, write on that one.
        if let Some(alternate) = m
            .arguments
            .get("alternate-exchange")
            .and_then(|v| v.as_str())
        {
            self.permit(scope, "exchange", &m.exchange, Access::Read)?;
            self.permit(scope, "exchange", alternate, Access::Write)?;
        }
        check_alternate_exchange(&m.exchange, &m.arguments)?;
        let kind = match kind {
            Some(kind) => kind,
            None => delayed_type(&m.arguments)?,
        };
        self.commit(vec![MetaChange::ExchangeCreated(ExchangeDef {
            name: m.exchange.clone(),
            kind,
            delayed,
            durable: m.durable,
            auto_delete: m.auto_delete,
            internal: m.internal,
            arguments: m.arguments.clone(),
        })])
        .await;
        Ok(ok)
    }

    async fn exchange_delete(&mut self, m: ExchangeDelete) -> Result<Method, AmqpError> {
        if m.exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        if m.exchange.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "deletion of system exchange '{}' in vhost '/' is not allowed",
                m.exchange
            )));
        }
        let (exists, in_use) = {
            let state = self.state.borrow();
            match state
                .vhost_or_empty(&self.vhost)
                .exchanges
                .get(m.exchange.as_str())
            {
                None => (false, false),
                // As RabbitMQ's if-unused (rabbit_binding:has_for_source):
                // only the exchange's own bindings count, not those of other
                // exchanges to it, which go with it.
                Some(e) => (true, !e.bindings.is_empty()),
            }
        };
        if !exists {
            return Ok(ExchangeDeleteOk {}.into());
        }
        if m.if_unused && in_use {
            return Err(AmqpError::precondition_failed(format!(
                "exchange '{}' in vhost '/' in use",
                m.exchange
            )));
        }
        self.commit(vec![MetaChange::ExchangeDeleted(m.exchange.clone())])
            .await;
        Ok(ExchangeDeleteOk {}.into())
    }

    fn exchange_binding(
        &self,
        source: &ShortStr,
        destination: &ShortStr,
        routing_key: &ShortStr,
        arguments: &FieldTable,
    ) -> Result<Binding, AmqpError> {
        if source.is_empty() || destination.is_empty() {
            return Err(default_exchange_refused());
        }
        let state = self.state.borrow();
        for name in [destination, source] {
            if !state
                .vhost_or_empty(&self.vhost)
                .exchanges
                .contains_key(name.as_str())
            {
                return Err(no_exchange(name));
            }
        }
        check_binding_arguments(state.vhost_or_empty(&self.vhost), source, arguments)?;
        Ok(Binding {
            source: source.clone(),
            destination: Destination::Exchange(destination.clone()),
            routing_key: routing_key.clone(),
            arguments: arguments.clone(),
        })
    }

    fn queue_binding(
        &self,
        queue: &ShortStr,
        exchange: &ShortStr,
        routing_key: &ShortStr,
        arguments: &FieldTable,
        conn: Option<ConnRef>,
    ) -> Result<Binding, AmqpError> {
        let state = self.state.borrow();
        let Some(meta) = state.vhost_or_empty(&self.vhost).queues.get(queue.as_str()) else {
            return Err(no_queue(queue));
        };
        check_exclusive(meta, conn)?;
        if exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        if !state
            .vhost_or_empty(&self.vhost)
            .exchanges
            .contains_key(exchange.as_str())
        {
            return Err(no_exchange(exchange));
        }
        check_binding_arguments(state.vhost_or_empty(&self.vhost), exchange, arguments)?;
        Ok(Binding {
            source: exchange.clone(),
            destination: Destination::Queue(meta.queue_ref()),
            routing_key: routing_key.clone(),
            arguments: arguments.clone(),
        })
    }

    async fn bind(&self, binding: Binding) -> Result<(), AmqpError> {
        let exists = {
            let state = self.state.borrow();
            state
                .vhost_or_empty(&self.vhost)
                .exchanges
                .get(binding.source.as_str())
                .is_some_and(|e| e.bindings.iter().any(|b| b.same_as(&binding)))
        };
        if !exists {
            self.commit(vec![MetaChange::BindingAdded(binding)]).await;
        }
        Ok(())
    }

    async fn unbind(&self, binding: Binding) {
        let exists = {
            let state = self.state.borrow();
            state
                .vhost_or_empty(&self.vhost)
                .exchanges
                .get(binding.source.as_str())
                .is_some_and(|e| e.bindings.iter().any(|b| b.same_as(&binding)))
        };
        if exists {
            self.commit(vec![MetaChange::BindingRemoved(binding)]).await;
        }
    }

    async fn queue_declare(
        &mut self,
        m: QueueDeclare,
        conn: Option<ConnRef>,
        scope: Option<&Scope>,
    ) -> Result<Method, AmqpError> {
        if m.queue.is_empty() && !m.passive {
            // RabbitMQ refuses a server-named quorum or stream queue first.
            queue_args::check_server_named(&m.arguments)?;
        }
        let name = if m.queue.is_empty() {
            self.server_named_queue()
        } else {
            m.queue.clone()
        };
        // Server-named queues are checked by the name they get, as RabbitMQ
        // checks them.
        if !m.passive {
            self.permit(scope, "queue", &name, Access::Configure)?;
        }
        // As RabbitMQ: an exclusive queue is never durable, whatever was asked.
        let durable = m.durable && !m.exclusive;
        let existing = self
            .state
            .borrow()
            .vhost_or_empty(&self.vhost)
            .queues
            .get(name.as_str())
            .cloned();
        if let Some(current) = existing {
            check_exclusive(&current, conn)?;
            if !m.passive {
                if m.exclusive != current.exclusive_owner.is_some() {
                    return Err(locked(&name));
                }
                check_equivalent_flag("durable", &name, "queue", durable, current.durable)?;
                check_equivalent_flag(
                    "auto_delete",
                    &name,
                    "queue",
                    m.auto_delete,
                    current.auto_delete,
                )?;
                // A redeclaration's arguments are compared, not checked
                // again, as in RabbitMQ.
                queue_args::check_equivalent(&name, &m.arguments, &current.arguments)?;
            }
            let (message_count, consumer_count) = match self
                .rpc(current.shard, RpcRequest::QueueStats(current.id))
                .await
            {
                RpcReply::QueueStats {
                    message_count,
                    consumer_count,
                } => (message_count, consumer_count),
                _ => (0, 0),
            };
            return Ok(QueueDeclareOk {
                queue: name,
                message_count,
                consumer_count,
            }
            .into());
        }
        if m.passive {
            return Err(no_queue(&name));
        }
        if !m.queue.is_empty() && m.queue.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                m.queue
            )));
        }
        // Checked before anything is created or counted, so a refused
        // declare leaves no trace.
        self.check_queue_limit(&name)?;
        let args = QueueArgs::parse(&name, &m.arguments)?;
        if let Some(dlx) = m
            .arguments
            .get("x-dead-letter-exchange")
            .and_then(|v| v.as_str())
        {
            self.permit(scope, "queue", &name, Access::Read)?;
            self.permit(scope, "exchange", dlx, Access::Write)?;
        }
        queue_args::check_queue_type_flags(&name, &args, durable, m.exclusive, m.auto_delete)?;
        let shard = self.place(&m, conn);
        tracing::debug!(queue = %name, shard = shard.0, "queue placed");
        let meta = QueueMeta {
            id: QueueId(self.next_queue_id),
            vhost: self.vhost.clone(),
            name: name.clone(),
            shard,
            durable,
            exclusive_owner: if m.exclusive { conn } else { None },
            auto_delete: m.auto_delete,
            arguments: m.arguments.clone(),
            args,
        };
        self.next_queue_id += 1;
        self.commit(vec![MetaChange::QueueCreated(meta)]).await;
        Ok(QueueDeclareOk {
            queue: name,
            message_count: 0,
            consumer_count: 0,
        }
        .into())
    }

    /// Exclusive and server-named queues live with their connection; the
    /// rest where the queue's locator puts them (`config::QueueLeaderLocator`):
    /// with the declaring connection (client-local) or spread over the
    /// shards in turn (balanced, and any declare without a connection, such
    /// as a definitions import).
    fn place(&mut self, m: &QueueDeclare, conn: Option<ConnRef>) -> ShardId {
        use crate::config::QueueLeaderLocator;
        let (shard_count, forced, locator) = {
            let state = self.state.borrow();
            let forced = state.config.placement_test.and_then(|p| p.queue_shard);
            (state.shard_count, forced, state.config.queue_leader_locator)
        };
        // Tests and benchmarks of placement only (`config::PlacementTest`).
        if let Some(shard) = forced {
            return ShardId((shard % shard_count) as u16);
        }
        // As in RabbitMQ, an argument naming no known locator leaves the
        // default in force (a quorum queue's was refused at declare).
        let locator = ["x-queue-leader-locator", "x-queue-master-locator"]
            .iter()
            .find_map(|key| {
                m.arguments
                    .get(key)
                    .and_then(warren_protocol::FieldValue::as_bytes)
            })
            .and_then(|name| QueueLeaderLocator::from_name(name))
            .unwrap_or(locator);
        if let Some(conn) = conn {
            if m.exclusive
                || m.queue.is_empty()
                || shard_count == 1
                || locator == QueueLeaderLocator::ClientLocal
            {
                return conn.shard;
            }
        }
        self.next_shard = (self.next_shard + 1) % shard_count;
        ShardId(self.next_shard as u16)
    }

    async fn queue_delete(
        &mut self,
        m: QueueDelete,
        conn: Option<ConnRef>,
    ) -> Result<Method, AmqpError> {
        let existing = self
            .state
            .borrow()
            .vhost_or_empty(&self.vhost)
            .queues
            .get(m.queue.as_str())
            .cloned();
        let Some(meta) = existing else {
            return Ok(QueueDeleteOk { message_count: 0 }.into());
        };
        check_exclusive(&meta, conn)?;
        let message_count = match self
            .rpc(
                meta.shard,
                RpcRequest::CheckDelete {
                    queue: meta.id,
                    if_unused: m.if_unused,
                    if_empty: m.if_empty,
                },
            )
            .await
        {
            RpcReply::CheckDelete(result) => result?,
            _ => 0,
        };
        self.commit(vec![MetaChange::QueueDeleted(meta.queue_ref())])
            .await;
        Ok(QueueDeleteOk { message_count }.into())
    }

    /// `rabbit_amqqueue:check_vhost_queue_limit`, for a new queue.
    fn check_queue_limit(&self, name: &str) -> Result<(), AmqpError> {
        let state = self.state.borrow();
        let Some(limit) = state
            .users
            .vhost(&self.vhost)
            .and_then(|v| v.limits.max_queues)
        else {
            return Ok(());
        };
        let count = state.vhost_or_empty(&self.vhost).queues.len() as u64;
        if count < limit {
            return Ok(());
        }
        Err(AmqpError::precondition_failed(format!(
            "cannot declare queue '{}': queue limit in vhost '{}' ({}) is reached",
            name, self.vhost, limit
        )))
    }

    /// "amq.gen-" and 22 characters, as RabbitMQ names server-named queues.
    fn server_named_queue(&mut self) -> ShortStr {
        loop {
            let name = generated_name("amq.gen-", &mut self.next_name);
            if !self
                .state
                .borrow()
                .vhost_or_empty(&self.vhost)
                .queues
                .contains_key(name.as_str())
            {
                return name;
            }
        }
    }
}

/// A random-looking unique name: prefix + 22 URL-safe base64 characters.
pub(crate) fn generated_name(prefix: &str, state: &mut u64) -> ShortStr {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15) ^ nanos;
    let mut x = *state;
    let mut name = String::with_capacity(prefix.len() + 22);
    name.push_str(prefix);
    for _ in 0..22 {
        // splitmix64 steps: cheap, well-spread, and never repeats for a state.
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        name.push(ALPHABET[(z & 63) as usize] as char);
    }
    ShortStr::from(name)
}

/// A text written for "/" ("... in vhost '/'"), naming `vhost` instead.
pub(crate) fn in_vhost(text: &str, vhost: &str) -> String {
    text.replace("in vhost '/'", &format!("in vhost '{}'", vhost))
}

/// `rabbit_access_control:check_topic_access`'s refusal.
pub(crate) fn topic_refused(
    user: &str,
    vhost: &str,
    exchange: &str,
    routing_key: &str,
) -> AmqpError {
    AmqpError::access_refused(format!(
        "access to topic '{}' in exchange '{}' in vhost '{}' refused for user '{}'",
        routing_key, exchange, vhost, user
    ))
}

/// `rabbit_exchange:check_type`: a 503 COMMAND_INVALID, which closes the
/// connection.
fn default_exchange_refused() -> AmqpError {
    AmqpError::access_refused("operation not permitted on the default exchange")
}

pub(crate) fn no_queue(name: &str) -> AmqpError {
    AmqpError::not_found(format!("no queue '{}' in vhost '/'", name))
}

pub(crate) fn no_exchange(name: &str) -> AmqpError {
    AmqpError::not_found(format!("no exchange '{}' in vhost '/'", name))
}

pub(crate) fn locked(name: &str) -> AmqpError {
    AmqpError::resource_locked(format!(
        "cannot obtain exclusive access to locked queue '{}' in vhost '/'. It could be \
         originally declared on another connection or the exclusive property value does \
         not match that of the original declaration.",
        name
    ))
}

/// 405 unless the queue is not exclusive or belongs to `conn`.
pub(crate) fn check_exclusive(meta: &QueueMeta, conn: Option<ConnRef>) -> Result<(), AmqpError> {
    match meta.exclusive_owner {
        Some(owner) if Some(owner) != conn => Err(locked(&meta.name)),
        _ => Ok(()),
    }
}

/// A binding to remove, or None when its exchange or queue is missing (404),
/// which unbind answers as done.
fn unless_missing(binding: Result<Binding, AmqpError>) -> Result<Option<Binding>, AmqpError> {
    match binding {
        Ok(binding) => Ok(Some(binding)),
        Err(error) if error.code == ReplyCode::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

fn check_binding_arguments(
    vhost: &crate::broker::vhost::Vhost,
    exchange: &ShortStr,
    arguments: &FieldTable,
) -> Result<(), AmqpError> {
    let is_headers = vhost
        .exchanges
        .get(exchange.as_str())
        .is_some_and(|e| e.def.kind == ExchangeKind::Headers);
    if is_headers && MatchMode::from_arguments(arguments).is_none() {
        return Err(AmqpError::precondition_failed(format!(
            "Invalid x-match field value {:?}; expected all, any, all-with-x, or any-with-x",
            arguments.get("x-match")
        )));
    }
    Ok(())
}

fn check_equivalent(
    field: &str,
    name: &str,
    what: &str,
    received: &str,
    current: &str,
) -> Result<(), AmqpError> {
    if received == current {
        return Ok(());
    }
    Err(AmqpError::precondition_failed(format!(
        "inequivalent arg '{}' for {} '{}' in vhost '/': received '{}' but current is '{}'",
        field, what, name, received, current
    )))
}

fn check_equivalent_flag(
    field: &str,
    name: &str,
    what: &str,
    received: bool,
    current: bool,
) -> Result<(), AmqpError> {
    check_equivalent(
        field,
        name,
        what,
        if received { "true" } else { "false" },
        if current { "true" } else { "false" },
    )
}

#[cfg(test)]
mod tests {
    //! The owner's access-control operations, driven in-process on a
    //! broker of one shard (as `fuzzing` drives it): the operations the
    //! management API calls at run time.
    use super::*;
    use crate::broker::ShardState;
    use crate::config::Config;
    use crate::metadata::auth::{Permission, User, Users, VhostDef, VhostLimits};
    use crate::model::alarms::AlarmBoard;
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Waker};

    struct Node {
        state: Shared,
        owner: Pin<Box<dyn Future<Output = ()>>>,
    }

    impl Node {
        fn new() -> Node {
            let state = Rc::new(RefCell::new(ShardState::new(
                ShardId(0),
                1,
                Rc::new(Config::default()),
                Rc::new(Users::new(None)),
                Arc::new(AlarmBoard::new(1)),
            )));
            let owner = Box::pin(run_owner(state.clone(), OwnerStart::default(), ()));
            let mut node = Node { state, owner };
            node.poll();
            node
        }

        fn poll(&mut self) {
            let mut cx = Context::from_waker(Waker::noop());
            for _ in 0..8 {
                let _ = self.owner.as_mut().poll(&mut cx);
                if self.state.borrow().meta_inbox.requests.is_empty() {
                    break;
                }
            }
        }

        fn request(&mut self, scope: Option<Scope>, request: MetaRequest) {
            self.state.borrow_mut().meta_inbox.requests.push_back((
                None,
                scope.map(Box::new),
                request,
                None,
            ));
            self.state.borrow().meta_inbox.notify.notify();
            self.poll();
        }

        fn access(&mut self, change: AccessChange) -> Result<(), String> {
            let (sender, receiver) = crossbeam_channel::bounded(1);
            self.request(
                None,
                MetaRequest::Access {
                    change: Box::new(change),
                    reply: Some(sender),
                },
            );
            receiver.try_recv().expect("the owner answered")
        }

        fn declare_queue(&mut self, vhost: &str, name: &str) {
            let declare = QueueDeclare {
                queue: ShortStr::from(name),
                durable: true,
                ..Default::default()
            };
            self.request(
                Some(Scope {
                    vhost: ShortStr::from(vhost),
                    user: "guest".into(),
                    checked: true,
                }),
                MetaRequest::QueueDeclare(declare),
            );
        }
    }

    fn full(user: &str, vhost: &str) -> AccessChange {
        AccessChange::PermissionSet {
            user: user.into(),
            vhost: vhost.into(),
            permission: Permission::full(),
        }
    }

    #[test]
    fn vhosts_are_added_with_their_own_exchanges_and_queues() {
        let mut node = Node::new();
        node.access(AccessChange::VhostAdded(VhostDef::new("v")))
            .unwrap();
        node.access(full("guest", "v")).unwrap();
        assert_eq!(
            node.access(AccessChange::VhostAdded(VhostDef::new("v"))),
            Err("vhost_already_exists: v".into())
        );
        node.declare_queue("v", "q");
        let state = node.state.borrow();
        let v = state.vhost("v").unwrap();
        assert!(v.exchanges.contains_key("amq.topic"));
        assert!(v.queues.contains_key("q"));
        assert!(!state.vhost("/").unwrap().queues.contains_key("q"));
        assert!(state.users.may_open_vhost("guest", "v"));
    }

    #[test]
    fn deleting_a_vhost_removes_its_queues_and_closes_its_connections() {
        let mut node = Node::new();
        node.access(AccessChange::VhostAdded(VhostDef::new("v")))
            .unwrap();
        node.access(full("guest", "v")).unwrap();
        node.declare_queue("v", "q");
        node.declare_queue("/", "q");
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 40_000));
        let (in_v, _, _) = node
            .state
            .borrow_mut()
            .open_connection((peer, peer), crate::metadata::auth::External::NotTls);
        let (in_default, _, _) = node
            .state
            .borrow_mut()
            .open_connection((peer, peer), crate::metadata::auth::External::NotTls);
        node.state
            .borrow_mut()
            .connections
            .get_mut(&in_v)
            .unwrap()
            .vhost = ShortStr::from("v");
        node.state
            .borrow_mut()
            .connections
            .get_mut(&in_default)
            .unwrap()
            .vhost = ShortStr::from("/");
        assert_eq!(node.state.borrow().queues.len(), 2);
        node.access(AccessChange::VhostDeleted("v".into())).unwrap();
        let state = node.state.borrow();
        assert!(state.vhost("v").is_none());
        assert_eq!(state.queues.len(), 1, "the queue of '/' stays");
        assert!(!state.users.may_open_vhost("guest", "v"));
        let closed = &state.connections[&in_v];
        let text = String::from_utf8_lossy(&closed.wire.out);
        assert!(text.contains("vhost 'v' is deleted"), "{:?}", text);
        assert!(state.connections[&in_default].wire.out.is_empty());
    }

    #[test]
    fn users_and_permissions_change_at_run_time() {
        let mut node = Node::new();
        let user = User::new("u".into(), None, vec!["management".into()], BTreeMap::new());
        node.access(AccessChange::UserPut(user)).unwrap();
        assert_eq!(
            node.access(full("u", "nowhere")),
            Err("no_such_vhost: nowhere".into())
        );
        node.access(full("u", "/")).unwrap();
        assert!(node.state.borrow().users.may_open_vhost("u", "/"));
        node.access(AccessChange::PermissionCleared {
            user: "u".into(),
            vhost: "/".into(),
        })
        .unwrap();
        assert!(!node.state.borrow().users.may_open_vhost("u", "/"));
        node.access(AccessChange::UserDeleted("u".into())).unwrap();
        assert!(node.state.borrow().users.user("u").is_none());
        assert_eq!(
            node.access(AccessChange::UserDeleted("u".into())),
            Err("no_such_user: u".into())
        );
    }

    #[test]
    fn a_vhost_queue_limit_refuses_the_next_queue() {
        let mut node = Node::new();
        node.access(AccessChange::VhostLimitsSet {
            vhost: "/".into(),
            limits: VhostLimits {
                max_connections: None,
                max_queues: Some(1),
            },
        })
        .unwrap();
        node.declare_queue("/", "q1");
        node.declare_queue("/", "q2");
        let state = node.state.borrow();
        let v = state.vhost("/").unwrap();
        assert!(v.queues.contains_key("q1"));
        assert!(!v.queues.contains_key("q2"));
    }
}

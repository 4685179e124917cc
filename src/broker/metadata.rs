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

use crate::broker::{ChannelReply, ShardState};
use crate::metadata::definitions::Definitions;
use crate::metadata::exchange::{
    check_alternate_exchange, delayed_type, unknown_exchange_type, Binding, Destination,
    ExchangeDef, ExchangeKind, MatchMode, ALTERNATE_EXCHANGE_ARGUMENT, DELAYED_TYPE,
    DELAYED_TYPE_ARGUMENT,
};
use crate::metadata::queue_args::{self, QueueArgs};
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
}

/// The -ok method to send back to the client.
pub(crate) type MetaReply = Method;

#[derive(Debug)]
pub enum RpcRequest {
    Apply(Vec<MetaChange>),
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
    };
    loop {
        notify.wait().await;
        loop {
            let mut replies = Vec::new();
            let mut handled = 0;
            while handled < REQUESTS_PER_WRITE_MAX {
                let next = owner.state.borrow_mut().meta_inbox.requests.pop_front();
                let Some((from, request)) = next else {
                    break;
                };
                let result = owner.handle(from, request).await;
                if let Some((conn, channel)) = from {
                    replies.push((conn, channel, result));
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
        if changes.is_empty() && !self.failed {
            return Ok(());
        }
        let state = &self.state;
        let snapshot = || {
            let state = state.borrow();
            Definitions::snapshot(&state.vhost, &state.users).to_json()
        };
        match sink.store(&changes, snapshot).await {
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
                if let Some(change) = DefChange::durable(&state.vhost, &changes[at]) {
                    self.unwritten.borrow_mut().push(change);
                }
                let emptied = state.apply_change(&changes[at]);
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
                RpcRequest::Apply(changes.clone()),
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
        request: MetaRequest,
    ) -> Result<Method, AmqpError> {
        let conn = from.map(|(c, _)| c);
        match request {
            MetaRequest::ExchangeDeclare(m) => self.exchange_declare(m).await,
            MetaRequest::ExchangeDelete(m) => self.exchange_delete(m).await,
            MetaRequest::ExchangeBind(m) => {
                let binding =
                    self.exchange_binding(&m.source, &m.destination, &m.routing_key, &m.arguments)?;
                self.bind(binding).await?;
                Ok(ExchangeBindOk {}.into())
            }
            // RabbitMQ 3.10 answers unbind-ok when an exchange or the queue
            // of the binding is missing: there is no such binding to remove.
            MetaRequest::ExchangeUnbind(m) => {
                let binding =
                    self.exchange_binding(&m.source, &m.destination, &m.routing_key, &m.arguments);
                if let Some(binding) = unless_missing(binding)? {
                    self.unbind(binding).await;
                }
                Ok(ExchangeUnbindOk {}.into())
            }
            MetaRequest::QueueDeclare(m) => self.queue_declare(m, conn).await,
            MetaRequest::QueueDelete(m) => self.queue_delete(m, conn).await,
            MetaRequest::QueueBind(m) => {
                let binding =
                    self.queue_binding(&m.queue, &m.exchange, &m.routing_key, &m.arguments, conn)?;
                self.bind(binding).await?;
                Ok(QueueBindOk {}.into())
            }
            MetaRequest::QueueUnbind(m) => {
                let binding =
                    self.queue_binding(&m.queue, &m.exchange, &m.routing_key, &m.arguments, conn);
                if let Some(binding) = unless_missing(binding)? {
                    self.unbind(binding).await;
                }
                Ok(QueueUnbindOk {}.into())
            }
            MetaRequest::QueueAutoDelete { queue } => {
                let exists = self.state.borrow().vhost.queue_by_id(queue.id).is_some();
                if exists {
                    self.commit(vec![MetaChange::QueueDeleted(queue)]).await;
                }
                Ok(QueueDeleteOk { message_count: 0 }.into())
            }
            MetaRequest::ConnectionGone { conn } => {
                let exclusive: Vec<QueueRef> = self
                    .state
                    .borrow()
                    .vhost
                    .queues
                    .values()
                    .filter(|q| q.exclusive_owner == Some(conn))
                    .map(|q| q.queue_ref())
                    .collect();
                if !exclusive.is_empty() {
                    self.commit(
                        exclusive
                            .into_iter()
                            .map(MetaChange::QueueDeleted)
                            .collect(),
                    )
                    .await;
                }
                Ok(QueueDeleteOk { message_count: 0 }.into())
            }
        }
    }

    async fn exchange_declare(&mut self, m: ExchangeDeclare) -> Result<Method, AmqpError> {
        let ok: Method = ExchangeDeclareOk {}.into();
        if m.exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        let existing = self
            .state
            .borrow()
            .vhost
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
            match state.vhost.exchanges.get(m.exchange.as_str()) {
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
            if !state.vhost.exchanges.contains_key(name.as_str()) {
                return Err(no_exchange(name));
            }
        }
        check_binding_arguments(&state, source, arguments)?;
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
        let Some(meta) = state.vhost.queues.get(queue.as_str()) else {
            return Err(no_queue(queue));
        };
        check_exclusive(meta, conn)?;
        if exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        if !state.vhost.exchanges.contains_key(exchange.as_str()) {
            return Err(no_exchange(exchange));
        }
        check_binding_arguments(&state, exchange, arguments)?;
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
                .vhost
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
                .vhost
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
        // As RabbitMQ: an exclusive queue is never durable, whatever was asked.
        let durable = m.durable && !m.exclusive;
        let existing = self.state.borrow().vhost.queues.get(name.as_str()).cloned();
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
        let args = QueueArgs::parse(&name, &m.arguments)?;
        queue_args::check_queue_type_flags(&name, &args, durable, m.exclusive, m.auto_delete)?;
        let shard = self.place(&m, conn);
        tracing::debug!(queue = %name, shard = shard.0, "queue placed");
        let meta = QueueMeta {
            id: QueueId(self.next_queue_id),
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
            .vhost
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

    /// "amq.gen-" and 22 characters, as RabbitMQ names server-named queues.
    fn server_named_queue(&mut self) -> ShortStr {
        loop {
            let name = generated_name("amq.gen-", &mut self.next_name);
            if !self.state.borrow().vhost.queues.contains_key(name.as_str()) {
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
    state: &ShardState,
    exchange: &ShortStr,
    arguments: &FieldTable,
) -> Result<(), AmqpError> {
    let is_headers = state
        .vhost
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

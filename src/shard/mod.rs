//! Shards: one glommio executor per CPU, each owning its connections, its
//! queues and its replica of the definitions, talking to the others only
//! through the channel mesh (bounded SPSC channels carrying batches of
//! `ShardMsg`). This module, `net/` and `store/` are the only ones that
//! name glommio. It is the composition root: it may import every other
//! layer, and none imports it.

use std::cell::{Cell, RefCell};
use std::os::fd::IntoRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::net::TcpListener;
use glommio::{GlommioError, LocalExecutorBuilder, Placement, ResourceType};
use tracing::{debug, error, info, warn};

use crate::broker::metadata::OwnerStart;
use crate::broker::vhost::Vhost;
use crate::broker::{metadata, ShardMsg, ShardState};
use crate::config::{self, Config};
use crate::metadata::auth::Users;
use crate::metadata::definitions::{Definitions, RestorePlan, Source};
use crate::metadata::vhost::{MetaChange, QueueMeta};
use crate::model::alarms::{AlarmBoard, Resource, ALARM_CHECK_INTERVAL};
use crate::model::ids::ShardId;
use crate::net;
use crate::store;
use crate::store::log::{MessageStore, StoreStats};
use crate::store::recovery::ShardRecovery;
use crate::util::signal::Notify;

pub(crate) mod alarms;
pub(crate) mod data_dir;
pub(crate) mod fatal;
pub(crate) mod host;
pub(crate) mod shutdown;

type Batch = Vec<ShardMsg>;
type Shared = Rc<RefCell<ShardState>>;

/// I/O memory each executor registers with io_uring. glommio's default is
/// 10 MiB, more than many machines let a process lock; sockets need little.
const IO_MEMORY: usize = 2 << 20;
/// Mailbox batches a shard handles from one peer before it yields.
const MAILBOX_BATCHES_PER_TURN: usize = 16;
/// Locked memory a shard needs: its I/O memory plus the reactor's rings.
const MEMLOCK_PER_SHARD: u64 = IO_MEMORY as u64 + (1 << 20);
/// How long a stopping shard waits for its message store to write and sync
/// what is pending.
const STORE_FLUSH_DEADLINE: Duration = Duration::from_secs(10);
/// How long the pager waits after a failed read before it tries again.
const PAGER_RETRY_AFTER: Duration = Duration::from_millis(100);
/// How often the store's debug line (fsyncs per second, records per fsync)
/// is written, when it has something to say.
const STORE_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Why the broker did not start. Each is reported once, as a sentence, and
/// the process exits with 1.
#[derive(Debug)]
pub enum BootError {
    /// RLIMIT_MEMLOCK is below what io_uring needs and cannot be raised.
    Memlock { needed: u64, have: u64 },
    /// The listening sockets cannot be bound.
    Bind(net::listener::ListenError),
    /// An executor thread cannot be started.
    Executor(GlommioError<()>),
    /// A shard stopped before it was ready to accept connections.
    ShardStopped,
    /// A definitions file (warren's own or an import) cannot be used.
    Definitions {
        path: PathBuf,
        problem: DefinitionsProblem,
    },
    /// The message store cannot be read or rewritten at start (recovery).
    Recovery(std::io::Error),
    /// The data directory cannot be created, or another broker holds it.
    DataDir(data_dir::DataDirError),
    /// A shard stopped with an error after start-up.
    ShardFailed(String),
    /// The management API cannot listen.
    Management(crate::mgmt::ManagementError),
    /// The TLS certificate, key or CA cannot be used.
    Tls(String),
}

/// What is wrong with a definitions file at start.
#[derive(Debug)]
pub enum DefinitionsProblem {
    /// It cannot be read.
    Read(std::io::Error),
    /// It is not valid, or names something warren cannot create; the text
    /// names the definition at fault.
    Invalid(String),
    /// The restored definitions cannot be written back to the data directory.
    Write(std::io::Error),
}

impl std::fmt::Display for DefinitionsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DefinitionsProblem::Read(e) => write!(f, "{}", e),
            DefinitionsProblem::Invalid(problem) => write!(f, "{}", problem),
            DefinitionsProblem::Write(e) => write!(f, "cannot write it: {}", e),
        }
    }
}

impl std::fmt::Display for BootError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootError::Memlock { needed, have } => write!(
                f,
                "io_uring needs {} KiB of locked memory but RLIMIT_MEMLOCK is {} KiB and could not be raised. \
                 Raise it: `ulimit -l unlimited` in the shell, LimitMEMLOCK=infinity in the systemd unit, \
                 or `--ulimit memlock=-1` for docker run",
                needed / 1024,
                have / 1024
            ),
            BootError::Bind(e) => write!(f, "{}", e),
            BootError::Executor(e) => write!(f, "cannot start a shard: {}", e),
            BootError::ShardStopped => write!(f, "cannot start a shard: a shard stopped during start-up"),
            BootError::Definitions { path, problem } => {
                write!(f, "cannot use the definitions in {}: {}", path.display(), problem)
            }
            BootError::Recovery(e) => write!(f, "cannot recover the message store: {}", e),
            BootError::DataDir(e) => write!(f, "{}", e),
            BootError::ShardFailed(e) => write!(f, "a shard stopped with an error: {}", e),
            BootError::Management(e) => write!(f, "{}", e),
            BootError::Tls(e) => write!(f, "{}", e),
        }
    }
}

impl std::error::Error for BootError {}

/// Raises RLIMIT_MEMLOCK as far as allowed; fails if still below `needed`.
pub(crate) fn raise_memlock(needed: u64) -> Result<(), BootError> {
    crate::util::rlimit::raise_memlock(needed).map_err(|have| BootError::Memlock { needed, have })
}

/// The management API's HTTPS listeners and its reload call use the
/// amqps listeners' certificate (`mgmt` may not import `net`): one reload
/// changes it for all of them.
impl crate::mgmt::https::Certificates for net::tls::TlsServer {
    fn https_config(&self) -> Arc<rustls::ServerConfig> {
        net::tls::TlsServer::https_config(self)
    }

    fn reload(&self) -> Result<(), String> {
        net::tls::TlsServer::reload(self).map_err(|e| e.to_string())
    }
}

/// Starts every shard and blocks until they stop.
pub fn run(config: Config) -> Result<(), BootError> {
    let shard_count = config.shards.max(1);
    // A panic on any thread ends the process, rather than leave it serving
    // without a shard.
    fatal::install();
    // Before anything is read: a second broker on this directory would
    // recover from files the first one is still writing.
    data_dir::restrict_new_files();
    let _data_dir_lock = data_dir::lock(&config.data_dir).map_err(BootError::DataDir)?;
    // Definitions first: a file that cannot be used stops the broker before
    // it listens.
    let mut boot = load_definitions(&config, shard_count)?;
    // Then the messages. The last run's logs are kept where they are when
    // every live record is in the log of a shard this run has: each queue
    // comes back with the id and on the shard its records carry.
    let scan = store::scan::scan(&config.data_dir).map_err(BootError::Recovery)?;
    let in_place = scan.fits(shard_count);
    if in_place {
        store::scan::place_queues(&scan, &mut boot.plan);
    } else {
        warn!(
            shards = shard_count,
            "stored messages are in the logs of shards this run does not have: \
             the message store is rewritten for this shard count"
        );
    }
    let restored_queues: Vec<QueueMeta> = boot
        .plan
        .changes
        .iter()
        .filter_map(|(_, c)| match c {
            MetaChange::QueueCreated(meta) => Some(meta.clone()),
            _ => None,
        })
        .collect();
    let recovered = if in_place {
        store::scan::recover_in_place(&config.data_dir, scan, &restored_queues, shard_count)
    } else {
        drop(scan);
        store::recovery::recover(
            &config.data_dir,
            &restored_queues,
            shard_count,
            config.segment_size,
            config.queue_window_bytes,
        )
    }
    .map_err(BootError::Recovery)?;
    let mut recovered = recovered.into_iter();
    raise_memlock(MEMLOCK_PER_SHARD * shard_count as u64)?;
    // Each client takes a file descriptor: the soft limit (often 1024)
    // would cap the clients long before the hard one.
    match net::listener::raise_fd_limit() {
        Ok(fds) => debug!(fds, "RLIMIT_NOFILE"),
        Err(e) => warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
    }
    // The TLS files are read before anything listens: a bad one stops the
    // start. SIGHUP reads them again (new handshakes take the new ones).
    let tls = match &config.tls {
        None => None,
        Some(settings) => Some(Arc::new(
            net::tls::TlsServer::new(settings.clone())
                .map_err(|e| BootError::Tls(e.to_string()))?,
        )),
    };
    shutdown::install(tls.clone());
    let (sockets, bound) =
        net::listener::bind_all(&config.listen, shard_count).map_err(BootError::Bind)?;
    let (mut tls_sockets, tls_bound) = match &config.tls {
        Some(settings) if !settings.listen.is_empty() => {
            net::listener::bind_all(&settings.listen, shard_count).map_err(BootError::Bind)?
        }
        _ => (Vec::new(), Vec::new()),
    };
    let cpus = config.cpus.clone().unwrap_or_else(|| {
        core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect()
    });
    let users = boot.users;
    let restore = Arc::new(boot.plan.changes);
    let owner_start = OwnerStart {
        next_queue_id: boot.plan.next_queue_id,
        next_shard: boot.plan.next_shard,
    };
    let log_start = boot.log_start;
    let alarm_board = Arc::new(AlarmBoard::new(shard_count));
    // Measured before the first shard runs, so that a disk already short
    // of space blocks the first publisher.
    let mut monitor = Some(alarms::Monitor::new(&config, alarm_board.clone()));
    // The control plane: one request channel per shard, drained by the
    // shard's tick; the management API's thread holds the senders.
    let (control_senders, control_receivers): (Vec<_>, Vec<_>) = (0..shard_count)
        .map(|_| crossbeam_channel::bounded(config::CONTROL_REQUESTS_MAX))
        .unzip();
    if !config.management_listen.is_empty()
        || !config.prometheus_listen.is_empty()
        || !config.management_tls_listen.is_empty()
        || !config.prometheus_tls_listen.is_empty()
    {
        let (memory_limit_bytes, disk_free_limit_bytes) = monitor
            .as_ref()
            .map_or((0, 0), alarms::Monitor::limits_bytes);
        let node = crate::mgmt::NodeInfo {
            name: crate::mgmt::node_name(),
            shard_count,
            started: Instant::now(),
            amqp_listeners: bound.clone(),
            management_listeners: Vec::new(),
            alarm_board: alarm_board.clone(),
            memory_limit_bytes,
            disk_free_limit_bytes,
            resident_bytes: alarms::resident_bytes,
            data_dir: config.data_dir.clone(),
        };
        let https = crate::mgmt::https::Https {
            management: config.management_tls_listen.clone(),
            prometheus: config.prometheus_tls_listen.clone(),
            certificates: tls
                .clone()
                .map(|tls| tls as Arc<dyn crate::mgmt::https::Certificates>),
        };
        crate::mgmt::start(
            &config.management_listen,
            &config.prometheus_listen,
            https,
            control_senders,
            node,
        )
        .map_err(BootError::Management)?;
    }
    let mut control_receivers = control_receivers.into_iter();
    let config = Arc::new(config);
    let mesh: MeshBuilder<Batch, Full> =
        MeshBuilder::full(shard_count, config::MAILBOX_BATCHES_MAX);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<()>(shard_count);
    let mut handles = Vec::new();
    for (index, sockets) in sockets.into_iter().enumerate() {
        let placement = match cpus.get(index) {
            Some(&cpu) if cpus.len() >= shard_count => Placement::Fixed(cpu),
            _ => Placement::Unbound,
        };
        let mesh = mesh.clone();
        let config = config.clone();
        let users = users.clone();
        let restore = restore.clone();
        let owner_start = owner_start.clone();
        let ready = ready_tx.clone();
        let alarm_board = alarm_board.clone();
        // The first shard started decides the alarms for the node (any one would do).
        let monitor = monitor.take();
        let mut fds: Vec<(i32, Option<Arc<net::tls::TlsServer>>)> = sockets
            .into_iter()
            .map(|fd| (fd.into_raw_fd(), None))
            .collect();
        if let Some(tls_fds) = tls_sockets.get_mut(index) {
            fds.extend(
                std::mem::take(tls_fds)
                    .into_iter()
                    .map(|fd| (fd.into_raw_fd(), tls.clone())),
            );
        }
        let messages = recovered.next().unwrap_or_default();
        let control = control_receivers
            .next()
            .unwrap_or_else(|| crossbeam_channel::bounded(0).1);
        let mut builder = LocalExecutorBuilder::new(placement);
        // Spinning spares a shard the wake-up through its eventfd (~0.1 ms)
        // when a peer's batch comes soon after it ran out of work: the
        // hops of a consumer on another shard than its queue. glommio
        // spins only on a pinned executor.
        if !config.spin_before_park.is_zero() {
            builder = builder.spin_before_park(config.spin_before_park);
        }
        let handle = builder
            .name(&format!("warren-shard-{}", index))
            .io_memory(IO_MEMORY)
            .spawn(move || async move {
                let boot = ShardBoot {
                    users,
                    restore,
                    owner_start,
                    log_start,
                    alarm_board,
                    monitor,
                    messages,
                    control,
                };
                shard_main(config, boot, mesh, fds, ready, shard_count).await;
            })
            .map_err(BootError::Executor)?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..shard_count {
        if ready_rx.recv().is_err() {
            return Err(BootError::ShardStopped);
        }
    }
    let addresses: Vec<String> = bound.iter().map(|a| a.to_string()).collect();
    let tls_addresses: Vec<String> = tls_bound.iter().map(|a| a.to_string()).collect();
    info!(
        address = %addresses.join(","),
        tls_address = %tls_addresses.join(","),
        shards = shard_count,
        "ready to accept connections"
    );
    let mut stopped = Ok(());
    for handle in handles {
        if let Err(e) = handle.join() {
            error!(error = %e, "shard stopped with an error");
            stopped = Err(BootError::ShardFailed(e.to_string()));
        }
    }
    if stopped.is_ok() {
        // Every shard has stopped, the metadata owner with them: the log's
        // changes go into the definitions file, so that the file is
        // complete while the broker is down and the next start has no log
        // to replay. A failure loses nothing: the log stays, and the next
        // start replays it.
        match store::definitions_log::compact_blocking(&config.data_dir) {
            Ok(0) => {}
            Ok(changes) => info!(
                file = %store::definitions::path(&config.data_dir).display(),
                changes,
                "definitions log written into the definitions file"
            ),
            Err(e) => warn!(
                error = %e,
                "cannot write the definitions log into the definitions file; the next \
                 start will"
            ),
        }
    }
    stopped
}

/// What the definitions at boot give each shard.
struct ShardBoot {
    users: Users,
    /// Applied by every shard before it accepts a connection.
    restore: Arc<Vec<(warren_protocol::ShortStr, MetaChange)>>,
    /// For the metadata owner on shard 0.
    owner_start: OwnerStart,
    log_start: store::definitions::LogStart,
    alarm_board: Arc<AlarmBoard>,
    /// The first shard's: it decides the node's resource alarms.
    monitor: Option<alarms::Monitor>,
    /// The shard's queues' stored messages, and its store directory.
    messages: ShardRecovery,
    /// The control plane's requests for this shard, answered from the tick.
    control: crossbeam_channel::Receiver<crate::broker::control::Control>,
}

/// The users and the exchanges, queues and bindings to re-create, from
/// `<data-dir>/definitions.json` with `definitions.log` replayed on it, and
/// `--definitions`; then the definitions file is written once and the log
/// emptied, so the file holds everything (an import too) before the first
/// client comes. Blocking file I/O: no executor runs yet.
struct BootDefinitions {
    users: Users,
    plan: RestorePlan,
    log_start: store::definitions::LogStart,
}

fn load_definitions(config: &Config, shard_count: usize) -> Result<BootDefinitions, BootError> {
    let own_path = store::definitions::path(&config.data_dir);
    let refused = |path: &PathBuf, problem: DefinitionsProblem| BootError::Definitions {
        path: path.clone(),
        problem,
    };
    let stored = store::definitions_log::load_on(&store::disk::StdDisk, &config.data_dir)
        .map_err(|e| refused(&own_path, DefinitionsProblem::Read(e)))?;
    let mut definitions = match stored.file {
        None => Definitions::default(),
        Some(text) => {
            let parsed = Definitions::from_json(&text, Source::DataDir)
                .map_err(|problem| refused(&own_path, DefinitionsProblem::Invalid(problem)))?;
            for warning in &parsed.warnings {
                warn!(file = %own_path.display(), "{}", warning);
            }
            // Each file is checked alone, so that an error names its file.
            parsed
                .definitions
                .restore_plan(shard_count)
                .map_err(|problem| refused(&own_path, DefinitionsProblem::Invalid(problem)))?;
            parsed.definitions
        }
    };
    let log = stored.log;
    let mut generation = store::definitions_log::next_generation(log.generation);
    if log.torn_bytes > 0 {
        warn!(
            file = %store::definitions_log::path(&config.data_dir).display(),
            bytes = log.torn_bytes,
            "dropped the torn end of the definitions log (a change never acknowledged)"
        );
    }
    if !log.changes.is_empty() {
        store::definitions_log::replay(&mut definitions, &log.changes);
        definitions
            .restore_plan(shard_count)
            .map_err(|problem| refused(&own_path, DefinitionsProblem::Invalid(problem)))?;
        if config.definitions_import.is_some() {
            // The log's changes go into the file before an import is merged:
            // were the log replayed again after a crash, on a file that
            // holds the import, a delete in it could remove what the import
            // brought back.
            store::definitions::write_blocking(&config.data_dir, &definitions.to_json())
                .and_then(|()| store::definitions_log::reset_blocking(&config.data_dir, generation))
                .map_err(|e| refused(&own_path, DefinitionsProblem::Write(e)))?;
            generation = store::definitions_log::next_generation(Some(generation));
        }
    }
    if let Some(import_path) = &config.definitions_import {
        let text = std::fs::read_to_string(import_path)
            .map_err(|e| refused(import_path, DefinitionsProblem::Read(e)))?;
        let parsed = Definitions::from_json(&text, Source::Import)
            .map_err(|problem| refused(import_path, DefinitionsProblem::Invalid(problem)))?;
        for warning in &parsed.warnings {
            warn!(file = %import_path.display(), "{}", warning);
        }
        parsed
            .definitions
            .restore_plan(shard_count)
            .map_err(|problem| refused(import_path, DefinitionsProblem::Invalid(problem)))?;
        info!(
            file = %import_path.display(),
            users = parsed.definitions.users.len(),
            exchanges = parsed.definitions.exchanges.len(),
            queues = parsed.definitions.queues.len(),
            bindings = parsed.definitions.bindings.len(),
            "importing definitions"
        );
        definitions.merge(parsed.definitions);
    }
    // RabbitMQ creates guest and its default user only on a fresh node, and
    // not when definitions are imported at boot.
    if definitions.users.is_empty() {
        definitions.users = Users::new(config.default_user.clone())
            .sorted()
            .into_iter()
            .cloned()
            .collect();
    } else if let Some((name, _)) = &config.default_user {
        if !definitions.users.iter().any(|u| &u.name == name) {
            warn!(
                user = %name,
                "--default-user not created: users are defined already (as RabbitMQ, the \
                 default user is created only when there are no users)"
            );
        }
    }
    let users = definitions.users();
    let plan = definitions
        .restore_plan(shard_count)
        .map_err(|problem| refused(&own_path, DefinitionsProblem::Invalid(problem)))?;
    for warning in &plan.warnings {
        warn!("{}", warning);
    }
    // The file holds exactly what the shards will have: a replica built
    // from the same changes.
    let mut replicas: std::collections::BTreeMap<String, Vhost> = users
        .vhosts()
        .map(|v| (v.name.clone(), Vhost::new()))
        .collect();
    for (vhost, change) in &plan.changes {
        if let Some(replica) = replicas.get_mut(vhost.as_str()) {
            replica.apply(change);
        }
    }
    let written =
        Definitions::snapshot(replicas.iter().map(|(n, v)| (n.as_str(), v)), &users).to_json();
    store::definitions::write_blocking(&config.data_dir, &written)
        .and_then(|()| store::definitions_log::reset_blocking(&config.data_dir, generation))
        .map_err(|e| refused(&own_path, DefinitionsProblem::Write(e)))?;
    let count =
        |kind: fn(&MetaChange) -> bool| plan.changes.iter().filter(|(_, c)| kind(c)).count();
    info!(
        file = %own_path.display(),
        users = users.sorted().len(),
        vhosts = users.vhosts().count(),
        exchanges = count(|c| matches!(c, MetaChange::ExchangeCreated(_))),
        queues = count(|c| matches!(c, MetaChange::QueueCreated(_))),
        bindings = count(|c| matches!(c, MetaChange::BindingAdded(_))),
        logged_changes = log.changes.len(),
        "definitions restored"
    );
    Ok(BootDefinitions {
        users,
        plan,
        log_start: store::definitions::LogStart {
            generation,
            file_bytes: written.len() as u64,
        },
    })
}

async fn shard_main(
    config: Arc<Config>,
    boot: ShardBoot,
    mesh: MeshBuilder<Batch, Full>,
    fds: Vec<(i32, Option<Arc<net::tls::TlsServer>>)>,
    ready: crossbeam_channel::Sender<()>,
    shard_count: usize,
) {
    // Joining the mesh waits on wake-ups from the other executors' threads,
    // which glommio 0.9 can miss while parked (docs/runtime.md): a timer keeps
    // the executor polling until the join is done and the tick takes over.
    let joined = Rc::new(std::cell::Cell::new(false));
    {
        let joined = joined.clone();
        glommio::spawn_local(async move {
            while !joined.get() {
                glommio::timer::sleep(config::TICK).await;
            }
        })
        .detach();
    }
    let joining = mesh.join().await;
    joined.set(true);
    let (senders, mut receivers) = match joining {
        Ok(pair) => pair,
        Err(e) => {
            error!(error = ?e, "cannot join the shard mesh");
            return;
        }
    };
    // Shard ids are mesh positions, so that a message's destination index is
    // its shard id.
    let id = ShardId(senders.peer_id() as u16);
    let state: Shared = Rc::new(RefCell::new(ShardState::new(
        id,
        shard_count,
        Rc::new((*config).clone()),
        Rc::new(boot.users),
        boot.alarm_board.clone(),
    )));
    // Every shard applies the same restored definitions, in the same order,
    // before any listener below accepts a connection.
    for (vhost, change) in boot.restore.iter() {
        state.borrow_mut().apply_change(vhost, change);
    }
    let senders = Rc::new(senders);
    // Then the stored messages, before any client comes; what expired
    // while the broker was down is dead-lettered now.
    let ShardRecovery {
        dir: store_dir,
        queues: recovered_queues,
        segments: recovered_segments,
        delayed: recovered_delayed,
        void: void_records,
        queue_id_max,
    } = boot.messages;
    let index_dir = store_dir.clone();
    {
        let mut store = MessageStore::resume(config.segment_size, &recovered_segments);
        store.queue_id_max = queue_id_max;
        // Records no queue takes back are removed first, so that they
        // never come back and their segments can go.
        for &(queue_id, seq, segment) in &void_records {
            store.append_removal(queue_id, seq, segment);
        }
        store.paging.queue_window_bytes = config.queue_window_bytes;
        store.paging.shard_window_bytes = config.shard_window_bytes;
        state.borrow_mut().store = store;
    }
    state.borrow_mut().restore_messages(recovered_queues);
    state.borrow_mut().restore_delayed(recovered_delayed);
    flush(&state, &senders);
    let store_busy = Rc::new(Cell::new(false));
    glommio::spawn_local(run_pager(
        state.clone(),
        senders.clone(),
        store::segments::SegmentReader::new(store_dir.clone()),
    ))
    .detach();
    glommio::spawn_local(run_store(
        state.clone(),
        senders.clone(),
        store::segments::SegmentFiles::new(store_dir).with_sync_delay(config.sync_delay_test),
        store_busy.clone(),
    ))
    .detach();

    for (peer, receiver) in receivers.streams() {
        let state = state.clone();
        let senders = senders.clone();
        glommio::spawn_local(async move {
            let mut batches_since_yield = 0;
            while let Some(batch) = receiver.recv().await {
                debug_assert!(peer != id.index());
                state.borrow_mut().handle_batch(ShardId(peer as u16), batch);
                flush(&state, &senders);
                // A busy peer keeps this channel full: let the shard's own
                // sockets have their turn.
                batches_since_yield += 1;
                if batches_since_yield >= MAILBOX_BATCHES_PER_TURN {
                    batches_since_yield = 0;
                    glommio::executor().yield_task_queue_now().await;
                } else {
                    glommio::yield_if_needed().await;
                }
            }
        })
        .detach();
    }

    let control = Rc::new(boot.control);

    // The flusher moves outgoing batches into the mesh once per reactor
    // turn, after the tasks that filled them have run. A shard busy with
    // traffic to its peers runs it every turn, so it also answers the
    // control plane's waiting requests (a few): a list of queues then
    // waits for the end of a turn, not for the next tick, which a
    // saturated shard reaches late. An empty channel costs one check per
    // turn, nothing per message.
    {
        let state = state.clone();
        let senders = senders.clone();
        let control = control.clone();
        let ready = state.borrow().outbox_ready.clone();
        glommio::spawn_local(async move {
            loop {
                ready.wait().await;
                glommio::executor().yield_task_queue_now().await;
                answer_control(&state, &control, config::CONTROL_REQUESTS_PER_TURN);
                // Batches held back by the interval go when they are due.
                while let Some(due) = flush(&state, &senders) {
                    glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
                }
            }
        })
        .detach();
    }

    // Listeners stop on shutdown; the shard ends once its clients are gone.
    let stop_accepting: Vec<Notify> = fds.iter().map(|_| Notify::new()).collect();
    let stopped = Notify::new();

    // The tick: heartbeats, deadlines, mailbox retries, shutdown, the
    // control plane's requests, and an upper bound on how long the
    // executor can stay parked (docs/runtime.md).
    {
        let state = state.clone();
        let senders = senders.clone();
        let stop_accepting = stop_accepting.clone();
        let stopped = stopped.clone();
        glommio::spawn_local(async move {
            let mut stopping_since: Option<Instant> = None;
            loop {
                glommio::timer::sleep(config::TICK).await;
                let now = Instant::now();
                let mut shard = state.borrow_mut();
                shard.tick(now);
                // glommio 0.9's executor_stats() hands over the stats and
                // resets them: each call returns the time since the last one.
                shard.counters.reactor_busy += glommio::executor().executor_stats().total_runtime();
                drop(shard);
                // Polled, never woken: glommio 0.9 misses wake-ups from
                // foreign threads (docs/runtime.md). An empty channel costs
                // one check per tick.
                answer_control(&state, &control, config::CONTROL_REQUESTS_PER_TICK);
                if shutdown::requested() {
                    match stopping_since {
                        None => {
                            stopping_since = Some(now);
                            stop_accepting.iter().for_each(Notify::notify);
                            state.borrow_mut().shut_down_connections(now);
                        }
                        Some(since) => {
                            let clients = state.borrow().connection_count();
                            if clients == 0 || now - since > shutdown::CLOSE_DEADLINE {
                                if clients > 0 {
                                    warn!(clients, "stopping with clients that did not close");
                                }
                                stopped.notify();
                            }
                        }
                    }
                }
                flush(&state, &senders);
            }
        })
        .detach();
    }

    // The alarm check: publish this shard's memory use; on the deciding
    // shard, decide the alarms; take the node's alarm state (unblocking
    // connections when it clears).
    {
        let state = state.clone();
        let board = boot.alarm_board.clone();
        let mut monitor = boot.monitor;
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(ALARM_CHECK_INTERVAL).await;
                state.borrow().publish_memory_use();
                state.borrow_mut().update_paging();
                if let Some(monitor) = monitor.as_mut() {
                    monitor.check(Instant::now());
                }
                // A shard whose figures put the node over the watermark
                // blocks its own publishers before the deciding shard says so.
                // Likewise a shard whose store cannot write.
                let raised = board.raised();
                let raised = raised
                    .with(
                        Resource::Memory,
                        raised.contains(Resource::Memory) || board.over_memory_budget(),
                    )
                    .with(
                        Resource::Disk,
                        raised.contains(Resource::Disk) || board.store_failing(),
                    );
                state.borrow_mut().set_alarms(raised);
            }
        })
        .detach();
    }

    // The timer wheel: message TTLs, queue expiry, delayed messages. The
    // task sleeps until the earliest deadline; an earlier one wakes it.
    {
        let state = state.clone();
        let senders = senders.clone();
        let wake = state.borrow().timers.wake.clone();
        glommio::spawn_local(async move {
            loop {
                let sleep_for = {
                    let mut state = state.borrow_mut();
                    state.run_timers();
                    state.timers.plan_sleep()
                };
                flush(&state, &senders);
                futures_lite::future::or(glommio::timer::sleep(sleep_for), wake.wait()).await;
            }
        })
        .detach();
    }

    if id == ShardId(0) {
        let sink =
            store::definitions::DefinitionsFile::new(config.data_dir.clone(), boot.log_start);
        glommio::spawn_local(metadata::run_owner(state.clone(), boot.owner_start, sink)).detach();
    }

    for ((fd, tls), stop) in fds.into_iter().zip(stop_accepting) {
        use std::os::fd::FromRawFd;
        // SAFETY: the fd is a listening socket bound for this shard alone,
        // and nothing else owns or closes it.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        glommio::spawn_local(net::listener::accept_loop(
            listener,
            host::ShardHost(state.clone()),
            stop,
            tls,
        ))
        .detach();
    }

    let _ = ready.send(());
    #[cfg(debug_assertions)]
    if fatal::debug_panic_requested(id.index()) {
        glommio::spawn_local(async move {
            glommio::timer::sleep(config::TICK).await;
            panic!(
                "WARREN_DEBUG_PANIC_SHARD asked shard {} to panic",
                id.index()
            );
        })
        .detach();
    }
    // The spawned tasks do the work until a shutdown has closed the clients.
    stopped.wait().await;
    // Everything the store holds is written and synced before the exit.
    let deadline = Instant::now() + STORE_FLUSH_DEADLINE;
    while !state.borrow().store.is_idle() || store_busy.get() {
        if Instant::now() > deadline {
            error!("stopping before the message store could write everything");
            break;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    // Then the index of what the log holds, for the next start to read
    // instead of every segment. Synchronous to the end: no task of the
    // shard runs meanwhile, so nothing is appended while it is written.
    if state.borrow().store.is_idle() && !store_busy.get() {
        write_clean_stop_index(&state.borrow(), &index_dir);
    }
}

/// Writes the shard's clean-stop index (`store::index`), or says why not.
fn write_clean_stop_index(state: &ShardState, dir: &std::path::Path) {
    let started = Instant::now();
    let queues: Vec<_> = state
        .queues
        .values()
        .map(|q| q.stored_records(&state.timers))
        .collect();
    let delayed = state.stored_delayed();
    match store::index::write_clean_stop(&store::disk::StdDisk, dir, &state.store, queues, delayed)
    {
        Ok(written) => info!(
            queues = written.queues,
            messages = written.messages,
            index_bytes = written.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "clean-stop index written"
        ),
        Err(reason) => warn!(
            reason = %reason,
            "no clean-stop index written: the next start scans the segments"
        ),
    }
}

/// Answers up to `max` of the control plane's waiting requests.
fn answer_control(
    state: &Shared,
    control: &crossbeam_channel::Receiver<crate::broker::control::Control>,
    max: usize,
) {
    if control.is_empty() {
        return;
    }
    let mut shard = state.borrow_mut();
    for _ in 0..max {
        match control.try_recv() {
            Ok(request) => shard.control(request),
            Err(_) => break,
        }
    }
}

/// The shard's store task: group commit. It wakes when records are
/// pending, lets the rest of the reactor turn add to them, then writes the
/// batch and fdatasyncs once; records appended meanwhile form the next
/// batch, written as soon as this one is done. After each batch, the
/// confirms that waited for it go out and empty segments are deleted.
async fn run_store(
    state: Shared,
    senders: Rc<Senders<Batch>>,
    mut files: store::segments::SegmentFiles,
    busy: Rc<Cell<bool>>,
) {
    let ready = state.borrow().store.ready.clone();
    let mut reported = StoreStats::default();
    let mut reported_at = Instant::now();
    loop {
        ready.wait().await;
        busy.set(true);
        glommio::executor().yield_task_queue_now().await;
        loop {
            let batch = state.borrow_mut().store.take_batch();
            let Some(mut batch) = batch else { break };
            let write_started = Instant::now();
            let written = write_until_taken(&state, &mut files, &mut batch).await;
            {
                let mut state = state.borrow_mut();
                state.store.stats.records += batch.records;
                state.store.stats.write_us += write_started.elapsed().as_micros() as u64;
                state
                    .store
                    .batch_written(batch.chunks.into_iter().map(|c| c.bytes), written);
                state.store_written(batch.confirms);
            }
            flush(&state, &senders);
            reclaim(&state, &mut files).await;
            // Records pointing into an old segment that still holds a few
            // live messages keep emptied segments; copying those messages
            // forward lets them all go after the next batch.
            state.borrow_mut().compact_store();
            let elapsed = reported_at.elapsed();
            if elapsed >= STORE_REPORT_EVERY {
                let now = state.borrow().store.stats;
                let fsyncs = now.fsyncs - reported.fsyncs;
                if fsyncs > 0 {
                    let records = now.records - reported.records;
                    debug!(
                        fsyncs_per_s = (fsyncs as f64 / elapsed.as_secs_f64()).round(),
                        records_per_fsync = records / fsyncs,
                        confirms_per_fsync = (now.confirms - reported.confirms) / fsyncs,
                        kib_per_fsync = (now.bytes - reported.bytes) / fsyncs / 1024,
                        write_us_per_fsync = (now.write_us - reported.write_us) / fsyncs,
                        "message store"
                    );
                }
                reported = now;
                reported_at = Instant::now();
            }
        }
        busy.set(false);
    }
}

/// Deletes the segments nothing needs any more. Deleting a segment may free
/// the ones whose records pointed into it: repeats until none is left.
async fn reclaim(state: &Shared, files: &mut store::segments::SegmentFiles) {
    loop {
        let dead = state.borrow_mut().store.reclaimable();
        if dead.is_empty() {
            break;
        }
        match files.delete(&dead).await {
            Ok(()) => {
                let mut state = state.borrow_mut();
                for &number in &dead {
                    state.store.segment_deleted(number);
                }
                debug!(segments = ?dead, left = state.store.segment_count(), "segments reclaimed");
            }
            Err(e) => {
                // They stay marked: a later start reclaims them.
                error!(error = %e, segments = ?dead, "cannot delete empty segments");
                break;
            }
        }
    }
}

/// Writes a batch, again and again while the disk refuses it (full, a file
/// size limit, an I/O error): nothing in it is dropped, and nothing after
/// it is written first, so the store on disk stays what the queues think
/// it is. Meanwhile the shard's flag on the alarm board raises the disk
/// alarm, which blocks publishers node-wide, and the confirms waiting for
/// the batch stay unsent: a publisher is confirmed only what is on disk.
/// RabbitMQ's message store crashes on a write error instead (its vhost
/// restarts, and what it had not written is lost unconfirmed). Returns the
/// bytes written.
async fn write_until_taken(
    state: &Shared,
    files: &mut store::segments::SegmentFiles,
    batch: &mut store::log::Batch<crate::broker::ConfirmTarget>,
) -> u64 {
    let mut failures = 0u64;
    loop {
        match files.write(batch).await {
            Ok(bytes) => {
                if failures > 0 {
                    let state = state.borrow();
                    state.alarm_board.set_store_failing(state.id.index(), false);
                    info!(
                        failures,
                        "the message store writes again: the batch it held is on disk"
                    );
                }
                return bytes;
            }
            Err(e) => {
                if failures == 0 {
                    let state = state.borrow();
                    state.alarm_board.set_store_failing(state.id.index(), true);
                    error!(
                        error = %e,
                        records = batch.records,
                        confirms = batch.confirms.len(),
                        "the message store cannot write: publishers are blocked (disk alarm) and \
                         the batch is written again until the disk takes it"
                    );
                } else if failures.is_power_of_two() {
                    warn!(error = %e, failures, "the message store still cannot write");
                }
                failures += 1;
                // Consumers go on acknowledging: segments they empty give
                // their space back now, which is how a full disk recovers.
                reclaim(state, files).await;
                glommio::timer::sleep(config::STORE_WRITE_RETRY_AFTER).await;
            }
        }
    }
}

/// The shard's pager: reads paged messages back for the queues that
/// asked (`Paging::want`), one queue's read after another, each read
/// taking neighbouring records together. A failed read leaves the
/// messages paged; the queue asks again later.
async fn run_pager(
    state: Shared,
    senders: Rc<Senders<Batch>>,
    mut reader: store::segments::SegmentReader,
) {
    let wake = state.borrow().store.paging.wake.clone();
    loop {
        wake.wait().await;
        let reads = state.borrow_mut().page_reads();
        let mut failed = false;
        for read in reads {
            let entries: Vec<_> = read.entries.iter().map(|p| (p.seq, p.location)).collect();
            let messages = match reader.read_publishes(read.queue.0, &entries).await {
                Ok(messages) => Some(messages),
                Err(e) => {
                    error!(error = %e, queue = read.queue.0, "cannot read paged messages back");
                    failed = true;
                    None
                }
            };
            state.borrow_mut().page_loaded(read, messages);
            flush(&state, &senders);
        }
        reader
            .close_unless(|n| state.borrow().store.has_segment(n))
            .await;
        if failed {
            // Not at once again: the disk may need a moment.
            glommio::timer::sleep(PAGER_RETRY_AFTER).await;
            state.borrow().store.paging.wake.notify();
        }
    }
}

/// Sends each peer its outgoing batch, unless its pace holds it
/// (`Outbox::take`: heavy traffic, a batch sent less than
/// `mailbox_interval` ago): then it returns when the batch is due, and
/// the flusher sends it then (a caller that ignores the answer leaves it
/// to the flusher, which the batch's first message woke). A full mailbox
/// keeps the batch here (never awaiting on a full channel: see
/// docs/runtime.md, glommio #555) and, past a limit, makes the readers
/// stop until it drains.
fn flush(state: &Shared, senders: &Senders<Batch>) -> Option<Instant> {
    let mut state = state.borrow_mut();
    let mut backed_up = false;
    let mut due: Option<Instant> = None;
    let interval = state.config.mailbox_interval;
    // Read once, and only when there is a batch to pace: most calls find
    // every outbox empty.
    let mut clock: Option<Instant> = None;
    for peer in 0..state.shard_count {
        if state.outbox[peer].is_empty() {
            continue;
        }
        let now = (!interval.is_zero()).then(|| *clock.get_or_insert_with(Instant::now));
        let batch = match state.outbox[peer].take(now, interval) {
            Ok(batch) => batch,
            Err(at) => {
                due = Some(due.map_or(at, |d| d.min(at)));
                continue;
            }
        };
        let batch_len = batch.len() as u64;
        match senders.try_send_to(peer, batch) {
            Ok(()) => {
                state.counters.mailbox_batches_sent += 1;
                state.counters.mailbox_messages_sent += batch_len;
            }
            Err(GlommioError::WouldBlock(ResourceType::Channel(batch))) => {
                state.outbox[peer].put_back(batch);
                backed_up |= state.outbox[peer].len() > config::MAILBOX_OVERFLOW_MAX;
            }
            // A peer that already stopped is no error while shutting down.
            Err(_) if shutdown::requested() => {}
            Err(e) => error!(peer, error = %e, "mailbox send failed"),
        }
    }
    state.backpressure = backed_up;
    due
}

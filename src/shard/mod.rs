//! Shards: one glommio executor per CPU, each owning its connections, its
//! queues and its replica of the definitions, talking to the others only
//! through the channel mesh (bounded SPSC channels carrying batches of
//! `ShardMsg`). This module and `net/` are the only ones that name glommio.

use std::cell::RefCell;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::net::TcpListener;
use glommio::{GlommioError, LocalExecutorBuilder, Placement, ResourceType};
use tracing::{error, info, warn};

use crate::broker::auth::Users;
use crate::broker::ids::ShardId;
use crate::broker::signal::Notify;
use crate::broker::{metadata, ShardMsg, ShardState};
use crate::config::{self, Config};
use crate::net;

pub mod shutdown;

type Batch = Vec<ShardMsg>;
type Shared = Rc<RefCell<ShardState>>;

/// I/O memory each executor registers with io_uring. glommio's default is
/// 10 MiB, more than many machines let a process lock; sockets need little.
const IO_MEMORY: usize = 2 << 20;
/// Mailbox batches a shard handles from one peer before it yields.
const MAILBOX_BATCHES_PER_TURN: usize = 16;
/// Locked memory a shard needs: its I/O memory plus the reactor's rings.
const MEMLOCK_PER_SHARD: u64 = IO_MEMORY as u64 + (1 << 20);

#[derive(Debug)]
pub enum BootError {
    Memlock { needed: u64, have: u64 },
    Bind(std::io::Error),
    Executor(String),
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
            BootError::Bind(e) => write!(f, "cannot listen: {}", e),
            BootError::Executor(e) => write!(f, "cannot start a shard: {}", e),
        }
    }
}

impl std::error::Error for BootError {}

/// Raises RLIMIT_MEMLOCK as far as allowed; fails if still below `needed`.
/// loadgen uses it too: it runs on glommio as well.
pub fn raise_memlock(needed: u64) -> Result<(), BootError> {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // Root (CAP_SYS_RESOURCE) may lift the hard limit too; others only up to it.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        let to_hard = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &to_hard) };
    }
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if limit.rlim_cur >= needed {
        Ok(())
    } else {
        Err(BootError::Memlock {
            needed,
            have: limit.rlim_cur,
        })
    }
}

/// Starts every shard and blocks until they stop.
pub fn run(config: Config) -> Result<(), BootError> {
    let shard_count = config.shards.max(1);
    raise_memlock(MEMLOCK_PER_SHARD * shard_count as u64)?;
    shutdown::install();
    let (sockets, bound) =
        net::listener::bind_all(&config.listen, shard_count).map_err(BootError::Bind)?;
    let cpus = config.cpus.clone().unwrap_or_else(|| {
        core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect()
    });
    let users = Users::new(config.default_user.clone());
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
        let ready = ready_tx.clone();
        let fds: Vec<i32> = sockets.into_iter().map(OwnedFd::into_raw_fd).collect();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("warren-shard-{}", index))
            .io_memory(IO_MEMORY)
            .spawn(move || async move {
                shard_main(config, users, mesh, fds, ready, shard_count).await;
            })
            .map_err(|e| BootError::Executor(e.to_string()))?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..shard_count {
        if ready_rx.recv().is_err() {
            return Err(BootError::Executor(
                "a shard stopped during start-up".into(),
            ));
        }
    }
    let addresses: Vec<String> = bound.iter().map(|a| a.to_string()).collect();
    info!(
        address = %addresses.join(","),
        shards = shard_count,
        "ready to accept connections"
    );
    for handle in handles {
        if let Err(e) = handle.join() {
            error!(error = %e, "shard stopped with an error");
        }
    }
    Ok(())
}

async fn shard_main(
    config: Arc<Config>,
    users: Users,
    mesh: MeshBuilder<Batch, Full>,
    fds: Vec<i32>,
    ready: crossbeam_channel::Sender<()>,
    shard_count: usize,
) {
    // Joining the mesh waits on wake-ups from the other executors' threads,
    // which glommio 0.9 can miss while parked (RUNTIME-NOTES): a timer keeps
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
        Rc::new(users),
    )));
    let senders = Rc::new(senders);

    for (peer, receiver) in receivers.streams() {
        let state = state.clone();
        let senders = senders.clone();
        glommio::spawn_local(async move {
            let mut batches_since_yield = 0;
            while let Some(batch) = receiver.recv().await {
                debug_assert!(peer != id.index());
                state.borrow_mut().handle_batch(batch);
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

    // The flusher moves outgoing batches into the mesh once per reactor
    // turn, after the tasks that filled them have run.
    {
        let state = state.clone();
        let senders = senders.clone();
        let ready = state.borrow().outbox_ready.clone();
        glommio::spawn_local(async move {
            loop {
                ready.wait().await;
                glommio::executor().yield_task_queue_now().await;
                flush(&state, &senders);
            }
        })
        .detach();
    }

    // Listeners stop on shutdown; the shard ends once its clients are gone.
    let stop_accepting: Vec<Notify> = fds.iter().map(|_| Notify::new()).collect();
    let stopped = Notify::new();

    // The tick: heartbeats, deadlines, mailbox retries, shutdown, and an
    // upper bound on how long the executor can stay parked (RUNTIME-NOTES).
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
                state.borrow_mut().tick(now);
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
        glommio::spawn_local(metadata::run_owner(state.clone())).detach();
    }

    for (fd, stop) in fds.into_iter().zip(stop_accepting) {
        use std::os::fd::FromRawFd;
        // SAFETY: the fd is a listening socket bound for this shard alone.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        let state = state.clone();
        glommio::spawn_local(async move {
            loop {
                let accepted =
                    futures_lite::future::or(async { Some(listener.accept().await) }, async {
                        stop.wait().await;
                        None
                    })
                    .await;
                // Stopping: the listener is dropped, so new clients are refused.
                let Some(accepted) = accepted else {
                    return;
                };
                match accepted {
                    Ok(stream) => {
                        glommio::spawn_local(net::connection::serve(stream, state.clone()))
                            .detach();
                    }
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        glommio::timer::sleep(config::TICK).await;
                    }
                }
            }
        })
        .detach();
    }

    let _ = ready.send(());
    // The spawned tasks do the work until a shutdown has closed the clients.
    stopped.wait().await;
}

/// Sends each peer its outgoing batch. A full mailbox keeps the batch here
/// (never awaiting on a full channel: see RUNTIME-NOTES, glommio #555) and,
/// past a limit, makes the readers stop until it drains.
fn flush(state: &Shared, senders: &Senders<Batch>) {
    let mut state = state.borrow_mut();
    let mut backed_up = false;
    for peer in 0..state.shard_count {
        if state.outbox[peer].is_empty() {
            continue;
        }
        let batch = std::mem::take(&mut state.outbox[peer]);
        match senders.try_send_to(peer, batch) {
            Ok(()) => {}
            Err(GlommioError::WouldBlock(ResourceType::Channel(batch))) => {
                let newer = std::mem::replace(&mut state.outbox[peer], batch);
                state.outbox[peer].extend(newer);
                backed_up |= state.outbox[peer].len() > config::MAILBOX_OVERFLOW_MAX;
            }
            // A peer that already stopped is no error while shutting down.
            Err(_) if shutdown::requested() => {}
            Err(e) => error!(peer, error = %e, "mailbox send failed"),
        }
    }
    state.backpressure = backed_up;
}

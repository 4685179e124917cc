//! One executor (thread) of loadgen: a glommio `LocalExecutor`, optionally pinned,
//! that owns some producer and consumer connections. The main thread steers the run
//! through `Control` (an atomic phase it writes and executors poll on a timer:
//! glommio wakes poorly from foreign threads), and executors report over crossbeam.
//!
//! Executor 0 also declares the exchange, queues and bindings before anything starts,
//! and deletes loadgen-named queues at the end.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use glommio::{LocalExecutorBuilder, Placement};
use warren_protocol::{ExchangeDeclare, FieldTable, Method, QueueBind, QueueDeclare, QueueDelete};

use crate::args::Plan;
use crate::client::{Connection, Signal};
use crate::error::{Error, Result};
use crate::stats::{Event, ExecStats};
use crate::{consumer, producer};

/// I/O memory each executor registers with io_uring; glommio's default (10 MiB) is
/// more than many machines let a process lock, and sockets need little.
const IO_MEMORY: usize = 2 << 20;
/// Locked memory an executor needs: its I/O memory plus the reactor's rings.
pub const MEMLOCK_PER_EXECUTOR: u64 = IO_MEMORY as u64 + (1 << 20);
/// How often executors look at the phase and send statistics to the main thread.
const TICK: Duration = Duration::from_millis(100);
const TICKS_PER_REPORT: u32 = 2;

/// The run's phases, in order; the main thread only ever moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    Setup = 0,
    StartConsumers = 1,
    StartProducers = 2,
    StopProducers = 3,
    StopConsumers = 4,
    Teardown = 5,
    Abort = 6,
}

pub struct Control {
    phase: AtomicU8,
    /// When producers start (ns on the clock.rs origin); rate schedules count from it.
    pub start_ns: AtomicU64,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            phase: AtomicU8::new(Phase::Setup as u8),
            start_ns: AtomicU64::new(0),
        }
    }
}

impl Control {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Setup,
            1 => Phase::StartConsumers,
            2 => Phase::StartProducers,
            3 => Phase::StopProducers,
            4 => Phase::StopConsumers,
            5 => Phase::Teardown,
            _ => Phase::Abort,
        }
    }

    pub fn advance(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
    }
}

/// What the tasks of one executor share.
pub struct ExecCtx {
    pub index: usize,
    pub plan: Arc<Plan>,
    pub control: Arc<Control>,
    pub events: Sender<Event>,
    pub stats: RefCell<ExecStats>,
    /// Fired when consumers should stop; one per consumer connection.
    pub consumer_stops: RefCell<Vec<Rc<Signal>>>,
    finished: Cell<bool>,
}

impl ExecCtx {
    pub fn send(&self, event: Event) {
        // The main thread outlives every executor; a send can only fail if it
        // already gave up, and then nothing is left to tell.
        let _ = self.events.send(event);
    }
}

/// Raises RLIMIT_MEMLOCK as far as allowed, as the broker does (same code);
/// fails with the broker's advice if it stays below `needed`.
pub fn raise_memlock(needed: u64) -> Result<()> {
    crate::socket::raise_memlock(needed).map_err(|e| Error::new(e.to_string()))
}

/// Starts executor `index` on its own thread.
pub fn spawn(
    index: usize,
    plan: Arc<Plan>,
    control: Arc<Control>,
    events: Sender<Event>,
) -> Result<glommio::ExecutorJoinHandle<()>> {
    let placement = match &plan.cpus {
        Some(cpus) => Placement::Fixed(cpus[index]),
        None => Placement::Unbound,
    };
    LocalExecutorBuilder::new(placement)
        .name(&format!("loadgen-{index}"))
        .io_memory(IO_MEMORY)
        .spawn(move || async move {
            let ctx = Rc::new(ExecCtx {
                index,
                plan,
                control,
                events,
                stats: RefCell::new(ExecStats::default()),
                consumer_stops: RefCell::new(Vec::new()),
                finished: Cell::new(false),
            });
            executor_main(ctx).await
        })
        .map_err(|e| Error::new(format!("cannot start executor {index}: {e}")))
}

async fn executor_main(ctx: Rc<ExecCtx>) {
    let ticker = glommio::spawn_local(ticker(ctx.clone()));
    if ctx.index == 0 {
        let result = setup(&ctx.plan).await.map_err(|e| e.to_string());
        ctx.send(Event::SetupDone(result));
    }
    let mut consumers = Vec::new();
    let mut producers = Vec::new();
    if wait_for(&ctx, Phase::StartConsumers).await {
        for (n, conn) in ctx.plan.consumer_conns.iter().enumerate() {
            if conn.executor == ctx.index {
                let stop = Rc::new(Signal::default());
                ctx.consumer_stops.borrow_mut().push(stop.clone());
                consumers.push(glommio::spawn_local(consumer::run(
                    ctx.clone(),
                    n,
                    conn.clone(),
                    stop,
                )));
            }
        }
        if wait_for(&ctx, Phase::StartProducers).await {
            for (n, conn) in ctx.plan.producer_conns.iter().enumerate() {
                if conn.executor == ctx.index {
                    producers.push(glommio::spawn_local(producer::run(
                        ctx.clone(),
                        n,
                        conn.clone(),
                    )));
                }
            }
        }
    }
    for task in producers.into_iter().chain(consumers) {
        if let Err(e) = task.await {
            ctx.send(Event::Error(e.to_string()));
        }
    }
    if ctx.index == 0 && ctx.plan.delete_queues_at_end && wait_for(&ctx, Phase::Teardown).await {
        if let Err(e) = teardown(&ctx.plan).await {
            ctx.send(Event::Error(format!("deleting the run's queue: {e}")));
        }
    }
    ctx.finished.set(true);
    ticker.await;
    let stats = ctx.stats.borrow();
    ctx.send(Event::ExecutorFinal {
        e2e: Box::new(stats.e2e_total.clone()),
        confirm: Box::new(stats.confirm_total.clone()),
    });
}

/// Waits until the main thread reaches `phase`; false if the run was aborted.
pub async fn wait_for(ctx: &ExecCtx, phase: Phase) -> bool {
    loop {
        let now = ctx.control.phase();
        if now == Phase::Abort {
            return false;
        }
        if now >= phase {
            return true;
        }
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}

/// Sends statistics to the main thread every few ticks and passes the stop order on
/// to consumers. The tick also keeps the executor from parking for good (a glommio
/// 0.9 issue, see docs/runtime.md).
async fn ticker(ctx: Rc<ExecCtx>) {
    let mut ticks = 0u32;
    let mut stops_fired = false;
    loop {
        glommio::timer::sleep(TICK).await;
        ticks += 1;
        if !stops_fired && ctx.control.phase() >= Phase::StopConsumers {
            stops_fired = true;
            for stop in ctx.consumer_stops.borrow().iter() {
                stop.notify();
            }
        }
        let finished = ctx.finished.get();
        if ticks.is_multiple_of(TICKS_PER_REPORT) || finished {
            let mut stats = ctx.stats.borrow_mut();
            let e2e = Box::new(stats.e2e_interval.clone());
            let confirm = Box::new(stats.confirm_interval.clone());
            stats.e2e_interval.reset();
            stats.confirm_interval.reset();
            let behind_ns_max = std::mem::take(&mut stats.behind_ns_max);
            ctx.send(Event::Tick {
                executor: ctx.index,
                counters: stats.counters,
                e2e,
                confirm,
                behind_ns_max,
            });
        }
        if finished {
            return;
        }
    }
}

fn queue_durable(plan: &Plan) -> bool {
    plan.args.persistent
}

/// Declares the exchange, the queues and their bindings. Returns notes for the
/// operator (queues that already held messages).
async fn setup(plan: &Plan) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let mut conn = Connection::open(plan.addr, &plan.uri, "loadgen setup").await?;
    conn.open_channel(1).await?;
    let exchange = plan.args.exchange.as_str();
    // With -p (predeclared), what exists already is used as it is, as PerfTest does:
    // probed with a passive declare on channel 2, declared only when missing.
    let exchange_exists = plan.args.predeclared
        && !exchange.is_empty()
        && conn
            .probe(2, exchange_declare(plan, true).into())
            .await?
            .is_some();
    // amq.* exchanges exist already and may not be declared (403 in RabbitMQ).
    if !exchange.is_empty() && !exchange.starts_with("amq.") && !exchange_exists {
        match conn.rpc(1, exchange_declare(plan, false).into()).await? {
            Method::ExchangeDeclareOk(_) => {}
            other => return Err(crate::client::unexpected("exchange.declare-ok", &other)),
        }
    }
    // A queue someone consumes is declared by its consumers, on their own
    // connections, as PerfTest declares it: a broker that places a queue
    // with the connection that declares it (RabbitMQ's client-local, warren's
    // default) then puts it with its consumer. The others are declared here.
    for index in 0..plan.queues.len() {
        let consumed = plan
            .consumer_conns
            .iter()
            .any(|conn| conn.consumers.iter().any(|c| c.queue == index));
        if !consumed {
            notes.extend(declare_queue(&mut conn, plan, index, 1, 2).await?);
        }
    }
    conn.close().await;
    Ok(notes)
}

/// Declares queue `index` of the plan on `channel` (open) and binds it; with -p,
/// probes first with a passive declare on `probe_channel` (not open). Returns a
/// note for the operator when the queue already held messages.
pub async fn declare_queue(
    conn: &mut Connection,
    plan: &Plan,
    index: usize,
    channel: u16,
    probe_channel: u16,
) -> Result<Option<String>> {
    let queue = &plan.queues[index];
    let exchange = plan.args.exchange.as_str();
    let declare = QueueDeclare {
        queue: queue.as_str().into(),
        passive: false,
        durable: queue_durable(plan),
        exclusive: false,
        auto_delete: plan.args.auto_delete,
        nowait: false,
        arguments: FieldTable::new(),
    };
    let existing = if plan.args.predeclared {
        let passive = QueueDeclare {
            passive: true,
            ..declare.clone()
        };
        conn.probe(probe_channel, passive.into()).await?
    } else {
        None
    };
    let reply = match existing {
        Some(reply) => reply,
        None => conn.rpc(channel, declare.into()).await?,
    };
    let note = match reply {
        Method::QueueDeclareOk(ok) if ok.message_count > 0 => Some(format!(
            "queue {queue} already held {} messages; consumers will count them as foreign or duplicates",
            ok.message_count
        )),
        Method::QueueDeclareOk(_) => None,
        other => return Err(crate::client::unexpected("queue.declare-ok", &other)),
    };
    if exchange.is_empty() {
        return Ok(note);
    }
    let keys: Vec<&str> = if plan.binding_keys.is_empty() {
        vec![queue.as_str()]
    } else {
        plan.binding_keys.iter().map(String::as_str).collect()
    };
    for key in keys {
        let bind = QueueBind {
            queue: queue.as_str().into(),
            exchange: exchange.into(),
            routing_key: key.into(),
            nowait: false,
            arguments: FieldTable::new(),
        };
        match conn.rpc(channel, bind.into()).await? {
            Method::QueueBindOk(_) => {}
            other => return Err(crate::client::unexpected("queue.bind-ok", &other)),
        }
    }
    Ok(note)
}

fn exchange_declare(plan: &Plan, passive: bool) -> ExchangeDeclare {
    ExchangeDeclare {
        exchange: plan.args.exchange.as_str().into(),
        kind: plan.args.exchange_type.as_str().into(),
        passive,
        durable: false,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments: FieldTable::new(),
    }
}

/// Deletes the queue loadgen named itself (auto-delete would not remove it if no
/// consumer ever attached).
async fn teardown(plan: &Plan) -> Result<()> {
    let mut conn = Connection::open(plan.addr, &plan.uri, "loadgen teardown").await?;
    conn.open_channel(1).await?;
    for queue in &plan.queues {
        let delete = QueueDelete {
            queue: queue.as_str().into(),
            if_unused: false,
            if_empty: false,
            nowait: false,
        };
        match conn.rpc(1, delete.into()).await? {
            Method::QueueDeleteOk(_) => {}
            other => return Err(crate::client::unexpected("queue.delete-ok", &other)),
        }
    }
    conn.close().await;
    Ok(())
}

//! loadgen: warren's load generator. It speaks AMQP 0-9-1 through warren's own codec
//! (`warren_protocol`), so it can load warren or any RabbitMQ-compatible broker.
//!
//! # Layout
//!
//! - `args`: flags (PerfTest's vocabulary) and the `Plan` they give.
//! - `executor`: one glommio executor per thread; phases; queue set-up and teardown.
//! - `client`: the AMQP handshake and socket primitives on glommio.
//! - `producer`, `consumer`: the hot loops.
//! - `body`: the stamp every body carries; `clock`: the process-wide time origin.
//! - `tracker`: sequence bitmaps for lost, duplicated and out-of-order messages.
//! - `stats`: per-executor counters and histograms, and the events sent to `main`.
//! - `report`: the summary, .hgrm, JSON (serde_json) and HTML.
//!
//! The main thread starts the executors, steps them through the phases (set-up,
//! consumers, producers, stop, drain, teardown), prints progress every second from the
//! statistics they send, and writes the summary. Exit codes: 0 fine, 1 error, 2 the
//! broker confirmed messages that never arrived.

mod args;
mod body;
mod client;
mod clock;
mod consumer;
mod error;
mod executor;
mod producer;
mod report;
mod socket;
mod stats;
mod tracker;
mod uri;

use std::collections::HashMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use hdrhistogram::Histogram;

use args::{Args, Plan};
use error::{Error, Result};
use executor::{Control, Phase};
use report::{PairRow, Sample, Summary};
use stats::{new_histogram, ConsumerResult, Counters, Event, ProducerResult};

fn main() -> ExitCode {
    clock::init();
    let args = Args::parse_from(args::perftest_argv(std::env::args()));
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(1)
        }
    }
}

/// Progress lines go to stderr when stdout carries the JSON summary.
fn progress(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
        let _ = std::io::stdout().flush();
    }
}

/// What the main thread gathers from the executors.
struct Gather {
    rx: Receiver<Event>,
    counters: HashMap<usize, Counters>,
    interval_e2e: Histogram<u64>,
    interval_confirm: Histogram<u64>,
    interval_behind_ns: u64,
    behind_ns_max: u64,
    producers_done: usize,
    consumers_ready: usize,
    producer_results: Vec<ProducerResult>,
    consumer_results: Vec<ConsumerResult>,
    executors_final: usize,
    e2e: Histogram<u64>,
    confirm: Histogram<u64>,
    errors: Vec<String>,
    setup: Option<std::result::Result<Vec<String>, String>>,
}

impl Gather {
    fn totals(&self) -> Counters {
        let mut t = Counters::default();
        for c in self.counters.values() {
            t += *c;
        }
        t
    }

    /// Takes in every event that arrives before `deadline`.
    fn pump_until(&mut self, deadline: Instant) {
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(event) => self.take(event),
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(wait);
                    return;
                }
            }
        }
    }

    fn take(&mut self, event: Event) {
        match event {
            Event::SetupDone(result) => self.setup = Some(result),
            Event::ConsumerReady => self.consumers_ready += 1,
            Event::ProducerDone => self.producers_done += 1,
            Event::Tick {
                executor,
                counters,
                e2e,
                confirm,
                behind_ns_max,
            } => {
                self.counters.insert(executor, counters);
                let _ = self.interval_e2e.add(&*e2e);
                let _ = self.interval_confirm.add(&*confirm);
                self.interval_behind_ns = self.interval_behind_ns.max(behind_ns_max);
                self.behind_ns_max = self.behind_ns_max.max(behind_ns_max);
            }
            Event::ProducerFinal(r) => self.producer_results.push(r),
            Event::ConsumerFinal(r) => self.consumer_results.push(r),
            Event::ExecutorFinal { e2e, confirm } => {
                self.executors_final += 1;
                let _ = self.e2e.add(&*e2e);
                let _ = self.confirm.add(&*confirm);
            }
            Event::Error(e) => self.errors.push(e),
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1_000.0
}

fn run(args: Args) -> Result<ExitCode> {
    let json = args.json;
    let plan = Arc::new(Plan::from_args(args)?);
    client::want_frame_max(plan.args.framemax);
    for note in &plan.notes {
        eprintln!("loadgen: {note}");
    }
    executor::raise_memlock(executor::MEMLOCK_PER_EXECUTOR * plan.threads as u64)?;
    let control = Arc::new(Control::default());
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut handles = Vec::new();
    for index in 0..plan.threads {
        handles.push(executor::spawn(
            index,
            plan.clone(),
            control.clone(),
            tx.clone(),
        )?);
    }
    drop(tx);
    let mut g = Gather {
        rx,
        counters: HashMap::new(),
        interval_e2e: new_histogram(),
        interval_confirm: new_histogram(),
        interval_behind_ns: 0,
        behind_ns_max: 0,
        producers_done: 0,
        consumers_ready: 0,
        producer_results: Vec::new(),
        consumer_results: Vec::new(),
        executors_final: 0,
        e2e: new_histogram(),
        confirm: new_histogram(),
        errors: Vec::new(),
        setup: None,
    };
    let outcome = drive(&plan, &control, &mut g, json);
    if outcome.is_err() || !g.errors.is_empty() {
        control.advance(Phase::Abort);
    }
    // Executors finish on their own once the phase says so; give them a bounded time.
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.executors_final < plan.threads && Instant::now() < deadline {
        g.pump_until(Instant::now() + Duration::from_millis(50));
    }
    if g.executors_final == plan.threads {
        for handle in handles {
            let _ = handle.join();
        }
    }
    let timing = outcome?;
    if !g.errors.is_empty() {
        return Err(Error::new(g.errors.join("; ")));
    }
    let summary = summarize(&plan, &mut g, timing);
    if json {
        println!("{}", summary.to_json());
    } else {
        print!("{}", summary.to_text());
    }
    if let Some(dir) = &plan.args.report {
        report::write_report(dir, &summary).map_err(|e| {
            Error::new(format!("cannot write the report to {}: {e}", dir.display()))
        })?;
        eprintln!("loadgen: report written to {}", dir.display());
    }
    if summary.lost_confirmed > 0 {
        eprintln!(
            "loadgen: {} messages the broker confirmed never arrived",
            summary.lost_confirmed
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// Timeline and timings the progress loop collects.
struct Timing {
    start: Instant,
    producing_end: Option<Instant>,
    last_receive_change: Instant,
    timeline: Vec<Sample>,
    /// The drain timeout ended the run while messages were still arriving.
    drain_cut_short: bool,
}

fn drive(plan: &Plan, control: &Control, g: &mut Gather, json: bool) -> Result<Timing> {
    // 1. Set-up on executor 0.
    let deadline = Instant::now() + Duration::from_secs(60);
    while g.setup.is_none() && g.errors.is_empty() {
        if Instant::now() >= deadline {
            return Err(Error::new("set-up did not finish within 60 s"));
        }
        g.pump_until(Instant::now() + Duration::from_millis(20));
    }
    match g.setup.take() {
        Some(Ok(notes)) => {
            for note in notes {
                eprintln!("loadgen: {note}");
            }
        }
        Some(Err(e)) => return Err(Error::new(format!("set-up failed: {e}"))),
        None => return Err(Error::new(g.errors.join("; "))),
    }
    // 2. Consumers, until every one has its consume-ok.
    control.advance(Phase::StartConsumers);
    let consumers = plan.consumer_count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while g.consumers_ready < consumers {
        if !g.errors.is_empty() {
            return Err(Error::new(g.errors.join("; ")));
        }
        if Instant::now() >= deadline {
            return Err(Error::new(format!(
                "only {} of {consumers} consumers started within 60 s",
                g.consumers_ready
            )));
        }
        g.pump_until(Instant::now() + Duration::from_millis(20));
    }
    // 3. Producers. A little head start lets every executor see the start time first.
    let start_ns = clock::now_ns() + 5_000_000;
    control.start_ns.store(start_ns, Ordering::Release);
    control.advance(Phase::StartProducers);
    let start = clock::instant_at(start_ns);
    let producers = plan.producer_count();
    // ProducerDone comes once per producer connection: its task publishes for all of the
    // connection's channels (-X).
    let producer_conns = plan.producer_conns.len();
    let run_for = plan.args.time.map(Duration::from_secs_f64);
    let mut timing = Timing {
        start,
        producing_end: None,
        last_receive_change: start,
        timeline: Vec::new(),
        drain_cut_short: false,
    };
    let mut last = Counters::default();
    let mut last_print = start;
    let mut second = 1u32;
    let mut last_received = 0u64;
    let drain_timeout = Duration::from_secs_f64(plan.args.drain_timeout.max(0.0));
    let mut drain_started: Option<Instant> = None;
    loop {
        let next_print = start + Duration::from_secs(second as u64);
        let mut wake = next_print;
        if let Some(limit) = run_for {
            wake = wake.min(start + limit);
        }
        g.pump_until(wake.min(Instant::now() + Duration::from_millis(50)));
        if !g.errors.is_empty() {
            return Err(Error::new(g.errors.join("; ")));
        }
        let now = Instant::now();
        let totals = g.totals();
        if totals.received != last_received {
            last_received = totals.received;
            timing.last_receive_change = now;
        }
        if now >= next_print {
            let elapsed = now.duration_since(last_print).as_secs_f64().max(1e-3);
            let sample = Sample {
                t_s: now.duration_since(start).as_secs_f64(),
                sent_rate: (totals.published - last.published) as f64 / elapsed,
                confirmed_rate: (totals.confirmed - last.confirmed) as f64 / elapsed,
                returned_rate: (totals.returned - last.returned) as f64 / elapsed,
                received_rate: (totals.received - last.received) as f64 / elapsed,
                p50_ms: (!g.interval_e2e.is_empty())
                    .then(|| ms(g.interval_e2e.value_at_quantile(0.5))),
                p99_ms: (!g.interval_e2e.is_empty())
                    .then(|| ms(g.interval_e2e.value_at_quantile(0.99))),
            };
            let mut line = format!(
                "time {:>6.1}s  sent {:>9.0} msg/s  confirmed {:>9.0} msg/s  returned {:>6.0} msg/s  received {:>9.0} msg/s",
                sample.t_s, sample.sent_rate, sample.confirmed_rate, sample.returned_rate, sample.received_rate
            );
            match (sample.p50_ms, sample.p99_ms) {
                (Some(p50), Some(p99)) => {
                    line += &format!("  latency p50 {p50:.3} ms p99 {p99:.3} ms")
                }
                _ => line += "  latency -",
            }
            if !g.interval_confirm.is_empty() {
                line += &format!(
                    "  confirm p99 {:.3} ms",
                    ms(g.interval_confirm.value_at_quantile(0.99))
                );
            }
            if plan.args.rate > 0.0 && g.interval_behind_ns > 10_000_000 {
                line += &format!(
                    "  BEHIND SCHEDULE by up to {:.0} ms",
                    g.interval_behind_ns as f64 / 1e6
                );
            }
            progress(json, &line);
            timing.timeline.push(sample);
            g.interval_e2e.reset();
            g.interval_confirm.reset();
            g.interval_behind_ns = 0;
            last = totals;
            last_print = now;
            second += 1;
        }
        // Has producing ended (all done, or time up)?
        if timing.producing_end.is_none() {
            let time_up = run_for.is_some_and(|limit| now >= start + limit);
            let consumed_all = producers == 0
                && plan
                    .args
                    .cmessages
                    .is_some_and(|n| totals.received >= n.saturating_mul(consumers as u64));
            if time_up || consumed_all || (producers > 0 && g.producers_done >= producer_conns) {
                control.advance(Phase::StopProducers);
                timing.producing_end = Some(now);
                drain_started = Some(now);
            } else if producers == 0 && run_for.is_none() && plan.args.cmessages.is_none() {
                return Err(Error::new(
                    "no producers and no -z or -D: nothing ends the run",
                ));
            }
            continue;
        }
        // Draining: wait for producers' final accounts (their confirms), then until
        // consumers have everything that was sent, nothing arrives for a second, or the
        // drain timeout passes.
        let drained_for = now.duration_since(drain_started.unwrap_or(now));
        let producers_final = g.producer_results.len() >= producers;
        let expected = totals
            .published
            .saturating_sub(totals.returned + totals.nacked);
        let all_in = consumers == 0 || totals.received >= expected;
        let idle = now.duration_since(timing.last_receive_change) >= Duration::from_secs(1);
        if producers_final && (all_in || idle) {
            break;
        }
        if drained_for >= drain_timeout * 2 {
            timing.drain_cut_short = !idle && !all_in;
            break;
        }
    }
    control.advance(Phase::StopConsumers);
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.consumer_results.len() < plan.consumer_conns.len() && Instant::now() < deadline {
        g.pump_until(Instant::now() + Duration::from_millis(20));
    }
    control.advance(Phase::Teardown);
    Ok(timing)
}

fn summarize(plan: &Plan, g: &mut Gather, timing: Timing) -> Summary {
    let end = timing.producing_end.unwrap_or_else(Instant::now);
    let producing_s = end.duration_since(timing.start).as_secs_f64();
    // Consumers are timed to the last second in which anything arrived.
    let consuming_s = timing
        .last_receive_change
        .duration_since(timing.start)
        .as_secs_f64();
    let timeline = timing.timeline;
    let timing_cut_short = timing.drain_cut_short;
    let totals = g.totals();
    // Sequence records of every consumer, by (producer, queue).
    let mut by_pair: HashMap<(u32, usize), Vec<&tracker::SeqBits>> = HashMap::new();
    let mut foreign = 0u64;
    for c in &g.consumer_results {
        foreign += c.foreign;
        for (producer, queue, bits) in &c.records {
            by_pair.entry((*producer, *queue)).or_default().push(bits);
        }
    }
    let mut pairs = Vec::new();
    let (mut lost, mut lost_confirmed, mut duplicated, mut out_of_order) = (0, 0, 0, 0);
    let mut unconfirmed = 0u64;
    let mut due_unsent = 0u64;
    g.producer_results.sort_by_key(|p| p.id);
    let consumed_queues: Vec<bool> = (0..plan.queues.len())
        .map(|q| {
            plan.consumer_conns
                .iter()
                .any(|c| c.consumers.iter().any(|k| k.queue == q))
        })
        .collect();
    for p in &g.producer_results {
        unconfirmed += p.unconfirmed.len() as u64;
        due_unsent += p.due_unsent;
        let mut queues: Vec<usize> = by_pair
            .keys()
            .filter(|(id, _)| *id == p.id)
            .map(|(_, q)| *q)
            .collect();
        if let Some(q) = p.expected_queue {
            if !queues.contains(&q) {
                queues.push(q);
            }
        }
        queues.retain(|&q| consumed_queues[q]);
        queues.sort_unstable();
        for q in queues {
            let parts = by_pair.get(&(p.id, q)).cloned().unwrap_or_default();
            let (merged, seen) = tracker::merge(&parts, p.sent);
            // Missing messages the broker did not vouch for are lost but not
            // "confirmed lost": nacked, returned, or never confirmed.
            let excused = p
                .nacked
                .iter()
                .chain(&p.returned)
                .chain(&p.unconfirmed)
                .filter(|&&s| s < p.sent && !seen(s))
                .count() as u64;
            let pair_lost_confirmed = if plan.args.confirm.is_some_and(|c| c > 0) {
                merged.missing.saturating_sub(excused)
            } else {
                0
            };
            let returned_missing = p
                .returned
                .iter()
                .filter(|&&s| s < p.sent && !seen(s))
                .count() as u64;
            let pair_lost = merged.missing.saturating_sub(returned_missing);
            lost += pair_lost;
            lost_confirmed += pair_lost_confirmed;
            duplicated += merged.duplicates;
            out_of_order += merged.out_of_order;
            foreign += merged.foreign;
            pairs.push(PairRow {
                producer: p.id,
                queue: plan.queues[q].clone(),
                sent: p.sent,
                received: merged.received,
                lost: pair_lost,
                lost_confirmed: pair_lost_confirmed,
                duplicated: merged.duplicates,
                out_of_order: merged.out_of_order,
            });
        }
    }
    let mut notes = plan.notes.clone();
    if timing_cut_short {
        notes.push(format!(
            "consumers were still receiving when the drain timeout ended the run: the lost counts include a backlog \
             still queued in the broker (raise --drain-timeout, now {} s, to wait for it)",
            plan.args.drain_timeout
        ));
    }
    if plan.consumer_count() > plan.queues.len() {
        notes.push(
            "several consumers share a queue: order is counted per (producer, queue, consumer connection)"
                .to_string(),
        );
    }
    if plan.producer_count() > 0
        && plan.args.exchange_type != "direct"
        && plan.args.routing_key.is_empty()
    {
        notes.push(
            "loss is checked on the queues that received at least one message of a producer"
                .to_string(),
        );
    }
    Summary {
        id: plan.args.id.clone(),
        uri: plan.uri.display_safe(),
        producers: plan.producer_count(),
        consumers: plan.consumer_count(),
        queues: plan.queues.clone(),
        body_size: plan.body_size,
        rate_per_producer: plan.args.rate,
        confirm_max: plan.args.confirm.filter(|&c| c > 0),
        producing_s,
        consuming_s,
        totals,
        unconfirmed,
        lost,
        lost_confirmed,
        duplicated,
        out_of_order,
        foreign,
        due_unsent,
        behind_ms_max: g.behind_ns_max as f64 / 1e6,
        e2e: std::mem::replace(&mut g.e2e, new_histogram()),
        confirm: std::mem::replace(&mut g.confirm, new_histogram()),
        pairs,
        timeline,
        notes,
    }
}

//! Producer connections. Each channel of the connection is one producer with its own
//! id and sequence; one writer task builds publishes for all of them into one reused
//! buffer and writes it in one go, and one reader task takes confirms and returns.
//!
//! Rate-limited producers publish on a schedule: message n is due at
//! `start + n / rate`, and that intended time, not the time the writer got to it, is
//! what goes into the body and what latency is counted from. A producer that falls
//! behind (a full confirm window, a slow socket) thus shows the delay in its latency
//! instead of hiding it (coordinated omission), and the lag is reported.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_lite::future;
use warren_protocol::{
    parse_frame, write_body, write_content_header, write_method, BasicProperties, BasicPublish,
    ConfirmSelect, Frame, Method,
};

use crate::args::{ProducerConn, ProducerPlan};
use crate::body::{read_stamp, write_stamp, Stamp};
use crate::client::{close_error, read_some, unexpected, write_all, Connection, Signal};
use crate::clock;
use crate::error::{Error, Result};
use crate::executor::{ExecCtx, Phase};
use crate::stats::{Event, ProducerResult};

/// A write carries at most this many bytes of publishes.
const BATCH_BYTES_MAX: usize = 128 * 1024;
/// Marks a confirm-window slot whose message is settled (acked or nacked).
const SETTLED: u64 = u64::MAX;

struct Producer {
    plan: ProducerPlan,
    /// Method frame + content header frame, pre-encoded, one per routing key.
    templates: Vec<Vec<u8>>,
    key_index: usize,
    next_sequence: u64,
    done: bool,
    /// Intended send time of each unsettled message, at `sequence % window.len()`.
    window: Vec<u64>,
    /// The lowest sequence not yet settled.
    floor: u64,
    confirmed: u64,
    nacked: Vec<u64>,
    returned: Vec<u64>,
    behind_ns_max: u64,
    /// A basic.return's content is arriving: bytes left, and whether the stamp was read.
    return_left: Option<(u64, bool)>,
}

impl Producer {
    fn in_flight(&self) -> u64 {
        self.next_sequence - self.floor
    }

    /// Settles one sequence number; returns its intended time if it was in flight.
    fn settle(&mut self, sequence: u64) -> Option<u64> {
        if sequence < self.floor || sequence >= self.next_sequence {
            return None;
        }
        let slot = (sequence % self.window.len() as u64) as usize;
        let intended = std::mem::replace(&mut self.window[slot], SETTLED);
        (intended != SETTLED).then_some(intended)
    }

    fn advance_floor(&mut self) {
        while self.floor < self.next_sequence
            && self.window[(self.floor % self.window.len() as u64) as usize] == SETTLED
        {
            self.floor += 1;
        }
    }
}

struct Shared {
    producers: Vec<Producer>,
    error: Option<Error>,
    closed: bool,
}

/// Intended send time of message `sequence` of a producer publishing at `rate`.
fn scheduled_ns(start_ns: u64, rate: f64, sequence: u64) -> u64 {
    start_ns + (sequence as f64 * 1e9 / rate) as u64
}

pub async fn run(ctx: Rc<ExecCtx>, index: usize, plan: ProducerConn) -> Result<()> {
    let args = &ctx.plan.args;
    let mut conn = Connection::open_on_shard(
        ctx.plan.addr,
        &ctx.plan.uri,
        &format!("loadgen producer {index}"),
        args.producer_shard,
    )
    .await?;
    let confirm_max = args.confirm.filter(|&c| c > 0);
    let properties = BasicProperties {
        delivery_mode: args.persistent.then_some(2),
        ..Default::default()
    }
    .encode();
    let mut producers = Vec::new();
    for p in &plan.producers {
        if p.channel > conn.channel_max {
            return Err(Error::new(format!(
                "the broker allows {} channels per connection",
                conn.channel_max
            )));
        }
        conn.open_channel(p.channel).await?;
        if confirm_max.is_some() {
            match conn
                .rpc(p.channel, ConfirmSelect { nowait: false }.into())
                .await?
            {
                Method::ConfirmSelectOk(_) => {}
                other => return Err(unexpected("confirm.select-ok", &other)),
            }
        }
        let templates = p
            .routing_keys
            .iter()
            .map(|key| {
                let mut buf = BytesMut::new();
                let publish = BasicPublish {
                    exchange: args.exchange.as_str().into(),
                    routing_key: key.as_str().into(),
                    mandatory: args.mandatory,
                    immediate: false,
                };
                write_method(&mut buf, p.channel, &publish.into());
                write_content_header(
                    &mut buf,
                    p.channel,
                    60,
                    ctx.plan.body_size as u64,
                    &properties,
                );
                buf.to_vec()
            })
            .collect();
        producers.push(Producer {
            plan: p.clone(),
            templates,
            key_index: 0,
            next_sequence: 0,
            done: false,
            window: vec![SETTLED; confirm_max.unwrap_or(1) as usize],
            floor: 0,
            confirmed: 0,
            nacked: Vec::new(),
            returned: Vec::new(),
            behind_ns_max: 0,
            return_left: None,
        });
    }
    let shared = Rc::new(RefCell::new(Shared {
        producers,
        error: None,
        closed: false,
    }));
    let signal = Rc::new(Signal::default());
    let read_buf = std::mem::take(&mut conn.read_buf);
    let reader = glommio::spawn_local(read_loop(
        ctx.clone(),
        conn.stream.clone(),
        read_buf,
        conn.frame_max,
        shared.clone(),
        signal.clone(),
    ));
    let written = write_loop(&ctx, &mut conn, &shared, &signal, confirm_max).await;

    // Wait for the last confirms, then close; the reader ends on close-ok.
    if written.is_ok() && confirm_max.is_some() {
        let deadline = clock::now_ns() + (args.drain_timeout * 1e9) as u64;
        loop {
            {
                let s = shared.borrow();
                if s.error.is_some() || s.producers.iter().all(|p| p.in_flight() == 0) {
                    break;
                }
            }
            if clock::now_ns() >= deadline || ctx.control.phase() == Phase::Abort {
                break;
            }
            future::or(
                signal.wait(),
                glommio::timer::sleep(Duration::from_millis(50)),
            )
            .await;
        }
    }
    let reader_done = shared.borrow().closed;
    if !reader_done {
        let close = warren_protocol::ConnectionClose {
            reply_code: 200,
            reply_text: "loadgen done".into(),
            class_id: 0,
            method_id: 0,
        };
        let _ = conn.send(0, &close.into()).await;
        let _ = future::or(reader, async {
            glommio::timer::sleep(Duration::from_secs(2)).await;
        })
        .await;
    }
    let end_ns = clock::now_ns();
    let start_ns = ctx
        .control
        .start_ns
        .load(std::sync::atomic::Ordering::Acquire);
    let mut s = shared.borrow_mut();
    let error = s.error.take();
    for p in s.producers.drain(..) {
        let due_unsent = if args.rate > 0.0 && !p.done {
            let due = ((end_ns.saturating_sub(start_ns)) as f64 * args.rate / 1e9) as u64;
            let due = match args.pmessages {
                Some(limit) => due.min(limit),
                None => due,
            };
            due.saturating_sub(p.next_sequence)
        } else {
            0
        };
        let unconfirmed = if confirm_max.is_some() {
            (p.floor..p.next_sequence)
                .filter(|&s| p.window[(s % p.window.len() as u64) as usize] != SETTLED)
                .collect()
        } else {
            Vec::new()
        };
        ctx.send(Event::ProducerFinal(ProducerResult {
            id: p.plan.id,
            sent: p.next_sequence,
            nacked: p.nacked,
            returned: p.returned,
            unconfirmed,
            expected_queue: p.plan.expected_queue,
            due_unsent,
        }));
    }
    written?;
    match error {
        Some(e) if ctx.control.phase() < Phase::StopConsumers => Err(e),
        _ => Ok(()),
    }
}

async fn write_loop(
    ctx: &ExecCtx,
    conn: &mut Connection,
    shared: &RefCell<Shared>,
    signal: &Signal,
    confirm_max: Option<u32>,
) -> Result<()> {
    let args = &ctx.plan.args;
    let rate = args.rate;
    let limit = args.pmessages;
    let start_ns = ctx
        .control
        .start_ns
        .load(std::sync::atomic::Ordering::Acquire);
    let frame_max = conn.frame_max;
    let mut body = vec![0u8; ctx.plan.body_size];
    let mut out = BytesMut::with_capacity(BATCH_BYTES_MAX * 2);
    loop {
        if ctx.control.phase() >= Phase::StopProducers {
            break;
        }
        let now = clock::now_ns();
        let mut count = 0u64;
        let mut all_done = true;
        // The earliest time a producer that is waiting on its schedule (not on
        // confirms) has something due.
        let mut next_due = u64::MAX;
        {
            let mut s = shared.borrow_mut();
            if let Some(e) = s.error.clone() {
                return Err(e);
            }
            for p in s.producers.iter_mut() {
                if p.done {
                    continue;
                }
                all_done = false;
                loop {
                    if let Some(limit) = limit {
                        if p.next_sequence >= limit {
                            p.done = true;
                            break;
                        }
                    }
                    if out.len() >= BATCH_BYTES_MAX {
                        break;
                    }
                    if let Some(max) = confirm_max {
                        if p.in_flight() >= u64::from(max) {
                            break;
                        }
                    }
                    let intended = if rate > 0.0 {
                        let due = scheduled_ns(start_ns, rate, p.next_sequence);
                        if due > now {
                            next_due = next_due.min(due);
                            break;
                        }
                        p.behind_ns_max = p.behind_ns_max.max(now - due);
                        due
                    } else {
                        now
                    };
                    let sequence = p.next_sequence;
                    write_stamp(
                        &mut body,
                        Stamp {
                            producer_id: p.plan.id,
                            sequence,
                            intended_ns: intended,
                            compact: false,
                        },
                    );
                    out.put_slice(&p.templates[p.key_index]);
                    write_body(&mut out, p.plan.channel, &body, frame_max);
                    p.key_index = (p.key_index + 1) % p.templates.len();
                    if confirm_max.is_some() {
                        let slot = (sequence % p.window.len() as u64) as usize;
                        p.window[slot] = intended;
                    }
                    p.next_sequence += 1;
                    count += 1;
                }
            }
            if rate > 0.0 {
                let behind = s
                    .producers
                    .iter()
                    .map(|p| p.behind_ns_max)
                    .max()
                    .unwrap_or(0);
                let mut stats = ctx.stats.borrow_mut();
                stats.behind_ns_max = stats.behind_ns_max.max(behind);
            }
        }
        if count > 0 {
            ctx.stats.borrow_mut().counters.published += count;
            write_all(&conn.stream, &out).await?;
            out.clear();
            glommio::yield_if_needed().await;
            continue;
        }
        if all_done {
            // The main thread only needs to know publishing is over; the confirms
            // still in flight are waited for by the caller.
            break;
        }
        // Nothing to send: wait for the schedule, for confirms, or for a stop, and
        // look at the phase at least every 50 ms.
        let wait_ns = if next_due == u64::MAX {
            50_000_000
        } else {
            next_due.saturating_sub(clock::now_ns()).min(50_000_000)
        };
        if wait_ns > 0 {
            future::or(
                signal.wait(),
                glommio::timer::sleep(Duration::from_nanos(wait_ns)),
            )
            .await;
        }
    }
    ctx.send(Event::ProducerDone);
    Ok(())
}

async fn read_loop(
    ctx: Rc<ExecCtx>,
    stream: crate::client::Stream,
    mut buf: BytesMut,
    frame_max: u32,
    shared: Rc<RefCell<Shared>>,
    signal: Rc<Signal>,
) {
    let result = read_frames(&ctx, &stream, &mut buf, frame_max, &shared, &signal).await;
    let mut s = shared.borrow_mut();
    s.closed = true;
    if let Err(e) = result {
        s.error = Some(e);
    }
    drop(s);
    signal.notify();
}

async fn read_frames(
    ctx: &ExecCtx,
    stream: &crate::client::Stream,
    buf: &mut BytesMut,
    frame_max: u32,
    shared: &RefCell<Shared>,
    signal: &Signal,
) -> Result<()> {
    loop {
        if read_some(stream, buf).await? == 0 {
            return Err(Error::new("the broker closed a producer's socket"));
        }
        let now = clock::now_ns();
        let mut s = shared.borrow_mut();
        let mut stats = ctx.stats.borrow_mut();
        let mut progressed = false;
        while let Some(frame) = parse_frame(buf, frame_max)? {
            let channel = frame.channel();
            let producer = channel
                .checked_sub(1)
                .and_then(|i| s.producers.get_mut(i as usize));
            match (frame, producer) {
                (
                    Frame::Method {
                        method: Method::BasicAck(ack),
                        ..
                    },
                    Some(p),
                ) => {
                    // Tags are sequence + 1; a tag beyond what was sent is ignored.
                    let last = ack
                        .delivery_tag
                        .saturating_sub(1)
                        .min(p.next_sequence.saturating_sub(1));
                    let first = if ack.multiple { p.floor } else { last };
                    for sequence in first..=last {
                        if let Some(intended) = p.settle(sequence) {
                            p.confirmed += 1;
                            stats.counters.confirmed += 1;
                            stats.record_confirm(now.saturating_sub(intended));
                        }
                    }
                    p.advance_floor();
                    progressed = true;
                }
                (
                    Frame::Method {
                        method: Method::BasicNack(nack),
                        ..
                    },
                    Some(p),
                ) => {
                    let last = nack
                        .delivery_tag
                        .saturating_sub(1)
                        .min(p.next_sequence.saturating_sub(1));
                    let first = if nack.multiple { p.floor } else { last };
                    for sequence in first..=last {
                        if p.settle(sequence).is_some() {
                            p.nacked.push(sequence);
                            stats.counters.nacked += 1;
                        }
                    }
                    p.advance_floor();
                    progressed = true;
                }
                (
                    Frame::Method {
                        method: Method::BasicReturn(_),
                        ..
                    },
                    Some(p),
                ) => p.return_left = Some((u64::MAX, false)),
                (Frame::Header { header, .. }, Some(p)) if p.return_left.is_some() => {
                    p.return_left = (header.body_size > 0).then_some((header.body_size, false));
                }
                (Frame::Body { payload, .. }, Some(p)) => {
                    if let Some((left, stamped)) = p.return_left {
                        if !stamped {
                            if let Some(stamp) = read_stamp(&payload, clock::now_ns()) {
                                p.returned.push(stamp.sequence_near(p.next_sequence));
                                stats.counters.returned += 1;
                            }
                        }
                        let left = left.saturating_sub(payload.len() as u64);
                        p.return_left = (left > 0).then_some((left, true));
                    }
                }
                (
                    Frame::Method {
                        method: Method::ConnectionCloseOk(_),
                        ..
                    },
                    _,
                ) => return Ok(()),
                (
                    Frame::Method {
                        method: method @ (Method::ConnectionClose(_) | Method::ChannelClose(_)),
                        ..
                    },
                    _,
                ) => {
                    return Err(close_error(&method).unwrap_or_else(|| Error::new("closed")));
                }
                (
                    Frame::Method {
                        method: Method::ConnectionBlocked(_),
                        ..
                    },
                    _,
                ) => {
                    eprintln!("loadgen: the broker blocked a producer connection (resource alarm)");
                }
                _ => {}
            }
        }
        drop(stats);
        drop(s);
        if progressed {
            signal.notify();
        }
    }
}

//! Consumer connections: each channel consumes one queue. One task per connection
//! reads everything the socket has, parses every complete frame in place (bodies are
//! zero-copy slices of the read buffer), records latency and sequence numbers, and
//! writes the acks the batch produced in one write.
//!
//! End-to-end latency = time the read returned − intended send time in the body; both
//! are on the process-wide clock (clock.rs).

use std::rc::Rc;

use bytes::{Buf, BytesMut};
use futures_lite::future;
use warren_protocol::{
    parse_frame, peek_deliver, write_method, BasicAck, BasicConsume, BasicQos, FieldTable, Frame,
    Method,
};

use crate::args::ConsumerConn;
use crate::body::read_stamp;
use crate::client::{close_error, read_some, unexpected, write_all, Connection, Signal};
use crate::clock;
use crate::error::{Error, Result};
use crate::executor::ExecCtx;
use crate::stats::{ConsumerResult, Event, ExecStats};
use crate::tracker::SeqBits;

/// Per-channel delivery state.
#[derive(Default)]
struct ChannelState {
    queue: usize,
    delivery_tag: u64,
    /// Body bytes still to come for the current delivery; None between deliveries.
    body_left: Option<u64>,
    stamp_read: bool,
    unacked: u32,
    last_unacked_tag: u64,
}

pub async fn run(
    ctx: Rc<ExecCtx>,
    index: usize,
    plan: ConsumerConn,
    stop: Rc<Signal>,
) -> Result<()> {
    let args = &ctx.plan.args;
    let mut conn = Connection::open_on_shard(
        ctx.plan.addr,
        &ctx.plan.uri,
        &format!("loadgen consumer {index}"),
        args.consumer_shard,
    )
    .await?;
    let mut channels: Vec<ChannelState> = Vec::new();
    // A channel number no consumer uses, for -p's passive declares (which
    // the broker may answer by closing the channel).
    let probe_channel = plan.consumers.iter().map(|c| c.channel).max().unwrap_or(0) + 1;
    for c in &plan.consumers {
        conn.open_channel(c.channel).await?;
        // The consumer declares its queue, as PerfTest's consumers do (see
        // executor::setup).
        if let Some(note) =
            crate::executor::declare_queue(&mut conn, &ctx.plan, c.queue, c.channel, probe_channel)
                .await?
        {
            eprintln!("loadgen: {note}");
        }
        if args.qos > 0 {
            let qos = BasicQos {
                prefetch_size: 0,
                prefetch_count: args.qos,
                global: false,
            };
            match conn.rpc(c.channel, qos.into()).await? {
                Method::BasicQosOk(_) => {}
                other => return Err(unexpected("basic.qos-ok", &other)),
            }
        }
        let consume = BasicConsume {
            queue: ctx.plan.queues[c.queue].as_str().into(),
            consumer_tag: format!("loadgen-{index}-{}", c.channel).into(),
            no_local: false,
            no_ack: args.autoack,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::new(),
        };
        match conn.rpc(c.channel, consume.into()).await? {
            Method::BasicConsumeOk(_) => {}
            other => return Err(unexpected("basic.consume-ok", &other)),
        }
        channels.push(ChannelState {
            queue: c.queue,
            ..Default::default()
        });
        ctx.send(Event::ConsumerReady);
    }

    let producer_count = ctx.plan.producer_count();
    let queue_count = ctx.plan.queues.len();
    let mut records: Vec<Option<SeqBits>> = vec![None; producer_count * queue_count];
    let mut foreign = 0u64;
    let mut out = BytesMut::with_capacity(16 * 1024);
    let result = consume_loop(
        &ctx,
        &mut conn,
        &stop,
        &mut channels,
        &mut records,
        &mut foreign,
        &mut out,
    )
    .await;
    // Ack what is still unacked, so the broker does not redeliver it to anyone.
    if result.is_ok() && !args.autoack {
        out.clear();
        for (i, ch) in channels.iter_mut().enumerate() {
            if ch.unacked > 0 {
                let ack = BasicAck {
                    delivery_tag: ch.last_unacked_tag,
                    multiple: true,
                };
                write_method(&mut out, i as u16 + 1, &ack.into());
                ch.unacked = 0;
            }
        }
        if !out.is_empty() {
            let _ = write_all(&conn.stream, &out).await;
        }
    }
    if result.is_ok() {
        conn.close().await;
    }
    let records = records
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| r.map(|bits| ((i / queue_count) as u32, i % queue_count, bits)))
        .collect();
    ctx.send(Event::ConsumerFinal(ConsumerResult { records, foreign }));
    result
}

async fn consume_loop(
    ctx: &ExecCtx,
    conn: &mut Connection,
    stop: &Signal,
    channels: &mut [ChannelState],
    records: &mut [Option<SeqBits>],
    foreign: &mut u64,
    out: &mut BytesMut,
) -> Result<()> {
    let autoack = ctx.plan.args.autoack;
    let multi_ack_every = ctx.plan.multi_ack_every;
    let queue_count = ctx.plan.queues.len();
    let producer_count = ctx.plan.producer_count();
    let frame_max = conn.frame_max;
    let stream = conn.stream.clone();
    // Deliveries may already wait, held or buffered, from the set-up calls:
    // the broker sends a backlog's first deliveries right after consume-ok,
    // and then waits for acks.
    let mut waiting = !conn.held.is_empty() || !conn.read_buf.is_empty();
    loop {
        if !std::mem::take(&mut waiting) {
            let read = future::or(
                async { Some(read_some(&stream, &mut conn.read_buf).await) },
                async {
                    stop.wait().await;
                    None
                },
            )
            .await;
            match read {
                None => return Ok(()),
                Some(Ok(0)) => return Err(Error::new("the broker closed a consumer's socket")),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(_)) => {}
            }
        }
        let now = clock::now_ns();
        {
            let mut stats = ctx.stats.borrow_mut();
            let mut seen = Seen {
                now,
                producer_count,
                queue_count,
                records: &mut *records,
                foreign: &mut *foreign,
            };
            loop {
                // The usual case, a whole delivery in the buffer, is read in
                // place: loadgen must never be what limits the broker.
                if conn.held.is_empty() {
                    if let Some(d) = peek_deliver(&conn.read_buf, frame_max) {
                        if let Some(ch) = channel_of(channels, d.channel) {
                            ch.delivery_tag = d.delivery_tag;
                            if d.redelivered {
                                stats.counters.redelivered += 1;
                            }
                            seen.stamp(&conn.read_buf[d.body.clone()], ch.queue, &mut stats);
                            conn.read_buf.advance(d.len);
                            ch.body_left = None;
                            settled(ch, d.channel, autoack, multi_ack_every, out, &mut stats);
                            continue;
                        }
                    }
                }
                let Some(frame) = (match conn.held.pop_front() {
                    Some(frame) => Some(frame),
                    None => parse_frame(&mut conn.read_buf, frame_max)?,
                }) else {
                    break;
                };
                let channel = frame.channel();
                let Some(ch) = channel_of(channels, channel) else {
                    if let Frame::Method { method, .. } = &frame {
                        if let Some(e) = close_error(method) {
                            return Err(e);
                        }
                    }
                    continue;
                };
                let complete = match frame {
                    Frame::Method {
                        method: Method::BasicDeliver(deliver),
                        ..
                    } => {
                        ch.delivery_tag = deliver.delivery_tag;
                        ch.body_left = None;
                        ch.stamp_read = false;
                        if deliver.redelivered {
                            stats.counters.redelivered += 1;
                        }
                        false
                    }
                    Frame::Header { header, .. } => {
                        ch.body_left = Some(header.body_size);
                        header.body_size == 0
                    }
                    Frame::Body { payload, .. } => {
                        if !ch.stamp_read {
                            ch.stamp_read = true;
                            seen.stamp(&payload, ch.queue, &mut stats);
                        }
                        let left = ch.body_left.unwrap_or(0);
                        let left = left.saturating_sub(payload.len() as u64);
                        ch.body_left = Some(left);
                        left == 0
                    }
                    Frame::Method { method, .. } => {
                        if let Some(e) = close_error(&method) {
                            return Err(e);
                        }
                        if let Method::BasicCancel(_) = method {
                            return Err(Error::new(
                                "the broker cancelled a consumer (queue deleted?)",
                            ));
                        }
                        false
                    }
                    Frame::Heartbeat { .. } => false,
                };
                if complete {
                    ch.body_left = None;
                    settled(ch, channel, autoack, multi_ack_every, out, &mut stats);
                }
            }
        }
        if !out.is_empty() {
            write_all(&stream, out).await?;
            out.clear();
        }
        glommio::yield_if_needed().await;
    }
}

/// The consumer channel a frame's channel number names (channels are
/// numbered from 1).
fn channel_of(channels: &mut [ChannelState], channel: u16) -> Option<&mut ChannelState> {
    channel
        .checked_sub(1)
        .and_then(|i| channels.get_mut(i as usize))
}

/// What a batch of deliveries is checked against.
struct Seen<'a> {
    now: u64,
    producer_count: usize,
    queue_count: usize,
    records: &'a mut [Option<SeqBits>],
    foreign: &'a mut u64,
}

impl Seen<'_> {
    /// Reads the producer's stamp at the start of a body: its latency and
    /// its place in that producer's sequence on this queue.
    fn stamp(&mut self, body: &[u8], queue: usize, stats: &mut ExecStats) {
        match read_stamp(body, self.now) {
            Some(stamp) if (stamp.producer_id as usize) < self.producer_count => {
                stats.record_e2e(self.now.saturating_sub(stamp.intended_ns));
                let slot = stamp.producer_id as usize * self.queue_count + queue;
                let bits = self.records[slot].get_or_insert_with(SeqBits::default);
                bits.record(stamp.sequence_near(bits.next()));
            }
            _ => *self.foreign += 1,
        }
    }
}

/// A delivery was received whole: counted, and acknowledged as the run
/// asks (every one, or every `multi_ack_every` with `multiple`).
fn settled(
    ch: &mut ChannelState,
    channel: u16,
    autoack: bool,
    multi_ack_every: u32,
    out: &mut BytesMut,
    stats: &mut ExecStats,
) {
    stats.counters.received += 1;
    if autoack {
        return;
    }
    ch.unacked += 1;
    ch.last_unacked_tag = ch.delivery_tag;
    if multi_ack_every <= 1 || ch.unacked >= multi_ack_every {
        let ack = BasicAck {
            delivery_tag: ch.delivery_tag,
            multiple: multi_ack_every > 1,
        };
        write_method(out, channel, &ack.into());
        ch.unacked = 0;
    }
}

//! One publisher, one queue and one consumer at 2 shards, in every
//! placement (publisher, queue and consumer each on shard 0 or 1), forced
//! through the test-only placement switch (`WARREN_TEST_PLACEMENT`: the
//! queue's shard is forced, and each connection reconnects until it lands
//! on the shard it wants, which the broker then names in connection.start).
//!
//! Each run checks that every message is delivered exactly once, and that
//! the queue's backlog stays bounded while the publisher writes faster than
//! the consumer takes: flow control holds a publisher to the pace at which
//! its queue drains, whatever the placement and the shards' load (credit
//! per queue across shards, the queue's own flow on its shard).
//!
//! A consumer on another shard than its queue gets deliveries sent ahead
//! of its acks, which its channel holds: the client still never has more
//! than its prefetch unacknowledged, and what was held goes back to the
//! queue unmarked when the channel closes. An unthrottled 1 → 1 with the
//! consumer alone on the other shard, run again and again on one broker,
//! keeps every message once, the backlog bounded and the consumer
//! receiving (a consumer once stopped there for good while the queue grew).
//!
//! The client is raw (warren's own codec over a blocking socket): lapin
//! does not show the server properties that name the shard.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use warren_protocol::{
    parse_frame, write_body, write_content_header, write_method, BasicAck, BasicConsume,
    BasicProperties, BasicPublish, BasicQos, ChannelClose, ChannelOpen, ConnectionOpen,
    ConnectionStartOk, ConnectionTuneOk, FieldTable, FieldValue, Frame, Method, QueueDeclare,
    PROTOCOL_HEADER,
};

/// Messages per run: enough for a publisher unheld to pile up far more
/// than `BACKLOG_MAX` on the queue.
const MESSAGES: u64 = 300_000;
/// The most ready messages the queue may hold during a run: its high mark
/// (4096) plus the credit a shard may have in flight towards one queue
/// (8192) plus what a publisher reads in a turn, with room for the
/// consumer stalling now and then on a loaded machine (a stalled consumer
/// lets its publisher go until it takes a message again). A publisher
/// unheld piles up most of the run's messages.
const BACKLOG_MAX: u32 = 40_000;
const PREFETCH: u16 = 200;
const ACK_EVERY: u64 = 50;
const FRAME_MAX: u32 = 131_072;
/// Reconnections before a connection gives up landing on its shard.
const LANDING_ATTEMPTS_MAX: usize = 64;
/// Longest a socket read or write may block: a stuck run fails, not hangs.
/// For a consumer, that is also how a stall is caught: one that receives
/// nothing for this long while its queue holds messages has stopped.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Runs of the unthrottled 1 → 1 with the consumer on the other shard in
/// the soak test, one after another on one broker.
const SOAK_RUNS: usize = 4;

/// The placement switch is read by the broker from the environment it
/// inherits at start, which the tests of this process share: each sets it
/// and starts its broker under this lock.
static PLACEMENT: Mutex<()> = Mutex::new(());

/// Starts a broker with `WARREN_TEST_PLACEMENT` set to `placement`.
fn start_placed(shards: usize, placement: &str, extra_args: &[&str]) -> Broker {
    let _guard = PLACEMENT.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("WARREN_TEST_PLACEMENT", placement);
    Broker::start_with(shards, extra_args)
}

/// A blocking AMQP client with one channel (1).
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    /// Connects until the broker says the connection is on `shard`.
    fn on_shard(addr: SocketAddr, shard: u16) -> Raw {
        for _ in 0..LANDING_ATTEMPTS_MAX {
            let (raw, landed) = Raw::connect(addr);
            if landed == shard {
                return raw;
            }
        }
        panic!("no connection landed on shard {shard} in {LANDING_ATTEMPTS_MAX} attempts");
    }

    fn connect(addr: SocketAddr) -> (Raw, u16) {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut raw = Raw {
            stream,
            buf: BytesMut::with_capacity(256 * 1024),
        };
        raw.stream.write_all(PROTOCOL_HEADER).unwrap();
        let shard = match raw.method() {
            Method::ConnectionStart(start) => match start.server_properties.get("warren_shard") {
                Some(FieldValue::I32(shard)) => *shard as u16,
                other => panic!("warren_shard missing from connection.start: {other:?}"),
            },
            other => panic!("expected connection.start, got {other:?}"),
        };
        raw.send(
            ConnectionStartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: b"\0guest\0guest".to_vec().into(),
                locale: "en_US".into(),
            }
            .into(),
        );
        match raw.method() {
            Method::ConnectionTune(_) => {}
            other => panic!("expected connection.tune, got {other:?}"),
        }
        raw.send(
            ConnectionTuneOk {
                channel_max: 16,
                frame_max: FRAME_MAX,
                heartbeat: 0,
            }
            .into(),
        );
        raw.send(
            ConnectionOpen {
                virtual_host: "/".into(),
            }
            .into(),
        );
        match raw.method() {
            Method::ConnectionOpenOk(_) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
        raw.send_on(1, ChannelOpen {}.into());
        match raw.method() {
            Method::ChannelOpenOk(_) => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
        (raw, shard)
    }

    fn send(&mut self, method: Method) {
        self.send_on(0, method);
    }

    fn send_on(&mut self, channel: u16, method: Method) {
        let mut out = BytesMut::new();
        write_method(&mut out, channel, &method);
        self.stream.write_all(&out).unwrap();
    }

    fn frame(&mut self) -> Frame {
        loop {
            if let Some(frame) = parse_frame(&mut self.buf, FRAME_MAX).expect("a valid frame") {
                return frame;
            }
            self.buf.reserve(64 * 1024);
            let spare = self.buf.capacity() - self.buf.len();
            let start = self.buf.len();
            self.buf.resize(start + spare, 0);
            let n = self.stream.read(&mut self.buf[start..]).expect("read");
            self.buf.truncate(start + n);
            assert!(n > 0, "the broker closed the connection");
        }
    }

    fn method(&mut self) -> Method {
        match self.frame() {
            Frame::Method { method, .. } => method,
            other => panic!("expected a method, got {other:?}"),
        }
    }

    /// queue.declare on channel 1; the ready messages it counts.
    fn declare(&mut self, queue: &str, passive: bool) -> u32 {
        self.declare_with(queue, passive, FieldTable::default())
    }

    fn declare_with(&mut self, queue: &str, passive: bool, arguments: FieldTable) -> u32 {
        self.send_on(
            1,
            QueueDeclare {
                queue: queue.into(),
                passive,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments,
            }
            .into(),
        );
        match self.method() {
            Method::QueueDeclareOk(ok) => ok.message_count,
            other => panic!("expected queue.declare-ok, got {other:?}"),
        }
    }
}

/// Publishes `MESSAGES` messages whose bodies are their sequence numbers,
/// as fast as the socket takes them; gives the connection back, open.
fn publish_all(mut publisher: Raw, queue: String) -> Raw {
    let properties = BasicProperties::default().encode();
    let mut out = BytesMut::with_capacity(256 * 1024);
    for seq in 0..MESSAGES {
        let publish = BasicPublish {
            exchange: "".into(),
            routing_key: queue.as_str().into(),
            mandatory: false,
            immediate: false,
        };
        write_method(&mut out, 1, &publish.into());
        write_content_header(&mut out, 1, 60, 8, &properties);
        write_body(&mut out, 1, &seq.to_be_bytes(), FRAME_MAX);
        if out.len() > 128 * 1024 {
            publisher.stream.write_all(&out).unwrap();
            out.clear();
        }
    }
    publisher.stream.write_all(&out).unwrap();
    publisher
}

/// One run of 1 → 1 with the publisher on shard `p`, the queue on the
/// broker's forced shard `q`, the consumer on shard `c`.
fn one_to_one(b: &Broker, p: u16, q: u16, c: u16) {
    let addr = b.addr();
    let queue = unique(&format!("cross-p{p}-q{q}-c{c}"));
    let mut control = Raw::connect(addr).0;
    control.declare(&queue, false);
    let mut consumer = Raw::on_shard(addr, c);
    consumer.send_on(
        1,
        BasicQos {
            prefetch_size: 0,
            prefetch_count: PREFETCH,
            global: false,
        }
        .into(),
    );
    match consumer.method() {
        Method::BasicQosOk(_) => {}
        other => panic!("expected basic.qos-ok, got {other:?}"),
    }
    consumer.send_on(
        1,
        BasicConsume {
            queue: queue.as_str().into(),
            consumer_tag: "c".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        }
        .into(),
    );
    match consumer.method() {
        Method::BasicConsumeOk(_) => {}
        other => panic!("expected basic.consume-ok, got {other:?}"),
    }
    let publisher = Raw::on_shard(addr, p);
    let publishing = {
        let queue = queue.clone();
        std::thread::spawn(move || publish_all(publisher, queue))
    };
    let mut seen = vec![false; MESSAGES as usize];
    let mut received = 0u64;
    let mut backlog_max = 0u32;
    let mut last_tag = 0u64;
    while received < MESSAGES {
        let tag = match consumer.frame() {
            Frame::Method {
                method: Method::BasicDeliver(deliver),
                ..
            } => deliver.delivery_tag,
            other => panic!("expected basic.deliver, got {other:?}"),
        };
        match consumer.frame() {
            Frame::Header { .. } => {}
            other => panic!("expected a content header, got {other:?}"),
        }
        let seq = match consumer.frame() {
            Frame::Body { mut payload, .. } => payload.get_u64(),
            other => panic!("expected a body, got {other:?}"),
        };
        assert!(seq < MESSAGES, "a body that was never published: {seq}");
        assert!(!seen[seq as usize], "message {seq} delivered twice");
        seen[seq as usize] = true;
        received += 1;
        last_tag = tag;
        if received.is_multiple_of(ACK_EVERY) {
            consumer.send_on(
                1,
                BasicAck {
                    delivery_tag: tag,
                    multiple: true,
                }
                .into(),
            );
        }
        if received.is_multiple_of(10_000) {
            backlog_max = backlog_max.max(control.declare(&queue, true));
        }
    }
    consumer.send_on(
        1,
        BasicAck {
            delivery_tag: last_tag,
            multiple: true,
        }
        .into(),
    );
    // The publisher's connection stays open until every message is
    // consumed: closing it is no part of what is checked.
    let _publisher = publishing.join().expect("the publisher finished");
    assert!(seen.iter().all(|&s| s), "every message was delivered");
    assert_eq!(
        control.declare(&queue, true),
        0,
        "nothing left in the queue"
    );
    assert!(
        backlog_max <= BACKLOG_MAX,
        "P{p} Q{q} C{c}: the queue held {backlog_max} ready messages, more than {BACKLOG_MAX}"
    );
    eprintln!("P{p} Q{q} C{c}: {received} delivered once each, backlog at most {backlog_max}");
}

/// Starts a broker with every queue on shard `q` and runs the four
/// placements of publisher and consumer against it.
fn placements_with_queue_on(q: u16, extra_args: &[&str]) {
    if std::env::var_os(EXTERNAL_URL_VAR).is_some() {
        eprintln!("placement is warren's own: nothing to test on an external broker");
        return;
    }
    let b = start_placed(2, &format!("queue={q}"), extra_args);
    for (p, c) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        one_to_one(&b, p, q, c);
    }
}

/// The shard the broker's log says `queue` was placed on (the metadata
/// owner logs it at debug level before it answers the declare; the test
/// harness copies the broker's output into its log from another thread).
fn placed_on(b: &Broker, queue: &str) -> u16 {
    let needle = format!("queue placed queue={queue} shard=");
    let find = || {
        b.log().lines().find_map(|line| {
            line.split_once(&needle)
                .and_then(|(_, rest)| rest.trim().parse().ok())
        })
    };
    let mut shard = None;
    wait_until(Duration::from_secs(10), || {
        shard = find();
        shard.is_some()
    });
    shard.unwrap_or_else(|| panic!("no placement of {queue} in the log:\n{}", b.log()))
}

fn locator_argument(key: &str, locator: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(key, FieldValue::LongStr(locator.as_bytes().to_vec().into()));
    arguments
}

/// Queue placement at 2 shards (`--queue-leader-locator`, RabbitMQ's
/// `queue_leader_locator`): by default (client-local) a queue lives on the
/// shard of the connection that declares it, from either shard; balanced
/// spreads one connection's queues over both shards; a queue's
/// `x-queue-leader-locator` (quorum) or `x-queue-master-locator` (classic)
/// argument overrides the broker's setting.
fn queue_leader_locators() {
    // Connections name their shard; queues are not forced anywhere.
    let b = start_placed(2, "", &["--log-level", "debug"]);
    for shard in [0, 1] {
        let mut conn = Raw::on_shard(b.addr(), shard);
        for n in 0..4 {
            let queue = format!("local-{shard}-{n}");
            conn.declare(&queue, false);
            assert_eq!(placed_on(&b, &queue), shard, "client-local: {queue}");
        }
        let queue = format!("balanced-arg-{shard}");
        let quorum = {
            let mut args = locator_argument("x-queue-leader-locator", "balanced");
            args.insert(
                "x-queue-type",
                FieldValue::LongStr(b"quorum".to_vec().into()),
            );
            args
        };
        conn.send_on(
            1,
            QueueDeclare {
                queue: queue.as_str().into(),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: quorum,
            }
            .into(),
        );
        match conn.method() {
            Method::QueueDeclareOk(_) => {}
            other => panic!("expected queue.declare-ok, got {other:?}"),
        }
        placed_on(&b, &queue);
    }
    drop(b);

    let b = start_placed(
        2,
        "",
        &["--log-level", "debug", "--queue-leader-locator", "balanced"],
    );
    let (mut conn, shard) = Raw::connect(b.addr());
    let mut seen = [false; 2];
    for n in 0..4 {
        let queue = format!("spread-{n}");
        conn.declare(&queue, false);
        seen[placed_on(&b, &queue) as usize] = true;
    }
    assert_eq!(seen, [true, true], "balanced put every queue on one shard");
    for n in 0..4 {
        let queue = format!("master-local-{n}");
        conn.declare_with(
            &queue,
            false,
            locator_argument("x-queue-master-locator", "client-local"),
        );
        assert_eq!(
            placed_on(&b, &queue),
            shard,
            "x-queue-master-locator: {queue}"
        );
    }
}

#[test]
fn one_to_one_delivers_once_with_bounded_backlog_in_every_placement_at_2_shards() {
    if std::env::var_os(EXTERNAL_URL_VAR).is_some() {
        eprintln!("placement is warren's own: nothing to test on an external broker");
        return;
    }
    queue_leader_locators();
    placements_with_queue_on(0, &[]);
    placements_with_queue_on(1, &[]);
}

/// The same with batches between shards sent at the end of every reactor
/// turn (`--mailbox-interval-us 0`) instead of at most every 400 µs while
/// the traffic is heavy: both ways of pacing the mailboxes deliver
/// everything once, and the batches held at the end of each run (the
/// default) arrive with no more traffic to carry them.
#[test]
fn one_to_one_delivers_once_with_bounded_backlog_with_unpaced_mailboxes_at_2_shards() {
    if std::env::var_os(EXTERNAL_URL_VAR).is_some() {
        eprintln!("placement is warren's own: nothing to test on an external broker");
        return;
    }
    placements_with_queue_on(1, &["--mailbox-interval-us", "0"]);
}

/// The soak behind the consumer that once stopped for good at publisher 0,
/// queue 0, consumer 1 under an unthrottled publisher (its queue grew to
/// 785 MB): `SOAK_RUNS` runs of `MESSAGES` each, on one broker, every one
/// delivering each message once with the backlog bounded; a consumer that
/// stops receiving fails its read after `IO_TIMEOUT`.
#[test]
fn remote_consumer_keeps_receiving_under_an_unthrottled_publisher_at_2_shards() {
    if std::env::var_os(EXTERNAL_URL_VAR).is_some() {
        eprintln!("placement is warren's own: nothing to test on an external broker");
        return;
    }
    let b = start_placed(2, "queue=0", &[]);
    for _ in 0..SOAK_RUNS {
        one_to_one(&b, 0, 0, 1);
    }
}

/// One delivery as the consumer reads it: delivery tag, redelivered, body.
fn next_delivery(consumer: &mut Raw) -> (u64, bool, u64) {
    let (tag, redelivered) = match consumer.frame() {
        Frame::Method {
            method: Method::BasicDeliver(deliver),
            ..
        } => (deliver.delivery_tag, deliver.redelivered),
        other => panic!("expected basic.deliver, got {other:?}"),
    };
    match consumer.frame() {
        Frame::Header { .. } => {}
        other => panic!("expected a content header, got {other:?}"),
    }
    match consumer.frame() {
        Frame::Body { mut payload, .. } => (tag, redelivered, payload.get_u64()),
        other => panic!("expected a body, got {other:?}"),
    }
}

fn consume(raw: &mut Raw, channel: u16, queue: &str, prefetch: u16, no_ack: bool) {
    if channel != 1 {
        raw.send_on(channel, ChannelOpen {}.into());
        match raw.method() {
            Method::ChannelOpenOk(_) => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
    }
    raw.send_on(
        channel,
        BasicQos {
            prefetch_size: 0,
            prefetch_count: prefetch,
            global: false,
        }
        .into(),
    );
    match raw.method() {
        Method::BasicQosOk(_) => {}
        other => panic!("expected basic.qos-ok, got {other:?}"),
    }
    raw.send_on(
        channel,
        BasicConsume {
            queue: queue.into(),
            consumer_tag: format!("c{channel}").as_str().into(),
            no_local: false,
            no_ack,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        }
        .into(),
    );
    match raw.method() {
        Method::BasicConsumeOk(_) => {}
        other => panic!("expected basic.consume-ok, got {other:?}"),
    }
}

/// A consumer with prefetch 20 on another shard than its queue of 1,000
/// messages reads 20, acks 10, reads 10 more, and closes its channel while
/// its queue has sent more ahead. A second consumer then gets the 990 not
/// acknowledged, in order, and exactly the 20 the first one was written and
/// did not ack are marked redelivered: so the first was never written more
/// than its prefetch, and what its channel held went back unmarked. At 1
/// shard the same holds with nothing sent ahead.
fn prefetch_holds_with_deliveries_sent_ahead(shards: usize) {
    const COUNT: u64 = 1_000;
    const PREFETCH: u16 = 20;
    let b = start_placed(shards, "queue=0", &[]);
    let addr = b.addr();
    let queue = unique("ahead");
    let mut control = Raw::connect(addr).0;
    control.declare(&queue, false);
    let properties = BasicProperties::default().encode();
    let mut out = BytesMut::new();
    for seq in 0..COUNT {
        let publish = BasicPublish {
            exchange: "".into(),
            routing_key: queue.as_str().into(),
            mandatory: false,
            immediate: false,
        };
        write_method(&mut out, 1, &publish.into());
        write_content_header(&mut out, 1, 60, 8, &properties);
        write_body(&mut out, 1, &seq.to_be_bytes(), FRAME_MAX);
    }
    control.stream.write_all(&out).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || control.declare(&queue, true)
            == COUNT as u32),
        "the queue never held the {COUNT} messages"
    );
    let mut first = Raw::on_shard(addr, (shards - 1) as u16);
    consume(&mut first, 1, &queue, PREFETCH, false);
    let mut tags = Vec::new();
    for expected in 0..u64::from(PREFETCH) {
        let (tag, redelivered, seq) = next_delivery(&mut first);
        assert_eq!((seq, redelivered), (expected, false));
        tags.push(tag);
    }
    first.send_on(
        1,
        BasicAck {
            delivery_tag: tags[9],
            multiple: true,
        }
        .into(),
    );
    for expected in u64::from(PREFETCH)..u64::from(PREFETCH) + 10 {
        let (_, redelivered, seq) = next_delivery(&mut first);
        assert_eq!((seq, redelivered), (expected, false));
    }
    first.send_on(
        1,
        ChannelClose {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }
        .into(),
    );
    // Whatever was written after the 30 read comes before close-ok.
    loop {
        match first.frame() {
            Frame::Method {
                method: Method::ChannelCloseOk(_),
                ..
            } => break,
            Frame::Method {
                method: Method::BasicDeliver(deliver),
                ..
            } => panic!(
                "a delivery beyond the prefetch of {PREFETCH}: tag {}",
                deliver.delivery_tag
            ),
            _ => {}
        }
    }
    // What was on its way to the closed channel comes back to the queue
    // when it arrives there, possibly after other messages went to the
    // second consumer: each message once, in whatever order.
    consume(&mut first, 2, &queue, 0, true);
    let mut seen = vec![false; COUNT as usize];
    for _ in 10..COUNT {
        let (_, redelivered, seq) = next_delivery(&mut first);
        assert!((10..COUNT).contains(&seq), "message {seq} again");
        assert!(!seen[seq as usize], "message {seq} delivered twice");
        seen[seq as usize] = true;
        assert_eq!(
            redelivered,
            seq < u64::from(PREFETCH) + 10,
            "only what the first consumer was written and did not ack is redelivered (message {seq})"
        );
    }
    assert_eq!(
        control.declare(&queue, true),
        0,
        "nothing left in the queue"
    );
}

#[test]
fn a_consumer_sent_deliveries_ahead_never_exceeds_its_prefetch_at_1_shard() {
    if std::env::var_os(EXTERNAL_URL_VAR).is_some() {
        return;
    }
    prefetch_holds_with_deliveries_sent_ahead(1);
}

#[test]
fn a_consumer_sent_deliveries_ahead_never_exceeds_its_prefetch_at_2_shards() {
    if std::env::var_os(EXTERNAL_URL_VAR).is_some() {
        return;
    }
    prefetch_holds_with_deliveries_sent_ahead(2);
}

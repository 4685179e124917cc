//! Microbenchmarks of the per-message path, with the standard library only:
//! each case runs a fixed number of iterations a few times and prints the
//! best ns per message. Run with `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use warren::broker::delayed;
use warren::broker::exchange::topic::TopicRouter;
use warren::broker::queue::{ConsumerSpec, Queue, QueueCtx, Settle};
use warren::broker::sender_selected;
use warren::broker::timers::{TimerEvent, Timers};
use warren::metadata::exchange::{Binding, Destination};
use warren::metadata::vhost::QueueMeta;
use warren::model::ids::{ConnId, ConnRef, QueueId, QueueRef, ShardId};
use warren::model::message::Message;
use warren::store::log::MessageStore;
use warren::util::timer_wheel::TimerWheel;
use warren_protocol::{
    parse_frame, write_body, write_content_header, write_method, BasicDeliver, BasicProperties,
    BasicPublish, FieldTable, FieldValue, Frame, Method, Properties, ShortStr,
};

fn best_ns_per_op(iterations: u64, mut op: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..iterations {
            op();
        }
        let ns = start.elapsed().as_nanos() as f64 / iterations as f64;
        best = best.min(ns);
    }
    best
}

fn report(name: &str, ns: f64) {
    println!(
        "{:<48} {:>9.1} ns/message {:>12.0} messages/s",
        name,
        ns,
        1e9 / ns
    );
}

fn publish_frames(body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    let publish: Method = BasicPublish {
        exchange: ShortStr::from("amq.direct"),
        routing_key: ShortStr::from("bench"),
        mandatory: false,
        immediate: false,
    }
    .into();
    write_method(&mut buf, 1, &publish);
    write_content_header(&mut buf, 1, 60, body.len() as u64, &Properties::empty());
    write_body(&mut buf, 1, body, 131_072);
    buf
}

fn codec() {
    let body = [7u8; 16];
    let frames = publish_frames(&body);
    let mut input = BytesMut::with_capacity(frames.len() * 1024);
    let ns = best_ns_per_op(1_000_000, || {
        if input.is_empty() {
            for _ in 0..1024 {
                input.extend_from_slice(&frames);
            }
        }
        for _ in 0..3 {
            let frame = parse_frame(&mut input, 131_072).unwrap().unwrap();
            black_box(&frame);
        }
    });
    report("decode publish + header + 16 B body", ns);

    let mut out = BytesMut::with_capacity(1 << 20);
    let properties = Properties::empty();
    let body = bytes::Bytes::from_static(&[7u8; 16]);
    let ns = best_ns_per_op(1_000_000, || {
        if out.len() > (1 << 19) {
            out.clear();
        }
        let deliver: Method = BasicDeliver {
            consumer_tag: ShortStr::from_static("amq.ctag-bench"),
            delivery_tag: 42,
            redelivered: false,
            exchange: ShortStr::from_static("amq.direct"),
            routing_key: ShortStr::from_static("bench"),
        }
        .into();
        write_method(&mut out, 1, &deliver);
        write_content_header(&mut out, 1, 60, body.len() as u64, &properties);
        write_body(&mut out, 1, &body, 131_072);
        black_box(&out);
    });
    report("encode deliver + header + 16 B body", ns);
    let _ = Frame::Heartbeat { channel: 0 };
}

fn topic_routing() {
    let mut router = TopicRouter::default();
    for n in 0..10_000u64 {
        router.bind(&Binding {
            source: ShortStr::from("bench"),
            destination: Destination::Queue(QueueRef {
                id: QueueId(n),
                shard: ShardId(0),
            }),
            routing_key: ShortStr::from(format!(
                "stock.{}.{}",
                n % 100,
                if n % 2 == 0 { "*" } else { "#" }
            )),
            arguments: FieldTable::default(),
        });
    }
    let mut out = Vec::with_capacity(256);
    let ns = best_ns_per_op(200_000, || {
        out.clear();
        router.route(black_box("stock.42.nyse"), &mut out);
        black_box(&out);
    });
    report("topic route, 10,000 bindings (100 match)", ns);
}

/// A queue with one consumer: publish, dispatch (deliver) and ack, in
/// batches of 100 as a consumer with prefetch and multi-ack would see them.
fn queue_cycle() {
    let mut queue = Queue::new(QueueMeta {
        id: QueueId(1),
        vhost: ShortStr::from("/"),
        name: ShortStr::from("bench"),
        shard: ShardId(0),
        durable: false,
        exclusive_owner: None,
        auto_delete: false,
        arguments: FieldTable::default(),
        args: Default::default(),
    });
    let conn = ConnRef {
        shard: ShardId(0),
        conn: ConnId(1),
    };
    let consumer = queue
        .add_consumer(ConsumerSpec {
            conn,
            channel: 1,
            tag: ShortStr::from("bench"),
            no_ack: false,
            exclusive: false,
            prefetch_count: 0,
            lookahead: 0,
            priority: 0,
        })
        .unwrap();
    let message = Message::new(
        "",
        "bench",
        &Properties::empty(),
        bytes::Bytes::from_static(&[7u8; 16]),
        None,
    );
    let mut deliveries = Vec::with_capacity(128);
    let mut timers = Timers::new();
    let mut dead = Vec::new();
    let mut store = MessageStore::new(warren::config::SEGMENT_SIZE, &[]);
    let ns = best_ns_per_op(10_000, || {
        let mut ctx = QueueCtx::new(&mut timers, &mut dead, &mut store);
        deliveries.clear();
        for _ in 0..100 {
            queue.publish(message.clone(), &mut deliveries, &mut ctx);
        }
        queue.dispatch(&mut deliveries, &mut ctx);
        for delivery in &deliveries {
            queue.settle(delivery.head.seq, consumer, Settle::Ack, &mut ctx);
        }
    }) / 100.0;
    report("queue publish + deliver + ack", ns);
}

/// Batches of 64 shard messages through the mailbox mesh from one executor
/// to another, as shards exchange them (try_send, overflow kept locally).
fn mailbox_batches() {
    use glommio::channels::channel_mesh::{Full, MeshBuilder};
    use glommio::{LocalExecutorBuilder, Placement};
    use warren::broker::ShardMsg;
    use warren::model::ids::ConsumerId;

    const BATCH: usize = 64;
    const BATCHES: usize = 50_000;
    let mesh: MeshBuilder<Vec<ShardMsg>, Full> = MeshBuilder::full(2, 1024);
    let start = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let mesh = mesh.clone();
            LocalExecutorBuilder::new(Placement::Unbound)
                .io_memory(1 << 20)
                .spawn(move || async move {
                    // As in the broker: a timer so that a missed cross-thread
                    // wake-up cannot park the executor for good.
                    glommio::spawn_local(async {
                        loop {
                            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                        }
                    })
                    .detach();
                    let (senders, mut receivers) = mesh.join().await.unwrap();
                    if senders.peer_id() == 0 {
                        for _ in 0..BATCHES {
                            let mut batch = Vec::with_capacity(BATCH);
                            for seq in 0..BATCH as u64 {
                                batch.push(ShardMsg::Settle {
                                    queue: QueueId(1),
                                    seq,
                                    consumer: ConsumerId(1),
                                    settle: Settle::Ack,
                                });
                            }
                            let mut pending = batch;
                            loop {
                                match senders.try_send_to(1, pending) {
                                    Ok(()) => break,
                                    Err(glommio::GlommioError::WouldBlock(
                                        glommio::ResourceType::Channel(back),
                                    )) => {
                                        pending = back;
                                        glommio::executor().yield_task_queue_now().await;
                                    }
                                    Err(e) => panic!("{e}"),
                                }
                            }
                        }
                        0
                    } else {
                        let (_, receiver) = receivers.streams().pop().unwrap();
                        let mut received = 0;
                        while received < BATCH * BATCHES {
                            let batch = receiver.recv().await.unwrap();
                            received += black_box(batch).len();
                        }
                        received
                    }
                })
                .unwrap()
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let ns = start.elapsed().as_nanos() as f64 / (BATCH * BATCHES) as f64;
    report("cross-shard mailbox, batches of 64", ns);
}

/// One million messages, each with its own TTL, published into one queue
/// with no consumer (so every one holds a pending timer), then purged;
/// against the same without TTLs. The difference is what the timer wheel
/// costs per message.
fn queue_ttl() {
    const MESSAGES: u64 = 1_000_000;
    let with_ttl: Vec<Properties> = (0..1000u64)
        .map(|i| {
            BasicProperties {
                expiration: Some(ShortStr::from(format!("{}", 60_000 + i * 37))),
                ..Default::default()
            }
            .encode()
        })
        .collect();
    let without_ttl = vec![Properties::empty()];
    for (name, properties) in [
        ("queue publish + purge, no TTL", &without_ttl),
        ("queue publish + purge, own TTL each", &with_ttl),
    ] {
        let mut queue = Queue::new(QueueMeta {
            id: QueueId(1),
            vhost: ShortStr::from("/"),
            name: ShortStr::from("bench-ttl"),
            shard: ShardId(0),
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
            args: Default::default(),
        });
        let messages: Vec<Message> = properties
            .iter()
            .map(|p| {
                Message::new(
                    "",
                    "bench-ttl",
                    p,
                    bytes::Bytes::from_static(&[7u8; 16]),
                    None,
                )
            })
            .collect();
        let mut timers = Timers::new();
        let mut dead = Vec::new();
        let mut store = MessageStore::new(warren::config::SEGMENT_SIZE, &[]);
        let mut pending_timers = 0;
        // No consumer: every message waits, with its timer.
        let mut deliveries = Vec::new();
        let ns = best_ns_per_op(1, || {
            let mut ctx = QueueCtx::new(&mut timers, &mut dead, &mut store);
            for i in 0..MESSAGES {
                let message = &messages[(i % messages.len() as u64) as usize];
                queue.publish(message.clone(), &mut deliveries, &mut ctx);
            }
            pending_timers = ctx.timers.len();
            queue.purge(&mut ctx);
        }) / MESSAGES as f64;
        report(name, ns);
        if pending_timers > 0 {
            println!(
                "{:<48} {:>9} timers pending, {} bytes each in the wheel + 16 in the queue",
                "",
                pending_timers,
                TimerWheel::<TimerEvent>::ENTRY_BYTES
            );
        }
    }
}

/// What the header-driven publish features (CC/BCC, x-delay) cost a publish:
/// nothing but a flag test without headers, a walk over the raw table with
/// headers that hold none of their keys, decoding only for those that do.
fn header_features() {
    let text = |s: &'static str| FieldValue::LongStr(bytes::Bytes::from_static(s.as_bytes()));
    let with = |entries: Vec<(&'static str, FieldValue)>| {
        let mut headers = FieldTable::new();
        for (k, v) in entries {
            headers.insert(k, v);
        }
        BasicProperties {
            headers: Some(headers),
            ..Default::default()
        }
        .encode()
    };
    let ordinary = || {
        vec![
            ("trace-id", text("4bf92f3577b34da6a3ce929d0e0e4736")),
            ("tenant", text("acme")),
            ("attempt", FieldValue::I32(1)),
            ("sent-at", FieldValue::Timestamp(1_700_000_000)),
            ("source", text("billing-service")),
        ]
    };
    let mut cc = ordinary();
    cc.push((
        "CC",
        FieldValue::Array(vec![text("audit"), text("eu.billing")]),
    ));
    let mut bcc = ordinary();
    bcc.push(("BCC", FieldValue::Array(vec![text("archive")])));
    let mut delay = ordinary();
    delay.push(("x-delay", FieldValue::I32(5000)));
    let mut keys = Vec::new();
    for (name, properties) in [
        ("CC/BCC lookup, no headers", Properties::empty()),
        ("CC/BCC lookup, 5 headers without CC/BCC", with(ordinary())),
        ("CC/BCC lookup, CC with 2 keys", with(cc)),
        ("CC/BCC lookup, BCC with 1 key (stripped)", with(bcc)),
    ] {
        let ns = best_ns_per_op(1_000_000, || {
            let stripped = sender_selected::routing_keys(black_box(&properties), &mut keys);
            black_box((&stripped, &keys));
        });
        report(name, ns);
    }
    let properties = with(delay);
    let ns = best_ns_per_op(1_000_000, || {
        black_box(delayed::delay_of(black_box(&properties)));
    });
    report("x-delay lookup, 6 headers", ns);
}

fn main() {
    codec();
    topic_routing();
    queue_cycle();
    queue_ttl();
    mailbox_batches();
    header_features();
}

//! A disk that refuses writes blocks publishers instead of losing messages.
//! A real write error is made without root: the broker's file size limit
//! (RLIMIT_FSIZE, lowered with prlimit(2) on the running process) makes
//! every write past it fail with EFBIG, as a full disk fails with ENOSPC.
//! The store keeps the batch it could not write and its confirms, raises
//! the disk alarm (publishers get connection.blocked), and writes the
//! batch again until the disk takes it: then the confirms go out, the alarm
//! clears and every message drains once, in order. Killed with -9 while
//! the disk refuses, the broker comes back with every confirmed message.
//!
//! (`--disk-free-limit` above the free space, the other way a disk is
//! "full", is tested in tests/alarms.rs.)

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lapin::publisher_confirm::PublisherConfirm;

const DEADLINE: Duration = Duration::from_secs(120);
/// The broker's file size limit once lowered: segment files stop there.
const FILE_SIZE_LIMIT: u64 = 512 * 1024;
const BODY_LEN: usize = 4096;
/// Published at most before the publisher must have been blocked: about
/// 8 MiB, many times the limit.
const PUBLISH_MAX: u32 = 2000;

/// `$name_shards_1` and `$name_shards_2` calling `$body(shards)`.
macro_rules! with_shards {
    ($name:ident) => {
        paste::paste! {
            #[test]
            fn [<$name _shards_1>]() {
                $name(1);
            }

            #[test]
            fn [<$name _shards_2>]() {
                $name(2);
            }
        }
    };
}

/// Sets the broker's soft RLIMIT_FSIZE (the hard one is left alone, so
/// that it can be raised again).
fn set_file_size_limit(broker: &Broker, bytes: Option<u64>) {
    let pid = libc::pid_t::try_from(broker.pid().expect("a warren child")).expect("a pid");
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pid and out pointer; no new limit is set by this call.
    let got = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, std::ptr::null(), &mut old) };
    assert_eq!(got, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: bytes.unwrap_or(old.rlim_max).min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: a valid pid and limit; the old one is not asked for.
    let set = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &new, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
}

fn body(n: u32) -> Vec<u8> {
    let mut body = format!("{n:06}-").into_bytes();
    body.resize(BODY_LEN, b'.');
    body
}

fn number(data: &[u8]) -> u32 {
    String::from_utf8_lossy(&data[..6])
        .parse()
        .expect("a body the test published")
}

fn start(shards: usize) -> Option<Broker> {
    let broker = Broker::start_with(
        shards,
        &[
            "--queue-window",
            "65536",
            "--shard-window",
            "262144",
            "--segment-size",
            "4194304",
        ],
    );
    (!broker.is_external()).then_some(broker)
}

/// What `publish_until_blocked` published.
struct Published {
    /// Confirms not in yet: (number, future).
    outstanding: Vec<(u32, PublisherConfirm)>,
    confirmed: BTreeSet<u32>,
    /// The publish lapin held when the connection was blocked, if any: it
    /// may or may not reach the broker (dropped here, it is not awaited).
    held: Option<u32>,
}

impl Published {
    /// Messages published for certain, numbered from 0.
    fn sent(&self) -> usize {
        self.confirmed.len() + self.outstanding.len()
    }
}

/// Publishes persistent messages with confirms until the connection is
/// blocked, 64 unconfirmed at most (one more whenever none was confirmed
/// for a while: a connection is blocked when it publishes). Panics if the
/// publisher is never blocked.
async fn publish_until_blocked(
    conn: &Connection,
    ch: &Channel,
    queue: &str,
    broker: &Broker,
) -> Published {
    let mut outstanding: Vec<(u32, PublisherConfirm)> = Vec::new();
    let mut confirmed = BTreeSet::new();
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut n = 0;
    let mut last_publish = Instant::now();
    while !conn.status().blocked() {
        let mut still = Vec::with_capacity(outstanding.len());
        for (at, mut confirm) in outstanding {
            match futures_lite::future::poll_once(&mut confirm).await {
                Some(Ok(c)) => {
                    assert!(c.is_ack(), "message {at} nacked");
                    confirmed.insert(at);
                }
                Some(Err(e)) => panic!("confirm {at}: {e}"),
                None => still.push((at, confirm)),
            }
        }
        outstanding = still;
        if outstanding.len() >= 64 && last_publish.elapsed() < Duration::from_millis(200) {
            sleep(Duration::from_millis(10)).await;
            continue;
        }
        assert!(
            n < PUBLISH_MAX,
            "the publisher was never blocked\n{}",
            broker.log()
        );
        // lapin holds a publish while its connection is blocked: one that
        // met connection.blocked on its way may not return until the end.
        let payload = body(n);
        let publish = ch.basic_publish(
            "",
            queue,
            BasicPublishOptions::default(),
            &payload,
            props.clone(),
        );
        match within(Duration::from_millis(500), publish).await {
            Some(confirm) => outstanding.push((n, confirm.expect("basic.publish"))),
            None if conn.status().blocked() => {
                return Published {
                    outstanding,
                    confirmed,
                    held: Some(n),
                }
            }
            None => panic!("basic.publish {n} does not return\n{}", broker.log()),
        }
        n += 1;
        last_publish = Instant::now();
    }
    Published {
        outstanding,
        confirmed,
        held: None,
    }
}

fn a_disk_that_refuses_writes_blocks_publishers_and_loses_nothing(shards: usize) {
    let Some(broker) = start(shards) else {
        eprintln!("skipped: the file size limit is set on warren's process");
        return;
    };
    let url = broker.url();
    run_for(DEADLINE, async {
        let (conn, ch) = open_confirming(&url).await;
        declare_queue_with(
            &ch,
            "fd.q",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
        set_file_size_limit(&broker, Some(FILE_SIZE_LIMIT));
        let published = publish_until_blocked(&conn, &ch, "fd.q", &broker).await;
        let confirmed = published.confirmed.clone();
        assert!(
            eventually(STEP_DEADLINE, || broker
                .log()
                .contains("the message store cannot write"))
            .await,
            "no write error logged\n{}",
            broker.log()
        );
        // The alarm monitor logs it on its next check (every 25 ms), which
        // may come after the publisher saw connection.blocked.
        assert!(
            eventually(STEP_DEADLINE, || broker
                .log()
                .contains("disk resource limit alarm set on node"))
            .await,
            "no disk alarm logged\n{}",
            broker.log()
        );
        // What a segment file can hold past its first chunk, at most: no
        // confirm was sent for a message the disk did not take.
        let fits = (FILE_SIZE_LIMIT / BODY_LEN as u64) as usize;
        assert!(
            confirmed.len() <= fits,
            "{} confirmed, at most {fits} fit on the disk",
            confirmed.len()
        );
        // The broker still answers, and holds every message it took.
        let (other, _other_ch) = open(&url).await;
        let held = message_count(&other, "fd.q").await as usize;
        assert!(held >= confirmed.len());

        // The disk takes writes again: the held batch is written, every
        // outstanding confirm is an ack, the alarm clears.
        set_file_size_limit(&broker, None);
        let sent = published.sent();
        let held = published.held;
        for (n, confirm) in published.outstanding {
            let confirmation = step("a held confirm", confirm).await.expect("confirm");
            assert!(!confirmation.is_nack(), "message {n} nacked");
        }
        assert!(
            eventually(Duration::from_secs(30), || !conn.status().blocked()).await,
            "the publisher stayed blocked\n{}",
            broker.log()
        );
        assert!(broker.log().contains("the message store writes again"));
        step("the last confirms", ch.wait_for_confirms())
            .await
            .expect("confirms");

        // Every message taken drains once, in order.
        let mut numbers = Vec::new();
        while let Some(m) = get(&ch, "fd.q", true).await {
            numbers.push(number(&m.delivery.data));
        }
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "out of order or twice: {:?}",
            &numbers[..numbers.len().min(40)]
        );
        // The broker never stopped: not one of them is missing.
        let expected: Vec<u32> = (0..sent as u32).collect();
        let with_held: Vec<u32> = (0..sent as u32).chain(held).collect();
        assert!(
            numbers == expected || numbers == with_held,
            "{} of {sent} back: {:?}",
            numbers.len(),
            &numbers[..numbers.len().min(40)]
        );
    });
}

with_shards!(a_disk_that_refuses_writes_blocks_publishers_and_loses_nothing);

fn a_kill_while_the_disk_refuses_keeps_every_confirmed_message(shards: usize) {
    let Some(mut broker) = start(shards) else {
        eprintln!("skipped: the file size limit is set on warren's process");
        return;
    };
    let url = broker.url();
    let confirmed = std::cell::RefCell::new(BTreeSet::new());
    let unconfirmed = std::cell::Cell::new(0usize);
    run_for(DEADLINE, async {
        let (conn, ch) = open_confirming(&url).await;
        declare_queue_with(
            &ch,
            "fd.killed",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
        set_file_size_limit(&broker, Some(FILE_SIZE_LIMIT));
        let published = publish_until_blocked(&conn, &ch, "fd.killed", &broker).await;
        unconfirmed.set(published.outstanding.len() + usize::from(published.held.is_some()));
        let acked = published.confirmed;
        assert!(
            eventually(STEP_DEADLINE, || broker
                .log()
                .contains("the message store cannot write"))
            .await
        );
        *confirmed.borrow_mut() = acked;
        std::mem::forget(conn);
    });
    broker.crash_and_restart();
    let confirmed = confirmed.into_inner();
    let url = broker.url();
    run_for(DEADLINE, async {
        let (_conn, ch) = open(&url).await;
        let mut numbers = Vec::new();
        while let Some(m) = get(&ch, "fd.killed", true).await {
            numbers.push(number(&m.delivery.data));
        }
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "out of order or twice: {:?}",
            &numbers[..numbers.len().min(40)]
        );
        let present: BTreeSet<u32> = numbers.iter().copied().collect();
        let lost: Vec<u32> = confirmed.difference(&present).copied().collect();
        assert!(
            lost.is_empty(),
            "confirmed and lost: {lost:?}\n{}",
            broker.log()
        );
        // Nothing the test did not publish: at most the confirmed ones
        // and those it was still waiting for.
        assert!(numbers.len() <= confirmed.len() + unconfirmed.get());
        eprintln!("{} confirmed, {} back", confirmed.len(), numbers.len());
    });
}

with_shards!(a_kill_while_the_disk_refuses_keeps_every_confirmed_message);

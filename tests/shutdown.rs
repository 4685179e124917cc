//! SIGTERM and SIGINT: clients get connection.close 320 CONNECTION_FORCED
//! with RabbitMQ's text, new clients are refused, and warren exits 0.

mod common;
use common::*;

#[path = "lapin_support/mod.rs"]
mod lapin_support;
use lapin_support::*;

use std::time::Duration;

/// Generous for a loaded CI machine; the broker itself waits at most 3 s
/// for clients to answer its close.
const EXIT_LIMIT: Duration = Duration::from_secs(20);

fn clients_are_closed_with_320_and_the_broker_exits_0(shards: usize, signal: libc::c_int) {
    let mut broker = Broker::start(shards);
    if broker.is_external() {
        eprintln!("skipped: stopping an external broker is not this test's business");
        return;
    }
    let url = broker.url();
    let addr = broker.addr();
    let mut conns = Vec::new();
    let mut watches = Vec::new();
    run(async {
        // Several connections, so that with two shards both have clients.
        for _ in 0..4 {
            let (conn, ch) = open(&url).await;
            declare_queue(&ch, &unique("shutdown")).await;
            watches.push(ErrorWatch::connection(&conn));
            conns.push((conn, ch));
        }
    });
    let status = broker.stop_with(signal, EXIT_LIMIT);
    let status = status.expect("warren exits after the signal");
    assert!(status.success(), "exit status {status:?}\n{}", broker.log());
    run(async {
        for watch in &watches {
            let text = watch.expect_code(320).await;
            assert!(
                text.contains("broker forced connection closure with reason 'shutdown'"),
                "{text}"
            );
        }
    });
    drop(conns);
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "nothing listens after the shutdown"
    );
    assert!(broker.log().contains("shutting down"), "{}", broker.log());
}

#[test]
fn sigterm_closes_clients_with_320_and_exits_0_shards_1() {
    clients_are_closed_with_320_and_the_broker_exits_0(1, libc::SIGTERM);
}

#[test]
fn sigterm_closes_clients_with_320_and_exits_0_shards_2() {
    clients_are_closed_with_320_and_the_broker_exits_0(2, libc::SIGTERM);
}

#[test]
fn sigint_closes_clients_with_320_and_exits_0_shards_1() {
    clients_are_closed_with_320_and_the_broker_exits_0(1, libc::SIGINT);
}

#[test]
fn sigint_closes_clients_with_320_and_exits_0_shards_2() {
    clients_are_closed_with_320_and_the_broker_exits_0(2, libc::SIGINT);
}

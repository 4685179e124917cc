//! Durable queue declares per second, each client waiting for its
//! declare-ok before the next, against any AMQP 0-9-1 broker (warren or
//! RabbitMQ): what a durable metadata change costs end to end.
//!
//! ```text
//! cargo run --release --example durable_declare_rate -- URL TOTAL CLIENTS [PREFIX]
//! e.g. ... -- amqp://guest:guest@127.0.0.1:5672/%2f 4000 1 rate
//! ```
//!
//! Each of CLIENTS connections declares TOTAL/CLIENTS durable queues named
//! `PREFIX-<client>-<n>`, one at a time, and the program prints the total
//! and the rate. The queues are left declared (delete them, or use a fresh
//! data directory, between runs).

use std::time::Instant;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: durable_declare_rate URL TOTAL CLIENTS [PREFIX]");
        std::process::exit(2);
    }
    let url = args[1].clone();
    let total: usize = args[2].parse().expect("TOTAL is a number");
    let clients: usize = args[3]
        .parse::<usize>()
        .expect("CLIENTS is a number")
        .max(1);
    let prefix = args.get(4).cloned().unwrap_or_else(|| "rate".to_string());
    let per_client = total / clients;

    let channels = futures_lite::future::block_on(async {
        let mut channels = Vec::new();
        for _ in 0..clients {
            let conn = Connection::connect(&url, ConnectionProperties::default())
                .await
                .expect("connect");
            let ch = conn.create_channel().await.expect("channel.open");
            channels.push((conn, ch));
        }
        channels
    });
    let started = Instant::now();
    let tasks: Vec<_> = channels
        .iter()
        .enumerate()
        .map(|(client, (_, ch))| {
            let ch = ch.clone();
            let prefix = prefix.clone();
            async_global_executor::spawn(async move {
                for n in 0..per_client {
                    ch.queue_declare(
                        &format!("{prefix}-{client}-{n}"),
                        QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .expect("queue.declare");
                }
            })
        })
        .collect();
    futures_lite::future::block_on(async {
        for task in tasks {
            task.await;
        }
    });
    let elapsed = started.elapsed();
    let declared = per_client * clients;
    println!(
        "{} durable declares by {} clients in {:.3} s: {:.0} declares/s",
        declared,
        clients,
        elapsed.as_secs_f64(),
        declared as f64 / elapsed.as_secs_f64()
    );
}

//! Durable queue declares per second, each client waiting for its
//! declare-ok before the next, against any AMQP 0-9-1 broker (warren or
//! RabbitMQ): what a durable metadata change costs end to end.
//!
//! ```text
//! cargo run --release --example durable_declare_rate -- [--pid PID] URL TOTAL CLIENTS [PREFIX]
//! e.g. ... -- --pid 1234 amqp://guest:guest@127.0.0.1:5672/%2f 4000 1 rate
//! ```
//!
//! Each of CLIENTS connections declares TOTAL/CLIENTS durable queues named
//! `PREFIX-<client>-<n>`, one at a time, and the program prints the total
//! and the rate. The queues are left declared (delete them, or use a fresh
//! data directory, between runs).
//!
//! With `--pid`, the broker's `/proc/PID/io` is read before the first
//! declare and again a second after the last (so that writes the broker
//! defers, as RabbitMQ's Mnesia log does, are counted), and the program
//! prints the bytes written per declare: `write_bytes` (what the broker
//! sent to storage, page by page) and `wchar` (what it passed to write
//! calls). Run it as the broker's user (or root) to read that file.

use std::time::Instant;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let mut pid = None;
    if let Some(at) = args.iter().position(|a| a == "--pid") {
        pid = args.get(at + 1).and_then(|p| p.parse::<u32>().ok());
        if pid.is_none() {
            eprintln!("--pid needs a process id");
            std::process::exit(2);
        }
        args.drain(at..at + 2);
    }
    if args.len() < 4 {
        eprintln!("usage: durable_declare_rate [--pid PID] URL TOTAL CLIENTS [PREFIX]");
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
    let io_before = pid.map(proc_io);
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
    if let (Some(pid), Some(before)) = (pid, io_before) {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let after = proc_io(pid);
        let per = |field: &str| {
            let get = |io: &[(String, u64)]| {
                io.iter()
                    .find(|(name, _)| name == field)
                    .map_or(0, |(_, v)| *v)
            };
            get(&after).saturating_sub(get(&before)) as f64 / declared.max(1) as f64
        };
        println!(
            "broker pid {pid}: {:.0} bytes written to storage per declare (write_bytes), \
             {:.0} bytes passed to write calls (wchar)",
            per("write_bytes"),
            per("wchar")
        );
    }
}

/// The fields of `/proc/PID/io`.
fn proc_io(pid: u32) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/io: {e}"));
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

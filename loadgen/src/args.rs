//! Command-line flags, in RabbitMQ PerfTest's vocabulary where it has a word for the
//! idea, and the `Plan` derived from them: which queues, which keys, which producer
//! and consumer goes to which executor.
//!
//! Where PerfTest has the flag, loadgen reads it as PerfTest does, so a PerfTest command
//! line runs unchanged: `-h` URI, `-x`/`-y` producer/consumer connections, `-X`/`-Y`
//! channels per producer/consumer connection, `-f persistent`/`-f mandatory`,
//! `-qp`/`-qpf`/`-qpt` queue patterns, `-p` predeclared, `-ad` auto-delete, `-M` frame
//! max, `-s` body size (12 bytes at least, as in PerfTest). PerfTest's flags of more than
//! one letter are rewritten to their long names before clap sees them
//! ([`perftest_argv`]).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::Parser;

use crate::body::{BODY_HEADER_SIZE, BODY_SIZE_MIN, COMPACT_PRODUCERS_MAX};
use crate::error::{Error, Result};
use crate::uri::AmqpUri;

/// loadgen: an AMQP 0-9-1 load generator in the style of RabbitMQ PerfTest, with
/// honest (coordinated-omission-corrected) HDR latency, loss and duplicate checks.
#[derive(Parser, Debug, Clone)]
#[command(version, about, disable_help_flag = true)]
pub struct Args {
    /// Print help (-h is the URI, as in PerfTest).
    #[arg(short = '?', long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// Broker URI: amqp://user:pass@host:port/vhost.
    #[arg(
        short = 'h',
        long,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: String,
    /// Producer connections.
    #[arg(short = 'x', long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer connections.
    #[arg(short = 'y', long, default_value_t = 1)]
    pub consumers: usize,
    /// Channels per producer connection; each channel is one producer with its own id.
    #[arg(short = 'X', long, default_value_t = 1)]
    pub producer_channel_count: usize,
    /// Channels per consumer connection; each channel is one consumer.
    #[arg(short = 'Y', long, default_value_t = 1)]
    pub consumer_channel_count: usize,
    /// Queue name (one queue). Default: a name of this run's own, deleted at the end.
    #[arg(short = 'u', long)]
    pub queue: Option<String>,
    /// Number of queues, named after --queue-pattern from 1 (perf-test-1, perf-test-2,
    /// ...); the same as -qpf 1 -qpt N.
    #[arg(long)]
    pub queues: Option<usize>,
    /// (-qp) Queue name pattern: %d is replaced by each number from --queue-pattern-from
    /// to --queue-pattern-to (default with --queues: perf-test-%d).
    #[arg(long)]
    pub queue_pattern: Option<String>,
    /// (-qpf) First number of the queue pattern's range (inclusive).
    #[arg(long)]
    pub queue_pattern_from: Option<usize>,
    /// (-qpt) Last number of the queue pattern's range (inclusive).
    #[arg(long)]
    pub queue_pattern_to: Option<usize>,
    /// Body size in bytes (at least 12: producer id, sequence, timestamp).
    #[arg(short = 's', long, default_value_t = BODY_SIZE_MIN)]
    pub size: usize,
    /// Consumer prefetch (basic.qos); 0 = unlimited.
    #[arg(short = 'q', long, default_value_t = 0)]
    pub qos: u16,
    /// Consumers ack automatically (no_ack).
    #[arg(short = 'a', long)]
    pub autoack: bool,
    /// Ack with multiple=true every N messages (0 or 1: ack each message).
    #[arg(short = 'A', long, default_value_t = 0)]
    pub multi_ack_every: u32,
    /// Publisher confirms, with at most N unconfirmed messages per producer.
    #[arg(short = 'c', long)]
    pub confirm: Option<u32>,
    /// Publishing rate per producer in msg/s; 0 = as fast as possible.
    #[arg(short = 'r', long, default_value_t = 0.0)]
    pub rate: f64,
    /// Run time in seconds (producers stop after it).
    #[arg(short = 'z', long)]
    pub time: Option<f64>,
    /// Messages per producer (the run ends when every producer has sent them).
    #[arg(short = 'C', long)]
    pub pmessages: Option<u64>,
    /// Messages per consumer: with no producers, the run ends when every consumer
    /// has received them (draining a backlog left by an earlier run).
    #[arg(short = 'D', long)]
    pub cmessages: Option<u64>,
    /// Message flags, as PerfTest's -f: persistent (delivery_mode 2 and durable
    /// queues) and mandatory; repeat the flag or list several values.
    #[arg(short = 'f', long = "flag", num_args = 1.., value_parser = ["persistent", "mandatory"])]
    pub flags: Vec<String>,
    /// The same as -f persistent.
    #[arg(long)]
    pub persistent: bool,
    /// Exchange to publish to ("" = the default exchange).
    #[arg(short = 'e', long, default_value = "direct")]
    pub exchange: String,
    /// Exchange type.
    #[arg(short = 't', long = "type", default_value = "direct")]
    pub exchange_type: String,
    /// Routing key, or a comma-separated list that producers cycle through.
    /// Default: the queue's name.
    #[arg(short = 'k', long, value_delimiter = ',')]
    pub routing_key: Vec<String>,
    /// Binding keys for every queue (comma-separated). Default: the routing keys.
    #[arg(long, value_delimiter = ',')]
    pub binding_key: Vec<String>,
    /// Publish with mandatory=true; unroutable messages come back as basic.return (the
    /// same as -f mandatory).
    #[arg(long)]
    pub mandatory: bool,
    /// (-ad) Declare queues with auto_delete.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_delete: bool,
    /// Use the exchange and queues as they are when they exist already (checked with
    /// passive declares); declare only those that do not.
    #[arg(short = 'p', long)]
    pub predeclared: bool,
    /// The frame_max to ask for; 0 takes the broker's offer.
    #[arg(short = 'M', long, default_value_t = crate::client::FRAME_MAX_DEFAULT)]
    pub framemax: u32,
    /// Print the summary as one JSON object on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Write latency .hgrm files, summary.json and report.html into DIR.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Executors (threads). Default: the CPUs available, or the count of --cpus.
    #[arg(long)]
    pub threads: Option<usize>,
    /// CPUs to pin the executors to, e.g. 2,3.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
    /// Longest wait, after producers stop, for in-flight confirms and deliveries.
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
    /// A name for this run, shown in reports.
    #[arg(long, default_value = "loadgen")]
    pub id: String,
    /// For tests and benchmarks of warren's placement only: producer
    /// connections reconnect until they land on this shard of a warren
    /// started with WARREN_TEST_PLACEMENT (it names its shard in
    /// connection.start). Other brokers do not say, and are refused.
    #[arg(long, hide = true)]
    pub producer_shard: Option<u16>,
    /// The same for consumer connections.
    #[arg(long, hide = true)]
    pub consumer_shard: Option<u16>,
}

/// One producer connection: its executor and the producers (channels) on it.
#[derive(Clone, Debug)]
pub struct ProducerConn {
    pub executor: usize,
    pub producers: Vec<ProducerPlan>,
}

#[derive(Clone, Debug)]
pub struct ProducerPlan {
    pub id: u32,
    pub channel: u16,
    /// Routing keys this producer cycles through.
    pub routing_keys: Vec<String>,
    /// The queue this producer's messages are expected in, when routing makes that
    /// obvious (direct exchange, default routing key); otherwise loss is checked on
    /// the queues that received at least one of its messages.
    pub expected_queue: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct ConsumerConn {
    pub executor: usize,
    pub consumers: Vec<ConsumerPlan>,
}

#[derive(Clone, Debug)]
pub struct ConsumerPlan {
    pub channel: u16,
    pub queue: usize,
}

/// Everything the executors need, derived once from the flags.
#[derive(Clone, Debug)]
pub struct Plan {
    pub args: Args,
    pub uri: AmqpUri,
    pub addr: SocketAddr,
    pub threads: usize,
    pub cpus: Option<Vec<usize>>,
    pub body_size: usize,
    pub queues: Vec<String>,
    /// Queues loadgen named itself and deletes at the end.
    pub delete_queues_at_end: bool,
    pub binding_keys: Vec<String>,
    pub producer_conns: Vec<ProducerConn>,
    pub consumer_conns: Vec<ConsumerConn>,
    pub multi_ack_every: u32,
    pub notes: Vec<String>,
}

impl Plan {
    pub fn producer_count(&self) -> usize {
        self.producer_conns.iter().map(|c| c.producers.len()).sum()
    }

    pub fn consumer_count(&self) -> usize {
        self.consumer_conns.iter().map(|c| c.consumers.len()).sum()
    }

    pub fn from_args(mut args: Args) -> Result<Plan> {
        let mut notes = Vec::new();
        args.persistent |= args.flags.iter().any(|f| f == "persistent");
        args.mandatory |= args.flags.iter().any(|f| f == "mandatory");
        if args.framemax != 0 && args.framemax < warren_protocol::FRAME_MIN_SIZE {
            return Err(Error::new(format!(
                "-M must be 0 (the broker's offer) or at least {}",
                warren_protocol::FRAME_MIN_SIZE
            )));
        }
        let uri = AmqpUri::parse(&args.uri)?;
        let addr = (uri.host.as_str(), uri.port)
            .to_socket_addrs()
            .map_err(|e| Error::new(format!("cannot resolve {}: {e}", uri.host)))?
            .next()
            .ok_or_else(|| Error::new(format!("{} resolves to no address", uri.host)))?;
        let available = core_affinity::get_core_ids()
            .map(|c| c.len())
            .unwrap_or(1)
            .max(1);
        let threads = args
            .threads
            .or(args.cpus.as_ref().map(|c| c.len()))
            .unwrap_or(available)
            .max(1);
        if let Some(cpus) = &args.cpus {
            if cpus.len() < threads {
                return Err(Error::new(format!(
                    "--cpus names {} CPUs for {threads} threads",
                    cpus.len()
                )));
            }
        }
        let body_size = if args.size < BODY_SIZE_MIN {
            notes.push(format!(
                "body size raised from {} to {BODY_SIZE_MIN} bytes, the minimum (producer id, sequence, timestamp)",
                args.size
            ));
            BODY_SIZE_MIN
        } else {
            args.size
        };
        let producers_total = args.producers.saturating_mul(args.producer_channel_count);
        if body_size < BODY_HEADER_SIZE && producers_total > COMPACT_PRODUCERS_MAX {
            return Err(Error::new(format!(
                "bodies under {BODY_HEADER_SIZE} bytes carry a 16-bit producer id: at most {COMPACT_PRODUCERS_MAX} producers"
            )));
        }
        if args.time.is_none() && args.pmessages.is_none() && args.producers > 0 {
            return Err(Error::new("say how long to run: -z SECONDS or -C MESSAGES"));
        }
        if args.rate < 0.0 || !args.rate.is_finite() {
            return Err(Error::new(
                "--rate must be a positive number (0 = unlimited)",
            ));
        }
        let range = match (args.queues, args.queue_pattern_from, args.queue_pattern_to) {
            (Some(0), None, None) => return Err(Error::new("--queues must be at least 1")),
            (Some(n), None, None) => Some((1, n)),
            (None, Some(from), Some(to)) if from <= to => Some((from, to)),
            (None, Some(_), Some(_)) => {
                return Err(Error::new(
                    "-qpt (--queue-pattern-to) must be at least -qpf (--queue-pattern-from)",
                ))
            }
            (None, None, None) => None,
            (Some(_), _, _) => return Err(Error::new("use either --queues N or -qpf/-qpt")),
            _ => {
                return Err(Error::new(
                    "queue pattern, from and to (-qp, -qpf, -qpt) must all be set or none",
                ))
            }
        };
        let (queues, delete_queues_at_end) = match (range, &args.queue) {
            (Some(_), Some(_)) => return Err(Error::new("use either -u QUEUE or a queue pattern")),
            (Some((from, to)), None) => {
                let pattern =
                    match (&args.queue_pattern, args.queues) {
                        (Some(pattern), _) => pattern.as_str(),
                        (None, Some(_)) => "perf-test-%d",
                        (None, None) => return Err(Error::new(
                            "queue pattern, from and to (-qp, -qpf, -qpt) must all be set or none",
                        )),
                    };
                if !pattern.contains("%d") {
                    return Err(Error::new("the queue pattern (-qp) needs a %d"));
                }
                let names = (from..=to)
                    .map(|i| pattern.replace("%d", &i.to_string()))
                    .collect();
                (names, false)
            }
            (None, _) if args.queue_pattern.is_some() => {
                return Err(Error::new(
                    "queue pattern, from and to (-qp, -qpf, -qpt) must all be set or none",
                ))
            }
            (None, Some(name)) => (vec![name.clone()], false),
            (None, None) => (vec![format!("loadgen-{}", std::process::id())], true),
        };
        for q in &queues {
            if q.len() > 255 {
                return Err(Error::new(format!("queue name longer than 255 bytes: {q}")));
            }
        }
        let binding_keys = if !args.binding_key.is_empty() {
            args.binding_key.clone()
        } else {
            args.routing_key.clone()
        };
        let multi_ack_every = if args.qos > 0 && args.multi_ack_every > u32::from(args.qos) {
            notes.push(format!(
                "--multi-ack-every {} is above the prefetch of {}; lowered to {} so consumers do not stall",
                args.multi_ack_every, args.qos, args.qos
            ));
            u32::from(args.qos)
        } else {
            args.multi_ack_every
        };
        let channels_per_conn_max = 2047;
        if args.producer_channel_count == 0
            || args.consumer_channel_count == 0
            || args.producer_channel_count > channels_per_conn_max
            || args.consumer_channel_count > channels_per_conn_max
        {
            return Err(Error::new("channels per connection must be in 1..=2047"));
        }

        // Producers and consumers are spread round-robin over the executors with one
        // counter, so with -x 1 -y 1 on two threads they land on different cores.
        let mut next_executor = 0usize;
        let mut producer_conns = Vec::new();
        let mut producer_id = 0u32;
        for _ in 0..args.producers {
            let mut producers = Vec::new();
            for c in 0..args.producer_channel_count {
                let queue = producer_id as usize % queues.len();
                let (routing_keys, expected_queue) = if !args.routing_key.is_empty() {
                    let single = queues.len() == 1 && args.exchange_type == "direct";
                    (args.routing_key.clone(), single.then_some(0))
                } else if args.exchange.is_empty() || args.exchange_type == "direct" {
                    (vec![queues[queue].clone()], Some(queue))
                } else {
                    (vec![queues[queue].clone()], None)
                };
                producers.push(ProducerPlan {
                    id: producer_id,
                    channel: c as u16 + 1,
                    routing_keys,
                    expected_queue,
                });
                producer_id += 1;
            }
            producer_conns.push(ProducerConn {
                executor: next_executor % threads,
                producers,
            });
            next_executor += 1;
        }
        let mut consumer_conns = Vec::new();
        let mut consumer_index = 0usize;
        for _ in 0..args.consumers {
            let mut consumers = Vec::new();
            for c in 0..args.consumer_channel_count {
                consumers.push(ConsumerPlan {
                    channel: c as u16 + 1,
                    queue: consumer_index % queues.len(),
                });
                consumer_index += 1;
            }
            consumer_conns.push(ConsumerConn {
                executor: next_executor % threads,
                consumers,
            });
            next_executor += 1;
        }
        if args.consumers > 0 && consumer_index < queues.len() {
            notes.push(format!(
                "{} queues but only {consumer_index} consumers: some queues have no consumer",
                queues.len()
            ));
        }
        Ok(Plan {
            cpus: args.cpus.clone(),
            args,
            uri,
            addr,
            threads,
            body_size,
            queues,
            delete_queues_at_end,
            binding_keys,
            producer_conns,
            consumer_conns,
            multi_ack_every,
            notes,
        })
    }
}

/// PerfTest's flags of more than one letter, and the long names clap knows them by.
const PERFTEST_LONG_SHORTS: [(&str, &str); 4] = [
    ("-qp", "--queue-pattern"),
    ("-qpf", "--queue-pattern-from"),
    ("-qpt", "--queue-pattern-to"),
    ("-ad", "--auto-delete"),
];

/// The command line with PerfTest's flags of more than one letter (`-qp`, `-qpf`, `-qpt`,
/// `-ad`) rewritten to their long names, which clap (one letter per short flag) can
/// parse. `-qp=x` becomes `--queue-pattern=x`.
pub fn perftest_argv(argv: impl IntoIterator<Item = String>) -> Vec<String> {
    argv.into_iter()
        .map(|arg| {
            let (flag, value) = match arg.split_once('=') {
                Some((flag, value)) => (flag, Some(value)),
                None => (arg.as_str(), None),
            };
            match PERFTEST_LONG_SHORTS
                .iter()
                .find(|(short, _)| *short == flag)
            {
                Some((_, long)) => match value {
                    Some(value) => format!("{long}={value}"),
                    None => long.to_string(),
                },
                None => arg,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(line: &str) -> Result<Plan> {
        let argv = perftest_argv(line.split_whitespace().map(String::from));
        Plan::from_args(Args::try_parse_from(argv).map_err(|e| Error::new(e.to_string()))?)
    }

    #[test]
    fn perftest_command_lines_parse_as_perftest_reads_them() {
        let p = plan(
            "loadgen -h amqp://u:p@127.0.0.1:5673/%2f -x 2 -y 3 -X 4 -Y 5 -f persistent -f mandatory \
             -qp q-%d -qpf 3 -qpt 5 -p -ad false -M 8192 -s 12 -z 1",
        )
        .unwrap();
        assert_eq!(p.uri.port, 5673);
        assert_eq!((p.producer_count(), p.consumer_count()), (8, 15));
        assert!(p.args.persistent && p.args.mandatory && p.args.predeclared);
        assert!(!p.args.auto_delete);
        assert_eq!(p.queues, ["q-3", "q-4", "q-5"]);
        assert_eq!((p.args.framemax, p.body_size), (8192, 12));
        let p = plan("loadgen -f persistent mandatory -z 1 -s 4").unwrap();
        assert!(p.args.persistent && p.args.mandatory);
        assert_eq!(p.body_size, BODY_SIZE_MIN);
    }

    #[test]
    fn incomplete_queue_patterns_and_small_frames_are_refused() {
        assert!(plan("loadgen -qp q-%d -z 1").is_err());
        assert!(plan("loadgen -qp q-%d -qpf 1 -z 1").is_err());
        assert!(plan("loadgen -qp q-%d -qpf 3 -qpt 2 -z 1").is_err());
        assert!(plan("loadgen -qp q -qpf 1 -qpt 2 -z 1").is_err());
        assert!(plan("loadgen -M 1024 -z 1").is_err());
        assert!(plan("loadgen -f durable -z 1").is_err());
        let p = plan("loadgen --queues 2 -z 1").unwrap();
        assert_eq!(p.queues, ["perf-test-1", "perf-test-2"]);
    }
}

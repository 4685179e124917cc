//! Command-line flags, in RabbitMQ PerfTest's vocabulary where it has a word for the
//! idea, and the `Plan` derived from them: which queues, which keys, which producer
//! and consumer goes to which executor.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::Parser;

use crate::body::BODY_HEADER_SIZE;
use crate::error::{Error, Result};
use crate::uri::AmqpUri;

/// loadgen: an AMQP 0-9-1 load generator in the style of RabbitMQ PerfTest, with
/// honest (coordinated-omission-corrected) HDR latency, loss and duplicate checks.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// Broker URI: amqp://user:pass@host:port/vhost.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// Producer connections.
    #[arg(short = 'x', long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer connections.
    #[arg(short = 'y', long, default_value_t = 1)]
    pub consumers: usize,
    /// Channels per producer connection; each channel is one producer with its own id.
    #[arg(short = 'Y', long, default_value_t = 1)]
    pub producer_channel_count: usize,
    /// Channels per consumer connection; each channel is one consumer.
    #[arg(long, default_value_t = 1)]
    pub consumer_channel_count: usize,
    /// Queue name (one queue). Default: a name of this run's own, deleted at the end.
    #[arg(short = 'u', long)]
    pub queue: Option<String>,
    /// Number of queues, named after --queue-pattern (perf-test-1, perf-test-2, ...).
    #[arg(long)]
    pub queues: Option<usize>,
    /// Name pattern for --queues; %d is replaced by 1..=N.
    #[arg(long, default_value = "perf-test-%d")]
    pub queue_pattern: String,
    /// Body size in bytes (at least 20: producer id, sequence, timestamp).
    #[arg(short = 's', long, default_value_t = BODY_HEADER_SIZE)]
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
    /// Persistent messages (delivery_mode 2) and durable queues.
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
    /// Publish with mandatory=true; unroutable messages come back as basic.return.
    #[arg(long)]
    pub mandatory: bool,
    /// Declare queues with auto_delete.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_delete: bool,
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

    pub fn from_args(args: Args) -> Result<Plan> {
        let mut notes = Vec::new();
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
        let body_size = if args.size < BODY_HEADER_SIZE {
            notes.push(format!(
                "body size raised from {} to {BODY_HEADER_SIZE} bytes, the minimum (producer id, sequence, timestamp)",
                args.size
            ));
            BODY_HEADER_SIZE
        } else {
            args.size
        };
        if args.time.is_none() && args.pmessages.is_none() && args.producers > 0 {
            return Err(Error::new("say how long to run: -z SECONDS or -C MESSAGES"));
        }
        if args.rate < 0.0 || !args.rate.is_finite() {
            return Err(Error::new(
                "--rate must be a positive number (0 = unlimited)",
            ));
        }
        let (queues, delete_queues_at_end) = match (args.queues, &args.queue) {
            (Some(_), Some(_)) => return Err(Error::new("use either -u QUEUE or --queues N")),
            (Some(0), None) => return Err(Error::new("--queues must be at least 1")),
            (Some(n), None) => {
                if !args.queue_pattern.contains("%d") {
                    return Err(Error::new("--queue-pattern needs a %d"));
                }
                let names = (1..=n)
                    .map(|i| args.queue_pattern.replace("%d", &i.to_string()))
                    .collect();
                (names, false)
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

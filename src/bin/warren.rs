//! The broker: flags → Config → shards.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing::{error, warn};

use warren::config::{self, Config};

/// warren: an AMQP 0-9-1 message broker, wire-compatible with RabbitMQ.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on; repeat for several. Default: 0.0.0.0:5672 and [::]:5672.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Where durable state is kept: durable definitions in DIR/definitions.json,
    /// persistent messages in DIR/messages. Put it on a real filesystem
    /// (ext4, xfs): tmpfs refuses O_DIRECT and loses everything on reboot.
    #[arg(long, default_value = "warren-data", value_name = "DIR")]
    data_dir: PathBuf,
    /// A RabbitMQ definitions file (`rabbitmqctl export_definitions`) to import at start.
    #[arg(long, value_name = "FILE")]
    definitions: Option<PathBuf>,
    /// Number of shards (one executor per CPU). Default: the CPUs this process may use.
    #[arg(long)]
    shards: Option<usize>,
    /// CPUs to pin the shards to, e.g. 0,1.
    #[arg(long, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// A user created at start with full access (besides guest/guest, loopback only).
    #[arg(long, env = "WARREN_DEFAULT_USER")]
    default_user: Option<String>,
    /// The default user's password.
    #[arg(long, env = "WARREN_DEFAULT_PASS", hide_env_values = true)]
    default_pass: Option<String>,
    /// Memory above which publishers are blocked: a fraction of RAM (0.4) or an
    /// amount (1073741824, 1024MiB, 1GB), as RabbitMQ's vm_memory_high_watermark.
    #[arg(long, default_value = "0.4", value_name = "FRACTION|AMOUNT")]
    vm_memory_high_watermark: String,
    /// Free disk space on the data directory's filesystem below which publishers are
    /// blocked: an amount (50MB, 1GB, 2GiB, bytes) or mem_relative:FACTOR of RAM.
    #[arg(long, default_value = "50MB", value_name = "AMOUNT")]
    disk_free_limit: String,
    /// Bytes per message store segment file (at least 4096). A segment is
    /// deleted once every message in it is gone.
    #[arg(long, default_value_t = config::SEGMENT_SIZE, value_name = "BYTES")]
    segment_size: u64,
    /// Bytes of ready messages a queue keeps in memory; past it, new
    /// messages wait in the message store and are read back ahead of
    /// delivery (transient ones are written there for it).
    #[arg(long, default_value_t = config::QUEUE_WINDOW_BYTES, value_name = "BYTES")]
    queue_window: u64,
    /// Bytes of messages all queues of a shard keep in memory; past it,
    /// every queue pages new messages out.
    #[arg(long, default_value_t = config::SHARD_WINDOW_BYTES, value_name = "BYTES")]
    shard_window: u64,
    /// The largest message body a client may publish, in bytes (RabbitMQ's
    /// max_message_size; at most 536870912). A larger one closes the
    /// channel with 406 PRECONDITION_FAILED.
    #[arg(long, default_value_t = config::MESSAGE_SIZE_MAX, value_name = "BYTES")]
    max_message_size: u64,
    /// Microseconds an idle shard keeps polling before it sleeps: spares
    /// the wake-up (~0.1 ms) of a shard whose consumers' queues live on
    /// another shard, at the cost of that much CPU after each burst of
    /// work. Works only on pinned shards. See tuning.md.
    #[arg(long, default_value_t = 0, value_name = "MICROSECONDS")]
    spin_before_park_us: u64,
    /// error, warn, info, debug or trace (or a tracing filter such as warren=debug).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();

    let cpus_available = core_affinity::get_core_ids()
        .map(|c| c.len())
        .unwrap_or(1)
        .max(1);
    let shards = args
        .shards
        .or(args.cpus.as_ref().map(|c| c.len()))
        .unwrap_or(cpus_available)
        .max(1);
    let listen = if args.listen.is_empty() {
        let mut both = vec![SocketAddr::from(([0, 0, 0, 0], config::AMQP_PORT))];
        if ipv6_available() {
            both.push(SocketAddr::from(([0u16; 8], config::AMQP_PORT)));
        }
        both
    } else {
        args.listen
    };
    let default_user = match (args.default_user, args.default_pass) {
        (Some(user), Some(pass)) => Some((user, pass)),
        (Some(user), None) => {
            error!(%user, "--default-user needs --default-pass (or WARREN_DEFAULT_PASS)");
            return ExitCode::from(2);
        }
        _ => None,
    };
    // Parsed here rather than by clap so that a bad value exits with 1 and
    // a sentence, like every other refusal to start.
    let memory_high_watermark = match args.vm_memory_high_watermark.parse() {
        Ok(watermark) => watermark,
        Err(e) => {
            error!("{}", e);
            return ExitCode::FAILURE;
        }
    };
    let disk_free_limit = match args.disk_free_limit.parse() {
        Ok(limit) => limit,
        Err(e) => {
            error!("{}", e);
            return ExitCode::FAILURE;
        }
    };
    if args.max_message_size > config::MESSAGE_SIZE_LIMIT {
        error!(
            max_message_size = args.max_message_size,
            limit = config::MESSAGE_SIZE_LIMIT,
            "--max-message-size is larger than the largest allowed"
        );
        return ExitCode::FAILURE;
    }
    // Tests and benchmarks only: see config::PlacementTest.
    let placement_test = match std::env::var(config::PLACEMENT_TEST_ENV) {
        Err(_) => None,
        Ok(value) => match config::PlacementTest::parse(&value) {
            Ok(placement) => {
                warn!(
                    ?placement,
                    "placement forced for tests ({})",
                    config::PLACEMENT_TEST_ENV
                );
                Some(placement)
            }
            Err(e) => {
                error!("{}", e);
                return ExitCode::FAILURE;
            }
        },
    };
    let config = Config {
        listen,
        data_dir: args.data_dir,
        shards,
        cpus: args.cpus,
        default_user,
        definitions_import: args.definitions,
        memory_high_watermark,
        disk_free_limit,
        segment_size: args.segment_size.max(config::SEGMENT_SIZE_MIN),
        queue_window_bytes: args.queue_window,
        shard_window_bytes: args.shard_window,
        message_size_max: args.max_message_size,
        placement_test,
        spin_before_park: std::time::Duration::from_micros(args.spin_before_park_us),
        ..Config::default()
    };
    // The data directory is created (0700) and locked by shard::run.
    match warren::shard::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{}", e);
            ExitCode::FAILURE
        }
    }
}

fn ipv6_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

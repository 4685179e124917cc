//! The broker: flags (and `--config FILE`) → Config → shards.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use tracing::{error, warn};

use warren::config::{self, Config};

// jemalloc rather than glibc's malloc: a message's buffers and the batches
// between shards are often freed by another shard than the one that
// allocated them, and glibc then takes the allocating thread's arena lock,
// which the two shards of a 2-CPU machine contended on (futex waits in
// every cross-shard placement). Measured with loadgen in docs/performance-history.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Microseconds between two batches of messages a shard sends another
    /// shard, unless the batch is full: fewer, larger batches spare both
    /// shards wake-ups, for at most this much wait on a busy path. Zero
    /// sends at the end of every reactor turn; at most 100000. See tuning.md.
    #[arg(
        long,
        default_value_t = config::MAILBOX_INTERVAL.as_micros() as u64,
        value_name = "MICROSECONDS",
        value_parser = clap::value_parser!(u64).range(0..=100_000)
    )]
    mailbox_interval_us: u64,
    /// Address of the management HTTP API (RabbitMQ's, on its own thread);
    /// repeat for several. Default: 0.0.0.0:15672 and [::]:15672.
    #[arg(long, value_name = "ADDR:PORT")]
    management_listen: Vec<SocketAddr>,
    /// Run without the management HTTP API.
    #[arg(long, conflicts_with_all = ["management_listen", "management_tls_listen"])]
    no_management: bool,
    /// Which shard a new queue lives on (RabbitMQ's queue_leader_locator):
    /// client-local, the shard of the connection that declares it, or
    /// balanced, spread over the shards in turn. A queue's
    /// x-queue-leader-locator (or x-queue-master-locator) argument
    /// overrides it. See tuning.md.
    #[arg(long, default_value = "client-local", value_name = "LOCATOR")]
    queue_leader_locator: config::QueueLeaderLocator,
    /// Address of the Prometheus metrics endpoint (/metrics, as RabbitMQ's
    /// rabbitmq_prometheus); repeat for several. Default: 0.0.0.0:15692 and
    /// [::]:15692.
    #[arg(long, value_name = "ADDR:PORT")]
    prometheus_listen: Vec<SocketAddr>,
    /// Run without the Prometheus metrics endpoint.
    #[arg(long, conflicts_with_all = ["prometheus_listen", "prometheus_tls_listen"])]
    no_prometheus: bool,
    /// error, warn, info, debug or trace (or a tracing filter such as warren=debug).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// How log lines are written to stderr: text (one line each, as journald
    /// reads them) or json (one JSON object per line).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// A TOML file holding any of these settings under the flags' names
    /// (`data-dir = "/var/lib/warren"`, `tls-listen = ["0.0.0.0:5671"]`);
    /// flags and environment variables override it. An unknown key is refused.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address for amqps (AMQP over TLS); repeat for several. Default, when
    /// --tls-cert is given: 0.0.0.0:5671 and [::]:5671.
    #[arg(long, value_name = "ADDR:PORT")]
    tls_listen: Vec<SocketAddr>,
    /// The server's certificate chain (PEM, leaf first); turns TLS on.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM). SIGHUP reads certificate, key and CA again.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates are verified against.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Ask TLS clients for a certificate and verify it against --tls-ca
    /// (RabbitMQ's verify_peer); needed for the EXTERNAL mechanism.
    #[arg(long)]
    tls_verify_peer: bool,
    /// With --tls-verify-peer: refuse TLS clients that send no certificate
    /// (RabbitMQ's fail_if_no_peer_cert).
    #[arg(long)]
    tls_fail_if_no_peer_cert: bool,
    /// Where EXTERNAL takes the user name from in a client certificate:
    /// common_name or subject_alternative_name (RabbitMQ's ssl_cert_login_from).
    #[arg(long, default_value = "common_name", value_name = "FIELD")]
    tls_cert_login_from: String,
    /// Address of the management API over HTTPS (RabbitMQ's management.ssl,
    /// usually port 15671), with the --tls-cert and --tls-key files; repeat
    /// for several. Given alone, without --management-listen, the API is
    /// served over HTTPS only, as RabbitMQ does.
    #[arg(long, value_name = "ADDR:PORT")]
    management_tls_listen: Vec<SocketAddr>,
    /// Address of /metrics over HTTPS (RabbitMQ's prometheus.ssl, usually
    /// port 15691), with the --tls-cert and --tls-key files; repeat for
    /// several. Given alone, without --prometheus-listen, /metrics is
    /// served over HTTPS only.
    #[arg(long, value_name = "ADDR:PORT")]
    prometheus_tls_listen: Vec<SocketAddr>,
}

/// The flags, with the settings of `--config FILE` for those given neither
/// on the command line nor in the environment. The file's keys are the
/// flags' names (with `-` or `_`); each becomes the flag it names, so it is
/// parsed and checked exactly as the flag is. Err names what is wrong.
fn args_with_config_file() -> Result<Args, String> {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    let command = Args::command();
    let matches = command.clone().get_matches_from(argv.clone());
    let Some(path) = matches.get_one::<PathBuf>("config") else {
        return Args::from_arg_matches(&matches).map_err(|e| e.to_string());
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {}", path.display(), e))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("--config {}: {}", path.display(), e))?;
    for (key, value) in &table {
        let id = key.replace('-', "_");
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == id.as_str() && id != "config")
            .ok_or_else(|| format!("--config {}: unknown key `{}`", path.display(), key))?;
        if matches!(
            matches.value_source(&id),
            Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
        ) {
            continue;
        }
        let flag = format!("--{}", arg.get_long().unwrap_or(key.as_str()));
        let values = match value {
            toml::Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        for value in values {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(on) if !arg.get_action().takes_values() => {
                    if on {
                        argv.push(flag.clone().into());
                    }
                    continue;
                }
                toml::Value::Boolean(on) => on.to_string(),
                other => {
                    return Err(format!(
                        "--config {}: `{}` cannot be {}",
                        path.display(),
                        key,
                        other.type_str()
                    ))
                }
            };
            argv.push(format!("{flag}={text}").into());
        }
    }
    Args::try_parse_from(argv).map_err(|e| format!("--config {}: {}", path.display(), e))
}

/// The TLS settings from the `--tls-*` flags; None without --tls-cert.
fn tls_config(args: &Args) -> Result<Option<config::TlsConfig>, String> {
    let (cert, key) = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        (None, None) => {
            for (given, flag) in [
                (&args.tls_listen, "--tls-listen"),
                (&args.management_tls_listen, "--management-tls-listen"),
                (&args.prometheus_tls_listen, "--prometheus-tls-listen"),
            ] {
                if !given.is_empty() {
                    return Err(format!("{flag} needs --tls-cert and --tls-key"));
                }
            }
            return Ok(None);
        }
        _ => return Err("TLS needs both --tls-cert and --tls-key".into()),
    };
    if args.tls_fail_if_no_peer_cert && !args.tls_verify_peer {
        return Err("--tls-fail-if-no-peer-cert needs --tls-verify-peer".into());
    }
    let listen = if args.tls_listen.is_empty() {
        wildcard_pair(config::AMQPS_PORT)
    } else {
        args.tls_listen.clone()
    };
    Ok(Some(config::TlsConfig {
        listen,
        cert,
        key,
        ca: args.tls_ca.clone(),
        verify_peer: args.tls_verify_peer,
        fail_if_no_peer_cert: args.tls_fail_if_no_peer_cert,
        cert_login_from: args
            .tls_cert_login_from
            .parse()
            .map_err(|e| format!("--tls-cert-login-from {e}"))?,
    }))
}

/// 0.0.0.0:PORT and, where the host has IPv6, [::]:PORT.
fn wildcard_pair(port: u16) -> Vec<SocketAddr> {
    let mut both = vec![SocketAddr::from(([0, 0, 0, 0], port))];
    if ipv6_available() {
        both.push(SocketAddr::from(([0u16; 8], port)));
    }
    both
}

fn main() -> ExitCode {
    let args = match args_with_config_file() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("warren: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if args.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let tls = match tls_config(&args) {
        Ok(tls) => tls,
        Err(e) => {
            error!("{}", e);
            return ExitCode::FAILURE;
        }
    };

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
        wildcard_pair(config::AMQP_PORT)
    } else {
        args.listen
    };
    let management_listen = if args.no_management {
        Vec::new()
    } else if args.management_listen.is_empty() && args.management_tls_listen.is_empty() {
        let mut both = vec![SocketAddr::from(([0, 0, 0, 0], config::MANAGEMENT_PORT))];
        if ipv6_available() {
            both.push(SocketAddr::from(([0u16; 8], config::MANAGEMENT_PORT)));
        }
        both
    } else {
        args.management_listen
    };
    let prometheus_listen = if args.no_prometheus {
        Vec::new()
    } else if args.prometheus_listen.is_empty() && args.prometheus_tls_listen.is_empty() {
        let mut both = vec![SocketAddr::from(([0, 0, 0, 0], config::PROMETHEUS_PORT))];
        if ipv6_available() {
            both.push(SocketAddr::from(([0u16; 8], config::PROMETHEUS_PORT)));
        }
        both
    } else {
        args.prometheus_listen
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
    // Tests only: a slow disk (see config::SYNC_DELAY_TEST_ENV).
    let sync_delay_test = match std::env::var(config::SYNC_DELAY_TEST_ENV) {
        Err(_) => None,
        Ok(value) => match value.trim().parse::<u64>() {
            Ok(ms) => {
                warn!(
                    delay_ms = ms,
                    "every synced store batch slowed for tests ({})",
                    config::SYNC_DELAY_TEST_ENV
                );
                Some(std::time::Duration::from_millis(ms))
            }
            Err(_) => {
                error!(
                    "{}: {:?} is not a number of milliseconds",
                    config::SYNC_DELAY_TEST_ENV,
                    value
                );
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
        sync_delay_test,
        spin_before_park: std::time::Duration::from_micros(args.spin_before_park_us),
        mailbox_interval: std::time::Duration::from_micros(args.mailbox_interval_us),
        management_listen,
        queue_leader_locator: args.queue_leader_locator,
        prometheus_listen,
        tls,
        management_tls_listen: args.management_tls_listen,
        prometheus_tls_listen: args.prometheus_tls_listen,
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

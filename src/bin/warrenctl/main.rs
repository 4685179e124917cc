//! warrenctl: operate a warren broker the way rabbitmqctl operates RabbitMQ, with
//! rabbitmqctl's command names, columns, output and exit codes, over the management HTTP
//! API (so it works against RabbitMQ with the management plugin too).
//!
//! This binary owns the command line (this file), the HTTP client (`client`), the
//! columns of the list commands (`columns`), the output formats (`output`) and the
//! commands themselves (`commands`). It imports only external crates (clap, ureq,
//! base64, serde_json) and nothing of the broker: tests/layers.rs checks it.

mod client;
mod columns;
mod commands;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use client::{exit, Client, Failure, Target};
use columns::*;
use output::{Formatter, Output};

const DEFAULT_URL: &str = "http://guest:guest@localhost:15672";

/// How long one HTTP request may take when `--timeout` is not given (rabbitmqctl's list
/// commands wait 60 seconds by default).
const REQUEST_TIMEOUT_S: u64 = 60;

/// How long `await_startup` waits when `--timeout` is not given (rabbitmqctl's default).
const AWAIT_STARTUP_TIMEOUT_S: u64 = 300;

const AFTER_HELP: &str = "\
Commands are grouped as rabbitmqctl groups them:
  Nodes:           await_startup
  Cluster:         cluster_status
  Users:           add_user, delete_user, change_password, set_user_tags, list_users
  Access control:  set_permissions, list_permissions, list_vhosts
  Monitoring:      list_queues, list_exchanges, list_bindings, list_connections,
                   list_channels, list_consumers, status
  Policies:        set_policy, clear_policy, list_policies
  Virtual hosts:   add_vhost, delete_vhost, trace_on, trace_off
  Trace log files: list_traces, add_trace, delete_trace, list_trace_files,
                   get_trace_file, delete_trace_file (rabbitmq_tracing's traces)
  Definitions:     export_definitions, import_definitions
  Operations:      close_connection, reload_tls_certificates
  Queues:          purge_queue, delete_queue

warrenctl talks to the management HTTP API given by --url (or WARRENCTL_URL), as the
user in that URL; it needs a user tagged administrator for most commands (monitoring is
enough to list).

Exit codes (sysexits, as rabbitmqctl): 0 success, 64 usage error, 65 bad data or no such
object (vhost, queue, policy), 67 no such user, 69 broker unreachable, 70 the broker
failed or refused the change, 75 timed out, 77 login refused or insufficient rights.

Use 'warrenctl help <command>' to learn more about a specific command.";

#[derive(Parser)]
#[command(
    name = "warrenctl",
    version,
    about = "Operate a warren (or RabbitMQ) broker through its management HTTP API, as rabbitmqctl does",
    after_help = AFTER_HELP,
    disable_help_subcommand = false,
    arg_required_else_help = true
)]
struct Cli {
    /// The management API, with the user and password to act as
    /// (percent-encode special characters in them).
    #[arg(long, global = true, env = "WARRENCTL_URL", default_value = DEFAULT_URL, value_name = "URL",
          hide_env_values = true)]
    url: String,

    /// For commands scoped to a virtual host: the virtual host to use.
    #[arg(
        short = 'p',
        long = "vhost",
        global = true,
        default_value = "/",
        value_name = "VHOST"
    )]
    vhost: String,

    /// Suppress informational messages.
    #[arg(short, long, global = true)]
    quiet: bool,

    /// Suppress informational messages and the table header row.
    #[arg(short, long, global = true)]
    silent: bool,

    /// Print tables without their header row.
    #[arg(long, global = true)]
    no_table_headers: bool,

    /// Output format: tab-separated table (default) or JSON.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "table",
        value_name = "FORMAT"
    )]
    formatter: Formatter,

    /// Operation timeout in seconds (each HTTP request; for await_startup, the whole wait).
    #[arg(short, long, global = true, value_name = "SECONDS")]
    timeout: Option<u64>,

    #[command(subcommand)]
    command: Command,
}

fn columns_help(keys: &[&str], default: &[&str]) -> String {
    format!(
        "Columns to show (space- or comma-separated), each one of: {}. Default: {}",
        keys.join(", "),
        default.join(" ")
    )
}

#[derive(Subcommand)]
#[command(rename_all = "snake_case")]
enum Command {
    /// Lists queues and their properties
    #[command(
        after_help = "With --vhost (-p) to list another virtual host's queues. \
        Message counts come from the broker's statistics and may lag a moment behind."
    )]
    ListQueues {
        #[arg(value_name = "COLUMN", help = columns_help(QUEUE_KEYS, QUEUE_DEFAULT))]
        columns: Vec<String>,
    },
    /// Lists exchanges
    ListExchanges {
        #[arg(value_name = "COLUMN", help = columns_help(EXCHANGE_KEYS, EXCHANGE_DEFAULT))]
        columns: Vec<String>,
    },
    /// Lists all bindings on a vhost
    ListBindings {
        #[arg(value_name = "COLUMN", help = columns_help(BINDING_KEYS, BINDING_DEFAULT))]
        columns: Vec<String>,
    },
    /// Lists AMQP 0.9.1 connections for the node
    #[command(
        after_help = "The pid column shows the connection's name, which close_connection takes."
    )]
    ListConnections {
        #[arg(value_name = "COLUMN", help = columns_help(CONNECTION_KEYS, CONNECTION_DEFAULT))]
        columns: Vec<String>,
    },
    /// Lists all channels in the node
    #[command(
        after_help = "The pid column shows the channel's name, the connection column its connection's name."
    )]
    ListChannels {
        #[arg(value_name = "COLUMN", help = columns_help(CHANNEL_KEYS, CHANNEL_DEFAULT))]
        columns: Vec<String>,
    },
    /// Lists all consumers for a vhost
    #[command(after_help = "The channel_pid column shows the channel's name.")]
    ListConsumers {
        #[arg(value_name = "COLUMN", help = columns_help(CONSUMER_KEYS, CONSUMER_DEFAULT))]
        columns: Vec<String>,
    },
    /// Displays status of a node
    Status,
    /// Displays all the nodes in the cluster grouped by node type, together with the currently running nodes
    ClusterStatus,
    /// Enables the firehose tracer for a virtual host (--vhost, default /)
    #[command(
        after_help = "Every message published in the virtual host is then copied to the \
        topic exchange amq.rabbitmq.trace as publish.<exchange>, and every delivery as deliver.<queue>."
    )]
    TraceOn,
    /// Disables the firehose tracer for a virtual host (--vhost, default /)
    TraceOff,
    /// Lists the trace log files' traces of a virtual host (--vhost, default /)
    #[command(
        after_help = "As the rabbitmq_tracing plugin's traces: each writes the messages whose \
        trace routing key (publish.<exchange>, deliver.<queue>) matches its pattern to NAME.log. \
        The dropped column counts records the broker dropped because the file could not keep up."
    )]
    ListTraces,
    /// Starts a trace writing a log file NAME.log in a virtual host (--vhost, default /)
    #[command(
        after_help = "The pattern is a topic pattern over publish.<exchange> and deliver.<queue>: \
        # traces everything, publish.# only publishes, deliver.myqueue one queue's deliveries. \
        A vhost's first trace turns its firehose on; stopping its last turns it off."
    )]
    AddTrace {
        /// The trace's name; its file is NAME.log
        name: String,
        /// The records' format
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
        /// Topic pattern over publish.<exchange> and deliver.<queue>
        #[arg(long, default_value = "#")]
        pattern: String,
        /// Payload bytes to keep in each record (no limit when omitted; 0 for none)
        #[arg(long = "max-payload-bytes", value_name = "BYTES")]
        max_payload_bytes: Option<u64>,
    },
    /// Stops a trace of a virtual host (--vhost, default /); its log file stays
    DeleteTrace {
        /// The trace's name
        name: String,
    },
    /// Lists the trace log files and their sizes
    ListTraceFiles,
    /// Writes a trace log file to a file, or to standard output
    GetTraceFile {
        /// The file's name, as list_trace_files shows it (NAME.log)
        name: String,
        /// File to write, or - (the default) for standard output
        #[arg(allow_hyphen_values = true, default_value = "-")]
        path: String,
    },
    /// Deletes a trace log file
    DeleteTraceFile {
        /// The file's name, as list_trace_files shows it (NAME.log)
        name: String,
    },
    /// Creates a new user in the internal database. This user will have no permissions for any virtual hosts by default.
    AddUser {
        /// Name of the user to create
        username: String,
        /// The user's password; read from standard input when omitted
        password: Option<String>,
    },
    /// Removes a user from the internal database
    DeleteUser {
        /// Name of the user to delete
        username: String,
    },
    /// Changes the user password
    ChangePassword {
        /// Name of the user whose password to change
        username: String,
        /// The new password
        new_password: String,
    },
    /// Sets user tags
    #[command(
        after_help = "The tags replace the user's current ones; none clears them. \
        Tags the broker knows: administrator, monitoring, policymaker, management, impersonator."
    )]
    SetUserTags {
        /// Name of the user
        username: String,
        /// Tags to set (space-separated)
        tags: Vec<String>,
    },
    /// List user names and tags
    ListUsers,
    /// Sets user permissions for a vhost (--vhost, default /)
    SetPermissions {
        /// Name of the user
        username: String,
        /// Regular expression of the resources the user may configure
        #[arg(allow_hyphen_values = true)]
        conf: String,
        /// Regular expression of the resources the user may write to
        #[arg(allow_hyphen_values = true)]
        write: String,
        /// Regular expression of the resources the user may read from
        #[arg(allow_hyphen_values = true)]
        read: String,
    },
    /// Lists user permissions in a virtual host (--vhost, default /)
    ListPermissions,
    /// Creates a virtual host
    AddVhost {
        /// Name of the virtual host
        name: String,
        /// A free-form description
        #[arg(long)]
        description: Option<String>,
        /// Tags, comma-separated
        #[arg(long)]
        tags: Option<String>,
        /// The queue type of queues declared without x-queue-type (classic or quorum)
        #[arg(long = "default-queue-type")]
        default_queue_type: Option<String>,
    },
    /// Deletes a virtual host
    DeleteVhost {
        /// Name of the virtual host
        name: String,
    },
    /// Lists virtual hosts
    ListVhosts {
        #[arg(value_name = "COLUMN", help = columns_help(VHOST_KEYS, VHOST_DEFAULT))]
        columns: Vec<String>,
    },
    /// Sets or updates a policy
    SetPolicy {
        /// Policy name (identifier)
        name: String,
        /// Regular expression pattern that will be used to match queues, exchanges, etc
        pattern: String,
        /// Policy definition (arguments). Must be a valid JSON document, e.g. '{"max-length":100}'
        definition: String,
        /// Policy priority (the highest-priority matching policy applies)
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
        /// What the policy applies to
        #[arg(long = "apply-to", default_value = "all", value_parser = ["queues", "exchanges", "all"])]
        apply_to: String,
    },
    /// Clears (removes) a policy
    ClearPolicy {
        /// Policy name
        name: String,
    },
    /// Lists all policies in a virtual host (--vhost, default /)
    ListPolicies,
    /// Purges a queue (removes all messages in it)
    PurgeQueue {
        /// Name of the queue to purge
        queue: String,
    },
    /// Deletes a queue
    DeleteQueue {
        /// Name of the queue to delete
        queue: String,
        /// Delete the queue only if it is empty (has no messages ready for delivery)
        #[arg(short = 'e', long = "if-empty")]
        if_empty: bool,
        /// Delete the queue only if it has no consumers
        #[arg(short = 'u', long = "if-unused")]
        if_unused: bool,
    },
    /// Exports definitions in JSON
    ExportDefinitions {
        /// File to write, or - for standard output
        #[arg(allow_hyphen_values = true)]
        path: String,
    },
    /// Imports definitions in JSON
    ImportDefinitions {
        /// File to read, or - (the default) for standard input
        #[arg(allow_hyphen_values = true, default_value = "-")]
        path: String,
    },
    /// Instructs the broker to close a connection
    CloseConnection {
        /// The connection's name, as 'list_connections name' shows it
        /// (e.g. "127.0.0.1:51234 -> 127.0.0.1:5672")
        connection: String,
        /// The reason given to the client
        explanation: String,
    },
    /// Reads the TLS certificate, key and CA files again (as SIGHUP does)
    #[command(
        after_help = "New TLS connections (amqps and HTTPS) use the files as they are now; \
        connections already open keep theirs. A file that cannot be used is refused with \
        the reason, and the certificate in use stays. Needs an administrator. \
        warren's own command (RabbitMQ has none: rabbitmqctl eval 'ssl:clear_pem_cache().')."
    )]
    ReloadTlsCertificates,
    /// Waits for the broker to start (its management API to answer)
    #[command(
        after_help = "Waits at most --timeout seconds (300 by default). Exits 0 once the \
        broker answers, 69 if it did not within the timeout, 77 if it refuses the login."
    )]
    AwaitStartup,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => exit::USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("{message}");
            ExitCode::from(code as u8)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let target = Target::parse(&cli.url)?;
    let out = Output {
        quiet: cli.quiet,
        silent: cli.silent,
        no_table_headers: cli.no_table_headers,
        formatter: cli.formatter,
    };
    let request_timeout = Duration::from_secs(cli.timeout.unwrap_or(REQUEST_TIMEOUT_S).max(1));
    if let Command::AwaitStartup = cli.command {
        let wait = Duration::from_secs(cli.timeout.unwrap_or(AWAIT_STARTUP_TIMEOUT_S));
        return commands::await_startup(&target, wait);
    }
    let client = Client::new(target, request_timeout);
    let c = commands::Ctx {
        client: &client,
        out,
        vhost: &cli.vhost,
        timeout_s: cli.timeout,
    };
    use Command::*;
    match cli.command {
        ListQueues { columns } => c.list_queues(&columns),
        ListExchanges { columns } => c.list_exchanges(&columns),
        ListBindings { columns } => c.list_bindings(&columns),
        ListConnections { columns } => c.list_connections(&columns),
        ListChannels { columns } => c.list_channels(&columns),
        ListConsumers { columns } => c.list_consumers(&columns),
        Status => c.status(),
        ClusterStatus => c.cluster_status(),
        TraceOn => c.trace(true),
        TraceOff => c.trace(false),
        ListTraces => c.list_traces(),
        AddTrace {
            name,
            format,
            pattern,
            max_payload_bytes,
        } => c.add_trace(&name, &format, &pattern, max_payload_bytes),
        DeleteTrace { name } => c.delete_trace(&name),
        ListTraceFiles => c.list_trace_files(),
        GetTraceFile { name, path } => c.get_trace_file(&name, &path),
        DeleteTraceFile { name } => c.delete_trace_file(&name),
        AddUser { username, password } => c.add_user(&username, password),
        DeleteUser { username } => c.delete_user(&username),
        ChangePassword {
            username,
            new_password,
        } => c.change_password(&username, &new_password),
        SetUserTags { username, tags } => c.set_user_tags(&username, &tags),
        ListUsers => c.list_users(),
        SetPermissions {
            username,
            conf,
            write,
            read,
        } => c.set_permissions(&username, &conf, &write, &read),
        ListPermissions => c.list_permissions(),
        AddVhost {
            name,
            description,
            tags,
            default_queue_type,
        } => c.add_vhost(&name, description, tags, default_queue_type),
        DeleteVhost { name } => c.delete_vhost(&name),
        ListVhosts { columns } => c.list_vhosts(&columns),
        SetPolicy {
            name,
            pattern,
            definition,
            priority,
            apply_to,
        } => c.set_policy(&name, &pattern, &definition, priority, &apply_to),
        ClearPolicy { name } => c.clear_policy(&name),
        ListPolicies => c.list_policies(),
        PurgeQueue { queue } => c.purge_queue(&queue),
        DeleteQueue {
            queue,
            if_empty,
            if_unused,
        } => c.delete_queue(&queue, if_empty, if_unused),
        ExportDefinitions { path } => c.export_definitions(&path),
        ImportDefinitions { path } => c.import_definitions(&path),
        CloseConnection {
            connection,
            explanation,
        } => c.close_connection(&connection, &explanation),
        ReloadTlsCertificates => c.reload_tls_certificates(),
        AwaitStartup => Ok(()),
    }
}

//! The control plane's thread and the management HTTP API on it.
//!
//! One OS thread (`warren-mgmt`), never a shard, runs a current-thread
//! tokio runtime serving axum on `--management-listen` (and over HTTPS on
//! `--management-tls-listen`, see `https`). It reads shard
//! state by asking each shard over a crossbeam channel that the shard
//! drains from its tick (`broker::control`), and changes definitions
//! through the metadata owner on shard 0 as an AMQP declare does. The
//! message path holds nothing for it: each shard owns its counters and a
//! request sums what the shards send.
//!
//! Built to be added to: warrenctl, policies, the firehose tracer's
//! controls and trace log files (whose writer has a thread of its own,
//! `trace_files`), Prometheus metrics and the dashboard are more routes on this
//! router (`api::router`) and more `ControlRequest`s, not new threads.
//!
//! It imports `broker` (the control types), `metadata`, `model`, `config`
//! and `util`; `shard` starts it and nothing else imports it.

pub(crate) mod access;
pub(crate) mod api;
pub(crate) mod auth;
pub(crate) mod dashboard;
pub(crate) mod error;
pub(crate) mod https;
pub(crate) mod json;
pub(crate) mod list;
pub(crate) mod plane;
pub(crate) mod policy;
pub(crate) mod prometheus;
pub(crate) mod queue_list;
pub(crate) mod rates;
pub(crate) mod trace_files;
pub(crate) mod trace_format;
pub(crate) mod traces;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::Sender;
use tracing::{error, info};

use crate::broker::control::Control;
use crate::model::alarms::AlarmBoard;

/// The RabbitMQ version whose management API warren's answers follow
/// (tools such as rabbitmqadmin read it from /api/overview).
pub(crate) const RABBITMQ_VERSION: &str = "3.10.0";

/// What the API shows of the node, fixed at start.
pub(crate) struct NodeInfo {
    /// `warren@HOST`, as RabbitMQ names nodes `rabbit@HOST`.
    pub(crate) name: String,
    pub(crate) shard_count: usize,
    pub(crate) started: Instant,
    pub(crate) amqp_listeners: Vec<SocketAddr>,
    pub(crate) management_listeners: Vec<SocketAddr>,
    pub(crate) alarm_board: Arc<AlarmBoard>,
    pub(crate) memory_limit_bytes: u64,
    pub(crate) disk_free_limit_bytes: u64,
    /// The process's resident memory (read when asked).
    pub(crate) resident_bytes: fn() -> u64,
    /// The data directory: trace log files go to its `traces/`.
    pub(crate) data_dir: std::path::PathBuf,
}

impl NodeInfo {
    pub(crate) fn amqp_host(&self) -> String {
        self.amqp_listeners
            .first()
            .map_or_else(String::new, |a| a.ip().to_string())
    }

    pub(crate) fn amqp_port(&self) -> u16 {
        self.amqp_listeners.first().map_or(0, |a| a.port())
    }
}

/// The node's name: `warren@` and the host name.
pub(crate) fn node_name() -> String {
    crate::util::node::name()
}

/// Why the management API (or the Prometheus endpoint) could not start.
#[derive(Debug)]
pub struct ManagementError {
    pub address: SocketAddr,
    pub error: std::io::Error,
    /// The Prometheus listener failed, not the management API's.
    pub prometheus: bool,
    /// An HTTPS listener failed (`--management-tls-listen`,
    /// `--prometheus-tls-listen`).
    pub tls: bool,
}

impl std::fmt::Display for ManagementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tls {
            let flag = if self.prometheus {
                "--prometheus-tls-listen"
            } else {
                "--management-tls-listen"
            };
            return write!(
                f,
                "the HTTPS listener cannot listen on {}: {} ({})",
                self.address, self.error, flag
            );
        }
        if self.prometheus {
            return write!(
                f,
                "the Prometheus endpoint cannot listen on {}: {} (--prometheus-listen, or \
                 --no-prometheus to run without it)",
                self.address, self.error
            );
        }
        write!(
            f,
            "the management API cannot listen on {}: {} (--management-listen, or \
             --no-management to run without it)",
            self.address, self.error
        )
    }
}

/// Binds each address, naming the one that failed.
fn bind_all(
    listen: &[SocketAddr],
    prometheus: bool,
    tls: bool,
) -> Result<Vec<(std::net::TcpListener, SocketAddr)>, ManagementError> {
    let mut listeners = Vec::new();
    for &address in listen {
        let failed = |error| ManagementError {
            address,
            error,
            prometheus,
            tls,
        };
        let listener = bind(address).map_err(failed)?;
        let bound = listener.local_addr().map_err(failed)?;
        listeners.push((listener, bound));
    }
    Ok(listeners)
}

/// Binds every management and Prometheus address, HTTP and HTTPS (so that
/// a taken port stops the broker before it serves, as RabbitMQ's plugins
/// do), then starts the control-plane thread, which serves them all.
pub(crate) fn start(
    listen: &[SocketAddr],
    prometheus_listen: &[SocketAddr],
    https: https::Https,
    shards: Vec<Sender<Control>>,
    mut node: NodeInfo,
) -> Result<(), ManagementError> {
    let listeners = bind_all(listen, false, false)?;
    let prometheus_listeners = bind_all(prometheus_listen, true, false)?;
    // HTTPS listeners exist only with a certificate (the flags are checked
    // at start).
    let (tls_listeners, prometheus_tls_listeners) = match &https.certificates {
        Some(_) => (
            bind_all(&https.management, false, true)?,
            bind_all(&https.prometheus, true, true)?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    let bound: Vec<SocketAddr> = listeners.iter().map(|(_, a)| *a).collect();
    node.management_listeners = bound.clone();
    let plane = plane::Plane::new(shards);
    let node = Arc::new(node);
    let app = api::App {
        plane: plane.clone(),
        node: node.clone(),
        rates: Arc::new(Mutex::new(rates::Rates::default())),
        auth_cache: Arc::new(Mutex::new(auth::AuthCache::default())),
        traces: traces::shared(&node.data_dir, node.name.clone(), node.shard_count),
        queue_catalog: Arc::new(Mutex::new(queue_list::QueueCatalog::default())),
    };
    let metrics = prometheus::Metrics { plane, node };
    for address in &bound {
        info!(address = %address, "management API listening");
    }
    for (_, address) in &prometheus_listeners {
        info!(address = %address, "prometheus metrics listening");
    }
    // Worded apart from the lines above, which tools read for the plain
    // HTTP address.
    for (_, address) in &tls_listeners {
        info!(address = %address, "management API (HTTPS) listening");
    }
    for (_, address) in &prometheus_tls_listeners {
        info!(address = %address, "prometheus metrics (HTTPS) listening");
    }
    let certificates = https.certificates;
    let mut routed: Vec<Routed> = Vec::new();
    if !listeners.is_empty() || !tls_listeners.is_empty() {
        let router = api::router(app.clone())
            .merge(https::routes(app, certificates.clone()))
            .merge(dashboard::router());
        for (listener, address) in listeners {
            routed.push((listener, address, router.clone(), None));
        }
        for (listener, address) in tls_listeners {
            routed.push((listener, address, router.clone(), certificates.clone()));
        }
    }
    if !prometheus_listeners.is_empty() || !prometheus_tls_listeners.is_empty() {
        let router = prometheus::router(metrics);
        for (listener, address) in prometheus_listeners {
            routed.push((listener, address, router.clone(), None));
        }
        for (listener, address) in prometheus_tls_listeners {
            routed.push((listener, address, router.clone(), certificates.clone()));
        }
    }
    std::thread::Builder::new()
        .name("warren-mgmt".into())
        .spawn(move || serve(routed))
        .map_err(|error| ManagementError {
            address: bound
                .first()
                .copied()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            error,
            prometheus: false,
            tls: false,
        })?;
    Ok(())
}

/// A bound listener, its routes, and its certificate if it serves HTTPS.
type Routed = (
    std::net::TcpListener,
    SocketAddr,
    axum::Router,
    Option<Arc<dyn https::Certificates>>,
);

fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    // [::] and 0.0.0.0 on one port, as the AMQP listeners are.
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn serve(listeners: Vec<Routed>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!(error = %e, "cannot start the management API's runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let mut servers = Vec::new();
        for (listener, address, router, certificates) in listeners {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(e) => {
                    error!(address = %address, error = %e, "cannot serve the management API");
                    continue;
                }
            };
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            let Some(certificates) = certificates else {
                servers.push(tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, service).await {
                        error!(address = %address, error = %e, "the management API stopped");
                    }
                }));
                continue;
            };
            let listener = match https::TlsListener::new(listener, certificates) {
                Ok(listener) => listener,
                Err(e) => {
                    error!(address = %address, error = %e, "cannot serve HTTPS");
                    continue;
                }
            };
            // axum gives a listener of its own the client's address
            // (ConnectInfo, which the API's loopback check reads) through
            // `tap_io`; there is nothing to do to the stream itself.
            let listener = axum::serve::ListenerExt::tap_io(listener, |_| {});
            servers.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, service).await {
                    error!(address = %address, error = %e, "the HTTPS listener stopped");
                }
            }));
        }
        for server in servers {
            let _ = server.await;
        }
    });
}

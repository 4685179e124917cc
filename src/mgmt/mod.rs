//! The control plane's thread and the management HTTP API on it.
//!
//! One OS thread (`warren-mgmt`), never a shard, runs a current-thread
//! tokio runtime serving axum on `--management-listen`. It reads shard
//! state by asking each shard over a crossbeam channel that the shard
//! drains from its tick (`broker::control`), and changes definitions
//! through the metadata owner on shard 0 as an AMQP declare does. The
//! message path holds nothing for it: each shard owns its counters and a
//! request sums what the shards send.
//!
//! Built to be added to: warrenctl, policies, the firehose tracer's
//! controls, Prometheus metrics and the dashboard are more routes on this
//! router (`api::router`) and more `ControlRequest`s, not new threads.
//!
//! It imports `broker` (the control types), `metadata`, `model`, `config`
//! and `util`; `shard` starts it and nothing else imports it.

pub(crate) mod access;
pub(crate) mod api;
pub(crate) mod auth;
pub(crate) mod dashboard;
pub(crate) mod error;
pub(crate) mod json;
pub(crate) mod list;
pub(crate) mod plane;
pub(crate) mod policy;
pub(crate) mod rates;

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
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length, which is passed; the
    // name is NUL-terminated within it when the call succeeds.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(0);
    let host = if ok && end > 0 {
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    } else {
        "localhost".to_string()
    };
    // RabbitMQ uses the short host name.
    let short = host.split('.').next().unwrap_or("localhost");
    format!("warren@{short}")
}

/// Why the management API could not start.
#[derive(Debug)]
pub struct ManagementError {
    pub address: SocketAddr,
    pub error: std::io::Error,
}

impl std::fmt::Display for ManagementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the management API cannot listen on {}: {} (--management-listen, or \
             --no-management to run without it)",
            self.address, self.error
        )
    }
}

/// Binds every management address (so that a taken port stops the broker
/// before it serves, as RabbitMQ's management plugin does), then starts
/// the control-plane thread. Returns the bound addresses.
pub(crate) fn start(
    listen: &[SocketAddr],
    shards: Vec<Sender<Control>>,
    mut node: NodeInfo,
) -> Result<Vec<SocketAddr>, ManagementError> {
    let mut listeners = Vec::new();
    for &address in listen {
        let listener = bind(address).map_err(|error| ManagementError { address, error })?;
        let bound = listener
            .local_addr()
            .map_err(|error| ManagementError { address, error })?;
        listeners.push((listener, bound));
    }
    let bound: Vec<SocketAddr> = listeners.iter().map(|(_, a)| *a).collect();
    node.management_listeners = bound.clone();
    let app = api::App {
        plane: plane::Plane::new(shards),
        node: Arc::new(node),
        rates: Arc::new(Mutex::new(rates::Rates::default())),
        auth_cache: Arc::new(Mutex::new(auth::AuthCache::default())),
    };
    for address in &bound {
        info!(address = %address, "management API listening");
    }
    std::thread::Builder::new()
        .name("warren-mgmt".into())
        .spawn(move || serve(app, listeners))
        .map_err(|error| ManagementError {
            address: bound
                .first()
                .copied()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            error,
        })?;
    Ok(bound)
}

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

fn serve(app: api::App, listeners: Vec<(std::net::TcpListener, SocketAddr)>) {
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
        let router = api::router(app).merge(dashboard::router());
        let mut servers = Vec::new();
        for (listener, address) in listeners {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(e) => {
                    error!(address = %address, error = %e, "cannot serve the management API");
                    continue;
                }
            };
            let service = router
                .clone()
                .into_make_service_with_connect_info::<SocketAddr>();
            servers.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, service).await {
                    error!(address = %address, error = %e, "the management API stopped");
                }
            }));
        }
        for server in servers {
            let _ = server.await;
        }
    });
}

//! HTTPS for the management API and the Prometheus endpoint (RabbitMQ's
//! `management.ssl` and `prometheus.ssl` listeners), and the administrator's
//! call that reads the TLS certificate files again.
//!
//! An HTTPS listener accepts sockets on its own task and handshakes each on
//! a task of its own (bounded in number and time), so that a client that
//! stalls mid-handshake holds up no one; axum is handed only finished TLS
//! streams (`TlsListener`). A client that speaks plain HTTP to the HTTPS
//! port is answered in plain HTTP that it must use https, and closed.
//!
//! The rustls configuration is built, and rebuilt on a reload, by
//! `net::tls`, which this layer may not import: the composition root
//! (`shard`) hands it in as a `Certificates`, so one reload (SIGHUP or the
//! call here) changes the certificate of every TLS listener, amqps and
//! HTTPS alike. Imports `config` and the management API's own modules.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::config;
use crate::mgmt::api::{no_content, ApiResult, App, Peer};
use crate::mgmt::auth::Level;
use crate::mgmt::error::ApiError;

/// The management API's call that reads the TLS files again. RabbitMQ has
/// none (its operators run `rabbitmqctl eval 'ssl:clear_pem_cache().'`),
/// hence a path under `/api/warren`.
pub(crate) const RELOAD_PATH: &str = "/api/warren/tls/reload";

/// The first byte of a TLS record carrying a handshake message: what every
/// TLS client sends first.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The answer to plain HTTP on an HTTPS port (as nginx answers it).
const PLAIN_HTTP_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\n\
Content-Length: 45\r\n\
Connection: close\r\n\
\r\n\
This port speaks HTTPS: use an https:// URL.\n";

/// The server's certificate, as `net::tls::TlsServer` keeps it.
pub(crate) trait Certificates: Send + Sync {
    /// The rustls configuration for a new HTTPS connection.
    fn https_config(&self) -> Arc<rustls::ServerConfig>;
    /// Reads the certificate, key and CA files again; every TLS listener's
    /// next handshake uses them. Err says why the ones in use stay.
    fn reload(&self) -> Result<(), String>;
}

/// The HTTPS listeners the management thread serves, and the certificate
/// they and the reload call use (None without `--tls-cert`).
#[derive(Default)]
pub(crate) struct Https {
    /// `--management-tls-listen`.
    pub(crate) management: Vec<SocketAddr>,
    /// `--prometheus-tls-listen`.
    pub(crate) prometheus: Vec<SocketAddr>,
    pub(crate) certificates: Option<Arc<dyn Certificates>>,
}

/// The reload call's route, for the management API's router.
pub(crate) fn routes(app: App, certificates: Option<Arc<dyn Certificates>>) -> Router {
    Router::new()
        .route(RELOAD_PATH, post(reload))
        .with_state((app, certificates))
}

/// `POST /api/warren/tls/reload`, administrators only: 204 once new
/// handshakes use the files as they are now; 400 naming the file and the
/// fault when they cannot be used, the certificate in use staying.
/// Connections already open keep the certificate they were accepted with.
async fn reload(
    State((app, certificates)): State<(App, Option<Arc<dyn Certificates>>)>,
    peer: Peer,
    headers: HeaderMap,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Administrator).await?;
    let Some(certificates) = certificates else {
        return Err(ApiError::bad_request(
            "TLS is not configured: warren was started without --tls-cert and --tls-key",
        ));
    };
    // Reading and parsing a few PEM files takes milliseconds, on the
    // management thread, never on a shard.
    match certificates.reload() {
        Ok(()) => {
            info!(
                user = %user.name,
                source = "management API",
                "TLS certificate reloaded: new connections use it"
            );
            Ok(no_content())
        }
        Err(e) => {
            error!(
                user = %user.name,
                source = "management API",
                error = %e,
                "TLS certificate not reloaded; the old one stays in use"
            );
            Err(ApiError::bad_request(format!(
                "{e}; the certificate in use is unchanged"
            )))
        }
    }
}

/// An HTTPS listener for `axum::serve`: yields connections whose TLS
/// handshake is done.
pub(crate) struct TlsListener {
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener` (on the current runtime).
    pub(crate) fn new(
        listener: TcpListener,
        certificates: Arc<dyn Certificates>,
    ) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (sender, handshaken) = mpsc::channel(config::HTTPS_HANDSHAKES_MAX);
        tokio::spawn(accept(listener, certificates, sender));
        Ok(TlsListener { handshaken, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accept task has ended (it does so only when this
            // listener is dropped): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Accepts sockets and handshakes each on its own task, at most
/// `HTTPS_HANDSHAKES_MAX` at once (past it, accepting waits), each within
/// `HTTPS_HANDSHAKE_TIMEOUT`.
async fn accept(
    listener: TcpListener,
    certificates: Arc<dyn Certificates>,
    handshaken: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(config::HTTPS_HANDSHAKES_MAX));
    let local = listener.local_addr().ok();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // The server stopped (its listener dropped).
        if handshaken.is_closed() {
            return;
        }
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, typically: pause rather than
                // spin, as axum's own listener does.
                warn!(address = ?local, error = %e, "HTTPS listener cannot accept");
                tokio::time::sleep(config::HTTPS_ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let acceptor = TlsAcceptor::from(certificates.https_config());
        let handshaken = handshaken.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let done =
                tokio::time::timeout(config::HTTPS_HANDSHAKE_TIMEOUT, handshake(socket, acceptor))
                    .await;
            match done {
                Ok(Ok(tls)) => {
                    let _ = handshaken.send((tls, peer)).await;
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "HTTPS handshake failed"),
                Err(_) => debug!(%peer, "HTTPS handshake timed out"),
            }
        });
    }
}

/// The TLS handshake of an accepted socket; a client whose first byte is
/// no TLS record (plain HTTP) is told to use https and closed.
async fn handshake(
    mut socket: TcpStream,
    acceptor: TlsAcceptor,
) -> Result<TlsStream<TcpStream>, String> {
    let mut first = [0u8; 1];
    let n = socket.peek(&mut first).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("closed before the handshake".into());
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        // The request is read (what has arrived of it) before the answer,
        // so that closing does not reset the connection under the answer.
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request).await;
        let _ = socket.write_all(PLAIN_HTTP_REFUSAL).await;
        let _ = socket.shutdown().await;
        return Err("plain HTTP on the HTTPS port".into());
    }
    acceptor.accept(socket).await.map_err(|e| e.to_string())
}

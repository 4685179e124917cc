//! SIGTERM and SIGINT: stop accepting, close every client connection with
//! 320 CONNECTION_FORCED as RabbitMQ does, and exit 0 once they are closed
//! (or a deadline passes). SIGHUP: read the TLS certificate, key and CA
//! files again; connections stay, new handshakes use the new files.
//!
//! The signals are blocked in every thread and taken by one thread with
//! sigwait(2), which sets a flag; the shards look at it from their tick (a
//! foreign thread's wake-up of a glommio executor is unreliable, see
//! docs/runtime.md), so no signal handler runs inside an executor.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::net::tls::TlsServer;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// How long the shards wait for clients to answer connection.close.
pub(crate) const CLOSE_DEADLINE: Duration = Duration::from_secs(3);

pub(crate) fn requested() -> bool {
    REQUESTED.load(Ordering::Acquire)
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and every thread
/// it starts afterwards (the shards), then starts the thread that waits for
/// them. Call before the shards are spawned.
pub(crate) fn install(tls: Option<Arc<TlsServer>>) {
    // A write past RLIMIT_FSIZE sends SIGXFSZ, whose default action ends
    // the process: ignored, the write fails with EFBIG instead, which the
    // message store answers like a full disk (the disk alarm, the batch
    // written again later) rather than lose what it holds.
    // SAFETY: setting a signal's disposition to SIG_IGN has no memory-safety
    // preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let set = stop_signals();
    // SAFETY: a valid, initialised signal set; no old mask is asked for.
    let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if blocked != 0 {
        warn!(
            error = blocked,
            "cannot block SIGTERM/SIGINT; they will end the broker at once"
        );
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("warren-signals".into())
        .spawn(move || {
            loop {
                let mut signal: libc::c_int = 0;
                // SAFETY: `set` is initialised and `signal` is a valid out pointer.
                if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                    return;
                }
                if signal == libc::SIGHUP {
                    reload(tls.as_deref());
                    continue;
                }
                let name = if signal == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                info!(signal = name, "shutting down: closing client connections");
                REQUESTED.store(true, Ordering::Release);
                return;
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the signal thread");
    }
}

/// SIGHUP: the TLS files are read again. Off the shards: a reload reads
/// files and parses keys.
fn reload(tls: Option<&TlsServer>) {
    let Some(tls) = tls else {
        info!(signal = "SIGHUP", "nothing to reload: no TLS listener");
        return;
    };
    match tls.reload() {
        Ok(()) => info!(
            signal = "SIGHUP",
            "TLS certificate reloaded: new connections use it"
        ),
        Err(e) => {
            error!(signal = "SIGHUP", error = %e, "TLS certificate not reloaded; the old one stays in use")
        }
    }
}

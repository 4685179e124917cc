//! A panic anywhere ends the broker, loudly. A shard that panicked would
//! otherwise leave a half-dead process: its listener still bound (the
//! kernel keeps sending it connections), its queues gone, and every
//! declare waiting forever for its answer. The hook logs the panic with
//! `tracing::error!` (thread, place, message) and exits with
//! `PANIC_EXIT_CODE`, so that a supervisor (systemd, Kubernetes) restarts
//! the broker, which then recovers from its data directory.

use std::panic::PanicHookInfo;

/// The exit status after a panic (EX_SOFTWARE, "internal software error").
pub(crate) const PANIC_EXIT_CODE: i32 = 70;

/// Installs the hook for the whole process.
pub(crate) fn install() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let report = describe(thread.name().unwrap_or("unnamed"), info);
        tracing::error!(
            thread = %report.thread,
            location = %report.location,
            "panic: {}; the broker stops",
            report.message
        );
        // std::process::exit would run exit handlers while the other
        // shards still run; the log line above is all that must get out
        // (stderr is unbuffered).
        // SAFETY: _exit(2) ends the process at once; nothing after it runs.
        unsafe { libc::_exit(PANIC_EXIT_CODE) }
    }));
}

/// What the hook logs of a panic.
#[derive(Debug, PartialEq)]
struct Report {
    thread: String,
    location: String,
    message: String,
}

fn describe(thread: &str, info: &PanicHookInfo<'_>) -> Report {
    let payload = info.payload();
    let message = if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(a panic without a message)".to_string()
    };
    let location = info
        .location()
        .map(|l| format!("{}:{}", l.file(), l.line()))
        .unwrap_or_default();
    Report {
        thread: thread.to_string(),
        location,
        message,
    }
}

/// In debug builds only: `WARREN_DEBUG_PANIC_SHARD=N` makes shard N panic
/// once it is ready, so that the tests can watch the broker stop. Release
/// builds have no such switch.
#[cfg(debug_assertions)]
pub(crate) fn debug_panic_requested(shard: usize) -> bool {
    std::env::var("WARREN_DEBUG_PANIC_SHARD")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        == Some(shard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_report_names_thread_place_and_message() {
        let seen: Arc<Mutex<Vec<Report>>> = Arc::default();
        let sink = seen.clone();
        // A hook that records instead of exiting, around a caught panic.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            sink.lock()
                .unwrap()
                .push(describe(thread.name().unwrap_or("unnamed"), info));
        }));
        let joined = std::thread::Builder::new()
            .name("warren-shard-7".into())
            .spawn(|| panic!("queue {} lost its head", 42))
            .unwrap()
            .join();
        std::panic::set_hook(previous);
        assert!(joined.is_err());
        // Other tests may panic on purpose meanwhile: look for ours.
        let seen = seen.lock().unwrap();
        let ours = seen
            .iter()
            .find(|r| r.thread == "warren-shard-7")
            .expect("the hook saw the panic");
        assert_eq!(ours.message, "queue 42 lost its head");
        assert!(ours.location.starts_with(file!()), "{ours:?}");
    }
}

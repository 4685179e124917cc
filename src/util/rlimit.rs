//! Process resource limits the broker raises for itself.

/// Raises RLIMIT_MEMLOCK as far as allowed; fails with the limit it
/// could reach if that is still below `needed`. glommio's reactors need
/// locked memory for io_uring; the broker raises it at start and the
/// store's tests before they start an executor.
pub fn raise_memlock(needed: u64) -> Result<(), u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given, which lives
    // across the call.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // Root (CAP_SYS_RESOURCE) may lift the hard limit too; others only up to it.
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        let to_hard = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above, setrlimit only reads the struct.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &to_hard) };
    }
    // SAFETY: as above, getrlimit writes into a struct that outlives the call.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if limit.rlim_cur >= needed {
        Ok(())
    } else {
        Err(limit.rlim_cur)
    }
}


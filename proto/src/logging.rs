//! What the project's daemons (`lb-control`, `lb-agent`) set up first:
//! their log (lines on stderr, filtered by `RUST_LOG`) and their limit of
//! open files.

/// Logs to stderr at `info` unless `RUST_LOG` says otherwise
/// (netlink-packet-route's warnings about link attributes newer than it
/// knows are off by default: they are not the operator's to fix), then
/// raises the open-file limit ([`raise_fd_limit`]) and says if it cannot.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error")
            }),
        )
        .with_writer(std::io::stderr)
        // Colour for a person at a terminal, none in a log file or journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match raise_fd_limit() {
        Ok(n) => tracing::debug!(open_files = n, "file-descriptor limit"),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot raise the file-descriptor limit; connection floods reach it sooner"
        ),
    }
}

/// Raises the soft limit of open files to the hard limit (the usual soft
/// 1024 is a few hundred idle connections from exhaustion); returns the
/// limit now in force, or the error when it cannot be read or raised.
///
/// # Errors
/// `getrlimit` or `setrlimit` failed.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    // SAFETY: zeroed is a valid rlimit; getrlimit fills it.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: a valid pointer to a limit within the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

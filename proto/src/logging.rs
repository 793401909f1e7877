//! What the project's daemons (`lb-control`, `lb-agent`) set up first:
//! their log (lines on stderr, filtered by `RUST_LOG`, as text or JSON)
//! and their limit of open files.

/// How the log is written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per event for a person; colour only on a terminal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`
    /// with `message` and the event's own fields: `service`, `server`,
    /// `generation`, ...), for a log collector.
    Json,
}

/// Logs to stderr at `info` unless `RUST_LOG` says otherwise
/// (netlink-packet-route's warnings about link attributes newer than it
/// knows are off by default: they are not the operator's to fix), in
/// `format`, then raises the open-file limit ([`raise_fd_limit`]) and says
/// if it cannot.
pub fn init(format: Format) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colour for a person at a terminal, none in a log file or journal.
        Format::Text => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        Format::Json => log.json().with_ansi(false).init(),
    }
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

//! The log of the project's daemons (`lb-control`, `lb-agent`): lines on
//! stderr, filtered by `RUST_LOG`.

/// Logs to stderr at `info` unless `RUST_LOG` says otherwise.
/// netlink-packet-route's warnings about link attributes newer than it
/// knows are off by default: they are not the operator's to fix.
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
}

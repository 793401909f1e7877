//! Standard output that a reader going away does not turn into a panic.

/// Exit status when standard output's reader went away: what a shell
/// reports for a tool SIGPIPE ended (128 + 13).
const EXIT_BROKEN_PIPE: i32 = 128 + libc::SIGPIPE;

/// `println!` that never panics: a reader that went away (`lbctl server
/// list | head -5`) ends lbctl quietly, as SIGPIPE ends other Unix tools;
/// another write error says what failed.
macro_rules! out {
    () => {
        $crate::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}
pub(crate) use out;

/// Writes `line` and a newline to standard output, or ends the process (see
/// [`out!`]).
pub(crate) fn write_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let result = {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_fmt(line)
            .and_then(|()| stdout.write_all(b"\n"))
    };
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(EXIT_BROKEN_PIPE)
        }
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1)
        }
    }
}

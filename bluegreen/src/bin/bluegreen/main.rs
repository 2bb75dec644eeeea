//! The `bluegreen` binary: parse the command line, run the command, turn
//! an error into one line on stderr.

mod cli;
mod daemon;
mod metrics;
mod observations;
mod output;

use std::process::ExitCode;

use bluegreen::host::Host;
use clap::Parser;

fn init_logging(verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
        (0, 0) => log::LevelFilter::Info,
        (1, _) => log::LevelFilter::Debug,
        (_, 0) => log::LevelFilter::Trace,
        (_, 1) => log::LevelFilter::Warn,
        _ => log::LevelFilter::Error,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format_timestamp(None)
        .init();
}

/// The shell's exit code for a command ended by SIGPIPE.
const CLOSED_PIPE_EXIT: u8 = 128 + libc::SIGPIPE as u8;

/// Whether stdout is a pipe whose reader has gone (`bluegreen status |
/// head` once `head` is done): the kernel reports an error condition on it.
fn stdout_hung_up() -> bool {
    let mut stdout = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, and a zero timeout: no waiting.
    let ready = unsafe { libc::poll(&mut stdout, 1, 0) };
    ready == 1 && stdout.revents & libc::POLLERR != 0
}

/// Once the reader of its output hangs up, a command-line tool ends
/// quietly, with the shell's code for SIGPIPE, where Rust's `println!`
/// panics with a backtrace. SIGPIPE itself stays ignored: restored, it
/// would kill a command in the middle of its network I/O (etcd, health
/// probes) whenever a peer hangs up. Not for the daemon, whose tasks
/// outlive a lost stdout.
fn end_quietly_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if stdout_hung_up() {
            std::process::exit(i32::from(CLOSED_PIPE_EXIT));
        }
        report(info);
    }));
}

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    if !matches!(args.command, cli::args::Command::Daemon(_)) {
        end_quietly_on_closed_stdout();
    }
    init_logging(args.verbose, args.quiet);
    let host = Host::new(&args.pin_dir, &args.state_dir);
    match cli::commands::execute(&host, &args.state_dir, args.command) {
        Ok(code) => code,
        // `status --watch` and `man` write with `write!`, which returns
        // the closed pipe as an error rather than panicking.
        Err(error) if wrote_to_closed_stdout(&error) => ExitCode::from(CLOSED_PIPE_EXIT),
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

fn wrote_to_closed_stdout(error: &anyhow::Error) -> bool {
    let broken_pipe = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe)
    });
    broken_pipe && stdout_hung_up()
}

/// The error and its causes on one line (the library's messages already
/// say what to do). A cause whose text is already in the line is left out:
/// many messages embed their source (`{action}: {source}`), and its OS
/// error would otherwise be printed twice.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if line.contains(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_embedded_source_is_printed_once_and_context_is_kept() {
        let io = std::io::Error::from_raw_os_error(libc::ENOTDIR);
        let embedded: anyhow::Error =
            bluegreen::Error::io("cannot list /var/lib/bluegreen")(io).into();
        let line = one_line(&embedded);
        assert_eq!(line.matches("os error 20").count(), 1, "{line}");
        assert!(
            line.starts_with("cannot list /var/lib/bluegreen: "),
            "{line}"
        );

        let wrapped = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::EADDRINUSE))
            .context("cannot listen for metrics on 127.0.0.1:9464");
        let line = one_line(&wrapped);
        assert!(
            line.starts_with("cannot listen for metrics on 127.0.0.1:9464: "),
            "{line}"
        );
        assert!(line.contains("os error 98"), "the source is kept: {line}");
    }
}

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

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    init_logging(args.verbose, args.quiet);
    let host = Host::new(&args.pin_dir, &args.state_dir);
    match cli::commands::run(&host, &args.state_dir, args.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
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

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
    match cli::commands::run(&host, args.command) {
        Ok(code) => code,
        Err(error) => {
            // One line: the library's messages already say what to do.
            let chain: Vec<String> = error.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

//! Project automation: `cargo xtask <command>`.
//!
//! This crate deliberately depends on nothing from the workspace: those
//! crates need bpf-linker to build, and installing it is `setup`'s job.

mod cmd;
mod setup;
mod tasks;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, test, lint, package, demo and benchmark bluegreen",
    long_about = "Build, test, lint, package, demo and benchmark bluegreen.\n\n\
        Every command first installs what it needs and is missing (silent \
        when nothing is), so it must run as root: the demo only the eBPF \
        toolchain and what building the binary needs, `test`, `bench`, \
        `lint` and `package` add their own tools. `setup` installs them all."
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything any command needs and is missing: Debian
    /// packages, nightly with rust-src, clippy and rustfmt, bpf-linker,
    /// cargo-deb; mount bpffs. Needs root.
    Setup,
    /// Build the bluegreen loader and CLI (debug), embedding the eBPF object.
    Build,
    /// Build the .deb, then run the workspace tests, end-to-end ones
    /// included (they use BLUEGREEN_BIN=target/debug/bluegreen, and
    /// BLUEGREEN_DEB for the package).
    Test {
        /// Passed to `cargo test`, e.g. `cargo xtask test -- my_filter -- --nocapture`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build bluegreen (debug) and run the testbed demo.
    Demo {
        /// Passed to the demo binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build bluegreen in release mode and run the testbed benchmarks.
    Bench {
        /// Passed to the bench binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Check formatting, and run clippy on the host crates and the eBPF crate.
    Lint,
    /// Build target/debian/bluegreen_VERSION_amd64.deb (release binary,
    /// systemd unit, config, man page, completions) and print its path.
    Package,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::setup(setup::Purpose::Everything),
        Task::Build => tasks::build(),
        Task::Test { args } => tasks::test(&args),
        Task::Demo { args } => tasks::demo(&args),
        Task::Bench { args } => tasks::bench(&args),
        Task::Lint => tasks::lint(),
        Task::Package => tasks::package(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` keeps the whole cause chain on one line.
            eprintln!("xtask: error: {error:#}");
            exit_code(&error)
        }
    }
}

/// A failed child's own exit code (so `cargo xtask test` exits as
/// `cargo test` did), otherwise 1.
fn exit_code(error: &anyhow::Error) -> ExitCode {
    let code = error
        .downcast_ref::<cmd::Failed>()
        .map_or(1, cmd::Failed::code);
    // Exit codes are a byte on Unix; keep failures non-zero.
    ExitCode::from(u8::try_from(code).ok().filter(|&c| c != 0).unwrap_or(1))
}

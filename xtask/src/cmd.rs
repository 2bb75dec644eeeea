//! Running child processes with uniform PATH handling and error messages.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result};

/// A child command that ran but did not succeed. `main` exits with the
/// child's own code so that, e.g., `cargo xtask test` mirrors `cargo test`.
#[derive(Debug)]
pub struct Failed {
    command: String,
    status: ExitStatus,
}

impl Failed {
    /// The child's exit code; 1 when it was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(1)
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed ({})", self.command, self.status)
    }
}

impl std::error::Error for Failed {}

/// `$CARGO_HOME/bin`, where rustup and `cargo install` put their binaries.
fn cargo_bin() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    Some(home.join("bin"))
}

/// PATH with the cargo bin directory in front, as rustup's own env script
/// does: a fresh root shell often lacks it, and `setup` installs
/// bpf-linker there.
fn child_path() -> OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&current).collect();
    if let Some(bin) = cargo_bin().filter(|bin| !dirs.contains(bin)) {
        dirs.insert(0, bin);
    }
    std::env::join_paths(dirs).unwrap_or(current)
}

/// A `Command` for `program` whose lookup and environment use `child_path`
/// (an explicit PATH in the child's environment is also used to find it).
pub fn new(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", child_path());
    cmd
}

/// The command line as a user would type it, for messages.
pub fn display(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            words.push(format!("'{arg}'"));
        } else {
            words.push(arg.into_owned());
        }
    }
    let line = words.join(" ");
    // Name the directory only where it differs from ours, so that for
    // example the eBPF crate's clippy is not mistaken for the workspace's.
    match cmd.get_current_dir() {
        Some(dir) if std::env::current_dir().ok().as_deref() != Some(dir) => {
            format!("{line} (in {})", dir.display())
        }
        _ => line,
    }
}

/// Runs `cmd` with inherited stdio; an error names the command and status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    succeeded(status, display(cmd))
}

/// Waits for a child started with `spawn`; an error names `command` and
/// its status, as [`run`] does.
pub fn finish(mut child: std::process::Child, command: &str) -> Result<()> {
    let status = child
        .wait()
        .with_context(|| format!("could not wait for `{command}`"))?;
    succeeded(status, command.to_owned())
}

fn succeeded(status: ExitStatus, command: String) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        Err(Failed { command, status }.into())
    }
}

/// Whether `cmd` runs and exits 0, with all output discarded: used for
/// the silent "is it already there?" probes of `setup`.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The stdout of `cmd`, or an error naming the command and its stderr.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            output.status,
            stderr.trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The stdout of `cmd`, or `None` if it cannot run or fails; for probes
/// whose failure simply means "not there".
pub fn probe(cmd: &mut Command) -> Option<String> {
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

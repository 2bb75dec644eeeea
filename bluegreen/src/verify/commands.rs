//! The commands gate: the operator's executables run in order against the
//! target color, each with a deadline, their output kept in one log file.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{Gate, GateReport, Target, tail};

/// `[service.verify]`: commands that must exit 0 before traffic moves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandGate {
    /// Each an argv, run without a shell.
    pub commands: Vec<Vec<String>>,
    /// Each command's deadline.
    pub timeout_secs: u64,
}

/// How the commands are started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Launcher {
    /// A child of this process, in a process group of its own: what an
    /// operator's `switch` or `verify` does, and the daemon outside
    /// systemd.
    #[default]
    Child,
    /// A transient systemd unit of its own (`systemd-run --wait
    /// --collect`): for the daemon under systemd, whose sandbox
    /// (`ProtectSystem=strict`, `MemoryDenyWriteExecute`, a narrow
    /// capability set) a child would inherit, and in which an evaluation
    /// built on a JIT, or one writing its report outside the allowed
    /// paths, would fail.
    SystemdRun,
}

impl Launcher {
    /// [`Launcher::SystemdRun`] when this process runs as a systemd
    /// service (systemd sets `INVOCATION_ID` for each) on a host booted
    /// with systemd; [`Launcher::Child`] otherwise.
    pub fn for_this_process() -> Launcher {
        let under_systemd = std::env::var_os("INVOCATION_ID").is_some()
            && std::path::Path::new("/run/systemd/system").is_dir();
        if under_systemd {
            Launcher::SystemdRun
        } else {
            Launcher::Child
        }
    }

    /// The command that runs `argv` with the target in its environment.
    pub(super) fn command(
        self,
        argv: &[String],
        env: &[(&str, String)],
        unit: &str,
        timeout_secs: u64,
    ) -> Command {
        match self {
            Launcher::Child => {
                let mut command = Command::new(&argv[0]);
                command
                    .args(&argv[1..])
                    .envs(env.iter().map(|(name, value)| (name, value)));
                command
            }
            Launcher::SystemdRun => {
                let mut command = Command::new("systemd-run");
                command
                    .args(["--wait", "--collect", "--quiet", "--pipe"])
                    .arg(format!("--unit={unit}"))
                    // systemd stops the unit itself at the timeout: killing
                    // systemd-run alone would leave it running.
                    .arg(format!("--property=RuntimeMaxSec={timeout_secs}"))
                    .args(
                        env.iter()
                            .map(|(name, value)| format!("--setenv={name}={value}")),
                    )
                    .arg("--")
                    .args(argv);
                command
            }
        }
    }
}

/// Lines of output a refusal quotes; the rest is in the log.
const TAIL_LINES: usize = 20;
/// How much of the log's end is read for those lines.
const TAIL_BYTES: u64 = 64 * 1024;
/// How often a running command is looked at.
const POLL: Duration = Duration::from_millis(20);

/// Checks a command given as an argv, named `name` in the message: a
/// program, and no argument a process cannot be given.
pub(crate) fn validate_argv(name: &str, argv: &[String]) -> Result<(), String> {
    match argv.first() {
        None => return Err(format!("{name} is empty: give a program")),
        Some(program) if program.is_empty() => {
            return Err(format!("{name} has an empty program name"));
        }
        Some(_) => {}
    }
    if argv.iter().any(|arg| arg.contains('\0')) {
        return Err(format!(
            "{name} has a NUL byte, which no argument can carry"
        ));
    }
    Ok(())
}

impl CommandGate {
    pub const DEFAULT_TIMEOUT_SECS: u64 = 600;
    /// A day: an evaluation longer than that is not a gate.
    pub const MAX_TIMEOUT_SECS: u64 = 86_400;

    pub fn validate(&self) -> Result<(), String> {
        if self.commands.is_empty() {
            return Err(
                "commands is empty: list at least one, e.g. [[\"/opt/evals/run.sh\", \"--quick\"]]"
                    .to_owned(),
            );
        }
        for (index, argv) in self.commands.iter().enumerate() {
            validate_argv(&format!("commands[{index}]"), argv)?;
        }
        if !(1..=Self::MAX_TIMEOUT_SECS).contains(&self.timeout_secs) {
            return Err(format!(
                "timeout_secs {} is outside 1..={}",
                self.timeout_secs,
                Self::MAX_TIMEOUT_SECS
            ));
        }
        Ok(())
    }

    /// Runs every command in order into `log`, stopping at the first that
    /// fails.
    pub(super) fn run(
        &self,
        target: &Target,
        launcher: Launcher,
        (path, mut log): (PathBuf, File),
    ) -> GateReport {
        let started = Instant::now();
        let mut failure = None;
        for argv in &self.commands {
            let line = argv.join(" ");
            let _ = writeln!(log, "$ {line}");
            if let Err(reason) = self.run_one(argv, target, launcher, &log) {
                let _ = writeln!(log, "bluegreen: {line}: {reason}");
                failure = Some(format!("{line}: {reason}"));
                break;
            }
        }
        let passed = failure.is_none();
        GateReport {
            gate: Gate::Commands,
            passed,
            duration: started.elapsed(),
            detail: failure.unwrap_or_else(|| {
                let count = self.commands.len();
                format!("{count} of {count} commands exited 0")
            }),
            measurement: None,
            tail: if passed {
                Vec::new()
            } else {
                read_tail(&mut log)
            },
            log: Some(path),
        }
    }

    /// One command, with the target in its environment (see
    /// [`run_command`]).
    fn run_one(
        &self,
        argv: &[String],
        target: &Target,
        launcher: Launcher,
        log: &File,
    ) -> Result<(), String> {
        let backends: Vec<String> = target.backends.iter().map(ToString::to_string).collect();
        let env = [
            ("BLUEGREEN_SERVICE", target.service.clone()),
            ("BLUEGREEN_COLOR", target.color.to_string()),
            ("BLUEGREEN_VIP", target.vip.to_string()),
            ("BLUEGREEN_PROTO", target.proto.to_string()),
            ("BLUEGREEN_BACKENDS", backends.join(",")),
        ];
        let unit = format!(
            "bluegreen-verify-{}-{}-{}",
            target.service,
            target.color,
            crate::clock::unix_now_ms()
        );
        run_command(argv, &env, launcher, &unit, self.timeout_secs, log)
    }
}

/// Runs `argv` to its end with `env`, its output into `log`, started by
/// `launcher` (as `unit` under systemd) in a process group of its own,
/// so that a timeout kills whatever it started too (a shell script's
/// children would otherwise outlive it). Its failure, said in a few words.
pub(crate) fn run_command(
    argv: &[String],
    env: &[(&str, String)],
    launcher: Launcher,
    unit: &str,
    timeout_secs: u64,
    log: &File,
) -> Result<(), String> {
    let output = |log: &File| log.try_clone().map_err(|error| error.to_string());
    let mut child = launcher
        .command(argv, env, unit, timeout_secs)
        .stdin(Stdio::null())
        .stdout(output(log)?)
        .stderr(output(log)?)
        .process_group(0)
        .spawn()
        .map_err(|error| format!("cannot start: {error}"))?;
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(error) => {
                kill_group(child.id());
                let _ = child.wait();
                return Err(format!("cannot wait for it: {error}"));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(child.id());
            if launcher == Launcher::SystemdRun {
                stop_unit(unit);
            }
            let _ = child.wait();
            return Err(format!("timed out: killed at its {timeout_secs} s timeout"));
        }
        std::thread::sleep(POLL.min(deadline - now));
    };
    describe(status)
}

/// Kills what a transient unit still runs (its own `RuntimeMaxSec` would,
/// a moment later).
fn stop_unit(unit: &str) {
    let stopped = Command::new("systemctl")
        .args(["kill", "--signal=SIGKILL", unit])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(error) = stopped {
        log::warn!("cannot stop {unit} at its timeout: {error}");
    }
}

/// SIGKILL to the process group `leader` leads (it was made its own group).
fn kill_group(leader: u32) {
    let Ok(group) = libc::pid_t::try_from(leader) else {
        return;
    };
    // SAFETY: kill has no memory preconditions; a negative pid names the
    // group, which only the child and its descendants are in.
    unsafe { libc::kill(-group, libc::SIGKILL) };
}

fn describe(status: ExitStatus) -> Result<(), String> {
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(format!("exit status {code}")),
        (None, Some(signal)) => Err(format!("killed by signal {signal}")),
        (None, None) => Err(format!("ended with {status}")),
    }
}

/// The last lines of the log (its end only: an evaluation may print a lot).
fn read_tail(log: &mut File) -> Vec<String> {
    let mut text = Vec::new();
    let read = log
        .seek(SeekFrom::End(0))
        .and_then(|end| log.seek(SeekFrom::Start(end.saturating_sub(TAIL_BYTES))))
        .and_then(|_| log.read_to_end(&mut text));
    match read {
        Ok(_) => tail(&String::from_utf8_lossy(&text), TAIL_LINES),
        Err(error) => vec![format!("(cannot read the output back: {error})")],
    }
}

//! Release verification: the gates a color must pass before traffic moves
//! to it, in the order they run: the operator's commands (an evaluation
//! suite, a smoke test), then a warm-up of every serving backend. Each
//! gate yields a [`GateReport`]; the first failing gate stops the run, as
//! it already refuses the change.

mod commands;
mod warmup;

use std::{fmt, fs::File, net::SocketAddr, path::PathBuf, time::Duration};

pub use commands::CommandGate;
pub use warmup::{Method, Warmup};

use crate::endpoint::{Color, Proto};

/// The color the gates judge, as its commands see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub color: Color,
    pub vip: SocketAddr,
    pub proto: Proto,
    /// The color's backends that take new flows (drained ones aside).
    pub backends: Vec<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Commands,
    Warmup,
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Gate::Commands => "commands",
            Gate::Warmup => "warm-up",
        })
    }
}

/// What one gate found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateReport {
    pub gate: Gate,
    pub passed: bool,
    pub duration: Duration,
    /// One line: what passed, or why it failed.
    pub detail: String,
    /// Where the gate's full output is kept (commands only).
    pub log: Option<PathBuf>,
    /// The last lines of that output, for an operator reading a refusal.
    pub tail: Vec<String>,
}

/// Every gate run against one color, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub service: String,
    pub color: Color,
    pub gates: Vec<GateReport>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.gates.iter().all(|gate| gate.passed)
    }

    pub fn failure(&self) -> Option<&GateReport> {
        self.gates.iter().find(|gate| !gate.passed)
    }
}

/// The gates a service configures.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gates<'a> {
    pub commands: Option<&'a CommandGate>,
    pub warmup: Option<&'a Warmup>,
}

impl Gates<'_> {
    pub fn is_empty(&self) -> bool {
        self.commands.is_none() && self.warmup.is_none()
    }

    /// The names of the configured gates, for a warning that skips them.
    pub fn names(&self) -> Vec<Gate> {
        let mut names = Vec::new();
        if self.commands.is_some() {
            names.push(Gate::Commands);
        }
        if self.warmup.is_some() {
            names.push(Gate::Warmup);
        }
        names
    }

    /// Runs each configured gate against `target` in order, stopping at the
    /// first that fails. `log` opens the file the commands' output goes to
    /// (only called when there are commands); failing to open it fails the
    /// run, since output nobody can read would hide why a gate refused.
    /// Generic over `log`'s error so that this module needs nothing of
    /// `error`, which names its gates.
    pub fn run<E>(
        &self,
        target: &Target,
        log: impl FnOnce() -> Result<(PathBuf, File), E>,
    ) -> Result<VerifyReport, E> {
        let mut report = VerifyReport {
            service: target.service.clone(),
            color: target.color,
            gates: Vec::new(),
        };
        if let Some(gate) = self.commands {
            report.gates.push(gate.run(target, log()?));
            if !report.passed() {
                return Ok(report);
            }
        }
        if let Some(gate) = self.warmup {
            report.gates.push(gate.run(&target.backends));
        }
        Ok(report)
    }
}

/// The last `count` lines of `text`, without their line ends.
pub(crate) fn tail(text: &str, count: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..]
        .iter()
        .map(|line| (*line).to_owned())
        .collect()
}

/// The `percent`th percentile of `sorted` (nearest rank); zero when empty.
pub(crate) fn percentile(sorted: &[Duration], percent: u32) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * percent as usize).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

#[cfg(test)]
mod tests;

//! Release verification: the gates a color must pass before traffic moves
//! to it, in the order they run: the operator's commands (an evaluation
//! suite, a smoke test), then a warm-up of every serving backend, then
//! each metric analysis. Each gate yields a [`GateReport`]; the first
//! failing gate stops the run, as it already refuses the change.

mod analysis;
mod commands;
mod warmup;

use std::{
    fmt,
    fs::File,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

pub use analysis::{
    AnalysesRecord, Analysis, AnalysisStatus, Analyzer, Failed, Figure, Measurement, NoData,
    PLACEHOLDERS, ShadowFigure, Source, Threshold, Verdict, Watched,
};
pub use commands::{CommandGate, Launcher};
pub(crate) use commands::{run_command, validate_argv};
pub use warmup::{Method, Warmup};

use crate::{
    clock::unix_now_ms,
    endpoint::{Color, Proto},
    shadow::record::ShadowRecord,
};

/// The color the gates judge, as its commands see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub service: String,
    pub color: Color,
    pub vip: SocketAddr,
    pub proto: Proto,
    /// The color's backends that take new flows (drained ones aside).
    pub backends: Vec<SocketAddr>,
    /// The color an analysis's ratio compares with, and its serving
    /// backends: the live color before a change (the target itself when
    /// it is live), the previous one in the daemon's window after it.
    pub baseline: Color,
    pub baseline_backends: Vec<SocketAddr>,
    /// The service's last shadowing run, for the analyses that read it
    /// (`None` when none does, or it was never shadowed).
    pub shadow: Option<ShadowRecord>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Commands,
    Warmup,
    Analysis,
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Gate::Commands => "commands",
            Gate::Warmup => "warm-up",
            Gate::Analysis => "analysis",
        })
    }
}

/// What one gate found.
#[derive(Clone, Debug, PartialEq)]
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
    /// What an analysis measured (analyses only).
    pub measurement: Option<Measurement>,
}

/// Every gate run against one color, in order.
#[derive(Clone, Debug, PartialEq)]
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
    pub analyses: &'a [Analysis],
}

impl Gates<'_> {
    pub fn is_empty(&self) -> bool {
        self.commands.is_none() && self.warmup.is_none() && self.analyses.is_empty()
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
        if !self.analyses.is_empty() {
            names.push(Gate::Analysis);
        }
        names
    }

    /// Runs each configured gate against `target` in order, stopping at the
    /// first that fails. An analysis of the backends' own metrics measures
    /// from the start of the run (its first reading is taken before the
    /// commands), so the warm-up's requests fall in its window; it waits
    /// until its window has passed. `log` opens the file the commands' output goes to
    /// (only called when there are commands); failing to open it fails the
    /// run, since output nobody can read would hide why a gate refused.
    /// Generic over `log`'s error so that this module needs nothing of
    /// `error`, which names its gates.
    pub fn run<E>(
        &self,
        target: &Target,
        launcher: Launcher,
        log: impl FnOnce() -> Result<(PathBuf, File), E>,
    ) -> Result<VerifyReport, E> {
        let mut report = VerifyReport {
            service: target.service.clone(),
            color: target.color,
            gates: Vec::new(),
        };
        let started = Instant::now();
        let mut analyzers: Vec<Analyzer> =
            self.analyses.iter().cloned().map(Analyzer::new).collect();
        // Shortest window first, so that each is measured once it has passed.
        analyzers.sort_by_key(|analyzer| {
            (
                analyzer.analysis().needs_readings(),
                analyzer.analysis().window_secs,
            )
        });
        for analyzer in &mut analyzers {
            analyzer.prime(target, unix_now_ms());
        }
        if let Some(gate) = self.commands {
            report.gates.push(gate.run(target, launcher, log()?));
            if !report.passed() {
                return Ok(report);
            }
        }
        if let Some(gate) = self.warmup {
            report.gates.push(gate.run(&target.backends));
            if !report.passed() {
                return Ok(report);
            }
        }
        for analyzer in &mut analyzers {
            if analyzer.analysis().needs_readings() {
                std::thread::sleep(
                    analyzer
                        .analysis()
                        .window()
                        .saturating_sub(started.elapsed()),
                );
            }
            let measuring = Instant::now();
            let measurement = analyzer.measure(target, unix_now_ms());
            // A gate cannot wait for more data: none fails unless the
            // analysis says otherwise.
            let no_data = analyzer.analysis().no_data.unwrap_or(NoData::Fail);
            report.gates.push(GateReport {
                gate: Gate::Analysis,
                passed: !measurement.failed(no_data),
                duration: measuring.elapsed(),
                detail: format!(
                    "{}: {} {} ({})",
                    measurement.analysis,
                    measurement.color,
                    measurement.detail,
                    measurement.verdict
                ),
                log: None,
                tail: Vec::new(),
                measurement: Some(measurement),
            });
            if !report.passed() {
                break;
            }
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

//! The idle color's lifecycle (`[service.lifecycle]`): how to start and
//! stop each color, where each one is (running, starting, stopping,
//! stopped, since when), and the pure decision of when the daemon scales
//! the idle color down: once it has drained and its rollback window has
//! passed, never while it is held, previewed, weighted, or the target of a
//! switch in progress.

use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{endpoint::Color, verify::validate_argv};

/// `[service.lifecycle]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Argv run to start a color; `{color}` and `{service}` are filled in.
    pub start: Vec<String>,
    pub stop: Vec<String>,
    pub start_timeout_secs: u64,
    /// How long, after the start command, every backend of the color has
    /// to pass its health check (a model server loading its weights).
    pub ready_timeout_secs: u64,
    pub stop_timeout_secs: u64,
    /// The daemon stops the idle color this long after the switch that
    /// made it idle (or after it was started), once it has drained;
    /// `None`: never on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_after_secs: Option<u64>,
}

impl Lifecycle {
    pub const DEFAULT_START_TIMEOUT_SECS: u64 = 300;
    pub const DEFAULT_READY_TIMEOUT_SECS: u64 = 600;
    pub const DEFAULT_STOP_TIMEOUT_SECS: u64 = 120;

    pub fn validate(&self) -> Result<(), String> {
        validate_argv("start", &self.start)?;
        validate_argv("stop", &self.stop)?;
        for (name, secs) in [
            ("start_timeout_secs", self.start_timeout_secs),
            ("ready_timeout_secs", self.ready_timeout_secs),
            ("stop_timeout_secs", self.stop_timeout_secs),
        ] {
            if !(1..=86_400).contains(&secs) {
                return Err(format!("{name} {secs} is outside 1..=86400"));
            }
        }
        if self
            .scale_down_after_secs
            .is_some_and(|secs| secs > 30 * 86_400)
        {
            return Err("scale_down_after_secs is more than 30 days".to_owned());
        }
        Ok(())
    }

    /// `argv` with `{color}` and `{service}` filled in.
    pub fn render(argv: &[String], service: &str, color: Color) -> Vec<String> {
        argv.iter()
            .map(|arg| {
                arg.replace("{color}", &color.to_string())
                    .replace("{service}", service)
            })
            .collect()
    }

    /// What a start or stop command sees of the color.
    pub fn environment(
        service: &str,
        color: Color,
        backends: &[SocketAddr],
    ) -> Vec<(&'static str, String)> {
        let backends: Vec<String> = backends.iter().map(ToString::to_string).collect();
        vec![
            ("BLUEGREEN_SERVICE", service.to_owned()),
            ("BLUEGREEN_COLOR", color.to_string()),
            ("BLUEGREEN_BACKENDS", backends.join(",")),
        ]
    }
}

/// Where a color is in its lifecycle, as recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Serving, or able to: what a color is until bluegreen stops it.
    #[default]
    Running,
    Starting,
    Stopping,
    Stopped,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Running => "running",
            Phase::Starting => "starting",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        })
    }
}

/// One color's lifecycle record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColorLifecycle {
    pub phase: Phase,
    /// When it entered `phase` (Unix ms; 0: running since before any
    /// record).
    pub since_unix_ms: u64,
    /// The process that is starting or stopping it, so that one that died
    /// midway is told from one still at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Held up by the operator: never stopped while held.
    #[serde(default)]
    pub held: bool,
    /// A switch whose gates are running will send traffic here (its pid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switching_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default)]
    pub starts: u64,
    #[serde(default)]
    pub stops: u64,
    #[serde(default)]
    pub failures: u64,
}

/// Both colors' lifecycle records of a service, kept in the state
/// directory (see [`crate::state::StateStore::save_lifecycle`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleRecord {
    pub schema_version: u32,
    pub blue: ColorLifecycle,
    pub green: ColorLifecycle,
}

impl LifecycleRecord {
    /// Bumped on any incompatible change: a record of another version is
    /// refused rather than misread.
    pub const SCHEMA_VERSION: u32 = 1;

    pub fn new() -> LifecycleRecord {
        LifecycleRecord {
            schema_version: Self::SCHEMA_VERSION,
            ..LifecycleRecord::default()
        }
    }

    pub fn color(&self, color: Color) -> &ColorLifecycle {
        match color {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }

    pub fn color_mut(&mut self, color: Color) -> &mut ColorLifecycle {
        match color {
            Color::Blue => &mut self.blue,
            Color::Green => &mut self.green,
        }
    }
}

/// The service as the scale-down decision sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serving {
    pub active: Color,
    /// Share of new flows (percent) of the idle color.
    pub idle_share: u8,
    pub has_preview: bool,
    pub switched_at_unix_ms: Option<u64>,
    /// Live flows of the idle color, host-local connections included.
    pub idle_flows: u64,
}

/// What the daemon does about the idle color next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Plan {
    /// Nothing is planned: no `scale_down_after_secs`, or the idle color
    /// is not running.
    None,
    /// Stop `color` once `until` (Unix ms) has passed, if nothing else
    /// holds it up then.
    StopAt { color: Color, at_unix_ms: u64 },
    /// Stop `color` once what `reason` names is over.
    StopAfter { color: Color, reason: String },
    /// Stop `color` once its `flows` live flows have ended.
    Draining { color: Color, flows: u64 },
    /// Stop `color` now.
    Stop { color: Color },
    /// A stop of `color` was interrupted (its process is gone): run the
    /// stop command again.
    ResumeStop { color: Color },
    /// A start of `color` was interrupted: it counts as stopped.
    AbandonStart { color: Color },
}

impl Plan {
    /// Whether the daemon acts on it now (else it only waits).
    pub fn acts(&self) -> bool {
        matches!(
            self,
            Plan::Stop { .. } | Plan::ResumeStop { .. } | Plan::AbandonStart { .. }
        )
    }
}

/// When the idle color of a service with `scale_down_after_secs` is
/// stopped, given the service now (`now_ms`, Unix ms) and its record;
/// `alive` says whether a process recorded as acting on a color still
/// runs.
pub fn plan(
    scale_down_after_secs: Option<u64>,
    serving: &Serving,
    record: &LifecycleRecord,
    alive: impl Fn(u32) -> bool,
    now_ms: u64,
) -> Plan {
    let idle = serving.active.other();
    let lifecycle = record.color(idle);
    let gone = lifecycle.pid.is_none_or(|pid| !alive(pid));
    match lifecycle.phase {
        Phase::Stopping if gone => return Plan::ResumeStop { color: idle },
        Phase::Starting if gone => return Plan::AbandonStart { color: idle },
        Phase::Running => {}
        _ => return Plan::None,
    }
    let Some(window_secs) = scale_down_after_secs else {
        return Plan::None;
    };
    let wait = |reason: &str| Plan::StopAfter {
        color: idle,
        reason: reason.to_owned(),
    };
    if lifecycle.held {
        return wait("the operator holds it (`bluegreen release`)");
    }
    if lifecycle.switching_pid.is_some_and(&alive) {
        return wait("a switch to it is in progress");
    }
    if serving.idle_share > 0 {
        return wait("it has a weighted share of new flows");
    }
    if serving.has_preview {
        return wait("preview prefixes reach it");
    }
    // The window runs from the switch that made it idle, or from its
    // start, whichever came last: a color just started for the next
    // release is not stopped under the operator.
    let Some(switched_at) = serving.switched_at_unix_ms else {
        return wait("the service never switched: it was never live");
    };
    let from = switched_at.max(lifecycle.since_unix_ms);
    let at = from + window_secs * 1000;
    if now_ms < at {
        return Plan::StopAt {
            color: idle,
            at_unix_ms: at,
        };
    }
    if serving.idle_flows > 0 {
        return Plan::Draining {
            color: idle,
            flows: serving.idle_flows,
        };
    }
    Plan::Stop { color: idle }
}

#[cfg(test)]
mod tests;

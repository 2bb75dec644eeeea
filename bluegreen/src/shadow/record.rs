//! What a shadowing run leaves in the state directory: its record, which
//! `shadow status`, the metrics and the analyses read, and the orders that
//! `shadow start` and `shadow stop` leave for the run's owner.

use serde::{Deserialize, Serialize};

use super::{
    engine::{ShadowReport, StopReason},
    options::ShadowRequest,
};
use crate::endpoint::Color;

/// Who runs a shadowing: the daemon, or `bluegreen shadow run` in the
/// foreground.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub daemon: bool,
}

impl Owner {
    /// This process.
    pub fn this(daemon: bool) -> Self {
        Self {
            pid: std::process::id(),
            daemon,
        }
    }

    /// Whether the owning process still exists. By pid alone, as the
    /// lifecycle records judge theirs: a reused pid looks alive.
    pub fn is_alive(&self) -> bool {
        crate::host::alive(self.pid)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    pub at_unix_ms: u64,
    pub reason: StopReason,
}

/// A shadowing run of one service, running or ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowRecord {
    pub schema_version: u32,
    pub service: String,
    pub iface: String,
    /// The color whose traffic is copied, and the color it is replayed to.
    pub live: Color,
    pub idle: Color,
    pub settings: ShadowRequest,
    pub owner: Owner,
    pub started_unix_ms: u64,
    /// When the run's duration ends, if it has one.
    pub until_unix_ms: Option<u64>,
    pub updated_unix_ms: u64,
    /// `None` while it runs.
    pub stopped: Option<Stopped>,
    pub report: ShadowReport,
}

impl ShadowRecord {
    pub const SCHEMA_VERSION: u32 = 1;

    /// Running by its record, with its owner still there to run it.
    pub fn is_running(&self) -> bool {
        self.stopped.is_none() && self.owner.is_alive()
    }
}

/// An order for a service's shadowing, left for its owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "order")]
pub enum ShadowOrder {
    /// For the daemon: start a run with these settings.
    Start {
        settings: ShadowRequest,
        requested_unix_ms: u64,
    },
    /// For whoever runs it: stop.
    Stop { requested_unix_ms: u64 },
}

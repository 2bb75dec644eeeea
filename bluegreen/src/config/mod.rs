//! The TOML configuration, validated completely before anything is applied.
//!
//! The types live here, the rules a service must follow in [`validate`], and
//! the reading of the file, one section at a time, in `parse`.

mod parse;
mod pool;
mod validate;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use bluegreen_common::Timeouts;
use serde::{Deserialize, Serialize};

#[cfg(test)]
pub(crate) use crate::pool::test_backend;
pub use crate::pool::{BackendSpec, PoolSpec, WEIGHTS};
pub use parse::{validate_fleet_name, validate_fleet_prefix};
pub use validate::{FieldError, ServiceField, validate_backend, validate_pool};

use crate::{
    endpoint::{Color, Proto},
    error::{Error, Result},
    health::HealthCheck,
    lifecycle::Lifecycle,
    load::LoadCheck,
    shadow::options::ShadowConfig,
    verify::{Analysis, CommandGate, Warmup},
};

/// How XDP is attached: `auto` lets the kernel use the driver's native hook
/// when it has one and fall back to the generic (skb) hook otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestedXdpMode {
    #[default]
    Auto,
    Native,
    Skb,
}

impl FromStr for RequestedXdpMode {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        match input {
            "auto" => Ok(RequestedXdpMode::Auto),
            "native" => Ok(RequestedXdpMode::Native),
            "skb" => Ok(RequestedXdpMode::Skb),
            _ => Err(Error::UnknownXdpMode(input.to_owned())),
        }
    }
}

/// One blue-green service as the operator describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: SocketAddr,
    pub proto: Proto,
    /// Each color's pool, 1 to 256 backends.
    pub blue: PoolSpec,
    pub green: PoolSpec,
    /// The color new flows take when no earlier state says otherwise.
    pub active: Color,
    /// Probed before `switch` moves traffic to a color, and by the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Whether the daemon rolls back when the active color turns unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<AutoRollback>,
    /// Whether the daemon weighs backends by their queue depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadCheck>,
    /// Commands that must pass against a color before traffic moves to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<CommandGate>,
    /// Requests sent to every backend of a color before traffic moves to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
    /// Metric analyses judged before traffic moves, during `shift` steps
    /// and, with `auto_rollback.analysis`, by the daemon after a switch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<Analysis>,
    /// How each color is started and stopped, and when the daemon stops
    /// the idle one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    /// Shadowing's defaults for this service, and whether the daemon
    /// shadows it from its start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowConfig>,
}

impl ServiceSpec {
    /// A service with nothing optional configured, blue active at first.
    pub fn new(
        name: String,
        vip: SocketAddr,
        proto: Proto,
        blue: PoolSpec,
        green: PoolSpec,
    ) -> ServiceSpec {
        ServiceSpec {
            name,
            vip,
            proto,
            blue,
            green,
            active: Color::Blue,
            health: None,
            auto_rollback: None,
            load: None,
            verify: None,
            warmup: None,
            analysis: Vec::new(),
            lifecycle: None,
            shadow: None,
        }
    }

    pub fn backends(&self, color: Color) -> &PoolSpec {
        match color {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }

    /// The release gates it configures.
    pub fn gates(&self) -> crate::verify::Gates<'_> {
        crate::verify::Gates {
            commands: self.verify.as_ref(),
            warmup: self.warmup.as_ref(),
            analyses: &self.analysis,
        }
    }

    pub fn backends_mut(&mut self, color: Color) -> &mut PoolSpec {
        match color {
            Color::Blue => &mut self.blue,
            Color::Green => &mut self.green,
        }
    }

    /// Whether `backend` is in either color's pool.
    pub fn serves(&self, backend: SocketAddr) -> bool {
        Color::BOTH
            .into_iter()
            .any(|color| self.backends(color).get(backend).is_some())
    }
}

/// The daemon's automatic rollback (off unless configured).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoRollback {
    /// Roll back only within this long after a switch; 0 means at any time.
    pub window_secs: u64,
    /// Move established flows too (a forced rollback).
    pub force: bool,
    /// Roll back when a metric analysis fails its `failure_limit` within
    /// the window, as well as on health.
    #[serde(default)]
    pub analysis: bool,
}

impl AutoRollback {
    /// Whether `now_ms` is within the window after a switch made at
    /// `switched_at_ms` (Unix milliseconds; unknown: never, unless the
    /// window is 0, which means at any time).
    pub fn covers(&self, switched_at_ms: Option<u64>, now_ms: u64) -> bool {
        self.window_secs == 0
            || switched_at_ms.is_some_and(|at| now_ms.saturating_sub(at) <= self.window_secs * 1000)
    }
}

pub const MIN_FLOW_CAPACITY: u32 = 1024;
pub const MAX_FLOW_CAPACITY: u32 = 1 << 24;

/// Flow-table sizing and timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataplaneOptions {
    pub flow_capacity: u32,
    pub timeouts: Timeouts,
}

impl Default for DataplaneOptions {
    fn default() -> Self {
        Self {
            flow_capacity: bluegreen_common::DEFAULT_FLOW_CAPACITY,
            timeouts: Timeouts::default(),
        }
    }
}

/// `[fleet]`: how this host joins a fleet coordinated through etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetConfig {
    /// etcd's client URLs (`http://` or `https://`).
    pub endpoints: Vec<String>,
    /// This host's name in the fleet (default: the hostname).
    pub host: String,
    /// Where the fleet's keys live in etcd (default `/bluegreen`).
    pub prefix: String,
    /// How long the host stays listed after its daemon stops renewing.
    pub lease_ttl_secs: u64,
    pub tls: FleetTls,
}

/// TLS files for etcd; all `None` means plain connections (or the system's
/// roots for an `https://` endpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

pub const DEFAULT_FLEET_PREFIX: &str = "/bluegreen";
pub const DEFAULT_LEASE_TTL_SECS: u64 = 10;

/// Whether, and through which cgroup, processes on this host that connect
/// to a VIP are steered too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalClients {
    Off,
    /// Attached to this cgroup v2 directory (its processes and those of
    /// its descendants), or to the cgroup v2 root of the mount table.
    On {
        cgroup: Option<PathBuf>,
    },
}

impl Default for LocalClients {
    fn default() -> Self {
        Self::On { cgroup: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interface: Option<String>,
    pub xdp_mode: RequestedXdpMode,
    pub local: LocalClients,
    pub dataplane: DataplaneOptions,
    pub services: Vec<ServiceSpec>,
    /// `None`: a single host, as without etcd.
    pub fleet: Option<FleetConfig>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(Error::io(format!("cannot read config {}", path.display())))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config> {
        parse::config(text, file)
    }
}

impl FleetConfig {
    /// The `[fleet]` section of the config at `path`, the rest unread: an
    /// operator's machine runs fleet commands with a config that describes
    /// no service.
    pub fn load(path: &Path) -> Result<Option<FleetConfig>> {
        let text = std::fs::read_to_string(path)
            .map_err(Error::io(format!("cannot read config {}", path.display())))?;
        parse::fleet_only(&text, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests;

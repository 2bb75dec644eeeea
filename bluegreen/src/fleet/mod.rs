//! The fleet: many hosts switched as one through etcd.
//!
//! etcd holds two kinds of keys below the configured prefix:
//!
//! - `PREFIX/v1/services/NAME`: the desired state of a service
//!   ([`DesiredState`], JSON), written only by `bluegreen fleet switch` and
//!   `rollback`, each time in one transaction that compares the key's
//!   revision with the one the command read (so two operators cannot
//!   interleave). The key's `mod_revision` is *the desired-state revision*.
//! - `PREFIX/v1/hosts/HOST`: what each daemon has applied ([`HostRecord`]),
//!   attached to a lease the daemon keeps alive: a host whose daemon stops
//!   disappears after the lease's TTL and is then no longer waited for.
//! - `PREFIX/v1/changes/NAME`: held (under the command's own lease) by the
//!   one `fleet switch` or `rollback` of that service in progress.
//! - `PREFIX/v1/conflicts/HOST`: written by a daemon that found its host
//!   name registered by another live daemon and refused to start, so that
//!   `fleet status` shows it.
//!
//! Anything in etcd may have been written by hand: a key this bluegreen
//! cannot read is reported and skipped, never allowed to stop the rest of
//! the fleet.
//!
//! This module holds the types, the keys and the decisions (who applied,
//! who refused, what to restore), as pure functions; [`client`] talks to
//! etcd.

pub mod change;
pub mod client;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet};

use bluegreen_common::ChangeCause;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    endpoint::Color,
    error::Result,
    health::Health,
    host::{Host, SwitchOptions, SwitchOutcome, SwitchTarget},
    lifecycle::Phase,
};

/// Version of the JSON documents under `PREFIX/v1/` and of
/// `fleet status --json`.
pub const FLEET_SCHEMA_VERSION: u32 = 1;

/// The keys of one fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` as validated by [`crate::config::validate_fleet_prefix`].
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: format!("{prefix}/v1/"),
        }
    }

    pub fn services(&self) -> String {
        format!("{}services/", self.prefix)
    }

    pub fn service(&self, name: &str) -> String {
        self.services() + name
    }

    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.prefix)
    }

    pub fn host(&self, name: &str) -> String {
        self.hosts() + name
    }

    pub fn changes(&self) -> String {
        format!("{}changes/", self.prefix)
    }

    pub fn change(&self, service: &str) -> String {
        self.changes() + service
    }

    pub fn conflicts(&self) -> String {
        format!("{}conflicts/", self.prefix)
    }

    pub fn conflict(&self, host: &str) -> String {
        self.conflicts() + host
    }
}

/// Reads one fleet document, refusing one that a newer bluegreen wrote
/// (its fields may mean something this one would get wrong).
pub fn read_document<T: DeserializeOwned>(value: &[u8]) -> Result<T, String> {
    let value: serde_json::Value =
        serde_json::from_slice(value).map_err(|error| format!("not JSON: {error}"))?;
    if let Some(version) = value
        .get("schema_version")
        .and_then(serde_json::Value::as_u64)
        && version > u64::from(FLEET_SCHEMA_VERSION)
    {
        return Err(format!(
            "schema version {version}, newer than this bluegreen's {FLEET_SCHEMA_VERSION}: upgrade bluegreen here"
        ));
    }
    serde_json::from_value(value).map_err(|error| error.to_string())
}

/// A desired state as read from etcd: a document, and a weight a host can
/// apply.
pub fn read_desired(value: &[u8]) -> Result<DesiredState, String> {
    let desired: DesiredState = read_document(value)?;
    if desired.target_share > 100 {
        return Err(format!(
            "weight {} is above 100 (the percentage of new flows to {})",
            desired.target_share, desired.target
        ));
    }
    Ok(desired)
}

/// A key below the prefix left out of the fleet, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ignored {
    pub key: String,
    pub reason: String,
}

/// The records below `hosts/`: the live hosts, and the records that are
/// not one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hosts {
    pub live: Vec<HostRecord>,
    pub ignored: Vec<Ignored>,
}

impl Hosts {
    /// Sorts the record at `hosts/NAME`, attached to `lease` (0: none).
    /// Only a readable record under a lease is a live host: a record
    /// without one never expires, so a host counted by it would be waited
    /// for forever after its daemon is gone.
    pub fn add(&mut self, key: &str, name: &str, lease: i64, value: &[u8]) {
        let record = match read_document::<HostRecord>(value) {
            Ok(_) if lease == 0 => Err(
                "not attached to a lease, so it would never expire (written by hand?): not counted as a live host; its daemon attaches it again, or delete it".to_owned(),
            ),
            Ok(record) if record.host != name => Err(format!(
                "holds the record of host {:?}: not counted as a live host",
                record.host
            )),
            other => other,
        };
        match record {
            Ok(record) => self.live.push(record),
            Err(reason) => self.ignored.push(Ignored {
                key: key.to_owned(),
                reason,
            }),
        }
    }
}

/// What the fleet wants of one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// The color new flows go to...
    #[serde(rename = "color")]
    pub target: Color,
    /// ...and the percentage of them it gets: 100 is a full switch; less
    /// is a weighted split where the rest stay on the other color (which
    /// stays active).
    #[serde(rename = "weight")]
    pub target_share: u8,
    /// Raised by every `--force`: a host moves established flows when the
    /// epoch is above the one it last applied.
    pub force_epoch: u64,
    /// The color that served every new flow before: `fleet rollback` goes
    /// back to it.
    pub previous: Color,
    /// Who asked (user@host), for `fleet status`.
    pub by: String,
    pub at_unix_ms: u64,
    /// Written back by a `fleet switch` that failed: the hosts return to
    /// where they were without running the release gates, which would
    /// keep the fleet split while they run (and could refuse the way back).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub undo: bool,
}

impl DesiredState {
    /// Every new flow to `color`, as if it had always been so.
    pub fn initial(color: Color) -> DesiredState {
        DesiredState {
            target: color,
            target_share: 100,
            force_epoch: 0,
            previous: color,
            by: String::new(),
            at_unix_ms: 0,
            undo: false,
        }
    }

    /// The color serving every new flow, or the one still active under a
    /// weighted split.
    pub fn serving(&self) -> Color {
        if self.target_share == 100 {
            self.target
        } else {
            self.target.other()
        }
    }

    /// Whether a host whose live state is `active` with `idle_share`
    /// percent of new flows to the idle color (the dataplane's terms) is in
    /// this desired state.
    pub fn is_met_by(&self, active: Color, idle_share: u8) -> bool {
        if self.target_share == 100 {
            active == self.target && idle_share == 0
        } else {
            active == self.target.other() && idle_share == self.target_share
        }
    }

    /// The desired state a `fleet switch COLOR` writes over `current` (the
    /// one in etcd, or the fleet's common state when there is none yet).
    pub fn next(
        current: &DesiredState,
        target: Color,
        target_share: u8,
        force: bool,
        by: String,
        at_unix_ms: u64,
    ) -> DesiredState {
        DesiredState {
            target,
            target_share,
            force_epoch: current.force_epoch + u64::from(force),
            previous: current.serving(),
            by,
            at_unix_ms,
            undo: false,
        }
    }

    /// This state written back to undo a failed change (see
    /// [`DesiredState::undo`]).
    pub fn as_undo(&self) -> DesiredState {
        DesiredState {
            undo: true,
            ..self.clone()
        }
    }

    /// What `fleet rollback` writes: every new flow back to the color that
    /// served them all before (ending a weighted split, whose active color
    /// never changed).
    pub fn rollback(&self, force: bool, by: String, at_unix_ms: u64) -> Option<DesiredState> {
        let target = if self.target_share < 100 {
            self.serving()
        } else {
            self.previous
        };
        let back = DesiredState::next(self, target, 100, force, by, at_unix_ms);
        (back.target != self.target || self.target_share < 100).then_some(back)
    }
}

/// How a host with `active` and `idle_share` percent of new flows to the
/// idle color reads: `blue`, or `blue, 10% to green`.
pub fn describe(active: Color, idle_share: u8) -> String {
    match idle_share {
        0 => active.to_string(),
        _ => format!("{active}, {idle_share}% to {}", active.other()),
    }
}

impl std::fmt::Display for DesiredState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.target_share {
            100 => write!(f, "{}", self.target),
            share => write!(f, "{}, {share}% to {}", self.target.other(), self.target),
        }
    }
}

/// Brings one local service to `desired` through the same health-checked
/// and gated switch (or weighted shift) as the CLI: a failing release gate
/// is this host's refusal, so the fleet's all-or-nothing holds. `force`
/// moves established flows too. `None` when the service is already there
/// and nothing is forced.
pub fn apply(
    host: &Host,
    service: &str,
    desired: &DesiredState,
    force: bool,
) -> Result<Option<SwitchOutcome>> {
    let view = host.service_view(Some(service))?;
    if desired.is_met_by(view.active, view.record.weight) && !force {
        return Ok(None);
    }
    let outcome = if desired.target_share == 100 {
        let options = SwitchOptions {
            force,
            check: true,
            gates: !desired.undo,
            cause: ChangeCause::Fleet,
        };
        host.switch(Some(service), SwitchTarget::Color(desired.target), options)?
    } else {
        // Not `shift`, which only moves the idle color's share: a host that
        // took a full switch returns to a split by changing its active
        // color back too.
        host.set_split(
            Some(service),
            desired.serving(),
            desired.target_share,
            !desired.undo,
            ChangeCause::Fleet,
        )?
    };
    Ok(Some(outcome))
}

/// One host's record: what its daemon applied, per service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub schema_version: u32,
    pub host: String,
    /// The daemon that holds the name (`pid N on MACHINE`), named to a
    /// second daemon that claims it.
    #[serde(default)]
    pub owner: String,
    pub services: BTreeMap<String, AppliedService>,
    pub updated_unix_ms: u64,
}

/// A daemon that refused to start because its host name was registered by
/// another live daemon (`PREFIX/v1/conflicts/HOST`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub schema_version: u32,
    pub host: String,
    /// The daemon that refused to start.
    pub claimant: String,
    /// The one holding the name, and its lease.
    pub holder: String,
    pub holder_lease: i64,
    pub at_unix_ms: u64,
}

/// One service on one host, as its daemon last saw and applied it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedService {
    /// The live active color...
    #[serde(rename = "color")]
    pub active: Color,
    /// ...and the percentage of new flows the idle color gets.
    #[serde(rename = "weight")]
    pub idle_share: u8,
    /// The last `--force` epoch applied.
    pub force_epoch: u64,
    /// The desired-state revision the daemon last acted on (0: none yet).
    pub revision: i64,
    /// Why that revision was refused (the target color failed its local
    /// health check, say); `None` when it was applied.
    pub refused: Option<String>,
    /// Health of each color as the daemon's checks last saw it.
    pub health: ColorHealth,
    /// The last error, refusal or not (cleared by a success).
    pub last_error: Option<String>,
    /// The live state differs from the desired one without a refusal: an
    /// emergency `switch --local-override`, or the daemon's automatic
    /// rollback.
    pub drift: Option<String>,
    /// Each color's lifecycle phase, for a service with
    /// `[service.lifecycle]` (older records have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<ColorPhases>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColorPhases {
    pub blue: Phase,
    pub green: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColorHealth {
    pub blue: Health,
    pub green: Health,
}

impl Default for ColorHealth {
    fn default() -> Self {
        ColorHealth {
            blue: Health::Unknown,
            green: Health::Unknown,
        }
    }
}

impl AppliedService {
    /// Why the live state (`active`, `idle_share`) differs from `desired`
    /// at `revision` although this host applied it: someone changed the
    /// host alone since. `None` when it matches, or when the revision was
    /// not applied (not yet, or refused: that is reported as such).
    pub fn drift(
        &self,
        desired: &DesiredState,
        revision: i64,
        active: Color,
        idle_share: u8,
    ) -> Option<String> {
        let applied = self.revision == revision && self.refused.is_none();
        (applied && !desired.is_met_by(active, idle_share)).then(|| {
            format!(
                "serving {} while the fleet wants {desired} (a local --local-override or the daemon's automatic rollback)",
                describe(active, idle_share)
            )
        })
    }

    /// Whether applying `desired` moves established flows: its force epoch
    /// is above the last one applied, except for a daemon that just started
    /// (`first`) and finds the service already `met`: it forced that color
    /// before it stopped, and cutting connections over again would only
    /// hurt.
    pub fn must_force(&self, desired: &DesiredState, first: bool, met: bool) -> bool {
        desired.force_epoch > self.force_epoch && !(first && met)
    }
}

/// Where the live hosts stand with one desired-state revision of one
/// service. Hosts that do not serve the service are not in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub applied: Vec<String>,
    /// Host and why.
    pub refused: Vec<(String, String)>,
    pub pending: Vec<String>,
}

impl Progress {
    /// Every live host serving the service acted on the revision.
    pub fn is_settled(&self) -> bool {
        self.pending.is_empty()
    }

    /// Every live host serving the service applied the revision.
    pub fn is_converged(&self) -> bool {
        self.is_settled() && self.refused.is_empty()
    }
}

/// Sorts the live `hosts` by what they did with `revision` of `service`.
/// A host that acted on a later revision has been taken over by another
/// change and is left pending: the caller notices the desired state moved.
pub fn progress(service: &str, revision: i64, hosts: &[HostRecord]) -> Progress {
    let mut progress = Progress::default();
    for record in hosts {
        let Some(applied) = record.services.get(service) else {
            continue;
        };
        let host = record.host.clone();
        match &applied.refused {
            _ if applied.revision != revision => progress.pending.push(host),
            Some(reason) => progress.refused.push((host, reason.clone())),
            None => progress.applied.push(host),
        }
    }
    progress
}

/// The highest force epoch any live host applied for `service`: where the
/// epochs of a desired state made up from the hosts must start.
pub fn applied_force_epoch(service: &str, hosts: &[HostRecord]) -> u64 {
    hosts
        .iter()
        .filter_map(|record| record.services.get(service))
        .map(|applied| applied.force_epoch)
        .max()
        .unwrap_or(0)
}

/// Every service some live host serves.
pub fn served_services(hosts: &[HostRecord]) -> BTreeSet<String> {
    hosts
        .iter()
        .flat_map(|record| record.services.keys().cloned())
        .collect()
}

/// The fleet's state of a service that has no desired state in etcd yet
/// (the first fleet change): the one every live host serving it is in. An
/// all-or-nothing change needs it to know what to restore; `Err` lists the
/// hosts with what each serves when they disagree.
pub fn common_state(service: &str, hosts: &[HostRecord]) -> Result<DesiredState, String> {
    let states: BTreeMap<&str, (Color, u8)> = hosts
        .iter()
        .filter_map(|record| {
            let applied = record.services.get(service)?;
            Some((record.host.as_str(), (applied.active, applied.idle_share)))
        })
        .collect();
    let distinct: BTreeSet<(Color, u8)> = states.values().copied().collect();
    match distinct.into_iter().collect::<Vec<_>>()[..] {
        [(color, 0)] => Ok(DesiredState::initial(color)),
        [] => Err(format!("no live host serves {service}")),
        _ => Err(states
            .iter()
            .map(|(host, (color, weight))| match weight {
                0 => format!("{host} serves {color}"),
                _ => format!("{host} sends {weight}% to {}", color.other()),
            })
            .collect::<Vec<_>>()
            .join(", ")),
    }
}

#[cfg(test)]
mod tests;

//! Changing where new flows go: switch, rollback, weighted shift and
//! preview prefixes. Each change is one update of the
//! service's entry in the services map, made under the interface lock once
//! the state file records it: a change that cannot be recorded (a full or
//! read-only disk) is not made.

use std::time::{Duration, Instant};

use bluegreen_common::{ChangeCause, SERVICE_HAS_PREVIEW, ServiceState};

use super::{
    Host, Lock, OpenService,
    local::{LocalReset, reset_other_colors},
};
use crate::{
    clock::unix_now_ms,
    endpoint::{Cidr, Color, Proto},
    error::{Error, Result},
    health::{HealthCheck, Probe},
    pinned::Put,
    verify::VerifyReport,
};

/// Where a switch goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchTarget {
    Color(Color),
    /// Back to the color that was active before the last switch.
    Previous,
    /// [`SwitchTarget::Previous`] only if the given color is still the
    /// active one when the change is made (under the lock): the daemon's
    /// rollbacks, decided on what a round saw, must not undo a change an
    /// operator made meanwhile. Otherwise nothing changes.
    PreviousFrom(Color),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchOptions {
    /// Move established flows too.
    pub force: bool,
    /// Probe the color that gains traffic with the service's health check
    /// first, and refuse the switch if it fails.
    pub check: bool,
    /// Whether the service's release gates (commands, warm-up) apply: an
    /// operator's switch or rollback. They run, before the health check,
    /// only when `check` is set too; without it they are skipped with a
    /// warning that names them.
    pub gates: bool,
    /// Who asks: the change is counted under it.
    pub cause: ChangeCause,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SwitchOutcome {
    pub interface: String,
    pub service: String,
    /// Where new flows moved from and to (for a weighted shift, from the
    /// active color to the idle one).
    pub from: Color,
    pub to: Color,
    pub forced: bool,
    /// False when the service already had that color and nothing was forced.
    pub changed: bool,
    /// How `to` was found fit before the switch (`None`: not checked).
    pub checked: Option<Checked>,
    /// What the release gates found (`None`: none ran).
    pub gates: Option<VerifyReport>,
    /// How long the map update took (zero when nothing changed).
    pub elapsed: Duration,
    /// Share of new flows for the idle color, before and after.
    pub weight_before: u8,
    pub weight: u8,
    /// Whether the active color itself changed (not only a weight).
    pub active_changed: bool,
    /// What a forced switch did to host-local connections.
    pub local_reset: LocalReset,
}

/// How a color was found fit to take traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// It passed the service's configured health check.
    HealthCheck,
    /// The service has no health check: its backend accepted a TCP
    /// connection, so at least something listens there.
    Connect,
}

/// The color new flows move away from and the one they move to, between
/// two states of a service.
pub(super) fn traffic_direction(before: &ServiceState, after: &ServiceState) -> (Color, Color) {
    let active_before = Color::from_wire(before.active);
    let active_after = Color::from_wire(after.active);
    if active_before == active_after && before.weight > after.weight {
        // A shift undone: traffic moves back from the idle color.
        (active_after.other(), active_after)
    } else if active_before == active_after && after.weight > 0 {
        (active_after, active_after.other())
    } else {
        (active_before, active_after)
    }
}

impl OpenService {
    /// The probe a backend must pass before new flows may reach it: the
    /// service's health check or, for a TCP service without one, a TCP
    /// connect. `None` for a UDP service without a check, which has no
    /// handshake to try.
    pub(super) fn admission_check(&self) -> Option<(HealthCheck, Checked)> {
        let spec = &self.record().spec;
        match &spec.health {
            Some(check) => Some((check.clone(), Checked::HealthCheck)),
            None if spec.proto == Proto::Tcp => {
                Some((HealthCheck::new(Probe::Tcp), Checked::Connect))
            }
            None => None,
        }
    }

    /// Probes `color` with the service's health check or, for a TCP
    /// service without one, a TCP connect: a switch must never send new
    /// flows to a port nothing listens on. `None` for a UDP service without
    /// a check, which has no handshake to try.
    fn check_color(&self, color: Color) -> Result<Option<Checked>> {
        let Some((check, checked)) = self.admission_check() else {
            return Ok(None);
        };
        let pool = self.pool(color);
        check
            .probe_pool(&pool.serving())
            .map_err(|reason| Error::HealthCheckFailed {
                service: self.name().to_owned(),
                color,
                backends: pool.to_string(),
                reason,
                active: Color::from_wire(self.live.active),
            })?;
        Ok(Some(checked))
    }
}

impl Host {
    /// Records `updated` in the state file, then writes it with one map
    /// update; returns how long the map update took. If the file cannot be
    /// written, the map is not touched; if the map update fails, the file
    /// is put back (and, should that fail too, the next command rewrites
    /// it from the map, which it takes as the truth).
    pub(super) fn commit(&self, open: &mut OpenService, updated: ServiceState) -> Result<Duration> {
        let before = open.state.clone();
        let record = open.record_mut();
        if record.spec.active != Color::from_wire(updated.active) {
            record.switched_at_unix_ms = Some(unix_now_ms());
        }
        record.spec.active = Color::from_wire(updated.active);
        record.weight = updated.weight;
        record.previous = Color::from_wire(updated.previous);
        self.state.save(&open.state)?;
        let started = Instant::now();
        if let Err(error) = open.maps.put_service(&open.key, &updated, Put::ReplaceOnly) {
            let _ = self.state.save(&before);
            return Err(error);
        }
        let elapsed = started.elapsed();
        open.live = updated;
        Ok(elapsed)
    }

    /// Makes `target` the active color for every new flow (ending any
    /// weighted shift). Graceful by default: established flows stay where
    /// they are; `force` moves them too. Rolling back a shift in progress
    /// returns its weight to 0.
    pub fn switch(
        &self,
        service: Option<&str>,
        target: SwitchTarget,
        options: SwitchOptions,
    ) -> Result<SwitchOutcome> {
        let rollback = matches!(
            target,
            SwitchTarget::Previous | SwitchTarget::PreviousFrom(_)
        );
        self.change_colors(service, options, rollback, |name, live| {
            let from = Color::from_wire(live.active);
            let to = match target {
                SwitchTarget::Color(color) => color,
                SwitchTarget::PreviousFrom(expected) if expected != from => return Ok(*live),
                // Undoing a shift: the active color never changed.
                SwitchTarget::Previous | SwitchTarget::PreviousFrom(_) if live.weight > 0 => from,
                SwitchTarget::Previous | SwitchTarget::PreviousFrom(_)
                    if live.previous == live.active =>
                {
                    return Err(Error::NothingToRollBack {
                        service: name.to_owned(),
                        color: from,
                    });
                }
                SwitchTarget::Previous | SwitchTarget::PreviousFrom(_) => {
                    Color::from_wire(live.previous)
                }
            };
            let switched = ServiceState {
                active: to.wire(),
                previous: if from == to {
                    live.previous
                } else {
                    from.wire()
                },
                weight: 0,
                ..*live
            };
            // A forced switch moves established flows to `to` for good:
            // later graceful switches leave them there.
            Ok(if options.force {
                ServiceState {
                    generation: live.generation.wrapping_add(1),
                    ..switched
                }
                .with_forced_color(to.wire())
            } else {
                switched
            })
        })
    }

    /// Sends `weight` percent of new flows to `color`, which must be the
    /// idle color; 100 is a full (graceful) switch. Established flows keep
    /// their color as always, whatever `options.force` says.
    pub fn shift(
        &self,
        service: Option<&str>,
        color: Color,
        weight: u8,
        options: SwitchOptions,
    ) -> Result<SwitchOutcome> {
        if weight > 100 {
            return Err(Error::InvalidWeight(weight));
        }
        let options = SwitchOptions {
            force: false,
            ..options
        };
        if weight == 100 {
            return self.switch(service, SwitchTarget::Color(color), options);
        }
        self.change_colors(service, options, false, |name, live| {
            if Color::from_wire(live.active) == color {
                return Err(Error::InvalidService {
                    service: name.to_owned(),
                    message: format!(
                        "{color} is already active; a weight is the share of the idle color ({})",
                        color.other()
                    ),
                });
            }
            Ok(ServiceState { weight, ..*live })
        })
    }

    /// Makes `active` the active color with `weight` percent (below 100)
    /// of new flows to the other one, in one health-checked commit (and
    /// gated, when `gates`), whatever the service serves now: what a fleet
    /// needs to bring a host that went all the way back to a split. A
    /// graceful change: established flows keep their color.
    pub fn set_split(
        &self,
        service: Option<&str>,
        active: Color,
        weight: u8,
        gates: bool,
        cause: ChangeCause,
    ) -> Result<SwitchOutcome> {
        if weight >= 100 {
            return Err(Error::InvalidWeight(weight));
        }
        let options = SwitchOptions {
            force: false,
            check: true,
            gates,
            cause,
        };
        self.change_colors(service, options, false, |_, live| {
            let previous = if live.active == active.wire() {
                live.previous
            } else {
                live.active
            };
            Ok(ServiceState {
                active: active.wire(),
                previous,
                weight,
                ..*live
            })
        })
    }

    /// Applies `decide` (service name, live state -> wanted state) under the
    /// interface lock, running the release gates (before the lock, see
    /// `gates.rs`) and the health check of the color that gains traffic
    /// first if asked, and counts the change (as a rollback if `rollback`).
    fn change_colors(
        &self,
        service: Option<&str>,
        options: SwitchOptions,
        rollback: bool,
        decide: impl Fn(&str, &ServiceState) -> Result<ServiceState>,
    ) -> Result<SwitchOutcome> {
        let run_gates = options.gates && options.check;
        let gated = if run_gates {
            self.gate_change(service, &decide)?
        } else {
            None
        };
        let mut open = self.open_service(service, Lock::Exclusive)?;
        let before = open.live;
        let after = decide(open.name(), &before)?;
        let (from, to) = traffic_direction(&before, &after);
        let changed = after != before;
        let gates = open.record().spec.gates();
        if changed && !gates.is_empty() {
            if run_gates && gated.as_ref().map(|(color, _)| *color) != Some(to) {
                return Err(Error::InvalidService {
                    service: open.name().to_owned(),
                    message: format!(
                        "another change landed while the release gates ran, and this one would now send traffic to {to}, which they did not judge: run the command again"
                    ),
                });
            }
            if options.gates && !options.check {
                let names: Vec<String> = gates.names().iter().map(ToString::to_string).collect();
                log::warn!(
                    "{}: release gates skipped on request (--skip-check): {}",
                    open.name(),
                    names.join(", ")
                );
            }
        }
        if changed && to != Color::from_wire(before.active) || after.weight > before.weight {
            self.require_running(&open, to)?;
        }
        let checked = if changed && options.check {
            open.check_color(to)?
        } else {
            None
        };
        let elapsed = if changed {
            let elapsed = self.commit(&mut open, after)?;
            let switched = before.active != after.active;
            // The change is live: a counter that cannot be written must not
            // make it look failed.
            if let Err(error) =
                open.maps
                    .count_change(after.counter_slot, options.cause, switched, rollback)
            {
                log::warn!(
                    "{}: changed, but not counted in the switch metrics: {error}",
                    open.name()
                );
            }
            elapsed
        } else {
            Duration::ZERO
        };
        let local_reset = if changed && options.force {
            // The switch is live: a reset that fails is reported, not
            // undone.
            reset_other_colors(&open.maps, after.counter_slot, after.forced_color())
                .unwrap_or_else(|error| LocalReset::Failed(error.to_string()))
        } else {
            LocalReset::NotApplicable
        };
        Ok(SwitchOutcome {
            interface: open.state.interface.clone(),
            service: open.name().to_owned(),
            from,
            to,
            forced: options.force,
            changed,
            checked,
            gates: gated.map(|(_, report)| report),
            elapsed,
            weight_before: before.weight,
            weight: after.weight,
            active_changed: before.active != after.active,
            local_reset,
        })
    }

    /// Adds or removes one preview prefix of a service; returns the
    /// service's name and its prefixes afterwards.
    pub fn change_preview(
        &self,
        service: Option<&str>,
        prefix: Cidr,
        add: bool,
    ) -> Result<(String, Vec<Cidr>)> {
        let mut open = self.open_service(service, Lock::Exclusive)?;
        let record = open.record();
        let name = record.spec.name.clone();
        let invalid = |message: String| Error::InvalidService {
            service: name.clone(),
            message,
        };
        if prefix.addr.is_ipv4() != record.spec.vip.is_ipv4() {
            return Err(invalid(format!(
                "{prefix} is not of the VIP's family ({})",
                record.spec.vip
            )));
        }
        // Preview clients reach the idle color: it must be running.
        if add {
            self.require_running(&open, Color::from_wire(open.live.active).other())?;
        }
        // The trie, not the file: it is what steers clients.
        let mut prefixes = open.maps.preview(open.live.counter_slot)?;
        let present = prefixes.contains(&prefix);
        match (add, present) {
            (true, true) => return Ok((name, prefixes)),
            (true, false) => prefixes.push(prefix),
            (false, true) => prefixes.retain(|known| *known != prefix),
            (false, false) => {
                return Err(invalid(format!(
                    "{prefix} is not one of its preview prefixes"
                )));
            }
        }
        prefixes.sort();

        let live = open.live;
        let flagged = ServiceState {
            flags: if prefixes.is_empty() {
                live.flags & !SERVICE_HAS_PREVIEW
            } else {
                live.flags | SERVICE_HAS_PREVIEW
            },
            ..live
        };
        // Recorded first, as in `commit`.
        let before = open.state.clone();
        open.record_mut().preview = prefixes.iter().map(ToString::to_string).collect();
        self.state.save(&open.state)?;
        // The flag never announces prefixes that are not in the trie yet.
        let applied = if prefixes.is_empty() {
            open.maps
                .put_service(&open.key, &flagged, Put::ReplaceOnly)
                .and_then(|()| open.maps.set_preview(live.counter_slot, &prefixes))
        } else {
            open.maps
                .set_preview(live.counter_slot, &prefixes)
                .and_then(|()| open.maps.put_service(&open.key, &flagged, Put::ReplaceOnly))
        };
        if let Err(error) = applied {
            let _ = self.state.save(&before);
            return Err(error);
        }
        Ok((name, prefixes))
    }
}

//! What `status` shows and `--wait-drain` waits for: per service and color,
//! backends, traffic counters and live flows, read from the maps.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use bluegreen_common::{ChangeCause, PassReason, ServiceKey};
use serde::Serialize;

use super::{
    Host, Lock, OpenService,
    colors::alive,
    inventory::Attachment,
    local::{LocalSockets, local_sockets},
};
use crate::{
    clock::unix_now_ms,
    endpoint::{Color, from_wire, service_key},
    error::{Error, Result},
    health::Health,
    lifecycle::{Phase, Plan, Serving, plan},
    pinned::PinnedMaps,
    state::{FleetMarker, InterfaceState},
    verify::{AnalysesRecord, AnalysisStatus},
};

impl Host {
    /// Live flows per color of one service (closing ones included), judged
    /// by the dataplane's own timeouts and clock, plus its host-local
    /// connections: "drained" means drained for every client.
    pub fn live_flows(&self, service: Option<&str>) -> Result<[u64; 2]> {
        self.live_flows_of(&self.open_service(service, Lock::None)?)
    }

    /// [`Host::live_flows`] of a service already open.
    pub(super) fn live_flows_of(&self, open: &OpenService) -> Result<[u64; 2]> {
        let counts = count_live_flows(&open.maps)?;
        let counts = counts.get(&open.key).cloned().unwrap_or_default();
        let local = match local_sockets(&open.maps)? {
            LocalSockets::Elsewhere => {
                log::warn!(
                    "{}: local connections are not counted: they live in the network namespace `up` ran in",
                    open.name()
                );
                None
            }
            sockets => sockets.count_by_color(open.live.counter_slot),
        }
        .unwrap_or_default();
        Ok([0, 1].map(|color| counts.open[color] + counts.closing[color] + local[color]))
    }

    /// Polls until `color` has no live flows on the service, calling
    /// `progress` with each count. False if `timeout` ran out first.
    pub fn wait_drain(
        &self,
        service: Option<&str>,
        color: Color,
        timeout: Duration,
        mut progress: impl FnMut(u64, Duration),
    ) -> Result<bool> {
        let started = Instant::now();
        loop {
            let remaining = self.live_flows(service)?[usize::from(color.wire())];
            progress(remaining, started.elapsed());
            if remaining == 0 {
                return Ok(true);
            }
            if started.elapsed() >= timeout {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(200).min(timeout - started.elapsed()));
        }
    }

    /// Every interface that is up, its state read from the maps (see
    /// [`super::inventory`]), and whether its programs are attached; for
    /// one service, its interface alone (found as [`Host::open_service`]
    /// finds it).
    pub fn status(&self, service: Option<&str>) -> Result<StatusReport> {
        self.preflight()?;
        let report = |state: &InterfaceState, maps: &PinnedMaps, only: Option<&str>| {
            let attachment = self.attachment(&state.interface);
            // A damaged marker must not hide the dataplane's status.
            let fleet = self
                .state
                .load_fleet(&state.interface)
                .unwrap_or_else(|error| {
                    log::warn!("{error}");
                    None
                });
            let mut status = interface_status(state, maps, &attachment, only, fleet)?;
            for service in &mut status.services {
                service.analyses = self.analyses_of(state, &service.name);
                self.add_lifecycle(state, service);
            }
            Ok(status)
        };
        let interfaces = match service {
            Some(_) => {
                let open = self.open_service(service, Lock::None)?;
                vec![report(&open.state, &open.maps, Some(open.name()))?]
            }
            None => {
                let (opened, first_error) = self.open_interfaces()?;
                if let Some(error) = first_error {
                    return Err(error);
                }
                if opened.is_empty() {
                    return Err(Error::NothingUp);
                }
                opened
                    .iter()
                    .map(|open| report(&open.state, &open.maps, None))
                    .collect::<Result<_>>()?
            }
        };
        Ok(StatusReport {
            schema_version: STATUS_SCHEMA_VERSION,
            interfaces,
        })
    }
}

impl Host {
    /// Adds each color's lifecycle and the next planned action to
    /// `service`, when it has `[service.lifecycle]`. A record that cannot
    /// be read shows none: `status` still shows the dataplane.
    fn add_lifecycle(&self, state: &InterfaceState, service: &mut ServiceStatus) {
        let Some(settings) = state
            .service(&service.name)
            .and_then(|record| record.spec.lifecycle.as_ref())
        else {
            return;
        };
        let record = match self.state.load_lifecycle(&service.name) {
            Ok(record) => record,
            Err(error) => {
                log::warn!("{error}");
                return;
            }
        };
        let idle = service.active.other();
        let live_flows = |status: &ColorStatus| {
            status.active_flows + status.closing_flows + status.local_connections.unwrap_or(0)
        };
        let serving = Serving {
            active: service.active,
            idle_share: service.weight,
            has_preview: !service.preview.is_empty(),
            switched_at_unix_ms: service.switched_at_unix_ms,
            idle_flows: live_flows(service.color(idle)),
        };
        let next = plan(
            settings.scale_down_after_secs,
            &serving,
            &record,
            alive,
            unix_now_ms(),
        );
        for color in Color::BOTH {
            let lifecycle = record.color(color);
            let draining = lifecycle.phase == Phase::Running
                && color == idle
                && serving.idle_flows > 0
                && settings.scale_down_after_secs.is_some();
            let status = service.color_mut(color);
            status.lifecycle = Some(LifecycleStatus {
                state: if draining {
                    "draining"
                } else {
                    match lifecycle.phase {
                        Phase::Running => "running",
                        Phase::Starting => "starting",
                        Phase::Stopping => "stopping",
                        Phase::Stopped => "stopped",
                    }
                },
                since_unix_ms: lifecycle.since_unix_ms,
                held: lifecycle.held,
                last_error: lifecycle.last_error.clone(),
                starts: lifecycle.starts,
                stops: lifecycle.stops,
                failures: lifecycle.failures,
            });
        }
        service.next_action = Some(next);
    }

    /// Keeps what the daemon measured of `service`'s analyses for
    /// `status`.
    pub fn save_analyses(&self, service: &str, record: &AnalysesRecord) -> Result<()> {
        self.state.save_analyses(service, record)
    }

    /// What the daemon last measured of the analyses `service` still
    /// configures (a reload may have dropped some since). A record that
    /// cannot be read shows none: `status` still shows the dataplane.
    fn analyses_of(&self, state: &InterfaceState, service: &str) -> Vec<AnalysisStatus> {
        let Some(configured) = state.service(service).map(|record| &record.spec.analysis) else {
            return Vec::new();
        };
        if configured.is_empty() {
            return Vec::new();
        }
        let record = self.state.load_analyses(service).unwrap_or_else(|error| {
            log::warn!("{error}");
            None
        });
        record
            .map(|record| record.analyses)
            .unwrap_or_default()
            .into_iter()
            .filter(|status| {
                configured
                    .iter()
                    .any(|analysis| analysis.name == status.last.analysis)
            })
            .collect()
    }
}

/// Live flows of one service, per (effective) color.
#[derive(Clone, Debug, Default)]
struct FlowCounts {
    open: [u64; 2],
    /// Seen a FIN or RST; kept for the closing timeout so stragglers of the
    /// connection's end still reach the right backend.
    closing: [u64; 2],
    /// Open flows per backend they are kept on (flows a forced switch will
    /// move on their next packet are on none yet).
    by_backend: BTreeMap<([u8; 16], [u8; 2]), u64>,
}

/// Live flows per service and (effective) color, in one pass over the flow
/// table.
fn count_live_flows(maps: &PinnedMaps) -> Result<BTreeMap<ServiceKey, FlowCounts>> {
    let settings = maps.settings()?;
    let services = maps.services()?;
    let now = crate::clock::now()?;
    let mut counts: BTreeMap<ServiceKey, FlowCounts> = BTreeMap::new();
    for (key, flow) in maps.flows() {
        if !settings.is_live(key.proto, &flow, now) {
            continue;
        }
        let service_key = key.service_key();
        let Some(service) = services.get(&service_key) else {
            continue;
        };
        // Flows from before a forced switch follow the color it forced.
        let current = flow.generation == service.generation;
        let color = if current {
            flow.color
        } else {
            service.forced_color()
        };
        let counts = counts.entry(service_key).or_default();
        if current && flow.closing == 0 {
            *counts
                .by_backend
                .entry((flow.backend.addr, flow.backend.port))
                .or_default() += 1;
        }
        let bucket = if flow.closing != 0 {
            &mut counts.closing
        } else {
            &mut counts.open
        };
        bucket[usize::from(color & 1)] += 1;
    }
    Ok(counts)
}

/// Bumped on any incompatible change to the JSON below.
pub const STATUS_SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub schema_version: u32,
    pub interfaces: Vec<InterfaceStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InterfaceStatus {
    pub interface: String,
    /// False once the interface was deleted (its pins and maps remain).
    pub interface_present: bool,
    /// Both programs attached to the interface as it is now: false when
    /// it is gone, was re-created, or lost a link pin (`up` repairs it).
    pub attached: bool,
    pub xdp_mode: String,
    pub flow_capacity: u32,
    /// Packets the ingress program passed untouched, by reason.
    pub passed: BTreeMap<String, u64>,
    pub services: Vec<ServiceStatus>,
    /// The fleet this interface's daemon follows, and whether it reaches
    /// etcd (absent without `[fleet]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetMarker>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub proto: String,
    pub active: Color,
    pub previous: Color,
    pub generation: u32,
    /// When the active color last changed (ms since the Unix epoch).
    pub switched_at_unix_ms: Option<u64>,
    /// Share of new flows (percent) sent to the idle color.
    pub weight: u8,
    /// Client prefixes whose new flows go to the idle color.
    pub preview: Vec<String>,
    /// Changes of the active color since the service was added, by cause
    /// (`operator`, `shift`, `auto_rollback`).
    pub switches: BTreeMap<&'static str, u64>,
    /// Rollbacks, by cause (`operator`, `shift`, `unhealthy`).
    pub rollbacks: BTreeMap<&'static str, u64>,
    pub blue: ColorStatus,
    pub green: ColorStatus,
    /// Each configured analysis as the daemon last measured it (empty
    /// without a daemon measuring them).
    pub analyses: Vec<AnalysisStatus>,
    /// What the daemon does about the idle color next (absent without
    /// `[service.lifecycle]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_action: Option<Plan>,
}

impl ServiceStatus {
    pub fn color(&self, color: Color) -> &ColorStatus {
        match color {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        }
    }

    fn color_mut(&mut self, color: Color) -> &mut ColorStatus {
        match color {
            Color::Blue => &mut self.blue,
            Color::Green => &mut self.green,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ColorStatus {
    /// The pool's first backend (the whole pool is in `backends`).
    pub backend: String,
    pub backends: Vec<BackendStatus>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Live flows that have not seen a FIN or RST.
    pub active_flows: u64,
    /// Live flows that have (they expire after the closing timeout).
    pub closing_flows: u64,
    /// Connected sockets of host-local clients on this color; null when
    /// they cannot be seen (local clients not steered, or this command
    /// runs in another network namespace than `up` did).
    pub local_connections: Option<u64>,
    /// Where the color is in its lifecycle (absent without
    /// `[service.lifecycle]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleStatus>,
}

/// A color's lifecycle as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct LifecycleStatus {
    /// `running`, `starting`, `draining` (idle, running, with live flows,
    /// due to be stopped once they end), `stopping` or `stopped`.
    pub state: &'static str,
    pub since_unix_ms: u64,
    pub held: bool,
    pub last_error: Option<String>,
    pub starts: u64,
    pub stops: u64,
    pub failures: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendStatus {
    pub addr: String,
    /// Configured weight, kept while drained.
    pub weight: u32,
    /// The weight the daemon gives it under load, in tenths of `weight`
    /// (`[service.load]`); absent when load does not steer the pool.
    pub load_weight: Option<u32>,
    /// The daemon's last scrape of its load failed: `load_weight` is the
    /// last one it read.
    pub load_unreadable: bool,
    /// `active` or `draining` (drained: no new flows).
    pub state: &'static str,
    /// `unhealthy` while the daemon keeps it out of the table for failing
    /// its health checks, else `unknown`: the CLI does not see the
    /// daemon's probes (the metrics' `bluegreen_backend_up` does).
    pub health: Health,
    /// Live flows kept on it that have not seen a FIN or RST.
    pub active_flows: u64,
    /// Client-to-backend traffic since it joined the pool.
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

fn interface_status(
    state: &InterfaceState,
    maps: &PinnedMaps,
    attachment: &Attachment,
    only: Option<&str>,
    fleet: Option<FleetMarker>,
) -> Result<InterfaceStatus> {
    let flows = count_live_flows(maps)?;
    // Status and the metrics go on without them (`local_connections` is
    // then null); `--wait-drain` does not (see `live_flows`).
    let local = local_sockets(maps).unwrap_or_else(|error| {
        log::warn!(
            "{}: local connections are not counted: {error}",
            state.interface
        );
        LocalSockets::Off
    });
    let mut services = Vec::new();
    for record in &state.services {
        if only.is_some_and(|name| name != record.spec.name) {
            continue;
        }
        let key = service_key(record.spec.vip, record.spec.proto);
        // Gone since the state was read from the maps: a concurrent change.
        let Some(live) = maps.service(&key)? else {
            continue;
        };
        let flows = flows.get(&key).cloned().unwrap_or_default();
        let color_status = |color: Color| -> Result<ColorStatus> {
            let traffic = maps.traffic(live.counter_slot, color.wire())?;
            let wire = maps.pool_backends(live.pool(color.wire()))?;
            let addrs: Vec<_> = wire
                .iter()
                .map(|backend| from_wire(key.family, &backend.endpoint))
                .collect();
            let pool = record.spec.backends(color).aligned(&addrs);
            let backends = pool
                .backends()
                .iter()
                .zip(&wire)
                .map(|(backend, wire)| {
                    let traffic = maps.backend_traffic(wire.counter_slot)?;
                    let endpoint = wire.endpoint;
                    Ok(BackendStatus {
                        addr: backend.addr.to_string(),
                        weight: backend.weight,
                        load_weight: backend.load_weight,
                        load_unreadable: backend.load_unreadable,
                        state: if backend.drained {
                            "draining"
                        } else {
                            "active"
                        },
                        health: if backend.unhealthy {
                            Health::Unhealthy
                        } else {
                            Health::Unknown
                        },
                        active_flows: flows
                            .by_backend
                            .get(&(endpoint.addr, endpoint.port))
                            .copied()
                            .unwrap_or(0),
                        packets: traffic.packets,
                        bytes: traffic.bytes,
                        new_flows: traffic.new_flows,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(ColorStatus {
                backend: backends
                    .first()
                    .map(|backend| backend.addr.clone())
                    .unwrap_or_default(),
                backends,
                packets: traffic.packets,
                bytes: traffic.bytes,
                new_flows: traffic.new_flows,
                active_flows: flows.open[usize::from(color.wire())],
                closing_flows: flows.closing[usize::from(color.wire())],
                local_connections: local
                    .count_by_color(live.counter_slot)
                    .map(|counts| counts[usize::from(color.wire())]),
                lifecycle: None,
            })
        };
        let counted = maps.switch_counters(live.counter_slot)?;
        let by_cause = |counts: [u64; ChangeCause::COUNT],
                        name: fn(ChangeCause) -> &'static str| {
            ChangeCause::ALL
                .into_iter()
                .map(|cause| (name(cause), counts[cause as usize]))
                .collect()
        };
        services.push(ServiceStatus {
            name: record.spec.name.clone(),
            vip: record.spec.vip.to_string(),
            proto: record.spec.proto.to_string(),
            active: Color::from_wire(live.active),
            previous: Color::from_wire(live.previous),
            generation: live.generation,
            switched_at_unix_ms: record.switched_at_unix_ms,
            weight: live.weight,
            preview: record.preview.clone(),
            switches: by_cause(counted.switches, ChangeCause::switch_name),
            rollbacks: by_cause(counted.rollbacks, ChangeCause::rollback_name),
            blue: color_status(Color::Blue)?,
            green: color_status(Color::Green)?,
            analyses: Vec::new(),
            next_action: None,
        });
    }
    let mut passed = BTreeMap::new();
    for reason in PassReason::ALL {
        passed.insert(reason.name().to_owned(), maps.passed(reason)?);
    }
    Ok(InterfaceStatus {
        interface: state.interface.clone(),
        interface_present: attachment.interface_present,
        attached: attachment.attached(),
        xdp_mode: state.xdp_mode.clone(),
        flow_capacity: state.flow_capacity,
        passed,
        services,
        fleet,
    })
}

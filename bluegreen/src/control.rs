//! What the operator does to a running instance: switch, roll back, change
//! a backend, look at status.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bluegreen_common::{PassReason, SERVICE_HAS_PREVIEW, ServiceKey, ServiceState};
use serde::Serialize;

use crate::{
    config::{ServiceSpec, check_same_family},
    dataplane::{BPF_EXIST, Host},
    endpoint::Cidr,
    endpoint::{Color, from_wire, service_key, to_wire},
    error::{Error, Result},
    pinned::{PinLayout, PinnedMaps},
    state::InterfaceState,
};

/// Where a switch goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchTarget {
    Color(Color),
    /// Back to the color that was active before the last switch.
    Previous,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchOutcome {
    pub interface: String,
    pub service: String,
    pub from: Color,
    pub to: Color,
    pub forced: bool,
    /// False when the service already had that color and nothing was forced.
    pub changed: bool,
    /// Time from reading the service's state to the map update returning.
    pub elapsed: Duration,
    /// Share of new flows for the idle color, before and after.
    pub weight_before: u8,
    pub weight: u8,
    /// Whether the active color itself changed (not only a weight).
    pub active_changed: bool,
}

/// See [`Host::service_view`].
#[derive(Clone, Debug)]
pub struct ServiceView {
    pub active: Color,
    pub previous: Color,
    /// Indexed by color: blue, green.
    pub backends: [SocketAddr; 2],
    pub record: crate::state::ServiceRecord,
}

impl ServiceView {
    pub fn backend(&self, color: Color) -> SocketAddr {
        self.backends[usize::from(color.wire())]
    }
}

/// One service under its interface's lock, with everything read afresh.
struct LockedService {
    _lock: crate::state::InterfaceLock,
    state: InterfaceState,
    /// Of the service's record in `state.services`.
    index: usize,
    key: ServiceKey,
    maps: PinnedMaps,
    live: ServiceState,
}

/// A service located by name, with its interface's state.
struct Located {
    state: InterfaceState,
    name: String,
}

impl Host {
    /// Finds the named service (or the only one) among the interfaces that
    /// are up.
    fn locate(&self, service: Option<&str>) -> Result<Located> {
        let up: Vec<InterfaceState> = self
            .state
            .list()?
            .into_iter()
            .filter(|state| self.layout(&state.interface).is_up())
            .collect();
        if up.is_empty() {
            return Err(Error::NotUp {
                where_: String::new(),
            });
        }
        let all: Vec<(&InterfaceState, &str)> = up
            .iter()
            .flat_map(|state| {
                state
                    .services
                    .iter()
                    .map(move |record| (state, record.spec.name.as_str()))
            })
            .collect();
        let known = || {
            all.iter()
                .map(|(_, name)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let found = match service {
            Some(wanted) => all
                .iter()
                .find(|(_, name)| *name == wanted)
                .ok_or_else(|| Error::UnknownService {
                    name: wanted.to_owned(),
                    known: known(),
                })?,
            None if all.len() == 1 => &all[0],
            None => return Err(Error::ServiceNotGiven { known: known() }),
        };
        Ok(Located {
            state: found.0.clone(),
            name: found.1.to_owned(),
        })
    }

    /// Takes the interface lock for one service and reads its state afresh
    /// (another command may have just written it).
    fn lock_service(&self, service: Option<&str>) -> Result<LockedService> {
        crate::dataplane::preflight(self)?;
        let located = self.locate(service)?;
        let iface = located.state.interface.clone();
        let lock = self.state.lock(&iface)?;
        let state = self.state.load(&iface)?.ok_or_else(|| Error::NotUp {
            where_: format!(" on {iface}"),
        })?;
        let index = state
            .services
            .iter()
            .position(|record| record.spec.name == located.name)
            .ok_or_else(|| Error::UnknownService {
                name: located.name.clone(),
                known: String::new(),
            })?;
        let spec = &state.services[index].spec;
        let key = service_key(spec.vip, spec.proto);
        let maps = PinnedMaps::open(&self.layout(&iface))?;
        let live = maps.service(&key)?.ok_or_else(|| Error::InvalidService {
            service: located.name.clone(),
            message: "it is in the state file but not in the dataplane: run `bluegreen up` again"
                .to_owned(),
        })?;
        Ok(LockedService {
            _lock: lock,
            state,
            index,
            key,
            maps,
            live,
        })
    }

    /// Runs `change` on the live state of one service under the interface
    /// lock, writes the result with one map update, and records it in the
    /// state file. Returns the interface, the service name, whether
    /// anything changed, and how long the map update took.
    fn update_service(
        &self,
        service: Option<&str>,
        change: impl FnOnce(&ServiceSpec, &ServiceState) -> Result<Option<ServiceState>>,
    ) -> Result<(String, String, bool, Duration)> {
        let mut locked = self.lock_service(service)?;
        let started = Instant::now();
        let record = &mut locked.state.services[locked.index];
        let name = record.spec.name.clone();
        let iface = locked.state.interface.clone();
        let Some(updated) = change(&record.spec, &locked.live)? else {
            return Ok((iface, name, false, started.elapsed()));
        };
        locked
            .maps
            .services
            .insert(locked.key, updated, BPF_EXIST)
            .map_err(Error::ebpf("cannot update the services map"))?;
        let elapsed = started.elapsed();
        if updated.generation != locked.live.generation {
            // A forced switch: established flows notice on their next packet.
            locked
                .maps
                .set_generation(updated.counter_slot, updated.generation)?;
        }
        if record.spec.active != Color::from_wire(updated.active) {
            record.switched_at_unix_ms = Some(unix_now_ms());
        }
        let family = locked.key.family;
        record.spec.active = Color::from_wire(updated.active);
        record.weight = updated.weight;
        record.previous = Color::from_wire(updated.previous);
        record.spec.blue = from_wire(family, updated.backend(Color::Blue.wire()));
        record.spec.green = from_wire(family, updated.backend(Color::Green.wire()));
        self.state.save(&locked.state)?;
        Ok((iface, name, true, elapsed))
    }

    /// One service as it is now: names, checks and timestamps from the
    /// state file, colors and backends from the live map.
    pub fn service_view(&self, service: Option<&str>) -> Result<ServiceView> {
        crate::dataplane::preflight(self)?;
        let located = self.locate(service)?;
        let name = located.name.as_str();
        let record = located
            .state
            .service(&located.name)
            .expect("located services exist")
            .clone();
        let maps = PinnedMaps::open(&self.layout(&located.state.interface))?;
        let key = service_key(record.spec.vip, record.spec.proto);
        let live = maps.service(&key)?.ok_or_else(|| Error::NotUp {
            where_: format!(" for service {name}"),
        })?;
        Ok(ServiceView {
            active: Color::from_wire(live.active),
            previous: Color::from_wire(live.previous),
            backends: [Color::Blue, Color::Green]
                .map(|color| from_wire(key.family, live.backend(color.wire()))),
            record,
        })
    }

    /// Probes `color` of a service with its configured health check, if it
    /// has one. `Ok(false)` when there is no check to run.
    pub fn check_color(&self, service: Option<&str>, color: Color) -> Result<bool> {
        crate::dataplane::preflight(self)?;
        let located = self.locate(service)?;
        let record = located
            .state
            .service(&located.name)
            .expect("located services exist");
        let Some(check) = &record.spec.health else {
            return Ok(false);
        };
        let maps = PinnedMaps::open(&self.layout(&located.state.interface))?;
        let key = service_key(record.spec.vip, record.spec.proto);
        let live = maps.service(&key)?.ok_or_else(|| Error::NotUp {
            where_: format!(" for service {}", located.name),
        })?;
        let backend = from_wire(key.family, live.backend(color.wire()));
        check
            .probe(backend)
            .map_err(|reason| Error::HealthCheckFailed {
                service: located.name.clone(),
                color: color.to_string(),
                backend: backend.to_string(),
                reason,
                active: Color::from_wire(live.active).to_string(),
            })?;
        Ok(true)
    }

    /// Makes `target` the active color for every new flow (ending any
    /// weighted shift). Graceful by default: established flows stay where
    /// they are; `force` moves them too. Rolling back a shift in progress
    /// returns its weight to 0.
    pub fn switch(
        &self,
        service: Option<&str>,
        target: SwitchTarget,
        force: bool,
    ) -> Result<SwitchOutcome> {
        self.change_colors(service, force, |spec, live| {
            let from = Color::from_wire(live.active);
            let to = match target {
                SwitchTarget::Color(color) => color,
                // Undoing a shift: the active color never changed.
                SwitchTarget::Previous if live.weight > 0 => from,
                SwitchTarget::Previous if live.previous == live.active => {
                    return Err(Error::NothingToRollBack {
                        service: spec.name.clone(),
                        color: from.to_string(),
                    });
                }
                SwitchTarget::Previous => Color::from_wire(live.previous),
            };
            Ok(ServiceState {
                active: to.wire(),
                previous: if from == to {
                    live.previous
                } else {
                    from.wire()
                },
                weight: 0,
                generation: live.generation.wrapping_add(u32::from(force)),
                ..*live
            })
        })
    }

    /// Sends `weight` percent of new flows to `color`, which must be the
    /// idle color; 100 is a full (graceful) switch. Established flows keep
    /// their color as always.
    pub fn shift(&self, service: Option<&str>, color: Color, weight: u8) -> Result<SwitchOutcome> {
        if weight > 100 {
            return Err(Error::InvalidWeight(weight));
        }
        if weight == 100 {
            return self.switch(service, SwitchTarget::Color(color), false);
        }
        self.change_colors(service, false, |spec, live| {
            if Color::from_wire(live.active) == color {
                return Err(Error::InvalidService {
                    service: spec.name.clone(),
                    message: format!(
                        "{color} is already active; a weight is the share of the idle color ({})",
                        color.other()
                    ),
                });
            }
            Ok(ServiceState { weight, ..*live })
        })
    }

    /// Applies `decide` (live state -> wanted state) with one map update.
    fn change_colors(
        &self,
        service: Option<&str>,
        force: bool,
        decide: impl FnOnce(&ServiceSpec, &ServiceState) -> Result<ServiceState>,
    ) -> Result<SwitchOutcome> {
        let mut before = None;
        let mut after = None;
        let (interface, name, changed, elapsed) = self.update_service(service, |spec, live| {
            let updated = decide(spec, live)?;
            before = Some(*live);
            after = Some(updated);
            Ok((updated != *live).then_some(updated))
        })?;
        let (before, after) = (
            before.expect("the change closure ran"),
            after.expect("the change closure ran"),
        );
        let (from, to) = if before.active == after.active && before.weight > after.weight {
            // A shift undone: traffic moves back from the idle color.
            (
                Color::from_wire(before.active ^ 1),
                Color::from_wire(after.active),
            )
        } else if before.active == after.active && after.weight > 0 {
            (
                Color::from_wire(after.active),
                Color::from_wire(after.active ^ 1),
            )
        } else {
            (
                Color::from_wire(before.active),
                Color::from_wire(after.active),
            )
        };
        Ok(SwitchOutcome {
            interface,
            service: name,
            from,
            to,
            forced: force,
            changed,
            elapsed,
            weight_before: before.weight,
            weight: after.weight,
            active_changed: before.active != after.active,
        })
    }

    /// Adds or removes one preview prefix of a service; returns the list.
    pub fn change_preview(
        &self,
        service: Option<&str>,
        prefix: Cidr,
        add: bool,
    ) -> Result<(String, Vec<Cidr>)> {
        let mut locked = self.lock_service(service)?;
        let record = &mut locked.state.services[locked.index];
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
        let mut prefixes: Vec<Cidr> = record
            .preview
            .iter()
            .map(|text| text.parse())
            .collect::<Result<_>>()?;
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

        let (key, live, maps) = (locked.key, locked.live, &mut locked.maps);
        let flags = if prefixes.is_empty() {
            live.flags & !SERVICE_HAS_PREVIEW
        } else {
            live.flags | SERVICE_HAS_PREVIEW
        };
        let write_flags = |maps: &mut PinnedMaps| {
            maps.services
                .insert(key, ServiceState { flags, ..live }, BPF_EXIST)
                .map_err(Error::ebpf("cannot update the services map"))
        };
        // The flag never announces prefixes that are not in the trie yet.
        if prefixes.is_empty() {
            write_flags(maps)?;
            maps.set_preview(live.counter_slot, &prefixes)?;
        } else {
            maps.set_preview(live.counter_slot, &prefixes)?;
            write_flags(maps)?;
        }
        record.preview = prefixes.iter().map(ToString::to_string).collect();
        self.state.save(&locked.state)?;
        Ok((name, prefixes))
    }

    /// Points one color of a service at another backend. Flows already on
    /// the old backend stay there until they end.
    pub fn set_backend(
        &self,
        service: Option<&str>,
        color: Color,
        backend: SocketAddr,
    ) -> Result<(String, SocketAddr)> {
        let mut old = None;
        let (_, name, _, _) = self.update_service(service, |spec, live| {
            let family = service_key(spec.vip, spec.proto).family;
            check_same_family(&spec.vip, &backend, &format!("{color} backend"))?;
            if from_wire(family, live.backend(color.other().wire())) == backend {
                return Err(Error::InvalidService {
                    service: spec.name.clone(),
                    message: format!("{backend} is already the {} backend", color.other()),
                });
            }
            if backend == spec.vip {
                return Err(Error::InvalidService {
                    service: spec.name.clone(),
                    message: "a backend cannot be the VIP itself".to_owned(),
                });
            }
            old = Some(from_wire(family, live.backend(color.wire())));
            let mut updated = *live;
            updated.backends[usize::from(color.wire())] = to_wire(backend);
            Ok(Some(updated))
        })?;
        Ok((name, old.expect("the change closure ran")))
    }

    /// Live flows per color of one service (closing ones included), judged
    /// by the dataplane's own timeouts and clock.
    pub fn live_flows(&self, service: Option<&str>) -> Result<[u64; 2]> {
        let located = self.locate(service)?;
        let record = located
            .state
            .service(&located.name)
            .expect("located services exist");
        let maps = PinnedMaps::open(&self.layout(&located.state.interface))?;
        let key = service_key(record.spec.vip, record.spec.proto);
        let counts = count_live_flows(&maps)?;
        let counts = counts.get(&key).copied().unwrap_or_default();
        Ok([0, 1].map(|color| counts.open[color] + counts.closing[color]))
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

    pub fn status(&self, service: Option<&str>) -> Result<StatusReport> {
        crate::dataplane::preflight(self)?;
        let mut interfaces = Vec::new();
        let states = self.state.list()?;
        if let Some(wanted) = service {
            self.locate(Some(wanted))?;
        }
        for state in states {
            let layout = self.layout(&state.interface);
            if !layout.is_up() {
                continue;
            }
            interfaces.push(interface_status(&layout, &state, service)?);
        }
        if interfaces.is_empty() {
            return Err(Error::NotUp {
                where_: String::new(),
            });
        }
        Ok(StatusReport {
            schema_version: STATUS_SCHEMA_VERSION,
            interfaces,
        })
    }
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or(0)
}

/// Live flows of one service, per (effective) color.
#[derive(Clone, Copy, Debug, Default)]
struct FlowCounts {
    open: [u64; 2],
    /// Seen a FIN or RST; kept for the closing timeout so stragglers of the
    /// connection's end still reach the right backend.
    closing: [u64; 2],
}

/// Live flows per service and (effective) color, in one pass over the flow
/// table.
fn count_live_flows(maps: &PinnedMaps) -> Result<BTreeMap<ServiceKey, FlowCounts>> {
    let settings = maps.settings()?;
    let services: BTreeMap<ServiceKey, ServiceState> = maps
        .services
        .iter()
        .collect::<std::result::Result<_, _>>()
        .map_err(Error::ebpf("cannot read the services map"))?;
    let now = crate::clock::now()?;
    let mut counts: BTreeMap<ServiceKey, FlowCounts> = BTreeMap::new();
    for entry in maps.flows.iter() {
        // An entry evicted between listing its key and reading it is gone.
        let Ok((key, flow)) = entry else { continue };
        if !settings.is_live(key.proto, &flow, now) {
            continue;
        }
        let service_key = ServiceKey {
            vip: key.server,
            port: key.server_port,
            proto: key.proto,
            family: key.family,
        };
        let Some(service) = services.get(&service_key) else {
            continue;
        };
        // Flows from before a forced switch follow the active color.
        let color = if flow.generation == service.generation {
            flow.color
        } else {
            service.active
        };
        let counts = counts.entry(service_key).or_default();
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
    pub xdp_mode: String,
    pub flow_capacity: u32,
    /// Packets the ingress program passed untouched, by reason.
    pub passed: BTreeMap<String, u64>,
    pub services: Vec<ServiceStatus>,
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
    pub blue: ColorStatus,
    pub green: ColorStatus,
}

#[derive(Clone, Debug, Serialize)]
pub struct ColorStatus {
    pub backend: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Live flows that have not seen a FIN or RST.
    pub active_flows: u64,
    /// Live flows that have (they expire after the closing timeout).
    pub closing_flows: u64,
}

fn interface_status(
    layout: &PinLayout,
    state: &InterfaceState,
    only: Option<&str>,
) -> Result<InterfaceStatus> {
    let maps = PinnedMaps::open(layout)?;
    let flows = count_live_flows(&maps)?;
    let mut services = Vec::new();
    for record in &state.services {
        if only.is_some_and(|name| name != record.spec.name) {
            continue;
        }
        let key = service_key(record.spec.vip, record.spec.proto);
        // The live map wins over the state file.
        let Some(live) = maps.service(&key)? else {
            continue;
        };
        let flows = flows.get(&key).copied().unwrap_or_default();
        let color_status = |color: Color| -> Result<ColorStatus> {
            let traffic = maps.traffic(live.counter_slot, color.wire())?;
            Ok(ColorStatus {
                backend: from_wire(key.family, live.backend(color.wire())).to_string(),
                packets: traffic.packets,
                bytes: traffic.bytes,
                new_flows: traffic.new_flows,
                active_flows: flows.open[usize::from(color.wire())],
                closing_flows: flows.closing[usize::from(color.wire())],
            })
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
            blue: color_status(Color::Blue)?,
            green: color_status(Color::Green)?,
        });
    }
    let mut passed = BTreeMap::new();
    for reason in PassReason::ALL {
        passed.insert(reason.name().to_owned(), maps.passed(reason)?);
    }
    Ok(InterfaceStatus {
        interface: state.interface.clone(),
        xdp_mode: state.xdp_mode.clone(),
        flow_capacity: state.flow_capacity,
        passed,
        services,
    })
}

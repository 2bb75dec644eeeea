//! Bringing an interface up (load, attach, pin, fill the maps; or repair
//! whatever of that is missing), applying a new configuration to it, and
//! taking it down.

use std::fs;

use aya::{Ebpf, EbpfLoader};
use bluegreen_common::map_names;

use super::{Host, inventory::ifindex, local, programs, reconcile::reconcile_services};
use crate::{
    EBPF_OBJECT,
    config::{DataplaneOptions, LocalClients, RequestedXdpMode, ServiceSpec},
    endpoint::service_key,
    error::{Error, Result},
    pinned::{LinkState, PinLayout, PinnedMaps, check_pinned_maps, pinned_interfaces, unpin_link},
    state::{InterfaceState, STATE_VERSION},
};

/// Everything `up` needs, already validated.
#[derive(Clone, Debug)]
pub struct UpRequest {
    pub iface: String,
    pub xdp_mode: RequestedXdpMode,
    pub dataplane: DataplaneOptions,
    pub services: Vec<ServiceSpec>,
    pub local: LocalClients,
}

pub struct UpOutcome {
    /// Kept by the daemon to forward the programs' log records.
    pub ebpf: Ebpf,
    pub hot_upgrade: bool,
    pub state: InterfaceState,
    /// Things the operator should know (restored colors, kept settings).
    pub notes: Vec<String>,
}

fn require_interface(iface: &str) -> Result<u32> {
    ifindex(iface).ok_or_else(|| Error::InterfaceNotFound {
        name: iface.to_owned(),
    })
}

/// Removes a fresh instance's pins if `up` fails before the end, so a failed
/// `up` leaves nothing attached and nothing pinned.
struct FreshInstanceGuard {
    layout: PinLayout,
    armed: bool,
}

impl Drop for FreshInstanceGuard {
    fn drop(&mut self) {
        if self.armed {
            remove_pins(&self.layout);
        }
    }
}

fn remove_pins(layout: &PinLayout) {
    // Links first, so the programs are gone before the maps they use.
    local::remove_local_links(layout);
    for link in [layout.tc_link(), layout.xdp_link()] {
        unpin_link(&link);
    }
    for name in map_names::ALL {
        let _ = fs::remove_file(layout.map(name));
    }
    let _ = fs::remove_file(layout.older_switch_counters());
    let dir = layout.dir();
    let _ = fs::remove_dir(&dir);
    // Parents only go when empty: other interfaces may still be up.
    for parent in dir.ancestors().skip(1).take(2) {
        if fs::remove_dir(parent).is_err() {
            break;
        }
    }
}

/// Creates (or, on a hot upgrade, reuses) the pinned maps; the flow table
/// keeps its pinned size (`pinned_capacity`), since resizing it would drop
/// every flow. Returns the loaded object and the flow table's capacity.
fn load_object(
    layout: &PinLayout,
    request: &UpRequest,
    pinned_capacity: Option<u32>,
    notes: &mut Vec<String>,
) -> Result<(Ebpf, u32)> {
    let flow_capacity = match pinned_capacity {
        Some(pinned) if pinned != request.dataplane.flow_capacity => {
            notes.push(format!(
                "the pinned flow table holds {pinned} flows and is kept (resizing it would drop every flow; `down` then `up` to resize to {})",
                request.dataplane.flow_capacity
            ));
            pinned
        }
        _ => request.dataplane.flow_capacity,
    };
    let log_level = log::max_level() as usize as u8;
    let mut loader = EbpfLoader::new();
    for name in map_names::ALL {
        loader.map_pin_path(name, layout.map(name));
    }
    loader
        .map_max_entries(map_names::FLOWS, flow_capacity)
        .override_global(aya_log::LEVEL, &log_level, false);
    let ebpf = loader
        .load(EBPF_OBJECT)
        .map_err(Error::ebpf("cannot load the eBPF programs"))?;
    Ok((ebpf, flow_capacity))
}

impl Host {
    /// A VIP belongs to one interface: served on two, its replies and its
    /// host-local clients would follow only one of them. Checked against
    /// the services map of every other interface that is up; one that
    /// cannot be read is passed over with a warning (`status` shows why).
    fn refuse_vips_served_elsewhere(&self, request: &UpRequest) -> Result<()> {
        for iface in pinned_interfaces(&self.pin_dir)? {
            if iface == request.iface {
                continue;
            }
            let served = match PinnedMaps::services_of(&self.layout(&iface)) {
                Ok(served) => served,
                Err(error) => {
                    log::warn!("cannot tell which VIPs {iface} serves: {error}");
                    continue;
                }
            };
            if let Some(spec) = request
                .services
                .iter()
                .find(|spec| served.contains(&service_key(spec.vip, spec.proto)))
            {
                return Err(Error::VipServedElsewhere {
                    service: spec.name.clone(),
                    vip: spec.vip,
                    proto: spec.proto,
                    iface,
                });
            }
        }
        Ok(())
    }

    /// Loads and attaches the programs on `request.iface`, or, if they are
    /// already there, replaces them atomically and keeps every map (a hot
    /// upgrade), then makes the services map match `request.services`.
    /// Whatever of an instance is missing is repaired in the same run: map
    /// pins removed by hand are pinned again from the running programs,
    /// and a link that is missing or severed (its interface was deleted and
    /// re-created) is replaced by a fresh attachment.
    pub fn up(&self, request: &UpRequest) -> Result<UpOutcome> {
        self.preflight()?;
        let ifindex = require_interface(&request.iface)?;
        for service in &request.services {
            service.validate()?;
        }
        let _every_instance = self.layout(&request.iface).lock_every_instance()?;
        self.refuse_vips_served_elsewhere(request)?;
        let _lock = self.state.lock(&request.iface)?;
        let local_target = local::prepare(&request.local, &request.iface)?;
        let layout = self.layout(&request.iface);
        // Before anything is created: hostile directories and pins of
        // another version are refused and left as they are.
        layout.open_dirs(false)?;
        layout.check_no_other_layout()?;
        let had_pins = layout.has_pins();
        let mut notes = Vec::new();
        for name in layout.repin_maps_from_links()? {
            notes.push(format!(
                "{name} was not pinned: pinned again from the running programs, contents kept"
            ));
        }
        layout.set_older_switch_counters_aside()?;
        let pinned_capacity = check_pinned_maps(&layout)?;
        let hot_upgrade = pinned_capacity.is_some();

        let mut guard = FreshInstanceGuard {
            layout: layout.clone(),
            armed: !had_pins,
        };
        layout.open_dirs(true)?;
        let (mut ebpf, flow_capacity) = load_object(&layout, request, pinned_capacity, &mut notes)?;

        let mut maps = PinnedMaps::open(&layout)?;
        if let Some(carried) = maps.carry_older_switch_counters(&layout)? {
            notes.push(format!(
                "switch counters of {carried} service(s) carried over to this version's layout, which counts fleet changes apart"
            ));
        }
        maps.set_timeouts(&request.dataplane.timeouts)?;
        // The file, not the maps: after a reboot it is all that remembers
        // the colors. A damaged one is passed over; the live maps win
        // anyway.
        let previous_state = match self.state.load(&request.iface) {
            Err(Error::CorruptState { path, reason }) => {
                notes.push(format!(
                    "state file {} is unreadable ({reason}): rewritten",
                    path.display()
                ));
                None
            }
            loaded => loaded?,
        };
        let records = reconcile_services(
            &mut maps,
            &request.services,
            previous_state.as_ref(),
            &mut notes,
        )?;

        let links = layout.links().map(|link| layout.link_state(&link, ifindex));
        for ((link, state), program) in layout.links().iter().zip(links).zip(["XDP", "TC"]) {
            match state {
                LinkState::Attached => {}
                LinkState::Missing if !had_pins => {}
                LinkState::Missing => notes.push(format!(
                    "{program} attached again (its link pin was missing)"
                )),
                LinkState::Severed => {
                    unpin_link(link);
                    notes.push(format!(
                        "{program} attached again (its link was severed: {} was deleted or re-created)",
                        request.iface
                    ));
                }
            }
        }
        let xdp_mode = match programs::install(&mut ebpf, &layout, request.xdp_mode, links)? {
            Some(attached) => attached.to_owned(),
            None => {
                // A running link cannot change mode: the one it was
                // attached in stays, as the state file remembers it.
                let kept = previous_state
                    .as_ref()
                    .map(|state| state.xdp_mode.clone())
                    .unwrap_or_else(|| "unknown".to_owned());
                if request.xdp_mode != RequestedXdpMode::Auto
                    && kept != programs::mode_name(request.xdp_mode)
                {
                    notes.push(format!(
                        "XDP stays attached in {kept} mode (a running link cannot change mode; `down` then `up` to change it)"
                    ));
                }
                kept
            }
        };
        notes.extend(local::apply(
            &mut ebpf,
            &layout,
            &mut maps,
            local_target.as_ref(),
        )?);

        let state = InterfaceState {
            version: STATE_VERSION,
            interface: request.iface.clone(),
            xdp_mode,
            requested_xdp_mode: request.xdp_mode,
            flow_capacity,
            tcp_idle_timeout_secs: request.dataplane.timeouts.tcp_idle_secs,
            tcp_closing_timeout_secs: request.dataplane.timeouts.tcp_closing_secs,
            udp_idle_timeout_secs: request.dataplane.timeouts.udp_idle_secs,
            services: records,
        };
        self.state.save(&state)?;
        guard.armed = false;
        Ok(UpOutcome {
            ebpf,
            hot_upgrade,
            state,
            notes,
        })
    }

    /// Applies a new set of services (and timeouts) to a running instance
    /// without touching its programs: what the daemon does on SIGHUP.
    pub fn reload(&self, request: &UpRequest) -> Result<(InterfaceState, Vec<String>)> {
        for service in &request.services {
            service.validate()?;
        }
        let _every_instance = self.layout(&request.iface).lock_every_instance()?;
        self.refuse_vips_served_elsewhere(request)?;
        let _lock = self.state.lock(&request.iface)?;
        let super::inventory::Inspected {
            mut state,
            mut maps,
            ..
        } = self.open_interface(&request.iface, true)?;
        let mut notes = Vec::new();
        maps.set_timeouts(&request.dataplane.timeouts)?;
        state.services =
            reconcile_services(&mut maps, &request.services, Some(&state), &mut notes)?;
        state.tcp_idle_timeout_secs = request.dataplane.timeouts.tcp_idle_secs;
        state.tcp_closing_timeout_secs = request.dataplane.timeouts.tcp_closing_secs;
        state.udp_idle_timeout_secs = request.dataplane.timeouts.udp_idle_secs;
        self.state.save(&state)?;
        Ok((state, notes))
    }

    /// Detaches every program (XDP, TC and the local clients' cgroup hooks)
    /// and removes the interface's pins and state.
    pub fn down(&self, iface: &str) -> Result<()> {
        self.preflight()?;
        let _lock = self.state.lock(iface)?;
        let layout = self.layout(iface);
        layout.open_dirs(false)?;
        if !layout.dir().exists() && matches!(self.state.load(iface), Ok(None)) {
            return Err(Error::NotUpOn {
                iface: iface.to_owned(),
            });
        }
        remove_pins(&layout);
        self.state.remove(iface)
    }
}

//! Bringing an interface up (load, attach, pin, fill the maps), applying a
//! new configuration to it, and taking it down.

use std::{fs, os::unix::fs::DirBuilderExt};

use aya::{Ebpf, EbpfLoader};
use bluegreen_common::map_names;

use super::{Host, programs, reconcile::reconcile_services};
use crate::{
    EBPF_OBJECT,
    config::{DataplaneOptions, ServiceSpec, XdpModeArg},
    error::{Error, Result},
    pinned::{PinLayout, PinnedMaps, check_pinned_maps},
    state::{InterfaceState, STATE_VERSION},
};

/// Everything `up` needs, already validated.
#[derive(Clone, Debug)]
pub struct UpRequest {
    pub iface: String,
    pub xdp_mode: XdpModeArg,
    pub dataplane: DataplaneOptions,
    pub services: Vec<ServiceSpec>,
}

pub struct UpOutcome {
    /// Kept by the daemon to forward the programs' log records.
    pub ebpf: Ebpf,
    pub hot_upgrade: bool,
    pub state: InterfaceState,
    /// Things the operator should know (restored colors, kept settings).
    pub notes: Vec<String>,
}

fn require_interface(iface: &str) -> Result<()> {
    let name = std::ffi::CString::new(iface).map_err(|_| Error::InterfaceNotFound {
        name: iface.to_owned(),
    })?;
    // SAFETY: a valid C string; if_nametoindex only reads it.
    if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
        return Err(Error::InterfaceNotFound {
            name: iface.to_owned(),
        });
    }
    Ok(())
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
    for link in [layout.tc_link(), layout.xdp_link()] {
        let _ = crate::sys::detach_pinned_link(&link);
        let _ = fs::remove_file(link);
    }
    for name in map_names::ALL {
        let _ = fs::remove_file(layout.map(name));
    }
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
        .map_max_entries(map_names::REPLIES, flow_capacity)
        .override_global(aya_log::LEVEL, &log_level, false);
    let ebpf = loader
        .load(EBPF_OBJECT)
        .map_err(Error::ebpf("cannot load the eBPF programs"))?;
    Ok((ebpf, flow_capacity))
}

impl Host {
    /// Loads and attaches the programs on `request.iface`, or, if they are
    /// already there, replaces them atomically and keeps every map (a hot
    /// upgrade), then makes the services map match `request.services`.
    pub fn up(&self, request: &UpRequest) -> Result<UpOutcome> {
        self.preflight()?;
        require_interface(&request.iface)?;
        for service in &request.services {
            service.validate()?;
        }
        let _lock = self.state.lock(&request.iface)?;
        let layout = self.layout(&request.iface);
        layout.check_no_other_layout()?;
        // Before anything is created: pins of another version are refused
        // and left as they are.
        let pinned_capacity = check_pinned_maps(&layout)?;
        let hot_upgrade = layout.is_up();
        let mut notes = Vec::new();

        let mut guard = FreshInstanceGuard {
            layout: layout.clone(),
            armed: !hot_upgrade,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(layout.dir())
            .map_err(Error::io(format!(
                "cannot create {}",
                layout.dir().display()
            )))?;
        let (mut ebpf, flow_capacity) = load_object(&layout, request, pinned_capacity, &mut notes)?;

        let mut maps = PinnedMaps::open(&layout)?;
        maps.set_timeouts(&request.dataplane.timeouts)?;
        let previous_state = self.state.load(&request.iface)?;
        let records = reconcile_services(
            &mut maps,
            &request.services,
            previous_state.as_ref(),
            &mut notes,
        )?;

        let xdp_mode = if hot_upgrade {
            programs::replace(&mut ebpf, &layout)?;
            // A running link cannot change mode: the one it was attached in
            // stays, as the state file remembers it.
            let kept = previous_state
                .as_ref()
                .map(|state| state.xdp_mode.clone())
                .unwrap_or_else(|| "unknown".to_owned());
            if request.xdp_mode != XdpModeArg::Auto && kept != programs::mode_name(request.xdp_mode)
            {
                notes.push(format!(
                    "XDP stays attached in {kept} mode (a running link cannot change mode; `down` then `up` to change it)"
                ));
            }
            kept
        } else {
            programs::attach(&mut ebpf, &layout, request.xdp_mode)?.to_owned()
        };

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
        let _lock = self.state.lock(&request.iface)?;
        let layout = self.layout(&request.iface);
        let mut maps = PinnedMaps::open(&layout)?;
        let mut state = self
            .state
            .load(&request.iface)?
            .ok_or_else(|| Error::NotUpOn {
                iface: request.iface.clone(),
            })?;
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

    /// Detaches both programs and removes the interface's pins and state.
    pub fn down(&self, iface: &str) -> Result<()> {
        self.preflight()?;
        let _lock = self.state.lock(iface)?;
        let layout = self.layout(iface);
        if !layout.dir().exists() && self.state.load(iface)?.is_none() {
            return Err(Error::NotUpOn {
                iface: iface.to_owned(),
            });
        }
        remove_pins(&layout);
        self.state.remove(iface)
    }
}

//! Bringing an interface up (load, attach, pin, fill the maps) and down.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::{fd::AsFd, unix::fs::DirBuilderExt},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuValues,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use bluegreen_common::{
    FILTER_WORDS, MAX_SERVICES, SERVICE_HAS_PREVIEW, ServiceKey, ServiceState, Settings, Timeouts,
    TrafficCounters, VIP_FILTER_WORDS, map_names, program_names, vip_filter_bit,
};

use crate::{
    EBPF_OBJECT,
    config::{DataplaneOptions, ServiceSpec, XdpModeArg},
    endpoint::{Cidr, Color, service_key, to_wire},
    error::{Error, Result},
    pinned::{PinLayout, PinnedMaps, check_bpffs, check_pinned_maps},
    state::{InterfaceState, STATE_VERSION, ServiceRecord, StateStore},
};

/// The two places bluegreen keeps state: pins in bpffs and the state files.
#[derive(Clone, Debug)]
pub struct Host {
    pub pin_dir: PathBuf,
    pub state: StateStore,
}

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

/// `BPF_EXIST`: update only, so a concurrent `down` cannot be undone.
pub(crate) const BPF_EXIST: u64 = 2;

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    Ok(())
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

/// Fails the way an operator can act on: root first, then bpffs.
pub fn preflight(host: &Host) -> Result<()> {
    require_root()?;
    check_bpffs(&host.pin_dir)
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

/// Detaches a pinned link at once with `BPF_LINK_DETACH`. Only unpinning
/// it would leave the program attached until the kernel's deferred release
/// of the link runs, so `down` could return with XDP still attached.
fn detach_pinned_link(path: &Path) {
    if let Ok(link) = crate::sys::object_get(path) {
        let _ = crate::sys::link_detach(link.as_fd());
    }
}

fn remove_pins(layout: &PinLayout) {
    // Links first, so the programs are gone before the maps they use.
    for link in [layout.tc_link(), layout.xdp_link()] {
        detach_pinned_link(&link);
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

fn ebpf_log_level() -> u8 {
    log::max_level() as usize as u8
}

impl Host {
    pub fn new(pin_dir: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            pin_dir: pin_dir.into(),
            state: StateStore::new(state_dir),
        }
    }

    pub fn layout(&self, iface: &str) -> PinLayout {
        PinLayout::new(&self.pin_dir, iface)
    }

    /// Loads and attaches the programs on `request.iface`, or, if they are
    /// already there, replaces them atomically and keeps every map (a hot
    /// upgrade), then makes the services map match `request.services`.
    pub fn up(&self, request: &UpRequest) -> Result<UpOutcome> {
        preflight(self)?;
        require_interface(&request.iface)?;
        for service in &request.services {
            service.validate()?;
        }
        let _lock = self.state.lock(&request.iface)?;
        let layout = self.layout(&request.iface);
        layout.check_no_other_layout()?;
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
        let log_level = ebpf_log_level();
        let mut loader = EbpfLoader::new();
        for name in map_names::ALL {
            loader.map_pin_path(name, layout.map(name));
        }
        loader
            .map_max_entries(map_names::FLOWS, flow_capacity)
            .map_max_entries(map_names::REPLIES, flow_capacity)
            .override_global(aya_log::LEVEL, &log_level, false);
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(Error::ebpf("cannot load the eBPF programs"))?;

        let mut maps = PinnedMaps::open(&layout)?;
        write_settings(&mut maps, &request.dataplane.timeouts)?;
        let previous_state = self.state.load(&request.iface)?;
        let records = reconcile_services(
            &mut maps,
            &request.services,
            previous_state.as_ref(),
            &mut notes,
        )?;

        let xdp_mode = if hot_upgrade {
            replace_programs(&mut ebpf, &layout)?;
            let kept = previous_state
                .as_ref()
                .map(|state| state.xdp_mode.clone())
                .unwrap_or_else(|| attached_xdp_mode(&request.iface));
            if request.xdp_mode != XdpModeArg::Auto && !kept.eq(&mode_name(request.xdp_mode)) {
                notes.push(format!(
                    "XDP stays attached in {kept} mode (a running link cannot change mode; `down` then `up` to change it)"
                ));
            }
            kept
        } else {
            attach_programs(&mut ebpf, &layout, request.xdp_mode)?;
            attached_xdp_mode(&request.iface)
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
            .ok_or_else(|| Error::NotUp {
                where_: format!(" on {}", request.iface),
            })?;
        let mut notes = Vec::new();
        write_settings(&mut maps, &request.dataplane.timeouts)?;
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
        preflight(self)?;
        let _lock = self.state.lock(iface)?;
        let layout = self.layout(iface);
        if !layout.dir().exists() && self.state.load(iface)?.is_none() {
            return Err(Error::NotUp {
                where_: format!(" on {iface}"),
            });
        }
        remove_pins(&layout);
        self.state.remove(iface)
    }
}

fn mode_name(mode: XdpModeArg) -> String {
    match mode {
        XdpModeArg::Auto => "auto",
        XdpModeArg::Native => "native",
        XdpModeArg::Skb => "skb",
    }
    .to_owned()
}

/// The mode the kernel actually attached XDP in, as `ip -d link` reports it.
fn attached_xdp_mode(iface: &str) -> String {
    let output = std::process::Command::new("ip")
        .args(["-d", "-j", "link", "show", "dev", iface])
        .output();
    let Ok(output) = output else {
        return "unknown".to_owned();
    };
    let parsed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    // IFLA_XDP_ATTACHED: 1 driver, 2 generic (skb), 3 hardware offload.
    match parsed[0]["xdp"]["mode"].as_u64() {
        Some(1) => "native",
        Some(2) => "skb",
        Some(3) => "offload",
        _ => "unknown",
    }
    .to_owned()
}

fn programs(ebpf: &mut Ebpf) -> Result<(&mut Xdp, &mut SchedClassifier)> {
    let mut xdp = None;
    let mut tc = None;
    for (name, program) in ebpf.programs_mut() {
        match name {
            program_names::INGRESS => xdp = Some(program),
            program_names::EGRESS => tc = Some(program),
            _ => {}
        }
    }
    let missing = |name: &str| Error::Ebpf {
        action: format!("the eBPF object has no program {name}"),
        source: "object built from another version".into(),
    };
    let xdp: &mut Xdp = xdp
        .ok_or_else(|| missing(program_names::INGRESS))?
        .try_into()
        .map_err(Error::ebpf("ingress program is not XDP"))?;
    let tc: &mut SchedClassifier = tc
        .ok_or_else(|| missing(program_names::EGRESS))?
        .try_into()
        .map_err(Error::ebpf("egress program is not a classifier"))?;
    xdp.load()
        .map_err(Error::ebpf("the kernel refused the XDP program"))?;
    tc.load()
        .map_err(Error::ebpf("the kernel refused the TC program"))?;
    Ok((xdp, tc))
}

fn attach_programs(ebpf: &mut Ebpf, layout: &PinLayout, mode: XdpModeArg) -> Result<()> {
    let iface = layout.iface().to_owned();
    let (xdp, tc) = programs(ebpf)?;
    let xdp_mode = match mode {
        XdpModeArg::Auto => XdpMode::Default,
        XdpModeArg::Native => XdpMode::Driver,
        XdpModeArg::Skb => XdpMode::Skb,
    };
    let attach_failed = format!(
        "cannot attach XDP to {iface} (another XDP program may be attached; bluegreen never replaces one it did not attach)"
    );
    let xdp_id = xdp
        .attach(&iface, xdp_mode)
        .map_err(Error::ebpf(attach_failed))?;
    let xdp_link: FdLink = xdp
        .take_link(xdp_id)
        .map_err(Error::ebpf("cannot take the XDP link"))?
        .try_into()
        .map_err(Error::ebpf(
            "the kernel attached XDP without a bpf_link, which cannot outlive this process",
        ))?;
    xdp_link
        .pin(layout.xdp_link())
        .map_err(Error::ebpf("cannot pin the XDP link"))?;

    let tc_id = tc
        .attach(&iface, TcAttachType::Egress)
        .map_err(Error::ebpf(format!("cannot attach TC egress to {iface}")))?;
    let tc_link: FdLink = tc
        .take_link(tc_id)
        .map_err(Error::ebpf("cannot take the TC link"))?
        .try_into()
        .map_err(Error::ebpf(
            "TC was attached without a TCX link (kernel older than 6.6?)",
        ))?;
    tc_link
        .pin(layout.tc_link())
        .map_err(Error::ebpf("cannot pin the TC link"))?;
    Ok(())
}

/// Swaps the programs behind the pinned links in one `bpf_link_update`
/// each: packets keep flowing through either the old or the new program.
fn replace_programs(ebpf: &mut Ebpf, layout: &PinLayout) -> Result<()> {
    let (xdp, tc) = programs(ebpf)?;
    let pinned = |path: PathBuf| {
        PinnedLink::from_pin(&path)
            .map(FdLink::from)
            .map_err(Error::ebpf(format!(
                "cannot open pinned link {}",
                path.display()
            )))
    };
    let xdp_link = XdpLink::try_from(pinned(layout.xdp_link())?)
        .map_err(Error::ebpf("pinned XDP link is not an XDP link"))?;
    xdp.attach_to_link(xdp_link)
        .map_err(Error::ebpf("cannot replace the XDP program"))?;
    let tc_link = SchedClassifierLink::try_from(pinned(layout.tc_link())?)
        .map_err(Error::ebpf("pinned TC link is not a TCX link"))?;
    tc.attach_to_link(tc_link)
        .map_err(Error::ebpf("cannot replace the TC program"))?;
    Ok(())
}

/// Makes the services map hold exactly `specs`. The live map decides each
/// service's active color when it has the service; otherwise the state file
/// (after a reboot); otherwise the spec. Backends always come from `specs`.
fn reconcile_services(
    maps: &mut PinnedMaps,
    specs: &[ServiceSpec],
    previous: Option<&InterfaceState>,
    notes: &mut Vec<String>,
) -> Result<Vec<ServiceRecord>> {
    let live: BTreeMap<ServiceKey, ServiceState> = maps
        .services
        .iter()
        .collect::<std::result::Result<_, _>>()
        .map_err(Error::ebpf("cannot read the services map"))?;
    let wanted: Vec<ServiceKey> = specs
        .iter()
        .map(|spec| service_key(spec.vip, spec.proto))
        .collect();
    let wanted_set: BTreeSet<ServiceKey> = wanted.iter().copied().collect();
    let kept_slots: BTreeSet<u32> = live
        .iter()
        .filter(|(key, _)| wanted_set.contains(key))
        .map(|(_, state)| state.counter_slot)
        .collect();
    let mut free_slots = (0..MAX_SERVICES).filter(|slot| !kept_slots.contains(slot));

    let mut records = Vec::with_capacity(specs.len());
    let mut fresh_slots = Vec::new();
    for (spec, key) in specs.iter().zip(&wanted) {
        let backends = [to_wire(spec.blue), to_wire(spec.green)];
        // The same service (name, VIP and protocol) in the state file.
        let remembered = previous
            .and_then(|state| state.service(&spec.name))
            .filter(|record| record.spec.vip == spec.vip && record.spec.proto == spec.proto);
        let state = match live.get(key) {
            Some(current) => {
                if Color::from_wire(current.active) != spec.active {
                    notes.push(format!(
                        "{}: keeps its live active color {} (use `bluegreen switch` to change it)",
                        spec.name,
                        Color::from_wire(current.active)
                    ));
                }
                ServiceState {
                    backends,
                    ..*current
                }
            }
            None => {
                let slot = free_slots
                    .next()
                    .expect("config validation caps the number of services");
                fresh_slots.push(slot);
                let (active, previous_color) = match remembered {
                    Some(record) => {
                        if record.spec.active != spec.active {
                            notes.push(format!(
                                "{}: restored active color {} from the state file",
                                spec.name, record.spec.active
                            ));
                        }
                        (record.spec.active, record.previous)
                    }
                    None => (spec.active, spec.active),
                };
                // After a reboot the weighted share and the preview
                // prefixes come back with the color.
                let preview = remembered
                    .map(|record| parse_prefixes(&record.preview))
                    .transpose()?
                    .unwrap_or_default();
                maps.set_preview(slot, &preview)?;
                ServiceState {
                    backends,
                    // Past any generation an earlier service in this slot
                    // had, so none of its leftover flows can match.
                    generation: maps.generation(slot)?.wrapping_add(1),
                    counter_slot: slot,
                    active: active.wire(),
                    previous: previous_color.wire(),
                    weight: remembered.map_or(0, |record| record.weight),
                    flags: if preview.is_empty() {
                        0
                    } else {
                        SERVICE_HAS_PREVIEW
                    },
                }
            }
        };
        records.push(ServiceRecord {
            spec: ServiceSpec {
                active: Color::from_wire(state.active),
                ..spec.clone()
            },
            previous: Color::from_wire(state.previous),
            counter_slot: state.counter_slot,
            switched_at_unix_ms: remembered.and_then(|record| record.switched_at_unix_ms),
            weight: state.weight,
            preview: remembered
                .map(|record| record.preview.clone())
                .unwrap_or_default(),
        });
        // Generation first: a new flow recorded under the service's
        // generation then finds it mirrored already.
        if maps.generation(state.counter_slot)? != state.generation {
            maps.set_generation(state.counter_slot, state.generation)?;
        }
        write_service(maps, key, &state)?;
    }

    let cpus = aya::util::nr_cpus().map_err(|(what, error)| Error::Io {
        action: format!("cannot count CPUs ({what})"),
        source: error,
    })?;
    for slot in fresh_slots {
        for color in Color::BOTH {
            let zeros = PerCpuValues::try_from(vec![TrafficCounters::default(); cpus])
                .map_err(Error::ebpf("cannot size per-CPU counters"))?;
            maps.traffic
                .set(slot * 2 + u32::from(color.wire()), zeros, 0)
                .map_err(Error::ebpf("cannot reset traffic counters"))?;
        }
    }
    write_filters(maps, &wanted)?;
    for (key, state) in live.iter().filter(|(key, _)| !wanted_set.contains(key)) {
        maps.set_preview(state.counter_slot, &[])?;
        maps.services
            .remove(key)
            .map_err(Error::ebpf("cannot remove a service"))?;
        // Its flows now miss the fast path and find no service.
        maps.set_generation(state.counter_slot, state.generation.wrapping_add(1))?;
    }
    Ok(records)
}

fn parse_prefixes(prefixes: &[String]) -> Result<Vec<Cidr>> {
    prefixes.iter().map(|prefix| prefix.parse()).collect()
}

fn write_service(maps: &mut PinnedMaps, key: &ServiceKey, state: &ServiceState) -> Result<()> {
    if maps.service(key)?.as_ref() == Some(state) {
        return Ok(());
    }
    maps.services
        .insert(key, state, 0)
        .map_err(Error::ebpf("cannot write the services map"))
}

/// Sets exactly the prefilter bits the services need (ports, and VIP and
/// port pairs), touching only the words that change.
fn write_filters(maps: &mut PinnedMaps, keys: &[ServiceKey]) -> Result<()> {
    let mut ports = vec![0u32; FILTER_WORDS as usize];
    let mut vips = vec![0u32; VIP_FILTER_WORDS as usize];
    for key in keys {
        let port = u32::from(u16::from_be_bytes(key.port));
        ports[(port >> 5) as usize] |= 1 << (port & 31);
        let bit = vip_filter_bit(&key.vip, key.port);
        vips[(bit >> 5) as usize] |= 1 << (bit & 31);
    }
    for (filter, words) in [(&mut maps.vip_ports, ports), (&mut maps.vip_filter, vips)] {
        // One syscall for the current words, then one per word that changes.
        let current: Vec<u32> = filter
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::ebpf("cannot read a prefilter"))?;
        for (index, (word, current)) in words.into_iter().zip(current).enumerate() {
            if current != word {
                filter
                    .set(index as u32, word, 0)
                    .map_err(Error::ebpf("cannot write a prefilter"))?;
            }
        }
    }
    Ok(())
}

/// Writes the timeouts in the dataplane's unit (jiffies), keeping the
/// kernel's HZ as an earlier loader measured it.
fn write_settings(maps: &mut PinnedMaps, timeouts: &Timeouts) -> Result<()> {
    let pinned = maps.settings()?.jiffies_per_second;
    let hz = if pinned != 0 {
        pinned
    } else {
        crate::clock::jiffies_per_second()?
    };
    maps.settings
        .set(0, Settings::new(timeouts, hz), 0)
        .map_err(Error::ebpf("cannot write the settings map"))
}

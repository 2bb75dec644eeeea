//! The bpffs side of an instance: where its maps and links are pinned, and
//! typed access to the pinned maps after checking they have our layout.

use std::{
    ffi::CString,
    mem::size_of,
    path::{Path, PathBuf},
};

use aya::maps::{
    Array, HashMap, LpmTrie, Map, MapData, MapInfo, MapType, PerCpuArray, lpm_trie::Key,
};
use bluegreen_common::{
    Endpoint, FILTER_WORDS, FlowEntry, FlowKey, LAYOUT_VERSION, MAX_PREVIEW_PREFIXES, MAX_SERVICES,
    PREVIEW_FIXED_BITS, PassReason, PreviewPrefix, ServiceKey, ServiceState, Settings,
    TrafficCounters, VIP_FILTER_WORDS, map_names,
};

use crate::endpoint::Cidr;

use crate::error::{Error, Result};

const BPF_FS_MAGIC: libc::c_long = 0xcafe4a11;

/// Where one interface's pins live: `<pin-dir>/v<layout>/<iface>/`.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
    iface: String,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>, iface: &str) -> Self {
        Self {
            root: root.into(),
            iface: iface.to_owned(),
        }
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn dir(&self) -> PathBuf {
        self.root
            .join(format!("v{LAYOUT_VERSION}"))
            .join(&self.iface)
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    pub fn xdp_link(&self) -> PathBuf {
        self.dir().join("link_xdp")
    }

    pub fn tc_link(&self) -> PathBuf {
        self.dir().join("link_tc")
    }

    pub fn is_up(&self) -> bool {
        self.xdp_link().exists()
    }

    /// Refuses to go on when this interface has pins of another layout.
    pub fn check_no_other_layout(&self) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Ok(());
        };
        let ours = format!("v{LAYOUT_VERSION}");
        for entry in entries.filter_map(|entry| entry.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != ours && name.starts_with('v') && entry.path().join(&self.iface).exists() {
                return Err(Error::LayoutMismatch {
                    path: entry.path().join(&self.iface),
                    found: name,
                    expected: LAYOUT_VERSION,
                    iface: self.iface.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Fails unless `path` (or, if it does not exist yet, its nearest existing
/// ancestor) is on a BPF filesystem.
pub fn check_bpffs(path: &Path) -> Result<()> {
    let existing = path
        .ancestors()
        .find(|ancestor| ancestor.exists())
        .unwrap_or(Path::new("/"));
    let c_path = CString::new(existing.as_os_str().as_encoded_bytes()).map_err(|_| {
        Error::BpffsNotMounted {
            path: path.to_owned(),
        }
    })?;
    // SAFETY: statfs writes into the zeroed struct we pass.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    let on_bpffs = unsafe { libc::statfs(c_path.as_ptr(), &mut stats) } == 0
        && stats.f_type as libc::c_long == BPF_FS_MAGIC;
    // A path below the mount point but not yet created is fine only when the
    // ancestor we found is itself on bpffs.
    if on_bpffs {
        Ok(())
    } else {
        Err(Error::BpffsNotMounted {
            path: path.to_owned(),
        })
    }
}

/// What a pinned map must look like to be ours.
struct MapSpec {
    name: &'static str,
    kind: MapType,
    key_size: usize,
    value_size: usize,
    /// `None` for the flow tables, whose size the operator chooses.
    max_entries: Option<u32>,
}

fn expected_maps() -> [MapSpec; 10] {
    [
        MapSpec {
            name: map_names::SERVICES,
            kind: MapType::Hash,
            key_size: size_of::<ServiceKey>(),
            value_size: size_of::<ServiceState>(),
            max_entries: Some(MAX_SERVICES),
        },
        MapSpec {
            name: map_names::FLOWS,
            kind: MapType::LruHash,
            key_size: size_of::<FlowKey>(),
            value_size: size_of::<FlowEntry>(),
            max_entries: None,
        },
        MapSpec {
            name: map_names::REPLIES,
            kind: MapType::LruHash,
            key_size: size_of::<FlowKey>(),
            value_size: size_of::<Endpoint>(),
            max_entries: None,
        },
        MapSpec {
            name: map_names::TRAFFIC,
            kind: MapType::PerCpuArray,
            key_size: size_of::<u32>(),
            value_size: size_of::<TrafficCounters>(),
            max_entries: Some(MAX_SERVICES * 2),
        },
        MapSpec {
            name: map_names::PASSED,
            kind: MapType::PerCpuArray,
            key_size: size_of::<u32>(),
            value_size: size_of::<u64>(),
            max_entries: Some(PassReason::COUNT),
        },
        MapSpec {
            name: map_names::SETTINGS,
            kind: MapType::Array,
            key_size: size_of::<u32>(),
            value_size: size_of::<Settings>(),
            max_entries: Some(1),
        },
        MapSpec {
            name: map_names::VIP_PORTS,
            kind: MapType::Array,
            key_size: size_of::<u32>(),
            value_size: size_of::<u32>(),
            max_entries: Some(FILTER_WORDS),
        },
        MapSpec {
            name: map_names::VIP_FILTER,
            kind: MapType::Array,
            key_size: size_of::<u32>(),
            value_size: size_of::<u32>(),
            max_entries: Some(VIP_FILTER_WORDS),
        },
        MapSpec {
            name: map_names::GENERATIONS,
            kind: MapType::Array,
            key_size: size_of::<u32>(),
            value_size: size_of::<u32>(),
            max_entries: Some(MAX_SERVICES),
        },
        MapSpec {
            name: map_names::PREVIEW,
            kind: MapType::LpmTrie,
            key_size: size_of::<Key<PreviewPrefix>>(),
            value_size: size_of::<u8>(),
            max_entries: Some(MAX_PREVIEW_PREFIXES),
        },
    ]
}

/// Checks every pinned map that exists against the layout this binary was
/// built with. Returns the flow table's capacity if it is pinned.
pub fn check_pinned_maps(layout: &PinLayout) -> Result<Option<u32>> {
    let mut flow_capacity = None;
    for spec in expected_maps() {
        let path = layout.map(spec.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .map_err(|error| incompatible(layout, spec.name, error.to_string()))?;
        let entries = check_map(layout, &spec, &info)?;
        if spec.name == map_names::FLOWS {
            flow_capacity = Some(entries);
        }
    }
    Ok(flow_capacity)
}

fn incompatible(layout: &PinLayout, name: &str, detail: String) -> Error {
    Error::IncompatibleMap {
        path: layout.map(name),
        detail,
        iface: layout.iface().to_owned(),
    }
}

/// Checks one pinned map against its spec; returns its capacity.
fn check_map(layout: &PinLayout, spec: &MapSpec, info: &MapInfo) -> Result<u32> {
    let incompatible = |detail: String| incompatible(layout, spec.name, detail);
    let kind = info
        .map_type()
        .map_err(|error| incompatible(error.to_string()))?;
    if kind != spec.kind {
        return Err(incompatible(format!(
            "type {kind:?}, expected {:?}",
            spec.kind
        )));
    }
    if info.key_size() as usize != spec.key_size || info.value_size() as usize != spec.value_size {
        return Err(incompatible(format!(
            "key/value size {}/{}, expected {}/{}",
            info.key_size(),
            info.value_size(),
            spec.key_size,
            spec.value_size
        )));
    }
    match spec.max_entries {
        Some(expected) if info.max_entries() != expected => Err(incompatible(format!(
            "{} entries, expected {expected}",
            info.max_entries()
        ))),
        _ => Ok(info.max_entries()),
    }
}

/// Typed handles on an instance's pinned maps.
pub struct PinnedMaps {
    pub services: HashMap<MapData, ServiceKey, ServiceState>,
    pub flows: HashMap<MapData, FlowKey, FlowEntry>,
    pub traffic: PerCpuArray<MapData, TrafficCounters>,
    pub passed: PerCpuArray<MapData, u64>,
    pub settings: Array<MapData, Settings>,
    pub vip_ports: Array<MapData, u32>,
    pub vip_filter: Array<MapData, u32>,
    pub generations: Array<MapData, u32>,
    pub preview: LpmTrie<MapData, PreviewPrefix, u8>,
}

/// The trie key of one service's preview prefix.
pub fn preview_key(counter_slot: u32, cidr: &Cidr) -> Key<PreviewPrefix> {
    Key::new(
        PREVIEW_FIXED_BITS + u32::from(cidr.len),
        PreviewPrefix {
            slot: counter_slot.to_be_bytes(),
            family: cidr.wire_family(),
            reserved: [0; 3],
            addr: cidr.wire_addr(),
        },
    )
}

/// Opens one pinned map, checked against this version's layout before it is
/// given a type (one open per map: the check reads the opened map's info).
fn open_map<T>(layout: &PinLayout, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = layout.map(name);
    let action = || format!("cannot open pinned map {}", path.display());
    let data = MapData::from_pin(&path).map_err(Error::ebpf(action()))?;
    let spec = expected_maps()
        .into_iter()
        .find(|spec| spec.name == name)
        .expect("every map bluegreen opens has a spec");
    let info = data.info().map_err(Error::ebpf(action()))?;
    check_map(layout, &spec, &info)?;
    let map = Map::from_map_data(data).map_err(Error::ebpf(action()))?;
    T::try_from(map).map_err(Error::ebpf(action()))
}

impl PinnedMaps {
    pub fn open(layout: &PinLayout) -> Result<Self> {
        if !layout.map(map_names::SERVICES).exists() {
            return Err(Error::NotUp {
                where_: format!(" on {}", layout.iface()),
            });
        }
        Ok(Self {
            services: open_map(layout, map_names::SERVICES)?,
            flows: open_map(layout, map_names::FLOWS)?,
            traffic: open_map(layout, map_names::TRAFFIC)?,
            passed: open_map(layout, map_names::PASSED)?,
            settings: open_map(layout, map_names::SETTINGS)?,
            vip_ports: open_map(layout, map_names::VIP_PORTS)?,
            vip_filter: open_map(layout, map_names::VIP_FILTER)?,
            generations: open_map(layout, map_names::GENERATIONS)?,
            preview: open_map(layout, map_names::PREVIEW)?,
        })
    }

    pub fn service(&self, key: &ServiceKey) -> Result<Option<ServiceState>> {
        match self.services.get(key, 0) {
            Ok(state) => Ok(Some(state)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(Error::ebpf("cannot read the services map")(error)),
        }
    }

    /// Replaces the preview prefixes of one service (slot) with `prefixes`.
    pub fn set_preview(&mut self, counter_slot: u32, prefixes: &[Cidr]) -> Result<()> {
        let stale: Vec<Key<PreviewPrefix>> = self
            .preview
            .keys()
            .filter_map(|key| key.ok())
            .filter(|key| key.data().slot == counter_slot.to_be_bytes())
            .collect();
        let wanted: Vec<Key<PreviewPrefix>> = prefixes
            .iter()
            .map(|cidr| preview_key(counter_slot, cidr))
            .collect();
        for key in &wanted {
            self.preview
                .insert(key, 1, 0)
                .map_err(Error::ebpf("cannot write the preview prefixes"))?;
        }
        let same = |a: &Key<PreviewPrefix>, b: &Key<PreviewPrefix>| {
            a.prefix_len() == b.prefix_len() && a.data() == b.data()
        };
        for key in stale
            .iter()
            .filter(|key| !wanted.iter().any(|w| same(w, key)))
        {
            self.preview
                .remove(key)
                .map_err(Error::ebpf("cannot remove a preview prefix"))?;
        }
        Ok(())
    }

    /// Mirrors a service's generation for the fast path (see the eBPF
    /// side's `BG_GENERATIONS`).
    pub fn set_generation(&mut self, counter_slot: u32, generation: u32) -> Result<()> {
        self.generations
            .set(counter_slot, generation, 0)
            .map_err(Error::ebpf("cannot write the generations map"))
    }

    pub fn generation(&self, counter_slot: u32) -> Result<u32> {
        self.generations
            .get(&counter_slot, 0)
            .map_err(Error::ebpf("cannot read the generations map"))
    }

    pub fn settings(&self) -> Result<Settings> {
        self.settings
            .get(&0, 0)
            .map_err(Error::ebpf("cannot read the settings map"))
    }

    pub fn traffic(&self, slot: u32, color: u8) -> Result<TrafficCounters> {
        let per_cpu = self
            .traffic
            .get(&(slot * 2 + u32::from(color & 1)), 0)
            .map_err(Error::ebpf("cannot read traffic counters"))?;
        Ok(per_cpu
            .iter()
            .fold(TrafficCounters::default(), |sum, cpu| TrafficCounters {
                packets: sum.packets + cpu.packets,
                bytes: sum.bytes + cpu.bytes,
                new_flows: sum.new_flows + cpu.new_flows,
            }))
    }

    pub fn passed(&self, reason: PassReason) -> Result<u64> {
        let per_cpu = self
            .passed
            .get(&(reason as u32), 0)
            .map_err(Error::ebpf("cannot read pass counters"))?;
        Ok(per_cpu.iter().sum())
    }
}

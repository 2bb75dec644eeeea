//! What a pinned map must look like to be ours: a map of another version
//! is refused, never misread.

use std::mem::size_of;

use aya::maps::{Map, MapData, MapInfo, MapType, lpm_trie::Key};
use bluegreen_common::{
    BackendKey, Endpoint, FILTER_WORDS, FlowEntry, FlowKey, LOCAL_SOCKET_CAPACITY, LocalSettings,
    LocalSocket, LocalSocketKey, MAGLEV_CHUNKS, MAX_BACKEND_COUNTERS, MAX_BACKEND_VIPS,
    MAX_BACKENDS, MAX_PREVIEW_PREFIXES, MAX_SERVICES, MaglevChunk, PassReason, PoolBackend,
    PreviewPrefix, SHADOW_FLOW_CAPACITY, SHADOW_RING_BYTES, ServiceKey, ServiceState, Settings,
    ShadowCount, ShadowFlow, ShadowSettings, SwitchCounters, TrafficCounters, VIP_FILTER_WORDS,
    map_names,
};

use super::PinLayout;
use crate::error::{Error, Result};

/// What a pinned map must look like to be ours.
struct MapSpec {
    name: &'static str,
    kind: MapType,
    key_size: usize,
    value_size: usize,
    /// `None` for the flow tables, whose size the operator chooses.
    max_entries: Option<u32>,
}

fn expected_maps() -> [MapSpec; map_names::ALL.len()] {
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
            name: map_names::BACKEND_VIPS,
            kind: MapType::Hash,
            key_size: size_of::<BackendKey>(),
            value_size: size_of::<Endpoint>(),
            max_entries: Some(MAX_BACKEND_VIPS),
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
        MapSpec {
            name: map_names::MAGLEV,
            kind: MapType::Array,
            key_size: size_of::<u32>(),
            value_size: size_of::<MaglevChunk>(),
            max_entries: Some(MAGLEV_CHUNKS),
        },
        MapSpec {
            name: map_names::BACKENDS,
            kind: MapType::Array,
            key_size: size_of::<u32>(),
            value_size: size_of::<PoolBackend>(),
            max_entries: Some(MAX_BACKENDS),
        },
        MapSpec {
            name: map_names::BACKEND_TRAFFIC,
            kind: MapType::PerCpuArray,
            key_size: size_of::<u32>(),
            value_size: size_of::<TrafficCounters>(),
            max_entries: Some(MAX_BACKEND_COUNTERS),
        },
        MapSpec {
            name: map_names::SWITCHES,
            kind: MapType::Array,
            key_size: size_of::<u32>(),
            value_size: size_of::<SwitchCounters>(),
            max_entries: Some(MAX_SERVICES),
        },
        MapSpec {
            name: map_names::LOCAL,
            kind: MapType::Array,
            key_size: size_of::<u32>(),
            value_size: size_of::<LocalSettings>(),
            max_entries: Some(1),
        },
        MapSpec {
            name: map_names::LOCAL_SOCKETS,
            kind: MapType::LruHash,
            key_size: size_of::<LocalSocketKey>(),
            value_size: size_of::<LocalSocket>(),
            max_entries: Some(LOCAL_SOCKET_CAPACITY),
        },
        MapSpec {
            name: map_names::SHADOW,
            kind: MapType::Array,
            key_size: size_of::<u32>(),
            value_size: size_of::<ShadowSettings>(),
            max_entries: Some(MAX_SERVICES),
        },
        MapSpec {
            name: map_names::SHADOW_FLOWS,
            kind: MapType::LruHash,
            key_size: size_of::<FlowKey>(),
            value_size: size_of::<ShadowFlow>(),
            max_entries: Some(SHADOW_FLOW_CAPACITY),
        },
        MapSpec {
            name: map_names::SHADOW_RING,
            kind: MapType::RingBuf,
            key_size: 0,
            value_size: 0,
            max_entries: Some(SHADOW_RING_BYTES),
        },
        MapSpec {
            name: map_names::SHADOW_COUNTS,
            kind: MapType::PerCpuArray,
            key_size: size_of::<u32>(),
            value_size: size_of::<u64>(),
            max_entries: Some(ShadowCount::COUNT),
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

/// Opens one pinned map, checked against this version's layout before it is
/// given a type (one open per map: the check reads the opened map's info).
pub(super) fn open_map<T>(layout: &PinLayout, name: &str) -> Result<T>
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

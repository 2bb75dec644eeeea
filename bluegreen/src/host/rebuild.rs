//! An interface's state as its maps hold it.
//!
//! The maps hold every service's colors, weight, backends, slot and
//! preview prefixes; only the state file holds names, health checks, release
//! gates and switch times. A missing, damaged or outdated state file therefore never
//! blocks a command: the state is rebuilt from the maps, keeping from the
//! file what it knows of each live service (by VIP and protocol). A live
//! service the file does not know is named by its VIP and protocol until
//! `up` brings the configured name back.

use std::{collections::BTreeMap, net::SocketAddr};

use bluegreen_common::{BACKEND_LOADED, BACKEND_RECORDED, ServiceKey, ServiceState, Timeouts};

use crate::{
    config::{BackendSpec, PoolSpec, RequestedXdpMode, ServiceSpec},
    endpoint::{Cidr, Color, from_wire, service_key, vip_and_proto},
    error::Result,
    load,
    pinned::{PinLayout, PinnedMaps, flow_capacity},
    state::{InterfaceState, STATE_VERSION, ServiceRecord, placeholder_name},
};

/// What the maps hold of an interface, beyond its services.
pub(super) struct Dataplane {
    previews: BTreeMap<u32, Vec<Cidr>>,
    /// Each (counter slot, color)'s backends, from its live pool.
    backends: BTreeMap<(u32, Color), Vec<LiveBackend>>,
    flow_capacity: u32,
    /// `None` before any loader wrote them.
    timeouts: Option<Timeouts>,
}

/// A backend as `BG_BACKENDS` holds it.
#[derive(Clone, Debug)]
struct LiveBackend {
    addr: SocketAddr,
    /// See `PoolBackend`.
    record: [u8; 2],
    /// Its entries in the pool's lookup table; only read for a pool with a
    /// load-weighted backend, whose load weights they tell.
    table_entries: u32,
}

impl LiveBackend {
    fn loaded(&self) -> bool {
        let flags = self.record[0];
        flags & BACKEND_RECORDED != 0 && flags & BACKEND_LOADED != 0
    }
}

pub(super) fn read_dataplane(layout: &PinLayout, maps: &PinnedMaps) -> Result<Dataplane> {
    let mut previews = BTreeMap::new();
    let mut backends = BTreeMap::new();
    for (key, state) in maps.services()? {
        previews.insert(state.counter_slot, maps.preview(state.counter_slot)?);
        for color in Color::BOTH {
            let pool = state.pool(color.wire());
            let mut live: Vec<LiveBackend> = maps
                .pool_backends(pool)?
                .iter()
                .map(|backend| LiveBackend {
                    addr: from_wire(key.family, &backend.endpoint),
                    record: backend.endpoint.reserved,
                    table_entries: 0,
                })
                .collect();
            if live.iter().any(LiveBackend::loaded) {
                for (backend, entries) in live.iter_mut().zip(maps.table_entries(pool)?) {
                    backend.table_entries = entries;
                }
            }
            backends.insert((state.counter_slot, color), live);
        }
    }
    let settings = maps.settings()?;
    let hz = settings.jiffies_per_second;
    let timeouts = (hz != 0).then(|| Timeouts {
        tcp_idle_secs: settings.tcp_idle_timeout / hz,
        tcp_closing_secs: settings.tcp_closing_timeout / hz,
        udp_idle_secs: settings.udp_idle_timeout / hz,
    });
    Ok(Dataplane {
        previews,
        backends,
        flow_capacity: flow_capacity(layout)?,
        timeouts,
    })
}

/// The interface's state as its maps hold it (see the module comment):
/// every live service, in the file's order where the file knows it.
pub(super) fn state_from_maps(
    iface: &str,
    file: Option<&InterfaceState>,
    live: &BTreeMap<ServiceKey, ServiceState>,
    dataplane: &Dataplane,
) -> InterfaceState {
    let known = |key: &ServiceKey| {
        file.into_iter()
            .flat_map(|file| file.services.iter().enumerate())
            .find(|(_, record)| service_key(record.spec.vip, record.spec.proto) == *key)
    };
    let mut services: Vec<(usize, ServiceRecord)> = live
        .iter()
        .map(|(key, state)| {
            let (vip, proto) = vip_and_proto(key);
            let known = known(key);
            let remembered = known.map(|(_, record)| record);
            let pool = |color: Color| {
                let live = dataplane
                    .backends
                    .get(&(state.counter_slot, color))
                    .filter(|backends| !backends.is_empty())
                    .cloned()
                    .unwrap_or_else(|| {
                        vec![LiveBackend {
                            addr: SocketAddr::new(vip.ip(), 0),
                            record: [0; 2],
                            table_entries: 0,
                        }]
                    });
                rebuilt_pool(&live, remembered.map(|record| record.spec.backends(color)))
            };
            let record = ServiceRecord {
                spec: ServiceSpec {
                    name: remembered.map_or_else(
                        || placeholder_name(vip, proto),
                        |record| record.spec.name.clone(),
                    ),
                    vip,
                    proto,
                    blue: pool(Color::Blue),
                    green: pool(Color::Green),
                    active: Color::from_wire(state.active),
                    health: remembered.and_then(|record| record.spec.health.clone()),
                    auto_rollback: remembered.and_then(|record| record.spec.auto_rollback),
                    load: remembered.and_then(|record| record.spec.load.clone()),
                    verify: remembered.and_then(|record| record.spec.verify.clone()),
                    warmup: remembered.and_then(|record| record.spec.warmup.clone()),
                    analysis: remembered
                        .map(|record| record.spec.analysis.clone())
                        .unwrap_or_default(),
                    lifecycle: remembered.and_then(|record| record.spec.lifecycle.clone()),
                    shadow: remembered.and_then(|record| record.spec.shadow.clone()),
                },
                previous: Color::from_wire(state.previous),
                counter_slot: state.counter_slot,
                switched_at_unix_ms: remembered.and_then(|record| record.switched_at_unix_ms),
                weight: state.weight,
                preview: dataplane
                    .previews
                    .get(&state.counter_slot)
                    .into_iter()
                    .flatten()
                    .map(ToString::to_string)
                    .collect(),
            };
            (known.map_or(usize::MAX, |(position, _)| position), record)
        })
        .collect();
    // Stable: services the file does not know stay in key order, last.
    services.sort_by_key(|(position, _)| *position);
    let timeouts = dataplane.timeouts.unwrap_or_else(|| {
        file.map_or_else(Timeouts::default, |file| Timeouts {
            tcp_idle_secs: file.tcp_idle_timeout_secs,
            tcp_closing_secs: file.tcp_closing_timeout_secs,
            udp_idle_secs: file.udp_idle_timeout_secs,
        })
    });
    InterfaceState {
        version: STATE_VERSION,
        interface: iface.to_owned(),
        xdp_mode: file.map_or_else(|| "unknown".to_owned(), |file| file.xdp_mode.clone()),
        requested_xdp_mode: file.map_or(RequestedXdpMode::Auto, |file| file.requested_xdp_mode),
        flow_capacity: dataplane.flow_capacity,
        tcp_idle_timeout_secs: timeouts.tcp_idle_secs,
        tcp_closing_timeout_secs: timeouts.tcp_closing_secs,
        udp_idle_timeout_secs: timeouts.udp_idle_secs,
        services: services.into_iter().map(|(_, record)| record).collect(),
    }
}

/// A pool as the maps hold it: each backend's weight and runtime flags
/// from its record, so a drain, a health exclusion or a load weight
/// outlives a lost state file; what the maps do not record (a backend an
/// older version wrote, a load weight's exact value) from `known`, the
/// state file's pool, when it has it.
fn rebuilt_pool(live: &[LiveBackend], known: Option<&PoolSpec>) -> PoolSpec {
    let mut backends: Vec<BackendSpec> = live
        .iter()
        .map(|backend| {
            let known = known.and_then(|pool| pool.get(backend.addr));
            BackendSpec::from_wire_record(backend.addr, backend.record, known)
                .or_else(|| known.copied())
                .unwrap_or_else(|| BackendSpec::new(backend.addr))
        })
        .collect();
    estimate_load_weights(&mut backends, live);
    PoolSpec::new(backends)
}

/// Gives each backend the maps mark load-weighted, but whose weight only a
/// lost state file held, the load weight its share of the lookup table
/// implies: the table was built from it. An estimate until the daemon's
/// next scrape measures it again. The scale comes from the backends whose
/// table weight is known; when none is, the least loaded backend is taken
/// to run at its full weight (a load weight never exceeds it).
fn estimate_load_weights(backends: &mut [BackendSpec], live: &[LiveBackend]) {
    let unknown: Vec<usize> = (0..backends.len())
        .filter(|&index| live[index].loaded() && backends[index].load_weight.is_none())
        .collect();
    if unknown.is_empty() {
        return;
    }
    let full = |backend: &BackendSpec| backend.weight * load::SCALE;
    let (known_weight, known_entries) = (0..backends.len())
        .filter(|index| !unknown.contains(index) && backends[*index].effective_weight() > 0)
        .map(|index| {
            let backend = &backends[index];
            let weight = backend.load_weight.unwrap_or_else(|| full(backend));
            (u64::from(weight), u64::from(live[index].table_entries))
        })
        .fold((0, 0), |(weight, entries), (w, e)| {
            (weight + w, entries + e)
        });
    let per_entry = if known_entries > 0 {
        known_weight as f64 / known_entries as f64
    } else {
        unknown
            .iter()
            .filter(|&&index| live[index].table_entries > 0)
            .map(|&index| f64::from(full(&backends[index])) / f64::from(live[index].table_entries))
            .fold(f64::INFINITY, f64::min)
    };
    for index in unknown {
        let backend = &mut backends[index];
        let implied = f64::from(live[index].table_entries) * per_entry;
        let implied = if implied.is_finite() {
            implied.round() as u32
        } else {
            0
        };
        backend.load_weight = Some(implied.clamp(backend.weight, full(backend)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::test_backend as spec,
        endpoint::Proto,
        health::{HealthCheck, Probe},
    };

    fn record(name: &str, vip: &str, active: Color) -> ServiceRecord {
        ServiceRecord {
            spec: ServiceSpec {
                active,
                health: Some(HealthCheck::new(Probe::Tcp)),
                ..ServiceSpec::new(
                    name.to_owned(),
                    vip.parse().expect("literal"),
                    Proto::Tcp,
                    "10.1.0.2:80".parse().expect("literal"),
                    "10.1.0.3:80".parse().expect("literal"),
                )
            },
            previous: active,
            counter_slot: 0,
            switched_at_unix_ms: Some(7),
            weight: 0,
            preview: Vec::new(),
        }
    }

    fn file(services: Vec<ServiceRecord>) -> InterfaceState {
        InterfaceState {
            version: STATE_VERSION,
            interface: "veth0".to_owned(),
            xdp_mode: "native".to_owned(),
            requested_xdp_mode: RequestedXdpMode::Native,
            flow_capacity: 4096,
            tcp_idle_timeout_secs: 3600,
            tcp_closing_timeout_secs: 10,
            udp_idle_timeout_secs: 30,
            services,
        }
    }

    fn live(vip: &str, proto: Proto, slot: u32, active: Color) -> (ServiceKey, ServiceState) {
        let state = ServiceState {
            counter_slot: slot,
            active: active.wire(),
            previous: active.other().wire(),
            weight: 25,
            ..Default::default()
        };
        (service_key(vip.parse().expect("literal"), proto), state)
    }

    /// A backend as a version that recorded nothing wrote it.
    fn unrecorded(addr: &str) -> LiveBackend {
        LiveBackend {
            addr: addr.parse().expect("literal"),
            record: [0; 2],
            table_entries: 0,
        }
    }

    fn recorded(addr: &str, spec: BackendSpec, table_entries: u32) -> LiveBackend {
        LiveBackend {
            addr: addr.parse().expect("literal"),
            record: spec.wire_record(),
            table_entries,
        }
    }

    #[test]
    fn a_lost_state_file_keeps_every_runtime_flag_the_maps_record() {
        let drained = BackendSpec {
            drained: true,
            ..spec("10.1.0.2:80", 3)
        };
        let unhealthy = BackendSpec {
            unhealthy: true,
            ..spec("10.1.0.3:80", 1)
        };
        let live = [
            recorded("10.1.0.2:80", drained, 0),
            recorded("10.1.0.3:80", unhealthy, 0),
            recorded("10.1.0.4:80", spec("10.1.0.4:80", 7), 0),
        ];
        let pool = rebuilt_pool(&live, None);
        assert_eq!(
            pool.backends(),
            [drained, unhealthy, spec("10.1.0.4:80", 7)]
        );

        // A stale file (from before the drain) loses to the maps, and
        // lends what they do not record.
        let stale = PoolSpec::new(vec![
            BackendSpec {
                load_unreadable: true,
                ..spec("10.1.0.2:80", 3)
            },
            spec("10.1.0.3:80", 1),
            spec("10.1.0.4:80", 7),
        ]);
        let pool = rebuilt_pool(&live, Some(&stale));
        assert_eq!(
            pool.backends()[0],
            drained,
            "the drain outlives the stale file"
        );
        assert_eq!(pool.backends()[1], unhealthy);

        // An older writer recorded nothing: the file's word, or defaults.
        let old = [unrecorded("10.1.0.2:80")];
        let pool = rebuilt_pool(&old, Some(&stale));
        assert_eq!(pool.backends()[0], stale.backends()[0]);
        assert_eq!(
            rebuilt_pool(&old, None).backends(),
            [spec("10.1.0.2:80", 1)]
        );
    }

    #[test]
    fn load_weights_come_back_from_the_table_shares() {
        let loaded = |addr: &str, weight: u32, load_weight: u32| BackendSpec {
            load_weight: Some(load_weight),
            ..spec(addr, weight)
        };
        // Table weights 10 (unloaded, weight 1 at full scale), 4 and 20
        // over 34 units: a 1,700-entry table gives 500, 200 and 1,000.
        let live = [
            recorded("10.1.0.2:80", spec("10.1.0.2:80", 1), 500),
            recorded("10.1.0.3:80", loaded("10.1.0.3:80", 1, 4), 200),
            recorded("10.1.0.4:80", loaded("10.1.0.4:80", 2, 20), 1000),
        ];
        let pool = rebuilt_pool(&live, None);
        let weights: Vec<_> = pool.backends().iter().map(|b| b.load_weight).collect();
        assert_eq!(weights, [None, Some(4), Some(20)]);
        assert_eq!(
            pool.weighted().iter().map(|(_, w)| *w).collect::<Vec<_>>(),
            [10, 4, 20],
            "the table is built from the same weights again"
        );

        // Every backend loaded: the least loaded one (2 of weight 2's full
        // 20, per entry) sets the scale; the other's 400 entries give 8.
        let live = [
            recorded("10.1.0.3:80", loaded("10.1.0.3:80", 1, 8), 400),
            recorded("10.1.0.4:80", loaded("10.1.0.4:80", 2, 20), 1000),
        ];
        let pool = rebuilt_pool(&live, None);
        let weights: Vec<_> = pool.backends().iter().map(|b| b.load_weight).collect();
        assert_eq!(weights, [Some(8), Some(20)]);

        // The file's exact value wins over an estimate; a drained loaded
        // backend (no entries) stays at its floor, its operator weight.
        let file = PoolSpec::new(vec![loaded("10.1.0.3:80", 1, 7), spec("10.1.0.4:80", 2)]);
        let drained = BackendSpec {
            drained: true,
            ..loaded("10.1.0.4:80", 2, 20)
        };
        let live = [
            recorded("10.1.0.3:80", loaded("10.1.0.3:80", 1, 7), 1000),
            recorded("10.1.0.4:80", drained, 0),
        ];
        let pool = rebuilt_pool(&live, Some(&file));
        assert_eq!(pool.backends()[0].load_weight, Some(7));
        assert_eq!(pool.backends()[1].load_weight, Some(2));
        assert!(pool.backends()[1].drained);
    }

    /// Slot 3's pools as `live` describes them, and `previews`.
    fn dataplane(previews: &[(u32, &str)]) -> Dataplane {
        let backends = BTreeMap::from([
            ((3, Color::Blue), vec![unrecorded("10.1.0.2:80")]),
            ((3, Color::Green), vec![unrecorded("10.1.0.9:80")]),
        ]);
        let mut by_slot: BTreeMap<u32, Vec<Cidr>> = BTreeMap::new();
        for (slot, prefix) in previews {
            by_slot
                .entry(*slot)
                .or_default()
                .push(prefix.parse().expect("literal"));
        }
        Dataplane {
            previews: by_slot,
            backends,
            flow_capacity: 8192,
            timeouts: None,
        }
    }

    #[test]
    fn the_maps_decide_and_the_file_lends_names_checks_and_times() {
        let known = file(vec![record("web", "10.0.0.1:80", Color::Blue)]);
        let maps = BTreeMap::from([live("10.0.0.1:80", Proto::Tcp, 3, Color::Green)]);
        let state = state_from_maps(
            "veth0",
            Some(&known),
            &maps,
            &dataplane(&[(3, "10.200.1.0/24"), (4, "10.200.9.0/24")]),
        );
        let web = &state.services[0];
        assert_eq!(web.spec.name, "web");
        assert_eq!(web.spec.health, known.services[0].spec.health);
        assert_eq!(web.switched_at_unix_ms, Some(7));
        assert_eq!((web.spec.active, web.previous), (Color::Green, Color::Blue));
        assert_eq!(web.spec.green, "10.1.0.9:80".parse().expect("literal"));
        assert_eq!((web.counter_slot, web.weight), (3, 25));
        assert_eq!(
            web.preview,
            ["10.200.1.0/24"],
            "only the service's own slot"
        );
        assert_eq!(state.flow_capacity, 8192);
        assert_eq!(
            (state.xdp_mode.as_str(), state.tcp_idle_timeout_secs),
            ("native", 3600)
        );
    }

    #[test]
    fn without_the_file_live_services_get_placeholder_names_and_stale_records_go() {
        let stale = file(vec![record("gone", "10.0.0.5:80", Color::Blue)]);
        let maps = BTreeMap::from([live("10.0.0.2:53", Proto::Udp, 0, Color::Blue)]);
        for file in [Some(&stale), None] {
            let state = state_from_maps("veth0", file, &maps, &dataplane(&[]));
            assert_eq!(state.services.len(), 1, "{file:?}");
            let service = &state.services[0];
            assert_eq!(service.spec.name, "10.0.0.2:53/udp");
            assert!(service.has_placeholder_name());
            assert_eq!(service.spec.health, None);
            assert_eq!(state.interface, "veth0");
        }
        let state = state_from_maps("veth0", None, &maps, &dataplane(&[]));
        assert_eq!(state.xdp_mode, "unknown");
        assert_eq!(
            state.tcp_idle_timeout_secs,
            Timeouts::default().tcp_idle_secs
        );
    }
}

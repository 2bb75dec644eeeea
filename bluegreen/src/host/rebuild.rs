//! An interface's state as its maps hold it.
//!
//! The maps hold every service's colors, weight, backends, slot and
//! preview prefixes; only the state file holds names, health checks and
//! switch times. A missing, damaged or outdated state file therefore never
//! blocks a command: the state is rebuilt from the maps, keeping from the
//! file what it knows of each live service (by VIP and protocol). A live
//! service the file does not know is named by its VIP and protocol until
//! `up` brings the configured name back.

use std::{collections::BTreeMap, net::SocketAddr};

use bluegreen_common::{ServiceKey, ServiceState, Timeouts};

use crate::{
    config::{BackendSpec, PoolSpec, ServiceSpec, XdpModeArg},
    endpoint::{Cidr, Color, from_wire, service_key, vip_and_proto},
    error::Result,
    pinned::{PinLayout, PinnedMaps, flow_capacity},
    state::{InterfaceState, STATE_VERSION, ServiceRecord, placeholder_name},
};

/// What the maps hold of an interface, beyond its services.
pub(super) struct Dataplane {
    previews: BTreeMap<u32, Vec<Cidr>>,
    /// Each (counter slot, color)'s backends, from its live pool.
    backends: BTreeMap<(u32, Color), Vec<SocketAddr>>,
    flow_capacity: u32,
    /// `None` before any loader wrote them.
    timeouts: Option<Timeouts>,
}

pub(super) fn read_dataplane(layout: &PinLayout, maps: &PinnedMaps) -> Result<Dataplane> {
    let mut previews = BTreeMap::new();
    let mut backends = BTreeMap::new();
    for (key, state) in maps.services()? {
        previews.insert(state.counter_slot, maps.preview(state.counter_slot)?);
        for color in Color::BOTH {
            let pool = maps.pool_backends(state.pool(color.wire()))?;
            let addrs = pool
                .iter()
                .map(|backend| from_wire(key.family, &backend.endpoint));
            backends.insert((state.counter_slot, color), addrs.collect());
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
            // Weights and drained flags live in the file alone; a backend
            // it does not know gets the default weight.
            let pool = |color: Color| {
                let live = dataplane
                    .backends
                    .get(&(state.counter_slot, color))
                    .filter(|backends| !backends.is_empty())
                    .cloned()
                    .unwrap_or_else(|| vec![SocketAddr::new(vip.ip(), 0)]);
                match remembered {
                    Some(record) => record.spec.backends(color).aligned(&live),
                    None => PoolSpec::new(live.into_iter().map(BackendSpec::new).collect()),
                }
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
        requested_xdp_mode: file.map_or(XdpModeArg::Auto, |file| file.requested_xdp_mode),
        flow_capacity: dataplane.flow_capacity,
        tcp_idle_timeout_secs: timeouts.tcp_idle_secs,
        tcp_closing_timeout_secs: timeouts.tcp_closing_secs,
        udp_idle_timeout_secs: timeouts.udp_idle_secs,
        services: services.into_iter().map(|(_, record)| record).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        endpoint::Proto,
        health::{HealthCheck, Probe},
    };

    fn record(name: &str, vip: &str, active: Color) -> ServiceRecord {
        ServiceRecord {
            spec: ServiceSpec {
                name: name.to_owned(),
                vip: vip.parse().expect("literal"),
                proto: Proto::Tcp,
                blue: "10.1.0.2:80".parse().expect("literal"),
                green: "10.1.0.3:80".parse().expect("literal"),
                active,
                health: Some(HealthCheck::new(Probe::Tcp)),
                auto_rollback: None,
                load: None,
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
            requested_xdp_mode: XdpModeArg::Native,
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

    /// Slot 3's pools as `live` describes them, and `previews`.
    fn dataplane(previews: &[(u32, &str)]) -> Dataplane {
        let backends = BTreeMap::from([
            (
                (3, Color::Blue),
                vec!["10.1.0.2:80".parse().expect("literal")],
            ),
            (
                (3, Color::Green),
                vec!["10.1.0.9:80".parse().expect("literal")],
            ),
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

//! Making the services map hold exactly the configured services, keeping
//! what must survive: live active colors, weights, preview prefixes and
//! counters of services that stay.

use std::collections::BTreeSet;

use bluegreen_common::{MAX_SERVICES, SERVICE_HAS_PREVIEW, ServiceKey, ServiceState};

use super::backends::write_pool;
use crate::{
    config::ServiceSpec,
    endpoint::{Cidr, Color, service_key, vip_and_proto},
    error::Result,
    pinned::{PinnedMaps, Put},
    pool::arena::Arenas,
    state::{InterfaceState, ServiceRecord},
};

/// What one configured service becomes, before any map is touched.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Desired {
    /// The service is live: it keeps its slot, generation, colors, weight
    /// and flags; only its pools come from the configuration.
    Keep(ServiceState),
    /// The service is new to the dataplane (or bpffs was emptied by a
    /// reboot): it gets a slot, and its colors come from the state file if
    /// it remembers the service, from the configuration otherwise.
    Fresh {
        active: Color,
        previous: Color,
        weight: u8,
        preview: Vec<Cidr>,
    },
}

/// Whether the state file's record is of this service: the same name, VIP
/// and protocol (a name moved to another VIP is a new service).
fn same_service(record: &ServiceRecord, spec: &ServiceSpec) -> bool {
    record.spec.name == spec.name && record.spec.vip == spec.vip && record.spec.proto == spec.proto
}

/// Decides one service from its configuration, its live entry and the state
/// file's record of it. The live map wins, then the state file, then the
/// configuration. Returns a note for the
/// operator when the configured color is not the one kept.
fn desired_state(
    spec: &ServiceSpec,
    live: Option<&ServiceState>,
    remembered: Option<&ServiceRecord>,
) -> Result<(Desired, Option<String>)> {
    if let Some(live) = live {
        let active = Color::from_wire(live.active);
        let note = (active != spec.active).then(|| {
            format!(
                "{}: keeps its live active color {active} (use `bluegreen switch` to change it)",
                spec.name
            )
        });
        return Ok((Desired::Keep(*live), note));
    }
    let Some(record) = remembered else {
        let fresh = Desired::Fresh {
            active: spec.active,
            previous: spec.active,
            weight: 0,
            preview: Vec::new(),
        };
        return Ok((fresh, None));
    };
    let note = (record.spec.active != spec.active).then(|| {
        format!(
            "{}: restored active color {} from the state file",
            spec.name, record.spec.active
        )
    });
    // After a reboot the weighted share and the preview prefixes come back
    // with the color.
    let preview = record
        .preview
        .iter()
        .map(|prefix| prefix.parse())
        .collect::<std::result::Result<_, _>>()?;
    let fresh = Desired::Fresh {
        active: record.spec.active,
        previous: record.previous,
        weight: record.weight,
        preview,
    };
    Ok((fresh, note))
}

/// Makes the services map hold exactly `specs` (see [`desired_state`]) and
/// returns the state file's records for them.
pub(super) fn reconcile_services(
    maps: &mut PinnedMaps,
    specs: &[ServiceSpec],
    previous: Option<&InterfaceState>,
    notes: &mut Vec<String>,
) -> Result<Vec<ServiceRecord>> {
    let live = maps.services()?;
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

    let mut arenas = Arenas::new(live.values());
    let mut records = Vec::with_capacity(specs.len());
    for (spec, key) in specs.iter().zip(&wanted) {
        let remembered = previous
            .and_then(|state| state.service(&spec.name))
            .filter(|record| same_service(record, spec));
        let (desired, note) = desired_state(spec, live.get(key), remembered)?;
        // Draining (the operator's), health exclusions and load weights
        // (the daemon's) are runtime state: a reload keeps them for the
        // backends the config still lists, the daemon's only while a
        // health check or load section remains to update them.
        let mut spec = spec.clone();
        if let Some(record) = remembered {
            let checked = spec.health.is_some();
            let weighed = spec.load.is_some();
            for color in Color::BOTH {
                let pool = spec.backends_mut(color);
                pool.keep_runtime_state(record.spec.backends(color));
                if !checked {
                    *pool = pool.with_health(|_| false);
                }
                if !weighed {
                    *pool = pool.with_load(|_| None, |_| false);
                }
            }
        }
        let spec = &spec;
        notes.extend(note);
        let state = match desired {
            Desired::Keep(live) => live,
            Desired::Fresh {
                active,
                previous,
                weight,
                preview,
            } => {
                let slot = free_slots
                    .next()
                    .expect("config validation caps the number of services");
                maps.reset_counters(slot)?;
                maps.set_preview(slot, &preview)?;
                ServiceState {
                    pools: Default::default(),
                    // Past any generation an earlier service in this slot
                    // had, so none of its leftover flows can match.
                    generation: maps.generation(slot)?.wrapping_add(1),
                    counter_slot: slot,
                    active: active.wire(),
                    previous: previous.wire(),
                    weight,
                    flags: if preview.is_empty() {
                        0
                    } else {
                        SERVICE_HAS_PREVIEW
                    },
                }
                // Leftover flows of the slot's earlier service are stale;
                // should one match, it must follow this service's color.
                .with_forced_color(active.wire())
            }
        };
        let mut pools = state.pools;
        for color in Color::BOTH {
            // Only a live pool's size is worth keeping.
            let live_pool = live
                .contains_key(key)
                .then_some(&state.pools[usize::from(color.wire())]);
            pools[usize::from(color.wire())] =
                write_pool(maps, &mut arenas, key, spec.backends(color), live_pool)?;
        }
        // The old pools' space is not released for the rest of this
        // reconcile: a packet that read the service before the flip may
        // still be reading them.
        maps.put_service(key, &ServiceState { pools, ..state }, Put::CreateOrReplace)?;
        records.push(ServiceRecord {
            spec: ServiceSpec {
                active: Color::from_wire(state.active),
                ..spec.clone()
            },
            previous: Color::from_wire(state.previous),
            counter_slot: state.counter_slot,
            switched_at_unix_ms: remembered.and_then(|record| record.switched_at_unix_ms),
            weight: state.weight,
            preview: maps
                .preview(state.counter_slot)?
                .iter()
                .map(ToString::to_string)
                .collect(),
        });
    }
    let previous_keys: Vec<ServiceKey> = live.keys().copied().collect();
    maps.set_filters(&previous_keys, &wanted)?;
    let known = previous.map_or(&[][..], |state| &state.services);
    for (key, state) in live.iter().filter(|(key, _)| !wanted_set.contains(key)) {
        maps.remove_service(key, state)?;
        notes.push(removal_note(key, known));
    }
    Ok(records)
}

/// What the operator is told about a live service that is not wanted any
/// more, named from the state file's `known` records.
fn removal_note(key: &ServiceKey, known: &[ServiceRecord]) -> String {
    let what = match known
        .iter()
        .find(|record| service_key(record.spec.vip, record.spec.proto) == *key)
    {
        Some(record) => format!(
            "service {} ({} {})",
            record.spec.name, record.spec.vip, record.spec.proto
        ),
        // The state file was lost while the dataplane ran: only the map
        // knows the service, and not its name.
        None => {
            let (vip, proto) = vip_and_proto(key);
            format!("the service at {vip} {proto}")
        }
    };
    format!("removed {what}: its open connections are no longer steered")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Proto;

    fn spec(active: Color) -> ServiceSpec {
        ServiceSpec {
            active,
            ..ServiceSpec::new(
                "chat".to_owned(),
                "10.0.0.1:80".parse().expect("literal"),
                Proto::Tcp,
                "10.1.0.2:80".parse().expect("literal"),
                "10.1.0.3:80".parse().expect("literal"),
            )
        }
    }

    fn record(spec: ServiceSpec, previous: Color) -> ServiceRecord {
        ServiceRecord {
            spec,
            previous,
            counter_slot: 7,
            switched_at_unix_ms: Some(1),
            weight: 20,
            preview: vec!["10.200.1.0/24".to_owned()],
        }
    }

    #[test]
    fn a_live_service_keeps_its_state() {
        let live = ServiceState {
            generation: 9,
            counter_slot: 3,
            active: Color::Green.wire(),
            previous: Color::Blue.wire(),
            weight: 0,
            flags: SERVICE_HAS_PREVIEW,
            ..Default::default()
        };
        let remembered = record(spec(Color::Blue), Color::Green);
        let (desired, note) =
            desired_state(&spec(Color::Blue), Some(&live), Some(&remembered)).expect("decides");
        assert_eq!(desired, Desired::Keep(live));
        let note = note.expect("the configured color differs from the live one");
        assert!(note.contains("keeps its live active color green"), "{note}");
    }

    #[test]
    fn after_a_reboot_the_state_file_restores_color_weight_and_preview() {
        let remembered = record(spec(Color::Green), Color::Blue);
        let (desired, note) =
            desired_state(&spec(Color::Blue), None, Some(&remembered)).expect("decides");
        assert_eq!(
            desired,
            Desired::Fresh {
                active: Color::Green,
                previous: Color::Blue,
                weight: 20,
                preview: vec!["10.200.1.0/24".parse().expect("literal")],
            }
        );
        let note = note.expect("the restored color differs from the configured one");
        assert!(note.contains("restored active color green"), "{note}");
    }

    #[test]
    fn a_service_unknown_to_map_and_state_file_takes_the_configured_color() {
        let (desired, note) = desired_state(&spec(Color::Green), None, None).expect("decides");
        assert_eq!(
            desired,
            Desired::Fresh {
                active: Color::Green,
                previous: Color::Green,
                weight: 0,
                preview: Vec::new(),
            }
        );
        assert_eq!(note, None);
    }

    #[test]
    fn a_removed_service_is_named_from_the_state_file_or_by_its_vip() {
        let chat = spec(Color::Blue);
        let key = service_key(chat.vip, chat.proto);
        assert_eq!(
            removal_note(&key, &[record(chat, Color::Blue)]),
            "removed service chat (10.0.0.1:80 tcp): its open connections are no longer steered"
        );
        assert_eq!(
            removal_note(&key, &[]),
            "removed the service at 10.0.0.1:80 tcp: its open connections are no longer steered"
        );
    }

    #[test]
    fn a_remembered_service_at_another_vip_or_protocol_is_another_service() {
        let configured = spec(Color::Blue);
        assert!(same_service(
            &record(configured.clone(), Color::Blue),
            &configured
        ));
        let mut moved = configured.clone();
        moved.vip = "10.0.0.2:80".parse().expect("literal");
        assert!(!same_service(&record(moved, Color::Blue), &configured));
        let mut udp = configured.clone();
        udp.proto = Proto::Udp;
        assert!(!same_service(&record(udp, Color::Blue), &configured));
    }
}

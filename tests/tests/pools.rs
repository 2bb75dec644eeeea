//! Pools through the real XDP program (`BPF_PROG_TEST_RUN`): how new flows
//! spread over a color's backends, and what a drained, removed or re-added
//! backend changes, with the tables written by the product's own code.
//! Needs root.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
};

use bluegreen_common::{
    COLOR_BLUE, Endpoint, PassReason, ServiceState, Settings, Timeouts, TrafficCounters,
};
use bluegreen_testbed::{
    kernel::{TestDataplane, XDP_PASS, endpoint, flow_key, hz, service_key},
    packet::{Frame, PROTO_TCP, TCP_ACK, TCP_SYN},
};

/// Distinct connections sent through each table.
const FLOWS: u16 = 2000;

fn vip() -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(192, 0, 2, 10).into(), 80)
}

fn replica(index: u8) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(10, 0, 1, index + 1).into(), 8080)
}

/// Connection `index`: its own client address and port.
fn client(index: u16) -> SocketAddr {
    let [hi, lo] = index.to_be_bytes();
    SocketAddr::new(Ipv4Addr::new(198, 51, hi, lo).into(), 40000 + index % 1000)
}

/// Blue is active and a pool of `weights.len()` replicas (weight 0: drained);
/// green, idle, has one backend.
fn install(dataplane: &mut TestDataplane, weights: &[u32]) {
    let replicas: Vec<(u8, u32)> = (0..).zip(weights.iter().copied()).collect();
    install_replicas(dataplane, &replicas);
}

/// As [`install`], with blue's pool made of the replicas numbered in
/// `replicas`, each with its weight.
fn install_replicas(dataplane: &mut TestDataplane, replicas: &[(u8, u32)]) {
    let state = ServiceState {
        generation: 1,
        counter_slot: 0,
        active: COLOR_BLUE,
        previous: COLOR_BLUE,
        ..Default::default()
    };
    let blue = replicas
        .iter()
        .map(|&(index, weight)| (replica(index), weight))
        .collect();
    let green = vec![(SocketAddr::new(Ipv4Addr::new(10, 0, 2, 1).into(), 8080), 1)];
    dataplane.insert_services(&[(service_key(vip(), PROTO_TCP), state, [blue, green])]);
}

fn dataplane() -> TestDataplane {
    let mut dataplane = TestDataplane::new();
    dataplane.set_settings(Settings::new(&Timeouts::default(), hz()));
    dataplane
}

/// Sends one packet of connection `index` and returns the backend the
/// program sent it to (`None`: passed untouched).
fn send(dataplane: &TestDataplane, index: u16, tcp_flags: u8) -> Option<Endpoint> {
    let frame = Frame::tcp(client(index), vip(), tcp_flags).build();
    let (verdict, output) = dataplane.run_xdp(&frame);
    assert_eq!(verdict, XDP_PASS, "connection {index}");
    if output == frame {
        return None;
    }
    let entry = dataplane
        .flow(&flow_key(client(index), vip(), PROTO_TCP))
        .unwrap_or_else(|| panic!("connection {index} was rewritten but not recorded"));
    Some(entry.backend)
}

/// Opens every connection afresh (the flow table cleared first) and
/// returns where each went.
fn open_all(dataplane: &mut TestDataplane) -> Vec<Endpoint> {
    dataplane.clear_flows();
    (0..FLOWS)
        .map(|index| {
            send(dataplane, index, TCP_SYN)
                .unwrap_or_else(|| panic!("connection {index} went nowhere"))
        })
        .collect()
}

fn count(backends: &[Endpoint]) -> HashMap<Endpoint, usize> {
    let mut counts = HashMap::new();
    for backend in backends {
        *counts.entry(*backend).or_default() += 1;
    }
    counts
}

#[test]
fn new_flows_spread_over_eight_replicas_and_one_leaving_moves_only_its_own() {
    let mut dataplane = dataplane();
    install(&mut dataplane, &[1; 8]);
    let before = open_all(&mut dataplane);
    let counts = count(&before);
    assert_eq!(counts.len(), 8, "every replica gets flows: {counts:?}");
    let even = usize::from(FLOWS) / 8;
    for (backend, flows) in &counts {
        assert!(
            flows.abs_diff(even) * 100 <= even * 40,
            "{backend:?} got {flows} of {FLOWS} flows (even: {even})"
        );
    }

    let mut without_fourth = vec![1; 8];
    without_fourth[3] = 0;
    install(&mut dataplane, &without_fourth);
    let after = open_all(&mut dataplane);
    let leaving = endpoint(replica(3));
    assert!(
        !after.contains(&leaving),
        "the drained replica gets no flow"
    );
    let stayed: Vec<usize> = (0..before.len())
        .filter(|&index| before[index] != leaving)
        .collect();
    let moved = stayed
        .iter()
        .filter(|&&index| before[index] != after[index])
        .count();
    assert!(
        moved * 100 <= stayed.len() * 5,
        "{moved} of the {} flows of the other replicas moved",
        stayed.len()
    );

    install(&mut dataplane, &[1; 8]);
    assert_eq!(
        open_all(&mut dataplane),
        before,
        "with the replica back, every flow maps as before"
    );
}

#[test]
fn shares_follow_the_weights() {
    let mut dataplane = dataplane();
    install(&mut dataplane, &[3, 1]);
    let counts = count(&open_all(&mut dataplane));
    let heavy = counts[&endpoint(replica(0))];
    let expected = usize::from(FLOWS) * 3 / 4;
    assert!(
        heavy.abs_diff(expected) * 100 <= expected * 10,
        "weight 3 of 4 got {heavy} of {FLOWS}: {counts:?}"
    );
}

#[test]
fn a_drained_replica_keeps_its_connections_and_gets_no_new_one() {
    let mut dataplane = dataplane();
    install(&mut dataplane, &[1, 1, 1]);
    let kept: Vec<(u16, Endpoint)> = (0..30)
        .map(|index| (index, send(&dataplane, index, TCP_SYN).expect("opened")))
        .collect();
    let drained = kept[0].1;
    let drained_index = (0..3)
        .find(|&index| endpoint(replica(index)) == drained)
        .expect("one of the replicas");
    let mut weights = [1; 3];
    weights[usize::from(drained_index)] = 0;
    install(&mut dataplane, &weights);

    for (index, backend) in &kept {
        assert_eq!(
            send(&dataplane, *index, TCP_ACK),
            Some(*backend),
            "connection {index} stays where it started"
        );
    }
    for index in 1000..1200 {
        let backend = send(&dataplane, index, TCP_SYN).expect("opened");
        assert_ne!(backend, drained, "new connection {index}");
    }
}

#[test]
fn a_color_with_every_replica_drained_passes_new_flows_and_keeps_open_ones() {
    let mut dataplane = dataplane();
    install(&mut dataplane, &[1, 1]);
    let open = send(&dataplane, 0, TCP_SYN).expect("opened");
    install(&mut dataplane, &[0, 0]);

    assert_eq!(
        send(&dataplane, 0, TCP_ACK),
        Some(open),
        "the open one stays"
    );
    let passed = dataplane.passed(PassReason::NoBackend);
    assert_eq!(
        send(&dataplane, 1, TCP_SYN),
        None,
        "nowhere to send a new one"
    );
    assert_eq!(dataplane.passed(PassReason::NoBackend), passed + 1);
}

/// Each of blue's replicas' counter slot (`None`: not in the pool).
fn counter_slots(dataplane: &TestDataplane, replicas: u8) -> Vec<Option<u32>> {
    (0..replicas)
        .map(|index| {
            dataplane.backend_counter_slot(
                &service_key(vip(), PROTO_TCP),
                COLOR_BLUE,
                replica(index),
            )
        })
        .collect()
}

#[test]
fn each_replica_counts_its_own_flows_and_keeps_its_counters_while_the_pool_changes() {
    let mut dataplane = dataplane();
    install(&mut dataplane, &[1; 4]);
    let opened = count(&open_all(&mut dataplane));
    let slots = counter_slots(&dataplane, 4);
    let counted: Vec<TrafficCounters> = slots
        .iter()
        .map(|slot| dataplane.backend_traffic(slot.expect("in the pool")))
        .collect();
    for (index, traffic) in counted.iter().enumerate() {
        let flows = opened[&endpoint(replica(index as u8))] as u64;
        assert_eq!(
            (traffic.packets, traffic.new_flows),
            (flows, flows),
            "replica {index}: one SYN per flow it got"
        );
    }
    let color = dataplane.traffic(0, COLOR_BLUE);
    assert_eq!(
        counted.iter().map(|traffic| traffic.bytes).sum::<u64>(),
        color.bytes,
        "the replicas' bytes add up to the color's"
    );

    install(&mut dataplane, &[3, 1, 1, 1]);
    assert_eq!(
        counter_slots(&dataplane, 4),
        slots,
        "a rewritten pool keeps each replica's slot"
    );
    for (index, slot) in slots.iter().enumerate() {
        assert_eq!(
            dataplane.backend_traffic(slot.expect("in the pool")),
            counted[index],
            "replica {index}'s counters run on"
        );
    }

    install_replicas(&mut dataplane, &[(0, 1), (1, 1), (2, 1)]);
    install_replicas(&mut dataplane, &[(0, 1), (1, 1), (2, 1), (4, 1)]);
    let newcomer = counter_slots(&dataplane, 5)[4];
    assert_eq!(
        newcomer, slots[3],
        "the newcomer takes the slot replica 3 freed"
    );
    assert_eq!(
        dataplane.backend_traffic(newcomer.expect("in the pool")),
        TrafficCounters::default(),
        "and counts from zero, not from replica 3's {:?}",
        counted[3]
    );
}

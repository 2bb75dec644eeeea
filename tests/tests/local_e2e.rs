//! Host-local clients: processes in the switch's own network namespace
//! that connect or send to a VIP, steered by the cgroup socket-address
//! programs at connect time. Clients here are threads of this test moved
//! into the switch namespace; the programs are attached at the cgroup v2
//! root (the default), and the netns-cookie guard keeps every other
//! namespace, the host's included, untouched.

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use bluegreen_testbed::{
    fixture::{BACKEND_PORT, Fixture, TIMEOUT, vip},
    http::{self, Backend, KeepAlive},
    netns::{Namespace, addr},
};

fn v6(address: &str, port: u16) -> SocketAddr {
    SocketAddr::new(address.parse().expect("literal"), port)
}

/// The standard service plus an IPv6 one and a UDP one per family.
fn config(fixture: &Fixture) -> String {
    let service = |name: &str,
                   proto: &str,
                   vip: SocketAddr,
                   blue: SocketAddr,
                   green: SocketAddr| {
        format!(
            "[[service]]\nname = \"{name}\"\nproto = \"{proto}\"\nvip = \"{vip}\"\nblue = \"{blue}\"\ngreen = \"{green}\"\n\n"
        )
    };
    let v4 = |address: &str, port: u16| SocketAddr::new(address.parse().expect("literal"), port);
    let text = [
        format!(
            "interface = \"{}\"\n\n",
            bluegreen_testbed::netns::SWITCH_IFACE
        ),
        service(
            "web",
            "tcp",
            vip(),
            v4(addr::BLUE_V4, BACKEND_PORT),
            v4(addr::GREEN_V4, BACKEND_PORT),
        ),
        service(
            "web6",
            "tcp",
            v6(addr::VIP_V6, 80),
            v6(addr::BLUE_V6, BACKEND_PORT),
            v6(addr::GREEN_V6, BACKEND_PORT),
        ),
        service(
            "dns4",
            "udp",
            v4(addr::VIP_V4, 53),
            v4(addr::BLUE_V4, BACKEND_PORT),
            v4(addr::GREEN_V4, BACKEND_PORT),
        ),
        service(
            "dns6",
            "udp",
            v6(addr::VIP_V6, 53),
            v6(addr::BLUE_V6, BACKEND_PORT),
            v6(addr::GREEN_V6, BACKEND_PORT),
        ),
    ]
    .concat();
    fixture.write_config(&text)
}

/// Runs `work` on a thread in `namespace` and returns its result.
fn inside<T: Send + 'static>(
    namespace: &Namespace,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    namespace
        .spawn(work)
        .join()
        .expect("client thread panicked")
}

/// A request on a new local connection to `target`: the color that
/// answered and the peer the application saw.
fn local_get(fixture: &Fixture, target: SocketAddr) -> (String, SocketAddr) {
    inside(&fixture.topology.switch, move || {
        let mut connection = KeepAlive::connect(target, TIMEOUT)
            .unwrap_or_else(|error| panic!("local connect to {target}: {error}"));
        let body = connection
            .get()
            .unwrap_or_else(|error| panic!("request to {target}: {error}"));
        (body, connection.peer().expect("getpeername"))
    })
}

#[test]
fn local_tcp_clients_get_the_active_color_and_see_the_vip_as_their_peer() {
    let fixture = Fixture::new();
    fixture.up_with_config(&config(&fixture));
    for target in [vip(), v6(addr::VIP_V6, 80)] {
        for _ in 0..5 {
            let (body, peer) = local_get(&fixture, target);
            assert_eq!(body, "blue", "a new local connection to {target}");
            assert_eq!(peer, target, "getpeername shows the VIP, not the backend");
        }
    }
    fixture
        .bluegreen
        .ok(&["switch", "green", "--service", "web"]);
    fixture
        .bluegreen
        .ok(&["switch", "green", "--service", "web6"]);
    for target in [vip(), v6(addr::VIP_V6, 80)] {
        for _ in 0..5 {
            let (body, peer) = local_get(&fixture, target);
            assert_eq!(body, "green", "after the switch, {target}");
            assert_eq!(peer, target);
        }
    }
    // The rewrites are counted as new flows of the color they went to.
    let status = fixture.bluegreen.status();
    let web = &status["interfaces"][0]["services"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["blue"]["new_flows"], 5, "{web}");
    assert_eq!(web["green"]["new_flows"], 5, "{web}");
}

#[test]
fn local_udp_clients_see_replies_from_the_vip() {
    let fixture = Fixture::new();
    fixture.up_with_config(&config(&fixture));
    for target in [
        SocketAddr::new(addr::VIP_V4.parse().expect("literal"), 53),
        v6(addr::VIP_V6, 53),
    ] {
        let (connected, unconnected) = inside(&fixture.topology.switch, move || {
            (
                http::udp_request(target, TIMEOUT),
                http::udp_unconnected(target, TIMEOUT),
            )
        });
        assert_eq!(
            connected.expect("connected UDP through the VIP"),
            "blue",
            "{target}"
        );
        let (body, from) = unconnected.expect("unconnected UDP through the VIP");
        assert_eq!(body, "blue", "{target}");
        assert_eq!(from, target, "recvfrom shows the VIP as the source");
    }
}

#[test]
fn a_client_in_another_namespace_is_not_rewritten() {
    let fixture = Fixture::new();
    fixture.up();
    // A namespace of its own where the VIP is a local address with its own
    // server: a rewrite would send the client to the blue backend, which
    // this namespace cannot even reach.
    let other = Namespace::create(&format!("{}-other", fixture.topology.prefix));
    other.ip(&["link", "set", "lo", "up"]);
    other.ip(&["addr", "add", &format!("{}/32", addr::VIP_V4), "dev", "lo"]);
    let _server = Backend::start(&other, vip().port(), "not rewritten");
    let body = inside(&other, || http::get(vip(), TIMEOUT));
    assert_eq!(
        body.expect("the other namespace's own VIP server answers"),
        "not rewritten"
    );
    // Meanwhile the switch's namespace is steered.
    assert_eq!(local_get(&fixture, vip()).0, "blue");
}

#[test]
fn no_local_leaves_local_clients_alone() {
    let fixture = Fixture::new();
    fixture.up_with(&["--no-local"]);
    let refused = inside(&fixture.topology.switch, || {
        TcpStream::connect_timeout(&vip(), Duration::from_millis(500))
    });
    assert!(
        refused.is_err(),
        "nothing listens on the VIP in the switch namespace, so a connection that is not rewritten fails"
    );
    // Turned on by the next `up`, and off again.
    fixture.up();
    assert_eq!(local_get(&fixture, vip()).0, "blue");
    let out = fixture.up_with(&["--no-local"]);
    assert!(out.contains("no longer steered"), "{out}");
    let refused = inside(&fixture.topology.switch, || {
        TcpStream::connect_timeout(&vip(), Duration::from_millis(500))
    });
    assert!(refused.is_err(), "--no-local detached the programs again");
}

/// Local connections of the standard service per `status --json`.
fn local_connections(fixture: &Fixture) -> [u64; 2] {
    let service = fixture.service_status();
    ["blue", "green"].map(|color| {
        service[color]["local_connections"]
            .as_u64()
            .unwrap_or_else(|| panic!("{color} local_connections in {service}"))
    })
}

#[test]
fn a_local_keep_alive_connection_stays_through_a_graceful_switch_and_is_reset_by_a_forced_one() {
    let fixture = Fixture::new();
    fixture.up();
    let mut kept = inside(&fixture.topology.switch, || {
        KeepAlive::connect(vip(), TIMEOUT).expect("local keep-alive connect")
    });
    assert_eq!(kept.get().expect("first request"), "blue");
    assert_eq!(local_connections(&fixture), [1, 0], "counted on blue");

    fixture.bluegreen.ok(&["switch", "green"]);
    assert_eq!(
        kept.get().expect("request after a graceful switch"),
        "blue",
        "a graceful switch leaves the local connection on blue"
    );
    assert_eq!(local_connections(&fixture), [1, 0]);
    // --wait-drain counts it: blue is not drained while it is open.
    let waited = fixture
        .bluegreen
        .run(&["switch", "green", "--wait-drain=1"]);
    assert_eq!(
        waited.code, 3,
        "blue still has the local connection: {waited:?}"
    );
    let mut fresh = inside(&fixture.topology.switch, || {
        KeepAlive::connect(vip(), TIMEOUT).expect("local keep-alive connect")
    });
    assert_eq!(fresh.get().expect("new connection"), "green");
    assert_eq!(local_connections(&fixture), [1, 1]);

    let forced = fixture.bluegreen.ok(&["switch", "green", "--force"]);
    assert!(
        forced.contains("1 local connections to blue reset"),
        "{forced}"
    );
    let after = kept.get();
    assert!(
        after.is_err(),
        "the forced switch reset the local connection to blue, got {after:?}"
    );
    assert_eq!(
        fresh.get().expect("the green connection is untouched"),
        "green"
    );
    assert_eq!(local_connections(&fixture), [0, 1]);
    let reconnected = inside(&fixture.topology.switch, || http::get(vip(), TIMEOUT));
    assert_eq!(reconnected.expect("reconnect"), "green");
    drop(fresh);
    let drained = fixture.bluegreen.ok(&["switch", "blue", "--wait-drain=10"]);
    assert!(drained.contains("drained"), "{drained}");
}

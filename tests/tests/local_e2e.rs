//! Host-local clients: processes in the switch's own network namespace
//! that connect or send to a VIP, steered by the cgroup socket-address
//! programs at connect time. Clients here are threads of this test moved
//! into the switch namespace; the programs are attached at the cgroup v2
//! root (the default), and the netns-cookie guard keeps every other
//! namespace, the host's included, untouched.

use std::{
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::programs::links::{FdLink, PinnedLink};
use bluegreen_testbed::{
    cgroup::TestCgroup,
    cli::Bluegreen,
    fixture::{
        BACKEND_PORT, Fixture, TIMEOUT, blue_backend, config_text, green_backend, up_args, vip,
    },
    http::{self, Backend, KeepAlive, Load},
    metrics::{METRICS, metric, scrape},
    netns::{Namespace, SWITCH_IFACE, addr},
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
        format!("interface = \"{}\"\n\n", SWITCH_IFACE),
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
    let status = fixture.service_status();
    assert!(
        status["blue"]["local_connections"].is_null(),
        "not counted when not steered: {status}"
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

/// The local-client link pins of the fixture's instance that exist.
fn local_link_pins(fixture: &Fixture) -> u32 {
    let dir = fixture.bluegreen.interface_pins();
    [
        "connect4",
        "connect6",
        "sendmsg4",
        "sendmsg6",
        "recvmsg4",
        "recvmsg6",
        "getpeername4",
        "getpeername6",
    ]
    .iter()
    .filter(|hook| dir.join(format!("link_{hook}")).exists())
    .count() as u32
}

#[test]
fn up_attaches_one_program_per_hook_beside_others_a_hot_upgrade_replaces_them_in_place_and_down_leaves_no_cgroup_attachment()
 {
    let fixture = Fixture::new();
    let cgroup = TestCgroup::create(&format!("{}-local", fixture.topology.prefix));
    let path = cgroup.path().to_str().expect("utf-8 path").to_owned();
    let out = fixture.up_with(&["--cgroup", &path]);
    assert!(out.contains(&path), "up names the cgroup: {out}");
    assert_eq!(cgroup.attached_programs(), 8, "one program per hook");
    assert_eq!(local_link_pins(&fixture), 8);
    // A second `up` (a hot upgrade) swaps the programs behind the links.
    fixture.up_with(&["--cgroup", &path]);
    assert_eq!(cgroup.attached_programs(), 8, "replaced, not added");

    // Another instance (on another interface, with pins of its own)
    // attaches beside the first, and its `down` leaves the first's alone.
    let second = Bluegreen {
        namespace_path: fixture.topology.switch.path(),
        // bpffs refuses names with a dot.
        pin_dir: PathBuf::from(format!("{}-second", fixture.bluegreen.pin_dir.display())),
        state_dir: PathBuf::from(format!("{}-second", fixture.bluegreen.state_dir.display())),
    };
    second.ok(&[
        "up",
        "--iface",
        "sb",
        "--service",
        "other",
        "--vip",
        "10.200.100.2:80",
        "--blue",
        &blue_backend().to_string(),
        "--green",
        &green_backend().to_string(),
        "--cgroup",
        &path,
    ]);
    assert_eq!(
        cgroup.attached_programs(),
        16,
        "added beside, not replacing"
    );
    second.ok(&["down", "--iface", "sb"]);
    assert_eq!(cgroup.attached_programs(), 8, "the first instance's stay");

    fixture.bluegreen.ok(&["down", "--iface", SWITCH_IFACE]);
    assert_eq!(cgroup.attached_programs(), 0, "down detached them");
    assert_eq!(local_link_pins(&fixture), 0);
}

/// The program behind each of the instance's pinned links.
fn linked_programs(fixture: &Fixture) -> Vec<u32> {
    let mut links: Vec<PathBuf> = fixture
        .bluegreen
        .pins()
        .into_iter()
        .filter(|pin| {
            pin.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("link_"))
        })
        .collect();
    links.sort();
    assert_eq!(links.len(), 10, "XDP, TC and eight cgroup links: {links:?}");
    links
        .iter()
        .map(|link| {
            let link = PinnedLink::from_pin(link).expect("open a pinned link");
            FdLink::from(link).info().expect("link info").program_id()
        })
        .collect()
}

#[test]
fn a_bad_cgroup_fails_up_before_anything_is_attached_or_changed() {
    let fixture = Fixture::new();
    let mut args = up_args();
    args.extend(["--cgroup".to_owned(), "/proc".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = |fixture: &Fixture| {
        let run = fixture.bluegreen.run(&args);
        assert_ne!(run.code, 0, "{run:?}");
        assert!(run.stderr.contains("not a cgroup v2 directory"), "{run:?}");
    };
    refused(&fixture);
    assert!(
        fixture.bluegreen.pins().is_empty(),
        "a failed first `up` leaves no pin: {:?}",
        fixture.bluegreen.pins()
    );
    // On a running instance: refused before the programs are replaced.
    fixture.up();
    let pins = fixture.bluegreen.pins();
    let programs = linked_programs(&fixture);
    refused(&fixture);
    assert_eq!(fixture.bluegreen.pins(), pins, "nothing changed");
    assert_eq!(
        linked_programs(&fixture),
        programs,
        "no program was replaced behind its link"
    );
    assert_eq!(local_get(&fixture, vip()).0, "blue", "still steered");
}

#[test]
fn a_crash_of_the_cli_mid_up_leaves_nothing_half_attached() {
    let fixture = Fixture::new();
    let cgroup = TestCgroup::create(&format!("{}-crash", fixture.topology.prefix));
    let path = cgroup.path().to_str().expect("utf-8 path").to_owned();
    let mut args = up_args();
    args.extend(["--cgroup".to_owned(), path.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for delay_ms in [0, 5, 10, 20, 40, 80, 160, 320] {
        let mut up = fixture.bluegreen.spawn(&args);
        std::thread::sleep(Duration::from_millis(delay_ms));
        up.kill().expect("kill -9 the CLI");
        up.wait().expect("reap the CLI");
        // Every program still attached is one `down` can find: links are
        // pinned only once all are attached, and a killed process's
        // unpinned links go with its descriptors (released asynchronously).
        let deadline = Instant::now() + Duration::from_secs(5);
        while cgroup.attached_programs() != local_link_pins(&fixture) {
            assert!(
                Instant::now() < deadline,
                "after a kill at {delay_ms} ms: {} programs attached, {} pinned",
                cgroup.attached_programs(),
                local_link_pins(&fixture)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The next `up` repairs whatever the crash left, and `down`
        // removes it all.
        fixture.bluegreen.ok(&args);
        assert_eq!(
            cgroup.attached_programs(),
            8,
            "after a kill at {delay_ms} ms"
        );
        fixture.bluegreen.ok(&["down", "--iface", SWITCH_IFACE]);
        assert_eq!(
            cgroup.attached_programs(),
            0,
            "after a kill at {delay_ms} ms"
        );
    }
}

/// The inference-host layout: both colors' backends on the switch host
/// itself (blue on :8001, green on :8002) behind a VIP that is the host's
/// own address (:8000), for remote and local clients alike.
#[test]
fn local_backends_serve_remote_and_local_clients_through_50_switches_under_load() {
    let fixture = Fixture::new();
    let host = addr::SWITCH_CLIENT_SIDE_V4;
    let _blue = Backend::start(&fixture.topology.switch, 8001, "local-blue");
    let _green = Backend::start(&fixture.topology.switch, 8002, "local-green");
    let config = fixture.write_config(&format!(
        "interface = \"{SWITCH_IFACE}\"\n\n[[service]]\nname = \"model\"\nvip = \"{host}:8000\"\nblue = \"{host}:8001\"\ngreen = \"{host}:8002\"\n"
    ));
    fixture.up_with_config(&config);
    let target: SocketAddr = format!("{host}:8000").parse().expect("literal");

    let deadline = Duration::from_secs(90);
    let remote = Load::start(&fixture.topology.client, target, 2, 1_000_000, deadline);
    let local = Load::start(&fixture.topology.switch, target, 2, 1_000_000, deadline);
    for switch in 0..50 {
        let color = if switch % 2 == 0 { "green" } else { "blue" };
        fixture.bluegreen.ok(&["switch", color]);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (remote, local) = (remote.finish(true), local.finish(true));
    for (clients, report) in [("remote", &remote), ("local", &local)] {
        assert!(
            report.failures.is_empty(),
            "{clients} clients: {} of {} requests failed: {:?}",
            report.failures.len(),
            report.succeeded() + report.failures.len() as u64,
            &report.failures[..report.failures.len().min(5)]
        );
        for color in ["local-blue", "local-green"] {
            assert!(
                report.served_by.get(color).copied().unwrap_or(0) > 0,
                "{clients} clients were never served by {color}: {report:?}"
            );
        }
        assert!(
            report.succeeded() >= 200,
            "{clients} clients: the load kept going through the switches: {report:?}"
        );
        assert!(
            report.served_by.len() == 2,
            "{clients} clients reached only the two local backends: {report:?}"
        );
    }
    // After the last switch (to blue), new connections of both kinds go
    // to blue.
    let remote_get = inside(&fixture.topology.client, move || http::get(target, TIMEOUT));
    assert_eq!(remote_get.expect("a remote request"), "local-blue");
    assert_eq!(
        local_get(&fixture, target),
        ("local-blue".to_owned(), target)
    );
}

#[test]
fn local_clients_follow_preview_prefixes_and_weighted_splits_like_remote_ones() {
    let fixture = Fixture::new();
    fixture.up();
    // A local client counts as the interface's address for preview.
    fixture.bluegreen.ok(&[
        "preview",
        "add",
        &format!("{}/32", addr::SWITCH_CLIENT_SIDE_V4),
    ]);
    for _ in 0..5 {
        assert_eq!(
            local_get(&fixture, vip()).0,
            "green",
            "the host's own address is a preview client"
        );
    }
    assert_eq!(fixture.get(), "blue", "a remote client is not");
    fixture.bluegreen.ok(&[
        "preview",
        "remove",
        &format!("{}/32", addr::SWITCH_CLIENT_SIDE_V4),
    ]);
    fixture.bluegreen.ok(&["switch", "green", "--weight", "50"]);
    let mut green = 0;
    for _ in 0..100 {
        if local_get(&fixture, vip()).0 == "green" {
            green += 1;
        }
    }
    assert!(
        (30..=70).contains(&green),
        "{green} of 100 local connections went to green at weight 50"
    );
}

#[test]
fn the_daemon_exports_local_connections_per_color() {
    let fixture = Fixture::new();
    let config = fixture.write_config(&config_text("", ""));
    let _daemon = fixture.start_daemon(&config, &["--metrics", METRICS]);
    let mut kept = inside(&fixture.topology.switch, || {
        KeepAlive::connect(vip(), TIMEOUT).expect("local keep-alive connect")
    });
    assert_eq!(kept.get().expect("request"), "blue");
    let metrics = scrape(&fixture);
    for (color, expected) in [("blue", 1.0), ("green", 0.0)] {
        assert_eq!(
            metric(
                &metrics,
                &format!("bluegreen_local_connections{{service=\"web\",color=\"{color}\"}}")
            ),
            expected,
            "{color}"
        );
    }
}

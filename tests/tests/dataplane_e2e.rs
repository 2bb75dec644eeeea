//! Real TCP and UDP exchanges, IPv4 and IPv6, through XDP + TC on veth, in
//! native and in generic XDP mode. Every sender has checksum offload off,
//! so a wrong checksum written by either program would be dropped by the
//! receiving kernel and the exchange would fail.

use std::net::SocketAddr;

use bluegreen_testbed::{
    fixture::{BACKEND_PORT, Fixture, TIMEOUT, green_backend},
    http,
    netns::{Topology, addr},
};

/// One TCP and one UDP service per family, all on the same backends.
fn config(mode: &str) -> String {
    let service = |name: &str, proto: &str, vip: &str, port: u16, blue: &str, green: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nproto = \"{proto}\"\nvip = \"{vip}:{port}\"\nblue = \"{blue}:{BACKEND_PORT}\"\ngreen = \"{green}:{BACKEND_PORT}\"\n\n"
        )
    };
    let v6 = |address: &str| format!("[{address}]");
    [
        format!("xdp_mode = \"{mode}\"\n\n"),
        service(
            "web4",
            "tcp",
            addr::VIP_V4,
            80,
            addr::BLUE_V4,
            addr::GREEN_V4,
        ),
        service(
            "dns4",
            "udp",
            addr::VIP_V4,
            53,
            addr::BLUE_V4,
            addr::GREEN_V4,
        ),
        service(
            "web6",
            "tcp",
            &v6(addr::VIP_V6),
            80,
            &v6(addr::BLUE_V6),
            &v6(addr::GREEN_V6),
        ),
        service(
            "dns6",
            "udp",
            &v6(addr::VIP_V6),
            53,
            &v6(addr::BLUE_V6),
            &v6(addr::GREEN_V6),
        ),
    ]
    .concat()
}

fn vip(address: &str, port: u16) -> SocketAddr {
    SocketAddr::new(address.parse().expect("VIP literal"), port)
}

/// Asks every service once from the client and returns the colors seen.
fn ask_all(topology: &Topology) -> Vec<(String, String)> {
    topology
        .client
        .spawn(|| {
            let tcp4 = http::get(vip(addr::VIP_V4, 80), TIMEOUT);
            let udp4 = http::udp_request(vip(addr::VIP_V4, 53), TIMEOUT);
            let tcp6 = http::get(vip(addr::VIP_V6, 80), TIMEOUT);
            let udp6 = http::udp_request(vip(addr::VIP_V6, 53), TIMEOUT);
            [
                ("web4", tcp4),
                ("dns4", udp4),
                ("web6", tcp6),
                ("dns6", udp6),
            ]
            .into_iter()
            .map(|(name, answer)| {
                let answer = answer.unwrap_or_else(|error| format!("error: {error}"));
                (name.to_owned(), answer)
            })
            .collect()
        })
        .join()
        .expect("client thread")
}

/// Every service answers `color`; a failure shows the services as the
/// maps hold them then, flows included, to tell a flow kept on its color
/// (a client port used twice) from a service not switched.
fn expect_all(fixture: &Fixture, color: &str) {
    let answers = ask_all(&fixture.topology);
    for (service, answer) in answers {
        if answer != color {
            panic!(
                "{service} answered {answer:?}, expected {color}; status: {:#}",
                fixture.bluegreen.status()
            );
        }
    }
}

fn exchange_in_mode(mode: &str, expected_mode: &str) {
    let fixture = Fixture::new();
    let config = fixture.write_config(&config(mode));
    fixture.up_with_config(&config);
    let status = fixture.bluegreen.status();
    assert_eq!(
        status["interfaces"][0]["xdp_mode"], expected_mode,
        "{status}"
    );
    expect_all(&fixture, "blue");

    for service in ["web4", "dns4", "web6", "dns6"] {
        fixture
            .bluegreen
            .ok(&["switch", "green", "--service", service]);
    }
    expect_all(&fixture, "green");

    let status = fixture.bluegreen.status();
    for service in status["interfaces"][0]["services"]
        .as_array()
        .expect("services")
    {
        for color in ["blue", "green"] {
            let counters = &service[color];
            assert_eq!(counters["new_flows"], 1, "{service}");
            assert!(
                counters["packets"].as_u64().expect("packets") >= 1,
                "{service}"
            );
        }
    }
    let passed = &status["interfaces"][0]["passed"];
    assert_eq!(passed["malformed"], 0, "{passed}");
}

#[test]
fn tcp_and_udp_over_both_families_in_native_mode() {
    exchange_in_mode("native", "native");
}

#[test]
fn tcp_and_udp_over_both_families_in_generic_mode() {
    exchange_in_mode("skb", "skb");
}

#[test]
fn backends_reached_directly_are_left_alone() {
    let fixture = Fixture::new();
    fixture.up();
    let answers = fixture
        .topology
        .client
        .spawn(move || {
            // Straight to green while blue is active: the reply keeps green's
            // address (the egress program must not touch it) or the client
            // would drop it and time out.
            let direct = http::get(green_backend(), TIMEOUT).map_err(|e| e.to_string());
            let through_vip = http::get(vip(addr::VIP_V4, 80), TIMEOUT).map_err(|e| e.to_string());
            (direct, through_vip)
        })
        .join()
        .expect("client thread");
    assert_eq!(answers, (Ok("green".to_owned()), Ok("blue".to_owned())));
}

//! Progressive delivery at packet level: weighted splits, preview clients
//! and health-checked shifts, end to end.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use bluegreen_testbed::{
    fixture::{Fixture, TIMEOUT, config_text, vip},
    http,
    netns::addr,
};

/// A second client address on the client host, for preview prefixes.
const TESTER_V4: &str = "10.200.1.3";

/// Both backends running and the standard service up; with `check`, from a
/// config with a fast HTTP health check.
fn fixture(check: bool) -> Fixture {
    let fixture = Fixture::new();
    if check {
        let config = fixture.write_config(&config_text(
            "",
            "\n[service.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = 100\ntimeout_ms = 50\nhealthy_threshold = 1\nunhealthy_threshold = 2\n",
        ));
        fixture.up_with_config(&config);
    } else {
        fixture.up();
    }
    fixture
}

/// `requests` new connections (the kernel picks varied source ports), as
/// (blue, green) counts; any failure fails the test.
fn split(fixture: &Fixture, requests: u64) -> (u64, u64) {
    let report = fixture
        .load(4, requests, Duration::from_secs(60))
        .finish(false);
    report.assert_all_served(requests);
    let count = |color: &str| report.served_by.get(color).copied().unwrap_or(0);
    (count("blue"), count("green"))
}

#[test]
fn a_weighted_split_sends_that_share_of_new_flows() {
    let fixture = fixture(false);
    let output = fixture.bluegreen.ok(&["switch", "green", "--weight", "10"]);
    assert!(
        output.contains("web: green gets 10% of new flows (blue keeps 90%)"),
        "{output}"
    );
    let status = fixture.service_status();
    assert_eq!(
        (status["active"].as_str(), status["weight"].as_u64()),
        (Some("blue"), Some(10))
    );

    let (_, green) = split(&fixture, 2000);
    let share = green as f64 / 2000.0;
    eprintln!(
        "weight 10: {green} of 2000 new connections reached green ({:.1} %)",
        share * 100.0
    );
    assert!(
        (0.07..=0.13).contains(&share),
        "{green} of 2000 reached green"
    );

    fixture.bluegreen.ok(&["switch", "green", "--weight", "0"]);
    assert_eq!(
        split(&fixture, 500),
        (500, 0),
        "weight 0 sends nothing to green"
    );

    let output = fixture
        .bluegreen
        .ok(&["switch", "green", "--weight", "100"]);
    assert!(output.contains("web: blue -> green"), "{output}");
    assert_eq!(
        split(&fixture, 500),
        (0, 500),
        "weight 100 is a full switch"
    );
    let status = fixture.service_status();
    assert_eq!(
        (status["active"].as_str(), status["weight"].as_u64()),
        (Some("green"), Some(0))
    );

    let run = fixture
        .bluegreen
        .run(&["switch", "green", "--weight", "20"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("green is already active"), "{run:?}");
    let run = fixture
        .bluegreen
        .run(&["switch", "blue", "--weight", "101"]);
    assert_eq!(run.code, 2, "{run:?}");
}

fn ask_from(fixture: &Fixture, source: &'static str) -> String {
    fixture
        .topology
        .client
        .spawn(move || {
            let source: IpAddr = source.parse().expect("literal");
            http::get_from(source, vip(), TIMEOUT).unwrap_or_else(|error| format!("error: {error}"))
        })
        .join()
        .expect("client thread")
}

#[test]
fn preview_clients_reach_the_idle_color() {
    let fixture = fixture(false);
    fixture
        .topology
        .client
        .ip(&["addr", "add", &format!("{TESTER_V4}/24"), "dev", "c0"]);
    let output = fixture
        .bluegreen
        .ok(&["preview", "add", &format!("{TESTER_V4}/32")]);
    assert!(
        output.contains("new flows from 10.200.1.3/32 go to the idle color"),
        "{output}"
    );
    for _ in 0..5 {
        assert_eq!(
            ask_from(&fixture, TESTER_V4),
            "green",
            "the tester previews green"
        );
        assert_eq!(
            ask_from(&fixture, addr::CLIENT_V4),
            "blue",
            "everyone else stays on blue"
        );
    }

    fixture.bluegreen.ok(&["switch", "green"]);
    assert_eq!(
        ask_from(&fixture, TESTER_V4),
        "blue",
        "after a switch the tester previews blue"
    );
    assert_eq!(ask_from(&fixture, addr::CLIENT_V4), "green");
    let listing = fixture.bluegreen.ok(&["preview", "list"]);
    assert!(
        listing.contains("web (preview clients reach blue):\n  10.200.1.3/32"),
        "{listing}"
    );
    assert_eq!(fixture.service_status()["preview"][0], "10.200.1.3/32");

    let run = fixture.bluegreen.run(&["preview", "add", "10.200.1.5/24"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("did you mean 10.200.1.0/24"), "{run:?}");
    let run = fixture.bluegreen.run(&["preview", "add", "fd00:bb::/64"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("is not of the VIP's family"), "{run:?}");

    fixture
        .bluegreen
        .ok(&["preview", "remove", &format!("{TESTER_V4}/32")]);
    assert_eq!(
        ask_from(&fixture, TESTER_V4),
        "green",
        "no longer previewing"
    );
    let run = fixture
        .bluegreen
        .run(&["preview", "remove", &format!("{TESTER_V4}/32")]);
    assert_eq!(run.code, 1, "{run:?}");
}

fn wait_for_weight(fixture: &Fixture, weight: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while fixture.service_status()["weight"].as_u64() != Some(weight) {
        assert!(Instant::now() < deadline, "weight never reached {weight}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_shift_rolls_back_when_the_new_color_fails_midway() {
    let mut fixture = fixture(true);
    let shift =
        fixture
            .bluegreen
            .spawn(&["shift", "green", "--steps", "10,50,100", "--interval", "3s"]);
    wait_for_weight(&fixture, 10);
    fixture.stop_green();
    let output = shift.wait_with_output().expect("shift exit");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("step 1/3: green at 10% of new flows"),
        "{stdout}"
    );
    assert!(!stdout.contains("step 2/3"), "{stdout}");
    assert!(stderr.contains("green turned unhealthy at 10%"), "{stderr}");
    assert!(
        stdout.contains("web: green 10% -> 0%, every new flow to blue"),
        "{stdout}"
    );
    let status = fixture.service_status();
    assert_eq!(
        (status["active"].as_str(), status["weight"].as_u64()),
        (Some("blue"), Some(0))
    );
    assert_eq!(split(&fixture, 200), (200, 0));
}

#[test]
fn a_shift_walks_its_steps_and_stops_where_interrupted() {
    let fixture = fixture(true);
    let output =
        fixture
            .bluegreen
            .ok(&["shift", "green", "--steps", "20,100", "--interval", "300ms"]);
    assert!(
        output.contains("step 2/2: green at 100% of new flows"),
        "{output}"
    );
    assert!(
        output.contains("shift complete, green is active"),
        "{output}"
    );
    assert_eq!(fixture.service_status()["active"], "green");

    let shift =
        fixture
            .bluegreen
            .spawn(&["shift", "blue", "--steps", "25,100", "--interval", "30s"]);
    wait_for_weight(&fixture, 25);
    // SAFETY: signalling the nsenter child we spawned; it passes SIGINT on.
    unsafe { libc::kill(shift.id() as i32, libc::SIGINT) };
    let output = shift.wait_with_output().expect("shift exit");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(130), "{stdout}");
    assert!(
        stdout.contains("interrupted after step 1/2; blue keeps 25% of new flows"),
        "{stdout}"
    );
    let status = fixture.service_status();
    assert_eq!(
        (status["active"].as_str(), status["weight"].as_u64()),
        (Some("green"), Some(25))
    );
}

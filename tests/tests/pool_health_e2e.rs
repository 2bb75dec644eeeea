//! Per-backend health under the daemon: a replica that dies leaves its
//! color's table (no new connection reaches it) without touching the
//! operator's weights or drains, and returns when it answers again.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bluegreen_testbed::{
    fixture::{Fixture, blue_backend, green_backend, replica, start_replica, vip},
    http::{Backend, LoadReport},
    metrics::{METRICS, metric, scrape},
    netns::SWITCH_IFACE,
};

const LOAD_DEADLINE: Duration = Duration::from_secs(60);
/// Far above the health window (2 probes 200 ms apart) and a probe's
/// timeout.
const HEALTH_DEADLINE: Duration = Duration::from_secs(15);

/// `status --json`'s `health` of a blue backend.
fn health(fixture: &Fixture, backend: SocketAddr) -> String {
    let status = fixture.service_status();
    status["blue"]["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("blue.backends in {status}"))
        .iter()
        .find(|entry| entry["addr"] == backend.to_string())
        .unwrap_or_else(|| panic!("{backend} in {status}"))["health"]
        .as_str()
        .unwrap_or_else(|| panic!("health of {backend} in {status}"))
        .to_owned()
}

/// Polls `status` until `backend`'s health is `wanted`; how long it took.
fn wait_health(fixture: &Fixture, backend: SocketAddr, wanted: &str) -> Duration {
    let started = Instant::now();
    loop {
        let seen = health(fixture, backend);
        if seen == wanted {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < HEALTH_DEADLINE,
            "{backend} still {seen}, not {wanted}, after {HEALTH_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn load(fixture: &Fixture, requests: u64) -> LoadReport {
    fixture.load(4, requests, LOAD_DEADLINE).finish(false)
}

#[test]
fn a_dead_replica_leaves_the_table_and_returns_when_healthy() {
    let fixture = Fixture::new();
    let mut replicas: Vec<Option<Backend>> = (1..=2)
        .map(|index| Some(start_replica(&fixture.topology.blue, "blue", index)))
        .collect();
    let blue = [0, 1, 2].map(|index| replica(blue_backend(), index));
    let config = fixture.write_config(&format!(
        "interface = \"{SWITCH_IFACE}\"\n\n[[service]]\nname = \"web\"\nvip = \"{}\"\nblue = [\"{}\", \"{}\", \"{}\"]\ngreen = \"{}\"\n\n[service.health]\nkind = \"tcp\"\ninterval_ms = 200\ntimeout_ms = 100\nhealthy_threshold = 2\nunhealthy_threshold = 2\n",
        vip(),
        blue[0],
        blue[1],
        blue[2],
        green_backend()
    ));
    let _daemon = fixture.start_daemon(&config, &["--metrics", METRICS]);
    let before = load(&fixture, 300);
    before.assert_all_served(300);
    assert!(before.served_by.contains_key("blue-3"), "{before:?}");

    // Kill blue-3 under load; connections made before the daemon notices
    // may fail.
    let during = fixture.load(2, 100_000, LOAD_DEADLINE);
    std::thread::sleep(Duration::from_millis(300));
    replicas[1] = None;
    let excluded_after = wait_health(&fixture, blue[2], "unhealthy");
    let during = during.finish(true);
    eprintln!(
        "blue-3 excluded {excluded_after:?} after it died; meanwhile {} served, {} failed",
        during.succeeded(),
        during.failures.len()
    );

    let after = load(&fixture, 300);
    eprintln!(
        "300 new connections with blue-3 dead: {:?}",
        after.served_by
    );
    after.assert_all_served(300);
    assert_eq!(after.served_by.get("blue-3"), None, "{after:?}");
    // The operator's pool is as it was: same weight, not drained.
    let status = fixture.service_status();
    assert_eq!(status["blue"]["backends"][2]["weight"], 1, "{status}");
    assert_eq!(status["blue"]["backends"][2]["state"], "active", "{status}");

    let metrics = scrape(&fixture);
    let series = |name: &str, backend: SocketAddr| {
        format!("{name}{{service=\"web\",color=\"blue\",backend=\"{backend}\"}}")
    };
    assert_eq!(
        metric(&metrics, &series("bluegreen_backend_up", blue[2])),
        0.0
    );
    assert_eq!(
        metric(&metrics, &series("bluegreen_backend_up", blue[0])),
        1.0
    );
    assert!(metrics.contains_key(&series("bluegreen_backend_active_flows", blue[2])));

    // An operator's change to the pool keeps the exclusion.
    let other = blue[1].to_string();
    fixture.bluegreen.ok(&["backend", "drain", "blue", &other]);
    fixture
        .bluegreen
        .ok(&["backend", "undrain", "blue", &other]);
    assert_eq!(health(&fixture, blue[2]), "unhealthy");
    let changed = load(&fixture, 150);
    changed.assert_all_served(150);
    assert_eq!(changed.served_by.get("blue-3"), None, "{changed:?}");

    replicas[1] = Some(start_replica(&fixture.topology.blue, "blue", 2));
    let back_after = wait_health(&fixture, blue[2], "unknown");
    eprintln!("blue-3 back in the table {back_after:?} after it restarted");
    let returned = load(&fixture, 300);
    eprintln!(
        "300 new connections with blue-3 back: {:?}",
        returned.served_by
    );
    returned.assert_all_served(300);
    assert!(
        returned.served_by.get("blue-3").copied().unwrap_or(0) > 0,
        "{returned:?}"
    );
}

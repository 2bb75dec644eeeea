//! Load-aware selection under the daemon: of two blue replicas, the one
//! whose `/metrics` reports a deep queue gets few new connections, and the
//! split follows when the loads swap; a scrape that fails keeps the
//! weights. The operator's weights are untouched throughout.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bluegreen_testbed::{
    fixture::{Fixture, blue_backend, green_backend, replica, start_replica, vip},
    http::LoadReport,
    metrics::{METRICS, metric, scrape},
    netns::SWITCH_IFACE,
};

const LOAD_DEADLINE: Duration = Duration::from_secs(60);
/// Far above the load interval (200 ms) and a scrape's timeout.
const WEIGHT_DEADLINE: Duration = Duration::from_secs(15);
const CONNECTIONS: u64 = 400;
const IDLE: &str =
    "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 0\n";
const QUEUED: &str =
    "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 40\n";

fn series(name: &str, backend: SocketAddr) -> String {
    format!("{name}{{service=\"web\",color=\"blue\",backend=\"{backend}\"}}")
}

/// Scrapes the daemon until `done` holds for its samples; returns them.
fn wait_metrics(
    fixture: &Fixture,
    what: &str,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let started = Instant::now();
    loop {
        let metrics = scrape(fixture);
        if done(&metrics) {
            eprintln!("{what} after {:?}", started.elapsed());
            return metrics;
        }
        assert!(
            started.elapsed() < WEIGHT_DEADLINE,
            "not {what} after {WEIGHT_DEADLINE:?}: {metrics:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the daemon weighs `idle` fully and `queued` at the floor.
fn wait_weights(fixture: &Fixture, idle: SocketAddr, queued: SocketAddr) {
    let weight = |metrics: &BTreeMap<String, f64>, backend| {
        metrics
            .get(&series("bluegreen_backend_effective_weight", backend))
            .copied()
    };
    wait_metrics(
        fixture,
        &format!("{idle} weighed 10, {queued} 1"),
        |metrics| weight(metrics, idle) == Some(10.0) && weight(metrics, queued) == Some(1.0),
    );
}

fn split(fixture: &Fixture) -> LoadReport {
    let report = fixture.load(4, CONNECTIONS, LOAD_DEADLINE).finish(false);
    report.assert_all_served(CONNECTIONS);
    eprintln!("{CONNECTIONS} new connections: {:?}", report.served_by);
    report
}

fn assert_at_most_a_quarter(report: &LoadReport, loaded: &str) {
    let got = report.served_by.get(loaded).copied().unwrap_or(0);
    assert!(
        got <= CONNECTIONS / 4,
        "{loaded} (queue 40) got {got} of {CONNECTIONS}: {report:?}"
    );
    assert!(got > 0, "{loaded} is at the floor, not out: {report:?}");
}

#[test]
fn new_connections_avoid_the_replica_with_the_deeper_queue() {
    let fixture = Fixture::new();
    let replicas = [1, 2].map(|index| start_replica(&fixture.topology.blue, "blue", index));
    let blue = [1, 2].map(|index| replica(blue_backend(), index));
    replicas[0].set_metrics(IDLE);
    replicas[1].set_metrics(QUEUED);
    let config = fixture.write_config(&format!(
        "interface = \"{SWITCH_IFACE}\"\n\n[[service]]\nname = \"web\"\nvip = \"{}\"\nblue = [\"{}\", \"{}\"]\ngreen = \"{}\"\n\n[service.load]\ninterval_ms = 200\n",
        vip(),
        blue[0],
        blue[1],
        green_backend()
    ));
    let _daemon = fixture.start_daemon(&config, &["--metrics", METRICS]);

    wait_weights(&fixture, blue[0], blue[1]);
    let metrics = scrape(&fixture);
    assert_eq!(
        metric(&metrics, &series("bluegreen_backend_queue_depth", blue[1])),
        40.0
    );
    let report = split(&fixture);
    assert_at_most_a_quarter(&report, "blue-3");
    // The operator's weights are what the config says; the daemon's load
    // weights show beside them, and the backends' counters agree between
    // `status` and the metrics (no traffic in between).
    let status = fixture.service_status();
    let metrics = scrape(&fixture);
    for (index, (backend, body)) in blue.iter().zip(["blue-2", "blue-3"]).enumerate() {
        let shown = &status["blue"]["backends"][index];
        assert_eq!(shown["weight"], 1, "{status}");
        assert_eq!(shown["load_weight"], [10, 1][index], "{status}");
        let new_flows = shown["new_flows"].as_u64().expect("new_flows");
        assert!(
            new_flows >= report.served_by.get(body).copied().unwrap_or(0),
            "{body}: {shown} for {report:?}"
        );
        assert_eq!(
            metric(
                &metrics,
                &series("bluegreen_backend_new_flows_total", *backend)
            ),
            new_flows as f64
        );
        assert_eq!(
            metric(
                &metrics,
                &series("bluegreen_backend_packets_total", *backend)
            ),
            shown["packets"].as_u64().expect("packets") as f64
        );
    }

    replicas[0].set_metrics(QUEUED);
    replicas[1].set_metrics(IDLE);
    wait_weights(&fixture, blue[1], blue[0]);
    assert_at_most_a_quarter(&split(&fixture), "blue-2");

    // A backend whose metrics stop making sense keeps its weight.
    replicas[0].set_metrics("garbage\n");
    let errors = series("bluegreen_backend_load_scrape_errors_total", blue[0]);
    let metrics = wait_metrics(&fixture, "a failed scrape counted", |metrics| {
        metrics.get(&errors).is_some_and(|count| *count >= 2.0)
    });
    assert_eq!(
        metric(
            &metrics,
            &series("bluegreen_backend_effective_weight", blue[0])
        ),
        1.0,
        "{metrics:#?}"
    );
    assert_at_most_a_quarter(&split(&fixture), "blue-2");
    let unreadable = |fixture: &Fixture| {
        fixture.service_status()["blue"]["backends"][0]["load_unreadable"] == true
    };
    wait_status(&fixture, "status shows blue-2's load unreadable", || {
        unreadable(&fixture)
    });
    let human = fixture.bluegreen.ok(&["status"]);
    assert!(human.contains("load unreadable: weight kept"), "{human}");

    replicas[0].set_metrics(QUEUED);
    wait_status(&fixture, "status shows blue-2's load read again", || {
        !unreadable(&fixture)
    });
}

/// Polls `status` until `done` holds, at most [`WEIGHT_DEADLINE`].
fn wait_status(fixture: &Fixture, what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < WEIGHT_DEADLINE,
            "not {what} after {WEIGHT_DEADLINE:?}: {}",
            fixture.service_status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

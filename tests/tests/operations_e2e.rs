//! Health-checked switching, automatic rollback and metrics, end to end.

use std::time::{Duration, Instant};

use bluegreen_testbed::{
    fixture::{Daemon, Fixture, config_text},
    metrics::{METRICS, metric, scrape},
};

const INTERVAL_MS: u64 = 200;
const UNHEALTHY_THRESHOLD: u64 = 2;

fn config(auto_rollback: bool) -> String {
    let rollback = if auto_rollback {
        "\n[service.auto_rollback]\nwindow_secs = 60\nmode = \"graceful\"\n"
    } else {
        ""
    };
    config_text(
        "",
        &format!(
            "\n[service.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 100\nhealthy_threshold = 1\nunhealthy_threshold = {UNHEALTHY_THRESHOLD}\n{rollback}"
        ),
    )
}

/// The daemon with [`config`] and metrics on [`METRICS`].
fn start_daemon(fixture: &Fixture, auto_rollback: bool) -> Daemon {
    let config = fixture.write_config(&config(auto_rollback));
    fixture.start_daemon(&config, &[&format!("--metrics={METRICS}")])
}

#[test]
fn a_switch_to_an_unhealthy_color_is_refused() {
    // No green backend: its health check fails.
    let mut fixture = Fixture::blue_only();
    fixture.up_with(&["--check", "http:/healthz"]);
    let run = fixture.bluegreen.run(&["switch", "green"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("service web: green (10.200.3.2:8080) failed its health check (HTTP GET http://10.200.3.2:8080/healthz"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("traffic stays on blue: fix green or pass --skip-check"),
        "{run:?}"
    );
    assert_eq!(fixture.bluegreen.active(), "blue");
    assert_eq!(fixture.get(), "blue");

    fixture.start_green();
    let output = fixture.bluegreen.ok(&["switch", "green"]);
    assert!(output.contains("green passed its health check"), "{output}");
    assert_eq!(fixture.get(), "green");
}

#[test]
fn a_rollback_to_an_unhealthy_color_is_refused_unless_skipped() {
    let fixture = Fixture::new();
    fixture.up_with(&["--check", "http:/healthz"]);
    fixture.bluegreen.ok(&["switch", "green"]);
    // Nothing listens on this port of blue's host: blue now fails its check.
    fixture
        .bluegreen
        .ok(&["set-backend", "blue", "10.200.2.2:9999"]);

    let run = fixture.bluegreen.run(&["rollback"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "service web: blue (10.200.2.2:9999) failed its health check (HTTP GET http://10.200.2.2:9999/healthz"
        ),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("traffic stays on green: fix blue or pass --skip-check"),
        "{run:?}"
    );
    assert_eq!(fixture.bluegreen.active(), "green");
    assert_eq!(fixture.get(), "green");

    let output = fixture.bluegreen.ok(&["rollback", "--skip-check"]);
    assert!(output.contains("green -> blue"), "{output}");
    assert_eq!(fixture.bluegreen.active(), "blue");
}

#[test]
fn the_daemon_rolls_back_when_the_new_color_dies() {
    let mut fixture = Fixture::new();
    let _daemon = start_daemon(&fixture, true);
    fixture.bluegreen.ok(&["switch", "green"]);
    assert_eq!(fixture.get(), "green");
    // Let the daemon see green healthy before it dies.
    std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS));

    fixture.stop_green();
    let died = Instant::now();
    while fixture.bluegreen.active() != "blue" {
        assert!(
            died.elapsed() < Duration::from_secs(10),
            "no rollback within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = died.elapsed();
    // Detection needs `threshold` failed probes one interval apart; allow
    // one more interval for where the first probe falls, and the switch.
    let bound = Duration::from_millis(INTERVAL_MS * (UNHEALTHY_THRESHOLD + 1) + 300);
    assert!(took <= bound, "rolled back after {took:?}, bound {bound:?}");
    eprintln!(
        "rolled back {took:?} after green died (interval {INTERVAL_MS} ms x threshold {UNHEALTHY_THRESHOLD})"
    );

    let report = fixture.load(4, 500, Duration::from_secs(30)).finish(false);
    report.assert_all_served(500);
    assert_eq!(report.served_by.get("blue"), Some(&500), "{report:?}");

    let metrics = scrape(&fixture);
    assert_eq!(
        metric(
            &metrics,
            "bluegreen_rollbacks_total{service=\"web\",cause=\"unhealthy\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "bluegreen_switches_total{service=\"web\",cause=\"auto_rollback\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "bluegreen_switches_total{service=\"web\",cause=\"operator\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "bluegreen_backend_healthy{service=\"web\",color=\"green\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(
            &metrics,
            "bluegreen_backend_healthy{service=\"web\",color=\"blue\"}"
        ),
        1.0
    );
}

#[test]
fn metrics_count_the_traffic_sent() {
    let fixture = Fixture::new();
    let _daemon = start_daemon(&fixture, false);

    let report = fixture.load(2, 25, Duration::from_secs(30)).finish(false);
    assert_eq!(report.served_by.get("blue"), Some(&25), "{report:?}");
    fixture.bluegreen.ok(&["switch", "green"]);
    let report = fixture.load(2, 10, Duration::from_secs(30)).finish(false);
    assert_eq!(report.served_by.get("green"), Some(&10), "{report:?}");

    // A connection's last packets may still arrive: the scrape must fall
    // between two status reads.
    let before = fixture.service_status();
    let metrics = scrape(&fixture);
    let after = fixture.service_status();
    for (color, requests) in [("blue", 25.0), ("green", 10.0)] {
        let labels = format!("{{service=\"web\",color=\"{color}\"}}");
        assert_eq!(
            metric(&metrics, &format!("bluegreen_new_flows_total{labels}")),
            requests
        );
        for (name, field) in [("packets", "packets"), ("bytes", "bytes")] {
            let scraped = metric(&metrics, &format!("bluegreen_{name}_total{labels}"));
            let read = |status: &serde_json::Value| status[color][field].as_f64().expect("counter");
            assert!(
                (read(&before)..=read(&after)).contains(&scraped),
                "{name} for {color}: scraped {scraped}, status {} then {}",
                read(&before),
                read(&after)
            );
        }
        // A request on a new connection is at least SYN, ACK, request, FIN.
        assert!(metric(&metrics, &format!("bluegreen_packets_total{labels}")) >= 4.0 * requests);
        assert_eq!(
            metric(&metrics, &format!("bluegreen_active{labels}")),
            if color == "green" { 1.0 } else { 0.0 }
        );
    }
    let switched_at = metric(
        &metrics,
        "bluegreen_last_switch_timestamp_seconds{service=\"web\"}",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        (now - switched_at).abs() < 60.0,
        "last switch {switched_at}, now {now}"
    );
    assert_eq!(
        metric(
            &metrics,
            "bluegreen_passed_packets_total{interface=\"s0\",reason=\"malformed\"}"
        ),
        0.0
    );
}

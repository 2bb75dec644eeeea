//! Shadowing run by the daemon, and read by the release gates: `shadow
//! start` hands a run to the daemon (refused without one), the metrics show
//! both colors side by side, `shadow stop` ends it; a `source = "shadow"`
//! analysis refuses a switch while no run has measured the idle color, then
//! judges it on the figures of the last run.

use std::time::{Duration, Instant};

use bluegreen_testbed::{
    cli::CliRun,
    fixture::{Fixture, config_text},
    metrics::{metric, scrape, wait_for_endpoint},
    shadow::{assert_ends_well, shadow_briefly},
};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

fn shadow_status(fixture: &Fixture) -> serde_json::Value {
    let status = json(&fixture.bluegreen.ok(&["shadow", "status", "web", "--json"]));
    status["shadows"][0].clone()
}

/// Waits (at most 10 s) until the run has compared `requests` requests.
fn wait_for_pairs(fixture: &Fixture, requests: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let record = shadow_status(fixture);
        if record["report"]["comparison"]["paired"].as_u64() >= Some(requests) {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "{requests} requests not compared within 10 s: {record:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn refused(run: &CliRun, what: &str, text: &str) {
    assert_ne!(run.code, 0, "{what}: {}", run.stdout);
    assert!(
        run.stderr.contains(text),
        "{what}: expected {text:?} in {}",
        run.stderr
    );
}

#[test]
fn the_daemon_shadows_on_order_and_exports_both_colors_side_by_side() {
    let fixture = Fixture::new();
    let config = fixture.write_config(&config_text("", ""));
    fixture.up_with_config(&config);
    refused(
        &fixture
            .bluegreen
            .run(&["shadow", "start", "web", "--sample", "100%"]),
        "shadow start without a daemon",
        "no daemon runs on",
    );

    let _daemon = fixture.start_daemon(&config, &["--metrics"]);
    wait_for_endpoint(&fixture);
    let started = json(
        &fixture
            .bluegreen
            .ok(&["shadow", "start", "web", "--sample", "100%", "--json"]),
    );
    assert_eq!(started["owner"]["daemon"], true, "{started:#}");
    assert_eq!(
        (started["live"].as_str(), started["idle"].as_str()),
        (Some("blue"), Some("green"))
    );
    refused(
        &fixture.bluegreen.run(&["shadow", "start", "web"]),
        "a second start",
        "it is being shadowed already",
    );
    let green_before = fixture
        .backend("green")
        .expect("running")
        .served
        .load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..30 {
        assert_eq!(
            fixture.get(),
            "blue",
            "clients only ever see the live color"
        );
    }
    let record = wait_for_pairs(&fixture, 30);
    let comparison = &record["report"]["comparison"];
    assert_eq!(
        (
            comparison["live"]["status_2xx"].as_u64(),
            comparison["shadow"]["status_2xx"].as_u64(),
            comparison["mismatched_status"].as_u64(),
        ),
        (Some(30), Some(30), Some(0)),
        "{record:#}"
    );
    let green_served = fixture
        .backend("green")
        .expect("running")
        .served
        .load(std::sync::atomic::Ordering::Relaxed)
        - green_before;
    assert_eq!(green_served, 30, "each request replayed to green once");

    let metrics = scrape(&fixture);
    assert_eq!(
        metric(&metrics, "bluegreen_shadow_running{service=\"web\"}"),
        1.0
    );
    for (color, role) in [("blue", "live"), ("green", "idle")] {
        assert_eq!(
            metric(
                &metrics,
                &format!(
                    "bluegreen_shadow_requests{{service=\"web\",color=\"{color}\",role=\"{role}\"}}"
                )
            ),
            30.0,
            "{color} ({role})"
        );
        let ttfb = metric(
            &metrics,
            &format!(
                "bluegreen_shadow_ttfb_seconds{{service=\"web\",color=\"{color}\",role=\"{role}\",quantile=\"0.5\"}}"
            ),
        );
        assert!((0.0..1.0).contains(&ttfb), "{color}: {ttfb} s");
    }

    let stopped = json(&fixture.bluegreen.ok(&["shadow", "stop", "web", "--json"]));
    assert_eq!(
        stopped["stopped"]["reason"]["reason"], "requested",
        "{stopped:#}"
    );
    assert_eq!(
        metric(
            &scrape(&fixture),
            "bluegreen_shadow_running{service=\"web\"}"
        ),
        0.0
    );
    for _ in 0..5 {
        assert_eq!(fixture.get(), "blue");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        fixture
            .backend("green")
            .expect("running")
            .served
            .load(std::sync::atomic::Ordering::Relaxed)
            - green_before,
        30,
        "nothing replayed once stopped"
    );
}

/// A gate on the idle color's time to first byte in the last shadowing
/// run, below `max_seconds`.
fn shadow_gate(max_seconds: f64) -> String {
    format!(
        "\n[[service.analysis]]\nname = \"shadow-ttfb\"\nsource = \"shadow\"\nfigure = \"ttfb_p50\"\nmax = {max_seconds}\n"
    )
}

#[test]
fn a_shadow_analysis_judges_the_idle_color_on_its_replayed_answers() {
    let fixture = Fixture::new();
    // No real answer comes within a microsecond: the figure is judged.
    let strict = fixture.write_config(&config_text("", &shadow_gate(0.000_001)));
    fixture.up_with_config(&strict);
    refused(
        &fixture.bluegreen.run(&["switch", "green"]),
        "a gate with no shadowing run",
        "has not been shadowed",
    );
    assert_eq!(fixture.get(), "blue");

    shadow_briefly(&fixture, "3s", 20);
    let record = shadow_status(&fixture);
    assert_eq!(
        record["stopped"]["reason"]["reason"], "duration_ended",
        "{record:#}"
    );
    assert_eq!(record["report"]["comparison"]["shadow"]["requests"], 20);

    refused(
        &fixture.bluegreen.run(&["switch", "green"]),
        "a green slower than the gate allows",
        "shadow-ttfb: green",
    );
    assert_eq!(fixture.get(), "blue");

    let lenient = fixture.write_config(&config_text("", &shadow_gate(5.0)));
    fixture.up_with_config(&lenient);
    let switched = fixture.bluegreen.ok(&["switch", "green"]);
    assert!(
        switched.contains("green passed its analysis gate"),
        "{switched}"
    );
    assert_eq!(fixture.get(), "green");
}

#[test]
fn a_run_stops_when_the_idle_color_fails_its_health_check() {
    let mut fixture = Fixture::new();
    let config = fixture.write_config(&config_text(
        "",
        "\n[service.health]\nkind = \"tcp\"\ninterval_ms = 200\ntimeout_ms = 200\nhealthy_threshold = 1\nunhealthy_threshold = 2\n",
    ));
    fixture.up_with_config(&config);
    let mut run = fixture
        .bluegreen
        .spawn(&["shadow", "run", "web", "--sample", "100%"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fixture.get(), "blue");
    let stopped_green = Instant::now();
    fixture.stop_green();
    assert_ends_well(&mut run, Duration::from_secs(20));
    let record = shadow_status(&fixture);
    assert_eq!(
        record["stopped"]["reason"]["reason"], "idle_unhealthy",
        "{record:#}"
    );
    assert!(
        stopped_green.elapsed() < Duration::from_secs(5),
        "two failed probes 200 ms apart, then the next look: {:?}",
        stopped_green.elapsed()
    );
    assert_eq!(fixture.get(), "blue", "live traffic never noticed");
}

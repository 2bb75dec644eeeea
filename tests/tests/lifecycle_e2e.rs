//! The idle color's lifecycle through the real binary, with a real process
//! as green's backend, started and killed by the configured commands (a
//! script that also writes what it did to a marker file): a switch to a
//! stopped color starts it first with no failed request, the daemon stops
//! the idle color only once its window has passed and it has drained, a
//! rollback after that needs --start, a held color stays up, a start that
//! fails or hangs leaves traffic where it was, and a stop interrupted by a
//! crash of the daemon is resumed.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use bluegreen_testbed::{
    fixture::Fixture,
    lifecycle::{self, LifecycleScript},
    metrics::{METRICS, scrape, wait_for_endpoint},
};

/// Blue's backend running in the test, green's not started, and service
/// "web" up with the script's lifecycle and `settings` (TOML lines); the
/// config's path too, for a daemon.
fn up_with_lifecycle(settings: &str) -> (Fixture, LifecycleScript, String) {
    lifecycle::up(Path::new(env!("CARGO_BIN_EXE_backend")), settings)
}

fn lifecycle_of(fixture: &Fixture, color: &str) -> serde_json::Value {
    fixture.service_status()[color]["lifecycle"].clone()
}

fn wait_until(what: &str, within: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_switch_to_a_stopped_color_is_refused_unless_it_starts_it_with_no_failed_request() {
    let (fixture, script, _) = up_with_lifecycle("");
    // Running as far as bluegreen knows, but nothing answers: a start runs
    // the command.
    assert_eq!(lifecycle_of(&fixture, "green")["state"], "running");
    let started = fixture.bluegreen.ok(&["start", "green"]);
    assert!(started.contains("green started in"), "{started}");
    assert!(script.green_runs());
    fixture.bluegreen.ok(&["stop", "green"]);
    assert!(
        !script.green_runs(),
        "the stop command killed green's backend"
    );
    assert_eq!(lifecycle_of(&fixture, "green")["state"], "stopped");

    let run = fixture.bluegreen.run(&["switch", "green"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("green is stopped since")
            && run.stderr.contains("bluegreen start green --service web"),
        "{}",
        run.stderr
    );

    let load = fixture.load(2, 100_000, Duration::from_secs(60));
    let started = Instant::now();
    let switched = fixture.bluegreen.ok(&["switch", "green", "--start"]);
    let took = started.elapsed();
    assert!(switched.contains("green started in"), "{switched}");
    assert!(
        script.green_runs(),
        "the start command started green's backend"
    );
    std::thread::sleep(Duration::from_millis(300));
    let report = load.finish(true);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(
        report
            .served_by
            .get("green")
            .is_some_and(|count| *count > 0),
        "{report:?}"
    );
    assert_eq!(fixture.get(), "green");
    assert_eq!(
        script.actions(),
        ["start green", "stop green", "start green"]
    );
    let green = lifecycle_of(&fixture, "green");
    assert_eq!(
        (green["state"].as_str(), green["starts"].as_u64()),
        (Some("running"), Some(2)),
        "{green}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
}

#[test]
fn the_daemon_stops_the_idle_color_only_after_its_window_and_its_drain() {
    let (fixture, script, config) = up_with_lifecycle("scale_down_after_secs = 3\n");
    fixture.bluegreen.ok(&["stop", "green"]);
    fixture.bluegreen.ok(&["start", "green"]);
    let _daemon = fixture.start_daemon(&config, &[&format!("--metrics={METRICS}")]);
    wait_for_endpoint(&fixture);

    // An open connection on blue holds its stop up past the window.
    let mut kept = fixture.keep_alive();
    assert_eq!(kept.get().expect("first request"), "blue");
    let switched_at = Instant::now();
    fixture.bluegreen.ok(&["switch", "green"]);
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !script.actions().contains(&"stop blue".to_owned()),
        "{:?}",
        script.actions()
    );
    let status = fixture.service_status();
    assert_eq!(status["blue"]["lifecycle"]["state"], "draining", "{status}");
    assert_eq!(
        (
            status["next_action"]["action"].as_str(),
            status["next_action"]["flows"].as_u64()
        ),
        (Some("draining"), Some(1)),
        "{status}"
    );
    assert_eq!(kept.get().expect("the kept connection still works"), "blue");

    drop(kept);
    wait_until("blue stopped once drained", Duration::from_secs(25), || {
        lifecycle_of(&fixture, "blue")["state"] == "stopped"
    });
    assert!(switched_at.elapsed() >= Duration::from_secs(5));
    assert_eq!(
        script.actions().last().map(String::as_str),
        Some("stop blue")
    );
    let metrics = scrape(&fixture);
    for (series, value) in [
        (
            "bluegreen_lifecycle_state{service=\"web\",color=\"blue\",state=\"stopped\"}",
            1.0,
        ),
        (
            "bluegreen_lifecycle_state{service=\"web\",color=\"blue\",state=\"running\"}",
            0.0,
        ),
        (
            "bluegreen_lifecycle_actions_total{service=\"web\",color=\"blue\",action=\"stop\"}",
            1.0,
        ),
        (
            "bluegreen_lifecycle_actions_total{service=\"web\",color=\"green\",action=\"start\"}",
            1.0,
        ),
    ] {
        assert_eq!(metrics.get(series), Some(&value), "{series}: {metrics:?}");
    }

    // After the window, a rollback needs blue started again.
    let run = fixture.bluegreen.run(&["rollback"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("blue is stopped since"),
        "{}",
        run.stderr
    );
    assert_eq!(fixture.get(), "green");
    let rolled_back = fixture.bluegreen.ok(&["rollback", "--start"]);
    assert!(rolled_back.contains("blue started in"), "{rolled_back}");
    assert_eq!(fixture.get(), "blue");

    // A held green stays up past its window; released, it is stopped.
    let rolled_back_at = Instant::now();
    fixture.bluegreen.ok(&["hold", "green"]);
    for (args, refusal) in [
        (["stop", "green"], "it is held"),
        (["start", "blue"], "blue is the active color"),
    ] {
        let run = fixture.bluegreen.run(&args);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(run.stderr.contains(refusal), "{args:?}: {}", run.stderr);
    }
    std::thread::sleep(Duration::from_secs(5));
    assert!(script.green_runs(), "held: {:?}", script.actions());
    assert_eq!(lifecycle_of(&fixture, "green")["held"], true);
    fixture.bluegreen.ok(&["release", "green"]);
    wait_until(
        "green stopped once released",
        Duration::from_secs(10),
        || !script.green_runs() && lifecycle_of(&fixture, "green")["state"] == "stopped",
    );
    assert!(rolled_back_at.elapsed() >= Duration::from_secs(3));
    assert_eq!(fixture.get(), "blue");
}

#[test]
fn a_start_that_fails_or_hangs_leaves_traffic_where_it_was() {
    let (fixture, script, _) = up_with_lifecycle("start_timeout_secs = 1\n");
    fixture.bluegreen.ok(&["stop", "green"]);

    script.set("fail", true);
    let run = fixture.bluegreen.run(&["switch", "green", "--start"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("start of green failed") && run.stderr.contains("exit status 1"),
        "{}",
        run.stderr
    );
    assert_eq!(fixture.get(), "blue");
    let green = lifecycle_of(&fixture, "green");
    assert_eq!(green["state"], "stopped", "{green}");
    assert!(
        green["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("exit status 1")),
        "{green}"
    );

    script.set("fail", false);
    script.set("hang", true);
    let started = Instant::now();
    let run = fixture.bluegreen.run(&["switch", "green", "--start"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("killed at its 1 s timeout"),
        "{}",
        run.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(fixture.get(), "blue");
    assert_eq!(fixture.bluegreen.active(), "blue");
}

#[test]
fn a_stop_interrupted_by_a_crash_of_the_daemon_is_resumed() {
    let (fixture, script, config) =
        up_with_lifecycle("scale_down_after_secs = 1\nstop_timeout_secs = 120\n");
    fixture.bluegreen.ok(&["stop", "green"]);
    fixture.bluegreen.ok(&["switch", "green", "--start"]);

    script.set("hang", true);
    let daemon = fixture.start_daemon(&config, &[]);
    wait_until("the daemon stopping blue", Duration::from_secs(15), || {
        lifecycle_of(&fixture, "blue")["state"] == "stopping"
    });
    daemon.kill();
    script.set("hang", false);

    let _daemon = fixture.start_daemon(&config, &[]);
    wait_until("blue's stop resumed", Duration::from_secs(15), || {
        lifecycle_of(&fixture, "blue")["state"] == "stopped"
    });
    let stops = script
        .actions()
        .iter()
        .filter(|action| *action == "stop blue")
        .count();
    assert_eq!(stops, 2, "{:?}", script.actions());
    assert_eq!(fixture.get(), "green");
}

#[test]
fn a_rollback_inside_the_window_is_instant_and_starts_nothing() {
    let (fixture, script, config) = up_with_lifecycle("scale_down_after_secs = 30\n");
    fixture.bluegreen.ok(&["start", "green"]);
    let _daemon = fixture.start_daemon(&config, &[]);
    fixture.bluegreen.ok(&["switch", "green"]);
    assert_eq!(fixture.get(), "green");
    let next = &fixture.service_status()["next_action"];
    assert_eq!(
        (next["action"].as_str(), next["color"].as_str()),
        (Some("stop_at"), Some("blue")),
        "{next}"
    );

    let started = Instant::now();
    fixture.bluegreen.ok(&["rollback"]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fixture.get(), "blue");
    assert_eq!(
        script.actions(),
        ["start green"],
        "nothing stopped or started"
    );
}

//! What bluegreen counts and tells: switches and rollbacks counted by
//! whoever makes them, health reported only while it is checked, one daemon
//! per interface, and the messages of `up`, `status` and failed commands.

use std::{
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use bluegreen::{
    endpoint::Color,
    host::{Host, SwitchOptions, SwitchTarget},
    pinned::PinLayout,
};
use bluegreen_common::{BackendKey, ChangeCause, Endpoint, map_names};
use bluegreen_testbed::{
    cli::binary,
    fixture::{Fixture, blue_backend, config_text, green_backend, vip},
    metrics::{METRICS, metric, scrape, wait_for_endpoint},
    netns::SWITCH_IFACE,
    packet::{PROTO_TCP, PROTO_UDP},
};
use serde_json::{Value, json};

/// A health check fast enough for the tests: two failed probes 100 ms apart
/// make a color unhealthy.
const FAST_CHECK: &str = "\n[service.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = 100\ntimeout_ms = 50\nhealthy_threshold = 1\nunhealthy_threshold = 2\n";

/// Waits (at most 10 s) until `condition` holds; panics saying `what` did
/// not happen.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The counts `status --json` shows for service number `index`.
fn counts(fixture: &Fixture, index: usize) -> (Value, Value) {
    let service = &fixture.bluegreen.status()["interfaces"][0]["services"][index];
    (service["switches"].clone(), service["rollbacks"].clone())
}

fn switches(operator: u64, shift: u64, auto_rollback: u64) -> Value {
    json!({"operator": operator, "shift": shift, "auto_rollback": auto_rollback, "fleet": 0, "analysis": 0})
}

fn rollbacks(operator: u64, shift: u64, unhealthy: u64) -> Value {
    json!({"operator": operator, "shift": shift, "unhealthy": unhealthy, "fleet": 0, "analysis": 0})
}

#[test]
fn every_switch_and_rollback_is_counted_whoever_makes_it() {
    // No health check: the daemon has nothing to poll, yet it must count.
    let fixture = Fixture::new();
    fixture.up();
    // Back and forth faster than any poll could see.
    for color in ["green", "blue", "green"] {
        fixture.bluegreen.ok(&["switch", color]);
    }
    fixture.bluegreen.ok(&["rollback"]);
    // A weight is no switch; undoing it is a rollback.
    fixture.bluegreen.ok(&["switch", "green", "--weight", "10"]);
    fixture.bluegreen.ok(&["rollback"]);
    fixture
        .bluegreen
        .ok(&["shift", "green", "--steps", "50,100", "--interval", "100ms"]);
    assert_eq!(counts(&fixture, 0), (switches(4, 1, 0), rollbacks(2, 0, 0)));

    let config = fixture.write_config(&config_text("", ""));
    // The address as its own argument, the way most tools take one.
    let _daemon = fixture.start_daemon(&config, &["--metrics", METRICS]);
    fixture.bluegreen.ok(&["switch", "blue"]);
    let metrics = scrape(&fixture);
    let sample = |name: &str, cause: &str| {
        metric(
            &metrics,
            &format!("bluegreen_{name}_total{{service=\"web\",cause=\"{cause}\"}}"),
        )
    };
    assert_eq!(sample("switches", "operator"), 5.0);
    assert_eq!(sample("switches", "shift"), 1.0);
    assert_eq!(sample("rollbacks", "operator"), 2.0);
    // Causes never counted are there at 0, so increase() sees their first.
    assert_eq!(sample("switches", "auto_rollback"), 0.0);
    assert_eq!(sample("rollbacks", "shift"), 0.0);
    assert_eq!(sample("rollbacks", "unhealthy"), 0.0);
}

/// Prometheus's instrumentation guidance: a series a dashboard or alert
/// uses exists from the start, so `increase()` counts the first event and
/// panels show 0 rather than "no data".
#[test]
fn switch_series_exist_at_zero_before_the_first_switch() {
    let fixture = Fixture::new();
    fixture.up();
    let config = fixture.write_config(&config_text("", ""));
    let _daemon = fixture.start_daemon(&config, &["--metrics", METRICS]);
    wait_for_endpoint(&fixture);
    let metrics = scrape(&fixture);
    for (name, causes) in [
        (
            "switches",
            ["operator", "shift", "auto_rollback", "fleet", "analysis"],
        ),
        (
            "rollbacks",
            ["operator", "shift", "unhealthy", "fleet", "analysis"],
        ),
    ] {
        for cause in causes {
            let series = format!("bluegreen_{name}_total{{service=\"web\",cause=\"{cause}\"}}");
            assert_eq!(metric(&metrics, &series), 0.0, "{series}");
        }
    }
    assert_eq!(
        metric(
            &metrics,
            "bluegreen_last_switch_timestamp_seconds{service=\"web\"}"
        ),
        0.0,
        "no switch yet"
    );
}

/// The udp service "dns" on the standard VIP, as a config table.
fn dns_service() -> String {
    format!(
        "\n[[service]]\nname = \"dns\"\nproto = \"udp\"\nvip = \"{}\"\nblue = \"{}\"\ngreen = \"{}\"\n",
        vip(),
        blue_backend(),
        green_backend()
    )
}

/// A service's counter slot, from the state file.
fn counter_slot(fixture: &Fixture, service: &str) -> u64 {
    let text = std::fs::read_to_string(fixture.bluegreen.state_file()).expect("state file");
    let state: Value = serde_json::from_str(&text).expect("state file is JSON");
    state["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|record| record["name"] == service)
        .unwrap_or_else(|| panic!("{service} in {state}"))["counter_slot"]
        .as_u64()
        .expect("counter_slot")
}

#[test]
fn a_service_given_a_used_slot_starts_from_zero_switches() {
    let fixture = Fixture::new();
    let both = format!("{}{}", config_text("", ""), dns_service());
    fixture.up_with_config(&fixture.write_config(&both));
    fixture
        .bluegreen
        .ok(&["switch", "green", "--service", "dns"]);
    assert_eq!(counts(&fixture, 1).0, switches(1, 0, 0));
    let dns_slot = counter_slot(&fixture, "dns");

    // "chat" replaces "dns" (another VIP port, so another service).
    let chat = dns_service()
        .replace("\"dns\"", "\"chat\"")
        .replace(":80\"", ":81\"");
    let replaced = format!("{}{chat}", config_text("", ""));
    fixture.up_with_config(&fixture.write_config(&replaced));
    assert_eq!(
        counter_slot(&fixture, "chat"),
        dns_slot,
        "the slot is reused"
    );
    assert_eq!(counts(&fixture, 1), (switches(0, 0, 0), rollbacks(0, 0, 0)));
}

#[test]
fn switching_works_without_the_counters_pin_and_up_creates_them_again() {
    let fixture = Fixture::new();
    fixture.up();
    let counters =
        PinLayout::new(&fixture.bluegreen.pin_dir, SWITCH_IFACE).map(map_names::SWITCHES);
    // An instance brought up before the map existed.
    let _ = std::fs::remove_file(&counters);
    fixture.bluegreen.ok(&["switch", "green"]);
    assert_eq!(
        counts(&fixture, 0).0,
        switches(0, 0, 0),
        "nothing to count in"
    );

    let output = fixture.up();
    assert!(output.contains("hot-upgraded"), "{output}");
    assert!(counters.exists(), "{} is pinned", counters.display());
    assert_eq!(
        fixture.bluegreen.active(),
        "green",
        "the live color is kept"
    );
    fixture.bluegreen.ok(&["rollback"]);
    assert_eq!(counts(&fixture, 0), (switches(1, 0, 0), rollbacks(1, 0, 0)));
}

/// Versions before the `fleet` and the `analysis` causes pinned switch
/// counters of three and four causes: commands run uncounted beside them,
/// and `up` carries their counts over to today's layout instead of
/// refusing the pins.
#[test]
fn switch_counters_of_older_layouts_are_carried_over_by_up() {
    // Switches by operator, shift, auto_rollback; then rollbacks alike.
    carry_over(&[4, 1, 2, 3, 0, 1], [4, 1, 2, 0], [3, 0, 1, 0]);
    // And before `analysis`, with `fleet`.
    carry_over(&[4, 1, 2, 7, 3, 0, 1, 6], [4, 1, 2, 7], [3, 0, 1, 6]);
}

/// Pins switch counters of the older layout whose value is `older` in
/// place of today's, and checks that `up` carries them over as the
/// `switches` and `rollbacks` of operator, shift, the daemon and fleet.
fn carry_over(older: &[u64], switched: [u64; 4], rolled_back: [u64; 4]) {
    let fixture = Fixture::new();
    fixture.up();
    let slot = u32::try_from(counter_slot(&fixture, "web")).expect("a small slot");
    let counters =
        PinLayout::new(&fixture.bluegreen.pin_dir, SWITCH_IFACE).map(map_names::SWITCHES);
    std::fs::remove_file(&counters).expect("unpin today's counters");
    let path = counters.to_str().expect("utf-8");
    let entries = bluegreen_common::MAX_SERVICES.to_string();
    let value_size = (older.len() * 8).to_string();
    bluegreen_testbed::netns::run(
        "bpftool",
        &[
            "map",
            "create",
            path,
            "type",
            "array",
            "key",
            "4",
            "value",
            &value_size,
            "entries",
            &entries,
            "name",
            "BG_SWITCHES",
        ],
    );
    let key: Vec<String> = slot.to_le_bytes().iter().map(u8::to_string).collect();
    let value: Vec<String> = older
        .iter()
        .flat_map(|count| count.to_le_bytes())
        .map(|byte| byte.to_string())
        .collect();
    let mut update = vec!["map", "update", "pinned", path, "key"];
    update.extend(key.iter().map(String::as_str));
    update.push("value");
    update.extend(value.iter().map(String::as_str));
    bluegreen_testbed::netns::run("bpftool", &update);

    fixture.bluegreen.ok(&["switch", "green"]);
    assert_eq!(counts(&fixture, 0).0, switches(0, 0, 0), "run uncounted");

    let output = fixture.up();
    assert!(
        output.contains("switch counters of 1 service(s) carried over"),
        "{output}"
    );
    // `extra` operator changes since the carry.
    let by_cause = |names: [&str; 4], mut counts: [u64; 4], extra: u64| {
        counts[0] += extra;
        let mut map = serde_json::Map::new();
        for (name, count) in names.into_iter().zip(counts) {
            map.insert(name.to_owned(), json!(count));
        }
        map.insert("analysis".to_owned(), json!(0));
        Value::Object(map)
    };
    let switch_names = ["operator", "shift", "auto_rollback", "fleet"];
    let rollback_names = ["operator", "shift", "unhealthy", "fleet"];
    assert_eq!(
        counts(&fixture, 0),
        (
            by_cause(switch_names, switched, 0),
            by_cause(rollback_names, rolled_back, 0)
        ),
        "{older:?}"
    );
    fixture.bluegreen.ok(&["rollback"]);
    assert_eq!(
        counts(&fixture, 0),
        (
            by_cause(switch_names, switched, 1),
            by_cause(rollback_names, rolled_back, 1)
        ),
        "{older:?}"
    );
}

/// Whether the daemon serves a health sample for `color` of "web".
fn health_reported(fixture: &Fixture, color: &str) -> bool {
    scrape(fixture).contains_key(&format!(
        "bluegreen_backend_healthy{{service=\"web\",color=\"{color}\"}}"
    ))
}

#[test]
fn health_is_reported_only_while_it_is_checked() {
    let fixture = Fixture::new();
    let checked = config_text("", FAST_CHECK);
    let config = fixture.write_config(&checked);
    let daemon = fixture.start_daemon(&config, &[&format!("--metrics={METRICS}")]);
    wait_until("blue's health reported", || {
        health_reported(&fixture, "blue")
    });

    // An `up` beside the daemon drops the check.
    fixture.up_with_config(&fixture.write_config(&config_text("", "")));
    wait_until("blue's health no longer reported after up", || {
        !health_reported(&fixture, "blue") && !health_reported(&fixture, "green")
    });

    // The daemon's own config brings it back, then a reload drops it.
    fixture.write_config(&checked);
    daemon.signal(libc::SIGHUP);
    wait_until("blue's health reported after reload", || {
        health_reported(&fixture, "blue")
    });
    fixture.write_config(&config_text("", ""));
    daemon.signal(libc::SIGHUP);
    wait_until("blue's health no longer reported after reload", || {
        !health_reported(&fixture, "blue") && !health_reported(&fixture, "green")
    });
}

#[test]
fn an_os_error_is_printed_once() {
    // A config path below a file: reading it fails with ENOTDIR.
    let output = Command::new(bluegreen_testbed::cli::binary())
        .args([
            "up",
            "--iface",
            "lo",
            "--config",
            "/dev/null/bluegreen.toml",
        ])
        .output()
        .expect("run bluegreen");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("cannot read config /dev/null/bluegreen.toml: Not a directory (os error 20)"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
}

#[test]
fn status_with_nothing_up_is_an_empty_json_report_or_a_message() {
    let fixture = Fixture::blue_only();
    let json = fixture.bluegreen.ok(&["status", "--json"]);
    let report: Value = serde_json::from_str(&json).expect("status --json is JSON");
    assert_eq!(report, json!({"schema_version": 1, "interfaces": []}));

    let run = fixture.bluegreen.run(&["status"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("bluegreen is not up: start it with"),
        "{run:?}"
    );
}

/// A child process killed and reaped on drop, so a test that fails while
/// it runs leaves nothing behind.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Its exit and output; panics (killing it) if it runs past `limit`.
    fn wait(mut self, limit: Duration) -> Output {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.0.as_mut().expect("child running");
            if child.try_wait().expect("poll the child").is_some() {
                let child = self.0.take().expect("child running");
                return child.wait_with_output().expect("child output");
            }
            assert!(Instant::now() < deadline, "still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_second_daemon_on_the_interface_fails_fast_and_the_first_keeps_running() {
    let fixture = Fixture::new();
    let config = fixture.write_config(&config_text("", ""));
    let _first = fixture.start_daemon(&config, &[&format!("--metrics={METRICS}")]);

    let started = Instant::now();
    let second = ChildGuard(Some(
        fixture.bluegreen.spawn(&["daemon", "--config", &config]),
    ));
    let output = second.wait(Duration::from_secs(10));
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lock = fixture.bluegreen.state_dir.join("s0.daemon.lock");
    assert!(
        stderr.contains(&format!(
            "another bluegreen daemon is running on s0 (it holds {})",
            lock.display()
        )),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(took < Duration::from_secs(5), "exited after {took:?}");

    // The same instance (pins) named with another state directory: the
    // instance's own lock refuses it before it loads anything.
    let links_before = fixture.bluegreen.pins();
    let third = ChildGuard(Some(
        Command::new("nsenter")
            .arg(format!(
                "--net={}",
                fixture.bluegreen.namespace_path.display()
            ))
            .arg(binary())
            .arg("--pin-dir")
            .arg(&fixture.bluegreen.pin_dir)
            .arg("--state-dir")
            .arg(fixture.bluegreen.state_dir.join("elsewhere"))
            .args(["daemon", "--config", &config])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a daemon with another state directory"),
    ));
    let output = third.wait(Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another bluegreen daemon is running on s0 (it holds the pin directory {}",
            fixture.bluegreen.interface_pins().display()
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hot upgrade")
            && !String::from_utf8_lossy(&output.stdout).contains("up on"),
        "it loaded something: {stderr}"
    );
    assert_eq!(fixture.bluegreen.pins(), links_before, "the pins changed");

    // The first one still serves, and its lock does not block a switch.
    fixture.bluegreen.ok(&["switch", "green"]);
    let metrics = scrape(&fixture);
    assert_eq!(
        metric(
            &metrics,
            "bluegreen_active{service=\"web\",color=\"green\"}"
        ),
        1.0
    );
}

/// How many backends the egress program restores a VIP for, by protocol
/// (TCP, UDP).
fn backend_vips(fixture: &Fixture) -> (usize, usize) {
    let path =
        PinLayout::new(&fixture.bluegreen.pin_dir, SWITCH_IFACE).map(map_names::BACKEND_VIPS);
    let data = MapData::from_pin(&path).unwrap_or_else(|error| panic!("{path:?}: {error}"));
    let vips: HashMap<_, BackendKey, Endpoint> =
        HashMap::try_from(Map::from_map_data(data).expect("a map")).expect("a hash map");
    let protos: Vec<u8> = vips
        .keys()
        .map(|key| key.expect("a backend key").proto)
        .collect();
    let count = |proto| protos.iter().filter(|&&seen| seen == proto).count();
    (count(PROTO_TCP), count(PROTO_UDP))
}

#[test]
fn up_names_the_services_it_removes() {
    let fixture = Fixture::new();
    let both = format!("{}{}", config_text("", ""), dns_service());
    fixture.up_with_config(&fixture.write_config(&both));
    assert_eq!(
        backend_vips(&fixture),
        (2, 2),
        "web's and dns's backends, the same addresses for two protocols"
    );

    let output = fixture.up_with_config(&fixture.write_config(&config_text("", "")));
    assert!(
        output.contains(
            "note: removed service dns (10.200.100.1:80 udp): its open connections are no longer steered"
        ),
        "{output}"
    );
    assert!(!output.contains("removed service web"), "{output}");
    assert_eq!(
        backend_vips(&fixture),
        (2, 0),
        "dns's backends are forgotten"
    );
    // Nothing more is removed the next time.
    let output = fixture.up_with_config(&fixture.write_config(&config_text("", "")));
    assert!(!output.contains("removed"), "{output}");
}

#[test]
fn a_shift_retreats_only_from_what_it_shifted_and_counts_it() {
    let mut fixture = Fixture::new();
    fixture.up_with_config(&fixture.write_config(&config_text("", FAST_CHECK)));
    // Blue is active and green the previous color: a rollback would go to
    // green.
    fixture.bluegreen.ok(&["switch", "green"]);
    fixture.bluegreen.ok(&["rollback"]);
    let before = counts(&fixture, 0);

    fixture.stop_green();
    let run =
        fixture
            .bluegreen
            .run(&["shift", "green", "--steps", "50,100", "--interval", "100ms"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("green failed its health check")
            && run.stderr.contains("nothing was shifted"),
        "{run:?}"
    );
    assert_eq!(fixture.bluegreen.active(), "blue");
    assert_eq!(fixture.get(), "blue");
    assert_eq!(
        counts(&fixture, 0),
        before,
        "nothing changed, nothing counted"
    );

    fixture.start_green();
    let shift =
        fixture
            .bluegreen
            .spawn(&["shift", "green", "--steps", "10,100", "--interval", "3s"]);
    let shift = ChildGuard(Some(shift));
    wait_until("weight 10", || {
        fixture.service_status()["weight"].as_u64() == Some(10)
    });
    fixture.stop_green();
    let output = shift.wait(Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(fixture.service_status()["weight"], 0);
    let (switched, rolled_back) = counts(&fixture, 0);
    assert_eq!(switched, before.0, "a weight is not a switch");
    assert_eq!(rolled_back["shift"], 1, "{rolled_back}");
}

/// The daemon decides a rollback on what one round saw (green failing);
/// an operator's rollback landing meanwhile must not be undone by it.
#[test]
fn a_daemon_rollback_decided_before_an_operator_change_changes_nothing() {
    let fixture = Fixture::new();
    fixture.up();
    let host = Host::new(&fixture.bluegreen.pin_dir, &fixture.bluegreen.state_dir);
    // As the daemon makes it, in the switch's namespace (where its
    // interface is).
    let daemon_rollback = || {
        let host = host.clone();
        fixture
            .topology
            .switch
            .spawn(move || {
                let options = SwitchOptions {
                    force: false,
                    check: false,
                    gates: false,
                    cause: ChangeCause::Analysis,
                };
                host.switch(
                    Some("web"),
                    SwitchTarget::PreviousFrom(Color::Green),
                    options,
                )
                .expect("the daemon's rollback")
            })
            .join()
            .expect("rollback thread")
    };
    fixture.bluegreen.ok(&["switch", "green"]);
    fixture.bluegreen.ok(&["rollback"]);
    let outcome = daemon_rollback();
    assert!(!outcome.changed, "{outcome:?}");
    assert_eq!(fixture.bluegreen.active(), "blue");
    assert_eq!(counts(&fixture, 0).1["analysis"], 0);

    fixture.bluegreen.ok(&["switch", "green"]);
    let outcome = daemon_rollback();
    assert!(outcome.changed && outcome.to == Color::Blue, "{outcome:?}");
    assert_eq!(fixture.bluegreen.active(), "blue");
    assert_eq!(counts(&fixture, 0).1["analysis"], 1);
}

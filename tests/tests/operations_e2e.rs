//! Health-checked switching, automatic rollback and metrics, end to end.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Child,
    time::{Duration, Instant},
};

use bluegreen_testbed::{
    cli::Bluegreen,
    http::{self, Backend, KeepAlive, Load},
    netns::{SWITCH_IFACE, Topology, addr},
};

const TIMEOUT: Duration = Duration::from_secs(2);
const PORT: u16 = 8080;
const INTERVAL_MS: u64 = 200;
const UNHEALTHY_THRESHOLD: u64 = 2;
const METRICS: &str = "127.0.0.1:9464";

fn vip() -> SocketAddr {
    SocketAddr::new(addr::VIP_V4.parse().expect("literal"), 80)
}

fn config(auto_rollback: bool) -> String {
    let rollback = if auto_rollback {
        "\n[service.auto_rollback]\nwindow_secs = 60\nmode = \"graceful\"\n"
    } else {
        ""
    };
    format!(
        "interface = \"{SWITCH_IFACE}\"\n\n[[service]]\nname = \"web\"\nvip = \"{}\"\nblue = \"{}:{PORT}\"\ngreen = \"{}:{PORT}\"\n\n[service.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 100\nhealthy_threshold = 1\nunhealthy_threshold = {UNHEALTHY_THRESHOLD}\n{rollback}",
        vip(),
        addr::BLUE_V4,
        addr::GREEN_V4
    )
}

/// A running daemon, stopped with SIGTERM (and reaped) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn start_daemon(bluegreen: &Bluegreen, auto_rollback: bool) -> Daemon {
    let path = bluegreen.state_dir.with_extension("toml");
    std::fs::write(&path, config(auto_rollback)).expect("write config");
    let config = path.to_str().expect("utf-8").to_owned();
    let daemon = Daemon(bluegreen.spawn(&[
        "daemon",
        "--config",
        &config,
        &format!("--metrics={METRICS}"),
    ]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while bluegreen.run(&["status"]).code != 0 {
        assert!(Instant::now() < deadline, "daemon did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
}

fn get(topology: &Topology) -> String {
    topology
        .client
        .spawn(|| http::get(vip(), TIMEOUT).unwrap_or_else(|error| format!("error: {error}")))
        .join()
        .expect("client thread")
}

#[test]
fn a_switch_to_an_unhealthy_color_is_refused() {
    let topology = Topology::new();
    let bluegreen = Bluegreen::new(&topology.switch);
    let _blue = Backend::start(&topology.blue, PORT, "blue");
    // No green backend: its health check fails.
    let blue = format!("{}:{PORT}", addr::BLUE_V4);
    let green = format!("{}:{PORT}", addr::GREEN_V4);
    bluegreen.ok(&[
        "up",
        "--iface",
        SWITCH_IFACE,
        "--service",
        "web",
        "--vip",
        &vip().to_string(),
        "--blue",
        &blue,
        "--green",
        &green,
        "--check",
        "http:/healthz",
    ]);
    let run = bluegreen.run(&["switch", "green"]);
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
    assert_eq!(bluegreen.active(), "blue");
    assert_eq!(get(&topology), "blue");

    let _green = Backend::start(&topology.green, PORT, "green");
    let output = bluegreen.ok(&["switch", "green"]);
    assert!(output.contains("green passed its health check"), "{output}");
    assert_eq!(get(&topology), "green");
}

#[test]
fn the_daemon_rolls_back_when_the_new_color_dies() {
    let topology = Topology::new();
    let bluegreen = Bluegreen::new(&topology.switch);
    let _blue = Backend::start(&topology.blue, PORT, "blue");
    let green = Backend::start(&topology.green, PORT, "green");
    let _daemon = start_daemon(&bluegreen, true);
    bluegreen.ok(&["switch", "green"]);
    assert_eq!(get(&topology), "green");
    // Let the daemon see green healthy before it dies.
    std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS));

    drop(green);
    let died = Instant::now();
    while bluegreen.active() != "blue" {
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

    let report =
        Load::start(&topology.client, vip(), 4, 500, Duration::from_secs(30)).finish(false);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.served_by.get("blue"), Some(&500), "{report:?}");

    let metrics = scrape(&topology);
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

fn scrape(topology: &Topology) -> BTreeMap<String, f64> {
    let text = topology
        .switch
        .spawn(|| {
            KeepAlive::connect(METRICS.parse().expect("literal"), TIMEOUT)
                .and_then(|mut connection| connection.get_path("/metrics"))
                .expect("scrape /metrics")
        })
        .join()
        .expect("scrape thread");
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF: {text}"
    );
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            (
                name.to_owned(),
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            )
        })
        .collect()
}

fn metric(metrics: &BTreeMap<String, f64>, name: &str) -> f64 {
    *metrics.get(name).unwrap_or_else(|| {
        panic!(
            "{name} missing from {:#?}",
            metrics.keys().collect::<Vec<_>>()
        )
    })
}

#[test]
fn metrics_count_the_traffic_sent() {
    let topology = Topology::new();
    let bluegreen = Bluegreen::new(&topology.switch);
    let _blue = Backend::start(&topology.blue, PORT, "blue");
    let _green = Backend::start(&topology.green, PORT, "green");
    let _daemon = start_daemon(&bluegreen, false);

    let report = Load::start(&topology.client, vip(), 2, 25, Duration::from_secs(30)).finish(false);
    assert_eq!(report.served_by.get("blue"), Some(&25), "{report:?}");
    bluegreen.ok(&["switch", "green"]);
    let report = Load::start(&topology.client, vip(), 2, 10, Duration::from_secs(30)).finish(false);
    assert_eq!(report.served_by.get("green"), Some(&10), "{report:?}");

    let metrics = scrape(&topology);
    let status = bluegreen.status();
    let service = &status["interfaces"][0]["services"][0];
    for (color, requests) in [("blue", 25.0), ("green", 10.0)] {
        let labels = format!("{{service=\"web\",color=\"{color}\"}}");
        assert_eq!(
            metric(&metrics, &format!("bluegreen_new_flows_total{labels}")),
            requests
        );
        for (name, field) in [("packets", "packets"), ("bytes", "bytes")] {
            assert_eq!(
                metric(&metrics, &format!("bluegreen_{name}_total{labels}")),
                service[color][field].as_f64().expect("counter"),
                "{name} for {color}"
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

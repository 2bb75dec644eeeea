//! What ships besides the code: the .deb that `cargo xtask package` builds,
//! and the Grafana dashboard and Prometheus alerts in packaging/, checked
//! against a real daemon's metrics.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use bluegreen_testbed::{
    fixture::{Fixture, config_text},
    metrics::{METRICS, scrape_text},
    model::{ModelMetrics, Profile},
    shadow::shadow_briefly,
};

const DASHBOARD: &str = "grafana/bluegreen.json";
const ALERTS: &str = "prometheus/bluegreen-alerts.yml";
const ALERT_TESTS: &str = "prometheus/bluegreen-alerts.test.yml";
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(file)
}

fn read_packaging(file: &str) -> String {
    let path = packaging(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// Runs `command`, which must succeed; returns its stdout.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A directory removed on drop, so a failing test leaves nothing behind.
struct TempDir(PathBuf);

impl TempDir {
    fn new(purpose: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "bluegreen-packaging-{purpose}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn promtool_accepts_and_tests_the_alert_rules() {
    let check = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(packaging(ALERTS)));
    assert!(check.contains("SUCCESS"), "{check}");
    // The unit tests fire each alert on series shaped like the daemon's.
    run(Command::new("promtool")
        .args(["test", "rules"])
        .arg(packaging(ALERT_TESTS)));
}

/// The metric names that `text` uses: every word of letters, digits and
/// `_` that starts with `bluegreen_`. All the daemon's series have that
/// prefix and nothing else in these files does (labels, template variables
/// and alert names do not), so this finds every metric in the PromQL without
/// parsing it, plus any named in descriptions, which must be real too. The
/// `:` that PromQL allows in names is left out: only recording rules use
/// it, and these files define none. Prometheus' own `up` is not looked at.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("bluegreen_"))
        .map(str::to_owned)
        .collect()
}

/// The names of the series a daemon serves once every family has samples:
/// health checks, load and a metric analysis on, an operator switch to
/// green (which the analysis gates), then green dies and the daemon rolls
/// back (switches, rollbacks and the switch time exist only after that;
/// green's load scrapes fail from then on). The analysis families exist
/// once the daemon has measured the active color.
fn served_metrics() -> BTreeSet<String> {
    // Probes get the whole interval: a slow answer on a loaded machine must
    // not fail blue, or there is no rollback. Dead green is refused at once.
    let interval_ms = 500;
    let mut fixture = Fixture::new();
    let config = fixture.write_config(&config_text(
        "",
        &format!(
            "\n[service.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = {interval_ms}\ntimeout_ms = {interval_ms}\nhealthy_threshold = 1\nunhealthy_threshold = 2\n\n[service.auto_rollback]\nwindow_secs = 60\n\n[service.load]\ninterval_ms = 200\n\n[[service.analysis]]\nname = \"ttft-p95\"\nsource = \"backends\"\nkind = \"quantile\"\nmax_ratio = 1.5\nwindow_secs = 1\ninterval_secs = 1\n"
        ),
    ));
    // Both colors serve alike, so the gate lets the switch through.
    let writers = ["blue", "green"]
        .map(|color| fixture.backend(color).expect("both run").metrics_writer())
        .to_vec();
    let _model = ModelMetrics::start(writers, Profile::new(0.15, 0));
    let _daemon = fixture.start_daemon(&config, &[&format!("--metrics={METRICS}")]);
    // A shadowing run that compared a few requests leaves the record the
    // shadowing metrics are read from.
    shadow_briefly(&fixture, "2s", 3);
    fixture.bluegreen.ok(&["switch", "green"]);
    // Let the daemon see the switch, and green healthy, before it dies.
    std::thread::sleep(Duration::from_millis(2 * interval_ms));
    fixture.stop_green();
    // Waiting on the metric itself, not on the active color: the daemon
    // counts a rollback only after the switch is done.
    let died = Instant::now();
    let text = loop {
        let text = scrape_text(&fixture);
        if text.contains("\nbluegreen_rollbacks_total{")
            && text.contains("\nbluegreen_shadow_ttfb_seconds{")
            && text.contains("\nbluegreen_backend_load_scrape_errors_total{")
            && text.contains("\nbluegreen_analysis_value{")
        {
            break text;
        }
        assert!(
            died.elapsed() < Duration::from_secs(10),
            "no rollback counted or no analysis measured within 10 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Sample lines are `name{labels} value` or `name value`.
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            line.split(['{', ' '])
                .next()
                .expect("split yields a first part")
                .to_owned()
        })
        .collect()
}

#[test]
fn the_dashboard_and_alerts_use_only_metrics_the_daemon_serves() {
    let served = served_metrics();
    let mut unknown = Vec::new();
    for file in [DASHBOARD, ALERTS, ALERT_TESTS] {
        let referenced = referenced_metrics(&read_packaging(file));
        // An empty set would mean the extraction, not the file, is wrong.
        assert!(
            !referenced.is_empty(),
            "no bluegreen_ metric found in {file}"
        );
        unknown.extend(
            referenced
                .difference(&served)
                .map(|name| format!("{file}: {name}")),
        );
    }
    assert!(
        unknown.is_empty(),
        "metrics the daemon does not serve:\n  {}\nserved: {served:?}",
        unknown.join("\n  ")
    );
}

#[test]
fn every_dashboard_query_is_promql_on_the_data_source_variable() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read_packaging(DASHBOARD)).expect("the dashboard is JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let names: Vec<&str> = variables
        .iter()
        .map(|variable| variable["name"].as_str().expect("variable name"))
        .collect();
    for name in ["datasource", "service", "interface", "analysis"] {
        assert!(names.contains(&name), "no ${name} in {names:?}");
    }
    let panels = dashboard["panels"].as_array().expect("panels");
    let annotations = dashboard["annotations"]["list"]
        .as_array()
        .expect("annotations.list");
    let queries: Vec<&serde_json::Value> = panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().expect("panel targets"))
        .chain(annotations.iter().filter(|a| a["expr"].is_string()))
        .collect();
    for query in &queries {
        assert_eq!(
            query["datasource"]["uid"], "${datasource}",
            "a query not on the data-source variable: {query}"
        );
    }

    // No Grafana here, so promtool parses the queries as recording rules,
    // with the Grafana variables replaced by what they stand for.
    let label_values = variables
        .iter()
        .filter_map(|variable| variable["query"].as_str()?.strip_prefix("label_values("))
        .map(|call| {
            call.rsplit_once(',')
                .expect("label_values(SERIES, LABEL)")
                .0
        });
    let exprs = queries
        .iter()
        .map(|query| query["expr"].as_str().expect("expr"))
        .chain(label_values);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, expr) in exprs.enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$service", ".*")
            .replace("$interface", ".*")
            .replace("$analysis", ".*");
        // A JSON string is a YAML double-quoted scalar.
        let quoted = serde_json::to_string(&expr).expect("a string serializes");
        rules += &format!("      - record: dashboard_query_{index}\n        expr: {quoted}\n");
    }
    let dir = TempDir::new("dashboard");
    let path = dir.0.join("dashboard-queries.yml");
    std::fs::write(&path, rules).expect("write the queries as rules");
    run(Command::new("promtool").args(["check", "rules"]).arg(&path));
}

/// The .deb that `cargo xtask test` built (BLUEGREEN_DEB), else the one
/// `cargo xtask package` leaves in target/debian.
fn deb() -> PathBuf {
    let path = std::env::var_os("BLUEGREEN_DEB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/debian")
                .join(format!("bluegreen_{VERSION}_amd64.deb"))
        });
    assert!(
        path.exists(),
        "{} not found: build it with `cargo xtask package` (`cargo xtask test` does) or set BLUEGREEN_DEB",
        path.display()
    );
    path
}

/// `dpkg-deb -I DEB MEMBER`: a control member such as `conffiles`.
fn control_member(member: &str) -> String {
    run(Command::new("dpkg-deb").arg("-I").arg(deb()).arg(member))
}

#[test]
fn the_deb_holds_the_binary_unit_config_man_page_and_completions() {
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(deb()));
    // Lines look like "-rwxr-xr-x 0/0 6511344 2026-01-01 00:00 ./usr/bin/bluegreen".
    let modes: BTreeMap<&str, &str> = listing
        .lines()
        .filter_map(|line| {
            let mode = line.split_whitespace().next()?;
            let path = line.split_whitespace().last()?;
            Some((path, mode))
        })
        .collect();
    for (path, mode) in [
        ("./usr/bin/bluegreen", "-rwxr-xr-x"),
        ("./usr/lib/systemd/system/bluegreen.service", "-rw-r--r--"),
        ("./etc/bluegreen/bluegreen.toml", "-rw-------"),
        ("./usr/share/man/man1/bluegreen.1.gz", "-rw-r--r--"),
        (
            "./usr/share/bash-completion/completions/bluegreen",
            "-rw-r--r--",
        ),
        (
            "./usr/share/zsh/vendor-completions/_bluegreen",
            "-rw-r--r--",
        ),
        (
            "./usr/share/fish/vendor_completions.d/bluegreen.fish",
            "-rw-r--r--",
        ),
        ("./usr/share/bluegreen/grafana/bluegreen.json", "-rw-r--r--"),
        (
            "./usr/share/bluegreen/prometheus/bluegreen-alerts.yml",
            "-rw-r--r--",
        ),
    ] {
        assert_eq!(
            modes.get(path),
            Some(&mode),
            "{path} with mode {mode} in:\n{listing}"
        );
    }
}

#[test]
fn the_deb_declares_its_dependencies_conffile_and_scripts() {
    let depends = run(Command::new("dpkg-deb").arg("-f").arg(deb()).arg("Depends"));
    // "libc6 (>= 2.34), mount": names without versions.
    let names: BTreeSet<&str> = depends
        .trim()
        .split(',')
        .map(|dependency| dependency.split_whitespace().next().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["libc6", "mount"]),
        "Depends: {depends}"
    );

    assert_eq!(
        control_member("conffiles"),
        "/etc/bluegreen/bluegreen.toml\n"
    );

    let postinst = control_member("postinst");
    assert!(
        postinst.contains("install -d -m 0700 /var/lib/bluegreen"),
        "{postinst}"
    );
    assert!(
        postinst.contains("deb-systemd-helper enable bluegreen.service"),
        "{postinst}"
    );
    let postrm = control_member("postrm");
    assert!(
        postrm.contains("rm -rf /var/lib/bluegreen /etc/bluegreen"),
        "{postrm}"
    );
    // Purging must never unpin: traffic runs until `bluegreen down`.
    let commands: Vec<&str> = postrm
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect();
    assert!(
        commands
            .iter()
            .all(|line| !line.contains("/sys/fs/bpf") && !line.contains("bluegreen down")),
        "{postrm}"
    );
}

#[test]
fn the_packaged_binary_runs_and_its_man_page_reads() {
    let dir = TempDir::new("deb");
    run(Command::new("dpkg-deb").arg("-x").arg(deb()).arg(&dir.0));

    let version = run(Command::new(dir.0.join("usr/bin/bluegreen")).arg("--version"));
    assert_eq!(version.trim(), format!("bluegreen {VERSION}"));

    let man = run(Command::new("gzip")
        .arg("-dc")
        .arg(dir.0.join("usr/share/man/man1/bluegreen.1.gz")));
    assert!(man.contains(".TH bluegreen 1"), "{man}");
}

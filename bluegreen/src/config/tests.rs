//! The config file as the operator writes it: what is read, and where each
//! error points.

use std::path::Path;

use super::*;
use crate::{
    health::Probe,
    load::LoadCheck,
    verify::{
        Analysis, CommandGate, Figure, Method, NoData, Source as AnalysisSource, Threshold, Warmup,
    },
};

const GOOD: &str = r#"
interface = "eth0"
xdp_mode = "native"

[dataplane]
flow_capacity = 4096
udp_idle_timeout_secs = 5

[[service]]
name = "chat"
vip = "10.0.0.1:8080"
blue = "10.1.0.2:8080"
green = "10.1.0.3:8080"

[[service]]
name = "embed6"
vip = "[fd00::1]:9000"
proto = "udp"
blue = "[fd00::2]:9000"
green = "[fd00::3]:9000"
active = "green"
"#;

/// [`GOOD`] with a `[service.SECTION]` table of `table` for its first
/// service, whose header lands on line 14.
fn with_section(section: &str, table: &str) -> String {
    GOOD.replace(
        "green = \"10.1.0.3:8080\"\n",
        &format!("green = \"10.1.0.3:8080\"\n\n[service.{section}]\n{table}"),
    )
}

/// Each `[service.SECTION]` table of `cases` is refused in one line naming
/// the section, with the text its case gives.
fn assert_section_errors(section: &str, cases: &[(&str, &str)]) {
    for (table, text) in cases {
        let (line, field, message) = config_error(&with_section(section, table));
        assert_eq!(
            (line, field.as_str()),
            (15, format!("service[0].{section}").as_str()),
            "{table}: {message}"
        );
        assert!(
            message.contains(text),
            "{table}: expected {text:?} in {message}"
        );
        assert_eq!(message.lines().count(), 1, "{message}");
    }
}

fn config_error(text: &str) -> (usize, String, String) {
    match Config::parse(text, "test.toml") {
        Err(Error::Config {
            line,
            field,
            message,
            ..
        }) => (line, field, message),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn a_valid_config_is_read_completely() {
    let config = Config::parse(GOOD, "test.toml").unwrap();
    assert_eq!(config.interface.as_deref(), Some("eth0"));
    assert_eq!(config.xdp_mode, RequestedXdpMode::Native);
    assert_eq!(config.dataplane.flow_capacity, 4096);
    assert_eq!(config.dataplane.timeouts.udp_idle_secs, 5);
    assert_eq!(
        config.dataplane.timeouts.tcp_idle_secs,
        Timeouts::default().tcp_idle_secs
    );
    assert_eq!(config.services.len(), 2);
    assert_eq!(config.services[0].active, Color::Blue);
    assert_eq!(config.services[0].proto, Proto::Tcp);
    assert_eq!(config.services[1].active, Color::Green);
    assert_eq!(config.services[1].proto, Proto::Udp);
}

#[test]
fn local_clients_are_on_by_default_and_can_be_scoped_or_turned_off() {
    let default = Config::parse(GOOD, "test.toml").unwrap();
    assert_eq!(default.local, LocalClients::On { cgroup: None });
    let scoped = Config::parse(
        &format!("cgroup = \"/sys/fs/cgroup/gateway\"\n{GOOD}"),
        "test.toml",
    )
    .unwrap();
    assert_eq!(
        scoped.local,
        LocalClients::On {
            cgroup: Some(PathBuf::from("/sys/fs/cgroup/gateway"))
        }
    );
    let off = Config::parse(&format!("local = false\n{GOOD}"), "test.toml").unwrap();
    assert_eq!(off.local, LocalClients::Off);
    let (line, field, message) = config_error(&format!(
        "local = false\ncgroup = \"/sys/fs/cgroup\"\n{GOOD}"
    ));
    assert_eq!((line, field.as_str()), (2, "cgroup"));
    assert!(message.contains("remove cgroup"), "{message}");
}

#[test]
fn errors_name_the_line_and_the_field() {
    let mixed = GOOD.replace("green = \"10.1.0.3:8080\"", "green = \"[fd00::3]:8080\"");
    let (line, field, message) = config_error(&mixed);
    assert_eq!((line, field.as_str()), (13, "service[0].green"));
    assert!(message.contains("IPv6"), "{message}");

    let (line, field, _) = config_error(&GOOD.replace("10.1.0.2:8080", "10.1.0.2"));
    assert_eq!((line, field.as_str()), (12, "service[0].blue"));

    let (line, field, message) =
        config_error(&GOOD.replace("flow_capacity = 4096", "flow_capacity = 12"));
    assert_eq!((line, field.as_str()), (6, "dataplane.flow_capacity"));
    assert!(message.contains("outside"), "{message}");

    let (line, field, _) = config_error(&GOOD.replace("proto = \"udp\"", "proto = \"sctp\""));
    assert_eq!((line, field.as_str()), (18, "service[1].proto"));

    let (_, field, message) = config_error(&GOOD.replace("name = \"embed6\"", "name = \"chat\""));
    assert_eq!(field, "service[1].name");
    assert!(message.contains("twice"), "{message}");

    let (line, field, message) = config_error(&GOOD.replace("xdp_mode", "xdp_mod"));
    assert_eq!((line, field.as_str()), (3, "toml"));
    assert!(message.contains("unknown field"), "{message}");

    let (_, _, message) = config_error("interface = \"eth0\"\n");
    assert!(message.contains("at least one service"), "{message}");
}

#[test]
fn a_backend_serves_one_service_of_a_protocol() {
    let third = |proto: &str, green: &str| {
        format!(
            "{GOOD}\n[[service]]\nname = \"rerank\"\nvip = \"10.0.0.9:8080\"\nproto = \"{proto}\"\nblue = \"10.1.0.9:8080\"\ngreen = {green}\n"
        )
    };
    let (_, field, message) = config_error(&third("tcp", "[\"10.1.0.8:8080\", \"10.1.0.3:8080\"]"));
    assert_eq!(field, "service[2].green");
    assert!(
        message.contains("10.1.0.3:8080 is already a backend of service \"chat\""),
        "{message}"
    );
    let config = Config::parse(&third("udp", "\"10.1.0.3:8080\""), "test.toml")
        .expect("a TCP and a UDP service may share a backend: replies name their protocol");
    assert_eq!(config.services.len(), 3);
}

#[test]
fn health_checks_and_auto_rollback_are_read_and_checked() {
    let with_health = GOOD.replace(
        "green = \"10.1.0.3:8080\"\n",
        "green = \"10.1.0.3:8080\"\n\n[service.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = 200\ntimeout_ms = 100\nunhealthy_threshold = 2\n\n[service.auto_rollback]\nwindow_secs = 0\nmode = \"forced\"\n",
    );
    let config = Config::parse(&with_health, "test.toml").unwrap();
    let chat = &config.services[0];
    let health = chat.health.as_ref().expect("health");
    assert_eq!(
        health.probe,
        Probe::Http {
            path: "/healthz".to_owned()
        }
    );
    assert_eq!((health.interval_ms, health.timeout_ms), (200, 100));
    assert_eq!(health.unhealthy_threshold, 2);
    assert_eq!(
        health.healthy_threshold,
        HealthCheck::DEFAULT_HEALTHY_THRESHOLD
    );
    assert_eq!(
        chat.auto_rollback,
        Some(AutoRollback {
            window_secs: 0,
            force: true,
            analysis: false,
        })
    );

    let (line, field, message) =
        config_error(&with_health.replace("timeout_ms = 100", "timeout_ms = 900"));
    assert_eq!((line, field.as_str()), (15, "service[0].health"));
    assert!(message.contains("timeout_ms"), "{message}");

    let without_health = with_health.replace("[service.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = 200\ntimeout_ms = 100\nunhealthy_threshold = 2\n\n", "");
    let (_, _, message) = config_error(&without_health);
    assert!(
        message.contains("auto_rollback needs a health check"),
        "{message}"
    );
}

#[test]
fn same_backend_for_both_colors_is_refused() {
    let (_, _, message) =
        config_error(&GOOD.replace("green = \"10.1.0.3:8080\"", "green = \"10.1.0.2:8080\""));
    assert!(
        message.contains("10.1.0.2:8080 is in both blue and green"),
        "{message}"
    );
}

#[test]
fn the_packaged_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/bluegreen.toml");
    let config = Config::load(Path::new(path)).expect("packaging/bluegreen.toml");
    assert_eq!(config.interface.as_deref(), Some("eth0"));
    assert_eq!(config.services.len(), 2);
    assert_eq!(config.services[0].green.backends().len(), 2);
    assert_eq!(config.fleet, None, "the fleet example is commented out");

    // Uncommented as the comment suggests, the fleet example is valid too.
    let text = std::fs::read_to_string(path).expect("read the example");
    let mut in_fleet = false;
    let uncommented: Vec<&str> = text
        .lines()
        .map(|line| {
            in_fleet = (in_fleet || line == "# [fleet]") && !line.is_empty();
            if in_fleet {
                line.trim_start_matches("# ")
            } else {
                line
            }
        })
        .collect();
    let fleet = Config::parse(&uncommented.join("\n"), "example")
        .expect("the fleet example")
        .fleet
        .expect("[fleet]");
    assert_eq!(fleet.host, "web-1");
    assert_eq!(fleet.endpoints.len(), 2);
    assert!(fleet.tls.cert.is_some() && fleet.tls.key.is_some());
    // So are the release gates, analyses and rollback on analysis: their
    // TOML lines uncommented, the prose between them left alone.
    let toml_line = |line: &str| {
        line.starts_with('[')
            || line
                .split_once(" = ")
                .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    };
    let mut in_gates = false;
    let uncommented: Vec<&str> = text
        .lines()
        .map(|line| {
            in_gates = (in_gates || line == "# [service.verify]") && !line.is_empty();
            match line.strip_prefix("# ") {
                Some(toml) if in_gates && toml_line(toml) => toml,
                _ => line,
            }
        })
        .collect();
    let gated = Config::parse(&uncommented.join("\n"), "example").expect("the gates example");
    let service = &gated.services[0];
    assert!(service.verify.is_some() && service.warmup.is_some());
    let names: Vec<&str> = service
        .analysis
        .iter()
        .map(|analysis| analysis.name.as_str())
        .collect();
    assert_eq!(names, ["ttft-p95", "errors"]);
    assert!(service.auto_rollback.is_some_and(|policy| policy.analysis));
}

#[test]
fn xdp_modes_parse_from_their_names() {
    for (name, mode) in [
        ("auto", RequestedXdpMode::Auto),
        ("native", RequestedXdpMode::Native),
        ("skb", RequestedXdpMode::Skb),
    ] {
        assert_eq!(name.parse::<RequestedXdpMode>().unwrap(), mode, "{name}");
    }
    let error = "fast".parse::<RequestedXdpMode>().unwrap_err().to_string();
    assert_eq!(error, "unknown XDP mode \"fast\": use auto, native or skb");

    let (line, field, message) =
        config_error(&GOOD.replace("xdp_mode = \"native\"", "xdp_mode = \"fast\""));
    assert_eq!((line, field.as_str()), (3, "xdp_mode"));
    assert_eq!(message, error);
}

#[test]
fn unusable_addresses_are_refused_on_their_own_line() {
    let cases = [
        (
            "vip = \"10.0.0.1:8080\"",
            "vip = \"127.0.0.1:8080\"",
            11,
            "service[0].vip",
            "loopback",
        ),
        (
            "vip = \"10.0.0.1:8080\"",
            "vip = \"255.255.255.255:8080\"",
            11,
            "service[0].vip",
            "broadcast",
        ),
        (
            "vip = \"[fd00::1]:9000\"",
            "vip = \"[ff05::1]:9000\"",
            17,
            "service[1].vip",
            "multicast",
        ),
        (
            "blue = \"10.1.0.2:8080\"",
            "blue = \"127.0.0.2:8080\"",
            12,
            "service[0].blue",
            "XDP cannot forward",
        ),
        (
            "green = \"[fd00::3]:9000\"",
            "green = \"[::1]:9000\"",
            20,
            "service[1].green",
            "loopback",
        ),
        (
            "green = \"10.1.0.3:8080\"",
            "green = \"239.1.1.1:8080\"",
            13,
            "service[0].green",
            "multicast",
        ),
    ];
    for (good, bad, expected_line, expected_field, text) in cases {
        let (line, field, message) = config_error(&GOOD.replace(good, bad));
        assert_eq!(
            (line, field.as_str()),
            (expected_line, expected_field),
            "{bad}: {message}"
        );
        assert!(
            message.contains(text),
            "{bad}: expected {text:?} in {message}"
        );
    }
}

#[test]
fn each_service_error_points_at_the_key_it_is_about() {
    let (line, field, message) =
        config_error(&GOOD.replace("green = \"10.1.0.3:8080\"", "green = \"10.1.0.2:8080\""));
    assert_eq!(
        (line, field.as_str()),
        (13, "service[0].green"),
        "{message}"
    );

    let (line, field, message) =
        config_error(&GOOD.replace("blue = \"10.1.0.2:8080\"", "blue = \"10.0.0.1:8080\""));
    assert_eq!((line, field.as_str()), (12, "service[0].blue"), "{message}");
    assert!(message.contains("cannot be the VIP itself"), "{message}");

    let rollback_only = with_section("auto_rollback", "mode = \"forced\"\n");
    let (line, field, message) = config_error(&rollback_only);
    assert_eq!(
        (line, field.as_str()),
        (15, "service[0].auto_rollback"),
        "{message}"
    );
}

#[test]
fn unsafe_health_checks_are_refused() {
    let config = Config::parse(
        &with_section("health", "kind = \"tcp\"\nport = 9100\n"),
        "test.toml",
    )
    .unwrap();
    let health = config.services[0].health.as_ref().expect("health");
    assert_eq!(health.port, Some(9100));

    let cases = [
        ("kind = \"tcp\"\nport = 0\n", "port 0"),
        (
            "kind = \"http\"\npath = \"/h\\r\\nX-Injected: 1\"\n",
            "control character",
        ),
        (
            "kind = \"http\"\npath = \"/h\\nfoo\"\n",
            "control character",
        ),
        ("kind = \"http\"\npath = \"/h\\tx\"\n", "control character"),
    ];
    assert_section_errors("health", &cases);
}

#[test]
fn load_sections_take_defaults_and_bad_ones_are_named() {
    let with_load = |table: &str| with_section("load", table);
    let config = Config::parse(&with_load(""), "test.toml").unwrap();
    assert_eq!(config.services[0].load, Some(LoadCheck::default()));
    assert_eq!(config.services[1].load, None);
    let config = Config::parse(
        &with_load("metric = \"queue_depth\"\npath = \"/m\"\nport = 9100\ninterval_ms = 100\n"),
        "test.toml",
    )
    .unwrap();
    assert_eq!(
        config.services[0].load,
        Some(LoadCheck {
            metric: "queue_depth".to_owned(),
            path: "/m".to_owned(),
            port: Some(9100),
            interval_ms: 100,
        })
    );

    let cases = [
        (
            "interval_ms = 60001\n",
            "interval_ms 60001 is outside 100..=60000",
        ),
        ("interval_ms = 50\n", "interval_ms 50"),
        ("metric = \"a-b\"\n", "metric \"a-b\""),
        ("path = \"metrics\"\n", "path"),
        ("port = 0\n", "port 0"),
    ];
    assert_section_errors("load", &cases);
}

#[test]
fn verify_sections_take_a_default_timeout_and_bad_ones_are_named() {
    let text = with_section(
        "verify",
        "commands = [[\"/opt/evals/run.sh\", \"--quick\"]]\n",
    );
    let config = Config::parse(&text, "test.toml").unwrap();
    assert_eq!(
        config.services[0].verify,
        Some(CommandGate {
            commands: vec![vec!["/opt/evals/run.sh".to_owned(), "--quick".to_owned()]],
            timeout_secs: CommandGate::DEFAULT_TIMEOUT_SECS,
        })
    );
    assert_eq!(config.services[1].verify, None);

    let cases = [
        ("commands = []\n", "commands is empty"),
        ("commands = [[]]\n", "commands[0] is empty"),
        ("commands = [[\"\"]]\n", "empty program name"),
        (
            "commands = [[\"/bin/true\"]]\ntimeout_secs = 0\n",
            "timeout_secs 0 is outside",
        ),
    ];
    assert_section_errors("verify", &cases);

    let (line, field, message) = config_error(&with_section(
        "verify",
        "commands = [[\"/bin/true\"]]\ntimeout = 5\n",
    ));
    assert_eq!((line, field.as_str()), (17, "toml"));
    assert!(message.contains("unknown field `timeout`"), "{message}");
}

#[test]
fn warmup_sections_take_defaults_and_bad_ones_are_named() {
    let text = with_section(
        "warmup",
        "requests = 20\nmethod = \"POST\"\npath = \"/v1/completions\"\nbody = '{\"model\": \"m\"}'\n",
    );
    let config = Config::parse(&text, "test.toml").unwrap();
    assert_eq!(
        config.services[0].warmup,
        Some(Warmup {
            requests: 20,
            method: Method::Post,
            path: "/v1/completions".to_owned(),
            body: Some("{\"model\": \"m\"}".to_owned()),
            expect_status: 200,
            timeout_ms: Warmup::DEFAULT_TIMEOUT_MS,
        })
    );
    let text = with_section(
        "warmup",
        "requests = 1\npath = \"/\"\nexpect_status = 204\n",
    );
    let warmup = Config::parse(&text, "test.toml").unwrap().services[0]
        .warmup
        .clone()
        .unwrap();
    assert_eq!((warmup.method, warmup.expect_status), (Method::Get, 204));

    let cases = [
        (
            "requests = 0\npath = \"/\"\n",
            "requests 0 is outside 1..=10000",
        ),
        ("requests = 10001\npath = \"/\"\n", "requests 10001"),
        ("requests = 1\npath = \"v1\"\n", "must start with '/'"),
        (
            "requests = 1\npath = \"/\"\nmethod = \"DELETE\"\n",
            "method \"DELETE\" is not GET, POST or PUT",
        ),
        (
            "requests = 1\npath = \"/\"\nexpect_status = 600\n",
            "expect_status 600 is outside 100..=599",
        ),
        (
            "requests = 1\npath = \"/\"\nbody = \"x\"\n",
            "a GET carries no body",
        ),
    ];
    assert_section_errors("warmup", &cases);

    let (line, field, message) = config_error(&with_section(
        "warmup",
        "requests = 1\npath = \"/\"\nheaders = 1\n",
    ));
    assert_eq!((line, field.as_str()), (18, "toml"));
    assert!(message.contains("unknown field `headers`"), "{message}");

    let udp = format!("{GOOD}\n[service.warmup]\nrequests = 1\npath = \"/\"\n");
    let (_, field, message) = config_error(&udp);
    assert_eq!(field, "service[1].warmup");
    assert!(
        message.contains("a UDP service does not answer"),
        "{message}"
    );
}

#[test]
fn a_fleet_section_takes_defaults_and_without_one_the_host_stands_alone() {
    assert_eq!(Config::parse(GOOD, "test.toml").unwrap().fleet, None);
    let text =
        format!("{GOOD}\n[fleet]\nendpoints = [\"http://10.0.0.5:2379\"]\nhost = \"web-1\"\n");
    let fleet = Config::parse(&text, "test.toml").unwrap().fleet.unwrap();
    assert_eq!(fleet.endpoints, ["http://10.0.0.5:2379"]);
    assert_eq!(fleet.host, "web-1");
    assert_eq!(fleet.prefix, DEFAULT_FLEET_PREFIX);
    assert_eq!(fleet.lease_ttl_secs, DEFAULT_LEASE_TTL_SECS);
    assert_eq!(fleet.tls, FleetTls::default());

    let text = format!(
        "{GOOD}\n[fleet]\nendpoints = [\"https://a:2379\", \"https://b:2379\"]\nhost = \"h\"\nprefix = \"/prod/bg\"\nlease_ttl_secs = 3\nca = \"/etc/ca.pem\"\ncert = \"/etc/c.pem\"\nkey = \"/etc/k.pem\"\n"
    );
    let fleet = Config::parse(&text, "test.toml").unwrap().fleet.unwrap();
    assert_eq!(fleet.prefix, "/prod/bg");
    assert_eq!(fleet.lease_ttl_secs, 3);
    assert_eq!(fleet.tls.key.as_deref(), Some(Path::new("/etc/k.pem")));
}

#[test]
fn bad_fleet_settings_are_named_on_their_line() {
    let cases = [
        ("endpoints = []", "fleet.endpoints", "no endpoint"),
        (
            "endpoints = [\"10.0.0.5:2379\"]",
            "fleet.endpoints",
            "not an http:// or https:// URL",
        ),
        (
            "endpoints = [\"http://e:2379\"]\nhost = \"a/b\"",
            "fleet.host",
            "letters, digits",
        ),
        (
            "endpoints = [\"http://e:2379\"]\nhost = \"h\"\nprefix = \"bg/\"",
            "fleet.prefix",
            "key path",
        ),
        (
            "endpoints = [\"http://e:2379\"]\nhost = \"h\"\nlease_ttl_secs = 0",
            "fleet.lease_ttl_secs",
            "outside",
        ),
        (
            "endpoints = [\"http://e:2379\"]\nhost = \"h\"\ncert = \"/c.pem\"",
            "fleet.cert",
            "go together",
        ),
    ];
    for (body, field, message) in cases {
        let text = format!("{GOOD}\n[fleet]\n{body}\n");
        // After GOOD: a blank line, the header, then the keys.
        let first = GOOD.lines().count() + 3;
        let (line, got_field, got_message) = config_error(&text);
        assert_eq!(got_field, field, "{body}");
        assert!(got_message.contains(message), "{body}: {got_message}");
        assert!(
            (first..first + body.lines().count()).contains(&line),
            "{body}: line {line}"
        );
    }
}

#[test]
fn the_fleet_section_is_read_alone_from_a_file_without_services() {
    /// Removes the directory however the test ends.
    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = TempDir(std::env::temp_dir().join(format!("bg-fleet-only-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let path = dir.0.join("operator.toml");
    std::fs::write(
        &path,
        "[fleet]\nendpoints = [\"https://10.0.0.5:2379\"]\nhost = \"desk\"\nca = \"/etc/ca.pem\"\n",
    )
    .expect("write");
    let fleet = FleetConfig::load(&path).expect("a [fleet] alone is enough");
    assert_eq!(
        fleet.map(|fleet| (fleet.endpoints, fleet.tls.ca)),
        Some((
            vec!["https://10.0.0.5:2379".to_owned()],
            Some(PathBuf::from("/etc/ca.pem"))
        ))
    );
    // A host's whole config gives its [fleet] too; its mistakes are still
    // named with their line.
    std::fs::write(
        &path,
        format!("{GOOD}\n[fleet]\nendpoints = [\"http://e:2379\"]\n"),
    )
    .expect("write");
    assert!(FleetConfig::load(&path).expect("a host's config").is_some());
    std::fs::write(&path, "[fleet]\nendpoints = [\"e:2379\"]\n").expect("write");
    let error = FleetConfig::load(&path).expect_err("not a URL").to_string();
    assert!(
        error.contains("operator.toml:2: fleet.endpoints"),
        "{error}"
    );
    std::fs::write(&path, "interface = \"eth0\"\n").expect("write");
    assert_eq!(FleetConfig::load(&path).expect("no [fleet]"), None);
}

fn with_analyses(tables: &[&str]) -> String {
    let tables: String = tables
        .iter()
        .map(|table| format!("\n[[service.analysis]]\n{table}"))
        .collect();
    GOOD.replace(
        "green = \"10.1.0.3:8080\"\n",
        &format!("green = \"10.1.0.3:8080\"\n{tables}"),
    )
}

#[test]
fn analyses_take_vllm_names_and_defaults_and_keep_their_order() {
    let text = with_analyses(&[
        "name = \"ttft-p95\"\nsource = \"backends\"\nhistogram = \"vllm:time_to_first_token_seconds\"\nquantile = 0.95\nmax_ratio = 1.5\nwindow_secs = 60\n",
        "name = \"errors\"\nsource = \"backends\"\nkind = \"error_ratio\"\nmax = 0.01\nno_data = \"pass\"\n",
        "name = \"p99\"\nsource = \"prometheus\"\nprometheus = \"http://127.0.0.1:9090\"\nquery = 'histogram_quantile(0.99, sum by (le) (rate(x_bucket{instance=~\"{{backends_regex}}\"}[1m])))'\nmax = 2.5\ninterval_secs = 5\nfailure_limit = 3\n",
    ]);
    let config = Config::parse(&text, "test.toml").unwrap();
    let analyses = &config.services[0].analysis;
    assert_eq!(
        analyses[0],
        Analysis {
            name: "ttft-p95".to_owned(),
            source: AnalysisSource::Backends {
                figure: Figure::Quantile {
                    histogram: "vllm:time_to_first_token_seconds".to_owned(),
                    quantile: 0.95,
                },
                path: "/metrics".to_owned(),
                port: None,
            },
            threshold: Threshold {
                max_ratio: Some(1.5),
                ..Threshold::default()
            },
            window_secs: 60,
            interval_secs: Analysis::DEFAULT_INTERVAL_SECS,
            failure_limit: Analysis::DEFAULT_FAILURE_LIMIT,
            no_data: None,
        }
    );
    assert_eq!(
        analyses[1].source,
        AnalysisSource::Backends {
            figure: Figure::ErrorRatio {
                counter: "http_requests_total".to_owned(),
                label: "status".to_owned(),
            },
            path: "/metrics".to_owned(),
            port: None,
        }
    );
    assert_eq!(analyses[1].no_data, Some(NoData::Pass));
    assert!(matches!(
        &analyses[2].source,
        AnalysisSource::Prometheus { url, query }
            if url == "http://127.0.0.1:9090" && query.contains("{{backends_regex}}")
    ));
    assert_eq!(
        (analyses[2].interval_secs, analyses[2].failure_limit),
        (5, 3)
    );
    assert!(config.services[1].analysis.is_empty());
}

#[test]
fn analyses_that_cannot_be_judged_are_refused_naming_the_table() {
    let cases = [
        (
            "name = \"a\"\nsource = \"backends\"\nkind = \"quantile\"\n",
            "give a threshold",
        ),
        (
            "name = \"a\"\nsource = \"graphite\"\nmax = 1.0\n",
            "source \"graphite\"",
        ),
        (
            "name = \"a\"\nsource = \"backends\"\nmax = 1.0\n",
            "say what to measure",
        ),
        (
            "name = \"a\"\nsource = \"backends\"\nhistogram = \"h\"\ncounter = \"c\"\nmax = 1.0\n",
            "not both",
        ),
        (
            "name = \"a\"\nsource = \"prometheus\"\nquery = \"up\"\nmax = 1.0\n",
            "needs prometheus = ",
        ),
        (
            "name = \"a\"\nsource = \"prometheus\"\nprometheus = \"http://p:9090\"\nquery = \"up\"\nhistogram = \"h\"\nmax = 1.0\n",
            "histogram is for source = \"backends\"",
        ),
        (
            "name = \"a\"\nsource = \"backends\"\nkind = \"quantile\"\nquantile = 1.5\nmax = 1.0\n",
            "quantile 1.5 is outside (0, 1)",
        ),
        (
            "name = \"a\"\nsource = \"backends\"\nkind = \"error_ratio\"\nmax = 0.1\nno_data = \"maybe\"\n",
            "no_data \"maybe\"",
        ),
    ];
    for (table, wanted) in cases {
        let (_, field, message) = config_error(&with_analyses(&[table]));
        assert_eq!(field, "service[0].analysis[0]", "{table}: {message}");
        assert!(
            message.contains(wanted),
            "{table}: wanted {wanted:?} in {message}"
        );
    }

    let twice = "name = \"errors\"\nsource = \"backends\"\nkind = \"error_ratio\"\nmax = 0.1\n";
    let (_, field, message) = config_error(&with_analyses(&[twice, twice]));
    assert_eq!(field, "service[0].analysis", "{message}");
    assert!(message.contains("already named \"errors\""), "{message}");

    let (_, field, message) = config_error(&with_section("auto_rollback", "analysis = true\n"));
    assert_eq!(field, "service[0].auto_rollback", "{message}");
    assert!(
        message.contains("needs a [[service.analysis]]"),
        "{message}"
    );
}

#[test]
fn a_scale_down_inside_the_rollback_window_is_refused() {
    let lifecycle = "\n[service.lifecycle]\nstart = [\"/bin/true\"]\nstop = [\"/bin/true\"]\nscale_down_after_secs = 60\n";
    let health = "\n[service.health]\nkind = \"tcp\"\n";
    let rollback = |window: u64| format!("\n[service.auto_rollback]\nwindow_secs = {window}\n");
    let text = |window: u64| {
        GOOD.replace(
            "green = \"10.1.0.3:8080\"\n",
            &format!(
                "green = \"10.1.0.3:8080\"\n{health}{}{lifecycle}",
                rollback(window)
            ),
        )
    };
    let (_, field, message) = config_error(&text(300));
    assert_eq!(field, "service[0].lifecycle", "{message}");
    assert!(
        message
            .contains("scale_down_after_secs 60 is shorter than auto_rollback's window_secs 300"),
        "{message}"
    );
    let config = Config::parse(&text(60), "test.toml").expect("a window the scale-down waits out");
    assert_eq!(
        config.services[0]
            .lifecycle
            .as_ref()
            .and_then(|lifecycle| lifecycle.scale_down_after_secs),
        Some(60)
    );
}

#[test]
fn shadow_sections_take_defaults_and_bad_ones_are_named() {
    let config = Config::parse(&with_section("shadow", "enabled = true\n"), "test.toml")
        .expect("a shadow section of defaults");
    let shadow = config.services[0].shadow.clone().expect("read");
    assert!(shadow.enabled, "enabled as written");
    let options = shadow.settings.options().expect("defaults are valid");
    assert_eq!(options.sample.basis_points, 500, "5 % unless told");
    assert_eq!(options.duration, None, "until stopped unless told");
    assert!(
        options
            .allow
            .allows("POST", "/v1/chat/completions?stream=true")
            && options.allow.allows("GET", "/health")
            && !options.allow.allows("DELETE", "/v1/files/1"),
        "the inference allow-list by default"
    );
    let config = Config::parse(
        &with_section(
            "shadow",
            "sample = \"0.5%\"\nduration_secs = 600\nmax_inflight = 8\nallow = [\"POST /v2/*\"]\nmax_buffered_mib = 4\n",
        ),
        "test.toml",
    )
    .expect("a shadow section with every key");
    let options = config.services[0]
        .shadow
        .as_ref()
        .expect("read")
        .settings
        .options()
        .expect("valid");
    assert_eq!(
        (
            options.sample.basis_points,
            options.duration.map(|duration| duration.as_secs()),
            options.max_inflight,
            options.max_buffered_bytes,
        ),
        (50, Some(600), 8, 4 << 20)
    );
    assert!(options.allow.allows("POST", "/v2/generate") && !options.allow.allows("GET", "/"));
    assert_section_errors(
        "shadow",
        &[
            ("sample = \"0%\"\n", "invalid sample share \"0%\""),
            ("sample = \"5\"\n", "like 5% or 0.5%"),
            ("max_inflight = 0\n", "max_inflight 0 is out of range"),
            ("allow = [\"get /x\"]\n", "get /x"),
            ("allow = []\n", "allow"),
            (
                "response_timeout_secs = 0\n",
                "response_timeout_secs must be at least 1",
            ),
            ("max_buffered_mib = 0\n", "allow at least 1 MiB"),
        ],
    );
}

#[test]
fn shadow_analyses_name_their_figure() {
    let config = Config::parse(
        &with_analyses(&[
            "name = \"ttfb\"\nsource = \"shadow\"\nfigure = \"ttfb_p95\"\nmax_ratio = 1.5\n",
        ]),
        "test.toml",
    )
    .expect("a shadow analysis");
    assert_eq!(
        config.services[0].analysis[0].source,
        crate::verify::Source::Shadow {
            figure: crate::verify::ShadowFigure::TtfbP95
        }
    );
    for (table, text) in [
        (
            "name = \"a\"\nsource = \"shadow\"\nmax = 1.0\n",
            "needs a figure: ttfb_p50",
        ),
        (
            "name = \"a\"\nsource = \"shadow\"\nfigure = \"p95\"\nmax = 1.0\n",
            "figure \"p95\" is not one of",
        ),
        (
            "name = \"a\"\nsource = \"shadow\"\nfigure = \"ttfb_p95\"\nhistogram = \"h\"\nmax = 1.0\n",
            "histogram is for source = \"backends\"",
        ),
        (
            "name = \"a\"\nsource = \"backends\"\nfigure = \"ttfb_p95\"\nmax = 1.0\n",
            "figure is for source = \"shadow\"",
        ),
    ] {
        let (_, field, message) = config_error(&with_analyses(&[table]));
        assert_eq!(field, "service[0].analysis[0]", "{message}");
        assert!(message.contains(text), "expected {text:?} in {message}");
    }
}

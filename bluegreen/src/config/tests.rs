//! The config file as the operator writes it: what is read, and where each
//! error points.

use std::path::Path;

use super::*;
use crate::{health::Probe, load::LoadCheck};

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
    assert_eq!(config.xdp_mode, XdpModeArg::Native);
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
            force: true
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
}

#[test]
fn xdp_modes_parse_from_their_names() {
    for (name, mode) in [
        ("auto", XdpModeArg::Auto),
        ("native", XdpModeArg::Native),
        ("skb", XdpModeArg::Skb),
    ] {
        assert_eq!(name.parse::<XdpModeArg>().unwrap(), mode, "{name}");
    }
    let error = "fast".parse::<XdpModeArg>().unwrap_err().to_string();
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

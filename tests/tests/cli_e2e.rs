//! The operator's contract, end to end: the real binary, real TCP through
//! real namespaces, and the state it leaves in bpffs and on disk.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use bluegreen_common::{LAYOUT_VERSION, ServiceState};
use bluegreen_testbed::{
    cli::layout_dir,
    fixture::{Fixture, blue_backend, config_text, green_backend, strs, up_args, vip},
    netns::{SWITCH_IFACE, addr},
};

/// The standard config with a `[dataplane]` table setting the TCP closing
/// timeout.
fn closing_config(closing_timeout_secs: u64) -> String {
    config_text(
        &format!("[dataplane]\ntcp_closing_timeout_secs = {closing_timeout_secs}\n\n"),
        "",
    )
}

fn active_flows(fixture: &Fixture, color: &str) -> u64 {
    fixture.service_status()[color]["active_flows"]
        .as_u64()
        .expect("active_flows")
}

#[test]
fn established_connections_finish_on_their_color_unless_forced() {
    let fixture = Fixture::new();
    fixture.up();
    let mut kept = fixture.keep_alive();
    assert_eq!(kept.get().expect("first request"), "blue");

    let output = fixture.bluegreen.ok(&["switch", "green"]);
    assert!(
        output.starts_with(
            "green accepts connections (no health check configured)\nweb: blue -> green in "
        ),
        "{output}"
    );
    assert_eq!(fixture.get(), "green", "new connections follow the switch");
    assert_eq!(
        kept.get().expect("kept connection"),
        "blue",
        "established stays"
    );
    assert_eq!(active_flows(&fixture, "blue"), 1);

    // Forced: the kept connection's packets now reach green, which has no
    // such connection and resets it. That is what a client sees.
    let output = fixture.bluegreen.ok(&["switch", "green", "--force"]);
    assert!(output.contains("forced"), "{output}");
    let error = kept
        .get()
        .expect_err("a forced switch cuts the connection over");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
        ),
        "{error}"
    );
    assert_eq!(fixture.get(), "green");

    let output = fixture.bluegreen.ok(&["rollback"]);
    assert!(
        output.starts_with(
            "blue accepts connections (no health check configured)\nweb: green -> blue"
        ),
        "{output}"
    );
    assert_eq!(fixture.get(), "blue");
    assert_eq!(fixture.bluegreen.active(), "blue");
}

#[test]
fn a_graceful_switch_after_a_forced_one_leaves_flows_on_the_forced_color() {
    let fixture = Fixture::new();
    fixture.up();
    let mut idle = fixture.keep_alive();
    assert_eq!(idle.get().expect("first request"), "blue");

    fixture.bluegreen.ok(&["switch", "green", "--force"]);
    fixture.bluegreen.ok(&["switch", "blue"]);
    // The idle connection has not sent since the force, yet it belongs to
    // green now: a drain of green must wait for it.
    assert_eq!(active_flows(&fixture, "green"), 1);
    assert_eq!(active_flows(&fixture, "blue"), 0);
    let error = idle
        .get()
        .expect_err("its next packet reaches green, which resets it");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
        ),
        "{error}"
    );
    assert_eq!(
        fixture.get(),
        "blue",
        "new connections follow the graceful switch"
    );
}

#[test]
fn wait_drain_waits_for_the_old_color_and_times_out_with_exit_code_3() {
    let fixture = Fixture::new();
    let config = fixture.write_config(&closing_config(1));
    fixture.up_with_config(&config);
    let mut kept = fixture.keep_alive();
    assert_eq!(kept.get().expect("request"), "blue");

    let run = fixture
        .bluegreen
        .run(&["switch", "green", "--wait-drain=1"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stdout.contains("draining blue: 1 live flows"),
        "{run:?}"
    );
    assert!(run.stderr.contains("NOT safe to stop"), "{run:?}");

    drop(kept);
    let started = Instant::now();
    let run = fixture
        .bluegreen
        .run(&["switch", "green", "--wait-drain=20"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("already green"), "{run:?}");
    assert!(run.stdout.contains("blue has drained"), "{run:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a closed connection drains after the 1 s closing timeout"
    );
}

#[test]
fn no_request_fails_while_switching_back_and_forth() {
    let fixture = Fixture::new();
    fixture.up();
    // Far more requests than 50 switches take, however fast the machine
    // serves them: the load is stopped once the switches are done.
    let load = fixture.load(4, 100_000, Duration::from_secs(90));
    for switches in 0..50 {
        assert!(
            !load.is_finished(),
            "the load ended after {switches} switches, before the 50th"
        );
        let color = if switches % 2 == 0 { "green" } else { "blue" };
        fixture.bluegreen.ok(&["switch", color]);
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = load.finish(true);
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed: {report:?}",
        report.failures.len(),
        report.succeeded() + report.failures.len() as u64
    );
    assert!(report.succeeded() >= 200, "too little load: {report:?}");
    assert!(
        report.served_by.get("blue").is_some_and(|count| *count > 0),
        "{report:?}"
    );
    assert!(
        report
            .served_by
            .get("green")
            .is_some_and(|count| *count > 0),
        "{report:?}"
    );
}

#[test]
fn daemon_crash_restart_and_hot_upgrade_lose_nothing() {
    let fixture = Fixture::new();
    let config = fixture.write_config(&closing_config(10));
    let daemon = fixture.start_daemon(&config, &[]);
    fixture.bluegreen.ok(&["switch", "green"]);
    let mut kept = fixture.keep_alive();
    assert_eq!(kept.get().expect("request"), "green");

    // More than the crash, restart and upgrade can see finish, however
    // fast the backends answer: stopped once they are done.
    let load = fixture.load(4, 100_000, Duration::from_secs(90));
    while load.progress() < 300 {
        std::thread::sleep(Duration::from_millis(10));
    }
    daemon.kill();
    assert_eq!(
        fixture.bluegreen.active(),
        "green",
        "a crash changes no color"
    );

    let restarted = fixture.start_daemon(&config, &[]);
    assert_eq!(
        fixture.bluegreen.active(),
        "green",
        "the restart keeps the pinned color"
    );

    let output = fixture.up_with_config(&config);
    assert!(output.contains("hot-upgraded"), "{output}");
    assert_eq!(kept.get().expect("kept connection after upgrade"), "green");

    // Served on after the upgrade too, then stopped: not one failed.
    let upgraded_at = load.progress();
    let deadline = Instant::now() + Duration::from_secs(20);
    while load.progress() < upgraded_at + 300 {
        assert!(
            !load.is_finished() && Instant::now() < deadline,
            "the load stopped being served after the upgrade"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = load.finish(true);
    assert!(
        report.failures.is_empty(),
        "{} failed: {:?}",
        report.failures.len(),
        report.failures
    );

    // SIGTERM: the daemon exits and the dataplane stays.
    let status = restarted.terminate();
    assert!(status.success(), "{status}");
    assert_eq!(fixture.get(), "green");
}

#[test]
fn a_reboot_restores_the_last_active_color() {
    let fixture = Fixture::new();
    fixture.up();
    fixture.bluegreen.ok(&["switch", "green"]);
    // A reboot empties bpffs and detaches everything; the state file stays.
    let layout = fixture.bluegreen.pin_dir.clone();
    std::fs::remove_dir_all(&layout)
        .or_else(|_| {
            for path in fixture.bluegreen.pins().iter().rev() {
                let _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir(path));
            }
            std::fs::remove_dir(&layout)
        })
        .expect("remove pins");
    assert!(fixture.bluegreen.state_file().exists());
    // Unpinned links are released by the kernel's deferred work, not at
    // once: give it a bounded moment.
    let unpinned = std::time::Instant::now();
    while !fixture.get().starts_with("error") {
        assert!(
            unpinned.elapsed() < std::time::Duration::from_secs(5),
            "traffic still steered 5 s after the reboot's unpinning"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let output = fixture.up();
    assert!(output.contains("restored active color green"), "{output}");
    assert_eq!(fixture.bluegreen.active(), "green");
    assert_eq!(fixture.get(), "green");
}

/// Runs a command that must fail, and checks it printed one clear line,
/// exited with `code`, and changed neither status nor pins.
fn refused<S: AsRef<str>>(fixture: &Fixture, args: &[S], code: i32, expected: &str) {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let status_before = strip_counters(fixture.bluegreen.status());
    let pins_before = fixture.bluegreen.pins();
    let run = fixture.bluegreen.run(&args);
    assert_eq!(run.code, code, "bluegreen {args:?}: {run:?}");
    assert!(
        run.stderr.contains(expected),
        "bluegreen {args:?}: expected {expected:?} in {run:?}"
    );
    assert_eq!(
        strip_counters(fixture.bluegreen.status()),
        status_before,
        "{args:?} changed status"
    );
    assert_eq!(
        fixture.bluegreen.pins(),
        pins_before,
        "{args:?} changed pins"
    );
}

fn strip_counters(mut status: serde_json::Value) -> serde_json::Value {
    status["interfaces"][0]["passed"] = serde_json::Value::Null;
    status
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let fixture = Fixture::new();
    fixture.up();
    let vip = vip().to_string();
    let blue = blue_backend().to_string();
    let green = green_backend().to_string();
    let up = |iface: &'static str, vip: String, blue: String| {
        vec!["up", "--iface", iface, "--service", "web", "--vip"]
            .into_iter()
            .map(str::to_owned)
            .chain([vip, "--blue".into(), blue, "--green".into(), green.clone()])
            .collect::<Vec<String>>()
    };

    refused(&fixture, &["switch", "purple"], 2, "invalid value 'purple'");
    refused(
        &fixture,
        &["switch", "green", "--service", "nope"],
        1,
        "no service named \"nope\"; known services: web",
    );
    let cases = [
        (
            up(SWITCH_IFACE, addr::VIP_V4.to_owned(), blue.clone()),
            2,
            "the port is missing",
        ),
        (
            up(SWITCH_IFACE, vip.clone(), "[fd00:bb::2:2]:8080".to_owned()),
            1,
            "share one address family",
        ),
        (
            up("nope0", vip.clone(), blue.clone()),
            1,
            "interface nope0 does not exist",
        ),
        (
            up(SWITCH_IFACE, vip.clone(), vip.clone()),
            1,
            "cannot be the VIP itself",
        ),
    ];
    for (args, code, expected) in cases {
        refused(&fixture, &args, code, expected);
    }
    refused(
        &fixture,
        &["set-backend", "green", "[fd00:bb::3:2]:8080"],
        1,
        "share one address family",
    );
    refused(
        &fixture,
        &["set-backend", "green", &blue],
        1,
        "is already a blue backend",
    );

    let bad_config = fixture.write_config(&closing_config(5).replace(&vip, "10.200.100.1"));
    refused(
        &fixture,
        &["up", "--iface", SWITCH_IFACE, "--config", &bad_config],
        1,
        ".toml:8: service[0].vip: invalid address",
    );

    let not_bpffs = Command::new(bluegreen_testbed::cli::binary())
        .args(["--pin-dir", "/tmp", "status"])
        .output()
        .expect("run bluegreen");
    assert_eq!(not_bpffs.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&not_bpffs.stderr);
    assert!(
        stderr.contains("/tmp is not on a BPF filesystem: mount one with"),
        "{stderr}"
    );

    // Not root: every command says so, before it reads a directory that
    // only root may list (the instance's state directory is one).
    let (pin_dir, state_dir) = (
        fixture.bluegreen.pin_dir.to_str().expect("utf-8"),
        fixture.bluegreen.state_dir.to_str().expect("utf-8"),
    );
    let standard_up = up_args();
    let commands: [&[&str]; 10] = [
        &["switch", "green"],
        &["rollback"],
        &["verify", "green"],
        &["shift", "green", "--steps", "50", "--interval", "1s"],
        &["status"],
        &["status", "--service", "web"],
        &["preview", "list"],
        &["backend", "drain", "green", &green],
        &["down", "--iface", SWITCH_IFACE],
        &strs(&standard_up),
    ];
    for args in commands {
        let unprivileged = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bluegreen_testbed::cli::binary())
            .args(["--pin-dir", pin_dir, "--state-dir", state_dir])
            .args(args)
            .output()
            .expect("run setpriv");
        let stderr = String::from_utf8_lossy(&unprivileged.stderr);
        assert_eq!(unprivileged.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("must run as root"), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    }
    assert_eq!(fixture.bluegreen.active(), "blue");

    // Every message above is a single line.
    let run = fixture
        .bluegreen
        .run(&["switch", "green", "--service", "nope"]);
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{run:?}");
}

#[test]
fn commands_need_an_instance_that_is_up() {
    let fixture = Fixture::new();
    let run = fixture.bluegreen.run(&["switch", "green"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("bluegreen is not up: start it with"),
        "{run:?}"
    );
    let run = fixture.bluegreen.run(&["down", "--iface", SWITCH_IFACE]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(fixture.bluegreen.pins().is_empty());
}

fn create_map(path: &std::path::Path, value_size: u32) {
    bluegreen_testbed::netns::run(
        "bpftool",
        &[
            "map",
            "create",
            path.to_str().expect("utf-8"),
            "type",
            "hash",
            "key",
            "20",
            "value",
            &value_size.to_string(),
            "entries",
            "1024",
            "name",
            "BG_SERVICES",
            "flags",
            "1",
        ],
    );
}

#[test]
fn pins_of_another_layout_are_refused_not_misread() {
    let fixture = Fixture::new();
    let dir = fixture.bluegreen.interface_pins();
    std::fs::create_dir_all(&dir).expect("create pin dir");
    create_map(&dir.join("BG_SERVICES"), 8);
    let pins_before = fixture.bluegreen.pins();
    let args = up_args();
    let run = fixture.bluegreen.run(&strs(&args));
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "does not match this version (key/value size 20/8, expected 20/{})",
            size_of::<ServiceState>()
        )),
        "{run:?}"
    );
    assert_eq!(
        fixture.bluegreen.pins(),
        pins_before,
        "a refused up leaves pins alone"
    );
    let link = fixture
        .topology
        .switch
        .exec("ip", &["-d", "link", "show", SWITCH_IFACE]);
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
        "nothing attached"
    );
    std::fs::remove_file(dir.join("BG_SERVICES")).expect("remove fake map");

    let older = LAYOUT_VERSION - 1;
    let old = fixture
        .bluegreen
        .pin_dir
        .join(layout_dir(older))
        .join(SWITCH_IFACE);
    std::fs::create_dir_all(&old).expect("create old layout dir");
    let run = fixture.bluegreen.run(&strs(&args));
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "holds maps of layout v{older}, but this bluegreen uses layout {LAYOUT_VERSION}"
        )),
        "{run:?}"
    );
    std::fs::remove_dir(&old).expect("remove old layout dir");
}

#[test]
fn concurrent_switches_leave_a_consistent_state() {
    let fixture = Fixture::new();
    fixture.up();
    std::thread::scope(|scope| {
        for color in ["green", "blue"] {
            let bluegreen = &fixture.bluegreen;
            scope.spawn(move || {
                for _ in 0..20 {
                    bluegreen.ok(&["switch", color]);
                    bluegreen.ok(&["rollback"]);
                }
            });
        }
    });
    let service = fixture.service_status();
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture.bluegreen.state_file()).expect("state file"),
    )
    .expect("state JSON");
    let record = &state["services"][0];
    assert_eq!(
        service["active"], record["active"],
        "map and state file agree"
    );
    assert_eq!(
        service["previous"], record["previous"],
        "map and state file agree"
    );
    assert_ne!(service["active"], service["previous"], "{service}");
    let expected = service["active"].as_str().expect("color").to_owned();
    assert_eq!(fixture.get(), expected);
}

#[test]
fn down_leaves_nothing_behind() {
    let fixture = Fixture::new();
    fixture.up();
    assert_eq!(fixture.get(), "blue");
    // While up, pins and state are root-only.
    let mode = |path: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let layout = fixture.bluegreen.interface_pins();
    for dir in [
        &fixture.bluegreen.pin_dir,
        &layout,
        &fixture.bluegreen.state_dir,
    ] {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    assert_eq!(mode(&fixture.bluegreen.state_file()), 0o600);
    let output = fixture.bluegreen.ok(&["down", "--iface", SWITCH_IFACE]);
    assert!(output.contains("down on s0"), "{output}");
    assert!(
        fixture.bluegreen.pins().is_empty(),
        "{:?}",
        fixture.bluegreen.pins()
    );
    assert!(!fixture.bluegreen.pin_dir.exists());
    assert!(!fixture.bluegreen.state_file().exists());
    let link = fixture
        .topology
        .switch
        .exec("ip", &["-d", "link", "show", SWITCH_IFACE]);
    assert!(!String::from_utf8_lossy(&link.stdout).contains("prog/xdp"));
    let net = fixture
        .topology
        .switch
        .exec("bpftool", &["net", "show", "dev", SWITCH_IFACE]);
    assert!(
        !String::from_utf8_lossy(&net.stdout).contains("bluegreen"),
        "{net:?}"
    );
    assert!(
        fixture.get().starts_with("error"),
        "the VIP is no longer steered"
    );
}

#[test]
fn removing_a_service_stops_steering_its_open_connections() {
    let fixture = Fixture::new();
    // A UDP service on the same VIP and port keeps both prefilters letting
    // the TCP connection's packets through after the TCP service is gone:
    // what must stop them is the flow-table fast path noticing its service
    // went away.
    let udp_twin = format!(
        "\n[[service]]\nname = \"dns\"\nproto = \"udp\"\nvip = \"{}\"\nblue = \"{}\"\ngreen = \"{}\"\n",
        vip(),
        blue_backend(),
        green_backend()
    );
    let both = fixture.write_config(&format!("{}{udp_twin}", config_text("", "")));
    fixture.up_with_config(&both);
    let mut kept = fixture.keep_alive();
    assert_eq!(kept.get().expect("request"), "blue");

    let only_udp = format!("interface = \"{SWITCH_IFACE}\"\n{udp_twin}");
    let output = fixture.up_with_config(&fixture.write_config(&only_udp));
    assert!(output.contains("hot-upgraded"), "{output}");
    let status = fixture.bluegreen.status();
    let services = status["interfaces"][0]["services"]
        .as_array()
        .expect("services");
    assert_eq!(services.len(), 1, "{status}");
    assert_eq!(services[0]["name"], "dns");
    assert!(
        kept.get().is_err(),
        "the removed service's connection is no longer rewritten to its backend"
    );
}

#[test]
fn missing_capabilities_are_named_and_leave_nothing_behind() {
    let fixture = Fixture::new();
    // Root, but without the capabilities eBPF needs (as in a locked-down
    // unit or container).
    // `nsenter --net=NS bluegreen ...`: setpriv goes between the two, as
    // entering the namespace itself needs CAP_SYS_ADMIN.
    let command = fixture.bluegreen.command(&strs(&up_args()));
    let mut args = command.get_args();
    let enter = args.next().expect("nsenter's --net argument").to_owned();
    let output = Command::new(command.get_program())
        .arg(enter)
        .args([
            "setpriv",
            "--bounding-set=-bpf,-net_admin,-perfmon,-sys_admin",
            "--inh-caps=-all",
        ])
        .args(args)
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the kernel refused (operation not permitted); bluegreen needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        fixture.bluegreen.pins().is_empty(),
        "{:?}",
        fixture.bluegreen.pins()
    );
    assert!(!fixture.bluegreen.state_file().exists());
    let link = fixture
        .topology
        .switch
        .exec("ip", &["-d", "link", "show", SWITCH_IFACE]);
    assert!(!String::from_utf8_lossy(&link.stdout).contains("prog/xdp"));
}

#[test]
fn unusable_addresses_and_unsafe_health_checks_are_refused_and_change_nothing() {
    let fixture = Fixture::new();
    fixture.up();
    let up_with = |flag: &str, value: &str| {
        let mut args = up_args();
        let at = args
            .iter()
            .position(|arg| arg == flag)
            .unwrap_or_else(|| panic!("{flag} in {args:?}"));
        args[at + 1] = value.to_owned();
        args
    };
    let cases = [
        (
            up_with("--vip", "127.0.0.1:80"),
            "service web: VIP 127.0.0.1:80 is a loopback address",
        ),
        (
            up_with("--vip", "255.255.255.255:80"),
            "VIP 255.255.255.255:80 is the broadcast address",
        ),
        (
            up_with("--blue", "127.0.0.1:8080"),
            "blue backend 127.0.0.1:8080 is a loopback address, which XDP cannot forward packets to",
        ),
        (
            up_with("--green", "224.0.0.9:8080"),
            "green backend 224.0.0.9:8080 is a multicast address",
        ),
        (
            [
                up_args(),
                vec!["--check".to_owned(), "http:/h\r\nX-Injected: 1".to_owned()],
            ]
            .concat(),
            "contains a control character",
        ),
    ];
    for (args, expected) in cases {
        refused(&fixture, &args, 1, expected);
    }
    let port_zero = fixture.write_config(&config_text(
        "",
        "\n[service.health]\nkind = \"tcp\"\nport = 0\n",
    ));
    refused(
        &fixture,
        &["up", "--iface", SWITCH_IFACE, "--config", &port_zero],
        1,
        ".toml:9: service[0].health: port 0 cannot be probed: name the health port",
    );
}

#[test]
fn status_watch_shows_live_rates_per_color() {
    let fixture = Fixture::new();
    fixture.up();
    // More than the watch can see finish, however fast the backends
    // answer: the load is stopped once the watch is done.
    let load = fixture.load(2, 100_000, Duration::from_secs(20));
    let output = fixture
        .bluegreen
        .ok(&["status", "--watch", "0.5", "--count", "3"]);
    assert!(
        !load.is_finished(),
        "the load ran out before the watch ended"
    );
    assert!(load.finish(true).failures.is_empty());

    let frames: Vec<&str> = output.split("\n\n").collect();
    assert_eq!(frames.len(), 3, "three refreshes: {output}");
    assert!(
        frames[0].contains("..."),
        "the first frame has no earlier reading to compute a rate from: {output}"
    );
    let blue_rates: Vec<(f64, f64)> = frames[1..]
        .iter()
        .map(|frame| {
            let line = frame
                .lines()
                .find(|line| line.contains("*blue"))
                .unwrap_or_else(|| panic!("no active blue row in {frame}"));
            let numbers: Vec<f64> = line
                .split_whitespace()
                .filter_map(|field| field.parse().ok())
                .collect();
            (numbers[0], numbers[1])
        })
        .collect();
    assert!(
        blue_rates
            .iter()
            .any(|&(packets, new_flows)| packets > 0.0 && new_flows > 0.0),
        "blue carried the load: {blue_rates:?} in {output}"
    );
    let green_idle = frames[1..].iter().all(|frame| {
        frame
            .lines()
            .find(|line| line.contains("green"))
            .is_some_and(|line| line.contains(" 0.0 "))
    });
    assert!(green_idle, "green got nothing: {output}");
}

/// `bluegreen status | head`: a reader that hung up ends the command
/// quietly, with the shell's code for SIGPIPE, never with a panic's
/// backtrace.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let fixture = Fixture::new();
    fixture.up();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["status", "--watch", "1", "--count", "1"],
        &["man"],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let output = fixture
            .bluegreen
            .command(args)
            .stdout(writer)
            .output()
            .unwrap_or_else(|error| panic!("cannot run bluegreen {args:?}: {error}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.is_empty(),
            "bluegreen {args:?} into a closed pipe wrote to stderr: {stderr}"
        );
        assert_eq!(
            output.status.code(),
            Some(128 + libc::SIGPIPE),
            "bluegreen {args:?} into a closed pipe: {:?}",
            output.status
        );
    }
}

/// A VIP belongs to one interface: `up` of a second interface with a
/// service on a VIP the first serves is refused before anything is loaded
/// (host-local clients and replies would follow only one of them); a
/// service of its own on the same interface is no conflict.
#[test]
fn the_same_vip_on_a_second_interface_is_refused() {
    let fixture = Fixture::new();
    fixture.up();
    let second = "s9";
    fixture
        .topology
        .switch
        .ip(&["link", "add", second, "type", "veth", "peer", "name", "s9p"]);
    for device in [second, "s9p"] {
        fixture.topology.switch.ip(&["link", "set", device, "up"]);
    }
    let on_second = |name: &str, vip: &str| {
        [
            "up",
            "--iface",
            second,
            "--service",
            name,
            "--vip",
            vip,
            "--blue",
            "10.200.2.2:8090",
            "--green",
            "10.200.3.2:8090",
        ]
        .map(str::to_owned)
    };
    refused(
        &fixture,
        &on_second("again", &vip().to_string()),
        1,
        &format!("service again: {}/tcp is already served on s0", vip()),
    );
    assert!(
        !fixture
            .bluegreen
            .pin_dir
            .join(layout_dir(LAYOUT_VERSION))
            .join(second)
            .exists(),
        "a refused up left pins for {second}"
    );
    // The interface that serves it may apply it again.
    fixture.up();
}

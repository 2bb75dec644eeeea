//! A command on one service opens that service's interface alone, however
//! many interfaces are up: the pins it opens, counted with strace, are the
//! same with 1 and with 8; a daemon's checks open its own interface's. The state files only say where to look: one
//! that names a service its interface does not have sends the command to
//! the maps.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use bluegreen_testbed::{
    cli::binary,
    fixture::{Fixture, OtherInterfaces, config_text},
};

/// The pins a strace trace of `bpf` calls shows opened (one path per
/// `bpf(BPF_OBJ_GET)` call, in call order); panics if there is none, since
/// every trace here covers work on the maps: none means the trace was not
/// understood.
fn pins_in(trace: &Path) -> Vec<PathBuf> {
    let traced = fs::read_to_string(trace);
    let _ = fs::remove_file(trace);
    let traced = traced.unwrap_or_else(|error| panic!("{}: {error}", trace.display()));
    let pins: Vec<PathBuf> = traced
        .lines()
        .filter_map(|line| {
            let call = line.split_once("bpf(BPF_OBJ_GET, {pathname=\"")?.1;
            Some(PathBuf::from(call.split_once('"')?.0))
        })
        .collect();
    assert!(!pins.is_empty(), "no BPF_OBJ_GET in the trace:\n{traced}");
    pins
}

/// Where a test's trace goes: beside its state directory.
fn trace_file(fixture: &Fixture) -> PathBuf {
    fixture.bluegreen.state_dir.with_extension("trace")
}

/// The pins one bluegreen run opened, traced with strace in the switch
/// namespace; the run must succeed.
fn opened_pins(fixture: &Fixture, args: &[&str]) -> Vec<PathBuf> {
    let trace = trace_file(fixture);
    let output = Command::new("nsenter")
        .arg(format!(
            "--net={}",
            fixture.topology.switch.path().display()
        ))
        .args(["strace", "-f", "-qq", "-e", "trace=bpf", "-o"])
        .arg(&trace)
        .arg(binary())
        .arg("--pin-dir")
        .arg(&fixture.bluegreen.pin_dir)
        .arg("--state-dir")
        .arg(&fixture.bluegreen.state_dir)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run strace");
    let pins = pins_in(&trace);
    assert!(
        output.status.success(),
        "bluegreen {args:?} under strace: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    pins
}

#[test]
fn a_command_on_one_service_opens_its_interface_alone() {
    let fixture = Fixture::new();
    fixture.up();
    let own = fixture.bluegreen.interface_pins();
    let commands: [&[&str]; 3] = [
        &["-q", "switch", "green", "--service", "web"],
        &["-q", "rollback", "--service", "web"],
        &["-q", "status", "--service", "web"],
    ];
    let alone: Vec<Vec<PathBuf>> = commands
        .iter()
        .map(|args| opened_pins(&fixture, args))
        .collect();
    assert_eq!(fixture.get(), "blue", "switched and rolled back");

    let _others = OtherInterfaces::up(&fixture.bluegreen, &fixture.topology.switch, 7);
    let listed = fixture.bluegreen.status()["interfaces"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(listed, 8, "8 interfaces up");
    for (args, alone) in commands.iter().zip(&alone) {
        let among_eight = opened_pins(&fixture, args);
        let elsewhere: Vec<&PathBuf> = among_eight
            .iter()
            .filter(|pin| !pin.starts_with(&own))
            .collect();
        assert!(
            elsewhere.is_empty(),
            "{args:?} with 8 interfaces up opened other interfaces' pins: {elsewhere:?}"
        );
        assert_eq!(
            among_eight.len(),
            alone.len(),
            "{args:?}: BPF_OBJ_GET calls with 8 interfaces up against 1"
        );
    }
    assert_eq!(fixture.get(), "blue", "switched and rolled back among 8");
    let status = fixture.bluegreen.status();
    for interface in status["interfaces"].as_array().expect("interfaces") {
        for service in interface["services"].as_array().expect("services") {
            assert_eq!(service["active"], "blue", "{status}");
        }
    }
}

#[test]
fn a_state_file_naming_a_service_its_interface_lacks_is_corrected_from_the_maps() {
    let fixture = Fixture::new();
    fixture.up();
    let _others = OtherInterfaces::up(&fixture.bluegreen, &fixture.topology.switch, 1);
    // o1's file claims web, as one left behind by a service that moved
    // would; o1 sorts first, so it is the first file read.
    let own = fs::read_to_string(fixture.bluegreen.state_file()).expect("state file");
    let mut stale: serde_json::Value = serde_json::from_str(&own).expect("JSON");
    stale["interface"] = "o1".into();
    let stale_file = fixture.bluegreen.state_dir.join("o1.json");
    fs::write(&stale_file, stale.to_string()).expect("write o1.json");

    let run = fixture
        .bluegreen
        .run(&["switch", "green", "--service", "web"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("o1.json disagrees with the maps"),
        "the read of o1 rewrote its file: {run:?}"
    );
    assert_eq!(fixture.get(), "green");
    let status = fixture.bluegreen.status();
    let interfaces = status["interfaces"].as_array().expect("interfaces");
    let services = |iface: &str| -> Vec<(String, String)> {
        interfaces
            .iter()
            .find(|interface| interface["interface"] == iface)
            .and_then(|interface| interface["services"].as_array())
            .unwrap_or_else(|| panic!("{iface} in {status}"))
            .iter()
            .map(|service| {
                (
                    service["name"].as_str().unwrap_or_default().to_owned(),
                    service["active"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(services("s0"), [("web".to_owned(), "green".to_owned())]);
    // o1's maps hold their own service, under its VIP until `up` brings
    // its name back: the stale file knew nothing else.
    assert_eq!(
        services("o1"),
        [("10.200.101.1:80/tcp".to_owned(), "blue".to_owned())]
    );
    let rewritten = fs::read_to_string(&stale_file).expect("o1.json");
    assert!(!rewritten.contains("\"web\""), "{rewritten}");
}

#[test]
fn a_daemon_checks_its_services_on_its_own_interface_alone() {
    let fixture = Fixture::new();
    let _others = OtherInterfaces::up(&fixture.bluegreen, &fixture.topology.switch, 7);
    // Checks every 100 ms: each reads the service's state first.
    let check = "\n[service.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = 100\ntimeout_ms = 50\n";
    let config = fixture.write_config(&config_text("", check));
    let daemon = fixture.start_daemon(&config, &[]);

    let trace = trace_file(&fixture);
    let mut strace = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=bpf", "-o"])
        .arg(&trace)
        .args(["-p", &daemon.pid().to_string()])
        .spawn()
        .expect("start strace");
    // Traced until it has looked the service up a few times: the first
    // lookup after strace attached, which a loaded machine may delay, then
    // half a second (five checks) more.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !fs::read_to_string(&trace).is_ok_and(|traced| traced.contains("BPF_OBJ_GET")) {
        if Instant::now() > deadline {
            let _ = strace.kill();
            let _ = strace.wait();
            panic!("the daemon opened no pin within 15 s of strace attaching");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling a child we spawned and have not reaped; SIGINT
    // makes strace detach and exit.
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while strace.try_wait().expect("wait for strace").is_none() {
        if Instant::now() > deadline {
            let _ = strace.kill();
            let _ = strace.wait();
            panic!("strace did not stop within 5 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pins = pins_in(&trace);
    let own = fixture.bluegreen.interface_pins();
    let elsewhere: Vec<&PathBuf> = pins.iter().filter(|pin| !pin.starts_with(&own)).collect();
    assert!(
        elsewhere.is_empty(),
        "the daemon on s0 opened other interfaces' pins: {elsewhere:?}"
    );
}

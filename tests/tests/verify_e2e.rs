//! Release verification through the real binary: the commands gate
//! refuses a switch or rollback with the command's output, kills a hung
//! command at its timeout (its children too), and `verify` reproduces
//! each verdict; the warm-up sends exactly its requests to every backend
//! of the target color and none to the live one.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use bluegreen_testbed::{
    cli::CliRun,
    fixture::{Fixture, blue_backend, config_text, green_backend, replica, start_replica, vip},
    http::Request,
    netns::SWITCH_IFACE,
};

/// Prints `EVAL-FAILED-42`: the arithmetic keeps the marker out of the
/// command line itself, so finding it proves the output was captured.
const FAILING: &str = r#"
[service.verify]
commands = [["/bin/true"], ["/bin/sh", "-c", "echo checking $BLUEGREEN_COLOR; echo EVAL-FAILED-$((6*7)) >&2; exit 1"]]
timeout_secs = 30
"#;

const PASSING: &str = r#"
[service.verify]
commands = [["/bin/sh", "-c", "env | grep ^BLUEGREEN_ | sort"]]
"#;

/// A command whose child would sleep 30 s, which it reports by pid.
const HANGING: &str = r#"
[service.verify]
commands = [["/bin/sh", "-c", "sleep 30 & echo SLEEPER=$!; wait"]]
timeout_secs = 1
"#;

fn refused(run: &CliRun, what: &str) {
    assert_eq!(
        run.code, 1,
        "{what} must be refused:\nstdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
}

/// The log file a refusal or a `verify` report names.
fn log_path(text: &str) -> String {
    let start = text
        .find("/verify/web-")
        .unwrap_or_else(|| panic!("no log path in {text}"));
    let begin = text[..start]
        .rfind([' ', '\n'])
        .map_or(0, |space| space + 1);
    let end = start + text[start..].find(".log").expect("a .log file") + ".log".len();
    text[begin..end].to_owned()
}

#[test]
fn a_failing_command_refuses_switch_and_rollback_and_verify_says_so() {
    let fixture = Fixture::new();
    let config = fixture.write_config(&config_text("", FAILING));
    fixture.up_with_config(&config);
    let state = std::fs::read(fixture.bluegreen.state_file()).expect("state file");

    let run = fixture.bluegreen.run(&["switch", "green"]);
    refused(&run, "a switch to a color whose evaluation fails");
    assert!(run.stderr.contains("EVAL-FAILED-42"), "{}", run.stderr);
    assert!(run.stderr.contains("checking green"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("green failed its commands gate (/bin/sh -c"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("exit status 1"), "{}", run.stderr);
    assert!(
        run.stderr.contains("traffic stays on blue"),
        "{}",
        run.stderr
    );
    let log = log_path(&run.stderr);
    assert!(
        log.starts_with(&format!(
            "{}/verify/",
            fixture.bluegreen.state_dir.display()
        )),
        "{log}"
    );
    let output = std::fs::read_to_string(&log).expect("the log the refusal names");
    assert!(output.contains("EVAL-FAILED-42"), "{output}");
    assert_eq!(fixture.get(), "blue");
    assert_eq!(fixture.bluegreen.active(), "blue");
    assert_eq!(
        std::fs::read(fixture.bluegreen.state_file()).expect("state file"),
        state,
        "a refused switch changes no state"
    );

    let run = fixture.bluegreen.run(&["verify", "green"]);
    refused(&run, "verify of the failing color");
    assert!(
        run.stdout.contains("green FAILED its commands gate"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("EVAL-FAILED-42"), "{}", run.stdout);

    // --skip-check goes ahead, and says which gate it skipped.
    let run = fixture.bluegreen.run(&["switch", "green", "--skip-check"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("release gates skipped on request (--skip-check): commands"),
        "{}",
        run.stderr
    );
    assert_eq!(fixture.get(), "green");

    // A rollback runs the gates against the color it returns to.
    let run = fixture.bluegreen.run(&["rollback"]);
    refused(&run, "a rollback to a color whose evaluation fails");
    assert!(run.stderr.contains("checking blue"), "{}", run.stderr);
    assert!(
        run.stderr.contains("traffic stays on green"),
        "{}",
        run.stderr
    );
    assert_eq!(fixture.get(), "green");
    fixture.bluegreen.ok(&["rollback", "--skip-check"]);
    assert_eq!(fixture.get(), "blue");

    // `up` replaces the gates; the command sees the target in its
    // environment.
    let config = fixture.write_config(&config_text("", PASSING));
    fixture.up_with_config(&config);
    let report = fixture.bluegreen.ok(&["verify", "green"]);
    assert!(
        report.contains("web: green passed every release gate"),
        "{report}"
    );
    let env = std::fs::read_to_string(log_path(&report)).expect("the log verify names");
    for line in [
        "BLUEGREEN_SERVICE=web".to_owned(),
        "BLUEGREEN_COLOR=green".to_owned(),
        format!("BLUEGREEN_VIP={}", vip()),
        "BLUEGREEN_PROTO=tcp".to_owned(),
        format!("BLUEGREEN_BACKENDS={}", green_backend()),
    ] {
        assert!(env.lines().any(|seen| seen == line), "{line} in {env}");
    }
    let switched = fixture.bluegreen.ok(&["switch", "green"]);
    assert!(
        switched.contains("green passed its commands gate"),
        "{switched}"
    );
    assert_eq!(fixture.get(), "green");
}

/// Whether `pid` has ended (gone, or a zombie waiting for its reaper).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[test]
fn a_hanging_command_is_killed_at_its_timeout_with_its_children() {
    let fixture = Fixture::new();
    let config = fixture.write_config(&config_text("", HANGING));
    fixture.up_with_config(&config);

    let started = Instant::now();
    let run = fixture.bluegreen.run(&["switch", "green"]);
    let took = started.elapsed();
    refused(&run, "a switch whose evaluation hangs");
    assert!(
        (Duration::from_secs(1)..Duration::from_secs(5)).contains(&took),
        "killed at its 1 s timeout, not after {took:?}"
    );
    assert!(
        run.stderr.contains("timed out: killed at its 1 s timeout"),
        "{}",
        run.stderr
    );
    let sleeper: u32 = run
        .stderr
        .lines()
        .find_map(|line| line.trim().strip_prefix("SLEEPER=")?.parse().ok())
        .unwrap_or_else(|| panic!("the sleeper's pid in {}", run.stderr));
    let deadline = Instant::now() + Duration::from_secs(2);
    while !ended(sleeper) {
        assert!(
            Instant::now() < deadline,
            "the command's child {sleeper} outlived its timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fixture.get(), "blue");
    assert_eq!(fixture.bluegreen.active(), "blue");

    let started = Instant::now();
    let run = fixture.bluegreen.run(&["verify", "green"]);
    refused(&run, "verify of the hanging color");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(run.stdout.contains("timed out"), "{}", run.stdout);
}

const BODY: &str = r#"{"model": "m", "prompt": "hello", "max_tokens": 8}"#;

fn warmup_config(fixture: &Fixture, green: [std::net::SocketAddr; 2], extra: &str) -> String {
    fixture.write_config(&format!(
        "interface = \"{SWITCH_IFACE}\"\n\n[[service]]\nname = \"web\"\nvip = \"{}\"\nblue = \"{}\"\ngreen = [\"{}\", \"{}\"]\n\n[service.warmup]\nrequests = 5\nmethod = \"POST\"\npath = \"/v1/completions\"\nbody = '{BODY}'\n{extra}",
        vip(),
        blue_backend(),
        green[0],
        green[1],
    ))
}

#[test]
fn warmup_sends_exactly_its_requests_to_each_target_backend_and_none_to_the_live_color() {
    let fixture = Fixture::new();
    let green_2 = start_replica(&fixture.topology.green, "green", 1);
    let green = [green_backend(), replica(green_backend(), 1)];
    let config = warmup_config(&fixture, green, "");
    fixture.up_with_config(&config);

    let switched = fixture.bluegreen.ok(&["switch", "green"]);
    assert!(
        switched.contains("green passed its warm-up gate"),
        "{switched}"
    );
    let warmed = BTreeMap::from([(
        Request {
            method: "POST".to_owned(),
            path: "/v1/completions".to_owned(),
            body: BODY.to_owned(),
        },
        5,
    )]);
    let blue = fixture.backend("blue").expect("blue runs");
    let green_1 = fixture.backend("green").expect("green runs");
    assert_eq!(green_1.requests(), warmed, "{}", green[0]);
    assert_eq!(green_2.requests(), warmed, "{}", green[1]);
    assert_eq!(
        blue.requests(),
        BTreeMap::new(),
        "the live color is not warmed"
    );

    // A status the backends do not answer fails the gate, naming the
    // backend; the traffic stays.
    let config = warmup_config(&fixture, green, "expect_status = 201\n");
    fixture.up_with_config(&config);
    let run = fixture.bluegreen.run(&["switch", "blue"]);
    refused(&run, "a switch whose warm-up gets the wrong status");
    for text in [
        "blue failed its warm-up gate",
        &format!(
            "{}: 5 of 5 failed (first: status 200, expected 201)",
            blue_backend()
        ),
        "traffic stays on green",
    ] {
        assert!(run.stderr.contains(text), "{text} in {}", run.stderr);
    }
    assert_eq!(
        green_1.requests(),
        warmed,
        "a warm-up of blue leaves green alone"
    );
    // Through the VIP: after this, green's counts are no longer warm-up's.
    assert!(fixture.get().starts_with("green"));
    assert_eq!(fixture.bluegreen.active(), "green");
}

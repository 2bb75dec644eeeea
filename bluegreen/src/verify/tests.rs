use std::time::Duration;

use super::*;

fn warmup() -> Warmup {
    Warmup {
        requests: 20,
        method: Method::Post,
        path: "/v1/completions".to_owned(),
        body: Some("{}".to_owned()),
        expect_status: 200,
        timeout_ms: 30_000,
    }
}

#[test]
fn the_tail_keeps_the_last_lines_in_order() {
    let text: String = (1..=30).map(|n| format!("line {n}\n")).collect();
    let last = tail(&text, 20);
    assert_eq!(last.len(), 20);
    assert_eq!(last[0], "line 11");
    assert_eq!(last[19], "line 30");
    assert_eq!(tail("one\ntwo", 20), ["one", "two"]);
    assert!(tail("", 20).is_empty());
}

#[test]
fn percentiles_take_the_nearest_rank() {
    let ms = |n: u64| Duration::from_millis(n);
    let sorted: Vec<Duration> = (1..=10).map(ms).collect();
    assert_eq!(percentile(&sorted, 50), ms(5));
    assert_eq!(percentile(&sorted, 100), ms(10));
    assert_eq!(percentile(&sorted, 0), ms(1));
    assert_eq!(percentile(&[ms(7)], 50), ms(7));
    assert_eq!(percentile(&[], 50), Duration::ZERO);
}

#[test]
fn a_report_fails_with_its_first_failing_gate() {
    let gate = |gate, passed| GateReport {
        gate,
        passed,
        duration: Duration::ZERO,
        detail: String::new(),
        log: None,
        tail: Vec::new(),
        measurement: None,
    };
    let mut report = VerifyReport {
        service: "chat".to_owned(),
        color: Color::Green,
        gates: vec![gate(Gate::Commands, true), gate(Gate::Warmup, true)],
    };
    assert!(report.passed());
    assert_eq!(report.failure(), None);
    report.gates[1].passed = false;
    assert!(!report.passed());
    assert_eq!(
        report.failure().map(|failed| failed.gate),
        Some(Gate::Warmup)
    );
}

#[test]
fn command_gates_need_commands_and_a_timeout() {
    let gate = |commands: Vec<Vec<&str>>, timeout_secs| CommandGate {
        commands: commands
            .into_iter()
            .map(|argv| argv.into_iter().map(str::to_owned).collect())
            .collect(),
        timeout_secs,
    };
    assert_eq!(gate(vec![vec!["/bin/true"]], 600).validate(), Ok(()));
    let refusals = [
        (gate(vec![], 600), "commands is empty"),
        (gate(vec![vec![]], 600), "commands[0] is empty"),
        (
            gate(vec![vec!["/bin/true"], vec![""]], 600),
            "commands[1] has an empty program",
        ),
        (
            gate(vec![vec!["/bin/true"]], 0),
            "timeout_secs 0 is outside",
        ),
        (
            gate(vec![vec!["/bin/true"]], 86_401),
            "timeout_secs 86401 is outside",
        ),
    ];
    for (gate, expected) in refusals {
        let error = gate.validate().expect_err(expected);
        assert!(error.contains(expected), "{error}");
    }
}

#[test]
fn warmups_are_checked_field_by_field() {
    assert_eq!(warmup().validate(), Ok(()));
    let refusals = [
        (
            Warmup {
                requests: 0,
                ..warmup()
            },
            "requests 0 is outside",
        ),
        (
            Warmup {
                requests: 10_001,
                ..warmup()
            },
            "requests 10001 is outside",
        ),
        (
            Warmup {
                path: "v1".to_owned(),
                ..warmup()
            },
            "must start with '/'",
        ),
        (
            Warmup {
                path: "/a\r\nX: y".to_owned(),
                ..warmup()
            },
            "control character",
        ),
        (
            Warmup {
                method: Method::Get,
                ..warmup()
            },
            "a GET carries no body",
        ),
        (
            Warmup {
                expect_status: 99,
                ..warmup()
            },
            "expect_status 99",
        ),
        (
            Warmup {
                expect_status: 600,
                ..warmup()
            },
            "expect_status 600",
        ),
        (
            Warmup {
                timeout_ms: 0,
                ..warmup()
            },
            "timeout_ms 0",
        ),
    ];
    for (warmup, expected) in refusals {
        let error = warmup.validate().expect_err(expected);
        assert!(error.contains(expected), "{error}");
    }
    assert_eq!(
        "PATCH".parse::<Method>(),
        Err("method \"PATCH\" is not GET, POST or PUT".to_owned())
    );
}

#[test]
fn under_systemd_a_command_runs_in_a_transient_unit_with_its_deadline_and_environment() {
    let argv = ["/opt/evals/run.sh".to_owned(), "--quick".to_owned()];
    let env = [("BLUEGREEN_COLOR", "green".to_owned())];
    let shown = |command: &std::process::Command| {
        let mut words = vec![command.get_program().to_string_lossy().into_owned()];
        words.extend(
            command
                .get_args()
                .map(|arg| arg.to_string_lossy().into_owned()),
        );
        words
    };
    let unit = Launcher::SystemdRun.command(&argv, &env, "bluegreen-verify-chat-green-1", 600);
    assert_eq!(
        shown(&unit),
        [
            "systemd-run",
            "--wait",
            "--collect",
            "--quiet",
            "--pipe",
            "--unit=bluegreen-verify-chat-green-1",
            "--property=RuntimeMaxSec=600",
            "--setenv=BLUEGREEN_COLOR=green",
            "--",
            "/opt/evals/run.sh",
            "--quick",
        ]
    );
    let child = Launcher::Child.command(&argv, &env, "unused", 600);
    assert_eq!(shown(&child), ["/opt/evals/run.sh", "--quick"]);
    assert!(
        child
            .get_envs()
            .any(|(name, value)| name == "BLUEGREEN_COLOR"
                && value.is_some_and(|value| value == "green")),
        "the environment goes to the child itself"
    );
}

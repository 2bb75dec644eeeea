use super::*;

const SWITCHED_AT: u64 = 1_000_000;
const WINDOW: Option<u64> = Some(60);

fn serving(idle_flows: u64) -> Serving {
    Serving {
        active: Color::Green,
        idle_share: 0,
        has_preview: false,
        switched_at_unix_ms: Some(SWITCHED_AT),
        idle_flows,
    }
}

fn nobody(_: u32) -> bool {
    false
}

fn everybody(_: u32) -> bool {
    true
}

#[test]
fn the_idle_color_stops_once_drained_and_out_of_its_window() {
    let record = LifecycleRecord::new();
    let after_window = SWITCHED_AT + 60_000;
    assert_eq!(
        plan(WINDOW, &serving(0), &record, nobody, after_window - 1),
        Plan::StopAt {
            color: Color::Blue,
            at_unix_ms: after_window
        }
    );
    assert_eq!(
        plan(WINDOW, &serving(3), &record, nobody, after_window),
        Plan::Draining {
            color: Color::Blue,
            flows: 3
        }
    );
    assert_eq!(
        plan(WINDOW, &serving(0), &record, nobody, after_window),
        Plan::Stop { color: Color::Blue }
    );
    assert_eq!(
        plan(None, &serving(0), &record, nobody, u64::MAX),
        Plan::None
    );
}

#[test]
fn a_held_previewed_weighted_or_switched_to_color_is_never_stopped() {
    let late = SWITCHED_AT + 3_600_000;
    let mut held = LifecycleRecord::new();
    held.blue.held = true;
    let mut switching = LifecycleRecord::new();
    switching.blue.switching_pid = Some(42);
    let weighted = Serving {
        idle_share: 10,
        ..serving(0)
    };
    let previewed = Serving {
        has_preview: true,
        ..serving(0)
    };
    let never_switched = Serving {
        switched_at_unix_ms: None,
        ..serving(0)
    };
    let record = LifecycleRecord::new();
    for (serving, record, why) in [
        (serving(0), &held, "holds it"),
        (serving(0), &switching, "a switch to it"),
        (weighted, &record, "weighted share"),
        (previewed, &record, "preview prefixes"),
        (never_switched, &record, "never live"),
    ] {
        match plan(WINDOW, &serving, record, everybody, late) {
            Plan::StopAfter { color, reason } => {
                assert_eq!(color, Color::Blue);
                assert!(reason.contains(why), "{reason} (wanted {why})");
            }
            other => panic!("{why}: {other:?}"),
        }
    }
    // A switch whose process died holds nothing up.
    assert_eq!(
        plan(WINDOW, &serving(0), &switching, nobody, late),
        Plan::Stop { color: Color::Blue }
    );
}

#[test]
fn a_color_started_after_the_switch_gets_a_window_of_its_own() {
    let mut record = LifecycleRecord::new();
    record.blue.since_unix_ms = SWITCHED_AT + 120_000;
    assert_eq!(
        plan(WINDOW, &serving(0), &record, nobody, SWITCHED_AT + 150_000),
        Plan::StopAt {
            color: Color::Blue,
            at_unix_ms: SWITCHED_AT + 180_000
        }
    );
}

#[test]
fn an_interrupted_stop_resumes_and_an_interrupted_start_is_abandoned() {
    let mut record = LifecycleRecord::new();
    record.blue.phase = Phase::Stopping;
    record.blue.pid = Some(7);
    assert_eq!(
        plan(WINDOW, &serving(0), &record, nobody, SWITCHED_AT),
        Plan::ResumeStop { color: Color::Blue }
    );
    assert_eq!(
        plan(WINDOW, &serving(0), &record, everybody, SWITCHED_AT),
        Plan::None
    );
    record.blue.phase = Phase::Starting;
    assert_eq!(
        plan(None, &serving(0), &record, nobody, SWITCHED_AT),
        Plan::AbandonStart { color: Color::Blue }
    );
    record.blue.phase = Phase::Stopped;
    assert_eq!(
        plan(WINDOW, &serving(0), &record, nobody, u64::MAX),
        Plan::None
    );
}

#[test]
fn commands_get_the_color_and_service_and_bad_settings_are_named() {
    let argv = [
        "systemctl".to_owned(),
        "start".to_owned(),
        "vllm-{service}@{color}.target".to_owned(),
    ];
    assert_eq!(
        Lifecycle::render(&argv, "chat", Color::Green),
        ["systemctl", "start", "vllm-chat@green.target"]
    );
    let good = Lifecycle {
        start: argv.to_vec(),
        stop: argv.to_vec(),
        start_timeout_secs: Lifecycle::DEFAULT_START_TIMEOUT_SECS,
        ready_timeout_secs: Lifecycle::DEFAULT_READY_TIMEOUT_SECS,
        stop_timeout_secs: Lifecycle::DEFAULT_STOP_TIMEOUT_SECS,
        scale_down_after_secs: Some(3600),
    };
    assert_eq!(good.validate(), Ok(()));
    for (bad, wanted) in [
        (
            Lifecycle {
                stop: Vec::new(),
                ..good.clone()
            },
            "stop is empty",
        ),
        (
            Lifecycle {
                start: vec![String::new()],
                ..good.clone()
            },
            "start has an empty program",
        ),
        (
            Lifecycle {
                ready_timeout_secs: 0,
                ..good.clone()
            },
            "ready_timeout_secs 0",
        ),
    ] {
        let error = bad.validate().expect_err(wanted);
        assert!(error.contains(wanted), "{error}");
    }
}

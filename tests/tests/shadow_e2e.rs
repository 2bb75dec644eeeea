//! `bluegreen shadow run` end to end: real clients through the VIP, blue
//! live, and green's recording backend receiving the replayed copies.

use std::time::{Duration, Instant};

use bluegreen_testbed::shadow::{Ask, Conversations, RecordingBackend, Reply, ShadowBed, quantile};
use serde_json::Value;

/// Bound of every client run: far above what the loads need, so a stuck
/// run fails the test instead of hanging it.
const CLIENT_LIMIT: Duration = Duration::from_secs(90);

/// A number in a record at a JSON pointer; panics with the record.
fn figure(record: &Value, pointer: &str) -> f64 {
    record
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {record:#}"))
}

/// Why a record's run ended (`duration_ended`, ...).
fn stop_reason(record: &Value) -> &str {
    record
        .pointer("/stopped/reason/reason")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("record not stopped: {record:#}"))
}

/// A body size from 16 bytes to about 20 KB, spread over connections so
/// that requests of one, two, several segments all occur.
fn body_size(connection: usize, request: usize) -> usize {
    (connection * 7919 + request * 104_729) % 20_000 + 16
}

/// Three requests on one connection: two completions and a GET between.
fn mixed_plan(connection: usize) -> Vec<Ask> {
    vec![
        Ask::completion("/v1/completions", body_size(connection, 0), connection),
        Ask::Get(format!("/v1/models?connection={connection}")),
        Ask::completion("/v1/completions", body_size(connection, 1), connection + 1),
    ]
}

/// Panics unless `received` (the streams green's connections sent) and
/// `sent` are the same multiset of byte strings; the message summarises
/// rather than printing megabytes.
fn assert_same_streams(mut received: Vec<Vec<u8>>, sent: Vec<Vec<u8>>) {
    received.sort();
    let total = |streams: &[Vec<u8>]| streams.iter().map(Vec::len).sum::<usize>();
    let differing = received
        .iter()
        .zip(&sent)
        .filter(|(received, sent)| received != sent)
        .count();
    assert!(
        received == sent,
        "green received {} streams ({} bytes), clients sent {} ({} bytes); {differing} differ pairwise after sorting",
        received.len(),
        total(&received),
        sent.len(),
        total(&sent)
    );
}

#[test]
fn byte_identical_streams_at_full_sampling() {
    let bed = ShadowBed::new(Reply::ok("blue"), Reply::ok("green"));
    let run = bed.shadow_run(&["--sample", "100%"]);
    let held = bed.converse(8, (0..200).map(mixed_plan).collect(), CLIENT_LIMIT);
    held.assert_all_answered_by(600, "blue");
    // Ending the run lets the replays in progress finish first.
    let record = run.interrupt();

    assert_eq!(stop_reason(&record), "requested", "{record:#}");
    let received = bed.green().received();
    assert_eq!(received.len(), 200, "green's connections: one per flow");
    assert_same_streams(
        received
            .into_iter()
            .map(|connection| connection.bytes)
            .collect(),
        held.sent_streams(),
    );
    assert_figures(
        &record,
        &[
            ("/report/comparison/paired", 600.0),
            ("/report/comparison/live/requests", 600.0),
            ("/report/comparison/live/status_2xx", 600.0),
            ("/report/comparison/live/failed", 0.0),
            ("/report/comparison/shadow/requests", 600.0),
            ("/report/comparison/shadow/status_2xx", 600.0),
            ("/report/comparison/mismatched_status", 0.0),
            ("/report/engine/flows_replayed", 200.0),
            ("/report/reassembly/abandoned_gap", 0.0),
            ("/report/reassembly/abandoned_truncated", 0.0),
            ("/report/reassembly/abandoned_memory", 0.0),
            ("/report/reassembly/abandoned_flows", 0.0),
            ("/report/capture/ring_full", 0.0),
        ],
    );
}

/// Panics unless every figure has its expected value, naming all those
/// that do not (one wrong figure often explains the others).
fn assert_figures(record: &Value, expected: &[(&str, f64)]) {
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(pointer, value)| figure(record, pointer) != *value)
        .map(|(pointer, value)| format!("{pointer} = {}, not {value}", figure(record, pointer)))
        .collect();
    assert!(wrong.is_empty(), "{}\nin {record:#}", wrong.join("\n"));
}

#[test]
fn ten_percent_sampling_share() {
    let bed = ShadowBed::new(Reply::ok("blue"), Reply::ok("green"));
    let run = bed.shadow_run(&["--sample", "10%"]);
    let plans = (0..2000)
        .map(|connection| vec![Ask::Get(format!("/?connection={connection}"))])
        .collect();
    bed.converse(16, plans, CLIENT_LIMIT)
        .assert_all_answered_by(2000, "blue");
    let record = run.interrupt();

    let replayed = figure(&record, "/report/engine/flows_replayed");
    // Binomial(2000, 0.1): 200 flows, standard deviation 13.4; ±60 is
    // 4.5 deviations, so a correct sampler fails this about once in 10^5.
    assert!(
        (140.0..=260.0).contains(&replayed),
        "{replayed} of 2000 flows replayed at 10%: {record:#}"
    );
    assert_eq!(
        bed.green().received().len() as f64,
        replayed,
        "green's connections against flows replayed"
    );
    eprintln!("10% sampling: {replayed} of 2000 flows replayed");
}

#[test]
fn allow_list_skips_other_requests() {
    let bed = ShadowBed::new(Reply::ok("blue"), Reply::ok("green"));
    let run = bed.shadow_run(&["--sample", "100%"]);
    let plan = |connection: usize| {
        vec![
            Ask::completion("/v1/completions", body_size(connection, 0), connection),
            Ask::Other("DELETE".to_owned(), "/v1/thing".to_owned()),
            Ask::Post("/admin".to_owned(), r#"{"drop":"everything"}"#.to_owned()),
            Ask::Get(format!("/v1/models?connection={connection}")),
        ]
    };
    let held = bed.converse(4, (0..50).map(plan).collect(), CLIENT_LIMIT);
    held.assert_all_answered_by(200, "blue");
    let record = run.interrupt();

    let requests = bed.green().requests();
    let forbidden: Vec<_> = requests
        .iter()
        .filter(|(method, path)| method == "DELETE" || path == "/admin")
        .collect();
    assert!(forbidden.is_empty(), "replayed: {forbidden:?}");
    assert_eq!(requests.len(), 100, "the POSTs to /v1/completions and GETs");
    // Each connection's replay is its client's stream without the two
    // refused requests, byte for byte.
    let mut expected: Vec<Vec<u8>> = (0..50)
        .map(|connection| {
            let plan = plan(connection);
            [plan[0].bytes(), plan[3].bytes()].concat()
        })
        .collect();
    expected.sort();
    assert_same_streams(
        bed.green()
            .received()
            .into_iter()
            .map(|connection| connection.bytes)
            .collect(),
        expected,
    );
    assert_figures(
        &record,
        &[
            ("/report/engine/requests_not_allowed", 100.0),
            ("/report/replay/requests", 100.0),
            ("/report/comparison/paired", 100.0),
        ],
    );
}

/// Waits (at most 10 s) until the running run's published record shows
/// `value` at `pointer` (it publishes about once a second); the final
/// record's checks say whether it got there.
fn wait_for_figure(bed: &ShadowBed, pointer: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while figure(&bed.shadow_status(), pointer) < value && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One small completion per connection, from 4 workers: the clients'
/// latencies.
fn one_completion_each(bed: &ShadowBed, connections: usize) -> Conversations {
    let plans = (0..connections)
        .map(|connection| vec![Ask::completion("/v1/completions", 1000, connection)])
        .collect();
    let held = bed.converse(4, plans, CLIENT_LIMIT);
    held.assert_all_answered_by(connections, "blue");
    held
}

#[test]
fn slow_and_dead_idle_color() {
    let mut bed = ShadowBed::new(
        Reply::ok("blue"),
        Reply::ok_after("green", Duration::from_secs(2)),
    );
    let alone = quantile(&one_completion_each(&bed, 200).latencies(), 0.5);

    let run = bed.shadow_run(&["--sample", "100%", "--response-timeout", "5s"]);
    let shadowed = quantile(&one_completion_each(&bed, 200).latencies(), 0.5);
    // The replays take 2 s each; all must be in before the run ends.
    let answered = {
        let deadline = Instant::now() + Duration::from_secs(15);
        while bed.green().answered() < 200 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        bed.green().answered()
    };
    let record = run.interrupt();
    eprintln!("live p50 without shadowing {alone:?}, with a 2 s idle color {shadowed:?}");
    assert!(
        shadowed <= (alone * 3 / 2).max(alone + Duration::from_millis(5)),
        "the live color slowed down while shadowing: p50 {alone:?} alone, {shadowed:?} shadowed"
    );
    assert_eq!(answered, 200, "green answered the replays");
    let shadow_ttfb = figure(&record, "/report/comparison/shadow/ttfb_p50_ms");
    assert!(
        shadow_ttfb >= 2000.0,
        "shadow ttfb p50 {shadow_ttfb} ms: {record:#}"
    );
    assert_eq!(
        figure(&record, "/report/comparison/shadow/failed"),
        0.0,
        "{record:#}"
    );

    bed.stop_green();
    let run = bed.shadow_run(&["--sample", "100%", "--response-timeout", "5s"]);
    one_completion_each(&bed, 50);
    let record = run.interrupt();
    assert!(
        figure(&record, "/report/replay/connect_failures") > 0.0,
        "a dead idle color refuses the replays: {record:#}"
    );
    assert!(
        figure(&record, "/report/comparison/shadow/failed") > 0.0,
        "{record:#}"
    );

    // Accepting but never answering: each replay gives up after the
    // response timeout, the clients notice nothing.
    bed.start_green(Reply::Never);
    let run = bed.shadow_run(&["--sample", "100%", "--response-timeout", "1s"]);
    one_completion_each(&bed, 20);
    // Stopped before they time out, replays would end unanswered.
    wait_for_figure(&bed, "/report/replay/timeouts", 20.0);
    let record = run.interrupt();
    assert_figures(
        &record,
        &[
            ("/report/replay/timeouts", 20.0),
            ("/report/comparison/shadow/failed", 20.0),
        ],
    );
    assert_eq!(bed.green().requests().len(), 20, "green got the replays");
}

#[test]
fn comparison_matches_backends() {
    let bed = ShadowBed::new(
        Reply::ok_after("blue", Duration::from_millis(100)),
        Reply::ok_after("green", Duration::from_millis(300)),
    );
    let run = bed.shadow_run(&["--sample", "100%"]);
    let plan = |connection: usize| {
        vec![
            Ask::Get(format!("/v1/models?connection={connection}")),
            Ask::completion("/v1/completions", body_size(connection, 0), connection),
        ]
    };
    bed.converse(8, (0..40).map(plan).collect(), CLIENT_LIMIT)
        .assert_all_answered_by(80, "blue");
    let record = run.interrupt();

    let live = figure(&record, "/report/comparison/live/ttfb_p50_ms");
    let shadow = figure(&record, "/report/comparison/shadow/ttfb_p50_ms");
    eprintln!("ttfb p50: live {live} ms (blue waits 100), shadow {shadow} ms (green waits 300)");
    // The backends sleep at least their delay; on top come a sleep's
    // overshoot (under 1 ms), the veth hops (tens of µs) and, for the
    // live color, a request spanning segments timed from its first: 20 ms
    // covers them with room, and is a fifth of the smaller delay, so a
    // figure from the wrong color or the wrong clock cannot pass.
    assert!(
        (100.0..=120.0).contains(&live),
        "live ttfb p50 {live} ms: {record:#}"
    );
    assert!(
        (300.0..=320.0).contains(&shadow),
        "shadow ttfb p50 {shadow} ms: {record:#}"
    );
    assert_figures(
        &record,
        &[
            ("/report/comparison/paired", 80.0),
            ("/report/comparison/live/status_2xx", 80.0),
            ("/report/comparison/shadow/status_2xx", 80.0),
            ("/report/comparison/mismatched_status", 0.0),
        ],
    );
}

/// After a run has ended with `reason`: its record says so, and a new
/// flow (answered by `live`) reaches nothing of `idle`.
fn assert_ended(bed: &ShadowBed, reason: &str, live: &str, idle: &RecordingBackend) {
    let record = bed.shadow_status();
    assert_eq!(stop_reason(&record), reason, "shadow status: {record:#}");
    let before = idle.requests().len();
    bed.converse(1, vec![vec![Ask::Get("/after".to_owned())]], CLIENT_LIMIT)
        .assert_all_answered_by(1, live);
    // A replay follows its client's request within milliseconds.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        idle.requests().len(),
        before,
        "the idle color got a replay after the run ended"
    );
}

#[test]
fn stops_by_itself() {
    let bed = ShadowBed::new(Reply::ok("blue"), Reply::ok("green"));
    let one_get = || vec![vec![Ask::Get("/during".to_owned())]];

    let run = bed.shadow_run(&["--sample", "100%", "--duration", "3s"]);
    bed.converse(1, one_get(), CLIENT_LIMIT)
        .assert_all_answered_by(1, "blue");
    let (record, ran) = run.wait(Duration::from_secs(10));
    assert_eq!(stop_reason(&record), "duration_ended", "{record:#}");
    assert!(
        (Duration::from_secs(3)..=Duration::from_secs(6)).contains(&ran),
        "a 3 s run took {ran:?}"
    );
    assert_eq!(
        bed.green().requests().len(),
        1,
        "the request during the run, replayed"
    );
    assert_ended(&bed, "duration_ended", "blue", bed.green());

    let run = bed.shadow_run(&["--sample", "100%"]);
    let stopped: Value =
        serde_json::from_str(&bed.bluegreen.ok(&["shadow", "stop", "web", "--json"]))
            .expect("shadow stop --json is JSON");
    assert_eq!(stop_reason(&stopped), "requested", "{stopped:#}");
    let (record, _) = run.wait(Duration::from_secs(5));
    assert_eq!(stop_reason(&record), "requested", "{record:#}");
    assert_ended(&bed, "requested", "blue", bed.green());

    let run = bed.shadow_run(&["--sample", "100%"]);
    bed.bluegreen.ok(&["switch", "green"]);
    let (record, _) = run.wait(Duration::from_secs(10));
    assert_eq!(stop_reason(&record), "switched", "{record:#}");
    // Blue is the idle color now.
    assert_ended(&bed, "switched", "green", &bed.blue);
}

#[test]
fn bad_input_is_refused() {
    let bed = ShadowBed::new(Reply::ok("blue"), Reply::ok("green"));
    let never_shadowed = bed.bluegreen.run(&["shadow", "status", "web", "--json"]);
    assert_ne!(
        never_shadowed.code, 0,
        "a record before any run: {never_shadowed:?}"
    );
    for (args, message) in [
        (&["--sample", "0%"][..], "invalid sample share"),
        (&["--sample", "150%"], "invalid sample share"),
        (&["--allow", "get /x"], "upper case"),
        (&["--max-inflight", "0"], "max_inflight 0 is out of range"),
    ] {
        let refused = bed.shadow_run_refused(args);
        assert!(refused.stderr.contains(message), "{args:?}: {refused:?}");
        let status = bed.bluegreen.run(&["shadow", "status", "web", "--json"]);
        assert_eq!(
            (status.code, &status.stdout, &status.stderr),
            (
                never_shadowed.code,
                &never_shadowed.stdout,
                &never_shadowed.stderr
            ),
            "{args:?} changed shadow status"
        );
    }

    let run = bed.shadow_run(&["--sample", "5%"]);
    let running = bed.shadow_status();
    let refused = bed.shadow_run_refused(&["--sample", "5%"]);
    assert!(
        refused
            .stderr
            .contains("another shadowing run owns s0's capture"),
        "{refused:?}"
    );
    let after = bed.shadow_status();
    for pointer in ["/owner/pid", "/started_unix_ms", "/stopped"] {
        assert_eq!(
            after.pointer(pointer),
            running.pointer(pointer),
            "{pointer}: {after:#}"
        );
    }
    assert_eq!(after["owner"]["pid"], run.pid());
    assert_eq!(stop_reason(&run.interrupt()), "requested");
}

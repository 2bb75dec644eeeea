//! Metric analysis through the real binary, against backends that export
//! vLLM's metrics (figures the test sets, moving as a served stream's
//! would) and a real Prometheus server scraping them: a slow or failing
//! green is refused before traffic moves, `shift` retreats from it, and
//! the daemon rolls back under its own cause when green degrades after a
//! switch.

use std::time::{Duration, Instant};

use bluegreen_testbed::{
    cli::CliRun,
    fixture::{Fixture, blue_backend, config_text, green_backend},
    metrics::{METRICS, scrape, wait_for_endpoint},
    model::{ModelMetrics, Profile},
    prometheus::Prometheus,
};

const FAST: Profile = Profile::new(0.15, 0);
/// Three times FAST's first token latency.
const SLOW: Profile = Profile::new(0.45, 0);
const FAILING: Profile = Profile::new(0.15, 10);

/// Blue's and green's backends serving with these profiles.
fn serving(fixture: &Fixture, blue: Profile, green: Profile) -> ModelMetrics {
    let writers = ["blue", "green"]
        .map(|color| fixture.backend(color).expect("both run").metrics_writer())
        .to_vec();
    let metrics = ModelMetrics::start(writers, blue);
    metrics.set(1, green);
    metrics
}

fn refused(run: &CliRun, what: &str, texts: &[&str]) {
    assert_eq!(
        run.code, 1,
        "{what} must be refused:\nstdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    for text in texts {
        assert!(
            run.stderr.contains(text),
            "{what}: {text:?} in {}",
            run.stderr
        );
    }
}

const TTFT_RATIO: &str = r#"
[[service.analysis]]
name = "ttft-p95"
source = "backends"
histogram = "vllm:time_to_first_token_seconds"
quantile = 0.95
max_ratio = 1.5
window_secs = 2
"#;

#[test]
fn a_green_three_times_slower_than_blue_is_refused_from_the_backends_own_metrics() {
    let fixture = Fixture::new();
    let model = serving(&fixture, FAST, SLOW);
    let config = fixture.write_config(&config_text("", TTFT_RATIO));
    fixture.up_with_config(&config);
    let state = std::fs::read(fixture.bluegreen.state_file()).expect("state file");

    let started = Instant::now();
    let run = fixture.bluegreen.run(&["switch", "green"]);
    // Blue's first tokens fall in (0.1, 0.2]: p95 0.195 s; green's in
    // (0.3, 0.6]: 0.585 s, 3.00 times as long.
    refused(
        &run,
        "a switch to a green 3x slower",
        &[
            "green failed its analysis gate",
            "ttft-p95: green 0.5850, 3.00x blue's 0.1950: above max_ratio 1.5",
            "traffic stays on blue",
        ],
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the gate measured over its 2 s window"
    );
    assert_eq!(fixture.get(), "blue");
    assert_eq!(
        std::fs::read(fixture.bluegreen.state_file()).expect("state file"),
        state,
        "a refused switch changes no state"
    );

    let run = fixture.bluegreen.run(&["verify", "green"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("green FAILED its analysis gate") && run.stdout.contains("3.00x"),
        "{}",
        run.stdout
    );

    // As fast as blue: the same gate lets it through.
    model.set(1, FAST);
    let switched = fixture.bluegreen.ok(&["switch", "green"]);
    assert!(
        switched.contains("green passed its analysis gate") && switched.contains("1.00x"),
        "{switched}"
    );
    assert_eq!(fixture.get(), "green");
}

/// Green's share of 5xx answers over the last 2 s, as Prometheus has it.
const ERROR_RATIO: &str = r#"sum(rate(http_requests_total{instance=~"{{backends_regex}}",status="5xx"}[2s])) / sum(rate(http_requests_total{instance=~"{{backends_regex}}"}[2s]))"#;

fn prometheus_analysis(url: &str, query: &str) -> String {
    format!(
        "\n[[service.analysis]]\nname = \"errors\"\nsource = \"prometheus\"\nprometheus = \"{url}\"\nquery = '{query}'\nmax = 0.05\n"
    )
}

#[test]
fn a_real_prometheus_refuses_a_green_with_ten_percent_errors_and_bad_queries_are_no_data() {
    let fixture = Fixture::new();
    let model = serving(&fixture, FAST, FAILING);
    let prometheus = Prometheus::start(
        &fixture.topology.switch,
        "127.0.0.1:19090".parse().expect("literal"),
        &[blue_backend(), green_backend()],
    );
    let green_errors = ERROR_RATIO.replace(
        "{{backends_regex}}",
        &green_backend().to_string().replace('.', "\\\\."),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while prometheus
        .value(&fixture.topology.switch, &green_errors)
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "Prometheus has no rate of green's requests after 20 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let config = fixture.write_config(&config_text(
        "",
        &prometheus_analysis(&prometheus.url, ERROR_RATIO),
    ));
    fixture.up_with_config(&config);
    let run = fixture.bluegreen.run(&["switch", "green"]);
    refused(
        &run,
        "a switch to a green with 10 % errors",
        &[
            "green failed its analysis gate",
            "errors: green 0.1000: above max 0.05 (fail)",
        ],
    );
    assert_eq!(fixture.get(), "blue");

    // A query Prometheus cannot parse, and a server that is not there:
    // no data, which refuses a switch.
    for (url, query, texts) in [
        (
            prometheus.url.as_str(),
            "sum(rate(http_requests_total[2s]",
            ["Prometheus refused the query (bad_data)", "(no data)"],
        ),
        (
            "http://127.0.0.1:9",
            ERROR_RATIO,
            ["127.0.0.1:9", "(no data)"],
        ),
    ] {
        let config = fixture.write_config(&config_text("", &prometheus_analysis(url, query)));
        fixture.up_with_config(&config);
        refused(&fixture.bluegreen.run(&["switch", "green"]), query, &texts);
        assert_eq!(fixture.get(), "blue");
    }

    model.set(1, FAST);
    let config = fixture.write_config(&config_text(
        "",
        &prometheus_analysis(&prometheus.url, ERROR_RATIO),
    ));
    fixture.up_with_config(&config);
    // Prometheus's 2 s rate forgets green's errors within a few scrapes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = fixture.bluegreen.run(&["switch", "green"]);
        if run.code == 0 {
            assert!(
                run.stdout.contains("green passed its analysis gate"),
                "{}",
                run.stdout
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after 20 s: {}",
            run.stderr
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(fixture.get(), "green");
}

const ERRORS_FROM_BACKENDS: &str = r#"
[[service.analysis]]
name = "errors"
source = "backends"
kind = "error_ratio"
max = 0.05
window_secs = 2
interval_secs = 1
failure_limit = 2
"#;

#[test]
fn shift_retreats_from_a_green_whose_errors_rise_and_names_the_analysis() {
    let fixture = Fixture::new();
    let _model = serving(&fixture, FAST, FAILING);
    let config = fixture.write_config(&config_text("", ERRORS_FROM_BACKENDS));
    fixture.up_with_config(&config);

    let run = fixture
        .bluegreen
        .run(&["shift", "green", "--steps", "50,100", "--interval", "10s"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    for text in [
        "green at 50%: analysis errors failed 2 times, its failure_limit",
        "green 0.1000: above max 0.05",
        "rolled back from 50%",
    ] {
        assert!(run.stderr.contains(text), "{text:?} in {}", run.stderr);
    }
    let service = fixture.service_status();
    assert_eq!(
        (service["active"].as_str(), service["weight"].as_u64()),
        (Some("blue"), Some(0))
    );
    assert_eq!(service["rollbacks"]["shift"], 1, "{service}");
    assert_eq!(fixture.get(), "blue");
}

#[test]
fn the_daemon_rolls_back_under_its_own_cause_when_green_degrades_after_a_switch() {
    let fixture = Fixture::new();
    let model = serving(&fixture, FAST, FAST);
    let rollback = "\n[service.auto_rollback]\nwindow_secs = 60\nanalysis = true\n";
    let config = fixture.write_config(&config_text(
        "",
        &format!("{ERRORS_FROM_BACKENDS}{rollback}"),
    ));
    fixture.up_with_config(&config);
    let _daemon = fixture.start_daemon(&config, &[&format!("--metrics={METRICS}")]);
    wait_for_endpoint(&fixture);

    let switched = fixture.bluegreen.ok(&["switch", "green"]);
    assert!(
        switched.contains("green passed its analysis gate"),
        "{switched}"
    );
    model.set(1, FAILING);
    let deadline = Instant::now() + Duration::from_secs(20);
    while fixture.bluegreen.active() != "blue" {
        assert!(
            Instant::now() < deadline,
            "no rollback 20 s after green's errors rose"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fixture.get(), "blue");

    let service = fixture.service_status();
    assert_eq!(service["rollbacks"]["analysis"], 1, "{service}");
    assert_eq!(service["rollbacks"]["unhealthy"], 0, "{service}");
    let analyses = service["analyses"]
        .as_array()
        .expect("analyses in status --json");
    assert_eq!(analyses.len(), 1, "{service}");
    assert_eq!(analyses[0]["last"]["analysis"], "errors", "{service}");
    let text = fixture.bluegreen.ok(&["status"]);
    assert!(text.contains("analysis errors: "), "{text}");

    let metrics = scrape(&fixture);
    assert_eq!(
        metrics.get("bluegreen_rollbacks_total{service=\"web\",cause=\"analysis\"}"),
        Some(&1.0),
        "{metrics:?}"
    );
    assert_eq!(
        metrics
            .get("bluegreen_analysis_threshold{service=\"web\",analysis=\"errors\",bound=\"max\"}"),
        Some(&0.05),
        "{metrics:?}"
    );
    assert!(
        metrics.keys().any(|series| series
            .starts_with("bluegreen_analysis_verdict{service=\"web\",analysis=\"errors\",")),
        "{metrics:?}"
    );
}

use super::*;

fn close(got: Option<f64>, want: f64) {
    let got = got.unwrap_or_else(|| panic!("no figure, wanted {want}"));
    assert!((got - want).abs() < 1e-9, "got {got}, wanted {want}");
}

const INF: f64 = f64::INFINITY;

/// 40 observations: 10 up to 0.1 s, 20 more up to 0.5 s, 10 up to 1 s.
const BUCKETS: [(f64, f64); 4] = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 40.0)];

#[test]
fn quantiles_interpolate_within_their_bucket_as_prometheus_does() {
    // rank 20 falls in (0.1, 0.5], 10 of its 20 in: halfway.
    close(histogram_quantile(0.5, &BUCKETS), 0.3);
    // rank 38 falls in (0.5, 1], 8 of its 10 in.
    close(histogram_quantile(0.95, &BUCKETS), 0.9);
    // The lowest bucket starts at 0: rank 2 of its 10.
    close(histogram_quantile(0.05, &BUCKETS), 0.02);
    // A rank in the +Inf bucket is the highest finite bound.
    let slow_tail = [(0.1, 10.0), (1.0, 40.0), (INF, 50.0)];
    close(histogram_quantile(0.99, &slow_tail), 1.0);
}

#[test]
fn an_empty_histogram_or_one_without_an_inf_bucket_has_no_quantile() {
    assert_eq!(histogram_quantile(0.95, &[(0.1, 0.0), (INF, 0.0)]), None);
    assert_eq!(histogram_quantile(0.95, &[]), None);
    assert_eq!(histogram_quantile(0.95, &[(0.1, 3.0), (1.0, 5.0)]), None);
    assert_eq!(histogram_quantile(0.5, &[(INF, 7.0)]), None, "+Inf alone");
}

#[test]
fn a_count_that_falls_between_buckets_is_taken_at_the_highest_below() {
    // A scrape racing an update may show 12 below 0.1 and 11 below 0.5.
    let racing = [(0.1, 12.0), (0.5, 11.0), (INF, 12.0)];
    close(histogram_quantile(0.5, &racing), 0.05);
}

#[test]
fn the_increase_over_a_window_is_per_bucket_and_restarts_count_from_zero() {
    let before = Counts(BUCKETS.to_vec());
    let after = Counts(vec![(0.1, 10.0), (0.5, 30.0), (1.0, 60.0), (INF, 60.0)]);
    let increase = after.increase_since(&before);
    assert_eq!(
        increase.0,
        vec![(0.1, 0.0), (0.5, 0.0), (1.0, 20.0), (INF, 20.0)]
    );
    // All 20 new observations took between 0.5 and 1 s: p50 is 0.75.
    close(histogram_quantile(0.5, &increase.0), 0.75);

    let restarted = Counts(vec![(0.1, 2.0), (0.5, 3.0), (1.0, 3.0), (INF, 3.0)]);
    assert_eq!(restarted.increase_since(&before), restarted);
    let fewer_buckets = Counts(vec![(1.0, 50.0), (INF, 50.0)]);
    assert_eq!(fewer_buckets.increase_since(&before), fewer_buckets);
}

fn quantile_figure() -> Figure {
    Figure::Quantile {
        histogram: "vllm:time_to_first_token_seconds".to_owned(),
        quantile: 0.95,
    }
}

fn error_figure() -> Figure {
    Figure::ErrorRatio {
        counter: "http_requests_total".to_owned(),
        label: "status".to_owned(),
    }
}

#[test]
fn a_histogram_is_read_summed_over_its_other_labels() {
    let text = "# TYPE vllm:time_to_first_token_seconds histogram\n\
        vllm:time_to_first_token_seconds_bucket{le=\"0.1\",model_name=\"a\"} 4\n\
        vllm:time_to_first_token_seconds_bucket{le=\"+Inf\",model_name=\"a\"} 5\n\
        vllm:time_to_first_token_seconds_bucket{le=\"0.1\",model_name=\"b\"} 1\n\
        vllm:time_to_first_token_seconds_bucket{le=\"+Inf\",model_name=\"b\"} 1\n\
        vllm:time_to_first_token_seconds_count{model_name=\"a\"} 5\n";
    let counts = quantile_figure().read(text).expect("a valid histogram");
    assert_eq!(counts.0, vec![(0.1, 5.0), (INF, 6.0)]);
}

#[test]
fn a_missing_histogram_or_counter_is_an_error_naming_it() {
    let error = quantile_figure().read("up 1\n").unwrap_err();
    assert!(
        error.contains("no vllm:time_to_first_token_seconds_bucket"),
        "{error}"
    );
    let error = quantile_figure()
        .read("vllm:time_to_first_token_seconds_bucket{le=\"1\"} 3\n")
        .unwrap_err();
    assert!(error.contains("no le=\"+Inf\" bucket"), "{error}");
    let error = error_figure().read("up 1\n").unwrap_err();
    assert!(error.contains("no http_requests_total"), "{error}");
    let error = error_figure()
        .read("http_requests_total{status=\"2xx\"} -3\n")
        .unwrap_err();
    assert!(error.contains("negative"), "{error}");
}

#[test]
fn the_error_ratio_counts_5xx_and_5nn_statuses_as_errors() {
    let text = "http_requests_total{handler=\"/v1/completions\",status=\"2xx\"} 90\n\
        http_requests_total{handler=\"/v1/completions\",status=\"5xx\"} 6\n\
        http_requests_total{handler=\"/health\",status=\"503\"} 4\n\
        http_requests_total{handler=\"/v1/completions\",status=\"4xx\"} 100\n";
    let counts = error_figure().read(text).expect("valid counters");
    assert_eq!(counts.get(TOTAL), Some(200.0));
    assert_eq!(counts.get(ERRORS), Some(10.0));
    close(error_figure().compute(&counts), 0.05);
    // No request in the window: no ratio, rather than 0 %.
    assert_eq!(
        error_figure().compute(&Counts(vec![(TOTAL, 0.0), (ERRORS, 0.0)])),
        None
    );
}

fn backend(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 200, 0, last], 8000))
}

fn reading(at_ms: u64, backends: Vec<(SocketAddr, Result<Counts, String>)>) -> Reading {
    Reading { at_ms, backends }
}

fn totals(total: f64, errors: f64) -> Result<Counts, String> {
    Ok(Counts(vec![(TOTAL, total), (ERRORS, errors)]))
}

#[test]
fn a_window_adds_up_every_backend_read_at_both_ends() {
    let readings = VecDeque::from([
        reading(
            0,
            vec![
                (backend(1), totals(100.0, 0.0)),
                (backend(2), totals(50.0, 5.0)),
            ],
        ),
        reading(
            60_000,
            vec![
                // +100 requests, +10 errors.
                (backend(1), totals(200.0, 10.0)),
                // Restarted: its 10 requests since are all new, 0 errors.
                (backend(2), totals(10.0, 0.0)),
                // New to the pool: counted from the next window.
                (backend(3), totals(999.0, 999.0)),
            ],
        ),
    ]);
    close(figure_over(&error_figure(), &readings).ok(), 10.0 / 110.0);
}

#[test]
fn a_window_with_one_reading_an_unread_backend_or_nothing_observed_has_no_figure() {
    let once = VecDeque::from([reading(0, vec![(backend(1), totals(1.0, 0.0))])]);
    let error = figure_over(&error_figure(), &once).unwrap_err();
    assert!(error.contains("one reading so far"), "{error}");

    let unread = VecDeque::from([
        reading(
            0,
            vec![
                (backend(1), totals(1.0, 0.0)),
                (backend(2), totals(1.0, 0.0)),
            ],
        ),
        reading(
            5_000,
            vec![
                (backend(1), totals(9.0, 0.0)),
                (backend(2), Err("connection refused".to_owned())),
            ],
        ),
    ]);
    let error = figure_over(&error_figure(), &unread).unwrap_err();
    assert!(
        error.contains("1 of 2 backends could not be read"),
        "{error}"
    );
    assert!(error.contains("connection refused"), "{error}");

    let idle = VecDeque::from([
        reading(0, vec![(backend(1), totals(7.0, 1.0))]),
        reading(30_000, vec![(backend(1), totals(7.0, 1.0))]),
    ]);
    let error = figure_over(&error_figure(), &idle).unwrap_err();
    assert!(
        error.contains("nothing observed in the last 30 s"),
        "{error}"
    );
}

#[test]
fn judging_names_the_figures_and_every_bound_that_failed() {
    let ratio = Threshold {
        max_ratio: Some(1.5),
        ..Threshold::default()
    };
    let (verdict, detail) = judge(&ratio, 0.3, Some(0.1), Color::Blue);
    assert_eq!(verdict, Verdict::Fail);
    assert_eq!(detail, "0.3000, 3.00x blue's 0.1000: above max_ratio 1.5");
    assert_eq!(judge(&ratio, 0.12, Some(0.1), Color::Blue).0, Verdict::Pass);
    // Both at 0 is no worse; anything over a live 0 is.
    assert_eq!(judge(&ratio, 0.0, Some(0.0), Color::Blue).0, Verdict::Pass);
    assert_eq!(judge(&ratio, 0.01, Some(0.0), Color::Blue).0, Verdict::Fail);
    assert_eq!(judge(&ratio, INF, Some(INF), Color::Blue).0, Verdict::Fail);
    assert_eq!(
        judge(&ratio, 0.3, None, Color::Blue),
        (
            Verdict::Pass,
            "0.3000 (max_ratio not judged: no other color to compare with)".to_owned()
        )
    );

    let range = Threshold {
        min: Some(0.5),
        max: Some(1.0),
        max_ratio: None,
    };
    assert_eq!(judge(&range, 0.75, None, Color::Blue).0, Verdict::Pass);
    assert_eq!(
        judge(&range, 0.25, None, Color::Blue),
        (Verdict::Fail, "0.2500: below min 0.5".to_owned())
    );
    assert_eq!(
        judge(&range, 1.5, None, Color::Blue),
        (Verdict::Fail, "1.5000: above max 1".to_owned())
    );
}

#[test]
fn no_data_counts_as_the_policy_says_and_never_as_a_plain_pass() {
    let measurement = |verdict| Measurement {
        analysis: "errors".to_owned(),
        color: Color::Green,
        verdict,
        value: None,
        baseline: Color::Blue,
        baseline_value: None,
        threshold: Threshold::default(),
        detail: String::new(),
        at_unix_ms: 0,
    };
    assert!(measurement(Verdict::NoData).failed(NoData::Fail));
    assert!(!measurement(Verdict::NoData).failed(NoData::Pass));
    assert!(measurement(Verdict::Fail).failed(NoData::Pass));
    assert!(!measurement(Verdict::Pass).failed(NoData::Fail));
}

#[test]
fn queries_get_the_color_its_backends_escaped_for_promql_and_the_service() {
    let backends = [backend(1), "[fd00:bb::2]:8000".parse().expect("literal")];
    let rendered = Source::render(
        "rate(x{instance=~\"{{backends_regex}}\",color=\"{{color}}\",svc=\"{{service}}\"}[1m]) # {{backends}} {{vip}}",
        "chat",
        backend(100),
        Color::Green,
        &backends,
    );
    assert_eq!(
        rendered,
        "rate(x{instance=~\"10\\\\.200\\\\.0\\\\.1:8000|\\\\[fd00:bb::2\\\\]:8000\",color=\"green\",svc=\"chat\"}[1m]) # 10.200.0.1:8000,[fd00:bb::2]:8000 10.200.0.100:8000"
    );
}

fn analysis(source: Source, threshold: Threshold) -> Analysis {
    Analysis {
        name: "ttft-p95".to_owned(),
        source,
        threshold,
        window_secs: Analysis::DEFAULT_WINDOW_SECS,
        interval_secs: Analysis::DEFAULT_INTERVAL_SECS,
        failure_limit: Analysis::DEFAULT_FAILURE_LIMIT,
        no_data: None,
    }
}

#[test]
fn settings_that_cannot_be_judged_are_refused_with_their_name() {
    let backends = Source::Backends {
        figure: quantile_figure(),
        path: "/metrics".to_owned(),
        port: None,
    };
    let max = Threshold {
        max: Some(1.0),
        ..Threshold::default()
    };
    assert_eq!(analysis(backends.clone(), max).validate(), Ok(()));
    let cases = [
        (
            analysis(backends.clone(), Threshold::default()),
            "give a threshold",
        ),
        (
            analysis(
                backends.clone(),
                Threshold {
                    min: Some(2.0),
                    max: Some(1.0),
                    max_ratio: None,
                },
            ),
            "min 2 is above max 1",
        ),
        (
            analysis(
                backends.clone(),
                Threshold {
                    max_ratio: Some(f64::NAN),
                    ..Threshold::default()
                },
            ),
            "max_ratio must be a finite number",
        ),
        (
            analysis(
                Source::Backends {
                    figure: Figure::Quantile {
                        histogram: "ttft".to_owned(),
                        quantile: 95.0,
                    },
                    path: "/metrics".to_owned(),
                    port: None,
                },
                max,
            ),
            "quantile 95 is outside (0, 1)",
        ),
        (
            analysis(
                Source::Prometheus {
                    url: "127.0.0.1:9090".to_owned(),
                    query: "up".to_owned(),
                },
                max,
            ),
            "must be an http:// URL",
        ),
        (
            analysis(
                Source::Prometheus {
                    url: "http://127.0.0.1:9090".to_owned(),
                    query: "up{color=\"{{colour}}\"}".to_owned(),
                },
                max,
            ),
            "query has {{colour}}",
        ),
    ];
    for (analysis, wanted) in cases {
        let error = analysis.validate().expect_err(wanted);
        assert!(error.contains(wanted), "{error} (wanted {wanted})");
    }
    let mut zero_window = analysis(backends, max);
    zero_window.window_secs = 0;
    assert!(zero_window.validate().is_err());
}

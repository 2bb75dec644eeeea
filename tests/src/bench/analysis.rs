//! Part 8: metric analysis. What one measurement costs over reading the
//! same metrics (backends' `/metrics` for 1 and 256 backends per color, a
//! Prometheus instant query), what an analysis gate adds to a switch
//! beyond its window, and the daemon's CPU when it runs analyses every
//! second over pools of 256 backends, against the same daemon without.
//!
//! Every backend exports vLLM's metrics (see [`ModelMetrics`]); the
//! backends of one color share one stream, served on many ports by
//! [`MetricsPorts`], so the figures move between readings as a served
//! model's would.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use bluegreen::{
    clock::unix_now_ms,
    endpoint::{Color, Proto},
    verify::{Analysis, Analyzer, Figure, Source, Target, Threshold, Verdict},
};
use serde::Serialize;

use super::{
    Interrupted, check, cpu,
    lab::SwitchCommand,
    metrics_ports::MetricsPorts,
    stats::{median, percentile},
};
use crate::{
    fixture::{Fixture, vip},
    http::MetricsWriter,
    model::{ModelMetrics, Profile},
    netns::{SWITCH_IFACE, addr},
    prometheus::Prometheus,
};

pub struct AnalysisPlan {
    /// Measurements of each in-process case.
    pub rounds: usize,
    /// Switches through each gate.
    pub switches: usize,
    /// Turns of the daemon with and without analyses.
    pub daemon_rounds: usize,
    /// How long one turn's CPU time is counted.
    pub daemon_period: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct MeasurementCost {
    pub source: String,
    pub figure: String,
    pub backends_per_color: usize,
    /// GETs one measurement makes (both colors' backends for a ratio).
    pub gets: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// The same GETs, made the same way, without the analysis.
    pub baseline_p50_ms: f64,
    pub baseline_p95_ms: f64,
    /// Median of each round's measurement over its baseline.
    pub ratio: f64,
    /// Median of each round's difference.
    pub added_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct GateCost {
    pub gate: String,
    pub switches: usize,
    /// `bluegreen switch`, start to exit.
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// Over the switch without a gate of the same rounds (p50s).
    pub ratio: f64,
    /// What the gate waits by design: its window.
    pub window_ms: f64,
    /// Median of each round's difference to the switch without a gate,
    /// the window taken off.
    pub added_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DaemonCpu {
    pub backends: usize,
    /// GETs of `/metrics` a second with the analyses.
    pub gets_per_second: usize,
    pub rounds: usize,
    pub seconds_per_round: f64,
    /// CPU time (user and system) over wall time, in percent of one CPU,
    /// over all the rounds.
    pub without_percent: f64,
    pub with_percent: f64,
    /// One clock tick of /proc's CPU times over the time counted: a daemon
    /// without analyses may use less than that.
    pub resolution_percent: f64,
    /// With over without; when without is below the resolution, with over
    /// the resolution, a lower bound.
    pub ratio: f64,
    pub ratio_is_lower_bound: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct AnalysisReport {
    pub rounds: usize,
    pub measurements: Vec<MeasurementCost>,
    pub gates: Vec<GateCost>,
    pub daemon: DaemonCpu,
}

/// Each color's backends listen on the color's address at these ports.
const FIRST_PORT: u16 = 9100;
const MOST_BACKENDS: usize = 256;
const PER_COLOR_IN_DAEMON: usize = MOST_BACKENDS / 2;
/// Both colors serve alike: every analysis passes, so every measurement
/// went through to its verdict.
const PROFILE: Profile = Profile::new(0.15, 5);
const GATE_WINDOW_SECS: u64 = 1;
/// Several of the model's 50 ms ticks: the first reading and the next
/// differ.
const FIRST_WINDOW: Duration = Duration::from_millis(200);
const PROMETHEUS_LISTEN: &str = "127.0.0.1:19090";
const TTFT_QUERY: &str = r#"histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{instance=~"{{backends_regex}}"}[2s])))"#;
/// The daemon's first round only primes, and a figure needs its window.
const DAEMON_SETTLE: Duration = Duration::from_secs(3);
const DAEMON_ANALYSES: &str = r#"
[[service.analysis]]
name = "ttft-p95"
source = "backends"
quantile = 0.95
max_ratio = 1.5
window_secs = 2
interval_secs = 1

[[service.analysis]]
name = "errors"
source = "backends"
kind = "error_ratio"
max = 0.1
window_secs = 2
interval_secs = 1
"#;

/// The standard topology, and both colors' metrics on their ports. Drop
/// order is field order: the ports close before the namespaces go.
struct World {
    _ports: [MetricsPorts; 2],
    writers: [MetricsWriter; 2],
    fixture: Fixture,
}

impl World {
    fn new() -> World {
        let fixture = Fixture::new();
        let writers = [MetricsWriter::default(), MetricsWriter::default()];
        let ports = |namespace, writer: &MetricsWriter| {
            let ports = FIRST_PORT..FIRST_PORT + MOST_BACKENDS as u16;
            MetricsPorts::start(namespace, ports, writer.clone())
        };
        World {
            _ports: [
                ports(&fixture.topology.blue, &writers[0]),
                ports(&fixture.topology.green, &writers[1]),
            ],
            writers,
            fixture,
        }
    }

    /// Both colors' metrics moving until the stream is dropped (it stops
    /// by itself after a few minutes: each part starts its own).
    fn serve(&self) -> ModelMetrics {
        ModelMetrics::start(self.writers.to_vec(), PROFILE)
    }
}

fn backends(color: Color, count: usize) -> Vec<SocketAddr> {
    let address: IpAddr = match color {
        Color::Blue => addr::BLUE_V4,
        Color::Green => addr::GREEN_V4,
    }
    .parse()
    .expect("literal");
    (FIRST_PORT..)
        .take(count)
        .map(|port| SocketAddr::new(address, port))
        .collect()
}

/// Green judged, compared with blue (the live color) for a ratio.
fn target(per_color: usize) -> Target {
    Target {
        service: "bench".to_owned(),
        color: Color::Green,
        vip: vip(),
        proto: Proto::Tcp,
        backends: backends(Color::Green, per_color),
        baseline: Color::Blue,
        baseline_backends: backends(Color::Blue, per_color),
        shadow: None,
    }
}

fn analysis(source: Source, threshold: Threshold) -> Analysis {
    Analysis {
        name: "bench".to_owned(),
        source,
        threshold,
        window_secs: GATE_WINDOW_SECS,
        interval_secs: Analysis::DEFAULT_INTERVAL_SECS,
        failure_limit: 1,
        no_data: None,
    }
}

fn from_backends(figure: Figure) -> Source {
    Source::Backends {
        figure,
        path: Analysis::DEFAULT_PATH.to_owned(),
        port: None,
    }
}

fn ttft() -> Figure {
    Figure::Quantile {
        histogram: Figure::DEFAULT_HISTOGRAM.to_owned(),
        quantile: 0.95,
    }
}

fn errors() -> Figure {
    Figure::ErrorRatio {
        counter: Figure::DEFAULT_COUNTER.to_owned(),
        label: Figure::DEFAULT_STATUS_LABEL.to_owned(),
    }
}

const AT_MOST_ONE: Threshold = Threshold {
    min: None,
    max: Some(1.0),
    max_ratio: None,
};

/// What an analysis reads, read without it.
enum Read {
    /// Each color's `/metrics`, as an analyzer reads them: the colors one
    /// after the other, a color's backends all at once, one thread each.
    Metrics(Vec<Vec<SocketAddr>>),
    Query {
        endpoint: String,
        query: String,
    },
}

impl Read {
    fn run(&self) {
        match self {
            Read::Metrics(colors) => {
                for backends in colors {
                    std::thread::scope(|scope| {
                        let gets: Vec<_> = backends
                            .iter()
                            .map(|backend| {
                                scope.spawn(move || get(&format!("http://{backend}/metrics"), &[]))
                            })
                            .collect();
                        for read in gets {
                            read.join().expect("GET thread");
                        }
                    });
                }
            }
            Read::Query { endpoint, query } => {
                get(endpoint, &[("query", query)]);
            }
        }
    }

    fn gets(&self) -> usize {
        match self {
            Read::Metrics(colors) => colors.iter().map(Vec::len).sum(),
            Read::Query { .. } => 1,
        }
    }
}

/// One GET through an agent configured as the library's (one deadline,
/// no redirects); the body, which must come with a 2xx.
fn get(url: &str, query: &[(&str, &str)]) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut request = agent.get(url);
    for (name, value) in query {
        request = request.query(*name, *value);
    }
    let mut response = request
        .call()
        .unwrap_or_else(|error| panic!("GET {url}: {error}"));
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|error| panic!("GET {url}: {error}"))
}

/// One in-process case: an analysis against a target, and its baseline.
struct Case {
    source: &'static str,
    figure: &'static str,
    per_color: usize,
    analyzer: Analyzer,
    target: Target,
    baseline: Read,
    measured_ms: Vec<f64>,
    baseline_ms: Vec<f64>,
}

impl Case {
    fn new(
        (source, figure): (&'static str, &'static str),
        per_color: usize,
        analysis: Analysis,
        baseline: Read,
    ) -> Case {
        Case {
            source,
            figure,
            per_color,
            analyzer: Analyzer::new(analysis),
            target: target(per_color),
            baseline,
            measured_ms: Vec::new(),
            baseline_ms: Vec::new(),
        }
    }

    /// One measurement, timed; it must pass (every case's colors serve
    /// alike), so that it went all the way to its verdict.
    fn measure(&mut self) -> f64 {
        let started = Instant::now();
        let measurement = self.analyzer.measure(&self.target, unix_now_ms());
        let took = millis(started.elapsed());
        assert_eq!(
            measurement.verdict,
            Verdict::Pass,
            "{} {}: {}",
            self.source,
            self.figure,
            measurement.detail
        );
        took
    }

    fn cost(self) -> MeasurementCost {
        let ratios: Vec<f64> = self
            .measured_ms
            .iter()
            .zip(&self.baseline_ms)
            .map(|(measured, baseline)| measured / baseline)
            .collect();
        let added: Vec<f64> = self
            .measured_ms
            .iter()
            .zip(&self.baseline_ms)
            .map(|(measured, baseline)| measured - baseline)
            .collect();
        MeasurementCost {
            source: self.source.to_owned(),
            figure: self.figure.to_owned(),
            backends_per_color: self.per_color,
            gets: self.baseline.gets(),
            p50_ms: median(&self.measured_ms),
            p95_ms: percentile(&self.measured_ms, 95.0),
            baseline_p50_ms: median(&self.baseline_ms),
            baseline_p95_ms: percentile(&self.baseline_ms, 95.0),
            ratio: median(&ratios),
            added_ms: median(&added),
        }
    }
}

/// The backends source: a quantile and an error ratio of green alone,
/// and a quantile against blue's, for 1 and for the most backends.
fn backend_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for per_color in [1, MOST_BACKENDS] {
        let green = || Read::Metrics(vec![backends(Color::Green, per_color)]);
        let both = Read::Metrics(vec![
            backends(Color::Green, per_color),
            backends(Color::Blue, per_color),
        ]);
        let errors_under = Threshold {
            max: Some(0.1),
            ..AT_MOST_ONE
        };
        let as_blue = Threshold {
            max_ratio: Some(1.5),
            ..Threshold::default()
        };
        cases.extend([
            Case::new(
                ("backends", "p95 of a histogram"),
                per_color,
                analysis(from_backends(ttft()), AT_MOST_ONE),
                green(),
            ),
            Case::new(
                ("backends", "error ratio"),
                per_color,
                analysis(from_backends(errors()), errors_under),
                green(),
            ),
            Case::new(
                ("backends", "p95, max_ratio (both colors)"),
                per_color,
                analysis(from_backends(ttft()), as_blue),
                both,
            ),
        ]);
    }
    cases
}

/// Times each case's measurement and its baseline, the cases and the two
/// taking turns (which goes first alternates by round).
fn time_cases(mut cases: Vec<Case>, rounds: usize) -> Result<Vec<MeasurementCost>, Interrupted> {
    for case in &mut cases {
        case.analyzer.prime(&case.target, unix_now_ms());
    }
    std::thread::sleep(FIRST_WINDOW);
    for round in 0..rounds {
        for case in &mut cases {
            check()?;
            let baseline = |case: &Case| {
                let started = Instant::now();
                case.baseline.run();
                millis(started.elapsed())
            };
            let (measured, read) = if round % 2 == 0 {
                let read = baseline(case);
                (case.measure(), read)
            } else {
                let measured = case.measure();
                (measured, baseline(case))
            };
            case.measured_ms.push(measured);
            case.baseline_ms.push(read);
        }
    }
    Ok(cases.into_iter().map(Case::cost).collect())
}

/// The cases from the switch namespace, where the backends are reachable.
fn in_switch_namespace(
    world: &World,
    cases: Vec<Case>,
    rounds: usize,
) -> Result<Vec<MeasurementCost>, Interrupted> {
    world
        .fixture
        .topology
        .switch
        .spawn(move || time_cases(cases, rounds))
        .join()
        .expect("analysis thread")
}

/// A Prometheus server in the switch namespace scraping the first backend
/// of each color, once it has a figure for green.
fn start_prometheus(world: &World) -> Prometheus {
    let switch = &world.fixture.topology.switch;
    let first = [Color::Blue, Color::Green].map(|color| backends(color, 1)[0]);
    let prometheus = Prometheus::start(switch, PROMETHEUS_LISTEN.parse().expect("literal"), &first);
    let query = green_query();
    let deadline = Instant::now() + Duration::from_secs(20);
    while prometheus.value(switch, &query).is_err() {
        assert!(
            Instant::now() < deadline,
            "Prometheus has no figure for green after 20 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    prometheus
}

/// [`TTFT_QUERY`] as the analysis sends it for green's backend.
fn green_query() -> String {
    let target = target(1);
    Source::render(
        TTFT_QUERY,
        &target.service,
        target.vip,
        target.color,
        &target.backends,
    )
}

fn prometheus_case(url: &str) -> Case {
    Case::new(
        ("prometheus", "p95 (instant query)"),
        1,
        analysis(
            Source::Prometheus {
                url: url.to_owned(),
                query: TTFT_QUERY.to_owned(),
            },
            AT_MOST_ONE,
        ),
        Read::Query {
            endpoint: format!("{url}/api/v1/query"),
            query: green_query(),
        },
    )
}

/// One service per gate on the switch interface, each with a backend of
/// its own per color (a backend serves one service): Prometheus's on the
/// first port, the one it scrapes.
fn gates_config(prometheus_url: &str) -> String {
    let pools = |index: usize| {
        let [blue, green] = [Color::Blue, Color::Green].map(|color| backends(color, 3)[index]);
        format!("blue = \"{blue}\"\ngreen = \"{green}\"\n")
    };
    let (prometheus, none, from_backends) = (pools(0), pools(1), pools(2));
    format!(
        r#"interface = "{SWITCH_IFACE}"

[[service]]
name = "none"
vip = "10.200.100.1:80"
{none}
[[service]]
name = "backends"
vip = "10.200.100.2:80"
{from_backends}
[[service.analysis]]
name = "ttft-p95"
source = "backends"
quantile = 0.95
max_ratio = 1.5
window_secs = {GATE_WINDOW_SECS}

[[service]]
name = "prometheus"
vip = "10.200.100.3:80"
{prometheus}
[[service.analysis]]
name = "ttft-p95"
source = "prometheus"
prometheus = "{prometheus_url}"
query = '{TTFT_QUERY}'
max = 1.0
"#
    )
}

/// Each gate's service switched in turn, colors alternating, through the
/// real binary.
fn gate_costs(
    world: &World,
    prometheus_url: &str,
    switches: usize,
) -> Result<Vec<GateCost>, Interrupted> {
    let fixture = &world.fixture;
    let config = fixture.write_config(&gates_config(prometheus_url));
    fixture.up_with_config(&config);
    // Each gate: its service, and what it waits by design.
    let gates = [
        ("none", 0.0),
        ("backends", GATE_WINDOW_SECS as f64 * 1e3),
        ("prometheus", 0.0),
    ];
    let mut samples = vec![Vec::new(); gates.len()];
    for round in 0..switches {
        let color = if round % 2 == 0 { "green" } else { "blue" };
        for ((service, _), into) in gates.iter().zip(&mut samples) {
            check()?;
            let command = SwitchCommand::bluegreen(
                &fixture.bluegreen,
                &fixture.topology.switch,
                &["switch", color, "--service", service],
            );
            let started = Instant::now();
            command.run()?;
            into.push(millis(started.elapsed()));
        }
    }
    fixture
        .bluegreen
        .ok(&["-q", "down", "--iface", SWITCH_IFACE]);
    let none = &samples[0];
    Ok(gates
        .iter()
        .zip(&samples)
        .map(|(&(gate, window_ms), switched)| {
            let added: Vec<f64> = switched
                .iter()
                .zip(none)
                .map(|(gated, plain)| gated - plain - window_ms)
                .collect();
            GateCost {
                gate: gate.to_owned(),
                switches: switched.len(),
                p50_ms: median(switched),
                p95_ms: percentile(switched, 95.0),
                ratio: median(switched) / median(none),
                window_ms,
                added_ms: median(&added),
            }
        })
        .collect())
}

/// A service whose pools hold [`PER_COLOR_IN_DAEMON`] backends each,
/// with the analyses or without.
fn pool_config(analyses: bool) -> String {
    let pool = |color| {
        backends(color, PER_COLOR_IN_DAEMON)
            .iter()
            .map(|backend| format!("\"{backend}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "interface = \"{SWITCH_IFACE}\"\n\n[[service]]\nname = \"pool\"\nvip = \"{}\"\nblue = [{}]\ngreen = [{}]\n{}",
        vip(),
        pool(Color::Blue),
        pool(Color::Green),
        if analyses { DAEMON_ANALYSES } else { "" }
    )
}

/// The daemon's CPU time over `period` and the wall time it was counted
/// over, in seconds, on the pool service switched once, so that a ratio
/// compares two colors.
fn daemon_cpu(world: &World, analyses: bool, period: Duration) -> Result<(f64, f64), Interrupted> {
    let _model = world.serve();
    let fixture = &world.fixture;
    let config = fixture.write_config(&pool_config(analyses));
    fixture.up_with_config(&config);
    fixture
        .bluegreen
        .ok(&["-q", "switch", "green", "--skip-check"]);
    let daemon = fixture.start_daemon(&config, &[]);
    pause(DAEMON_SETTLE)?;
    let (before, started) = (cpu::process_seconds(daemon.pid()), Instant::now());
    pause(period)?;
    let used = cpu::process_seconds(daemon.pid()) - before;
    let elapsed = started.elapsed().as_secs_f64();
    if analyses {
        let service = fixture.service_status();
        let verdicts: Vec<&str> = service["analyses"]
            .as_array()
            .map(|analyses| {
                analyses
                    .iter()
                    .filter_map(|analysis| analysis["last"]["verdict"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            verdicts,
            ["pass", "pass"],
            "the daemon measured both analyses: {service}"
        );
    }
    drop(daemon);
    fixture
        .bluegreen
        .ok(&["-q", "down", "--iface", SWITCH_IFACE]);
    Ok((used, elapsed))
}

/// Sleeps `duration`, a tenth of a second at a time for Ctrl-C.
fn pause(duration: Duration) -> Result<(), Interrupted> {
    let deadline = Instant::now() + duration;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        check()?;
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
    Ok(())
}

/// The daemon without and with analyses, taking turns.
fn daemon_cpus(world: &World, plan: &AnalysisPlan) -> Result<DaemonCpu, Interrupted> {
    // CPU and wall seconds summed over the turns.
    let (mut without, mut with) = ((0.0, 0.0), (0.0, 0.0));
    for _ in 0..plan.daemon_rounds {
        for (analyses, sums) in [(false, &mut without), (true, &mut with)] {
            let (cpu, wall) = daemon_cpu(world, analyses, plan.daemon_period)?;
            sums.0 += cpu;
            sums.1 += wall;
        }
    }
    let percent = |(cpu, wall): (f64, f64)| cpu / wall * 100.0;
    let resolution_percent = cpu::clock_tick() / without.1 * 100.0;
    let ratio_is_lower_bound = percent(without) < resolution_percent;
    Ok(DaemonCpu {
        backends: 2 * PER_COLOR_IN_DAEMON,
        // The quantile reads both pools, the error ratio green's.
        gets_per_second: 3 * PER_COLOR_IN_DAEMON,
        rounds: plan.daemon_rounds,
        seconds_per_round: plan.daemon_period.as_secs_f64(),
        without_percent: percent(without),
        with_percent: percent(with),
        resolution_percent,
        ratio: percent(with) / percent(without).max(resolution_percent),
        ratio_is_lower_bound,
    })
}

pub fn run(plan: &AnalysisPlan) -> Result<AnalysisReport, Interrupted> {
    let world = World::new();
    let mut measurements = {
        let _model = world.serve();
        in_switch_namespace(&world, backend_cases(), plan.rounds)?
    };
    check()?;
    let gates = {
        let _model = world.serve();
        let prometheus = start_prometheus(&world);
        measurements.extend(in_switch_namespace(
            &world,
            vec![prometheus_case(&prometheus.url)],
            plan.rounds,
        )?);
        gate_costs(&world, &prometheus.url, plan.switches)?
    };
    let daemon = daemon_cpus(&world, plan)?;
    Ok(AnalysisReport {
        rounds: plan.rounds,
        measurements,
        gates,
        daemon,
    })
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

pub fn table(report: &AnalysisReport) -> String {
    let mut out = format!(
        "## 8. Metric analysis\n\n\
         One measurement in-process (`Analyzer::measure`, from the switch namespace; {} \
         rounds), against its baseline in the same round: the same GETs made as an \
         analyzer makes them (a color's backends at once, one thread each, the colors one \
         after the other, the library's HTTP client) without the analysis; for Prometheus, \
         the rendered query as a plain GET. Ratio and added: medians of each round's.\n\n\
         | source | figure | backends per color | GETs | p50 | p95 | baseline p50 | baseline p95 | x baseline | added (p50) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        report.rounds
    );
    for cost in &report.measurements {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2}x | {:+.2} ms |",
            cost.source,
            cost.figure,
            cost.backends_per_color,
            cost.gets,
            cost.p50_ms,
            cost.p95_ms,
            cost.baseline_p50_ms,
            cost.baseline_p95_ms,
            cost.ratio,
            cost.added_ms
        );
    }
    out += "\n`bluegreen switch` (start to exit) without a gate and with one analysis \
            gate (one backend per color; the backends gate a p95 with max_ratio over a \
            1 s window, its first reading inside it), in turns; added: the median of each \
            round's difference to the switch without a gate, the window taken off.\n\n\
            | gate | switches | p50 | p95 | x no gate | window | added beyond it (p50) |\n\
            | --- | --- | --- | --- | --- | --- | --- |\n";
    for gate in &report.gates {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} ms | {:.1} ms | {:.2}x | {:.0} ms | {:+.1} ms |",
            gate.gate,
            gate.switches,
            gate.p50_ms,
            gate.p95_ms,
            gate.ratio,
            gate.window_ms,
            gate.added_ms
        );
    }
    let daemon = &report.daemon;
    let _ = writeln!(
        out,
        "\n`bluegreen daemon` on a service of {} backends, CPU time (user + system, \
         /proc, {:.2} % resolution) over {} turn{} of {:.0} s each way: {:.2} % of one CPU \
         without analyses, {:.2} % with a p95 (max_ratio) and an error ratio every second \
         ({} GETs a second), {}{:.1}x.\n",
        daemon.backends,
        daemon.resolution_percent,
        daemon.rounds,
        if daemon.rounds == 1 { "" } else { "s" },
        daemon.seconds_per_round,
        daemon.without_percent,
        daemon.with_percent,
        daemon.gets_per_second,
        if daemon.ratio_is_lower_bound {
            "at least "
        } else {
            ""
        },
        daemon.ratio
    );
    out
}

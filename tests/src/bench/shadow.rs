//! Part 10: shadow traffic. What a `bluegreen shadow run` costs the
//! traffic it copies: requests per second and p99 through the VIP with no
//! run, and with runs sampling 0.01 % (on, next to nothing sampled), 10 %
//! and 100 % of new flows, each against the no-run baseline of the same
//! round; and what the replayer sustains: requests replayed per second,
//! its CPU time per replayed request, what it dropped and why, beside the
//! CPU time the live and the idle backends spent on the same requests.
//!
//! Shadowing samples new flows, so each setting is measured with a new
//! connection per request (every request a new flow) and with keep-alive
//! connections (wrk's, opened after the run began, are the only flows).
//! Green, the idle color, is a bench backend as blue is.

use std::{
    fmt::Write as _,
    io::Read,
    process::{Child, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bluegreen::{
    endpoint::Color,
    shadow::{
        engine::{ShadowReport, StopReason},
        record::ShadowRecord,
    },
};
use serde::Serialize;

use super::{
    Interrupted, check, cpu,
    lab::{Dataplane, Lab, wait_bounded},
    stats::median,
    throughput::{self, Connections, ThroughputPlan, WrkLoad, WrkRun},
};

/// A shadowing run's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Setting {
    /// `--sample`.
    pub sample: &'static str,
    /// `--max-inflight`, if not the default (256).
    pub max_inflight: Option<u32>,
}

impl Setting {
    const fn sampling(sample: &'static str) -> Option<Setting> {
        Some(Setting {
            sample,
            max_inflight: None,
        })
    }
}

/// Each setting; `None`: no shadowing run, the baseline. 0.01 % is the
/// smallest share the command takes. The last lifts the bound on flows in
/// flight, for what the replayer itself sustains.
const SETTINGS: [Option<Setting>; 5] = [
    None,
    Setting::sampling("0.01%"),
    Setting::sampling("10%"),
    Setting::sampling("100%"),
    Some(Setting {
        sample: "100%",
        max_inflight: Some(4096),
    }),
];
/// From the spawn until the run's first figures are published, which it
/// does once capture is on.
const CAPTURING_WITHIN: Duration = Duration::from_secs(10);
const CAPTURING_POLL: Duration = Duration::from_millis(20);
/// A stopped run lets its replays finish for at most 10 s.
const STOP_WITHIN: Duration = Duration::from_secs(15);

/// What a shadowing run did over one load.
#[derive(Clone, Debug, Serialize)]
pub struct Shadowed {
    /// Wall seconds of the load, and the run's CPU seconds over it.
    pub load_s: f64,
    pub cpu_during_load_s: f64,
    /// The run's CPU seconds from the load's start to its exit: its
    /// replays of the load's last flows, after the load, included.
    pub cpu_to_exit_s: f64,
    /// Green's CPU seconds from the load's start to the run's exit.
    pub idle_backend_cpu_s: f64,
    /// As the run printed it when stopped.
    pub report: ShadowReport,
}

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub round: usize,
    /// `None` without a shadowing run.
    pub setting: Option<Setting>,
    pub connections: Connections,
    pub run: WrkRun,
    /// Blue's CPU seconds over the load.
    pub live_backend_cpu_s: f64,
    pub shadowed: Option<Shadowed>,
}

/// The replayer's figures for one setting: medians over rounds, losses
/// summed.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayFigures {
    pub sampled_flows: u64,
    pub flows_replayed: u64,
    pub requests_replayed: u64,
    /// Replayed over served by the live color.
    pub replayed_share: f64,
    pub replayed_per_second: f64,
    /// The run's CPU time over the load's wall time, in percent of one
    /// CPU.
    pub cpu_percent: f64,
    /// The run's CPU time from the load's start to its exit per replayed
    /// request; `None` when nothing was replayed.
    pub cpu_us_per_request: Option<f64>,
    pub idle_backend_cpu_us_per_request: Option<f64>,
    pub flows_over_inflight: u64,
    pub flows_backlogged: u64,
    pub ring_full: u64,
    /// Every other flow, request or record lost: see [`other_losses`].
    pub other_losses: u64,
}

/// Medians over rounds for one setting and connection mode.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub setting: Option<Setting>,
    pub connections: Connections,
    pub requests_per_second: f64,
    pub p99_us: f64,
    pub errors: u64,
    /// Median over rounds of rps / the baseline's rps in that round.
    pub rps_vs_baseline: f64,
    pub p99_vs_baseline: f64,
    pub live_backend_cpu_us_per_request: f64,
    pub replay: Option<ReplayFigures>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ShadowBenchReport {
    #[serde(flatten)]
    pub load: WrkLoad,
    pub figures: Vec<Figures>,
    pub samples: Vec<Sample>,
}

/// Every round measures every setting once, in an order rotated from
/// round to round (as part 2 does), with both connection modes.
pub fn run(lab: &Lab, plan: &ThroughputPlan) -> Result<ShadowBenchReport, Interrupted> {
    let _active = lab.activate(Dataplane::BluegreenNative);
    let mut samples = Vec::new();
    for round in 0..plan.rounds {
        for step in 0..SETTINGS.len() {
            let setting = SETTINGS[(round + step) % SETTINGS.len()];
            for connections in Connections::ALL {
                check()?;
                let measured = measure(lab, plan, setting, connections, round)?;
                eprintln!("bench: round {round}, {}", describe(&measured));
                samples.push(measured);
            }
        }
    }
    Ok(ShadowBenchReport {
        load: WrkLoad::from(plan),
        figures: summarize(&samples, plan.rounds),
        samples,
    })
}

/// One wrk run through the VIP, under a shadowing run of `setting` if
/// there is one.
fn measure(
    lab: &Lab,
    plan: &ThroughputPlan,
    setting: Option<Setting>,
    connections: Connections,
    round: usize,
) -> Result<Sample, Interrupted> {
    // With the run's CPU seconds before the load.
    let shadow = match setting {
        Some(setting) => {
            let shadow = ShadowRun::start(lab, setting)?;
            let before = shadow.cpu_seconds();
            Some((shadow, before))
        }
        None => None,
    };
    let (live_before, idle_before) = (lab.blue.cpu_seconds(), lab.green.cpu_seconds());
    let started = Instant::now();
    let run = throughput::wrk(lab, plan, Dataplane::BluegreenNative, connections)?;
    let load_s = started.elapsed().as_secs_f64();
    let live_backend_cpu_s = lab.blue.cpu_seconds() - live_before;
    let shadowed = match shadow {
        Some((shadow, before)) => {
            let cpu_during_load_s = shadow.cpu_seconds() - before;
            let (report, cpu_total_s) = shadow.stop()?;
            Some(Shadowed {
                load_s,
                cpu_during_load_s,
                cpu_to_exit_s: cpu_total_s - before,
                idle_backend_cpu_s: lab.green.cpu_seconds() - idle_before,
                report,
            })
        }
        None => None,
    };
    Ok(Sample {
        round,
        setting,
        connections,
        run,
        live_backend_cpu_s,
        shadowed,
    })
}

fn describe(sample: &Sample) -> String {
    let mut line = format!(
        "shadowing {}, {}: {:.0} req/s, p99 {:.0} us, {} errors",
        label(sample.setting),
        sample.connections.label(),
        sample.run.requests_per_second,
        sample.run.p99_us,
        sample.run.errors
    );
    if let Some(shadowed) = &sample.shadowed {
        let report = &shadowed.report;
        let _ = write!(
            line,
            "; replayed {} requests of {} flows ({:.0}/s), run at {:.0} % CPU, lost: {} over inflight, {} backlogged, {} ring full, {} other",
            report.replay.requests,
            report.engine.flows_replayed,
            report.replay.requests as f64 / shadowed.load_s,
            shadowed.cpu_during_load_s / shadowed.load_s * 100.0,
            report.engine.flows_over_inflight,
            report.engine.flows_backlogged,
            capture_count(report, "ring_full"),
            other_losses(report)
        );
    }
    line
}

fn label(setting: Option<Setting>) -> String {
    match setting {
        None => "off".to_owned(),
        Some(Setting {
            sample,
            max_inflight: None,
        }) => sample.to_owned(),
        Some(Setting {
            sample,
            max_inflight: Some(max_inflight),
        }) => format!("{sample}, max-inflight {max_inflight}"),
    }
}

fn capture_count(report: &ShadowReport, name: &str) -> u64 {
    report.capture.get(name).copied().unwrap_or(0)
}

/// What a run lost besides flows over `max_inflight`, flows its replay
/// fell behind on and records the ring had no room for: flows without an
/// idle backend, over the memory bound, not HTTP or abandoned while being
/// rebuilt; records truncated, malformed or unusable, or of a flow the
/// sampling table had no room for; replayed requests that failed.
fn other_losses(report: &ShadowReport) -> u64 {
    let engine = &report.engine;
    let replay = &report.replay;
    ["truncated", "malformed", "table_full"]
        .iter()
        .map(|name| capture_count(report, name))
        .sum::<u64>()
        + report.reassembly.abandoned_flows
        + engine.flows_without_backend
        + engine.flows_over_memory
        + engine.flows_not_http
        + engine.bad_records
        + replay.connect_failures
        + replay.timeouts
        + replay.malformed_responses
}

/// A `bluegreen shadow run` in the switch namespace (`nsenter` execs it:
/// the child is the run itself). Stopped by SIGINT, as Ctrl-C stops it,
/// and reaped on drop if [`Self::stop`] did not, also when the bench fails.
struct ShadowRun {
    child: Child,
    /// What it prints, read as it prints so that it never blocks on a
    /// full pipe.
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

impl ShadowRun {
    /// Spawned, and capturing once this returns.
    fn start(lab: &Lab, setting: Setting) -> Result<ShadowRun, Interrupted> {
        let max_inflight = setting.max_inflight.map(|max| max.to_string());
        let mut args = vec!["shadow", "run", "web", "--json", "--sample", setting.sample];
        if let Some(max_inflight) = &max_inflight {
            args.extend(["--max-inflight", max_inflight]);
        }
        let mut child = lab
            .bluegreen
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start bluegreen shadow run");
        let stdout = child.stdout.take().map(read_all);
        let stderr = child.stderr.take().map(read_all);
        let mut run = ShadowRun {
            child,
            stdout,
            stderr,
        };
        run.wait_capturing(lab)?;
        Ok(run)
    }

    /// Until the run's record shows the capture's counters: it reads them
    /// first once capture is on.
    fn wait_capturing(&mut self, lab: &Lab) -> Result<(), Interrupted> {
        let deadline = Instant::now() + CAPTURING_WITHIN;
        loop {
            check()?;
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "bluegreen shadow run exited ({status}) before capturing: {}",
                    self.stderr()
                );
            }
            let status = lab.bluegreen.run(&["shadow", "status", "web", "--json"]);
            if status.code == 0 {
                let shown: serde_json::Value =
                    serde_json::from_str(&status.stdout).expect("shadow status --json");
                let record: Option<ShadowRecord> =
                    serde_json::from_value(shown["shadows"][0].clone()).ok();
                if record.is_some_and(|record| {
                    record.owner.pid == self.child.id()
                        && record.stopped.is_none()
                        && !record.report.capture.is_empty()
                }) {
                    return Ok(());
                }
            }
            assert!(
                Instant::now() < deadline,
                "bluegreen shadow run did not capture within {CAPTURING_WITHIN:?}"
            );
            std::thread::sleep(CAPTURING_POLL);
        }
    }

    /// Its CPU seconds so far, in ns: a few replays' worth shows. Its
    /// threads are all still there (tokio's runtime is on this one).
    fn cpu_seconds(&self) -> f64 {
        cpu::live_threads_seconds(self.child.id())
    }

    /// SIGINT, then its final report, and its CPU seconds from spawn to
    /// exit.
    fn stop(mut self) -> Result<(ShadowReport, f64), Interrupted> {
        // Counted when reaped: nothing else is reaped meanwhile.
        let reaped_before = cpu::reaped_children_seconds();
        interrupt(&self.child);
        let status = wait_bounded(&mut self.child, STOP_WITHIN);
        let cpu_s = cpu::reaped_children_seconds() - reaped_before;
        let printed = self
            .stdout
            .take()
            .expect("stdout read once")
            .join()
            .expect("stdout reader");
        check()?;
        assert!(
            status.success(),
            "bluegreen shadow run failed ({status}): {}",
            self.stderr()
        );
        let record: ShadowRecord = serde_json::from_str(&printed).unwrap_or_else(|error| {
            panic!("bluegreen shadow run printed no record ({error}):\n{printed}")
        });
        assert_eq!(
            (record.live, record.idle),
            (Color::Blue, Color::Green),
            "the run replayed blue's traffic to green"
        );
        assert_eq!(
            record.stopped.as_ref().map(|stopped| &stopped.reason),
            Some(&StopReason::Requested),
            "the run ran until stopped: {}",
            self.stderr()
        );
        Ok((record.report, cpu_s))
    }

    /// What it printed on stderr, once it has exited.
    fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ShadowRun {
    /// Never panics: it may run while unwinding.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            interrupt(&self.child);
            let deadline = Instant::now() + STOP_WITHIN;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn interrupt(child: &Child) {
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
}

/// A pipe read to its end on a thread of its own.
fn read_all(pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut pipe = pipe;
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

fn summarize(samples: &[Sample], rounds: usize) -> Vec<Figures> {
    let find = |round, setting, connections| {
        samples
            .iter()
            .find(|s| s.round == round && s.setting == setting && s.connections == connections)
    };
    let mut figures = Vec::new();
    for connections in Connections::ALL {
        for setting in SETTINGS {
            let runs: Vec<&Sample> = (0..rounds)
                .filter_map(|round| find(round, setting, connections))
                .collect();
            let vs_baseline = |value: fn(&WrkRun) -> f64| {
                let per_round: Vec<f64> = runs
                    .iter()
                    .filter_map(|own| {
                        let baseline = find(own.round, None, connections)?;
                        Some(value(&own.run) / value(&baseline.run))
                    })
                    .collect();
                median(&per_round)
            };
            let of = |value: &dyn Fn(&Sample) -> f64| {
                median(&runs.iter().map(|run| value(run)).collect::<Vec<_>>())
            };
            figures.push(Figures {
                setting,
                connections,
                requests_per_second: of(&|s| s.run.requests_per_second),
                p99_us: of(&|s| s.run.p99_us),
                errors: runs.iter().map(|s| s.run.errors).sum(),
                rps_vs_baseline: vs_baseline(|run| run.requests_per_second),
                p99_vs_baseline: vs_baseline(|run| run.p99_us),
                live_backend_cpu_us_per_request: of(&|s| {
                    s.live_backend_cpu_s * 1e6 / s.run.requests as f64
                }),
                replay: setting.map(|_| replay_figures(&runs)),
            });
        }
    }
    figures
}

fn replay_figures(runs: &[&Sample]) -> ReplayFigures {
    let shadowed: Vec<(&Sample, &Shadowed)> = runs
        .iter()
        .filter_map(|s| Some((*s, s.shadowed.as_ref()?)))
        .collect();
    let of = |value: &dyn Fn(&Sample, &Shadowed) -> f64| {
        median(
            &shadowed
                .iter()
                .map(|(s, shadowed)| value(s, shadowed))
                .collect::<Vec<_>>(),
        )
    };
    // Per replayed request, over the rounds that replayed any.
    let per_request = |cpu_s: fn(&Shadowed) -> f64| {
        let per_round: Vec<f64> = shadowed
            .iter()
            .filter(|(_, shadowed)| shadowed.report.replay.requests > 0)
            .map(|(_, shadowed)| cpu_s(shadowed) * 1e6 / shadowed.report.replay.requests as f64)
            .collect();
        (!per_round.is_empty()).then(|| median(&per_round))
    };
    let sum = |count: fn(&ShadowReport) -> u64| -> u64 {
        shadowed
            .iter()
            .map(|(_, shadowed)| count(&shadowed.report))
            .sum()
    };
    ReplayFigures {
        sampled_flows: sum(|report| capture_count(report, "sampled_flows")),
        flows_replayed: sum(|report| report.engine.flows_replayed),
        requests_replayed: sum(|report| report.replay.requests),
        replayed_share: of(&|s, shadowed| {
            shadowed.report.replay.requests as f64 / s.run.requests as f64
        }),
        replayed_per_second: of(&|_, shadowed| {
            shadowed.report.replay.requests as f64 / shadowed.load_s
        }),
        cpu_percent: of(&|_, shadowed| shadowed.cpu_during_load_s / shadowed.load_s * 100.0),
        cpu_us_per_request: per_request(|shadowed| shadowed.cpu_to_exit_s),
        idle_backend_cpu_us_per_request: per_request(|shadowed| shadowed.idle_backend_cpu_s),
        flows_over_inflight: sum(|report| report.engine.flows_over_inflight),
        flows_backlogged: sum(|report| report.engine.flows_backlogged),
        ring_full: sum(|report| capture_count(report, "ring_full")),
        other_losses: sum(other_losses),
    }
}

fn us(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| format!("{value:.1} µs"))
}

pub fn table(report: &ShadowBenchReport) -> String {
    let mut out = format!(
        "## 10. Shadow traffic\n\n\
         wrk through the VIP (bluegreen, native XDP; {} threads, {} connections, {} s, \
         {} round{}), with no shadowing run and under `bluegreen shadow run web --sample S` \
         (and `--max-inflight M`) replaying to green, a bench backend; settings in an order \
         rotated by round. \
         x baseline: median of each round's ratio to the run without shadowing.\n\n\
         | shadowing | connections | req/s | x baseline | p99 | x baseline | errors | \
         sampled flows | replayed requests (share of served) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        report.load.wrk_threads,
        report.load.wrk_connections,
        report.load.seconds,
        report.load.rounds,
        if report.load.rounds == 1 { "" } else { "s" }
    );
    for figures in &report.figures {
        let replayed = figures.replay.as_ref().map_or_else(
            || "- | -".to_owned(),
            |replay| {
                format!(
                    "{} | {} ({:.1} %)",
                    replay.sampled_flows,
                    replay.requests_replayed,
                    replay.replayed_share * 100.0
                )
            },
        );
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.3}x | {:.0} µs | {:.2}x | {} | {replayed} |",
            label(figures.setting),
            figures.connections.label(),
            figures.requests_per_second,
            figures.rps_vs_baseline,
            figures.p99_us,
            figures.p99_vs_baseline,
            figures.errors
        );
    }
    out += "\nThe replayer (the `shadow run` process, one thread) over the same loads: \
            replayed requests per second of load; its CPU time over the load, in percent \
            of one CPU; its CPU time from the load's start to its exit (its ticks and its stop \
            included, which is all there is at 0.01 %) per replayed request, beside the live \
            backend's (blue's workers) per request served and the idle backend's (green's) \
            per replayed request; losses summed over rounds (other: flows without a backend, \
            over memory, not HTTP or abandoned in reassembly, bad records, failed replays). \
            wrk, both backends, the kernel and the replayer share the machine's CPUs: the \
            replayer's rate is what it got of them, requests per CPU-second what one core of \
            its own would give.\n\n\
            | shadowing | connections | replayed/s | its CPU | its CPU per replayed request | \
            live backend per request | idle backend per replayed request | over inflight | \
            backlogged | ring full | other |\n\
            | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for figures in &report.figures {
        let Some(replay) = &figures.replay else {
            continue;
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} % | {} | {:.1} µs | {} | {} | {} | {} | {} |",
            label(figures.setting),
            figures.connections.label(),
            replay.replayed_per_second,
            replay.cpu_percent,
            us(replay.cpu_us_per_request),
            figures.live_backend_cpu_us_per_request,
            us(replay.idle_backend_cpu_us_per_request),
            replay.flows_over_inflight,
            replay.flows_backlogged,
            replay.ring_full,
            replay.other_losses
        );
    }
    let saturated = report.figures.iter().filter(|figures| {
        figures.connections == Connections::NewPerRequest
            && figures
                .setting
                .is_some_and(|setting| setting.sample == "100%")
    });
    for figures in saturated {
        let (Some(replay), Some(setting)) = (&figures.replay, figures.setting) else {
            continue;
        };
        let Some(cpu_us) = replay.cpu_us_per_request else {
            continue;
        };
        let _ = writeln!(
            out,
            "\nAt {} with a new connection per request, the replayer replayed {:.0} \
             requests/s at {:.0} % of one CPU: {cpu_us:.1} µs of CPU per replayed request, \
             {:.0} requests per CPU-second, {:.1}x the live backend's CPU per request served.",
            label(Some(setting)),
            replay.replayed_per_second,
            replay.cpu_percent,
            1e6 / cpu_us,
            cpu_us / figures.live_backend_cpu_us_per_request
        );
    }
    out.push('\n');
    out
}

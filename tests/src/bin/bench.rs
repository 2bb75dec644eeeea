//! `cargo xtask bench`: bluegreen against baselines measured in the same
//! run: per-packet cost in the kernel, throughput and latency end to end,
//! and switch time; then a timeline of who answers through a switch, a
//! rollback and a weighted shift; what pools of backends cost; how long a
//! fleet of 1, 3 and 10 hosts takes to converge; what host-local
//! clients pay to connect through a VIP; what metric analysis adds to a
//! switch and costs the daemon; what a switch that starts the idle
//! color first takes, split into its steps; and what shadowing costs the
//! traffic it copies, and what its replayer sustains. Prints markdown, writes JSON and the
//! timeline's SVG chart to `target/bench/`, fails if the timeline broke the
//! commands' promises, and removes everything it created, also on Ctrl-C or
//! failure.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use bluegreen_testbed::bench::{
    self, Interrupted,
    analysis::{self, AnalysisPlan},
    fleet::{self, FleetPlan},
    kernel_cost::{self, KernelPlan},
    lab::Lab,
    lifecycle::{self, LifecyclePlan},
    local::{self, LocalPlan},
    machine::Machine,
    pools::{self, PoolsPlan},
    report::Report,
    shadow,
    switch_time::{self, SwitchPlan},
    throughput::{self, ThroughputPlan},
    timeline::{self, TimelinePlan},
};

const USAGE: &str =
    "usage: bench [--quick] [--only kernel|throughput|switch|timeline|pools|fleet|local|analysis|lifecycle|shadow]

  --quick   a smoke run: fewer repeats and rounds, 1 s wrk runs, 1 s
            timeline phases (~35 s, ~40 s more for the analysis part,
            ~10 s for the lifecycle part and ~15 s for the shadow part)
  --only    run one part only";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Kernel,
    Throughput,
    Switch,
    Timeline,
    Pools,
    Fleet,
    Local,
    Analysis,
    Lifecycle,
    Shadow,
}

struct Options {
    quick: bool,
    only: Option<Part>,
}

impl Options {
    fn parse() -> Result<Options, String> {
        let mut options = Options {
            quick: false,
            only: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--only" => {
                    options.only = Some(match args.next().as_deref() {
                        Some("kernel") => Part::Kernel,
                        Some("throughput") => Part::Throughput,
                        Some("switch") => Part::Switch,
                        Some("timeline") => Part::Timeline,
                        Some("pools") => Part::Pools,
                        Some("fleet") => Part::Fleet,
                        Some("local") => Part::Local,
                        Some("analysis") => Part::Analysis,
                        Some("lifecycle") => Part::Lifecycle,
                        Some("shadow") => Part::Shadow,
                        other => {
                            return Err(format!(
                                "--only takes kernel|throughput|switch|timeline|pools|fleet|local|analysis|lifecycle|shadow, not {other:?}"
                            ));
                        }
                    })
                }
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(options)
    }

    fn runs(&self, part: Part) -> bool {
        self.only.is_none_or(|only| only == part)
    }

    fn kernel_plan(&self) -> KernelPlan {
        KernelPlan {
            repeat: if self.quick { 200_000 } else { 1_000_000 },
            rounds: if self.quick { 1 } else { 5 },
            flow_capacity: bluegreen_common::DEFAULT_FLOW_CAPACITY,
            fill_percents: vec![1, 50, 100],
            service_counts: vec![1, 100, 10_000],
        }
    }

    fn throughput_plan(&self) -> ThroughputPlan {
        ThroughputPlan {
            rounds: if self.quick { 1 } else { 3 },
            seconds: if self.quick { 1 } else { 5 },
            threads: 2,
            connections: 32,
        }
    }

    fn switch_plan(&self) -> SwitchPlan {
        // Short blocks, many times over: the peers take turns often, so
        // a change in the machine's other load reaches them all alike.
        SwitchPlan {
            blocks: if self.quick { 2 } else { 6 },
            switches_per_block: if self.quick { 5 } else { 10 },
            settle: Duration::from_millis(20),
        }
    }

    fn pools_plan(&self) -> PoolsPlan {
        PoolsPlan {
            repeat: if self.quick { 200_000 } else { 1_000_000 },
            rounds: if self.quick { 3 } else { 7 },
            sizes: vec![1, 8, 64],
        }
    }

    fn fleet_plan(&self) -> FleetPlan {
        FleetPlan {
            host_counts: vec![1, 3, 10],
            rounds: if self.quick { 3 } else { 10 },
        }
    }

    fn local_plan(&self) -> LocalPlan {
        LocalPlan {
            rounds: if self.quick { 1 } else { 5 },
            seconds: if self.quick { 0.5 } else { 2.0 },
        }
    }

    fn analysis_plan(&self) -> AnalysisPlan {
        AnalysisPlan {
            rounds: if self.quick { 8 } else { 30 },
            switches: if self.quick { 3 } else { 10 },
            daemon_rounds: if self.quick { 1 } else { 2 },
            daemon_period: Duration::from_secs(if self.quick { 8 } else { 10 }),
        }
    }

    fn lifecycle_plan(&self) -> LifecyclePlan {
        LifecyclePlan {
            rounds: if self.quick { 3 } else { 10 },
        }
    }

    /// Part 2's load, in rounds of every shadowing setting and both
    /// connection modes.
    fn shadow_plan(&self) -> ThroughputPlan {
        ThroughputPlan {
            rounds: if self.quick { 1 } else { 3 },
            seconds: if self.quick { 1 } else { 3 },
            threads: 2,
            connections: 32,
        }
    }

    fn timeline_plan(&self) -> TimelinePlan {
        TimelinePlan {
            phase: Duration::from_secs(if self.quick { 1 } else { 3 }),
            clients: 4,
            pace: Duration::from_millis(5),
            keep_alive: 4,
            keep_alive_pace: Duration::from_millis(20),
        }
    }
}

fn measure(options: &Options, report: &mut Report) -> Result<(), Interrupted> {
    if options.runs(Part::Kernel) {
        eprintln!("bench: part 1, per-packet cost in the kernel");
        report.kernel = Some(kernel_cost::run(&options.kernel_plan())?);
    }
    if [Part::Throughput, Part::Switch, Part::Timeline]
        .into_iter()
        .any(|part| options.runs(part))
    {
        let lab = Lab::new();
        if options.runs(Part::Throughput) {
            eprintln!("bench: part 2, end to end with wrk");
            report.throughput = Some(throughput::run(&lab, &options.throughput_plan())?);
        }
        if options.runs(Part::Switch) {
            eprintln!("bench: part 3, switch time");
            report.switch_time = Some(switch_time::run(&lab, &options.switch_plan())?);
        }
        if options.runs(Part::Timeline) {
            eprintln!("bench: part 4, switch timeline");
            report.timeline = Some(timeline::run(&lab, &options.timeline_plan())?);
        }
    }
    if options.runs(Part::Pools) {
        eprintln!("bench: part 5, pools");
        report.pools = Some(pools::run(&options.pools_plan())?);
    }
    if options.runs(Part::Fleet) {
        eprintln!("bench: part 6, fleet convergence");
        report.fleet = Some(fleet::run(&options.fleet_plan())?);
    }
    if options.runs(Part::Local) {
        eprintln!("bench: part 7, host-local clients");
        report.local = Some(local::run(&options.local_plan())?);
    }
    if options.runs(Part::Analysis) {
        eprintln!("bench: part 8, metric analysis");
        report.analysis = Some(analysis::run(&options.analysis_plan())?);
    }
    if options.runs(Part::Lifecycle) {
        eprintln!("bench: part 9, idle lifecycle");
        report.lifecycle = Some(lifecycle::run(&options.lifecycle_plan())?);
    }
    if options.runs(Part::Shadow) {
        eprintln!("bench: part 10, shadow traffic");
        report.shadow = Some(shadow::run(&Lab::new(), &options.shadow_plan())?);
    }
    Ok(())
}

fn main() -> ExitCode {
    let options = match Options::parse() {
        Ok(options) => options,
        // An empty error is a request for help.
        Err(error) if error.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("bench: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    bench::catch_interrupts();
    let started = Instant::now();
    let mut report = Report {
        machine: Machine::probe(),
        quick: options.quick,
        elapsed_s: 0.0,
        kernel: None,
        throughput: None,
        switch_time: None,
        timeline: None,
        pools: None,
        fleet: None,
        local: None,
        analysis: None,
        lifecycle: None,
        shadow: None,
        targets: Vec::new(),
    };
    if measure(&options, &mut report).is_err() {
        eprintln!("bench: interrupted; everything it created has been removed");
        return ExitCode::from(130);
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.judge();
    print!("{}", report.markdown());
    match report.save() {
        Ok(path) => eprintln!("bench: results in {}", path.display()),
        Err(error) => {
            eprintln!("bench: cannot write the results: {error}");
            return ExitCode::FAILURE;
        }
    }
    // The chart is written either way (it says CHECK FAILED), but a run
    // that did not follow the commands must not pass for a good one.
    let problems = report
        .timeline
        .as_ref()
        .map_or(&[][..], |t| &t.problems[..]);
    if !problems.is_empty() {
        eprintln!("bench: the switch timeline failed its checks:");
        for problem in problems {
            eprintln!("  {problem}");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

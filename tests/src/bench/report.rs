//! The results as markdown (stdout) and JSON (`target/bench/`), with every
//! target judged met or missed and by how much, and the timeline's chart
//! (`target/bench/timeline.svg`).

use std::{fmt::Write as _, path::PathBuf};

use serde::Serialize;

use super::{
    analysis::{self, AnalysisReport},
    chart,
    fleet::{self, FleetReport},
    kernel_cost::{Case, CaseFigures, KernelReport},
    lab::Dataplane,
    lifecycle::{self, LifecycleReport},
    local::{self, LocalReport},
    machine::Machine,
    pools::{self, PoolsReport},
    shadow::{self, ShadowBenchReport},
    switch_time::{SwitchFigures, SwitchReport},
    targets::{Target, at_least, at_most},
    throughput::ThroughputReport,
    timeline::{Counts, TimelineReport},
};

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub quick: bool,
    pub elapsed_s: f64,
    pub kernel: Option<KernelReport>,
    pub throughput: Option<ThroughputReport>,
    pub switch_time: Option<SwitchReport>,
    pub timeline: Option<TimelineReport>,
    pub pools: Option<PoolsReport>,
    pub fleet: Option<FleetReport>,
    pub local: Option<LocalReport>,
    pub analysis: Option<AnalysisReport>,
    pub lifecycle: Option<LifecycleReport>,
    pub shadow: Option<ShadowBenchReport>,
    pub targets: Vec<Target>,
}

impl Report {
    pub fn judge(&mut self) {
        let mut targets = Vec::new();
        if let Some(kernel) = &self.kernel {
            targets.extend(kernel_targets(kernel));
        }
        if let Some(throughput) = &self.throughput {
            targets.extend(throughput_targets(throughput));
        }
        if let Some(switch) = &self.switch_time {
            targets.extend(switch_targets(switch));
        }
        if let Some(pools) = &self.pools {
            targets.extend(pools::targets(pools));
        }
        self.targets = targets;
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "# bluegreen benchmark{}\n\n{}; {} CPUs ({}); kernel {}; {:.0} s\n",
            if self.quick { " (--quick)" } else { "" },
            m.date,
            m.nproc,
            m.cpu,
            m.kernel,
            self.elapsed_s
        );
        if let Some(kernel) = &self.kernel {
            out += &kernel_table(kernel);
        }
        if let Some(throughput) = &self.throughput {
            out += &throughput_table(throughput);
        }
        if let Some(switch) = &self.switch_time {
            out += &switch_table(switch);
        }
        if let Some(timeline) = &self.timeline {
            out += &timeline_table(timeline);
        }
        if let Some(pools) = &self.pools {
            out += &pools::table(pools);
        }
        if let Some(fleet) = &self.fleet {
            out += &fleet::table(fleet);
        }
        if let Some(local) = &self.local {
            out += &local::table(local);
        }
        if let Some(analysis) = &self.analysis {
            out += &analysis::table(analysis);
        }
        if let Some(lifecycle) = &self.lifecycle {
            out += &lifecycle::table(lifecycle);
        }
        if let Some(shadow) = &self.shadow {
            out += &shadow::table(shadow);
        }
        out += &targets_table(&self.targets);
        out
    }

    /// Writes `target/bench/latest.json` and a copy named after the time,
    /// and the timeline's chart if there is one.
    pub fn save(&self) -> std::io::Result<PathBuf> {
        let dir = target_dir().join("bench");
        std::fs::create_dir_all(&dir)?;
        if let Some(timeline) = &self.timeline {
            std::fs::write(
                dir.join("timeline.svg"),
                chart::timeline_svg(timeline, &self.machine),
            )?;
        }
        let json = serde_json::to_string_pretty(self).expect("the report serializes");
        let stamp = self.machine.date.replace([' ', ':'], "-");
        std::fs::write(dir.join(format!("{stamp}.json")), &json)?;
        let latest = dir.join("latest.json");
        std::fs::write(&latest, json)?;
        Ok(latest)
    }
}

/// Cargo's target directory, honouring CARGO_TARGET_DIR as xtask does.
fn target_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the test bed lives inside the workspace")
        .to_path_buf();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

fn kernel_table(report: &KernelReport) -> String {
    let mut out = String::new();
    let first = &report.configurations[0].cases;
    let baseline = |tc: bool| {
        first
            .iter()
            .find(|c| c.case.is_tc() == tc)
            .map_or(f64::NAN, |c| c.baseline_ns)
    };
    let _ = writeln!(
        out,
        "## 1. Per-packet cost in the kernel (BPF_PROG_TEST_RUN)\n\n\
         {} runs per measurement, {} rounds (3x as many for the non-VIP cases), medians; \
         {}-byte TCP frame; flow table of {} entries. \
         ns per packet as the kernel times it, and in parentheses the ratio to a no-op program \
         of the same type (`r0 = verdict; exit`, same frame, run before every measurement; \
         no-op XDP {:.0} ns, no-op TC {:.0} ns in the first configuration). \
         Ratios are medians of each run's ratio to the no-op run just before it. \
         \"floor\": the same ratio for a hand-assembled program that makes only the packet \
         reads and the map and helper calls the path cannot avoid, on the same maps, in the \
         same rounds (other port: the frame checks a port read needs (length, IPv4 without \
         options, not a fragment, TCP or UDP), read the port, test its bit in the port bitmap; \
         other address: also read the address and test a bit of the address filter; \
         established: the flow lookup; new flow: the service lookup and the flow write; TC: \
         the two lookups that find the flow and the two transport checksum helpers). \
         \"16-byte key\", on an LRU table of the same size and fill keyed by an IPv4-only \
         flow key (16 bytes; bluegreen's, for both families, has 40): for a new flow, its \
         floor again; for an established flow, its whole path at the least (the frame checks, \
         the key read from the frame, the lookup, the backend's address and port written; no \
         checksum arithmetic). \
         The two shadowing cells: the established case with 512 payload bytes, its service \
         shadowing half of its new flows, for a flow the sample left out and one it took; \
         the latter writes a ring record every run, the ring read out between batches of runs \
         it holds (its floor is the established case's).\n",
        report.repeat,
        report.rounds,
        report.frame_bytes,
        report.flow_capacity,
        baseline(false),
        baseline(true)
    );
    out += &matrix(report, |case| {
        let mut cell = format!(
            "{:.0} ns ({:.2}x; floor {:.2}x",
            case.ns, case.ratio, case.floor_ratio
        );
        if let Some(ipv4_key) = case.ipv4_key_floor_ratio {
            let _ = write!(cell, ", 16-byte key {ipv4_key:.2}x");
        }
        cell + ")"
    });
    out += "\nThe same rounds again, timed inside the programs by the kernel's run-time \
            statistics (`BPF_ENABLE_STATS`; on only for these rounds, since their two clock \
            reads add to every run): each program's ns over the no-op run just before it, \
            medians (path; floor; 16-byte key). They resolve a fraction of a ns where the \
            timer above gives whole ns, but time each run between two clock reads rather than \
            a loop of runs, so they need not agree with the timer's differences: compare \
            them with each other.\n\n";
    out += &matrix(report, |case| {
        let mut cell = format!(
            "+{:.1} ns (floor +{:.1} ns",
            case.over_noop_ns, case.floor_over_noop_ns
        );
        if let Some(ipv4_key) = case.ipv4_key_floor_over_noop_ns {
            let _ = write!(cell, "; 16-byte key +{ipv4_key:.1} ns");
        }
        cell + ")"
    });
    out
}

/// A markdown table of every configuration (rows) and case (columns).
fn matrix(report: &KernelReport, cell: impl Fn(&CaseFigures) -> String) -> String {
    let mut out = "| flow table fill | services |".to_string();
    for case in Case::ALL {
        let _ = write!(out, " {} |", case.label());
    }
    out += "\n| --- | --- |";
    out += &" --- |".repeat(Case::ALL.len());
    out += "\n";
    for configuration in &report.configurations {
        let _ = write!(
            out,
            "| {} % ({} flows) | {} |",
            configuration.fill_percent, configuration.flows_in_table, configuration.services
        );
        for case in &configuration.cases {
            let _ = write!(out, " {} |", cell(case));
        }
        out += "\n";
    }
    out + "\n"
}

fn ratios_of(report: &KernelReport, case: Case) -> Vec<&CaseFigures> {
    report
        .configurations
        .iter()
        .flat_map(|c| c.cases.iter())
        .filter(|c| c.case == case)
        .collect()
}

fn worst_ratio(report: &KernelReport, case: Case) -> f64 {
    ratios_of(report, case)
        .iter()
        .map(|c| c.ratio)
        .fold(f64::NAN, f64::max)
}

/// Picks one of a cell's floor ratios, if the cell has that floor.
type FloorOf = fn(&CaseFigures) -> Option<f64>;

/// The worst of a case's floor ratios, `floor` picking one per cell;
/// none if the case has no such floor.
fn worst_floor(report: &KernelReport, case: Case, floor: FloorOf) -> Option<f64> {
    ratios_of(report, case)
        .iter()
        .filter_map(|c| floor(c))
        .reduce(f64::max)
}

/// The largest relative change of a case's ratio to baseline between the
/// two ends of one axis (services or fill), the other axis held fixed.
fn spread(report: &KernelReport, case: Case, by_services: bool) -> f64 {
    let ratio = |services: u32, fill: u32| {
        report
            .configurations
            .iter()
            .find(|c| c.services == services && c.fill_percent == fill)
            .and_then(|c| c.cases.iter().find(|f| f.case == case))
            .map(|f| f.ratio)
    };
    let services: Vec<u32> = report.configurations.iter().map(|c| c.services).collect();
    let fills: Vec<u32> = report
        .configurations
        .iter()
        .map(|c| c.fill_percent)
        .collect();
    let (low_s, high_s) = (min(&services), max(&services));
    let (low_f, high_f) = (min(&fills), max(&fills));
    let pairs: Vec<(Option<f64>, Option<f64>)> = if by_services {
        fills
            .iter()
            .map(|&f| (ratio(low_s, f), ratio(high_s, f)))
            .collect()
    } else {
        services
            .iter()
            .map(|&s| (ratio(s, low_f), ratio(s, high_f)))
            .collect()
    };
    pairs
        .into_iter()
        .filter_map(|(low, high)| Some((high? / low? - 1.0).abs()))
        .fold(0.0, f64::max)
}

fn min(values: &[u32]) -> u32 {
    values.iter().copied().min().unwrap_or(0)
}

fn max(values: &[u32]) -> u32 {
    values.iter().copied().max().unwrap_or(0)
}

fn kernel_targets(report: &KernelReport) -> Vec<Target> {
    let mut targets = Vec::new();
    for (case, limit) in [
        (Case::OtherPort, 1.15),
        (Case::OtherAddress, 1.25),
        (Case::Established, 2.5),
        (Case::NewFlow, 10.0),
        (Case::Reply, 5.0),
    ] {
        let worst = worst_ratio(report, case);
        targets.push(at_most(
            format!("{}: ratio to the no-op (worst cell)", case.label()),
            limit,
            worst,
            "x",
        ));
        // Whether the target is reachable at all on this machine, with
        // bluegreen's flow key and with the shortest IPv4 one (for an
        // established flow, the whole path with it).
        let floors: [(&str, FloorOf); 2] = [
            ("its floor's ratio", |c| Some(c.floor_ratio)),
            ("its floor's ratio with a 16-byte key", |c| {
                c.ipv4_key_floor_ratio
            }),
        ];
        for (what, floor) in floors {
            if let Some(floor) = worst_floor(report, case, floor) {
                targets.push(at_most(
                    format!("{}: {what} (worst cell)", case.label()),
                    limit,
                    floor,
                    "x",
                ));
            }
        }
    }
    for case in Case::ALL {
        for (by_services, axis) in [(true, "1 -> 10,000 services"), (false, "1 % -> 100 % fill")] {
            let change = spread(report, case, by_services);
            targets.push(at_most(
                format!("{}: flat over {axis} (largest change)", case.label()),
                10.0,
                change * 100.0,
                " %",
            ));
        }
    }
    targets
}

fn throughput_table(report: &ThroughputReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## 2. End to end: HTTP through the switch namespace (wrk)\n\n\
         `wrk -t{} -c{} -d{}s --latency` from the client namespace, {} rounds with the order of \
         dataplanes rotated, medians; ratios are medians of per-round ratios.\n\n\
         | dataplane | connections | req/s | p50 | p99 | req/s vs direct | req/s vs nftables | p99 vs direct | errors |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        report.load.wrk_threads,
        report.load.wrk_connections,
        report.load.seconds,
        report.load.rounds
    );
    for f in &report.figures {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {:.2}x | {:.2}x | {:.2}x | {} |",
            f.dataplane.label(),
            f.connections.label(),
            f.requests_per_second,
            micros(f.p50_us),
            micros(f.p99_us),
            f.rps_vs_router,
            f.rps_vs_nftables,
            f.p99_vs_router,
            f.errors
        );
    }
    out += "\n";
    out
}

fn micros(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} us")
    }
}

fn throughput_targets(report: &ThroughputReport) -> Vec<Target> {
    let mut targets = Vec::new();
    let bluegreen = report.figures.iter().filter(|f| {
        matches!(
            f.dataplane,
            Dataplane::BluegreenNative | Dataplane::BluegreenGeneric
        )
    });
    for f in bluegreen {
        let name = format!("{}, {}", f.dataplane.label(), f.connections.label());
        targets.push(at_least(
            format!("{name}: req/s vs direct"),
            0.95,
            f.rps_vs_router,
            "x",
        ));
        targets.push(at_least(
            format!("{name}: req/s vs nftables"),
            1.0,
            f.rps_vs_nftables,
            "x",
        ));
        targets.push(at_most(
            format!("{name}: p99 vs direct"),
            1.1,
            f.p99_vs_router,
            "x",
        ));
    }
    targets
}

fn switch_table(report: &SwitchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## 3. Switch time\n\n\
         From the start of the switch command (process spawn included) to the moment the \
         client began the first new connection that the new color served, seen by a client \
         that keeps opening new connections (one per \"probe interval\", the resolution); \
         colors alternate. \"established\": to when that connection was established \
         (adds the handshake and the prober's wake-up). bluegreen runs with its interface \
         alone and with more interfaces up, each with a service of its own, in alternating \
         blocks.\n\n\
         | peer | switches | p50 | p99 | max | established p50 | established p99 | command start to exit (p50) | probe interval | stale connections | failed probes |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for peer in &report.peers {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            switch_peer(peer),
            peer.switches,
            micros(peer.p50_us),
            micros(peer.p99_us),
            micros(peer.max_us),
            micros(peer.established_p50_us),
            micros(peer.established_p99_us),
            micros(peer.command_p50_us),
            micros(peer.probe_interval_us),
            peer.stale_connections,
            peer.failed_probes
        );
    }
    if let Some((alone, among)) = interfaces_compared(report) {
        let _ = writeln!(
            out,
            "\nWith {} interfaces up against 1: switch time p50 x{:.2}, command start to exit \
             (p50) x{:.2}.",
            among.interfaces_up,
            among.p50_us / alone.p50_us,
            among.command_p50_us / alone.command_p50_us
        );
    }
    out += "\n";
    out
}

/// A peer's name in part 3: bluegreen's with the interfaces it had up.
fn switch_peer(peer: &SwitchFigures) -> String {
    if peer.dataplane == Dataplane::Nftables {
        return peer.dataplane.label().to_owned();
    }
    let up = peer.interfaces_up;
    let noun = if up == 1 { "interface" } else { "interfaces" };
    format!("{}, {up} {noun} up", peer.dataplane.label())
}

/// bluegreen's figures with its interface alone and with the most
/// interfaces up.
fn interfaces_compared(report: &SwitchReport) -> Option<(&SwitchFigures, &SwitchFigures)> {
    let bluegreen = || {
        report
            .peers
            .iter()
            .filter(|peer| peer.dataplane != Dataplane::Nftables)
    };
    let alone = bluegreen().find(|peer| peer.interfaces_up == 1)?;
    let among = bluegreen().max_by_key(|peer| peer.interfaces_up)?;
    (among.interfaces_up > 1).then_some((alone, among))
}

fn switch_targets(report: &SwitchReport) -> Vec<Target> {
    let mut targets: Vec<Target> = report
        .peers
        .iter()
        .filter(|peer| peer.dataplane != Dataplane::Nftables)
        .map(|peer| {
            at_most(
                format!("{}: switch time p50 (ms)", switch_peer(peer)),
                2.0,
                peer.p50_us / 1000.0,
                " ms",
            )
        })
        .collect();
    // A switch opens its own interface alone: the others cost at most a
    // look at their state files.
    if let Some((alone, among)) = interfaces_compared(report) {
        targets.push(at_most(
            format!(
                "bluegreen switch command (p50) with {} interfaces up against 1",
                among.interfaces_up
            ),
            1.25,
            among.command_p50_us / alone.command_p50_us,
            "x",
        ));
    }
    targets
}

fn timeline_table(timeline: &TimelineReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## 4. Switch timeline\n\n\
         {}, through the VIP: {} clients in the client namespace each open a new connection every \
         {:.0} ms and make one request on it; {} keep-alive connections, opened on blue before \
         the first command, make one request every {:.0} ms each. A command every {:.1} s. \
         Requests are counted by when they began; new connections under way while a command \
         ran (begun meanwhile, or begun before and not yet answered) may take either color. \
         Chart: `target/bench/timeline.svg`; per-{:.0}-ms counts in the JSON.\n\n\
         | from | command | took | new connections after it returned (blue / green) | green share (expected) | under way while it ran (blue / green) | keep-alive requests (blue / green) | failed |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |",
        timeline.dataplane.label(),
        timeline.clients,
        timeline.pace_ms,
        timeline.keep_alive_connections,
        timeline.keep_alive_pace_ms,
        timeline.phase_ms / 1e3,
        timeline.bucket_ms
    );
    for phase in &timeline.phases {
        let new = phase.new_connections;
        let failed = new.failed + phase.during_command.failed + phase.keep_alive.failed;
        let _ = writeln!(
            out,
            "| {:.1} s | {} | {} | {} | {:.1} % ({} %) | {} | {} | {failed} |",
            phase.at_ms / 1e3,
            if phase.command.is_empty() {
                "(blue since `up`)".to_owned()
            } else {
                format!("`{}`", phase.command)
            },
            if phase.command.is_empty() {
                "-".to_owned()
            } else {
                micros(phase.took_ms * 1e3)
            },
            blue_green(new),
            new.green_percent(),
            phase.green_percent,
            blue_green(phase.during_command),
            blue_green(phase.keep_alive),
        );
    }
    let (new, keep_alive) = (
        timeline.new_connection_totals(),
        timeline.keep_alive_totals(),
    );
    let _ = writeln!(
        out,
        "\nIn all: {} new connections (blue {}, green {}, failed {}), {} keep-alive requests \
         (blue {}, green {}, failed {}).\n",
        new.answered() + new.failed,
        new.blue,
        new.green,
        new.failed,
        keep_alive.answered() + keep_alive.failed,
        keep_alive.blue,
        keep_alive.green,
        keep_alive.failed
    );
    if timeline.problems.is_empty() {
        out += "Checks: no failed request; after each command, new connections took the \
                commanded color (or share), and keep-alive requests stayed on blue.\n\n";
    } else {
        out += "**Checks failed:**\n\n";
        for problem in &timeline.problems {
            let _ = writeln!(out, "- {problem}");
        }
        out += "\n";
    }
    out
}

fn blue_green(counts: Counts) -> String {
    format!("{} / {}", counts.blue, counts.green)
}

fn targets_table(targets: &[Target]) -> String {
    // The timeline alone has checks, not targets.
    if targets.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "## Targets\n\n| what | target | measured | verdict |\n| --- | --- | --- | --- |\n",
    );
    for target in targets {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            target.what, target.target, target.measured, target.margin
        );
    }
    let met = targets.iter().filter(|t| t.met).count();
    let _ = writeln!(out, "\n{met} of {} targets met.", targets.len());
    out
}

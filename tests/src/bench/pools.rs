//! Part 5: pools. What a new flow costs in the kernel with 1, 8 and 64
//! backends behind the color (against a no-op program and against the
//! one-backend pool, both timed in the same rounds), how long rewriting a
//! 256-backend pool takes, and how many flows of the others move when one
//! backend of 8 leaves.

use std::{
    fmt::Write,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use bluegreen::pool::maglev;
use bluegreen_common::{COLOR_BLUE, ServiceState};
use serde::Serialize;

use super::{
    Interrupted, check,
    raw::RawProgram,
    stats::median,
    targets::{Target, at_most},
};
use crate::{
    kernel::{TestDataplane, TestService, service_key},
    packet::{Frame, PROTO_TCP, TCP_SYN},
};

pub struct PoolsPlan {
    pub repeat: u32,
    pub rounds: usize,
    pub sizes: Vec<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NewFlowCost {
    pub backends: usize,
    pub ns: f64,
    pub baseline_ns: f64,
    /// To the no-op XDP program.
    pub ratio: f64,
    /// To the one-backend pool of the same rounds.
    pub ratio_to_one: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PoolsReport {
    pub repeat: u32,
    pub rounds: usize,
    pub new_flow: Vec<NewFlowCost>,
    /// Building the 256-backend table in userspace (25,601 entries).
    pub table_build_ms: f64,
    /// Rewriting a 256-backend pool into the dataplane and flipping the
    /// service to it: build, writes and the flip.
    pub rewrite_256_ms: f64,
    /// Share of the table the leaving backend of 8 owned.
    pub leaving_share: f64,
    /// Share of the others' entries that changed owner when it left.
    pub others_moved: f64,
}

const VIP: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 200, 100, 1)), 80);

fn state() -> ServiceState {
    ServiceState {
        counter_slot: 0,
        active: COLOR_BLUE,
        previous: COLOR_BLUE,
        ..Default::default()
    }
}

/// The service with `blue` as the blue pool (green: the VIP alone).
fn service(blue: Vec<(SocketAddr, u32)>) -> TestService {
    (service_key(VIP, PROTO_TCP), state(), [blue, vec![(VIP, 1)]])
}

/// Every backend is the VIP itself, so that each of the kernel's repeats
/// of one SYN rewrites the frame onto itself and takes the new-flow path
/// (see `kernel_cost`); the table still spreads over `size` backends.
fn new_flow_costs(plan: &PoolsPlan) -> Result<Vec<NewFlowCost>, Interrupted> {
    let noop = RawProgram::noop_xdp();
    let client = SocketAddr::new(Ipv4Addr::new(10, 200, 1, 2).into(), 40100);
    let syn = Frame::tcp(client, VIP, TCP_SYN)
        .payload(b"bluegreen")
        .build();
    let dataplanes: Vec<TestDataplane> = plan
        .sizes
        .iter()
        .map(|&size| {
            let mut dataplane = TestDataplane::new();
            dataplane.insert_services(&[service(vec![(VIP, 1); size])]);
            dataplane
        })
        .collect();
    let mut subjects = vec![Vec::new(); plan.sizes.len()];
    let mut baselines = Vec::new();
    for _ in 0..plan.rounds {
        for (dataplane, samples) in dataplanes.iter().zip(&mut subjects) {
            check()?;
            baselines.push(nanos(noop.bench(&syn, plan.repeat)));
            let before = dataplane.traffic(0, COLOR_BLUE).new_flows;
            samples.push(nanos(dataplane.bench_xdp(&syn, plan.repeat)));
            let new_flows = dataplane.traffic(0, COLOR_BLUE).new_flows - before;
            assert_eq!(
                new_flows,
                u64::from(plan.repeat),
                "every repeat took the new-flow path"
            );
        }
    }
    let baseline_ns = median(&baselines);
    let one = median(&subjects[0]);
    Ok(plan
        .sizes
        .iter()
        .zip(&subjects)
        .map(|(&backends, samples)| {
            let ns = median(samples);
            NewFlowCost {
                backends,
                ns,
                baseline_ns,
                ratio: ns / baseline_ns,
                ratio_to_one: ns / one,
            }
        })
        .collect())
}

fn replicas(count: usize) -> Vec<(SocketAddr, u32)> {
    (0..count)
        .map(|index| {
            let ip = Ipv4Addr::new(10, 201, (index / 250) as u8, (index % 250 + 1) as u8);
            (SocketAddr::new(ip.into(), 8080), 1)
        })
        .collect()
}

/// Median of `rounds` timings of `work`.
fn timed(rounds: usize, mut work: impl FnMut()) -> f64 {
    let times: Vec<f64> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            work();
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    median(&times)
}

pub fn run(plan: &PoolsPlan) -> Result<PoolsReport, Interrupted> {
    let new_flow = new_flow_costs(plan)?;
    check()?;

    let pool = replicas(256);
    let size = maglev::table_size(pool.len());
    let table_build_ms = timed(plan.rounds, || {
        std::hint::black_box(maglev::build(&pool, size));
    });
    let mut dataplane = TestDataplane::new();
    dataplane.insert_services(&[service(pool.clone())]);
    let mut weights = pool.clone();
    let rewrite_256_ms = timed(plan.rounds, || {
        // Another weight each time, so every round really rewrites.
        weights[0].1 = weights[0].1 % 100 + 1;
        dataplane.insert_services(&[service(weights.clone())]);
    });

    let eight = replicas(8);
    let size = maglev::table_size(8);
    let before = maglev::build(&eight, size);
    let mut without = eight.clone();
    without[3].1 = 0;
    let after = maglev::build(&without, size);
    let leaving = before.iter().filter(|&&entry| entry == 3).count();
    let others_moved = before
        .iter()
        .zip(&after)
        .filter(|(was, now)| **was != 3 && was != now)
        .count();
    Ok(PoolsReport {
        repeat: plan.repeat,
        rounds: plan.rounds,
        new_flow,
        table_build_ms,
        rewrite_256_ms,
        leaving_share: leaving as f64 / before.len() as f64,
        others_moved: others_moved as f64 / (before.len() - leaving) as f64,
    })
}

fn nanos(duration: Duration) -> f64 {
    duration.as_nanos() as f64
}

pub fn table(report: &PoolsReport) -> String {
    let mut out = format!(
        "## 5. Pools\n\n\
         A SYN's cost with the color's pool at 1, 8 and 64 backends \
         (BPF_PROG_TEST_RUN, {} repeats, median of {} rounds), against the \
         no-op XDP program and the one-backend pool timed in the same rounds:\n\n\
         | backends | ns | x no-op | x 1 backend |\n| --- | --- | --- | --- |\n",
        report.repeat, report.rounds
    );
    for cost in &report.new_flow {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} | {:.2} |",
            cost.backends, cost.ns, cost.ratio, cost.ratio_to_one
        );
    }
    let _ = writeln!(
        out,
        "\n256 backends: the table (25,601 entries) builds in {:.2} ms; writing \
         the pool beside the live one and flipping the service takes {:.2} ms.\n\n\
         One backend of 8 leaving: it owned {:.1} % of the table; {:.2} % of the \
         others' entries changed owner.\n",
        report.table_build_ms,
        report.rewrite_256_ms,
        report.leaving_share * 100.0,
        report.others_moved * 100.0
    );
    out
}

pub fn targets(report: &PoolsReport) -> Vec<Target> {
    let worst = report
        .new_flow
        .iter()
        .map(|cost| cost.ratio_to_one)
        .fold(0.0, f64::max);
    vec![
        at_most(
            "new flow, most backends vs 1 backend".to_owned(),
            1.10,
            worst,
            "x",
        ),
        at_most(
            "others' flows moved when 1 of 8 leaves".to_owned(),
            5.0,
            report.others_moved * 100.0,
            " %",
        ),
    ]
}

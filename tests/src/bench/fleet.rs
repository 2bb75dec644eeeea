//! Part 6: the fleet. How long `bluegreen fleet switch` takes from its
//! start until every host serves the new color, for fleets of 1, 3 and 10
//! hosts (each a namespace set with its own daemon, one real etcd), as a
//! ratio to one local `bluegreen switch` measured in the same rounds.
//!
//! The command exits once every live host has reported the desired state
//! applied, and a host reports it only after its map update: the time to
//! the command's exit is the convergence time. Each switch is then checked
//! with a new connection to every host (not timed).

use std::{
    fmt::Write,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{Interrupted, check, stats::median};
use crate::{cli::CliRun, fixture::Fixture, fleet::FleetBed};

pub struct FleetPlan {
    pub host_counts: Vec<usize>,
    /// Switches of each kind per fleet size (alternating green and blue).
    pub rounds: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct FleetFigures {
    pub hosts: usize,
    pub switches: usize,
    /// Median `fleet switch`, start to exit (every host converged).
    pub fleet_ms: f64,
    /// Median local `switch` in the same rounds, start to exit.
    pub local_ms: f64,
    pub ratio: f64,
    pub fleet_samples_ms: Vec<f64>,
    pub local_samples_ms: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FleetReport {
    pub sizes: Vec<FleetFigures>,
}

/// Runs a command and returns how long it took, panicking on failure.
fn timed(what: &str, run: impl FnOnce() -> CliRun) -> f64 {
    let started = Instant::now();
    let outcome = run();
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(outcome.code, 0, "{what} failed: {outcome:?}");
    elapsed
}

pub fn run(plan: &FleetPlan) -> Result<FleetReport, Interrupted> {
    // The local baseline: a standalone host, switched in the same rounds.
    let local = Fixture::new();
    local.up();
    let mut sizes = Vec::new();
    for &count in &plan.host_counts {
        check()?;
        eprintln!("bench: fleet of {count} hosts");
        let mut bed = FleetBed::new(count);
        bed.start();
        let (mut fleet_samples, mut local_samples) = (Vec::new(), Vec::new());
        for round in 0..plan.rounds {
            check()?;
            let color = if round % 2 == 0 { "green" } else { "blue" };
            local_samples.push(timed("switch", || local.bluegreen.run(&["switch", color])));
            assert_eq!(local.get(), color, "the local switch took effect");
            fleet_samples.push(timed("fleet switch", || {
                bed.fleet(&["switch", color, "--timeout", "30"])
            }));
            for host in &bed.hosts {
                assert_eq!(host.get(), color, "{} converged", host.name);
            }
            // Quiet time between rounds: the daemons' records settle.
            std::thread::sleep(Duration::from_millis(100));
        }
        let (fleet_ms, local_ms) = (median(&fleet_samples), median(&local_samples));
        sizes.push(FleetFigures {
            hosts: count,
            switches: plan.rounds,
            fleet_ms,
            local_ms,
            ratio: fleet_ms / local_ms,
            fleet_samples_ms: fleet_samples,
            local_samples_ms: local_samples,
        });
    }
    Ok(FleetReport { sizes })
}

pub fn table(report: &FleetReport) -> String {
    let mut out = String::from(
        "## 6. Fleet\n\n\
         `bluegreen fleet switch` from its start until every host serves the new color \
         (the command exits once every live host applied it; a new connection to each host \
         confirms it afterwards), against one local `bluegreen switch` (start to exit) in \
         the same rounds. One real etcd; each host a namespace set with its own daemon; \
         medians.\n\n\
         | hosts | switches | fleet switch | local switch | ratio |\n| --- | --- | --- | --- | --- |\n",
    );
    for size in &report.sizes {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} ms | {:.1} ms | {:.1}x |",
            size.hosts, size.switches, size.fleet_ms, size.local_ms, size.ratio
        );
    }
    out += "\n";
    out
}

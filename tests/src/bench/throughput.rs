//! Part 2: requests per second and latency with wrk, through each
//! dataplane, with keep-alive connections and with a new connection per
//! request.

use std::{process::Stdio, time::Duration};

use serde::Serialize;

use super::{
    Interrupted, check,
    lab::{Dataplane, Lab, wait_bounded},
    stats::median,
};

pub struct ThroughputPlan {
    pub rounds: usize,
    pub seconds: u32,
    pub threads: u32,
    pub connections: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Connections {
    KeepAlive,
    /// `Connection: close`: a TCP handshake per request, so every request
    /// also takes the dataplane's new-flow path.
    NewPerRequest,
}

impl Connections {
    pub const ALL: [Connections; 2] = [Connections::KeepAlive, Connections::NewPerRequest];

    pub fn label(self) -> &'static str {
        match self {
            Connections::KeepAlive => "keep-alive",
            Connections::NewPerRequest => "new connection per request",
        }
    }
}

/// What one wrk run reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WrkRun {
    pub requests_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    /// Socket errors plus non-2xx responses.
    pub errors: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub round: usize,
    pub dataplane: Dataplane,
    pub connections: Connections,
    pub run: WrkRun,
}

/// Medians over rounds for one dataplane and connection mode.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub dataplane: Dataplane,
    pub connections: Connections,
    pub requests_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
    /// Median over rounds of rps / the plain router's rps in that round.
    pub rps_vs_router: f64,
    /// Median over rounds of rps / nftables' rps in that round.
    pub rps_vs_nftables: f64,
    /// Median over rounds of p99 / the plain router's p99 in that round.
    pub p99_vs_router: f64,
}

/// The wrk load a report's runs were made with, as every report of wrk
/// runs records it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct WrkLoad {
    pub rounds: usize,
    pub seconds: u32,
    pub wrk_threads: u32,
    pub wrk_connections: u32,
}

impl From<&ThroughputPlan> for WrkLoad {
    fn from(plan: &ThroughputPlan) -> Self {
        Self {
            rounds: plan.rounds,
            seconds: plan.seconds,
            wrk_threads: plan.threads,
            wrk_connections: plan.connections,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ThroughputReport {
    #[serde(flatten)]
    pub load: WrkLoad,
    pub figures: Vec<Figures>,
    pub samples: Vec<Sample>,
}

/// Every round runs every dataplane once, in an order rotated from round
/// to round, so that a slow phase of the machine does not always hit the
/// same one.
pub fn run(lab: &Lab, plan: &ThroughputPlan) -> Result<ThroughputReport, Interrupted> {
    let mut samples = Vec::new();
    for round in 0..plan.rounds {
        for step in 0..Dataplane::ALL.len() {
            check()?;
            let dataplane = Dataplane::ALL[(round + step) % Dataplane::ALL.len()];
            let _active = lab.activate(dataplane);
            for connections in Connections::ALL {
                let run = wrk(lab, plan, dataplane, connections)?;
                eprintln!(
                    "bench: round {round}, {}, {}: {:.0} req/s, p50 {:.0} us, p99 {:.0} us, {} errors",
                    dataplane.label(),
                    connections.label(),
                    run.requests_per_second,
                    run.p50_us,
                    run.p99_us,
                    run.errors
                );
                samples.push(Sample {
                    round,
                    dataplane,
                    connections,
                    run,
                });
            }
        }
    }
    Ok(ThroughputReport {
        load: WrkLoad::from(plan),
        figures: summarize(&samples, plan.rounds),
        samples,
    })
}

/// One wrk run of `plan`'s load (its rounds aside) on `dataplane`'s
/// target, from the client namespace.
pub fn wrk(
    lab: &Lab,
    plan: &ThroughputPlan,
    dataplane: Dataplane,
    connections: Connections,
) -> Result<WrkRun, Interrupted> {
    let url = format!("http://{}/", dataplane.target());
    let mut command = lab.client().command("wrk");
    command.args([
        format!("-t{}", plan.threads),
        format!("-c{}", plan.connections),
        format!("-d{}s", plan.seconds),
        "--latency".to_owned(),
        "--timeout".to_owned(),
        "2s".to_owned(),
    ]);
    if connections == Connections::NewPerRequest {
        command.args(["-H", "Connection: close"]);
    }
    let mut child = command
        .arg(&url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start wrk");
    // wrk's output is a few hundred bytes: it fits the pipe, so reading it
    // after the exit cannot deadlock.
    let limit = Duration::from_secs(u64::from(plan.seconds) + 15);
    let status = wait_bounded(&mut child, limit);
    let output = std::io::read_to_string(child.stdout.take().expect("piped stdout"))
        .expect("read wrk's output");
    // Ctrl-C reaches wrk too: that is an interruption, not a failure.
    check()?;
    assert!(status.success(), "wrk {url} failed ({status}): {output}");
    Ok(parse_wrk(&output)
        .unwrap_or_else(|error| panic!("cannot read wrk's output ({error}):\n{output}")))
}

/// A wrk duration such as `245.00us`, `1.20ms` or `2.00s`, in microseconds.
fn parse_duration_us(text: &str) -> Result<f64, String> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| format!("no unit in {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|error| format!("{text:?}: {error}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        other => return Err(format!("unknown unit {other:?} in {text:?}")),
    };
    Ok(value * scale)
}

/// The numbers after `label` on the line that starts with it.
fn field<'a>(output: &'a str, label: &str) -> Option<&'a str> {
    output
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix(label))
        .map(str::trim)
}

fn count(text: &str) -> u64 {
    text.trim_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(0)
}

pub fn parse_wrk(output: &str) -> Result<WrkRun, String> {
    let rps = field(output, "Requests/sec:").ok_or("no Requests/sec line")?;
    let p50 = field(output, "50%").ok_or("no 50% line (was --latency given?)")?;
    let p99 = field(output, "99%").ok_or("no 99% line")?;
    let requests = output
        .lines()
        .find(|line| line.contains("requests in"))
        .and_then(|line| line.split_whitespace().next())
        .ok_or("no request count")?;
    // "Socket errors: connect 0, read 0, write 0, timeout 0", only if any.
    let socket_errors: u64 = field(output, "Socket errors:")
        .map(|errors| errors.split(',').map(count).sum())
        .unwrap_or(0);
    let bad_status = field(output, "Non-2xx or 3xx responses:").map_or(0, count);
    Ok(WrkRun {
        requests_per_second: rps.parse().map_err(|_| format!("bad rate {rps:?}"))?,
        p50_us: parse_duration_us(p50)?,
        p99_us: parse_duration_us(p99)?,
        requests: requests
            .parse()
            .map_err(|_| format!("bad request count {requests:?}"))?,
        errors: socket_errors + bad_status,
    })
}

fn summarize(samples: &[Sample], rounds: usize) -> Vec<Figures> {
    let find = |round, dataplane, connections| {
        samples
            .iter()
            .find(|s| s.round == round && s.dataplane == dataplane && s.connections == connections)
            .map(|s| &s.run)
    };
    let mut figures = Vec::new();
    for connections in Connections::ALL {
        for dataplane in Dataplane::ALL {
            let runs: Vec<&WrkRun> = (0..rounds)
                .filter_map(|round| find(round, dataplane, connections))
                .collect();
            let ratio = |peer: Dataplane, value: &dyn Fn(&WrkRun) -> f64| {
                let per_round: Vec<f64> = (0..rounds)
                    .filter_map(|round| {
                        let own = find(round, dataplane, connections)?;
                        let other = find(round, peer, connections)?;
                        Some(value(own) / value(other))
                    })
                    .collect();
                median(&per_round)
            };
            let of = |value: &dyn Fn(&WrkRun) -> f64| {
                median(&runs.iter().map(|run| value(run)).collect::<Vec<_>>())
            };
            figures.push(Figures {
                dataplane,
                connections,
                requests_per_second: of(&|r| r.requests_per_second),
                p50_us: of(&|r| r.p50_us),
                p99_us: of(&|r| r.p99_us),
                errors: runs.iter().map(|run| run.errors).sum(),
                rps_vs_router: ratio(Dataplane::Router, &|r| r.requests_per_second),
                rps_vs_nftables: ratio(Dataplane::Nftables, &|r| r.requests_per_second),
                p99_vs_router: ratio(Dataplane::Router, &|r| r.p99_us),
            });
        }
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "Running 5s test @ http://10.200.100.1:80/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   245.00us  100.00us   3.10ms   90.00%
    Req/Sec    60.00k     1.00k   70.00k    70.00%
  Latency Distribution
     50%  200.50us
     75%  300.00us
     90%  400.00us
     99%    1.20ms
  123456 requests in 5.00s, 12.34MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 1
Requests/sec:  24691.20
Transfer/sec:      2.47MB
";

    #[test]
    fn reads_wrk_output() {
        let run = parse_wrk(OUTPUT).expect("parses");
        assert_eq!(
            run,
            WrkRun {
                requests_per_second: 24691.2,
                p50_us: 200.5,
                p99_us: 1200.0,
                requests: 123456,
                errors: 6,
            }
        );
        assert_eq!(parse_duration_us("2.00s"), Ok(2e6));
        assert!(parse_wrk("garbage").is_err());
    }
}

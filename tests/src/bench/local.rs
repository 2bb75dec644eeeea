//! Part 6: host-local clients. A client in the switch namespace against
//! backends on the switch host itself (the inference-host layout: VIP
//! `host:8000`, blue `host:8001`), in rounds that alternate three ways
//! of reaching blue:
//!
//! - direct to `host:8001` with bluegreen down (the baseline);
//! - direct to `host:8001` with bluegreen up: the connect hook runs for
//!   every connect on the host and leaves this one after its prefilter;
//! - through the VIP with bluegreen up: rewritten at connect.
//!
//! Each is measured as new connections per second (connect and close) and
//! as requests per second on one keep-alive connection, where no program
//! runs per packet once connected, so the ratio should be 1.

use std::{
    fmt::Write,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{Interrupted, backend::FastBackend, check, stats::median};
use crate::{
    cli::Bluegreen,
    http::{self, KeepAlive},
    netns::{Namespace, SWITCH_IFACE, Topology, addr},
};

pub struct LocalPlan {
    pub rounds: usize,
    /// How long each way is measured in each round, per measure.
    pub seconds: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalPath {
    Direct,
    DirectWithHooks,
    ThroughVip,
}

impl LocalPath {
    const ALL: [LocalPath; 3] = [
        LocalPath::Direct,
        LocalPath::DirectWithHooks,
        LocalPath::ThroughVip,
    ];

    fn label(self) -> &'static str {
        match self {
            LocalPath::Direct => "direct to the backend (bluegreen down)",
            LocalPath::DirectWithHooks => "direct to the backend (bluegreen up)",
            LocalPath::ThroughVip => "through the VIP (rewritten at connect)",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LocalFigures {
    pub path: LocalPath,
    /// Medians over the rounds.
    pub connects_per_s: f64,
    pub keep_alive_requests_per_s: f64,
    /// To the direct path's median of the same run.
    pub connect_ratio: f64,
    pub keep_alive_ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LocalReport {
    pub rounds: usize,
    pub seconds: f64,
    pub paths: Vec<LocalFigures>,
}

fn host(port: u16) -> SocketAddr {
    SocketAddr::new(addr::SWITCH_CLIENT_SIDE_V4.parse().expect("literal"), port)
}

/// At most this many connections (or keep-alive requests) per measure.
const MAX_CONNECTS: u64 = 1_000_000;

/// New connections per second to `target` from a thread in `namespace`:
/// connect (the handshake done) and close, so that the connect path is
/// what is timed. Closed with a reset: a FIN would leave each one in
/// TIME_WAIT, and at over 10,000 a second the ephemeral ports run out
/// within seconds, after which the kernel's search for a free port is
/// what gets timed. Nothing listens on the VIP's port, so a connection
/// through it that was not rewritten would fail.
fn connect_rate(namespace: &Namespace, target: SocketAddr, seconds: f64) -> f64 {
    namespace
        .spawn(move || {
            let body = http::get(target, Duration::from_secs(2)).expect("local bench request");
            assert_eq!(body, "blue", "{target} reaches the blue backend");
            let started = Instant::now();
            let mut done = 0u64;
            while started.elapsed().as_secs_f64() < seconds && done < MAX_CONNECTS {
                let stream = TcpStream::connect(target).expect("local bench connect");
                socket2::SockRef::from(&stream)
                    .set_linger(Some(Duration::ZERO))
                    .expect("SO_LINGER 0");
                done += 1;
            }
            done as f64 / started.elapsed().as_secs_f64()
        })
        .join()
        .expect("bench client panicked")
}

/// Requests per second on one keep-alive connection to `target`.
fn keep_alive_rate(namespace: &Namespace, target: SocketAddr, seconds: f64) -> f64 {
    namespace
        .spawn(move || {
            let mut connection =
                KeepAlive::connect(target, Duration::from_secs(2)).expect("local keep-alive");
            let started = Instant::now();
            let mut done = 0u64;
            while started.elapsed().as_secs_f64() < seconds && done < MAX_CONNECTS {
                connection.get().expect("local keep-alive request");
                done += 1;
            }
            done as f64 / started.elapsed().as_secs_f64()
        })
        .join()
        .expect("bench client panicked")
}

pub fn run(plan: &LocalPlan) -> Result<LocalReport, Interrupted> {
    let topology = Topology::new();
    let _blue = FastBackend::start(&topology.switch, 8001, "blue");
    let _green = FastBackend::start(&topology.switch, 8002, "green");
    let bluegreen = Bluegreen::new(&topology.switch);
    let (vip, blue) = (host(8000), host(8001));
    let up = [
        "up",
        "--iface",
        SWITCH_IFACE,
        "--service",
        "model",
        "--vip",
        &vip.to_string(),
        "--blue",
        &blue.to_string(),
        "--green",
        &host(8002).to_string(),
    ]
    .map(str::to_owned);
    let up: Vec<&str> = up.iter().map(String::as_str).collect();
    let mut samples: [(Vec<f64>, Vec<f64>); 3] = Default::default();
    for round in 0..plan.rounds {
        for (at, path) in LocalPath::ALL.into_iter().enumerate() {
            check()?;
            if path == LocalPath::Direct && round > 0 {
                bluegreen.ok(&["-q", "down", "--iface", SWITCH_IFACE]);
            } else if path == LocalPath::DirectWithHooks {
                bluegreen.ok(&up);
            }
            let target = if path == LocalPath::ThroughVip {
                vip
            } else {
                blue
            };
            samples[at]
                .0
                .push(connect_rate(&topology.switch, target, plan.seconds));
            samples[at]
                .1
                .push(keep_alive_rate(&topology.switch, target, plan.seconds));
        }
    }
    let medians: Vec<(f64, f64)> = samples
        .iter()
        .map(|(connects, requests)| (median(connects), median(requests)))
        .collect();
    let (direct_connects, direct_requests) = medians[0];
    let paths = LocalPath::ALL
        .into_iter()
        .zip(&medians)
        .map(|(path, &(connects, requests))| LocalFigures {
            path,
            connects_per_s: connects,
            keep_alive_requests_per_s: requests,
            connect_ratio: connects / direct_connects,
            keep_alive_ratio: requests / direct_requests,
        })
        .collect();
    Ok(LocalReport {
        rounds: plan.rounds,
        seconds: plan.seconds,
        paths,
    })
}

pub fn table(report: &LocalReport) -> String {
    let mut out = format!(
        "## 7. Host-local clients\n\n\
         A client on the switch host and backends on it too (VIP host:8000, \
         blue host:8001), one thread, {:.0} s per way and measure, median of \
         {} alternating rounds; ratios to the direct path of the same run. A \
         new connection is connect (handshake done) and close by reset; keep-alive is \
         requests on one connection (no program runs per packet).\n\n\
         | path | connects/s | x direct | keep-alive req/s | x direct |\n\
         | --- | --- | --- | --- | --- |\n",
        report.seconds, report.rounds
    );
    for figures in &report.paths {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.3} | {:.0} | {:.3} |",
            figures.path.label(),
            figures.connects_per_s,
            figures.connect_ratio,
            figures.keep_alive_requests_per_s,
            figures.keep_alive_ratio
        );
    }
    out.push('\n');
    out
}

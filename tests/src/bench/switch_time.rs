//! Part 3: how long from the start of a switch command until a new
//! connection is served by the new color, as a client sees it; for
//! bluegreen with its interface alone and with 7 more interfaces up (a
//! switch opens its own interface only, so the two must take as long).
//!
//! A prober in the client namespace opens new connections one after the
//! other (see [`PROBE_PAUSE`]) and sends each one request. Which backend a
//! connection reaches is settled by its SYN, sent as `connect()` begins, so
//! the switch had taken effect by the time the client began the first
//! connection the new color served; the backend's answer (the color) only
//! names it, whenever it comes.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    Interrupted, check,
    lab::{Dataplane, Lab},
    stats::{median, percentile},
};
use crate::{fixture::OtherInterfaces, netns::Namespace};

pub struct SwitchPlan {
    /// Blocks of switches per peer; peers alternate between blocks.
    pub blocks: usize,
    pub switches_per_block: usize,
    /// Quiet time after a switch took effect, before the next one.
    pub settle: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct SwitchFigures {
    pub dataplane: Dataplane,
    /// Interfaces bluegreen had up, the switched one included (1 for
    /// nftables).
    pub interfaces_up: u8,
    pub switches: usize,
    /// Switch start to the moment the client began (called `connect()`
    /// for) the first connection the new color served. The switch took
    /// effect at most one probe interval before that.
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Switch start to when that connection was established: adds the
    /// handshake and the prober's wake-up, which on a small shared machine
    /// include waiting for a CPU that the switch command itself occupies.
    pub established_p50_us: f64,
    pub established_p99_us: f64,
    /// Switch start to the switch command's exit.
    pub command_p50_us: f64,
    /// Median time between two probe connections: the resolution.
    pub probe_interval_us: f64,
    /// Connections started after the switch took effect that still reached
    /// the old color (should be 0).
    pub stale_connections: u64,
    pub failed_probes: u64,
    pub samples_us: Vec<f64>,
    pub established_samples_us: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SwitchReport {
    pub peers: Vec<SwitchFigures>,
}

/// Between two probe connections. Back to back, the prober and the
/// backends' answers keep both CPUs of a small machine busy, and the switch
/// command, starved of CPU, takes half as long again (on the 2-CPU machine
/// of BENCHMARKS.md); with this pause the prober still opens a connection
/// every ~0.4 ms, the resolution reported as "probe interval".
const PROBE_PAUSE: Duration = Duration::from_micros(200);

/// Each peer, with the interfaces bluegreen has up during its blocks.
/// Quiet time after the other interfaces come up and after they go down:
/// the kernel finishes what their flow tables and programs left it (freeing
/// a table is deferred), so that no block pays for another's.
const AFTER_OTHERS: Duration = Duration::from_secs(1);

const PEERS: [(Dataplane, u8); 3] = [
    (Dataplane::BluegreenNative, 1),
    (Dataplane::BluegreenNative, 8),
    (Dataplane::Nftables, 1),
];

pub fn run(lab: &Lab, plan: &SwitchPlan) -> Result<SwitchReport, Interrupted> {
    let mut measured: Vec<Measured> = PEERS.iter().map(|_| Measured::default()).collect();
    for _ in 0..plan.blocks {
        for (&(peer, interfaces_up), into) in PEERS.iter().zip(measured.iter_mut()) {
            check()?;
            block(lab, peer, interfaces_up, plan, into)?;
        }
    }
    Ok(SwitchReport {
        peers: PEERS
            .iter()
            .zip(measured)
            .map(|(&(peer, interfaces_up), measured)| measured.figures(peer, interfaces_up))
            .collect(),
    })
}

#[derive(Default)]
struct Measured {
    samples_us: Vec<f64>,
    established_us: Vec<f64>,
    command_us: Vec<f64>,
    probe_intervals_us: Vec<f64>,
    stale: u64,
    failed: u64,
}

impl Measured {
    fn figures(self, dataplane: Dataplane, interfaces_up: u8) -> SwitchFigures {
        SwitchFigures {
            dataplane,
            interfaces_up,
            switches: self.samples_us.len(),
            p50_us: median(&self.samples_us),
            p99_us: percentile(&self.samples_us, 99.0),
            max_us: percentile(&self.samples_us, 100.0),
            established_p50_us: median(&self.established_us),
            established_p99_us: percentile(&self.established_us, 99.0),
            command_p50_us: median(&self.command_us),
            probe_interval_us: median(&self.probe_intervals_us),
            stale_connections: self.stale,
            failed_probes: self.failed,
            samples_us: self.samples_us,
            established_samples_us: self.established_us,
        }
    }
}

/// One block of switches through `peer` with `interfaces_up` interfaces
/// up, alternating colors.
fn block(
    lab: &Lab,
    peer: Dataplane,
    interfaces_up: u8,
    plan: &SwitchPlan,
    into: &mut Measured,
) -> Result<(), Interrupted> {
    let active = lab.activate(peer);
    // Dropped before `active`: the others go down first.
    let others = (interfaces_up > 1)
        .then(|| OtherInterfaces::up(&lab.bluegreen, &lab.topology.switch, interfaces_up - 1));
    if others.is_some() {
        std::thread::sleep(AFTER_OTHERS);
    }
    let prober = Prober::start(lab.client(), peer.target(), PROBE_PAUSE, block_bound(plan));
    let mut color = "blue";
    for _ in 0..plan.switches_per_block {
        check()?;
        let new = if color == "blue" { "green" } else { "blue" };
        let command = active.switch_command(new);
        let started = Instant::now();
        command.run()?;
        into.command_us.push(micros(started.elapsed()));
        let first = prober.first_on(new, started, Duration::from_secs(3));
        // A connect() begun just before the switch can still be served by
        // the new color; it counts as begun at the switch's start.
        into.samples_us
            .push(micros(first.started.saturating_duration_since(started)));
        into.established_us
            .push(micros(first.established - started));
        std::thread::sleep(plan.settle);
        // The prober connects one at a time: every later connection sent
        // its SYN after this one's, so after the switch took effect.
        into.stale += prober.stale(color, first.started);
        color = new;
    }
    let probes = prober.finish();
    if let Some(others) = others {
        drop(others);
        std::thread::sleep(AFTER_OTHERS);
    }
    into.failed += probes.iter().filter(|p| p.color.is_none()).count() as u64;
    into.probe_intervals_us.extend(
        probes
            .windows(2)
            .map(|pair| micros(pair[1].started - pair[0].started)),
    );
    Ok(())
}

/// The longest a block can take: each switch command is killed after
/// 10 s, and its first connection on the new color waited for 3 s.
fn block_bound(plan: &SwitchPlan) -> Duration {
    (Duration::from_secs(13) + plan.settle) * plan.switches_per_block as u32
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

pub(super) struct Opening {
    pub(super) started: Instant,
    established: Instant,
}

pub(super) struct Probe {
    pub(super) started: Instant,
    established: Instant,
    /// None if the connection or its request failed.
    pub(super) color: Option<String>,
}

/// Opens connections back to back in one thread and reads their answers in
/// another, so that a slow answer never delays the next connection.
pub(super) struct Prober {
    stop: Arc<AtomicBool>,
    probes: Arc<Mutex<Vec<Probe>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Prober {
    /// One connection, its request sent, then `pause`, and again, for at
    /// most `lifetime` (so at most lifetime / pause connections) even if
    /// the caller never finishes it.
    pub(super) fn start(
        client: &Namespace,
        target: SocketAddr,
        pause: Duration,
        lifetime: Duration,
    ) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(Mutex::new(Vec::new()));
        let (opened, to_read) = mpsc::channel();
        let until = Instant::now() + lifetime;
        let connector = {
            let stop = stop.clone();
            client.spawn(move || connect_loop(target, pause, until, &stop, &opened))
        };
        let reader = {
            let probes = probes.clone();
            std::thread::spawn(move || {
                for (started, established, stream) in to_read {
                    let color = stream.and_then(read_color);
                    probes.lock().expect("probe log").push(Probe {
                        started,
                        established,
                        color,
                    });
                }
            })
        };
        Prober {
            stop,
            probes,
            threads: vec![connector, reader],
        }
    }

    /// The first connection on `color` established after `since` (when it
    /// was opened, when established). Probes are logged in the order they
    /// were opened, so the first match is the earliest.
    pub(super) fn first_on(&self, color: &str, since: Instant, timeout: Duration) -> Opening {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .probes
                .lock()
                .expect("probe log")
                .iter()
                .find(|p| p.established > since && p.color.as_deref() == Some(color))
                .map(|p| Opening {
                    started: p.started,
                    established: p.established,
                });
            if let Some(found) = found {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no connection reached {color} within {timeout:?} of the switch"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Connections begun after `effective` that still reached `old`.
    fn stale(&self, old: &str, effective: Instant) -> u64 {
        self.probes
            .lock()
            .expect("probe log")
            .iter()
            .filter(|p| p.started > effective && p.color.as_deref() == Some(old))
            .count() as u64
    }

    pub(super) fn finish(self) -> Vec<Probe> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("prober thread");
        }
        Arc::try_unwrap(self.probes)
            .ok()
            .expect("prober threads are gone")
            .into_inner()
            .expect("probe log")
    }
}

type Opened = (Instant, Instant, Option<TcpStream>);

fn connect_loop(
    target: SocketAddr,
    pause: Duration,
    until: Instant,
    stop: &AtomicBool,
    opened: &mpsc::Sender<Opened>,
) {
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        let started = Instant::now();
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(1));
        let established = Instant::now();
        let stream = stream
            .ok()
            .and_then(|mut stream| ask_color(&mut stream).ok().map(|()| stream));
        if opened.send((started, established, stream)).is_err() {
            return;
        }
        std::thread::sleep(pause);
    }
}

/// Sends the one request of a connection. The server closes first (as
/// asked), so the client never holds TIME_WAIT sockets and ports do not
/// run out however many connections it opens.
pub(super) fn ask_color(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
}

/// The body of the answer: the color that served the connection.
pub(super) fn read_color(mut stream: TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

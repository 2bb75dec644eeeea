//! Part 4: who answers, 100 ms at a time, while an operator switches to
//! green, rolls back and shifts by weight under load; the data behind
//! `target/bench/timeline.svg`.
//!
//! Clients in the client namespace open new connections to the VIP at a
//! steady pace, and a few keep-alive connections, opened on blue before the
//! first command, keep sending requests. Every answer is counted by color
//! (the backends answer "blue" or "green") at the time its request began.
//! [`TimelineReport::problems`] then holds the run to the commands, so a
//! chart of a broken run cannot pass for a good one.

use std::{
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    Interrupted, check,
    lab::{Dataplane, Lab},
    switch_time::{ask_color, read_color},
};
use crate::http::KeepAlive;

pub struct TimelinePlan {
    /// How long each phase lasts: blue alone, then each command's.
    pub phase: Duration,
    /// Clients opening new connections, one request each.
    pub clients: usize,
    /// Between two requests of one client.
    pub pace: Duration,
    /// Connections opened on blue before the first command.
    pub keep_alive: usize,
    /// Between two requests on one keep-alive connection.
    pub keep_alive_pace: Duration,
}

/// A command and the percentage of new connections green should take
/// once it returned.
struct Step {
    args: &'static [&'static str],
    green_percent: u8,
}

/// The run's commands, one per phase after the first (blue since `up`).
const STEPS: [Step; 5] = [
    Step {
        args: &["switch", "green"],
        green_percent: 100,
    },
    Step {
        args: &["rollback"],
        green_percent: 0,
    },
    Step {
        args: &["switch", "green", "--weight", "25"],
        green_percent: 25,
    },
    Step {
        args: &["switch", "green", "--weight", "75"],
        green_percent: 75,
    },
    Step {
        args: &["switch", "green"],
        green_percent: 100,
    },
];

/// Native, the mode part 3 times switches in.
const DATAPLANE: Dataplane = Dataplane::BluegreenNative;

pub const BUCKET: Duration = Duration::from_millis(100);

/// Connect and read timeout of every request: an answer later than that is
/// a failure.
const TIMEOUT: Duration = Duration::from_secs(2);

/// How far a weighted phase's green share may stray from its weight, in
/// percentage points. Flows are split by a hash of their ports, so the
/// share wanders a little even over a thousand connections.
const WEIGHT_TOLERANCE: f64 = 10.0;

/// Fewer new connections than this in a phase's checked window would make
/// its color check meaningless.
const MIN_PER_PHASE: u64 = 50;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub blue: u64,
    pub green: u64,
    pub failed: u64,
}

impl Counts {
    fn add(&mut self, color: Option<Color>) {
        match color {
            Some(Color::Blue) => self.blue += 1,
            Some(Color::Green) => self.green += 1,
            None => self.failed += 1,
        }
    }

    fn of(&self, color: Color) -> u64 {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }

    pub fn answered(&self) -> u64 {
        self.blue + self.green
    }

    /// Green's share of the answers, in percent.
    pub fn green_percent(&self) -> f64 {
        100.0 * self.green as f64 / self.answered().max(1) as f64
    }

    pub fn plus(self, other: Counts) -> Counts {
        Counts {
            blue: self.blue + other.blue,
            green: self.green + other.green,
            failed: self.failed + other.failed,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    /// The command that began the phase; empty for the first one (blue
    /// since `up`).
    pub command: String,
    /// When the command was spawned, since the load began.
    pub at_ms: f64,
    /// Spawn to exit: connections begun meanwhile may take either color.
    pub took_ms: f64,
    /// The share of new connections that green must take after the
    /// command returned.
    pub green_percent: u8,
    /// New connections begun after the command returned.
    pub new_connections: Counts,
    /// New connections under way while the command ran: begun meanwhile,
    /// or begun before it and not yet answered. Their SYN left at some
    /// moment between their start and their answer (a client thread can
    /// wait for a CPU between the two), so either color is right for them.
    pub during_command: Counts,
    /// Requests on the keep-alive connections, all of which must reach
    /// blue: a graceful switch leaves established connections where they
    /// are.
    pub keep_alive: Counts,
    /// After a full switch or a rollback, the earliest new connection that
    /// still reached the color the command left: when it began tells an
    /// ordering edge (within a millisecond of the return) from a
    /// dataplane that kept steering there, and how long it took tells a
    /// retransmitted handshake.
    pub first_stray: Option<Stray>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stray {
    pub after_return_ms: f64,
    pub took_ms: f64,
}

impl Phase {
    fn new(command: String, at_ms: f64, took_ms: f64, green_percent: u8) -> Phase {
        Phase {
            command,
            at_ms,
            took_ms,
            green_percent,
            new_connections: Counts::default(),
            during_command: Counts::default(),
            keep_alive: Counts::default(),
            first_stray: None,
        }
    }

    /// The color no new connection may take once the command returned, if
    /// the command leaves one color no share.
    fn stray_color(&self) -> Option<Color> {
        match self.green_percent {
            0 => Some(Color::Green),
            100 => Some(Color::Blue),
            _ => None,
        }
    }

    /// Whether `sample` was under way at some moment while the command ran.
    fn command_overlaps(&self, sample: &Sample) -> bool {
        let began = millis(sample.began);
        began < self.at_ms + self.took_ms && began + millis(sample.took) >= self.at_ms
    }

    /// Counts a new connection begun after the command returned.
    fn add_new_connection(&mut self, sample: &Sample) {
        self.new_connections.add(sample.color);
        if sample.color.is_none() || sample.color != self.stray_color() {
            return;
        }
        let stray = Stray {
            after_return_ms: millis(sample.began) - (self.at_ms + self.took_ms),
            took_ms: millis(sample.took),
        };
        if self
            .first_stray
            .is_none_or(|first| stray.after_return_ms < first.after_return_ms)
        {
            self.first_stray = Some(stray);
        }
    }
}

/// Per-bucket counts, by the time each request began.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Buckets {
    pub blue: Vec<u32>,
    pub green: Vec<u32>,
    pub failed: Vec<u32>,
}

impl Buckets {
    fn new(count: usize) -> Buckets {
        Buckets {
            blue: vec![0; count],
            green: vec![0; count],
            failed: vec![0; count],
        }
    }

    fn add(&mut self, sample: &Sample) {
        let index = (sample.began.as_millis() / BUCKET.as_millis()) as usize;
        let series = match sample.color {
            Some(Color::Blue) => &mut self.blue,
            Some(Color::Green) => &mut self.green,
            None => &mut self.failed,
        };
        if let Some(bucket) = series.get_mut(index) {
            *bucket += 1;
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TimelineReport {
    pub dataplane: Dataplane,
    pub clients: usize,
    pub pace_ms: f64,
    pub keep_alive_connections: usize,
    pub keep_alive_pace_ms: f64,
    pub phase_ms: f64,
    pub bucket_ms: f64,
    pub phases: Vec<Phase>,
    pub new_connections: Buckets,
    pub keep_alive: Buckets,
    /// What [`TimelineReport::problems`] found; empty for a good run.
    pub problems: Vec<String>,
}

impl TimelineReport {
    pub fn new_connection_totals(&self) -> Counts {
        self.phases.iter().fold(Counts::default(), |sum, phase| {
            sum.plus(phase.new_connections).plus(phase.during_command)
        })
    }

    pub fn keep_alive_totals(&self) -> Counts {
        self.phases
            .iter()
            .fold(Counts::default(), |sum, phase| sum.plus(phase.keep_alive))
    }

    /// Where the run did not do what the commands say: any failed request,
    /// a new connection on the wrong color after a full switch or a
    /// rollback returned, a weighted share off its weight, a keep-alive
    /// request that left blue, or too little traffic to tell.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for phase in &self.phases {
            let name = if phase.command.is_empty() {
                "before the first command".to_owned()
            } else {
                format!("after `{}`", phase.command)
            };
            let failed = phase.new_connections.failed
                + phase.during_command.failed
                + phase.keep_alive.failed;
            if failed > 0 {
                problems.push(format!("{name}: {failed} requests failed"));
            }
            let new = phase.new_connections;
            if new.answered() < MIN_PER_PHASE {
                problems.push(format!(
                    "{name}: only {} new connections answered",
                    new.answered()
                ));
            }
            match phase.stray_color() {
                Some(color) => {
                    let count = new.of(color);
                    if count > 0 {
                        let first = phase.first_stray.map_or_else(String::new, |first| {
                            format!(
                                " (the first began {:.2} ms after it returned and took {:.1} ms)",
                                first.after_return_ms, first.took_ms
                            )
                        });
                        problems.push(format!(
                            "{name}: {count} new connections reached {}{first}",
                            color.name()
                        ));
                    }
                }
                None => {
                    let share = new.green_percent();
                    if (share - f64::from(phase.green_percent)).abs() > WEIGHT_TOLERANCE {
                        problems.push(format!(
                            "{name}: green took {share:.1} % of new connections, not {} % \
                             (± {WEIGHT_TOLERANCE})",
                            phase.green_percent
                        ));
                    }
                }
            }
            if phase.keep_alive.green > 0 {
                problems.push(format!(
                    "{name}: {} keep-alive requests reached green",
                    phase.keep_alive.green
                ));
            }
            if self.keep_alive_connections > 0 && phase.keep_alive.blue == 0 {
                problems.push(format!("{name}: no keep-alive request was answered"));
            }
        }
        problems
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Color {
    Blue,
    Green,
}

impl Color {
    fn of(body: &str) -> Option<Color> {
        match body {
            "blue" => Some(Color::Blue),
            "green" => Some(Color::Green),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

/// One request: when it began (since the load began), how long it took,
/// and who answered (None: it failed).
struct Sample {
    began: Duration,
    took: Duration,
    color: Option<Color>,
}

pub fn run(lab: &Lab, plan: &TimelinePlan) -> Result<TimelineReport, Interrupted> {
    let active = lab.activate(DATAPLANE);
    let total = plan.phase * (STEPS.len() as u32 + 1);
    let load = Load::start(lab, plan, total);
    let mut phases = vec![Phase::new(String::new(), 0.0, 0.0, 0)];
    for (number, step) in (1u32..).zip(&STEPS) {
        wait_until(load.began + plan.phase * number)?;
        let spawned = Instant::now();
        active.bluegreen_command(step.args).run()?;
        phases.push(Phase::new(
            step.args.join(" "),
            millis(spawned - load.began),
            millis(spawned.elapsed()),
            step.green_percent,
        ));
    }
    wait_until(load.began + total)?;
    let (new, keep_alive) = load.finish();
    let buckets = total.as_millis().div_ceil(BUCKET.as_millis()) as usize;
    let mut report = TimelineReport {
        dataplane: DATAPLANE,
        clients: plan.clients,
        pace_ms: millis(plan.pace),
        keep_alive_connections: plan.keep_alive,
        keep_alive_pace_ms: millis(plan.keep_alive_pace),
        phase_ms: millis(plan.phase),
        bucket_ms: millis(BUCKET),
        new_connections: Buckets::new(buckets),
        keep_alive: Buckets::new(buckets),
        phases,
        problems: Vec::new(),
    };
    for sample in &new {
        report.new_connections.add(sample);
        match report
            .phases
            .iter_mut()
            .find(|phase| phase.command_overlaps(sample))
        {
            Some(phase) => phase.during_command.add(sample.color),
            None => phase_of(&mut report.phases, sample).add_new_connection(sample),
        }
    }
    for sample in &keep_alive {
        report.keep_alive.add(sample);
        phase_of(&mut report.phases, sample)
            .keep_alive
            .add(sample.color);
    }
    report.problems = report.problems();
    Ok(report)
}

/// The phase a request began in: the last one that had begun by then.
fn phase_of<'a>(phases: &'a mut [Phase], sample: &Sample) -> &'a mut Phase {
    let began = millis(sample.began);
    let index = phases
        .iter()
        .rposition(|phase| phase.at_ms <= began)
        .unwrap_or(0);
    &mut phases[index]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Sleeps until `deadline`, a little at a time, so that Ctrl-C is noticed.
fn wait_until(deadline: Instant) -> Result<(), Interrupted> {
    loop {
        check()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// The clients, stopped and joined when dropped (also on Ctrl-C or panic).
/// Each stops by itself at the end of the run, or once it made as many
/// requests as its pace allows in that time.
struct Load {
    began: Instant,
    stop: Arc<AtomicBool>,
    new: Vec<JoinHandle<Vec<Sample>>>,
    keep_alive: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(lab: &Lab, plan: &TimelinePlan, total: Duration) -> Load {
        let target = DATAPLANE.target();
        // Opened before the load begins, so on blue: its socket stays in
        // the client namespace, whichever thread then uses it.
        let connections: Vec<KeepAlive> = (0..plan.keep_alive)
            .map(|_| {
                lab.client()
                    .spawn(move || KeepAlive::connect(target, TIMEOUT))
                    .join()
                    .expect("client thread")
                    .unwrap_or_else(|error| panic!("cannot open a keep-alive connection: {error}"))
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let began = Instant::now();
        let paced = |pace: Duration, offset: Duration| Pacer {
            began,
            next: began + offset,
            pace,
            until: began + total,
            limit: (total.as_nanos() / pace.as_nanos()) as usize + 1,
            stop: stop.clone(),
        };
        let new = (0..plan.clients)
            .map(|client| {
                // Spread over one pace, not all at once.
                let pacer = paced(plan.pace, plan.pace * client as u32 / plan.clients as u32);
                lab.client()
                    .spawn(move || pacer.run(|| new_connection(target)))
            })
            .collect();
        let keep_alive = connections
            .into_iter()
            .enumerate()
            .map(|(index, mut connection)| {
                let offset = plan.keep_alive_pace * index as u32 / plan.keep_alive as u32;
                let pacer = paced(plan.keep_alive_pace, offset);
                std::thread::spawn(move || {
                    pacer.run(|| connection.get().ok().as_deref().and_then(Color::of))
                })
            })
            .collect();
        Load {
            began,
            stop,
            new,
            keep_alive,
        }
    }

    /// Waits for the clients; returns the samples of new connections and
    /// of keep-alive requests.
    fn finish(mut self) -> (Vec<Sample>, Vec<Sample>) {
        let join = |threads: Vec<JoinHandle<Vec<Sample>>>| -> Vec<Sample> {
            threads
                .into_iter()
                .flat_map(|thread| thread.join().expect("load client"))
                .collect()
        };
        (
            join(std::mem::take(&mut self.new)),
            join(std::mem::take(&mut self.keep_alive)),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.new.drain(..).chain(self.keep_alive.drain(..)) {
            let _ = thread.join();
        }
    }
}

/// One request on a new connection.
fn new_connection(target: SocketAddr) -> Option<Color> {
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT).ok()?;
    ask_color(&mut stream).ok()?;
    Color::of(&read_color(stream)?)
}

/// Runs requests at a steady pace until the run ends. A request that
/// overruns its slot delays the next one rather than letting requests
/// bunch up after it, so the load never exceeds the pace.
struct Pacer {
    began: Instant,
    next: Instant,
    pace: Duration,
    until: Instant,
    limit: usize,
    stop: Arc<AtomicBool>,
}

impl Pacer {
    fn run(mut self, mut request: impl FnMut() -> Option<Color>) -> Vec<Sample> {
        let mut samples = Vec::with_capacity(self.limit);
        while samples.len() < self.limit
            && self.next < self.until
            && !self.stop.load(Ordering::Relaxed)
        {
            std::thread::sleep(self.next.saturating_duration_since(Instant::now()));
            let began = Instant::now();
            let color = request();
            samples.push(Sample {
                began: began - self.began,
                took: began.elapsed(),
                color,
            });
            self.next = (self.next + self.pace).max(Instant::now());
        }
        samples
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn counts(blue: u64, green: u64, failed: u64) -> Counts {
        Counts {
            blue,
            green,
            failed,
        }
    }

    fn phase(command: &str, green_percent: u8, new: Counts) -> Phase {
        Phase {
            new_connections: new,
            // Either color is right while the command runs.
            during_command: counts(1, 1, 0),
            keep_alive: counts(30, 0, 0),
            ..Phase::new(command.to_owned(), 0.0, 5.0, green_percent)
        }
    }

    pub(in crate::bench) fn report(phases: Vec<Phase>) -> TimelineReport {
        TimelineReport {
            dataplane: DATAPLANE,
            clients: 1,
            pace_ms: 1.0,
            keep_alive_connections: 1,
            keep_alive_pace_ms: 10.0,
            phase_ms: 1000.0,
            bucket_ms: 100.0,
            phases,
            new_connections: Buckets::default(),
            keep_alive: Buckets::default(),
            problems: Vec::new(),
        }
    }

    pub(in crate::bench) fn good() -> Vec<Phase> {
        vec![
            phase("", 0, counts(800, 0, 0)),
            phase("switch green", 100, counts(0, 800, 0)),
            phase("rollback", 0, counts(800, 0, 0)),
            phase("switch green --weight 25", 25, counts(610, 190, 0)),
            phase("switch green --weight 75", 75, counts(190, 610, 0)),
            phase("switch green", 100, counts(0, 800, 0)),
        ]
    }

    #[test]
    fn a_run_that_followed_the_commands_has_no_problems() {
        assert_eq!(report(good()).problems(), Vec::<String>::new());
    }

    #[test]
    fn every_deviation_is_a_problem() {
        let mut phases = good();
        phases[1].new_connections.blue = 1;
        phases[2].keep_alive.failed = 2;
        phases[3].new_connections = counts(400, 400, 0);
        phases[4].keep_alive.green = 3;
        phases[5].new_connections = counts(0, 10, 0);
        assert_eq!(
            report(phases).problems(),
            [
                "after `switch green`: 1 new connections reached blue",
                "after `rollback`: 2 requests failed",
                "after `switch green --weight 25`: green took 50.0 % of new connections, not 25 % (± 10)",
                "after `switch green --weight 75`: 3 keep-alive requests reached green",
                "after `switch green`: only 10 new connections answered",
            ]
        );
    }

    #[test]
    fn a_stray_connection_is_reported_with_the_earliest_one_timed() {
        let mut rollback = phase("rollback", 0, Counts::default());
        rollback.at_ms = 1000.0;
        let sample = |ms, took_ms, color| Sample {
            began: Duration::from_millis(ms),
            took: Duration::from_millis(took_ms),
            color: Some(color),
        };
        for s in [
            sample(1007, 1, Color::Blue),
            sample(1030, 2, Color::Green),
            sample(1012, 1500, Color::Green),
            sample(1040, 1, Color::Blue),
        ] {
            rollback.add_new_connection(&s);
        }
        rollback.new_connections.blue += 100;
        assert_eq!(rollback.new_connections, counts(102, 2, 0));
        assert_eq!(
            rollback.first_stray,
            Some(Stray {
                after_return_ms: 7.0,
                took_ms: 1500.0
            })
        );
        let mut phases = good();
        phases[2] = rollback;
        assert_eq!(
            report(phases).problems(),
            ["after `rollback`: 2 new connections reached green \
              (the first began 7.00 ms after it returned and took 1500.0 ms)"]
        );
    }

    #[test]
    fn a_connection_still_under_way_when_a_command_starts_may_take_either_color() {
        let mut switch = phase("switch green", 100, Counts::default());
        (switch.at_ms, switch.took_ms) = (3000.0, 7.0);
        let sample = |ms, took_ms| Sample {
            began: Duration::from_millis(ms),
            took: Duration::from_millis(took_ms),
            color: Some(Color::Green),
        };
        assert!(switch.command_overlaps(&sample(2998, 12)));
        assert!(switch.command_overlaps(&sample(3003, 1)));
        assert!(!switch.command_overlaps(&sample(2998, 1)));
        assert!(!switch.command_overlaps(&sample(3007, 1)));
    }

    #[test]
    fn samples_land_in_their_bucket_and_phase() {
        let mut buckets = Buckets::new(3);
        let sample = |ms, color| Sample {
            began: Duration::from_millis(ms),
            took: Duration::from_millis(1),
            color,
        };
        for s in [
            sample(0, Some(Color::Blue)),
            sample(99, Some(Color::Blue)),
            sample(100, Some(Color::Green)),
            sample(250, None),
            sample(300, Some(Color::Green)),
        ] {
            buckets.add(&s);
        }
        assert_eq!(buckets.blue, [2, 0, 0]);
        assert_eq!(buckets.green, [0, 1, 0]);
        assert_eq!(buckets.failed, [0, 0, 1]);
        let mut phases = good();
        phases[1].at_ms = 100.0;
        phases.truncate(2);
        assert_eq!(phase_of(&mut phases, &sample(99, None)).command, "");
        assert_eq!(
            phase_of(&mut phases, &sample(100, None)).command,
            "switch green"
        );
    }
}

//! Part 9: the idle color's lifecycle. How long from the start of
//! `bluegreen switch green --start`, green stopped, until green serves its
//! first request, and where that time goes as the command itself reports
//! it (the start command, the wait for green's backend to be ready, the
//! warm-up gate, the map update); against a plain `bluegreen switch
//! green` to a green already running, through the same warm-up gate, in
//! the same rounds; and the start with its wait against green's backend
//! spawned bare.
//!
//! Green's backend is a process of its own (the `backend` binary),
//! started and killed by the configured lifecycle commands, as in the
//! lifecycle tests; blue's runs in the bench.

use std::{
    fmt::Write as _,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    Interrupted, check,
    lab::SwitchCommand,
    stats::{median, percentile},
    switch_time::Prober,
};
use crate::{
    fixture::{BACKEND_PORT, Fixture, green_backend, vip},
    lifecycle::{self, LifecycleScript},
};

pub struct LifecyclePlan {
    pub rounds: usize,
}

/// One switch to green as the client and the command saw it, in ms from
/// the command's start (its spawn included).
#[derive(Clone, Debug, Serialize)]
pub struct Switched {
    /// When the client began the first connection green served.
    pub first_green_ms: f64,
    pub exit_ms: f64,
    /// As the command printed them; 0 for the plain switch, which starts
    /// nothing.
    pub start_command_ms: f64,
    pub backends_ready_ms: f64,
    pub warmup_ms: f64,
    pub map_update_ms: f64,
}

impl Switched {
    /// Negative when green served before the command had exited.
    fn exit_to_first_green_ms(&self) -> f64 {
        self.first_green_ms - self.exit_ms
    }

    /// What the command's own split leaves out: its spawn, reading the
    /// state, the locks, the health check before the switch, and the
    /// client's resolution.
    fn rest_ms(&self) -> f64 {
        self.first_green_ms
            - self.start_command_ms
            - self.backends_ready_ms
            - self.warmup_ms
            - self.map_update_ms
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Round {
    pub with_start: Switched,
    pub plain: Switched,
    /// Green's backend spawned by the bench with `nsenter`, to the first
    /// connection it accepted.
    pub bare_spawn_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LifecycleReport {
    pub warmup_requests: u32,
    /// Median time between two of the client's connections: the
    /// resolution of the first green answer.
    pub probe_interval_ms: f64,
    pub probes: usize,
    /// Should be 0: blue serves until the switch.
    pub failed_probes: usize,
    pub rounds: Vec<Round>,
}

const WARMUP_REQUESTS: u32 = 20;
/// Between two of the client's connections: a resolution of about 1 ms on
/// switches of tens to hundreds of ms, without the load of part 3's
/// prober competing with the start for the two CPUs.
const PROBE_PAUSE: Duration = Duration::from_millis(1);
/// The longest one measured switch can take: its command is killed after
/// 10 s, and green's first answer is waited for 3 s after.
const PROBE_LIFETIME: Duration = Duration::from_secs(15);
const FIRST_GREEN_WITHIN: Duration = Duration::from_secs(3);
/// How often the bare spawn's port is tried.
const BARE_POLL: Duration = Duration::from_millis(1);
const BARE_READY_WITHIN: Duration = Duration::from_secs(10);
/// Green's last flows close a second after their FIN (the closing timeout
/// the lifecycle set-up configures); until then a stop is refused.
const STOP_WITHIN: Duration = Duration::from_secs(15);
const STOP_RETRY: Duration = Duration::from_millis(200);

/// The `backend` binary, built next to this one (`cargo xtask bench`
/// builds both).
fn backend_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let path = exe.with_file_name("backend");
    assert!(
        path.exists(),
        "{} not found: build it first (`cargo xtask bench` does)",
        path.display()
    );
    path
}

/// The switch, plain or with `--start`, each round in both orders by
/// turns; green stopped before each switch with `--start`, and at the
/// end of each round.
pub fn run(plan: &LifecyclePlan) -> Result<LifecycleReport, Interrupted> {
    let backend = backend_binary();
    let warmup = format!("\n[service.warmup]\nrequests = {WARMUP_REQUESTS}\npath = \"/\"\n");
    let (fixture, script, _config) = lifecycle::up(&backend, &warmup);
    // Green counts as running until bluegreen stops it once.
    fixture.bluegreen.ok(&["-q", "stop", "green"]);
    let mut client = Client::default();
    let mut rounds = Vec::new();
    for round in 0..plan.rounds {
        check()?;
        let bare_spawn_ms = bare_spawn(&fixture, &backend)?;
        let (with_start, plain) = if round % 2 == 0 {
            let with_start = client.switch(&fixture, &script, true)?;
            (with_start, client.switch(&fixture, &script, false)?)
        } else {
            fixture.bluegreen.ok(&["-q", "start", "green"]);
            let plain = client.switch(&fixture, &script, false)?;
            stop_green(&fixture, &script)?;
            (client.switch(&fixture, &script, true)?, plain)
        };
        stop_green(&fixture, &script)?;
        rounds.push(Round {
            with_start,
            plain,
            bare_spawn_ms,
        });
    }
    Ok(LifecycleReport {
        warmup_requests: WARMUP_REQUESTS,
        probe_interval_ms: median(&client.intervals_ms),
        probes: client.probes,
        failed_probes: client.failed,
        rounds,
    })
}

/// What the client saw over all the switches.
#[derive(Default)]
struct Client {
    intervals_ms: Vec<f64>,
    probes: usize,
    failed: usize,
}

impl Client {
    /// One measured switch from blue to green, `--start` or not, and back
    /// to blue unmeasured.
    fn switch(
        &mut self,
        fixture: &Fixture,
        script: &LifecycleScript,
        start: bool,
    ) -> Result<Switched, Interrupted> {
        let args: &[&str] = if start {
            &["switch", "green", "--start"]
        } else {
            &["switch", "green"]
        };
        let command = SwitchCommand::bluegreen(&fixture.bluegreen, &fixture.topology.switch, args);
        let prober = Prober::start(&fixture.topology.client, vip(), PROBE_PAUSE, PROBE_LIFETIME);
        let started = Instant::now();
        let printed = command.output()?;
        let exited = Instant::now();
        let first = prober.first_on("green", started, FIRST_GREEN_WITHIN);
        let probes = prober.finish();
        self.probes += probes.len();
        self.failed += probes.iter().filter(|probe| probe.color.is_none()).count();
        self.intervals_ms.extend(
            probes
                .windows(2)
                .map(|pair| millis(pair[1].started - pair[0].started)),
        );
        assert!(script.green_runs(), "green's backend runs after {args:?}");
        fixture
            .bluegreen
            .ok(&["-q", "switch", "blue", "--skip-check"]);
        let split = Split::parse(&printed);
        assert_eq!(
            split.start.is_some(),
            start,
            "`bluegreen {}` printed:\n{printed}",
            args.join(" ")
        );
        let (start_command_ms, backends_ready_ms) = split.start.unwrap_or_default();
        Ok(Switched {
            first_green_ms: millis(first.started.saturating_duration_since(started)),
            exit_ms: millis(exited - started),
            start_command_ms,
            backends_ready_ms,
            warmup_ms: split.warmup_ms,
            map_update_ms: split.map_update_ms,
        })
    }
}

/// `bluegreen stop green`, again while green's last flows are closing.
fn stop_green(fixture: &Fixture, script: &LifecycleScript) -> Result<(), Interrupted> {
    let deadline = Instant::now() + STOP_WITHIN;
    loop {
        check()?;
        let run = fixture.bluegreen.run(&["-q", "stop", "green"]);
        if run.code == 0 {
            assert!(!script.green_runs(), "the stop command killed green");
            return Ok(());
        }
        assert!(
            run.stderr.contains("live flows") && Instant::now() < deadline,
            "bluegreen stop green: {}",
            run.stderr
        );
        std::thread::sleep(STOP_RETRY);
    }
}

/// The split `bluegreen switch` prints, in ms.
struct Split {
    /// The start command and the wait for readiness, if it started green.
    start: Option<(f64, f64)>,
    warmup_ms: f64,
    map_update_ms: f64,
}

impl Split {
    /// From "web: green started in 271.2ms (command 20.3ms, backends
    /// ready 250.9ms)", "green passed its warm-up gate in 9.8ms: ..." and
    /// "web: blue -> green in 31µs (graceful: ...)".
    fn parse(printed: &str) -> Split {
        let find = |from: &str, to: char| {
            printed
                .lines()
                .find_map(|line| between(line, from, to))
                .map(debug_ms)
        };
        let missing = |what: &str| -> f64 { panic!("no {what} in:\n{printed}") };
        Split {
            start: find("(command ", ',').map(|command| {
                let ready = find("backends ready ", ')');
                (command, ready.unwrap_or_else(|| missing("readiness")))
            }),
            warmup_ms: find("passed its warm-up gate in ", ':')
                .unwrap_or_else(|| missing("warm-up gate")),
            map_update_ms: find("blue -> green in ", ' ').unwrap_or_else(|| missing("switch")),
        }
    }
}

/// The text between `from` and the next `to` in `line`, if `from` is in it.
fn between<'a>(line: &'a str, from: &str, to: char) -> Option<&'a str> {
    let rest = &line[line.find(from)? + from.len()..];
    rest.split(to).next()
}

/// A duration as Rust's `{:?}` prints it ("271.2ms", "31µs", "1.0s"), in
/// ms.
fn debug_ms(text: &str) -> f64 {
    let unit_at = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_at);
    let number: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("not a duration: {text:?}"));
    number
        * match unit {
            "s" => 1e3,
            "ms" => 1.0,
            "µs" => 1e-3,
            "ns" => 1e-6,
            _ => panic!("not a duration: {text:?}"),
        }
}

/// Green's backend as a child of the bench, killed by its pid and reaped
/// on drop, also when the bench fails.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `nsenter --net=GREEN backend PORT green` as the start script runs it,
/// to the first connection it accepted from the switch namespace (where
/// bluegreen's health check connects from); then killed.
fn bare_spawn(fixture: &Fixture, backend: &Path) -> Result<f64, Interrupted> {
    check()?;
    let mut command = fixture
        .topology
        .green
        .command(backend.to_str().expect("utf-8 path"));
    command
        .args([&BACKEND_PORT.to_string(), "green", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let _spawned = Spawned(command.spawn().expect("spawn green's backend"));
    let accepted = fixture
        .topology
        .switch
        .spawn(move || {
            let deadline = started + BARE_READY_WITHIN;
            while TcpStream::connect_timeout(&green_backend(), BARE_READY_WITHIN).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "green's backend spawned bare did not accept within {BARE_READY_WITHIN:?}"
                );
                std::thread::sleep(BARE_POLL);
            }
            Instant::now()
        })
        .join()
        .expect("bare spawn's poller");
    Ok(millis(accepted - started))
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// A figure in ms, with µs resolution under a ms (the map update's).
fn ms(value: f64) -> String {
    if value.abs() < 1.0 {
        format!("{value:.3} ms")
    } else {
        format!("{value:.2} ms")
    }
}

/// A row of the table: a figure of each switch, and whether the plain
/// switch has it.
type Figure = (&'static str, fn(&Switched) -> f64, bool);

const FIGURES: [Figure; 8] = [
    ("start command", |s| s.start_command_ms, false),
    (
        "backends ready (health wait)",
        |s| s.backends_ready_ms,
        false,
    ),
    ("warm-up gate", |s| s.warmup_ms, true),
    ("switch (map update)", |s| s.map_update_ms, true),
    (
        "the rest (spawn, state, locks, health check, client)",
        Switched::rest_ms,
        true,
    ),
    (
        "**command start to the first green answer**",
        |s| s.first_green_ms,
        true,
    ),
    ("command start to exit", |s| s.exit_ms, true),
    (
        "exit to the first green answer",
        Switched::exit_to_first_green_ms,
        true,
    ),
];

pub fn table(report: &LifecycleReport) -> String {
    let rounds = &report.rounds;
    let figure = |of: fn(&Round) -> &Switched, value: fn(&Switched) -> f64| -> Vec<f64> {
        rounds.iter().map(|round| value(of(round))).collect()
    };
    let mut out = format!(
        "## 9. Idle lifecycle\n\n\
         `bluegreen switch green --start` with green stopped (its start command runs a \
         script that spawns green's backend with `nsenter`, as the lifecycle tests do), \
         against a plain `bluegreen switch green` to a green already running, both through \
         a warm-up gate of {} GETs; {} rounds, the two in both orders by turns. Times from \
         the command's spawn; the first green answer as a client in the client namespace \
         sees it (a new connection every {:.2} ms, the resolution: when it began the first \
         connection green served); the split as the command printed it.\n\n\
         | | --start p50 | --start p95 | plain p50 | plain p95 |\n\
         | --- | --- | --- | --- | --- |\n",
        report.warmup_requests,
        rounds.len(),
        report.probe_interval_ms
    );
    for (name, value, plain_has_it) in FIGURES {
        let with_start = figure(|round| &round.with_start, value);
        let plain = figure(|round| &round.plain, value);
        let plain_cells = if plain_has_it {
            format!("{} | {}", ms(median(&plain)), ms(percentile(&plain, 95.0)))
        } else {
            "- | -".to_owned()
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {plain_cells} |",
            ms(median(&with_start)),
            ms(percentile(&with_start, 95.0))
        );
    }
    let per_round =
        |of: fn(&Round) -> f64| -> f64 { median(&rounds.iter().map(of).collect::<Vec<_>>()) };
    let bare: Vec<f64> = rounds.iter().map(|round| round.bare_spawn_ms).collect();
    let _ = writeln!(
        out,
        "\nTo the first green answer, `--start` over the plain switch: {:.2}x, {:+.1} ms \
         (medians of each round's ratio and difference). Green's backend spawned bare \
         (`nsenter --net=GREEN backend`, its port tried every {} ms from the switch \
         namespace) accepted its first connection after {:.1} ms (p95 {:.1} ms); the start \
         command and the wait for readiness together took {:.1}x that, the start command \
         alone {:.1}x. {} client connections, {} failed.\n",
        per_round(|round| round.with_start.first_green_ms / round.plain.first_green_ms),
        per_round(|round| round.with_start.first_green_ms - round.plain.first_green_ms),
        BARE_POLL.as_millis(),
        median(&bare),
        percentile(&bare, 95.0),
        per_round(|round| {
            (round.with_start.start_command_ms + round.with_start.backends_ready_ms)
                / round.bare_spawn_ms
        }),
        per_round(|round| round.with_start.start_command_ms / round.bare_spawn_ms),
        report.probes,
        report.failed_probes
    );
    out
}

//! `cargo xtask demo`: blue-green switching on real packets, in throwaway
//! network namespaces, with nothing to configure and nothing left behind.

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use bluegreen_testbed::{
    cli::Bluegreen,
    http::{self, Backend, Load},
    netns::{SWITCH_IFACE, Topology, addr},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C only raises a flag: the demo then unwinds normally, so every
/// namespace, pin and link is removed by the destructors that own them.
fn catch_interrupts() {
    let handler = on_interrupt as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

struct Interrupted;

fn check() -> Result<(), Interrupted> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

fn pause(duration: Duration) -> Result<(), Interrupted> {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        check()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

const VIP_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;

fn vip() -> SocketAddr {
    SocketAddr::new(addr::VIP_V4.parse().expect("literal"), VIP_PORT)
}

/// Asks the VIP `count` times, one new connection each, and prints what
/// answered: the view of a client watching the switch happen.
fn sample(topology: &Topology, label: &str, count: usize) -> Result<(), Interrupted> {
    check()?;
    let answers = topology
        .client
        .spawn(move || {
            (0..count)
                .map(|_| {
                    let answer = http::get(vip(), Duration::from_secs(2))
                        .unwrap_or_else(|error| format!("FAILED({error})"));
                    std::thread::sleep(Duration::from_millis(50));
                    answer
                })
                .collect::<Vec<_>>()
        })
        .join()
        .expect("client thread");
    println!("   {label:<18} {}", answers.join(" "));
    Ok(())
}

fn step(number: u32, text: &str) {
    println!("\n{number}. {text}");
}

fn indent(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

fn run(topology: &Topology, bluegreen: &Bluegreen) -> Result<u64, Interrupted> {
    step(
        2,
        "bluegreen up on the switch host's client-facing interface:",
    );
    let vip_text = vip().to_string();
    let blue = format!("{}:{BACKEND_PORT}", addr::BLUE_V4);
    let green = format!("{}:{BACKEND_PORT}", addr::GREEN_V4);
    indent(&bluegreen.ok(&[
        "up",
        "--iface",
        SWITCH_IFACE,
        "--service",
        "chat",
        "--vip",
        &vip_text,
        "--blue",
        &blue,
        "--green",
        &green,
    ]));
    pause(Duration::from_millis(200))?;

    step(
        3,
        &format!("a client asks http://{vip_text}/ (each request a new connection):"),
    );
    sample(topology, "before the switch", 10)?;

    step(
        4,
        "shadow green first: every new flow's requests replayed to green, its answers compared with blue's and discarded:",
    );
    let shadowing = bluegreen.spawn(&[
        "shadow",
        "run",
        "chat",
        "--sample",
        "100%",
        "--duration",
        "2s",
    ]);
    let sampled =
        pause(Duration::from_millis(300)).and_then(|()| sample(topology, "while shadowing", 10));
    // Waited for even on Ctrl-C: the run ends by itself within 2 s.
    let shadowed = shadowing
        .wait_with_output()
        .expect("the shadowing run ends by itself");
    sampled?;
    indent(&String::from_utf8_lossy(&shadowed.stdout));

    step(
        5,
        "switch to green under continuous traffic (4 clients, new connection per request):",
    );
    let load = Load::start(&topology.client, vip(), 4, 50_000, Duration::from_secs(60));
    pause(Duration::from_millis(500))?;
    indent(&bluegreen.ok(&["switch", "green"]));
    sample(topology, "after the switch", 10)?;
    pause(Duration::from_millis(500))?;

    step(6, "roll back, still under traffic:");
    indent(&bluegreen.ok(&["rollback"]));
    sample(topology, "after rollback", 10)?;
    pause(Duration::from_millis(500))?;
    let report = load.finish(true);

    step(
        7,
        "bluegreen status (per-color counters from the kernel's maps):",
    );
    indent(&bluegreen.ok(&["status"]));

    println!(
        "\nResult: {} requests under load in {:.1?}: blue {}, green {}, failed {}",
        report.succeeded() + report.failures.len() as u64,
        report.elapsed,
        report.served_by.get("blue").unwrap_or(&0),
        report.served_by.get("green").unwrap_or(&0),
        report.failures.len()
    );
    for failure in report.failures.iter().take(5) {
        println!("   failure: {failure}");
    }
    Ok(report.failures.len() as u64)
}

fn main() -> ExitCode {
    catch_interrupts();
    println!("bluegreen demo: one VIP, two versions, zero failed requests.");
    step(
        1,
        "building a throwaway topology in network namespaces:\n   client --veth-- switch host [XDP in, TC out on s0] --veth-- blue  (HTTP, answers \"blue\")\n                                                     \\-veth-- green (HTTP, answers \"green\")",
    );
    let topology = Topology::new();
    println!(
        "   namespaces: {}-{{client,switch,blue,green}}",
        topology.prefix
    );
    let outcome = {
        let _blue = Backend::start(&topology.blue, BACKEND_PORT, "blue");
        let _green = Backend::start(&topology.green, BACKEND_PORT, "green");
        let bluegreen = Bluegreen::new(&topology.switch);
        let outcome = run(&topology, &bluegreen);
        println!("\nCleaning up: bluegreen down, backends stopped, namespaces removed.");
        outcome
    };
    let prefix = topology.prefix.clone();
    drop(topology);
    let namespaces = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|output| output.stdout)
            .unwrap_or_default(),
    )
    .into_owned();
    let leftovers = namespaces
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .count();
    let pins_left = std::path::Path::new(&format!("/sys/fs/bpf/{prefix}-switch")).exists();
    println!(
        "   namespaces left: {leftovers}, pins left: {}",
        if pins_left { "yes" } else { "none" }
    );

    match outcome {
        Err(Interrupted) => {
            println!("Interrupted: everything the demo created has been removed.");
            ExitCode::from(130)
        }
        Ok(0) if leftovers == 0 && !pins_left => ExitCode::SUCCESS,
        Ok(failed) => {
            println!("Demo FAILED: {failed} failed requests, {leftovers} namespaces left");
            ExitCode::FAILURE
        }
    }
}

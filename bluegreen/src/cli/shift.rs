//! `bluegreen shift`: a weighted, health-checked walk from one color to the
//! other, stopping or rolling back as the operator or the checks decide.

use std::{
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::bail;
use bluegreen::{
    endpoint::Color,
    health::{Health, HealthTracker},
    host::{Host, SwitchOptions, SwitchTarget},
};
use bluegreen_common::ChangeCause;

use super::{EXIT_INTERRUPTED, args::ShiftArgs};
use crate::output::print_switch;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

pub fn run(host: &Host, args: &ShiftArgs) -> anyhow::Result<ExitCode> {
    if args.steps.windows(2).any(|pair| pair[0] >= pair[1]) {
        bail!(
            "--steps must increase, e.g. 10,25,50,100 (got {:?})",
            args.steps
        );
    }
    let service = args.service.as_deref();
    let view = host.service_view(service)?;
    let name = view.record.spec.name.clone();
    let color = args.color;
    if view.active == color && view.record.weight == 0 {
        bail!("{name}: {color} is already active; shift moves traffic to the idle color");
    }
    let check = view.record.spec.health.clone();
    if check.is_none() {
        println!("{name}: no health check configured; steps are timed only");
    }
    let handler = on_interrupt as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };

    let total = args.steps.len();
    let mut current = view.record.weight;
    for (index, &step) in args.steps.iter().enumerate() {
        if INTERRUPTED.load(Ordering::Relaxed) {
            return Ok(stopped(&name, color, current, index, total));
        }
        if let Some(check) = &check
            && let Err(reason) = check.probe_pool(&view.pool(color).serving())
        {
            return roll_back(
                host,
                &name,
                current,
                &format!("{color} failed its health check: {reason}"),
            );
        }
        // The steps probe the color themselves, every check interval.
        let outcome = host.shift(Some(&name), color, step, false, ChangeCause::Shift)?;
        current = step;
        println!(
            "step {}/{total}: {color} at {step}% of new flows",
            index + 1
        );
        print_switch(&outcome);
        if step == 100 {
            println!("{name}: shift complete, {color} is active");
            return Ok(ExitCode::SUCCESS);
        }
        let deadline = Instant::now() + args.interval;
        let mut tracker = HealthTracker::default();
        let mut next_probe = Instant::now();
        while Instant::now() < deadline {
            if INTERRUPTED.load(Ordering::Relaxed) {
                return Ok(stopped(&name, color, current, index + 1, total));
            }
            if let Some(check) = &check
                && Instant::now() >= next_probe
            {
                next_probe = Instant::now() + check.interval();
                let result = check.probe_pool(&view.pool(color).serving());
                if tracker.observe(check, result) == Some(Health::Unhealthy) {
                    let reason = tracker.last_error.clone().unwrap_or_default();
                    return roll_back(
                        host,
                        &name,
                        current,
                        &format!("{color} turned unhealthy at {step}%: {reason}"),
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
        }
    }
    println!(
        "{name}: shift stopped at {current}% as asked; `bluegreen switch {color}` finishes it, `bluegreen rollback` undoes it"
    );
    Ok(ExitCode::SUCCESS)
}

fn stopped(name: &str, color: Color, weight: u8, done: usize, total: usize) -> ExitCode {
    println!(
        "{name}: interrupted after step {done}/{total}; {color} keeps {weight}% of new flows. `bluegreen switch {color}` finishes the shift, `bluegreen rollback` undoes it"
    );
    ExitCode::from(EXIT_INTERRUPTED)
}

/// Returns the shifted share (`weight`) to 0 after a failed check.
fn roll_back(host: &Host, name: &str, weight: u8, reason: &str) -> anyhow::Result<ExitCode> {
    if weight == 0 {
        // Nothing to undo, and a rollback would move every new flow to the
        // previous color: possibly the very one that just failed.
        eprintln!("error: {name}: {reason}; nothing was shifted");
        return Ok(ExitCode::FAILURE);
    }
    // Back to where traffic was: no check stands in the way of a retreat.
    let options = SwitchOptions {
        force: false,
        check: false,
        cause: ChangeCause::Shift,
    };
    let outcome = host.switch(Some(name), SwitchTarget::Previous, options)?;
    eprintln!("error: {name}: {reason}; rolled back");
    print_switch(&outcome);
    Ok(ExitCode::FAILURE)
}

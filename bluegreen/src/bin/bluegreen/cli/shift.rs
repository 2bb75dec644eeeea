//! `bluegreen shift`: a weighted, health-checked walk from one color to the
//! other, stopping or rolling back as the operator or the checks decide.

use std::{
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use bluegreen::{
    clock::unix_now_ms,
    endpoint::Color,
    health::{Health, HealthTracker},
    host::{Host, SwitchOptions, SwitchTarget},
    shift::{Failure, Next, Shift, Stopped},
    verify::{NoData, Watched},
};
use bluegreen_common::ChangeCause;

use super::{EXIT_INTERRUPTED, args::ShiftArgs};
use crate::output::print_switch;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

pub fn walk(host: &Host, args: &ShiftArgs) -> anyhow::Result<ExitCode> {
    let service = args.service.as_deref();
    let view = host.service_view(service)?;
    let name = view.record.spec.name.clone();
    let color = args.color;
    let mut walk = Shift::new(
        &name,
        color,
        view.active == color,
        view.record.weight,
        args.steps.clone(),
    )?;
    let check = view.record.spec.health.clone();
    // A shift moves traffic as a switch does: no data fails, unless an
    // analysis says otherwise.
    let mut analyses = Watched::new(&view.record.spec.analysis, NoData::Fail);
    if check.is_none() && analyses.is_empty() {
        println!("{name}: no health check or analysis configured; steps are timed only");
    }
    // The shifted color, compared with the one it takes flows from.
    let target = view.target(color, view.active);
    // Failures count over the whole walk, from its first step: an analysis
    // that could not fail its limit before the walk ends would only look
    // like a check.
    let walk_time = args.interval * u32::try_from(args.steps.len()).unwrap_or(u32::MAX);
    for analysis in &view.record.spec.analysis {
        let to_fail = analysis.interval() * analysis.failure_limit;
        if to_fail > walk_time {
            println!(
                "{name}: analysis {} is measured every {} s and fails after {} failures ({to_fail:.0?}): the walk ({walk_time:.0?}) ends first; use a longer --interval or a shorter interval_secs",
                analysis.name, analysis.interval_secs, analysis.failure_limit
            );
        }
    }
    let mut measuring = false;
    let handler = on_interrupt as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };

    loop {
        if INTERRUPTED.load(Ordering::Relaxed) {
            return Ok(stopped(&name, color, walk.interrupted()));
        }
        let (step, number, total) = match walk.next() {
            Next::Step {
                weight,
                number,
                total,
            } => (weight, number, total),
            Next::Hold { weight } => {
                println!(
                    "{name}: shift stopped at {weight}% as asked; `bluegreen switch {color}` finishes it, `bluegreen rollback` undoes it"
                );
                return Ok(ExitCode::SUCCESS);
            }
        };
        if let Some(check) = &check
            && let Err(reason) = check.probe_pool(&view.pool(color).serving())
        {
            return fail(
                host,
                &name,
                walk.check_failed(),
                &format!("{color} failed its health check: {reason}"),
            );
        }
        // The steps probe the color themselves, every check interval.
        let options = SwitchOptions {
            force: false,
            check: false,
            gates: false,
            cause: ChangeCause::Shift,
        };
        let outcome = host.shift(Some(&name), color, step, options)?;
        let complete = walk.applied();
        println!("step {number}/{total}: {color} at {step}% of new flows");
        print_switch(&outcome);
        if complete {
            println!("{name}: shift complete, {color} is active");
            return Ok(ExitCode::SUCCESS);
        }
        let deadline = Instant::now() + args.interval;
        if !measuring {
            analyses.restart(&target, unix_now_ms());
            measuring = true;
        }
        let mut tracker = HealthTracker::default();
        let mut next_probe = Instant::now();
        // Checked until the step's end, and once at it: an analysis due
        // right then is measured before the next step.
        loop {
            if INTERRUPTED.load(Ordering::Relaxed) {
                return Ok(stopped(&name, color, walk.interrupted()));
            }
            if let Some(check) = &check
                && Instant::now() >= next_probe
            {
                next_probe = Instant::now() + check.interval();
                let result = check.probe_pool(&view.pool(color).serving());
                if tracker.observe(check, result) == Some(Health::Unhealthy) {
                    let reason = tracker.last_error.clone().unwrap_or_default();
                    return fail(
                        host,
                        &name,
                        walk.check_failed(),
                        &format!("{color} turned unhealthy at {step}%: {reason}"),
                    );
                }
            }
            if let Some(failed) = analyses.measure_due(&target, unix_now_ms()) {
                return fail(
                    host,
                    &name,
                    walk.check_failed(),
                    &format!("{color} at {step}%: {failed}"),
                );
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50).min(remaining));
        }
    }
}

fn stopped(name: &str, color: Color, at: Stopped) -> ExitCode {
    let Stopped {
        weight,
        done,
        total,
    } = at;
    println!(
        "{name}: interrupted after step {done}/{total}; {color} keeps {weight}% of new flows. `bluegreen switch {color}` finishes the shift, `bluegreen rollback` undoes it"
    );
    ExitCode::from(EXIT_INTERRUPTED)
}

/// Ends the walk after a failed check as [`Shift::check_failed`] decides.
fn fail(host: &Host, name: &str, failure: Failure, reason: &str) -> anyhow::Result<ExitCode> {
    let Failure::Retreat { from } = failure else {
        eprintln!("error: {name}: {reason}; nothing was shifted");
        return Ok(ExitCode::FAILURE);
    };
    let options = SwitchOptions {
        force: false,
        check: false,
        gates: false,
        cause: ChangeCause::Shift,
    };
    let outcome = host.switch(Some(name), SwitchTarget::Previous, options)?;
    eprintln!("error: {name}: {reason}; rolled back from {from}%");
    print_switch(&outcome);
    Ok(ExitCode::FAILURE)
}

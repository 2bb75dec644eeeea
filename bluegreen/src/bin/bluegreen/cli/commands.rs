//! Carries out a parsed command against the host.

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use bluegreen::{
    config::{Config, DataplaneOptions, LocalClients, RequestedXdpMode, ServiceSpec},
    endpoint::Color,
    health::HealthCheck,
    host::{
        BackendAction, Host, STATUS_SCHEMA_VERSION, StatusReport, SwitchOptions, SwitchOutcome,
        SwitchTarget, UpRequest,
    },
};
use bluegreen_common::ChangeCause;
use clap::CommandFactory;

use super::{
    args::{self, BackendArgs, BackendVerb, ChangeArgs, Command, PreviewAction, UpArgs},
    fleet, shadow, shift, watch,
};
use crate::output::{
    print_backend, print_preview, print_status, print_switch, print_up, print_verify,
};

/// Refuses a local change of a service that follows a fleet unless the
/// operator asked for an override, which is then logged (the daemon
/// reports the drift to the fleet).
fn guard_fleet(host: &Host, service: Option<&str>, local_override: bool) -> anyhow::Result<()> {
    let Some((service, marker)) = host.fleet_marker(service)? else {
        return Ok(());
    };
    if !local_override {
        return Err(bluegreen::Error::FleetManaged {
            service,
            host: marker.host,
            prefix: marker.prefix,
        }
        .into());
    }
    log::warn!(
        "local override of a fleet-managed service on host {}: the fleet reports this host as drifted until the next fleet change",
        marker.host
    );
    Ok(())
}

/// Starts `color` of the service if it is stopped, showing which
/// backends are still loading (at most every 5 s).
fn start(host: &Host, service: Option<&str>, color: Color) -> anyhow::Result<()> {
    let mut shown = Duration::ZERO;
    let started = host.start_color(service, color, |waiting, elapsed| {
        if elapsed >= shown {
            shown = elapsed + Duration::from_secs(5);
            let names: Vec<String> = waiting
                .iter()
                .map(|(backend, reason)| format!("{backend} ({reason})"))
                .collect();
            println!(
                "{color}: {:.0?} in, waiting for {}",
                elapsed,
                names.join(", ")
            );
        }
    })?;
    if started.ran {
        println!(
            "{}: {color} started in {:.1?} (command {:.1?}, backends ready {:.1?})",
            started.service,
            started.command + started.ready,
            started.command,
            started.ready
        );
    }
    Ok(())
}

fn switch_options(change: &ChangeArgs) -> SwitchOptions {
    if change.skip_check {
        // The library names the release gates it skips, if the service
        // has any.
        log::warn!("health check skipped on request");
    }
    SwitchOptions {
        force: change.force,
        check: !change.skip_check,
        gates: true,
        cause: ChangeCause::Operator,
    }
}

/// A change refused by a release gate: the last lines of what the gate
/// printed go to stderr before the error line, which says where the rest
/// is.
fn show_gate_output(error: &bluegreen::Error) {
    if let bluegreen::Error::GateFailed { gate, tail, .. } = error
        && !tail.is_empty()
    {
        eprintln!("{gate} output (last {} lines):", tail.len());
        for line in tail {
            eprintln!("  {line}");
        }
    }
}

/// Runs `command`; `state_dir` is the one `host` keeps its state in.
pub fn execute(host: &Host, state_dir: &Path, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Up(args) => {
            let request = up_request(args)?;
            let outcome = host.up(&request)?;
            print_up(&outcome);
        }
        Command::Switch(args) => {
            guard_fleet(
                host,
                args.change.service.as_deref(),
                args.change.local_override,
            )?;
            let options = switch_options(&args.change);
            let service = args.change.service.as_deref();
            // The active color serves already: nothing to start.
            if args.change.start && host.service_view(service)?.active != args.color {
                start(host, service, args.color)?;
            }
            let outcome = match args.weight {
                Some(weight) => host.shift(service, args.color, weight, options),
                None => host.switch(service, SwitchTarget::Color(args.color), options),
            }
            .inspect_err(show_gate_output)?;
            print_switch(&outcome);
            if let Some(seconds) = args.wait_drain {
                return wait_drain(host, &outcome, Duration::from_secs(seconds));
            }
        }
        Command::Verify(args) => {
            let report = host.verify(args.service.as_deref(), args.color)?;
            print_verify(&report);
            if !report.passed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Shift(args) => {
            guard_fleet(host, args.service.as_deref(), args.local_override)?;
            return shift::walk(host, &args);
        }
        Command::Preview { action } => preview(host, action)?,
        Command::Rollback(args) => {
            guard_fleet(
                host,
                args.change.service.as_deref(),
                args.change.local_override,
            )?;
            let service = args.change.service.as_deref();
            if args.change.start {
                let view = host.service_view(service)?;
                // Undoing a weighted shift sends nothing to a new color.
                if view.record.weight == 0 && view.previous != view.active {
                    start(host, service, view.previous)?;
                }
            }
            let outcome = host
                .switch(
                    service,
                    SwitchTarget::Previous,
                    switch_options(&args.change),
                )
                .inspect_err(show_gate_output)?;
            print_switch(&outcome);
        }
        Command::Start(args) => {
            start(host, args.service.as_deref(), args.color)?;
            let report = host.verify(args.service.as_deref(), args.color)?;
            if !report.gates.is_empty() {
                print_verify(&report);
            }
            if !report.passed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Stop(args) => {
            let name = host.stop_color(args.service.as_deref(), args.color)?;
            println!(
                "{name}: {} is stopped; `bluegreen start {}` brings it back",
                args.color, args.color
            );
        }
        Command::Hold(args) => {
            let name = host.hold(args.service.as_deref(), args.color, true)?;
            println!(
                "{name}: {} is held: the daemon will not scale it down until `bluegreen release {}`",
                args.color, args.color
            );
        }
        Command::Release(args) => {
            let name = host.hold(args.service.as_deref(), args.color, false)?;
            println!(
                "{name}: {} is released: the daemon may scale it down once it is idle, drained and out of its window",
                args.color
            );
        }
        Command::Status(args) => {
            if let Some(interval) = args.watch {
                return watch::show_live(host, args.service.as_deref(), interval, args.count);
            }
            let report = match host.status(args.service.as_deref()) {
                // A script that asks for JSON gets JSON: no interface is up.
                Err(bluegreen::Error::NothingUp) if args.json && args.service.is_none() => {
                    StatusReport {
                        schema_version: STATUS_SCHEMA_VERSION,
                        interfaces: Vec::new(),
                    }
                }
                report => report?,
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_status(&report);
            }
        }
        Command::SetBackend(args) => {
            let (service, old) =
                host.set_backend(args.service.as_deref(), args.color, args.backend)?;
            println!(
                "{service}: {} backend {old} -> {} (flows already on {old} stay there)",
                args.color, args.backend
            );
        }
        Command::Backend(args) => backend(host, args)?,
        Command::Down(args) => {
            host.down(&args.iface)?;
            println!(
                "bluegreen is down on {}: programs detached, pins and state removed",
                args.iface
            );
        }
        Command::Daemon(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(crate::daemon::serve(
                host,
                state_dir,
                &args.config,
                args.metrics,
            ))?;
        }
        Command::Fleet { action } => return fleet::execute(action),
        Command::Shadow { action } => return shadow::execute(host, action),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut args::Cli::command(),
                "bluegreen",
                &mut std::io::stdout(),
            );
        }
        Command::Man => {
            clap_mangen::Man::new(args::Cli::command())
                .render(&mut std::io::stdout())
                .context("cannot write the man page")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn up_request(args: UpArgs) -> anyhow::Result<UpRequest> {
    let (xdp_mode, dataplane, local, mut services) = match &args.config {
        Some(path) => {
            let config = Config::load(path)?;
            if let Some(interface) = &config.interface
                && *interface != args.iface
            {
                bail!(
                    "{} says interface = {interface:?} but --iface is {:?}: make them agree",
                    path.display(),
                    args.iface
                );
            }
            (
                config.xdp_mode,
                config.dataplane,
                config.local,
                config.services,
            )
        }
        None => {
            let spec = ServiceSpec {
                health: args.check.clone().map(HealthCheck::new),
                ..ServiceSpec::new(
                    args.service.clone().expect("clap requires --service"),
                    args.vip.expect("clap requires --vip"),
                    args.proto,
                    args.blue.expect("clap requires --blue"),
                    args.green.expect("clap requires --green"),
                )
            };
            (
                RequestedXdpMode::default(),
                DataplaneOptions::default(),
                LocalClients::default(),
                vec![spec],
            )
        }
    };
    if let Some(active) = args.active {
        for service in &mut services {
            service.active = active;
        }
    }
    // The command line wins over the file.
    let local = match (args.no_local, args.cgroup) {
        (true, _) => LocalClients::Off,
        (false, Some(cgroup)) => LocalClients::On {
            cgroup: Some(cgroup),
        },
        (false, None) => local,
    };
    Ok(UpRequest {
        iface: args.iface,
        xdp_mode: args.xdp_mode.unwrap_or(xdp_mode),
        dataplane,
        services,
        local,
    })
}

fn backend(host: &Host, args: BackendArgs) -> anyhow::Result<()> {
    let action = match args.action {
        BackendVerb::Add => BackendAction::Add {
            weight: args.weight,
        },
        _ if args.weight.is_some() => bail!("--weight goes with `backend add` only"),
        BackendVerb::Remove => BackendAction::Remove,
        BackendVerb::Drain => BackendAction::Drain,
        BackendVerb::Undrain => BackendAction::Undrain,
    };
    if args.skip_check {
        log::warn!("health check skipped on request");
    }
    let outcome = host.change_backend(
        args.service.as_deref(),
        args.color,
        args.backend,
        action,
        args.force,
        !args.skip_check,
    )?;
    print_backend(&outcome, args.backend, action);
    Ok(())
}

fn preview(host: &Host, action: PreviewAction) -> anyhow::Result<()> {
    match action {
        PreviewAction::Add { prefix, service } => {
            let (name, prefixes) = host.change_preview(service.as_deref(), prefix, true)?;
            println!(
                "{name}: new flows from {prefix} go to the idle color ({} preview prefixes)",
                prefixes.len()
            );
        }
        PreviewAction::Remove { prefix, service } => {
            let (name, prefixes) = host.change_preview(service.as_deref(), prefix, false)?;
            println!(
                "{name}: {prefix} removed ({} preview prefixes left)",
                prefixes.len()
            );
        }
        PreviewAction::List { service } => print_preview(&host.status(service.as_deref())?),
    }
    Ok(())
}

fn wait_drain(host: &Host, outcome: &SwitchOutcome, timeout: Duration) -> anyhow::Result<ExitCode> {
    let old = outcome.to.other();
    let mut last = None;
    let drained = host.wait_drain(Some(&outcome.service), old, timeout, |remaining, waited| {
        if last != Some(remaining) {
            println!("  draining {old}: {remaining} live flows after {waited:.1?}");
            last = Some(remaining);
        }
    })?;
    if drained {
        println!(
            "{}: {old} has drained; it can be stopped safely",
            outcome.service
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: {}: {old} still has live flows after {timeout:?}; it is NOT safe to stop yet",
            outcome.service
        );
        Ok(ExitCode::from(super::EXIT_DRAIN_TIMEOUT))
    }
}

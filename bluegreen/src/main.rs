mod daemon;
mod metrics;
mod shift;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use bluegreen::{
    config::{Config, DataplaneOptions, ServiceSpec, XdpModeArg},
    control::{StatusReport, SwitchOutcome, SwitchTarget},
    dataplane::{Host, UpOutcome, UpRequest},
    endpoint::{Color, Proto, parse_endpoint},
    health::{HealthCheck, Probe},
};
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};

/// Exit code of `switch --wait-drain` when the old color still has flows.
const EXIT_DRAIN_TIMEOUT: u8 = 3;

#[derive(Parser)]
#[command(
    name = "bluegreen",
    version,
    about = "Blue-green traffic switching in the kernel (XDP + TC), with instant rollback",
    long_about = "bluegreen steers clients of one virtual address (VIP:port) to the blue or the green \
copy of a service. An XDP program rewrites packets to the active color's backend; a TC program \
rewrites replies back to the VIP. Switching is one atomic map update: no reload, no dropped \
packet. Established connections finish on the color they started on unless the switch is forced.",
    after_help = "Examples:
  bluegreen up --iface eth0 --service chat --vip 10.0.0.1:8080 --blue 10.0.1.2:8080 --green 10.0.1.3:8080
  bluegreen switch green --wait-drain=120     # new flows to green, wait for blue to drain
  bluegreen rollback                          # back to blue, instantly
  bluegreen status --json
  bluegreen down --iface eth0"
)]
struct Cli {
    /// bpffs directory for pinned maps and links.
    #[arg(
        long,
        global = true,
        default_value = "/sys/fs/bpf/bluegreen",
        env = "BLUEGREEN_PIN_DIR"
    )]
    pin_dir: PathBuf,
    /// Directory for state files (active colors survive reboots here).
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/bluegreen",
        env = "BLUEGREEN_STATE_DIR"
    )]
    state_dir: PathBuf,
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "verbose")]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach bluegreen on an interface, or hot-upgrade it in place.
    #[command(after_help = "Examples:
  bluegreen up --iface eth0 --config /etc/bluegreen/bluegreen.toml
  bluegreen up --iface eth0 --service chat --vip 10.0.0.1:8080 --blue 10.0.1.2:8080 --green 10.0.1.3:8080
  bluegreen up --iface eth0 --service dns --proto udp --vip [fd00::53]:53 --blue [fd00::2]:53 --green [fd00::3]:53

Running `up` again on the same interface replaces the programs atomically and keeps
every map and flow (a hot upgrade). The services become exactly those given; each
keeps its live active color.")]
    Up(UpArgs),
    /// Make a color active for new flows (established flows stay unless --force).
    #[command(after_help = "Examples:
  bluegreen switch green                       # graceful: open connections finish on blue
  bluegreen switch green --wait-drain          # ... and wait (up to 300 s) until blue has no flows
  bluegreen switch green --wait-drain=60       # exit code 3 if blue still has flows after 60 s
  bluegreen switch green --force               # emergency: every connection moves to green now
  bluegreen switch green --weight 10           # 10 % of new flows to green, 90 % stay on blue")]
    Switch(SwitchArgs),
    /// Move new flows to a color in weighted steps, health-checked in between.
    #[command(after_help = "Examples:
  bluegreen shift green --steps 10,25,50,100 --interval 30s
  bluegreen shift green --steps 5,100 --interval 2m --service chat

Between steps the color's health check (if configured) runs every check interval;
a failure rolls back (weight 0, every new flow to the active color) and exits 1.
Ctrl-C stops at the current step and says where it is.")]
    Shift(ShiftArgs),
    /// Send new flows from chosen client prefixes to the idle color.
    #[command(after_help = "Examples:
  bluegreen preview add 10.20.0.0/16         # testers reach the idle color through the real VIP
  bluegreen preview add fd00:42::/64 --service chat6
  bluegreen preview list
  bluegreen preview remove 10.20.0.0/16

After a switch the roles swap: preview clients then reach the color that became idle.")]
    Preview {
        #[command(subcommand)]
        action: PreviewAction,
    },
    /// Return to the color that was active before the last switch.
    #[command(after_help = "Examples:
  bluegreen rollback
  bluegreen rollback --service chat --force")]
    Rollback(RollbackArgs),
    /// Show each service's colors, backends, counters and live flows.
    #[command(after_help = "Examples:
  bluegreen status
  bluegreen status --service chat --json | jq .interfaces[0].services[0].active")]
    Status(StatusArgs),
    /// Point one color of a service at another backend.
    #[command(after_help = "Examples:
  bluegreen set-backend green 10.0.1.4:8080
  bluegreen set-backend blue [fd00::12]:8080 --service chat6

Flows already on the old backend stay there until they end.")]
    SetBackend(SetBackendArgs),
    /// Detach bluegreen from an interface and remove its pins and state.
    #[command(after_help = "Example:
  bluegreen down --iface eth0")]
    Down(DownArgs),
    /// `up` from a config file, then stay in the foreground for systemd.
    #[command(after_help = "Examples:
  bluegreen daemon --config /etc/bluegreen/bluegreen.toml
  bluegreen daemon --config /etc/bluegreen/bluegreen.toml --metrics            # 127.0.0.1:9464
  bluegreen daemon --config /etc/bluegreen/bluegreen.toml --metrics=[::1]:9464

Runs each service's health checks, rolls back automatically where the config
asks for it, and serves Prometheus metrics on /metrics when --metrics is given.
SIGHUP reloads the config (backends, checks and timeouts; active colors are kept).
SIGTERM exits WITHOUT detaching: traffic keeps flowing while the service restarts.")]
    Daemon(DaemonArgs),
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  bluegreen completions bash > /etc/bash_completion.d/bluegreen
  bluegreen completions zsh > \"${fpath[1]}/_bluegreen\"")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(after_help = "Example:
  bluegreen man > /usr/local/share/man/man1/bluegreen.1")]
    Man,
}

#[derive(Args)]
struct UpArgs {
    /// Interface whose incoming traffic carries the VIP.
    #[arg(long)]
    iface: String,
    /// TOML file describing the services (see packaging/bluegreen.toml).
    #[arg(long, conflicts_with_all = ["service", "vip", "blue", "green", "proto"])]
    config: Option<PathBuf>,
    /// Service name (with --vip, --blue and --green instead of --config).
    #[arg(long, required_unless_present = "config")]
    service: Option<String>,
    /// Virtual address clients connect to.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_endpoint, required_unless_present = "config")]
    vip: Option<std::net::SocketAddr>,
    /// Backend of the blue color.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_endpoint, required_unless_present = "config")]
    blue: Option<std::net::SocketAddr>,
    /// Backend of the green color.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_endpoint, required_unless_present = "config")]
    green: Option<std::net::SocketAddr>,
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    proto: Proto,
    /// Color that takes new flows at first (a live or remembered color wins).
    #[arg(long, value_enum)]
    active: Option<Color>,
    /// auto: native if the driver supports it, generic otherwise.
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpModeArg>,
    /// Health check run before `switch` moves traffic: tcp or http:/PATH.
    #[arg(long, value_name = "tcp|http:/PATH", conflicts_with = "config")]
    check: Option<Probe>,
}

#[derive(Args)]
struct SwitchArgs {
    #[arg(value_enum)]
    color: Color,
    /// Needed when more than one service is up.
    #[arg(long)]
    service: Option<String>,
    /// Move established flows too (they are cut over mid-connection).
    #[arg(long)]
    force: bool,
    /// Switch even if the color fails its health check.
    #[arg(long)]
    skip_check: bool,
    /// Send only this percentage of new flows to the color (a weighted
    /// split, chosen by a hash of each flow); 100 is a full switch.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100), conflicts_with = "force")]
    weight: Option<u8>,
    /// After switching, wait until the old color has no live flows.
    #[arg(long, value_name = "SECS", num_args = 0..=1, require_equals = true, default_missing_value = "300")]
    wait_drain: Option<u64>,
}

#[derive(Args)]
pub(crate) struct ShiftArgs {
    #[arg(value_enum)]
    pub color: Color,
    /// Percentages of new flows for the color, in order (ending at 100 makes
    /// it a full switch).
    #[arg(long, value_delimiter = ',', required = true, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub steps: Vec<u8>,
    /// Time at each step before the next: e.g. 30s, 2m, 500ms.
    #[arg(long, value_parser = parse_duration)]
    pub interval: Duration,
    #[arg(long)]
    pub service: Option<String>,
}

#[derive(Subcommand)]
enum PreviewAction {
    /// Add a client prefix (ADDR/LEN).
    #[command(after_help = "Example:\n  bluegreen preview add 10.20.30.0/24 --service chat")]
    Add {
        prefix: bluegreen::endpoint::Cidr,
        #[arg(long)]
        service: Option<String>,
    },
    /// Remove a client prefix.
    #[command(after_help = "Example:\n  bluegreen preview remove 10.20.30.0/24 --service chat")]
    Remove {
        prefix: bluegreen::endpoint::Cidr,
        #[arg(long)]
        service: Option<String>,
    },
    /// List the preview prefixes of each service.
    #[command(after_help = "Example:\n  bluegreen preview list")]
    List {
        #[arg(long)]
        service: Option<String>,
    },
}

/// `500ms`, `30s`, `2m`, `1h`.
fn parse_duration(input: &str) -> Result<Duration, String> {
    let split = input
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{input:?} has no unit: write e.g. 30s, 2m or 500ms"))?;
    let (number, unit) = input.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{input:?} does not start with a number"))?;
    let millis = match unit {
        "ms" => number,
        "s" => number * 1000,
        "m" => number * 60_000,
        "h" => number * 3_600_000,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {input:?}: use ms, s, m or h"
            ));
        }
    };
    Ok(Duration::from_millis(millis))
}

#[derive(Args)]
struct RollbackArgs {
    #[arg(long)]
    service: Option<String>,
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct StatusArgs {
    #[arg(long)]
    service: Option<String>,
    /// Machine-readable output (schema in the README).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SetBackendArgs {
    #[arg(value_enum)]
    color: Color,
    #[arg(value_name = "ADDR:PORT", value_parser = parse_endpoint)]
    backend: std::net::SocketAddr,
    #[arg(long)]
    service: Option<String>,
}

#[derive(Args)]
struct DownArgs {
    #[arg(long)]
    iface: String,
}

#[derive(Args)]
struct DaemonArgs {
    #[arg(long)]
    config: PathBuf,
    /// Serve Prometheus metrics on this address (localhost by default).
    #[arg(long, value_name = "ADDR:PORT", num_args = 0..=1, require_equals = true, default_missing_value = "127.0.0.1:9464")]
    metrics: Option<SocketAddr>,
}

fn init_logging(verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
        (0, 0) => log::LevelFilter::Info,
        (1, _) => log::LevelFilter::Debug,
        (_, 0) => log::LevelFilter::Trace,
        (_, 1) => log::LevelFilter::Warn,
        _ => log::LevelFilter::Error,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format_timestamp(None)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let host = Host::new(&cli.pin_dir, &cli.state_dir);
    match run(&host, cli.command) {
        Ok(code) => code,
        Err(error) => {
            // One line: the library's messages already say what to do.
            let chain: Vec<String> = error.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn run(host: &Host, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Up(args) => {
            let request = up_request(args)?;
            let outcome = host.up(&request)?;
            print_up(&outcome);
        }
        Command::Switch(args) => {
            if args.skip_check {
                log::warn!("health check skipped on request");
            } else if host.check_color(args.service.as_deref(), args.color)? {
                println!("{} passed its health check", args.color);
            }
            let outcome = match args.weight {
                Some(weight) => host.shift(args.service.as_deref(), args.color, weight)?,
                None => host.switch(
                    args.service.as_deref(),
                    SwitchTarget::Color(args.color),
                    args.force,
                )?,
            };
            print_switch(&outcome);
            if let Some(seconds) = args.wait_drain {
                return wait_drain(host, &outcome, Duration::from_secs(seconds));
            }
        }
        Command::Shift(args) => return shift::run(host, &args),
        Command::Preview { action } => preview(host, action)?,
        Command::Rollback(args) => {
            let outcome =
                host.switch(args.service.as_deref(), SwitchTarget::Previous, args.force)?;
            print_switch(&outcome);
        }
        Command::Status(args) => {
            let report = host.status(args.service.as_deref())?;
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
            runtime.block_on(daemon::run(host, &args.config, args.metrics))?;
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "bluegreen",
                &mut std::io::stdout(),
            );
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("cannot write the man page")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn up_request(args: UpArgs) -> anyhow::Result<UpRequest> {
    let (xdp_mode, dataplane, mut services) = match &args.config {
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
            (config.xdp_mode, config.dataplane, config.services)
        }
        None => {
            let spec = ServiceSpec {
                name: args.service.clone().expect("clap requires --service"),
                vip: args.vip.expect("clap requires --vip"),
                proto: args.proto,
                blue: args.blue.expect("clap requires --blue"),
                green: args.green.expect("clap requires --green"),
                active: Color::Blue,
                health: args.check.clone().map(HealthCheck::new),
                auto_rollback: None,
            };
            (
                XdpModeArg::default(),
                DataplaneOptions::default(),
                vec![spec],
            )
        }
    };
    if let Some(active) = args.active {
        for service in &mut services {
            service.active = active;
        }
    }
    Ok(UpRequest {
        iface: args.iface,
        xdp_mode: args.xdp_mode.unwrap_or(xdp_mode),
        dataplane,
        services,
    })
}

pub(crate) fn print_up(outcome: &UpOutcome) {
    let state = &outcome.state;
    let verb = if outcome.hot_upgrade {
        "hot-upgraded (programs replaced, maps and flows kept)"
    } else {
        "up"
    };
    println!(
        "bluegreen {verb} on {} (XDP {} mode, flow table {} flows)",
        state.interface, state.xdp_mode, state.flow_capacity
    );
    for record in &state.services {
        let spec = &record.spec;
        println!(
            "  {} {} {} -> {} (blue {}, green {})",
            spec.name, spec.proto, spec.vip, spec.active, spec.blue, spec.green
        );
    }
    for note in &outcome.notes {
        println!("  note: {note}");
    }
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
        PreviewAction::List { service } => {
            for interface in host.status(service.as_deref())?.interfaces {
                for service in interface.services {
                    let idle = service.active.other();
                    if service.preview.is_empty() {
                        println!("{}: no preview prefixes", service.name);
                    } else {
                        println!("{} (preview clients reach {idle}):", service.name);
                        for prefix in service.preview {
                            println!("  {prefix}");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn print_switch(outcome: &SwitchOutcome) {
    let SwitchOutcome {
        service,
        from,
        to,
        forced,
        changed,
        elapsed,
        weight_before,
        weight,
        active_changed,
        ..
    } = outcome;
    if !changed {
        if *weight > 0 {
            println!("{service}: {to} already gets {weight}% of new flows, nothing to do");
        } else {
            println!("{service}: already {to}, nothing to do");
        }
    } else if *weight > 0 {
        println!(
            "{service}: {to} gets {weight}% of new flows ({from} keeps {}%) in {elapsed:.0?}; established flows keep their color",
            100 - weight
        );
    } else if !active_changed && *weight_before > 0 {
        println!(
            "{service}: {from} {weight_before}% -> 0%, every new flow to {to} in {elapsed:.0?}"
        );
    } else if *forced {
        println!(
            "{service}: {from} -> {to} in {elapsed:.0?} (forced: every flow follows {to} now)"
        );
    } else {
        println!(
            "{service}: {from} -> {to} in {elapsed:.0?} (graceful: established flows finish on {from})"
        );
    }
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
        Ok(ExitCode::from(EXIT_DRAIN_TIMEOUT))
    }
}

fn print_status(report: &StatusReport) {
    for interface in &report.interfaces {
        println!(
            "{}: XDP {} mode, flow table {} flows",
            interface.interface, interface.xdp_mode, interface.flow_capacity
        );
        for service in &interface.services {
            println!(
                "  {} {} {}: active {} (previous {}, generation {})",
                service.name,
                service.proto,
                service.vip,
                service.active,
                service.previous,
                service.generation
            );
            if service.weight > 0 {
                println!(
                    "    weighted: {} gets {}% of new flows",
                    service.active.other(),
                    service.weight
                );
            }
            if !service.preview.is_empty() {
                println!(
                    "    preview clients ({}) reach {}",
                    service.preview.join(", "),
                    service.active.other()
                );
            }
            for (color, status) in [(Color::Blue, &service.blue), (Color::Green, &service.green)] {
                let marker = if color == service.active { "*" } else { " " };
                println!(
                    "   {marker}{color:<5} {:<24} packets {:>10}  bytes {:>12}  new flows {:>8}  active flows {:>6} (+{} closing)",
                    status.backend,
                    status.packets,
                    status.bytes,
                    status.new_flows,
                    status.active_flows,
                    status.closing_flows
                );
            }
        }
        let passed: Vec<String> = interface
            .passed
            .iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        println!("  passed untouched: {}", passed.join(", "));
    }
}

//! The command line: every command, its arguments, and the help that
//! teaches it. Parsing only; [`super::commands`] carries them out.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use bluegreen::{
    config::{PoolSpec, RequestedXdpMode, WEIGHTS},
    endpoint::{Color, Proto, parse_endpoint},
    health::Probe,
    shadow::options::SampleShare,
};
use clap::{
    ArgAction, Args, Parser, Subcommand,
    builder::{PossibleValuesParser, TypedValueParser},
};

fn color_parser() -> impl TypedValueParser<Value = Color> {
    PossibleValuesParser::new(["blue", "green"]).try_map(|name| name.parse::<Color>())
}

fn proto_parser() -> impl TypedValueParser<Value = Proto> {
    PossibleValuesParser::new(["tcp", "udp"]).try_map(|name| name.parse::<Proto>())
}

fn xdp_mode_parser() -> impl TypedValueParser<Value = RequestedXdpMode> {
    PossibleValuesParser::new(["auto", "native", "skb"])
        .try_map(|name| name.parse::<RequestedXdpMode>())
}

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
pub(crate) struct Cli {
    /// bpffs directory for pinned maps and links.
    #[arg(
        long,
        global = true,
        default_value = "/sys/fs/bpf/bluegreen",
        env = "BLUEGREEN_PIN_DIR"
    )]
    pub pin_dir: PathBuf,
    /// Directory for state files (active colors survive reboots here).
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/bluegreen",
        env = "BLUEGREEN_STATE_DIR"
    )]
    pub state_dir: PathBuf,
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Load and attach bluegreen on an interface, or hot-upgrade it in place.
    #[command(after_help = "Examples:
  bluegreen up --iface eth0 --config /etc/bluegreen/bluegreen.toml
  bluegreen up --iface eth0 --service chat --vip 10.0.0.1:8080 --blue 10.0.1.2:8080 --green 10.0.1.3:8080
  bluegreen up --iface eth0 --service dns --proto udp --vip [fd00::53]:53 --blue [fd00::2]:53 --green [fd00::3]:53
  bluegreen up --iface eth0 --config bluegreen.toml --cgroup /sys/fs/cgroup/system.slice/gateway.service
  bluegreen up --iface eth0 --config bluegreen.toml --no-local

Running `up` again on the same interface replaces the programs atomically and keeps
every map and flow (a hot upgrade). The services become exactly those given; each
keeps its live active color.

Processes on this host (in this network namespace) that connect to a VIP are steered
too, at connect time, by the same rules: a graceful switch leaves their open
connections alone, a forced one resets them so they reconnect to the new color.")]
    Up(UpArgs),
    /// Make a color active for new flows (established flows stay unless --force).
    #[command(after_help = "Examples:
  bluegreen switch green                       # graceful: open connections finish on blue
  bluegreen switch green --wait-drain          # ... and wait (up to 300 s) until blue has no flows
  bluegreen switch green --wait-drain=60       # exit code 3 if blue still has flows after 60 s
  bluegreen switch green --force               # emergency: every connection moves to green now
  bluegreen switch green --weight 10           # 10 % of new flows to green, 90 % stay on blue

Before moving traffic, the color is checked: with the service's health check if it has
one, otherwise (TCP services) with a TCP connect to its backend. A color that fails is
refused and traffic stays where it is. First, if the service has release gates
([service.verify] commands, [service.warmup] requests), they run against the color
and a failing one refuses the switch (see `bluegreen verify --help`). --skip-check
overrides both, with a warning naming the gates it skips.")]
    Switch(SwitchArgs),
    /// Start a stopped color: its start command, then every backend ready.
    #[command(after_help = "Examples:
  bluegreen start green
  bluegreen start green --service chat

Runs the service's [service.lifecycle] start command (`{color}` and `{service}` filled
in; BLUEGREEN_SERVICE, BLUEGREEN_COLOR and BLUEGREEN_BACKENDS in its environment; killed
at start_timeout_secs), then waits until every backend of the color passes the health
check (a TCP connect without one), showing which are still loading, for at most
ready_timeout_secs. Then runs the release gates as `verify` does. Traffic never moves;
a failure records the color stopped with why. A color recorded running whose backends
answer is left alone. A started color gets a new scale-down window from now.
`switch --start` and `rollback --start` do this first.")]
    Start(ColorArgs),
    /// Stop the idle color now, as the daemon's scale-down would.
    #[command(after_help = "Examples:
  bluegreen stop blue                 # after `switch green --wait-drain`
  bluegreen stop green --service chat # a color that was never started

Runs the [service.lifecycle] stop command (killed at stop_timeout_secs) and records the
color stopped. Refused for the active color, one with a weighted share, preview
prefixes, live flows or a switch in progress to it. A switch or rollback to a stopped
color is refused until it is started (`bluegreen start`, or --start).")]
    Stop(ColorArgs),
    /// Keep a color up: the daemon never scales it down while held.
    #[command(after_help = "Examples:
  bluegreen hold blue            # during an investigation
  bluegreen release blue         # the daemon may scale it down again")]
    Hold(ColorArgs),
    /// Let the daemon scale a held color down again.
    Release(ColorArgs),
    /// Run a service's release gates against a color now, changing nothing.
    #[command(after_help = "Examples:
  bluegreen verify green
  bluegreen verify blue --service chat

Runs what `switch` and `rollback` run before moving traffic to the color, in order,
stopping at the first that fails: the [service.verify] commands, then the
[service.warmup] requests to every backend of the color that takes new flows, then
each [[service.analysis]] (a figure of the color's backends over its window, against
min/max, or max_ratio over the live color's; \"no data\" fails unless no_data = \"pass\").
An analysis of the backends' own metrics reads them first, before the commands, and
measures once window_secs have passed, so the warm-up's requests count.
Prints a report and exits 0 when every gate passes (or none is configured), 1 otherwise.

Each command runs without a shell, in its own process group (killed whole at
timeout_secs), with its output in <state-dir>/verify/SERVICE-COLOR-UNIXMS.log and
these environment variables:
  BLUEGREEN_SERVICE   the service's name
  BLUEGREEN_COLOR     the color judged (blue or green)
  BLUEGREEN_VIP       the service's VIP, ADDR:PORT
  BLUEGREEN_PROTO     tcp or udp
  BLUEGREEN_BACKENDS  the color's backends that take new flows, ADDR:PORT,ADDR:PORT...")]
    Verify(ColorArgs),
    /// Move new flows to a color in weighted steps, checked in between.
    #[command(after_help = "Examples:
  bluegreen shift green --steps 10,25,50,100 --interval 30s
  bluegreen shift green --steps 5,100 --interval 2m --service chat

Between steps the color's health check (if configured) runs every check interval,
and each [[service.analysis]] every interval_secs (the color against the active one;
no data counts as a failure unless the analysis says no_data = \"pass\"). An unhealthy
color, or an analysis failed failure_limit times, rolls back (weight 0, every new flow
to the active color) and exits 1, naming the analysis, its figures and its threshold.
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
  bluegreen rollback --service chat --force

Like a switch, a rollback first checks the color (its health check, or a TCP connect
when none is configured), after the release gates if the service has any, and refuses a
color that fails; --skip-check overrides. During a weighted shift,
rollback returns the weight to 0 (the active color never changed).")]
    Rollback(RollbackArgs),
    /// Show each service's colors, backends, counters and live flows.
    #[command(after_help = "Examples:
  bluegreen status
  bluegreen status --service chat --json | jq .interfaces[0].services[0].active
  bluegreen status --watch                 # live rates, refreshed every second until Ctrl-C
  bluegreen status --watch 5 --count 12    # every 5 s for a minute (e.g. into a log)

--watch shows per color the packets and new flows per second (from the kernel's
counters between two refreshes), the live flows, and the health check's verdict when
the service has one.")]
    Status(StatusArgs),
    /// Point a one-backend color of a service at another backend.
    #[command(after_help = "Examples:
  bluegreen set-backend green 10.0.1.4:8080
  bluegreen set-backend blue [fd00::12]:8080 --service chat6

Flows already on the old backend stay there until they end. A color with several
backends is changed one backend at a time with `bluegreen backend`.")]
    SetBackend(SetBackendArgs),
    /// Add, remove, drain or undrain one backend of a color's pool.
    #[command(after_help = "Examples:
  bluegreen backend add blue 10.0.1.5:8080              # a new replica, weight 1
  bluegreen backend add blue 10.0.1.5:8080 --weight 3   # ... or change its weight (1 to 100)
  bluegreen backend drain blue 10.0.1.2:8080            # no new flows; open ones finish there
  bluegreen backend undrain blue 10.0.1.2:8080
  bluegreen backend remove blue 10.0.1.2:8080 --service chat

Only the changed backend's share of new flows moves (consistent hashing). `remove`
moves the removed backend's open connections to the backends left at once: their
clients see a reset and reconnect; drain first and wait for `status` to show its
active_flows at 0 to avoid that. Draining or removing the last backend that takes
new flows in the active color is refused unless --force. Changes last until the
next `up` or daemon reload, which take the pools from the config.")]
    Backend(BackendArgs),
    /// Mirror a sample of real requests to the idle color, and compare the colors.
    #[command(after_help = "Examples:
  bluegreen shadow run chat --sample 5% --duration 10m    # in the foreground, Ctrl-C stops
  bluegreen shadow start chat --sample 10% --max-inflight 64   # run by the daemon
  bluegreen shadow status chat
  bluegreen shadow stop chat

The dataplane copies the client-to-VIP bytes of a sample of new flows (chosen by
the flow's hash, so a flow is copied whole or not at all) to a ring buffer; bluegreen
rebuilds each flow, replays its requests over its own connection to a backend of the
idle color (picked as the dataplane would pick it), reads and discards the answers,
and compares them with the live color's answers to the same requests: status classes,
time to first byte, total time and size. Clients only ever see the live color.
Only requests on the allow-list are replayed (default: POST /v1/completions,
POST /v1/chat/completions, POST /v1/embeddings, and any GET). Shadowing stops by
itself when its duration ends, when the idle color becomes live, or when it fails
its health check. Nothing leaves the host but the replayed requests to the idle
color; request bytes are held in memory only until replayed.")]
    Shadow {
        #[command(subcommand)]
        action: ShadowAction,
    },
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
    /// Switch, roll back or inspect a service on every host of a fleet (etcd).
    #[command(after_help = "Examples:
  bluegreen fleet switch green --etcd http://10.0.0.5:2379      # every host, all or nothing
  bluegreen fleet switch green --weight 10 --timeout 60
  bluegreen fleet rollback --service chat
  bluegreen fleet status --json

Each host's daemon (with [fleet] in its config) follows the desired state in etcd and
applies it through the same health-gated switch as `bluegreen switch`. The endpoints come
from --etcd or from the config file's [fleet] section.")]
    Fleet {
        #[command(subcommand)]
        action: FleetAction,
    },
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

#[derive(Subcommand)]
pub(crate) enum ShadowAction {
    /// Shadow a service from this process until Ctrl-C, its duration, a switch or an unhealthy idle color.
    Run(ShadowArgs),
    /// Have the daemon shadow a service (a daemon must run on its interface; see `run` otherwise).
    Start(ShadowArgs),
    /// Stop a service's shadowing and print its last figures.
    Stop {
        /// The service (optional when only one is up).
        service: Option<String>,
        /// Print the last record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the colors side by side: the live one and the idle one replayed to.
    Status {
        /// The service (all shadowed services when left out).
        service: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub(crate) struct ShadowArgs {
    /// The service (optional when only one is up).
    pub service: Option<String>,
    /// Share of new flows to copy, e.g. 5% or 0.25% [default: the config's sample, else 5%].
    #[arg(long)]
    pub sample: Option<SampleShare>,
    /// Stop after this long, e.g. 30s, 10m, 2h [default: the config's duration_secs, else until stopped].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Flows replayed at once; sampled flows beyond them are counted, not replayed [default: 256].
    #[arg(long)]
    pub max_inflight: Option<usize>,
    /// A request that may be replayed, as METHOD or "METHOD /path" (a path ending in * is a prefix); repeat for more. Replaces the config's list.
    #[arg(long = "allow", value_name = "RULE")]
    pub allow: Vec<String>,
    /// How long the idle color may take to answer one request [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    pub response_timeout: Option<Duration>,
    /// Print the record as JSON (`run`: the last one, when it stops).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub(crate) struct UpArgs {
    /// Interface whose incoming traffic carries the VIP.
    #[arg(long)]
    pub iface: String,
    /// TOML file describing the services (see packaging/bluegreen.toml).
    #[arg(long, conflicts_with_all = ["service", "vip", "blue", "green", "proto"])]
    pub config: Option<PathBuf>,
    /// Service name (with --vip, --blue and --green instead of --config).
    #[arg(long, required_unless_present = "config")]
    pub service: Option<String>,
    /// Virtual address clients connect to.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_endpoint, required_unless_present = "config")]
    pub vip: Option<std::net::SocketAddr>,
    /// Backends of the blue color, comma-separated (a pool of weight-1
    /// backends; give weights in a config file).
    #[arg(
        long,
        value_name = "ADDR:PORT[,ADDR:PORT...]",
        required_unless_present = "config"
    )]
    pub blue: Option<PoolSpec>,
    /// Backends of the green color, comma-separated.
    #[arg(
        long,
        value_name = "ADDR:PORT[,ADDR:PORT...]",
        required_unless_present = "config"
    )]
    pub green: Option<PoolSpec>,
    #[arg(long, value_parser = proto_parser(), default_value = "tcp")]
    pub proto: Proto,
    /// Color that takes new flows at first (a live or remembered color wins).
    #[arg(long, value_parser = color_parser())]
    pub active: Option<Color>,
    /// auto: native if the driver supports it, generic otherwise.
    #[arg(long, value_parser = xdp_mode_parser())]
    pub xdp_mode: Option<RequestedXdpMode>,
    /// Health check run before `switch` moves traffic: tcp or http:/PATH.
    #[arg(long, value_name = "tcp|http:/PATH", conflicts_with = "config")]
    pub check: Option<Probe>,
    /// Leave processes on this host alone: only packets arriving on
    /// --iface are steered. By default a local process (in the network
    /// namespace `up` runs in) that connects or sends to a VIP is sent to
    /// a backend of the active color at connect time, and sees the VIP as
    /// its peer (config: `local = false`).
    #[arg(long, conflicts_with = "cgroup")]
    pub no_local: bool,
    /// The cgroup v2 directory whose processes (and its descendants') are
    /// steered when they connect to a VIP; default: the cgroup v2 root
    /// from the mount table, i.e. every process (config: `cgroup = "..."`).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct SwitchArgs {
    #[arg(value_parser = color_parser())]
    pub color: Color,
    #[command(flatten)]
    pub change: ChangeArgs,
    /// Send only this percentage of new flows to the color (a weighted
    /// split, chosen by a hash of each flow); 100 is a full switch.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100), conflicts_with = "force")]
    pub weight: Option<u8>,
    /// After switching, wait until the old color has no live flows.
    #[arg(long, value_name = "SECS", num_args = 0..=1, require_equals = true, default_missing_value = "300")]
    pub wait_drain: Option<u64>,
}

#[derive(Args)]
pub(crate) struct ShiftArgs {
    #[arg(value_parser = color_parser())]
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
    /// Shift a fleet-managed service on this host alone (see `switch`).
    #[arg(long)]
    pub local_override: bool,
}

#[derive(Subcommand)]
pub(crate) enum PreviewAction {
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
pub(crate) struct RollbackArgs {
    #[command(flatten)]
    pub change: ChangeArgs,
}

#[derive(Subcommand)]
pub(crate) enum FleetAction {
    /// Move a service to a color on every live host, all or nothing.
    #[command(after_help = "Examples:
  bluegreen fleet switch green --etcd http://10.0.0.5:2379,http://10.0.0.6:2379
  bluegreen fleet switch green --service chat --timeout 120
  bluegreen fleet switch green --weight 10          # 10 % of new flows to green everywhere
  bluegreen fleet switch green --best-effort        # keep the hosts that made it

Writes the desired state in one etcd transaction (refused if another fleet change of the
service is in progress or landed since it was read), then waits until every live host
has applied it, printing each host as it does. If a host refuses (the color fails its
local health check) or does not apply it within --timeout, the previous desired state is
restored on every host and the command exits 1 naming each host and why; --best-effort
keeps the partial result instead (and still exits 1). A host whose daemon is down (its
lease expired) is not waited for: it converges when its daemon comes back.")]
    Switch(FleetSwitchArgs),
    /// Return a service to the color that served it before, on every live host.
    #[command(after_help = "Examples:
  bluegreen fleet rollback
  bluegreen fleet rollback --service chat --force

Like `fleet switch` to the previous color (ending a weighted split), all or nothing.")]
    Rollback(FleetRollbackArgs),
    /// Show every live host's applied state of every service against the desired one.
    #[command(after_help = "Examples:
  bluegreen fleet status
  bluegreen fleet status --json | jq '.hosts[] | {host, services}'

LAG is how many etcd revisions a host's applied state is behind the desired one (0: in
sync); a host refusing the desired state shows why under LAST ERROR.")]
    Status(FleetStatusArgs),
}

/// Where the fleet's etcd is.
#[derive(Args)]
pub(crate) struct FleetConnection {
    /// etcd's client URLs, comma-separated (default: the config's [fleet]
    /// endpoints).
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Config file whose [fleet] section gives the endpoints, prefix and TLS
    /// files when --etcd is not given.
    #[arg(long, default_value = "/etc/bluegreen/bluegreen.toml")]
    pub config: PathBuf,
    /// The fleet's key prefix in etcd (default: the config's, or /bluegreen).
    #[arg(long)]
    pub prefix: Option<String>,
    /// CA certificate that signed etcd's server certificate (PEM), as
    /// etcdctl's --cacert (default: the config's [fleet] ca).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client certificate
    /// authentication, with --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// What `fleet switch` and `fleet rollback` share.
#[derive(Args)]
pub(crate) struct FleetChangeArgs {
    /// Needed when the hosts serve more than one service.
    #[arg(long)]
    pub service: Option<String>,
    /// Move established flows too, on every host.
    #[arg(long)]
    pub force: bool,
    /// How long every live host has to apply the change (and, after a
    /// failure, to return).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Keep what the hosts that could apply the change applied, instead of
    /// restoring the previous state everywhere.
    #[arg(long)]
    pub best_effort: bool,
    #[command(flatten)]
    pub connection: FleetConnection,
}

#[derive(Args)]
pub(crate) struct FleetSwitchArgs {
    #[arg(value_parser = color_parser())]
    pub color: Color,
    /// Send only this percentage of new flows to the color on every host; 100
    /// is a full switch.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100), conflicts_with = "force")]
    pub weight: Option<u8>,
    #[command(flatten)]
    pub change: FleetChangeArgs,
}

#[derive(Args)]
pub(crate) struct FleetRollbackArgs {
    #[command(flatten)]
    pub change: FleetChangeArgs,
}

#[derive(Args)]
pub(crate) struct FleetStatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: FleetConnection,
}

/// What `switch` and `rollback` share: both change the active color.
#[derive(Args)]
pub(crate) struct ChangeArgs {
    /// Needed when more than one service is up.
    #[arg(long)]
    pub service: Option<String>,
    /// Move established flows too (they are cut over mid-connection).
    #[arg(long)]
    pub force: bool,
    /// Go ahead even if the color fails its health check (or, without one,
    /// refuses a TCP connection); skips the release gates too.
    #[arg(long)]
    pub skip_check: bool,
    /// Change a fleet-managed service on this host alone (an emergency: the
    /// fleet reports the host as drifted until the next fleet change).
    #[arg(long)]
    pub local_override: bool,
    /// Start the color first if it is stopped ([service.lifecycle]): its
    /// start command, then every backend ready (see `bluegreen start`).
    #[arg(long)]
    pub start: bool,
}

/// A command about one color of one service.
#[derive(Args)]
pub(crate) struct ColorArgs {
    #[arg(value_parser = color_parser())]
    pub color: Color,
    /// Needed when more than one service is up.
    #[arg(long)]
    pub service: Option<String>,
}

#[derive(Args)]
pub(crate) struct StatusArgs {
    #[arg(long)]
    pub service: Option<String>,
    /// Machine-readable output (schema in the README).
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Refresh every SECS seconds (default 1) with live rates, until Ctrl-C.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1", value_parser = parse_watch_interval)]
    pub watch: Option<Duration>,
    /// With --watch: stop after this many refreshes.
    #[arg(long, requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

/// Seconds, fractions allowed (`0.5`), between 0.1 and 3600.
fn parse_watch_interval(input: &str) -> Result<Duration, String> {
    let seconds: f64 = input
        .parse()
        .map_err(|_| format!("{input:?} is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&seconds) {
        return Err(format!("{seconds} s is outside 0.1 ..= 3600"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[derive(Args)]
pub(crate) struct SetBackendArgs {
    #[arg(value_parser = color_parser())]
    pub color: Color,
    #[arg(value_name = "ADDR:PORT", value_parser = parse_endpoint)]
    pub backend: std::net::SocketAddr,
    #[arg(long)]
    pub service: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum BackendVerb {
    Add,
    Remove,
    Drain,
    Undrain,
}

#[derive(Args)]
pub(crate) struct BackendArgs {
    #[arg(value_enum)]
    pub action: BackendVerb,
    #[arg(value_parser = color_parser())]
    pub color: Color,
    #[arg(value_name = "ADDR:PORT", value_parser = parse_endpoint)]
    pub backend: std::net::SocketAddr,
    /// With add: the backend's share of new flows relative to the others.
    #[arg(long, value_parser = clap::value_parser!(u32).range(*WEIGHTS.start() as i64..=*WEIGHTS.end() as i64))]
    pub weight: Option<u32>,
    #[arg(long)]
    pub service: Option<String>,
    /// Allow leaving the active color without a backend taking new flows.
    #[arg(long)]
    pub force: bool,
    /// Add or undrain the backend even if it fails the service's health
    /// check (or, without one, refuses a TCP connection).
    #[arg(long)]
    pub skip_check: bool,
}

#[derive(Args)]
pub(crate) struct DownArgs {
    #[arg(long)]
    pub iface: String,
}

#[derive(Args)]
pub(crate) struct DaemonArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Serve Prometheus metrics on this address (127.0.0.1:9464 when
    /// given without one).
    #[arg(long, value_name = "ADDR:PORT", num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
    pub metrics: Option<SocketAddr>,
}

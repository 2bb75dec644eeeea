use std::{net::SocketAddr, path::PathBuf};

use crate::{
    endpoint::{AddressError, Color, Proto},
    lifecycle::Phase,
    verify::Gate,
};

/// Everything that can go wrong in bluegreen's library. Each message is one
/// line that says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "bluegreen must run as root (it loads eBPF programs and attaches them): run it with sudo"
    )]
    NotRoot,
    #[error(
        "{action}: the kernel refused (operation not permitted); bluegreen needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON: run it as root or grant them to the service"
    )]
    MissingCapability { action: String },
    #[error(
        "{path} is not on a BPF filesystem: mount one with `mount -t bpf bpf /sys/fs/bpf` or pass --pin-dir on bpffs"
    )]
    BpffsNotMounted { path: PathBuf },
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error("cannot steer local clients through cgroup {path}: {reason}")]
    Cgroup { path: PathBuf, reason: String },
    #[error("interface {name} does not exist: check `ip link` for its name")]
    InterfaceNotFound { name: String },
    #[error(
        "{what} {addr} is {family}, but the VIP {vip} is not: a service's VIP and backends must share one address family"
    )]
    FamilyMismatch {
        what: String,
        addr: String,
        vip: String,
        family: &'static str,
    },
    #[error("invalid weight {0}: use 0 to 100 (the share of new flows for the color)")]
    InvalidWeight(u8),
    #[error("invalid health check {0:?}: use tcp or http:/PATH (e.g. http:/healthz)")]
    InvalidCheck(String),
    #[error(
        "service {service}: {color} ({backends}) failed its health check ({reason}); traffic stays on {active}: fix {color} or pass --skip-check"
    )]
    HealthCheckFailed {
        service: String,
        color: Color,
        /// The pool as an operator reads it.
        backends: String,
        reason: String,
        active: Color,
    },
    #[error(
        "service {service}: {color} failed its {gate} gate ({detail}){}; traffic stays on {active}: fix {color} or pass --skip-check",
        log.as_ref().map(|log| format!("; full output in {}", log.display())).unwrap_or_default()
    )]
    GateFailed {
        service: String,
        color: Color,
        gate: Gate,
        detail: String,
        /// Where the gate's whole output is.
        log: Option<PathBuf>,
        /// Its last lines, for the operator to read first.
        tail: Vec<String>,
        active: Color,
    },
    #[error(
        "service {service}: {color} is {phase}{}: start it first (`bluegreen start {color} --service {service}`, or --start on this command)",
        since(*since_unix_ms)
    )]
    ColorNotRunning {
        service: String,
        color: Color,
        phase: Phase,
        since_unix_ms: u64,
    },
    #[error("service {service}: {action} of {color} failed: {reason}; traffic stays where it was")]
    LifecycleFailed {
        service: String,
        color: Color,
        action: &'static str,
        reason: String,
    },
    #[error(
        "service {service}: {backend} failed its health check ({reason}); {color}'s pool is unchanged: start it first, or pass --skip-check"
    )]
    BackendCheckFailed {
        service: String,
        color: Color,
        backend: SocketAddr,
        reason: String,
    },
    #[error(
        "service {service}: {vip}/{proto} is already served on {iface}: a VIP belongs to one interface (replies and host-local clients would follow only one); take it off {iface} first (its config without it, or `bluegreen down --iface {iface}`)"
    )]
    VipServedElsewhere {
        service: String,
        vip: SocketAddr,
        proto: Proto,
        iface: String,
    },
    #[error("no service named {name:?}; known services: {}", known.join(", "))]
    UnknownService { name: String, known: Vec<String> },
    #[error("several services are up ({}): pick one with --service NAME", known.join(", "))]
    ServiceNotGiven { known: Vec<String> },
    #[error("bluegreen is not up: start it with `bluegreen up --iface IFACE ...`")]
    NothingUp,
    #[error("bluegreen is not up on {iface}: start it with `bluegreen up --iface {iface} ...`")]
    NotUpOn { iface: String },
    #[error(
        "service {service} is in the state file but not in the dataplane: run `bluegreen up` again"
    )]
    ServiceNotLive { service: String },
    #[error("cannot shadow {service}: {reason}")]
    ShadowRefused { service: String, reason: String },
    #[error(
        "{service} is not being shadowed: `bluegreen shadow status {service}` shows its last run"
    )]
    ShadowNotRunning { service: String },
    #[error(
        "{path} holds maps of layout {found}, but this bluegreen uses layout {expected}: run `bluegreen down --iface {iface}` with the version that created them (the state file keeps each service's active color), then `bluegreen up` again"
    )]
    LayoutMismatch {
        path: PathBuf,
        found: String,
        expected: u32,
        iface: String,
    },
    #[error(
        "pinned map {path} does not match this version ({detail}): refusing to use it; run `bluegreen down --iface {iface}` and `up` again"
    )]
    IncompatibleMap {
        path: PathBuf,
        detail: String,
        iface: String,
    },
    #[error("{file}:{line}: {field}: {message}")]
    Config {
        file: String,
        line: usize,
        field: String,
        message: String,
    },
    #[error("service {service}: {message}")]
    InvalidService { service: String, message: String },
    /// An address a service cannot use in its role; `reason` says why and
    /// what to use instead.
    #[error("service {service}: {what} {addr} {reason}")]
    UnusableAddress {
        service: String,
        what: String,
        addr: SocketAddr,
        reason: &'static str,
    },
    #[error("unknown XDP mode {0:?}: use auto, native or skb")]
    UnknownXdpMode(String),
    #[error(
        "service {service} is already {color} and has never been switched: nothing to roll back to"
    )]
    NothingToRollBack { service: String, color: Color },
    #[error(
        "state file {path} is unreadable ({reason}): fix or remove it, then run `bluegreen up` again"
    )]
    CorruptState { path: PathBuf, reason: String },
    #[error(
        "no room left for more {what} in the dataplane (every pool is written beside the live one before a change): remove unused services or backends"
    )]
    PoolSpaceExhausted { what: &'static str },
    #[error(
        "{path} {reason}, so another user could redirect what bluegreen writes there: refusing to use it; use a directory owned by root that only root can write (e.g. `install -d -m 0700 -o root DIR`), not a symbolic link"
    )]
    UnsafeDirectory { path: PathBuf, reason: String },
    #[error(
        "lock file {path} is a symbolic link, which bluegreen does not follow: remove it and run the command again"
    )]
    SymlinkedLock { path: PathBuf },
    #[error(
        "no service named {name:?}: the state file of {iface} was lost and the maps hold no names (it serves {}); run `bluegreen up --iface {iface} --config FILE` (or with the same --service flags) to restore them, or pass --service with the name shown",
        known.join(", ")
    )]
    ServiceNamesLost {
        name: String,
        iface: String,
        known: Vec<String>,
    },
    #[error(
        "pinned map {path} is missing (removed by hand?); the programs still attached keep steering with it: run `bluegreen up --iface {iface} ...` to pin it again, or `bluegreen down --iface {iface}`"
    )]
    MapPinMissing { path: PathBuf, iface: String },
    #[error(
        "{iface} has no shadow capture maps ({path} is missing): the programs there predate shadow traffic; run `bluegreen up --iface {iface} ...` (a hot upgrade: traffic keeps flowing) to add them"
    )]
    ShadowMapsMissing { path: PathBuf, iface: String },
    #[error(
        "interface {iface} does not exist (deleted while bluegreen was up), so nothing is steered: re-create it and run `bluegreen up --iface {iface} ...` to attach again (colors are kept), or `bluegreen down --iface {iface}`"
    )]
    InterfaceGone { iface: String },
    #[error(
        "bluegreen is not attached to {iface} ({detail}), so a change would not reach clients: run `bluegreen up --iface {iface} ...` to attach again (colors are kept)"
    )]
    NotAttached { iface: String, detail: String },
    /// etcd's error reduced to what happened (gRPC's own rendering of it
    /// runs to several lines of debug output).
    #[error("{action}: {reason} (is etcd running and reachable there?)")]
    Etcd { action: String, reason: String },
    /// A TLS file, or the handshake with etcd, says what is wrong.
    #[error("etcd TLS: {reason}")]
    FleetTls { reason: String },
    #[error(
        "fleet host name {host} is registered by another running daemon ({owner}, etcd lease {lease:x}): give each host its own name with `host = \"...\"` in [fleet] (it defaults to the hostname); see `bluegreen fleet status`"
    )]
    FleetHostTaken {
        host: String,
        lease: i64,
        owner: String,
    },
    #[error(
        "a fleet change of {service} is already in progress ({holder}): wait for it to finish (see `bluegreen fleet status`), then run the command again"
    )]
    FleetBusy { service: String, holder: String },
    #[error(
        "another fleet change of {service} landed first: check `bluegreen fleet status`, then run the command again"
    )]
    FleetRaced { service: String },
    #[error(
        "service {service} is managed by the fleet (host {host} of {prefix}): use `bluegreen fleet switch` or `bluegreen fleet rollback`; in an emergency, --local-override changes this host alone (the fleet is told)"
    )]
    FleetManaged {
        service: String,
        host: String,
        prefix: String,
    },
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{action}: {source}")]
    Ebpf {
        action: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let action = action.into();
        move |source| Error::Io { action, source }
    }

    pub fn etcd(action: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> Error {
        let action = action.into();
        move |error| {
            // The gRPC status's message, then its innermost cause (say,
            // "Connection refused"), which says the most.
            let mut reason = match &error {
                etcd_client::Error::GRpcStatus(status) => status.message().to_owned(),
                other => other.to_string(),
            };
            let mut cause: Option<&(dyn std::error::Error + 'static)> =
                std::error::Error::source(&error);
            let mut innermost = None;
            while let Some(next) = cause {
                innermost = Some(next);
                cause = next.source();
            }
            if let Some(innermost) = innermost.map(ToString::to_string)
                && !reason.contains(&innermost)
            {
                reason = if reason.is_empty() {
                    innermost
                } else {
                    format!("{reason}: {innermost}")
                };
            }
            Error::Etcd { action, reason }
        }
    }

    /// Wraps an eBPF-side failure; a permission refusal anywhere in its
    /// chain becomes [`Error::MissingCapability`], which says what to fix.
    pub fn ebpf<E: std::error::Error + Send + Sync + 'static>(
        action: impl Into<String>,
    ) -> impl FnOnce(E) -> Error {
        let action = action.into();
        move |source| {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&source);
            while let Some(error) = cause {
                if let Some(io) = error.downcast_ref::<std::io::Error>()
                    && io.kind() == std::io::ErrorKind::PermissionDenied
                    && io.raw_os_error() == Some(libc::EPERM)
                {
                    return Error::MissingCapability { action };
                }
                cause = error.source();
            }
            Error::Ebpf {
                action,
                source: Box::new(source),
            }
        }
    }
}

/// ` since HH:MM:SS UTC` for a lifecycle phase entered at `unix_ms`
/// (nothing when unknown).
fn since(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return String::new();
    }
    format!(" since {}", crate::clock::utc_time_of_day(unix_ms))
}

//! Reading the TOML file one section at a time. Each raw table mirrors the
//! file; each parser turns one into its validated type, or into an error
//! that names the file, the line and the field.

use std::{
    fmt::Display,
    ops::{Range, RangeInclusive},
    path::PathBuf,
    time::Duration,
};

use bluegreen_common::{MAX_SERVICES, Timeouts};
use serde::Deserialize;
use toml::Spanned;

use super::{
    AutoRollback, Config, DEFAULT_FLEET_PREFIX, DEFAULT_LEASE_TTL_SECS, DataplaneOptions,
    FleetConfig, FleetTls, LocalClients, MAX_FLOW_CAPACITY, MIN_FLOW_CAPACITY, RequestedXdpMode,
    ServiceSpec, pool,
    validate::{ServiceField, is_label, validate_name},
};
use crate::{
    endpoint::{Color, parse_endpoint},
    error::{Error, Result},
    health::{HealthCheck, Probe},
    lifecycle::Lifecycle,
    load::LoadCheck,
    shadow::{
        http::AllowList,
        options::{ShadowConfig, ShadowOptions},
    },
    verify::{
        Analysis, CommandGate, Figure, Method, NoData, ShadowFigure, Source as AnalysisSource,
        Threshold, Warmup,
    },
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: Option<Spanned<String>>,
    xdp_mode: Option<Spanned<String>>,
    local: Option<Spanned<bool>>,
    cgroup: Option<Spanned<String>>,
    dataplane: Option<RawDataplane>,
    fleet: Option<RawFleet>,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    flow_capacity: Option<Spanned<u32>>,
    tcp_idle_timeout_secs: Option<Spanned<u64>>,
    tcp_closing_timeout_secs: Option<Spanned<u64>>,
    udp_idle_timeout_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    endpoints: Spanned<Vec<String>>,
    host: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    lease_ttl_secs: Option<Spanned<u64>>,
    ca: Option<Spanned<PathBuf>>,
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    vip: Spanned<String>,
    proto: Option<Spanned<String>>,
    blue: Spanned<toml::Value>,
    green: Spanned<toml::Value>,
    active: Option<Spanned<String>>,
    health: Option<Spanned<RawHealth>>,
    auto_rollback: Option<Spanned<RawAutoRollback>>,
    load: Option<Spanned<RawLoad>>,
    verify: Option<Spanned<RawVerify>>,
    warmup: Option<Spanned<RawWarmup>>,
    #[serde(default)]
    analysis: Vec<Spanned<RawAnalysis>>,
    lifecycle: Option<Spanned<RawLifecycle>>,
    shadow: Option<Spanned<RawShadow>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    enabled: Option<bool>,
    sample: Option<String>,
    duration_secs: Option<u64>,
    max_inflight: Option<usize>,
    allow: Option<Vec<String>>,
    response_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_buffered_mib: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifecycle {
    start: Vec<String>,
    stop: Vec<String>,
    start_timeout_secs: Option<u64>,
    ready_timeout_secs: Option<u64>,
    stop_timeout_secs: Option<u64>,
    scale_down_after_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnalysis {
    name: String,
    source: String,
    prometheus: Option<String>,
    query: Option<String>,
    kind: Option<String>,
    histogram: Option<String>,
    quantile: Option<f64>,
    counter: Option<String>,
    status_label: Option<String>,
    path: Option<String>,
    port: Option<u16>,
    figure: Option<String>,
    min: Option<f64>,
    max: Option<f64>,
    max_ratio: Option<f64>,
    window_secs: Option<u64>,
    interval_secs: Option<u64>,
    failure_limit: Option<u32>,
    no_data: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    commands: Vec<Vec<String>>,
    timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarmup {
    requests: u32,
    method: Option<String>,
    path: String,
    body: Option<String>,
    expect_status: Option<u16>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: String,
    path: Option<String>,
    port: Option<u16>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    healthy_threshold: Option<u32>,
    unhealthy_threshold: Option<u32>,
    min_healthy: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    metric: Option<String>,
    path: Option<String>,
    port: Option<u16>,
    interval_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAutoRollback {
    window_secs: Option<u64>,
    mode: Option<String>,
    analysis: Option<bool>,
}

/// The text being parsed, to turn a byte span into `file:line`.
struct Source<'a> {
    text: &'a str,
    file: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Range<usize>, field: impl Display, message: impl Display) -> Error {
        let before = &self.text[..span.start.min(self.text.len())];
        Error::Config {
            file: self.file.to_owned(),
            line: before.matches('\n').count() + 1,
            field: field.to_string(),
            message: message.to_string(),
        }
    }

    /// Reads a value with `read`, blaming any error on the value's line.
    fn read<V, T, E: Display>(
        &self,
        value: &Spanned<V>,
        field: impl Display,
        read: impl FnOnce(&V) -> Result<T, E>,
    ) -> Result<T> {
        read(value.get_ref()).map_err(|error| self.error(value.span(), field, error))
    }

    /// [`Source::read`] for a key that may be left out.
    fn read_opt<V, T, E: Display>(
        &self,
        value: &Option<Spanned<V>>,
        field: impl Display,
        read: impl FnOnce(&V) -> Result<T, E>,
    ) -> Result<Option<T>> {
        value
            .as_ref()
            .map(|value| self.read(value, field, read))
            .transpose()
    }
}

/// The whole file: the top-level keys, `[dataplane]`, then every service.
pub(super) fn config(text: &str, file: &str) -> Result<Config> {
    let source = Source { text, file };
    let raw: RawConfig = toml::from_str(text)
        .map_err(|error| source.error(error.span().unwrap_or(0..0), "toml", error.message()))?;
    let xdp_mode: Option<RequestedXdpMode> =
        source.read_opt(&raw.xdp_mode, "xdp_mode", |mode| mode.parse())?;
    let dataplane = match &raw.dataplane {
        None => DataplaneOptions::default(),
        Some(dataplane) => dataplane.options(&source)?,
    };
    let fleet = raw
        .fleet
        .as_ref()
        .map(|fleet| fleet.settings(&source))
        .transpose()?;
    let enabled = raw.local.as_ref().is_none_or(|local| *local.get_ref());
    let local = match (&raw.cgroup, enabled) {
        (Some(cgroup), false) => {
            return Err(source.error(
                cgroup.span(),
                "cgroup",
                "local = false steers no local client: remove cgroup or set local = true",
            ));
        }
        (cgroup, true) => LocalClients::On {
            cgroup: cgroup
                .as_ref()
                .map(|cgroup| PathBuf::from(cgroup.get_ref())),
        },
        (None, false) => LocalClients::Off,
    };
    Ok(Config {
        interface: raw.interface.map(Spanned::into_inner),
        xdp_mode: xdp_mode.unwrap_or_default(),
        local,
        dataplane,
        services: services(&source, &raw.services)?,
        fleet,
    })
}

/// A file read for its `[fleet]` alone: the other tables are a host's
/// business, not the fleet commands'.
#[derive(Deserialize)]
struct RawFleetOnly {
    fleet: Option<RawFleet>,
}

/// The `[fleet]` section of a file that may hold nothing else.
pub(super) fn fleet_only(text: &str, file: &str) -> Result<Option<FleetConfig>> {
    let source = Source { text, file };
    let raw: RawFleetOnly = toml::from_str(text)
        .map_err(|error| source.error(error.span().unwrap_or(0..0), "toml", error.message()))?;
    raw.fleet
        .as_ref()
        .map(|fleet| fleet.settings(&source))
        .transpose()
}

/// A fleet host's name: what `PREFIX/v1/hosts/NAME` and `fleet status`
/// show.
pub fn validate_fleet_name(name: &str) -> Result<(), String> {
    if is_label(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not 1 to 64 letters, digits, '-', '_' and '.'"
        ))
    }
}

/// The fleet's key prefix: an absolute etcd key path without a trailing
/// slash, so that `PREFIX/v1/...` has one separator each.
pub fn validate_fleet_prefix(prefix: &str) -> Result<(), String> {
    let parts_ok = prefix
        .strip_prefix('/')
        .is_some_and(|rest| rest.split('/').all(is_label));
    if parts_ok {
        Ok(())
    } else {
        Err(format!(
            "{prefix:?} is not a key path like /bluegreen or /prod/bluegreen (no trailing slash)"
        ))
    }
}

/// The default fleet host name: the kernel's hostname.
fn hostname() -> Result<String, String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|error| format!("cannot read the hostname ({error}): set host = \"NAME\""))?;
    let name = name.trim().to_owned();
    validate_fleet_name(&name)
        .map_err(|error| format!("the hostname {error}: set host = \"NAME\""))?;
    Ok(name)
}

/// 1 s to 1 hour.
const LEASE_TTL_SECS: RangeInclusive<u64> = 1..=3600;

impl RawFleet {
    /// `[fleet]`: endpoints required, everything else defaulted.
    fn settings(&self, source: &Source) -> Result<FleetConfig> {
        let endpoints = source.read(&self.endpoints, "fleet.endpoints", |endpoints| {
            if endpoints.is_empty() {
                return Err(
                    "no endpoint: list etcd's client URLs, e.g. [\"http://10.0.0.5:2379\"]"
                        .to_owned(),
                );
            }
            match endpoints
                .iter()
                .find(|url| !(url.starts_with("http://") || url.starts_with("https://")))
            {
                Some(url) => Err(format!("{url:?} is not an http:// or https:// URL")),
                None => Ok(endpoints.clone()),
            }
        })?;
        let host = match &self.host {
            Some(host) => source.read(host, "fleet.host", |name| {
                validate_fleet_name(name).map(|()| name.clone())
            })?,
            None => hostname()
                .map_err(|error| source.error(self.endpoints.span(), "fleet.host", error))?,
        };
        let prefix = source
            .read_opt(&self.prefix, "fleet.prefix", |prefix| {
                validate_fleet_prefix(prefix).map(|()| prefix.clone())
            })?
            .unwrap_or_else(|| DEFAULT_FLEET_PREFIX.to_owned());
        let lease_ttl_secs = source
            .read_opt(&self.lease_ttl_secs, "fleet.lease_ttl_secs", |&ttl| {
                if LEASE_TTL_SECS.contains(&ttl) {
                    Ok(ttl)
                } else {
                    Err(format!("{ttl} s is outside 1 ..= 3600 s"))
                }
            })?
            .unwrap_or(DEFAULT_LEASE_TTL_SECS);
        let tls = FleetTls {
            ca: self.ca.as_ref().map(|ca| ca.get_ref().clone()),
            cert: self.cert.as_ref().map(|cert| cert.get_ref().clone()),
            key: self.key.as_ref().map(|key| key.get_ref().clone()),
        };
        // A certificate without its key (or the reverse) cannot
        // authenticate: refused here rather than at the first connection.
        if tls.cert.is_some() != tls.key.is_some() {
            let span = self
                .cert
                .as_ref()
                .or(self.key.as_ref())
                .map(Spanned::span)
                .unwrap_or_else(|| self.endpoints.span());
            return Err(source.error(
                span,
                "fleet.cert",
                "cert and key go together (the client certificate and its private key)",
            ));
        }
        Ok(FleetConfig {
            endpoints,
            host,
            prefix,
            lease_ttl_secs,
            tls,
        })
    }
}

/// From 1 s to 7 days.
const TIMEOUT_SECS: RangeInclusive<u64> = 1..=7 * 24 * 3600;

impl RawDataplane {
    /// `[dataplane]`: every key left out keeps its default.
    fn options(&self, source: &Source) -> Result<DataplaneOptions> {
        let defaults = DataplaneOptions::default();
        let timeout = |value: &Option<Spanned<u64>>, field: &str| {
            source.read_opt(value, field, |&seconds| {
                if TIMEOUT_SECS.contains(&seconds) {
                    Ok(seconds)
                } else {
                    Err(format!("{seconds} s is outside 1 s ..= 7 days"))
                }
            })
        };
        let flow_capacity = source.read_opt(
            &self.flow_capacity,
            "dataplane.flow_capacity",
            |&capacity| {
                if (MIN_FLOW_CAPACITY..=MAX_FLOW_CAPACITY).contains(&capacity) {
                    Ok(capacity)
                } else {
                    Err(format!(
                        "{capacity} is outside {MIN_FLOW_CAPACITY}..={MAX_FLOW_CAPACITY}"
                    ))
                }
            },
        )?;
        Ok(DataplaneOptions {
            flow_capacity: flow_capacity.unwrap_or(defaults.flow_capacity),
            timeouts: Timeouts {
                tcp_idle_secs: timeout(
                    &self.tcp_idle_timeout_secs,
                    "dataplane.tcp_idle_timeout_secs",
                )?
                .unwrap_or(defaults.timeouts.tcp_idle_secs),
                tcp_closing_secs: timeout(
                    &self.tcp_closing_timeout_secs,
                    "dataplane.tcp_closing_timeout_secs",
                )?
                .unwrap_or(defaults.timeouts.tcp_closing_secs),
                udp_idle_secs: timeout(
                    &self.udp_idle_timeout_secs,
                    "dataplane.udp_idle_timeout_secs",
                )?
                .unwrap_or(defaults.timeouts.udp_idle_secs),
            },
        })
    }
}

/// Every `[[service]]`: each valid on its own, and none taking the name or
/// the VIP of an earlier one.
fn services(source: &Source, tables: &[RawService]) -> Result<Vec<ServiceSpec>> {
    if tables.is_empty() {
        return Err(source.error(
            0..0,
            "service",
            "no [[service]] table: describe at least one service",
        ));
    }
    if tables.len() > MAX_SERVICES as usize {
        return Err(source.error(
            0..0,
            "service",
            format!("{} services, at most {MAX_SERVICES}", tables.len()),
        ));
    }
    let mut services: Vec<ServiceSpec> = Vec::with_capacity(tables.len());
    for (index, raw) in tables.iter().enumerate() {
        let table = ServiceTable { source, index, raw };
        let spec = table.spec()?;
        if let Some(earlier) = services.iter().find(|other| other.name == spec.name) {
            return Err(table.error(
                ServiceField::Name,
                format!("{:?} is used twice", earlier.name),
            ));
        }
        if let Some(earlier) = services
            .iter()
            .find(|other| other.vip == spec.vip && other.proto == spec.proto)
        {
            return Err(table.error(
                ServiceField::Vip,
                format!(
                    "{} {} is already service {:?}",
                    spec.proto, spec.vip, earlier.name
                ),
            ));
        }
        for color in Color::BOTH {
            let shared = spec.backends(color).addrs().find_map(|addr| {
                services
                    .iter()
                    .find(|other| other.proto == spec.proto && other.serves(addr))
                    .map(|other| (addr, other))
            });
            if let Some((addr, other)) = shared {
                return Err(table.error(
                    color.into(),
                    format!(
                        "{addr} is already a backend of service {:?}: a backend serves one {} service (its replies are matched to their VIP by its address)",
                        other.name, spec.proto
                    ),
                ));
            }
        }
        services.push(spec);
    }
    Ok(services)
}

/// One `[[service]]` table and where it sits, for its errors.
struct ServiceTable<'a> {
    source: &'a Source<'a>,
    index: usize,
    raw: &'a RawService,
}

impl ServiceTable<'_> {
    fn spec(&self) -> Result<ServiceSpec> {
        let raw = self.raw;
        let endpoint = |text: &String| parse_endpoint(text);
        let spec = ServiceSpec {
            name: self.read(ServiceField::Name, &raw.name, |name| {
                validate_name(name).map(|()| name.clone())
            })?,
            vip: self.read(ServiceField::Vip, &raw.vip, endpoint)?,
            proto: self
                .read_opt(ServiceField::Proto, &raw.proto, |proto| proto.parse())?
                .unwrap_or_default(),
            blue: self.read(ServiceField::Blue, &raw.blue, pool::from_toml)?,
            green: self.read(ServiceField::Green, &raw.green, pool::from_toml)?,
            active: self
                .read_opt(ServiceField::Active, &raw.active, |active| active.parse())?
                .unwrap_or(Color::Blue),
            health: self.read_opt(ServiceField::Health, &raw.health, RawHealth::check)?,
            auto_rollback: self.read_opt(
                ServiceField::AutoRollback,
                &raw.auto_rollback,
                RawAutoRollback::settings,
            )?,
            load: self.read_opt(ServiceField::Load, &raw.load, RawLoad::check)?,
            verify: self.read_opt(ServiceField::Verify, &raw.verify, RawVerify::gate)?,
            warmup: self.read_opt(ServiceField::Warmup, &raw.warmup, RawWarmup::gate)?,
            analysis: raw
                .analysis
                .iter()
                .enumerate()
                .map(|(at, analysis)| {
                    let key = format!("{}[{at}]", self.key(ServiceField::Analysis));
                    self.source.read(analysis, key, RawAnalysis::analysis)
                })
                .collect::<Result<_>>()?,
            lifecycle: self.read_opt(
                ServiceField::Lifecycle,
                &raw.lifecycle,
                RawLifecycle::settings,
            )?,
            shadow: self.read_opt(ServiceField::Shadow, &raw.shadow, RawShadow::settings)?,
        };
        spec.validate()
            .map_err(|invalid| self.error(invalid.field, invalid.error))?;
        Ok(spec)
    }

    fn read<V, T, E: Display>(
        &self,
        field: ServiceField,
        value: &Spanned<V>,
        read: impl FnOnce(&V) -> Result<T, E>,
    ) -> Result<T> {
        self.source.read(value, self.key(field), read)
    }

    fn read_opt<V, T, E: Display>(
        &self,
        field: ServiceField,
        value: &Option<Spanned<V>>,
        read: impl FnOnce(&V) -> Result<T, E>,
    ) -> Result<Option<T>> {
        self.source.read_opt(value, self.key(field), read)
    }

    fn key(&self, field: ServiceField) -> String {
        format!("service[{}].{field}", self.index)
    }

    fn error(&self, field: ServiceField, message: impl Display) -> Error {
        self.source
            .error(self.span(field), self.key(field), message)
    }

    fn span(&self, field: ServiceField) -> Range<usize> {
        let raw = self.raw;
        // A key left out has no line of its own: blame the table's name.
        let or_name = |span: Option<Range<usize>>| span.unwrap_or_else(|| raw.name.span());
        match field {
            ServiceField::Name => raw.name.span(),
            ServiceField::Vip => raw.vip.span(),
            ServiceField::Proto => or_name(raw.proto.as_ref().map(Spanned::span)),
            ServiceField::Blue => raw.blue.span(),
            ServiceField::Green => raw.green.span(),
            ServiceField::Active => or_name(raw.active.as_ref().map(Spanned::span)),
            ServiceField::Health => or_name(raw.health.as_ref().map(Spanned::span)),
            ServiceField::AutoRollback => or_name(raw.auto_rollback.as_ref().map(Spanned::span)),
            ServiceField::Load => or_name(raw.load.as_ref().map(Spanned::span)),
            ServiceField::Verify => or_name(raw.verify.as_ref().map(Spanned::span)),
            ServiceField::Warmup => or_name(raw.warmup.as_ref().map(Spanned::span)),
            ServiceField::Analysis => or_name(raw.analysis.first().map(Spanned::span)),
            ServiceField::Lifecycle => or_name(raw.lifecycle.as_ref().map(Spanned::span)),
            ServiceField::Shadow => or_name(raw.shadow.as_ref().map(Spanned::span)),
        }
    }
}

impl RawHealth {
    /// `[service.health]`: the probe and its timing, defaults filled in.
    fn check(&self) -> Result<HealthCheck, String> {
        let probe = match (self.kind.as_str(), &self.path) {
            ("tcp", None) => Probe::Tcp,
            ("tcp", Some(_)) => return Err("a tcp check takes no path".to_owned()),
            ("http", path) => Probe::Http {
                path: path.clone().unwrap_or_else(|| "/".to_owned()),
            },
            (other, _) => return Err(format!("kind {other:?} is not tcp or http")),
        };
        let defaults = HealthCheck::new(probe);
        let check = HealthCheck {
            port: self.port,
            interval_ms: self.interval_ms.unwrap_or(defaults.interval_ms),
            timeout_ms: self.timeout_ms.unwrap_or(defaults.timeout_ms),
            healthy_threshold: self.healthy_threshold.unwrap_or(defaults.healthy_threshold),
            unhealthy_threshold: self
                .unhealthy_threshold
                .unwrap_or(defaults.unhealthy_threshold),
            min_healthy: self.min_healthy.unwrap_or(defaults.min_healthy),
            ..defaults
        };
        check.validate()?;
        Ok(check)
    }
}

impl RawLoad {
    /// `[service.load]`: what to scrape and how often, defaults filled in.
    fn check(&self) -> Result<LoadCheck, String> {
        let defaults = LoadCheck::default();
        let check = LoadCheck {
            metric: self.metric.clone().unwrap_or(defaults.metric),
            path: self.path.clone().unwrap_or(defaults.path),
            port: self.port,
            interval_ms: self.interval_ms.unwrap_or(defaults.interval_ms),
        };
        check.validate()?;
        Ok(check)
    }
}

impl RawVerify {
    /// `[service.verify]`: the commands, and a 600 s timeout unless told.
    fn gate(&self) -> Result<CommandGate, String> {
        let gate = CommandGate {
            commands: self.commands.clone(),
            timeout_secs: self
                .timeout_secs
                .unwrap_or(CommandGate::DEFAULT_TIMEOUT_SECS),
        };
        gate.validate()?;
        Ok(gate)
    }
}

impl RawWarmup {
    /// `[service.warmup]`: a GET expecting 200 unless told otherwise.
    fn gate(&self) -> Result<Warmup, String> {
        let warmup = Warmup {
            requests: self.requests,
            method: self.method.as_deref().unwrap_or("GET").parse::<Method>()?,
            path: self.path.clone(),
            body: self.body.clone(),
            expect_status: self.expect_status.unwrap_or(Warmup::DEFAULT_EXPECT_STATUS),
            timeout_ms: self.timeout_ms.unwrap_or(Warmup::DEFAULT_TIMEOUT_MS),
        };
        warmup.validate()?;
        Ok(warmup)
    }
}

impl RawAutoRollback {
    /// `[service.auto_rollback]`: graceful within 5 minutes unless told.
    fn settings(&self) -> Result<AutoRollback, String> {
        let force = match self.mode.as_deref() {
            None | Some("graceful") => false,
            Some("forced") => true,
            Some(other) => return Err(format!("mode {other:?} is not graceful or forced")),
        };
        Ok(AutoRollback {
            window_secs: self.window_secs.unwrap_or(300),
            force,
            analysis: self.analysis.unwrap_or(false),
        })
    }
}

impl RawLifecycle {
    /// `[service.lifecycle]`: the commands, default timeouts, and no
    /// scale-down unless asked.
    fn settings(&self) -> Result<Lifecycle, String> {
        let lifecycle = Lifecycle {
            start: self.start.clone(),
            stop: self.stop.clone(),
            start_timeout_secs: self
                .start_timeout_secs
                .unwrap_or(Lifecycle::DEFAULT_START_TIMEOUT_SECS),
            ready_timeout_secs: self
                .ready_timeout_secs
                .unwrap_or(Lifecycle::DEFAULT_READY_TIMEOUT_SECS),
            stop_timeout_secs: self
                .stop_timeout_secs
                .unwrap_or(Lifecycle::DEFAULT_STOP_TIMEOUT_SECS),
            scale_down_after_secs: self.scale_down_after_secs,
        };
        lifecycle.validate()?;
        Ok(lifecycle)
    }
}

impl RawShadow {
    /// `[service.shadow]`: off unless `enabled`, and the defaults of
    /// `shadow start` and `shadow run` for this service.
    fn settings(&self) -> Result<ShadowConfig, String> {
        let sample = match &self.sample {
            Some(sample) => sample.parse()?,
            None => ShadowConfig::DEFAULT_SAMPLE,
        };
        let defaults = ShadowOptions::new(sample);
        let allow = match &self.allow {
            Some(rules) => AllowList::parse(rules).map_err(|error| error.to_string())?,
            None => defaults.allow.clone(),
        };
        let seconds = |value: Option<u64>, default: Duration, name: &str| match value {
            Some(0) => Err(format!("{name} must be at least 1")),
            Some(secs) => Ok(Duration::from_secs(secs)),
            None => Ok(default),
        };
        let options = ShadowOptions {
            sample,
            duration: self
                .duration_secs
                .map(|secs| seconds(Some(secs), Duration::ZERO, "duration_secs"))
                .transpose()?,
            max_inflight: self.max_inflight.unwrap_or(defaults.max_inflight),
            allow,
            response_timeout: seconds(
                self.response_timeout_secs,
                defaults.response_timeout,
                "response_timeout_secs",
            )?,
            idle_timeout: seconds(
                self.idle_timeout_secs,
                defaults.idle_timeout,
                "idle_timeout_secs",
            )?,
            max_buffered_bytes: match self.max_buffered_mib {
                Some(mib) => mib.checked_mul(1 << 20).ok_or_else(|| {
                    format!("max_buffered_mib {mib} is more memory than there is")
                })?,
                None => defaults.max_buffered_bytes,
            },
        };
        options.validate()?;
        Ok(ShadowConfig {
            enabled: self.enabled.unwrap_or(false),
            settings: options.to_request(),
        })
    }
}

impl RawAnalysis {
    /// A `[[service.analysis]]` table, defaults filled in: the backends'
    /// own metrics with vLLM's names unless told otherwise.
    fn analysis(&self) -> Result<Analysis, String> {
        let backend_keys = [
            ("kind", self.kind.is_some()),
            ("histogram", self.histogram.is_some()),
            ("quantile", self.quantile.is_some()),
            ("counter", self.counter.is_some()),
            ("status_label", self.status_label.is_some()),
            ("path", self.path.is_some()),
            ("port", self.port.is_some()),
        ];
        if self.figure.is_some() && self.source != "shadow" {
            return Err("figure is for source = \"shadow\"".to_owned());
        }
        let source = match self.source.as_str() {
            "shadow" => {
                if let Some((key, _)) = backend_keys.iter().find(|(_, given)| *given) {
                    return Err(format!(
                        "{key} is for source = \"backends\"; a shadow analysis names its figure"
                    ));
                }
                if self.prometheus.is_some() || self.query.is_some() {
                    return Err("prometheus and query are for source = \"prometheus\"".to_owned());
                }
                let figure = self.figure.as_deref().ok_or_else(|| {
                    format!(
                        "source = \"shadow\" needs a figure: {}",
                        ShadowFigure::NAMES.join(", ")
                    )
                })?;
                AnalysisSource::Shadow {
                    figure: ShadowFigure::parse(figure)?,
                }
            }
            "prometheus" => {
                if let Some((key, _)) = backend_keys.iter().find(|(_, given)| *given) {
                    return Err(format!(
                        "{key} is for source = \"backends\"; a prometheus analysis says everything in its query"
                    ));
                }
                AnalysisSource::Prometheus {
                    url: self
                        .prometheus
                        .clone()
                        .ok_or("source = \"prometheus\" needs prometheus = \"http://HOST:9090\"")?,
                    query: self
                        .query
                        .clone()
                        .ok_or("source = \"prometheus\" needs a query")?,
                }
            }
            "backends" => {
                if self.prometheus.is_some() || self.query.is_some() {
                    return Err("prometheus and query are for source = \"prometheus\"".to_owned());
                }
                AnalysisSource::Backends {
                    figure: self.figure()?,
                    path: self
                        .path
                        .clone()
                        .unwrap_or_else(|| Analysis::DEFAULT_PATH.to_owned()),
                    port: self.port,
                }
            }
            other => {
                return Err(format!(
                    "source {other:?} is not \"backends\" (their own /metrics), \"prometheus\" or \"shadow\" (the last shadowing run)"
                ));
            }
        };
        let no_data = match self.no_data.as_deref() {
            None => None,
            Some("pass") => Some(NoData::Pass),
            Some("fail") => Some(NoData::Fail),
            Some(other) => return Err(format!("no_data {other:?} is not \"pass\" or \"fail\"")),
        };
        let analysis = Analysis {
            name: self.name.clone(),
            source,
            threshold: Threshold {
                min: self.min,
                max: self.max,
                max_ratio: self.max_ratio,
            },
            window_secs: self.window_secs.unwrap_or(Analysis::DEFAULT_WINDOW_SECS),
            interval_secs: self
                .interval_secs
                .unwrap_or(Analysis::DEFAULT_INTERVAL_SECS),
            failure_limit: self
                .failure_limit
                .unwrap_or(Analysis::DEFAULT_FAILURE_LIMIT),
            no_data,
        };
        analysis.validate()?;
        Ok(analysis)
    }

    /// The backends' figure: `kind`, or the one its keys name.
    fn figure(&self) -> Result<Figure, String> {
        let quantile_keys = self.histogram.is_some() || self.quantile.is_some();
        let error_keys = self.counter.is_some() || self.status_label.is_some();
        let kind = match (self.kind.as_deref(), quantile_keys, error_keys) {
            (Some(kind), _, _) => kind,
            (None, true, false) => "quantile",
            (None, false, true) => "error_ratio",
            (None, true, true) => {
                return Err("give histogram/quantile (a latency quantile) or counter/status_label (an error ratio), not both".to_owned());
            }
            (None, false, false) => {
                return Err("say what to measure: kind = \"quantile\" (with histogram) or kind = \"error_ratio\" (with counter)".to_owned());
            }
        };
        match kind {
            "quantile" if !error_keys => Ok(Figure::Quantile {
                histogram: self
                    .histogram
                    .clone()
                    .unwrap_or_else(|| Figure::DEFAULT_HISTOGRAM.to_owned()),
                quantile: self.quantile.unwrap_or(Figure::DEFAULT_QUANTILE),
            }),
            "error_ratio" if !quantile_keys => Ok(Figure::ErrorRatio {
                counter: self
                    .counter
                    .clone()
                    .unwrap_or_else(|| Figure::DEFAULT_COUNTER.to_owned()),
                label: self
                    .status_label
                    .clone()
                    .unwrap_or_else(|| Figure::DEFAULT_STATUS_LABEL.to_owned()),
            }),
            "quantile" | "error_ratio" => Err(format!(
                "kind = {kind:?} takes {}",
                if kind == "quantile" {
                    "histogram and quantile"
                } else {
                    "counter and status_label"
                }
            )),
            other => Err(format!(
                "kind {other:?} is not \"quantile\" or \"error_ratio\""
            )),
        }
    }
}

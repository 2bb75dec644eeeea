//! The TOML configuration, validated completely before anything is applied.

use std::{net::SocketAddr, path::Path};

use bluegreen_common::{MAX_SERVICES, Timeouts};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::{
    endpoint::{Color, Proto, family_name, parse_endpoint},
    error::{Error, Result},
    health::{HealthCheck, Probe},
};

/// How XDP is attached: `auto` lets the kernel use the driver's native hook
/// when it has one and fall back to the generic (skb) hook otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeArg {
    #[default]
    Auto,
    Native,
    Skb,
}

/// One blue-green service as the operator describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: SocketAddr,
    pub proto: Proto,
    pub blue: SocketAddr,
    pub green: SocketAddr,
    /// The color new flows take when no earlier state says otherwise.
    pub active: Color,
    /// Probed before `switch` moves traffic to a color, and by the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Whether the daemon rolls back when the active color turns unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<AutoRollback>,
}

/// The daemon's automatic rollback (off unless configured).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoRollback {
    /// Roll back only within this long after a switch; 0 means at any time.
    pub window_secs: u64,
    /// Move established flows too (a forced rollback).
    pub force: bool,
}

impl ServiceSpec {
    pub fn backend(&self, color: Color) -> SocketAddr {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }

    /// Checks what can be checked of one service on its own.
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: String| Error::InvalidService {
            service: self.name.clone(),
            message,
        };
        validate_name(&self.name).map_err(|message| invalid(message.to_owned()))?;
        for color in Color::BOTH {
            check_same_family(&self.vip, &self.backend(color), &format!("{color} backend"))?;
            if self.backend(color) == self.vip {
                return Err(invalid(format!(
                    "the {color} backend cannot be the VIP itself"
                )));
            }
        }
        if let Some(health) = &self.health {
            health
                .validate()
                .map_err(|message| invalid(format!("health: {message}")))?;
        }
        if self.auto_rollback.is_some() && self.health.is_none() {
            return Err(invalid(
                "auto_rollback needs a health check: add a [service.health] table".to_owned(),
            ));
        }
        if self.blue == self.green {
            return Err(invalid(format!(
                "blue and green are both {}: give each color its own backend",
                self.blue
            )));
        }
        Ok(())
    }
}

pub fn check_same_family(vip: &SocketAddr, backend: &SocketAddr, what: &str) -> Result<()> {
    if vip.is_ipv4() == backend.is_ipv4() {
        return Ok(());
    }
    Err(Error::FamilyMismatch {
        what: what.to_owned(),
        addr: backend.to_string(),
        vip: vip.to_string(),
        family: family_name(backend),
    })
}

fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 64 {
        return Err("a service name has 1 to 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("a service name uses only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// Flow-table sizing and timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataplaneOptions {
    pub flow_capacity: u32,
    pub timeouts: Timeouts,
}

impl Default for DataplaneOptions {
    fn default() -> Self {
        Self {
            flow_capacity: bluegreen_common::DEFAULT_FLOW_CAPACITY,
            timeouts: Timeouts::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interface: Option<String>,
    pub xdp_mode: XdpModeArg,
    pub dataplane: DataplaneOptions,
    pub services: Vec<ServiceSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: Option<Spanned<String>>,
    xdp_mode: Option<Spanned<String>>,
    dataplane: Option<RawDataplane>,
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
struct RawService {
    name: Spanned<String>,
    vip: Spanned<String>,
    proto: Option<Spanned<String>>,
    blue: Spanned<String>,
    green: Spanned<String>,
    active: Option<Spanned<String>>,
    health: Option<Spanned<RawHealth>>,
    auto_rollback: Option<Spanned<RawAutoRollback>>,
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
}

impl RawHealth {
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
            ..defaults
        };
        check.validate()?;
        Ok(check)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAutoRollback {
    window_secs: Option<u64>,
    mode: Option<String>,
}

impl RawAutoRollback {
    fn settings(&self) -> Result<AutoRollback, String> {
        let force = match self.mode.as_deref() {
            None | Some("graceful") => false,
            Some("forced") => true,
            Some(other) => return Err(format!("mode {other:?} is not graceful or forced")),
        };
        Ok(AutoRollback {
            window_secs: self.window_secs.unwrap_or(300),
            force,
        })
    }
}

pub const MIN_FLOW_CAPACITY: u32 = 1024;
pub const MAX_FLOW_CAPACITY: u32 = 1 << 24;

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(Error::io(format!("cannot read config {}", path.display())))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config> {
        let at = |span: std::ops::Range<usize>, field: &str, message: String| Error::Config {
            file: file.to_owned(),
            line: text[..span.start.min(text.len())].matches('\n').count() + 1,
            field: field.to_owned(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|error| {
            at(
                error.span().unwrap_or(0..0),
                "toml",
                error.message().to_owned(),
            )
        })?;

        let xdp_mode = match &raw.xdp_mode {
            None => XdpModeArg::default(),
            Some(mode) => match mode.get_ref().as_str() {
                "auto" => XdpModeArg::Auto,
                "native" => XdpModeArg::Native,
                "skb" => XdpModeArg::Skb,
                other => {
                    return Err(at(
                        mode.span(),
                        "xdp_mode",
                        format!("{other:?} is not auto, native or skb"),
                    ));
                }
            },
        };

        let mut dataplane = DataplaneOptions::default();
        if let Some(raw_dataplane) = &raw.dataplane {
            if let Some(capacity) = &raw_dataplane.flow_capacity {
                let value = *capacity.get_ref();
                if !(MIN_FLOW_CAPACITY..=MAX_FLOW_CAPACITY).contains(&value) {
                    return Err(at(
                        capacity.span(),
                        "dataplane.flow_capacity",
                        format!("{value} is outside {MIN_FLOW_CAPACITY}..={MAX_FLOW_CAPACITY}"),
                    ));
                }
                dataplane.flow_capacity = value;
            }
            let timeouts = [
                (
                    &raw_dataplane.tcp_idle_timeout_secs,
                    "dataplane.tcp_idle_timeout_secs",
                    &mut dataplane.timeouts.tcp_idle_secs,
                ),
                (
                    &raw_dataplane.tcp_closing_timeout_secs,
                    "dataplane.tcp_closing_timeout_secs",
                    &mut dataplane.timeouts.tcp_closing_secs,
                ),
                (
                    &raw_dataplane.udp_idle_timeout_secs,
                    "dataplane.udp_idle_timeout_secs",
                    &mut dataplane.timeouts.udp_idle_secs,
                ),
            ];
            for (raw_value, field, target) in timeouts {
                if let Some(seconds) = raw_value {
                    let value = *seconds.get_ref();
                    if !(1..=7 * 24 * 3600).contains(&value) {
                        return Err(at(
                            seconds.span(),
                            field,
                            format!("{value} s is outside 1 s ..= 7 days"),
                        ));
                    }
                    *target = value;
                }
            }
        }

        if raw.services.is_empty() {
            return Err(at(
                0..0,
                "service",
                "no [[service]] table: describe at least one service".to_owned(),
            ));
        }
        if raw.services.len() > MAX_SERVICES as usize {
            return Err(at(
                0..0,
                "service",
                format!("{} services, at most {MAX_SERVICES}", raw.services.len()),
            ));
        }

        let mut services: Vec<ServiceSpec> = Vec::with_capacity(raw.services.len());
        for (index, service) in raw.services.iter().enumerate() {
            let field = |name: &str| format!("service[{index}].{name}");
            let endpoint = |value: &Spanned<String>, name: &str| {
                parse_endpoint(value.get_ref())
                    .map_err(|error| at(value.span(), &field(name), error.to_string()))
            };
            let name = service.name.get_ref().clone();
            validate_name(&name)
                .map_err(|message| at(service.name.span(), &field("name"), message.to_owned()))?;
            let vip = endpoint(&service.vip, "vip")?;
            let blue = endpoint(&service.blue, "blue")?;
            let green = endpoint(&service.green, "green")?;
            let proto = match &service.proto {
                None => Proto::default(),
                Some(proto) => proto
                    .get_ref()
                    .parse()
                    .map_err(|error: Error| at(proto.span(), &field("proto"), error.to_string()))?,
            };
            let active = match &service.active {
                None => Color::Blue,
                Some(active) => active.get_ref().parse().map_err(|error: Error| {
                    at(active.span(), &field("active"), error.to_string())
                })?,
            };
            let health = match &service.health {
                None => None,
                Some(raw) => Some(
                    raw.get_ref()
                        .check()
                        .map_err(|message| at(raw.span(), &field("health"), message))?,
                ),
            };
            let auto_rollback = match &service.auto_rollback {
                None => None,
                Some(raw) => Some(
                    raw.get_ref()
                        .settings()
                        .map_err(|message| at(raw.span(), &field("auto_rollback"), message))?,
                ),
            };
            let spec = ServiceSpec {
                name,
                vip,
                proto,
                blue,
                green,
                active,
                health,
                auto_rollback,
            };
            spec.validate().map_err(|error| {
                let (span, name) = match &error {
                    Error::FamilyMismatch { what, .. } if what.starts_with("green") => {
                        (service.green.span(), "green")
                    }
                    Error::FamilyMismatch { .. } => (service.blue.span(), "blue"),
                    _ => (service.name.span(), "name"),
                };
                at(span, &field(name), error.to_string())
            })?;
            if let Some(earlier) = services.iter().find(|other| other.name == spec.name) {
                return Err(at(
                    service.name.span(),
                    &field("name"),
                    format!("{:?} is used twice", earlier.name),
                ));
            }
            if let Some(earlier) = services
                .iter()
                .find(|other| other.vip == spec.vip && other.proto == spec.proto)
            {
                return Err(at(
                    service.vip.span(),
                    &field("vip"),
                    format!(
                        "{} {} is already service {:?}",
                        spec.proto, spec.vip, earlier.name
                    ),
                ));
            }
            services.push(spec);
        }

        Ok(Config {
            interface: raw.interface.map(Spanned::into_inner),
            xdp_mode,
            dataplane,
            services,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
interface = "eth0"
xdp_mode = "native"

[dataplane]
flow_capacity = 4096
udp_idle_timeout_secs = 5

[[service]]
name = "chat"
vip = "10.0.0.1:8080"
blue = "10.1.0.2:8080"
green = "10.1.0.3:8080"

[[service]]
name = "embed6"
vip = "[fd00::1]:9000"
proto = "udp"
blue = "[fd00::2]:9000"
green = "[fd00::3]:9000"
active = "green"
"#;

    fn config_error(text: &str) -> (usize, String, String) {
        match Config::parse(text, "test.toml") {
            Err(Error::Config {
                line,
                field,
                message,
                ..
            }) => (line, field, message),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_config_is_read_completely() {
        let config = Config::parse(GOOD, "test.toml").unwrap();
        assert_eq!(config.interface.as_deref(), Some("eth0"));
        assert_eq!(config.xdp_mode, XdpModeArg::Native);
        assert_eq!(config.dataplane.flow_capacity, 4096);
        assert_eq!(config.dataplane.timeouts.udp_idle_secs, 5);
        assert_eq!(
            config.dataplane.timeouts.tcp_idle_secs,
            Timeouts::default().tcp_idle_secs
        );
        assert_eq!(config.services.len(), 2);
        assert_eq!(config.services[0].active, Color::Blue);
        assert_eq!(config.services[0].proto, Proto::Tcp);
        assert_eq!(config.services[1].active, Color::Green);
        assert_eq!(config.services[1].proto, Proto::Udp);
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let mixed = GOOD.replace("green = \"10.1.0.3:8080\"", "green = \"[fd00::3]:8080\"");
        let (line, field, message) = config_error(&mixed);
        assert_eq!((line, field.as_str()), (13, "service[0].green"));
        assert!(message.contains("IPv6"), "{message}");

        let (line, field, _) = config_error(&GOOD.replace("10.1.0.2:8080", "10.1.0.2"));
        assert_eq!((line, field.as_str()), (12, "service[0].blue"));

        let (line, field, message) =
            config_error(&GOOD.replace("flow_capacity = 4096", "flow_capacity = 12"));
        assert_eq!((line, field.as_str()), (6, "dataplane.flow_capacity"));
        assert!(message.contains("outside"), "{message}");

        let (line, field, _) = config_error(&GOOD.replace("proto = \"udp\"", "proto = \"sctp\""));
        assert_eq!((line, field.as_str()), (18, "service[1].proto"));

        let (_, field, message) =
            config_error(&GOOD.replace("name = \"embed6\"", "name = \"chat\""));
        assert_eq!(field, "service[1].name");
        assert!(message.contains("twice"), "{message}");

        let (line, field, message) = config_error(&GOOD.replace("xdp_mode", "xdp_mod"));
        assert_eq!((line, field.as_str()), (3, "toml"));
        assert!(message.contains("unknown field"), "{message}");

        let (_, _, message) = config_error("interface = \"eth0\"\n");
        assert!(message.contains("at least one service"), "{message}");
    }

    #[test]
    fn health_checks_and_auto_rollback_are_read_and_checked() {
        let with_health = GOOD.replace(
            "green = \"10.1.0.3:8080\"\n",
            "green = \"10.1.0.3:8080\"\n\n[service.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = 200\ntimeout_ms = 100\nunhealthy_threshold = 2\n\n[service.auto_rollback]\nwindow_secs = 0\nmode = \"forced\"\n",
        );
        let config = Config::parse(&with_health, "test.toml").unwrap();
        let chat = &config.services[0];
        let health = chat.health.as_ref().expect("health");
        assert_eq!(
            health.probe,
            Probe::Http {
                path: "/healthz".to_owned()
            }
        );
        assert_eq!((health.interval_ms, health.timeout_ms), (200, 100));
        assert_eq!(health.unhealthy_threshold, 2);
        assert_eq!(
            health.healthy_threshold,
            HealthCheck::DEFAULT_HEALTHY_THRESHOLD
        );
        assert_eq!(
            chat.auto_rollback,
            Some(AutoRollback {
                window_secs: 0,
                force: true
            })
        );

        let (line, field, message) =
            config_error(&with_health.replace("timeout_ms = 100", "timeout_ms = 900"));
        assert_eq!((line, field.as_str()), (15, "service[0].health"));
        assert!(message.contains("timeout_ms"), "{message}");

        let without_health = with_health.replace("[service.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval_ms = 200\ntimeout_ms = 100\nunhealthy_threshold = 2\n\n", "");
        let (_, _, message) = config_error(&without_health);
        assert!(
            message.contains("auto_rollback needs a health check"),
            "{message}"
        );
    }

    #[test]
    fn same_backend_for_both_colors_is_refused() {
        let (_, _, message) =
            config_error(&GOOD.replace("green = \"10.1.0.3:8080\"", "green = \"10.1.0.2:8080\""));
        assert!(message.contains("blue and green are both"), "{message}");
    }

    #[test]
    fn the_packaged_example_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/bluegreen.toml");
        let config = Config::load(Path::new(path)).expect("packaging/bluegreen.toml");
        assert_eq!(config.interface.as_deref(), Some("eth0"));
        assert_eq!(config.services.len(), 2);
    }
}

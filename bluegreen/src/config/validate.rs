//! The rules a service must follow, whether it comes from the config file,
//! from `up` flags or (one backend at a time) from `set-backend`. A failure
//! names the field at fault, so the config parser can point at its line.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use super::{PoolSpec, ServiceSpec};
use crate::{
    endpoint::{Color, Proto, family_name},
    error::{Error, Result},
};

/// A key of a `[[service]]` table, as the config file spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceField {
    Name,
    Vip,
    Proto,
    Blue,
    Green,
    Active,
    Health,
    AutoRollback,
    Load,
    Verify,
    Warmup,
    Analysis,
    Lifecycle,
    Shadow,
}

impl From<Color> for ServiceField {
    fn from(color: Color) -> ServiceField {
        match color {
            Color::Blue => ServiceField::Blue,
            Color::Green => ServiceField::Green,
        }
    }
}

impl fmt::Display for ServiceField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceField::Name => "name",
            ServiceField::Vip => "vip",
            ServiceField::Proto => "proto",
            ServiceField::Blue => "blue",
            ServiceField::Green => "green",
            ServiceField::Active => "active",
            ServiceField::Health => "health",
            ServiceField::AutoRollback => "auto_rollback",
            ServiceField::Load => "load",
            ServiceField::Verify => "verify",
            ServiceField::Warmup => "warmup",
            ServiceField::Analysis => "analysis",
            ServiceField::Lifecycle => "lifecycle",
            ServiceField::Shadow => "shadow",
        })
    }
}

/// Why a service is invalid, and which of its fields is at fault.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct FieldError {
    pub field: ServiceField,
    /// Boxed because an [`Error`] with a field beside it is too large to
    /// return by value.
    pub error: Box<Error>,
}

impl FieldError {
    /// Tags an error with its field, for `map_err`.
    pub fn on(field: ServiceField) -> impl FnOnce(Error) -> FieldError {
        move |error| FieldError {
            field,
            error: Box::new(error),
        }
    }
}

/// Callers without a file to point into need only the error itself.
impl From<FieldError> for Error {
    fn from(invalid: FieldError) -> Error {
        *invalid.error
    }
}

impl ServiceSpec {
    /// Checks what can be checked of one service on its own.
    pub fn validate(&self) -> Result<(), FieldError> {
        let invalid = |field, message: String| {
            FieldError::on(field)(Error::InvalidService {
                service: self.name.clone(),
                message,
            })
        };
        validate_name(&self.name)
            .map_err(|message| invalid(ServiceField::Name, message.to_owned()))?;
        check_usable(&self.name, Role::Vip, self.vip).map_err(FieldError::on(ServiceField::Vip))?;
        for color in Color::BOTH {
            validate_pool(&self.name, self.vip, color, self.backends(color))
                .map_err(FieldError::on(color.into()))?;
        }
        if let Some(health) = &self.health {
            health
                .validate()
                .map_err(|message| invalid(ServiceField::Health, format!("health: {message}")))?;
            let smallest = Color::BOTH
                .map(|color| self.backends(color).backends().len())
                .into_iter()
                .min()
                .unwrap_or(0);
            if health.min_healthy as usize > smallest {
                return Err(invalid(
                    ServiceField::Health,
                    format!(
                        "health: min_healthy {} is more than the {smallest} backend(s) of the smaller pool",
                        health.min_healthy
                    ),
                ));
            }
        }
        if let Some(policy) = self.auto_rollback {
            if policy.analysis && self.analysis.is_empty() {
                return Err(invalid(
                    ServiceField::AutoRollback,
                    "auto_rollback: analysis = true needs a [[service.analysis]] table".to_owned(),
                ));
            }
            if !policy.analysis && self.health.is_none() {
                return Err(invalid(
                    ServiceField::AutoRollback,
                    "auto_rollback needs a health check: add a [service.health] table (or analysis = true with [[service.analysis]])".to_owned(),
                ));
            }
            // The daemon would stop the color its own rollback needs.
            if let Some(after) = self
                .lifecycle
                .as_ref()
                .and_then(|lifecycle| lifecycle.scale_down_after_secs)
                && policy.window_secs > after
            {
                return Err(invalid(
                    ServiceField::Lifecycle,
                    format!(
                        "lifecycle: scale_down_after_secs {after} is shorter than auto_rollback's window_secs {}: the daemon would stop the color its rollback returns to; make it at least {}",
                        policy.window_secs, policy.window_secs
                    ),
                ));
            }
        }
        if let Some(lifecycle) = &self.lifecycle {
            lifecycle.validate().map_err(|message| {
                invalid(ServiceField::Lifecycle, format!("lifecycle: {message}"))
            })?;
        }
        for (at, analysis) in self.analysis.iter().enumerate() {
            analysis.validate().map_err(|message| {
                invalid(ServiceField::Analysis, format!("analysis[{at}]: {message}"))
            })?;
            if self.analysis[..at]
                .iter()
                .any(|earlier| earlier.name == analysis.name)
            {
                return Err(invalid(
                    ServiceField::Analysis,
                    format!(
                        "analysis[{at}]: another analysis is already named {:?}: give each its own name",
                        analysis.name
                    ),
                ));
            }
        }
        if let Some(verify) = &self.verify {
            verify
                .validate()
                .map_err(|message| invalid(ServiceField::Verify, format!("verify: {message}")))?;
        }
        if let Some(warmup) = &self.warmup {
            warmup
                .validate()
                .map_err(|message| invalid(ServiceField::Warmup, format!("warmup: {message}")))?;
            if self.proto == Proto::Udp {
                return Err(invalid(
                    ServiceField::Warmup,
                    "warmup sends HTTP requests, which a UDP service does not answer: remove [service.warmup]".to_owned(),
                ));
            }
        }
        if let Some(shared) = self
            .green
            .addrs()
            .find(|addr| self.blue.get(*addr).is_some())
        {
            return Err(invalid(
                ServiceField::Green,
                format!("{shared} is in both blue and green: give each color its own backends"),
            ));
        }
        Ok(())
    }
}

/// Checks that `pool` can be the `color` pool of `service`: 1 to 256
/// backends, none twice, weights in range, and every backend valid on its
/// own ([`validate_backend`]).
pub fn validate_pool(service: &str, vip: SocketAddr, color: Color, pool: &PoolSpec) -> Result<()> {
    pool.check_shape()
        .map_err(|message| Error::InvalidService {
            service: service.to_owned(),
            message: format!("{color} pool: {message}"),
        })?;
    for backend in pool.addrs() {
        validate_backend(service, vip, color, backend)?;
    }
    Ok(())
}

/// Checks that `backend` can be the `color` backend of `service`, whose VIP
/// is `vip`: the same address family, one host XDP can forward to, and not
/// the VIP itself. Whether it is also the other color's backend is up to the
/// caller, which knows the live one.
pub fn validate_backend(
    service: &str,
    vip: SocketAddr,
    color: Color,
    backend: SocketAddr,
) -> Result<()> {
    let role = Role::Backend(color);
    check_same_family(&vip, &backend, &role.to_string())?;
    check_usable(service, role, backend)?;
    if backend == vip {
        return Err(Error::InvalidService {
            service: service.to_owned(),
            message: format!("the {color} backend cannot be the VIP itself"),
        });
    }
    Ok(())
}

fn check_same_family(vip: &SocketAddr, backend: &SocketAddr, what: &str) -> Result<()> {
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

pub(super) fn validate_name(name: &str) -> Result<(), &'static str> {
    if is_label(name) {
        Ok(())
    } else {
        Err("a service name has 1 to 64 letters, digits, '-', '_' and '.'")
    }
}

/// 1 to 64 letters, digits, '-', '_' and '.': safe as a service's or a
/// fleet host's name, in a file name and in an etcd key alike.
pub fn is_label(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What an address is for: clients connect to a VIP, XDP forwards to a
/// backend; the two refuse the same addresses for different reasons.
#[derive(Clone, Copy)]
enum Role {
    Vip,
    Backend(Color),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Vip => f.write_str("VIP"),
            Role::Backend(color) => write!(f, "{color} backend"),
        }
    }
}

fn check_usable(service: &str, role: Role, addr: SocketAddr) -> Result<()> {
    match unusable(role, addr.ip()) {
        None => Ok(()),
        Some(reason) => Err(Error::UnusableAddress {
            service: service.to_owned(),
            what: role.to_string(),
            addr,
            reason,
        }),
    }
}

/// Why `ip` cannot take `role`, ending with what to use instead; `None` if
/// it can.
fn unusable(role: Role, ip: IpAddr) -> Option<&'static str> {
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    Some(match role {
        Role::Vip if ip.is_unspecified() => {
            "is the unspecified address, which no client connects to: use the address clients connect to"
        }
        Role::Vip if ip.is_loopback() => {
            "is a loopback address, whose packets never arrive on an interface: use an address clients reach through the interface"
        }
        Role::Vip if ip.is_multicast() => {
            "is a multicast address, but a VIP takes unicast connections: use a unicast address"
        }
        Role::Vip if broadcast => {
            "is the broadcast address, but a VIP takes unicast connections: use a unicast address"
        }
        Role::Backend(_) if ip.is_unspecified() => {
            "is the unspecified address, not a host: use the backend's own address"
        }
        Role::Backend(_) if ip.is_loopback() => {
            "is a loopback address, which XDP cannot forward packets to: use the address the backend has on the network"
        }
        Role::Backend(_) if ip.is_multicast() => {
            "is a multicast address, not one host: use the backend's own unicast address"
        }
        Role::Backend(_) if broadcast => {
            "is the broadcast address, not one host: use the backend's own unicast address"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests;

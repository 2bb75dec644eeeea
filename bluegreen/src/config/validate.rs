//! The rules a service must follow, whether it comes from the config file or
//! from `up` flags. A failure names the field at fault, so the config parser
//! can point at its line.

use std::{fmt, net::SocketAddr};

use super::ServiceSpec;
use crate::{
    endpoint::{Color, family_name},
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
        for color in Color::BOTH {
            let backend = self.backend(color);
            check_same_family(&self.vip, &backend, &format!("{color} backend"))
                .map_err(FieldError::on(color.into()))?;
            if backend == self.vip {
                return Err(invalid(
                    color.into(),
                    format!("the {color} backend cannot be the VIP itself"),
                ));
            }
        }
        if let Some(health) = &self.health {
            health
                .validate()
                .map_err(|message| invalid(ServiceField::Health, format!("health: {message}")))?;
        }
        if self.auto_rollback.is_some() && self.health.is_none() {
            return Err(invalid(
                ServiceField::AutoRollback,
                "auto_rollback needs a health check: add a [service.health] table".to_owned(),
            ));
        }
        if self.blue == self.green {
            return Err(invalid(
                ServiceField::Green,
                format!(
                    "blue and green are both {}: give each color its own backend",
                    self.blue
                ),
            ));
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

pub(super) fn validate_name(name: &str) -> Result<(), &'static str> {
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

#[cfg(test)]
mod tests;

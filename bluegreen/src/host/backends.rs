//! Changing one backend of a color's pool: add, remove, drain, undrain.
//! The pool is rewritten beside the live one with the live table's size,
//! so only the changed backend's share of new flows moves, and the service
//! flips to it with one map update once the state file records it.

use std::net::SocketAddr;

use super::{Host, Lock, OpenService};
use crate::{
    config::{BackendSpec, PoolSpec, validate_backend, validate_pool},
    endpoint::{Color, to_wire},
    error::{Error, Result},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendAction {
    /// Into the pool with this weight (default 1). A backend already in
    /// the pool only changes its weight, and only when one is given.
    Add {
        weight: Option<u32>,
    },
    /// Out of the pool; its established flows move to the backends left.
    Remove,
    /// Weight 0: no new flows, established ones continue.
    Drain,
    Undrain,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendOutcome {
    pub service: String,
    pub color: Color,
    /// The color's pool afterwards.
    pub pool: PoolSpec,
    /// False when the backend was already as asked.
    pub changed: bool,
    /// Established flows moved off a removed backend.
    pub rebound: u64,
}

impl Host {
    /// Applies `action` to `backend` in `color`'s pool. Leaving the active
    /// color without a backend that takes new flows is refused unless
    /// `force`: its new flows would then pass to the VIP untouched.
    pub fn change_backend(
        &self,
        service: Option<&str>,
        color: Color,
        backend: SocketAddr,
        action: BackendAction,
        force: bool,
    ) -> Result<BackendOutcome> {
        let mut open = self.open_service(service, Lock::Exclusive)?;
        let before = open.pool(color);
        let Some(pool) = changed_pool(&open, color, backend, action, &before)? else {
            return Ok(BackendOutcome {
                service: open.name().to_owned(),
                color,
                pool: before,
                changed: false,
                rebound: 0,
            });
        };
        let invalid = |message: String| Error::InvalidService {
            service: open.name().to_owned(),
            message,
        };
        // Only a change that takes the last one away: a color already
        // without one is not made worse.
        if pool.serving().is_empty()
            && !before.serving().is_empty()
            && Color::from_wire(open.live.active) == color
            && !force
        {
            return Err(invalid(format!(
                "{backend} is the last backend of the active color {color} taking new flows: \
                 new flows would reach no backend; add or undrain another first, or pass --force"
            )));
        }
        self.replace_pool(&mut open, color, pool.clone())?;
        let rebound = if action == BackendAction::Remove {
            let (key, live) = (open.key, open.live);
            open.maps.rebind_flows(
                &key,
                color.wire(),
                live.generation,
                &to_wire(backend),
                live.pool(color.wire()),
            )?
        } else {
            0
        };
        Ok(BackendOutcome {
            service: open.name().to_owned(),
            color,
            pool,
            changed: true,
            rebound,
        })
    }
}

/// The pool `action` leaves, checked; `None` when nothing changes.
fn changed_pool(
    open: &OpenService,
    color: Color,
    backend: SocketAddr,
    action: BackendAction,
    before: &PoolSpec,
) -> Result<Option<PoolSpec>> {
    let spec = &open.record().spec;
    let invalid = |message: String| Error::InvalidService {
        service: spec.name.clone(),
        message,
    };
    let mut pool = before.clone();
    let backends = pool.backends_mut();
    let position = backends.iter().position(|known| known.addr == backend);
    let not_in_pool = || invalid(format!("{backend} is not in the {color} pool ({before})"));
    match (action, position) {
        (BackendAction::Add { weight }, None) => {
            validate_backend(&spec.name, spec.vip, color, backend)?;
            if open.backends(color.other()).contains(&backend) {
                return Err(invalid(format!(
                    "{backend} is already a {} backend",
                    color.other()
                )));
            }
            backends.push(BackendSpec {
                weight: weight.unwrap_or(1),
                ..BackendSpec::new(backend)
            });
        }
        (
            BackendAction::Add {
                weight: Some(weight),
            },
            Some(at),
        ) => {
            if backends[at].weight == weight {
                return Ok(None);
            }
            backends[at].weight = weight;
        }
        (BackendAction::Add { weight: None }, Some(_)) => {
            return Err(invalid(format!(
                "{backend} is already in the {color} pool: give --weight N to change its weight"
            )));
        }
        (BackendAction::Remove, Some(at)) => {
            if backends.len() == 1 {
                return Err(invalid(format!(
                    "{backend} is the only backend of {color}: a color keeps at least one \
                     (replace it with `bluegreen set-backend {color} ADDR:PORT`)"
                )));
            }
            backends.remove(at);
        }
        (BackendAction::Drain | BackendAction::Undrain, Some(at)) => {
            let drain = action == BackendAction::Drain;
            if backends[at].drained == drain {
                return Ok(None);
            }
            backends[at].drained = drain;
        }
        (_, None) => return Err(not_in_pool()),
    }
    validate_pool(&spec.name, spec.vip, color, &pool)?;
    Ok(Some(pool))
}

//! Changing a color's backends: one backend of a pool (add, remove,
//! drain, undrain), or the one backend of a one-backend color
//! (`set-backend`).
//! The pool is rewritten beside the live one with the live table's size,
//! so only the changed backend's share of new flows moves, and the service
//! flips to it with one map update once the state file records it.

use std::{net::SocketAddr, time::Duration};

use bluegreen_common::{Pool, SERVICE_HAS_PREVIEW, ServiceKey};

use super::{Host, Lock, OpenService};
use crate::{
    config::{BackendSpec, PoolSpec, validate_backend, validate_pool},
    endpoint::{Color, to_wire},
    error::{Error, Result},
    pinned::PinnedMaps,
    pool::{self, arena::Arenas},
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

/// Plans `spec` as `service`'s pool beside `live`, the color's current
/// pool (see [`pool::plan`]), writes it and returns it, for the caller to
/// flip the service to.
pub fn write_pool(
    maps: &mut PinnedMaps,
    arenas: &mut Arenas,
    service: &ServiceKey,
    spec: &PoolSpec,
    live: Option<&Pool>,
) -> Result<Pool> {
    let live_backends = live.map(|pool| maps.pool_backends(pool)).transpose()?;
    let write = pool::plan(arenas, spec, live.zip(live_backends.as_deref()), |pools| {
        maps.backend_counter_slots(pools)
    })?;
    maps.write_pool(service, &write)?;
    Ok(write.pool)
}

impl Host {
    /// Points a one-backend color of a service at another backend;
    /// returns the service's name and the old backend. Flows already on the
    /// old backend stay there until they end.
    pub fn set_backend(
        &self,
        service: Option<&str>,
        color: Color,
        backend: SocketAddr,
    ) -> Result<(String, SocketAddr)> {
        let mut open = self.open_service(service, Lock::Exclusive)?;
        let spec = &open.record().spec;
        if open.backends(color).len() > 1 {
            return Err(Error::InvalidService {
                service: spec.name.clone(),
                message: format!(
                    "{color} is a pool of {} backends: change it with `bluegreen backend add|remove {color} ADDR:PORT`",
                    open.backends(color).len()
                ),
            });
        }
        validate_backend(&spec.name, spec.vip, color, backend)?;
        check_unused(&open, color, backend)?;
        let old = open.backend(color);
        if old != backend {
            self.replace_pool(&mut open, color, PoolSpec::one(backend))?;
        }
        Ok((open.name().to_owned(), old))
    }

    /// Writes `pool` as `color`'s pool beside the live one when its table
    /// changes, keeping the live table's size (so only the flows of a
    /// backend that changed move), records it and flips the service to it
    /// with [`Host::commit`].
    pub(super) fn replace_pool(
        &self,
        open: &mut OpenService,
        color: Color,
        pool: PoolSpec,
    ) -> Result<Duration> {
        let mut updated = open.live;
        // What the maps do not hold (a load that could not be read) is
        // only recorded in the state file.
        if pool.wire() != open.pool(color).wire() {
            let services = open.maps.services()?;
            let mut arenas = Arenas::new(services.values());
            let live_pool = *open.live.pool(color.wire());
            updated.pools[usize::from(color.wire())] = write_pool(
                &mut open.maps,
                &mut arenas,
                &open.key,
                &pool,
                Some(&live_pool),
            )?;
        }
        open.backends[usize::from(color.wire())] = pool.addrs().collect();
        *open.record_mut().spec.backends_mut(color) = pool;
        self.commit(open, updated)
    }

    /// Rebuilds `color`'s table with the daemon's runtime view of its
    /// backends: `update` gets the pool as recorded (under the lock, so a
    /// `backend` command made meanwhile is seen) and returns it with new
    /// health exclusions ([`PoolSpec::with_health`]: no new flows,
    /// established ones continue) or load weights ([`PoolSpec::with_load`]),
    /// never touching the operator's weights and drains. Both are recorded
    /// in the state file beside a drain, so a `backend` command keeps
    /// them. Returns the new pool, or `None` when the table already
    /// matched and nothing was written.
    pub fn apply_runtime(
        &self,
        service: &str,
        color: Color,
        update: impl FnOnce(&PoolSpec) -> PoolSpec,
    ) -> Result<Option<PoolSpec>> {
        let mut open = self.open_service(Some(service), Lock::Exclusive)?;
        let before = open.pool(color);
        let pool = update(&before);
        if pool == before {
            return Ok(None);
        }
        self.replace_pool(&mut open, color, pool.clone())?;
        Ok(Some(pool))
    }

    /// Applies `action` to `backend` in `color`'s pool. Leaving the active
    /// color without a backend that takes new flows is refused unless
    /// `force`: its new flows would then pass to the VIP untouched. With
    /// `check`, a backend that is to take new flows (added or undrained)
    /// must first pass the check a switch makes, so its share of new
    /// connections is not refused.
    pub fn change_backend(
        &self,
        service: Option<&str>,
        color: Color,
        backend: SocketAddr,
        action: BackendAction,
        force: bool,
        check: bool,
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
        // without one is not made worse. The idle color takes new flows
        // too while a weighted shift or preview prefixes send it some.
        let live = open.live;
        let gets_new_flows = Color::from_wire(live.active) == color
            || live.weight > 0
            || live.flags & SERVICE_HAS_PREVIEW != 0;
        if !pool.takes_new_flows() && before.takes_new_flows() && gets_new_flows && !force {
            let role = if Color::from_wire(live.active) == color {
                format!("the active color {color}")
            } else {
                format!("{color}, which a weighted shift or preview prefixes send new flows,")
            };
            return Err(invalid(format!(
                "{backend} is the last backend of {role} taking new flows: \
                 new flows would reach no backend; add or undrain another first, or pass --force"
            )));
        }
        let admitted = matches!(action, BackendAction::Add { .. } | BackendAction::Undrain);
        if check
            && admitted
            && let Some((probe, _)) = open.admission_check()
        {
            probe
                .probe(backend)
                .map_err(|reason| Error::BackendCheckFailed {
                    service: open.name().to_owned(),
                    color,
                    backend,
                    reason,
                })?;
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

/// Refuses `backend` for `color` if the other color or another service of
/// the same protocol has it: a backend serves one service, whose VIP its
/// replies get back.
fn check_unused(open: &OpenService, color: Color, backend: SocketAddr) -> Result<()> {
    let spec = &open.record().spec;
    let taken_by = if open.backends(color.other()).contains(&backend) {
        Some(format!("a {} backend", color.other()))
    } else {
        open.state
            .services
            .iter()
            .map(|record| &record.spec)
            .find(|other| {
                other.name != spec.name && other.proto == spec.proto && other.serves(backend)
            })
            .map(|other| format!("a backend of service {:?}", other.name))
    };
    match taken_by {
        Some(taken_by) => Err(Error::InvalidService {
            service: spec.name.clone(),
            message: format!("{backend} is already {taken_by}"),
        }),
        None => Ok(()),
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
            check_unused(open, color, backend)?;
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

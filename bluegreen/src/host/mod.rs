//! The host bluegreen runs on, as the operator acts on it: its pins in
//! bpffs and its state files, and every operation on them, one file per
//! family:
//!
//! - [`lifecycle`]: `up` (with hot upgrade), `reload`, `down`;
//! - `programs`: loading, attaching and replacing the eBPF programs;
//! - `reconcile`: making the services map match a configuration;
//! - [`switching`]: switch, rollback, weighted shift, set-backend, preview;
//! - [`status`]: the status report, live flow counts, waiting for a drain.

pub mod lifecycle;
mod programs;
mod reconcile;
pub mod status;
pub mod switching;

use std::{net::SocketAddr, path::PathBuf};

use bluegreen_common::{ServiceKey, ServiceState};

pub use lifecycle::{UpOutcome, UpRequest};
pub use status::{
    ColorStatus, InterfaceStatus, STATUS_SCHEMA_VERSION, ServiceStatus, StatusReport,
};
pub use switching::{Checked, SwitchOptions, SwitchOutcome, SwitchTarget};

use crate::{
    endpoint::{Color, from_wire, service_key},
    error::{Error, Result},
    pinned::{PinLayout, PinnedMaps, check_bpffs},
    state::{InterfaceLock, InterfaceState, ServiceRecord, StateStore},
};

/// The two places bluegreen keeps state: pins in bpffs and the state files.
#[derive(Clone, Debug)]
pub struct Host {
    pin_dir: PathBuf,
    state: StateStore,
}

/// Whether [`Host::open_service`] takes the interface lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    /// For a change: concurrent commands on the interface wait, and the
    /// state is read after the lock is held.
    Exclusive,
    /// For a read: a concurrent change may land right after.
    None,
}

/// One service, opened: its interface's state file, its maps, and its live
/// entry in the services map, read once.
pub struct OpenService {
    _lock: Option<InterfaceLock>,
    state: InterfaceState,
    /// Of the service's record in `state.services`.
    index: usize,
    key: ServiceKey,
    maps: PinnedMaps,
    live: ServiceState,
    /// Each color's backends as its live pool holds them.
    backends: [Vec<SocketAddr>; 2],
}

impl OpenService {
    pub fn record(&self) -> &ServiceRecord {
        &self.state.services[self.index]
    }

    fn record_mut(&mut self) -> &mut ServiceRecord {
        &mut self.state.services[self.index]
    }

    pub fn name(&self) -> &str {
        &self.record().spec.name
    }

    /// A color's backends, from its live pool.
    pub fn backends(&self, color: Color) -> &[SocketAddr] {
        &self.backends[usize::from(color.wire())]
    }

    /// A one-backend color's backend (the first of a pool).
    pub fn backend(&self, color: Color) -> SocketAddr {
        self.backends(color)[0]
    }

    /// A snapshot that outlives the open maps (for the daemon and `shift`).
    pub fn view(&self) -> ServiceView {
        ServiceView {
            active: Color::from_wire(self.live.active),
            previous: Color::from_wire(self.live.previous),
            backends: Color::BOTH.map(|color| self.backend(color)),
            record: self.record().clone(),
        }
    }
}

/// One service as it is now: names, checks and timestamps from the state
/// file, colors and backends from the live map.
#[derive(Clone, Debug)]
pub struct ServiceView {
    pub active: Color,
    pub previous: Color,
    /// Indexed by color: blue, green.
    pub backends: [SocketAddr; 2],
    pub record: ServiceRecord,
}

impl ServiceView {
    pub fn backend(&self, color: Color) -> SocketAddr {
        self.backends[usize::from(color.wire())]
    }
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    Ok(())
}

impl Host {
    pub fn new(pin_dir: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            pin_dir: pin_dir.into(),
            state: StateStore::new(state_dir),
        }
    }

    pub fn layout(&self, iface: &str) -> PinLayout {
        PinLayout::new(&self.pin_dir, iface)
    }

    /// Fails the way an operator can act on: root first, then bpffs.
    pub fn preflight(&self) -> Result<()> {
        require_root()?;
        check_bpffs(&self.pin_dir)
    }

    /// The interfaces that are up, with their state files.
    fn up_interfaces(&self) -> Result<Vec<InterfaceState>> {
        Ok(self
            .state
            .list()?
            .into_iter()
            .filter(|state| self.layout(&state.interface).is_up())
            .collect())
    }

    /// Finds the named service (or the only one) among the interfaces that
    /// are up: its interface and its name.
    fn locate(&self, service: Option<&str>) -> Result<(String, String)> {
        let up = self.up_interfaces()?;
        if up.is_empty() {
            return Err(Error::NothingUp);
        }
        let all: Vec<(&str, &str)> = up
            .iter()
            .flat_map(|state| {
                state
                    .services
                    .iter()
                    .map(|record| (state.interface.as_str(), record.spec.name.as_str()))
            })
            .collect();
        let known = || all.iter().map(|(_, name)| (*name).to_owned()).collect();
        let (iface, name) = match service {
            Some(wanted) => all
                .iter()
                .find(|(_, name)| *name == wanted)
                .ok_or_else(|| Error::UnknownService {
                    name: wanted.to_owned(),
                    known: known(),
                })?,
            None if all.len() == 1 => &all[0],
            None => return Err(Error::ServiceNotGiven { known: known() }),
        };
        Ok(((*iface).to_owned(), (*name).to_owned()))
    }

    /// Opens the named service (or the only one): under its interface's
    /// lock if asked, with the state file read after the lock is held
    /// (another command may have just written it) and the live entry read
    /// once.
    pub fn open_service(&self, service: Option<&str>, lock: Lock) -> Result<OpenService> {
        self.preflight()?;
        let (iface, name) = self.locate(service)?;
        let lock = match lock {
            Lock::Exclusive => Some(self.state.lock(&iface)?),
            Lock::None => None,
        };
        let state = self.state.load(&iface)?.ok_or_else(|| Error::NotUpOn {
            iface: iface.clone(),
        })?;
        let index = state
            .services
            .iter()
            .position(|record| record.spec.name == name)
            .ok_or_else(|| Error::UnknownService {
                name: name.clone(),
                known: state
                    .services
                    .iter()
                    .map(|record| record.spec.name.clone())
                    .collect(),
            })?;
        let spec = &state.services[index].spec;
        let key = service_key(spec.vip, spec.proto);
        let maps = PinnedMaps::open(&self.layout(&iface))?;
        let live = maps
            .service(&key)?
            .ok_or(Error::ServiceNotLive { service: name })?;
        let mut backends: [Vec<SocketAddr>; 2] = Default::default();
        for color in Color::BOTH {
            backends[usize::from(color.wire())] = maps
                .pool_backends(live.pool(color.wire()))?
                .iter()
                .map(|backend| from_wire(key.family, backend))
                .collect();
        }
        Ok(OpenService {
            _lock: lock,
            state,
            index,
            key,
            maps,
            live,
            backends,
        })
    }

    /// See [`OpenService::view`].
    pub fn service_view(&self, service: Option<&str>) -> Result<ServiceView> {
        Ok(self.open_service(service, Lock::None)?.view())
    }
}

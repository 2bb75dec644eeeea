//! The host bluegreen runs on, as the operator acts on it: its pins in
//! bpffs and its state files, and every operation on them, one file per
//! family:
//!
//! - this file: finding a service (its interface from the state files,
//!   then only that interface's maps) and opening it;
//! - [`lifecycle`]: `up` (with hot upgrade and repair), `reload`, `down`;
//! - [`inventory`]: what is up, each interface's state as its maps hold
//!   it (`rebuild`, which repairs a missing, damaged or stale state file),
//!   and whether its programs are attached;
//! - `programs`: loading, attaching and replacing the XDP and TC programs;
//! - `local`: the host-local clients' cgroup hooks and their sockets;
//! - `reconcile`: making the services map match a configuration;
//! - [`switching`]: switch, rollback, weighted shift, preview;
//! - `gates`: the release gates before a switch or rollback, and alone;
//! - `backends`: set-backend; adding, removing, draining a backend of a
//!   pool; the daemon's runtime exclusions and load weights; writing a
//!   planned pool ([`write_pool`]);
//! - [`status`]: the status report, live flow counts, waiting for a drain.

mod backends;
mod colors;
mod gates;
pub mod inventory;
pub mod lifecycle;
mod local;
mod programs;
mod rebuild;
mod reconcile;
mod shadow;
pub mod status;
pub mod switching;

use std::{net::SocketAddr, path::PathBuf};

use bluegreen_common::{ServiceKey, ServiceState};

pub use backends::{BackendAction, BackendOutcome, write_pool};
pub(crate) use colors::alive;
pub use colors::{ScaleDown, Started};
pub use inventory::Attachment;
pub use lifecycle::{UpOutcome, UpRequest};
pub use local::{LocalReset, cgroup2_root};
pub use shadow::{ShadowOrderStart, ShadowStopped};
pub use status::{
    BackendStatus, ColorStatus, InterfaceStatus, STATUS_SCHEMA_VERSION, ServiceStatus, StatusReport,
};
pub use switching::{Checked, SwitchOptions, SwitchOutcome, SwitchTarget};

use crate::{
    config::PoolSpec,
    endpoint::{Color, from_wire, service_key},
    error::{Error, Result},
    pinned::{PinLayout, PinnedMaps, check_bpffs},
    shadow::record::ShadowRecord,
    state::{FleetMarker, InterfaceLock, InterfaceState, ServiceRecord, StateStore},
    verify::Launcher,
};
use inventory::Inspected;

/// The two places bluegreen keeps state: pins in bpffs and the state files.
#[derive(Clone, Debug)]
pub struct Host {
    pin_dir: PathBuf,
    state: StateStore,
    /// The one interface services are looked for on (see
    /// [`Host::on_interface`]); `None`: every interface that is up.
    scope: Option<String>,
    /// How the release gates' commands are started (see
    /// [`Host::launching_commands_with`]).
    launcher: Launcher,
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

    /// A color's live pool, with the weights and drained flags the state
    /// file records.
    pub fn pool(&self, color: Color) -> PoolSpec {
        self.record()
            .spec
            .backends(color)
            .aligned(self.backends(color))
    }

    /// A snapshot that outlives the open maps (for the daemon and `shift`).
    pub fn view(&self) -> ServiceView {
        ServiceView {
            active: Color::from_wire(self.live.active),
            previous: Color::from_wire(self.live.previous),
            pools: Color::BOTH.map(|color| self.pool(color)),
            record: self.record().clone(),
            shadow: None,
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
    pub pools: [PoolSpec; 2],
    pub record: ServiceRecord,
    /// The last shadowing run, read only when an analysis of the service
    /// reads it (see [`Host::service_view`]).
    pub shadow: Option<ShadowRecord>,
}

impl ServiceView {
    pub fn pool(&self, color: Color) -> &PoolSpec {
        &self.pools[usize::from(color.wire())]
    }

    /// `color` as the gates and analyses judge it, compared with
    /// `baseline`.
    pub fn target(&self, color: Color, baseline: Color) -> crate::verify::Target {
        let spec = &self.record.spec;
        crate::verify::Target {
            service: spec.name.clone(),
            color,
            vip: spec.vip,
            proto: spec.proto,
            backends: self.pool(color).serving(),
            baseline,
            baseline_backends: self.pool(baseline).serving(),
            shadow: self.shadow.clone(),
        }
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
            scope: None,
            launcher: Launcher::default(),
        }
    }

    /// This host with its services looked for on `iface` alone: a daemon
    /// serves the services of its own interface, and finding them there
    /// costs it nothing per tick whatever else is up. `status` of every
    /// interface still reports them all.
    pub fn on_interface(&self, iface: &str) -> Self {
        Self {
            scope: Some(iface.to_owned()),
            ..self.clone()
        }
    }

    /// This host, starting the release gates' commands with `launcher`
    /// (the daemon's: outside its sandbox when it runs under systemd).
    pub fn launching_commands_with(&self, launcher: Launcher) -> Self {
        Self {
            launcher,
            ..self.clone()
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

    /// Opens the named service (or the only one). With [`Lock::Exclusive`],
    /// for a change: under its interface's lock, with the state read after
    /// the lock is held (another command may have just changed it), and
    /// only while its programs are attached (a change would reach no
    /// client otherwise).
    ///
    /// Only the service's interface is opened: the state files say where a
    /// named service is, and that interface's maps confirm it (its read
    /// compares file and maps and rewrites a file that disagrees). A file
    /// that is missing, damaged or stale settles nothing, and then every
    /// interface's maps are searched, as they are when several interfaces
    /// are up and no service is named.
    pub fn open_service(&self, service: Option<&str>, lock: Lock) -> Result<OpenService> {
        self.preflight()?;
        if let Some(iface) = &self.scope {
            return self.open_on(iface, service, lock);
        }
        if let Some(iface) = self.interface_of(service)? {
            match self.open_on(&iface, service, lock) {
                Ok(open) => return Ok(open),
                // The maps have the last word, also on what went wrong.
                Err(error) => log::debug!("{iface}: {error}: searching every interface's maps"),
            }
        }
        let (iface, name) = self.locate_in_maps(service)?;
        self.open_on(&iface, Some(&name), lock)
    }

    /// The interface to try first for `service`, without opening a map:
    /// the only one up when no service is named, else the first whose
    /// state file names it. `None` when that settles nothing.
    fn interface_of(&self, service: Option<&str>) -> Result<Option<String>> {
        let interfaces = self.up_interfaces()?;
        let Some(wanted) = service else {
            return Ok(match interfaces.as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            });
        };
        // An unreadable file names nothing; the maps are searched then.
        Ok(interfaces.into_iter().find(|iface| {
            self.state
                .load(iface)
                .is_ok_and(|file| file.is_some_and(|file| file.service(wanted).is_some()))
        }))
    }

    /// Finds the named service (or the only one) in every interface's
    /// maps, as [`Host::open_interface`] reads them: its interface and name.
    fn locate_in_maps(&self, service: Option<&str>) -> Result<(String, String)> {
        let (interfaces, first_error) = self.open_interfaces()?;
        let states: Vec<&InterfaceState> = interfaces.iter().map(|open| &open.state).collect();
        // An interface that could not be opened may be the one asked for.
        locate(&states, service).map_err(|not_found| first_error.unwrap_or(not_found))
    }

    /// Opens `service` (or the only one) on `iface` alone; see
    /// [`Host::open_service`].
    fn open_on(&self, iface: &str, service: Option<&str>, lock: Lock) -> Result<OpenService> {
        let lock = match lock {
            Lock::Exclusive => Some(self.state.lock(iface)?),
            Lock::None => None,
        };
        let Inspected { state, maps, .. } = self.open_interface(iface, lock.is_some())?;
        let (_, name) = locate(&[&state], service)?;
        if lock.is_some() {
            self.attachment(iface).require(iface)?;
        }
        let index = state
            .services
            .iter()
            .position(|record| record.spec.name == name)
            .expect("located in this state");
        let spec = &state.services[index].spec;
        let key = service_key(spec.vip, spec.proto);
        let live = maps
            .service(&key)?
            .ok_or(Error::ServiceNotLive { service: name })?;
        let mut backends: [Vec<SocketAddr>; 2] = Default::default();
        for color in Color::BOTH {
            backends[usize::from(color.wire())] = maps
                .pool_backends(live.pool(color.wire()))?
                .iter()
                .map(|backend| from_wire(key.family, &backend.endpoint))
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

    /// The service's name and its fleet daemon's marker when the named
    /// service (or the only one) follows a fleet: a local change of it
    /// must be an explicit override.
    pub fn fleet_marker(&self, service: Option<&str>) -> Result<Option<(String, FleetMarker)>> {
        // Root first: the state directory cannot be listed without it, and
        // every command says the same thing to a user who is not root.
        self.preflight()?;
        if !self.state.has_fleet_markers()? {
            return Ok(None);
        }
        let open = self.open_service(service, Lock::None)?;
        let marker = self.state.load_fleet(&open.state.interface)?;
        Ok(marker
            .filter(|marker| marker.services.iter().any(|name| name == open.name()))
            .map(|marker| (open.name().to_owned(), marker)))
    }

    /// See [`OpenService::view`].
    pub fn service_view(&self, service: Option<&str>) -> Result<ServiceView> {
        Ok(self.view_of(&self.open_service(service, Lock::None)?))
    }

    /// The service as it is now, with its last shadowing run if one of its
    /// analyses reads it (a file read the others need not pay).
    pub(crate) fn view_of(&self, open: &OpenService) -> ServiceView {
        let mut view = open.view();
        let reads_shadow = view
            .record
            .spec
            .analysis
            .iter()
            .any(|analysis| matches!(analysis.source, crate::verify::Source::Shadow { .. }));
        if reads_shadow {
            view.shadow = self.state.load_shadow(open.name()).unwrap_or_else(|error| {
                log::warn!("{}: {error}", open.name());
                None
            });
        }
        view
    }
}

/// Finds the named service (or the only one) among the interfaces that are
/// up: its interface and its name.
fn locate(states: &[&InterfaceState], service: Option<&str>) -> Result<(String, String)> {
    if states.is_empty() {
        return Err(Error::NothingUp);
    }
    let all: Vec<(&str, &ServiceRecord)> = states
        .iter()
        .flat_map(|state| {
            state
                .services
                .iter()
                .map(|record| (state.interface.as_str(), record))
        })
        .collect();
    let known = || {
        all.iter()
            .map(|(_, record)| record.spec.name.clone())
            .collect()
    };
    let (iface, record) = match service {
        Some(wanted) => match all.iter().find(|(_, record)| record.spec.name == wanted) {
            Some(found) => found,
            None => {
                return Err(
                    match all.iter().find(|(_, record)| record.has_placeholder_name()) {
                        Some((iface, _)) => Error::ServiceNamesLost {
                            name: wanted.to_owned(),
                            iface: (*iface).to_owned(),
                            known: known(),
                        },
                        None => Error::UnknownService {
                            name: wanted.to_owned(),
                            known: known(),
                        },
                    },
                );
            }
        },
        None if all.len() == 1 => &all[0],
        None => return Err(Error::ServiceNotGiven { known: known() }),
    };
    Ok(((*iface).to_owned(), record.spec.name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::ServiceSpec, endpoint::Proto, state::placeholder_name};

    fn state(iface: &str, names: &[&str]) -> InterfaceState {
        let vip = "10.0.0.1:80".parse().expect("literal");
        InterfaceState {
            version: crate::state::STATE_VERSION,
            interface: iface.to_owned(),
            xdp_mode: "native".to_owned(),
            requested_xdp_mode: Default::default(),
            flow_capacity: 4096,
            tcp_idle_timeout_secs: 3600,
            tcp_closing_timeout_secs: 10,
            udp_idle_timeout_secs: 30,
            services: names
                .iter()
                .map(|name| ServiceRecord {
                    spec: ServiceSpec::new(
                        if name.is_empty() {
                            placeholder_name(vip, Proto::Tcp)
                        } else {
                            (*name).to_owned()
                        },
                        vip,
                        Proto::Tcp,
                        "10.1.0.2:80".parse().expect("literal"),
                        "10.1.0.3:80".parse().expect("literal"),
                    ),
                    previous: Color::Blue,
                    counter_slot: 0,
                    switched_at_unix_ms: None,
                    weight: 0,
                    preview: Vec::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn locate_finds_a_service_by_name_or_as_the_only_one() {
        let (a, b) = (state("eth0", &["web"]), state("eth1", &["chat"]));
        let found = locate(&[&a, &b], Some("chat")).expect("found");
        assert_eq!(found, ("eth1".to_owned(), "chat".to_owned()));
        assert_eq!(
            locate(&[&a], None).expect("the only one"),
            ("eth0".to_owned(), "web".to_owned())
        );
        assert!(matches!(
            locate(&[&a, &b], None),
            Err(Error::ServiceNotGiven { .. })
        ));
        assert!(matches!(
            locate(&[&a], Some("nope")),
            Err(Error::UnknownService { .. })
        ));
        assert!(matches!(locate(&[], None), Err(Error::NothingUp)));
    }

    #[test]
    fn a_name_lost_with_the_state_file_says_how_to_get_it_back() {
        let rebuilt = state("eth0", &[""]);
        let message = locate(&[&rebuilt], Some("web"))
            .expect_err("the name is gone")
            .to_string();
        assert!(
            message.contains("bluegreen up --iface eth0 --config FILE"),
            "{message}"
        );
        assert!(message.contains("10.0.0.1:80/tcp"), "{message}");
        // Still reachable without a name, or by the placeholder.
        assert!(locate(&[&rebuilt], None).is_ok());
        assert!(locate(&[&rebuilt], Some("10.0.0.1:80/tcp")).is_ok());
    }
}

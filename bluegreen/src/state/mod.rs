//! The state file: each interface's services, their active colors and
//! backends, kept on disk so that a reboot (which empties bpffs) restores
//! the last active color rather than the configuration's default.

use std::{
    fs::File,
    io::{self, Read, Write},
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{RequestedXdpMode, ServiceSpec},
    dirs,
    endpoint::{Color, Proto},
    error::{Error, Result},
    lifecycle::LifecycleRecord,
    shadow::record::{ShadowOrder, ShadowRecord},
    verify::AnalysesRecord,
};

pub const STATE_VERSION: u32 = 1;

/// The largest state file bluegreen reads: far above any real one, so that
/// a runaway file cannot exhaust memory.
const MAX_STATE_BYTES: usize = 1 << 20;

/// The name a service gets when only the maps know it (its state file was
/// lost): its VIP and protocol, which no configured name can be (names
/// have no ':' or '/').
pub fn placeholder_name(vip: SocketAddr, proto: Proto) -> String {
    format!("{vip}/{proto}")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    #[serde(flatten)]
    pub spec: ServiceSpec,
    pub previous: Color,
    pub counter_slot: u32,
    /// When the active color last changed (milliseconds since the epoch):
    /// the daemon's automatic rollback only acts within a window after it.
    #[serde(default)]
    pub switched_at_unix_ms: Option<u64>,
    /// Share of new flows sent to the idle color (a weighted shift).
    #[serde(default)]
    pub weight: u8,
    /// Client prefixes whose new flows go to the idle color.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preview: Vec<String>,
}

impl ServiceRecord {
    /// Whether the record was rebuilt from the maps, without its name.
    pub fn has_placeholder_name(&self) -> bool {
        self.spec.name == placeholder_name(self.spec.vip, self.spec.proto)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceState {
    pub version: u32,
    pub interface: String,
    /// The XDP mode the program was attached in (`native` or `skb`).
    pub xdp_mode: String,
    pub requested_xdp_mode: RequestedXdpMode,
    pub flow_capacity: u32,
    pub tcp_idle_timeout_secs: u64,
    pub tcp_closing_timeout_secs: u64,
    pub udp_idle_timeout_secs: u64,
    pub services: Vec<ServiceRecord>,
}

impl InterfaceState {
    pub fn service(&self, name: &str) -> Option<&ServiceRecord> {
        self.services.iter().find(|record| record.spec.name == name)
    }
}

/// What a fleet daemon tells the commands on its host, in
/// `<state-dir>/<iface>.fleet.json`: that the interface's services follow
/// the fleet (so a local `switch` is refused), and whether etcd is
/// reachable (for `status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetMarker {
    pub host: String,
    pub prefix: String,
    pub endpoints: Vec<String>,
    pub services: Vec<String>,
    pub connected: bool,
    /// When `connected` last changed (milliseconds since the epoch).
    pub since_unix_ms: u64,
    pub last_error: Option<String>,
}

/// The state directory (`--state-dir`), root-only: every file in it is
/// opened relative to the checked directory and without following a
/// symlink (see [`crate::dirs`]).
#[derive(Clone, Debug)]
pub struct StateStore {
    dir: PathBuf,
}

/// An exclusive lock on one interface's state, held while a command reads,
/// changes and writes it back, so concurrent commands serialise.
pub struct InterfaceLock {
    _file: File,
}

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self, iface: &str) -> PathBuf {
        self.dir.join(format!("{iface}.json"))
    }

    /// The checked directory; `None` if it does not exist and `create` is
    /// false.
    fn open_dir(&self, create: bool) -> Result<Option<OwnedFd>> {
        dirs::open_private_dir(&self.dir, create)
    }

    /// The interface's lock for one command: waits while another command
    /// holds it.
    pub fn lock(&self, iface: &str) -> Result<InterfaceLock> {
        Ok(self
            .lock_named(&format!("{iface}.lock"), true)?
            .expect("a blocking lock is always taken"))
    }

    /// The daemon's lock of an interface, held for the daemon's life (not
    /// the per-command one, which would block every `switch`); `None` while
    /// another daemon holds it.
    pub fn try_lock_daemon(&self, iface: &str) -> Result<Option<InterfaceLock>> {
        self.lock_named(&format!("{iface}.daemon.lock"), false)
    }

    /// An exclusive lock on the file `name` of the checked directory,
    /// opened without following a planted symlink; with `wait` false,
    /// `None` instead of waiting for its holder.
    fn lock_named(&self, name: &str, wait: bool) -> Result<Option<InterfaceLock>> {
        let dir = self.open_dir(true)?.expect("created");
        let path = self.dir.join(name);
        // Non-blocking, so that a FIFO in its place cannot hang the command.
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        let file =
            dirs::openat(Some(dir.as_fd()), name.as_ref(), flags, 0o600).map_err(|error| {
                if error.raw_os_error() == Some(libc::ELOOP) {
                    Error::SymlinkedLock { path: path.clone() }
                } else {
                    Error::io(format!("cannot open lock {}", path.display()))(error)
                }
            })?;
        let operation = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        // SAFETY: flock on a descriptor we own; released when it is closed,
        // also when the process dies.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } != 0 {
            let error = io::Error::last_os_error();
            if !wait && error.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(Error::io(format!("cannot lock {}", path.display()))(error));
        }
        Ok(Some(InterfaceLock {
            _file: File::from(file),
        }))
    }

    /// The interface's state file: `None` if there is none; an unreadable,
    /// damaged or foreign one is [`Error::CorruptState`], which callers
    /// that can rebuild the state from the maps pass over.
    pub fn load(&self, iface: &str) -> Result<Option<InterfaceState>> {
        let path = self.path(iface);
        let Some(text) = self.read(&format!("{iface}.json"))? else {
            return Ok(None);
        };
        let corrupt = |reason: String| Error::CorruptState {
            path: path.clone(),
            reason,
        };
        let state: InterfaceState =
            serde_json::from_str(&text).map_err(|error| corrupt(error.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(corrupt(format!(
                "version {} (this bluegreen writes {STATE_VERSION})",
                state.version
            )));
        }
        if state.interface != iface {
            return Err(corrupt(format!(
                "it describes interface {}",
                state.interface
            )));
        }
        Ok(Some(state))
    }

    /// The text of the file `name` of the directory: `None` if there is
    /// none; [`Error::CorruptState`] if it is not a regular UTF-8 file of
    /// at most 1 MiB.
    fn read(&self, name: &str) -> Result<Option<String>> {
        let Some(dir) = self.open_dir(false)? else {
            return Ok(None);
        };
        let corrupt = |reason: String| Error::CorruptState {
            path: self.dir.join(name),
            reason,
        };
        // Non-blocking, so that a FIFO in its place cannot hang the command.
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        let file = match dirs::openat(Some(dir.as_fd()), name.as_ref(), flags, 0) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) if error.raw_os_error() == Some(libc::ELOOP) => {
                return Err(corrupt(
                    "it is a symbolic link, which bluegreen does not follow".into(),
                ));
            }
            Err(error) => return Err(corrupt(error.to_string())),
        };
        let stat = dirs::fstat(file.as_fd()).map_err(|error| corrupt(error.to_string()))?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(corrupt("it is not a regular file".into()));
        }
        let mut bytes = Vec::new();
        File::from(file)
            .take(MAX_STATE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|error| corrupt(error.to_string()))?;
        if bytes.is_empty() {
            return Err(corrupt("it is empty".into()));
        }
        if bytes.len() > MAX_STATE_BYTES {
            return Err(corrupt("it is larger than 1 MiB".into()));
        }
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| corrupt("it is not UTF-8".into()))
    }

    /// Replaces the state file atomically: a crash leaves the old file or
    /// the new one, never a torn one. The caller holds the interface lock.
    pub fn save(&self, state: &InterfaceState) -> Result<()> {
        let text = serde_json::to_string_pretty(state).expect("state serialises") + "\n";
        self.write(&format!("{}.json", state.interface), &text)
    }

    /// What the fleet daemon of `iface` last told the commands on this
    /// host (see [`FleetMarker`]); `None` when the interface is not in a
    /// fleet.
    pub fn load_fleet(&self, iface: &str) -> Result<Option<FleetMarker>> {
        let name = format!("{iface}.fleet.json");
        self.read(&name)?
            .map(|text| {
                serde_json::from_str(&text).map_err(|error| Error::CorruptState {
                    path: self.dir.join(&name),
                    reason: error.to_string(),
                })
            })
            .transpose()
    }

    /// Whether any interface has a fleet marker: a cheap look at the
    /// directory, so that a host outside any fleet pays nothing more per
    /// `switch`.
    pub fn has_fleet_markers(&self) -> Result<bool> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => {
                return Err(Error::io(format!("cannot list {}", self.dir.display()))(
                    error,
                ));
            }
        };
        Ok(entries.flatten().any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".fleet.json") && !name.starts_with('.')
        }))
    }

    /// Written by the fleet daemon (its only writer), atomically.
    pub fn save_fleet(&self, iface: &str, marker: &FleetMarker) -> Result<()> {
        let text = serde_json::to_string_pretty(marker).expect("marker serialises") + "\n";
        self.write(&format!("{iface}.fleet.json"), &text)
    }

    /// Removes the marker: the daemon runs without `[fleet]` now.
    pub fn remove_fleet(&self, iface: &str) -> Result<()> {
        self.remove_names(&[
            format!("{iface}.fleet.json"),
            format!(".{iface}.fleet.json.tmp"),
        ])
    }

    /// Replaces the file `name` atomically (see [`StateStore::save`]); one
    /// writer at a time per name.
    fn write(&self, name: &str, text: &str) -> Result<()> {
        let path = self.dir.join(name);
        let failed = || Error::io(format!("cannot write state file {}", path.display()));
        let dir = self.open_dir(true)?.expect("created");
        let temporary = format!(".{name}.tmp");
        let write = || -> io::Result<()> {
            // Whatever is in the way (a crash's leftover, a planted link)
            // goes first; O_EXCL and O_NOFOLLOW then guarantee a new file.
            dirs::remove_in(dir.as_fd(), temporary.as_ref())?;
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
            let mut file = File::from(dirs::openat(
                Some(dir.as_fd()),
                temporary.as_ref(),
                flags,
                0o600,
            )?);
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            dirs::rename_in(dir.as_fd(), temporary.as_ref(), name.as_ref())?;
            File::from(dir.try_clone()?).sync_all()
        };
        write().map_err(|error| {
            let _ = dirs::remove_in(dir.as_fd(), temporary.as_ref());
            failed()(error)
        })
    }

    /// The daemon's last measurements of `service`'s analyses, replaced
    /// atomically. Named with a ':', which no interface name can hold, so
    /// that it is never taken for an interface's state file.
    pub fn save_analyses(&self, service: &str, record: &AnalysesRecord) -> Result<()> {
        self.save_json(&format!("analysis:{service}.json"), record)
    }

    /// What [`StateStore::save_analyses`] last wrote; `None` when nothing
    /// was, or it was written by a version whose record this one cannot
    /// read (the daemon rewrites it at its next round).
    pub fn load_analyses(&self, service: &str) -> Result<Option<AnalysesRecord>> {
        let Some(text) = self.read(&format!("analysis:{service}.json"))? else {
            return Ok(None);
        };
        Ok(serde_json::from_str::<AnalysesRecord>(&text)
            .ok()
            .filter(|record| record.schema_version == AnalysesRecord::SCHEMA_VERSION))
    }

    /// Both colors' lifecycle records of `service` (see
    /// [`crate::lifecycle`]); the default (both running) when none was
    /// written. A record of another schema version is refused, not
    /// misread: a stopped color taken for a running one would be switched
    /// to.
    pub fn load_lifecycle(&self, service: &str) -> Result<LifecycleRecord> {
        let name = format!("lifecycle:{service}.json");
        let Some(record) = self.load_json::<LifecycleRecord>(&name)? else {
            return Ok(LifecycleRecord::new());
        };
        self.check_schema(
            &name,
            record.schema_version,
            LifecycleRecord::SCHEMA_VERSION,
        )?;
        Ok(record)
    }

    /// Replaces `service`'s lifecycle record atomically; the caller holds
    /// the interface lock. Named with a ':', as the analyses' record.
    pub fn save_lifecycle(&self, service: &str, record: &LifecycleRecord) -> Result<()> {
        self.save_json(&format!("lifecycle:{service}.json"), record)
    }

    /// The shadowing run of `service` (see [`crate::shadow`]), written by
    /// its owner about once a second and at its end. Named with a ':', as
    /// the analyses' record.
    pub fn save_shadow(&self, service: &str, record: &ShadowRecord) -> Result<()> {
        self.save_json(&format!("shadow:{service}.json"), record)
    }

    /// What [`StateStore::save_shadow`] last wrote; a record of another
    /// schema version is refused, not misread.
    pub fn load_shadow(&self, service: &str) -> Result<Option<ShadowRecord>> {
        let name = format!("shadow:{service}.json");
        let Some(record) = self.load_json::<ShadowRecord>(&name)? else {
            return Ok(None);
        };
        self.check_schema(&name, record.schema_version, ShadowRecord::SCHEMA_VERSION)?;
        Ok(Some(record))
    }

    /// `shadow start`'s request to the daemon, or `shadow stop`'s to the
    /// run's owner: one file each, so that neither races the owner's
    /// record writes.
    pub fn save_shadow_order(&self, service: &str, order: &ShadowOrder) -> Result<()> {
        self.save_json(&format!("shadow-order:{service}.json"), order)
    }

    /// The order waiting for `service`'s shadowing; a damaged one is
    /// refused.
    pub fn load_shadow_order(&self, service: &str) -> Result<Option<ShadowOrder>> {
        self.load_json(&format!("shadow-order:{service}.json"))
    }

    /// The order has been acted on.
    pub fn remove_shadow_order(&self, service: &str) -> Result<()> {
        self.remove_names(&[format!("shadow-order:{service}.json")])
    }

    /// Replaces the record `name` with `value`, as JSON, atomically.
    fn save_json(&self, name: &str, value: &impl Serialize) -> Result<()> {
        let text = serde_json::to_string_pretty(value).expect("records serialise") + "\n";
        self.write(name, &text)
    }

    /// The record `name`, if there is one; one that does not parse is
    /// [`Error::CorruptState`].
    fn load_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let Some(text) = self.read(name)? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|error| Error::CorruptState {
                path: self.dir.join(name),
                reason: error.to_string(),
            })
    }

    /// Refuses the record `name` written with another schema version.
    fn check_schema(&self, name: &str, found: u32, expected: u32) -> Result<()> {
        if found == expected {
            return Ok(());
        }
        Err(Error::CorruptState {
            path: self.dir.join(name),
            reason: format!("schema version {found}, and this bluegreen reads {expected}"),
        })
    }

    /// The interface's shadowing lock, held by the one run that reads its
    /// capture ring (a ring has one reader); `None` while a run holds it.
    pub fn try_lock_shadow(&self, iface: &str) -> Result<Option<InterfaceLock>> {
        self.lock_named(&format!("{iface}.shadow.lock"), false)
    }

    /// A new file for a release gate's output, `verify/<name>` under the
    /// state directory (root-only like the rest of it, never through a
    /// planted symlink, never an existing file), open for writing and
    /// reading back; and its path, for the operator. The files are kept:
    /// they are the record of what each gate printed.
    pub fn create_verify_log(&self, name: &str) -> Result<(PathBuf, File)> {
        // The state directory is checked first: the `verify` directory's
        // own check follows its parent's path.
        self.open_dir(true)?;
        let logs = self.dir.join("verify");
        let dir = dirs::open_private_dir(&logs, true)?.expect("created");
        let path = logs.join(name);
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        let file = dirs::openat(Some(dir.as_fd()), name.as_ref(), flags, 0o600)
            .map_err(Error::io(format!("cannot create {}", path.display())))?;
        Ok((path, File::from(file)))
    }

    pub fn remove(&self, iface: &str) -> Result<()> {
        // The lock file stays: unlinking it while held would let a command
        // already waiting lock the old file while a new one creates and
        // locks another, and both would run at once.
        // The fleet marker goes too: a `down` interface follows no fleet.
        self.remove_names(&[
            format!("{iface}.json"),
            format!(".{iface}.json.tmp"),
            format!("{iface}.fleet.json"),
            format!(".{iface}.fleet.json.tmp"),
        ])
    }

    fn remove_names(&self, names: &[String]) -> Result<()> {
        let Some(dir) = self.open_dir(false)? else {
            return Ok(());
        };
        for name in names {
            dirs::remove_in(dir.as_fd(), name.as_ref()).map_err(Error::io(format!(
                "cannot remove {}",
                self.dir.join(name).display()
            )))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! The state file: each interface's services, their active colors and
//! backends, kept on disk so that a reboot (which empties bpffs) restores
//! the last active color rather than the configuration's default.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    os::unix::io::AsRawFd,
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{ServiceSpec, XdpModeArg},
    endpoint::Color,
    error::{Error, Result},
};

pub const STATE_VERSION: u32 = 1;

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceState {
    pub version: u32,
    pub interface: String,
    /// The XDP mode the program was attached in (`native` or `skb`).
    pub xdp_mode: String,
    pub requested_xdp_mode: XdpModeArg,
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

/// The state directory (`--state-dir`), root-only.
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

    fn ensure_dir(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(Error::io(format!(
                "cannot create state directory {}",
                self.dir.display()
            )))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(Error::io(format!("cannot restrict {}", self.dir.display())))
    }

    pub fn path(&self, iface: &str) -> PathBuf {
        self.dir.join(format!("{iface}.json"))
    }

    pub fn lock(&self, iface: &str) -> Result<InterfaceLock> {
        self.ensure_dir()?;
        let path = self.dir.join(format!("{iface}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io(format!("cannot open lock {}", path.display())))?;
        // SAFETY: flock on a descriptor we own; released when it is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io(format!("cannot lock {}", path.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(InterfaceLock { _file: file })
    }

    pub fn load(&self, iface: &str) -> Result<Option<InterfaceState>> {
        let path = self.path(iface);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Error::io(format!("cannot read {}", path.display()))(error)),
        };
        let state: InterfaceState =
            serde_json::from_str(&text).map_err(|error| Error::CorruptState {
                path: path.clone(),
                reason: error.to_string(),
            })?;
        if state.version != STATE_VERSION {
            return Err(Error::CorruptState {
                path,
                reason: format!(
                    "version {} (this bluegreen writes {STATE_VERSION})",
                    state.version
                ),
            });
        }
        Ok(Some(state))
    }

    /// Every interface that has a state file, in name order.
    pub fn list(&self) -> Result<Vec<InterfaceState>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(Error::io(format!("cannot list {}", self.dir.display()))(
                    error,
                ));
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                name.strip_suffix(".json").map(str::to_owned)
            })
            .collect();
        names.sort();
        let mut states = Vec::new();
        for name in names {
            states.extend(self.load(&name)?);
        }
        Ok(states)
    }

    /// Replaces the state file atomically: a crash leaves the old file or
    /// the new one, never a torn one.
    pub fn save(&self, state: &InterfaceState) -> Result<()> {
        self.ensure_dir()?;
        let path = self.path(&state.interface);
        let temporary = self
            .dir
            .join(format!(".{}.json.{}", state.interface, std::process::id()));
        let text = serde_json::to_string_pretty(state).expect("state serialises");
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(text.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            fs::rename(&temporary, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|error| {
            let _ = fs::remove_file(&temporary);
            Error::io(format!("cannot write state file {}", path.display()))(error)
        })
    }

    pub fn remove(&self, iface: &str) -> Result<()> {
        for path in [self.path(iface), self.dir.join(format!("{iface}.lock"))] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(Error::io(format!("cannot remove {}", path.display()))(
                        error,
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Proto;
    use std::path::Path;

    fn sample(iface: &str) -> InterfaceState {
        InterfaceState {
            version: STATE_VERSION,
            interface: iface.to_owned(),
            xdp_mode: "native".to_owned(),
            requested_xdp_mode: XdpModeArg::Auto,
            flow_capacity: 4096,
            tcp_idle_timeout_secs: 3600,
            tcp_closing_timeout_secs: 5,
            udp_idle_timeout_secs: 30,
            services: vec![ServiceRecord {
                spec: ServiceSpec {
                    name: "chat".to_owned(),
                    vip: "10.0.0.1:80".parse().unwrap(),
                    proto: Proto::Tcp,
                    blue: "10.1.0.2:80".parse().unwrap(),
                    green: "10.1.0.3:80".parse().unwrap(),
                    active: Color::Green,
                    health: None,
                    auto_rollback: None,
                },
                previous: Color::Blue,
                counter_slot: 0,
                switched_at_unix_ms: Some(1_700_000_000_000),
                weight: 10,
                preview: vec!["10.200.1.0/24".to_owned()],
            }],
        }
    }

    fn scratch_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("bluegreen-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn saved_state_reads_back_and_is_private() {
        let dir = scratch_dir("roundtrip");
        let store = StateStore::new(&dir);
        store.save(&sample("veth0")).unwrap();
        assert_eq!(store.load("veth0").unwrap(), Some(sample("veth0")));
        assert_eq!(store.list().unwrap(), vec![sample("veth0")]);
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&store.path("veth0")), 0o600);
        store.remove("veth0").unwrap();
        assert_eq!(store.load("veth0").unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_state_file_is_reported_not_guessed() {
        let dir = scratch_dir("corrupt");
        let store = StateStore::new(&dir);
        store.save(&sample("veth1")).unwrap();
        fs::write(store.path("veth1"), "{ not json").unwrap();
        match store.load("veth1") {
            Err(Error::CorruptState { path, .. }) => assert_eq!(path, store.path("veth1")),
            other => panic!("expected CorruptState, got {other:?}"),
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}

//! The bpffs side of an instance: where its maps and links are pinned
//! (this file), what a pinned map must look like to be ours
//! ([`contract`]), and the only writer of the maps ([`PinnedMaps`]).

mod carry;
mod contract;
mod flows;
mod maps;
mod pools;
mod shadow;

use std::{
    collections::BTreeSet,
    ffi::CString,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapInfo},
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use bluegreen_common::{LAYOUT_VERSION, map_names, program_names};

pub use contract::check_pinned_maps;
pub use maps::{PinnedMaps, Put, preview_key};
pub use shadow::ShadowMaps;

use crate::{
    dirs::open_private_dir,
    error::{Error, Result},
};

const BPF_FS_MAGIC: libc::c_long = 0xcafe4a11;

/// An exclusive lock on a pin directory (created if missing), held until
/// dropped or the process ends; see [`PinLayout::try_lock_instance`] and
/// [`PinLayout::lock_every_instance`].
pub struct DirLock {
    _dir: OwnedFd,
}

impl DirLock {
    /// `None` when another process holds it and `wait` is false.
    fn take(dir: &Path, wait: bool) -> Result<Option<DirLock>> {
        let fd = open_private_dir(dir, true)?.expect("created when missing");
        let operation = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        // SAFETY: flock on a descriptor we own; released when it is closed,
        // also when the process dies.
        if unsafe { libc::flock(fd.as_raw_fd(), operation) } != 0 {
            let error = std::io::Error::last_os_error();
            if !wait && error.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(Error::io(format!("cannot lock {}", dir.display()))(error));
        }
        Ok(Some(DirLock { _dir: fd }))
    }
}

/// Where one interface's pins live: `<pin-dir>/v<layout>/<iface>/`.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
    iface: String,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>, iface: &str) -> Self {
        Self {
            root: root.into(),
            iface: iface.to_owned(),
        }
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn dir(&self) -> PathBuf {
        self.root
            .join(format!("v{LAYOUT_VERSION}"))
            .join(&self.iface)
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    pub fn xdp_link(&self) -> PathBuf {
        self.dir().join("link_xdp")
    }

    pub fn tc_link(&self) -> PathBuf {
        self.dir().join("link_tc")
    }

    /// The XDP link, then the TC link.
    pub fn links(&self) -> [PathBuf; 2] {
        [self.xdp_link(), self.tc_link()]
    }

    /// The cgroup link of the local-client program `program` (one of
    /// [`program_names::LOCAL`]).
    pub fn local_link(&self, program: &str) -> PathBuf {
        let hook = program.strip_prefix("bluegreen_").unwrap_or(program);
        self.dir().join(format!("link_{hook}"))
    }

    /// Whether anything of this instance is pinned: its maps or its links.
    pub fn has_pins(&self) -> bool {
        self.links().iter().any(|link| link.exists())
            || program_names::LOCAL
                .iter()
                .any(|program| self.local_link(program).exists())
            || map_names::ALL.iter().any(|name| self.map(name).exists())
    }

    /// Checks the pin directory, the layout's directory and the
    /// interface's, each before anything in it is used (see
    /// [`crate::dirs`]), creating them if asked; false if one does not
    /// exist.
    pub fn open_dirs(&self, create: bool) -> Result<bool> {
        let layout_root = self.root.join(format!("v{LAYOUT_VERSION}"));
        for dir in [self.root.clone(), layout_root, self.dir()] {
            if open_private_dir(&dir, create)?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Locks the instance itself, its pin directory (created if missing),
    /// for as long as the returned lock lives, or the process: a lock in
    /// the state directory alone would let a daemon with another
    /// `--state-dir` run beside the one that holds it. `None` while
    /// another process holds it.
    pub fn try_lock_instance(&self) -> Result<Option<DirLock>> {
        self.open_dirs(true)?;
        DirLock::take(&self.dir(), false)
    }

    /// Locks every instance of this layout's pin directory against the
    /// others' `up` and reload, waiting for the holder: each checks that no
    /// other interface serves its VIPs, and two on different interfaces
    /// must not both pass before either has written its services. `None`
    /// while no instance of this layout exists: creating the directory to
    /// lock would leave it behind when the `up` fails, and with no
    /// instance there is no VIP to collide with (two first `up`s at the
    /// same moment aside).
    pub fn lock_every_instance(&self) -> Result<Option<DirLock>> {
        let root = self.root.join(format!("v{LAYOUT_VERSION}"));
        if open_private_dir(&self.root, false)?.is_none()
            || open_private_dir(&root, false)?.is_none()
        {
            return Ok(None);
        }
        DirLock::take(&root, true)
    }

    /// How the link pinned at `link` stands against the interface's index
    /// now (0 when the interface does not exist).
    pub fn link_state(&self, link: &Path, ifindex: u32) -> LinkState {
        if !link.exists() {
            return LinkState::Missing;
        }
        match crate::sys::pinned_link_ifindex(link) {
            Ok(attached) if attached != 0 && attached == ifindex => LinkState::Attached,
            // Something that is not a live link of this interface: `up`
            // replaces it.
            _ => LinkState::Severed,
        }
    }

    /// Pins again, from the programs still attached through the pinned
    /// links (the cgroup ones too: only they use the local-client maps),
    /// every map whose pin is missing (removed by hand), so that
    /// `up` goes on with the live maps and their contents rather than new
    /// empty ones. Returns the names pinned again.
    pub fn repin_maps_from_links(&self) -> Result<Vec<&'static str>> {
        let missing: Vec<&'static str> = map_names::ALL
            .iter()
            .copied()
            .filter(|name| !self.map(name).exists())
            .collect();
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let local_links = program_names::LOCAL.map(|program| self.local_link(program));
        let programs: BTreeSet<u32> = self
            .links()
            .iter()
            .chain(&local_links)
            .filter_map(|link| PinnedLink::from_pin(link).ok())
            .filter_map(|link| FdLink::from(link).info().ok())
            .map(|info| info.program_id())
            .collect();
        if programs.is_empty() {
            return Ok(Vec::new());
        }
        let cannot = |name: &str| format!("cannot pin {} again", self.map(name).display());
        let mut repinned = Vec::new();
        for program in loaded_programs().filter_map(|program| program.ok()) {
            if !programs.contains(&program.id()) {
                continue;
            }
            let map_ids = program
                .map_ids()
                .map_err(Error::ebpf("cannot list the maps of a running program"))?;
            for id in map_ids.unwrap_or_default() {
                let Ok(info) = MapInfo::from_id(id) else {
                    continue;
                };
                let Some(name) = missing
                    .iter()
                    .copied()
                    .find(|name| info.name_as_str() == Some(*name))
                else {
                    continue;
                };
                if repinned.contains(&name) {
                    continue;
                }
                let map = MapData::from_id(id).map_err(Error::ebpf(cannot(name)))?;
                map.pin(self.map(name)).map_err(Error::ebpf(cannot(name)))?;
                repinned.push(name);
            }
        }
        Ok(repinned)
    }

    /// Refuses to go on when this interface has pins of another layout.
    pub fn check_no_other_layout(&self) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Ok(());
        };
        let ours = format!("v{LAYOUT_VERSION}");
        for entry in entries.filter_map(|entry| entry.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != ours && name.starts_with('v') && entry.path().join(&self.iface).exists() {
                return Err(Error::LayoutMismatch {
                    path: entry.path().join(&self.iface),
                    found: name,
                    expected: LAYOUT_VERSION,
                    iface: self.iface.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Where a pinned link stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Attached to the interface of that name as it is now.
    Attached,
    /// Pinned, but attached to nothing (its interface was deleted) or to
    /// an earlier interface of that name.
    Severed,
    Missing,
}

/// The interfaces with pins of this layout under the pin directory
/// `root`, in name order; the directories are checked before they are
/// read.
pub fn pinned_interfaces(root: &Path) -> Result<Vec<String>> {
    let layout_root = root.join(format!("v{LAYOUT_VERSION}"));
    for dir in [root, &layout_root] {
        if open_private_dir(dir, false)?.is_none() {
            return Ok(Vec::new());
        }
    }
    let entries = std::fs::read_dir(&layout_root)
        .map_err(Error::io(format!("cannot list {}", layout_root.display())))?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| PinLayout::new(root, name).has_pins())
        .collect();
    names.sort();
    Ok(names)
}

/// Detaches the link pinned at `link` (if it is still attached to
/// anything) and removes its pin.
pub fn unpin_link(link: &Path) {
    let _ = crate::sys::detach_pinned_link(link);
    let _ = std::fs::remove_file(link);
}

/// The flow table's capacity, as pinned.
pub fn flow_capacity(layout: &PinLayout) -> Result<u32> {
    let path = layout.map(map_names::FLOWS);
    MapInfo::from_pin(&path)
        .map(|info| info.max_entries())
        .map_err(Error::ebpf(format!("cannot read {}", path.display())))
}

/// Fails unless `path` (or, if it does not exist yet, its nearest existing
/// ancestor) is on a BPF filesystem.
pub fn check_bpffs(path: &Path) -> Result<()> {
    let existing = path
        .ancestors()
        .find(|ancestor| ancestor.exists())
        .unwrap_or(Path::new("/"));
    let c_path = CString::new(existing.as_os_str().as_encoded_bytes()).map_err(|_| {
        Error::BpffsNotMounted {
            path: path.to_owned(),
        }
    })?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string, and statfs only writes into `stats`.
    let on_bpffs = unsafe { libc::statfs(c_path.as_ptr(), &mut stats) } == 0
        && stats.f_type as libc::c_long == BPF_FS_MAGIC;
    // A path below the mount point but not yet created is fine only when the
    // ancestor we found is itself on bpffs.
    if on_bpffs {
        Ok(())
    } else {
        Err(Error::BpffsNotMounted {
            path: path.to_owned(),
        })
    }
}

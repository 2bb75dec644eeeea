//! The bpffs side of an instance: where its maps and links are pinned
//! (this file), what a pinned map must look like to be ours
//! ([`contract`]), and the only writer of the maps ([`PinnedMaps`]).

mod contract;
mod maps;

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use bluegreen_common::LAYOUT_VERSION;

pub use contract::check_pinned_maps;
pub use maps::{PinnedMaps, Put, preview_key};

use crate::error::{Error, Result};

const BPF_FS_MAGIC: libc::c_long = 0xcafe4a11;

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

    pub fn is_up(&self) -> bool {
        self.xdp_link().exists()
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

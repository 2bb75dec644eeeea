//! One daemon per interface: two would both probe and both roll back.

use std::{
    fs::{self, File, OpenOptions},
    os::unix::{
        fs::{DirBuilderExt, OpenOptionsExt},
        io::AsRawFd,
    },
    path::Path,
};

use anyhow::{Context as _, bail};

/// Holds `<state-dir>/<iface>.daemon.lock` until dropped (or the process
/// ends, however it ends). Not the interface lock that commands take for
/// each change: the daemon holds this one for its whole life, and holding
/// that one would block every `switch`.
pub(super) struct DaemonLock {
    _file: File,
}

impl DaemonLock {
    /// Takes the lock, or fails at once if another daemon holds it.
    pub(super) fn take(state_dir: &Path, iface: &str) -> anyhow::Result<DaemonLock> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
        let path = state_dir.join(format!("{iface}.daemon.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: flock on a descriptor we own; the kernel releases it when
        // the descriptor is closed, also when the process dies.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                bail!(
                    "another bluegreen daemon is running on {iface} (it holds {}): stop it first, or send it SIGHUP to reload its config",
                    path.display()
                );
            }
            return Err(error).with_context(|| format!("cannot lock {}", path.display()));
        }
        Ok(DaemonLock { _file: file })
    }
}

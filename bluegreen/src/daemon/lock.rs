//! One daemon per interface: two would both probe and both roll back.

use std::path::Path;

use anyhow::bail;
use bluegreen::state::{InterfaceLock, StateStore};

/// Holds `<state-dir>/<iface>.daemon.lock` until dropped (or the process
/// ends, however it ends), opened as carefully as every other file of the
/// state directory.
pub(super) struct DaemonLock {
    _lock: InterfaceLock,
}

impl DaemonLock {
    /// Takes the lock, or fails at once if another daemon holds it.
    pub(super) fn take(state_dir: &Path, iface: &str) -> anyhow::Result<DaemonLock> {
        match StateStore::new(state_dir).try_lock_daemon(iface)? {
            Some(lock) => Ok(DaemonLock { _lock: lock }),
            None => bail!(
                "another bluegreen daemon is running on {iface} (it holds {}): stop it first, or send it SIGHUP to reload its config",
                state_dir.join(format!("{iface}.daemon.lock")).display()
            ),
        }
    }
}

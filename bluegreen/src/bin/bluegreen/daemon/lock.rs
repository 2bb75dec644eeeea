//! One daemon per interface: two would both probe and both roll back.

use std::path::Path;

use anyhow::bail;
use bluegreen::{
    host::Host,
    pinned::DirLock,
    state::{InterfaceLock, StateStore},
};

/// Holds `<state-dir>/<iface>.daemon.lock` and the instance's pin
/// directory until dropped (or the process ends, however it ends): the
/// pins are the instance whichever state directory a daemon names.
pub(super) struct DaemonLock {
    _state: InterfaceLock,
    _instance: DirLock,
}

impl DaemonLock {
    /// Takes both locks, or fails at once, before anything is loaded, if
    /// another daemon holds either.
    pub(super) fn take(host: &Host, state_dir: &Path, iface: &str) -> anyhow::Result<DaemonLock> {
        host.preflight()?;
        let stop_it = "stop it first, or send it SIGHUP to reload its config";
        let Some(state) = StateStore::new(state_dir).try_lock_daemon(iface)? else {
            bail!(
                "another bluegreen daemon is running on {iface} (it holds {}): {stop_it}",
                state_dir.join(format!("{iface}.daemon.lock")).display()
            );
        };
        let layout = host.layout(iface);
        let Some(instance) = layout.try_lock_instance()? else {
            bail!(
                "another bluegreen daemon is running on {iface} (it holds the pin directory {}, with another --state-dir than {}): {stop_it}",
                layout.dir().display(),
                state_dir.display()
            );
        };
        Ok(DaemonLock {
            _state: state,
            _instance: instance,
        })
    }
}

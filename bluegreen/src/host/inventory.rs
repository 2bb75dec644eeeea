//! What is up on this host, from the pins (the truth) rather than the
//! state files: which interfaces have an instance, each one's state as its
//! maps hold it (see `rebuild`), with its state file rewritten
//! when it was missing, damaged or behind, and whether its programs are
//! still attached.

use super::{
    Host,
    rebuild::{read_dataplane, state_from_maps},
};
use crate::{
    error::{Error, Result},
    pinned::{LinkState, PinnedMaps, pinned_interfaces},
    state::{InterfaceState, ServiceRecord},
};

/// One interface's maps and its state as they hold it.
pub(super) struct Inspected {
    pub state: InterfaceState,
    pub maps: PinnedMaps,
    /// Why the state file must be rewritten; `None` when it matches.
    problem: Option<String>,
}

/// The index of the interface of that name in this network namespace.
pub(super) fn ifindex(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a valid C string; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Whether an instance's programs reach its interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub interface_present: bool,
    pub xdp: LinkState,
    pub tc: LinkState,
}

impl Attachment {
    /// Both programs attached to the interface as it is now.
    pub fn attached(&self) -> bool {
        self.xdp == LinkState::Attached && self.tc == LinkState::Attached
    }

    /// Fails, saying how to recover, unless both programs are attached.
    pub fn require(&self, iface: &str) -> Result<()> {
        if !self.interface_present {
            return Err(Error::InterfaceGone {
                iface: iface.to_owned(),
            });
        }
        for (program, state) in [("XDP", self.xdp), ("TC", self.tc)] {
            let detail = match state {
                LinkState::Attached => continue,
                LinkState::Missing => format!("its {program} link pin is missing"),
                LinkState::Severed => {
                    format!("its {program} link belongs to an earlier interface of that name")
                }
            };
            return Err(Error::NotAttached {
                iface: iface.to_owned(),
                detail,
            });
        }
        Ok(())
    }
}

impl Host {
    /// Whether the interface exists (in this network namespace): false once
    /// it was deleted, even while its pins remain.
    pub fn interface_present(&self, iface: &str) -> bool {
        ifindex(iface).is_some()
    }

    /// Whether the instance on `iface` still reaches it through its links.
    pub fn attachment(&self, iface: &str) -> Attachment {
        let layout = self.layout(iface);
        let index = ifindex(iface);
        let state = |link: std::path::PathBuf| layout.link_state(&link, index.unwrap_or(0));
        Attachment {
            interface_present: index.is_some(),
            xdp: state(layout.xdp_link()),
            tc: state(layout.tc_link()),
        }
    }

    /// The interfaces with an instance (pins of this layout), in name order.
    pub(super) fn up_interfaces(&self) -> Result<Vec<String>> {
        pinned_interfaces(&self.pin_dir)
    }

    /// [`Host::open_interface`] for every interface that is up, the failures
    /// apart, so that one broken interface does not hide the others.
    pub(super) fn open_interfaces(&self) -> Result<(Vec<Inspected>, Option<Error>)> {
        let mut opened = Vec::new();
        let mut first_error = None;
        for iface in self.up_interfaces()? {
            match self.open_interface(&iface, false) {
                Ok(inspected) => opened.push(inspected),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        Ok((opened, first_error))
    }

    /// The interface's maps and state, with the state file rewritten from
    /// the maps if it was missing, damaged or behind. The rewrite happens
    /// under the interface lock (`locked`: the caller holds it), from what
    /// is there once it is held: a difference seen without it may be a
    /// change (or an `up`) half made, which its holder finishes first.
    pub(super) fn open_interface(&self, iface: &str, locked: bool) -> Result<Inspected> {
        let inspected = self.inspect(iface)?;
        let Some(problem) = &inspected.problem else {
            return Ok(inspected);
        };
        if locked {
            self.rewrite(&inspected.state, problem);
            return Ok(inspected);
        }
        let _lock = self.state.lock(iface)?;
        let inspected = self.inspect(iface)?;
        if let Some(problem) = &inspected.problem {
            self.rewrite(&inspected.state, problem);
        }
        Ok(inspected)
    }

    fn rewrite(&self, state: &InterfaceState, problem: &str) {
        match self.state.save(state) {
            Ok(()) => log::warn!("{problem}: rewrote it from the maps"),
            Err(error) => log::warn!("{problem}; it stays so: {error}"),
        }
    }

    fn inspect(&self, iface: &str) -> Result<Inspected> {
        let layout = self.layout(iface);
        layout.open_dirs(false)?;
        let maps = PinnedMaps::open(&layout)?;
        let (file, unusable) = match self.state.load(iface) {
            Ok(Some(file)) => (Some(file), None),
            Ok(None) => (None, Some("is missing".to_owned())),
            Err(Error::CorruptState { reason, .. }) => {
                (None, Some(format!("is unreadable ({reason})")))
            }
            Err(error) => return Err(error),
        };
        let dataplane = read_dataplane(&layout, &maps)?;
        let state = state_from_maps(iface, file.as_ref(), &maps.services()?, &dataplane);
        let problem = match (&file, unusable) {
            (Some(file), _) if *file == state => None,
            (Some(_), _) => Some("disagrees with the maps".to_owned()),
            (None, unusable) => unusable,
        }
        .map(|problem| {
            let mut message = format!(
                "state file {} {problem}",
                self.state.path(iface).display()
            );
            if state.services.iter().any(ServiceRecord::has_placeholder_name) {
                message.push_str(&format!(
                    " (the maps hold no service names or health checks: `bluegreen up --iface {iface} --config FILE` restores them)"
                ));
            }
            message
        });
        Ok(Inspected {
            state,
            maps,
            problem,
        })
    }
}

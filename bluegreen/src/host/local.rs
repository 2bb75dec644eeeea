//! Host-local clients: the cgroup socket-address programs (attached
//! beside the interface's programs, through pinned links), whose sockets
//! they rewrite, and the local connections they made, counted per color
//! and reset by a forced switch.

use std::{
    fs::File,
    net::SocketAddr,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
    util::KernelVersion,
};
use bluegreen_common::{LocalSettings, LocalSocket, LocalSocketKey, program_names};

use crate::{
    config::LocalClients,
    endpoint::to_wire,
    error::{Error, Result},
    pinned::{PinLayout, PinnedMaps},
    sockdiag::{self, PeerSocket},
    sys,
};

const CGROUP2_SUPER_MAGIC: libc::c_long = 0x6367_7270;

/// The first cgroup v2 mount in the mount table: `/sys/fs/cgroup` on a
/// unified system, `/sys/fs/cgroup/unified` on a hybrid one.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(Error::io("cannot read /proc/self/mounts"))?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(unescape_mount_path(point)))
        })
        .next()
        .ok_or_else(|| Error::Cgroup {
            path: PathBuf::from("/proc/self/mounts"),
            reason: "no cgroup v2 file system is mounted; mount one or run with --no-local"
                .to_owned(),
        })
}

/// The mount table writes space, tab, newline and backslash as octal
/// escapes.
fn unescape_mount_path(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The cgroup directory to attach to, opened and checked to be cgroup v2,
/// with its id (the directory's inode number on cgroup v2).
fn open_cgroup(chosen: Option<&Path>) -> Result<(PathBuf, File, u64)> {
    let path = match chosen {
        Some(path) => path.to_owned(),
        None => cgroup2_root()?,
    };
    let refuse = |reason: String| Error::Cgroup {
        path: path.clone(),
        reason,
    };
    let dir = File::open(&path).map_err(|error| refuse(error.to_string()))?;
    let metadata = dir.metadata().map_err(|error| refuse(error.to_string()))?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, and fstatfs only writes into `stats`.
    let status = unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&dir), &mut stats) };
    if status != 0 || stats.f_type as libc::c_long != CGROUP2_SUPER_MAGIC {
        return Err(refuse(
            "not a cgroup v2 directory (on a hybrid system the v2 hierarchy is usually /sys/fs/cgroup/unified)".to_owned(),
        ));
    }
    Ok((path, dir, metadata.ino()))
}

/// The first IPv4 and IPv6 (global or unique-local) addresses of `iface`:
/// what a local client counts as for preview prefixes.
fn interface_sources(iface: &str) -> ([u8; 16], [u8; 16]) {
    let mut source4 = [0; 16];
    let mut source6 = [0; 16];
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates the list, freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return (source4, source6);
    }
    let (mut found4, mut found6) = (false, false);
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let node = unsafe { &*entry };
        entry = node.ifa_next;
        // SAFETY: ifa_name is a C string for every node.
        let name = unsafe { std::ffi::CStr::from_ptr(node.ifa_name) };
        if node.ifa_addr.is_null() || name.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr of the family it names.
        match i32::from(unsafe { (*node.ifa_addr).sa_family }) {
            libc::AF_INET if !found4 => {
                // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                let addr = unsafe { &*(node.ifa_addr as *const libc::sockaddr_in) };
                source4[..4].copy_from_slice(&addr.sin_addr.s_addr.to_ne_bytes());
                found4 = true;
            }
            libc::AF_INET6 if !found6 => {
                // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
                let addr = unsafe { &*(node.ifa_addr as *const libc::sockaddr_in6) };
                let octets = addr.sin6_addr.s6_addr;
                // Link-local addresses do not reach a backend.
                if octets[0] != 0xfe || octets[1] & 0xc0 != 0x80 {
                    source6 = octets;
                    found6 = true;
                }
            }
            _ => {}
        }
    }
    // SAFETY: the list getifaddrs allocated, not used after this.
    unsafe { libc::freeifaddrs(list) };
    (source4, source6)
}

/// Detaches the cgroup links and removes their pins.
pub(super) fn remove_local_links(layout: &PinLayout) {
    for program in program_names::LOCAL {
        crate::pinned::unpin_link(&layout.local_link(program));
    }
}

/// Where and for whom `up` steers local clients, found and checked
/// before anything is attached, so that a bad `--cgroup` or a kernel
/// without what is needed fails `up` with nothing changed.
pub(super) struct LocalTarget {
    path: PathBuf,
    dir: File,
    cgroup_id: u64,
    settings: LocalSettings,
}

/// `None` for `--no-local`.
pub(super) fn prepare(local: &LocalClients, iface: &str) -> Result<Option<LocalTarget>> {
    let LocalClients::On { cgroup } = local else {
        return Ok(None);
    };
    let (path, dir, cgroup_id) = open_cgroup(cgroup.as_deref())?;
    let kernel = KernelVersion::current().map_err(Error::ebpf("cannot read the kernel version"))?;
    if kernel < KernelVersion::new(5, 7, 0) {
        return Err(Error::Cgroup {
            path,
            reason: format!(
                "kernel {kernel:?} has no cgroup bpf_link (5.7 or later is needed); run with --no-local"
            ),
        });
    }
    let netns_cookie =
        sys::netns_cookie().map_err(Error::io("cannot read this network namespace's cookie"))?;
    let (source4, source6) = interface_sources(iface);
    Ok(Some(LocalTarget {
        path,
        dir,
        cgroup_id,
        settings: LocalSettings {
            netns_cookie,
            source4,
            source6,
        },
    }))
}

/// Attaches (or swaps in) the local-client programs for `target`, or
/// detaches them for `--no-local`; returns a note for `up`'s output.
pub(super) fn apply(
    ebpf: &mut Ebpf,
    layout: &PinLayout,
    maps: &mut PinnedMaps,
    target: Option<&LocalTarget>,
) -> Result<Option<String>> {
    let Some(target) = target else {
        // Off before detaching: a hook still running meanwhile leaves
        // sockets alone.
        maps.set_local_settings(&LocalSettings::default())?;
        let had_links = program_names::LOCAL
            .iter()
            .any(|program| layout.local_link(program).exists());
        remove_local_links(layout);
        return Ok(had_links.then(|| "local clients are no longer steered (--no-local)".to_owned()));
    };
    maps.set_local_settings(&target.settings)?;
    attach(ebpf, layout, &target.dir, target.cgroup_id)?;
    Ok(Some(format!(
        "local clients in this network namespace are steered (cgroup {})",
        target.path.display()
    )))
}

/// Loads the eight programs; swaps each in behind its pinned link where
/// that link is attached to this cgroup, and attaches the others afresh
/// (next to, never instead of, programs others attached there). Fresh
/// links are pinned only once all are attached: if one fails, dropping
/// the others detaches them, and nothing is left half-attached.
fn attach(ebpf: &mut Ebpf, layout: &PinLayout, cgroup: &File, cgroup_id: u64) -> Result<()> {
    let mut fresh = Vec::new();
    for name in program_names::LOCAL {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or_else(|| Error::Ebpf {
                action: format!("the eBPF object has no program {name}"),
                source: "object built from another version".into(),
            })?
            .try_into()
            .map_err(Error::ebpf(format!(
                "{name} is not a cgroup socket-address program"
            )))?;
        program
            .load()
            .map_err(Error::ebpf(format!("the kernel refused {name}")))?;
        let pin = layout.local_link(name);
        if pin.exists() && sys::pinned_link_cgroup(&pin).ok() == Some(cgroup_id) {
            let fd = program
                .fd()
                .map_err(Error::ebpf(format!("{name} has no descriptor")))?;
            sys::update_pinned_link(&pin, fd.as_fd())
                .map_err(Error::io(format!("cannot replace {name} in place")))?;
            continue;
        }
        // The kernel refuses flags on a cgroup bpf_link and always adds it
        // beside the programs already there (BPF_F_ALLOW_MULTI); aya only
        // falls back to a replacing BPF_PROG_ATTACH before 5.7, which
        // `prepare` refused.
        let id = program
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(Error::ebpf(format!("cannot attach {name} to the cgroup")))?;
        let link = program
            .take_link(id)
            .map_err(Error::ebpf(format!("cannot take the link of {name}")))?;
        let link = FdLink::try_from(link).map_err(Error::ebpf(
            "the kernel attached a cgroup program without a bpf_link (kernel older than 5.7?)",
        ))?;
        fresh.push((link, pin));
    }
    // All attached: only now does a link attached elsewhere (another
    // cgroup, or one that was removed) let go, so a failure above leaves the
    // old hooks in place.
    for (link, pin) in fresh {
        crate::pinned::unpin_link(&pin);
        link.pin(&pin)
            .map_err(Error::ebpf(format!("cannot pin {}", pin.display())))?;
    }
    Ok(())
}

/// A local socket the programs sent to a backend, still connected.
pub(super) struct LocalConnection {
    pub socket: PeerSocket,
    pub entry: LocalSocket,
}

/// The local connections of an instance, as far as this process sees.
pub(super) enum LocalSockets {
    /// Local clients are not steered (`--no-local`).
    Off,
    /// Steered in another network namespace than this process's: its
    /// sockets cannot be listed from here.
    Elsewhere,
    Here(Vec<LocalConnection>),
}

impl LocalSockets {
    /// Local connections of a service (by counter slot) per color; `None`
    /// unless they can be seen from here.
    pub fn count_by_color(&self, counter_slot: u32) -> Option<[u64; 2]> {
        let Self::Here(connections) = self else {
            return None;
        };
        let mut counts = [0; 2];
        for connection in connections {
            if connection.entry.counter_slot == counter_slot {
                counts[usize::from(connection.entry.color & 1)] += 1;
            }
        }
        Some(counts)
    }
}

/// The local connections of this instance: this network namespace's
/// connected sockets whose cookie and peer the programs recorded.
pub(super) fn local_sockets(maps: &PinnedMaps) -> Result<LocalSockets> {
    let settings = maps.local_settings()?;
    if settings.netns_cookie == 0 {
        return Ok(LocalSockets::Off);
    }
    let here =
        sys::netns_cookie().map_err(Error::io("cannot read this network namespace's cookie"))?;
    if settings.netns_cookie != here {
        return Ok(LocalSockets::Elsewhere);
    }
    let sockets =
        sockdiag::peer_sockets().map_err(Error::io("cannot list this namespace's sockets"))?;
    let mut found = Vec::new();
    for socket in sockets {
        let backend = to_wire(SocketAddr::new(socket.peer, socket.peer_port));
        let key = LocalSocketKey {
            cookie: socket.cookie,
            backend: backend.addr,
            backend_port: backend.port,
            reserved: [0; 6],
        };
        if let Some(entry) = maps.local_socket(&key)? {
            found.push(LocalConnection { socket, entry });
        }
    }
    Ok(LocalSockets::Here(found))
}

/// What a forced switch did to local connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalReset {
    /// Nothing to reset: a graceful change, or local clients not steered.
    NotApplicable,
    /// This many connections to the other color were reset.
    Reset(u64),
    /// Local clients are steered in another network namespace: run the
    /// command there to reset them.
    Elsewhere,
    /// Listing or resetting them failed (a kernel without
    /// `CONFIG_INET_DIAG_DESTROY`, say): they stay on the old color until
    /// they close.
    Failed(String),
}

/// Resets every local connection of the service that is not on `keep`:
/// what a forced switch does to them (the packet path moves remote
/// flows; a local socket's backend is fixed at connect time, so the
/// application must reconnect, and does so to `keep`).
pub(super) fn reset_other_colors(
    maps: &PinnedMaps,
    counter_slot: u32,
    keep: u8,
) -> Result<LocalReset> {
    let connections = match local_sockets(maps)? {
        LocalSockets::Off => return Ok(LocalReset::NotApplicable),
        LocalSockets::Elsewhere => return Ok(LocalReset::Elsewhere),
        LocalSockets::Here(connections) => connections,
    };
    // One that cannot be reset (closed meanwhile, say) must not spare the
    // others.
    let (mut reset, mut failed, mut first_error) = (0, 0, None);
    for connection in connections {
        if connection.entry.counter_slot != counter_slot || connection.entry.color == keep {
            continue;
        }
        match sockdiag::destroy(&connection.socket) {
            Ok(()) => reset += 1,
            Err(error) => {
                failed += 1;
                first_error.get_or_insert_with(|| {
                    format!(
                        "cannot reset the local connection to {}: {error}",
                        SocketAddr::new(connection.socket.peer, connection.socket.peer_port)
                    )
                });
            }
        }
    }
    Ok(match first_error {
        None => LocalReset::Reset(reset),
        Some(error) => LocalReset::Failed(format!("{reset} reset, {failed} not ({error})")),
    })
}

#[cfg(test)]
mod tests {
    use super::unescape_mount_path;

    #[test]
    fn mount_points_with_escaped_characters_read_back() {
        assert_eq!(unescape_mount_path("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape_mount_path("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_path("/mnt/a\\134b"), "/mnt/a\\b");
    }
}

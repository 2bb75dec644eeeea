//! The system calls bluegreen needs that aya does not offer:
//! `BPF_LINK_DETACH` of a pinned link, so that `down` returns with the
//! programs already gone (closing the last reference would only detach
//! them when the kernel's deferred release runs); the interface or cgroup
//! a pinned link is attached to, which aya's `LinkInfo` does not expose;
//! `BPF_LINK_UPDATE` for cgroup links, which aya cannot replace in place;
//! and the network namespace's cookie.

use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;
/// Not in the libc crate yet (Linux 5.14).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Issues `bpf(command, attr)`; `attr` is the `union bpf_attr` member (or
/// a prefix of it) that `command` reads.
fn bpf_syscall<T>(command: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    let size = size_of::<T>() as libc::c_uint;
    // SAFETY: every caller passes the attr layout its command reads, and
    // any pointer in it outlives the call.
    match unsafe { libc::syscall(libc::SYS_bpf, command, attr as *mut T, size) } {
        status if status < 0 => Err(io::Error::last_os_error()),
        fd_or_zero => Ok(fd_or_zero),
    }
}

/// `union bpf_attr`, the `BPF_OBJ_*` member.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens the link pinned at `path`.
fn open_pinned_link(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let mut get = ObjAttr {
        pathname: path.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf_syscall(BPF_OBJ_GET, &mut get)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Detaches the link pinned at `path` now. The pin itself stays; the caller
/// removes it.
pub(crate) fn detach_pinned_link(path: &Path) -> io::Result<()> {
    let link = open_pinned_link(path)?;
    let mut detach = [link.as_raw_fd() as u32, 0, 0, 0];
    bpf_syscall(BPF_LINK_DETACH, &mut detach).map(drop)
}

/// `union bpf_attr`, the `BPF_OBJ_GET_INFO_BY_FD` member.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_link_info`: after the ids, the first word of
/// the union member of the link's type, which is what a link is attached
/// to: the interface index (XDP and TCX links, a 32-bit field) or the
/// cgroup id (cgroup links). The kernel fills only as much as `info_len`
/// asks for.
#[repr(C, align(8))]
#[derive(Default)]
struct LinkInfoHead {
    /// Type, link id, program id.
    _ids: [u32; 3],
    _padding: u32,
    target: [u8; 8],
}

fn pinned_link_target(path: &Path) -> io::Result<[u8; 8]> {
    let link = open_pinned_link(path)?;
    let mut head = LinkInfoHead::default();
    let mut attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: size_of::<LinkInfoHead>() as u32,
        info: &mut head as *mut LinkInfoHead as u64,
    };
    bpf_syscall(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(head.target)
}

/// The interface index the link pinned at `path` is attached to; 0 once
/// that interface is gone (the kernel then severs the link, which stays
/// pinned but attached to nothing).
pub(crate) fn pinned_link_ifindex(path: &Path) -> io::Result<u32> {
    let [a, b, c, d, ..] = pinned_link_target(path)?;
    Ok(u32::from_ne_bytes([a, b, c, d]))
}

/// The id of the cgroup the link pinned at `path` is attached to; 0 once
/// that cgroup is gone.
pub(crate) fn pinned_link_cgroup(path: &Path) -> io::Result<u64> {
    pinned_link_target(path).map(u64::from_ne_bytes)
}

/// Swaps `program` in behind the link pinned at `path`, atomically: every
/// hook call runs either the old program or the new one.
pub(crate) fn update_pinned_link(path: &Path, program: BorrowedFd) -> io::Result<()> {
    let link = open_pinned_link(path)?;
    // link_fd, new_prog_fd, flags, old_prog_fd.
    let mut update = [link.as_raw_fd() as u32, program.as_raw_fd() as u32, 0, 0];
    bpf_syscall(BPF_LINK_UPDATE, &mut update).map(drop)
}

/// The cookie of the network namespace this process runs in: what
/// `bpf_get_netns_cookie` returns for its sockets.
pub(crate) fn netns_cookie() -> io::Result<u64> {
    // SAFETY: plain socket creation; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: the option writes at most `len` bytes into `cookie`.
    let status = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

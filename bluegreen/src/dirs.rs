//! Root-only directories (pins and state) and the `*at` calls inside them.
//!
//! bluegreen writes as root into these directories, so one that another
//! user owns or can write to, or a symlink planted in place of one, would
//! let that user redirect a write anywhere. Each directory is opened
//! without following a symlink in its place and refused before anything is
//! read or written there unless root owns it and nobody else can write to
//! it; the parents a command creates get the same check. Files inside are
//! then opened relative to the directory's descriptor, never by path.

use std::{
    ffi::{CString, OsStr},
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use crate::error::{Error, Result};

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(io::Error::other)
}

fn check_status(status: libc::c_int) -> io::Result<()> {
    if status < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)`; `dir` `None` is the
/// working directory.
pub(crate) fn openat(
    dir: Option<BorrowedFd<'_>>,
    name: &OsStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let name = c_name(name)?;
    let dir = dir.map_or(libc::AT_FDCWD, |dir| dir.as_raw_fd());
    // SAFETY: a valid C string; openat returns a new descriptor or -1.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    check_status(fd)?;
    // SAFETY: openat succeeded, so `fd` is a descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `renameat` within one directory: replaces `to` itself, never what a
/// symlink at `to` points to.
pub(crate) fn rename_in(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> io::Result<()> {
    let (from, to) = (c_name(from)?, c_name(to)?);
    let dir = dir.as_raw_fd();
    // SAFETY: valid C strings and a directory descriptor we hold.
    check_status(unsafe { libc::renameat(dir, from.as_ptr(), dir, to.as_ptr()) })
}

/// `unlinkat` of a non-directory; `Ok` if it was already gone.
pub(crate) fn remove_in(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: a valid C string and a directory descriptor we hold.
    match check_status(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only writes into `stat`.
    check_status(unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) })?;
    Ok(stat)
}

fn unsafe_dir(path: &Path, reason: impl Into<String>) -> Error {
    Error::UnsafeDirectory {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Refuses a directory that root does not own or that group or others can
/// write to.
fn check_private(path: &Path, dir: &OwnedFd) -> Result<()> {
    let stat =
        fstat(dir.as_fd()).map_err(Error::io(format!("cannot inspect {}", path.display())))?;
    if stat.st_uid != 0 {
        return Err(unsafe_dir(
            path,
            format!("is not owned by root (owner uid {})", stat.st_uid),
        ));
    }
    if stat.st_mode & 0o022 != 0 {
        return Err(unsafe_dir(
            path,
            format!(
                "is writable by group or others (mode {:04o})",
                stat.st_mode & 0o7777
            ),
        ));
    }
    Ok(())
}

const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// Turns a failed no-follow directory open into an error that says what
/// is in the way.
fn open_error(path: &Path, error: io::Error) -> Error {
    match error.raw_os_error() {
        Some(libc::ELOOP) => unsafe_dir(path, "is a symbolic link"),
        Some(libc::ENOTDIR) if path.is_symlink() => unsafe_dir(path, "is a symbolic link"),
        _ => Error::io(format!("cannot open directory {}", path.display()))(error),
    }
}

/// Opens the root-only directory at `path` (see the module comment). When
/// it does not exist: `None`, or with `create`, creates it (and missing
/// parents) with mode 0700. Parents that already exist are the operator's
/// choice and are only followed.
pub(crate) fn open_private_dir(path: &Path, create: bool) -> Result<Option<OwnedFd>> {
    match openat(None, path.as_os_str(), DIR_FLAGS, 0) {
        Ok(dir) => {
            check_private(path, &dir)?;
            return Ok(Some(dir));
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound && create => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(open_error(path, error)),
    }
    let cannot_create = || Error::io(format!("cannot create directory {}", path.display()));
    let name = path
        .file_name()
        .ok_or_else(|| cannot_create()(io::ErrorKind::InvalidInput.into()))?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let parent_dir = match openat(
        None,
        parent.as_os_str(),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    ) {
        Ok(dir) => dir,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            open_private_dir(parent, true)?.expect("created when missing")
        }
        Err(error) => return Err(cannot_create()(error)),
    };
    let name_c = c_name(name).map_err(cannot_create())?;
    // SAFETY: a valid C string and a directory descriptor we hold.
    let made = unsafe { libc::mkdirat(parent_dir.as_raw_fd(), name_c.as_ptr(), 0o700) };
    let created = match check_status(made) {
        Ok(()) => true,
        // Another command created it meanwhile: it is checked like any
        // existing one.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => false,
        Err(error) => return Err(cannot_create()(error)),
    };
    let dir = openat(Some(parent_dir.as_fd()), name, DIR_FLAGS, 0)
        .map_err(|error| open_error(path, error))?;
    if created {
        // The umask may have taken bits away; 0700 is the mode we mean.
        // SAFETY: fchmod on a descriptor we own.
        check_status(unsafe { libc::fchmod(dir.as_raw_fd(), 0o700) }).map_err(cannot_create())?;
    }
    check_private(path, &dir)?;
    Ok(Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        fs,
        os::unix::fs::{PermissionsExt, symlink},
        path::PathBuf,
    };

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bluegreen-dirs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    fn refusal(path: &Path, create: bool) -> String {
        match open_private_dir(path, create) {
            Err(Error::UnsafeDirectory { reason, .. }) => reason,
            other => panic!(
                "expected UnsafeDirectory for {}, got {other:?}",
                path.display()
            ),
        }
    }

    #[test]
    fn created_directories_and_their_parents_are_root_only() {
        let base = scratch("create");
        let nested = base.join("a").join("b");
        assert!(open_private_dir(&nested, false).unwrap().is_none());
        assert!(open_private_dir(&nested, true).unwrap().is_some());
        for dir in [base.join("a"), nested.clone()] {
            let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
        assert!(open_private_dir(&nested, false).unwrap().is_some());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn open_or_foreign_directories_and_symlinks_are_refused() {
        let base = scratch("hostile");
        let open = base.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(refusal(&open, true).contains("writable by group or others (mode 0777)"));
        assert_eq!(fs::read_dir(&open).unwrap().count(), 0, "left as it was");

        let foreign = base.join("foreign");
        fs::create_dir(&foreign).unwrap();
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        assert!(refusal(&foreign, false).contains("not owned by root (owner uid 65534)"));

        let target = base.join("target");
        fs::create_dir(&target).unwrap();
        let link = base.join("link");
        symlink(&target, &link).unwrap();
        assert_eq!(refusal(&link, true), "is a symbolic link");
        let dangling = base.join("dangling");
        symlink(base.join("nowhere"), &dangling).unwrap();
        assert_eq!(refusal(&dangling, true), "is a symbolic link");
        assert!(!base.join("nowhere").exists(), "nothing created through it");
        fs::remove_dir_all(&base).unwrap();
    }
}

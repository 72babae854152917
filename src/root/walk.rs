//! `openat2` with a fallback for where it is not allowed: a seccomp filter older than the call
//! (systemd's `SystemCallFilter=` on systemd < 247, some container runtimes' default profiles)
//! answers it with `ENOSYS`. Then the same resolution is done one component at a time with
//! `openat(O_PATH|O_NOFOLLOW)` from the starting directory, each step `fstat`ed, so the rules the
//! callers ask for hold all the same: no symlink anywhere on the way (`RESOLVE_NO_SYMLINKS`) and no
//! `..` out of the starting directory (`RESOLVE_IN_ROOT`, `RESOLVE_BENEATH`: any `..` is refused).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fstat};

/// Opens `path` relative to `dir` with `flags`, resolved as `resolve` says.
pub fn open(
    dir: impl AsFd,
    path: &Path,
    flags: OFlag,
    resolve: ResolveFlag,
) -> nix::Result<OwnedFd> {
    let how = OpenHow::new().flags(flags).resolve(resolve);
    match openat2(dir.as_fd(), path, how) {
        Err(Errno::ENOSYS) => walk(dir.as_fd(), path, flags, resolve),
        other => other,
    }
}

/// The component-by-component resolution, for when `openat2` is refused.
fn walk(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: OFlag,
    resolve: ResolveFlag,
) -> nix::Result<OwnedFd> {
    let no_links = resolve.contains(ResolveFlag::RESOLVE_NO_SYMLINKS);
    let confined = resolve.intersects(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_BENEATH);
    let mut names = Vec::new();
    let mut absolute = false;
    for c in path.components() {
        match c {
            Component::RootDir => absolute = true,
            Component::CurDir => {}
            Component::Normal(n) => names.push(n),
            // A walk that may not leave its start never goes up; one that may is rare enough
            // here (paths reach this module resolved) that it is refused as well.
            Component::ParentDir | Component::Prefix(_) => return Err(Errno::EXDEV),
        }
    }
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    // "/" starts at the filesystem root unless the walk is confined to `dir`.
    let mut cur: OwnedFd = if absolute && !confined {
        openat(nix::fcntl::AT_FDCWD, "/", dir_flags, Mode::empty())?
    } else {
        openat(dir, ".", dir_flags, Mode::empty())?
    };
    let Some((last, parents)) = names.split_last() else {
        return openat(&cur, ".", flags, Mode::empty());
    };
    for name in parents {
        let step = openat(
            &cur,
            *name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let kind = SFlag::from_bits_truncate(fstat(&step)?.st_mode) & SFlag::S_IFMT;
        cur = if kind == SFlag::S_IFDIR {
            step
        } else if kind == SFlag::S_IFLNK && !no_links && !confined {
            // Links may be followed: the kernel does it for this one step.
            openat(&cur, *name, dir_flags, Mode::empty())?
        } else if kind == SFlag::S_IFLNK {
            return Err(Errno::ELOOP);
        } else {
            return Err(Errno::ENOTDIR);
        };
    }
    if no_links {
        // The last name must be no link either (`O_PATH|O_NOFOLLOW` would open the link itself).
        let probe = openat(
            &cur,
            *last,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let kind = SFlag::from_bits_truncate(fstat(&probe)?.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFLNK {
            return Err(Errno::ELOOP);
        }
    }
    let flags = if no_links {
        flags | OFlag::O_NOFOLLOW
    } else {
        flags
    };
    openat(&cur, *last, flags, Mode::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::AT_FDCWD;

    fn walked(dir: &Path, rel: &str, resolve: ResolveFlag) -> nix::Result<OwnedFd> {
        let d = openat(
            AT_FDCWD,
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        walk(
            d.as_fd(),
            Path::new(rel),
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            resolve,
        )
    }

    #[test]
    fn the_walk_keeps_the_rules_openat2_would() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        std::fs::write(t.join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink("b", t.join("a/l")).unwrap();
        std::os::unix::fs::symlink("f", t.join("a/b/lf")).unwrap();
        let none = ResolveFlag::empty();
        let strict = ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_IN_ROOT;
        assert!(walked(t, "a/b/f", strict).is_ok());
        assert!(
            walked(t, "/a/b/f", strict).is_ok(),
            "in root, / is the start"
        );
        assert_eq!(walked(t, "a/l/f", strict).unwrap_err(), Errno::ELOOP);
        assert_eq!(walked(t, "a/b/lf", strict).unwrap_err(), Errno::ELOOP);
        assert_eq!(walked(t, "a/../a/b/f", strict).unwrap_err(), Errno::EXDEV);
        assert_eq!(walked(t, "a/b/nope", strict).unwrap_err(), Errno::ENOENT);
        // Without restrictions a link on the way is followed.
        assert!(walked(t, "a/l/f", none).is_ok());
        // And every answer agrees with openat2's on the same tree.
        for (rel, resolve) in [
            ("a/b/f", strict),
            ("a/l/f", strict),
            ("a/b/lf", strict),
            ("a/l/f", none),
        ] {
            let d = openat(
                AT_FDCWD,
                t,
                OFlag::O_PATH | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .unwrap();
            let how = OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
                .resolve(resolve);
            let kernel = openat2(d.as_fd(), Path::new(rel), how).map(|_| ());
            assert_eq!(
                walked(t, rel, resolve).map(|_| ()),
                kernel,
                "{rel} {resolve:?}"
            );
        }
    }
}

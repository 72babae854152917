//! The rotation lock: an exclusive `flock` on `<state>/lock`, held while a rotation, a recovery or
//! a restore runs, so two certrotd processes (two CLI runs, or the CLI and the daemon) never touch
//! the same files at once. The kernel drops it when the process dies, so a crash never leaves it
//! stuck.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{RotationError, StateDirs};

/// A held rotation lock; dropping it releases the lock.
#[derive(Debug)]
pub struct RotationLock {
    _lock: Flock<File>,
}

/// Takes the lock without waiting: a second invocation is told at once that another one runs.
/// Creates the state directory (0700: it will hold backups of private keys) if needed.
pub fn acquire(state: &StateDirs) -> Result<RotationLock, RotationError> {
    if !state.dir.is_dir() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state.dir)
            .map_err(RotationError::io("create state directory", &state.dir))?;
    }
    let path = state.lock();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(RotationError::io("open lock file", &path))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(RotationLock { _lock: lock }),
        Err((_, Errno::EWOULDBLOCK)) => Err(RotationError::Locked { path }),
        Err((_, errno)) => Err(RotationError::io("lock", &path)(errno.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_the_first_lets_go() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDirs {
            dir: tmp.path().join("state"),
        };
        let first = acquire(&state).unwrap();
        let err = acquire(&state).unwrap_err();
        assert!(matches!(err, RotationError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("lock"), "{err}");
        drop(first);
        acquire(&state).unwrap();
    }
}

//! Stage: the complete new content of every file a rotation installs, written into the rotation's
//! own `staged/` directory (0700, files 0600) and fsync'd before anything is installed, with a
//! SHA-256 per file recorded in the journal. Recovery rolls a rotation forward from here.
//!
//! Staged files are not renamed into place: they are new files in a new directory, and the digest
//! in the journal (written after them) is what proves one complete. A crash while staging leaves
//! a rotation the journal does not call staged, which recovery abandons.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use super::RotationError;
use super::build::Built;
use super::journal::{Change, is_staged_name};
use crate::failpoint::{self, Failpoint};
use crate::store;

/// The staged directory of a rotation directory.
pub fn dir(rotation_dir: &Path) -> PathBuf {
    rotation_dir.join("staged")
}

/// Writes every new file content of `built` into the staged directory and returns the changes to
/// record in the journal, files first, then symlinks.
pub fn persist(rotation_dir: &Path, built: &Built) -> Result<Vec<Change>, RotationError> {
    let staged = dir(rotation_dir);
    if staged.exists() {
        // Left by an earlier attempt of this very id, which the journal never called staged.
        std::fs::remove_dir_all(&staged)
            .map_err(RotationError::io("remove stale staged directory", &staged))?;
    }
    DirBuilder::new()
        .mode(0o700)
        .create(&staged)
        .map_err(RotationError::io("create staged directory", &staged))?;
    let mut changes = Vec::with_capacity(built.files.len() + built.links.len());
    for (i, f) in built.files.iter().enumerate() {
        let name = staged_name(i, &f.path);
        let path = staged.join(&name);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(RotationError::io("create staged file", &path))?;
        out.write_all(&f.contents)
            .and_then(|()| out.sync_all())
            .map_err(RotationError::io("write staged file", &path))?;
        failpoint::hit(Failpoint::StagedFile)?;
        changes.push(Change::File {
            path: f.path.clone(),
            staged: name,
            sha256: store::sha256_hex(&f.contents),
            new_mode: f.new_mode,
        });
    }
    store::fsync_dir(&staged)?;
    store::fsync_dir(rotation_dir)?;
    for (link, target) in &built.links {
        changes.push(Change::Symlink {
            path: link.clone(),
            target: target.clone(),
        });
    }
    Ok(changes)
}

/// Reads one staged content back, refusing it unless its digest is the journal's.
pub fn read(rotation_dir: &Path, change: &Change) -> Result<Option<Vec<u8>>, RotationError> {
    let Change::File {
        path,
        staged,
        sha256,
        ..
    } = change
    else {
        return Ok(None);
    };
    let staged_path = dir(rotation_dir).join(staged);
    let corrupt = || RotationError::StagedCorrupt {
        path: path.clone(),
        staged: staged_path.clone(),
    };
    if !is_staged_name(staged) {
        return Err(corrupt());
    }
    let data = std::fs::read(&staged_path).map_err(|_| corrupt())?;
    if !store::sha256_hex(&data).eq_ignore_ascii_case(sha256) {
        return Err(corrupt());
    }
    Ok(Some(data))
}

/// Reads and checks every staged content of a rotation (before rolling it forward).
pub fn read_all(
    rotation_dir: &Path,
    changes: &[Change],
) -> Result<Vec<Option<Vec<u8>>>, RotationError> {
    changes.iter().map(|c| read(rotation_dir, c)).collect()
}

/// Deletes the staged contents (they hold the new private keys) once they are no longer needed.
pub fn remove(rotation_dir: &Path) -> Result<(), RotationError> {
    let staged = dir(rotation_dir);
    match std::fs::remove_dir_all(&staged) {
        Ok(()) => store::fsync_dir(rotation_dir).map_err(Into::into),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RotationError::io("remove staged directory", &staged)(e)),
    }
}

/// `NNNN-<file name>`, named as backup copies are.
fn staged_name(index: usize, path: &Path) -> String {
    crate::store::stored_name(index, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::build::NewFile;

    #[test]
    fn staged_contents_round_trip_and_corruption_is_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let rot = tmp.path().join("r");
        std::fs::create_dir(&rot).unwrap();
        let built = Built {
            files: vec![NewFile {
                path: "/etc/kubernetes/pki/api server..key".into(),
                contents: b"new".to_vec().into(),
                new_mode: 0o600,
            }],
            links: vec![("/l".into(), "/t".into())],
            ..Built::default()
        };
        let changes = persist(&rot, &built).unwrap();
        assert_eq!(changes.len(), 2);
        let Change::File { staged, .. } = &changes[0] else {
            panic!("file first");
        };
        assert_eq!(staged, "0000-api_server__key");
        assert!(is_staged_name(staged));
        let all = read_all(&rot, &changes).unwrap();
        assert_eq!(all[0].as_deref(), Some(&b"new"[..]));
        assert!(all[1].is_none());

        std::fs::write(dir(&rot).join(staged), b"old").unwrap();
        assert!(matches!(
            read_all(&rot, &changes),
            Err(RotationError::StagedCorrupt { .. })
        ));
        remove(&rot).unwrap();
        assert!(!dir(&rot).exists());
        remove(&rot).unwrap();
    }
}

//! Reading a node file without following any link, and the digest recorded for what is read.

use std::io::{self, Read};
use std::path::Path;

use aws_lc_rs::digest;
use nix::fcntl::{AT_FDCWD, ResolveFlag};

use crate::root::fd::{self, Kind};

use super::{Result, StoreError, io_err};

/// Reads a regular file without following a link that may have replaced it.
pub(super) fn read_no_follow(path: &Path) -> Result<Vec<u8>> {
    match read_node_file(path)? {
        NodeFile::File(data) => Ok(data),
        NodeFile::Absent => Err(io_err("read", path)(io::ErrorKind::NotFound.into())),
        NodeFile::Other(found) => Err(StoreError::Unsupported {
            op: "read",
            path: path.to_path_buf(),
            found,
        }),
    }
}

/// What a node path holds, as [`read_node_file`] found it.
#[derive(PartialEq, Eq)]
pub enum NodeFile {
    /// Nothing.
    Absent,
    /// A regular file, with its content.
    File(Vec<u8>),
    /// Something else, never opened: a symlink (there or on the way), a device, FIFO, socket
    /// or directory.
    Other(&'static str),
}

impl std::fmt::Debug for NodeFile {
    // Node files hold private keys: never print the contents.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeFile::Absent => f.write_str("Absent"),
            NodeFile::File(d) => write!(f, "File({} bytes)", d.len()),
            NodeFile::Other(kind) => write!(f, "Other({kind})"),
        }
    }
}

/// Reads the node file at `path` following no link at all, neither on the way nor at the end,
/// and opening nothing but a regular file (its type is checked on an `O_PATH` handle first).
pub fn read_node_file(path: &Path) -> Result<NodeFile> {
    let no_links = ResolveFlag::RESOLVE_NO_SYMLINKS;
    let (mut file, seen) = match fd::open_regular(AT_FDCWD, path, false, no_links) {
        Ok(opened) => opened,
        Err(fd::OpenError::Missing) => return Ok(NodeFile::Absent),
        Err(fd::OpenError::Symlink) => return Ok(NodeFile::Other(Kind::Symlink.name())),
        Err(fd::OpenError::NotRegular(kind)) => return Ok(NodeFile::Other(kind.name())),
        Err(fd::OpenError::Io(e)) => return Err(io_err("open", path)(e)),
    };
    let mut data = Vec::with_capacity(usize::try_from(seen.size).unwrap_or(0));
    file.read_to_end(&mut data).map_err(io_err("read", path))?;
    Ok(NodeFile::File(data))
}

/// Hex SHA-256 of `data` (the digest manifests and rotation journals record).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data).as_ref())
}

//! Reading node files under a root with as few system calls as a large tree needs: each directory
//! is resolved once, and a file is opened without following links, falling back to the full
//! in-root resolution only when the file itself is a symlink.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::pki::pem::{self, ReadError};
use crate::pki::secret::SecretBytes;
use crate::root::Root;

/// Reads node paths under a root.
#[derive(Debug)]
pub struct NodeReader<'a> {
    /// The root.
    pub root: &'a Root,
    dirs: Mutex<HashMap<PathBuf, PathBuf>>,
}

impl<'a> NodeReader<'a> {
    /// A reader for `root`.
    pub fn new(root: &'a Root) -> Self {
        NodeReader {
            root,
            dirs: Mutex::new(HashMap::new()),
        }
    }

    /// Reads a node file: returns where it really is and its contents (or why not).
    pub fn read(&self, node: &Path) -> (PathBuf, Result<SecretBytes, ReadError>) {
        let candidate = match self.candidate(node) {
            Ok(c) => c,
            Err(e) => return (self.root.join(node), Err(io_error(node, e))),
        };
        match pem::read_capped_nofollow(&candidate) {
            Err(ReadError::Symlink { .. }) => match self.root.resolve(node) {
                Ok(real) => {
                    let data = pem::read_capped(&real);
                    (real, data)
                }
                Err(e) => (candidate, Err(io_error(node, e))),
            },
            other => (candidate, other),
        }
    }

    /// The real path of the node path's directory (resolved once) joined with its file name.
    fn candidate(&self, node: &Path) -> io::Result<PathBuf> {
        let (Some(parent), Some(name)) = (node.parent(), node.file_name()) else {
            return self.root.resolve(node);
        };
        let cached = self
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(parent)
            .cloned();
        let dir = match cached {
            Some(d) => d,
            None => {
                let d = self.root.resolve(parent)?;
                self.dirs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(parent.to_owned(), d.clone());
                d
            }
        };
        Ok(dir.join(name))
    }
}

fn io_error(node: &Path, source: io::Error) -> ReadError {
    ReadError::Io {
        path: node.to_owned(),
        source,
    }
}

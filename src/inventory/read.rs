//! Reading node files under a root without being led elsewhere. Each directory is resolved once
//! (following only root's links, see [`Root::resolve`]); each file is then opened in one `openat2`
//! step from the root with no link anywhere on the way, and its type is checked before a byte is
//! read, so a device node or FIFO is reported without being opened.
//!
//! A symlink in the last component is followed only where the layout keeps one (the kubelet's
//! `*-current.pem`), when the link and every directory above it belong to root and it points at
//! a file in its own directory. Any other link is refused and named as that file's problem:
//! whoever planted it wants certrotd to read, and later write, somewhere else.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{AT_FDCWD, ResolveFlag};

use crate::pki::layout;
use crate::pki::pem::{self, ReadError};
use crate::pki::secret::SecretBytes;
use crate::root::Root;
use crate::root::fd::trusted_owner;

/// Reads node paths under a root.
#[derive(Debug)]
pub struct NodeReader<'a> {
    /// The root.
    pub root: &'a Root,
    /// The root directory, which every open starts from.
    root_fd: Option<OwnedFd>,
    dirs: Mutex<HashMap<PathBuf, PathBuf>>,
}

impl<'a> NodeReader<'a> {
    /// A reader for `root`.
    pub fn new(root: &'a Root) -> Self {
        NodeReader {
            root,
            // The root is the operator's choice: the kernel may follow links to reach it.
            root_fd: crate::root::fd::open_dir(root.dir()).ok(),
            dirs: Mutex::new(HashMap::new()),
        }
    }

    /// Reads a node file: returns where it really is and its contents (or why not).
    pub fn read(&self, node: &Path) -> (PathBuf, Result<SecretBytes, ReadError>) {
        let (Some(parent), Some(name)) = (node.parent(), node.file_name()) else {
            let real = self.root.join(node);
            let data = self.read_real(&real);
            return (real, data);
        };
        let dir = match self.dir(parent) {
            Ok(d) => d,
            Err(e) => return (self.root.join(node), Err(io_error(node, e))),
        };
        let real = dir.join(name);
        match self.read_real(&real) {
            Err(ReadError::Symlink { .. }) => self.through_link(node, &dir, name),
            other => (real, other),
        }
    }

    /// Opens a real path (whose links were resolved already) with no link on the way.
    fn read_real(&self, real: &Path) -> Result<SecretBytes, ReadError> {
        let no_links = ResolveFlag::RESOLVE_NO_SYMLINKS;
        match (&self.root_fd, real.strip_prefix(self.root.dir())) {
            (Some(fd), Ok(rel)) if !rel.as_os_str().is_empty() => pem::read_capped_at(
                fd,
                rel,
                real,
                false,
                no_links | ResolveFlag::RESOLVE_IN_ROOT,
            ),
            _ => pem::read_capped_at(AT_FDCWD, real, real, false, no_links),
        }
    }

    /// The real path of the node path's directory, resolved once.
    fn dir(&self, parent: &Path) -> io::Result<PathBuf> {
        let cached = self
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(parent)
            .cloned();
        if let Some(d) = cached {
            return Ok(d);
        }
        let d = self.root.resolve(parent)?;
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(parent.to_owned(), d.clone());
        Ok(d)
    }

    /// A symlink stands at `dir/name`: read its target if the layout allows a link there, else
    /// refuse it, saying what it is.
    fn through_link(
        &self,
        node: &Path,
        dir: &Path,
        name: &OsStr,
    ) -> (PathBuf, Result<SecretBytes, ReadError>) {
        let link = dir.join(name);
        let refuse = |reason: String| {
            (
                link.clone(),
                Err(ReadError::Refused {
                    path: link.clone(),
                    reason,
                }),
            )
        };
        let (target, owner) = match std::fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&link) {
                Ok(t) => (t, m.uid()),
                Err(e) => return (link.clone(), Err(io_error(node, e))),
            },
            // The file itself is no link, so a directory on the way became one since it was
            // resolved.
            _ => {
                return refuse(
                    "a directory on its path became a symlink after it was resolved; not followed"
                        .into(),
                );
            }
        };
        if !trusted_owner(owner) {
            return refuse(format!(
                "symlink to {} owned by uid {owner}, refused: certrotd follows only links that \
                 belong to root",
                target.display()
            ));
        }
        if !layout::link_may_live_at(node) {
            return refuse(format!(
                "{}, refused: certrotd follows a link only where the layout keeps one (the \
                 kubelet's *-current.pem)",
                self.describe(node, &target)
            ));
        }
        if let Err(why) = self.root.owned_by_root_down_to(dir) {
            return refuse(format!("symlink to {}, refused: {why}", target.display()));
        }
        let Some(target_name) = same_dir_target(node, self.root.node_path(dir).as_deref(), &target)
        else {
            return refuse(format!(
                "symlink to {}, refused: it points outside its own directory",
                target.display()
            ));
        };
        let real = dir.join(target_name);
        match self.read_real(&real) {
            Err(ReadError::Symlink { .. }) => refuse(format!(
                "symlink to {}, refused: that is a symlink again",
                target.display()
            )),
            other => (real, other),
        }
    }

    /// What a refused link is, in the words operators search for (dangling, a loop, a device).
    fn describe(&self, node: &Path, target: &Path) -> String {
        match self.root.resolve(node) {
            Err(e) => format!("symlink to {} ({e})", target.display()),
            Ok(real) => match std::fs::symlink_metadata(&real) {
                Err(_) => format!("dangling symlink to {}", target.display()),
                Ok(m) => format!(
                    "symlink to {} (a {})",
                    target.display(),
                    kind_name(m.file_type())
                ),
            },
        }
    }
}

/// The file name a link at `node` points at, when its target is a plain file of the link's own
/// directory (named relatively, or absolutely by the node path of that directory).
fn same_dir_target<'t>(
    node: &Path,
    real_dir_node: Option<&Path>,
    target: &'t Path,
) -> Option<&'t OsStr> {
    let name = target.file_name()?;
    let mut parent = PathBuf::from("/");
    let base = if target.is_absolute() {
        Path::new("/")
    } else {
        node.parent()?
    };
    for c in base.join(target.parent()?).components() {
        match c {
            Component::Normal(p) => parent.push(p),
            Component::ParentDir => {
                parent.pop();
            }
            _ => {}
        }
    }
    let last_is_name = matches!(target.components().next_back(), Some(Component::Normal(_)));
    let same = Some(parent.as_path()) == node.parent() || Some(parent.as_path()) == real_dir_node;
    (last_is_name && same).then_some(name)
}

fn kind_name(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else {
        "regular file"
    }
}

fn io_error(node: &Path, source: io::Error) -> ReadError {
    ReadError::Io {
        path: node.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_targets_in_the_same_directory_are_accepted() {
        let node = Path::new("/var/lib/kubelet/pki/kubelet-client-current.pem");
        let ok = |t: &str| same_dir_target(node, None, Path::new(t)).map(|n| n.to_owned());
        assert_eq!(
            ok("kubelet-client-2026.pem").unwrap(),
            "kubelet-client-2026.pem"
        );
        assert!(ok("/var/lib/kubelet/pki/kubelet-client-2026.pem").is_some());
        assert!(ok("./kubelet-client-2026.pem").is_some());
        assert!(ok("../pki/kubelet-client-2026.pem").is_some());
        assert!(ok("/etc/kubernetes/pki/apiserver.key").is_none());
        assert!(ok("../kubelet-client-2026.pem").is_none());
        assert!(ok("sub/kubelet-client-2026.pem").is_none());
        assert!(ok("..").is_none());
        let real = Path::new("/data/kubelet/pki");
        assert!(same_dir_target(node, Some(real), Path::new("/data/kubelet/pki/x.pem")).is_some());
    }
}

//! Node paths under a root directory, so that certrotd can inspect a node image, a sandbox or a test
//! tree exactly as it inspects `/`.
//!
//! Symlinks on real nodes hold absolute node paths (`kubelet-client-current.pem` →
//! `/var/lib/kubelet/pki/kubelet-client-….pem`); following them with the host's resolver would leave
//! the root, so links are resolved here, component by component, and clamped inside the root.

use std::io;
use std::path::{Component, Path, PathBuf};

/// How many symlinks one resolution may follow before it is called a loop (Linux uses 40).
const MAX_LINKS: usize = 40;

/// A directory that stands for `/` of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    dir: PathBuf,
}

impl Root {
    /// A root at `dir` (`/` for the machine itself).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Root { dir: dir.into() }
    }

    /// The real directory that stands for `/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The real path of a node path, without following links.
    pub fn join(&self, node_path: impl AsRef<Path>) -> PathBuf {
        let mut out = self.dir.clone();
        for c in node_path.as_ref().components() {
            match c {
                Component::Normal(part) => out.push(part),
                Component::ParentDir if out != self.dir => {
                    out.pop();
                }
                _ => {}
            }
        }
        out
    }

    /// The node path of a real path inside the root (`None` when it lies outside).
    pub fn node_path(&self, real: &Path) -> Option<PathBuf> {
        real.strip_prefix(&self.dir)
            .ok()
            .map(|rel| Path::new("/").join(rel))
    }

    /// Resolves every symlink in a node path as the node would, never leaving the root.
    ///
    /// Returns the real path of the final target. A dangling link resolves to the path that does not
    /// exist (the caller's read reports it); a loop is an error.
    pub fn resolve(&self, node_path: impl AsRef<Path>) -> io::Result<PathBuf> {
        let mut pending: Vec<PathBuf> = Vec::new();
        push_components(&mut pending, node_path.as_ref());
        let mut current = PathBuf::from("/");
        let mut links = 0usize;
        while let Some(part) = pending.pop() {
            if part.as_os_str() == ".." {
                current.pop();
                continue;
            }
            let candidate = current.join(&part);
            let real = self.join(&candidate);
            match std::fs::symlink_metadata(&real) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(io::Error::other(format!(
                            "too many levels of symbolic links resolving {}",
                            node_path.as_ref().display()
                        )));
                    }
                    let target = std::fs::read_link(&real)?;
                    if target.is_absolute() {
                        current = PathBuf::from("/");
                    }
                    push_components(&mut pending, &target);
                }
                _ => current = candidate,
            }
        }
        Ok(self.join(&current))
    }
}

/// Pushes a path's parts onto a stack so that the first part is popped first.
fn push_components(stack: &mut Vec<PathBuf>, path: &Path) {
    let parts: Vec<PathBuf> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(PathBuf::from(p)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    stack.extend(parts.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn join_stays_inside_the_root() {
        let r = Root::new("/srv/node");
        assert_eq!(
            r.join("/etc/kubernetes/pki"),
            PathBuf::from("/srv/node/etc/kubernetes/pki")
        );
        assert_eq!(r.join("/../../etc"), PathBuf::from("/srv/node/etc"));
        assert_eq!(Root::new("/").join("/etc/x"), PathBuf::from("/etc/x"));
    }

    #[test]
    fn absolute_links_resolve_under_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = tmp.path().join("var/lib/kubelet/pki");
        std::fs::create_dir_all(&pki).unwrap();
        std::fs::write(pki.join("kubelet-client-2026.pem"), b"x").unwrap();
        symlink(
            "/var/lib/kubelet/pki/kubelet-client-2026.pem",
            pki.join("kubelet-client-current.pem"),
        )
        .unwrap();
        let r = Root::new(tmp.path());
        assert_eq!(
            r.resolve("/var/lib/kubelet/pki/kubelet-client-current.pem")
                .unwrap(),
            pki.join("kubelet-client-2026.pem")
        );
    }

    #[test]
    fn relative_and_escaping_links_are_clamped() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a")).unwrap();
        symlink("../../../../etc/passwd", tmp.path().join("a/link")).unwrap();
        let r = Root::new(tmp.path());
        assert_eq!(r.resolve("/a/link").unwrap(), tmp.path().join("etc/passwd"));
    }

    #[test]
    fn loops_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        symlink("/b", tmp.path().join("a")).unwrap();
        symlink("/a", tmp.path().join("b")).unwrap();
        let err = Root::new(tmp.path()).resolve("/a").unwrap_err();
        assert!(err.to_string().contains("too many levels"), "{err}");
    }
}

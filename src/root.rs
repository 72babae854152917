//! Node paths under a root directory, so that certrotd can inspect a node image, a sandbox or a test
//! tree exactly as it inspects `/`.
//!
//! Symlinks on real nodes hold absolute node paths (`kubelet-client-current.pem` →
//! `/var/lib/kubelet/pki/kubelet-client-….pem`); following them with the host's resolver would leave
//! the root, so links are resolved here, component by component, and clamped inside the root. Only
//! links owned by root (or by certrotd itself) are followed: anyone else's may have been planted to
//! lead certrotd's writes elsewhere. What is opened afterwards is opened through [`fd`], with no
//! link on the way, so a link planted after resolution is refused rather than followed.

pub mod fd;
pub mod walk;

use std::io;
use std::os::unix::fs::MetadataExt as _;
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
                // `..` never climbs above the root.
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
    /// exist (the caller's read reports it); a loop, or a link owned by anyone but root (or
    /// certrotd's own user), is an error.
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
                    if !fd::trusted_owner(meta.uid()) {
                        return Err(io::Error::other(format!(
                            "{} is a symlink owned by uid {}, not by root; it is not followed",
                            candidate.display(),
                            meta.uid()
                        )));
                    }
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

    /// Checks that the root and every directory from it down to `real_dir` belong to root (or to
    /// certrotd's own user), none of them a link: only then can nobody else swap what a link in
    /// `real_dir` points at. Returns why not.
    pub fn owned_by_root_down_to(&self, real_dir: &Path) -> Result<(), String> {
        let Ok(rel) = real_dir.strip_prefix(&self.dir) else {
            return Err(format!("{} is outside the node root", real_dir.display()));
        };
        let mut dir = self.dir.clone();
        let check = |dir: &Path| match std::fs::symlink_metadata(dir) {
            Ok(m) if !m.file_type().is_dir() => {
                Err(format!("{} is not a directory", dir.display()))
            }
            Ok(m) if !fd::trusted_owner(m.uid()) => Err(format!(
                "directory {} belongs to uid {}, not to root",
                dir.display(),
                m.uid()
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("cannot inspect {}: {e}", dir.display())),
        };
        check(&dir)?;
        for part in rel.components() {
            dir.push(part);
            check(&dir)?;
        }
        Ok(())
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
    fn links_of_other_users_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("real")).unwrap();
        symlink("/real", tmp.path().join("planted")).unwrap();
        let r = Root::new(tmp.path());
        assert_eq!(r.resolve("/planted/x").unwrap(), tmp.path().join("real/x"));
        r.owned_by_root_down_to(&tmp.path().join("real")).unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::lchown(tmp.path().join("planted"), Some(65534), Some(65534))
                .unwrap();
            let err = r.resolve("/planted/x").unwrap_err();
            assert!(err.to_string().contains("owned by uid 65534"), "{err}");
            std::os::unix::fs::chown(tmp.path().join("real"), Some(65534), None).unwrap();
            let err = r
                .owned_by_root_down_to(&tmp.path().join("real"))
                .unwrap_err();
            assert!(err.contains("belongs to uid 65534"), "{err}");
        }
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

//! node_exporter's textfile collector: a `.prom` file replaced atomically (temp file in the same
//! directory, fsync, rename, fsync the directory), without timestamps, which the collector
//! refuses. The temp file's name does not end in `.prom`, so the collector never reads it half
//! written.

use std::path::{Path, PathBuf};

/// The textfile could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing the metrics textfile {path}: {source}")]
pub struct TextfileError {
    /// The textfile's real path.
    pub path: PathBuf,
    /// What failed.
    #[source]
    pub source: crate::store::StoreError,
}

/// Replaces `path` with `text`. A new file is world-readable: node_exporter runs as its own user,
/// and the file holds nothing secret.
pub fn write(path: &Path, text: &str) -> Result<(), TextfileError> {
    crate::store::write_atomic(path, text.as_bytes(), 0o644).map_err(|source| TextfileError {
        path: path.to_owned(),
        source,
    })
}

//! `[inventory]`: what to watch beyond the layout's own files.

use std::path::Path;

use super::layer::{ConfigError, Origin, Sources, Val, over};
use super::validate::check_node_path;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// `[inventory]`: what to watch beyond the layout's own files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InventorySettings {
    /// Further certificate files: absolute node paths or glob patterns.
    pub extra_paths: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [inventory] table")]
pub(super) struct InventoryLayer {
    pub(super) extra_paths: Option<Val<Vec<Spanned<String>>>>,
}

impl InventoryLayer {
    pub(super) fn merge(&mut self, later: InventoryLayer, file: usize) {
        over(&mut self.extra_paths, later.extra_paths, file);
    }

    pub(super) fn resolve(&self, sources: &Sources) -> Result<InventorySettings, ConfigError> {
        let mut settings = InventorySettings::default();
        if let Some(paths) = &self.extra_paths {
            for path in &paths.value {
                let at = Origin {
                    file: paths.at.file,
                    span: path.span(),
                };
                let text = path.get_ref();
                check_node_path(Path::new(text))
                    .and_then(|()| glob::Pattern::new(text).map_err(|e| e.to_string()))
                    .map_err(|e| {
                        sources.invalid(&at, format!("inventory.extra_paths: {text:?}: {e}"))
                    })?;
                settings.extra_paths.push(text.clone());
            }
        }
        Ok(settings)
    }
}

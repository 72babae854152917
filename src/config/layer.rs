//! The file and drop-in machinery: each file read into a layer of optional values that remember
//! where they were written, merged key by key, and errors that name the file, line and column.

use std::fmt;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::{FileLayer, LoadOptions, Settings};
use crate::duration;

/// A place in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column (counted in characters), when the error has a place in the file.
    pub line_column: Option<(usize, usize)>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.line_column {
            write!(f, ":{line}:{column}")?;
        }
        Ok(())
    }
}

/// Why the configuration could not be loaded.
///
/// The underlying error is part of the message rather than a `source()`, so that printing the
/// chain does not say it twice.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration file or the drop-in directory could not be read.
    #[error("reading {what} {}: {error}", path.display())]
    Read {
        /// What was being read: "config file", "drop-in directory", ...
        what: &'static str,
        /// The path that could not be read.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// A file's syntax, a value's type, an unknown key, or a value that breaks a rule.
    #[error("{}{message}", at.as_ref().map(|at| format!("{at}: ")).unwrap_or_default())]
    Invalid {
        /// Where the offending value was written; `None` when it came from the command line,
        /// the machine or the defaults.
        at: Option<Location>,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// Where the offending value was written, if it was written in a file.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { at, .. } => at.as_ref(),
        }
    }
}

/// Makes a path absolute without resolving symlinks, so that `sources` and a relative `root`
/// follow the path the operator gave.
pub(super) fn absolute(path: &Path, what: &'static str) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path).map_err(|error| ConfigError::Read {
        what,
        path: path.to_path_buf(),
        error,
    })
}

/// The drop-ins in `dir`, in lexical order of their names; none if `dir` does not exist.
pub(super) fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let read_error = |error| ConfigError::Read {
        what: "drop-in directory",
        path: dir.to_path_buf(),
        error,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(read_error(error)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry.map_err(read_error)?.file_name();
        let bytes = name.as_encoded_bytes();
        // Hidden names are editors' leftovers, e.g. emacs's `.#10-x.toml` lock links.
        if bytes.starts_with(b".") || !bytes.ends_with(b".toml") {
            continue;
        }
        let path = dir.join(&name);
        // Follows symlinks: drop-ins are often links into a config-management tree, and a
        // dangling one is an error worth seeing rather than a drop-in silently missing.
        let metadata = fs::metadata(&path).map_err(|error| ConfigError::Read {
            what: "drop-in",
            path: path.clone(),
            error,
        })?;
        if metadata.is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names.into_iter().map(|name| dir.join(name)).collect())
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// Where a value was written: which file (an index into the files read) and which bytes.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    pub(super) file: usize,
    pub(super) span: Range<usize>,
}

/// A value as a file wrote it, and where.
#[derive(Debug, Clone)]
pub(super) struct Val<T> {
    pub(super) value: T,
    pub(super) at: Origin,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Val<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<T>::deserialize(deserializer)?;
        Ok(Val {
            // Deserialization cannot know the file; `over` sets it when the layer is merged.
            at: Origin {
                file: usize::MAX,
                span: spanned.span(),
            },
            value: spanned.into_inner(),
        })
    }
}

/// Merges one key: a value the later file wrote replaces the earlier one.
pub(super) fn over<T>(slot: &mut Option<Val<T>>, later: Option<Val<T>>, file: usize) {
    if let Some(mut value) = later {
        value.at.file = file;
        *slot = Some(value);
    }
}

/// A duration as written; parsed during resolution, where the error can name the key.
#[derive(Debug, Clone)]
pub(super) struct DurationText(pub(super) String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a duration such as "30d" or "1d 12h""#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DurationText, E> {
                Ok(DurationText(s.to_owned()))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// One side of a rule between two durations: key, value, and where it was set (`None`: default).
pub(super) struct Side<'a> {
    pub(super) key: &'static str,
    pub(super) value: Duration,
    pub(super) at: Option<&'a Origin>,
}

impl<'a> Side<'a> {
    pub(super) fn new<T>(key: &'static str, value: Duration, written: &'a Option<Val<T>>) -> Self {
        Side {
            key,
            value,
            at: written.as_ref().map(|v| &v.at),
        }
    }
}

/// The files read, with their text, to turn spans into lines and columns.
#[derive(Default)]
pub(super) struct Sources {
    pub(super) files: Vec<(PathBuf, String)>,
}

/// The longest value each duration key accepts. Certificate times get the global bound (100
/// years, see [`duration::MAX`]); waits and timeouts a day at most, since a restart or a lease
/// that takes longer is a fault, not a setting; the jitter a month, as it only spreads a fleet's
/// renewals out.
pub(super) fn duration_limit(key: &str) -> Duration {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    match key {
        "restart.job_timeout" | "restart.reload_period" | "probe.timeout" | "lease.ttl" => DAY,
        "policy.jitter" => DAY * 30,
        _ => duration::MAX,
    }
}

impl Sources {
    pub(super) fn add(&mut self, path: PathBuf, bytes: Vec<u8>) -> Result<(), ConfigError> {
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = e.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]);
            ConfigError::Invalid {
                at: Some(Location {
                    file: path.clone(),
                    line_column: Some(line_column(&prefix, valid)),
                }),
                message: "not UTF-8, which TOML requires".to_owned(),
            }
        })?;
        self.files.push((path, text));
        Ok(())
    }

    /// Parses every file, merges them in order (later files win) and validates the result.
    pub(super) fn settle(&self, opts: &LoadOptions) -> Result<Settings, ConfigError> {
        let mut merged = FileLayer::default();
        for (index, (path, text)) in self.files.iter().enumerate() {
            let layer: FileLayer = toml::from_str(text).map_err(|e| ConfigError::Invalid {
                at: Some(Location {
                    file: path.clone(),
                    line_column: e.span().map(|span| line_column(text, span.start)),
                }),
                message: e.message().trim_end().to_owned(),
            })?;
            merged.merge(layer, index);
        }
        self.resolve(&merged, opts)
    }

    pub(super) fn location(&self, at: &Origin) -> Location {
        let (file, text) = &self.files[at.file];
        Location {
            file: file.clone(),
            line_column: Some(line_column(text, at.span.start)),
        }
    }

    pub(super) fn invalid(&self, at: &Origin, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            at: Some(self.location(at)),
            message: message.into(),
        }
    }

    pub(super) fn duration(
        &self,
        key: &str,
        written: &Option<Val<DurationText>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(written) = written else {
            return Ok(default);
        };
        let text = &written.value.0;
        duration::parse_at_most(text, duration_limit(key)).map_err(|e| {
            self.invalid(
                &written.at,
                format!("{key}: invalid duration {text:?}: {e}"),
            )
        })
    }

    /// Requires `shorter` to be strictly shorter than `longer`.
    ///
    /// The error points at whichever of the two was written last, since that is the edit that
    /// broke the rule (e.g. a drop-in raising `renew_before` past the main file's
    /// `notify_before`), and names where the other one came from.
    pub(super) fn ensure_shorter(
        &self,
        shorter: Side,
        longer: Side,
        why: &str,
    ) -> Result<(), ConfigError> {
        if shorter.value < longer.value {
            return Ok(());
        }
        let last_written = |side: &Side| side.at.map(|at| (at.file, at.span.start));
        let blame_longer = last_written(&longer) > last_written(&shorter);
        let describe = |side: &Side, blamed: bool| {
            let written = format!("{} = {:?}", side.key, duration::format(side.value));
            match side.at {
                _ if blamed => written,
                Some(at) => format!("{written} (set at {})", self.location(at)),
                None => format!("{written} (the default)"),
            }
        };
        let blamed = if blame_longer { &longer } else { &shorter };
        Err(ConfigError::Invalid {
            at: blamed.at.map(|at| self.location(at)),
            message: format!(
                "{} must be shorter than {}: {why}",
                describe(&shorter, !blame_longer),
                describe(&longer, blame_longer)
            ),
        })
    }
}

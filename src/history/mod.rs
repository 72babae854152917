//! Activity records: each rotation as Initiated, then Success or Failed, with node, time,
//! certificates and reason, kept in `<state_dir>/history.jsonl`.
//!
//! The file is append-only JSON lines, one whole record per line; a later line with
//! the same id is that record's newer state, so an update is an append and never rewrites what a
//! crash could then tear. Each append is fsync'd. A crash mid-append leaves a torn last line,
//! and anything else that is not a record (an editor's leftovers, a bad disk block) is skipped
//! and counted, never fatal: losing one record must not lose the others.
//!
//! The file is bounded: once it has more than [`COMPACT_AFTER`] lines, it is rewritten
//! atomically with the latest state of the newest [`KEEP`] records.
//!
//! The methods do blocking file I/O; from async code call them through `spawn_blocking`.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use time::OffsetDateTime;

use crate::config::Settings;
use crate::store::{self, PathIo, StoreError};

mod line;
mod record;

pub use record::{Record, State};

/// The file's name inside the state directory.
pub const FILE_NAME: &str = "history.jsonl";

/// Records kept when the file is compacted.
pub const KEEP: usize = 1000;

/// Lines the file may reach before it is compacted.
pub const COMPACT_AFTER: usize = 2000;

/// Mode of a new history file: nothing secret in it, but only root writes it.
const FILE_MODE: u32 = 0o640;

/// Mode of the state directory if the history is the first to need it: the state directory
/// also holds backups with private keys.
const STATE_DIR_MODE: u32 = 0o700;

/// Errors of the history; each names the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A filesystem call failed.
    #[error(transparent)]
    Io(#[from] PathIo),
    /// The atomic rewrite (compaction) failed.
    #[error("cannot compact {}", path.display())]
    Compact {
        /// The history file.
        path: PathBuf,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// A record's id is not a valid rotation id.
    #[error("cannot record in {}", path.display())]
    InvalidId {
        /// The history file.
        path: PathBuf,
        /// Why the id was refused.
        #[source]
        source: StoreError,
    },
    /// `update` named a record the history does not have.
    #[error("cannot update {}: no record with id {id:?}", path.display())]
    UnknownId {
        /// The history file.
        path: PathBuf,
        /// The id.
        id: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> HistoryError + 'a {
    move |source| PathIo::at(op, path)(source).into()
}

/// What [`History::read`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryRead {
    /// The latest state of each record, newest first (by when the record first appeared).
    pub records: Vec<Record>,
    /// Lines that were not records (a torn last line, garbage) and were skipped.
    pub skipped: usize,
}

/// What is known of the file's end, so appends need not re-read it.
#[derive(Debug, Clone, Copy)]
struct Tail {
    lines: usize,
    /// Whether the file ends with a newline (or is empty): if not, the last line is torn and the
    /// next record must start on a line of its own.
    clean_end: bool,
}

/// The history file of one node.
#[derive(Debug)]
pub struct History {
    path: PathBuf,
    keep: usize,
    compact_after: usize,
    /// Serialises writers within the process and caches the file's tail; `None` until the first
    /// append reads it, and again after an error leaves it unknown.
    tail: Mutex<Option<Tail>>,
}

impl History {
    /// The history at `path`, bounded by [`KEEP`] and [`COMPACT_AFTER`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        History {
            path: path.into(),
            keep: KEEP,
            compact_after: COMPACT_AFTER,
            tail: Mutex::new(None),
        }
    }

    /// The history in the settings' state directory, inside the root.
    pub fn for_settings(settings: &Settings) -> Self {
        History::new(settings.in_root(&settings.state_dir).join(FILE_NAME))
    }

    /// Other bounds: keep `keep` records when the file passes `compact_after` lines.
    pub fn with_bounds(mut self, keep: usize, compact_after: usize) -> Self {
        self.keep = keep.max(1);
        self.compact_after = compact_after.max(self.keep);
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a new rotation as Initiated at `now`, and returns the record.
    pub fn start(
        &self,
        id: &str,
        node: &str,
        certificates: Vec<String>,
        reason: Option<String>,
        now: OffsetDateTime,
    ) -> Result<Record, HistoryError> {
        let record = Record::initiated(id, node, certificates, reason, now);
        self.append(&record)?;
        Ok(record)
    }

    /// Moves record `id` to `state` at `now` (Success and Failed set `finished_at`); a `reason`
    /// replaces the one recorded (e.g. why it failed). Returns the new state of the record.
    pub fn update(
        &self,
        id: &str,
        state: State,
        reason: Option<String>,
        now: OffsetDateTime,
    ) -> Result<Record, HistoryError> {
        let current = read_latest(&self.path)?
            .0
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| HistoryError::UnknownId {
                path: self.path.clone(),
                id: id.to_owned(),
            })?;
        let record = Record {
            state,
            finished_at: match state {
                State::Initiated => None,
                State::Success | State::Failed => Some(now),
            },
            reason: reason.or(current.reason.clone()),
            ..current
        };
        self.append(&record)?;
        Ok(record)
    }

    /// Appends a state of a record: a new record, or the newer state of one with the same id
    /// (the last line for an id wins). Durable when it returns.
    pub fn append(&self, record: &Record) -> Result<(), HistoryError> {
        store::validate_rotation_id(&record.id).map_err(|source| HistoryError::InvalidId {
            path: self.path.clone(),
            source,
        })?;
        let mut guard = self.tail.lock().unwrap_or_else(|poisoned| {
            // The cache may be wrong after a panic mid-append: forget it.
            let mut guard = poisoned.into_inner();
            *guard = None;
            guard
        });
        // Unknown until this append succeeds.
        let tail = match guard.take() {
            Some(tail) => tail,
            None => self.read_tail()?,
        };
        let mut line = Vec::with_capacity(256);
        if !tail.clean_end {
            // Ends the torn line, which stays behind as one skipped line.
            line.push(b'\n');
        }
        serde_json::to_writer(&mut line, &line::Line::from(record))
            .map_err(|e| io_err("encode a record for", &self.path)(e.into()))?;
        line.push(b'\n');
        self.write_line(&line)?;
        let appended = Tail {
            lines: tail.lines + 1,
            clean_end: true,
        };
        *guard = Some(if appended.lines > self.compact_after {
            // The record is durable already: a failed compaction costs only the bound, and is
            // tried again on the next append.
            self.compact().unwrap_or_else(|e| {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(e)),
                    "history not compacted"
                );
                appended
            })
        } else {
            appended
        });
        Ok(())
    }

    fn write_line(&self, line: &[u8]) -> Result<(), HistoryError> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let created = !self.path.exists();
        if created {
            DirBuilder::new()
                .recursive(true)
                .mode(STATE_DIR_MODE)
                .create(dir)
                .map_err(io_err("create the state directory", dir))?;
        }
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(FILE_MODE)
            .open(&self.path)
            .map_err(io_err("open", &self.path))?;
        // One write of the whole line: with O_APPEND a reader sees it whole or torn at the end,
        // never interleaved.
        file.write_all(line)
            .and_then(|()| file.sync_data())
            .map_err(io_err("append to", &self.path))?;
        if created {
            // The new file's name must survive a crash as well as its first line.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("fsync directory", dir))?;
        }
        Ok(())
    }

    /// Counts the file's lines and checks how it ends.
    fn read_tail(&self) -> Result<Tail, HistoryError> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Tail {
                    lines: 0,
                    clean_end: true,
                });
            }
            Err(e) => return Err(io_err("open", &self.path)(e)),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_err("read", &self.path))?;
        let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
        let clean_end = bytes.last().is_none_or(|&b| b == b'\n');
        Ok(Tail {
            lines: newlines + usize::from(!clean_end),
            clean_end,
        })
    }

    /// Rewrites the file with the latest state of the newest `keep` records, oldest first.
    fn compact(&self) -> Result<Tail, HistoryError> {
        let (mut records, skipped) = read_latest(&self.path)?;
        // `read_latest` is oldest first.
        let drop = records.len().saturating_sub(self.keep);
        records.drain(..drop);
        let mut text = Vec::with_capacity(records.len() * 256);
        for record in &records {
            serde_json::to_writer(&mut text, &line::Line::from(record))
                .map_err(|e| io_err("encode a record for", &self.path)(e.into()))?;
            text.push(b'\n');
        }
        store::write_atomic(&self.path, &text, FILE_MODE).map_err(|source| {
            HistoryError::Compact {
                path: self.path.clone(),
                source,
            }
        })?;
        tracing::info!(
            path = %self.path.display(),
            kept = records.len(),
            dropped = drop,
            skipped,
            "history compacted"
        );
        Ok(Tail {
            lines: records.len(),
            clean_end: true,
        })
    }

    /// The latest state of at most `limit` records, newest first. A missing file is an empty
    /// history.
    pub fn read(&self, limit: Option<usize>) -> Result<HistoryRead, HistoryError> {
        let (mut records, skipped) = read_latest(&self.path)?;
        if skipped > 0 {
            tracing::warn!(
                path = %self.path.display(),
                skipped,
                "history lines that are not records were skipped"
            );
        }
        records.reverse();
        if let Some(limit) = limit {
            records.truncate(limit);
        }
        Ok(HistoryRead { records, skipped })
    }
}

/// The latest state of every record, oldest first (by first appearance), and how many lines
/// were skipped.
fn read_latest(path: &Path) -> Result<(Vec<Record>, usize), HistoryError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    let mut records: Vec<Record> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut skipped = 0;
    for line in bytes.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Some(record) = line::Line::parse(line) else {
            skipped += 1;
            continue;
        };
        match index.get(&record.id) {
            Some(&at) => records[at] = record,
            None => {
                index.insert(record.id.clone(), records.len());
                records.push(record);
            }
        }
    }
    Ok((records, skipped))
}

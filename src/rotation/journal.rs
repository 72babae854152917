//! The rotation journal: `<state>/rotations/<id>/journal.json`, rewritten atomically before each
//! step, so that after a crash the next start knows which step a rotation had reached and what
//! every one of its files should hold.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{RotationError, StateDirs};
use crate::pki::layout::Component;
use crate::store;

/// Journal format version, so a future format is detected instead of misread.
pub const VERSION: u32 = 1;
/// The journal's file name inside a rotation's directory.
pub const FILE: &str = "journal.json";
/// Largest journal read: one lists a few dozen paths; anything near this was not written by
/// certrotd and is not read whole.
pub const MAX_BYTES: u64 = 1024 * 1024;

/// Where a rotation stands. Each phase is written before the step it names begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Planned: the paths to touch are known; the backup may be incomplete; nothing installed.
    Planned,
    /// Every path is backed up; nothing installed.
    BackedUp,
    /// Every new content is staged and its digest recorded; nothing installed.
    Staged,
    /// Installing: any subset of the changes may be in place.
    Installing,
    /// Every change is installed and was read back. Final.
    Committed,
    /// Restoring the backup: any subset of the paths may be back.
    RollingBack,
    /// Every path holds what it held before the rotation (or the rotation never changed any). Final.
    RolledBack,
}

impl Phase {
    /// Whether the rotation is over (nothing left to recover).
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Committed | Phase::RolledBack)
    }

    /// The name written in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Planned => "planned",
            Phase::BackedUp => "backed-up",
            Phase::Staged => "staged",
            Phase::Installing => "installing",
            Phase::Committed => "committed",
            Phase::RollingBack => "rolling-back",
            Phase::RolledBack => "rolled-back",
        }
    }
}

/// One change a rotation makes, as staged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    /// The file at `path` gets the staged content (owner and mode of a file being replaced are
    /// kept; a new file gets `new_mode`).
    File {
        /// Real path.
        path: PathBuf,
        /// Name of the staged content in the rotation's `staged/` directory.
        staged: String,
        /// Hex SHA-256 of the staged content.
        sha256: String,
        /// Mode for a file that does not exist yet.
        new_mode: u32,
    },
    /// The symlink at `path` is swapped to point at `target`.
    Symlink {
        /// Real path of the link.
        path: PathBuf,
        /// What the link says (a node path).
        target: PathBuf,
    },
}

impl Change {
    /// The path changed.
    pub fn path(&self) -> &Path {
        match self {
            Change::File { path, .. } | Change::Symlink { path, .. } => path,
        }
    }
}

/// A rotation's journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Format version.
    pub version: u32,
    /// The rotation id (the directory's name and the backup's).
    pub id: String,
    /// When the rotation started.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The step reached.
    pub phase: Phase,
    /// The certificates renewed, by inventory name.
    pub certificates: Vec<String>,
    /// Components to restart once it is committed (or rolled back after being installed).
    pub consumers: Vec<Component>,
    /// Every path the rotation touches (real paths), known from the plan on.
    pub paths: Vec<PathBuf>,
    /// The staged changes, in install order (empty before phase `staged`).
    #[serde(default)]
    pub changes: Vec<Change>,
    /// Why it was rolled back, or what recovery did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
}

/// How a rotation ended (or what recovery made of it). Written in the journal as the sentence
/// [`Display`](fmt::Display) gives, so journals of older versions, which wrote free text, still
/// load, and a newer version's sentence this one does not know is kept as [`Outcome::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Given up by the run itself before anything was installed.
    Abandoned {
        /// What made it fail.
        why: String,
    },
    /// Given up by recovery: a crash (or a refusal) stopped it before anything was installed.
    AbandonedInterrupted {
        /// Why it could not go on.
        why: String,
    },
    /// The run restored the backup after installing some of the changes.
    RolledBack {
        /// What made it fail.
        why: String,
    },
    /// Recovery restored the backup (empty `why`: it found the rotation rolling back already).
    RolledBackInterrupted {
        /// Why it could not be rolled forward.
        why: String,
    },
    /// Recovery installed what the crash had left out and committed it.
    RolledForward,
    /// An operator (`certrotd restore`) or the daemon put the backup back after the commit.
    RestoredOnRequest,
    /// A sentence this version does not know (written by a newer certrotd), kept as it is.
    Other(String),
}

impl Outcome {
    const ABANDONED: &'static str = "abandoned before installing anything: ";
    const ABANDONED_INTERRUPTED: &'static str = "abandoned by recovery: ";
    const ROLLED_BACK: &'static str = "rolled back: ";
    const ROLLED_BACK_INTERRUPTED: &'static str = "rolled back by recovery";
    const ROLLED_FORWARD: &'static str = "rolled forward by recovery";
    const RESTORED: &'static str = "restored on request";

    /// Reads the sentence a journal holds (any version's).
    pub fn parse(s: &str) -> Outcome {
        let why = |rest: &str| rest.to_owned();
        if let Some(rest) = s.strip_prefix(Self::ABANDONED) {
            Outcome::Abandoned { why: why(rest) }
        } else if let Some(rest) = s.strip_prefix(Self::ABANDONED_INTERRUPTED) {
            Outcome::AbandonedInterrupted { why: why(rest) }
        } else if let Some(rest) = s.strip_prefix(Self::ROLLED_BACK) {
            Outcome::RolledBack { why: why(rest) }
        } else if s == Self::ROLLED_BACK_INTERRUPTED {
            Outcome::RolledBackInterrupted { why: String::new() }
        } else if let Some(rest) = s
            .strip_prefix(Self::ROLLED_BACK_INTERRUPTED)
            .and_then(|r| r.strip_prefix(": "))
        {
            Outcome::RolledBackInterrupted { why: why(rest) }
        } else if s == Self::ROLLED_FORWARD {
            Outcome::RolledForward
        } else if s == Self::RESTORED {
            Outcome::RestoredOnRequest
        } else {
            Outcome::Other(s.to_owned())
        }
    }

    /// Whether the rotation was given up before it installed anything (so no component can
    /// have read a new file, and no backup is worth keeping).
    pub fn is_abandoned(&self) -> bool {
        matches!(
            self,
            Outcome::Abandoned { .. } | Outcome::AbandonedInterrupted { .. }
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Abandoned { why } => write!(f, "{}{why}", Self::ABANDONED),
            Outcome::AbandonedInterrupted { why } => {
                write!(f, "{}{why}", Self::ABANDONED_INTERRUPTED)
            }
            Outcome::RolledBack { why } => write!(f, "{}{why}", Self::ROLLED_BACK),
            Outcome::RolledBackInterrupted { why } if why.is_empty() => {
                f.write_str(Self::ROLLED_BACK_INTERRUPTED)
            }
            Outcome::RolledBackInterrupted { why } => {
                write!(f, "{}: {why}", Self::ROLLED_BACK_INTERRUPTED)
            }
            Outcome::RolledForward => f.write_str(Self::ROLLED_FORWARD),
            Outcome::RestoredOnRequest => f.write_str(Self::RESTORED),
            Outcome::Other(s) => f.write_str(s),
        }
    }
}

impl Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Outcome, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Outcome::parse(&s))
    }
}

impl Journal {
    /// A new journal in phase `planned`.
    pub fn new(
        id: &str,
        created_at: OffsetDateTime,
        certificates: Vec<String>,
        consumers: Vec<Component>,
        paths: Vec<PathBuf>,
    ) -> Journal {
        Journal {
            version: VERSION,
            id: id.to_owned(),
            created_at,
            phase: Phase::Planned,
            certificates,
            consumers,
            paths,
            changes: Vec::new(),
            outcome: None,
        }
    }

    /// Whether the rotation may have installed something, so that its consumers may have read
    /// a new file: false only while it is before installing, or once it was abandoned (closed
    /// before installing anything).
    pub fn installed_anything(&self) -> bool {
        match self.phase {
            Phase::Planned | Phase::BackedUp | Phase::Staged => false,
            Phase::Installing | Phase::Committed | Phase::RollingBack => true,
            Phase::RolledBack => !self.outcome.as_ref().is_some_and(Outcome::is_abandoned),
        }
    }

    /// Reads the journal of the rotation directory `dir`; `None` when there is none (a crash
    /// before the first write).
    pub fn load(dir: &Path) -> Result<Option<Journal>, RotationError> {
        let path = dir.join(FILE);
        let bad = |reason: String| RotationError::Journal {
            path: path.to_owned(),
            reason,
        };
        // Never through a link someone planted, never a device, never more than MAX_BYTES.
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc_flags())
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RotationError::io("read rotation journal", &path)(e)),
        };
        let meta = file
            .metadata()
            .map_err(RotationError::io("inspect rotation journal", &path))?;
        if !meta.file_type().is_file() {
            return Err(bad("it is not a regular file".into()));
        }
        if meta.len() > MAX_BYTES {
            return Err(bad(format!(
                "it is {} bytes, more than the {MAX_BYTES} a journal may have",
                meta.len()
            )));
        }
        let mut data = Vec::new();
        file.take(MAX_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(RotationError::io("read rotation journal", &path))?;
        Self::parse(&path, &data).map(Some)
    }

    /// Reads and validates the journal text `data` of the file `path`
    /// (`<state>/rotations/<id>/journal.json`: the id it must name is the directory's).
    pub fn parse(path: &Path, data: &[u8]) -> Result<Journal, RotationError> {
        let bad = |reason: String| RotationError::Journal {
            path: path.to_owned(),
            reason,
        };
        let j: Journal = serde_json::from_slice(data).map_err(|e| bad(e.to_string()))?;
        if j.version != VERSION {
            return Err(bad(format!("unknown journal version {}", j.version)));
        }
        let dir_name = path
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if j.id != dir_name {
            return Err(bad(format!(
                "it belongs to rotation {:?}, not {dir_name:?}",
                j.id
            )));
        }
        for p in j
            .paths
            .iter()
            .map(PathBuf::as_path)
            .chain(j.changes.iter().map(Change::path))
        {
            if !p.is_absolute() {
                return Err(bad(format!("path {} is not absolute", p.display())));
            }
        }
        for c in &j.changes {
            if let Change::File { staged, .. } = c
                && !is_staged_name(staged)
            {
                return Err(bad(format!(
                    "staged name {staged:?} is not one certrotd writes"
                )));
            }
        }
        Ok(j)
    }

    /// Writes the journal atomically into the rotation directory `dir` (mode 0600).
    pub fn save(&self, dir: &Path) -> Result<(), RotationError> {
        let path = dir.join(FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|e| RotationError::Journal {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        store::write_atomic(&path, &json, 0o600)?;
        Ok(())
    }

    /// Moves to `phase` and makes that durable before returning.
    pub fn advance(&mut self, dir: &Path, phase: Phase) -> Result<(), RotationError> {
        self.phase = phase;
        self.save(dir)
    }
}

/// `O_NOFOLLOW | O_NONBLOCK`: a link at the journal's place is refused by the kernel, and opening
/// a FIFO planted there does not hang recovery (the regular-file check then refuses it).
fn libc_flags() -> i32 {
    (nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits()
}

/// Could certrotd have named a staged file so? (Guards against a journal edited to point outside.)
pub fn is_staged_name(name: &str) -> bool {
    !name.is_empty()
        && name.as_bytes()[0].is_ascii_digit()
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The rotation directories under the state directory, oldest id first (ids start with the time).
pub fn list(state: &StateDirs) -> Result<Vec<(String, PathBuf)>, RotationError> {
    let dir = state.rotations();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RotationError::io("list rotations in", &dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(RotationError::io("list rotations in", &dir))?;
        let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Anything not named like a rotation is not ours; leave it alone.
        if store::validate_rotation_id(&id).is_err() || !entry.path().is_dir() {
            continue;
        }
        out.push((id, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// A rotation that is not over: until recovery finishes or undoes it, its files may be a mix of
/// old and new (a certificate installed, its key not yet), which the inventory sees as problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRotation {
    /// The rotation id.
    pub id: String,
    /// The step it reached.
    pub phase: Phase,
    /// The certificates it renews, by inventory name.
    pub certificates: Vec<String>,
    /// Every path it touches (real paths).
    pub paths: Vec<PathBuf>,
    /// The components to restart once it is finished.
    pub consumers: Vec<Component>,
}

/// The rotations not yet final, oldest first. A journal that cannot be read is skipped: recovery
/// quarantines it, and it must not make anything due (its paths cannot be trusted).
pub fn open(state: &StateDirs) -> Vec<OpenRotation> {
    list(state)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(_, dir)| Journal::load(&dir).ok().flatten())
        .filter(|j| !j.phase.is_final())
        .map(|j| OpenRotation {
            id: j.id,
            phase: j.phase,
            certificates: j.certificates,
            paths: j.paths,
            consumers: j.consumers,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_validation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("20260101T000000Z-abcdef");
        std::fs::create_dir(&dir).unwrap();
        assert!(Journal::load(&dir).unwrap().is_none());
        let mut j = Journal::new(
            "20260101T000000Z-abcdef",
            time::macros::datetime!(2026-01-01 0:00 UTC),
            vec!["apiserver".into()],
            vec![Component::KubeApiserver],
            vec!["/etc/kubernetes/pki/apiserver.crt".into()],
        );
        j.changes.push(Change::File {
            path: "/etc/kubernetes/pki/apiserver.crt".into(),
            staged: "0000-apiserver.crt".into(),
            sha256: "00".into(),
            new_mode: 0o644,
        });
        j.advance(&dir, Phase::Staged).unwrap();
        let back = Journal::load(&dir).unwrap().unwrap();
        assert_eq!(back, j);
        let text = std::fs::read_to_string(dir.join(FILE)).unwrap();
        assert!(text.contains("\"phase\": \"staged\""), "{text}");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let tampered = text.replace("0000-apiserver.crt", "../../../etc/shadow");
        std::fs::write(dir.join(FILE), tampered).unwrap();
        let err = Journal::load(&dir).unwrap_err();
        assert!(err.to_string().contains("staged name"), "{err}");

        let other = tmp.path().join("20260101T000000Z-000000");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join(FILE), text).unwrap();
        let err = Journal::load(&other).unwrap_err();
        assert!(err.to_string().contains("belongs to rotation"), "{err}");
    }

    #[test]
    fn outcomes_of_every_version_load_and_round_trip() {
        let old = [
            (
                "abandoned before installing anything: injected failure",
                Outcome::Abandoned {
                    why: "injected failure".into(),
                },
            ),
            (
                "abandoned by recovery: interrupted before anything was installed",
                Outcome::AbandonedInterrupted {
                    why: "interrupted before anything was installed".into(),
                },
            ),
            (
                "rolled back: the key does not match",
                Outcome::RolledBack {
                    why: "the key does not match".into(),
                },
            ),
            (
                "rolled back by recovery: staged content x is missing or corrupt",
                Outcome::RolledBackInterrupted {
                    why: "staged content x is missing or corrupt".into(),
                },
            ),
            (
                "rolled back by recovery",
                Outcome::RolledBackInterrupted { why: String::new() },
            ),
            ("rolled forward by recovery", Outcome::RolledForward),
            ("restored on request", Outcome::RestoredOnRequest),
            (
                "something a newer version says",
                Outcome::Other("something a newer version says".into()),
            ),
        ];
        for (text, outcome) in old {
            assert_eq!(Outcome::parse(text), outcome, "{text}");
            assert_eq!(outcome.to_string(), text);
            let json = serde_json::to_string(&outcome).unwrap();
            assert_eq!(json, serde_json::to_string(text).unwrap());
            assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), outcome);
        }
    }

    fn journal_text(id: &str, phase: &str, outcome: Option<&str>) -> String {
        let outcome = outcome.map_or(String::new(), |o| format!(r#","outcome":"{o}""#));
        format!(
            r#"{{"version":1,"id":"{id}","created_at":"2026-01-01T00:00:00Z","phase":"{phase}",
               "certificates":["apiserver"],"consumers":[],"paths":["/pki/apiserver.crt"]{outcome}}}"#
        )
    }

    #[test]
    fn a_journal_of_an_older_version_says_whether_it_installed_anything() {
        let tmp = tempfile::tempdir().unwrap();
        let cases = [
            ("staged", None, false),
            ("installing", None, true),
            ("committed", Some("rolled forward by recovery"), true),
            (
                "rolled-back",
                Some("abandoned before installing anything: x"),
                false,
            ),
            ("rolled-back", Some("abandoned by recovery: y"), false),
            ("rolled-back", Some("rolled back: z"), true),
            ("rolled-back", Some("restored on request"), true),
            ("rolled-back", None, true),
        ];
        for (i, (phase, outcome, installed)) in cases.into_iter().enumerate() {
            let id = format!("20260101T000000Z-{i:06}");
            let dir = tmp.path().join(&id);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join(FILE), journal_text(&id, phase, outcome)).unwrap();
            let j = Journal::load(&dir).unwrap().unwrap();
            assert_eq!(j.installed_anything(), installed, "{phase} {outcome:?}");
        }
    }

    #[test]
    fn a_journal_that_is_a_link_or_too_large_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("20260101T000000Z-abcdef");
        std::fs::create_dir(&dir).unwrap();
        let elsewhere = tmp.path().join("elsewhere.json");
        std::fs::write(
            &elsewhere,
            journal_text("20260101T000000Z-abcdef", "staged", None),
        )
        .unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join(FILE)).unwrap();
        assert!(Journal::load(&dir).is_err());
        std::fs::remove_file(dir.join(FILE)).unwrap();
        let big = vec![b' '; MAX_BYTES as usize + 1];
        std::fs::write(dir.join(FILE), big).unwrap();
        let err = Journal::load(&dir).unwrap_err().to_string();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn open_lists_unfinished_rotations_only() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDirs {
            dir: tmp.path().to_owned(),
        };
        assert!(open(&state).is_empty());
        for (id, phase) in [
            ("20260101T000000Z-000001", "committed"),
            ("20260101T000000Z-000002", "installing"),
            ("20260101T000000Z-000003", "rolled-back"),
            ("20260101T000000Z-000004", "staged"),
        ] {
            let dir = state.rotation(id);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(FILE), journal_text(id, phase, None)).unwrap();
        }
        let bad = state.rotation("20260101T000000Z-000005");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join(FILE), "{ not json").unwrap();
        let open = open(&state);
        let ids: Vec<(&str, Phase)> = open.iter().map(|o| (o.id.as_str(), o.phase)).collect();
        assert_eq!(
            ids,
            [
                ("20260101T000000Z-000002", Phase::Installing),
                ("20260101T000000Z-000004", Phase::Staged)
            ]
        );
        assert_eq!(open[0].certificates, ["apiserver"]);
        assert_eq!(open[0].paths, [PathBuf::from("/pki/apiserver.crt")]);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn any_component() -> impl Strategy<Value = Component> {
            prop::sample::select(vec![
                Component::KubeApiserver,
                Component::KubeControllerManager,
                Component::KubeScheduler,
                Component::Etcd,
                Component::Kubelet,
                Component::Rke2,
                Component::K3s,
            ])
        }

        fn any_phase() -> impl Strategy<Value = Phase> {
            prop::sample::select(vec![
                Phase::Planned,
                Phase::BackedUp,
                Phase::Staged,
                Phase::Installing,
                Phase::Committed,
                Phase::RollingBack,
                Phase::RolledBack,
            ])
        }

        /// Absolute paths, with any characters a file name may hold.
        fn any_path() -> impl Strategy<Value = PathBuf> {
            prop::collection::vec("[^/\\x00]{1,12}", 1..5)
                .prop_map(|parts| PathBuf::from(format!("/{}", parts.join("/"))))
        }

        fn any_change() -> impl Strategy<Value = Change> {
            prop_oneof![
                (
                    any_path(),
                    "[0-9][0-9A-Za-z._-]{0,20}",
                    "[0-9a-f]{64}",
                    0..0o7777u32
                )
                    .prop_map(|(path, staged, sha256, new_mode)| Change::File {
                        path,
                        staged: staged.replace("..", "._"),
                        sha256,
                        new_mode,
                    }),
                (any_path(), any_path())
                    .prop_map(|(path, target)| Change::Symlink { path, target }),
            ]
        }

        /// Times from year 1 to 9999 (what RFC 3339 can write), to the nanosecond, at any
        /// whole-minute offset.
        fn any_time() -> impl Strategy<Value = OffsetDateTime> {
            (
                -62_135_596_800i64..253_402_214_400,
                0..1_000_000_000u32,
                -(23 * 60 + 59)..=(23 * 60 + 59i32),
            )
                .prop_filter_map("out of range", |(s, n, off)| {
                    let offset = time::UtcOffset::from_whole_seconds(off * 60).ok()?;
                    let t = OffsetDateTime::from_unix_timestamp(s).ok()?
                        + time::Duration::nanoseconds(i64::from(n));
                    let local = t.to_offset(offset);
                    (1..=9999).contains(&local.year()).then_some(local)
                })
        }

        fn any_journal() -> impl Strategy<Value = Journal> {
            (
                "[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}",
                any_time(),
                any_phase(),
                prop::collection::vec("\\PC{0,16}", 0..4),
                prop::collection::vec(any_component(), 0..4),
                prop::collection::vec(any_path(), 0..4),
                prop::collection::vec(any_change(), 0..4),
                prop::option::of("\\PC{0,40}").prop_map(|o| o.map(|o| Outcome::parse(&o))),
            )
                .prop_map(
                    |(id, created_at, phase, certificates, consumers, paths, changes, outcome)| {
                        Journal {
                            version: VERSION,
                            id,
                            created_at,
                            phase,
                            certificates,
                            consumers,
                            paths,
                            changes,
                            outcome,
                        }
                    },
                )
        }

        proptest! {
            #[test]
            fn written_then_read_is_identity(j in any_journal()) {
                // What save writes, read back as load reads it.
                let json = serde_json::to_vec_pretty(&j).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let path = Path::new("/state/rotations").join(&j.id).join(FILE);
                let back = Journal::parse(&path, &json);
                prop_assert!(back.is_ok(), "{:?}", back);
                let back = back.unwrap_or_else(|_| j.clone());
                prop_assert_eq!(&back, &j);
                prop_assert_eq!(back.created_at.offset(), j.created_at.offset());
            }
        }

        proptest! {
            // Each case writes and syncs a file: fewer of them.
            #![proptest_config(ProptestConfig::with_cases(32))]

            #[test]
            fn saved_then_loaded_is_identity(j in any_journal()) {
                let tmp = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
                let dir = tmp.path().join(&j.id);
                std::fs::create_dir(&dir).map_err(|e| TestCaseError::fail(e.to_string()))?;
                j.save(&dir).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let back = Journal::load(&dir).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(back, Some(j));
            }
        }
    }
}

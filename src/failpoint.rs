//! Failpoints: named places in a rotation where a test can make the process die, to prove that
//! recovery leaves every rotation all-old or all-new whatever the moment of the crash.
//!
//! Compiled in only with the cargo feature `failpoints` (`cargo test --features failpoints`); in
//! any other build [`hit`] is an empty inline function, so a production binary cannot be made to
//! crash by its environment. With the feature:
//!
//! - `CERTROTD_FAILPOINT=NAME` or `NAME:N` aborts the process (`std::process::abort`, as abrupt as
//!   a crash gets without pulling the power) at the first, or the N-th, time `NAME` is reached;
//! - `CERTROTD_FAILPOINT=NAME:N:error` makes that step fail with an error instead (a full disk, an
//!   I/O error), so the in-process error paths (abandon, roll back) are exercised at every step;
//! - `CERTROTD_FAILPOINT_TRACE=FILE` appends the name of every failpoint reached to FILE, one a
//!   line, so a test can enumerate each occurrence and crash at every one in turn.
//!
//! Every failpoint is a variant of [`Failpoint`], declared once in the list below; [`Failpoint::ALL`]
//! is generated from the same list, so a new failpoint cannot be left out of the crash tests.

/// The environment variable naming the failpoint to abort at (`NAME` or `NAME:N`).
pub const ENV: &str = "CERTROTD_FAILPOINT";
/// The environment variable naming a file that every failpoint reached is appended to.
pub const TRACE_ENV: &str = "CERTROTD_FAILPOINT_TRACE";

macro_rules! failpoints {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// A place in a rotation where a crash can be injected.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Failpoint {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Failpoint {
            /// Every failpoint, in the order a rotation reaches them.
            pub const ALL: &'static [Failpoint] = &[$(Failpoint::$variant,)*];

            /// The name used in `CERTROTD_FAILPOINT`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Failpoint::$variant => $name,)*
                }
            }
        }
    };
}

failpoints! {
    /// The journal exists (phase planned); nothing else does.
    JournalPlanned = "journal-planned",
    /// The backup directory and its empty manifest exist.
    BackupCreated = "backup-created",
    /// One more file has been saved in the backup (once per file).
    BackupSaved = "backup-saved",
    /// The journal says every file is backed up.
    JournalBackedUp = "journal-backed-up",
    /// One more new file content has been staged (once per file).
    StagedFile = "staged-file",
    /// The journal records every staged content and its digest.
    JournalStaged = "journal-staged",
    /// The journal says installing has begun; nothing is installed yet.
    JournalInstalling = "journal-installing",
    /// One more file or symlink has been installed (once per change).
    Installed = "installed",
    /// Every change is installed and read back; the journal does not say committed yet.
    InstalledVerified = "installed-verified",
    /// The journal says committed; the staged keys are still there.
    JournalCommitted = "journal-committed",
    /// The staged keys are gone; old backups are not pruned yet.
    StagedRemoved = "staged-removed",
    /// Old backups have been pruned.
    Pruned = "pruned",
    /// Recovery rolling forward has installed one more change (once per change).
    RecoverInstalled = "recover-installed",
    /// The journal says rolling back; the backup is not restored yet.
    JournalRollingBack = "journal-rolling-back",
    /// The backup has been restored; the journal does not say rolled back yet.
    Restored = "restored",
}

/// The error a failpoint set to `error` makes its step fail with.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("injected failure at failpoint {0}")]
pub struct Injected(pub &'static str);

/// Marks that `point` has been reached: records it in the trace, and aborts or fails if it is the
/// one asked for.
#[cfg(feature = "failpoints")]
pub fn hit(point: Failpoint) -> Result<(), Injected> {
    armed::hit(point)
}

/// Marks that `point` has been reached (does nothing: built without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_point: Failpoint) -> Result<(), Injected> {
    Ok(())
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::collections::HashMap;
    use std::io::Write as _;
    use std::sync::{Mutex, OnceLock};

    use super::{ENV, Failpoint, Injected, TRACE_ENV};

    /// The failpoint asked for: name, occurrence, and whether to fail rather than abort.
    struct Target {
        name: String,
        n: u32,
        error: bool,
    }

    /// Parses `NAME[:N[:error]]`, once.
    fn target() -> Option<&'static Target> {
        static TARGET: OnceLock<Option<Target>> = OnceLock::new();
        TARGET
            .get_or_init(|| {
                let spec = std::env::var(ENV).ok()?;
                let mut parts = spec.split(':');
                Some(Target {
                    name: parts.next()?.to_owned(),
                    n: parts.next().and_then(|n| n.parse().ok()).unwrap_or(1),
                    error: parts.next() == Some("error"),
                })
            })
            .as_ref()
    }

    pub(super) fn hit(point: Failpoint) -> Result<(), Injected> {
        static COUNTS: OnceLock<Mutex<HashMap<Failpoint, u32>>> = OnceLock::new();
        let count = {
            let mut counts = COUNTS
                .get_or_init(Default::default)
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let c = counts.entry(point).or_insert(0);
            *c += 1;
            *c
        };
        if let Ok(trace) = std::env::var(TRACE_ENV) {
            // A test harness reads this; failing to write it must not change what is tested.
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(trace)
            {
                let _ = writeln!(f, "{}", point.name());
            }
        }
        match target() {
            Some(t) if t.name == point.name() && t.n == count && t.error => {
                eprintln!("certrotd: failpoint {}:{} reached, failing", t.name, t.n);
                Err(Injected(point.name()))
            }
            Some(t) if t.name == point.name() && t.n == count => {
                eprintln!("certrotd: failpoint {}:{} reached, aborting", t.name, t.n);
                std::process::abort();
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Failpoint;

    #[test]
    fn names_are_unique_and_kebab_case() {
        let mut seen = std::collections::HashSet::new();
        for p in Failpoint::ALL {
            assert!(seen.insert(p.name()), "{} twice", p.name());
            assert!(
                p.name()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{}",
                p.name()
            );
        }
    }
}

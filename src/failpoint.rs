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
//! - `CERTROTD_FAILPOINT=NAME:N:pause` stops the thread there until the file named by
//!   `CERTROTD_FAILPOINT_RELEASE` exists, so a test can act (send SIGTERM) while a rotation is
//!   provably half-way, then let it go on;
//! - `CERTROTD_FAILPOINT_TRACE=FILE` appends the name of every failpoint reached to FILE, one a
//!   line, so a test can enumerate each occurrence and crash at every one in turn.
//!
//! Sabotage is separate from the crash points: `CERTROTD_SABOTAGE=wrong-key:NAME` makes a rotation
//! install, for certificate NAME, a private key that does not match the new certificate, *after*
//! the rotation's own self-checks passed. The component then really cannot use what was
//! installed, which is how the daemon's probe, rollback and second restart are tested against a
//! real etcd.
//!
//! Every failpoint is a variant of [`Failpoint`], declared once in the list below; [`Failpoint::ALL`]
//! is generated from the same list, so a new failpoint cannot be left out of the crash tests.

/// The environment variable naming the failpoint to abort at (`NAME` or `NAME:N`).
pub const ENV: &str = "CERTROTD_FAILPOINT";
/// The environment variable naming a file that every failpoint reached is appended to.
pub const TRACE_ENV: &str = "CERTROTD_FAILPOINT_TRACE";
/// The environment variable naming the file whose existence releases a paused failpoint.
pub const RELEASE_ENV: &str = "CERTROTD_FAILPOINT_RELEASE";
/// The environment variable naming a certificate whose renewal is sabotaged (`wrong-key:NAME`).
pub const SABOTAGE_ENV: &str = "CERTROTD_SABOTAGE";

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
    /// A CA rotation step has written the node's files (up or down a level); nothing is proved,
    /// recorded or restarted yet. Reached by the daemon-driven CA tests, not by a leaf rotation.
    CaStepInstalled = "ca-step-installed",
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

/// Whether `CERTROTD_SABOTAGE=wrong-key:NAME` asks to install a mismatched key for certificate
/// `name`.
#[cfg(feature = "failpoints")]
pub fn wrong_key(name: &str) -> bool {
    std::env::var(SABOTAGE_ENV).is_ok_and(|s| s.strip_prefix("wrong-key:") == Some(name))
}

/// Whether to install a mismatched key for `name` (never: built without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn wrong_key(_name: &str) -> bool {
    false
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::collections::HashMap;
    use std::io::Write as _;
    use std::sync::{Mutex, OnceLock};

    use super::{ENV, Failpoint, Injected, RELEASE_ENV, TRACE_ENV};

    /// What happens at the failpoint asked for.
    #[derive(PartialEq, Eq)]
    enum Action {
        Abort,
        Error,
        Pause,
    }

    /// The failpoint asked for: name, occurrence, and what to do there.
    struct Target {
        name: String,
        n: u32,
        action: Action,
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
                    action: match parts.next() {
                        Some("error") => Action::Error,
                        Some("pause") => Action::Pause,
                        _ => Action::Abort,
                    },
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
            Some(t) if t.name == point.name() && t.n == count => match t.action {
                Action::Error => {
                    eprintln!("certrotd: failpoint {}:{} reached, failing", t.name, t.n);
                    Err(Injected(point.name()))
                }
                Action::Pause => {
                    eprintln!("certrotd: failpoint {}:{} reached, pausing", t.name, t.n);
                    pause();
                    eprintln!("certrotd: failpoint {}:{} released", t.name, t.n);
                    Ok(())
                }
                Action::Abort => {
                    eprintln!("certrotd: failpoint {}:{} reached, aborting", t.name, t.n);
                    std::process::abort();
                }
            },
            _ => Ok(()),
        }
    }

    /// Blocks until the release file exists. Polling is fine here: only a test build pauses, and
    /// the test decides when the rotation may go on.
    fn pause() {
        let Some(release) = std::env::var_os(RELEASE_ENV) else {
            // Nothing could ever release it: going on is better than hanging a test forever.
            eprintln!("certrotd: {RELEASE_ENV} is not set; not pausing");
            return;
        };
        while !std::path::Path::new(&release).exists() {
            std::thread::sleep(std::time::Duration::from_millis(10));
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

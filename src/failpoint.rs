//! Failpoints: named places where a test makes certrotd fail, the one fault-injection mechanism
//! of the crate. The crash-recovery tests use them to prove that recovery leaves every rotation
//! all-old or all-new whatever the moment of the crash; the store's unit tests use them to act in
//! the middle of an atomic write (fail it, look at its temp file, swap the destination as another
//! process could).
//!
//! Armed only with the cargo feature `failpoints` (`cargo test --features failpoints`) and in the
//! crate's own unit tests; in any other build [`hit`] and [`hit_on`] are empty inline functions,
//! so a production binary cannot be made to fail by its environment. Armed, a point does, in
//! order:
//!
//! - the in-process actions registered for it on this thread with [`on`] (a unit test's closure:
//!   it is given the point's subject, the temp file of a write step, and may fail the step);
//! - what the environment asks:
//!   - `CERTROTD_FAILPOINT=NAME` or `NAME:N` aborts the process (`std::process::abort`, as abrupt
//!     as a crash gets without pulling the power) at the first, or the N-th, time `NAME` is
//!     reached;
//!   - `CERTROTD_FAILPOINT=NAME:N:error` makes that step fail with an error instead (a full disk,
//!     an I/O error), so the in-process error paths (abandon, roll back) are exercised at every
//!     step;
//!   - `CERTROTD_FAILPOINT=NAME:N:pause` stops the thread there until the file named by
//!     `CERTROTD_FAILPOINT_RELEASE` exists, so a test can act (send SIGTERM) while a rotation is
//!     provably half-way, then let it go on;
//!   - `CERTROTD_FAILPOINT_TRACE=FILE` appends the name of every rotation point reached to FILE,
//!     one a line, so a test can enumerate each occurrence and crash at every one in turn.
//!
//! Sabotage is separate from the crash points: `CERTROTD_SABOTAGE=wrong-key:NAME` makes a rotation
//! install, for certificate NAME, a private key that does not match the new certificate, *after*
//! the rotation's own self-checks passed. The component then really cannot use what was
//! installed, which is how the daemon's probe, rollback and second restart are tested against a
//! real etcd.
//!
//! Every failpoint is a variant of [`Failpoint`], declared once in the list below;
//! [`Failpoint::ROTATION`] and [`Failpoint::WRITE`] are generated from the same list, so a new
//! rotation point cannot be left out of the crash tests.

use std::path::PathBuf;

/// The environment variable naming the failpoint to abort at (`NAME` or `NAME:N`).
pub const ENV: &str = "CERTROTD_FAILPOINT";
/// The environment variable naming a file that every rotation point reached is appended to.
pub const TRACE_ENV: &str = "CERTROTD_FAILPOINT_TRACE";
/// The environment variable naming the file whose existence releases a paused failpoint.
pub const RELEASE_ENV: &str = "CERTROTD_FAILPOINT_RELEASE";
/// The environment variable naming a certificate whose renewal is sabotaged (`wrong-key:NAME`).
pub const SABOTAGE_ENV: &str = "CERTROTD_SABOTAGE";

macro_rules! failpoints {
    (
        rotation { $($(#[doc = $rdoc:literal])* $rotation:ident = $rname:literal,)* }
        write { $($(#[doc = $wdoc:literal])* $write:ident = $wname:literal,)* }
    ) => {
        /// A place where a fault can be injected.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Failpoint {
            $($(#[doc = $rdoc])* $rotation,)*
            $($(#[doc = $wdoc])* $write,)*
        }

        impl Failpoint {
            /// Every step of a rotation, in the order a rotation reaches them: the points the
            /// crash tests crash at, and the ones the trace lists.
            pub const ROTATION: &'static [Failpoint] = &[$(Failpoint::$rotation,)*];

            /// The steps of one atomic write, reached for every file the store writes. The trace
            /// leaves them out: to the journal a crash inside a write is a crash between two
            /// rotation points (start-up sweeps the temp file), and listing them would multiply
            /// the crash cases by the files written.
            pub const WRITE: &'static [Failpoint] = &[$(Failpoint::$write,)*];

            /// The name used in `CERTROTD_FAILPOINT`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Failpoint::$rotation => $rname,)*
                    $(Failpoint::$write => $wname,)*
                }
            }

            /// Whether this is a step of a rotation (traced), not of a single write.
            pub fn in_rotation(self) -> bool {
                matches!(self, $(Failpoint::$rotation)|*)
            }
        }
    };
}

failpoints! {
    rotation {
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
        /// Finishing an interrupted rotation by rolling it forward has installed one more change
        /// (once per change). The env-var name keeps its historical `recover-` spelling.
        RollForwardInstalled = "recover-installed",
        /// The journal says rolling back; the backup is not restored yet.
        JournalRollingBack = "journal-rolling-back",
        /// The backup has been restored; the journal does not say rolled back yet.
        Restored = "restored",
    }
    write {
        /// A write's temp file (or temp symlink) exists, still empty, with mode 0600.
        TempCreated = "temp-created",
        /// The temp file holds the new contents.
        TempWritten = "temp-written",
        /// The temp has its final owner and mode.
        TempOwned = "temp-owned",
        /// The temp file is fsynced; the rename over the destination comes next.
        TempSynced = "temp-synced",
    }
}

/// The error a failpoint set to `error` makes its step fail with.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("injected failure at failpoint {0}")]
pub struct Injected(pub &'static str);

impl Injected {
    /// The failure of `point`, for an in-process action that fails its step.
    pub fn at(point: Failpoint) -> Injected {
        Injected(point.name())
    }
}

/// Marks that `point` has been reached: runs its actions, and aborts or fails if it is the one
/// asked for.
#[cfg(any(test, feature = "failpoints"))]
pub fn hit(point: Failpoint) -> Result<(), Injected> {
    armed::hit(point, None::<fn() -> PathBuf>)
}

/// Marks that `point` has been reached (does nothing: built without the `failpoints` feature).
#[cfg(not(any(test, feature = "failpoints")))]
#[inline(always)]
pub fn hit(_point: Failpoint) -> Result<(), Injected> {
    Ok(())
}

/// As [`hit`], for a point about one file: `subject` names it for the in-process actions, and is
/// called only if one is registered.
#[cfg(any(test, feature = "failpoints"))]
pub fn hit_on(point: Failpoint, subject: impl FnOnce() -> PathBuf) -> Result<(), Injected> {
    armed::hit(point, Some(subject))
}

/// As [`hit`] (does nothing, and never builds the subject: built without the `failpoints`
/// feature).
#[cfg(not(any(test, feature = "failpoints")))]
#[inline(always)]
pub fn hit_on(_point: Failpoint, _subject: impl FnOnce() -> PathBuf) -> Result<(), Injected> {
    Ok(())
}

/// Registers `action` to run, on this thread, each time `point` is reached, until the returned
/// guard is dropped. The action is given the point's subject (the temp file of a write step) and
/// may fail the step with [`Injected`]. Per thread, so unit tests running side by side do not see
/// each other's actions.
#[cfg(any(test, feature = "failpoints"))]
pub fn on(
    point: Failpoint,
    action: impl Fn(Option<&std::path::Path>) -> Result<(), Injected> + 'static,
) -> Armed {
    armed::register(point, Box::new(action))
}

/// An in-process action registered with [`on`]; dropping it removes the action.
#[cfg(any(test, feature = "failpoints"))]
#[must_use = "the action is removed when this guard is dropped"]
#[derive(Debug)]
pub struct Armed(u64);

#[cfg(any(test, feature = "failpoints"))]
impl Drop for Armed {
    fn drop(&mut self) {
        armed::unregister(self.0);
    }
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

#[cfg(any(test, feature = "failpoints"))]
mod armed {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    use super::{Armed, ENV, Failpoint, Injected, RELEASE_ENV, TRACE_ENV};

    /// An in-process action, as [`super::on`] takes it.
    type Action = Box<dyn Fn(Option<&Path>) -> Result<(), Injected>>;

    thread_local! {
        /// The actions registered on this thread: guard id, point, action; in registration order.
        static ACTIONS: RefCell<Vec<(u64, Failpoint, std::rc::Rc<Action>)>> =
            const { RefCell::new(Vec::new()) };
    }

    pub(super) fn register(point: Failpoint, action: Action) -> Armed {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        ACTIONS.with(|a| a.borrow_mut().push((id, point, std::rc::Rc::new(action))));
        Armed(id)
    }

    pub(super) fn unregister(id: u64) {
        // During thread teardown the list may be gone already; then there is nothing to remove.
        let _ = ACTIONS.try_with(|a| a.borrow_mut().retain(|(i, _, _)| *i != id));
    }

    /// Runs this thread's actions for `point`. They are taken out of the list before running, so
    /// an action may itself write files (and reach points) without a re-entrant borrow.
    fn run_actions(
        point: Failpoint,
        subject: Option<impl FnOnce() -> PathBuf>,
    ) -> Result<(), Injected> {
        let actions: Vec<_> = ACTIONS.with(|a| {
            a.borrow()
                .iter()
                .filter(|(_, p, _)| *p == point)
                .map(|(_, _, action)| action.clone())
                .collect()
        });
        if actions.is_empty() {
            return Ok(());
        }
        let subject = subject.map(|s| s());
        actions
            .iter()
            .try_for_each(|action| action(subject.as_deref()))
    }

    /// What happens at the failpoint the environment asks for.
    #[derive(PartialEq, Eq)]
    enum EnvAction {
        Abort,
        Error,
        Pause,
    }

    /// The failpoint the environment asks for: name, occurrence, and what to do there.
    struct Target {
        name: String,
        n: u32,
        action: EnvAction,
    }

    /// Parses `NAME[:N[:error|pause]]`, once.
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
                        Some("error") => EnvAction::Error,
                        Some("pause") => EnvAction::Pause,
                        _ => EnvAction::Abort,
                    },
                })
            })
            .as_ref()
    }

    pub(super) fn hit(
        point: Failpoint,
        subject: Option<impl FnOnce() -> PathBuf>,
    ) -> Result<(), Injected> {
        let count = count(point);
        if point.in_rotation() {
            trace(point);
        }
        run_actions(point, subject)?;
        match target() {
            Some(t) if t.name == point.name() && t.n == count => match t.action {
                EnvAction::Error => {
                    eprintln!("certrotd: failpoint {}:{} reached, failing", t.name, t.n);
                    Err(Injected(point.name()))
                }
                EnvAction::Pause => {
                    eprintln!("certrotd: failpoint {}:{} reached, pausing", t.name, t.n);
                    pause();
                    eprintln!("certrotd: failpoint {}:{} released", t.name, t.n);
                    Ok(())
                }
                EnvAction::Abort => {
                    eprintln!("certrotd: failpoint {}:{} reached, aborting", t.name, t.n);
                    std::process::abort();
                }
            },
            _ => Ok(()),
        }
    }

    /// How many times `point` has been reached in this process, this time included.
    fn count(point: Failpoint) -> u32 {
        static COUNTS: OnceLock<Mutex<HashMap<Failpoint, u32>>> = OnceLock::new();
        let mut counts = COUNTS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let c = counts.entry(point).or_insert(0);
        *c += 1;
        *c
    }

    /// Appends the point's name to the trace file, if one is asked for.
    fn trace(point: Failpoint) {
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
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};
    use std::rc::Rc;

    use super::{Failpoint, Injected, hit, hit_on, on};

    #[test]
    fn names_are_unique_and_kebab_case() {
        let mut seen = std::collections::HashSet::new();
        for p in Failpoint::ROTATION.iter().chain(Failpoint::WRITE) {
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

    #[test]
    fn rotation_and_write_points_are_told_apart() {
        assert!(Failpoint::ROTATION.iter().all(|p| p.in_rotation()));
        assert!(Failpoint::WRITE.iter().all(|p| !p.in_rotation()));
    }

    #[test]
    fn an_action_runs_at_its_point_with_the_subject_until_dropped() {
        let seen: Rc<RefCell<Vec<Option<PathBuf>>>> = Rc::default();
        let log = seen.clone();
        let armed = on(Failpoint::TempWritten, move |subject| {
            log.borrow_mut().push(subject.map(Path::to_path_buf));
            Ok(())
        });
        hit_on(Failpoint::TempCreated, || PathBuf::from("/a")).unwrap();
        hit_on(Failpoint::TempWritten, || PathBuf::from("/b")).unwrap();
        hit(Failpoint::TempWritten).unwrap();
        drop(armed);
        hit_on(Failpoint::TempWritten, || PathBuf::from("/c")).unwrap();
        assert_eq!(*seen.borrow(), [Some(PathBuf::from("/b")), None]);
    }

    #[test]
    fn an_action_fails_its_step_and_the_subject_is_built_only_for_it() {
        let _armed = on(Failpoint::TempSynced, |_| {
            Err(Injected::at(Failpoint::TempSynced))
        });
        let err = hit(Failpoint::TempSynced).unwrap_err();
        assert_eq!(err.to_string(), "injected failure at failpoint temp-synced");
        hit_on(Failpoint::TempOwned, || panic!("no action: no subject")).unwrap();
    }
}

//! Watching certificate files for changes: inotify on their parent directories, debounced, each
//! change reported as the watched file it concerns.
//!
//! Directories rather than files are watched because certificates change by replacement: an
//! atomic rename over the file, a symlink swapped to a new target (the kubelet's
//! `kubelet-client-current.pem`), a delete and re-create. A watch on the file itself would follow
//! the old inode and miss all of those. A watched symlink is also watched through its target, so
//! a target rewritten in place reports the symlink; a directory that does not exist yet is
//! watched through its nearest existing ancestor until it appears.
//!
//! The debounce is our own rather than notify-debouncer-full's: that debouncer's thread wakes
//! every quarter of the debounce interval for as long as it lives (measured: about 190 wake-ups
//! a second at a 20 ms interval, with nothing changing), and the daemon must not wake while idle.
//! Here a thread blocks on notify's channel and only uses a timer while a batch is open.
//!
//! Memory stays bounded however many events arrive and however long the daemon is busy: notify's
//! events wait in a bounded channel (when it is full, every watched file counts as changed, as
//! after the kernel's own queue overflow), and finished batches are merged into one pending set of
//! watched paths that [`Changes::recv`] takes whole, rather than queued one after the other.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::Notify;

/// A debounce interval that keeps a file change visible within the daemon's 50 ms target while
/// gathering the files one `kubeadm certs renew` writes in quick succession.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(20);

/// A batch is sent at the latest this many debounce intervals after its first change, even if
/// changes keep coming, so a file rewritten without pause is still reported.
const MAX_BATCH_INTERVALS: u32 = 4;

/// How many of notify's events may wait for the watch thread; past that, events are dropped and
/// every watched file is reported as changed.
const EVENT_CAPACITY: usize = 4096;

/// How many symlinks are followed from a watched path (the kernel's own limit is 40; real
/// certificate links are one deep).
const MAX_LINKS: usize = 8;

/// Errors starting or changing a watch; each names what was being done and the path.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// inotify could not be set up (e.g. `fs.inotify.max_user_instances` reached).
    #[error("starting inotify: {0}")]
    Start(#[source] notify::Error),
    /// A directory could not be watched (e.g. `fs.inotify.max_user_watches` reached,
    /// permissions).
    #[error("watching directory {}: {source}", path.display())]
    Watch {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: notify::Error,
    },
    /// The thread that debounces changes could not be started.
    #[error("starting the watch thread: {0}")]
    Thread(#[source] io::Error),
}

/// Watches files and sends, after each burst of changes, the watched files that changed.
///
/// Dropping it stops the watch; the receiver then ends.
pub struct Watcher {
    shared: Arc<Mutex<Shared>>,
    to_thread: mpsc::SyncSender<Message>,
    thread: Option<JoinHandle<()>>,
    pending: Arc<Pending>,
}

/// The changes not yet taken by the receiver: one set, however many batches were finished.
#[derive(Default)]
struct Pending {
    state: Mutex<PendingState>,
    /// Wakes the receiver.
    ready: Notify,
}

#[derive(Default)]
struct PendingState {
    changed: BTreeSet<PathBuf>,
    /// The watch stopped: once `changed` is taken, the receiver ends.
    closed: bool,
    /// The receiver was dropped: the watch thread stops.
    receiver_gone: bool,
}

impl Pending {
    fn state(&self) -> std::sync::MutexGuard<'_, PendingState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self) {
        self.state().closed = true;
        self.ready.notify_one();
    }
}

/// The receiving end of a [`Watcher`]: the watched files that changed since the last
/// [`Changes::recv`], merged into one sorted set.
pub struct Changes {
    pending: Arc<Pending>,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("pending", &self.pending.state().changed.len())
            .finish()
    }
}

impl Changes {
    /// Waits for changes and takes all that are pending, as the sorted watched paths (spelled as
    /// given) that changed. None once the [`Watcher`] is dropped and nothing is left.
    ///
    /// Cancel-safe (for `select!`): nothing is taken until it returns.
    pub async fn recv(&mut self) -> Option<Vec<PathBuf>> {
        loop {
            if let Some(taken) = self.try_recv() {
                return taken;
            }
            self.pending.ready.notified().await;
        }
    }

    /// Takes what is pending without waiting: `Some(Some(paths))` with changes, `Some(None)` when
    /// the watch ended, `None` when there is nothing yet.
    #[allow(clippy::option_option)]
    pub fn try_recv(&mut self) -> Option<Option<Vec<PathBuf>>> {
        let mut state = self.pending.state();
        if !state.changed.is_empty() {
            return Some(Some(
                std::mem::take(&mut state.changed).into_iter().collect(),
            ));
        }
        state.closed.then_some(None)
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        self.pending.state().receiver_gone = true;
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = lock(&self.shared);
        f.debug_struct("Watcher")
            .field("paths", &shared.paths)
            .field("dirs", &shared.watched)
            .finish_non_exhaustive()
    }
}

enum Message {
    Event(notify::Result<Event>),
    Stop,
}

/// What the watch thread and [`Watcher::set_paths`] share.
struct Shared {
    watcher: RecommendedWatcher,
    /// The files asked for, as given.
    paths: Vec<PathBuf>,
    /// Directories with an inotify watch, canonical.
    watched: BTreeSet<PathBuf>,
    index: Index,
}

/// Which watched files a path named in an event stands for.
#[derive(Debug, Default)]
struct Index {
    /// A directory entry, as events name it (canonical directory + name) → the watched files it
    /// stands for: the file itself, a symlink's target, or a directory on the way to a file.
    entries: HashMap<PathBuf, BTreeSet<PathBuf>>,
    /// A directory to watch (canonical) → the watched files it serves.
    dirs: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panic elsewhere leaves the index consistent enough to keep watching.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Watcher {
    /// Starts watching `paths` (files, which need not exist yet). Changes are reported once no
    /// further change has come for `debounce` (or [`MAX_BATCH_INTERVALS`] intervals after the
    /// first), as the sorted set of watched paths, spelled as given, that changed.
    ///
    /// The watch runs on a thread of its own, so this may be called inside or outside a tokio
    /// runtime.
    pub fn new(paths: &[PathBuf], debounce: Duration) -> Result<(Watcher, Changes), WatchError> {
        let (to_thread, from_notify) = mpsc::sync_channel(EVENT_CAPACITY);
        let events = to_thread.clone();
        let overflow = Arc::new(AtomicBool::new(false));
        let overflowed = overflow.clone();
        let watcher = notify::recommended_watcher(move |event| {
            // Never blocks, so inotify's thread is never held up; an event that finds the channel
            // full is dropped and remembered as "anything may have changed".
            if let Err(TrySendError::Full(_)) = events.try_send(Message::Event(event)) {
                overflowed.store(true, Ordering::Relaxed);
            }
        })
        .map_err(WatchError::Start)?;
        let shared = Arc::new(Mutex::new(Shared {
            watcher,
            paths: Vec::new(),
            watched: BTreeSet::new(),
            index: Index::default(),
        }));
        let pending = Arc::new(Pending::default());
        let thread_shared = shared.clone();
        let thread_pending = pending.clone();
        let thread = std::thread::Builder::new()
            .name("certrotd-watch".to_owned())
            .spawn(move || {
                let input = Input {
                    events: from_notify,
                    overflow,
                };
                debounce_loop(&thread_shared, &input, &thread_pending, debounce);
            })
            .map_err(WatchError::Thread)?;
        let mut watcher = Watcher {
            shared,
            to_thread,
            thread: Some(thread),
            pending: pending.clone(),
        };
        watcher.set_paths(paths)?;
        Ok((watcher, Changes { pending }))
    }

    /// Replaces the watched files (after a configuration reload or an inventory change).
    /// Directories no longer needed are released. On an error, every directory that could be
    /// watched still is; the error names the first that could not.
    pub fn set_paths(&mut self, paths: &[PathBuf]) -> Result<(), WatchError> {
        let mut shared = lock(&self.shared);
        shared.paths = paths.to_vec();
        let (_, mut errors) = shared.rearm(&BTreeSet::new());
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.swap_remove(0))
        }
    }

    /// The directories currently under an inotify watch.
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        lock(&self.shared).watched.iter().cloned().collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.to_thread.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.pending.close();
    }
}

impl Shared {
    /// Rebuilds the index from the paths and the file system as it is now, and brings the
    /// inotify watches in line with it. Directories in `reset` (deleted or moved away) are
    /// watched afresh. Returns the watched files in directories newly watched: they may have
    /// changed before the watch began, so the caller reports them.
    fn rearm(&mut self, reset: &BTreeSet<PathBuf>) -> (BTreeSet<PathBuf>, Vec<WatchError>) {
        let mut fresh = BTreeSet::new();
        let mut errors = Vec::new();
        // A directory can vanish between being found and being watched (a PKI directory being
        // replaced); finding again then watches what is there now.
        for _ in 0..3 {
            errors = self.apply(Index::build(&self.paths), reset, &mut fresh);
            let vanished = |e: &WatchError| {
                matches!(e, WatchError::Watch { source, .. }
                    if matches!(source.kind, notify::ErrorKind::PathNotFound))
            };
            if !errors.iter().any(vanished) {
                break;
            }
        }
        (fresh, errors)
    }

    /// Brings the inotify watches in line with `index`, collecting the files in newly watched
    /// directories into `fresh`.
    fn apply(
        &mut self,
        index: Index,
        reset: &BTreeSet<PathBuf>,
        fresh: &mut BTreeSet<PathBuf>,
    ) -> Vec<WatchError> {
        let mut errors = Vec::new();
        for dir in self.watched.clone() {
            if !index.dirs.contains_key(&dir) || reset.contains(&dir) {
                // Fails harmlessly when inotify already dropped the watch (directory deleted).
                let _ = self.watcher.unwatch(&dir);
                self.watched.remove(&dir);
            }
        }
        for (dir, files) in &index.dirs {
            if self.watched.contains(dir) {
                continue;
            }
            match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir.clone());
                    fresh.extend(files.iter().cloned());
                }
                Err(source) => errors.push(WatchError::Watch {
                    path: dir.clone(),
                    source,
                }),
            }
        }
        self.index = index;
        errors
    }

    /// The watched files an event concerns, and whether it concerns a watched directory itself
    /// (deleted or moved: its watch must be renewed).
    fn affected(&self, event: &Event, out: &mut BTreeSet<PathBuf>, reset: &mut BTreeSet<PathBuf>) {
        if event.need_rescan() {
            // The kernel's queue overflowed: anything may have changed.
            out.extend(self.paths.iter().cloned());
            return;
        }
        if !is_change(&event.kind) {
            return;
        }
        for path in &event.paths {
            if let Some(files) = self.index.entries.get(path) {
                out.extend(files.iter().cloned());
            }
            if let Some(files) = self.index.dirs.get(path) {
                out.extend(files.iter().cloned());
                reset.insert(path.clone());
            }
        }
    }
}

/// Whether an event kind can mean different contents. Opening and reading are not changes:
/// without this, the daemon re-reading a changed file would report it again, forever.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Any
        | EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Other => true,
    }
}

impl Index {
    fn build(paths: &[PathBuf]) -> Index {
        let mut index = Index::default();
        for path in paths {
            for entry in link_chain(path) {
                if let Some((dir, name)) = locate(&entry) {
                    index.entries.entry(name).or_default().insert(path.clone());
                    index.dirs.entry(dir).or_default().insert(path.clone());
                }
            }
        }
        index
    }
}

/// `path`, then each symlink target it leads to.
fn link_chain(path: &Path) -> Vec<PathBuf> {
    let mut chain = vec![path.to_owned()];
    let mut current = path.to_owned();
    for _ in 0..MAX_LINKS {
        let Ok(target) = fs::read_link(&current) else {
            break;
        };
        current = match current.parent() {
            Some(parent) if target.is_relative() => parent.join(target),
            _ => target,
        };
        chain.push(current.clone());
    }
    chain
}

/// The directory to watch for `entry` and the name events give it there: its own directory if
/// that exists, else the nearest existing ancestor and the child on the way down. Directories
/// are canonical, so two spellings of one directory (which inotify gives one watch) agree.
fn locate(entry: &Path) -> Option<(PathBuf, PathBuf)> {
    let mut child = entry;
    loop {
        let parent = child.parent()?;
        let dir = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(real) = fs::canonicalize(dir)
            && real.is_dir()
        {
            let name = real.join(child.file_name()?);
            return Some((real, name));
        }
        child = parent;
    }
}

/// What the watch thread reads: notify's events, and whether some were dropped.
struct Input {
    events: mpsc::Receiver<Message>,
    overflow: Arc<AtomicBool>,
}

/// The watch thread: blocks until a change comes, gathers the burst, adds it to the pending set.
fn debounce_loop(shared: &Mutex<Shared>, input: &Input, pending: &Pending, debounce: Duration) {
    let from_notify = &input.events;
    let max_batch = debounce * MAX_BATCH_INTERVALS;
    loop {
        let mut changed = BTreeSet::new();
        let mut reset = BTreeSet::new();
        // Idle: block without a timeout, so an unchanging node costs no wake-ups.
        loop {
            match from_notify.recv() {
                Ok(Message::Event(event)) => {
                    take(shared, event, &input.overflow, &mut changed, &mut reset);
                    if !changed.is_empty() || !reset.is_empty() {
                        break;
                    }
                }
                Ok(Message::Stop) | Err(_) => return,
            }
        }
        let opened = Instant::now();
        let mut quiet_until = opened + debounce;
        loop {
            let until = quiet_until.min(opened + max_batch);
            match from_notify.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(Message::Event(event)) => {
                    let before = (changed.len(), reset.len());
                    take(shared, event, &input.overflow, &mut changed, &mut reset);
                    if (changed.len(), reset.len()) != before {
                        quiet_until = Instant::now() + debounce;
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let (fresh, errors) = lock(shared).rearm(&reset);
        for error in errors {
            tracing::warn!(%error, "a directory with watched certificates cannot be watched");
        }
        changed.extend(fresh);
        if changed.is_empty() {
            continue;
        }
        tracing::debug!(files = changed.len(), "watched files changed");
        // Never waits for the receiver: a busy daemon finds one merged set when it looks again.
        {
            let mut state = pending.state();
            if state.receiver_gone {
                return;
            }
            state.changed.append(&mut changed);
        }
        pending.ready.notify_one();
    }
}

fn take(
    shared: &Mutex<Shared>,
    event: notify::Result<Event>,
    overflow: &AtomicBool,
    changed: &mut BTreeSet<PathBuf>,
    reset: &mut BTreeSet<PathBuf>,
) {
    let shared = lock(shared);
    if overflow.swap(false, Ordering::Relaxed) {
        tracing::warn!(
            "more file events than the watch keeps: treating every watched file as changed"
        );
        changed.extend(shared.paths.iter().cloned());
    }
    match event {
        Ok(event) => shared.affected(&event, changed, reset),
        Err(error) => {
            // An error from inotify (a failed read) may have lost events: report everything.
            tracing::warn!(%error, "inotify reported an error; treating every watched file as changed");
            changed.extend(shared.paths.iter().cloned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_while_nobody_reads_become_one_set_of_distinct_paths() {
        use notify::event::ModifyKind;
        let tmp = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(tmp.path()).unwrap();
        let paths: Vec<PathBuf> = (0..50).map(|i| base.join(format!("{i:02}.crt"))).collect();
        let (watcher, mut changes) = Watcher::new(&paths, Duration::from_millis(5)).unwrap();
        // The first 30 only: the rest must not be reported.
        for i in 0..100_000 {
            let event =
                Event::new(EventKind::Modify(ModifyKind::Any)).add_path(paths[i % 30].clone());
            watcher.to_thread.send(Message::Event(Ok(event))).unwrap();
        }
        // Every batch is closed within four intervals of its first event; the watcher's thread
        // needs the time to take 100,000 events off its channel first, which took over 200 ms
        // while other builds shared the two cores.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(changes.try_recv(), Some(Some(paths[..30].to_vec())));
        assert_eq!(
            changes.try_recv(),
            None,
            "one batch, nothing queued behind it"
        );
        drop(watcher);
        assert_eq!(changes.try_recv(), Some(None), "the watch ended");
    }

    #[test]
    fn reading_is_not_a_change() {
        use notify::event::{CreateKind, ModifyKind, RemoveKind};
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
        assert!(is_change(&EventKind::Modify(ModifyKind::Any)));
        assert!(is_change(&EventKind::Remove(RemoveKind::File)));
    }

    #[test]
    fn missing_directories_are_watched_through_their_nearest_ancestor() {
        let tmp = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(tmp.path()).unwrap();
        let file = base.join("pki/etcd/server.crt");
        assert_eq!(locate(&file), Some((base.clone(), base.join("pki"))));
        fs::create_dir_all(base.join("pki/etcd")).unwrap();
        assert_eq!(
            locate(&file),
            Some((base.join("pki/etcd"), base.join("pki/etcd/server.crt")))
        );
    }

    #[test]
    fn symlinks_are_followed_to_their_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(tmp.path()).unwrap();
        std::os::unix::fs::symlink("a.pem", base.join("current.pem")).unwrap();
        std::os::unix::fs::symlink("b.pem", base.join("a.pem")).unwrap();
        assert_eq!(
            link_chain(&base.join("current.pem")),
            [
                base.join("current.pem"),
                base.join("a.pem"),
                base.join("b.pem")
            ]
        );
        // A loop ends at the limit.
        std::os::unix::fs::symlink("loop2", base.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", base.join("loop2")).unwrap();
        assert_eq!(link_chain(&base.join("loop1")).len(), MAX_LINKS + 1);
    }
}

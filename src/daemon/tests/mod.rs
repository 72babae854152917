//! Fast tests of the daemon's transitions: the real loop ([`super::serve`]) on a sandbox node in a
//! temporary directory, with paused tokio time and in-memory lease and components ([`fakes`]).
//! They add to the tests against real etcd and systemd under `tests/`, never replace them.

mod ca;
mod fakes;
mod transitions;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Edges, Shutdown, TokioClock, Trigger};
use crate::config::{self, LoadOptions, Settings};
use crate::history::History;
use crate::history::Record;
use crate::pki::encode::KeySpec;
use crate::pki::layout::Component;
use crate::sandbox::{self, SandboxOptions};
use fakes::{Event, FakeComponents, FakeLease, Timeline};

/// The leaves' lifetime: with 10 minutes left they are inside `renew_before` (30 %, 18 min),
/// not yet inside `emergency_before` (6 min), and the new ones are not due again for 40 min.
const LEAF_TTL: Duration = Duration::from_secs(3600);
const LEFT: time::Duration = time::Duration::minutes(10);
/// The most real time one wait of a test may take.
const REAL_LIMIT: Duration = Duration::from_secs(60);

/// What a test does to the node's files before the daemon starts.
type BeforeStart = Box<dyn FnOnce(&Settings)>;

/// What a test changes in the settings before the daemon starts.
type Configure = Box<dyn FnOnce(&mut Settings)>;

/// How a test's node is set up.
#[derive(Default)]
pub struct Builder {
    lease_closed: bool,
    restart_delay: Duration,
    failing_proofs: Vec<(Component, usize)>,
    before_start: Option<BeforeStart>,
    prefer_reload: bool,
    configure: Option<Configure>,
}

impl Builder {
    /// The lease is not granted until the test opens it.
    pub fn lease_closed(mut self) -> Self {
        self.lease_closed = true;
        self
    }

    /// `[restart] prefer_reload = true` (the tests otherwise pin `false`, so they count every
    /// consumer's restart).
    pub fn prefer_reload(mut self) -> Self {
        self.prefer_reload = true;
        self
    }

    /// Every restart takes `d` (of paused time).
    pub fn restart_delay(mut self, d: Duration) -> Self {
        self.restart_delay = d;
        self
    }

    /// The first `n` proofs of `c` fail.
    pub fn failing_proofs(mut self, c: Component, n: usize) -> Self {
        self.failing_proofs.push((c, n));
        self
    }

    /// Changes the loaded settings before the daemon starts.
    pub fn configure(mut self, f: impl FnOnce(&mut Settings) + 'static) -> Self {
        self.configure = Some(Box::new(f));
        self
    }

    /// Runs `f` on the node's files before the daemon starts.
    pub fn before_start(mut self, f: impl FnOnce(&Settings) + 'static) -> Self {
        self.before_start = Some(Box::new(f));
        self
    }

    /// Writes the node (its leaves expiring in 10 minutes) and starts the daemon on it.
    pub async fn start(self) -> Node {
        let now = OffsetDateTime::now_utc();
        let tmp = tempfile::tempdir().unwrap();
        let opts = SandboxOptions {
            key: KeySpec::EcdsaP256,
            leaf_ttl: LEAF_TTL,
            ..SandboxOptions::default()
        };
        let written = now - time::Duration::try_from(LEAF_TTL).unwrap() + LEFT;
        let sb = sandbox::write(&tmp.path().join("node"), &opts, written).unwrap();
        let mut settings = config::load(&LoadOptions {
            config: Some(&sb.config_path),
            root: None,
        })
        .unwrap();
        settings.restart.prefer_reload = self.prefer_reload;
        if let Some(f) = self.configure {
            f(&mut settings);
        }
        if let Some(f) = self.before_start {
            f(&settings);
        }
        let witness = sb.path("/etc/kubernetes/pki/apiserver.crt");
        let log = Arc::new(Timeline::default());
        let lease = Arc::new(FakeLease::new(
            Arc::clone(&log),
            !self.lease_closed,
            witness.clone(),
        ));
        let components = Arc::new(FakeComponents::new(
            Arc::clone(&log),
            self.restart_delay,
            &self.failing_proofs,
        ));
        let (listener, socket_path) = super::bind_control(&settings).unwrap();
        let (trigger, shutdown) = Shutdown::new();
        let reloaded = settings.clone();
        let edges = Edges {
            listener,
            socket_path,
            shutdown,
            clock: Arc::new(TokioClock::starting_at(now)),
            reload: Box::new(move || Ok(reloaded.clone())),
            hangups: None,
            components: Some(components),
            lease: Some(Arc::clone(&lease) as Arc<dyn crate::lease::Lease>),
        };
        let serve = tokio::spawn(super::serve(settings.clone(), edges));
        Node {
            _tmp: tmp,
            witness,
            settings,
            log,
            lease,
            trigger,
            serve: Some(serve),
        }
    }
}

/// A running daemon on a sandbox node, and what the fakes saw.
pub struct Node {
    _tmp: tempfile::TempDir,
    /// The API server's certificate (which every rotation renews).
    pub witness: PathBuf,
    pub settings: Settings,
    pub log: Arc<Timeline>,
    pub lease: Arc<FakeLease>,
    trigger: Trigger,
    serve: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Node {
    /// History, newest first.
    pub fn history(&self) -> Vec<Record> {
        History::for_settings(&self.settings)
            .read(None)
            .unwrap()
            .records
    }

    /// Waits (in paused time, at most `within`) until `cond` holds; fails saying `what`.
    pub async fn until(&self, what: &str, within: Duration, cond: impl Fn(&Node) -> bool) {
        let deadline = Instant::now() + within;
        let waited = async {
            while !cond(self) {
                assert!(
                    Instant::now() < deadline,
                    "{what}: not within {within:?}\nevents: {:#?}\nhistory: {:#?}",
                    self.log.events(),
                    self.history()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        in_real_time(what, waited).await;
    }

    /// Lets `d` of paused time pass.
    pub async fn pass(&self, d: Duration) {
        in_real_time("time passing", tokio::time::sleep(d)).await;
    }

    /// Whether the daemon's loop has returned.
    pub fn stopped(&self) -> bool {
        self.serve.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Asks the daemon to stop.
    pub fn stop(&self) {
        self.trigger.stop("test stop");
    }

    /// Waits (at most `within` of paused time) for the loop to return, and its result.
    pub async fn join(&mut self, within: Duration) -> anyhow::Result<()> {
        let serve = self.serve.take().expect("joined once");
        in_real_time("serve returning", tokio::time::timeout(within, serve))
            .await
            .expect("serve returned in time")
            .expect("serve did not panic")
    }

    /// The consumers the rotation's journal names: every one it must restart.
    pub fn consumers(&self, id: &str) -> Vec<Component> {
        let state = crate::rotation::StateDirs::new(
            &crate::root::Root::new(&self.settings.root),
            &self.settings.state_dir,
        )
        .unwrap();
        crate::rotation::journal::Journal::load(&state.rotation(id))
            .unwrap()
            .expect("a journal")
            .consumers
    }

    /// The steps mirrored into the holder record, in order.
    pub fn steps(&self) -> Vec<String> {
        self.log.pick(|e| match e {
            Event::Step(s) => Some(s.clone()),
            _ => None,
        })
    }
}

/// Runs `fut`, failing after a minute of real time: paused time only advances while the
/// runtime is idle, so a loop that never rests (retrying at once, forever) would otherwise hang
/// the test instead of failing it.
async fn in_real_time<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(REAL_LIMIT);
        let _ = tx.send(());
    });
    tokio::select! {
        out = fut => out,
        _ = rx => panic!("{what}: not within {REAL_LIMIT:?} of real time (is the loop busy?)"),
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.serve.take() {
            s.abort();
        }
    }
}

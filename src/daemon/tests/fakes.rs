//! In-memory stand-ins for the lease and the components, for the state machine's unit tests
//! only: the real ones (etcd, systemd, the probes) have their own tests under `tests/`. Both
//! write one shared timeline, so a test can check what happened in which order.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::daemon::components::{Components, Expect};
use crate::daemon::failure::ComponentError;
use crate::lease::{BoxFuture, ClusterView, Held, Lease, LeaseError, NodeSummary, Want};
use crate::pki::layout::Component;

/// What the fakes were asked to do, in the order asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The lease was granted with this fencing token.
    Acquired(u64),
    /// A pending acquire was given up (dropped) before it was granted.
    AcquireDropped,
    /// The holder record was told this step.
    Step(String),
    /// A confirmation passed; `witness` is the fingerprint of the witness file at that moment.
    Confirmed { step: String, witness: u64 },
    /// A confirmation was refused.
    Refused(String),
    /// The lease was given back.
    Released(u64),
    /// A restart began.
    Restart(Component),
    /// A proof passed.
    Proved(Component),
    /// A proof was made to fail.
    ProofFailed(Component),
}

/// The timeline both fakes write.
#[derive(Debug, Default)]
pub struct Timeline(Mutex<Vec<Event>>);

impl Timeline {
    fn push(&self, e: Event) {
        self.0.lock().unwrap().push(e);
    }

    /// Everything so far.
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    /// The events `pick` keeps, mapped.
    pub fn pick<T>(&self, pick: impl Fn(&Event) -> Option<T>) -> Vec<T> {
        self.events().iter().filter_map(pick).collect()
    }

    /// The components whose restart began, in order.
    pub fn restarts(&self) -> Vec<Component> {
        self.pick(|e| match e {
            Event::Restart(c) => Some(*c),
            _ => None,
        })
    }

    /// How many events of this exact value.
    pub fn count(&self, e: &Event) -> usize {
        self.events().iter().filter(|x| *x == e).count()
    }
}

/// A file's contents, hashed (0 when unreadable).
pub fn fingerprint(path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    std::fs::read(path).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// A lease held in memory: granted when the test opens it, confirmations refused from the Nth on.
#[derive(Debug)]
pub struct FakeLease {
    log: Arc<Timeline>,
    open: watch::Sender<bool>,
    /// Confirmations fail from this 1-based call on.
    fail_from: Mutex<Option<usize>>,
    calls: Mutex<usize>,
    tokens: Mutex<u64>,
    /// A file whose contents each confirmation records (to tell whether it came before an install).
    witness: PathBuf,
}

impl FakeLease {
    /// Granted at once (`open`) or only once [`FakeLease::open`] is called.
    pub fn new(log: Arc<Timeline>, open: bool, witness: PathBuf) -> FakeLease {
        FakeLease {
            log,
            open: watch::Sender::new(open),
            fail_from: Mutex::new(None),
            calls: Mutex::new(0),
            tokens: Mutex::new(0),
            witness,
        }
    }

    /// Lets waiting and later acquires through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Refuses confirmations from the `n`th call (counted from the first ever) on; `None`: none.
    pub fn fail_confirms_from(&self, n: Option<usize>) {
        *self.fail_from.lock().unwrap() = n;
    }
}

/// Notes an acquire given up before it was granted.
struct Pending<'a>(&'a Timeline, bool);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.push(Event::AcquireDropped);
        }
    }
}

impl Lease for FakeLease {
    fn describe(&self) -> String {
        "in-memory test lease".to_owned()
    }

    fn acquire<'a>(&'a self, _want: &'a Want) -> BoxFuture<'a, Result<Held, LeaseError>> {
        Box::pin(async move {
            let mut pending = Pending(&self.log, false);
            let mut rx = self.open.subscribe();
            let _ = rx.wait_for(|open| *open).await;
            pending.1 = true;
            let token = {
                let mut t = self.tokens.lock().unwrap();
                *t += 1;
                *t
            };
            self.log.push(Event::Acquired(token));
            Ok(Held::new("sandbox-cp1", token))
        })
    }

    fn set_step<'a>(
        &'a self,
        _held: &'a Held,
        step: &'a str,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        self.log.push(Event::Step(step.to_owned()));
        Box::pin(async { Ok(()) })
    }

    fn confirm<'a>(
        &'a self,
        held: &'a Held,
        step: &'a str,
        _min_ttl: Duration,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        let n = {
            let mut c = self.calls.lock().unwrap();
            *c += 1;
            *c
        };
        let refuse = self.fail_from.lock().unwrap().is_some_and(|f| n >= f);
        Box::pin(async move {
            if refuse || !held.is_held() {
                // As the real leases do: a failed confirmation marks the lease lost. The slot
                // is another node's now, so this one waits until the test opens it again.
                if refuse {
                    self.open.send_replace(false);
                }
                let why = "slot 0 now held by cp2 with token 99".to_owned();
                held.mark_lost(&why);
                self.log.push(Event::Refused(step.to_owned()));
                return Err(LeaseError::Fenced {
                    step: step.to_owned(),
                    why,
                });
            }
            self.log.push(Event::Confirmed {
                step: step.to_owned(),
                witness: fingerprint(&self.witness),
            });
            Ok(())
        })
    }

    fn release<'a>(&'a self, held: Held) -> BoxFuture<'a, Result<(), LeaseError>> {
        self.log.push(Event::Released(held.fencing_token));
        held.mark_lost("released");
        Box::pin(async { Ok(()) })
    }

    fn publish<'a>(&'a self, _summary: &'a NodeSummary) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async { Ok(()) })
    }

    fn view<'a>(&'a self) -> BoxFuture<'a, Result<ClusterView, LeaseError>> {
        Box::pin(async { Ok(ClusterView::default()) })
    }
}

/// Components that restart in (paused) time and prove as told.
#[derive(Debug)]
pub struct FakeComponents {
    log: Arc<Timeline>,
    /// How long each restart takes.
    pub restart_delay: Duration,
    /// How many proofs of each component fail before they pass.
    prove_failures: Mutex<HashMap<Component, usize>>,
}

impl FakeComponents {
    /// Restarts taking `restart_delay`; proofs of `c` failing `n` times for each `(c, n)`.
    pub fn new(
        log: Arc<Timeline>,
        restart_delay: Duration,
        failing: &[(Component, usize)],
    ) -> FakeComponents {
        FakeComponents {
            log,
            restart_delay,
            prove_failures: Mutex::new(failing.iter().copied().collect()),
        }
    }
}

impl Components for FakeComponents {
    fn restarts(&self, _component: Component) -> bool {
        true
    }

    fn restart<'a>(
        &'a self,
        component: Component,
        _now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<String, ComponentError>> {
        self.log.push(Event::Restart(component));
        Box::pin(async move {
            tokio::time::sleep(self.restart_delay).await;
            Ok(format!("restarted {component} (in memory)"))
        })
    }

    fn healthy<'a>(&'a self, _component: Component) -> BoxFuture<'a, Result<(), ComponentError>> {
        Box::pin(async { Ok(()) })
    }

    fn prove<'a>(
        &'a self,
        component: Component,
        expected: &'a [Expect],
        _now: OffsetDateTime,
        _deadline: Instant,
    ) -> BoxFuture<'a, Result<String, ComponentError>> {
        let fail = {
            let mut f = self.prove_failures.lock().unwrap();
            match f.get_mut(&component) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        Box::pin(async move {
            if fail {
                self.log.push(Event::ProofFailed(component));
                return Err(ComponentError::Task(format!(
                    "{component} serves none of the {} expected certificates",
                    expected.len()
                )));
            }
            self.log.push(Event::Proved(component));
            Ok(format!(
                "{component} serves {} certificates",
                expected.len()
            ))
        })
    }
}

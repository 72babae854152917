//! A remote CA's certificate is obtained before the node waits for the lease, and the rotation
//! accepts it however long the wait was (issue 10): a node never holds the cluster's slot while
//! the network talks, and a cfssl answer (NotBefore backdated five minutes) is judged against the
//! time it was issued, not the time the lease finally came.
//!
//! Real cfssl and the real daemon loop, in process; the lease is a gate the test opens, and the
//! daemon's clock jumps twenty minutes ahead while it waits, as a long queue would.

use crate::support;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certrotd::control::client;
use certrotd::control::proto::{HistoryState, Request, Response};
use certrotd::daemon::{self, Clock, Edges, Options, Shutdown};
use certrotd::lease::{BoxFuture, ClusterView, Held, Lease, LeaseError, NodeSummary, Want};
use certrotd::pki::encode::KeySpec;
use certrotd::sandbox::SandboxOptions;
use support::cfssl::Cfssl;
use support::renewal::Node;
use time::OffsetDateTime;
use tokio::sync::watch;

/// The wall clock plus an offset the test moves.
#[derive(Debug, Default)]
struct JumpClock(AtomicI64);

impl Clock for JumpClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::seconds(self.0.load(Ordering::SeqCst))
    }
}

/// A lease granted when the test opens it; notes how many certificates cfssl had signed when
/// the daemon first asked for it.
struct Gate {
    open: watch::Sender<bool>,
    signed_when_asked: Mutex<Option<usize>>,
    signed: Box<dyn Fn() -> usize + Send + Sync>,
    clock: Arc<JumpClock>,
}

impl Lease for Gate {
    fn describe(&self) -> String {
        "test gate".into()
    }
    fn acquire<'a>(&'a self, _want: &'a Want) -> BoxFuture<'a, Result<Held, LeaseError>> {
        Box::pin(async move {
            self.signed_when_asked
                .lock()
                .unwrap()
                .get_or_insert_with(|| (self.signed)());
            // A long queue: twenty minutes pass on the daemon's clock.
            self.clock.0.store(20 * 60, Ordering::SeqCst);
            let mut rx = self.open.subscribe();
            let _ = rx.wait_for(|o| *o).await;
            Ok(Held::new("sandbox-cp1", 7))
        })
    }
    fn set_step<'a>(&'a self, _: &'a Held, _: &'a str) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async { Ok(()) })
    }
    fn confirm<'a>(
        &'a self,
        _: &'a Held,
        _: &'a str,
        _: Duration,
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async { Ok(()) })
    }
    fn release<'a>(&'a self, _: Held) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async { Ok(()) })
    }
    fn publish<'a>(&'a self, _: &'a NodeSummary) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async { Ok(()) })
    }
    fn view<'a>(&'a self) -> BoxFuture<'a, Result<ClusterView, LeaseError>> {
        Box::pin(async { Ok(ClusterView::default()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cfssl_answer_obtained_before_a_long_wait_for_the_lease_is_installed() {
    // A node whose CA key is elsewhere: every leaf it renews goes through cfssl.
    let node = Node::sandbox(&SandboxOptions {
        key: KeySpec::EcdsaP256,
        ..SandboxOptions::default()
    });
    let ca_key = node.path("/etc/kubernetes/pki/ca.key");
    let mut cfssl = Cfssl::new(
        &node.tmp.path().join("cfssl"),
        &node.path("/etc/kubernetes/pki/ca.crt"),
        &ca_key,
        false,
    );
    std::fs::remove_file(&ca_key).unwrap();
    cfssl.start();
    let config = node.root.join("certrotd.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&cfssl.issuer_config(&node.root, "/etc/certrotd/cfssl.key", ""));
    std::fs::write(&config, text).unwrap();

    let opts = Options {
        config: Some(config),
        root: None,
    };
    let settings = daemon::load(&opts).unwrap();
    let (listener, socket_path) = daemon::bind_control(&settings).unwrap();
    let socket = socket_path.clone();
    let clock = Arc::new(JumpClock::default());
    let signed_dir = node.tmp.path().join("cfssl");
    let (open, _) = watch::channel(false);
    let gate = Arc::new(Gate {
        open,
        signed_when_asked: Mutex::new(None),
        signed: Box::new(move || count_signed(&signed_dir)),
        clock: Arc::clone(&clock),
    });
    let (trigger, shutdown) = Shutdown::new();
    let task = tokio::spawn(daemon::serve(
        settings,
        Edges {
            listener,
            socket_path,
            shutdown,
            clock,
            reload: Box::new(move || daemon::load(&opts)),
            hangups: None,
            components: None,
            lease: Some(Arc::clone(&gate) as Arc<dyn Lease>),
        },
    ));

    // Rotate a client certificate the cluster CA signs (through cfssl, the key being elsewhere).
    support::wait_for("the daemon answering", Duration::from_secs(30), || async {
        client::request(&socket, Request::Status, Duration::from_secs(2))
            .await
            .ok()
    })
    .await;
    let asked_for = Request::Rotate {
        types: Vec::new(),
        certs: vec!["apiserver-kubelet-client".into()],
    };
    match client::request(&socket, asked_for, Duration::from_secs(30)).await {
        Ok(Response::Rotate { .. }) => {}
        other => panic!("rotate: {other:?}"),
    }
    // The daemon asks for the lease only once cfssl has signed what it needs.
    support::wait_for(
        "the daemon waiting for the lease",
        Duration::from_secs(60),
        || async { gate.signed_when_asked.lock().unwrap().to_owned() },
    )
    .await;
    let asked = gate.signed_when_asked.lock().unwrap().unwrap();
    assert!(
        asked > 0,
        "nothing was signed before the lease was asked for"
    );
    let log_before = cfssl.signed();

    // Twenty minutes later on its clock, the turn comes: what cfssl signed is installed as is.
    gate.open.send_replace(true);
    let done = support::wait_for("the rotation", Duration::from_secs(60), || async {
        match client::request(
            &socket,
            Request::History { limit: None },
            Duration::from_secs(5),
        )
        .await
        {
            Ok(Response::History(h)) => h.into_iter().find(|r| r.finished_at.is_some()),
            _ => None,
        }
    })
    .await;
    assert_eq!(done.state, HistoryState::Success, "{done:#?}");
    assert_eq!(done.fencing_token, Some(7));
    assert_eq!(
        cfssl.signed(),
        log_before,
        "nothing is signed while the lease is held"
    );
    trigger.stop("test over");
    task.await.unwrap().unwrap();
}

/// Certificates cfssl signed, from its log (as `Cfssl::signed` counts them).
fn count_signed(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("serve.log"))
        .unwrap_or_default()
        .matches("signed certificate with serial")
        .count()
}

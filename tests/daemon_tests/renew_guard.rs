//! The guard (the daemon's lease later): a rotation that finds it lost before a disruptive step
//! stops there and installs nothing more; the journal says where, and the next holder rolls the
//! rotation forward. Driven through the library, as the daemon will drive it.
// Helpers outside #[test] functions panic on purpose too (clippy's allow-unwrap-in-tests
// covers only #[test] bodies).

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};

use certrotd::config::{self, LoadOptions, Settings};
use certrotd::pki::encode::KeySpec;
use certrotd::pki::layout::Layout;
use certrotd::root::Root;
use certrotd::rotation::journal::{Journal, Phase};
use certrotd::rotation::plan::{self, PlanOptions};
use certrotd::rotation::{
    Context, Guard, GuardLost, RotationError, RotationType, Selection, StateDirs, Unguarded,
    execute, finish_interrupted, lock, select,
};
use certrotd::sandbox::SandboxOptions;
use support::renewal::*;
use time::OffsetDateTime;

/// Holds for `allowed` checks, then is lost for good.
struct Lease {
    allowed: usize,
    checks: AtomicUsize,
}

impl Guard for Lease {
    fn check(&self, step: &str) -> Result<(), GuardLost> {
        let n = self.checks.fetch_add(1, Ordering::SeqCst);
        if n < self.allowed {
            Ok(())
        } else {
            Err(GuardLost(format!("lease lost before {step}")))
        }
    }
}

fn settings(node: &Node) -> Settings {
    config::load(&LoadOptions {
        config: Some(&node.root.join("certrotd.toml")),
        root: Some(&node.root),
    })
    .unwrap()
}

/// Plans `--type all` and runs it under `guard`.
fn rotate(node: &Node, guard: &dyn Guard) -> (String, Result<execute::Report, RotationError>) {
    let s = settings(node);
    let root = Root::new(&s.root);
    let state = StateDirs::new(&root, &s.state_dir).unwrap();
    let _lock = lock::acquire(&state).unwrap();
    let inv = certrotd::inventory::Inventory::for_settings(&s);
    let selection = Selection {
        types: vec![RotationType::All],
        certs: vec![],
    };
    let selected = select::select(&inv, &selection).unwrap();
    let opts = PlanOptions {
        key_policy: s.renew.key_policy,
        validity: s.renew.validity,
        force: false,
        issuer: s.issuer.clone(),
    };
    let plan = plan::make(&inv, &selected, &root, &opts, OffsetDateTime::now_utc());
    let ctx = Context {
        root: &root,
        state: &state,
        backups_keep: s.renew.backups_keep,
        guard,
    };
    (plan.id.clone(), execute::run(&ctx, &plan))
}

fn phase(node: &Node, id: &str) -> Phase {
    Journal::load(&node.state().join("rotations").join(id))
        .unwrap()
        .unwrap()
        .phase
}

fn recover_with(
    node: &Node,
    guard: &dyn Guard,
) -> Result<Vec<finish_interrupted::Interrupted>, RotationError> {
    let s = settings(node);
    let root = Root::new(&s.root);
    let state = StateDirs::new(&root, &s.state_dir).unwrap();
    let _lock = lock::acquire(&state).unwrap();
    finish_interrupted::finish_all(&Context {
        root: &root,
        state: &state,
        backups_keep: s.renew.backups_keep,
        guard,
    })
}

#[test]
fn a_lost_guard_stops_the_rotation_and_the_next_holder_finishes_it() {
    let base = Node::sandbox(&SandboxOptions {
        key: KeySpec::EcdsaP256,
        ..SandboxOptions::default()
    });

    // Lost before the first install: nothing is installed and the rotation is abandoned.
    let node = base.copy();
    let before = snapshot(&node.root);
    let (id, r) = rotate(
        &node,
        &Lease {
            allowed: 0,
            checks: AtomicUsize::new(0),
        },
    );
    let err = r.unwrap_err();
    assert!(
        err.to_string().contains("lease lost before installing"),
        "{err}"
    );
    assert_eq!(phase(&node, &id), Phase::RolledBack);
    assert_eq!(snapshot(&node.root), before);

    // Lost after three installs: exactly three changes are in place and the journal says
    // installing; recovery under a lost guard installs nothing either.
    let node = base.copy();
    let before = snapshot(&node.root);
    let (id, r) = rotate(
        &node,
        &Lease {
            allowed: 4,
            checks: AtomicUsize::new(0),
        },
    );
    assert!(matches!(r, Err(RotationError::GuardLost { .. })), "{r:?}");
    assert_eq!(phase(&node, &id), Phase::Installing);
    let changed = |now: &std::collections::BTreeMap<std::path::PathBuf, Held>| {
        before
            .keys()
            .chain(now.keys())
            .filter(|k| before.get(*k) != now.get(*k))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let mid = snapshot(&node.root);
    assert_eq!(changed(&mid), 3);
    let lost = Lease {
        allowed: 0,
        checks: AtomicUsize::new(0),
    };
    assert!(matches!(
        recover_with(&node, &lost),
        Err(RotationError::GuardLost { .. })
    ));
    assert_eq!(snapshot(&node.root), mid);
    assert_eq!(phase(&node, &id), Phase::Installing);

    // The next holder rolls it forward.
    let done = recover_with(&node, &Unguarded).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].action,
        finish_interrupted::Resolution::RolledForward
    );
    assert_eq!(phase(&node, &id), Phase::Committed);
    assert_consistent(&node.root, Some(vec![Layout::Kubeadm]), &[]);
    assert!(changed(&snapshot(&node.root)) > 3);
}

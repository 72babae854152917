//! CA rotation driven by the daemon's own loop on a single sandbox node (the records in its state
//! directory beside the in-memory lease): started by `[ca] rotate_before`, carried through every
//! phase with zero dwell, judged from the files and the restarts.

use std::time::Duration;

use super::fakes::Event;
use super::{Builder, Node};
use crate::ca::phase::{Level, Phase};
use crate::ca::record::{LocalStore, RecordStore};
use crate::ca::{Track, fingerprint, node};
use crate::history::State;
use crate::pki::layout::Component;

const MINUTE: Duration = Duration::from_secs(60);

async fn phase(n: &Node, track: Track) -> Option<Phase> {
    let store = LocalStore::new(&n.settings.in_root(&n.settings.state_dir));
    store.load(track).await.unwrap().map(|(r, _)| r.phase)
}

#[tokio::test(start_paused = true)]
async fn a_due_ca_is_rotated_by_the_daemon_through_every_phase_to_completed() {
    let n = Builder::default()
        .configure(|s| {
            // Every CA of the fresh sandbox is due at once.
            s.ca.rotate_before = Some(Duration::from_secs(100 * 365 * 86_400));
            s.ca.dwell_trust_both = Duration::ZERO;
            s.ca.dwell_issue_new = Duration::ZERO;
            s.ca.dwell_distrust_old = Duration::ZERO;
        })
        .start()
        .await;
    let pki = n.settings.in_root("/etc/kubernetes/pki");
    let old: Vec<String> = [Track::EtcdCa, Track::FrontProxyCa]
        .iter()
        .map(|t| fingerprint(&crate::ca::drive::disk_ca(*t, &pki).unwrap().der))
        .collect();
    for track in [Track::EtcdCa, Track::FrontProxyCa] {
        let mut done = false;
        for _ in 0..600 {
            if phase(&n, track).await == Some(Phase::Completed) {
                done = true;
                break;
            }
            n.pass(Duration::from_secs(1)).await;
        }
        assert!(
            done,
            "{track}: not Completed; now {:?}",
            phase(&n, track).await
        );
    }
    let store = LocalStore::new(&n.settings.in_root(&n.settings.state_dir));
    for (track, old_fp) in [Track::EtcdCa, Track::FrontProxyCa].iter().zip(&old) {
        let (r, _) = store.load(*track).await.unwrap().unwrap();
        assert_eq!(&r.old_fp, old_fp);
        assert_ne!(r.new_fp, r.old_fp);
        // The disk holds the new CA alone and every leaf chains to it.
        let proof = node::prove(*track, &pki, &r.old_fp, &r.new_fp).unwrap();
        assert_eq!(proof.level, Level::DistrustOld, "{track}: {}", proof.detail);
        assert_eq!(
            fingerprint(&crate::ca::drive::disk_ca(*track, &pki).unwrap().der),
            r.new_fp
        );
        // The node took each step once, in order.
        let steps: Vec<String> = n
            .history()
            .into_iter()
            .filter(|h| h.id.starts_with(&r.rotation_id) && h.state == State::Success)
            .map(|h| h.id.rsplit('.').next().unwrap().to_owned())
            .rev()
            .collect();
        assert_eq!(
            steps,
            ["trust-both", "issue-new", "distrust-old"],
            "{track}: {:#?}",
            n.history()
                .iter()
                .map(|h| (&h.id, h.state, &h.reason))
                .collect::<Vec<_>>()
        );
    }
    // Every consumer restarted at each of the three steps of its track.
    let restarts = n.log.restarts();
    let count = |c| restarts.iter().filter(|x| **x == c).count();
    assert!(count(Component::Etcd) >= 3, "{restarts:?}");
    assert!(count(Component::KubeControllerManager) >= 3, "{restarts:?}");
    // Each step held the lease.
    assert!(n.log.count(&Event::AcquireDropped) == 0);
    // Idle again, with nothing left open: the next wake is far away.
    n.pass(MINUTE).await;
    assert_eq!(phase(&n, Track::EtcdCa).await, Some(Phase::Completed));
}

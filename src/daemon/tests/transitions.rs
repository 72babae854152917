//! Every transition of the loop, on a sandbox node whose leaves are due, in paused time.

use std::time::Duration;

use time::OffsetDateTime;

use super::fakes::{Event, FakeComponents, Timeline, fingerprint};
use super::{Builder, Node};
use crate::control::proto::{Request, Response, StatusReport};
use crate::daemon::liveness::Liveness;
use crate::daemon::mode::Step;
use crate::daemon::notify::Notifier;
use crate::daemon::{components::Components, turn};
use crate::history::State;
use crate::pki::layout::Component;

const MINUTE: Duration = Duration::from_secs(60);

fn latest_is(state: State) -> impl Fn(&Node) -> bool {
    move |n| n.history().first().is_some_and(|r| r.state == state)
}

async fn status(n: &Node) -> StatusReport {
    let socket = n.settings.in_root(&n.settings.control.socket);
    match crate::control::client::request(&socket, Request::Status, Duration::from_secs(5)).await {
        Ok(Response::Status(s)) => s,
        other => panic!("status: {other:?}"),
    }
}

fn proved(n: &Node) -> Vec<Component> {
    n.log.pick(|e| match e {
        Event::Proved(c) => Some(*c),
        _ => None,
    })
}

/// (step, witness fingerprint) of every passed confirmation.
fn confirms(n: &Node) -> Vec<(String, u64)> {
    n.log.pick(|e| match e {
        Event::Confirmed { step, witness } => Some((step.clone(), *witness)),
        _ => None,
    })
}

#[tokio::test(start_paused = true)]
async fn a_due_rotation_waits_for_the_lease_then_confirms_it_before_every_disruption() {
    let n = Builder::default()
        .lease_closed()
        .restart_delay(Duration::from_secs(20))
        .start()
        .await;
    let before = fingerprint(&n.witness);
    // Waiting: the lease is asked for, nothing is touched.
    n.pass(Duration::from_secs(5)).await;
    let s = status(&n).await;
    assert!(!s.lease.held, "{:?}", s.lease);
    assert_eq!(s.lease.detail.as_deref(), Some("waiting for the lease"));
    assert!(n.history().is_empty() && n.log.restarts().is_empty());
    // Rotating once the lease is granted.
    n.lease.open();
    n.until("a restart", MINUTE, |n| !n.log.restarts().is_empty())
        .await;
    let s = status(&n).await;
    assert!(s.lease.held, "{:?}", s.lease);
    assert_eq!(s.rotation.map(|r| r.step).as_deref(), Some("restart"));
    n.until("success", 10 * MINUTE, latest_is(State::Success))
        .await;

    let r = &n.history()[0];
    assert_eq!(r.fencing_token, Some(1));
    let consumers = n.consumers(&r.id);
    assert!(consumers.contains(&Component::KubeApiserver) && consumers.contains(&Component::Etcd));
    assert_eq!(n.log.restarts(), consumers, "each consumer once, in order");
    assert_eq!(proved(&n), consumers);
    // The install was confirmed while the old certificate was still on disk, each restart with
    // the new one in place.
    let c = confirms(&n);
    assert_eq!(c[0], ("installing".to_owned(), before));
    let restarts: Vec<String> = consumers
        .iter()
        .map(|c| format!("restarting {c}"))
        .collect();
    assert_eq!(
        c[1..].iter().map(|(s, _)| s).collect::<Vec<_>>(),
        restarts.iter().collect::<Vec<_>>()
    );
    let after = fingerprint(&n.witness);
    assert_ne!(after, before);
    assert!(c[1..].iter().all(|(_, w)| *w == after));
    // Each restart right after its confirmation.
    let disruptions: Vec<Event> = n
        .log
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::Confirmed { .. } | Event::Restart(_)))
        .collect();
    for (pair, c) in disruptions[1..].chunks(2).zip(&consumers) {
        assert!(
            matches!(&pair[0], Event::Confirmed { step, .. } if *step == format!("restarting {c}"))
        );
        assert_eq!(pair[1], Event::Restart(*c));
    }
    let mut steps = vec!["health-gate", "install"];
    steps.extend(consumers.iter().map(|_| "restart"));
    steps.push("verify");
    n.until("every step mirrored", MINUTE, |n| {
        n.steps().len() >= steps.len()
    })
    .await;
    assert_eq!(n.steps(), steps);
    let events = n.log.events();
    assert_eq!(n.log.count(&Event::Released(1)), 1);
    let released = events
        .iter()
        .position(|e| *e == Event::Released(1))
        .unwrap();
    let last_proof = events
        .iter()
        .rposition(|e| matches!(e, Event::Proved(_)))
        .unwrap();
    assert!(released > last_proof, "{events:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_lease_lost_between_restarts_leaves_the_rotation_open_until_the_next_turn() {
    let n = Builder::default().start().await;
    // 1: install, 2: the first restart, 3: the second restart.
    n.lease.fail_confirms_from(Some(3));
    n.until("left open", MINUTE, |n| {
        n.log.count(&Event::Released(1)) == 1 && !n.history().is_empty()
    })
    .await;
    let r = n.history()[0].clone();
    let consumers = n.consumers(&r.id);
    assert_eq!(
        n.log.restarts(),
        consumers[..1],
        "the second restart must not happen"
    );
    assert_eq!(r.state, State::Initiated);
    let reason = r.reason.unwrap_or_default();
    assert!(
        reason.contains(&format!("restarting {}", consumers[1])),
        "{reason}"
    );
    assert!(reason.contains("the next turn"), "{reason}");

    // The other node is done: the next turn finishes the same rotation at once (the queue
    // paces it; an open rotation does not wait out a backoff first).
    n.lease.fail_confirms_from(None);
    n.lease.open();
    n.until("resumed", 2 * MINUTE, latest_is(State::Success))
        .await;
    let done = &n.history()[0];
    assert_eq!((done.id.as_str(), n.history().len()), (r.id.as_str(), 1));
    assert_eq!(done.fencing_token, Some(2));
    let left = r.disruptive_to.unwrap();
    let resumed = done.disruptive_from.unwrap();
    assert!(
        resumed - left < n.settings.issuer.retry_initial / 2,
        "{left} {resumed}"
    );
    assert_eq!(n.log.restarts()[1..], consumers[..]);
    assert_eq!(proved(&n), consumers);
    assert_eq!(n.log.count(&Event::Released(2)), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_proof_rolls_back_then_backs_off_before_trying_again() {
    let n = Builder::default()
        .failing_proofs(Component::KubeApiserver, 1)
        .start()
        .await;
    let before = fingerprint(&n.witness);
    n.until("failed", MINUTE, latest_is(State::Failed)).await;
    let failed = n.history()[0].clone();
    let reason = failed.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("rolled back to the previous certificates, which are served again"),
        "{reason}"
    );
    assert_eq!(
        fingerprint(&n.witness),
        before,
        "the old certificate is back"
    );
    let consumers = n.consumers(&failed.id);
    // Restarted onto the new certificates, then again onto the old ones.
    assert_eq!(
        n.log.restarts(),
        [consumers.clone(), consumers.clone()].concat()
    );
    assert_eq!(
        n.log.count(&Event::ProofFailed(Component::KubeApiserver)),
        1
    );

    // The pause is drawn between half and all of retry_initial.
    let initial = n.settings.issuer.retry_initial;
    n.pass(initial / 2 - Duration::from_secs(1)).await;
    assert_eq!(n.history().len(), 1, "no new attempt inside the pause");
    assert_eq!(n.log.restarts().len(), 2 * consumers.len());
    n.until("retried", initial, |n| n.history().len() == 2)
        .await;
    n.until("retried successfully", MINUTE, latest_is(State::Success))
        .await;
    let retry = &n.history()[0];
    let pause = retry.started_at - failed.finished_at.unwrap();
    assert!(
        pause >= initial / 2 && pause <= initial + Duration::from_secs(5),
        "{pause}"
    );
    assert_ne!(fingerprint(&n.witness), before);
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_waiting_for_the_lease_is_prompt_and_leaves_nothing() {
    let mut n = Builder::default().lease_closed().start().await;
    let before = fingerprint(&n.witness);
    n.pass(Duration::from_secs(5)).await;
    assert_eq!(
        status(&n).await.lease.detail.as_deref(),
        Some("waiting for the lease")
    );
    n.stop();
    n.join(Duration::from_secs(1)).await.unwrap();
    assert_eq!(fingerprint(&n.witness), before, "nothing installed");
    assert!(n.history().iter().all(|r| r.state != State::Initiated));
    // The pending acquire was given up, so it leaves no queue entry behind.
    assert_eq!(n.log.events(), [Event::AcquireDropped]);
    assert!(!n.settings.in_root(&n.settings.control.socket).exists());
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_a_rotation_waits_for_its_end() {
    let mut n = Builder::default().restart_delay(2 * MINUTE).start().await;
    n.until("a restart", MINUTE, |n| !n.log.restarts().is_empty())
        .await;
    n.stop();
    n.pass(Duration::from_secs(30)).await;
    assert!(!n.stopped(), "stopped half-way through a rotation");
    n.join(30 * MINUTE).await.unwrap();
    let r = &n.history()[0];
    assert_eq!(r.state, State::Success, "{r:?}");
    assert_eq!(n.log.restarts(), n.consumers(&r.id));
    assert_eq!(n.log.count(&Event::Released(1)), 1);
}

#[tokio::test(start_paused = true)]
async fn a_restart_past_its_bound_starves_the_watchdog() {
    let settings = crate::config::Settings::default();
    let bound = turn::bound(&settings, &Step::Restart(Component::Etcd));
    assert_eq!(
        bound,
        settings.restart.job_timeout + Duration::from_secs(30)
    );
    let every = Duration::from_secs(5);
    let mut live = Liveness::new(Notifier::default(), Some(every));
    let pulse = live.pulse.clone();
    let log = std::sync::Arc::new(Timeline::default());
    let slow = FakeComponents::new(log.clone(), bound + 4 * every, &[]);

    pulse.beat("restarting etcd", bound);
    let restart = slow.restart(Component::Etcd, OffsetDateTime::now_utc());
    let watch = async {
        tokio::time::sleep(bound + Duration::from_secs(1)).await;
        pulse.alive()
    };
    let (restarted, during) = live.drive(async { tokio::join!(restart, watch) }).await;
    restarted.unwrap();
    assert_eq!(log.restarts(), [Component::Etcd]);
    assert_eq!(during.unwrap_err().what, "restarting etcd");
    // Fed at every tick inside the bound, at none of the four after it.
    let inside = bound.as_secs() / every.as_secs();
    assert_eq!(live.fed(), inside);
    // The next step beats again, and feeding resumes.
    pulse.beat("proving", turn::bound(&settings, &Step::Verify));
    assert!(live.tick());
    assert_eq!(live.fed(), inside + 1);
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_journal_does_not_keep_due_certificates_from_being_renewed() {
    let n = Builder::default()
        .before_start(|s| {
            let id =
                crate::rotation::plan::new_id(OffsetDateTime::now_utc() - time::Duration::days(1));
            let dir = s.in_root(&s.state_dir).join("rotations").join(id);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("journal.json"), b"{ not a journal \x00\xff").unwrap();
        })
        .start()
        .await;
    n.until("renewed", 5 * MINUTE, latest_is(State::Success))
        .await;
    assert!(!n.stopped());
    // The bad journal was moved aside and its rotation recorded Failed, naming it.
    let quarantine = n.settings.in_root(&n.settings.state_dir).join("quarantine");
    assert_eq!(std::fs::read_dir(&quarantine).unwrap().count(), 1);
    let records = n.history();
    assert!(
        records.iter().any(|r| r.state == State::Failed
            && r.reason
                .as_deref()
                .is_some_and(|x| x.contains("quarantine"))),
        "{records:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_consumer_that_reloads_by_itself_is_proved_and_not_restarted() {
    let n = Builder::default().prefer_reload().start().await;
    n.until("success", 10 * MINUTE, latest_is(State::Success))
        .await;
    let r = &n.history()[0];
    let consumers = n.consumers(&r.id);
    // etcd re-reads its server and peer certificates, the kubelet its serving certificate (the
    // table), and their proofs passed within the reload period: neither is restarted. The API
    // server is given its etcd client certificate, which nothing shows it re-reads: restarted.
    let by_itself = [Component::Etcd, Component::Kubelet];
    assert_eq!(r.reloaded, ["etcd", "kubelet"], "{r:#?}");
    for c in by_itself {
        assert!(!n.log.restarts().contains(&c), "{:?}", n.log.restarts());
        let restarting = format!("restarting {c}");
        assert!(!confirms(&n).iter().any(|(s, _)| *s == restarting));
    }
    assert!(n.log.restarts().contains(&Component::KubeApiserver));
    let restarted: Vec<String> = consumers
        .iter()
        .filter(|c| !by_itself.contains(c))
        .map(ToString::to_string)
        .collect();
    assert_eq!(r.restarted, restarted);
}

#[tokio::test(start_paused = true)]
async fn a_consumer_that_does_not_serve_its_new_certificate_in_time_is_restarted() {
    let n = Builder::default()
        .prefer_reload()
        .failing_proofs(Component::Etcd, 1)
        .start()
        .await;
    n.until("success", 10 * MINUTE, latest_is(State::Success))
        .await;
    let r = &n.history()[0];
    assert_eq!(r.reloaded, ["kubelet"], "{r:#?}");
    assert!(r.restarted.contains(&"etcd".to_owned()), "{r:#?}");
    assert!(n.log.restarts().contains(&Component::Etcd));
    // Restarted after its lease confirmation, as every restart.
    assert!(confirms(&n).iter().any(|(s, _)| s == "restarting etcd"));
}

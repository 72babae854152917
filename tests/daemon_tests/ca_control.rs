//! `certrotd ca rotate|status|abort` and `rotate --type etcd-ca` through the real binary and the
//! real control server, answered by the daemon's own handler over a `Shared` whose loop is this
//! test reading the command inbox: what reaches the loop, what the client prints and exits with,
//! who is refused, and that the CA view crosses the socket without the wrapped key or any PEM.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use certrotd::ca::record::{CaRecord, NodeStep, PhaseMark};
use certrotd::ca::view::{CaView, DiskCa, TrackView};
use certrotd::ca::{Level, Phase, Track};
use certrotd::control::client;
use certrotd::control::proto::{ClusterView, ErrorKind, Request, Response};
use certrotd::control::proto_ca::CaStatusView;
use certrotd::control::server;
use certrotd::daemon::handler::{Command, DaemonHandler};
use tempfile::TempDir;
use time::macros::datetime;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::control::NOBODY;

const T: Duration = Duration::from_secs(10);
/// How long a client of a real daemon may wait.
const LONG: Duration = Duration::from_secs(40);
/// What the record's wrapped key holds here: it must never reach a client.
const WRAPPED: &str = "c2VjcmV0LXdyYXBwZWQta2V5LW5ldmVyLWluLWEtcmVwbHk";

/// The real server on a socket others may reach, answered by the daemon's handler.
struct Daemon {
    _dir: TempDir,
    socket: PathBuf,
    handler: Arc<DaemonHandler>,
    inbox: mpsc::Receiver<Command>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Daemon {
    async fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("certrotd.sock");
        // 0666: nobody reaches the server, which then decides by the peer's uid.
        let listener = server::bind(&socket, 0o666, None).unwrap();
        let (handler, inbox) = super::control::daemon_handler(&dir);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, handler.clone(), async {
            let _ = stopped.await;
        }));
        Daemon {
            _dir: dir,
            socket,
            handler,
            inbox,
            stop,
            task,
        }
    }

    fn socket(&self) -> &str {
        self.socket.to_str().unwrap()
    }

    /// The next command the loop would get.
    async fn next_command(&mut self) -> Command {
        tokio::time::timeout(T, self.inbox.recv())
            .await
            .expect("a command reaches the loop")
            .expect("the inbox is open")
    }

    /// Asserts that nothing reached the loop.
    fn assert_no_command(&mut self) {
        if let Ok(c) = self.inbox.try_recv() {
            panic!("nothing should have reached the loop, got {c:?}");
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(T, self.task).await.unwrap().unwrap();
    }
}

/// Starts the real `certrotd` binary with `args`, as root or dropped to nobody.
fn cli(args: &[&str], as_nobody: bool) -> JoinHandle<Output> {
    cli_within(args, as_nobody, T)
}

/// [`cli`] for a client that may wait up to `limit` (a real daemon's loop may be busy; the
/// client's own bound is 30 s).
fn cli_within(args: &[&str], as_nobody: bool, limit: Duration) -> JoinHandle<Output> {
    let mut cmd = crate::control::certrotd_cli(args, as_nobody);
    tokio::spawn(async move {
        tokio::time::timeout(limit, cmd.output())
            .await
            .expect("the client answers in time")
            .unwrap()
    })
}

async fn finished(run: JoinHandle<Output>) -> Output {
    run.await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An etcd-ca rotation in IssueNew: cp1 has proved it, cp2 is still at TrustBoth.
fn record() -> CaRecord {
    let mut nodes = BTreeMap::new();
    nodes.insert(
        "cp1".to_owned(),
        NodeStep {
            level: Level::IssueNew,
            fencing_token: 12,
            proved_at: datetime!(2026-05-01 10:02:00 UTC),
            detail: "etcd/ca.crt = new,old".into(),
        },
    );
    nodes.insert(
        "cp2".to_owned(),
        NodeStep {
            level: Level::TrustBoth,
            fencing_token: 9,
            proved_at: datetime!(2026-05-01 10:00:40 UTC),
            detail: "etcd/ca.crt = old,new".into(),
        },
    );
    CaRecord {
        track: Track::EtcdCa,
        rotation_id: "20260501T100000Z-ca0001".into(),
        phase: Phase::IssueNew,
        old_fp: "0a".repeat(32),
        new_fp: "0b".repeat(32),
        old_ca_pem: "-----BEGIN CERTIFICATE-----\nOLDCAPEM\n-----END CERTIFICATE-----\n".into(),
        new_ca_pem: "-----BEGIN CERTIFICATE-----\nNEWCAPEM\n-----END CERTIFICATE-----\n".into(),
        wrapped_key: WRAPPED.into(),
        members: vec!["cp1".into(), "cp2".into()],
        nodes,
        phases: vec![
            PhaseMark {
                phase: Phase::TrustBoth,
                started_at: datetime!(2026-05-01 10:00:00 UTC),
                by: "cp1".into(),
                fencing_token: 8,
            },
            PhaseMark {
                phase: Phase::IssueNew,
                started_at: datetime!(2026-05-01 10:01:30 UTC),
                by: "cp1".into(),
                fencing_token: 11,
            },
        ],
    }
}

fn view() -> CaView {
    CaView {
        as_of: Some(datetime!(2026-05-01 10:03:00 UTC)),
        tracks: vec![
            TrackView {
                track: Track::EtcdCa,
                disk: Some(DiskCa {
                    fingerprint: "0b".repeat(32),
                    subject: "CN=etcd-ca".into(),
                    not_after: datetime!(2036-04-29 10:00:00 UTC),
                    due_from: datetime!(2035-03-30 10:00:00 UTC),
                }),
                disk_error: None,
                record: Some(record()),
                order: vec!["cp1".into(), "cp2".into()],
                blockers: vec!["cp2 has not proved issue-new".into()],
                error: None,
            },
            TrackView {
                track: Track::FrontProxyCa,
                disk: None,
                disk_error: None,
                record: None,
                order: vec![],
                blockers: vec![],
                error: Some("reading the record: etcd unreachable".into()),
            },
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotate_reaches_the_loop_and_prints_the_id_it_replies() {
    let mut d = Daemon::start().await;
    let socket = d.socket().to_owned();

    let run = cli(&["ca", "rotate", "etcd-ca", "--socket", &socket], false);
    let Command::CaRotate { track, from, reply } = d.next_command().await else {
        panic!("expected CaRotate");
    };
    assert_eq!((track, from), (Track::EtcdCa, None));
    reply.send(Ok("20260501T100000Z-ca0001".into())).unwrap();
    let out = finished(run).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "20260501T100000Z-ca0001\n");
    assert!(text(&out.stderr).contains("certrotd ca status"), "{out:?}");

    // --from, given relative, reaches the daemon absolute.
    let from = tempfile::tempdir().unwrap();
    let parent = from.path().parent().unwrap().to_owned();
    let name = from
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let bin = env!("CARGO_BIN_EXE_certrotd");
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "ca",
        "rotate",
        "front-proxy-ca",
        "--from",
        &name,
        "--socket",
        &socket,
    ])
    .current_dir(&parent)
    .env("CERTROTD_LOG", "warn");
    let run = tokio::spawn(async move { cmd.output().await.unwrap() });
    let Command::CaRotate {
        track,
        from: got,
        reply,
    } = d.next_command().await
    else {
        panic!("expected CaRotate");
    };
    assert_eq!(track, Track::FrontProxyCa);
    assert_eq!(
        got.as_deref(),
        Some(fs::canonicalize(from.path()).unwrap().as_path())
    );
    reply.send(Ok("fp-1".into())).unwrap();
    let out = finished(run).await;
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "fp-1\n".into()),
        "{out:?}"
    );

    // `rotate --type etcd-ca` starts the same CA rotation.
    let run = cli(&["rotate", "--type", "etcd-ca", "--socket", &socket], false);
    let Command::CaRotate { track, from, reply } = d.next_command().await else {
        panic!("expected CaRotate from rotate --type etcd-ca");
    };
    assert_eq!((track, from), (Track::EtcdCa, None));
    reply.send(Ok("ca-2".into())).unwrap();
    let out = finished(run).await;
    assert!(text(&out.stderr).contains("certrotd ca status"), "{out:?}");
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "ca-2\n".into()),
        "{out:?}"
    );

    // The loop's refusal (a rotation already open) is shown, exit 1.
    let run = cli(&["ca", "rotate", "etcd-ca", "--socket", &socket], false);
    let Command::CaRotate { reply, .. } = d.next_command().await else {
        panic!("expected CaRotate");
    };
    reply
        .send(Err(
            "etcd-ca is already being rotated (ca-2, phase TrustBoth)".into(),
        ))
        .unwrap();
    let out = finished(run).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("already being rotated (ca-2"),
        "{out:?}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_root_client_may_read_the_ca_status_but_not_rotate_or_abort() {
    let mut d = Daemon::start().await;
    let socket = d.socket().to_owned();
    *d.handler.0.ca.write().unwrap() = view();

    for args in [
        &["ca", "rotate", "etcd-ca"][..],
        &["ca", "abort"][..],
        &["ca", "abort", "front-proxy-ca"][..],
        &["rotate", "--type", "etcd-ca"][..],
    ] {
        let mut args = args.to_vec();
        args.extend(["--socket", &socket]);
        let out = finished(cli(&args, true)).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("needs root"), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("uid {NOBODY}")),
            "{args:?}: {stderr}"
        );
    }
    d.assert_no_command();

    let out = finished(cli(&["ca", "status", "--socket", &socket], true)).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("IssueNew"), "{out:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_status_renders_the_view_and_never_the_wrapped_key_or_pem() {
    let d = Daemon::start().await;
    let socket = d.socket().to_owned();
    *d.handler.0.ca.write().unwrap() = view();

    let out = finished(cli(
        &["ca", "status", "--socket", &socket, "-o", "json"],
        false,
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json = text(&out.stdout);
    for secret in [WRAPPED, "BEGIN CERTIFICATE", "OLDCAPEM", "NEWCAPEM"] {
        assert!(!json.contains(secret), "{secret} leaked: {json}");
    }
    let got: CaStatusView = serde_json::from_str(&json).unwrap();
    assert_eq!(got.as_of.as_deref(), Some("2026-05-01T10:03:00Z"));
    let etcd = &got.tracks[0];
    assert_eq!(etcd.track, "etcd-ca");
    let disk = etcd.disk.as_ref().unwrap();
    assert_eq!(
        (
            disk.subject.as_str(),
            disk.not_after.as_str(),
            disk.rotates_from.as_str()
        ),
        ("CN=etcd-ca", "2036-04-29T10:00:00Z", "2035-03-30T10:00:00Z")
    );
    let r = etcd.rotation.as_ref().unwrap();
    assert_eq!(r.phase, "IssueNew");
    assert_eq!(r.phase_started_at.as_deref(), Some("2026-05-01T10:01:30Z"));
    assert_eq!(r.new_fingerprint, "0b".repeat(32));
    let steps: Vec<_> = r
        .nodes
        .iter()
        .map(|n| (n.node.as_str(), n.level.as_deref(), n.done, n.fencing_token))
        .collect();
    assert_eq!(
        steps,
        [
            ("cp1", Some("issue-new"), true, Some(12)),
            ("cp2", Some("trust-both"), false, Some(9)),
        ]
    );
    assert_eq!(etcd.blockers, ["cp2 has not proved issue-new"]);
    assert_eq!(
        got.tracks[1].error.as_deref(),
        Some("reading the record: etcd unreachable")
    );

    // The table says the same for people, and no more.
    let out = finished(cli(&["ca", "status", "--socket", &socket], false)).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = text(&out.stdout);
    assert!(
        !table.contains(WRAPPED) && !table.contains("BEGIN"),
        "{table}"
    );
    let cp2 = table
        .lines()
        .find(|l| l.trim_start().starts_with("cp2 "))
        .unwrap();
    assert!(
        cp2.contains("trust-both") && cp2.contains(" no ") && cp2.ends_with('9'),
        "{table}"
    );
    assert!(
        table.contains("blocked: cp2 has not proved issue-new"),
        "{table}"
    );
    assert!(table.contains("last error: reading the record"), "{table}");

    // Over the protocol too: nothing in the answer's bytes.
    let answer = client::request(&d.socket, Request::CaStatus, T)
        .await
        .unwrap();
    let bytes = serde_json::to_string(&answer).unwrap();
    assert!(
        !bytes.contains(WRAPPED) && !bytes.contains("BEGIN"),
        "{bytes}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_abort_reaches_the_loop_and_its_errors_exit_1() {
    let mut d = Daemon::start().await;
    let socket = d.socket().to_owned();

    let run = cli(&["ca", "abort", "etcd-ca", "--socket", &socket], false);
    let Command::CaAbort { track, reply } = d.next_command().await else {
        panic!("expected CaAbort");
    };
    assert_eq!(track, Some(Track::EtcdCa));
    reply
        .send(Err("no etcd-ca rotation to abort".into()))
        .unwrap();
    let out = finished(run).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("no etcd-ca rotation to abort"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");

    // Without a track: every open one.
    let run = cli(&["ca", "abort", "--socket", &socket], false);
    let Command::CaAbort { track, reply } = d.next_command().await else {
        panic!("expected CaAbort");
    };
    assert_eq!(track, None);
    reply
        .send(Ok("etcd-ca: RollingBack(trust-both) from IssueNew".into()))
        .unwrap();
    let out = finished(run).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "etcd-ca: RollingBack(trust-both) from IssueNew\n"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_track_names_are_refused_naming_the_value() {
    let mut d = Daemon::start().await;
    let socket = d.socket().to_owned();

    // The command line names the value and the tracks there are (usage error, exit 2).
    for args in [
        &["ca", "rotate", "kubernetes-ca"][..],
        &["ca", "abort", "etcd"][..],
    ] {
        let mut args = args.to_vec();
        args.extend(["--socket", &socket]);
        let out = finished(cli(&args, false)).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = text(&out.stderr);
        let bad = args[2];
        assert!(stderr.contains(&format!("'{bad}'")), "{args:?}: {stderr}");
        assert!(
            stderr.contains("etcd-ca") && stderr.contains("front-proxy-ca"),
            "{stderr}"
        );
    }

    // The daemon does too, for a client that sends any string.
    for request in [
        Request::CaRotate {
            track: "kubernetes-ca".into(),
            from: None,
        },
        Request::CaAbort {
            track: Some("kubernetes-ca".into()),
        },
    ] {
        match client::request(&d.socket, request, T).await.unwrap() {
            Response::Error {
                kind: ErrorKind::BadRequest,
                message,
            } => assert!(
                message.contains("\"kubernetes-ca\"")
                    && message.contains("etcd-ca and front-proxy-ca"),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
    }
    // A relative --from sent by some other client is refused, not read from the daemon's cwd.
    match client::request(
        &d.socket,
        Request::CaRotate {
            track: "etcd-ca".into(),
            from: Some("newca".into()),
        },
        T,
    )
    .await
    .unwrap()
    {
        Response::Error {
            kind: ErrorKind::BadRequest,
            message,
        } => assert!(
            message.contains("--from newca") && message.contains("absolute"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }

    // A CA track mixed with leaf types is refused: a CA rotation runs alone.
    let out = finished(cli(
        &[
            "rotate",
            "--type",
            "etcd-ca",
            "--type",
            "etcd-leaf",
            "--socket",
            &socket,
        ],
        false,
    ))
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("etcd-ca is a CA rotation"),
        "{out:?}"
    );
    // An unknown leaf type still names itself as before.
    let out = finished(cli(
        &["rotate", "--type", "etcd-cax", "--socket", &socket],
        false,
    ))
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("unknown rotation type"),
        "{out:?}"
    );
    d.assert_no_command();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_cluster_adds_the_ca_tracks_only_when_the_daemon_has_them() {
    let d = Daemon::start().await;
    let state = tempfile::tempdir().unwrap();
    let lease = certrotd::lease::local::LocalLease::new(state.path(), "cp1");
    d.handler
        .0
        .lease
        .set(Some(Arc::new(lease) as Arc<dyn certrotd::lease::Lease>));

    // No CA view yet: the document is as before, without a "ca" key.
    let cluster = |socket: &Path| {
        let socket = socket.to_path_buf();
        async move {
            match client::request(&socket, Request::Cluster, T).await.unwrap() {
                Response::Cluster(v) => v,
                other => panic!("{other:?}"),
            }
        }
    };
    let before = cluster(&d.socket).await;
    let json = serde_json::to_string(&before).unwrap();
    assert!(!json.contains("\"ca\""), "{json}");

    *d.handler.0.ca.write().unwrap() = view();
    // The lease's view is cached for a moment; the CA tracks are read fresh each time.
    let after: ClusterView = cluster(&d.socket).await;
    let tracks: Vec<_> = after
        .ca
        .iter()
        .map(|t| {
            (
                t.track.as_str(),
                t.phase.as_str(),
                t.members_done,
                t.members,
            )
        })
        .collect();
    assert_eq!(
        tracks,
        [("etcd-ca", "IssueNew", 1, 2), ("front-proxy-ca", "-", 0, 0)]
    );

    let out = finished(cli(&["status", "--cluster", "--socket", d.socket()], false)).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = text(&out.stdout);
    let etcd = table.lines().find(|l| l.starts_with("etcd-ca")).unwrap();
    assert!(etcd.contains("IssueNew") && etcd.contains("1/2"), "{table}");
    d.stop().await;
}

/// The whole path on a real daemon: `certrotd sandbox` writes a node (its `[ca]` dwells zero),
/// `certrotd run` serves it, and `ca rotate front-proxy-ca` through the CLI is carried to
/// Completed by the daemon's own loop, as `ca status -o json` shows and the disk confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_daemon_rotates_front_proxy_ca_to_completed_when_asked_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node");
    let bin = env!("CARGO_BIN_EXE_certrotd");
    let node_arg = node.to_str().unwrap();
    let out = finished(cli_within(&["sandbox", "--dir", node_arg], false, LONG)).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let config = node.join("certrotd.toml");
    let config = config.to_str().unwrap();
    let _daemon = tokio::process::Command::new(bin)
        .args(["run", "--config", config])
        .env("CERTROTD_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = || async {
        let out = finished(cli_within(
            &["ca", "status", "-o", "json", "--config", config],
            false,
            LONG,
        ))
        .await;
        (out.status.code() == Some(0))
            .then(|| serde_json::from_slice::<CaStatusView>(&out.stdout).unwrap())
    };
    // Up once the socket answers and the first CA poll has read the tracks.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let before = loop {
        if let Some(v) = status().await.filter(|v| v.as_of.is_some()) {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not come up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let fp = |v: &CaStatusView| {
        let t = v
            .tracks
            .iter()
            .find(|t| t.track == "front-proxy-ca")
            .unwrap();
        (
            t.disk.as_ref().unwrap().fingerprint.clone(),
            t.rotation.clone(),
        )
    };
    let (old_fp, none) = fp(&before);
    assert!(none.is_none(), "never rotated: {before:?}");

    let out = finished(cli_within(
        &["ca", "rotate", "front-proxy-ca", "--config", config],
        false,
        LONG,
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let id = text(&out.stdout).trim().to_owned();
    assert!(!id.is_empty(), "{out:?}");

    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let (disk_fp, rotation) = loop {
        if let Some(v) = status().await {
            let (disk_fp, r) = fp(&v);
            if let Some(r) = r.filter(|r| r.phase == "Completed") {
                break (disk_fp, r);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not Completed in 90 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(rotation.rotation_id, id);
    assert_eq!(rotation.old_fingerprint, old_fp);
    assert_ne!(rotation.new_fingerprint, old_fp);
    assert_eq!(
        disk_fp, rotation.new_fingerprint,
        "the disk holds the new CA"
    );
    let phases: Vec<&str> = rotation.phases.iter().map(|m| m.phase.as_str()).collect();
    assert_eq!(
        phases,
        [
            "Planned",
            "TrustBoth",
            "IssueNew",
            "DistrustOld",
            "Completed"
        ]
    );
    assert!(
        rotation
            .nodes
            .iter()
            .all(|n| n.done && n.level.as_deref() == Some("distrust-old"))
    );
    // The CA file holds the new CA alone.
    let pem = fs::read_to_string(node.join("etc/kubernetes/pki/front-proxy-ca.crt")).unwrap();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 1, "{pem}");

    // Nothing is open any more: an abort is refused, exit 1.
    let out = finished(cli_within(
        &["ca", "abort", "--config", config],
        false,
        LONG,
    ))
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("no CA rotation is open"),
        "{out:?}"
    );
}

//! The control socket, its protocol and the client commands, against a real server in process
//! on a socket in a temp dir; the handler behind it is canned (the daemon's own handler is tested
//! with the daemon). Also the history file and the `[control]` configuration.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certrotd::config::{self, ConfigError, LoadOptions};
use certrotd::control::client::{self, ClientError};
use certrotd::control::frame;
use certrotd::control::proto::{
    self, CertStatus, DaemonInfo, ErrorKind, HistoryRecord, HistoryState, LeaseStatus, Request,
    Response, RotationProgress, StatusReport,
};
use certrotd::control::proto::{
    ClusterView, NodeSummary, QueuedNode as QueueEntry, SlotHolder as HolderRecord,
};
use certrotd::control::server::{
    self, BindError, Handler, HandlerError, HandlerFuture, ServerOptions,
};
use certrotd::history::State;
use certrotd::history::{History, HistoryError};
use certrotd::timefmt::rfc3339;
use tempfile::TempDir;
use time::OffsetDateTime;
use time::macros::datetime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(10);
pub(crate) const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------------------------
// A canned handler and a server in process
// ---------------------------------------------------------------------------------------------

fn cert(name: &str, status: &str, residual_days: i64, next: &str) -> CertStatus {
    CertStatus {
        name: name.to_owned(),
        path: format!("/etc/kubernetes/pki/{name}.crt"),
        kind: if name.ends_with("ca") { "ca" } else { "leaf" }.to_owned(),
        status: status.to_owned(),
        not_after: Some("2026-12-01T10:00:00Z".to_owned()),
        residual_seconds: Some(residual_days * 86_400),
        next_action: next.to_owned(),
        next_action_at: Some("2026-11-01T10:00:00Z".to_owned()),
        consumers: vec!["kube-apiserver".to_owned()],
        problems: vec![],
    }
}

fn canned_status() -> StatusReport {
    StatusReport {
        node: "cp1".to_owned(),
        generated_at: "2026-06-01T10:00:00Z".to_owned(),
        daemon: DaemonInfo {
            version: "0.1.0".to_owned(),
            started_at: "2026-06-01T09:00:00Z".to_owned(),
            pid: 4242,
            config_sources: vec!["/etc/certrotd/certrotd.toml".to_owned()],
        },
        certificates: vec![
            cert("ca", "ok", 3000, "none"),
            cert("apiserver", "ok", 183, "renew"),
            cert("etcd-server", "notify", 50, "notify"),
        ],
        rotation: Some(RotationProgress {
            id: "r-20260601-1".to_owned(),
            step: "verify kube-apiserver".to_owned(),
            started_at: "2026-06-01T09:59:00Z".to_owned(),
            certificates: vec!["front-proxy-client".to_owned()],
        }),
        lease: LeaseStatus {
            backend: "local".to_owned(),
            held: true,
            holder: Some("cp1".to_owned()),
            since: Some("2026-06-01T09:59:00Z".to_owned()),
            detail: None,
        },
        notices: vec!["etcd-server expires in 50d".to_owned()],
        summary: "3 certificates ok; next renewal apiserver in 153d".to_owned(),
        retry: None,
    }
}

fn record(id: &str, state: HistoryState) -> HistoryRecord {
    HistoryRecord {
        id: id.to_owned(),
        node: "cp1".to_owned(),
        certificates: vec!["apiserver".to_owned(), "etcd-server".to_owned()],
        state,
        started_at: "2026-05-01T10:00:00Z".to_owned(),
        finished_at: None,
        reason: Some("expires in 29d".to_owned()),
        disruptive_from: None,
        disruptive_to: None,
        fencing_token: Some(7),
        recovery: false,
        reloaded: Vec::new(),
        restarted: Vec::new(),
    }
}

#[derive(Default)]
struct TestHandler {
    status: Mutex<Option<StatusReport>>,
    rotations: Mutex<Vec<(Vec<String>, Vec<String>)>>,
    reloads: AtomicUsize,
    /// Status calls in progress and the most seen at once.
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    /// How long each status call takes, so that concurrent calls overlap.
    status_delay: Option<Duration>,
    /// What rotate answers instead of an id.
    rotate_error: Option<HandlerError>,
    /// The cluster view (`None`: no lease, as a daemon whose etcd is unreachable).
    cluster: Option<ClusterView>,
}

impl TestHandler {
    fn new() -> Self {
        TestHandler {
            status: Mutex::new(Some(canned_status())),
            ..TestHandler::default()
        }
    }
}

impl Handler for TestHandler {
    fn status(&self) -> HandlerFuture<'_, StatusReport> {
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            if let Some(delay) = self.status_delay {
                tokio::time::sleep(delay).await;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.status
                .lock()
                .unwrap()
                .clone()
                .ok_or_else(|| HandlerError::failed("no inventory yet"))
        })
    }

    fn rotate(&self, types: Vec<String>, certs: Vec<String>) -> HandlerFuture<'_, String> {
        Box::pin(async move {
            if let Some(e) = &self.rotate_error {
                return Err(e.clone());
            }
            let mut rotations = self.rotations.lock().unwrap();
            rotations.push((types, certs));
            Ok(format!("r-test-{}", rotations.len()))
        })
    }

    fn history(&self, limit: Option<usize>) -> HandlerFuture<'_, Vec<HistoryRecord>> {
        Box::pin(async move {
            let mut all = vec![
                record("r-3", HistoryState::Initiated),
                record("r-2", HistoryState::Failed),
                record("r-1", HistoryState::Success),
            ];
            all.truncate(limit.unwrap_or(usize::MAX));
            Ok(all)
        })
    }

    fn cluster(&self) -> HandlerFuture<'_, ClusterView> {
        Box::pin(async move {
            self.cluster
                .clone()
                .ok_or_else(|| HandlerError::failed("the lease is not open yet"))
        })
    }

    fn reload(&self) -> HandlerFuture<'_, ()> {
        Box::pin(async move {
            if self.reloads.fetch_add(1, Ordering::SeqCst) == 1 {
                // The second reload panics: the server must survive its handler.
                panic!("reload exploded");
            }
            Ok(())
        })
    }
}

struct Running {
    dir: TempDir,
    socket: PathBuf,
    handler: Arc<TestHandler>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(T, self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

/// A temp dir others may traverse (a child dropped to nobody must reach the socket).
fn open_dir() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

async fn start_with(handler: TestHandler, mode: u32, options: ServerOptions) -> Running {
    let dir = open_dir();
    let socket = dir.path().join("run/certrotd.sock");
    let listener = server::bind(&socket, mode, None).unwrap();
    let handler = Arc::new(handler);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::serve_with(
        listener,
        handler.clone(),
        async {
            let _ = stopped.await;
        },
        options,
    ));
    Running {
        dir,
        socket,
        handler,
        stop,
        task,
    }
}

async fn start(mode: u32) -> Running {
    start_with(TestHandler::new(), mode, ServerOptions::default()).await
}

async fn ask(socket: &Path, request: Request) -> Response {
    client::request(socket, request, T).await.unwrap()
}

async fn assert_serves_status(socket: &Path) {
    match ask(socket, Request::Status).await {
        Response::Status(report) => assert_eq!(report, canned_status()),
        other => panic!("{other:?}"),
    }
}

/// `program` dropped to nobody through setpriv (uid and gid 65534, no supplementary groups).
pub(crate) fn as_nobody(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
    ])
    .arg(program);
    cmd
}

/// The real `certrotd` binary with `args`, as root or dropped to nobody, logging warnings only.
pub(crate) fn certrotd_cli(args: &[&str], nobody: bool) -> tokio::process::Command {
    let bin = env!("CARGO_BIN_EXE_certrotd");
    let mut cmd = if nobody {
        as_nobody(bin)
    } else {
        tokio::process::Command::new(bin)
    };
    cmd.args(args).env("CERTROTD_LOG", "warn");
    cmd
}

/// Runs the real `certrotd` binary, as root or dropped to nobody through setpriv.
async fn cli(args: &[&str], nobody: bool) -> Output {
    tokio::time::timeout(T, certrotd_cli(args, nobody).output())
        .await
        .expect("the client answers in time")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Reads frames until the server closes: the answers it sent, in order.
async fn answers_until_closed(stream: &mut UnixStream) -> Vec<Response> {
    let mut answers = Vec::new();
    loop {
        match frame::read_response(stream, T).await {
            Ok(response) => answers.push(response),
            Err(frame::FrameError::Closed) => return answers,
            Err(e) => panic!("after {answers:?}: {e}"),
        }
    }
}

fn bad_request(answers: &[Response]) -> String {
    match answers {
        [
            Response::Error {
                kind: ErrorKind::BadRequest,
                message,
            },
        ] => message.clone(),
        other => panic!("expected one BadRequest, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol and authorisation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_round_trips() {
    let server = start(0o660).await;
    assert_serves_status(&server.socket).await;

    match ask(&server.socket, Request::History { limit: Some(2) }).await {
        Response::History(records) => {
            let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids, ["r-3", "r-2"]);
            assert_eq!(records[1].state, HistoryState::Failed);
        }
        other => panic!("{other:?}"),
    }

    let rotate = Request::Rotate {
        types: vec!["etcd-leaf".to_owned()],
        certs: vec!["apiserver".to_owned()],
    };
    match ask(&server.socket, rotate).await {
        Response::Rotate { rotation_id } => assert_eq!(rotation_id, "r-test-1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        *server.handler.rotations.lock().unwrap(),
        [(vec!["etcd-leaf".to_owned()], vec!["apiserver".to_owned()])]
    );

    assert!(matches!(
        ask(&server.socket, Request::Reload).await,
        Response::Reloaded
    ));
    // The handler panics on the second reload: that answer fails, the server goes on.
    match ask(&server.socket, Request::Reload).await {
        Response::Error {
            kind: ErrorKind::Failed,
            message,
        } => assert!(message.contains("reload"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_serves_status(&server.socket).await;

    // Several requests on one connection are answered in turn.
    let mut stream = UnixStream::connect(&server.socket).await.unwrap();
    for _ in 0..3 {
        frame::write_request(&mut stream, &Request::Status, T)
            .await
            .unwrap();
        assert!(matches!(
            frame::read_response(&mut stream, T).await.unwrap(),
            Response::Status(_)
        ));
    }
    drop(stream);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_errors_reach_the_client_with_their_kind() {
    let handler = TestHandler {
        rotate_error: Some(HandlerError::busy("rotation r-7 is running")),
        ..TestHandler::new()
    };
    let server = start_with(handler, 0o660, ServerOptions::default()).await;
    let rotate = Request::Rotate {
        types: vec![],
        certs: vec!["apiserver".to_owned()],
    };
    match ask(&server.socket, rotate).await {
        Response::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::Busy);
            assert_eq!(message, "rotation r-7 is running");
        }
        other => panic!("{other:?}"),
    }
    let socket = server.socket.to_str().unwrap().to_owned();
    let out = cli(
        &["rotate", "--cert", "apiserver", "--socket", &socket],
        false,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("the daemon refused certrotd rotate (busy): rotation r-7"),
        "{out:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_root_client_may_read_but_not_rotate() {
    let server = start(0o666).await;
    let socket = server.socket.to_str().unwrap().to_owned();

    let out = cli(&["status", "--socket", &socket, "-o", "json"], true).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report: StatusReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report, canned_status());

    let out = cli(&["history", "--socket", &socket, "--limit", "1"], true).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = text(&out.stdout);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains("r-3") && !table.contains("r-2"), "{table}");

    let out = cli(
        &["rotate", "--cert", "apiserver", "--socket", &socket],
        true,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("certrotd rotate needs root"), "{stderr}");
    assert!(stderr.contains(&format!("uid {NOBODY}")), "{stderr}");
    assert!(server.handler.rotations.lock().unwrap().is_empty());

    // The same through the protocol, for rotate and reload alike: this test binary, dropped
    // to nobody, runs `nobody_client` below.
    let out = as_nobody(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &in_this_binary("nobody_client"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(NOBODY_SOCKET, &socket)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let answers: Vec<Response> = text(&out.stdout)
        .lines()
        // The harness prints its "test nobody_client ... " on the line of the first answer.
        .filter_map(|l| l.split_once("ANSWER ").map(|(_, answer)| answer))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 3, "{out:?}");
    for answer in &answers[..2] {
        assert!(
            matches!(answer, Response::Error { kind: ErrorKind::Forbidden, message } if message.contains("only root")),
            "{answer:?}"
        );
    }
    assert!(
        matches!(answers[2], Response::Status(_)),
        "{:?}",
        answers[2]
    );
    assert!(server.handler.rotations.lock().unwrap().is_empty());
    assert_eq!(server.handler.reloads.load(Ordering::SeqCst), 0);

    // Root may.
    let out = cli(&["rotate", "--type", "all", "--socket", &socket], false).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "r-test-1\n");
    server.stop().await;
}

/// Where `nobody_holder` finds the socket; without it, that test does nothing.
const HOLDER_SOCKET: &str = "CERTROTD_TEST_HOLDER_SOCKET";

/// A client run as nobody (this test binary running `nobody_holder`) that holds every
/// connection the server lets it have.
struct Holder {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    /// How many connections it was admitted.
    admitted: usize,
    /// What the server answered the one after.
    refusal: Response,
}

impl Holder {
    async fn start(socket: &str) -> Holder {
        let mut child = as_nobody(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &in_this_binary("nobody_holder"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HOLDER_SOCKET, socket)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
            child.stdout.take().unwrap(),
        ));
        let held = tokio::time::timeout(T, async {
            let mut before = Vec::new();
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some((_, rest)) = line.split_once("HOLDING ") {
                    return rest.to_owned();
                }
                before.push(line);
            }
            panic!("the holder ended: {before:?}");
        })
        .await
        .expect("the holder takes its connections");
        let (admitted, refusal) = held.split_once(' ').unwrap();
        Holder {
            child,
            lines,
            admitted: admitted.parse().unwrap(),
            refusal: serde_json::from_str(refusal).unwrap(),
        }
    }

    /// Lets go, and returns how many of its connections still answered then.
    async fn finish(mut self) -> usize {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(T, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        let mut rest = Vec::new();
        while let Some(line) = self.lines.next_line().await.unwrap() {
            rest.push(line);
        }
        assert!(status.success(), "{rest:?}");
        rest.iter()
            .find_map(|l| l.split_once("STILL HELD ").map(|(_, n)| n.parse().unwrap()))
            .unwrap_or_else(|| panic!("{rest:?}"))
    }
}

fn busy_message(response: &Response) -> &str {
    match response {
        Response::Error {
            kind: ErrorKind::Busy,
            message,
        } => message,
        other => panic!("expected Busy, got {other:?}"),
    }
}

async fn root_rotates(server: &Running, socket: &str, expected_id: &str) {
    assert_serves_status(&server.socket).await;
    match ask(
        &server.socket,
        Request::Rotate {
            types: vec!["all".to_owned()],
            certs: vec![],
        },
    )
    .await
    {
        Response::Rotate { rotation_id } => assert_eq!(rotation_id, expected_id),
        other => panic!("{other:?}"),
    }
    // And through the command line.
    let out = cli(&["rotate", "--type", "all", "--socket", socket], false).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_root_client_holding_every_connection_it_may_does_not_lock_root_out() {
    // Idle connections are kept long enough for the test.
    let long_idle = Duration::from_secs(60);

    // Room for many: nobody is stopped by its own cap.
    let options = ServerOptions {
        max_per_uid: 8,
        read_timeout: long_idle,
        ..ServerOptions::default()
    };
    let server = start_with(TestHandler::new(), 0o666, options).await;
    let socket = server.socket.to_str().unwrap().to_owned();
    let holder = Holder::start(&socket).await;
    assert_eq!(holder.admitted, 8);
    let message = busy_message(&holder.refusal);
    assert!(
        message.contains(&format!("uid {NOBODY} already holds 8 connections")),
        "{message}"
    );
    root_rotates(&server, &socket, "r-test-1").await;
    assert_eq!(holder.finish().await, 8, "root took none of nobody's");
    server.stop().await;

    // Nobody's eight fill every shared slot: root gets in through the slots kept for it.
    let options = ServerOptions {
        max_connections: 8,
        max_per_uid: 8,
        read_timeout: long_idle,
        ..ServerOptions::default()
    };
    let server = start_with(TestHandler::new(), 0o666, options).await;
    let socket = server.socket.to_str().unwrap().to_owned();
    let holder = Holder::start(&socket).await;
    assert_eq!(holder.admitted, 8);
    let message = busy_message(&holder.refusal);
    assert!(
        message.contains("as many connections as it can"),
        "{message}"
    );
    root_rotates(&server, &socket, "r-test-1").await;
    assert_eq!(holder.finish().await, 8);
    server.stop().await;
}

/// Not a test of its own: the nobody half of
/// `a_non_root_client_holding_every_connection_it_may_does_not_lock_root_out`. Opens as many
/// connections as the server admits (each proved by an answered status), prints how many and the
/// refusal of the next, then holds them until stdin closes, and says whether they still answer.
#[test]
fn nobody_holder() {
    let Some(socket) = std::env::var_os(HOLDER_SOCKET) else {
        return;
    };
    assert_eq!(nix::unistd::geteuid().as_raw(), NOBODY);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut held = Vec::new();
        let refusal = loop {
            let mut stream = UnixStream::connect(&socket).await.unwrap();
            // A connection over the cap is answered and closed at once, possibly before this
            // request is written: the write then fails (EPIPE) and the answer is still there to
            // read. Any other failure shows in the read.
            let _ = frame::write_request(&mut stream, &Request::Status, T).await;
            match frame::read_response(&mut stream, T).await.unwrap() {
                Response::Status(_) => held.push(stream),
                other => break other,
            }
            assert!(
                held.len() <= 64,
                "no cap: {} connections admitted",
                held.len()
            );
        };
        println!(
            "HOLDING {} {}",
            held.len(),
            serde_json::to_string(&refusal).unwrap()
        );
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let mut alive = 0;
        for stream in &mut held {
            frame::write_request(stream, &Request::Status, T)
                .await
                .unwrap();
            if matches!(
                frame::read_response(stream, T).await,
                Ok(Response::Status(_))
            ) {
                alive += 1;
            }
        }
        println!("STILL HELD {alive}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_after_its_answer_is_closed_after_the_idle_limit() {
    let options = ServerOptions {
        read_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let server = start_with(TestHandler::new(), 0o660, options).await;
    let mut stream = UnixStream::connect(&server.socket).await.unwrap();
    frame::write_request(&mut stream, &Request::Status, T)
        .await
        .unwrap();
    assert!(matches!(
        frame::read_response(&mut stream, T).await.unwrap(),
        Response::Status(_)
    ));
    let since = Instant::now();
    let message = bad_request(&answers_until_closed(&mut stream).await);
    let waited = since.elapsed();
    assert!(
        message.contains("no complete frame within 300ms"),
        "{message}"
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    server.stop().await;
}

/// Where `nobody_client` finds the socket; without it, that test does nothing.
const NOBODY_SOCKET: &str = "CERTROTD_TEST_NOBODY_SOCKET";

/// Not a test of its own: the client half of `a_non_root_client_may_read_but_not_rotate`, run
/// by it in a child process that dropped to nobody.
#[test]
fn nobody_client() {
    let Some(socket) = std::env::var_os(NOBODY_SOCKET) else {
        return;
    };
    assert_eq!(nix::unistd::geteuid().as_raw(), NOBODY);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rotate = Request::Rotate {
        types: vec!["all".to_owned()],
        certs: vec![],
    };
    for request in [Request::Reload, rotate, Request::Status] {
        let answer = runtime
            .block_on(client::request(Path::new(&socket), request, T))
            .unwrap();
        println!("ANSWER {}", serde_json::to_string(&answer).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_mode_keeps_out_those_it_does_not_admit() {
    let server = start(0o660).await;
    let socket = server.socket.to_str().unwrap().to_owned();
    let out = cli(&["status", "--socket", &socket], true).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot connect to {socket}: permission denied")),
        "{stderr}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_garbage_truncated_and_stalled_requests_are_refused_and_the_server_goes_on() {
    let options = ServerOptions {
        read_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let server = start_with(TestHandler::new(), 0o660, options).await;
    let socket = &server.socket;

    // A prefix announcing more than 64 KiB: refused without reading (or allocating) the body.
    let mut stream = UnixStream::connect(socket).await.unwrap();
    stream
        .write_all(&(frame::MAX_REQUEST_BYTES as u32 + 1).to_be_bytes())
        .await
        .unwrap();
    let message = bad_request(&answers_until_closed(&mut stream).await);
    assert!(message.contains("over the limit of 65536"), "{message}");
    assert_serves_status(socket).await;

    // The biggest lie a prefix can tell.
    let mut stream = UnixStream::connect(socket).await.unwrap();
    stream.write_all(&[0xff; 4]).await.unwrap();
    bad_request(&answers_until_closed(&mut stream).await);

    // Garbage in a well-formed frame, and JSON that is no request.
    for body in [
        &b"\x00\xffnot json"[..],
        br#"{"Format":{"disk":"/dev/sda"}}"#,
        b"",
    ] {
        let mut stream = UnixStream::connect(socket).await.unwrap();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        stream.write_all(&frame).await.unwrap();
        let message = bad_request(&answers_until_closed(&mut stream).await);
        assert!(message.contains("not a valid message"), "{message}");
    }
    assert_serves_status(socket).await;

    // A frame cut short: the client gives up sending but still listens.
    let mut stream = UnixStream::connect(socket).await.unwrap();
    stream.write_all(&[0, 0, 0, 100, b'{']).await.unwrap();
    stream.shutdown().await.unwrap();
    let message = bad_request(&answers_until_closed(&mut stream).await);
    assert!(message.contains("after 5 of 104 bytes"), "{message}");

    // A client that stalls mid-frame holds its slot only until the read timeout...
    let mut stalled = UnixStream::connect(socket).await.unwrap();
    stalled.write_all(&[0, 0]).await.unwrap();
    let since = Instant::now();
    // ...and others are served meanwhile.
    assert_serves_status(socket).await;
    let message = bad_request(&answers_until_closed(&mut stalled).await);
    let waited = since.elapsed();
    assert!(
        message.contains("no complete frame within 300ms"),
        "{message}"
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    // One that connects and sends nothing is dropped the same way.
    let mut idle = UnixStream::connect(socket).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(T, async {
        // The refusal frame, then end of stream.
        let mut all = Vec::new();
        loop {
            match idle.read(&mut byte).await.unwrap() {
                0 => return all,
                _ => all.push(byte[0]),
            }
        }
    })
    .await
    .expect("an idle client is dropped");
    assert!(!read.is_empty());

    assert_serves_status(socket).await;
    server.stop().await;
}

async fn many_clients(socket: &Path, n: usize) -> usize {
    let tasks: Vec<JoinHandle<bool>> = (0..n)
        .map(|_| {
            let socket = socket.to_path_buf();
            tokio::spawn(async move {
                matches!(
                    client::request(&socket, Request::Status, Duration::from_secs(60)).await,
                    Ok(Response::Status(_))
                )
            })
        })
        .collect();
    let mut served = 0;
    for t in tasks {
        served += usize::from(t.await.unwrap());
    }
    served
}

/// Each client holds two descriptors here (its end and the server's): raise the soft limit to
/// the hard one, as a shell with `ulimit -n` would have to.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_status_clients_are_all_served() {
    raise_fd_limit();
    let handler = TestHandler {
        status_delay: Some(Duration::from_millis(2)),
        ..TestHandler::new()
    };
    let server = start_with(handler, 0o660, ServerOptions::default()).await;
    let since = Instant::now();
    assert_eq!(many_clients(&server.socket, 1000).await, 1000);
    eprintln!(
        "1000 concurrent clients served in {:?}, at most {} at once",
        since.elapsed(),
        server.handler.peak.load(Ordering::SeqCst)
    );
    server.stop().await;

    // With room for only 8 connections the rest wait in the backlog, and are still all served.
    let handler = TestHandler {
        status_delay: Some(Duration::from_millis(2)),
        ..TestHandler::new()
    };
    let options = ServerOptions {
        max_connections: 8,
        ..ServerOptions::default()
    };
    let reserve = options.root_reserve;
    let server = start_with(handler, 0o660, options).await;
    assert_eq!(many_clients(&server.socket, 1000).await, 1000);
    // These clients are root, who may also take the slots kept for root.
    let peak = server.handler.peak.load(Ordering::SeqCst);
    assert!((1..=8 + reserve).contains(&peak), "{peak} at once");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_closes_idle_connections() {
    let server = start(0o660).await;
    let socket = server.socket.clone();
    // An idle connection must not hold up the shutdown.
    let mut idle = UnixStream::connect(&socket).await.unwrap();
    assert_serves_status(&socket).await;
    let since = Instant::now();
    let _dir = &server.dir;
    let Running {
        dir, stop, task, ..
    } = server;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("serve returns promptly")
        .unwrap();
    assert!(since.elapsed() < Duration::from_secs(2));
    let mut byte = [0u8; 1];
    assert_eq!(idle.read(&mut byte).await.unwrap(), 0);
    // The listener is gone with `serve`: nobody answers any more.
    let e = client::request(&socket, Request::Status, T)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    drop(dir);
}

// ---------------------------------------------------------------------------------------------
// Binding the socket
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_mode_and_group_are_set_by_the_time_bind_returns() {
    let dir = tempfile::tempdir().unwrap();
    // 0606 is no umask's result: only an explicit chmod gives it.
    for (mode, group, gid) in [
        (0o606, None, 0),
        (0o660, Some("nogroup"), NOBODY),
        (0o640, Some("65533"), 65533),
    ] {
        let socket = dir.path().join(format!("s{mode:o}.sock"));
        let listener = server::bind(&socket, mode, group).unwrap();
        let meta = fs::symlink_metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o7777, mode, "{mode:o}");
        assert_eq!(meta.gid(), gid);
        drop(listener);
    }
    let e = server::bind(
        &dir.path().join("x.sock"),
        0o660,
        Some("no-such-group-here"),
    )
    .unwrap_err();
    assert!(matches!(e, BindError::UnknownGroup { .. }), "{e}");
    assert!(!dir.path().join("x.sock").exists());
}

#[tokio::test]
async fn the_socket_directory_is_created_0755() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/certrotd/certrotd.sock");
    let _listener = server::bind(&socket, 0o660, None).unwrap();
    let meta = fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o755);
}

#[tokio::test]
async fn a_stale_socket_is_replaced_but_nothing_else_is() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("certrotd.sock");

    // What a crashed daemon leaves: the socket file, nobody listening.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let listener = server::bind(&socket, 0o660, None).unwrap();

    // A live one is not taken over.
    let e = server::bind(&socket, 0o660, None).unwrap_err();
    assert!(matches!(e, BindError::InUse { .. }), "{e}");
    assert!(e.to_string().contains(&socket.display().to_string()), "{e}");
    // And it still works.
    let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
    UnixStream::connect(&socket).await.unwrap();
    accept.await.unwrap().unwrap();

    // A regular file, a directory and a symlink are refused and left as they were.
    let file = dir.path().join("file.sock");
    fs::write(&file, "precious").unwrap();
    let e = server::bind(&file, 0o660, None).unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "refusing to replace {}: it is a regular file",
            file.display()
        )),
        "{e}"
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "precious");

    let subdir = dir.path().join("dir.sock");
    fs::create_dir(&subdir).unwrap();
    let e = server::bind(&subdir, 0o660, None).unwrap_err();
    assert!(
        matches!(
            e,
            BindError::NotASocket {
                found: "directory",
                ..
            }
        ),
        "{e}"
    );

    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let e = server::bind(&link, 0o660, None).unwrap_err();
    assert!(
        matches!(
            e,
            BindError::NotASocket {
                found: "symlink",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "precious");

    let long = dir.path().join("x".repeat(120));
    let e = server::bind(&long, 0o660, None).unwrap_err();
    assert!(matches!(e, BindError::PathTooLong { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The client commands
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_a_table_and_exits_1_when_something_is_due() {
    let server = start(0o660).await;
    let socket = server.socket.to_str().unwrap().to_owned();
    let out = cli(&["status", "--socket", &socket], false).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = text(&out.stdout);
    for expected in [
        "certrotd 0.1.0 on node cp1 (pid 4242",
        "3 certificates ok; next renewal apiserver in 153d",
        "NAME          STATUS   EXPIRES                  RESIDUAL   NEXT ACTION   WHEN",
        "apiserver     ok       Dec 01, 2026 10:00 UTC   183d       renew         in 153d",
        "ROTATION r-20260601-1: step verify kube-apiserver",
        "LEASE local: held by this node since 2026-06-01T09:59:00Z",
        "NOTICES\n  etcd-server expires in 50d",
    ] {
        assert!(table.contains(expected), "{expected:?} not in\n{table}");
    }

    let mut due = canned_status();
    due.certificates[1].status = "expired".to_owned();
    due.certificates[1].problems = vec!["expired 2d ago".to_owned()];
    *server.handler.status.lock().unwrap() = Some(due);
    let out = cli(&["status", "--socket", &socket], false).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stdout).contains("PROBLEMS\n  apiserver: expired 2d ago"));

    // A daemon that cannot answer yet: exit 1 with its reason.
    *server.handler.status.lock().unwrap() = None;
    let out = cli(&["status", "--socket", &socket, "-o", "json"], false).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("no inventory yet"), "{out:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_prints_records_as_a_table_or_json() {
    let server = start(0o660).await;
    let socket = server.socket.to_str().unwrap().to_owned();
    let out = cli(&["history", "--socket", &socket], false).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    for column in [
        "ID",
        "STATE",
        "STARTED",
        "FINISHED",
        "NODE",
        "CERTIFICATES",
        "REASON",
    ] {
        assert!(lines[0].contains(column), "{table}");
    }
    assert!(lines[2].starts_with("r-2   Failed "), "{table}");
    assert!(lines[2].contains("apiserver, etcd-server"), "{table}");

    let out = cli(&["history", "--socket", &socket, "-o", "json"], false).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &json[0];
    for key in [
        "id",
        "node",
        "certificates",
        "state",
        "started_at",
        "finished_at",
        "reason",
    ] {
        assert!(first.get(key).is_some(), "{key} missing in {first}");
    }
    assert_eq!(first["state"], "Initiated");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_found_from_the_config_inside_its_root() {
    let dir = open_dir();
    let root = dir.path().join("node");
    fs::create_dir(&root).unwrap();
    let config = dir.path().join("certrotd.toml");
    fs::write(
        &config,
        "root = \"node\"\n[control]\nsocket = \"/run/c/certrotd.sock\"\nsocket_mode = \"0600\"\n",
    )
    .unwrap();
    let settings = config::load(&LoadOptions {
        config: Some(&config),
        root: None,
    })
    .unwrap();
    let socket = settings.in_root(&settings.control.socket);
    assert_eq!(
        socket,
        fs::canonicalize(&root).unwrap().join("run/c/certrotd.sock")
    );
    let listener = server::bind(
        &socket,
        settings.control.socket_mode,
        settings.control.group(),
    )
    .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(
        listener,
        Arc::new(TestHandler::new()),
        async {
            let _ = stopped.await;
        },
    ));
    let config = config.to_str().unwrap();
    let out = cli(&["status", "--config", config, "-o", "json"], false).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = cli(&["history", "-c", config], false).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_whose_fault_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("certrotd.sock");
    let missing = missing.to_str().unwrap();
    let out = cli(&["status", "--socket", missing], false).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        text(&out.stderr).contains(&format!(
            "cannot connect to {missing}: is certrotd running?"
        )),
        "{out:?}"
    );

    // A socket left by a daemon that died.
    drop(std::os::unix::net::UnixListener::bind(missing).unwrap());
    let out = cli(&["history", "--socket", missing], false).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        text(&out.stderr).contains(&format!(
            "cannot connect to {missing}: is certrotd running? (connection refused)"
        )),
        "{out:?}"
    );

    let bad = dir.path().join("bad.toml");
    fs::write(&bad, "[control]\nsocket_mode = \"0999\"\n").unwrap();
    let out = cli(&["status", "--config", bad.to_str().unwrap()], false).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains(&format!("{}:2:15", bad.display())),
        "{out:?}"
    );

    // Nothing to rotate named: a usage error.
    let out = cli(&["rotate", "--socket", missing], false).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------------------------

const NOW: OffsetDateTime = datetime!(2026-06-01 10:00:00 UTC);

fn history_in(dir: &TempDir) -> History {
    History::new(dir.path().join("state/history.jsonl"))
}

fn ids(history: &History) -> Vec<String> {
    history
        .read(None)
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.id)
        .collect()
}

#[test]
fn history_appends_updates_and_reads_the_latest_state_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let history = history_in(&dir);
    assert_eq!(history.read(None).unwrap().records, []);

    let certs = vec!["apiserver".to_owned()];
    let first = history
        .start(
            "r-1",
            "cp1",
            certs.clone(),
            Some("expires in 29d".into()),
            NOW,
        )
        .unwrap();
    assert_eq!(first.state, State::Initiated);
    assert_eq!(rfc3339(first.started_at), "2026-06-01T10:00:00Z");
    history
        .start("r-2", "cp1", certs, None, NOW + time::Duration::minutes(5))
        .unwrap();
    let done = history
        .update(
            "r-1",
            State::Success,
            None,
            NOW + time::Duration::minutes(9),
        )
        .unwrap();
    assert_eq!(
        done.finished_at.map(rfc3339).as_deref(),
        Some("2026-06-01T10:09:00Z")
    );
    assert_eq!(done.reason.as_deref(), Some("expires in 29d"));
    let failed = history
        .update(
            "r-2",
            State::Failed,
            Some("kube-apiserver still serves the old certificate after 2m".into()),
            NOW + time::Duration::minutes(10),
        )
        .unwrap();
    assert_eq!(failed.state, State::Failed);

    let read = history.read(None).unwrap();
    assert_eq!(read.skipped, 0);
    assert_eq!(read.records, [failed, done.clone()]);
    assert_eq!(history.read(Some(1)).unwrap().records.len(), 1);
    // Four lines: each state is its own line; the file is fsync'd JSON lines.
    let text = fs::read_to_string(history.path()).unwrap();
    assert_eq!(text.lines().count(), 4);
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<HistoryRecord>(l).is_ok())
    );

    // A second History on the same file (the next daemon start) sees the same.
    let again = history_in(&dir);
    assert_eq!(ids(&again), ["r-2", "r-1"]);

    let e = history
        .update("r-9", State::Success, None, NOW)
        .unwrap_err();
    assert!(matches!(e, HistoryError::UnknownId { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&history.path().display().to_string()),
        "{e}"
    );
    let e = history
        .start("../../etc", "cp1", vec![], None, NOW)
        .unwrap_err();
    assert!(matches!(e, HistoryError::InvalidId { .. }), "{e}");
}

#[test]
fn a_torn_last_line_and_garbage_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let history = history_in(&dir);
    history.start("r-1", "cp1", vec![], None, NOW).unwrap();
    // A crash mid-append leaves half a line; a stray editor leaves worse.
    let mut text = fs::read_to_string(history.path()).unwrap();
    text.push_str("not a record\n\n{\"id\":\"r-x\"}\n");
    let torn = serde_json::to_string(&record("r-2", proto::HistoryState::Initiated)).unwrap();
    text.push_str(&torn[..torn.len() / 2]);
    fs::write(history.path(), text).unwrap();

    let fresh = history_in(&dir);
    let read = fresh.read(None).unwrap();
    assert_eq!(read.skipped, 3);
    assert_eq!(ids(&fresh), ["r-1"]);

    // The next append starts on a line of its own instead of gluing onto the torn one.
    fresh.start("r-3", "cp1", vec![], None, NOW).unwrap();
    let read = fresh.read(None).unwrap();
    assert_eq!(read.skipped, 3);
    assert_eq!(ids(&fresh), ["r-3", "r-1"]);
    fresh
        .update("r-1", State::Failed, Some("rolled back".into()), NOW)
        .unwrap();
    assert_eq!(fresh.read(None).unwrap().records[1].state, State::Failed);
}

#[test]
fn history_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // Keep 5 records once the file passes 10 lines.
    let history = history_in(&dir).with_bounds(5, 10);
    for i in 1..=25 {
        let id = format!("r-{i}");
        history.start(&id, "cp1", vec![], None, NOW).unwrap();
        if i % 2 == 0 {
            history.update(&id, State::Success, None, NOW).unwrap();
        }
        let lines = fs::read_to_string(history.path()).unwrap().lines().count();
        assert!(lines <= 10, "{lines} lines after r-{i}");
    }
    let read = history.read(None).unwrap();
    assert!(read.records.len() >= 5 && read.records.len() <= 10);
    let newest: Vec<String> = read.records.iter().take(5).map(|r| r.id.clone()).collect();
    assert_eq!(newest, ["r-25", "r-24", "r-23", "r-22", "r-21"]);
    assert_eq!(read.records[1].state, State::Success);
    // Compaction kept each record's latest state, and the file's mode.
    assert_eq!(fs::metadata(history.path()).unwrap().mode() & 0o777, 0o640);
    // The default bound is the documented one.
    assert_eq!(
        (certrotd::history::KEEP, certrotd::history::COMPACT_AFTER),
        (1000, 2000)
    );
}

#[test]
fn history_lives_in_the_state_dir_inside_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("certrotd.toml");
    fs::write(&config, "root = \".\"\nstate_dir = \"/var/lib/c\"\n").unwrap();
    let settings = config::load(&LoadOptions {
        config: Some(&config),
        root: None,
    })
    .unwrap();
    let history = History::for_settings(&settings);
    assert_eq!(
        history.path(),
        fs::canonicalize(dir.path())
            .unwrap()
            .join("var/lib/c/history.jsonl")
    );
    history.start("r-1", "cp1", vec![], None, NOW).unwrap();
    // The state directory holds backups with private keys: created private.
    let state = history.path().parent().unwrap();
    assert_eq!(fs::metadata(state).unwrap().mode() & 0o777, 0o700);
}

// ---------------------------------------------------------------------------------------------
// [control] configuration
// ---------------------------------------------------------------------------------------------

fn load_text(dir: &TempDir, text: &str) -> Result<config::Settings, ConfigError> {
    let path = dir.path().join("certrotd.toml");
    fs::write(&path, text).unwrap();
    config::load(&LoadOptions {
        config: Some(&path),
        root: None,
    })
}

fn at(e: &ConfigError) -> (usize, usize) {
    e.location()
        .and_then(|l| l.line_column)
        .unwrap_or_else(|| panic!("no location in {e}"))
}

#[test]
fn control_keys_parse() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = load_text(&dir, "").unwrap().control;
    assert_eq!(defaults.socket, Path::new("/run/certrotd/certrotd.sock"));
    assert_eq!(defaults.socket_mode, 0o660);
    assert_eq!(defaults.socket_group, "");
    assert_eq!(defaults.group(), None);

    let control = load_text(
        &dir,
        "[control]\nsocket = \"/run/x/ctl.sock\"\nsocket_mode = \"0666\"\nsocket_group = \"adm\"\n",
    )
    .unwrap()
    .control;
    assert_eq!(control.socket, Path::new("/run/x/ctl.sock"));
    assert_eq!(control.socket_mode, 0o666);
    assert_eq!(control.group(), Some("adm"));

    for (written, mode) in [
        ("\"600\"", 0o600),
        ("\"0o640\"", 0o640),
        ("\"0755\"", 0o755),
    ] {
        let text = format!("[control]\nsocket_mode = {written}\n");
        assert_eq!(
            load_text(&dir, &text).unwrap().control.socket_mode,
            mode,
            "{written}"
        );
    }
}

#[test]
fn bad_control_values_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("certrotd.toml");
    for (text, place, words) in [
        (
            "[control]\nsocket_mode = \"0999\"\n",
            (2, 15),
            "not an octal file mode",
        ),
        (
            "[control]\nsocket_mode = \"rw-rw----\"\n",
            (2, 15),
            "not an octal file mode",
        ),
        (
            "[control]\n\nsocket_mode = \"4770\"\n",
            (3, 15),
            "only the permission bits",
        ),
        (
            "[control]\nsocket_mode = \"0460\"\n",
            (2, 15),
            "the owner needs write",
        ),
        (
            "[control]\nsocket_mode = 660\n",
            (2, 15),
            "write the mode as octal text",
        ),
        (
            "[control]\nsocket_mode = 0o660\n",
            (2, 15),
            "write the mode as octal text",
        ),
        (
            "[control]\nsocket_mode = true\n",
            (2, 15),
            "an octal file mode such as",
        ),
        (
            "[control]\nsocket = \"run/c.sock\"\n",
            (2, 10),
            "absolute node path",
        ),
        ("[control]\nsocket = \"/run/../c.sock\"\n", (2, 10), "'..'"),
        (
            "[control]\nsocket = \"/\"\n",
            (2, 10),
            "must name the socket file",
        ),
        (
            "[control]\nsocket_group = \"adm in\"\n",
            (2, 16),
            "control.socket_group",
        ),
        (
            "[control]\nsocket_grup = \"adm\"\n",
            (2, 1),
            "unknown field `socket_grup`",
        ),
    ] {
        let e = load_text(&dir, text).unwrap_err();
        assert_eq!(at(&e), place, "{text}: {e}");
        let message = e.to_string();
        assert!(
            message.starts_with(&format!("{}:{}:{}: ", file.display(), place.0, place.1)),
            "{message}"
        );
        assert!(message.contains(words), "{text}: {message}");
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster view (status --cluster)
// ---------------------------------------------------------------------------------------------

fn canned_cluster() -> ClusterView {
    ClusterView {
        cluster: "prod".into(),
        slots: 1,
        holders: vec![HolderRecord {
            slot: 0,
            node: "cp2".into(),
            rotation_id: "20260501T100000Z-abcdef".into(),
            since: "2026-05-01T10:00:00Z".into(),
            step: "restart".into(),
            fencing_token: 42,
        }],
        queue: vec![QueueEntry {
            node: "cp3".into(),
            role: "etcd-member".into(),
            earliest_expiry: "2026-05-03T00:00:00Z".into(),
            since: "2026-05-01T10:00:01Z".into(),
        }],
        nodes: ["cp1", "cp2", "cp3"]
            .iter()
            .map(|n| NodeSummary {
                node: (*n).into(),
                role: Some("etcd-member".into()),
                earliest_expiry: Some("2026-05-03T00:00:00Z".into()),
                state: "idle".into(),
                last_rotation: None,
                updated: "2026-05-01T10:00:00Z".into(),
            })
            .collect(),
        ca: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_is_served_to_anyone_and_printed_as_a_table_or_json() {
    let handler = TestHandler {
        cluster: Some(canned_cluster()),
        ..TestHandler::new()
    };
    let running = start_with(handler, 0o666, ServerOptions::default()).await;
    match ask(&running.socket, Request::Cluster).await {
        Response::Cluster(view) => assert_eq!(view, canned_cluster()),
        other => panic!("{other:?}"),
    }
    assert!(
        !Request::Cluster.changes_state(),
        "reading the view is not a change"
    );
    let socket = running.socket.to_str().unwrap();
    // Read-only: a client that is not root may ask.
    let out = cli(&["status", "--cluster", "--socket", socket], true).await;
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}{}", text(&out.stderr));
    for want in [
        "cluster prod (1 slot)",
        "cp1",
        "cp2",
        "cp3",
        "restart",
        "42",
        "POSITION",
    ] {
        assert!(table.contains(want), "{want} missing:\n{table}");
    }
    let out = cli(
        &["status", "--cluster", "-o", "json", "--socket", socket],
        false,
    )
    .await;
    let view: ClusterView = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view, canned_cluster());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_without_a_lease_says_so_and_the_cli_exits_1() {
    let running = start(0o600).await;
    match ask(&running.socket, Request::Cluster).await {
        Response::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::Failed);
            assert!(message.contains("lease"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let socket = running.socket.to_str().unwrap();
    let out = cli(&["status", "--cluster", "--socket", socket], false).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the lease is not open yet"),
        "{}",
        text(&out.stderr)
    );
    running.stop().await;
}

#[test]
fn records_and_requests_of_older_and_newer_versions_still_parse() {
    // A record written before `recovery` existed is not a recovery.
    let old = r#"{"id":"r-1","node":"cp1","state":"Success","started_at":"2026-05-01T10:00:00Z"}"#;
    let r: HistoryRecord = serde_json::from_str(old).unwrap();
    assert!(!r.recovery);
    assert_eq!(r.fencing_token, None);
    // A recovery says so, with no fencing token.
    let mut rec = record("r-2", HistoryState::Success);
    rec.recovery = true;
    rec.fencing_token = None;
    let json = serde_json::to_string(&rec).unwrap();
    assert!(json.contains("\"recovery\":true"), "{json}");
    // The new request, as it travels.
    assert_eq!(
        serde_json::to_string(&Request::Cluster).unwrap(),
        "\"Cluster\""
    );
    // A view from a newer daemon with fields this one does not know still reads.
    let newer = r#"{"cluster":"c","slots":2,"holders":[],"queue":[],"nodes":[{"node":"w1","state":"idle","updated":"t","future":1}],"extra":true}"#;
    let v: ClusterView = serde_json::from_str(newer).unwrap();
    assert_eq!(v.slots, 2);
    assert_eq!(v.nodes[0].node, "w1");
}

// ---------------------------------------------------------------------------------------------
// The daemon's handler: a rotate whose client hung up
// ---------------------------------------------------------------------------------------------

/// The daemon's own handler with an inbox the test reads in place of the daemon's loop.
pub(crate) fn daemon_handler(
    dir: &TempDir,
) -> (
    Arc<certrotd::daemon::handler::DaemonHandler>,
    tokio::sync::mpsc::Receiver<certrotd::daemon::handler::Command>,
) {
    use certrotd::daemon::handler::{DaemonHandler, Shared};
    let (commands, inbox) = tokio::sync::mpsc::channel(4);
    let shared = Shared {
        status: std::sync::RwLock::new(Default::default()),
        progress: Arc::new(Mutex::new(None)),
        history: std::sync::RwLock::new(Arc::new(History::new(dir.path().join("history.jsonl")))),
        commands,
        lease: Default::default(),
        ca: Default::default(),
    };
    (Arc::new(DaemonHandler(Arc::new(shared))), inbox)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotate_whose_client_hung_up_is_seen_as_abandoned_by_the_daemon() {
    use certrotd::daemon::handler::Command;
    let dir = open_dir();
    let socket = dir.path().join("certrotd.sock");
    let listener = server::bind(&socket, 0o600, None).unwrap();
    let (handler, mut inbox) = daemon_handler(&dir);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(listener, handler, async {
        let _ = stopped.await;
    }));
    let rotate = Request::Rotate {
        types: vec![],
        certs: vec!["apiserver".to_owned()],
    };

    // A client that waits is answered with the id the loop gives.
    let waiting = tokio::spawn({
        let socket = socket.clone();
        let rotate = rotate.clone();
        async move { client::request(&socket, rotate, T).await.unwrap() }
    });
    let Some(Command::Rotate { selection, reply }) =
        tokio::time::timeout(T, inbox.recv()).await.unwrap()
    else {
        panic!("expected a rotate command");
    };
    assert_eq!(selection.certs, ["apiserver"]);
    assert!(!reply.is_closed(), "its client still waits");
    reply.send(Ok("r-1".to_owned())).unwrap();
    match waiting.await.unwrap() {
        Response::Rotate { rotation_id } => assert_eq!(rotation_id, "r-1"),
        other => panic!("{other:?}"),
    }

    // A client that hangs up before the answer: the loop can tell, and starts nothing.
    let mut stream = UnixStream::connect(&socket).await.unwrap();
    frame::write_request(&mut stream, &rotate, T).await.unwrap();
    let command = tokio::time::timeout(T, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(!command.client_gone(), "its client still waits");
    drop(stream);
    support_wait(|| command.client_gone()).await;
    let _ = stop.send(());
    tokio::time::timeout(T, task).await.unwrap().unwrap();
}

/// Polls `done` every 10 ms for up to [`T`].
async fn support_wait(done: impl Fn() -> bool) {
    let deadline = Instant::now() + T;
    while !done() {
        assert!(Instant::now() < deadline, "waited {T:?} in vain");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The name the test harness knows the test function `name` of this file by: its path below the
/// binary's root (`control::nobody_client`), as `--exact` wants it.
fn in_this_binary(name: &str) -> String {
    match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::{name}"),
        None => name.to_owned(),
    }
}

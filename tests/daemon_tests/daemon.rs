//! The daemon (`certrotd run`) end to end against real components: a systemd user manager over
//! D-Bus (tests/support/systemd.rs) running a real etcd as a `Restart=always` unit on a sandbox
//! node's PKI. The daemon runs in process (`certrotd::daemon::run`) where a test only needs its
//! behaviour, and as the real binary in a `Type=notify` unit of that manager where the process
//! itself matters: environment-armed failpoints (process-global), signals, sd_notify.
//!
//! Covered: a due etcd rotation renewed, restarted through RestartUnit and proved; the same with a
//! key that etcd cannot use, rolled back although systemd gave up on the crash-looping unit;
//! stopping idle and mid-rotation; crashes mid-install and after the commit, finished (restarted
//! and proved) by the next start; reloads (bad refused, good taken) through `systemctl reload` and
//! the socket; a certificate renewed by someone else seen by the watcher and not fought.
//!
//! The failure, stop and crash tests arm failpoints: `cargo test --features failpoints`.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use certrotd::control::client;
use certrotd::control::proto::{
    CertStatus, ErrorKind, HistoryRecord, HistoryState, Request, Response, StatusReport,
};
use certrotd::daemon::Options;
use certrotd::inventory::{Inventory, KeyState};
use certrotd::issuer::local::LocalCa;
use certrotd::issuer::{IssueRequest, Issuer as _};
use certrotd::pki::encode::{self, KeySpec};
use certrotd::pki::key::PrivateKey;
use certrotd::pki::layout::Layout;
use certrotd::pki::pem;
use certrotd::sandbox::{self, Sandbox, SandboxOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::etcd::EtcdSpec;
use support::systemd::UserManager;
use support::{wait_for, which};
use tempfile::TempDir;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Long enough for two shared cores; every wait ends as soon as its condition holds.
const TIMEOUT: Duration = Duration::from_secs(60);
/// One control request.
const REQUEST: Duration = Duration::from_secs(5);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(25);
/// The certificates etcd serves or uses, made due in the etcd tests (`apiserver-etcd-client` is
/// left alone: its consumer is the API server, which a test node does not run).
const ETCD_LEAVES: &[&str] = &["etcd-server", "etcd-peer", "etcd-healthcheck-client"];
/// The files those certificates are in, under the etcd PKI directory.
const ETCD_FILES: &[&str] = &[
    "server.crt",
    "server.key",
    "peer.crt",
    "peer.key",
    "healthcheck-client.crt",
    "healthcheck-client.key",
];

// ---------------------------------------------------------------------------------------------
// A sandbox node
// ---------------------------------------------------------------------------------------------

/// A sandbox kubeadm node with year-long ECDSA leaves (fast to renew), in a temp dir of its own.
struct Node {
    tmp: TempDir,
    sandbox: Sandbox,
}

impl Node {
    fn new() -> Node {
        let tmp = tempfile::Builder::new()
            .prefix("certrotd-daemon-")
            .tempdir()
            .unwrap();
        let sandbox = sandbox::write(
            &tmp.path().join("node"),
            &SandboxOptions {
                key: KeySpec::EcdsaP256,
                ..SandboxOptions::default()
            },
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        std::fs::create_dir_all(tmp.path().join("work")).unwrap();
        Node { tmp, sandbox }
    }

    /// Scratch space outside the node root: etcd's data, logs, release files.
    fn work(&self) -> PathBuf {
        self.tmp.path().join("work")
    }

    fn config(&self) -> &Path {
        &self.sandbox.config_path
    }

    fn etcd_pki(&self) -> PathBuf {
        self.sandbox.path("/etc/kubernetes/pki/etcd")
    }

    /// The control socket: the default node path, inside the sandbox root.
    fn socket(&self) -> PathBuf {
        self.sandbox.path("/run/certrotd/certrotd.sock")
    }

    /// Writes a configuration drop-in next to the sandbox's certrotd.toml (replacing one of the
    /// same name).
    fn drop_in(&self, name: &str, text: &str) -> PathBuf {
        let dir = self.sandbox.dir.join("conf.d");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn inventory(&self) -> Inventory {
        support::scan(&self.sandbox.dir, Some(vec![Layout::Kubeadm]), &[])
    }

    fn serial(&self, name: &str) -> String {
        let inv = self.inventory();
        let e = inv.get(name).unwrap_or_else(|| panic!("{name} not found"));
        normalize(&e.cert.as_ref().unwrap().serial)
    }

    /// Re-issues each certificate, same key and attributes, from its own CA so that it expires
    /// in `left`: the daemon finds it due as soon as it starts.
    fn expire_in(&self, names: &[&str], left: Duration) {
        let inv = self.inventory();
        for name in names {
            let e = inv.get(name).unwrap();
            let ca_entry = inv.get(e.signer.as_ref().unwrap()).unwrap();
            let ca_key = ca_entry.key_path.as_ref().unwrap();
            let blocks = pem::blocks(ca_key, &std::fs::read(ca_key).unwrap()).unwrap();
            let ca = LocalCa::new(
                &ca_entry.name,
                ca_entry.cert.clone().unwrap(),
                PrivateKey::from_blocks(&blocks).unwrap(),
            )
            .unwrap();
            let old = e.cert.as_ref().unwrap();
            let issued = ca
                .issue(&IssueRequest {
                    template: old,
                    spki: &old.spki_der,
                    validity: left,
                    now: OffsetDateTime::now_utc(),
                })
                .unwrap();
            std::fs::write(&e.path, encode::cert_pem(&issued.der)).unwrap();
        }
    }

    /// The bytes of every file of the etcd PKI directory.
    fn etcd_files(&self) -> BTreeMap<String, Vec<u8>> {
        ETCD_FILES
            .iter()
            .map(|f| {
                (
                    f.to_string(),
                    std::fs::read(self.etcd_pki().join(f)).unwrap(),
                )
            })
            .collect()
    }

    /// Every leaf in `names` has a key that matches it and a chain that openssl verifies.
    fn assert_usable(&self, names: &[&str]) {
        let inv = self.inventory();
        for name in names {
            let e = inv.get(name).unwrap();
            assert_eq!(e.key, KeyState::Match, "{name}: key");
            assert!(e.problems.is_empty(), "{name}: {:?}", e.problems);
            let ca = inv.get(e.signer.as_ref().unwrap()).unwrap();
            let out = support::openssl(
                &[
                    "verify",
                    "-CAfile",
                    ca.path.to_str().unwrap(),
                    e.path.to_str().unwrap(),
                ],
                None,
            );
            assert!(out.trim_end().ends_with(": OK"), "{name}: {out}");
        }
    }
}

fn normalize(serial: &str) -> String {
    certrotd::restart::probe::normalize_serial(serial)
}

// ---------------------------------------------------------------------------------------------
// Waiting, the control socket
// ---------------------------------------------------------------------------------------------

/// Runs blocking work (etcdctl, openssl) off the runtime's workers, which the daemon needs.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn status(socket: &Path) -> Option<StatusReport> {
    match client::request(socket, Request::Status, REQUEST).await {
        Ok(Response::Status(s)) => Some(s),
        _ => None,
    }
}

async fn history(socket: &Path) -> Vec<HistoryRecord> {
    match client::request(socket, Request::History { limit: None }, REQUEST).await {
        Ok(Response::History(h)) => h,
        other => panic!("history: {other:?}"),
    }
}

/// Waits for the first rotation the daemon records as finished.
async fn finished_rotation(socket: &Path, timeout: Duration) -> HistoryRecord {
    wait_for("a finished rotation in history", timeout, || async {
        status(socket).await?;
        history(socket)
            .await
            .into_iter()
            .find(|r| r.state != HistoryState::Initiated)
    })
    .await
}

fn cert<'a>(s: &'a StatusReport, name: &str) -> &'a CertStatus {
    s.certificates
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} not in status"))
}

fn rfc3339(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The daemon in process
// ---------------------------------------------------------------------------------------------

/// `certrotd::daemon::run` on this runtime, stopped through its shutdown future.
struct InProcess {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    fn start(config: &Path) -> InProcess {
        let (stop, stopped) = oneshot::channel::<()>();
        let opts = Options {
            config: Some(config.to_owned()),
            root: None,
        };
        let task = tokio::spawn(certrotd::daemon::run(opts, async move {
            let _ = stopped.await;
        }));
        InProcess {
            stop: Some(stop),
            task,
        }
    }

    /// Completes the shutdown future; returns how long `run` took to return.
    async fn stop(mut self) -> Duration {
        let asked = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(TIMEOUT, &mut self.task)
            .await
            .expect("the daemon returns after its shutdown future completes")
            .unwrap()
            .expect("the daemon stops without an error");
        asked.elapsed()
    }
}

/// Logs of the in-process daemon, shown with a failing test's output.
fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
}

// ---------------------------------------------------------------------------------------------
// etcd and certrotd as units of a real systemd manager
// ---------------------------------------------------------------------------------------------

/// A real etcd running as `etcd.service` in a user manager, on the node's etcd PKI.
struct EtcdUnit {
    manager: UserManager,
    spec: EtcdSpec,
}

const ETCD_UNIT: &str = "etcd.service";

impl EtcdUnit {
    /// `unit_section` goes into the unit's `[Unit]` section.
    async fn start(node: &Node, unit_section: &str) -> EtcdUnit {
        let manager = UserManager::start().await;
        let spec = EtcdSpec::new(&node.etcd_pki(), &node.work());
        // Restart=always stands in for the kubelet bringing a static pod's container back.
        let unit = format!(
            "[Unit]\n{unit_section}\n[Service]\nExecStart={} {}\nRestart=always\nRestartSec=200ms\n\
             StandardOutput=append:{}\nStandardError=inherit\n",
            which("etcd").display(),
            spec.args().join(" "),
            spec.log_path().display()
        );
        manager.write_unit(ETCD_UNIT, &unit).await;
        manager.start_unit(ETCD_UNIT).await;
        let etcd = EtcdUnit { manager, spec };
        etcd.wait_healthy().await;
        etcd
    }

    async fn health(&self) -> (bool, String) {
        let spec = self.spec.clone();
        blocking(move || spec.etcdctl("healthcheck-client", &["endpoint", "health"])).await
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (ok, text) = self.health().await;
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd.service not healthy within {TIMEOUT:?}: {text}\n{}\n{}",
                std::fs::read_to_string(self.spec.log_path()).unwrap_or_default(),
                self.manager.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn main_pid(&self) -> u32 {
        self.manager.main_pid(ETCD_UNIT).await
    }

    /// The serial of the certificate etcd serves on its client port, as openssl sees it.
    async fn served_serial(&self) -> Option<String> {
        let spec = self.spec.clone();
        blocking(move || served_serial(&spec)).await
    }

    /// The probe and health settings pointing at this etcd, and restarts through this manager.
    fn drop_in(&self, probe_timeout: &str) -> String {
        format!(
            "[restart]\nstatic_pods = \"none\"\nunits = true\ndbus_address = \"{}\"\njob_timeout = \"30s\"\nprefer_reload = false\n\n\
             [probe]\ntimeout = \"{probe_timeout}\"\n\n\
             [probe.endpoints]\netcd = [{{ host = \"127.0.0.1\", port = {}, serves = \"etcd-server\" }}, \
             {{ host = \"127.0.0.1\", port = {}, serves = \"etcd-peer\" }}]\n\n\
             [probe.health]\netcd = \"127.0.0.1:{}\"\n",
            self.manager.bus_address(),
            self.spec.client_port,
            self.spec.peer_port,
            self.spec.client_port
        )
    }
}

/// openssl s_client's view of the certificate served on the client port (with the healthcheck
/// client's certificate, which etcd requires): an independent judge of what etcd serves.
fn served_serial(spec: &EtcdSpec) -> Option<String> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(spec.client_addr().to_string())
        .arg("-cert")
        .arg(spec.pki_file("healthcheck-client.crt"))
        .arg("-key")
        .arg(spec.pki_file("healthcheck-client.key"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    let serial = support::openssl(
        &["x509", "-noout", "-serial"],
        Some(text[start..end].as_bytes()),
    );
    Some(normalize(serial.trim().trim_start_matches("serial=")))
}

/// certrotd as `certrotd.service` (`Type=notify`, reload by SIGHUP) in `manager`.
async fn install_certrotd_unit(manager: &UserManager, node: &Node, env: &[(&str, String)]) {
    let mut unit = format!(
        "[Service]\nType=notify\nExecStart={} run --config {}\n\
         ExecReload=/bin/kill -HUP $MAINPID\nTimeoutStopSec=60s\n\
         StandardOutput=append:{}\nStandardError=inherit\n",
        env!("CARGO_BIN_EXE_certrotd"),
        node.config().display(),
        certrotd_log(node).display()
    );
    for (k, v) in env {
        unit.push_str(&format!("Environment={k}={v}\n"));
    }
    manager.write_unit("certrotd.service", &unit).await;
}

fn certrotd_log(node: &Node) -> PathBuf {
    node.work().join("certrotd.log")
}

/// `systemctl --user stop`, which sends SIGTERM and waits; returns how long it took, after
/// checking that certrotd exited cleanly.
async fn stop_certrotd_unit(manager: &UserManager, node: &Node) -> Duration {
    let asked = Instant::now();
    manager.systemctl(&["stop", "certrotd.service"]).await;
    let took = asked.elapsed();
    assert_eq!(
        manager.show("certrotd.service", "Result").await,
        "success",
        "certrotd's log:\n{}",
        std::fs::read_to_string(certrotd_log(node)).unwrap_or_default()
    );
    assert_eq!(
        manager.show("certrotd.service", "ExecMainStatus").await,
        "0"
    );
    took
}

/// Tests that arm failpoints in the binary through its environment fail plainly without them,
/// instead of in confusing ways (a sabotage that never happens reads as a rotation that works).
#[cfg(not(feature = "failpoints"))]
fn needs_failpoints() {
    panic!(
        "this test arms certrotd's failpoints: run `cargo test --features failpoints` (make test does)"
    );
}

#[cfg(feature = "failpoints")]
fn needs_failpoints() {}

// ---------------------------------------------------------------------------------------------
// 1. Happy path
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_etcd_rotation_is_renewed_restarted_through_dbus_and_proved() {
    log_to_test_output();
    let node = Node::new();
    // An external etcd: a unit, not a static pod, so the daemon restarts it with RestartUnit.
    std::fs::remove_file(node.sandbox.path("/etc/kubernetes/manifests/etcd.yaml")).unwrap();
    node.expire_in(ETCD_LEAVES, Duration::from_secs(3600));
    let etcd = EtcdUnit::start(&node, "").await;
    node.drop_in("50-test.toml", &etcd.drop_in("30s"));

    let old: BTreeMap<&str, String> = ETCD_LEAVES.iter().map(|n| (*n, node.serial(n))).collect();
    let old_pid = etcd.main_pid().await;
    assert_eq!(etcd.served_serial().await, Some(old["etcd-server"].clone()));

    let started_at = Instant::now();
    let daemon = InProcess::start(node.config());
    let socket = node.socket();
    let record = finished_rotation(&socket, TIMEOUT).await;
    let took = started_at.elapsed();
    assert_eq!(
        record.state,
        HistoryState::Success,
        "{:?}\netcd log:\n{}",
        record.reason,
        std::fs::read_to_string(etcd.spec.log_path()).unwrap_or_default()
    );
    let mut certs = record.certificates.clone();
    certs.sort();
    assert_eq!(
        certs,
        ["etcd-healthcheck-client", "etcd-peer", "etcd-server"],
        "exactly the due certificates"
    );
    let from = rfc3339(record.disruptive_from.as_deref().expect("disruptive_from"));
    let to = rfc3339(record.disruptive_to.as_deref().expect("disruptive_to"));
    let started = rfc3339(&record.started_at);
    let finished = rfc3339(record.finished_at.as_deref().unwrap());
    assert!(
        started <= from && from <= to && to <= finished,
        "{record:?}"
    );
    assert_eq!(record.fencing_token, Some(1), "the node's first lease");
    // History keeps whole seconds; the wall clock says more.
    eprintln!("daemon start to a proved rotation (renew, restart, prove): {took:?}");

    // Renewed on disk, and judged by openssl.
    for (name, serial) in &old {
        assert_ne!(&node.serial(name), serial, "{name} renewed");
    }
    node.assert_usable(ETCD_LEAVES);
    // Restarted through D-Bus: systemd's own view.
    let new_pid = etcd.main_pid().await;
    assert!(
        new_pid != 0 && new_pid != old_pid,
        "MainPID {old_pid} → {new_pid}"
    );
    assert_eq!(etcd.manager.show(ETCD_UNIT, "ActiveState").await, "active");
    // Serving the new certificate, healthy for a client holding the renewed healthcheck client.
    assert_eq!(etcd.served_serial().await, Some(node.serial("etcd-server")));
    let (ok, text) = etcd.health().await;
    assert!(
        ok,
        "etcdctl endpoint health with the renewed client: {text}"
    );

    // Status: the renewed certificates a year out, nothing in progress, the lease given back.
    let s = status(&socket).await.expect("status answers");
    assert!(s.rotation.is_none(), "{:?}", s.rotation);
    assert!(!s.lease.held, "{:?}", s.lease);
    for name in ETCD_LEAVES {
        let c = cert(&s, name);
        assert_eq!(c.status, "ok", "{c:?}");
        assert!(
            c.residual_seconds.unwrap() > 300 * 86_400,
            "{name} renewed for the configured validity: {c:?}"
        );
    }
    assert!(
        s.summary.ends_with("certificates ok") || s.summary.contains("next renewal"),
        "{}",
        s.summary
    );
    assert_eq!(history(&socket).await.len(), 1, "one rotation, no retries");

    // Idle: the shutdown future stops the daemon at once, and the socket stops answering.
    let took = daemon.stop().await;
    assert!(took < Duration::from_secs(2), "stopping took {took:?}");
    assert!(status(&socket).await.is_none(), "the socket still answers");
    assert!(!socket.exists(), "the socket is removed on the way out");
}

// ---------------------------------------------------------------------------------------------
// 2. Failure path
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_etcd_cannot_use_is_rolled_back_and_etcd_serves_the_old_certificate_again() {
    needs_failpoints();
    let node = Node::new();
    std::fs::remove_file(node.sandbox.path("/etc/kubernetes/manifests/etcd.yaml")).unwrap();
    node.expire_in(ETCD_LEAVES, Duration::from_secs(3600));
    // A strict start limit, so that etcd crash-looping on the broken key makes systemd give up
    // on the unit well inside the probe's timeout: RestartUnit is refused for a unit in that
    // state, and the rollback must still bring etcd back.
    let etcd = EtcdUnit::start(&node, "StartLimitIntervalSec=120s\nStartLimitBurst=2").await;
    node.drop_in("50-test.toml", &etcd.drop_in("15s"));
    let before = node.etcd_files();
    let old_server = node.serial("etcd-server");
    assert_eq!(etcd.served_serial().await, Some(old_server.clone()));

    // The real binary in a unit of its own: CERTROTD_SABOTAGE is read from the environment, so it
    // must not leak into the other tests of this process. After every self-check of the rotation
    // passed, the new etcd-server certificate gets a key that is not its own: etcd 3.4 refuses to
    // start with it.
    install_certrotd_unit(
        &etcd.manager,
        &node,
        &[(
            certrotd::failpoint::SABOTAGE_ENV,
            "wrong-key:etcd-server".to_owned(),
        )],
    )
    .await;
    etcd.manager.start_unit("certrotd.service").await;
    let socket = node.socket();
    // Watch etcd.service while the rotation runs: it must really have crash-looped into systemd's
    // start limit for this test to mean what it says.
    let gave_up = std::cell::Cell::new(false);
    let record = wait_for("the rotation to fail", TIMEOUT, || {
        let (etcd, socket, gave_up) = (&etcd, &socket, &gave_up);
        async move {
            if etcd.manager.show(ETCD_UNIT, "ActiveState").await == "failed" {
                gave_up.set(true);
            }
            status(socket).await?;
            history(socket)
                .await
                .into_iter()
                .find(|r| r.state != HistoryState::Initiated)
        }
    })
    .await;
    assert!(gave_up.get(), "etcd.service never reached its start limit");
    let log = || std::fs::read_to_string(certrotd_log(&node)).unwrap_or_default();
    assert_eq!(record.state, HistoryState::Failed, "{record:?}\n{}", log());
    let reason = record.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("etcd did not prove its new certificates")
            && reason.contains("rolled back to the previous certificates, which are served again"),
        "{reason}"
    );
    assert!(!reason.contains("ROLLBACK FAILED"), "{reason}");
    assert!(record.disruptive_from.is_some() && record.disruptive_to.is_some());

    // All old again, byte for byte.
    let after = node.etcd_files();
    for (file, bytes) in &before {
        assert!(
            after[file] == *bytes,
            "{file} differs from before the rotation"
        );
    }
    // etcd was restarted onto the old files and serves them to a client with the old certificate.
    etcd.wait_healthy().await;
    assert_eq!(etcd.served_serial().await, Some(old_server));
    assert_eq!(etcd.manager.show(ETCD_UNIT, "ActiveState").await, "active");

    // One failed rotation, not a storm of retries: the daemon waits before it tries again.
    let s = status(&socket).await.expect("status answers");
    assert!(s.rotation.is_none(), "{:?}", s.rotation);
    let records = history(&socket).await;
    assert_eq!(records.len(), 1, "{records:#?}");
    stop_certrotd_unit(&etcd.manager, &node).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Stopping, and crashing, in the middle of a rotation
// ---------------------------------------------------------------------------------------------

/// The certificates the stop and crash tests make due. Their consumers are static pods, which
/// the sandbox's `static_pods = "none"` leaves alone: these tests are about the files.
const API_LEAVES: &[&str] = &["apiserver", "front-proxy-client"];

/// The real binary as a child process (for failpoints armed by its environment), stopped by PID
/// when dropped.
struct Daemon {
    child: std::process::Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(node: &Node, env: &[(&str, String)]) -> Daemon {
        let log = certrotd_log(node);
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_certrotd"))
            .args(["run", "--config"])
            .arg(node.config())
            .envs(env.iter().map(|(k, v)| (k, v)))
            // Logs to stderr, not to a journal it might find through the test's environment.
            .env_remove("JOURNAL_STREAM")
            .env_remove("INVOCATION_ID")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn certrotd run");
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_log(&self, line: &str) {
        wait_for(&format!("{line:?} in certrotd's log"), TIMEOUT, || async {
            self.log().contains(line).then_some(())
        })
        .await;
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = &mut self.child;
        wait_for("certrotd to exit", TIMEOUT, || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn history_on_disk(node: &Node) -> Vec<HistoryRecord> {
    let settings = certrotd::config::load(&certrotd::config::LoadOptions {
        config: Some(node.config()),
        root: None,
    })
    .unwrap();
    certrotd::history::History::for_settings(&settings)
        .read(None)
        .unwrap()
        .records
        .iter()
        .map(|r| r.to_wire())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_rotation_finishes_it_before_the_daemon_exits() {
    needs_failpoints();
    let node = Node::new();
    node.expire_in(API_LEAVES, Duration::from_secs(3600));
    let old: Vec<String> = API_LEAVES.iter().map(|n| node.serial(n)).collect();
    let release = node.work().join("release");
    // Held after the first file of the rotation is installed: the node is provably half-way.
    let mut daemon = Daemon::spawn(
        &node,
        &[
            (certrotd::failpoint::ENV, "installed:1:pause".to_owned()),
            (
                certrotd::failpoint::RELEASE_ENV,
                release.display().to_string(),
            ),
        ],
    );
    daemon
        .wait_log("failpoint installed:1 reached, pausing")
        .await;
    let s = status(&node.socket())
        .await
        .expect("status answers mid-rotation");
    let progress = s.rotation.expect("a rotation in progress");
    assert_eq!(progress.step, "install");

    daemon.signal(Signal::SIGTERM);
    daemon.wait_log("finishing rotation").await;
    std::fs::write(&release, "").unwrap();
    let exit = daemon.wait_exit().await;
    assert!(exit.success(), "{exit}\n{}", daemon.log());

    // Not abandoned half-way: finished, recorded, and nothing left for the next start.
    let records = history_on_disk(&node);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0].state, HistoryState::Success, "{records:#?}");
    assert_eq!(records[0].id, progress.id);
    for (name, old) in API_LEAVES.iter().zip(&old) {
        assert_ne!(&node.serial(name), old, "{name} renewed");
    }
    node.assert_usable(API_LEAVES);
    let daemon = InProcess::start(node.config());
    let socket = node.socket();
    let s = wait_for("status", TIMEOUT, || status(&socket)).await;
    assert!(s.rotation.is_none());
    assert_eq!(
        history(&node.socket()).await.len(),
        1,
        "nothing rotated again"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_rotation_is_finished_by_the_next_start() {
    needs_failpoints();
    let node = Node::new();
    node.expire_in(API_LEAVES, Duration::from_secs(3600));
    let old: Vec<String> = API_LEAVES.iter().map(|n| node.serial(n)).collect();
    let mut daemon = Daemon::spawn(
        &node,
        &[(certrotd::failpoint::ENV, "installed:1".to_owned())],
    );
    let exit = daemon.wait_exit().await;
    assert!(
        daemon
            .log()
            .contains("failpoint installed:1 reached, aborting"),
        "{exit}\n{}",
        daemon.log()
    );
    // Half-way: the first certificate is new, its key is not yet.
    let inv = node.inventory();
    assert_eq!(inv.get(API_LEAVES[0]).unwrap().key, KeyState::Mismatch);
    let interrupted = history_on_disk(&node);
    assert_eq!(interrupted.len(), 1, "{interrupted:#?}");
    assert_eq!(interrupted[0].state, HistoryState::Initiated);

    // The next start rolls the journal forward before anything else: all new, nothing rotated
    // again, and the interrupted record closed.
    let daemon = InProcess::start(node.config());
    let socket = node.socket();
    let s = wait_for("status", TIMEOUT, || status(&socket)).await;
    for (name, old) in API_LEAVES.iter().zip(&old) {
        assert_ne!(&node.serial(name), old, "{name} rolled forward");
        assert_eq!(cert(&s, name).status, "ok");
    }
    node.assert_usable(API_LEAVES);
    // The files are rolled forward before the socket answers; the record is closed once the
    // resumed rotation has taken the lease and proved its consumers, a moment later.
    let record = finished_rotation(&socket, TIMEOUT).await;
    let records = history(&node.socket()).await;
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(record.id, interrupted[0].id);
    assert_eq!(record.state, HistoryState::Success, "{records:#?}");
    let reason = record.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("interrupted after installing, finished by the next start"),
        "{reason}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_commit_is_restarted_and_proved_by_the_next_start() {
    needs_failpoints();
    let node = Node::new();
    std::fs::remove_file(node.sandbox.path("/etc/kubernetes/manifests/etcd.yaml")).unwrap();
    node.expire_in(ETCD_LEAVES, Duration::from_secs(3600));
    let etcd = EtcdUnit::start(&node, "").await;
    node.drop_in("50-test.toml", &etcd.drop_in("30s"));
    let old_server = node.serial("etcd-server");

    // The binary dies once the new files are committed, before it restarts etcd: recovery finds
    // a finished journal and has nothing to do, yet etcd was never restarted nor proved.
    install_certrotd_unit(
        &etcd.manager,
        &node,
        &[(certrotd::failpoint::ENV, "pruned".to_owned())],
    )
    .await;
    etcd.manager.start_unit("certrotd.service").await;
    wait_for("certrotd to crash", TIMEOUT, || async {
        (etcd.manager.show("certrotd.service", "ActiveState").await == "failed").then_some(())
    })
    .await;
    assert_ne!(node.serial("etcd-server"), old_server, "committed");
    let pid_before = etcd.main_pid().await;
    let interrupted = history_on_disk(&node);
    assert_eq!(interrupted.len(), 1, "{interrupted:#?}");
    assert_eq!(interrupted[0].state, HistoryState::Initiated);

    let daemon = InProcess::start(node.config());
    let socket = node.socket();
    let record = finished_rotation(&socket, TIMEOUT).await;
    assert_eq!(record.id, interrupted[0].id);
    assert_eq!(record.state, HistoryState::Success, "{record:?}");
    assert!(
        record
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("finished by the next start"),
        "{record:?}"
    );
    let pid_after = etcd.main_pid().await;
    assert!(
        pid_after != 0 && pid_after != pid_before,
        "etcd restarted by the next start: MainPID {pid_before} → {pid_after}"
    );
    assert_eq!(etcd.served_serial().await, Some(node.serial("etcd-server")));
    let (ok, text) = etcd.health().await;
    assert!(ok, "{text}");
    assert_eq!(history(&socket).await.len(), 1, "nothing rotated again");
    daemon.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Reloading
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_refuse_a_bad_configuration_and_take_a_good_one() {
    let node = Node::new();
    let manager = UserManager::start().await;
    install_certrotd_unit(&manager, &node, &[]).await;
    // Type=notify: the start job ends when certrotd says READY=1.
    manager.start_unit("certrotd.service").await;
    assert_eq!(
        manager.show("certrotd.service", "SubState").await,
        "running"
    );
    let line = manager.show("certrotd.service", "StatusText").await;
    assert!(line.contains("certificates ok"), "STATUS= {line:?}");
    let socket = node.socket();
    let before = status(&socket).await.expect("status answers");
    let running = || async {
        (manager.show("certrotd.service", "SubState").await == "running").then_some(())
    };

    // A bad drop-in, through `systemctl reload` (SIGHUP): refused, the old settings kept, and
    // systemd told the reload is over.
    let bad = node.drop_in("60-bad.toml", "[policy]\nrenew_befor = \"3d\"\n");
    manager.systemctl(&["reload", "certrotd.service"]).await;
    let s = wait_for("the refused reload in status", TIMEOUT, || async {
        let s = status(&socket).await?;
        s.notices
            .iter()
            .any(|n| n.contains("60-bad.toml"))
            .then_some(s)
    })
    .await;
    assert_eq!(s.daemon.config_sources, before.daemon.config_sources);
    assert_eq!(cert(&s, "apiserver").status, "ok");
    wait_for(
        "certrotd.service running after a refused reload",
        TIMEOUT,
        running,
    )
    .await;

    // The same through the socket: refused, naming the file and the line.
    match client::request(&socket, Request::Reload, REQUEST).await {
        Ok(Response::Error {
            kind: ErrorKind::BadRequest,
            message,
        }) => assert!(
            message.contains("60-bad.toml") && message.contains("renew_befor"),
            "{message}"
        ),
        other => panic!("a bad reload must be refused: {other:?}"),
    }

    // A good one, through SIGHUP: taken.
    std::fs::remove_file(bad).unwrap();
    let good = node.drop_in("60-good.toml", "[policy]\nnotify_before = \"400d\"\n");
    manager.systemctl(&["reload", "certrotd.service"]).await;
    let s = wait_for("the new settings in status", TIMEOUT, || async {
        let s = status(&socket).await?;
        (cert(&s, "apiserver").status == "notify").then_some(s)
    })
    .await;
    assert!(
        s.daemon
            .config_sources
            .contains(&good.display().to_string()),
        "{:?}",
        s.daemon.config_sources
    );
    wait_for("certrotd.service running after a reload", TIMEOUT, running).await;
    // And through the socket.
    assert!(
        matches!(
            client::request(&socket, Request::Reload, REQUEST).await,
            Ok(Response::Reloaded)
        ),
        "a good reload is taken"
    );

    // SIGTERM while idle (`systemctl stop`): prompt, clean, and the socket stops answering.
    let took = stop_certrotd_unit(&manager, &node).await;
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    assert!(status(&socket).await.is_none(), "the socket still answers");
    assert!(!socket.exists(), "the socket is removed on the way out");
}

// ---------------------------------------------------------------------------------------------
// 5. Someone else renewed
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_renewed_by_someone_else_is_seen_and_not_renewed_again() {
    let node = Node::new();
    // apiserver is inside renew_before but not an emergency, and the only maintenance window is
    // closed now: the daemon plans its renewal for when the window opens.
    node.expire_in(&["apiserver"], Duration::from_secs(20 * 86_400));
    let hour = (OffsetDateTime::now_utc().hour() + 12) % 24;
    node.drop_in(
        "50-test.toml",
        &format!("[policy]\nmaintenance_windows = [\"daily {hour:02}:00-{hour:02}:30\"]\n"),
    );
    let daemon = InProcess::start(node.config());
    let socket = node.socket();
    let s = wait_for("status", TIMEOUT, || status(&socket)).await;
    let planned = cert(&s, "apiserver").clone();
    assert_eq!(planned.status, "renew", "{planned:?}");
    assert_eq!(planned.next_action, "renew", "{planned:?}");

    // `kubeadm certs renew apiserver`, played by certrotd's own CLI in a process of its own.
    let out = Command::new(env!("CARGO_BIN_EXE_certrotd"))
        .args(["renew", "--cert", "apiserver", "--config"])
        .arg(node.config())
        .env_remove(certrotd::failpoint::ENV)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let renewed = node.serial("apiserver");
    let written = Instant::now();
    let seen = wait_for(
        "the other renewal in status",
        Duration::from_secs(10),
        || async {
            let s = status(&socket).await?;
            let c = cert(&s, "apiserver").clone();
            (c.not_after != planned.not_after).then_some(c)
        },
    )
    .await;
    eprintln!(
        "a renewal by someone else shown in status after {:?}",
        written.elapsed()
    );
    assert_eq!(seen.status, "ok", "{seen:?}");
    assert!(seen.residual_seconds.unwrap() > 300 * 86_400, "{seen:?}");
    assert_ne!(seen.next_action_at, planned.next_action_at);

    // Not fought: nothing rotated, and the file is still the other renewal's.
    assert!(history(&socket).await.is_empty());
    assert_eq!(node.serial("apiserver"), renewed);
    daemon.stop().await;
}

//! A real three-member etcd cluster on loopback where every member is one sandbox node: each node
//! has its own root (kubeadm-shaped, written by `certrotd::sandbox`), its own real `systemd --user`
//! manager running its member as `etcd.service` (`Restart=always` stands in for the kubelet), and
//! its own certrotd daemon (the real binary as a child process, so a test can kill -9 it). All
//! members' certificates are signed by ONE etcd CA (the first node's, copied to the others, as
//! `kubeadm join --control-plane` does), each with its own ports.
//!
//! The judges are independent of the code under test: `etcdctl endpoint health` for quorum,
//! `openssl verify` for the certificates, and the daemons' history files read from disk.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use certrotd::control::proto::HistoryRecord;
use certrotd::issuer::local::LocalCa;
use certrotd::issuer::{IssueRequest, Issuer as _};
use certrotd::pki::cert::Cert;
use certrotd::pki::encode::{self, KeySpec};
use certrotd::pki::key::PrivateKey;
use certrotd::pki::layout::Layout;
use certrotd::pki::pem;
use certrotd::sandbox::{self, Sandbox, SandboxOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use time::OffsetDateTime;
use tokio::time::Instant;

use super::etcd::EtcdSpec;
use super::systemd::UserManager;
use super::which;

/// How often a wait looks again.
pub const POLL: Duration = Duration::from_millis(50);
/// The etcd unit's name in every node's manager.
pub const ETCD_UNIT: &str = "etcd.service";
/// The etcd leaves a member serves or uses (in the etcd PKI directory), plus the API server's
/// etcd client (the lease's default client certificate).
pub const ETCD_LEAVES: &[&str] = &[
    "etcd-server",
    "etcd-peer",
    "etcd-healthcheck-client",
    "apiserver-etcd-client",
];

/// One node of the cluster: a sandbox root, its etcd member's spec, its systemd manager.
pub struct PeerNode {
    /// Keeps the node's directories alive.
    pub tmp: tempfile::TempDir,
    /// The node root and its certrotd.toml.
    pub sandbox: Sandbox,
    /// The node's name (also its etcd member's name).
    pub name: String,
    /// Its etcd member.
    pub spec: EtcdSpec,
    /// Its systemd user manager (etcd.service runs there).
    pub manager: UserManager,
    /// Its certrotd daemon, while one runs.
    pub daemon: Option<Child>,
    /// The kubelet stand-in's TLS and health ports, once started.
    pub kubelet: Option<(u16, u16)>,
}

impl PeerNode {
    /// Scratch space outside the node root: etcd's data and log, certrotd's log.
    pub fn work(&self) -> PathBuf {
        self.tmp.path().join("work")
    }

    /// The node's etcd PKI directory.
    pub fn etcd_pki(&self) -> PathBuf {
        self.sandbox.path("/etc/kubernetes/pki/etcd")
    }

    /// The control socket (the sandbox's default node path, inside its root).
    pub fn socket(&self) -> PathBuf {
        self.sandbox.path("/run/certrotd/certrotd.sock")
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> PathBuf {
        self.work().join("certrotd.log")
    }

    /// What the daemon logged so far (across its starts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The inventory of the node, as the tests' judge reads it.
    pub fn inventory(&self) -> certrotd::inventory::Inventory {
        super::scan(&self.sandbox.dir, Some(vec![Layout::Kubeadm]), &[])
    }

    /// Writes a configuration drop-in next to the node's certrotd.toml.
    pub fn drop_in(&self, name: &str, text: &str) {
        let dir = self.sandbox.dir.join("conf.d");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// Starts the node's certrotd (`certrotd run`) as a child process with extra environment.
    pub fn start_daemon(&mut self, env: &[(&str, String)]) {
        assert!(
            self.daemon.is_none(),
            "{}: certrotd already runs",
            self.name
        );
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_certrotd"))
            .args(["run", "--config"])
            .arg(&self.sandbox.config_path)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("CERTROTD_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .env_remove("INVOCATION_ID")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn certrotd run");
        self.daemon = Some(child);
    }

    /// kill -9 of the node's certrotd; waits for it to be gone.
    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
            let _ = child.wait();
        }
    }

    /// SIGTERM to the node's certrotd; waits for it to exit (killing it after a minute).
    pub fn stop_daemon(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }

    /// The rotation records of the node's history file, latest state of each, newest first.
    pub fn history(&self) -> Vec<HistoryRecord> {
        let settings = certrotd::config::load(&certrotd::config::LoadOptions {
            config: Some(&self.sandbox.config_path),
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

    /// `etcdctl endpoint health` against this member with its healthcheck client.
    pub async fn health(&self) -> (bool, String) {
        let spec = self.spec.clone();
        tokio::task::spawn_blocking(move || {
            spec.etcdctl("healthcheck-client", &["endpoint", "health"])
        })
        .await
        .unwrap()
    }

    /// Re-issues each named certificate, same key and attributes, from the etcd CA in the PKI
    /// directory `ca_pki`, as of `now`, valid for `validity`.
    pub fn reissue(&self, names: &[&str], ca_pki: &Path, now: OffsetDateTime, validity: Duration) {
        let inv = self.inventory();
        let (cert, key) = etcd_ca(ca_pki);
        let issuer = LocalCa::new("etcd-ca", cert, key).unwrap();
        for name in names {
            let e = inv
                .get(name)
                .unwrap_or_else(|| panic!("{}: {name} not in the inventory", self.name));
            let old = e.cert.as_ref().unwrap();
            let issued = issuer
                .issue(&IssueRequest {
                    template: old,
                    spki: &old.spki_der,
                    validity,
                    now,
                })
                .unwrap();
            std::fs::write(&e.path, encode::cert_pem(&issued.der)).unwrap();
        }
    }

    /// Every leaf certificate of the node is valid now, and `openssl verify` accepts it against
    /// the CA that signed it.
    pub fn assert_all_valid(&self, now: OffsetDateTime) {
        let inv = self.inventory();
        for e in super::renewal::leaves(&inv.entries) {
            let Some(cert) = &e.cert else { continue };
            assert!(
                cert.not_after > now && cert.not_before <= now,
                "{}: {} is not valid now ({} .. {})",
                self.name,
                e.name,
                cert.not_before,
                cert.not_after
            );
            let Some(ca) = e.signer.as_ref().and_then(|s| inv.get(s)) else {
                continue;
            };
            // Through stdin: a kubeconfig embeds its certificate, openssl reads PEM only.
            let pem = encode::cert_pem(&cert.der);
            let out = super::openssl(
                &["verify", "-CAfile", ca.path.to_str().unwrap()],
                Some(pem.as_bytes()),
            );
            assert!(
                out.trim_end().ends_with(": OK"),
                "{}: {}: {out}",
                self.name,
                e.name
            );
        }
    }
}

impl Drop for PeerNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The cluster: its nodes, in member order.
pub struct Cluster {
    /// The nodes.
    pub nodes: Vec<PeerNode>,
    /// `[restart] prefer_reload` as [`Cluster::configure`] writes it: `false` unless a test
    /// sets it, so the tests that count restarts see every member restarted.
    pub prefer_reload: bool,
    /// Its share of the machine, given back after the nodes are dropped (fields drop in order).
    _share: Share,
}

/// Every cluster of a test binary shares the machine with the others, except while a test that
/// measures write gaps runs ([`Cluster::new_alone`]). On two cores, a second three-member
/// cluster restarting its members beside it starves etcd's 100 ms heartbeats, and the gap
/// measured is the machine's rather than the rotation's (seen once: 2.9 s in the abort test
/// while another CA rotation ran beside it; 0.2 s alone).
static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A cluster's hold on [`MACHINE`].
enum Share {
    /// Beside other clusters.
    Shared(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'static, ()>),
    /// No other cluster runs meanwhile.
    Alone(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'static, ()>),
}

/// The etcd CA of a node's PKI directory.
pub fn etcd_ca(pki: &Path) -> (Cert, PrivateKey) {
    let crt = std::fs::read(pki.join("ca.crt")).unwrap();
    let blocks = pem::blocks(&pki.join("ca.crt"), &crt).unwrap();
    let cert = Cert::from_der(&blocks[0].der).unwrap();
    let key_path = pki.join("ca.key");
    let kb = pem::blocks(&key_path, &std::fs::read(&key_path).unwrap()).unwrap();
    (cert, PrivateKey::from_blocks(&kb).unwrap())
}

impl Cluster {
    /// Writes `n` sandbox nodes as of `at` (leaves valid for `leaf_ttl` from `at`), all etcd
    /// leaves re-issued from the first node's etcd CA, and starts each node's manager. etcd is
    /// not started yet (see [`Cluster::start_etcd`]).
    pub async fn new(n: usize, at: OffsetDateTime, leaf_ttl: Duration) -> Cluster {
        Cluster::build(n, at, leaf_ttl, Share::Shared(MACHINE.read().await)).await
    }

    /// [`Cluster::new`] for a test that measures write gaps: no other cluster of this binary
    /// runs while it lives (it waits for those running to finish).
    pub async fn new_alone(n: usize, at: OffsetDateTime, leaf_ttl: Duration) -> Cluster {
        Cluster::build(n, at, leaf_ttl, Share::Alone(MACHINE.write().await)).await
    }

    async fn build(n: usize, at: OffsetDateTime, leaf_ttl: Duration, share: Share) -> Cluster {
        let mut nodes = Vec::new();
        for i in 1..=n {
            let tmp = tempfile::Builder::new()
                .prefix("certrotd-peers-")
                .tempdir()
                .unwrap();
            let name = format!("peer-{i}");
            let sandbox = sandbox::write(
                &tmp.path().join("node"),
                &SandboxOptions {
                    node_name: name.clone(),
                    key: KeySpec::EcdsaP256,
                    leaf_ttl,
                    ..SandboxOptions::default()
                },
                at,
            )
            .unwrap();
            std::fs::create_dir_all(tmp.path().join("work")).unwrap();
            let mut spec = EtcdSpec::new(
                &sandbox.path("/etc/kubernetes/pki/etcd"),
                &tmp.path().join("work"),
            );
            spec.name = name.clone();
            let manager = UserManager::start().await;
            nodes.push(PeerNode {
                tmp,
                sandbox,
                name,
                spec,
                manager,
                daemon: None,
                kubelet: None,
            });
        }
        // One etcd CA for the cluster: the first node's, as kubeadm join copies it.
        let first_pki = nodes[0].etcd_pki();
        for node in nodes.iter().skip(1) {
            for f in ["ca.crt", "ca.key"] {
                std::fs::copy(first_pki.join(f), node.etcd_pki().join(f)).unwrap();
            }
        }
        for node in &nodes {
            node.reissue(ETCD_LEAVES, &first_pki, at, leaf_ttl);
        }
        let cluster = Cluster {
            nodes,
            prefer_reload: false,
            _share: share,
        };
        for node in &cluster.nodes {
            cluster.write_etcd_unit(node).await;
        }
        cluster
    }

    /// The PKI directory holding the cluster's etcd CA.
    pub fn ca_pki(&self) -> PathBuf {
        self.nodes[0].etcd_pki()
    }

    /// `--initial-cluster` naming every member.
    fn initial_cluster(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}=https://127.0.0.1:{}", n.name, n.spec.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client endpoints, as `[lease] endpoints` takes them.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("https://127.0.0.1:{}", n.spec.client_port))
            .collect()
    }

    async fn write_etcd_unit(&self, node: &PeerNode) {
        let args: Vec<String> = node
            .spec
            .args()
            .into_iter()
            .map(|a| {
                if a.starts_with("--initial-cluster=") {
                    format!("--initial-cluster={}", self.initial_cluster())
                } else {
                    a
                }
            })
            .chain([
                "--initial-cluster-state=new".to_owned(),
                "--initial-cluster-token=certrotd-peers".to_owned(),
            ])
            .collect();
        let unit = format!(
            "[Service]\nExecStart={} {}\nRestart=always\nRestartSec=200ms\n\
             StandardOutput=append:{}\nStandardError=inherit\n",
            which("etcd").display(),
            args.join(" "),
            node.spec.log_path().display()
        );
        node.manager.write_unit(ETCD_UNIT, &unit).await;
    }

    /// Starts a kubelet stand-in on every node, for tests whose rotations include the kubelet's
    /// certificates: `kubelet.service` is `openssl s_server` serving the node's kubelet serving
    /// certificate (read again at each restart, so the probe sees the new one), and its health
    /// port is answered `200` by this test process (the stand-in has no health endpoint). Call
    /// before [`Cluster::configure`].
    pub async fn start_kubelets(&mut self) {
        for node in &mut self.nodes {
            let tls = super::etcd::free_port();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let health = listener.local_addr().unwrap().port();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                while let Ok((mut conn, _)) = listener.accept().await {
                    let mut buf = [0u8; 1024];
                    let _ = conn.read(&mut buf).await;
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                }
            });
            let pki = node.sandbox.path("/var/lib/kubelet/pki");
            let unit = format!(
                "[Service]\nExecStart={} s_server -quiet -www -accept 127.0.0.1:{tls} -cert {} -key {}\n\
                 Restart=always\nRestartSec=200ms\nStandardOutput=null\n",
                which("openssl").display(),
                pki.join("kubelet.crt").display(),
                pki.join("kubelet.key").display()
            );
            node.manager.write_unit("kubelet.service", &unit).await;
            node.manager.start_unit("kubelet.service").await;
            node.kubelet = Some((tls, health));
        }
    }

    /// Starts every member's unit (without waiting for them).
    pub async fn start_etcd(&self) {
        for node in &self.nodes {
            node.manager.start_unit(ETCD_UNIT).await;
        }
    }

    /// Waits until `etcdctl endpoint health` passes on every member.
    pub async fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for node in &self.nodes {
            loop {
                let (ok, text) = node.health().await;
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: etcd not healthy within {timeout:?}: {text}\n{}",
                    node.name,
                    std::fs::read_to_string(node.spec.log_path()).unwrap_or_default()
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// Writes each node's drop-in: restarts through its own manager, probes on its own ports,
    /// the etcd lease at the cluster's endpoints (`ttl`), plus `extra`.
    pub fn configure(&self, ttl: &str, extra: &str) {
        let endpoints = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        for node in &self.nodes {
            let text = format!(
                "[restart]\nstatic_pods = \"none\"\nunits = true\ndbus_address = \"{bus}\"\njob_timeout = \"30s\"\nprefer_reload = {prefer_reload}\n\n\
                 [probe]\ntimeout = \"30s\"\n\n\
                 [probe.endpoints]\netcd = [{{ host = \"127.0.0.1\", port = {client}, serves = \"etcd-server\" }}, \
                 {{ host = \"127.0.0.1\", port = {peer}, serves = \"etcd-peer\" }}]\n{kubelet_tls}\n\
                 [probe.health]\netcd = \"127.0.0.1:{client}\"\n{kubelet_health}\n\
                 [lease]\nbackend = \"etcd\"\nendpoints = [{endpoints}]\ncluster = \"peers-test\"\nttl = \"{ttl}\"\n\n{extra}",
                bus = node.manager.bus_address(),
                prefer_reload = self.prefer_reload,
                client = node.spec.client_port,
                peer = node.spec.peer_port,
                kubelet_tls = node.kubelet.map_or(String::new(), |(tls, _)| format!(
                    "kubelet = [{{ host = \"127.0.0.1\", port = {tls}, serves = \"kubelet-serving\" }}]\n"
                )),
                kubelet_health = node.kubelet.map_or(String::new(), |(_, health)| format!(
                    "kubelet = \"127.0.0.1:{health}\"\n"
                )),
            );
            node.drop_in("50-peers.toml", &text);
        }
    }
}

/// An RFC 3339 time of a history record.
pub fn rfc3339(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
}

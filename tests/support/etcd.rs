//! A real etcd (Debian's etcd-server, 3.4) on loopback with TLS from a test PKI: client and peer
//! TLS, client certificates required on both, free ports, a data directory of its own.
//!
//! Built to the shape of the `rotation` branch's tests/etcd.rs (the same flags, a free port bound
//! and released, stopped by PID on drop), as a harness other tests can share: [`EtcdSpec::args`]
//! is the command line, so it can also become a systemd unit's `ExecStart`.
//!
//! Readiness is judged by `etcdctl endpoint health` with the healthcheck client, not by the code
//! under test.
//!
//! [`EtcdCluster`] runs several members on loopback as one cluster, each with its own server,
//! peer and healthcheck-client certificates signed by one etcd CA ([`issue_member_pki`]).

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long etcd may take to answer health checks. Generous: two cores are shared with builds.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long etcd may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where [`free_port`] picks from: below Linux's ephemeral range (32768–60999), so neither a
/// listener bound to port 0 nor the source port of an outgoing connection can take a port in the
/// moment between handing it out and the component binding it.
const PICKED_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free loopback port (bound and released; etcd binds it a moment later), never the same one
/// twice in a test binary. Binding port 0 instead let the kernel hand out one port twice to two
/// members of one cluster ("initial cluster ... has duplicate url", seen in CI).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Binaries run one after another, but a start that depends on the PID keeps two runs on one
    // machine apart too.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(PICKED_PORTS.end - PICKED_PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = PICKED_PORTS.start + u16::try_from(offset).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PICKED_PORTS:?}");
}

/// Where an etcd member's files are and where it listens.
#[derive(Debug, Clone)]
pub struct EtcdSpec {
    /// The member name.
    pub name: String,
    /// The kubeadm etcd PKI directory (`.../etc/kubernetes/pki/etcd`): `server.{crt,key}`,
    /// `peer.{crt,key}`, `ca.crt`, `healthcheck-client.{crt,key}`.
    pub pki: PathBuf,
    /// Where the data directory and the log go.
    pub work: PathBuf,
    /// The client port (2379 on a node).
    pub client_port: u16,
    /// The peer port (2380 on a node).
    pub peer_port: u16,
}

impl EtcdSpec {
    /// A member on free loopback ports, for the sandbox node `sandbox-cp1`.
    pub fn new(pki: &Path, work: &Path) -> EtcdSpec {
        EtcdSpec {
            name: "sandbox-cp1".to_owned(),
            pki: pki.to_owned(),
            work: work.to_owned(),
            client_port: free_port(),
            peer_port: free_port(),
        }
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// The peer address.
    pub fn peer_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.peer_port))
    }

    /// A file in the PKI directory.
    pub fn pki_file(&self, name: &str) -> PathBuf {
        self.pki.join(name)
    }

    /// The log file (etcd's stdout and stderr, appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.work.join(format!("etcd-{}.log", self.name))
    }

    /// Runs etcdctl against the member this spec describes, however it was started (directly or
    /// as a unit), with a client certificate from its PKI directory (`healthcheck-client`, or a
    /// path relative to it); (success, stdout + stderr).
    pub fn etcdctl(&self, client: &str, args: &[&str]) -> (bool, String) {
        let file = |ext: &str| {
            self.pki_file(&format!("{client}.{ext}"))
                .to_str()
                .unwrap()
                .to_owned()
        };
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=https://{}", self.client_addr()))
            .arg(format!(
                "--cacert={}",
                self.pki_file("ca.crt").to_str().unwrap()
            ))
            .arg(format!("--cert={}", file("crt")))
            .arg(format!("--key={}", file("key")))
            .arg("--dial-timeout=2s")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl must be installed (make test installs etcd-client)");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// etcd's command line, as kubeadm's static pod has it (minus what loopback tests do not need).
    pub fn args(&self) -> Vec<String> {
        let s = |p: PathBuf| p.to_str().unwrap().to_owned();
        let client_url = format!("https://127.0.0.1:{}", self.client_port);
        let peer_url = format!("https://127.0.0.1:{}", self.peer_port);
        [
            ("--name", self.name.clone()),
            (
                "--data-dir",
                s(self.work.join(format!("etcd-{}", self.name))),
            ),
            ("--listen-client-urls", client_url.clone()),
            ("--advertise-client-urls", client_url),
            ("--listen-peer-urls", peer_url.clone()),
            ("--initial-advertise-peer-urls", peer_url.clone()),
            ("--initial-cluster", format!("{}={peer_url}", self.name)),
            ("--cert-file", s(self.pki_file("server.crt"))),
            ("--key-file", s(self.pki_file("server.key"))),
            ("--client-cert-auth", "true".to_owned()),
            ("--trusted-ca-file", s(self.pki_file("ca.crt"))),
            ("--peer-cert-file", s(self.pki_file("peer.crt"))),
            ("--peer-key-file", s(self.pki_file("peer.key"))),
            ("--peer-client-cert-auth", "true".to_owned()),
            ("--peer-trusted-ca-file", s(self.pki_file("ca.crt"))),
        ]
        .into_iter()
        .map(|(flag, value)| format!("{flag}={value}"))
        .collect()
    }
}

/// A running etcd, stopped by PID when dropped (also when an assertion fails).
pub struct Etcd {
    /// Its configuration.
    pub spec: EtcdSpec,
    child: Option<Child>,
    /// `--initial-cluster` when it is a member of a larger cluster.
    initial_cluster: Option<String>,
    /// Flags beyond [`EtcdSpec::args`] (e.g. `--listen-metrics-urls`).
    extra_args: Vec<String>,
}

impl Etcd {
    /// Starts etcd and waits until it is healthy; panics with its log when it is not.
    pub fn start(spec: EtcdSpec) -> Etcd {
        let mut etcd = Etcd {
            spec,
            child: None,
            initial_cluster: None,
            extra_args: Vec::new(),
        };
        etcd.spawn();
        etcd.wait_healthy();
        etcd
    }

    /// Starts etcd without waiting for it.
    pub fn spawn_only(spec: EtcdSpec) -> Etcd {
        let mut etcd = Etcd {
            spec,
            child: None,
            initial_cluster: None,
            extra_args: Vec::new(),
        };
        etcd.spawn();
        etcd
    }

    /// Starts etcd with extra flags and waits until it is healthy.
    pub fn start_with_args(spec: EtcdSpec, extra_args: &[String]) -> Etcd {
        let mut etcd = Etcd {
            spec,
            child: None,
            initial_cluster: None,
            extra_args: extra_args.to_vec(),
        };
        etcd.spawn();
        etcd.wait_healthy();
        etcd
    }

    /// Starts a member of the cluster `initial_cluster` names, without waiting for it.
    pub fn spawn_member(spec: EtcdSpec, initial_cluster: &str) -> Etcd {
        let mut etcd = Etcd {
            spec,
            child: None,
            initial_cluster: Some(initial_cluster.to_owned()),
            extra_args: Vec::new(),
        };
        etcd.spawn();
        etcd
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.spec.log_path())
            .unwrap();
        let mut args = self.spec.args();
        if let Some(cluster) = &self.initial_cluster {
            for a in args.iter_mut() {
                if a.starts_with("--initial-cluster=") {
                    *a = format!("--initial-cluster={cluster}");
                }
            }
            args.push("--initial-cluster-token=certrotd-test".to_owned());
        }
        args.extend(self.extra_args.iter().cloned());
        let child = Command::new("etcd")
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd must be installed (make test installs etcd-server)");
        self.child = Some(child);
    }

    /// Its PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What etcd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.spec.log_path()).unwrap_or_default()
    }

    /// Waits until `etcdctl endpoint health` with the healthcheck client succeeds.
    pub fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let (ok, text) = self.etcdctl("healthcheck-client", &["endpoint", "health"]);
            if ok {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("etcd exited with {status}: {text}\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd was not healthy within {START_TIMEOUT:?}: {text}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs etcdctl against this member with a client certificate from its PKI directory
    /// (`healthcheck-client`, or a path relative to it); (success, stdout + stderr).
    pub fn etcdctl(&self, client: &str, args: &[&str]) -> (bool, String) {
        self.spec.etcdctl(client, args)
    }

    /// Stops etcd: SIGTERM, then SIGKILL if it lingers; waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }

    /// Stops etcd and starts it again on the same ports and data, as a restart after a
    /// certificate change does; does not wait for it to be healthy.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts it again after [`Etcd::stop`], on the same ports and data; does not wait.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Whether it runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Several etcd members on loopback forming one cluster, each with its own certificates signed by
/// one etcd CA. Members are stopped by PID when dropped.
pub struct EtcdCluster {
    /// The members, in order.
    pub members: Vec<Etcd>,
    /// The etcd CA's certificate (shared by every member).
    pub ca_file: PathBuf,
}

impl EtcdCluster {
    /// Starts `n` members under `work`, their certificates issued by the etcd CA in `ca_pki` (a
    /// kubeadm `pki/etcd` directory holding `ca.crt` and `ca.key`), and waits until each is
    /// healthy.
    pub fn start(ca_pki: &Path, work: &Path, n: usize) -> EtcdCluster {
        let specs: Vec<EtcdSpec> = (0..n)
            .map(|i| {
                let name = format!("member{i}");
                let pki = work.join(&name).join("pki");
                issue_member_pki(ca_pki, &pki, &name);
                let member_work = work.join(&name);
                std::fs::create_dir_all(&member_work).unwrap();
                EtcdSpec {
                    name,
                    pki,
                    work: member_work,
                    client_port: free_port(),
                    peer_port: free_port(),
                }
            })
            .collect();
        let initial = specs
            .iter()
            .map(|s| format!("{}=https://{}", s.name, s.peer_addr()))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Etcd> = specs
            .into_iter()
            .map(|spec| Etcd::spawn_member(spec, &initial))
            .collect();
        for m in &mut members {
            m.wait_healthy();
        }
        EtcdCluster {
            members,
            ca_file: ca_pki.join("ca.crt"),
        }
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("https://{}", m.spec.client_addr()))
            .collect()
    }

    /// Runs etcdctl against the first running member with its healthcheck client; (success,
    /// stdout + stderr). An independent hand on the cluster: an operator deleting a key.
    pub fn etcdctl(&self, args: &[&str]) -> (bool, String) {
        let member = self
            .members
            .iter()
            .find(|m| m.running())
            .expect("a running member");
        member.etcdctl("healthcheck-client", args)
    }

    /// Stops every member.
    pub fn stop_all(&mut self) {
        for m in &mut self.members {
            m.stop();
        }
    }

    /// Starts every stopped member again and waits until each is healthy.
    pub fn start_all(&mut self) {
        for m in &mut self.members {
            if !m.running() {
                m.start_again();
            }
        }
        for m in &mut self.members {
            m.wait_healthy();
        }
    }
}

/// The etcd CA in a kubeadm `pki/etcd` directory.
pub fn etcd_ca(
    ca_pki: &Path,
) -> (
    rcgen::Issuer<'static, certrotd::pki::secret::SecretKeyPair>,
    Vec<u8>,
) {
    let ca_pem = std::fs::read_to_string(ca_pki.join("ca.crt")).unwrap();
    let key_pem = std::fs::read_to_string(ca_pki.join("ca.key")).unwrap();
    let blocks = certrotd::pki::pem::blocks(&ca_pki.join("ca.key"), key_pem.as_bytes()).unwrap();
    let key = certrotd::pki::key::PrivateKey::from_blocks(&blocks)
        .unwrap()
        .pair;
    let der = certrotd::pki::pem::blocks(&ca_pki.join("ca.crt"), ca_pem.as_bytes()).unwrap()[0]
        .der
        .clone();
    let issuer = rcgen::Issuer::from_ca_cert_der(&der.as_slice().into(), key).unwrap();
    (issuer, der)
}

/// Issues `<stem>.crt` and `<stem>.key` in `dir`, signed by the etcd CA in `ca_pki`, for `cn`,
/// valid from `not_before` to `not_after`, for server and client use on loopback and `cn`.
pub fn issue_leaf(
    ca_pki: &Path,
    dir: &Path,
    stem: &str,
    cn: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
    let (issuer, _) = etcd_ca(ca_pki);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![cn.to_owned(), "localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params.distinguished_name.push(DnType::CommonName, cn);
    params.not_before = not_before;
    params.not_after = not_after;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
}

/// Writes a member's PKI directory: `ca.crt` (copied), and its own `server`, `peer` and
/// `healthcheck-client` certificates, valid for a day.
pub fn issue_member_pki(ca_pki: &Path, dir: &Path, name: &str) {
    let now = time::OffsetDateTime::now_utc();
    let (from, to) = (
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    );
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(ca_pki.join("ca.crt"), dir.join("ca.crt")).unwrap();
    for stem in ["server", "peer", "healthcheck-client"] {
        issue_leaf(ca_pki, dir, stem, name, from, to);
    }
}

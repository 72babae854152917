//! What the CA rotation tests share (the library-driven ones in `ca_rotation.rs` and the
//! daemon-driven ones in `ca_daemon.rs`): the API-server stand-in that writes to etcd and logs
//! every acknowledged write, the aggregated-server stand-in for front-proxy-ca, and the judges
//! that do not use certrotd's code — `etcdctl` and `openssl s_client` with a client that trusts
//! only the old CA, the write log against what etcd holds, the longest write gap, member starts
//! counted from etcd's own log, and a quorum watch.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use super::cluster::{Cluster, PeerNode};
use super::which;

/// The API server stand-in's unit (the name the daemon restarts as the API server).
pub const STANDIN: &str = "kube-apiserver.service";
/// The aggregated API server stand-in's unit.
pub const AGGREGATED: &str = "aggregated.service";

/// The node's real PKI directory.
pub fn pki(n: &PeerNode) -> PathBuf {
    n.sandbox.path("/etc/kubernetes/pki")
}

/// The stand-in's write log: `<unix ms> <key>` per acknowledged write.
pub fn standin_log(n: &PeerNode) -> PathBuf {
    n.work().join("standin.log")
}

/// The stand-in's start log: one line per start.
fn standin_starts_log(n: &PeerNode) -> PathBuf {
    n.work().join("standin.starts")
}

/// Now, in unix milliseconds (the stand-ins' clock).
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The API-server stand-in: reads its etcd CA and client certificate once, at start (as the API
/// server reads `--etcd-cafile` and `--etcd-certfile`), then writes `/standin/<node>/<start>-<n>`
/// to its local member again and again, logging `<unix ms> <key>` for each acknowledged write.
pub async fn start_standin(n: &PeerNode) {
    let p = pki(n);
    let script = n.work().join("standin.sh");
    let body = format!(
        "#!/bin/sh\nD=$(mktemp -d)\ncp {ca} {crt} {key} $D/\nS=$(date +%s%N)\necho $S >> {starts}\ni=0\n\
         while true; do i=$((i+1)); k=/standin/{node}/$S-$i\n\
         if {etcdctl} --endpoints=https://127.0.0.1:{port} --cacert=$D/ca.crt \
         --cert=$D/apiserver-etcd-client.crt --key=$D/apiserver-etcd-client.key \
         --dial-timeout=1s --command-timeout=1s put $k v >/dev/null 2>&1; \
         then echo \"$(date +%s%3N) $k\" >> {log}; fi; sleep 0.05; done\n",
        ca = p.join("etcd/ca.crt").display(),
        crt = p.join("apiserver-etcd-client.crt").display(),
        key = p.join("apiserver-etcd-client.key").display(),
        starts = standin_starts_log(n).display(),
        node = n.name,
        etcdctl = which("etcdctl").display(),
        port = n.spec.client_port,
        log = standin_log(n).display(),
    );
    std::fs::write(&script, body).unwrap();
    let unit = format!(
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nEnvironment=ETCDCTL_API=3\nExecStart=/bin/sh {}\nRestart=always\nRestartSec=100ms\n\
         KillMode=control-group\nStandardOutput=null\n",
        script.display()
    );
    n.manager.write_unit(STANDIN, &unit).await;
    n.manager.start_unit(STANDIN).await;
}

/// Waits until every node's stand-in has acknowledged a write.
pub async fn wait_writing(c: &Cluster) {
    super::wait_for(
        "every stand-in writing",
        Duration::from_secs(30),
        || async { c.nodes.iter().all(|n| !acked(n).is_empty()).then_some(()) },
    )
    .await;
}

/// How many times the stand-in started.
pub fn standin_starts(n: &PeerNode) -> usize {
    std::fs::read_to_string(standin_starts_log(n))
        .unwrap_or_default()
        .lines()
        .count()
}

/// Every acknowledged write of a stand-in: (unix ms, key).
pub fn acked(n: &PeerNode) -> Vec<(i64, String)> {
    std::fs::read_to_string(standin_log(n))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (t, k) = l.split_once(' ')?;
            Some((t.parse().ok()?, k.to_owned()))
        })
        .collect()
}

/// The longest time without one of `times` within [from, to] (ms).
pub fn longest_gap(mut times: Vec<i64>, from: i64, to: i64) -> i64 {
    times.retain(|t| *t >= from && *t <= to);
    times.sort_unstable();
    let mut prev = from;
    let mut worst = 0;
    for t in times.into_iter().chain([to]) {
        worst = worst.max(t - prev);
        prev = t;
    }
    worst
}

/// What the write judge measured.
pub struct Writes {
    /// Per node: (name, acknowledged writes, longest gap in ms).
    pub per_node: Vec<(String, usize, i64)>,
    /// The longest time no stand-in acknowledged a write (ms).
    pub any_gap: i64,
}

impl std::fmt::Display for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "longest time with no stand-in write {} ms;",
            self.any_gap
        )?;
        for (name, count, gap) in &self.per_node {
            write!(f, " {name}: {count} writes, longest gap {gap} ms;")?;
        }
        Ok(())
    }
}

/// Stops every stand-in (so no write is acknowledged after the keys are listed), then asserts
/// that every acknowledged write is in etcd, and measures the gaps within [from, to] (ms).
pub async fn judge_writes(c: &Cluster, from: i64, to: i64) -> Writes {
    for n in &c.nodes {
        n.manager.systemctl(&["stop", STANDIN]).await;
    }
    let keys = c
        .nodes
        .iter()
        .find_map(|n| {
            let (ok, keys) = n.spec.etcdctl(
                "../apiserver-etcd-client",
                &["get", "/standin/", "--prefix", "--keys-only"],
            );
            ok.then_some(keys)
        })
        .expect("no member lists the stand-ins' keys");
    let stored: std::collections::HashSet<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    let mut all = Vec::new();
    let mut per_node = Vec::new();
    for n in &c.nodes {
        let writes = acked(n);
        for (_, k) in &writes {
            assert!(
                stored.contains(k.as_str()),
                "{}: acknowledged write {k} lost",
                n.name
            );
        }
        let times: Vec<i64> = writes.iter().map(|(t, _)| *t).collect();
        per_node.push((
            n.name.clone(),
            times.len(),
            longest_gap(times.clone(), from, to),
        ));
        all.extend(times);
    }
    Writes {
        per_node,
        any_gap: longest_gap(all, from, to),
    }
}

/// How many times each member's etcd started (its log is appended across starts).
pub fn etcd_starts(n: &PeerNode) -> usize {
    std::fs::read_to_string(n.spec.log_path())
        .unwrap_or_default()
        .matches("etcd Version:")
        .count()
}

/// How many times `starts` grew on each node since `before` (each node's count then).
pub fn starts_since(c: &Cluster, before: &[usize], starts: fn(&PeerNode) -> usize) -> Vec<usize> {
    c.nodes
        .iter()
        .zip(before)
        .map(|(n, b)| starts(n) - b)
        .collect()
}

/// The lines before each etcd start of every member, for a failure message.
pub fn etcd_start_context(c: &Cluster) -> String {
    c.nodes
        .iter()
        .map(|n| {
            let log = std::fs::read_to_string(n.spec.log_path()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let mut out = format!("--- {}\n", n.name);
            for (i, l) in lines.iter().enumerate() {
                if l.contains("etcd Version:") {
                    for p in &lines[i.saturating_sub(3)..=i] {
                        out.push_str(p);
                        out.push('\n');
                    }
                }
            }
            out
        })
        .collect()
}

/// A copy of the CA in `ca_dir` (`ca.crt`, `ca.key`) and a client certificate it signs, in
/// `dir` (`ca.crt`, `client.crt`, `client.key`): the test's own, taken before a rotation.
pub fn old_client(ca_dir: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(ca_dir.join(f), dir.join(f)).unwrap();
    }
    let now = OffsetDateTime::now_utc();
    super::etcd::issue_leaf(
        dir,
        dir,
        "client",
        "old-client",
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    );
}

/// etcdctl at `endpoint` trusting `ca`, presenting the client in `dir`: (success, output).
pub fn etcdctl(endpoint: &str, dir: &Path, ca: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg(format!("--cacert={}", ca.display()))
        .arg(format!("--cert={}", dir.join("client.crt").display()))
        .arg(format!("--key={}", dir.join("client.key").display()))
        .arg("--dial-timeout=2s")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `openssl s_client` that trusts only `ca`, presenting the client in `dir`: whether the
/// handshake verified.
pub fn s_client(port: u16, dir: &Path, ca: &Path) -> bool {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(ca)
        .arg("-cert")
        .arg(dir.join("client.crt"))
        .arg("-key")
        .arg(dir.join("client.key"))
        .args(["-verify_return_error", "-brief"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    out.status.success()
}

/// Every member serves a client that trusts only the old CA and presents an old-CA client
/// certificate (`old`, from [`old_client`]), judged by etcdctl: the cluster is back on the old
/// CA after a rollback (`when` says which, for the failure message).
pub fn assert_old_ca_served(c: &Cluster, old: &Path, when: &str) {
    for n in &c.nodes {
        let ep = format!("https://127.0.0.1:{}", n.spec.client_port);
        let (ok, text) = etcdctl(&ep, old, &old.join("ca.crt"), &["endpoint", "health"]);
        assert!(ok, "{}: the old CA's client refused {when}: {text}", n.name);
    }
}

/// Every member refuses a client that trusts only the old CA and presents an old-CA client
/// certificate (`old`, from [`old_client`]), judged by etcdctl on the client port and by
/// openssl on the client and peer ports; and every member answers its own health check.
pub async fn assert_old_ca_refused(c: &Cluster, old: &Path) {
    for n in &c.nodes {
        let ep = format!("https://127.0.0.1:{}", n.spec.client_port);
        let (ok, text) = etcdctl(&ep, old, &old.join("ca.crt"), &["endpoint", "health"]);
        assert!(!ok, "{}: an old-CA client was served: {text}", n.name);
        assert!(
            !s_client(n.spec.client_port, old, &old.join("ca.crt")),
            "{}: openssl trusting only the old CA completed a handshake on the client port",
            n.name
        );
        assert!(
            !s_client(n.spec.peer_port, old, &old.join("ca.crt")),
            "{}: openssl trusting only the old CA completed a handshake on the peer port",
            n.name
        );
        let (ok, text) = n.health().await;
        assert!(ok, "{}: {text}", n.name);
    }
}

/// Every file under `root` that holds the PEM body of `ca_pem`.
pub fn files_holding(root: &Path, ca_pem: &str) -> Vec<PathBuf> {
    let body: String = ca_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() && std::fs::read_to_string(&p).is_ok_and(|t| t.contains(&body)) {
                found.push(p);
            }
        }
    }
    found
}

// Every stand-in unit sets StartLimitIntervalSec=0: a rotation restarts them several times within
// seconds (zero or tiny dwells), and systemd's default start limit (5 in 10 s) would leave one
// failed for good, which no kubelet does to a static pod.

/// The aggregated API server stand-in: an `openssl s_server` that verifies client certificates
/// against `front-proxy-ca.crt`, read when it starts. With `part_of`, it is restarted whenever
/// that unit is (as the API server's restart makes the aggregated server see the new CA).
pub async fn start_aggregated(n: &PeerNode, port: u16, part_of: Option<&str>) {
    let p = pki(n);
    let unit = format!(
        "{}[Service]\nExecStart={} s_server -quiet -accept 127.0.0.1:{port} -cert {} -key {} \
         -Verify 1 -verify_return_error -CAfile {}\nRestart=always\nRestartSec=100ms\nStandardOutput=null\n",
        part_of.map_or("[Unit]\nStartLimitIntervalSec=0\n".to_owned(), |u| {
            format!("[Unit]\nStartLimitIntervalSec=0\nPartOf={u}\n")
        }),
        which("openssl").display(),
        p.join("apiserver.crt").display(),
        p.join("apiserver.key").display(),
        p.join("front-proxy-ca.crt").display(),
    );
    n.manager.write_unit(AGGREGATED, &unit).await;
    n.manager.start_unit(AGGREGATED).await;
}

/// `openssl s_client` presenting `cert`/`key` to the aggregated stand-in: whether it accepted the
/// client (TLS 1.2, so a refused client certificate fails the handshake itself).
pub fn aggregated_accepts(port: u16, cert: &Path, key: &Path) -> bool {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-tls1_2", "-brief", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    out.status.success()
}

/// Watches the cluster's quorum while a rotation runs: every 300 ms, asks the members in turn
/// for `etcdctl endpoint health` (a linearizable read, which only a quorum with a leader
/// answers) with each node's current files, and remembers the longest time none answered. Its
/// resolution is about a second (the pause, a member's timeout, etcdctl's own start).
pub struct QuorumWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    worst: Arc<Mutex<(i64, i64)>>,
}

impl QuorumWatch {
    /// Starts watching.
    pub fn start(c: &Cluster) -> QuorumWatch {
        let specs: Vec<_> = c.nodes.iter().map(|n| n.spec.clone()).collect();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worst = Arc::new(Mutex::new((0i64, 0i64)));
        let (s, w) = (stop.clone(), worst.clone());
        let task = tokio::task::spawn_blocking(move || {
            let mut last_ok = now_ms();
            let mut round = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                // A different member first each round, so one that is down costs at most one
                // short timeout per round.
                round += 1;
                let ok = (0..specs.len()).any(|i| {
                    let spec = &specs[(round + i) % specs.len()];
                    let args = [
                        "endpoint",
                        "health",
                        "--dial-timeout=1s",
                        "--command-timeout=1s",
                    ];
                    spec.etcdctl("healthcheck-client", &args).0
                });
                let now = now_ms();
                let mut worst = w.lock().unwrap();
                if ok {
                    if now - last_ok > worst.0 {
                        *worst = (now - last_ok, last_ok);
                    }
                    last_ok = now;
                }
                drop(worst);
                std::thread::sleep(Duration::from_millis(300));
            }
            let now = now_ms();
            let mut worst = w.lock().unwrap();
            if now - last_ok > worst.0 {
                *worst = (now - last_ok, last_ok);
            }
        });
        QuorumWatch { stop, task, worst }
    }

    /// Stops watching; the longest time (ms) no member answered a linearizable health check,
    /// and when (unix ms) it began.
    pub async fn finish(self) -> (i64, i64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        *self.worst.lock().unwrap()
    }
}

/// The kubelet stand-in's units: a path unit watching the API server's static pod manifest, and
/// the service it starts, which restarts the API server stand-in — as the kubelet recreates a
/// static pod whose manifest changed (what `[restart] static_pods = "manifest"` relies on).
const KUBELET_PATH: &str = "kubelet-standin.path";

/// `[restart]` for the CA tests: the API server and controller manager are static pods restarted
/// through their manifests (the kubelet stand-in does the rest); etcd is a unit (see
/// [`etcd_as_unit`]).
pub const MANIFEST_RESTARTS: &str = "[restart]\nstatic_pods = \"manifest\"\n";

/// Makes the node's etcd an external one, run as a unit: without its static pod manifest, the
/// daemon restarts `etcd.service` rather than annotating a manifest no kubelet reads.
pub fn etcd_as_unit(n: &PeerNode) {
    let _ = std::fs::remove_file(n.sandbox.path("/etc/kubernetes/manifests/etcd.yaml"));
}

/// Starts the kubelet stand-in (see [`KUBELET_PATH`]) and proves it: a rewrite of the manifest
/// (renamed over it, as certrotd writes) restarts the API server stand-in.
pub async fn start_kubelet_standin(n: &PeerNode) {
    let manifest = n
        .sandbox
        .path("/etc/kubernetes/manifests/kube-apiserver.yaml");
    n.manager
        .write_unit(
            "kubelet-standin.service",
            &format!(
                "[Unit]\nStartLimitIntervalSec=0\n[Service]\nType=oneshot\nEnvironment=DBUS_SESSION_BUS_ADDRESS={bus}\n\
                 ExecStart={systemctl} --user restart --no-block {STANDIN}\n",
                bus = n.manager.bus_address(),
                systemctl = which("systemctl").display(),
            ),
        )
        .await;
    n.manager
        .write_unit(
            KUBELET_PATH,
            &format!(
                "[Path]\nPathChanged={}\nUnit=kubelet-standin.service\n",
                manifest.display()
            ),
        )
        .await;
    n.manager.start_unit(KUBELET_PATH).await;
    let before = standin_starts(n);
    let text = std::fs::read(&manifest).unwrap();
    let tmp = manifest.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &manifest).unwrap();
    super::wait_for(
        "the kubelet stand-in restarting the API server stand-in",
        Duration::from_secs(20),
        || async { (standin_starts(n) > before).then_some(()) },
    )
    .await;
}

/// The API server's and controller manager's health ports stand-in: an `openssl s_server -www`
/// (200 to any GET, so `/livez` answers; a TLS handshake completes) on the API server's serving
/// certificate, restarted with the API server stand-in. Returns its port; the daemon asks it
/// after restarting either component ([`restart_config`]).
pub async fn start_health_standin(n: &PeerNode) -> u16 {
    let p = pki(n);
    let port = super::etcd::free_port();
    n.manager
        .write_unit(
            "apiserver-health.service",
            &format!(
                "[Unit]\nStartLimitIntervalSec=0\nPartOf={STANDIN}\n[Service]\nExecStart={} s_server -quiet -www -accept 127.0.0.1:{port} \
                 -cert {} -key {}\nRestart=always\nRestartSec=100ms\nStandardOutput=null\n",
                which("openssl").display(),
                p.join("apiserver.crt").display(),
                p.join("apiserver.key").display(),
            ),
        )
        .await;
    n.manager.start_unit("apiserver-health.service").await;
    port
}

/// The drop-in the CA tests add to each node's configuration: static pods (the API server, the
/// controller manager) restarted through their manifests, which the kubelet stand-in watches,
/// and their health asked of the health stand-in on `health_port`.
pub fn restart_config(health_port: u16) -> String {
    format!(
        "{MANIFEST_RESTARTS}\n[probe.health]\nkube-apiserver = \"127.0.0.1:{health_port}\"\n\
         kube-controller-manager = \"127.0.0.1:{health_port}\"\n"
    )
}

/// One front-proxy CA for the cluster, as `kubeadm join --control-plane` copies it: the first
/// node's, copied to the others, and every node's `front-proxy-client` re-issued from it (the
/// cluster shares only the etcd CA otherwise). Before any certrotd runs.
pub fn share_front_proxy_ca(c: &Cluster) {
    let first = pki(&c.nodes[0]);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(first.join("front-proxy-ca.crt"), tmp.path().join("ca.crt")).unwrap();
    std::fs::copy(first.join("front-proxy-ca.key"), tmp.path().join("ca.key")).unwrap();
    let now = OffsetDateTime::now_utc();
    for n in &c.nodes {
        for f in ["front-proxy-ca.crt", "front-proxy-ca.key"] {
            std::fs::copy(tmp.path().join(&f[12..]), pki(n).join(f)).unwrap();
        }
        n.reissue(
            &["front-proxy-client"],
            tmp.path(),
            now,
            Duration::from_secs(365 * 86400),
        );
    }
}

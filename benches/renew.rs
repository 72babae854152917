//! Renewing every leaf of a sandbox kubeadm node (10 certificates and 4 kubeconfigs, new RSA-2048
//! keys) with `certrotd renew --type all` (release build, crash-safe: journal, backup, staging,
//! atomic installs), against the openssl command loop (genrsa, req, x509 -req per certificate) and
//! against `cfssl gencert | cfssljson` per certificate, with the share of certrotd's time that is
//! RSA key generation. `make bench` (= `cargo bench`) runs it and prints a table.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use certrotd::pki::encode::{self, KeySpec};
use certrotd::sandbox::{self, SandboxOptions};
use time::OffsetDateTime;

/// Runs of each contender; RSA key generation time varies with the prime search, so the median
/// of several runs is reported.
const RUNS: usize = 5;
const LOOP_RUNS: usize = 3;

/// What each leaf of a kubeadm node looks like to a command-line CA: file, subject, extensions.
const LEAVES: &[(&str, &str, &str)] = &[
    ("apiserver", "/CN=kube-apiserver", "serverAuth"),
    (
        "apiserver-kubelet-client",
        "/O=kubeadm:cluster-admins/CN=kube-apiserver-kubelet-client",
        "clientAuth",
    ),
    ("front-proxy-client", "/CN=front-proxy-client", "clientAuth"),
    ("etcd-server", "/CN=sandbox-cp1", "serverAuth,clientAuth"),
    ("etcd-peer", "/CN=sandbox-cp1", "serverAuth,clientAuth"),
    (
        "etcd-healthcheck-client",
        "/CN=kube-etcd-healthcheck-client",
        "clientAuth",
    ),
    (
        "apiserver-etcd-client",
        "/CN=kube-apiserver-etcd-client",
        "clientAuth",
    ),
    (
        "kubelet-client",
        "/O=system:nodes/CN=system:node:sandbox-cp1",
        "clientAuth",
    ),
    ("kubelet-serving-ca", "/CN=sandbox-cp1-ca@1", "serverAuth"),
    ("kubelet-serving", "/CN=sandbox-cp1@1", "serverAuth"),
    (
        "admin",
        "/O=kubeadm:cluster-admins/CN=kubernetes-admin",
        "clientAuth",
    ),
    (
        "super-admin",
        "/O=system:masters/CN=kubernetes-super-admin",
        "clientAuth",
    ),
    (
        "controller-manager",
        "/CN=system:kube-controller-manager",
        "clientAuth",
    ),
    ("scheduler", "/CN=system:kube-scheduler", "clientAuth"),
];

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// CPU time (user + system) of this process (`own`) or of its waited-for children, from
/// /proc/self/stat: wall time depends on what else the machine runs, CPU time much less.
fn cpu(own: bool) -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime, stime are fields 14 and 15 of stat, cutime and cstime 16 and 17 (1-based, with pid
    // and comm as 1 and 2); clock ticks are 100 per second on Linux.
    let ticks = if own { f[11] + f[12] } else { f[13] + f[14] };
    Duration::from_millis(ticks * 10)
}

/// Runs `f` and returns (wall, CPU of children or self).
fn measure(own: bool, f: impl FnOnce()) -> (Duration, Duration) {
    let (c0, t0) = (cpu(own), Instant::now());
    f();
    (t0.elapsed(), cpu(own).saturating_sub(c0))
}

/// Medians of wall and CPU over `runs`.
fn bench(runs: usize, own: bool, f: impl Fn()) -> (Duration, Duration) {
    let (walls, cpus): (Vec<_>, Vec<_>) = (0..runs).map(|_| measure(own, &f)).unzip();
    (median(walls), median(cpus))
}

fn must(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (make bench installs it)"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp paths")
}

/// Copies a tree (files, modes, symlinks), so each run renews a pristine node.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().expect("file type");
        if ft.is_dir() {
            copy_tree(&src, &dst);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).expect("link"), &dst)
                .expect("symlink");
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

/// A fresh copy of the node to renew.
fn fresh(template: &Path, work: &Path) {
    let _ = std::fs::remove_dir_all(work);
    copy_tree(template, work);
}

/// One `certrotd renew --type all`, end to end (process included).
fn certrotd_once(work: &Path) {
    must(
        Command::new(env!("CARGO_BIN_EXE_certrotd"))
            .args(["renew", "--type", "all", "--root", s(work), "--config"])
            .arg(work.join("certrotd.toml"))
            .env("CERTROTD_LOG", "warn"),
        "certrotd renew",
    );
}

/// The keys certrotd makes for that node (13 RSA-2048, 1 ECDSA P-256 for the kubelet's client
/// certificate) on as many threads as certrotd uses.
fn keygen_once() {
    let mut specs = vec![KeySpec::Rsa(2048); 13];
    specs.push(KeySpec::EcdsaP256);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(spec) = specs.get(i) else { break };
                    encode::generate(*spec).expect("keygen");
                }
            });
        }
    });
}

/// The openssl command loop: genrsa, req, x509 -req for each certificate, signed by ca.
fn openssl_once(ca: &Path, ca_key: &Path, work: &Path) {
    for (name, subj, eku) in LEAVES {
        let p = |ext: &str| work.join(format!("{name}.{ext}"));
        std::fs::write(
            p("ext"),
            format!(
                "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={eku}\n\
                 basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:sandbox-cp1,DNS:localhost,IP:127.0.0.1\n"
            ),
        )
        .expect("write ext");
        must(
            Command::new("openssl").args(["genrsa", "-out", s(&p("key")), "2048"]),
            "openssl genrsa",
        );
        must(
            Command::new("openssl").args([
                "req",
                "-new",
                "-key",
                s(&p("key")),
                "-subj",
                subj,
                "-out",
                s(&p("csr")),
            ]),
            "openssl req",
        );
        must(
            Command::new("openssl").args([
                "x509",
                "-req",
                "-in",
                s(&p("csr")),
                "-CA",
                s(ca),
                "-CAkey",
                s(ca_key),
                "-CAcreateserial",
                "-days",
                "365",
                "-extfile",
                s(&p("ext")),
                "-out",
                s(&p("crt")),
            ]),
            "openssl x509 -req",
        );
    }
}

/// `cfssl gencert` (which makes the key too) piped into `cfssljson -bare` for each certificate.
fn cfssl_once(ca: &Path, ca_key: &Path, work: &Path) {
    let config = work.join("config.json");
    std::fs::write(
        &config,
        r#"{"signing":{"default":{"expiry":"8760h","usages":["digital signature","key encipherment","server auth","client auth"]}}}"#,
    )
    .expect("write config");
    for (name, subj, _) in LEAVES {
        let cn = subj.rsplit("/CN=").next().unwrap_or(name);
        let csr = work.join(format!("{name}-csr.json"));
        std::fs::write(
            &csr,
            format!(
                r#"{{"CN":"{cn}","hosts":["sandbox-cp1","localhost","127.0.0.1"],"key":{{"algo":"rsa","size":2048}}}}"#
            ),
        )
        .expect("write csr");
        let mut gencert = Command::new("cfssl")
            .args([
                "gencert",
                "-ca",
                s(ca),
                "-ca-key",
                s(ca_key),
                "-config",
                s(&config),
                s(&csr),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cfssl (golang-cfssl; make bench installs it)");
        must(
            Command::new("cfssljson")
                .args(["-bare", s(&work.join(name))])
                .stdin(gencert.stdout.take().expect("cfssl stdout")),
            "cfssljson",
        );
        // Reaped, so its CPU time is counted with the children's.
        assert!(
            gencert.wait().expect("wait for cfssl").success(),
            "cfssl gencert"
        );
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let template = tmp.path().join("node");
    let sb = sandbox::write(
        &template,
        &SandboxOptions::default(),
        OffsetDateTime::now_utc(),
    )
    .expect("sandbox");
    let ca = sb.path("/etc/kubernetes/pki/ca.crt");
    let ca_key = sb.path("/etc/kubernetes/pki/ca.key");
    let work = tmp.path().join("work");

    // Warm up the page cache and the binary once.
    fresh(&template, &work);
    certrotd_once(&work);
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary too, and then
    // the one renewal above is the smoke test (a debug build says nothing about speed).
    if !std::env::args().any(|a| a == "--bench") {
        println!("renew bench: smoke run passed (run `cargo bench` for numbers)");
        return;
    }
    // The copy is made outside the measured time; each contender starts from an empty or
    // pristine directory.
    let runs = |n: usize, f: &dyn Fn()| -> (Duration, Duration) {
        let (mut walls, mut cpus) = (Vec::new(), Vec::new());
        for _ in 0..n {
            fresh(&template, &work);
            let (w, c) = measure(false, f);
            walls.push(w);
            cpus.push(c);
        }
        (median(walls), median(cpus))
    };
    let ours = runs(RUNS, &|| certrotd_once(&work));
    let keygen = bench(RUNS, true, keygen_once);
    let loop_dir = tmp.path().join("loop");
    let in_fresh_dir = |f: &dyn Fn(&Path)| {
        let _ = std::fs::remove_dir_all(&loop_dir);
        std::fs::create_dir_all(&loop_dir).expect("mkdir");
        f(&loop_dir)
    };
    let openssl = runs(LOOP_RUNS, &|| {
        in_fresh_dir(&|d| openssl_once(&ca, &ca_key, d))
    });
    let cfssl = runs(LOOP_RUNS, &|| {
        in_fresh_dir(&|d| cfssl_once(&ca, &ca_key, d))
    });

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nrenewing every leaf of a sandbox kubeadm node: 10 certificates + 4 kubeconfigs, new \
         RSA-2048 keys\n(median of {RUNS} runs for certrotd, {LOOP_RUNS} for each command loop; \
         {threads} cores; load average {})\n",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let ratio = |a: Duration, b: Duration| format!("{:.1}x", a.as_secs_f64() / b.as_secs_f64());
    let rows = [
        ("certrotd renew --type all (crash-safe)", ours),
        ("openssl loop: genrsa, req, x509 -req", openssl),
        ("cfssl gencert | cfssljson -bare", cfssl),
    ];
    println!(
        "{:<42} {:>9} {:>9}   {:>11} {:>11}",
        "HOW", "WALL", "CPU", "WALL RATIO", "CPU RATIO"
    );
    for (name, (w, c)) in rows {
        println!(
            "{name:<42} {:>9} {:>9}   {:>11} {:>11}",
            secs(w),
            secs(c),
            ratio(w, ours.0),
            ratio(c, ours.1)
        );
    }
    println!(
        "\nkey generation alone (13 RSA-2048 + 1 ECDSA P-256 on {threads} threads, as certrotd \
         makes them): {} wall, {} CPU = {:.0}% of certrotd's wall time, {:.0}% of its CPU time",
        secs(keygen.0),
        secs(keygen.1),
        100.0 * keygen.0.as_secs_f64() / ours.0.as_secs_f64(),
        100.0 * keygen.1.as_secs_f64() / ours.1.as_secs_f64()
    );
    let target = openssl.0.as_secs_f64() / ours.0.as_secs_f64();
    println!(
        "target: at least 5x faster than the openssl loop (wall): {} ({target:.1}x)",
        if target >= 5.0 { "met" } else { "NOT met" }
    );
}

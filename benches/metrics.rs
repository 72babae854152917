//! Metrics, measured as issue 14 asks:
//!
//! - scrape latency of `/metrics` from a daemon that inventories 10,000 certificates (a CA and
//!   10,000 leaves under `extra_paths`), p50/p99 over 50 scrapes through real TCP; and the
//!   in-process cost of the exporter view (reading the inventory's certificates for their labels:
//!   all of them at start, then only those not seen before at each inventory change) and of
//!   rendering it (done per scrape);
//! - the idle daemon on a kubeadm node with metrics on (HTTP and textfile, one scrape served):
//!   resident memory (target <= 10 MiB) and context switches of all its threads over an idle
//!   window (`CERTROTD_BENCH_IDLE_SECS`, default 30; target: none).
//!
//! Run with `cargo bench --bench metrics`. Exits non-zero when a target is missed.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use certrotd::inventory;
use certrotd::metrics::x509;
use certrotd::root::Root;
use certrotd::sandbox::{self, SandboxOptions};
use time::OffsetDateTime;

#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;

const CERTS: usize = 10_000;
const SCRAPES: usize = 50;

fn main() {
    let bin = env!("CARGO_BIN_EXE_certrotd");
    let tmp = tempfile::tempdir().expect("tempdir");
    let now = OffsetDateTime::now_utc();

    // 1. 10,000 certificates.
    let tree = tmp.path().join("tree");
    let t0 = Instant::now();
    support::write_tree(&tree, CERTS, now);
    eprintln!("(generated {CERTS} certificates in {:.1?})", t0.elapsed());
    let root = Root::new(&tree);
    let extra = vec!["/certs/*.crt".to_string()];
    let inv = inventory::scan(&inventory::ScanRequest {
        root: &root,
        layouts: Some(vec![]),
        extra_paths: &extra,
    });
    assert_eq!(inv.entries.len(), CERTS + 1);
    let view = median(5, || {
        let snap = x509::snapshot(&inv, &tree);
        assert_eq!(snap.series.len(), CERTS + 1);
    });
    let mut cache = x509::Cache::default();
    x509::snapshot_cached(&inv, &tree, &mut cache);
    let view_again = median(5, || {
        let snap = x509::snapshot_cached(&inv, &tree, &mut cache);
        assert_eq!(snap.series.len(), CERTS + 1);
    });
    let snap = x509::snapshot(&inv, &tree);
    let mut size = 0;
    let render = median(9, || {
        let mut out = String::new();
        x509::render(&mut out, &snap, &[], now.unix_timestamp());
        size = out.len();
    });

    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let config = tree.join("certrotd.toml");
    std::fs::write(
        &config,
        format!(
            "root = {:?}\nlayout = \"kubeadm\"\n[inventory]\nextra_paths = [\"/certs/*.crt\"]\n\
             [metrics]\nlisten = \"{addr}\"\n",
            tree.display().to_string()
        ),
    )
    .expect("config");
    let mut daemon = Daemon::spawn(bin, &config);
    let body = wait_for_series(&addr, CERTS + 1);
    let mut times: Vec<Duration> = (0..SCRAPES)
        .map(|_| {
            let t = Instant::now();
            let b = get(&addr).expect("scrape");
            let d = t.elapsed();
            assert!(b.len() > 1000);
            d
        })
        .collect();
    times.sort();
    let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let big_rss = support::rss_kib(daemon.0.id());
    daemon.stop();

    // 2. The idle daemon on a kubeadm node, metrics on.
    let node = tmp.path().join("node");
    let sb = sandbox::write(&node, &SandboxOptions::default(), now).expect("sandbox");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    std::fs::create_dir_all(sb.path("/var/lib/node_exporter/textfile_collector")).expect("mkdir");
    std::fs::create_dir_all(sb.dir.join("conf.d")).expect("mkdir");
    std::fs::write(
        sb.dir.join("conf.d/metrics.toml"),
        format!(
            "[metrics]\nlisten = \"{addr}\"\n\
             textfile = \"/var/lib/node_exporter/textfile_collector/certrotd.prom\"\n"
        ),
    )
    .expect("drop-in");
    let mut idle = Daemon::spawn(bin, &sb.config_path);
    let node_body = wait_for_series(&addr, 1);
    let pid = idle.0.id();
    std::thread::sleep(Duration::from_secs(2));
    let rss = support::rss_kib(pid);
    let idle_secs: u64 = std::env::var("CERTROTD_BENCH_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let before = support::context_switches(pid);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let switches = support::context_switches(pid) - before;
    idle.stop();

    println!("\n| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| exporter view of 10,000 certificates, every one read (as at start) | {view:.1?} | |"
    );
    println!(
        "| the same, certificates already read (an inventory change, cached by DER) | {view_again:.1?} | |"
    );
    println!(
        "| x509 series rendered for 10,000 certificates (per scrape) | {render:.1?} ({:.1} MiB) | |",
        size as f64 / (1024.0 * 1024.0)
    );
    println!(
        "| /metrics scrape, 10,000 certificates ({SCRAPES}, real TCP, {:.1} MiB) | p50 {:.1?}, p99 {:.1?} | |",
        body.len() as f64 / (1024.0 * 1024.0),
        p(0.50),
        p(0.99)
    );
    println!(
        "| daemon resident memory with 10,000 certificates | {:.1} MiB | |",
        big_rss as f64 / 1024.0
    );
    println!(
        "| idle resident memory, kubeadm node, metrics on ({} bytes served) | {:.1} MiB | <= 10 MiB |",
        node_body.len(),
        rss as f64 / 1024.0
    );
    println!("| context switches while idle for {idle_secs} s, metrics on | {switches} | 0 |");
    let mut missed = Vec::new();
    if rss > 10 * 1024 {
        missed.push(format!("RSS {rss} KiB > 10 MiB"));
    }
    if switches > 0 {
        missed.push(format!("{switches} wake-ups while idle"));
    }
    if !missed.is_empty() {
        eprintln!("MISSED: {}", missed.join("; "));
        std::process::exit(1);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// One scrape: the body of `GET /metrics`, `None` when nothing answers.
fn get(addr: &SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(addr, Duration::from_secs(2)).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_owned()))
}

/// Waits until the daemon serves at least `n` `x509_cert_not_after` series.
fn wait_for_series(addr: &SocketAddr, n: usize) -> String {
    let t = Instant::now();
    loop {
        if let Some(b) = get(addr)
            && b.lines()
                .filter(|l| l.starts_with("x509_cert_not_after{"))
                .count()
                >= n
        {
            return b;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no metrics in 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v[v.len() / 2]
}

/// The daemon, stopped (SIGTERM to its own PID) when done or dropped.
struct Daemon(Child);

impl Daemon {
    fn spawn(bin: &str, config: &Path) -> Daemon {
        Daemon(
            Command::new(bin)
                .args(["run", "--config"])
                .arg(config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn certrotd run"),
        )
    }

    fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! The idle daemon, measured as an operator's node would see it (issue 4's targets):
//!
//! - resident memory of an idle `certrotd run` on a kubeadm node: target <= 10 MiB;
//! - wake-ups while idle: context switches of all its threads over a window (60 s by default,
//!   `CERTROTD_BENCH_IDLE_SECS` to change), target: none (no watchdog outside systemd);
//! - `certrotd status` round trip through the real socket, p50/p99 (target p99 < 1 ms);
//! - a certificate replaced on disk, seen in `certrotd status`: target < 50 ms.
//!
//! Run with `make bench` (or `cargo bench --bench daemon`). Exits non-zero when a target is missed.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use certrotd::control::client;
use certrotd::control::proto::{Request, Response, StatusReport};
use certrotd::sandbox::{self, SandboxOptions};
use time::OffsetDateTime;

#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;

fn main() {
    let bin = env!("CARGO_BIN_EXE_certrotd");
    let tmp = tempfile::tempdir().expect("tempdir");
    let now = OffsetDateTime::now_utc();
    let sb = sandbox::write(tmp.path(), &SandboxOptions::default(), now).expect("sandbox");
    // A second apiserver certificate, issued now, to swap in later (as `kubeadm certs renew`).
    let spare = tmp.path().join("spare");
    sandbox::write(
        &spare,
        &SandboxOptions::default(),
        now + time::Duration::hours(1),
    )
    .expect("spare sandbox");
    let socket = sb.dir.join("run/certrotd/certrotd.sock");
    let mut daemon = Daemon(
        Command::new(bin)
            .args(["run", "--config"])
            .arg(&sb.config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn certrotd run"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let first = rt.block_on(wait_for_status(&socket, Duration::from_secs(30)));
    let pid = daemon.0.id();

    // Idle: let start-up settle, then measure.
    std::thread::sleep(Duration::from_secs(2));
    let rss_kib = support::rss_kib(pid);
    let idle_secs: u64 = std::env::var("CERTROTD_BENCH_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let before = support::context_switches(pid);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let switches = support::context_switches(pid) - before;

    // Status round trips through the socket, as `certrotd status` makes them.
    let mut times: Vec<Duration> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..2000 {
            let t = Instant::now();
            let r = client::request(&socket, Request::Status, Duration::from_secs(5)).await;
            v.push(t.elapsed());
            assert!(matches!(r, Ok(Response::Status(_))));
        }
        v
    });
    times.sort();
    let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];

    // A certificate replaced on disk, seen in status.
    let old_after = not_after(&first, "apiserver");
    let target = sb.dir.join("etc/kubernetes/pki/apiserver.crt");
    let staged = sb.dir.join("etc/kubernetes/pki/.apiserver.crt.bench");
    std::fs::copy(spare.join("etc/kubernetes/pki/apiserver.crt"), &staged).expect("copy");
    let t0 = Instant::now();
    std::fs::rename(&staged, &target).expect("rename");
    let seen = rt.block_on(async {
        loop {
            let s = status(&socket).await;
            if not_after(&s, "apiserver") != old_after {
                break t0.elapsed();
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "change never seen");
        }
    });
    daemon.stop();

    println!("\n| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| idle resident memory | {:.1} MiB | <= 10 MiB |",
        rss_kib as f64 / 1024.0
    );
    println!("| context switches while idle for {idle_secs} s | {switches} | 0 |");
    println!(
        "| status round trip (2000, real socket) | p50 {:.0?}, p99 {:.0?} | p99 < 1 ms |",
        p(0.50),
        p(0.99)
    );
    println!("| certificate replaced → seen in status | {seen:.1?} | < 50 ms |");
    let mut missed = Vec::new();
    if rss_kib > 10 * 1024 {
        missed.push(format!("RSS {rss_kib} KiB > 10 MiB"));
    }
    if switches > 0 {
        missed.push(format!("{switches} wake-ups while idle"));
    }
    if p(0.99) >= Duration::from_millis(1) {
        missed.push(format!("status p99 {:?} >= 1 ms", p(0.99)));
    }
    if seen >= Duration::from_millis(50) {
        missed.push(format!("change seen after {seen:?} >= 50 ms"));
    }
    if !missed.is_empty() {
        eprintln!("MISSED: {}", missed.join("; "));
        std::process::exit(1);
    }
}

/// Stops the daemon when dropped, so a failed assertion does not leave it running.
struct Daemon(Child);

impl Daemon {
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

async fn status(socket: &Path) -> StatusReport {
    match client::request(socket, Request::Status, Duration::from_secs(5)).await {
        Ok(Response::Status(s)) => s,
        other => panic!("status: {other:?}"),
    }
}

async fn wait_for_status(socket: &Path, within: Duration) -> StatusReport {
    let t = Instant::now();
    loop {
        if let Ok(Response::Status(s)) =
            client::request(socket, Request::Status, Duration::from_secs(1)).await
            && !s.certificates.is_empty()
        {
            return s;
        }
        assert!(
            t.elapsed() < within,
            "the daemon did not answer in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn not_after(s: &StatusReport, name: &str) -> Option<String> {
    s.certificates
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.not_after.clone())
}

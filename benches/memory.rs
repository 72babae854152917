//! The idle daemon's resident memory after rotations (issue 10): a node's daemon spends most of
//! its life idle after a rotation, so that is where the 10 MiB target applies.
//!
//! A sandbox node's daemon (`certrotd run`, release build) is started, asked for `ROTATIONS`
//! (`CERTROTD_BENCH_ROTATIONS`, default 5) rotations of every leaf (`certrotd rotate --type all`:
//! 10 certificates and 4 kubeconfigs, new RSA-2048 keys, each), one after the other, and its
//! VmRSS is read after start and after the rotations, once it has idled for a few seconds.
//!
//! Run with `make bench` (or `cargo bench --bench memory`). Exits non-zero when a target is missed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use certrotd::control::client;
use certrotd::control::proto::{HistoryState, Request, Response};
use certrotd::sandbox::{self, SandboxOptions};
use time::OffsetDateTime;

#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;

const TARGET_KIB: u64 = 10 * 1024;

fn main() {
    let bin = env!("CARGO_BIN_EXE_certrotd");
    let rotations: usize = std::env::var("CERTROTD_BENCH_ROTATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let tmp = tempfile::tempdir().expect("tempdir");
    let sb = sandbox::write(
        tmp.path(),
        &SandboxOptions::default(),
        OffsetDateTime::now_utc(),
    )
    .expect("sandbox");
    let socket = sb.dir.join("run/certrotd/certrotd.sock");
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&sb.config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn certrotd run");
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(wait_answering(&socket));
    std::thread::sleep(Duration::from_secs(2));
    let at_start = support::rss_kib(pid);

    let mut took = Vec::new();
    for i in 0..rotations {
        let t = Instant::now();
        rt.block_on(rotate_all(&socket, i + 1));
        took.push(t.elapsed());
    }
    // Idle again: the blocking pool's threads end after their keep-alive (10 s).
    std::thread::sleep(Duration::from_secs(12));
    let after = support::rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();

    println!("| what | measured | target |");
    println!("|---|---|---|");
    println!(
        "| idle resident memory after start | {:.1} MiB | <= 10 MiB |",
        at_start as f64 / 1024.0
    );
    println!(
        "| idle resident memory after {rotations} rotations of every leaf | {:.1} MiB | <= 10 MiB |",
        after as f64 / 1024.0
    );
    println!(
        "| one rotation of every leaf (mean, sandbox, no restarts) | {:.0} ms | - |",
        took.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / took.len().max(1) as f64
    );
    let missed: Vec<String> = [("after start", at_start), ("after rotations", after)]
        .into_iter()
        .filter(|(_, kib)| *kib > TARGET_KIB)
        .map(|(when, kib)| format!("RSS {when} {kib} KiB > 10 MiB"))
        .collect();
    if !missed.is_empty() {
        eprintln!("targets missed: {}", missed.join("; "));
        std::process::exit(1);
    }
}

async fn wait_answering(socket: &Path) {
    let t = Instant::now();
    while !matches!(
        client::request(socket, Request::Status, Duration::from_secs(1)).await,
        Ok(Response::Status(s)) if !s.certificates.is_empty()
    ) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the daemon did not answer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asks for a rotation of every leaf and waits until history shows `n` successful ones.
async fn rotate_all(socket: &Path, n: usize) {
    let asked = Request::Rotate {
        types: vec!["all".into()],
        certs: Vec::new(),
    };
    match client::request(socket, asked, Duration::from_secs(30)).await {
        Ok(Response::Rotate { .. }) => {}
        other => panic!("rotate: {other:?}"),
    }
    let t = Instant::now();
    loop {
        if let Ok(Response::History(records)) = client::request(
            socket,
            Request::History { limit: None },
            Duration::from_secs(5),
        )
        .await
        {
            let ok = records
                .iter()
                .filter(|r| r.state == HistoryState::Success)
                .count();
            assert!(
                !records.iter().any(|r| r.state == HistoryState::Failed),
                "a rotation failed: {records:?}"
            );
            if ok >= n {
                return;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "rotation {n} did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

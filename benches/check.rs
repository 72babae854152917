//! `certrotd check` against what operators use today: a shell loop of
//! `openssl x509 -noout -enddate -in F` over the certificate files.
//!
//! 1. One full kubeadm control-plane node (a sandbox): `certrotd check` vs the loop.
//!    Target: at least 50 times faster.
//! 2. A tree of 10,000 certificates (RSA-2048 CA, as kubeadm makes): inventoried in under 300 ms.
//!
//! Run with `make bench` (or `cargo bench --bench check`). Prints a table; exits non-zero when a
//! target is missed, so a regression is loud.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use certrotd::inventory;
use certrotd::root::Root;
use certrotd::sandbox::{self, SandboxOptions};
use time::OffsetDateTime;

#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;

const RUNS: usize = 15;

fn main() {
    let bin = env!("CARGO_BIN_EXE_certrotd");
    let tmp = tempfile::tempdir().expect("tempdir");
    // CERTROTD_BENCH_DIR keeps the generated trees for profiling.
    let base = std::env::var_os("CERTROTD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let now = OffsetDateTime::now_utc();

    // 1. A kubeadm node.
    let node = base.join("node");
    let _ = std::fs::remove_dir_all(&node);
    let sb = sandbox::write(&node, &SandboxOptions::default(), now).expect("sandbox");
    let files = cert_files(&node);
    let certrotd_node = median(RUNS, || {
        run(Command::new(bin)
            .args(["check", "-o", "json", "--config"])
            .arg(&sb.config_path))
    });
    let loop_node = median(RUNS, || openssl_loop(&files));
    let speedup = loop_node.as_secs_f64() / certrotd_node.as_secs_f64();

    // 2. 10,000 certificates.
    let tree = base.join("tree");
    let _ = std::fs::remove_dir_all(&tree);
    let n = 10_000;
    let t0 = Instant::now();
    support::write_tree(&tree, n, now);
    eprintln!("(generated {n} certificates in {:.1?})", t0.elapsed());
    let config = tree.join("certrotd.toml");
    std::fs::write(
        &config,
        format!(
            "root = {:?}\nlayout = \"kubeadm\"\n[inventory]\nextra_paths = [\"/certs/*.crt\"]\n",
            tree.display().to_string()
        ),
    )
    .expect("config");
    let root = Root::new(&tree);
    let extra = vec!["/certs/*.crt".to_string()];
    let in_process = median(RUNS, || {
        let inv = inventory::scan(&inventory::ScanRequest {
            root: &root,
            layouts: Some(vec![]),
            extra_paths: &extra,
        });
        assert_eq!(inv.entries.len(), n + 1);
    });
    let end_to_end = median(RUNS, || {
        run(Command::new(bin)
            .args(["check", "-o", "json", "--config"])
            .arg(&config))
    });
    // The loop over 10,000 files takes minutes: time a sample and scale it.
    let sample: Vec<PathBuf> = cert_files(&tree).into_iter().take(500).collect();
    let loop_sample = median(3, || openssl_loop(&sample));
    let loop_tree = loop_sample.mul_f64(n as f64 / sample.len() as f64);

    println!("\n| case | certrotd check | openssl loop | speed-up | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| kubeadm node ({} files) | {:.1?} | {:.1?} | {speedup:.0}x | >= 50x |",
        files.len(),
        certrotd_node,
        loop_node
    );
    println!(
        "| 10,000 certificates, end to end (process) | {:.1?} | {:.1?} (scaled from 500) | {:.0}x | < 300 ms |",
        end_to_end,
        loop_tree,
        loop_tree.as_secs_f64() / end_to_end.as_secs_f64()
    );
    println!("| 10,000 certificates, inventory in process | {in_process:.1?} | | | < 300 ms |");
    let mut failed = false;
    if speedup < 50.0 {
        eprintln!("MISSED: node speed-up {speedup:.1}x < 50x");
        failed = true;
    }
    if end_to_end > Duration::from_millis(300) {
        eprintln!("MISSED: 10,000 certificates took {end_to_end:?} > 300 ms");
        failed = true;
    }
    if failed {
        std::process::exit(1);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    f(); // warm the page cache
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

/// The shell loop operators run: one openssl process per file.
fn openssl_loop(files: &[PathBuf]) {
    let script = "for f in \"$@\"; do openssl x509 -noout -enddate -in \"$f\" >/dev/null; done";
    let st = Command::new("sh")
        .args(["-c", script, "sh"])
        .args(files)
        .status()
        .expect("sh");
    assert!(st.success());
}

/// Every certificate file (what a loop can feed to openssl: not the kubeconfigs), with the
/// kubelet's absolute symlink resolved inside the tree as the node would resolve it.
fn cert_files(dir: &Path) -> Vec<PathBuf> {
    let root = Root::new(dir);
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("crt" | "pem")) {
                let node = root.node_path(&p).expect("inside");
                out.push(root.resolve(node).expect("resolve"));
            }
        }
    }
    out.sort();
    out
}

//! `certrotd status` round trip: an in-process client asks a real server on a Unix socket, whose
//! handler returns a realistic status of a kubeadm control-plane node (30 certificates).
//!
//! 10,000 requests, each a new connection as `certrotd status` makes one: p50 and p99.
//! Target: p99 under 1 ms. Also shown, without a target: requests on one kept connection, and
//! the whole `certrotd status -o json` process (which adds process start-up).
//!
//! Run with `make bench` (or `cargo bench --bench status`). Prints a table; exits non-zero when
//! the target is missed.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certrotd::control::client;
use certrotd::control::frame;
use certrotd::control::proto::{
    CertStatus, DaemonInfo, HistoryRecord, LeaseStatus, Request, Response, StatusReport,
};
use certrotd::control::server::{self, Handler, HandlerError, HandlerFuture};

const REQUESTS: usize = 10_000;
const WARM_UP: usize = 500;
const CLI_RUNS: usize = 200;
const TARGET_P99: Duration = Duration::from_millis(1);

/// Answers status from a report built once, as the daemon answers from its current state.
struct Canned(StatusReport);

impl Handler for Canned {
    fn status(&self) -> HandlerFuture<'_, StatusReport> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
    fn rotate(&self, _: Vec<String>, _: Vec<String>) -> HandlerFuture<'_, String> {
        Box::pin(async { Err(HandlerError::bad_request("not in a benchmark")) })
    }
    fn history(&self, _: Option<usize>) -> HandlerFuture<'_, Vec<HistoryRecord>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn reload(&self) -> HandlerFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// The certificates of a kubeadm control-plane node, padded with extra ones to 30.
fn node_status() -> StatusReport {
    let kubeadm: &[(&str, &str, &str)] = &[
        ("ca", "/etc/kubernetes/pki/ca.crt", ""),
        (
            "apiserver",
            "/etc/kubernetes/pki/apiserver.crt",
            "kube-apiserver",
        ),
        (
            "apiserver-kubelet-client",
            "/etc/kubernetes/pki/apiserver-kubelet-client.crt",
            "kube-apiserver",
        ),
        (
            "apiserver-etcd-client",
            "/etc/kubernetes/pki/apiserver-etcd-client.crt",
            "kube-apiserver",
        ),
        (
            "front-proxy-ca",
            "/etc/kubernetes/pki/front-proxy-ca.crt",
            "",
        ),
        (
            "front-proxy-client",
            "/etc/kubernetes/pki/front-proxy-client.crt",
            "kube-apiserver",
        ),
        ("etcd-ca", "/etc/kubernetes/pki/etcd/ca.crt", ""),
        ("etcd-server", "/etc/kubernetes/pki/etcd/server.crt", "etcd"),
        ("etcd-peer", "/etc/kubernetes/pki/etcd/peer.crt", "etcd"),
        (
            "etcd-healthcheck-client",
            "/etc/kubernetes/pki/etcd/healthcheck-client.crt",
            "etcd",
        ),
        ("admin.conf", "/etc/kubernetes/admin.conf", ""),
        ("super-admin.conf", "/etc/kubernetes/super-admin.conf", ""),
        (
            "controller-manager.conf",
            "/etc/kubernetes/controller-manager.conf",
            "kube-controller-manager",
        ),
        (
            "scheduler.conf",
            "/etc/kubernetes/scheduler.conf",
            "kube-scheduler",
        ),
        ("kubelet.conf", "/etc/kubernetes/kubelet.conf", "kubelet"),
        (
            "kubelet-client-current",
            "/var/lib/kubelet/pki/kubelet-client-current.pem",
            "kubelet",
        ),
        ("kubelet", "/var/lib/kubelet/pki/kubelet.crt", "kubelet"),
    ];
    let mut certificates: Vec<CertStatus> = kubeadm
        .iter()
        .enumerate()
        .map(|(i, (name, path, consumer))| {
            let ca = name.ends_with("ca");
            let days = if ca { 3640 } else { 300 + i as i64 };
            CertStatus {
                name: (*name).to_owned(),
                path: (*path).to_owned(),
                kind: if ca { "ca" } else { "leaf" }.to_owned(),
                status: "ok".to_owned(),
                not_after: Some("2027-03-14T09:26:53Z".to_owned()),
                residual_seconds: Some(days * 86_400),
                next_action: if ca { "notify" } else { "renew" }.to_owned(),
                next_action_at: Some("2027-02-12T09:26:53Z".to_owned()),
                consumers: if consumer.is_empty() {
                    vec![]
                } else {
                    vec![(*consumer).to_owned()]
                },
                problems: vec![],
            }
        })
        .collect();
    for i in certificates.len()..30 {
        certificates.push(CertStatus {
            name: format!("ingress-{i}.crt"),
            path: format!("/etc/ssl/private/ingress-{i}.crt"),
            kind: "leaf".to_owned(),
            status: "notify".to_owned(),
            not_after: Some("2026-07-01T00:00:00Z".to_owned()),
            residual_seconds: Some(45 * 86_400),
            next_action: "renew".to_owned(),
            next_action_at: Some("2026-06-01T00:00:00Z".to_owned()),
            consumers: vec![],
            problems: vec!["signed by a CA whose key is not on this node".to_owned()],
        });
    }
    StatusReport {
        node: "cp1.example.internal".to_owned(),
        generated_at: "2026-05-16T12:00:00Z".to_owned(),
        daemon: DaemonInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: "2026-05-01T08:00:00Z".to_owned(),
            pid: 1234,
            config_sources: vec!["/etc/certrotd/certrotd.toml".to_owned()],
        },
        certificates,
        rotation: None,
        lease: LeaseStatus {
            backend: "etcd".to_owned(),
            held: false,
            holder: Some("cp2.example.internal".to_owned()),
            since: Some("2026-05-16T11:58:00Z".to_owned()),
            detail: None,
        },
        notices: vec!["13 certificates expire within 60d".to_owned()],
        summary: "30 certificates ok; next renewal ingress-17.crt in 16d".to_owned(),
        retry: None,
    }
}

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        max: samples[samples.len() - 1],
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("certrotd.sock");
    let report = node_status();
    let frame = frame::encode(&Response::Status(report.clone()), frame::MAX_RESPONSE_BYTES)
        .expect("encode");

    let (new_conn, kept_conn, stop, serving) = runtime.block_on(async {
        let listener = server::bind(&socket, 0o660, None).expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server::serve(listener, Arc::new(Canned(report)), async {
            let _ = stopped.await;
        }));
        for _ in 0..WARM_UP {
            ask(&socket).await;
        }
        let mut new_conn = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let t = Instant::now();
            ask(&socket).await;
            new_conn.push(t.elapsed());
        }
        let mut stream = tokio::net::UnixStream::connect(&socket)
            .await
            .expect("connect");
        let mut kept_conn = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let t = Instant::now();
            frame::write_request(&mut stream, &Request::Status, client::DEFAULT_TIMEOUT)
                .await
                .expect("write");
            let response = frame::read_response(&mut stream, client::DEFAULT_TIMEOUT)
                .await
                .expect("read");
            kept_conn.push(t.elapsed());
            assert!(matches!(response, Response::Status(_)));
        }
        drop(stream);
        (new_conn, kept_conn, stop, serving)
    });

    // The whole command, process start-up included (served by the same server, kept running).
    let bin = env!("CARGO_BIN_EXE_certrotd");
    let mut cli = Vec::with_capacity(CLI_RUNS);
    for _ in 0..CLI_RUNS {
        let t = Instant::now();
        let out = Command::new(bin)
            .args(["status", "-o", "json", "--socket"])
            .arg(&socket)
            .output()
            .expect("run certrotd status");
        cli.push(t.elapsed());
        assert!(out.status.success(), "{out:?}");
    }
    let _ = stop.send(());
    runtime.block_on(serving).expect("serve ends");

    let new_conn = stats(new_conn);
    let kept = stats(kept_conn);
    let cli = stats(cli);
    println!(
        "\nstatus of 30 certificates: {} bytes per answer\n",
        frame.len()
    );
    println!("| case | requests | p50 | p99 | max | target |");
    println!("|---|---|---|---|---|---|");
    let row = |case: &str, n: usize, s: &Stats, target: &str| {
        println!(
            "| {case} | {n} | {:.0?} | {:.0?} | {:.0?} | {target} |",
            s.p50, s.p99, s.max
        );
    };
    row(
        "round trip, new connection each (certrotd status)",
        REQUESTS,
        &new_conn,
        "p99 < 1ms",
    );
    row("round trip on one kept connection", REQUESTS, &kept, "-");
    row("`certrotd status -o json` process", CLI_RUNS, &cli, "-");
    if new_conn.p99 >= TARGET_P99 {
        eprintln!(
            "\nMISSED: p99 {:?} is not under {:?}",
            new_conn.p99, TARGET_P99
        );
        std::process::exit(1);
    }
}

/// One `certrotd status` exchange, as the command makes it.
async fn ask(socket: &Path) {
    match client::request(socket, Request::Status, client::DEFAULT_TIMEOUT).await {
        Ok(Response::Status(report)) => assert_eq!(report.certificates.len(), 30),
        other => panic!("{other:?}"),
    }
}

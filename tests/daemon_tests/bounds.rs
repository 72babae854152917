//! Bounds on what the outside can make certrotd spend: `status --cluster` reads etcd (a real
//! one) at most once per cache window however many clients ask, and a duration in the
//! configuration too long for date arithmetic is a named configuration error, not a panic.

use crate::support;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use certrotd::config::{LeaseBackend, LeaseSettings};
use certrotd::control::client;
use certrotd::control::proto::{DaemonInfo, LeaseStatus, Request, Response};
use certrotd::control::server;
use certrotd::daemon::handler::{DaemonHandler, Shared, VIEW_MAX_AGE};
use certrotd::daemon::peers::SharedLease;
use certrotd::daemon::status::Report;
use certrotd::history::History;
use certrotd::lease::Lease;
use certrotd::lease::credentials;
use certrotd::lease::etcd::EtcdLease;
use certrotd::root::Root;
use certrotd::sandbox::{self, SandboxOptions};
use support::etcd::EtcdCluster;
use time::OffsetDateTime;

const T: Duration = Duration::from_secs(20);

fn empty_status() -> Report {
    Report {
        node: "bounds-node".to_owned(),
        generated_at: time::macros::datetime!(2026-06-01 10:00:00 UTC),
        daemon: DaemonInfo {
            version: "0".to_owned(),
            started_at: "2026-06-01T09:00:00Z".to_owned(),
            pid: 1,
            config_sources: vec![],
        },
        certificates: vec![],
        rotation: None,
        lease: LeaseStatus {
            backend: "etcd".to_owned(),
            held: false,
            holder: None,
            since: None,
            detail: None,
        },
        notices: vec![],
        summary: String::new(),
        retry: None,
    }
}

/// `n` clients asking for the cluster view at once; each must get it.
async fn ask_cluster(socket: &std::path::Path, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let socket = socket.to_path_buf();
            tokio::spawn(async move { client::request(&socket, Request::Cluster, T).await })
        })
        .collect();
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Response::Cluster(view) => assert_eq!(view.cluster, "bounds"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn cluster_views_are_read_from_etcd_once_per_window_whatever_the_number_of_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = SandboxOptions {
        node_name: "bounds-node".to_owned(),
        key: certrotd::pki::encode::KeySpec::EcdsaP256,
        ..SandboxOptions::default()
    };
    let node = sandbox::write(&tmp.path().join("node"), &opts, OffsetDateTime::now_utc()).unwrap();
    let cluster = EtcdCluster::start(
        &node.path("/etc/kubernetes/pki/etcd"),
        &tmp.path().join("work"),
        1,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let settings = LeaseSettings {
            backend: LeaseBackend::Etcd,
            endpoints: cluster.endpoints(),
            cluster: "bounds".to_owned(),
            ..LeaseSettings::default()
        };
        let creds =
            credentials::load(&settings, &Root::new(&node.dir), OffsetDateTime::now_utc()).unwrap();
        let etcd = Arc::new(
            EtcdLease::connect(&settings, "bounds-node", creds)
                .await
                .unwrap(),
        );
        // What one read of the view costs, measured rather than assumed.
        let before = etcd.requests();
        etcd.view().await.unwrap();
        let per_view = etcd.requests() - before;
        assert!(per_view >= 1, "a view reads etcd");

        let lease = SharedLease::default();
        lease.set(Some(etcd.clone() as Arc<dyn Lease>));
        let (commands, _inbox) = tokio::sync::mpsc::channel(1);
        let shared = Shared {
            status: RwLock::new(empty_status()),
            progress: Arc::new(Mutex::new(None)),
            history: RwLock::new(Arc::new(History::new(tmp.path().join("history.jsonl")))),
            commands,
            lease,
            ca: Default::default(),
        };
        let socket = tmp.path().join("certrotd.sock");
        let listener = server::bind(&socket, 0o600, None).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server::serve(
            listener,
            Arc::new(DaemonHandler(Arc::new(shared))),
            async {
                let _ = stopped.await;
            },
        ));

        // Fifty clients at once, then fifty more within the window: one read in all.
        let before = etcd.requests();
        ask_cluster(&socket, 50).await;
        ask_cluster(&socket, 50).await;
        let first_window = etcd.requests() - before;
        assert_eq!(first_window, per_view, "100 clients, one read");

        // Once the window has passed, the next client reads again: once.
        tokio::time::sleep(VIEW_MAX_AGE + Duration::from_millis(200)).await;
        let before = etcd.requests();
        ask_cluster(&socket, 50).await;
        assert_eq!(
            etcd.requests() - before,
            per_view,
            "a fresh window, one read"
        );

        let _ = stop.send(());
        tokio::time::timeout(T, serving).await.unwrap().unwrap();
    });
}

#[test]
fn a_validity_of_8000_years_is_a_config_error_naming_the_key_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("certrotd.toml");
    std::fs::write(&config, "[renew]\nvalidity = \"8000y\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_certrotd"))
        .args(["config", "check", "--root"])
        .arg(tmp.path())
        .arg("--config")
        .arg(&config)
        .env("CERTROTD_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2:12", config.display())),
        "the file, line and column: {stderr}"
    );
    assert!(
        stderr.contains("renew.validity: invalid duration \"8000y\""),
        "{stderr}"
    );

    // The longest accepted validity passes.
    std::fs::write(&config, "[renew]\nvalidity = \"100y\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_certrotd"))
        .args(["config", "check", "--root"])
        .arg(tmp.path())
        .arg("--config")
        .arg(&config)
        .env("CERTROTD_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

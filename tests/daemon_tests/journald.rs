//! journald, proved (issue 14): the daemon runs as `certrotd.service` under a real systemd
//! manager whose units log to a real `systemd-journald` (tests/support/systemd.rs), and
//! `journalctl -D` (journald's own reader, independent of the code under test) proves what an
//! operator relies on:
//!
//! - every event kind arrives with its `CERTROTD_EVENT`, `MESSAGE_ID` and identifying fields
//!   (`CERT_NAME`, `ROTATION_ID`, `COMPONENT`, …), and with its priority: notices are a warning
//!   inside `notify_before`, an error inside `emergency_before` and critical (2) once expired;
//!   a failure retried near expiry is an error;
//! - an event about several certificates has one `CERT_NAME` value per certificate, so
//!   `journalctl CERT_NAME=apiserver` finds it;
//! - the expired etcd certificates are announced before the recovery renews them;
//! - the unit filter (`-u certrotd`, i.e. `_SYSTEMD_UNIT`) selects the daemon's entries and no
//!   other unit's; `ROTATION_ID=`, `MESSAGE_ID=` and `-p crit` select what the README says;
//! - no key material reaches the journal: no "PRIVATE KEY", and none of the bytes of any key the
//!   node held before or after its rotations, as PEM, DER, hex or a debug-printed byte list.
//!
//! The node: a sandbox made 362 days ago (every leaf expires in 3 days: an emergency), with its
//! etcd server and peer certificates already expired (a recovery), `front-proxy-client` inside
//! `renew_before` but outside the maintenance windows (deferred), and a kubelet stand-in that the
//! rotation restarts over D-Bus. The second rotation is made to fail once (a failpoint), so the
//! failure and its retry are in the journal too. Run with `cargo test --features failpoints
//! --test journald`.

use crate::support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use certrotd::events::ids;
use certrotd::inventory::Inventory;
use certrotd::issuer::local::LocalCa;
use certrotd::issuer::{IssueRequest, Issuer as _};
use certrotd::pki::encode::{self, KeySpec};
use certrotd::pki::key::PrivateKey;
use certrotd::pki::layout::Layout;
use certrotd::pki::pem;
use certrotd::sandbox::{self, Sandbox, SandboxOptions};
use serde_json::Value;
use support::systemd::{JOURNALD_UNIT, UserManager};
use support::which;
use time::OffsetDateTime;
use tokio::time::Instant;

/// Generous for two shared cores; every wait ends as soon as its condition holds.
const TIMEOUT: Duration = Duration::from_secs(60);
const UNIT: &str = "certrotd.service";
const KUBELET_UNIT: &str = "kubelet.service";
const NODE: &str = "journald-cp1";
/// The recovery renews without the lease; the second rotation (the emergency one) fails once,
/// before anything is installed, and is retried.
const FAILPOINT: &str = "journal-planned:2:error";

#[cfg(not(feature = "failpoints"))]
fn needs_failpoints() {
    panic!("this test arms certrotd's failpoints: run `cargo test --features failpoints`");
}

#[cfg(feature = "failpoints")]
fn needs_failpoints() {}

// ---------------------------------------------------------------------------------------------
// The node
// ---------------------------------------------------------------------------------------------

struct Node {
    _tmp: tempfile::TempDir,
    sandbox: Sandbox,
}

impl Node {
    /// A sandbox node whose year-long leaves were issued 362 days ago.
    fn new() -> Node {
        let tmp = tempfile::Builder::new()
            .prefix("certrotd-journald-")
            .tempdir()
            .unwrap();
        let sandbox = sandbox::write(
            &tmp.path().join("node"),
            &SandboxOptions {
                node_name: NODE.to_owned(),
                key: KeySpec::EcdsaP256,
                ..SandboxOptions::default()
            },
            OffsetDateTime::now_utc() - time::Duration::days(362),
        )
        .unwrap();
        Node { _tmp: tmp, sandbox }
    }

    fn inventory(&self) -> Inventory {
        support::scan(&self.sandbox.dir, Some(vec![Layout::Kubeadm]), &[])
    }

    /// Re-issues `name` from its CA, same key and attributes, valid from `from` for `validity`.
    fn reissue(&self, name: &str, from: OffsetDateTime, validity: Duration) {
        let inv = self.inventory();
        let e = inv.get(name).unwrap();
        let ca_entry = inv.get(e.signer.as_ref().unwrap()).unwrap();
        let ca_key = ca_entry.key_path.as_ref().unwrap();
        let blocks = pem::blocks(ca_key, &std::fs::read(ca_key).unwrap()).unwrap();
        let ca = LocalCa::new(
            &ca_entry.name,
            ca_entry.cert.clone().unwrap(),
            PrivateKey::from_blocks(&blocks).unwrap(),
        )
        .unwrap();
        let old = e.cert.as_ref().unwrap();
        let issued = ca
            .issue(&IssueRequest {
                template: old,
                spki: &old.spki_der,
                validity,
                now: from,
            })
            .unwrap();
        std::fs::write(&e.path, encode::cert_pem(&issued.der)).unwrap();
    }

    fn drop_in(&self, name: &str, text: &str) {
        let dir = self.sandbox.dir.join("conf.d");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// Every private key file under the node root (the state directory's backups included).
    fn keys(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        collect_keys(&self.sandbox.dir, &mut out);
        out
    }
}

fn collect_keys(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            collect_keys(&e.path(), out);
        } else if ft.is_file() {
            let bytes = std::fs::read(e.path()).unwrap();
            if contains(&bytes, b"PRIVATE KEY-----") {
                out.insert(e.path(), bytes);
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// What would betray a key in a log: each base64 line of its PEM, its DER, the DER in hex and as
/// a debug-printed byte list (the first 16 bytes of each).
fn fragments(pem_bytes: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem_bytes);
    let mut out = Vec::new();
    let mut body = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with("-----") {
            if line.starts_with("-----END") && !body.is_empty() {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(&body)
                    .unwrap();
                // The private scalar sits a few bytes in; these cover it in each encoding.
                for chunk in der.chunks(16).filter(|c| c.len() == 16) {
                    out.push(chunk.to_vec());
                    out.push(hex::encode(chunk).into_bytes());
                    let list = format!("{chunk:?}");
                    out.push(list.trim_end_matches(']').as_bytes().to_vec());
                }
                body.clear();
            }
            continue;
        }
        if line.len() >= 16 {
            out.push(line.as_bytes().to_vec());
        }
        body.push_str(line);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The journal, as journalctl gives it
// ---------------------------------------------------------------------------------------------

type Entry = serde_json::Map<String, Value>;

/// `journalctl -o json ARGS`, one entry a line.
fn entries(m: &UserManager, args: &[&str]) -> Vec<Entry> {
    let mut all = vec!["-q", "-o", "json"];
    all.extend_from_slice(args);
    m.journalctl(&all)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Entry>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Every value of a field (journald keeps repeated fields; journalctl gives them as an array).
fn values(e: &Entry, field: &str) -> Vec<String> {
    match e.get(field) {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .unwrap_or_else(|| panic!("{field}: {v}"))
                    .to_owned()
            })
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(v) => panic!("{field} is not text: {v}"),
    }
}

/// The single value of a field.
fn one(e: &Entry, field: &str) -> String {
    let v = values(e, field);
    assert_eq!(v.len(), 1, "{field} in {e:#?}");
    v.into_iter().next().unwrap()
}

fn kind(e: &Entry) -> String {
    values(e, "CERTROTD_EVENT").join("|")
}

fn of_kind<'a>(all: &'a [Entry], k: &str) -> Vec<&'a Entry> {
    all.iter().filter(|e| kind(e) == k).collect()
}

/// The daemon's events, in journal order.
fn events(m: &UserManager) -> Vec<Entry> {
    entries(m, &["-u", UNIT])
        .into_iter()
        .filter(|e| e.contains_key("CERTROTD_EVENT"))
        .collect()
}

/// Polls the journal for at most `within`: whether `done` came to hold.
async fn poll_journal(m: &UserManager, within: Duration, done: impl Fn(&[Entry]) -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done(&events(m)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Polls the journal until `done` holds, or panics with what it holds.
async fn wait_journal(m: &UserManager, what: &str, done: impl Fn(&[Entry]) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if done(&events(m)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited {TIMEOUT:?} for {what}; the journal:\n{}\nthe manager:\n{}",
            m.journalctl(&["-o", "short-precise"]),
            m.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The components
// ---------------------------------------------------------------------------------------------

/// A kubelet stand-in as `kubelet.service`: `openssl s_server` serving the node's kubelet
/// serving certificate (read again at each restart), its health port answered `200` by this
/// process. Returns (TLS port, health port).
async fn start_kubelet(m: &UserManager, node: &Node) -> (u16, u16) {
    let tls = support::etcd::free_port();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
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
    m.write_unit(KUBELET_UNIT, &unit).await;
    m.start_unit(KUBELET_UNIT).await;
    (tls, health)
}

/// A weekday that is neither today nor tomorrow (UTC): a window on it is closed now.
fn closed_window(now: OffsetDateTime) -> String {
    let day = (now + time::Duration::days(3))
        .weekday()
        .number_days_from_monday() as usize;
    let name = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][day];
    format!("{name} 00:00-01:00")
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_holds_every_event_with_its_fields_and_priority_and_no_key() {
    needs_failpoints();
    let began = Instant::now();
    let now = OffsetDateTime::now_utc();
    let node = Node::new();
    // The cluster was down: this member's etcd server and peer certificates expired yesterday.
    for name in ["etcd-server", "etcd-peer"] {
        node.reissue(
            name,
            now - time::Duration::days(2),
            Duration::from_secs(86_400),
        );
    }
    // Inside renew_before (30 days) and notify_before, not emergency_before: deferred while the
    // windows are closed.
    node.reissue("front-proxy-client", now, Duration::from_secs(20 * 86_400));
    let keys_before = node.keys();

    let m = UserManager::start_with_journald().await;
    let (tls, health) = start_kubelet(&m, &node).await;
    node.drop_in(
        "50-journald-test.toml",
        &format!(
            "[policy]\nmaintenance_windows = [\"{window}\"]\n\n\
             [issuer]\nretry_initial = \"1s\"\nretry_max = \"2s\"\n\n\
             [restart]\nstatic_pods = \"none\"\nunits = true\ndbus_address = \"{bus}\"\njob_timeout = \"30s\"\n\n\
             [probe]\ntimeout = \"30s\"\n\n\
             [probe.endpoints]\nkubelet = [{{ host = \"127.0.0.1\", port = {tls}, serves = \"kubelet-serving\" }}]\n\n\
             [probe.health]\nkubelet = \"127.0.0.1:{health}\"\n",
            window = closed_window(now),
            bus = m.bus_address(),
        ),
    );
    m.write_unit(
        UNIT,
        &format!(
            "[Service]\nType=notify\nExecStart={} run --config {}\n\
             ExecReload=/bin/kill -HUP $MAINPID\nTimeoutStopSec=60s\n\
             StandardOutput=journal\nStandardError=journal\n\
             Environment=CERTROTD_LOG=info\nEnvironment=CERTROTD_FAILPOINT={FAILPOINT}\n",
            env!("CARGO_BIN_EXE_certrotd"),
            node.sandbox.config_path.display()
        ),
    )
    .await;
    m.start_unit(UNIT).await;

    // The recovery, the failed emergency rotation, its retry: every certificate it names
    // rotated, and the front proxy's deferred.
    wait_journal(&m, "the retried rotation to finish", |ev| {
        let started = of_kind(ev, "rotation-started");
        let rotated: BTreeSet<String> = of_kind(ev, "rotated")
            .iter()
            .map(|e| one(e, "CERT_NAME"))
            .collect();
        started.len() >= 3
            && started
                .iter()
                .all(|s| values(s, "CERT_NAME").iter().all(|n| rotated.contains(n)))
            && !of_kind(ev, "deferred").is_empty()
    })
    .await;

    // Someone else renews the front proxy's certificate; the configuration is reloaded, then a
    // broken one refused.
    // The daemon re-reads the node after each rotation; a replacement landing just before that
    // re-read is already in the inventory when its file-change event arrives, so nothing is new
    // to announce. Replace it again (a new serial each time) until the idle daemon sees one.
    let mut announced = false;
    for attempt in 1..=5 {
        node.reissue("front-proxy-client", now, Duration::from_secs(365 * 86_400));
        if poll_journal(&m, Duration::from_secs(12), |ev| {
            !of_kind(ev, "changed").is_empty()
        })
        .await
        {
            announced = true;
            break;
        }
        eprintln!("journald test: replacement {attempt} of front-proxy-client not announced yet");
    }
    if !announced {
        wait_journal(&m, "the changed certificate", |ev| {
            !of_kind(ev, "changed").is_empty()
        })
        .await;
    }
    m.systemctl(&["reload", UNIT]).await;
    wait_journal(&m, "the reload", |ev| !of_kind(ev, "reloaded").is_empty()).await;
    node.drop_in("90-broken.toml", "[policy]\nrenew_before = \"banana\"\n");
    m.systemctl(&["reload", UNIT]).await;
    wait_journal(&m, "the refused reload", |ev| {
        !of_kind(ev, "reload-refused").is_empty()
    })
    .await;
    m.systemctl(&["stop", UNIT]).await;
    let keys_after = node.keys();

    let ev = events(&m);
    let whole = entries(&m, &[]);
    check_fields(&ev);
    check_priorities(&ev);
    check_order(&ev);
    check_filters(&m, &ev, &whole);
    check_no_key_material(&m, &keys_before, &keys_after);
    eprintln!(
        "journald test: {} certrotd events, {} journal entries, {:?} in all",
        ev.len(),
        whole.len(),
        began.elapsed()
    );
}

/// Every event kind, with its MESSAGE_ID and fields.
fn check_fields(ev: &[Entry]) {
    let kinds: [(&str, &str, &[&str]); 12] = [
        ("started", ids::STARTED, &["CERTIFICATES"]),
        (
            "notice",
            ids::NOTICE,
            &[
                "CERT_NAME",
                "CERT_PATH",
                "NOT_AFTER",
                "THRESHOLD",
                "SEVERITY",
            ],
        ),
        ("recovery", ids::RECOVERY, &["ROTATION_ID", "CERT_NAME"]),
        (
            "rotation-started",
            ids::ROTATION_STARTED,
            &["ROTATION_ID", "CERT_NAME"],
        ),
        (
            "rotation-failed",
            ids::ROTATION_FAILED,
            &["ROTATION_ID", "CERT_NAME"],
        ),
        (
            "retrying",
            ids::RETRYING,
            &["CERT_NAME", "ATTEMPTS", "NEXT_RETRY", "SEVERITY"],
        ),
        ("restarted", ids::RESTARTED, &["ROTATION_ID", "COMPONENT"]),
        (
            "rotated",
            ids::ROTATED,
            &["ROTATION_ID", "CERT_NAME", "CERT_PATH", "NOT_AFTER"],
        ),
        ("deferred", ids::DEFERRED, &["CERT_NAME"]),
        (
            "changed",
            ids::CHANGED,
            &["CERT_NAME", "CERT_PATH", "NOT_AFTER"],
        ),
        ("reloaded", ids::RELOADED, &[]),
        ("reload-refused", ids::RELOADED, &[]),
    ];
    for (k, id, fields) in kinds {
        let of = of_kind(ev, k);
        assert!(!of.is_empty(), "no {k} event in {ev:#?}");
        for e in of {
            assert_eq!(one(e, "MESSAGE_ID"), id, "{k}: {e:#?}");
            assert_eq!(one(e, "NODE"), NODE, "{k}: {e:#?}");
            assert_eq!(one(e, "SYSLOG_IDENTIFIER"), "certrotd", "{k}");
            assert_eq!(one(e, "_SYSTEMD_UNIT"), UNIT, "{k}");
            assert_eq!(one(e, "_TRANSPORT"), "journal", "{k}: the native protocol");
            assert!(!one(e, "MESSAGE").is_empty(), "{k}");
            for f in fields {
                assert!(!values(e, f).is_empty(), "{k} without {f}: {e:#?}");
            }
            for path in values(e, "CERT_PATH") {
                assert!(Path::new(&path).is_file(), "{k}: CERT_PATH {path}");
            }
            for t in values(e, "NOT_AFTER") {
                OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|err| panic!("{k}: NOT_AFTER {t}: {err}"));
            }
        }
    }
    // One CERT_NAME per certificate, never a joined list.
    for e in ev {
        for n in values(e, "CERT_NAME") {
            assert!(
                !n.contains(',') && !n.contains(' '),
                "{}: CERT_NAME {n:?}",
                kind(e)
            );
        }
    }
    let recovery = of_kind(ev, "recovery");
    let names: BTreeSet<String> = values(recovery[0], "CERT_NAME").into_iter().collect();
    for etcd in ["etcd-server", "etcd-peer", "etcd-healthcheck-client"] {
        assert!(names.contains(etcd), "recovery names {names:?}");
    }
    let restarted = of_kind(ev, "restarted");
    assert_eq!(one(restarted[0], "COMPONENT"), "kubelet");
    let failed = of_kind(ev, "rotation-failed");
    let failed_names = values(failed[0], "CERT_NAME");
    assert!(failed_names.len() > 1, "{failed_names:?}");
    assert!(failed_names.contains(&"apiserver".to_owned()));
    let retrying = of_kind(ev, "retrying");
    let retried = values(retrying[0], "CERT_NAME");
    assert!(
        retried.len() > 1 && retried.contains(&"apiserver".to_owned()),
        "{retried:?}"
    );
    assert_eq!(one(retrying[0], "ATTEMPTS"), "1");
    let deferred = of_kind(ev, "deferred");
    assert_eq!(values(deferred[0], "CERT_NAME"), ["front-proxy-client"]);
    assert_eq!(
        one(of_kind(ev, "changed")[0], "CERT_NAME"),
        "front-proxy-client"
    );
}

/// journald priorities: info events 5 (notice), errors 3, notices by the threshold crossed
/// (notify 4, emergency 3, expired 2), the retried emergency 3.
fn check_priorities(ev: &[Entry]) {
    for e in ev {
        let k = kind(e);
        let want = match k.as_str() {
            "notice" => match one(e, "THRESHOLD").as_str() {
                "notify" => ("4", "warning"),
                "emergency" => ("3", "error"),
                "expired" => ("2", "critical"),
                t => panic!("THRESHOLD={t}"),
            },
            "retrying" => ("3", "error"),
            "rotation-failed" | "reload-refused" | "recovery" => ("3", ""),
            _ => ("5", ""),
        };
        assert_eq!(one(e, "PRIORITY"), want.0, "{k}: {e:#?}");
        if !want.1.is_empty() {
            assert_eq!(one(e, "SEVERITY"), want.1, "{k}: {e:#?}");
        }
    }
    let thresholds: BTreeSet<String> = of_kind(ev, "notice")
        .iter()
        .map(|e| one(e, "THRESHOLD"))
        .collect();
    assert_eq!(
        thresholds,
        ["emergency", "expired", "notify"].map(String::from).into(),
        "every threshold is crossed on this node"
    );
    // The expired ones are exactly the etcd certificates.
    let expired: BTreeSet<String> = of_kind(ev, "notice")
        .iter()
        .filter(|e| one(e, "THRESHOLD") == "expired")
        .map(|e| one(e, "CERT_NAME"))
        .collect();
    assert_eq!(
        expired,
        ["etcd-peer", "etcd-server"].map(String::from).into()
    );
}

/// The expired certificates are announced before the recovery renews them; a rotation's events
/// come in the order it ran.
fn check_order(ev: &[Entry]) {
    let at = |k: &str, pred: &dyn Fn(&Entry) -> bool| {
        ev.iter()
            .position(|e| kind(e) == k && pred(e))
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let recovery = at("recovery", &|_| true);
    for name in ["etcd-server", "etcd-peer"] {
        let notice = at("notice", &|e| {
            one(e, "CERT_NAME") == name && one(e, "THRESHOLD") == "expired"
        });
        assert!(
            notice < recovery,
            "{name} announced after the recovery began"
        );
    }
    let id = one(&ev[recovery], "ROTATION_ID");
    let started = at("rotation-started", &|e| one(e, "ROTATION_ID") == id);
    let rotated = at("rotated", &|e| one(e, "ROTATION_ID") == id);
    assert!(recovery < started && started < rotated);
    let failed = at("rotation-failed", &|_| true);
    let retrying = at("retrying", &|_| true);
    let restarted = at("restarted", &|_| true);
    assert!(failed < retrying && retrying < restarted);
}

/// What an operator types: the unit filter, ROTATION_ID=, CERT_NAME=, MESSAGE_ID=, -p crit.
fn check_filters(m: &UserManager, ev: &[Entry], whole: &[Entry]) {
    // Every certrotd event in the whole journal is the unit's; the unit holds no other's.
    let all_events = whole.iter().filter(|e| e.contains_key("CERTROTD_EVENT"));
    assert_eq!(all_events.count(), ev.len());
    let unit = entries(m, &["-u", "certrotd"]);
    assert!(!unit.is_empty());
    for e in &unit {
        assert_eq!(one(e, "_SYSTEMD_UNIT"), UNIT, "{e:#?}");
    }
    for other in [KUBELET_UNIT, JOURNALD_UNIT] {
        assert!(
            entries(m, &["-u", other])
                .iter()
                .all(|e| !e.contains_key("CERTROTD_EVENT")),
            "{other}"
        );
    }
    // The README's example: the unit and one event kind.
    let rotated = entries(m, &["-u", "certrotd", "CERTROTD_EVENT=rotated"]);
    assert_eq!(rotated.len(), of_kind(ev, "rotated").len());
    // The last rotation's events, by its id.
    let last = of_kind(ev, "rotation-started").last().copied().unwrap();
    let id = one(last, "ROTATION_ID");
    let by_id: Vec<Entry> = entries(m, &[&format!("ROTATION_ID={id}")])
        .into_iter()
        .filter(|e| e.contains_key("CERTROTD_EVENT"))
        .collect();
    let kinds: BTreeSet<String> = by_id.iter().map(kind).collect();
    assert_eq!(
        kinds,
        ["restarted", "rotated", "rotation-started"]
            .map(String::from)
            .into(),
        "{by_id:#?}"
    );
    assert!(by_id.iter().all(|e| one(e, "ROTATION_ID") == id));
    // The README's way to the last rotation's id.
    let last_id = m.journalctl(&[
        "-u",
        "certrotd",
        "-n",
        "1",
        "-o",
        "cat",
        "--output-fields=ROTATION_ID",
        "CERTROTD_EVENT=rotation-started",
    ]);
    assert_eq!(last_id.trim(), id);
    // Everything about one certificate, whether it was alone in the event or not.
    let about = entries(m, &["-u", "certrotd", "CERT_NAME=apiserver"]);
    let kinds: BTreeSet<String> = about.iter().map(kind).collect();
    for k in [
        "notice",
        "rotation-started",
        "rotation-failed",
        "retrying",
        "rotated",
    ] {
        assert!(
            kinds.contains(k),
            "CERT_NAME=apiserver lacks {k}: {kinds:?}"
        );
    }
    assert!(
        about
            .iter()
            .all(|e| values(e, "CERT_NAME").contains(&"apiserver".to_owned()))
    );
    // By MESSAGE_ID, across versions.
    let by_message = entries(m, &[&format!("MESSAGE_ID={}", ids::ROTATED)]);
    assert_eq!(by_message.len(), of_kind(ev, "rotated").len());
    // The critical ones: the expired certificates.
    let crit = entries(m, &["-u", "certrotd", "-p", "crit"]);
    assert!(!crit.is_empty());
    for e in &crit {
        assert_eq!(one(e, "THRESHOLD"), "expired", "{e:#?}");
    }
}

/// No key reaches the journal, in any encoding: journalctl's export of every field of every
/// entry holds no fragment of any key, and neither it nor the journal files say "PRIVATE KEY".
fn check_no_key_material(
    m: &UserManager,
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
) {
    assert!(before.len() >= 10, "{:?}", before.keys());
    assert!(
        after.values().any(|k| !before.values().any(|b| b == k)),
        "the rotations wrote new keys"
    );
    let export = std::process::Command::new("journalctl")
        .arg("-D")
        .arg(m.journal_dir())
        .args(["-o", "export", "--no-pager"])
        .output()
        .unwrap()
        .stdout;
    assert!(export.len() > 10_000, "{}", export.len());
    assert!(!contains(&export, b"PRIVATE KEY"), "journalctl -o export");
    let mut files = Vec::new();
    collect_files(&m.journal_dir(), &mut files);
    assert!(!files.is_empty());
    for f in files {
        let raw = std::fs::read(&f).unwrap();
        assert!(!contains(&raw, b"PRIVATE KEY"), "{}", f.display());
    }
    // Every fragment is at least PREFIX long: look each PREFIX-long window of the export up
    // among the fragments' beginnings, then compare the whole fragment.
    const PREFIX: usize = 16;
    let mut by_prefix: HashMap<&[u8], Vec<(&Path, Vec<u8>)>> = HashMap::new();
    let all: Vec<(&Path, Vec<u8>)> = before
        .iter()
        .chain(after)
        .flat_map(|(p, k)| fragments(k).into_iter().map(move |f| (p.as_path(), f)))
        .collect();
    assert!(all.len() > 100, "{}", all.len());
    for (path, frag) in &all {
        by_prefix
            .entry(&frag[..PREFIX])
            .or_default()
            .push((path, frag.clone()));
    }
    let found = |hay: &[u8]| -> Option<String> {
        for (at, w) in hay.windows(PREFIX).enumerate() {
            for (path, frag) in by_prefix.get(w).into_iter().flatten() {
                if hay[at..].starts_with(frag) {
                    return Some(format!(
                        "part of {}: {:?}",
                        path.display(),
                        String::from_utf8_lossy(frag)
                    ));
                }
            }
        }
        None
    };
    // The search can fail: a key's own PEM is found.
    let (_, some_key) = after.iter().next().unwrap();
    assert!(found(some_key).is_some());
    if let Some(what) = found(&export) {
        panic!("the journal holds {what}");
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            collect_files(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

//! Metrics judged by Prometheus itself: `promtool check metrics` on what the daemon serves and
//! writes for node_exporter, `promtool check rules` and `promtool test rules` on the shipped
//! alerts, and a real Prometheus server (Debian's `prometheus`, on loopback) scraping the daemon of
//! a sandbox node, whose HTTP API must return `x509_cert_not_after` for every certificate
//! `certrotd check -o json` lists, with the same expiry. The exporter-compatible labels are
//! compared, label by label, with values derived independently (openssl, the kubeconfig's YAML)
//! for the real kubeadm fixtures.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::etcd::free_port;

use base64::Engine as _;
use certrotd::pki::encode::KeySpec;
use certrotd::pki::layout::Layout;
use certrotd::sandbox::{self, SandboxOptions};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Long enough for two shared cores; every wait ends as soon as its condition holds.
const TIMEOUT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A plain HTTP/1.0 GET: (status, body), `None` when nothing answers.
fn http_get(addr: SocketAddr, path_and_query: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "waited {TIMEOUT:?} for {what} in vain"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs promtool with `stdin`; (success, stdout + stderr).
fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(support::which("promtool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; make test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `promtool check metrics` must accept `text` without a single lint complaint.
fn assert_promtool_accepts(what: &str, text: &str) {
    let (ok, out) = promtool(&["check", "metrics"], text);
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics on {what}:\n{out}"
    );
}

/// A process started by the test, killed (by its own PID) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The decimal form of a hex serial, computed here without x509-parser (the code under test).
fn hex_to_decimal(hex: &str) -> String {
    let mut digits: Vec<u32> = vec![0]; // little-endian base-10
    for c in hex.trim().chars() {
        let mut carry = c.to_digit(16).expect("hex digit");
        for d in digits.iter_mut() {
            let v = *d * 16 + carry;
            *d = v % 10;
            carry = v / 10;
        }
        while carry > 0 {
            digits.push(carry % 10);
            carry /= 10;
        }
    }
    while digits.len() > 1 && digits.last() == Some(&0) {
        digits.pop();
    }
    digits
        .iter()
        .rev()
        .map(|d| char::from_digit(*d, 10).unwrap())
        .collect()
}

/// Parses the samples of `family` out of a text exposition: (labels, value).
fn samples(text: &str, family: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => {
                let (l, v) = parse_labels(r);
                (l, v)
            }
            None if rest.starts_with(' ') => (BTreeMap::new(), rest),
            None => continue,
        };
        out.push((labels, value.trim().parse().expect("sample value")));
    }
    out
}

/// Parses `a="x",b="y"} rest` into the labels and `rest`.
fn parse_labels(mut s: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return (labels, rest);
        }
        s = s.strip_prefix(',').unwrap_or(s);
        let (name, rest) = s.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next().expect("closing quote");
            match c {
                '\\' => match chars.next().expect("escape").1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(name.to_owned(), value);
        s = &rest[end + 1..];
    }
}

// ---------------------------------------------------------------------------------------------
// The shipped alert rules
// ---------------------------------------------------------------------------------------------

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn promtool_checks_the_shipped_rules_and_their_unit_tests_pass() {
    let rules = repo("packaging/prometheus/certrotd-alerts.yaml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], "");
    assert!(ok, "promtool check rules:\n{out}");
    assert!(out.contains("SUCCESS: 11 rules found"), "{out}");
    // The leaf and daemon alerts of issue 14, and the two CA-rotation alerts of issue 13.
    let tests = repo("tests/prometheus/certrotd-alerts.test.yaml");
    let (ok, out) = promtool(&["test", "rules", tests.to_str().unwrap()], "");
    assert!(ok, "promtool test rules:\n{out}");

    // Every shipped alert has unit tests, firing and not firing, and names a certrotd command.
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let tests_text = std::fs::read_to_string(&tests).unwrap();
    let alerts: Vec<&str> = rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 11, "{alerts:?}");
    for a in &alerts {
        let cases: Vec<&str> = tests_text
            .split("alertname: ")
            .skip(1)
            .filter(|c| c.starts_with(&format!("{a}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{a}: no test where it does not fire"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_labels:")),
            "{a}: no test where it fires"
        );
    }
    let runbooks = rules_text
        .lines()
        .filter(|l| l.trim_start().starts_with("runbook:"))
        .filter(|l| l.contains("certrotd "))
        .count();
    assert_eq!(
        runbooks,
        alerts.len(),
        "every alert's runbook names a certrotd command"
    );
}

// ---------------------------------------------------------------------------------------------
// The exporter's labels, for the real kubeadm fixtures
// ---------------------------------------------------------------------------------------------

/// The first value of each DN field as openssl prints them (`-nameopt multiline`).
fn dn_fields(text: &str, section: &str) -> BTreeMap<&'static str, String> {
    const FIELDS: [(&str, &str); 6] = [
        ("countryName", "C"),
        ("stateOrProvinceName", "ST"),
        ("localityName", "L"),
        ("organizationName", "O"),
        ("organizationalUnitName", "OU"),
        ("commonName", "CN"),
    ];
    let mut out: BTreeMap<&'static str, String> =
        FIELDS.iter().map(|(_, k)| (*k, String::new())).collect();
    let mut inside = false;
    for line in text.lines() {
        if !line.starts_with(' ') {
            inside = line.starts_with(&format!("{section}="));
            continue;
        }
        if !inside {
            continue;
        }
        let Some((name, value)) = line.trim().split_once('=') else {
            continue;
        };
        if let Some((_, key)) = FIELDS.iter().find(|(n, _)| *n == name.trim()) {
            let slot = out.get_mut(key).unwrap();
            if slot.is_empty() {
                *slot = value.trim().to_owned();
            }
        }
    }
    out
}

/// The labels x509-certificate-exporter gives one certificate (its documented schema), derived
/// with openssl, and its NotAfter.
fn exporter_series(
    der: &[u8],
    filepath: &str,
    embedded: (&str, &str),
) -> (BTreeMap<String, String>, f64) {
    let text = support::openssl(
        &[
            "x509",
            "-inform",
            "DER",
            "-noout",
            "-serial",
            "-subject",
            "-issuer",
            "-nameopt",
            "multiline,utf8,-esc_msb",
        ],
        Some(der),
    );
    let view = support::openssl_view(der);
    let serial_hex = text
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .unwrap();
    let mut labels = BTreeMap::new();
    let file = Path::new(filepath).file_name().unwrap().to_str().unwrap();
    labels.insert("filename".to_owned(), file.to_owned());
    labels.insert("filepath".to_owned(), filepath.to_owned());
    labels.insert("embedded_kind".to_owned(), embedded.0.to_owned());
    labels.insert("embedded_key".to_owned(), embedded.1.to_owned());
    labels.insert("serial_number".to_owned(), hex_to_decimal(serial_hex));
    for (section, prefix) in [("issuer", "issuer"), ("subject", "subject")] {
        for (k, v) in dn_fields(&text, section) {
            labels.insert(format!("{prefix}_{k}"), v);
        }
    }
    (labels, view.not_after as f64)
}

fn pem_ders(text: &str) -> Vec<Vec<u8>> {
    text.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|b| {
            let body: String = b
                .split("-----END CERTIFICATE-----")
                .next()
                .unwrap()
                .split_whitespace()
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap()
        })
        .collect()
}

/// What the exporter would expose for a kubeadm /etc/kubernetes set (the files of its kubeadm
/// example: every .crt under pki, every kubeconfig's cluster CA and user certificate), and how many
/// files it could not read.
fn expected_for_fixture(set: &Path) -> (BTreeSet<String>, usize) {
    let mut series = BTreeSet::new();
    let mut unreadable = 0;
    for dir in ["pki", "pki/etcd"] {
        for e in std::fs::read_dir(set.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "crt") {
                let host = format!(
                    "/etc/kubernetes/{dir}/{}",
                    p.file_name().unwrap().to_str().unwrap()
                );
                for der in pem_ders(&std::fs::read_to_string(&p).unwrap()) {
                    series.insert(format!("{:?}", exporter_series(&der, &host, ("", ""))));
                }
            }
        }
    }
    for e in std::fs::read_dir(set).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "conf") {
            continue;
        }
        let host = format!(
            "/etc/kubernetes/{}",
            p.file_name().unwrap().to_str().unwrap()
        );
        let kc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let b64 = |v: &serde_yaml_ng::Value| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap(),
            )
            .unwrap()
        };
        for c in kc["clusters"].as_sequence().unwrap() {
            let name = c["name"].as_str().unwrap();
            if let Some(data) = c["cluster"].get("certificate-authority-data") {
                for der in pem_ders(&b64(data)) {
                    let s = exporter_series(&der, &host, ("cluster", name));
                    series.insert(format!("{s:?}"));
                }
            }
        }
        for u in kc["users"].as_sequence().unwrap() {
            let name = u["name"].as_str().unwrap();
            if let Some(data) = u["user"].get("client-certificate-data") {
                for der in pem_ders(&b64(data)) {
                    series.insert(format!(
                        "{:?}",
                        exporter_series(&der, &host, ("user", name))
                    ));
                }
            } else if u["user"].get("client-certificate").is_some() {
                // A path on a node this fixture does not have (the kubelet's rotated file).
                unreadable += 1;
            }
        }
    }
    (series, unreadable)
}

#[test]
fn the_kubeadm_fixtures_get_the_exporters_labels_label_by_label() {
    for set in ["kubeadm-maxxmoney", "kubeadm-zeta"] {
        let root = support::kubeadm_fixture_root(set);
        let inv = support::scan(root.path(), Some(vec![Layout::Kubeadm]), &[]);
        let snap = certrotd::metrics::x509::snapshot(&inv, root.path());
        let mut text = String::new();
        certrotd::metrics::x509::render(&mut text, &snap, &[], 0);
        assert_promtool_accepts(set, &text);
        let got: BTreeSet<String> = samples(&text, "x509_cert_not_after")
            .into_iter()
            .map(|s| format!("{s:?}"))
            .collect();
        let (want, unreadable) = expected_for_fixture(&support::fixtures().join(set));
        assert!(
            want.len() >= 18,
            "{set}: the fixture has {} certificates",
            want.len()
        );
        let missing: Vec<_> = want.difference(&got).collect();
        let extra: Vec<_> = got.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{set}: series differ from the exporter's\nmissing: {missing:#?}\nextra: {extra:#?}"
        );
        assert_eq!(snap.errors.len(), unreadable, "{set}: unreadable files");
    }
    // And a few values spelled out, as an operator reads them in the fixture's SOURCE.txt.
    let root = support::kubeadm_fixture_root("kubeadm-maxxmoney");
    let inv = support::scan(root.path(), Some(vec![Layout::Kubeadm]), &[]);
    let mut text = String::new();
    let snap = certrotd::metrics::x509::snapshot(&inv, root.path());
    certrotd::metrics::x509::render(&mut text, &snap, &[], 0);
    let all = samples(&text, "x509_cert_not_after");
    let admin = all
        .iter()
        .find(|(l, _)| l["filename"] == "admin.conf" && l["embedded_kind"] == "user")
        .expect("admin.conf's user certificate");
    assert_eq!(admin.0["embedded_key"], "kubernetes-admin");
    assert_eq!(admin.0["filepath"], "/etc/kubernetes/admin.conf");
    assert_eq!(admin.0["subject_O"], "system:masters");
    assert_eq!(admin.0["subject_CN"], "kubernetes-admin");
    assert_eq!(admin.0["issuer_CN"], "kubernetes");
    assert_eq!(admin.0["subject_C"], "");
    let ca = all
        .iter()
        .find(|(l, _)| l["filename"] == "admin.conf" && l["embedded_kind"] == "cluster")
        .expect("admin.conf's cluster CA");
    assert_eq!(ca.0["embedded_key"], "kubernetes");
    assert_eq!(ca.0["subject_CN"], "kubernetes");
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus scraping the daemon of a sandbox node
// ---------------------------------------------------------------------------------------------

#[test]
fn a_real_prometheus_scrapes_every_certificate_check_lists_with_its_expiry() {
    let tmp = tempfile::Builder::new()
        .prefix("certrotd-metrics-")
        .tempdir()
        .unwrap();
    let node = sandbox::write(
        &tmp.path().join("node"),
        &SandboxOptions {
            key: KeySpec::EcdsaP256,
            ..SandboxOptions::default()
        },
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let port = free_port();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let textfile_dir = node.path("/var/lib/node_exporter/textfile_collector");
    std::fs::create_dir_all(&textfile_dir).unwrap();
    let conf_d = node.dir.join("conf.d");
    std::fs::create_dir_all(&conf_d).unwrap();
    std::fs::write(
        conf_d.join("metrics.toml"),
        format!(
            "[metrics]\nlisten = \"{metrics_addr}\"\n\
             textfile = \"/var/lib/node_exporter/textfile_collector/certrotd.prom\"\n"
        ),
    )
    .unwrap();
    let log = tmp.path().join("certrotd.log");
    let out = std::fs::File::create(&log).unwrap();
    let _daemon = Process(
        Command::new(env!("CARGO_BIN_EXE_certrotd"))
            .args(["run", "--config"])
            .arg(&node.config_path)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );

    // What the daemon serves and writes, judged by promtool.
    let body = wait_until("the daemon's /metrics", || {
        http_get(metrics_addr, "/metrics")
            .filter(|(s, b)| *s == 200 && b.contains("certrotd_mode{mode=\"idle\"} 1"))
    })
    .1;
    assert_promtool_accepts("/metrics", &body);
    let textfile = textfile_dir.join("certrotd.prom");
    let written = wait_until("the textfile", || std::fs::read_to_string(&textfile).ok());
    assert_promtool_accepts("the textfile", &written);
    assert_eq!(
        std::fs::read_dir(&textfile_dir).unwrap().count(),
        1,
        "no temp file left beside the textfile"
    );
    // Anything but /metrics is refused; an oversized request head is refused, not buffered.
    assert_eq!(http_get(metrics_addr, "/nothing").map(|r| r.0), Some(404));
    let huge = format!("/metrics?{}", "x".repeat(64 * 1024));
    assert_ne!(http_get(metrics_addr, &huge).map(|r| r.0), Some(200));

    // A real Prometheus scraping it every second.
    let prom_port = free_port();
    let prom_addr: SocketAddr = format!("127.0.0.1:{prom_port}").parse().unwrap();
    let prom_config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: certrotd\n    static_configs:\n      - targets: [\"{metrics_addr}\"]\n"
        ),
    )
    .unwrap();
    let prom_log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    let _prometheus = Process(
        Command::new(support::which("prometheus"))
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdin(Stdio::null())
            .stdout(prom_log.try_clone().unwrap())
            .stderr(prom_log)
            .spawn()
            .expect("prometheus (Debian's prometheus package; make test installs it)"),
    );
    let served = samples(&body, "x509_cert_not_after").len();
    let results = wait_until(
        "Prometheus to have scraped every x509_cert_not_after",
        || {
            let (status, text) = http_get(prom_addr, "/api/v1/query?query=x509_cert_not_after")?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let r = v["data"]["result"].as_array()?.clone();
            (status == 200 && r.len() == served).then_some(r)
        },
    );

    // Every certificate check lists, with the same expiry.
    let check = Command::new(env!("CARGO_BIN_EXE_certrotd"))
        .args(["check", "-o", "json", "--config"])
        .arg(&node.config_path)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let certs = report["certificates"].as_array().unwrap();
    assert!(certs.len() >= 17, "{} certificates", certs.len());
    for c in certs {
        let serial = hex_to_decimal(c["serial"].as_str().unwrap());
        let not_after = OffsetDateTime::parse(c["not_after"].as_str().unwrap(), &Rfc3339)
            .unwrap()
            .unix_timestamp();
        let found = results.iter().any(|r| {
            r["metric"]["serial_number"] == serial.as_str()
                && r["metric"]["job"] == "certrotd"
                && r["value"][1].as_str().and_then(|v| v.parse::<i64>().ok()) == Some(not_after)
        });
        assert!(
            found,
            "{} (serial {serial}, not after {not_after}) not in Prometheus",
            c["name"]
        );
    }
    // certrotd's own series arrive too.
    for (query, want) in [
        ("certrotd_mode{mode=\"idle\"}", "1"),
        ("certrotd_build_info", "1"),
        (
            "count(certrotd_certificate_status{status=\"ok\"} == 1)",
            &certs
                .iter()
                .filter(|c| c["status"] == "ok")
                .count()
                .to_string(),
        ),
    ] {
        let q = query
            .replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace('=', "%3D")
            .replace(' ', "%20")
            .replace('(', "%28")
            .replace(')', "%29");
        let got = wait_until(query, || {
            let (_, text) = http_get(prom_addr, &format!("/api/v1/query?query={q}"))?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            v["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned)
        });
        assert_eq!(got, want, "{query}");
    }
}

//! What several benches need: a process's resident memory and wake-ups, and a large tree of
//! certificates. Included with `#[path]` by each bench, which uses part of it.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

/// The resident memory of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Voluntary and involuntary context switches of every thread of `pid`.
pub fn context_switches(pid: u32) -> u64 {
    let tasks: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
        .map(|e| e.path())
        .collect();
    tasks
        .iter()
        .filter_map(|t| std::fs::read_to_string(t.join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// A CA and `n` leaves signed by it (O=bench, so the exporter's subject labels are filled), as
/// separate files under tree/certs.
pub fn write_tree(tree: &Path, n: usize, now: OffsetDateTime) {
    let certs = tree.join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    let ca_key =
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .expect("ca key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "bench-ca");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.not_before = now - time::Duration::days(1);
    ca.not_after = now + time::Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    std::fs::write(certs.join("ca.crt"), ca_cert.pem()).expect("write");
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    std::thread::scope(|s| {
        let chunk = n.div_ceil(2);
        for part in 0..2 {
            let (issuer, leaf_key, certs) = (&issuer, &leaf_key, &certs);
            s.spawn(move || {
                for i in (part * chunk)..((part + 1) * chunk).min(n) {
                    let mut p = rcgen::CertificateParams::new(vec![format!("svc-{i}.example")])
                        .expect("params");
                    p.distinguished_name
                        .push(rcgen::DnType::CommonName, format!("svc-{i}"));
                    p.distinguished_name
                        .push(rcgen::DnType::OrganizationName, "bench");
                    p.not_before = now - time::Duration::days(1);
                    p.not_after = now + time::Duration::days(30 + (i % 400) as i64);
                    let c = p.signed_by(leaf_key, issuer).expect("sign");
                    std::fs::write(certs.join(format!("svc-{i:05}.crt")), c.pem()).expect("write");
                }
            });
        }
    });
}

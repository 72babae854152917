//! Proving a restart against a real etcd (tests/support/etcd.rs) with TLS from a sandbox PKI: the
//! served serial, health with and without the right client certificate, a certificate replaced
//! and etcd restarted, nothing listening, and a chain from another CA. In-process servers stand in
//! where only they can: a TLS 1.2 server refusing our client certificate, and the API server's and
//! kubelet's HTTP answers.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use certrotd::config::{EndpointSpec, ProbeSettings};
use certrotd::inventory::{Inventory, KeyState};
use certrotd::issuer::local::LocalCa;
use certrotd::issuer::{IssueRequest, Issuer};
use certrotd::pki::cert::Cert;
use certrotd::pki::encode::{self, KeyFormat, KeySpec};
use certrotd::pki::key::PrivateKey;
use certrotd::pki::layout::{Component, Layout};
use certrotd::pki::pem;
use certrotd::restart::probe::{
    self, ClientIdentity, ComponentProbe, Expected, Failure, Health, HealthCheck, LastSeen,
    ProbeError, Retry, TlsEndpoint,
};
use certrotd::root::Root;
use certrotd::sandbox::{self, Sandbox, SandboxOptions};
use rcgen::PublicKeyData as _;
use support::etcd::{Etcd, EtcdSpec, free_port};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Long enough for a loaded machine; waits end as soon as their condition holds.
const TIMEOUT: Duration = Duration::from_secs(30);
/// One handshake attempt.
const ATTEMPT: Duration = Duration::from_secs(5);

/// A sandbox kubeadm node in a temp dir (kept alive by the returned guard).
fn sandbox_node() -> (tempfile::TempDir, Sandbox) {
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = sandbox::write(
        &tmp.path().join("node"),
        &SandboxOptions::default(),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    (tmp, sandbox)
}

fn etcd_pki(node: &Sandbox) -> PathBuf {
    node.path("/etc/kubernetes/pki/etcd")
}

fn start_etcd(tmp: &Path, node: &Sandbox) -> Etcd {
    Etcd::start(EtcdSpec::new(&etcd_pki(node), tmp))
}

fn identity(pki: &Path, name: &str) -> ClientIdentity {
    ClientIdentity::from_files(
        &pki.join(format!("{name}.crt")),
        &pki.join(format!("{name}.key")),
    )
    .unwrap()
}

fn file_der(path: &Path) -> Vec<u8> {
    let blocks = pem::blocks(path, &std::fs::read(path).unwrap()).unwrap();
    blocks[0].der.clone()
}

/// openssl's view of a certificate file's serial, normalised.
fn openssl_serial(path: &Path) -> String {
    let out = support::openssl(
        &["x509", "-noout", "-serial", "-in", path.to_str().unwrap()],
        None,
    );
    probe::normalize_serial(out.trim().trim_start_matches("serial="))
}

fn inventory(node: &Sandbox) -> Inventory {
    support::scan(&node.dir, Some(vec![Layout::Kubeadm]), &[])
}

fn local_ca(inv: &Inventory, name: &str) -> LocalCa {
    let e = inv.get(name).unwrap();
    assert_eq!(e.key, KeyState::Match, "{name} key");
    let key_path = e.key_path.as_ref().unwrap();
    let blocks = pem::blocks(key_path, &std::fs::read(key_path).unwrap()).unwrap();
    LocalCa::new(
        name,
        e.cert.clone().unwrap(),
        PrivateKey::from_blocks(&blocks).unwrap(),
    )
    .unwrap()
}

/// Renews `name` (e.g. `etcd-server`) with a new key from its CA and writes it over the old
/// files, as a rotation would; returns the new certificate.
fn renew(node: &Sandbox, name: &str) -> Cert {
    let inv = inventory(node);
    let entry = inv.get(name).unwrap();
    let ca = local_ca(&inv, entry.signer.as_ref().unwrap());
    let key = encode::generate(KeySpec::Rsa(2048)).unwrap();
    let issued = ca
        .issue(&IssueRequest {
            template: entry.cert.as_ref().unwrap(),
            spki: &key.subject_public_key_info(),
            validity: Duration::from_secs(365 * 86400),
            now: OffsetDateTime::now_utc(),
        })
        .unwrap();
    let cert_path = entry.path.clone();
    let key_path = entry.key_path.clone().unwrap();
    std::fs::write(
        &key_path,
        encode::private_key_pem(&key, KeyFormat::Pkcs1).unwrap(),
    )
    .unwrap();
    std::fs::write(&cert_path, encode::cert_pem(&issued.der)).unwrap();
    Cert::from_der(&issued.der).unwrap()
}

#[tokio::test]
async fn the_probe_reports_the_served_etcd_certificates() {
    let (tmp, node) = sandbox_node();
    let etcd = start_etcd(tmp.path(), &node);
    let pki = etcd_pki(&node);
    let server_crt = pki.join("server.crt");

    let anonymous = probe::served_certificate(etcd.spec.client_addr(), "127.0.0.1", None, ATTEMPT)
        .await
        .unwrap();
    let client = identity(&pki, "healthcheck-client");
    let with_client =
        probe::served_certificate(etcd.spec.client_addr(), "127.0.0.1", Some(&client), ATTEMPT)
            .await
            .unwrap();
    assert_eq!(anonymous, file_der(&server_crt));
    assert_eq!(with_client, anonymous);
    // The serial, judged by openssl and by x509-parser.
    assert_eq!(
        probe::serial_of(&anonymous).unwrap(),
        openssl_serial(&server_crt)
    );
    let (_, parsed) = x509_parser::parse_x509_certificate(&anonymous).unwrap();
    assert_eq!(
        probe::serial_of(&anonymous).unwrap(),
        format!("{:x}", parsed.serial)
    );

    // The peer port serves the peer certificate.
    let peer =
        probe::served_certificate(etcd.spec.peer_addr(), "127.0.0.1", Some(&client), ATTEMPT)
            .await
            .unwrap();
    assert_eq!(peer, file_der(&pki.join("peer.crt")));
    assert_ne!(peer, anonymous);
}

#[tokio::test]
async fn health_needs_the_right_client_certificate() {
    let (tmp, node) = sandbox_node();
    let etcd = start_etcd(tmp.path(), &node);
    let pki = etcd_pki(&node);
    let addr = etcd.spec.client_addr();

    let check = HealthCheck::Etcd {
        addr,
        client: Some(identity(&pki, "healthcheck-client")),
    };
    assert_eq!(
        probe::health(&check, ATTEMPT).await.unwrap(),
        Health::Healthy
    );

    // A client certificate from another cluster's etcd CA.
    let (_other_tmp, other) = sandbox_node();
    let stranger = identity(&etcd_pki(&other), "healthcheck-client");
    let check = HealthCheck::Etcd {
        addr,
        client: Some(stranger.clone()),
    };
    let error = probe::health(&check, ATTEMPT).await.unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(
            &error,
            ProbeError::Endpoint {
                failure: Failure::ClientCertRefused { .. },
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.starts_with(&format!(
            "health check etcd health https://{addr}/health: the server refused our client \
             certificate {}: TLS alert ",
            stranger.cert_path().display()
        )),
        "{text}"
    );

    // No client certificate at all.
    let check = HealthCheck::Etcd { addr, client: None };
    let error = probe::health(&check, ATTEMPT).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the server requires a client certificate and none was presented"),
        "{error}"
    );

    // The refused client still learns which certificate etcd serves.
    let served = probe::served_certificate(addr, "127.0.0.1", Some(&stranger), ATTEMPT)
        .await
        .unwrap();
    assert_eq!(served, file_der(&pki.join("server.crt")));

    // A plain handshake and a TCP connection count as up.
    let check = HealthCheck::TlsHandshake {
        addr,
        client: Some(identity(&pki, "healthcheck-client")),
    };
    assert_eq!(
        probe::health(&check, ATTEMPT).await.unwrap(),
        Health::HandshakeCompleted
    );
    let check = HealthCheck::Tcp { addr };
    assert_eq!(
        probe::health(&check, ATTEMPT).await.unwrap(),
        Health::Listening
    );
}

#[tokio::test]
async fn a_restart_onto_a_new_certificate_is_proved() {
    let (tmp, node) = sandbox_node();
    let mut etcd = start_etcd(tmp.path(), &node);
    let pki = etcd_pki(&node);
    let old_serial = openssl_serial(&pki.join("server.crt"));
    let endpoint = TlsEndpoint {
        addr: etcd.spec.client_addr(),
        server_name: "127.0.0.1".to_owned(),
        client: Some(identity(&pki, "healthcheck-client")),
    };
    let retry = Retry::default();

    // Waiting for a serial that is not served times out, naming what was seen.
    let started = Instant::now();
    let error = probe::wait_for_serial(
        &endpoint,
        "0123abcd",
        Instant::now() + Duration::from_secs(1),
        &retry,
    )
    .await
    .unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let ProbeError::SerialTimeout { last, attempts, .. } = &error else {
        panic!("{error}");
    };
    assert_eq!(last, &LastSeen::Serial(old_serial.clone()));
    assert!(*attempts >= 3, "{error}");
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "waiting for {} to serve certificate serial 123abcd: gave up after ",
            etcd.spec.client_addr(),
        )),
        "{text}"
    );
    assert!(
        text.ends_with(&format!("last seen: old serial {old_serial}")),
        "{text}"
    );

    let new_server = renew(&node, "etcd-server");
    let new_peer = renew(&node, "etcd-peer");
    assert_eq!(
        probe::normalize_serial(&new_server.serial),
        openssl_serial(&pki.join("server.crt"))
    );
    // etcd reads its certificate files at every handshake: it serves the new certificate
    // before any restart, so for etcd a served serial shows the files are right, not that the
    // process restarted.
    let before_restart = probe::served_chain(&endpoint, ATTEMPT).await.unwrap();
    assert_eq!(before_restart.leaf(), new_server.der.as_slice());

    // Restart; the probe sees the new serial as soon as etcd serves it.
    let restarted = Instant::now();
    etcd.restart();
    let served = probe::wait_for_serial(
        &endpoint,
        &new_server.serial,
        Instant::now() + TIMEOUT,
        &retry,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", etcd.log()));
    let seen_after = restarted.elapsed();
    assert_eq!(served.leaf(), new_server.der.as_slice());
    eprintln!("new serial served {seen_after:?} after the restart began");

    // What the daemon calls: every endpoint serves its new certificate, chained to the etcd CA,
    // and etcd is healthy.
    let root = Root::new(&node.dir);
    let mut settings = ProbeSettings::default();
    settings.endpoints.insert(
        Component::Etcd,
        vec![
            EndpointSpec {
                host: Some("127.0.0.1".parse().unwrap()),
                port: etcd.spec.client_port,
                serves: "etcd-server".to_owned(),
                server_name: Some("127.0.0.1".to_owned()),
            },
            // No host: found in the certificate's IP addresses (loopback only, in a sandbox).
            EndpointSpec {
                host: None,
                port: etcd.spec.peer_port,
                serves: "etcd-peer".to_owned(),
                server_name: None,
            },
        ],
    );
    settings
        .health
        .insert(Component::Etcd, etcd.spec.client_addr());
    let probe = ComponentProbe::new(Component::Etcd, &settings, &root).unwrap();
    let etcd_ca = Cert::from_der(&file_der(&pki.join("ca.crt"))).unwrap();
    let bundle = [etcd_ca];
    let expected = [
        Expected {
            name: "etcd-server",
            cert: &new_server,
            ca_bundle: &bundle,
        },
        Expected {
            name: "etcd-peer",
            cert: &new_peer,
            ca_bundle: &bundle,
        },
    ];
    let proof = probe
        .prove(
            &expected,
            OffsetDateTime::now_utc(),
            Instant::now() + TIMEOUT,
        )
        .await
        .unwrap();
    assert_eq!(proof.served.len(), 2);
    assert_eq!(
        proof.served[1].serial,
        probe::normalize_serial(&new_peer.serial)
    );
    assert_eq!(proof.health, Some(Health::Healthy));
    eprintln!("{proof}");

    // The old serial is now a wrong expectation: it times out naming the new serial seen.
    let error = probe::wait_for_serial(
        &endpoint,
        &old_serial,
        Instant::now() + Duration::from_millis(500),
        &retry,
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().ends_with(&format!(
            "last seen: old serial {}",
            probe::normalize_serial(&new_server.serial)
        )),
        "{error}"
    );
}

#[tokio::test]
async fn waiting_through_a_restart_sees_refusals_then_the_new_serial() {
    let (tmp, node) = sandbox_node();
    let pki = etcd_pki(&node);
    // etcd is not running yet: the wait starts on refusals and ends when it serves.
    let spec = EtcdSpec::new(&pki, tmp.path());
    let endpoint = TlsEndpoint::new(spec.client_addr());
    let expected = openssl_serial(&pki.join("server.crt"));
    let refused = probe::wait_for_serial(
        &endpoint,
        &expected,
        Instant::now() + Duration::from_millis(300),
        &Retry::default(),
    )
    .await
    .unwrap_err();
    assert!(
        refused
            .to_string()
            .ends_with("last seen: connection refused"),
        "{refused}"
    );
    let started = Instant::now();
    let etcd = Etcd::spawn_only(spec);
    let served = probe::wait_for_serial(
        &endpoint,
        &expected,
        Instant::now() + TIMEOUT,
        &Retry::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", etcd.log()));
    eprintln!(
        "etcd served its certificate {:?} after it was started",
        started.elapsed()
    );
    assert_eq!(served.leaf(), file_der(&pki.join("server.crt")));
}

#[tokio::test]
async fn nothing_listening_is_connection_refused_naming_the_endpoint() {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let error = probe::served_certificate(addr, "127.0.0.1", None, ATTEMPT)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("TLS handshake with {addr}: connection refused")
    );
    let error = probe::health(&HealthCheck::Kubelet { addr }, ATTEMPT)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("health check kubelet health http://{addr}/healthz: connection refused")
    );
    let error = probe::wait_healthy(
        &HealthCheck::Etcd { addr, client: None },
        Instant::now() + Duration::from_millis(200),
        &Retry::default(),
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().starts_with(&format!(
            "waiting for etcd health https://{addr}/health to pass: gave up after "
        )),
        "{error}"
    );
    assert!(error.to_string().ends_with("connection refused"), "{error}");
}

#[tokio::test]
async fn the_chain_is_judged_against_the_expected_ca() {
    let (tmp, node) = sandbox_node();
    let etcd = start_etcd(tmp.path(), &node);
    let pki = etcd_pki(&node);
    let served = probe::served_chain(&TlsEndpoint::new(etcd.spec.client_addr()), ATTEMPT)
        .await
        .unwrap();
    let now = OffsetDateTime::now_utc();
    let own_ca = [file_der(&pki.join("ca.crt")).into()];
    probe::verify_chain(&served.chain, &own_ca, None, now).unwrap();
    probe::verify_chain(&served.chain, &own_ca, Some("127.0.0.1"), now).unwrap();
    probe::verify_chain(&served.chain, &own_ca, Some("localhost"), now).unwrap();
    let wrong_name =
        probe::verify_chain(&served.chain, &own_ca, Some("etcd.example"), now).unwrap_err();
    assert!(wrong_name.contains("not valid for name"), "{wrong_name}");

    // The cluster CA and another node's etcd CA did not sign it.
    let (_other_tmp, other) = sandbox_node();
    for ca in [
        node.path("/etc/kubernetes/pki/ca.crt"),
        etcd_pki(&other).join("ca.crt"),
    ] {
        let reason =
            probe::verify_chain(&served.chain, &[file_der(&ca).into()], None, now).unwrap_err();
        eprintln!("{}: {reason}", ca.display());
        assert!(
            reason.contains("UnknownIssuer") || reason.contains("BadSignature"),
            "{}: {reason}",
            ca.display()
        );
    }
    // Past its NotAfter, the served certificate no longer verifies.
    let later = now + time::Duration::days(3650);
    let reason = probe::verify_chain(&served.chain, &own_ca, None, later).unwrap_err();
    assert!(reason.starts_with("it has expired"), "{reason}");

    // The same through ComponentProbe::prove: the error names the endpoint, serial and CA.
    let server = Cert::from_der(&file_der(&pki.join("server.crt"))).unwrap();
    let stranger = Cert::from_der(&file_der(&etcd_pki(&other).join("ca.crt"))).unwrap();
    let mut settings = ProbeSettings::default();
    settings.endpoints.insert(
        Component::Etcd,
        vec![EndpointSpec {
            host: Some("127.0.0.1".parse().unwrap()),
            port: etcd.spec.client_port,
            serves: "etcd-server".to_owned(),
            server_name: None,
        }],
    );
    let probe = ComponentProbe::new(Component::Etcd, &settings, &Root::new(&node.dir)).unwrap();
    let bundle = [stranger];
    let error = probe
        .prove(
            &[Expected {
                name: "etcd-server",
                cert: &server,
                ca_bundle: &bundle,
            }],
            now,
            Instant::now() + TIMEOUT,
        )
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "verifying the certificate {} serves (serial {}) against CA ",
            etcd.spec.client_addr(),
            probe::normalize_serial(&server.serial)
        )),
        "{text}"
    );
    // Both etcd CAs are named "etcd-ca", as on every kubeadm cluster.
    assert!(
        text.contains("another CA of the same name") && text.contains("BadSignature"),
        "{text}"
    );
}

#[test]
fn client_identities_name_their_files_and_never_their_keys() {
    let (_tmp, node) = sandbox_node();
    let pki = etcd_pki(&node);
    let id = identity(&pki, "healthcheck-client");
    let debug = format!("{id:?}");
    assert!(debug.contains("healthcheck-client.crt") && debug.contains("redacted"));
    assert!(!debug.contains("PRIVATE"));

    // A key that belongs to another certificate.
    let error =
        ClientIdentity::from_files(&pki.join("healthcheck-client.crt"), &pki.join("server.key"))
            .unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "reading the client certificate for probes {}: unusable with the key {}",
            pki.join("healthcheck-client.crt").display(),
            pki.join("server.key").display()
        )),
        "{text}"
    );
    let key_pem = std::fs::read_to_string(pki.join("server.key")).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!text.contains(key_body));

    let error =
        ClientIdentity::from_files(&pki.join("missing.crt"), &pki.join("server.key")).unwrap_err();
    assert!(error.to_string().contains("missing.crt"), "{error}");
    let error =
        ClientIdentity::from_files(&pki.join("server.crt"), &pki.join("server.crt")).unwrap_err();
    assert!(
        error.to_string().contains("no private key block"),
        "{error}"
    );
}

#[test]
fn etcd_probes_fall_back_to_the_apiserver_etcd_client() {
    let (_tmp, node) = sandbox_node();
    let root = Root::new(&node.dir);
    let settings = ProbeSettings::default();
    let pki = node.path("/etc/kubernetes/pki");
    let client_of = |probe: ComponentProbe| probe.client.unwrap().cert_path().to_owned();
    let probe = ComponentProbe::new(Component::Etcd, &settings, &root).unwrap();
    assert_eq!(client_of(probe), pki.join("etcd/healthcheck-client.crt"));
    // External etcd: kubeadm wrote no healthcheck-client.
    std::fs::remove_file(pki.join("etcd/healthcheck-client.crt")).unwrap();
    let probe = ComponentProbe::new(Component::Etcd, &settings, &root).unwrap();
    assert!(matches!(
        probe.health,
        Some(HealthCheck::Etcd {
            client: Some(_),
            ..
        })
    ));
    assert_eq!(client_of(probe), pki.join("apiserver-etcd-client.crt"));
    std::fs::remove_file(pki.join("apiserver-etcd-client.crt")).unwrap();
    let error = ComponentProbe::new(Component::Etcd, &settings, &root).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "proving etcd: etcd requires a client certificate and none of {}, {} exists",
            pki.join("etcd/healthcheck-client.crt").display(),
            pki.join("apiserver-etcd-client.crt").display()
        )
    );
    // Components other than etcd need none, and get their default checks.
    let probe = ComponentProbe::new(Component::Kubelet, &settings, &root).unwrap();
    assert!(probe.client.is_none());
    assert!(matches!(probe.health, Some(HealthCheck::Kubelet { addr }) if addr.port() == 10248));
    assert_eq!(probe.endpoints[0].port, 10250);
}

/// A TLS 1.2 server requiring client certificates from `ca`, serving `cert`/`key`: it presents
/// its certificate before it judges ours.
async fn tls12_server(cert: &Path, key: &Path, ca: &Path) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(file_der(ca).into()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let key_blocks = pem::blocks(key, &std::fs::read(key).unwrap()).unwrap();
    let key_der = rustls::pki_types::PrivatePkcs1KeyDer::from(key_blocks[0].der.clone()).into();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![file_der(cert).into()], key_der)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_tls12_server_refusing_our_certificate_still_shows_its_own() {
    let (_tmp, node) = sandbox_node();
    let pki = etcd_pki(&node);
    let addr = tls12_server(
        &pki.join("server.crt"),
        &pki.join("server.key"),
        &pki.join("ca.crt"),
    )
    .await;
    let (_other_tmp, other) = sandbox_node();
    let stranger = identity(&etcd_pki(&other), "healthcheck-client");
    let mut endpoint = TlsEndpoint::new(addr);
    endpoint.client = Some(stranger.clone());
    let served = probe::served_chain(&endpoint, ATTEMPT).await.unwrap();
    assert_eq!(served.leaf(), file_der(&pki.join("server.crt")));
    assert!(
        matches!(
            &served.handshake_error,
            Some(Failure::ClientCertRefused { cert, .. }) if cert == stranger.cert_path()
        ),
        "{:?}",
        served.handshake_error
    );
    // And served_certificate reports the leaf, as it does for a server that accepts us.
    let leaf = probe::served_certificate(addr, "127.0.0.1", Some(&stranger), ATTEMPT)
        .await
        .unwrap();
    assert_eq!(leaf, file_der(&pki.join("server.crt")));
}

/// An HTTP server answering every request with `response`, over TLS (with the etcd server
/// certificate of `node`) or plain TCP.
async fn http_server(tls: Option<&Sandbox>, response: &'static str) -> SocketAddr {
    let acceptor = tls.map(|node| {
        let pki = etcd_pki(node);
        let key_path = pki.join("server.key");
        let key_blocks = pem::blocks(&key_path, &std::fs::read(&key_path).unwrap()).unwrap();
        let key_der = rustls::pki_types::PrivatePkcs1KeyDer::from(key_blocks[0].der.clone()).into();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![file_der(&pki.join("server.crt")).into()], key_der)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            answer(tls, response).await;
                        }
                    }
                    None => answer(tcp, response).await,
                }
            });
        }
    });
    addr
}

/// Reads one request head and writes `response`.
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    response: &str,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[tokio::test]
async fn http_health_answers_read_as_each_component_means_them() {
    let (_tmp, node) = sandbox_node();
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let unauthorized = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
    let forbidden = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
    let failing = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 34\r\n\r\n[-]etcd failed: reason withheld\nx\n";

    for (response, expected) in [
        (ok, Health::Healthy),
        (unauthorized, Health::UpAnonymousRefused { status: 401 }),
        (forbidden, Health::UpAnonymousRefused { status: 403 }),
    ] {
        let addr = http_server(Some(&node), response).await;
        let check = HealthCheck::KubeApiserver { addr, client: None };
        assert_eq!(probe::health(&check, ATTEMPT).await.unwrap(), expected);
    }
    assert_eq!(
        Health::UpAnonymousRefused { status: 401 }.to_string(),
        "up: serving TLS, but anonymous access is disabled (HTTP 401), so only liveness is known"
    );
    let addr = http_server(Some(&node), failing).await;
    let error = probe::health(&HealthCheck::KubeApiserver { addr, client: None }, ATTEMPT)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "kube-apiserver health https://{addr}/livez: unhealthy: HTTP 500: [-]etcd failed: \
             reason withheld x"
        )
    );

    let addr = http_server(None, ok).await;
    assert_eq!(
        probe::health(&HealthCheck::Kubelet { addr }, ATTEMPT)
            .await
            .unwrap(),
        Health::Healthy
    );
    let addr = http_server(None, failing).await;
    let error = probe::health(&HealthCheck::Kubelet { addr }, ATTEMPT)
        .await
        .unwrap_err();
    assert!(matches!(error, ProbeError::Unhealthy { .. }), "{error}");

    // A server that accepts and never answers: the attempt times out.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let error = probe::health(&HealthCheck::Kubelet { addr }, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("health check kubelet health http://{addr}/healthz: timed out after 0.200s")
    );
}

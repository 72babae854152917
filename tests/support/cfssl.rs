//! A real `cfssl serve` (Debian's golang-cfssl) as the remote CA: its own copy of a CA certificate
//! and key, an auth key and signing profiles, on a free loopback port, over plain HTTP or TLS.
//! Started and stopped by PID; stopping and starting again keeps the port, so a client configured
//! once finds it back.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::etcd::free_port;

/// How long cfssl may take to listen. Generous: two cores are shared with builds.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The auth key the server accepts (hex, as cfssl's `auth_keys` hold it).
pub const AUTH_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A cfssl server's files and port; running while `child` is.
pub struct Cfssl {
    /// Holds the server's CA copy, config, TLS files and log.
    pub dir: PathBuf,
    /// The loopback port it listens on.
    pub port: u16,
    /// Whether it serves TLS (its CA is `tls_ca()`).
    pub tls: bool,
    child: Option<Child>,
}

impl Cfssl {
    /// Sets a server up in `dir` to sign with `ca_cert`/`ca_key` (copied, so the node may lose its
    /// own copy). Profiles, a year each: "client", "server", and "peer" (both usages).
    pub fn new(dir: &Path, ca_cert: &Path, ca_key: &Path, tls: bool) -> Cfssl {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(ca_cert, dir.join("ca.crt")).unwrap();
        std::fs::copy(ca_key, dir.join("ca.key")).unwrap();
        let usages = |eku: &str| format!(r#"["signing", "key encipherment", {eku}]"#);
        let config = format!(
            r#"{{"signing": {{
  "default": {{"expiry": "8760h", "usages": {client}, "auth_key": "main"}},
  "profiles": {{
    "client": {{"expiry": "8760h", "usages": {client}, "auth_key": "main"}},
    "server": {{"expiry": "8760h", "usages": {server}, "auth_key": "main"}},
    "peer": {{"expiry": "8760h", "usages": {peer}, "auth_key": "main"}}
  }}}},
 "auth_keys": {{"main": {{"type": "standard", "key": "{AUTH_KEY}"}}}}}}"#,
            client = usages(r#""client auth""#),
            server = usages(r#""server auth""#),
            peer = usages(r#""server auth", "client auth""#),
        );
        std::fs::write(dir.join("config.json"), config).unwrap();
        if tls {
            make_tls(dir);
        }
        Cfssl {
            dir: dir.to_owned(),
            port: free_port(),
            tls,
            child: None,
        }
    }

    /// The URL certrotd is configured with.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA that signed the server's TLS certificate.
    pub fn tls_ca(&self) -> PathBuf {
        self.dir.join("tls-ca.crt")
    }

    /// Starts `cfssl serve` and waits until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "cfssl is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("serve.log"))
            .unwrap();
        let d = |f: &str| self.dir.join(f).to_str().unwrap().to_owned();
        let mut cmd = Command::new("cfssl");
        cmd.args(["serve", "-address", "127.0.0.1", "-port"])
            .arg(self.port.to_string())
            .args(["-ca", &d("ca.crt"), "-ca-key", &d("ca.key")])
            .args(["-config", &d("config.json")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if self.tls {
            cmd.args(["-tls-cert", &d("tls.crt"), "-tls-key", &d("tls.key")]);
        }
        let child = cmd
            .spawn()
            .expect("cfssl must be installed (make test installs golang-cfssl)");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("cfssl serve exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "cfssl did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it (SIGKILL by PID) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    /// How many certificates it signed.
    pub fn signed(&self) -> usize {
        self.log().matches("signed certificate with serial").count()
    }

    /// An `[issuer]` table for this server, with the auth key written at `key_node_path` inside
    /// `root` (and the TLS CA at /etc/certrotd/cfssl-ca.crt when it serves TLS).
    pub fn issuer_config(&self, root: &Path, key_node_path: &str, extra: &str) -> String {
        let key_file = root.join(key_node_path.trim_start_matches('/'));
        std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
        let mut f = std::fs::File::create(&key_file).unwrap();
        writeln!(f, "{AUTH_KEY}").unwrap();
        let mut text = format!(
            "[issuer]\nmode = \"cfssl\"\nurl = \"{}\"\nauth_key_file = \"{key_node_path}\"\n\
             profile = \"client\"\ntimeout = \"5s\"\n",
            self.url()
        );
        if self.tls {
            let bundle = root.join("etc/certrotd/cfssl-ca.crt");
            std::fs::create_dir_all(bundle.parent().unwrap()).unwrap();
            std::fs::copy(self.tls_ca(), &bundle).unwrap();
            text.push_str("ca_bundle = \"/etc/certrotd/cfssl-ca.crt\"\n");
        }
        text.push_str(extra);
        text
    }
}

impl Drop for Cfssl {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA of its own for the server's TLS certificate (valid for 127.0.0.1), made with openssl.
fn make_tls(dir: &Path) {
    let d = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=cfssl test TLS CA",
        "-days",
        "2",
        "-keyout",
        &d("tls-ca.key"),
        "-out",
        &d("tls-ca.crt"),
    ]);
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-days",
        "2",
        "-CA",
        &d("tls-ca.crt"),
        "-CAkey",
        &d("tls-ca.key"),
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-addext",
        "extendedKeyUsage=serverAuth",
        "-keyout",
        &d("tls.key"),
        "-out",
        &d("tls.crt"),
    ]);
}

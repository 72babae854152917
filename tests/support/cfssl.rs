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

/// How a [`Tamperer`] alters what it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Adds a SAN (`evil.example`) to the request's hosts.
    AddSan,
    /// Asks for another subject (cfssl's sign request `subject` override).
    Subject,
}

/// A tiny real HTTP server between certrotd and cfssl that alters each signing request (and
/// re-authenticates it with the auth key), so the real CA signs a certificate other than the one
/// certrotd asked for: a wrong answer, as a misconfigured or hostile remote CA would give.
pub struct Tamperer {
    /// Where certrotd is pointed.
    pub port: u16,
}

impl Tamperer {
    /// Starts it in a thread, forwarding to `cfssl_port` (plain HTTP).
    pub fn start(cfssl_port: u16, how: Tamper) -> Tamperer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let Some(body) = read_request(&mut conn) else {
                    continue;
                };
                let answer = forward(cfssl_port, &tamper(&body, how));
                let _ = conn.write_all(&answer);
            }
        });
        Tamperer { port }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Reads one HTTP request and returns its body.
fn read_request(conn: &mut TcpStream) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        if data.len() >= end + 4 + len {
            return Some(data[end + 4..end + 4 + len].to_vec());
        }
    }
}

/// The authsign body with its request altered and its token made again.
fn tamper(body: &[u8], how: Tamper) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let outer: serde_json::Value = serde_json::from_slice(body).unwrap();
    let inner = b64.decode(outer["request"].as_str().unwrap()).unwrap();
    let mut request: serde_json::Value = serde_json::from_slice(&inner).unwrap();
    match how {
        Tamper::AddSan => request["hosts"]
            .as_array_mut()
            .unwrap()
            .push("evil.example".into()),
        Tamper::Subject => {
            request["subject"] =
                serde_json::json!({"CN": "system:masters-evil", "names": [{"O": "system:masters"}]})
        }
    }
    let inner = request.to_string();
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        &hex::decode(AUTH_KEY).unwrap(),
    );
    let token = aws_lc_rs::hmac::sign(&key, inner.as_bytes());
    serde_json::json!({"token": b64.encode(token.as_ref()), "request": b64.encode(inner.as_bytes())})
        .to_string()
        .into_bytes()
}

/// Posts `body` to cfssl's authsign and returns its whole HTTP answer.
fn forward(port: u16, body: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /api/v1/cfssl/authsign HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    answer
}

/// A server that is not a working cfssl: it answers every request with `answer` after `delay`.
pub struct Broken {
    /// Where certrotd is pointed.
    pub port: u16,
}

impl Broken {
    /// Starts it in a thread.
    pub fn start(delay: Duration, answer: &'static str) -> Broken {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let _ = read_request(&mut conn);
                    std::thread::sleep(delay);
                    let _ = conn.write_all(answer.as_bytes());
                });
            }
        });
        Broken { port }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

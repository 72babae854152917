//! Proving a restart worked: the component serves the new certificate (its serial, on each of its
//! TLS endpoints), the chain it serves leads to the CA that signed it, and its health endpoint
//! answers.
//!
//! Which certificate is served and whether it is trusted are separate questions, answered
//! separately: the handshake records whatever the server presents (so a wrong or untrusted
//! certificate is reported as what it is, not as a handshake failure), and [`verify_chain`] then
//! judges that chain against the expected CA.
//!
//! By concern: `tls` does one handshake, `served` judges what an endpoint serves, `retry` paces the
//! attempts, `health` asks the health endpoint, `component` assembles a restarted component's
//! probes from the node.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::pki::layout::Component;

mod component;
mod health;
mod retry;
mod served;
#[cfg(test)]
mod tests;
mod tls;

pub use component::*;
pub use health::*;
pub use retry::*;
pub use served::*;
pub use tls::*;

/// Why one attempt to reach an endpoint failed. Carries no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Nothing listens there (yet).
    #[error("connection refused")]
    Refused,
    /// Connecting, the handshake or the request took longer than allowed.
    #[error("timed out after {}", seconds(*.0))]
    TimedOut(Duration),
    /// The TCP connection failed otherwise.
    #[error("connect: {0}")]
    Connect(String),
    /// The TLS handshake failed before the server presented a certificate.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The server refused the client certificate presented.
    #[error("the server refused our client certificate {}: TLS alert {alert}", cert.display())]
    ClientCertRefused {
        /// The certificate presented.
        cert: PathBuf,
        /// The alert the server sent.
        alert: String,
    },
    /// The server requires a client certificate and none was presented.
    #[error("the server requires a client certificate and none was presented: TLS alert {alert}")]
    ClientCertRequired {
        /// The alert the server sent.
        alert: String,
    },
    /// The handshake completed without a server certificate (cannot happen with TLS ≤ 1.3).
    #[error("the server presented no certificate")]
    NoCertificate,
    /// The served certificate cannot be parsed.
    #[error("the served certificate cannot be parsed: {0}")]
    BadCertificate(String),
    /// The HTTP exchange failed.
    #[error("HTTP request failed: {0}")]
    Http(String),
}

/// What a probe saw last before giving up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastSeen {
    /// No attempt was made: the deadline had passed already.
    Nothing,
    /// The endpoint served a certificate with another serial.
    Serial(String),
    /// The attempt failed.
    Failure(Failure),
}

impl fmt::Display for LastSeen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LastSeen::Nothing => f.write_str("nothing: the deadline had already passed"),
            LastSeen::Serial(serial) => write!(f, "old serial {serial}"),
            LastSeen::Failure(failure) => write!(f, "{failure}"),
        }
    }
}

/// Errors proving a restart; each names what was being done and where.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// One attempt at an endpoint failed.
    #[error("{op} {endpoint}: {failure}")]
    Endpoint {
        /// What was being done.
        op: &'static str,
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        failure: Failure,
    },
    /// The endpoint did not serve the expected serial before the deadline.
    #[error(
        "waiting for {endpoint} to serve certificate serial {expected}: gave up after {} \
         ({attempts} attempts); last seen: {last}",
        seconds(*waited)
    )]
    SerialTimeout {
        /// The endpoint.
        endpoint: String,
        /// The serial expected, normalised.
        expected: String,
        /// How long it was waited for.
        waited: Duration,
        /// How many handshakes were tried.
        attempts: u32,
        /// What the last attempt saw.
        last: LastSeen,
    },
    /// The served chain does not lead to the expected CA (or is expired, or not for servers).
    #[error("verifying the certificate {endpoint} serves (serial {serial}) against {ca}: {reason}")]
    Chain {
        /// The endpoint.
        endpoint: String,
        /// The served leaf's serial.
        serial: String,
        /// The CA bundle, by subject.
        ca: String,
        /// Why it does not verify.
        reason: String,
    },
    /// The health check answered, and not with "healthy".
    #[error("{check}: unhealthy: {detail}")]
    Unhealthy {
        /// The check, e.g. `etcd health https://127.0.0.1:2379/health`.
        check: String,
        /// What it answered.
        detail: String,
    },
    /// The health check did not pass before the deadline.
    #[error("waiting for {check} to pass: gave up after {}; last: {last}", seconds(*waited))]
    HealthTimeout {
        /// The check.
        check: String,
        /// How long it was waited for.
        waited: Duration,
        /// The last error.
        last: String,
    },
    /// A client certificate for probes could not be read or used.
    #[error("reading the client certificate for probes {}: {reason}", path.display())]
    Identity {
        /// The file.
        path: PathBuf,
        /// What is wrong (never key material).
        reason: String,
    },
    /// The component cannot be probed as configured.
    #[error("proving {component}: {reason}")]
    Plan {
        /// The component.
        component: Component,
        /// What is missing.
        reason: String,
    },
}

/// Seconds with millisecond precision, for messages.
fn seconds(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

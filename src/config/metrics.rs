//! `[metrics]`: how Prometheus reads certrotd's series, over HTTP (`listen`) or through
//! node_exporter's textfile collector (`textfile`). Both are off unless configured: certrotd runs
//! as root on every node, and a listening port is attack surface nobody asked for.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::layer::{ConfigError, Sources, Val, over};
use super::validate::check_node_path;

/// The port `listen = "on"` serves on (loopback only).
pub const DEFAULT_PORT: u16 = 9864;

/// `[metrics]`: Prometheus exposition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricsSettings {
    /// Where `/metrics` is served; `None` (the default, shown as "off"): no listener.
    #[serde(serialize_with = "listen_text")]
    pub listen: Option<SocketAddr>,
    /// Node path of a `.prom` file written for node_exporter's textfile collector after each
    /// inventory and rotation; `None` (the default): none.
    pub textfile: Option<PathBuf>,
    /// Whether the x509-certificate-exporter compatible `x509_*` series are exposed (turn off
    /// where the exporter itself also watches the node, or its alerts fire twice).
    pub x509_compat: bool,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            listen: None,
            textfile: None,
            x509_compat: true,
        }
    }
}

impl MetricsSettings {
    /// Whether any exposition is configured.
    pub fn enabled(&self) -> bool {
        self.listen.is_some() || self.textfile.is_some()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [metrics] table")]
pub(super) struct MetricsLayer {
    listen: Option<Val<String>>,
    textfile: Option<Val<PathBuf>>,
    x509_compat: Option<Val<bool>>,
}

impl MetricsLayer {
    pub(super) fn merge(&mut self, later: MetricsLayer, file: usize) {
        over(&mut self.listen, later.listen, file);
        over(&mut self.textfile, later.textfile, file);
        over(&mut self.x509_compat, later.x509_compat, file);
    }

    pub(super) fn resolve(&self, sources: &Sources) -> Result<MetricsSettings, ConfigError> {
        let mut s = MetricsSettings::default();
        if let Some(w) = &self.listen {
            s.listen = listen(&w.value).map_err(|e| {
                sources.invalid(&w.at, format!("metrics.listen = {:?}: {e}", w.value))
            })?;
        }
        if let Some(w) = &self.textfile {
            check_node_path(&w.value)
                .and_then(|()| match w.value.extension() {
                    // node_exporter reads only `*.prom`; any other name would be silently ignored.
                    Some(ext) if ext == "prom" => Ok(()),
                    _ => Err("must end in .prom, the only files node_exporter reads".to_owned()),
                })
                .map_err(|e| {
                    sources.invalid(
                        &w.at,
                        format!("metrics.textfile = {:?}: {e}", w.value.display()),
                    )
                })?;
            s.textfile = Some(w.value.clone());
        }
        if let Some(w) = &self.x509_compat {
            s.x509_compat = w.value;
        }
        Ok(s)
    }
}

/// Shown as it is written: "off" or the address.
fn listen_text<S: serde::Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(addr) => s.collect_str(addr),
        None => s.serialize_str("off"),
    }
}

/// `"off"`, `"on"` (loopback, [`DEFAULT_PORT`]) or an `address:port`.
fn listen(text: &str) -> Result<Option<SocketAddr>, String> {
    match text {
        "off" | "" => Ok(None),
        "on" => Ok(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_PORT)))),
        other => other.parse().map(Some).map_err(|_| {
            "must be \"off\", \"on\" (127.0.0.1:9864) or an address:port such as \
             \"127.0.0.1:9864\" or \"[::1]:9864\""
                .to_owned()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_words_and_addresses() {
        assert_eq!(listen("off"), Ok(None));
        assert_eq!(
            listen("on"),
            Ok(Some("127.0.0.1:9864".parse().expect("address")))
        );
        assert_eq!(
            listen("[::1]:9100"),
            Ok(Some("[::1]:9100".parse().expect("address")))
        );
        assert!(listen("yes").is_err());
        assert!(listen("127.0.0.1").is_err());
    }
}

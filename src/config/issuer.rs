//! `[issuer]`: who signs renewed certificates. The CA key on the node (`local`), or a remote cfssl
//! server (`cfssl`) for certificates whose CA key is elsewhere, chosen per CA.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::layer::{ConfigError, DurationText, Sources, Val, over};
use super::validate::check_node_path;
use crate::duration;

/// Who signs: the CA key on the node, or a cfssl server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuerMode {
    /// The CA key on the node; certificates whose CA key is absent are left alone (kubeadm's
    /// "externally managed").
    #[default]
    Local,
    /// A cfssl server's authenticated signing endpoint.
    Cfssl,
}

/// `[issuer]`: who signs renewed certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuerSettings {
    /// For CAs without an override: "local" signs with the CA key where it is on the node and
    /// leaves the rest alone; "cfssl" sends the rest to the cfssl server.
    pub mode: IssuerMode,
    /// The cfssl server, `https://host:port` (or `http://` for a lab).
    pub url: String,
    /// Node path of the file holding the hex HMAC key of cfssl's `auth_keys` (type "standard").
    pub auth_key_file: String,
    /// cfssl signing profile ("" is the server's default profile).
    pub profile: String,
    /// Profiles per certificate, by inventory name (e.g. `kubelet-client-current = "client"`).
    pub profiles: BTreeMap<String, String>,
    /// Node path of the PEM bundle that verifies the cfssl server's TLS certificate.
    pub ca_bundle: String,
    /// How long connecting to the server, and then its answer, may each take.
    #[serde(with = "duration::human")]
    pub timeout: Duration,
    /// First pause after a failed renewal; doubled (with jitter) after each further failure.
    #[serde(with = "duration::human")]
    pub retry_initial: Duration,
    /// Longest pause between attempts.
    #[serde(with = "duration::human")]
    pub retry_max: Duration,
    /// Per-CA overrides, by the CA's inventory name (`[issuer.ca."etcd-ca"]`).
    pub ca: BTreeMap<String, CaOverride>,
}

impl Default for IssuerSettings {
    fn default() -> Self {
        IssuerSettings {
            mode: IssuerMode::Local,
            url: String::new(),
            auth_key_file: String::new(),
            profile: String::new(),
            profiles: BTreeMap::new(),
            ca_bundle: String::new(),
            timeout: Duration::from_secs(30),
            retry_initial: Duration::from_secs(30),
            retry_max: Duration::from_secs(30 * 60),
            ca: BTreeMap::new(),
        }
    }
}

/// `[issuer.ca.<name>]`: how one CA's certificates are signed; unset keys come from `[issuer]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaOverride {
    /// "local": only with the CA key on the node; "cfssl": always through the cfssl server.
    pub mode: IssuerMode,
    /// The cfssl server for this CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Its auth key file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_key_file: Option<String>,
    /// Its default profile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Its server's CA bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// A cfssl server, as one CA uses it (paths still node paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCa {
    /// The server's base URL.
    pub url: String,
    /// Node path of the hex auth key.
    pub auth_key_file: PathBuf,
    /// The profile for certificates without one of their own.
    pub profile: String,
    /// Profiles by certificate name.
    pub profiles: BTreeMap<String, String>,
    /// Node path of the server's CA bundle (`None`: plain http).
    pub ca_bundle: Option<PathBuf>,
    /// Connect and answer timeout.
    pub timeout: Duration,
}

impl RemoteCa {
    /// The profile for the certificate `name`.
    pub fn profile_for(&self, name: &str) -> &str {
        self.profiles.get(name).unwrap_or(&self.profile)
    }
}

/// How one CA's certificates are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaChoice {
    /// With the CA key if it is on the node; otherwise through `Some` remote, or not at all.
    LocalElse(Option<RemoteCa>),
    /// Only with the CA key on the node.
    LocalOnly,
    /// Always through the remote CA, even if the CA key is on the node.
    Remote(RemoteCa),
}

impl IssuerSettings {
    /// How the certificates of the CA named `ca` (its inventory name) are signed.
    pub fn for_ca(&self, ca: &str) -> CaChoice {
        let Some(o) = self.ca.get(ca) else {
            return self.default_choice();
        };
        match o.mode {
            IssuerMode::Local => CaChoice::LocalOnly,
            IssuerMode::Cfssl => CaChoice::Remote(self.remote(Some(o))),
        }
    }

    /// Whether a certificate signed by `ca` whose CA key is absent can still be renewed.
    pub fn remote_for(&self, ca: &str) -> bool {
        matches!(
            self.for_ca(ca),
            CaChoice::LocalElse(Some(_)) | CaChoice::Remote(_)
        )
    }

    /// How the certificates of a CA without an override are signed.
    pub fn default_choice(&self) -> CaChoice {
        match self.mode {
            IssuerMode::Local => CaChoice::LocalElse(None),
            IssuerMode::Cfssl => CaChoice::LocalElse(Some(self.remote(None))),
        }
    }

    fn remote(&self, o: Option<&CaOverride>) -> RemoteCa {
        let pick = |own: Option<&Option<String>>, global: &str| {
            own.and_then(|v| v.clone())
                .unwrap_or_else(|| global.to_owned())
        };
        let bundle = pick(o.map(|o| &o.ca_bundle), &self.ca_bundle);
        RemoteCa {
            url: pick(o.map(|o| &o.url), &self.url),
            auth_key_file: PathBuf::from(pick(o.map(|o| &o.auth_key_file), &self.auth_key_file)),
            profile: pick(o.map(|o| &o.profile), &self.profile),
            profiles: self.profiles.clone(),
            ca_bundle: (!bundle.is_empty()).then(|| PathBuf::from(bundle)),
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [issuer] table")]
pub(super) struct IssuerLayer {
    mode: Option<Val<IssuerMode>>,
    url: Option<Val<String>>,
    auth_key_file: Option<Val<String>>,
    profile: Option<Val<String>>,
    #[serde(default)]
    profiles: BTreeMap<String, Val<String>>,
    ca_bundle: Option<Val<String>>,
    timeout: Option<Val<DurationText>>,
    retry_initial: Option<Val<DurationText>>,
    retry_max: Option<Val<DurationText>>,
    #[serde(default)]
    ca: BTreeMap<String, CaLayer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [issuer.ca.<name>] table")]
struct CaLayer {
    mode: Option<Val<IssuerMode>>,
    url: Option<Val<String>>,
    auth_key_file: Option<Val<String>>,
    profile: Option<Val<String>>,
    ca_bundle: Option<Val<String>>,
}

impl CaLayer {
    fn merge(&mut self, later: CaLayer, file: usize) {
        over(&mut self.mode, later.mode, file);
        over(&mut self.url, later.url, file);
        over(&mut self.auth_key_file, later.auth_key_file, file);
        over(&mut self.profile, later.profile, file);
        over(&mut self.ca_bundle, later.ca_bundle, file);
    }
}

/// The written values of one remote CA (global or per CA), for validation.
struct Written<'a> {
    key: String,
    url: Option<&'a Val<String>>,
    auth_key_file: Option<&'a Val<String>>,
    ca_bundle: Option<&'a Val<String>>,
    mode: Option<&'a Val<IssuerMode>>,
}

impl IssuerLayer {
    pub(super) fn merge(&mut self, later: IssuerLayer, file: usize) {
        over(&mut self.mode, later.mode, file);
        over(&mut self.url, later.url, file);
        over(&mut self.auth_key_file, later.auth_key_file, file);
        over(&mut self.profile, later.profile, file);
        over(&mut self.ca_bundle, later.ca_bundle, file);
        over(&mut self.timeout, later.timeout, file);
        over(&mut self.retry_initial, later.retry_initial, file);
        over(&mut self.retry_max, later.retry_max, file);
        // Key by key, as tables merge.
        for (name, mut v) in later.profiles {
            v.at.file = file;
            self.profiles.insert(name, v);
        }
        for (name, ca) in later.ca {
            self.ca.entry(name).or_default().merge(ca, file);
        }
    }

    pub(super) fn resolve(&self, sources: &Sources) -> Result<IssuerSettings, ConfigError> {
        let d = IssuerSettings::default();
        let text = |v: &Option<Val<String>>| v.as_ref().map(|v| v.value.clone());
        let mut s = IssuerSettings {
            mode: self.mode.as_ref().map_or(d.mode, |v| v.value),
            url: text(&self.url).unwrap_or_default(),
            auth_key_file: text(&self.auth_key_file).unwrap_or_default(),
            profile: text(&self.profile).unwrap_or_default(),
            profiles: self
                .profiles
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect(),
            ca_bundle: text(&self.ca_bundle).unwrap_or_default(),
            timeout: sources.duration("issuer.timeout", &self.timeout, d.timeout)?,
            retry_initial: sources.duration(
                "issuer.retry_initial",
                &self.retry_initial,
                d.retry_initial,
            )?,
            retry_max: sources.duration("issuer.retry_max", &self.retry_max, d.retry_max)?,
            ca: BTreeMap::new(),
        };
        for (key, value, written) in [
            ("issuer.timeout", s.timeout, &self.timeout),
            ("issuer.retry_initial", s.retry_initial, &self.retry_initial),
        ] {
            if let Some(w) = written.as_ref().filter(|_| value.is_zero()) {
                return Err(sources.invalid(&w.at, format!("{key} = \"0\": must be longer")));
            }
        }
        if s.retry_max < s.retry_initial {
            let at = self.retry_max.as_ref().or(self.retry_initial.as_ref());
            let message = format!(
                "issuer.retry_max = {:?} must not be shorter than issuer.retry_initial = {:?}",
                duration::format(s.retry_max),
                duration::format(s.retry_initial)
            );
            return Err(match at {
                Some(w) => sources.invalid(&w.at, message),
                None => ConfigError::Invalid { at: None, message },
            });
        }
        let global = Written {
            key: "issuer".to_owned(),
            url: self.url.as_ref(),
            auth_key_file: self.auth_key_file.as_ref(),
            ca_bundle: self.ca_bundle.as_ref(),
            mode: self.mode.as_ref(),
        };
        check_paths(sources, &global)?;
        if s.mode == IssuerMode::Cfssl {
            check_remote(sources, &global, None)?;
        }
        for (name, layer) in &self.ca {
            let key = format!("issuer.ca.{name:?}");
            let Some(mode) = &layer.mode else {
                let at = [
                    &layer.url,
                    &layer.auth_key_file,
                    &layer.profile,
                    &layer.ca_bundle,
                ]
                .into_iter()
                .find_map(|v| v.as_ref().map(|v| &v.at));
                let message = format!("{key}: mode is missing (\"local\" or \"cfssl\")");
                return Err(match at {
                    Some(at) => sources.invalid(at, message),
                    None => ConfigError::Invalid { at: None, message },
                });
            };
            let own = Written {
                key: key.clone(),
                url: layer.url.as_ref(),
                auth_key_file: layer.auth_key_file.as_ref(),
                ca_bundle: layer.ca_bundle.as_ref(),
                mode: Some(mode),
            };
            check_paths(sources, &own)?;
            if mode.value == IssuerMode::Cfssl {
                check_remote(sources, &own, Some(&global))?;
            }
            s.ca.insert(
                name.clone(),
                CaOverride {
                    mode: mode.value,
                    url: text(&layer.url),
                    auth_key_file: text(&layer.auth_key_file),
                    profile: text(&layer.profile),
                    ca_bundle: text(&layer.ca_bundle),
                },
            );
        }
        Ok(s)
    }
}

/// Paths must be absolute node paths.
fn check_paths(sources: &Sources, w: &Written<'_>) -> Result<(), ConfigError> {
    for (field, v) in [
        ("auth_key_file", w.auth_key_file),
        ("ca_bundle", w.ca_bundle),
    ] {
        if let Some(v) = v.filter(|v| !v.value.is_empty()) {
            check_node_path(Path::new(&v.value)).map_err(|e| {
                sources.invalid(&v.at, format!("{}.{field} = {:?}: {e}", w.key, v.value))
            })?;
        }
    }
    Ok(())
}

/// A cfssl CA needs a URL it can reach, an auth key, and for https a bundle to verify the server.
fn check_remote(
    sources: &Sources,
    own: &Written<'_>,
    global: Option<&Written<'_>>,
) -> Result<(), ConfigError> {
    let pick = |f: for<'w> fn(&'w Written<'_>) -> Option<&'w Val<String>>| {
        f(own)
            .filter(|v| !v.value.is_empty())
            .or_else(|| global.and_then(f).filter(|v| !v.value.is_empty()))
    };
    let mode_at = own.mode.map(|m| &m.at);
    let missing = |what: &str| {
        let message = format!(
            "{}: mode = \"cfssl\" needs {what} (in [{}] or [issuer])",
            own.key, own.key
        );
        match mode_at {
            Some(at) => sources.invalid(at, message),
            None => ConfigError::Invalid { at: None, message },
        }
    };
    let url = pick(|w| w.url).ok_or_else(|| missing("url"))?;
    let u = url.value.as_str();
    let https = u.starts_with("https://");
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
        return Err(sources.invalid(
            &url.at,
            format!(
                "{}.url = {u:?}: expected http://host:port or https://host:port",
                own.key
            ),
        ));
    }
    pick(|w| w.auth_key_file).ok_or_else(|| missing("auth_key_file"))?;
    if https && pick(|w| w.ca_bundle).is_none() {
        return Err(sources.invalid(
            &url.at,
            format!(
                "{}.url = {u:?} is https: set ca_bundle to the CA that verifies the server",
                own.key
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LoadOptions, load};

    fn load_text(text: &str) -> Result<IssuerSettings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certrotd.toml");
        std::fs::write(&path, text).unwrap();
        load(&LoadOptions {
            config: Some(&path),
            root: Some(dir.path()),
        })
        .map(|s| s.issuer)
    }

    #[test]
    fn per_ca_overrides_inherit_the_global_server() {
        let s = load_text(
            "[issuer]\nmode = \"cfssl\"\nurl = \"https://ca.example:8888\"\n\
             auth_key_file = \"/etc/certrotd/cfssl.key\"\nca_bundle = \"/etc/certrotd/b.pem\"\n\
             profile = \"client\"\nprofiles = { apiserver = \"server\" }\n\
             [issuer.ca.\"etcd-ca\"]\nmode = \"local\"\n\
             [issuer.ca.\"front-proxy-ca\"]\nmode = \"cfssl\"\nprofile = \"fp\"\n",
        )
        .unwrap();
        assert_eq!(s.for_ca("etcd-ca"), CaChoice::LocalOnly);
        let CaChoice::LocalElse(Some(global)) = s.for_ca("ca") else {
            panic!("{:?}", s.for_ca("ca"));
        };
        assert_eq!(global.profile_for("apiserver"), "server");
        assert_eq!(global.profile_for("admin.conf"), "client");
        let CaChoice::Remote(fp) = s.for_ca("front-proxy-ca") else {
            panic!("{:?}", s.for_ca("front-proxy-ca"));
        };
        assert_eq!(fp.url, "https://ca.example:8888");
        assert_eq!(fp.profile, "fp");
        assert_eq!(fp.ca_bundle, Some(PathBuf::from("/etc/certrotd/b.pem")));
        assert!(s.remote_for("ca") && !s.remote_for("etcd-ca"));
        assert!(!IssuerSettings::default().remote_for("ca"));
    }

    #[test]
    fn a_cfssl_issuer_without_what_it_needs_is_refused_where_written() {
        let e = load_text("[issuer]\nmode = \"cfssl\"\nauth_key_file = \"/k\"\n").unwrap_err();
        assert!(
            e.to_string()
                .contains(":2:8: issuer: mode = \"cfssl\" needs url"),
            "{e}"
        );
        let e = load_text(
            "[issuer]\nmode = \"cfssl\"\nurl = \"https://ca:1\"\nauth_key_file = \"/k\"\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(":3:7: issuer.url = \"https://ca:1\" is https"),
            "{e}"
        );
        let e = load_text("[issuer]\nurl = \"ftp://x\"\n[issuer.ca.ca]\nmode = \"cfssl\"\nauth_key_file = \"/k\"\n")
            .unwrap_err();
        assert!(
            e.to_string().contains("issuer.ca.\"ca\".url = \"ftp://x\""),
            "{e}"
        );
        let e = load_text("[issuer]\nauth_key_file = \"k\"\n").unwrap_err();
        assert!(e.to_string().contains(":2:17: issuer.auth_key_file"), "{e}");
        let e = load_text("[issuer]\nretry_initial = \"1h\"\nretry_max = \"1m\"\n").unwrap_err();
        assert!(e.to_string().contains(":3:13: issuer.retry_max"), "{e}");
        let e = load_text("[issuer.ca.ca]\nurl = \"http://x:1\"\n").unwrap_err();
        assert!(e.to_string().contains("mode is missing"), "{e}");
        let e = load_text("[issuer]\nmode = \"remote\"\n").unwrap_err();
        assert!(e.to_string().contains(":2:8"), "{e}");
    }
}

//! `[restart]`: how the components that read a renewed certificate are restarted.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::layer::{ConfigError, DurationText, Sources, Val, over};
use crate::duration;

/// `[restart]`: how the components that read a renewed certificate are restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestartSettings {
    /// How kubeadm's static pods are restarted (`None`: they are not).
    pub static_pods: Option<StaticPodRestart>,
    /// Whether systemd units (kubelet, an external etcd, rke2, k3s) are restarted.
    pub units: bool,
    /// The D-Bus address of systemd's bus; empty is the system bus.
    pub dbus_address: String,
    /// How long a restart job may take.
    #[serde(with = "duration::human")]
    pub job_timeout: Duration,
    /// Whether a component that re-reads its certificates by itself is given the chance (proved,
    /// never assumed) before it is restarted; `false` restarts always (see `restart::reload`).
    pub prefer_reload: bool,
    /// How long such a component has to serve its new certificates before it is restarted.
    #[serde(with = "duration::human")]
    pub reload_period: Duration,
}

/// How long a restart job may take unless `[restart] job_timeout` says otherwise.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a component that re-reads its files is given by default to serve the new
/// certificate before it is restarted: the slowest self-reloading entry of `restart::reload`
/// re-reads within a minute (the Kubernetes dynamic-certificate controllers' resync), plus a
/// margin. etcd serves the new file on the very next handshake, so the happy path never waits
/// this long.
pub const DEFAULT_RELOAD_PERIOD: Duration = Duration::from_secs(75);

/// How kubeadm's static pods are restarted: the two of `restart::Strategy`'s ways that apply to
/// a static pod, named as the configuration writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StaticPodRestart {
    /// Stop the pod's container through its systemd scope; the kubelet starts it again.
    KillScope,
    /// Annotate the static pod's manifest; the kubelet recreates the pod.
    Manifest,
}

impl Default for RestartSettings {
    fn default() -> Self {
        RestartSettings {
            static_pods: Some(StaticPodRestart::KillScope),
            units: true,
            dbus_address: String::new(),
            job_timeout: DEFAULT_JOB_TIMEOUT,
            prefer_reload: true,
            reload_period: DEFAULT_RELOAD_PERIOD,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [restart] table")]
pub(super) struct RestartLayer {
    pub(super) static_pods: Option<Val<String>>,
    pub(super) units: Option<Val<bool>>,
    pub(super) dbus_address: Option<Val<String>>,
    pub(super) job_timeout: Option<Val<DurationText>>,
    pub(super) prefer_reload: Option<Val<bool>>,
    pub(super) reload_period: Option<Val<DurationText>>,
}

impl RestartLayer {
    pub(super) fn merge(&mut self, later: RestartLayer, file: usize) {
        over(&mut self.static_pods, later.static_pods, file);
        over(&mut self.units, later.units, file);
        over(&mut self.dbus_address, later.dbus_address, file);
        over(&mut self.job_timeout, later.job_timeout, file);
        over(&mut self.prefer_reload, later.prefer_reload, file);
        over(&mut self.reload_period, later.reload_period, file);
    }

    pub(super) fn resolve(&self, sources: &Sources) -> Result<RestartSettings, ConfigError> {
        let mut settings = RestartSettings::default();
        if let Some(w) = &self.static_pods {
            settings.static_pods = match w.value.as_str() {
                "kill-scope" => Some(StaticPodRestart::KillScope),
                "manifest" => Some(StaticPodRestart::Manifest),
                "none" => None,
                other => {
                    return Err(sources.invalid(
                        &w.at,
                        format!(
                            "restart.static_pods = {other:?}: expected \"kill-scope\", \"manifest\" or \"none\""
                        ),
                    ));
                }
            };
        }
        if let Some(w) = &self.units {
            settings.units = w.value;
        }
        if let Some(w) = &self.dbus_address {
            settings.dbus_address = w.value.clone();
        }
        settings.job_timeout = sources.duration(
            "restart.job_timeout",
            &self.job_timeout,
            settings.job_timeout,
        )?;
        if let Some(w) = &self.prefer_reload {
            settings.prefer_reload = w.value;
        }
        settings.reload_period = sources.duration(
            "restart.reload_period",
            &self.reload_period,
            settings.reload_period,
        )?;
        Ok(settings)
    }
}

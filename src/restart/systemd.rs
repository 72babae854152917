//! The systemd manager over D-Bus: restart a unit and wait for its job's result, kill a unit's
//! processes, find the unit that holds a PID, read a unit's state and wait until it is back.
//!
//! Connect for the restarts of one rotation and drop the connection afterwards: once subscribed
//! (which [`Systemd::wait_active`] needs, to hear of property changes), systemd broadcasts every
//! unit change on the node for as long as the connection lives.

use std::fmt;
use std::time::Duration;

use futures_util::StreamExt;
use nix::sys::signal::Signal;
use tokio::sync::OnceCell;
use zbus::proxy::CacheProperties;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

/// D-Bus error systemd answers for a unit name it has no unit (or unit file) for.
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";
/// D-Bus error systemd answers for a PID that belongs to none of its units.
const NO_UNIT_FOR_PID: &str = "org.freedesktop.systemd1.NoUnitForPID";
/// D-Bus error systemd answers to a second `Subscribe` from the same connection.
const ALREADY_SUBSCRIBED: &str = "org.freedesktop.systemd1.AlreadySubscribed";
/// While waiting for a unit, state is read again at least this often, in case a change signal is
/// lost (the bus drops signals for slow readers) or never sent.
const RECHECK_EVERY: Duration = Duration::from_millis(500);

/// Errors talking to systemd; each names the operation and the unit (or PID or bus).
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// The bus could not be reached.
    #[error("connect to the D-Bus bus {bus}: {source}")]
    Connect {
        /// The bus address, or "system".
        bus: String,
        /// What zbus reported.
        #[source]
        source: zbus::Error,
    },
    /// systemd knows no such unit.
    #[error("{op} {unit}: unit not found")]
    NoSuchUnit {
        /// What was being done.
        op: &'static str,
        /// The unit name.
        unit: String,
    },
    /// The job systemd ran for the operation ended with another result than "done".
    #[error("{op} {unit}: job {job} finished with result \"{result}\"")]
    JobFailed {
        /// What was being done.
        op: &'static str,
        /// The unit name.
        unit: String,
        /// The job's object path.
        job: String,
        /// How the job ended.
        result: JobResult,
    },
    /// The job did not end in time; it may still be running in systemd.
    #[error("{op} {unit}: job {job} did not finish within {}", humantime::format_duration(*timeout))]
    JobTimeout {
        /// What was being done.
        op: &'static str,
        /// The unit name.
        unit: String,
        /// The job's object path.
        job: String,
        /// How long was waited.
        timeout: Duration,
    },
    /// The unit did not become active again with a new main process in time.
    #[error("{op} {unit}: not active with a new main PID within {} (last seen: {last})", humantime::format_duration(*timeout))]
    NotActive {
        /// What was being done.
        op: &'static str,
        /// The unit name.
        unit: String,
        /// How long was waited.
        timeout: Duration,
        /// The unit's state when giving up.
        last: Box<UnitStatus>,
    },
    /// The unit failed instead of coming back.
    #[error("{op} {unit}: unit failed ({last})")]
    UnitFailed {
        /// What was being done.
        op: &'static str,
        /// The unit name.
        unit: String,
        /// The unit's state.
        last: Box<UnitStatus>,
    },
    /// The bus connection ended while waiting for a signal.
    #[error("{op} {unit}: the D-Bus connection closed while waiting")]
    Disconnected {
        /// What was being done.
        op: &'static str,
        /// The unit name.
        unit: String,
    },
    /// Any other D-Bus failure (access denied, bad reply, ...).
    #[error("{op} {target}: {source}")]
    Bus {
        /// What was being done.
        op: &'static str,
        /// The unit, or the PID, it was done to.
        target: String,
        /// What zbus reported.
        #[source]
        source: zbus::Error,
    },
}

/// Result type of this module.
pub type Result<T, E = SystemdError> = std::result::Result<T, E>;

/// How a systemd job ended (the `result` argument of the manager's `JobRemoved` signal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    /// The job succeeded.
    Done,
    /// The job was canceled before it finished.
    Canceled,
    /// The job's timeout was reached.
    Timeout,
    /// The job failed.
    Failed,
    /// A job this one depended on failed.
    Dependency,
    /// The job was not needed (the unit was already in the state asked for).
    Skipped,
    /// A result this version of certrotd does not know.
    Other(String),
}

impl JobResult {
    /// Reads systemd's result string.
    pub fn parse(s: &str) -> JobResult {
        match s {
            "done" => JobResult::Done,
            "canceled" => JobResult::Canceled,
            "timeout" => JobResult::Timeout,
            "failed" => JobResult::Failed,
            "dependency" => JobResult::Dependency,
            "skipped" => JobResult::Skipped,
            other => JobResult::Other(other.to_owned()),
        }
    }

    /// systemd's name for it.
    pub fn as_str(&self) -> &str {
        match self {
            JobResult::Done => "done",
            JobResult::Canceled => "canceled",
            JobResult::Timeout => "timeout",
            JobResult::Failed => "failed",
            JobResult::Dependency => "dependency",
            JobResult::Skipped => "skipped",
            JobResult::Other(s) => s,
        }
    }
}

impl fmt::Display for JobResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job that finished with "done".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    /// The unit the job was for.
    pub unit: String,
    /// The job's id.
    pub id: u32,
    /// The job's object path.
    pub job: String,
    /// How it ended (always [`JobResult::Done`] when returned as a success).
    pub result: JobResult,
}

/// Which of a unit's processes `KillUnit` signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillWhom {
    /// Only the main process (services have one; scopes do not).
    Main,
    /// Every process in the unit's cgroup (what a container scope needs).
    All,
}

impl KillWhom {
    fn as_str(self) -> &'static str {
        match self {
            KillWhom::Main => "main",
            KillWhom::All => "all",
        }
    }
}

/// A unit's state as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStatus {
    /// The unit's name.
    pub name: String,
    /// `loaded`, `not-found`, `masked`, ...
    pub load_state: String,
    /// `active`, `activating`, `deactivating`, `inactive`, `failed`, ...
    pub active_state: String,
    /// The unit type's own state (`running`, `auto-restart`, `dead`, ...).
    pub sub_state: String,
    /// The main process of a service (None for other unit types, and while it has none).
    pub main_pid: Option<u32>,
    /// How often systemd restarted a service by itself (None for other unit types).
    pub n_restarts: Option<u32>,
}

impl UnitStatus {
    /// Whether the unit is active.
    pub fn is_active(&self) -> bool {
        self.active_state == "active"
    }
}

impl fmt::Display for UnitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.name, self.active_state, self.sub_state)?;
        if let Some(pid) = self.main_pid {
            write!(f, ", main PID {pid}")?;
        }
        if let Some(n) = self.n_restarts {
            write!(f, ", {n} restarts")?;
        }
        Ok(())
    }
}

/// A connection to a systemd manager.
#[derive(Debug)]
pub struct Systemd {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
    subscribed: OnceCell<()>,
}

impl Systemd {
    /// Connects to the system bus (None; honours `DBUS_SYSTEM_BUS_ADDRESS`) or to the bus at
    /// `address` (a D-Bus address such as `unix:path=/run/dbus/system_bus_socket`).
    pub async fn connect(address: Option<&str>) -> Result<Systemd> {
        let bus = address.unwrap_or("system").to_owned();
        let connect_err = |source| SystemdError::Connect {
            bus: bus.clone(),
            source,
        };
        let conn = match address {
            None => zbus::Connection::system().await,
            Some(addr) => zbus::connection::Builder::address(addr).build().await,
        }
        .map_err(connect_err)?;
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(connect_err)?;
        Ok(Systemd {
            conn,
            manager,
            subscribed: OnceCell::new(),
        })
    }

    /// Restarts `unit` (`RestartUnit` with mode "replace") and waits up to `timeout` for its job to
    /// end; any result but "done" is an error naming the unit and the result.
    pub async fn restart_unit(&self, unit: &str, timeout: Duration) -> Result<JobOutcome> {
        const OP: &str = "restart";
        // No Subscribe: systemd sends JobRemoved to the client that queued the job even so (seen
        // with systemd 252), and a subscription would make it broadcast every change on the node.
        // Listening starts before the job exists: a job that ends at once is not missed.
        let mut removed = self
            .manager
            .receive_job_removed()
            .await
            .map_err(bus_err(OP, unit))?;
        let job = self
            .manager
            .restart_unit(unit.to_owned(), "replace".to_owned())
            .await
            .map_err(method_err(OP, unit))?;
        let job_path = job.as_str().to_owned();
        let wait = async {
            while let Some(signal) = removed.next().await {
                let args = signal.args().map_err(bus_err(OP, unit))?;
                if args.job.as_str() == job_path {
                    return Ok((args.id, JobResult::parse(&args.result)));
                }
            }
            Err(SystemdError::Disconnected {
                op: OP,
                unit: unit.to_owned(),
            })
        };
        let (id, result) =
            tokio::time::timeout(timeout, wait)
                .await
                .map_err(|_| SystemdError::JobTimeout {
                    op: OP,
                    unit: unit.to_owned(),
                    job: job_path.clone(),
                    timeout,
                })??;
        if result != JobResult::Done {
            return Err(SystemdError::JobFailed {
                op: OP,
                unit: unit.to_owned(),
                job: job_path,
                result,
            });
        }
        Ok(JobOutcome {
            unit: unit.to_owned(),
            id,
            job: job_path,
            result,
        })
    }

    /// Clears the failed state of `unit` and its start rate limit (`ResetFailedUnit`, what
    /// `systemctl reset-failed` does). Harmless on a unit that is not failed.
    pub async fn reset_failed_unit(&self, unit: &str) -> Result<()> {
        const OP: &str = "reset the failed state of";
        self.manager
            .reset_failed_unit(unit.to_owned())
            .await
            .map_err(method_err(OP, unit))
    }

    /// Sends `signal` to the `whom` processes of `unit` (`KillUnit`). systemd starts no job for
    /// this: whether the unit comes back depends on its `Restart=` (or, for a container's scope, on
    /// the kubelet).
    pub async fn kill_unit(&self, unit: &str, whom: KillWhom, signal: Signal) -> Result<()> {
        const OP: &str = "kill";
        self.manager
            .kill_unit(unit.to_owned(), whom.as_str().to_owned(), signal as i32)
            .await
            .map_err(method_err(OP, unit))
    }

    /// The name of the unit whose cgroup holds `pid` (`GetUnitByPID`), or None when it belongs to
    /// none of this manager's units.
    pub async fn unit_by_pid(&self, pid: u32) -> Result<Option<String>> {
        const OP: &str = "find the unit of";
        let target = || format!("PID {pid}");
        let path = match self.manager.get_unit_by_pid(pid).await {
            Ok(path) => path,
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == NO_UNIT_FOR_PID => {
                return Ok(None);
            }
            Err(source) => {
                return Err(SystemdError::Bus {
                    op: OP,
                    target: target(),
                    source,
                });
            }
        };
        let unit = UnitProxy::builder(&self.conn)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|source| SystemdError::Bus {
                op: OP,
                target: target(),
                source,
            })?;
        let id = unit.id().await.map_err(|source| SystemdError::Bus {
            op: OP,
            target: target(),
            source,
        })?;
        Ok(Some(id))
    }

    /// The state of `unit`; a unit systemd has no unit file for is [`SystemdError::NoSuchUnit`].
    pub async fn unit_status(&self, unit: &str) -> Result<UnitStatus> {
        self.status_for("read the status of", unit).await
    }

    /// Waits up to `timeout` until the service `unit` is active with a main PID other than
    /// `old_main_pid` (the one it had before it was killed), and returns its state then. A unit
    /// that fails instead is an error at once. (Scopes have no main PID: a container's new scope
    /// has a new name, and the probe of the component is what tells it is back.)
    pub async fn wait_active(
        &self,
        unit: &str,
        old_main_pid: Option<u32>,
        timeout: Duration,
    ) -> Result<UnitStatus> {
        const OP: &str = "wait for";
        self.ensure_subscribed(OP, unit).await?;
        let path = self
            .manager
            .load_unit(unit.to_owned())
            .await
            .map_err(method_err(OP, unit))?;
        let props = zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination("org.freedesktop.systemd1")
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(bus_err(OP, unit))?;
        // Subscribed before the first read, so a change between the read and the wait wakes us.
        let mut changes = props
            .receive_properties_changed()
            .await
            .map_err(bus_err(OP, unit))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status_for(OP, unit).await?;
            let new_pid = status.main_pid.is_some_and(|p| Some(p) != old_main_pid);
            if status.is_active() && new_pid {
                return Ok(status);
            }
            if status.active_state == "failed" {
                return Err(SystemdError::UnitFailed {
                    op: OP,
                    unit: unit.to_owned(),
                    last: Box::new(status),
                });
            }
            tokio::select! {
                changed = changes.next() => {
                    if changed.is_none() {
                        return Err(SystemdError::Disconnected { op: OP, unit: unit.to_owned() });
                    }
                }
                _ = tokio::time::sleep(RECHECK_EVERY) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(SystemdError::NotActive {
                        op: OP,
                        unit: unit.to_owned(),
                        timeout,
                        last: Box::new(status),
                    });
                }
            }
        }
    }

    async fn status_for(&self, op: &'static str, unit: &str) -> Result<UnitStatus> {
        // LoadUnit, not GetUnit: GetUnit answers NoSuchUnit for an installed unit that is merely
        // not loaded right now (inactive units are unloaded).
        let path = self
            .manager
            .load_unit(unit.to_owned())
            .await
            .map_err(method_err(op, unit))?;
        let proxy = UnitProxy::builder(&self.conn)
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(bus_err(op, unit))?;
        let load_state = proxy.load_state().await.map_err(bus_err(op, unit))?;
        if load_state == "not-found" {
            return Err(SystemdError::NoSuchUnit {
                op,
                unit: unit.to_owned(),
            });
        }
        let active_state = proxy.active_state().await.map_err(bus_err(op, unit))?;
        let sub_state = proxy.sub_state().await.map_err(bus_err(op, unit))?;
        let (mut main_pid, mut n_restarts) = (None, None);
        if unit.ends_with(".service") {
            let service = ServiceProxy::builder(&self.conn)
                .path(path)
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .map_err(bus_err(op, unit))?;
            main_pid =
                Some(service.main_pid().await.map_err(bus_err(op, unit))?).filter(|p| *p != 0);
            // NRestarts appeared in systemd 235; older managers simply do not report it.
            n_restarts = service.n_restarts().await.ok();
        }
        Ok(UnitStatus {
            name: unit.to_owned(),
            load_state,
            active_state,
            sub_state,
            main_pid,
            n_restarts,
        })
    }

    /// Asks systemd to send its unit and job signals to this connection (once per connection).
    async fn ensure_subscribed(&self, op: &'static str, unit: &str) -> Result<()> {
        self.subscribed
            .get_or_try_init(|| async {
                match self.manager.subscribe().await {
                    Ok(()) => Ok(()),
                    Err(zbus::Error::MethodError(name, _, _))
                        if name.as_str() == ALREADY_SUBSCRIBED =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(bus_err(op, unit)(e)),
                }
            })
            .await
            .map(|_| ())
    }
}

/// Maps a failed method call on a unit: "no such unit" gets its own error, the rest is a bus error.
fn method_err<'a>(
    op: &'static str,
    unit: &'a str,
) -> impl FnOnce(zbus::Error) -> SystemdError + 'a {
    move |e| match e {
        zbus::Error::MethodError(name, _, _) if name.as_str() == NO_SUCH_UNIT => {
            SystemdError::NoSuchUnit {
                op,
                unit: unit.to_owned(),
            }
        }
        source => SystemdError::Bus {
            op,
            target: unit.to_owned(),
            source,
        },
    }
}

fn bus_err<'a>(op: &'static str, unit: &'a str) -> impl FnOnce(zbus::Error) -> SystemdError + 'a {
    move |source| SystemdError::Bus {
        op,
        target: unit.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_results_round_trip() {
        for s in [
            "done",
            "canceled",
            "timeout",
            "failed",
            "dependency",
            "skipped",
            "odd",
        ] {
            assert_eq!(JobResult::parse(s).as_str(), s);
        }
        assert_eq!(JobResult::parse("done"), JobResult::Done);
    }

    #[test]
    fn errors_name_operation_and_unit() {
        let e = SystemdError::NoSuchUnit {
            op: "restart",
            unit: "kubelet-nope.service".into(),
        };
        assert_eq!(
            e.to_string(),
            "restart kubelet-nope.service: unit not found"
        );
        let e = SystemdError::JobFailed {
            op: "restart",
            unit: "etcd.service".into(),
            job: "/org/freedesktop/systemd1/job/7".into(),
            result: JobResult::Failed,
        };
        assert_eq!(
            e.to_string(),
            "restart etcd.service: job /org/freedesktop/systemd1/job/7 finished with result \"failed\""
        );
    }
}

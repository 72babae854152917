//! Restarting components against a real systemd manager over D-Bus (tests/support/systemd.rs), and
//! the manifest strategy on real files.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use certrotd::pki::layout::Component;
use certrotd::restart::manifest::{self, RESTARTED_AT};
use certrotd::restart::static_pod::{self, Action};
use certrotd::restart::systemd::{JobResult, KillWhom, Systemd, SystemdError};
use certrotd::restart::{Outcome, RestartError, Restarter, Strategy};
use nix::sys::signal::Signal;
use support::systemd::UserManager;
use time::macros::datetime;

/// Long enough for a loaded CI machine; the waits end as soon as the condition holds.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A process name no other test (nor a second run of this one) uses.
fn unique_name(test: &str) -> String {
    format!("certrotd-fake-{test}-{}", std::process::id())
}

async fn connect(m: &UserManager) -> Systemd {
    Systemd::connect(Some(m.bus_address()))
        .await
        .expect("connect to the test manager's bus")
}

fn restarter(m: &UserManager, manifests: &Path) -> Restarter {
    Restarter {
        bus: Some(m.bus_address().to_owned()),
        proc_root: "/proc".into(),
        manifests_dir: manifests.to_path_buf(),
        job_timeout: TIMEOUT,
    }
}

/// Waits until `/proc` shows exactly one process named `name`, and returns it.
async fn wait_for_process(name: &str) -> u32 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let found = static_pod::find_processes(Path::new("/proc"), name).expect("scan /proc");
        match found.as_slice() {
            [pid] => return *pid,
            [] if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("expected one {name} process, found {other:?}"),
        }
    }
}

const SLEEPER: &str = "[Service]\nExecStart=/bin/sleep infinity\n";

#[tokio::test]
async fn restart_unit_waits_for_the_job_and_the_main_pid_changes() {
    let m = UserManager::start().await;
    m.write_unit("kubelet.service", SLEEPER).await;
    m.start_unit("kubelet.service").await;
    let before = m.main_pid("kubelet.service").await;
    assert_ne!(before, 0);

    let systemd = connect(&m).await;
    let job = systemd
        .restart_unit("kubelet.service", TIMEOUT)
        .await
        .expect("restart kubelet.service");
    assert_eq!(job.result, JobResult::Done);
    assert_eq!(job.unit, "kubelet.service");
    assert!(
        job.job.starts_with("/org/freedesktop/systemd1/job/"),
        "{}",
        job.job
    );

    // Judged by systemctl, not by certrotd's own client.
    let after = m.main_pid("kubelet.service").await;
    assert!(after != 0 && after != before, "MainPID {before} → {after}");
    assert_eq!(m.show("kubelet.service", "ActiveState").await, "active");
    let status = systemd
        .unit_status("kubelet.service")
        .await
        .expect("status");
    assert_eq!(status.main_pid, Some(after));
    assert!(status.is_active(), "{status}");
}

#[tokio::test]
async fn unknown_units_give_a_clear_error() {
    let m = UserManager::start().await;
    let systemd = connect(&m).await;
    let err = systemd
        .restart_unit("kubelet-nope.service", TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "restart kubelet-nope.service: unit not found"
    );
    let err = systemd
        .kill_unit("kubelet-nope.service", KillWhom::Main, Signal::SIGTERM)
        .await
        .unwrap_err();
    assert!(matches!(err, SystemdError::NoSuchUnit { .. }), "{err}");
    let err = systemd
        .unit_status("kubelet-nope.service")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "read the status of kubelet-nope.service: unit not found"
    );
}

#[tokio::test]
async fn a_failed_job_is_an_error_naming_unit_and_result() {
    let m = UserManager::start().await;
    m.write_unit(
        "broken.service",
        "[Service]\nType=oneshot\nExecStart=/bin/false\n",
    )
    .await;
    let err = connect(&m)
        .await
        .restart_unit("broken.service", TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SystemdError::JobFailed { result: JobResult::Failed, unit, .. } if unit == "broken.service"),
        "{err}"
    );
    assert!(
        err.to_string().ends_with("finished with result \"failed\""),
        "{err}"
    );
}

#[tokio::test]
async fn kill_unit_makes_a_restart_always_unit_come_back_found_by_its_pid() {
    let m = UserManager::start().await;
    m.write_unit(
        "fake-apiserver.service",
        "[Service]\nExecStart=/bin/sleep infinity\nRestart=always\nRestartSec=100ms\n",
    )
    .await;
    m.start_unit("fake-apiserver.service").await;
    let before = m.main_pid("fake-apiserver.service").await;

    let systemd = connect(&m).await;
    let unit = systemd
        .unit_by_pid(before)
        .await
        .expect("GetUnitByPID")
        .expect("the main PID belongs to a unit");
    assert_eq!(unit, "fake-apiserver.service");
    systemd
        .kill_unit(&unit, KillWhom::Main, Signal::SIGTERM)
        .await
        .expect("KillUnit");
    let status = systemd
        .wait_active(&unit, Some(before), TIMEOUT)
        .await
        .expect("the unit comes back");
    let after = status.main_pid.expect("a new main PID");
    assert_ne!(after, before);
    assert_eq!(status.n_restarts, Some(1), "{status}");
    assert_eq!(m.main_pid("fake-apiserver.service").await, after);
    assert_eq!(m.show("fake-apiserver.service", "NRestarts").await, "1");
}

#[tokio::test]
async fn unit_by_pid_is_none_for_a_process_in_no_unit() {
    let m = UserManager::start().await;
    let systemd = connect(&m).await;
    assert_eq!(
        systemd
            .unit_by_pid(std::process::id())
            .await
            .expect("GetUnitByPID"),
        None
    );
}

#[tokio::test]
async fn a_static_pod_in_a_scope_is_stopped_through_its_scope() {
    let m = UserManager::start().await;
    let name = unique_name("scope");
    let scope = format!("{name}.scope");
    // What runc does for a container under the systemd cgroup driver: a transient scope holding
    // the container's process. systemd-run execs the command in place, so the child is that process.
    let mut child = m
        .command("systemd-run")
        .args(["--user", "--scope", "--quiet", "--unit", &scope, "--"])
        .args(["bash", "-c", &format!("exec -a {name} sleep infinity")])
        .spawn()
        .expect("spawn systemd-run --scope");
    let pid = wait_for_process(&name).await;
    assert_eq!(Some(pid), child.id());

    let systemd = connect(&m).await;
    let actions = static_pod::restart(&systemd, Path::new("/proc"), &name, TIMEOUT)
        .await
        .expect("restart the static pod");
    assert_eq!(actions, vec![Action::ScopeKilled { pid, unit: scope }]);
    let status = tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .expect("the process ends")
        .expect("wait");
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{status}");
}

#[tokio::test]
async fn a_process_in_no_unit_is_signalled_itself() {
    let m = UserManager::start().await;
    let name = unique_name("nounit");
    let mut child = tokio::process::Command::new("sleep")
        .arg0(&name)
        .arg("infinity")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sleep");
    let pid = wait_for_process(&name).await;
    assert_eq!(Some(pid), child.id());

    let systemd = connect(&m).await;
    let actions = static_pod::restart(&systemd, Path::new("/proc"), &name, TIMEOUT)
        .await
        .expect("restart");
    assert_eq!(actions, vec![Action::ProcessSignalled { pid, unit: None }]);
    let status = tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .expect("the process ends")
        .expect("wait");
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{status}");
}

#[tokio::test]
async fn a_component_that_is_a_services_main_process_gets_the_service_restarted() {
    // Without Restart=, SIGTERM alone would leave it stopped: the service must be restarted.
    let m = UserManager::start().await;
    let name = unique_name("service");
    m.write_unit(
        "external-etcd.service",
        &format!("[Service]\nExecStart=@/bin/sleep {name} infinity\n"),
    )
    .await;
    m.start_unit("external-etcd.service").await;
    let before = m.main_pid("external-etcd.service").await;
    assert_eq!(wait_for_process(&name).await, before);

    let systemd = connect(&m).await;
    let actions = static_pod::restart(&systemd, Path::new("/proc"), &name, TIMEOUT)
        .await
        .expect("restart");
    let [Action::ServiceRestarted { pid, job }] = actions.as_slice() else {
        panic!("expected one service restart, got {actions:?}");
    };
    assert_eq!((*pid, job.unit.as_str()), (before, "external-etcd.service"));
    let after = m.main_pid("external-etcd.service").await;
    assert!(after != 0 && after != before, "MainPID {before} → {after}");
}

#[tokio::test]
async fn restarter_restarts_the_unit_a_component_runs_as() {
    let m = UserManager::start().await;
    let manifests = tempfile::tempdir().expect("tempdir");
    let r = restarter(&m, manifests.path());
    let now = datetime!(2026-03-01 12:00 UTC);

    m.write_unit("kubelet.service", SLEEPER).await;
    m.start_unit("kubelet.service").await;
    let outcome = r
        .restart(Component::Kubelet, Strategy::Unit, now)
        .await
        .expect("restart the kubelet");
    assert!(
        matches!(&outcome, Outcome::UnitRestarted(job) if job.unit == "kubelet.service"),
        "{outcome}"
    );
    assert_eq!(outcome.to_string(), "restarted kubelet.service: job done");

    // RKE2 installs both units and enables one: the active one is restarted.
    m.write_unit("rke2-server.service", SLEEPER).await;
    m.write_unit("rke2-agent.service", SLEEPER).await;
    m.start_unit("rke2-agent.service").await;
    let outcome = r
        .restart(Component::Rke2, Strategy::Unit, now)
        .await
        .expect("restart rke2");
    assert!(
        matches!(&outcome, Outcome::UnitRestarted(job) if job.unit == "rke2-agent.service"),
        "{outcome}"
    );

    let err = r
        .restart(Component::K3s, Strategy::Unit, now)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "restart k3s.service or k3s-agent.service: unit not found"
    );
    let err = r
        .restart(Component::Etcd, Strategy::Unit, now)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "restart etcd.service: unit not found");
}

#[tokio::test]
async fn restarter_reports_a_static_pod_that_is_not_running() {
    let m = UserManager::start().await;
    let systemd = connect(&m).await;
    let name = unique_name("absent");
    let actions = static_pod::restart(&systemd, Path::new("/proc"), &name, TIMEOUT)
        .await
        .expect("restart");
    assert!(actions.is_empty(), "{actions:?}");
    let outcome = Outcome::StaticPod {
        process: name.clone(),
        actions,
    };
    assert_eq!(
        outcome.to_string(),
        format!("{name} is not running: nothing to restart")
    );
}

/// A kube-apiserver manifest as kubeadm 1.30 writes it.
const KUBE_APISERVER_YAML: &str = "\
apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint: 192.168.56.10:6443
  creationTimestamp: null
  labels:
    component: kube-apiserver
    tier: control-plane
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --advertise-address=192.168.56.10
    - --allow-privileged=true
    - --authorization-mode=Node,RBAC
    - --client-ca-file=/etc/kubernetes/pki/ca.crt
    - --tls-cert-file=/etc/kubernetes/pki/apiserver.crt
    - --tls-private-key-file=/etc/kubernetes/pki/apiserver.key
    image: registry.k8s.io/kube-apiserver:v1.30.2
    imagePullPolicy: IfNotPresent
    livenessProbe:
      failureThreshold: 8
      httpGet:
        host: 192.168.56.10
        path: /livez
        port: 6443
        scheme: HTTPS
      initialDelaySeconds: 10
    name: kube-apiserver
    resources:
      requests:
        cpu: 250m
    volumeMounts:
    - mountPath: /etc/kubernetes/pki
      name: k8s-certs
      readOnly: true
  hostNetwork: true
  priority: 2000001000
  priorityClassName: system-node-critical
  securityContext:
    seccompProfile:
      type: RuntimeDefault
  volumes:
  - hostPath:
      path: /etc/kubernetes/pki
      type: DirectoryOrCreate
    name: k8s-certs
status: {}
";

#[tokio::test]
async fn the_manifest_strategy_changes_only_the_annotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kube-apiserver.yaml");
    std::fs::write(&path, KUBE_APISERVER_YAML).expect("write manifest");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let r = Restarter {
        bus: Some("unix:path=/nonexistent/the-manifest-strategy-needs-no-bus".into()),
        proc_root: "/proc".into(),
        manifests_dir: dir.path().to_path_buf(),
        job_timeout: TIMEOUT,
    };

    let now = datetime!(2026-03-01 12:00:00 UTC);
    let outcome = r
        .restart(Component::KubeApiserver, Strategy::Manifest, now)
        .await
        .expect("annotate");
    assert_eq!(outcome, Outcome::ManifestAnnotated { path: path.clone() });

    let after = std::fs::read_to_string(&path).expect("read manifest");
    let line = "    certrotd.io/restarted-at: \"2026-03-01T12:00:00Z\"\n";
    assert_eq!(
        after,
        KUBE_APISERVER_YAML.replacen("  annotations:\n", &format!("  annotations:\n{line}"), 1),
        "exactly one line added"
    );
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let mut old: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(KUBE_APISERVER_YAML).expect("parse");
    let mut new: serde_yaml_ng::Value = serde_yaml_ng::from_str(&after).expect("parse");
    assert_eq!(
        new["metadata"]["annotations"][RESTARTED_AT],
        serde_yaml_ng::Value::from("2026-03-01T12:00:00Z")
    );
    let annotations = |v: &mut serde_yaml_ng::Value| {
        v["metadata"]["annotations"]
            .as_mapping_mut()
            .expect("annotations")
            .remove(RESTARTED_AT);
    };
    annotations(&mut old);
    annotations(&mut new);
    assert_eq!(old, new, "everything but the annotation is as it was");

    // A second restart replaces the stamp rather than adding another.
    manifest::annotate(&path, datetime!(2026-04-01 00:00:00 +02:00)).expect("annotate again");
    let again = std::fs::read_to_string(&path).expect("read manifest");
    assert_eq!(
        again,
        after.replace("2026-03-01T12:00:00Z", "2026-03-31T22:00:00Z")
    );

    // Nothing but the manifest is left in the directory the kubelet watches.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("kube-apiserver.yaml")]);
}

#[tokio::test]
async fn a_missing_manifest_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = Restarter {
        bus: None,
        proc_root: "/proc".into(),
        manifests_dir: dir.path().to_path_buf(),
        job_timeout: TIMEOUT,
    };
    let err = r
        .restart(
            Component::Etcd,
            Strategy::Manifest,
            datetime!(2026-03-01 12:00 UTC),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RestartError::Manifest(_)), "{err}");
    let expected = format!(
        "read static pod manifest {}",
        dir.path().join("etcd.yaml").display()
    );
    assert!(err.to_string().starts_with(&expected), "{err}");
}

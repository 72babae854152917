//! Restarting components against a real systemd manager over D-Bus (tests/support/systemd.rs), and
//! the manifest strategy on real files.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use certrotd::pki::layout::Component;
use certrotd::restart::manifest::{self, RESTARTED_AT};
use certrotd::restart::pod_uid::{KubeletRecords, PodUids};
use certrotd::restart::static_pod::{self, Action, Host};
use certrotd::restart::systemd::{JobResult, KillWhom, Systemd, SystemdError};
use certrotd::restart::{Outcome, RestartError, Restarter, Strategy};
use certrotd::root::Root;
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

/// The name of the node the tests' static pods run on.
const NODE: &str = "cp-1";

/// A restarter for the node whose files are under `node` (manifests in `node/manifests`, the
/// kubelet's pod directories in `node/var/log/pods` and `node/var/lib/kubelet/pods`), named
/// [`NODE`], whose processes are this machine's.
fn restarter(m: &UserManager, node: &Path) -> Restarter {
    Restarter {
        bus: Some(m.bus_address().to_owned()),
        host: Host::default(),
        manifests_dir: node.join("manifests"),
        kubelet: KubeletRecords::for_root(&Root::new(node)),
        node_name: NODE.to_owned(),
        job_timeout: TIMEOUT,
    }
}

/// Kubelet records nobody wrote: for tests of strategies that do not read them.
fn no_kubelet_records() -> KubeletRecords {
    KubeletRecords {
        pod_logs_dir: "/nonexistent/var/log/pods".into(),
        pods_dir: "/nonexistent/var/lib/kubelet/pods".into(),
    }
}

/// What the kubelet makes on `node` for a pod it runs: its log directory
/// `<namespace>_<name>_<uid>` and its pod directory.
fn kubelet_pod(node: &Path, namespace: &str, name: &str, uid: &str) {
    let records = KubeletRecords::for_root(&Root::new(node));
    let logs = records
        .pod_logs_dir
        .join(format!("{namespace}_{name}_{uid}"));
    std::fs::create_dir_all(logs.join("main")).expect("mkdir pod log dir");
    std::fs::create_dir_all(records.pods_dir.join(uid).join("containers")).expect("mkdir pod dir");
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

/// A copy of `sleep` named `name` in `dir`: a process whose executable (not just its argv[0])
/// is the component's, as a container's is.
fn fake_binary(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::copy("/bin/sleep", &path).expect("copy /bin/sleep");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Waits until `pid` runs an executable named `exe` (systemd-run has exec'd it) and returns the
/// cgroup the kernel gives it.
async fn wait_exec(pid: u32, exe: &str) -> String {
    support::wait_for(&format!("PID {pid} to run {exe}"), TIMEOUT, || async move {
        let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        if link.file_name()? != exe {
            return None;
        }
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(str::to_owned)
    })
    .await
}

/// Static pod UIDs nobody found: enough for processes in no pod's container.
fn unknown() -> PodUids {
    PodUids::Unknown("no kubelet record in this test".to_owned())
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// A static pod UID (an md5 in hex, as the kubelet makes them) no other test uses.
fn pod_uid(salt: u32) -> String {
    format!("{:08x}{salt:08x}c0ffee00c0ffee00", std::process::id())
}

/// Starts `argv` in a transient scope of the manager, in `slice` when given (systemd-run execs
/// the command in place, so the child is the process).
fn run_scope(
    m: &UserManager,
    unit: &str,
    slice: Option<&str>,
    argv: &[&str],
) -> tokio::process::Child {
    let mut cmd = m.command("systemd-run");
    cmd.args(["--user", "--scope", "--quiet", "--unit", unit]);
    if let Some(slice) = slice {
        cmd.arg(format!("--slice={slice}"));
    }
    cmd.arg("--")
        .args(argv)
        .spawn()
        .expect("spawn systemd-run --scope")
}

#[tokio::test]
async fn only_the_static_pods_container_is_stopped_and_decoys_by_its_name_are_left_alone() {
    let m = UserManager::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    // The component's real name: decoys of other tests or of the host are left alone too.
    let name = "kube-apiserver";
    let bin = fake_binary(tmp.path(), name);
    let bin = bin.to_str().expect("utf-8 path");
    let uid = pod_uid(1);
    let other_uid = pod_uid(2);
    let container = format!("cri-containerd-{uid}.scope");

    // What runc does under the systemd cgroup driver: the container's scope in its pod's slice.
    let pod_slice = format!("kubepods-burstable-pod{uid}.slice");
    let mut real = run_scope(&m, &container, Some(&pod_slice), &[bin, "infinity"]);
    let real_pid = real.id().expect("pid");
    let cgroup = wait_exec(real_pid, name).await;
    assert!(
        cgroup.ends_with(&format!(
            "/kubepods.slice/kubepods-burstable.slice/{pod_slice}/{container}"
        )),
        "{cgroup}"
    );
    // `exec -a kube-apiserver sleep 1000` in an ssh session's scope.
    let mut renamed = run_scope(
        &m,
        &format!("session-{}.scope", std::process::id()),
        None,
        &["bash", "-c", &format!("exec -a {name} sleep 1000")],
    );
    let renamed_pid = renamed.id().expect("pid");
    wait_exec(renamed_pid, "sleep").await;
    // The component's very binary, run by hand in another scope.
    let mut by_hand = run_scope(
        &m,
        &format!("session-{}1.scope", std::process::id()),
        None,
        &[bin, "1000"],
    );
    let by_hand_pid = by_hand.id().expect("pid");
    wait_exec(by_hand_pid, name).await;
    // The same binary in another static pod's container (another manifest's, say).
    let mut other_pod = run_scope(
        &m,
        &format!("cri-containerd-{other_uid}.scope"),
        Some(&format!("kubepods-pod{other_uid}.slice")),
        &[bin, "1000"],
    );
    let other_pod_pid = other_pod.id().expect("pid");
    wait_exec(other_pod_pid, name).await;
    // And in an API pod's (a vcluster's): a random UUID, dashes written '_' in the slice name.
    let api_uid = format!("{:08x}-c0de-4000-8000-00000000c0de", std::process::id());
    let api_slice_uid = api_uid.replace('-', "_");
    let mut api_pod = run_scope(
        &m,
        &format!("cri-containerd-{api_slice_uid}.scope"),
        Some(&format!("kubepods-besteffort-pod{api_slice_uid}.slice")),
        &[bin, "1000"],
    );
    let api_pod_pid = api_pod.id().expect("pid");
    let api_cgroup = wait_exec(api_pod_pid, name).await;
    assert!(
        api_cgroup.contains("/kubepods.slice/kubepods-besteffort.slice/"),
        "{api_cgroup}"
    );

    // A kubeadm manifest, with no metadata.uid: the UID is the one the kubelet recorded in its
    // pod directories for "<name>-<node>" in kube-system.
    let node = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(node.path().join("manifests")).expect("mkdir manifests");
    std::fs::write(
        node.path().join("manifests").join(format!("{name}.yaml")),
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  creationTimestamp: null\n  name: {name}\n  namespace: kube-system\nspec:\n  containers:\n  - name: {name}\n"),
    )
    .expect("write manifest");
    kubelet_pod(node.path(), "kube-system", &format!("{name}-{NODE}"), &uid);
    kubelet_pod(node.path(), "kube-system", "kube-proxy-x7", &other_uid);
    kubelet_pod(node.path(), "vcluster", &format!("{name}-0"), &api_uid);
    let outcome = restarter(&m, node.path())
        .restart(
            Component::KubeApiserver,
            Strategy::KillScope,
            datetime!(2026-03-01 12:00 UTC),
        )
        .await
        .expect("restart the static pod");
    let Outcome::StaticPod {
        actions, decoys, ..
    } = &outcome
    else {
        panic!("{outcome}");
    };
    assert_eq!(
        actions,
        &vec![Action::ScopeKilled {
            pid: real_pid,
            unit: container.clone()
        }]
    );
    for pid in [renamed_pid, by_hand_pid, other_pod_pid, api_pod_pid] {
        let decoy = decoys
            .iter()
            .find(|d| d.pid == pid)
            .unwrap_or_else(|| panic!("PID {pid} reported as left alone: {outcome}"));
        assert!(!decoy.cgroup.is_empty(), "{decoy}");
    }
    assert!(
        outcome
            .to_string()
            .contains(&format!("left alone PID {renamed_pid} in ")),
        "{outcome}"
    );

    let status = tokio::time::timeout(TIMEOUT, real.wait())
        .await
        .expect("the container's process ends")
        .expect("wait");
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{status}");
    // A measurement window: a decoy signalled would have ended by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (pid, child) in [
        (renamed_pid, &mut renamed),
        (by_hand_pid, &mut by_hand),
        (other_pod_pid, &mut other_pod),
        (api_pod_pid, &mut api_pod),
    ] {
        assert!(
            child.try_wait().expect("try_wait").is_none() && alive(pid),
            "decoy {pid} was killed"
        );
    }
}

#[tokio::test]
async fn without_the_pods_uid_nothing_is_signalled_and_the_restart_says_why() {
    let m = UserManager::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let name = unique_name("anypod");
    let bin = fake_binary(tmp.path(), &name);
    let bin = bin.to_str().expect("utf-8 path");
    let uid = pod_uid(3);
    let mut in_pod = run_scope(
        &m,
        &format!("crio-{uid}.scope"),
        Some(&format!("kubepods-pod{uid}.slice")),
        &[bin, "infinity"],
    );
    let in_pod_pid = in_pod.id().expect("pid");
    wait_exec(in_pod_pid, &name).await;

    // A kubeadm manifest and no record of the pod by the kubelet (a wrong node_name, say).
    let node = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(node.path().join("manifests")).expect("mkdir manifests");
    let manifest = node.path().join("manifests").join(format!("{name}.yaml"));
    std::fs::write(
        &manifest,
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: kube-system\n"),
    )
    .expect("write manifest");
    let records = KubeletRecords::for_root(&Root::new(node.path()));
    kubelet_pod(
        node.path(),
        "kube-system",
        &format!("{name}-another-node"),
        &uid,
    );
    let pods = certrotd::restart::pod_uid::static_pod_uids(&manifest, NODE, &records);
    let PodUids::Unknown(why) = &pods else {
        panic!("a UID without the kubelet's record: {pods}");
    };

    let systemd = connect(&m).await;
    let err = static_pod::restart(&systemd, &Host::default(), &name, &pods)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RestartError::StaticPodUnknown { pids, why: w, .. } if *pids == vec![in_pod_pid] && w == why),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!(
            "the kubelet records no static pod kube-system/{name}-{NODE}"
        )),
        "{err}"
    );
    // A measurement window: a process signalled would have ended by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        in_pod.try_wait().expect("try_wait").is_none() && alive(in_pod_pid),
        "a process of an unidentified pod was killed"
    );

    // Once the kubelet's record is there, the same restart takes it.
    kubelet_pod(node.path(), "kube-system", &format!("{name}-{NODE}"), &uid);
    let pods = certrotd::restart::pod_uid::static_pod_uids(&manifest, NODE, &records);
    assert_eq!(pods, PodUids::Known(vec![uid.clone()]));
    let done = static_pod::restart(&systemd, &Host::default(), &name, &pods)
        .await
        .expect("restart");
    assert_eq!(
        done.actions,
        vec![Action::ScopeKilled {
            pid: in_pod_pid,
            unit: format!("crio-{uid}.scope")
        }]
    );
    let status = tokio::time::timeout(TIMEOUT, in_pod.wait())
        .await
        .expect("the container's process ends")
        .expect("wait");
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{status}");
}

#[tokio::test]
async fn an_external_etcd_service_is_no_static_pod_and_is_left_alone() {
    // External etcd runs as a unit: restarting it is the unit strategy's job, not kill-scope's.
    let m = UserManager::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let name = unique_name("service");
    let bin = fake_binary(tmp.path(), &name);
    m.write_unit(
        "external-etcd.service",
        &format!("[Service]\nExecStart={} infinity\n", bin.display()),
    )
    .await;
    m.start_unit("external-etcd.service").await;
    let before = m.main_pid("external-etcd.service").await;
    wait_exec(before, &name).await;

    let systemd = connect(&m).await;
    let done = static_pod::restart(&systemd, &Host::default(), &name, &unknown())
        .await
        .expect("restart");
    assert!(done.actions.is_empty(), "{:?}", done.actions);
    assert_eq!(done.decoys.len(), 1, "{:?}", done.decoys);
    assert_eq!(done.decoys[0].pid, before);
    assert!(
        done.decoys[0].cgroup.ends_with("/external-etcd.service"),
        "{}",
        done.decoys[0].cgroup
    );
    assert_eq!(m.main_pid("external-etcd.service").await, before);
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
    let done = static_pod::restart(&systemd, &Host::default(), &name, &unknown())
        .await
        .expect("restart");
    assert!(done.actions.is_empty(), "{done:?}");
    assert!(done.decoys.is_empty(), "{done:?}");
    let outcome = Outcome::StaticPod {
        process: name.clone(),
        actions: done.actions,
        decoys: done.decoys,
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
        host: Host::default(),
        manifests_dir: dir.path().to_path_buf(),
        kubelet: no_kubelet_records(),
        node_name: NODE.to_owned(),
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
        host: Host::default(),
        manifests_dir: dir.path().to_path_buf(),
        kubelet: no_kubelet_records(),
        node_name: NODE.to_owned(),
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

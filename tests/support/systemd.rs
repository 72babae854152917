//! A real systemd manager serving `org.freedesktop.systemd1` on a D-Bus bus of the test's own.
//!
//! PID 1 here is not systemd, but a systemd *user* manager serves the same D-Bus API. Each
//! [`UserManager`] runs one, as root, isolated from the host and from every other test:
//!
//! * its own directory holds the runtime dir, the configuration (unit files) and the bus socket;
//! * it runs in a private mount namespace with a tmpfs on `/run/systemd` holding `system/`: a user
//!   manager refuses to start (exit 1, silently) unless `/run/systemd/system` says the machine was
//!   booted with systemd, and the namespace keeps that lie from the host. The tmpfs also holds
//!   `inaccessible/` (the nodes PID 1 creates at boot), which a manager running as root mounts
//!   over what ProtectHome=, ProtectKernelTunables= and ProtectKernelLogs= hide: without them a
//!   unit using those options fails with status 226/NAMESPACE;
//! * it runs in a cgroup subtree of its own (`/<temp dir name>/init.scope` in every hierarchy; the
//!   name ends in `.slice`, so that journald, which names a process's unit from its cgroup path
//!   skipping the slices, finds `_SYSTEMD_UNIT=certrotd.service` for the manager's units). A
//!   manager takes the cgroup it starts in, minus `/init.scope`, as the root of everything it
//!   manages: started from the host's `/init.scope` it would claim the whole machine (every host
//!   process shows up in its `init.scope`), and parallel managers would share `/app.slice`;
//! * the bus is started by the manager itself, from a `dbus.socket` and `dbus.service` written into
//!   its configuration: a manager only puts its API on a bus once its own `dbus.socket` and
//!   `dbus.service` units run. A `dbus-daemon` started beside it is never used.
//!
//! * optionally ([`UserManager::start_with_journald`]) a real `systemd-journald` runs as one of
//!   its units: the namespace has the test's own directory on `/run/log` (journald keeps its
//!   volatile journal in `/run/log/journal`, read from outside with `journalctl -D`) and a
//!   `journald.conf.d` drop-in in the `/run/systemd` tmpfs (volatile storage, no forwarding, no
//!   kernel log), and journald creates its sockets in `/run/systemd/journal`, where the units'
//!   logs (native protocol and stdout streams) arrive.
//!
//! Drop stops the manager with SIGTERM (a user manager then stops all its units and exits), kills
//! by PID whatever is left in its cgroups, and removes them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long the manager may take to appear on its bus. Generous: parallel tests and builds share
/// two cores.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the manager may take to stop its units and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Candidates for the manager binary (Debian has both; others only one).
const SYSTEMD_BINARIES: &[&str] = &["/lib/systemd/systemd", "/usr/lib/systemd/systemd"];
/// Candidates for the journal daemon.
const JOURNALD_BINARIES: &[&str] = &[
    "/lib/systemd/systemd-journald",
    "/usr/lib/systemd/systemd-journald",
];
/// The journal daemon's unit in a manager started with it.
pub const JOURNALD_UNIT: &str = "test-journald.service";

/// Runs in the new mount namespace, then becomes the manager (same PID, so it can be stopped by
/// the PID the test holds).
const START_SCRIPT: &str = r#"set -e
for procs in $CERTROTD_CGROUP_PROCS; do echo $$ > "$procs"; done
mkdir -p /run/systemd
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mkdir /run/systemd/system
mkdir -m 0755 /run/systemd/inaccessible
mkdir -m 0000 /run/systemd/inaccessible/dir
install -m 0000 /dev/null /run/systemd/inaccessible/reg
mknod -m 0000 /run/systemd/inaccessible/chr c 0 0
mknod -m 0000 /run/systemd/inaccessible/blk b 0 0
mkfifo -m 0000 /run/systemd/inaccessible/fifo
if [ -n "$CERTROTD_JOURNAL_DIR" ]; then
  mkdir -p /run/log
  mount --bind "$CERTROTD_JOURNAL_DIR" /run/log
  mkdir /run/systemd/journald.conf.d
  printf '[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToSyslog=no\nForwardToKMsg=no\nForwardToConsole=no\nForwardToWall=no\nRateLimitIntervalSec=0\n' \
    > /run/systemd/journald.conf.d/certrotd-test.conf
fi
exec "$CERTROTD_SYSTEMD" --user
"#;

/// A running systemd user manager on a bus of its own.
pub struct UserManager {
    dir: tempfile::TempDir,
    bus: String,
    manager: Child,
    /// cgroup directories created for the manager, parents before children.
    cgroups: Vec<PathBuf>,
}

impl UserManager {
    /// Starts a manager and waits until it answers on its bus; panics with the reason (and the
    /// manager's output) when it cannot.
    pub async fn start() -> UserManager {
        Self::start_inner(false).await
    }

    /// Starts a manager, and a real systemd-journald as its unit [`JOURNALD_UNIT`] before any
    /// other: every unit started afterwards logs to it. Read it with [`UserManager::journalctl`].
    pub async fn start_with_journald() -> UserManager {
        let journald = JOURNALD_BINARIES
            .iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("no systemd-journald at {JOURNALD_BINARIES:?}: install systemd (make deps)")
            });
        find_program("journalctl").expect("journalctl not found: install systemd (make deps)");
        let manager = Self::start_inner(true).await;
        // Type=notify: the start job ends when journald has its sockets and says READY=1.
        manager
            .write_unit(
                JOURNALD_UNIT,
                &format!(
                    "[Unit]\nDescription=the test's systemd-journald\n\n[Service]\nType=notify\n\
                     ExecStart={journald}\nStandardOutput=null\n"
                ),
            )
            .await;
        manager.start_unit(JOURNALD_UNIT).await;
        manager
    }

    /// Where the journald of [`UserManager::start_with_journald`] keeps its journal files, for
    /// `journalctl -D`.
    pub fn journal_dir(&self) -> PathBuf {
        self.dir.path().join("log/journal")
    }

    /// `journalctl -D <journal dir> --no-pager ARGS`; panics when it fails, returns stdout.
    pub fn journalctl(&self, args: &[&str]) -> String {
        let out = Command::new("journalctl")
            .arg("-D")
            .arg(self.journal_dir())
            .arg("--no-pager")
            .args(args)
            .output()
            .expect("run journalctl");
        assert!(
            out.status.success(),
            "journalctl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn start_inner(journald: bool) -> UserManager {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the systemd test harness must run as root: it mounts a tmpfs in a mount namespace and creates cgroups"
        );
        let systemd = SYSTEMD_BINARIES
            .iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("no systemd binary at {SYSTEMD_BINARIES:?}: install systemd (make deps)")
            });
        let dbus_daemon =
            find_program("dbus-daemon").expect("dbus-daemon not found: install dbus (make deps)");
        for tool in ["setsid", "unshare", "mount", "systemctl"] {
            find_program(tool).unwrap_or_else(|| {
                panic!("{tool} not found: install util-linux and systemd (make deps)")
            });
        }

        let dir = tempfile::Builder::new()
            .prefix("certrotd-systemd-")
            .suffix(".slice")
            .tempdir()
            .expect("create the manager's temp dir");
        let d = dir.path();
        for sub in [
            "runtime",
            "config/systemd/user",
            "data",
            "state",
            "cache",
            "log",
        ] {
            std::fs::create_dir_all(d.join(sub)).expect("create manager dirs");
        }
        set_mode(&d.join("runtime"), 0o700);
        let socket = d.join("bus");
        let bus = format!("unix:path={}", socket.display());
        let units = d.join("config/systemd/user");
        std::fs::write(
            units.join("dbus.socket"),
            format!(
                "[Unit]\nDescription=certrotd test bus socket\n\n[Socket]\nListenStream={}\n",
                socket.display()
            ),
        )
        .expect("write dbus.socket");
        std::fs::write(
            units.join("dbus.service"),
            format!(
                "[Unit]\nDescription=certrotd test bus\nRequires=dbus.socket\n\n[Service]\n\
                 ExecStart={} --session --address=systemd: --nofork --nopidfile --systemd-activation\n",
                dbus_daemon.display()
            ),
        )
        .expect("write dbus.service");

        // The temp dir's name is unique on this machine, already says whose it is, and is a
        // slice's name (see the module's documentation).
        let name = d.file_name().expect("temp dir name").to_owned();
        let mut cgroups = Vec::new();
        let mut procs = Vec::new();
        for mount in cgroup_mounts() {
            let top = mount.join(&name);
            let scope = top.join("init.scope");
            std::fs::create_dir_all(&scope)
                .unwrap_or_else(|e| panic!("create cgroup {}: {e}", scope.display()));
            cgroups.push(top);
            cgroups.push(scope.clone());
            procs.push(scope.join("cgroup.procs").display().to_string());
        }
        assert!(
            !procs.is_empty(),
            "no cgroup hierarchy found in /proc/self/mountinfo"
        );

        let log = std::fs::File::create(d.join("manager.log")).expect("create manager.log");
        let manager = Command::new("setsid")
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                START_SCRIPT,
            ])
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("HOME", d)
            .env("LANG", "C.UTF-8")
            .env("XDG_RUNTIME_DIR", d.join("runtime"))
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("XDG_DATA_HOME", d.join("data"))
            .env("XDG_STATE_HOME", d.join("state"))
            .env("XDG_CACHE_HOME", d.join("cache"))
            .env("DBUS_SESSION_BUS_ADDRESS", &bus)
            // Console, not the journal or /dev/kmsg: the host's logs are not the test's.
            .env("SYSTEMD_LOG_TARGET", "console")
            .env("SYSTEMD_LOG_LEVEL", "info")
            .env("CERTROTD_SYSTEMD", systemd)
            .env("CERTROTD_CGROUP_PROCS", procs.join(" "))
            .env(
                "CERTROTD_JOURNAL_DIR",
                if journald {
                    d.join("log").into_os_string()
                } else {
                    std::ffi::OsString::new()
                },
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup manager.log"))
            .stderr(log)
            .spawn()
            .expect("spawn setsid unshare sh (the systemd user manager)");

        let mut this = UserManager {
            dir,
            bus,
            manager,
            cgroups,
        };
        this.wait_ready().await;
        this
    }

    /// Polls (the manager gives no readiness signal of its own to a process that is not its
    /// parent service manager) until `org.freedesktop.systemd1` is on the bus.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("bus socket not created yet");
        loop {
            if let Some(status) = self.manager.try_wait().expect("wait for the manager") {
                // It says nothing when it refuses to run for want of /run/systemd/system.
                panic!(
                    "the systemd user manager exited during start-up ({status}); it does so without a \
                     word when /run/systemd/system is missing in its mount namespace. Its output:\n{}",
                    self.log()
                );
            }
            if self.dir.path().join("bus").exists() {
                // The first connection makes the manager start dbus.service for its socket.
                match self.systemd_on_bus().await {
                    Ok(true) => break,
                    Ok(false) => last = "org.freedesktop.systemd1 not on the bus yet".into(),
                    Err(e) => last = format!("bus not answering: {e}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "the systemd user manager did not appear on {} within {START_TIMEOUT:?} ({last}); its output:\n{}",
                self.bus,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.manager.id()))
            .unwrap_or_default();
        assert_eq!(
            comm.trim(),
            "systemd",
            "the PID the harness holds must be the manager itself"
        );
    }

    async fn systemd_on_bus(&self) -> zbus::Result<bool> {
        let conn = zbus::connection::Builder::address(self.bus.as_str())
            .build()
            .await?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        Ok(dbus
            .name_has_owner("org.freedesktop.systemd1".try_into()?)
            .await?)
    }

    /// The D-Bus address of the manager's bus, for `Systemd::connect(Some(..))`.
    pub fn bus_address(&self) -> &str {
        &self.bus
    }

    /// The manager's PID.
    pub fn pid(&self) -> u32 {
        self.manager.id()
    }

    /// What the manager wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("manager.log")).unwrap_or_default()
    }

    /// Writes a unit file where the manager looks for them and reloads the manager.
    pub async fn write_unit(&self, name: &str, contents: &str) {
        let path = self.dir.path().join("config/systemd/user").join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self.systemctl(&["daemon-reload"]).await;
    }

    /// `systemctl --user ARGS` against this manager (through its private socket, independently of
    /// certrotd's D-Bus client); panics when it fails, returns stdout.
    pub async fn systemctl(&self, args: &[&str]) -> String {
        let out = self
            .command("systemctl")
            .arg("--user")
            .args(args)
            .output()
            .await
            .expect("run systemctl");
        assert!(
            out.status.success(),
            "systemctl --user {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a unit and waits for its start job.
    pub async fn start_unit(&self, name: &str) {
        self.systemctl(&["start", name]).await;
    }

    /// One property of a unit, as `systemctl show` prints it.
    pub async fn show(&self, unit: &str, property: &str) -> String {
        self.systemctl(&["show", "--value", "-p", property, unit])
            .await
            .trim()
            .to_owned()
    }

    /// A service's main PID (0: none).
    pub async fn main_pid(&self, unit: &str) -> u32 {
        self.show(unit, "MainPID")
            .await
            .parse()
            .expect("MainPID is a number")
    }

    /// A command with this manager's environment (for `systemctl --user`, `systemd-run --user`).
    pub fn command(&self, program: &str) -> tokio::process::Command {
        let d = self.dir.path();
        let mut cmd = tokio::process::Command::new(program);
        cmd.env("XDG_RUNTIME_DIR", d.join("runtime"))
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
            .env_remove("DBUS_SYSTEM_BUS_ADDRESS")
            .kill_on_drop(true);
        cmd
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.manager.id() as i32);
        // A user manager answers SIGTERM by starting exit.target: it stops its units, then exits.
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(self.manager.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.manager.try_wait(), Ok(None)) {
            eprintln!(
                "systemd user manager {pid} ignored SIGTERM for {STOP_TIMEOUT:?}; killing it"
            );
            let _ = self.manager.kill();
            let _ = self.manager.wait();
        }
        // Anything the manager left behind ran in its cgroups; the host's processes never do.
        for cg in self.cgroups.iter().rev() {
            for p in cgroup_pids(cg) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
        for cg in self.cgroups.iter().rev() {
            remove_cgroup(cg);
        }
    }
}

/// Where the cgroup hierarchies that track processes are mounted: the v2 one, and the v1 `name=systemd`
/// one on legacy and hybrid hosts.
fn cgroup_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let mut out = Vec::new();
    for line in info.lines() {
        // "... mount-point options optional-fields - fstype source super-options"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4).unwrap_or_default();
        let mut fields = right.split(' ');
        let fstype = fields.next().unwrap_or_default();
        let super_opts = fields.nth(1).unwrap_or_default();
        let tracks = fstype == "cgroup2"
            || (fstype == "cgroup" && super_opts.split(',').any(|o| o == "name=systemd"));
        if tracks {
            out.push(PathBuf::from(mount_point.replace("\\040", " ")));
        }
    }
    out
}

/// Every PID in a cgroup and its descendants.
fn cgroup_pids(cg: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = std::fs::read_dir(cg) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(cgroup_pids(&e.path()));
            }
        }
    }
    pids
}

/// Removes a cgroup and any children the manager left, deepest first; killed processes take a
/// moment to leave, so it retries briefly.
fn remove_cgroup(cg: &Path) {
    if let Ok(entries) = std::fs::read_dir(cg) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(cg) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > deadline => {
                eprintln!("cannot remove cgroup {}: {e}", cg.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Where `program` is: on PATH, else in the usual bin and sbin directories.
pub fn find_program(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

//! What the packages ship, checked with the tools operators and distributions use: the man pages
//! (rendered by groff and man), the completions (loaded by bash, parsed by zsh and fish), the
//! systemd unit (`systemd-analyze verify` and `security`), and the packaged unit running the real
//! binary under a real systemd manager (tests/support/systemd.rs) until READY, with `certrotd
//! status` answering through the socket.
//!
//! The .deb and .rpm themselves (lintian, rpm queries, install/upgrade/purge with dpkg in a
//! debootstrapped Debian root) are checked by scripts/test-package.sh, which `make test` runs
//! after `cargo test`.

use crate::support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use certrotd::cli::Cli;
use clap::CommandFactory as _;
use support::systemd::UserManager;

const BIN: &str = env!("CARGO_BIN_EXE_certrotd");
/// The unit the packages install.
const UNIT: &str = include_str!("../../packaging/systemd/certrotd.service");
/// The drop-in for the manifest restart strategy the packages ship as an example.
const MANIFEST_DROP_IN: &str =
    include_str!("../../packaging/systemd/examples/manifest-strategy.conf");
/// The drop-in for extra_paths the packages ship as an example.
const EXTRA_PATHS_DROP_IN: &str = include_str!("../../packaging/systemd/examples/extra-paths.conf");
/// The subcommands the README documents; the man pages must cover them (and any added later).
const DOCUMENTED: &[&str] = &[
    "check", "config", "renew", "restore", "recover", "run", "status", "rotate", "history",
    "sandbox",
];
/// The exposure score the issue asks for ("OK" in systemd-analyze's words).
const MAX_EXPOSURE: f64 = 4.0;

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e} (make deps installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `certrotd generate man` into DIR/man1 (a MANPATH entry's shape).
fn generate_man(dir: &Path) -> PathBuf {
    let man1 = dir.join("man1");
    run(Command::new(BIN)
        .args(["generate", "man", "--out"])
        .arg(&man1));
    man1
}

/// Every visible subcommand as its page's name suffix ("check", "config-check", …) with the long
/// options it takes.
fn visible_commands(cmd: &clap::Command, prefix: &str, out: &mut Vec<(String, Vec<String>)>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("{prefix}{}", sub.get_name());
        let longs = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        out.push((name.clone(), longs));
        visible_commands(sub, &format!("{name}-"), out);
    }
}

/// The page rendered by `man -l`, as a reader sees it (plain text, no pager).
fn man_text(page: &Path) -> String {
    let out = run(Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "200")
        .env("LANG", "C.UTF-8"));
    // man's plain output still carries overstrikes when formatting for a terminal; drop them.
    let raw = text(&out);
    let mut clean = String::new();
    for c in raw.chars() {
        if c == '\u{8}' {
            clean.pop();
        } else {
            clean.push(c);
        }
    }
    clean.replace(['\u{2010}', '\u{2212}'], "-")
}

#[test]
fn man_pages_render_and_cover_every_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let man1 = generate_man(tmp.path());

    let mut commands = Vec::new();
    visible_commands(&Cli::command(), "", &mut commands);
    let cli = Cli::command();
    let top: BTreeSet<&str> = cli
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name())
        .collect();
    for doc in DOCUMENTED {
        assert!(top.contains(doc), "subcommand {doc} missing from the CLI");
    }
    assert!(
        !top.contains("generate"),
        "the packaging helper stays hidden"
    );

    let mut pages = vec![("certrotd.1".to_owned(), Vec::new())];
    pages.extend(
        commands
            .iter()
            .map(|(name, longs)| (format!("certrotd-{name}.1"), longs.clone())),
    );
    let written: BTreeSet<String> = std::fs::read_dir(&man1)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = pages.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(written, expected, "one page per visible (sub)command");

    for (page, longs) in &pages {
        let path = man1.join(page);
        // groff as the strict judge: -ww turns on every warning, -z discards the output.
        let out = run(Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path));
        assert!(
            out.stderr.is_empty(),
            "{page}: groff warns:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shown = man_text(&path);
        assert!(
            shown.contains("NAME"),
            "{page} has no NAME section:\n{shown}"
        );
        for long in longs {
            assert!(
                shown.contains(long.as_str()),
                "{page} does not mention {long}:\n{shown}"
            );
        }
    }
    let main = man_text(&man1.join("certrotd.1"));
    for sub in &top {
        assert!(
            main.contains(&format!("certrotd-{sub}(1)")),
            "certrotd(1) does not list {sub}:\n{main}"
        );
    }
    assert!(main.contains("SUBCOMMANDS"), "{main}");
}

#[test]
fn completions_load_in_bash_zsh_and_fish() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for shell in ["bash", "zsh", "fish"] {
        run(Command::new(BIN)
            .args(["generate", "completions", shell, "--out"])
            .arg(dir));
    }
    let bash = dir.join("certrotd.bash");
    // Loaded as bash-completion loads it, then asked to complete `certrotd ch` and
    // `certrotd status --o`.
    let script = format!(
        r#"set -e
source {}
complete -p certrotd
fn=$(complete -p certrotd | sed -n 's/.*-F \([^ ]*\) .*/\1/p')
COMP_WORDS=(certrotd ch); COMP_CWORD=1; COMP_LINE="certrotd ch"; COMP_POINT=${{#COMP_LINE}}
"$fn" certrotd ch certrotd
echo "words: ${{COMPREPLY[*]}}"
COMP_WORDS=(certrotd status --o); COMP_CWORD=2; COMP_LINE="certrotd status --o"; COMP_POINT=${{#COMP_LINE}}
"$fn" certrotd --o status
echo "options: ${{COMPREPLY[*]}}"
"#,
        bash.display()
    );
    let out = text(&run(Command::new("bash").args(["--norc", "-c", &script])));
    assert!(out.contains(" -F _certrotd certrotd\n"), "{out}");
    let words = out.lines().find(|l| l.starts_with("words: ")).unwrap();
    assert!(words.split(' ').any(|w| w == "check"), "{out}");
    assert!(
        !words.split(' ').any(|w| w == "run"),
        "only what matches ch: {out}"
    );
    let options = out.lines().find(|l| l.starts_with("options: ")).unwrap();
    assert!(options.split(' ').any(|w| w == "--output"), "{out}");

    // zsh and fish parse theirs without running them.
    run(Command::new("zsh").arg("-n").arg(dir.join("_certrotd")));
    run(Command::new("fish")
        .arg("--no-execute")
        .arg(dir.join("certrotd.fish")));
    let fish = std::fs::read_to_string(dir.join("certrotd.fish")).unwrap();
    assert!(fish.contains("complete -c certrotd"), "{fish}");
}

/// The packaged unit with ExecStart pointing at the built binary (verify checks it exists).
fn unit_with_built_binary() -> String {
    let unit = UNIT.replace(
        "ExecStart=/usr/bin/certrotd run",
        &format!("ExecStart={BIN} run"),
    );
    assert_ne!(unit, UNIT, "the unit runs /usr/bin/certrotd run");
    unit
}

#[test]
fn unit_verifies_cleanly_and_its_exposure_is_ok() {
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("certrotd.service");
    std::fs::write(&unit, unit_with_built_binary()).unwrap();
    // verify also runs `man certrotd(1)` for Documentation=: give it the generated page.
    let man = tmp.path().join("man");
    generate_man(&man);
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .current_dir(tmp.path())
        .env("MANPATH", &man)
        .env("SYSTEMD_LOG_LEVEL", "notice"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");

    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .current_dir(tmp.path()));
    let report = text(&out);
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for certrotd.service:"))
        .unwrap_or_else(|| panic!("no exposure line in:\n{report}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{report}"
    );
    eprintln!("{}", line.trim());
}

/// The paths of every `KEY=` line of a unit or drop-in, in order; an empty assignment (which
/// resets the list) clears what came before, as systemd reads it.
fn paths_of(text: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix(&format!("{key}=")) {
            if value.trim().is_empty() {
                out.clear();
            }
            out.extend(value.split_whitespace().map(str::to_owned));
        }
    }
    out
}

#[test]
fn the_drop_ins_widen_only_what_they_say() {
    // The manifest strategy's drop-in restates the unit's read-only paths but the manifests.
    let unit = paths_of(UNIT, "ReadOnlyPaths");
    assert!(
        unit.contains(&"-/etc/kubernetes/manifests".to_owned()),
        "{unit:?}"
    );
    let want: Vec<String> = unit
        .into_iter()
        .filter(|p| p != "-/etc/kubernetes/manifests")
        .collect();
    let with_drop_in = paths_of(&format!("{UNIT}\n{MANIFEST_DROP_IN}"), "ReadOnlyPaths");
    assert_eq!(with_drop_in, want);
    assert_eq!(
        paths_of(&format!("{UNIT}\n{MANIFEST_DROP_IN}"), "ReadWritePaths"),
        paths_of(UNIT, "ReadWritePaths"),
        "it writes nothing else"
    );
    // The extra_paths example changes nothing until the operator says which directory.
    assert!(paths_of(EXTRA_PATHS_DROP_IN, "ReadWritePaths").is_empty());
    assert!(EXTRA_PATHS_DROP_IN.contains("#ReadWritePaths=-/"));
    // The unit with either drop-in (a drop-in reads as if appended to the unit) verifies.
    for drop_in in [MANIFEST_DROP_IN, EXTRA_PATHS_DROP_IN] {
        let tmp = tempfile::tempdir().unwrap();
        let unit = tmp.path().join("certrotd.service");
        std::fs::write(&unit, format!("{}\n{drop_in}", unit_with_built_binary())).unwrap();
        let man = tmp.path().join("man");
        generate_man(&man);
        let out = run(Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .current_dir(tmp.path())
            .env("MANPATH", &man)
            .env("SYSTEMD_LOG_LEVEL", "notice"));
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");
    }
}

/// Options of the packaged unit left out under the harness, each with the reason. Every other
/// line is kept as it is, except ExecStart (the built binary on the sandbox's configuration),
/// ReadWritePaths (the sandbox node instead of the real PKI directories) and ReadOnlyPaths (the
/// same paths inside the sandbox node, so that they are checked). The root user manager
/// honours all the rest: ProtectSystem/Home, the ProtectKernel*, PrivateDevices/Mounts,
/// ProcSubset, the system call filter and the capability bounding set (checked on the process).
const DROPPED: &[(&str, &str)] = &[(
    "PrivateTmp",
    "the harness's manager lives under /tmp, so its notify socket ($XDG_RUNTIME_DIR/systemd/notify) \
     would be hidden from the service and READY=1 would never arrive",
)];

/// ProtectHome=yes hides /home, /root and /run/user: a checkout there (built binary, sandbox
/// node) would be out of the service's reach, so the option is left out in that case only.
fn under_home() -> bool {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    ["/home", "/root", "/run/user"]
        .iter()
        .any(|h| here.starts_with(h))
}

/// The packaged unit for the harness's user manager: the built binary on a sandbox node's
/// configuration, the node's directory as the one writable path, and the [`DROPPED`] options
/// left out.
fn unit_for_user_manager(
    unit: &str,
    config: &Path,
    node: &Path,
    log: &Path,
) -> (String, Vec<String>) {
    let mut kept = Vec::new();
    let mut out = String::new();
    for line in unit.lines() {
        let key = line.split('=').next().unwrap_or_default().trim();
        if DROPPED.iter().any(|(k, _)| *k == key) || (key == "ProtectHome" && under_home()) {
            continue;
        }
        if key == "ExecStart" {
            out.push_str(&format!(
                "ExecStart={BIN} run --config {}\n",
                config.display()
            ));
        } else if key == "ReadWritePaths" {
            out.push_str(&format!("ReadWritePaths={}\n", node.display()));
        } else if key == "ReadOnlyPaths" {
            let inside: Vec<String> = paths_of(line, key)
                .iter()
                .map(|p| format!("-{}{}", node.display(), p.trim_start_matches('-')))
                .collect();
            out.push_str(&format!("ReadOnlyPaths={}\n", inside.join(" ")));
            kept.push(key.to_owned());
        } else {
            if !line.starts_with('#') && line.contains('=') {
                kept.push(key.to_owned());
            }
            out.push_str(line);
            out.push('\n');
        }
        if line == "[Service]" {
            out.push_str(&format!(
                "StandardOutput=append:{}\nStandardError=inherit\n",
                log.display()
            ));
        }
    }
    (out, kept)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packaged_unit_reaches_ready_under_systemd_and_answers_status() {
    // Not under /tmp: the unit's ProtectSystem=strict leaves writable only ReadWritePaths, and
    // the node must be visible the same way to the test and the service.
    let tmp = tempfile::Builder::new()
        .prefix("certrotd-package-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let node = tmp.path().join("node");
    run(Command::new(BIN).args(["sandbox", "--dir"]).arg(&node));
    let node = node.canonicalize().unwrap();
    let config = node.join("certrotd.toml");
    let log = tmp.path().join("certrotd.log");

    let manager = UserManager::start().await;
    // The paths the unit keeps read-only, inside the node, as kubeadm and RKE2 have them.
    for dir in ["etc/kubernetes/manifests", "etc/kubernetes/tmp"] {
        std::fs::create_dir_all(node.join(dir)).unwrap();
    }
    let (unit, kept) = unit_for_user_manager(UNIT, &config, &node, &log);
    assert!(under_home() || kept.iter().any(|k| k == "ProtectHome"));
    for hardening in [
        "ProtectSystem",
        "NoNewPrivileges",
        "CapabilityBoundingSet",
        "SystemCallFilter",
        "RestrictAddressFamilies",
        "UMask",
        "WatchdogSec",
        "StateDirectory",
        "RuntimeDirectory",
    ] {
        assert!(kept.iter().any(|k| k == hardening), "{hardening} dropped");
    }
    manager.write_unit("certrotd.service", &unit).await;
    // Type=notify: the start job ends when certrotd says READY=1 (or fails).
    let started = manager
        .command("systemctl")
        .args(["--user", "start", "certrotd.service"])
        .output()
        .await
        .unwrap();
    let status = || async {
        let out = manager
            .command("systemctl")
            .args([
                "--user",
                "status",
                "--no-pager",
                "--full",
                "certrotd.service",
            ])
            .output()
            .await
            .unwrap();
        let props = manager
            .command("systemctl")
            .args([
                "--user",
                "show",
                "certrotd.service",
                "-p",
                "Result,ExecMainCode,ExecMainStatus,StatusErrno",
            ])
            .output()
            .await
            .unwrap();
        format!(
            "{}{}{}",
            text(&out),
            String::from_utf8_lossy(&out.stderr),
            text(&props)
        )
    };
    assert!(
        started.status.success(),
        "start: {}\n{}\n{}\ncertrotd's log:\n{}\nmanager's log:\n{}",
        started.status,
        String::from_utf8_lossy(&started.stderr),
        status().await,
        std::fs::read_to_string(&log).unwrap_or_default(),
        manager.log()
    );
    assert_eq!(
        manager.show("certrotd.service", "ActiveState").await,
        "active"
    );
    let status_text = manager.show("certrotd.service", "StatusText").await;
    assert!(!status_text.is_empty(), "no STATUS= line");
    let shown = status().await;
    assert!(
        shown.contains(&format!("Status: \"{status_text}\"")),
        "systemctl status:\n{shown}"
    );

    // The hardening the manager applied is visible on the process itself.
    let pid = manager.main_pid("certrotd.service").await;
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        proc_status.lines().any(|l| l == "NoNewPrivs:\t1"),
        "{proc_status}"
    );
    let cap_bnd = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:\t"))
        .unwrap();
    // CAP_CHOWN 0, CAP_DAC_OVERRIDE 1, CAP_DAC_READ_SEARCH 2, CAP_FOWNER 3, CAP_KILL 5.
    assert_eq!(cap_bnd, "000000000000002f", "{proc_status}");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(core[4..6], ["0", "0"], "LimitCORE=0: {limits}");
    assert_eq!(
        manager.show("certrotd.service", "MemoryMax").await,
        (256u64 << 20).to_string()
    );
    // What the service may write, seen from inside its own mount namespace: the PKI and the
    // directory its kubeconfigs are renamed in, but not the static pod manifests.
    assert_eq!(writable(pid, &node.join("etc/kubernetes/pki")), Ok(()));
    assert_eq!(writable(pid, &node.join("etc/kubernetes")), Ok(()));
    for ro in ["etc/kubernetes/manifests", "etc/kubernetes/tmp"] {
        let e = writable(pid, &node.join(ro)).unwrap_err();
        assert!(e.contains("Read-only file system"), "{ro}: {e}");
    }

    // certrotd status, through the socket the daemon made inside the sandbox.
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(BIN)
            .args(["status", "--config"])
            .arg(&config)
            .output(),
    )
    .await
    .expect("certrotd status within 30 s")
    .unwrap();
    let said = text(&status);
    assert_eq!(
        status.status.code(),
        Some(0),
        "certrotd status: {}\n{said}\n{}",
        status.status,
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(said.contains("apiserver"), "{said}");

    manager.systemctl(&["stop", "certrotd.service"]).await;
    assert_eq!(
        manager.show("certrotd.service", "ActiveState").await,
        "inactive"
    );

    // With the manifest strategy's drop-in (read as if appended to the unit), the manifests are
    // writable and the rest stays as it was.
    let (unit, _) =
        unit_for_user_manager(&format!("{UNIT}\n{MANIFEST_DROP_IN}"), &config, &node, &log);
    manager.write_unit("certrotd.service", &unit).await;
    manager.systemctl(&["start", "certrotd.service"]).await;
    let pid = manager.main_pid("certrotd.service").await;
    assert_eq!(
        writable(pid, &node.join("etc/kubernetes/manifests")),
        Ok(())
    );
    let e = writable(pid, &node.join("etc/kubernetes/tmp")).unwrap_err();
    assert!(e.contains("Read-only file system"), "{e}");
    manager.systemctl(&["stop", "certrotd.service"]).await;
}

/// Whether the process `pid` may create a file in `dir`, tried in its mount namespace (where
/// systemd made its read-only and writable paths); the error is what the shell said.
fn writable(pid: u32, dir: &Path) -> Result<(), String> {
    let probe = dir.join(".certrotd-package-test");
    let out = Command::new(support::which("nsenter"))
        .args([
            "-t",
            &pid.to_string(),
            "-m",
            "--",
            "sh",
            "-c",
            "echo > \"$1\" && rm \"$1\"",
        ])
        .arg("sh")
        .arg(&probe)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

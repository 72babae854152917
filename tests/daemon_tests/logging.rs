//! Logs on stderr are plain text unless stderr is a terminal and `NO_COLOR` is unset: a log
//! redirected to a file or a pipe (`make run > log`) carries no colour escapes.
// Helpers outside #[test] functions panic on purpose too (clippy's allow-unwrap-in-tests
// covers only #[test] bodies).

use crate::support;

use std::process::Command;

use certrotd::pki::encode::KeySpec;
use certrotd::sandbox::SandboxOptions;
use support::renewal::Node;

/// What every ANSI colour sequence starts with.
const ESC: &str = "\x1b[";

/// `certrotd renew --cert apiserver` on a fresh sandbox (it logs its rotation at info), returning
/// what it wrote to stderr. On a terminal, `script` gives it a pseudo-terminal and relays what it
/// shows.
fn renew_log(terminal: bool, no_color: Option<&str>) -> String {
    // ECDSA keeps the key generation quick: the algorithm does not matter here.
    let node = Node::sandbox(&SandboxOptions {
        key: KeySpec::EcdsaP256,
        ..SandboxOptions::default()
    });
    let config = node.root.join("certrotd.toml");
    let args = [
        env!("CARGO_BIN_EXE_certrotd"),
        "renew",
        "--cert",
        "apiserver",
        "--root",
        node.root.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let mut c = if terminal {
        let mut c = Command::new(support::which("script"));
        // Temp paths hold no characters the shell would interpret.
        c.args(["-q", "-e", "-c", &args.join(" "), "/dev/null"]);
        c
    } else {
        let mut c = Command::new(args[0]);
        c.args(&args[1..]);
        c
    };
    c.env("CERTROTD_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .env_remove("INVOCATION_ID");
    if let Some(v) = no_color {
        c.env("NO_COLOR", v);
    }
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let log = if terminal { stdout } else { stderr };
    assert!(log.contains("rotation committed"), "{log}");
    log
}

#[test]
fn logs_to_a_pipe_carry_no_colour() {
    let log = renew_log(false, None);
    assert!(!log.contains(ESC), "{log:?}");
    assert!(log.contains(" INFO "), "{log:?}");
}

#[test]
fn a_terminal_gets_colour_unless_no_color_is_set() {
    assert!(
        renew_log(true, None).contains(ESC),
        "a terminal is coloured"
    );
    assert!(
        renew_log(true, Some("")).contains(ESC),
        "an empty NO_COLOR is unset"
    );
    let log = renew_log(true, Some("1"));
    assert!(!log.contains(ESC), "{log:?}");
}

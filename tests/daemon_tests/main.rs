//! The daemon (`certrotd run`) and what surrounds it: the state machine under systemd, peers and the etcd lease, the control socket and its bounds, logging, watching files, the guard, the remote CA before the lease, hardening.
//!
//! One test binary for these modules, so that tests/support is compiled once for all of them
//! rather than once per file (issue 12). A new test file of this kind goes here as
//! `tests/daemon_tests/<name>.rs` with `mod <name>;` below; in it, `use crate::support;` stands for the
//! `mod support;` a top-level test file has, and the clippy allowance below covers it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Each binary uses a different part of the shared harness, so each leaves some of it unused;
// no item of it is unused by all three (a check of each binary without this allowance has no
// warning in common), so none is dead. Allowed for the harness only, not for the tests below.
#[allow(dead_code)]
#[path = "../support/mod.rs"]
mod support;

mod bounds;
mod ca_control;
mod ca_rotation;
mod cfssl_before_lease;
mod control;
mod daemon;
mod harden;
mod hot_reload;
mod journald;
mod lease;
mod logging;
mod metrics;
mod peers;
mod renew_guard;
mod state_machine;
mod watch;

//! certrotd's commands on node files: renewal (local and remote CA) on sandbox and real-world sets, crash safety, planted links, broken input, the inventory, the sandbox generator, the issuer, the fuzz corpora.
//!
//! One test binary for these modules, so that tests/support is compiled once for all of them
//! rather than once per file (issue 12). A new test file of this kind goes here as
//! `tests/node_tests/<name>.rs` with `mod <name>;` below; in it, `use crate::support;` stands for the
//! `mod support;` a top-level test file has, and the clippy allowance below covers it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Each binary uses a different part of the shared harness, so each leaves some of it unused;
// no item of it is unused by all three (a check of each binary without this allowance has no
// warning in common), so none is dead. Allowed for the harness only, not for the tests below.
#[allow(dead_code)]
#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod cfssl;
mod crash;
mod fixtures;
mod fuzz_corpus;
mod issuer;
mod planted_links;
mod renew;
mod renew_fixtures;
mod renew_session;
mod sandbox;
mod wire_golden;

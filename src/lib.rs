//! certrotd keeps a Kubernetes node's certificates from ever expiring.
//!
//! The flow, which the module layout follows:
//! discover (`inventory`) → assess (`policy`, `decide`) → plan (`rotation::plan`) → lease
//! (`lease`) → issue (`issuer`, `rotation::obtain`) → install (`store`, `rotation`) → restart
//! (`restart`) → verify (`restart::probe`) → record (`history`, `events`), driven by the daemon's
//! state machine (`daemon`).
#![deny(missing_docs)]

pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod decide;
pub mod duration;
pub mod events;
pub mod failpoint;
pub mod fuzzing;
pub mod history;
pub mod inventory;
pub mod issuer;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod report;
pub mod restart;
pub mod root;
pub mod rotation;
pub mod sandbox;
pub mod store;
pub mod timefmt;
pub mod watch;
pub mod window;

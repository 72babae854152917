//! Crash-safe file store (see [`backup`] for the whole story until it is split).

mod backup;

pub use backup::*;

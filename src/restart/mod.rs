//! Restarting the components that read a renewed certificate: systemd units through D-Bus, static
//! pods by stopping their container's scope or by annotating their manifest.

pub mod manifest;
pub mod systemd;

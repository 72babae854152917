//! `certrotd sandbox`: a throwaway kubeadm-shaped node to try certrotd on.

use std::path::Path;
use std::process::ExitCode;

use time::OffsetDateTime;

use super::{EXIT_CONFIG, Failure, Outcome};
use crate::sandbox::{self, SandboxOptions};

/// Runs `certrotd sandbox`.
pub fn run(dir: &Path, leaf_ttl: &str, node_name: &str, now: OffsetDateTime) -> Outcome {
    let leaf_ttl = crate::duration::parse(leaf_ttl).map_err(|e| Failure {
        code: EXIT_CONFIG,
        error: anyhow::anyhow!("--leaf-ttl {leaf_ttl:?}: {e}"),
    })?;
    let opts = SandboxOptions {
        node_name: node_name.to_owned(),
        leaf_ttl,
        ..SandboxOptions::default()
    };
    let sb = sandbox::write(dir, &opts, now)?;
    println!(
        "wrote a kubeadm-shaped control-plane node ({} files) under {}",
        sb.files.len(),
        sb.dir.display()
    );
    println!("try: certrotd check --config {}", sb.config_path.display());
    Ok(ExitCode::SUCCESS)
}

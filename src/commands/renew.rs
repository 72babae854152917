//! `certrotd renew`: plan, then (unless `--dry-run`) run a rotation, and say what to restart.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use time::OffsetDateTime;

use super::recover::{dirs, join, lock_and_finish_interrupted};
use super::{EXIT_CONFIG, Failure, Outcome, load_settings};
use crate::cli::RenewArgs;
use crate::inventory::Inventory;
use crate::report::table;
use crate::root::Root;
use crate::rotation::execute::{self, Report};
use crate::rotation::journal::{self, Journal};
use crate::rotation::plan::{self, Install, Item, Plan, PlanOptions};
use crate::rotation::select::SelectError;
use crate::rotation::session;
use crate::rotation::{Selection, StateDirs, Unguarded};
use crate::timefmt::rfc3339;

/// Runs `certrotd renew`.
pub fn run(args: &RenewArgs, now: OffsetDateTime) -> Outcome {
    let settings = load_settings(&args.node)?;
    let (root, state) = dirs(&settings)?;
    let selection = Selection {
        types: args.types.iter().map(|&t| t.into()).collect(),
        certs: args.certs.clone(),
    };
    let opts = PlanOptions {
        key_policy: settings.renew.key_policy,
        validity: settings.renew.validity,
        force: args.force,
        issuer: settings.issuer.clone(),
    };
    // A dry run reads only: no lock, no recovery (which writes); it says what recovery would face.
    let session = if args.dry_run {
        print_unfinished(&state);
        None
    } else {
        Some(lock_and_finish_interrupted(&root, &state, &settings, now)?)
    };

    let inv = Inventory::for_settings(&settings);
    let plan = session::plan(&inv, &selection, &root, &opts, now).map_err(usage)?;
    print!("{}", describe(&plan, &root, args.dry_run));

    if !plan.refused.is_empty() {
        return Err(anyhow::anyhow!(
            "refusing to renew {}, named with --cert; nothing was changed (fix what is named \
             above, or leave it out of the selection)",
            plan.refused
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
        .into());
    }
    // Selected by type but broken: the rest is renewed, and the exit code says not everything was.
    let exit = if plan.unrenewable.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "not renewed (they cannot be, see above): {}; renew them with --cert once fixed \
             (or --force where offered)",
            plan.unrenewable
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        ExitCode::from(1)
    };
    let Some(session) = session.filter(|_| !plan.items.is_empty() && !args.dry_run) else {
        if plan.items.is_empty() {
            println!("nothing to renew");
        } else {
            println!(
                "\ndry run: nothing was changed; rotation would restart: {}",
                restart_list(&plan.consumers())
            );
        }
        return Ok(exit);
    };
    let report = execute::run(&session.context(&Unguarded), &plan)?;
    print!("{}", done(&report, &root));
    Ok(exit)
}

fn usage(e: SelectError) -> Failure {
    Failure {
        code: EXIT_CONFIG,
        error: e.into(),
    }
}

/// Rotations a crash left unfinished, for a dry run to mention.
fn print_unfinished(state: &StateDirs) {
    for (id, dir) in journal::list(state).unwrap_or_default() {
        match Journal::load(&dir) {
            Ok(Some(j)) if j.phase.is_final() => {}
            Ok(Some(j)) => println!(
                "note: rotation {id} was interrupted ({}); a real run finishes or rolls it back first",
                j.phase.as_str()
            ),
            Ok(None) => {}
            Err(e) => println!("note: {e}"),
        }
    }
}

fn show(root: &Root, p: &Path) -> String {
    root.node_path(p)
        .unwrap_or_else(|| p.to_owned())
        .display()
        .to_string()
}

/// The files an item touches, as the node sees them.
fn files(item: &Item, root: &Root) -> String {
    let new_key = matches!(item.key, plan::KeyPlan::New { .. });
    match &item.install {
        Install::Pair { cert, key } => {
            let mut s = show(root, cert);
            if new_key {
                let _ = write!(s, ", {}", show(root, key));
            }
            s
        }
        Install::Combined { path } => show(root, path),
        Install::KubeletClient {
            link,
            new_file,
            link_target,
        } => format!(
            "{} (new), {} -> {}",
            show(root, new_file),
            show(root, link),
            link_target.display()
        ),
        Install::Kubeconfig {
            path,
            user,
            key_file,
        } => {
            let mut s = format!("{} (user {user})", show(root, path));
            if let (true, Some(k)) = (new_key, key_file) {
                let _ = write!(s, ", {}", show(root, k));
            }
            s
        }
    }
}

/// The plan as kubeadm-style tables.
pub fn describe(plan: &Plan, root: &Root, dry_run: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} (key policy {}, validity {})\n",
        if dry_run {
            "plan for rotation"
        } else {
            "rotation"
        },
        plan.id,
        plan.key_policy,
        crate::duration::format(plan.validity)
    );
    for n in &plan.notes {
        let _ = writeln!(out, "note: {n}");
    }
    if !plan.items.is_empty() {
        let rows: Vec<Vec<String>> = plan
            .items
            .iter()
            .map(|i| {
                vec![
                    i.names.join(", "),
                    i.issuer.describe(),
                    i.key.describe(),
                    files(i, root),
                ]
            })
            .collect();
        table(
            &mut out,
            &["CERTIFICATE", "CERTIFICATE AUTHORITY", "KEY", "FILES"],
            &rows,
        );
        for i in &plan.items {
            for n in &i.notes {
                let _ = writeln!(out, "note: {}: {n}", i.name());
            }
        }
    }
    for s in &plan.skipped {
        let _ = writeln!(out, "skipped {}: {}", s.name, s.reason);
    }
    for r in &plan.unrenewable {
        let _ = writeln!(out, "NOT RENEWED {}: {}", r.name, r.reason);
    }
    for r in &plan.refused {
        let _ = writeln!(out, "REFUSED {}: {}", r.name, r.reason);
    }
    out
}

fn restart_list(consumers: &[crate::pki::layout::Component]) -> String {
    let mut c = consumers.to_vec();
    c.sort();
    c.dedup();
    if c.is_empty() {
        "nothing (no running component reads these files)".to_owned()
    } else {
        join(&c)
    }
}

/// What a committed rotation did.
fn done(report: &Report, root: &Root) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> = report
        .renewed
        .iter()
        .map(|r| {
            vec![
                r.names.join(", "),
                rfc3339(r.cert.not_after),
                r.cert.serial.clone(),
            ]
        })
        .collect();
    out.push('\n');
    table(&mut out, &["RENEWED", "EXPIRES", "SERIAL"], &rows);
    for n in &report.notes {
        let _ = writeln!(out, "note: {n}");
    }
    let _ = writeln!(
        out,
        "\nrotation {} committed: {} certificates renewed, {} files written",
        report.id,
        report.renewed.len(),
        report.paths.len()
    );
    let _ = writeln!(
        out,
        "backup: {} (undo with: certrotd restore {})",
        show(root, &report.backup_dir),
        report.id
    );
    if !report.pruned.is_empty() {
        let _ = writeln!(out, "pruned old backups: {}", report.pruned.join(", "));
    }
    let _ = writeln!(
        out,
        "restart to use the new certificates: {}",
        restart_list(&report.consumers)
    );
    out
}

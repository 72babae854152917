//! Which files a scan loads: the layouts' known files, their trees, and the configured extra
//! paths and globs, each as a job saying what the layout expects of it.

use super::*;

pub(super) fn plan_jobs(
    req: &ScanRequest<'_>,
    layouts: &[Layout],
    inv: &mut Inventory,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |job: Job, jobs: &mut Vec<Job>| {
        if seen.insert(job.node_path.clone()) {
            jobs.push(job);
        }
    };
    for l in layouts {
        for k in layout::dist_known(*l) {
            if std::fs::symlink_metadata(req.root.join(&k.path)).is_ok() {
                push(known_job(k), &mut jobs);
            }
        }
    }
    for l in layouts {
        for tree in layout::trees(*l) {
            for job in tree_jobs(req.root, &tree) {
                push(job, &mut jobs);
            }
        }
    }
    for pattern in req.extra_paths {
        for job in extra_jobs(req.root, pattern, &mut inv.warnings) {
            push(job, &mut jobs);
        }
    }
    jobs
}

fn known_job(k: Known) -> Job {
    let expect_key = matches!(k.shape, FileShape::CertKey { .. } | FileShape::Combined);
    Job {
        name: k.name,
        node_path: k.path,
        shape: Some(k.shape),
        consumers: k.consumers,
        expect_key,
        from_glob: false,
    }
}

/// Walks a layout tree (bounded depth, symlinked directories not followed, so a loop cannot trap it).
fn tree_jobs(root: &Root, tree: &Tree) -> Vec<Job> {
    let mut out = Vec::new();
    let base = root.join(&tree.dir);
    let mut stack = vec![(base.clone(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<_> = rd.filter_map(Result::ok).collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let path = e.path();
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                if tree.recursive && depth < 6 {
                    stack.push((path, depth + 1));
                }
                continue;
            }
            let Some(shape) = layout::shape_by_name(&path) else {
                continue;
            };
            let Some(node_path) = root.node_path(&path) else {
                continue;
            };
            let rel = path.strip_prefix(&base).unwrap_or(&path).with_extension("");
            let stem = rel.to_string_lossy();
            let name = match shape {
                FileShape::Kubeconfig => format!(
                    "{}{}",
                    tree.name_prefix,
                    path.file_name().unwrap_or_default().to_string_lossy()
                ),
                _ => format!("{}{stem}", tree.name_prefix),
            };
            out.push(Job {
                name,
                node_path,
                shape: Some(node_shape(root, shape)),
                consumers: tree.consumers.clone(),
                expect_key: false,
                from_glob: false,
            });
        }
    }
    out
}

/// `shape_by_name` works on real paths; jobs carry node paths.
fn node_shape(root: &Root, shape: FileShape) -> FileShape {
    match shape {
        FileShape::CertKey { key } => FileShape::CertKey {
            key: root.node_path(&key).unwrap_or(key),
        },
        other => other,
    }
}

fn extra_jobs(root: &Root, pattern: &str, warnings: &mut Vec<String>) -> Vec<Job> {
    let real = root.join(pattern);
    let Some(real_str) = real.to_str() else {
        warnings.push(format!("extra_paths {pattern:?}: not valid UTF-8"));
        return Vec::new();
    };
    let paths = match glob::glob(real_str) {
        Ok(p) => p,
        Err(e) => {
            warnings.push(format!("extra_paths {pattern:?}: bad pattern: {e}"));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for p in paths {
        let path = match p {
            Ok(p) => p,
            Err(e) => {
                warnings.push(format!("extra_paths {pattern:?}: {e}"));
                continue;
            }
        };
        let Some(node_path) = root.node_path(&path) else {
            continue;
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A key matched by a broad glob is found again beside its certificate; skip it here.
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "key" || name.ends_with("-key.pem") || ext == "csr" {
            continue;
        }
        out.push(Job {
            name,
            shape: layout::shape_by_name(&path).map(|s| node_shape(root, s)),
            node_path,
            consumers: Vec::new(),
            expect_key: false,
            from_glob: true,
        });
    }
    if out.is_empty() && !has_glob_chars(pattern) {
        warnings.push(format!("extra_paths {pattern:?}: no such file"));
    } else if out.is_empty() {
        warnings.push(format!("extra_paths {pattern:?}: matched no file"));
    }
    out
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

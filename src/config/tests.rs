//! The configuration's loading, merging and validation, through `load` on real files.

use std::time::Duration;

use super::layer::line_column;
use super::renew::days;
use super::*;
use crate::duration;
use crate::pki::layout::Component as PkiComponent;
use tempfile::TempDir;

/// A scratch root holding `etc/certrotd/certrotd.toml` and `etc/certrotd/conf.d/`.
struct Tree {
    dir: TempDir,
}

impl Tree {
    fn new() -> Self {
        Tree {
            dir: TempDir::new().unwrap(),
        }
    }

    fn root(&self) -> PathBuf {
        fs::canonicalize(self.dir.path()).unwrap()
    }

    /// Writes `text` at `relative` (under `etc/certrotd/`) and returns the path.
    fn write(&self, relative: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join("etc/certrotd").join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    /// Loads as `certrotd --root <tree>` would.
    fn load(&self) -> Result<Settings, ConfigError> {
        load(&LoadOptions {
            config: None,
            root: Some(self.dir.path()),
        })
    }

    fn defaults(&self, sources: Vec<PathBuf>) -> Settings {
        Settings {
            root: self.root(),
            sources,
            ..Settings::default()
        }
    }
}

fn at(error: &ConfigError) -> (PathBuf, (usize, usize)) {
    let location = error
        .location()
        .unwrap_or_else(|| panic!("no location: {error}"));
    (location.file.clone(), location.line_column.unwrap())
}

#[test]
fn no_files_give_the_defaults() {
    let tree = Tree::new();
    assert_eq!(tree.load().unwrap(), tree.defaults(vec![]));
}

#[test]
fn defaults_are_the_documented_ones() {
    let d = Settings::default();
    assert_eq!(d.root, Path::new("/"));
    assert_eq!(d.layout, LayoutChoice::Auto);
    assert_eq!(d.state_dir, Path::new("/var/lib/certrotd"));
    assert!(d.inventory.extra_paths.is_empty());
    assert_eq!(d.policy.notify_before, days(60));
    assert_eq!(d.policy.renew_before, days(30));
    assert_eq!(d.policy.emergency_before, days(7));
    assert_eq!(d.renew.validity, days(365));
    assert_eq!(d.renew.key_policy, KeyPolicy::New);
    assert_eq!(d.renew.backups_keep, 10);
    assert_eq!(d.node_name, machine_node_name().unwrap());
}

#[test]
fn drop_in_overrides_the_main_file_key_by_key() {
    let tree = Tree::new();
    let main = tree.write(
        "certrotd.toml",
        "layout = \"kubeadm\"\n[policy]\nnotify_before = \"90d\"\nrenew_before = \"40d\"\n\
             [renew]\nvalidity = \"400d\"\n",
    );
    let drop_in = tree.write("conf.d/10-site.toml", "[policy]\nrenew_before = \"45d\"\n");
    let settings = tree.load().unwrap();
    assert_eq!(settings.sources, vec![main, drop_in]);
    assert_eq!(settings.layout, LayoutChoice::Kubeadm);
    assert_eq!(settings.policy.notify_before, days(90));
    assert_eq!(settings.policy.renew_before, days(45));
    assert_eq!(settings.policy.emergency_before, days(7));
    assert_eq!(settings.renew.validity, days(400));
}

#[test]
fn later_drop_in_wins_and_only_toml_files_count() {
    let tree = Tree::new();
    let second = tree.write("conf.d/20-b.toml", "[renew]\nkey_policy = \"new\"\n");
    let first = tree.write(
        "conf.d/10-a.toml",
        "[renew]\nkey_policy = \"reuse\"\nbackups_keep = 3\n",
    );
    tree.write("conf.d/.#30-c.toml", "garbage =");
    tree.write("conf.d/30-c.toml.dpkg-old", "garbage =");
    tree.write("conf.d/README", "garbage =");
    fs::create_dir(tree.dir.path().join("etc/certrotd/conf.d/40-dir.toml")).unwrap();
    let settings = tree.load().unwrap();
    // No main file: the drop-ins still apply.
    assert_eq!(settings.sources, vec![first, second]);
    assert_eq!(settings.renew.key_policy, KeyPolicy::New);
    assert_eq!(settings.renew.backups_keep, 3);
}

#[test]
fn arrays_replace_rather_than_append() {
    let tree = Tree::new();
    tree.write(
        "certrotd.toml",
        "[inventory]\nextra_paths = [\"/etc/ssl/a.crt\", \"/etc/ssl/b.crt\"]\n",
    );
    tree.write(
        "conf.d/10.toml",
        "[inventory]\nextra_paths = [\"/etc/ssl/private/*.crt\"]\n",
    );
    let settings = tree.load().unwrap();
    assert_eq!(settings.inventory.extra_paths, ["/etc/ssl/private/*.crt"]);
}

#[test]
fn unknown_keys_name_file_line_and_column() {
    let tree = Tree::new();
    tree.write("certrotd.toml", "[policy]\nrenew_before = \"20d\"\n");
    let drop_in = tree.write("conf.d/10-x.toml", "\n[policy]\n  renew_befor = \"3d\"\n");
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (drop_in.clone(), (3, 3)));
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "{}:3:3: unknown field `renew_befor`, expected one of",
            drop_in.display()
        )),
        "{text}"
    );

    tree.write("conf.d/10-x.toml", "[polcy]\n");
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (drop_in.clone(), (1, 2)));
    assert!(
        error.to_string().contains("unknown field `polcy`"),
        "{error}"
    );

    tree.write("conf.d/10-x.toml", "state-dir = \"/x\"\n");
    assert_eq!(at(&tree.load().unwrap_err()), (drop_in, (1, 1)));
}

#[test]
fn unknown_key_is_an_error_even_if_a_later_file_sets_the_right_one() {
    let tree = Tree::new();
    let main = tree.write("certrotd.toml", "[renew]\nbackups_kept = 3\n");
    tree.write("conf.d/10.toml", "[renew]\nbackups_keep = 3\n");
    assert_eq!(at(&tree.load().unwrap_err()), (main, (2, 1)));
}

#[test]
fn bad_duration_names_field_text_and_place() {
    let tree = Tree::new();
    let main = tree.write("certrotd.toml", "[policy]\nrenew_before = \"30x\"\n");
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (main.clone(), (2, 16)));
    let text = error.to_string();
    assert!(text.contains("policy.renew_before"), "{text}");
    assert!(text.contains("\"30x\""), "{text}");

    tree.write("certrotd.toml", "[renew]\nvalidity = 365\n");
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (main, (2, 12)));
    assert!(error.to_string().contains("a duration such as"), "{error}");
}

#[test]
fn wrong_types_and_enum_values_name_the_place() {
    let tree = Tree::new();
    let main = tree.write("certrotd.toml", "[renew]\nbackups_keep = \"ten\"\n");
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (main.clone(), (2, 16)));
    assert!(error.to_string().contains("invalid type"), "{error}");

    tree.write("certrotd.toml", "[renew]\nbackups_keep = -1\n");
    assert_eq!(at(&tree.load().unwrap_err()), (main.clone(), (2, 16)));

    tree.write("certrotd.toml", "layout = \"openshift\"\n");
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (main.clone(), (1, 10)));
    assert!(error.to_string().contains("`kubeadm`"), "{error}");

    tree.write("certrotd.toml", "policy = 3\n");
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (main, (1, 10)));
    assert!(
        error.to_string().ends_with("expected the [policy] table"),
        "{error}"
    );
}

#[test]
fn renew_before_not_shorter_than_notify_before_blames_the_file_that_set_it() {
    let tree = Tree::new();
    tree.write("certrotd.toml", "[renew]\nvalidity = \"400d\"\n");
    let drop_in = tree.write("conf.d/50.toml", "[policy]\nrenew_before = \"60d\"\n");
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (drop_in, (2, 16)));
    let text = error.to_string();
    assert!(
        text.contains(
            "policy.renew_before = \"60d\" must be shorter than \
                 policy.notify_before = \"60d\" (the default)"
        ),
        "{text}"
    );
}

#[test]
fn an_ordering_rule_blames_the_value_written_last() {
    let tree = Tree::new();
    let main = tree.write("certrotd.toml", "[policy]\nrenew_before = \"40d\"\n");
    let drop_in = tree.write("conf.d/50.toml", "[policy]\nnotify_before = \"35d\"\n");
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (drop_in, (2, 17)));
    assert!(
        error
            .to_string()
            .contains(&format!("(set at {}:2:16)", main.display())),
        "{error}"
    );
}

#[test]
fn durations_are_bounded_per_key() {
    let tree = Tree::new();
    let main = tree.write("certrotd.toml", "[renew]\nvalidity = \"8000y\"\n");
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (main.clone(), (2, 12)));
    assert!(
        error.to_string().contains(
            "renew.validity: invalid duration \"8000y\": longer than the limit of 36500d"
        ),
        "{error}"
    );
    tree.write("certrotd.toml", "[restart]\njob_timeout = \"2d\"\n");
    let error = tree.load().unwrap_err();
    assert!(error.to_string().contains("restart.job_timeout"), "{error}");
    tree.write("certrotd.toml", "[lease]\nttl = \"1d 1s\"\n");
    assert!(tree.load().unwrap_err().to_string().contains("lease.ttl"));
    tree.write("certrotd.toml", "[policy]\njitter = \"31d\"\n");
    assert!(
        tree.load()
            .unwrap_err()
            .to_string()
            .contains("policy.jitter")
    );
    tree.write("certrotd.toml", "[renew]\nvalidity = \"100y\"\n");
    assert_eq!(
        tree.load().expect("100y is allowed").renew.validity,
        duration::MAX
    );
}

#[test]
fn the_other_rules_hold() {
    let tree = Tree::new();
    let main = tree.write("certrotd.toml", "[policy]\nemergency_before = \"30d\"\n");
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (main.clone(), (2, 20)));
    assert!(
        error.to_string().contains("policy.emergency_before"),
        "{error}"
    );

    tree.write("certrotd.toml", "[renew]\nvalidity = \"30d\"\n");
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (main.clone(), (2, 12)));
    assert!(error.to_string().contains("renew.validity"), "{error}");

    tree.write("certrotd.toml", "[renew]\nbackups_keep = 0\n");
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (main.clone(), (2, 16)));

    tree.write("certrotd.toml", "state_dir = \"var/lib/certrotd\"\n");
    assert_eq!(at(&tree.load().unwrap_err()), (main.clone(), (1, 13)));
    tree.write("certrotd.toml", "state_dir = \"/var/../etc\"\n");
    assert_eq!(at(&tree.load().unwrap_err()), (main.clone(), (1, 13)));

    tree.write(
        "certrotd.toml",
        "[inventory]\nextra_paths = [\"/ok/*.crt\",\n  \"/bad/[.crt\"]\n",
    );
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (main.clone(), (3, 3)));
    assert!(error.to_string().contains("\"/bad/[.crt\""), "{error}");
    tree.write(
        "certrotd.toml",
        "[inventory]\nextra_paths = [\"etc/ssl/*.crt\"]\n",
    );
    assert_eq!(at(&tree.load().unwrap_err()), (main, (2, 16)));
}

#[test]
fn node_name_is_checked_and_defaults_to_the_hostname() {
    let tree = Tree::new();
    let main = tree.write("certrotd.toml", "node_name = \"worker-1.example\"\n");
    assert_eq!(tree.load().unwrap().node_name, "worker-1.example");
    for bad in ["Worker-1", "worker_1", "-worker", "worker..1", "worker."] {
        tree.write("certrotd.toml", format!("node_name = \"{bad}\"\n"));
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (main.clone(), (1, 13)), "{bad}");
    }
    tree.write("certrotd.toml", "node_name = \"\"\n");
    assert_eq!(tree.load().unwrap().node_name, machine_node_name().unwrap());
}

#[test]
fn syntax_error_in_a_drop_in_names_that_drop_in() {
    let tree = Tree::new();
    tree.write("certrotd.toml", "layout = \"k3s\"\n");
    tree.write("conf.d/10-ok.toml", "layout = \"rke2\"\n");
    let broken = tree.write("conf.d/20-broken.toml", "# note\nlayout = rke2\n");
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error).0, broken);
    assert_eq!(at(&error).1.0, 2);
}

#[test]
fn non_utf8_file_is_an_error_at_the_bad_byte() {
    let tree = Tree::new();
    let main = tree.write("certrotd.toml", b"# caf\xe9\n");
    assert_eq!(at(&tree.load().unwrap_err()), (main, (1, 6)));
}

#[test]
fn relative_root_is_relative_to_the_file_that_sets_it() {
    let tree = Tree::new();
    fs::create_dir(tree.dir.path().join("node")).unwrap();
    // Set in a drop-in, so the base is conf.d, not the main file's directory.
    tree.write("certrotd.toml", "");
    tree.write("conf.d/10.toml", "root = \"../../../node\"\n");
    let config = tree.dir.path().join("etc/certrotd/certrotd.toml");
    let opts = LoadOptions {
        config: Some(&config),
        root: None,
    };
    assert_eq!(load(&opts).unwrap().root, tree.root().join("node"));

    let drop_in = tree.write("conf.d/10.toml", "root = \"../missing\"\n");
    let error = load(&opts).unwrap_err();
    assert_eq!(at(&error), (drop_in.clone(), (1, 8)));
    tree.write(
        "conf.d/10.toml",
        "root = \"../../certrotd/certrotd.toml\"\n",
    );
    let error = load(&opts).unwrap_err();
    assert!(error.to_string().contains("not a directory"), "{error}");
}

#[test]
fn command_line_root_wins_over_the_files() {
    let tree = Tree::new();
    tree.write("certrotd.toml", "root = \"/nonexistent/certrotd-test\"\n");
    assert_eq!(tree.load().unwrap().root, tree.root());

    let missing = tree.dir.path().join("missing");
    let error = load(&LoadOptions {
        config: None,
        root: Some(&missing),
    })
    .unwrap_err();
    assert!(error.location().is_none());
    assert!(
        error
            .to_string()
            .starts_with(&format!("--root {}:", missing.display())),
        "{error}"
    );
}

#[test]
fn explicit_config_that_does_not_exist_is_an_error_naming_it() {
    let tree = Tree::new();
    let missing = tree.dir.path().join("nope.toml");
    let error = load(&LoadOptions {
        config: Some(&missing),
        root: None,
    })
    .unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(
        error
            .to_string()
            .starts_with(&format!("reading config file {}: ", missing.display())),
        "{error}"
    );
}

#[test]
fn in_root_joins_node_paths() {
    let mut settings = Settings::default();
    assert_eq!(
        settings.in_root("/var/lib/certrotd"),
        Path::new("/var/lib/certrotd")
    );
    assert_eq!(settings.in_root("/"), Path::new("/"));
    settings.root = PathBuf::from("/srv/node");
    assert_eq!(
        settings.in_root("/etc/kubernetes/pki/ca.crt"),
        Path::new("/srv/node/etc/kubernetes/pki/ca.crt")
    );
    assert_eq!(
        settings.in_root("//etc/kubernetes"),
        Path::new("/srv/node/etc/kubernetes")
    );
    assert_eq!(settings.in_root("etc"), Path::new("/srv/node/etc"));
    assert_eq!(settings.in_root("/"), Path::new("/srv/node"));
    assert_eq!(settings.in_root(""), Path::new("/srv/node"));
}

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/certrotd.toml")
}

#[test]
fn shipped_config_loads_to_the_defaults() {
    let path = shipped_config();
    let settings = load(&LoadOptions {
        config: Some(&path),
        root: None,
    })
    .unwrap();
    assert_eq!(
        settings,
        Settings {
            sources: vec![path],
            ..Settings::default()
        }
    );
}

#[test]
fn shipped_config_documents_every_key_with_its_default() {
    // Uncommenting every `#key = value` line must change nothing and cover every key.
    let text = fs::read_to_string(shipped_config()).unwrap();
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let tree = Tree::new();
    let main = tree.write("certrotd.toml", &uncommented);
    let mut expected = Settings {
        sources: vec![main],
        ..Settings::default()
    };
    let mut settings = tree.load().unwrap();
    // `root = "/"` is in the file but `--root` (the scratch tree) wins.
    settings.root = PathBuf::from("/");
    expected.root = PathBuf::from("/");
    assert_eq!(settings, expected);

    let keys = |table: &toml::Table| -> Vec<String> {
        let mut keys = Vec::new();
        for (key, value) in table {
            match value.as_table() {
                Some(sub) => keys.extend(sub.keys().map(|k| format!("{key}.{k}"))),
                None => keys.push(key.clone()),
            }
        }
        keys.sort();
        keys
    };
    let documented: toml::Table = toml::from_str(&uncommented).unwrap();
    let all: toml::Table = toml::from_str(&toml::to_string(&Settings::default()).unwrap()).unwrap();
    assert_eq!(keys(&documented), keys(&all));
}

#[test]
fn serialized_settings_load_back() {
    let tree = Tree::new();
    let defaults = Settings::default();
    let written = Settings {
        node_name: "node-a".to_owned(),
        inventory: InventorySettings {
            extra_paths: vec!["/etc/ssl/*.pem".to_owned()],
        },
        policy: PolicySettings {
            emergency_before: Duration::from_secs(36 * 3600),
            ..defaults.policy
        },
        renew: RenewSettings {
            key_policy: KeyPolicy::Reuse,
            ..defaults.renew
        },
        ..defaults
    };
    let main = tree.write("certrotd.toml", toml::to_string(&written).unwrap());
    let read = tree.load().unwrap();
    assert_eq!(
        read,
        Settings {
            root: tree.root(),
            sources: vec![main],
            ..written
        }
    );
}

#[test]
fn probe_defaults_and_per_component_overrides() {
    use PkiComponent::*;
    let d = ProbeSettings::default();
    assert_eq!(d.timeout, Duration::from_secs(120));
    let ports = |c| -> Vec<u16> { d.endpoints[&c].iter().map(|e| e.port).collect() };
    assert_eq!(ports(KubeApiserver), [6443]);
    assert_eq!(ports(Etcd), [2379, 2380]);
    assert_eq!(ports(Kubelet), [10250]);
    assert_eq!(d.health[&Kubelet].port(), 10248);

    let tree = Tree::new();
    tree.write(
        "certrotd.toml",
        "[probe]\ntimeout = \"90s\"\n[probe.endpoints]\n\
             etcd = [{ host = \"10.0.0.5\", port = 2379, serves = \"etcd-server\", \
             server_name = \"etcd.example\" }]\nkubelet = []\n",
    );
    tree.write(
        "conf.d/10.toml",
        "[probe.health]\netcd = \"10.0.0.5:2379\"\n[probe.endpoints]\nkubelet = \
             [{ port = 10250, serves = \"kubelet-serving\" }]\n",
    );
    let probe = tree.load().unwrap().probe;
    assert_eq!(probe.timeout, Duration::from_secs(90));
    assert_eq!(
        probe.endpoints[&Etcd],
        [EndpointSpec {
            host: Some("10.0.0.5".parse().unwrap()),
            port: 2379,
            serves: "etcd-server".to_owned(),
            server_name: Some("etcd.example".to_owned()),
        }]
    );
    // The drop-in's kubelet list replaces the main file's, and untouched components keep
    // their defaults.
    assert_eq!(probe.endpoints[&Kubelet][0].host, None);
    assert_eq!(probe.endpoints[&KubeApiserver], d.endpoints[&KubeApiserver]);
    assert_eq!(probe.health[&Etcd], "10.0.0.5:2379".parse().unwrap());
    assert_eq!(probe.health[&KubeApiserver], d.health[&KubeApiserver]);
}

#[test]
fn bad_probe_entries_name_file_line_and_column() {
    let tree = Tree::new();
    let main = tree.write("certrotd.toml", "[probe]\ntimeout = \"0s\"\n");
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (main.clone(), (2, 11)));
    assert!(error.to_string().contains("probe.timeout"), "{error}");

    tree.write(
        "certrotd.toml",
        "[probe.endpoints]\netcd = [{ port = 2379, serves = \"etcd-server\" },\n  \
             { port = 0, serves = \"etcd-peer\" }]\n",
    );
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (main.clone(), (3, 3)));
    assert!(
        error.to_string().contains("probe.endpoints.etcd: port 0"),
        "{error}"
    );

    tree.write(
        "certrotd.toml",
        "[probe.endpoints]\netcd = [{ port = 2379, serves = \"\" }]\n",
    );
    assert_eq!(at(&tree.load().unwrap_err()), (main.clone(), (2, 9)));

    tree.write(
        "certrotd.toml",
        "[probe.endpoints]\netcd = [{ port = 2379, serves = \"x\", server_name = \"a b\" }]\n",
    );
    let error = tree.load().unwrap_err();
    assert!(error.to_string().contains("\"a b\""), "{error}");

    tree.write(
        "certrotd.toml",
        "[probe.endpoints]\netcd = [{ prot = 2379 }]\n",
    );
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error).0, main.clone());
    assert!(
        error.to_string().contains("unknown field `prot`"),
        "{error}"
    );

    tree.write(
        "certrotd.toml",
        "[probe.health]\netcdd = \"127.0.0.1:2379\"\n",
    );
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error).0, main.clone());
    assert!(
        error.to_string().contains("unknown variant `etcdd`"),
        "{error}"
    );

    tree.write(
        "certrotd.toml",
        "[probe.health]\netcd = \"localhost:2379\"\n",
    );
    let error = tree.load().unwrap_err();
    assert_eq!(at(&error), (main, (2, 8)));
}

#[test]
fn lease_table_loads_and_bad_values_name_file_line_and_column() {
    let tree = Tree::new();
    tree.write(
            "certrotd.toml",
            "[lease]\nbackend = \"etcd\"\nendpoints = [\"https://10.0.0.1:2379\", \"http://lab:2379\"]\n\
             cluster = \"prod-1\"\nslots = 2\nttl = \"30s\"\ncert_file = \"/etc/etcd/client.crt\"\n",
        );
    let lease = tree.load().unwrap().lease;
    assert_eq!(lease.backend, LeaseBackend::Etcd);
    assert_eq!(lease.endpoints.len(), 2);
    assert_eq!(lease.cluster, "prod-1");
    assert_eq!(lease.slots, 2);
    assert_eq!(lease.ttl, Duration::from_secs(30));
    assert_eq!(lease.cert_file, Path::new("/etc/etcd/client.crt"));
    assert_eq!(lease.key_file, Path::new(DEFAULT_LEASE_KEY));

    let bad = |text: &str, line_col: (usize, usize), says: &str| {
        let main = tree.write("certrotd.toml", text);
        let error = tree.load().unwrap_err();
        assert_eq!(at(&error), (main, line_col), "{error}");
        assert!(error.to_string().contains(says), "{error}");
    };
    bad("[lease]\nbackend = \"etcd\"\n", (2, 11), "lease.endpoints");
    bad(
        "[lease]\nbackend = \"etcd\"\nendpoints = []\n",
        (3, 13),
        "lease.endpoints",
    );
    bad(
        "[lease]\nendpoints = [\"https://a:2379\",\n  \"10.0.0.1:2379\"]\n",
        (3, 3),
        "https://",
    );
    bad("[lease]\nendpoints = [\"https://a\"]\n", (2, 14), "port");
    bad("[lease]\nslots = 0\n", (2, 9), "lease.slots = 0");
    bad("[lease]\nttl = \"1s\"\n", (2, 7), "lease.ttl");
    bad("[lease]\ncluster = \"a/b\"\n", (2, 11), "lease.cluster");
    bad(
        "[lease]\nca_file = \"pki/ca.crt\"\n",
        (2, 11),
        "lease.ca_file",
    );
    bad(
        "[lease]\nbackend = \"zookeeper\"\n",
        (2, 11),
        "unknown variant",
    );
    // Endpoints set in a drop-in satisfy a backend set in the main file.
    tree.write("certrotd.toml", "[lease]\nbackend = \"etcd\"\n");
    tree.write(
        "conf.d/10.toml",
        "[lease]\nendpoints = [\"https://10.0.0.1:2379\"]\n",
    );
    assert_eq!(tree.load().unwrap().lease.endpoints.len(), 1);
}

#[test]
fn line_column_counts_characters() {
    let text = "a = 1\nété = \"x\"\n";
    assert_eq!(line_column(text, 0), (1, 1));
    assert_eq!(line_column(text, 6), (2, 1));
    let value = text.find('"').unwrap();
    assert_eq!(line_column(text, value), (2, 7));
    assert_eq!(line_column(text, text.len()), (3, 1));
    assert_eq!(line_column(text, 7), (2, 1));
}

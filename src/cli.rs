//! The command line (clap definitions only; behaviour lives in `commands`).

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::rotation::RotationType;

/// certrotd keeps a Kubernetes node's certificates from ever expiring.
#[derive(Debug, Parser)]
#[command(name = "certrotd", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command that reads the node takes.
#[derive(Debug, Clone, Args, Default)]
pub struct NodeArgs {
    /// Treat DIR as the node's `/` (default: the config's `root`, else `/`).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Configuration file (default: <root>/etc/certrotd/certrotd.toml, plus its conf.d/*.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Options every command that talks to the running daemon takes.
#[derive(Debug, Clone, Args, Default)]
pub struct ClientArgs {
    /// The daemon's control socket (default: the config's [control] socket, inside its root).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Node and configuration, read to find the socket when --socket is not given.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// kubeadm-style tables.
    #[default]
    Table,
    /// One JSON object.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inventory every certificate on the node and report its state (exit 1 when anything is
    /// expired, invalid or due for renewal).
    Check {
        /// Node and configuration.
        #[command(flatten)]
        node: NodeArgs,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
    },
    /// Configuration commands.
    Config {
        /// What to do with the configuration.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Renew leaf certificates from the CAs on this node, crash-safely (backup, journal, atomic
    /// installs); then say which components must be restarted.
    Renew(RenewArgs),
    /// Put back the files a rotation changed, from its backup.
    Restore {
        /// Node and configuration.
        #[command(flatten)]
        node: NodeArgs,
        /// The rotation id `certrotd renew` printed.
        #[arg(value_name = "ROTATION_ID")]
        id: String,
    },
    /// Finish or roll back a rotation that was interrupted (renew and restore do this first too).
    Recover {
        /// Node and configuration.
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Run the daemon: watch the node, renew what is due, restart and verify its consumers, and
    /// answer `certrotd status` on the control socket.
    #[command(after_long_help = journal_help())]
    Run {
        /// Node and configuration.
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Ask the running daemon for every certificate with its state, next action and when, the
    /// rotation in progress and the lease (exit 1 when anything is expired, invalid or due;
    /// 3 when the daemon cannot be reached).
    Status {
        /// The daemon to ask.
        #[command(flatten)]
        client: ClientArgs,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
        /// Show the whole cluster as the lease sees it: every node's summary, who holds each
        /// slot (since when, at which step, with which fencing token) and the queue in order.
        #[arg(long)]
        cluster: bool,
    },
    /// Ask the running daemon to rotate now, with all its safety (root only); prints the
    /// rotation id.
    #[command(group(ArgGroup::new("what").required(true).multiple(true).args(["types", "certs"])))]
    Rotate {
        /// The daemon to ask.
        #[command(flatten)]
        client: ClientArgs,
        /// What to rotate, as `certrotd renew --type` names it (repeatable); or `etcd-ca` or
        /// `front-proxy-ca` alone, which starts that CA's rotation as `certrotd ca rotate` does.
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// A single certificate, by the name `certrotd status` shows (repeatable).
        #[arg(long = "cert", value_name = "NAME")]
        certs: Vec<String>,
    },
    /// The running daemon's activity records: each rotation as Initiated, Success or Failed,
    /// newest first.
    History {
        /// The daemon to ask.
        #[command(flatten)]
        client: ClientArgs,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
        /// Show at most N records.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Rotate a cluster CA (etcd-ca, front-proxy-ca) across every control-plane node with no
    /// downtime, through the running daemon: trust both CAs, issue from the new one, distrust
    /// the old one.
    Ca {
        /// What to do.
        #[command(subcommand)]
        action: CaAction,
    },
    /// Write a complete kubeadm-shaped control-plane node under DIR to try certrotd on.
    Sandbox {
        /// Where to write it (created if missing; must not already hold a PKI).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Lifetime of the leaf certificates (e.g. 365d, 10m).
        #[arg(long, value_name = "DURATION", default_value = "365d")]
        leaf_ttl: String,
        /// The node's name.
        #[arg(long, default_value = "sandbox-cp1")]
        node_name: String,
    },
    /// Write the man pages or a shell's completions, generated from this command line (packaging).
    // Hidden from --help and the man pages; clap_complete still offers it, which is harmless.
    #[command(hide = true)]
    Generate {
        /// What to write.
        #[command(subcommand)]
        what: GenerateWhat,
    },
}

/// `certrotd ca …`
#[derive(Debug, Subcommand)]
pub enum CaAction {
    /// Start rotating a CA (root only); prints the rotation id. The daemons then take every
    /// control-plane node through TrustBoth, IssueNew and DistrustOld.
    Rotate {
        /// The daemon to ask.
        #[command(flatten)]
        client: ClientArgs,
        /// Which CA.
        #[arg(value_enum, value_name = "TRACK")]
        track: TrackArg,
        /// Use the new CA in DIR (`ca.crt` and `ca.key`) instead of generating one; the daemon
        /// reads it (it must have the old CA's subject and key type).
        #[arg(long, value_name = "DIR")]
        from: Option<PathBuf>,
    },
    /// Every CA track: the CA on this node's disk, the rotation's phase and since when, each
    /// node's proved step with its fencing token, what blocks the next phase and the last error.
    Status {
        /// The daemon to ask.
        #[command(flatten)]
        client: ClientArgs,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
    },
    /// Roll back the open rotation of TRACK (of every track when none is named), one level per
    /// cluster barrier, back to the old CA alone (root only).
    Abort {
        /// The daemon to ask.
        #[command(flatten)]
        client: ClientArgs,
        /// Which CA (default: every one being rotated).
        #[arg(value_enum, value_name = "TRACK")]
        track: Option<TrackArg>,
    },
}

/// A CA as the command line names it (the domain's `ca::Track`, whose names it keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TrackArg {
    /// etcd's CA: `etcd/ca.{crt,key}`, the etcd leaves and apiserver-etcd-client.
    EtcdCa,
    /// The front proxy's CA: `front-proxy-ca.{crt,key}` and front-proxy-client.
    FrontProxyCa,
}

impl From<TrackArg> for crate::ca::Track {
    fn from(t: TrackArg) -> Self {
        match t {
            TrackArg::EtcdCa => crate::ca::Track::EtcdCa,
            TrackArg::FrontProxyCa => crate::ca::Track::FrontProxyCa,
        }
    }
}

/// `certrotd generate …`
#[derive(Debug, Subcommand)]
pub enum GenerateWhat {
    /// certrotd.1 and one page per subcommand (certrotd-check.1, …).
    Man {
        /// The directory to write them into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// The completion script for SHELL (certrotd.bash, _certrotd, certrotd.fish, …).
    Completions {
        /// The shell.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
        /// The directory to write it into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// A rotation type as the command line spells it: clap's adapter for the domain's
/// [`RotationType`], which stays free of the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TypeArg {
    /// apiserver, apiserver-kubelet-client, front-proxy-client and every kubeconfig but kubelet.conf.
    KubernetesLeaf,
    /// etcd-server, etcd-peer, etcd-healthcheck-client and apiserver-etcd-client.
    EtcdLeaf,
    /// kubelet.conf and the kubelet's client and serving certificates.
    Kubelet,
    /// Every leaf certificate on the node.
    All,
}

impl From<TypeArg> for RotationType {
    fn from(t: TypeArg) -> Self {
        match t {
            TypeArg::KubernetesLeaf => RotationType::KubernetesLeaf,
            TypeArg::EtcdLeaf => RotationType::EtcdLeaf,
            TypeArg::Kubelet => RotationType::Kubelet,
            TypeArg::All => RotationType::All,
        }
    }
}

/// `certrotd renew …`
#[derive(Debug, Clone, Args)]
pub struct RenewArgs {
    /// Node and configuration.
    #[command(flatten)]
    pub node: NodeArgs,
    /// What to renew: kubernetes-leaf, etcd-leaf, kubelet or all (repeatable).
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub types: Vec<TypeArg>,
    /// A single certificate by the name `certrotd check` shows (repeatable).
    #[arg(long = "cert", value_name = "NAME")]
    pub certs: Vec<String>,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Re-issue certificates whose chain does not verify, from the CA on this node whose name
    /// matches their issuer (and replace a key that does not match its certificate).
    #[arg(long)]
    pub force: bool,
}

/// `certrotd config …`
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Load and validate the configuration, then print the effective settings.
    Check {
        /// Node and configuration.
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// `certrotd run --help` (and its man page): how to read what the daemon wrote to the journal.
/// The examples are the ones tests/daemon_tests/journald.rs runs against a real journald.
fn journal_help() -> String {
    use crate::events::ids;
    format!(
        "Reading the journal:

Under systemd every event is a journal entry with structured fields: CERTROTD_EVENT (its kind),
MESSAGE_ID (one per kind, stable across versions), NODE, and where they apply CERT_NAME (once per
certificate), CERT_PATH, NOT_AFTER, ROTATION_ID, COMPONENT, THRESHOLD and SEVERITY. Notices are
priority warning inside notify_before, err inside emergency_before and crit once expired.

  journalctl -u certrotd CERTROTD_EVENT=rotated
      every certificate rotated
  journalctl -u certrotd CERT_NAME=apiserver
      everything about one certificate
  id=$(journalctl -u certrotd -n 1 -o cat --output-fields=ROTATION_ID CERTROTD_EVENT=rotation-started)
  journalctl -u certrotd ROTATION_ID=$id
      the last rotation's events
  journalctl MESSAGE_ID={failed}
      failed rotations (MESSAGE_ID={retrying}: retried renewals)
  journalctl -u certrotd -p crit
      certificates that expired
  journalctl -u certrotd -o verbose CERTROTD_EVENT=notice
      every field of the notices",
        failed = ids::ROTATION_FAILED,
        retrying = ids::RETRYING,
    )
}

//! The control plane: networks, endpoints and their allocations, kept in the store and
//! realised in the kernel (links, namespaces, addresses, routes, BPF maps).
//!
//! Every mutation follows one pattern: validate, allocate in a write transaction (which
//! also pushes map entries, so maps only change under the store's lock), do the kernel
//! work, and either mark it done or roll back in reverse order. A process killed half-way
//! leaves rows marked `creating`/`removing` with its pid; the next command finds the pid
//! gone and finishes the teardown (see reconcile.rs).

pub mod background;
pub mod cni;
pub mod docker;
mod docker_ipam;
mod endpoint;
mod facts;
mod links;
mod network;
pub mod observe;
pub mod programs;
mod reconcile;
mod vlan;

use std::path::{Path, PathBuf};

pub use cni::CniAttach;
pub use docker::Join;
pub use endpoint::{endpoint_number, RunRequest, RunSpec};
pub use facts::HOST_NS;
pub use network::NetworkCreate;
pub use reconcile::ReconcileReport;

use crate::{
    bpf::{BpfError, Pins},
    ipam::IpamError,
    nl::NlError,
    store::{Owner, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Bad input or a state conflict; the message names the value and what to do.
    #[error("{0}")]
    Invalid(String),
    /// Not the user's input: the kernel or the machine did what we did not expect (an
    /// interface gone right after we made it, a worker thread that died).
    #[error("{0}")]
    Internal(String),
    /// A conflict front ends act on by kind (CNI retries, treats as done, ...); the
    /// message is what a user reads, as for `Invalid`.
    #[error("{message}")]
    State { kind: StateKind, message: String },
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Netlink(#[from] NlError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A step failed and the rollback also hit errors; all of them are listed.
    #[error("{error}; rollback also failed: {}", rollback.join("; "))]
    Rollback { error: Box<ControlError>, rollback: Vec<String> },
}

pub type Result<T> = std::result::Result<T, ControlError>;

/// The kinds of [`ControlError::State`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    /// A network of that name exists already.
    AlreadyExists,
    /// No such network.
    NotFound,
    /// The network still has endpoints.
    HasEndpoints,
    /// Another command is setting it up or removing it: try again.
    Busy,
}

impl ControlError {
    /// Whether the same call may succeed later: another command holds what this one needs
    /// (a network being set up or removed, the database's write lock past its timeout).
    pub fn retryable(&self) -> bool {
        match self {
            ControlError::State { kind: StateKind::Busy, .. } => true,
            ControlError::Store(StoreError::Db { source, .. }) => {
                source.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
            }
            _ => false,
        }
    }

    /// The kind, for a [`ControlError::State`].
    pub fn state_kind(&self) -> Option<StateKind> {
        match self {
            ControlError::State { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

pub(crate) fn state_err(kind: StateKind, message: impl Into<String>) -> ControlError {
    ControlError::State { kind, message: message.into() }
}

/// Named fault points for crash tests: when `DATAPLANE_FAULT` equals `point`, the process
/// aborts right there, as if killed. Inert unless that variable is set.
pub const FAULT_POINTS: [&str; 18] = [
    "network-create:vlan-veth",
    "network-create:vlan-made",
    "network-create:attached",
    "network-rm:marked",
    "network-rm:torn-down",
    "run:allocated",
    "run:netns-made",
    "run:linked",
    "rm:marked",
    "rm:torn-down",
    "connect:allocated",
    "connect:linked",
    "disconnect:removed",
    "docker-endpoint:linked",
    "cni-add:linked",
    "supervise:spawned",
    "endpoint:link-made",
    "cluster:claimed",
];

pub fn fault(point: &'static str) {
    debug_assert!(FAULT_POINTS.contains(&point), "unknown fault point {point}");
    crate::timing::mark(point);
    // The same points pause (for race tests): DATAPLANE_PAUSE=point, DATAPLANE_PAUSE_MS.
    if std::env::var_os("DATAPLANE_PAUSE").is_some_and(|v| v == point) {
        let ms = std::env::var("DATAPLANE_PAUSE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1500);
        eprintln!("dataplane: pause point {point}: sleeping {ms} ms");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    if std::env::var_os("DATAPLANE_FAULT").is_some_and(|v| v == point) {
        eprintln!("dataplane: fault point {point}: aborting");
        std::process::abort();
    }
}

/// Refuse to let front end `by` remove or change what another front end owns.
pub(crate) fn check_owner(kind: &str, name: &str, owner: &Owner, by: &Owner) -> Result<()> {
    match (owner, by) {
        (Owner::Docker { id, .. }, Owner::Cli) => invalid(format!(
            "{kind} {name} belongs to Docker ({} id {}): manage it with docker (docker {} ...), not dataplane",
            kind,
            &id[..12.min(id.len())],
            if kind == "network" { "network rm" } else { "rm" }
        )),
        (Owner::Cni { .. }, Owner::Cli) => invalid(format!(
            "{kind} {name} belongs to a CNI runtime (podman, containerd, CRI-O): remove the container or pod there, not with dataplane"
        )),
        (o, b) if std::mem::discriminant(o) != std::mem::discriminant(b) => {
            invalid(format!("{kind} {name} belongs to the {} front end, not to {}", o.label(), b.label()))
        }
        _ => Ok(()),
    }
}

pub fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(ControlError::Invalid(msg.into()))
}

pub struct Engine {
    pub pins: Pins,
    pub state_dir: PathBuf,
    store: Store,
    /// Cluster mode: the shared address plan (None: this host plans alone).
    cluster: Option<crate::cluster::Cluster>,
}

/// The state dir's marker that a cluster sweep is due (see [`Engine::cluster_failed`]).
const SWEEP_DUE: &str = "cluster-sweep-due";

/// Predefined networks that always exist.
pub const PREDEFINED: [&str; 2] = ["host", "none"];

/// Docker's rule for network and container names.
pub fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        return invalid(format!(
            "invalid {kind} name {name:?}: use 1-64 characters [a-zA-Z0-9_.-], starting with a letter or digit"
        ));
    }
    Ok(())
}

impl Engine {
    /// Open the store and bind it to the bpffs dir: refused when the dir belongs to another
    /// store, or holds networks' programs this store does not know (a replaced or emptied
    /// database), since reconciling would then tear down live endpoints.
    pub fn open(state_dir: &Path, bpffs: &Path) -> Result<Engine> {
        let mut e = Engine::open_unchecked(state_dir, bpffs)?;
        e.check_bpffs_owner()?;
        Ok(e)
    }

    /// Open without the ownership check (for `reconcile --take-over`).
    pub fn open_unchecked(state_dir: &Path, bpffs: &Path) -> Result<Engine> {
        let store = Store::open(state_dir)?;
        crate::timing::mark("store-open");
        Ok(Engine { pins: Pins::new(bpffs), state_dir: state_dir.to_path_buf(), store, cluster: None })
    }

    fn check_bpffs_owner(&mut self) -> Result<()> {
        if !self.pins.root().exists() {
            return Ok(());
        }
        let me = self.store.instance()?;
        let mine = self.pins.owner_marker(&me);
        let markers = self.pins.owner_markers();
        let known = !self.store.read(|tx| tx.networks())?.is_empty();
        let take_over = format!(
            "if this store replaced the one that made them, run `dataplane --state-dir {} --bpffs {} reconcile --take-over` \
             (the kernel is then made to match this store, removing what it does not know)",
            self.state_dir.display(),
            self.pins.root().display()
        );
        if let Some(other) = markers.iter().find(|m| **m != mine) {
            return invalid(format!(
                "bpffs dir {} belongs to another dataplane store ({}), not to the one in {}: give each --state-dir its own --bpffs; {take_over}",
                self.pins.root().display(),
                other.file_name().unwrap_or_default().to_string_lossy(),
                self.state_dir.display()
            ));
        }
        let network_pins = || {
            crate::bpf::parent::list_link_pins(&self.pins).iter().any(|(t, p)| {
                crate::bpf::pins::LinkPin::parse(t, p).is_some_and(|l| l.hook != crate::bpf::pins::Hook::Xdp)
            })
        };
        if !known && network_pins() {
            return invalid(format!(
                "bpffs dir {} holds networks' programs and endpoints that the store in {} does not know (was the database replaced or emptied?); refusing to tear them down; {take_over}",
                self.pins.root().display(),
                self.state_dir.display()
            ));
        }
        if markers.is_empty() && known {
            self.claim_bpffs()?;
        }
        Ok(())
    }

    /// Mark the bpffs dir as this store's.
    pub(crate) fn claim_bpffs(&mut self) -> Result<()> {
        let me = self.store.instance()?;
        let marker = self.pins.owner_marker(&me);
        crate::bpffs::create_private(&marker).map_err(|e| ControlError::Io {
            what: format!("marking {} as this store's", self.pins.root().display()),
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// `reconcile --take-over`: make this store the bpffs dir's owner.
    pub fn take_over_bpffs(&mut self) -> Result<()> {
        for m in self.pins.owner_markers() {
            let _ = std::fs::remove_dir(m);
        }
        if self.pins.root().exists() {
            self.claim_bpffs()?;
        }
        Ok(())
    }

    /// Plan addresses with the other hosts of cluster `cfg` (see cluster.rs).
    pub fn join_cluster(&mut self, cfg: crate::cluster::ClusterConfig) -> Result<()> {
        let instance = self.store.instance()?;
        self.cluster = Some(crate::cluster::Cluster::new(cfg, instance)?);
        Ok(())
    }

    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.cluster.as_ref()
    }

    /// Release this host's cluster claims that no attachment here holds any more (its
    /// endpoint was removed, or the command that claimed them died before recording
    /// them); `dry_run`: only say which. Under the store's write lock, so no claim of
    /// this host is half-recorded meanwhile.
    pub fn cluster_sweep(&mut self, dry_run: bool) -> Result<Vec<String>> {
        let Some(c) = self.cluster.as_ref() else { return Ok(Vec::new()) };
        self.store.write(|tx| -> Result<Vec<String>> {
            let ids: std::collections::BTreeMap<String, String> =
                tx.endpoints()?.into_iter().map(|e| (e.name, e.id)).collect();
            let live: std::collections::BTreeSet<(String, String)> = tx
                .attachments()?
                .into_iter()
                .filter_map(|a| ids.get(&a.endpoint).map(|id| (id.clone(), a.network)))
                .collect();
            let mut out = Vec::new();
            for (id, net, held) in c.mine()? {
                // Docker's IPAM claims live until Docker releases them.
                if live.contains(&(id.clone(), net)) || id.starts_with(docker_ipam::IPAM_HOLDER) {
                    continue;
                }
                if !dry_run {
                    c.release(&held)?;
                }
                let what: Vec<String> = held.ips.iter().map(|i| i.to_string()).chain([held.mac.to_string()]).collect();
                out.push(format!(
                    "cluster claims of gone endpoint {} on network {}: {}",
                    held.holder.endpoint,
                    held.network,
                    what.join(" ")
                ));
            }
            Ok(out)
        })
    }

    /// A command failed on the cluster while claiming: a claim it sent may still commit
    /// (etcd keeps a proposal a member accepted without quorum, and commits it once the
    /// quorum returns), so the next command that claims on this host sweeps first.
    pub(crate) fn cluster_failed(&self, e: ControlError) -> ControlError {
        if matches!(e, ControlError::Cluster(_)) && self.cluster.is_some() {
            let _ = std::fs::write(self.state_dir.join(SWEEP_DUE), b"");
        }
        e
    }

    /// See [`Engine::cluster_failed`]: sweep once if a claim of ours may have been left.
    pub(crate) fn cluster_catch_up(&mut self) {
        let due = self.state_dir.join(SWEEP_DUE);
        if self.cluster.is_some() && due.exists() && self.cluster_sweep(false).is_ok() {
            let _ = std::fs::remove_file(due);
        }
    }

    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Exclusive lock for network create/rm (their kernel work must not interleave on a
    /// parent); released when the returned file closes, also if the process dies.
    pub(crate) fn network_lock(&self) -> Result<std::fs::File> {
        let path = self.state_dir.join("network.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| ControlError::Io { what: format!("opening {}", path.display()), source })?;
        // SAFETY: flock on an fd we own.
        if !crate::sys::flock(&f, libc::LOCK_EX) {
            return Err(ControlError::Io {
                what: format!("locking {}", path.display()),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(f)
    }
}

/// Remove the map pins and directories once no program is attached, and then the tcx
/// upgrade queue's directory of this instance (see `bpf::parent::remove_if_unused`).
pub(crate) fn release_pins(pins: &Pins) -> std::result::Result<(), crate::bpf::BpfError> {
    let r = crate::bpf::parent::remove_if_unused(pins);
    background::forget_gone_instance(pins);
    r
}

type UndoStep = Box<dyn FnOnce() -> std::result::Result<(), String>>;

/// Run every rollback step, collecting failures instead of stopping at the first.
pub(crate) struct Undo {
    steps: Vec<(String, UndoStep)>,
}

impl Undo {
    pub fn new() -> Undo {
        Undo { steps: Vec::new() }
    }

    pub fn push(&mut self, what: impl Into<String>, f: impl FnOnce() -> std::result::Result<(), String> + 'static) {
        self.steps.push((what.into(), Box::new(f)));
    }

    /// Undo in reverse order; wrap `error` with whatever could not be undone.
    pub fn run(self, error: ControlError) -> ControlError {
        let failed = self.rollback();
        if failed.is_empty() {
            error
        } else {
            ControlError::Rollback { error: Box::new(error), rollback: failed }
        }
    }

    /// Undo in reverse order, continuing past failures; returns them.
    pub fn rollback(self) -> Vec<String> {
        let mut failed = Vec::new();
        for (what, f) in self.steps.into_iter().rev() {
            if let Err(e) = f() {
                failed.push(format!("{what}: {e}"));
            }
        }
        failed
    }

    pub fn forget(self) {}
}

//! The model: networks, endpoints and their attachments as the engine plans them and the
//! store keeps them (rows are these types as JSON). Nothing here talks to the kernel or
//! the database; `crate::store` re-exports every type under its old path.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::ipam::Pool;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Macvlan,
    Host,
    None,
    /// Addresses only: `dataplane-cni` serving as another CNI plugin's IPAM. No parent, no
    /// programs; its endpoints' interfaces are the other plugin's.
    Ipam,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Macvlan => "macvlan",
            Driver::Host => "host",
            Driver::None => "null",
            Driver::Ipam => "ipam",
        }
    }
}

/// The macvlan mode of a network's endpoints (Docker's `macvlan_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    #[default]
    Bridge,
    Private,
    Vepa,
    Passthru,
}

impl MacvlanMode {
    pub const ALL: [MacvlanMode; 4] =
        [MacvlanMode::Bridge, MacvlanMode::Private, MacvlanMode::Vepa, MacvlanMode::Passthru];

    pub fn name(self) -> &'static str {
        match self {
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Passthru => "passthru",
        }
    }
}

impl std::fmt::Display for MacvlanMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MacvlanMode {
    type Err = String;

    /// The error names the value and the modes there are.
    fn from_str(s: &str) -> Result<Self, String> {
        MacvlanMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("invalid macvlan_mode {s:?}: use one of bridge, private, vepa, passthru"))
    }
}

/// What a trunk parent's subinterface is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VlanKind {
    /// The kernel's 8021q device.
    Kernel,
    /// A veth pair steered by tc programs (kernels without 8021q).
    Ebpf,
    /// The user's own subinterface, used as it is and never deleted.
    Existing,
}

/// How a trunk parent `IFACE.VID` is realised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VlanParent {
    pub trunk: String,
    pub vid: u16,
    /// Whether dataplane created the subinterface (and so removes it with its last network).
    pub created: bool,
    pub kind: VlanKind,
    /// The hidden veth end fed by the trunk (eBPF kind only).
    pub peer: Option<String>,
    /// QinQ (`IFACE.OUTER.VID`): the outer 802.1ad S-tag VID; `vid` is then the inner
    /// 802.1Q C-tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outer: Option<u16>,
    /// QinQ on kernel devices: whether dataplane created the S-tag device `IFACE.OUTER`
    /// (removed with the last network using it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outer_created: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub driver: Driver,
    pub created: String,
    pub internal: bool,
    pub ipv6: bool,
    pub options: BTreeMap<String, String>,
    pub pools: Vec<Pool>,
    /// The interface macvlans hang on (e.g. `eth0` or `eth0.50`).
    pub parent: Option<String>,
    pub macvlan_mode: Option<MacvlanMode>,
    pub vlan: Option<VlanParent>,
    /// `creating`/`removing` while a command works on it (see `owner_pid`).
    #[serde(default = "ready")]
    pub state: EndpointState,
    #[serde(default)]
    pub owner_pid: u32,
    /// The start time of `owner_pid` (see [`ProcRef`]): a pid that now names another
    /// process is not the owner. 0 in rows written before it was recorded.
    #[serde(default)]
    pub owner_start: u64,
    #[serde(default)]
    pub owner: Owner,
    /// Made in cluster mode: defined in the cluster (the same everywhere), realised here
    /// the first time this host uses it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
    /// The cluster's create revision of the network this row realises (claims compare
    /// it: a network removed and made again under the name is another one). 0: unknown.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cluster_rev: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl Network {
    /// A new address-only network (IPAM for another plugin, a Docker IPAM pool): no
    /// parent, no interfaces, ready at once; `id` and `created` as the store makes them.
    pub fn address_only(
        id: String,
        created: String,
        name: &str,
        pools: Vec<Pool>,
        ipv6: bool,
        owner: Owner,
    ) -> Network {
        Network {
            id,
            name: name.to_string(),
            driver: Driver::Ipam,
            created,
            internal: false,
            ipv6,
            options: BTreeMap::new(),
            pools,
            parent: None,
            macvlan_mode: None,
            vlan: None,
            state: EndpointState::Ready,
            owner_pid: 0,
            owner_start: 0,
            owner,
            cluster: false,
            cluster_rev: 0,
        }
    }
}

/// Which front end made a network or endpoint: only that front end may remove it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Owner {
    /// The `dataplane` command line.
    #[default]
    Cli,
    /// Docker, through `dataplane plugin docker`: Docker's network or endpoint id, and for
    /// an endpoint the sandbox (network namespace path) it has joined, if any.
    Docker {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sandbox: Option<String>,
    },
    /// A CNI runtime, through `dataplane-cni`: for a network the conflist's network name;
    /// for an attachment the container id and interface name the runtime gave.
    Cni {
        #[serde(default, skip_serializing_if = "String::is_empty")]
        container_id: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        ifname: String,
    },
}

impl Owner {
    pub fn is_docker(&self) -> bool {
        matches!(self, Owner::Docker { .. })
    }

    pub fn is_cni(&self) -> bool {
        matches!(self, Owner::Cni { .. })
    }

    /// Short label for tables: `cli`, `docker`.
    pub fn label(&self) -> &'static str {
        match self {
            Owner::Cli => "cli",
            Owner::Docker { .. } => "docker",
            Owner::Cni { .. } => "cni",
        }
    }
}

fn ready() -> EndpointState {
    EndpointState::Ready
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    Creating,
    Ready,
    Removing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub name: String,
    /// Path of the network namespace (`/run/netns/NAME`, or a handed-over path).
    pub netns: String,
    /// Whether dataplane made the namespace (and so deletes it).
    pub netns_owned: bool,
    pub network_mode: NetworkMode,
    pub created: String,
    pub state: EndpointState,
    /// Process that is creating/removing it (to detect a crashed half-way command).
    pub owner_pid: u32,
    /// The start time of `owner_pid` (see [`ProcRef`]): a pid that now names another
    /// process is not the owner. 0 in rows written before it was recorded.
    #[serde(default)]
    pub owner_start: u64,
    /// Detached command (run -d CMD), if any.
    pub pid: Option<u32>,
    pub auto_remove: bool,
    pub command: Vec<String>,
    #[serde(default)]
    pub owner: Owner,
    /// The detached command's supervisor (`run -d`), recorded by the supervisor itself
    /// before it starts the command. It leads its own session and process group, so
    /// killing the group ends the command too, even before its pid is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<ProcRef>,
}

/// The network an endpoint was made on: the predefined `host` or `none`, or a network
/// by name. Stored as that name, as it always was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum NetworkMode {
    Host,
    None,
    Network(String),
}

impl NetworkMode {
    pub fn name(&self) -> &str {
        match self {
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
            NetworkMode::Network(n) => n,
        }
    }
}

impl From<String> for NetworkMode {
    fn from(s: String) -> Self {
        match s.as_str() {
            "host" => NetworkMode::Host,
            "none" | "" => NetworkMode::None,
            _ => NetworkMode::Network(s),
        }
    }
}

impl From<NetworkMode> for String {
    fn from(m: NetworkMode) -> String {
        m.name().to_string()
    }
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A process, unambiguously: its pid and its start time (clock ticks after boot, from
/// /proc/PID/stat), so a recycled pid is never taken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    pub pid: u32,
    pub start: u64,
}

impl ProcRef {
    /// The start time of `pid`, if it is running (zombies count as gone).
    pub fn start_of(pid: u32) -> Option<u64> {
        let rest = crate::sys::proc_stat(&pid.to_string())?;
        if matches!(rest.first().map(String::as_str), Some("Z") | Some("X")) {
            return None;
        }
        rest.get(19)?.parse().ok()
    }

    /// This process (its /proc entry read once per process, not at every row it marks).
    pub fn me() -> ProcRef {
        static ME: std::sync::Mutex<Option<ProcRef>> = std::sync::Mutex::new(None);
        let pid = std::process::id();
        let mut me = ME.lock().unwrap_or_else(|p| p.into_inner());
        // A forked child has another pid: it is another process.
        match *me {
            Some(m) if m.pid == pid => m,
            _ => {
                let m = ProcRef { pid, start: ProcRef::start_of(pid).unwrap_or(0) };
                *me = Some(m);
                m
            }
        }
    }

    /// Whether this very process still runs.
    pub fn alive(&self) -> bool {
        ProcRef::start_of(self.pid) == Some(self.start)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub endpoint: String,
    pub network: String,
    pub ifname: String,
    pub mac: crate::mac::Mac,
    pub ipv4: Option<IpAddr>,
    pub ipv6: Option<IpAddr>,
    /// The physical parent the MAC must be unique on.
    pub parent: String,
    /// ifindex requested for the interface (unique in this instance; keys the endpoint map).
    #[serde(default)]
    pub ifindex: u32,
    /// `creating` while `network connect` builds it (by `owner_pid`); reconcile leaves an
    /// attachment in flight alone, and undoes one whose process is gone.
    #[serde(default = "ready")]
    pub state: EndpointState,
    #[serde(default)]
    pub owner_pid: u32,
    /// The start time of `owner_pid` (see [`ProcRef`]): a pid that now names another
    /// process is not the owner. 0 in rows written before it was recorded.
    #[serde(default)]
    pub owner_start: u64,
}

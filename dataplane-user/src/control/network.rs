//! `network create | rm | ls | inspect`.

use std::collections::BTreeMap;

use dataplane_common::maps::TC_TRUNK_PROG;

use super::{
    check_name,
    facts::{parse_trunk_parent, physical_parent, vlan_device_keys, TrunkParent, HOST_AUX},
    invalid, vlan, ControlError, Engine, Result, Undo, PREDEFINED,
};
use crate::{
    bpf::{self, AttachMode},
    ipam::{self, PoolRequest},
    nl::Nl,
    store::{Attachment, Driver, Endpoint, EndpointState, MacvlanMode, Network, Owner, Tx, VlanKind, VlanParent},
};

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NetworkCreate {
    pub name: String,
    pub driver: String,
    pub subnets: Vec<String>,
    pub gateways: Vec<String>,
    pub ip_ranges: Vec<String>,
    pub aux: Vec<String>,
    pub opts: Vec<String>,
    pub internal: bool,
    pub ipv6: bool,
    /// Who creates it (and alone may remove it).
    pub owner: Owner,
    /// Cluster mode: realise here the cluster's network (same id, pools and options)
    /// instead of making a new one.
    #[serde(skip)]
    pub adopt: Option<Network>,
}

/// A cluster network as kept in etcd: the network (the same on every host) and the request
/// that made it, which each host replays when it first uses the network.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ClusterDoc {
    pub network: Network,
    pub request: NetworkCreate,
}

impl ClusterDoc {
    fn of(n: &Network, req: &NetworkCreate) -> ClusterDoc {
        let mut network = n.clone();
        network.state = EndpointState::Ready;
        network.owner_pid = 0;
        network.owner_start = 0;
        network.vlan = None;
        ClusterDoc { network, request: NetworkCreate { adopt: None, ..req.clone() } }
    }

    /// The network of cluster document `doc` (made at create revision `rev`).
    pub(crate) fn network_of(name: &str, doc: &str, rev: i64) -> Result<Network> {
        Ok(Network { cluster_rev: rev, ..ClusterDoc::parse(name, doc)?.network })
    }

    pub(crate) fn parse(name: &str, doc: &str) -> Result<ClusterDoc> {
        serde_json::from_str(doc).map_err(|e| {
            ControlError::Cluster(crate::cluster::ClusterError::Corrupt {
                key: format!("networks/{name}"),
                detail: e.to_string(),
            })
        })
    }
}

const IFNAMSIZ_MAX: usize = 15;

/// A macvlan network request, checked: every option known and valid.
struct NetworkSpec {
    parent: String,
    mode: MacvlanMode,
    /// The driver options as given (with `macvlan_mode` filled in).
    options: BTreeMap<String, String>,
}

impl NetworkSpec {
    fn parse(req: &NetworkCreate) -> Result<NetworkSpec> {
        check_name("network", &req.name)?;
        if PREDEFINED.contains(&req.name.as_str()) {
            return invalid(format!("network name {:?} is predefined and always exists; pick another name", req.name));
        }
        match req.driver.as_str() {
            "macvlan" => {}
            "host" | "null" | "none" => {
                return invalid(format!(
                    "only one instance of the {:?} network is allowed: it is predefined (use --network {})",
                    req.driver,
                    if req.driver == "host" { "host" } else { "none" }
                ))
            }
            other => {
                return invalid(format!(
                    "driver {other:?} is not supported: use -d macvlan (the host and none networks always exist)"
                ))
            }
        }
        let mut options = BTreeMap::new();
        for o in &req.opts {
            let Some((k, v)) = o.split_once('=') else {
                return invalid(format!("invalid option {o:?}: expected KEY=VALUE (e.g. -o parent=eth0)"));
            };
            check_option(req, k, v)?;
            if options.insert(k.to_string(), v.to_string()).is_some() {
                return invalid(format!("option {k:?} given twice"));
            }
        }
        let mode: MacvlanMode = match options.get("macvlan_mode") {
            Some(m) => m.parse().map_err(ControlError::Invalid)?,
            None => MacvlanMode::Bridge,
        };
        options.insert("macvlan_mode".into(), mode.to_string());
        let Some(parent) = options.get("parent").cloned() else {
            return invalid(
                "the macvlan driver needs a parent interface: add -o parent=IFACE (or IFACE.VID for an 802.1Q trunk)",
            );
        };
        if parent.is_empty() || parent.contains('/') || parent.chars().any(char::is_whitespace) {
            return invalid(format!("invalid parent interface name {parent:?}"));
        }
        if parent.len() > IFNAMSIZ_MAX {
            return invalid(format!(
                "parent interface name {parent:?} is longer than the kernel allows ({IFNAMSIZ_MAX} characters)"
            ));
        }
        if parent == "lo" {
            return invalid("parent lo is the loopback device; macvlan needs an Ethernet parent");
        }
        Ok(NetworkSpec { parent, mode, options })
    }
}

/// One driver option `k=v` of request `req`.
fn check_option(req: &NetworkCreate, k: &str, v: &str) -> Result<()> {
    let docker = matches!(req.owner, Owner::Docker { .. });
    match k {
        "parent" | "macvlan_mode" => Ok(()),
        "mtu" if !v.parse::<u32>().is_ok_and(|m| (68..=65535).contains(&m)) => {
            invalid(format!("invalid mtu {v:?}: use a number of bytes from 68 to 65535"))
        }
        "mtu" => Ok(()),
        "ip_probe_ms" if docker => invalid(
            "ip_probe_ms is not available through Docker: Docker's IPAM hands out the addresses, dataplane cannot probe them first",
        ),
        "ip_probe_ms" if !v.parse::<u64>().is_ok_and(|m| m <= 1000) => invalid(format!(
            "invalid ip_probe_ms {v:?}: milliseconds to wait for answers to an ARP probe before handing out an address, 0 (no probe) to 1000"
        )),
        "ip_probe_ms" => Ok(()),
        "host_access" if !["true", "false"].contains(&v) => invalid(format!(
            "invalid host_access {v:?}: use true (the host reaches the network's endpoints through an interface dataplane makes) or false"
        )),
        "host_access" if v == "true" && docker && !req.aux.iter().any(|a| a.starts_with(&format!("{HOST_AUX}="))) => {
            invalid(format!(
                "host_access through Docker needs the host interface's address reserved in Docker's IPAM: add --aux-address {HOST_AUX}=IP (an address of the subnet that Docker must not hand out)"
            ))
        }
        "host_access" => Ok(()),
        "endpoint_hooks" if !["tcx", "cls_bpf"].contains(&v) => invalid(format!(
            "invalid endpoint_hooks {v:?}: use tcx (the default: links no process in the endpoint can remove, upgraded in the background) or cls_bpf (tc filters only: faster attach and detach, but removable by a holder of CAP_NET_ADMIN in the endpoint)"
        )),
        "endpoint_hooks" => Ok(()),
        _ => invalid(format!(
            "unknown option {k:?} for driver macvlan: known options are parent, macvlan_mode, mtu, endpoint_hooks, host_access and ip_probe_ms"
        )),
    }
}

/// `-o mtu=N` must fit the parent (a macvlan's MTU cannot exceed its lower device's, nor
/// a VLAN device's its trunk's): refused here, naming both, rather than by every `run`.
fn check_mtu(
    nl: &Nl,
    spec: &NetworkSpec,
    existing: Option<&crate::nl::LinkInfo>,
    trunk: Option<&TrunkParent>,
) -> Result<()> {
    let Some(mtu) = spec.options.get("mtu").and_then(|v| v.parse::<u32>().ok()) else { return Ok(()) };
    let parent = &spec.parent;
    let (limit, of) = match (existing, trunk) {
        (Some(l), _) => (l.mtu, parent.to_string()),
        (None, Some(t)) => (nl.link(&t.trunk)?.and_then(|l| l.mtu), t.trunk.clone()),
        (None, None) => (None, String::new()),
    };
    match limit {
        Some(max) if mtu > max => invalid(format!(
            "invalid mtu {mtu}: parent {of} has an MTU of {max}, and an endpoint's cannot be larger; raise {of}'s MTU first or use -o mtu={max} or less"
        )),
        _ => Ok(()),
    }
}

/// The parent as it is in the kernel (None: not there yet, which only a trunk parent
/// `IFACE.VID` may be) and its trunk reading.
fn check_parent(nl: &Nl, parent: &str) -> Result<(Option<crate::nl::LinkInfo>, Option<TrunkParent>)> {
    let existing = nl.link(parent)?;
    if existing.as_ref().is_some_and(|l| l.loopback) {
        return invalid(format!("parent {parent} is a loopback device; macvlan needs an Ethernet parent"));
    }
    let trunk = match (&existing, parse_trunk_parent(parent)) {
        (Some(_), Ok(t)) => t,
        // An existing interface whose name merely has a dot.
        (Some(_), Err(_)) => None,
        (None, Ok(Some(t))) => Some(t),
        (None, Ok(None)) => {
            return invalid(format!("parent interface {parent} does not exist; create it first or pick another parent"))
        }
        (None, Err(e)) => return Err(e),
    };
    if trunk.as_ref().is_some_and(|t| t.trunk == "lo") {
        return invalid(format!("parent {parent}: the trunk lo is the loopback device"));
    }
    Ok((existing, trunk))
}

/// Validate a new network against the others and record it as `creating`.
fn record_creating(
    tx: &Tx,
    req: &NetworkCreate,
    spec: &NetworkSpec,
    parent_exists: bool,
    trunk: &Option<TrunkParent>,
    cluster: Option<&crate::cluster::Cluster>,
) -> Result<Network> {
    let parent = &spec.parent;
    if tx.network(&req.name)?.is_some_and(|n| n.name == req.name) {
        return Err(super::state_err(
            super::StateKind::AlreadyExists,
            format!(
                "network with name {} already exists; remove it first (dataplane network rm {}) or pick another name",
                req.name, req.name
            ),
        ));
    }
    let others = tx.networks()?;
    let passthru = |m: Option<MacvlanMode>| m == Some(MacvlanMode::Passthru);
    if let Some(o) = others
        .iter()
        .find(|o| o.parent.as_ref() == Some(parent) && (passthru(Some(spec.mode)) || passthru(o.macvlan_mode)))
    {
        return invalid(format!(
            "parent {parent} is already used by network {} and passthru mode needs the parent to itself; use another parent",
            o.name
        ));
    }
    // The cluster's network this one joins (CNI, same name and subnets).
    let mut joined: Option<Network> = None;
    let pools = match (&req.adopt, cluster) {
        (Some(a), _) => a.pools.clone(),
        (None, Some(c)) => {
            // Subnets may overlap no network of the cluster either.
            let mut all = others.clone();
            for (name, doc, rev) in c.networks()? {
                let d = ClusterDoc::parse(&name, &doc)?;
                if name == req.name {
                    joined = Some(Network { cluster_rev: rev, ..d.network });
                } else if !all.iter().any(|o| o.name == name) {
                    all.push(d.network);
                }
            }
            let pools = pools_for(req, &all, ipam::default_v4_pool)?;
            match joined.as_ref().filter(|_| req.owner.is_cni()) {
                // A CNI network joins the cluster's network of its name (made by the CLI
                // or by another node's first ADD) when the subnets agree.
                Some(j) => {
                    let subnets = |p: &[ipam::Pool]| p.iter().map(|p| p.subnet.to_string()).collect::<Vec<_>>();
                    if subnets(&j.pools) != subnets(&pools) {
                        return invalid(format!(
                            "network {} exists in cluster {} with subnets {}; this configuration asks for {}: use the same subnets on every node",
                            req.name,
                            c.cfg.url(),
                            subnets(&j.pools).join(", "),
                            subnets(&pools).join(", ")
                        ));
                    }
                    j.pools.clone()
                }
                None => {
                    joined = None;
                    pools
                }
            }
        }
        (None, None) => pools_for(req, &others, ipam::default_v4_pool)?,
    };
    // A VLAN device another network of ours made for the same parent is shared.
    let shared = others.iter().find_map(|o| o.vlan.clone().filter(|_| o.parent.as_ref() == Some(parent)));
    let vlan = match trunk {
        Some(tp) if parent_exists && shared.is_none() => Some(VlanParent {
            trunk: tp.trunk.clone(),
            vid: tp.vid,
            created: false,
            kind: VlanKind::Existing,
            peer: None,
            outer: tp.outer,
            outer_created: false,
        }),
        Some(_) => shared,
        None => None,
    };
    let mut n = Network {
        id: req.adopt.as_ref().or(joined.as_ref()).map_or_else(crate::store::new_id, |a| a.id.clone()),
        name: req.name.clone(),
        driver: Driver::Macvlan,
        created: req.adopt.as_ref().or(joined.as_ref()).map_or_else(crate::store::now_rfc3339, |a| a.created.clone()),
        internal: req.internal,
        ipv6: req.ipv6,
        options: spec.options.clone(),
        pools,
        parent: Some(parent.clone()),
        macvlan_mode: Some(spec.mode),
        vlan,
        state: EndpointState::Creating,
        owner_pid: std::process::id(),
        owner_start: crate::store::ProcRef::me().start,
        owner: req.owner.clone(),
        cluster: cluster.is_some(),
        cluster_rev: req.adopt.as_ref().or(joined.as_ref()).map_or(0, |a| a.cluster_rev),
    };
    if let (Some(c), None, None) = (cluster, &req.adopt, &joined) {
        let doc = serde_json::to_string(&ClusterDoc::of(&n, req)).expect("serialisable");
        match c.create_network(&n.name, &doc)? {
            Ok(rev) => n.cluster_rev = rev,
            Err(existing) => {
                let id = ClusterDoc::parse(&n.name, &existing).map(|d| d.network.id).unwrap_or_default();
                return Err(super::state_err(
                super::StateKind::AlreadyExists,
                format!(
                    "network with name {} already exists in cluster {} (id {}); use it, or remove it first (dataplane network rm {})",
                    n.name,
                    c.cfg.url(),
                    &id[..12.min(id.len())],
                    n.name
                ),
            ));
            }
        }
    }
    tx.put_network(&n)?;
    Ok(n)
}

/// The address pools request `req` asks for, checked against the `others` networks'
/// subnets; `default_v4` picks a subnet when none is given.
pub(crate) fn pools_for(
    req: &NetworkCreate,
    others: &[Network],
    default_v4: impl Fn(&[(String, ipam::Cidr)]) -> Option<ipam::Cidr>,
) -> Result<Vec<ipam::Pool>> {
    let existing: Vec<(String, ipam::Cidr)> =
        others.iter().flat_map(|o| o.pools.iter().map(|p| (o.name.clone(), p.subnet))).collect();
    let req = PoolRequest {
        subnets: req.subnets.clone(),
        gateways: req.gateways.clone(),
        ip_ranges: req.ip_ranges.clone(),
        aux: req.aux.clone(),
        ipv6: req.ipv6,
    };
    Ok(ipam::build_pools(&req, &existing, default_v4)?)
}

/// The parent's programs: the trunk tc ingress on every parent (tagged frames reach only
/// VLANs that have a network here, also when the parent carries only untagged networks)
/// and XDP admission, each unless already there.
fn attach_parent_programs(pins: &bpf::Pins, phys: &str, undo: &mut Undo) -> Result<()> {
    if bpf::tc::attach_ingress(pins, None, phys, TC_TRUNK_PROG)? {
        let (phys2, pins2) = (phys.to_string(), pins.clone());
        undo.push(format!("detaching tc from {phys}"), move || {
            bpf::tc::detach_ingress(&pins2, None, &phys2).map_err(|e| e.to_string())
        });
    }
    if !pins.xdp_link(None, phys).exists() {
        bpf::attach_parent(pins, None, phys, AttachMode::Auto)?;
        let (phys2, pins2) = (phys.to_string(), pins.clone());
        undo.push(format!("detaching XDP from {phys}"), move || {
            bpf::detach_parent(&pins2, None, &phys2).map_err(|e| e.to_string())
        });
        super::fault("network-create:attached");
    }
    Ok(())
}

/// Admit network `n`'s VLAN device's own MAC (see `facts::vlan_device_keys_at`).
fn admit_vlan_device(pins: &bpf::Pins, n: &Network, undo: &mut Undo) -> Result<()> {
    let keys = vlan_device_keys(n);
    bpf::parent::admit_host(pins, &keys)?;
    if !keys.is_empty() {
        let pins2 = pins.clone();
        undo.push(format!("removing the admission entries of {}", n.parent.as_deref().unwrap_or("?")), move || {
            bpf::parent::withdraw_host(&pins2, &keys);
            Ok(())
        });
    }
    Ok(())
}

impl Engine {
    pub fn network_create(&mut self, req: NetworkCreate) -> Result<Network> {
        let n = self.network_create_inner(req)?;
        if n.options.get("host_access").is_some_and(|v| v == "true") {
            // After the network's lock is released (removal below takes it again).
            if let Err(e) = self.make_host_shim(&n) {
                return Err(match self.network_rm_by(&n.name, &n.owner) {
                    Ok(_) => e,
                    Err(rm) => ControlError::Invalid(format!("{e}; removing network {} again failed: {rm}", n.name)),
                });
            }
        }
        Ok(n)
    }

    /// Network `n`'s host-access interface: an endpoint of `n` in the host's namespace
    /// (admission, anti-spoofing, counters and reconcile as for any endpoint), with the
    /// aux address `dataplane-host` if the network reserves one (Docker's IPAM then never
    /// hands it out), else an address from the network's pool; a route to the subnet, no
    /// default route.
    fn make_host_shim(&mut self, n: &Network) -> Result<()> {
        let ip = n.pools.iter().find_map(|p| p.aux.get(HOST_AUX).filter(|a| a.is_ipv4()).map(|a| a.to_string()));
        self.run(super::RunRequest {
            name: format!("{}-host", n.name),
            network: n.name.clone(),
            host_shim: true,
            ip,
            ..Default::default()
        })
        .map(drop)
    }

    fn network_create_inner(&mut self, req: NetworkCreate) -> Result<Network> {
        let spec = NetworkSpec::parse(&req)?;
        let nl = Nl::here()?;
        let (existing_parent, trunk) = check_parent(&nl, &spec.parent)?;
        check_mtu(&nl, &spec, existing_parent.as_ref(), trunk.as_ref())?;
        let pins = self.pins.clone();
        let _lock = self.network_lock()?;
        // 1. Validate against the store and record the network as `creating`.
        // Docker's networks stay this dockerd's: their addresses are planned by the IPAM
        // driver's pools (docker_ipam.rs) when Docker is given ours.
        let cluster = self.cluster.as_ref().filter(|_| !matches!(req.owner, Owner::Docker { .. }));
        let mut n =
            self.store.write(|tx| record_creating(tx, &req, &spec, existing_parent.is_some(), &trunk, cluster))?;

        // 2. Kernel work (network lock held: no other creator races us on a parent).
        let mut undo = Undo::new();
        let step = (|| -> Result<()> {
            if let (Some(tp), None) = (&trunk, &n.vlan) {
                self.make_vlan(&nl, &mut n, tp, &mut undo)?;
            }
            if let Some(v) = n.vlan.as_ref().filter(|v| !v.created) {
                vlan::register_existing(&nl, &pins, v)?;
            }
            attach_parent_programs(&pins, physical_parent(&n).unwrap_or_default(), &mut undo)?;
            admit_vlan_device(&pins, &n, &mut undo)
        })();
        if let Err(e) = step {
            let err = undo.run(e);
            // Maps (and their dir) made for this attempt go when nothing is attached.
            let _ = super::release_pins(&pins);
            let name = n.name.clone();
            let _ = self.store.write(|tx| -> Result<()> { Ok(tx.delete_network(&name)?) });
            if let (Some(c), None) = (&self.cluster, &req.adopt) {
                // Made by this command a moment ago: nobody can hold claims on it yet.
                if let Err(x) = c.delete_network(&name, &n.id) {
                    return Err(ControlError::Invalid(format!(
                        "{err}; removing network {name} from the cluster also failed: {x}"
                    )));
                }
            }
            return Err(err);
        }
        undo.forget();
        self.claim_bpffs()?;
        // 3. Done.
        n.state = EndpointState::Ready;
        let n2 = n.clone();
        self.store.write(|tx| -> Result<()> { Ok(tx.put_network(&n2)?) })?;
        Ok(n)
    }

    /// Make the VLAN subinterface of trunk parent `tp` for network `n` (recorded in the
    /// store before and after, so a crash at any point is torn down by reconcile).
    fn make_vlan(&mut self, nl: &Nl, n: &mut Network, tp: &TrunkParent, undo: &mut Undo) -> Result<()> {
        let pins = self.pins.clone();
        let parent = n.parent.clone().unwrap_or_default();
        // Record what is about to be made before making it: a process killed inside
        // vlan::create leaves a row that says which devices and pins to remove.
        if let Some(tl) = nl.link(&tp.trunk)? {
            let mut intent = n.clone();
            intent.vlan = Some(VlanParent {
                trunk: tp.trunk.clone(),
                vid: tp.vid,
                created: true,
                kind: VlanKind::Ebpf,
                peer: Some(vlan::hidden_peer(tl.index, tp.outer, tp.vid)),
                outer: tp.outer,
                outer_created: false,
            });
            self.store.write(|tx| -> Result<()> { Ok(tx.put_network(&intent)?) })?;
        }
        let mut v = vlan::create(nl, &pins, tp, &parent)?;
        if v.outer.is_some() && !v.outer_created && v.kind == VlanKind::Kernel {
            // An S-tag device another QinQ network of ours made: co-owned, so the last of
            // them removes it (not whichever made it, while others use it).
            let (trunk, outer, me) = (v.trunk.clone(), v.outer, n.name.clone());
            v.outer_created = self.store.read(|tx| -> Result<bool> {
                Ok(tx.networks()?.iter().any(|o| {
                    o.name != me
                        && o.vlan.as_ref().is_some_and(|x| x.trunk == trunk && x.outer == outer && x.outer_created)
                }))
            })?;
        }
        let (p2, v2) = (parent.clone(), v.clone());
        undo.push(format!("removing VLAN device {parent}"), move || {
            let nl = Nl::here().map_err(|e| e.to_string())?;
            let errs = vlan::remove(&nl, &pins, &p2, &v2);
            if errs.is_empty() {
                Ok(())
            } else {
                Err(errs.join("; "))
            }
        });
        n.vlan = Some(v);
        // Record it at once, so a crash from here on is torn down by reconcile.
        let n2 = n.clone();
        self.store.write(|tx| -> Result<()> { Ok(tx.put_network(&n2)?) })?;
        super::fault("network-create:vlan-made");
        Ok(())
    }

    /// Remove networks; returns warnings about kernel leftovers that could not be removed.
    pub fn network_rm(&mut self, name: &str) -> Result<Vec<String>> {
        self.network_rm_by(name, &Owner::Cli)
    }

    /// Remove a network on behalf of front end `by`, which must be the one that made it.
    pub(crate) fn network_rm_by(&mut self, name: &str, by: &Owner) -> Result<Vec<String>> {
        if PREDEFINED.contains(&name) {
            return invalid(format!("{name} is a predefined network and cannot be removed"));
        }
        // Only the CLI removes a network from the cluster; a CNI DEL that was the last
        // user here removes this host's copy alone.
        let cluster = self.cluster.as_ref().filter(|_| *by == Owner::Cli);
        // A cluster network this host never used: only the cluster's record goes.
        if let Some(c) = cluster {
            if self.store.read(|tx| tx.network(name))?.filter(|n| n.name == name).is_none() {
                return match c.remove_network(name)? {
                    crate::cluster::Removed::Done => Ok(Vec::new()),
                    crate::cluster::Removed::InUse(hosts) => Err(in_use_elsewhere(name, &hosts)),
                    crate::cluster::Removed::Absent => Err(super::state_err(
                        super::StateKind::NotFound,
                        format!("network {name} not found (list them with dataplane network ls)"),
                    )),
                };
            }
        }
        let pins = self.pins.clone();
        let _lock = self.network_lock()?;
        // 1. Check and mark it `removing` (runs refuse it from now on, so nothing attaches
        // between this check and the removal of its host-access interface).
        let (n, others, shim) = self.store.write(|tx| -> Result<(Network, Vec<Network>, Option<String>)> {
            let Some(mut n) = tx.network(name)? else {
                return Err(super::state_err(
                    super::StateKind::NotFound,
                    format!("network {name} not found (list them with dataplane network ls)"),
                ));
            };
            super::check_owner("network", &n.name, &n.owner, by)?;
            // The network's own host-access interface goes with it; any other user keeps it.
            let shims = super::facts::host_shims(tx)?;
            let (shim, users): (Vec<String>, Vec<String>) = tx
                .attachments()?
                .into_iter()
                .filter(|a| a.network == n.name)
                .map(|a| a.endpoint)
                .partition(|e| shims.contains(e));
            let shim = shim.into_iter().next();
            if !users.is_empty() {
                return Err(super::state_err(
                    super::StateKind::HasEndpoints,
                    format!(
                        "network {} has active endpoints ({}): remove them (dataplane rm {}) or disconnect them first",
                        n.name,
                        users.join(", "),
                        users.join(" ")
                    ),
                ));
            }
            let others: Vec<Network> = tx.networks()?.into_iter().filter(|o| o.name != n.name).collect();
            n.state = EndpointState::Removing;
            n.owner_pid = std::process::id();
            n.owner_start = crate::store::ProcRef::me().start;
            tx.put_network(&n)?;
            Ok((n, others, shim))
        })?;
        // A cluster network leaves the cluster first (refused while other hosts have
        // endpoints on it); then this host's copy goes.
        if let (true, Some(c)) = (n.cluster, self.cluster.as_ref().filter(|_| *by == Owner::Cli)) {
            let gone = match c.remove_network(&n.name) {
                Ok(crate::cluster::Removed::InUse(hosts)) => Err(in_use_elsewhere(&n.name, &hosts)),
                Ok(_) => Ok(()),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = gone {
                let mut back = n.clone();
                back.state = EndpointState::Ready;
                let _ = self.store.write(|tx| -> Result<()> { Ok(tx.put_network(&back)?) });
                return Err(e);
            }
        }
        super::fault("network-rm:marked");
        if let Some(s) = shim {
            if let Err(e) = self.remove_endpoint(&s, false, |_| Ok(())) {
                // The network stays as it was (its interface is reconciled if half gone).
                let mut back = n.clone();
                back.state = EndpointState::Ready;
                let _ = self.store.write(|tx| -> Result<()> { Ok(tx.put_network(&back)?) });
                return Err(e);
            }
        }
        // 2. Kernel side; a crash from here on is finished by reconcile.
        let warnings = teardown_network(&pins, &n, &others);
        super::fault("network-rm:torn-down");
        // 3. Done.
        let name = n.name.clone();
        self.store.write(|tx| -> Result<()> { Ok(tx.delete_network(&name)?) })?;
        Ok(warnings)
    }

    /// Every network: the predefined ones, this host's, and in cluster mode the cluster's
    /// that this host has not used yet.
    pub fn networks(&mut self) -> Result<Vec<Network>> {
        let cluster = match &self.cluster {
            Some(c) => {
                let docs = c.networks()?;
                let docs: Vec<Network> = docs
                    .iter()
                    .map(|(name, doc, rev)| ClusterDoc::network_of(name, doc, *rev))
                    .collect::<Result<_>>()?;
                self.cluster_prune(&docs);
                docs
            }
            None => Vec::new(),
        };
        let mut v = self.networks_here()?;
        for n in cluster {
            if !v.iter().any(|l| l.name == n.name) {
                v.push(n);
            }
        }
        Ok(v)
    }

    /// Remove this host's copies of cluster networks that the cluster no longer has
    /// (removed on another host); one with endpoints here stays (and says so on use).
    fn cluster_prune(&mut self, docs: &[Network]) {
        let Ok(local) = self.store.read(|tx| tx.networks()) else { return };
        for l in local {
            if l.cluster && l.state == EndpointState::Ready && !docs.iter().any(|d| d.name == l.name && d.id == l.id) {
                let _ = self.network_rm_by(&l.name, &l.owner);
            }
        }
    }

    /// The predefined networks and this host's (no cluster round trip).
    pub fn networks_here(&mut self) -> Result<Vec<Network>> {
        let mut v = predefined_networks();
        v.extend(self.store.read(|tx| tx.networks())?);
        Ok(v)
    }

    pub fn network(&mut self, name: &str) -> Result<Option<Network>> {
        if let Some(p) = predefined_networks().into_iter().find(|n| n.name == name) {
            return Ok(Some(p));
        }
        if let Some(n) = self.store.read(|tx| tx.network(name))? {
            return Ok(Some(n));
        }
        match &self.cluster {
            Some(c) => {
                let doc = c.network(name)?;
                Ok(doc.map(|(d, _)| ClusterDoc::parse(name, &d)).transpose()?.map(|d| d.network))
            }
            None => Ok(None),
        }
    }

    /// Cluster mode: make sure network `name`, if it is a cluster network, is realised
    /// here (parent programs, VLAN device) as the cluster defines it, before an endpoint
    /// joins it. A copy here that the cluster no longer has (or has made again) is refused.
    pub(crate) fn cluster_adopt(&mut self, name: &str) -> Result<()> {
        if self.cluster.is_none() || PREDEFINED.contains(&name) {
            return Ok(());
        }
        let mut local = self.store.read(|tx| tx.network(name))?.filter(|n| n.name == name);
        // A copy realised here: its claims compare the cluster's create revision, so a
        // network removed (or made again) since is found out by the claim, not read now.
        if local.as_ref().is_some_and(|l| !l.cluster || (l.state == EndpointState::Ready && l.cluster_rev != 0)) {
            return Ok(());
        }
        if local.as_ref().is_some_and(|l| l.state != EndpointState::Ready) {
            // Another command of this host is realising it: its creator holds the network
            // lock until the row is ready (or gone).
            drop(self.network_lock()?);
            local = self.store.read(|tx| tx.network(name))?.filter(|n| n.name == name);
        }
        let Some(c) = &self.cluster else { return Ok(()) };
        let doc = match c.network(name)? {
            Some((d, rev)) => {
                let d = ClusterDoc::parse(name, &d)?;
                Some(ClusterDoc { network: Network { cluster_rev: rev, ..d.network }, ..d })
            }
            None => None,
        };
        let url = c.cfg.url();
        match (local, doc) {
            (Some(l), Some(d)) if l.id == d.network.id => Ok(()),
            (Some(l), d) => invalid(format!(
                "network {name} here (id {}) is {} in cluster {url}: remove it here (dataplane network rm {name}){}",
                &l.id[..12],
                if d.is_some() { "not the network of that name" } else { "no longer" },
                if d.is_some() { " to use the cluster's" } else { "" }
            )),
            (None, Some(d)) if d.network.owner != Owner::Cli => invalid(format!(
                "network {name} of cluster {url} belongs to {}, which allocates its addresses: attach containers through it, not with dataplane",
                match d.network.owner {
                    Owner::Cni { .. } => "CNI",
                    _ => "Docker",
                }
            )),
            (None, Some(d)) => {
                let mut req = NetworkCreate { adopt: Some(d.network), ..d.request };
                // This host's name for the parent (`--cluster-parent`); a trunk parent keeps
                // its VLAN suffix (eth0.50 -> IFACE.50).
                if let Some(mine) = c.cfg.parents.get(name) {
                    for o in &mut req.opts {
                        if let Some(p) = o.strip_prefix("parent=") {
                            let vlan = p.split_once('.').map(|(_, v)| format!(".{v}")).unwrap_or_default();
                            *o = format!("parent={mine}{vlan}");
                        }
                    }
                }
                match self.network_create(req) {
                    Ok(_) => Ok(()),
                    // Another command of this host realised it meanwhile.
                    Err(e) if e.state_kind() == Some(super::StateKind::AlreadyExists) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            (None, None) => Ok(()),
        }
    }
    /// The endpoints on network `n`, each with its attachment to it (none for an endpoint
    /// of a predefined network, which has no interface of ours).
    pub fn network_members(&mut self, n: &Network) -> Result<Vec<(Endpoint, Option<Attachment>)>> {
        let (eps, atts): (Vec<Endpoint>, Vec<Attachment>) =
            self.store.read(|tx| -> Result<_> { Ok((tx.endpoints()?, tx.attachments()?)) })?;
        Ok(eps
            .into_iter()
            .filter_map(|e| {
                let att = atts.iter().find(|a| a.endpoint == e.name && a.network == n.name).cloned();
                let on_predefined = att.is_none() && e.network_mode.name() == n.name;
                (att.is_some() || on_predefined).then_some((e, att))
            })
            .collect())
    }
}

/// Kernel side of removing network `n`: its VLAN device and parent program, unless
/// another network still uses them. Continues past failures and returns them.
pub(crate) fn teardown_network(pins: &crate::bpf::Pins, n: &Network, others: &[Network]) -> Vec<String> {
    let mut warnings = Vec::new();
    let nl = match Nl::here() {
        Ok(nl) => nl,
        Err(e) => return vec![e.to_string()],
    };
    if let (Some(v), Some(parent)) = (&n.vlan, &n.parent) {
        if !others.iter().any(|o| o.parent.as_deref() == Some(parent)) {
            let keys = vlan_device_keys(n);
            warnings.extend(vlan::remove(&nl, pins, parent, v));
            bpf::parent::withdraw_host(pins, &keys);
        }
    }
    if let Some(phys) = physical_parent(n) {
        if !others.iter().any(|o| physical_parent(o) == Some(phys)) {
            if let Err(e) = bpf::tc::detach_ingress(pins, None, phys) {
                warnings.push(e.to_string());
            }
            if pins.xdp_link(None, phys).exists() {
                if let Err(e) = bpf::detach_parent(pins, None, phys) {
                    warnings.push(e.to_string());
                }
            }
        }
    }
    // Maps made for a VLAN device outlive it unless nothing is attached any more.
    if let Err(e) = super::release_pins(pins) {
        warnings.push(e.to_string());
    }
    warnings
}

fn in_use_elsewhere(name: &str, hosts: &[String]) -> ControlError {
    super::state_err(
        super::StateKind::HasEndpoints,
        format!(
            "network {name} has endpoints on other hosts of the cluster ({}): remove them there first",
            hosts.join(", ")
        ),
    )
}

/// `host` and `none`, with ids derived from their names so they are stable.
pub fn predefined_networks() -> Vec<Network> {
    let mk = |name: &str, driver: Driver| Network {
        id: format!("{:0<64}", name.bytes().map(|b| format!("{b:02x}")).collect::<String>()),
        name: name.into(),
        driver,
        created: "1970-01-01T00:00:00.000000000Z".into(),
        internal: false,
        ipv6: false,
        options: BTreeMap::new(),
        pools: vec![],
        parent: None,
        macvlan_mode: None,
        vlan: None,
        state: EndpointState::Ready,
        owner_pid: 0,
        owner_start: 0,
        owner: Owner::Cli,
        cluster: false,
        cluster_rev: 0,
    };
    vec![mk("host", Driver::Host), mk("none", Driver::None)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trunk_parents() {
        let t = |trunk: &str, outer: Option<u16>, vid: u16| Some(TrunkParent { trunk: trunk.into(), outer, vid });
        assert_eq!(parse_trunk_parent("eth0").unwrap(), None);
        assert_eq!(parse_trunk_parent("eth0.50").unwrap(), t("eth0", None, 50));
        assert_eq!(parse_trunk_parent("trunk0.4094").unwrap(), t("trunk0", None, 4094));
        assert_eq!(parse_trunk_parent("eth0.100.50").unwrap(), t("eth0", Some(100), 50));
        let e = parse_trunk_parent("trunk0.070").unwrap_err().to_string();
        assert!(e.contains("\"trunk0.070\"") && e.contains("write it as trunk0.70"), "{e}");
        let e = parse_trunk_parent("eth0.0100.50").unwrap_err().to_string();
        assert!(e.contains("write it as eth0.100.50"), "{e}");
        for bad in [
            "eth0.0",
            "eth0.4095",
            "eth0.5.0",
            "eth0.0.5",
            "eth0.1.2.3",
            ".50",
            "eth0.",
            "eth0.x",
            "eth0.-1",
            "eth0.00050",
            "eth0.100.",
        ] {
            let e = parse_trunk_parent(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")) && e.contains("VID 1..4094"), "{bad}: {e}");
        }
    }

    #[test]
    fn names() {
        assert!(check_name("network", "pub_net").is_ok());
        assert!(check_name("network", "macvlan50").is_ok());
        for bad in ["", "-x", "a b", "x/y", &"a".repeat(65)] {
            assert!(check_name("network", bad).unwrap_err().to_string().contains("invalid network name"));
        }
    }
}

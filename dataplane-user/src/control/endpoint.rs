//! Endpoints: `run`, `connect`, `disconnect`, `rm`, `ps`.
//!
//! An endpoint is a network namespace: one dataplane makes (`/run/netns/NAME`) or one
//! the user hands over (`--netns PATH`). For macvlan networks it gets `eth0` (then eth1,
//! ...), a macvlan of the network's parent created directly inside the namespace.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use dataplane_common::{
    maps::{EP_HAS_IPV4, EP_HAS_IPV6, EP_IFINDEX_BASE, EP_SLOTS},
    AdmitKey, AdmitValue, EndpointInfo, Ip6Key, IpKey, OurIp,
};

use super::{
    check_name,
    facts::{admit_keys, is_host_shim, network_mtu, physical_parent, pid_alive},
    invalid, ControlError, Engine, Result, Undo,
};
use crate::{
    bpf::{self, Pins},
    cluster::Cluster,
    ipam,
    mac::Mac,
    netns,
    nl::Nl,
    store::{Attachment, Endpoint, EndpointState, MacvlanMode, Network, Owner, Tx},
};

#[derive(Debug, Default, Clone)]
pub struct RunRequest {
    pub name: String,
    pub network: String,
    pub netns: Option<String>,
    pub ip: Option<String>,
    pub ip6: Option<String>,
    pub mac: Option<String>,
    pub auto_remove: bool,
    pub command: Vec<String>,
    /// The network's host-access interface (`-o host_access=true`): a macvlan in this
    /// (the host's) namespace, made by `network create`, never by a user's `run`.
    pub host_shim: bool,
}

pub use crate::netns::HOST_NS;

/// The name of network `n`'s host-access interface in the host's namespace.
pub fn host_shim_ifname(n: &Network) -> String {
    format!("dph{}", &n.id[..8.min(n.id.len())])
}

/// What the CLI needs to start the endpoint's command.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub endpoint: Endpoint,
    pub attachment: Option<Attachment>,
}

fn owner_name(o: &Owner) -> &'static str {
    match o {
        Owner::Cli => "the dataplane command line",
        Owner::Docker { .. } => "Docker",
        Owner::Cni { .. } => "a CNI runtime",
    }
}

fn parse_opt_ip(s: &Option<String>) -> Result<Option<IpAddr>> {
    s.as_deref().map(ipam::parse_ip).transpose().map_err(Into::into)
}

/// A stable small number per endpoint for the admission map's accounting field.
pub fn endpoint_number(id: &str) -> u32 {
    u32::from_str_radix(&id[..8.min(id.len())], 16).unwrap_or(0) & 0x7fff_ffff
}

pub(crate) fn push_admission(pins: &Pins, n: &Network, a: &Attachment, endpoint_id: &str) -> Result<()> {
    let mac = a.mac;
    let keys = admit_keys(n, mac.0).ok_or_else(|| {
        ControlError::Invalid(format!(
            "parent {} of network {} is gone; recreate it or remove the network",
            physical_parent(n).unwrap_or("?"),
            n.name
        ))
    })?;
    let ours = AdmitValue { endpoint: endpoint_number(endpoint_id), flags: 0 };
    if let Some(IpAddr::V4(ip)) = a.ipv4 {
        // For conflict detection: ARP from outside claiming this address for another MAC.
        let ip_keys = ip_keys(&keys, ip.octets());
        bpf::admit::claim_ips(pins, &ip_keys, OurIp { endpoint: ours.endpoint, mac: mac.0, pad: [0; 2] })?;
    }
    if let Some(IpAddr::V6(ip)) = a.ipv6 {
        let keys6 = ip6_keys(&keys, ip.octets());
        bpf::admit::claim_ip6s(pins, &keys6, OurIp { endpoint: ours.endpoint, mac: mac.0, pad: [0; 2] })?;
    }
    for k in keys {
        // Never overwrite an entry someone else holds (the parent's own MAC, another
        // instance's endpoint): a rollback would then delete it.
        if let Some(theirs) = bpf::admit::insert_new(pins, k, ours)?.filter(|v| *v != ours) {
            pull_admission(pins, n, a, endpoint_id);
            let holder = if theirs.endpoint == crate::bpf::parent::HOST_ENDPOINT {
                format!("the parent {} itself", physical_parent(n).unwrap_or("?"))
            } else {
                format!("entry {} (another endpoint)", theirs.endpoint)
            };
            return invalid(format!(
                "MAC {} is already admitted on {} by {holder}; pick another --mac-address",
                a.mac,
                physical_parent(n).unwrap_or("?")
            ));
        }
    }
    Ok(())
}

/// Remove the admission entries of attachment `a` that are still its endpoint's.
pub(crate) fn pull_admission(pins: &Pins, n: &Network, a: &Attachment, endpoint_id: &str) {
    let mac = a.mac;
    if !pins.admit_map().exists() {
        return;
    }
    let number = endpoint_number(endpoint_id);
    let keys = admit_keys(n, mac.0).unwrap_or_default();
    if let Some(IpAddr::V4(ip)) = a.ipv4 {
        bpf::admit::release_ips(pins, &ip_keys(&keys, ip.octets()), number);
    }
    if let Some(IpAddr::V6(ip)) = a.ipv6 {
        bpf::admit::release_ip6s(pins, &ip6_keys(&keys, ip.octets()), number);
    }
    for k in keys {
        let _ = bpf::admit::remove_if(pins, &k, |v| v.endpoint == number);
    }
}

/// [`ip_keys`] for an IPv6 address.
pub(crate) fn ip6_keys(keys: &[AdmitKey], ip: [u8; 16]) -> Vec<Ip6Key> {
    keys.iter().map(|k| Ip6Key { ifindex: k.ifindex, vlan: k.vlan, pad: 0, ip }).collect()
}

/// The address-map keys matching admission keys `keys` (same parent and VLAN keys).
pub(crate) fn ip_keys(keys: &[AdmitKey], ip: [u8; 4]) -> Vec<IpKey> {
    keys.iter().map(|k| IpKey { ifindex: k.ifindex, vlan: k.vlan, pad: 0, ip }).collect()
}

/// Allocate addresses and a MAC for `ep` on `n` (inside the caller's transaction). On a
/// cluster network they are also claimed in the cluster, in one transaction with the
/// other hosts' claims as the judge: a lost race picks again.
#[allow(clippy::too_many_arguments)]
pub(crate) fn allocate(
    tx: &Tx,
    ep: &Endpoint,
    n: &Network,
    ip: Option<IpAddr>,
    ip6: Option<IpAddr>,
    mac: Option<&str>,
    ifname: String,
    cluster: Option<&Cluster>,
) -> Result<Attachment> {
    let atts = tx.attachments()?;
    let local: BTreeMap<IpAddr, String> = atts
        .iter()
        .filter(|a| a.network == n.name)
        .flat_map(|a| [a.ipv4, a.ipv6].into_iter().flatten().map(|ip| (ip, a.endpoint.clone())))
        .collect();
    if ip6.is_some() && !n.ipv6 {
        return invalid(format!(
            "--ip6 {} given but network {} has no IPv6 (create it with --ipv6 and an IPv6 --subnet)",
            ip6.unwrap_or(IpAddr::from([0u8; 16])),
            n.name
        ));
    }
    let phys = physical_parent(n).unwrap_or_default().to_string();
    let wanted_mac = match mac {
        Some(m) => {
            let m: Mac = m.parse().map_err(|e: crate::mac::MacParseError| ControlError::Invalid(e.to_string()))?;
            if !m.is_unicast() || m.0 == [0; 6] {
                return invalid(format!("invalid --mac-address {m}: it must be a unicast address (lowest bit of the first octet clear) and not all zero"));
            }
            if let Some(a) = atts.iter().find(|a| a.parent == phys && a.mac == m) {
                return invalid(format!(
                    "MAC address {m} is already used on parent {phys} by endpoint {}; pick another --mac-address",
                    a.endpoint
                ));
            }
            Some(m)
        }
        None => None,
    };
    let cluster = cluster.filter(|_| n.cluster);
    let mut attempt = 0;
    let (ipv4, ipv6, mac) = loop {
        attempt += 1;
        let mut used = local.clone();
        let mut taken: Vec<Mac> = atts.iter().filter(|a| a.parent == phys).map(|a| a.mac).collect();
        let remote = cluster.map(|c| c.taken(&n.name, attempt > 1)).transpose()?;
        if let Some(r) = &remote {
            // A claim of ours that committed although its answer was lost (the member
            // failed right after): it is this endpoint's already.
            let mine: Vec<IpAddr> = r.ips.iter().filter(|(_, h)| h.endpoint_id == ep.id).map(|(i, _)| *i).collect();
            if let (false, Some((m, _))) = (mine.is_empty(), r.macs.iter().find(|(_, h)| h.endpoint_id == ep.id)) {
                break (mine.iter().find(|i| i.is_ipv4()).copied(), mine.iter().find(|i| i.is_ipv6()).copied(), *m);
            }
            for (ip, h) in &r.ips {
                used.entry(*ip).or_insert_with(|| format!("endpoint {} on host {}", h.endpoint, h.host));
            }
            taken.extend(r.macs.keys().copied());
            if let Some((m, h)) = wanted_mac.and_then(|m| r.macs.get(&m).map(|h| (m, h))) {
                return invalid(format!(
                    "MAC address {m} is already used on network {} by endpoint {} on host {}; pick another --mac-address",
                    n.name,
                    h.endpoint,
                    h.host
                ));
            }
        }
        // Concurrent claims from several hosts spread over the first free addresses.
        let spread = if cluster.is_some() { 8 } else { 1 };
        let ipv4 = pick(&n.name, &n.pools, true, ip, &used, spread)?;
        let ipv6 = if n.ipv6 { pick(&n.name, &n.pools, false, ip6, &used, spread)? } else { None };
        let mac = wanted_mac.unwrap_or_else(|| generate_mac(ipv4, &taken));
        let Some(c) = cluster else { break (ipv4, ipv6, mac) };
        let ips: Vec<IpAddr> = [ipv4, ipv6].into_iter().flatten().collect();
        match c.claim(&n.name, n.cluster_rev, &ips, mac, &c.holder(&ep.id, &ep.name))? {
            crate::cluster::Claimed::Done => {
                super::fault("cluster:claimed");
                break (ipv4, ipv6, mac);
            }
            crate::cluster::Claimed::Lost if attempt < 64 => continue,
            crate::cluster::Claimed::Lost => {
                return Err(super::state_err(
                    super::StateKind::Busy,
                    format!("network {}: lost {attempt} claims in a row to other hosts; retry", n.name),
                ))
            }
            crate::cluster::Claimed::NoNetwork => {
                return invalid(format!(
                    "network {} is no longer in cluster {}: it was removed on another host; remove it here (dataplane network rm {})",
                    n.name,
                    c.cfg.url(),
                    n.name
                ))
            }
        }
    };
    let mut used_idx: Vec<u32> = atts.iter().map(|a| a.ifindex).collect();
    used_idx.extend(super::background::pending_unlinks());
    // Within the counter slots (ep_slot): one per interface of this instance. An index
    // taken here by someone else (another instance's Docker endpoint) is skipped: Docker's
    // interfaces are made in this namespace.
    let ifindex = (0..EP_SLOTS)
        .map(|i| EP_IFINDEX_BASE + ((endpoint_number(&ep.id).wrapping_add(i)) & (EP_SLOTS - 1)))
        .find(|i| !used_idx.contains(i) && crate::netns::ifname(*i).is_none())
        .ok_or_else(|| {
            ControlError::Invalid(format!(
                "no free endpoint interface slot: this instance already has {EP_SLOTS} endpoint interfaces; remove some first"
            ))
        })?;
    Ok(Attachment {
        endpoint: ep.name.clone(),
        network: n.name.clone(),
        ifname,
        mac,
        ipv4,
        ipv6,
        parent: phys,
        ifindex,
        state: EndpointState::Ready,
        owner_pid: 0,
        owner_start: 0,
    })
}

/// An address from `pools` for one family ([`ipam::allocate`]); with `spread` > 1 a
/// dynamic one is drawn at random from the first `spread` free ones.
pub(crate) fn pick(
    network: &str,
    pools: &[crate::ipam::Pool],
    v4: bool,
    asked: Option<IpAddr>,
    used: &BTreeMap<IpAddr, String>,
    spread: usize,
) -> Result<Option<IpAddr>> {
    let first = ipam::allocate(network, pools, v4, asked, used)?;
    if asked.is_some() || spread <= 1 || first.is_none() {
        return Ok(first);
    }
    let mut scratch = used.clone();
    let mut free = Vec::new();
    while free.len() < spread {
        match ipam::allocate(network, pools, v4, None, &scratch) {
            Ok(Some(c)) => {
                scratch.insert(c, String::new());
                free.push(c);
            }
            _ => break,
        }
    }
    let r: [u8; 2] = crate::sys::random_bytes();
    Ok(free.get(u16::from_le_bytes(r) as usize % free.len().max(1)).copied().or(first))
}

/// Docker-style 02:42:<IPv4 octets> when free, else random locally administered unicast.
fn generate_mac(ipv4: Option<IpAddr>, taken: &[Mac]) -> Mac {
    if let Some(IpAddr::V4(v4)) = ipv4 {
        let o = v4.octets();
        let m = Mac([0x02, 0x42, o[0], o[1], o[2], o[3]]);
        if !taken.contains(&m) {
            return m;
        }
    }
    loop {
        let mut b: [u8; 6] = crate::sys::random_bytes();
        b[0] = (b[0] & 0xfc) | 0x02;
        let m = Mac(b);
        if !taken.contains(&m) {
            return m;
        }
    }
}

/// The identity entry of an attachment (what its interface may send as).
pub(crate) fn endpoint_info(ep: &Endpoint, a: &Attachment) -> Result<EndpointInfo> {
    let mac = a.mac;
    let mut info = EndpointInfo { endpoint: endpoint_number(&ep.id), mac: mac.0, ..Default::default() };
    if let Some(IpAddr::V4(v4)) = a.ipv4 {
        info.flags |= EP_HAS_IPV4;
        info.ipv4 = v4.octets();
    }
    if let Some(IpAddr::V6(v6)) = a.ipv6 {
        info.flags |= EP_HAS_IPV6;
        info.ipv6 = v6.octets();
    }
    Ok(info)
}

/// Retry `op` while it fails with EADDRINUSE, for up to two seconds: a namespace removed a
/// moment ago may still hold a MAC on the parent while the kernel tears it down (it does
/// that in the background, like `ip netns del`).
pub(crate) fn wait_for_mac(mut op: impl FnMut() -> crate::nl::Result<()>) -> crate::nl::Result<()> {
    for _ in 0..80 {
        match op() {
            Err(e) if e.is(libc::EADDRINUSE) => std::thread::sleep(std::time::Duration::from_millis(25)),
            other => return other,
        }
    }
    op()
}

/// Create the macvlan for `a` inside the endpoint's namespace and configure it. The
/// anti-spoofing program is in place before the interface comes up.
/// The parent interface of `n` in this namespace, brought up if it is down.
pub(crate) fn parent_up(host: &Nl, n: &Network) -> Result<crate::nl::LinkInfo> {
    let parent = n.parent.as_deref().unwrap_or_default();
    let p = host.link(parent)?.ok_or_else(|| {
        ControlError::Invalid(format!(
            "parent interface {parent} of network {} is gone; recreate it or remove the network",
            n.name
        ))
    })?;
    if !p.up {
        host.set_up(p.index)?;
    }
    Ok(p)
}

pub(crate) fn realise(pins: &Pins, n: &Network, ep: &Endpoint, a: &Attachment) -> Result<()> {
    let parent = n.parent.as_deref().unwrap_or_default();
    let host = Nl::here()?;
    let p = parent_up(&host, n)?;
    let ns = std::fs::File::open(&ep.netns)
        .map_err(|source| ControlError::Io { what: format!("opening network namespace {}", ep.netns), source })?;
    let mac = a.mac;
    let mode = n.macvlan_mode.unwrap_or_default();
    wait_for_mac(|| {
        host.add_macvlan(&a.ifname, p.index, mode, mac.0, Some(ns.as_raw_fd()), Some(a.ifindex), network_mtu(n))
    })
    .map_err(|e| {
        if e.is(libc::EBUSY) && mode == MacvlanMode::Passthru {
            ControlError::Invalid(format!(
                "parent {parent} already has a passthru macvlan (passthru allows one endpoint per parent)"
            ))
        } else if e.is(libc::EADDRINUSE) || e.is(libc::EEXIST) {
            ControlError::Invalid(format!(
                "cannot create {} on {parent}: {e} (its MAC {}, its name or its requested ifindex {} is taken)",
                a.ifname, a.mac, a.ifindex
            ))
        } else {
            e.into()
        }
    })?;
    super::fault("endpoint:link-made");
    let inside = Nl::in_netns(Path::new(&ep.netns))?;
    let link = inside
        .link(&a.ifname)?
        .ok_or_else(|| ControlError::Internal(format!("{} vanished from {} after creation", a.ifname, ep.netns)))?;
    if link.index != a.ifindex {
        return Err(ControlError::Invalid(format!("{} got ifindex {} instead of {}", a.ifname, link.index, a.ifindex)));
    }
    bpf::endpoints::reset_slot(pins, a.ifindex);
    bpf::endpoints::insert(pins, a.ifindex, endpoint_info(ep, a)?)?;
    // cls_bpf now (no grace period to wait for), tcx links from a child once we are done.
    let harden = bpf::endpoints::attach_fast(pins, &ep.netns, &a.ifname)?;
    for (ip, v4) in [(a.ipv4, true), (a.ipv6, false)] {
        if let Some(ip) = ip {
            let prefix =
                n.pools.iter().find(|p| p.subnet.contains(ip)).map_or(if v4 { 32 } else { 128 }, |p| p.subnet.prefix);
            inside.add_addr(link.index, ip, prefix)?;
        }
    }
    // macvlan checks MAC uniqueness on the parent again when the link comes up.
    wait_for_mac(|| inside.set_up(link.index)).map_err(|e| {
        if e.is(libc::EADDRINUSE) {
            ControlError::Invalid(format!(
                "MAC {} is still in use on parent {parent} by another interface; pick another --mac-address",
                a.mac
            ))
        } else {
            e.into()
        }
    })?;
    // The host-access interface routes the network's subnet, never the host's default.
    if !n.internal && !is_host_shim(ep) {
        for ip in [a.ipv4, a.ipv6].into_iter().flatten() {
            if let Some(gw) = n.pools.iter().find(|p| p.subnet.contains(ip)).and_then(|p| p.gateway) {
                match inside.add_default_route(gw, link.index) {
                    Ok(()) => {}
                    // A second network's gateway: the first default route stays.
                    Err(e) if e.is(libc::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    if harden && !super::facts::keeps_filters(n) {
        super::background::spawn_harden(pins, &ep.netns, &a.ifname, a.ifindex);
    }
    Ok(())
}

fn lo_up(netns_path: &str) -> Result<()> {
    let nl = Nl::in_netns(Path::new(netns_path))?;
    if let Some(lo) = nl.link("lo")? {
        nl.set_up(lo.index)?;
    }
    Ok(())
}

/// Next free ethN inside the namespace (or among names already allocated).
fn next_ifname(netns_path: &str, allocated: &[String]) -> Result<String> {
    let names: Vec<String> = match Nl::in_netns(Path::new(netns_path)) {
        Ok(nl) => nl.links()?.into_iter().map(|l| l.name).collect(),
        Err(_) => Vec::new(),
    };
    Ok((0..)
        .map(|i| format!("eth{i}"))
        .find(|n| !names.contains(n) && !allocated.contains(n))
        .expect("an unbounded range has a free name"))
}

/// Where a new endpoint lives.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    /// `--network host`: the host's namespace, no interface of ours.
    Host,
    /// A network's host-access interface: an interface of ours in the host's namespace.
    Shim,
    /// A namespace the caller made (`--netns`).
    Given(String),
    /// A namespace `run` makes (and `rm` deletes): /run/netns/NAME.
    Owned(String),
}

impl Place {
    fn path(&self) -> String {
        match self {
            Place::Host => String::new(),
            Place::Shim => HOST_NS.to_string(),
            Place::Given(p) | Place::Owned(p) => p.clone(),
        }
    }
}

/// A `run` request, checked before anything is allocated.
struct RunPlan {
    network: String,
    ip: Option<IpAddr>,
    ip6: Option<IpAddr>,
    place: Place,
}

impl RunPlan {
    /// `name_free` checks that the endpoint name is not taken (before the namespace of
    /// that name is looked at, so a taken name is reported as such).
    fn new(req: &RunRequest, name_free: impl FnOnce() -> Result<()>) -> Result<RunPlan> {
        check_name("endpoint", &req.name)?;
        let ip = parse_opt_ip(&req.ip)?;
        let ip6 = parse_opt_ip(&req.ip6)?;
        let network = if req.network.is_empty() { "none".to_string() } else { req.network.clone() };
        let addressed = ip.is_some() || ip6.is_some() || req.mac.is_some();
        if network == "host" {
            if req.netns.is_some() {
                return invalid(
                    "--netns cannot be used with --network host: the endpoint runs in the host's namespace",
                );
            }
            if addressed {
                return invalid("--ip, --ip6 and --mac-address cannot be used with --network host");
            }
        }
        if network == "none" && addressed {
            return invalid("--ip, --ip6 and --mac-address cannot be used with --network none (it has only lo)");
        }
        name_free()?;
        let place = match (&req.netns, network.as_str()) {
            (_, "host") => Place::Host,
            _ if req.host_shim => Place::Shim,
            (Some(p), _) => {
                let path = netns::path_of(p);
                if !path.exists() {
                    return invalid(format!("network namespace {} does not exist", path.display()));
                }
                Place::Given(path.display().to_string())
            }
            (None, _) => {
                let path = PathBuf::from("/run/netns").join(&req.name);
                if path.exists() {
                    return invalid(format!(
                        "network namespace {} already exists; pick another --name, or hand it over with --netns {}",
                        path.display(),
                        path.display()
                    ));
                }
                Place::Owned(path.display().to_string())
            }
        };
        Ok(RunPlan { network, ip, ip6, place })
    }
}

fn name_taken<T>(name: &str, e: &Endpoint) -> Result<T> {
    invalid(format!(
        "endpoint name {name} is already in use by endpoint {}; remove it first (dataplane rm {name}) or pick another name",
        &e.id[..12.min(e.id.len())]
    ))
}

/// The network a `run` joins (None for host and none), if it may.
fn run_network(tx: &Tx, plan: &RunPlan) -> Result<Option<Network>> {
    let n = match plan.network.as_str() {
        "host" | "none" => return Ok(None),
        n => n,
    };
    let net = tx
        .network(n)?
        .ok_or_else(|| ControlError::Invalid(format!("network {n} not found (list them with dataplane network ls)")))?;
    if net.owner != Owner::Cli && plan.place != Place::Shim {
        return invalid(format!(
            "network {n} belongs to {}, which allocates its addresses: attach containers through it, not with dataplane run",
            owner_name(&net.owner)
        ));
    }
    if net.state != EndpointState::Ready {
        return Err(super::state_err(
            super::StateKind::Busy,
            format!("network {n} is still being set up or removed (by process {}); retry in a moment", net.owner_pid),
        ));
    }
    Ok(Some(net))
}

/// Record a new endpoint (`creating`) and its attachment, if it joins a network.
/// `probed`: addresses found free on the segment, used unless another command of ours
/// took them meanwhile.
fn record_run(
    tx: &Tx,
    req: &RunRequest,
    plan: &RunPlan,
    probed: (Option<IpAddr>, Option<IpAddr>),
    cluster: Option<&Cluster>,
) -> Result<(Endpoint, Option<Network>, Option<Attachment>)> {
    if let Some(e) = tx.endpoint(&req.name)?.filter(|e| e.name == req.name) {
        return name_taken(&req.name, &e);
    }
    let net = run_network(tx, plan)?;
    if let Place::Given(p) = &plan.place {
        if let Some(other) =
            tx.endpoints()?.into_iter().find(|e| !e.netns.is_empty() && Path::new(&e.netns) == Path::new(p))
        {
            return invalid(format!(
                "network namespace {} already belongs to endpoint {}",
                req.netns.as_deref().unwrap_or(p),
                other.name
            ));
        }
    }
    let ep = Endpoint {
        id: crate::store::new_id(),
        name: req.name.clone(),
        netns: plan.place.path(),
        netns_owned: matches!(plan.place, Place::Owned(_)),
        network_mode: crate::store::NetworkMode::from(plan.network.clone()),
        created: crate::store::now_rfc3339(),
        state: EndpointState::Creating,
        owner_pid: std::process::id(),
        owner_start: crate::store::ProcRef::me().start,
        pid: None,
        auto_remove: req.auto_remove,
        command: req.command.clone(),
        owner: Owner::Cli,
        supervisor: None,
    };
    let Some(n) = &net else {
        tx.put_endpoint(&ep)?;
        return Ok((ep, None, None));
    };
    let held: Vec<IpAddr> = if probed.0.is_some() || probed.1.is_some() {
        let atts = tx.attachments()?;
        atts.into_iter().filter(|a| a.network == n.name).flat_map(|a| [a.ipv4, a.ipv6].into_iter().flatten()).collect()
    } else {
        Vec::new()
    };
    let pick = |p: Option<IpAddr>, asked: Option<IpAddr>| p.filter(|p| !held.contains(p)).or(asked);
    let (ip, ip6) = (pick(probed.0, plan.ip), pick(probed.1, plan.ip6));
    let ifname = match &plan.place {
        Place::Shim => host_shim_ifname(n),
        Place::Owned(_) => "eth0".to_string(),
        other => next_ifname(&other.path(), &[])?,
    };
    // The host-access interface may take the aux address reserved for it.
    let mut view = n.clone();
    if plan.place == Place::Shim {
        for p in &mut view.pools {
            p.aux.remove(super::facts::HOST_AUX);
        }
    }
    let att = allocate(tx, &ep, &view, ip, ip6, req.mac.as_deref(), ifname, cluster)?;
    tx.put_endpoint(&ep)?;
    tx.put_attachment(&att)?;
    Ok((ep, net, Some(att)))
}

/// The kernel side of `run` after the admission entries: the namespace it owns, lo, and
/// the interface with its programs; each step registers its undo.
fn make_run(
    pins: &Pins,
    name: &str,
    plan: &RunPlan,
    ep: &Endpoint,
    na: Option<(&Network, &Attachment)>,
    undo: &mut Undo,
) -> Result<()> {
    let path = plan.place.path();
    match &plan.place {
        Place::Host => return Ok(()),
        Place::Owned(p) => {
            netns::create_named(name)
                .map_err(|source| ControlError::Io { what: format!("creating network namespace {p}"), source })?;
            let p = PathBuf::from(p);
            undo.push(format!("deleting network namespace {path}"), move || {
                netns::delete_named(&p).map_err(|e| e.to_string())
            });
            super::fault("run:netns-made");
        }
        Place::Shim | Place::Given(_) => {}
    }
    if plan.place != Place::Shim {
        lo_up(&path)?;
    }
    let Some((n, a)) = na else { return Ok(()) };
    if !matches!(plan.place, Place::Owned(_)) {
        let (path, ifname) = (path.clone(), a.ifname.clone());
        undo.push(format!("deleting {ifname} in {path}"), move || delete_link_in(&path, &ifname));
    }
    let (pins2, path2, ifname, number, ifindex) =
        (pins.clone(), path, a.ifname.clone(), endpoint_number(&ep.id), a.ifindex);
    undo.push(format!("removing the programs of {ifname}"), move || {
        bpf::endpoints::forget(&pins2, ifindex, number, &path2, &ifname);
        // A new endpoint: whatever it counted goes with it.
        bpf::endpoints::remove_counters(&pins2, number);
        Ok(())
    });
    realise(pins, n, ep, a)
}

impl Engine {
    /// The first of the next free IPv4 (`want4`) and IPv6 (`want6`) addresses of `n` that
    /// nobody on the segment answers a probe for (ARP from 0.0.0.0; duplicate address
    /// detection for IPv6), four candidates at a time, at most four rounds, both families
    /// side by side; when the network probes (`ip_probe_ms`, default 20 for networks made
    /// with the CLI). None for a family: no probing (disabled, no pool, pool full, or the
    /// parent cannot send: it is down).
    fn probe_free(&mut self, n: &Network, want4: bool, want6: bool) -> Result<(Option<IpAddr>, Option<IpAddr>)> {
        let wait = match n.options.get("ip_probe_ms") {
            Some(v) => v.parse::<u64>().unwrap_or(0),
            None if n.owner == Owner::Cli => 20,
            None => 0,
        };
        let Some(parent) = n.parent.clone().filter(|_| wait > 0 && (want4 || want6)) else { return Ok((None, None)) };
        let used: BTreeMap<IpAddr, String> = self.store.read(|tx| -> Result<BTreeMap<IpAddr, String>> {
            Ok(tx
                .attachments()?
                .into_iter()
                .filter(|a| a.network == n.name)
                .flat_map(|a| [a.ipv4, a.ipv6].into_iter().flatten().map(move |ip| (ip, a.endpoint.clone())))
                .collect())
        })?;
        let wait = std::time::Duration::from_millis(wait);
        let family = |v4: bool| -> Result<Option<IpAddr>> {
            let mut used = used.clone();
            let mut answered = Vec::new();
            for _ in 0..4 {
                let mut candidates = Vec::new();
                let mut scratch = used.clone();
                while candidates.len() < 4 {
                    match crate::ipam::allocate(&n.name, &n.pools, v4, None, &scratch) {
                        Ok(Some(c)) => {
                            scratch.insert(c, String::new());
                            candidates.push(c);
                        }
                        _ => break,
                    }
                }
                if candidates.is_empty() {
                    return Ok(None);
                }
                let Ok(taken) = crate::probe::probe(&parent, &candidates, wait) else { return Ok(None) };
                if let Some(c) = candidates.iter().find(|c| !taken.contains(c)) {
                    return Ok(Some(*c));
                }
                for t in taken {
                    used.insert(t, "another host".into());
                    answered.push(t.to_string());
                }
            }
            invalid(format!(
                "network {}: every address probed on {parent} is in use by another host ({}); give --ip/--ip6, or split the subnet between hosts with --ip-range",
                n.name,
                answered.join(", ")
            ))
        };
        let (v4, v6) = std::thread::scope(|s| {
            let six = s.spawn(|| if want6 { family(false) } else { Ok(None) });
            let four = if want4 { family(true) } else { Ok(None) };
            (four, six.join().unwrap_or(Ok(None)))
        });
        crate::timing::mark("ip-probed");
        Ok((v4?, v6?))
    }

    /// Create an endpoint (namespace, links, addresses, map entries). The command, if
    /// any, is the CLI's business.
    pub fn run(&mut self, req: RunRequest) -> Result<RunSpec> {
        let plan = RunPlan::new(&req, || match self.store.read(|tx| tx.endpoint(&req.name))? {
            Some(e) if e.name == req.name => name_taken(&req.name, &e),
            _ => Ok(()),
        })?;
        // 0. Cluster mode: the cluster's network is realised here first. Otherwise a
        // dynamic address is probed on the segment first (other hosts may hand out the
        // same subnet); the one chosen is then requested below.
        if plan.place != Place::Shim {
            self.cluster_adopt(&plan.network)?;
        }
        let probed = match plan.network.as_str() {
            "host" | "none" => (None, None),
            name => match self.store.read(|tx| tx.network(name))? {
                Some(n) if plan.place != Place::Shim && !n.cluster => {
                    self.probe_free(&n, plan.ip.is_none(), plan.ip6.is_none() && n.ipv6)?
                }
                _ => (None, None),
            },
        };
        // 1. Allocate under the store's write lock.
        self.cluster_catch_up();
        let cluster = self.cluster.as_ref();
        let (ep, net, att) =
            self.store.write(|tx| record_run(tx, &req, &plan, probed, cluster)).map_err(|e| self.cluster_failed(e))?;
        super::fault("run:allocated");
        // 2. Kernel work, undone in reverse on failure.
        let pins = self.pins.clone();
        let na = net.as_ref().zip(att.as_ref());
        let endpoint = self.complete_attach(na, ep.clone(), Undo::new(), Some("run:linked"), |undo| {
            make_run(&pins, &req.name, &plan, &ep, na, undo)
        })?;
        Ok(RunSpec { endpoint, attachment: att })
    }

    pub fn connect(
        &mut self,
        network: &str,
        endpoint: &str,
        ip: Option<String>,
        ip6: Option<String>,
    ) -> Result<Attachment> {
        if super::PREDEFINED.contains(&network) {
            return invalid(format!("cannot connect to the predefined network {network}: it is chosen at dataplane run (--network {network})"));
        }
        let ip = parse_opt_ip(&ip)?;
        let ip6 = parse_opt_ip(&ip6)?;
        self.cluster_adopt(network)?;
        self.cluster_catch_up();
        let pins = self.pins.clone();
        let cluster = self.cluster.as_ref();
        let (ep, n, a) = self
            .store
            .write(|tx| -> Result<(Endpoint, Network, Attachment)> {
                let ep = tx.endpoint(endpoint)?.ok_or_else(|| {
                    ControlError::Invalid(format!("endpoint {endpoint} not found (list them with dataplane ps)"))
                })?;
                if ep.network_mode == crate::store::NetworkMode::Host || is_host_shim(&ep) {
                    return invalid(format!(
                        "endpoint {} uses the host's network namespace; it cannot be connected to other networks",
                        ep.name
                    ));
                }
                let n = tx.network(network)?.ok_or_else(|| {
                    ControlError::Invalid(format!("network {network} not found (list them with dataplane network ls)"))
                })?;
                super::check_owner("endpoint", &ep.name, &ep.owner, &Owner::Cli)?;
                if n.owner != Owner::Cli {
                    return invalid(format!(
                        "network {} belongs to {}: connect containers through it, not with dataplane",
                        n.name,
                        owner_name(&n.owner)
                    ));
                }
                let mine: Vec<Attachment> = tx.attachments()?.into_iter().filter(|a| a.endpoint == ep.name).collect();
                if mine.iter().any(|a| a.network == n.name) {
                    return invalid(format!("endpoint {} is already connected to network {}", ep.name, n.name));
                }
                let taken: Vec<String> = mine.iter().map(|a| a.ifname.clone()).collect();
                let ifname = next_ifname(&ep.netns, &taken)?;
                let mut a = allocate(tx, &ep, &n, ip, ip6, None, ifname, cluster)?;
                // In flight until realised: other processes' reconcile leaves it alone.
                a.state = EndpointState::Creating;
                a.owner_pid = std::process::id();
                a.owner_start = crate::store::ProcRef::me().start;
                tx.put_attachment(&a)?;
                Ok((ep, n, a))
            })
            .map_err(|e| self.cluster_failed(e))?;
        super::fault("connect:allocated");
        let realised = push_admission(&pins, &n, &a, &ep.id).and_then(|()| realise(&pins, &n, &ep, &a));
        if realised.is_ok() {
            super::fault("connect:linked");
        }
        let realised = realised.and_then(|()| {
            let mut done = a.clone();
            done.state = EndpointState::Ready;
            done.owner_pid = 0;
            done.owner_start = 0;
            self.store.write(|tx| -> Result<()> { Ok(tx.put_attachment(&done)?) })
        });
        if let Err(e) = realised {
            let mut rollback = Vec::new();
            bpf::endpoints::forget(&pins, a.ifindex, endpoint_number(&ep.id), &ep.netns, &a.ifname);
            if let Err(x) = delete_link_in(&ep.netns, &a.ifname) {
                rollback.push(x);
            }
            pull_admission(&pins, &n, &a, &ep.id);
            let (en, nn) = (ep.name.clone(), n.name.clone());
            if let Err(x) = self.store.write(|tx| -> Result<()> { Ok(tx.delete_attachment(&en, &nn)?) }) {
                rollback.push(x.to_string());
            }
            let _ = self.cluster_sweep(false);
            return Err(if rollback.is_empty() { e } else { ControlError::Rollback { error: Box::new(e), rollback } });
        }
        Ok(Attachment { state: EndpointState::Ready, owner_pid: 0, owner_start: 0, ..a })
    }

    pub fn disconnect(&mut self, network: &str, endpoint: &str) -> Result<()> {
        let pins = self.pins.clone();
        let (ep, a) = self.store.write(|tx| -> Result<(Endpoint, Attachment)> {
            let ep = tx.endpoint(endpoint)?.ok_or_else(|| {
                ControlError::Invalid(format!("endpoint {endpoint} not found (list them with dataplane ps)"))
            })?;
            let n = tx.network(network)?.ok_or_else(|| {
                ControlError::Invalid(format!("network {network} not found (list them with dataplane network ls)"))
            })?;
            super::check_owner("endpoint", &ep.name, &ep.owner, &Owner::Cli)?;
            if is_host_shim(&ep) {
                return invalid(format!(
                    "endpoint {} is network {}'s host-access interface: it goes with the network (dataplane network rm {})",
                    ep.name, n.name, n.name
                ));
            }
            let a = tx.attachments()?.into_iter().find(|a| a.endpoint == ep.name && a.network == n.name).ok_or_else(
                || ControlError::Invalid(format!("endpoint {} is not connected to network {}", ep.name, n.name)),
            )?;
            pull_admission(&pins, &n, &a, &ep.id);
            tx.delete_attachment(&ep.name, &n.name)?;
            Ok((ep, a))
        })?;
        super::fault("disconnect:removed");
        // As rm: a queued upgrade is cancelled, one in flight finished first.
        super::background::cancel_or_wait(&pins, a.ifindex);
        bpf::endpoints::keep_rx(&pins, a.ifindex, endpoint_number(&ep.id), &ep.netns, &a.ifname);
        bpf::endpoints::forget(&pins, a.ifindex, endpoint_number(&ep.id), &ep.netns, &a.ifname);
        delete_link_in(&ep.netns, &a.ifname).map_err(|e| {
            ControlError::Invalid(format!(
                "removed {} from network {network}, but deleting {} failed: {e}",
                ep.name, a.ifname
            ))
        })?;
        self.release_cluster_claims()
    }

    /// After an endpoint or attachment is gone: its cluster claims are released (with
    /// any others of this host left by a command that died). A cluster that cannot be
    /// reached now is an error naming it; the claims are then released by the next
    /// `dataplane reconcile`.
    fn release_cluster_claims(&mut self) -> Result<()> {
        self.cluster_sweep(false).map(drop).map_err(|e| {
            ControlError::Invalid(format!(
                "removed here, but its addresses stay claimed in the cluster until `dataplane reconcile` reaches it: {e}"
            ))
        })
    }

    /// Remove an endpoint: its command (with `force`), links, namespace, map entries, rows.
    pub fn rm(&mut self, name: &str, force: bool) -> Result<Vec<String>> {
        let me = std::process::id();
        let found = self.store.read(|tx| tx.endpoint(name))?;
        let ep = found
            .ok_or_else(|| ControlError::Invalid(format!("endpoint {name} not found (list them with dataplane ps)")))?;
        self.remove_endpoint(&ep.name, force, |ep| {
            super::check_owner("endpoint", &ep.name, &ep.owner, &Owner::Cli)?;
            if is_host_shim(ep) {
                return invalid(format!(
                    "endpoint {} is network {}'s host-access interface: it goes with the network (dataplane network rm {})",
                    ep.name, ep.network_mode, ep.network_mode
                ));
            }
            let supervised = ep.supervisor.filter(|s| s.alive() && s.pid != me).map(|s| s.pid);
            match ep.pid.filter(|p| pid_alive(*p) && *p != me).or(supervised) {
                Some(pid) if !force => invalid(format!(
                    "endpoint {} is running (pid {pid}): stop it first (dataplane stop {}) or use dataplane rm -f",
                    ep.name, ep.name
                )),
                _ => Ok(()),
            }
        })
        .and_then(|warnings| {
            self.release_cluster_claims()?;
            Ok(warnings)
        })
    }

    /// The kernel side of a new plugin attachment (rows already committed as `creating`):
    /// push its admission entries, run `make`, then either mark the endpoint ready or undo
    /// everything (`undo` holds the caller's steps) and drop its rows.
    pub(crate) fn complete_attach(
        &mut self,
        na: Option<(&Network, &Attachment)>,
        mut ep: Endpoint,
        mut undo: Undo,
        point: Option<&'static str>,
        make: impl FnOnce(&mut Undo) -> Result<()>,
    ) -> Result<Endpoint> {
        let pins = self.pins.clone();
        let step = || -> Result<()> {
            if let Some((n, a)) = na {
                let (pins2, n2, a2, id2) = (pins.clone(), n.clone(), a.clone(), ep.id.clone());
                undo.push("removing admission entries", move || {
                    pull_admission(&pins2, &n2, &a2, &id2);
                    Ok(())
                });
                // Map entries only once the rows are committed: a commit that fails (a
                // full disk) must not leave entries behind.
                push_admission(&pins, n, a, &ep.id)?;
            }
            make(&mut undo)
        };
        if let Err(e) = step() {
            let err = undo.run(e);
            let name = ep.name.clone();
            let _ = self.store.write(|tx| -> Result<()> { Ok(tx.delete_endpoint(&name)?) });
            // Its cluster claims too (if the cluster cannot be reached now, `dataplane
            // reconcile` releases them later).
            let _ = self.cluster_sweep(false);
            return Err(err);
        }
        if let Some(point) = point.filter(|_| na.is_some()) {
            super::fault(point);
        }
        undo.forget();
        ep.state = EndpointState::Ready;
        let e2 = ep.clone();
        self.store.write(|tx| -> Result<()> { Ok(tx.put_endpoint(&e2)?) })?;
        crate::timing::mark("committed");
        Ok(ep)
    }

    /// The removal every front end shares: in one transaction check the endpoint (`check`),
    /// pull its admission entries and mark it `removing` with our pid; then the kernel side
    /// (a crash from here on is finished by reconcile); then the rows. An endpoint already
    /// gone is not an error.
    pub(crate) fn remove_endpoint(
        &mut self,
        name: &str,
        kill: bool,
        check: impl FnOnce(&Endpoint) -> Result<()>,
    ) -> Result<Vec<String>> {
        let pins = self.pins.clone();
        let me = std::process::id();
        let marked = self.store.write(|tx| -> Result<Option<(Endpoint, Vec<Attachment>)>> {
            let Some(mut ep) = tx.endpoint(name)?.filter(|e| e.name == name) else { return Ok(None) };
            check(&ep)?;
            let atts: Vec<Attachment> = tx.attachments()?.into_iter().filter(|a| a.endpoint == ep.name).collect();
            let nets = tx.networks()?;
            for a in &atts {
                if let Some(n) = nets.iter().find(|n| n.name == a.network) {
                    pull_admission(&pins, n, a, &ep.id);
                }
            }
            ep.state = EndpointState::Removing;
            ep.owner_pid = me;
            ep.owner_start = crate::store::ProcRef::me().start;
            tx.put_endpoint(&ep)?;
            Ok(Some((ep, atts)))
        })?;
        let Some((ep, atts)) = marked else { return Ok(Vec::new()) };
        super::fault("rm:marked");
        let warnings = teardown(&pins, &ep, &atts, kill);
        super::fault("rm:torn-down");
        let n = ep.name.clone();
        self.store.write(|tx| -> Result<()> { Ok(tx.delete_endpoint(&n)?) })?;
        Ok(warnings)
    }

    pub fn endpoints(&mut self) -> Result<Vec<(Endpoint, Vec<Attachment>)>> {
        let (eps, atts) = self.store.read(|tx| -> Result<_> { Ok((tx.endpoints()?, tx.attachments()?)) })?;
        Ok(eps
            .into_iter()
            .map(|e| {
                let mine = atts.iter().filter(|a| a.endpoint == e.name).cloned().collect();
                (e, mine)
            })
            .collect())
    }

    pub fn endpoint(&mut self, name: &str) -> Result<Endpoint> {
        self.store
            .read(|tx| tx.endpoint(name))?
            .ok_or_else(|| ControlError::Invalid(format!("endpoint {name} not found (list them with dataplane ps)")))
    }

    /// Record the supervisor of the endpoint's detached command (the calling process).
    pub fn set_supervisor(&mut self, name: &str) -> Result<()> {
        let me = crate::store::ProcRef::me();
        self.store.write(|tx| -> Result<()> {
            if let Some(mut e) = tx.endpoint(name)? {
                e.supervisor = Some(me);
                tx.put_endpoint(&e)?;
            }
            Ok(())
        })
    }

    /// Record the pid of the endpoint's detached command (None when it ended).
    pub fn set_pid(&mut self, name: &str, pid: Option<u32>) -> Result<()> {
        self.store.write(|tx| -> Result<()> {
            if let Some(mut e) = tx.endpoint(name)? {
                e.pid = pid;
                tx.put_endpoint(&e)?;
            }
            Ok(())
        })
    }
}

pub(crate) fn delete_link_in(netns_path: &str, ifname: &str) -> std::result::Result<(), String> {
    let nl = Nl::in_netns(Path::new(netns_path)).map_err(|e| e.to_string())?;
    match nl.link(ifname).map_err(|e| e.to_string())? {
        Some(l) => nl.del_link(l.index).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// Kernel side of removing an endpoint; continues past failures and returns them.
pub(crate) fn teardown(pins: &Pins, ep: &Endpoint, atts: &[Attachment], kill: bool) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Owner::Docker { sandbox, .. } = &ep.owner {
        // The interface is in this namespace (or still in the container's, if Docker never
        // moved it back); its pins are keyed by ifindex.
        // Deleted by a child, as CNI's (below), which unpins the links afterwards.
        for a in atts {
            let links = pins.docker_endpoint_links(a.ifindex);
            bpf::endpoints::forget_identity(pins, a.ifindex, endpoint_number(&ep.id));
            match super::links::delete_host_link_later(a.ifindex, sandbox.as_deref(), &links) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => warnings.push(format!("deleting {}: {e}", a.ifname)),
            }
            bpf::endpoints::detach_at(links);
        }
        bpf::endpoints::remove_counters(pins, endpoint_number(&ep.id));
        return warnings;
    }
    // A CNI runtime's interfaces are deleted by a child (see background.rs), which unpins
    // their links once they are gone: until then the programs stay on them and, with no
    // identity, drop whatever they send (a tcx link goes with its pin).
    let by_child = matches!(ep.owner, Owner::Cni { .. }) && !ep.netns_owned && Path::new(&ep.netns).exists();
    let mut link_pins = Vec::new();
    for a in atts {
        // A queued upgrade to tcx is cancelled; one in flight would pin a link after we
        // unpinned, so it is waited for.
        super::background::cancel_or_wait(pins, a.ifindex);
        if by_child {
            bpf::endpoints::forget_identity(pins, a.ifindex, endpoint_number(&ep.id));
            link_pins.push(bpf::endpoints::link_pins(pins, &ep.netns, &a.ifname));
        } else {
            bpf::endpoints::forget(pins, a.ifindex, endpoint_number(&ep.id), &ep.netns, &a.ifname);
        }
    }
    if !ep.netns.is_empty() {
        bpf::endpoints::remove_counters(pins, endpoint_number(&ep.id));
    }
    crate::timing::mark("maps-and-pins-cleared");
    if kill {
        // The supervisor's whole process group (it and the command it started), then the
        // command by pid in case it left the group.
        if let Some(s) = ep.supervisor.filter(|s| s.alive() && s.pid != std::process::id()) {
            // A process group we made (setsid in run -d).
            crate::sys::kill(-(s.pid as i32), libc::SIGKILL);
        }
        if let Some(pid) = ep.pid.filter(|p| pid_alive(*p) && *p != std::process::id()) {
            crate::sys::kill(pid as i32, libc::SIGKILL);
        }
    }
    if ep.netns.is_empty() {
        return warnings;
    }
    if ep.netns_owned {
        // The kernel frees the namespace, and the macvlans in it, in the background (as
        // `ip netns del`); deleting them one by one would cost a synchronous unregister
        // each. A MAC still held by a dying namespace is waited for at creation.
        if let Err(e) = netns::delete_named(Path::new(&ep.netns)) {
            warnings.push(format!("deleting network namespace {}: {e}", ep.netns));
        }
    } else if Path::new(&ep.netns).exists() {
        // The endpoint can no longer send (no identity) or receive (no admission entry).
        let links: Vec<(String, u32)> = atts.iter().map(|a| (a.ifname.clone(), a.ifindex)).collect();
        let unpin: Vec<PathBuf> = link_pins.iter().flatten().cloned().collect();
        if by_child && super::background::spawn_unlink(&ep.netns, &links, &unpin).is_ok() {
            crate::timing::mark("link-deletion-started");
            return warnings;
        }
        for a in atts {
            if let Err(e) = delete_link_in(&ep.netns, &a.ifname) {
                warnings.push(format!("deleting {} in {}: {e}", a.ifname, ep.netns));
            }
        }
        link_pins.into_iter().for_each(bpf::endpoints::detach_at);
        crate::timing::mark("link-deleted");
    }
    warnings
}

//! Making the kernel match the store: finish what crashed commands left half-done, drop
//! endpoints whose namespace is gone (e.g. after a reboot), re-attach programs and
//! re-create VLAN devices that vanished, and make the admission map equal to the store.
//!
//! The pass before every mutating CLI command compares the per-entry maps (admission,
//! addresses, endpoint identities, endpoint counters) with the store only when it repaired
//! something first: finding entries no row accounts for means walking every bucket of
//! maps sized for 65 536 endpoints, about three quarters of that pass, and only a crashed
//! command (which its earlier phases find and finish) or a hand leaves such entries.
//! `dataplane reconcile`, the plugin's start and CNI GC always compare them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use dataplane_common::{maps::VLAN_UNTAGGED, AdmitKey, AdmitValue, Ip6Key, IpKey, OurIp};

use super::{
    endpoint::{endpoint_info, endpoint_number, ip6_keys, ip_keys, pull_admission, realise, teardown},
    facts::{admit_keys_at, owner_alive, physical_parent},
    network::teardown_network,
    vlan, Engine, Result,
};
use crate::{
    bpf::{
        self,
        parent::{HOST_ENDPOINT, HOST_ENTRY},
        pins::{Hook, LinkPin},
        AttachMode, Pins,
    },
    mac::Mac,
    netns,
    nl::Nl,
    store::{Attachment, Endpoint, EndpointState, Network, Tx, VlanParent},
};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReconcileReport {
    /// What was found out of line (and, unless dry run, repaired).
    pub drift: Vec<String>,
    /// Repairs that failed.
    pub errors: Vec<String>,
}

impl Engine {
    /// The quick pass that runs before every mutating command: the per-entry maps are
    /// compared with the store only if the pass repaired something before them.
    pub fn reconcile(&mut self, dry_run: bool) -> Result<ReconcileReport> {
        self.pass(dry_run, false, false)
    }

    /// A pass that compares every map with the store. `thorough` also looks inside every
    /// endpoint's namespace for links deleted by hand (one netlink round trip per
    /// endpoint, so only `dataplane reconcile` does it).
    /// In cluster mode it also releases this host's claims that no attachment holds.
    pub fn reconcile_with(&mut self, dry_run: bool, thorough: bool) -> Result<ReconcileReport> {
        let mut r = self.pass(dry_run, thorough, true)?;
        match self.cluster_sweep(dry_run) {
            Ok(d) => r.drift.extend(d),
            Err(e) => r.errors.push(e.to_string()),
        }
        Ok(r)
    }

    fn pass(&mut self, dry_run: bool, thorough: bool, maps: bool) -> Result<ReconcileReport> {
        let pins = self.pins.clone();
        if thorough {
            // Judge the endpoints' attachments as they will be, not mid-upgrade.
            super::background::wait_all(&pins);
        }
        self.store.write(|tx| -> Result<ReconcileReport> {
            let mut p = Pass { pins: &pins, dry_run, thorough, maps, r: ReconcileReport::default() };
            map_pins(&pins, dry_run, &mut p.r)?;
            // Every network as found, crashed ones included (their VLAN entries and pins
            // stay theirs until their rows are gone).
            let all = tx.networks()?;
            p.crashed_networks(tx, &all)?;
            let left = tx.networks()?;
            let ipam_nets: Vec<String> =
                left.iter().filter(|n| n.driver == crate::store::Driver::Ipam).map(|n| n.name.clone()).collect();
            let nets: Vec<_> = left.into_iter().filter(|n| n.state == EndpointState::Ready).collect();
            // The rows are read once, and again only after a phase changed them.
            let read = || -> Result<_> { Ok((tx.endpoints()?, tx.attachments()?)) };
            let (eps, atts) = read()?;
            let seen = p.r.drift.len();
            p.crashed_endpoints(tx, &nets, &eps, &atts)?;
            let (eps, atts) = if p.r.drift.len() != seen { read()? } else { (eps, atts) };
            let seen = p.r.drift.len();
            p.crashed_attachments(tx, &nets, &eps, &atts)?;
            let (eps, atts) = if p.r.drift.len() != seen { read()? } else { (eps, atts) };
            let rows = Rows::new(eps, atts, nets, &ipam_nets);
            let parents = p.network_programs(&rows.nets)?;
            vlan_entries(&pins, &rows.nets, &all, dry_run, &mut p.r)?;
            if p.compare_maps() {
                p.admission(&rows, &parents)?;
                p.address_claims(&rows);
            }
            if thorough {
                p.endpoint_links(&rows);
            }
            let live_tags = p.endpoint_programs(&rows)?;
            p.stale_endpoint_pins(&live_tags);
            if p.compare_maps() {
                p.stale_counters(&rows);
            }
            stale_network_pins(&pins, &all, &rows.eps, &rows.atts, dry_run, &mut p.r);
            Ok(p.r)
        })
    }
}

/// One reconcile pass: what it may do and what it found.
struct Pass<'a> {
    pins: &'a Pins,
    dry_run: bool,
    thorough: bool,
    /// A full pass: compare the per-entry maps with the store whatever else it found
    /// (see the module's comment and `compare_maps`).
    maps: bool,
    r: ReconcileReport,
}

/// The rows the later phases work from; nothing after the crash phases changes them.
struct Rows {
    /// Ready networks.
    nets: Vec<Network>,
    /// Endpoints with an interface of ours (not those of address-only IPAM networks).
    eps: Vec<Endpoint>,
    atts: Vec<Attachment>,
    /// Endpoints another live process is working on (creating, removing, connecting):
    /// their map entries and programs are theirs to handle.
    busy: BTreeSet<u32>,
    /// Each network's physical parent's ifindex, by network name.
    parents: BTreeMap<String, Option<u32>>,
}

impl Rows {
    /// `ipam_nets`: the address-only networks, whose endpoints have no interface.
    fn new(eps: Vec<Endpoint>, atts: Vec<Attachment>, nets: Vec<Network>, ipam_nets: &[String]) -> Rows {
        let eps: Vec<_> = eps.into_iter().filter(|e| !ipam_nets.iter().any(|n| e.network_mode.name() == n)).collect();
        let busy = eps
            .iter()
            .filter(|e| {
                e.state != EndpointState::Ready
                    || atts.iter().any(|a| a.endpoint == e.name && a.state != EndpointState::Ready)
            })
            .map(|e| endpoint_number(&e.id))
            .collect();
        let parents = nets.iter().map(|n| (n.name.clone(), super::facts::parent_ifindex(n))).collect();
        Rows { nets, eps, atts, busy, parents }
    }

    /// [`super::facts::admit_keys`], with each network's parent looked up once per pass.
    fn admit_keys(&self, n: &Network, mac: [u8; 6]) -> Vec<AdmitKey> {
        self.parents.get(&n.name).copied().flatten().map(|i| admit_keys_at(n, i, mac)).unwrap_or_default()
    }

    fn network(&self, name: &str) -> Option<&Network> {
        self.nets.iter().find(|n| n.name == name)
    }

    /// Ready endpoints whose namespace is there to look into.
    fn live(&self) -> impl Iterator<Item = &Endpoint> {
        self.eps
            .iter()
            .filter(|e| e.state == EndpointState::Ready && !e.netns.is_empty() && Path::new(&e.netns).exists())
    }
}

impl Pass<'_> {
    fn drift(&mut self, what: String) {
        self.r.drift.push(what);
    }

    /// Runs a repair unless this is a dry run, recording its failure.
    fn repair<T, E: std::fmt::Display>(
        &mut self,
        what: impl FnOnce() -> String,
        f: impl FnOnce() -> std::result::Result<T, E>,
    ) {
        if self.dry_run {
            return;
        }
        if let Err(e) = f() {
            self.r.errors.push(format!("{}: {e}", what()));
        }
    }

    /// Networks a crashed `network create` left behind.
    fn crashed_networks(&mut self, tx: &Tx, all: &[Network]) -> Result<()> {
        for n in all.iter().filter(|n| n.state != EndpointState::Ready && !owner_alive(n.owner_pid, n.owner_start)) {
            self.drift(format!(
                "network {} was left {:?} by process {} which is gone: removing it",
                n.name, n.state, n.owner_pid
            ));
            if self.dry_run {
                continue;
            }
            // Its host-access interface, which a crashed `network rm` had not removed yet.
            let mut errors = Vec::new();
            let atts = tx.attachments()?;
            for ep in tx.endpoints()?.iter().filter(|e| super::facts::is_host_shim(e)) {
                let mine: Vec<_> =
                    atts.iter().filter(|a| a.endpoint == ep.name && a.network == n.name).cloned().collect();
                if mine.is_empty() {
                    continue;
                }
                mine.iter().for_each(|a| pull_admission(self.pins, n, a, &ep.id));
                let failed = teardown(self.pins, ep, &mine, false);
                if failed.is_empty() {
                    tx.delete_endpoint(&ep.name)?;
                }
                errors.extend(failed);
            }
            let others: Vec<_> = all.iter().filter(|o| o.name != n.name).cloned().collect();
            errors.extend(teardown_network(self.pins, n, &others));
            if errors.is_empty() {
                tx.delete_network(&n.name)?;
            } else {
                // Keep the row: it is the only record of what is left; the next pass retries.
                self.r
                    .errors
                    .extend(errors.into_iter().map(|e| format!("network {}: {e} (kept for the next pass)", n.name)));
            }
        }
        Ok(())
    }

    /// Half-done commands whose process is gone, and endpoints whose namespace vanished.
    fn crashed_endpoints(&mut self, tx: &Tx, nets: &[Network], eps: &[Endpoint], atts: &[Attachment]) -> Result<()> {
        for ep in eps {
            let crashed = ep.state != EndpointState::Ready && !owner_alive(ep.owner_pid, ep.owner_start);
            let vanished = ep.state == EndpointState::Ready && !ep.netns.is_empty() && !Path::new(&ep.netns).exists();
            if !crashed && !vanished {
                continue;
            }
            self.drift(if crashed {
                format!(
                    "endpoint {} was left {:?} by process {} which is gone: removing it",
                    ep.name, ep.state, ep.owner_pid
                )
            } else {
                format!("endpoint {}: its network namespace {} is gone: removing it", ep.name, ep.netns)
            });
            if self.dry_run {
                continue;
            }
            let mine: Vec<_> = atts.iter().filter(|a| a.endpoint == ep.name).cloned().collect();
            for a in &mine {
                if let Some(n) = nets.iter().find(|n| n.name == a.network) {
                    pull_admission(self.pins, n, a, &ep.id);
                }
            }
            self.r.errors.extend(teardown(self.pins, ep, &mine, true));
            tx.delete_endpoint(&ep.name)?;
        }
        Ok(())
    }

    /// Attachments a crashed `network connect` left half-made.
    fn crashed_attachments(&mut self, tx: &Tx, nets: &[Network], eps: &[Endpoint], atts: &[Attachment]) -> Result<()> {
        for a in atts.iter().filter(|a| a.state != EndpointState::Ready && !owner_alive(a.owner_pid, a.owner_start)) {
            self.drift(format!(
                "endpoint {}: its {} on network {} was left {:?} by process {} which is gone: removing it",
                a.endpoint, a.ifname, a.network, a.state, a.owner_pid
            ));
            if self.dry_run {
                continue;
            }
            let Some(ep) = eps.iter().find(|e| e.name == a.endpoint) else { continue };
            if let Some(n) = nets.iter().find(|n| n.name == a.network) {
                pull_admission(self.pins, n, a, &ep.id);
            }
            bpf::endpoints::forget(self.pins, a.ifindex, endpoint_number(&ep.id), &ep.netns, &a.ifname);
            if let Err(e) = super::endpoint::delete_link_in(&ep.netns, &a.ifname) {
                self.r.errors.push(format!("deleting {} of {}: {e}", a.ifname, ep.name));
            }
            tx.delete_attachment(&a.endpoint, &a.network)?;
        }
        Ok(())
    }

    /// Networks' VLAN devices and parent programs. Returns the parents present.
    fn network_programs(&mut self, nets: &[Network]) -> Result<BTreeSet<String>> {
        // Whether the parent exists is asked with if_nametoindex (an RCU lookup, no
        // netlink request: see `parent_links` on RTNL); netlink only for VLAN devices.
        let mut nl = None;
        let mut parents = BTreeSet::new();
        for n in nets {
            let (Some(parent), Some(phys)) = (&n.parent, physical_parent(n)) else { continue };
            if netns::ifindex(phys).is_none() {
                self.drift(format!("network {}: parent {phys} does not exist", n.name));
                continue;
            }
            parents.insert(phys.to_string());
            if let Some(v) = n.vlan.as_ref().filter(|v| v.created) {
                let nl = match &mut nl {
                    Some(nl) => nl,
                    None => nl.insert(Nl::here()?),
                };
                self.vlan_device(nl, n, parent, v)?;
            }
            self.parent_links(n, phys);
        }
        Ok(parents)
    }

    /// A VLAN device we made that is gone or no longer steered is made again.
    fn vlan_device(&mut self, nl: &Nl, n: &Network, parent: &str, v: &VlanParent) -> Result<()> {
        let missing_dev = nl.link(parent)?.is_none();
        let missing_tc = v.kind == crate::store::VlanKind::Ebpf
            && v.peer.as_ref().is_some_and(|p| !self.pins.tc_link(None, p).exists());
        if !missing_dev && !missing_tc {
            // Made before the XDP fast path (or its pin removed): attach its program; the
            // VLAN map pass below then lets XDP steer the device.
            if v.kind == crate::store::VlanKind::Ebpf && !self.pins.xdp_link(None, parent).exists() {
                self.drift(format!("network {}: VLAN device {parent} has no XDP program (dp_vlan_rx)", n.name));
                let pins = self.pins;
                self.repair(|| format!("attaching XDP to {parent}"), || bpf::parent::attach_vlan_rx(pins, parent));
            }
            return Ok(());
        }
        self.drift(format!(
            "network {}: VLAN device {parent} is {}",
            n.name,
            if missing_dev { "missing" } else { "not steered" }
        ));
        let pins = self.pins;
        self.repair(
            || format!("re-creating {parent}"),
            || {
                let _ = vlan::remove(nl, pins, parent, v);
                let trunk = super::facts::TrunkParent { trunk: v.trunk.clone(), outer: v.outer, vid: v.vid };
                vlan::create(nl, pins, &trunk, parent)
            },
        );
        Ok(())
    }

    /// The parent's XDP and tc programs: re-attached where missing, where their filter was
    /// replaced, or where the parent was deleted and made again (driver reload, veth
    /// re-made: a new ifindex, and the old links went with the old interface).
    fn parent_links(&mut self, n: &Network, phys: &str) {
        let pins = self.pins;
        let current = netns::ifindex(phys);
        // Which interface a link or filter is on the kernel tells only under RTNL, which an
        // interface being unregistered (the previous `rm`'s child) holds for milliseconds:
        // ~7 ms of every `rm` in a row. The quick pass asks only when the parent's own
        // admission entry does not vouch for it (see `attached_here`).
        let ask = if self.maps || !self.attached_here(current, phys) {
            vec![pins.tc_link(None, phys), pins.xdp_link(None, phys)]
        } else {
            Vec::new()
        };
        for pin in ask {
            let stale = if bpf::tc::pin_is_program(&pin) {
                // cls_bpf: the filter, not a link, is what must be there.
                (!bpf::tc::filter_present(phys, aya::programs::tc::TcAttachType::Ingress, &pin)).then(|| {
                    format!(
                        "network {}: the tc filter on {phys} is missing or runs another program: re-attaching",
                        n.name
                    )
                })
            } else {
                bpf::parent::pinned_link_ifindex(&pin).filter(|l| Some(*l) != current).map(|linked| {
                    format!(
                        "network {}: the program link {} is attached to a removed interface (ifindex {linked}, {phys} is now {}): re-attaching",
                        n.name,
                        pin.display(),
                        current.unwrap_or(0)
                    )
                })
            };
            if let Some(what) = stale {
                self.drift(what);
                if !self.dry_run {
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        if !pins.tc_link(None, phys).exists() {
            self.drift(format!("network {}: no VLAN filter (tc) on {phys}", n.name));
            self.repair(
                || format!("attaching tc to {phys}"),
                || bpf::tc::attach_ingress(pins, None, phys, dataplane_common::maps::TC_TRUNK_PROG),
            );
        }
        if !pins.xdp_link(None, phys).exists() {
            self.drift(format!("network {}: no admission program on {phys}", n.name));
            self.repair(|| format!("attaching to {phys}"), || bpf::attach_parent(pins, None, phys, AttachMode::Auto));
        }
    }

    /// Whether the per-entry maps are compared with the store: always in a full pass; in
    /// the quick one once something was out of line (a crashed command's leftovers, a
    /// missing map pin or program), whose traces in the maps are then looked for too.
    fn compare_maps(&self) -> bool {
        self.maps || self.repaired()
    }

    /// Whether this pass has found anything out of line so far.
    fn repaired(&self) -> bool {
        !self.r.drift.is_empty() || !self.r.errors.is_empty()
    }

    /// Whether `phys` is still the interface its programs were attached to, as far as the
    /// admission table tells: attaching wrote the parent's own entry under the ifindex and
    /// MAC it had then, so the entry under its current ones means the same interface (one
    /// re-created under the same name gets another ifindex). Only the same ifindex and MAC
    /// given on purpose to a new interface would pass; `dataplane reconcile` asks the kernel.
    fn attached_here(&self, ifindex: Option<u32>, phys: &str) -> bool {
        let (Some(ifindex), Some(mac)) = (ifindex, netns::hwaddr(phys)) else { return false };
        let key = AdmitKey { ifindex, vlan: VLAN_UNTAGGED, mac };
        bpf::admit::open(self.pins).ok().and_then(|t| t.get(&key)).is_some_and(|v| v.endpoint == HOST_ENDPOINT)
    }

    /// The admission map equals the store.
    fn admission(&mut self, rows: &Rows, parents: &BTreeSet<String>) -> Result<()> {
        if !self.pins.admit_map().exists() {
            return Ok(());
        }
        let mut want: Vec<(AdmitKey, AdmitValue)> = Vec::new();
        for p in parents {
            if let (Some(ifindex), Some(mac)) = (netns::ifindex(p), netns::hwaddr(p)) {
                want.push((AdmitKey { ifindex, vlan: VLAN_UNTAGGED, mac }, HOST_ENTRY));
            }
        }
        // The VLAN devices' own MACs, for their VLANs on their trunks.
        for n in &rows.nets {
            if let Some(ifindex) = rows.parents.get(&n.name).copied().flatten() {
                want.extend(super::facts::vlan_device_keys_at(n, ifindex).into_iter().map(|k| (k, HOST_ENTRY)));
            }
        }
        // An endpoint being removed by a live process has had its entries pulled
        // already; putting them back would leak them once its rows are gone.
        for a in &rows.atts {
            let Some(n) = rows.network(&a.network) else { continue };
            let number = rows.eps.iter().find(|e| e.name == a.endpoint).map_or(0, |e| endpoint_number(&e.id));
            if rows.busy.contains(&number) {
                continue;
            }
            for k in rows.admit_keys(n, a.mac.0) {
                want.push((k, AdmitValue { endpoint: number, flags: 0 }));
            }
        }
        let have = bpf::admit::list(self.pins)?;
        let describe = |k: &AdmitKey| format!("ifindex {} vlan {} {}", k.ifindex, k.vlan, Mac(k.mac));
        for (k, v) in &have {
            if !rows.busy.contains(&v.endpoint) && !want.contains(&(*k, *v)) {
                self.drift(format!("admission map: unexpected entry {}", describe(k)));
                if !self.dry_run {
                    bpf::admit::remove(self.pins, k)?;
                }
            }
        }
        for (k, v) in &want {
            if !have.contains(&(*k, *v)) {
                self.drift(format!("admission map: missing entry {}", describe(k)));
                if !self.dry_run {
                    bpf::admit::insert(self.pins, *k, *v)?;
                }
            }
        }
        Ok(())
    }

    /// The address maps (conflict detection) hold exactly the addresses of the endpoints,
    /// keyed like their admission entries; entries of endpoints in flight are theirs.
    fn address_claims(&mut self, rows: &Rows) {
        let (mut want4, mut want6) = (Vec::new(), Vec::new());
        for a in &rows.atts {
            let Some(n) = rows.network(&a.network) else { continue };
            let number = rows.eps.iter().find(|e| e.name == a.endpoint).map_or(0, |e| endpoint_number(&e.id));
            if rows.busy.contains(&number) {
                continue;
            }
            let keys = rows.admit_keys(n, a.mac.0);
            let ours = OurIp { endpoint: number, mac: a.mac.0, pad: [0; 2] };
            if let Some(IpAddr::V4(ip)) = a.ipv4 {
                want4.extend(ip_keys(&keys, ip.octets()).into_iter().map(|k| (k, ours)));
            }
            if let Some(IpAddr::V6(ip)) = a.ipv6 {
                want6.extend(ip6_keys(&keys, ip.octets()).into_iter().map(|k| (k, ours)));
            }
        }
        self.sync_claims(&want4, &rows.busy);
        self.sync_claims(&want6, &rows.busy);
    }

    /// Make one address map equal `want`, leaving the entries of endpoints in `busy`.
    fn sync_claims<K: Claim>(&mut self, want: &[(K, OurIp)], busy: &BTreeSet<u32>) {
        let have = K::have(self.pins);
        for (k, v) in &have {
            if !busy.contains(&v.endpoint) && !want.contains(&(*k, *v)) {
                self.drift(format!("{}: unexpected entry {}", K::MAP, k.show()));
                if !self.dry_run {
                    k.remove(self.pins);
                }
            }
        }
        for (k, v) in want {
            if !have.contains(&(*k, *v)) {
                self.drift(format!("{}: missing entry {}", K::MAP, k.show()));
                let pins = self.pins;
                self.repair(|| format!("{}: restoring {}", K::MAP, k.show()), || k.insert(pins, *v));
            }
        }
    }

    /// Endpoint links deleted by hand are made again as allocated; interfaces dataplane
    /// made (ifindex from EP_IFINDEX_BASE) that the store no longer knows (left by a
    /// crashed disconnect, or added by hand) go; configuration changed by hand is restored.
    fn endpoint_links(&mut self, rows: &Rows) {
        for ep in rows.live() {
            let Ok(inside) = Nl::in_netns(Path::new(&ep.netns)) else { continue };
            // Every endpoint in this namespace (host-access interfaces of several networks
            // share the host's; `--netns` endpoints may share one) owns its interfaces.
            let sharing: BTreeSet<&str> =
                rows.eps.iter().filter(|e| e.netns == ep.netns).map(|e| e.name.as_str()).collect();
            let mine: Vec<u32> =
                rows.atts.iter().filter(|a| sharing.contains(a.endpoint.as_str())).map(|a| a.ifindex).collect();
            for l in inside.links().unwrap_or_default() {
                if l.index >= dataplane_common::maps::EP_IFINDEX_BASE && !mine.contains(&l.index) {
                    self.drift(format!("endpoint {}: unexpected interface {} in {}", ep.name, l.name, ep.netns));
                    self.repair(
                        || format!("deleting {} of {}", l.name, ep.name),
                        || {
                            bpf::endpoints::forget(self.pins, l.index, endpoint_number(&ep.id), &ep.netns, &l.name);
                            inside.del_link(l.index)
                        },
                    );
                }
            }
            for a in rows.atts.iter().filter(|a| a.endpoint == ep.name && a.state == EndpointState::Ready) {
                let Some(n) = rows.network(&a.network) else { continue };
                if let Some(link) = inside.link(&a.ifname).ok().flatten() {
                    // A host-access interface never gets a default route: it is the host's
                    // way into the network, not the host's way out.
                    let routed = !n.internal && !super::facts::is_host_shim(ep);
                    repair_config(&inside, n, routed, &ep.name, a, &link, self.dry_run, &mut self.r);
                    continue;
                }
                self.drift(format!("endpoint {}: interface {} is missing from {}", ep.name, a.ifname, ep.netns));
                let pins = self.pins;
                self.repair(
                    || format!("re-creating {} of {}", a.ifname, ep.name),
                    || {
                        bpf::endpoints::detach(pins, &ep.netns, &a.ifname);
                        // The counts of the interface that went stay the endpoint's.
                        bpf::endpoints::retire(pins, a.ifindex, endpoint_number(&ep.id));
                        realise(pins, n, ep, a)
                    },
                );
            }
        }
    }

    /// Endpoint identities (anti-spoofing entries) and their programs. Returns the
    /// namespace tags whose endpoint pins are still wanted.
    fn endpoint_programs(&mut self, rows: &Rows) -> Result<BTreeSet<String>> {
        let mut live_tags = BTreeSet::new();
        let mut want = Vec::new();
        // Endpoints another live process is creating or removing: theirs to handle.
        let mut in_flight = rows.busy.clone();
        for ep in rows.eps.iter().filter(|e| e.state != EndpointState::Ready) {
            in_flight.insert(endpoint_number(&ep.id));
            if !ep.netns.is_empty() {
                live_tags.insert(crate::bpf::pins::netns_tag(Some(&ep.netns)));
            }
        }
        for ep in rows.eps.iter().filter(|e| e.state == EndpointState::Ready && e.owner.is_docker()) {
            for a in rows.atts.iter().filter(|a| a.endpoint == ep.name) {
                want.push((a.ifindex, endpoint_info(ep, a)?));
                if !self.pins.docker_endpoint_links(a.ifindex)[0].exists() {
                    self.drift(format!("endpoint {}: no anti-spoofing program on {}", ep.name, a.ifname));
                    let pins = self.pins;
                    self.repair(
                        || format!("attaching to {} of {}", a.ifname, ep.name),
                        || super::docker::reattach(pins, ep, a),
                    );
                }
            }
        }
        for ep in rows.live() {
            live_tags.insert(crate::bpf::pins::netns_tag(Some(&ep.netns)));
            for a in rows.atts.iter().filter(|a| a.endpoint == ep.name && a.state == EndpointState::Ready) {
                want.push((a.ifindex, endpoint_info(ep, a)?));
                let cls_only = rows.nets.iter().any(|n| n.name == a.network && super::facts::keeps_filters(n));
                self.endpoint_filters(ep, a, cls_only);
            }
        }
        if !self.compare_maps() {
            return Ok(live_tags);
        }
        let have = bpf::endpoints::list(self.pins)?;
        for (k, v) in &have {
            if !in_flight.contains(&v.endpoint) && !want.contains(&(*k, *v)) {
                self.drift(format!("endpoint map: unexpected entry for {} (ifindex {k})", Mac(v.mac)));
                if !self.dry_run {
                    bpf::endpoints::remove(self.pins, k);
                }
            }
        }
        for (k, v) in &want {
            if !have.contains(&(*k, *v)) {
                self.drift(format!("endpoint map: missing entry for {} (ifindex {k})", Mac(v.mac)));
                if !self.dry_run {
                    bpf::endpoints::insert(self.pins, *k, *v)?;
                }
            }
        }
        Ok(live_tags)
    }

    /// One endpoint interface's anti-spoofing program is attached (re-attached if not,
    /// as a new endpoint's are: `cls_only` for a network with endpoint_hooks=cls_bpf).
    fn endpoint_filters(&mut self, ep: &Endpoint, a: &Attachment, cls_only: bool) {
        let pins = self.pins;
        let [eg, _] = bpf::endpoints::link_pins(pins, &ep.netns, &a.ifname);
        // A program attached as a cls_bpf filter (kernels without tcx, endpoint_hooks=
        // cls_bpf): whoever holds CAP_NET_ADMIN inside the endpoint can delete it. Only the
        // thorough pass looks (a bpf(2) call and a readlink per endpoint).
        let filter = self.thorough && eg.exists() && bpf::tc::pin_is_program(&eg);
        let eg_gone = filter && {
            let (ifname, eg) = (a.ifname.clone(), eg.clone());
            crate::nl::with_netns(Path::new(&ep.netns), move || {
                !bpf::tc::filter_present(&ifname, aya::programs::tc::TcAttachType::Egress, &eg)
            })
            .unwrap_or(true)
        };
        if eg_gone {
            self.drift(format!(
                "endpoint {}: its anti-spoofing filters on {} were removed or replaced (tc cls_bpf: a holder of CAP_NET_ADMIN in the endpoint can do that; tcx links, the default where the kernel has tcx, it cannot remove)",
                ep.name, a.ifname
            ));
        } else if !eg.exists() {
            self.drift(format!("endpoint {}: no anti-spoofing program on {}", ep.name, a.ifname));
        } else {
            return;
        }
        self.repair(
            || format!("attaching to {} of {}", a.ifname, ep.name),
            || {
                // Only this program's pin: an older version's rx-counting filter (pinned
                // beside it) goes on counting this interface's frames.
                let _ = std::fs::remove_file(&eg);
                // A cls_bpf filter, then a tcx link where the kernel has tcx, unless the
                // network keeps filters.
                if bpf::endpoints::attach_fast(pins, &ep.netns, &a.ifname)? && !cls_only {
                    bpf::endpoints::harden(pins, &ep.netns, &a.ifname, a.ifindex)?;
                }
                Ok::<(), bpf::BpfError>(())
            },
        );
    }

    /// Counters and conflict records of endpoints that no longer exist (left by versions
    /// that did not drop them when a creation failed).
    fn stale_counters(&mut self, rows: &Rows) {
        let known: BTreeSet<u32> = rows.eps.iter().map(|e| endpoint_number(&e.id)).collect();
        for n in bpf::endpoints::counted_endpoints(self.pins).into_iter().filter(|n| !known.contains(n)) {
            self.drift(format!("endpoint counters: entry for endpoint {n}, which no longer exists"));
            if !self.dry_run {
                bpf::endpoints::remove_counters(self.pins, n);
            }
        }
    }

    /// Pins of endpoint programs whose endpoint is gone.
    fn stale_endpoint_pins(&mut self, live_tags: &BTreeSet<String>) {
        // The live endpoints' dirs are not even read: one directory listing per command,
        // not one per endpoint.
        let mut stale = bpf::pins::endpoint_pin_pairs(self.pins, |t| !live_tags.contains(t));
        if !stale.is_empty() && super::background::unlinks_pending() {
            // A removed endpoint's pins are the deletion child's to remove once its
            // interface is gone: unpinned before, the program would come off an interface
            // that still carries traffic. Wait for the children, then judge what is left.
            super::background::wait_unlinks();
            stale = bpf::pins::endpoint_pin_pairs(self.pins, |t| !live_tags.contains(t));
        }
        for (_, pair) in stale {
            self.drift(format!("stale endpoint program pin {}", pair[0].display()));
            if !self.dry_run {
                for pin in &pair {
                    let _ = std::fs::remove_file(pin);
                }
                if let Some(d) = pair[0].parent() {
                    let _ = std::fs::remove_dir(d);
                }
            }
        }
    }
}

/// A key of an address map (IPv4 or IPv6), for [`Pass::sync_claims`].
trait Claim: Copy + PartialEq {
    const MAP: &'static str;
    fn show(&self) -> String;
    fn have(pins: &Pins) -> Vec<(Self, OurIp)>;
    fn insert(&self, pins: &Pins, v: OurIp) -> std::result::Result<(), bpf::BpfError>;
    fn remove(&self, pins: &Pins);
}

impl Claim for IpKey {
    const MAP: &'static str = "IPv4 address map";

    fn show(&self) -> String {
        format!("{} on ifindex {} vlan {}", std::net::Ipv4Addr::from(self.ip), self.ifindex, self.vlan)
    }

    fn have(pins: &Pins) -> Vec<(Self, OurIp)> {
        bpf::admit::claimed_ips(pins)
    }

    fn insert(&self, pins: &Pins, v: OurIp) -> std::result::Result<(), bpf::BpfError> {
        bpf::admit::claim_ips(pins, &[*self], v)
    }

    fn remove(&self, pins: &Pins) {
        bpf::admit::unclaim_ip(pins, self)
    }
}

impl Claim for Ip6Key {
    const MAP: &'static str = "IPv6 address map";

    fn show(&self) -> String {
        format!("{} on ifindex {} vlan {}", std::net::Ipv6Addr::from(self.ip), self.ifindex, self.vlan)
    }

    fn have(pins: &Pins) -> Vec<(Self, OurIp)> {
        bpf::admit::claimed_ip6s(pins)
    }

    fn insert(&self, pins: &Pins, v: OurIp) -> std::result::Result<(), bpf::BpfError> {
        bpf::admit::claim_ip6s(pins, &[*self], v)
    }

    fn remove(&self, pins: &Pins) {
        bpf::admit::unclaim_ip6(pins, self)
    }
}

/// Program links networks made that no network (in any state) or Docker endpoint owns any
/// more: tc links on parents and hidden VLAN ends (with the parent's XDP link, which a
/// network always attaches beside it), and Docker endpoints' links. XDP links alone are
/// `dataplane bpf load`'s and are left alone.
fn stale_network_pins(
    pins: &crate::bpf::Pins,
    all: &[crate::store::Network],
    eps: &[crate::store::Endpoint],
    atts: &[crate::store::Attachment],
    dry_run: bool,
    r: &mut ReconcileReport,
) {
    let mut known: BTreeSet<String> = BTreeSet::new();
    for n in all {
        known.extend(physical_parent(n).map(str::to_string));
        known.extend(n.vlan.as_ref().and_then(|v| v.peer.clone()));
    }
    let docker: BTreeSet<String> = atts
        .iter()
        .filter(|a| eps.iter().any(|e| e.name == a.endpoint && e.owner.is_docker()))
        .map(|a| a.ifindex.to_string())
        .collect();
    // Only the parents' and Docker endpoints' dirs can hold what this looks for.
    for (tag, pin) in bpf::parent::list_link_pins_of(pins, |t| t == "host" || t == "docker") {
        let Some(lp) = LinkPin::parse(&tag, &pin) else { continue };
        let stale = (lp.is_host() && lp.hook == Hook::TcIngress && !known.contains(&lp.iface))
            || (lp.is_docker() && !docker.contains(&lp.iface));
        if !stale {
            continue;
        }
        r.drift.push(format!("program link {} belongs to no network or endpoint: removing it", pin.display()));
        if dry_run {
            continue;
        }
        if lp.is_host() {
            let _ = bpf::tc::detach_pinned(&lp.iface, aya::programs::tc::TcAttachType::Ingress, &pin);
            if let Some(xdp) = pins.xdp_beside(&pin) {
                let _ = std::fs::remove_file(xdp);
            }
        } else {
            let _ = std::fs::remove_file(&pin);
        }
    }
    // A network being made right now (its row is `creating`, its maps pinned before its
    // first link): its maps are not unused.
    if !dry_run && all.iter().all(|n| n.state == EndpointState::Ready) {
        let _ = super::release_pins(pins);
    }
}

/// An existing endpoint interface as it was made: up, with its addresses and (`routed`:
/// unless the network is internal or this is the host's own interface) a default route
/// per family that has a gateway.
#[allow(clippy::too_many_arguments)]
fn repair_config(
    inside: &Nl,
    n: &crate::store::Network,
    routed: bool,
    ep: &str,
    a: &crate::store::Attachment,
    link: &crate::nl::LinkInfo,
    dry_run: bool,
    r: &mut ReconcileReport,
) {
    let mut fix = |drift: String, f: &dyn Fn() -> crate::nl::Result<()>| {
        r.drift.push(format!("endpoint {ep}: {drift}"));
        if !dry_run {
            if let Err(e) = f() {
                r.errors.push(format!("endpoint {ep}: repairing ({drift}): {e}"));
            }
        }
    };
    if !link.up {
        fix(format!("{} is down", a.ifname), &|| inside.set_up(link.index));
    }
    let addrs = inside.addrs().unwrap_or_default();
    for ip in [a.ipv4, a.ipv6].into_iter().flatten() {
        if !addrs.iter().any(|(i, x, _)| *i == link.index && *x == ip) {
            let prefix = n
                .pools
                .iter()
                .find(|p| p.subnet.contains(ip))
                .map_or(if ip.is_ipv4() { 32 } else { 128 }, |p| p.subnet.prefix);
            fix(format!("address {ip}/{prefix} is missing from {}", a.ifname), &|| {
                inside.add_addr(link.index, ip, prefix)
            });
        }
    }
    if !routed {
        return;
    }
    let routes = inside.default_routes().unwrap_or_default();
    for ip in [a.ipv4, a.ipv6].into_iter().flatten() {
        let Some(gw) = n.pools.iter().find(|p| p.subnet.contains(ip)).and_then(|p| p.gateway) else { continue };
        if !routes.iter().any(|(_, g)| g.is_ipv4() == gw.is_ipv4()) {
            fix(format!("no default route (via {gw} on {})", a.ifname), &|| inside.add_default_route(gw, link.index));
        }
    }
}

/// DP_VLAN_DEVS/DP_VLAN_PEERS hold one entry per VLAN network's (trunk ifindex, VID): the
/// hidden end of an eBPF VLAN device, or 0 where the kernel's device demuxes. Entries of
/// networks another process is creating or removing are left to it.
fn vlan_entries(
    pins: &crate::bpf::Pins,
    nets: &[crate::store::Network],
    all: &[crate::store::Network],
    dry_run: bool,
    r: &mut ReconcileReport,
) -> Result<()> {
    if !pins.map(dataplane_common::maps::VLAN_DEVS_MAP).exists() {
        return Ok(());
    }
    let busy: Vec<(String, u16, u16)> = all
        .iter()
        .filter(|n| n.state != EndpointState::Ready)
        .filter_map(|n| n.vlan.as_ref().map(|v| (v.trunk.clone(), v.outer.unwrap_or(0), v.vid)))
        .collect();
    let busy_index: Vec<(u32, u16, u16)> =
        busy.iter().filter_map(|(t, o, vid)| netns::ifindex(t).map(|i| (i, *o, *vid))).collect();
    let mut want = Vec::new();
    for v in nets.iter().filter_map(|n| n.vlan.as_ref()) {
        let Some(trunk) = netns::ifindex(&v.trunk) else { continue };
        let dev = match v.kind {
            crate::store::VlanKind::Ebpf => v.peer.as_deref().and_then(netns::ifindex).unwrap_or(0),
            _ => 0,
        };
        want.push((trunk, v.outer.unwrap_or(0), v.vid, dev));
    }
    let have = bpf::vlan_maps::list(pins)?;
    for (k, dev) in &have {
        if busy_index.contains(&(k.trunk_ifindex, k.outer, k.vid)) {
            continue;
        }
        if !want.iter().any(|(t, o, vid, d)| *t == k.trunk_ifindex && *o == k.outer && *vid == k.vid && d == dev) {
            r.drift.push(format!(
                "VLAN map: stale entry trunk ifindex {} VID {}{} -> {dev}",
                k.trunk_ifindex,
                k.vid,
                if k.outer != 0 { format!(" (outer {})", k.outer) } else { String::new() }
            ));
            if !dry_run {
                bpf::vlan_maps::remove(pins, k.trunk_ifindex, k.outer, k.vid, Some(*dev))?;
            }
        }
    }
    for (t, o, vid, dev) in &want {
        if !have.iter().any(|(k, d)| k.trunk_ifindex == *t && k.outer == *o && k.vid == *vid && d == dev) {
            r.drift.push(format!("VLAN map: missing entry trunk ifindex {t} VID {vid} -> {dev}"));
            if !dry_run {
                bpf::vlan_maps::insert(pins, *t, *o, *vid, *dev)?;
            }
        }
    }
    vlan_xdp_entries(pins, nets, &busy_index, dry_run, r)
}

/// DP_VLAN_XDP holds, per VID, the eBPF VLAN device (not QinQ) that the trunk's XDP
/// program steers: one whose visible end carries `dp_vlan_rx`. Where two trunks' devices
/// have the same VID, the one in the map keeps it (the other is steered by tc).
fn vlan_xdp_entries(
    pins: &crate::bpf::Pins,
    nets: &[crate::store::Network],
    busy: &[(u32, u16, u16)],
    dry_run: bool,
    r: &mut ReconcileReport,
) -> Result<()> {
    if !pins.map(dataplane_common::maps::VLAN_XDP_MAP).exists() {
        return Ok(());
    }
    let mut want: Vec<(u16, u32, u32)> = Vec::new();
    for n in nets {
        let (Some(v), Some(parent)) = (n.vlan.as_ref(), n.parent.as_deref()) else { continue };
        if v.kind != crate::store::VlanKind::Ebpf || v.outer.is_some() {
            continue;
        }
        let (Some(trunk), Some(dev)) = (netns::ifindex(&v.trunk), v.peer.as_deref().and_then(netns::ifindex)) else {
            continue;
        };
        let has_program = bpf::parent::pinned_link_ifindex(&pins.xdp_link(None, parent))
            .is_some_and(|l| Some(l) == netns::ifindex(parent));
        if has_program && !want.contains(&(v.vid, trunk, dev)) {
            want.push((v.vid, trunk, dev));
        }
    }
    let mut have = bpf::vlan_maps::xdp_entries(pins)?;
    for (vid, t, d) in have.clone() {
        if busy.contains(&(t, 0, vid)) || want.contains(&(vid, t, d)) {
            continue;
        }
        r.drift
            .push(format!("VLAN XDP map: stale entry VID {vid} -> trunk ifindex {t}, device {d}: steered by tc now"));
        if !dry_run {
            bpf::vlan_maps::clear_xdp(pins, t, vid)?;
            have.retain(|h| *h != (vid, t, d));
        }
    }
    for (vid, t, d) in want {
        // Held by another trunk's device of the same VID: that one keeps the fast path.
        if have.iter().any(|h| h.0 == vid) {
            continue;
        }
        r.drift.push(format!("VLAN XDP map: VID {vid} of trunk ifindex {t} is not steered in XDP"));
        if !dry_run {
            bpf::vlan_maps::set_xdp(pins, t, vid, d)?;
            have.push((vid, t, d));
        }
    }
    Ok(())
}

/// Map pins removed by hand while programs run: re-pin the live maps (entries kept); a map
/// no program holds is made afresh and the programs are swapped onto it (entries are then
/// restored from the store by the passes below).
fn map_pins(pins: &crate::bpf::Pins, dry_run: bool, r: &mut ReconcileReport) -> Result<()> {
    let missing: Vec<&str> = bpf::MAP_NAMES.iter().copied().filter(|m| !pins.map(m).exists()).collect();
    if missing.is_empty() || !bpf::parent::any_link_pin(pins) {
        return Ok(());
    }
    r.drift.push(format!("map pins missing while programs are attached: {}", missing.join(", ")));
    if dry_run {
        return Ok(());
    }
    let (recovered, lost) = bpf::recover_map_pins(pins)?;
    if !recovered.is_empty() {
        r.drift.push(format!("re-pinned the live maps {} (entries kept)", recovered.join(", ")));
    }
    if !lost.is_empty() {
        bpf::ensure_maps(pins)?;
        bpf::reload::reload_all(pins)?;
        r.drift.push(format!("made {} afresh and swapped the programs onto them", lost.join(", ")));
    }
    Ok(())
}

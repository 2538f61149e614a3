//! The engine side of the CNI plugin (`dataplane-cni`).
//!
//! A CNI network is the conflist's network name; dataplane creates it in the store (owner
//! [`Owner::Cni`]) at the first ADD that needs it and removes it (XDP, VLAN device, pins)
//! with its last attachment, so a node carries programs only while pods use them. An
//! attachment is (container id, ifname) on that network: an endpoint row for the runtime's
//! namespace with one macvlan, made exactly as `dataplane run --netns` makes one.

use std::{net::IpAddr, path::Path};

use super::{
    endpoint::{allocate, endpoint_info, endpoint_number, realise},
    invalid, ControlError, Engine, NetworkCreate, Result, Undo,
};
use crate::{
    bpf,
    mac::Mac,
    nl::Nl,
    store::{Attachment, Endpoint, EndpointState, Network, Owner},
};

/// What a runtime asks for in ADD.
#[derive(Debug, Clone, Default)]
pub struct CniAttach {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub ipv4: Option<IpAddr>,
    pub ipv6: Option<IpAddr>,
    pub mac: Option<String>,
}

fn owner_of(container_id: &str, ifname: &str) -> Owner {
    Owner::Cni { container_id: container_id.to_string(), ifname: ifname.to_string() }
}

/// A store name for an attachment: `cni-<container id (sanitised, 12)>-<hash>-<ifname>`.
/// The first 12 characters are for people (as `docker ps` shows ids); the hash is of the
/// whole id, so ids that share them (`aaaaaaaaaaaa1`, `aaaaaaaaaaaa2`) or differ only in
/// characters the sanitising replaces (`a.b`, `a_b`) get names of their own.
fn endpoint_name(container_id: &str, ifname: &str) -> String {
    let id: String = container_id
        .chars()
        .take(12)
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    // FNV-1a (64 bits), folded to 32: stable across versions and platforms.
    let h =
        container_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("cni-{id}-{:08x}-{ifname}", (h ^ (h >> 32)) as u32)
}

impl Engine {
    /// The network named by a conflist entry: created from `req` when missing; an existing
    /// one must be CNI's and on the same parent. A network another ADD or DEL is creating
    /// or removing is waited for (the creator holds the network lock through its kernel
    /// work); one a killed ADD or DEL left half-made or half-removed is finished first, so
    /// a runtime's next ordinary call never finds the network wedged.
    pub fn cni_network(&mut self, req: NetworkCreate) -> Result<Network> {
        let parent_of = |opts: &[String]| opts.iter().find_map(|o| o.strip_prefix("parent=").map(str::to_string));
        let want_parent = parent_of(&req.opts).unwrap_or_default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match self.store.read(|tx| tx.network(&req.name))?.filter(|n| n.name == req.name) {
                Some(n) if n.state != EndpointState::Ready => {
                    if std::time::Instant::now() > deadline {
                        return Err(super::state_err(
                            super::StateKind::Busy,
                            format!(
                                "network {} is still being set up or removed by process {} after 60 s; try again",
                                n.name, n.owner_pid
                            ),
                        ));
                    }
                    self.finish_or_wait_for(&n)?;
                    continue;
                }
                Some(n) => {
                    if !n.owner.is_cni() {
                        return invalid(format!(
                            "network name {:?} is used by a dataplane network that is not CNI's ({}); rename the CNI network",
                            n.name,
                            n.owner.label()
                        ));
                    }
                    if n.parent.as_deref() != Some(want_parent.as_str()) {
                        return invalid(format!(
                            "network {} already runs on parent {}, not {want_parent}: one name, one parent",
                            n.name,
                            n.parent.as_deref().unwrap_or("?")
                        ));
                    }
                    return Ok(n);
                }
                None => match self.network_create(req.clone()) {
                    Ok(n) => return Ok(n),
                    // Another ADD made it meanwhile (or is making it): use theirs.
                    Err(e)
                        if e.state_kind() == Some(super::StateKind::AlreadyExists)
                            && std::time::Instant::now() < deadline =>
                    {
                        continue
                    }
                    Err(e) => return Err(e),
                },
            }
        }
    }

    /// Network `n` is not ready. Whoever creates or removes a network holds the network
    /// lock from marking its row until the row is ready or gone; so once we hold that lock,
    /// a row still not ready was left by a process that was killed: the quick reconcile
    /// pass finishes its work (tears the half-made or half-removed network down).
    fn finish_or_wait_for(&mut self, n: &Network) -> Result<()> {
        let _lock = self.network_lock()?;
        let stuck = |e: &mut Engine| -> Result<Option<Network>> {
            Ok(e.store.read(|tx| tx.network(&n.name))?.filter(|m| m.state != EndpointState::Ready))
        };
        let Some(m) = stuck(self)? else { return Ok(()) };
        let r = self.reconcile(false)?;
        if stuck(self)?.is_some() {
            return Err(ControlError::Invalid(format!(
                "network {} was left {:?} by process {}, which is gone, and could not be finished: {}",
                m.name,
                m.state,
                m.owner_pid,
                if r.errors.is_empty() { "its owner still looks alive".to_string() } else { r.errors.join("; ") }
            )));
        }
        Ok(())
    }

    /// ADD: allocate, push admission entries, create and configure the interface inside
    /// the runtime's namespace with its anti-spoofing programs.
    pub fn cni_attach(&mut self, n: &Network, req: CniAttach) -> Result<Attachment> {
        if n.state != EndpointState::Ready {
            return Err(super::state_err(
                super::StateKind::Busy,
                format!("network {} is being set up or removed; try again", n.name),
            ));
        }
        if !Path::new(&req.netns).exists() {
            return invalid(format!("network namespace {} does not exist", req.netns));
        }
        // The same name in the same namespace may still be going (an earlier DEL).
        super::background::wait_unlink(&req.netns, &req.ifname);
        let pins = self.pins.clone();
        let owner = owner_of(&req.container_id, &req.ifname);
        let ep = Endpoint {
            id: crate::store::new_id(),
            name: endpoint_name(&req.container_id, &req.ifname),
            netns: req.netns.clone(),
            netns_owned: false,
            network_mode: crate::store::NetworkMode::from(n.name.clone()),
            created: crate::store::now_rfc3339(),
            state: EndpointState::Creating,
            owner_pid: std::process::id(),
            owner_start: crate::store::ProcRef::me().start,
            pid: None,
            auto_remove: false,
            command: vec![],
            supervisor: None,
            owner: owner.clone(),
        };
        self.cluster_catch_up();
        let cluster = self.cluster.as_ref();
        let a = self
            .store
            .write(|tx| -> Result<Attachment> {
                if let Some(e) = tx.endpoints()?.into_iter().find(|e| e.owner == owner || e.name == ep.name) {
                    return invalid(format!(
                        "container {} already has {} attached (endpoint {}); DEL it first",
                        req.container_id, req.ifname, e.name
                    ));
                }
                let a = allocate(tx, &ep, n, req.ipv4, req.ipv6, req.mac.as_deref(), req.ifname.clone(), cluster)?;
                tx.put_endpoint(&ep)?;
                tx.put_attachment(&a)?;
                Ok(a)
            })
            .map_err(|e| self.cluster_failed(e))?;
        let mut undo = Undo::new();
        let (path, ifname) = (ep.netns.clone(), a.ifname.clone());
        undo.push(format!("deleting {ifname} in {path}"), move || super::endpoint::delete_link_in(&path, &ifname));
        let (pins2, path, a2, number) = (pins.clone(), ep.netns.clone(), a.clone(), endpoint_number(&ep.id));
        undo.push(format!("removing the programs of {}", a.ifname), move || {
            bpf::endpoints::forget(&pins2, a2.ifindex, number, &path, &a2.ifname);
            // A new endpoint: whatever it counted goes with it.
            bpf::endpoints::remove_counters(&pins2, number);
            Ok(())
        });
        let (ep2, a2) = (ep.clone(), a.clone());
        self.complete_attach(Some((n, &a)), ep, undo, Some("cni-add:linked"), |_| realise(&pins, n, &ep2, &a2))?;
        Ok(a)
    }

    /// The attachment of (container, ifname) on `network`, if any.
    pub fn cni_attachment(
        &mut self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<(Endpoint, Attachment)>> {
        let owner = owner_of(container_id, ifname);
        let (eps, atts) = self.store.read(|tx| -> Result<_> { Ok((tx.endpoints()?, tx.attachments()?)) })?;
        Ok(eps.into_iter().find(|e| e.owner == owner && e.network_mode.name() == network).and_then(|e| {
            let a = atts.into_iter().find(|a| a.endpoint == e.name)?;
            Some((e, a))
        }))
    }

    /// Every CNI attachment on `network` as (container id, ifname).
    pub fn cni_attachments(&mut self, network: &str) -> Result<Vec<(String, String)>> {
        let eps = self.store.read(|tx| tx.endpoints())?;
        Ok(eps
            .into_iter()
            .filter(|e| e.network_mode.name() == network)
            .filter_map(|e| match e.owner {
                Owner::Cni { container_id, ifname } => Some((container_id, ifname)),
                _ => None,
            })
            .collect())
    }

    /// DEL: remove the attachment if it exists (also when its namespace is gone), then the
    /// network if nothing else uses it. Returns warnings.
    pub fn cni_detach(&mut self, network: &str, container_id: &str, ifname: &str) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        if let Some((ep, _)) = self.cni_attachment(network, container_id, ifname)? {
            warnings.extend(self.remove_endpoint(&ep.name, false, |_| Ok(()))?);
        }
        // Its cluster claims go with it (an unreachable cluster fails the DEL, which the
        // runtime retries: the endpoint is gone by then, the sweep still finds its claims).
        self.cluster_sweep(false)?;
        warnings.extend(self.cni_release_network(network)?);
        Ok(warnings)
    }

    /// Remove CNI network `network` when no attachment uses it any more.
    pub fn cni_release_network(&mut self, network: &str) -> Result<Vec<String>> {
        let (net, used) = self.store.read(|tx| -> Result<_> {
            // The network's host-access interface does not keep it.
            let shims = super::facts::host_shims(tx)?;
            let used = tx.attachments()?.iter().any(|a| a.network == network && !shims.contains(&a.endpoint));
            Ok((tx.network(network)?.filter(|n| n.name == network), used))
        })?;
        match net {
            // Left half-made or half-removed by a killed ADD or DEL: finish that first.
            Some(n) if n.owner.is_cni() && n.state != EndpointState::Ready => {
                self.finish_or_wait_for(&n)?;
                Ok(Vec::new())
            }
            Some(n) if n.owner.is_cni() && !used => {
                match self.network_rm_by(&n.name, &Owner::Cni { container_id: String::new(), ifname: String::new() }) {
                    Ok(w) => Ok(w),
                    // An ADD attached meanwhile: the network stays.
                    Err(e)
                        if matches!(
                            e.state_kind(),
                            Some(super::StateKind::HasEndpoints | super::StateKind::NotFound)
                        ) =>
                    {
                        Ok(Vec::new())
                    }
                    Err(e) => Err(e),
                }
            }
            _ => Ok(Vec::new()),
        }
    }

    /// CHECK: the attachment is as recorded and as `expect` says (addresses, MAC): the
    /// interface, its addresses and default routes, its programs and map entries.
    pub fn cni_check(
        &mut self,
        network: &str,
        container_id: &str,
        ifname: &str,
        netns: &str,
        expect: &[IpAddr],
        expect_mac: Option<&str>,
    ) -> Result<()> {
        let (ep, a) = self.cni_attachment(network, container_id, ifname)?.ok_or_else(|| {
            ControlError::Invalid(format!("container {container_id} has no {ifname} on network {network}"))
        })?;
        let n = self
            .store
            .read(|tx| tx.network(network))?
            .ok_or_else(|| ControlError::Invalid(format!("network {network} is gone")))?;
        let fail = |what: String| invalid::<()>(format!("check of {ifname} in {}: {what}", ep.netns));
        if ep.state != EndpointState::Ready {
            return fail(format!("the attachment is {:?}", ep.state));
        }
        // The runtime's namespace must be the one the attachment was made in (runtimes
        // name one namespace by several paths: compared by identity, not by path).
        let same_ns = match (crate::netns::check_netns_file(netns), crate::netns::check_netns_file(&ep.netns)) {
            (Ok(asked), Ok(made)) => asked == made,
            _ => false,
        };
        if !same_ns {
            return fail(format!("CNI_NETNS {netns} is not the namespace the attachment was made in"));
        }
        let recorded: Vec<IpAddr> = [a.ipv4, a.ipv6].into_iter().flatten().collect();
        for ip in expect {
            if !recorded.contains(ip) {
                return fail(format!("address {ip} of the previous result is not the attachment's ({recorded:?})"));
            }
        }
        for ip in &recorded {
            if !expect.contains(ip) {
                return fail(format!("the attachment's address {ip} is not in the previous result ({expect:?})"));
            }
        }
        if let Some(m) = expect_mac.filter(|m| m.parse::<Mac>().ok() != Some(a.mac)) {
            return fail(format!("MAC {m} of the previous result is not the attachment's {}", a.mac));
        }
        let inside = Nl::in_netns(Path::new(&ep.netns))?;
        let Some(link) = inside.link(&a.ifname)? else { return fail("the interface is missing".into()) };
        if link.index != a.ifindex {
            return fail(format!("ifindex {} is not the recorded {}", link.index, a.ifindex));
        }
        let mac = a.mac;
        if link.mac != Some(mac.0) {
            return fail(format!("its MAC is not {}", a.mac));
        }
        if !link.up {
            return fail("it is down".into());
        }
        let addrs = inside.addrs()?;
        for ip in &recorded {
            if !addrs.iter().any(|(i, x, _)| *i == link.index && x == ip) {
                return fail(format!("address {ip} is missing"));
            }
        }
        if !n.internal {
            let routes = inside.default_routes()?;
            for ip in &recorded {
                let gw = n.pools.iter().find(|p| p.subnet.contains(*ip)).and_then(|p| p.gateway);
                if let Some(gw) = gw {
                    if !routes.iter().any(|(oif, g)| *g == gw && *oif == link.index) {
                        return fail(format!("no default route via {gw}"));
                    }
                }
            }
        }
        let [eg, _] = bpf::endpoints::link_pins(&self.pins, &ep.netns, &a.ifname);
        if !eg.exists() {
            return fail("its anti-spoofing program is not attached".into());
        }
        let want = endpoint_info(&ep, &a)?;
        if !bpf::endpoints::list(&self.pins)?.iter().any(|(k, v)| *k == a.ifindex && *v == want) {
            return fail("its identity entry (anti-spoofing map) is missing or differs".into());
        }
        let have = bpf::admit::list(&self.pins)?;
        for k in super::facts::admit_keys(&n, mac.0).unwrap_or_default() {
            if !have.iter().any(|(hk, _)| *hk == k) {
                return fail(format!("admission entry for {} on the parent is missing", a.mac));
            }
        }
        Ok(())
    }
}

impl Engine {
    /// ADD as another plugin's IPAM: an address (and nothing else) for (container, ifname)
    /// on the address-only network `req.name` (made at first use, with Docker's rules).
    pub fn cni_ipam_add(&mut self, req: NetworkCreate, a: CniAttach) -> Result<(Network, Attachment)> {
        super::check_name("network", &req.name)?;
        let owner = owner_of(&a.container_id, &a.ifname);
        self.store.write(|tx| -> Result<(Network, Attachment)> {
            let n = match tx.network(&req.name)?.filter(|n| n.name == req.name) {
                Some(n) if n.driver == crate::store::Driver::Ipam => n,
                Some(n) => {
                    return invalid(format!(
                        "network name {:?} is used by a {} network; the IPAM network needs its own name",
                        n.name,
                        n.driver.name()
                    ))
                }
                None => {
                    let pools = super::network::pools_for(&req, &tx.networks()?, |_| None)?;
                    let n = Network::address_only(
                        crate::store::new_id(),
                        crate::store::now_rfc3339(),
                        &req.name,
                        pools,
                        req.ipv6,
                        Owner::Cni { container_id: String::new(), ifname: String::new() },
                    );
                    tx.put_network(&n)?;
                    n
                }
            };
            if let Some(e) = tx.endpoints()?.into_iter().find(|e| e.owner == owner && e.network_mode.name() == n.name) {
                return invalid(format!(
                    "container {} already has an address for {} on {} (endpoint {}); DEL it first",
                    a.container_id, a.ifname, n.name, e.name
                ));
            }
            let ep = Endpoint {
                id: crate::store::new_id(),
                name: format!("{}-ipam-{}", endpoint_name(&a.container_id, &a.ifname), &n.id[..6]),
                netns: a.netns.clone(),
                netns_owned: false,
                network_mode: crate::store::NetworkMode::from(n.name.clone()),
                created: crate::store::now_rfc3339(),
                state: EndpointState::Ready,
                owner_pid: 0,
                owner_start: 0,
                pid: None,
                auto_remove: false,
                command: vec![],
                supervisor: None,
                owner,
            };
            let att = allocate(tx, &ep, &n, a.ipv4, a.ipv6, None, a.ifname.clone(), None)?;
            tx.put_endpoint(&ep)?;
            tx.put_attachment(&att)?;
            Ok((n, att))
        })
    }

    /// DEL as IPAM: release the address; the address-only network goes with its last one.
    pub fn cni_ipam_del(&mut self, network: &str, container_id: &str, ifname: &str) -> Result<()> {
        let owner = owner_of(container_id, ifname);
        self.store.write(|tx| -> Result<()> {
            for e in tx.endpoints()?.into_iter().filter(|e| e.owner == owner && e.network_mode.name() == network) {
                tx.delete_endpoint(&e.name)?;
            }
            // The network's host-access interface does not keep it.
            let shims = super::facts::host_shims(tx)?;
            let used = tx.attachments()?.iter().any(|a| a.network == network && !shims.contains(&a.endpoint));
            if !used
                && tx.network(network)?.is_some_and(|n| n.name == network && n.driver == crate::store::Driver::Ipam)
            {
                tx.delete_network(network)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint_name;

    #[test]
    fn attachment_names_differ_for_different_container_ids() {
        let names: std::collections::BTreeSet<String> = ["aaaaaaaaaaaa1", "aaaaaaaaaaaa2", "a.b", "a_b", "a/b", ""]
            .iter()
            .map(|id| endpoint_name(id, "eth0"))
            .collect();
        assert_eq!(names.len(), 6, "{names:?}");
        let n = endpoint_name("0123456789abcdef0123", "eth1");
        assert!(
            n.starts_with("cni-0123456789ab-")
                && n.ends_with("-eth1")
                && n.len() == "cni-0123456789ab-12345678-eth1".len(),
            "{n}"
        );
        assert_eq!(n, endpoint_name("0123456789abcdef0123", "eth1"), "stable");
        super::super::check_name("endpoint", &n).unwrap();
    }
}

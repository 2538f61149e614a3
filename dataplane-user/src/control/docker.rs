//! The engine side of Docker's remote network driver (`dataplane plugin docker`).
//!
//! Docker's model differs from the command line's in one way that matters: the driver
//! creates an endpoint's interface in dockerd's own network namespace and Docker moves it
//! into the container (renaming it `ethN`, setting its addresses and routes). So a Docker
//! endpoint's macvlan is made here, in the namespace this process runs in, with its
//! requested ifindex (which survives the move) and its anti-spoofing programs attached
//! before Docker ever brings it up; its link pins are keyed by that ifindex
//! ([`Pins::docker_endpoint_links`]), not by a namespace path.
//!
//! Networks are named `docker-<first 12 hex of Docker's id>` in the store (Docker does not
//! tell a driver the name the user chose). Both networks and endpoints carry
//! [`Owner::Docker`], so the command line shows them but refuses to remove them.

use std::net::IpAddr;

use super::{
    endpoint::{allocate, endpoint_info, endpoint_number, parent_up, wait_for_mac},
    facts::network_mtu,
    invalid,
    links::{locate_host_link, HERE},
    ControlError, Engine, NetworkCreate, Result, Undo,
};
use crate::{
    bpf::{self, Pins},
    nl::Nl,
    store::{Attachment, Endpoint, EndpointState, Network, Owner},
};

/// The store name of Docker network `id`.
pub fn network_name(id: &str) -> String {
    format!("docker-{}", &id[..12.min(id.len())])
}

/// The store name of Docker endpoint `id`.
pub fn endpoint_name(id: &str) -> String {
    format!("docker-{}", &id[..12.min(id.len())])
}

/// Name of a Docker endpoint's interface while it is in dataplane's namespace (before
/// Docker moves it into the container, and after Docker moves it back on leave).
pub fn host_ifname(ifindex: u32) -> String {
    format!("dp{ifindex:08x}")
}

/// What Docker needs to move the interface into the container.
#[derive(Debug, Clone)]
pub struct Join {
    pub src_name: String,
    pub gateway4: Option<IpAddr>,
    pub gateway6: Option<IpAddr>,
    pub internal: bool,
}

fn docker_id(o: &Owner) -> Option<&str> {
    match o {
        Owner::Docker { id, .. } => Some(id),
        _ => None,
    }
}

impl Engine {
    fn docker_network(&mut self, id: &str) -> Result<Option<Network>> {
        let nets = self.store.read(|tx| tx.networks())?;
        Ok(nets.into_iter().find(|n| docker_id(&n.owner) == Some(id)))
    }

    fn docker_endpoint(&mut self, id: &str) -> Result<Option<(Endpoint, Option<Attachment>)>> {
        let (eps, atts) = self.store.read(|tx| -> Result<_> { Ok((tx.endpoints()?, tx.attachments()?)) })?;
        Ok(eps.into_iter().find(|e| docker_id(&e.owner) == Some(id)).map(|e| {
            let a = atts.into_iter().find(|a| a.endpoint == e.name);
            (e, a)
        }))
    }

    /// CreateNetwork: `req.owner` must be `Owner::Docker` with Docker's network id.
    /// Repeating it for a network that exists is not an error (Docker retries).
    pub fn docker_network_create(&mut self, req: NetworkCreate) -> Result<Network> {
        let Some(id) = docker_id(&req.owner).map(str::to_string) else {
            return invalid("a Docker network needs Docker's network id");
        };
        if let Some(n) = self.docker_network(&id)? {
            return Ok(n);
        }
        self.network_create(NetworkCreate { name: network_name(&id), ..req })
    }

    /// DeleteNetwork; a network dataplane does not know is already gone.
    pub fn docker_network_delete(&mut self, id: &str) -> Result<Vec<String>> {
        match self.docker_network(id)? {
            Some(n) => {
                let owner = n.owner.clone();
                self.network_rm_by(&n.name, &owner)
            }
            None => Ok(Vec::new()),
        }
    }

    /// CreateEndpoint: allocate (Docker's addresses, checked against the store), push the
    /// admission entries, and make the interface with its programs in this namespace.
    pub fn docker_endpoint_create(
        &mut self,
        network_id: &str,
        endpoint_id: &str,
        ipv4: Option<IpAddr>,
        ipv6: Option<IpAddr>,
        mac: Option<&str>,
    ) -> Result<Attachment> {
        if let Some((_, Some(a))) = self.docker_endpoint(endpoint_id)? {
            // Docker repeats a call it did not see answered: the same request gets the same
            // endpoint; another request under the same id is a conflict, not a success.
            let asked_mac = mac.map(|m| m.parse::<crate::mac::Mac>().map_err(|e| ControlError::Invalid(e.to_string())));
            let differs = ipv4.is_some_and(|ip| a.ipv4 != Some(ip))
                || ipv6.is_some_and(|ip| a.ipv6 != Some(ip))
                || asked_mac.transpose()?.is_some_and(|m| m != a.mac);
            if differs {
                let show = |ip: Option<IpAddr>| ip.map_or("-".to_string(), |i| i.to_string());
                return invalid(format!(
                    "endpoint {endpoint_id} exists already with address {} / {} and MAC {}; asked again with {} / {} and MAC {}: delete it first",
                    show(a.ipv4),
                    show(a.ipv6),
                    a.mac,
                    show(ipv4),
                    show(ipv6),
                    mac.unwrap_or("-")
                ));
            }
            return Ok(a);
        }
        let n = self.docker_network(network_id)?.ok_or_else(|| {
            ControlError::Invalid(format!(
                "network {network_id} is not known to dataplane (was it created with -d dataplane?)"
            ))
        })?;
        if n.state != EndpointState::Ready {
            return Err(super::state_err(
                super::StateKind::Busy,
                format!("network {} is still being set up or removed; retry in a moment", n.name),
            ));
        }
        // An endpoint deleted just before may still hold the MAC this one gets (Docker's
        // IPAM hands out the freed address again, and MACs follow addresses): Docker
        // brings the interface up itself and would fail on it.
        super::background::wait_unlinks();
        let pins = self.pins.clone();
        let ep = Endpoint {
            id: crate::store::new_id(),
            name: endpoint_name(endpoint_id),
            netns: String::new(),
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
            owner: Owner::Docker { id: endpoint_id.to_string(), sandbox: None },
        };
        let a = self.store.write(|tx| -> Result<Attachment> {
            let mut a = allocate(tx, &ep, &n, ipv4, ipv6, mac, String::new(), None)?;
            a.ifname = host_ifname(a.ifindex);
            tx.put_endpoint(&ep)?;
            tx.put_attachment(&a)?;
            Ok(a)
        })?;
        let mut undo = Undo::new();
        let (pins2, a2, number) = (pins.clone(), a.clone(), endpoint_number(&ep.id));
        undo.push(format!("removing {} and its programs", a.ifname), move || {
            bpf::endpoints::forget_at(&pins2, a2.ifindex, number, pins2.docker_endpoint_links(a2.ifindex));
            // A new endpoint: whatever it counted goes with it.
            bpf::endpoints::remove_counters(&pins2, number);
            delete_host_link(a2.ifindex, None)
        });
        let (ep2, a2) = (ep.clone(), a.clone());
        self.complete_attach(Some((&n, &a)), ep, undo, Some("docker-endpoint:linked"), |_| {
            realise_here(&pins, &n, &ep2, &a2)
        })?;
        Ok(a)
    }

    /// Join: record the sandbox and say which interface Docker moves into it.
    pub fn docker_join(&mut self, endpoint_id: &str, sandbox: &str) -> Result<Join> {
        let (mut ep, a) = self
            .docker_endpoint(endpoint_id)?
            .ok_or_else(|| ControlError::Invalid(format!("endpoint {endpoint_id} is not known to dataplane")))?;
        let a = a.ok_or_else(|| ControlError::Invalid(format!("endpoint {endpoint_id} has no interface")))?;
        let n = self
            .store
            .read(|tx| tx.network(&a.network))?
            .ok_or_else(|| ControlError::Invalid(format!("network {} of endpoint {endpoint_id} is gone", a.network)))?;
        if Nl::here()?.link(&a.ifname)?.is_none() {
            return invalid(format!(
                "interface {} of endpoint {endpoint_id} is missing (already in another sandbox?)",
                a.ifname
            ));
        }
        ep.owner = Owner::Docker { id: endpoint_id.to_string(), sandbox: Some(sandbox.to_string()) };
        self.store.write(|tx| -> Result<()> { Ok(tx.put_endpoint(&ep)?) })?;
        let gw = |ip: Option<IpAddr>| {
            ip.and_then(|ip| n.pools.iter().find(|p| p.subnet.contains(ip)).and_then(|p| p.gateway))
        };
        Ok(Join { src_name: a.ifname.clone(), gateway4: gw(a.ipv4), gateway6: gw(a.ipv6), internal: n.internal })
    }

    /// ProgramExternalConnectivity (called once the interface is in the container): on
    /// kernels without tcx the programs are cls_bpf filters, which the kernel drops with
    /// the interface's qdiscs when Docker moves it; attach them again where it is now.
    pub fn docker_program(&mut self, endpoint_id: &str) -> Result<()> {
        let Some((ep, Some(a))) = self.docker_endpoint(endpoint_id)? else { return Ok(()) };
        let [eg, _] = self.pins.docker_endpoint_links(a.ifindex);
        if !bpf::tc::pin_is_program(&eg) {
            return Ok(());
        }
        reattach(&self.pins, &ep, &a)
    }

    /// Leave: Docker moves the interface back; forget the sandbox.
    pub fn docker_leave(&mut self, endpoint_id: &str) -> Result<()> {
        if let Some((mut ep, _)) = self.docker_endpoint(endpoint_id)? {
            ep.owner = Owner::Docker { id: endpoint_id.to_string(), sandbox: None };
            self.store.write(|tx| -> Result<()> { Ok(tx.put_endpoint(&ep)?) })?;
        }
        Ok(())
    }

    /// DeleteEndpoint: the interface, its programs, map entries and rows. An endpoint
    /// already gone is not an error.
    pub fn docker_endpoint_delete(&mut self, endpoint_id: &str) -> Result<Vec<String>> {
        match self.docker_endpoint(endpoint_id)? {
            Some((ep, _)) => self.remove_endpoint(&ep.name, false, |_| Ok(())),
            None => Ok(Vec::new()),
        }
    }
}

/// Make a Docker endpoint's macvlan in this namespace, down, with its MAC and requested
/// ifindex, its identity entry and its anti-spoofing program (Docker brings it up in the
/// container).
pub(crate) fn realise_here(pins: &Pins, n: &Network, ep: &Endpoint, a: &Attachment) -> Result<()> {
    let parent = n.parent.as_deref().unwrap_or_default();
    let host = Nl::here()?;
    let p = parent_up(&host, n)?;
    let mac = a.mac;
    let mode = n.macvlan_mode.unwrap_or_default();
    wait_for_mac(|| host.add_macvlan(&a.ifname, p.index, mode, mac.0, None, Some(a.ifindex), network_mtu(n))).map_err(
        |e| {
            if e.is(libc::EADDRINUSE) || e.is(libc::EEXIST) {
                ControlError::Invalid(format!(
                    "cannot create {} on {parent}: {e} (its MAC {} or its requested ifindex {} is taken)",
                    a.ifname, a.mac, a.ifindex
                ))
            } else {
                e.into()
            }
        },
    )?;
    bpf::endpoints::reset_slot(pins, a.ifindex);
    bpf::endpoints::insert(pins, a.ifindex, endpoint_info(ep, a)?)?;
    let cls_only = super::facts::keeps_filters(n);
    bpf::endpoints::attach_at(pins, None, &a.ifname, pins.docker_endpoint_links(a.ifindex), cls_only)?;
    Ok(())
}

/// Delete the interface with `ifindex` from this namespace, or from `sandbox` if Docker
/// left it there; absent everywhere is fine.
pub(crate) fn delete_host_link(ifindex: u32, sandbox: Option<&str>) -> std::result::Result<(), String> {
    match locate_host_link(ifindex, sandbox)? {
        Some((nl, _, l)) => nl.del_link(ifindex).map_err(|e| format!("deleting {}: {e}", l.name)),
        None => Ok(()),
    }
}

/// Re-attach the programs of a Docker endpoint's interface, wherever it is now (this
/// namespace, or the container's).
pub(crate) fn reattach(pins: &Pins, ep: &Endpoint, a: &Attachment) -> Result<()> {
    let paths = pins.docker_endpoint_links(a.ifindex);
    bpf::endpoints::detach_at(paths.clone());
    let sandbox = match &ep.owner {
        Owner::Docker { sandbox, .. } => sandbox.as_deref(),
        _ => None,
    };
    match locate_host_link(a.ifindex, sandbox).map_err(super::ControlError::Internal)? {
        Some((_, path, l)) => {
            let netns = (path != HERE).then_some(path.as_str());
            Ok(bpf::endpoints::attach_at(pins, netns, &l.name, paths, false)?)
        }
        None => invalid(format!("interface {} (ifindex {}) of endpoint {} is gone", a.ifname, a.ifindex, ep.name)),
    }
}

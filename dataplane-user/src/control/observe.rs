//! What the front ends read about the kernel side: counters, conflicts, attachments.
//! They ask the engine; only the engine reads the maps.

use std::{collections::BTreeMap, path::Path};

use dataplane_common::{Conflict, EndpointCounters, Reason};

use super::{Engine, Result};
use crate::{
    bpf::{self, parent::LinkStatus},
    netns, nl,
    store::Owner,
};

/// One parent counter: frames and bytes a parent program decided on for one reason.
#[derive(Clone, Debug)]
pub struct ParentCounter {
    /// The interface's name (`#IFINDEX` if it has none here any more).
    pub iface: String,
    pub ifindex: u32,
    pub reason: Reason,
    pub packets: u64,
    pub bytes: u64,
}

impl Engine {
    /// The parent programs' counters (none before any program was attached).
    pub fn parent_counters(&self) -> Result<Vec<ParentCounter>> {
        if !self.pins.counters_map().exists() {
            return Ok(Vec::new());
        }
        parent_counters(&self.pins)
    }

    /// Per-endpoint counters, keyed by [`super::endpoint_number`]: tx and spoofed frames
    /// from the maps; rx from the maps (interfaces gone, and interfaces an older version
    /// put its rx-counting program on) plus the kernel's own count of what each live
    /// interface received, read in the namespace it is in.
    pub fn endpoint_counters(&mut self) -> Result<BTreeMap<u32, EndpointCounters>> {
        let mut out = bpf::endpoints::counters(&self.pins)?;
        // Each namespace's links listed once (a pod's endpoints share one); None: gone.
        // Per namespace: (packets, bytes) received by ifindex, None if it could not be read.
        type RxByIfindex = Option<BTreeMap<u32, (u64, u64)>>;
        let mut by_netns: BTreeMap<String, RxByIfindex> = BTreeMap::new();
        for (ep, atts) in self.endpoints()? {
            for a in &atts {
                let [_, ingress] = if ep.owner.is_docker() {
                    self.pins.docker_endpoint_links(a.ifindex)
                } else {
                    bpf::endpoints::link_pins(&self.pins, &ep.netns, &a.ifname)
                };
                if !bpf::endpoints::rx_counted_by_kernel(&ingress) {
                    continue;
                }
                let rx = match &ep.owner {
                    // Here before Docker moves it, in the sandbox after (as Docker leaves it).
                    Owner::Docker { sandbox, .. } => super::links::locate_host_link(a.ifindex, sandbox.as_deref())
                        .ok()
                        .flatten()
                        .and_then(|(.., l)| l.rx),
                    _ => by_netns
                        .entry(ep.netns.clone())
                        .or_insert_with(|| nl::rx_by_link_in(Path::new(&ep.netns)).ok())
                        .as_ref()
                        .and_then(|links| links.get(&a.ifindex).copied()),
                };
                if let Some((packets, bytes)) = rx {
                    let c = out.entry(super::endpoint_number(&ep.id)).or_default();
                    c.rx_packets += packets;
                    c.rx_bytes += bytes;
                }
            }
        }
        Ok(out)
    }

    /// MAC and address conflicts the parents' programs saw, keyed by endpoint number.
    pub fn conflicts(&self) -> BTreeMap<u32, Conflict> {
        bpf::admit::conflicts(&self.pins)
    }

    /// Every program attachment of this instance, as the kernel reports it.
    pub fn program_attachments(&self) -> Vec<LinkStatus> {
        super::programs::attachments(&self.pins)
    }
}

/// The parent counters under a bpffs dir, without a store (`dataplane bpf counters`); an
/// error if no program made the maps there yet.
pub fn parent_counters(pins: &bpf::Pins) -> Result<Vec<ParentCounter>> {
    Ok(bpf::counters::read(pins)?
        .into_iter()
        .map(|((ifindex, reason), c)| ParentCounter {
            iface: netns::ifname(ifindex).unwrap_or_else(|| format!("#{ifindex}")),
            ifindex,
            reason,
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect())
}

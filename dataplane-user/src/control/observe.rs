//! What the front ends read about the kernel side: counters, conflicts, attachments.
//! They ask the engine; only the engine reads the maps.

use std::{collections::BTreeMap, path::Path};

use dataplane_common::{Conflict, EndpointCounters, Reason};

use super::{Engine, Result};
use crate::{
    bpf::{self, parent::LinkStatus},
    netns,
    nl::Nl,
    store::{Attachment, Owner},
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
        for (ep, atts) in self.endpoints()? {
            let ingress_pin = |a: &Attachment| {
                let [_, ingress] = if ep.owner.is_docker() {
                    self.pins.docker_endpoint_links(a.ifindex)
                } else {
                    bpf::endpoints::link_pins(&self.pins, &ep.netns, &a.ifname)
                };
                ingress
            };
            let counted: Vec<u32> = atts
                .iter()
                .filter(|a| bpf::endpoints::rx_counted_by_kernel(&ingress_pin(a)))
                .map(|a| a.ifindex)
                .collect();
            if counted.is_empty() {
                continue;
            }
            // A Docker endpoint's interface is in its sandbox once joined, here before.
            let netns = match &ep.owner {
                Owner::Docker { sandbox, .. } => sandbox.clone().unwrap_or_default(),
                _ => ep.netns.clone(),
            };
            let nl = if netns.is_empty() { Nl::here() } else { Nl::in_netns(Path::new(&netns)) };
            // A namespace gone (or going) has no interfaces left to count.
            let Ok(links) = nl.and_then(|nl| nl.links()) else { continue };
            let c = out.entry(super::endpoint_number(&ep.id)).or_default();
            for (packets, bytes) in links.iter().filter(|l| counted.contains(&l.index)).filter_map(|l| l.rx) {
                c.rx_packets += packets;
                c.rx_bytes += bytes;
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

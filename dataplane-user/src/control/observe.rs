//! What the front ends read about the kernel side: counters, conflicts, attachments.
//! They ask the engine; only the engine reads the maps.

use std::collections::BTreeMap;

use dataplane_common::{Conflict, EndpointCounters, Reason};

use super::{Engine, Result};
use crate::{
    bpf::{self, parent::LinkStatus},
    netns,
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

    /// Per-endpoint counters, keyed by [`super::endpoint_number`].
    pub fn endpoint_counters(&self) -> Result<BTreeMap<u32, EndpointCounters>> {
        Ok(bpf::endpoints::counters(&self.pins)?)
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

//! Reading the per-CPU counters and summing them.

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray};
use dataplane_common::{
    maps::{counter_slot, COUNTER_IFINDEX_SLOTS},
    Counter, Reason,
};

use super::{object::BpfError, pins::Pins};

/// Sum over CPUs of every non-zero (ifindex, reason) counter of the interfaces of the
/// calling thread's namespace (slots are ifindex modulo 1024; parents have small ones).
pub fn read(pins: &Pins) -> Result<BTreeMap<(u32, Reason), Counter>, BpfError> {
    let m: PerCpuArray<MapData, Counter> = super::open_map(pins, dataplane_common::maps::COUNTERS_MAP)?;
    let err = |e: aya::maps::MapError| BpfError::Map { path: pins.counters_map(), source: e.into() };
    let mut out = BTreeMap::new();
    // Interfaces share a slot when their ifindexes are equal modulo the slot count; read
    // each slot once (dedup_by_key would only drop adjacent duplicates).
    let mut seen = std::collections::BTreeSet::new();
    let ifindexes: Vec<u32> =
        crate::sys::interfaces().into_iter().filter(|i| seen.insert(*i % COUNTER_IFINDEX_SLOTS)).collect();
    for ifindex in ifindexes {
        for reason in Reason::ALL {
            let per_cpu = m.get(&counter_slot(ifindex, reason), 0).map_err(err)?;
            let mut sum = Counter::default();
            for c in per_cpu.iter() {
                sum.packets += c.packets;
                sum.bytes += c.bytes;
            }
            if sum.packets != 0 {
                out.insert((ifindex, reason), sum);
            }
        }
    }
    Ok(out)
}

//! Reading the per-CPU counters and summing them.

use std::collections::BTreeMap;

use aya::maps::{Map, MapData, PerCpuHashMap};
use dataplane_common::{Counter, CounterKey, Reason};

use super::{object::BpfError, pins::Pins};

/// Sum over CPUs of every (ifindex, reason) counter.
pub fn read(pins: &Pins) -> Result<BTreeMap<(u32, Reason), Counter>, BpfError> {
    let path = pins.counters_map();
    if !path.exists() {
        return Err(BpfError::NoMaps { dir: pins.maps_dir() });
    }
    let err = |e: &dyn std::fmt::Display| BpfError::Map { path: path.clone(), detail: e.to_string() };
    let data = MapData::from_pin(&path).map_err(|e| err(&e))?;
    let map = Map::from_map_data(data).map_err(|e| err(&e))?;
    let m: PerCpuHashMap<MapData, CounterKey, Counter> = PerCpuHashMap::try_from(map).map_err(|e| err(&e))?;
    let mut out = BTreeMap::new();
    for item in m.iter() {
        let (k, per_cpu) = item.map_err(|e| err(&e))?;
        let Some(reason) = Reason::from_u32(k.reason) else { continue };
        let mut sum = Counter::default();
        for c in per_cpu.iter() {
            sum.packets += c.packets;
            sum.bytes += c.bytes;
        }
        out.insert((k.ifindex, reason), sum);
    }
    Ok(out)
}

//! The kernel side, seen from user space: the embedded object, the pin layout, attaching
//! programs through pinned links, and the maps.

pub mod admit;
pub mod counters;
pub mod endpoints;
pub mod migrate;
pub mod object;
pub mod parent;
pub mod pins;
pub mod reload;
pub mod tc;
pub mod vlan_maps;

pub use object::{load_object, BpfError};
pub use parent::{attach_parent, detach_parent, list_attachments, AttachMode, Attachment};
pub use pins::Pins;

/// The pinned hash map `name` of this instance (`BpfError::NoMaps` if nothing is pinned).
pub(crate) fn open_hash<K: aya::Pod, V: aya::Pod>(
    pins: &Pins,
    name: &str,
) -> Result<aya::maps::HashMap<aya::maps::MapData, K, V>, BpfError> {
    open_map(pins, name)
}

/// The pinned map `name` of this instance as map type `M` (hash, per-CPU hash, per-CPU
/// array, ...); NoMaps if no program made it yet.
pub(crate) fn open_map<M>(pins: &Pins, name: &str) -> Result<M, BpfError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    use aya::maps::{Map, MapData};
    let path = pins.map(name);
    if !path.exists() {
        return Err(BpfError::NoMaps { dir: pins.maps_dir() });
    }
    let err = |e: aya::maps::MapError| BpfError::Map { path: path.clone(), source: e.into() };
    let data = MapData::from_pin(&path).map_err(err)?;
    M::try_from(Map::from_map_data(data).map_err(err)?).map_err(err)
}

/// Every entry of the hash map pinned at `pin` in a few bpf(2) calls, or None (the
/// caller iterates) where the kernel has no batch lookups or the pin is not a map.
pub(crate) fn hash_entries<K: aya::Pod, V: aya::Pod>(pin: &std::path::Path) -> Option<Vec<(K, V)>> {
    use std::os::fd::AsFd;
    let info = aya::maps::MapInfo::from_pin(pin).ok()?;
    let (k, v) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
    // The kernel writes entries of the map's sizes, so they must be ours.
    if (info.key_size() as usize, info.value_size() as usize) != (k, v) {
        return None;
    }
    let fd = info.fd().ok()?;
    let raw = crate::sys::bpf_hash_dump(fd.as_fd(), k, v).ok()?;
    // SAFETY: K and V are Pod (plain data, any bytes valid) and each slice has their size.
    Some(
        raw.iter()
            .map(|(k, v)| unsafe {
                (std::ptr::read_unaligned(k.as_ptr().cast::<K>()), std::ptr::read_unaligned(v.as_ptr().cast::<V>()))
            })
            .collect(),
    )
}

/// Create (or reuse) every pinned map without attaching anything.
pub fn ensure_maps(pins: &Pins) -> Result<(), BpfError> {
    load_object(&pins.maps_dir()).map(drop)
}

/// Every map the programs share, by pin name.
pub const MAP_NAMES: [&str; 11] = [
    dataplane_common::maps::ADMIT_MAP,
    dataplane_common::maps::COUNTERS_MAP,
    dataplane_common::maps::VLAN_DEVS_MAP,
    dataplane_common::maps::VLAN_PEERS_MAP,
    dataplane_common::maps::VLAN_XDP_MAP,
    dataplane_common::maps::ENDPOINTS_MAP,
    dataplane_common::maps::EP_COUNTERS_MAP,
    dataplane_common::maps::EP_SLOTS_MAP,
    dataplane_common::maps::OUR_IPS_MAP,
    dataplane_common::maps::OUR_IP6S_MAP,
    dataplane_common::maps::CONFLICTS_MAP,
];

/// Map pins that are missing while programs are linked (removed by hand), re-pinned from
/// the live maps the programs still use: their entries are kept. Returns the names
/// re-pinned, and the names no live program holds (made afresh by the caller).
pub fn recover_map_pins(pins: &Pins) -> Result<(Vec<&'static str>, Vec<&'static str>), BpfError> {
    use aya::programs::links::{FdLink, PinnedLink};
    let link_pins = parent::list_link_pins(pins);
    let mut missing: Vec<&'static str> = MAP_NAMES.iter().copied().filter(|m| !pins.map(m).exists()).collect();
    if link_pins.is_empty() || missing.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut prog_ids = std::collections::BTreeSet::new();
    for (_, pin) in &link_pins {
        if let Ok(p) = PinnedLink::from_pin(pin) {
            let fd: FdLink = p.into();
            if let Ok(info) = fd.info() {
                prog_ids.insert(info.program_id());
            }
        }
    }
    let mut recovered = Vec::new();
    for prog in aya::programs::loaded_programs().flatten().filter(|p| prog_ids.contains(&p.id())) {
        for id in prog.map_ids().ok().flatten().unwrap_or_default() {
            let Ok(map) = aya::maps::MapData::from_id(id) else { continue };
            let Some(name) = map.info().ok().and_then(|i| i.name_as_str().map(str::to_string)) else { continue };
            if let Some(pos) = missing.iter().position(|m| *m == name) {
                let path = pins.map(missing[pos]);
                crate::bpffs::create_private(&pins.maps_dir())?;
                map.pin(&path).map_err(|e| BpfError::Pin { path: path.clone(), source: e.into() })?;
                recovered.push(missing.remove(pos));
            }
        }
    }
    Ok((recovered, missing))
}

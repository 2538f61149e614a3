//! The two maps that make an eBPF VLAN device: trunk+VID -> device, device -> trunk+VID.

use aya::maps::HashMap;
use dataplane_common::{
    maps::{VLAN_DEVS_MAP, VLAN_DEV_XDP, VLAN_PEERS_MAP},
    VlanKey, VlanTrunk,
};

use super::{object::BpfError, open_hash as open, pins::Pins};

/// Steer (trunk, `outer` S-tag VID or 0, `vid`) to `dev` (0: a kernel VLAN device, left
/// to the kernel's demux; else the hidden end's ifindex, with `VLAN_DEV_XDP` when XDP
/// may redirect into the device).
pub fn insert(pins: &Pins, trunk_ifindex: u32, outer: u16, vid: u16, dev: u32) -> Result<(), BpfError> {
    let mut devs: HashMap<_, VlanKey, u32> = open(pins, VLAN_DEVS_MAP)?;
    let mut peers: HashMap<_, u32, VlanTrunk> = open(pins, VLAN_PEERS_MAP)?;
    let e = |d: aya::maps::MapError| BpfError::Map { path: pins.maps_dir(), source: d.into() };
    let dev_ifindex = dev & !VLAN_DEV_XDP;
    peers.insert(dev_ifindex, VlanTrunk { trunk_ifindex, vid, outer }, 0).map_err(e)?;
    devs.insert(VlanKey { trunk_ifindex, vid, outer }, dev, 0).map_err(e)?;
    Ok(())
}

pub fn remove(pins: &Pins, trunk_ifindex: u32, outer: u16, vid: u16, dev: Option<u32>) -> Result<(), BpfError> {
    if !pins.map(VLAN_DEVS_MAP).exists() {
        return Ok(());
    }
    let mut devs: HashMap<_, VlanKey, u32> = open(pins, VLAN_DEVS_MAP)?;
    let mut peers: HashMap<_, u32, VlanTrunk> = open(pins, VLAN_PEERS_MAP)?;
    let key = VlanKey { trunk_ifindex, vid, outer };
    let dev = dev.or_else(|| devs.get(&key, 0).ok());
    let _ = devs.remove(&key);
    if let Some(d) = dev {
        let _ = peers.remove(&(d & !VLAN_DEV_XDP));
    }
    Ok(())
}

/// Every (trunk, vid) with a VLAN device, and its map value.
pub fn list(pins: &Pins) -> Result<Vec<(VlanKey, u32)>, BpfError> {
    if !pins.map(VLAN_DEVS_MAP).exists() {
        return Ok(Vec::new());
    }
    let devs: HashMap<_, VlanKey, u32> = open(pins, VLAN_DEVS_MAP)?;
    Ok(devs.iter().flatten().collect())
}

//! The two maps that make an eBPF VLAN device: trunk+VID -> device, device -> trunk+VID.

use aya::maps::{Array, HashMap, MapData};
use dataplane_common::{
    maps::{vlan_xdp_entry, VLAN_DEVS_MAP, VLAN_PEERS_MAP, VLAN_XDP_ENTRIES, VLAN_XDP_MAP},
    VlanKey, VlanTrunk,
};

use super::{object::BpfError, open_hash as open, pins::Pins};

/// Steer (trunk, `outer` S-tag VID or 0, `vid`) to `dev_ifindex` (0: a kernel VLAN device,
/// left to the kernel's demux).
pub fn insert(pins: &Pins, trunk_ifindex: u32, outer: u16, vid: u16, dev_ifindex: u32) -> Result<(), BpfError> {
    let mut devs: HashMap<_, VlanKey, u32> = open(pins, VLAN_DEVS_MAP)?;
    let mut peers: HashMap<_, u32, VlanTrunk> = open(pins, VLAN_PEERS_MAP)?;
    let e = |d: aya::maps::MapError| BpfError::Map { path: pins.maps_dir(), source: d.into() };
    peers.insert(dev_ifindex, VlanTrunk { trunk_ifindex, vid, outer }, 0).map_err(e)?;
    devs.insert(VlanKey { trunk_ifindex, vid, outer }, dev_ifindex, 0).map_err(e)?;
    Ok(())
}

fn open_xdp(pins: &Pins) -> Result<Array<MapData, u64>, BpfError> {
    super::open_map(pins, VLAN_XDP_MAP)
}

/// Let the trunk's XDP program steer VLAN `vid` of `trunk_ifindex` into the eBPF VLAN
/// device whose hidden end is `dev_ifindex` (its visible end must carry `dp_vlan_rx`).
/// False, and nothing written, when another trunk's device holds the VID: that one keeps
/// the fast path and this one is steered by tc.
pub fn set_xdp(pins: &Pins, trunk_ifindex: u32, vid: u16, dev_ifindex: u32) -> Result<bool, BpfError> {
    let mut a = open_xdp(pins)?;
    let e = |d: aya::maps::MapError| BpfError::Map { path: pins.map(VLAN_XDP_MAP), source: d.into() };
    let old = a.get(&u32::from(vid), 0).map_err(e)?;
    if old != 0 && (old >> 32) as u32 != trunk_ifindex {
        return Ok(false);
    }
    a.set(u32::from(vid), vlan_xdp_entry(trunk_ifindex, dev_ifindex), 0).map_err(e)?;
    Ok(true)
}

/// Stop steering `vid` of `trunk_ifindex` in XDP (the tc program takes over), if it was.
pub fn clear_xdp(pins: &Pins, trunk_ifindex: u32, vid: u16) -> Result<(), BpfError> {
    if !pins.map(VLAN_XDP_MAP).exists() {
        return Ok(());
    }
    let mut a = open_xdp(pins)?;
    let e = |d: aya::maps::MapError| BpfError::Map { path: pins.map(VLAN_XDP_MAP), source: d.into() };
    if (a.get(&u32::from(vid), 0).map_err(e)? >> 32) as u32 == trunk_ifindex {
        a.set(u32::from(vid), 0, 0).map_err(e)?;
    }
    Ok(())
}

/// Every VLAN steered in XDP: (VID, trunk ifindex, hidden end ifindex). Read through a
/// memory mapping of the array (BPF_F_MMAPABLE): every reconcile pass lists it, and 4096
/// lookups by system call would cost milliseconds per command.
pub fn xdp_entries(pins: &Pins) -> Result<Vec<(u16, u32, u32)>, BpfError> {
    use std::os::fd::{AsFd, AsRawFd};
    let path = pins.map(VLAN_XDP_MAP);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let e = |d: String| BpfError::Map { path: path.clone(), source: d.into() };
    let map = MapData::from_pin(&path).map_err(|x| e(x.to_string()))?;
    let len = VLAN_XDP_ENTRIES as usize * 8;
    // SAFETY: a read-only shared mapping of the whole array, unmapped below; the kernel
    // checks the length against the map's memory and refuses a map that is not mmapable.
    let addr = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, map.fd().as_fd().as_raw_fd(), 0)
    };
    if addr == libc::MAP_FAILED {
        return Err(e(format!("mapping it into memory: {}", std::io::Error::last_os_error())));
    }
    let mut out = Vec::new();
    for vid in 0..VLAN_XDP_ENTRIES as usize {
        // SAFETY: inside the mapping, 8-aligned (page-aligned start, 8-byte values); the
        // programs only read it and user space writes whole values, so a volatile read
        // sees one value or the other.
        let v = unsafe { std::ptr::read_volatile((addr as *const u64).add(vid)) };
        if v != 0 {
            out.push((vid as u16, (v >> 32) as u32, v as u32));
        }
    }
    // SAFETY: the mapping made above, unmapped once.
    unsafe { libc::munmap(addr, len) };
    Ok(out)
}

pub fn remove(pins: &Pins, trunk_ifindex: u32, outer: u16, vid: u16, dev_ifindex: Option<u32>) -> Result<(), BpfError> {
    if !pins.map(VLAN_DEVS_MAP).exists() {
        return Ok(());
    }
    let mut devs: HashMap<_, VlanKey, u32> = open(pins, VLAN_DEVS_MAP)?;
    let mut peers: HashMap<_, u32, VlanTrunk> = open(pins, VLAN_PEERS_MAP)?;
    let key = VlanKey { trunk_ifindex, vid, outer };
    let dev = dev_ifindex.or_else(|| devs.get(&key, 0).ok());
    if outer == 0 {
        clear_xdp(pins, trunk_ifindex, vid)?;
    }
    let _ = devs.remove(&key);
    if let Some(d) = dev {
        let _ = peers.remove(&d);
    }
    Ok(())
}

/// Every (trunk, vid) with a VLAN device: its hidden end's ifindex, 0 for a kernel device.
pub fn list(pins: &Pins) -> Result<Vec<(VlanKey, u32)>, BpfError> {
    if !pins.map(VLAN_DEVS_MAP).exists() {
        return Ok(Vec::new());
    }
    let devs: HashMap<_, VlanKey, u32> = open(pins, VLAN_DEVS_MAP)?;
    Ok(devs.iter().flatten().collect())
}

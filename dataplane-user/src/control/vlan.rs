//! 802.1Q subinterfaces for trunk parents (`eth0.50`): the kernel's VLAN device where the
//! kernel has 8021q, else an eBPF-steered VLAN device made of a veth pair.
//!
//! eBPF VLAN device: `IFACE.VID` is one end of a veth pair; the other end (`dpvVID-IDX`,
//! hidden) is where it meets the trunk. Trunk tcx ingress (`dp_trunk_in`) pops the tag of
//! VID frames and redirects them out of the hidden end, so they arrive on `IFACE.VID`;
//! whatever is sent out of `IFACE.VID` arrives at the hidden end, whose tcx ingress
//! (`dp_vlan_out`) pushes the tag and redirects out of the trunk. Macvlans use `IFACE.VID`
//! as their parent, so each VLAN stays its own bridge domain, as with a kernel device.

use dataplane_common::maps::TC_VLAN_OUT_PROG;

use super::{network::TrunkParent, ControlError, Result};
use crate::{
    bpf::{self, Pins},
    nl::Nl,
    store::{VlanKind, VlanParent},
};

/// Name of the hidden end of the eBPF VLAN device for (trunk, [outer,] vid).
pub fn hidden_peer(trunk_index: u32, outer: Option<u16>, vid: u16) -> String {
    match outer {
        // At most 15 characters: three hex digits per VID.
        Some(o) => format!("dpq{o:03x}{vid:03x}-{trunk_index}"),
        None => format!("dpv{vid}-{trunk_index}"),
    }
}

/// Create `name` as VLAN `tp.vid` of `tp.trunk` (inside S-tag `tp.outer` for QinQ). Undoes
/// its own partial work on failure.
pub fn create(nl: &Nl, pins: &Pins, tp: &TrunkParent, name: &str) -> Result<VlanParent> {
    let (trunk, vid, outer) = (tp.trunk.as_str(), tp.vid, tp.outer);
    let t = nl.link(trunk)?.ok_or_else(|| {
        ControlError::Invalid(format!(
            "parent {name}: trunk interface {trunk} does not exist; create it first or pick another parent"
        ))
    })?;
    // Kernel devices: for QinQ first the S-tag device TRUNK.OUTER (802.1ad; shared by the
    // QinQ networks of that S-tag, made unless it exists), then NAME on top of it.
    let mut outer_created = false;
    let lower = match outer {
        None => Ok(t.index),
        Some(o) => {
            let sname = format!("{trunk}.{o}");
            match nl.link(&sname)? {
                Some(l) => Ok(l.index),
                None => match nl.add_vlan_8021ad(&sname, t.index, o) {
                    Ok(()) => {
                        outer_created = true;
                        let l = nl.link(&sname)?.ok_or_else(|| {
                            ControlError::Invalid(format!("VLAN device {sname} vanished after creation"))
                        })?;
                        nl.set_up(l.index)?;
                        Ok(l.index)
                    }
                    Err(e) => Err(e),
                },
            }
        }
    };
    let undo_outer = |nl: &Nl| {
        if outer_created {
            if let Ok(Some(l)) = nl.link(&format!("{trunk}.{}", outer.unwrap_or(0))) {
                let _ = nl.del_link(l.index);
            }
        }
    };
    match lower.and_then(|lower| nl.add_vlan(name, lower, vid)) {
        Ok(()) => {
            let made = (|| -> Result<()> {
                let dev = nl
                    .link(name)?
                    .ok_or_else(|| ControlError::Invalid(format!("VLAN device {name} vanished after creation")))?;
                if let Err(e) = nl.set_up(dev.index) {
                    let _ = nl.del_link(dev.index);
                    return Err(e.into());
                }
                // The trunk's tc program lets these tags through to the kernel's VLAN demux.
                if let Err(e) = bpf::ensure_maps(pins)
                    .and_then(|_| bpf::vlan_maps::insert(pins, t.index, outer.unwrap_or(0), vid, 0))
                {
                    let _ = nl.del_link(dev.index);
                    return Err(e.into());
                }
                Ok(())
            })();
            if let Err(e) = made {
                undo_outer(nl);
                return Err(e);
            }
            return Ok(VlanParent {
                trunk: trunk.into(),
                vid,
                created: true,
                kind: VlanKind::Kernel,
                peer: None,
                outer,
                outer_created,
            });
        }
        // No 8021q in this kernel ("Unknown device type"): build the device in eBPF.
        Err(e) if e.is(libc::EOPNOTSUPP) => undo_outer(nl),
        Err(e) => {
            undo_outer(nl);
            return Err(e.into());
        }
    }
    let peer = hidden_peer(t.index, outer, vid);
    nl.add_veth(name, &peer)?;
    super::fault("network-create:vlan-veth");
    let result = (|| -> Result<()> {
        let dev = nl.link(name)?.ok_or_else(|| ControlError::Invalid(format!("{name} vanished after creation")))?;
        let hidden = nl.link(&peer)?.ok_or_else(|| ControlError::Invalid(format!("{peer} vanished after creation")))?;
        nl.set_up(hidden.index)?;
        nl.set_up(dev.index)?;
        if !t.up {
            nl.set_up(t.index)?;
        }
        bpf::ensure_maps(pins)?;
        bpf::vlan_maps::insert(pins, t.index, outer.unwrap_or(0), vid, hidden.index)?;
        bpf::tc::attach_ingress(pins, None, &peer, TC_VLAN_OUT_PROG)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = bpf::tc::detach_ingress(pins, None, &peer);
        let _ = bpf::vlan_maps::remove(pins, t.index, outer.unwrap_or(0), vid, None);
        if let Ok(Some(dev)) = nl.link(name) {
            let _ = nl.del_link(dev.index);
        }
        bpf::parent::remove_if_unused(pins).ok();
        return Err(e);
    }
    Ok(VlanParent {
        trunk: trunk.into(),
        vid,
        created: true,
        kind: VlanKind::Ebpf,
        peer: Some(peer),
        outer,
        outer_created: false,
    })
}

/// Let frames of an existing (not ours) VLAN device through the trunk's tc program.
pub fn register_existing(nl: &Nl, pins: &Pins, v: &VlanParent) -> Result<()> {
    let t = nl
        .link(&v.trunk)?
        .ok_or_else(|| ControlError::Invalid(format!("trunk interface {} does not exist", v.trunk)))?;
    bpf::ensure_maps(pins)?;
    bpf::vlan_maps::insert(pins, t.index, v.outer.unwrap_or(0), v.vid, 0)?;
    Ok(())
}

/// Remove a VLAN device (if dataplane created it) and its steering entry. Continues past
/// failures; returns them.
pub fn remove(nl: &Nl, pins: &Pins, name: &str, v: &VlanParent) -> Vec<String> {
    let mut errs = Vec::new();
    let trunk_index = nl.link(&v.trunk).ok().flatten().map(|l| l.index);
    if let Some(ti) = trunk_index {
        if let Err(e) = bpf::vlan_maps::remove(pins, ti, v.outer.unwrap_or(0), v.vid, None) {
            errs.push(e.to_string());
        }
    }
    if !v.created {
        return errs;
    }
    match nl.link(name) {
        Ok(Some(dev)) => {
            if let Err(e) = nl.del_link(dev.index) {
                errs.push(e.to_string());
            }
        }
        Ok(None) => {}
        Err(e) => errs.push(e.to_string()),
    }
    if let Some(e) = remove_outer_if_unused(nl, v) {
        errs.push(e);
    }
    // The S-tag device of QinQ kernel devices, if we made it (the caller removes the VLAN
    // only with its last network; other QinQ networks of the same S-tag keep theirs:
    // `remove_outer_if_unused`).
    if v.kind == VlanKind::Ebpf {
        if let Some(peer) = &v.peer {
            if let Err(e) = bpf::tc::detach_ingress(pins, None, peer) {
                errs.push(e.to_string());
            }
            // Gone with its pair end above, unless that end was renamed or never made.
            if let Ok(Some(p)) = nl.link(peer) {
                if let Err(e) = nl.del_link(p.index) {
                    errs.push(e.to_string());
                }
            }
        }
    }
    errs
}

/// Remove the S-tag device `TRUNK.OUTER` that dataplane made for QinQ network `v`, unless
/// another VLAN device still sits on it.
pub fn remove_outer_if_unused(nl: &Nl, v: &VlanParent) -> Option<String> {
    let o = v.outer.filter(|_| v.outer_created)?;
    let sname = format!("{}.{o}", v.trunk);
    let l = nl.link(&sname).ok()??;
    if nl.links().ok()?.iter().any(|x| x.link == Some(l.index)) {
        return None;
    }
    nl.del_link(l.index).err().map(|e| e.to_string())
}

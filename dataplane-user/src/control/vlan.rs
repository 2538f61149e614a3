//! 802.1Q subinterfaces for trunk parents (`eth0.50`): the kernel's VLAN device where the
//! kernel has 8021q, else an eBPF-steered VLAN device made of a veth pair.
//!
//! eBPF VLAN device: `IFACE.VID` is one end of a veth pair; the other end (`dpvVID-IDX`,
//! hidden) is where it meets the trunk. Trunk tcx ingress (`dp_trunk_in`) pops the tag of
//! VID frames and redirects them out of the hidden end, so they arrive on `IFACE.VID`;
//! whatever is sent out of `IFACE.VID` arrives at the hidden end, whose tcx ingress
//! (`dp_vlan_out`) pushes the tag and redirects out of the trunk. Macvlans use `IFACE.VID`
//! as their parent, so each VLAN stays its own bridge domain, as with a kernel device.
//!
//! Fast path: the trunk's XDP program (`dp_parent`) pops an in-band 802.1Q tag of an
//! admitted frame itself and redirects the frame out of the hidden end, before any skb is
//! built for the trunk; the veth hands it to `IFACE.VID`'s NAPI, which exists because
//! `IFACE.VID` carries a pass-all XDP program (`dp_vlan_rx`). An entry in DP_VLAN_XDP
//! (by VID, written once that program is there) is what lets XDP steer the VLAN. Tags XDP
//! cannot see (a NIC's VLAN offload), QinQ stacks and a second trunk's device of the same
//! VID take the tc path above.

use dataplane_common::maps::TC_VLAN_OUT_PROG;

use super::{facts::TrunkParent, ControlError, Result, Undo};
use crate::{
    bpf::{self, Pins},
    nl::{LinkInfo, Nl},
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

/// Create `name` as VLAN `tp.vid` of `tp.trunk` (inside S-tag `tp.outer` for QinQ): the
/// kernel's device where the kernel has 8021q, else the eBPF one. Undoes its own partial
/// work on failure.
pub fn create(nl: &Nl, pins: &Pins, tp: &TrunkParent, name: &str) -> Result<VlanParent> {
    let t = nl.link(&tp.trunk)?.ok_or_else(|| {
        ControlError::Invalid(format!(
            "parent {name}: trunk interface {} does not exist; create it first or pick another parent",
            tp.trunk
        ))
    })?;
    let mut undo = Undo::new();
    let made = match kernel_device(nl, pins, &t, tp, name, &mut undo) {
        Ok(Some(v)) => Ok(v),
        // No 8021q in this kernel ("Unknown device type"): build the device in eBPF.
        Ok(None) => {
            let _ = std::mem::replace(&mut undo, Undo::new()).rollback();
            ebpf_device(nl, pins, &t, tp, name, &mut undo)
        }
        Err(e) => Err(e),
    };
    match made {
        Ok(v) => {
            undo.forget();
            Ok(v)
        }
        Err(e) => Err(undo.run(e)),
    }
}

/// An undo step that deletes interface `name` if it is there.
fn delete_named(undo: &mut Undo, name: &str) {
    let name = name.to_string();
    undo.push(format!("deleting {name}"), move || {
        let nl = Nl::here().map_err(|e| e.to_string())?;
        match nl.link(&name).map_err(|e| e.to_string())? {
            Some(l) => nl.del_link(l.index).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    });
}

/// The kernel's VLAN device (for QinQ on top of the S-tag device TRUNK.OUTER, 802.1ad,
/// shared by the QinQ networks of that S-tag and made unless it exists). None: this
/// kernel has no 8021q.
fn kernel_device(
    nl: &Nl,
    pins: &Pins,
    t: &LinkInfo,
    tp: &TrunkParent,
    name: &str,
    undo: &mut Undo,
) -> Result<Option<VlanParent>> {
    let mut outer_created = false;
    let lower = match tp.outer {
        None => t.index,
        Some(o) => {
            let sname = format!("{}.{o}", tp.trunk);
            match nl.link(&sname)? {
                Some(l) => l.index,
                None => match nl.add_vlan_8021ad(&sname, t.index, o) {
                    Ok(()) => {
                        outer_created = true;
                        delete_named(undo, &sname);
                        let l = nl.link(&sname)?.ok_or_else(|| {
                            ControlError::Internal(format!("VLAN device {sname} vanished after creation"))
                        })?;
                        nl.set_up(l.index)?;
                        l.index
                    }
                    Err(e) if e.is(libc::EOPNOTSUPP) => return Ok(None),
                    Err(e) => return Err(e.into()),
                },
            }
        }
    };
    match nl.add_vlan(name, lower, tp.vid) {
        Ok(()) => delete_named(undo, name),
        Err(e) if e.is(libc::EOPNOTSUPP) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let dev =
        nl.link(name)?.ok_or_else(|| ControlError::Internal(format!("VLAN device {name} vanished after creation")))?;
    nl.set_up(dev.index)?;
    // The trunk's tc program lets these tags through to the kernel's VLAN demux.
    bpf::ensure_maps(pins)?;
    bpf::vlan_maps::insert(pins, t.index, tp.outer.unwrap_or(0), tp.vid, 0)?;
    Ok(Some(VlanParent {
        trunk: tp.trunk.clone(),
        vid: tp.vid,
        created: true,
        kind: VlanKind::Kernel,
        peer: None,
        outer: tp.outer,
        outer_created,
    }))
}

/// The eBPF VLAN device: a veth pair `name` / hidden peer, steered by the trunk's and
/// the peer's tc programs.
fn ebpf_device(
    nl: &Nl,
    pins: &Pins,
    t: &LinkInfo,
    tp: &TrunkParent,
    name: &str,
    undo: &mut Undo,
) -> Result<VlanParent> {
    let (outer, vid) = (tp.outer.unwrap_or(0), tp.vid);
    let peer = hidden_peer(t.index, tp.outer, vid);
    {
        let pins = pins.clone();
        // Opportunistic: maps another network uses stay, and that is no failure.
        undo.push("removing maps nothing uses", move || {
            let _ = super::release_pins(&pins);
            Ok(())
        });
    }
    nl.add_veth(name, &peer)?;
    delete_named(undo, name);
    super::fault("network-create:vlan-veth");
    let dev = nl.link(name)?.ok_or_else(|| ControlError::Internal(format!("{name} vanished after creation")))?;
    let hidden = nl.link(&peer)?.ok_or_else(|| ControlError::Internal(format!("{peer} vanished after creation")))?;
    nl.set_up(hidden.index)?;
    nl.set_up(dev.index)?;
    if !t.up {
        nl.set_up(t.index)?;
    }
    bpf::ensure_maps(pins)?;
    bpf::vlan_maps::insert(pins, t.index, outer, vid, hidden.index)?;
    {
        let (pins, trunk) = (pins.clone(), t.index);
        undo.push(format!("removing the VLAN map entry of VID {vid}"), move || {
            bpf::vlan_maps::remove(&pins, trunk, outer, vid, None).map(drop).map_err(|e| e.to_string())
        });
    }
    {
        // Also after a failed attach, which may have pinned a link before failing.
        let (pins, peer) = (pins.clone(), peer.clone());
        undo.push(format!("detaching tc from {peer}"), move || {
            let _ = bpf::tc::detach_ingress(&pins, None, &peer);
            Ok(())
        });
    }
    bpf::tc::attach_ingress(pins, None, &peer, TC_VLAN_OUT_PROG)?;
    {
        let (pins, name) = (pins.clone(), name.to_string());
        undo.push(format!("detaching XDP from {name}"), move || {
            let _ = std::fs::remove_file(pins.xdp_link(None, &name));
            Ok(())
        });
    }
    // Only once the visible end takes redirected XDP frames may the trunk's XDP program
    // steer this VLAN itself (until then its tc program does).
    bpf::parent::attach_vlan_rx(pins, name)?;
    if tp.outer.is_none() {
        // (The VLAN map entry's undo above clears this too.) False: another trunk's device
        // has the VID's fast path; this one stays with tc.
        bpf::vlan_maps::set_xdp(pins, t.index, vid, hidden.index)?;
    }
    Ok(VlanParent {
        trunk: tp.trunk.clone(),
        vid,
        created: true,
        kind: VlanKind::Ebpf,
        peer: Some(peer),
        outer: tp.outer,
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
        // Its XDP link went with the device; the pin would keep it (defunct) otherwise.
        let pin = pins.xdp_link(None, name);
        if let Err(e) = std::fs::remove_file(&pin) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errs.push(format!("removing {}: {e}", pin.display()));
            }
        }
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

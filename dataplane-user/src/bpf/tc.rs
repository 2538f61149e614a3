//! tcx ingress programs (VLAN steering), attached through pinned links like XDP.

use aya::programs::{links::FdLink, tc::TcAttachType, SchedClassifier};

use super::{
    object::{load_object, BpfError},
    pins::{netns_label, Pins},
};
use crate::netns;

/// Attach program `prog` at tcx ingress of `iface` unless dataplane already has a tc
/// link there. Returns whether it attached now.
pub fn attach_ingress(pins: &Pins, netns: Option<&str>, iface: &str, prog: &'static str) -> Result<bool, BpfError> {
    let pin = pins.tc_link(netns, iface);
    if pin.exists() {
        return Ok(false);
    }
    if netns::ifindex(iface).is_none() {
        return Err(BpfError::NoSuchInterface { iface: iface.into(), netns: netns_label(netns) });
    }
    let mut ebpf = load_object(&pins.maps_dir())?;
    let p: &mut SchedClassifier = ebpf
        .program_mut(prog)
        .ok_or(BpfError::MissingProgram { name: prog })?
        .try_into()
        .map_err(|e| BpfError::Verify { name: prog, source: Box::new(e) })?;
    p.load().map_err(|e| BpfError::Verify { name: prog, source: Box::new(e) })?;
    crate::bpffs::create_private(pin.parent().expect("pin has a parent"))?;
    let id = p.attach(iface, TcAttachType::Ingress).map_err(|e| BpfError::Attach {
        name: prog,
        iface: iface.into(),
        mode: "tcx ingress",
        source: Box::new(e),
    })?;
    let link = p.take_link(id).map_err(|e| BpfError::Link { path: pin.clone(), detail: e.to_string() })?;
    let fd: FdLink = link.try_into().map_err(|e| BpfError::Link {
        path: pin.clone(),
        detail: format!("tc attached without a BPF link (tcx needs Linux >= 6.6): {e}"),
    })?;
    fd.pin(&pin).map_err(|e| BpfError::Pin { path: pin.clone(), detail: e.to_string() })?;
    Ok(true)
}

/// Remove the tc ingress link of `iface` (if any).
pub fn detach_ingress(pins: &Pins, netns: Option<&str>, iface: &str) -> Result<(), BpfError> {
    let pin = pins.tc_link(netns, iface);
    match std::fs::remove_file(&pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BpfError::Unpin { path: pin, source }),
    }
}

//! tc programs: attached through tcx links where the kernel has tcx (>= 6.6), else as
//! cls_bpf filters under a clsact qdisc (netlink). Either way something is pinned at the
//! attachment's path: the link, or the filter's program (found again by its fixed
//! priority and handle, to replace its program in place or to delete it).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use aya::programs::{
    links::{FdLink, Link},
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcAttachType, TcHandle},
    LinkOrder, ProgramError, SchedClassifier,
};

use super::{
    object::{load_object, BpfError},
    pins::{netns_label, Pins},
};
use crate::netns;

/// Our cls_bpf filters' priority and handles (fixed, so a filter can be found again
/// without a link: to replace its program in place, or to delete it).
pub const CLS_PRIORITY: u16 = 0xdb;

pub fn cls_handle(kind: TcAttachType) -> TcHandle {
    TcHandle::new(0, cls_minor(kind))
}

fn cls_minor(kind: TcAttachType) -> u16 {
    if matches!(kind, TcAttachType::Egress) {
        0xdb2
    } else {
        0xdb1
    }
}

/// Whether this kernel has tcx (Linux >= 6.6): probed at the first attachment, since
/// backports make version numbers unreliable.
static TCX: OnceLock<bool> = OnceLock::new();

/// How a tc program is attached on this kernel.
pub fn mechanism() -> &'static str {
    match TCX.get() {
        Some(false) => "cls_bpf",
        _ => "tcx",
    }
}

/// Whether the object pinned at `pin` is a program (a cls_bpf attachment, pinned so it is
/// found again) rather than a BPF link (tcx, XDP).
pub fn pin_is_program(pin: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(fd) = crate::sys::bpf_obj_get(pin) else { return false };
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|l| l.to_string_lossy().contains("bpf-prog"))
}

/// Attach the loaded `p` at `kind` of `iface` (in the current namespace) and pin what
/// keeps it there at `pin`: the tcx link, or, on kernels without tcx, the program of a
/// cls_bpf filter under a clsact qdisc (added if missing; a marker records that we added it).
/// `ours` says the interface is dataplane's own (an endpoint's): a qdisc added to it needs
/// no marker, it goes with the interface. `cls_only` asks for cls_bpf even where tcx
/// exists (a cls_bpf filter is made without waiting for an RCU grace period; see
/// [`upgrade_to_tcx`]).
pub fn attach_pinned(
    p: &mut SchedClassifier,
    name: &'static str,
    iface: &str,
    kind: TcAttachType,
    pin: &Path,
    ours: bool,
    cls_only: bool,
) -> Result<(), BpfError> {
    let attach_err =
        |mode: &'static str, e: ProgramError| BpfError::Attach { name, iface: iface.into(), mode, source: Box::new(e) };
    if TCX.get() != Some(&false) && !cls_only {
        match p.attach_with_options(iface, kind, TcAttachOptions::TcxOrder(LinkOrder::default())) {
            Ok(id) => {
                let _ = TCX.set(true);
                return fd_link(p, id, pin)?
                    .pin(pin)
                    .map(drop)
                    .map_err(|e| BpfError::Pin { path: pin.to_path_buf(), source: e.into() });
            }
            Err(ProgramError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::EINVAL) => {
                let _ = TCX.set(false);
            }
            Err(e) => return Err(attach_err("tcx", e)),
        }
    }
    if aya::programs::tc::qdisc_add_clsact(iface).is_ok() && !ours {
        crate::bpffs::create_private(&clsact_marker(pin))?;
    }
    let opts = NlOptions { priority: CLS_PRIORITY, handle: cls_handle(kind), classid: None };
    let id = match p.attach_with_options(iface, kind, TcAttachOptions::Netlink(opts)) {
        Ok(id) => id,
        // Our filter is there already (a pin lost, a re-attach): replace its program.
        Err(_) => {
            let link = SchedClassifierLink::attached(iface, kind, CLS_PRIORITY, cls_handle(kind), None)
                .map_err(|e| attach_err("cls_bpf", ProgramError::IOError(e)))?;
            p.attach_to_link(link).map_err(|e| attach_err("cls_bpf", e))?
        }
    };
    // The filter stays with the qdisc; the aya link would detach it when dropped.
    std::mem::forget(p.take_link(id).map_err(|e| BpfError::Link { path: pin.to_path_buf(), source: e.into() })?);
    let _ = std::fs::remove_file(pin);
    p.pin(pin).map_err(|e| BpfError::Pin { path: pin.to_path_buf(), source: e.into() })
}

/// Whether this kernel has tcx, asked without attaching anything: BPF_PROG_QUERY for
/// tcx ingress on the loopback interface (ifindex 1 in every namespace) fails with EINVAL
/// where the attach type does not exist.
pub fn tcx_supported() -> bool {
    if let Some(t) = TCX.get() {
        return *t;
    }
    // union bpf_attr for BPF_PROG_QUERY: target_fd (u32), attach_type (u32), query_flags,
    // attach_flags, prog_ids (u64), prog_cnt (u32), ...
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes());
    attr[4..8].copy_from_slice(&46u32.to_ne_bytes()); // BPF_TCX_INGRESS
                                                      // SAFETY: BPF_PROG_QUERY (16) reads and writes `attr` only (prog_ids is NULL).
    let r = unsafe { libc::syscall(libc::SYS_bpf, 16 as libc::c_long, attr.as_mut_ptr(), attr.len() as u32) };
    let yes = r == 0;
    let _ = TCX.set(yes);
    yes
}

/// Replace the cls_bpf attachment pinned at `pin` (the filter's program) by a tcx link
/// running the same program `p`, in the current namespace: the link is made and pinned
/// beside, renamed over the program pin (so the pin never points at nothing), then our
/// filter is deleted. While both exist the program runs once (tcx first, and our program
/// ends the tc pass). Returns false if there was nothing to upgrade (the endpoint was
/// removed meanwhile, or it is a link already).
pub fn upgrade_to_tcx(
    p: &mut SchedClassifier,
    name: &'static str,
    iface: &str,
    kind: TcAttachType,
    pin: &Path,
) -> Result<bool, BpfError> {
    if !pin_is_program(pin) {
        return Ok(false);
    }
    let attach_err = |e: ProgramError| BpfError::Attach { name, iface: iface.into(), mode: "tcx", source: Box::new(e) };
    let id = p.attach_with_options(iface, kind, TcAttachOptions::TcxOrder(LinkOrder::default())).map_err(attach_err)?;
    let fd = fd_link(p, id, pin)?;
    let mut tmp = pin.as_os_str().to_owned();
    tmp.push("~tcx");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    fd.pin(&tmp).map_err(|e| BpfError::Pin { path: tmp.clone(), source: e.into() })?;
    // Removed meanwhile (rm waits for this upgrade, so only an external unpin gets here):
    // the link goes with its pin.
    if !pin_is_program(pin) {
        let _ = std::fs::remove_file(&tmp);
        return Ok(false);
    }
    std::fs::rename(&tmp, pin).map_err(|e| BpfError::Pin { path: pin.to_path_buf(), source: e.into() })?;
    if let Ok(link) = SchedClassifierLink::attached(iface, kind, CLS_PRIORITY, cls_handle(kind), None) {
        let _ = link.detach();
    }
    Ok(true)
}

/// The tcx link `id` of `p` as a link to pin at `pin` (which error messages name).
fn fd_link(
    p: &mut SchedClassifier,
    id: aya::programs::tc::SchedClassifierLinkId,
    pin: &Path,
) -> Result<FdLink, BpfError> {
    let link = p.take_link(id).map_err(|e| BpfError::Link { path: pin.to_path_buf(), source: e.into() })?;
    link.try_into()
        .map_err(|e| BpfError::Link { path: pin.to_path_buf(), source: format!("tcx link expected: {e}").into() })
}

/// A directory beside a cls_bpf pin saying dataplane added the interface's clsact qdisc.
fn clsact_marker(pin: &Path) -> PathBuf {
    let file = pin.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let iface = file.split_once('-').map_or(file.as_str(), |(_, i)| i);
    pin.with_file_name(format!("clsact-{iface}"))
}

/// Undo [`attach_pinned`] for `iface` in the current namespace: unpin, and for cls_bpf
/// delete our filter and, if we added it and nothing else uses it, the clsact qdisc.
pub fn detach_pinned(iface: &str, kind: TcAttachType, pin: &Path) -> Result<(), BpfError> {
    if pin_is_program(pin) {
        if let Ok(link) = SchedClassifierLink::attached(iface, kind, CLS_PRIORITY, cls_handle(kind), None) {
            let _ = link.detach();
        }
        let marker = clsact_marker(pin);
        if marker.exists() {
            let others = ["ingress", "egress"].iter().any(|d| {
                Command::new("tc")
                    .args(["filter", "show", "dev", iface, d])
                    .output()
                    .is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
            });
            if !others {
                let _ = Command::new("tc").args(["qdisc", "del", "dev", iface, "clsact"]).output();
                let _ = std::fs::remove_dir(&marker);
            }
        }
    }
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BpfError::Unpin { path: pin.to_path_buf(), source }),
    }
}

/// Attach program `prog` at tc ingress of `iface` unless dataplane already has it there.
/// Returns whether it attached now.
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
    attach_pinned(p, prog, iface, TcAttachType::Ingress, &pin, false, false)?;
    Ok(true)
}

/// Remove the tc ingress attachment of `iface` (if any).
pub fn detach_ingress(pins: &Pins, netns: Option<&str>, iface: &str) -> Result<(), BpfError> {
    detach_pinned(iface, TcAttachType::Ingress, &pins.tc_link(netns, iface))
}

/// The program id of our cls_bpf filter (our priority and handle) on `iface` (current
/// namespace) at `kind`, if there is one.
pub fn filter_program(iface: &str, kind: TcAttachType) -> Option<u32> {
    let index = netns::ifindex(iface)?;
    let egress = matches!(kind, TcAttachType::Egress);
    let want = u32::from(cls_minor(kind));
    crate::nl::Nl::here()
        .ok()?
        .bpf_filters(index, egress)
        .ok()?
        .into_iter()
        .find(|&(prio, handle, _)| prio == CLS_PRIORITY && handle == want)
        .map(|(_, _, id)| id)
}

/// Whether our cls_bpf filter is on `iface` (current namespace) at `kind` and runs the
/// program pinned at `pin` (not a filter someone else put at our priority and handle).
pub fn filter_present(iface: &str, kind: TcAttachType, pin: &Path) -> bool {
    let Some(id) = filter_program(iface, kind) else { return false };
    SchedClassifier::from_pin(pin).ok().and_then(|p| p.info().ok()).is_some_and(|i| i.id() == id)
}

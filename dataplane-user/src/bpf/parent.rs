//! The XDP admission program on parent (trunk) interfaces, attached through pinned links.
//!
//! Functions here work on interfaces of the calling thread's network namespace; `netns`
//! only names the pin directory and messages (the CLI enters the namespace first).

use std::path::{Path, PathBuf};

use aya::programs::{links::FdLink, links::PinnedLink, ProgramError, Xdp, XdpMode};
use dataplane_common::{
    maps::{VLAN_UNTAGGED, XDP_PARENT_PROG, XDP_VLAN_RX_PROG},
    AdmitKey, AdmitValue,
};

use super::{
    admit,
    object::{load_object, BpfError},
    pins::{netns_label, Pins},
};
use crate::netns;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) XDP when the driver has it, else generic.
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP.
    Skb,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub link_id: u32,
    pub program_id: u32,
    /// "native" or "skb" when attached now; "kept" when an existing link was updated in place.
    pub mode: &'static str,
    /// True when an existing link got the new program (no detach window).
    pub replaced: bool,
    pub pin: PathBuf,
}

/// Endpoint number of the admission entry for a parent's own MAC.
pub const HOST_ENDPOINT: u32 = u32::MAX;

/// The admission value of one of the host's own MACs (a parent's, a VLAN device's).
pub const HOST_ENTRY: AdmitValue = AdmitValue { endpoint: HOST_ENDPOINT, flags: 0 };

/// Admit the host's own MAC under each of `keys`.
pub fn admit_host(pins: &Pins, keys: &[AdmitKey]) -> Result<(), BpfError> {
    keys.iter().try_for_each(|k| admit::insert(pins, *k, HOST_ENTRY))
}

/// Take back what [`admit_host`] wrote (an endpoint's entry under one of `keys` stays).
pub fn withdraw_host(pins: &Pins, keys: &[AdmitKey]) {
    for k in keys {
        let _ = admit::remove_if(pins, k, |v| v.endpoint == HOST_ENDPOINT);
    }
}

fn mode_name(m: XdpMode) -> &'static str {
    match m {
        XdpMode::Driver => "native",
        XdpMode::Skb => "skb",
        XdpMode::Hardware => "offload",
        XdpMode::Default => "default",
    }
}

fn is_busy(e: &ProgramError) -> bool {
    let io = match e {
        ProgramError::SyscallError(s) => Some(&s.io_error),
        _ => None,
    };
    matches!(io.and_then(|e| e.raw_os_error()), Some(libc::EBUSY) | Some(libc::EEXIST))
}

fn link_error(path: &Path, source: impl Into<super::object::Cause>) -> BpfError {
    BpfError::Link { path: path.to_path_buf(), source: source.into() }
}

/// Load the current object and attach its parent program to `iface`, or, when a pinned
/// link for `iface` exists, swap the new program into that link atomically.
pub fn attach_parent(pins: &Pins, netns: Option<&str>, iface: &str, mode: AttachMode) -> Result<Attachment, BpfError> {
    let ifindex = netns::ifindex(iface)
        .ok_or_else(|| BpfError::NoSuchInterface { iface: iface.to_string(), netns: netns_label(netns) })?;
    let mut ebpf = load_object(&pins.maps_dir())?;
    let prog = load_xdp(&mut ebpf, XDP_PARENT_PROG)?;

    let pin = pins.xdp_link(netns, iface);
    crate::bpffs::create_private(pin.parent().expect("pin has a parent"))?;

    // The parent's own MAC carries the host's traffic: admit it before frames are judged
    // (and take the entry back if the program cannot be attached).
    let host_key = netns::hwaddr(iface).map(|mac| AdmitKey { ifindex, vlan: VLAN_UNTAGGED, mac });
    if let Some(key) = host_key {
        admit_host(pins, &[key])?;
    }
    let result = attach_new_or_replace(prog, XDP_PARENT_PROG, iface, ifindex, mode, &pin);
    if result.is_err() {
        if let Some(key) = host_key {
            withdraw_host(pins, &[key]);
        }
    }
    result
}

/// Attach the pass-all XDP program to the visible end `iface` of an eBPF VLAN device (or
/// put this binary's version into its pinned link), so the veth keeps NAPI on for the
/// frames the trunk's XDP program redirects into the device.
pub fn attach_vlan_rx(pins: &Pins, iface: &str) -> Result<Attachment, BpfError> {
    let ifindex = netns::ifindex(iface)
        .ok_or_else(|| BpfError::NoSuchInterface { iface: iface.to_string(), netns: netns_label(None) })?;
    let mut ebpf = load_object(&pins.maps_dir())?;
    let prog = load_xdp(&mut ebpf, XDP_VLAN_RX_PROG)?;
    let pin = pins.xdp_link(None, iface);
    crate::bpffs::create_private(pin.parent().expect("pin has a parent"))?;
    attach_new_or_replace(prog, XDP_VLAN_RX_PROG, iface, ifindex, AttachMode::Native, &pin)
}

/// XDP program `name` of the loaded object, verified by the kernel.
fn load_xdp<'a>(ebpf: &'a mut aya::Ebpf, name: &'static str) -> Result<&'a mut Xdp, BpfError> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(BpfError::MissingProgram { name })?
        .try_into()
        .map_err(|source| BpfError::Verify { name, source: Box::new(source) })?;
    prog.load().map_err(|source| BpfError::Verify { name, source: Box::new(source) })?;
    Ok(prog)
}

fn attach_new_or_replace(
    prog: &mut Xdp,
    name: &'static str,
    iface: &str,
    ifindex: u32,
    mode: AttachMode,
    pin: &Path,
) -> Result<Attachment, BpfError> {
    let pin = pin.to_path_buf();

    if pin.exists() {
        match replace_in_link(prog, &pin)? {
            Some((link_id, program_id)) => {
                return Ok(Attachment {
                    iface: iface.to_string(),
                    ifindex,
                    link_id,
                    program_id,
                    mode: "kept",
                    replaced: true,
                    pin,
                })
            }
            // The interface the link pointed at is gone: drop the stale pin, attach anew.
            None => std::fs::remove_file(&pin).map_err(|source| BpfError::Unpin { path: pin.clone(), source })?,
        }
    }

    let tries: &[XdpMode] = match mode {
        AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
        AttachMode::Native => &[XdpMode::Driver],
        AttachMode::Skb => &[XdpMode::Skb],
    };
    let mut last = None;
    for &m in tries {
        match prog.attach_to_if_index(ifindex, m) {
            Ok(id) => {
                let link = prog.take_link(id).map_err(|e| link_error(&pin, e))?;
                let fd: FdLink = link.try_into().map_err(|e| {
                    link_error(
                        &pin,
                        format!(
                            "the kernel attached without a BPF link ({e}); dataplane needs bpf_link XDP (Linux >= 5.9)"
                        ),
                    )
                })?;
                let info = fd.info().map_err(|e| link_error(&pin, e))?;
                fd.pin(&pin).map_err(|e| BpfError::Pin { path: pin.clone(), source: e.into() })?;
                return Ok(Attachment {
                    iface: iface.to_string(),
                    ifindex,
                    link_id: info.id(),
                    program_id: info.program_id(),
                    mode: mode_name(m),
                    replaced: false,
                    pin,
                });
            }
            Err(e) if is_busy(&e) => return Err(BpfError::Busy { iface: iface.to_string(), source: Box::new(e) }),
            Err(e) => last = Some((m, e)),
        }
    }
    let (m, source) = last.expect("at least one mode was tried");
    Err(BpfError::Attach { name, iface: iface.to_string(), mode: mode_name(m), source: Box::new(source) })
}

/// Swap `prog` into the pinned link at `pin`. `Ok(None)` when the link is defunct (its
/// interface was deleted), so the caller attaches afresh.
fn replace_in_link(prog: &mut Xdp, pin: &Path) -> Result<Option<(u32, u32)>, BpfError> {
    let pinned = PinnedLink::from_pin(pin).map_err(|e| link_error(pin, e))?;
    let fd: FdLink = pinned.into();
    let xdp_link = aya::programs::xdp::XdpLink::try_from(fd)
        .map_err(|e| link_error(pin, format!("not an XDP link ({e}); remove it by hand")))?;
    let id = match prog.attach_to_link(xdp_link) {
        Ok(id) => id,
        Err(ProgramError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOLINK) => return Ok(None),
        Err(e) => return Err(link_error(pin, format!("in-place replacement failed: {e}"))),
    };
    let link = prog.take_link(id).map_err(|e| link_error(pin, e))?;
    let fd: FdLink = link.try_into().map_err(|e| link_error(pin, e))?;
    let info = fd.info().map_err(|e| link_error(pin, e))?;
    // Dropping `fd` only closes our descriptor; the pin keeps the link attached.
    Ok(Some((info.id(), info.program_id())))
}

/// The interface a pinned XDP or tcx link is attached to: `Some(0)` when that interface
/// was deleted (the kernel detaches the link but the pin keeps it), `None` when the pin
/// cannot be read.
pub fn pinned_link_ifindex(pin: &Path) -> Option<u32> {
    let fd = crate::sys::bpf_obj_get(pin).ok()?;
    // struct bpf_link_info: type, id, prog_id (u32 each), then an 8-aligned union whose
    // xdp and tcx members both start with the ifindex (offset 16).
    let mut info = [0u8; 64];
    crate::sys::bpf_obj_info(&fd, &mut info).ok()?;
    Some(u32::from_ne_bytes(info[16..20].try_into().expect("4 bytes")))
}

/// Detach the program from `iface` by removing its link pin. When no link is left under
/// the bpffs dir, the map pins and the directory go too: nothing is left behind.
pub fn detach_parent(pins: &Pins, netns: Option<&str>, iface: &str) -> Result<(), BpfError> {
    let pin = pins.xdp_link(netns, iface);
    if !pin.exists() {
        return Err(BpfError::NotAttached { iface: iface.to_string(), netns: netns_label(netns), path: pin });
    }
    // The visible end of an eBPF VLAN device loses its NAPI with the program: XDP must
    // stop redirecting into the device first (the trunk's tc program steers it then).
    if netns.is_none() {
        let peer = crate::nl::Nl::here().ok().and_then(|nl| nl.link(iface).ok().flatten()).and_then(|l| l.link);
        for (vid, trunk, dev) in super::vlan_maps::xdp_entries(pins)? {
            if Some(dev) == peer {
                super::vlan_maps::clear_xdp(pins, trunk, vid)?;
            }
        }
    }
    std::fs::remove_file(&pin).map_err(|source| BpfError::Unpin { path: pin.clone(), source })?;
    let _ = std::fs::remove_dir(pins.netns_dir(netns));
    // Entries of this parent mean nothing without its program.
    if let Some(ifindex) = netns::ifindex(iface) {
        if pins.admit_map().exists() {
            admit::remove_where(pins, |k| k.ifindex == ifindex)?;
        }
    }
    remove_if_unused(pins)
}

/// Remove map pins and directories once no link pin remains.
pub fn remove_if_unused(pins: &Pins) -> Result<(), BpfError> {
    // Interfaces still being deleted by a child keep their link pins until they are gone.
    crate::workers::unlink::wait_unlinks();
    if any_link_pin(pins) {
        return Ok(());
    }
    let mut first_err = None;
    let maps: Vec<PathBuf> = [pins.maps_dir(), pins.progs_dir()]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(d).map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default()
        })
        .collect();
    for path in maps {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                first_err.get_or_insert(BpfError::Unpin { path, source });
            }
        }
    }
    // Directories may hold things we did not make; remove_dir refuses non-empty ones.
    if let Ok(rd) = std::fs::read_dir(pins.links_dir()) {
        for d in rd.flatten() {
            let _ = std::fs::remove_dir(d.path());
        }
    }
    for m in pins.owner_markers() {
        let _ = std::fs::remove_dir(m);
    }
    for dir in [pins.links_dir(), pins.maps_dir(), pins.progs_dir(), pins.root().to_path_buf()] {
        let _ = std::fs::remove_dir(dir);
    }
    if !pins.root().exists() {
        // The admission table went with the pins; so does the lock its writers take. (The
        // tcx upgrade queue's directory is the engine's to remove, `release_pins`: the
        // upgrader sits above this module.)
        let _ = std::fs::remove_file(admit::lock_path(pins));
    }
    first_err.map_or(Ok(()), Err)
}

/// The link pins in one namespace's pin dir `ns_dir`: directories beside them are
/// markers (a clsact qdisc we added).
fn pins_in(ns_dir: &Path) -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir(ns_dir).into_iter().flatten().flatten().filter(|l| l.file_type().is_ok_and(|t| !t.is_dir()))
}

/// Whether any link pin is left (stops at the first).
pub fn any_link_pin(pins: &Pins) -> bool {
    let Ok(rd) = std::fs::read_dir(pins.links_dir()) else { return false };
    rd.flatten().any(|ns| pins_in(&ns.path()).next().is_some())
}

/// Every link pin as (netns tag, pin path).
pub fn list_link_pins(pins: &Pins) -> Vec<(String, PathBuf)> {
    list_link_pins_of(pins, |_| true)
}

/// The link pins of the netns tags `wanted` says yes to (the others' dirs are not read:
/// every endpoint has one).
pub fn list_link_pins_of(pins: &Pins, wanted: impl Fn(&str) -> bool) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(pins.links_dir()) else { return out };
    for ns in rd.flatten() {
        let tag = ns.file_name().to_string_lossy().into_owned();
        if !wanted(&tag) {
            continue;
        }
        out.extend(pins_in(&ns.path()).map(|l| (tag.clone(), l.path())));
    }
    out.sort();
    out
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkStatus {
    pub netns: String,
    pub iface: String,
    pub pin: PathBuf,
    /// How the program is attached: "xdp native", "xdp generic", "tcx" or "cls_bpf"
    /// (a tc filter under clsact, on kernels without tcx).
    pub mechanism: String,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    pub error: Option<String>,
}

/// Status of every pinned attachment (read from the kernel through the pins).
pub fn list_attachments(pins: &Pins) -> Vec<LinkStatus> {
    let here: Vec<crate::nl::LinkInfo> = crate::nl::Nl::here().and_then(|nl| nl.links()).unwrap_or_default();
    list_link_pins(pins)
        .into_iter()
        .map(|(netns, pin)| {
            let file =
                super::pins::decode(&pin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            let (kind, name) = file.split_once('-').unwrap_or(("", file.as_str()));
            let iface = match kind {
                "xdp" => format!("{name} (xdp)"),
                "tcin" => format!("{name} (tc ingress)"),
                "tceg" => format!("{name} (tc egress)"),
                _ => file.clone(),
            };
            if super::tc::pin_is_program(&pin) {
                let prog = aya::programs::SchedClassifier::from_pin(&pin)
                    .map_err(|e| e.to_string())
                    .and_then(|p| p.info().map_err(|e| e.to_string()));
                return LinkStatus {
                    netns,
                    iface,
                    pin,
                    mechanism: "cls_bpf".into(),
                    link_id: None,
                    program_id: prog.as_ref().ok().map(|i| i.id()),
                    error: prog.err(),
                };
            }
            let mechanism = if kind == "xdp" {
                let mode =
                    (netns == "host").then(|| here.iter().find(|l| l.name == name).and_then(|l| l.xdp)).flatten();
                format!("xdp {}", mode.unwrap_or("?"))
            } else {
                "tcx".to_string()
            };
            let info = PinnedLink::from_pin(&pin).map_err(|e| e.to_string()).and_then(|p| {
                let fd: FdLink = p.into();
                fd.info().map_err(|e| e.to_string())
            });
            match info {
                Ok(i) => LinkStatus {
                    netns,
                    iface,
                    pin,
                    mechanism,
                    link_id: Some(i.id()),
                    program_id: Some(i.program_id()),
                    error: None,
                },
                Err(e) => LinkStatus { netns, iface, pin, mechanism, link_id: None, program_id: None, error: Some(e) },
            }
        })
        .collect()
}

//! Replacing every attached program with the ones of this binary's object, in place:
//! each pinned link gets the new program through BPF_LINK_UPDATE, so there is no moment
//! in which a frame bypasses a program. Maps are reused through their pins.

use std::{collections::BTreeMap, path::PathBuf};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachType},
    xdp::XdpLink,
    SchedClassifier,
};

use super::{
    object::{load_object, BpfError},
    parent::list_link_pins,
    pins::Pins,
    tc::cls_handle,
};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadReport {
    /// Maps re-created with a new layout, entries carried over.
    pub migrated: Vec<super::migrate::Migrated>,
    pub links: Vec<Reloaded>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    pub pin: PathBuf,
    pub program: String,
    pub link_id: u32,
    pub old_program_id: u32,
    pub new_program_id: u32,
}

fn program_names() -> BTreeMap<u32, String> {
    aya::programs::loaded_programs().flatten().filter_map(|p| Some((p.id(), p.name_as_str()?.to_string()))).collect()
}

/// Migrate maps whose layout changed, then swap the new programs into every link.
pub fn upgrade(pins: &Pins) -> Result<ReloadReport, BpfError> {
    if list_link_pins(pins).is_empty() {
        return Ok(ReloadReport::default());
    }
    let migrated = super::migrate::migrate_maps(pins)?;
    Ok(ReloadReport { migrated, links: reload_all(pins)? })
}

pub fn reload_all(pins: &Pins) -> Result<Vec<Reloaded>, BpfError> {
    let link_pins = list_link_pins(pins);
    if link_pins.is_empty() {
        return Ok(Vec::new());
    }
    let names = program_names();
    let mut ebpf = load_object(&pins.maps_dir())?;
    let mut loaded: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (tag, pin) in link_pins {
        let r = if super::tc::pin_is_program(&pin) {
            replace_filter(&mut ebpf, &mut loaded, &names, &tag, &pin)?
        } else {
            update_link(&mut ebpf, &mut loaded, &names, pin)?
        };
        out.extend(r);
    }
    // Endpoints attached from now on get the new programs too.
    for name in [dataplane_common::maps::TC_EP_OUT_PROG, dataplane_common::maps::TC_EP_IN_PROG] {
        let path = pins.prog(name);
        if !path.exists() {
            continue;
        }
        if let Some(aya::programs::Program::SchedClassifier(p)) = ebpf.program_mut(name) {
            if !loaded.iter().any(|l| l == name) {
                p.load().map_err(|e| BpfError::Verify { name, source: Box::new(e) })?;
            }
            let _ = std::fs::remove_file(&path);
            p.pin(&path).map_err(|e| BpfError::Pin { path: path.clone(), source: e.into() })?;
        }
    }
    Ok(out)
}

/// Point the pinned link `pin` at this binary's version of its program, in place. None:
/// the link's interface was deleted, so there is nothing to update (reconcile re-attaches
/// to the interface's successor, see reconcile.rs).
fn update_link(
    ebpf: &mut aya::Ebpf,
    loaded: &mut Vec<String>,
    names: &BTreeMap<u32, String>,
    pin: PathBuf,
) -> Result<Option<Reloaded>, BpfError> {
    if super::parent::pinned_link_ifindex(&pin) == Some(0) {
        return Ok(None);
    }
    let err = |d: String| BpfError::Link { path: pin.clone(), source: d.into() };
    let fd: FdLink = PinnedLink::from_pin(&pin).map_err(|e| err(e.to_string()))?.into();
    let info = fd.info().map_err(|e| err(e.to_string()))?;
    let (link_id, old) = (info.id(), info.program_id());
    // Kernel program names are cut at 15 characters; ours are shorter.
    let name = names.get(&old).cloned().ok_or_else(|| err(format!("program {old} of this link is not loaded")))?;
    let prog = ebpf.program_mut(&name).ok_or_else(|| err(format!("program {name} is not in this binary's object")))?;
    let first = !loaded.contains(&name);
    let relink = |l: Result<FdLink, aya::programs::links::LinkError>| -> Result<u32, BpfError> {
        Ok(l.map_err(|e| err(e.to_string()))?.info().map_err(|e| err(e.to_string()))?.program_id())
    };
    let new_id = match prog {
        aya::programs::Program::Xdp(p) => {
            if first {
                p.load().map_err(|e| err(format!("loading {name}: {e}")))?;
            }
            let l = XdpLink::try_from(fd).map_err(|e| err(e.to_string()))?;
            let id = p.attach_to_link(l).map_err(|e| err(format!("in-place update failed: {e}")))?;
            relink(p.take_link(id).map_err(|e| err(e.to_string()))?.try_into())?
        }
        aya::programs::Program::SchedClassifier(p) => {
            if first {
                p.load().map_err(|e| err(format!("loading {name}: {e}")))?;
            }
            let l = SchedClassifierLink::try_from(fd).map_err(|e| err(e.to_string()))?;
            let id = p.attach_to_link(l).map_err(|e| err(format!("in-place update failed: {e}")))?;
            relink(p.take_link(id).map_err(|e| err(e.to_string()))?.try_into())?
        }
        _ => return Err(err(format!("program {name} has an unexpected type"))),
    };
    if first {
        loaded.push(name.clone());
    }
    Ok(Some(Reloaded { pin, program: name, link_id, old_program_id: old, new_program_id: new_id }))
}

/// The namespace, interface and direction of a cls_bpf attachment, from its pin path:
/// `host` is this namespace, `ns-run_netns_NAME` is /run/netns/NAME. Attachments in other
/// namespaces (Docker sandboxes, /proc paths) cannot be found from the pin and are left
/// with their program (re-attached by reconcile when needed).
fn filter_target(tag: &str, pin: &std::path::Path) -> Option<(Option<String>, String, TcAttachType)> {
    let lp = super::pins::LinkPin::parse(tag, pin)?;
    let kind = match lp.hook {
        super::pins::Hook::TcIngress => TcAttachType::Ingress,
        super::pins::Hook::TcEgress => TcAttachType::Egress,
        super::pins::Hook::Xdp => return None,
    };
    let netns = if lp.is_host() { None } else { Some(netns_of_tag(tag)?) };
    Some((netns, lp.iface, kind))
}

/// The namespace path whose pin tag is `tag`: a tag flattens the path (`/` -> `_`), so it is
/// found again among the places runtimes keep namespaces (`/run/netns`, `/var/run/netns`:
/// ip netns, Podman, containerd, CRI-O) and the host-access interfaces' `/proc/self/ns/net`.
fn netns_of_tag(tag: &str) -> Option<String> {
    use super::pins::netns_tag;
    let host = crate::netns::HOST_NS;
    if netns_tag(Some(host)) == tag {
        return Some(host.to_string());
    }
    for dir in ["/run/netns", "/var/run/netns"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = format!("{dir}/{}", e.file_name().to_string_lossy());
            if netns_tag(Some(&p)) == tag {
                return Some(p);
            }
        }
    }
    None
}

/// Put this object's program into a cls_bpf filter in place (same priority and handle:
/// netlink replaces the filter's program atomically), and pin the new program.
fn replace_filter(
    ebpf: &mut aya::Ebpf,
    loaded: &mut Vec<String>,
    names: &BTreeMap<u32, String>,
    tag: &str,
    pin: &std::path::Path,
) -> Result<Option<Reloaded>, BpfError> {
    let err = |d: String| BpfError::Link { path: pin.to_path_buf(), source: d.into() };
    let Some((netns, iface, kind)) = filter_target(tag, pin) else { return Ok(None) };
    let old = SchedClassifier::from_pin(pin).map_err(|e| err(e.to_string()))?;
    let old_id = old.info().map_err(|e| err(e.to_string()))?.id();
    let name = names.get(&old_id).cloned().ok_or_else(|| err(format!("program {old_id} is not loaded")))?;
    let Some(aya::programs::Program::SchedClassifier(p)) = ebpf.program_mut(&name) else {
        return Err(err(format!("program {name} is not in this binary's object")));
    };
    if !loaded.contains(&name) {
        p.load().map_err(|e| err(format!("loading {name}: {e}")))?;
        loaded.push(name.clone());
    }
    let replace = |p: &mut SchedClassifier| -> Result<(), BpfError> {
        let link = SchedClassifierLink::attached(&iface, kind, super::tc::CLS_PRIORITY, cls_handle(kind), None)
            .map_err(|e| err(format!("{iface}: {e}")))?;
        let id = p.attach_to_link(link).map_err(|e| err(format!("in-place filter update on {iface} failed: {e}")))?;
        std::mem::forget(p.take_link(id).map_err(|e| err(e.to_string()))?);
        Ok(())
    };
    match &netns {
        Some(ns) => crate::nl::with_netns(std::path::Path::new(ns), || replace(p))
            .map_err(|e| err(format!("entering {ns}: {e}")))??,
        None => replace(p)?,
    }
    let _ = std::fs::remove_file(pin);
    p.pin(pin).map_err(|e| BpfError::Pin { path: pin.to_path_buf(), source: e.into() })?;
    let new_id = p.info().map_err(|e| err(e.to_string()))?.id();
    Ok(Some(Reloaded {
        pin: pin.to_path_buf(),
        program: name,
        link_id: 0,
        old_program_id: old_id,
        new_program_id: new_id,
    }))
}

//! Endpoint interfaces: their identity map (anti-spoofing), their program (egress,
//! attached from inside the endpoint's namespace, pinned in the host's bpffs), and their
//! counters (tx and spoofed ours; rx the kernel's own per-interface count).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{tc::TcAttachType, SchedClassifier},
};
use dataplane_common::{
    maps::{ep_slot, ENDPOINTS_MAP, EP_COUNTERS_MAP, EP_SLOTS_MAP, TC_EP_OUT_PROG},
    EndpointCounters, EndpointInfo,
};

use super::{
    object::{load_object, BpfError},
    pins::Pins,
};

fn map_err(path: &Path, d: impl Into<super::object::Cause>) -> BpfError {
    BpfError::Map { path: path.to_path_buf(), source: d.into() }
}

fn open_endpoints(pins: &Pins) -> Result<HashMap<MapData, u32, EndpointInfo>, BpfError> {
    super::open_hash(pins, ENDPOINTS_MAP)
}

pub fn insert(pins: &Pins, key: u32, info: EndpointInfo) -> Result<(), BpfError> {
    open_endpoints(pins)?.insert(key, info, 0).map_err(|e| map_err(&pins.map(ENDPOINTS_MAP), e))
}

pub fn remove(pins: &Pins, key: &u32) {
    if let Ok(mut m) = open_endpoints(pins) {
        let _ = m.remove(key);
    }
}

pub fn list(pins: &Pins) -> Result<Vec<(u32, EndpointInfo)>, BpfError> {
    if !pins.map(ENDPOINTS_MAP).exists() {
        return Ok(Vec::new());
    }
    if let Some(all) = super::hash_entries(&pins.map(ENDPOINTS_MAP)) {
        return Ok(all);
    }
    Ok(open_endpoints(pins)?.iter().flatten().collect())
}

fn open_by_endpoint(pins: &Pins) -> Result<PerCpuHashMap<MapData, u32, EndpointCounters>, BpfError> {
    super::open_map(pins, EP_COUNTERS_MAP)
}

fn open_slots(pins: &Pins) -> Result<PerCpuArray<MapData, EndpointCounters>, BpfError> {
    super::open_map(pins, EP_SLOTS_MAP)
}

/// Summed per-endpoint counters by endpoint number, as the maps hold them: the slots of
/// its interfaces, plus what it counted by endpoint (interfaces without a slot,
/// interfaces gone). The rx figures of live interfaces the kernel counts are not here
/// ([`crate::control::Engine::endpoint_counters`] adds them).
pub fn counters(pins: &Pins) -> Result<BTreeMap<u32, EndpointCounters>, BpfError> {
    let mut out: BTreeMap<u32, EndpointCounters> = BTreeMap::new();
    if pins.map(EP_COUNTERS_MAP).exists() {
        let m = open_by_endpoint(pins)?;
        for item in m.iter() {
            let (k, per_cpu) = item.map_err(|e| map_err(&pins.map(EP_COUNTERS_MAP), e))?;
            per_cpu.iter().for_each(|c| out.entry(k).or_default().add(c));
        }
    }
    if pins.map(EP_SLOTS_MAP).exists() {
        let slots = open_slots(pins)?;
        for (ifindex, info) in list(pins)? {
            let Some(slot) = ep_slot(ifindex) else { continue };
            let per_cpu = slots.get(&slot, 0).map_err(|e| map_err(&pins.map(EP_SLOTS_MAP), e))?;
            per_cpu.iter().for_each(|c| out.entry(info.endpoint).or_default().add(c));
        }
    }
    Ok(out)
}

/// Zeroes per CPU, as the map wants them.
fn zeroes() -> Option<PerCpuValues<EndpointCounters>> {
    let n = aya::util::nr_cpus().ok()?;
    PerCpuValues::try_from(vec![EndpointCounters::default(); n]).ok()
}

/// Move interface `ifindex`'s slot counts to its endpoint's by-endpoint counters (so the
/// endpoint's totals survive the interface) and zero the slot for its next interface.
pub fn retire(pins: &Pins, ifindex: u32, endpoint: u32) {
    let (Some(slot), Ok(mut slots)) = (ep_slot(ifindex), open_slots(pins)) else { return };
    let Ok(counts) = slots.get(&slot, 0) else { return };
    if counts.iter().any(|c| *c != EndpointCounters::default()) {
        if let Ok(mut by_ep) = open_by_endpoint(pins) {
            let mut sum: Vec<EndpointCounters> = by_ep
                .get(&endpoint, 0)
                .map(|v| v.iter().copied().collect())
                .unwrap_or_else(|_| counts.iter().map(|_| EndpointCounters::default()).collect());
            for (into, c) in sum.iter_mut().zip(counts.iter()) {
                into.add(c);
            }
            if let Ok(v) = PerCpuValues::try_from(sum) {
                let _ = by_ep.insert(endpoint, v, 0);
            }
        }
    }
    if let Some(z) = zeroes() {
        let _ = slots.set(slot, z, 0);
    }
}

/// Start a new interface `ifindex` with a zero slot (one left by a crash is not its).
pub fn reset_slot(pins: &Pins, ifindex: u32) {
    if let (Some(slot), Ok(mut slots), Some(z)) = (ep_slot(ifindex), open_slots(pins), zeroes()) {
        let _ = slots.set(slot, z, 0);
    }
}

/// Endpoint numbers with by-endpoint counters or a conflict record.
pub fn counted_endpoints(pins: &Pins) -> std::collections::BTreeSet<u32> {
    let mut out: std::collections::BTreeSet<u32> = super::admit::conflicts(pins).into_keys().collect();
    if let Ok(m) = open_by_endpoint(pins) {
        out.extend(m.keys().flatten());
    }
    out
}

pub fn remove_counters(pins: &Pins, endpoint: u32) {
    super::admit::clear_conflicts(pins, endpoint);
    if let Ok(mut m) = open_by_endpoint(pins) {
        let _ = m.remove(&endpoint);
    }
}

/// Pin paths of an endpoint interface's links (see [`Pins::endpoint_links`]).
pub fn link_pins(pins: &Pins, netns_path: &str, ifname: &str) -> [std::path::PathBuf; 2] {
    pins.endpoint_links(netns_path, ifname)
}

/// The tc program pinned at `pin`, named `name`. Not `SchedClassifier::from_pin`: that
/// asks aya whether the kernel reports program names, and aya answers by probing every
/// feature it knows at once (nine BTF loads, five program loads, three maps: a few
/// hundred microseconds of every attach).
fn classifier_from_pin(pin: &Path, name: &'static str) -> Result<SchedClassifier, aya::programs::ProgramError> {
    let info = aya::programs::ProgramInfo::from_pin(pin)?;
    SchedClassifier::from_program_info(info, std::borrow::Cow::Borrowed(name))
}

/// The endpoint's program (anti-spoofing, egress), loaded once and then reused from its
/// pin: attaching an endpoint then needs neither the ELF object, nor kernel BTF, nor the
/// verifier.
fn endpoint_program(pins: &Pins) -> Result<SchedClassifier, BpfError> {
    let path = pins.prog(TC_EP_OUT_PROG);
    let from = || {
        classifier_from_pin(&path, TC_EP_OUT_PROG)
            .map_err(|e| BpfError::Verify { name: TC_EP_OUT_PROG, source: Box::new(e) })
    };
    if path.exists() {
        if let Ok(p) = from() {
            return Ok(p);
        }
        // A stale pin (e.g. from an older layout): load afresh below.
        let _ = std::fs::remove_file(&path);
    }
    crate::bpffs::create_private(&pins.progs_dir())?;
    let mut ebpf = load_object(&pins.maps_dir())?;
    let name = TC_EP_OUT_PROG;
    let p: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(BpfError::MissingProgram { name })?
        .try_into()
        .map_err(|e| BpfError::Verify { name, source: Box::new(e) })?;
    p.load().map_err(|e| BpfError::Verify { name, source: Box::new(e) })?;
    // Another process may have pinned it meanwhile; theirs is as good as ours.
    if let Err(e) = p.pin(&path) {
        if !path.exists() {
            return Err(BpfError::Pin { path: path.clone(), source: e.into() });
        }
    }
    from()
}

/// Attach the endpoint's anti-spoofing program to `ifname` inside the namespace at
/// `netns_path` as a cls_bpf filter, even where the kernel has tcx: made without waiting
/// for an RCU grace period, so an attach is not held up by one. Returns whether it should
/// be upgraded to a tcx link ([`harden`], done in the background for a new endpoint):
/// whoever holds CAP_NET_ADMIN in the endpoint's namespace can delete a cls_bpf filter,
/// not a tcx link.
pub fn attach_fast(pins: &Pins, netns_path: &str, ifname: &str) -> Result<bool, BpfError> {
    attach_at(pins, Some(netns_path), ifname, link_pins(pins, netns_path, ifname), true)?;
    Ok(super::tc::tcx_supported())
}

/// Upgrade the anti-spoofing filter [`attach_fast`] made on `ifname` (in the namespace at
/// `netns_path`) to a tcx link, unless the interface is gone or is not `ifindex` any more.
pub fn harden(pins: &Pins, netns_path: &str, ifname: &str, ifindex: u32) -> Result<bool, BpfError> {
    let [eg, _] = link_pins(pins, netns_path, ifname);
    // From its pin only: an upgrade that outlived its instance (torn down meanwhile) must
    // not load the programs, and make their pins and maps, again.
    let Ok(mut out_prog) = classifier_from_pin(&pins.prog(TC_EP_OUT_PROG), TC_EP_OUT_PROG) else {
        return Ok(false);
    };
    crate::nl::with_netns(Path::new(netns_path), || {
        if crate::netns::ifindex(ifname) != Some(ifindex) {
            return Ok(false);
        }
        super::tc::upgrade_to_tcx(&mut out_prog, TC_EP_OUT_PROG, ifname, TcAttachType::Egress, &eg)
    })
    .map_err(|e| BpfError::Link { path: eg.clone(), source: format!("entering {netns_path}: {e}").into() })?
}

/// Attach the endpoint's anti-spoofing program to `ifname` (in the namespace at
/// `netns_path`, or this one), pinning its link at `at[0]`; `cls_only` as in
/// [`super::tc::attach_pinned`]. Nothing goes on the interface's ingress: what it
/// receives the kernel counts itself (see [`rx_counted_by_kernel`]); `at[1]` is where an
/// older version pinned its rx-counting filter.
pub fn attach_at(
    pins: &Pins,
    netns_path: Option<&str>,
    ifname: &str,
    at: [PathBuf; 2],
    cls_only: bool,
) -> Result<(), BpfError> {
    let pin = &at[0];
    crate::bpffs::create_private(pin.parent().expect("pin has a parent"))?;
    let mut p = endpoint_program(pins)?;
    crate::timing::mark("programs-opened");
    let prog = TC_EP_OUT_PROG;
    let kind = TcAttachType::Egress;
    // ifname resolves, and the attachment is made, in the endpoint's namespace.
    match netns_path {
        Some(ns) => crate::nl::with_netns(Path::new(ns), || {
            super::tc::attach_pinned(&mut p, prog, ifname, kind, pin, true, cls_only)
        })
        .map_err(|e| BpfError::Link { path: pin.to_path_buf(), source: format!("entering {ns}: {e}").into() })?,
        None => super::tc::attach_pinned(&mut p, prog, ifname, kind, pin, true, cls_only),
    }?;
    crate::timing::mark("programs-attached");
    Ok(())
}

/// Whether an endpoint interface's received frames are the kernel's own count of them
/// (its IFLA_STATS64 rx figures), not our rx-counting program's: true unless an older
/// version put that program on its ingress (pinned at `ingress_pin`, the second of
/// [`link_pins`]); such an interface goes on counting in its slot until it is re-created.
pub fn rx_counted_by_kernel(ingress_pin: &Path) -> bool {
    !ingress_pin.exists()
}

/// Before interface `ifindex` (`ifname` in the namespace at `netns_path`) of endpoint
/// `number` goes while the endpoint stays (`network disconnect`): what it received, as
/// the kernel counted it, becomes part of the endpoint's by-endpoint counters, so the
/// endpoint's totals keep it. (Where the endpoint goes too its counters go with it.)
pub fn keep_rx(pins: &Pins, ifindex: u32, number: u32, netns_path: &str, ifname: &str) {
    if !rx_counted_by_kernel(&link_pins(pins, netns_path, ifname)[1]) {
        return;
    }
    let rx = crate::nl::Nl::in_netns(Path::new(netns_path))
        .and_then(|nl| nl.link(ifname))
        .ok()
        .flatten()
        .filter(|l| l.index == ifindex)
        .and_then(|l| l.rx);
    if let Some((packets, bytes)) = rx {
        retire_rx(pins, number, packets, bytes);
    }
}

/// Add what an interface of `endpoint` received (as the kernel counted it) to the
/// endpoint's by-endpoint counters: its totals survive the interface.
fn retire_rx(pins: &Pins, endpoint: u32, packets: u64, bytes: u64) {
    if packets == 0 && bytes == 0 {
        return;
    }
    let Ok(mut by_ep) = open_by_endpoint(pins) else { return };
    let mut sum: Vec<EndpointCounters> = match by_ep.get(&endpoint, 0) {
        Ok(v) => v.iter().copied().collect(),
        Err(_) => match zeroes() {
            Some(z) => z.iter().copied().collect(),
            None => return,
        },
    };
    sum[0].rx_packets += packets;
    sum[0].rx_bytes += bytes;
    if let Ok(v) = PerCpuValues::try_from(sum) {
        let _ = by_ep.insert(endpoint, v, 0);
    }
}

/// Unpin an endpoint interface's links (and its namespace's pin dir when empty).
pub fn detach(pins: &Pins, netns_path: &str, ifname: &str) {
    detach_at(link_pins(pins, netns_path, ifname));
}

/// Unpin the links pinned at `paths` (and their dir when empty).
pub fn detach_at(paths: [PathBuf; 2]) {
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    if let Some(dir) = paths[0].parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Remove the identity entry of interface `ifindex` (if it is still endpoint `number`'s)
/// and the pins of its links.
pub fn forget(pins: &Pins, ifindex: u32, number: u32, netns_path: &str, ifname: &str) {
    forget_at(pins, ifindex, number, link_pins(pins, netns_path, ifname));
}

/// [`forget`] for links pinned at `paths`.
pub fn forget_at(pins: &Pins, ifindex: u32, number: u32, paths: [PathBuf; 2]) {
    forget_identity(pins, ifindex, number);
    detach_at(paths);
}

/// [`forget_at`] but for the link pins: the interface's programs stay attached (and, with
/// no identity, drop whatever it sends) until whoever deletes the interface unpins them.
pub fn forget_identity(pins: &Pins, ifindex: u32, number: u32) {
    // Whose the interface's slot is: ours, unless another endpoint's identity sits there.
    let mut ours = true;
    if let Ok(mut m) = open_endpoints(pins) {
        match m.get(&ifindex, 0) {
            Ok(v) if v.endpoint == number => {
                let _ = m.remove(&ifindex);
            }
            Ok(_) => ours = false,
            Err(_) => {}
        }
    }
    // After the identity is gone the programs count nothing more on this interface.
    if ours {
        retire(pins, ifindex, number);
    }
}

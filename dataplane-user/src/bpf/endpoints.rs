//! Endpoint interfaces: their identity map (anti-spoofing), their programs (tcx egress and
//! ingress, attached from inside the endpoint's namespace, pinned in the host's bpffs),
//! and their counters.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{tc::TcAttachType, SchedClassifier},
};
use dataplane_common::{
    maps::{ep_slot, ENDPOINTS_MAP, EP_COUNTERS_MAP, EP_SLOTS_MAP, TC_EP_IN_PROG, TC_EP_OUT_PROG},
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

/// Summed per-endpoint counters by endpoint number: the slots of its interfaces, plus
/// what it counted by endpoint (interfaces without a slot, interfaces gone).
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

/// Pin paths of an endpoint interface's two links.
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

/// The endpoint programs, loaded once and then reused from their pins: attaching an
/// endpoint then needs neither the ELF object, nor kernel BTF, nor the verifier.
fn endpoint_programs(pins: &Pins) -> Result<[SchedClassifier; 2], BpfError> {
    let paths = [pins.prog(TC_EP_OUT_PROG), pins.prog(TC_EP_IN_PROG)];
    let from = |p: &std::path::PathBuf, name: &'static str| {
        classifier_from_pin(p, name).map_err(|e| BpfError::Verify { name, source: Box::new(e) })
    };
    if paths.iter().all(|p| p.exists()) {
        if let (Ok(a), Ok(b)) = (from(&paths[0], TC_EP_OUT_PROG), from(&paths[1], TC_EP_IN_PROG)) {
            return Ok([a, b]);
        }
        // Stale pins (e.g. from an older layout): load afresh below.
        for p in &paths {
            let _ = std::fs::remove_file(p);
        }
    }
    crate::bpffs::create_private(&pins.progs_dir())?;
    let mut ebpf = load_object(&pins.maps_dir())?;
    for (name, path) in [(TC_EP_OUT_PROG, &paths[0]), (TC_EP_IN_PROG, &paths[1])] {
        let p: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(BpfError::MissingProgram { name })?
            .try_into()
            .map_err(|e| BpfError::Verify { name, source: Box::new(e) })?;
        p.load().map_err(|e| BpfError::Verify { name, source: Box::new(e) })?;
        // Another process may have pinned it meanwhile; theirs is as good as ours.
        if let Err(e) = p.pin(path) {
            if !path.exists() {
                return Err(BpfError::Pin { path: path.clone(), source: e.into() });
            }
        }
    }
    Ok([from(&paths[0], TC_EP_OUT_PROG)?, from(&paths[1], TC_EP_IN_PROG)?])
}

/// Attach the endpoint programs to `ifname` inside the namespace at `netns_path`, as
/// cls_bpf filters even where the kernel has tcx: made without waiting for RCU grace
/// periods, so an attach is not held up by them. Returns whether the anti-spoofing filter
/// should be upgraded to a tcx link ([`harden`], done in the background for a new
/// endpoint): whoever holds CAP_NET_ADMIN in the endpoint's namespace can delete a cls_bpf
/// filter, not a tcx link.
pub fn attach_fast(pins: &Pins, netns_path: &str, ifname: &str) -> Result<bool, BpfError> {
    attach_at(pins, Some(netns_path), ifname, link_pins(pins, netns_path, ifname), true)?;
    Ok(super::tc::tcx_supported())
}

/// Upgrade the anti-spoofing filter [`attach_fast`] made on `ifname` (in the namespace at
/// `netns_path`) to a tcx link, unless the interface is gone or is not `ifindex` any more.
/// The ingress program (rx counting) stays a cls_bpf filter: creating a tcx link holds
/// RTNL across an RCU grace period, which every other netlink user on the host waits
/// for, and deleting the ingress filter would only stop the endpoint's own rx counters
/// (a thorough reconcile finds and restores it).
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

/// Put the rx-counting program back on `ifname` as a cls_bpf filter (its filter was
/// deleted from inside the endpoint); the egress program is left as it is.
pub fn reattach_ingress(pins: &Pins, netns_path: &str, ifname: &str) -> Result<(), BpfError> {
    let [_, ing] = link_pins(pins, netns_path, ifname);
    let [_, mut in_prog] = endpoint_programs(pins)?;
    let _ = std::fs::remove_file(&ing);
    crate::nl::with_netns(Path::new(netns_path), || {
        super::tc::attach_pinned(&mut in_prog, TC_EP_IN_PROG, ifname, TcAttachType::Ingress, &ing, true, true)
    })
    .map_err(|e| BpfError::Link { path: ing.clone(), source: format!("entering {netns_path}: {e}").into() })?
}

/// Run `f` for an endpoint's egress and ingress programs (pinned at `at`: egress,
/// ingress) side by side: creating a tcx link waits for an RCU grace period (10-15 ms
/// here), and the two are independent, so the waits overlap. Returns (egress, ingress).
fn per_direction<T: Send>(
    pins: &Pins,
    at: &[PathBuf; 2],
    f: impl Fn(&'static str, SchedClassifier, TcAttachType, &Path) -> Result<T, BpfError> + Sync,
) -> Result<(T, T), BpfError> {
    let [eg, ing] = at;
    let [out_prog, in_prog] = endpoint_programs(pins)?;
    crate::timing::mark("programs-opened");
    std::thread::scope(|s| {
        let ingress = s.spawn(|| f(TC_EP_IN_PROG, in_prog, TcAttachType::Ingress, ing));
        let egress = f(TC_EP_OUT_PROG, out_prog, TcAttachType::Egress, eg);
        let ingress = ingress
            .join()
            .unwrap_or_else(|_| Err(BpfError::Link { path: ing.clone(), source: "attach thread panicked".into() }));
        Ok((egress?, ingress?))
    })
}

/// Attach the endpoint programs to `ifname` (in the namespace at `netns_path`, or this
/// one), pinning the two links at `at` (egress, ingress); `cls_only` as in
/// [`super::tc::attach_pinned`].
pub fn attach_at(
    pins: &Pins,
    netns_path: Option<&str>,
    ifname: &str,
    at: [PathBuf; 2],
    cls_only: bool,
) -> Result<(), BpfError> {
    crate::bpffs::create_private(at[0].parent().expect("pin has a parent"))?;
    per_direction(pins, &at, |prog, mut p, kind, pin| {
        // ifname resolves, and the attachment is made, in the endpoint's namespace.
        match netns_path {
            Some(ns) => crate::nl::with_netns(Path::new(ns), || {
                super::tc::attach_pinned(&mut p, prog, ifname, kind, pin, true, cls_only)
            })
            .map_err(|e| BpfError::Link { path: pin.to_path_buf(), source: format!("entering {ns}: {e}").into() })?,
            None => super::tc::attach_pinned(&mut p, prog, ifname, kind, pin, true, cls_only),
        }
    })?;
    crate::timing::mark("programs-attached");
    Ok(())
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

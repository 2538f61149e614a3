//! The dataplane's kernel programs. Entry points are thin: fetch, call the shared logic
//! in `dataplane-common`, act on its decision, count.
// Built for bpfel-unknown-none by dataplane-user/build.rs. On the host (e.g. `cargo clippy
// --workspace`) it compiles as an ordinary, empty binary so the code still gets checked.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Map keys stay passed by reference: the programs' code (and the verifier's view of it) is
// measured as it is, and a key by value is a copy the bench would have to clear first.
#![allow(clippy::needless_borrows_for_generic_args)]

mod packet;
// Built only into the bench's object (`--features bench`), never into the one we ship.
#[cfg(feature = "bench")]
mod bench;

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_MMAPABLE, BPF_NOEXIST, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_skb_vlan_pop, bpf_skb_vlan_push, bpf_xdp_adjust_head},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::{TcContext, XdpContext},
};
use dataplane_common::{
    admission_qinq, egress_check,
    frame::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_QINQ_9100, VID_MASK},
    group_claims,
    maps::{
        counter_slot, ep_slot, ADMIT_EMPTY, ADMIT_MAP_ENTRIES, ADMIT_MAX_ENTRIES, ADMIT_PROBES, ADMIT_SLOTS,
        COUNTERS_MAX_ENTRIES, ENDPOINTS_MAX_ENTRIES, EP_SLOTS, VLAN_MAX_ENTRIES, VLAN_XDP_ENTRIES,
    },
    AdmitKey, AdmitSlot, Conflict, Counter, EndpointCounters, EndpointInfo, Ip6Key, IpKey, OurIp, Packet, Reason,
    Verdict, VlanKey, VlanTrunk,
};

use aya_log_ebpf::debug;

use crate::packet::{tc_bounds, PacketBounds};

/// Admitted (parent ifindex, VLAN, destination MAC): an open-addressing table that user
/// space writes through a memory mapping (see `dataplane_common::maps::AdmitSlot`).
/// Pinned by name, so every program instance and every `dataplane` process shares it.
#[map(name = "DP_ADMIT")]
static DP_ADMIT: Array<AdmitSlot> = Array::pinned(ADMIT_MAP_ENTRIES, BPF_F_MMAPABLE);

/// The endpoint number the key with these words (`AdmitKey::words`) is admitted for, if
/// it is: the slots from the key's home on, compared as two words, until an empty slot or
/// ADMIT_PROBES of them.
#[inline(always)]
fn admitted((a, b): (u64, u32)) -> Option<u32> {
    let home = AdmitKey::home_slot_of((a, b));
    for i in 0..ADMIT_PROBES {
        let slot = DP_ADMIT.get((home + i) & (ADMIT_SLOTS - 1))?;
        let w = slot as *const AdmitSlot as *const u64;
        // SAFETY: a slot is 16 bytes, 8-aligned (map values are): two u64 reads.
        let (w0, w1) = unsafe { (*w, *w.add(1)) };
        if w0 == a && w1 as u32 == b {
            return Some((w1 >> 32) as u32);
        }
        if w0 as u32 == ADMIT_EMPTY {
            return None;
        }
    }
    None
}

/// Packets and bytes per (ifindex, reason), per CPU.
#[map(name = "DP_COUNTERS")]
static DP_COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTERS_MAX_ENTRIES, 0);

/// (trunk ifindex, VID) -> ifindex of the hidden end of that VLAN's device.
#[map(name = "DP_VLAN_DEVS")]
static DP_VLAN_DEVS: HashMap<VlanKey, u32> = HashMap::pinned(VLAN_MAX_ENTRIES, 0);

/// VID -> (trunk ifindex << 32 | hidden end ifindex): the eBPF VLAN devices XDP steers.
#[map(name = "DP_VLAN_XDP")]
static DP_VLAN_XDP: Array<u64> = Array::pinned(VLAN_XDP_ENTRIES, BPF_F_MMAPABLE);

/// Hidden end ifindex -> the trunk and VID its frames leave with.
#[map(name = "DP_VLAN_PEERS")]
static DP_VLAN_PEERS: HashMap<u32, VlanTrunk> = HashMap::pinned(VLAN_MAX_ENTRIES, 0);

/// ifindex of an endpoint interface (unique per instance) -> the identity it may send with.
#[map(name = "DP_ENDPOINTS")]
static DP_ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(ENDPOINTS_MAX_ENTRIES, 0);

/// Per-interface rx/tx/spoofed counters, per CPU, by slot (see `ep_slot`).
#[map(name = "DP_EP_SLOTS")]
static DP_EP_SLOTS: PerCpuArray<EndpointCounters> = PerCpuArray::pinned(EP_SLOTS, 0);

/// Per-endpoint rx/tx/spoofed counters, per CPU: interfaces without a slot.
#[map(name = "DP_EP_COUNTERS")]
static DP_EP_COUNTERS: PerCpuHashMap<u32, EndpointCounters> = PerCpuHashMap::pinned(ENDPOINTS_MAX_ENTRIES, 0);

/// (parent ifindex, VLAN, IPv4) -> the endpoint given that address, and its MAC.
#[map(name = "DP_OUR_IPS")]
static DP_OUR_IPS: HashMap<IpKey, OurIp> = HashMap::pinned(ADMIT_MAX_ENTRIES, 0);

/// (parent ifindex, VLAN, IPv6) -> the endpoint given that address, and its MAC.
#[map(name = "DP_OUR_IP6S")]
static DP_OUR_IP6S: HashMap<Ip6Key, OurIp> = HashMap::pinned(ADMIT_MAX_ENTRIES, 0);

/// Endpoint number -> frames from outside that used its MAC or claimed its address.
#[map(name = "DP_CONFLICTS")]
static DP_CONFLICTS: HashMap<u32, Conflict> = HashMap::pinned(ENDPOINTS_MAX_ENTRIES, 0);

/// The endpoint number the parent's own MAC is admitted under (not an endpoint).
const HOST_ENDPOINT: u32 = u32::MAX;

#[inline(always)]
fn note_conflict(endpoint: u32, ip: bool, other: [u8; 6]) {
    match DP_CONFLICTS.get_ptr_mut(endpoint) {
        // SAFETY: map value pointer from a successful lookup; a lost increment between
        // CPUs is acceptable for a conflict report.
        Some(c) => unsafe {
            if ip {
                (*c).ip_frames += 1;
                (*c).last_mac = other;
            } else {
                (*c).mac_frames += 1;
            }
        },
        None => {
            let c = Conflict {
                mac_frames: u64::from(!ip),
                ip_frames: u64::from(ip),
                last_mac: if ip { other } else { [0; 6] },
                pad: [0; 2],
            };
            let _ = DP_CONFLICTS.insert(endpoint, c, BPF_NOEXIST as u64);
        }
    }
}

/// A broadcast/multicast frame from outside (our endpoints' frames leave through the
/// parent, they do not arrive on it) with one of our MACs as source, or ARP / a neighbour
/// advertisement claiming one of our addresses for another MAC: a conflict.
#[inline(always)]
fn note_claims(pkt: &PacketBounds, ifindex: u32) {
    let len = pkt.len() as u64;
    let claims = group_claims(pkt, ifindex);
    if claims.src.found {
        let k = claims.src.key;
        if let Some(ep) = admitted(k.words()) {
            if ep != HOST_ENDPOINT {
                note_conflict(ep, false, k.mac);
                count(ifindex, Reason::ConflictMac, len);
            }
        }
    }
    if claims.ip.found {
        let (k, mac) = (claims.ip.key, claims.ip.mac);
        ip_claim(DP_OUR_IPS.get_ptr(&k), mac, ifindex, len);
    }
    if claims.ip6.found {
        ip_claim(DP_OUR_IP6S.get_ptr(&claims.ip6.key), claims.ip6.mac, ifindex, len);
    }
}

/// `ours`: the address-map entry the claim's address found, if any.
#[inline(always)]
fn ip_claim(ours: Option<*const OurIp>, mac: [u8; 6], ifindex: u32, len: u64) {
    // SAFETY: map value pointer from a successful lookup, copied at once.
    let Some(ours) = ours.map(|v| unsafe { *v }) else { return };
    if ours.mac != mac {
        note_conflict(ours.endpoint, true, mac);
        count(ifindex, Reason::ConflictIp, len);
    }
}

#[xdp]
pub fn dp_parent(ctx: XdpContext) -> u32 {
    let pkt = PacketBounds::xdp(&ctx);
    let ifindex = ctx.ingress_ifindex() as u32;
    // A QinQ stack passes only for a configured (outer, inner) pair on this parent.
    let decision = admission_qinq(
        &pkt,
        ifindex,
        |_, words| admitted(words).is_some(),
        |outer, vid| DP_VLAN_DEVS.get_ptr(&VlanKey { trunk_ifindex: ifindex, vid, outer }).is_some(),
    );
    count(ifindex, decision.reason, pkt.len() as u64);
    if matches!(decision.reason, Reason::PassBroadcast | Reason::PassMulticast) {
        note_claims(&pkt, ifindex);
    }
    if decision.verdict == Verdict::Drop {
        // Off unless user space loads the programs with a debug log level; the level is
        // a load-time constant, so the verifier removes this when it is off. The MAC is
        // read inside the macro, after its level check: read before it, its six bytes
        // were loaded and put together on every dropped frame.
        debug!(
            &ctx,
            "dp_parent: drop ifindex={} reason={} dst={:mac}",
            ifindex,
            decision.reason as u32,
            pkt.read::<6>(0).unwrap_or([0; 6])
        );
    }
    match decision.verdict {
        Verdict::Pass => steer_vlan(&ctx, &pkt, ifindex),
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// An admitted frame with one in-band 802.1Q tag of an eBPF VLAN device: popped here and
/// redirected out of the device's hidden end, so it arrives on `IFACE.VID` without a skb
/// being built for the trunk and queued again (the trunk's tc program steers tags that
/// XDP does not see, e.g. ones a NIC moved into the descriptor, and every other shape).
/// Anything else passes on to the stack.
#[inline(always)]
fn steer_vlan(ctx: &XdpContext, pkt: &PacketBounds, ifindex: u32) -> u32 {
    let Some(h) = pkt.read::<6>(12) else { return xdp_action::XDP_PASS };
    let next = u16::from_be_bytes([h[4], h[5]]);
    if u16::from_be_bytes([h[0], h[1]]) != ETH_P_8021Q
        || next == ETH_P_8021Q
        || next == ETH_P_8021AD
        || next == ETH_P_QINQ_9100
    {
        return xdp_action::XDP_PASS;
    }
    let vid = u16::from_be_bytes([h[2], h[3]]) & VID_MASK;
    // Not here: a kernel VLAN device (the kernel's demux delivers it), an unknown VLAN
    // (admission dropped it already unless it is a group frame, which tc then drops), or
    // an eBPF device the trunk's tc program steers.
    let dev = match DP_VLAN_XDP.get(u32::from(vid)) {
        Some(e) if vid != 0 && (*e >> 32) as u32 == ifindex => *e as u32,
        _ => return xdp_action::XDP_PASS,
    };
    let len = pkt.len() as u64;
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 16 > end {
        return xdp_action::XDP_PASS;
    }
    // The addresses move over the tag, which adjust_head then drops. Read into registers
    // first, as two words: moved as one 12-byte block, the overlapping copy became a call
    // of a byte-at-a-time memmove subprogram on every steered frame.
    // SAFETY: [start, start + 16) was just checked to lie inside the frame.
    unsafe {
        let dst = core::ptr::read_unaligned(start as *const u64);
        let src = core::ptr::read_unaligned((start + 8) as *const u32);
        core::ptr::write_unaligned((start + 12) as *mut u32, src);
        core::ptr::write_unaligned((start + 4) as *mut u64, dst);
    }
    // SAFETY: helper call on our own context; no packet pointer is used after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, 4) } != 0 {
        count(ifindex, Reason::DropMalformed, len);
        return xdp_action::XDP_DROP;
    }
    count(ifindex, Reason::VlanSteered, len);
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(dev, 0) as u32 }
}

/// Visible end of an eBPF VLAN device: everything passes. Attached only so that the
/// veth keeps NAPI on for the frames `dp_parent` redirects into the device.
#[xdp]
pub fn dp_vlan_rx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Trunk ingress (tcx): a tagged frame goes to its VLAN's eBPF device with the tag popped,
/// or on to the kernel's VLAN demux when that VID is a kernel device (map value 0); tags
/// for VLANs without a network, and tag stacks, are dropped; untagged frames pass.
///
/// On the live path the stack has already moved the outer tag into `vlan_tci`
/// (skb_vlan_untag runs before tc ingress); a tag still in the packet (e.g. test runs)
/// is read from there.
#[classifier]
pub fn dp_trunk_in(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the program's duration.
    let (present, tci, vproto, proto, ifindex, len) = unsafe {
        ((*skb).vlan_present, (*skb).vlan_tci, (*skb).vlan_proto, (*skb).protocol, (*skb).ifindex, (*skb).len)
    };
    // (outer TPID, outer VID, what follows the outer tag, offset of a second tag's TCI)
    let (tpid, vid, inner, inner_tci_at) = if present != 0 {
        (u16::from_be(vproto as u16), (tci as u16) & VID_MASK, u16::from_be(proto as u16), 14usize)
    } else {
        let pkt = tc_bounds(&ctx, len, 22);
        let Some(hdr) = pkt.read::<6>(12) else { return TC_ACT_OK };
        let outer = u16::from_be_bytes([hdr[0], hdr[1]]);
        if outer == ETH_P_QINQ_9100 {
            // The stack leaves this TPID in the packet: a pre-standard S-tag, never ours.
            count(ifindex, Reason::DropStackedTags, u64::from(len));
            return TC_ACT_SHOT;
        }
        if outer != ETH_P_8021Q && outer != ETH_P_8021AD {
            return TC_ACT_OK;
        }
        (outer, u16::from_be_bytes([hdr[2], hdr[3]]) & VID_MASK, u16::from_be_bytes([hdr[4], hdr[5]]), 18usize)
    };
    // A second tag: only an 802.1ad S-tag over an 802.1Q C-tag of a configured QinQ
    // network goes on; every other stack is a VLAN-hopping shape.
    let mut outer = 0u16;
    let mut vid = vid;
    if inner == ETH_P_8021Q || inner == ETH_P_8021AD || inner == ETH_P_QINQ_9100 {
        let pkt = tc_bounds(&ctx, len, inner_tci_at as u32 + 4);
        let second = pkt.read::<4>(inner_tci_at);
        let (Some(t), true, true) = (second, tpid == ETH_P_8021AD, inner == ETH_P_8021Q) else {
            count(ifindex, Reason::DropStackedTags, u64::from(len));
            return TC_ACT_SHOT;
        };
        let next = u16::from_be_bytes([t[2], t[3]]);
        if next == ETH_P_8021Q || next == ETH_P_8021AD || next == ETH_P_QINQ_9100 {
            count(ifindex, Reason::DropStackedTags, u64::from(len));
            return TC_ACT_SHOT;
        }
        outer = vid;
        vid = u16::from_be_bytes([t[0], t[1]]) & VID_MASK;
        if outer == 0 || vid == 0 {
            count(ifindex, Reason::DropStackedTags, u64::from(len));
            return TC_ACT_SHOT;
        }
    }
    if vid == 0 {
        // Priority tag: untagged traffic with a PCP.
        return TC_ACT_OK;
    }
    let key = VlanKey { trunk_ifindex: ifindex, vid, outer };
    let Some(dev) = DP_VLAN_DEVS.get_ptr(&key) else {
        // An unconfigured pair of tags is a stack; one unknown tag an unknown VLAN.
        let reason = if outer != 0 { Reason::DropStackedTags } else { Reason::DropUnknownVlan };
        count(ifindex, reason, u64::from(len));
        debug!(&ctx, "dp_trunk_in: drop ifindex={} unknown vlan={} outer={}", ifindex, vid, outer);
        return TC_ACT_SHOT;
    };
    // SAFETY: map value pointer from a successful lookup.
    let dev = unsafe { *dev };
    if dev == 0 {
        // A kernel VLAN device of ours: the kernel's demux delivers it (tags and all).
        count(ifindex, Reason::VlanSteered, u64::from(len));
        return TC_ACT_OK;
    }
    // SAFETY: helper calls on our own context (the second pop takes the inner tag, which
    // the first moved into the metadata).
    if unsafe { bpf_skb_vlan_pop(skb) } != 0 || (outer != 0 && unsafe { bpf_skb_vlan_pop(skb) } != 0) {
        count(ifindex, Reason::DropMalformed, u64::from(len));
        return TC_ACT_SHOT;
    }
    count(ifindex, Reason::VlanSteered, u64::from(len));
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(dev, 0) as i32 }
}

/// Ingress of the hidden end of an eBPF VLAN device, i.e. everything sent out of the
/// user-visible `IFACE.VID`: push the VLAN's tag and send it out of the trunk.
#[classifier]
pub fn dp_vlan_out(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the program's duration.
    let (present, ifindex, len) = unsafe { ((*skb).vlan_present, (*skb).ifindex, (*skb).len) };
    let Some(t) = DP_VLAN_PEERS.get_ptr(ifindex) else {
        return TC_ACT_SHOT;
    };
    // SAFETY: map value pointer from a successful lookup.
    let t = unsafe { *t };
    if present != 0 {
        // Already tagged inside a VLAN: a double-tagging (VLAN hopping) attempt.
        count(t.trunk_ifindex, Reason::DropStackedTags, u64::from(len));
        return TC_ACT_SHOT;
    }
    // SAFETY: helper calls on our own context. For QinQ the C-tag goes first: pushing the
    // S-tag then moves it into the packet, so the wire order is S-tag, C-tag.
    if unsafe { bpf_skb_vlan_push(skb, ETH_P_8021Q.to_be(), t.vid) } != 0
        || (t.outer != 0 && unsafe { bpf_skb_vlan_push(skb, ETH_P_8021AD.to_be(), t.outer) } != 0)
    {
        count(t.trunk_ifindex, Reason::DropMalformed, u64::from(len));
        return TC_ACT_SHOT;
    }
    count(t.trunk_ifindex, Reason::VlanTagged, u64::from(len));
    // SAFETY: plain helper call.
    let rc = unsafe { bpf_redirect(t.trunk_ifindex, 0) } as i32;
    if rc == TC_ACT_REDIRECT {
        rc
    } else {
        TC_ACT_SHOT
    }
}

/// The endpoint interface a tc program runs on: its ifindex (read once per packet) and
/// its identity, read in place (a map value stays valid while the program runs).
struct Ep<'a> {
    ifindex: u32,
    info: &'a EndpointInfo,
}

#[inline(always)]
fn endpoint_of(ctx: &TcContext) -> Option<Ep<'static>> {
    // SAFETY: the context pointer is valid for the program's duration.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: map value pointer from a successful lookup, valid under RCU for this run.
    DP_ENDPOINTS.get_ptr(ifindex).map(|p| Ep { ifindex, info: unsafe { &*p } })
}

impl Ep<'_> {
    /// Count a frame in the interface's slot, or by endpoint for an interface without one.
    #[inline(always)]
    fn count(&self, rx: u64, tx: u64, spoofed: u64, bytes: u64) {
        let d = EndpointCounters::frame(rx, tx, spoofed, bytes);
        let endpoint = self.info.endpoint;
        let c = match ep_slot(self.ifindex).and_then(|s| DP_EP_SLOTS.get_ptr_mut(s)) {
            Some(c) => c,
            None => match DP_EP_COUNTERS.get_ptr_mut(endpoint) {
                Some(c) => c,
                None => {
                    let _ = DP_EP_COUNTERS.insert(endpoint, d, BPF_NOEXIST as u64);
                    return;
                }
            },
        };
        // SAFETY: per-CPU value, only this CPU writes it while this program runs.
        unsafe { (*c).add(&d) };
    }
}

/// Egress (tcx) of an endpoint's interface: it may only send as itself. Sits on the
/// endpoint's own device so bridge-mode siblings are covered too (their frames never
/// reach the parent). Interfaces without an entry send nothing: fail closed.
#[classifier]
pub fn dp_ep_out(ctx: TcContext) -> i32 {
    let Some(ep) = endpoint_of(&ctx) else {
        return TC_ACT_SHOT;
    };
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the program's duration.
    let (present, len) = unsafe { ((*skb).vlan_present, (*skb).len) };
    if present != 0 {
        ep.count(0, 0, 1, u64::from(len));
        return TC_ACT_SHOT;
    }
    // Headers may sit in paged data; make the first bytes directly readable.
    let pkt = tc_bounds(&ctx, len, 64);
    let d = egress_check(&pkt, ep.info);
    match d.verdict {
        Verdict::Pass => {
            ep.count(0, 1, 0, u64::from(len));
            TC_ACT_OK
        }
        Verdict::Drop => {
            ep.count(0, 0, 1, u64::from(len));
            debug!(&ctx, "dp_ep_out: drop endpoint={} reason={}", ep.info.endpoint, d.reason as u32);
            TC_ACT_SHOT
        }
    }
}

/// Ingress of an endpoint interface an older version made: rx accounting only (new
/// interfaces run nothing on ingress; the kernel's per-interface statistics count what
/// they receive, without a program call per frame). An interface with a
/// slot counts there without looking its endpoint up (the slot is zeroed for each new
/// interface, and only interfaces in DP_ENDPOINTS are read back), so no hash lookup runs
/// per received frame.
#[classifier]
pub fn dp_ep_in(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's duration.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    if let Some(c) = ep_slot(ifindex).and_then(|s| DP_EP_SLOTS.get_ptr_mut(s)) {
        // SAFETY: per-CPU value, only this CPU writes it while this program runs.
        unsafe { (*c).add(&EndpointCounters::frame(1, 0, 0, u64::from(len))) };
        return TC_ACT_OK;
    }
    // Interfaces made before slots existed count by endpoint.
    if let Some(ep) = endpoint_of(&ctx) {
        ep.count(1, 0, 0, u64::from(len));
    }
    TC_ACT_OK
}

#[inline(always)]
fn count(ifindex: u32, reason: Reason, bytes: u64) {
    if let Some(c) = DP_COUNTERS.get_ptr_mut(counter_slot(ifindex, reason)) {
        // SAFETY: per-CPU value, only this CPU writes it while this program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

//! The dataplane's kernel programs. Entry points are thin: fetch, call the shared logic
//! in `dataplane-common`, act on its decision, count.
// Built for bpfel-unknown-none by dataplane-user/build.rs. On the host (e.g. `cargo clippy
// --workspace`) it compiles as an ordinary, empty binary so the code still gets checked.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

mod packet;

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    macros::{map, xdp},
    maps::{HashMap, PerCpuHashMap},
    programs::XdpContext,
};
use dataplane_common::{
    admission,
    maps::{ADMIT_MAX_ENTRIES, COUNTERS_MAX_ENTRIES},
    AdmitKey, AdmitValue, Counter, CounterKey, Reason, Verdict,
};

use crate::packet::XdpPacket;

/// Admitted (parent ifindex, VLAN, destination MAC). Pinned by name, so every program
/// instance and every `dataplane` process shares the one map under the bpffs dir.
#[map(name = "DP_ADMIT")]
static DP_ADMIT: HashMap<AdmitKey, AdmitValue> = HashMap::pinned(ADMIT_MAX_ENTRIES, 0);

/// Packets and bytes per (ifindex, reason), per CPU.
#[map(name = "DP_COUNTERS")]
static DP_COUNTERS: PerCpuHashMap<CounterKey, Counter> =
    PerCpuHashMap::pinned(COUNTERS_MAX_ENTRIES, 0);

#[xdp]
pub fn dp_parent(ctx: XdpContext) -> u32 {
    let pkt = XdpPacket::new(&ctx);
    let ifindex = ctx.ingress_ifindex() as u32;
    let decision = admission(&pkt, ifindex, |key| DP_ADMIT.get_ptr(key).is_some());
    count(ifindex, decision.reason, pkt.len_bytes());
    match decision.verdict {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn count(ifindex: u32, reason: Reason, bytes: u64) {
    let key = CounterKey { ifindex, reason: reason as u32 };
    match DP_COUNTERS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it while this program runs.
        Some(c) => unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        },
        None => {
            // A full map only loses the count, never the verdict.
            let _ = DP_COUNTERS.insert(key, Counter { packets: 1, bytes }, BPF_NOEXIST as u64);
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

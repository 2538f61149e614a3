//! Baselines for `cargo xtask bench`, loaded the same way as the real programs: they do
//! nothing but return, so a ratio against them isolates the cost of our logic. Only in
//! the bench's object (feature `bench`).

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    macros::{classifier, map, xdp},
    programs::{TcContext, XdpContext},
};

/// XDP pass-all baseline.
#[xdp]
pub fn dp_bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Bare XDP_DROP baseline.
#[xdp]
pub fn dp_bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Live-frame generator: every test-run frame is transmitted out of the interface.
#[xdp]
pub fn dp_bench_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// TC pass-all baseline.
#[classifier]
pub fn dp_bench_pass_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// Header the generator rewrites into every frame (bench only, not pinned). A receiver
/// that edits the frame in place (VLAN pop) edits the generator's recycled page too, so
/// frames of tagged runs get their first 18 bytes restored before each transmit.
#[map(name = "DP_BENCH_HDR")]
static DP_BENCH_HDR: aya_ebpf::maps::Array<[u8; 20]> = aya_ebpf::maps::Array::with_max_entries(1, 0);

/// Live-frame generator for tagged frames: restore the header, transmit.
#[xdp]
pub fn dp_bench_tx_hdr(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 18 > end {
        return xdp_action::XDP_ABORTED;
    }
    if let Some(h) = DP_BENCH_HDR.get(0) {
        // SAFETY: [start, start + 18) was checked against data_end above.
        unsafe { core::ptr::copy_nonoverlapping(h.as_ptr(), start as *mut u8, 18) };
    }
    xdp_action::XDP_TX
}

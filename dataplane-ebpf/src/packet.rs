//! The only raw packet accessor in the eBPF crate.

use aya_ebpf::programs::{TcContext, XdpContext};
use dataplane_common::Packet;

/// The `[data, data_end)` window of an XDP frame or of a TC skb's linear part.
pub struct PacketBounds {
    start: usize,
    end: usize,
}

impl PacketBounds {
    #[inline(always)]
    pub fn xdp(ctx: &XdpContext) -> Self {
        PacketBounds { start: ctx.data(), end: ctx.data_end() }
    }

    #[inline(always)]
    pub fn tc(ctx: &TcContext) -> Self {
        PacketBounds { start: ctx.data(), end: ctx.data_end() }
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }
}

impl Packet for PacketBounds {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // The verifier accepts the read only because this comparison against data_end
        // happens on the very pointer that is then dereferenced.
        let at = self.start + offset;
        if at + N > self.end {
            return None;
        }
        // SAFETY: [at, at + N) was just checked to lie inside the packet.
        Some(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) })
    }
}

/// Bounds of a TC skb whose first `want` bytes (or all of it, if shorter) are directly
/// readable, pulling paged data into the linear part only when it is not already there
/// (the common case needs no helper call).
#[inline(always)]
pub fn tc_bounds(ctx: &TcContext, skb_len: u32, want: u32) -> PacketBounds {
    let need = if skb_len < want { skb_len } else { want };
    let b = PacketBounds::tc(ctx);
    if b.len() >= need as usize {
        return b;
    }
    let _ = ctx.pull_data(need);
    PacketBounds::tc(ctx)
}

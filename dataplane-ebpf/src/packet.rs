//! The only raw packet accessor in the eBPF crate.

use aya_ebpf::programs::{TcContext, XdpContext};
use dataplane_common::Packet;

pub struct XdpPacket {
    start: usize,
    end: usize,
}

impl XdpPacket {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        XdpPacket { start: ctx.data(), end: ctx.data_end() }
    }

    #[inline(always)]
    pub fn len_bytes(&self) -> u64 {
        (self.end - self.start) as u64
    }
}

impl Packet for XdpPacket {
    #[inline(always)]
    fn len(&self) -> usize {
        self.end - self.start
    }

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

/// The same bounds-checked reader over a TC (skb) context's linear data.
pub struct SkbPacket {
    inner: XdpPacket,
}

impl SkbPacket {
    #[inline(always)]
    pub fn new(ctx: &TcContext) -> Self {
        SkbPacket { inner: XdpPacket { start: ctx.data(), end: ctx.data_end() } }
    }
}

impl Packet for SkbPacket {
    #[inline(always)]
    fn len(&self) -> usize {
        self.inner.len()
    }

    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.inner.read(offset)
    }
}

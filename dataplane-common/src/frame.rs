//! Frame parsing and the admission decision, written once for the kernel and the host.
//!
//! The eBPF programs cannot hand us a slice (the verifier only trusts pointer reads that
//! are compared against `data_end` right before), so the parser is generic over a tiny
//! [`Packet`] trait: a byte slice on the host, a bounds-checked context reader in the
//! kernel. Every function here is `#[inline(always)]` because BPF-to-BPF calls with
//! generic arguments are not worth the verifier's trouble.

use crate::maps::{AdmitKey, EndpointInfo, Ip6Key, IpKey, Reason, EP_HAS_IPV4, EP_HAS_IPV6, VLAN_UNTAGGED};

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// The pre-standard QinQ TPID some switches still use: a tag like any other.
pub const ETH_P_QINQ_9100: u16 = 0x9100;
pub const IPV4_MIN_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
/// ARP for Ethernet/IPv4: 8 fixed bytes + 2 * (6 + 4).
pub const ARP_ETH_IPV4_LEN: usize = 28;
pub const VID_MASK: u16 = 0x0fff;
pub const VID_RESERVED: u16 = 0x0fff;

/// Read-only view of a frame. Reading is the only operation on purpose: completeness is
/// proven by reads, never by comparing lengths (see `check_l3`).
pub trait Packet {
    /// `N` bytes at `offset`, or `None` if the frame is shorter than `offset + N`.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Packet for [u8] {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        let bytes = self.get(offset..end)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Some(out)
    }
}

/// Why a frame could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than the headers it announces.
    Truncated,
    /// VLAN id 4095, which 802.1Q reserves.
    ReservedVid,
    /// Two or more VLAN tags.
    StackedTags,
    /// An IP header whose version or length fields contradict the EtherType.
    BadL3Header,
}

impl Malformed {
    #[inline(always)]
    pub const fn reason(self) -> Reason {
        match self {
            Malformed::StackedTags => Reason::DropStackedTags,
            _ => Reason::DropMalformed,
        }
    }
}

/// The L2 facts the dataplane decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2Header {
    pub dst: [u8; 6],
    /// `dst` as the little-endian 16-bit and 32-bit words it starts with, the way the
    /// admission key is hashed and compared ([`AdmitKey::words_of`]).
    pub dst_words: (u16, u32),
    pub src: [u8; 6],
    /// VLAN id from an in-packet 802.1Q tag; [`VLAN_UNTAGGED`] without one (or VID 0).
    pub vlan: u16,
    /// Whether an in-packet tag was present (a priority tag counts).
    pub tagged: bool,
    /// EtherType after any tag.
    pub ethertype: u16,
    /// Offset of the L3 header.
    pub l3_offset: usize,
}

/// Parse Ethernet, at most one 802.1Q tag, and check that the L3 header the EtherType
/// announces (IPv4, IPv6, ARP) is complete. A frame that passes this is "complete".
#[inline(always)]
pub fn parse_l2<P: Packet + ?Sized>(p: &P) -> Result<L2Header, Malformed> {
    let eth: [u8; ETH_HLEN] = p.read(0).ok_or(Malformed::Truncated)?;
    let dst_words = mac_words(p).ok_or(Malformed::Truncated)?;
    let dst = mac_of_words(dst_words);
    let mut src = [0u8; 6];
    src.copy_from_slice(&eth[6..12]);
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut vlan = VLAN_UNTAGGED;
    let mut tagged = false;
    let mut l3_offset = ETH_HLEN;

    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_9100 {
        let tag: [u8; VLAN_HLEN] = p.read(ETH_HLEN).ok_or(Malformed::Truncated)?;
        let vid = u16::from_be_bytes([tag[0], tag[1]]) & VID_MASK;
        if vid == VID_RESERVED {
            return Err(Malformed::ReservedVid);
        }
        let inner = u16::from_be_bytes([tag[2], tag[3]]);
        if ethertype != ETH_P_8021Q || inner == ETH_P_8021Q || inner == ETH_P_8021AD || inner == ETH_P_QINQ_9100 {
            // An S-tag, or a tag inside a tag: until QinQ parents exist, nothing
            // legitimate arrives like this, and it is how VLAN hopping is attempted.
            return Err(Malformed::StackedTags);
        }
        vlan = vid;
        tagged = true;
        ethertype = inner;
        l3_offset = ETH_HLEN + VLAN_HLEN;
    }

    check_l3(p, ethertype, l3_offset)?;
    Ok(L2Header { dst, dst_words, src, vlan, tagged, ethertype, l3_offset })
}

/// The destination MAC as two words read straight from the frame: kept as bytes from one
/// read of the Ethernet header, it was six byte loads held apart until the hash put them
/// together again.
#[inline(always)]
fn mac_words<P: Packet + ?Sized>(p: &P) -> Option<(u16, u32)> {
    Some((u16::from_le_bytes(p.read::<2>(0)?), u32::from_le_bytes(p.read::<4>(2)?)))
}

#[inline(always)]
fn mac_of_words((lo, hi): (u16, u32)) -> [u8; 6] {
    let (lo, hi) = (lo.to_le_bytes(), hi.to_le_bytes());
    [lo[0], lo[1], hi[0], hi[1], hi[2], hi[3]]
}

/// An 802.1ad S-tag followed by an 802.1Q C-tag (QinQ): the outer VID and the header with
/// the inner VID, if the frame has that shape and is complete.
#[inline(always)]
pub fn parse_qinq<P: Packet + ?Sized>(p: &P) -> Option<(u16, L2Header)> {
    let eth: [u8; ETH_HLEN + 2 * VLAN_HLEN] = p.read(0)?;
    let outer_tpid = u16::from_be_bytes([eth[12], eth[13]]);
    let inner_tpid = u16::from_be_bytes([eth[16], eth[17]]);
    if outer_tpid != ETH_P_8021AD || inner_tpid != ETH_P_8021Q {
        return None;
    }
    let outer = u16::from_be_bytes([eth[14], eth[15]]) & VID_MASK;
    let inner = u16::from_be_bytes([eth[18], eth[19]]) & VID_MASK;
    let ethertype = u16::from_be_bytes([eth[20], eth[21]]);
    if outer == 0 || inner == 0 || outer == VID_RESERVED || inner == VID_RESERVED {
        return None;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_9100 {
        return None;
    }
    let l3_offset = ETH_HLEN + 2 * VLAN_HLEN;
    check_l3(p, ethertype, l3_offset).ok()?;
    let dst_words = mac_words(p)?;
    let dst = mac_of_words(dst_words);
    let mut src = [0u8; 6];
    src.copy_from_slice(&eth[6..12]);
    Some((outer, L2Header { dst, dst_words, src, vlan: inner, tagged: true, ethertype, l3_offset }))
}

/// Completeness is checked by reading the last byte a header needs, never by comparing
/// lengths: in the kernel only a pointer compared against `data_end` makes later reads
/// legal, and LLVM would otherwise fold those pointer checks into the length comparison.
#[inline(always)]
fn check_l3<P: Packet + ?Sized>(p: &P, ethertype: u16, off: usize) -> Result<(), Malformed> {
    match ethertype {
        ETH_P_IPV4 => {
            let first: [u8; 1] = p.read(off).ok_or(Malformed::Truncated)?;
            let version = first[0] >> 4;
            let hlen = ((first[0] & 0x0f) as usize) * 4;
            if version != 4 || hlen < IPV4_MIN_HLEN {
                return Err(Malformed::BadL3Header);
            }
            p.read::<1>(off + IPV4_MIN_HLEN - 1).ok_or(Malformed::Truncated)?;
            p.read::<1>(off + hlen - 1).ok_or(Malformed::Truncated)?;
        }
        ETH_P_IPV6 => {
            let first: [u8; 1] = p.read(off).ok_or(Malformed::Truncated)?;
            if first[0] >> 4 != 6 {
                return Err(Malformed::BadL3Header);
            }
            p.read::<1>(off + IPV6_HLEN - 1).ok_or(Malformed::Truncated)?;
        }
        ETH_P_ARP => {
            p.read::<1>(off + ARP_ETH_IPV4_LEN - 1).ok_or(Malformed::Truncated)?;
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
pub const fn is_group(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 1
}

#[inline(always)]
pub const fn is_broadcast(mac: &[u8; 6]) -> bool {
    mac[0] == 0xff && mac[1] == 0xff && mac[2] == 0xff && mac[3] == 0xff && mac[4] == 0xff && mac[5] == 0xff
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
}

impl Decision {
    #[inline(always)]
    const fn of(reason: Reason) -> Decision {
        let verdict = if reason.is_drop() { Verdict::Drop } else { Verdict::Pass };
        Decision { verdict, reason }
    }
}

/// Admission on a parent interface: complete unicast frames pass only to admitted
/// (ifindex, VLAN, destination MAC); complete group frames pass; everything else drops.
/// `admitted` is the table lookup, given the key and its [`AdmitKey::words`] (the kernel
/// program looks up by the words, read from the frame as words; tests by the key). Frames
/// whose tag XDP cannot see are covered by the untagged entry user space writes for VLAN
/// endpoints too (see the comment above `VLAN_UNTAGGED`'s neighbours in maps.rs).
#[inline(always)]
pub fn admission<P, F>(p: &P, ifindex: u32, admitted: F) -> Decision
where
    P: Packet + ?Sized,
    F: Fn(&AdmitKey, (u64, u32)) -> bool,
{
    admission_qinq(p, ifindex, admitted, |_, _| false)
}

/// [`admission`] that also takes an 802.1ad S-tag followed by an 802.1Q C-tag when
/// `qinq(outer, inner)` says that pair is a configured QinQ network on this parent; the
/// frame is then admitted by its inner VID. Every other stack stays refused.
#[inline(always)]
pub fn admission_qinq<P, F, Q>(p: &P, ifindex: u32, admitted: F, qinq: Q) -> Decision
where
    P: Packet + ?Sized,
    F: Fn(&AdmitKey, (u64, u32)) -> bool,
    Q: Fn(u16, u16) -> bool,
{
    let hdr = match parse_l2(p) {
        Ok(h) => h,
        Err(Malformed::StackedTags) => match parse_qinq(p) {
            Some((outer, h)) if qinq(outer, h.vlan) => h,
            _ => return Decision::of(Reason::DropStackedTags),
        },
        Err(m) => return Decision::of(m.reason()),
    };
    if is_group(&hdr.dst) {
        return Decision::of(if is_broadcast(&hdr.dst) { Reason::PassBroadcast } else { Reason::PassMulticast });
    }
    let key = AdmitKey { ifindex, vlan: hdr.vlan, mac: hdr.dst };
    let (lo, hi) = hdr.dst_words;
    if admitted(&key, AdmitKey::words_of(ifindex, hdr.vlan, lo, hi)) {
        Decision::of(Reason::PassAdmitted)
    } else {
        Decision::of(Reason::DropUnknownDestination)
    }
}

/// What a broadcast/multicast frame arriving from outside says about addresses: the
/// admission key of its source MAC (a MAC of ours there is a MAC conflict), and for ARP
/// the sender's address key and MAC (one of our addresses with another MAC is an IP
/// conflict). Unicast frames are not looked at: the admission fast path stays as it is,
/// and a host that uses our MAC or address broadcasts (ARP) sooner or later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The frame's source, as an admission key.
    pub src: Claim<AdmitKey>,
    /// An ARP sender's address and MAC.
    pub ip: Claim<IpKey>,
    /// A neighbour advertisement's target and target link-layer address.
    pub ip6: Claim<Ip6Key>,
}

/// A claim found in a frame (a key and the MAC that claims it), or `found == false` with
/// every field zero. Not an `Option`: an absent one's payload is undefined, and LLVM may
/// then carry a stale register or read a stack slot nothing wrote on that path, which the
/// verifiers of 5.10-5.15 refuse ("invalid read from stack", "pointer arithmetic with >>=").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim<K: Copy> {
    pub found: bool,
    pub key: K,
    pub mac: [u8; 6],
}

impl<K: Copy> Claim<K> {
    fn of(key: K, mac: [u8; 6]) -> Claim<K> {
        Claim { found: true, key, mac }
    }

    /// As an `Option`, for code that runs on the host.
    pub fn get(&self) -> Option<(K, [u8; 6])> {
        self.found.then_some((self.key, self.mac))
    }
}

impl Claim<AdmitKey> {
    pub const NONE: Self = Claim { found: false, key: AdmitKey { ifindex: 0, vlan: 0, mac: [0; 6] }, mac: [0; 6] };
}

impl Claim<IpKey> {
    pub const NONE: Self = Claim { found: false, key: IpKey { ifindex: 0, vlan: 0, pad: 0, ip: [0; 4] }, mac: [0; 6] };
}

impl Claim<Ip6Key> {
    pub const NONE: Self =
        Claim { found: false, key: Ip6Key { ifindex: 0, vlan: 0, pad: 0, ip: [0; 16] }, mac: [0; 6] };
}

#[inline(always)]
pub fn group_claims<P: Packet + ?Sized>(p: &P, ifindex: u32) -> Claims {
    let none = Claims { src: Claim::<AdmitKey>::NONE, ip: Claim::<IpKey>::NONE, ip6: Claim::<Ip6Key>::NONE };
    let Ok(hdr) = parse_l2(p) else { return none };
    if !is_group(&hdr.dst) {
        return none;
    }
    let src = Claim::of(AdmitKey { ifindex, vlan: hdr.vlan, mac: hdr.src }, hdr.src);
    let ip = match hdr.ethertype {
        ETH_P_ARP => match (p.read::<6>(hdr.l3_offset + 8), p.read::<4>(hdr.l3_offset + 14)) {
            (Some(sha), Some(spa)) if spa != [0; 4] => {
                Claim::of(IpKey { ifindex, vlan: hdr.vlan, pad: 0, ip: spa }, sha)
            }
            _ => Claim::<IpKey>::NONE,
        },
        _ => Claim::<IpKey>::NONE,
    };
    let ip6 = match hdr.ethertype {
        ETH_P_IPV6 => match na_claim(p, hdr.l3_offset) {
            Some((ip, mac)) => Claim::of(Ip6Key { ifindex, vlan: hdr.vlan, pad: 0, ip }, mac),
            None => Claim::<Ip6Key>::NONE,
        },
        _ => Claim::<Ip6Key>::NONE,
    };
    Claims { src, ip, ip6 }
}

/// A neighbour advertisement (ICMPv6 136, right after the IPv6 header) with a target
/// link-layer option first: (target address, target MAC).
#[inline(always)]
fn na_claim<P: Packet + ?Sized>(p: &P, off: usize) -> Option<([u8; 16], [u8; 6])> {
    let nh = p.read::<2>(off + 6)?;
    if nh[0] != IPPROTO_ICMPV6 {
        return None;
    }
    let l4 = off + IPV6_HLEN;
    let t = p.read::<2>(l4)?;
    if t[0] != ND_NEIGHBOR_ADVERT {
        return None;
    }
    let target = p.read::<16>(l4 + 8)?;
    let opt = p.read::<8>(l4 + 24)?;
    if opt[0] != ND_OPT_TARGET_LL || opt[1] != 1 {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&opt[2..8]);
    Some((target, mac))
}

/// Anti-spoofing for a frame an endpoint sends. An allow-list: only IPv4, ARP and IPv6
/// leave (any other EtherType, 802.3/SNAP, MPLS, PPPoE, RARP, tags of any TPID are
/// dropped), and each only as the endpoint itself:
/// - source MAC, IPv4 source, ARP sender MAC and IP are the endpoint's (0.0.0.0 allowed as
///   an ARP probe's sender);
/// - IPv6 sources are the endpoint's address or its own link-local address (EUI-64 of its
///   MAC); the unspecified address only for neighbour solicitations (DAD) and MLD reports;
/// - neighbour advertisements only for its own addresses and with its own MAC as target
///   link-layer address; solicitations only with its own MAC as source link-layer
///   address; no router advertisements or redirects;
/// - no DHCP server replies (UDP from port 67, DHCPv6 from 547).
#[inline(always)]
pub fn egress_check<P: Packet + ?Sized>(p: &P, ep: &EndpointInfo) -> Decision {
    let hdr = match parse_l2(p) {
        Ok(h) => h,
        Err(m) => return Decision::of(m.reason()),
    };
    if hdr.tagged {
        return Decision::of(Reason::DropStackedTags);
    }
    if hdr.src != ep.mac {
        return Decision::of(Reason::DropSpoofed);
    }
    let off = hdr.l3_offset;
    let ok = match hdr.ethertype {
        ETH_P_IPV4 => ipv4_ok(p, off, ep),
        ETH_P_ARP => match (p.read::<6>(off + 8), p.read::<4>(off + 14)) {
            (Some(sha), Some(spa)) => {
                sha == ep.mac && ((ep.flags & EP_HAS_IPV4 != 0 && spa == ep.ipv4) || spa == [0; 4])
            }
            _ => false,
        },
        ETH_P_IPV6 => ipv6_ok(p, off, ep),
        _ => false,
    };
    Decision::of(if ok { Reason::PassEgress } else { Reason::DropSpoofed })
}

const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_HOPOPTS: u8 = 0;
const DHCP_SERVER_PORT: u16 = 67;
const DHCPV6_SERVER_PORT: u16 = 547;
const ND_ROUTER_ADVERT: u8 = 134;
const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const ND_REDIRECT: u8 = 137;
const MLD_REPORT: u8 = 131;
const MLD2_REPORT: u8 = 143;
const ND_OPT_SOURCE_LL: u8 = 1;
const ND_OPT_TARGET_LL: u8 = 2;

#[inline(always)]
fn ipv4_ok<P: Packet + ?Sized>(p: &P, off: usize, ep: &EndpointInfo) -> bool {
    // One read after the other, each returning at once when it fails: read together as a
    // tuple, LLVM let a failed read's value be whatever its register held (a packet
    // pointer on one path), which the verifier refuses to mask.
    let Some(src) = p.read::<4>(off + 12) else { return false };
    if ep.flags & EP_HAS_IPV4 == 0 || src != ep.ipv4 {
        return false;
    }
    let Some(proto) = p.read::<1>(off + 9) else { return false };
    if proto[0] != IPPROTO_UDP {
        return true;
    }
    let Some(first) = p.read::<1>(off) else { return false };
    let hlen = ((first[0] & 0x0f) as usize) * 4;
    match p.read::<2>(off + hlen) {
        Some(sport) => u16::from_be_bytes(sport) != DHCP_SERVER_PORT,
        None => true,
    }
}

/// The endpoint's link-local address: fe80::/64 with the EUI-64 of its MAC.
#[inline(always)]
pub fn link_local_of(mac: &[u8; 6]) -> [u8; 16] {
    [0xfe, 0x80, 0, 0, 0, 0, 0, 0, mac[0] ^ 2, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]]
}

#[inline(always)]
fn own_v6(ep: &EndpointInfo, a: &[u8; 16]) -> bool {
    *a == link_local_of(&ep.mac) || (ep.flags & EP_HAS_IPV6 != 0 && *a == ep.ipv6)
}

#[inline(always)]
fn ipv6_ok<P: Packet + ?Sized>(p: &P, off: usize, ep: &EndpointInfo) -> bool {
    let (Some(nh), Some(src)) = (p.read::<1>(off + 6), p.read::<16>(off + 8)) else { return false };
    let unspecified = src == [0; 16];
    if !unspecified && !own_v6(ep, &src) {
        return false;
    }
    // One hop-by-hop header (MLD reports carry router alert) is looked through.
    let (mut proto, mut l4) = (nh[0], off + IPV6_HLEN);
    if proto == IPPROTO_HOPOPTS {
        let Some(h) = p.read::<2>(l4) else { return false };
        proto = h[0];
        l4 += (h[1] as usize + 1) * 8;
    }
    match proto {
        IPPROTO_ICMPV6 => icmpv6_ok(p, l4, ep, unspecified),
        IPPROTO_UDP if !unspecified => match p.read::<2>(l4) {
            Some(sport) => u16::from_be_bytes(sport) != DHCPV6_SERVER_PORT,
            None => false,
        },
        _ => !unspecified,
    }
}

#[inline(always)]
fn icmpv6_ok<P: Packet + ?Sized>(p: &P, l4: usize, ep: &EndpointInfo, unspecified: bool) -> bool {
    // Two bytes, not one: a one-byte read at a variable offset compiles to a bounds check
    // (`at >= end`) that the verifier does not accept as proof.
    let Some(t) = p.read::<2>(l4) else { return false };
    match t[0] {
        ND_ROUTER_ADVERT | ND_REDIRECT => false,
        ND_NEIGHBOR_ADVERT => {
            if unspecified {
                return false;
            }
            match p.read::<16>(l4 + 8) {
                Some(target) if own_v6(ep, &target) => nd_option_ok(p, l4 + 24, ND_OPT_TARGET_LL, ep),
                _ => false,
            }
        }
        // A DAD probe (from ::) carries no source link-layer option; one that does must name us.
        ND_NEIGHBOR_SOLICIT => nd_option_ok(p, l4 + 24, ND_OPT_SOURCE_LL, ep),
        MLD_REPORT | MLD2_REPORT => true,
        _ => !unspecified,
    }
}

/// The first two ND options: any link-layer address option of `kind` must be ours.
#[inline(always)]
fn nd_option_ok<P: Packet + ?Sized>(p: &P, first: usize, kind: u8, ep: &EndpointInfo) -> bool {
    let mut at = first;
    for _ in 0..2 {
        let Some(h) = p.read::<2>(at) else { return true };
        if h[1] == 0 {
            return false;
        }
        if h[0] == kind {
            match p.read::<6>(at + 2) {
                Some(mac) if mac == ep.mac => {}
                _ => return false,
            }
        }
        at += h[1] as usize * 8;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMITTED: [u8; 6] = [0x02, 0xdb, 0, 0, 0, 1];
    const OTHER: [u8; 6] = [0x02, 0xdb, 0, 0, 0, 2];
    const SRC: [u8; 6] = [0x02, 0x5e, 0, 0, 0, 9];
    const BCAST: [u8; 6] = [0xff; 6];
    const MCAST: [u8; 6] = [0x01, 0x00, 0x5e, 0, 0, 1];

    fn frame(dst: [u8; 6], tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> [u8; 128] {
        let mut f = [0u8; 128];
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&SRC);
        let mut off = 12;
        for (tpid, tci) in tags {
            f[off..off + 2].copy_from_slice(&tpid.to_be_bytes());
            f[off + 2..off + 4].copy_from_slice(&tci.to_be_bytes());
            off += 4;
        }
        f[off..off + 2].copy_from_slice(&ethertype.to_be_bytes());
        off += 2;
        f[off..off + payload.len()].copy_from_slice(payload);
        f
    }

    fn ipv4_header() -> [u8; 28] {
        let mut h = [0u8; 28];
        h[0] = 0x45;
        h[9] = 17;
        h
    }

    fn admit_only(ifindex: u32, vlan: u16, mac: [u8; 6]) -> impl Fn(&AdmitKey, (u64, u32)) -> bool {
        move |k, words| {
            assert_eq!(words, k.words(), "the words looked up are not the key's");
            *k == AdmitKey { ifindex, vlan, mac }
        }
    }

    #[test]
    fn admitted_unknown_broadcast_multicast() {
        let ip = ipv4_header();
        let f = frame(ADMITTED, &[], ETH_P_IPV4, &ip);
        let d = admission(&f[..42], 7, admit_only(7, 0, ADMITTED));
        assert_eq!(d, Decision { verdict: Verdict::Pass, reason: Reason::PassAdmitted });
        // Same MAC on another parent is not admitted.
        let d = admission(&f[..42], 8, admit_only(7, 0, ADMITTED));
        assert_eq!(d.reason, Reason::DropUnknownDestination);
        let f = frame(OTHER, &[], ETH_P_IPV4, &ip);
        let d = admission(&f[..42], 7, admit_only(7, 0, ADMITTED));
        assert_eq!(d, Decision { verdict: Verdict::Drop, reason: Reason::DropUnknownDestination });
        let f = frame(BCAST, &[], ETH_P_ARP, &[0; 28]);
        assert_eq!(admission(&f[..42], 7, |_, _| false).reason, Reason::PassBroadcast);
        let f = frame(MCAST, &[], ETH_P_IPV4, &ip);
        assert_eq!(admission(&f[..42], 7, |_, _| false).reason, Reason::PassMulticast);
    }

    #[test]
    fn vlan_tag_selects_the_key() {
        let ip = ipv4_header();
        let f = frame(ADMITTED, &[(ETH_P_8021Q, 50)], ETH_P_IPV4, &ip);
        let h = parse_l2(&f[..46]).unwrap();
        assert_eq!((h.vlan, h.tagged, h.ethertype, h.l3_offset), (50, true, ETH_P_IPV4, 18));
        assert_eq!(admission(&f[..46], 3, admit_only(3, 50, ADMITTED)).reason, Reason::PassAdmitted);
        assert_eq!(admission(&f[..46], 3, admit_only(3, 0, ADMITTED)).reason, Reason::DropUnknownDestination);
        // Priority tag (VID 0) with PCP bits is untagged traffic.
        let f = frame(ADMITTED, &[(ETH_P_8021Q, 0xa000)], ETH_P_IPV4, &ip);
        assert_eq!(admission(&f[..46], 3, admit_only(3, 0, ADMITTED)).reason, Reason::PassAdmitted);
        // VID 4095 is reserved.
        let f = frame(ADMITTED, &[(ETH_P_8021Q, 0x0fff)], ETH_P_IPV4, &ip);
        assert_eq!(parse_l2(&f[..46]), Err(Malformed::ReservedVid));
    }

    fn ep() -> EndpointInfo {
        EndpointInfo {
            endpoint: 1,
            flags: EP_HAS_IPV4 | EP_HAS_IPV6,
            mac: SRC,
            pad: [0; 2],
            ipv4: [10, 0, 0, 2],
            ipv6: [0xfd, 0, 0, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        }
    }

    #[test]
    fn egress_identity_is_enforced() {
        let mut ip = ipv4_header();
        ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
        let f = frame(OTHER, &[], ETH_P_IPV4, &ip);
        assert_eq!(egress_check(&f[..42], &ep()).reason, Reason::PassEgress);
        ip[12..16].copy_from_slice(&[10, 0, 0, 3]);
        let f = frame(OTHER, &[], ETH_P_IPV4, &ip);
        assert_eq!(egress_check(&f[..42], &ep()), Decision { verdict: Verdict::Drop, reason: Reason::DropSpoofed });
        // Wrong source MAC.
        let mut e = ep();
        e.mac = ADMITTED;
        ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
        let f = frame(OTHER, &[], ETH_P_IPV4, &ip);
        assert_eq!(egress_check(&f[..42], &e).reason, Reason::DropSpoofed);
        // No IPv4 allocated: no IPv4 at all.
        let mut e = ep();
        e.flags = EP_HAS_IPV6;
        assert_eq!(egress_check(&f[..42], &e).reason, Reason::DropSpoofed);
        // Tagged frames never leave an endpoint.
        let f = frame(OTHER, &[(ETH_P_8021Q, 50)], ETH_P_IPV4, &ip);
        assert_eq!(egress_check(&f[..46], &ep()).reason, Reason::DropStackedTags);
    }

    #[test]
    fn egress_arp_and_ipv6() {
        let mut arp = [0u8; 28];
        arp[8..14].copy_from_slice(&SRC);
        arp[14..18].copy_from_slice(&[10, 0, 0, 2]);
        let f = frame(BCAST, &[], ETH_P_ARP, &arp);
        assert_eq!(egress_check(&f[..42], &ep()).reason, Reason::PassEgress);
        arp[14..18].copy_from_slice(&[0, 0, 0, 0]);
        let f = frame(BCAST, &[], ETH_P_ARP, &arp);
        assert_eq!(egress_check(&f[..42], &ep()).reason, Reason::PassEgress, "ARP probe");
        arp[14..18].copy_from_slice(&[10, 0, 0, 9]);
        let f = frame(BCAST, &[], ETH_P_ARP, &arp);
        assert_eq!(egress_check(&f[..42], &ep()).reason, Reason::DropSpoofed, "ARP sender IP");
        arp[14..18].copy_from_slice(&[10, 0, 0, 2]);
        arp[8..14].copy_from_slice(&OTHER);
        let f = frame(BCAST, &[], ETH_P_ARP, &arp);
        assert_eq!(egress_check(&f[..42], &ep()).reason, Reason::DropSpoofed, "ARP sender MAC");
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[6] = 59; // no next header
        v6[8..24].copy_from_slice(&ep().ipv6);
        let f = frame(MCAST, &[], ETH_P_IPV6, &v6);
        assert_eq!(egress_check(&f[..54], &ep()).reason, Reason::PassEgress);
        v6[8..24].copy_from_slice(&link_local_of(&SRC));
        let f = frame(MCAST, &[], ETH_P_IPV6, &v6);
        assert_eq!(egress_check(&f[..54], &ep()).reason, Reason::PassEgress, "own link-local");
        v6[8] = 0xfe;
        v6[9] = 0x80;
        v6[23] ^= 1;
        let f = frame(MCAST, &[], ETH_P_IPV6, &v6);
        assert_eq!(egress_check(&f[..54], &ep()).reason, Reason::DropSpoofed, "a sibling's link-local");
        v6[8..24].copy_from_slice(&ep().ipv6);
        v6[8] = 0xfd;
        v6[9] = 0x99;
        let f = frame(MCAST, &[], ETH_P_IPV6, &v6);
        assert_eq!(egress_check(&f[..54], &ep()).reason, Reason::DropSpoofed);
    }

    /// An IPv6 packet from `src` to ff02::1 carrying ICMPv6 `icmp` (as the payload).
    fn icmp6(src: [u8; 16], icmp: &[u8]) -> [u8; 128] {
        let mut v6 = [0u8; 40 + 40];
        v6[0] = 0x60;
        v6[6] = 58;
        v6[8..24].copy_from_slice(&src);
        v6[24] = 0xff;
        v6[25] = 0x02;
        v6[39] = 1;
        v6[40..40 + icmp.len()].copy_from_slice(icmp);
        frame(MCAST, &[], ETH_P_IPV6, &v6[..40 + icmp.len()])
    }

    /// ND message `t` with `target` and one link-layer option of `kind` carrying `mac`.
    fn nd(t: u8, target: [u8; 16], kind: u8, mac: [u8; 6]) -> [u8; 32] {
        let mut m = [0u8; 32];
        m[0] = t;
        m[8..24].copy_from_slice(&target);
        m[24] = kind;
        m[25] = 1;
        m[26..32].copy_from_slice(&mac);
        m
    }

    #[test]
    fn neighbour_discovery_cannot_be_spoofed() {
        let e = ep();
        let own = e.ipv6;
        let ll = link_local_of(&SRC);
        let mut sibling = own;
        sibling[15] = 3;
        let len = 14 + 40 + 32;
        let check = |src: [u8; 16], m: &[u8]| egress_check(&icmp6(src, m)[..14 + 40 + m.len()], &e).reason;
        assert_eq!(check(ll, &nd(136, own, 2, SRC)), Reason::PassEgress, "NA for our address");
        assert_eq!(check(own, &nd(136, ll, 2, SRC)), Reason::PassEgress, "NA for our link-local");
        assert_eq!(check(ll, &nd(136, sibling, 2, SRC)), Reason::DropSpoofed, "NA for a sibling's address");
        assert_eq!(check(ll, &nd(136, own, 2, OTHER)), Reason::DropSpoofed, "NA with another target MAC");
        assert_eq!(check(ll, &nd(135, sibling, 1, SRC)), Reason::PassEgress, "NS for a neighbour");
        assert_eq!(check(ll, &nd(135, sibling, 1, OTHER)), Reason::DropSpoofed, "NS with another source MAC");
        assert_eq!(check([0; 16], &nd(135, own, 0, [0; 6])[..24]), Reason::PassEgress, "DAD probe");
        assert_eq!(check([0; 16], &nd(136, own, 2, SRC)), Reason::DropSpoofed, "NA from ::");
        assert_eq!(check(ll, &nd(134, [0; 16], 1, SRC)), Reason::DropSpoofed, "router advertisement");
        assert_eq!(check(ll, &nd(137, sibling, 2, SRC)), Reason::DropSpoofed, "redirect");
        assert_eq!(check([0; 16], &[143, 0, 0, 0, 0, 0, 0, 0]), Reason::PassEgress, "MLDv2 report from ::");
        assert_eq!(check([0; 16], &[128, 0, 0, 0, 0, 0, 0, 0]), Reason::DropSpoofed, "echo from ::");
        let _ = len;
        // UDP from :: (anything but ND) and DHCPv6 server replies.
        let mut v6 = [0u8; 48];
        v6[0] = 0x60;
        v6[6] = 17;
        v6[40..42].copy_from_slice(&547u16.to_be_bytes());
        v6[8..24].copy_from_slice(&own);
        assert_eq!(
            egress_check(&frame(MCAST, &[], ETH_P_IPV6, &v6)[..62], &e).reason,
            Reason::DropSpoofed,
            "DHCPv6 server"
        );
        v6[40..42].copy_from_slice(&546u16.to_be_bytes());
        assert_eq!(
            egress_check(&frame(MCAST, &[], ETH_P_IPV6, &v6)[..62], &e).reason,
            Reason::PassEgress,
            "DHCPv6 client"
        );
        v6[8..24].copy_from_slice(&[0; 16]);
        assert_eq!(
            egress_check(&frame(MCAST, &[], ETH_P_IPV6, &v6)[..62], &e).reason,
            Reason::DropSpoofed,
            "UDP from ::"
        );
    }

    #[test]
    fn egress_is_an_allow_list() {
        let e = ep();
        // DHCPv4 server replies.
        let mut ip = [0u8; 28];
        ip[0] = 0x45;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
        ip[20..22].copy_from_slice(&67u16.to_be_bytes());
        assert_eq!(
            egress_check(&frame(BCAST, &[], ETH_P_IPV4, &ip)[..42], &e).reason,
            Reason::DropSpoofed,
            "DHCP server"
        );
        ip[20..22].copy_from_slice(&68u16.to_be_bytes());
        assert_eq!(
            egress_check(&frame(BCAST, &[], ETH_P_IPV4, &ip)[..42], &e).reason,
            Reason::PassEgress,
            "DHCP client"
        );
        // Other EtherTypes: 802.3 length (SNAP), RARP, MPLS, PPPoE session, LLDP.
        for et in [0x0040u16, 0x8035, 0x8847, 0x8864, 0x88cc] {
            let f = frame(OTHER, &[], et, &ip);
            assert_eq!(egress_check(&f[..42], &e).reason, Reason::DropSpoofed, "ethertype {et:#x}");
        }
        // Tags with TPID 0x9100, outer or inner, are tags.
        let f = frame(OTHER, &[(ETH_P_QINQ_9100, 50)], ETH_P_IPV4, &ip);
        assert_eq!(egress_check(&f[..46], &e).reason, Reason::DropStackedTags);
        let f = frame(ADMITTED, &[(ETH_P_8021Q, 50), (ETH_P_QINQ_9100, 60)], ETH_P_IPV4, &ip);
        assert_eq!(admission(&f[..64], 1, |_, _| true).reason, Reason::DropStackedTags, "0x9100 inside VLAN 50");
    }

    #[test]
    fn stacked_tags_are_refused() {
        let ip = ipv4_header();
        for tags in [
            &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 50)][..],
            &[(ETH_P_8021Q, 100), (ETH_P_8021Q, 50)][..],
            &[(ETH_P_8021AD, 50)][..],
        ] {
            let f = frame(ADMITTED, tags, ETH_P_IPV4, &ip);
            let d = admission(&f[..64], 1, |_, _| true);
            assert_eq!(d, Decision { verdict: Verdict::Drop, reason: Reason::DropStackedTags });
        }
    }

    #[test]
    fn group_claims_name_the_source_and_the_arp_sender() {
        // A broadcast ARP request: source MAC key and (sender IP, sender MAC).
        let mut arp = [0u8; 28];
        arp[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp[8..14].copy_from_slice(&SRC);
        arp[14..18].copy_from_slice(&[10, 0, 0, 7]);
        let f = frame([0xff; 6], &[(ETH_P_8021Q, 50)], ETH_P_ARP, &arp);
        let c = group_claims(&f[..64], 3);
        assert_eq!(c.src.get(), Some((AdmitKey { ifindex: 3, vlan: 50, mac: SRC }, SRC)));
        assert_eq!(c.ip.get(), Some((IpKey { ifindex: 3, vlan: 50, pad: 0, ip: [10, 0, 0, 7] }, SRC)));
        // A probe (sender 0.0.0.0) claims no address.
        arp[14..18].copy_from_slice(&[0; 4]);
        let f = frame([0xff; 6], &[], ETH_P_ARP, &arp);
        assert_eq!(group_claims(&f[..64], 3).ip.get(), None);
        // Unicast frames are not looked at.
        let f = frame(ADMITTED, &[], ETH_P_ARP, &arp);
        let c = group_claims(&f[..64], 3);
        assert_eq!((c.src.get(), c.ip.get(), c.ip6.get()), (None, None, None));
        assert_eq!(c.ip, Claim::<IpKey>::NONE, "an absent claim is all zeros");
    }

    #[test]
    fn qinq_is_admitted_only_for_configured_pairs() {
        let ip = ipv4_header();
        let configured = |outer: u16, inner: u16| (outer, inner) == (100, 50);
        let admitted = |k: &AdmitKey, words: (u64, u32)| words == k.words() && k.vlan == 50 && k.mac == ADMITTED;
        let f = frame(ADMITTED, &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 50)], ETH_P_IPV4, &ip);
        assert_eq!(admission_qinq(&f[..64], 1, admitted, configured).reason, Reason::PassAdmitted);
        // Without the configuration (plain `admission`), the same stack is refused.
        assert_eq!(admission(&f[..64], 1, admitted).reason, Reason::DropStackedTags);
        for tags in [
            &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 51)][..],
            &[(ETH_P_8021AD, 101), (ETH_P_8021Q, 50)][..],
            &[(ETH_P_8021Q, 100), (ETH_P_8021Q, 50)][..],
            &[(ETH_P_8021Q, 50), (ETH_P_8021AD, 100)][..],
            &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 50), (ETH_P_8021Q, 7)][..],
        ] {
            let f = frame(ADMITTED, tags, ETH_P_IPV4, &ip);
            assert_eq!(admission_qinq(&f[..64], 1, admitted, configured).reason, Reason::DropStackedTags, "{tags:?}");
        }
        // Truncated inside the inner IPv4 header: not admitted.
        let f = frame(ADMITTED, &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 50)], ETH_P_IPV4, &ip);
        assert_ne!(admission_qinq(&f[..40], 1, admitted, configured).verdict, Verdict::Pass);
    }

    #[test]
    fn no_truncation_is_admitted() {
        let ip = ipv4_header();
        type Case<'a> = (&'a [(u16, u16)], u16, &'a [u8], usize);
        let cases: [Case; 4] = [
            (&[], ETH_P_IPV4, &ip, 34),
            (&[(ETH_P_8021Q, 50)], ETH_P_IPV4, &ip, 38),
            (&[], ETH_P_IPV6, &[0x60; 40], 54),
            (&[], ETH_P_ARP, &[0; 28], 42),
        ];
        for (tags, et, payload, complete) in cases {
            let vlan = tags.first().map(|t| t.1).unwrap_or(0);
            let f = frame(ADMITTED, tags, et, payload);
            for len in 0..=64 {
                let d = admission(&f[..len], 1, admit_only(1, vlan, ADMITTED));
                if len >= complete {
                    assert_eq!(d.reason, Reason::PassAdmitted, "len {len} ethertype {et:#x}");
                } else {
                    assert_eq!(d.reason, Reason::DropMalformed, "len {len} ethertype {et:#x}");
                }
            }
        }
    }

    #[test]
    fn bad_ip_headers_are_malformed() {
        let mut ip = ipv4_header();
        ip[0] = 0x44; // IHL 4 < 5
        let f = frame(ADMITTED, &[], ETH_P_IPV4, &ip);
        assert_eq!(parse_l2(&f[..60]), Err(Malformed::BadL3Header));
        ip[0] = 0x65; // version 6 under IPv4 ethertype
        let f = frame(ADMITTED, &[], ETH_P_IPV4, &ip);
        assert_eq!(parse_l2(&f[..60]), Err(Malformed::BadL3Header));
        ip[0] = 0x4f; // IHL 15 = 60 bytes, frame only 60 total
        let f = frame(ADMITTED, &[], ETH_P_IPV4, &ip);
        assert_eq!(parse_l2(&f[..60]), Err(Malformed::Truncated));
        assert!(parse_l2(&f[..74]).is_ok());
        let f = frame(ADMITTED, &[], ETH_P_IPV6, &[0x45; 40]);
        assert_eq!(parse_l2(&f[..54]), Err(Malformed::BadL3Header));
    }

    #[test]
    fn unparsed_ethertypes_need_only_the_ethernet_header() {
        // 802.3 length field (e.g. STP/LLC) and an unknown protocol.
        for et in [0x0026, 0x88cc] {
            let f = frame(ADMITTED, &[], et, &[]);
            assert_eq!(admission(&f[..14], 1, |_, _| true).reason, Reason::PassAdmitted);
            assert_eq!(admission(&f[..13], 1, |_, _| true).reason, Reason::DropMalformed);
        }
    }
}

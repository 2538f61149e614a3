//! BPF map names, sizes and the key/value layouts both sides agree on.

use bytemuck::{Pod, Zeroable};

/// Table of admitted destinations: a unicast frame passes only if its key is here.
/// (BPF object names are limited to 15 characters.) See [`AdmitSlot`] for the layout.
pub const ADMIT_MAP: &str = "DP_ADMIT";
/// Per-CPU packet/byte counters, an array indexed by [`counter_slot`].
pub const COUNTERS_MAP: &str = "DP_COUNTERS";
/// Name of the XDP program attached to parent interfaces.
pub const XDP_PARENT_PROG: &str = "dp_parent";
/// TC (tcx ingress) program on a trunk that steers tagged frames to eBPF VLAN devices.
pub const TC_TRUNK_PROG: &str = "dp_trunk_in";
/// TC (tcx ingress) program on the hidden end of an eBPF VLAN device: tags and sends
/// frames out of the trunk.
pub const TC_VLAN_OUT_PROG: &str = "dp_vlan_out";
/// XDP program on the visible end of an eBPF VLAN device: passes every frame. Its being
/// there keeps the veth's NAPI on, which frames that `dp_parent` redirects into the device
/// need (a veth whose peer has no NAPI drops redirected XDP frames).
pub const XDP_VLAN_RX_PROG: &str = "dp_vlan_rx";
/// (trunk ifindex, VID) -> hidden veth end of the VLAN device; 0 for a kernel VLAN device.
pub const VLAN_DEVS_MAP: &str = "DP_VLAN_DEVS";
/// The eBPF VLAN devices `dp_parent` steers itself: an array by VID of
/// [`vlan_xdp_entry`]`(trunk ifindex, hidden end ifindex)`, 0 where none. Written only once
/// the device's visible end has [`XDP_VLAN_RX_PROG`]; one trunk per VID (a second trunk's
/// device of the same VID is steered by the trunk's tc program). An array, so the lookup
/// is inlined: no hashing per frame.
pub const VLAN_XDP_MAP: &str = "DP_VLAN_XDP";
pub const VLAN_XDP_ENTRIES: u32 = 4096;

/// A [`VLAN_XDP_MAP`] value.
pub const fn vlan_xdp_entry(trunk_ifindex: u32, dev_ifindex: u32) -> u64 {
    ((trunk_ifindex as u64) << 32) | dev_ifindex as u64
}
/// hidden veth end ifindex -> (trunk ifindex, VID).
pub const VLAN_PEERS_MAP: &str = "DP_VLAN_PEERS";
pub const VLAN_MAX_ENTRIES: u32 = 4096;
/// tcx egress program on an endpoint's interface: anti-spoofing + tx accounting.
pub const TC_EP_OUT_PROG: &str = "dp_ep_out";
/// The rx-counting ingress program older versions put on endpoint interfaces (the kernel's
/// own per-interface statistics count what an endpoint receives now); kept for the
/// interfaces they made, which go on running it until they are re-created.
pub const TC_EP_IN_PROG: &str = "dp_ep_in";
/// ifindex of an endpoint interface -> what it may send as. Endpoint interfaces get
/// ifindexes from [`EP_IFINDEX_BASE`] up, unique per dataplane instance, because the
/// kernel's own numbering repeats in every namespace (each endpoint's eth0 would be 2).
pub const ENDPOINTS_MAP: &str = "DP_ENDPOINTS";
/// endpoint number -> per-CPU rx/tx/spoofed counters.
pub const EP_COUNTERS_MAP: &str = "DP_EP_COUNTERS";
pub const ENDPOINTS_MAX_ENTRIES: u32 = 1 << 17;
/// First ifindex dataplane asks the kernel for when it creates an endpoint interface.
pub const EP_IFINDEX_BASE: u32 = 0x4000_0000;
/// Per-CPU rx/tx/spoofed counters of endpoint interfaces, one slot per interface: the
/// interface's ifindex minus [`EP_IFINDEX_BASE`]. An array lookup is inlined by the
/// verifier (no helper call, no hashing), which is most of what counting cost per packet.
/// Interfaces made before slots existed (ifindexes past the slots) count in
/// [`EP_COUNTERS_MAP`] by endpoint, as before.
pub const EP_SLOTS_MAP: &str = "DP_EP_SLOTS";
pub const EP_SLOTS: u32 = 1 << 16;

/// The counter slot of endpoint interface `ifindex`, if it has one.
#[inline(always)]
pub const fn ep_slot(ifindex: u32) -> Option<u32> {
    let slot = ifindex.wrapping_sub(EP_IFINDEX_BASE);
    if slot < EP_SLOTS {
        Some(slot)
    } else {
        None
    }
}

/// (parent ifindex, VLAN, IPv4 address) -> the endpoint given that address and its MAC:
/// the parent's XDP program notices ARP from outside that claims one of our addresses.
pub const OUR_IPS_MAP: &str = "DP_OUR_IPS";
/// (parent ifindex, VLAN, IPv6 address) -> the endpoint given that address and its MAC:
/// unsolicited neighbour advertisements from outside claiming it are conflicts.
pub const OUR_IP6S_MAP: &str = "DP_OUR_IP6S";
/// endpoint number -> frames from outside that used its MAC or claimed its address.
pub const CONFLICTS_MAP: &str = "DP_CONFLICTS";

/// Enough for the 65 536-endpoint scale target with room to spare (the address maps).
pub const ADMIT_MAX_ENTRIES: u32 = 1 << 17;

// The admission table is an open-addressing hash table in a memory-mappable BPF array,
// not a BPF hash map: the program finds a key with its own hash and inlined array
// lookups (no helper call, no jhash), which halved the admission path's cost. User space
// maps the array into its memory and is the only writer (under a lock file), so an insert
// costs no system call either. Linear probing, at most ADMIT_PROBES slots from a key's
// home slot; a slot whose ifindex is ADMIT_EMPTY ends every search, ADMIT_TOMBSTONE marks a
// removed entry that searches step over. The ifindex word is written last (after the
// rest of the slot) and alone, so a reader sees either no entry or a whole one.
/// Slots of the admission table: four times the entries it may hold.
pub const ADMIT_SLOTS: u32 = 1 << 19;
/// A key is in one of the ADMIT_PROBES slots from its home slot on, or nowhere.
pub const ADMIT_PROBES: u32 = 16;
/// Slot ifindex of a slot never used (or freed with nothing behind it).
pub const ADMIT_EMPTY: u32 = 0;
/// Slot ifindex of a removed entry.
pub const ADMIT_TOMBSTONE: u32 = u32::MAX;
/// Entries after the slots: user space's occupancy bitmap (one bit per slot), so listing
/// the table reads 64 KiB instead of every slot. Programs never index past the slots.
pub const ADMIT_BITMAP_ENTRIES: u32 = ADMIT_SLOTS / 8 / core::mem::size_of::<AdmitSlot>() as u32;
/// Entries of the admission map: the slots, then the bitmap.
pub const ADMIT_MAP_ENTRIES: u32 = ADMIT_SLOTS + ADMIT_BITMAP_ENTRIES;

/// One slot of [`ADMIT_MAP`]: a key and the endpoint it belongs to.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct AdmitSlot {
    pub key: AdmitKey,
    pub endpoint: u32,
}

impl AdmitKey {
    /// The key as the two words a slot is compared by: its first eight bytes and the last
    /// four (little-endian, as the slot lies in memory).
    #[inline(always)]
    pub fn words(&self) -> (u64, u32) {
        let m = self.mac;
        Self::words_of(
            self.ifindex,
            self.vlan,
            u16::from_le_bytes([m[0], m[1]]),
            u32::from_le_bytes([m[2], m[3], m[4], m[5]]),
        )
    }

    /// [`AdmitKey::words`] of a key whose MAC is given as the little-endian 16-bit and
    /// 32-bit words it starts with (as the kernel program reads it from a frame: two loads
    /// instead of six bytes put together again).
    #[inline(always)]
    pub const fn words_of(ifindex: u32, vlan: u16, mac_lo: u16, mac_hi: u32) -> (u64, u32) {
        (ifindex as u64 | (vlan as u64) << 32 | (mac_lo as u64) << 48, mac_hi)
    }

    /// The key's home slot (multiply-xorshift of its words: a few instructions).
    #[inline(always)]
    pub fn home_slot(&self) -> u32 {
        Self::home_slot_of(self.words())
    }

    /// The home slot of the key with these [`AdmitKey::words`].
    #[inline(always)]
    pub const fn home_slot_of((a, b): (u64, u32)) -> u32 {
        let mut x = a ^ (b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^= x >> 29;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        (x >> (64 - ADMIT_SLOTS.trailing_zeros())) as u32
    }
}
/// Interfaces with counters are told apart by the low bits of their ifindex: parents live
/// in the host namespace, where ifindexes are small. An array (not a hash) keeps the
/// per-packet cost of counting to a few nanoseconds.
pub const COUNTER_IFINDEX_SLOTS: u32 = 1024;
/// Reasons per interface slot (room to append reasons without a layout change).
pub const COUNTER_REASON_SLOTS: u32 = 16;
pub const COUNTERS_MAX_ENTRIES: u32 = COUNTER_IFINDEX_SLOTS * COUNTER_REASON_SLOTS;

/// Index of (ifindex, reason) in [`COUNTERS_MAP`].
#[inline(always)]
pub const fn counter_slot(ifindex: u32, reason: Reason) -> u32 {
    (ifindex & (COUNTER_IFINDEX_SLOTS - 1)) * COUNTER_REASON_SLOTS + (reason as u32 & (COUNTER_REASON_SLOTS - 1))
}

/// Untagged (and priority-tagged, VID 0) frames use this VLAN id in keys.
pub const VLAN_UNTAGGED: u16 = 0;
// NICs and veth usually move the 802.1Q tag into metadata XDP cannot read, so a tagged
// frame often looks untagged there. User space therefore writes two entries for every
// endpoint of a VLAN network: (trunk, VID, MAC) for frames whose tag XDP sees, and
// (trunk, VLAN_UNTAGGED, MAC) for frames that look untagged. MACs are unique per trunk,
// so the second entry never collides; the exact VLAN is enforced after XDP (tc on the
// trunk, or the kernel's VLAN demux). One lookup per frame either way.

/// Key of [`ADMIT_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AdmitKey {
    /// ifindex of the parent (trunk) interface the frame arrives on.
    pub ifindex: u32,
    /// 802.1Q VLAN id, or [`VLAN_UNTAGGED`].
    pub vlan: u16,
    /// Destination MAC address.
    pub mac: [u8; 6],
}

/// Key of [`OUR_IPS_MAP`] (VLAN keys as in [`AdmitKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct IpKey {
    pub ifindex: u32,
    pub vlan: u16,
    pub pad: u16,
    pub ip: [u8; 4],
}

/// Key of [`OUR_IP6S_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Ip6Key {
    pub ifindex: u32,
    pub vlan: u16,
    pub pad: u16,
    pub ip: [u8; 16],
}

/// Value of [`OUR_IPS_MAP`] and [`OUR_IP6S_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct OurIp {
    /// Endpoint number (as in [`AdmitValue`]).
    pub endpoint: u32,
    /// The MAC that address belongs to: ARP for it from another MAC is a conflict.
    pub mac: [u8; 6],
    pub pad: [u8; 2],
}

/// Value of [`CONFLICTS_MAP`]: rare events, so one shared (not per-CPU) value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Conflict {
    /// Broadcast/multicast frames from outside with the endpoint's MAC as source.
    pub mac_frames: u64,
    /// ARP (IPv4) or neighbour advertisements (IPv6) from outside claiming one of the
    /// endpoint's addresses for another MAC.
    pub ip_frames: u64,
    /// The other party's MAC of the last IP claim.
    pub last_mac: [u8; 6],
    pub pad: [u8; 2],
}

/// Value of [`ADMIT_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct AdmitValue {
    /// Opaque endpoint number chosen by user space (for per-endpoint accounting).
    pub endpoint: u32,
    /// Reserved for flags; always 0 today.
    pub flags: u32,
}

/// Value of [`COUNTERS_MAP`] (one per CPU; user space sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Key of [`VLAN_DEVS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct VlanKey {
    pub trunk_ifindex: u32,
    /// The (inner, for QinQ) 802.1Q VID.
    pub vid: u16,
    /// The outer 802.1ad S-tag VID of a QinQ network (`IFACE.OUTER.VID`); 0: one tag.
    pub outer: u16,
}

/// Value of [`VLAN_PEERS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct VlanTrunk {
    pub trunk_ifindex: u32,
    pub vid: u16,
    /// Outer 802.1ad VID to push after `vid` (QinQ); 0: one tag.
    pub outer: u16,
}

pub const EP_HAS_IPV4: u32 = 1;
pub const EP_HAS_IPV6: u32 = 2;

/// Value of [`ENDPOINTS_MAP`]: the identity an endpoint interface may send with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct EndpointInfo {
    pub endpoint: u32,
    /// [`EP_HAS_IPV4`] | [`EP_HAS_IPV6`]
    pub flags: u32,
    pub mac: [u8; 6],
    pub pad: [u8; 2],
    pub ipv4: [u8; 4],
    pub ipv6: [u8; 16],
}

/// Value of [`EP_COUNTERS_MAP`] (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EndpointCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub spoofed_packets: u64,
    pub spoofed_bytes: u64,
}

impl EndpointCounters {
    /// `rx`, `tx` and `spoofed` frames (0 or 1 each) of `bytes` bytes.
    #[inline(always)]
    pub const fn frame(rx: u64, tx: u64, spoofed: u64, bytes: u64) -> Self {
        EndpointCounters {
            rx_packets: rx,
            rx_bytes: rx * bytes,
            tx_packets: tx,
            tx_bytes: tx * bytes,
            spoofed_packets: spoofed,
            spoofed_bytes: spoofed * bytes,
        }
    }

    #[inline(always)]
    pub fn add(&mut self, o: &Self) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.spoofed_packets += o.spoofed_packets;
        self.spoofed_bytes += o.spoofed_bytes;
    }
}

/// Why a frame was passed or dropped. The numbers are part of the pinned-map ABI:
/// append, never renumber.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Unicast to an admitted (ifindex, VLAN, MAC).
    PassAdmitted = 0,
    /// Broadcast destination ff:ff:ff:ff:ff:ff.
    PassBroadcast = 1,
    /// Any other group (multicast) destination.
    PassMulticast = 2,
    /// Unicast to a MAC nobody was given on this parent/VLAN.
    DropUnknownDestination = 3,
    /// Too short for its own headers, or a reserved VLAN id.
    DropMalformed = 4,
    /// More than one VLAN tag (802.1ad/802.1Q stacks): a VLAN-hopping shape.
    DropStackedTags = 5,
    /// A tagged frame on a trunk for a VLAN that has no network here.
    DropUnknownVlan = 6,
    /// A tagged frame steered into its eBPF VLAN device (tag popped).
    VlanSteered = 7,
    /// A frame from an eBPF VLAN device sent out of the trunk (tag pushed).
    VlanTagged = 8,
    /// Sent by an endpoint with a source MAC/IP/ARP identity it was not given.
    DropSpoofed = 9,
    /// Sent by an endpoint with its own identity.
    PassEgress = 10,
    /// From outside, broadcast/multicast, with one of our endpoints' MACs as source
    /// (counted besides the frame's admission reason).
    ConflictMac = 11,
    /// From outside, ARP claiming one of our endpoints' addresses for another MAC
    /// (counted besides the frame's admission reason).
    ConflictIp = 12,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
        Reason::PassAdmitted,
        Reason::PassBroadcast,
        Reason::PassMulticast,
        Reason::DropUnknownDestination,
        Reason::DropMalformed,
        Reason::DropStackedTags,
        Reason::DropUnknownVlan,
        Reason::VlanSteered,
        Reason::VlanTagged,
        Reason::DropSpoofed,
        Reason::PassEgress,
        Reason::ConflictMac,
        Reason::ConflictIp,
    ];

    pub const fn from_u32(v: u32) -> Option<Reason> {
        match v {
            0 => Some(Reason::PassAdmitted),
            1 => Some(Reason::PassBroadcast),
            2 => Some(Reason::PassMulticast),
            3 => Some(Reason::DropUnknownDestination),
            4 => Some(Reason::DropMalformed),
            5 => Some(Reason::DropStackedTags),
            6 => Some(Reason::DropUnknownVlan),
            7 => Some(Reason::VlanSteered),
            8 => Some(Reason::VlanTagged),
            9 => Some(Reason::DropSpoofed),
            10 => Some(Reason::PassEgress),
            11 => Some(Reason::ConflictMac),
            12 => Some(Reason::ConflictIp),
            _ => None,
        }
    }

    /// Stable, human-readable name used in `dataplane stats` and its JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassAdmitted => "pass_admitted",
            Reason::PassBroadcast => "pass_broadcast",
            Reason::PassMulticast => "pass_multicast",
            Reason::DropUnknownDestination => "drop_unknown_destination",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropStackedTags => "drop_stacked_tags",
            Reason::DropUnknownVlan => "drop_unknown_vlan",
            Reason::VlanSteered => "vlan_steered",
            Reason::VlanTagged => "vlan_tagged",
            Reason::DropSpoofed => "drop_spoofed",
            Reason::PassEgress => "pass_egress",
            Reason::ConflictMac => "conflict_mac",
            Reason::ConflictIp => "conflict_ip",
        }
    }

    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropUnknownDestination
                | Reason::DropMalformed
                | Reason::DropStackedTags
                | Reason::DropUnknownVlan
                | Reason::DropSpoofed
        )
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: every type is #[repr(C)] and derives bytemuck::Pod, which proves at compile
    // time that it has no padding and that any bit pattern is valid.
    unsafe impl aya::Pod for super::AdmitKey {}
    unsafe impl aya::Pod for super::AdmitValue {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::VlanKey {}
    unsafe impl aya::Pod for super::VlanTrunk {}
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::EndpointCounters {}
    unsafe impl aya::Pod for super::IpKey {}
    unsafe impl aya::Pod for super::Ip6Key {}
    unsafe impl aya::Pod for super::OurIp {}
    unsafe impl aya::Pod for super::Conflict {}
    unsafe impl aya::Pod for super::AdmitSlot {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel_abi() {
        assert_eq!(core::mem::size_of::<AdmitKey>(), 12);
        assert_eq!(core::mem::size_of::<AdmitValue>(), 8);
        assert_eq!(counter_slot(1, Reason::PassAdmitted), 16);
        assert_eq!(counter_slot(1025, Reason::DropMalformed), 20);
        assert!(counter_slot(u32::MAX, Reason::PassEgress) < COUNTERS_MAX_ENTRIES);
        assert!(Reason::ALL.len() as u32 <= COUNTER_REASON_SLOTS);
        assert_eq!(core::mem::size_of::<Counter>(), 16);
        assert_eq!(core::mem::size_of::<EndpointInfo>(), 36);
        assert_eq!(core::mem::size_of::<EndpointCounters>(), 48);
        let k = AdmitKey { ifindex: 0x0102_0304, vlan: 50, mac: [2, 0, 0, 0, 0, 9] };
        let b = bytemuck::bytes_of(&k);
        assert_eq!(&b[4..6], &50u16.to_ne_bytes());
        assert_eq!(&b[6..12], &[2, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn admission_slots_compare_as_the_words_of_their_key() {
        assert_eq!(core::mem::size_of::<AdmitSlot>(), 16);
        assert_eq!(ADMIT_BITMAP_ENTRIES as usize * core::mem::size_of::<AdmitSlot>() * 8, ADMIT_SLOTS as usize);
        let k = AdmitKey { ifindex: 0x0102_0304, vlan: 50, mac: [2, 0x42, 0xac, 0x10, 0, 9] };
        let slot = AdmitSlot { key: k, endpoint: 7 };
        let b = bytemuck::bytes_of(&slot);
        let (w0, w1) = k.words();
        assert_eq!(&b[0..8], &w0.to_le_bytes());
        assert_eq!(&b[8..12], &w1.to_le_bytes());
        // Home slots fall inside the table and spread: 4096 consecutive MACs on one
        // parent land in far more than a few slots.
        let mut seen = [0u64; (ADMIT_SLOTS / 64) as usize];
        let mut distinct = 0;
        for i in 0..4096u32 {
            let [_, _, c, d] = i.to_be_bytes();
            let h = AdmitKey { ifindex: 3, vlan: 0, mac: [2, 0x42, 0xac, 0x10, c, d] }.home_slot();
            assert!(h < ADMIT_SLOTS);
            let (word, bit) = ((h / 64) as usize, 1u64 << (h % 64));
            distinct += usize::from(seen[word] & bit == 0);
            seen[word] |= bit;
        }
        assert!(distinct > 4000, "{distinct} distinct home slots for 4096 keys");
    }

    #[test]
    fn reasons_round_trip_and_names_are_unique() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(Reason::from_u32(*r as u32), Some(*r));
            for other in &Reason::ALL[i + 1..] {
                assert_ne!(r.name(), other.name());
            }
        }
        assert_eq!(Reason::from_u32(Reason::ALL.len() as u32), None);
        assert!(Reason::DropMalformed.is_drop());
        assert!(!Reason::PassBroadcast.is_drop());
    }
}

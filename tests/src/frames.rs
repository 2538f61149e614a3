//! Frame builders. Test frames carry a recognisable source MAC and a sequence number in
//! the payload so background traffic never confuses a test.

/// Source MAC of every frame the lab sends.
pub const LAB_SRC: [u8; 6] = [0x02, 0x1a, 0xb0, 0x00, 0x00, 0x01];
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// An Ethernet + IPv4 + UDP frame of `len` bytes (at least 42), `seq` in the payload.
pub fn udp(dst: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let len = len.max(46);
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&LAB_SRC);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 99, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 99, 0, 2]);
    let sum = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&40001u16.to_be_bytes());
    f[38..40].copy_from_slice(&((len - 34) as u16).to_be_bytes());
    f[42..46].copy_from_slice(&seq.to_be_bytes());
    f
}

/// The same with one 802.1Q tag of `vid` after the addresses.
pub fn tagged(mut untagged: Vec<u8>, tpid: u16, vid: u16) -> Vec<u8> {
    let mut tag = Vec::with_capacity(4);
    tag.extend_from_slice(&tpid.to_be_bytes());
    tag.extend_from_slice(&vid.to_be_bytes());
    untagged.splice(12..12, tag);
    untagged
}

/// Sequence number of a lab frame (None for anything else, e.g. kernel chatter).
pub fn lab_seq(frame: &[u8]) -> Option<u32> {
    if frame.len() < 46 || frame[6..12] != LAB_SRC || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    Some(u32::from_be_bytes([frame[42], frame[43], frame[44], frame[45]]))
}

/// Recompute the IPv4 header checksum of an untagged lab frame after editing it.
pub fn fix_ipv4_checksum(f: &mut [u8]) {
    f[24..26].copy_from_slice(&[0, 0]);
    let sum = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

pub fn mac_str(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

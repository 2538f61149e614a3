//! Address probes: before dataplane hands out an address on a parent shared with other
//! hosts, it asks the segment whether anyone has it and waits a bounded time for an
//! answer: for IPv4 an RFC 5227 ARP probe (request from 0.0.0.0 with the parent's MAC),
//! for IPv6 duplicate address detection (RFC 4862: a solicitation from ::). A host that has
//! the address answers (Linux replies to both); one that is probing for it too sends the
//! same probe. Either makes the address taken.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

fn last_err(what: &str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The ifindex and MAC of `iface` in this namespace.
fn iface_info(fd: &OwnedFd, iface: &str) -> std::io::Result<(i32, [u8; 6])> {
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if iface.len() >= req.ifr_name.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("interface name {iface:?} too long"),
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFINDEX / SIOCGIFHWADDR fill `req` for the named interface.
    unsafe {
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) != 0 {
            return Err(last_err(&format!("looking up {iface}")));
        }
        let index = req.ifr_ifru.ifru_ifindex;
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) != 0 {
            return Err(last_err(&format!("reading the MAC of {iface}")));
        }
        let mut mac = [0u8; 6];
        for (m, b) in mac.iter_mut().zip(req.ifr_ifru.ifru_hwaddr.sa_data.iter()) {
            *m = *b as u8;
        }
        Ok((index, mac))
    }
}

fn arp_request(src_mac: [u8; 6], target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6, 4, request; sender MAC, sender 0.0.0.0, target MAC 0, target IP.
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&src_mac);
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// A packet socket on `iface` for `proto` frames, and the interface's MAC. Created without a
/// protocol and bound with one: re-binding a socket whose receive hook is already
/// registered waits for an RCU grace period (~10 ms).
fn packet_socket(iface: &str, proto: u16) -> std::io::Result<(OwnedFd, [u8; 6])> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(last_err("opening a packet socket"));
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let (index, mac) = iface_info(&fd, iface)?;
    // SAFETY: sockaddr_ll is plain data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto.to_be();
    sll.sll_ifindex = index;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: bind with a properly sized sockaddr_ll.
    if unsafe { libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), len) } != 0 {
        return Err(last_err(&format!("binding a packet socket to {iface}")));
    }
    Ok((fd, mac))
}

fn send_all(fd: &OwnedFd, iface: &str, frames: &[Vec<u8>]) -> std::io::Result<()> {
    for f in frames {
        // SAFETY: send(2) of a buffer we own on a bound socket.
        if unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) } < 0 {
            return Err(last_err(&format!("sending a probe out of {iface}")));
        }
    }
    Ok(())
}

/// Closing a packet socket waits for a grace period: on a thread of its own, so the rest
/// of the command (allocation, links, programs) overlaps it.
fn close_later(fd: OwnedFd) {
    std::thread::spawn(move || drop(fd));
}

/// The ICMPv6 checksum of `msg` (checksum field zero) between `src` and `dst`.
fn icmp6_checksum(src: &[u8; 16], dst: &[u8; 16], msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(src);
    add(dst);
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A duplicate-address-detection neighbour solicitation for `target`: from ::, to the
/// target's solicited-node group, no source link-layer option (RFC 4862).
fn dad_solicit(src_mac: [u8; 6], target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let group = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15]];
    let mut f = vec![0u8; 14 + 40 + 24];
    f[0..6].copy_from_slice(&[0x33, 0x33, 0xff, t[13], t[14], t[15]]);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    f[14] = 0x60;
    f[18..20].copy_from_slice(&24u16.to_be_bytes());
    f[20] = 58;
    f[21] = 255;
    f[38..54].copy_from_slice(&group);
    f[54] = 135;
    f[62..78].copy_from_slice(&t);
    let sum = icmp6_checksum(&[0; 16], &group, &f[54..78]);
    f[56..58].copy_from_slice(&sum.to_be_bytes());
    f
}

/// Probe `candidates` (one family) out of `iface` in this namespace and wait up to `wait`
/// for answers; returns the candidates someone else holds or is probing for.
pub fn probe(iface: &str, candidates: &[IpAddr], wait: Duration) -> std::io::Result<BTreeSet<IpAddr>> {
    let v4 = candidates.first().is_some_and(IpAddr::is_ipv4);
    let (fd, mac) = packet_socket(iface, if v4 { ETH_P_ARP } else { ETH_P_IPV6 })?;
    let frames: Vec<Vec<u8>> = candidates
        .iter()
        .filter_map(|c| match c {
            IpAddr::V4(a) if v4 => Some(arp_request(mac, *a)),
            IpAddr::V6(a) if !v4 => Some(dad_solicit(mac, *a)),
            _ => None,
        })
        .collect();
    send_all(&fd, iface, &frames)?;
    let wanted: BTreeSet<IpAddr> = candidates.iter().copied().collect();
    let taken =
        collect(&fd, &wanted, wait, |f| if v4 { arp_claim(f) } else { dad_claim(f) }.filter(|_| f[6..12] != mac));
    close_later(fd);
    Ok(taken)
}

/// The address an ARP frame says is taken: a reply's (or announcement's) sender address,
/// or the target of someone else's probe (sender 0.0.0.0).
fn arp_claim(f: &[u8]) -> Option<IpAddr> {
    if f.len() < 42 || f[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let spa = Ipv4Addr::new(f[28], f[29], f[30], f[31]);
    let probing = u16::from_be_bytes([f[20], f[21]]) == 1 && spa.is_unspecified();
    Some(IpAddr::V4(if probing { Ipv4Addr::new(f[38], f[39], f[40], f[41]) } else { spa }))
}

/// The address a neighbour discovery frame says is taken: an advertisement's target, or
/// the target of someone else's duplicate address detection (a solicitation from ::).
fn dad_claim(f: &[u8]) -> Option<IpAddr> {
    // Ethernet + IPv6 (next header ICMPv6) + type, code, checksum, flags + target.
    if f.len() < 78 || f[12..14] != ETH_P_IPV6.to_be_bytes() || f[20] != 58 {
        return None;
    }
    let from_unspecified = f[22..38] == [0; 16];
    if !(f[54] == 136 || (f[54] == 135 && from_unspecified)) {
        return None;
    }
    let mut t = [0u8; 16];
    t.copy_from_slice(&f[62..78]);
    Some(IpAddr::V6(Ipv6Addr::from(t)))
}

/// Read frames until every address in `wanted` is claimed or `wait` is over.
fn collect(
    fd: &OwnedFd,
    wanted: &BTreeSet<IpAddr>,
    wait: Duration,
    claim: impl Fn(&[u8]) -> Option<IpAddr>,
) -> BTreeSet<IpAddr> {
    let mut taken = BTreeSet::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 256];
    while taken.len() < wanted.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one descriptor we own.
        if unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) } <= 0 {
            continue;
        }
        // SAFETY: recv(2) into a buffer we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        let Ok(n) = usize::try_from(n) else { continue };
        if let Some(a) = claim(&buf[..n]).filter(|a| wanted.contains(a)) {
            taken.insert(a);
        }
    }
    taken
}

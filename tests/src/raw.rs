//! Raw frames in and out of an interface of a namespace (AF_PACKET).
//!
//! The socket is opened on a thread that first moved into the namespace: a socket stays
//! bound to the namespace it was created in, so it keeps working from any thread.

use std::{
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use crate::Netns;

pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
}

fn err(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", std::io::Error::last_os_error())
}

impl RawSocket {
    /// A packet socket on `iface` inside `ns`, receiving every protocol.
    pub fn open(ns: &Netns, iface: &str) -> anyhow::Result<RawSocket> {
        Self::open_at(&ns.path(), iface)
    }

    /// The same for a namespace given by path (e.g. an endpoint's /run/netns/NAME).
    pub fn open_at(path: &std::path::Path, iface: &str) -> anyhow::Result<RawSocket> {
        let path = path.to_path_buf();
        let iface = iface.to_string();
        std::thread::spawn(move || -> anyhow::Result<RawSocket> {
            let f = File::open(&path)?;
            // SAFETY: valid fd; only this short-lived thread changes namespace.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(err("setns"));
            }
            let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
            // SAFETY: plain socket(2).
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
            if raw < 0 {
                return Err(err("socket(AF_PACKET)"));
            }
            // SAFETY: raw is a fresh fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let c = std::ffi::CString::new(iface.clone())?;
            // SAFETY: NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) } as i32;
            anyhow::ensure!(ifindex != 0, "no interface {iface}");
            // SAFETY: zeroed sockaddr_ll is valid; fields set below.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto as u16;
            sll.sll_ifindex = ifindex;
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sll as *const _ as *const libc::sockaddr,
                    std::mem::size_of_val(&sll) as u32,
                )
            };
            if rc != 0 {
                return Err(err("bind(AF_PACKET)"));
            }
            Ok(RawSocket { fd, ifindex })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
    }

    pub fn send(&self, frame: &[u8]) -> anyhow::Result<()> {
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of_val(&sll) as u32,
            )
        };
        if n != frame.len() as isize {
            return Err(err("sendto"));
        }
        Ok(())
    }

    /// Incoming frames (not our own outgoing ones) seen within `window`.
    pub fn recv_for(&self, window: Duration) -> anyhow::Result<Vec<Vec<u8>>> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(out);
            }
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if rc < 0 {
                return Err(err("poll"));
            }
            if rc == 0 {
                continue;
            }
            // SAFETY: zeroed sockaddr_ll out-parameter.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of_val(&sll) as u32;
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                continue;
            }
            if sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            out.push(buf[..n as usize].to_vec());
        }
    }
}

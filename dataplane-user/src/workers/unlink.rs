//! Removing an endpoint's interface (a CNI DEL, `rm`): its entries and rows go at once, and a
//! forked child deletes the interface, which costs the kernel an unregister (RCU
//! barriers, and two grace periods more per tcx link) that the runtime has no reason to
//! wait for. The child holds the namespace open through its descriptor (so a runtime
//! that deletes the namespace at once does not race it) and a lock file per interface
//! that an ADD of the same name waits for and that keeps its ifindex from being reused.
//!
//! Below the datapath (bpf/ waits for these children before it removes pins): this
//! module knows namespaces, locks and netlink requests, nothing of programs or the store.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Where deletions in flight keep their locks: one dir for every instance, so that no
/// instance hands out the ifindex of an interface still being deleted.
const UNLINK_DIR: &str = "/run/dataplane/unlink";

/// The lock of deleting interface `ifname` (`ifindex`) of the namespace file `netns` (by
/// its inode: runtimes name one namespace by several paths).
fn unlink_lock(netns: &File, ifname: &str, ifindex: u32) -> std::io::Result<PathBuf> {
    Ok(Path::new(UNLINK_DIR).join(format!("{ifindex}-{}-{ifname}.lock", netns_tag(netns)?)))
}

fn netns_tag(netns: &File) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = netns.metadata()?;
    Ok(format!("{:x}-{:x}", m.dev(), m.ino()))
}

/// ifindexes of interfaces being deleted (not to be handed out again until they are gone:
/// their programs would find the new owner's identity under the same ifindex).
pub fn pending_unlinks() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(UNLINK_DIR) else { return Vec::new() };
    dir.flatten().filter_map(|e| e.file_name().to_str()?.split('-').next()?.parse().ok()).collect()
}

/// Delete interfaces `links` (name, ifindex) of the namespace at `netns` in a detached
/// child, then remove the pins `unpin` (the interfaces' links: their programs stay on
/// until the interfaces are gone) and their directory if it is left empty. Returns once
/// the child exists; it holds the namespace and the locks.
///
/// The child is forked, not executed: everything it needs (the namespace and /dev/null
/// descriptors, the netlink requests, the paths) is made before the fork, and it only
/// makes system calls, so forking a process that has other threads is safe. It forks
/// once more and the middle process exits at once, so a long-running caller has no child
/// to reap.
pub fn spawn_unlink(netns: &str, links: &[(String, u32)], unpin: &[PathBuf]) -> std::io::Result<()> {
    let cstr = |p: PathBuf| -> std::io::Result<std::ffi::CString> {
        std::ffi::CString::new(p.into_os_string().into_encoded_bytes())
            .map_err(|_| std::io::ErrorKind::InvalidInput.into())
    };
    let ns = File::open(netns)?;
    let devnull = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    let mut locks = Vec::new();
    for (ifname, ifindex) in links {
        let path = unlink_lock(&ns, ifname, *ifindex)?;
        std::fs::create_dir_all(path.parent().expect("lock has a dir"))?;
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        if !crate::sys::flock(&lock, libc::LOCK_SH) {
            return Err(std::io::Error::last_os_error());
        }
        locks.push((lock, cstr(path)?));
    }
    let requests: Vec<[u8; 32]> = links.iter().map(|(_, ifindex)| dellink(*ifindex)).collect();
    let pins = unpin.iter().cloned().map(cstr).collect::<std::io::Result<Vec<_>>>()?;
    let mut dirs: Vec<PathBuf> = unpin.iter().filter_map(|p| p.parent().map(Path::to_path_buf)).collect();
    dirs.sort();
    dirs.dedup();
    let dirs = dirs.into_iter().map(cstr).collect::<std::io::Result<Vec<_>>>()?;
    // For race tests: DATAPLANE_PAUSE=unlink:child holds the child (DATAPLANE_PAUSE_MS)
    // before it deletes anything, as a busy RTNL would.
    let pause = (std::env::var_os("DATAPLANE_PAUSE").is_some_and(|v| v == "unlink:child")).then(|| {
        let ms: i64 = std::env::var("DATAPLANE_PAUSE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1500);
        libc::timespec { tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000 }
    });
    // SAFETY: fork(2); the children below only make system calls on memory made before
    // the fork, then _exit(2).
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => unsafe {
            if libc::fork() != 0 {
                libc::_exit(0);
            }
            // Out of the caller's session (a runtime that kills the plugin's group), no
            // stdio (a runtime reading the plugin's output to its end must not wait for us).
            libc::setsid();
            for fd in 0..3 {
                libc::dup2(devnull.as_raw_fd(), fd);
            }
            if let Some(t) = &pause {
                libc::nanosleep(t, std::ptr::null_mut());
            }
            if crate::netns::set(ns.as_raw_fd()).is_ok() {
                let sock = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE);
                if sock >= 0 {
                    let mut answer = [0u8; 512];
                    for r in &requests {
                        if libc::send(sock, r.as_ptr().cast(), r.len(), 0) == r.len() as isize {
                            libc::recv(sock, answer.as_mut_ptr().cast(), answer.len(), 0);
                        }
                    }
                }
            }
            for p in &pins {
                libc::unlink(p.as_ptr());
            }
            for d in &dirs {
                libc::rmdir(d.as_ptr());
            }
            for (_, path) in &locks {
                libc::unlink(path.as_ptr());
            }
            libc::_exit(0)
        },
        middle => {
            // SAFETY: waiting for the middle child, which exits at once.
            unsafe { libc::waitpid(middle, std::ptr::null_mut(), 0) };
            Ok(())
        }
    }
}

/// An RTM_DELLINK request for interface `ifindex`, asking for an answer (the child waits
/// for it, so the lock is held until the interface is gone).
fn dellink(ifindex: u32) -> [u8; 32] {
    const RTM_DELLINK: u16 = 17;
    const FLAGS: u16 = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    let mut m = [0u8; 32];
    m[0..4].copy_from_slice(&32u32.to_ne_bytes()); // nlmsghdr: length
    m[4..6].copy_from_slice(&RTM_DELLINK.to_ne_bytes()); // type
    m[6..8].copy_from_slice(&FLAGS.to_ne_bytes()); // flags; seq, pid: 0
    m[20..24].copy_from_slice(&ifindex.to_ne_bytes()); // ifinfomsg: family, type 0; index
    m
}

/// Whether a child is deleting interfaces now.
pub fn unlinks_pending() -> bool {
    std::fs::read_dir(UNLINK_DIR).is_ok_and(|mut d| d.next().is_some())
}

/// Wait (at most 10 s each) until no interface is being deleted by a child.
pub fn wait_unlinks() {
    let Ok(dir) = std::fs::read_dir(UNLINK_DIR) else { return };
    for e in dir.flatten() {
        wait_path(&e.path());
    }
}

/// Wait (at most 10 s) until interface `ifname` of the namespace at `netns` is no longer
/// being deleted by a child.
pub fn wait_unlink(netns: &str, ifname: &str) {
    let Ok(dir) = std::fs::read_dir(UNLINK_DIR) else { return };
    let Ok(tag) = File::open(netns).and_then(|ns| netns_tag(&ns)) else { return };
    let suffix = format!("-{tag}-{ifname}.lock");
    for e in dir.flatten() {
        if e.file_name().to_str().is_some_and(|n| n.ends_with(&suffix)) {
            wait_path(&e.path());
        }
    }
}

pub(crate) fn wait_path(path: &Path) {
    let Ok(f) = File::open(path) else { return };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !crate::sys::flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
        if Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

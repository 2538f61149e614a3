//! Work finished after a command returns, so that attaching an endpoint does not wait
//! for RCU grace periods: the endpoint's programs are attached as cls_bpf filters (no
//! grace period; the endpoint is protected from its first frame) and a detached child
//! process (`<our binary> __harden ...`) then upgrades them to tcx links, which a holder
//! of CAP_NET_ADMIN inside the endpoint cannot remove. Each upgrade holds a lock file per
//! endpoint interface from before the command returns until it is done; whatever must see
//! the final state (rm of that endpoint, `bpf status`, `bpf reload`, a thorough reconcile)
//! waits for it with [`wait`] or [`wait_all`].
//!
//! Removing a CNI attachment ends the same way: its entries and rows go at once, and a
//! forked child deletes the interface, which costs the kernel an unregister (RCU
//! barriers, and two grace periods more per tcx link) that the runtime has no reason to
//! wait for. The child holds the namespace open through its descriptor (so a runtime
//! that deletes the namespace at once does not race it) and a lock file per interface
//! that an ADD of the same name waits for and that keeps its ifindex from being reused.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::bpf::pins::Pins;

/// The hidden first argument that makes either binary run [`main`].
pub const HARDEN_ARG: &str = "__harden";

/// The directory of one instance's lock files (by its bpffs dir, which is unique).
fn lock_dir(pins: &Pins) -> PathBuf {
    pins.run_path("harden")
}

fn lock_file(pins: &Pins, ifindex: u32) -> PathBuf {
    lock_dir(pins).join(format!("{ifindex}.lock"))
}

/// Start upgrading the cls_bpf filters of endpoint interface `ifname` (`ifindex`) in the
/// namespace at `netns` to tcx links, in a detached child. The lock is taken here, before
/// this returns, and handed to the child. Failing to start is not an error for the
/// attach (the filters protect the endpoint); it is reported as a warning.
pub fn spawn_harden(pins: &Pins, netns: &str, ifname: &str, ifindex: u32) {
    if let Err(e) = try_spawn(pins, netns, ifname, ifindex) {
        eprintln!("dataplane: warning: {ifname} keeps its cls_bpf filters (could not start the tcx upgrade: {e})");
    }
}

fn try_spawn(pins: &Pins, netns: &str, ifname: &str, ifindex: u32) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let path = lock_file(pins, ifindex);
    std::fs::create_dir_all(path.parent().expect("lock has a dir"))?;
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    if !crate::sys::flock(&lock, libc::LOCK_SH) {
        return Err(std::io::Error::last_os_error());
    }
    let fd = lock.as_raw_fd();
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(HARDEN_ARG)
        .arg(pins.root())
        .arg(netns)
        .arg(ifname)
        .arg(ifindex.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    // SAFETY: pre_exec only calls async-signal-safe fcntl: the lock's descriptor (and so
    // the lock) is inherited by the child, and outlives this process.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()?;
    Ok(())
}

/// The child: `__harden BPFFS NETNS IFNAME IFINDEX`. Returns its exit code (nobody reads
/// it; a failed upgrade leaves the cls_bpf filters, which a thorough reconcile checks).
pub fn main(args: &[String]) -> i32 {
    let [bpffs, netns, ifname, ifindex] = args else { return 2 };
    let Ok(ifindex) = ifindex.parse::<u32>() else { return 2 };
    let pins = Pins::new(Path::new(bpffs));
    let code = match crate::bpf::endpoints::harden(&pins, netns, ifname, ifindex) {
        Ok(_) => 0,
        Err(_) => 1,
    };
    let _ = std::fs::remove_file(lock_file(&pins, ifindex));
    // The instance's lock dir goes with its last upgrade (fails while others run).
    let _ = std::fs::remove_dir(lock_dir(&pins));
    code
}

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
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
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

/// Wait (at most 10 s) until no upgrade of interface `ifindex` is in flight.
pub fn wait(pins: &Pins, ifindex: u32) {
    wait_path(&lock_file(pins, ifindex));
}

/// Wait (at most 10 s each) until no upgrade of this instance is in flight.
pub fn wait_all(pins: &Pins) {
    let Ok(dir) = std::fs::read_dir(lock_dir(pins)) else { return };
    for e in dir.flatten() {
        wait_path(&e.path());
    }
}

fn wait_path(path: &Path) {
    let Ok(f) = File::open(path) else { return };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !crate::sys::flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
        if Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

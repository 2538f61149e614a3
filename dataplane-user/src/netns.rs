//! Entering network namespaces.
//!
//! Interface names, ifindexes and XDP attachment are all resolved in the caller's
//! network namespace, so a command aimed at another namespace moves its thread there
//! first. Only the network namespace changes: the mount namespace (and with it bpffs and
//! every pin) stays the host's, which is why this is not `ip netns exec`.

use std::{fs::File, os::fd::AsRawFd, os::unix::fs::OpenOptionsExt, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {name:?} not found at {}: {source} (list them with `ip netns list`)", path.display())]
    Open {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {name:?} ({}): {source}", path.display())]
    Enter {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The namespace path a host-access interface is recorded with: whichever process opens
/// it is in the host's namespace (every dataplane command runs there).
pub const HOST_NS: &str = "/proc/self/ns/net";

/// `/run/netns/NAME` for a bare name; a value containing '/' is taken as a path
/// (e.g. `/proc/PID/ns/net`).
pub fn path_of(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        PathBuf::from("/run/netns").join(name)
    }
}

/// Move the calling thread into the network namespace open at `fd`: the one way the code
/// base enters one. Async-signal-safe (no allocation), so a forked child may call it.
pub fn set(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: setns(2) on a caller-provided fd; CLONE_NEWNET only affects this thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Move the calling thread into the network namespace `name`.
pub fn enter(name: &str) -> Result<(), NetnsError> {
    let path = path_of(name);
    let file =
        File::open(&path).map_err(|source| NetnsError::Open { name: name.into(), path: path.clone(), source })?;
    set(file.as_raw_fd()).map_err(|source| NetnsError::Enter { name: name.into(), path, source })
}

/// ifindex of `iface` in the current network namespace.
pub fn ifindex(iface: &str) -> Option<u32> {
    let c = std::ffi::CString::new(iface).ok()?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Name of `ifindex` in the current network namespace.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as the call requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname NUL-terminates on success.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

/// Hardware address of `iface` in the current network namespace (read through an ioctl on
/// a socket of this namespace; under nsenter, /sys shows the host's devices instead).
pub fn hwaddr(iface: &str) -> Option<[u8; 6]> {
    if iface.len() >= libc::IF_NAMESIZE {
        return None;
    }
    // SAFETY: plain socket creation; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: zeroed ifreq is valid; the name fits (checked above) and stays NUL-terminated.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *d = s as libc::c_char;
    }
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    // SAFETY: SIOCGIFHWADDR filled ifru_hwaddr.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Some(mac)
}

const NETNS_RUN_DIR: &str = "/run/netns";

/// Create a named network namespace at /run/netns/NAME, as `ip netns add` does: the
/// namespace is kept alive by a bind mount of its nsfs file, in a shared mount so other
/// mount namespaces (e.g. `ip netns exec`) see it.
pub fn create_named(name: &str) -> std::io::Result<PathBuf> {
    use std::ffi::CString;
    let dir = std::path::Path::new(NETNS_RUN_DIR);
    std::fs::create_dir_all(dir)?;
    let cdir = CString::new(NETNS_RUN_DIR).expect("no NUL");
    let none = c"none";
    // SAFETY: mount(2) with valid NUL-terminated strings and no data.
    unsafe {
        if libc::mount(none.as_ptr(), cdir.as_ptr(), none.as_ptr(), libc::MS_SHARED | libc::MS_REC, std::ptr::null())
            != 0
        {
            // Not a mount point yet: make it one, then shared.
            if libc::mount(cdir.as_ptr(), cdir.as_ptr(), none.as_ptr(), libc::MS_BIND | libc::MS_REC, std::ptr::null())
                != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(
                none.as_ptr(),
                cdir.as_ptr(),
                none.as_ptr(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    let path = dir.join(name);
    std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
    let target = CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // A fresh thread unshares its network namespace and pins it by bind-mounting its nsfs
    // file; the thread (and our own namespace) are untouched afterwards.
    let res = std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: unshare/mount on this short-lived thread only.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let src = c"/proc/thread-self/ns/net";
            if libc::mount(src.as_ptr(), target.as_ptr(), none.as_ptr(), libc::MS_BIND, std::ptr::null()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| std::io::Error::other("netns thread panicked"))?;
    if let Err(e) = res {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Delete a namespace made by [`create_named`] (unmount, unlink). Interfaces inside it
/// go with it once nothing else holds it.
pub fn delete_named(path: &std::path::Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: umount2 with a valid path.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Check that `path` names a network namespace (a file of nsfs whose namespace is a
/// network one) without opening anything that could block or act: a FIFO, a device, a
/// directory or a plain file is refused from its `stat` alone, before any `open`.
/// Returns the namespace's identity (device, inode) for comparing two paths.
pub fn check_netns_file(path: &str) -> Result<(u64, u64), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    // nsfs's magic number (linux/magic.h) and NS_GET_NSTYPE, _IO(0xb7, 0x3) (linux/nsfs.h).
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    let meta = std::fs::metadata(path).map_err(|e| format!("{path} is not a network namespace: {e}"))?;
    let ft = meta.file_type();
    let what = if ft.is_fifo() {
        Some("a FIFO")
    } else if ft.is_dir() {
        Some("a directory")
    } else if ft.is_char_device() || ft.is_block_device() {
        Some("a device")
    } else if ft.is_socket() {
        Some("a socket")
    } else {
        None
    };
    if let Some(w) = what {
        return Err(format!("{path} is not a network namespace: it is {w}"));
    }
    let magic = crate::sys::fs_magic(std::path::Path::new(path))
        .map_err(|e| format!("{path:?} is not a network namespace: {e}"))?;
    if magic != NSFS_MAGIC {
        return Err(format!(
            "{path} is not a network namespace: it is a plain file (a namespace is a file of nsfs, e.g. /run/netns/NAME or /proc/PID/ns/net)"
        ));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("{path} is not a network namespace: {e}"))?;
    // SAFETY: an ioctl without an argument on a descriptor we own.
    let kind = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind != libc::CLONE_NEWNET {
        return Err(format!("{path} is a namespace, but not a network namespace"));
    }
    Ok((meta.dev(), meta.ino()))
}

//! Making sure the pin directory sits on a BPF filesystem.

use std::{
    io,
    path::{Path, PathBuf},
};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const SYS_FS_BPF: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("{} is not on a BPF filesystem; mount one there (`mount -t bpf bpf DIR`) or pass --bpffs DIR under /sys/fs/bpf", dir.display())]
    NotBpffs { dir: PathBuf },
    #[error("mounting bpffs at /sys/fs/bpf failed: {source} (needs CAP_SYS_ADMIN; try `mount -t bpf bpf /sys/fs/bpf` as root)")]
    Mount {
        #[source]
        source: io::Error,
    },
    #[error("creating pin directory {}: {source}", dir.display())]
    Create {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn is_bpffs(path: &Path) -> bool {
    crate::sys::fs_magic(path).is_ok_and(|m| m == BPF_FS_MAGIC)
}

fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

/// Ensure `dir` exists on bpffs (mounting /sys/fs/bpf if it is not mounted yet, as other
/// eBPF daemons do), and create it with mode 0700.
pub fn ensure_dir(dir: &Path) -> Result<(), BpffsError> {
    let existing = nearest_existing(dir);
    if !is_bpffs(&existing) {
        if dir.starts_with(SYS_FS_BPF) && !is_bpffs(Path::new(SYS_FS_BPF)) {
            mount_sys_fs_bpf()?;
        }
        if !is_bpffs(&nearest_existing(dir)) {
            return Err(BpffsError::NotBpffs { dir: dir.to_path_buf() });
        }
    }
    create_private(dir)
}

pub fn create_private(dir: &Path) -> Result<(), BpffsError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| BpffsError::Create { dir: dir.to_path_buf(), source })
}

fn mount_sys_fs_bpf() -> Result<(), BpffsError> {
    let src = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: constant NUL-terminated strings, no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(BpffsError::Mount { source: io::Error::last_os_error() });
    }
    Ok(())
}

/// `ip netns exec NAME` runs its command in a mount namespace of its own with a fresh
/// /sys, so the host's bpffs and every pin are hidden there, and a bind mount made for a
/// new namespace under /run/netns stays in that private namespace (the host sees a plain
/// file). Run that way, dataplane would mount a throwaway bpffs and rebuild everything in
/// it. So when /sys/fs/bpf is not a BPF filesystem here, it joins the mount namespace of
/// its nearest ancestor process that is in another one (the shell that ran `ip netns
/// exec`; PID 1's is often not ours to open), keeping its network namespace: the same as
/// `nsenter --net=/run/netns/NAME dataplane ...`. Must run while the process has one
/// thread (setns of a mount namespace refuses others). Returns whether it joined; an error
/// says why it could not.
pub fn use_host_mounts() -> Result<bool, String> {
    use std::os::{fd::AsRawFd, unix::fs::MetadataExt};
    if is_bpffs(Path::new(SYS_FS_BPF)) {
        return Ok(false);
    }
    let ns_of = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/mnt")).ok().map(|m| (m.dev(), m.ino()));
    let Some(mine) = ns_of("self") else { return Ok(false) };
    let parent_of = |pid: &str| crate::sys::proc_stat(pid)?.into_iter().nth(1).filter(|ppid| ppid != "0");
    let mut pid = "self".to_string();
    let mut host = None;
    for _ in 0..64 {
        let Some(p) = parent_of(&pid) else { break };
        match ns_of(&p) {
            Some(ns) if ns != mine => {
                host = Some(p);
                break;
            }
            _ => pid = p,
        }
    }
    // No ancestor elsewhere: this is the mount namespace dataplane was started in.
    let Some(host) = host else { return Ok(false) };
    let why = |e: io::Error| {
        format!(
            "this process runs in a mount namespace of its own (as under `ip netns exec`), where the host's \
             /sys/fs/bpf and pins are hidden, and joining the one it was started from failed: {e}; run \
             dataplane with `nsenter --net=/run/netns/NAME dataplane ...` instead"
        )
    };
    let cwd = std::env::current_dir().ok();
    let ns = std::fs::File::open(format!("/proc/{host}/ns/mnt")).map_err(why)?;
    // SAFETY: setns(2) on a descriptor we hold open; the process has one thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(why(io::Error::last_os_error()));
    }
    if let Some(d) = cwd {
        let _ = std::env::set_current_dir(d);
    }
    Ok(true)
}

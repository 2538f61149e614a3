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
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: zeroed statfs is a valid out-parameter; path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
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

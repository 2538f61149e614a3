//! The system calls the standard library and our crates (aya, rtnetlink) do not wrap, each
//! written once: the raw bpf(2) commands we need beyond aya, flock, kill, randomness, the
//! interface index of this namespace, a filesystem's type (statfs) and a process's
//! /proc/PID/stat fields. (setns, being async-signal-safe and needed
//! before exec, lives with the namespaces: `netns::set`.)

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// bpf(2) with a `union bpf_attr` of `attr.len()` bytes.
///
/// # Safety
/// `attr` must be a valid `bpf_attr` for `cmd`; every pointer in it must be valid for what
/// the kernel reads or writes through it.
pub unsafe fn bpf(cmd: libc::c_long, attr: *mut u8, len: usize) -> io::Result<i64> {
    // SAFETY: upheld by the caller.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, len as u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// The BPF object (map, program or link) pinned at `pin`.
pub fn bpf_obj_get(pin: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut attr = [0u8; 128];
    attr[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    // SAFETY: the kernel reads `attr` (zero-padded) and the C string it points at.
    let fd = unsafe { bpf(BPF_OBJ_GET, attr.as_mut_ptr(), attr.len())? };
    // SAFETY: a new descriptor the kernel just gave us, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_OBJ_GET_INFO_BY_FD into `info` (the kernel writes at most `info.len()` bytes).
pub fn bpf_obj_info(fd: &OwnedFd, info: &mut [u8]) -> io::Result<()> {
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: the kernel writes at most info_len bytes into `info`.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, attr.as_mut_ptr(), attr.len()) }.map(drop)
}

/// Every entry of the BPF hash map `fd` (keys of `key_size`, values of `value_size`
/// bytes) by BPF_MAP_LOOKUP_BATCH: a call per 512 entries instead of two per entry.
/// An error (a kernel without batch operations: before 5.6) is returned for the caller
/// to iterate instead.
pub fn bpf_hash_dump(fd: BorrowedFd<'_>, key_size: usize, value_size: usize) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    const CHUNK: usize = 512;
    let mut keys = vec![0u8; key_size * CHUNK];
    let mut values = vec![0u8; value_size * CHUNK];
    let mut out = Vec::new();
    // The hash map's batch token: a bucket index.
    let (mut token_in, mut token_out) = (0u32, 0u32);
    let mut first = true;
    loop {
        // union bpf_attr, batch: in_batch, out_batch, keys, values (u64 each), count,
        // map_fd (u32 each), elem_flags, flags (u64 each).
        let mut attr = [0u8; 56];
        let in_ptr = if first { 0 } else { &mut token_in as *mut u32 as u64 };
        attr[0..8].copy_from_slice(&in_ptr.to_ne_bytes());
        attr[8..16].copy_from_slice(&(&mut token_out as *mut u32 as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(keys.as_mut_ptr() as u64).to_ne_bytes());
        attr[24..32].copy_from_slice(&(values.as_mut_ptr() as u64).to_ne_bytes());
        attr[32..36].copy_from_slice(&(CHUNK as u32).to_ne_bytes());
        attr[36..40].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
        // SAFETY: the kernel writes at most `count` keys and values into buffers of that
        // many, and one token into `token_out`; it reads `token_in`.
        let r = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, attr.as_mut_ptr(), attr.len()) };
        let n = u32::from_ne_bytes(attr[32..36].try_into().expect("4 bytes")) as usize;
        let done = match r {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        for i in 0..n.min(CHUNK) {
            out.push((
                keys[i * key_size..(i + 1) * key_size].to_vec(),
                values[i * value_size..(i + 1) * value_size].to_vec(),
            ));
        }
        if done {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}

/// flock(2) on `f`; false if it failed (with LOCK_NB: someone else holds it).
pub fn flock(f: &File, op: libc::c_int) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

/// Send `sig` to `pid` (a negative pid: to its process group); false if it failed.
pub fn kill(pid: i32, sig: libc::c_int) -> bool {
    // SAFETY: plain kill(2).
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Random bytes from the kernel (getrandom(2)).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // SAFETY: getrandom writes at most N bytes into b.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), N, 0) };
    b
}

/// ifindexes of the calling thread's namespace, sorted.
pub fn interfaces() -> Vec<u32> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 {
            out.push((*p).if_index);
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out.sort_unstable();
    out
}

/// The type (`f_type`, a magic number of linux/magic.h) of the filesystem `path` is on.
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs(2) into a zeroed struct we own, on a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// The fields of /proc/PID/stat after the command name (which may hold spaces and
/// parentheses): `[0]` the state, `[1]` the parent's pid, `[19]` the start time. `pid` is a
/// number or `self`.
pub fn proc_stat(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_string).collect())
}

/// Run `f` with SIGPIPE blocked in this thread, then drop a SIGPIPE it raised: a peer
/// that closes a socket we write to (etcd refusing a TLS client) is then an EPIPE error,
/// not the death of a CLI that keeps SIGPIPE's default for its own output.
pub fn without_sigpipe<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset operations on local, initialised sets; the mask is this thread's.
    unsafe {
        let mut pipe: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe);
        libc::sigaddset(&mut pipe, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, &mut old);
        let out = f();
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        while libc::sigtimedwait(&pipe, std::ptr::null_mut(), &zero) == libc::SIGPIPE {}
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        out
    }
}

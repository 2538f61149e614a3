//! Work finished after a command returns, so that attaching an endpoint does not wait
//! for RCU grace periods: the endpoint's programs are attached as cls_bpf filters (no
//! grace period; the endpoint is protected from its first frame) and a detached process
//! (`<our binary> __harden ...`, one per instance at a time) later upgrades the
//! anti-spoofing one to a tcx link, which a holder of CAP_NET_ADMIN inside the endpoint
//! cannot remove.
//!
//! Each tcx link holds RTNL across a grace period (10-15 ms here), which every netlink
//! user of the host waits for, the next attach among them. So upgrades wait for a pause in
//! endpoint churn: until no endpoint has been attached or removed for [`PAUSE_MS`], and no
//! longer than [`MAX_FACTOR`] times that after the attach. An endpoint removed before its
//! upgrade started never gets one (nothing to wait for). Whatever must see the final state
//! (`bpf status`, `bpf reload`, a thorough reconcile) asks for the queue to be upgraded at
//! once and waits for it ([`wait_all`]).
//!
//! The queue is a directory per instance: `IFINDEX-NONCE.pending` files (the namespace
//! path and interface name inside) written before the attach returns; the upgrader takes
//! one by locking it and renaming it to `.active`, which `rm` ([`cancel_or_wait`]) tells
//! apart from one it can still cancel by deleting it.

//!
//! Above the datapath (it attaches programs through bpf/); the deletion child is
//! `super::unlink`, below it.

use std::{
    fs::File,
    io::Read,
    os::fd::{AsRawFd, FromRawFd},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use super::unlink::wait_path;
use crate::bpf::pins::Pins;

/// The hidden first argument that makes either binary run [`main`].
pub const HARDEN_ARG: &str = "__harden";

/// How long endpoint churn must pause before queued upgrades start, in milliseconds.
pub const PAUSE_MS: u64 = 100;
/// An upgrade waits at most this many pauses after its attach, churn or not.
pub const MAX_FACTOR: u32 = 20;
/// Overrides [`PAUSE_MS`] for the upgrader a command starts (tests, and hosts that
/// prefer another trade between attach rate and the cls_bpf window).
pub const PAUSE_ENV: &str = "DATAPLANE_TCX_UPGRADE_PAUSE_MS";

/// The directory of one instance's queue (by its bpffs dir, which is unique).
fn lock_dir(pins: &Pins) -> PathBuf {
    pins.run_path("harden")
}

/// Requests for the queue to be upgraded at once: one file per waiting process (its pid).
fn now_dir(pins: &Pins) -> PathBuf {
    lock_dir(pins).join("now")
}

/// Held (exclusively) by the instance's running upgrader.
fn upgrader_lock(pins: &Pins) -> PathBuf {
    lock_dir(pins).join("upgrader.flock")
}

/// Its modification time is the last endpoint attach or removal.
fn activity_stamp(pins: &Pins) -> PathBuf {
    lock_dir(pins).join("activity")
}

/// Queue the upgrade of the cls_bpf filters of endpoint interface `ifname` (`ifindex`)
/// in the namespace at `netns` to a tcx link, and start the instance's upgrader unless it
/// runs. The entry exists before this returns. Failing is not an error for the attach
/// (the filters protect the endpoint); it is reported as a warning.
pub fn spawn_harden(pins: &Pins, netns: &str, ifname: &str, ifindex: u32) {
    if let Err(e) = queue(pins, netns, ifname, ifindex) {
        eprintln!(
            "dataplane: warning: {ifname} keeps its cls_bpf filters (could not queue its tcx upgrade in {}: {e})",
            lock_dir(pins).display()
        );
    }
}

fn queue(pins: &Pins, netns: &str, ifname: &str, ifindex: u32) -> std::io::Result<()> {
    let dir = lock_dir(pins);
    std::fs::create_dir_all(&dir)?;
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let stem = format!("{ifindex}-{}-{nanos}", std::process::id());
    // Written aside and renamed, so the upgrader never reads half an entry.
    let tmp = dir.join(format!("{stem}.new"));
    std::fs::write(&tmp, format!("{netns}\n{ifname}\n"))?;
    std::fs::rename(&tmp, dir.join(format!("{stem}.pending")))?;
    note_churn(pins);
    ensure_upgrader(pins)
}

/// Record an endpoint attach or removal (queued upgrades wait for a pause in these).
pub fn note_churn(pins: &Pins) {
    let dir = lock_dir(pins);
    if !dir.is_dir() {
        return;
    }
    let stamp = activity_stamp(pins);
    if let Ok(f) = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(stamp) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Start the instance's upgrader unless one holds its lock. A running one looks at the
/// queue again after it lets the lock go, so an entry written before this call is never
/// left without an upgrader.
fn ensure_upgrader(pins: &Pins) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let path = upgrader_lock(pins);
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    if !crate::sys::flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
        return Ok(());
    }
    let pause = std::env::var(PAUSE_ENV).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(PAUSE_MS);
    let fd = lock.as_raw_fd();
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(HARDEN_ARG)
        .arg(pins.root())
        .arg(fd.to_string())
        .arg(pause.to_string())
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

/// One queued upgrade: its file, when it was queued, and whether the upgrader has taken
/// it (`.active`) or not (`.pending`).
struct Entry {
    path: PathBuf,
    queued: SystemTime,
    active: bool,
}

/// The queue's entries (one directory listing), oldest first; only those of interface
/// `ifindex` if given.
fn entries(pins: &Pins, ifindex: Option<u32>) -> Vec<Entry> {
    let Ok(dir) = std::fs::read_dir(lock_dir(pins)) else { return Vec::new() };
    let prefix = ifindex.map(|i| format!("{i}-"));
    let mut out: Vec<Entry> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let active = name.ends_with(".active");
            if !(active || name.ends_with(".pending")) || prefix.as_deref().is_some_and(|p| !name.starts_with(p)) {
                return None;
            }
            let queued = e.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            Some(Entry { path: e.path(), queued, active })
        })
        .collect();
    out.sort_by_key(|e| e.queued);
    out
}

/// The names of the entries of this instance's queue, pending or in flight (for tests and
/// the benchmark: an empty list means every queued endpoint has its tcx link or is gone).
pub fn queued(pins: &Pins) -> Vec<String> {
    entries(pins, None).iter().filter_map(|e| e.path.file_name()?.to_str().map(String::from)).collect()
}

/// When the oldest entry's upgrade is due: once churn (last at `churn`) has paused for
/// `pause`, and no later than `max` after it was queued.
fn due(oldest: SystemTime, churn: SystemTime, pause: Duration, max: Duration) -> SystemTime {
    (churn + pause).min(oldest + max)
}

/// Whether a living process asked for the queue to be upgraded at once (requests of dead
/// ones are removed).
fn hurried(pins: &Pins) -> bool {
    let Ok(dir) = std::fs::read_dir(now_dir(pins)) else { return false };
    let mut any = false;
    for e in dir.flatten() {
        let pid = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok());
        match pid {
            Some(pid)
                if crate::sys::kill(pid, 0) || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) =>
            {
                any = true
            }
            _ => {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    any
}

/// The upgrader: `__harden BPFFS LOCK_FD PAUSE_MS`, holding the instance's upgrader lock
/// (inherited as LOCK_FD). Upgrades queued entries oldest first when they are due,
/// sleeping until then (woken early by a request in the `now` dir), and exits when the
/// queue is empty. Returns its exit code (nobody reads it; a failed upgrade leaves the
/// cls_bpf filters, which a thorough reconcile checks).
pub fn main(args: &[String]) -> i32 {
    let [bpffs, fd, pause] = args else { return 2 };
    let (Ok(fd), Ok(pause)) = (fd.parse::<i32>(), pause.parse::<u64>()) else { return 2 };
    // SAFETY: the descriptor our parent opened and handed down (not CLOEXEC); owned by this
    // process from here on.
    let lock = unsafe { File::from_raw_fd(fd) };
    upgrader(&Pins::new(Path::new(bpffs)), lock, Duration::from_millis(pause))
}

fn upgrader(pins: &Pins, lock: File, pause: Duration) -> i32 {
    let max = pause * MAX_FACTOR;
    let wake = Inotify::watch(&now_dir(pins));
    for e in entries(pins, None).iter().filter(|e| e.active) {
        requeue(&e.path);
    }
    let mut failed = 0;
    let mut locked = true;
    loop {
        let queue = entries(pins, None);
        let Some(oldest) = queue.iter().find(|e| !e.active) else {
            if !locked {
                forget_gone_instance(pins);
                return failed;
            }
            // Let the lock go, then look once more: an entry queued by a command that
            // found the lock still held is seen here.
            crate::sys::flock(&lock, libc::LOCK_UN);
            locked = false;
            continue;
        };
        if !locked {
            if !crate::sys::flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
                return failed; // another upgrader started meanwhile and has the queue
            }
            locked = true;
        }
        if !hurried(pins) {
            let churn =
                std::fs::metadata(activity_stamp(pins)).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            if let Ok(wait) = due(oldest.queued, churn, pause, max).duration_since(SystemTime::now()) {
                // Never more than `max` ahead unless the clock went back: then now.
                if !wait.is_zero() && wait <= max {
                    wake.wait(wait);
                    continue;
                }
            }
        }
        if upgrade(pins, &oldest.path).is_err() {
            failed = 1;
        }
    }
}

/// Put entry `active`, left by an upgrader that died, back in the queue (if it is still
/// there and nobody holds its lock). Whether it did.
fn requeue(active: &Path) -> bool {
    let Ok(f) = File::open(active) else { return false };
    crate::sys::flock(&f, libc::LOCK_EX | libc::LOCK_NB)
        && std::fs::rename(active, active.with_extension("pending")).is_ok()
}

/// Remove the queue's directory of an instance whose bpffs dir is gone (torn down), if no
/// upgrader holds it.
pub fn forget_gone_instance(pins: &Pins) {
    if pins.root().exists() {
        return;
    }
    let Ok(lock) = File::open(upgrader_lock(pins)) else {
        let _ = std::fs::remove_dir_all(lock_dir(pins));
        return;
    };
    if crate::sys::flock(&lock, libc::LOCK_EX | libc::LOCK_NB) && !entries(pins, None).iter().any(|e| !e.active) {
        let _ = std::fs::remove_dir_all(lock_dir(pins));
    }
}

/// Take one entry (lock it, rename it to `.active`) and upgrade its interface. An entry
/// that `rm` deleted first is skipped.
fn upgrade(pins: &Pins, pending: &Path) -> Result<(), ()> {
    let Ok(mut f) = File::open(pending) else { return Ok(()) };
    crate::sys::flock(&f, libc::LOCK_EX);
    let active = pending.with_extension("active");
    if std::fs::rename(pending, &active).is_err() {
        return Ok(()); // cancelled
    }
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let ifindex = active.file_name().and_then(|n| n.to_str()?.split('-').next()?.parse::<u32>().ok());
    let result = match (text.lines().collect::<Vec<_>>().as_slice(), ifindex) {
        ([netns, ifname], Some(ifindex)) => {
            crate::bpf::endpoints::harden(pins, netns, ifname, ifindex).map(drop).map_err(drop)
        }
        _ => Err(()),
    };
    let _ = std::fs::remove_file(&active);
    drop(f);
    result
}

/// An inotify descriptor watching a directory for new files.
struct Inotify(Option<std::os::fd::OwnedFd>);

impl Inotify {
    fn watch(dir: &Path) -> Inotify {
        let _ = std::fs::create_dir_all(dir);
        let Ok(cdir) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return Inotify(None) };
        // SAFETY: plain system calls; the descriptor is owned below.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK);
            if fd < 0 {
                return Inotify(None);
            }
            let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
            if libc::inotify_add_watch(fd, cdir.as_ptr(), libc::IN_CREATE | libc::IN_MOVED_TO) < 0 {
                return Inotify(None);
            }
            Inotify(Some(owned))
        }
    }

    /// Sleep for `d` at most, less if a file is made in the directory.
    fn wait(&self, d: Duration) {
        let ms = d.as_millis().clamp(1, i32::MAX as u128) as i32;
        let Some(fd) = &self.0 else {
            std::thread::sleep(Duration::from_millis(ms.min(10) as u64));
            return;
        };
        let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let mut buf = [0u8; 4096];
        // SAFETY: poll on one descriptor we own; read into a buffer of ours.
        unsafe {
            if libc::poll(&mut p, 1, ms) > 0 {
                while libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) > 0 {}
            }
        }
    }
}

/// Before `rm` of interface `ifindex`: cancel its queued upgrade, or wait (at most 10 s)
/// for one in flight, which would otherwise pin a link after rm unpinned. Also counts as
/// churn, so the queue's other upgrades keep waiting while endpoints go.
pub fn cancel_or_wait(pins: &Pins, ifindex: u32) {
    let dir = lock_dir(pins);
    if !dir.is_dir() {
        return;
    }
    note_churn(pins);
    for e in entries(pins, Some(ifindex)) {
        if e.active {
            wait_path(&e.path);
        } else if std::fs::remove_file(&e.path).is_err() {
            // Taken by the upgrader a moment ago.
            wait_path(&e.path.with_extension("active"));
        }
    }
    // A child of an earlier version (one per attach, holding IFINDEX.lock), started before
    // an upgrade of the binary and still running.
    wait_path(&dir.join(format!("{ifindex}.lock")));
}

/// Have every queued upgrade of this instance made now, and wait until none is queued or
/// in flight (giving up after 10 s without progress).
pub fn wait_all(pins: &Pins) {
    let dir = lock_dir(pins);
    if !dir.is_dir() {
        return;
    }
    // Children of an earlier version (see cancel_or_wait).
    if let Ok(d) = std::fs::read_dir(&dir) {
        d.flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".lock")))
            .for_each(|e| wait_path(&e.path()));
    }
    if entries(pins, None).is_empty() {
        return;
    }
    let request = now_dir(pins).join(std::process::id().to_string());
    let _ = std::fs::create_dir_all(now_dir(pins));
    let _ = std::fs::write(&request, b"");
    // An upgrader that died left its queue: start another.
    let _ = ensure_upgrader(pins);
    let mut left = usize::MAX;
    let mut deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queue = entries(pins, None);
        let now_left = queue.len();
        if now_left == 0 || Instant::now() > deadline {
            break;
        }
        if now_left < left {
            left = now_left;
            deadline = Instant::now() + Duration::from_secs(10);
        }
        match queue.iter().find(|e| e.active) {
            Some(a) => {
                wait_path(&a.path);
                // Its lock is free and the entry still there: the upgrader that took it
                // died (an `.active` entry is locked before it is named so, and unlocked
                // only after it is gone). Queue it again, for an upgrader of ours.
                if requeue(&a.path) {
                    let _ = ensure_upgrader(pins);
                }
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let _ = std::fs::remove_file(&request);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_is_due_after_the_pause_in_churn_and_never_later_than_max_after_its_attach() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let (pause, max) = (Duration::from_millis(100), Duration::from_secs(2));
        // Queued at t0, churn ended at t0 + 50 ms: due 100 ms after that.
        assert_eq!(due(t0, t0 + Duration::from_millis(50), pause, max), t0 + Duration::from_millis(150));
        // Churn that goes on (last at t0 + 1.95 s) cannot hold it past t0 + 2 s.
        assert_eq!(due(t0, t0 + Duration::from_millis(1_950), pause, max), t0 + max);
    }
}

//! The eBPF object built by build.rs, and loading it with the maps pinned under bpffs.

use std::path::PathBuf;

use aya::{Ebpf, EbpfLoader};

use crate::bpffs::BpffsError;

/// The eBPF object, aligned as the ELF parser needs. Empty when the crate was built
/// without the eBPF toolchain (see build.rs).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("this dataplane binary was built without its eBPF programs (the eBPF toolchain was missing at build time); run `cargo xtask build`, which installs nightly rust-src and bpf-linker, then use the binary it builds")]
    PlaceholderObject,
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("the kernel refused program {name}: {source}")]
    Verify {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("interface {iface:?} not found in {netns}")]
    NoSuchInterface { iface: String, netns: String },
    #[error("{iface} already has an XDP program that this dataplane instance did not attach: if it is another instance's (another --bpffs dir), remove it there (`dataplane --bpffs DIR bpf unload --iface {iface}`, or its networks); a program attached through a BPF link cannot be removed with `ip link set dev {iface} xdp off`, only by its owner removing the link (a pinned link: delete the pin); a plain one can: {source}")]
    Busy {
        iface: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {name} to {iface} in {mode} mode failed: {source}")]
    Attach {
        name: &'static str,
        iface: String,
        mode: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinned link {} is unusable: {source}", path.display())]
    Link {
        path: PathBuf,
        #[source]
        source: Cause,
    },
    #[error("pinning {} failed: {source}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: Cause,
    },
    #[error("nothing to detach: dataplane has no program on {iface} in {netns} (no pin at {})", path.display())]
    NotAttached { iface: String, netns: String, path: PathBuf },
    #[error("no dataplane maps under {}: attach a program first (`dataplane bpf load --iface IFACE`)", dir.display())]
    NoMaps { dir: PathBuf },
    #[error("map {}: {source}", path.display())]
    Map {
        path: PathBuf,
        #[source]
        source: Cause,
    },
    #[error("removing pin {}: {source}", path.display())]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The error under a link, pin or map failure: the library's own error where there is
/// one (so its chain is kept), else a message.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

static LOG_LEVEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// aya-log level the programs are loaded with: 0 = off (the default), 1 error .. 5 trace.
/// Drop events are logged at debug (4). DATAPLANE_BPF_LOG_LEVEL sets the default.
pub fn set_log_level(level: u8) {
    LOG_LEVEL.store(level, std::sync::atomic::Ordering::Relaxed);
}

pub fn log_level() -> u8 {
    match LOG_LEVEL.load(std::sync::atomic::Ordering::Relaxed) {
        u8::MAX => std::env::var("DATAPLANE_BPF_LOG_LEVEL").ok().and_then(|v| parse_log_level(&v)).unwrap_or(0),
        l => l,
    }
}

pub fn parse_log_level(s: &str) -> Option<u8> {
    Some(match s {
        "off" | "0" => 0,
        "error" | "1" => 1,
        "warn" | "2" => 2,
        "info" | "3" => 3,
        "debug" | "4" => 4,
        "trace" | "5" => 5,
        _ => return None,
    })
}

pub fn is_placeholder() -> bool {
    OBJECT.is_empty()
}

/// Load (but do not attach) every program, reusing the maps pinned in `map_dir` and
/// pinning them there if they are new. The directory must be on bpffs.
pub fn load_object(map_dir: &std::path::Path) -> Result<Ebpf, BpfError> {
    load_object_from(OBJECT, map_dir)
}

/// [`load_object`] for another build of the programs (the bench's, which adds its
/// baseline programs).
pub fn load_object_from(object: &[u8], map_dir: &std::path::Path) -> Result<Ebpf, BpfError> {
    if object.is_empty() {
        return Err(BpfError::PlaceholderObject);
    }
    crate::bpffs::ensure_dir(map_dir)?;
    // No CO-RE relocations in our programs: skipping the kernel BTF saves parsing
    // /sys/kernel/btf/vmlinux (about 20 ms) on every command that loads the object.
    let level = log_level();
    EbpfLoader::new()
        .btf(None)
        .override_global("AYA_LOG_LEVEL", &level, false)
        .default_map_pin_directory(map_dir)
        .load(object)
        .map_err(|e| BpfError::Load(Box::new(e)))
}

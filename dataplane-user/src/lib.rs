//! dataplane user space: loads the kernel programs, pins them, and manages the maps they
//! decide from. The `dataplane` binary (src/main.rs, src/cli/) is a thin layer over this.

pub mod bpf;
pub mod bpffs;
pub mod cluster;
pub mod control;
pub mod frontend;
pub mod ipam;
pub mod mac;
pub mod model;
pub mod netns;
pub mod nl;
pub mod probe;
pub mod store;
pub mod sys;
pub mod timing;
pub mod workers;

/// Default bpffs directory for pins (maps, links); one per host network namespace.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/dataplane";

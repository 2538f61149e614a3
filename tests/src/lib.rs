//! A lab for root-only tests and the demo: private network namespaces joined by veth
//! pairs, raw frames in and out of them, and the real `dataplane` binary.
//!
//! Everything created here is owned by a guard whose `Drop` removes it, so a failing
//! test still leaves the host as it found it. Nothing here touches interfaces it did
//! not create.

pub mod cluster;
pub mod cni;
pub mod docker;
pub mod frames;
pub mod lab;
pub mod plugin;
pub mod raw;
pub mod testrun;

pub use lab::{dataplane, dataplane_bin, Bpffs, Lab, Netns};

/// Output of `--format json` (one JSON object per line, as `docker ps --format json`
/// prints) as a JSON array.
pub fn json_lines(text: &str) -> serde_json::Value {
    serde_json::Value::Array(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object per line ({e}): {text}")))
            .collect(),
    )
}

/// [`json_lines`] for output that may be cut short or absent (a command that failed in a
/// race test, a guard's cleanup): the lines that parse.
pub fn json_lines_lenient(text: &str) -> serde_json::Value {
    serde_json::Value::Array(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

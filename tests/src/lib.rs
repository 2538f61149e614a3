//! A lab for root-only tests and the demo: private network namespaces joined by veth
//! pairs, raw frames in and out of them, and the real `dataplane` binary.
//!
//! Everything created here is owned by a guard whose `Drop` removes it, so a failing
//! test still leaves the host as it found it. Nothing here touches interfaces it did
//! not create.

pub mod cni;
pub mod docker;
pub mod frames;
pub mod lab;
pub mod plugin;
pub mod raw;
pub mod testrun;

pub use lab::{dataplane, dataplane_bin, Bpffs, Lab, Netns};

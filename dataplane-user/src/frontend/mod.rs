//! Front ends that reach the engine from outside the command line: the Docker network
//! plugin (`docker.rs`) and the CNI plugin (`cni.rs`). Each calls only the engine's API
//! (`control::Engine`).

pub mod cni;
pub mod docker;
pub mod metrics;

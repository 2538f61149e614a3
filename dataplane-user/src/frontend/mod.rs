//! Front ends that reach the engine from outside the command line: the Docker network
//! plugin (`docker.rs`) and the CNI plugin (`cni.rs`). Each calls only the engine's API
//! (`control::Engine`). `http.rs` is the HTTP/1.1 server (hyper) under the Docker
//! plugin's socket and the metrics endpoint.

pub mod cni;
pub mod docker;
pub mod http;
pub mod metrics;

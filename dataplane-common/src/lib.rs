//! Types and logic shared by the dataplane's eBPF programs and its user space.
//!
//! Everything here is `no_std` and allocation-free so the very same functions run in the
//! kernel (through `dataplane-ebpf`) and in host unit tests. Map keys and values are
//! `#[repr(C)]` and derive `bytemuck::Pod`, which refuses to compile a struct with
//! padding: the kernel copies these bytes verbatim, so hidden padding would make two
//! equal keys hash differently.
#![no_std]

pub mod frame;
pub mod maps;

pub use frame::{
    admission, admission_qinq, egress_check, group_claims, parse_l2, Claim, Claims, Decision, L2Header, Malformed,
    Packet, Verdict,
};
pub use maps::{
    AdmitKey, AdmitSlot, AdmitValue, Conflict, Counter, EndpointCounters, EndpointInfo, Ip6Key, IpKey, OurIp, Reason,
    VlanKey, VlanTrunk,
};

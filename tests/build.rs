//! Builds the bench's eBPF object: the programs we ship plus the bench's baselines
//! (`dp_bench_*`, feature `bench` of dataplane-ebpf), as `$OUT_DIR/dataplane-bench.bpf.o`.

use std::{env, path::PathBuf};

#[path = "../dataplane-user/ebpf_build.rs"]
mod ebpf_build;

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    if let Err(e) = ebpf_build::build_object(&out_dir.join("dataplane-bench.bpf.o"), &["bench"], "ebpf-bench") {
        eprintln!("error: building the bench's eBPF object failed: {e:#}");
        std::process::exit(1);
    }
}

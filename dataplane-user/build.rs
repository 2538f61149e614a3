//! Builds the eBPF object we ship and hands it to the crate through
//! `$OUT_DIR/dataplane.bpf.o` (see ebpf_build.rs).

use std::{env, path::PathBuf};

#[path = "ebpf_build.rs"]
mod ebpf_build;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(dataplane_ebpf_placeholder)");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    match ebpf_build::build_object(&out_dir.join("dataplane.bpf.o"), &[], "ebpf") {
        Ok(true) => {}
        Ok(false) => println!("cargo:rustc-cfg=dataplane_ebpf_placeholder"),
        Err(e) => {
            // A build script's stderr is shown by cargo on failure; exit instead of
            // panicking so the user sees one clear message, not a backtrace.
            eprintln!("error: building the eBPF object failed: {e:#}");
            std::process::exit(1);
        }
    }
}

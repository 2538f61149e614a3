//! Building the eBPF object (crate `dataplane-ebpf`) with the nightly toolchain and
//! bpf-linker, for the build scripts of dataplane-user (the object we ship) and
//! dataplane-tests (the bench's object, with its baseline programs).
//!
//! Without the eBPF toolchain the build still succeeds with an empty placeholder object
//! and a warning, so `cargo check`/`clippy`/docs work anywhere; the binary then refuses
//! to load programs with the same instructions (`cargo xtask build` installs the
//! toolchain). Set DATAPLANE_REQUIRE_EBPF=1 to make a missing toolchain a build error.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

const HOWTO: &str = "the eBPF toolchain is missing; run `cargo xtask build` once, it installs \
nightly rust-src and bpf-linker (see README.md, Requirements)";

/// Build crate `dataplane-ebpf` with `features` into `target/<target_subdir>` and copy
/// the object to `object`. Returns false (and writes an empty placeholder object) when
/// the eBPF toolchain is missing and DATAPLANE_REQUIRE_EBPF is not 1.
pub fn build_object(object: &Path, features: &[&str], target_subdir: &str) -> anyhow::Result<bool> {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir.parent().expect("crate lives in the workspace").to_path_buf();

    for dir in ["dataplane-ebpf/src", "dataplane-common/src"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    for file in ["dataplane-ebpf/Cargo.toml", "dataplane-common/Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(file).display());
    }
    println!("cargo:rerun-if-env-changed=DATAPLANE_REQUIRE_EBPF");
    println!("cargo:rerun-if-env-changed=PATH");

    let cargo_home = cargo_home();
    // Re-run once bpf-linker appears (cargo install adds it to $CARGO_HOME/bin).
    println!("cargo:rerun-if-changed={}", cargo_home.join("bin").display());

    let missing = missing_toolchain(&cargo_home);
    if let Some(what) = missing {
        if env::var_os("DATAPLANE_REQUIRE_EBPF").is_some_and(|v| v == "1") {
            anyhow::bail!("{what}: {HOWTO}");
        }
        println!("cargo:warning=dataplane: {what}: built with an empty eBPF placeholder; {HOWTO}");
        fs::write(object, b"")?;
        return Ok(false);
    }

    let target_dir = workspace.join("target").join(target_subdir);
    let mut cmd = Command::new(cargo_home.join("bin").join("cargo"));
    if !cargo_home.join("bin").join("cargo").exists() {
        cmd = Command::new("cargo");
    }
    cmd.current_dir(&workspace)
        .args(["+nightly", "build", "--package", "dataplane-ebpf", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(features.iter().flat_map(|f| ["--features", f]))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", path_with(&cargo_home.join("bin")))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    // The outer cargo sets these for the host build; none of them apply to the BPF one.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
    ] {
        cmd.env_remove(var);
    }
    // BPF ISA v3 (32-bit ALU and jumps: no shift pairs to clear upper halves, kernels since
    // 5.1) and word loads at any offset (packet fields at odd offsets are one load, not
    // bytes put together; the verifier allows them where the CPU does, as on x86-64 and
    // arm64): the admission path ~10% shorter in time (docs/BENCHMARKS.md).
    cmd.env(
        "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
        "-C target-cpu=v3 -C target-feature=+allows-misaligned-mem-access",
    );
    let status = cmd.status().map_err(|e| anyhow::anyhow!("running cargo +nightly: {e}"))?;
    if !status.success() {
        anyhow::bail!(
            "`cargo +nightly build --package dataplane-ebpf --target bpfel-unknown-none` failed \
             ({status}); its errors are above"
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/dataplane");
    fs::copy(&built, object)
        .map_err(|e| anyhow::anyhow!("copying {} to {}: {e}", built.display(), object.display()))?;
    Ok(true)
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn path_with(dir: &Path) -> OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(p) = env::var_os("PATH") {
        paths.extend(env::split_paths(&p));
    }
    env::join_paths(paths).unwrap_or_default()
}

fn on_path(name: &str, cargo_home: &Path) -> bool {
    let path = path_with(&cargo_home.join("bin"));
    env::split_paths(&path).any(|d| d.join(name).is_file())
}

/// What is missing, if anything. Cheap checks only: this runs on every build.
fn missing_toolchain(cargo_home: &Path) -> Option<String> {
    if !on_path("bpf-linker", cargo_home) {
        return Some("bpf-linker not found on PATH or in $CARGO_HOME/bin".into());
    }
    let rustup_home = env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".rustup")))?;
    let toolchains = fs::read_dir(rustup_home.join("toolchains")).ok()?;
    let has_src = toolchains.flatten().any(|t| {
        t.file_name().to_string_lossy().starts_with("nightly")
            && t.path().join("lib/rustlib/src/rust/library/core").is_dir()
    });
    if !has_src {
        return Some("the nightly toolchain or its rust-src component is not installed".into());
    }
    None
}

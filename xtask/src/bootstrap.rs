//! Installing the eBPF toolchain on a fresh machine: nightly rust-src and bpf-linker.
//!
//! bpf-linker has no prebuilt download we can reach, and distribution LLVMs are older than
//! the one rustc nightly emits bitcode for. So it is built against the nightly
//! toolchain's own libLLVM (shipped in its sysroot), with an rpath to it. A second run
//! finds both in place and does nothing.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn ensure() -> Result<()> {
    crate::packages::ensure(&[crate::packages::BUILD])?;
    ensure_nightly_src()?;
    ensure_bpf_linker()
}

fn rustup() -> Command {
    let mut c = Command::new("rustup");
    c.env_remove("RUSTUP_TOOLCHAIN");
    c
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_nightly_src() -> Result<()> {
    let toolchains = output(rustup().args(["toolchain", "list"]))
        .context("step 1/2 (nightly toolchain): rustup is needed; install it from your distribution, then rerun")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("[bootstrap] installing the nightly toolchain with rust-src (for -Z build-std=core)");
        crate::run_cmd(rustup().args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context(
            "step 1/2 (nightly toolchain) failed; run by hand: rustup toolchain install nightly --component rust-src",
        )?;
        return Ok(());
    }
    let comps = output(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if !comps.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("[bootstrap] adding rust-src to the nightly toolchain (for -Z build-std=core)");
        crate::run_cmd(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))
            .context("step 1/2 (rust-src) failed; run by hand: rustup component add rust-src --toolchain nightly")?;
    }
    Ok(())
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn linker_works(path: &Path) -> bool {
    Command::new(path).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn ensure_bpf_linker() -> Result<()> {
    let installed = cargo_bin().join("bpf-linker");
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("bpf-linker")).find(|p| p.is_file()))
        .unwrap_or_default();
    let found = on_path.or_else(|| installed.is_file().then(|| installed.clone()));
    let force = match found {
        Some(p) if linker_works(&p) => return Ok(()),
        // Built against a nightly whose libLLVM has since been replaced: rebuild it.
        Some(p) => {
            eprintln!("[bootstrap] {} does not run (its nightly libLLVM changed?); rebuilding it", p.display());
            true
        }
        None => false,
    };

    let sysroot = output(Command::new("rustc").env_remove("RUSTUP_TOOLCHAIN").args(["+nightly", "--print", "sysroot"]))
        .context("step 2/2 (bpf-linker): cannot find the nightly sysroot")?;
    let sysroot = PathBuf::from(sysroot.trim());
    let lib_dir = sysroot.join("lib");
    let llvm_lib = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM") && n.ends_with(".so"))
        .with_context(|| {
            format!(
                "step 2/2 (bpf-linker): no libLLVM-*.so in {}; is the nightly toolchain complete?",
                lib_dir.display()
            )
        })?;
    let lib_name = llvm_lib.trim_start_matches("lib").trim_end_matches(".so").to_string();
    let major: String = lib_name.trim_start_matches("LLVM-").chars().take_while(|c| c.is_ascii_digit()).collect();
    if major.is_empty() {
        bail!("step 2/2 (bpf-linker): cannot read the LLVM version from {llvm_lib}");
    }
    eprintln!(
        "[bootstrap] building bpf-linker {BPF_LINKER_VERSION} against nightly's own {lib_name} (about a minute on 2 cores); it goes to {}",
        cargo_bin().display()
    );
    let rustflags = format!("-L {0} -l dylib={lib_name} -C link-arg=-Wl,-rpath,{0}", lib_dir.display());
    let mut cmd = Command::new("cargo");
    cmd.env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .env("RUSTFLAGS", &rustflags)
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major},no-llvm-linking")]);
    if force {
        cmd.arg("--force");
    }
    crate::run_cmd(&mut cmd).with_context(|| {
        format!(
            "step 2/2 (bpf-linker) failed; run by hand:\n  RUSTFLAGS='{rustflags}' cargo +nightly install bpf-linker --version {BPF_LINKER_VERSION} --locked --no-default-features --features llvm-{major},no-llvm-linking"
        )
    })?;
    if !linker_works(&installed) {
        bail!("step 2/2 (bpf-linker): installed {} but it does not run", installed.display());
    }
    eprintln!("[bootstrap] bpf-linker ready");
    Ok(())
}

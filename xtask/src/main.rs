//! `cargo xtask`: bootstrap the eBPF toolchain, build, load, test, demo.

mod bootstrap;
mod kernel;
mod package;
mod packages;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, load, test and demo the dataplane")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (nightly rust-src, bpf-linker), then build the eBPF object
    /// and the `dataplane` binary.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then attach the admission program to IFACE through a pinned link (it stays
    /// after this command exits); loading again replaces it in place. Without --iface,
    /// swap the new build's programs into every link of the instance (in-place upgrade).
    BuildAndLoad {
        /// Interface to attach to.
        #[arg(long)]
        iface: Option<String>,
        /// Network namespace (name under /run/netns) the interface lives in.
        #[arg(long)]
        netns: Option<String>,
        /// XDP mode.
        #[arg(long, default_value = "auto", value_parser = ["auto", "native", "skb"])]
        mode: String,
        /// Detach from IFACE and remove every pin made for it instead.
        #[arg(long)]
        unload: bool,
        #[arg(long)]
        release: bool,
        /// bpffs directory for pins (default: dataplane's, /sys/fs/bpf/dataplane).
        #[arg(long)]
        bpffs: Option<PathBuf>,
    },
    /// Run every test: unit tests, then the root-only integration tests one at a time.
    Test {
        /// Only tests whose name contains this (passed to cargo test).
        filter: Option<String>,
        /// Run the integration tests inside qemu booting this distro kernel instead of on
        /// this machine's kernel: debian-6.1 (no tcx; 8021q), debian-6.12 (tcx; 8021q) or
        /// debian-5.10 (Debian 11, fetched through an apt source list of its own).
        /// Downloaded from Debian's archive once. The dockerd tests and the input-validation
        /// table run only on this machine's kernel (emulation makes them too slow).
        #[arg(long)]
        kernel: Option<String>,
    },
    /// (Used by `test --kernel` as cargo's runner.) Run ARGV inside a VM booting KERNEL.
    #[command(name = "vm-run", hide = true)]
    VmRun {
        #[arg(long)]
        kernel: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        argv: Vec<String>,
    },
    /// Build everything and run a self-contained demonstration in private namespaces.
    Demo,
    /// Benchmarks against baselines measured in the same run (never fails on a number):
    /// markdown on stdout, JSON and a PNG chart under target/bench/, docs/BENCHMARKS.md.
    Bench {
        /// Smoke run: fewer packets and endpoints (under 3 minutes).
        #[arg(long)]
        quick: bool,
        /// One stage alone, printed and not written to docs/BENCHMARKS.md: `per-packet`
        /// (BPF_PROG_TEST_RUN, a few seconds) for iterating on a program's cost, `drop`
        /// (live unknown-MAC drop rates and their baselines), `vlan` (live VLAN-tagged
        /// delivery and its baseline), `cni` (CNI ADD and DEL against the reference
        /// plugins), each about a minute.
        #[arg(long, value_parser = ["per-packet", "drop", "vlan", "cni"])]
        only: Option<String>,
    },
    /// Fuzz the frame classification (cargo fuzz, libFuzzer) for a bounded time; frames
    /// that break an invariant are copied to tests/corpus/, which every test run replays.
    Fuzz {
        /// Seconds to fuzz.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Only install the eBPF toolchain (what `build` does first).
    Bootstrap,
    /// Build a Debian package (.deb, with dpkg-deb) of the release binaries, man pages,
    /// shell completions and the systemd unit, under target/package/.
    Package {
        /// Package the binaries already in this directory instead of building them.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Where to write the package (default: target/package).
        #[arg(long)]
        out: Option<PathBuf>,
        /// dpkg-deb's compression of the contents.
        #[arg(long, default_value = "xz", value_parser = ["xz", "gzip", "zstd", "none"])]
        compression: String,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Bootstrap => bootstrap::ensure(),
        Cmd::Package { bin_dir, out, compression } => package(bin_dir, out, &compression),
        Cmd::Build { release } => build(release),
        Cmd::BuildAndLoad { iface, netns, mode, unload, release, bpffs } => {
            build_and_load(iface, netns, &mode, unload, release, bpffs)
        }
        Cmd::Test { filter, kernel } => test(filter, kernel),
        Cmd::VmRun { kernel, argv } => vm_run(&kernel, &argv),
        Cmd::Fuzz { seconds } => fuzz(seconds),
        Cmd::Bench { quick, only } => bench(quick, only.as_deref()),
        Cmd::Demo => {
            require_root("the demo creates network namespaces and loads BPF programs")?;
            packages::ensure(&[packages::DEMO])?;
            build(false)?;
            let mut cmd = cargo();
            cmd.args(["run", "--quiet", "--package", "dataplane-tests", "--bin", "dataplane-demo"])
                .env("DATAPLANE_BIN", bin_path(false, "dataplane"));
            run_cmd(&mut cmd)
        }
    }
}

fn package(bin_dir: Option<PathBuf>, out: Option<PathBuf>, compression: &str) -> Result<()> {
    let bin_dir = match bin_dir {
        Some(d) => d,
        None => {
            eprintln!("[build] release build of dataplane and dataplane-cni");
            bootstrap::ensure()?;
            let mut b = cargo();
            b.args(["build", "--release", "--package", "dataplane-user", "--bins"]);
            run_cmd(&mut b).context("build step failed; the compiler's errors are above")?;
            bin_path(true, "dataplane").parent().expect("has a dir").to_path_buf()
        }
    };
    let out = out.unwrap_or_else(|| workspace().join("target/package"));
    std::fs::create_dir_all(&out)?;
    let deb = package::build_deb(&workspace(), &bin_dir, &out, compression)?;
    println!("{}", deb.display());
    Ok(())
}

fn build_and_load(
    iface: Option<String>,
    netns: Option<String>,
    mode: &str,
    unload: bool,
    release: bool,
    bpffs: Option<PathBuf>,
) -> Result<()> {
    build(release)?;
    let mut cmd = Command::new(bin_path(release, "dataplane"));
    if let Some(b) = bpffs {
        cmd.arg("--bpffs").arg(b);
    }
    let Some(iface) = iface else {
        if unload {
            bail!("--unload needs --iface IFACE");
        }
        cmd.args(["bpf", "reload"]);
        return run_cmd(&mut cmd);
    };
    cmd.arg("bpf").arg(if unload { "unload" } else { "load" }).args(["--iface", &iface]);
    if let Some(ns) = &netns {
        cmd.args(["--netns", ns]);
    }
    if !unload {
        cmd.args(["--mode", mode]);
    }
    run_cmd(&mut cmd)
}

fn vm_run(kernel: &str, argv: &[String]) -> Result<()> {
    let k = kernel::prepare(kernel)?;
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            ["DATAPLANE_", "RUST_", "CARGO", "PYENV"].iter().any(|p| k.starts_with(p)) || k == "PATH" || k == "HOME"
        })
        .collect();
    let cwd = std::env::current_dir()?;
    let rc = kernel::run_in_vm(&k, &workspace(), &cwd, &env, argv)?;
    std::process::exit(rc);
}

fn bench(quick: bool, only: Option<&str>) -> Result<()> {
    require_root("benchmarks create network namespaces and load BPF programs")?;
    packages::ensure(&[packages::DEMO, packages::TEST, packages::BENCH])?;
    eprintln!("[build] release build of the dataplane binary and the bench");
    bootstrap::ensure()?;
    let mut b = cargo();
    b.args(["build", "--release", "--package", "dataplane-user", "--package", "dataplane-tests", "--bins"]);
    run_cmd(&mut b).context("build step failed; the compiler's errors are above")?;
    let mut cmd = Command::new(bin_path(true, "dataplane-bench"));
    cmd.env("DATAPLANE_BIN", bin_path(true, "dataplane"));
    if quick {
        cmd.arg("--quick");
    }
    if let Some(stage) = only {
        cmd.args(["--only", stage]);
    }
    run_cmd(&mut cmd)
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").to_path_buf()
}

fn bin_path(release: bool, name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target"));
    target.join(if release { "release" } else { "debug" }).join(name)
}

/// A cargo command for the workspace, with the eBPF object required (no placeholder).
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace()).env("DATAPLANE_REQUIRE_EBPF", "1");
    cmd
}

pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{:?} failed ({status})", cmd.get_program());
    }
    Ok(())
}

fn build(release: bool) -> Result<()> {
    bootstrap::ensure()?;
    eprintln!("[build] eBPF object and the dataplane binary{}", if release { " (release)" } else { "" });
    let mut cmd = cargo();
    cmd.args(["build", "--package", "dataplane-user", "--package", "dataplane-tests", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd).context("build step failed; the compiler's errors are above")
}

fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this must run as root: {why} (try `sudo -E cargo xtask ...`)");
    }
    Ok(())
}

fn test(filter: Option<String>, kernel: Option<String>) -> Result<()> {
    require_root("the integration tests create network namespaces and load BPF programs")?;
    packages::ensure(&[packages::DEMO, packages::TEST])?;
    packages::ensure_python(packages::PYTHON)?;
    build(false)?;
    if let Some(k) = kernel {
        return test_on_kernel(&k, filter);
    }
    eprintln!("[test] unit tests");
    let mut unit = cargo();
    unit.args(["test", "--workspace", "--exclude", "dataplane-tests", "--exclude", "dataplane-ebpf"]);
    if let Some(f) = &filter {
        unit.arg(f);
    }
    run_cmd(&mut unit).context("unit tests failed")?;
    eprintln!("[test] integration tests (root, one at a time, each in its own namespaces)");
    let mut it = cargo();
    it.args(["test", "--no-fail-fast", "--package", "dataplane-tests"])
        .env("DATAPLANE_BIN", bin_path(false, "dataplane"))
        .arg("--");
    if let Some(f) = &filter {
        it.arg(f);
    }
    it.arg("--test-threads=1");
    run_cmd(&mut it).context("integration tests failed")
}

/// The integration tests inside a VM booting a distro kernel (see kernel.rs).
fn test_on_kernel(name: &str, filter: Option<String>) -> Result<()> {
    let k = kernel::prepare(name)?;
    eprintln!("[test] integration tests on {name} ({}) under qemu (TCG: expect minutes)", k.version);
    let exe = std::env::current_exe().context("locating xtask")?;
    let mut it = cargo();
    it.args(["test", "--no-fail-fast", "--package", "dataplane-tests"])
        .env("DATAPLANE_BIN", bin_path(false, "dataplane"))
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", format!("{} vm-run --kernel {name}", exe.display()))
        .arg("--");
    if let Some(f) = &filter {
        it.arg(f);
    }
    // Under TCG (no KVM here) everything runs ~20-40x slower: dockerd, the 80-case
    // input-validation table and the 64-way run/rm loops (neither depends on the kernel)
    // run on the machine's own kernel only, as does packaging (copies of debug binaries),
    // and so do the HTTP servers' tests (hyper's parsing, descriptor limits, timeouts),
    // the 16-way CNI burst, the kill-and-retry loops of network creation and removal
    // through each front end and the CNI input checks (the store, the network lock and
    // refusals before any kernel work: several minutes each under emulation), and cluster
    // mode's etcd labs (etcd and the control plane; the kernel side is every run's).
    it.args([
        "--test-threads=1",
        "--skip",
        "bursts_from_three_hosts",
        "--skip",
        "without_quorum_commands",
        "--skip",
        "killed_commands_leak_no_claim",
        "--skip",
        "tls_with_client_certificates",
        "--skip",
        "a_host_cut_off_from_etcd",
        "--skip",
        "share_one_plan",
        "--skip",
        "three_dockerds",
        "--skip",
        "names_its_own_parent",
        "--skip",
        "a_killed_add_or_del",
        "--skip",
        "a_killed_network_create_or_rm",
        "--skip",
        "a_plugin_killed_in_network",
        "--skip",
        "container_ids_alike",
        "--skip",
        "gc_leaves_a_deletion",
        "--skip",
        "check_refuses_another_namespace",
        "--skip",
        "ipam_gc_without",
        "--skip",
        "bad_interface_names_and_namespaces",
        "--skip",
        "docker_habits",
        "--skip",
        "the_plugin_socket_answers",
        "--skip",
        "the_metrics_server_neither",
        "--skip",
        "a_repeated_create_endpoint",
        "--skip",
        "a_burst_of_first_adds",
        "--skip",
        "docker_",
        "--skip",
        "fifty_bad_inputs",
        "--skip",
        "sixty_four_concurrent",
        "--skip",
        "the_debian_package",
    ]);
    run_cmd(&mut it).with_context(|| format!("integration tests on {name} failed"))
}

fn fuzz(seconds: u64) -> Result<()> {
    bootstrap::ensure()?;
    let has_fuzz = Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !has_fuzz {
        eprintln!("[fuzz] installing cargo-fuzz (once)");
        run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
            .context("installing cargo-fuzz failed; run by hand: cargo install cargo-fuzz --locked")?;
    }
    let ws = workspace();
    let corpus = ws.join("target/fuzz-corpus/classify");
    std::fs::create_dir_all(&corpus)?;
    // Seed with the frames kept from earlier runs.
    if let Ok(rd) = std::fs::read_dir(ws.join("tests/corpus")) {
        for e in rd.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "bin")) {
            let _ = std::fs::copy(e.path(), corpus.join(e.file_name()));
        }
    }
    eprintln!("[fuzz] classify for {seconds} s");
    let artifacts = ws.join("target/fuzz-artifacts/");
    std::fs::create_dir_all(&artifacts)?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(ws.join("fuzz"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["+nightly", "fuzz", "run", "classify"])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-max_len=512")
        .arg(format!("-artifact_prefix={}", artifacts.display()));
    let result = run_cmd(&mut cmd);
    let mut kept = 0;
    if let Ok(rd) = std::fs::read_dir(&artifacts) {
        std::fs::create_dir_all(ws.join("tests/corpus"))?;
        for e in rd.flatten() {
            let name = format!("{}.bin", e.file_name().to_string_lossy());
            std::fs::copy(e.path(), ws.join("tests/corpus").join(name))?;
            kept += 1;
        }
    }
    if kept > 0 {
        eprintln!("[fuzz] {kept} failing input(s) copied to tests/corpus/ (replayed by every test run)");
    }
    result.context("fuzzing failed: a build error or an input that breaks an invariant (see above)")
}

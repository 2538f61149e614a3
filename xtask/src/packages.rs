//! The host tools the demo and the tests drive (iproute2, ping, tcpdump, dockerd...):
//! installed with apt-get on a fresh Debian/Ubuntu machine, with a one-line notice, so
//! the README's two commands work from nothing.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

/// (command looked for on PATH or at an absolute path, Debian package that provides it)
pub const DEMO: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("setpriv", "util-linux"),
    ("sysctl", "procps"),
    ("ping", "iputils-ping"),
    ("tcpdump", "tcpdump"),
    ("ash", "ash"),
];

/// What building dataplane-user needs beyond Rust: protoc, which compiles etcd's API
/// (the cluster store's client, etcd-client) at build time.
pub const BUILD: &[(&str, &str)] = &[("protoc", "protobuf-compiler")];

/// What the integration tests need beyond the demo: a real dockerd, Podman and the
/// reference CNI plugins, the busybox the offline test image is made of, and ethtool
/// (the VLAN tests read veth's XDP transmit counters), etcd (cluster mode).
pub const TEST: &[(&str, &str)] = &[
    ("ethtool", "ethtool"),
    ("/usr/sbin/dockerd", "docker.io"),
    ("docker", "docker.io"),
    ("busybox", "busybox-static"),
    ("/usr/bin/podman", "podman"),
    ("/usr/lib/cni/macvlan", "containernetworking-plugins"),
    // Cluster mode's tests: a real 3-member etcd, and openssl for their TLS certificates.
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("openssl", "openssl"),
];

/// The baselines the benchmark compares against (and what runs them): installed so that
/// no comparison silently disappears on a fresh machine.
pub const BENCH: &[(&str, &str)] =
    &[("xdp-filter", "xdp-tools"), ("nft", "nftables"), ("ethtool", "ethtool"), ("bridge", "iproute2")];

fn present(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return Path::new(cmd).exists();
    }
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        || ["/usr/sbin", "/sbin"].iter().any(|d| Path::new(d).join(cmd).is_file())
}

/// Python modules the tests use (a real parser for the metrics endpoint), installed with
/// pip when missing: (module, PyPI package).
pub const PYTHON: &[(&str, &str)] = &[("prometheus_client", "prometheus-client")];

pub fn ensure_python(mods: &[(&str, &str)]) -> Result<()> {
    for (module, pkg) in mods {
        let ok = Command::new("python3").args(["-c", &format!("import {module}")]).status().is_ok_and(|s| s.success());
        if ok {
            continue;
        }
        eprintln!("[packages] installing the Python package {pkg} (pip)");
        let st = Command::new("python3")
            .args(["-m", "pip", "install", "-q", "--root-user-action=ignore", pkg])
            .status()
            .with_context(|| format!("running pip for {pkg}"))?;
        if !st.success() {
            bail!("pip install {pkg} failed; install it by hand and rerun");
        }
    }
    Ok(())
}

/// Install the packages of whatever in `lists` is missing.
pub fn ensure(lists: &[&[(&str, &str)]]) -> Result<()> {
    let mut need: Vec<&str> = Vec::new();
    for (cmd, pkg) in lists.iter().copied().flatten() {
        if !present(cmd) && !need.contains(pkg) {
            need.push(pkg);
        }
    }
    if need.is_empty() {
        return Ok(());
    }
    eprintln!("[packages] installing what is missing: {} (apt-get)", need.join(" "));
    if !present("apt-get") {
        bail!("missing packages {} and no apt-get to install them with; install them by hand", need.join(" "));
    }
    // Packages must not start services on this host (dockerd is started by the tests,
    // inside namespaces of their own): policy-rc.d says so for the duration.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n").context("writing /usr/sbin/policy-rc.d")?;
        let _ = Command::new("chmod").args(["755", "/usr/sbin/policy-rc.d"]).status();
    }
    let run = |args: &[&str]| -> Result<()> {
        let st = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("running apt-get {}", args.join(" ")))?;
        if !st.success() {
            bail!("apt-get {} failed ({st})", args.join(" "));
        }
        Ok(())
    };
    let result = run(&["update", "-qq"]).and_then(|()| {
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&need);
        run(&args)
    });
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    result.with_context(|| format!("installing {} failed; install them by hand and rerun", need.join(" ")))
}

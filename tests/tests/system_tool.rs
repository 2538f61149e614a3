//! The conventions of a system tool: shell completions and man pages, generated from the
//! same command definition the binary parses.

use std::process::Command;

use dataplane_tests::lab::dataplane_bin;

#[test]
fn bash_completions_parse_and_know_the_commands() {
    let out = Command::new(dataplane_bin()).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for word in ["network", "plugin", "metrics", "reconcile", "--take-over", "--mac-address"] {
        assert!(script.contains(word), "{word} missing from the bash completions");
    }
    let check = Command::new("bash").arg("-n").arg("-c").arg(&script).status().unwrap();
    assert!(check.success(), "bash rejects the completion script");
    let bad = Command::new(dataplane_bin()).args(["completions", "tcsh"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("tcsh"));
}

#[test]
fn man_pages_cover_every_command() {
    let dir = std::env::temp_dir().join(dataplane_tests::lab::unique("dpman-"));
    assert!(Command::new(dataplane_bin()).arg("__man").arg(&dir).status().unwrap().success());
    for page in [
        "dataplane.1",
        "dataplane-network-create.1",
        "dataplane-plugin-docker.1",
        "dataplane-metrics.1",
        "dataplane-run.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page} is not a man page");
        assert!(text.contains(".SH NAME") && text.contains(".SH OPTIONS"), "{page}");
    }
    let create = std::fs::read_to_string(dir.join("dataplane-network-create.1")).unwrap();
    assert!(create.contains("aux\\-address"), "network create's options are missing");
    // The synopsis reads as typed, and every -o option is documented.
    assert!(create.contains("dataplane network create"), "SYNOPSIS: {create}");
    for opt in ["parent=", "macvlan_mode=", "mtu=", "endpoint_hooks=", "host_access=", "ip_probe_ms="] {
        assert!(create.contains(opt), "the man page of network create does not mention {opt}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cargo xtask package` (here from the binaries under test, `--bin-dir`, uncompressed to
/// stay quick with debug binaries): a .deb whose
/// fields dpkg reads, and which, unpacked, holds binaries that run, the CNI plugin where
/// Podman looks for it, man pages, completions and the systemd unit.
#[test]
fn the_debian_package_holds_working_binaries_man_pages_and_completions() {
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let out = Gone(std::env::temp_dir().join(dataplane_tests::lab::unique("dppkg-")));
    let bin = dataplane_bin();
    let bin_dir = bin.parent().unwrap();
    let xtask = bin_dir.join("xtask");
    assert!(xtask.is_file(), "{} missing: run the tests with cargo xtask test", xtask.display());
    let made = Command::new(&xtask)
        .arg("package")
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--out")
        .arg(&out.0)
        .args(["--compression", "none"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let deb = String::from_utf8(made.stdout).unwrap().trim().to_string();
    assert!(deb.ends_with(".deb") && std::path::Path::new(&deb).is_file(), "{deb}");
    let fields = Command::new("dpkg-deb").args(["-f", &deb, "Package", "Version", "Depends"]).output().unwrap();
    let fields = String::from_utf8_lossy(&fields.stdout).into_owned();
    for want in ["Package: dataplane", &format!("Version: {}", env!("CARGO_PKG_VERSION")), "Depends: iproute2"] {
        assert!(fields.contains(want), "{want} not in {fields}");
    }
    let root = out.0.join("root");
    assert!(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root).status().unwrap().success());
    let version = Command::new(root.join("usr/bin/dataplane")).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("dataplane {}", env!("CARGO_PKG_VERSION")));
    let help = Command::new(root.join("usr/bin/dataplane")).arg("--help").output().unwrap();
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("network"));
    let cni = Command::new(root.join("usr/lib/cni/dataplane-cni"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&cni.stdout).unwrap_or_default();
    assert!(v["supportedVersions"].as_array().is_some_and(|a| a.contains(&"1.0.0".into())), "{v}");
    for f in [
        "usr/share/man/man1/dataplane.1.gz",
        "usr/share/man/man1/dataplane-network-create.1.gz",
        "usr/share/bash-completion/completions/dataplane",
        "usr/share/zsh/vendor-completions/_dataplane",
        "usr/share/fish/vendor_completions.d/dataplane.fish",
        "lib/systemd/system/dataplane-docker-plugin.service",
    ] {
        let p = root.join(f);
        assert!(p.metadata().is_ok_and(|m| m.len() > 0), "{f} missing or empty in the package");
    }
    let man = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc {}", root.join("usr/share/man/man1/dataplane.1.gz").display()))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH"), "not a man page");
}

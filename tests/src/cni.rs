//! Calling `dataplane-cni` (and the reference CNI plugins) the way a runtime does, and a
//! real Podman with its CNI backend in a network namespace of its own. Everything is
//! removed on drop, also when a test fails.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value;

use crate::lab::{dataplane_bin, host_with_switch, unique, Host, Netns};

/// `dataplane-cni`, next to the `dataplane` binary under test.
pub fn cni_bin() -> PathBuf {
    let p = dataplane_bin().with_file_name("dataplane-cni");
    assert!(p.is_file(), "{} not found; `cargo xtask build` builds it", p.display());
    p
}

/// The environment of a runtime's call for container `id` in namespace `netns`, `eth0`.
pub fn env<'a>(id: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("CNI_CONTAINERID", id), ("CNI_NETNS", netns), ("CNI_IFNAME", "eth0")]
}

/// The names of `ns`'s links.
pub fn links(ns: &Netns) -> std::collections::BTreeSet<String> {
    let out = ns.exec(&["ip", "-j", "link"]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array().unwrap().iter().filter_map(|l| l["ifname"].as_str().map(str::to_string)).collect()
}

/// Where Debian's containernetworking-plugins put the reference plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// One plugin call's outcome: exit status, stdout parsed as JSON (if any), stderr.
pub struct CniOut {
    pub ok: bool,
    pub json: Value,
    pub raw: Output,
}

impl CniOut {
    /// The spec error code (panics if the call succeeded).
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected an error, got {}", self.json);
        self.json["code"].as_u64().unwrap_or_else(|| panic!("no error code in {}", self.json))
    }

    pub fn msg(&self) -> String {
        self.json["msg"].as_str().unwrap_or_default().to_string()
    }
}

/// Run `plugin` with `CNI_COMMAND=command`, `env` and `conf` on stdin, inside `host`.
pub fn call(host: &Netns, plugin: &Path, command: &str, env: &[(&str, &str)], conf: &str) -> CniOut {
    run(Command::new("nsenter"), host, plugin, command, env, conf)
}

/// [`call`], killed after `secs` seconds (a plugin that hangs fails the test with a
/// message instead of hanging it).
pub fn call_within(secs: u32, host: &Netns, plugin: &Path, command: &str, env: &[(&str, &str)], conf: &str) -> CniOut {
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", &secs.to_string(), "nsenter"]);
    let out = run(cmd, host, plugin, command, env, conf);
    assert!(out.raw.status.code() != Some(137), "{plugin:?} {command} hung for {secs} s (killed)");
    out
}

fn run(mut cmd: Command, host: &Netns, plugin: &Path, command: &str, env: &[(&str, &str)], conf: &str) -> CniOut {
    let mut child = cmd
        .arg(format!("--net={}", host.path().display()))
        .arg("env")
        .arg(format!("CNI_COMMAND={command}"))
        .arg(format!("CNI_PATH={}:{}", REFERENCE_DIR, cni_bin().parent().unwrap().display()))
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .arg(plugin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a CNI plugin");
    child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    let raw = child.wait_with_output().unwrap();
    let json = serde_json::from_slice(&raw.stdout).unwrap_or(Value::Null);
    CniOut { ok: raw.status.success(), json, raw }
}

/// A Podman (CNI backend) with private config, storage and conflist dir, run inside a
/// host namespace whose `eth0` is wired to a switch (`up0`).
pub struct PodmanLab {
    pub host: Host,
    pub switch: Netns,
    root: PathBuf,
    runroot: PathBuf,
}

impl PodmanLab {
    pub fn new(prefix: &str) -> anyhow::Result<PodmanLab> {
        let (host, switch) = host_with_switch(prefix)?;
        let root = std::env::temp_dir().join(unique("dppodman-"));
        let runroot = PathBuf::from("/run").join(unique("dppodman-"));
        std::fs::create_dir_all(root.join("net"))?;
        let lab = PodmanLab { host, switch, root, runroot };
        let plugin_dir = cni_bin().parent().unwrap().display().to_string();
        std::fs::write(
            lab.root.join("containers.conf"),
            format!(
                "[containers]\n\
                 # This root lacks CAP_SYS_RESOURCE: without these every container fails (RUNTIMES.md).\n\
                 default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{REFERENCE_DIR}\", \"{plugin_dir}\"]\n\
                 network_config_dir = \"{}\"\n",
                lab.root.join("net").display()
            ),
        )?;
        std::fs::write(
            lab.root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                lab.root.join("storage").display(),
                lab.runroot.display()
            ),
        )?;
        anyhow::ensure!(
            Path::new("/usr/bin/podman").exists(),
            "podman is not installed (apt-get install podman; cargo xtask test installs it)"
        );
        let tar = crate::docker::busybox_tar(&lab.root)?;
        let out = lab.podman(&["import", "--change", "ENV=PATH=/bin", tar.to_str().unwrap(), "localhost/busybox"]);
        anyhow::ensure!(out.status.success(), "podman import failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(lab)
    }

    /// Write a conflist named `name` with one `dataplane-cni` plugin entry `entry` (JSON
    /// object text without the surrounding braces' `type`, which is added).
    pub fn conflist(&self, name: &str, entry: &str) {
        let text = format!(
            "{{\"cniVersion\":\"1.0.0\",\"name\":\"{name}\",\"plugins\":[{{\"type\":\"dataplane-cni\",\
             \"stateDir\":\"{}\",\"bpffs\":\"{}\",{entry}}}]}}",
            self.host.state.display(),
            self.host.bpffs.dir.display()
        );
        std::fs::write(self.root.join("net").join(format!("{name}.conflist")), text).unwrap();
    }

    pub fn podman(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.host.ns.path().display()))
            .arg("podman")
            .env("CONTAINERS_CONF", self.root.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.root.join("storage.conf"))
            .args(args)
            .output()
            .expect("spawn podman")
    }

    /// Like [`PodmanLab::podman`], panicking with both streams unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PodmanLab {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
        let _ = self.podman(&["system", "reset", "-f"]);
        let _ = Command::new("umount").arg("-R").arg("-l").arg(self.root.join("storage")).output();
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_dir_all(&self.runroot);
    }
}

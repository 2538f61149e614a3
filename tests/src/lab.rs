//! Namespaces, veth pairs, bpffs directories and the `dataplane` binary.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short unique name: interface names are limited to 15 bytes.
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        anyhow::bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A named network namespace (`/run/netns/NAME`), deleted on drop with everything in it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> anyhow::Result<Netns> {
        let name = unique(prefix);
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Run a command inside the namespace (network namespace only, host mounts kept).
    pub fn exec(&self, argv: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("nsenter").arg(format!("--net={}", self.path().display())).args(argv).output()?;
        if !out.status.success() {
            anyhow::bail!("in {}: {}: {}", self.name, argv.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ip -j -d link show dev IFACE` inside the namespace, parsed.
    pub fn link_json(&self, iface: &str) -> anyhow::Result<serde_json::Value> {
        let out = self.exec(&["ip", "-j", "-d", "link", "show", "dev", iface])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v[0].clone())
    }

    /// The XDP program id attached to IFACE, if any.
    pub fn xdp_prog_id(&self, iface: &str) -> anyhow::Result<Option<u64>> {
        let l = self.link_json(iface)?;
        Ok(l["xdp"]["prog"]["id"].as_u64().or_else(|| l["xdp"]["progs"][0]["id"].as_u64()))
    }

    pub fn ifindex(&self, iface: &str) -> anyhow::Result<u32> {
        let l = self.link_json(iface)?;
        Ok(l["ifindex"].as_u64().ok_or_else(|| anyhow::anyhow!("no ifindex for {iface}"))? as u32)
    }

    pub fn mac(&self, iface: &str) -> anyhow::Result<[u8; 6]> {
        let l = self.link_json(iface)?;
        let s = l["address"].as_str().ok_or_else(|| anyhow::anyhow!("no address for {iface}"))?;
        let mut mac = [0u8; 6];
        for (m, p) in mac.iter_mut().zip(s.split(':')) {
            *m = u8::from_str_radix(p, 16)?;
        }
        Ok(mac)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

impl Netns {
    /// What `tcpdump -e -n` prints on IFACE inside this namespace (at most `count` frames
    /// matching `filter`) while `action` runs.
    pub fn capture_while(&self, iface: &str, filter: &str, count: u32, action: impl FnOnce()) -> String {
        let mut capture = Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .args(["tcpdump", "-l", "-n", "-e", "-c", &count.to_string(), "-i", iface, filter])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn tcpdump");
        // tcpdump needs a moment before it captures.
        std::thread::sleep(std::time::Duration::from_millis(700));
        action();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let _ = capture.kill();
        String::from_utf8_lossy(&capture.wait_with_output().map(|o| o.stdout).unwrap_or_default()).into_owned()
    }
}

/// A namespace made by something else (e.g. `dataplane run`) whose removal a test must
/// guarantee even when the instance that made it can no longer (its store replaced):
/// deleted by name on drop, if it still exists.
pub struct NetnsByName(pub String);

impl Drop for NetnsByName {
    fn drop(&mut self) {
        if Path::new("/run/netns").join(&self.0).exists() {
            let _ = ip(&["netns", "del", &self.0]);
        }
    }
}

/// Two namespaces joined by a veth pair: `a`/`a_if` sends, `b`/`b_if` receives.
pub struct Lab {
    pub a: Netns,
    pub b: Netns,
    pub a_if: String,
    pub b_if: String,
}

impl Lab {
    pub fn new() -> anyhow::Result<Lab> {
        let a = Netns::new("dpA")?;
        let b = Netns::new("dpB")?;
        let a_if = "veth-a".to_string();
        let b_if = "veth-b".to_string();
        ip(&["link", "add", "dptmp0", "netns", &a.name, "type", "veth", "peer", "name", "dptmp1", "netns", &b.name])?;
        ip(&["-n", &a.name, "link", "set", "dptmp0", "name", &a_if])?;
        ip(&["-n", &b.name, "link", "set", "dptmp1", "name", &b_if])?;
        for (ns, ifc) in [(&a, &a_if), (&b, &b_if)] {
            // No IPv6 autoconfiguration chatter on the wire under test.
            let _ = ns.exec(&["sysctl", "-qw", &format!("net.ipv6.conf.{ifc}.disable_ipv6=1")]);
            ip(&["-n", &ns.name, "link", "set", ifc, "up"])?;
        }
        Ok(Lab { a, b, a_if, b_if })
    }
}

/// A private bpffs directory for one `dataplane` instance; removed on drop (pins first,
/// which detaches anything still linked there).
pub struct Bpffs {
    pub dir: PathBuf,
}

impl Bpffs {
    pub fn new() -> anyhow::Result<Bpffs> {
        let root = Path::new("/sys/fs/bpf");
        if !is_bpffs(root) {
            let st = Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).status()?;
            anyhow::ensure!(st.success(), "mounting bpffs at /sys/fs/bpf failed");
        }
        Ok(Bpffs { dir: root.join(unique("dpt-")) })
    }
}

fn is_bpffs(p: &Path) -> bool {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "bpf_fs")
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // The instance's lock files under /run/dataplane go with it (dataplane removes
        // them itself when it removes its pins; a test may leave its pins to this guard).
        let pins = dataplane_user::bpf::pins::Pins::new(&self.dir);
        let _ = std::fs::remove_file(dataplane_user::bpf::admit::lock_path(&pins));
        dataplane_user::control::background::forget_gone_instance(&pins);
    }
}

/// Path of the `dataplane` binary under test: $DATAPLANE_BIN (set by `cargo xtask`), else
/// next to the running executable in the target dir.
pub fn dataplane_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DATAPLANE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join("dataplane");
        if p.is_file() {
            return p;
        }
    }
    panic!("dataplane binary not found; run the tests with `cargo xtask test`, which builds it");
}

/// Run `dataplane --bpffs DIR ARGS...` and return its output (whatever the exit code).
pub fn dataplane(bpffs: &Bpffs, args: &[&str]) -> Output {
    Command::new(dataplane_bin()).arg("--bpffs").arg(&bpffs.dir).args(args).output().expect("spawn dataplane")
}

/// A "host" for control-plane tests: a network namespace with its own `dataplane`
/// instance (state dir + bpffs dir), driven through `nsenter --net` so pins stay in the
/// real bpffs. Everything the instance made inside the namespace dies with it; the guard
/// also removes the state dir and pins, and the endpoint namespaces the instance made.
pub struct Host {
    pub ns: Netns,
    pub state: PathBuf,
    pub bpffs: Bpffs,
}

impl Host {
    pub fn new(prefix: &str) -> anyhow::Result<Host> {
        let ns = Netns::new(prefix)?;
        let state = std::env::temp_dir().join(unique("dpstate-"));
        Ok(Host { ns, state, bpffs: Bpffs::new()? })
    }

    /// `dataplane ARGS` run inside this host.
    pub fn dp(&self, args: &[&str]) -> Output {
        self.dp_env(&[], args)
    }

    /// Like [`Host::dp`] with extra environment variables (e.g. DATAPLANE_FAULT).
    pub fn dp_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        self.command().envs(env.iter().copied()).args(args).output().expect("spawn dataplane")
    }

    /// `dataplane --state-dir STATE --bpffs BPFFS` inside this host, to add arguments to
    /// (another instance's dirs, for tests of two instances on one host).
    pub fn command_for(&self, state: &Path, bpffs: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns.path().display()))
            .arg(dataplane_bin())
            .arg("--state-dir")
            .arg(state)
            .arg("--bpffs")
            .arg(bpffs);
        c
    }

    /// [`Host::command_for`] with this host's own instance.
    pub fn command(&self) -> Command {
        self.command_for(&self.state, &self.bpffs.dir)
    }

    /// Like [`Host::dp`], panicking with both streams unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.dp(args);
        assert!(
            out.status.success(),
            "dataplane {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `dataplane reconcile --dry-run`: its report. It exits 0 when it found nothing and 2
    /// when it found drift (panics on anything else, or on a code that disagrees).
    pub fn reconcile_dry_run(&self) -> String {
        let out = self.dp(&["reconcile", "--dry-run"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let drift = text.lines().any(|l| l.starts_with("drift: "));
        assert_eq!(
            out.status.code(),
            Some(if drift { 2 } else { 0 }),
            "reconcile --dry-run exited {} with:\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Endpoint `name` as `ps --format json` shows it.
    pub fn endpoint_json(&self, name: &str) -> serde_json::Value {
        let v = crate::json_lines(&self.ok(&["ps", "-a", "--format", "json"]));
        v.as_array()
            .into_iter()
            .flatten()
            .find(|e| e["Name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("endpoint {name} not in ps: {v:#}"))
    }

    /// Endpoint `name`'s counters, from `stats --format json NAME`.
    pub fn endpoint_stats(&self, name: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["stats", "--format", "json", name])).unwrap();
        v["endpoints"][0].clone()
    }

    /// Packets counted for `reason` on parent `iface`, from `stats --format json`.
    pub fn parent_packets(&self, iface: &str, reason: &str) -> u64 {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["stats", "--format", "json"])).unwrap();
        v["parents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["iface"] == iface)
            .filter_map(|p| p["packets"][reason].as_u64())
            .sum()
    }

    /// Names of the endpoints this instance knows, from `ps --format json`.
    pub fn endpoint_names(&self) -> Vec<String> {
        let v = crate::json_lines(&self.ok(&["ps", "-a", "--format", "json"]));
        v.as_array().into_iter().flatten().filter_map(|e| e["Name"].as_str().map(str::to_string)).collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for name in self.endpoint_names_quiet() {
            let _ = self.dp(&["rm", "-f", &name]);
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

impl Host {
    fn endpoint_names_quiet(&self) -> Vec<String> {
        let out = self.dp(&["ps", "-a", "--format", "json"]);
        let v = crate::json_lines_lenient(&String::from_utf8_lossy(&out.stdout));
        v.as_array().into_iter().flatten().filter_map(|e| e["Name"].as_str().map(str::to_string)).collect()
    }
}

/// Poll `done` every millisecond for at most `limit`; whether it became true.
pub fn wait_until(limit: std::time::Duration, done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    true
}

/// A veth pair `a_if` (in namespace `a`) <-> `b_if` (in namespace `b`), both up.
pub fn veth_between(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    ip(&["link", "add", "dptmp0", "netns", &a.name, "type", "veth", "peer", "name", "dptmp1", "netns", &b.name])?;
    ip(&["-n", &a.name, "link", "set", "dptmp0", "name", a_if])?;
    ip(&["-n", &b.name, "link", "set", "dptmp1", "name", b_if])?;
    for (ns, ifc) in [(a, a_if), (b, b_if)] {
        let _ = ns.exec(&["sysctl", "-qw", &format!("net.ipv6.conf.{ifc}.disable_ipv6=1")]);
        ip(&["-n", &ns.name, "link", "set", ifc, "up"])?;
    }
    Ok(())
}

/// A [`Host`] whose parent `eth0` is wired to a "switch" namespace (interface `up0`).
pub fn host_with_switch(prefix: &str) -> anyhow::Result<(Host, Netns)> {
    let h = Host::new(prefix)?;
    let sw = Netns::new(&format!("{prefix}s"))?;
    veth_between(&sw, "up0", &h.ns, "eth0")?;
    Ok((h, sw))
}

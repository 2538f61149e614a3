//! A cluster lab: a real 3-member etcd (Debian's etcd-server), each member in a namespace
//! of its own, and dataplane hosts (namespaces, each with its own state and bpffs dirs)
//! reaching it over a management switch, with their data parents on a second switch.
//! Everything is removed on drop; the etcd processes are stopped by their pid.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::lab::{unique, Host, Netns};

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        anyhow::bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A veth from namespace `ns` (as `ifname`) to bridge `br` in the switch namespace.
fn plug(sw: &Netns, br: &str, ns: &Netns, ifname: &str) -> anyhow::Result<()> {
    let port = unique("p");
    ip(&["link", "add", &port, "netns", &sw.name, "type", "veth", "peer", "name", "dptmp1", "netns", &ns.name])?;
    ip(&["-n", &ns.name, "link", "set", "dptmp1", "name", ifname])?;
    ip(&["-n", &sw.name, "link", "set", &port, "master", br, "up"])?;
    let _ = ns.exec(&["sysctl", "-qw", &format!("net.ipv6.conf.{ifname}.disable_ipv6=1")]);
    ip(&["-n", &ns.name, "link", "set", ifname, "up"])
}

/// One etcd member.
pub struct Member {
    pub ns: Netns,
    pub name: String,
    pub addr: String,
    data: PathBuf,
    child: Option<Child>,
    /// Extra flags (TLS).
    extra: Vec<String>,
}

/// The switch (management bridge `mg0` with 10.99.0.254, data bridge `lan0`), the etcd
/// members 10.99.0.1-3, and the hosts.
pub struct EtcdLab {
    pub members: Vec<Member>,
    pub sw: Netns,
    initial: String,
    scheme: &'static str,
    /// etcdctl's flags for this lab (TLS).
    pub ctl: Vec<String>,
}

impl Drop for EtcdLab {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.stop();
            let _ = std::fs::remove_dir_all(&m.data);
            let _ = std::fs::remove_file(m.data.with_extension("log"));
        }
    }
}

impl Member {
    fn start(&mut self, initial: &str, state: &str, scheme: &str) -> anyhow::Result<()> {
        let a = &self.addr;
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns.path().display()))
            .arg("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.data)
            .args(["--listen-peer-urls", &format!("http://{a}:2380")])
            .args(["--initial-advertise-peer-urls", &format!("http://{a}:2380")])
            .args(["--listen-client-urls", &format!("{scheme}://{a}:2379")])
            .args(["--advertise-client-urls", &format!("{scheme}://{a}:2379")])
            .args(["--initial-cluster-token", "lab", "--initial-cluster", initial, "--initial-cluster-state", state])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.data.with_extension("log"))?);
        self.child = Some(c.spawn().map_err(|e| anyhow::anyhow!("starting etcd (is etcd-server installed?): {e}"))?);
        Ok(())
    }

    /// SIGKILL, by pid.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl EtcdLab {
    /// `n` members (1 or 3); `extra`: flags for every member (TLS), `scheme` of clients.
    pub fn new(n: usize) -> anyhow::Result<EtcdLab> {
        EtcdLab::with(n, "http", Vec::new(), Vec::new())
    }

    pub fn with(n: usize, scheme: &'static str, extra: Vec<String>, ctl: Vec<String>) -> anyhow::Result<EtcdLab> {
        let sw = Netns::new("dpKs")?;
        for br in ["mg0", "lan0"] {
            sw.exec(&["ip", "link", "add", br, "type", "bridge"])?;
            sw.exec(&["ip", "link", "set", br, "up"])?;
        }
        sw.exec(&["ip", "addr", "add", "10.99.0.254/24", "dev", "mg0"])?;
        let mut members = Vec::new();
        for i in 1..=n {
            let ns = Netns::new("dpKe")?;
            plug(&sw, "mg0", &ns, "eth0")?;
            let addr = format!("10.99.0.{i}");
            ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            let data = std::env::temp_dir().join(unique("dpetcd-"));
            members.push(Member { ns, name: format!("m{i}"), addr, data, child: None, extra: extra.clone() });
        }
        let initial =
            members.iter().map(|m| format!("{}=http://{}:2380", m.name, m.addr)).collect::<Vec<_>>().join(",");
        let mut lab = EtcdLab { members, sw, initial, scheme, ctl };
        for i in 0..n {
            let (initial, scheme) = (lab.initial.clone(), lab.scheme);
            lab.members[i].start(&initial, "new", scheme)?;
        }
        lab.wait_healthy(Duration::from_secs(20))?;
        Ok(lab)
    }

    /// `etcd://10.99.0.1:2379,...` with `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        let m: Vec<String> = self.members.iter().map(|m| format!("{}:2379", m.addr)).collect();
        format!("etcd://{}/{prefix}", m.join(","))
    }

    /// Wait until a write goes through (quorum), or fail with etcd's logs.
    pub fn wait_healthy(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let eps: Vec<String> = self.members.iter().map(|m| format!("{}://{}:2379", self.scheme, m.addr)).collect();
        loop {
            let mut args =
                vec!["etcdctl".to_string(), "--endpoints".into(), eps.join(","), "--command-timeout=2s".into()];
            args.extend(self.ctl.iter().cloned());
            args.extend(["put".into(), "/lab/health".into(), "ok".into()]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if self.sw.exec(&args).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| std::fs::read_to_string(m.data.with_extension("log")).unwrap_or_default())
                    .map(|l| l.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
                    .collect();
                anyhow::bail!("etcd did not become healthy within {limit:?}:\n{}", logs.join("\n---\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn kill(&mut self, i: usize) {
        self.members[i].stop();
    }

    /// Start member `i` again on its data dir.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let (initial, scheme) = (self.initial.clone(), self.scheme);
        self.members[i].start(&initial, "existing", scheme)
    }

    /// Give namespace `ns` a management link `mgmt0` (10.99.0.(10+n)) to the members and a
    /// data parent `lan0` on the data switch.
    pub fn wire(&self, ns: &Netns, n: u8) -> anyhow::Result<()> {
        plug(&self.sw, "mg0", ns, "mgmt0")?;
        ns.exec(&["ip", "addr", "add", &format!("10.99.0.{}/24", 10 + n), "dev", "mgmt0"])?;
        plug(&self.sw, "lan0", ns, "lan0")
    }

    /// A dataplane host: management link `mgmt0` (10.99.0.(10+n)) to the members and a
    /// data parent `lan0` on the data switch.
    pub fn host(&self, name: &str, n: u8, prefix: &str) -> anyhow::Result<ClusterHost> {
        let h = Host::new("dpKh")?;
        self.wire(&h.ns, n)?;
        Ok(ClusterHost {
            host: h,
            env: vec![
                ("DATAPLANE_CLUSTER".into(), self.url(prefix)),
                ("DATAPLANE_CLUSTER_HOST".into(), name.to_string()),
            ],
            name: name.to_string(),
            release_on_drop: true,
        })
    }
}

/// A [`Host`] whose commands run in cluster mode.
pub struct ClusterHost {
    pub host: Host,
    pub env: Vec<(String, String)>,
    pub name: String,
    /// Release its endpoints' claims through the cluster when dropped.
    release_on_drop: bool,
}

impl ClusterHost {
    /// The host vanishes without a word to the cluster: its namespaces and state go
    /// (removed without `--cluster`), its claims stay.
    pub fn vanish(mut self) {
        self.release_on_drop = false;
    }

    pub fn dp(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("spawn dataplane")
    }

    pub fn command(&self) -> Command {
        let mut c = self.host.command();
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.dp(args);
        assert!(
            out.status.success(),
            "host {}: dataplane {args:?} failed ({}):\n{}\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cluster status --format json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.dp(&["cluster", "status", "--format", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "cluster status: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// (endpoint, IPv4 address, MAC) of each endpoint on `network`, from `ps -a`.
    pub fn addresses(&self, network: &str) -> Vec<(String, String, String)> {
        let ps = crate::json_lines(&self.ok(&["ps", "-a", "--format", "json"]));
        let mut v = Vec::new();
        for e in ps.as_array().into_iter().flatten() {
            for n in e["Networks"].as_array().into_iter().flatten().filter(|n| n["Network"] == network) {
                v.push((
                    e["Name"].as_str().unwrap_or_default().to_string(),
                    n["IPv4Address"].as_str().unwrap_or_default().split('/').next().unwrap_or_default().to_string(),
                    n["MacAddress"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        v
    }
}

impl Drop for ClusterHost {
    fn drop(&mut self) {
        if !self.release_on_drop {
            return;
        }
        // The host's own drop removes endpoints without the cluster (which may be gone):
        // release them through it first while it is there.
        let out = self.dp(&["ps", "-a", "--format", "json"]);
        let ps = crate::json_lines_lenient(&String::from_utf8_lossy(&out.stdout));
        for e in ps.as_array().into_iter().flatten() {
            if let Some(n) = e["Name"].as_str() {
                let _ = self.command().args(["rm", "-f", n]).output();
            }
        }
    }
}

/// A CA, a server certificate for 10.99.0.1 and two client certificates (one from the
/// CA, one self-made from another CA), made with openssl in `dir`.
pub fn make_certs(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let sh = |script: &str| -> anyhow::Result<()> {
        let out = Command::new("sh").arg("-ec").arg(script).current_dir(dir).output()?;
        if !out.status.success() {
            anyhow::bail!("openssl: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    sh(r#"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1" 2>/dev/null; }
ca() {
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -days 2 -subj "/CN=$1" -out "$1.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}
leaf() { # name ca usage san
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s\n' "$3" "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 2 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}
ca ca
ca otherca
leaf server ca serverAuth,clientAuth subjectAltName=IP:10.99.0.1
leaf client ca clientAuth ""
leaf stranger otherca clientAuth ""
"#)
}

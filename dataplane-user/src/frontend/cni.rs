//! `dataplane-cni`: the CNI plugin (spec 1.1; also answers 0.4.0 and 1.0.0).
//!
//! One process per call: the command in `CNI_COMMAND`, the network configuration on stdin,
//! the result (or the spec's error object) on stdout. Everything it touches is cheap to
//! open: the store, and programs and maps already pinned in bpffs.
//!
//! Configuration (one entry of a conflist):
//! ```json
//! { "cniVersion": "1.0.0", "name": "vlan50", "type": "dataplane-cni",
//!   "parent": "eth0.50", "mode": "bridge", "mtu": 1500,
//!   "stateDir": "/var/lib/dataplane", "bpffs": "/sys/fs/bpf/dataplane",
//!   "ipam": { "type": "dataplane-cni", "subnet": "192.168.50.0/24", "gateway": "192.168.50.1",
//!             "ipRange": "192.168.50.128/25", "auxAddresses": { "router": "192.168.50.2" } } }
//! ```
//! Any other `ipam.type` (host-local, static, dhcp, whereabouts) is delegated: that plugin
//! is run from `CNI_PATH` with the same input, and the address it returns is enforced.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::IpAddr,
    path::PathBuf,
    process::{Command, Stdio},
};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    control::{CniAttach, ControlError, Engine, NetworkCreate, StateKind},
    ipam::Cidr,
    store::{Attachment, Network, Owner},
};

pub const SUPPORTED: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
const PLUGIN_TYPE: &str = "dataplane-cni";

/// The spec's error object.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: String::new() }
    }
}

/// Error codes of the spec (and ours from 100).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const BAD_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// A dataplane operation failed (the message says which and why).
    pub const FAILED: u32 = 100;
    /// CHECK found the attachment differs from what was made.
    pub const CHECK_FAILED: u32 = 101;
}

impl From<ControlError> for CniError {
    fn from(e: ControlError) -> CniError {
        let msg = e.to_string();
        let code = match &e {
            e if e.retryable() => code::TRY_AGAIN,
            ControlError::Cluster(crate::cluster::ClusterError::Unavailable { .. }) => code::TRY_AGAIN,
            ControlError::Ipam(_) => code::INVALID_CONFIG,
            ControlError::Io { .. } => code::IO,
            _ => code::FAILED,
        };
        CniError::new(code, msg)
    }
}

type Result<T> = std::result::Result<T, CniError>;

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ValidAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    #[serde(default)]
    ifname: String,
}

#[derive(Debug, Deserialize)]
struct NetConf {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default, alias = "master")]
    parent: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    /// "tcx" (default) or "cls_bpf": the network's `endpoint_hooks` option.
    #[serde(rename = "endpointHooks", default)]
    endpoint_hooks: Option<String>,
    /// The network's `host_access` option (built-in IPAM only: the interface's address
    /// comes from the network's pool).
    #[serde(rename = "hostAccess", default)]
    host_access: bool,
    #[serde(rename = "stateDir", default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    bpffs: Option<PathBuf>,
    /// Cluster mode (else `DATAPLANE_CLUSTER` and friends from the environment).
    #[serde(default)]
    cluster: Option<ClusterConf>,
    #[serde(default)]
    ipam: Option<Value>,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: RuntimeConfig,
    #[serde(rename = "prevResult", default)]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

/// `"cluster": {"url": "etcd://HOST:PORT,...[/PREFIX]", "host": NAME, "ca": FILE,
/// "cert": FILE, "key": FILE}`: the node's addresses come from the cluster's plan.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterConf {
    url: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
}

/// Our built-in IPAM section.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BuiltinIpam {
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    ip_range: Option<String>,
    #[serde(default)]
    aux_addresses: BTreeMap<String, String>,
}

/// The environment of one call.
struct Env {
    command: String,
    container_id: String,
    netns: String,
    ifname: String,
    args: BTreeMap<String, String>,
    path: String,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

fn read_env() -> Result<Env> {
    let command = env("CNI_COMMAND");
    let mut args = BTreeMap::new();
    for kv in env("CNI_ARGS").split(';').filter(|s| !s.is_empty()) {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(CniError::new(code::BAD_ENV, format!("invalid CNI_ARGS entry {kv:?}: expected KEY=VALUE")));
        };
        args.insert(k.to_string(), v.to_string());
    }
    if let Some(v) = args.get("IgnoreUnknown") {
        if !["1", "true", "0", "false"].contains(&v.to_ascii_lowercase().as_str()) {
            return Err(CniError::new(
                code::BAD_ENV,
                format!("invalid CNI_ARGS IgnoreUnknown={v}: use 1, true, 0 or false"),
            ));
        }
    }
    let e = Env {
        command,
        container_id: env("CNI_CONTAINERID"),
        netns: env("CNI_NETNS"),
        ifname: env("CNI_IFNAME"),
        args,
        path: env("CNI_PATH"),
    };
    let need: &[(&str, &str)] = match e.command.as_str() {
        "ADD" | "CHECK" => &[("CNI_CONTAINERID", &e.container_id), ("CNI_NETNS", &e.netns), ("CNI_IFNAME", &e.ifname)],
        "DEL" => &[("CNI_CONTAINERID", &e.container_id), ("CNI_IFNAME", &e.ifname)],
        _ => &[],
    };
    for (name, value) in need {
        if value.is_empty() {
            return Err(CniError::new(code::BAD_ENV, format!("{name} is not set (required for {})", e.command)));
        }
    }
    if !e.ifname.is_empty() {
        check_ifname(&e.ifname)
            .map_err(|why| CniError::new(code::BAD_ENV, format!("invalid CNI_IFNAME {:?}: {why}", e.ifname)))?;
    }
    if ["ADD", "CHECK"].contains(&e.command.as_str()) {
        crate::netns::check_netns_file(&e.netns)
            .map_err(|why| CniError::new(code::BAD_ENV, format!("invalid CNI_NETNS: {why}")))?;
    }
    Ok(e)
}

/// The kernel's rules for an interface name (dev_valid_name), and what it would do
/// instead of refusing: a `%` makes the name a template it fills in (`eth%d` -> `eth0`),
/// and `all` and `default` are the names of its per-protocol defaults (the interface's
/// sysctl directory would clash). `.` is refused too: bpffs pin names come from it.
fn check_ifname(name: &str) -> std::result::Result<(), &'static str> {
    if name.len() > 15 {
        return Err("longer than 15 bytes");
    }
    if name.contains(['/', ':', '.', '%']) {
        return Err("'/', ':', '.' and '%' are not allowed ('%' would make it a template the kernel fills in)");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("blanks and control characters are not allowed");
    }
    if ["all", "default"].contains(&name) {
        return Err("\"all\" and \"default\" name the kernel's per-protocol defaults, not an interface");
    }
    Ok(())
}

fn parse_conf(stdin: &[u8]) -> Result<NetConf> {
    let conf: NetConf = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(code::DECODE, format!("cannot decode the network configuration: {e}")))?;
    if !SUPPORTED.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {:?} is not supported: use one of {}", conf.cni_version, SUPPORTED.join(", ")),
        ));
    }
    Ok(conf)
}

fn check_conf(conf: &NetConf) -> Result<()> {
    let bad = |m: String| Err(CniError::new(code::INVALID_CONFIG, m));
    if conf.name.is_empty() {
        return bad("the network configuration has no \"name\"".into());
    }
    if conf.kind != PLUGIN_TYPE {
        return bad(format!("network {}: type {:?} is not {PLUGIN_TYPE:?}", conf.name, conf.kind));
    }
    if conf.parent.is_empty() {
        return bad(format!("network {}: \"parent\" is required (e.g. \"eth0\" or \"eth0.50\")", conf.name));
    }
    if let Some(m) = &conf.mode {
        if m.parse::<crate::store::MacvlanMode>().is_err() {
            return bad(format!("network {}: invalid mode {m:?}: use bridge, private, vepa or passthru", conf.name));
        }
    }
    if conf.ipam.as_ref().and_then(|i| i["type"].as_str()).is_none() {
        return bad(format!(
            "network {}: \"ipam\" with a \"type\" is required (e.g. \"{PLUGIN_TYPE}\" or \"host-local\")",
            conf.name
        ));
    }
    if conf.host_access && delegated(conf) {
        return bad(format!(
            "network {}: \"hostAccess\" needs \"ipam\": {{\"type\": \"{PLUGIN_TYPE}\"}} (the host's interface takes an address from the network's pool, which {} does not know about)",
            conf.name,
            ipam_type(conf)
        ));
    }
    Ok(())
}

/// Validate a network configuration (one conflist entry) as ADD would, without acting on
/// it: for manifests and tools.
pub fn validate_config(json: &[u8]) -> Result<()> {
    check_conf(&parse_conf(json)?)
}

fn ipam_type(conf: &NetConf) -> &str {
    conf.ipam.as_ref().and_then(|i| i["type"].as_str()).unwrap_or_default()
}

fn delegated(conf: &NetConf) -> bool {
    ipam_type(conf) != PLUGIN_TYPE
}

/// The network request a conflist entry describes; `ipam_result` is a delegated IPAM
/// plugin's ADD result (its address fixes the subnet).
fn network_request(conf: &NetConf, ipam_result: Option<&Value>) -> Result<NetworkCreate> {
    let mut opts = vec![format!("parent={}", conf.parent)];
    if let Some(m) = &conf.mode {
        opts.push(format!("macvlan_mode={m}"));
    }
    if let Some(m) = conf.mtu {
        opts.push(format!("mtu={m}"));
    }
    if let Some(h) = &conf.endpoint_hooks {
        opts.push(format!("endpoint_hooks={h}"));
    }
    if conf.host_access {
        opts.push("host_access=true".to_string());
    }
    let mut req = NetworkCreate {
        name: conf.name.clone(),
        driver: "macvlan".into(),
        opts,
        owner: Owner::Cni { container_id: String::new(), ifname: String::new() },
        ..Default::default()
    };
    let invalid = |m: String| CniError::new(code::INVALID_CONFIG, m);
    match ipam_result {
        None => {
            let i: BuiltinIpam = serde_json::from_value(conf.ipam.clone().unwrap_or_default())
                .map_err(|e| invalid(format!("network {}: invalid ipam section: {e}", conf.name)))?;
            let subnet = i.subnet.ok_or_else(|| invalid(format!("network {}: ipam.subnet is required", conf.name)))?;
            req.ipv6 = subnet.contains(':');
            req.subnets.push(subnet);
            req.gateways.extend(i.gateway);
            req.ip_ranges.extend(i.ip_range);
            req.aux.extend(i.aux_addresses.iter().map(|(k, v)| format!("{k}={v}")));
        }
        Some(r) => {
            for ip in r["ips"].as_array().into_iter().flatten() {
                let addr = ip["address"].as_str().unwrap_or_default();
                let cidr: Cidr = addr.parse().map_err(|e: crate::ipam::IpamError| {
                    invalid(format!("delegated IPAM {} returned address {addr:?}: {e}", ipam_type(conf)))
                })?;
                let subnet = Cidr::parse_network(&format!("{}/{}", cidr.network(), cidr.prefix))
                    .map_err(|e| invalid(e.to_string()))?;
                req.ipv6 |= !subnet.is_ipv4();
                req.subnets.push(subnet.to_string());
                if let Some(g) = ip["gateway"].as_str() {
                    req.gateways.push(g.to_string());
                }
            }
        }
    }
    Ok(req)
}

/// Run the delegated IPAM plugin for `command` with our stdin; its parsed stdout.
fn delegate(e: &Env, conf: &NetConf, command: &str, stdin: &[u8]) -> Result<Option<Value>> {
    let kind = ipam_type(conf);
    if kind.contains('/') || kind.is_empty() {
        return Err(CniError::new(code::INVALID_CONFIG, format!("invalid ipam.type {kind:?}")));
    }
    let exe = std::env::split_paths(&e.path).map(|d| d.join(kind)).find(|p| p.is_file()).ok_or_else(|| {
        CniError::new(code::INVALID_CONFIG, format!("IPAM plugin {kind:?} not found in CNI_PATH {:?}", e.path))
    })?;
    let mut child = Command::new(&exe)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|err| CniError::new(code::IO, format!("running IPAM plugin {}: {err}", exe.display())))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|err| CniError::new(code::IO, format!("running IPAM plugin {}: {err}", exe.display())))?;
    let v: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let msg = v.as_ref().and_then(|v| v["msg"].as_str()).unwrap_or("no error message").to_string();
        let c = v.as_ref().and_then(|v| v["code"].as_u64()).unwrap_or(code::FAILED as u64) as u32;
        return Err(CniError { code: c, msg: format!("IPAM plugin {kind} {command}: {msg}"), details: String::new() });
    }
    Ok(v)
}

/// Requested MAC and addresses: runtimeConfig (capabilities `mac`, `ips`) first, then
/// CNI_ARGS `MAC` and `IP` (comma-separated for several).
fn requests(e: &Env, conf: &NetConf) -> Result<(Option<String>, Option<IpAddr>, Option<IpAddr>)> {
    let mac = conf.runtime_config.mac.clone().or_else(|| e.args.get("MAC").cloned());
    let mut ips: Vec<String> = conf.runtime_config.ips.clone();
    if ips.is_empty() {
        ips = e.args.get("IP").map(|s| s.split(',').map(str::to_string).collect()).unwrap_or_default();
    }
    let (mut v4, mut v6) = (None, None);
    for s in ips {
        let addr = s.split_once('/').map_or(s.as_str(), |(a, _)| a);
        let ip: IpAddr =
            addr.parse().map_err(|_| CniError::new(code::INVALID_CONFIG, format!("invalid requested IP {s:?}")))?;
        if ip.is_ipv4() {
            v4 = Some(ip)
        } else {
            v6 = Some(ip)
        }
    }
    Ok((mac, v4, v6))
}

fn prefix_of(n: &Network, ip: IpAddr) -> u8 {
    n.pools.iter().find(|p| p.subnet.contains(ip)).map_or(if ip.is_ipv4() { 32 } else { 128 }, |p| p.subnet.prefix)
}

/// The ADD result in the requested version's shape (the reference macvlan plugin's).
fn result(version: &str, e: &Env, n: &Network, a: &Attachment, ipam: Option<&Value>) -> Value {
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for ip in [a.ipv4, a.ipv6].into_iter().flatten() {
        let gw = n.pools.iter().find(|p| p.subnet.contains(ip)).and_then(|p| p.gateway);
        let mut entry = json!({ "address": format!("{ip}/{}", prefix_of(n, ip)), "interface": 0 });
        if let Some(g) = gw {
            entry["gateway"] = json!(g.to_string());
            if !n.internal && ipam.is_none() {
                routes.push(json!({ "dst": if ip.is_ipv4() { "0.0.0.0/0" } else { "::/0" }, "gw": g.to_string() }));
            }
        }
        if version == "0.4.0" {
            entry["version"] = json!(if ip.is_ipv4() { "4" } else { "6" });
        }
        ips.push(entry);
    }
    if let Some(r) = ipam {
        routes.extend(r["routes"].as_array().cloned().unwrap_or_default());
    }
    json!({
        "cniVersion": version,
        "interfaces": [{ "name": a.ifname, "mac": a.mac, "sandbox": e.netns }],
        "ips": ips,
        "routes": routes,
        "dns": ipam.and_then(|r| r.get("dns").cloned()).unwrap_or_else(|| json!({})),
    })
}

fn open_engine(conf: &NetConf) -> Result<Engine> {
    let state = conf
        .state_dir
        .clone()
        .or_else(|| std::env::var_os("DATAPLANE_STATE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/lib/dataplane"));
    let bpffs = conf
        .bpffs
        .clone()
        .or_else(|| std::env::var_os("DATAPLANE_BPFFS").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::DEFAULT_BPFFS_DIR));
    let mut engine = Engine::open(&state, &bpffs).map_err(|e| CniError::new(code::IO, e.to_string()))?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let cfg = match &conf.cluster {
        Some(c) => Some(crate::cluster::ClusterConfig::parse(
            &c.url,
            c.host.as_deref(),
            c.ca.clone(),
            c.cert.clone(),
            c.key.clone(),
        )),
        None => env("DATAPLANE_CLUSTER").map(|url| {
            crate::cluster::ClusterConfig::parse(
                &url,
                env("DATAPLANE_CLUSTER_HOST").as_deref(),
                env("DATAPLANE_CLUSTER_CA").map(PathBuf::from),
                env("DATAPLANE_CLUSTER_CERT").map(PathBuf::from),
                env("DATAPLANE_CLUSTER_KEY").map(PathBuf::from),
            )
        }),
    };
    if let Some(cfg) = cfg {
        let cfg = cfg.map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
        engine.join_cluster(cfg)?;
    }
    Ok(engine)
}

fn add(e: &Env, conf: &NetConf, stdin: &[u8]) -> Result<Value> {
    check_conf(conf)?;
    let (mac, mut v4, mut v6) = requests(e, conf)?;
    let mut engine = open_engine(conf)?;
    let ipam = if delegated(conf) {
        let r = delegate(e, conf, "ADD", stdin)?.ok_or_else(|| {
            CniError::new(code::FAILED, format!("IPAM plugin {} returned no result", ipam_type(conf)))
        })?;
        for ip in r["ips"].as_array().into_iter().flatten() {
            let addr = ip["address"].as_str().unwrap_or_default();
            let ip: Option<IpAddr> = addr.split_once('/').and_then(|(a, _)| a.parse().ok());
            match ip {
                Some(ip @ IpAddr::V4(_)) => v4 = Some(ip),
                Some(ip @ IpAddr::V6(_)) => v6 = Some(ip),
                None => {}
            }
        }
        Some(r)
    } else {
        None
    };
    let req = CniAttach {
        container_id: e.container_id.clone(),
        ifname: e.ifname.clone(),
        netns: e.netns.clone(),
        ipv4: v4,
        ipv6: v6,
        mac,
    };
    let attached = (|| -> Result<(Network, Attachment)> {
        let mut retried = false;
        loop {
            let n = engine.cni_network(network_request(conf, ipam.as_ref())?)?;
            match engine.cni_attach(&n, req.clone()) {
                Ok(a) => return Ok((n, a)),
                // A DEL began removing the network between the two steps: once it is
                // gone, this ADD makes it again (once).
                Err(err) if err.state_kind() == Some(StateKind::Busy) && !retried => retried = true,
                Err(err) => {
                    // A network made for this ADD goes with it.
                    let _ = engine.cni_release_network(&n.name);
                    return Err(err.into());
                }
            }
        }
    })();
    match attached {
        Ok((n, a)) => Ok(result(&conf.cni_version, e, &n, &a, ipam.as_ref())),
        Err(err) => {
            if ipam.is_some() {
                let _ = delegate(e, conf, "DEL", stdin);
            }
            Err(err)
        }
    }
}

fn del(e: &Env, conf: &NetConf, stdin: &[u8]) -> Result<()> {
    if conf.name.is_empty() {
        return Err(CniError::new(code::INVALID_CONFIG, "the network configuration has no \"name\""));
    }
    let mut engine = open_engine(conf)?;
    for w in engine.cni_detach(&conf.name, &e.container_id, &e.ifname)? {
        eprintln!("dataplane-cni: warning: {w}");
    }
    if conf.ipam.is_some() && delegated(conf) {
        delegate(e, conf, "DEL", stdin)?;
    }
    Ok(())
}

fn check(e: &Env, conf: &NetConf, stdin: &[u8]) -> Result<()> {
    check_conf(conf)?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult (the ADD result)"))?;
    let (ips, mac) = prev_result_facts(prev, &e.ifname)?;
    let mac = mac.as_deref();
    let mut engine = open_engine(conf)?;
    engine
        .cni_check(&conf.name, &e.container_id, &e.ifname, &e.netns, &ips, mac)
        .map_err(|err| CniError::new(code::CHECK_FAILED, err.to_string()))?;
    if delegated(conf) {
        delegate(e, conf, "CHECK", stdin)?;
    }
    Ok(())
}

/// The addresses of `prev` (an ADD result), and the MAC of its interface `ifname` in the
/// sandbox. A result that is not one (`ips` not a list, an address that is not CIDR) is
/// refused, not read as "no addresses".
fn prev_result_facts(prev: &Value, ifname: &str) -> Result<(Vec<IpAddr>, Option<String>)> {
    let bad = |what: String| CniError::new(code::DECODE, format!("prevResult is not an ADD result: {what}"));
    if !prev.is_object() {
        return Err(bad(format!("{prev} is not an object")));
    }
    let list = |key: &str| -> Result<&[Value]> {
        match &prev[key] {
            Value::Null => Ok(&[]),
            Value::Array(a) => Ok(a.as_slice()),
            other => Err(bad(format!("\"{key}\" is {other}, not a list"))),
        }
    };
    let mut ips = Vec::new();
    for ip in list("ips")? {
        let addr = ip["address"].as_str().unwrap_or_default();
        match addr.split_once('/').and_then(|(a, p)| Some((a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?))) {
            Some((a, _)) => ips.push(a),
            None => return Err(bad(format!("address {} of \"ips\" is not an address in CIDR form", ip["address"]))),
        }
    }
    let mut mac = None;
    for i in list("interfaces")? {
        if !i.is_object() {
            return Err(bad(format!("interface {i} is not an object")));
        }
        if i["name"] == ifname && i["sandbox"].as_str().is_some_and(|s| !s.is_empty()) {
            mac = i["mac"].as_str().map(str::to_string);
        }
    }
    Ok((ips, mac))
}

fn gc(e: &Env, conf: &NetConf, stdin: &[u8]) -> Result<()> {
    if conf.name.is_empty() {
        return Err(CniError::new(code::INVALID_CONFIG, "the network configuration has no \"name\""));
    }
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(code::INVALID_CONFIG, "GC needs \"cni.dev/valid-attachments\" (a list, possibly empty)")
    })?;
    let mut engine = open_engine(conf)?;
    // Also finishes whatever a killed ADD or DEL left half-done.
    if let Ok(r) = engine.reconcile_with(false, false) {
        for d in r.drift {
            eprintln!("dataplane-cni: reconciled: {d}");
        }
    }
    for (container, ifname) in engine.cni_attachments(&conf.name)? {
        if !valid.iter().any(|v| v.container_id == container && (v.ifname.is_empty() || v.ifname == ifname)) {
            for w in engine.cni_detach(&conf.name, &container, &ifname)? {
                eprintln!("dataplane-cni: warning: {w}");
            }
        }
    }
    engine.cni_release_network(&conf.name)?;
    if delegated(conf) {
        // IPAM plugins older than spec 1.1 do not know GC; their refusal is not ours.
        let _ = delegate(e, conf, "GC", stdin);
    }
    Ok(())
}

fn status(conf: &NetConf) -> Result<()> {
    check_conf(conf)?;
    let mut engine = open_engine(conf).map_err(|e| CniError::new(code::NOT_AVAILABLE, e.msg))?;
    let trunk = conf.parent.split_once('.').map_or(conf.parent.as_str(), |(t, _)| t);
    if crate::netns::ifindex(trunk).is_none() {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            format!("parent interface {trunk} does not exist on this node"),
        ));
    }
    engine.networks().map_err(|e| CniError::new(code::NOT_AVAILABLE, e.to_string()))?;
    Ok(())
}

/// Serving as another plugin's IPAM (`"ipam": {"type": "dataplane-cni", ...}` under, say,
/// the reference macvlan or ipvlan plugin): addresses with Docker's rules in the shared
/// store, and nothing else (that plugin makes the interface).
fn ipam_call(e: &Env, conf: &NetConf) -> Result<Option<Value>> {
    if conf.name.is_empty() {
        return Err(CniError::new(code::INVALID_CONFIG, "the network configuration has no \"name\""));
    }
    let mut engine = open_engine(conf)?;
    match e.command.as_str() {
        "ADD" => {
            let (_, v4, v6) = requests(e, conf)?;
            let mut req = network_request(conf, None)?;
            req.opts.clear();
            let a = CniAttach {
                container_id: e.container_id.clone(),
                ifname: e.ifname.clone(),
                netns: e.netns.clone(),
                ipv4: v4,
                ipv6: v6,
                mac: None,
            };
            let (n, att) = engine.cni_ipam_add(req, a)?;
            let mut ips = Vec::new();
            let mut routes = Vec::new();
            for ip in [att.ipv4, att.ipv6].into_iter().flatten() {
                let mut entry = json!({ "address": format!("{ip}/{}", prefix_of(&n, ip)) });
                if let Some(g) = n.pools.iter().find(|p| p.subnet.contains(ip)).and_then(|p| p.gateway) {
                    entry["gateway"] = json!(g.to_string());
                    routes.push(json!({ "dst": if ip.is_ipv4() { "0.0.0.0/0" } else { "::/0" }, "gw": g.to_string() }));
                }
                if conf.cni_version == "0.4.0" {
                    entry["version"] = json!(if ip.is_ipv4() { "4" } else { "6" });
                }
                ips.push(entry);
            }
            Ok(Some(json!({ "cniVersion": conf.cni_version, "ips": ips, "routes": routes, "dns": {} })))
        }
        "DEL" => engine.cni_ipam_del(&conf.name, &e.container_id, &e.ifname).map(|()| None).map_err(Into::into),
        "CHECK" => match engine.cni_attachment(&conf.name, &e.container_id, &e.ifname)? {
            Some(_) => Ok(None),
            None => Err(CniError::new(
                code::CHECK_FAILED,
                format!("container {} has no address for {} on {}", e.container_id, e.ifname, conf.name),
            )),
        },
        "GC" => {
            // Without the list every address would look unused, live pods' included.
            let valid = conf.valid_attachments.as_deref().ok_or_else(|| {
                CniError::new(code::INVALID_CONFIG, "GC needs \"cni.dev/valid-attachments\" (a list, possibly empty)")
            })?;
            for (c, i) in engine.cni_attachments(&conf.name)? {
                if !valid.iter().any(|v| v.container_id == c && (v.ifname.is_empty() || v.ifname == i)) {
                    engine.cni_ipam_del(&conf.name, &c, &i)?;
                }
            }
            Ok(None)
        }
        "STATUS" => Ok(None),
        other => Err(CniError::new(code::BAD_ENV, format!("unknown CNI_COMMAND {other:?}"))),
    }
}

fn version_answer(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".into());
    json!({ "cniVersion": asked, "supportedVersions": SUPPORTED })
}

/// One call; what to print on stdout, if anything.
fn call(stdin: &[u8]) -> Result<Option<Value>> {
    let e = read_env()?;
    if e.command == "VERSION" {
        return Ok(Some(version_answer(stdin)));
    }
    let conf = parse_conf(stdin)?;
    if ["STATUS", "GC"].contains(&e.command.as_str()) && conf.cni_version.as_str() < "1.1.0" {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{} needs cniVersion 1.1.0, not {}", e.command, conf.cni_version),
        ));
    }
    if conf.kind != PLUGIN_TYPE && ipam_type(&conf) == PLUGIN_TYPE {
        return ipam_call(&e, &conf);
    }
    match e.command.as_str() {
        "ADD" => add(&e, &conf, stdin).map(Some),
        "DEL" => del(&e, &conf, stdin).map(|()| None),
        "CHECK" => check(&e, &conf, stdin).map(|()| None),
        "GC" => gc(&e, &conf, stdin).map(|()| None),
        "STATUS" => status(&conf).map(|()| None),
        "" => Err(CniError::new(code::BAD_ENV, "CNI_COMMAND is not set (ADD, DEL, CHECK, GC, STATUS or VERSION)")),
        other => Err(CniError::new(
            code::BAD_ENV,
            format!("unknown CNI_COMMAND {other:?}: use ADD, DEL, CHECK, GC, STATUS or VERSION"),
        )),
    }
}

/// The binary's main: read stdin, answer on stdout, exit 0 or 1.
pub fn main() -> i32 {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return emit_error("", &CniError::new(code::IO, format!("reading stdin: {e}")));
    }
    match call(&stdin) {
        Ok(Some(v)) => {
            println!("{v}");
            0
        }
        Ok(None) => 0,
        Err(err) => {
            let version = serde_json::from_slice::<Value>(&stdin)
                .ok()
                .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
                .unwrap_or_default();
            emit_error(&version, &err)
        }
    }
}

/// Answer with the spec's error object before any input was read (exit code to use).
pub fn fail(code: u32, msg: &str) -> i32 {
    emit_error("", &CniError::new(code, msg))
}

fn emit_error(version: &str, e: &CniError) -> i32 {
    let v = if SUPPORTED.contains(&version) { version } else { "1.1.0" };
    println!("{}", json!({ "cniVersion": v, "code": e.code, "msg": e.msg, "details": e.details }));
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(s: &str) -> NetConf {
        parse_conf(s.as_bytes()).unwrap()
    }

    #[test]
    fn built_in_ipam_becomes_a_network_request() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"v50","type":"dataplane-cni","parent":"eth0.50","mode":"bridge","mtu":1400,
               "endpointHooks":"cls_bpf","ipam":{"type":"dataplane-cni","subnet":"192.168.50.0/24","gateway":"192.168.50.1",
                       "ipRange":"192.168.50.128/25","auxAddresses":{"router":"192.168.50.2"}}}"#,
        );
        check_conf(&c).unwrap();
        let r = network_request(&c, None).unwrap();
        assert_eq!(r.name, "v50");
        assert_eq!(r.opts, vec!["parent=eth0.50", "macvlan_mode=bridge", "mtu=1400", "endpoint_hooks=cls_bpf"]);
        assert_eq!(
            (r.subnets, r.gateways, r.ip_ranges),
            (
                vec!["192.168.50.0/24".to_string()],
                vec!["192.168.50.1".to_string()],
                vec!["192.168.50.128/25".to_string()]
            )
        );
        assert_eq!(r.aux, vec!["router=192.168.50.2"]);
    }

    #[test]
    fn delegated_result_fixes_the_subnet() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni","parent":"eth0","ipam":{"type":"host-local"}}"#,
        );
        let res = json!({"ips":[{"address":"10.21.0.7/16","gateway":"10.21.0.1"}]});
        let r = network_request(&c, Some(&res)).unwrap();
        assert_eq!(r.subnets, vec!["10.21.0.0/16"]);
        assert_eq!(r.gateways, vec!["10.21.0.1"]);
        assert!(delegated(&c));
    }

    #[test]
    fn bad_configs_are_named() {
        let e = parse_conf(br#"{"cniVersion":"0.3.1","name":"n"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(e.msg.contains("\"0.3.1\""), "{}", e.msg);
        let e = parse_conf(b"{nope").unwrap_err();
        assert_eq!(e.code, code::DECODE);
        let e = check_conf(&conf(r#"{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni","ipam":{"type":"x"}}"#))
            .unwrap_err();
        assert!(e.code == code::INVALID_CONFIG && e.msg.contains("\"parent\""), "{}", e.msg);
        let e = check_conf(&conf(
            r#"{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni","parent":"eth0","mode":"sideways","ipam":{"type":"x"}}"#,
        ))
        .unwrap_err();
        assert!(e.msg.contains("\"sideways\""), "{}", e.msg);
    }

    #[test]
    fn interface_names_follow_the_kernels_rules() {
        for ok in ["eth0", "net1", "a-b_c", "x"] {
            assert_eq!(check_ifname(ok), Ok(()), "{ok}");
        }
        for bad in ["eth%d", "all", "default", "a/b", "a:b", "a.b", "a b", "a\tb", "sixteen-chars-xx"] {
            assert!(check_ifname(bad).is_err(), "{bad} accepted");
        }
        assert!(check_ifname("eth%d").unwrap_err().contains("template"));
    }

    #[test]
    fn a_previous_result_is_read_strictly() {
        let good = json!({"ips":[{"address":"10.0.0.2/24"},{"address":"fd00::2/64"}],
            "interfaces":[{"name":"eth0","mac":"02:00:00:00:00:02","sandbox":"/run/netns/p"},{"name":"eth0","mac":"x"}]});
        let (ips, mac) = prev_result_facts(&good, "eth0").unwrap();
        assert_eq!(ips, vec!["10.0.0.2".parse::<IpAddr>().unwrap(), "fd00::2".parse().unwrap()]);
        assert_eq!(mac.as_deref(), Some("02:00:00:00:00:02"), "the sandbox's interface, not the host's");
        assert_eq!(prev_result_facts(&json!({}), "eth0").unwrap(), (vec![], None));
        for bad in [
            json!({"ips":"x","interfaces":5}),
            json!({"ips":[{"address":"10.0.0.2"}]}),
            json!({"ips":[{"address":"nope/24"}]}),
            json!({"interfaces":[5]}),
            json!("a string"),
        ] {
            let e = prev_result_facts(&bad, "eth0").unwrap_err();
            assert_eq!(e.code, code::DECODE, "{bad}: {}", e.msg);
        }
    }

    #[test]
    fn retryable_errors_become_try_again() {
        let busy = crate::control::ControlError::State { kind: StateKind::Busy, message: "busy".into() };
        assert_eq!(CniError::from(busy).code, code::TRY_AGAIN);
        let other = crate::control::ControlError::Invalid("no".into());
        assert_eq!(CniError::from(other).code, code::FAILED);
    }

    #[test]
    fn results_follow_the_requested_version() {
        let v = version_answer(br#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
    }
}

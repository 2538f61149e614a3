//! `dataplane plugin docker`: Docker's remote network-driver protocol and, in cluster mode,
//! its remote IPAM-driver protocol (HTTP POST + JSON over a unix socket under
//! /run/docker/plugins) translated into engine calls.
//!
//! Docker finds the plugin by its socket's name (`dataplane.sock` serves driver
//! `dataplane`). The process must run in dockerd's network namespace: the interface it
//! hands over in Join must exist there. Requests are served one at a time against one
//! engine (Docker's calls for one container are sequential anyway); the engine's work is
//! synchronous and runs on tokio's blocking pool. HTTP itself is hyper's (see `http.rs`
//! for the limits and timeouts).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::UnixListener;

use super::http::{serve_connection, Answer, Backoff, Call, Limits};

use crate::{
    control::{ControlError, Engine, NetworkCreate},
    store::Owner,
};

pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/dataplane.sock";
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.1+json";

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("socket {}: {source}", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another process already serves {} (stop it first)", .0.display())]
    InUse(PathBuf),
    #[error(transparent)]
    Engine(#[from] ControlError),
}

/// An IPAM entry of CreateNetwork (`IPv4Data`/`IPv6Data`); addresses arrive in CIDR form.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IpamData {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    gateway: String,
    #[serde(default)]
    aux_addresses: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(default)]
    options: BTreeMap<String, Value>,
    #[serde(default, rename = "IPv4Data")]
    ipv4_data: Vec<IpamData>,
    #[serde(default, rename = "IPv6Data")]
    ipv6_data: Vec<IpamData>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointInterface {
    #[serde(default)]
    address: String,
    #[serde(default, rename = "AddressIPv6")]
    address_ipv6: String,
    #[serde(default)]
    mac_address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default)]
    interface: Option<EndpointInterface>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointRef {
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default)]
    sandbox_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkRef {
    #[serde(rename = "NetworkID")]
    network_id: String,
}

/// IpamDriver.RequestPool.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RequestPool {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    sub_pool: String,
    #[serde(default, rename = "V6")]
    v6: bool,
}

/// IpamDriver.RequestAddress and ReleaseAddress.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AddressRef {
    #[serde(rename = "PoolID")]
    pool_id: String,
    #[serde(default)]
    address: String,
    /// Docker sends `null` when there are none.
    #[serde(default)]
    options: Option<BTreeMap<String, String>>,
}

/// IpamDriver.ReleasePool.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PoolRef {
    #[serde(rename = "PoolID")]
    pool_id: String,
}

/// `10.0.0.1/24` -> `10.0.0.1` (Docker sends gateways and aux addresses with a prefix).
fn strip_prefix(s: &str) -> &str {
    s.split_once('/').map_or(s, |(a, _)| a)
}

fn opt_ip(s: &str) -> Result<Option<IpAddr>, ControlError> {
    if s.is_empty() {
        return Ok(None);
    }
    strip_prefix(s).parse().map(Some).map_err(|_| ControlError::Invalid(format!("invalid address {s:?} from Docker")))
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

/// CreateNetwork's body as the engine's network request.
fn network_request(c: CreateNetwork) -> Result<NetworkCreate, ControlError> {
    let mut opts = Vec::new();
    if let Some(Value::Object(generic)) = c.options.get("com.docker.network.generic") {
        for (k, v) in generic {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            opts.push(format!("{k}={v}"));
        }
    }
    let mut req = NetworkCreate {
        driver: "macvlan".into(),
        opts,
        internal: truthy(c.options.get("com.docker.network.internal")),
        ipv6: truthy(c.options.get("com.docker.network.enable_ipv6")),
        owner: Owner::Docker { id: c.network_id.clone(), sandbox: None },
        ..Default::default()
    };
    for d in c.ipv4_data.iter().chain(&c.ipv6_data) {
        if d.pool.is_empty() {
            continue;
        }
        req.subnets.push(d.pool.clone());
        if !d.gateway.is_empty() {
            req.gateways.push(strip_prefix(&d.gateway).to_string());
        }
        for (name, ip) in &d.aux_addresses {
            req.aux.push(format!("{name}={}", strip_prefix(ip)));
        }
    }
    Ok(req)
}

fn parse<T: for<'de> Deserialize<'de>>(method: &str, body: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| ControlError::Invalid(format!("malformed {method} request: {e}")))
}

/// One protocol call: the answer's HTTP status and JSON body.
pub fn dispatch(engine: &mut Engine, method: &str, body: &[u8]) -> (u16, Value) {
    match call(engine, method, body) {
        Ok(Some(v)) => (200, v),
        Ok(None) => (404, json!({ "Err": format!("dataplane does not implement {method}") })),
        Err(e) => (500, json!({ "Err": e.to_string() })),
    }
}

fn call(engine: &mut Engine, method: &str, body: &[u8]) -> Result<Option<Value>, ControlError> {
    let v = match method {
        "Plugin.Activate" => json!({ "Implements": ["NetworkDriver", "IpamDriver"] }),
        "IpamDriver.GetCapabilities" => json!({ "RequiresMACAddress": false, "RequiresRequestReplay": false }),
        "IpamDriver.GetDefaultAddressSpaces" => {
            json!({ "LocalDefaultAddressSpace": "dataplane-local", "GlobalDefaultAddressSpace": "dataplane-global" })
        }
        "IpamDriver.RequestPool" => {
            let r: RequestPool = parse(method, body)?;
            let (id, pool) = engine.docker_ipam_request_pool(&r.pool, &r.sub_pool, r.v6)?;
            json!({ "PoolID": id, "Pool": pool, "Data": {} })
        }
        "IpamDriver.ReleasePool" => {
            let r: PoolRef = parse(method, body)?;
            engine.docker_ipam_release_pool(&r.pool_id)?;
            json!({})
        }
        "IpamDriver.RequestAddress" => {
            let r: AddressRef = parse(method, body)?;
            let gateway = r
                .options
                .as_ref()
                .and_then(|o| o.get("RequestAddressType"))
                .is_some_and(|t| t == "com.docker.network.gateway");
            let a = engine.docker_ipam_request_address(&r.pool_id, opt_ip(&r.address)?, gateway)?;
            json!({ "Address": a, "Data": {} })
        }
        "IpamDriver.ReleaseAddress" => {
            let r: AddressRef = parse(method, body)?;
            let Some(ip) = opt_ip(&r.address)? else {
                return Err(ControlError::Invalid("ReleaseAddress without an address".into()));
            };
            engine.docker_ipam_release_address(&r.pool_id, ip)?;
            json!({})
        }
        "NetworkDriver.GetCapabilities" => json!({ "Scope": "local", "ConnectivityScope": "local" }),
        "NetworkDriver.CreateNetwork" => {
            let req = network_request(parse(method, body)?)?;
            engine.docker_network_create(req)?;
            json!({})
        }
        "NetworkDriver.DeleteNetwork" => {
            let r: NetworkRef = parse(method, body)?;
            for w in engine.docker_network_delete(&r.network_id)? {
                eprintln!("dataplane plugin: warning: network {}: {w}", r.network_id);
            }
            json!({})
        }
        "NetworkDriver.CreateEndpoint" => {
            let r: CreateEndpoint = parse(method, body)?;
            let i = r.interface.unwrap_or_default();
            let mac = Some(i.mac_address.as_str()).filter(|m| !m.is_empty());
            let a = engine.docker_endpoint_create(
                &r.network_id,
                &r.endpoint_id,
                opt_ip(&i.address)?,
                opt_ip(&i.address_ipv6)?,
                mac,
            )?;
            // Docker wants a MAC back only when it gave none.
            if mac.is_some() {
                json!({})
            } else {
                json!({ "Interface": { "MacAddress": a.mac } })
            }
        }
        "NetworkDriver.Join" => {
            let r: EndpointRef = parse(method, body)?;
            let j = engine.docker_join(&r.endpoint_id, &r.sandbox_key)?;
            let mut out = json!({ "InterfaceName": { "SrcName": j.src_name, "DstPrefix": "eth" } });
            if j.internal {
                out["DisableGatewayService"] = json!(true);
            } else {
                if let Some(g) = j.gateway4 {
                    out["Gateway"] = json!(g.to_string());
                }
                if let Some(g) = j.gateway6 {
                    out["GatewayIPv6"] = json!(g.to_string());
                }
            }
            out
        }
        "NetworkDriver.Leave" => {
            let r: EndpointRef = parse(method, body)?;
            engine.docker_leave(&r.endpoint_id)?;
            json!({})
        }
        "NetworkDriver.DeleteEndpoint" => {
            let r: EndpointRef = parse(method, body)?;
            for w in engine.docker_endpoint_delete(&r.endpoint_id)? {
                eprintln!("dataplane plugin: warning: endpoint {}: {w}", r.endpoint_id);
            }
            json!({})
        }
        "NetworkDriver.EndpointOperInfo" => json!({ "Value": {} }),
        "NetworkDriver.ProgramExternalConnectivity" => {
            let r: EndpointRef = parse(method, body)?;
            engine.docker_program(&r.endpoint_id)?;
            json!({})
        }
        "NetworkDriver.RevokeExternalConnectivity" | "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => {
            json!({})
        }
        _ => return Ok(None),
    };
    Ok(Some(v))
}

/// The plugin's answer to a request it cannot read (too large, too slow).
fn refuse(status: hyper::StatusCode, msg: String) -> Answer {
    Answer { status, content_type: CONTENT_TYPE, body: json!({ "Err": msg }).to_string() }
}

/// One protocol call on tokio's blocking pool (the engine is synchronous).
async fn answer(call: Call, engine: Arc<Mutex<Engine>>, verbose: bool) -> Answer {
    let method = call.path.trim_start_matches('/').to_string();
    let (m, b) = (method.clone(), call.body.clone());
    let (status, answer) = tokio::task::spawn_blocking(move || {
        let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
        dispatch(&mut engine, &m, &b)
    })
    .await
    .unwrap_or_else(|e| (500, json!({ "Err": format!("internal error: {e}") })));
    if verbose || status != 200 {
        eprintln!(
            "dataplane plugin: {method} {} -> {status} {answer}",
            String::from_utf8_lossy(&call.body).chars().take(600).collect::<String>()
        );
    }
    Answer {
        status: hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR),
        content_type: CONTENT_TYPE,
        body: answer.to_string(),
    }
}

/// Bind `socket`, replacing a stale socket file but never one another process serves.
fn bind(socket: &Path) -> Result<UnixListener, PluginError> {
    let err = |source| PluginError::Socket { path: socket.to_path_buf(), source };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(PluginError::InUse(socket.to_path_buf()));
        }
        std::fs::remove_file(socket).map_err(err)?;
    }
    UnixListener::bind(socket).map_err(err)
}

/// Serve until SIGTERM/SIGINT; the socket file is removed on the way out.
pub fn serve(socket: &Path, mut engine: Engine, verbose: bool, metrics: Option<&str>) -> Result<(), PluginError> {
    // Finish what a killed predecessor (or CLI command) left half-done before serving.
    match engine.reconcile_with(false, false) {
        Ok(r) => {
            for d in r.drift {
                eprintln!("dataplane plugin: reconciled: {d}");
            }
            for e in r.errors {
                eprintln!("dataplane plugin: warning: {e}");
            }
        }
        Err(e) => eprintln!("dataplane plugin: warning: reconcile failed: {e}"),
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| PluginError::Socket { path: socket.to_path_buf(), source })?;
    let engine = Arc::new(Mutex::new(engine));
    let result = rt.block_on(async {
        let listener = bind(socket)?;
        let driver = socket.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        eprintln!("dataplane plugin: serving Docker network driver {driver:?} on {}", socket.display());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| PluginError::Socket { path: socket.to_path_buf(), source })?;
        if let Some(addr) = metrics {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| PluginError::Socket { path: addr.into(), source })?;
            eprintln!("dataplane plugin: metrics at http://{addr}/metrics");
            tokio::spawn(super::metrics::serve_on(l, engine.clone()));
        }
        let mut backoff = Backoff::new("dataplane plugin");
        let limits = Limits::from_env();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((conn, _)) => {
                        backoff.reset();
                        let e = engine.clone();
                        tokio::spawn(serve_connection(conn, limits, refuse, move |call| {
                            answer(call, e.clone(), verbose)
                        }));
                    }
                    // Out of descriptors (or another passing error): keep serving.
                    Err(err) => backoff.wait(&err).await,
                },
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        Ok(())
    });
    let _ = std::fs::remove_file(socket);
    eprintln!("dataplane plugin: stopped");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_network_body_becomes_a_request() {
        let body = br#"{"NetworkID":"0123456789abcdef","Options":{"com.docker.network.enable_ipv6":false,
            "com.docker.network.generic":{"parent":"p0.50","macvlan_mode":"bridge"}},
            "IPv4Data":[{"AddressSpace":"LocalDefault","Gateway":"10.88.0.1/24","Pool":"10.88.0.0/24",
            "AuxAddresses":{"router":"10.88.0.129/24"}}],"IPv6Data":[]}"#;
        let req = network_request(parse("NetworkDriver.CreateNetwork", body).unwrap()).unwrap();
        assert_eq!(req.subnets, vec!["10.88.0.0/24"]);
        assert_eq!(req.gateways, vec!["10.88.0.1"]);
        assert_eq!(req.aux, vec!["router=10.88.0.129"]);
        assert!(
            req.opts.contains(&"parent=p0.50".to_string()) && req.opts.contains(&"macvlan_mode=bridge".to_string())
        );
        assert!(!req.ipv6 && !req.internal);
        assert_eq!(req.owner, Owner::Docker { id: "0123456789abcdef".into(), sandbox: None });
    }

    #[test]
    fn malformed_bodies_and_addresses_are_named() {
        let e = parse::<CreateNetwork>("NetworkDriver.CreateNetwork", b"{").unwrap_err().to_string();
        assert!(e.contains("malformed NetworkDriver.CreateNetwork request"), "{e}");
        assert_eq!(opt_ip("10.0.0.2/24").unwrap(), Some("10.0.0.2".parse().unwrap()));
        assert!(opt_ip("10.0.0.300/24").unwrap_err().to_string().contains("10.0.0.300/24"));
    }
}

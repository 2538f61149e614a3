//! Cluster mode: one address plan for several hosts, kept in etcd v3 (never a consensus of
//! our own). Without `--cluster` nothing here runs and the embedded store alone decides.
//!
//! Keys under the prefix `P` (default `/dataplane`):
//! - `P/networks/NAME`: a cluster network as made (JSON, written by the control plane).
//! - `P/claims/NAME/gen`: rewritten by every claim; `network rm` deletes the network only
//!   if it is unchanged since it found no other host's claims.
//! - `P/claims/NAME/ip/ADDR` and `P/claims/NAME/mac/MAC`: who holds it ([`Holder`]).
//! - `P/hosts/HOST/INSTANCE/ENDPOINT-ID/NAME`: what one attachment holds ([`Held`]), so a
//!   host finds and releases its own claims without reading everyone's.
//! - `P/agents/HOST`: present while a long-lived process of HOST keeps its lease.
//!
//! A claim is one transaction: every key absent and the network present, then all of them
//! written. Claims happen inside the local store's write transaction, so a host's sweep
//! (which also holds that lock) never sees a claim whose row is still being written: a
//! claim without a row is one whose command died, and is released.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    net::IpAddr,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};

use crate::mac::Mac;

/// How long one cluster operation may take before the command fails (the whole command
/// stays within ~5 s when etcd is unreachable or has lost quorum).
pub const OP_TIMEOUT: Duration = Duration::from_millis(4000);

/// Round trips and failures, for `dataplane metrics` and `cluster status`.
pub static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);
pub static FAILURES: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid --cluster {input:?}: {why}; expected etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")]
    BadUrl { input: String, why: String },
    #[error("invalid --cluster-parent {0:?}: expected NETWORK=INTERFACE, e.g. lan=eth1")]
    BadParent(String),
    #[error("invalid --cluster-host {0:?}: use 1-64 characters [a-zA-Z0-9_.-]")]
    BadHost(String),
    #[error("no --cluster-host given and /etc/machine-id is unreadable ({0}): give --cluster-host NAME")]
    NoHost(String),
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster {endpoints} unavailable ({detail}): etcd is unreachable, refuses this client, or has no quorum; nothing was changed by this step")]
    Unavailable { endpoints: String, detail: String },
    #[error("cluster key {key} holds data this version cannot read: {detail}")]
    Corrupt { key: String, detail: String },
}

pub type Result<T> = std::result::Result<T, ClusterError>;

/// Where the cluster is and who this host is in it.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `HOST:PORT` of each member.
    pub endpoints: Vec<String>,
    /// Key prefix, without a trailing slash.
    pub prefix: String,
    pub host: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// This host's parent interface for cluster networks whose parent is named otherwise
    /// here (network name -> interface), from `--cluster-parent NETWORK=IFACE`.
    pub parents: BTreeMap<String, String>,
}

fn check_host(h: &str) -> Result<()> {
    let ok = !h.is_empty() && h.len() <= 64 && h.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ClusterError::BadHost(h.to_string()))
    }
}

impl ClusterConfig {
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`; `host` None: `/etc/machine-id`.
    pub fn parse(
        url: &str,
        host: Option<&str>,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<ClusterConfig> {
        let bad = |why: &str| ClusterError::BadUrl { input: url.to_string(), why: why.to_string() };
        let rest = url.strip_prefix("etcd://").ok_or_else(|| bad("it must start with etcd://"))?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) => (h, p.trim_end_matches('/')),
            None => (rest, ""),
        };
        let prefix = if prefix.is_empty() { "dataplane" } else { prefix };
        if prefix.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
            return Err(bad("the prefix has an empty, . or .. part"));
        }
        let mut endpoints = Vec::new();
        for hp in hosts.split(',') {
            let (h, p) = hp.rsplit_once(':').ok_or_else(|| bad(&format!("member {hp:?} has no :PORT")))?;
            if h.is_empty() || h.contains(['/', '@', ' ']) {
                return Err(bad(&format!("member {hp:?} has no valid host")));
            }
            match p.parse::<u16>() {
                Ok(n) if n > 0 => {}
                _ => return Err(bad(&format!("member {hp:?} has an invalid port {p:?}"))),
            }
            endpoints.push(hp.to_string());
        }
        if cert.is_some() != key.is_some() {
            return Err(bad("--cluster-cert and --cluster-key go together"));
        }
        let host = match host {
            Some(h) => h.to_string(),
            None => std::fs::read_to_string("/etc/machine-id")
                .map(|s| s.trim().to_string())
                .map_err(|e| ClusterError::NoHost(e.to_string()))?,
        };
        check_host(&host)?;
        Ok(ClusterConfig { endpoints, prefix: format!("/{prefix}"), host, ca, cert, key, parents: BTreeMap::new() })
    }

    /// `NETWORK=IFACE` pairs (`--cluster-parent`): this host's parent for those networks.
    pub fn with_parents(mut self, pairs: &[String]) -> Result<ClusterConfig> {
        for p in pairs {
            let bad = || ClusterError::BadParent(p.clone());
            let (n, i) = p.split_once('=').ok_or_else(bad)?;
            let ok = |s: &str| !s.is_empty() && s.len() <= 64 && !s.contains(['/', ' ', '=']);
            if !ok(n) || !ok(i) || i.len() > 15 {
                return Err(bad());
            }
            self.parents.insert(n.to_string(), i.to_string());
        }
        Ok(self)
    }

    pub fn url(&self) -> String {
        format!("etcd://{}{}", self.endpoints.join(","), self.prefix)
    }

    fn tls(&self) -> bool {
        self.ca.is_some() || self.cert.is_some()
    }
}

/// Who holds an address or MAC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    /// The store instance on that host (two state dirs on one host never free each other's).
    pub instance: String,
    pub endpoint_id: String,
    pub endpoint: String,
}

/// What one attachment holds on one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub network: String,
    pub ips: Vec<IpAddr>,
    pub mac: Mac,
    pub holder: Holder,
}

/// Everything claimed on one network.
#[derive(Clone, Debug, Default)]
pub struct Taken {
    pub ips: BTreeMap<IpAddr, Holder>,
    pub macs: BTreeMap<Mac, Holder>,
}

/// The outcome of [`Cluster::claim`].
#[derive(Debug)]
pub enum Claimed {
    Done,
    /// Another claim won some of the keys (the caller picks again or reports it).
    Lost,
    /// The network is not (or no longer) in the cluster.
    NoNetwork,
}

/// The outcome of [`Cluster::remove_network`].
#[derive(Debug)]
pub enum Removed {
    Done,
    Absent,
    /// Other hosts (or other state dirs here) still hold claims on it.
    InUse(Vec<String>),
}

/// A member as `cluster status` shows it.
#[derive(Debug, Serialize)]
pub struct Member {
    pub name: String,
    pub endpoint: String,
    pub healthy: bool,
    pub detail: String,
}

/// A connection to the cluster (made on first use) and this host's identity in it.
pub struct Cluster {
    pub cfg: ClusterConfig,
    instance: String,
    rt: tokio::runtime::Runtime,
    /// The member last answered through (index into the endpoints) and its client.
    client: std::sync::Mutex<Option<(usize, Client)>>,
}

fn corrupt(key: &[u8], e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), detail: e.to_string() }
}

impl Cluster {
    /// `instance`: the local store's instance id.
    pub fn new(cfg: ClusterConfig, instance: String) -> Result<Cluster> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|source| {
            ClusterError::File { what: "starting the cluster client's runtime", path: String::new(), source }
        })?;
        Ok(Cluster { cfg, instance, rt, client: std::sync::Mutex::new(None) })
    }

    pub fn host(&self) -> &str {
        &self.cfg.host
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn holder(&self, endpoint_id: &str, endpoint: &str) -> Holder {
        Holder {
            host: self.cfg.host.clone(),
            instance: self.instance.clone(),
            endpoint_id: endpoint_id.to_string(),
            endpoint: endpoint.to_string(),
        }
    }

    fn unavailable(&self, detail: impl std::fmt::Display) -> ClusterError {
        FAILURES.fetch_add(1, Ordering::Relaxed);
        ClusterError::Unavailable { endpoints: self.cfg.url(), detail: detail.to_string() }
    }

    fn options(&self) -> Result<ConnectOptions> {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(1500))
            .with_timeout(OP_TIMEOUT)
            .with_require_leader(true);
        if self.cfg.tls() {
            let read = |what: &'static str, p: &PathBuf| {
                std::fs::read(p).map_err(|source| ClusterError::File { what, path: p.display().to_string(), source })
            };
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.cfg.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read("reading the cluster CA", ca)?));
            }
            if let (Some(c), Some(k)) = (&self.cfg.cert, &self.cfg.key) {
                tls = tls.identity(Identity::from_pem(
                    read("reading the cluster client certificate", c)?,
                    read("reading the cluster client key", k)?,
                ));
            }
            o = o.with_tls(tls);
        }
        Ok(o)
    }

    /// Run one operation against the cluster within [`OP_TIMEOUT`]: on the member that
    /// answered last, else on each of the others in turn (a member that is down, or has
    /// no leader, answers at once with an error; the next one is asked).
    fn op<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + OP_TIMEOUT;
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        let scheme = if self.cfg.tls() { "https" } else { "http" };
        let n = self.cfg.endpoints.len();
        let first = guard.as_ref().map_or(std::process::id() as usize % n, |(i, _)| *i);
        let mut errors = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Leave the members not yet asked a share of the time.
            let budget = (left / (n - k) as u32).max(left.min(Duration::from_millis(1000)));
            let cached = guard.as_ref().filter(|(j, _)| *j == i).map(|(_, c)| c.clone());
            let opts = if cached.is_none() { Some(self.options()?) } else { None };
            let url = format!("{scheme}://{}", self.cfg.endpoints[i]);
            let r = crate::sys::without_sigpipe(|| {
                self.rt.block_on(async {
                    tokio::time::timeout(budget, async {
                        let c = match cached {
                            Some(c) => c,
                            None => {
                                let c = Client::connect([url], opts).await?;
                                crate::timing::mark("cluster-connected");
                                c
                            }
                        };
                        let out = f(c.clone()).await?;
                        crate::timing::mark("cluster-op");
                        Ok::<_, etcd_client::Error>((c, out))
                    })
                    .await
                })
            });
            match r {
                Ok(Ok((c, out))) => {
                    *guard = Some((i, c));
                    return Ok(out);
                }
                Ok(Err(e)) => errors.push(format!("{}: {}", self.cfg.endpoints[i], describe(&e))),
                Err(_) => errors.push(format!("{}: no answer within {} ms", self.cfg.endpoints[i], budget.as_millis())),
            }
            *guard = None;
        }
        Err(self.unavailable(errors.join("; ")))
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.cfg.prefix)
    }

    fn net_key(&self, network: &str) -> String {
        self.key(&format!("networks/{network}"))
    }

    fn claims_prefix(&self, network: &str) -> String {
        self.key(&format!("claims/{network}/"))
    }

    fn ip_key(&self, network: &str, ip: IpAddr) -> String {
        format!("{}ip/{ip}", self.claims_prefix(network))
    }

    fn mac_key(&self, network: &str, mac: Mac) -> String {
        format!("{}mac/{mac}", self.claims_prefix(network))
    }

    fn gen_key(&self, network: &str) -> String {
        format!("{}gen", self.claims_prefix(network))
    }

    fn my_prefix(&self) -> String {
        self.key(&format!("hosts/{}/{}/", self.cfg.host, self.instance))
    }

    fn held_key(&self, endpoint_id: &str, network: &str) -> String {
        format!("{}{endpoint_id}/{network}", self.my_prefix())
    }

    /// The cluster's networks: (name, document, create revision) in name order.
    pub fn networks(&self) -> Result<Vec<(String, String, i64)>> {
        let prefix = self.key("networks/");
        let (prefix,) = (&prefix,);
        let kvs = self.op(|mut c| async move {
            Ok(c.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await?.take_kvs())
        })?;
        let mut out = Vec::new();
        for kv in kvs {
            let name = String::from_utf8_lossy(kv.key()).rsplit('/').next().unwrap_or_default().to_string();
            let doc = String::from_utf8(kv.value().to_vec()).map_err(|e| corrupt(kv.key(), e))?;
            out.push((name, doc, kv.create_revision()));
        }
        Ok(out)
    }

    /// Network `name`'s document and create revision (which claims compare, so a
    /// network removed and made again is not taken for the old one).
    pub fn network(&self, name: &str) -> Result<Option<(String, i64)>> {
        let key = self.net_key(name);
        let (key,) = (&key,);
        let kvs = self.op(|mut c| async move { Ok(c.get(key.as_str(), None).await?.take_kvs()) })?;
        match kvs.first() {
            Some(kv) => Ok(Some((
                String::from_utf8(kv.value().to_vec()).map_err(|e| corrupt(kv.key(), e))?,
                kv.create_revision(),
            ))),
            None => Ok(None),
        }
    }

    /// Create network `name` with document `doc` unless it exists: its create revision,
    /// or Err(the existing document).
    pub fn create_network(&self, name: &str, doc: &str) -> Result<std::result::Result<i64, String>> {
        let key = self.net_key(name);
        let (k2, d2) = (key.clone(), doc.to_string());
        let (k2, d2) = (&k2, &d2);
        let resp = self.op(|mut c| async move {
            let txn = Txn::new()
                .when([Compare::create_revision(k2.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(k2.as_str(), d2.as_str(), None)])
                .or_else([TxnOp::get(k2.as_str(), None)]);
            c.txn(txn).await
        })?;
        if resp.succeeded() {
            return Ok(Ok(resp.header().map_or(0, |h| h.revision())));
        }
        let existing = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => {
                    g.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                }
                _ => None,
            })
            .unwrap_or_default();
        Ok(Err(existing))
    }

    /// Remove network `name` if its document still carries `id` (a create that failed
    /// after recording it; nothing can have claimed on it yet).
    pub fn delete_network(&self, name: &str, id: &str) -> Result<()> {
        let key = self.net_key(name);
        let prefix = self.claims_prefix(name);
        let id = format!("\"id\":\"{id}\"");
        let (key, prefix, id) = (&key, &prefix, &id);
        self.op(|mut c| async move {
            let kvs = c.get(key.as_str(), None).await?.take_kvs();
            let Some(kv) = kvs.first().filter(|kv| String::from_utf8_lossy(kv.value()).contains(id.as_str())) else {
                return Ok(());
            };
            let txn =
                Txn::new().when([Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision())]).and_then([
                    TxnOp::delete(key.as_str(), None),
                    TxnOp::delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix())),
                ]);
            c.txn(txn).await?;
            Ok(())
        })
    }

    /// Remove network `name` and every claim on it,
    /// unless a host other than this one (or another state dir here) holds a claim.
    pub fn remove_network(&self, name: &str) -> Result<Removed> {
        for _ in 0..20 {
            let (net_key, prefix, gen) = (self.net_key(name), self.claims_prefix(name), self.gen_key(name));
            let (nk, pf) = (net_key.clone(), prefix.clone());
            let (nk, pf) = (&nk, &pf);
            let (net, claims) = self.op(|mut c| async move {
                let n = c.get(nk.as_str(), None).await?.take_kvs();
                let cl = c.get(pf.as_str(), Some(GetOptions::new().with_prefix())).await?.take_kvs();
                Ok((n, cl))
            })?;
            let Some(net) = net.first() else { return Ok(Removed::Absent) };
            let mut gen_rev = 0;
            let mut others = BTreeSet::new();
            for kv in &claims {
                if kv.key() == gen.as_bytes() {
                    gen_rev = kv.mod_revision();
                    continue;
                }
                let h: Holder = serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))?;
                if h.host != self.cfg.host || h.instance != self.instance {
                    others.insert(if h.host == self.cfg.host {
                        format!("{} (another state dir)", h.host)
                    } else {
                        h.host.clone()
                    });
                }
            }
            if !others.is_empty() {
                return Ok(Removed::InUse(others.into_iter().collect()));
            }
            let net_rev = net.mod_revision();
            let (gen, net_key, prefix) = (&gen, &net_key, &prefix);
            let resp = self.op(|mut c| async move {
                let txn = Txn::new()
                    .when([
                        Compare::mod_revision(gen.as_str(), CompareOp::Equal, gen_rev),
                        Compare::mod_revision(net_key.as_str(), CompareOp::Equal, net_rev),
                    ])
                    .and_then([
                        TxnOp::delete(net_key.as_str(), None),
                        TxnOp::delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix())),
                    ]);
                c.txn(txn).await
            })?;
            if resp.succeeded() {
                return Ok(Removed::Done);
            }
        }
        Err(self.unavailable(format!("network {name} kept changing while being removed; retry")))
    }

    /// Every address and MAC claimed on `network`.
    /// `fresh`: a linearizable read (after a lost claim, so that a claim of ours that
    /// committed although its answer was lost is seen); else one member's view.
    pub fn taken(&self, network: &str, fresh: bool) -> Result<Taken> {
        let prefix = self.claims_prefix(network);
        let p2 = prefix.clone();
        let (p2,) = (&p2,);
        // Served by the member alone (no quorum round): a stale answer only makes a claim
        // lose, and the claim's transaction is the judge.
        let kvs = self.op(|mut c| async move {
            let o = GetOptions::new().with_prefix();
            Ok(c.get(p2.as_str(), Some(if fresh { o } else { o.with_serializable() })).await?.take_kvs())
        })?;
        let mut t = Taken::default();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let rest = &key[prefix.len()..];
            if let Some(ip) = rest.strip_prefix("ip/") {
                let ip: IpAddr = ip.parse().map_err(|e| corrupt(kv.key(), e))?;
                t.ips.insert(ip, serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))?);
            } else if let Some(m) = rest.strip_prefix("mac/") {
                let m: Mac = m.parse().map_err(|e| corrupt(kv.key(), e))?;
                t.macs.insert(m, serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))?);
            }
        }
        Ok(t)
    }

    /// Claim `ips` and `mac` on `network` (made at create revision `rev`; 0: any) for
    /// `holder`, all or nothing.
    pub fn claim(&self, network: &str, rev: i64, ips: &[IpAddr], mac: Mac, holder: &Holder) -> Result<Claimed> {
        let value = serde_json::to_string(holder).expect("serialisable");
        let held = Held { network: network.to_string(), ips: ips.to_vec(), mac, holder: holder.clone() };
        let held = serde_json::to_string(&held).expect("serialisable");
        let net_key = self.net_key(network);
        let mut keys: Vec<String> = ips.iter().map(|ip| self.ip_key(network, *ip)).collect();
        keys.push(self.mac_key(network, mac));
        let held_key = self.held_key(&holder.endpoint_id, network);
        let gen = self.gen_key(network);
        let nk = net_key.clone();
        let (nk, keys, value, held_key, held, gen) = (&nk, &keys, &value, &held_key, &held, &gen);
        let resp = self.op(|mut c| async move {
            let mut when = vec![if rev > 0 {
                Compare::create_revision(nk.as_str(), CompareOp::Equal, rev)
            } else {
                Compare::create_revision(nk.as_str(), CompareOp::NotEqual, 0)
            }];
            when.extend(keys.iter().map(|k| Compare::create_revision(k.as_str(), CompareOp::Equal, 0)));
            let mut then: Vec<TxnOp> = keys.iter().map(|k| TxnOp::put(k.as_str(), value.as_str(), None)).collect();
            then.push(TxnOp::put(held_key.as_str(), held.as_str(), None));
            then.push(TxnOp::put(gen.as_str(), "", None));
            let txn = Txn::new().when(when).and_then(then).or_else([TxnOp::get(nk.as_str(), None)]);
            c.txn(txn).await
        })?;
        if resp.succeeded() {
            return Ok(Claimed::Done);
        }
        // Lost to another claim, unless the network is gone or was made again.
        let present = resp.op_responses().into_iter().any(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => {
                g.kvs().first().is_some_and(|kv| rev <= 0 || kv.create_revision() == rev)
            }
            _ => false,
        });
        Ok(if present { Claimed::Lost } else { Claimed::NoNetwork })
    }

    /// This host's (and state dir's) attachments with claims: (endpoint id, network).
    pub fn mine(&self) -> Result<Vec<(String, String, Held)>> {
        let prefix = self.my_prefix();
        let p2 = prefix.clone();
        let (p2,) = (&p2,);
        let kvs =
            self.op(
                |mut c| async move { Ok(c.get(p2.as_str(), Some(GetOptions::new().with_prefix())).await?.take_kvs()) },
            )?;
        let mut out = Vec::new();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some((id, net)) = key[prefix.len()..].split_once('/') else { continue };
            let held: Held = serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))?;
            out.push((id.to_string(), net.to_string(), held));
        }
        Ok(out)
    }

    /// Release what `held` holds (only the keys still naming its holder) and its record.
    pub fn release(&self, held: &Held) -> Result<()> {
        self.release_record(held, self.held_key(&held.holder.endpoint_id, &held.network).as_bytes())
    }

    /// [`Cluster::release`] of the record at `record` (this host's or, for forget, another's).
    fn release_record(&self, held: &Held, record: &[u8]) -> Result<()> {
        let value = serde_json::to_string(&held.holder).expect("serialisable");
        let mut keys: Vec<String> = held.ips.iter().map(|ip| self.ip_key(&held.network, *ip)).collect();
        keys.push(self.mac_key(&held.network, held.mac));
        let (keys, value) = (&keys, &value);
        self.op(|mut c| async move {
            for k in keys {
                let txn = Txn::new()
                    .when([Compare::value(k.as_str(), CompareOp::Equal, value.as_str())])
                    .and_then([TxnOp::delete(k.as_str(), None)]);
                c.txn(txn).await?;
            }
            c.delete(record.to_vec(), None).await?;
            Ok(())
        })
    }

    /// `cluster forget HOST`: release every claim of `host` (all its state dirs).
    /// Refused while that host's agent keeps its lease.
    pub fn forget(&self, host: &str) -> Result<std::result::Result<usize, String>> {
        check_host(host)?;
        let agent = self.key(&format!("agents/{host}"));
        let prefix = self.key(&format!("hosts/{host}/"));
        let p2 = prefix.clone();
        let (agent, p2) = (&agent, &p2);
        let (alive, kvs) = self.op(|mut c| async move {
            let a = !c.get(agent.as_str(), None).await?.kvs().is_empty();
            let kvs = c.get(p2.as_str(), Some(GetOptions::new().with_prefix())).await?.take_kvs();
            Ok((a, kvs))
        })?;
        if alive {
            return Ok(Err(format!("host {host} is alive (its agent holds a lease); stop it first")));
        }
        let mut n = 0;
        for kv in kvs {
            let held: Held = serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))?;
            self.release_record(&held, kv.key())?;
            n += 1;
        }
        Ok(Ok(n))
    }

    /// The hosts with claims, and whether each has a live agent.
    pub fn hosts(&self) -> Result<BTreeMap<String, bool>> {
        let (hp, ap) = (self.key("hosts/"), self.key("agents/"));
        let (h2, a2) = (hp.clone(), ap.clone());
        let (h2, a2) = (&h2, &a2);
        let (hosts, agents) = self.op(|mut c| async move {
            let h = c.get(h2.as_str(), Some(GetOptions::new().with_prefix().with_keys_only())).await?.take_kvs();
            let a = c.get(a2.as_str(), Some(GetOptions::new().with_prefix().with_keys_only())).await?.take_kvs();
            Ok((h, a))
        })?;
        let mut out = BTreeMap::new();
        for kv in hosts {
            let k = String::from_utf8_lossy(kv.key()).into_owned();
            if let Some(h) = k[hp.len()..].split('/').next() {
                out.entry(h.to_string()).or_insert(false);
            }
        }
        for kv in agents {
            let k = String::from_utf8_lossy(kv.key()).into_owned();
            out.insert(k[ap.len()..].to_string(), true);
        }
        Ok(out)
    }

    /// Each configured member, asked on its own (a member that does not answer is shown
    /// as such; the others still are).
    pub fn members(&self) -> Vec<Member> {
        let scheme = if self.cfg.tls() { "https" } else { "http" };
        let mut out = Vec::new();
        for ep in &self.cfg.endpoints {
            let opts = match self.options() {
                Ok(o) => o,
                Err(e) => {
                    out.push(Member {
                        name: String::new(),
                        endpoint: ep.clone(),
                        healthy: false,
                        detail: e.to_string(),
                    });
                    continue;
                }
            };
            let url = format!("{scheme}://{ep}");
            let r = crate::sys::without_sigpipe(|| {
                self.rt.block_on(async {
                    tokio::time::timeout(Duration::from_millis(2500), async {
                        let mut c = Client::connect([url], Some(opts)).await?;
                        let s = c.status().await?;
                        let id = s.header().map(|h| h.member_id()).unwrap_or(0);
                        let ms = c.member_list().await?;
                        let name = ms.members().iter().find(|m| m.id() == id).map(|m| m.name().to_string());
                        Ok::<_, etcd_client::Error>((name.unwrap_or_default(), s.leader(), s.version().to_string()))
                    })
                    .await
                })
            });
            out.push(match r {
                Ok(Ok((name, leader, version))) => Member {
                    name,
                    endpoint: ep.clone(),
                    healthy: leader != 0,
                    detail: if leader != 0 { format!("etcd {version}") } else { format!("etcd {version}, no leader") },
                },
                Ok(Err(e)) => {
                    Member { name: String::new(), endpoint: ep.clone(), healthy: false, detail: describe(&e) }
                }
                Err(_) => {
                    Member { name: String::new(), endpoint: ep.clone(), healthy: false, detail: "no answer".into() }
                }
            });
        }
        out
    }

    /// Keep `P/agents/HOST` alive with a lease of `ttl` seconds until the process ends
    /// (the caller's thread runs the keep-alive loop: it never returns unless it fails).
    pub fn agent(&self, ttl: i64) -> Result<()> {
        let key = self.key(&format!("agents/{}", self.cfg.host));
        let (lease, mut keeper, mut stream) = {
            let k2 = key.clone();
            let host = self.cfg.host.clone();
            let (k2, host) = (&k2, &host);
            self.op(|mut c| async move {
                let l = c.lease_grant(ttl, None).await?;
                let txn = Txn::new()
                    .when([Compare::create_revision(k2.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(k2.as_str(), host.as_str(), Some(PutOptions::new().with_lease(l.id())))]);
                let ok = c.txn(txn).await?.succeeded();
                if !ok {
                    c.lease_revoke(l.id()).await?;
                    return Err(etcd_client::Error::InvalidArgs(format!(
                        "{k2} exists: another agent for this host is running"
                    )));
                }
                let (k, s) = c.lease_keep_alive(l.id()).await?;
                Ok((l.id(), k, s))
            })?
        };
        let _ = lease;
        loop {
            let r = crate::sys::without_sigpipe(|| {
                self.rt.block_on(async {
                    tokio::time::timeout(OP_TIMEOUT, async {
                        keeper.keep_alive().await?;
                        stream.message().await
                    })
                    .await
                })
            });
            match r {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => return Err(self.unavailable("the lease's keep-alive stream ended")),
                Ok(Err(e)) => return Err(self.unavailable(describe(&e))),
                Err(_) => return Err(self.unavailable("keep-alive unanswered")),
            }
            std::thread::sleep(Duration::from_secs((ttl / 3).max(1) as u64));
        }
    }
}

/// An etcd client error in a few words (gRPC status messages say the most).
fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{}: {}", s.code(), s.message()),
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(x) = src {
                s.push_str(": ");
                s.push_str(&x.to_string());
                src = x.source();
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<ClusterConfig> {
        ClusterConfig::parse(url, Some("h1"), None, None, None)
    }

    #[test]
    fn cluster_urls_parse_and_bad_ones_name_the_value() {
        let c = parse("etcd://10.0.0.1:2379,10.0.0.2:2379/lab/a").unwrap();
        assert_eq!(c.endpoints, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(c.prefix, "/lab/a");
        assert_eq!(parse("etcd://e:1").unwrap().prefix, "/dataplane");
        for (bad, why) in [
            ("http://e:1", "must start with etcd://"),
            ("etcd://e", "has no :PORT"),
            ("etcd://e:x", "invalid port \"x\""),
            ("etcd://e:0", "invalid port \"0\""),
            ("etcd://:1", "no valid host"),
            ("etcd://e:1/a//b", "empty, . or .."),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")) && e.contains(why), "{bad}: {e}");
        }
        let e = ClusterConfig::parse("etcd://e:1", Some("a b"), None, None, None).unwrap_err();
        assert_eq!(e.to_string(), "invalid --cluster-host \"a b\": use 1-64 characters [a-zA-Z0-9_.-]");
        let e = ClusterConfig::parse("etcd://e:1", Some("h"), None, Some("c".into()), None).unwrap_err();
        assert!(e.to_string().contains("--cluster-cert and --cluster-key go together"), "{e}");
    }
}

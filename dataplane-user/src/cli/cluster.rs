//! `--cluster` and `dataplane cluster status | forget | agent`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use dataplane_user::{cluster::ClusterConfig, control::Engine};

/// Where the shared address plan lives (cluster mode). Without `--cluster` this host
/// plans alone, as it always has.
#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Cluster mode: etcd://HOST:PORT[,HOST:PORT...][/PREFIX]. Networks and every address
    /// and MAC are then shared with the other hosts of that etcd cluster.
    #[arg(long, global = true, env = "DATAPLANE_CLUSTER", value_name = "URL")]
    pub cluster: Option<String>,
    /// This host's name in the cluster (default: /etc/machine-id).
    #[arg(long, global = true, env = "DATAPLANE_CLUSTER_HOST", value_name = "NAME")]
    pub cluster_host: Option<String>,
    /// CA certificate (PEM) that signed the etcd members' certificates: connect with TLS.
    #[arg(long, global = true, env = "DATAPLANE_CLUSTER_CA", value_name = "FILE")]
    pub cluster_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd members that require one (with --cluster-key).
    #[arg(long, global = true, env = "DATAPLANE_CLUSTER_CERT", value_name = "FILE")]
    pub cluster_cert: Option<PathBuf>,
    /// This host's parent interface for a cluster network whose parent has another name
    /// here: NETWORK=IFACE (repeat, or comma-separated), used when this host first
    /// realises the network.
    #[arg(long, global = true, env = "DATAPLANE_CLUSTER_PARENT", value_name = "NETWORK=IFACE", value_delimiter = ',')]
    pub cluster_parent: Vec<String>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "DATAPLANE_CLUSTER_KEY", value_name = "FILE")]
    pub cluster_key: Option<PathBuf>,
}

impl ClusterArgs {
    /// The configuration, if cluster mode was asked for (a bad value is an error naming it).
    pub fn config(&self) -> anyhow::Result<Option<ClusterConfig>> {
        let Some(url) = &self.cluster else {
            for (flag, given) in [
                ("--cluster-ca", self.cluster_ca.is_some()),
                ("--cluster-cert", self.cluster_cert.is_some()),
                ("--cluster-key", self.cluster_key.is_some()),
            ] {
                if given {
                    anyhow::bail!("{flag} given without --cluster URL");
                }
            }
            return Ok(None);
        };
        Ok(Some(
            ClusterConfig::parse(
                url,
                self.cluster_host.as_deref(),
                self.cluster_ca.clone(),
                self.cluster_cert.clone(),
                self.cluster_key.clone(),
            )?
            .with_parents(&self.cluster_parent)?,
        ))
    }
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// The etcd members and their health, the hosts known, this host's claims.
    Status {
        /// table or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Release every address and MAC of HOST (a host gone for good). Refused while its
    /// agent holds a lease.
    Forget { host: String },
    /// Keep this host's presence (a lease) in the cluster while it runs; `cluster forget`
    /// refuses a host whose agent is alive.
    Agent {
        /// The lease's time to live in seconds.
        #[arg(long, default_value_t = 15)]
        ttl: i64,
    },
}

pub fn run(engine: &mut Engine, cmd: ClusterCommand) -> anyhow::Result<i32> {
    let c = engine.cluster().context("this command needs --cluster URL (or DATAPLANE_CLUSTER)")?;
    match cmd {
        ClusterCommand::Status { format } => {
            let members = c.members();
            let hosts = c.hosts()?;
            let host = c.host().to_string();
            let url = c.cfg.url();
            let mine = c.mine()?;
            if format == "json" {
                let v = serde_json::json!({
                    "cluster": url,
                    "host": host,
                    "members": members,
                    "hosts": hosts.iter().map(|(h, a)| serde_json::json!({"host": h, "agent": a})).collect::<Vec<_>>(),
                    "claims": mine.iter().map(|(_, _, h)| serde_json::json!({
                        "network": h.network, "endpoint": h.holder.endpoint, "ips": h.ips, "mac": h.mac
                    })).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if format == "table" {
                println!("CLUSTER  {url}\nHOST     {host}\n");
                println!("{:<12} {:<24} {:<8} DETAIL", "MEMBER", "ENDPOINT", "HEALTH");
                for m in &members {
                    let health = if m.healthy { "healthy" } else { "down" };
                    println!("{:<12} {:<24} {:<8} {}", m.name, m.endpoint, health, m.detail);
                }
                println!("\n{:<36} AGENT", "HOST");
                for (h, a) in &hosts {
                    println!("{:<36} {}", h, if *a { "alive" } else { "-" });
                }
                println!("\n{:<20} {:<20} {:<18} ADDRESSES", "NETWORK", "ENDPOINT", "MAC");
                for (_, _, h) in &mine {
                    let ips: Vec<String> = h.ips.iter().map(|i| i.to_string()).collect();
                    println!("{:<20} {:<20} {:<18} {}", h.network, h.holder.endpoint, h.mac, ips.join(" "));
                }
            } else {
                anyhow::bail!("invalid --format {format:?}: use table or json");
            }
            // Unhealthy members are shown, and the exit code says so.
            Ok(if members.iter().all(|m| m.healthy) { 0 } else { 1 })
        }
        ClusterCommand::Forget { host } => {
            if host == c.host() {
                anyhow::bail!(
                    "host {host} is this host: remove its endpoints (dataplane rm) instead; forget is for hosts gone for good"
                );
            }
            match c.forget(&host)? {
                Ok(n) => {
                    println!("released {n} attachment(s) of host {host}");
                    Ok(0)
                }
                Err(why) => anyhow::bail!("{why}"),
            }
        }
        ClusterCommand::Agent { ttl } => {
            if !(3..=3600).contains(&ttl) {
                anyhow::bail!("invalid --ttl {ttl}: use 3 to 3600 seconds");
            }
            eprintln!("dataplane: cluster agent of host {} keeps its lease ({ttl} s)", c.host());
            c.agent(ttl)?;
            Ok(0)
        }
    }
}

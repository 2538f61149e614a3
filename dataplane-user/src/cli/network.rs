//! `dataplane network ...`

use anyhow::Result;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;

use dataplane_user::{
    control::{Engine, NetworkCreate},
    store::{Attachment, Endpoint, Network, Owner},
};
use serde_json::{json, Value};

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network (prints its id).
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Print only the network IDs.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// table, json (one object per line, as docker prints), or a template such as
        /// '{{.Name}}' or '{{json .}}' over the JSON keys.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show networks as a JSON array, in Docker's shape.
    Inspect {
        #[arg(required = true, add = clap_complete::ArgValueCandidates::new(super::complete::networks))]
        names: Vec<String>,
    },
    /// Remove networks (they must have no endpoints).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true, add = clap_complete::ArgValueCandidates::new(super::complete::networks))]
        names: Vec<String>,
    },
    /// Connect an endpoint to a network (adds ethN in its namespace).
    Connect {
        /// The endpoint's IPv4 address on this network (default: the next free one).
        #[arg(long)]
        ip: Option<String>,
        /// The endpoint's IPv6 address on this network (default: the next free one).
        #[arg(long)]
        ip6: Option<String>,
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::networks))]
        network: String,
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::endpoints))]
        endpoint: String,
    },
    /// Disconnect an endpoint from a network.
    Disconnect {
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::networks))]
        network: String,
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::endpoints))]
        endpoint: String,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Driver: macvlan (host and none always exist).
    #[arg(short = 'd', long, default_value = "macvlan")]
    pub driver: String,
    /// Subnet in CIDR form (repeat for IPv4 + IPv6).
    #[arg(long)]
    pub subnet: Vec<String>,
    /// Gateway of the matching --subnet (default: its first address).
    #[arg(long)]
    pub gateway: Vec<String>,
    /// Allocate dynamic addresses only from this sub-range of the matching --subnet.
    #[arg(long = "ip-range")]
    pub ip_range: Vec<String>,
    /// NAME=IP: an address in use on the wire that must never be handed out.
    #[arg(long = "aux-address")]
    pub aux_address: Vec<String>,
    /// Driver options, KEY=VALUE (repeat -o for several):
    /// parent=IFACE (IFACE.VID: an 802.1Q trunk, dataplane makes the VLAN device;
    /// IFACE.OUTER.VID: QinQ);
    /// macvlan_mode=bridge|private|vepa|passthru (default bridge);
    /// mtu=N (68-65535, at most the parent's);
    /// endpoint_hooks=tcx|cls_bpf (how anti-spoofing is attached; default tcx);
    /// host_access=true (the host reaches the endpoints through an interface of its own);
    /// ip_probe_ms=N (wait N ms, 0-1000, for an answer to an ARP probe before handing out an
    /// address; default 20, 0 = no probe).
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
    pub opt: Vec<String>,
    /// No default route for endpoints.
    #[arg(long)]
    pub internal: bool,
    /// Enable IPv6 (needs an IPv6 --subnet).
    #[arg(long)]
    pub ipv6: bool,
    pub name: String,
}

pub fn run(engine: &mut Engine, cmd: NetworkCommand) -> Result<i32> {
    match cmd {
        NetworkCommand::Create(a) => {
            super::repair(engine);
            let n = engine.network_create(NetworkCreate {
                name: a.name,
                driver: a.driver,
                subnets: a.subnet,
                gateways: a.gateway,
                ip_ranges: a.ip_range,
                aux: a.aux_address,
                opts: a.opt,
                internal: a.internal,
                ipv6: a.ipv6,
                ..Default::default()
            })?;
            println!("{}", n.id);
        }
        NetworkCommand::Ls { quiet, format } => {
            let nets = engine.networks()?;
            let out = super::format::Output::parse(&format)?;
            if quiet {
                for n in &nets {
                    println!("{}", &n.id[..12]);
                }
                return Ok(0);
            }
            match out {
                super::format::Output::JsonLines | super::format::Output::Template { .. } => {
                    let v: Vec<_> = nets
                        .iter()
                        .map(|n| serde_json::json!({"ID": &n.id[..12], "Name": n.name, "Driver": n.driver.name(), "Scope": if n.cluster { "global" } else { "local" }, "Parent": n.parent, "Subnets": n.pools.iter().map(|p| p.subnet.to_string()).collect::<Vec<_>>()}))
                        .collect();
                    out.print(&v);
                }
                super::format::Output::Table => {
                    println!(
                        "{:<14} {:<20} {:<10} {:<10} {:<12} SUBNETS",
                        "NETWORK ID", "NAME", "DRIVER", "SCOPE", "PARENT"
                    );
                    for n in nets {
                        let subnets: Vec<String> = n.pools.iter().map(|p| p.subnet.to_string()).collect();
                        println!(
                            "{:<14} {:<20} {:<10} {:<10} {:<12} {}",
                            &n.id[..12],
                            n.name,
                            n.driver.name(),
                            "local",
                            n.parent.unwrap_or_default(),
                            subnets.join(",")
                        );
                    }
                }
            }
        }
        NetworkCommand::Inspect { names } => {
            let mut out = Vec::new();
            let mut missing = Vec::new();
            for name in &names {
                match engine.network(name)? {
                    Some(n) => {
                        let members = engine.network_members(&n)?;
                        out.push(inspect_json(&n, &members));
                    }
                    None => missing.push(name.clone()),
                }
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            if !missing.is_empty() {
                anyhow::bail!("no such network: {}", missing.join(", "));
            }
        }
        NetworkCommand::Rm { names } => {
            super::repair(engine);
            return Ok(super::for_each_name(&names, |name| engine.network_rm(name)));
        }
        NetworkCommand::Connect { ip, ip6, network, endpoint } => {
            super::repair(engine);
            let a = engine.connect(&network, &endpoint, ip, ip6)?;
            let addrs: Vec<String> = [a.ipv4, a.ipv6].into_iter().flatten().map(|i| i.to_string()).collect();
            println!("connected {endpoint} to {network}: {} {} {}", a.ifname, a.mac, addrs.join(" "));
        }
        NetworkCommand::Disconnect { network, endpoint } => {
            super::repair(engine);
            engine.disconnect(&network, &endpoint)?;
            println!("disconnected {endpoint} from {network}");
        }
    }
    Ok(0)
}

/// Network `n` as `docker network inspect` shows one, with its `members` (see
/// `Engine::network_members`).
fn inspect_json(n: &Network, members: &[(Endpoint, Option<Attachment>)]) -> Value {
    let mut containers = serde_json::Map::new();
    for (e, att) in members {
        let prefix = |ip: Option<std::net::IpAddr>| -> String {
            ip.map(|ip| {
                let p = n
                    .pools
                    .iter()
                    .find(|p| p.subnet.contains(ip))
                    .map_or(if ip.is_ipv4() { 32 } else { 128 }, |p| p.subnet.prefix);
                format!("{ip}/{p}")
            })
            .unwrap_or_default()
        };
        containers.insert(
            e.id.clone(),
            json!({
                "Name": e.name,
                "EndpointID": e.id,
                "MacAddress": att.as_ref().map(|a| a.mac.to_string()).unwrap_or_default(),
                "IPv4Address": prefix(att.as_ref().and_then(|a| a.ipv4)),
                "IPv6Address": prefix(att.as_ref().and_then(|a| a.ipv6)),
            }),
        );
    }
    let config: Vec<Value> = n
        .pools
        .iter()
        .map(|p| {
            let mut c = serde_json::Map::new();
            c.insert("Subnet".into(), json!(p.subnet.to_string()));
            if let Some(r) = p.ip_range {
                c.insert("IPRange".into(), json!(r.to_string()));
            }
            if let Some(g) = p.gateway {
                c.insert("Gateway".into(), json!(g.to_string()));
            }
            if !p.aux.is_empty() {
                let aux: BTreeMap<&String, String> = p.aux.iter().map(|(k, v)| (k, v.to_string())).collect();
                c.insert("AuxiliaryAddresses".into(), json!(aux));
            }
            Value::Object(c)
        })
        .collect();
    json!({
        "Name": n.name,
        "Id": n.id,
        "Created": n.created,
        "Scope": if n.cluster { "global" } else { "local" },
        "Driver": n.driver.name(),
        "EnableIPv6": n.ipv6,
        "IPAM": { "Driver": "default", "Options": {}, "Config": config },
        "Internal": n.internal,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": { "Network": "" },
        "ConfigOnly": false,
        "Containers": containers,
        "Options": n.options,
        "Labels": owner_labels(&n.owner),
    })
}

/// Who owns a network, as `docker network inspect`-style labels.
fn owner_labels(o: &Owner) -> Value {
    match o {
        Owner::Cli => json!({}),
        Owner::Docker { id, .. } => json!({ "dataplane.owner": "docker", "dataplane.docker.network-id": id }),
        Owner::Cni { .. } => json!({ "dataplane.owner": "cni" }),
    }
}

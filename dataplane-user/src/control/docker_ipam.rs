//! Docker's remote IPAM driver protocol (`--ipam-driver dataplane`) on the cluster's plan:
//! several hosts, each with its own dockerd and plugin, allocate from one pool.
//!
//! A pool is a cluster network of its own (`docker-SUBNET`, address-only) that every
//! host's RequestPool for that subnet joins. Addresses are claimed as the CLI's are, with
//! the MAC Docker's macvlan network derives from an IPv4 address (02:42 + the address),
//! which is what our network driver gives the endpoint. The claims live as long as Docker
//! holds the address (ReleaseAddress); the sweep of endpoints leaves them alone.

use std::net::IpAddr;

use super::{endpoint::pick, invalid, network::ClusterDoc, ControlError, Engine, Result};
use crate::{
    cluster::{Claimed, Cluster},
    ipam::{self, PoolRequest},
    mac::Mac,
    store::{Network, Owner},
};

/// Holder ids of the IPAM driver's claims (never swept: Docker releases them).
pub(crate) const IPAM_HOLDER: &str = "docker-ipam-";
/// The holder id of a pool's gateway (shared by every host of the pool).
pub(crate) const GATEWAY_HOLDER: &str = "docker-ipam-gateway";

/// The MAC Docker's macvlan endpoints get for an IPv4 address.
fn mac_of(ip: IpAddr) -> Mac {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Mac([0x02, 0x42, o[0], o[1], o[2], o[3]])
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            Mac([0x02, 0x42, o[12], o[13], o[14], o[15]])
        }
    }
}

impl Engine {
    fn ipam_cluster(&self) -> Result<&Cluster> {
        self.cluster.as_ref().ok_or_else(|| {
            ControlError::Invalid(
                "the dataplane IPAM driver shares one address plan between hosts: start the plugin with --cluster etcd://... (or use Docker's default IPAM)".into(),
            )
        })
    }

    /// RequestPool: (pool id, subnet). Every host asking for the same subnet gets the same
    /// pool; a subnet overlapping another network of the cluster is refused.
    pub fn docker_ipam_request_pool(&mut self, pool: &str, sub_pool: &str, v6: bool) -> Result<(String, String)> {
        let c = self.ipam_cluster()?;
        if v6 {
            return invalid(
                "the dataplane IPAM driver has no IPv6 pools yet: give IPv6 subnets to Docker's default IPAM",
            );
        }
        if pool.is_empty() {
            return invalid("the dataplane IPAM driver needs --subnet (it picks no default pools)");
        }
        let req = PoolRequest {
            subnets: vec![pool.to_string()],
            ip_ranges: if sub_pool.is_empty() { vec![] } else { vec![sub_pool.to_string()] },
            ..Default::default()
        };
        let subnet = ipam::Cidr::parse_network(pool)?;
        let name = format!("docker-{}", subnet.to_string().replace('/', "-"));
        let mut others = Vec::new();
        let mut existing = None;
        for (n, doc, _) in c.networks()? {
            let d = ClusterDoc::parse(&n, &doc)?;
            if n == name {
                existing = Some(d.network);
            } else {
                others.extend(d.network.pools.iter().map(|p| (n.clone(), p.subnet)));
            }
        }
        let pools = ipam::build_pools(&req, &others, |_| None)?;
        if let Some(e) = existing {
            if e.pools.iter().map(|p| p.ip_range).collect::<Vec<_>>()
                != pools.iter().map(|p| p.ip_range).collect::<Vec<_>>()
            {
                return invalid(format!(
                    "pool {subnet} exists in cluster {} with another --ip-range; give the same on every host",
                    c.cfg.url()
                ));
            }
            return Ok((name, subnet.to_string()));
        }
        let n = Network {
            cluster: true,
            ..Network::address_only(
                crate::store::new_id(),
                crate::store::now_rfc3339(),
                &name,
                pools,
                false,
                Owner::Docker { id: String::new(), sandbox: None },
            )
        };
        let doc = ClusterDoc { network: n, request: Default::default() };
        // Another host making the same pool at the same moment: theirs is the same.
        let _ = c.create_network(&name, &serde_json::to_string(&doc).expect("serialisable"))?;
        Ok((name, subnet.to_string()))
    }

    /// ReleasePool: the pool leaves the cluster once nobody holds an address in it.
    pub fn docker_ipam_release_pool(&mut self, pool_id: &str) -> Result<()> {
        let c = self.ipam_cluster()?;
        c.remove_network(pool_id)?;
        Ok(())
    }

    /// RequestAddress: `asked` or a free address of the pool as ADDRESS/PREFIX; the
    /// gateway (`gateway`) is claimed once for every host.
    pub fn docker_ipam_request_address(
        &mut self,
        pool_id: &str,
        asked: Option<IpAddr>,
        gateway: bool,
    ) -> Result<String> {
        let c = self.ipam_cluster()?;
        let Some((doc, rev)) = c.network(pool_id)? else {
            return invalid(format!("pool {pool_id} is not in cluster {}", c.cfg.url()));
        };
        let n = ClusterDoc::parse(pool_id, &doc)?.network;
        let pool = n.pools.first().ok_or_else(|| ControlError::Internal(format!("pool {pool_id} has no subnet")))?;
        let cidr = |ip: IpAddr| format!("{ip}/{}", pool.subnet.prefix);
        if gateway {
            let gw = asked
                .or(pool.gateway)
                .ok_or_else(|| ControlError::Internal(format!("pool {pool_id} has no gateway")))?;
            let holder = c.holder(GATEWAY_HOLDER, "gateway");
            return match c.claim(pool_id, rev, &[gw], mac_of(gw), &holder)? {
                Claimed::Done => Ok(cidr(gw)),
                Claimed::NoNetwork => invalid(format!("pool {pool_id} was removed from the cluster")),
                Claimed::Lost => match c.taken(pool_id, true)?.ips.get(&gw) {
                    Some(h) if h.endpoint_id == GATEWAY_HOLDER => Ok(cidr(gw)),
                    other => invalid(format!(
                        "gateway {gw} of pool {pool_id} is in use{}",
                        other.map(|h| format!(" by {} on host {}", h.endpoint, h.host)).unwrap_or_default()
                    )),
                },
            };
        }
        let id = format!("{IPAM_HOLDER}{}", &crate::store::new_id()[..16]);
        for attempt in 1..=64 {
            let taken = c.taken(pool_id, attempt > 1)?;
            let used = taken.ips.iter().map(|(ip, h)| (*ip, format!("{} on host {}", h.endpoint, h.host))).collect();
            // The pool's own gateway is reserved by ipam already; an explicit one is claimed.
            let ip = pick(pool_id, &n.pools, true, asked, &used, 8)?
                .ok_or_else(|| ControlError::Internal(format!("pool {pool_id} gave no address")))?;
            match c.claim(pool_id, rev, &[ip], mac_of(ip), &c.holder(&id, "docker"))? {
                Claimed::Done => return Ok(cidr(ip)),
                Claimed::Lost => continue,
                Claimed::NoNetwork => return invalid(format!("pool {pool_id} was removed from the cluster")),
            }
        }
        Err(super::state_err(super::StateKind::Busy, format!("pool {pool_id}: lost 64 claims in a row; retry")))
    }

    /// ReleaseAddress: this host's claim of `addr` in the pool goes (the gateway stays
    /// with the pool).
    pub fn docker_ipam_release_address(&mut self, pool_id: &str, addr: IpAddr) -> Result<()> {
        let c = self.ipam_cluster()?;
        for (id, net, held) in c.mine()? {
            if net == pool_id && held.ips.contains(&addr) && id.starts_with(IPAM_HOLDER) && id != GATEWAY_HOLDER {
                c.release(&held)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoint_macs_follow_docker() {
        assert_eq!(super::mac_of("10.98.0.5".parse().unwrap()).to_string(), "02:42:0a:62:00:05");
    }
}

//! Address management with the rules of Docker's default IPAM (pure: no I/O).
//!
//! Never handed out: the subnet's network address, its IPv4 broadcast (except /31 and
//! /32), the gateway, every aux address. Dynamic addresses come from `--ip-range` when
//! given, else from the whole subnet; a static `--ip` may be any free, unreserved address
//! of the subnet.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("invalid CIDR {input:?}: expected ADDRESS/PREFIX, e.g. 172.16.86.0/24 or fd00:50::/64")]
    BadCidr { input: String },
    #[error("invalid subnet {input}: host bits are set; did you mean {suggest}?")]
    HostBits { input: String, suggest: String },
    #[error("invalid IP address {input:?}")]
    BadIp { input: String },
    #[error("{what} {addr} is not inside subnet {subnet}")]
    Outside { what: &'static str, addr: String, subnet: String },
    #[error("ip range {range} is larger than subnet {subnet}")]
    RangeTooLarge { range: String, subnet: String },
    #[error("ip range {range} is not inside subnet {subnet}")]
    RangeOutside { range: String, subnet: String },
    #[error("invalid aux address {input:?}: expected NAME=IP, e.g. my-router=192.168.32.129")]
    BadAux { input: String },
    #[error("{gateways} gateways for {subnets} subnets: give at most one --gateway per --subnet, in the same order")]
    TooManyGateways { gateways: usize, subnets: usize },
    #[error("{ranges} ip ranges for {subnets} subnets: give at most one --ip-range per --subnet, in the same order")]
    TooManyRanges { ranges: usize, subnets: usize },
    #[error("aux address {name}={addr} is not inside any --subnet")]
    AuxOutside { name: String, addr: String },
    #[error("subnet {subnet} overlaps subnet {other} of network {network}: choose a subnet that does not overlap")]
    Overlap { subnet: String, other: String, network: String },
    #[error("invalid subnet {subnet}: it is every address (the default route's destination); give the network's own subnet, e.g. 10.70.0.0/24")]
    WholeSpace { subnet: String },
    #[error("subnets {a} and {b} overlap")]
    SelfOverlap { a: String, b: String },
    #[error("address pool of subnet {subnet} is exhausted{range}: remove an endpoint, or create a network with a larger subnet or --ip-range")]
    Exhausted { subnet: String, range: String },
    #[error("address {addr} is already in use on network {network} by {by}")]
    InUse { addr: String, network: String, by: String },
    #[error("address {addr} is reserved on network {network} ({why}); pick another address")]
    Reserved { addr: String, network: String, why: String },
    #[error("address {addr} is not in any subnet of network {network} ({subnets})")]
    NotInNetwork { addr: String, network: String, subnets: String },
    #[error("network {network} has no {family} subnet to take {addr} from")]
    NoFamily { addr: String, network: String, family: &'static str },
    #[error("--ipv6 needs an IPv6 --subnet (e.g. --subnet fd00:50::/64)")]
    Ipv6NeedsSubnet,
    #[error("IPv6 subnet {subnet} given without --ipv6: add --ipv6 to enable IPv6 on this network")]
    Ipv6NotEnabled { subnet: String },
    #[error("invalid {what} {addr}: it is {why} of subnet {subnet}")]
    ReservedAddress { what: String, addr: String, why: &'static str, subnet: String },
    #[error("invalid subnet {subnet}: {why}; endpoints need unicast addresses")]
    NotUnicast { subnet: String, why: &'static str },
}

/// An IPv4 or IPv6 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

fn bits(a: IpAddr) -> u32 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

impl Cidr {
    fn host_mask(&self) -> u128 {
        let host_bits = bits(self.addr) - u32::from(self.prefix);
        if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        }
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    pub fn first(&self) -> u128 {
        to_u128(self.addr) & !self.host_mask()
    }

    pub fn last(&self) -> u128 {
        self.first() | self.host_mask()
    }

    pub fn network(&self) -> IpAddr {
        from_u128(self.first(), self.is_ipv4())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && (self.first()..=self.last()).contains(&to_u128(ip))
    }

    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.is_ipv4() == self.is_ipv4() && other.prefix >= self.prefix && self.contains(other.network())
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains_cidr(other) || other.contains_cidr(self)
    }

    /// IPv4 broadcast, which is reserved except on /31 and /32.
    pub fn broadcast(&self) -> Option<IpAddr> {
        (self.is_ipv4() && self.prefix < 31).then(|| from_u128(self.last(), true))
    }

    /// Parse a prefix that must not have host bits set (a subnet or range).
    pub fn parse_network(s: &str) -> Result<Cidr, IpamError> {
        let c: Cidr = s.parse()?;
        if to_u128(c.addr) != c.first() {
            let suggest = Cidr { addr: c.network(), prefix: c.prefix };
            return Err(IpamError::HostBits { input: s.to_string(), suggest: suggest.to_string() });
        }
        Ok(c)
    }
}

impl FromStr for Cidr {
    type Err = IpamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IpamError::BadCidr { input: s.to_string() };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if u32::from(prefix) > bits(addr) {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

pub fn parse_ip(s: &str) -> Result<IpAddr, IpamError> {
    s.parse().map_err(|_| IpamError::BadIp { input: s.to_string() })
}

/// One `IPAM.Config` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub subnet: Cidr,
    pub ip_range: Option<Cidr>,
    pub gateway: Option<IpAddr>,
    /// name -> address
    pub aux: BTreeMap<String, IpAddr>,
}

impl Pool {
    /// `ip` is the network or broadcast address (which nobody may hold), if it is.
    fn network_or_broadcast(&self, ip: IpAddr) -> Option<&'static str> {
        if ip == self.subnet.network() && !(self.subnet.is_ipv4() && self.subnet.prefix >= 31) {
            Some("the network address")
        } else if Some(ip) == self.subnet.broadcast() {
            Some("the broadcast address")
        } else {
            None
        }
    }

    /// Why `ip` may not be handed out, if it may not.
    pub fn reserved_why(&self, ip: IpAddr) -> Option<String> {
        if ip == self.subnet.network() && !(self.subnet.is_ipv4() && self.subnet.prefix >= 31) {
            return Some("the subnet's network address".into());
        }
        if Some(ip) == self.subnet.broadcast() {
            return Some("the subnet's broadcast address".into());
        }
        if Some(ip) == self.gateway {
            return Some("the gateway".into());
        }
        if let Some((name, _)) = self.aux.iter().find(|(_, a)| **a == ip) {
            return Some(format!("aux address {name}"));
        }
        None
    }

    /// The lowest free, unreserved address in the range (or subnet).
    pub fn next_free(&self, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
        let span = self.ip_range.unwrap_or(self.subnet);
        let v4 = self.subnet.is_ipv4();
        let mut n = span.first();
        loop {
            let ip = from_u128(n, v4);
            if self.subnet.contains(ip) && !used.contains(&ip) && self.reserved_why(ip).is_none() {
                return Some(ip);
            }
            if n == span.last() {
                return None;
            }
            n += 1;
        }
    }
}

/// What the user asked for in `network create`.
#[derive(Debug, Default, Clone)]
pub struct PoolRequest {
    pub subnets: Vec<String>,
    pub gateways: Vec<String>,
    pub ip_ranges: Vec<String>,
    pub aux: Vec<String>,
    pub ipv6: bool,
}

/// Validate a request into pools. `existing` is (network name, subnet) of every other
/// network, for the overlap rule. `default_v4` is used when no subnet is given.
pub fn build_pools(
    req: &PoolRequest,
    existing: &[(String, Cidr)],
    default_v4: impl Fn(&[(String, Cidr)]) -> Option<Cidr>,
) -> Result<Vec<Pool>, IpamError> {
    let subnets = subnets_of(req, existing, default_v4)?;
    let mut pools: Vec<Pool> =
        subnets.iter().map(|s| Pool { subnet: *s, ip_range: None, gateway: None, aux: BTreeMap::new() }).collect();
    for (i, g) in req.gateways.iter().enumerate() {
        let ip = parse_ip(g)?;
        let pool = &mut pools[i];
        if !pool.subnet.contains(ip) {
            return Err(IpamError::Outside { what: "gateway", addr: ip.to_string(), subnet: pool.subnet.to_string() });
        }
        if let Some(why) = pool.network_or_broadcast(ip) {
            return Err(IpamError::ReservedAddress {
                what: "gateway".into(),
                addr: ip.to_string(),
                why,
                subnet: pool.subnet.to_string(),
            });
        }
        pool.gateway = Some(ip);
    }
    for (i, r) in req.ip_ranges.iter().enumerate() {
        let range = Cidr::parse_network(r)?;
        let pool = &mut pools[i];
        if range.is_ipv4() == pool.subnet.is_ipv4() && range.prefix < pool.subnet.prefix {
            return Err(IpamError::RangeTooLarge { range: range.to_string(), subnet: pool.subnet.to_string() });
        }
        if !pool.subnet.contains_cidr(&range) {
            return Err(IpamError::RangeOutside { range: range.to_string(), subnet: pool.subnet.to_string() });
        }
        pool.ip_range = Some(range);
    }
    for a in &req.aux {
        add_aux(&mut pools, a)?;
    }
    // Like Docker: without --gateway the first usable address of the subnet (outside the
    // range's constraints) becomes the gateway, and is reserved.
    for pool in &mut pools {
        if pool.gateway.is_none() {
            let mut scratch = pool.clone();
            scratch.ip_range = None;
            pool.gateway =
                scratch.next_free(&BTreeSet::new()).filter(|_| !(pool.subnet.is_ipv4() && pool.subnet.prefix >= 31));
        }
    }
    Ok(pools)
}

/// The request's subnets (or the default one), checked: counts of gateways and ranges,
/// families, overlaps with each other and with `existing`, unicast only.
fn subnets_of(
    req: &PoolRequest,
    existing: &[(String, Cidr)],
    default_v4: impl Fn(&[(String, Cidr)]) -> Option<Cidr>,
) -> Result<Vec<Cidr>, IpamError> {
    let mut subnets = req.subnets.iter().map(|s| Cidr::parse_network(s)).collect::<Result<Vec<_>, _>>()?;
    if let Some(s) = subnets.iter().find(|s| s.prefix == 0) {
        return Err(IpamError::WholeSpace { subnet: s.to_string() });
    }
    if req.gateways.len() > subnets.len().max(1) {
        return Err(IpamError::TooManyGateways { gateways: req.gateways.len(), subnets: subnets.len() });
    }
    if req.ip_ranges.len() > subnets.len().max(1) {
        return Err(IpamError::TooManyRanges { ranges: req.ip_ranges.len(), subnets: subnets.len() });
    }
    if subnets.is_empty() {
        subnets.extend(default_v4(existing));
    }
    if req.ipv6 && !subnets.iter().any(|s| !s.is_ipv4()) {
        return Err(IpamError::Ipv6NeedsSubnet);
    }
    if let Some(s) = subnets.iter().find(|s| !s.is_ipv4() && !req.ipv6) {
        return Err(IpamError::Ipv6NotEnabled { subnet: s.to_string() });
    }
    for (i, a) in subnets.iter().enumerate() {
        for b in &subnets[i + 1..] {
            if a.overlaps(b) {
                return Err(IpamError::SelfOverlap { a: a.to_string(), b: b.to_string() });
            }
        }
        if let Some((net, other)) = existing.iter().find(|(_, o)| o.overlaps(a)) {
            return Err(IpamError::Overlap { subnet: a.to_string(), other: other.to_string(), network: net.clone() });
        }
    }
    for s in &subnets {
        let why = match s.addr {
            IpAddr::V4(a) if a.is_multicast() => Some("it is a multicast range (224.0.0.0/4)"),
            IpAddr::V4(a) if a.is_loopback() => Some("it is the loopback range (127.0.0.0/8)"),
            IpAddr::V6(a) if a.is_multicast() => Some("it is a multicast range (ff00::/8)"),
            IpAddr::V6(a) if a.is_loopback() => Some("it is the loopback address"),
            _ => None,
        };
        if let Some(why) = why {
            return Err(IpamError::NotUnicast { subnet: s.to_string(), why });
        }
    }
    Ok(subnets)
}

/// One `--aux-address NAME=IP`, reserved in the pool whose subnet holds it.
fn add_aux(pools: &mut [Pool], a: &str) -> Result<(), IpamError> {
    let (name, ip) = a.split_once('=').ok_or_else(|| IpamError::BadAux { input: a.to_string() })?;
    if name.is_empty() {
        return Err(IpamError::BadAux { input: a.to_string() });
    }
    let ip = parse_ip(ip)?;
    let pool = pools
        .iter_mut()
        .find(|p| p.subnet.contains(ip))
        .ok_or_else(|| IpamError::AuxOutside { name: name.to_string(), addr: ip.to_string() })?;
    let why = pool.network_or_broadcast(ip).or((pool.gateway == Some(ip)).then_some("the gateway"));
    if let Some(why) = why {
        return Err(IpamError::ReservedAddress {
            what: format!("aux address {name}"),
            addr: ip.to_string(),
            why,
            subnet: pool.subnet.to_string(),
        });
    }
    pool.aux.insert(name.to_string(), ip);
    Ok(())
}

/// Pick the first /24 in 172.18.0.0 .. 172.31.255.0 that overlaps nothing.
pub fn default_v4_pool(existing: &[(String, Cidr)]) -> Option<Cidr> {
    (18u8..=31).flat_map(|b| (0u8..=255).map(move |c| (b, c))).find_map(|(b, c)| {
        let cand = Cidr { addr: IpAddr::V4(Ipv4Addr::new(172, b, c, 0)), prefix: 24 };
        (!existing.iter().any(|(_, o)| o.overlaps(&cand))).then_some(cand)
    })
}

/// Allocate an address of the given family on a network: `requested` (validated) or the
/// next free one. `used` maps address -> holder name.
pub fn allocate(
    network: &str,
    pools: &[Pool],
    v4: bool,
    requested: Option<IpAddr>,
    used: &BTreeMap<IpAddr, String>,
) -> Result<Option<IpAddr>, IpamError> {
    let family: Vec<&Pool> = pools.iter().filter(|p| p.subnet.is_ipv4() == v4).collect();
    let used_set: BTreeSet<IpAddr> = used.keys().copied().collect();
    match requested {
        Some(ip) => {
            if ip.is_ipv4() != v4 {
                return Err(IpamError::BadIp { input: ip.to_string() });
            }
            if family.is_empty() {
                return Err(IpamError::NoFamily {
                    addr: ip.to_string(),
                    network: network.into(),
                    family: if v4 { "IPv4" } else { "IPv6" },
                });
            }
            let pool = family.iter().find(|p| p.subnet.contains(ip)).ok_or_else(|| IpamError::NotInNetwork {
                addr: ip.to_string(),
                network: network.into(),
                subnets: family.iter().map(|p| p.subnet.to_string()).collect::<Vec<_>>().join(", "),
            })?;
            if let Some(why) = pool.reserved_why(ip) {
                return Err(IpamError::Reserved { addr: ip.to_string(), network: network.into(), why });
            }
            if let Some(by) = used.get(&ip) {
                return Err(IpamError::InUse { addr: ip.to_string(), network: network.into(), by: by.clone() });
            }
            Ok(Some(ip))
        }
        None => {
            if family.is_empty() {
                return Ok(None);
            }
            for p in &family {
                if let Some(ip) = p.next_free(&used_set) {
                    return Ok(Some(ip));
                }
            }
            let p = family[0];
            Err(IpamError::Exhausted {
                subnet: p.subnet.to_string(),
                range: p.ip_range.map(|r| format!(" (ip range {r})")).unwrap_or_default(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(subnets: &[&str], gateways: &[&str], ranges: &[&str], aux: &[&str]) -> PoolRequest {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        PoolRequest { subnets: v(subnets), gateways: v(gateways), ip_ranges: v(ranges), aux: v(aux), ipv6: false }
    }

    fn pools(r: &PoolRequest) -> Result<Vec<Pool>, IpamError> {
        build_pools(r, &[], default_v4_pool)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn unusable_gateways_aux_addresses_and_subnets_are_refused_at_create() {
        let cases: [(PoolRequest, &str); 7] = [
            (req(&["0.0.0.0/0"], &[], &[], &[]), "invalid subnet 0.0.0.0/0: it is every address"),
            (
                PoolRequest { subnets: vec!["::/0".into()], ipv6: true, ..Default::default() },
                "invalid subnet ::/0: it is every address",
            ),
            (
                req(&["10.0.0.0/24"], &["10.0.0.255"], &[], &[]),
                "invalid gateway 10.0.0.255: it is the broadcast address",
            ),
            (req(&["10.0.0.0/24"], &["10.0.0.0"], &[], &[]), "invalid gateway 10.0.0.0: it is the network address"),
            (
                req(&["10.0.0.0/24"], &["10.0.0.1"], &[], &["r=10.0.0.1"]),
                "invalid aux address r 10.0.0.1: it is the gateway",
            ),
            (req(&["224.0.0.0/24"], &[], &[], &[]), "invalid subnet 224.0.0.0/24: it is a multicast range"),
            (
                PoolRequest { subnets: vec!["ff02::/64".into()], ipv6: true, ..Default::default() },
                "invalid subnet ff02::/64: it is a multicast range",
            ),
        ];
        for (r, want) in cases {
            let e = pools(&r).unwrap_err().to_string();
            assert!(e.contains(want), "{r:?}: {e}");
        }
    }

    #[test]
    fn seed_macnet32_reserves_and_allocates_like_docker() {
        let p = pools(&req(
            &["192.168.32.0/24"],
            &["192.168.32.254"],
            &["192.168.32.128/25"],
            &["my-router=192.168.32.129"],
        ))
        .unwrap();
        assert_eq!(p.len(), 1);
        let mut used = BTreeMap::new();
        let a = allocate("macnet32", &p, true, None, &used).unwrap().unwrap();
        // .128 is the range's first address, which is not the subnet's network address.
        assert_eq!(a, ip("192.168.32.128"));
        used.insert(a, "e1".into());
        // .129 is the aux address: skipped.
        assert_eq!(allocate("macnet32", &p, true, None, &used).unwrap(), Some(ip("192.168.32.130")));
        // Static addresses may come from outside the range, inside the subnet.
        assert_eq!(
            allocate("macnet32", &p, true, Some(ip("192.168.32.10")), &used).unwrap(),
            Some(ip("192.168.32.10"))
        );
        for (bad, why) in [
            ("192.168.32.254", "the gateway"),
            ("192.168.32.129", "aux address my-router"),
            ("192.168.32.255", "broadcast"),
            ("192.168.32.0", "network address"),
        ] {
            let e = allocate("macnet32", &p, true, Some(ip(bad)), &used).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
        let e = allocate("macnet32", &p, true, Some(ip("192.168.32.128")), &used).unwrap_err();
        assert_eq!(e.to_string(), "address 192.168.32.128 is already in use on network macnet32 by e1");
        let e = allocate("macnet32", &p, true, Some(ip("10.0.0.1")), &used).unwrap_err();
        assert_eq!(e.to_string(), "address 10.0.0.1 is not in any subnet of network macnet32 (192.168.32.0/24)");
    }

    #[test]
    fn default_gateway_is_the_first_address() {
        let p = pools(&req(&["172.16.86.0/24"], &[], &[], &[])).unwrap();
        assert_eq!(p[0].gateway, Some(ip("172.16.86.1")));
        assert_eq!(allocate("n", &p, true, None, &BTreeMap::new()).unwrap(), Some(ip("172.16.86.2")));
    }

    #[test]
    fn exhaustion_names_the_pool() {
        let p = pools(&req(&["10.9.0.0/29"], &["10.9.0.1"], &["10.9.0.4/30"], &[])).unwrap();
        let mut used = BTreeMap::new();
        for want in ["10.9.0.4", "10.9.0.5", "10.9.0.6"] {
            let a = allocate("n", &p, true, None, &used).unwrap().unwrap();
            assert_eq!(a, ip(want));
            used.insert(a, "x".into());
        }
        // .7 is the /29's broadcast.
        let e = allocate("n", &p, true, None, &used).unwrap_err();
        assert!(
            e.to_string().starts_with("address pool of subnet 10.9.0.0/29 is exhausted (ip range 10.9.0.4/30)"),
            "{e}"
        );
    }

    #[test]
    fn slash_31_and_32_have_no_broadcast_or_network_reservation() {
        let p = pools(&req(&["10.1.1.0/31"], &[], &[], &[])).unwrap();
        assert_eq!(p[0].gateway, None);
        let mut used = BTreeMap::new();
        let a = allocate("n", &p, true, None, &used).unwrap().unwrap();
        assert_eq!(a, ip("10.1.1.0"));
        used.insert(a, "x".into());
        assert_eq!(allocate("n", &p, true, None, &used).unwrap(), Some(ip("10.1.1.1")));
    }

    #[test]
    fn validation_errors_name_the_value() {
        let cases: Vec<(PoolRequest, &str)> = vec![
            (
                req(&["172.16.86.1/24"], &[], &[], &[]),
                "invalid subnet 172.16.86.1/24: host bits are set; did you mean 172.16.86.0/24?",
            ),
            (req(&["172.16.86.0/33"], &[], &[], &[]), "invalid CIDR \"172.16.86.0/33\""),
            (req(&["172.16.86.0"], &[], &[], &[]), "invalid CIDR \"172.16.86.0\""),
            (req(&["300.1.1.0/24"], &[], &[], &[]), "invalid CIDR \"300.1.1.0/24\""),
            (
                req(&["172.16.86.0/24"], &["172.16.87.1"], &[], &[]),
                "gateway 172.16.87.1 is not inside subnet 172.16.86.0/24",
            ),
            (req(&["172.16.86.0/24"], &["nope"], &[], &[]), "invalid IP address \"nope\""),
            (
                req(&["172.16.86.0/24"], &[], &["172.16.0.0/16"], &[]),
                "ip range 172.16.0.0/16 is larger than subnet 172.16.86.0/24",
            ),
            (
                req(&["172.16.86.0/24"], &[], &["172.16.87.0/25"], &[]),
                "ip range 172.16.87.0/25 is not inside subnet 172.16.86.0/24",
            ),
            (req(&["172.16.86.0/24"], &[], &[], &["router"]), "invalid aux address \"router\""),
            (req(&["172.16.86.0/24"], &[], &[], &["r=10.0.0.1"]), "aux address r=10.0.0.1 is not inside any --subnet"),
            (req(&["10.0.0.0/8", "10.1.0.0/16"], &[], &[], &[]), "subnets 10.0.0.0/8 and 10.1.0.0/16 overlap"),
            (req(&["fd00::/64"], &[], &[], &[]), "IPv6 subnet fd00::/64 given without --ipv6"),
            (req(&["10.0.0.0/24"], &["10.0.0.1", "10.0.0.2"], &[], &[]), "2 gateways for 1 subnets"),
        ];
        for (r, want) in cases {
            let e = pools(&r).unwrap_err().to_string();
            assert!(e.contains(want), "expected {want:?}, got {e:?}");
        }
        let mut r = req(&["10.0.0.0/24"], &[], &[], &[]);
        r.ipv6 = true;
        assert_eq!(pools(&r).unwrap_err(), IpamError::Ipv6NeedsSubnet);
    }

    #[test]
    fn overlap_with_other_networks_is_refused() {
        let existing = vec![("pub_net".to_string(), "172.16.86.0/24".parse().unwrap())];
        let e = build_pools(&req(&["172.16.0.0/16"], &[], &[], &[]), &existing, default_v4_pool).unwrap_err();
        assert_eq!(e.to_string(), "subnet 172.16.0.0/16 overlaps subnet 172.16.86.0/24 of network pub_net: choose a subnet that does not overlap");
        let p =
            build_pools(&req(&[], &[], &[], &[]), &[("x".into(), "172.18.0.0/24".parse().unwrap())], default_v4_pool)
                .unwrap();
        assert_eq!(p[0].subnet.to_string(), "172.18.1.0/24");
    }

    #[test]
    fn ipv6_pools() {
        let mut r = req(&["192.168.50.0/24", "fd00:50::/64"], &["192.168.50.1"], &[], &[]);
        r.ipv6 = true;
        let p = pools(&r).unwrap();
        assert_eq!(p[1].gateway, Some(ip("fd00:50::1")));
        let a = allocate("n", &p, false, None, &BTreeMap::new()).unwrap();
        assert_eq!(a, Some(ip("fd00:50::2")));
        assert_eq!(allocate("n", &p[..1], false, None, &BTreeMap::new()).unwrap(), None);
    }
}

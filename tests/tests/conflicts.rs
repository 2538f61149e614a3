//! Two dataplane hosts on one L2 that know nothing of each other: what one hands out may
//! clash with the other. The parents' XDP programs notice frames from outside that use
//! one of our MACs or claim one of our addresses, count them per parent and per endpoint
//! (`stats`), and `ps` warns.

use dataplane_tests::lab::{unique, veth_between, Host};
use serde_json::Value;

/// ARP requests out of `ep` (for an address nobody has): broadcasts with its identity.
fn arp_from(h: &Host, ep: &str) {
    let _ = h.dp(&["exec", ep, "ping", "-c", "2", "-W", "1", "10.90.0.99"]);
}

#[test]
fn clashing_addresses_and_macs_are_reported_on_both_hosts() {
    let a = Host::new("dpCa").unwrap();
    let b = Host::new("dpCb").unwrap();
    veth_between(&a.ns, "trunk0", &b.ns, "trunk0").unwrap();
    for h in [&a, &b] {
        h.ok(&["network", "create", "--subnet=10.90.0.0/24", "-o", "parent=trunk0", "lan"]);
    }
    // The same address on both hosts (different MACs): an IP clash.
    let (ea, eb) = (unique("ipa"), unique("ipb"));
    a.ok(&["run", "-d", "--name", &ea, "--network", "lan", "--ip", "10.90.0.10"]);
    b.ok(&["run", "-d", "--name", &eb, "--network", "lan", "--ip", "10.90.0.10", "--mac-address", "02:00:00:00:0b:0a"]);
    // The same MAC on both hosts (different addresses): a MAC clash (Docker derives MACs
    // from addresses, moby#22174).
    let (ma, mb) = (unique("maca"), unique("macb"));
    a.ok(&["run", "-d", "--name", &ma, "--network", "lan", "--ip", "10.90.0.20"]);
    b.ok(&["run", "-d", "--name", &mb, "--network", "lan", "--ip", "10.90.0.21", "--mac-address", "02:42:0a:5a:00:14"]);
    // And one without a twin.
    let alone = unique("alone");
    a.ok(&["run", "-d", "--name", &alone, "--network", "lan", "--ip", "10.90.0.30"]);
    for (h, ep) in [(&a, &ea), (&b, &eb), (&a, &ma), (&b, &mb), (&a, &alone)] {
        arp_from(h, ep);
    }

    let sa = a.endpoint_stats(&ea);
    assert!(sa["conflict_ip"].as_u64().unwrap() >= 1, "{sa:#}");
    assert_eq!(sa["conflict_ip_claimed_by"], "02:00:00:00:0b:0a", "{sa:#}");
    let sb = b.endpoint_stats(&eb);
    assert!(sb["conflict_ip"].as_u64().unwrap() >= 1, "{sb:#}");
    assert_eq!(sb["conflict_ip_claimed_by"], "02:42:0a:5a:00:0a", "{sb:#}");
    assert_eq!(sa["conflict_mac"], 0, "{sa:#}");
    for (h, ep) in [(&a, &ma), (&b, &mb)] {
        let s = h.endpoint_stats(ep);
        assert!(s["conflict_mac"].as_u64().unwrap() >= 1, "{s:#}");
        assert_eq!(s["conflict_ip"], 0, "{s:#}");
    }
    let quiet = a.endpoint_stats(&alone);
    assert_eq!((quiet["conflict_mac"].as_u64(), quiet["conflict_ip"].as_u64()), (Some(0), Some(0)), "{quiet:#}");
    for h in [&a, &b] {
        assert!(h.parent_packets("trunk0", "conflict_ip") >= 1 && h.parent_packets("trunk0", "conflict_mac") >= 1);
    }

    let ps = a.dp(&["ps"]);
    let warn = String::from_utf8_lossy(&ps.stderr).into_owned();
    assert!(
        warn.contains(&format!("WARNING: endpoint {ea}: its address 10.90.0.10 is claimed by 02:00:00:00:0b:0a")),
        "{warn}"
    );
    assert!(warn.contains(&format!("WARNING: endpoint {ma}: its MAC 02:42:0a:5a:00:14 is also used")), "{warn}");
    assert!(!warn.contains(&alone), "{warn}");
    let ps_b = String::from_utf8_lossy(&b.dp(&["ps"]).stderr).into_owned();
    assert!(
        ps_b.contains(&format!("WARNING: endpoint {eb}: its address 10.90.0.10 is claimed by 02:42:0a:5a:00:0a")),
        "{ps_b}"
    );
    // The table itself is unchanged (warnings go to stderr).
    assert!(String::from_utf8_lossy(&ps.stdout).starts_with("ENDPOINT ID"));
    // And the metrics carry them per endpoint.
    let server = dataplane_tests::plugin::Server::start(&a, &["metrics", "--listen", "127.0.0.1:9482"], 1024, 60_000);
    let mut text = String::new();
    dataplane_tests::plugin::wait_for("the metrics endpoint", std::time::Duration::from_secs(20), || {
        text = dataplane_tests::plugin::http_get(&a, "127.0.0.1:9482", "/metrics");
        text.starts_with("HTTP/1.1 200")
    });
    let sample = |ep: &str, kind: &str| -> f64 {
        let head = format!("dataplane_endpoint_conflict_frames_total{{endpoint=\"{ep}\",network=\"lan\",owner=\"cli\",kind=\"{kind}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(head.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or(-1.0)
    };
    assert!(sample(&ea, "ip") >= 1.0 && sample(&ea, "mac") == 0.0, "{text}");
    assert!(sample(&ma, "mac") >= 1.0, "{text}");
    // (-1: no sample; an endpoint nobody clashed with has none, or a zero.)
    assert!(sample(&alone, "ip") <= 0.0 && sample(&alone, "mac") <= 0.0, "{text}");
    drop(server);
}

/// `count` endpoints on `network` of `h`, named from `prefix`, with addresses handed out.
fn run_n(h: &Host, network: &str, prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let n = unique(prefix);
            h.ok(&["run", "-d", "--name", &n, "--network", network]);
            n
        })
        .collect()
}

/// The addresses (`IPv4Address` or `IPv6Address`) of the endpoints `h` knows, sorted.
fn addresses(h: &Host, family: &str) -> Vec<String> {
    let ps: Value = dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"]));
    let mut v: Vec<String> =
        ps.as_array().unwrap().iter().filter_map(|e| e["Networks"][0][family].as_str().map(str::to_string)).collect();
    v.sort();
    v
}

/// Two hosts, one subnet, no --ip-range split: each probes an address (ARP from 0.0.0.0)
/// before handing it out, so the second host skips what the first one's endpoints hold.
/// With probing off (`ip_probe_ms=0`) they hand out the same addresses.
#[test]
fn two_hosts_with_one_subnet_hand_out_disjoint_addresses() {
    let a = Host::new("dpPa").unwrap();
    let b = Host::new("dpPb").unwrap();
    veth_between(&a.ns, "trunk0", &b.ns, "trunk0").unwrap();
    let bad =
        a.dp(&["network", "create", "--subnet=10.91.0.0/24", "-o", "parent=trunk0", "-o", "ip_probe_ms=5000", "x"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid ip_probe_ms \"5000\""), "{bad:?}");

    // Probing off: both hand out .2 and .3.
    for h in [&a, &b] {
        h.ok(&["network", "create", "--subnet=10.92.0.0/24", "-o", "parent=trunk0", "-o", "ip_probe_ms=0", "off"]);
    }
    let mut names = Vec::new();
    for h in [&a, &b] {
        for _ in 0..2 {
            let n = unique("off");
            h.ok(&["run", "-d", "--name", &n, "--network", "off"]);
            names.push((h, n));
        }
    }
    assert_eq!(
        addresses(&a, "IPv4Address"),
        addresses(&b, "IPv4Address"),
        "without probes both hosts start at the same address"
    );
    for (h, n) in &names {
        h.ok(&["rm", "-f", n]);
    }

    // Probing on (by default for 20 ms; longer here, for emulated kernels under load).
    for h in [&a, &b] {
        h.ok(&["network", "create", "--subnet=10.91.0.0/24", "-o", "parent=trunk0", "-o", "ip_probe_ms=300", "lan"]);
    }
    let a_eps = run_n(&a, "lan", "pa", 3);
    let b_eps = run_n(&b, "lan", "pb", 3);
    disjoint_reachable_and_quiet((&a, &a_eps), (&b, &b_eps), 3);
}

/// Each of the two hosts knows `count` addresses and none is the other's, b's first
/// endpoint reaches a's first address across the wire, and no endpoint reports a conflict.
/// Returns a's addresses.
fn disjoint_reachable_and_quiet(a: (&Host, &[String]), b: (&Host, &[String]), count: usize) -> Vec<String> {
    let (on_a, on_b) = (addresses(a.0, "IPv4Address"), addresses(b.0, "IPv4Address"));
    assert_eq!((on_a.len(), on_b.len()), (count, count), "{on_a:?} {on_b:?}");
    assert!(on_a.iter().all(|ip| !on_b.contains(ip)), "both hosts handed out the same address: {on_a:?} {on_b:?}");
    let ping = b.0.dp(&["exec", &b.1[0], "ping", "-c", "1", "-W", "2", &on_a[0]]);
    assert!(ping.status.success(), "no path b -> a");
    for (h, eps) in [a, b] {
        for e in eps {
            let s = h.endpoint_stats(e);
            assert_eq!((s["conflict_ip"].as_u64(), s["conflict_mac"].as_u64()), (Some(0), Some(0)), "{s:#}");
        }
    }
    on_a
}

/// The same on a VLAN trunk (`-o parent=trunk0.50`; where the kernel has no 8021q, the
/// eBPF VLAN device): the probe leaves tagged from the VLAN device's own MAC, and the
/// other host's answer, tagged to that MAC, must be admitted on the trunk. A static
/// address taken on one host is skipped by the other.
#[test]
fn two_hosts_on_a_vlan_trunk_hand_out_disjoint_addresses() {
    let a = Host::new("dpQa").unwrap();
    let b = Host::new("dpQb").unwrap();
    veth_between(&a.ns, "trunk0", &b.ns, "trunk0").unwrap();
    for h in [&a, &b] {
        h.ok(&["network", "create", "--subnet=10.93.0.0/24", "-o", "parent=trunk0.50", "-o", "ip_probe_ms=300", "v50"]);
    }
    let taken = unique("qs");
    a.ok(&["run", "-d", "--name", &taken, "--network", "v50", "--ip", "10.93.0.3"]);
    let a_eps = run_n(&a, "v50", "qa", 2);
    let b_eps = run_n(&b, "v50", "qb", 3);
    // `taken` is one of a's three addresses; the conflict check covers the endpoints
    // whose addresses were probed.
    let on_a = disjoint_reachable_and_quiet((&a, &a_eps), (&b, &b_eps), 3);
    assert!(on_a.contains(&"10.93.0.3".to_string()), "{on_a:?}");
    // The VLAN device's own entries are the store's as far as reconcile is concerned,
    // and go with the network.
    assert!(a.reconcile_dry_run().contains("no drift"));
    for e in a_eps.iter().chain([&taken]) {
        a.ok(&["rm", "-f", e]);
    }
    a.ok(&["network", "rm", "v50"]);
    assert!(!a.bpffs.dir.exists(), "pins left after the last network");
}

/// IPv6: an unsolicited neighbour advertisement from another host on the wire claiming
/// one of our endpoints' addresses (what a host that took the same address announces) is
/// counted against that endpoint, with the claiming MAC; one for an address that is not
/// ours is not.
#[test]
fn an_ipv6_address_claimed_from_outside_is_reported() {
    let a = Host::new("dpVa").unwrap();
    let b = Host::new("dpVb").unwrap();
    veth_between(&a.ns, "trunk0", &b.ns, "trunk0").unwrap();
    a.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet=10.97.0.0/24",
        "--subnet=fd00:97::/64",
        "-o",
        "parent=trunk0",
        "v6",
    ]);
    let ea = unique("v6a");
    a.ok(&["run", "-d", "--name", &ea, "--network", "v6", "--ip6", "fd00:97::10"]);
    let other = [0x02, 0x00, 0x00, 0x00, 0x0c, 0x0c];
    let na = |target: [u8; 16]| {
        let mut f = vec![0u8; 14 + 40 + 32];
        f[0..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&other);
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        let ip = &mut f[14..54];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&32u16.to_be_bytes());
        ip[6] = 58;
        ip[7] = 255;
        ip[8..24].copy_from_slice(&target);
        ip[24..40].copy_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let icmp = &mut f[54..86];
        icmp[0] = 136;
        icmp[4] = 0x20; // override
        icmp[8..24].copy_from_slice(&target);
        icmp[24] = 2;
        icmp[25] = 1;
        icmp[26..32].copy_from_slice(&other);
        f
    };
    let ours: [u8; 16] = "fd00:97::10".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let theirs: [u8; 16] = "fd00:97::11".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let raw = dataplane_tests::raw::RawSocket::open(&b.ns, "trunk0").unwrap();
    raw.send(&na(theirs)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(a.endpoint_stats(&ea)["conflict_ip"], 0, "an advertisement for someone else's address counted");
    raw.send(&na(ours)).unwrap();
    raw.send(&na(ours)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let s = a.endpoint_stats(&ea);
    assert_eq!(s["conflict_ip"], 2, "{s:#}");
    assert_eq!(s["conflict_ip_claimed_by"], "02:00:00:00:0c:0c", "{s:#}");
    assert!(a.parent_packets("trunk0", "conflict_ip") >= 2);
    let warn = String::from_utf8_lossy(&a.dp(&["ps"]).stderr).into_owned();
    assert!(warn.contains(&format!("WARNING: endpoint {ea}: its address")), "{warn}");
}

/// IPv6 too: duplicate address detection (a solicitation from ::) before an IPv6 address
/// is handed out, so two hosts with one IPv6 subnet hand out disjoint addresses.
#[test]
fn two_hosts_with_one_ipv6_subnet_hand_out_disjoint_addresses() {
    let a = Host::new("dpWa").unwrap();
    let b = Host::new("dpWb").unwrap();
    veth_between(&a.ns, "trunk0", &b.ns, "trunk0").unwrap();
    for h in [&a, &b] {
        h.ok(&[
            "network",
            "create",
            "--ipv6",
            "--subnet=10.98.0.0/24",
            "--subnet=fd00:98::/64",
            "-o",
            "parent=trunk0",
            "-o",
            "ip_probe_ms=300",
            "six",
        ]);
    }
    for h in [&a, &b] {
        for _ in 0..2 {
            h.ok(&["run", "-d", "--name", &unique("w"), "--network", "six"]);
        }
    }
    let (on_a, on_b) = (addresses(&a, "IPv6Address"), addresses(&b, "IPv6Address"));
    assert_eq!((on_a.len(), on_b.len()), (2, 2), "{on_a:?} {on_b:?}");
    assert!(on_a.iter().all(|ip| !on_b.contains(ip)), "both hosts handed out the same IPv6 address: {on_a:?} {on_b:?}");
    let (v4_a, v4_b) = (addresses(&a, "IPv4Address"), addresses(&b, "IPv4Address"));
    assert!(v4_a.iter().all(|ip| !v4_b.contains(ip)), "and IPv4 stays disjoint: {v4_a:?} {v4_b:?}");
}

/// The address maps conflict detection reads are repaired like the admission map: a claim
/// removed by hand is restored (and conflicts on that address are seen again), a claim
/// for no endpoint goes.
#[test]
fn reconcile_restores_the_address_claims() {
    use dataplane_user::bpf::{admit, Pins};
    let a = Host::new("dpCr").unwrap();
    let b = Host::new("dpCs").unwrap();
    veth_between(&a.ns, "trunk0", &b.ns, "trunk0").unwrap();
    for h in [&a, &b] {
        h.ok(&["network", "create", "--subnet=10.91.0.0/24", "-o", "parent=trunk0", "lan"]);
    }
    let (ea, eb) = (unique("rca"), unique("rcb"));
    a.ok(&["run", "-d", "--name", &ea, "--network", "lan", "--ip", "10.91.0.10"]);
    let pins = Pins::new(&a.bpffs.dir);
    let claims = admit::claimed_ips(&pins);
    let (key, ours) = *claims.iter().find(|(k, _)| k.ip == [10, 91, 0, 10]).expect("10.91.0.10 is claimed");
    admit::unclaim_ip(&pins, &key);
    // A claim for an endpoint that does not exist.
    let stray = dataplane_common::IpKey { ip: [10, 91, 0, 77], ..key };
    admit::claim_ips(&pins, &[stray], dataplane_common::OurIp { endpoint: 4242, ..ours }).unwrap();

    // And counters of an endpoint that does not exist (older versions left such entries
    // behind when a creation failed).
    {
        use aya::maps::{Map, MapData, PerCpuHashMap, PerCpuValues};
        let path = pins.map(dataplane_common::maps::EP_COUNTERS_MAP);
        let map = Map::from_map_data(MapData::from_pin(&path).unwrap()).unwrap();
        let mut m: PerCpuHashMap<MapData, u32, dataplane_common::EndpointCounters> = map.try_into().unwrap();
        let n = aya::util::nr_cpus().unwrap();
        let one = dataplane_common::EndpointCounters::frame(0, 1, 0, 64);
        m.insert(4242, PerCpuValues::try_from(vec![one; n]).unwrap(), 0).unwrap();
    }
    let dry = a.reconcile_dry_run();
    assert!(dry.contains("endpoint counters: entry for endpoint 4242, which no longer exists"), "{dry}");
    assert!(dry.contains("IPv4 address map: missing entry 10.91.0.10"), "{dry}");
    assert!(dry.contains("IPv4 address map: unexpected entry 10.91.0.77"), "{dry}");
    let fixed = a.ok(&["reconcile"]);
    assert!(fixed.contains("repaired: IPv4 address map: missing entry 10.91.0.10"), "{fixed}");
    let after = admit::claimed_ips(&pins);
    assert!(after.contains(&(key, ours)), "not restored: {after:?}");
    assert!(!after.iter().any(|(k, _)| k.ip == [10, 91, 0, 77]), "stray claim kept: {after:?}");
    assert!(a.reconcile_dry_run().contains("no drift"));

    // And the restored claim works: B's endpoint with the same address is noticed.
    b.ok(&["run", "-d", "--name", &eb, "--network", "lan", "--ip", "10.91.0.10", "--mac-address", "02:00:00:00:0c:0a"]);
    let _ = b.dp(&["exec", &eb, "ping", "-c", "2", "-W", "1", "10.91.0.99"]);
    let s = a.endpoint_stats(&ea);
    assert!(s["conflict_ip"].as_u64().unwrap() >= 1, "{s:#}");
}

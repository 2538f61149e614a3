//! Two dataplane hosts on one L2 that know nothing of each other: what one hands out may
//! clash with the other. The parents' XDP programs notice frames from outside that use
//! one of our MACs or claim one of our addresses, count them per parent and per endpoint
//! (`stats`), and `ps` warns.

use dataplane_tests::lab::{unique, veth_between, Host};
use serde_json::Value;

fn stats_of(h: &Host, ep: &str) -> Value {
    let v: Value = serde_json::from_str(&h.ok(&["stats", "--format", "json", ep])).unwrap();
    v["endpoints"][0].clone()
}

fn parent_reason(h: &Host, reason: &str) -> u64 {
    let v: Value = serde_json::from_str(&h.ok(&["stats", "--format", "json"])).unwrap();
    v["parents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["iface"] == "trunk0")
        .filter_map(|p| p["packets"][reason].as_u64())
        .sum()
}

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

    let sa = stats_of(&a, &ea);
    assert!(sa["conflict_ip"].as_u64().unwrap() >= 1, "{sa:#}");
    assert_eq!(sa["conflict_ip_claimed_by"], "02:00:00:00:0b:0a", "{sa:#}");
    let sb = stats_of(&b, &eb);
    assert!(sb["conflict_ip"].as_u64().unwrap() >= 1, "{sb:#}");
    assert_eq!(sb["conflict_ip_claimed_by"], "02:42:0a:5a:00:0a", "{sb:#}");
    assert_eq!(sa["conflict_mac"], 0, "{sa:#}");
    for (h, ep) in [(&a, &ma), (&b, &mb)] {
        let s = stats_of(h, ep);
        assert!(s["conflict_mac"].as_u64().unwrap() >= 1, "{s:#}");
        assert_eq!(s["conflict_ip"], 0, "{s:#}");
    }
    let quiet = stats_of(&a, &alone);
    assert_eq!((quiet["conflict_mac"].as_u64(), quiet["conflict_ip"].as_u64()), (Some(0), Some(0)), "{quiet:#}");
    for h in [&a, &b] {
        assert!(parent_reason(h, "conflict_ip") >= 1 && parent_reason(h, "conflict_mac") >= 1);
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
}

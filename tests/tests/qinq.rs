//! 802.1ad QinQ parents (`-o parent=IFACE.OUTER.VID`, which Docker refuses): frames leave
//! the trunk with the S-tag outside and the C-tag inside, endpoints on two hosts reach each
//! other through them, and every other tag combination is dropped and counted.

use dataplane_tests::{
    frames::{tagged, udp},
    lab::{unique, veth_between, Host},
    raw::RawSocket,
};
use serde_json::Value;

#[test]
fn qinq_parents_carry_both_tags_and_drop_every_other_stack() {
    let a = Host::new("dpQa").unwrap();
    let b = Host::new("dpQb").unwrap();
    veth_between(&a.ns, "trunk0", &b.ns, "trunk0").unwrap();
    let bad = a.dp(&["network", "create", "--subnet=10.93.0.0/24", "-o", "parent=trunk0.100.0", "q"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid 802.1Q parent \"trunk0.100.0\""), "{bad:?}");
    for h in [&a, &b] {
        h.ok(&["network", "create", "--subnet=10.93.0.0/24", "-o", "parent=trunk0.100.50", "q"]);
    }
    let (ea, eb) = (unique("qa"), unique("qb"));
    a.ok(&["run", "-d", "--name", &ea, "--network", "q", "--ip", "10.93.0.10"]);
    b.ok(&["run", "-d", "--name", &eb, "--network", "q", "--ip", "10.93.0.20"]);

    // On the wire: S-tag 100 (0x88a8) outside, C-tag 50 (0x8100) inside.
    let mut pinged = false;
    let seen = a.ns.capture_while("trunk0", "icmp or (vlan and vlan and icmp)", 2, || {
        pinged = a.dp(&["exec", &ea, "ping", "-c", "2", "-W", "2", "10.93.0.20"]).status.success();
    });
    assert!(pinged, "endpoints on two hosts cannot reach each other through QinQ; tcpdump saw:\n{seen}");
    let line = seen.lines().find(|l| l.contains("ICMP echo request")).unwrap_or_else(|| panic!("{seen}"));
    let s_tag = line.find("ethertype 802.1Q-QinQ (0x88a8)").unwrap_or_else(|| panic!("no S-tag: {line}"));
    let c_tag = line.find("ethertype 802.1Q (0x8100), vlan 50").unwrap_or_else(|| panic!("no C-tag 50: {line}"));
    assert!(s_tag < c_tag && line[s_tag..c_tag].contains("vlan 100"), "tags in the wrong order: {line}");

    // Every other combination towards ea's MAC, sent from b's end of the trunk: dropped,
    // counted as stacked tags (or an unknown VLAN for a lone C-tag), never delivered.
    let raw = RawSocket::open(&b.ns, "trunk0").unwrap();
    let dst = a.endpoint_json(&ea)["Networks"][0]["MacAddress"]
        .as_str()
        .unwrap()
        .parse::<dataplane_user::mac::Mac>()
        .unwrap()
        .0;
    let stacked_before = a.parent_packets("trunk0", "drop_stacked_tags");
    let unknown_before = a.parent_packets("trunk0", "drop_unknown_vlan");
    let rx_before = a.endpoint_stats(&ea)["rx_packets"].as_u64().unwrap();
    let inner = |vid: u16| tagged(udp(dst, 1, 64), 0x8100, vid);
    let frames = [
        tagged(inner(51), 0x88a8, 100),                    // wrong C-tag
        tagged(inner(50), 0x88a8, 101),                    // wrong S-tag
        tagged(inner(50), 0x8100, 100),                    // 802.1Q over 802.1Q
        tagged(tagged(inner(50), 0x8100, 7), 0x88a8, 100), // three tags
    ];
    for f in &frames {
        raw.send(f).unwrap();
    }
    raw.send(&inner(50)).unwrap(); // the C-tag alone: no such single-tagged VLAN
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        a.parent_packets("trunk0", "drop_stacked_tags") >= stacked_before + frames.len() as u64,
        "stacked tags not all dropped and counted"
    );
    assert!(
        a.parent_packets("trunk0", "drop_unknown_vlan") > unknown_before,
        "the lone C-tag was not dropped as unknown"
    );
    assert_eq!(
        a.endpoint_stats(&ea)["rx_packets"].as_u64().unwrap(),
        rx_before,
        "a frame with the wrong tags reached the endpoint"
    );

    // Teardown removes the QinQ device.
    for (h, e) in [(&a, &ea), (&b, &eb)] {
        h.ok(&["rm", "-f", e]);
        h.ok(&["network", "rm", "q"]);
        let links = h.ns.exec(&["ip", "-br", "link"]).unwrap();
        assert!(!links.contains("trunk0.100"), "{links}");
    }
}

/// Two QinQ networks under one S-tag: on kernels with 8021q they share the S-tag device
/// `trunk0.100`, which stays while either needs it and goes with the last, whichever of
/// them made it.
#[test]
fn an_s_tag_device_goes_with_the_last_qinq_network_using_it() {
    let (h, _sw) = dataplane_tests::lab::host_with_switch("dpQs").unwrap();
    h.ok(&["network", "create", "--subnet=10.94.0.0/24", "-o", "parent=eth0.100.50", "q50"]);
    h.ok(&["network", "create", "--subnet=10.95.0.0/24", "-o", "parent=eth0.100.60", "q60"]);
    let names = |h: &Host| -> Vec<String> {
        let v: Value = serde_json::from_str(&h.ns.exec(&["ip", "-j", "link", "show"]).unwrap()).unwrap();
        v.as_array().unwrap().iter().filter_map(|l| l["ifname"].as_str().map(str::to_string)).collect()
    };
    let kernel = names(&h).contains(&"eth0.100".to_string());
    h.ok(&["network", "rm", "q50"]);
    let left = names(&h);
    assert!(left.contains(&"eth0.100.60".to_string()), "{left:?}");
    if kernel {
        assert!(left.contains(&"eth0.100".to_string()), "the S-tag device went while q60 uses it: {left:?}");
    }
    let e = unique("q60");
    h.ok(&["run", "-d", "--name", &e, "--network", "q60"]);
    h.ok(&["rm", "-f", &e]);
    h.ok(&["network", "rm", "q60"]);
    let left = names(&h);
    assert!(!left.iter().any(|l| l.starts_with("eth0.100")), "QinQ devices left: {left:?}");
}

//! The endpoint programs run by the kernel on crafted frames (BPF_PROG_TEST_RUN).

use dataplane_common::{
    frame::ETH_P_8021Q,
    maps::{EP_HAS_IPV4, TC_EP_OUT_PROG},
    EndpointInfo,
};
use dataplane_tests::{
    frames::{tagged, udp, LAB_SRC},
    testrun::{TestRunner, LO},
};
use dataplane_user::bpf;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// The endpoint's egress program, with `info` as the loopback device's identity.
fn harness(info: Option<EndpointInfo>) -> TestRunner {
    let h = TestRunner::new(&[TC_EP_OUT_PROG]);
    if let Some(i) = info {
        bpf::endpoints::insert(&h.pins, LO, i).unwrap();
    }
    h
}

fn egress(h: &TestRunner, frame: &[u8]) -> u32 {
    h.run(TC_EP_OUT_PROG, frame).verdict
}

fn info() -> EndpointInfo {
    // frames::udp sends from 10.99.0.1 with LAB_SRC.
    EndpointInfo { endpoint: 7, flags: EP_HAS_IPV4, mac: LAB_SRC, ipv4: [10, 99, 0, 1], ..Default::default() }
}

fn arp(sha: [u8; 6], spa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&sha);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa);
    f
}

#[test]
fn anti_spoofing_verdicts_on_crafted_frames() {
    let h = harness(Some(info()));
    let mut wrong_ip = udp([2, 0, 0, 0, 0, 9], 1, 64);
    wrong_ip[26..30].copy_from_slice(&[10, 99, 0, 77]);
    let mut wrong_mac = udp([2, 0, 0, 0, 0, 9], 1, 64);
    wrong_mac[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x66]);
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("own MAC and IPv4", udp([2, 0, 0, 0, 0, 9], 1, 64), TC_ACT_OK),
        ("own identity, broadcast", udp([0xff; 6], 1, 64), TC_ACT_OK),
        ("ARP as itself", arp(LAB_SRC, [10, 99, 0, 1]), TC_ACT_OK),
        ("ARP probe (sender 0.0.0.0)", arp(LAB_SRC, [0, 0, 0, 0]), TC_ACT_OK),
        ("spoofed IPv4 source", wrong_ip, TC_ACT_SHOT),
        ("spoofed source MAC", wrong_mac, TC_ACT_SHOT),
        ("ARP claiming another IP", arp(LAB_SRC, [10, 99, 0, 5]), TC_ACT_SHOT),
        ("ARP with another sender MAC", arp([2, 0, 0, 0, 0, 0x66], [10, 99, 0, 1]), TC_ACT_SHOT),
        ("tagged frame from an endpoint", tagged(udp([2, 0, 0, 0, 0, 9], 1, 64), ETH_P_8021Q, 60), TC_ACT_SHOT),
        (
            "IPv4 header longer than the frame",
            {
                let mut f = udp([2, 0, 0, 0, 0, 9], 1, 64);
                f[14] = 0x4f;
                f
            },
            TC_ACT_SHOT,
        ),
    ];
    for (name, frame, want) in &cases {
        assert_eq!(egress(&h, frame), *want, "{name}");
    }
    let c = bpf::endpoints::counters(&h.pins).unwrap()[&7];
    assert_eq!((c.tx_packets, c.spoofed_packets), (4, 6), "{c:?}");
}

#[test]
fn an_interface_without_an_identity_sends_nothing() {
    let h = harness(None);
    assert_eq!(egress(&h, &udp([2, 0, 0, 0, 0, 9], 1, 64)), TC_ACT_SHOT);
}

/// Interfaces dataplane makes have an ifindex with a counter slot: their counts land in
/// the slot (an inlined array lookup), add up per endpoint with what it counted before,
/// move to the endpoint's totals when the interface goes, and a new interface on the same
/// slot starts from zero.
#[test]
fn endpoint_interfaces_count_in_their_slot() {
    use dataplane_common::maps::{EP_IFINDEX_BASE, TC_EP_IN_PROG};
    let h = TestRunner::new(&[TC_EP_OUT_PROG, TC_EP_IN_PROG]);
    let ns = dataplane_tests::Netns::new("dpSlot").unwrap();
    let ifindex = EP_IFINDEX_BASE + 11;
    ns.exec(&["ip", "link", "add", "ep0", "index", &ifindex.to_string(), "type", "veth", "peer", "name", "ep0p"])
        .unwrap();
    bpf::endpoints::insert(&h.pins, ifindex, info()).unwrap();
    let mut spoofed = udp(LAB_SRC, 1, 64);
    spoofed[26..30].copy_from_slice(&[10, 99, 0, 77]);
    let verdicts = dataplane_user::nl::with_netns(&ns.path(), || {
        let good = h.run_on(TC_EP_OUT_PROG, &udp(LAB_SRC, 1, 64), ifindex).verdict;
        let bad = h.run_on(TC_EP_OUT_PROG, &spoofed, ifindex).verdict;
        let rx = h.run_on(TC_EP_IN_PROG, &udp(LAB_SRC, 1, 64), ifindex).verdict;
        (good, bad, rx)
    })
    .unwrap();
    assert_eq!(verdicts, (TC_ACT_OK, TC_ACT_SHOT, TC_ACT_OK));
    let c = bpf::endpoints::counters(&h.pins).unwrap()[&info().endpoint];
    assert_eq!((c.tx_packets, c.spoofed_packets, c.rx_packets), (1, 1, 1), "{c:?}");
    // The interface goes: its counts stay the endpoint's; its slot is clear for the next.
    bpf::endpoints::forget_at(
        &h.pins,
        ifindex,
        info().endpoint,
        [std::path::PathBuf::new(), std::path::PathBuf::new()],
    );
    let c = bpf::endpoints::counters(&h.pins).unwrap()[&info().endpoint];
    assert_eq!((c.tx_packets, c.spoofed_packets, c.rx_packets), (1, 1, 1), "{c:?}");
    let next = EndpointInfo { endpoint: 8, ..info() };
    bpf::endpoints::reset_slot(&h.pins, ifindex);
    bpf::endpoints::insert(&h.pins, ifindex, next).unwrap();
    dataplane_user::nl::with_netns(&ns.path(), || h.run_on(TC_EP_OUT_PROG, &udp(LAB_SRC, 1, 64), ifindex)).unwrap();
    let all = bpf::endpoints::counters(&h.pins).unwrap();
    assert_eq!((all[&8].tx_packets, all[&8].spoofed_packets), (1, 0), "{all:?}");
    assert_eq!(all[&info().endpoint].tx_packets, 1, "{all:?}");
}

mod vlan {
    use super::*;
    use dataplane_common::{
        frame::ETH_P_8021AD,
        maps::{TC_TRUNK_PROG, TC_VLAN_OUT_PROG},
        Reason,
    };

    const TC_ACT_REDIRECT: u32 = 7;

    fn run(h: &TestRunner, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let r = h.run(prog, frame);
        (r.verdict, r.out)
    }

    #[test]
    fn trunk_ingress_pops_exactly_the_tag_of_known_vlans() {
        let h = TestRunner::new(&[TC_TRUNK_PROG]);
        let pins = &h.pins;
        bpf::vlan_maps::insert(pins, LO, 0, 50, LO).unwrap(); // eBPF VLAN device
        bpf::vlan_maps::insert(pins, LO, 0, 60, 0).unwrap(); // kernel VLAN device
        let plain = udp([2, 0, 0, 0, 0, 9], 1, 64);
        let (rc, out) = run(&h, TC_TRUNK_PROG, &tagged(plain.clone(), ETH_P_8021Q, 50));
        assert_eq!(rc, TC_ACT_REDIRECT, "VLAN 50 must be redirected to its device");
        assert_eq!(out, plain, "exactly the 4-byte tag must be removed");
        let t60 = tagged(plain.clone(), ETH_P_8021Q, 60);
        assert_eq!(
            run(&h, TC_TRUNK_PROG, &t60),
            (TC_ACT_OK, t60.clone()),
            "kernel VLAN devices get their frames untouched"
        );
        assert_eq!(run(&h, TC_TRUNK_PROG, &plain).0, TC_ACT_OK, "untagged frames pass");
        assert_eq!(
            run(&h, TC_TRUNK_PROG, &tagged(plain.clone(), ETH_P_8021Q, 0x2000)).0,
            TC_ACT_OK,
            "priority tag = untagged"
        );
        assert_eq!(
            run(&h, TC_TRUNK_PROG, &tagged(plain.clone(), ETH_P_8021Q, 70)).0,
            TC_ACT_SHOT,
            "VLAN without a network"
        );
        let hop = tagged(tagged(plain.clone(), ETH_P_8021Q, 60), ETH_P_8021AD, 50);
        assert_eq!(run(&h, TC_TRUNK_PROG, &hop).0, TC_ACT_SHOT, "double tag (VLAN hopping)");
        let hop2 = tagged(tagged(plain.clone(), ETH_P_8021Q, 60), ETH_P_8021Q, 50);
        assert_eq!(run(&h, TC_TRUNK_PROG, &hop2).0, TC_ACT_SHOT, "802.1Q in 802.1Q");
        let hop3 = tagged(tagged(plain.clone(), dataplane_common::frame::ETH_P_QINQ_9100, 60), ETH_P_8021Q, 50);
        assert_eq!(run(&h, TC_TRUNK_PROG, &hop3).0, TC_ACT_SHOT, "TPID 0x9100 inside VLAN 50");
        let outer9100 = tagged(plain.clone(), dataplane_common::frame::ETH_P_QINQ_9100, 50);
        assert_eq!(run(&h, TC_TRUNK_PROG, &outer9100).0, TC_ACT_SHOT, "TPID 0x9100 outside");
        let c = bpf::counters::read(pins).unwrap();
        // VLAN 50 through the eBPF device and VLAN 60 on to the kernel's device.
        assert_eq!(c[&(LO, Reason::VlanSteered)].packets, 2);
        assert_eq!(c[&(LO, Reason::DropUnknownVlan)].packets, 1);
        assert_eq!(c[&(LO, Reason::DropStackedTags)].packets, 4);
        // Truncated tags never reach a VLAN.
        for len in 14..18 {
            let cut = &tagged(plain.clone(), ETH_P_8021Q, 50)[..len];
            assert_ne!(run(&h, TC_TRUNK_PROG, cut).0, TC_ACT_REDIRECT, "{len}-byte frame steered");
        }
    }

    #[test]
    fn vlan_device_egress_tags_and_sends_to_the_trunk() {
        let h = TestRunner::new(&[TC_VLAN_OUT_PROG]);
        let pins = &h.pins;
        let plain = udp([2, 0, 0, 0, 0, 9], 1, 64);
        assert_eq!(run(&h, TC_VLAN_OUT_PROG, &plain).0, TC_ACT_SHOT, "not a VLAN device: nothing leaves");
        bpf::vlan_maps::insert(pins, LO, 0, 50, LO).unwrap();
        assert_eq!(run(&h, TC_VLAN_OUT_PROG, &plain).0, TC_ACT_REDIRECT);
        assert_eq!(bpf::counters::read(pins).unwrap()[&(LO, Reason::VlanTagged)].packets, 1);
    }
}

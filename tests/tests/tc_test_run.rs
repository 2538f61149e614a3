//! The endpoint programs run by the kernel on crafted frames (BPF_PROG_TEST_RUN).

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use dataplane_common::{
    frame::ETH_P_8021Q,
    maps::{EP_HAS_IPV4, TC_EP_OUT_PROG},
    EndpointInfo,
};
use dataplane_tests::{frames::tagged, frames::udp, frames::LAB_SRC, Bpffs};
use dataplane_user::bpf::{self, Pins};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

struct Harness {
    _bpffs: Bpffs,
    pins: Pins,
    ebpf: aya::Ebpf,
}

/// The test run gives the skb the loopback device of the caller's namespace.
fn key() -> u32 {
    1
}

impl Harness {
    fn new(info: Option<EndpointInfo>) -> Harness {
        let bpffs = Bpffs::new().unwrap();
        let pins = Pins::new(&bpffs.dir);
        let mut ebpf = bpf::load_object(&pins.maps_dir()).unwrap();
        let prog: &mut SchedClassifier = ebpf.program_mut(TC_EP_OUT_PROG).unwrap().try_into().unwrap();
        prog.load().unwrap();
        if let Some(i) = info {
            bpf::endpoints::insert(&pins, key(), i).unwrap();
        }
        Harness { _bpffs: bpffs, pins, ebpf }
    }

    fn run(&self, frame: &[u8]) -> u32 {
        let prog: &SchedClassifier = self.ebpf.program(TC_EP_OUT_PROG).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        prog.test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
            .unwrap_or_else(|e| panic!("test run of a {}-byte frame: {e}", frame.len()))
            .return_value
    }
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
    let h = Harness::new(Some(info()));
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
        assert_eq!(h.run(frame), *want, "{name}");
    }
    let c = bpf::endpoints::counters(&h.pins).unwrap()[&7];
    assert_eq!((c.tx_packets, c.spoofed_packets), (4, 6), "{c:?}");
}

#[test]
fn an_interface_without_an_identity_sends_nothing() {
    let h = Harness::new(None);
    assert_eq!(h.run(&udp([2, 0, 0, 0, 0, 9], 1, 64)), TC_ACT_SHOT);
}

mod vlan {
    use super::*;
    use dataplane_common::{
        frame::ETH_P_8021AD,
        maps::{TC_TRUNK_PROG, TC_VLAN_OUT_PROG},
        Reason,
    };

    const TC_ACT_REDIRECT: u32 = 7;
    const LO: u32 = 1;

    fn run(ebpf: &aya::Ebpf, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let p: &SchedClassifier = ebpf.program(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = p
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
            .unwrap_or_else(|e| panic!("{prog} on a {}-byte frame: {e}", frame.len()));
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn load(progs: &[&str]) -> (Bpffs, Pins, aya::Ebpf) {
        let bpffs = Bpffs::new().unwrap();
        let pins = Pins::new(&bpffs.dir);
        let mut ebpf = bpf::load_object(&pins.maps_dir()).unwrap();
        for p in progs {
            let prog: &mut SchedClassifier = ebpf.program_mut(p).unwrap().try_into().unwrap();
            prog.load().unwrap();
        }
        (bpffs, pins, ebpf)
    }

    #[test]
    fn trunk_ingress_pops_exactly_the_tag_of_known_vlans() {
        let (_b, pins, ebpf) = load(&[TC_TRUNK_PROG]);
        bpf::vlan_maps::insert(&pins, LO, 0, 50, LO).unwrap(); // eBPF VLAN device
        bpf::vlan_maps::insert(&pins, LO, 0, 60, 0).unwrap(); // kernel VLAN device
        let plain = udp([2, 0, 0, 0, 0, 9], 1, 64);
        let (rc, out) = run(&ebpf, TC_TRUNK_PROG, &tagged(plain.clone(), ETH_P_8021Q, 50));
        assert_eq!(rc, TC_ACT_REDIRECT, "VLAN 50 must be redirected to its device");
        assert_eq!(out, plain, "exactly the 4-byte tag must be removed");
        let t60 = tagged(plain.clone(), ETH_P_8021Q, 60);
        assert_eq!(
            run(&ebpf, TC_TRUNK_PROG, &t60),
            (TC_ACT_OK, t60.clone()),
            "kernel VLAN devices get their frames untouched"
        );
        assert_eq!(run(&ebpf, TC_TRUNK_PROG, &plain).0, TC_ACT_OK, "untagged frames pass");
        assert_eq!(
            run(&ebpf, TC_TRUNK_PROG, &tagged(plain.clone(), ETH_P_8021Q, 0x2000)).0,
            TC_ACT_OK,
            "priority tag = untagged"
        );
        assert_eq!(
            run(&ebpf, TC_TRUNK_PROG, &tagged(plain.clone(), ETH_P_8021Q, 70)).0,
            TC_ACT_SHOT,
            "VLAN without a network"
        );
        let hop = tagged(tagged(plain.clone(), ETH_P_8021Q, 60), ETH_P_8021AD, 50);
        assert_eq!(run(&ebpf, TC_TRUNK_PROG, &hop).0, TC_ACT_SHOT, "double tag (VLAN hopping)");
        let hop2 = tagged(tagged(plain.clone(), ETH_P_8021Q, 60), ETH_P_8021Q, 50);
        assert_eq!(run(&ebpf, TC_TRUNK_PROG, &hop2).0, TC_ACT_SHOT, "802.1Q in 802.1Q");
        let hop3 = tagged(tagged(plain.clone(), dataplane_common::frame::ETH_P_QINQ_9100, 60), ETH_P_8021Q, 50);
        assert_eq!(run(&ebpf, TC_TRUNK_PROG, &hop3).0, TC_ACT_SHOT, "TPID 0x9100 inside VLAN 50");
        let outer9100 = tagged(plain.clone(), dataplane_common::frame::ETH_P_QINQ_9100, 50);
        assert_eq!(run(&ebpf, TC_TRUNK_PROG, &outer9100).0, TC_ACT_SHOT, "TPID 0x9100 outside");
        let c = bpf::counters::read(&pins).unwrap();
        // VLAN 50 through the eBPF device and VLAN 60 on to the kernel's device.
        assert_eq!(c[&(LO, Reason::VlanSteered)].packets, 2);
        assert_eq!(c[&(LO, Reason::DropUnknownVlan)].packets, 1);
        assert_eq!(c[&(LO, Reason::DropStackedTags)].packets, 4);
        // Truncated tags never reach a VLAN.
        for len in 14..18 {
            let cut = &tagged(plain.clone(), ETH_P_8021Q, 50)[..len];
            assert_ne!(run(&ebpf, TC_TRUNK_PROG, cut).0, TC_ACT_REDIRECT, "{len}-byte frame steered");
        }
    }

    #[test]
    fn vlan_device_egress_tags_and_sends_to_the_trunk() {
        let (_b, pins, ebpf) = load(&[TC_VLAN_OUT_PROG]);
        let plain = udp([2, 0, 0, 0, 0, 9], 1, 64);
        assert_eq!(run(&ebpf, TC_VLAN_OUT_PROG, &plain).0, TC_ACT_SHOT, "not a VLAN device: nothing leaves");
        bpf::vlan_maps::insert(&pins, LO, 0, 50, LO).unwrap();
        assert_eq!(run(&ebpf, TC_VLAN_OUT_PROG, &plain).0, TC_ACT_REDIRECT);
        assert_eq!(bpf::counters::read(&pins).unwrap()[&(LO, Reason::VlanTagged)].packets, 1);
    }
}

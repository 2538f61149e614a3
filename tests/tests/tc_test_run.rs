//! The endpoint programs run by the kernel on crafted frames (BPF_PROG_TEST_RUN).

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use dataplane_common::{
    frame::ETH_P_8021Q,
    maps::{EP_HAS_IPV4, TC_EP_OUT_PROG},
    EndpointInfo,
};
use dataplane_tests::{frames::udp, frames::tagged, frames::LAB_SRC, Bpffs};
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
        ("IPv4 header longer than the frame", { let mut f = udp([2, 0, 0, 0, 0, 9], 1, 64); f[14] = 0x4f; f }, TC_ACT_SHOT),
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

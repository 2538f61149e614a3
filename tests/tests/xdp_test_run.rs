//! The XDP program itself, run by the kernel on crafted frames (BPF_PROG_TEST_RUN).

use dataplane_common::{
    admission,
    frame::{ETH_P_8021AD, ETH_P_8021Q},
    maps::XDP_PARENT_PROG,
    AdmitKey, AdmitValue, Reason, Verdict,
};
use dataplane_tests::{
    frames::{tagged, udp},
    testrun::{TestRunner, LO},
};
use dataplane_user::bpf;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const ADMITTED: [u8; 6] = [0x02, 0xdb, 0, 0, 0, 1];
const UNKNOWN: [u8; 6] = [0x02, 0xdb, 0, 0, 0, 2];

/// The parent's XDP program with ADMITTED admitted untagged and on VLAN 50.
fn harness() -> TestRunner {
    let h = TestRunner::new(&[XDP_PARENT_PROG]);
    for vlan in [0, 50] {
        bpf::admit::insert(&h.pins, AdmitKey { ifindex: LO, vlan, mac: ADMITTED }, AdmitValue::default()).unwrap();
    }
    h
}

fn xdp(h: &TestRunner, frame: &[u8]) -> (u32, Vec<u8>) {
    let r = h.run(XDP_PARENT_PROG, frame);
    (r.verdict, r.out)
}

#[test]
fn verdicts_on_crafted_frames() {
    let h = harness();
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("admitted", udp(ADMITTED, 1, 64), XDP_PASS),
        ("unknown unicast", udp(UNKNOWN, 1, 64), XDP_DROP),
        ("broadcast", udp([0xff; 6], 1, 64), XDP_PASS),
        ("multicast", udp([0x01, 0x00, 0x5e, 0, 0, 1], 1, 64), XDP_PASS),
        ("admitted in VLAN 50", tagged(udp(ADMITTED, 1, 64), ETH_P_8021Q, 50), XDP_PASS),
        ("admitted MAC, wrong VLAN 51", tagged(udp(ADMITTED, 1, 64), ETH_P_8021Q, 51), XDP_DROP),
        ("priority tag (VID 0) = untagged", tagged(udp(ADMITTED, 1, 64), ETH_P_8021Q, 0x6000), XDP_PASS),
        ("reserved VID 4095", tagged(udp(ADMITTED, 1, 64), ETH_P_8021Q, 0x0fff), XDP_DROP),
        ("802.1ad + 802.1Q stack", tagged(tagged(udp(ADMITTED, 1, 64), ETH_P_8021Q, 50), ETH_P_8021AD, 50), XDP_DROP),
        ("802.1Q + 802.1Q stack", tagged(tagged(udp(ADMITTED, 1, 64), ETH_P_8021Q, 50), ETH_P_8021Q, 50), XDP_DROP),
        ("jumbo admitted", udp(ADMITTED, 1, 3000), XDP_PASS),
    ];
    for (name, frame, want) in &cases {
        let (got, out) = xdp(&h, frame);
        assert_eq!(got, *want, "{name}");
        assert_eq!(&out, frame, "{name}: the admission program must not modify frames");
    }
    assert_eq!(h.counter(Reason::PassAdmitted), 4);
    assert_eq!(h.counter(Reason::DropUnknownDestination), 2);
    assert_eq!(h.counter(Reason::PassBroadcast), 1);
    assert_eq!(h.counter(Reason::PassMulticast), 1);
    assert_eq!(h.counter(Reason::DropMalformed), 1);
    assert_eq!(h.counter(Reason::DropStackedTags), 2);
}

#[test]
fn no_truncated_frame_is_admitted() {
    let h = harness();
    let untagged = udp(ADMITTED, 7, 64);
    let vlan50 = tagged(udp(ADMITTED, 7, 64), ETH_P_8021Q, 50);
    // (frame, length at which its headers are complete: Ethernet [+ tag] + IPv4 header)
    let shapes = [(untagged, 34usize), (vlan50, 38)];
    // The kernel's XDP test run refuses frames shorter than an Ethernet header.
    let shortest = 14;
    let mut malformed = 0;
    for (frame, complete) in &shapes {
        for len in shortest..=64 {
            let cut = &frame[..len];
            let (got, _) = xdp(&h, cut);
            let host = admission(cut, LO, |k, words| {
                assert_eq!(words, k.words(), "the words the kernel program looks up are not the key's");
                k.mac == ADMITTED && (k.vlan == 0 || k.vlan == 50)
            });
            if len >= *complete {
                assert_eq!(got, XDP_PASS, "complete {len}-byte frame to an admitted MAC dropped");
                assert_eq!(host.verdict, Verdict::Pass);
            } else {
                assert_eq!(got, XDP_DROP, "truncated {len}-byte frame was admitted");
                assert_eq!(host.reason, Reason::DropMalformed, "host logic disagrees at {len}");
                malformed += 1;
            }
        }
    }
    assert_eq!(h.counter(Reason::DropMalformed), malformed, "every truncated frame counted as malformed");
    // Shorter than Ethernet: the kernel refuses the input itself, so nothing can be admitted.
    let r = h.try_run(XDP_PARENT_PROG, &udp(ADMITTED, 1, 64)[..13]);
    assert!(r.is_err(), "the kernel accepted a 13-byte XDP test frame: update `shortest`");
}

/// MACs whose admission keys (on `LO`, untagged) share one home slot of the table.
fn colliding_macs(n: usize) -> Vec<[u8; 6]> {
    let key = |i: u32| {
        let [a, b, c, d] = i.to_be_bytes();
        AdmitKey { ifindex: LO, vlan: 0, mac: [0x02, 0xcc, a, b, c, d] }
    };
    let home = key(0).home_slot();
    (0u32..).map(key).filter(|k| k.home_slot() == home).take(n).map(|k| k.mac).collect()
}

/// Keys that collide share a run of slots: each is found past the others, a removed one
/// in the middle is stepped over (not the end of the search), its slot is reused, and
/// removing the last ones frees the run so unknown MACs stop at once again.
#[test]
fn colliding_keys_are_found_past_each_other_and_removals() {
    let h = TestRunner::new(&[XDP_PARENT_PROG]);
    let macs = colliding_macs(4);
    let key = |mac: [u8; 6]| AdmitKey { ifindex: LO, vlan: 0, mac };
    let verdicts = |h: &TestRunner| macs.iter().map(|m| xdp(h, &udp(*m, 1, 64)).0).collect::<Vec<_>>();
    for (i, m) in macs[..3].iter().enumerate() {
        bpf::admit::insert(&h.pins, key(*m), AdmitValue { endpoint: i as u32 + 1, flags: 0 }).unwrap();
    }
    assert_eq!(verdicts(&h), [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP]);
    // Taking out the middle one leaves the third reachable.
    assert!(bpf::admit::remove(&h.pins, &key(macs[1])).unwrap());
    assert!(!bpf::admit::remove(&h.pins, &key(macs[1])).unwrap(), "removed twice");
    assert_eq!(verdicts(&h), [XDP_PASS, XDP_DROP, XDP_PASS, XDP_DROP]);
    // A new key takes the freed slot and every other stays; values are kept per key.
    bpf::admit::insert(&h.pins, key(macs[3]), AdmitValue { endpoint: 4, flags: 0 }).unwrap();
    assert_eq!(verdicts(&h), [XDP_PASS, XDP_DROP, XDP_PASS, XDP_PASS]);
    let listed: Vec<(AdmitKey, u32)> =
        bpf::admit::list(&h.pins).unwrap().into_iter().map(|(k, v)| (k, v.endpoint)).collect();
    let mut want = vec![(key(macs[0]), 1), (key(macs[2]), 3), (key(macs[3]), 4)];
    want.sort_by_key(|(k, _)| k.mac);
    assert_eq!(listed, want);
    assert_eq!(
        bpf::admit::insert_new(&h.pins, key(macs[2]), AdmitValue { endpoint: 9, flags: 0 }).unwrap(),
        Some(AdmitValue { endpoint: 3, flags: 0 }),
        "insert_new keeps what is there"
    );
    // Everything removed: the table is empty again, as listed and as the program sees it.
    bpf::admit::remove_where(&h.pins, |k| k.ifindex == LO).unwrap();
    assert!(bpf::admit::list(&h.pins).unwrap().is_empty());
    assert_eq!(verdicts(&h), [XDP_DROP; 4]);
}

//! A corpus of malformed and odd frames, replayed through the kernel programs on every
//! test run (BPF_PROG_TEST_RUN): the kernel's verdict must equal the host-side logic's, and
//! no frame the parser rejects is ever admitted. Frames found by `cargo xtask fuzz` are
//! kept in tests/corpus/ and replayed too.

use dataplane_common::{
    admission, egress_check,
    frame::{ETH_P_8021AD, ETH_P_8021Q},
    maps::{EP_HAS_IPV4, TC_EP_OUT_PROG, XDP_PARENT_PROG},
    parse_l2, AdmitKey, AdmitValue, EndpointInfo, Verdict,
};
use dataplane_tests::{
    frames::{tagged, udp, LAB_SRC},
    testrun::{TestRunner, LO},
};
use dataplane_user::bpf;

const ADMITTED: [u8; 6] = [0x02, 0xdb, 0, 0, 0, 1];

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn corpus() -> Vec<Vec<u8>> {
    let mut rng = Rng(0x5eed_da7a_91a2_e001);
    let seeds: Vec<Vec<u8>> = vec![
        udp(ADMITTED, 1, 64),
        tagged(udp(ADMITTED, 1, 64), ETH_P_8021Q, 50),
        tagged(tagged(udp(ADMITTED, 1, 64), ETH_P_8021Q, 50), ETH_P_8021AD, 7),
        {
            let mut f = udp(ADMITTED, 1, 64);
            f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            f[14] = 0x60;
            f
        },
        {
            let mut f = udp([0xff; 6], 1, 60);
            f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            f
        },
    ];
    let ethertypes = [0x0800u16, 0x0806, 0x86dd, 0x8100, 0x88a8, 0x0026, 0xffff];
    let mut out = Vec::new();
    for _ in 0..3000 {
        let mut f = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(4) {
            match rng.below(6) {
                0 => f.truncate(14 + rng.below(f.len() - 13)),
                1 => {
                    let i = rng.below(f.len());
                    f[i] = rng.next() as u8;
                }
                2 => {
                    // An EtherType anywhere a header may start.
                    let at = [12, 16, 20][rng.below(3)];
                    if at + 2 <= f.len() {
                        f[at..at + 2].copy_from_slice(&ethertypes[rng.below(ethertypes.len())].to_be_bytes());
                    }
                }
                3 => {
                    // IPv4 version/IHL byte of any shape.
                    for at in [14, 18, 22] {
                        if at < f.len() && rng.below(2) == 0 {
                            f[at] = rng.next() as u8;
                        }
                    }
                }
                4 => f.extend((0..rng.below(40)).map(|_| rng.next() as u8)),
                _ => f[0..6].copy_from_slice(if rng.below(2) == 0 { &ADMITTED } else { &[0x02, 0x33, 0, 0, 0, 9] }),
            }
        }
        if f.len() >= 14 {
            out.push(f);
        }
    }
    if let Ok(dir) = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus")) {
        for e in dir.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "bin")) {
            if let Ok(bytes) = std::fs::read(e.path()) {
                if bytes.len() >= 14 && bytes.len() <= 4000 {
                    out.push(bytes);
                }
            }
        }
    }
    out
}

#[test]
fn kernel_and_host_agree_and_nothing_malformed_is_admitted() {
    let h = TestRunner::new(&[XDP_PARENT_PROG, TC_EP_OUT_PROG]);
    for vlan in [0, 50] {
        bpf::admit::insert(&h.pins, AdmitKey { ifindex: LO, vlan, mac: ADMITTED }, AdmitValue::default()).unwrap();
    }
    let ep = EndpointInfo { endpoint: 3, flags: EP_HAS_IPV4, mac: LAB_SRC, ipv4: [10, 99, 0, 1], ..Default::default() };
    bpf::endpoints::insert(&h.pins, LO, ep).unwrap();

    let frames = corpus();
    assert!(frames.len() > 2500);
    let (mut malformed, mut admitted, mut refused) = (0, 0, 0);
    for (i, f) in frames.iter().enumerate() {
        let host = admission(f.as_slice(), LO, |k, words| {
            assert_eq!(words, k.words(), "the words the kernel program looks up are not the key's");
            k.mac == ADMITTED && (k.vlan == 0 || k.vlan == 50)
        });
        let got = h.run(XDP_PARENT_PROG, f).verdict;
        let want = if host.verdict == Verdict::Pass { 2 } else { 1 };
        assert_eq!(got, want, "frame {i} ({} bytes): kernel and host disagree ({:?}): {f:02x?}", f.len(), host.reason);
        if parse_l2(f.as_slice()).is_err() {
            malformed += 1;
            assert_eq!(got, 1, "frame {i}: a malformed frame was admitted: {f:02x?}");
        } else if got == 2 {
            admitted += 1;
        }
        let host_eg = egress_check(f.as_slice(), &ep);
        // The skb test run refuses some shapes outright (e.g. a short frame with the IPv6
        // EtherType): nothing to compare for those.
        let got_eg = match h.try_run(TC_EP_OUT_PROG, f) {
            Ok(r) => r.verdict,
            Err(_) => {
                refused += 1;
                continue;
            }
        };
        let want_eg = if host_eg.verdict == Verdict::Pass { 0 } else { 2 };
        assert_eq!(
            got_eg, want_eg,
            "frame {i}: egress check: kernel and host disagree ({:?}): {f:02x?}",
            host_eg.reason
        );
    }
    // The corpus must exercise both sides of the decision.
    assert!(malformed > 500 && admitted > 100, "corpus too narrow: {malformed} malformed, {admitted} admitted");
    assert!(refused * 10 < frames.len(), "the skb test run refused {refused} of {} frames", frames.len());
}

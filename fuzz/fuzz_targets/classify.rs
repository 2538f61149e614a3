//! Fuzzing the frame classification that the kernel programs share with the host.
//! Invariants: nothing panics; an admitted frame parses and its key is the one looked up;
//! a frame that does not parse is never passed by either decision; an egress frame that
//! passes carries the endpoint's own source MAC and no tag.
#![no_main]

use dataplane_common::{admission, egress_check, maps::EP_HAS_IPV4, parse_l2, EndpointInfo, Reason, Verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = parse_l2(data);
    let looked_up = std::cell::Cell::new(None);
    let d = admission(data, 7, |k, words| {
        assert_eq!(words, k.words(), "the words looked up are not the key's");
        looked_up.set(Some(*k));
        k.mac[5] & 1 == 0
    });
    let looked_up = looked_up.get();
    match parsed {
        Err(_) => assert_eq!(d.verdict, Verdict::Drop, "unparsable frame passed admission"),
        Ok(h) => {
            if d.reason == Reason::PassAdmitted {
                let k = looked_up.expect("admitted without a lookup");
                assert_eq!((k.ifindex, k.vlan, k.mac), (7, h.vlan, h.dst));
                assert!(h.dst[0] & 1 == 0, "a group address took the unicast path");
            }
        }
    }
    let ep = EndpointInfo {
        endpoint: 1,
        flags: EP_HAS_IPV4,
        mac: [2, 0, 0, 0, 0, 1],
        ipv4: [10, 0, 0, 2],
        ..Default::default()
    };
    let e = egress_check(data, &ep);
    if e.verdict == Verdict::Pass {
        let h = parse_l2(data).expect("egress passed an unparsable frame");
        assert_eq!(h.src, ep.mac);
        assert!(!h.tagged);
    }
});

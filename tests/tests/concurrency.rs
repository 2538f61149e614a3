//! 64 concurrent `run -d` / `rm` loops on one network: every command succeeds, no address
//! or MAC is ever handed out twice, the store stays consistent, and nothing leaks.

use std::{collections::BTreeSet, path::Path, sync::Barrier};

use dataplane_tests::{
    lab::{veth_between, Host},
    Netns,
};
use serde_json::Value;

#[test]
fn sixty_four_concurrent_run_rm_loops() {
    let h = Host::new("dpK").unwrap();
    let sw = Netns::new("dpKs").unwrap();
    veth_between(&sw, "up0", &h.ns, "eth0").unwrap();
    h.ok(&["network", "create", "--subnet=10.88.0.0/24", "-o", "parent=eth0", "busy"]);
    const WORKERS: usize = 64;
    const ROUNDS: usize = 2;
    let barrier = Barrier::new(WORKERS + 1);
    let tag = std::process::id();
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (h, barrier) = (&h, &barrier);
            s.spawn(move || {
                for r in 0..ROUNDS {
                    let name = format!("k{w}r{r}-{tag}");
                    let out = h.dp(&["run", "-d", "--name", &name, "--network", "busy"]);
                    assert!(out.status.success(), "run {name}: {}", String::from_utf8_lossy(&out.stderr));
                    barrier.wait(); // everyone is up
                    barrier.wait(); // the checker has looked
                    let out = h.dp(&["rm", &name]);
                    assert!(out.status.success(), "rm {name}: {}", String::from_utf8_lossy(&out.stderr));
                }
            });
        }
        for _ in 0..ROUNDS {
            barrier.wait();
            let ps: Value = serde_json::from_str(&h.ok(&["ps", "--format", "json"])).unwrap();
            let eps = ps.as_array().unwrap();
            assert_eq!(eps.len(), WORKERS);
            let ips: BTreeSet<&str> = eps.iter().map(|e| e["Networks"][0]["IPv4Address"].as_str().unwrap()).collect();
            let macs: BTreeSet<&str> = eps.iter().map(|e| e["Networks"][0]["MacAddress"].as_str().unwrap()).collect();
            assert_eq!((ips.len(), macs.len()), (WORKERS, WORKERS), "an address or MAC was handed out twice");
            let admitted: Value = serde_json::from_str(&h.ok(&["bpf", "admit", "ls", "--format", "json"])).unwrap();
            assert_eq!(admitted.as_array().unwrap().len(), WORKERS + 1, "admission map out of step with the store");
            barrier.wait();
        }
    });
    assert!(h.endpoint_names().is_empty());
    assert!(h.ok(&["reconcile", "--dry-run"]).contains("no drift"), "store and kernel disagree after the storm");
    for w in 0..WORKERS {
        for r in 0..ROUNDS {
            assert!(!Path::new(&format!("/run/netns/k{w}r{r}-{tag}")).exists(), "namespace leaked");
        }
    }
    let links: Value = serde_json::from_str(&h.ns.exec(&["ip", "-j", "link"]).unwrap()).unwrap();
    assert_eq!(links.as_array().unwrap().len(), 2, "links leaked: {links:#}");
}

//! 64 concurrent `run -d` / `rm` loops on one network: every command succeeds, no address
//! or MAC is ever handed out twice, the store stays consistent, and nothing leaks.

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{Barrier, Mutex},
};

use dataplane_tests::lab::host_with_switch;
use serde_json::Value;

#[test]
fn sixty_four_concurrent_run_rm_loops() {
    let (h, _sw) = host_with_switch("dpK").unwrap();
    h.ok(&["network", "create", "--subnet=10.88.0.0/24", "-o", "parent=eth0", "busy"]);
    const WORKERS: usize = 64;
    const ROUNDS: usize = 2;
    let barrier = Barrier::new(WORKERS + 1);
    let tag = std::process::id();
    // Failures are collected, never panicked on inside the scope: a panicking thread
    // would leave the others waiting at the barrier forever.
    let failures = Mutex::new(Vec::<String>::new());
    let fail = |msg: String| failures.lock().unwrap().push(msg);
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (h, barrier, fail) = (&h, &barrier, &fail);
            s.spawn(move || {
                for r in 0..ROUNDS {
                    let name = format!("k{w}r{r}-{tag}");
                    let out = h.dp(&["run", "-d", "--name", &name, "--network", "busy"]);
                    if !out.status.success() {
                        fail(format!("run {name}: {}", String::from_utf8_lossy(&out.stderr)));
                    }
                    barrier.wait(); // everyone is up
                    barrier.wait(); // the checker has looked
                    let out = h.dp(&["rm", &name]);
                    if !out.status.success() {
                        fail(format!("rm {name}: {}", String::from_utf8_lossy(&out.stderr)));
                    }
                }
            });
        }
        for _ in 0..ROUNDS {
            barrier.wait();
            let ps: Value = dataplane_tests::json_lines_lenient(&String::from_utf8_lossy(
                &h.dp(&["ps", "-a", "--format", "json"]).stdout,
            ));
            let eps = ps.as_array().cloned().unwrap_or_default();
            let ips: BTreeSet<String> =
                eps.iter().filter_map(|e| e["Networks"][0]["IPv4Address"].as_str().map(str::to_string)).collect();
            let macs: BTreeSet<String> =
                eps.iter().filter_map(|e| e["Networks"][0]["MacAddress"].as_str().map(str::to_string)).collect();
            if (eps.len(), ips.len(), macs.len()) != (WORKERS, WORKERS, WORKERS) {
                fail(format!(
                    "{} endpoints with {} addresses and {} MACs (want {WORKERS} of each)",
                    eps.len(),
                    ips.len(),
                    macs.len()
                ));
            }
            let admitted: Value =
                serde_json::from_slice(&h.dp(&["bpf", "admit", "ls", "--format", "json"]).stdout).unwrap_or_default();
            let n = admitted.as_array().map_or(0, Vec::len);
            if n != WORKERS + 1 {
                fail(format!("admission map has {n} entries, want {}", WORKERS + 1));
            }
            barrier.wait();
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    assert!(h.endpoint_names().is_empty());
    let report = h.reconcile_dry_run();
    assert!(report.contains("no drift"), "store and kernel disagree after the storm: {report}");
    for w in 0..WORKERS {
        for r in 0..ROUNDS {
            assert!(!Path::new(&format!("/run/netns/k{w}r{r}-{tag}")).exists(), "namespace leaked");
        }
    }
    let links: Value = serde_json::from_str(&h.ns.exec(&["ip", "-j", "link"]).unwrap()).unwrap();
    assert_eq!(links.as_array().unwrap().len(), 2, "links leaked: {links:#}");
}

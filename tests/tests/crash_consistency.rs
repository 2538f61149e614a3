//! Every named fault point: the process aborts there (as if killed), and the next
//! `dataplane` command leaves the host clean and the store consistent.

use std::{collections::BTreeSet, path::Path};

use dataplane_tests::{
    lab::{host_with_switch, unique, Host},
    Netns,
};
use serde_json::Value;

fn host() -> (Host, Netns) {
    host_with_switch("dpC").unwrap()
}

fn link_names(h: &Host) -> BTreeSet<String> {
    let out = h.ns.exec(&["ip", "-j", "link"]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array().unwrap().iter().filter_map(|l| l["ifname"].as_str().map(str::to_string)).collect()
}

fn aborted(out: &std::process::Output, point: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "fault point {point} did not abort: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn crashed_network_create_is_torn_down_by_the_next_command() {
    for point in ["network-create:vlan-veth", "network-create:vlan-made", "network-create:attached"] {
        let (h, _sw) = host();
        let out = h.dp_env(
            &[("DATAPLANE_FAULT", point)],
            &["network", "create", "--subnet=10.50.0.0/24", "-o", "parent=eth0.50", "n50"],
        );
        aborted(&out, point);
        let report = h.ok(&["reconcile"]);
        assert!(report.contains("network n50 was left Creating by process"), "{point}: {report}");
        let nets: Value = serde_json::from_str(&h.ok(&["network", "ls", "--format", "json"])).unwrap();
        assert_eq!(nets.as_array().unwrap().len(), 2, "{point}: network row left: {nets:#}");
        assert_eq!(link_names(&h), BTreeSet::from(["lo".into(), "eth0".into()]), "{point}: links left");
        assert!(!h.bpffs.dir.exists(), "{point}: pins left");
        assert_eq!(h.ns.xdp_prog_id("eth0").unwrap(), None, "{point}: program left on eth0");
        // And the same command now works.
        h.ok(&["network", "create", "--subnet=10.50.0.0/24", "-o", "parent=eth0.50", "n50"]);
    }
}

#[test]
fn crashed_run_and_rm_are_finished_by_the_next_command() {
    for point in ["run:allocated", "run:netns-made", "run:linked", "rm:marked", "rm:torn-down"] {
        let (h, _sw) = host();
        h.ok(&["network", "create", "--subnet=10.51.0.0/24", "-o", "parent=eth0", "n51"]);
        let name = unique("crash");
        if point.starts_with("rm:") {
            h.ok(&["run", "-d", "--name", &name, "--network", "n51"]);
            aborted(&h.dp_env(&[("DATAPLANE_FAULT", point)], &["rm", &name]), point);
        } else {
            aborted(
                &h.dp_env(&[("DATAPLANE_FAULT", point)], &["run", "-d", "--name", &name, "--network", "n51"]),
                point,
            );
        }
        let report = h.ok(&["reconcile"]);
        assert!(report.contains(&format!("endpoint {name} was left")), "{point}: {report}");
        assert!(h.endpoint_names().is_empty(), "{point}: endpoint row left");
        assert!(!Path::new(&format!("/run/netns/{name}")).exists(), "{point}: namespace left");
        let admitted: Value = serde_json::from_str(&h.ok(&["bpf", "admit", "ls", "--format", "json"])).unwrap();
        assert_eq!(admitted.as_array().unwrap().len(), 1, "{point}: map entry left: {admitted:#}");
        assert!(h.ok(&["reconcile", "--dry-run"]).contains("no drift"), "{point}: still drifting");
        // No address leaked: the next endpoint gets the first one again.
        let again = unique("again");
        h.ok(&["run", "-d", "--name", &again, "--network", "n51"]);
        let ps: Value = serde_json::from_str(&h.ok(&["ps", "--format", "json"])).unwrap();
        assert_eq!(ps[0]["Networks"][0]["IPv4Address"], "10.51.0.2", "{point}: address leaked");
    }
}

#[test]
fn crashed_network_rm_is_finished_by_the_next_command() {
    for point in ["network-rm:marked", "network-rm:torn-down"] {
        let (h, _sw) = host();
        h.ok(&["network", "create", "--subnet=10.52.0.0/24", "-o", "parent=eth0.52", "n52"]);
        aborted(&h.dp_env(&[("DATAPLANE_FAULT", point)], &["network", "rm", "n52"]), point);
        let report = h.ok(&["reconcile"]);
        assert!(report.contains("network n52 was left Removing by process"), "{point}: {report}");
        let nets: Value = serde_json::from_str(&h.ok(&["network", "ls", "--format", "json"])).unwrap();
        assert_eq!(nets.as_array().unwrap().len(), 2, "{point}: network row left");
        assert_eq!(link_names(&h), BTreeSet::from(["lo".into(), "eth0".into()]), "{point}: links left");
        assert!(!h.bpffs.dir.exists(), "{point}: pins left");
    }
}

#[test]
fn crashed_connect_and_disconnect_end_consistent() {
    for point in ["connect:allocated", "connect:linked", "disconnect:removed"] {
        let (h, _sw) = host();
        h.ok(&["network", "create", "--subnet=10.53.0.0/24", "-o", "parent=eth0", "a53"]);
        h.ok(&["network", "create", "--subnet=10.54.0.0/24", "-o", "parent=eth0", "b54"]);
        let name = unique("conn");
        h.ok(&["run", "-d", "--name", &name, "--network", "a53"]);
        if point.starts_with("disconnect") {
            h.ok(&["network", "connect", "b54", &name]);
            aborted(&h.dp_env(&[("DATAPLANE_FAULT", point)], &["network", "disconnect", "b54", &name]), point);
        } else {
            aborted(&h.dp_env(&[("DATAPLANE_FAULT", point)], &["network", "connect", "b54", &name]), point);
        }
        h.ok(&["reconcile"]);
        assert!(h.ok(&["reconcile", "--dry-run"]).contains("no drift"), "{point}: still drifting");
        // Store and namespace agree on whether the endpoint is on b54.
        let ps: Value = serde_json::from_str(&h.ok(&["ps", "--format", "json"])).unwrap();
        let on_b54 = ps[0]["Networks"].as_array().unwrap().iter().any(|n| n["Network"] == "b54");
        let addrs = String::from_utf8_lossy(&h.dp(&["exec", &name, "ip", "-br", "addr"]).stdout).into_owned();
        assert_eq!(on_b54, addrs.contains("10.54.0."), "{point}: store says on_b54={on_b54}, namespace has: {addrs}");
        assert_eq!(on_b54, addrs.contains("eth1"), "{point}: {addrs}");
    }
}

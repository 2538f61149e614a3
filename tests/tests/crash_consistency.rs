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
        if point == "network-create:vlan-veth" && out.status.success() {
            // Only the eBPF VLAN device makes a veth: with the kernel's 8021q the point is
            // not on the path, and the device is the kernel's.
            assert_eq!(h.ns.link_json("eth0.50").unwrap()["linkinfo"]["info_kind"], "vlan", "{point}");
            h.ok(&["network", "rm", "n50"]);
            continue;
        }
        aborted(&out, point);
        let report = h.ok(&["reconcile"]);
        assert!(report.contains("network n50 was left Creating by process"), "{point}: {report}");
        let nets: Value = dataplane_tests::json_lines(&h.ok(&["network", "ls", "--format", "json"]));
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
    for point in ["run:allocated", "run:netns-made", "endpoint:link-made", "run:linked", "rm:marked", "rm:torn-down"] {
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
        assert!(h.reconcile_dry_run().contains("no drift"), "{point}: still drifting");
        // No address leaked: the next endpoint gets the first one again.
        let again = unique("again");
        h.ok(&["run", "-d", "--name", &again, "--network", "n51"]);
        let ps: Value = dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"]));
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
        let nets: Value = dataplane_tests::json_lines(&h.ok(&["network", "ls", "--format", "json"]));
        assert_eq!(nets.as_array().unwrap().len(), 2, "{point}: network row left");
        assert_eq!(link_names(&h), BTreeSet::from(["lo".into(), "eth0".into()]), "{point}: links left");
        assert!(!h.bpffs.dir.exists(), "{point}: pins left");
    }
    // With host access: the host's interface goes with the network, also after a crash.
    for point in ["network-rm:marked", "network-rm:torn-down"] {
        let (h, _sw) = host();
        h.ok(&["network", "create", "--subnet=10.55.0.0/24", "-o", "parent=eth0", "-o", "host_access=true", "n55"]);
        assert!(link_names(&h).iter().any(|l| l.starts_with("dph")), "no host-access interface");
        aborted(&h.dp_env(&[("DATAPLANE_FAULT", point)], &["network", "rm", "n55"]), point);
        let report = h.ok(&["reconcile"]);
        assert!(report.contains("network n55 was left Removing by process"), "{point}: {report}");
        assert!(h.endpoint_names().is_empty(), "{point}: host-access endpoint row left");
        assert_eq!(link_names(&h), BTreeSet::from(["lo".into(), "eth0".into()]), "{point}: links left");
        assert!(!h.bpffs.dir.exists(), "{point}: pins left");
        assert!(h.reconcile_dry_run().contains("no drift"), "{point}: still drifting");
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
        assert!(h.reconcile_dry_run().contains("no drift"), "{point}: still drifting");
        // Store and namespace agree on whether the endpoint is on b54.
        let ps: Value = dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"]));
        let on_b54 = ps[0]["Networks"].as_array().unwrap().iter().any(|n| n["Network"] == "b54");
        let addrs = String::from_utf8_lossy(&h.dp(&["exec", &name, "ip", "-br", "addr"]).stdout).into_owned();
        assert_eq!(on_b54, addrs.contains("10.54.0."), "{point}: store says on_b54={on_b54}, namespace has: {addrs}");
        assert_eq!(on_b54, addrs.contains("eth1"), "{point}: {addrs}");
    }
}

/// `rm -f` ends a detached command whatever was recorded about it: here the supervisor
/// has started the command but not yet recorded its pid (as when `run -d` is killed
/// early). The supervisor recorded itself first, and its process group goes.
#[test]
fn rm_force_ends_a_supervised_command_before_its_pid_is_recorded() {
    let (h, _sw) = host();
    h.ok(&["network", "create", "--subnet=10.55.0.0/24", "-o", "parent=eth0", "n55"]);
    let name = unique("sup");
    let secs = format!("{}", 900_000 + std::process::id() % 99_999);
    let mut run = h
        .command()
        .env("DATAPLANE_PAUSE", "supervise:spawned")
        .env("DATAPLANE_PAUSE_MS", "60000")
        .args(["run", "-d", "--name", &name, "--network", "n55", "--", "sleep", &secs])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let running = || {
        std::process::Command::new("pgrep").args(["-f", &format!("^sleep {secs}$")]).output().unwrap().status.success()
    };
    let start = std::time::Instant::now();
    while !running() {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "the command never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ps: Value = dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"]));
    let status = ps.as_array().unwrap().iter().find(|e| e["Name"] == name.as_str()).unwrap()["Status"].clone();
    assert!(status.as_str().unwrap().starts_with("starting (supervisor pid"), "{status}");
    h.ok(&["rm", "-f", &name]);
    let start = std::time::Instant::now();
    while running() {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "rm -f left the command running");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = run.kill();
    let _ = run.wait();
    assert!(h.endpoint_names().is_empty());
}

/// Reconcile itself killed while it re-creates an endpoint interface deleted by hand (the
/// interface made, not yet configured): the next pass finishes it.
#[test]
fn a_killed_reconcile_is_finished_by_the_next_one() {
    let (h, sw) = host();
    sw.exec(&["ip", "addr", "add", "10.56.0.1/24", "dev", "up0"]).unwrap();
    h.ok(&["network", "create", "--subnet=10.56.0.0/24", "--gateway=10.56.0.1", "-o", "parent=eth0", "n56"]);
    let name = unique("rk");
    h.ok(&["run", "-d", "--name", &name, "--network", "n56"]);
    assert!(std::process::Command::new("ip").args(["-n", &name, "link", "del", "eth0"]).status().unwrap().success());
    aborted(&h.dp_env(&[("DATAPLANE_FAULT", "endpoint:link-made")], &["reconcile"]), "endpoint:link-made");
    let dry = h.reconcile_dry_run();
    assert!(!dry.contains("no drift"), "the half-made interface went unnoticed");
    h.ok(&["reconcile"]);
    assert!(h.reconcile_dry_run().contains("no drift"));
    assert!(h.dp(&["exec", &name, "ping", "-c", "1", "-W", "1", "10.56.0.1"]).status.success());
    // Anti-spoofing is back on the re-made interface.
    h.dp(&["exec", &name, "ip", "addr", "add", "10.56.0.99/24", "dev", "eth0"]);
    assert!(!h.dp(&["exec", &name, "ping", "-c", "1", "-W", "1", "-I", "10.56.0.99", "10.56.0.1"]).status.success());
}

/// The pass before every command looks through the per-entry maps for entries no row
/// accounts for only when it repaired something first (walking maps sized for 65 536
/// endpoints was most of its time): an entry added by hand stays until `dataplane
/// reconcile`, or until a pass finds a crashed command's leftovers, and then goes with them.
#[test]
fn the_maps_are_searched_after_a_repair_and_by_reconcile() {
    let (h, _sw) = host();
    h.ok(&["network", "create", "--subnet=10.53.0.0/24", "-o", "parent=eth0", "n53"]);
    let keep = unique("keep");
    h.ok(&["run", "-d", "--name", &keep, "--network", "n53"]);
    let stray = "02:66:66:66:66:53";
    let admitted = || -> Vec<String> {
        let v: Value = serde_json::from_str(&h.ok(&["bpf", "admit", "ls", "--format", "json"])).unwrap();
        v.as_array().unwrap().iter().map(|e| e.to_string()).collect()
    };
    let has_stray = |list: &[String]| list.iter().any(|e| e.contains(stray));
    h.ok(&["bpf", "admit", "add", "--iface", "eth0", stray]);
    let before = admitted();
    assert!(has_stray(&before), "{before:?}");

    // Nothing crashed: a command's pass does not search the maps.
    let quiet = unique("quiet");
    h.ok(&["run", "-d", "--name", &quiet, "--network", "n53"]);
    assert!(has_stray(&admitted()), "the pass of a command with nothing to repair searched the maps");

    // A crashed run: the next command's pass finishes it, then searches the maps too.
    let crashed = unique("crashed");
    let point = "run:linked";
    aborted(&h.dp_env(&[("DATAPLANE_FAULT", point)], &["run", "-d", "--name", &crashed, "--network", "n53"]), point);
    let out = h.dp(&["rm", &quiet]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&format!("reconciled: endpoint {crashed} was left")), "{said}");
    assert!(said.contains("reconciled: admission map: unexpected entry") && said.contains(stray), "{said}");
    let after = admitted();
    assert!(!has_stray(&after), "{after:?}");
    // The live endpoint's entry and the parent's own stay; the crashed one's went.
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(h.endpoint_names(), vec![keep.clone()]);

    // Without a crash, `dataplane reconcile` is what finds a hand's entry.
    h.ok(&["bpf", "admit", "add", "--iface", "eth0", stray]);
    h.ok(&["network", "create", "--subnet=10.54.0.0/24", "-o", "parent=eth0", "n54"]);
    assert!(has_stray(&admitted()));
    let report = h.ok(&["reconcile"]);
    assert!(report.contains("admission map: unexpected entry") && report.contains(stray), "{report}");
    assert!(!has_stray(&admitted()));
    assert!(h.reconcile_dry_run().contains("no drift"));
}

/// The CLI's next ordinary command (not `dataplane reconcile`) finishes a killed
/// `network create` or `network rm`: creating the network again works at once.
#[test]
fn a_killed_network_create_or_rm_is_finished_by_the_clis_next_command() {
    for point in ["network-create:vlan-made", "network-create:attached", "network-rm:marked", "network-rm:torn-down"] {
        let (h, _sw) = host();
        let create = ["network", "create", "--subnet=10.53.0.0/24", "-o", "parent=eth0.53", "n53"];
        if point.starts_with("network-rm") {
            h.ok(&create);
            aborted(&h.dp_env(&[("DATAPLANE_FAULT", point)], &["network", "rm", "n53"]), point);
        } else {
            aborted(&h.dp_env(&[("DATAPLANE_FAULT", point)], &create), point);
        }
        let out = h.dp(&create);
        assert!(out.status.success(), "{point}: the next create failed: {}", String::from_utf8_lossy(&out.stderr));
        let name = unique("after");
        h.ok(&["run", "-d", "--name", &name, "--network", "n53"]);
        h.ok(&["rm", "-f", &name]);
        h.ok(&["network", "rm", "n53"]);
        assert_eq!(link_names(&h), BTreeSet::from(["lo".into(), "eth0".into()]), "{point}: links left");
        assert!(!h.bpffs.dir.exists(), "{point}: pins left");
    }
}

/// The Docker plugin killed inside CreateNetwork or DeleteNetwork: restarted (as its
/// systemd unit does), Docker's next call for the network works, and nothing is left.
#[test]
fn a_plugin_killed_in_network_create_or_delete_is_finished_on_restart() {
    use dataplane_tests::plugin::Plugin;
    const CREATE: &str = r#"{"NetworkID":"crash54","Options":{"com.docker.network.generic":{"parent":"eth0.54"}},"IPv4Data":[{"Pool":"10.54.0.0/24","Gateway":"10.54.0.1/24"}],"IPv6Data":[]}"#;
    const DELETE: &str = r#"{"NetworkID":"crash54"}"#;
    for point in ["network-create:vlan-made", "network-create:attached", "network-rm:marked", "network-rm:torn-down"] {
        let (h, _sw) = host();
        let fault = [("DATAPLANE_FAULT", point)];
        let mut p = Plugin::start(&h, &fault);
        if point.starts_with("network-rm") {
            let a = p.call("NetworkDriver.CreateNetwork", CREATE);
            assert!(a.starts_with("HTTP/1.1 200"), "{point}: {a}\n{}", p.log());
            p.call("NetworkDriver.DeleteNetwork", DELETE);
        } else {
            p.call("NetworkDriver.CreateNetwork", CREATE);
        }
        let st = p.wait_exit();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGABRT), "{point}: {}", p.log());
        p.restart(&h, &[]);
        // Docker's next call: the same request again (dockerd retries a failed create, a
        // user runs `docker network rm` again).
        let a = p.call("NetworkDriver.CreateNetwork", CREATE);
        assert!(a.starts_with("HTTP/1.1 200"), "{point}: {a}\n{}", p.log());
        let ep = r#"{"NetworkID":"crash54","EndpointID":"e54","Interface":{"Address":"10.54.0.2/24","AddressIPv6":"","MacAddress":""}}"#;
        let a = p.call("NetworkDriver.CreateEndpoint", ep);
        assert!(a.starts_with("HTTP/1.1 200"), "{point}: {a}\n{}", p.log());
        let a = p.call("NetworkDriver.DeleteEndpoint", r#"{"NetworkID":"crash54","EndpointID":"e54"}"#);
        assert!(a.starts_with("HTTP/1.1 200"), "{point}: {a}");
        let a = p.call("NetworkDriver.DeleteNetwork", DELETE);
        assert!(a.starts_with("HTTP/1.1 200"), "{point}: {a}");
        drop(p);
        let gone = dataplane_tests::lab::wait_until(std::time::Duration::from_secs(5), || {
            link_names(&h) == BTreeSet::from(["lo".into(), "eth0".into()])
        });
        assert!(gone, "{point}: links left: {:?}", link_names(&h));
        assert!(!h.bpffs.dir.exists(), "{point}: pins left");
        let nets: Value = dataplane_tests::json_lines(&h.ok(&["network", "ls", "--format", "json"]));
        assert_eq!(nets.as_array().unwrap().len(), 2, "{point}: {nets:#}");
    }
}

//! The Docker network plugin against a real dockerd (in a namespace of its own) and real
//! containers: the seed document's networks through `docker`, reachability, VLAN tags on
//! the trunk, unknown-MAC drops, anti-spoofing inside a NET_ADMIN container, Docker's
//! IPAM rules, a plugin crash while containers run, and a clean teardown.

use std::{collections::BTreeSet, time::Duration};

use dataplane_tests::docker::{DockerLab, IMAGE};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

fn stats(lab: &DockerLab) -> Value {
    json(&lab.host.ok(&["stats", "--format", "json"]))
}

/// Container `c` (holding NET_ADMIN) adds `addr` beside its own and pings the switch from
/// it: nothing gets through, and its endpoint counts the frames as spoofed.
fn second_address_is_dropped(lab: &DockerLab, c: &str, mac: &str, addr: &str) {
    let spoofed = endpoint_counter(lab, mac, "spoofed_packets");
    lab.ok(&["exec", c, "ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
    let out = lab.docker(&["exec", c, "ping", "-c", "2", "-W", "1", "-I", addr, "172.16.86.1"]);
    assert!(!out.status.success(), "{c}: a second address ({addr}) got through");
    assert!(endpoint_counter(lab, mac, "spoofed_packets") >= spoofed + 2, "{:#}", stats(lab));
    lab.ok(&["exec", c, "ip", "addr", "del", &format!("{addr}/24"), "dev", "eth0"]);
}

fn endpoint_counter(lab: &DockerLab, mac: &str, field: &str) -> u64 {
    let s = stats(lab);
    s["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mac"] == mac)
        .and_then(|e| e[field].as_u64())
        .unwrap_or_else(|| panic!("no endpoint with MAC {mac} in {s:#}"))
}

fn parent_counter(lab: &DockerLab, iface: &str, reason: &str) -> u64 {
    let s = stats(lab);
    s["parents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["iface"] == iface)
        .map_or(0, |p| p["packets"][reason].as_u64().unwrap_or(0))
}

/// A container's address and MAC on its first network, from `docker inspect`.
fn addr_of(lab: &DockerLab, name: &str) -> (String, String) {
    let v = json(&lab.ok(&["inspect", name]));
    let nets = v[0]["NetworkSettings"]["Networks"].as_object().unwrap().values().next().cloned().unwrap();
    (nets["IPAddress"].as_str().unwrap().to_string(), nets["MacAddress"].as_str().unwrap().to_string())
}

fn ping_from(lab: &DockerLab, container: &str, to: &str) -> bool {
    lab.docker(&["exec", container, "ping", "-c", "1", "-W", "1", to]).status.success()
}

fn dp_links(lab: &DockerLab) -> BTreeSet<String> {
    let out = lab.host.ns.exec(&["ip", "-j", "link"]).unwrap();
    json(&out).as_array().unwrap().iter().filter_map(|l| l["ifname"].as_str().map(str::to_string)).collect()
}

#[test]
fn docker_containers_on_dataplane_networks() {
    let mut lab = DockerLab::new("dpD").unwrap();
    let d = lab.driver.clone();
    lab.switch.exec(&["ip", "addr", "add", "172.16.86.1/24", "dev", "up0"]).unwrap();
    let links_before = dp_links(&lab);

    // Errors reach the user through Docker, naming the bad value, and leave no trace.
    let bad = lab.docker(&["network", "create", "-d", &d, "--subnet=10.9.0.0/24", "-o", "parent=nosuch0", "bad_net"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("nosuch0") && err.contains("does not exist"), "{err}");
    let bad = lab.docker(&["network", "create", "-d", &d, "--subnet=10.9.0.0/24", "-o", "colour=red", "bad_net"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("\"colour\""), "{:?}", bad);
    assert_eq!(
        lab.host.ok(&["network", "ls", "--format", "json"]).matches("\"Name\"").count(),
        2,
        "only host and none"
    );

    // The seed document's first network, through docker.
    let net_id = lab.ok(&[
        "network",
        "create",
        "-d",
        &d,
        "--subnet=172.16.86.0/24",
        "--gateway=172.16.86.1",
        "-o",
        "parent=eth0",
        "pub_net",
    ]);
    let store_name = format!("docker-{}", &net_id[..12]);
    let inspect = json(&lab.host.ok(&["network", "inspect", &store_name]));
    assert_eq!(inspect[0]["Labels"]["dataplane.owner"], "docker", "{inspect:#}");
    assert_eq!(inspect[0]["Labels"]["dataplane.docker.network-id"], net_id.as_str());
    assert!(lab.host.ns.xdp_prog_id("eth0").unwrap().is_some(), "no admission program on the parent");

    lab.ok(&[
        "run",
        "-d",
        "--name",
        "c1",
        "--cap-add",
        "NET_ADMIN",
        "--network",
        "pub_net",
        "--ip",
        "172.16.86.10",
        IMAGE,
        "sleep",
        "600",
    ]);
    lab.ok(&["run", "-d", "--name", "c2", "--network", "pub_net", IMAGE, "sleep", "600"]);
    let (ip1, mac1) = addr_of(&lab, "c1");
    let (ip2, mac2) = addr_of(&lab, "c2");
    assert_eq!(ip1, "172.16.86.10");
    assert_eq!(mac2, format!("02:42:ac:10:56:{:02x}", ip2.rsplit('.').next().unwrap().parse::<u8>().unwrap()));
    // The container sees our MAC and address on eth0.
    let inside = lab.ok(&["exec", "c1", "ip", "addr", "show", "eth0"]);
    assert!(inside.contains(&mac1) && inside.contains("172.16.86.10/24"), "{inside}");

    // One store: Docker's endpoints show in dataplane ps, marked as Docker's.
    let ps = dataplane_tests::json_lines(&lab.host.ok(&["ps", "-a", "--format", "json"]));
    let docker_eps: Vec<&Value> = ps.as_array().unwrap().iter().filter(|e| e["Owner"]["kind"] == "docker").collect();
    assert_eq!(docker_eps.len(), 2, "{ps:#}");
    assert!(docker_eps.iter().all(|e| e["Status"].as_str().unwrap().starts_with("docker, in ")), "{ps:#}");

    // Reachability: the switch and the sibling (bridge mode).
    assert!(ping_from(&lab, "c1", "172.16.86.1"), "c1 cannot reach the switch");
    assert!(ping_from(&lab, "c2", "172.16.86.10"), "c2 cannot reach c1");
    assert!(endpoint_counter(&lab, &mac1, "tx_packets") > 0 && endpoint_counter(&lab, &mac1, "rx_packets") > 0);

    // A unicast frame for a MAC nobody was given is dropped at XDP and counted.
    let before = parent_counter(&lab, "eth0", "drop_unknown_destination");
    lab.switch.exec(&["ip", "neigh", "replace", "172.16.86.77", "lladdr", "02:42:de:ad:be:ef", "dev", "up0"]).unwrap();
    let _ = lab.switch.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "172.16.86.77"]);
    assert!(parent_counter(&lab, "eth0", "drop_unknown_destination") >= before + 3, "{:#}", stats(&lab));

    // Anti-spoofing inside a container holding NET_ADMIN: another address, then another MAC.
    second_address_is_dropped(&lab, "c1", &mac1, "172.16.86.99");
    let spoofed = endpoint_counter(&lab, &mac1, "spoofed_packets");
    lab.ok(&["exec", "c1", "ip", "link", "set", "eth0", "address", "02:42:ac:10:56:63"]);
    assert!(!ping_from(&lab, "c1", "172.16.86.1"), "a changed MAC got through");
    assert!(endpoint_counter(&lab, &mac1, "spoofed_packets") > spoofed, "{:#}", stats(&lab));
    lab.ok(&["exec", "c1", "ip", "link", "set", "eth0", "address", &mac1]);
    assert!(ping_from(&lab, "c1", "172.16.86.1"), "c1 cannot reach the switch with its own MAC again");

    // Its anti-spoofing program's pin removed by hand (a tcx link goes with its pin):
    // `dataplane reconcile` finds the interface in the container and attaches it again.
    let ifindex = lab.ok(&["exec", "c1", "cat", "/sys/class/net/eth0/ifindex"]);
    let pin = lab.host.bpffs.dir.join(format!("links/docker/tceg-{}", ifindex.trim()));
    assert!(pin.exists(), "{}", pin.display());
    std::fs::remove_file(&pin).unwrap();
    let report = lab.host.ok(&["reconcile"]);
    assert!(report.contains("no anti-spoofing program on"), "{report}");
    assert!(pin.exists(), "not attached again: {report}");
    assert!(lab.host.reconcile_dry_run().contains("no drift"));
    second_address_is_dropped(&lab, "c1", &mac1, "172.16.86.98");
    assert!(ping_from(&lab, "c1", "172.16.86.1"), "c1 cannot reach the switch after the repair");

    // The CLI shows Docker's objects but refuses to remove them.
    let rm = lab.host.dp(&["network", "rm", &store_name]);
    let err = String::from_utf8_lossy(&rm.stderr);
    assert!(!rm.status.success() && err.contains("belongs to Docker"), "{err}");
    let ep_name = docker_eps[0]["Name"].as_str().unwrap();
    let rm = lab.host.dp(&["rm", "-f", ep_name]);
    assert!(String::from_utf8_lossy(&rm.stderr).contains("belongs to Docker"), "{rm:?}");
    let run = lab.host.dp(&["run", "-d", "--name", "cli1", "--network", &store_name, "--", "sleep", "1"]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("belongs to Docker"), "{run:?}");

    // ip-range and aux addresses: Docker's IPAM allocates from the range, we record both.
    lab.ok(&[
        "network",
        "create",
        "-d",
        &d,
        "--subnet=192.168.32.0/24",
        "--ip-range=192.168.32.128/25",
        "--gateway=192.168.32.254",
        "--aux-address=my-router=192.168.32.129",
        "-o",
        "parent=eth0",
        "macnet32",
    ]);
    lab.ok(&["run", "-d", "--name", "r1", "--network", "macnet32", IMAGE, "sleep", "600"]);
    let (ip_r1, _) = addr_of(&lab, "r1");
    let last: u8 = ip_r1.rsplit('.').next().unwrap().parse().unwrap();
    assert!(last >= 128 && last != 129 && last != 254, "{ip_r1} is outside the range or reserved");
    let bad_ip = lab.docker(&["run", "--rm", "--network", "macnet32", "--ip", "192.168.32.129", IMAGE, "true"]);
    assert!(!bad_ip.status.success(), "the aux address was handed out");

    // --mac-address is honoured (and enforced); --internal networks get no default route;
    // --ipv6 networks take --ip6.
    lab.ok(&[
        "run",
        "-d",
        "--name",
        "m1",
        "--network",
        "pub_net",
        "--mac-address",
        "02:00:00:86:00:42",
        IMAGE,
        "sleep",
        "600",
    ]);
    assert_eq!(addr_of(&lab, "m1").1, "02:00:00:86:00:42");
    assert!(lab.ok(&["exec", "m1", "ip", "link", "show", "eth0"]).contains("02:00:00:86:00:42"));
    assert!(ping_from(&lab, "m1", "172.16.86.1"));
    lab.ok(&["network", "create", "-d", &d, "--internal", "--subnet=10.87.0.0/24", "-o", "parent=eth0", "int_net"]);
    lab.ok(&["run", "-d", "--name", "i1", "--network", "int_net", IMAGE, "sleep", "600"]);
    let routes = lab.ok(&["exec", "i1", "ip", "route"]);
    assert!(!routes.contains("default"), "an internal network got a default route: {routes}");
    lab.ok(&[
        "network",
        "create",
        "-d",
        &d,
        "--ipv6",
        "--subnet=10.88.0.0/24",
        "--subnet=fd00:88::/64",
        "-o",
        "parent=eth0",
        "v6_net",
    ]);
    lab.ok(&["run", "-d", "--name", "s1", "--network", "v6_net", "--ip6", "fd00:88::20", IMAGE, "sleep", "600"]);
    assert!(lab.ok(&["exec", "s1", "ip", "-6", "addr", "show", "eth0"]).contains("fd00:88::20"));
    let ps = dataplane_tests::json_lines(&lab.host.ok(&["ps", "-a", "--format", "json"]));
    assert!(ps.to_string().contains("fd00:88::20"), "the store does not hold the --ip6 address: {ps:#}");
    for c in ["m1", "i1", "s1"] {
        lab.ok(&["rm", "-f", c]);
    }
    for n in ["int_net", "v6_net"] {
        lab.ok(&["network", "rm", n]);
    }

    // An 802.1Q trunk parent, created by us (no 8021q here: the eBPF VLAN device).
    lab.ok(&[
        "network",
        "create",
        "-d",
        &d,
        "--subnet=192.168.50.0/24",
        "--gateway=192.168.50.1",
        "-o",
        "parent=eth0.50",
        "macvlan50",
    ]);
    lab.ok(&["run", "-d", "--name", "v1", "--network", "macvlan50", IMAGE, "sleep", "600"]);
    let (_, mac_v1) = addr_of(&lab, "v1");
    let seen = lab.switch.capture_while("up0", "vlan 50 and arp", 2, || {
        let _ = lab.docker(&["exec", "v1", "ping", "-c", "3", "-W", "1", "192.168.50.1"]);
    });
    assert!(seen.contains("vlan 50") && seen.contains(&mac_v1), "no VLAN-50 tagged ARP from {mac_v1}: {seen:?}");

    // The plugin crashes while containers run: enforcement stays (it is in the kernel),
    // a new plugin process picks the store up, and no address is handed out twice.
    lab.stop_plugin(libc::SIGKILL);
    assert!(ping_from(&lab, "c1", "172.16.86.1"), "traffic stopped with the plugin");
    let spoofed = endpoint_counter(&lab, &mac1, "spoofed_packets");
    lab.ok(&["exec", "c1", "ip", "addr", "add", "172.16.86.98/24", "dev", "eth0"]);
    let _ = lab.docker(&["exec", "c1", "ping", "-c", "1", "-W", "1", "-I", "172.16.86.98", "172.16.86.1"]);
    assert!(endpoint_counter(&lab, &mac1, "spoofed_packets") > spoofed, "anti-spoofing stopped with the plugin");
    lab.start_plugin().unwrap();
    lab.ok(&["run", "-d", "--name", "c3", "--network", "pub_net", IMAGE, "sleep", "600"]);
    let (ip3, mac3) = addr_of(&lab, "c3");
    assert!(ip3 != ip1 && ip3 != ip2 && mac3 != mac1 && mac3 != mac2, "{ip3} {mac3} given twice");
    assert!(ping_from(&lab, "c3", "172.16.86.10"), "c3 cannot reach c1");
    let ps = dataplane_tests::json_lines(&lab.host.ok(&["ps", "-a", "--format", "json"]));
    assert_eq!(ps.as_array().unwrap().len(), 5, "{ps:#}");

    // docker rm and network rm leave no links, pins or rows.
    for c in ["c1", "c2", "c3", "r1", "v1"] {
        lab.ok(&["rm", "-f", c]);
    }
    for n in ["pub_net", "macnet32", "macvlan50"] {
        lab.ok(&["network", "rm", n]);
    }
    assert_eq!(dataplane_tests::json_lines(&lab.host.ok(&["ps", "-a", "--format", "json"])), serde_json::json!([]));
    assert_eq!(lab.host.ok(&["network", "ls", "--format", "json"]).matches("\"Name\"").count(), 2);
    assert_eq!(dp_links(&lab), links_before, "links left behind");
    assert!(lab.host.ns.xdp_prog_id("eth0").unwrap().is_none(), "XDP left on the parent");
    let pins: Vec<_> = walk(&lab.host.bpffs.dir);
    assert!(pins.is_empty(), "pins left behind: {pins:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn docker_plugin_killed_mid_endpoint_and_dockerd_restarts() {
    let mut lab = DockerLab::new("dpK").unwrap();
    let d = lab.driver.clone();
    lab.switch.exec(&["ip", "addr", "add", "10.61.0.1/24", "dev", "up0"]).unwrap();
    let links_before = dp_links(&lab);
    lab.ok(&[
        "network",
        "create",
        "-d",
        &d,
        "--subnet=10.61.0.0/24",
        "--gateway=10.61.0.1",
        "-o",
        "parent=eth0",
        "n61",
    ]);

    // The plugin dies half-way through CreateEndpoint (interface and programs made, row
    // not yet ready): the container fails to start, and the next plugin process removes
    // what the dead one left before it serves anything.
    lab.stop_plugin(libc::SIGTERM);
    lab.start_plugin_env(&[("DATAPLANE_FAULT", "docker-endpoint:linked")]).unwrap();
    let run = lab.docker(&["run", "--rm", "--network", "n61", IMAGE, "true"]);
    assert!(!run.status.success(), "the container started through a crashed plugin");
    assert!(dp_links(&lab).len() > links_before.len(), "the fault point hit before the interface was made");
    lab.stop_plugin(libc::SIGKILL);
    lab.start_plugin().unwrap();
    let log = std::fs::read_to_string(lab.plugin_log()).unwrap();
    assert!(log.contains("was left Creating by process"), "{log}");
    assert_eq!(dp_links(&lab), links_before, "the crashed endpoint's interface is still there");
    assert_eq!(dataplane_tests::json_lines(&lab.host.ok(&["ps", "-a", "--format", "json"])), serde_json::json!([]));

    // dockerd restarts (as on a reboot of the daemon) with a --restart always container:
    // Docker re-creates its endpoint through the plugin, and it works.
    lab.ok(&["run", "-d", "--restart", "always", "--name", "ra", "--network", "n61", IMAGE, "sleep", "600"]);
    assert!(ping_from(&lab, "ra", "10.61.0.1"));
    lab.stop_dockerd();
    lab.start_dockerd().unwrap();
    let mut running = false;
    for _ in 0..100 {
        if lab.docker(&["inspect", "-f", "{{.State.Running}}", "ra"]).stdout.starts_with(b"true") {
            running = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        running,
        "ra was not restarted by dockerd; plugin log:\n{}",
        std::fs::read_to_string(lab.plugin_log()).unwrap()
    );
    assert!(ping_from(&lab, "ra", "10.61.0.1"), "ra cannot reach the switch after the dockerd restart");
    let ps = dataplane_tests::json_lines(&lab.host.ok(&["ps", "-a", "--format", "json"]));
    assert_eq!(ps.as_array().unwrap().len(), 1, "stale endpoints after the restart: {ps:#}");
    let (ip, _) = addr_of(&lab, "ra");
    assert_eq!(ps[0]["Networks"][0]["IPv4Address"], ip.as_str(), "{ps:#}");
}

/// Host access through Docker: the host interface's address is reserved in Docker's IPAM
/// (`--aux-address dataplane-host=IP`), so Docker never hands it to a container; without
/// the reservation the network is refused with that advice. The host and a container
/// reach each other; `docker network rm` takes the interface away.
#[test]
fn docker_host_access_with_a_reserved_address() {
    let lab = DockerLab::new("dpDh").unwrap();
    let d = lab.driver.clone();
    let links_before = dp_links(&lab);
    let bad = lab.docker(&[
        "network",
        "create",
        "-d",
        &d,
        "--subnet=10.96.0.0/24",
        "-o",
        "parent=eth0",
        "-o",
        "host_access=true",
        "hn",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--aux-address dataplane-host=IP"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert_eq!(dp_links(&lab), links_before, "a refused network left an interface");
    lab.ok(&[
        "network",
        "create",
        "-d",
        &d,
        "--subnet=10.96.0.0/24",
        "--aux-address",
        "dataplane-host=10.96.0.250",
        "-o",
        "parent=eth0",
        "-o",
        "host_access=true",
        "hn",
    ]);
    let shim: Vec<String> =
        dp_links(&lab).difference(&links_before).filter(|l| l.starts_with("dph")).cloned().collect();
    assert_eq!(shim.len(), 1, "{shim:?}");
    let addrs = lab.host.ns.exec(&["ip", "-br", "addr", "show", "dev", &shim[0]]).unwrap();
    assert!(addrs.contains("10.96.0.250/24"), "{addrs}");
    lab.ok(&["run", "-d", "--name", "hc", "--network", "hn", IMAGE, "sleep", "600"]);
    let (ip, _) = addr_of(&lab, "hc");
    assert_ne!(ip, "10.96.0.250");
    assert!(lab.host.ns.exec(&["ping", "-c", "1", "-W", "2", &ip]).is_ok(), "the host cannot reach its container");
    assert!(ping_from(&lab, "hc", "10.96.0.250"), "the container cannot reach the host");
    lab.ok(&["rm", "-f", "hc"]);
    lab.ok(&["network", "rm", "hn"]);
    assert_eq!(dp_links(&lab), links_before, "the host interface outlived the network");
}

/// A QinQ parent through Docker (which its own macvlan driver refuses): the network is
/// made with its S-tag/C-tag device, a container runs on it, and removal takes the device.
#[test]
fn docker_qinq_parent() {
    let lab = DockerLab::new("dpDq").unwrap();
    let d = lab.driver.clone();
    let links_before = dp_links(&lab);
    lab.ok(&["network", "create", "-d", &d, "--subnet=10.99.0.0/24", "-o", "parent=eth0.100.50", "qn"]);
    assert!(dp_links(&lab).contains("eth0.100.50"), "{:?}", dp_links(&lab));
    lab.ok(&["run", "--rm", "--network", "qn", IMAGE, "true"]);
    lab.ok(&["network", "rm", "qn"]);
    assert_eq!(dp_links(&lab), links_before, "QinQ devices outlived the network");
}

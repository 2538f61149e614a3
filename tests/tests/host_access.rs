//! `-o host_access=true`: the host reaches its own macvlan endpoints (and they reach it)
//! through an interface dataplane makes and owns in the host's namespace; without the
//! option, as with Docker's macvlan, it cannot.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    time::Duration,
};

use dataplane_tests::lab::{host_with_switch, unique, Host};
use serde_json::Value;

/// Run `f` on a thread inside the namespace at `ns`.
fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(ns).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns on this short-lived thread only.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        f()
    })
    .join()
    .unwrap()
}

fn ipv4_of(h: &Host, endpoint: &str) -> String {
    h.endpoint_json(endpoint)["Networks"][0]["IPv4Address"].as_str().unwrap().to_string()
}

fn host_pings(h: &Host, ip: &str) -> bool {
    h.ns.exec(&["ping", "-c", "1", "-W", "1", ip]).is_ok()
}

fn link_names(h: &Host) -> Vec<String> {
    let v: Value = serde_json::from_str(&h.ns.exec(&["ip", "-j", "link", "show"]).unwrap()).unwrap();
    v.as_array().unwrap().iter().map(|l| l["ifname"].as_str().unwrap().to_string()).collect()
}

#[test]
fn the_host_reaches_its_endpoints_only_with_host_access() {
    let (h, _sw) = host_with_switch("dpH").unwrap();
    let before = link_names(&h);
    let bad = h.dp(&["network", "create", "--subnet=10.81.0.0/24", "-o", "parent=eth0", "-o", "host_access=yes", "ha"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid host_access \"yes\""), "{bad:?}");
    assert_eq!(link_names(&h), before, "a refused network left an interface");

    // Without the option: the host has no way to its endpoints.
    h.ok(&["network", "create", "--subnet=10.82.0.0/24", "-o", "parent=eth0", "plain"]);
    let lone = unique("lone");
    h.ok(&["run", "-d", "--name", &lone, "--network", "plain"]);
    assert!(!host_pings(&h, &ipv4_of(&h, &lone)), "the host reached an endpoint without host_access");
    h.ok(&["rm", "-f", &lone]);
    h.ok(&["network", "rm", "plain"]);

    h.ok(&["network", "create", "--subnet=10.81.0.0/24", "-o", "parent=eth0", "-o", "host_access=true", "ha"]);
    let net: Value = serde_json::from_str(&h.ok(&["network", "inspect", "ha"])).unwrap();
    let shim = net[0]["Containers"]
        .as_object()
        .unwrap()
        .values()
        .find(|c| c["Name"] == "ha-host")
        .unwrap_or_else(|| panic!("no host-access interface in inspect: {net:#}"))
        .clone();
    let shim_ip = shim["IPv4Address"].as_str().unwrap().split('/').next().unwrap().to_string();
    let ep = unique("web");
    h.ok(&["run", "-d", "--name", &ep, "--network", "ha"]);
    let ep_ip = ipv4_of(&h, &ep);
    assert_ne!(ep_ip, shim_ip, "the host's address was handed out again");

    // Host -> endpoint: ping and a TCP exchange; endpoint -> host: ping.
    assert!(host_pings(&h, &ep_ip), "the host cannot reach its endpoint through host access");
    let ep_ns = std::path::PathBuf::from(format!("/run/netns/{ep}"));
    let bind = format!("{ep_ip}:7070");
    let listener = in_netns(&ep_ns, move || TcpListener::bind(bind).unwrap());
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"pong!").unwrap();
        buf
    });
    let target = format!("{ep_ip}:7070");
    let reply = in_netns(&h.ns.path(), move || {
        let mut c = TcpStream::connect_timeout(&target.parse().unwrap(), Duration::from_secs(3)).unwrap();
        c.write_all(b"ping!").unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(&reply, b"pong!");
    assert_eq!(&server.join().unwrap(), b"ping!");
    assert!(
        h.dp(&["exec", &ep, "ping", "-c", "1", "-W", "1", &shim_ip]).status.success(),
        "the endpoint cannot reach the host"
    );
    // Counted like any endpoint.
    let stats: Value = serde_json::from_str(&h.ok(&["stats", "--format", "json", "ha-host"])).unwrap();
    let s = &stats["endpoints"][0];
    assert!(s["rx_packets"].as_u64().unwrap() >= 2 && s["tx_packets"].as_u64().unwrap() >= 2, "{stats:#}");

    // It belongs to the network: not removable alone, repaired by reconcile.
    let rm = h.dp(&["rm", "-f", "ha-host"]);
    assert!(!rm.status.success());
    assert!(
        String::from_utf8_lossy(&rm.stderr)
            .contains("endpoint ha-host is network ha's host-access interface: it goes with the network"),
        "{rm:?}"
    );
    let ifname = link_names(&h).into_iter().find(|l| l.starts_with("dph")).expect("host-access interface");
    h.ns.exec(&["ip", "link", "del", &ifname]).unwrap();
    assert!(!host_pings(&h, &ep_ip));
    h.ok(&["reconcile"]);
    assert!(link_names(&h).contains(&ifname), "reconcile did not re-create {ifname}");
    assert!(host_pings(&h, &ep_ip), "no host access after reconcile");

    // A reserved aux address `dataplane-host` is taken by the interface instead.
    h.ok(&[
        "network",
        "create",
        "--subnet=10.83.0.0/24",
        "--aux-address",
        "dataplane-host=10.83.0.200",
        "-o",
        "parent=eth0",
        "-o",
        "host_access=true",
        "hb",
    ]);
    let shim_b = link_names(&h).into_iter().find(|l| l.starts_with("dph") && *l != ifname).expect("second interface");
    let a = h.ns.exec(&["ip", "-br", "addr", "show", "dev", &shim_b]).unwrap();
    assert!(a.contains("10.83.0.200/24"), "{a}");
    h.ok(&["network", "rm", "hb"]);

    // Removed with the network, leaving the host's interfaces as they were.
    let active = h.dp(&["network", "rm", "ha"]);
    assert!(!active.status.success(), "a network with an endpoint was removed");
    assert!(
        String::from_utf8_lossy(&active.stderr).contains(&format!("network ha has active endpoints ({ep})")),
        "{active:?}"
    );
    // A refused removal leaves the host's way in as it was.
    assert!(link_names(&h).contains(&ifname), "a refused network rm removed {ifname}");
    assert!(host_pings(&h, &ep_ip), "no host access after a refused network rm");
    h.ok(&["rm", "-f", &ep]);
    h.ok(&["network", "rm", "ha"]);
    assert_eq!(link_names(&h), before);
    assert!(h.endpoint_names().is_empty());
}

/// `reconcile` on a host without a default route leaves it without one: the host-access
/// interface routes the network's subnet only (it used to be "repaired" with a default
/// route via the network's gateway). Two networks' host interfaces share the host's
/// namespace without either being taken for a stray interface of the other.
#[test]
fn reconcile_never_gives_the_host_a_default_route() {
    let (h, _sw) = host_with_switch("dpHr").unwrap();
    let defaults = || h.ns.exec(&["ip", "-j", "route", "show", "default"]).unwrap();
    assert_eq!(defaults().trim(), "[]", "the test host has a default route to begin with");
    h.ok(&[
        "network",
        "create",
        "--subnet=10.77.0.0/24",
        "--gateway=10.77.0.1",
        "-o",
        "parent=eth0",
        "-o",
        "host_access=true",
        "hnet",
    ]);
    h.ok(&[
        "network",
        "create",
        "--subnet=10.78.0.0/24",
        "--gateway=10.78.0.1",
        "-o",
        "parent=eth0",
        "-o",
        "host_access=true",
        "hnet2",
    ]);
    let shims: Vec<String> = link_names(&h).into_iter().filter(|l| l.starts_with("dph")).collect();
    assert_eq!(shims.len(), 2, "{shims:?}");
    let dry = h.reconcile_dry_run();
    assert!(dry.contains("no drift"), "{dry}");
    let report = h.ok(&["reconcile"]);
    assert!(report.contains("no drift"), "{report}");
    assert_eq!(defaults().trim(), "[]", "reconcile added a default route to the host");
    let now: Vec<String> = link_names(&h).into_iter().filter(|l| l.starts_with("dph")).collect();
    assert_eq!(now, shims, "reconcile removed a host-access interface");
    h.ok(&["network", "rm", "hnet", "hnet2"]);
}

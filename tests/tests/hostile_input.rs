//! Bad and hostile input to the CLI, table-driven: every case must fail with its exit code
//! and an error naming the bad value, and leave no trace: no network or endpoint row, no
//! namespace, no link, no map entry.

use std::{collections::BTreeSet, path::Path, process::Command};

use dataplane_tests::{
    dataplane_bin,
    lab::{host_with_switch, Host},
};
use serde_json::Value;

struct Trace {
    networks: usize,
    endpoints: usize,
    links: BTreeSet<String>,
    admitted: usize,
}

fn trace(h: &Host) -> Trace {
    let nets: Value = dataplane_tests::json_lines(&h.ok(&["network", "ls", "--format", "json"]));
    let links: Value = serde_json::from_str(&h.ns.exec(&["ip", "-j", "link"]).unwrap()).unwrap();
    let admitted: Value = serde_json::from_str(&h.ok(&["bpf", "admit", "ls", "--format", "json"])).unwrap();
    Trace {
        networks: nets.as_array().unwrap().len(),
        endpoints: h.endpoint_names().len(),
        links: links.as_array().unwrap().iter().filter_map(|l| l["ifname"].as_str().map(str::to_string)).collect(),
        admitted: admitted.as_array().unwrap().len(),
    }
}

#[test]
fn fifty_bad_inputs_fail_clearly_and_leave_no_trace() {
    let (h, _sw) = host_with_switch("dpHI").unwrap();
    h.ok(&["network", "create", "--subnet=172.16.86.0/24", "--gateway=172.16.86.1", "-o", "parent=eth0", "pub_net"]);
    h.ok(&["network", "create", "--subnet=10.9.0.0/30", "--gateway=10.9.0.1", "-o", "parent=eth0", "tiny"]);
    // tiny (/30) has exactly one free address: take it so the pool is exhausted.
    h.ok(&["run", "-d", "--name", "hi-holder", "--network", "tiny"]);
    let before = trace(&h);
    let long_name = "n".repeat(65);
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        // network create: CIDRs and addresses
        (
            vec!["network", "create", "--subnet=172.16.86.1/24", "-o", "parent=eth0", "n1"],
            1,
            "host bits are set; did you mean 172.16.86.0/24?",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/33", "-o", "parent=eth0", "n1"],
            1,
            "invalid CIDR \"10.0.0.0/33\"",
        ),
        (vec!["network", "create", "--subnet=10.0.0.0", "-o", "parent=eth0", "n1"], 1, "invalid CIDR \"10.0.0.0\""),
        (vec!["network", "create", "--subnet=10.0.0.0/", "-o", "parent=eth0", "n1"], 1, "invalid CIDR \"10.0.0.0/\""),
        (
            vec!["network", "create", "--subnet=10.0.0.0/-1", "-o", "parent=eth0", "n1"],
            1,
            "invalid CIDR \"10.0.0.0/-1\"",
        ),
        (
            vec!["network", "create", "--subnet=999.0.0.0/8", "-o", "parent=eth0", "n1"],
            1,
            "invalid CIDR \"999.0.0.0/8\"",
        ),
        (
            vec!["network", "create", "--subnet=fd00::/129", "--ipv6", "-o", "parent=eth0", "n1"],
            1,
            "invalid CIDR \"fd00::/129\"",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "--gateway=10.0.1.1", "-o", "parent=eth0", "n1"],
            1,
            "gateway 10.0.1.1 is not inside subnet 10.0.0.0/24",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "--gateway=x", "-o", "parent=eth0", "n1"],
            1,
            "invalid IP address \"x\"",
        ),
        (
            vec![
                "network",
                "create",
                "--subnet=10.0.0.0/24",
                "--gateway=10.0.0.1",
                "--gateway=10.0.0.2",
                "-o",
                "parent=eth0",
                "n1",
            ],
            1,
            "2 gateways for 1 subnets",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "--ip-range=10.0.0.0/16", "-o", "parent=eth0", "n1"],
            1,
            "ip range 10.0.0.0/16 is larger than subnet 10.0.0.0/24",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "--ip-range=10.0.1.0/25", "-o", "parent=eth0", "n1"],
            1,
            "ip range 10.0.1.0/25 is not inside subnet 10.0.0.0/24",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "--ip-range=10.0.0.1/25", "-o", "parent=eth0", "n1"],
            1,
            "invalid subnet 10.0.0.1/25: host bits are set",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "--aux-address=router", "-o", "parent=eth0", "n1"],
            1,
            "invalid aux address \"router\"",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "--aux-address==10.0.0.5", "-o", "parent=eth0", "n1"],
            1,
            "invalid aux address \"=10.0.0.5\"",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "--aux-address=r=10.9.9.9", "-o", "parent=eth0", "n1"],
            1,
            "aux address r=10.9.9.9 is not inside any --subnet",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "--aux-address=r=nope", "-o", "parent=eth0", "n1"],
            1,
            "invalid IP address \"nope\"",
        ),
        (
            vec!["network", "create", "--subnet=172.16.0.0/16", "-o", "parent=eth0", "n1"],
            1,
            "subnet 172.16.0.0/16 overlaps subnet 172.16.86.0/24 of network pub_net",
        ),
        (
            vec!["network", "create", "--subnet=10.1.0.0/16", "--subnet=10.1.2.0/24", "-o", "parent=eth0", "n1"],
            1,
            "subnets 10.1.0.0/16 and 10.1.2.0/24 overlap",
        ),
        (
            vec!["network", "create", "--subnet=fd00:1::/64", "-o", "parent=eth0", "n1"],
            1,
            "IPv6 subnet fd00:1::/64 given without --ipv6",
        ),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "--ipv6", "-o", "parent=eth0", "n1"],
            1,
            "--ipv6 needs an IPv6 --subnet",
        ),
        // network create: names, drivers, options, parents
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "parent=eth0", "pub_net"],
            1,
            "network with name pub_net already exists",
        ),
        (vec!["network", "create", "-o", "parent=eth0", "host"], 1, "network name \"host\" is predefined"),
        (vec!["network", "create", "-o", "parent=eth0", "none"], 1, "network name \"none\" is predefined"),
        (vec!["network", "create", "-o", "parent=eth0", "-bad"], 2, "unexpected argument '-b'"),
        (vec!["network", "create", "-o", "parent=eth0", "a/b"], 1, "invalid network name \"a/b\""),
        (vec!["network", "create", "-o", "parent=eth0", &long_name], 1, "invalid network name"),
        (vec!["network", "create", "-d", "bridge", "n1"], 1, "driver \"bridge\" is not supported"),
        (vec!["network", "create", "-d", "overlay", "n1"], 1, "driver \"overlay\" is not supported"),
        (vec!["network", "create", "-d", "host", "n1"], 1, "only one instance of the \"host\" network is allowed"),
        (vec!["network", "create", "--subnet=10.2.0.0/24", "n1"], 1, "the macvlan driver needs a parent interface"),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "parent", "n1"],
            1,
            "invalid option \"parent\": expected KEY=VALUE",
        ),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "color=blue", "-o", "parent=eth0", "n1"],
            1,
            "unknown option \"color\"",
        ),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "parent=eth0", "-o", "parent=eth0", "n1"],
            1,
            "option \"parent\" given twice",
        ),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "parent=eth0", "-o", "macvlan_mode=turbo", "n1"],
            1,
            "invalid macvlan_mode \"turbo\"",
        ),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "parent=nope0", "n1"],
            1,
            "parent interface nope0 does not exist",
        ),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "parent=lo", "n1"],
            1,
            "parent lo is the loopback device",
        ),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "parent=lo.5", "n1"],
            1,
            "the trunk lo is the loopback device",
        ),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "parent=eth0.0", "n1"],
            1,
            "invalid 802.1Q parent \"eth0.0\"",
        ),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "parent=eth0.4095", "n1"],
            1,
            "invalid 802.1Q parent \"eth0.4095\"",
        ),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "parent=eth0.1.2.3", "n1"],
            1,
            "invalid 802.1Q parent \"eth0.1.2.3\"",
        ),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "parent=eth0.x", "n1"],
            1,
            "invalid 802.1Q parent \"eth0.x\"",
        ),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "parent=averylongtrunk.50", "n1"],
            1,
            "longer than the kernel allows (15 characters)",
        ),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "parent=nope1.50", "n1"],
            1,
            "trunk interface nope1 does not exist",
        ),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "parent=eth 0", "n1"],
            1,
            "invalid parent interface name \"eth 0\"",
        ),
        (
            vec!["network", "create", "--subnet=10.2.0.0/24", "-o", "parent=eth0", "-o", "macvlan_mode=passthru", "n1"],
            1,
            "passthru mode needs the parent to itself",
        ),
        // network rm / inspect / connect
        (vec!["network", "rm", "host"], 1, "host is a predefined network and cannot be removed"),
        (vec!["network", "rm", "ghost"], 1, "network ghost not found"),
        (vec!["network", "rm", "tiny"], 1, "network tiny has active endpoints (hi-holder)"),
        (vec!["network", "inspect", "ghost"], 1, "no such network: ghost"),
        (vec!["network", "connect", "host", "hi-holder"], 1, "cannot connect to the predefined network host"),
        (vec!["network", "connect", "pub_net", "ghost"], 1, "endpoint ghost not found"),
        (vec!["network", "connect", "ghost", "hi-holder"], 1, "network ghost not found"),
        (
            vec!["network", "disconnect", "pub_net", "hi-holder"],
            1,
            "endpoint hi-holder is not connected to network pub_net",
        ),
        // run: addresses, MACs, names, namespaces, pools
        (vec!["run", "-d", "--name", "x1", "--network", "ghost"], 125, "network ghost not found"),
        (
            vec!["run", "-d", "--name", "x1", "--network", "pub_net", "--ip", "172.16.86.300"],
            125,
            "invalid IP address \"172.16.86.300\"",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "pub_net", "--ip", "10.0.0.5"],
            125,
            "address 10.0.0.5 is not in any subnet of network pub_net",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "pub_net", "--ip", "172.16.86.1"],
            125,
            "address 172.16.86.1 is reserved on network pub_net (the gateway)",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "pub_net", "--ip", "172.16.86.0"],
            125,
            "(the subnet's network address)",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "pub_net", "--ip", "172.16.86.255"],
            125,
            "(the subnet's broadcast address)",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "pub_net", "--ip6", "fd00::5"],
            125,
            "--ip6 fd00::5 given but network pub_net has no IPv6",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "tiny"],
            125,
            "address pool of subnet 10.9.0.0/30 is exhausted",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "pub_net", "--mac-address", "zz:zz"],
            125,
            "invalid MAC address \"zz:zz\"",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "pub_net", "--mac-address", "ff:ff:ff:ff:ff:ff"],
            125,
            "invalid --mac-address ff:ff:ff:ff:ff:ff",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "pub_net", "--mac-address", "00:00:00:00:00:00"],
            125,
            "invalid --mac-address 00:00:00:00:00:00",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "none", "--ip", "10.0.0.1"],
            125,
            "cannot be used with --network none",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "host", "--ip", "10.0.0.1"],
            125,
            "cannot be used with --network host",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "host", "--netns", "/run/netns/x"],
            125,
            "--netns cannot be used with --network host",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "pub_net", "--netns", "/run/netns/dp-nope"],
            125,
            "network namespace /run/netns/dp-nope does not exist",
        ),
        (
            vec!["run", "-d", "--name", "hi-holder", "--network", "none"],
            125,
            "endpoint name hi-holder is already in use",
        ),
        (vec!["run", "-d", "--name", "x y", "--network", "none"], 125, "invalid endpoint name \"x y\""),
        (vec!["run", "-d", "--network", "none"], 2, "--name <NAME>"),
        (
            vec!["run", "--name", "x1", "--network", "none", "--", "dp-no-such-command"],
            127,
            "command \"dp-no-such-command\" not found",
        ),
        // other verbs
        (vec!["rm", "ghost"], 1, "endpoint ghost not found"),
        (vec!["exec", "ghost", "true"], 1, "endpoint ghost not found"),
        (vec!["stop", "ghost"], 1, "endpoint ghost not found"),
        (vec!["stats", "ghost"], 1, "endpoint ghost not found"),
        (vec!["bpf", "admit", "add", "--iface", "eth0", "01:00:5e:00:00:01"], 1, "MAC 01:00:5e:00:00:01 is a group"),
        (
            vec!["bpf", "admit", "add", "--iface", "eth0", "--vlan", "5000", "02:00:00:00:00:01"],
            1,
            "VLAN id 5000 is out of range",
        ),
        (vec!["bpf", "load", "--iface", "nope0"], 1, "interface \"nope0\" not found"),
        (vec!["bpf", "reload", "--log-level", "loud"], 2, "invalid value 'loud' for '--log-level"),
        (vec!["frobnicate"], 2, "unrecognized subcommand 'frobnicate'"),
    ];
    assert!(cases.len() >= 50, "only {} cases", cases.len());
    for (args, code, want) in &cases {
        let out = h.dp(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: exit code (stderr: {err})");
        assert!(err.contains(want), "{args:?}: want {want:?} in stderr, got: {err}");
        let now = trace(&h);
        assert_eq!(now.networks, before.networks, "{args:?} left a network row");
        assert_eq!(now.endpoints, before.endpoints, "{args:?} left an endpoint row");
        assert_eq!(now.links, before.links, "{args:?} left a link");
        assert_eq!(now.admitted, before.admitted, "{args:?} left a map entry");
        assert!(!Path::new("/run/netns/x1").exists(), "{args:?} left a namespace");
    }

    // Unwritable state dir: a clear error, nothing created.
    let out =
        Command::new(dataplane_bin()).args(["--state-dir", "/proc/dataplane-state", "network", "ls"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot create state dir /proc/dataplane-state"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without root: refused before anything is touched.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(dataplane_bin())
        .args(["--state-dir", "/tmp/dataplane-nonroot", "network", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs root (missing CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new("/tmp/dataplane-nonroot").exists());
}

#[test]
fn state_and_pins_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let (h, _sw) = host_with_switch("dpHP").unwrap();
    h.ok(&["network", "create", "--subnet=10.3.0.0/24", "-o", "parent=eth0", "p"]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&h.state), 0o700, "state dir");
    assert_eq!(mode(&h.state.join("state.db")), 0o600, "database");
    assert_eq!(mode(&h.bpffs.dir), 0o700, "bpffs dir");
    for sub in ["maps", "links"] {
        assert_eq!(mode(&h.bpffs.dir.join(sub)), 0o700, "{sub} dir");
    }
    for entry in std::fs::read_dir(h.bpffs.dir.join("maps")).unwrap().flatten() {
        assert_eq!(mode(&entry.path()) & 0o077, 0, "{} is readable by others", entry.path().display());
    }
}

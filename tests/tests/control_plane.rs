//! The Docker-style control plane, end to end: a "host" namespace with its own dataplane
//! instance, a veth "trunk" to an upstream "switch" namespace, real traffic.

use std::{collections::BTreeSet, path::Path, process::Output};

use dataplane_tests::{
    lab::{unique, veth_between, Host},
    Netns,
};
use serde_json::Value;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Host `h` with parent `eth0`, wired to switch namespace `sw` (interface `up0`).
fn host_and_switch() -> (Host, Netns) {
    dataplane_tests::lab::host_with_switch("dpH").unwrap()
}

/// Whether `from` gets an answer from `to`. Panics if the command itself failed (no such
/// endpoint, ping broken), so a negative check cannot pass because of that.
fn ping(h: &Host, from: &str, to: &str) -> bool {
    let out = h.dp(&["exec", from, "ping", "-c", "1", "-W", "1", to]);
    let err = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => true,
        // ping's own "no reply".
        Some(1) if !err.contains("dataplane: error") => false,
        code => panic!("ping from {from} to {to} did not run (exit {code:?}): {err}"),
    }
}

/// tcpdump on `iface` in `h`'s namespace (link-level headers, numbers only), returned once
/// it listens (slow machines take seconds to start it).
fn capture(h: &Host, iface: &str, filter: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut c = std::process::Command::new("nsenter")
        .arg(format!("--net={}", h.ns.path().display()))
        .args(["timeout", "60", "tcpdump", "-i", iface, "-e", "-n", "-l", filter])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tcpdump");
    let mut said = String::new();
    let mut err = std::io::BufReader::new(c.stderr.take().expect("piped"));
    while err.read_line(&mut said).unwrap_or(0) > 0 {
        if said.contains("listening on") {
            // Its later output (statistics at exit) goes nowhere we read.
            std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
            return c;
        }
    }
    let _ = c.kill();
    let _ = c.wait();
    panic!("tcpdump on {iface} did not start: {said}");
}

/// What a [`capture`] printed, after stopping it (SIGINT: it flushes and exits).
fn finish(c: std::process::Child) -> String {
    // Frames already captured may still be on their way through the stack.
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: plain kill(2) on our child (nsenter execs timeout, which passes it on).
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    String::from_utf8_lossy(&c.wait_with_output().expect("tcpdump").stdout).into_owned()
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

fn ep_json(h: &Host, name: &str) -> Value {
    let all = dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"]));
    all.as_array()
        .unwrap()
        .iter()
        .find(|e| e["Name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no endpoint {name} in {all:#}"))
}

/// Links of a namespace (by name) as JSON, read inside it.
fn links_in(ns_path: &str) -> Vec<Value> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={ns_path}"))
        .args(["ip", "-j", "-d", "link"])
        .output()
        .unwrap();
    json(&String::from_utf8_lossy(&out.stdout)).as_array().cloned().unwrap_or_default()
}

fn link_names(ns: &Netns) -> BTreeSet<String> {
    links_in(&ns.path().display().to_string()).iter().filter_map(|l| l["ifname"].as_str().map(str::to_string)).collect()
}

#[test]
fn bridge_mode_endpoints_reach_each_other_and_the_switch() {
    let (h, sw) = host_and_switch();
    sw.exec(&["ip", "addr", "add", "172.16.86.1/24", "dev", "up0"]).unwrap();
    let id = h.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet=172.16.86.0/24",
        "--gateway=172.16.86.1",
        "-o",
        "parent=eth0",
        "pub_net",
    ]);
    assert_eq!(id.trim().len(), 64, "network create prints a 64-hex id: {id}");
    assert!(id.trim().chars().all(|c| c.is_ascii_hexdigit()));
    let (web, db) = (unique("web"), unique("db"));
    h.ok(&["run", "-d", "--name", &web, "--network", "pub_net"]);
    h.ok(&["run", "-d", "--name", &db, "--network", "pub_net"]);

    let w = ep_json(&h, &web);
    assert_eq!(w["Networks"][0]["IPv4Address"], "172.16.86.2");
    assert_eq!(w["Networks"][0]["MacAddress"], "02:42:ac:10:56:02");
    assert_eq!(ep_json(&h, &db)["Networks"][0]["IPv4Address"], "172.16.86.3");

    // Inside the endpoint: eth0 with its MAC and address, lo up, default route via the gateway.
    let ns = format!("/run/netns/{web}");
    let addrs = json(&String::from_utf8_lossy(&h.dp(&["exec", &web, "ip", "-j", "addr"]).stdout));
    let eth0 = addrs.as_array().unwrap().iter().find(|l| l["ifname"] == "eth0").expect("eth0 in the endpoint");
    assert_eq!(eth0["address"], "02:42:ac:10:56:02");
    assert!(eth0["addr_info"].as_array().unwrap().iter().any(|a| a["local"] == "172.16.86.2" && a["prefixlen"] == 24));
    let lo = links_in(&ns).into_iter().find(|l| l["ifname"] == "lo").unwrap();
    assert!(lo["flags"].as_array().unwrap().iter().any(|f| f == "UP"), "lo is not up");
    let eth0_link = links_in(&ns).into_iter().find(|l| l["ifname"] == "eth0").unwrap();
    assert_eq!(eth0_link["linkinfo"]["info_kind"], "macvlan");
    assert_eq!(eth0_link["linkinfo"]["info_data"]["mode"], "bridge");
    let routes = json(&String::from_utf8_lossy(&h.dp(&["exec", &web, "ip", "-j", "route"]).stdout));
    assert!(
        routes.as_array().unwrap().iter().any(|r| r["dst"] == "default" && r["gateway"] == "172.16.86.1"),
        "{routes:#}"
    );

    assert!(ping(&h, &web, "172.16.86.3"), "web cannot reach db (bridge mode)");
    assert!(ping(&h, &web, "172.16.86.1"), "web cannot reach the switch");
    assert!(sw.exec(&["ping", "-c", "1", "-W", "1", "172.16.86.3"]).is_ok(), "the switch cannot reach db");

    // rm leaves nothing: namespace, links, map entries.
    h.ok(&["rm", &web, &db]);
    assert!(!Path::new(&ns).exists(), "{ns} left behind");
    assert_eq!(link_names(&h.ns), BTreeSet::from(["lo".to_string(), "eth0".to_string()]));
    let admitted = json(&h.ok(&["bpf", "admit", "ls", "--format", "json"]));
    assert_eq!(admitted.as_array().unwrap().len(), 1, "only the host's own MAC stays admitted: {admitted:#}");
    h.ok(&["network", "rm", "pub_net"]);
    assert!(!h.bpffs.dir.exists(), "pins left after the last network went");
    assert_eq!(h.ns.xdp_prog_id("eth0").unwrap(), None);
}

#[test]
fn ip_range_and_aux_addresses_follow_docker_ipam() {
    let (h, _sw) = host_and_switch();
    h.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet=192.168.32.0/24",
        "--ip-range=192.168.32.128/25",
        "--gateway=192.168.32.254",
        "--aux-address=my-router=192.168.32.129",
        "-o",
        "parent=eth0",
        "macnet32",
    ]);
    let names: Vec<String> = (0..3).map(|i| unique(&format!("m{i}"))).collect();
    h.ok(&["run", "-d", "--name", &names[0], "--network", "macnet32"]);
    h.ok(&["run", "-d", "--name", &names[1], "--network", "macnet32"]);
    assert_eq!(ep_json(&h, &names[0])["Networks"][0]["IPv4Address"], "192.168.32.128");
    assert_eq!(
        ep_json(&h, &names[1])["Networks"][0]["IPv4Address"],
        "192.168.32.130",
        "the aux address must be skipped"
    );
    h.ok(&[
        "run",
        "-d",
        "--name",
        &names[2],
        "--network",
        "macnet32",
        "--ip",
        "192.168.32.10",
        "--mac-address",
        "02:00:00:00:32:0a",
    ]);
    let e = ep_json(&h, &names[2]);
    assert_eq!(e["Networks"][0]["IPv4Address"], "192.168.32.10", "static addresses may lie outside the range");
    assert_eq!(e["Networks"][0]["MacAddress"], "02:00:00:00:32:0a");
    for (ip, want) in [
        ("192.168.32.129", "address 192.168.32.129 is reserved on network macnet32 (aux address my-router)"),
        ("192.168.32.254", "address 192.168.32.254 is reserved on network macnet32 (the gateway)"),
        ("192.168.32.255", "is reserved on network macnet32 (the subnet's broadcast address)"),
        ("192.168.32.128", &format!("address 192.168.32.128 is already in use on network macnet32 by {}", names[0])),
        ("10.1.2.3", "address 10.1.2.3 is not in any subnet of network macnet32 (192.168.32.0/24)"),
    ] {
        let n = unique("bad");
        let out = h.dp(&["run", "-d", "--name", &n, "--network", "macnet32", "--ip", ip]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(want), "--ip {ip}: want {want:?}, got {}", stderr(&out));
        assert!(!Path::new(&format!("/run/netns/{n}")).exists(), "failed run left its namespace");
    }
    let inspect = json(&h.ok(&["network", "inspect", "macnet32"]));
    let cfg = &inspect[0]["IPAM"]["Config"][0];
    assert_eq!(cfg["Subnet"], "192.168.32.0/24");
    assert_eq!(cfg["IPRange"], "192.168.32.128/25");
    assert_eq!(cfg["Gateway"], "192.168.32.254");
    assert_eq!(cfg["AuxiliaryAddresses"]["my-router"], "192.168.32.129");
    assert_eq!(inspect[0]["Driver"], "macvlan");
    assert_eq!(inspect[0]["Containers"].as_object().unwrap().len(), 3);
    let out = h.dp(&["network", "rm", "macnet32"]);
    assert!(stderr(&out).contains("network macnet32 has active endpoints"), "{}", stderr(&out));
}

#[test]
fn none_endpoint_has_only_lo_and_seed_commands_work() {
    let (h, _sw) = host_and_switch();
    let name = unique("no-net-alpine");
    // The seed's exact shape: image and command after the flags, -dit, --rm.
    let out = h.dp(&["run", "--rm", "-dit", "--network", "none", "--name", &name, "alpine:latest", "ash"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let links = String::from_utf8_lossy(&h.dp(&["exec", &name, "ip", "link", "show"]).stdout).into_owned();
    assert!(links.contains("1: lo: <LOOPBACK,UP,LOWER_UP>"), "{links}");
    assert_eq!(links.lines().filter(|l| !l.starts_with(' ')).count(), 1, "only lo expected: {links}");
    let routes = h.dp(&["exec", &name, "ip", "route"]);
    assert!(routes.status.success());
    assert!(routes.stdout.is_empty(), "no routes expected: {}", String::from_utf8_lossy(&routes.stdout));
    assert!(ep_json(&h, &name)["Status"].as_str().unwrap().starts_with("running"));
    h.ok(&["stop", &name]);
    assert!(!h.endpoint_names().contains(&name), "--rm endpoint still listed after stop");
    assert!(!Path::new(&format!("/run/netns/{name}")).exists());
}

#[test]
fn host_mode_runs_in_the_host_namespace_and_warns_about_ports() {
    let (h, _sw) = host_and_switch();
    let name = unique("hostnet");
    let out = h.dp(&[
        "run",
        "--rm",
        "--network",
        "host",
        "-p",
        "80:80",
        "--name",
        &name,
        "--",
        "readlink",
        "/proc/self/ns/net",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WARNING: Published ports are discarded when using host network mode"),
        "{}",
        stderr(&out)
    );
    let ns_of_host = h.ns.exec(&["readlink", "/proc/self/ns/net"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), ns_of_host, "the command did not run in the host's namespace");
    let out = h.dp(&["run", "--rm", "--network", "none", "--name", &name, "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "run must return the command's exit code");
    assert!(h.endpoint_names().is_empty());
}

#[test]
fn vlan_trunk_between_two_hosts_keeps_vlans_apart() {
    let a = Host::new("dpA").unwrap();
    let b = Host::new("dpB").unwrap();
    veth_between(&a.ns, "trunk0", &b.ns, "trunk0").unwrap();
    // VLAN 50 on both hosts; VLAN 60 on B uses the same subnet, so only the tag separates it.
    for h in [&a, &b] {
        h.ok(&[
            "network",
            "create",
            "-d",
            "macvlan",
            "--subnet=192.168.50.0/24",
            "--gateway=192.168.50.1",
            "-o",
            "parent=trunk0.50",
            "macvlan50",
        ]);
    }
    let (a50, b50) = (unique("a50"), unique("b50"));
    a.ok(&["run", "-d", "--name", &a50, "--network", "macvlan50", "--ip", "192.168.50.10"]);
    b.ok(&["run", "-d", "--name", &b50, "--network", "macvlan50", "--ip", "192.168.50.20"]);
    assert!(ping(&a, &a50, "192.168.50.20"), "no connectivity within VLAN 50 across the trunk");

    // The subinterface exists on both hosts and the frames on the trunk carry tag 50.
    assert!(link_names(&a.ns).contains("trunk0.50"));
    let cap = std::process::Command::new("nsenter")
        .arg(format!("--net={}", b.ns.path().display()))
        .args(["timeout", "8", "tcpdump", "-i", "trunk0", "-e", "-n", "-c", "2", "-l", "icmp or vlan"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Keep pinging until the capture has its frames (tcpdump takes a moment to start).
    let mut cap = cap;
    for _ in 0..12 {
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(ping(&a, &a50, "192.168.50.20"));
        if cap.try_wait().unwrap().is_some() {
            break;
        }
    }
    let seen = String::from_utf8_lossy(&cap.wait_with_output().unwrap().stdout).into_owned();
    assert!(seen.contains("vlan 50"), "no 802.1Q tag 50 seen on the trunk: {seen}");

    // Another VLAN, same subnet: unreachable from VLAN 50.
    b.ok(&["network", "create", "-d", "macvlan", "--subnet=10.60.0.0/24", "-o", "parent=trunk0.60", "macvlan60"]);
    let b60 = unique("b60");
    b.ok(&["run", "-d", "--name", &b60, "--network", "macvlan60", "--ip", "10.60.0.30"]);
    b.ok(&["exec", &b60, "ip", "addr", "add", "192.168.50.30/24", "dev", "eth0"]);
    // a50's ARP requests for that address reach B's trunk tagged 50 (seen there), and none
    // enters VLAN 60's device: only the tag separates them. (Whether b60 answers proves
    // nothing: anti-spoofing drops its replies from an address it was not given.)
    let trunk_cap = capture(&b, "trunk0", "arp");
    let vlan60_cap = capture(&b, "trunk0.60", "arp");
    assert!(!ping(&a, &a50, "192.168.50.30"), "192.168.50.30 answered VLAN 50 from VLAN 60");
    // VLAN 60's own traffic shows in that capture (so an empty one means something).
    assert!(!ping(&b, &b60, "10.60.0.1"), "nothing is at 10.60.0.1");
    let (on_trunk, on_vlan60) = (finish(trunk_cap), finish(vlan60_cap));
    assert!(on_vlan60.contains("who-has 10.60.0.1"), "the capture on trunk0.60 saw nothing: {on_vlan60}");
    assert!(
        on_trunk.contains("vlan 50") && on_trunk.contains("192.168.50.30"),
        "a50's ARP requests did not reach B's trunk tagged 50: {on_trunk}"
    );
    assert!(!on_vlan60.contains("192.168.50.30"), "a frame crossed from VLAN 50 into VLAN 60: {on_vlan60}");
    // A frame tagged 50 for a MAC nobody has is dropped at A's XDP and counted.
    let tx = dataplane_tests::raw::RawSocket::open(&b.ns, "trunk0").unwrap();
    let unknown = dataplane_tests::frames::tagged(
        dataplane_tests::frames::udp([2, 0x42, 0xc0, 0xa8, 0x32, 0x63], 1, 64),
        0x8100,
        50,
    );
    for _ in 0..5 {
        tx.send(&unknown).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let counters = json(&a.ok(&["bpf", "counters", "--format", "json"]));
    let unknown_drops: u64 = counters
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["reason"] == "drop_unknown_destination")
        .map(|c| c["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(unknown_drops, 5, "unknown-MAC frames in VLAN 50 not dropped and counted: {counters:#}");
    let steered: u64 = counters
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["reason"] == "vlan_steered")
        .map(|c| c["packets"].as_u64().unwrap())
        .sum();
    assert!(steered > 0, "no frames counted as steered into VLAN 50: {counters:#}");

    // Removing the last network of a VLAN removes the subinterface dataplane made.
    b.ok(&["rm", "-f", &b60]);
    b.ok(&["network", "rm", "macvlan60"]);
    assert!(!link_names(&b.ns).contains("trunk0.60"), "trunk0.60 left behind");
    assert!(link_names(&b.ns).contains("trunk0.50"), "trunk0.50 removed while in use");
}

/// Frames an XDP program sent through `iface` (a veth): `tx_queue_N_xdp_xmit` in
/// `ethtool -S`, summed over queues.
fn xdp_xmit(ns: &Netns, iface: &str) -> u64 {
    let out = ns.exec(&["ethtool", "-S", iface]).unwrap();
    let n: Vec<u64> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tx_queue_"))
        .filter_map(|l| l.split_once("_xdp_xmit: "))
        .filter_map(|(_, v)| v.trim().parse().ok())
        .collect();
    assert!(!n.is_empty(), "no xdp_xmit statistic for {iface}: {out}");
    n.iter().sum()
}

/// A trunk of host `h` wired to a namespace of its own, a network on VLAN `vid` of it and
/// one endpoint (10.`vid`.`net`.10): in-band tagged frames sent to the endpoint from the far
/// side.
struct VlanLane<'h> {
    h: &'h Host,
    _far: Netns,
    tx: dataplane_tests::raw::RawSocket,
    trunk: String,
    vid: u16,
    ip: [u8; 4],
    mac: [u8; 6],
    ep: String,
    network: String,
}

impl<'h> VlanLane<'h> {
    fn new(h: &'h Host, trunk: &str, vid: u16, net: u8) -> VlanLane<'h> {
        let far = Netns::new("dpXf").unwrap();
        veth_between(&far, "t0", &h.ns, trunk).unwrap();
        let network = format!("v{vid}-{net}");
        let subnet = format!("--subnet=10.{vid}.{net}.0/24");
        h.ok(&["network", "create", &subnet, "-o", &format!("parent={trunk}.{vid}"), &network]);
        let (ep, ip, mac) = (unique("xv"), [10, vid as u8, net, 10], [0x02, 0x42, 10, vid as u8, net, 10]);
        let ip_s = format!("10.{vid}.{net}.10");
        let mac_s = dataplane_tests::frames::mac_str(&mac);
        h.ok(&["run", "-d", "--name", &ep, "--network", &network, "--ip", &ip_s, "--mac-address", &mac_s]);
        let tx = dataplane_tests::raw::RawSocket::open(&far, "t0").unwrap();
        VlanLane { h, _far: far, tx, trunk: trunk.into(), vid, ip, mac, ep, network }
    }

    fn visible(&self) -> String {
        format!("{}.{}", self.trunk, self.vid)
    }

    /// The eBPF VLAN device's hidden end; None where the kernel's 8021q made the device.
    fn hidden(&self) -> Option<String> {
        let kind = self.h.ns.link_json(&self.visible()).unwrap()["linkinfo"]["info_kind"].clone();
        (kind != "vlan").then(|| format!("dpv{}-{}", self.vid, self.h.ns.ifindex(&self.trunk).unwrap()))
    }

    /// The sequence numbers of `seqs` that reached the endpoint, and how many frames XDP
    /// redirected into the eBPF device meanwhile (0 for a kernel device).
    fn deliver(&self, seqs: std::ops::Range<u32>) -> (BTreeSet<u32>, u64) {
        use dataplane_tests::frames::{lab_seq, tagged, udp};
        let rx =
            dataplane_tests::raw::RawSocket::open_at(Path::new(&format!("/run/netns/{}", self.ep)), "eth0").unwrap();
        let hidden = self.hidden();
        let xmit = || hidden.as_ref().map_or(0, |d| xdp_xmit(&self.h.ns, d));
        let before = xmit();
        for s in seqs {
            let mut f = udp(self.mac, s, 64);
            f[30..34].copy_from_slice(&self.ip);
            self.tx.send(&tagged(f, 0x8100, self.vid)).unwrap();
        }
        let got =
            rx.recv_for(std::time::Duration::from_millis(400)).unwrap().iter().filter_map(|f| lab_seq(f)).collect();
        (got, xmit() - before)
    }
}

#[test]
fn an_ebpf_vlan_device_takes_in_band_tags_from_xdp_and_falls_back_to_tc() {
    use dataplane_user::bpf::{vlan_maps, Pins};
    let h = Host::new("dpXv").unwrap();
    let lane = VlanLane::new(&h, "trunk0", 57, 1);
    let all = |r: std::ops::Range<u32>| r.collect::<BTreeSet<u32>>();
    let Some(hidden) = lane.hidden() else {
        // A kernel with 8021q gets the kernel's device (no eBPF device, no program on it),
        // and the same frames reach the endpoint through it.
        assert!(h.ns.xdp_prog_id("trunk0.57").unwrap().is_none(), "an XDP program on the kernel's VLAN device");
        assert_eq!(lane.deliver(0..20).0, all(0..20));
        return;
    };
    assert!(
        h.ns.xdp_prog_id("trunk0.57").unwrap().is_some(),
        "the VLAN device's visible end has no XDP program: {}",
        h.ns.link_json("trunk0.57").unwrap()
    );
    let (got, via_xdp) = lane.deliver(0..20);
    assert_eq!(got, all(0..20), "tagged frames did not all reach the endpoint");
    assert_eq!(via_xdp, 20, "the tagged frames did not take the XDP path into {hidden}");

    // No XDP entry for the VLAN (as a version before the fast path left it): the trunk's
    // tc program steers, nothing is lost, and reconcile turns the fast path on.
    let pins = Pins::new(&h.bpffs.dir);
    let trunk = h.ns.ifindex("trunk0").unwrap();
    vlan_maps::clear_xdp(&pins, trunk, 57).unwrap();
    let (got, via_xdp) = lane.deliver(100..120);
    assert_eq!(got, all(100..120), "the tc path lost frames");
    assert_eq!(via_xdp, 0, "frames took the XDP path without an entry");
    let report = h.ok(&["reconcile"]);
    assert!(report.contains("VID 57 of trunk ifindex"), "reconcile did not report the missing entry: {report}");
    assert_eq!(lane.deliver(200..220).1, 20, "reconcile did not turn the XDP path on again");

    // `bpf unload` of the visible end's program hands the VLAN back to tc first: nothing
    // is lost while the program is off; reconcile puts it back.
    h.ok(&["bpf", "unload", "--iface", "trunk0.57"]);
    let (got, via_xdp) = lane.deliver(250..270);
    assert_eq!(got, all(250..270), "frames lost after the program was unloaded");
    assert_eq!(via_xdp, 0);
    h.ok(&["reconcile"]);
    assert_eq!(lane.deliver(270..290).1, 20, "reconcile did not turn the XDP path on again after the unload");

    // The visible end's program gone (its pin removed): reconcile puts it back.
    std::fs::remove_file(pins.xdp_link(None, "trunk0.57")).unwrap();
    assert!(h.ns.xdp_prog_id("trunk0.57").unwrap().is_none(), "removing the pin did not detach the program");
    let report = h.ok(&["reconcile"]);
    assert!(report.contains("has no XDP program"), "reconcile did not see the missing program: {report}");
    let (got, via_xdp) = lane.deliver(300..320);
    assert_eq!(got, all(300..320), "frames lost after the repair");
    assert_eq!(via_xdp, 20);

    // The network's removal takes the program's pin with the device.
    h.ok(&["rm", "-f", &lane.ep]);
    h.ok(&["network", "rm", &lane.network]);
    assert!(!pins.xdp_link(None, "trunk0.57").exists(), "the visible end's XDP pin was left behind");
}

#[test]
fn two_trunks_with_one_vid_take_the_xdp_path_one_at_a_time() {
    let h = Host::new("dpX2").unwrap();
    let a = VlanLane::new(&h, "trunk0", 58, 1);
    let b = VlanLane::new(&h, "trunk1", 58, 2);
    let all = |r: std::ops::Range<u32>| r.collect::<BTreeSet<u32>>();
    if a.hidden().is_none() {
        // Kernel 8021q devices: no fast path to share; both deliver.
        assert_eq!(a.deliver(0..10).0, all(0..10));
        assert_eq!(b.deliver(0..10).0, all(0..10));
        return;
    }
    // The first device made has VID 58's fast path; the second is steered by tc; both
    // deliver everything, and reconcile sees nothing to change.
    assert_eq!(a.deliver(0..20), (all(0..20), 20));
    assert_eq!(b.deliver(0..20), (all(0..20), 0));
    let report = h.reconcile_dry_run();
    assert!(report.contains("no drift"), "{report}");
    // With the first network gone, reconcile gives the fast path to the second.
    h.ok(&["rm", "-f", &a.ep]);
    h.ok(&["network", "rm", &a.network]);
    assert_eq!(b.deliver(100..120), (all(100..120), 0));
    let report = h.ok(&["reconcile"]);
    assert!(report.contains("VID 58 of trunk ifindex"), "{report}");
    assert_eq!(b.deliver(200..220), (all(200..220), 20));
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_no_trace() {
    let (h, _sw) = host_and_switch();
    h.ok(&["network", "create", "--subnet=172.16.86.0/24", "-o", "parent=eth0", "pub_net"]);
    let long_parent = "parent=longtrunkname0.4000".to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["network", "create", "--subnet=172.16.86.1/24", "-o", "parent=eth0", "n1"],
            "invalid subnet 172.16.86.1/24: host bits are set; did you mean 172.16.86.0/24?",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "--gateway=10.0.1.1", "-o", "parent=eth0", "n1"],
            "gateway 10.0.1.1 is not inside subnet 10.0.0.0/24",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "--ip-range=10.0.0.0/16", "-o", "parent=eth0", "n1"],
            "ip range 10.0.0.0/16 is larger than subnet 10.0.0.0/24",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "--aux-address=r=10.9.9.9", "-o", "parent=eth0", "n1"],
            "aux address r=10.9.9.9 is not inside any --subnet",
        ),
        (
            vec!["network", "create", "--subnet=172.16.0.0/16", "-o", "parent=eth0", "n1"],
            "subnet 172.16.0.0/16 overlaps subnet 172.16.86.0/24 of network pub_net",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "-o", "parent=eth0", "pub_net"],
            "network with name pub_net already exists",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "-o", "parent=nope0", "n1"],
            "parent interface nope0 does not exist",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "-o", "parent=lo", "n1"],
            "parent lo is the loopback device",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "-o", "parent=eth0.4095", "n1"],
            "invalid 802.1Q parent \"eth0.4095\"",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "-o", "parent=eth0.5.6.7", "n1"],
            "invalid 802.1Q parent \"eth0.5.6.7\"",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "-o", &long_parent, "n1"],
            "is longer than the kernel allows (15 characters)",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "-o", "parent=nope0.50", "n1"],
            "trunk interface nope0 does not exist",
        ),
        (vec!["network", "create", "--subnet=10.0.0.0/24", "n1"], "the macvlan driver needs a parent interface"),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "-o", "parent=eth0", "-o", "macvlan_mode=turbo", "n1"],
            "invalid macvlan_mode \"turbo\"",
        ),
        (
            vec!["network", "create", "--subnet=10.0.0.0/24", "-o", "parent=eth0", "-o", "color=blue", "n1"],
            "unknown option \"color\"",
        ),
        (vec!["network", "create", "-d", "bridge", "n1"], "driver \"bridge\" is not supported"),
        (vec!["network", "create", "-o", "parent=eth0", "host"], "network name \"host\" is predefined"),
        (vec!["network", "create", "-o", "parent=eth0", "bad name"], "invalid network name \"bad name\""),
        (vec!["network", "rm", "none"], "none is a predefined network and cannot be removed"),
        (vec!["network", "rm", "ghost"], "network ghost not found"),
        (vec!["run", "-d", "--name", "x1", "--network", "ghost"], "network ghost not found"),
        (
            vec!["run", "-d", "--name", "x1", "--network", "pub_net", "--ip", "172.16.86.999"],
            "invalid IP address \"172.16.86.999\"",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "pub_net", "--mac-address", "01:00:5e:00:00:01"],
            "invalid --mac-address 01:00:5e:00:00:01: it must be a unicast address",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "pub_net", "--mac-address", "zz"],
            "invalid MAC address \"zz\"",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "none", "--ip", "10.0.0.1"],
            "cannot be used with --network none",
        ),
        (
            vec!["run", "-d", "--name", "x1", "--network", "pub_net", "--netns", "/run/netns/dp-nope"],
            "network namespace /run/netns/dp-nope does not exist",
        ),
        (vec!["run", "-d", "--name", "-x", "--network", "none"], "invalid endpoint name"),
        (vec!["rm", "ghost"], "endpoint ghost not found"),
        (vec!["exec", "ghost", "true"], "endpoint ghost not found"),
    ];
    let links_before = link_names(&h.ns);
    for (args, want) in &cases {
        let out = h.dp(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(want), "{args:?}: want {want:?}, got {}", stderr(&out));
        let nets = dataplane_tests::json_lines(&h.ok(&["network", "ls", "--format", "json"]));
        assert_eq!(nets.as_array().unwrap().len(), 3, "{args:?} left a network row: {nets:#}");
        assert!(h.endpoint_names().is_empty(), "{args:?} left an endpoint row");
        assert!(!Path::new("/run/netns/x1").exists(), "{args:?} left a namespace");
        assert_eq!(link_names(&h.ns), links_before, "{args:?} left a link");
    }
    let admitted = json(&h.ok(&["bpf", "admit", "ls", "--format", "json"]));
    assert_eq!(admitted.as_array().unwrap().len(), 1, "a failed command left a map entry: {admitted:#}");
}

#[test]
fn parallel_runs_get_distinct_addresses_and_macs() {
    let (h, _sw) = host_and_switch();
    h.ok(&["network", "create", "--subnet=10.77.0.0/24", "-o", "parent=eth0", "par"]);
    let names: Vec<String> = (0..32).map(|i| unique(&format!("p{i}-"))).collect();
    let outs: Vec<Output> = std::thread::scope(|s| {
        let hs: Vec<_> =
            names.iter().map(|n| s.spawn(|| h.dp(&["run", "-d", "--name", n, "--network", "par"]))).collect();
        hs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    for (n, o) in names.iter().zip(&outs) {
        assert!(o.status.success(), "run {n} failed: {}", stderr(o));
    }
    let all = dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"]));
    let ips: BTreeSet<String> =
        all.as_array().unwrap().iter().map(|e| e["Networks"][0]["IPv4Address"].as_str().unwrap().to_string()).collect();
    let macs: BTreeSet<String> =
        all.as_array().unwrap().iter().map(|e| e["Networks"][0]["MacAddress"].as_str().unwrap().to_string()).collect();
    assert_eq!((ips.len(), macs.len()), (32, 32), "addresses or MACs handed out twice");
    let rc = h.dp(&["rm"].into_iter().chain(names.iter().map(String::as_str)).collect::<Vec<_>>());
    assert!(rc.status.success(), "{}", stderr(&rc));
    assert_eq!(link_names(&h.ns), BTreeSet::from(["lo".to_string(), "eth0".to_string()]));
}

#[test]
fn connect_and_disconnect_add_and_remove_interfaces() {
    let (h, _sw) = host_and_switch();
    h.ok(&["network", "create", "--subnet=10.81.0.0/24", "-o", "parent=eth0", "n81"]);
    h.ok(&["network", "create", "--subnet=10.82.0.0/24", "--internal", "-o", "parent=eth0", "n82"]);
    let e = unique("multi");
    h.ok(&["run", "-d", "--name", &e, "--network", "n81"]);
    let out = h.ok(&["network", "connect", "--ip", "10.82.0.50", "n82", &e]);
    assert!(out.contains("eth1") && out.contains("10.82.0.50"), "{out}");
    let addrs = String::from_utf8_lossy(&h.dp(&["exec", &e, "ip", "-br", "addr"]).stdout).into_owned();
    assert!(addrs.contains("10.81.0.2/24") && addrs.contains("10.82.0.50/24"), "{addrs}");
    let dup = h.dp(&["network", "connect", "n82", &e]);
    assert!(stderr(&dup).contains(&format!("endpoint {e} is already connected to network n82")), "{}", stderr(&dup));
    h.ok(&["network", "disconnect", "n82", &e]);
    let addrs = String::from_utf8_lossy(&h.dp(&["exec", &e, "ip", "-br", "addr"]).stdout).into_owned();
    assert!(!addrs.contains("eth1"), "{addrs}");
    h.ok(&["network", "rm", "n82"]);
}

/// What an endpoint received is the kernel's own count for its interfaces: no program
/// runs on their ingress, `stats` reports their statistics, and what an interface
/// received stays the endpoint's when `network disconnect` removes it.
#[test]
fn rx_counts_are_the_kernels_and_outlive_a_disconnected_interface() {
    let (h, sw) = host_and_switch();
    sw.exec(&["ip", "addr", "add", "10.83.0.1/24", "dev", "up0"]).unwrap();
    sw.exec(&["ip", "addr", "add", "10.84.0.1/24", "dev", "up0"]).unwrap();
    h.ok(&["network", "create", "--subnet=10.83.0.0/24", "--gateway=10.83.0.1", "-o", "parent=eth0", "n83"]);
    h.ok(&["network", "create", "--subnet=10.84.0.0/24", "--gateway=10.84.0.1", "-o", "parent=eth0", "n84"]);
    let e = unique("rx");
    h.ok(&["run", "-d", "--name", &e, "--network", "n83"]);
    h.ok(&["network", "connect", "n84", &e]);
    let ns = format!("/run/netns/{e}");
    let inside = |cmd: &[&str]| {
        let out = std::process::Command::new("nsenter").arg(format!("--net={ns}")).args(cmd).output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for dev in ["eth0", "eth1"] {
        let filters = inside(&["tc", "filter", "show", "dev", dev, "ingress"]);
        assert_eq!(filters.trim(), "", "a program on {dev}'s ingress");
    }
    assert!(ping(&h, &e, "10.83.0.1"));
    let out = h.dp(&["exec", &e, "ping", "-c", "2", "-W", "1", "-I", "eth1", "10.84.0.1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The kernel's rx packets of the endpoint's interfaces, by name.
    let kernel = |dev: &str| -> u64 {
        let v = json(&inside(&["ip", "-s", "-j", "link", "show", "dev", dev]));
        v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
    };
    let reported = || -> u64 {
        let v = json(&h.ok(&["stats", "--format", "json", &e]));
        v["endpoints"][0]["rx_packets"].as_u64().unwrap()
    };
    let eth1 = kernel("eth1");
    assert!(eth1 >= 2, "eth1 received {eth1} frames");
    let low = kernel("eth0") + eth1;
    let said = reported();
    let high = kernel("eth0") + kernel("eth1");
    assert!((low..=high).contains(&said), "stats says {said}, the kernel {low}..{high}");
    h.ok(&["network", "disconnect", "n84", &e]);
    let eth0 = kernel("eth0");
    let said = reported();
    assert!(said >= eth0 + eth1, "after the disconnect stats says {said}: eth0 {eth0} + eth1's {eth1} went missing");
}

/// An interface an older version made carries its rx-counting program (`dp_ep_in` on the
/// ingress, a cls_bpf filter pinned as `tcin-eth0`): its rx figures are that program's
/// count in the interface's slot, not the kernel's as well (no double count).
#[test]
fn an_older_versions_rx_counting_filter_is_counted_once() {
    use aya::programs::{tc::TcAttachType, SchedClassifier};
    use dataplane_common::maps::TC_EP_IN_PROG;
    let (h, sw) = host_and_switch();
    sw.exec(&["ip", "addr", "add", "10.85.0.1/24", "dev", "up0"]).unwrap();
    h.ok(&["network", "create", "--subnet=10.85.0.0/24", "--gateway=10.85.0.1", "-o", "parent=eth0", "n85"]);
    let e = unique("oldrx");
    h.ok(&["run", "-d", "--name", &e, "--network", "n85"]);
    let ns = format!("/run/netns/{e}");
    // What an older version's attach did: the program on the ingress as a cls_bpf filter,
    // pinned beside the anti-spoofing link.
    let pins = dataplane_user::bpf::Pins::new(&h.bpffs.dir);
    let [_, tcin] = pins.endpoint_links(&ns, "eth0");
    let mut ebpf = dataplane_user::bpf::load_object(&pins.maps_dir()).unwrap();
    let p: &mut SchedClassifier = ebpf.program_mut(TC_EP_IN_PROG).unwrap().try_into().unwrap();
    p.load().unwrap();
    dataplane_user::nl::with_netns(Path::new(&ns), || {
        dataplane_user::bpf::tc::attach_pinned(p, TC_EP_IN_PROG, "eth0", TcAttachType::Ingress, &tcin, true, true)
    })
    .unwrap()
    .unwrap();
    assert!(ping(&h, &e, "10.85.0.1"));
    let out = h.dp(&["exec", &e, "ping", "-c", "2", "-W", "1", "10.85.0.1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = json(&h.ok(&["stats", "--format", "json", &e]))["endpoints"][0]["rx_packets"].as_u64().unwrap();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={ns}"))
        .args(["ip", "-s", "-j", "link", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let kernel = json(&String::from_utf8_lossy(&out.stdout))[0]["stats64"]["rx"]["packets"].as_u64().unwrap();
    assert!((3..=kernel).contains(&said), "stats says {said} received; the filter saw at least 3, the kernel {kernel}");
}

#[test]
fn reconcile_reports_and_repairs_drift() {
    let (h, _sw) = host_and_switch();
    h.ok(&["network", "create", "--subnet=10.90.0.0/24", "-o", "parent=eth0", "n90"]);
    let e = unique("drift");
    h.ok(&["run", "-d", "--name", &e, "--network", "n90"]);
    assert!(h.reconcile_dry_run().contains("no drift"));
    let mac = ep_json(&h, &e)["Networks"][0]["MacAddress"].as_str().unwrap().to_string();
    h.ok(&["bpf", "admit", "del", "--iface", "eth0", &mac]);
    h.ok(&["bpf", "admit", "add", "--iface", "eth0", "02:66:66:66:66:66"]);
    let report = h.reconcile_dry_run();
    assert!(report.contains("drift: admission map: missing entry") && report.contains(&mac), "{report}");
    assert!(report.contains("unexpected entry") && report.contains("02:66:66:66:66:66"), "{report}");
    h.ok(&["reconcile"]);
    assert!(h.reconcile_dry_run().contains("no drift"));
    // The endpoint map (read in one batch): the endpoint's entry gone, a stranger's there.
    {
        use aya::maps::{HashMap, Map, MapData};
        use dataplane_common::maps::EndpointInfo;
        let data = MapData::from_pin(h.bpffs.dir.join("maps/DP_ENDPOINTS")).unwrap();
        let mut m: HashMap<_, u32, EndpointInfo> = HashMap::try_from(Map::HashMap(data)).unwrap();
        let keys: Vec<u32> = m.keys().map(Result::unwrap).collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        m.remove(&keys[0]).unwrap();
        let stranger = EndpointInfo { endpoint: 7, mac: [0x02, 0x66, 0x66, 0x66, 0x66, 0x67], ..Default::default() };
        m.insert(0x4000_9999, stranger, 0).unwrap();
    }
    let report = h.reconcile_dry_run();
    assert!(report.contains(&format!("endpoint map: missing entry for {mac}")), "{report}");
    assert!(report.contains("endpoint map: unexpected entry for 02:66:66:66:66:67 (ifindex 1073781145)"), "{report}");
    h.ok(&["reconcile"]);
    assert!(h.reconcile_dry_run().contains("no drift"));
    // Program pins of an endpoint that is gone (a namespace no endpoint has): reported and
    // removed by the quick pass of the next command; the live endpoint's pins stay.
    let ghost = h.bpffs.dir.join("links/ns-run_netns_ghost");
    std::fs::create_dir(&ghost).unwrap();
    let mut prog = aya::programs::SchedClassifier::from_pin(h.bpffs.dir.join("progs/dp_ep_out")).unwrap();
    for pin in ["tceg-eth0", "tcin-eth0"] {
        prog.pin(ghost.join(pin)).unwrap();
    }
    let report = h.reconcile_dry_run();
    assert!(report.contains(&format!("stale endpoint program pin {}", ghost.join("tceg-eth0").display())), "{report}");
    h.ok(&["network", "create", "--subnet=10.91.0.0/24", "-o", "parent=eth0", "n91"]);
    assert!(!ghost.exists(), "the stale pins outlived the next command's reconcile");
    let live = h.bpffs.dir.join(format!("links/ns-run_netns_{e}"));
    assert!(live.join("tceg-eth0").exists(), "a live endpoint lost its pin");
    assert!(h.reconcile_dry_run().contains("no drift"));
    // An endpoint's interface deleted by hand: reported, then re-created as allocated.
    let ns = format!("/run/netns/{e}");
    std::process::Command::new("ip").args(["-n", &e, "link", "del", "eth0"]).status().unwrap();
    let report = h.reconcile_dry_run();
    assert!(report.contains(&format!("endpoint {e}: interface eth0 is missing from {ns}")), "{report}");
    h.ok(&["reconcile"]);
    let addrs = String::from_utf8_lossy(&h.dp(&["exec", &e, "ip", "-br", "addr"]).stdout).into_owned();
    assert!(addrs.contains("eth0") && addrs.contains("10.90.0.2/24"), "eth0 not re-created: {addrs}");
    assert!(h.reconcile_dry_run().contains("no drift"));
    // A namespace deleted by hand: the endpoint is dropped, its address freed.
    std::process::Command::new("ip").args(["netns", "del", &e]).status().unwrap();
    let report = h.ok(&["reconcile"]);
    assert!(report.contains(&format!("endpoint {e}: its network namespace /run/netns/{e} is gone")), "{report}");
    assert!(h.endpoint_names().is_empty());
}

#[test]
fn ipv6_networks_give_addresses_routes_and_reachability() {
    let (h, sw) = host_and_switch();
    sw.exec(&["sysctl", "-qw", "net.ipv6.conf.up0.disable_ipv6=0"]).unwrap();
    sw.exec(&["ip", "addr", "add", "fd00:71::1/64", "dev", "up0", "nodad"]).unwrap();
    h.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet=10.71.0.0/24",
        "--subnet=fd00:71::/64",
        "--gateway=10.71.0.1",
        "--gateway=fd00:71::1",
        "-o",
        "parent=eth0",
        "n71",
    ]);
    let (a, b) = (unique("six"), unique("sixb"));
    h.ok(&["run", "-d", "--name", &a, "--network", "n71"]);
    h.ok(&["run", "-d", "--name", &b, "--network", "n71", "--ip6", "fd00:71::20"]);
    let e = ep_json(&h, &a);
    assert_eq!(e["Networks"][0]["IPv6Address"], "fd00:71::2");
    let inspect = json(&h.ok(&["network", "inspect", "n71"]));
    assert_eq!(inspect[0]["EnableIPv6"], true);
    assert_eq!(inspect[0]["IPAM"]["Config"][1]["Gateway"], "fd00:71::1");
    let routes = String::from_utf8_lossy(&h.dp(&["exec", &a, "ip", "-6", "route"]).stdout).into_owned();
    assert!(routes.contains("default via fd00:71::1"), "{routes}");
    // Usable at once (no DAD wait), reachable within the network and at the gateway.
    assert!(ping(&h, &a, "fd00:71::20"), "no IPv6 between siblings");
    assert!(ping(&h, &a, "fd00:71::1"), "no IPv6 to the switch");
    // An IPv6 source that is not the endpoint's own is dropped on egress.
    h.ok(&["exec", &a, "ip", "addr", "add", "fd00:71::99/64", "dev", "eth0", "nodad"]);
    assert!(
        !h.dp(&["exec", &a, "ping", "-c", "1", "-W", "1", "-I", "fd00:71::99", "fd00:71::20"]).status.success(),
        "spoofed IPv6 source got through"
    );
    let stats = json(&h.ok(&["stats", "--format", "json", &a]));
    assert!(stats["endpoints"][0]["spoofed_packets"].as_u64().unwrap() >= 1, "{stats:#}");
    let out = h.dp(&["run", "-d", "--name", "x6", "--network", "n71", "--ip6", "fd00:72::5"]);
    assert!(
        stderr(&out).contains("address fd00:72::5 is not in any subnet of network n71 (fd00:71::/64)"),
        "{}",
        stderr(&out)
    );
}

//! Endpoints can only send as themselves: spoofed frames reach neither the trunk nor a
//! bridge-mode sibling, and are counted.

use std::{collections::BTreeSet, path::Path, time::Duration};

use dataplane_tests::{
    frames::{fix_ipv4_checksum, lab_seq, udp},
    lab::{host_with_switch, unique},
    raw::RawSocket,
};
use serde_json::Value;

fn mac_bytes(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (d, p) in m.iter_mut().zip(s.split(':')) {
        *d = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

/// A lab UDP frame as sent by `src_mac`/`src_ip` (frames::udp with its source rewritten).
fn frame(dst: [u8; 6], src_mac: [u8; 6], src_ip: [u8; 4], seq: u32) -> Vec<u8> {
    let mut f = udp(dst, seq, 64);
    f[6..12].copy_from_slice(&src_mac);
    f[26..30].copy_from_slice(&src_ip);
    // Keep the IPv4 checksum right so only the identity differs.
    fix_ipv4_checksum(&mut f);
    f
}

/// Lab frames keep LAB_SRC as their recognisable source; these spoofing frames change it,
/// so they are recognised by their sequence numbers through this reader instead.
fn seqs(frames: &[Vec<u8>]) -> BTreeSet<u32> {
    frames
        .iter()
        .filter(|f| f.len() >= 46 && f[12..14] == [0x08, 0x00] && f[34..36] == 40000u16.to_be_bytes())
        .map(|f| u32::from_be_bytes([f[42], f[43], f[44], f[45]]))
        .chain(frames.iter().filter_map(|f| lab_seq(f)))
        .collect()
}

#[test]
fn spoofed_frames_reach_neither_the_trunk_nor_a_sibling() {
    let (h, sw) = host_with_switch("dpX").unwrap();
    h.ok(&["network", "create", "--subnet=10.66.0.0/24", "-o", "parent=eth0", "n66"]);
    let (a, b) = (unique("spoofer"), unique("victim"));
    h.ok(&["run", "-d", "--name", &a, "--network", "n66"]);
    h.ok(&["run", "-d", "--name", &b, "--network", "n66"]);
    let ps: Value = dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"]));
    let get = |n: &str, k: &str| {
        ps.as_array().unwrap().iter().find(|e| e["Name"] == n).unwrap()["Networks"][0][k].as_str().unwrap().to_string()
    };
    let (a_mac, b_mac) = (mac_bytes(&get(&a, "MacAddress")), mac_bytes(&get(&b, "MacAddress")));
    let a_ip: [u8; 4] = get(&a, "IPv4Address").parse::<std::net::Ipv4Addr>().unwrap().octets();
    let sw_mac = sw.mac("up0").unwrap();

    let tx = RawSocket::open_at(Path::new(&format!("/run/netns/{a}")), "eth0").unwrap();
    let at_sibling = RawSocket::open_at(Path::new(&format!("/run/netns/{b}")), "eth0").unwrap();
    let at_trunk = RawSocket::open(&sw, "up0").unwrap();
    let other_mac = [0x02, 0x42, 0x0a, 0x42, 0x00, 0x63];
    let other_ip = [10, 66, 0, 99];
    for (dst, base) in [(b_mac, 100u32), (sw_mac, 200u32)] {
        tx.send(&frame(dst, a_mac, a_ip, base)).unwrap(); // legitimate
                                                          // Spoofed: a drop at tc egress may surface as ENOBUFS to the sender; either way
                                                          // what counts is what arrives.
        let _ = tx.send(&frame(dst, other_mac, a_ip, base + 1)); // spoofed MAC
        let _ = tx.send(&frame(dst, a_mac, other_ip, base + 2)); // spoofed IPv4
        let _ = tx.send(&frame(dst, other_mac, other_ip, base + 3)); // both
    }
    let sibling = seqs(&at_sibling.recv_for(Duration::from_millis(500)).unwrap());
    let trunk = seqs(&at_trunk.recv_for(Duration::from_millis(100)).unwrap());
    assert!(sibling.contains(&100), "the legitimate frame did not reach the sibling: {sibling:?}");
    assert!(trunk.contains(&200), "the legitimate frame did not reach the trunk: {trunk:?}");
    for s in [101, 102, 103] {
        assert!(!sibling.contains(&s), "spoofed frame {s} reached the bridge-mode sibling");
    }
    for s in [201, 202, 203] {
        assert!(!trunk.contains(&s), "spoofed frame {s} reached the trunk");
    }
    let stats: Value = serde_json::from_str(&h.ok(&["stats", "--format", "json", &a])).unwrap();
    let ep = &stats["endpoints"][0];
    assert_eq!(ep["spoofed_packets"], 6, "{stats:#}");
    assert!(ep["tx_packets"].as_u64().unwrap() >= 2, "{stats:#}");
    let vstats: Value = serde_json::from_str(&h.ok(&["stats", "--format", "json", &b])).unwrap();
    assert!(vstats["endpoints"][0]["rx_packets"].as_u64().unwrap() >= 1, "{vstats:#}");
    // The table form names both endpoints and the parent.
    let table = h.ok(&["stats"]);
    assert!(table.contains(&a) && table.contains(&b) && table.contains("PARENT"), "{table}");
    let watch = h.ok(&["stats", "--watch", "--iterations", "1"]);
    assert!(watch.contains("/s"), "--watch shows rates: {watch}");
}

/// The check does not depend on anything an endpoint without CAP_BPF/CAP_SYS_ADMIN can
/// remove: even root inside the endpoint, limited to CAP_NET_ADMIN and CAP_NET_RAW (what
/// containers typically hold), cannot take it off, and spoofing still fails.
#[test]
fn a_net_admin_endpoint_cannot_remove_the_check() {
    let (h, sw) = host_with_switch("dpY").unwrap();
    sw.exec(&["ip", "addr", "add", "10.67.0.1/24", "dev", "up0"]).unwrap();
    h.ok(&["network", "create", "--subnet=10.67.0.0/24", "--gateway=10.67.0.1", "-o", "parent=eth0", "n67"]);
    let a = unique("tamper");
    h.ok(&["run", "-d", "--name", &a, "--network", "n67"]);
    let ns = format!("/run/netns/{a}");
    let limited = |cmd: &[&str]| {
        std::process::Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .args(["setpriv", "--bounding-set=-all,+net_admin,+net_raw", "--inh-caps=-all,+net_admin,+net_raw"])
            .args(cmd)
            .output()
            .unwrap()
    };
    // Tampering attempts a container could make.
    let _ = limited(&["tc", "qdisc", "del", "dev", "eth0", "clsact"]);
    let _ = limited(&["tc", "filter", "del", "dev", "eth0", "egress"]);
    let _ = limited(&["ip", "link", "set", "dev", "eth0", "xdp", "off"]);
    let ok_ping = limited(&["ping", "-c", "1", "-W", "1", "10.67.0.1"]);
    assert!(
        ok_ping.status.success(),
        "legitimate traffic must still flow: {}",
        String::from_utf8_lossy(&ok_ping.stderr)
    );
    // Now spoof: another address on the interface, used as the source.
    assert!(limited(&["ip", "addr", "add", "10.67.0.99/24", "dev", "eth0"]).status.success());
    let status = h.ok(&["bpf", "status", "--format", "json"]);
    let egress_cls_bpf = serde_json::from_str::<Value>(&status)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["mechanism"] == "cls_bpf" && l["pin"].as_str().is_some_and(|p| p.contains("/tceg-")));
    // Without tcx the check is a tc filter, which CAP_NET_ADMIN inside the endpoint can
    // delete (the kernel's limit, documented): reconcile finds that and puts it back. With
    // tcx there was nothing the endpoint could remove.
    let dry = h.reconcile_dry_run();
    assert_eq!(dry.contains("its anti-spoofing filters on eth0 were removed"), egress_cls_bpf, "{dry}");
    h.ok(&["reconcile"]);
    assert!(!h.reconcile_dry_run().contains("were removed"), "reconcile did not put the filter back");
    let spoof = limited(&["ping", "-c", "2", "-W", "1", "-I", "10.67.0.99", "10.67.0.1"]);
    assert!(!spoof.status.success(), "a spoofed source got through after tampering");
    let stats: Value = serde_json::from_str(&h.ok(&["stats", "--format", "json", &a])).unwrap();
    assert!(stats["endpoints"][0]["spoofed_packets"].as_u64().unwrap() >= 1, "{stats:#}");
    let links = h.ok(&["bpf", "status", "--format", "json"]);
    assert!(links.contains("tceg-eth0"), "the anti-spoofing link is gone: {links}");
}

/// IPv6 neighbour discovery as the endpoint itself only: an unsolicited neighbour
/// advertisement for a sibling's address, a packet from a sibling's link-local address
/// and a router advertisement reach neither the sibling nor the trunk; the endpoint's own
/// advertisement does.
#[test]
fn ipv6_neighbour_discovery_cannot_be_spoofed() {
    let (h, sw) = host_with_switch("dpN6").unwrap();
    h.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet=10.68.0.0/24",
        "--subnet=fd00:68::/64",
        "-o",
        "parent=eth0",
        "n68",
    ]);
    let (a, b) = (unique("nd-a"), unique("nd-b"));
    h.ok(&["run", "-d", "--name", &a, "--network", "n68"]);
    h.ok(&["run", "-d", "--name", &b, "--network", "n68"]);
    let ps: Value = dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"]));
    let get = |n: &str, k: &str| {
        ps.as_array().unwrap().iter().find(|e| e["Name"] == n).unwrap()["Networks"][0][k].as_str().unwrap().to_string()
    };
    let (a_mac, b_mac) = (mac_bytes(&get(&a, "MacAddress")), mac_bytes(&get(&b, "MacAddress")));
    let a_ip6: [u8; 16] = get(&a, "IPv6Address").parse::<std::net::Ipv6Addr>().unwrap().octets();
    let b_ip6: [u8; 16] = get(&b, "IPv6Address").parse::<std::net::Ipv6Addr>().unwrap().octets();
    let ll = |m: [u8; 6]| dataplane_common::frame::link_local_of(&m);

    // Ethernet + IPv6 (to ff02::1) + ICMPv6 type `t`, marker byte `id` in the code field,
    // target `target`, one link-layer option (`opt`, `opt_mac`).
    let packet = |src: [u8; 16], t: u8, id: u8, target: [u8; 16], opt: u8, opt_mac: [u8; 6]| -> Vec<u8> {
        let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
        f.extend_from_slice(&a_mac);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 32, 58, 255]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[t, id, 0, 0, 0x20, 0, 0, 0]);
        f.extend_from_slice(&target);
        f.extend_from_slice(&[opt, 1]);
        f.extend_from_slice(&opt_mac);
        f
    };
    let tx = RawSocket::open_at(Path::new(&format!("/run/netns/{a}")), "eth0").unwrap();
    let at_sibling = RawSocket::open_at(Path::new(&format!("/run/netns/{b}")), "eth0").unwrap();
    let at_trunk = RawSocket::open(&sw, "up0").unwrap();
    let sends = [
        (1u8, packet(ll(a_mac), 136, 1, a_ip6, 2, a_mac), true), // own NA
        (2, packet(ll(a_mac), 136, 2, b_ip6, 2, a_mac), false),  // NA for the sibling's address
        (3, packet(ll(a_mac), 136, 3, a_ip6, 2, b_mac), false),  // NA naming another MAC
        (4, packet(ll(b_mac), 135, 4, a_ip6, 1, a_mac), false),  // from the sibling's link-local
        (5, packet(ll(a_mac), 134, 5, [0; 16], 1, a_mac), false), // router advertisement
        (6, packet(ll(a_mac), 135, 6, b_ip6, 1, a_mac), true),   // own solicitation
    ];
    for (_, f, _) in &sends {
        let _ = tx.send(f);
    }
    let marks = |frames: Vec<Vec<u8>>| -> BTreeSet<u8> {
        frames
            .iter()
            .filter(|f| f.len() > 55 && f[12..14] == [0x86, 0xdd] && f[6..12] == a_mac)
            .map(|f| f[55])
            .collect()
    };
    let sibling = marks(at_sibling.recv_for(Duration::from_millis(500)).unwrap());
    let trunk = marks(at_trunk.recv_for(Duration::from_millis(100)).unwrap());
    for (id, _, legit) in &sends {
        assert_eq!(sibling.contains(id), *legit, "frame {id} at the sibling: {sibling:?}");
        assert_eq!(trunk.contains(id), *legit, "frame {id} at the trunk: {trunk:?}");
    }
    let stats: Value = serde_json::from_str(&h.ok(&["stats", "--format", "json", &a])).unwrap();
    assert!(stats["endpoints"][0]["spoofed_packets"].as_u64().unwrap() >= 4, "{stats:#}");
    // IPv6 still works between the two (their own ND passes).
    assert!(h.dp(&["exec", &a, "ping", "-6", "-c", "1", "-W", "2", &get(&b, "IPv6Address")]).status.success());
}

/// Endpoint hooks: by default an endpoint's programs end up as tcx links where the kernel
/// has tcx (attached as cls_bpf filters, then upgraded by a background child), and
/// `-o endpoint_hooks=cls_bpf` keeps tc filters (listed by `tc filter show` inside the
/// endpoint). Either way a spoofed source is dropped and counted; a bad value is refused
/// by name and creates nothing.
#[test]
fn endpoint_hooks_are_tcx_links_by_default_or_cls_bpf_filters_on_request() {
    let (h, sw) = host_with_switch("dpK").unwrap();
    sw.exec(&["ip", "addr", "add", "10.68.0.1/24", "dev", "up0"]).unwrap();
    let bad =
        h.dp(&["network", "create", "--subnet=10.68.0.0/24", "-o", "parent=eth0", "-o", "endpoint_hooks=fast", "nk"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid endpoint_hooks \"fast\": use tcx"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(!h.ok(&["network", "ls"]).contains("nk"), "a refused network was created");
    for hooks in [None, Some("cls_bpf")] {
        let mut create = vec!["network", "create", "--subnet=10.68.0.0/24", "-o", "parent=eth0"];
        let opt = hooks.map(|v| format!("endpoint_hooks={v}"));
        if let Some(o) = &opt {
            create.extend(["-o", o.as_str()]);
        }
        create.push("nk");
        h.ok(&create);
        let a = unique("hooks");
        h.ok(&["run", "-d", "--name", &a, "--network", "nk"]);
        // The endpoint's rows in `bpf status`, and what its egress should be.
        let ep_rows = || -> (Vec<Value>, &str, String) {
            let status: Value = serde_json::from_str(&h.ok(&["bpf", "status", "--format", "json"])).unwrap();
            let rows = status.as_array().unwrap();
            let host_tcx = rows.iter().any(|r| r["netns"] == "host" && r["mechanism"] == "tcx");
            let want = match hooks {
                Some(v) => v,
                None if host_tcx => "tcx",
                None => "cls_bpf",
            };
            let mine = rows.iter().filter(|r| r["netns"].as_str().is_some_and(|n| n.contains(a.as_str())));
            (mine.cloned().collect(), want, format!("{status:#}"))
        };
        let check = |when: &str| {
            let (rows, want, status) = ep_rows();
            // The anti-spoofing program (egress) alone, ending as asked: nothing runs on
            // the endpoint's ingress (the kernel counts what it receives).
            assert_eq!(rows.len(), 1, "{when}: {status}");
            for r in &rows {
                assert!(r["pin"].as_str().is_some_and(|p| p.contains("/tceg-")), "{when}: {status}");
                assert_eq!(r["mechanism"], want, "{when}, {hooks:?}: {status}");
                assert!(r["error"].is_null(), "{when}: {status}");
            }
        };
        check("made");
        let want = ep_rows().1;
        let ns = format!("/run/netns/{a}");
        let inside =
            |cmd: &[&str]| std::process::Command::new("nsenter").arg(format!("--net={ns}")).args(cmd).output().unwrap();
        let filters =
            String::from_utf8_lossy(&inside(&["tc", "filter", "show", "dev", "eth0", "egress"]).stdout).into_owned();
        if want == "cls_bpf" {
            assert!(filters.contains("pref 219") && filters.contains("bpf"), "{filters}");
        } else {
            assert!(filters.trim().is_empty(), "the cls_bpf filter outlived the upgrade: {filters}");
        }
        assert!(inside(&["ping", "-c", "1", "-W", "2", "10.68.0.1"]).status.success(), "{hooks:?}: no traffic");
        assert!(inside(&["ip", "addr", "add", "10.68.0.99/24", "dev", "eth0"]).status.success());
        let spoof = inside(&["ping", "-c", "2", "-W", "1", "-I", "10.68.0.99", "10.68.0.1"]);
        assert!(!spoof.status.success(), "{hooks:?}: a spoofed source got through");
        let stats: Value = serde_json::from_str(&h.ok(&["stats", "--format", "json", &a])).unwrap();
        assert!(stats["endpoints"][0]["spoofed_packets"].as_u64().unwrap() >= 1, "{stats:#}");
        // The anti-spoofing pin removed by hand: reconcile attaches the program again, as
        // a new endpoint's is.
        let eg = ep_rows().0.iter().find_map(|r| r["pin"].as_str().filter(|p| p.contains("/tceg-")).map(String::from));
        std::fs::remove_file(eg.unwrap()).unwrap();
        let report = h.ok(&["reconcile"]);
        assert!(report.contains("no anti-spoofing program on eth0"), "{report}");
        check("repaired");
        let spoof = inside(&["ping", "-c", "2", "-W", "1", "-I", "10.68.0.99", "10.68.0.1"]);
        assert!(!spoof.status.success(), "{hooks:?}: a spoofed source got through after the repair");
        h.ok(&["rm", "-f", &a]);
        h.ok(&["network", "rm", "nk"]);
    }
}

/// The tcx upgrade waits for a pause in endpoint churn. With a pause of a minute,
/// endpoints attached one after another keep their cls_bpf anti-spoofing filter (listed
/// by `tc filter show` inside) and stay queued; `rm` of one cancels its upgrade; `bpf
/// status` has the rest upgraded at once (filters gone, tcx rows). With a short pause an
/// endpoint is upgraded on its own, with no command asking, and still drops a spoofed
/// source. Where the kernel has no tcx, nothing is queued and the filters stay.
#[test]
fn tcx_upgrades_wait_for_a_pause_in_endpoint_churn() {
    use dataplane_tests::lab::wait_until;
    use dataplane_user::{
        bpf::pins::Pins,
        control::background::{queued, PAUSE_ENV},
    };
    let (h, sw) = host_with_switch("dpU").unwrap();
    sw.exec(&["ip", "addr", "add", "10.69.0.1/24", "dev", "up0"]).unwrap();
    h.ok(&["network", "create", "--subnet=10.69.0.0/24", "--gateway=10.69.0.1", "-o", "parent=eth0", "n69"]);
    let pins = Pins::new(&h.bpffs.dir);
    let queue_dir = pins.run_path("harden");
    let queued = || queued(&pins);
    let inside = |name: &str, cmd: &[&str]| {
        std::process::Command::new("nsenter").arg(format!("--net=/run/netns/{name}")).args(cmd).output().unwrap()
    };
    let egress = |name: &str| {
        String::from_utf8_lossy(&inside(name, &["tc", "filter", "show", "dev", "eth0", "egress"]).stdout).into_owned()
    };
    let filtered = |name: &str| egress(name).contains("pref 219");
    let run = |env: &[(&str, &str)], name: &str| {
        let out = h.dp_env(env, &["run", "-d", "--name", name, "--network", "n69"]);
        assert!(out.status.success(), "run {name}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let long = [(PAUSE_ENV, "60000")];
    let names: Vec<String> = (0..3).map(|i| unique(&format!("churn{i}"))).collect();
    for n in &names {
        run(&long, n);
    }
    for n in &names {
        assert!(filtered(n), "{n} has no cls_bpf anti-spoofing filter: {}", egress(n));
    }
    if !dataplane_user::bpf::tc::tcx_supported() {
        assert!(queued().is_empty(), "an upgrade was queued on a kernel without tcx: {:?}", queued());
        return;
    }
    assert_eq!(queued().len(), 3, "the three upgrades should wait for the pause: {:?}", queued());
    h.ok(&["rm", "-f", &names[2]]);
    assert_eq!(queued().len(), 2, "rm did not cancel its endpoint's upgrade: {:?}", queued());
    // The upgrader dies with an entry taken (renamed `.active`): bpf status still ends
    // with both upgraded.
    let bpffs = h.bpffs.dir.display().to_string();
    let upgraders: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            (args.get(1) == Some(&&b"__harden"[..]) && args.get(2) == Some(&bpffs.as_bytes())).then_some(pid)
        })
        .collect();
    assert_eq!(upgraders.len(), 1, "one upgrader per instance: {upgraders:?}");
    // SAFETY: kill(2) of the upgrader this test's commands started.
    unsafe { libc::kill(upgraders[0], libc::SIGKILL) };
    let taken = queue_dir.join(&queued()[0]);
    std::fs::rename(&taken, taken.with_extension("active")).unwrap();
    let status: Value = serde_json::from_str(&h.ok(&["bpf", "status", "--format", "json"])).unwrap();
    assert!(queued().is_empty(), "bpf status left upgrades queued: {:?}", queued());
    for n in &names[..2] {
        assert!(!filtered(n), "{n} still has its filter after bpf status: {}", egress(n));
        let tcx = status.as_array().unwrap().iter().any(|r| {
            r["netns"].as_str().is_some_and(|s| s.contains(n.as_str()))
                && r["pin"].as_str().is_some_and(|p| p.contains("/tceg-"))
                && r["mechanism"] == "tcx"
        });
        assert!(tcx, "{n}: no tcx anti-spoofing link: {status:#}");
    }
    // The upgrader of the long pause exits with its queue empty; the next attach starts
    // one with a short pause.
    let lock = std::fs::File::open(queue_dir.join("upgrader.flock")).unwrap();
    let free = || {
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    };
    let until = |what: &dyn Fn() -> bool| wait_until(Duration::from_secs(20), what);
    assert!(until(&free), "the upgrader did not exit with its queue empty");
    // SAFETY: as above.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_UN) };
    let d = unique("churn-d");
    run(&[(PAUSE_ENV, "50")], &d);
    assert!(
        until(&|| !filtered(&d) && queued().is_empty()),
        "{d} was not upgraded on its own: {} (queue {:?})",
        egress(&d),
        queued()
    );
    assert!(inside(&d, &["ip", "addr", "add", "10.69.0.99/24", "dev", "eth0"]).status.success());
    let spoof = inside(&d, &["ping", "-c", "2", "-W", "1", "-I", "10.69.0.99", "10.69.0.1"]);
    assert!(!spoof.status.success(), "a spoofed source got through after the upgrade");
    let stats: Value = serde_json::from_str(&h.ok(&["stats", "--format", "json", &d])).unwrap();
    assert!(stats["endpoints"][0]["spoofed_packets"].as_u64().unwrap() >= 1, "{stats:#}");
    // The instance torn down (its bpffs dir removed) with an upgrade queued: the upgrader
    // makes no pins again, and the queue's directory goes with its last upgrader.
    let e = unique("churn-e");
    run(&[(PAUSE_ENV, "300")], &e);
    assert_eq!(queued().len(), 1, "{:?}", queued());
    std::fs::remove_dir_all(&h.bpffs.dir).unwrap();
    assert!(until(&|| !queue_dir.exists()), "the queue outlived its instance: {:?}", std::fs::read_dir(&queue_dir));
    assert!(!h.bpffs.dir.exists(), "an upgrade made the torn-down instance's pins again");
}

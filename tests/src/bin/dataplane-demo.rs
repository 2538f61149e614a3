//! `cargo xtask demo`: the admission filter on a veth "trunk" between two private
//! namespaces, with real frames, run by the real `dataplane` binary. Everything it makes
//! is removed when it ends, also on failure.

use std::{collections::BTreeSet, process::Output, time::Duration};

use anyhow::{bail, Context, Result};
use dataplane_tests::{
    dataplane,
    frames::{lab_seq, mac_str, udp, BROADCAST},
    lab::{veth_between, Host},
    raw::RawSocket,
    Bpffs, Lab, Netns,
};

fn show(step: &str, out: Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{step} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    for line in stdout.lines() {
        println!("    {line}");
    }
    Ok(stdout)
}

fn main() -> Result<()> {
    admission_demo()?;
    networks_demo()
}

/// Run `dataplane ARGS` on a demo host, echoing the command and its output.
fn on(host: &Host, label: &str, args: &[&str]) -> Result<String> {
    println!(
        "\n[{label}]$ dataplane {}",
        args.iter()
            .map(|a| if a.contains(' ') { format!("{a:?}") } else { a.to_string() })
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = host.dp(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in stdout.lines().chain(String::from_utf8_lossy(&out.stderr).lines()) {
        println!("    {line}");
    }
    if !out.status.success() {
        bail!("`dataplane {}` failed", args.join(" "));
    }
    Ok(stdout)
}

fn networks_demo() -> Result<()> {
    println!("\n== dataplane demo: Docker-style networks (the seed document's commands) ==");
    let a = Host::new("demoA")?;
    let b = Host::new("demoB")?;
    let sw = Netns::new("demoSw")?;
    // host A's eth0 goes to the "switch"; trunk0 is an 802.1Q trunk between hosts A and B.
    veth_between(&sw, "up0", &a.ns, "eth0")?;
    veth_between(&a.ns, "trunk0", &b.ns, "trunk0")?;
    sw.exec(&["ip", "addr", "add", "172.16.86.1/24", "dev", "up0"])?;
    println!(
        "lab: host A ({}) eth0 <-> switch ({}, 172.16.86.1); host A trunk0 <-> host B ({}) trunk0",
        a.ns.name, sw.name, b.ns.name
    );

    seed_networks(&a)?;
    vlan_trunk(&a, &b)?;
    spoofing(&a)?;
    none_and_host(&a)?;
    for (h, label) in [(&a, "A"), (&b, "B")] {
        let names = h.endpoint_names();
        let mut args = vec!["rm", "-f"];
        args.extend(names.iter().map(String::as_str));
        on(h, label, &args)?;
    }
    on(&a, "A", &["network", "rm", "pub_net", "macnet32", "macvlan50"])?;
    on(&b, "B", &["network", "rm", "macvlan50"])?;
    println!("\ncleaning up the lab namespaces");
    Ok(())
}

/// The seed document's two networks on eth0, with endpoints.
fn seed_networks(a: &Host) -> Result<()> {
    on(
        a,
        "A",
        &[
            "network",
            "create",
            "-d",
            "macvlan",
            "--subnet=172.16.86.0/24",
            "--gateway=172.16.86.1",
            "-o",
            "parent=eth0",
            "pub_net",
        ],
    )?;
    on(
        a,
        "A",
        &[
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
        ],
    )?;
    on(a, "A", &["network", "ls"])?;
    on(a, "A", &["run", "-d", "--name", "demo-web", "--network", "pub_net"])?;
    on(a, "A", &["run", "-d", "--name", "demo-db", "--network", "pub_net"])?;
    on(a, "A", &["exec", "demo-web", "ping", "-c", "1", "-W", "1", "172.16.86.3"])?;
    on(a, "A", &["exec", "demo-web", "ping", "-c", "1", "-W", "1", "172.16.86.1"])?;
    on(a, "A", &["run", "-d", "--name", "demo-r1", "--network", "macnet32"])?;
    on(a, "A", &["run", "-d", "--name", "demo-r2", "--network", "macnet32"])?;
    println!("    (192.168.32.129 is the aux address my-router: skipped)");
    on(a, "A", &["ps"])?;
    Ok(())
}

/// VLAN 50 on the trunk between hosts A and B.
fn vlan_trunk(a: &Host, b: &Host) -> Result<()> {
    for (h, label, ip) in [(a, "A", "192.168.50.10"), (b, "B", "192.168.50.20")] {
        on(
            h,
            label,
            &[
                "network",
                "create",
                "-d",
                "macvlan",
                "--subnet=192.168.50.0/24",
                "--gateway=192.168.50.1",
                "-o",
                "parent=trunk0.50",
                "macvlan50",
            ],
        )?;
        on(
            h,
            label,
            &[
                "run",
                "-d",
                "--name",
                &format!("demo-v50{}", label.to_lowercase()),
                "--network",
                "macvlan50",
                "--ip",
                ip,
            ],
        )?;
    }
    println!("    (this kernel has no 8021q module: trunk0.50 is dataplane's eBPF VLAN device)");
    on(a, "A", &["exec", "demo-v50a", "ping", "-c", "2", "-W", "1", "192.168.50.20"])?;
    Ok(())
}

/// demo-web sends as an address and a MAC it was not given: dropped.
fn spoofing(a: &Host) -> Result<()> {
    println!("\n-- a spoofing attempt: demo-web sends as 172.16.86.99 and as another MAC --");
    on(a, "A", &["exec", "demo-web", "ip", "addr", "add", "172.16.86.99/24", "dev", "eth0"])?;
    let spoof = a.dp(&["exec", "demo-web", "ping", "-c", "2", "-W", "1", "-I", "172.16.86.99", "172.16.86.1"]);
    println!(
        "    ping from the unallocated address: {}",
        if spoof.status.success() { "ANSWERED (unexpected)" } else { "no answer: dropped on demo-web's egress" }
    );
    on(a, "A", &["exec", "demo-web", "ip", "addr", "del", "172.16.86.99/24", "dev", "eth0"])?;
    on(a, "A", &["exec", "demo-web", "ip", "link", "set", "eth0", "address", "02:42:ac:10:56:99"])?;
    let spoof = a.dp(&["exec", "demo-web", "ping", "-c", "2", "-W", "1", "172.16.86.3"]);
    println!(
        "    ping to demo-db with a changed MAC: {}",
        if spoof.status.success() { "ANSWERED (unexpected)" } else { "no answer: dropped before reaching the sibling" }
    );
    on(a, "A", &["exec", "demo-web", "ip", "link", "set", "eth0", "address", "02:42:ac:10:56:02"])?;
    on(a, "A", &["stats"])?;
    Ok(())
}

/// The predefined none and host networks, and the parent counters.
fn none_and_host(a: &Host) -> Result<()> {
    on(a, "A", &["run", "--rm", "-dit", "--network", "none", "--name", "no-net-alpine", "alpine:latest", "ash"])?;
    on(a, "A", &["exec", "no-net-alpine", "ip", "link", "show"])?;
    on(a, "A", &["exec", "no-net-alpine", "ip", "route"])?;
    on(a, "A", &["stop", "no-net-alpine"])?;
    on(a, "A", &["run", "--rm", "--network", "host", "-p", "80:80", "--name", "demo-host", "--", "true"])?;
    on(a, "A", &["bpf", "counters"])?;
    Ok(())
}

fn admission_demo() -> Result<()> {
    println!("== dataplane demo: per-MAC admission in XDP on a veth trunk ==");
    let lab = Lab::new().context("creating the lab namespaces (needs root)")?;
    let bpffs = Bpffs::new()?;
    println!(
        "lab: namespace {} ({}, the upstream switch) <-> namespace {} ({}, our host's parent interface)",
        lab.a.name, lab.a_if, lab.b.name, lab.b_if
    );
    println!("pins: {}", bpffs.dir.display());

    println!("\n$ dataplane bpf load --iface {} --netns {}", lab.b_if, lab.b.name);
    show("load", dataplane(&bpffs, &["bpf", "load", "--iface", &lab.b_if, "--netns", &lab.b.name]))?;

    let endpoints = [("web", [0x02, 0x42, 0xac, 0x10, 0x56, 0x02]), ("db", [0x02, 0x42, 0xac, 0x10, 0x56, 0x03])];
    let stranger = [0x02, 0x42, 0xac, 0x10, 0x56, 0x99];
    for (i, (name, mac)) in endpoints.iter().enumerate() {
        println!(
            "\n$ dataplane bpf admit add --iface {} --netns {} --endpoint {} {}   # endpoint {name}",
            lab.b_if,
            lab.b.name,
            i + 1,
            mac_str(mac)
        );
        let ep = (i + 1).to_string();
        show(
            "admit",
            dataplane(
                &bpffs,
                &[
                    "bpf",
                    "admit",
                    "add",
                    "--iface",
                    &lab.b_if,
                    "--netns",
                    &lab.b.name,
                    "--endpoint",
                    &ep,
                    &mac_str(mac),
                ],
            ),
        )?;
    }
    println!("\n(every dataplane process has exited; the pinned link keeps the program deciding)");

    let groups: [(&str, [u8; 6], u32); 4] = [
        ("to endpoint web", endpoints[0].1, 1000),
        ("to endpoint db", endpoints[1].1, 2000),
        ("to an unknown MAC", stranger, 3000),
        ("broadcast", BROADCAST, 4000),
    ];
    let tx = RawSocket::open(&lab.a, &lab.a_if)?;
    let rx = RawSocket::open(&lab.b, &lab.b_if)?;
    for (_, dst, base) in &groups {
        for s in 0..20 {
            tx.send(&udp(*dst, base + s, 64))?;
        }
    }
    let got: BTreeSet<u32> = rx.recv_for(Duration::from_millis(500))?.iter().filter_map(|f| lab_seq(f)).collect();
    println!("\nsent 20 frames of each kind from {} into the trunk:", lab.a.name);
    println!("  {:<20} {:<18} {:>9} {:>8}", "KIND", "DESTINATION", "DELIVERED", "DROPPED");
    for (what, dst, base) in &groups {
        let delivered = (*base..base + 20).filter(|s| got.contains(s)).count();
        println!("  {:<20} {:<18} {:>9} {:>8}", what, mac_str(dst), delivered, 20 - delivered);
    }

    println!("\n$ dataplane bpf counters --netns {}", lab.b.name);
    show("counters", dataplane(&bpffs, &["bpf", "counters", "--netns", &lab.b.name]))?;

    println!("\n$ dataplane bpf unload --iface {} --netns {}", lab.b_if, lab.b.name);
    show("unload", dataplane(&bpffs, &["bpf", "unload", "--iface", &lab.b_if, "--netns", &lab.b.name]))?;
    println!("pins left: {}", if bpffs.dir.exists() { "some (unexpected)" } else { "none" });
    Ok(())
}

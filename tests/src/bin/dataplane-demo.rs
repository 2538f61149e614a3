//! `cargo xtask demo`: the admission filter on a veth "trunk" between two private
//! namespaces, with real frames, run by the real `dataplane` binary. Everything it makes
//! is removed when it ends, also on failure.

use std::{collections::BTreeSet, process::Output, time::Duration};

use anyhow::{bail, Context, Result};
use dataplane_tests::{
    dataplane,
    frames::{lab_seq, mac_str, udp, BROADCAST},
    raw::RawSocket,
    Bpffs, Lab,
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
        println!("\n$ dataplane bpf admit add --iface {} --netns {} --endpoint {} {}   # endpoint {name}", lab.b_if, lab.b.name, i + 1, mac_str(mac));
        let ep = (i + 1).to_string();
        show("admit", dataplane(&bpffs, &["bpf", "admit", "add", "--iface", &lab.b_if, "--netns", &lab.b.name, "--endpoint", &ep, &mac_str(mac)]))?;
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
    println!("\ncleaning up the lab namespaces");
    Ok(())
}

//! Real frames over a veth pair between two namespaces, decided by the XDP program that
//! the `dataplane` binary attached (and that outlives it).

use std::{collections::BTreeSet, time::Duration};

use dataplane_tests::{
    dataplane,
    frames::{lab_seq, mac_str, udp, BROADCAST},
    raw::RawSocket,
    Bpffs, Lab,
};

const ADMITTED: [u8; 6] = [0x02, 0xdb, 0x00, 0x00, 0x00, 0x01];
const UNKNOWN: [u8; 6] = [0x02, 0xdb, 0x00, 0x00, 0x00, 0x02];

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "dataplane failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn load(bpffs: &Bpffs, lab: &Lab, mode: &str) -> String {
    ok(dataplane(bpffs, &["bpf", "load", "--iface", &lab.b_if, "--netns", &lab.b.name, "--mode", mode]))
}

fn admit(bpffs: &Bpffs, lab: &Lab, mac: [u8; 6]) {
    ok(dataplane(bpffs, &["bpf", "admit", "add", "--iface", &lab.b_if, "--netns", &lab.b.name, &mac_str(&mac)]));
}

fn counters(bpffs: &Bpffs, lab: &Lab) -> serde_json::Value {
    let out = ok(dataplane(bpffs, &["bpf", "counters", "--netns", &lab.b.name, "--format", "json"]));
    serde_json::from_str(&out).unwrap()
}

fn count(c: &serde_json::Value, iface: &str, reason: &str) -> u64 {
    c.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["iface"] == iface && r["reason"] == reason)
        .map(|r| r["packets"].as_u64().unwrap())
        .sum()
}

/// Send `dst` frames with the given sequence numbers; return the sequence numbers that
/// arrived on the far side.
fn exchange(lab: &Lab, sends: &[([u8; 6], std::ops::Range<u32>)]) -> BTreeSet<u32> {
    let tx = RawSocket::open(&lab.a, &lab.a_if).unwrap();
    let rx = RawSocket::open(&lab.b, &lab.b_if).unwrap();
    for (dst, seqs) in sends {
        for s in seqs.clone() {
            tx.send(&udp(*dst, s, 64)).unwrap();
        }
    }
    rx.recv_for(Duration::from_millis(400)).unwrap().iter().filter_map(|f| lab_seq(f)).collect()
}

fn run_admission(mode: &str) {
    let lab = Lab::new().unwrap();
    let bpffs = Bpffs::new().unwrap();
    let out = load(&bpffs, &lab, mode);
    let expected_mode = if mode == "skb" { "skb XDP" } else { "native XDP" };
    assert!(out.contains(expected_mode), "{out}");
    admit(&bpffs, &lab, ADMITTED);
    // Every dataplane process has exited by now: the pinned link keeps the program deciding.
    assert!(lab.b.xdp_prog_id(&lab.b_if).unwrap().is_some(), "program not attached after the loader exited");

    let got = exchange(&lab, &[(ADMITTED, 1..11), (UNKNOWN, 100..110), (BROADCAST, 200..210)]);
    let admitted: BTreeSet<u32> = (1..11).collect();
    let broadcast: BTreeSet<u32> = (200..210).collect();
    assert!(got.is_superset(&admitted), "admitted frames missing: got {got:?}");
    assert!(got.is_superset(&broadcast), "broadcast frames missing: got {got:?}");
    assert!(got.iter().all(|s| !(100..110).contains(s)), "unknown-MAC frames delivered: {got:?}");

    let c = counters(&bpffs, &lab);
    assert_eq!(count(&c, &lab.b_if, "drop_unknown_destination"), 10, "{c:#}");
    assert_eq!(count(&c, &lab.b_if, "pass_admitted"), 10, "{c:#}");
    assert!(count(&c, &lab.b_if, "pass_broadcast") >= 10, "{c:#}");
}

#[test]
fn native_xdp_admits_known_macs_drops_unknown_passes_broadcast() {
    run_admission("native");
}

#[test]
fn generic_xdp_decides_the_same() {
    run_admission("skb");
}

#[test]
fn host_mac_of_the_parent_is_admitted() {
    let lab = Lab::new().unwrap();
    let bpffs = Bpffs::new().unwrap();
    load(&bpffs, &lab, "auto");
    let own = lab.b.mac(&lab.b_if).unwrap();
    let got = exchange(&lab, &[(own, 1..6)]);
    assert_eq!(got, (1..6).collect(), "frames to the parent's own MAC must reach the host");
}

#[test]
fn reload_replaces_the_program_in_place() {
    let lab = Lab::new().unwrap();
    let bpffs = Bpffs::new().unwrap();
    load(&bpffs, &lab, "auto");
    let st1: serde_json::Value =
        serde_json::from_str(&ok(dataplane(&bpffs, &["bpf", "status", "--format", "json"]))).unwrap();
    admit(&bpffs, &lab, ADMITTED);
    let out = load(&bpffs, &lab, "auto");
    assert!(out.contains("replaced the program on veth-b in place"), "{out}");
    let st2: serde_json::Value =
        serde_json::from_str(&ok(dataplane(&bpffs, &["bpf", "status", "--format", "json"]))).unwrap();
    assert_eq!(st1[0]["link_id"], st2[0]["link_id"], "the same link must carry the new program");
    assert_ne!(st1[0]["program_id"], st2[0]["program_id"], "the program was not replaced");
    assert_eq!(lab.b.xdp_prog_id(&lab.b_if).unwrap(), st2[0]["program_id"].as_u64());
    // The maps survived the swap: the admitted MAC still passes, others still drop.
    let got = exchange(&lab, &[(ADMITTED, 1..6), (UNKNOWN, 50..55)]);
    assert_eq!(got, (1..6).collect());
    assert_eq!(count(&counters(&bpffs, &lab), &lab.b_if, "drop_unknown_destination"), 5);
}

#[test]
fn unload_leaves_no_program_and_no_pins() {
    let lab = Lab::new().unwrap();
    let bpffs = Bpffs::new().unwrap();
    load(&bpffs, &lab, "auto");
    admit(&bpffs, &lab, ADMITTED);
    let table_lock = dataplane_user::bpf::admit::lock_path(&dataplane_user::bpf::pins::Pins::new(&bpffs.dir));
    assert!(table_lock.exists(), "admitting should have taken the table's lock at {}", table_lock.display());
    let prog = lab.b.xdp_prog_id(&lab.b_if).unwrap().expect("attached");
    ok(dataplane(&bpffs, &["bpf", "unload", "--iface", &lab.b_if, "--netns", &lab.b.name]));
    assert!(!table_lock.exists(), "the table's lock file outlived the table");
    assert_eq!(lab.b.xdp_prog_id(&lab.b_if).unwrap(), None, "XDP still attached after unload");
    assert!(
        !bpffs.dir.exists(),
        "pins left behind: {:?}",
        std::fs::read_dir(&bpffs.dir).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    let still_loaded = aya::programs::loaded_programs().flatten().any(|p| u64::from(p.id()) == prog);
    assert!(!still_loaded, "program {prog} is still loaded in the kernel");
    // With the program gone, the unknown MAC reaches the interface again.
    let got = exchange(&lab, &[(UNKNOWN, 1..4)]);
    assert_eq!(got, (1..4).collect());
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_no_trace() {
    let lab = Lab::new().unwrap();
    let bpffs = Bpffs::new().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["bpf", "load", "--iface", "nope0", "--netns", &lab.b.name],
            "interface \"nope0\" not found in network namespace",
        ),
        (
            vec!["bpf", "load", "--iface", "veth-b", "--netns", "dp-no-such-ns"],
            "network namespace \"dp-no-such-ns\" not found at /run/netns/dp-no-such-ns",
        ),
        (
            vec!["bpf", "unload", "--iface", "veth-b", "--netns", &lab.b.name],
            "nothing to detach: dataplane has no program on veth-b",
        ),
        (
            vec!["bpf", "admit", "add", "--iface", "veth-b", "--netns", &lab.b.name, "02:00:00:00:00:01"],
            "no dataplane maps under",
        ),
        (
            vec!["bpf", "load", "--iface", "veth-b", "--netns", &lab.b.name, "--mode", "turbo"],
            "invalid value 'turbo' for '--mode <MODE>'",
        ),
    ];
    for (args, want) in cases {
        let out = dataplane(&bpffs, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: expected {want:?} in stderr, got {err}");
        assert!(!bpffs.dir.exists(), "{args:?} left pins in {}", bpffs.dir.display());
        assert_eq!(lab.b.xdp_prog_id(&lab.b_if).unwrap(), None, "{args:?} attached something");
    }
    // With a program loaded, bad admission input names the bad value and changes nothing.
    load(&bpffs, &lab, "auto");
    let before = ok(dataplane(&bpffs, &["bpf", "admit", "ls", "--netns", &lab.b.name, "--format", "json"]));
    for (args, want) in [
        (
            vec!["bpf", "admit", "add", "--iface", "veth-b", "--netns", &lab.b.name, "02:00:00:00:00"],
            "invalid MAC address \"02:00:00:00:00\"",
        ),
        (
            vec!["bpf", "admit", "add", "--iface", "veth-b", "--netns", &lab.b.name, "01:00:5e:00:00:01"],
            "MAC 01:00:5e:00:00:01 is a group",
        ),
        (
            vec![
                "bpf",
                "admit",
                "add",
                "--iface",
                "veth-b",
                "--netns",
                &lab.b.name,
                "--vlan",
                "4095",
                "02:00:00:00:00:01",
            ],
            "VLAN id 4095 is out of range",
        ),
        (
            vec!["bpf", "admit", "del", "--iface", "veth-b", "--netns", &lab.b.name, "02:00:00:00:00:07"],
            "02:00:00:00:00:07 is not admitted on veth-b",
        ),
    ] {
        let out = dataplane(&bpffs, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: expected {want:?} in stderr, got {err}");
    }
    let after = ok(dataplane(&bpffs, &["bpf", "admit", "ls", "--netns", &lab.b.name, "--format", "json"]));
    assert_eq!(before, after, "a failed command changed the admission map");
}

#[test]
fn drop_events_are_off_by_default_and_logged_at_debug() {
    let lab = Lab::new().unwrap();
    let bpffs = Bpffs::new().unwrap();
    load(&bpffs, &lab, "auto");
    exchange(&lab, &[(UNKNOWN, 1..4)]);
    let quiet = ok(dataplane(&bpffs, &["bpf", "log", "--seconds", "0"]));
    assert!(!quiet.contains("drop"), "events logged while logging is off: {quiet}");

    let out = ok(dataplane(&bpffs, &["bpf", "reload", "--log-level", "debug"]));
    assert!(out.contains("dp_parent"), "{out}");
    exchange(&lab, &[(UNKNOWN, 10..13)]);
    let events = ok(dataplane(&bpffs, &["bpf", "log", "--seconds", "0"]));
    let drops: Vec<&str> =
        events.lines().filter(|l| l.contains("dp_parent: drop") && l.contains("02:db:00:00:00:02")).collect();
    assert_eq!(drops.len(), 3, "expected 3 drop events: {events}");
    assert!(drops[0].starts_with("DEBUG"), "{events}");
    assert!(
        drops[0].contains(&format!("reason={}", dataplane_common::Reason::DropUnknownDestination as u32)),
        "{events}"
    );

    // Back off: no more events.
    ok(dataplane(&bpffs, &["bpf", "reload"]));
    exchange(&lab, &[(UNKNOWN, 20..23)]);
    let quiet = ok(dataplane(&bpffs, &["bpf", "log", "--seconds", "0"]));
    assert!(!quiet.contains("dp_parent: drop"), "{quiet}");
}

/// A map made by hand as an older build made it: a BPF map of `map_type` with one entry
/// (`key`, `value`), pinned at `pin` in place of this build's.
fn pin_old_map(pin: &std::path::Path, map_type: u32, max_entries: u32, key: &[u8], value: &[u8]) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let bpf = |cmd: libc::c_long, attr: &[u64]| {
        // SAFETY: bpf(2) with a zero-padded attr of the command's layout; fds owned below.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), std::mem::size_of_val(attr)) }
    };
    // BPF_MAP_CREATE (0): map_type, key_size, value_size, max_entries, flags (u32 each).
    let create =
        [u64::from(map_type) | (key.len() as u64) << 32, value.len() as u64 | u64::from(max_entries) << 32, 0, 0];
    let fd = bpf(0, &create);
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh map fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // BPF_MAP_UPDATE_ELEM (2): map_fd, pad, key, value, flags.
    let update = [fd.as_raw_fd() as u64, key.as_ptr() as u64, value.as_ptr() as u64, 0];
    assert_eq!(bpf(2, &update), 0, "BPF_MAP_UPDATE_ELEM: {}", std::io::Error::last_os_error());
    std::fs::remove_file(pin).unwrap();
    let path = std::ffi::CString::new(pin.to_str().unwrap()).unwrap();
    // BPF_OBJ_PIN (6): pathname, bpf_fd, file_flags.
    let attr = [path.as_ptr() as u64, fd.as_raw_fd() as u64, 0];
    assert_eq!(bpf(6, &attr), 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
}

/// Pinned maps left by an older build with another layout are re-created with this
/// build's layout on reload, and their entries are carried over: byte-wise where only
/// the capacity changed, converted for the admission map (a BPF hash in earlier versions,
/// an open-addressing table now).
#[test]
fn reload_migrates_a_map_whose_layout_changed() {
    let lab = Lab::new().unwrap();
    let bpffs = Bpffs::new().unwrap();
    load(&bpffs, &lab, "auto");
    let maps = bpffs.dir.join("maps");
    let ifindex = lab.b.ifindex(&lab.b_if).unwrap();

    // The earlier admission map, holding the allocation an earlier binary made: the
    // running program (which has this build's table) does not see it.
    let mut key = ifindex.to_ne_bytes().to_vec();
    key.extend_from_slice(&0u16.to_ne_bytes());
    key.extend_from_slice(&ADMITTED);
    let value = [7u32.to_ne_bytes(), 0u32.to_ne_bytes()].concat();
    pin_old_map(&maps.join("DP_ADMIT"), 1 /* hash */, 1024, &key, &value);
    assert!(exchange(&lab, &[(ADMITTED, 1..4)]).is_empty(), "the running program should not know the old entry");
    // A conflict record in a map a tenth of this build's size.
    let conflict = [5u64.to_ne_bytes().to_vec(), 0u64.to_ne_bytes().to_vec(), vec![0; 8]].concat();
    pin_old_map(&maps.join("DP_CONFLICTS"), 1, 1024, &9u32.to_ne_bytes(), &conflict);
    // Commands refuse the old admission map with advice instead of misreading it.
    let out = dataplane(&bpffs, &["bpf", "admit", "ls", "--netns", &lab.b.name]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("run `dataplane bpf reload`"), "{err}");

    let text = ok(dataplane(&bpffs, &["bpf", "reload"]));
    assert!(
        text.contains("migrated map DP_ADMIT (type 1 key 12 value 8 entries 1024 -> type 2 key 4 value 16 entries 528384): 1 entries carried over"),
        "{text}"
    );
    assert!(
        text.contains("migrated map DP_CONFLICTS (type 1 key 4 value 24 entries 1024 -> type 1 key 4 value 24 entries 131072): 1 entries carried over"),
        "{text}"
    );
    assert_eq!(exchange(&lab, &[(ADMITTED, 10..14)]), (10..14).collect(), "the migrated entry must admit frames");
    let listed = ok(dataplane(&bpffs, &["bpf", "admit", "ls", "--netns", &lab.b.name, "--format", "json"]));
    let rows: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(rows[0]["mac"], mac_str(&ADMITTED), "{listed}");
    assert_eq!(rows[0]["endpoint"], 7, "{listed}");
    assert!(!maps.join("DP_ADMIT_migrating").exists() && !maps.join("DP_CONFLICTS_migrating").exists());

    // A table of another size (1024 slots and their bitmap): keys are placed again by
    // their hash, not copied slot by slot.
    let slot = [key.clone(), 8u32.to_ne_bytes().to_vec()].concat();
    pin_old_map(&maps.join("DP_ADMIT"), 2 /* array */, 1024 + 8, &5u32.to_ne_bytes(), &slot);
    let text = ok(dataplane(&bpffs, &["bpf", "reload"]));
    assert!(
        text.contains("migrated map DP_ADMIT (type 2 key 4 value 16 entries 1032 -> type 2 key 4 value 16 entries 528384): 1 entries carried over"),
        "{text}"
    );
    assert_eq!(exchange(&lab, &[(ADMITTED, 20..24)]), (20..24).collect(), "the re-placed entry must admit frames");
    let listed = ok(dataplane(&bpffs, &["bpf", "admit", "ls", "--netns", &lab.b.name, "--format", "json"]));
    let rows: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!((rows.as_array().unwrap().len(), &rows[0]["endpoint"]), (1, &serde_json::json!(8)), "{listed}");
}

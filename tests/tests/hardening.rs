//! Defects found by hostile testing, each as a class: pin names bpffs refuses, failed
//! commands removing entries they did not make, map entries outliving a failed commit,
//! names with dots, leading-zero VIDs, unusable gateways, EPIPE.

use std::{
    collections::BTreeSet,
    os::{fd::FromRawFd, unix::process::ExitStatusExt},
    process::{Command, Stdio},
};

use dataplane_tests::{
    lab::{host_with_switch, unique, veth_between, Host},
    Netns,
};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

fn admit(h: &Host) -> Vec<Value> {
    json(&h.ok(&["bpf", "admit", "ls", "--format", "json"])).as_array().cloned().unwrap_or_default()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mac_of(ns: &Netns, iface: &str) -> String {
    ns.link_json(iface).unwrap()["address"].as_str().unwrap().to_string()
}

fn links(ns: &Netns) -> BTreeSet<String> {
    let v = json(&ns.exec(&["ip", "-j", "link"]).unwrap());
    v.as_array().unwrap().iter().filter_map(|l| l["ifname"].as_str().map(str::to_string)).collect()
}

/// Names with dots (endpoint names, parents, trunk parents) work end to end: every pin
/// name is valid for bpffs, and removal leaves nothing.
#[test]
fn names_with_dots_work_and_leave_nothing() {
    let (h, sw) = host_with_switch("dpDot").unwrap();
    veth_between(&sw, "up1", &h.ns, "my.nic").unwrap();
    sw.exec(&["ip", "addr", "add", "10.80.0.1/24", "dev", "up1"]).unwrap();
    let before = links(&h.ns);
    h.ok(&["network", "create", "--subnet=10.80.0.0/24", "--gateway=10.80.0.1", "-o", "parent=my.nic", "dotted"]);
    h.ok(&["network", "create", "--subnet=10.81.0.0/24", "-o", "parent=eth0.73", "v73"]);
    let name = format!("{}.b", unique("a"));
    h.ok(&["run", "-d", "--name", &name, "--network", "dotted", "--", "sleep", "600"]);
    h.ok(&["run", "-d", "--name", &format!("{name}2"), "--network", "v73", "--", "sleep", "600"]);
    assert!(h.dp(&["exec", &name, "ping", "-c", "1", "-W", "1", "10.80.0.1"]).status.success());
    let status = json(&h.ok(&["bpf", "status", "--format", "json"])).to_string();
    // eth0.73 is the kernel's 8021q device where the kernel has it, else our eBPF one.
    let kernel_vlan = h.ns.link_json("eth0.73").unwrap()["linkinfo"]["info_kind"] == "vlan";
    assert!(status.contains("my.nic") && (kernel_vlan || status.contains("dpv73")), "{status}");
    assert!(h.ok(&["reconcile"]).contains("no drift"));
    h.ok(&["rm", "-f", &name, &format!("{name}2")]);
    h.ok(&["network", "rm", "dotted", "v73"]);
    assert_eq!(links(&h.ns), before);
    assert!(!h.bpffs.dir.exists(), "pins left behind");
}

/// A failed command leaves no trace, including entries it did not create: `run` with the
/// parent's own MAC must not delete the parent's admission entry.
#[test]
fn a_failed_run_never_removes_entries_it_did_not_make() {
    let (h, _sw) = host_with_switch("dpOwn").unwrap();
    h.ok(&["network", "create", "--subnet=10.82.0.0/24", "-o", "parent=eth0", "n82"]);
    let parent_mac = mac_of(&h.ns, "eth0");
    let before = admit(&h);
    assert!(before.iter().any(|e| e["mac"] == parent_mac.as_str()), "{before:?}");
    let out = h.dp(&["run", "-d", "--name", "own", "--network", "n82", "--mac-address", &parent_mac]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&parent_mac) && err.contains("already admitted on eth0 by the parent eth0 itself"), "{err}");
    assert_eq!(admit(&h), before, "the failed run changed the admission map");
    assert!(h.endpoint_names().is_empty());
    // Another endpoint's MAC, likewise.
    h.ok(&["run", "-d", "--name", "first", "--network", "n82", "--mac-address", "02:00:00:82:00:01"]);
    let before = admit(&h);
    let out = h.dp(&["bpf", "admit", "ls"]);
    assert!(out.status.success());
    let dup = h.dp(&["run", "-d", "--name", "second", "--network", "n82", "--mac-address", "02:00:00:82:00:01"]);
    assert!(!dup.status.success() && stderr(&dup).contains("02:00:00:82:00:01"), "{}", stderr(&dup));
    assert_eq!(admit(&h), before);
}

/// Map entries are pushed only after the rows are committed: a commit that fails on a
/// full state filesystem leaves no admission entry behind.
#[test]
fn a_full_state_filesystem_leaves_no_map_entries() {
    let (h, _sw) = host_with_switch("dpFull").unwrap();
    h.ok(&["network", "create", "--subnet=10.83.0.0/24", "-o", "parent=eth0", "n83"]);
    h.ok(&["run", "-d", "--name", "warm", "--network", "n83"]);
    // Move the state onto a tiny tmpfs, then fill it.
    let small = std::env::temp_dir().join(unique("dpsmall-"));
    std::fs::create_dir_all(&small).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap()
        .success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _guard = Unmount(small.clone());
    let state = small.join("state");
    let cp = Command::new("cp").arg("-a").arg(&h.state).arg(&state).status().unwrap();
    assert!(cp.success());
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", small.join("fill").display()))
        .args(["bs=4k"])
        .stderr(Stdio::null())
        .status();
    let before = admit(&h);
    let dp = |args: &[&str]| h.command_for(&state, &h.bpffs.dir).args(args).output().unwrap();
    // Made by an instance the Host guard does not know (the state copy): removed by name.
    let _guards: Vec<_> = (0..5).map(|i| dataplane_tests::lab::NetnsByName(format!("full{i}"))).collect();
    let mut failures = 0;
    for i in 0..5 {
        let out = dp(&[
            "run",
            "-d",
            "--name",
            &format!("full{i}"),
            "--network",
            "n83",
            "--mac-address",
            &format!("02:00:00:83:00:{i:02x}"),
        ]);
        if !out.status.success() {
            failures += 1;
        }
    }
    assert!(failures > 0, "the state filesystem never filled up");
    let after = admit(&h);
    let new: Vec<&Value> = after.iter().filter(|e| !before.contains(e)).collect();
    // Entries may exist only for endpoints whose rows made it into the store.
    let ps = dp(&["ps", "-a", "--format", "json"]);
    let known = String::from_utf8_lossy(&ps.stdout).to_string();
    for e in new {
        assert!(known.contains(e["mac"].as_str().unwrap()), "entry {e} has no endpoint in the store: {known}");
    }
    let _ = std::fs::remove_file(small.join("fill"));
    for i in 0..5 {
        let _ = dp(&["rm", "-f", &format!("full{i}")]);
    }
}

#[test]
fn leading_zero_vids_and_unusable_addresses_are_refused_up_front() {
    let (h, _sw) = host_with_switch("dpVid").unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["network", "create", "--subnet=10.84.0.0/24", "-o", "parent=eth0.070", "z"], "write it as eth0.70"),
        (
            &["network", "create", "--subnet=10.84.0.0/24", "--gateway=10.84.0.255", "-o", "parent=eth0", "z"],
            "invalid gateway 10.84.0.255: it is the broadcast address",
        ),
        (
            &[
                "network",
                "create",
                "--subnet=10.84.0.0/24",
                "--gateway=10.84.0.1",
                "--aux-address=r=10.84.0.1",
                "-o",
                "parent=eth0",
                "z",
            ],
            "invalid aux address r 10.84.0.1: it is the gateway",
        ),
        (
            &["network", "create", "--subnet=224.0.0.0/24", "-o", "parent=eth0", "z"],
            "invalid subnet 224.0.0.0/24: it is a multicast range",
        ),
    ];
    let before = links(&h.ns);
    for (args, want) in cases {
        let out = h.dp(args);
        assert!(!out.status.success() && stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(links(&h.ns), before);
    assert!(!h.bpffs.dir.exists());
    assert_eq!(dataplane_tests::json_lines(&h.ok(&["network", "ls", "--format", "json"])).as_array().unwrap().len(), 2);
}

/// `dataplane ps | head -1`: a reader that goes away ends the command quietly.
#[test]
fn a_closed_output_pipe_ends_commands_quietly() {
    let (h, _sw) = host_with_switch("dpPipe").unwrap();
    h.ok(&["network", "create", "--subnet=10.85.0.0/24", "-o", "parent=eth0", "n85"]);
    let mut fds = [0; 2];
    // SAFETY: pipe(2) into a local array; both ends are owned below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fds[0]/fds[1] were just created and are owned by these handles only.
    let (read_end, write_end) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
    drop(read_end);
    for args in [&["network", "ls"][..], &["stats"], &["ps"], &["network", "inspect", "n85"]] {
        let out = h
            .command()
            .args(args)
            .stdout(Stdio::from(write_end.try_clone().unwrap()))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked") && !err.contains("backtrace"), "{args:?}: {err}");
        assert!(out.status.success() || out.status.signal() == Some(libc::SIGPIPE), "{args:?}: {:?} {err}", out.status);
    }
}

/// `network connect` in flight is left alone by every other command's reconcile (the same
/// rule as run and rm): a thorough reconcile and a `run` during its work change nothing.
#[test]
fn a_connect_in_flight_is_left_alone_by_other_commands() {
    let (h, _sw) = host_with_switch("dpConn").unwrap();
    h.ok(&["network", "create", "--subnet=10.86.0.0/24", "-o", "parent=eth0", "a86"]);
    h.ok(&["network", "create", "--subnet=10.87.0.0/24", "-o", "parent=eth0", "b87"]);
    let name = unique("c");
    h.ok(&["run", "-d", "--name", &name, "--network", "a86"]);
    for point in ["connect:allocated", "connect:linked"] {
        let connect = h
            .command()
            .env("DATAPLANE_PAUSE", point)
            .env("DATAPLANE_PAUSE_MS", "2500")
            .args(["network", "connect", "b87", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(700));
        let during = h.ok(&["reconcile"]);
        let other = unique("o");
        h.ok(&["run", "-d", "--name", &other, "--network", "a86"]);
        let out = connect.wait_with_output().unwrap();
        assert!(out.status.success(), "{point}: connect failed: {}", stderr(&out));
        assert!(during.contains("no drift"), "{point}: reconcile touched the connect in flight: {during}");
        let inside = json(
            &Command::new("ip")
                .args(["-n", &name, "-j", "addr"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap(),
        );
        let names: Vec<&str> = inside.as_array().unwrap().iter().filter_map(|l| l["ifname"].as_str()).collect();
        assert_eq!(names, ["lo", "eth0", "eth1"], "{point}");
        assert!(inside.to_string().contains("10.87.0."), "{point}: {inside}");
        assert!(h.reconcile_dry_run().contains("no drift"), "{point}");
        h.ok(&["network", "disconnect", "b87", &name]);
        h.ok(&["rm", "-f", &other]);
    }
}

/// Reconcile compares an endpoint interface's configuration, not just its presence: an
/// address flushed by hand, the link set down, the default route deleted.
#[test]
fn reconcile_repairs_addresses_routes_and_link_state() {
    let (h, sw) = host_with_switch("dpCfg").unwrap();
    sw.exec(&["ip", "addr", "add", "10.88.0.1/24", "dev", "up0"]).unwrap();
    h.ok(&["network", "create", "--subnet=10.88.0.0/24", "--gateway=10.88.0.1", "-o", "parent=eth0", "n88"]);
    let name = unique("cfg");
    h.ok(&["run", "-d", "--name", &name, "--network", "n88", "--ip", "10.88.0.20"]);
    let ns = |args: &[&str]| {
        let st = Command::new("ip").arg("-n").arg(&name).args(args).status().unwrap();
        assert!(st.success(), "{args:?}");
    };
    ns(&["addr", "flush", "dev", "eth0"]);
    ns(&["link", "set", "eth0", "down"]);
    let dry = h.reconcile_dry_run();
    for want in
        ["address 10.88.0.20/24 is missing from eth0", "eth0 is down", "no default route (via 10.88.0.1 on eth0)"]
    {
        assert!(dry.contains(want), "{want:?} not reported: {dry}");
    }
    h.ok(&["reconcile"]);
    assert!(h.reconcile_dry_run().contains("no drift"));
    assert!(h.dp(&["exec", &name, "ping", "-c", "1", "-W", "1", "10.88.0.1"]).status.success(), "not repaired");
}

/// A parent deleted and made again with the same name (a driver reload, a veth re-made):
/// reconcile finds the links attached to the dead interface, re-attaches, re-keys the
/// admission and VLAN maps, re-creates the endpoints' interfaces, and says so.
#[test]
fn a_parent_made_again_is_found_and_everything_re_keyed() {
    let (h, sw) = host_with_switch("dpRe").unwrap();
    sw.exec(&["ip", "addr", "add", "10.89.0.1/24", "dev", "up0"]).unwrap();
    h.ok(&["network", "create", "--subnet=10.89.0.0/24", "--gateway=10.89.0.1", "-o", "parent=eth0", "n89"]);
    h.ok(&["network", "create", "--subnet=10.90.0.0/24", "-o", "parent=eth0.90", "v90"]);
    let name = unique("re");
    h.ok(&["run", "-d", "--name", &name, "--network", "n89", "--ip", "10.89.0.10"]);
    assert!(h.dp(&["exec", &name, "ping", "-c", "1", "-W", "1", "10.89.0.1"]).status.success());
    let old_index = h.ns.ifindex("eth0").unwrap();

    sw.exec(&["ip", "link", "del", "up0"]).unwrap();
    veth_between(&sw, "up0", &h.ns, "eth0").unwrap();
    sw.exec(&["ip", "addr", "add", "10.89.0.1/24", "dev", "up0"]).unwrap();
    let new_index = h.ns.ifindex("eth0").unwrap();
    assert_ne!(old_index, new_index);
    assert_eq!(h.ns.xdp_prog_id("eth0").unwrap(), None);

    let dry = h.reconcile_dry_run();
    assert!(dry.contains("attached to a removed interface"), "{dry}");
    assert!(
        dry.contains("VLAN map: stale entry")
            && dry.contains(&format!("VLAN map: missing entry trunk ifindex {new_index} VID 90")),
        "{dry}"
    );
    assert!(dry.contains(&format!("interface eth0 is missing from /run/netns/{name}")), "{dry}");
    let out = h.ok(&["reconcile"]);
    assert!(!out.contains("failed:"), "{out}");
    assert!(h.reconcile_dry_run().contains("no drift"));
    assert!(h.ns.xdp_prog_id("eth0").unwrap().is_some(), "no admission program on the new eth0");
    assert!(h.dp(&["exec", &name, "ping", "-c", "1", "-W", "1", "10.89.0.1"]).status.success(), "not reachable again");
    let keys = admit(&h);
    assert!(keys.iter().all(|k| k["ifindex"] != old_index), "entries keyed on the dead ifindex: {keys:?}");
    let reload = h.dp(&["bpf", "reload"]);
    assert!(reload.status.success(), "{}", stderr(&reload));

    // Made again once more: the pass before any command finds it too (the parent's own
    // admission entry no longer vouches for the interface, so it asks the kernel).
    sw.exec(&["ip", "link", "del", "up0"]).unwrap();
    veth_between(&sw, "up0", &h.ns, "eth0").unwrap();
    sw.exec(&["ip", "addr", "add", "10.89.0.1/24", "dev", "up0"]).unwrap();
    assert_eq!(h.ns.xdp_prog_id("eth0").unwrap(), None);
    let again = unique("re2");
    let out = h.dp(&["run", "-d", "--name", &again, "--network", "n89"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("attached to a removed interface"), "{}", stderr(&out));
    assert!(h.ns.xdp_prog_id("eth0").unwrap().is_some(), "no admission program on the new eth0");
    assert!(h.dp(&["exec", &again, "ping", "-c", "1", "-W", "1", "10.89.0.1"]).status.success());
    // The older endpoint's macvlan went with the old parent; re-creating endpoint
    // interfaces is `dataplane reconcile`'s (it looks inside every endpoint's namespace).
    let out = h.ok(&["reconcile"]);
    assert!(out.contains(&format!("interface eth0 is missing from /run/netns/{name}")), "{out}");
    assert!(h.dp(&["exec", &name, "ping", "-c", "1", "-W", "1", "10.89.0.1"]).status.success());
    assert!(h.reconcile_dry_run().contains("no drift"));
}

/// A pinned map removed by hand: found, re-pinned from the live programs with its entries,
/// and everything keeps working (no empty map swapped in under running endpoints).
#[test]
fn a_map_pin_removed_by_hand_is_recovered_with_its_entries() {
    let (h, sw) = host_with_switch("dpMap").unwrap();
    sw.exec(&["ip", "addr", "add", "10.91.0.1/24", "dev", "up0"]).unwrap();
    h.ok(&["network", "create", "--subnet=10.91.0.0/24", "--gateway=10.91.0.1", "-o", "parent=eth0", "n91"]);
    let name = unique("map");
    h.ok(&["run", "-d", "--name", &name, "--network", "n91", "--ip", "10.91.0.10"]);
    let before = admit(&h);
    for m in ["DP_ADMIT", "DP_ENDPOINTS"] {
        std::fs::remove_file(h.bpffs.dir.join("maps").join(m)).unwrap();
    }
    let dry = h.reconcile_dry_run();
    assert!(dry.contains("map pins missing while programs are attached: DP_ADMIT, DP_ENDPOINTS"), "{dry}");
    // Any mutating command repairs first.
    let other = unique("map");
    h.ok(&["run", "-d", "--name", &other, "--network", "n91"]);
    let after = admit(&h);
    for e in &before {
        assert!(after.contains(e), "entry {e} lost: {after:?}");
    }
    assert!(h.dp(&["exec", &name, "ping", "-c", "1", "-W", "1", "10.91.0.1"]).status.success());
    // Anti-spoofing still sees its identities.
    h.dp(&["exec", &name, "ip", "addr", "add", "10.91.0.99/24", "dev", "eth0"]);
    assert!(!h.dp(&["exec", &name, "ping", "-c", "1", "-W", "1", "-I", "10.91.0.99", "10.91.0.1"]).status.success());
    assert!(h.reconcile_dry_run().contains("no drift"));
    assert!(h.dp(&["bpf", "reload"]).status.success());
}

/// Two instances (state dirs) on one bpffs dir, and a replaced database: refused with a
/// clear error naming both dirs, and nothing of the live endpoints is touched.
#[test]
fn a_bpffs_dir_belongs_to_one_store() {
    let (h, _sw) = host_with_switch("dpOwn2").unwrap();
    h.ok(&["network", "create", "--subnet=10.92.0.0/24", "-o", "parent=eth0", "n92"]);
    let name = unique("own");
    // The store is replaced below: the endpoint's namespace must go whatever happens.
    let _ns = dataplane_tests::lab::NetnsByName(name.clone());
    h.ok(&["run", "-d", "--name", &name, "--network", "n92"]);
    let before = admit(&h);
    let eps_before = h.ok(&["bpf", "admit", "ls"]);
    let dp_with =
        |state: &std::path::Path, args: &[&str]| h.command_for(state, &h.bpffs.dir).args(args).output().unwrap();
    // A second instance with its own state dir but the same bpffs dir.
    let other = std::env::temp_dir().join(unique("dpstate-other-"));
    for args in [
        &["network", "ls"][..],
        &["reconcile"],
        &["network", "create", "--subnet=10.93.0.0/24", "-o", "parent=eth0", "n93"],
    ] {
        let out = dp_with(&other, args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} was allowed");
        assert!(
            err.contains("belongs to another dataplane store")
                && err.contains(&h.bpffs.dir.display().to_string())
                && err.contains(&other.display().to_string()),
            "{err}"
        );
    }
    assert_eq!(admit(&h), before);
    let _ = std::fs::remove_dir_all(&other);

    // The database replaced (an empty one in its place): refused too, until taken over.
    std::fs::remove_dir_all(&h.state).unwrap();
    let out = h.dp(&["ps"]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("--take-over"), "{err}");
    assert_eq!(admit(&h), before, "the refused command changed the maps");
    assert_eq!(h.ok(&["bpf", "admit", "ls"]), eps_before);
    // Taking over makes the kernel match the (empty) store: everything goes.
    let out = h.ok(&["reconcile", "--take-over"]);
    assert!(out.contains("repaired:"), "{out}");
    assert!(h.reconcile_dry_run().contains("no drift"));
}

/// `network create` on a parent whose XDP belongs to another instance fails with advice
/// that works, and leaves nothing: no bpffs dir, no map pins, no admission entry.
#[test]
fn a_parent_held_by_another_instance_is_refused_without_a_trace() {
    let (h, _sw) = host_with_switch("dpHeld").unwrap();
    h.ok(&["network", "create", "--subnet=10.95.0.0/24", "-o", "parent=eth0", "n95"]);
    let before = admit(&h);
    let other_state = std::env::temp_dir().join(unique("dpstate-b-"));
    let other_bpffs = std::path::PathBuf::from("/sys/fs/bpf").join(unique("dpt-b-"));
    let out = h
        .command_for(&other_state, &other_bpffs)
        .args(["network", "create", "--subnet=10.96.0.0/24", "-o", "parent=eth0", "n96"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("eth0 already has an XDP program") && err.contains("bpf unload --iface eth0"), "{err}");
    assert!(!other_bpffs.exists(), "the refused create left {}", other_bpffs.display());
    assert_eq!(admit(&h), before, "the other instance's map changed");
    let _ = std::fs::remove_dir_all(&other_state);
}

/// `ip netns exec HOST dataplane ...` (a private mount namespace with a fresh /sys, where
/// the host's bpffs is hidden) works on the host's pins and store like `nsenter --net`:
/// no throwaway bpffs, no drift reported, no VLAN device made again under live endpoints,
/// and a new endpoint's namespace is a real one for the host.
#[test]
fn ip_netns_exec_works_on_the_hosts_pins_and_touches_nothing_else() {
    let (h, _sw) = host_with_switch("dpE").unwrap();
    h.ok(&["network", "create", "--subnet=10.58.0.0/24", "-o", "parent=eth0.58", "v58"]);
    let first = unique("ne1");
    h.ok(&["run", "-d", "--name", &first, "--network", "v58"]);
    // Read through the namespace's path (a Netns guard would delete it on drop).
    let ifindex_in = |name: &str| -> Option<u64> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{name}"))
            .args(["ip", "-j", "link", "show", "eth0"])
            .output()
            .ok()?;
        json(&String::from_utf8_lossy(&out.stdout))[0]["ifindex"].as_u64()
    };
    let before = ifindex_in(&first).expect("the first endpoint has eth0");
    let vlan_before = h.ns.ifindex("eth0.58").unwrap();
    let under_ip_netns_exec = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &h.ns.name])
            .arg(dataplane_tests::lab::dataplane_bin())
            .arg("--state-dir")
            .arg(&h.state)
            .arg("--bpffs")
            .arg(&h.bpffs.dir)
            .args(args)
            .output()
            .unwrap()
    };
    let dry = under_ip_netns_exec(&["reconcile", "--dry-run"]);
    let text = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(dry.status.code(), Some(0), "{text}{}", stderr(&dry));
    assert!(text.contains("no drift"), "{text}");
    let second = unique("ne2");
    let run = under_ip_netns_exec(&["run", "-d", "--name", &second, "--network", "v58"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(ifindex_in(&first), Some(before), "the live endpoint's eth0 was replaced");
    assert_eq!(h.ns.ifindex("eth0.58").unwrap(), vlan_before, "the VLAN device was made again");
    assert!(ifindex_in(&second).is_some(), "the new endpoint's namespace is not usable from the host");
    assert!(h.reconcile_dry_run().contains("no drift"));
    h.ok(&["rm", "-f", &first, &second]);
    h.ok(&["network", "rm", "v58"]);
}

/// What a Docker user types first: `exec -it`, `run -d ... sleep 600` (Docker reads
/// `sleep` as the image: refused up front with the way to say it, nothing made), and an
/// MTU larger than the parent's (refused at create, naming both values).
#[test]
fn docker_habits_get_docker_answers() {
    let (h, _sw) = host_with_switch("dpJ").unwrap();
    h.ok(&["network", "create", "--subnet=10.59.0.0/24", "-o", "parent=eth0", "n59"]);
    let name = unique("habit");
    let out = h.dp(&["run", "-d", "--network", "n59", "--name", &name, "sleep", "600"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("command \"600\" not found") && err.contains("-- sleep 600"), "{err}");
    assert!(h.endpoint_names().is_empty(), "a refused run left an endpoint");
    h.ok(&["run", "-d", "--network", "n59", "--name", &name, "--", "sleep", "600"]);
    let exec = h.dp(&["exec", "-it", &name, "ip", "-br", "addr", "show", "eth0"]);
    assert!(exec.status.success(), "{}", stderr(&exec));
    assert!(String::from_utf8_lossy(&exec.stdout).contains("10.59.0.2/24"), "{exec:?}");
    h.ok(&["rm", "-f", &name]);
    let mtu = h.ns.link_json("eth0").unwrap()["mtu"].as_u64().unwrap();
    let big = (mtu + 1000).to_string();
    let out =
        h.dp(&["network", "create", "--subnet=10.60.0.0/24", "-o", "parent=eth0", "-o", &format!("mtu={big}"), "n60"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("invalid mtu {big}")) && err.contains(&format!("MTU of {mtu}")), "{err}");
    let nets = dataplane_tests::json_lines(&h.ok(&["network", "ls", "--format", "json"]));
    assert_eq!(nets.as_array().unwrap().len(), 3, "a refused network left a row: {nets:#}");
    let help = h.ok(&["network", "create", "--help"]);
    for opt in ["parent=", "macvlan_mode=", "mtu=", "endpoint_hooks=", "host_access=", "ip_probe_ms="] {
        assert!(help.contains(opt), "network create --help does not mention {opt}");
    }
    h.ok(&["network", "rm", "n59"]);
}

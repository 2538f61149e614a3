//! `dataplane-cni` under kills, bursts and hostile input (hardening, round 2): a killed ADD
//! or DEL never wedges its network for the runtime's next ordinary call; names, namespaces
//! and previous results the kernel or the spec would refuse are refused up front with the
//! spec's codes, leaving nothing behind.

use std::{collections::BTreeSet, os::unix::process::ExitStatusExt, path::Path};

use dataplane_tests::{
    cni::{call, call_within, cni_bin, env, links, REFERENCE_DIR},
    lab::{host_with_switch, Host},
    Netns,
};
use serde_json::{json, Value};

fn conf(h: &Host, name: &str, parent: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.1.0","name":"{name}","type":"dataplane-cni","parent":"{parent}","stateDir":"{}","bpffs":"{}","ipam":{{"type":"dataplane-cni","subnet":"10.70.0.0/24","gateway":"10.70.0.1"}}}}"#,
        h.state.display(),
        h.bpffs.dir.display()
    )
}

fn ps(h: &Host) -> Value {
    dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"]))
}

fn networks(h: &Host) -> Vec<String> {
    let v: Value = dataplane_tests::json_lines(&h.ok(&["network", "ls", "--format", "json"]));
    v.as_array().unwrap().iter().filter_map(|n| n["Name"].as_str().map(str::to_string)).collect()
}

/// A killed ADD while it creates the network, and a killed DEL while it removes it, are
/// finished by the next ADD (and DEL) alone: no `dataplane reconcile`, no GC.
#[test]
fn a_killed_add_or_del_never_wedges_the_network() {
    let plugin = cni_bin();
    for (point, parent) in [
        ("network-create:vlan-made", "eth0.70"),
        ("network-create:attached", "eth0"),
        ("network-create:attached", "eth0.70"),
        ("network-rm:marked", "eth0"),
        ("network-rm:torn-down", "eth0.70"),
    ] {
        let (h, _sw) = host_with_switch("dpKc").unwrap();
        let host_links = links(&h.ns);
        let c = conf(&h, "c70", parent);
        let pod = Netns::new("dpKp").unwrap();
        let pod_path = pod.path().display().to_string();
        let killed = if point.starts_with("network-create") {
            let mut e = env("k1", &pod_path);
            e.push(("DATAPLANE_FAULT", point));
            call(&h.ns, &plugin, "ADD", &e, &c)
        } else {
            let a = call(&h.ns, &plugin, "ADD", &env("k1", &pod_path), &c);
            assert!(a.ok, "{point}: {}", a.json);
            let mut e = env("k1", &pod_path);
            e.push(("DATAPLANE_FAULT", point));
            call(&h.ns, &plugin, "DEL", &e, &c)
        };
        assert_eq!(
            killed.raw.status.signal(),
            Some(libc::SIGABRT),
            "{point}: not killed there: {}",
            String::from_utf8_lossy(&killed.raw.stderr)
        );
        // The runtime's next call: an ADD of another pod. Not code 11, ever.
        let pod2 = Netns::new("dpKq").unwrap();
        let pod2_path = pod2.path().display().to_string();
        let a = call(&h.ns, &plugin, "ADD", &env("k2", &pod2_path), &c);
        assert!(
            a.ok,
            "{point} on {parent}: the next ADD failed: {} {}",
            a.json,
            String::from_utf8_lossy(&a.raw.stderr)
        );
        assert!(links(&pod2).contains("eth0"), "{point}: no eth0 in the pod");
        // The killed call's own retry (a runtime DELs a failed ADD) works too.
        let d = call(&h.ns, &plugin, "DEL", &env("k1", &pod_path), &c);
        assert!(d.ok, "{point}: {}", d.json);
        let d = call(&h.ns, &plugin, "DEL", &env("k2", &pod2_path), &c);
        assert!(d.ok, "{point}: {}", d.json);
        // Everything went with the last DEL: rows, the VLAN device, programs and pins.
        assert_eq!(ps(&h), json!([]), "{point}");
        assert_eq!(networks(&h), ["host", "none"], "{point}");
        let left = dataplane_tests::lab::wait_until(std::time::Duration::from_secs(5), || links(&h.ns) == host_links);
        assert!(left, "{point}: links left: {:?}", links(&h.ns));
        assert_eq!(h.ns.xdp_prog_id("eth0").unwrap(), None, "{point}: program left on eth0");
    }
}

/// Sixteen pods started at once on a network that does not exist yet: every ADD waits for
/// the one that creates it instead of failing with "try again".
#[test]
fn a_burst_of_first_adds_all_succeed() {
    let (h, _sw) = host_with_switch("dpKb").unwrap();
    let c = conf(&h, "c71", "eth0.71");
    let plugin = cni_bin();
    let pods: Vec<Netns> = (0..16).map(|_| Netns::new("dpKbp").unwrap()).collect();
    let outs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (c, plugin, h) = (&c, &plugin, &h);
                s.spawn(move || {
                    let id = format!("burst{i}");
                    let path = p.path().display().to_string();
                    call(&h.ns, plugin, "ADD", &env(&id, &path), c)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, o) in outs.iter().enumerate() {
        assert!(o.ok, "ADD {i} of a burst failed: {}", o.json);
    }
    let addrs: BTreeSet<String> =
        outs.iter().map(|o| o.json["ips"][0]["address"].as_str().unwrap().to_string()).collect();
    assert_eq!(addrs.len(), 16, "{addrs:?}");
    assert_eq!(ps(&h).as_array().unwrap().len(), 16);
    for (i, p) in pods.iter().enumerate() {
        let d = call(&h.ns, &plugin, "DEL", &env(&format!("burst{i}"), &p.path().display().to_string()), &c);
        assert!(d.ok, "{}", d.json);
    }
    assert_eq!(networks(&h), ["host", "none"]);
}

/// Interface names the kernel would rewrite or refuse, and namespace paths that are not
/// network namespaces (one of them a FIFO, which used to hang the plugin in open()), are
/// refused with code 4 before anything is made.
#[test]
fn bad_interface_names_and_namespaces_are_refused_up_front() {
    let (h, _sw) = host_with_switch("dpKn").unwrap();
    let c = conf(&h, "c72", "eth0");
    let plugin = cni_bin();
    let pod = Netns::new("dpKnp").unwrap();
    let pod_path = pod.path().display().to_string();
    for ifname in ["eth%d", "all", "default", "a b", "verylonginterface0"] {
        let e = call(
            &h.ns,
            &plugin,
            "ADD",
            &[("CNI_CONTAINERID", "n1"), ("CNI_NETNS", &pod_path), ("CNI_IFNAME", ifname)],
            &c,
        );
        assert_eq!(e.code(), 4, "{ifname}: {}", e.msg());
        assert!(e.msg().contains(&format!("{ifname:?}")), "{ifname}: {}", e.msg());
    }
    assert_eq!(links(&pod), BTreeSet::from(["lo".to_string()]), "a refused name left an interface");

    let tmp = dataplane_tests::plugin::TempDir::new("dpcnih-");
    let dir = tmp.0.clone();
    let fifo = dir.join("fifo");
    let file = dir.join("file");
    std::fs::write(&file, b"").unwrap();
    let c_fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    for (path, why) in [
        (fifo.to_str().unwrap(), "a FIFO"),
        (file.to_str().unwrap(), "a plain file"),
        (dir.to_str().unwrap(), "a directory"),
        ("/dev/null", "a device"),
        ("/proc/self/ns/pid", "not a network namespace"),
        ("/run/netns/nosuch-ns", "No such file"),
    ] {
        let e = call_within(10, &h.ns, &plugin, "ADD", &env("n2", path), &c);
        assert_eq!(e.code(), 4, "{path}: {} {}", e.msg(), String::from_utf8_lossy(&e.raw.stderr));
        assert!(e.msg().contains(path) && e.msg().contains(why), "{path}: {}", e.msg());
    }
    assert_eq!(ps(&h), json!([]));
    assert!(!h.bpffs.dir.exists(), "a refused ADD left pins");
    // A subnet that is every address is refused as configuration, before anything is made.
    let whole = c.replace("10.70.0.0/24", "0.0.0.0/0").replace("10.70.0.1", "0.0.0.1");
    let e = call(&h.ns, &plugin, "ADD", &env("n3", &pod_path), &whole);
    assert_eq!(e.code(), 7, "{}", e.msg());
    assert!(e.msg().contains("invalid subnet 0.0.0.0/0"), "{}", e.msg());
    assert_eq!(networks(&h), ["host", "none"]);
    assert!(!h.bpffs.dir.exists(), "a refused subnet left pins");
}

/// Container ids that share their first 12 characters, or differ only in characters the
/// endpoint's name cannot hold, are different attachments.
#[test]
fn container_ids_alike_in_their_first_characters_are_distinct() {
    let (h, _sw) = host_with_switch("dpKi").unwrap();
    let c = conf(&h, "c73", "eth0");
    let plugin = cni_bin();
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("dpKip").unwrap()).collect();
    let ids = ["aaaaaaaaaaaa1", "aaaaaaaaaaaa2", "a.b", "a_b"];
    for (id, p) in ids.iter().zip(&pods) {
        let a = call(&h.ns, &plugin, "ADD", &env(id, &p.path().display().to_string()), &c);
        assert!(a.ok, "{id}: {}", a.json);
    }
    let names: BTreeSet<String> =
        ps(&h).as_array().unwrap().iter().map(|e| e["Name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for (id, p) in ids.iter().zip(&pods) {
        let d = call(&h.ns, &plugin, "DEL", &env(id, &p.path().display().to_string()), &c);
        assert!(d.ok, "{id}: {}", d.json);
        assert!(
            !links(p).contains("eth0")
                || dataplane_tests::lab::wait_until(std::time::Duration::from_secs(5), || !links(p).contains("eth0"))
        );
    }
    assert_eq!(ps(&h), json!([]));
}

/// CHECK compares what the runtime holds with what is there: another pod's namespace, a
/// previous result that is not one, and one without the attachment's addresses all fail.
#[test]
fn check_refuses_another_namespace_and_a_broken_previous_result() {
    let (h, sw) = host_with_switch("dpKk").unwrap();
    sw.exec(&["ip", "addr", "add", "10.70.0.1/24", "dev", "up0"]).unwrap();
    let c = conf(&h, "c74", "eth0");
    let plugin = cni_bin();
    let (p1, p2) = (Netns::new("dpKkp").unwrap(), Netns::new("dpKkq").unwrap());
    let (p1p, p2p) = (p1.path().display().to_string(), p2.path().display().to_string());
    let a = call(&h.ns, &plugin, "ADD", &env("k1", &p1p), &c);
    assert!(a.ok, "{}", a.json);
    let b = call(&h.ns, &plugin, "ADD", &env("k2", &p2p), &c);
    assert!(b.ok, "{}", b.json);
    let with_prev = |prev: &Value| {
        let mut v: Value = serde_json::from_str(&c).unwrap();
        v["prevResult"] = prev.clone();
        v.to_string()
    };
    // The real previous result in the right namespace passes (so the failures below are
    // about what each changes).
    let ok = call(&h.ns, &plugin, "CHECK", &env("k1", &p1p), &with_prev(&a.json));
    assert!(ok.ok, "{}", ok.json);
    let e = call(&h.ns, &plugin, "CHECK", &env("k1", &p2p), &with_prev(&a.json));
    assert_eq!(e.code(), 101, "another pod's namespace passed CHECK: {}", e.msg());
    assert!(e.msg().contains(&p2p), "{}", e.msg());
    let e = call(&h.ns, &plugin, "CHECK", &env("k1", &p1p), &with_prev(&json!({"ips": "x", "interfaces": 5})));
    assert_eq!(e.code(), 6, "{}", e.msg());
    assert!(e.msg().contains("\"ips\" is \"x\""), "{}", e.msg());
    let mut no_ips = a.json.clone();
    no_ips.as_object_mut().unwrap().remove("ips");
    let e = call(&h.ns, &plugin, "CHECK", &env("k1", &p1p), &with_prev(&no_ips));
    assert_eq!(e.code(), 101, "a previous result without the addresses passed CHECK: {}", e.msg());
    let addr = a.json["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    assert!(e.msg().contains(&addr), "{}", e.msg());
    for (id, p) in [("k1", &p1p), ("k2", &p2p)] {
        assert!(call(&h.ns, &plugin, "DEL", &env(id, p), &c).ok);
    }
}

/// As another plugin's IPAM, GC without the list of valid attachments is refused (code 7):
/// it would have released the addresses of every live pod.
#[test]
fn ipam_gc_without_valid_attachments_keeps_every_address() {
    let (h, _sw) = host_with_switch("dpKg").unwrap();
    // The reference macvlan plugin speaks up to 1.0.0; GC (1.1.0) goes to ours directly.
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"ref77","type":"macvlan","master":"eth0","mode":"bridge","stateDir":"{}","bpffs":"{}","ipam":{{"type":"dataplane-cni","subnet":"10.77.0.0/24","gateway":"10.77.0.1"}}}}"#,
        h.state.display(),
        h.bpffs.dir.display()
    );
    let macvlan = Path::new(REFERENCE_DIR).join("macvlan");
    let pod = Netns::new("dpKgp").unwrap();
    let pod_path = pod.path().display().to_string();
    let a = call(&h.ns, &macvlan, "ADD", &env("g1", &pod_path), &conf);
    assert!(a.ok, "{} {}", a.json, String::from_utf8_lossy(&a.raw.stderr));
    let gc_conf = conf.replace("\"1.0.0\"", "\"1.1.0\"");
    let e = call(&h.ns, &cni_bin(), "GC", &[], &gc_conf);
    assert_eq!(e.code(), 7, "{}", e.msg());
    assert!(e.msg().contains("cni.dev/valid-attachments"), "{}", e.msg());
    assert_eq!(ps(&h).as_array().unwrap().len(), 1, "GC released a live pod's address");
    // With the list, the live one stays and the rest goes.
    let mut v: Value = serde_json::from_str(&gc_conf).unwrap();
    v["cni.dev/valid-attachments"] = json!([{"containerID": "g1", "ifname": "eth0"}]);
    let g = call(&h.ns, &cni_bin(), "GC", &[], &v.to_string());
    assert!(g.ok, "{}", g.json);
    assert_eq!(ps(&h).as_array().unwrap().len(), 1);
    assert!(call(&h.ns, &macvlan, "DEL", &env("g1", &pod_path), &conf).ok);
}

/// A GC right after a DEL, while the DEL's child is still deleting the interface, leaves
/// the interface's pins to that child: it does not report them stale and unpin them
/// (which would take the anti-spoofing program off an interface still there).
#[test]
fn gc_leaves_a_deletion_in_flight_alone() {
    let (h, _sw) = host_with_switch("dpKu").unwrap();
    let c = conf(&h, "c75", "eth0");
    let plugin = cni_bin();
    let (p1, p2) = (Netns::new("dpKup").unwrap(), Netns::new("dpKuq").unwrap());
    let (p1p, p2p) = (p1.path().display().to_string(), p2.path().display().to_string());
    for (id, p) in [("u1", &p1p), ("u2", &p2p)] {
        let a = call(&h.ns, &plugin, "ADD", &env(id, p), &c);
        assert!(a.ok, "{}", a.json);
    }
    let mut e = env("u1", &p1p);
    e.extend([("DATAPLANE_PAUSE", "unlink:child"), ("DATAPLANE_PAUSE_MS", "1500")]);
    let d = call(&h.ns, &plugin, "DEL", &e, &c);
    assert!(d.ok, "{}", d.json);
    assert!(links(&p1).contains("eth0"), "the paused child deleted the interface already");
    let mut v: Value = serde_json::from_str(&c).unwrap();
    v["cni.dev/valid-attachments"] = json!([{"containerID": "u2", "ifname": "eth0"}]);
    let g = call(&h.ns, &plugin, "GC", &[], &v.to_string());
    let stderr = String::from_utf8_lossy(&g.raw.stderr).to_string();
    assert!(g.ok, "{} {stderr}", g.json);
    assert!(!stderr.contains("stale endpoint program pin"), "GC raced the deletion child: {stderr}");
    assert!(call(&h.ns, &plugin, "DEL", &env("u2", &p2p), &c).ok);
}

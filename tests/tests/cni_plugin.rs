//! `dataplane-cni` at the spec level (every command and error path, called as a runtime
//! calls it, side by side with the reference macvlan plugin) and under a real Podman with
//! its CNI backend: reachability, VLAN tags, spoofing and unknown MACs dropped, removal
//! leaving nothing.

use std::collections::BTreeSet;

use dataplane_tests::{
    cni::{call, cni_bin, env, links, PodmanLab, REFERENCE_DIR},
    lab::{host_with_switch, Host},
    Netns,
};
use serde_json::{json, Value};

fn conf(h: &Host, name: &str, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"{name}","type":"dataplane-cni","parent":"eth0","stateDir":"{}","bpffs":"{}"{extra}}}"#,
        h.state.display(),
        h.bpffs.dir.display()
    )
}

const BUILTIN_IPAM: &str = r#","ipam":{"type":"dataplane-cni","subnet":"10.70.0.0/24","gateway":"10.70.0.1","ipRange":"10.70.0.128/25","auxAddresses":{"router":"10.70.0.129"}}"#;

/// The namespace's links once they are `want` (interfaces of removed attachments are
/// deleted by a background child: soon, not before the command returns).
fn links_become(ns: &Netns, want: &[&str]) -> BTreeSet<String> {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let have = links(ns);
        if have == want || std::time::Instant::now() > deadline {
            return have;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn stats(h: &Host) -> Value {
    serde_json::from_str(&h.ok(&["stats", "--format", "json"])).unwrap()
}

/// Keys of a result, recursively (values left out): the shape to compare with the reference.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().take(1).map(shape).collect()),
        _ => Value::Null,
    }
}

#[test]
fn spec_commands_and_errors() {
    let (h, sw) = host_with_switch("dpN").unwrap();
    sw.exec(&["ip", "addr", "add", "10.70.0.1/24", "dev", "up0"]).unwrap();
    let pod = Netns::new("dpNp").unwrap();
    let pod_path = pod.path().display().to_string();
    let plugin = cni_bin();
    let c = conf(&h, "cn70", BUILTIN_IPAM);
    let host_links = links(&h.ns);

    // VERSION in the asked version, with every supported one.
    let v = call(&h.ns, &plugin, "VERSION", &[], r#"{"cniVersion":"1.1.0"}"#);
    assert!(v.ok);
    assert_eq!(v.json, json!({"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}));

    // Error paths: code, and a message naming the bad value; none leaves a trace.
    let e = call(&h.ns, &plugin, "ADD", &[("CNI_CONTAINERID", "x"), ("CNI_IFNAME", "eth0")], &c);
    assert_eq!((e.code(), e.msg().contains("CNI_NETNS")), (4, true), "{}", e.msg());
    let e = call(&h.ns, &plugin, "ADD", &env("x", &pod_path), "{not json");
    assert_eq!(e.code(), 6);
    let e = call(&h.ns, &plugin, "ADD", &env("x", &pod_path), &c.replace("1.0.0", "0.3.1"));
    assert_eq!((e.code(), e.msg().contains("\"0.3.1\"")), (1, true), "{}", e.msg());
    let e = call(
        &h.ns,
        &plugin,
        "ADD",
        &env("x", &pod_path),
        &c.replace(r#""parent":"eth0""#, r#""parent":"eth0","mode":"sideways""#),
    );
    assert_eq!((e.code(), e.msg().contains("\"sideways\"")), (7, true), "{}", e.msg());
    let e =
        call(&h.ns, &plugin, "ADD", &env("x", &pod_path), &c.replace(r#""parent":"eth0""#, r#""parent":"nosuch0""#));
    assert!(!e.ok && e.msg().contains("nosuch0"), "{}", e.msg());
    let e = call(
        &h.ns,
        &plugin,
        "ADD",
        &[
            ("CNI_ARGS", "IgnoreUnknown=1;IP=10.99.0.5"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_NETNS", &pod_path),
            ("CNI_IFNAME", "eth0"),
        ],
        &c,
    );
    assert!(!e.ok && e.msg().contains("10.99.0.5"), "{}", e.msg());
    let e = call(
        &h.ns,
        &plugin,
        "ADD",
        &[
            ("CNI_ARGS", "IgnoreUnknown=1;IP=10.70.0.129"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_NETNS", &pod_path),
            ("CNI_IFNAME", "eth0"),
        ],
        &c,
    );
    assert!(!e.ok && e.msg().contains("10.70.0.129"), "aux address handed out: {}", e.msg());
    let e = call(&h.ns, &plugin, "ADD", &env("x", "/run/netns/nosuch-ns"), &c);
    assert!(!e.ok && e.msg().contains("/run/netns/nosuch-ns"), "{}", e.msg());
    assert_eq!(links(&h.ns), host_links, "a failed ADD left links");
    assert_eq!(links(&pod), BTreeSet::from(["lo".to_string()]));
    assert_eq!(dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"])), json!([]));
    assert!(!h.bpffs.dir.exists(), "a failed ADD left pins");

    // ADD with the keys Kubernetes and Podman pass; MAC and IP requested through CNI_ARGS.
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;MAC=02:00:00:70:00:0a;IP=10.70.0.200";
    let mut e1 = env("ctr1", &pod_path);
    e1.push(("CNI_ARGS", args));
    let add = call(&h.ns, &plugin, "ADD", &e1, &c);
    assert!(add.ok, "{} {}", add.json, String::from_utf8_lossy(&add.raw.stderr));
    let r = add.json.clone();
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["interfaces"][0], json!({"name":"eth0","mac":"02:00:00:70:00:0a","sandbox":pod_path}));
    assert_eq!(r["ips"][0], json!({"address":"10.70.0.200/24","gateway":"10.70.0.1","interface":0}));
    assert_eq!(r["routes"][0], json!({"dst":"0.0.0.0/0","gw":"10.70.0.1"}));
    assert!(pod.exec(&["ping", "-c", "1", "-W", "1", "10.70.0.1"]).is_ok(), "the pod cannot reach the switch");
    let ps: Value = dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"]));
    assert_eq!(ps[0]["Owner"], json!({"kind":"cni","container_id":"ctr1","ifname":"eth0"}), "{ps:#}");
    let rm = h.dp(&["rm", "-f", ps[0]["Name"].as_str().unwrap()]);
    assert!(String::from_utf8_lossy(&rm.stderr).contains("belongs to a CNI runtime"), "{rm:?}");

    // The same ADD in 0.4.0: ips carry a version.
    let pod2 = Netns::new("dpNq").unwrap();
    let pod2_path = pod2.path().display().to_string();
    let add2 = call(&h.ns, &plugin, "ADD", &env("ctr2", &pod2_path), &c.replace("1.0.0", "0.4.0"));
    assert!(add2.ok, "{}", add2.json);
    assert_eq!(add2.json["ips"][0]["version"], "4");
    let ip2 = add2.json["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(ip2.starts_with("10.70.0.") && ip2 != "10.70.0.129/24" && ip2 != "10.70.0.200/24", "{ip2}");
    let last: u8 = ip2.trim_end_matches("/24").rsplit('.').next().unwrap().parse().unwrap();
    assert!(last >= 128, "{ip2} is outside ipRange");

    // Spoofing from the pod is dropped and counted; unknown MACs are dropped at XDP.
    pod.exec(&["ip", "addr", "add", "10.70.0.99/24", "dev", "eth0"]).unwrap();
    assert!(pod.exec(&["ping", "-c", "2", "-W", "1", "-I", "10.70.0.99", "10.70.0.1"]).is_err());
    let s = stats(&h);
    let ep = s["endpoints"].as_array().unwrap().iter().find(|e| e["mac"] == "02:00:00:70:00:0a").unwrap();
    assert!(ep["spoofed_packets"].as_u64().unwrap() >= 2, "{s:#}");
    pod.exec(&["ip", "addr", "del", "10.70.0.99/24", "dev", "eth0"]).unwrap();

    // CHECK: passes as made, fails (naming what) once the pod's address is flushed.
    let with_prev = |prev: &Value| {
        let mut v: Value = serde_json::from_str(&c).unwrap();
        v["prevResult"] = prev.clone();
        v.to_string()
    };
    let chk = call(&h.ns, &plugin, "CHECK", &env("ctr1", &pod_path), &with_prev(&r));
    assert!(chk.ok, "{}", chk.json);
    pod.exec(&["ip", "addr", "flush", "dev", "eth0"]).unwrap();
    let chk = call(&h.ns, &plugin, "CHECK", &env("ctr1", &pod_path), &with_prev(&r));
    assert!(chk.msg().contains("10.70.0.200") && chk.msg().contains("missing"), "{}", chk.json);
    assert_eq!(chk.code(), 101);

    // STATUS (1.1.0): ready, and 50 when the parent is gone from this node.
    let c11 = c.replace("1.0.0", "1.1.0");
    assert!(call(&h.ns, &plugin, "STATUS", &[], &c11).ok);
    let st = call(&h.ns, &plugin, "STATUS", &[], &c11.replace(r#""parent":"eth0""#, r#""parent":"gone0""#));
    assert_eq!((st.code(), st.msg().contains("gone0")), (50, true), "{}", st.json);

    // GC keeps the valid attachment and removes the other.
    let mut gc: Value = serde_json::from_str(&c11).unwrap();
    gc["cni.dev/valid-attachments"] = json!([{"containerID":"ctr2","ifname":"eth0"}]);
    let out = call(&h.ns, &plugin, "GC", &[], &gc.to_string());
    assert!(out.ok, "{}", out.json);
    let ps: Value = dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"]));
    assert_eq!(ps.as_array().unwrap().len(), 1, "{ps:#}");
    assert_eq!(ps[0]["Owner"]["container_id"], "ctr2");
    assert_eq!(links_become(&pod, &["lo"]), BTreeSet::from(["lo".to_string()]), "GC left the interface");

    // DEL returns before the kernel has unregistered the interface; an ADD of the same
    // name into the same namespace right after it waits for that and succeeds.
    let del = call(&h.ns, &plugin, "DEL", &env("ctr2", &pod2_path), &c);
    assert!(del.ok, "{}", del.json);
    let again = call(&h.ns, &plugin, "ADD", &env("ctr3", &pod2_path), &c);
    assert!(again.ok, "{}", again.json);
    assert_eq!(links(&pod2), BTreeSet::from(["lo".to_string(), "eth0".to_string()]));
    assert!(call(&h.ns, &plugin, "DEL", &env("ctr3", &pod2_path), &c).ok);
    assert_eq!(links_become(&pod2, &["lo"]), BTreeSet::from(["lo".to_string()]), "DEL left the interface");

    // DEL is idempotent: repeated, without prevResult, and with the namespace gone.
    assert!(call(&h.ns, &plugin, "DEL", &env("ctr2", &pod2_path), &c).ok);
    drop(pod2);
    assert!(call(&h.ns, &plugin, "DEL", &env("ctr2", "/run/netns/gone"), &c).ok);
    assert!(call(&h.ns, &plugin, "DEL", &[("CNI_CONTAINERID", "never"), ("CNI_IFNAME", "eth0")], &c).ok);

    // The last DEL removed the network: no links, programs, pins or rows.
    assert_eq!(links(&h.ns), host_links);
    assert_eq!(h.ns.xdp_prog_id("eth0").unwrap(), None);
    assert!(!h.bpffs.dir.exists(), "pins left behind");
    let nets: Value = dataplane_tests::json_lines(&h.ok(&["network", "ls", "--format", "json"]));
    assert_eq!(nets.as_array().unwrap().len(), 2, "{nets:#}");
}

#[test]
fn delegated_ipam_and_the_reference_plugins_shape() {
    let (h, sw) = host_with_switch("dpR").unwrap();
    sw.exec(&["ip", "addr", "add", "10.71.0.1/24", "dev", "up0"]).unwrap();
    let data = std::env::temp_dir().join(dataplane_tests::lab::unique("dpipam-"));
    let ipam = format!(
        r#","ipam":{{"type":"host-local","subnet":"10.71.0.0/24","routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{}"}}"#,
        data.display()
    );
    let ours = conf(&h, "cn71", &ipam);
    let pod = Netns::new("dpRp").unwrap();
    let pod_path = pod.path().display().to_string();
    let add = call(&h.ns, &cni_bin(), "ADD", &env("ctrA", &pod_path), &ours);
    assert!(add.ok, "{}", add.json);
    let ip = add.json["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(data.join("cn71").join(ip.trim_end_matches("/24")).exists(), "host-local did not record {ip}");
    assert!(pod.exec(&["ping", "-c", "1", "-W", "1", "10.71.0.1"]).is_ok());

    // The reference macvlan + host-local, side by side: same result shape.
    let refpod = Netns::new("dpRr").unwrap();
    let refpod_path = refpod.path().display().to_string();
    let reference = format!(
        r#"{{"cniVersion":"1.0.0","name":"ref71","type":"macvlan","master":"eth0","mode":"bridge","ipam":{{"type":"host-local","subnet":"10.72.0.0/24","routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{}"}}}}"#,
        data.display()
    );
    let refplugin = std::path::Path::new(REFERENCE_DIR).join("macvlan");
    let radd = call(&h.ns, &refplugin, "ADD", &env("ctrR", &refpod_path), &reference);
    assert!(radd.ok, "reference macvlan ADD failed: {} {}", radd.json, String::from_utf8_lossy(&radd.raw.stderr));
    assert_eq!(shape(&add.json), shape(&radd.json), "ours: {:#}\nreference: {:#}", add.json, radd.json);
    assert!(call(&h.ns, &refplugin, "DEL", &env("ctrR", &refpod_path), &reference).ok);

    // DEL releases the address in host-local too.
    assert!(call(&h.ns, &cni_bin(), "DEL", &env("ctrA", &pod_path), &ours).ok);
    assert!(!data.join("cn71").join(ip.trim_end_matches("/24")).exists(), "host-local still holds {ip}");
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn podman_containers_on_a_dataplane_cni_network() {
    let lab = PodmanLab::new("dpP").unwrap();
    lab.switch.exec(&["ip", "addr", "add", "10.73.0.1/24", "dev", "up0"]).unwrap();
    let host_links = links(&lab.host.ns);
    lab.conflist(
        "pub73",
        r#""parent":"eth0","ipam":{"type":"dataplane-cni","subnet":"10.73.0.0/24","gateway":"10.73.0.1"}"#,
    );
    lab.conflist(
        "vlan50",
        r#""parent":"eth0.50","ipam":{"type":"dataplane-cni","subnet":"192.168.50.0/24","gateway":"192.168.50.1"}"#,
    );

    // A one-shot container reaches the switch.
    let out =
        lab.ok(&["run", "--rm", "--network", "pub73", "localhost/busybox", "ping", "-c", "1", "-W", "2", "10.73.0.1"]);
    assert!(out.contains("1 packets received"), "{out}");

    // Long-running ones: addresses, MAC through --mac-address, spoofing dropped and counted.
    lab.ok(&[
        "run",
        "-d",
        "--name",
        "p1",
        "--cap-add",
        "NET_ADMIN",
        "--network",
        "pub73",
        "--mac-address",
        "02:00:00:73:00:11",
        "localhost/busybox",
        "sleep",
        "600",
    ]);
    lab.ok(&[
        "run",
        "-d",
        "--name",
        "p2",
        "--network",
        "pub73",
        "--ip",
        "10.73.0.50",
        "localhost/busybox",
        "sleep",
        "600",
    ]);
    let eth0 = lab.ok(&["exec", "p1", "ip", "addr", "show", "eth0"]);
    assert!(eth0.contains("02:00:00:73:00:11"), "{eth0}");
    assert!(lab.ok(&["exec", "p2", "ip", "addr", "show", "eth0"]).contains("10.73.0.50/24"));
    assert!(
        lab.podman(&["exec", "p1", "ping", "-c", "1", "-W", "1", "10.73.0.50"]).status.success(),
        "p1 cannot reach p2"
    );
    lab.ok(&["exec", "p1", "ip", "addr", "add", "10.73.0.99/24", "dev", "eth0"]);
    assert!(!lab
        .podman(&["exec", "p1", "ping", "-c", "2", "-W", "1", "-I", "10.73.0.99", "10.73.0.1"])
        .status
        .success());
    let s = stats(&lab.host);
    let p1 = s["endpoints"].as_array().unwrap().iter().find(|e| e["mac"] == "02:00:00:73:00:11").cloned().unwrap();
    assert!(p1["spoofed_packets"].as_u64().unwrap() >= 2, "{s:#}");
    let dropped = |s: &Value| {
        s["parents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["iface"] == "eth0")
            .map_or(0, |p| p["packets"]["drop_unknown_destination"].as_u64().unwrap_or(0))
    };
    let before = dropped(&s);
    lab.switch.exec(&["ip", "neigh", "replace", "10.73.0.77", "lladdr", "02:00:00:de:ad:01", "dev", "up0"]).unwrap();
    let _ = lab.switch.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.73.0.77"]);
    assert!(dropped(&stats(&lab.host)) >= before + 3);

    // VLAN network: the container's frames carry tag 50 on the trunk.
    lab.ok(&[
        "run",
        "-d",
        "--name",
        "v1",
        "--network",
        "vlan50",
        "--mac-address",
        "02:00:00:50:00:01",
        "localhost/busybox",
        "sleep",
        "600",
    ]);
    let seen = lab.switch.capture_while("up0", "vlan 50 and arp", 2, || {
        let _ = lab.podman(&["exec", "v1", "ping", "-c", "3", "-W", "1", "192.168.50.1"]);
    });
    assert!(seen.contains("vlan 50") && seen.contains("02:00:00:50:00:01"), "no tagged ARP on the trunk: {seen:?}");

    // Removal leaves nothing: links, programs, pins, rows.
    lab.ok(&["rm", "-f", "-t", "0", "p1", "p2", "v1"]);
    assert_eq!(dataplane_tests::json_lines(&lab.host.ok(&["ps", "-a", "--format", "json"])), json!([]));
    assert_eq!(links(&lab.host.ns), host_links);
    assert_eq!(lab.host.ns.xdp_prog_id("eth0").unwrap(), None);
    assert!(!lab.host.bpffs.dir.exists(), "pins left behind");
}

/// The same binary as another plugin's IPAM: the reference macvlan plugin with
/// `"ipam": {"type": "dataplane-cni", ...}` gets addresses with Docker's rules from the
/// shared store, and releases them on DEL.
#[test]
fn serves_as_ipam_for_the_reference_macvlan() {
    let (h, sw) = host_with_switch("dpI").unwrap();
    sw.exec(&["ip", "addr", "add", "10.76.0.1/24", "dev", "up0"]).unwrap();
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"ref76","type":"macvlan","master":"eth0","mode":"bridge","stateDir":"{}","bpffs":"{}","ipam":{{"type":"dataplane-cni","subnet":"10.76.0.0/24","gateway":"10.76.0.1","auxAddresses":{{"r":"10.76.0.2"}}}}}}"#,
        h.state.display(),
        h.bpffs.dir.display()
    );
    let macvlan = std::path::Path::new(REFERENCE_DIR).join("macvlan");
    let (p1, p2) = (Netns::new("dpIp").unwrap(), Netns::new("dpIq").unwrap());
    let (p1p, p2p) = (p1.path().display().to_string(), p2.path().display().to_string());
    let a1 = call(&h.ns, &macvlan, "ADD", &env("i1", &p1p), &conf);
    assert!(a1.ok, "{} {}", a1.json, String::from_utf8_lossy(&a1.raw.stderr));
    assert_eq!(a1.json["ips"][0]["address"], "10.76.0.3/24", "gateway and aux address skipped: {}", a1.json);
    let a2 = call(&h.ns, &macvlan, "ADD", &env("i2", &p2p), &conf);
    assert_eq!(a2.json["ips"][0]["address"], "10.76.0.4/24", "{}", a2.json);
    assert!(p1.exec(&["ping", "-c", "1", "-W", "1", "10.76.0.1"]).is_ok());
    let nets: Value = dataplane_tests::json_lines(&h.ok(&["network", "ls", "--format", "json"]));
    assert!(nets.to_string().contains("\"ref76\"") && nets.to_string().contains("ipam"), "{nets:#}");
    let ps: Value = dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"]));
    assert_eq!(ps.as_array().unwrap().len(), 2, "{ps:#}");
    // Address-only endpoints have no interface or programs of ours: nothing to repair.
    assert!(h.reconcile_dry_run().contains("no drift"));
    for (id, p) in [("i1", &p1p), ("i2", &p2p)] {
        let d = call(&h.ns, &macvlan, "DEL", &env(id, p), &conf);
        assert!(d.ok, "{}", d.json);
    }
    assert_eq!(dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"])), json!([]));
    let nets: Value = dataplane_tests::json_lines(&h.ok(&["network", "ls", "--format", "json"]));
    assert_eq!(nets.as_array().unwrap().len(), 2, "the address-only network outlived its addresses: {nets:#}");
}

/// `"hostAccess": true`: the node reaches its pods (and they reach it) through the
/// interface dataplane makes with the network; the last DEL takes it away with the
/// network. With delegated IPAM it is refused (that plugin would hand out its address).
#[test]
fn host_access_through_cni() {
    let (h, _sw) = host_with_switch("dpNh").unwrap();
    let plugin = cni_bin();
    let host_links = links(&h.ns);
    let delegated = conf(&h, "cnh", r#","hostAccess":true,"ipam":{"type":"host-local","subnet":"10.74.0.0/24"}"#);
    let pod = Netns::new("dpNhp").unwrap();
    let pod_path = pod.path().display().to_string();
    let refused = call(&h.ns, &plugin, "ADD", &env("ctrH", &pod_path), &delegated);
    assert!(!refused.ok);
    assert!(refused.json["msg"].as_str().unwrap_or("").contains("\"hostAccess\" needs"), "{}", refused.json);
    assert_eq!(links(&h.ns), host_links, "a refused ADD left an interface");

    let c = conf(&h, "cnh", r#","hostAccess":true,"ipam":{"type":"dataplane-cni","subnet":"10.74.0.0/24"}"#);
    let add = call(&h.ns, &plugin, "ADD", &env("ctrH", &pod_path), &c);
    assert!(add.ok, "{}", add.json);
    let pod_ip = add.json["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    let shim = links(&h.ns).difference(&host_links).cloned().collect::<Vec<_>>();
    assert_eq!(shim.len(), 1, "one host-access interface expected: {shim:?}");
    assert!(shim[0].starts_with("dph"), "{shim:?}");
    assert!(h.ns.exec(&["ping", "-c", "1", "-W", "2", &pod_ip]).is_ok(), "the node cannot reach its pod");
    let host_ip = h.endpoint_json("cnh-host")["Networks"][0]["IPv4Address"].as_str().unwrap().to_string();
    assert!(pod.exec(&["ping", "-c", "1", "-W", "2", &host_ip]).is_ok(), "the pod cannot reach the node");

    let del = call(&h.ns, &plugin, "DEL", &env("ctrH", &pod_path), &c);
    assert!(del.ok, "{}", del.json);
    assert_eq!(links(&h.ns), host_links, "the host-access interface outlived the network");
    let nets: Value = dataplane_tests::json_lines(&h.ok(&["network", "ls", "--format", "json"]));
    assert!(!nets.to_string().contains("cnh"), "{nets:#}");
}

/// `bpf reload` replaces the programs of a pod's cls_bpf filters in place wherever the
/// runtime keeps its namespaces (here containerd's and CRI-O's `/var/run/netns/...`).
#[test]
fn reload_replaces_cls_bpf_filters_of_pods_in_var_run_netns() {
    let (h, _sw) = host_with_switch("dpNr").unwrap();
    let plugin = cni_bin();
    let pod = Netns::new("dpNrp").unwrap();
    let pod_path = format!("/var/run/netns/{}", pod.name);
    let c = conf(&h, "cnr", r#","endpointHooks":"cls_bpf","ipam":{"type":"dataplane-cni","subnet":"10.75.0.0/24"}"#);
    let add = call(&h.ns, &plugin, "ADD", &env("ctrR", &pod_path), &c);
    assert!(add.ok, "{}", add.json);
    let out = h.ok(&["bpf", "reload", "--format", "json"]);
    let rows: Value = serde_json::from_str(&out).unwrap();
    let pod_rows: Vec<&Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["pin"].as_str().is_some_and(|p| p.contains("var_run_netns")))
        .collect();
    let programs: BTreeSet<&str> = pod_rows.iter().filter_map(|r| r["program"].as_str()).collect();
    assert_eq!(programs, BTreeSet::from(["dp_ep_out"]), "{out}");
    for r in &pod_rows {
        assert_ne!(r["old_program_id"], r["new_program_id"], "{out}");
    }
    // The filter in the pod now runs the new program.
    let shown = pod.exec(&["tc", "filter", "show", "dev", "eth0", "egress"]).unwrap();
    let new_id = pod_rows.iter().find(|r| r["program"] == "dp_ep_out").unwrap()["new_program_id"].to_string();
    assert!(shown.contains(&format!("id {new_id}")), "{shown}");
    assert!(call(&h.ns, &plugin, "DEL", &env("ctrR", &pod_path), &c).ok);
}

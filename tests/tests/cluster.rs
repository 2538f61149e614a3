//! Cluster mode: three hosts plan one network's addresses in a real 3-member etcd.

use std::{collections::BTreeSet, time::Instant};

use dataplane_tests::{
    cluster::{ClusterHost, EtcdLab},
    lab::unique,
};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `count` concurrent `run -d` on each host into `network`: the outputs, host by host.
fn burst(hosts: &[&ClusterHost], network: &str, count: usize) -> Vec<(String, std::process::Output)> {
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for h in hosts {
            for _ in 0..count {
                let name = unique("c");
                handles.push(s.spawn(move || {
                    let out = h.dp(&["run", "-d", "--name", &name, "--network", network]);
                    (h.name.clone(), out)
                }));
            }
        }
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    })
}

/// Every (address, MAC) on `network` across `hosts`, asserted unique.
fn all_unique(hosts: &[&ClusterHost], network: &str) -> Vec<(String, String, String)> {
    let all: Vec<(String, String, String)> = hosts.iter().flat_map(|h| h.addresses(network)).collect();
    let ips: BTreeSet<&String> = all.iter().map(|a| &a.1).collect();
    let macs: BTreeSet<&String> = all.iter().map(|a| &a.2).collect();
    assert_eq!(ips.len(), all.len(), "duplicate addresses across hosts: {all:#?}");
    assert_eq!(macs.len(), all.len(), "duplicate MACs across hosts: {all:#?}");
    all
}

#[test]
fn a_network_made_on_one_host_is_everyones_and_bursts_from_three_hosts_never_share_an_address() {
    let lab = EtcdLab::new(3).unwrap();
    let prefix = unique("t");
    let hosts: Vec<ClusterHost> = (1..=3).map(|i| lab.host(&format!("h{i}"), i, &prefix).unwrap()).collect();
    let h: Vec<&ClusterHost> = hosts.iter().collect();

    let id = h[0].ok(&["network", "create", "--subnet", "10.98.0.0/24", "-o", "parent=lan0", "shared"]);
    for other in &h[1..] {
        let ls = other.ok(&["network", "ls", "--format", "{{.ID}} {{.Name}} {{.Scope}}"]);
        assert!(ls.contains(&format!("{} shared global", &id.trim()[..12])), "host {}: {ls}", other.name);
    }
    // The same name again, from another host: refused, naming the cluster.
    let again = h[1].dp(&["network", "create", "--subnet", "10.97.0.0/24", "-o", "parent=lan0", "shared"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("network with name shared already exists in cluster etcd://"),
        "{}",
        stderr(&again)
    );
    // An overlapping subnet under another name: refused, naming the cluster's network.
    let overlap = h[2].dp(&["network", "create", "--subnet", "10.98.0.128/25", "-o", "parent=lan0", "other"]);
    assert!(stderr(&overlap).contains("overlaps subnet 10.98.0.0/24 of network shared"), "{}", stderr(&overlap));

    // 3 hosts x 12 concurrent runs.
    let runs = burst(&h, "shared", 12);
    for (host, out) in &runs {
        assert!(out.status.success(), "host {host}: {}", stderr(out));
    }
    let all = all_unique(&h, "shared");
    assert_eq!(all.len(), 36);
    // Real frames between hosts: an endpoint on h1 reaches one on h3 over the data switch.
    let (a, b) = (&h[0].addresses("shared")[0], &h[2].addresses("shared")[0]);
    h[0].ok(&["exec", &a.0, "ping", "-c", "1", "-W", "2", &b.1]);

    // network rm with endpoints here: refused as on one host; with endpoints only on
    // other hosts: refused, naming them.
    let rm = h[0].dp(&["network", "rm", "shared"]);
    assert!(stderr(&rm).contains("has active endpoints"), "{}", stderr(&rm));
    for (name, _, _) in h[0].addresses("shared") {
        h[0].ok(&["rm", "-f", &name]);
    }
    let rm = h[0].dp(&["network", "rm", "shared"]);
    assert!(!rm.status.success());
    assert!(
        stderr(&rm)
            .contains("network shared has endpoints on other hosts of the cluster (h2, h3): remove them there first"),
        "{}",
        stderr(&rm)
    );
    for host in &h[1..] {
        for (name, _, _) in host.addresses("shared") {
            host.ok(&["rm", "-f", &name]);
        }
    }
    // Removed endpoints released their claims: another host's removal now goes through.
    h[1].ok(&["network", "rm", "shared"]);
    for host in &h {
        let ls = host.ok(&["network", "ls", "--format", "{{.Name}}"]);
        assert!(!ls.lines().any(|l| l == "shared"), "host {}: {ls}", host.name);
    }
    let late = h[0].dp(&["run", "-d", "--name", "late", "--network", "shared"]);
    assert!(stderr(&late).contains("network shared not found"), "{}", stderr(&late));

    // A /27 (29 usable addresses: not the network, broadcast or gateway) and 36 concurrent
    // requests from three hosts: exactly 29 made, the rest refused with the clear error.
    h[2].ok(&["network", "create", "--subnet", "10.98.1.0/27", "-o", "parent=lan0", "small"]);
    let runs = burst(&h, "small", 12);
    let made = runs.iter().filter(|(_, o)| o.status.success()).count();
    assert_eq!(made, 29, "{:#?}", runs.iter().map(|(h, o)| format!("{h}: {}", stderr(o))).collect::<Vec<_>>());
    for (_, o) in runs.iter().filter(|(_, o)| !o.status.success()) {
        assert!(
            stderr(o).contains("address pool of subnet 10.98.1.0/27 is exhausted"),
            "unexpected failure: {}",
            stderr(o)
        );
    }
    assert_eq!(all_unique(&h, "small").len(), 29);
    // Nothing leaked by the refused ones: each host's claims are its endpoints.
    for host in &h {
        let st = host.status();
        assert_eq!(st["claims"].as_array().unwrap().len(), host.addresses("small").len(), "{st:#}");
    }
}

#[test]
fn without_quorum_commands_fail_fast_and_leave_nothing_and_running_endpoints_keep_forwarding() {
    let mut lab = EtcdLab::new(3).unwrap();
    let prefix = unique("t");
    let a = lab.host("qa", 1, &prefix).unwrap();
    let b = lab.host("qb", 2, &prefix).unwrap();
    a.ok(&["network", "create", "--subnet", "10.98.2.0/24", "-o", "parent=lan0", "q"]);
    a.ok(&["run", "-d", "--name", "qa1", "--network", "q"]);
    b.ok(&["run", "-d", "--name", "qb1", "--network", "q"]);
    let peer = b.addresses("q")[0].1.clone();

    // One member killed in the middle of a burst: nothing fails.
    std::thread::scope(|s| {
        let runs = s.spawn(|| {
            for i in 0..4 {
                a.ok(&["run", "-d", "--name", &format!("one{i}"), "--network", "q"]);
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(150));
        lab.kill(0);
        runs.join().expect("runs during the kill");
    });
    // Two down: no quorum. Commands fail within 5 s naming the cluster, and leave nothing.
    lab.kill(1);
    let netns_before = std::fs::read_dir("/run/netns").unwrap().count();
    let t = Instant::now();
    let out = a.dp(&["run", "-d", "--name", "nq", "--network", "q"]);
    let took = t.elapsed();
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&format!("cluster {} unavailable", lab.url(&prefix))), "{}", stderr(&out));
    assert!(took.as_secs_f64() < 5.5, "took {took:?}");
    assert_eq!(std::fs::read_dir("/run/netns").unwrap().count(), netns_before, "a namespace was left");
    let ps = a.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!ps.lines().any(|l| l == "nq"), "{ps}");
    let made = a.dp(&["network", "create", "--subnet", "10.98.3.0/24", "-o", "parent=lan0", "nq"]);
    assert!(stderr(&made).contains("unavailable"), "{}", stderr(&made));
    // The kernel state is untouched: the endpoints still talk across hosts.
    a.ok(&["exec", "qa1", "ping", "-c", "1", "-W", "2", &peer]);

    // Members back: everything works again, and nothing of the failed commands remains.
    lab.restart(0).unwrap();
    lab.restart(1).unwrap();
    lab.wait_healthy(std::time::Duration::from_secs(20)).unwrap();
    a.ok(&["run", "-d", "--name", "back", "--network", "q"]);
    let ls = a.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!ls.lines().any(|l| l == "nq"), "{ls}");
    let st = a.status();
    let ps = a.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(st["claims"].as_array().unwrap().len(), 6, "{st:#}\nendpoints here:\n{ps}");
    all_unique(&[&a, &b], "q");
}

#[test]
fn killed_commands_leak_no_claim_after_reconcile_and_forget_frees_a_gone_host() {
    let lab = EtcdLab::new(1).unwrap();
    let prefix = unique("t");
    let a = lab.host("ka", 1, &prefix).unwrap();
    // A /29: 5 usable addresses.
    a.ok(&["network", "create", "--subnet", "10.98.4.0/29", "-o", "parent=lan0", "k"]);
    for point in ["cluster:claimed", "run:allocated", "run:netns-made", "run:linked", "rm:marked", "rm:torn-down"] {
        let name = unique("k");
        if point.starts_with("rm:") {
            a.ok(&["run", "-d", "--name", &name, "--network", "k"]);
            let _ = a.command().env("DATAPLANE_FAULT", point).args(["rm", "-f", &name]).output();
        } else {
            let _ = a
                .command()
                .env("DATAPLANE_FAULT", point)
                .args(["run", "-d", "--name", &name, "--network", "k"])
                .output();
        }
        a.ok(&["reconcile"]);
        let st = a.status();
        let live = a.addresses("k").len();
        assert_eq!(st["claims"].as_array().unwrap().len(), live, "after a kill at {point}: {st:#}");
    }
    for (n, _, _) in a.addresses("k") {
        a.ok(&["rm", "-f", &n]);
    }
    // Host b takes every address, then is gone for good (its namespaces and state too).
    let b = lab.host("kb", 2, &prefix).unwrap();
    for i in 0..5 {
        b.ok(&["run", "-d", "--name", &format!("b{i}"), "--network", "k"]);
    }
    let full = a.dp(&["run", "-d", "--name", "a0", "--network", "k"]);
    assert!(stderr(&full).contains("is exhausted"), "{}", stderr(&full));
    let st = a.status();
    assert!(st["hosts"].as_array().unwrap().iter().any(|h| h["host"] == "kb"), "{st:#}");
    // While its agent keeps its lease, the host is alive: forget is refused.
    let mut agent =
        b.command().args(["cluster", "agent", "--ttl", "3"]).stderr(std::process::Stdio::null()).spawn().unwrap();
    assert!(dataplane_tests::lab::wait_until(std::time::Duration::from_secs(5), || {
        a.status()["hosts"].as_array().unwrap().iter().any(|h| h["host"] == "kb" && h["agent"] == true)
    }));
    let alive = a.dp(&["cluster", "forget", "kb"]);
    assert!(stderr(&alive).contains("host kb is alive (its agent holds a lease)"), "{}", stderr(&alive));
    // Gone without a word: its agent dies, its namespaces and state dir vanish, its
    // claims stay; the lease runs out.
    agent.kill().unwrap();
    agent.wait().unwrap();
    b.vanish();
    assert!(dataplane_tests::lab::wait_until(std::time::Duration::from_secs(8), || {
        a.status()["hosts"].as_array().unwrap().iter().any(|h| h["host"] == "kb" && h["agent"] == false)
    }));
    let refused = a.dp(&["cluster", "forget", "ka"]);
    assert!(stderr(&refused).contains("is this host"), "{}", stderr(&refused));
    assert_eq!(a.ok(&["cluster", "forget", "kb"]).trim(), "released 5 attachment(s) of host kb");
    for i in 0..5 {
        a.ok(&["run", "-d", "--name", &format!("a{i}"), "--network", "k"]);
    }
}

#[test]
fn tls_with_client_certificates_works_and_a_client_without_one_is_refused() {
    let certs = dataplane_tests::plugin::TempDir::new("dpcerts-");
    let dir = certs.0.clone();
    dataplane_tests::cluster::make_certs(&dir).unwrap();
    let f = |n: &str| dir.join(n).display().to_string();
    let lab = EtcdLab::with(
        1,
        "https",
        ["--cert-file", &f("server.pem"), "--key-file", &f("server.key"), "--trusted-ca-file", &f("ca.pem")]
            .iter()
            .map(|s| s.to_string())
            .chain(["--client-cert-auth".to_string()])
            .collect(),
        vec![
            format!("--cacert={}", f("ca.pem")),
            format!("--cert={}", f("client.pem")),
            format!("--key={}", f("client.key")),
        ],
    )
    .unwrap();
    let prefix = unique("t");
    let mut h = lab.host("tls1", 1, &prefix).unwrap();
    let good = [
        ("DATAPLANE_CLUSTER_CA", f("ca.pem")),
        ("DATAPLANE_CLUSTER_CERT", f("client.pem")),
        ("DATAPLANE_CLUSTER_KEY", f("client.key")),
    ];
    h.env.extend(good.iter().map(|(k, v)| (k.to_string(), v.clone())));
    h.ok(&["network", "create", "--subnet", "10.98.5.0/24", "-o", "parent=lan0", "secure"]);
    h.ok(&["run", "-d", "--name", "s1", "--network", "secure"]);
    assert_eq!(h.status()["claims"].as_array().unwrap().len(), 1);

    // Without a client certificate, and with one from another CA: refused, clearly, fast.
    let url = lab.url(&prefix);
    for (what, cert) in [("no certificate", None), ("another CA's certificate", Some("stranger"))] {
        let mut c = h.host.command();
        c.env("DATAPLANE_CLUSTER", &url).env("DATAPLANE_CLUSTER_HOST", "tls2").env("DATAPLANE_CLUSTER_CA", f("ca.pem"));
        if let Some(name) = cert {
            c.env("DATAPLANE_CLUSTER_CERT", f(&format!("{name}.pem")))
                .env("DATAPLANE_CLUSTER_KEY", f(&format!("{name}.key")));
        }
        let t = Instant::now();
        let out = c.args(["network", "ls"]).output().unwrap();
        assert!(!out.status.success(), "{what}: accepted");
        assert!(out.status.code().is_some(), "{what}: killed: {:?} {}", out.status, stderr(&out));
        let e = stderr(&out);
        assert!(e.contains(&format!("cluster {url} unavailable")), "{what}: {e}");
        assert!(t.elapsed().as_secs_f64() < 5.5, "{what}: took {:?}", t.elapsed());
    }
    // A certificate without its key is a usage error naming both flags.
    let out = h
        .host
        .command()
        .env("DATAPLANE_CLUSTER", &url)
        .env("DATAPLANE_CLUSTER_CERT", f("client.pem"))
        .args(["network", "ls"])
        .output()
        .unwrap();
    assert!(stderr(&out).contains("--cluster-cert and --cluster-key go together"), "{}", stderr(&out));
}

#[test]
fn a_host_cut_off_from_etcd_fails_cleanly_while_the_others_go_on() {
    let lab = EtcdLab::new(3).unwrap();
    let prefix = unique("t");
    let a = lab.host("ca", 1, &prefix).unwrap();
    let b = lab.host("cb", 2, &prefix).unwrap();
    a.ok(&["network", "create", "--subnet", "10.98.6.0/24", "-o", "parent=lan0", "cut"]);
    a.ok(&["run", "-d", "--name", "a1", "--network", "cut"]);
    b.ok(&["run", "-d", "--name", "b1", "--network", "cut"]);
    // Its metrics say whether the cluster answers (one round trip per scrape).
    let env: Vec<(&str, &str)> = a.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let addr = "127.0.0.1:9484";
    let _metrics =
        dataplane_tests::plugin::Server::start_env(&a.host, &["metrics", "--listen", addr], 1024, 60_000, &env);
    let scrape = || {
        let text = std::cell::RefCell::new(String::new());
        dataplane_tests::lab::wait_until(std::time::Duration::from_secs(10), || {
            *text.borrow_mut() = dataplane_tests::plugin::http_get(&a.host, addr, "/metrics");
            text.borrow().contains("200 OK")
        });
        text.into_inner()
    };
    let m = scrape();
    assert!(m.contains("dataplane_cluster_up 1") && m.contains("dataplane_cluster_failures_total 0"), "{m}");
    // Its management link down: etcd is out of reach, the data link is not.
    a.host.ns.exec(&["ip", "link", "set", "mgmt0", "down"]).unwrap();
    let m = scrape();
    assert!(m.contains("dataplane_cluster_up 0") && !m.contains("dataplane_cluster_failures_total 0"), "{m}");
    let t = Instant::now();
    let out = a.dp(&["run", "-d", "--name", "a2", "--network", "cut"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unavailable"), "{}", stderr(&out));
    assert!(t.elapsed().as_secs_f64() < 5.5, "took {:?}", t.elapsed());
    let ps = a.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(ps.trim(), "a1", "{ps}");
    let rm = a.dp(&["rm", "-f", "a1"]);
    assert!(stderr(&rm).contains("stay claimed in the cluster until `dataplane reconcile`"), "{}", stderr(&rm));
    for i in 0..3 {
        b.ok(&["run", "-d", "--name", &format!("b{}", i + 2), "--network", "cut"]);
    }
    // Back on the wire: reconcile releases what a1 held, and a2 goes through.
    a.host.ns.exec(&["ip", "link", "set", "mgmt0", "up"]).unwrap();
    let r = a.ok(&["reconcile"]);
    assert!(r.contains("cluster claims of gone endpoint a1 on network cut"), "{r}");
    assert_eq!(a.status()["claims"].as_array().unwrap().len(), 0);
    a.ok(&["run", "-d", "--name", "a2", "--network", "cut"]);
    all_unique(&[&a, &b], "cut");
}

#[test]
fn the_cli_on_one_host_and_dataplane_cni_on_another_share_one_plan() {
    use dataplane_tests::{cni, lab::Netns};
    let lab = EtcdLab::new(1).unwrap();
    let prefix = unique("t");
    let a = lab.host("ma", 1, &prefix).unwrap();
    let b = lab.host("mb", 2, &prefix).unwrap();
    a.ok(&["network", "create", "--subnet", "10.98.8.0/24", "--gateway", "10.98.8.1", "-o", "parent=lan0", "mixed"]);
    let conf = |h: &dataplane_tests::cluster::ClusterHost, subnet: &str| {
        format!(
            r#"{{"cniVersion":"1.1.0","name":"mixed","type":"dataplane-cni","parent":"lan0","stateDir":"{}","bpffs":"{}","cluster":{{"url":"{}","host":"{}"}},"ipam":{{"type":"dataplane-cni","subnet":"{subnet}","gateway":"{}"}}}}"#,
            h.host.state.display(),
            h.host.bpffs.dir.display(),
            lab.url(&prefix),
            h.name,
            subnet.replace("0/24", "1")
        )
    };
    let good = conf(&b, "10.98.8.0/24");
    let pods: Vec<Netns> = (0..6).map(|_| Netns::new("dpKp").unwrap()).collect();
    std::thread::scope(|s| {
        let adds: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (good, path) = (&good, p.path().display().to_string());
                let b = &b;
                s.spawn(move || {
                    let id = format!("pod{i}{}", "0".repeat(60));
                    cni::call(&b.host.ns, &cni::cni_bin(), "ADD", &cni::env(&id, &path), good)
                })
            })
            .collect();
        for i in 0..6 {
            a.ok(&["run", "-d", "--name", &format!("cli{i}"), "--network", "mixed"]);
        }
        for add in adds {
            let out = add.join().unwrap();
            assert!(out.ok, "ADD: {} {}", out.json, String::from_utf8_lossy(&out.raw.stderr));
        }
    });
    assert_eq!(all_unique(&[&a, &b], "mixed").len(), 12);
    assert_eq!(b.status()["claims"].as_array().unwrap().len(), 6);
    // A node whose configuration gives the network another subnet: refused, naming both.
    let c = lab.host("mc", 3, &prefix).unwrap();
    let p = Netns::new("dpKp").unwrap();
    let path = p.path().display().to_string();
    let odd = format!("odd{}", "0".repeat(61));
    let out = cni::call(&c.host.ns, &cni::cni_bin(), "ADD", &cni::env(&odd, &path), &conf(&c, "10.98.9.0/24"));
    assert!(!out.ok);
    assert!(out.msg().contains("with subnets 10.98.8.0/24; this configuration asks for 10.98.9.0/24"), "{}", out.json);
    // DEL releases the pod's claim.
    let path0 = pods[0].path().display().to_string();
    let del =
        cni::call(&b.host.ns, &cni::cni_bin(), "DEL", &cni::env(&format!("pod0{}", "0".repeat(60)), &path0), &good);
    assert!(del.ok, "{}", del.json);
    assert_eq!(b.status()["claims"].as_array().unwrap().len(), 5);
    for (i, p) in pods.iter().enumerate().skip(1) {
        let path = p.path().display().to_string();
        let del = cni::call(
            &b.host.ns,
            &cni::cni_bin(),
            "DEL",
            &cni::env(&format!("pod{i}{}", "0".repeat(60)), &path),
            &good,
        );
        assert!(del.ok, "{}", del.json);
    }
    // The last DEL removed host b's copy only: the network is still the cluster's.
    let ls = a.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(ls.lines().any(|l| l == "mixed"), "{ls}");
    assert_eq!(b.status()["claims"].as_array().unwrap().len(), 0);
}

#[test]
fn three_dockerds_with_the_ipam_driver_allocate_from_one_plan() {
    use dataplane_tests::docker::{DockerLab, IMAGE};
    let lab = EtcdLab::new(1).unwrap();
    let prefix = unique("t");
    let url = lab.url(&prefix);
    let mut docks: Vec<DockerLab> = Vec::new();
    for i in 1..=3u8 {
        let mut d = DockerLab::new("dpKd").unwrap();
        lab.wire(&d.host.ns, i).unwrap();
        d.stop_plugin(libc::SIGTERM);
        let host = format!("dock{i}");
        d.start_plugin_env(&[("DATAPLANE_CLUSTER", url.as_str()), ("DATAPLANE_CLUSTER_HOST", host.as_str())]).unwrap();
        docks.push(d);
    }
    for d in &docks {
        d.ok(&[
            "network",
            "create",
            "-d",
            &d.driver,
            "--ipam-driver",
            &d.driver,
            "--subnet",
            "10.98.10.0/24",
            "-o",
            "parent=lan0",
            "shared",
        ]);
    }
    // 3 dockerds x 4 concurrent containers.
    std::thread::scope(|s| {
        let runs: Vec<_> = docks
            .iter()
            .flat_map(|d| (0..4).map(move |_| d))
            .map(|d| s.spawn(move || d.ok(&["run", "-d", "--network", "shared", IMAGE, "sleep", "600"])))
            .collect();
        for r in runs {
            r.join().unwrap();
        }
    });
    let mut all = Vec::new();
    for d in &docks {
        let ids = d.ok(&["ps", "-q"]);
        for id in ids.lines() {
            let ip = d.ok(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", id]);
            let mac = d.ok(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.MacAddress}}{{end}}", id]);
            all.push((ip, mac));
        }
    }
    assert_eq!(all.len(), 12);
    let ips: BTreeSet<&String> = all.iter().map(|a| &a.0).collect();
    let macs: BTreeSet<&String> = all.iter().map(|a| &a.1).collect();
    assert_eq!((ips.len(), macs.len()), (12, 12), "{all:?}");
    assert!(!ips.contains(&"10.98.10.1".to_string()), "the gateway was handed out: {all:?}");
    // A container on one host reaches one on another.
    let first = docks[0].ok(&["ps", "-q"]).lines().next().unwrap().to_string();
    let far = &all[all.len() - 1].0;
    docks[0].ok(&["exec", &first, "ping", "-c", "1", "-W", "2", far]);
    // Removing containers releases their addresses in the cluster (ReleaseAddress).
    for id in docks[2].ok(&["ps", "-q"]).lines() {
        docks[2].ok(&["rm", "-f", id]);
    }
    let out = docks[2]
        .host
        .command()
        .env("DATAPLANE_CLUSTER", &url)
        .env("DATAPLANE_CLUSTER_HOST", "dock3")
        .args(["cluster", "status", "--format", "json"])
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let held: Vec<&serde_json::Value> =
        st["claims"].as_array().unwrap().iter().filter(|c| c["endpoint"] != "gateway").collect();
    assert!(held.is_empty(), "{st:#}");
}

#[test]
fn a_host_names_its_own_parent_and_dual_stack_claims_stay_unique() {
    let lab = EtcdLab::new(1).unwrap();
    let prefix = unique("t");
    let a = lab.host("pa", 1, &prefix).unwrap();
    let mut b = lab.host("pb", 2, &prefix).unwrap();
    for cmd in [
        &["link", "set", "lan0", "down"][..],
        &["link", "set", "lan0", "name", "data1"],
        &["link", "set", "data1", "up"],
    ] {
        let mut argv = vec!["ip"];
        argv.extend_from_slice(cmd);
        b.host.ns.exec(&argv).unwrap();
    }
    a.ok(&["network", "create", "--subnet", "10.98.11.0/24", "-o", "parent=lan0", "own"]);
    a.ok(&["run", "-d", "--name", "pa1", "--network", "own"]);
    // Host b has no lan0: without an override the network cannot be realised there.
    let out = b.dp(&["run", "-d", "--name", "pb1", "--network", "own"]);
    assert!(stderr(&out).contains("lan0"), "{}", stderr(&out));
    let bad = b.command().env("DATAPLANE_CLUSTER_PARENT", "own").args(["network", "ls"]).output().unwrap();
    assert!(stderr(&bad).contains("invalid --cluster-parent \"own\": expected NETWORK=INTERFACE"), "{}", stderr(&bad));
    b.env.push(("DATAPLANE_CLUSTER_PARENT".into(), "own=data1,six=data1".into()));
    b.ok(&["run", "-d", "--name", "pb1", "--network", "own"]);
    let ls = b.ok(&["network", "ls", "--format", "{{.Name}} {{.Parent}}"]);
    assert!(ls.lines().any(|l| l == "own data1"), "{ls}");
    let far = a.addresses("own")[0].1.clone();
    b.ok(&["exec", "pb1", "ping", "-c", "1", "-W", "2", &far]);
    all_unique(&[&a, &b], "own");

    // Dual stack: IPv6 addresses are claimed beside the IPv4 ones, unique across hosts.
    a.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.98.12.0/24",
        "--subnet",
        "fd00:98:12::/64",
        "-o",
        "parent=lan0",
        "six",
    ]);
    std::thread::scope(|s| {
        let runs: Vec<_> = [&a, &b]
            .into_iter()
            .flat_map(|h| (0..4).map(move |i| (h, i)))
            .map(|(h, i)| {
                s.spawn(move || h.ok(&["run", "-d", "--name", &format!("six{}{i}", h.name), "--network", "six"]))
            })
            .collect();
        for r in runs {
            r.join().unwrap();
        }
    });
    let mut v6 = BTreeSet::new();
    for h in [&a, &b] {
        let ps = dataplane_tests::json_lines(&h.ok(&["ps", "-a", "--format", "json"]));
        for e in ps.as_array().unwrap() {
            for n in e["Networks"].as_array().unwrap().iter().filter(|n| n["Network"] == "six") {
                let ip = n["IPv6Address"].as_str().unwrap_or_default().to_string();
                assert!(ip.starts_with("fd00:98:12::"), "{e:#}");
                assert!(v6.insert(ip.clone()), "IPv6 address {ip} twice");
            }
        }
    }
    assert_eq!(v6.len(), 8);
    all_unique(&[&a, &b], "six");
}

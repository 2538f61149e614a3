//! `--only cluster`: what cluster mode costs, side by side with single-host mode in the
//! same run (a real 3-member etcd in namespaces; see dataplane_tests::cluster).

use std::time::Instant;

use anyhow::{bail, Result};
use dataplane_tests::{
    cluster::{ClusterHost, EtcdLab},
    cni::{call, cni_bin},
    lab::unique,
    Netns,
};
use dataplane_user::cluster::{Claimed, Cluster, ClusterConfig};
use serde_json::{json, Value};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn timed(f: impl FnOnce() -> bool) -> Result<f64> {
    let t = Instant::now();
    if !f() {
        bail!("a measured command failed");
    }
    Ok(t.elapsed().as_secs_f64())
}

fn conf(h: &ClusterHost, name: &str, subnet: &str, cluster: Option<&str>) -> String {
    let cluster = cluster.map(|u| format!(r#""cluster":{{"url":"{u}","host":"{}"}},"#, h.name)).unwrap_or_default();
    format!(
        r#"{{"cniVersion":"1.0.0","name":"{name}","type":"dataplane-cni","parent":"lan0",{cluster}"stateDir":"{}","bpffs":"{}","ipam":{{"type":"dataplane-cni","subnet":"{subnet}.0.0/16","gateway":"{subnet}.0.1"}}}}"#,
        h.host.state.display(),
        h.host.bpffs.dir.display()
    )
}

pub fn run(quick: bool) -> Result<Value> {
    let n = if quick { 10 } else { 40 };
    let lab = EtcdLab::new(3)?;
    let prefix = unique("b");
    let url = lab.url(&prefix);
    let hosts: Vec<ClusterHost> = (1..=4).map(|i| lab.host(&format!("bh{i}"), i, &prefix)).collect::<Result<_>>()?;
    let (c, single) = (&hosts[0], &hosts[3]);
    c.ok(&["network", "create", "--subnet", "10.230.0.0/16", "-o", "parent=lan0", "bc"]);
    // Single-host mode without address probes: cluster mode does not probe either.
    let plain = |args: &[&str]| single.host.dp(args).status.success();
    if !plain(&["network", "create", "--subnet", "10.231.0.0/16", "-o", "parent=lan0", "-o", "ip_probe_ms=0", "bs"]) {
        bail!("network create (single host) failed");
    }

    // run -d, alternating the two modes so both see the same machine.
    let (mut cl, mut sg) = (Vec::new(), Vec::new());
    for i in 0..n {
        let (a, b) = (format!("bcr{i}"), format!("bsr{i}"));
        let one = || timed(|| c.dp(&["run", "-d", "--name", &a, "--network", "bc"]).status.success());
        let two = || timed(|| plain(&["run", "-d", "--name", &b, "--network", "bs"]));
        if i % 2 == 0 {
            cl.push(one()?);
            sg.push(two()?);
        } else {
            sg.push(two()?);
            cl.push(one()?);
        }
    }
    let (run_c, run_s) = (median(cl), median(sg));

    // CNI ADD, the same way.
    let (conf_c, conf_s) = (conf(c, "bcn", "10.232", Some(&url)), conf(single, "bsn", "10.233", None));
    let pods: Vec<Netns> = (0..=n).map(|_| Netns::new("bKp")).collect::<Result<_>>()?;
    let add = |h: &ClusterHost, conf: &str, i: usize, ifname: &str| {
        let p = pods[i].path().display().to_string();
        let id = format!("bench{i}");
        call(
            &h.host.ns,
            &cni_bin(),
            "ADD",
            &[("CNI_CONTAINERID", &id), ("CNI_NETNS", &p), ("CNI_IFNAME", ifname)],
            conf,
        )
        .ok
    };
    // The first ADD of each makes its network: not measured.
    if !add(c, &conf_c, n, "eth0") || !add(single, &conf_s, n, "eth1") {
        bail!("first CNI ADDs failed");
    }
    let (mut cl, mut sg) = (Vec::new(), Vec::new());
    for i in 0..n {
        if i % 2 == 0 {
            cl.push(timed(|| add(c, &conf_c, i, "eth0"))?);
            sg.push(timed(|| add(single, &conf_s, i, "eth1"))?);
        } else {
            sg.push(timed(|| add(single, &conf_s, i, "eth1"))?);
            cl.push(timed(|| add(c, &conf_c, i, "eth0"))?);
        }
    }
    let (add_c, add_s) = (median(cl), median(sg));

    // 3 hosts x 16 concurrent runs into one cluster network.
    let t = Instant::now();
    let ok = std::thread::scope(|s| {
        let handles: Vec<_> = hosts[..3]
            .iter()
            .flat_map(|h| (0..16).map(move |i| (h, i)))
            .map(|(h, i)| {
                s.spawn(move || {
                    let out = h.dp(&["run", "-d", "--name", &format!("bb{}-{i}", h.name), "--network", "bc"]);
                    if !out.status.success() {
                        eprintln!("  {}: {}", h.name, String::from_utf8_lossy(&out.stderr).trim());
                    }
                    out.status.success()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(false)).filter(|ok| *ok).count()
    });
    let burst = t.elapsed().as_secs_f64();
    if ok != 48 {
        bail!("{} of 48 burst runs failed", 48 - ok);
    }

    // Claims per second against the cluster, one client, one at a time.
    let claims = if quick { 200 } else { 1000 };
    let rate = super::in_ns(&lab.sw, || -> Result<f64> {
        let cfg = ClusterConfig::parse(&url, Some("bclaims"), None, None, None)?;
        let cl = Cluster::new(cfg, "bench".into())?;
        if cl.create_network("claims", "{}")?.is_err() {
            bail!("claims network exists");
        }
        let t = Instant::now();
        for i in 0..claims {
            let ip = std::net::IpAddr::from([10, 240, (i / 250) as u8, (i % 250) as u8 + 1]);
            let mac = dataplane_user::mac::Mac([2, 0x42, 10, 240, (i / 250) as u8, (i % 250) as u8 + 1]);
            match cl.claim("claims", 0, &[ip], mac, &cl.holder(&format!("e{i}"), "bench"))? {
                Claimed::Done => {}
                other => bail!("claim {i}: {other:?}"),
            }
        }
        Ok(f64::from(claims) / t.elapsed().as_secs_f64())
    })??;

    eprintln!("  run -d: cluster {:.1} ms, single host {:.1} ms: {:.2}x", run_c * 1e3, run_s * 1e3, run_c / run_s);
    eprintln!("  CNI ADD: cluster {:.1} ms, single host {:.1} ms: {:.2}x", add_c * 1e3, add_s * 1e3, add_c / add_s);
    eprintln!("  3 hosts x 16 concurrent runs: {:.1} runs/s ({burst:.2} s)", 48.0 / burst);
    eprintln!("  claims against a 3-member etcd, one client: {rate:.0}/s");
    for (i, h) in hosts[..3].iter().enumerate() {
        for j in 0..16 {
            let _ = h.dp(&["rm", "-f", &format!("bb{}-{j}", h.name)]);
        }
        if i == 0 {
            for j in 0..n {
                let _ = h.dp(&["rm", "-f", &format!("bcr{j}")]);
            }
        }
    }
    for (i, pod) in pods.iter().enumerate() {
        let p = pod.path().display().to_string();
        let id = format!("bench{i}");
        for (h, conf, ifname) in [(c, &conf_c, "eth0"), (single, &conf_s, "eth1")] {
            let _ = call(
                &h.host.ns,
                &cni_bin(),
                "DEL",
                &[("CNI_CONTAINERID", &id), ("CNI_NETNS", &p), ("CNI_IFNAME", ifname)],
                conf,
            );
        }
    }
    Ok(json!({
        "runs": n,
        "run_cluster_ms": run_c * 1e3, "run_single_ms": run_s * 1e3, "run_ratio": run_c / run_s,
        "cni_add_cluster_ms": add_c * 1e3, "cni_add_single_ms": add_s * 1e3, "cni_add_ratio": add_c / add_s,
        "burst_3x16_runs_per_s": 48.0 / burst,
        "claims_per_s": rate,
    }))
}

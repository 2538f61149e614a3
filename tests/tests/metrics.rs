//! `dataplane metrics`: OpenMetrics text over HTTP, parsed by a real parser (Python's
//! prometheus_client), with values read at scrape time that move with real traffic.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use dataplane_tests::lab::{host_with_switch, unique, Host};
use serde_json::Value;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our child, then reap it.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

const PARSE: &str = r#"
import json, sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
out = []
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// Scrape and parse; the samples as JSON.
fn scrape(h: &Host, url: &str) -> Vec<Value> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", h.ns.path().display()))
        .args(["python3", "-c", PARSE, url])
        .output()
        .unwrap();
    assert!(out.status.success(), "scrape/parse failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

fn value(samples: &[Value], name: &str, label: (&str, &str)) -> f64 {
    samples
        .iter()
        .filter(|s| s["name"] == name && s["labels"][label.0] == label.1)
        .map(|s| s["value"].as_f64().unwrap())
        .sum()
}

#[test]
fn metrics_are_read_at_scrape_time_and_move_with_traffic() {
    let (h, sw) = host_with_switch("dpM").unwrap();
    sw.exec(&["ip", "addr", "add", "10.94.0.1/24", "dev", "up0"]).unwrap();
    h.ok(&["network", "create", "--subnet=10.94.0.0/24", "--gateway=10.94.0.1", "-o", "parent=eth0", "n94"]);
    let name = unique("met");
    h.ok(&["run", "-d", "--name", &name, "--network", "n94", "--ip", "10.94.0.10"]);
    let server = Server(
        h.command()
            .args(["metrics", "--listen", "127.0.0.1:9479"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = "http://127.0.0.1:9479/metrics";
    let start = Instant::now();
    while !Command::new("nsenter")
        .arg(format!("--net={}", h.ns.path().display()))
        .args(["python3", "-c", &format!("import urllib.request; urllib.request.urlopen('{url}', timeout=1)")])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(start.elapsed() < Duration::from_secs(10), "the metrics endpoint never answered");
        std::thread::sleep(Duration::from_millis(100));
    }

    let before = scrape(&h, url);
    assert!(h.dp(&["exec", &name, "ping", "-c", "3", "-i", "0.2", "-W", "1", "10.94.0.1"]).status.success());
    h.dp(&["exec", &name, "ip", "addr", "add", "10.94.0.99/24", "dev", "eth0"]);
    let _ = h.dp(&["exec", &name, "ping", "-c", "2", "-W", "1", "-I", "10.94.0.99", "10.94.0.1"]);
    let after = scrape(&h, url);

    let ep = ("endpoint", name.as_str());
    for (metric, at_least) in [
        ("dataplane_endpoint_tx_packets_total", 3.0),
        ("dataplane_endpoint_rx_packets_total", 3.0),
        ("dataplane_endpoint_spoofed_packets_total", 2.0),
    ] {
        let (b, a) = (value(&before, metric, ep), value(&after, metric, ep));
        assert!(a - b >= at_least, "{metric} moved {b} -> {a}");
    }
    let sample = after
        .iter()
        .find(|s| s["name"] == "dataplane_endpoint_tx_packets_total" && s["labels"]["endpoint"] == name.as_str())
        .unwrap();
    assert_eq!(sample["labels"]["network"], "n94");
    assert_eq!(sample["labels"]["owner"], "cli");
    assert_eq!(sample["type"], "counter");
    let admitted = value(&after, "dataplane_parent_packets_total", ("reason", "pass_admitted"));
    assert!(admitted > value(&before, "dataplane_parent_packets_total", ("reason", "pass_admitted")), "{after:?}");
    assert_eq!(value(&after, "dataplane_networks", ("driver", "macvlan")), 1.0);
    assert_eq!(value(&after, "dataplane_endpoints", ("owner", "cli")), 1.0);
    let attached: Vec<&Value> = after.iter().filter(|s| s["name"] == "dataplane_program_attached").collect();
    assert!(
        attached
            .iter()
            .any(|s| s["labels"]["iface"] == "eth0 (xdp)"
                && s["labels"]["mechanism"].as_str().unwrap().starts_with("xdp ")),
        "{attached:?}"
    );
    assert!(after.iter().any(|s| s["name"] == "dataplane_build_info" && s["value"] == 1.0));
    // Every metric the example Grafana dashboard queries exists.
    let dash = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/grafana/dataplane.json"),
    )
    .unwrap();
    let _: Value = serde_json::from_str(&dash).unwrap();
    for word in dash.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("dataplane_")) {
        assert!(
            after.iter().any(|s| s["name"] == word),
            "the dashboard queries {word}, which the endpoint does not serve"
        );
    }
    drop(server);
}

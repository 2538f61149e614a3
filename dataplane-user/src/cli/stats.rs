//! `dataplane stats`: per-endpoint and per-parent counters, once or refreshed (--watch).

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use dataplane_user::control::Engine;
use serde_json::{json, Value};

use super::Format;

fn snapshot(engine: &mut Engine, names: &[String]) -> Result<Value> {
    let eps = engine.endpoints()?;
    for n in names {
        if !eps.iter().any(|(e, _)| &e.name == n) {
            anyhow::bail!("endpoint {n} not found (list them with dataplane ps)");
        }
    }
    let ep_counters = engine.endpoint_counters()?;
    let conflicts = engine.conflicts();
    let mut endpoints = Vec::new();
    for (e, atts) in &eps {
        if !names.is_empty() && !names.contains(&e.name) {
            continue;
        }
        let number = dataplane_user::control::endpoint_number(&e.id);
        let c = ep_counters.get(&number).copied().unwrap_or_default();
        let k = conflicts.get(&number).copied().unwrap_or_default();
        endpoints.push(json!({
            "name": e.name,
            "networks": atts.iter().map(|a| a.network.clone()).collect::<Vec<_>>(),
            "mac": atts.first().map(|a| a.mac),
            "rx_packets": c.rx_packets, "rx_bytes": c.rx_bytes,
            "tx_packets": c.tx_packets, "tx_bytes": c.tx_bytes,
            "spoofed_packets": c.spoofed_packets, "spoofed_bytes": c.spoofed_bytes,
            "conflict_mac": k.mac_frames, "conflict_ip": k.ip_frames,
            "conflict_ip_claimed_by": (k.ip_frames > 0).then(|| dataplane_user::mac::Mac(k.last_mac).to_string()),
        }));
    }
    let mut parents: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
    for c in engine.parent_counters()? {
        *parents.entry(c.iface).or_default().entry(c.reason.name()).or_default() += c.packets;
    }
    let parents: Vec<Value> =
        parents.into_iter().map(|(iface, reasons)| json!({"iface": iface, "packets": reasons})).collect();
    Ok(json!({"endpoints": endpoints, "parents": parents}))
}

fn rate(now: &Value, before: Option<&Value>, key: &str, secs: f64) -> String {
    let n = now[key].as_u64().unwrap_or(0);
    match before {
        Some(b) => format!("{:.0}/s", n.saturating_sub(b[key].as_u64().unwrap_or(0)) as f64 / secs),
        None => n.to_string(),
    }
}

fn print_table(now: &Value, before: Option<&Value>, secs: f64) {
    println!(
        "{:<24} {:>12} {:>14} {:>12} {:>14} {:>10}",
        "ENDPOINT", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES", "SPOOFED"
    );
    for e in now["endpoints"].as_array().into_iter().flatten() {
        let b = before.and_then(|b| b["endpoints"].as_array()?.iter().find(|x| x["name"] == e["name"]));
        println!(
            "{:<24} {:>12} {:>14} {:>12} {:>14} {:>10}",
            e["name"].as_str().unwrap_or(""),
            rate(e, b, "rx_packets", secs),
            rate(e, b, "rx_bytes", secs),
            rate(e, b, "tx_packets", secs),
            rate(e, b, "tx_bytes", secs),
            rate(e, b, "spoofed_packets", secs)
        );
    }
    println!();
    println!("{:<16} {:<26} {:>12}", "PARENT", "REASON", "PACKETS");
    for p in now["parents"].as_array().into_iter().flatten() {
        for (reason, n) in p["packets"].as_object().into_iter().flatten() {
            let b = before
                .and_then(|b| b["parents"].as_array()?.iter().find(|x| x["iface"] == p["iface"]))
                .map(|x| x["packets"].clone());
            let shown = match b {
                Some(bp) => format!(
                    "{:.0}/s",
                    n.as_u64().unwrap_or(0).saturating_sub(bp[reason].as_u64().unwrap_or(0)) as f64 / secs
                ),
                None => n.to_string(),
            };
            println!("{:<16} {:<26} {:>12}", p["iface"].as_str().unwrap_or(""), reason, shown);
        }
    }
}

pub fn run(engine: &mut Engine, names: &[String], format: Format, watch: bool, iterations: Option<u64>) -> Result<i32> {
    if !watch {
        let now = snapshot(engine, names)?;
        match format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&now)?),
            Format::Table => print_table(&now, None, 1.0),
        }
        return Ok(0);
    }
    let mut before = snapshot(engine, names)?;
    let mut n = 0;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = snapshot(engine, names)?;
        match format {
            Format::Json => println!("{}", serde_json::to_string(&json!({"now": now, "interval_secs": 1}))?),
            Format::Table => {
                println!("--- rates over the last second ---");
                print_table(&now, Some(&before), 1.0);
            }
        }
        before = now;
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return Ok(0);
        }
    }
}

//! `dataplane bpf ...`: load/unload the parent program, edit the admission map, read counters.

use std::path::Path;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use dataplane_common::{AdmitKey, AdmitValue};
use dataplane_user::{
    bpf::{AttachMode, Pins},
    control::{observe, programs},
    mac::Mac,
    netns,
};

use super::Format;

#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Interface (a parent/trunk) the program sits on.
    #[arg(long)]
    pub iface: String,
    #[command(flatten)]
    pub ns: Netns,
}

#[derive(Args, Debug, Clone)]
pub struct Netns {
    /// Network namespace of the interface: a name under /run/netns or a path such as /proc/PID/ns/net.
    #[arg(long)]
    pub netns: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum BpfCommand {
    /// Load the admission program and attach it to IFACE through a pinned BPF link
    /// (it keeps running after this command exits). When dataplane already has a program
    /// on IFACE, the new one replaces it in place, with no gap.
    Load {
        #[command(flatten)]
        target: Target,
        /// XDP mode: native (driver), skb (generic), or auto (native, else skb).
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        mode: AttachMode,
    },
    /// Detach the program from IFACE and remove its pin; the last one out removes the maps.
    Unload {
        #[command(flatten)]
        target: Target,
    },
    /// Swap this binary's programs into every pinned link, in place (upgrade without a
    /// gap); maps and their entries are kept.
    Reload {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// aya-log level compiled into the reloaded programs: off (default), error, warn,
        /// info, debug (drop events), trace. Read the events with `dataplane bpf log`.
        #[arg(long, default_value = "off", value_parser = ["off", "error", "warn", "info", "debug", "trace"])]
        log_level: String,
    },
    /// Print the programs' aya-log events (drop events need `bpf reload --log-level debug`).
    Log {
        /// Stop after this many seconds (default: run until interrupted).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Show every pinned program link of this instance.
    Status {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Edit or list the admission map (unicast MACs that may receive on a parent).
    #[command(subcommand)]
    Admit(AdmitCommand),
    /// Packets and bytes passed and dropped, per interface and reason.
    Counters {
        #[command(flatten)]
        ns: Netns,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdmitCommand {
    /// Admit unicast frames to MAC on IFACE (in VLAN VID, 0 = untagged).
    Add {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 0)]
        vlan: u16,
        /// Endpoint number stored with the entry (for accounting).
        #[arg(long, default_value_t = 0)]
        endpoint: u32,
        mac: String,
    },
    /// Stop admitting MAC on IFACE.
    Del {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 0)]
        vlan: u16,
        mac: String,
    },
    /// List admitted entries.
    Ls {
        #[command(flatten)]
        ns: Netns,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

fn enter(ns: &Netns) -> anyhow::Result<()> {
    if let Some(n) = &ns.netns {
        netns::enter(n)?;
    }
    Ok(())
}

fn key_for(target: &Target, vlan: u16, mac: &str) -> anyhow::Result<AdmitKey> {
    let mac: Mac = mac.parse()?;
    if !mac.is_unicast() {
        bail!("MAC {mac} is a group (broadcast/multicast) address: group frames always pass, only unicast addresses can be admitted");
    }
    if vlan > 4094 {
        bail!("VLAN id {vlan} is out of range: use 1..4094, or 0 for untagged");
    }
    let ifindex = netns::ifindex(&target.iface).with_context(|| {
        format!("interface {:?} not found in {}", target.iface, programs::netns_label(target.ns.netns.as_deref()))
    })?;
    Ok(AdmitKey { ifindex, vlan, mac: mac.0 })
}

pub fn run(bpffs: &Path, cmd: BpfCommand) -> anyhow::Result<i32> {
    let pins = Pins::new(bpffs);
    match cmd {
        BpfCommand::Load { target, mode } => load(&pins, &target, mode)?,
        BpfCommand::Unload { target } => {
            enter(&target.ns)?;
            programs::unload(&pins, target.ns.netns.as_deref(), &target.iface)?;
            println!("detached from {}", target.iface);
        }
        BpfCommand::Log { seconds } => return log_events(&pins, seconds),
        BpfCommand::Reload { format, log_level } => reload(&pins, format, &log_level)?,
        BpfCommand::Status { format } => status(&pins, format)?,
        BpfCommand::Admit(AdmitCommand::Add { target, vlan, endpoint, mac }) => {
            enter(&target.ns)?;
            let key = key_for(&target, vlan, &mac)?;
            programs::admit(&pins, key, AdmitValue { endpoint, flags: 0 })?;
            println!("admitted {} on {} vlan {}", Mac(key.mac), target.iface, vlan);
        }
        BpfCommand::Admit(AdmitCommand::Del { target, vlan, mac }) => {
            enter(&target.ns)?;
            let key = key_for(&target, vlan, &mac)?;
            if !programs::unadmit(&pins, &key)? {
                bail!("{} is not admitted on {} vlan {}", Mac(key.mac), target.iface, vlan);
            }
            println!("removed {} on {} vlan {}", Mac(key.mac), target.iface, vlan);
        }
        BpfCommand::Admit(AdmitCommand::Ls { ns, format }) => {
            enter(&ns)?;
            admit_ls(&pins, format)?;
        }
        BpfCommand::Counters { ns, format } => {
            enter(&ns)?;
            counters(&pins, format)?;
        }
    }
    Ok(0)
}

fn load(pins: &Pins, target: &Target, mode: AttachMode) -> anyhow::Result<()> {
    enter(&target.ns)?;
    let a = programs::load(pins, target.ns.netns.as_deref(), &target.iface, mode)?;
    if a.replaced {
        println!(
            "replaced the program on {} in place: link {} now runs program {} (pinned at {})",
            a.iface,
            a.link_id,
            a.program_id,
            a.pin.display()
        );
    } else {
        println!(
            "attached {} to {} (ifindex {}, {} XDP): link {}, program {}, pinned at {}",
            dataplane_common::maps::XDP_PARENT_PROG,
            a.iface,
            a.ifindex,
            a.mode,
            a.link_id,
            a.program_id,
            a.pin.display()
        );
    }
    Ok(())
}

fn reload(pins: &Pins, format: Format, log_level: &str) -> anyhow::Result<()> {
    programs::set_log_level(programs::parse_log_level(log_level).expect("clap checked the value"));
    let report = programs::reload(pins)?;
    let migrated = report
        .migrated
        .iter()
        .map(|m| format!("migrated map {} ({} -> {}): {} entries carried over", m.map, m.from, m.to, m.entries));
    match format {
        Format::Json => {
            migrated.for_each(|m| eprintln!("{m}"));
            println!("{}", serde_json::to_string_pretty(&report.links)?)
        }
        Format::Table => {
            if report.links.is_empty() {
                println!("nothing attached under {}", pins.root().display());
            }
            migrated.for_each(|m| println!("{m}"));
            for x in report.links {
                println!(
                    "{}: link {} now runs {} (program {} -> {})",
                    x.pin.display(),
                    x.link_id,
                    x.program,
                    x.old_program_id,
                    x.new_program_id
                );
            }
        }
    }
    Ok(())
}

fn status(pins: &Pins, format: Format) -> anyhow::Result<()> {
    let st = programs::status(pins);
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    println!("{:<20} {:<24} {:<12} {:>8} {:>8}  PIN", "NETNS", "IFACE", "MECHANISM", "LINK", "PROG");
    for s in st {
        let id = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        println!(
            "{:<20} {:<24} {:<12} {:>8} {:>8}  {}{}",
            s.netns,
            s.iface,
            s.mechanism,
            id(s.link_id),
            id(s.program_id),
            s.pin.display(),
            s.error.map(|e| format!("  (error: {e})")).unwrap_or_default()
        );
    }
    Ok(())
}

/// A row of `bpf admit ls`.
#[derive(serde::Serialize)]
struct AdmitRow {
    iface: String,
    ifindex: u32,
    vlan: u16,
    mac: String,
    endpoint: u32,
}

fn admit_ls(pins: &Pins, format: Format) -> anyhow::Result<()> {
    let rows: Vec<AdmitRow> = programs::admitted(pins)?
        .iter()
        .map(|(k, v)| AdmitRow {
            iface: netns::ifname(k.ifindex).unwrap_or_else(|| format!("#{}", k.ifindex)),
            ifindex: k.ifindex,
            vlan: k.vlan,
            mac: Mac(k.mac).to_string(),
            endpoint: v.endpoint,
        })
        .collect();
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<16} {:>5} {:<17} {:>8}", "IFACE", "VLAN", "MAC", "ENDPOINT");
    for r in rows {
        println!("{:<16} {:>5} {:<17} {:>8}", r.iface, r.vlan, r.mac, r.endpoint);
    }
    Ok(())
}

/// A row of `bpf counters`.
#[derive(serde::Serialize)]
struct CounterRow {
    iface: String,
    ifindex: u32,
    reason: &'static str,
    verdict: &'static str,
    packets: u64,
    bytes: u64,
}

fn counters(pins: &Pins, format: Format) -> anyhow::Result<()> {
    let rows: Vec<CounterRow> = observe::parent_counters(pins)?
        .into_iter()
        .map(|c| CounterRow {
            iface: c.iface,
            ifindex: c.ifindex,
            reason: c.reason.name(),
            verdict: if c.reason.is_drop() { "drop" } else { "pass" },
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<16} {:<26} {:>12} {:>14}", "IFACE", "REASON", "PACKETS", "BYTES");
    for r in rows {
        println!("{:<16} {:<26} {:>12} {:>14}", r.iface, r.reason, r.packets, r.bytes);
    }
    Ok(())
}

/// Writes aya-log records to stdout.
struct PrintLogger;

impl log::Log for PrintLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        println!("{:<5} {}", record.level(), record.args());
    }

    fn flush(&self) {}
}

fn log_events(pins: &Pins, seconds: Option<u64>) -> anyhow::Result<i32> {
    let links = programs::attachments(pins);
    let mut seen = std::collections::BTreeSet::new();
    let mut loggers = Vec::new();
    for l in &links {
        let Some(id) = l.program_id else { continue };
        if !seen.insert(id) {
            continue;
        }
        match aya_log::EbpfLogger::init_from_id_with_logger(id, PrintLogger) {
            Ok(lg) => loggers.push(lg),
            Err(e) => eprintln!("dataplane: warning: no log buffer for program {id} ({}): {e}", l.iface),
        }
    }
    if loggers.is_empty() {
        bail!("no attached program to read events from under {}", pins.root().display());
    }
    eprintln!(
        "reading events of {} programs{}",
        loggers.len(),
        seconds.map(|s| format!(" for {s} s")).unwrap_or_default()
    );
    let deadline = seconds.map(|s| std::time::Instant::now() + std::time::Duration::from_secs(s));
    loop {
        for lg in &mut loggers {
            lg.flush();
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

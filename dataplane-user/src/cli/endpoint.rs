//! `dataplane run | exec | ps | stop | rm` and the detached-command supervisor.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;
use dataplane_user::{
    control::{Engine, RunRequest},
    store::{now_secs, rfc3339_secs},
    store::{Attachment, Endpoint, Owner},
};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Create the endpoint and return; a command keeps running in the background.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep the command's standard input open (detached commands get a pipe that stays open).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Accepted for Docker compatibility; dataplane allocates no terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Remove the endpoint when its command exits.
    #[arg(long)]
    pub rm: bool,
    /// Endpoint name (also the namespace's: /run/netns/NAME).
    #[arg(long)]
    pub name: String,
    /// host, none, or a network created with `dataplane network create`.
    #[arg(long = "network", alias = "net", default_value = "none", add = clap_complete::ArgValueCandidates::new(super::complete::networks))]
    pub network: String,
    /// Use this existing network namespace (a name under /run/netns or a path such as /proc/PID/ns/net) instead of making one.
    #[arg(long)]
    pub netns: Option<String>,
    /// IPv4 address (any free, unreserved address of the network's subnet).
    #[arg(long)]
    pub ip: Option<String>,
    /// IPv6 address (the network needs --ipv6).
    #[arg(long)]
    pub ip6: Option<String>,
    /// MAC address (unicast, unique on the parent); default 02:42 + the IPv4 address.
    #[arg(long = "mac-address")]
    pub mac_address: Option<String>,
    /// Accepted for Docker compatibility; endpoints are reached at their own addresses.
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// [IMAGE] [CMD [ARG...]], or `-- CMD [ARG...]`. dataplane has no images: an IMAGE is
    /// ignored and CMD runs on the host's filesystem inside the endpoint's network.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `--` in the raw arguments means everything after it is the command (no image).
fn split_image(args: &[String], raw_has_double_dash: bool) -> (Option<String>, Vec<String>) {
    if raw_has_double_dash || args.is_empty() {
        return (None, args.to_vec());
    }
    (Some(args[0].clone()), args[1..].to_vec())
}

fn raw_has_double_dash() -> bool {
    std::env::args().any(|a| a == "--")
}

/// A command that runs inside `netns` (empty: the host's namespace).
fn command_in(netns: &str, argv: &[String]) -> Result<Command> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    if !netns.is_empty() {
        let f = File::open(netns).with_context(|| format!("opening network namespace {netns}"))?;
        let fd = f.as_raw_fd();
        // SAFETY: netns::set is async-signal-safe; `f` outlives the spawn (moved into the
        // closure).
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &f;
                dataplane_user::netns::set(fd)
            });
        }
    }
    Ok(cmd)
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Whether `cmd` names an executable: a path to one, or a name found in PATH.
fn on_path(cmd: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let exec =
        |p: &std::path::Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if cmd.contains('/') {
        return exec(std::path::Path::new(cmd));
    }
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| exec(&d.join(cmd))))
}

fn spawn_error(argv0: &str, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!("command {argv0:?} not found in PATH")
    } else {
        anyhow::anyhow!("starting {argv0:?}: {e}")
    }
}

pub fn run(engine: &mut Engine, a: RunArgs) -> Result<i32> {
    super::repair(engine);
    let (image, command) = split_image(&a.args, raw_has_double_dash());
    // A command that cannot start is refused before anything is made; the usual cause is
    // Docker's reading of `run ... sleep 600`: `sleep` is the image and `600` the command.
    if let Some(c) = command.first().filter(|c| !on_path(c)) {
        let hint = match &image {
            Some(img) if on_path(img) => format!(
                "; {img:?} was taken as the image, as Docker does: to run it, put the command after `--` (dataplane run ... -- {img} {})",
                command.join(" ")
            ),
            _ => String::new(),
        };
        eprintln!("dataplane: error: command {c:?} not found in PATH{hint}");
        return Ok(127);
    }
    if let Some(img) = &image {
        eprintln!("dataplane: note: images are not used; {img:?} ignored, the command runs on the host's filesystem");
    }
    if !a.publish.is_empty() {
        if a.network == "host" {
            eprintln!("WARNING: Published ports are discarded when using host network mode");
        } else {
            eprintln!("WARNING: Published ports are discarded: endpoints are reached at their own addresses");
        }
    }
    let spec = engine.run(RunRequest {
        name: a.name.clone(),
        network: a.network.clone(),
        netns: a.netns.clone(),
        ip: a.ip.clone(),
        ip6: a.ip6.clone(),
        mac: a.mac_address.clone(),
        auto_remove: a.rm,
        command: command.clone(),
        host_shim: false,
    })?;
    let ep = spec.endpoint;
    if command.is_empty() {
        println!("{}", ep.id);
        return Ok(0);
    }
    if a.detach {
        start_detached(engine, &a, &command)?;
        println!("{}", ep.id);
        return Ok(0);
    }
    let status = match command_in(&ep.netns, &command)?.status() {
        Ok(s) => exit_code(s),
        Err(e) => {
            // The command never ran: the endpoint made for it goes too (no trace).
            let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            let _ = engine.rm(&a.name, true);
            eprintln!("dataplane: error: {}", spawn_error(&command[0], e));
            return Ok(code);
        }
    };
    if a.rm {
        for w in engine.rm(&a.name, true)? {
            eprintln!("dataplane: warning: {w}");
        }
    }
    Ok(status)
}

/// `run -d CMD`: a supervisor (this binary, in its own session) runs the command, keeps
/// its stdin open for -i, and removes the endpoint afterwards for --rm. Returns once the
/// command runs, so `exec`/`ps` right after see it.
fn start_detached(engine: &mut Engine, a: &RunArgs, command: &[String]) -> Result<()> {
    let exe = std::env::current_exe().context("locating the dataplane binary")?;
    let mut sup = Command::new(exe);
    sup.arg("--state-dir")
        .arg(&engine.state_dir)
        .arg("--bpffs")
        .arg(engine.pins.root())
        .arg("__supervise")
        .arg(&a.name);
    if a.interactive {
        sup.arg("--interactive");
    }
    sup.arg("--").args(command).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        sup.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    // What an earlier endpoint of this name left is not this command's.
    remove_logs(&engine.state_dir, &a.name);
    if let Err(e) = sup.spawn() {
        let _ = engine.rm(&a.name, true);
        bail!("starting the supervisor for {}: {e}", a.name);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let exited = exit_path(&engine.state_dir, &a.name);
    loop {
        match engine.endpoint(&a.name) {
            Ok(e) if e.pid.is_some() => return Ok(()),
            // It ran and ended already (its exit is recorded before its pid is cleared).
            Ok(_) if exited.exists() => return Ok(()),
            Err(_) => {
                let log = std::fs::read_to_string(log_path(&engine.state_dir, &a.name)).unwrap_or_default();
                let last = log.lines().last().unwrap_or("").trim_start_matches("dataplane: error: ").to_string();
                bail!("the command of {} did not start: {last}", a.name)
            }
            _ if Instant::now() > deadline => bail!("the command of {} did not start within 10 s", a.name),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

pub fn log_path(state_dir: &Path, name: &str) -> std::path::PathBuf {
    state_dir.join("logs").join(format!("{name}.log"))
}

/// The detached-command supervisor (`dataplane __supervise NAME -- CMD`).
pub fn supervise(engine: &mut Engine, name: &str, interactive: bool, command: &[String]) -> Result<i32> {
    // First of all, so `rm -f` can end this process group whatever happens next.
    engine.set_supervisor(name)?;
    let ep = engine.endpoint(name)?;
    let state_dir = engine.state_dir.clone();
    let state_dir = state_dir.as_path();
    std::fs::create_dir_all(state_dir.join("logs"))?;
    let log = File::create(log_path(state_dir, name))?;
    let mut cmd = command_in(&ep.netns, command)?;
    cmd.stdout(log.try_clone()?).stderr(log);
    cmd.stdin(if interactive { Stdio::piped() } else { Stdio::null() });
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let err = spawn_error(&command[0], e);
            let _ = std::fs::write(log_path(state_dir, name), format!("dataplane: error: {err}\n"));
            let _ = engine.rm(name, true);
            return Err(err);
        }
    };
    // Holding the pipe's write end keeps an interactive command's stdin open.
    let _stdin = child.stdin.take();
    dataplane_user::control::fault("supervise:spawned");
    engine.set_pid(name, Some(child.id()))?;
    let status = child.wait()?;
    let code = exit_code(status);
    if ep.auto_remove {
        if engine.rm(name, true).is_ok() {
            remove_logs(state_dir, name);
        }
    } else {
        let _ = std::fs::write(exit_path(state_dir, name), format!("{code} {}\n", now_secs()));
        let _ = engine.set_pid(name, None);
    }
    Ok(code)
}

pub fn exec(engine: &mut Engine, name: &str, args: &[String]) -> Result<i32> {
    if args.is_empty() {
        bail!("exec needs a command: dataplane exec {name} -- CMD [ARG...]");
    }
    let ep = engine.endpoint(name)?;
    match command_in(&ep.netns, args)?.status() {
        Ok(s) => Ok(exit_code(s)),
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            eprintln!("dataplane: error: {}", spawn_error(&args[0], e));
            Ok(code)
        }
    }
}

pub fn stop(engine: &mut Engine, names: &[String], timeout: u64) -> Result<i32> {
    let mut failed = false;
    for name in names {
        let ep = match engine.endpoint(name) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("dataplane: error: {e}");
                failed = true;
                continue;
            }
        };
        if let Some(pid) = ep.pid {
            dataplane_user::sys::kill(pid as i32, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(timeout);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) {
                dataplane_user::sys::kill(pid as i32, libc::SIGKILL);
            }
            // The supervisor clears the pid, or removes the endpoint for --rm.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match engine.endpoint(name) {
                    Ok(e) if e.pid.is_some() => std::thread::sleep(Duration::from_millis(20)),
                    _ => break,
                }
            }
        }
        println!("{name}");
    }
    Ok(i32::from(failed))
}

/// Running, not a zombie (a zombie still answers kill(0)).
fn alive(pid: u32) -> bool {
    dataplane_user::store::ProcRef::start_of(pid).is_some()
}

/// `ps [-a] [-q] [--format F]`: one row per endpoint. Without `-a`, endpoints whose
/// command has exited are left out (as Docker leaves out stopped containers).
pub fn ps(engine: &mut Engine, all: bool, quiet: bool, format: &str) -> Result<i32> {
    let out = super::format::Output::parse(format)?;
    let eps = engine.endpoints()?;
    conflict_warnings(engine, &eps);
    let state_dir = engine.state_dir.clone();
    let rows: Vec<PsRow> =
        eps.iter().map(|(e, atts)| PsRow::of(&state_dir, e, atts)).filter(|r| all || r.state != "exited").collect();
    if quiet {
        for r in &rows {
            println!("{}", r.id);
        }
        return Ok(0);
    }
    if out != super::format::Output::Table {
        let values: Vec<serde_json::Value> = rows.iter().map(serde_json::to_value).collect::<Result<_, _>>()?;
        out.print(&values);
        return Ok(0);
    }
    let mut table = vec![["ENDPOINT ID", "NAME", "NETWORK", "IPV4", "IPV6", "MAC", "STATUS"].map(str::to_string)];
    for r in rows {
        let first = r.networks.first();
        let network = if r.networks.is_empty() {
            r.network_mode.clone()
        } else {
            r.networks.iter().map(|n| n.network.as_str()).collect::<Vec<_>>().join(",")
        };
        table.push([
            r.id.clone(),
            r.name.clone(),
            network,
            first.and_then(|n| n.ipv4_address.clone()).unwrap_or_else(|| "-".into()),
            first.and_then(|n| n.ipv6_address.clone()).unwrap_or_else(|| "-".into()),
            first.map_or("-".to_string(), |n| n.mac_address.to_string()),
            r.status.clone(),
        ]);
    }
    print_table(&table);
    Ok(0)
}

/// Columns as wide as their widest cell (the last one as it comes).
pub fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut width = [0usize; N];
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}   ", w = width[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// `inspect ENDPOINT...`: each endpoint as `ps --format json` shows it, in a JSON array
/// (as `docker inspect`), or through a `--format` template, one line each.
pub fn inspect(engine: &mut Engine, names: &[String], format: Option<&str>) -> Result<i32> {
    let state_dir = engine.state_dir.clone();
    let all = engine.endpoints()?;
    let mut rows = Vec::new();
    let mut failed = false;
    for n in names {
        match all.iter().find(|(e, _)| &e.name == n || e.id.starts_with(n.as_str())) {
            Some((e, atts)) => rows.push(serde_json::to_value(PsRow::of(&state_dir, e, atts))?),
            None => {
                eprintln!("dataplane: error: endpoint {n} not found (list them with dataplane ps -a)");
                failed = true;
            }
        }
    }
    match format.map(super::format::Output::parse).transpose()? {
        None | Some(super::format::Output::Table) => println!("{}", serde_json::to_string_pretty(&rows)?),
        Some(out) => out.print(&rows),
    }
    Ok(i32::from(failed))
}

/// `logs [-f] NAME`: what a `run -d` command wrote (its stdout and stderr).
pub fn logs(engine: &mut Engine, name: &str, follow: bool) -> Result<i32> {
    use std::io::{Read, Write};
    let ep = engine.endpoint(name)?;
    let path = log_path(&engine.state_dir, &ep.name);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if ep.command.is_empty() {
                bail!("endpoint {name} runs no command, so it has no logs");
            }
            bail!("endpoint {name} has no logs: only commands run with run -d write them");
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut out = std::io::stdout().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        f.read_to_end(&mut buf)?;
        out.write_all(&buf)?;
        out.flush()?;
        if !follow {
            return Ok(0);
        }
        // Until the command has ended and everything it wrote is out.
        let running = engine
            .endpoint(name)
            .ok()
            .is_some_and(|e| e.pid.is_some_and(alive) || e.supervisor.is_some_and(|s| s.alive()));
        if !running && buf.is_empty() {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The files a `run -d` command leaves (its output, its exit): they go with the endpoint.
pub fn remove_logs(state_dir: &Path, name: &str) {
    let _ = std::fs::remove_file(log_path(state_dir, name));
    let _ = std::fs::remove_file(exit_path(state_dir, name));
}

fn exit_path(state_dir: &Path, name: &str) -> std::path::PathBuf {
    state_dir.join("logs").join(format!("{name}.exit"))
}

/// A duration as Docker words it ("5 seconds", "about a minute", "3 hours").
fn human(secs: i64) -> String {
    match secs {
        s if s < 1 => "less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "about a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "about an hour".into(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn ages_read_as_docker_words_them() {
        assert_eq!(super::human(90), "about a minute");
        assert_eq!(super::human(3 * 3600 + 5), "3 hours");
    }
}

/// A row of `ps` (its JSON keys are Docker's where Docker has one: `ID`, `Names`,
/// `Command`, `State`, `Status`, `CreatedAt`, `RunningFor`).
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct PsRow {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    names: String,
    network_mode: String,
    netns: String,
    command: String,
    /// running, exited, created, starting, docker or cni.
    state: String,
    status: String,
    /// The command's exit code, once it has exited.
    exit_code: Option<i32>,
    created_at: String,
    running_for: String,
    owner: Owner,
    networks: Vec<PsNetwork>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct PsNetwork {
    network: String,
    interface: String,
    mac_address: dataplane_user::mac::Mac,
    #[serde(rename = "IPv4Address")]
    ipv4_address: Option<String>,
    #[serde(rename = "IPv6Address")]
    ipv6_address: Option<String>,
}

impl PsRow {
    fn of(state_dir: &Path, e: &Endpoint, atts: &[Attachment]) -> PsRow {
        let supervisor = e.supervisor.filter(|s| s.alive());
        let age = rfc3339_secs(&e.created).map(|c| human(now_secs() - c)).unwrap_or_default();
        // What the supervisor wrote when the command ended: "CODE SECONDS-SINCE-EPOCH".
        let exited = std::fs::read_to_string(exit_path(state_dir, &e.name)).ok().and_then(|t| {
            let mut w = t.split_whitespace();
            Some((w.next()?.parse::<i32>().ok()?, w.next()?.parse::<i64>().ok()?))
        });
        let (state, status) = match (&e.owner, e.pid) {
            (_, None) if supervisor.is_some() => {
                ("starting", format!("starting (supervisor pid {})", supervisor.map_or(0, |s| s.pid)))
            }
            (Owner::Docker { sandbox: Some(s), .. }, _) => ("docker", format!("docker, in {s}")),
            (Owner::Docker { sandbox: None, .. }, _) => ("docker", "docker, not joined".to_string()),
            (Owner::Cni { container_id, ifname }, _) => {
                ("cni", format!("cni, container {} {ifname}", &container_id[..12.min(container_id.len())]))
            }
            (_, Some(p)) if alive(p) => ("running", format!("running (pid {p}), up {age}")),
            _ if e.command.is_empty() => ("created", format!("created {age} ago")),
            _ => match exited {
                Some((code, at)) => ("exited", format!("exited ({code}) {} ago", human(now_secs() - at))),
                None => ("exited", "exited".to_string()),
            },
        };
        let mut atts: Vec<&Attachment> = atts.iter().collect();
        // eth0 first, then eth1...: the table shows the first interface's addresses.
        atts.sort_by_key(|a| (a.ifname.len(), a.ifname.clone()));
        PsRow {
            id: e.id[..12.min(e.id.len())].to_string(),
            name: e.name.clone(),
            names: e.name.clone(),
            network_mode: e.network_mode.to_string(),
            netns: e.netns.clone(),
            command: e.command.join(" "),
            state: state.to_string(),
            status,
            exit_code: exited.map(|(c, _)| c),
            created_at: e.created.clone(),
            running_for: if age.is_empty() { age } else { format!("{age} ago") },
            owner: e.owner.clone(),
            networks: atts
                .into_iter()
                .map(|a| PsNetwork {
                    network: a.network.clone(),
                    interface: a.ifname.clone(),
                    mac_address: a.mac,
                    ipv4_address: a.ipv4.map(|i| i.to_string()),
                    ipv6_address: a.ipv6.map(|i| i.to_string()),
                })
                .collect(),
        }
    }
}

/// Conflicts the parents' XDP programs saw: a warning per endpoint (on stderr, so the
/// table and the JSON stay as they are).
fn conflict_warnings(engine: &Engine, eps: &[(Endpoint, Vec<Attachment>)]) {
    let conflicts = engine.conflicts();
    for (e, atts) in eps {
        let Some(k) = conflicts.get(&dataplane_user::control::endpoint_number(&e.id)) else { continue };
        let a = atts.first();
        if k.mac_frames > 0 {
            eprintln!(
                "WARNING: endpoint {}: its MAC {} is also used by another host on the parent ({} frames seen)",
                e.name,
                a.map_or("?".to_string(), |a| a.mac.to_string()),
                k.mac_frames
            );
        }
        if k.ip_frames > 0 {
            // The record does not say which family was claimed: name both.
            let addrs: Vec<String> =
                a.map(|a| [a.ipv4, a.ipv6].into_iter().flatten().map(|i| i.to_string()).collect()).unwrap_or_default();
            eprintln!(
                "WARNING: endpoint {}: its address {} is claimed by {} on the parent ({} ARP/neighbour advertisement frames seen)",
                e.name,
                if addrs.is_empty() { "?".to_string() } else { addrs.join(" or ") },
                dataplane_user::mac::Mac(k.last_mac),
                k.ip_frames
            );
        }
    }
}

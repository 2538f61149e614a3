//! Command line: one file per command group.

mod bpf;
mod cluster;
mod complete;
mod endpoint;
mod format;
mod network;
mod stats;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use dataplane_user::control::Engine;

#[derive(Parser, Debug)]
#[command(
    name = "dataplane",
    version,
    about = "Docker-style host networks (macvlan, 802.1Q trunks, host, none) enforced in the kernel by XDP/TC programs"
)]
pub struct Cli {
    /// Directory of the state database (one per instance).
    #[arg(long, global = true, env = "DATAPLANE_STATE_DIR", default_value = "/var/lib/dataplane")]
    pub state_dir: PathBuf,

    /// bpffs directory for this instance's pinned maps and links (one per host network namespace).
    #[arg(long, global = true, env = "DATAPLANE_BPFFS", default_value = dataplane_user::DEFAULT_BPFFS_DIR)]
    pub bpffs: PathBuf,

    #[command(flatten)]
    pub cluster: cluster::ClusterArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage networks (create, ls, inspect, rm, connect, disconnect).
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Create an endpoint (a network namespace on a network) and optionally run a command in it.
    Run(endpoint::RunArgs),
    /// Run a command inside an endpoint's network namespace.
    Exec {
        /// Keep standard input open (accepted for Docker compatibility: it always is).
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Accepted for Docker compatibility: the command shares this terminal.
        #[arg(short = 't', long)]
        tty: bool,
        /// The endpoint to run in.
        #[arg(add = clap_complete::ArgValueCandidates::new(complete::endpoints))]
        name: String,
        /// The command and its arguments, run in the endpoint's network namespace.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// List endpoints (those whose command has exited only with -a).
    Ps {
        /// Also list endpoints whose command has exited.
        #[arg(short = 'a', long)]
        all: bool,
        /// Print only the endpoint IDs.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// table, json (one object per line, as docker prints), or a template such as
        /// '{{.Names}}\t{{.Status}}' or '{{json .}}' over the JSON keys.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show endpoints in detail (a JSON array, as docker inspect), or through --format.
    Inspect {
        /// A template such as '{{.Status}}' or '{{json .Networks}}' over the JSON keys.
        #[arg(short = 'f', long)]
        format: Option<String>,
        #[arg(required = true, add = clap_complete::ArgValueCandidates::new(complete::endpoints))]
        names: Vec<String>,
    },
    /// Print what a `run -d` command wrote to its standard output and error.
    Logs {
        /// Keep printing what it writes until it ends.
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(add = clap_complete::ArgValueCandidates::new(complete::endpoints))]
        name: String,
    },
    /// Stop endpoints' commands (SIGTERM, then SIGKILL); --rm endpoints are then removed.
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short = 't', long, default_value_t = 10)]
        time: u64,
        #[arg(required = true, add = clap_complete::ArgValueCandidates::new(complete::endpoints))]
        names: Vec<String>,
    },
    /// Remove endpoints (namespace, links, addresses, map entries).
    Rm {
        /// Also kill a running command.
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true, add = clap_complete::ArgValueCandidates::new(complete::endpoints))]
        names: Vec<String>,
    },
    /// Per-endpoint rx/tx/spoofed counters and per-parent counters by reason.
    Stats {
        /// Only these endpoints.
        #[arg(add = clap_complete::ArgValueCandidates::new(complete::endpoints))]
        names: Vec<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Refresh every second, showing rates.
        #[arg(long)]
        watch: bool,
        /// With --watch: stop after this many refreshes.
        #[arg(long, hide = true)]
        iterations: Option<u64>,
    },
    /// Make the kernel match the store: report drift and repair it.
    Reconcile {
        /// Only report; exit 2 if anything is out of line (0 if nothing is), so scripts
        /// and the DaemonSet can alert on drift.
        #[arg(long)]
        dry_run: bool,
        /// Make this store the owner of the bpffs dir even though another store (or a
        /// database since replaced) made what is in it; the kernel is then made to match
        /// this store, so what it does not know is removed.
        #[arg(long)]
        take_over: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Cluster mode's shared plan: status, forget a host gone for good, the host's agent.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Low-level access to the kernel programs and maps (load, unload, admit, counters).
    #[command(subcommand)]
    Bpf(bpf::BpfCommand),
    /// Serve Prometheus/OpenMetrics text at http://ADDR/metrics: counters by parent and
    /// reason, per-endpoint traffic and spoofing, networks, endpoints, attachments.
    Metrics {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9479")]
        listen: String,
    },
    /// Serve a container runtime's network-plugin protocol (long-running).
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Print a shell completion script (e.g. `dataplane completions bash > /etc/bash_completion.d/dataplane`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (dataplane.1 and one per subcommand) into DIR.
    #[command(name = "__man", hide = true)]
    Man { dir: PathBuf },
    #[command(name = "__supervise", hide = true)]
    Supervise {
        name: String,
        #[arg(long)]
        interactive: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Docker's remote network driver: `docker network create -d dataplane ...`. Run it in
    /// dockerd's network namespace; the driver name is the socket's base name.
    Docker {
        /// Unix socket Docker discovers the plugin by.
        #[arg(long, default_value = dataplane_user::frontend::docker::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Log every call and its answer on stderr (failed calls are always logged).
        #[arg(short, long)]
        verbose: bool,
        /// Also serve metrics at http://ADDR/metrics (as `dataplane metrics`).
        #[arg(long)]
        metrics: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// Before a mutating command: finish what crashed commands left, repair drift.
pub fn repair(engine: &mut Engine) {
    match engine.reconcile(false) {
        Ok(r) => {
            for d in r.drift {
                eprintln!("dataplane: reconciled: {d}");
            }
            for e in r.errors {
                eprintln!("dataplane: warning: {e}");
            }
        }
        Err(e) => eprintln!("dataplane: warning: reconcile failed: {e}"),
    }
    dataplane_user::timing::mark("reconcile");
}

/// Effective capabilities this process needs: CAP_NET_ADMIN (12), CAP_SYS_ADMIN (21,
/// namespaces and bpffs mounts), CAP_BPF (39).
fn missing_capabilities() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    [(12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN"), (39, "CAP_BPF")]
        .into_iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, name)| name)
        .collect()
}

/// Man pages for the command and every subcommand, recursively.
fn write_man(cmd: &clap::Command, prefix: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    let name = if prefix.is_empty() { cmd.get_name().to_string() } else { format!("{prefix}-{}", cmd.get_name()) };
    // The page is named dataplane-network-create(1); its SYNOPSIS reads as typed.
    let typed = name.replace('-', " ").replace("dataplane cni", "dataplane-cni");
    let page = cmd.clone().name(&*Box::leak(name.clone().into_boxed_str())).bin_name(typed);
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    std::fs::write(dir.join(format!("{name}.1")), out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man(sub, &name, dir)?;
    }
    Ok(())
}

/// Shell completion through the environment (`source <(COMPLETE=bash dataplane)`): exits
/// after answering when COMPLETE is set, returns otherwise.
pub fn complete_env() {
    use clap::CommandFactory;
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
}

pub fn run() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    // Output commands die quietly when their reader goes away (`dataplane ps | head -1`),
    // like other command-line tools; the long-running ones keep EPIPE as an error.
    let sigpipe = if matches!(cli.command, Command::Plugin(_) | Command::Supervise { .. }) {
        libc::SIG_IGN
    } else {
        libc::SIG_DFL
    };
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, sigpipe) };
    // Neither needs privileges nor state.
    match &cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut Cli::command(), "dataplane", &mut std::io::stdout());
            return Ok(0);
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(dir)?;
            write_man(&Cli::command(), "", dir)?;
            return Ok(0);
        }
        _ => {}
    }
    let missing = missing_capabilities();
    if !missing.is_empty() {
        anyhow::bail!(
            "dataplane manages network namespaces, links and BPF programs and needs root (missing {}): run it as root, e.g. with sudo",
            missing.join(", ")
        );
    }
    let Cli { state_dir, bpffs, cluster, command } = cli;
    let cluster = cluster.config()?;
    let engine = || -> anyhow::Result<Engine> {
        let mut e = Engine::open(&state_dir, &bpffs)?;
        if let Some(c) = cluster.clone() {
            e.join_cluster(c)?;
        }
        Ok(e)
    };
    match command {
        Command::Bpf(cmd) => bpf::run(&bpffs, cmd),
        Command::Cluster(cmd) => cluster::run(&mut engine()?, cmd),
        Command::Network(cmd) => network::run(&mut engine()?, cmd),
        Command::Run(args) => endpoint::run(&mut engine()?, args).map_err(|e| e.context(ExitCode(125))),
        Command::Exec { name, command, .. } => endpoint::exec(&mut engine()?, &name, &command),
        Command::Ps { all, quiet, format } => endpoint::ps(&mut engine()?, all, quiet, &format),
        Command::Inspect { format, names } => endpoint::inspect(&mut engine()?, &names, format.as_deref()),
        Command::Logs { follow, name } => endpoint::logs(&mut engine()?, &name, follow),
        Command::Stop { time, names } => endpoint::stop(&mut engine()?, &names, time),
        Command::Rm { force, names } => {
            let mut e = engine()?;
            repair(&mut e);
            let state_dir = e.state_dir.clone();
            Ok(for_each_name(&names, |n| {
                let r = e.rm(n, force);
                if r.is_ok() {
                    endpoint::remove_logs(&state_dir, n);
                }
                r
            }))
        }
        Command::Stats { names, format, watch, iterations } => {
            stats::run(&mut engine()?, &names, format, watch, iterations)
        }
        Command::Reconcile { dry_run, format, take_over } => {
            reconcile(&state_dir, &bpffs, cluster, dry_run, format, take_over)
        }
        Command::Plugin(PluginCommand::Docker { socket, verbose, metrics }) => {
            dataplane_user::frontend::docker::serve(&socket, engine()?, verbose, metrics.as_deref())?;
            Ok(0)
        }
        Command::Metrics { listen } => {
            dataplane_user::frontend::metrics::serve(&listen, engine()?)?;
            Ok(0)
        }
        Command::Completions { .. } | Command::Man { .. } => unreachable!("handled before the privilege check"),
        Command::Supervise { name, interactive, command } => {
            endpoint::supervise(&mut engine()?, &name, interactive, &command)
        }
    }
}

/// `dataplane reconcile`: the thorough pass; exit 1 if a repair failed, and with
/// `--dry-run` 2 if drift was found.
fn reconcile(
    state_dir: &std::path::Path,
    bpffs: &std::path::Path,
    cluster: Option<dataplane_user::cluster::ClusterConfig>,
    dry_run: bool,
    format: Format,
    take_over: bool,
) -> anyhow::Result<i32> {
    let mut e = if take_over { Engine::open_unchecked(state_dir, bpffs)? } else { Engine::open(state_dir, bpffs)? };
    if let Some(c) = cluster {
        e.join_cluster(c)?;
    }
    if take_over && !dry_run {
        e.take_over_bpffs()?;
    }
    let r = e.reconcile_with(dry_run, true)?;
    let code = if !r.errors.is_empty() {
        1
    } else if dry_run && !r.drift.is_empty() {
        2
    } else {
        0
    };
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(code);
    }
    if r.drift.is_empty() {
        println!("no drift: the kernel matches the store");
    }
    for d in &r.drift {
        println!("{}{d}", if dry_run { "drift: " } else { "repaired: " });
    }
    for e in &r.errors {
        println!("failed: {e}");
    }
    Ok(code)
}

/// Run `f` for every name, like `docker rm a b c`: print each name done (and its
/// warnings), report each failure, go on; exit 1 if any failed.
pub fn for_each_name<E: std::fmt::Display>(names: &[String], mut f: impl FnMut(&str) -> Result<Vec<String>, E>) -> i32 {
    let mut failed = false;
    for name in names {
        match f(name) {
            Ok(warnings) => {
                for w in warnings {
                    eprintln!("dataplane: warning: {name}: {w}");
                }
                println!("{name}");
            }
            Err(e) => {
                eprintln!("dataplane: error: {e}");
                failed = true;
            }
        }
    }
    i32::from(failed)
}

/// Exit code carried by an error (Docker uses 125 for errors of `run` itself).
#[derive(Debug, Clone, Copy)]
pub struct ExitCode(pub i32);

impl std::fmt::Display for ExitCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

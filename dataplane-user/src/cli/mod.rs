//! Command line: one file per command group.

mod bpf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "dataplane", version, about = "Docker-style host networks (macvlan, 802.1Q trunks, host, none) enforced in the kernel by XDP/TC programs")]
pub struct Cli {
    /// bpffs directory for this instance's pinned maps and links (one per host network namespace).
    #[arg(long, global = true, env = "DATAPLANE_BPFFS", default_value = dataplane_user::DEFAULT_BPFFS_DIR)]
    pub bpffs: std::path::PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Low-level access to the kernel programs and maps (load, unload, admit, counters).
    #[command(subcommand)]
    Bpf(bpf::BpfCommand),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

pub fn run() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bpf(cmd) => bpf::run(&cli.bpffs, cmd),
    }
}

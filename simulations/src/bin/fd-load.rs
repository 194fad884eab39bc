//! `fd-load`: load on a real coordinator from many lightweight nodes.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fd_sim::load::{self, LoadConfig};

/// Start the real `fd-coordinator` (its own process) and N lightweight nodes (this process)
/// over loopback QUIC with valid certificates, and report what the coordinator held up to:
/// admission time, round latency, contributions accepted, the coordinator's CPU time and memory.
///
/// A lightweight node speaks the protocol as fd-client does (uniform soft labels, no training).
/// `--deaf` adds a node that floods frames and never reads a reply; `--slow-secs` one that
/// answers each round only after that long, reading nothing meanwhile. `--hogs` and `--foreign`
/// measure the coordinator's memory against connections that stall before Hello and against
/// handshakes from another CA.
#[derive(Debug, Parser)]
#[command(name = "fd-load", version)]
struct Args {
    /// Nodes the coordinator waits for (the deaf and slow nodes among them).
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Rounds.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Public records.
    #[arg(long, default_value_t = 100)]
    public_records: u32,
    /// Classes.
    #[arg(long, default_value_t = 10)]
    classes: u16,
    /// Public records asked per round (0: all of them).
    #[arg(long, default_value_t = 0)]
    queries_per_round: u32,
    /// The coordinator's round deadline, in seconds.
    #[arg(long, default_value_t = 8)]
    round_timeout_secs: u64,
    /// Make the last node deaf: it sends 100,000 frames and never reads. The honest nodes hold
    /// their answer to the last round until its connection has ended (at most half the round
    /// deadline), so the run shows how the coordinator ends it.
    #[arg(long)]
    deaf: bool,
    /// Make one node answer each round after this many seconds, reading nothing meanwhile.
    #[arg(long)]
    slow_secs: Option<u64>,
    /// Connections that pass TLS and announce a 32 MiB frame instead of Hello.
    #[arg(long, default_value_t = 0)]
    hogs: usize,
    /// Handshakes with certificates from a foreign CA.
    #[arg(long, default_value_t = 0)]
    foreign: usize,
    /// Secure aggregation (1 colluder, 2 dropouts): every node runs the secure round's four
    /// exchanges (signed keys, shares, a masked vector of zeros, unmasking).
    #[arg(long)]
    secure: bool,
    /// Handshakes in flight at once while the nodes join.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Write the coordinator's log here (its level from RUST_LOG, warn by default).
    #[arg(long)]
    coordinator_log: Option<PathBuf>,
    /// The fd-coordinator binary [default: next to this one].
    #[arg(long)]
    coordinator: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let coordinator = match args.coordinator {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("the directory of fd-load")?
            .join("fd-coordinator"),
    };
    anyhow::ensure!(
        coordinator.exists(),
        "{} not found: build it (cargo build --release -p fd-coordinator) or pass --coordinator",
        coordinator.display()
    );
    let config = LoadConfig {
        coordinator,
        nodes: args.nodes,
        rounds: args.rounds,
        public_records: args.public_records,
        classes: args.classes,
        queries_per_round: args.queries_per_round,
        round_timeout_secs: args.round_timeout_secs,
        deaf: args.deaf,
        slow_secs: args.slow_secs,
        hogs: args.hogs,
        foreign: args.foreign,
        connect_concurrency: args.connect_concurrency,
        secure: args.secure,
        coordinator_log: args.coordinator_log,
    };
    let report = load::run(&config)?;
    print!("{}", load::render(&config, &report));
    anyhow::ensure!(
        report.failures.is_empty() && report.coordinator_ok,
        "the load did not complete cleanly"
    );
    Ok(())
}

//! `fd-coordinator`: the federation operator's daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fd_coordinator::FederationConfig;

/// Run a federated knowledge-distillation federation.
///
/// Listens on QUIC with mutual TLS (ALPN fd/1). Only nodes holding a certificate signed by the
/// federation CA (see `fd-certs`) are admitted; a node's identity is the name in its certificate.
/// Waits for the configured number of nodes, runs the rounds (ask for soft labels on public
/// records, validate, aggregate into the global target, send it back), sends Finished, prints a
/// summary and exits 0.
///
/// SIGTERM or Ctrl-C stops it cleanly: closed rounds are already committed, the open round is
/// dropped, nodes are told to reconnect, and a restart on the same state directory continues.
///
/// Settings come from a TOML file; flags override it.
#[derive(Debug, Parser)]
#[command(name = "fd-coordinator", version)]
struct Args {
    /// Federation config file (TOML). Relative paths inside it are relative to the file.
    #[arg(long)]
    config: PathBuf,
    /// Override `listen` (UDP address).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Override `nodes` (how many nodes to wait for).
    #[arg(long)]
    nodes: Option<usize>,
    /// Override `rounds`.
    #[arg(long)]
    rounds: Option<u32>,
    /// Override `summary_json` (where the run summary is written).
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// Override `state_dir`: where the state database lives. Restarted on the same directory,
    /// the coordinator continues after the last committed round (and, with a listen port of 0,
    /// on the address it used before).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Override `quorum`: fewest accepted contributions for a round to be aggregated.
    #[arg(long)]
    quorum: Option<usize>,
    /// Override `aggregation.strategy`: mean, median, trimmed-mean, confidence, reputation or
    /// dynamic (confidence x reputation, the default).
    #[arg(long)]
    aggregator: Option<fd_coordinator::aggregate::AggregatorKind>,
}

/// Completes on SIGTERM (what service managers send) or Ctrl-C; the coordinator then stops
/// with its closed rounds committed and tells the nodes to reconnect to its restart.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn,rustls=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = FederationConfig::load(&args.config)?;
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.nodes {
        config.nodes = v;
    }
    if let Some(v) = args.rounds {
        config.rounds = v;
    }
    if let Some(v) = args.summary_json {
        config.summary_json = Some(v);
    }
    if let Some(v) = args.state_dir {
        config.state_dir = Some(v);
    }
    if let Some(v) = args.quorum {
        config.quorum = v;
    }
    if let Some(v) = args.aggregator {
        config.aggregation.strategy = v;
    }
    config
        .validate()
        .and_then(|()| config.check_outputs())
        .map_err(|m| anyhow::anyhow!("invalid settings: {m}"))?;
    // A restart on a state directory comes back on the address the nodes know, unless the
    // config names a fixed port.
    if let Some(dir) = &config.state_dir
        && config.listen.port() == 0
        && let Some(addr) = fd_coordinator::store::Store::open(dir, &config)?.recorded_listen()?
    {
        config.listen = addr;
    }
    let summary_path = config.summary_json.clone();
    let endpoint = fd_coordinator::bind(&config)?;
    let addr = endpoint.local_addr().context("reading the bound address")?;
    // Machine-readable first line: with `listen = "127.0.0.1:0"` this is how callers learn the port.
    println!("fd-coordinator listening on {addr}");
    std::io::Write::flush(&mut std::io::stdout())?;
    let summary = fd_coordinator::run_until(config, endpoint, shutdown_signal()).await?;
    if let Some(why) = &summary.ended_early {
        println!("federation '{}' stopped early: {why}", summary.federation);
    }
    println!(
        "federation '{}' finished: {} rounds in {:.1} s, target covers {} public records",
        summary.federation, summary.rounds, summary.wall_seconds, summary.target_records
    );
    println!("aggregator: {}", summary.aggregator);
    println!(
        "{:<24} {:>13} {:>12} {:>12} {:>9} {:>8}",
        "node", "contributions", "bytes up", "bytes down", "finished", "weight"
    );
    for n in &summary.nodes {
        println!(
            "{:<24} {:>13} {:>12} {:>12} {:>9} {:>8}",
            n.node,
            n.contributions,
            n.bytes_up,
            n.bytes_down,
            n.finished,
            n.weight.map_or("-".to_owned(), |w| format!("{w:.4}"))
        );
    }
    if let Some(path) = summary_path {
        let text = serde_json::to_string_pretty(&summary)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

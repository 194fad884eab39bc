//! `fd-coordinator`: the federation operator's daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fd_coordinator::FederationConfig;

/// Run a federated knowledge-distillation federation.
///
/// Listens on QUIC with mutual TLS (ALPN fd/1). Only nodes holding a certificate signed by the
/// federation CA (see `fd-certs`) are admitted, and of those only the ones on `allow` (if set),
/// up to `max_nodes`, and not revoked (`crl`); a node's identity is the name in its
/// certificate. Waits for `nodes` nodes, runs the rounds (ask for soft labels on public
/// records, validate, aggregate into the global target, send it back), sends Finished, prints
/// a summary and exits 0. Restarted on the state of a finished run, it says so and exits 0.
///
/// SIGTERM or Ctrl-C stops it cleanly: closed rounds are already committed, the open round is
/// dropped, nodes are told to reconnect, and a restart on the same state directory continues.
///
/// Settings come from a TOML file (`--print-config` prints every key); flags override it.
/// `fd-coordinator status --state-dir DIR` reports on a run, running or finished.
#[derive(Debug, Parser)]
#[command(
    name = "fd-coordinator",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Args,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Report on a federation from its state directory: round k of N, finished or not, and
    /// per node its contributions, last round, weight, epsilon spent and bytes. Reads only,
    /// so it is safe while the daemon runs.
    Status {
        /// The coordinator's state_dir.
        #[arg(long)]
        state_dir: PathBuf,
        /// Print JSON (for scripts) instead of a table.
        #[arg(long)]
        json: bool,
        /// Also draw each node's aggregation weight per round into FILE (.png or .svg).
        #[arg(long, value_name = "FILE")]
        plot: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct Args {
    /// Federation config file (TOML). Relative paths inside it are relative to the file.
    #[arg(long, required_unless_present = "print_config")]
    config: Option<PathBuf>,
    /// Override `listen` (UDP address).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Override `nodes` (how many nodes to wait for before round 0).
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
    /// Override `public_csv`: the public file every node holds (its SHA-256 and row count are
    /// read from it).
    #[arg(long)]
    public_csv: Option<PathBuf>,
    /// Override `public_records`.
    #[arg(long)]
    public_records: Option<u32>,
    /// Override `classes`.
    #[arg(long)]
    classes: Option<u16>,
    /// Override `queries_per_round` (0: every public record every round).
    #[arg(long)]
    queries_per_round: Option<u32>,
    /// Override `require_privacy` (true or false).
    #[arg(long)]
    require_privacy: Option<bool>,
    /// Any config key, as KEY=VALUE with a dotted key and a TOML value, e.g. `--set
    /// aggregation.trim=0.1 --set 'allow=["hospital-a","bank-b"]'`. Repeatable; applied after
    /// the file and the other flags.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print a complete federation config, every key at its default with a comment, and exit.
    #[arg(long)]
    print_config: bool,
    /// Also write the log to this file (appended; plain text, no colour codes).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
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

/// Draws each node's aggregation weight per round.
fn plot_weights(
    status: &fd_coordinator::status::Status,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let mut series: std::collections::BTreeMap<&str, Vec<(f64, f64)>> = Default::default();
    for r in &status.rounds {
        for (node, w) in &r.weights {
            series
                .entry(node.as_str())
                .or_default()
                .push((f64::from(r.round), *w));
        }
    }
    let chart = fd_plot::LineChart {
        title: format!(
            "federation '{}': aggregation weight per round",
            status.federation
        ),
        subtitle: format!(
            "{} of {} rounds committed{}; each node's share of the aggregate in the rounds it was accepted",
            status.rounds_done,
            status.rounds_planned,
            if status.finished { ", finished" } else { "" }
        ),
        x_label: "round".into(),
        y_label: "weight".into(),
        x_integers: true,
        series: series
            .into_iter()
            .map(|(node, points)| fd_plot::Series::main(node, points))
            .collect(),
        ..Default::default()
    };
    fd_plot::write(&chart, path).with_context(|| format!("drawing {}", path.display()))?;
    Ok(())
}

fn print_summary(summary: &fd_coordinator::Summary) {
    if let Some(why) = &summary.ended_early {
        println!("federation '{}' stopped early: {why}", summary.federation);
    }
    println!(
        "federation '{}' finished: {} rounds in {:.1} s, target covers {} public records",
        summary.federation, summary.rounds, summary.wall_seconds, summary.target_records
    );
    println!("aggregator: {}", summary.aggregator);
    println!(
        "{:<24} {:>13} {:>12} {:>12} {:>9} {:>8} {:>9}",
        "node", "contributions", "bytes up", "bytes down", "finished", "weight", "epsilon"
    );
    for n in &summary.nodes {
        println!(
            "{:<24} {:>13} {:>12} {:>12} {:>9} {:>8} {:>9}",
            n.node,
            n.contributions,
            n.bytes_up,
            n.bytes_down,
            n.finished,
            n.weight.map_or("-".to_owned(), |w| format!("{w:.4}")),
            n.privacy
                .as_ref()
                .map_or("-".to_owned(), |p| format!("{:.3}", p.epsilon_total))
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = cli.run;
    fd_cli::logging::init(args.log_file.as_deref())?;
    if let Some(Command::Status {
        state_dir,
        json,
        plot,
    }) = cli.command
    {
        let status = fd_coordinator::status::read(&state_dir)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            print!("{}", fd_coordinator::status::render(&status));
        }
        if let Some(path) = plot {
            plot_weights(&status, &path)?;
            eprintln!("wrote {}", path.display());
        }
        return Ok(());
    }
    if args.print_config {
        print!("{}", fd_coordinator::config::REFERENCE);
        return Ok(());
    }
    let config_path = args.config.context("--config is required")?;
    let mut config = FederationConfig::load(&config_path)?;
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
    if let Some(v) = args.public_csv {
        // Another file: its own fingerprint and row count, read below.
        config.public_csv = Some(v);
        config.public_sha256 = None;
        config.public_records = 0;
    }
    if let Some(v) = args.public_records {
        config.public_records = v;
    }
    if let Some(v) = args.classes {
        config.classes = v;
    }
    if let Some(v) = args.queries_per_round {
        config.queries_per_round = v;
    }
    if let Some(v) = args.require_privacy {
        config.require_privacy = v;
    }
    let mut config = fd_coordinator::config::apply_settings(&config, &args.set)
        .map_err(|m| anyhow::anyhow!("--set: {m}"))?;
    config
        .resolve_public()
        .and_then(|()| config.validate())
        .and_then(|()| config.check_outputs())
        .map_err(|m| anyhow::anyhow!("invalid settings: {m}"))?;
    if let Some(dir) = &config.state_dir {
        let store = fd_coordinator::store::Store::open(dir, &config)?;
        // A finished run is not run again: say so, show its summary, and exit 0.
        if let Some(summary) = store.finished()? {
            tracing::info!(
                state = %dir.display(),
                "this federation has finished; nothing to do (use another state_dir to run again)"
            );
            println!(
                "federation '{}' already finished ({} rounds); state in {}",
                summary.federation,
                summary.rounds,
                dir.display()
            );
            print_summary(&summary);
            return Ok(());
        }
        // Two daemons on one state would each think they run the federation.
        if let Some(pid) = store.live_daemon()? {
            anyhow::bail!(
                "another fd-coordinator (pid {pid}) already serves the state in {}; stop it \
                 first (a restart continues from the state)",
                dir.display()
            );
        }
        // A restart comes back on the address the nodes know, unless the config names a
        // fixed port.
        if config.listen.port() == 0
            && let Some(addr) = store.recorded_listen()?
        {
            config.listen = addr;
        }
    }
    let summary_path = config.summary_json.clone();
    let endpoint = fd_coordinator::bind(&config)?;
    let addr = endpoint.local_addr().context("reading the bound address")?;
    // Machine-readable first line: with `listen = "127.0.0.1:0"` this is how callers learn the port.
    println!("fd-coordinator listening on {addr}");
    std::io::Write::flush(&mut std::io::stdout())?;
    let summary = fd_coordinator::run_until(config, endpoint, shutdown_signal()).await?;
    print_summary(&summary);
    if let Some(path) = summary_path {
        let text = serde_json::to_string_pretty(&summary)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

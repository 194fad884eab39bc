//! The binaries' log output: to stderr, with colour codes only on a terminal, and optionally
//! also to a file (plain text, appended); and, on a terminal, a progress bar over the rounds
//! that the log lines pass above without tearing it.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter unless `RUST_LOG` says otherwise: our info lines, quinn's and rustls's warnings.
pub const DEFAULT_FILTER: &str = "info,quinn=warn,rustls=warn";

/// The bars, when [`init`] found stderr to be a terminal (never in the simulator, which does
/// not call it, nor when stderr is a file or a pipe).
static BARS: OnceLock<MultiProgress> = OnceLock::new();
/// The node's bar over the rounds, once it knows how many there are.
static ROUNDS: OnceLock<ProgressBar> = OnceLock::new();

/// Writes log lines to stderr, lifting the progress bars around each line.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BARS.get() {
            Some(bars) => bars.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Installs the global subscriber: one line per event on stderr (ANSI colours and progress
/// bars only when stderr is a terminal, so a redirected log is plain text) and, with `file`,
/// the same lines appended to it without colour. Fails if the file cannot be opened.
pub fn init(file: Option<&Path>) -> std::io::Result<()> {
    let terminal = std::io::stderr().is_terminal();
    if terminal {
        let _ = BARS.set(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
    }
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| DEFAULT_FILTER.into())
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(|| Stderr)
        .with_ansi(terminal)
        .with_filter(filter());
    let file_layer = match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::sync::Mutex::new(f))
                    .with_ansi(false)
                    .with_filter(filter()),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(file_layer)
        .init();
    Ok(())
}

/// Moves the round bar (made on first use, when there are bars at all) to `done` of `rounds`
/// with `message` (the held-out accuracy and epsilon spent, say). Does nothing off a terminal:
/// the log line of each round says the same.
pub fn round_progress(done: u32, rounds: u32, message: String) {
    let Some(bars) = BARS.get() else {
        return;
    };
    let bar = ROUNDS.get_or_init(|| {
        let bar = bars.add(ProgressBar::new(u64::from(rounds)));
        if let Ok(style) = ProgressStyle::with_template(
            "round {pos}/{len} [{bar:30}] {elapsed} elapsed, about {eta} left  {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    bar.set_length(u64::from(rounds));
    bar.set_position(u64::from(done));
    bar.set_message(message);
}

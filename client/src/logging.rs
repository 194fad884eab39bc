//! The binaries' log output: to stderr, with colour codes only on a terminal, and optionally
//! also to a file (plain text, appended).

use std::io::IsTerminal;
use std::path::Path;

use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter unless `RUST_LOG` says otherwise: our info lines, quinn's and rustls's warnings.
pub const DEFAULT_FILTER: &str = "info,quinn=warn,rustls=warn";

/// Installs the global subscriber: one line per event on stderr (ANSI colours only when stderr
/// is a terminal, so a redirected log is plain text) and, with `file`, the same lines appended
/// to it without colour. Fails if the file cannot be opened.
pub fn init(file: Option<&Path>) -> std::io::Result<()> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| DEFAULT_FILTER.into())
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
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

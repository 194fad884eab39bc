//! How fd-sim shows its progress: indicatif bars when stderr is a terminal (rounds of the
//! current run, and the runs of a sweep, of repeats or of an aggregator comparison), one plain
//! log line per event otherwise (no bar and no colour codes, so CI logs, files and the tests
//! that run the binary read cleanly).
//!
//! Logs and the tables on stdout go through the [`Reporter`] while bars are shown, which lifts
//! the bars, writes, and draws them again, so neither tears the other.

use std::io::Write;
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::federation::Progress;

/// The tracing target of the plain progress lines (`RUST_LOG=fd_sim::progress=off` hides them).
pub const TARGET: &str = "fd_sim::progress";

/// Where fd-sim's progress goes: bars, or plain log lines.
#[derive(Debug)]
pub struct Reporter {
    /// The bars, when stderr is a terminal.
    bars: Option<MultiProgress>,
    /// The bar over the runs, when there are several.
    outer: Option<ProgressBar>,
    /// Runs planned.
    runs: u64,
    /// Runs finished.
    done: u64,
}

impl Reporter {
    /// Bars when `terminal`, plain log lines otherwise.
    pub fn new(terminal: bool) -> Reporter {
        Reporter {
            bars: terminal.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            outer: None,
            runs: 1,
            done: 0,
        }
    }

    /// What tracing should write its log lines to.
    pub fn log_writer(&self) -> LogWriter {
        LogWriter {
            bars: self.bars.clone(),
        }
    }

    /// Plans `runs` runs; with more than one, a bar over them.
    pub fn start_runs(&mut self, runs: u64) {
        self.runs = runs;
        self.done = 0;
        if let (Some(bars), true) = (&self.bars, runs > 1) {
            let bar = bars.add(ProgressBar::new(runs));
            bar.set_style(style(
                "{prefix:>6} [{bar:30}] {pos}/{len} runs, {elapsed} elapsed",
            ));
            bar.set_prefix("all");
            // Redrawn every second, so the elapsed time moves between runs too.
            bar.enable_steady_tick(std::time::Duration::from_secs(1));
            self.outer = Some(bar);
        }
    }

    /// Progress of the next run, which `label` names (its epsilon, seed or aggregator), of
    /// `rounds` rounds.
    pub fn run(&self, label: &str, rounds: u32) -> Arc<RunProgress> {
        let label = if self.runs > 1 {
            format!("run {}/{} ({label})", self.done + 1, self.runs)
        } else {
            label.to_owned()
        };
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new(u64::from(rounds)));
            bar.set_style(style("{prefix:>6} [{bar:30}] {pos}/{len} rounds {msg}"));
            bar.set_prefix("this");
            bar.set_message(label.clone());
            bar
        });
        if bar.is_none() {
            tracing::info!(target: TARGET, "{label}: started");
        }
        Arc::new(RunProgress { label, bar })
    }

    /// The run `run` has finished.
    pub fn run_done(&mut self, run: &RunProgress) {
        self.done += 1;
        match (&run.bar, &self.bars) {
            (Some(bar), Some(bars)) => {
                bar.finish_and_clear();
                bars.remove(bar);
            }
            _ => tracing::info!(target: TARGET, "{}: done", run.label),
        }
        if let Some(outer) = &self.outer {
            outer.inc(1);
        }
    }

    /// Prints `text` on stdout as it is (without adding a newline), lifting the bars meanwhile.
    pub fn print(&self, text: &str) {
        let write = || {
            let mut out = std::io::stdout().lock();
            // Nothing sensible is left to do when stdout is gone; the exit status still tells.
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        };
        match &self.bars {
            Some(bars) => bars.suspend(write),
            None => write(),
        }
    }

    /// Removes the bars.
    pub fn finish(&mut self) {
        if let Some(outer) = self.outer.take() {
            outer.finish_and_clear();
        }
    }
}

/// A bar style from a template fixed in this file.
fn style(template: &str) -> ProgressStyle {
    // The templates are constants, so this only falls back if one of them is mistyped.
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The progress of one run: a bar over its rounds, or log lines.
#[derive(Debug)]
pub struct RunProgress {
    label: String,
    bar: Option<ProgressBar>,
}

impl Progress for RunProgress {
    fn round_started(&self, round: u32, rounds: u32) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(u64::from(round));
                bar.set_message(format!("{}: round {} of {rounds}", self.label, round + 1));
            }
            None => {
                tracing::info!(target: TARGET, "{}: round {}/{rounds}", self.label, round + 1);
            }
        }
    }

    fn federation_done(&self) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(bar.length().unwrap_or(0));
                bar.set_message(format!("{}: training the baselines", self.label));
            }
            None => tracing::info!(
                target: TARGET,
                "{}: federation done; training the baselines",
                self.label
            ),
        }
    }
}

/// Hands tracing one [`LogLine`] per event.
#[derive(Debug, Clone)]
pub struct LogWriter {
    bars: Option<MultiProgress>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine {
            bars: self.bars.clone(),
            text: Vec::new(),
        }
    }
}

/// One log event: collected, then written to stderr in one piece when dropped (tracing drops
/// it after each event), with the bars lifted meanwhile.
#[derive(Debug)]
pub struct LogLine {
    bars: Option<MultiProgress>,
    text: Vec<u8>,
}

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let write = || {
            // A log line that cannot be written has nowhere else to go.
            let _ = std::io::stderr().lock().write_all(&self.text);
        };
        match &self.bars {
            Some(bars) => bars.suspend(write),
            None => write(),
        }
    }
}

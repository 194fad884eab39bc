//! Helpers for end-to-end tests that start the real `fd-certs`, `fd-coordinator` and `fd-client`
//! binaries as separate processes, on loopback only, with files in a temporary directory.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Directory of the workspace's built binaries (the profile directory this test runs from).
fn bin_dir() -> PathBuf {
    // The test executable lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary is in target/<profile>/deps")
        .to_path_buf()
}

/// Path to one of the workspace binaries, building them once if they are missing (for example
/// when this crate's tests are run alone with `cargo test -p fd-tests`).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let path = bin_dir().join(name);
    let ready = [
        "fd-certs",
        "fd-coordinator",
        "fd-client",
        "fd-load",
        "fd-sim",
    ]
    .iter()
    .all(|b| bin_dir().join(b).exists());
    if !ready {
        let built = BUILT.get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "-p",
                "fd-certs",
                "-p",
                "fd-coordinator",
                "-p",
                "fd-client",
                "-p",
                "fd-sim",
            ]);
            if bin_dir().ends_with("release") {
                cmd.arg("--release");
            }
            match cmd.status() {
                Ok(s) if s.success() => Ok(()),
                other => Err(format!("building the binaries failed: {other:?}")),
            }
        });
        if let Err(e) = built {
            panic!("{e}");
        }
    }
    path
}

/// Runs a command to completion; fails with its output if it exits non-zero.
pub fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}:\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A child process that is killed if the test ends before it does.
pub struct Process {
    /// Name for messages.
    pub name: String,
    child: Child,
}

impl Process {
    /// Starts `cmd` with stdout and stderr piped.
    pub fn start(name: &str, cmd: &mut Command) -> anyhow::Result<Process> {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Process {
            name: name.to_owned(),
            child,
        })
    }

    /// Reads stdout lines until one starts with `prefix`; returns the rest of that line.
    pub fn read_line_starting(&mut self, prefix: &str) -> anyhow::Result<String> {
        let stdout = self.child.stdout.as_mut().context("stdout not piped")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("{} ended its output before printing '{prefix}'", self.name);
            }
            if let Some(rest) = line.trim_end().strip_prefix(prefix) {
                return Ok(rest.to_owned());
            }
        }
    }

    /// Reads stderr lines until `count` of them contain `needle` (the caller bounds the wait
    /// with the run's own timeouts: a process that exits ends the read with an error).
    pub fn wait_for_stderr(&mut self, needle: &str, count: usize) -> anyhow::Result<()> {
        let stderr = self.child.stderr.as_mut().context("stderr not piped")?;
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        let mut seen = 0;
        while seen < count {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!(
                    "{} ended its output after {seen} of {count} lines with '{needle}'",
                    self.name
                );
            }
            seen += usize::from(line.contains(needle));
        }
        Ok(())
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn sigkill(mut self) -> anyhow::Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait().context("reaping the killed process")?;
        Ok(())
    }

    /// Waits up to `limit` for the process to exit; kills it and fails if it does not.
    /// Returns the exit status and everything it wrote to stderr.
    pub fn wait(mut self, limit: Duration) -> anyhow::Result<(ExitStatus, String)> {
        let start = Instant::now();
        // Drain stderr on a thread so a chatty process can never block on a full pipe.
        let mut stderr = self.child.stderr.take().context("stderr not piped")?;
        let drain = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut stdout = self.child.stdout.take();
        let drain_out = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_string(&mut text);
            }
            text
        });
        loop {
            if let Some(status) = self.child.try_wait()? {
                let err = drain.join().unwrap_or_default();
                let out = drain_out.join().unwrap_or_default();
                return Ok((status, format!("{out}{err}")));
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let err = drain.join().unwrap_or_default();
                bail!(
                    "{} did not finish within {limit:?}; its output:\n{err}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a labelled CSV of `rows` records from three Gaussian blobs in two features, and
/// returns nothing else: labels `0..3`, column `label`. `classes` restricts which blobs appear
/// (to make nodes non-IID).
pub fn write_blobs(path: &Path, rows: usize, classes: &[u32], seed: u64, labelled: bool) {
    // A small LCG keeps this file free of extra dependencies; quality is irrelevant here.
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64) / ((1u64 << 53) as f64)
    };
    let centres = [(-3.0, 0.0), (3.0, 0.0), (0.0, 4.0)];
    let mut text = String::from(if labelled { "x1,x2,label\n" } else { "x1,x2\n" });
    for i in 0..rows {
        let class = classes[i % classes.len()];
        let (cx, cy) = centres[class as usize];
        let x = cx + (uniform() - 0.5) * 2.0;
        let y = cy + (uniform() - 0.5) * 2.0;
        if labelled {
            text.push_str(&format!("{x:.4},{y:.4},{class}\n"));
        } else {
            text.push_str(&format!("{x:.4},{y:.4}\n"));
        }
    }
    std::fs::write(path, text).expect("write csv");
}

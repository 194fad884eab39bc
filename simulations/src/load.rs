//! Load on a real coordinator (`fd-load`): the `fd-coordinator` binary in its own process, and
//! N lightweight nodes in this one, over loopback QUIC with valid certificates.
//!
//! A lightweight node does what fd-client does on the wire and nothing else: it joins (retrying
//! its first join like fd-client), answers every RoundOpen with uniform soft labels, and
//! reconnects when the coordinator says reconnecting helps. Some nodes can be made hostile or
//! slow ([`Role`]). The coordinator's CPU time and memory are read from `/proc` while it runs.
//!
//! What the report holds is what the coordinator must guarantee under load: every round closes
//! by its deadline, no honest contribution that arrived in time is refused, and memory does not
//! grow with the rounds.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fd_certs::pki::Ca;
use fd_client::federation::secure::{SecureIdentity, SecureState};
use fd_protocol::{Contribution, DEFAULT_MAX_FRAME_LEN, Hello, Message, SoftLabels, close};
use fd_transport::tls::{TlsIdentity, client_config};
use fd_transport::{TransportError, read_message, write_message};
use tokio::sync::{Semaphore, watch};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The `fd-coordinator` binary.
    pub coordinator: PathBuf,
    /// Nodes the coordinator waits for (hostile and slow ones included).
    pub nodes: usize,
    /// Rounds.
    pub rounds: u32,
    /// Public records.
    pub public_records: u32,
    /// Classes.
    pub classes: u16,
    /// Public records asked per round (0: all).
    pub queries_per_round: u32,
    /// The coordinator's round deadline.
    pub round_timeout_secs: u64,
    /// One node that joins, then sends 100,000 tiny frames and never reads a reply. The honest
    /// nodes answer the last round only once its connection has ended (or half the round
    /// deadline has passed), so the federation cannot end before the coordinator deals with it.
    pub deaf: bool,
    /// One honest node that takes this long to answer each round, reading nothing meanwhile
    /// (as fd-client does while it trains).
    pub slow_secs: Option<u64>,
    /// Connections that, before any node joins, pass TLS and announce a 32 MiB first frame.
    pub hogs: usize,
    /// Handshakes with certificates from a foreign CA, before any node joins.
    pub foreign: usize,
    /// Handshakes in flight at once while nodes join.
    pub connect_concurrency: usize,
    /// Secure aggregation (`[aggregation] secure`, 1 colluder, 2 dropouts): every node runs
    /// the four exchanges of a secure round with keys signed by its certificate, masking a
    /// vector of zeros.
    pub secure: bool,
    /// Where the coordinator's log goes (its level from `RUST_LOG`, warn by default); none: a
    /// temporary file, shown only if the run fails.
    pub coordinator_log: Option<PathBuf>,
}

/// A node's part in the load.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Honest,
    /// Joins, floods the coordinator with frames whose replies it never reads.
    Deaf,
    /// Honest, but answers each round only after this long.
    Slow(Duration),
}

/// Frames the deaf node sends without reading a reply: each earns a Refused of ~80 bytes, 8 MB
/// in all, more than the coordinator's send window (2 MiB) and the node's receive window
/// (1.25 MB) hold together, so the coordinator's writer to it must wait.
const DEAF_FRAMES: usize = 100_000;
/// How long a node retries its first join (fd-client's default `join_retry_secs`).
const JOIN_RETRY: Duration = Duration::from_secs(60);
/// Back-off between join attempts: fd-client's reconnect back-off, 200 ms doubling to 5 s.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Nodes per client endpoint (UDP socket): spreads the nodes' own packet work over sockets.
const NODES_PER_ENDPOINT: usize = 500;
/// How often the coordinator's `/proc` entry is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Linux's USER_HZ: `/proc/<pid>/stat` counts CPU time in 1/100 s on every mainstream kernel.
const CLOCK_TICKS: f64 = 100.0;

/// The coordinator's process as `/proc` last showed it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User + system CPU seconds so far.
    pub cpu_secs: f64,
    /// Resident memory now, in KiB.
    pub rss_kib: u64,
    /// Peak resident memory, in KiB.
    pub peak_kib: u64,
}

/// One round, as the first node saw it.
#[derive(Debug, Clone, Copy)]
pub struct RoundSeen {
    /// From RoundOpen to RoundClosed at the node.
    pub latency: Duration,
    /// Contributions the coordinator accepted.
    pub accepted: u32,
    /// Nodes it asked.
    pub asked: u32,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Nodes started.
    pub nodes: usize,
    /// Honest nodes (neither deaf nor slow).
    pub honest: usize,
    /// Nodes welcomed at least once.
    pub admitted: usize,
    /// From the first connection attempt to the last node's Welcome.
    pub admission: Duration,
    /// Rounds the coordinator reported in Finished.
    pub rounds: u32,
    /// Every round, by number, as the first node saw it.
    pub seen: BTreeMap<u32, RoundSeen>,
    /// Contributions honest nodes sent and the coordinator refused.
    pub honest_refused: u32,
    /// Bytes (frames) all honest nodes sent, over the run.
    pub bytes_up: u64,
    /// Bytes (frames) all honest nodes received, over the run.
    pub bytes_down: u64,
    /// Honest nodes that did not finish, with why.
    pub failures: Vec<String>,
    /// Times a node reconnected after a close that invited it.
    pub reconnects: u32,
    /// How the deaf node's connection ended, as the node saw it, if there was one.
    ///
    /// Best effort by nature: QUIC sends CONNECTION_CLOSE once, unacknowledged, and a node
    /// flooding packets (through a key update, which quinn starts after its first 10 to 1000
    /// packets) can miss it and see a stateless reset or a time-out instead.
    pub deaf_outcome: Option<String>,
    /// Why the coordinator dropped the deaf node, from its log (`node gone: ...`), if it did
    /// and its log level shows it. This is the reliable record of the too-slow close.
    pub deaf_dropped: Option<String>,
    /// How the slow node's session ended, if there was one.
    pub slow_outcome: Option<String>,
    /// The coordinator before any node connected.
    pub idle: ProcSample,
    /// After the hogs connected (and, held or refused, stayed so for a second).
    pub after_hogs: Option<ProcSample>,
    /// How the hogs' connections ended.
    pub hog_outcomes: Vec<String>,
    /// After the foreign handshakes.
    pub after_foreign: Option<ProcSample>,
    /// Foreign-CA connections the coordinator left open for 5 s (it should close every one).
    pub foreign_admitted: usize,
    /// When the first node saw round 10 and round 100 close.
    pub at_round: BTreeMap<u32, ProcSample>,
    /// The coordinator's last sample before it exited.
    pub last: ProcSample,
    /// Whether the coordinator exited with status 0.
    pub coordinator_ok: bool,
    /// Wall time of the whole run.
    pub wall: Duration,
}

/// Runs the load described by `config` and reports it.
pub fn run(config: &LoadConfig) -> anyhow::Result<LoadReport> {
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let ca = Ca::generate("load")?;
    let toml = write_coordinator_files(dir.path(), &ca, config)?;
    let log_path = config
        .coordinator_log
        .clone()
        .unwrap_or_else(|| dir.path().join("coordinator.log"));
    let roles = roles(config);
    eprintln!("issuing {} node certificates", config.nodes);
    let identities = roles
        .iter()
        .enumerate()
        .map(|(i, _)| identity(&ca, &format!("node-{i:05}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut child = Command::new(&config.coordinator)
        .arg("--config")
        .arg(&toml)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).with_context(|| log_path.display().to_string())?)
        .spawn()
        .with_context(|| format!("starting {}", config.coordinator.display()))?;
    let addr = listening_addr(&mut child)?;
    let monitor = Monitor::start(child.id());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(drive(config, &ca, addr, roles, identities, &monitor));
    let status = child.wait()?;
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "{e:#}\ncoordinator log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
    };
    report.last = monitor.stop();
    report.coordinator_ok = status.success();
    if let Some(deaf) = deaf_name(config) {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        report.deaf_dropped = gone_reason(&log, &deaf);
    }
    Ok(report)
}

/// The deaf node's name, if there is one.
fn deaf_name(config: &LoadConfig) -> Option<String> {
    roles(config)
        .iter()
        .position(|r| *r == Role::Deaf)
        .map(|i| format!("node-{i:05}"))
}

/// Why the coordinator's log says `node` left (its first `node gone: <reason>` line), with
/// terminal colour codes removed.
fn gone_reason(log: &str, node: &str) -> Option<String> {
    let field = format!("node=\"{node}\"");
    log.lines().map(strip_ansi).find_map(|line| {
        let (_, rest) = line.split_once("node gone: ")?;
        let reason = rest.strip_suffix(field.as_str())?;
        Some(reason.trim_end().to_string())
    })
}

/// `line` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Which node plays which part: the last is deaf, the one before it slow (if asked for).
fn roles(config: &LoadConfig) -> Vec<Role> {
    let mut roles = vec![Role::Honest; config.nodes];
    let mut last = config.nodes;
    if config.deaf && last > 1 {
        last -= 1;
        roles[last] = Role::Deaf;
    }
    if let Some(secs) = config.slow_secs
        && last > 1
    {
        roles[last - 1] = Role::Slow(Duration::from_secs(secs));
    }
    roles
}

fn identity(ca: &Ca, name: &str) -> anyhow::Result<TlsIdentity> {
    let id = ca.issue_node(name)?;
    Ok(TlsIdentity {
        ca_pem: ca.cert_pem(),
        cert_pem: id.cert_pem,
        key_pem: id.key_pem,
    })
}

/// Writes the CA, the coordinator's certificate and key, and `federation.toml`; returns the
/// config's path.
fn write_coordinator_files(dir: &Path, ca: &Ca, config: &LoadConfig) -> anyhow::Result<PathBuf> {
    let server = ca.issue_server("coordinator", &["localhost".into(), "127.0.0.1".into()])?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    std::fs::write(dir.join("coordinator.pem"), &server.cert_pem)?;
    let key = dir.join("coordinator.key");
    std::fs::write(&key, &server.key_pem)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    let path = dir.join("federation.toml");
    let mut text = format!(
        "name = \"load\"\nlisten = \"127.0.0.1:0\"\nca = \"ca.pem\"\ncert = \"coordinator.pem\"\n\
         key = \"coordinator.key\"\nnodes = {}\nrounds = {}\npublic_records = {}\nclasses = {}\n\
         queries_per_round = {}\njoin_timeout_secs = 900\nround_timeout_secs = {}\n\
         state_dir = \"state\"\n",
        config.nodes,
        config.rounds,
        config.public_records,
        config.classes,
        config.queries_per_round,
        config.round_timeout_secs,
    );
    if config.secure {
        text += "[aggregation]\nsecure = true\ncolluders = 1\ndropouts = 2\n";
    }
    // Only past the default, so the file also suits a coordinator that predates the setting.
    let needed = config.nodes + config.hogs + 16;
    if needed > fd_coordinator::config::DEFAULT_MAX_CONNECTIONS {
        text += &format!("max_connections = {needed}\n");
    }
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Reads the coordinator's first line, `fd-coordinator listening on <addr>`.
fn listening_addr(child: &mut Child) -> anyhow::Result<SocketAddr> {
    let stdout = child.stdout.take().context("the coordinator's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next()
        .context("the coordinator exited before listening")??;
    let addr = first
        .strip_prefix("fd-coordinator listening on ")
        .with_context(|| format!("unexpected first line: {first}"))?
        .parse()?;
    // Keep reading (and dropping) the rest, so the coordinator never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok(addr)
}

/// Samples the coordinator's `/proc` entry every [`SAMPLE_EVERY`] until stopped.
struct Monitor {
    latest: Arc<Mutex<ProcSample>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    fn start(pid: u32) -> Monitor {
        let latest = Arc::new(Mutex::new(ProcSample::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l, s) = (latest.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match sample(pid) {
                    Some(now) => *l.lock().unwrap_or_else(|p| p.into_inner()) = now,
                    None => break,
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        Monitor {
            latest,
            stop,
            thread: Some(thread),
        }
    }

    /// The latest sample, taken fresh.
    fn now(&self) -> ProcSample {
        std::thread::sleep(SAMPLE_EVERY * 2);
        *self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop(mut self) -> ProcSample {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads CPU time and memory of `pid` from `/proc`; `None` once it has exited.
fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, so split after its ')'):
    // state is field 3, utime 14 and stime 15 (proc(5)).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok());
    if fields.first() == Some(&"Z") {
        return None;
    }
    let cpu_secs = (ticks(14)? + ticks(15)?) / CLOCK_TICKS;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(ProcSample {
        cpu_secs,
        rss_kib: kib("VmRSS:")?,
        peak_kib: kib("VmHWM:")?,
    })
}

/// What all nodes share: where to report.
struct Shared {
    addr: SocketAddr,
    public_records: u32,
    classes: u16,
    started: Instant,
    handshakes: Semaphore,
    log: Mutex<Log>,
    /// The last round: honest nodes answer it only once the deaf node's connection has ended
    /// (see [`DeafGate`]).
    last_round: u32,
    /// True once there is no deaf node left to wait for.
    deaf_settled: watch::Sender<bool>,
    /// How long an honest node waits at the last round for the deaf node to be dealt with.
    deaf_wait: Duration,
}

/// Marks the deaf node settled when its task ends, however it ends.
///
/// The flood and the rounds race: 30 honest nodes finish three rounds in about a second, and on
/// a loaded machine the federation could end before the coordinator has dealt with the deaf
/// node, so the run would show nothing about it. Holding back only the last round keeps the
/// earlier rounds running alongside the flood, which is what the load is meant to show.
struct DeafGate<'a>(&'a watch::Sender<bool>);

impl Drop for DeafGate<'_> {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

#[derive(Default)]
struct Log {
    admitted: usize,
    last_welcome: Duration,
    rounds: u32,
    seen: BTreeMap<u32, RoundSeen>,
    honest_refused: u32,
    bytes_up: u64,
    bytes_down: u64,
    failures: Vec<String>,
    reconnects: u32,
    deaf_outcome: Option<String>,
    slow_outcome: Option<String>,
    /// Round closes the first node saw, for sampling memory at rounds 10 and 100.
    closes: Vec<(u32, Instant)>,
}

impl Shared {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn drive(
    config: &LoadConfig,
    ca: &Ca,
    addr: SocketAddr,
    roles: Vec<Role>,
    identities: Vec<TlsIdentity>,
    monitor: &Monitor,
) -> anyhow::Result<LoadReport> {
    let mut report = LoadReport {
        nodes: roles.len(),
        honest: roles.iter().filter(|r| **r == Role::Honest).count(),
        idle: monitor.now(),
        ..LoadReport::default()
    };
    let wall = Instant::now();
    let endpoints: Vec<quinn::Endpoint> = (0..roles.len().div_ceil(NODES_PER_ENDPOINT).max(1))
        .map(|_| fd_transport::bare_client_endpoint(SocketAddr::from(([127, 0, 0, 1], 0))))
        .collect::<Result<_, _>>()?;
    let mut holds = Vec::new();
    if config.hogs > 0 {
        for i in 0..config.hogs {
            let tls = identity(ca, &format!("hog-{i}"))?;
            holds.push(tokio::spawn(hog(endpoints[0].clone(), tls, addr)));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        report.after_hogs = Some(monitor.now());
    }
    if config.foreign > 0 {
        report.foreign_admitted = foreign(&endpoints[0], ca, addr, config.foreign).await?;
        report.after_foreign = Some(monitor.now());
    }
    let shared = Arc::new(Shared {
        addr,
        public_records: config.public_records,
        classes: config.classes,
        started: Instant::now(),
        handshakes: Semaphore::new(config.connect_concurrency.max(1)),
        log: Mutex::new(Log::default()),
        last_round: config.rounds.saturating_sub(1),
        deaf_settled: watch::Sender::new(!config.deaf),
        // Half the round deadline: the honest answers still arrive in time if the coordinator
        // never deals with the deaf node (the report then says how the deaf node ended).
        deaf_wait: Duration::from_secs(config.round_timeout_secs) / 2,
    });
    let mut tasks = Vec::new();
    for (i, (role, tls)) in roles.into_iter().zip(identities).enumerate() {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let cfg = client_config(&tls)?;
        let secure = if config.secure {
            Some(SecureIdentity::new(&tls, None, 1)?)
        } else {
            None
        };
        tasks.push(tokio::spawn(node(
            i,
            role,
            endpoint,
            cfg,
            secure,
            shared.clone(),
        )));
    }
    // Sample memory when the first node sees rounds 10 and 100 close, while the nodes run.
    let sampler = {
        let shared = shared.clone();
        let latest = monitor.latest.clone();
        tokio::spawn(async move {
            let mut at = BTreeMap::new();
            loop {
                tokio::time::sleep(SAMPLE_EVERY).await;
                let closes = shared.log().closes.clone();
                for (round, _) in closes {
                    if (round + 1 == 10 || round + 1 == 100) && !at.contains_key(&(round + 1)) {
                        let s = *latest.lock().unwrap_or_else(|p| p.into_inner());
                        at.insert(round + 1, s);
                    }
                }
                if shared.log().rounds > 0 {
                    return at;
                }
            }
        })
    };
    for t in tasks {
        t.await?;
    }
    report.at_round = sampler.await?;
    for h in &holds {
        h.abort();
    }
    for h in holds {
        // A hog still held is cancelled above; one the coordinator closed says how.
        if let Ok(outcome) = h.await {
            report.hog_outcomes.push(outcome);
        }
    }
    let log = std::mem::take(&mut *shared.log());
    report.admitted = log.admitted;
    report.admission = log.last_welcome;
    report.rounds = log.rounds;
    report.seen = log.seen;
    report.honest_refused = log.honest_refused;
    report.bytes_up = log.bytes_up;
    report.bytes_down = log.bytes_down;
    report.failures = log.failures;
    report.reconnects = log.reconnects;
    report.deaf_outcome = log.deaf_outcome;
    report.slow_outcome = log.slow_outcome;
    report.wall = wall.elapsed();
    Ok(report)
}

/// A connection with a valid certificate that announces a 32 MiB first frame and holds on;
/// returns how the coordinator ended it.
async fn hog(endpoint: quinn::Endpoint, tls: TlsIdentity, addr: SocketAddr) -> String {
    let Ok(cfg) = client_config(&tls) else {
        return "no client config".into();
    };
    let connection = match endpoint.connect_with(cfg, addr, "localhost") {
        Ok(c) => match c.await {
            Ok(c) => c,
            Err(e) => return format!("handshake failed: {e}"),
        },
        Err(e) => return format!("cannot connect: {e}"),
    };
    if let Ok((mut send, _recv)) = connection.open_bi().await {
        let _ = send
            .write_all(&(DEFAULT_MAX_FRAME_LEN as u32).to_be_bytes())
            .await;
        // As much of the announced frame as flow control lets through.
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..16 {
            if send.write_all(&chunk).await.is_err() {
                break;
            }
        }
    }
    connection.closed().await.to_string()
}

/// Runs `count` handshakes with certificates from a foreign CA, 100 at a time; returns how many
/// connections the coordinator left open (it should close every one).
async fn foreign(
    endpoint: &quinn::Endpoint,
    ca: &Ca,
    addr: SocketAddr,
    count: usize,
) -> anyhow::Result<usize> {
    let other = Ca::generate("foreign")?;
    let id = other.issue_node("intruder")?;
    // Trusts the real coordinator, but holds a certificate the federation CA never signed.
    let cfg = client_config(&TlsIdentity {
        ca_pem: ca.cert_pem(),
        cert_pem: id.cert_pem,
        key_pem: id.key_pem,
    })?;
    let mut open = 0;
    let mut left = count;
    while left > 0 {
        let batch = left.min(100);
        left -= batch;
        let mut attempts = Vec::new();
        for _ in 0..batch {
            let connecting = endpoint.connect_with(cfg.clone(), addr, "localhost")?;
            attempts.push(tokio::spawn(async move {
                // TLS 1.3 lets the client finish first; the coordinator then refuses it.
                match connecting.await {
                    Ok(c) => tokio::time::timeout(Duration::from_secs(5), c.closed())
                        .await
                        .is_err(),
                    Err(_) => false,
                }
            }));
        }
        for a in attempts {
            if a.await? {
                open += 1;
            }
        }
    }
    Ok(open)
}

/// What a lightweight node's connection ended with.
enum Ended {
    /// Finished arrived: the node is done.
    Finished,
    /// The coordinator closed it with a code that invites a reconnect.
    Reconnect(String),
    /// Anything else: the node gives up.
    Failed(String),
}

async fn node(
    i: usize,
    role: Role,
    endpoint: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    secure: Option<SecureIdentity>,
    shared: Arc<Shared>,
) {
    let mut welcomed_once = false;
    let _gate = (role == Role::Deaf).then(|| DeafGate(&shared.deaf_settled));
    loop {
        let connection = match join(&endpoint, &cfg, &shared).await {
            Ok(c) => c,
            Err(why) => {
                match role {
                    Role::Honest => shared.log().failures.push(format!("node-{i:05}: {why}")),
                    // Its reconnect may come after the federation is over.
                    Role::Slow(_) => shared.log().slow_outcome = Some(format!("rejoin: {why}")),
                    Role::Deaf => {}
                }
                return;
            }
        };
        let ended = match role {
            Role::Deaf => {
                let outcome = deaf(&connection, &shared, &mut welcomed_once).await;
                shared.log().deaf_outcome = Some(outcome);
                return;
            }
            Role::Honest => {
                let who = Player {
                    i,
                    delay: None,
                    secure: secure.as_ref(),
                };
                play(who, &connection, &shared, &mut welcomed_once).await
            }
            Role::Slow(d) => {
                let who = Player {
                    i,
                    delay: Some(d),
                    secure: secure.as_ref(),
                };
                play(who, &connection, &shared, &mut welcomed_once).await
            }
        };
        match ended {
            Ended::Finished => {
                if matches!(role, Role::Slow(_)) {
                    shared.log().slow_outcome = Some("finished".into());
                }
                return;
            }
            Ended::Reconnect(why) => {
                if role == Role::Honest {
                    shared
                        .log()
                        .failures
                        .push(format!("node-{i:05} was closed: {why}"));
                    return;
                }
                shared.log().reconnects += 1;
            }
            // The slow node's late answers may find the federation over: not a failure.
            Ended::Failed(why) if matches!(role, Role::Slow(_)) => {
                shared.log().slow_outcome = Some(why);
                return;
            }
            Ended::Failed(why) => {
                shared.log().failures.push(format!("node-{i:05}: {why}"));
                return;
            }
        }
    }
}

/// Connects, retrying for [`JOIN_RETRY`] with fd-client's back-off.
async fn join(
    endpoint: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    shared: &Shared,
) -> Result<quinn::Connection, String> {
    let give_up = Instant::now() + JOIN_RETRY;
    let mut backoff = BACKOFF_FIRST;
    loop {
        let attempt = {
            let _permit = shared
                .handshakes
                .acquire()
                .await
                .map_err(|e| e.to_string())?;
            match endpoint.connect_with(cfg.clone(), shared.addr, "localhost") {
                Ok(connecting) => connecting.await.map_err(|e| e.to_string()),
                Err(e) => return Err(e.to_string()),
            }
        };
        match attempt {
            Ok(c) => return Ok(c),
            Err(why) if Instant::now() + backoff > give_up => {
                return Err(format!(
                    "no connection within {} s: {why}",
                    JOIN_RETRY.as_secs()
                ));
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Opens the stream and says Hello; returns it once Welcome arrives.
async fn hello(
    connection: &quinn::Connection,
    shared: &Shared,
    welcomed_once: &mut bool,
) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    let hello = Message::Hello(Hello {
        public_records: shared.public_records,
        classes: shared.classes,
        private_records: 100,
        public_sha256: None,
        private: false,
    });
    write_message(&mut send, &hello, DEFAULT_MAX_FRAME_LEN)
        .await
        .map_err(|e| e.to_string())?;
    match read_message(&mut recv, DEFAULT_MAX_FRAME_LEN).await {
        Ok(Some((Message::Welcome(_), _))) => {
            if !*welcomed_once {
                *welcomed_once = true;
                let mut log = shared.log();
                log.admitted += 1;
                log.last_welcome = log.last_welcome.max(shared.started.elapsed());
            }
            Ok((send, recv))
        }
        Ok(Some((other, _))) => Err(format!("answered Hello with {}", other.kind())),
        Ok(None) => Err("the stream ended before Welcome".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Who plays a connection: node `i`, answering after `delay` (if any), with what it needs for
/// secure rounds (if the federation runs them).
struct Player<'a> {
    i: usize,
    delay: Option<Duration>,
    secure: Option<&'a SecureIdentity>,
}

/// Plays one connection honestly until it ends.
async fn play(
    who: Player<'_>,
    connection: &quinn::Connection,
    shared: &Shared,
    welcomed_once: &mut bool,
) -> Ended {
    let Player { i, delay, secure } = who;
    let (mut send, mut recv) = match hello(connection, shared, welcomed_once).await {
        Ok(s) => s,
        Err(why) => return Ended::Failed(why),
    };
    let mut opened = BTreeMap::new();
    let mut round_state: Option<SecureState> = None;
    let mut secure_len = 0;
    let (mut up, mut down) = (0u64, 0u64);
    let ended = loop {
        let message = match read_message(&mut recv, DEFAULT_MAX_FRAME_LEN).await {
            Ok(Some((m, n))) => {
                down += n as u64;
                m
            }
            Ok(None) => break Ended::Failed("the stream ended before Finished".into()),
            Err(e) => break ended_by(&e),
        };
        // A secure round's step: what to send, if anything.
        let step = match (&message, secure) {
            (Message::RoundOpen(open), Some(id)) if open.secure.is_some() => {
                let terms = open.secure.as_ref().expect("checked");
                opened.insert(open.round, Instant::now());
                secure_len = open.query_ids.len() * usize::from(shared.classes);
                SecureState::open(id, open, terms, usize::from(shared.classes))
                    .map(|(state, advert)| {
                        round_state = Some(state);
                        Some(advert)
                    })
                    .map_err(|e| e.to_string())
            }
            (Message::Roster { adverts, .. }, Some(id)) => match round_state.as_mut() {
                Some(state) => state
                    .roster(id, adverts)
                    .map(Some)
                    .map_err(|e| e.to_string()),
                None => Err("Roster outside a secure round".into()),
            },
            (Message::Inbox { shares, .. }, Some(_)) => match round_state.as_mut() {
                Some(state) => {
                    state.inbox(shares.clone());
                    // A vector of zeros: the load is the protocol's, not the labels'.
                    state.release(vec![0; secure_len], 1, None);
                    state.try_mask().map_err(|e| e.to_string())
                }
                None => Err("Inbox outside a secure round".into()),
            },
            (Message::Unmask { survivors, .. }, Some(_)) => match round_state.as_mut() {
                Some(state) => state.unmask(survivors).map(Some),
                None => Err("Unmask outside a secure round".into()),
            },
            _ => Ok(None),
        };
        match step {
            Ok(Some(reply)) => {
                match write_message(&mut send, &reply, DEFAULT_MAX_FRAME_LEN).await {
                    Ok(n) => up += n as u64,
                    Err(e) => break ended_by(&e),
                }
                continue;
            }
            Ok(None)
                if matches!(
                    message,
                    Message::Roster { .. } | Message::Inbox { .. } | Message::Unmask { .. }
                ) =>
            {
                continue;
            }
            Ok(None) => {}
            Err(why) => break Ended::Failed(format!("secure round: {why}")),
        }
        match message {
            Message::RoundOpen(open) => {
                if open.round == shared.last_round && delay.is_none() {
                    let mut settled = shared.deaf_settled.subscribe();
                    let _ = tokio::time::timeout(shared.deaf_wait, settled.wait_for(|s| *s)).await;
                }
                // After the wait above: the latency is the coordinator's, not the harness's.
                opened.insert(open.round, Instant::now());
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                let c = Message::Contribution(Contribution {
                    round: open.round,
                    labels: SoftLabels {
                        classes: shared.classes,
                        probs: vec![
                            1.0 / f32::from(shared.classes);
                            open.query_ids.len() * usize::from(shared.classes)
                        ],
                        query_ids: open.query_ids,
                    },
                    receipt: None,
                });
                match write_message(&mut send, &c, DEFAULT_MAX_FRAME_LEN).await {
                    Ok(n) => up += n as u64,
                    Err(e) => break ended_by(&e),
                }
            }
            Message::RoundClosed(closed) => {
                if i == 0
                    && let Some(at) = opened.remove(&closed.round)
                {
                    let mut log = shared.log();
                    log.seen.insert(
                        closed.round,
                        RoundSeen {
                            latency: at.elapsed(),
                            accepted: closed.accepted,
                            asked: closed.asked,
                        },
                    );
                    log.closes.push((closed.round, Instant::now()));
                }
            }
            Message::Refused { .. } => {
                if delay.is_none() {
                    shared.log().honest_refused += 1;
                }
            }
            Message::Finished { rounds, .. } => {
                if i == 0 {
                    shared.log().rounds = rounds;
                }
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
                connection.close(0u32.into(), b"done");
                break Ended::Finished;
            }
            Message::Error { message } => break Ended::Failed(format!("Error: {message}")),
            other => break Ended::Failed(format!("unexpected {}", other.kind())),
        }
    };
    if delay.is_none() {
        let mut log = shared.log();
        log.bytes_up += up;
        log.bytes_down += down;
    }
    ended
}

/// How a transport error ends a node's connection.
fn ended_by(e: &TransportError) -> Ended {
    use quinn::{ConnectionError, ReadError, WriteError};
    match e {
        TransportError::Read(ReadError::ConnectionLost(ConnectionError::ApplicationClosed(a)))
        | TransportError::Write(WriteError::ConnectionLost(ConnectionError::ApplicationClosed(
            a,
        ))) if close::reconnect_helps(a.error_code.into_inner()) => {
            Ended::Reconnect(String::from_utf8_lossy(&a.reason).into_owned())
        }
        other => Ended::Failed(other.to_string()),
    }
}

/// Joins, reads round 0's RoundOpen, then sends [`DEAF_FRAMES`] contributions to a round that
/// is not open and reads nothing; returns how the coordinator ended the connection.
async fn deaf(connection: &quinn::Connection, shared: &Shared, welcomed_once: &mut bool) -> String {
    let (mut send, mut recv) = match hello(connection, shared, welcomed_once).await {
        Ok(s) => s,
        Err(why) => return format!("not admitted: {why}"),
    };
    // Waits for round 0 (so the federation has started with it), then reads nothing more.
    match read_message(&mut recv, DEFAULT_MAX_FRAME_LEN).await {
        Ok(Some((Message::RoundOpen(_), _))) => {}
        Ok(other) => return format!("expected RoundOpen, got {:?}", other.map(|(m, _)| m.kind())),
        Err(e) => return format!("lost before round 0: {e}"),
    }
    let junk = Message::Contribution(Contribution {
        round: u32::MAX,
        labels: SoftLabels {
            classes: shared.classes,
            query_ids: vec![0],
            probs: vec![1.0 / f32::from(shared.classes); usize::from(shared.classes)],
        },
        receipt: None,
    });
    for _ in 0..DEAF_FRAMES {
        if write_message(&mut send, &junk, DEFAULT_MAX_FRAME_LEN)
            .await
            .is_err()
        {
            break;
        }
    }
    match connection.closed().await {
        quinn::ConnectionError::ApplicationClosed(a) => format!(
            "closed by the coordinator with code {} ({})",
            a.error_code,
            String::from_utf8_lossy(&a.reason)
        ),
        other => other.to_string(),
    }
}

/// The report as a table for people.
pub fn render(config: &LoadConfig, r: &LoadReport) -> String {
    let mut out = String::new();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut latencies: Vec<f64> = r.seen.values().map(|s| s.latency.as_secs_f64()).collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let full = r
        .seen
        .values()
        .filter(|s| s.accepted as usize >= r.honest)
        .count();
    out += &format!(
        "nodes {} (honest {}{}{}), rounds {} of {}, {} x {} public labels, round deadline {} s\n",
        r.nodes,
        r.honest,
        if config.deaf { ", 1 deaf" } else { "" },
        config
            .slow_secs
            .map_or(String::new(), |s| format!(", 1 answering after {s} s")),
        r.rounds,
        config.rounds,
        config.public_records,
        config.classes,
        config.round_timeout_secs
    );
    out += &format!(
        "admitted {} of {} in {:.1} s; wall {:.1} s; coordinator exit {}\n",
        r.admitted,
        r.nodes,
        r.admission.as_secs_f64(),
        r.wall.as_secs_f64(),
        if r.coordinator_ok { "ok" } else { "FAILED" }
    );
    out += &format!(
        "round latency (first node): median {:.3} s, p90 {:.3} s, max {:.3} s\n",
        pct(0.5),
        pct(0.9),
        pct(1.0)
    );
    out += &format!(
        "rounds accepting every honest contribution: {full} of {}; honest contributions \
         refused: {}; reconnects: {}\n",
        r.seen.len(),
        r.honest_refused,
        r.reconnects
    );
    let node_rounds = (r.honest as f64 * f64::from(r.rounds.max(1))).max(1.0);
    out += &format!(
        "bytes per honest node per round: up {:.0}, down {:.0}{}\n",
        r.bytes_up as f64 / node_rounds,
        r.bytes_down as f64 / node_rounds,
        if config.secure {
            " (secure aggregation)"
        } else {
            ""
        }
    );
    out += &format!(
        "coordinator: CPU {:.1} s, peak RSS {:.1} MiB (idle {:.1} MiB)\n",
        r.last.cpu_secs,
        mib(r.last.peak_kib),
        mib(r.idle.rss_kib)
    );
    for (round, s) in &r.at_round {
        out += &format!("RSS after {round} rounds: {:.1} MiB\n", mib(s.rss_kib));
    }
    if let (Some(a), Some(b)) = (r.at_round.get(&10), r.at_round.get(&100)) {
        out += &format!(
            "RSS after 100 rounds / after 10: {:.3}\n",
            b.rss_kib as f64 / a.rss_kib as f64
        );
    }
    if let Some(s) = r.after_hogs {
        out += &format!(
            "{} connections announcing 32 MiB before Hello: RSS {:.1} -> {:.1} MiB (+{:.1})\n",
            config.hogs,
            mib(r.idle.rss_kib),
            mib(s.rss_kib),
            mib(s.rss_kib.saturating_sub(r.idle.rss_kib)),
        );
        let mut ends: BTreeMap<&str, usize> = BTreeMap::new();
        for o in &r.hog_outcomes {
            *ends.entry(o).or_default() += 1;
        }
        for (how, n) in ends {
            out += &format!("  {n} ended: {how}\n");
        }
    }
    if let Some(s) = r.after_foreign {
        out += &format!(
            "{} foreign-CA handshakes ({} left open): RSS {:.1} -> {:.1} MiB\n",
            config.foreign,
            r.foreign_admitted,
            mib(r.after_hogs.unwrap_or(r.idle).rss_kib),
            mib(s.rss_kib)
        );
    }
    if config.deaf {
        match &r.deaf_dropped {
            Some(why) => out += &format!("deaf node dropped by the coordinator: {why}\n"),
            None => out += "deaf node dropped by the coordinator: not in its log\n",
        }
    }
    if let Some(d) = &r.deaf_outcome {
        out += &format!("deaf node saw: {d}\n");
    }
    if let Some(d) = &r.slow_outcome {
        out += &format!("slow node: {d} (reconnected {} times)\n", r.reconnects);
    }
    for f in r.failures.iter().take(10) {
        out += &format!("FAILED {f}\n");
    }
    if r.failures.len() > 10 {
        out += &format!("... and {} more failures\n", r.failures.len() - 10);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as `fd-coordinator` writes it to a file (tracing's colours included), copied from
    /// a run of `fd-load --deaf`.
    const COLOURED: &str = "\u{1b}[2m2026-12-02T04:02:38.778836Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m \
        \u{1b}[2mfd_coordinator::rounds\u{1b}[0m\u{1b}[2m:\u{1b}[0m node gone: cannot send Refused: \
        64 messages wait for it: it does not read them; closed \u{1b}[3mnode\u{1b}[0m\u{1b}[2m=\
        \u{1b}[0m\"node-00029\"";

    #[test]
    fn the_reason_a_node_left_is_read_from_a_coloured_log_line() {
        let log = format!("{COLOURED}\nanother line\n");
        assert_eq!(
            gone_reason(&log, "node-00029").as_deref(),
            Some("cannot send Refused: 64 messages wait for it: it does not read them; closed")
        );
        // Another node's departure is not this one's.
        assert_eq!(gone_reason(&log, "node-00002"), None);
    }

    #[test]
    fn a_plain_log_line_reads_the_same() {
        let plain = "2026-12-02T04:02:38Z WARN fd_coordinator::rounds: node gone: did not take \
                     its messages within 8 s; closed node=\"node-00003\"";
        assert_eq!(strip_ansi(plain), plain);
        assert_eq!(
            gone_reason(plain, "node-00003").as_deref(),
            Some("did not take its messages within 8 s; closed")
        );
    }

    #[test]
    fn the_deaf_node_is_the_last() {
        let config = LoadConfig {
            coordinator: PathBuf::new(),
            nodes: 30,
            rounds: 3,
            public_records: 100,
            classes: 10,
            queries_per_round: 0,
            round_timeout_secs: 8,
            deaf: true,
            slow_secs: Some(1),
            hogs: 0,
            foreign: 0,
            connect_concurrency: 1,
            secure: false,
            coordinator_log: None,
        };
        assert_eq!(deaf_name(&config).as_deref(), Some("node-00029"));
        let none = LoadConfig {
            deaf: false,
            ..config
        };
        assert_eq!(deaf_name(&none), None);
    }
}

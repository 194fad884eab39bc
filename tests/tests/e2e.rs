//! End to end: the real `fd-coordinator` and several real `fd-client` processes, certificates
//! from the real `fd-certs`, talking over loopback QUIC with mutual TLS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fd_tests::{Process, bin, run_ok, write_blobs};

/// Generous: three tiny nodes need a few seconds; a loaded CI machine may need more.
const LIMIT: Duration = Duration::from_secs(180);
const ROUNDS: u32 = 3;
const PUBLIC_ROWS: usize = 60;

/// A federation's files in a temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let fixture = Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let pki = fixture.path("pki");
        let certs = |args: &[&str]| {
            run_ok(
                Command::new(bin("fd-certs"))
                    .args(args)
                    .env_remove("FD_CERTS_DIR"),
            )
            .expect("fd-certs")
        };
        let pki_arg = pki.to_str().expect("utf-8");
        certs(&["init", "--dir", pki_arg, "--federation", "e2e"]);
        certs(&[
            "issue",
            "--dir",
            pki_arg,
            "--server",
            "--name",
            "coordinator",
            "--san",
            "localhost,127.0.0.1",
        ]);
        write_blobs(
            &fixture.path("public.csv"),
            PUBLIC_ROWS,
            &[0, 1, 2],
            99,
            false,
        );
        fixture
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the coordinator on an ephemeral port; returns it and the address it bound.
    fn coordinator(&self, nodes: usize) -> (Process, String) {
        self.coordinator_with(nodes, "")
    }

    /// Like [`Fixture::coordinator`], with extra lines in `federation.toml`.
    fn coordinator_with(&self, nodes: usize, extra: &str) -> (Process, String) {
        let config = self.coordinator_config(nodes, ROUNDS, extra);
        self.start_coordinator(&config)
    }

    /// Writes `federation.toml`.
    fn coordinator_config(&self, nodes: usize, rounds: u32, extra: &str) -> PathBuf {
        let config = self.path("federation.toml");
        std::fs::write(
            &config,
            format!(
                "name = \"e2e\"\nlisten = \"127.0.0.1:0\"\nca = \"pki/ca.pem\"\n\
                 cert = \"pki/coordinator.pem\"\nkey = \"pki/coordinator.key\"\nnodes = {nodes}\n\
                 rounds = {rounds}\npublic_records = {PUBLIC_ROWS}\nclasses = 3\n\
                 join_timeout_secs = 120\nround_timeout_secs = 120\n\
                 summary_json = \"summary.json\"\n{extra}"
            ),
        )
        .expect("write federation.toml");
        config
    }

    /// Starts the coordinator on `config`; returns it and the address it bound.
    fn start_coordinator(&self, config: &Path) -> (Process, String) {
        let mut process = Process::start(
            "fd-coordinator",
            Command::new(bin("fd-coordinator"))
                .arg("--config")
                .arg(config),
        )
        .expect("start coordinator");
        let addr = process
            .read_line_starting("fd-coordinator listening on ")
            .expect("coordinator address");
        (process, addr)
    }

    /// Issues a node certificate from the CA in `pki_dir` and writes the node's data and config.
    fn node(&self, name: &str, pki_dir: &str, classes: &[u32], seed: u64, addr: &str) -> PathBuf {
        self.node_with(name, pki_dir, classes, seed, addr, "")
    }

    /// Like [`Fixture::node`], with extra TOML appended to the node's config.
    fn node_with(
        &self,
        name: &str,
        pki_dir: &str,
        classes: &[u32],
        seed: u64,
        addr: &str,
        extra: &str,
    ) -> PathBuf {
        let pki = self.path(pki_dir);
        run_ok(
            Command::new(bin("fd-certs"))
                .args(["issue", "--dir"])
                .arg(&pki)
                .args(["--name", name])
                .env_remove("FD_CERTS_DIR"),
        )
        .expect("issue node certificate");
        write_blobs(&self.path(&format!("{name}.csv")), 80, classes, seed, true);
        let config = self.path(&format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "coordinator = \"{addr}\"\nca = \"{pki_dir}/ca.pem\"\n\
                 cert = \"{pki_dir}/{name}.pem\"\nkey = \"{pki_dir}/{name}.key\"\n\
                 private_csv = \"{name}.csv\"\npublic_csv = \"public.csv\"\nclasses = 3\n\
                 output_dir = \"out-{name}\"\nseed = {seed}\n\
                 [training]\nhidden = [16]\nlocal_steps = 40\nsteps_per_round = 20\n{extra}"
            ),
        )
        .expect("write node.toml");
        config
    }
}

impl Fixture {
    /// Starts one client per node (each seeing the given two classes, seeds from `seed`), with
    /// `extra` appended to every node config; waits for every client and then the coordinator,
    /// failing the test if any of them exits unsuccessfully. Returns the coordinator's output.
    fn federate(
        &self,
        coordinator: Process,
        addr: &str,
        nodes: &[(&str, [u32; 2])],
        seed: u64,
        extra: &str,
    ) -> String {
        let clients: Vec<Process> = nodes
            .iter()
            .enumerate()
            .map(|(i, (name, classes))| {
                let config = self.node_with(name, "pki", classes, seed + i as u64, addr, extra);
                start_client(name, &config)
            })
            .collect();
        for client in clients {
            let name = client.name.clone();
            let (status, output) = client.wait(LIMIT).expect("client finishes");
            assert!(status.success(), "{name} failed:\n{output}");
        }
        let (status, output) = coordinator.wait(LIMIT).expect("coordinator finishes");
        assert!(status.success(), "coordinator failed:\n{output}");
        output
    }
}

fn start_client(name: &str, config: &Path) -> Process {
    Process::start(
        name,
        Command::new(bin("fd-client")).arg("--config").arg(config),
    )
    .expect("start client")
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("valid JSON")
}

/// Checks a finished node's outputs: report, and a loadable model.
fn assert_node_finished(fixture: &Fixture, name: &str) {
    let out = fixture.path(&format!("out-{name}"));
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["node"], name, "identity comes from the certificate");
    assert_eq!(report["rounds"], ROUNDS);
    let accuracy = report["accuracy"].as_f64().expect("accuracy");
    assert!((0.0..=1.0).contains(&accuracy), "{accuracy}");
    assert!(
        report["privacy"]
            .as_str()
            .expect("privacy")
            .contains("non-private")
    );
    assert!(out.join("model.safetensors").exists());
    assert!(out.join("model.json").exists());
}

#[test]
fn three_client_processes_federate_and_report() {
    let fixture = Fixture::new();
    let (coordinator, addr) = fixture.coordinator(3);
    // Non-IID: each node sees two of the three classes.
    let nodes = [
        ("hospital-a", [0, 1]),
        ("hospital-b", [1, 2]),
        ("bank-c", [0, 2]),
    ];
    let _ = fixture.federate(coordinator, &addr, &nodes, 10, "");
    for (name, _) in nodes {
        assert_node_finished(&fixture, name);
    }
    // The student a run wrote is usable: predict on the public file, evaluate on a labelled one.
    let model = fixture.path("out-hospital-a");
    let predictions = fixture.path("predictions.csv");
    run_ok(
        Command::new(bin("fd-client"))
            .arg("predict")
            .arg("--model")
            .arg(&model)
            .arg("--input")
            .arg(fixture.path("public.csv"))
            .arg("--output")
            .arg(&predictions),
    )
    .expect("predict");
    let text = std::fs::read_to_string(&predictions).expect("predictions");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("predicted,p0,p1,p2"));
    assert_eq!(lines.count(), PUBLIC_ROWS, "one prediction per public row");
    let evaluated = run_ok(
        Command::new(bin("fd-client"))
            .arg("evaluate")
            .arg("--model")
            .arg(&model)
            .arg("--input")
            .arg(fixture.path("bank-c.csv")),
    )
    .expect("evaluate");
    assert!(
        evaluated.contains("accuracy") && evaluated.contains("macro-F1"),
        "{evaluated}"
    );
    let summary = read_json(&fixture.path("summary.json"));
    assert_eq!(summary["rounds"], ROUNDS);
    // Every round aggregated all three nodes.
    assert_eq!(summary["accepted_per_round"], serde_json::json!([3, 3, 3]));
    assert_eq!(summary["target_records"], PUBLIC_ROWS);
    assert!(summary["bytes_up"].as_u64().expect("bytes_up") > 0);
}

/// Students of different architectures interoperate through soft labels alone, and a CNN
/// student a run wrote is rebuilt from its model.json by `predict` and `evaluate`.
#[test]
fn mlp_and_cnn_nodes_federate_and_the_cnn_student_predicts() {
    let fixture = Fixture::new();
    let (coordinator, addr) = fixture.coordinator(2);
    let mlp = fixture.node("mlp-node", "pki", &[0, 1], 20, &addr);
    // The blobs have two features: read them as 1x2 images, convolved by a 1x1 kernel.
    let cnn = fixture.node_with(
        "cnn-node",
        "pki",
        &[1, 2],
        21,
        &addr,
        "architecture = \"cnn\"\nimage = { height = 1, width = 2 }\n\
         [training.cnn]\nchannels = [4]\nkernel = 1\n",
    );
    let clients = [
        start_client("mlp-node", &mlp),
        start_client("cnn-node", &cnn),
    ];
    for client in clients {
        let name = client.name.clone();
        let (status, output) = client.wait(LIMIT).expect("client finishes");
        assert!(status.success(), "{name} failed:\n{output}");
    }
    let (status, output) = coordinator.wait(LIMIT).expect("coordinator finishes");
    assert!(status.success(), "coordinator failed:\n{output}");
    for name in ["mlp-node", "cnn-node"] {
        assert_node_finished(&fixture, name);
    }

    let out = fixture.path("out-cnn-node");
    let card = read_json(&out.join("model.json"));
    assert_eq!(card["student"]["conv"]["channels"], serde_json::json!([4]));
    let report = read_json(&out.join("report.json"));
    let metrics = &report["student_metrics"];
    assert_eq!(metrics["student"], "cnn[4]");
    // The default local teacher, mlp[512,256] on 2 inputs and 3 classes:
    // 2*512+512 + 512*256+256 + 256*3+3 = 133635 parameters; the student 1*4+4 + 8*3+3 = 35.
    assert_eq!(metrics["teacher_parameters"], 133635);
    assert_eq!(metrics["student_parameters"], 35);
    for key in ["compression_ratio", "speedup", "cka", "macro_f1"] {
        assert!(metrics[key].is_number(), "student_metrics.{key}: {metrics}");
    }

    let predictions = fixture.path("cnn-predictions.csv");
    run_ok(
        Command::new(bin("fd-client"))
            .arg("predict")
            .arg("--model")
            .arg(&out)
            .arg("--input")
            .arg(fixture.path("public.csv"))
            .arg("--output")
            .arg(&predictions),
    )
    .expect("predict with a CNN student");
    let text = std::fs::read_to_string(&predictions).expect("predictions");
    assert_eq!(
        text.lines().count(),
        PUBLIC_ROWS + 1,
        "header and one row each"
    );
    let evaluated = run_ok(
        Command::new(bin("fd-client"))
            .arg("evaluate")
            .arg("--model")
            .arg(&out)
            .arg("--input")
            .arg(fixture.path("mlp-node.csv")),
    )
    .expect("evaluate a CNN student");
    assert!(evaluated.contains("macro-F1"), "{evaluated}");
}

#[test]
fn client_from_another_ca_is_refused_and_federation_completes() {
    let fixture = Fixture::new();
    // A second, unrelated CA, as an attacker (or a misconfigured node) would have.
    let rogue = fixture.path("rogue");
    run_ok(
        Command::new(bin("fd-certs"))
            .args(["init", "--dir"])
            .arg(&rogue)
            .args(["--federation", "rogue"])
            .env_remove("FD_CERTS_DIR"),
    )
    .expect("rogue CA");
    // The rogue node trusts the real federation CA (so it will accept the coordinator), but
    // its own certificate is signed by the rogue CA.
    std::fs::copy(fixture.path("pki/ca.pem"), rogue.join("real-ca.pem")).expect("copy ca");

    let (coordinator, addr) = fixture.coordinator(2);
    // The intruder tries first, while the coordinator is still waiting for nodes.
    let intruder_config = fixture.node("intruder", "rogue", &[0, 1, 2], 7, &addr);
    let text = std::fs::read_to_string(&intruder_config).expect("read");
    std::fs::write(
        &intruder_config,
        text.replace("rogue/ca.pem", "rogue/real-ca.pem"),
    )
    .expect("write");
    let intruder = start_client("intruder", &intruder_config);
    let (status, output) = intruder.wait(LIMIT).expect("intruder exits");
    assert!(
        !status.success(),
        "the intruder must not be admitted:\n{output}"
    );
    assert!(output.contains("not admitted"), "{output}");

    let nodes = [("hospital-a", [0, 1]), ("hospital-b", [1, 2])];
    let output = fixture.federate(coordinator, &addr, &nodes, 20, "");
    assert!(
        output.contains("refused connection"),
        "the refusal is logged:\n{output}"
    );
    let summary = read_json(&fixture.path("summary.json"));
    let names: Vec<&str> = summary["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["node"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        ["hospital-a", "hospital-b"],
        "the intruder never joined"
    );
    assert!(!fixture.path("out-intruder/report.json").exists());
}

#[test]
fn private_nodes_charge_their_ledgers_and_the_coordinator_reports_spending() {
    let fixture = Fixture::new();
    let (coordinator, addr) = fixture.coordinator_with(2, "require_privacy = true\n");
    let privacy = "[privacy]\nmode = \"shards\"\nepsilon = 3.0\ndelta = 1e-5\nshards = 4\n";
    let nodes = [("hospital-a", [0, 1]), ("hospital-b", [1, 2])];
    let printed = fixture.federate(coordinator, &addr, &nodes, 30, privacy);

    let summary = read_json(&fixture.path("summary.json"));
    for node in summary["nodes"].as_array().expect("nodes") {
        let spending = &node["privacy"];
        assert_eq!(spending["unit"], "record");
        assert_eq!(spending["releases"], ROUNDS);
        let eps = spending["epsilon_total"].as_f64().expect("epsilon_total");
        assert!(eps > 0.0 && eps <= 3.0, "{eps}");
        // The printed table has the same figure in its epsilon column.
        let name = node["node"].as_str().expect("name");
        let row = printed
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{printed}"));
        let last: f64 = row
            .split_whitespace()
            .last()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no epsilon in '{row}'"));
        assert!((last - eps).abs() < 1e-3, "{row} against {eps}");
    }
    assert!(printed.contains("epsilon"), "{printed}");
    for name in ["hospital-a", "hospital-b"] {
        let out = fixture.path(&format!("out-{name}"));
        let report = read_json(&out.join("report.json"));
        assert_eq!(report["privacy_unit"], "record");
        let spent = report["epsilon_spent"].as_f64().expect("epsilon_spent");
        assert!(spent > 0.0 && spent <= 3.0, "{spent}");
        assert_eq!(report["teachers"], 4);
        // The ledger is on disk next to the node's private data, not in its output directory:
        // the budget stays with the data whatever output directory a run uses.
        assert!(
            fixture
                .path(&format!("{name}.csv.privacy-ledger.sqlite"))
                .exists()
        );
        assert!(!out.join("privacy-ledger.sqlite").exists());
    }
}

/// Three private nodes on CSV files, one of them swamped by its own noise (two teachers and
/// epsilon 0.5: sigma far above the two votes it can cast). It says so before it spends
/// anything, does not let the target teach its student, and ends exactly where training alone
/// would have left it; `fd-client plan` prints the same warning without joining.
#[test]
fn a_swamped_private_node_warns_and_ends_no_worse_than_alone() {
    let fixture = Fixture::new();
    let (coordinator, addr) =
        fixture.coordinator_with(3, "require_privacy = true\nqueries_per_round = 5\n");
    let healthy = "[privacy]\nmode = \"shards\"\nepsilon = 8.0\ndelta = 1e-5\n";
    let swamped = "[privacy]\nmode = \"shards\"\nepsilon = 0.5\ndelta = 1e-5\nshards = 2\n";
    let nodes = [
        ("hospital-a", [0, 1], healthy),
        ("hospital-b", [1, 2], healthy),
        ("clinic-c", [0, 2], swamped),
    ];
    let configs: Vec<PathBuf> = nodes
        .iter()
        .enumerate()
        .map(|(i, (name, classes, privacy))| {
            fixture.node_with(name, "pki", classes, 40 + i as u64, &addr, privacy)
        })
        .collect();
    // The plan without joining: 5 queries a round for 3 rounds, as the coordinator will ask.
    let planned = (5 * ROUNDS).to_string();
    let plan = run_ok(
        Command::new(bin("fd-client"))
            .args(["plan", "--config"])
            .arg(&configs[2])
            .args(["--planned-queries", &planned, "--queries-per-round", "5"]),
    )
    .expect("fd-client plan");
    assert!(
        plan.contains("WARNING") && plan.contains("above the largest vote sum"),
        "{plan}"
    );
    let clients: Vec<Process> = nodes
        .iter()
        .zip(&configs)
        .map(|((name, _, _), config)| start_client(name, config))
        .collect();
    let mut outputs = Vec::new();
    for client in clients {
        let name = client.name.clone();
        let (status, output) = client.wait(LIMIT).expect("client finishes");
        assert!(status.success(), "{name} failed:\n{output}");
        outputs.push(output);
    }
    let (status, output) = coordinator.wait(LIMIT).expect("coordinator finishes");
    assert!(status.success(), "coordinator failed:\n{output}");

    let report = |name: &str| read_json(&fixture.path(&format!("out-{name}")).join("report.json"));
    let clinic = report("clinic-c");
    assert!(outputs[2].contains("privacy plan"), "{}", outputs[2]);
    assert!(
        outputs[2].contains("above the largest vote sum"),
        "{}",
        outputs[2]
    );
    assert!(outputs[2].contains("do no harm"), "{}", outputs[2]);
    assert_eq!(clinic["privacy_plan"]["swamped"], true);
    assert_eq!(clinic["target_trust"]["kept"], "local-only");
    let (kept, alone) = (
        clinic["accuracy"].as_f64().expect("accuracy"),
        clinic["local_only_acc"].as_f64().expect("local_only_acc"),
    );
    assert!(kept >= alone, "kept {kept} < local-only {alone}");
    for name in ["hospital-a", "hospital-b"] {
        let r = report(name);
        assert_eq!(r["privacy_plan"]["swamped"], false, "{name}");
        assert_eq!(r["target_trust"]["kept"], "federated", "{name}");
        // Nodes that trust the target check it by default: five cross-validation folds over
        // their private records (80 rows, more than the 25 a check needs).
        let check = &r["harm_check"];
        assert_eq!(check["folds"], 5, "{name}: {check}");
        let (accuracy, alone) = (
            r["accuracy"].as_f64().expect("accuracy"),
            r["local_only_acc"].as_f64().expect("local_only_acc"),
        );
        match check["kept"].as_str() {
            // Keeping the local-only student is keeping exactly the baseline.
            Some("local-only") => assert_eq!(accuracy, alone, "{name}: {check}"),
            Some("federated") => {
                let z = check["target_z"].as_f64().expect("target_z");
                assert!(z >= 1.645, "{name}: kept federated at target_z {z}");
            }
            other => panic!("{name}: kept {other:?}"),
        }
    }
}

#[test]
fn a_non_private_node_is_turned_away_by_a_federation_that_requires_privacy() {
    let fixture = Fixture::new();
    let (mut coordinator, addr) = fixture.coordinator_with(1, "require_privacy = true\n");
    let config = fixture.node("hospital-a", "pki", &[0, 1, 2], 40, &addr);
    let (status, output) = start_client("hospital-a", &config)
        .wait(LIMIT)
        .expect("client exits");
    assert!(!status.success());
    assert!(output.contains("requires differential privacy"), "{output}");
    // Refused at admission (its Hello says it is not private), so the coordinator never asks
    // it for a round and then waits out the round's deadline for it.
    coordinator
        .wait_for_stderr("rejected", 1)
        .expect("the coordinator rejects the node at admission");
    drop(coordinator);
}

/// Rounds of the crash test: enough that the run is still going when the test kills the
/// coordinator after its second committed round (a round of these tiny nodes takes about a
/// tenth of a second), and two queries a round so that no round overwrites another's target
/// rows (30 x 2 = all 60 public rows, each once).
const CRASH_ROUNDS: u32 = 30;

/// The committed state, read straight from the coordinator's database.
struct Committed {
    rounds: Vec<serde_json::Value>,
    target: Vec<(u32, Vec<u8>)>,
    contributions: Vec<(u32, String)>,
}

fn read_state(dir: &Path) -> Committed {
    let db = rusqlite::Connection::open_with_flags(
        dir.join("coordinator.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the state database");
    let rounds = db
        .prepare("SELECT record FROM rounds ORDER BY round")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("rounds")
        .iter()
        .map(|t| serde_json::from_str(t).expect("round record JSON"))
        .collect();
    let target = db
        .prepare("SELECT query, probs FROM target ORDER BY query")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("target");
    let contributions = db
        .prepare("SELECT round, node FROM contributions ORDER BY round, node")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("contributions");
    Committed {
        rounds,
        target,
        contributions,
    }
}

#[test]
fn coordinator_killed_mid_run_restarts_from_its_state_and_the_run_completes() {
    let fixture = Fixture::new();
    let config = fixture.coordinator_config(
        2,
        CRASH_ROUNDS,
        "queries_per_round = 2\nstate_dir = \"state\"\n",
    );
    let (mut coordinator, addr) = fixture.start_coordinator(&config);
    let nodes = [("hospital-a", [0, 1]), ("hospital-b", [1, 2])];
    let clients: Vec<Process> = nodes
        .iter()
        .enumerate()
        .map(|(i, (name, classes))| {
            let node = fixture.node(name, "pki", classes, 50 + i as u64, &addr);
            start_client(name, &node)
        })
        .collect();
    // Two rounds committed (the driver logs this after the store's transaction; "round closed"
    // comes from the state machine before the commit), then no chance to clean up.
    coordinator
        .wait_for_stderr("round committed", 2)
        .expect("two rounds committed");
    // While it runs, status names the daemon's process.
    let live = run_ok(
        Command::new(bin("fd-coordinator"))
            .args(["status", "--json", "--state-dir"])
            .arg(fixture.path("state")),
    )
    .expect("status while running");
    let live: serde_json::Value = serde_json::from_str(&live).expect("status JSON");
    let pid = live["daemon_pid"].as_u64().expect("a live daemon's pid");
    assert_eq!(live["finished"], false);
    // A second coordinator on the same state is refused, naming the first.
    let second = Command::new(bin("fd-coordinator"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run a second coordinator");
    let text = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{text}");
    assert!(
        text.contains(&format!("pid {pid}) already serves")),
        "{text}"
    );
    coordinator.sigkill().expect("kill the coordinator");
    let before = read_state(&fixture.path("state"));
    let k = before.rounds.len();
    assert!(
        (2..CRASH_ROUNDS as usize).contains(&k),
        "killed mid-run: {k} rounds committed"
    );
    // Round r aggregated queries 2r and 2r + 1.
    assert_eq!(before.target.len(), 2 * k);
    // `fd-coordinator status` on the interrupted run: k of 30 rounds, stopped, both
    // nodes with their bytes so far.
    let status_json = |dir: &Path| -> serde_json::Value {
        let out = run_ok(
            Command::new(bin("fd-coordinator"))
                .args(["status", "--json", "--state-dir"])
                .arg(dir),
        )
        .expect("status");
        serde_json::from_str(&out).expect("status JSON")
    };
    let running = status_json(&fixture.path("state"));
    assert_eq!(running["finished"], false);
    // Killed: its pid is gone, so the run reads as stopped, not running.
    assert_eq!(running["daemon_pid"], serde_json::Value::Null, "{running}");
    assert_eq!(running["rounds_done"], k as u64);
    assert_eq!(running["rounds_planned"], CRASH_ROUNDS);
    let nodes_so_far = running["nodes"].as_array().expect("nodes");
    assert_eq!(nodes_so_far.len(), 2);
    assert!(
        nodes_so_far
            .iter()
            .all(|n| n["bytes_up"].as_u64() > Some(0)),
        "{running}"
    );

    // Same config, same state: it comes back on the address the nodes know.
    let (coordinator, again) = fixture.start_coordinator(&config);
    assert_eq!(again, addr, "the restart reuses the recorded address");
    for client in clients {
        let name = client.name.clone();
        let (status, output) = client.wait(LIMIT).expect("client finishes");
        assert!(status.success(), "{name} failed:\n{output}");
        assert!(
            output.contains("reconnected"),
            "{name} reconnected:\n{output}"
        );
    }
    let (status, output) = coordinator.wait(LIMIT).expect("coordinator finishes");
    assert!(status.success(), "restarted coordinator failed:\n{output}");
    assert!(
        output.contains("resuming after the last committed round"),
        "{output}"
    );

    let summary = read_json(&fixture.path("summary.json"));
    assert_eq!(
        summary["rounds"], CRASH_ROUNDS,
        "the planned number of rounds"
    );
    // Both nodes in every round: nothing lost, nothing counted twice.
    assert_eq!(
        summary["accepted_per_round"],
        serde_json::json!(vec![2; CRASH_ROUNDS as usize])
    );
    for node in summary["nodes"].as_array().expect("nodes") {
        assert_eq!(node["contributions"], CRASH_ROUNDS, "{node}");
    }
    let finished = status_json(&fixture.path("state"));
    assert_eq!(finished["finished"], true);
    assert_eq!(finished["rounds_done"], CRASH_ROUNDS);
    let after = read_state(&fixture.path("state"));
    assert_eq!(after.rounds.len(), CRASH_ROUNDS as usize);
    assert_eq!(after.contributions.len(), 2 * CRASH_ROUNDS as usize);
    // What was committed before the crash is intact, byte for byte.
    assert_eq!(after.rounds[..k], before.rounds[..]);
    assert_eq!(after.target[..2 * k], before.target[..]);
    // The summary's round log is the brief of each committed record.
    let log = summary["round_log"].as_array().expect("round_log");
    for (brief, record) in log.iter().zip(&before.rounds) {
        assert_eq!(brief["round"], record["round"]);
        assert_eq!(brief["closed_by"], record["closed_by"]);
        assert_eq!(brief["aggregated"], record["aggregated"]);
        let count = |v: &serde_json::Value| v.as_array().map(Vec::len);
        assert_eq!(
            brief["accepted"].as_u64(),
            count(&record["accepted"]).map(|n| n as u64)
        );
        assert_eq!(
            brief["asked"].as_u64(),
            count(&record["asked"]).map(|n| n as u64)
        );
    }
    for (name, _) in nodes {
        let report = read_json(&fixture.path(&format!("out-{name}")).join("report.json"));
        assert!(report["accuracy"].as_f64().is_some(), "{name} finished");
    }
}

/// Five private nodes in a secure-aggregation federation: every round's sum is decoded from
/// masked vectors, each node's ledger carries both guarantees (the sum's and its own share's
/// floor, which is weaker), and the coordinator's database holds the target and per-node
/// metadata only, never a node's votes: its only label values are the target's rows, and each
/// round's aggregate is what the target holds.
#[test]
fn a_secure_federation_of_five_client_processes_completes_and_stores_no_node_votes() {
    let fixture = Fixture::new();
    // 5 nodes, 1 colluder, 1 dropout: threshold floor(6 / 2) + 1 = 4, fewest survivors 4.
    let (coordinator, addr) = fixture.coordinator_with(
        5,
        "require_privacy = true\nqueries_per_round = 4\nstate_dir = \"state\"\n\
         [aggregation]\nsecure = true\ncolluders = 1\ndropouts = 1\n",
    );
    let privacy = "[privacy]\nmode = \"shards\"\nepsilon = 3.0\ndelta = 1e-5\n";
    let nodes = [
        ("hospital-a", [0, 1]),
        ("hospital-b", [1, 2]),
        ("hospital-c", [0, 2]),
        ("bank-d", [0, 1]),
        ("bank-e", [1, 2]),
    ];
    let printed = fixture.federate(coordinator, &addr, &nodes, 70, privacy);
    assert!(printed.contains("finished: 3 rounds"), "{printed}");
    assert!(printed.contains("aggregator: secure-sum"), "{printed}");

    let summary = read_json(&fixture.path("summary.json"));
    for node in summary["nodes"].as_array().expect("nodes") {
        let spending = &node["privacy"];
        assert_eq!(spending["releases"], ROUNDS, "{node}");
        assert!(
            spending["mechanism"]
                .as_str()
                .is_some_and(|m| m.contains("distributed-discrete-gaussian")),
            "{node}"
        );
        let eps = spending["epsilon_total"].as_f64().expect("epsilon_total");
        assert!(eps > 0.0 && eps <= 3.0, "{eps}");
        let floor = spending["floor_epsilon_total"].as_f64().expect("floor");
        assert!(floor > eps, "{node}");
    }
    for (name, _) in nodes {
        let ledger =
            rusqlite::Connection::open(fixture.path(&format!("{name}.csv.privacy-ledger.sqlite")))
                .expect("ledger");
        let charges: Vec<(f64, f64)> = ledger
            .prepare("SELECT rho, floor_rho FROM charges ORDER BY id")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .expect("charges");
        assert_eq!(charges.len(), ROUNDS as usize, "{name}");
        let report = read_json(&fixture.path(&format!("out-{name}/report.json")));
        let (eps, floor) = (
            report["epsilon_spent"].as_f64().expect("epsilon_spent"),
            report["floor_epsilon_spent"]
                .as_f64()
                .expect("floor_epsilon_spent"),
        );
        assert!(floor > eps, "{name}: floor {floor}, sums {eps}");
        for (rho, floor) in charges {
            // 5 nodes, 1 colluder, 1 dropout: 3 honest shares, so the floor (one share) costs
            // about 3 times the sum's rho.
            assert!(
                floor > 2.5 * rho && floor < 3.5 * rho,
                "{name}: {rho} {floor}"
            );
        }
    }

    let state = read_state(&fixture.path("state"));
    assert_eq!(state.rounds.len(), ROUNDS as usize);
    let db = rusqlite::Connection::open_with_flags(
        fixture.path("state/coordinator.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("state database");
    // Every column of every table: label values live only in the target's rows.
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut s| {
            s.query_map([], |r| r.get(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("tables");
    for table in &tables {
        let blobs: i64 = db
            .query_row(
                &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE type = 'BLOB'"),
                [],
                |r| r.get(0),
            )
            .expect("columns");
        assert!(
            blobs == 0 || table == "target" || table == "secrets",
            "table {table} has a BLOB column"
        );
    }
    for (round, record) in state.rounds.iter().enumerate() {
        assert_eq!(
            record["accepted"].as_array().map(Vec::len),
            Some(5),
            "{record}"
        );
        assert_eq!(record["aggregated"], true, "round {round}");
        // Per-node entries are metadata (bytes, receipts): a round's record has no rows.
        let text = record.to_string();
        assert!(!text.contains("probs"), "{text}");
    }
    // The sums' rows went into the target: 4 new public records a round.
    assert_eq!(state.target.len(), 4 * ROUNDS as usize);
    assert_eq!(
        state.contributions.len(),
        ROUNDS as usize * nodes.len(),
        "every survivor's contribution metadata"
    );
}

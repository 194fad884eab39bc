//! What an operator meets: the README's localhost walkthrough run as written, status of a
//! running and a finished federation, safe re-runs, and admission (allow-list, revocation,
//! the public file's fingerprint). Real binaries, loopback only, files in temporary
//! directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use fd_tests::{Process, bin, run_ok, write_blobs};

/// Generous: a loaded 2-core CI machine trains three small digits students in well under this.
const LIMIT: Duration = Duration::from_secs(300);

/// The shell block the README marks as the localhost walkthrough.
fn readme_walkthrough() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let after = readme
        .split("<!-- walkthrough:")
        .nth(1)
        .expect("the README marks its walkthrough with <!-- walkthrough: ... -->");
    let block = after
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a ```sh block follows the marker");
    block.to_owned()
}

/// Copies `src` into `dst` recursively.
fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for entry in std::fs::read_dir(src).expect("read_dir") {
        let entry = entry.expect("entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).expect("copy");
        }
    }
}

/// Every file under `dir` with its bytes and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("metadata");
        if meta.is_file() {
            out.insert(
                entry.path(),
                (
                    std::fs::read(entry.path()).expect("read"),
                    meta.modified().expect("mtime"),
                ),
            );
        }
    }
    out
}

#[test]
fn the_readme_walkthrough_runs_as_written_and_a_rerun_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    copy_dir(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")),
        &root.join("examples"),
    );
    let bins = bin("fd-sim").parent().expect("bin dir").to_path_buf();
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = readme_walkthrough();
    let mut shell = Command::new("bash");
    shell
        .args(["-e", "-o", "pipefail", "-c", &script])
        .current_dir(root)
        .env("PATH", &path)
        .env("RAYON_NUM_THREADS", "1");
    let (status, output) = Process::start("walkthrough", &mut shell)
        .expect("start bash")
        .wait(LIMIT)
        .expect("the walkthrough ends");
    assert!(status.success(), "the walkthrough failed:\n{output}");
    // Off a terminal (here a pipe) every tool logs plain lines: no colour codes, no bars.
    assert!(!output.contains('\u{1b}'), "escape codes in:\n{output}");
    assert!(
        output.contains("round 5 of 5: trained and labelled"),
        "{output}"
    );
    // Three nodes federated for the five rounds of examples/localhost/federation.toml.
    assert!(
        output.contains("5 of 5 rounds committed; finished"),
        "{output}"
    );
    for node in ["hospital-a", "hospital-b", "bank-c"] {
        assert!(output.contains(node), "status names {node}:\n{output}");
        let report = root.join(format!("walkthrough/{node}-out/report.json"));
        assert!(report.exists(), "{}", report.display());
        // --log-file: plain text (no ANSI colour codes) with the run's events.
        let log = std::fs::read_to_string(root.join(format!("walkthrough/{node}.log")))
            .expect("log file");
        assert!(!log.contains('\u{1b}'), "colour codes in {node}.log");
        assert!(log.contains("admitted"), "{node}.log:\n{log}");
    }
    // The evaluated student: digits has 10 classes, so chance is 0.1; three nodes of ~400
    // records each reach far more (fd-sim's 3-client digits runs are near 0.9).
    let accuracy: f64 = output
        .lines()
        .find(|l| l.starts_with("rows "))
        .and_then(|l| l.split("accuracy ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in:\n{output}"));
    assert!(accuracy > 0.5, "accuracy {accuracy}:\n{output}");
    // predict read the same labelled file, ignoring its label column: one row per record.
    let test_rows = std::fs::read_to_string(root.join("walkthrough/data/test.csv"))
        .expect("test.csv")
        .lines()
        .count();
    let predictions =
        std::fs::read_to_string(root.join("walkthrough/predictions.csv")).expect("predictions.csv");
    assert_eq!(
        predictions.lines().count(),
        test_rows,
        "header and one row per record"
    );
    assert!(
        predictions.starts_with("predicted,p0,"),
        "{predictions:.40}"
    );

    let state = root.join("walkthrough/state");
    let json = run_ok(
        Command::new(bin("fd-coordinator"))
            .args(["status", "--json", "--state-dir"])
            .arg(&state),
    )
    .expect("status --json");
    let status: serde_json::Value = serde_json::from_str(&json).expect("status is JSON");
    assert_eq!(status["finished"], true);
    assert_eq!(status["rounds_done"], 5);
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(3));
    let plot = root.join("weights.svg");
    run_ok(
        Command::new(bin("fd-coordinator"))
            .args(["status", "--state-dir"])
            .arg(&state)
            .arg("--plot")
            .arg(&plot),
    )
    .expect("status --plot");
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "{svg:.80}"
    );

    // Again: the coordinator says the run is over and exits 0; a node refuses to overwrite
    // its finished run, and its output directory is byte for byte as it was.
    let out_dir = root.join("walkthrough/hospital-a-out");
    let before = snapshot(&out_dir);
    let (status, text) = Process::start(
        "coordinator again",
        Command::new(bin("fd-coordinator"))
            .args(["--config", "examples/localhost/federation.toml"])
            .current_dir(root),
    )
    .expect("start")
    .wait(LIMIT)
    .expect("exits");
    assert!(status.success(), "{text}");
    assert!(text.contains("already finished"), "{text}");
    let (status, text) = Process::start(
        "node again",
        Command::new(bin("fd-client"))
            .args([
                "--config",
                "examples/localhost/hospital-a.toml",
                "--coordinator",
                "127.0.0.1:9",
            ])
            .current_dir(root),
    )
    .expect("start")
    .wait(LIMIT)
    .expect("exits");
    assert!(!status.success());
    assert!(
        text.contains("holds a finished run") && text.contains("--force"),
        "{text}"
    );
    assert_eq!(snapshot(&out_dir), before, "nothing on disk changed");
}

/// A federation directory: a CA with a coordinator certificate, a public file.
struct Federation {
    dir: tempfile::TempDir,
}

impl Federation {
    fn new() -> Federation {
        let f = Federation {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        f.certs(&["init", "--federation", "ops"]);
        f.certs(&[
            "issue",
            "--server",
            "--name",
            "coordinator",
            "--san",
            "localhost,127.0.0.1",
        ]);
        write_blobs(&f.path("public.csv"), 60, &[0, 1, 2], 99, false);
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn certs(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(bin("fd-certs"));
        cmd.args(&args[..1])
            .arg("--dir")
            .arg(self.path("pki"))
            .args(&args[1..])
            .env_remove("FD_CERTS_DIR");
        run_ok(&mut cmd).expect("fd-certs")
    }

    /// A node with a certificate, 80 records and a config naming `public`.
    fn node(&self, name: &str, public: &str, addr: &str) -> PathBuf {
        self.certs(&["issue", "--name", name]);
        write_blobs(&self.path(&format!("{name}.csv")), 80, &[0, 1, 2], 7, true);
        let config = self.path(&format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "coordinator = \"{addr}\"\nca = \"pki/ca.pem\"\ncert = \"pki/{name}.pem\"\n\
                 key = \"pki/{name}.key\"\nprivate_csv = \"{name}.csv\"\n\
                 public_csv = \"{public}\"\nclasses = 3\noutput_dir = \"out-{name}\"\n\
                 join_retry_secs = 0\n\
                 [training]\nhidden = [16]\nlocal_steps = 40\nsteps_per_round = 20\n\
                 [training.teacher]\nenabled = false\n"
            ),
        )
        .expect("node config");
        config
    }
}

fn client(name: &str, config: &Path) -> Process {
    Process::start(
        name,
        Command::new(bin("fd-client")).arg("--config").arg(config),
    )
    .expect("start client")
}

#[test]
fn admission_refuses_strangers_revoked_certificates_and_other_public_files() {
    let f = Federation::new();
    // Issue and revoke before the coordinator starts: it reads the list at start.
    f.certs(&["issue", "--name", "revoked"]);
    let revoked = f.certs(&["revoke", "--name", "revoked"]);
    assert!(revoked.contains("revoked revoked"), "{revoked}");
    std::fs::write(
        f.path("federation.toml"),
        "name = \"ops\"\nlisten = \"127.0.0.1:0\"\nca = \"pki/ca.pem\"\n\
         cert = \"pki/coordinator.pem\"\nkey = \"pki/coordinator.key\"\nnodes = 2\nrounds = 2\n\
         public_csv = \"public.csv\"\nclasses = 3\njoin_timeout_secs = 120\n\
         round_timeout_secs = 120\nstate_dir = \"state\"\ncrl = \"pki/crl.pem\"\n\
         allow = [\"a\", \"b\", \"c\", \"revoked\"]\n",
    )
    .expect("federation.toml");
    let mut coordinator = Process::start(
        "coordinator",
        Command::new(bin("fd-coordinator"))
            .arg("--config")
            .arg(f.path("federation.toml")),
    )
    .expect("start coordinator");
    let addr = coordinator
        .read_line_starting("fd-coordinator listening on ")
        .expect("address");

    // Not on the allow-list: refused with the reason.
    let config = f.node("mallory", "public.csv", &addr);
    let (status, text) = client("mallory", &config).wait(LIMIT).expect("exits");
    assert!(!status.success() && text.contains("allow-list"), "{text}");

    // Revoked: the TLS handshake fails; the node is not admitted and the coordinator's log
    // names the reason (the node sees only its connection closed).
    let config = f.path("revoked.toml");
    std::fs::write(
        &config,
        std::fs::read_to_string(f.node("revoked-config", "public.csv", &addr))
            .expect("template")
            .replace("revoked-config", "revoked"),
    )
    .expect("write");
    std::fs::copy(f.path("revoked-config.csv"), f.path("revoked.csv")).expect("data");
    let (status, text) = client("revoked", &config).wait(LIMIT).expect("exits");
    assert!(!status.success() && text.contains("not admitted"), "{text}");
    coordinator
        .wait_for_stderr("Revoked", 1)
        .expect("the coordinator refuses the revoked certificate");

    // Another public file of the same length: refused with both fingerprints.
    let other = f.path("other-public.csv");
    write_blobs(&other, 60, &[0, 1, 2], 98, false);
    let config = f.node("c", "other-public.csv", &addr);
    let (status, text) = client("c", &config).wait(LIMIT).expect("exits");
    let sha = |p: &Path| {
        let out = run_ok(Command::new("sha256sum").arg(p)).expect("sha256sum");
        out.split_whitespace().next().expect("digest").to_owned()
    };
    assert!(!status.success(), "{text}");
    assert!(
        text.contains(&sha(&other)) && text.contains(&sha(&f.path("public.csv"))),
        "both SHA-256s, as sha256sum prints them:\n{text}"
    );

    // The two good nodes complete the federation.
    let a = client("a", &f.node("a", "public.csv", &addr));
    let b = client("b", &f.node("b", "public.csv", &addr));
    for node in [a, b] {
        let (status, text) = node.wait(LIMIT).expect("exits");
        assert!(status.success(), "{text}");
    }
    let (status, text) = coordinator.wait(LIMIT).expect("coordinator exits");
    assert!(status.success(), "{text}");
    let json = run_ok(
        Command::new(bin("fd-coordinator"))
            .args(["status", "--json", "--state-dir"])
            .arg(f.path("state")),
    )
    .expect("status");
    let status: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let names: Vec<&str> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert_eq!(names, ["a", "b"], "only the admitted nodes took part");
}

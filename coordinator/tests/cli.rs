//! The `fd-coordinator` binary as an operator meets it: help and configuration errors.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fd-coordinator"))
        .args(args)
        .output()
        .expect("run fd-coordinator");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn help_explains_the_daemon() {
    let (ok, text) = run(&["--help"]);
    assert!(ok);
    assert!(
        text.contains("--config") && text.contains("mutual TLS"),
        "{text}"
    );
    for flag in ["--state-dir", "--quorum", "--aggregator"] {
        assert!(text.contains(flag), "--help explains {flag}:\n{text}");
    }
}

#[test]
fn the_example_config_loads() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/federation.toml");
    let config = fd_coordinator::FederationConfig::load(std::path::Path::new(example))
        .expect("examples/federation.toml is valid");
    assert_eq!(config.quorum, 2);
    assert!(config.require_privacy);
    let plain = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/federation-plain.toml"
    );
    let config = fd_coordinator::FederationConfig::load(std::path::Path::new(plain))
        .expect("examples/federation-plain.toml is valid");
    assert!(!config.require_privacy);
    assert_eq!(config.queries_per_round, 0);
    let secure = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/federation-secure.toml"
    );
    let config = fd_coordinator::FederationConfig::load(std::path::Path::new(secure))
        .expect("examples/federation-secure.toml is valid");
    assert!(config.aggregation.secure);
    assert_eq!(
        (config.aggregation.colluders, config.aggregation.dropouts),
        (1, 2)
    );
}

#[test]
fn config_errors_name_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let (ok, text) = run(&["--config", missing.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("missing.toml"), "{text}");

    let bad = dir.path().join("federation.toml");
    std::fs::write(
        &bad,
        "ca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\nnodes = 3\npublic_records = 10\nclasses = 1\n",
    )
    .unwrap();
    let (ok, text) = run(&["--config", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        text.contains("federation.toml") && text.contains("classes"),
        "{text}"
    );

    // A valid config whose certificate files do not exist: the error names the file.
    std::fs::write(
        &bad,
        "ca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\nnodes = 3\npublic_records = 10\nclasses = 2\n",
    )
    .unwrap();
    let (ok, text) = run(&["--config", bad.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(text.contains("ca.pem"), "{text}");
}

#[test]
fn print_config_prints_a_config_that_loads() {
    let (ok, text) = run(&["--print-config"]);
    assert!(ok, "{text}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("federation.toml");
    std::fs::write(&path, &text).unwrap();
    let config = fd_coordinator::FederationConfig::load(&path).expect("the printed config loads");
    assert_eq!(config.aggregation.strategy.to_string(), "dynamic");
}

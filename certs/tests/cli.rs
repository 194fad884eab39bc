//! Runs the built `fd-certs` binary as an operator would.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn fd_certs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fd-certs"))
        .args(args)
        // The binary reads FD_CERTS_DIR as a default; make sure the caller's does not leak in.
        .env_remove("FD_CERTS_DIR")
        .output()
        .expect("run fd-certs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn init_then_issue_node_and_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    let dir_arg = dir.to_str().expect("utf-8 path");

    let out = fd_certs(&["init", "--dir", dir_arg, "--federation", "test"]);
    assert!(out.status.success(), "init failed: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ca.pem") && stdout.contains("ca.key"),
        "{stdout}"
    );
    assert!(dir.join("ca.pem").is_file());
    // 0o600: the CA key is readable by its owner only.
    assert_eq!(mode(&dir.join("ca.key")), 0o600);

    let out = fd_certs(&["issue", "--dir", dir_arg, "--name", "hospital-a"]);
    assert!(out.status.success(), "issue failed: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("hospital-a.pem"));
    assert!(dir.join("hospital-a.pem").is_file());
    assert_eq!(mode(&dir.join("hospital-a.key")), 0o600);

    let out = fd_certs(&[
        "issue",
        "--dir",
        dir_arg,
        "--server",
        "--name",
        "coordinator",
        "--san",
        "localhost,127.0.0.1",
    ]);
    assert!(
        out.status.success(),
        "issue --server failed: {}",
        text(&out.stderr)
    );
    assert!(dir.join("coordinator.pem").is_file());
    assert_eq!(mode(&dir.join("coordinator.key")), 0o600);

    // What was written is usable for TLS: fd-transport's tests load fd-certs' output into
    // rustls configurations (transport/tests/issued.rs).

    // A second init and a re-issue are refused, and say why.
    let out = fd_certs(&["init", "--dir", dir_arg]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    let out = fd_certs(&["issue", "--dir", dir_arg, "--name", "hospital-a"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn issue_without_init_fails_and_names_the_ca_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir_arg = tmp.path().to_str().expect("utf-8 path");
    let out = fd_certs(&["issue", "--dir", dir_arg, "--name", "hospital-a"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("ca.pem") && stderr.contains("ca.key"),
        "{stderr}"
    );
    assert!(stderr.contains("fd-certs init"), "{stderr}");
    assert!(!tmp.path().join("hospital-a.key").exists());
}

#[test]
fn bad_names_are_refused_with_the_rule() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir_arg = tmp.path().to_str().expect("utf-8 path");
    assert!(fd_certs(&["init", "--dir", dir_arg]).status.success());
    let out = fd_certs(&["issue", "--dir", dir_arg, "--name", "../escape"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("A-Z"), "{}", text(&out.stderr));
    // --san without --server is a usage error.
    let out = fd_certs(&["issue", "--dir", dir_arg, "--name", "n1", "--san", "x"]);
    assert!(!out.status.success());
}

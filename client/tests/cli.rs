//! The `fd-client` binary as a node operator meets it: help and input errors.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fd-client"))
        .args(args)
        .output()
        .expect("run fd-client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn help_explains_what_leaves_the_node() {
    let (ok, text) = run(&["--help"]);
    assert!(ok);
    assert!(
        text.contains("--config") && text.contains("soft labels"),
        "{text}"
    );
}

#[test]
fn missing_flags_are_listed() {
    let (ok, text) = run(&["--coordinator", "127.0.0.1:1"]);
    assert!(!ok);
    assert!(
        text.contains("--ca") && text.contains("--private-csv"),
        "{text}"
    );
}

#[test]
fn malformed_csv_is_named_by_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private.csv");
    std::fs::write(&private, "x1,x2,label\n1,2,0\n3,oops,1\n").unwrap();
    let public = dir.path().join("public.csv");
    std::fs::write(&public, "x1,x2\n1,2\n").unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (ok, text) = run(&[
        "--coordinator",
        "127.0.0.1:1",
        "--ca",
        &p("ca.pem"),
        "--cert",
        &p("a.pem"),
        "--key",
        &p("a.key"),
        "--private-csv",
        &p("private.csv"),
        "--public-csv",
        &p("public.csv"),
        "--classes",
        "2",
    ]);
    assert!(!ok);
    assert!(
        text.contains("private.csv") && text.contains("line 3") && text.contains("'x2'"),
        "{text}"
    );
}

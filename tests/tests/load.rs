//! `fd-load` against the real `fd-coordinator` binary: a node that floods frames and never
//! reads is dropped with the too-slow code, connections that announce a 32 MiB frame before
//! Hello are refused, and every round still takes every honest contribution.

use std::process::Command;

use fd_tests::{bin, run_ok};

#[test]
fn a_deaf_node_and_greedy_connections_cost_the_honest_nodes_nothing() {
    let out = run_ok(
        Command::new(bin("fd-load"))
            .args(["--nodes", "30", "--rounds", "3", "--deaf", "--hogs", "2"])
            .arg("--coordinator")
            .arg(bin("fd-coordinator")),
    )
    .expect("fd-load completes");
    for line in [
        "admitted 30 of 30",
        "rounds 3 of 3",
        "rounds accepting every honest contribution: 3 of 3; honest contributions refused: 0",
        // fd_protocol::close::TOO_SLOW.
        "deaf node: closed by the coordinator with code 5",
        // fd_protocol::close::NOT_HELLO, for both greedy connections.
        "2 ended: closed by peer: expected a Hello frame (code 2)",
    ] {
        assert!(out.contains(line), "expected {line:?} in:\n{out}");
    }
}

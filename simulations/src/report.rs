//! The results table fd-sim prints.

use std::fmt::Write;

use crate::federation::SimResult;

/// Renders the per-client table and the summary lines.
pub fn table(r: &SimResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "dataset {} | {} clients | {} rounds | Dirichlet beta {} | seed {}",
        r.dataset,
        r.clients.len(),
        r.config.rounds,
        r.config.beta,
        r.config.seed
    );
    let _ = writeln!(s, "privacy: {}", r.privacy);
    let _ = writeln!(
        s,
        "{:<12} {:>8} {:>12} {:>12}",
        "client", "records", "local-only", "federated"
    );
    for c in &r.clients {
        let _ = writeln!(
            s,
            "{:<12} {:>8} {:>12.4} {:>12.4}",
            c.node, c.records, c.local_only_acc, c.federated_acc
        );
    }
    let _ = writeln!(
        s,
        "{:<12} {:>8} {:>12.4} {:>12.4}",
        "mean",
        r.clients.iter().map(|c| c.records).sum::<usize>(),
        r.local_only_mean_acc,
        r.federated_mean_acc
    );
    let _ = writeln!(
        s,
        "centralised upper bound (all private records): {:.4}",
        r.centralized_acc
    );
    let _ = writeln!(
        s,
        "final target accuracy on the public records: {:.4}",
        r.target_acc
    );
    let _ = writeln!(
        s,
        "test records {} | public records {} | bytes up {} | bytes down {} | wall {:.1} s",
        r.test_records, r.public_records, r.bytes_up, r.bytes_down, r.wall_seconds
    );
    s
}

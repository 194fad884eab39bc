//! The coordinator's durable state: one SQLite database (WAL, synchronous writes) in the state
//! directory.
//!
//! It holds the federation's terms (so a restart with a different config is refused instead of
//! mixing two federations), the address the coordinator listened on (so a restart with
//! `listen = "…:0"` comes back where the nodes look for it), and for every closed round, in one
//! transaction: the round's record, the accepted contributions' metadata (node, weight, privacy
//! receipt), the target rows it aggregated and the reputations after it. A round is therefore
//! either wholly committed or absent: killed at any moment, the coordinator restarts from the
//! last committed round, and no accepted contribution is lost or counted twice (an uncommitted
//! round is simply asked again).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fd_protocol::SoftLabels;
use rusqlite::{Connection, OptionalExtension, params};

use crate::config::FederationConfig;
use crate::rounds::Resume;
use crate::summary::RoundRecord;

/// Why the state database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("{path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The state directory could not be created.
    #[error("{path}: cannot create the state directory: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database belongs to a federation with other terms.
    #[error(
        "{path}: this state belongs to a federation with {field} = {stored}, but the config says \
         {configured}; use another state_dir or restore the config"
    )]
    Mismatch {
        /// The database file.
        path: PathBuf,
        /// The differing config field.
        field: &'static str,
        /// Its value in the database.
        stored: String,
        /// Its value in the config.
        configured: String,
    },
    /// A stored row is unreadable.
    #[error("{path}: corrupt state: {message}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// When process `pid` started, in clock ticks since boot (field 22 of `/proc/<pid>/stat`), if
/// it is alive; a pid reused by another process has another start time.
fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19).map(str::to_owned)
}

/// The state database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// File name of the database inside the state directory.
pub const DATABASE: &str = "coordinator.sqlite";

impl Store {
    /// Opens (or creates) the database in `dir` and checks that it belongs to the federation
    /// `config` describes.
    pub fn open(dir: &Path, config: &FederationConfig) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DATABASE);
        let conn = Connection::open(&path).map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let store = Store { conn, path };
        store.sql(|c| {
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "FULL")?;
            c.execute_batch(
                "CREATE TABLE IF NOT EXISTS federation (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS rounds (round INTEGER PRIMARY KEY, record TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS contributions (
                     round INTEGER NOT NULL, node TEXT NOT NULL, weight REAL, receipt TEXT,
                     PRIMARY KEY (round, node));
                 CREATE TABLE IF NOT EXISTS target (query INTEGER PRIMARY KEY, probs BLOB NOT NULL);
                 CREATE TABLE IF NOT EXISTS reputations (node TEXT PRIMARY KEY, value REAL NOT NULL);
                 CREATE TABLE IF NOT EXISTS secrets (key TEXT PRIMARY KEY, value BLOB NOT NULL);",
            )
        })?;
        store.check_terms(config)?;
        Ok(store)
    }

    fn sql<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        f(&self.conn).map_err(|source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    fn corrupt(&self, message: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            message,
        }
    }

    /// Records the terms on first use; afterwards refuses a config whose terms differ.
    ///
    /// The terms are everything that changes what the stored rounds mean: which records and
    /// classes were asked, whether every accepted contribution carries a privacy receipt
    /// (`require_privacy`: lifting it on a restart would mix unreceipted contributions into a
    /// private federation), which rounds were aggregated (`quorum`) and how (the aggregation
    /// parameters, which also shape the stored reputations). A term missing from an older
    /// database is recorded as configured at the next start.
    fn check_terms(&self, config: &FederationConfig) -> Result<(), StoreError> {
        let aggregation = &config.aggregation;
        let mut terms: Vec<(&'static str, String)> = vec![
            ("name", config.name.clone()),
            ("rounds", config.rounds.to_string()),
            ("public_records", config.public_records.to_string()),
            ("classes", config.classes.to_string()),
            ("queries_per_round", config.queries_per_round.to_string()),
            ("require_privacy", config.require_privacy.to_string()),
            ("quorum", config.quorum.to_string()),
            ("aggregation.strategy", aggregation.strategy.to_string()),
            // f64 Display is the shortest text that parses back to the same value: exact.
            ("aggregation.trim", aggregation.trim.to_string()),
            (
                "aggregation.reputation_rate",
                aggregation.reputation_rate.to_string(),
            ),
            ("aggregation.sharpen", aggregation.sharpen.to_string()),
        ];
        // Only when configured: a federation that names its public file keeps naming the same.
        if let Some(sha) = &config.public_sha256 {
            terms.push(("public_sha256", sha.to_ascii_lowercase()));
        }
        for (field, configured) in terms {
            let stored: Option<String> = self.sql(|c| {
                c.query_row(
                    "SELECT value FROM federation WHERE key = ?1",
                    [field],
                    |r| r.get(0),
                )
                .optional()
            })?;
            match stored {
                None => {
                    self.sql(|c| {
                        c.execute(
                            "INSERT INTO federation (key, value) VALUES (?1, ?2)",
                            params![field, configured],
                        )
                    })?;
                }
                Some(stored) if stored != configured => {
                    return Err(StoreError::Mismatch {
                        path: self.path.clone(),
                        field,
                        stored,
                        configured,
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Opens an existing state database read-only, without a config (`fd-coordinator status`):
    /// safe while the daemon runs (SQLite's WAL lets readers and one writer work at once).
    pub fn open_read_only(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(DATABASE);
        if !path.exists() {
            return Err(StoreError::Corrupt {
                path,
                message: "no state database here; is this the coordinator's state_dir?".into(),
            });
        }
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let store = Store { conn, path };
        store.sql(|c| c.busy_timeout(std::time::Duration::from_secs(5)))?;
        Ok(store)
    }

    /// The federation's recorded terms (name, rounds, classes, ...), by key.
    pub fn terms(&self) -> Result<BTreeMap<String, String>, StoreError> {
        self.sql(|c| {
            let mut s = c.prepare(
                "SELECT key, value FROM federation WHERE key NOT IN ('listen', 'finished', 'daemon')",
            )?;
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })
    }

    /// Records that the federation is over, with its final summary (in the same table as the
    /// terms, synchronously): a restart on this state then says so and exits.
    pub fn mark_finished(&self, summary: &crate::Summary) -> Result<(), StoreError> {
        let json = serde_json::to_string(summary)
            .map_err(|e| self.corrupt(format!("cannot encode the summary: {e}")))?;
        self.sql(|c| {
            c.execute(
                "INSERT OR REPLACE INTO federation (key, value) VALUES ('finished', ?1)",
                [json],
            )
        })?;
        Ok(())
    }

    /// The final summary, if the federation this state belongs to is over.
    pub fn finished(&self) -> Result<Option<crate::Summary>, StoreError> {
        let text: Option<String> = self.sql(|c| {
            c.query_row(
                "SELECT value FROM federation WHERE key = 'finished'",
                [],
                |r| r.get(0),
            )
            .optional()
        })?;
        text.map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| self.corrupt(format!("the finished run's summary: {e}")))
        })
        .transpose()
    }

    /// Records that this process now serves the federation (its pid and the kernel's start
    /// time of it), so `fd-coordinator status` can tell a running daemon from a stopped one.
    pub fn record_daemon(&self) -> Result<(), StoreError> {
        let pid = std::process::id();
        let value = format!("{pid} {}", process_start(pid).unwrap_or_default());
        self.sql(|c| {
            c.execute(
                "INSERT OR REPLACE INTO federation (key, value) VALUES ('daemon', ?1)",
                [value],
            )
        })?;
        Ok(())
    }

    /// Forgets the daemon (a clean stop): status then says stopped without looking.
    pub fn clear_daemon(&self) -> Result<(), StoreError> {
        self.sql(|c| c.execute("DELETE FROM federation WHERE key = 'daemon'", []))?;
        Ok(())
    }

    /// The pid of the daemon serving this state, if one recorded itself and that process
    /// (the same pid with the same start time, so not a reused pid) is still alive. Linux
    /// only (`/proc`); elsewhere `None`.
    pub fn live_daemon(&self) -> Result<Option<u32>, StoreError> {
        let text: Option<String> = self.sql(|c| {
            c.query_row(
                "SELECT value FROM federation WHERE key = 'daemon'",
                [],
                |r| r.get(0),
            )
            .optional()
        })?;
        let Some(text) = text else {
            return Ok(None);
        };
        let mut fields = text.split_whitespace();
        let pid: Option<u32> = fields.next().and_then(|p| p.parse().ok());
        let started = fields.next().unwrap_or_default();
        Ok(pid.filter(|&pid| {
            process_start(pid).is_some_and(|now| !started.is_empty() && now == started)
        }))
    }

    /// The address recorded by [`Store::record_listen`], if any.
    pub fn recorded_listen(&self) -> Result<Option<SocketAddr>, StoreError> {
        let text: Option<String> = self.sql(|c| {
            c.query_row(
                "SELECT value FROM federation WHERE key = 'listen'",
                [],
                |r| r.get(0),
            )
            .optional()
        })?;
        text.map(|t| {
            t.parse()
                .map_err(|e| self.corrupt(format!("recorded listen address '{t}': {e}")))
        })
        .transpose()
    }

    /// The secret behind the endpoint's stateless-reset key, created on first use and kept, so
    /// that after a crash the restarted coordinator's resets are recognised by the nodes.
    pub fn reset_secret(&self) -> Result<Vec<u8>, StoreError> {
        let stored: Option<Vec<u8>> = self.sql(|c| {
            c.query_row(
                "SELECT value FROM secrets WHERE key = 'stateless_reset'",
                [],
                |r| r.get(0),
            )
            .optional()
        })?;
        if let Some(secret) = stored {
            return Ok(secret);
        }
        let secret = fd_transport::new_reset_secret()
            .map_err(|e| self.corrupt(e.to_string()))?
            .to_vec();
        self.sql(|c| {
            c.execute(
                "INSERT INTO secrets (key, value) VALUES ('stateless_reset', ?1)",
                [&secret],
            )
        })?;
        Ok(secret)
    }

    /// Records the address the coordinator is listening on.
    pub fn record_listen(&self, addr: SocketAddr) -> Result<(), StoreError> {
        self.sql(|c| {
            c.execute(
                "INSERT OR REPLACE INTO federation (key, value) VALUES ('listen', ?1)",
                [addr.to_string()],
            )
        })?;
        Ok(())
    }

    /// Commits a closed round, atomically.
    pub fn commit(&mut self, record: &RoundRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(record)
            .map_err(|e| self.corrupt(format!("cannot encode round {}: {e}", record.round)))?;
        let mut receipts = BTreeMap::new();
        for (node, r) in &record.receipts {
            let text = serde_json::to_string(r)
                .map_err(|e| self.corrupt(format!("cannot encode a receipt: {e}")))?;
            receipts.insert(node.clone(), text);
        }
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|source| StoreError::Sqlite {
                path: path.clone(),
                source,
            })?;
        let result = (|| {
            tx.execute(
                "INSERT INTO rounds (round, record) VALUES (?1, ?2)",
                params![record.round, json],
            )?;
            for node in &record.accepted {
                tx.execute(
                    "INSERT INTO contributions (round, node, weight, receipt) VALUES (?1, ?2, ?3, ?4)",
                    params![
                        record.round,
                        node,
                        record.weights.get(node),
                        receipts.get(node)
                    ],
                )?;
            }
            if let Some(agg) = &record.aggregate {
                let c = agg.classes as usize;
                for (i, q) in agg.query_ids.iter().enumerate() {
                    let bytes: Vec<u8> = agg.probs[i * c..(i + 1) * c]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect();
                    tx.execute(
                        "INSERT OR REPLACE INTO target (query, probs) VALUES (?1, ?2)",
                        params![q, bytes],
                    )?;
                }
            }
            tx.execute("DELETE FROM reputations", [])?;
            for (node, r) in &record.reputations {
                tx.execute(
                    "INSERT INTO reputations (node, value) VALUES (?1, ?2)",
                    params![node, r],
                )?;
            }
            Ok(())
        })();
        result
            .and_then(|()| tx.commit())
            .map_err(|source| StoreError::Sqlite { path, source })
    }

    /// Everything needed to continue after the last committed round.
    pub fn load(&self, classes: u16) -> Result<Resume, StoreError> {
        let texts: Vec<String> = self.sql(|c| {
            let mut s = c.prepare("SELECT record FROM rounds ORDER BY round")?;
            s.query_map([], |r| r.get(0))?.collect()
        })?;
        let mut records = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let record: RoundRecord = serde_json::from_str(t)
                .map_err(|e| self.corrupt(format!("round record {i}: {e}")))?;
            if record.round != i as u32 {
                return Err(
                    self.corrupt(format!("round records skip from {} to {}", i, record.round))
                );
            }
            records.push(record);
        }
        let rows: Vec<(u32, Vec<u8>)> = self.sql(|c| {
            let mut s = c.prepare("SELECT query, probs FROM target ORDER BY query")?;
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })?;
        let mut target = SoftLabels {
            classes,
            ..SoftLabels::default()
        };
        for (q, bytes) in rows {
            if bytes.len() != classes as usize * 4 {
                return Err(self.corrupt(format!(
                    "target row {q} holds {} bytes, expected {}",
                    bytes.len(),
                    classes as usize * 4
                )));
            }
            target.query_ids.push(q);
            target.probs.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        let reputations: BTreeMap<String, f64> = self.sql(|c| {
            let mut s = c.prepare("SELECT node, value FROM reputations")?;
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })?;
        Ok(Resume {
            rounds_done: records.len() as u32,
            target,
            reputations,
            records,
        })
    }

    /// Accepted contributions recorded for `round`: (node, weight, has a receipt).
    pub fn contributions(
        &self,
        round: u32,
    ) -> Result<Vec<(String, Option<f64>, bool)>, StoreError> {
        self.sql(|c| {
            let mut s = c.prepare(
                "SELECT node, weight, receipt IS NOT NULL FROM contributions WHERE round = ?1 \
                 ORDER BY node",
            )?;
            s.query_map([round], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::ClosedBy;
    use fd_protocol::PrivacyReceipt;

    fn config() -> FederationConfig {
        FederationConfig {
            queries_per_round: 2,
            ..crate::config::test_config(2, 3, 4)
        }
    }

    fn record(round: u32) -> RoundRecord {
        let receipt = PrivacyReceipt {
            mechanism: "m".into(),
            unit: "record".into(),
            sigma: 1.0,
            sensitivity: 2.0,
            rho: 0.5,
            rho_total: 0.5,
            epsilon_total: 3.0,
            delta: 1e-5,
            floor_epsilon_total: None,
        };
        RoundRecord {
            round,
            query_ids: vec![round * 2, round * 2 + 1],
            asked: vec!["a".into(), "b".into()],
            accepted: vec!["a".into(), "b".into()],
            aggregated: true,
            closed_by: ClosedBy::AllAnswered,
            weights: [("a".into(), 0.75), ("b".into(), 0.25)].into(),
            reputations: [("a".into(), 0.9), ("b".into(), 0.3)].into(),
            receipts: [("a".into(), receipt)].into(),
            aggregate: Some(SoftLabels {
                classes: 2,
                query_ids: vec![round * 2, round * 2 + 1],
                probs: vec![0.125, 0.875, 1.0, 0.0],
            }),
            bytes: [("a".into(), [100 * (round as u64 + 1), 7])].into(),
            wall_seconds: 1.5 * (round as f64 + 1.0),
        }
    }

    #[test]
    fn status_reads_a_running_and_a_finished_federation_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), &config()).unwrap();
        store.commit(&record(0)).unwrap();
        store.commit(&record(1)).unwrap();
        // Read while the writer holds the database open, as while the daemon runs.
        let running = crate::status::read(dir.path()).unwrap();
        assert!(!running.finished);
        assert_eq!((running.rounds_done, running.rounds_planned), (2, 3));
        let a = &running.nodes[0];
        assert_eq!(a.node, "a");
        assert_eq!(
            (a.contributions, a.last_round, a.weight),
            (2, Some(1), Some(0.75))
        );
        // record(1): a's receipt says epsilon 3; its counters are round 1's (200 up, 7 down).
        assert_eq!(a.epsilon_spent, Some(3.0));
        assert_eq!((a.bytes_up, a.bytes_down), (200, 7));
        assert_eq!(running.wall_seconds, 3.0);
        assert_eq!(running.nodes[1].epsilon_spent, None, "b sent no receipt");
        // No daemon recorded: stopped before its end.
        assert_eq!(running.daemon_pid, None);
        let text = crate::status::render(&running);
        assert!(
            text.contains("2 of 3 rounds committed; stopped before its end"),
            "{text}"
        );
        // A live process recorded as the daemon (this test's own): running, with its pid.
        store.record_daemon().unwrap();
        let live = crate::status::read(dir.path()).unwrap();
        assert_eq!(live.daemon_pid, Some(std::process::id()));
        assert!(crate::status::render(&live).contains("running (fd-coordinator pid"));
        // The same pid with another start time is a reused pid, not the daemon.
        store
            .sql(|c| {
                c.execute(
                    "UPDATE federation SET value = ?1 WHERE key = 'daemon'",
                    [format!("{} 1", std::process::id())],
                )
            })
            .unwrap();
        assert_eq!(crate::status::read(dir.path()).unwrap().daemon_pid, None);
        store.clear_daemon().unwrap();
        store.commit(&record(2)).unwrap();
        let summary = crate::Summary {
            federation: "t".into(),
            rounds: 3,
            wall_seconds: 9.5,
            nodes: vec![crate::summary::NodeSummary {
                node: "a".into(),
                bytes_up: 1000,
                bytes_down: 2000,
                ..Default::default()
            }],
            ..Default::default()
        };
        store.mark_finished(&summary).unwrap();
        let done = crate::status::read(dir.path()).unwrap();
        assert!(done.finished && done.ended_early.is_none());
        assert_eq!(done.rounds_done, 3);
        assert_eq!(
            (done.nodes[0].bytes_up, done.nodes[0].bytes_down),
            (1000, 2000)
        );
        assert_eq!(done.wall_seconds, 9.5);
        assert!(crate::status::render(&done).contains("3 of 3 rounds committed; finished"));
        assert_eq!(store.finished().unwrap().map(|s| s.rounds), Some(3));
        // Read-only: a directory without a database is an error, and nothing is created.
        let empty = tempfile::tempdir().unwrap();
        assert!(crate::status::read(empty.path()).is_err());
        assert!(!empty.path().join(DATABASE).exists());
    }

    #[test]
    fn committed_rounds_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = Store::open(dir.path(), &config()).unwrap();
            store.commit(&record(0)).unwrap();
            store.commit(&record(1)).unwrap();
            store
                .record_listen("127.0.0.1:4567".parse().unwrap())
                .unwrap();
            // The same round twice would count its contributions twice: refused.
            assert!(store.commit(&record(1)).is_err());
        }
        let store = Store::open(dir.path(), &config()).unwrap();
        let resume = store.load(2).unwrap();
        assert_eq!(resume.rounds_done, 2);
        assert_eq!(resume.records[1], {
            let mut r = record(1);
            r.aggregate = None; // not part of the record; the target table holds it
            r
        });
        // Rounds 0 and 1 aggregated queries 0..4 with the rows above.
        assert_eq!(resume.target.query_ids, [0, 1, 2, 3]);
        assert_eq!(resume.target.probs[..4], [0.125, 0.875, 1.0, 0.0]);
        assert_eq!(resume.reputations["b"], 0.3);
        assert_eq!(
            store.recorded_listen().unwrap(),
            Some("127.0.0.1:4567".parse().unwrap())
        );
        let secret = store.reset_secret().unwrap();
        assert_eq!(secret.len(), fd_transport::RESET_SECRET_LEN);
        assert_eq!(store.reset_secret().unwrap(), secret, "kept, not redrawn");
        let c = store.contributions(0).unwrap();
        assert_eq!(
            c,
            [
                ("a".into(), Some(0.75), true),
                ("b".into(), Some(0.25), false)
            ]
        );
    }

    #[test]
    fn a_different_federation_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path(), &config()).unwrap();
        let mut other = config();
        other.classes = 3;
        let err = Store::open(dir.path(), &other).err().unwrap().to_string();
        assert!(
            err.contains("classes = 2") && err.contains("says 3"),
            "{err}"
        );
    }

    #[test]
    fn a_restart_that_changes_privacy_quorum_or_aggregation_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut private = config();
        private.require_privacy = true;
        Store::open(dir.path(), &private).unwrap();
        /// Alters one term of the config.
        type Change = fn(&mut FederationConfig);
        let changes: [(Change, &str); 5] = [
            (|c| c.require_privacy = false, "require_privacy = true"),
            (|c| c.quorum = 2, "quorum = 1"),
            (|c| c.aggregation.trim = 0.1, "aggregation.trim = 0.2"),
            (
                |c| c.aggregation.reputation_rate = 0.25,
                "aggregation.reputation_rate = 0.5",
            ),
            (|c| c.aggregation.sharpen = 0.5, "aggregation.sharpen = 1"),
        ];
        for (change, stored) in changes {
            let mut other = private.clone();
            change(&mut other);
            let err = Store::open(dir.path(), &other).err().unwrap().to_string();
            assert!(err.contains(stored), "{err} lacks {stored}");
        }
        // The unchanged config still opens its own state.
        Store::open(dir.path(), &private).unwrap();
    }
}

//! The durable privacy ledger: one SQLite file per node recording every release's cost.
//!
//! The ledger is the node's memory of privacy already spent. It must survive crashes and
//! restarts, and it must never under-count:
//!
//! - Every [`PrivacyLedger::charge`] checks the budget and inserts its row in one
//!   `BEGIN IMMEDIATE` transaction, and the commit is durable (`journal_mode=WAL`,
//!   `synchronous=FULL`: the WAL is synced on every commit) *before* the receipt is
//!   returned. The noisy labels are drawn and sent only after that, so a crash at any point
//!   leaves the ledger charged for everything that may have left the node (and perhaps for
//!   one release that never did: the safe side).
//! - The budget is written on the first open and fixed for the file's life: reopening with
//!   a different budget is an error rather than a silent reset.
//! - Totals are recomputed from the rows, in `id` order, with OpenDP's zCDP composition
//!   (`CompositionMeasure::compose` for `ZeroConcentratedDivergence`, which adds with upward
//!   rounding), and converted to epsilon with [`epsilon_for`].
//!
//! A round that is retried after a crash is charged again: the earlier draw may have been
//! sent, so both count.
//!
//! # Why adding adaptively chosen costs is sound: the ledger is a privacy filter
//!
//! The releases are not fixed in advance: the coordinator picks each round's queries after
//! seeing earlier rounds' outputs, and a release's `rho` depends on how many it picks, so both
//! the mechanisms and their privacy parameters are chosen adaptively. Summing the `rho`s of
//! such a sequence and stopping before the sum passes a budget fixed in advance is a *privacy
//! filter* (Rogers, Roth, Ullman and Vadhan, "Privacy Odometers and Filters", 2016): the whole
//! interaction is then `rho_budget`-zCDP. For zCDP this holds because zCDP is Rényi DP of order
//! `a` at `rho a` for every `a > 1`, and Rényi filters are valid at each fixed order (Feldman
//! and Zrnic, "Individual Privacy Accounting via a Rényi Filter", 2021; Whitehouse, Ramdas,
//! Rogers and Wu, "Fully-Adaptive Composition in Differential Privacy", 2023). OpenDP states
//! the same for its own zCDP composition (its `make_privacy_filter` continuation rule relies on
//! it): [`compose`] asks OpenDP whether `ZeroConcentratedDivergence` composes under
//! `Adaptivity::FullyAdaptive` and fails closed if it ever says no. What the filter needs from
//! this code, and gets: the budget is fixed when the ledger is created (the file refuses
//! another), each charge's `rho` is decided before its noise is drawn, and a charge that would
//! pass the budget is refused without a release. The filter is kept here rather than in
//! OpenDP's in-memory queryable because it must outlive the process: a restart resumes it
//! from the file.

use std::path::{Path, PathBuf};

use opendp::{
    combinators::{Adaptivity, CompositionMeasure},
    measures::ZeroConcentratedDivergence,
};
use rusqlite::{Connection, TransactionBehavior, params};

use super::accountant::{Budget, epsilon_for};
use super::{MECHANISM, PRIVACY_UNIT, PrivacyError};

/// The schema version this code writes, kept in SQLite's `user_version`.
const SCHEMA_VERSION: i64 = 3;

/// How long to wait for another connection's write lock before failing.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One release's entry in the ledger.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Charge {
    /// The federation round the release belongs to.
    pub round: u32,
    /// Number of public records (rows) released.
    pub queries: u32,
    /// Noise standard deviation used.
    pub sigma: f64,
    /// L2 sensitivity at which the cost was read (see
    /// [`release_sensitivity`](super::release_sensitivity)).
    pub sensitivity: f64,
    /// zCDP cost of the release, from OpenDP's privacy map. For a secure-aggregation share:
    /// the cost of the federation's sum, under the assumption on colluders and dropouts.
    pub rho: f64,
    /// Secure aggregation only: the cost from the node's own noise share alone (what holds if
    /// every other node colludes with the coordinator). `None`: a release noised on its own,
    /// whose floor is `rho`.
    pub floor_rho: Option<f64>,
}

/// What [`PrivacyLedger::charge`] hands back once a charge is durable.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    /// The round charged.
    pub round: u32,
    /// This release's zCDP cost.
    pub rho: f64,
    /// Total zCDP cost of all releases so far, this one included.
    pub rho_total: f64,
    /// Total epsilon so far at `delta`, this release included.
    pub epsilon_total: f64,
    /// The budget's delta, at which `epsilon_total` is measured.
    pub delta: f64,
    /// Noise standard deviation of this release.
    pub sigma: f64,
    /// L2 sensitivity of this release.
    pub sensitivity: f64,
    /// For a secure-aggregation share: the total epsilon at `delta` of every release so far
    /// from the node's own noise alone ([`Charge::floor_rho`], or `rho` for releases noised on
    /// their own).
    pub floor_epsilon_total: Option<f64>,
}

/// A node's durable record of privacy spent, in one SQLite file.
///
/// Not `Sync`-shared: one node process owns one ledger; SQLite's locking serialises any
/// second process that opens the same file.
#[derive(Debug)]
pub struct PrivacyLedger {
    conn: Connection,
    path: PathBuf,
    budget: Budget,
}

/// Maps a SQLite error on `path` while doing `action`.
fn sql(path: &Path, action: &'static str) -> impl FnOnce(rusqlite::Error) -> PrivacyError {
    let path = path.to_path_buf();
    move |source| PrivacyError::Ledger {
        path,
        action,
        source,
    }
}

/// Reads every charge's `rho`, in `id` order, checking each is a valid cost.
fn read_rhos(conn: &Connection, path: &Path) -> Result<Vec<f64>, PrivacyError> {
    read_costs(conn, path, "SELECT rho FROM charges ORDER BY id")
}

/// Reads every charge's floor cost ([`Charge::floor_rho`], else `rho`), in `id` order.
fn read_floor_rhos(conn: &Connection, path: &Path) -> Result<Vec<f64>, PrivacyError> {
    read_costs(
        conn,
        path,
        "SELECT COALESCE(floor_rho, rho) FROM charges ORDER BY id",
    )
}

fn read_costs(conn: &Connection, path: &Path, query: &str) -> Result<Vec<f64>, PrivacyError> {
    let mut stmt = conn
        .prepare_cached(query)
        .map_err(sql(path, "prepare the query for charges"))?;
    let rhos = stmt
        .query_map([], |row| row.get::<_, f64>(0))
        .map_err(sql(path, "read charges"))?
        .collect::<Result<Vec<f64>, _>>()
        .map_err(sql(path, "read charges"))?;
    if let Some(bad) = rhos.iter().find(|r| !(r.is_finite() && **r >= 0.0)) {
        return Err(PrivacyError::CorruptLedger {
            path: path.to_path_buf(),
            detail: format!("a charge has rho = {bad}, not a finite cost >= 0"),
        });
    }
    Ok(rhos)
}

/// Total zCDP cost of `rhos` by OpenDP's composition (adds in order, rounding up), valid
/// under fully adaptive composition by OpenDP's own statement (checked on every call: see the
/// module docs).
fn compose(rhos: Vec<f64>) -> Result<f64, PrivacyError> {
    ZeroConcentratedDivergence
        .composability(Adaptivity::FullyAdaptive)
        .map_err(|e| PrivacyError::opendp("checking zCDP's fully adaptive composition", e))?;
    ZeroConcentratedDivergence
        .compose(rhos)
        .map_err(|e| PrivacyError::opendp("composing the ledger's rho values", e))
}

/// The `rho` already charged to the ledger at `path`, without creating or changing it: 0 if
/// there is no file or no charge.
pub fn rho_charged_at(path: &Path) -> Result<f64, PrivacyError> {
    if !path.exists() {
        return Ok(0.0);
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql(path, "open the ledger file to read it"))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sql(path, "read the schema version"))?;
    if version == 0 {
        return Ok(0.0);
    }
    compose(read_rhos(&conn, path)?)
}

impl PrivacyLedger {
    /// Opens (creating if needed) the ledger at `path`.
    ///
    /// Stores `budget` and `data` (the fingerprint of the private records it accounts for,
    /// [`crate::data::Table::fingerprint`]) on first open; on later opens refuses with
    /// [`PrivacyError::BudgetMismatch`] if `budget` differs from the stored one and with
    /// [`PrivacyError::LedgerForOtherData`] if `data` does, rather than silently resetting or
    /// relaxing the accounting. A version-1 ledger (before fingerprints) adopts `data`. Sets
    /// `journal_mode=WAL` and `synchronous=FULL` so that every committed charge is on disk.
    pub fn open(path: &Path, budget: Budget, data: &str) -> Result<PrivacyLedger, PrivacyError> {
        budget.validate()?;
        let mut conn = Connection::open(path).map_err(sql(path, "open the ledger file"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql(path, "set the busy timeout"))?;
        // Returns the mode in force; a file system without WAL support keeps a rollback
        // journal, which synchronous=FULL makes durable too.
        let _mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sql(path, "set journal_mode=WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql(path, "set synchronous=FULL"))?;

        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql(path, "begin the opening transaction"))?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(sql(path, "read the schema version"))?;
        match version {
            0 => {
                tx.execute_batch(
                    "CREATE TABLE budget (
                         id INTEGER PRIMARY KEY CHECK (id = 1),
                         epsilon REAL NOT NULL,
                         delta REAL NOT NULL,
                         privacy_unit TEXT NOT NULL,
                         mechanism TEXT NOT NULL,
                         data TEXT
                     );
                     CREATE TABLE charges (
                         id INTEGER PRIMARY KEY AUTOINCREMENT,
                         round INTEGER NOT NULL,
                         queries INTEGER NOT NULL,
                         sigma REAL NOT NULL,
                         sensitivity REAL NOT NULL,
                         rho REAL NOT NULL CHECK (rho >= 0),
                         floor_rho REAL CHECK (floor_rho >= 0)
                     );
                     PRAGMA user_version = 3;",
                )
                .map_err(sql(path, "create the ledger tables"))?;
                tx.execute(
                    "INSERT INTO budget (id, epsilon, delta, privacy_unit, mechanism, data)
                     VALUES (1, ?1, ?2, ?3, ?4, ?5)",
                    params![budget.epsilon, budget.delta, PRIVACY_UNIT, MECHANISM, data],
                )
                .map_err(sql(path, "store the budget"))?;
            }
            1..=SCHEMA_VERSION => {
                if version == 1 {
                    // Before fingerprints: the ledger adopts the data it is opened for.
                    tx.execute_batch(
                        "ALTER TABLE budget ADD COLUMN data TEXT; PRAGMA user_version = 2;",
                    )
                    .map_err(sql(path, "upgrade the ledger to version 2"))?;
                    tx.execute("UPDATE budget SET data = ?1 WHERE id = 1", params![data])
                        .map_err(sql(path, "store the data fingerprint"))?;
                }
                if version < 3 {
                    // Before secure aggregation: every charge's floor is its rho (NULL).
                    tx.execute_batch(
                        "ALTER TABLE charges ADD COLUMN floor_rho REAL CHECK (floor_rho >= 0);
                         PRAGMA user_version = 3;",
                    )
                    .map_err(sql(path, "upgrade the ledger to version 3"))?;
                }
                let (epsilon, delta, stored_data): (f64, f64, Option<String>) = tx
                    .query_row(
                        "SELECT epsilon, delta, data FROM budget WHERE id = 1",
                        [],
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                    )
                    .map_err(sql(path, "read the stored budget"))?;
                if let Some(stored) = stored_data
                    && stored != data
                {
                    return Err(PrivacyError::LedgerForOtherData {
                        path: path.to_path_buf(),
                        stored,
                        data: data.to_string(),
                    });
                }
                let stored = Budget { epsilon, delta };
                if stored != budget {
                    return Err(PrivacyError::BudgetMismatch {
                        path: path.to_path_buf(),
                        stored_epsilon: stored.epsilon,
                        stored_delta: stored.delta,
                        configured_epsilon: budget.epsilon,
                        configured_delta: budget.delta,
                    });
                }
            }
            other => {
                return Err(PrivacyError::CorruptLedger {
                    path: path.to_path_buf(),
                    detail: format!(
                        "schema version {other}, this build reads version {SCHEMA_VERSION}"
                    ),
                });
            }
        }
        tx.commit()
            .map_err(sql(path, "commit the opening transaction"))?;
        Ok(PrivacyLedger {
            conn,
            path: path.to_path_buf(),
            budget,
        })
    }

    /// The budget this ledger enforces.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Total zCDP cost of all charges so far: OpenDP's composition of their `rho`s in `id`
    /// order (rounding up).
    pub fn rho_spent(&self) -> Result<f64, PrivacyError> {
        compose(read_rhos(&self.conn, &self.path)?)
    }

    /// With secure-aggregation releases among the charges: the epsilon at the budget's delta
    /// of every release from the node's own noise alone ([`Charge::floor_rho`], or `rho` for a
    /// release noised on its own). `None` when no charge was a secure release.
    pub fn floor_epsilon_spent(&self) -> Result<Option<f64>, PrivacyError> {
        let secure: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM charges WHERE floor_rho IS NOT NULL",
                [],
                |row| row.get(0),
            )
            .map_err(sql(&self.path, "count secure charges"))?;
        if secure == 0 {
            return Ok(None);
        }
        let rho = compose(read_floor_rhos(&self.conn, &self.path)?)?;
        Ok(Some(epsilon_for(rho, self.budget.delta)?))
    }

    /// Epsilon spent so far at the budget's delta: [`epsilon_for`]`(rho_spent, delta)`.
    pub fn epsilon_spent(&self) -> Result<f64, PrivacyError> {
        epsilon_for(self.rho_spent()?, self.budget.delta)
    }

    /// Whether a release costing `rho` would keep the total epsilon within the budget.
    /// Writes nothing.
    pub fn can_afford(&self, rho: f64) -> Result<bool, PrivacyError> {
        check_rho(rho, "privacy::PrivacyLedger::can_afford")?;
        let mut rhos = read_rhos(&self.conn, &self.path)?;
        rhos.push(rho);
        Ok(epsilon_for(compose(rhos)?, self.budget.delta)? <= self.budget.epsilon)
    }

    /// Charges a release.
    ///
    /// Refuses with [`PrivacyError::BudgetExceeded`] (and writes nothing) if the total epsilon
    /// would exceed the budget. Otherwise inserts the row and commits durably *before*
    /// returning the receipt. Check and insert happen in one `BEGIN IMMEDIATE` transaction, so
    /// two processes sharing the file cannot both spend the last of the budget. The caller may
    /// send the noisy labels only after this returns `Ok`.
    pub fn charge(&mut self, charge: Charge) -> Result<Receipt, PrivacyError> {
        const LOCATION: &str = "privacy::PrivacyLedger::charge";
        check_rho(charge.rho, LOCATION)?;
        if let Some(floor) = charge.floor_rho {
            check_rho(floor, LOCATION)?;
        }
        if !(charge.sigma.is_finite() && charge.sigma > 0.0) {
            return Err(PrivacyError::InvalidParameter {
                what: "sigma",
                value: charge.sigma,
                location: LOCATION,
                expected: "the finite noise std > 0 of the release",
            });
        }
        if !(charge.sensitivity.is_finite() && charge.sensitivity >= 0.0) {
            return Err(PrivacyError::InvalidParameter {
                what: "sensitivity",
                value: charge.sensitivity,
                location: LOCATION,
                expected: "the finite L2 sensitivity >= 0 of the release",
            });
        }
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql(path, "begin the charge transaction"))?;
        let mut rhos = read_rhos(&tx, path)?;
        let spent_rho = compose(rhos.clone())?;
        rhos.push(charge.rho);
        let rho_total = compose(rhos)?;
        let epsilon_total = epsilon_for(rho_total, self.budget.delta)?;
        // Written so that a NaN (never expected from OpenDP) counts as over budget.
        let within_budget = epsilon_total <= self.budget.epsilon;
        if !within_budget {
            let spent_epsilon = epsilon_for(spent_rho, self.budget.delta)?;
            // Dropping the transaction rolls it back; nothing was written anyway.
            drop(tx);
            return Err(PrivacyError::BudgetExceeded {
                spent_epsilon,
                would_be_epsilon: epsilon_total,
                budget_epsilon: self.budget.epsilon,
            });
        }
        let floor_epsilon_total = match charge.floor_rho {
            Some(floor) => {
                let mut floors = read_floor_rhos(&tx, path)?;
                floors.push(floor);
                Some(epsilon_for(compose(floors)?, self.budget.delta)?)
            }
            None => None,
        };
        tx.execute(
            "INSERT INTO charges (round, queries, sigma, sensitivity, rho, floor_rho)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                charge.round,
                charge.queries,
                charge.sigma,
                charge.sensitivity,
                charge.rho,
                charge.floor_rho
            ],
        )
        .map_err(sql(path, "insert the charge"))?;
        tx.commit().map_err(sql(path, "commit the charge"))?;
        Ok(Receipt {
            round: charge.round,
            rho: charge.rho,
            rho_total,
            epsilon_total,
            delta: self.budget.delta,
            sigma: charge.sigma,
            sensitivity: charge.sensitivity,
            floor_epsilon_total,
        })
    }

    /// All charges, in the order they were made.
    pub fn charges(&self) -> Result<Vec<Charge>, PrivacyError> {
        let path = &self.path;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT round, queries, sigma, sensitivity, rho, floor_rho FROM charges
                 ORDER BY id",
            )
            .map_err(sql(path, "prepare the query for charges"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, f64>(2)?,
                    row.get::<_, f64>(3)?,
                    row.get::<_, f64>(4)?,
                    row.get::<_, Option<f64>>(5)?,
                ))
            })
            .map_err(sql(path, "read charges"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql(path, "read charges"))?;
        rows.into_iter()
            .map(|(round, queries, sigma, sensitivity, rho, floor_rho)| {
                let to_u32 = |what: &str, v: i64| {
                    u32::try_from(v).map_err(|_| PrivacyError::CorruptLedger {
                        path: path.clone(),
                        detail: format!("a charge has {what} = {v}, outside 0..=u32::MAX"),
                    })
                };
                Ok(Charge {
                    round: to_u32("round", round)?,
                    queries: to_u32("queries", queries)?,
                    sigma,
                    sensitivity,
                    rho,
                    floor_rho,
                })
            })
            .collect()
    }
}

/// Checks a release cost: finite and `>= 0` (an unbounded loss is never charged).
fn check_rho(rho: f64, location: &'static str) -> Result<(), PrivacyError> {
    if rho.is_finite() && rho >= 0.0 {
        Ok(())
    } else {
        Err(PrivacyError::InvalidParameter {
            what: "rho",
            value: rho,
            location,
            expected: "a finite zCDP cost >= 0 (from the release's privacy map)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::{Projection, private_release, release_rho, release_sensitivity, rho_for};

    fn charge_for(round: u32, queries: usize, classes: usize, sigma: f64) -> Charge {
        let sensitivity = release_sensitivity(queries);
        Charge {
            round,
            queries: queries as u32,
            sigma,
            sensitivity,
            rho: release_rho(queries * classes, sensitivity, sigma).expect("rho"),
            floor_rho: None,
        }
    }

    fn budget() -> Budget {
        Budget {
            epsilon: 4.0,
            delta: 1e-5,
        }
    }

    /// A ledger belongs to the data it was charged for: other data is refused by name, the
    /// same data (whatever file it is read from) reopens it with its spending.
    #[test]
    fn a_ledger_is_bound_to_its_data_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l.sqlite");
        let mut ledger = PrivacyLedger::open(&path, budget(), "aaaa").expect("open");
        ledger.charge(charge_for(0, 50, 10, 30.0)).expect("charge");
        let spent = ledger.rho_spent().expect("spent");
        drop(ledger);
        let err = PrivacyLedger::open(&path, budget(), "bbbb").unwrap_err();
        assert!(
            matches!(&err, PrivacyError::LedgerForOtherData { stored, data, .. }
                if stored == "aaaa" && data == "bbbb"),
            "{err}"
        );
        let again = PrivacyLedger::open(&path, budget(), "aaaa").expect("reopen");
        assert_eq!(again.rho_spent().expect("spent"), spent);
        assert_eq!(rho_charged_at(&path).expect("read"), spent);
        assert_eq!(
            rho_charged_at(&dir.path().join("none.sqlite")).expect("read"),
            0.0
        );
    }

    /// A version-1 ledger (written before fingerprints) keeps its charges and adopts the data
    /// it is next opened for; other data is then refused.
    #[test]
    fn a_version_one_ledger_adopts_the_data_it_is_opened_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v1.sqlite");
        {
            // The version-1 schema, as earlier builds created it.
            let conn = Connection::open(&path).expect("create");
            conn.execute_batch(
                "CREATE TABLE budget (id INTEGER PRIMARY KEY CHECK (id = 1), epsilon REAL NOT \
                 NULL, delta REAL NOT NULL, privacy_unit TEXT NOT NULL, mechanism TEXT NOT NULL);
                 CREATE TABLE charges (id INTEGER PRIMARY KEY AUTOINCREMENT, round INTEGER NOT \
                 NULL, queries INTEGER NOT NULL, sigma REAL NOT NULL, sensitivity REAL NOT NULL, \
                 rho REAL NOT NULL CHECK (rho >= 0));
                 INSERT INTO budget VALUES (1, 4.0, 1e-5, 'record', 'gaussian');
                 INSERT INTO charges (round, queries, sigma, sensitivity, rho)
                     VALUES (0, 50, 30.0, 10.0, 0.25);
                 PRAGMA user_version = 1;",
            )
            .expect("v1 ledger");
        }
        let ledger = PrivacyLedger::open(&path, budget(), "cccc").expect("upgrade");
        assert_eq!(ledger.rho_spent().expect("spent"), 0.25);
        drop(ledger);
        assert!(matches!(
            PrivacyLedger::open(&path, budget(), "dddd"),
            Err(PrivacyError::LedgerForOtherData { .. })
        ));
    }

    #[test]
    fn privacy_ledger_accounts_with_opendp_maps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = Budget {
            epsilon: 50.0,
            delta: 1e-5,
        };
        let mut ledger =
            PrivacyLedger::open(&dir.path().join("n.sqlite"), budget, "data").expect("open");
        assert_eq!(ledger.budget(), budget);
        assert_eq!(ledger.rho_spent().expect("spent"), 0.0);
        assert_eq!(ledger.epsilon_spent().expect("eps"), 0.0);
        // Three rounds of 100 queries x 10 classes at sigma 20, 30, 40 (arbitrary).
        let mut sum = 0.0;
        for (round, sigma) in [(0u32, 20.0), (1, 30.0), (2, 40.0)] {
            let c = charge_for(round, 100, 10, sigma);
            let receipt = ledger.charge(c.clone()).expect("charge");
            // The charged rho is the map's rho for the same parameters.
            assert_eq!(
                receipt.rho,
                release_rho(1000, release_sensitivity(100), sigma).expect("rho")
            );
            sum += c.rho; // three positive terms: the composition rounds up, so >= this
            assert!(receipt.rho_total >= sum && receipt.rho_total <= sum * (1.0 + 1e-15));
            assert_eq!(
                receipt.epsilon_total,
                epsilon_for(receipt.rho_total, 1e-5).expect("eps")
            );
        }
        let spent = ledger.rho_spent().expect("spent");
        let rhos: Vec<f64> = ledger
            .charges()
            .expect("charges")
            .iter()
            .map(|c| c.rho)
            .collect();
        assert_eq!(
            spent,
            ZeroConcentratedDivergence.compose(rhos).expect("compose")
        );
        // epsilon_spent equals epsilon_for(sum of rho) exactly.
        assert_eq!(
            ledger.epsilon_spent().expect("eps"),
            epsilon_for(spent, 1e-5).expect("eps")
        );
        eprintln!(
            "3 charges: rho {spent}, epsilon {}",
            ledger.epsilon_spent().expect("eps")
        );
        assert_eq!(ledger.charges().expect("charges").len(), 3);
        assert_eq!(
            ledger.charges().expect("charges")[1],
            charge_for(1, 100, 10, 30.0)
        );
    }

    #[test]
    fn privacy_ledger_refuses_the_release_that_would_exceed() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A small budget: epsilon 1 at delta 1e-5.
        let budget = Budget {
            epsilon: 1.0,
            delta: 1e-5,
        };
        let mut ledger =
            PrivacyLedger::open(&dir.path().join("n.sqlite"), budget, "data").expect("open");
        let cap = rho_for(budget).expect("rho_for");
        eprintln!("rho_for(epsilon 1, delta 1e-5) = {cap}");
        // 10 queries x 10 classes at sigma 30: rho = (sqrt 20)^2 / (2 * 900) ~= 0.0111 each,
        // and cap ~= 0.0306 (printed above), so exactly 2 releases fit: 3 * 0.0111 > cap.
        // The test itself only relies on the refusal coming, and on "at least one fits".
        let sums: Vec<f64> = (0..100).map(|i| (i % 10) as f64).collect();
        let mut accepted = 0;
        let refused = loop {
            let before_rho = ledger.rho_spent().expect("spent");
            let before_n = ledger.charges().expect("charges").len();
            let would_fit = ledger
                .can_afford(release_rho(100, release_sensitivity(10), 30.0).expect("rho"))
                .expect("afford");
            match private_release(&mut ledger, accepted, &sums, 10, 30.0, &Projection::PLAIN) {
                Ok((labels, receipt)) => {
                    assert!(would_fit, "can_afford said no but charge accepted");
                    assert_eq!(labels.len(), 100);
                    assert!(receipt.epsilon_total <= budget.epsilon);
                    assert!(receipt.rho_total <= cap);
                    accepted += 1;
                    assert!(accepted < 1000, "budget never ran out");
                }
                Err(e) => {
                    assert!(!would_fit, "can_afford said yes but charge refused");
                    // Refusal leaves the ledger exactly as it was.
                    assert_eq!(ledger.rho_spent().expect("spent"), before_rho);
                    assert_eq!(ledger.charges().expect("charges").len(), before_n);
                    break e;
                }
            }
        };
        eprintln!("accepted {accepted} releases before refusal: {refused}");
        assert!(accepted >= 1);
        // Cross-check the count: n releases of equal rho fit iff epsilon_for(n * rho) <= 1
        // (n * rho here vs. OpenDP's rounded-up running sum: equal far beyond these margins).
        let each = release_rho(100, release_sensitivity(10), 30.0).expect("rho");
        let fits = |n: u32| epsilon_for(f64::from(n) * each, 1e-5).expect("eps") <= 1.0;
        assert!(fits(accepted) && !fits(accepted + 1), "accepted {accepted}");
        match refused {
            PrivacyError::BudgetExceeded {
                spent_epsilon,
                would_be_epsilon,
                budget_epsilon,
            } => {
                assert_eq!(budget_epsilon, 1.0);
                assert!(spent_epsilon <= 1.0 && would_be_epsilon > 1.0);
                assert_eq!(spent_epsilon, ledger.epsilon_spent().expect("eps"));
            }
            other => panic!("expected BudgetExceeded, got {other}"),
        }
        // A direct charge is refused the same way and changes nothing.
        let n = ledger.charges().expect("charges").len();
        assert!(matches!(
            ledger.charge(charge_for(99, 10, 10, 30.0)),
            Err(PrivacyError::BudgetExceeded { .. })
        ));
        assert_eq!(ledger.charges().expect("charges").len(), n);
        // A free release (rho 0) still fits.
        assert!(ledger.can_afford(0.0).expect("afford"));
    }

    #[test]
    fn privacy_ledger_survives_a_crash_and_keeps_its_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node-3.sqlite");
        let budget = Budget {
            epsilon: 4.0,
            delta: 1e-6,
        };
        let (spent, charges) = {
            let mut ledger = PrivacyLedger::open(&path, budget, "data").expect("open");
            // 50 queries x 10 classes at sigma 30: rho = 100 / 1800 ~= 0.056 each, ~1.4 epsilon.
            ledger.charge(charge_for(0, 50, 10, 30.0)).expect("charge");
            ledger.charge(charge_for(1, 50, 10, 30.0)).expect("charge");
            (
                ledger.rho_spent().expect("spent"),
                ledger.charges().expect("charges"),
            )
            // Dropped here: as if the node crashed after charging, before sending.
        };
        assert!(spent > 0.0);
        let ledger = PrivacyLedger::open(&path, budget, "data").expect("reopen");
        assert_eq!(ledger.rho_spent().expect("spent"), spent);
        assert_eq!(ledger.charges().expect("charges"), charges);
        drop(ledger);
        // A different budget is refused, not reset.
        for other in [
            Budget {
                epsilon: 8.0,
                delta: 1e-6,
            },
            Budget {
                epsilon: 4.0,
                delta: 1e-5,
            },
        ] {
            assert!(matches!(
                PrivacyLedger::open(&path, other, "data"),
                Err(PrivacyError::BudgetMismatch { .. })
            ));
        }
        // ... and the refusal did not touch the file.
        let ledger = PrivacyLedger::open(&path, budget, "data").expect("reopen");
        assert_eq!(ledger.rho_spent().expect("spent"), spent);
        // An invalid budget is refused before the file is touched.
        assert!(matches!(
            PrivacyLedger::open(
                &dir.path().join("x.sqlite"),
                Budget {
                    epsilon: 1.0,
                    delta: 0.0
                },
                "data"
            ),
            Err(PrivacyError::InvalidBudget { .. })
        ));
        assert!(!dir.path().join("x.sqlite").exists());
    }

    #[test]
    fn privacy_ledger_unlimited_budget_round_trips() {
        // +inf must survive SQLite's REAL column, or the reopen would mismatch.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("inf.sqlite");
        let budget = Budget {
            epsilon: f64::INFINITY,
            delta: 1e-5,
        };
        let mut ledger = PrivacyLedger::open(&path, budget, "data").expect("open");
        ledger.charge(charge_for(0, 1000, 10, 0.5)).expect("charge");
        drop(ledger);
        let ledger = PrivacyLedger::open(&path, budget, "data").expect("reopen");
        assert_eq!(ledger.budget().epsilon, f64::INFINITY);
        assert!(ledger.can_afford(1e6).expect("afford"));
    }

    #[test]
    fn privacy_ledger_rejects_invalid_charges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = Budget {
            epsilon: 1.0,
            delta: 1e-5,
        };
        let mut ledger =
            PrivacyLedger::open(&dir.path().join("n.sqlite"), budget, "data").expect("open");
        for rho in [-0.1, f64::NAN, f64::INFINITY] {
            let mut c = charge_for(0, 1, 2, 10.0);
            c.rho = rho;
            assert!(matches!(
                ledger.charge(c),
                Err(PrivacyError::InvalidParameter { what: "rho", .. })
            ));
        }
        assert!(ledger.can_afford(f64::NAN).is_err());
        assert!(ledger.charges().expect("charges").is_empty());
    }
}

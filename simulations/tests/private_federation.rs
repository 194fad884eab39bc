//! A small private federation in one process: budgets hold, exhausted nodes leave, and the
//! federation completes without them.

use fd_client::config::PrivacyMode;
use fd_client::privacy::epsilon_for;
use fd_sim::datasets::{DatasetKind, SyntheticSpec};
use fd_sim::federation::{self, SimConfig};

fn small_config() -> SimConfig {
    let mut config = SimConfig::new(DatasetKind::Synthetic);
    config.clients = 3;
    config.rounds = 4;
    config.synthetic = SyntheticSpec {
        records_per_client: 300,
        features: 5,
        classes: 3,
        test_records: 60,
        public_records: 40,
        ..SyntheticSpec::default()
    };
    config.training.local_steps = 40;
    config.training.steps_per_round = 20;
    config.training.hidden = vec![16];
    config.privacy.teacher_local_steps = 20;
    config.privacy.teacher_steps_per_round = 5;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_budgets_stop_releases_and_the_federation_completes() {
    let mut config = small_config();
    config.queries_per_round = Some(10);
    config.privacy.mode = PrivacyMode::Shards;
    // A release of 10 queries has L2 sensitivity sqrt(20), so with sigma = 10 it costs
    // rho = 20 / (2 * 100) = 0.1 (Delta^2 / (2 sigma^2)); a budget worth rho = 0.25 pays for two
    // releases and refuses the third.
    config.privacy.sigma = Some(10.0);
    config.privacy.delta = 1e-5;
    config.privacy.epsilon = epsilon_for(0.25, 1e-5).unwrap();
    let result = federation::run(&config)
        .await
        .expect("federation completes");

    assert_eq!(result.privacy.unit, "record");
    for c in &result.clients {
        let spent = c.epsilon_spent.expect("private clients report epsilon");
        assert!(spent <= config.privacy.epsilon, "{} spent {spent}", c.node);
        assert_eq!(
            c.contributions, 2,
            "{}: two releases fit the budget",
            c.node
        );
        let why = c.left.as_deref().expect("left when the budget ran out");
        assert!(why.contains("budget"), "{why}");
        // The third round trained but released nothing: accuracy was still measured.
        assert_eq!(c.round_acc.len(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_run_spends_at_most_its_budget() {
    let mut config = small_config();
    config.privacy.mode = PrivacyMode::Shards;
    config.privacy.epsilon = 1.0;
    config.privacy.delta = 1e-5;
    let result = federation::run(&config)
        .await
        .expect("federation completes");
    for c in &result.clients {
        let spent = c.epsilon_spent.expect("epsilon reported");
        // The noise is set from the budget so the planned releases spend (just under) all of
        // it: within 1e-6 of 1.0 and never above.
        assert!(
            spent <= 1.0 && spent > 1.0 - 1e-6,
            "{} spent {spent}",
            c.node
        );
        assert_eq!(c.contributions, 4);
        assert!(c.left.is_none());
        assert!(c.sigma.expect("sigma") > 0.0);
    }
    assert_eq!(result.privacy.epsilon, Some(1.0));
    assert!(result.privacy.mechanism.contains("gaussian"));
}

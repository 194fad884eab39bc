//! Heterogeneous students in one federation: MLP and CNN nodes interoperate through soft labels
//! alone, and every node reports its student against its teacher.

use fd_sim::datasets::DatasetKind;
use fd_sim::federation::{self, SimConfig, StudentMix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_mlp_and_cnn_students_federate_and_report_compression_metrics() {
    let mut config = SimConfig::new(DatasetKind::Digits);
    config.clients = 4;
    config.rounds = 2;
    config.students = StudentMix::Mixed;
    // Nearly IID, so that every node sees every digit in this short run.
    config.beta = 100.0;
    let t = &mut config.training;
    t.local_steps = 60;
    t.steps_per_round = 20;
    t.hidden = vec![32];
    t.cnn.channels = vec![4, 8];
    t.teacher.hidden = vec![64, 64];
    t.teacher.local_steps = 60;
    t.teacher.steps_per_round = 10;
    t.teacher.feature_weight = 0.5;
    t.teacher.augment = true;
    let result = federation::run(&config)
        .await
        .expect("federation completes");

    let kinds: Vec<&str> = result
        .clients
        .iter()
        .map(|c| c.metrics.student.as_str())
        .collect();
    assert_eq!(kinds, ["mlp[32]", "cnn[4,8]", "mlp[32]", "cnn[4,8]"]);
    for c in &result.clients {
        assert_eq!(c.contributions, 2, "{} took part in every round", c.node);
        // Ten digit classes: chance is 0.1; a hundred-odd steps on every digit are far above it.
        assert!(c.federated_acc > 0.5, "{}: {}", c.node, c.federated_acc);
        assert!((0.0..=1.0).contains(&c.metrics.macro_f1));
        // The teacher mlp[64,64] has 64*64+64 + 64*64+64 + 64*10+10 = 8970 parameters;
        // mlp[32] 64*32+32 + 32*10+10 = 2410; cnn[4,8] 4*9+4 + 8*4*9+8 + (4*4*8)*10+10 = 1626
        // (one 2x2 pool between the convolutions: 8x8 maps, then 4x4).
        let student_parameters = if c.metrics.student.starts_with("mlp") {
            2410
        } else {
            1626
        };
        assert_eq!(c.metrics.student_parameters, student_parameters);
        let ratio = c
            .metrics
            .compression_ratio
            .expect("a local teacher to compare with");
        assert!(
            (ratio - 8970.0 / student_parameters as f64).abs() < 1e-9,
            "{ratio}"
        );
        // Measured, so only its presence and sign are checked.
        assert!(c.metrics.speedup.is_some_and(|s| s > 0.0 && s.is_finite()));
        let cka = c.metrics.cka.expect("cka");
        assert!((0.0..=1.0 + 1e-9).contains(&cka), "{cka}");
    }
    let json = serde_json::to_value(&result).unwrap();
    for key in ["compression_ratio", "speedup", "cka", "macro_f1"] {
        assert!(json["clients"][1][key].is_number(), "clients[1].{key}");
    }
}

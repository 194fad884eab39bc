//! Whole rounds of secure aggregation in memory: the coordinator's relaying is played by the
//! test, which can drop nodes, reorder, or tamper as a dishonest coordinator would.

use fd_secagg::{
    EcdsaP256Signer, EncryptedShares, KeyAdvert, MaskedInput, Node, NodeId, RoundConfig,
    SecAggError, UnmaskResponse, aggregate, centred, verify_ecdsa_p256,
};
use rand::RngExt;

/// Each node's certificate key (ECDSA P-256, as fd-certs issues), made afresh.
fn signers(n: usize) -> Vec<EcdsaP256Signer> {
    let rng = ring::rand::SystemRandom::new();
    (0..n)
        .map(|_| {
            let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &rng,
            )
            .unwrap();
            EcdsaP256Signer::from_pkcs8(pkcs8.as_ref()).unwrap()
        })
        .collect()
}

struct Round {
    config: RoundConfig,
    signers: Vec<EcdsaP256Signer>,
    nodes: Vec<Node>,
    adverts: Vec<KeyAdvert>,
    public_keys: Vec<Vec<u8>>,
}

fn start(n: usize, config: RoundConfig) -> Round {
    let signers = signers(n);
    let public_keys = signers.iter().map(|s| s.public_key()).collect();
    let (nodes, adverts) = signers
        .iter()
        .enumerate()
        .map(|(i, s)| Node::new(i as NodeId, config, s).unwrap())
        .unzip();
    Round {
        config,
        signers,
        nodes,
        adverts,
        public_keys,
    }
}

/// Checks a signature against the certificate key of the node it names.
fn verifier(public_keys: Vec<Vec<u8>>) -> impl Fn(NodeId, &[u8], &[u8]) -> bool {
    move |node, message, signature| {
        public_keys
            .get(node as usize)
            .is_some_and(|pk| verify_ecdsa_p256(pk, message, signature))
    }
}

impl Round {
    /// Steps 2 and 3 for every node, with `inputs[i]` node i's vector; nodes in
    /// `drop_before_masking` share keys but send no masked vector.
    fn mask(
        &mut self,
        inputs: &[Vec<u32>],
        drop_before_masking: &[NodeId],
    ) -> (Vec<NodeId>, Vec<MaskedInput>) {
        let adverts = self.adverts.clone();
        let verify = verifier(self.public_keys.clone());
        let mut sent: Vec<EncryptedShares> = Vec::new();
        for node in &mut self.nodes {
            sent.extend(node.share_keys(&adverts, &verify).unwrap());
        }
        let shared: Vec<NodeId> = (0..self.nodes.len() as NodeId).collect();
        let mut masked = Vec::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let id = i as NodeId;
            let mine: Vec<EncryptedShares> = sent.iter().filter(|e| e.to == id).cloned().collect();
            let m = node.masked_input(&mine, &inputs[i]).unwrap();
            if !drop_before_masking.contains(&id) {
                masked.push(m);
            }
        }
        (shared, masked)
    }

    /// Step 4 for the survivors that answer (`silent` survivors sent their vector but drop
    /// before answering).
    fn unmask(
        &mut self,
        survivors: &[NodeId],
        silent: &[NodeId],
    ) -> Result<Vec<UnmaskResponse>, SecAggError> {
        let mut out = Vec::new();
        for &s in survivors.iter().filter(|s| !silent.contains(s)) {
            out.push(self.nodes[s as usize].unmask(survivors)?);
        }
        Ok(out)
    }
}

fn random_inputs(n: usize, len: usize) -> Vec<Vec<u32>> {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| (0..len).map(|_| rng.random()).collect())
        .collect()
}

fn wrapping_sum(inputs: &[Vec<u32>], of: &[NodeId]) -> Vec<u32> {
    let mut sum = vec![0u32; inputs[0].len()];
    for &i in of {
        for (s, v) in sum.iter_mut().zip(&inputs[i as usize]) {
            *s = s.wrapping_add(*v);
        }
    }
    sum
}

fn config(len: usize, threshold: usize, min_survivors: usize) -> RoundConfig {
    RoundConfig {
        context: *b"fd-secagg tests: one federation ",
        round: 7,
        len,
        threshold,
        min_survivors,
    }
}

/// Six nodes; any four shares rebuild a secret (more than half); nodes help unmask with at
/// least four survivors (N - t with t = 2 dropouts tolerated).
#[test]
fn the_unmasked_sum_is_the_survivors_sum_exactly_with_up_to_two_dropouts() {
    let (n, len) = (6, 1000);
    // Random u32s: the sums wrap modulo 2^32 many times over.
    let inputs = random_inputs(n, len);
    for dropped in [vec![], vec![4], vec![1, 5]] {
        let mut round = start(n, config(len, 4, 4));
        let (shared, masked) = round.mask(&inputs, &dropped);
        let survivors: Vec<NodeId> = shared
            .iter()
            .copied()
            .filter(|s| !dropped.contains(s))
            .collect();
        let responses = round.unmask(&survivors, &[]).unwrap();
        let sum = aggregate(&round.config, &round.adverts, &shared, &masked, &responses).unwrap();
        assert_eq!(
            sum,
            wrapping_sum(&inputs, &survivors),
            "dropped {dropped:?}"
        );
        // No single masked vector is its input.
        for m in &masked {
            assert_ne!(m.values, inputs[m.node as usize]);
        }
    }
    // Signed inputs (votes plus negative noise) wrap into u32 and read back exactly.
    let signed: Vec<Vec<i64>> = (0..n as i64)
        .map(|i| (0..len as i64).map(|j| (j % 7) - 3 * i).collect())
        .collect();
    let as_u32: Vec<Vec<u32>> = signed
        .iter()
        .map(|v| v.iter().map(|&x| x as u32).collect())
        .collect();
    let mut round = start(n, config(len, 4, 4));
    let (shared, masked) = round.mask(&as_u32, &[]);
    let responses = round.unmask(&shared, &[]).unwrap();
    let sum = aggregate(&round.config, &round.adverts, &shared, &masked, &responses).unwrap();
    for (j, &v) in sum.iter().enumerate() {
        let want: i64 = signed.iter().map(|row| row[j]).sum();
        assert_eq!(centred(v), want);
    }
    // A survivor that sends its vector and then falls silent: the other answers suffice.
    let mut round = start(n, config(len, 4, 4));
    let (shared, masked) = round.mask(&inputs, &[0]);
    let survivors = [1, 2, 3, 4, 5];
    let responses = round.unmask(&survivors, &[3]).unwrap();
    assert_eq!(responses.len(), 4);
    let sum = aggregate(&round.config, &round.adverts, &shared, &masked, &responses).unwrap();
    assert_eq!(sum, wrapping_sum(&inputs, &survivors));
}

#[test]
fn three_dropouts_are_refused_by_every_node_and_by_the_aggregate() {
    let (n, len) = (6, 16);
    let inputs = random_inputs(n, len);
    let mut round = start(n, config(len, 4, 4));
    let (shared, masked) = round.mask(&inputs, &[0, 2, 4]);
    let survivors = [1, 3, 5];
    for &s in &survivors {
        let err = round.nodes[s as usize].unmask(&survivors).unwrap_err();
        assert_eq!(
            err,
            SecAggError::TooFewNodes {
                step: "unmask",
                have: 3,
                need: 4
            }
        );
    }
    let err = aggregate(&round.config, &round.adverts, &shared, &masked, &[]).unwrap_err();
    assert!(
        matches!(
            err,
            SecAggError::TooFewNodes {
                have: 3,
                need: 4,
                ..
            }
        ),
        "{err}"
    );
}

/// What one node sends the coordinator is uniform modulo 2^32 whatever its input: the top
/// byte of 65,536 masked zeros falls evenly into 256 bins.
#[test]
fn a_masked_vector_is_indistinguishable_from_uniform() {
    let (n, len) = (4, 1 << 16);
    let zeros = vec![vec![0u32; len]; n];
    let mut round = start(n, config(len, 3, 3));
    let (_, masked) = round.mask(&zeros, &[]);
    // Pearson's chi-square of the top bytes against uniform, 255 degrees of freedom.
    let chi_square = |values: &[u32]| {
        let mut bins = [0f64; 256];
        for v in values {
            bins[(v >> 24) as usize] += 1.0;
        }
        let expected = values.len() as f64 / 256.0;
        bins.iter()
            .map(|b| (b - expected).powi(2) / expected)
            .sum::<f64>()
    };
    // The 0.999 quantile of chi-square with 255 degrees of freedom is 330.5 (tables, or
    // scipy.stats.chi2.ppf(0.999, 255)): each node's check fails by chance once in 1,000 runs.
    for m in &masked {
        let stat = chi_square(&m.values);
        assert!(stat < 330.5, "node {}: chi-square {stat:.1}", m.node);
    }
    // The same statistic rejects a vector that is not uniform: the inputs themselves.
    assert!(chi_square(&zeros[0]) > 330.5);
}

#[test]
fn a_coordinator_that_substitutes_a_nodes_keys_is_detected() {
    let (n, len) = (4, 8);
    let mut round = start(n, config(len, 3, 3));
    let verify = verifier(round.public_keys.clone());
    // The coordinator puts a mask key of its own in node 2's place...
    let mut forged = round.adverts.clone();
    forged[2].mask_key = [9u8; 32];
    // ...or re-signs the forged advert with a certificate key of its own.
    let mut resigned = forged.clone();
    let own = signers(1).remove(0);
    let m = KeyAdvert::signed_bytes(
        &round.config,
        2,
        &resigned[2].cipher_key,
        &resigned[2].mask_key,
    );
    resigned[2].signature = fd_secagg::Signer::sign(&own, &m);
    for adverts in [forged, resigned] {
        let err = round.nodes[0].share_keys(&adverts, &verify).unwrap_err();
        assert_eq!(err, SecAggError::BadSignature { node: 2 });
    }
    // Node 2's genuine advert from another federation's round 7 (the coordinator could have
    // rebuilt that round's mask key had node 2 dropped there) does not verify here.
    let elsewhere = RoundConfig {
        context: *b"fd-secagg tests: another one    ",
        ..round.config
    };
    let (_, replayed) = Node::new(2, elsewhere, &round.signers[2]).unwrap();
    let mut adverts = round.adverts.clone();
    adverts[2] = replayed;
    let err = round.nodes[0].share_keys(&adverts, &verify).unwrap_err();
    assert_eq!(err, SecAggError::BadSignature { node: 2 });
    // The honest adverts pass.
    let honest = round.adverts.clone();
    assert!(round.nodes[1].share_keys(&honest, &verify).is_ok());
}

#[test]
fn a_node_reveals_once_a_round_and_only_to_a_roster_it_knows() {
    let (n, len) = (5, 8);
    let inputs = random_inputs(n, len);
    let mut round = start(n, config(len, 3, 3));
    round.mask(&inputs, &[]);
    // Asked again with node 4 "dropped", a node would reveal node 4's mask key after having
    // revealed its self-mask seed, which together unmask node 4's vector: refused.
    round.nodes[0].unmask(&[0, 1, 2, 3, 4]).unwrap();
    assert_eq!(
        round.nodes[0].unmask(&[0, 1, 2, 3]).unwrap_err(),
        SecAggError::AlreadyUnmasked { round: 7 }
    );
    // A survivor list naming a node that never shared keys.
    assert!(matches!(
        round.nodes[1].unmask(&[0, 1, 2, 9]).unwrap_err(),
        SecAggError::UnknownNode { node: 9, .. }
    ));
}

#[test]
fn a_threshold_of_half_the_nodes_or_less_is_refused() {
    let mut round = start(4, config(8, 2, 3));
    let verify = verifier(round.public_keys.clone());
    let adverts = round.adverts.clone();
    let err = round.nodes[0].share_keys(&adverts, &verify).unwrap_err();
    assert!(
        matches!(&err, SecAggError::Config(m) if m.contains("threshold 2 of 4")),
        "{err}"
    );
}

#[test]
fn shares_misdelivered_to_another_node_do_not_decrypt() {
    let (n, len) = (4, 8);
    let mut round = start(n, config(len, 3, 3));
    let verify = verifier(round.public_keys.clone());
    let adverts = round.adverts.clone();
    let mut sent = Vec::new();
    let mut nodes = std::mem::take(&mut round.nodes);
    for node in &mut nodes {
        sent.extend(node.share_keys(&adverts, &verify).unwrap());
    }
    // Node 1 is handed what node 0 encrypted for node 2, relabelled as its own.
    let mut stolen: Vec<EncryptedShares> = sent.iter().filter(|e| e.to == 1).cloned().collect();
    let for_two = sent.iter().find(|e| e.from == 0 && e.to == 2).unwrap();
    stolen[0] = EncryptedShares {
        to: 1,
        ..for_two.clone()
    };
    let err = nodes[1].masked_input(&stolen, &[0; 8]).unwrap_err();
    assert_eq!(err, SecAggError::Decrypt { from: 0 });
}

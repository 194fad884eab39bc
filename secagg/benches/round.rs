//! One secure-aggregation round in memory at 10 and 100 nodes: each step's time per node and
//! the coordinator's, and the bytes each node sends and receives (bincode, as the protocol
//! frames messages). Two nodes drop out after sharing keys, so the coordinator also rebuilds
//! their mask keys. Prints a report; nothing is asserted.
//!
//! `cargo bench -p fd-secagg --bench round`

use std::time::{Duration, Instant};

use fd_secagg::{
    EcdsaP256Signer, EncryptedShares, MaskedInput, Node, NodeId, RoundConfig, aggregate,
    verify_ecdsa_p256,
};

/// A round's release: 100 public records x 10 classes of vote counts.
const LEN: usize = 1_000;
const DROPOUTS: usize = 2;
const REPEATS: usize = 3;

fn bytes<T: serde::Serialize>(value: &T) -> usize {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map(|v| v.len())
        .unwrap_or(0)
}

struct Figures {
    keys: Duration,
    share: Duration,
    mask: Duration,
    unmask: Duration,
    aggregate: Duration,
    up: usize,
    down: usize,
}

fn round(n: usize) -> Figures {
    let rng = ring::rand::SystemRandom::new();
    let signers: Vec<EcdsaP256Signer> = (0..n)
        .map(|_| {
            let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &rng,
            )
            .expect("a key");
            EcdsaP256Signer::from_pkcs8(pkcs8.as_ref()).expect("a signer")
        })
        .collect();
    let public: Vec<Vec<u8>> = signers.iter().map(|s| s.public_key()).collect();
    let verify = |node: NodeId, m: &[u8], s: &[u8]| {
        public
            .get(node as usize)
            .is_some_and(|pk| verify_ecdsa_p256(pk, m, s))
    };
    let config = RoundConfig {
        context: [7; 32],
        round: 1,
        len: LEN,
        threshold: n / 2 + 1,
        min_survivors: n - DROPOUTS,
    };
    let t = Instant::now();
    let (mut nodes, adverts): (Vec<Node>, Vec<_>) = signers
        .iter()
        .enumerate()
        .map(|(i, s)| Node::new(i as NodeId, config, s).expect("keys"))
        .unzip();
    let keys = t.elapsed();
    let t = Instant::now();
    let mut sent: Vec<Vec<EncryptedShares>> = Vec::new();
    for node in &mut nodes {
        sent.push(node.share_keys(&adverts, &verify).expect("shares"));
    }
    let share = t.elapsed();
    let all: Vec<EncryptedShares> = sent.iter().flatten().cloned().collect();
    let input: Vec<u32> = (0..LEN as u32).collect();
    let t = Instant::now();
    let mut masked: Vec<MaskedInput> = Vec::new();
    let mut inboxes = Vec::new();
    for (i, node) in nodes.iter_mut().enumerate() {
        let inbox: Vec<EncryptedShares> = all
            .iter()
            .filter(|e| e.to == i as NodeId)
            .cloned()
            .collect();
        let m = node.masked_input(&inbox, &input).expect("masked");
        inboxes.push(inbox);
        if i >= DROPOUTS {
            masked.push(m);
        }
    }
    let mask = t.elapsed();
    let survivors: Vec<NodeId> = (DROPOUTS as NodeId..n as NodeId).collect();
    let t = Instant::now();
    let responses: Vec<_> = survivors
        .iter()
        .map(|&s| nodes[s as usize].unmask(&survivors).expect("unmask"))
        .collect();
    let unmask = t.elapsed();
    let shared: Vec<NodeId> = (0..n as NodeId).collect();
    let t = Instant::now();
    let sum = aggregate(&config, &adverts, &shared, &masked, &responses).expect("sum");
    let aggregate = t.elapsed();
    assert_eq!(
        sum[1],
        (n - DROPOUTS) as u32,
        "the sum of the survivors' inputs"
    );
    // Node `DROPOUTS` (a survivor): what it sends and what the coordinator relays to it.
    let me = DROPOUTS;
    let up = bytes(&adverts[me]) + bytes(&sent[me]) + bytes(&masked[0]) + bytes(&responses[0]);
    let down = bytes(&adverts) + bytes(&inboxes[me]) + bytes(&survivors);
    let per_node = |d: Duration| d / n as u32;
    Figures {
        keys: per_node(keys),
        share: per_node(share),
        mask: per_node(mask),
        unmask: unmask / survivors.len() as u32,
        aggregate,
        up,
        down,
    }
}

fn main() {
    println!(
        "secure aggregation, one round of {LEN} u32 values, {DROPOUTS} nodes dropping after \
         sharing keys; medians of {REPEATS} rounds"
    );
    println!(
        "{:>6} {:>10} {:>12} {:>10} {:>10} {:>12} {:>12} {:>12} {:>14}",
        "nodes",
        "keys",
        "share keys",
        "mask",
        "unmask",
        "node total",
        "coordinator",
        "bytes up",
        "bytes down"
    );
    for n in [10, 100] {
        let mut runs: Vec<Figures> = (0..REPEATS).map(|_| round(n)).collect();
        runs.sort_by_key(|f| f.keys + f.share + f.mask + f.unmask + f.aggregate);
        let f = &runs[REPEATS / 2];
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
        println!(
            "{:>6} {:>10} {:>12} {:>10} {:>10} {:>12} {:>12} {:>12} {:>14}",
            n,
            ms(f.keys),
            ms(f.share),
            ms(f.mask),
            ms(f.unmask),
            ms(f.keys + f.share + f.mask + f.unmask),
            ms(f.aggregate),
            f.up,
            f.down
        );
    }
}

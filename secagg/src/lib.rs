//! Secure aggregation of integer vectors: the coordinator learns the sum, modulo 2^32, of the
//! vectors of the nodes that survive a round, and nothing else about any one of them.
//!
//! The protocol is the semi-honest one of Bonawitz et al., "Practical Secure Aggregation for
//! Privacy-Preserving Machine Learning" (CCS 2017), with each node's keys signed by its
//! federation certificate's key so that the coordinator, which relays every message, cannot
//! put its own keys in a node's place:
//!
//! 1. **Advertise keys.** Each node makes two X25519 key pairs, one to encrypt what it sends
//!    other nodes through the coordinator and one to agree pairwise mask seeds, and signs both
//!    public keys ([`Node::new`]). The coordinator relays every advertisement to every node.
//! 2. **Share keys.** Each node checks every signature, draws a self-mask seed, and splits its
//!    mask secret key and that seed into Shamir shares over GF(256) (any `threshold` of them
//!    rebuild each), one pair of shares per node, each encrypted for its recipient
//!    ([`Node::share_keys`]).
//! 3. **Masked input.** Each node adds to its vector the stream of its self-mask seed and, for
//!    every other node that shared keys, the stream of their agreed pairwise seed, added by the
//!    lower-numbered node of the pair and subtracted by the other ([`Node::masked_input`]).
//!    Pairwise masks cancel in the sum; every single masked vector is uniform.
//! 4. **Unmask.** Told which nodes' masked vectors arrived, each survivor reveals its shares of
//!    the survivors' self-mask seeds and of the dropped nodes' mask secret keys, never both for
//!    one node, and only once a round; it refuses if fewer than `min_survivors` nodes survive
//!    ([`Node::unmask`]). Shares are needed from more than half the nodes, so a coordinator
//!    that tells different nodes different survivors still cannot gather both kinds of
//!    shares of one node. The coordinator rebuilds those secrets and removes every mask that
//!    does not cancel ([`aggregate`]).
//!
//! Mask streams are ChaCha20 keystreams under keys derived by HKDF-SHA256 from the X25519
//! agreements (or the self-mask seed), read as little-endian `u32`s; shares travel under
//! ChaCha20-Poly1305 with a key derived per round, sender and recipient.

use std::collections::{BTreeMap, BTreeSet};

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use rand::RngExt;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use serde::{Deserialize, Serialize};
use vsss_rs::Gf256;
use x25519_dalek::{PublicKey, StaticSecret};

/// A node's number in the round's roster. (Each Shamir share carries its own participant
/// number: the recipient's position in the sorted roster, plus one.)
pub type NodeId = u32;

/// What every node and the coordinator agree on for one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundConfig {
    /// What names the federation run (for example a hash of the federation's name and the
    /// coordinator's run), signed with every node's keys and mixed into every derived key, so
    /// that nothing of one federation can be replayed into another.
    pub context: [u8; 32],
    /// The round, mixed into every derived key so that nothing is reused across rounds.
    pub round: u64,
    /// Length of the vectors summed.
    pub len: usize,
    /// Shares needed to rebuild a node's secrets: more than half the nodes that share keys
    /// (more than `(n + c) / 2` to tolerate `c` colluders), at most the fewest survivors.
    pub threshold: usize,
    /// The fewest surviving nodes a node helps to unmask; below it the round is lost.
    pub min_survivors: usize,
}

/// Why a step of the protocol failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecAggError {
    /// A key advertisement's signature does not verify: the coordinator (or someone) changed it.
    #[error("node {node}: the signature on its advertised keys does not verify")]
    BadSignature { node: NodeId },
    /// Fewer nodes than the protocol needs at this step.
    #[error("{step}: {have} nodes, at least {need} needed")]
    TooFewNodes {
        step: &'static str,
        have: usize,
        need: usize,
    },
    /// A message names a node outside the round's roster, or this node twice.
    #[error("{step}: node {node} is not in the round's roster or appears twice")]
    UnknownNode { step: &'static str, node: NodeId },
    /// An encrypted share does not decrypt for its recipient.
    #[error("the shares from node {from} do not decrypt")]
    Decrypt { from: NodeId },
    /// The node was asked to unmask a second time in one round.
    #[error("this node already answered the unmasking request of round {round}")]
    AlreadyUnmasked { round: u64 },
    /// A vector or share of the wrong size.
    #[error("node {node}: {what} has {got} values, {want} expected")]
    Length {
        node: NodeId,
        what: &'static str,
        got: usize,
        want: usize,
    },
    /// Rebuilt secrets that do not match what the node advertised.
    #[error("node {node}: the rebuilt mask key does not match its advertised public key")]
    KeyMismatch { node: NodeId },
    /// The configuration cannot work.
    #[error("round configuration: {0}")]
    Config(String),
    /// Secret sharing failed.
    #[error("secret sharing: {0}")]
    Sharing(String),
}

/// Signs a node's key advertisement with its federation certificate's key.
pub trait Signer {
    /// A signature over `message`.
    fn sign(&self, message: &[u8]) -> Vec<u8>;
}

/// Checks a node's signature over `message` against its certificate's public key.
pub type Verify<'a> = &'a dyn Fn(NodeId, &[u8], &[u8]) -> bool;

/// An ECDSA P-256 key (the kind fd-certs issues) as a [`Signer`].
pub struct EcdsaP256Signer {
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
}

impl EcdsaP256Signer {
    /// From the PKCS#8 DER bytes of the node's private key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<EcdsaP256Signer, SecAggError> {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8,
            &rng,
        )
        .map_err(|e| SecAggError::Config(format!("the signing key is not ECDSA P-256: {e}")))?;
        Ok(EcdsaP256Signer { key, rng })
    }

    /// The public key, uncompressed SEC1 (as in the certificate).
    pub fn public_key(&self) -> Vec<u8> {
        use ring::signature::KeyPair;
        self.key.public_key().as_ref().to_vec()
    }
}

impl Signer for EcdsaP256Signer {
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        // Signing fails only if the system's random source does.
        self.key
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .unwrap_or_default()
    }
}

/// Whether `signature` is an ECDSA P-256 SHA-256 signature of `message` by `public_key`.
pub fn verify_ecdsa_p256(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, public_key)
        .verify(message, signature)
        .is_ok()
}

/// Step 1's message: a node's two public keys, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAdvert {
    pub node: NodeId,
    /// Agrees the keys that encrypt shares sent to this node.
    pub cipher_key: [u8; 32],
    /// Agrees pairwise mask seeds with this node.
    pub mask_key: [u8; 32],
    pub signature: Vec<u8>,
}

impl RoundConfig {
    /// The context and the round, as bytes every derivation and signature includes.
    fn label(&self) -> Vec<u8> {
        let mut label = self.context.to_vec();
        label.extend(self.round.to_le_bytes());
        label
    }
}

impl KeyAdvert {
    /// The bytes a node signs: a label, the run's context and round, the node and both keys.
    pub fn signed_bytes(
        config: &RoundConfig,
        node: NodeId,
        cipher_key: &[u8; 32],
        mask_key: &[u8; 32],
    ) -> Vec<u8> {
        let mut m = b"fd-secagg key advert v1".to_vec();
        m.extend(config.label());
        m.extend(node.to_le_bytes());
        m.extend(cipher_key);
        m.extend(mask_key);
        m
    }
}

/// Step 2's message: one node's shares for another, encrypted for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedShares {
    pub from: NodeId,
    pub to: NodeId,
    pub ciphertext: Vec<u8>,
}

/// Step 3's message: a node's masked vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInput {
    pub node: NodeId,
    pub values: Vec<u32>,
}

/// A share one node reveals of another's secret in step 4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Revealed {
    /// Of a survivor's self-mask seed.
    SelfSeed { of: NodeId, share: Vec<u8> },
    /// Of a dropped node's mask secret key.
    MaskKey { of: NodeId, share: Vec<u8> },
}

/// Step 4's message: what one survivor reveals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskResponse {
    pub node: NodeId,
    pub revealed: Vec<Revealed>,
}

/// A node's side of one round.
pub struct Node {
    id: NodeId,
    config: RoundConfig,
    cipher_secret: StaticSecret,
    mask_secret: StaticSecret,
    self_seed: [u8; 32],
    /// Every node's verified advertisement (step 2 on).
    peers: BTreeMap<NodeId, KeyAdvert>,
    /// Decrypted shares received, by sender: (of its mask key, of its self seed) (step 3 on).
    shares: BTreeMap<NodeId, (Vec<u8>, Vec<u8>)>,
    unmasked: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn random_secret() -> [u8; 32] {
    let mut rng = rand::rng();
    rng.random()
}

impl Node {
    /// Step 1: fresh keys and a seed for this round, and the signed advertisement to send.
    pub fn new(
        id: NodeId,
        config: RoundConfig,
        signer: &dyn Signer,
    ) -> Result<(Node, KeyAdvert), SecAggError> {
        if config.threshold < 2 || config.len == 0 {
            return Err(SecAggError::Config(format!(
                "threshold {} (at least 2) and length {} (at least 1)",
                config.threshold, config.len
            )));
        }
        let cipher_secret = StaticSecret::from(random_secret());
        let mask_secret = StaticSecret::from(random_secret());
        let cipher_key = PublicKey::from(&cipher_secret).to_bytes();
        let mask_key = PublicKey::from(&mask_secret).to_bytes();
        let signature = signer.sign(&KeyAdvert::signed_bytes(
            &config,
            id,
            &cipher_key,
            &mask_key,
        ));
        let node = Node {
            id,
            config,
            cipher_secret,
            mask_secret,
            self_seed: random_secret(),
            peers: BTreeMap::new(),
            shares: BTreeMap::new(),
            unmasked: false,
        };
        Ok((
            node,
            KeyAdvert {
                node: id,
                cipher_key,
                mask_key,
                signature,
            },
        ))
    }

    /// Step 2: checks every advertisement (its own among them), then shares this node's mask
    /// secret key and self-mask seed among all of them, each pair of shares encrypted for its
    /// recipient (this node's own included, so that it can reveal like any other).
    pub fn share_keys(
        &mut self,
        adverts: &[KeyAdvert],
        verify: Verify<'_>,
    ) -> Result<Vec<EncryptedShares>, SecAggError> {
        let step = "share keys";
        let mut peers = BTreeMap::new();
        for a in adverts {
            let signed = KeyAdvert::signed_bytes(&self.config, a.node, &a.cipher_key, &a.mask_key);
            if !verify(a.node, &signed, &a.signature) {
                return Err(SecAggError::BadSignature { node: a.node });
            }
            if peers.insert(a.node, a.clone()).is_some() {
                return Err(SecAggError::UnknownNode { step, node: a.node });
            }
        }
        let mine = peers.get(&self.id).map(|a| (a.cipher_key, a.mask_key));
        let own = (
            PublicKey::from(&self.cipher_secret).to_bytes(),
            PublicKey::from(&self.mask_secret).to_bytes(),
        );
        if mine != Some(own) {
            return Err(SecAggError::BadSignature { node: self.id });
        }
        check_roster(step, &peers, self.config.threshold)?;
        let n = peers.len();
        let mut rng = rand::rng();
        let sharing = |e: vsss_rs::Error| SecAggError::Sharing(e.to_string());
        let key_shares = Gf256::split_bytes(
            self.config.threshold,
            n,
            self.mask_secret.to_bytes(),
            &mut rng,
        )
        .map_err(sharing)?;
        let seed_shares = Gf256::split_bytes(self.config.threshold, n, self.self_seed, &mut rng)
            .map_err(sharing)?;
        let mut out = Vec::with_capacity(n);
        for ((peer, key_share), seed_share) in peers.values().zip(key_shares).zip(seed_shares) {
            let mut plain = key_share;
            plain.extend(seed_share);
            let key = self.share_key(self.id, peer.node, &peer.cipher_key)?;
            out.push(EncryptedShares {
                from: self.id,
                to: peer.node,
                ciphertext: seal(&key, self.share_aad(self.id, peer.node), plain)?,
            });
        }
        self.peers = peers;
        Ok(out)
    }

    /// Step 3: decrypts the shares sent to this node (their senders are the nodes whose
    /// pairwise masks it adds) and masks `input`.
    pub fn masked_input(
        &mut self,
        received: &[EncryptedShares],
        input: &[u32],
    ) -> Result<MaskedInput, SecAggError> {
        let step = "masked input";
        if input.len() != self.config.len {
            return Err(SecAggError::Length {
                node: self.id,
                what: "the input",
                got: input.len(),
                want: self.config.len,
            });
        }
        let mut shares = BTreeMap::new();
        for e in received {
            let Some(peer) = self.peers.get(&e.from) else {
                return Err(SecAggError::UnknownNode { step, node: e.from });
            };
            if e.to != self.id || shares.contains_key(&e.from) {
                return Err(SecAggError::UnknownNode { step, node: e.from });
            }
            let key = self.share_key(e.from, self.id, &peer.cipher_key)?;
            let plain = open(&key, self.share_aad(e.from, self.id), &e.ciphertext)
                .ok_or(SecAggError::Decrypt { from: e.from })?;
            // Two Shamir shares of 32-byte secrets: a participant byte and 32 bytes each.
            if plain.len() != 66 {
                return Err(SecAggError::Decrypt { from: e.from });
            }
            let (key_share, seed_share) = plain.split_at(33);
            shares.insert(e.from, (key_share.to_vec(), seed_share.to_vec()));
        }
        if !shares.contains_key(&self.id) {
            return Err(SecAggError::UnknownNode {
                step,
                node: self.id,
            });
        }
        check_count(step, shares.len(), self.config.threshold)?;
        let mut values = input.to_vec();
        add_stream(
            &mut values,
            &self_mask_key(&self.config.label(), &self.self_seed),
            1,
        );
        for &other in shares.keys().filter(|&&o| o != self.id) {
            let peer = &self.peers[&other];
            let seed = pair_seed(
                &self.config.label(),
                &self.mask_secret,
                self.id,
                other,
                &peer.mask_key,
            );
            add_stream(&mut values, &seed, if self.id < other { 1 } else { -1 });
        }
        self.shares = shares;
        Ok(MaskedInput {
            node: self.id,
            values,
        })
    }

    /// Step 4: given the nodes whose masked vectors arrived, reveals this node's shares of
    /// their self-mask seeds and of the other (dropped) nodes' mask keys. Refuses below
    /// `min_survivors` (the round is then lost, not under-noised), if this node is not among
    /// them, and on any second request.
    pub fn unmask(&mut self, survivors: &[NodeId]) -> Result<UnmaskResponse, SecAggError> {
        let step = "unmask";
        if self.unmasked {
            return Err(SecAggError::AlreadyUnmasked {
                round: self.config.round,
            });
        }
        let survivors: BTreeSet<NodeId> = survivors.iter().copied().collect();
        let need = self.config.min_survivors.max(self.config.threshold);
        check_count(step, survivors.len(), need)?;
        for &s in &survivors {
            if !self.shares.contains_key(&s) {
                return Err(SecAggError::UnknownNode { step, node: s });
            }
        }
        if !survivors.contains(&self.id) {
            return Err(SecAggError::UnknownNode {
                step,
                node: self.id,
            });
        }
        self.unmasked = true;
        let revealed = self
            .shares
            .iter()
            .map(|(&of, (key_share, seed_share))| {
                if survivors.contains(&of) {
                    Revealed::SelfSeed {
                        of,
                        share: seed_share.clone(),
                    }
                } else {
                    Revealed::MaskKey {
                        of,
                        share: key_share.clone(),
                    }
                }
            })
            .collect();
        Ok(UnmaskResponse {
            node: self.id,
            revealed,
        })
    }

    fn share_key(
        &self,
        from: NodeId,
        to: NodeId,
        peer_cipher_key: &[u8; 32],
    ) -> Result<LessSafeKey, SecAggError> {
        let shared = self
            .cipher_secret
            .diffie_hellman(&PublicKey::from(*peer_cipher_key));
        let mut info = b"fd-secagg shares".to_vec();
        info.extend(self.config.label());
        info.extend(from.to_le_bytes());
        info.extend(to.to_le_bytes());
        let bytes = derive(shared.as_bytes(), &info);
        let key = UnboundKey::new(&aead::CHACHA20_POLY1305, &bytes)
            .map_err(|_| SecAggError::Config("share key".into()))?;
        Ok(LessSafeKey::new(key))
    }

    fn share_aad(&self, from: NodeId, to: NodeId) -> Vec<u8> {
        let mut aad = self.config.label();
        aad.extend(from.to_le_bytes());
        aad.extend(to.to_le_bytes());
        aad
    }
}

fn check_count(step: &'static str, have: usize, need: usize) -> Result<(), SecAggError> {
    if have < need {
        return Err(SecAggError::TooFewNodes { step, have, need });
    }
    Ok(())
}

fn check_roster(
    step: &'static str,
    peers: &BTreeMap<NodeId, KeyAdvert>,
    threshold: usize,
) -> Result<(), SecAggError> {
    check_count(step, peers.len(), threshold)?;
    // Each node answers one unmasking request a round. A coordinator that told some nodes a
    // node survived and others that it dropped could collect both its self-seed shares and
    // its mask-key shares only if two disjoint groups could each reach the threshold: a
    // threshold above half the nodes rules that out (callers tolerating `c` colluders need
    // it above `(n + c) / 2`).
    if threshold * 2 <= peers.len() {
        return Err(SecAggError::Config(format!(
            "threshold {threshold} of {} nodes: it must exceed half of them, or a coordinator \
             telling nodes different survivors could unmask one node's vector",
            peers.len()
        )));
    }
    if peers.len() > 255 {
        return Err(SecAggError::Config(format!(
            "{} nodes share keys; GF(256) shares allow at most 255",
            peers.len()
        )));
    }
    Ok(())
}

/// HKDF-SHA256 of `secret` with `info`: 32 bytes.
fn derive(secret: &[u8], info: &[u8]) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"fd-secagg v1").extract(secret);
    let mut out = [0u8; 32];
    // `expand` and `fill` fail only for lengths above 255 hash lengths; 32 bytes is one.
    if let Ok(okm) = prk.expand(&[info], hkdf::HKDF_SHA256) {
        let _ = okm.fill(&mut out);
    }
    out
}

fn seal(key: &LessSafeKey, aad: Vec<u8>, mut plain: Vec<u8>) -> Result<Vec<u8>, SecAggError> {
    // Each key encrypts one message (it is derived per round, sender and recipient), so a
    // fixed nonce is never reused under a key.
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0; 12]),
        Aad::from(aad),
        &mut plain,
    )
    .map_err(|_| SecAggError::Config("encryption failed".into()))?;
    Ok(plain)
}

fn open(key: &LessSafeKey, aad: Vec<u8>, ciphertext: &[u8]) -> Option<Vec<u8>> {
    let mut buf = ciphertext.to_vec();
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(aad),
            &mut buf,
        )
        .ok()?;
    Some(plain.to_vec())
}

/// The key of the pairwise mask of nodes `a` and `b`: the same from either side.
fn pair_seed(
    label: &[u8],
    secret: &StaticSecret,
    a: NodeId,
    b: NodeId,
    peer_mask_key: &[u8; 32],
) -> [u8; 32] {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer_mask_key));
    let mut info = b"fd-secagg pair mask".to_vec();
    info.extend(label);
    info.extend(a.min(b).to_le_bytes());
    info.extend(a.max(b).to_le_bytes());
    derive(shared.as_bytes(), &info)
}

fn self_mask_key(label: &[u8], seed: &[u8; 32]) -> [u8; 32] {
    let mut info = b"fd-secagg self mask".to_vec();
    info.extend(label);
    derive(seed, &info)
}

/// Adds (`sign` 1) or subtracts (-1) the ChaCha20 keystream under `key`, read as
/// little-endian `u32`s, to `values`, modulo 2^32.
fn add_stream(values: &mut [u32], key: &[u8; 32], sign: i32) {
    let mut cipher = ChaCha20::new(key.into(), &[0u8; 12].into());
    let mut bytes = vec![0u8; values.len() * 4];
    cipher.apply_keystream(&mut bytes);
    for (v, b) in values.iter_mut().zip(bytes.chunks_exact(4)) {
        let m = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        *v = if sign > 0 {
            v.wrapping_add(m)
        } else {
            v.wrapping_sub(m)
        };
    }
}

/// A sum modulo 2^32 read as the signed value it stands for: the representative in
/// `[-2^31, 2^31)`. Honest sums of votes and noise stay far inside that range (see
/// `fd_client::privacy::distributed::wrap_probability`), so negative noise reads as negative.
pub fn centred(value: u32) -> i64 {
    i64::from(value as i32)
}

/// The coordinator's last step: the sum, modulo 2^32, of the survivors' inputs, from the
/// advertisements, the nodes that shared keys, the masked inputs that arrived and the
/// survivors' unmasking responses. Refuses with fewer than `threshold` responses, or fewer
/// than `min_survivors` masked inputs.
pub fn aggregate(
    config: &RoundConfig,
    adverts: &[KeyAdvert],
    shared: &[NodeId],
    masked: &[MaskedInput],
    responses: &[UnmaskResponse],
) -> Result<Vec<u32>, SecAggError> {
    let step = "aggregate";
    let keys: BTreeMap<NodeId, &KeyAdvert> = adverts.iter().map(|a| (a.node, a)).collect();
    let shared: BTreeSet<NodeId> = shared.iter().copied().collect();
    let mut sum = vec![0u32; config.len];
    let mut survivors = BTreeSet::new();
    for m in masked {
        if !shared.contains(&m.node) || !survivors.insert(m.node) {
            return Err(SecAggError::UnknownNode { step, node: m.node });
        }
        if m.values.len() != config.len {
            return Err(SecAggError::Length {
                node: m.node,
                what: "the masked input",
                got: m.values.len(),
                want: config.len,
            });
        }
        for (s, v) in sum.iter_mut().zip(&m.values) {
            *s = s.wrapping_add(*v);
        }
    }
    check_count(
        step,
        survivors.len(),
        config.min_survivors.max(config.threshold),
    )?;
    // Every revealed share, by whose secret it is and which kind.
    let mut seeds: BTreeMap<NodeId, Vec<Vec<u8>>> = BTreeMap::new();
    let mut mask_keys: BTreeMap<NodeId, Vec<Vec<u8>>> = BTreeMap::new();
    let mut answered = BTreeSet::new();
    for r in responses {
        if !survivors.contains(&r.node) || !answered.insert(r.node) {
            return Err(SecAggError::UnknownNode { step, node: r.node });
        }
        for rev in &r.revealed {
            match rev {
                Revealed::SelfSeed { of, share } if survivors.contains(of) => {
                    seeds.entry(*of).or_default().push(share.clone())
                }
                Revealed::MaskKey { of, share }
                    if shared.contains(of) && !survivors.contains(of) =>
                {
                    mask_keys.entry(*of).or_default().push(share.clone())
                }
                Revealed::SelfSeed { of, .. } | Revealed::MaskKey { of, .. } => {
                    return Err(SecAggError::UnknownNode { step, node: *of });
                }
            }
        }
    }
    check_count(step, answered.len(), config.threshold)?;
    let rebuild = |of: NodeId, shares: Option<&Vec<Vec<u8>>>| -> Result<[u8; 32], SecAggError> {
        let shares = shares.map(Vec::as_slice).unwrap_or_default();
        check_count(step, shares.len(), config.threshold)?;
        let bytes = Gf256::combine_bytes(&shares[..config.threshold])
            .map_err(|e| SecAggError::Sharing(format!("node {of}: {e}")))?;
        bytes.try_into().map_err(|b: Vec<u8>| SecAggError::Length {
            node: of,
            what: "a rebuilt secret",
            got: b.len(),
            want: 32,
        })
    };
    for &u in &survivors {
        let seed = rebuild(u, seeds.get(&u))?;
        add_stream(&mut sum, &self_mask_key(&config.label(), &seed), -1);
    }
    for &dropped in shared.difference(&survivors) {
        let secret = StaticSecret::from(rebuild(dropped, mask_keys.get(&dropped))?);
        let advert = keys.get(&dropped).ok_or(SecAggError::UnknownNode {
            step,
            node: dropped,
        })?;
        if PublicKey::from(&secret).to_bytes() != advert.mask_key {
            return Err(SecAggError::KeyMismatch { node: dropped });
        }
        for &u in &survivors {
            let peer = keys
                .get(&u)
                .ok_or(SecAggError::UnknownNode { step, node: u })?;
            let seed = pair_seed(&config.label(), &secret, dropped, u, &peer.mask_key);
            // Survivor `u` added this mask if it is the lower of the pair, subtracted it if not.
            add_stream(&mut sum, &seed, if u < dropped { -1 } else { 1 });
        }
    }
    Ok(sum)
}

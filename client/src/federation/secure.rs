//! The node's side of a secure-aggregation round, without I/O: keys, the roster's checks,
//! masking and unmasking (the protocol is in `fd_secagg`; the wire messages in `fd_protocol`).
//!
//! Every check a node makes against a coordinator that might cheat lives here:
//! - the round's terms (roster, threshold, fewest survivors) must hold up the node's *own*
//!   assumption on colluders, never the coordinator's word: the threshold above half of the
//!   roster plus the colluders, and at least one honest share beyond them in any decoded sum;
//! - every relayed advert's certificate must be a node certificate of the federation CA (valid
//!   now, not revoked), and the advert must be signed by that certificate's key, so the
//!   coordinator cannot substitute keys of its own;
//! - the node helps unmask once per round, and only with at least `min_survivors` survivors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fd_protocol::{Masked, Message, PrivacyReceipt, RoundOpen, SecureRound, SignedAdvert};
use fd_secagg::{EcdsaP256Signer, EncryptedShares, Node, RoundConfig};
use fd_transport::tls::{PeerVerifier, TlsIdentity};

use crate::federation::error::SessionError;
use crate::privacy::release::SecureTerms;

/// What a node needs for secure rounds: its signing key and certificate, the checker of the
/// other nodes' certificates, and its own assumption on colluders.
#[derive(Clone)]
pub struct SecureIdentity {
    signer: Arc<EcdsaP256Signer>,
    certificate: Vec<u8>,
    verifier: Arc<PeerVerifier>,
    colluders: u32,
}

impl std::fmt::Debug for SecureIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("SecureIdentity")
            .field("colluders", &self.colluders)
            .finish_non_exhaustive()
    }
}

impl SecureIdentity {
    /// From the node's TLS identity and the federation's revocation list (PEM text and where
    /// it came from), assuming up to `colluders` nodes collude with the coordinator.
    pub fn new(
        tls: &TlsIdentity,
        crl: Option<(&str, &str)>,
        colluders: u32,
    ) -> Result<SecureIdentity, SessionError> {
        let (certificate, key) = tls.signing_material()?;
        let signer = EcdsaP256Signer::from_pkcs8(&key).map_err(|e| {
            SessionError::Terms(format!(
                "secure aggregation signs key adverts with the node's certificate key, which \
                 must be an ECDSA P-256 PKCS#8 key (as fd-certs issues): {e}"
            ))
        })?;
        Ok(SecureIdentity {
            signer: Arc::new(signer),
            certificate,
            verifier: Arc::new(PeerVerifier::new(&tls.ca_pem, crl)?),
            colluders,
        })
    }
}

/// One secure round in progress at the node.
#[derive(Debug)]
pub struct SecureState {
    round: u32,
    terms: SecureTerms,
    node: Node,
    inbox: Option<Vec<EncryptedShares>>,
    release: Option<(Vec<i64>, u32, Option<PrivacyReceipt>)>,
    masked: bool,
}

/// The coordinator's terms checked against the node's own assumption.
fn check_terms(s: &SecureRound, colluders: u32) -> Result<(), String> {
    let (n, c, t, m) = (s.roster, colluders, s.threshold, s.min_survivors);
    if n > 255 {
        return Err(format!(
            "a roster of {n} nodes (secret sharing over GF(256) allows 255)"
        ));
    }
    if s.node == 0 || s.node > n {
        return Err(format!("node number {} outside the roster 1..={n}", s.node));
    }
    if u64::from(t) * 2 <= u64::from(n) + u64::from(c) {
        return Err(format!(
            "threshold {t} of {n} nodes is not above (nodes + colluders) / 2 with this node's \
             {c} colluders: a coordinator could gather both kinds of shares of a node"
        ));
    }
    if m < t || m > n {
        return Err(format!(
            "fewest survivors {m} must lie between the threshold {t} and the roster {n}"
        ));
    }
    if m <= c {
        return Err(format!(
            "fewest survivors {m} leaves no honest share beyond this node's {c} colluders"
        ));
    }
    Ok(())
}

impl SecureState {
    /// Step 1: checks the round's terms, draws the round's keys and returns the advert to send.
    pub fn open(
        identity: &SecureIdentity,
        open: &RoundOpen,
        secure: &SecureRound,
        classes: usize,
    ) -> Result<(SecureState, Message), SessionError> {
        check_terms(secure, identity.colluders).map_err(|why| {
            SessionError::Terms(format!(
                "secure round {}: the coordinator's terms would weaken this node's privacy: \
                 {why}",
                open.round
            ))
        })?;
        let config = RoundConfig {
            context: secure.context,
            round: u64::from(open.round),
            len: open.query_ids.len() * classes,
            threshold: secure.threshold as usize,
            min_survivors: secure.min_survivors as usize,
        };
        let (node, advert) = Node::new(secure.node, config, identity.signer.as_ref())
            .map_err(|e| SessionError::Protocol(format!("secure round {}: {e}", open.round)))?;
        let state = SecureState {
            round: open.round,
            terms: SecureTerms {
                roster: secure.roster as usize,
                min_survivors: secure.min_survivors as usize,
                colluders: identity.colluders as usize,
            },
            node,
            inbox: None,
            release: None,
            masked: false,
        };
        let message = Message::KeyAdvert {
            round: open.round,
            advert,
            certificate: identity.certificate.clone(),
        };
        Ok((state, message))
    }

    /// The round.
    pub fn round(&self) -> u32 {
        self.round
    }

    /// The terms the node's noise share is priced on.
    pub fn terms(&self) -> SecureTerms {
        self.terms
    }

    /// Step 2: checks every relayed certificate and advert signature, and returns this node's
    /// encrypted shares.
    pub fn roster(
        &mut self,
        identity: &SecureIdentity,
        adverts: &[SignedAdvert],
    ) -> Result<Message, SessionError> {
        let round = self.round;
        let fault = |why: String| SessionError::Protocol(format!("secure round {round}: {why}"));
        let mut keys: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        let mut names = BTreeSet::new();
        for a in adverts {
            let peer = identity.verifier.verify(&a.certificate).map_err(|e| {
                fault(format!(
                    "the certificate relayed for node {} is not a node certificate of this \
                     federation: {e}",
                    a.advert.node
                ))
            })?;
            if !names.insert(peer.name.clone()) {
                return Err(fault(format!(
                    "the roster holds two adverts for '{}'",
                    peer.name
                )));
            }
            if keys.insert(a.advert.node, peer.public_key).is_some() {
                return Err(fault(format!(
                    "the roster holds node number {} twice",
                    a.advert.node
                )));
            }
        }
        let verify = |node: u32, message: &[u8], signature: &[u8]| {
            keys.get(&node)
                .is_some_and(|key| fd_secagg::verify_ecdsa_p256(key, message, signature))
        };
        let list: Vec<fd_secagg::KeyAdvert> = adverts.iter().map(|a| a.advert.clone()).collect();
        let shares = self.node.share_keys(&list, &verify).map_err(|e| {
            fault(format!(
                "{e} (a coordinator that relays keys it signed itself is caught here)"
            ))
        })?;
        Ok(Message::KeyShares { round, shares })
    }

    /// Step 3, first half: the shares addressed to this node.
    pub fn inbox(&mut self, shares: Vec<EncryptedShares>) {
        self.inbox = Some(shares);
    }

    /// Step 3, second half: this node's noisy counts (from its labelling work).
    pub fn release(&mut self, counts: Vec<i64>, teachers: u32, receipt: Option<PrivacyReceipt>) {
        self.release = Some((counts, teachers, receipt));
    }

    /// The masked vector, once both the inbox and the counts are in (once per round).
    pub fn try_mask(&mut self) -> Result<Option<Message>, SessionError> {
        let (Some(inbox), Some((counts, teachers, receipt))) = (&self.inbox, &self.release) else {
            return Ok(None);
        };
        if self.masked {
            return Ok(None);
        }
        // Counts and noise are encoded modulo 2^32 (two's complement): the sum decodes as the
        // signed value it stands for while it stays within 2^31 in magnitude.
        let input: Vec<u32> = counts.iter().map(|&v| v as i32 as u32).collect();
        let masked = self
            .node
            .masked_input(inbox, &input)
            .map_err(|e| SessionError::Protocol(format!("secure round {}: {e}", self.round)))?;
        self.masked = true;
        Ok(Some(Message::Masked(Masked {
            round: self.round,
            masked,
            teachers: *teachers,
            receipt: receipt.clone(),
        })))
    }

    /// Step 4: the shares to reveal for `survivors`, or why the node will not help (too few
    /// survivors, a second request): the round is then lost, never under-noised.
    pub fn unmask(&mut self, survivors: &[u32]) -> Result<Message, String> {
        if !self.masked {
            return Err("asked to unmask before this node masked its input".into());
        }
        let response = self.node.unmask(survivors).map_err(|e| e.to_string())?;
        Ok(Message::Unmasked {
            round: self.round,
            response,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(roster: u32, threshold: u32, min_survivors: u32) -> SecureRound {
        SecureRound {
            context: [0; 32],
            node: 1,
            roster,
            threshold,
            min_survivors,
        }
    }

    #[test]
    fn terms_weaker_than_the_nodes_own_assumption_are_refused() {
        // 10 nodes, 1 colluder: the threshold must exceed 11 / 2, so 6 is the least.
        assert_eq!(check_terms(&terms(10, 6, 8), 1), Ok(()));
        assert!(
            check_terms(&terms(10, 5, 8), 1)
                .unwrap_err()
                .contains("threshold")
        );
        // With 3 colluders assumed the same threshold is too low: 6 * 2 <= 13.
        assert!(check_terms(&terms(10, 6, 8), 3).is_err());
        assert!(
            check_terms(&terms(10, 6, 5), 1)
                .unwrap_err()
                .contains("survivors")
        );
        assert!(check_terms(&terms(10, 6, 11), 1).is_err());
        assert!(
            check_terms(&terms(300, 200, 250), 1)
                .unwrap_err()
                .contains("255")
        );
        let mut outside = terms(10, 6, 8);
        outside.node = 11;
        assert!(check_terms(&outside, 1).unwrap_err().contains("outside"));
        // Two nodes, one colluder: the threshold must be 2 of 2 (2 * 2 > 3), and then no node
        // may drop out.
        assert!(check_terms(&terms(2, 2, 2), 1).is_ok());
        assert!(check_terms(&terms(2, 1, 1), 1).is_err());
    }

    use fd_certs::pki::Ca;
    use fd_protocol::SoftLabels;

    fn identity(ca: &Ca, name: &str) -> SecureIdentity {
        let node = ca.issue_node(name).expect("node certificate");
        let tls = TlsIdentity {
            ca_pem: ca.cert_pem(),
            cert_pem: node.cert_pem,
            key_pem: node.key_pem,
        };
        SecureIdentity::new(&tls, None, 1).expect("identity")
    }

    fn open(round: u32, node: u32) -> (RoundOpen, SecureRound) {
        let secure = SecureRound {
            context: [7; 32],
            node,
            roster: 4,
            threshold: 3,
            min_survivors: 3,
        };
        let open = RoundOpen {
            round,
            rounds: 5,
            query_ids: vec![0, 1],
            target: SoftLabels::default(),
            secure: Some(secure.clone()),
        };
        (open, secure)
    }

    /// Four nodes with `fd-certs` identities, relayed by hand as the coordinator does.
    struct Round {
        ids: Vec<SecureIdentity>,
        states: Vec<SecureState>,
        adverts: Vec<SignedAdvert>,
    }

    fn round() -> Round {
        let ca = Ca::generate("secure-session").expect("CA");
        let ids: Vec<SecureIdentity> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| identity(&ca, &format!("hospital-{n}")))
            .collect();
        let mut states = Vec::new();
        let mut adverts = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let (open, secure) = open(2, i as u32 + 1);
            let (state, message) = SecureState::open(id, &open, &secure, 3).expect("open");
            let Message::KeyAdvert {
                advert,
                certificate,
                ..
            } = message
            else {
                panic!("expected a key advert, got {message:?}");
            };
            states.push(state);
            adverts.push(SignedAdvert {
                advert,
                certificate,
            });
        }
        Round {
            ids,
            states,
            adverts,
        }
    }

    /// Every node's shares for the roster, as the coordinator collects them.
    fn share_all(
        ids: &[SecureIdentity],
        states: &mut [SecureState],
        adverts: &[SignedAdvert],
    ) -> Vec<EncryptedShares> {
        let mut all = Vec::new();
        for (state, id) in states.iter_mut().zip(ids) {
            let Message::KeyShares { shares, .. } = state.roster(id, adverts).expect("roster")
            else {
                panic!("expected key shares");
            };
            all.extend(shares);
        }
        all
    }

    #[test]
    fn four_sessions_mask_and_the_relayed_round_decodes_their_exact_sum_with_a_dropout() {
        let Round {
            ids,
            mut states,
            adverts,
        } = round();
        let all_shares = share_all(&ids, &mut states, &adverts);
        // Two queries of three classes: signed counts, as votes plus noise can be.
        let counts: Vec<Vec<i64>> = (0..4)
            .map(|i| (0..6).map(|j| i * 10 + j - 7).collect())
            .collect();
        let mut masked = Vec::new();
        for (i, state) in states.iter_mut().enumerate() {
            state.inbox(
                all_shares
                    .iter()
                    .filter(|s| s.to == i as u32 + 1)
                    .cloned()
                    .collect(),
            );
            assert!(state.try_mask().expect("nothing to mask yet").is_none());
            state.release(counts[i].clone(), 5, None);
            // Node 4 masks but its vector never arrives: a dropout after masking.
            let message = state.try_mask().expect("mask").expect("masked");
            assert!(
                state.try_mask().expect("once").is_none(),
                "masks once a round"
            );
            if i < 3 {
                let Message::Masked(m) = message else {
                    panic!("expected Masked");
                };
                masked.push(m.masked);
            }
        }
        let survivors = [1, 2, 3];
        let mut responses = Vec::new();
        for state in &mut states[..3] {
            let Message::Unmasked { response, .. } = state.unmask(&survivors).expect("unmask")
            else {
                panic!("expected Unmasked");
            };
            responses.push(response);
        }
        assert!(
            states[0].unmask(&survivors).is_err(),
            "a second request is refused"
        );
        let config = fd_secagg::RoundConfig {
            context: [7; 32],
            round: 2,
            len: 6,
            threshold: 3,
            min_survivors: 3,
        };
        let list: Vec<fd_secagg::KeyAdvert> = adverts.iter().map(|a| a.advert.clone()).collect();
        let sum = fd_secagg::aggregate(&config, &list, &[1, 2, 3, 4], &masked, &responses)
            .expect("decodes");
        let want: Vec<i64> = (0..6).map(|j| (0..3).map(|i| counts[i][j]).sum()).collect();
        let got: Vec<i64> = sum.into_iter().map(fd_secagg::centred).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_relayed_key_the_ca_did_not_certify_or_a_node_did_not_sign_ends_the_session() {
        let Round {
            ids,
            mut states,
            adverts,
        } = round();
        // The coordinator's own keys for node 2, signed by a certificate from another CA.
        let rogue_ca = Ca::generate("rogue").expect("CA");
        let rogue = identity(&rogue_ca, "hospital-b");
        let (open2, secure2) = open(2, 2);
        let (_, forged) = SecureState::open(&rogue, &open2, &secure2, 3).expect("open");
        let Message::KeyAdvert {
            advert,
            certificate,
            ..
        } = forged
        else {
            panic!("expected a key advert");
        };
        let mut swapped = adverts.clone();
        swapped[1] = SignedAdvert {
            advert: advert.clone(),
            certificate,
        };
        let err = states[0].roster(&ids[0], &swapped).unwrap_err().to_string();
        assert!(
            err.contains("not a node certificate of this federation"),
            "{err}"
        );
        // The same forged keys under node 2's genuine certificate: the signature fails.
        let mut resigned = adverts.clone();
        resigned[1].advert = advert;
        let err = states[0]
            .roster(&ids[0], &resigned)
            .unwrap_err()
            .to_string();
        assert!(err.contains("signature"), "{err}");
        // One node's certificate relayed twice (under two numbers) is refused too.
        let mut twice = adverts.clone();
        twice[2].certificate = twice[1].certificate.clone();
        let err = states[0].roster(&ids[0], &twice).unwrap_err().to_string();
        assert!(err.contains("two adverts"), "{err}");
    }

    #[test]
    fn too_few_survivors_get_no_shares() {
        let Round {
            ids,
            mut states,
            adverts,
        } = round();
        let all_shares = share_all(&ids, &mut states, &adverts);
        let state = &mut states[0];
        assert!(state.unmask(&[1, 2, 3]).unwrap_err().contains("before"));
        state.inbox(all_shares.into_iter().filter(|s| s.to == 1).collect());
        state.release(vec![0; 6], 1, None);
        state.try_mask().expect("mask").expect("masked");
        // Fewest survivors 3: two are refused, and the refusal does not use up the round.
        assert!(state.unmask(&[1, 2]).is_err());
        assert!(state.unmask(&[1, 2, 3]).is_ok());
    }
}

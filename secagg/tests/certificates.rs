//! Key adverts signed with the keys `fd-certs` issues, checked against the certificates the
//! coordinator would relay: the path a federation's nodes take.

use fd_certs::pki::Ca;
use fd_secagg::{EcdsaP256Signer, Node, RoundConfig, SecAggError, verify_ecdsa_p256};
use fd_transport::PeerVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

#[test]
fn adverts_signed_with_issued_node_keys_verify_against_their_relayed_certificates() {
    let ca = Ca::generate("secagg-test").expect("CA");
    let names = ["hospital-a", "hospital-b", "bank-c"];
    let identities: Vec<_> = names
        .iter()
        .map(|n| ca.issue_node(n).expect("node"))
        .collect();
    let signers: Vec<EcdsaP256Signer> = identities
        .iter()
        .map(|id| {
            let key = PrivatePkcs8KeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("PKCS#8");
            EcdsaP256Signer::from_pkcs8(key.secret_pkcs8_der()).expect("a P-256 key")
        })
        .collect();
    // What each node learns of the others from the certificates the coordinator relays.
    let verifier = PeerVerifier::new(&ca.cert_pem(), None).expect("verifier");
    let peers: Vec<_> = identities
        .iter()
        .map(|id| {
            let der = CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).expect("PEM");
            verifier.verify(&der).expect("a node of this federation")
        })
        .collect();
    for (peer, name) in peers.iter().zip(names) {
        assert_eq!(peer.name, name);
    }
    let config = RoundConfig {
        context: [1; 32],
        round: 0,
        len: 4,
        threshold: 2,
        min_survivors: 2,
    };
    let (mut nodes, adverts): (Vec<Node>, Vec<_>) = signers
        .iter()
        .enumerate()
        .map(|(i, s)| Node::new(i as u32, config, s).expect("keys"))
        .unzip();
    let verify = |node: u32, m: &[u8], s: &[u8]| {
        peers
            .get(node as usize)
            .is_some_and(|p| verify_ecdsa_p256(&p.public_key, m, s))
    };
    assert!(nodes[0].share_keys(&adverts, &verify).is_ok());
    // Node 1's advert signed by node 2's certified key instead: refused.
    let (_, mut forged) = Node::new(1, config, &signers[2]).expect("keys");
    forged.node = 1;
    let mut tampered = adverts.clone();
    tampered[1] = forged;
    assert_eq!(
        nodes[2].share_keys(&tampered, &verify).unwrap_err(),
        SecAggError::BadSignature { node: 1 }
    );
}

//! Mutual-TLS configurations for quinn, and reading a peer's identity off a connection.
//!
//! Both sides use rustls with the *ring* provider, TLS 1.3 only, ALPN [`fd_protocol::ALPN`]
//! and trust exactly one root: the federation CA (never the system roots). The coordinator
//! ([`server_config`]) requires a client certificate signed by that CA; a node
//! ([`client_config`]) presents its node certificate. 0-RTT is off and session resumption is
//! disabled, so every connection runs a full handshake and the node's certificate is checked
//! afresh each time (one signature per connection; the federation makes few connections).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use fd_certs::CertError;
use fd_certs::pki::{read_text, validate_name, warn_if_key_readable_by_others};

use crate::TlsError;

/// Interval between QUIC keep-alive packets, well inside [`IDLE_TIMEOUT`] so an idle but healthy
/// connection (a node waiting for the next round) is never dropped.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// A connection that has heard nothing from its peer for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What one end of a connection needs: the federation CA certificate, and its own certificate
/// and private key. All PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The federation CA certificate (the only trusted root).
    pub ca_pem: String,
    /// This end's certificate (a node certificate for a client, a server certificate for the
    /// coordinator), optionally followed by intermediates.
    pub cert_pem: String,
    /// This end's private key.
    pub key_pem: String,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl TlsIdentity {
    /// Reads the CA certificate, this end's certificate and its private key from files, and
    /// checks that each holds what it should.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
        let ca_pem = read_text(
            ca,
            "this is the federation CA certificate (ca.pem); copy it from the operator",
        )?;
        let cert_pem = read_text(
            cert,
            "ask the operator to issue this certificate with `fd-certs issue`",
        )?;
        let key_pem = read_text(
            key,
            "the private key is written next to its certificate by `fd-certs issue`",
        )?;
        warn_if_key_readable_by_others(key);
        let origin = |p: &Path| p.display().to_string();
        parse_certs(&ca_pem, &origin(ca))?;
        parse_certs(&cert_pem, &origin(cert))?;
        parse_key(&key_pem, &origin(key))?;
        Ok(TlsIdentity {
            ca_pem,
            cert_pem,
            key_pem,
        })
    }
}

/// The coordinator's QUIC server configuration: presents `id`'s server certificate and
/// requires every client to present a certificate signed by `id`'s CA.
///
/// Refuses, before any node connects, a certificate that is not a server certificate (see
impl TlsIdentity {
    /// This end's own certificate (the first of the chain, DER) and its private key (DER as
    /// written in the PEM: PKCS#8 for the keys fd-certs issues), for signing what the TLS
    /// handshake does not cover (secure aggregation's key adverts).
    pub fn signing_material(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let chain = parse_certs(&self.cert_pem, "this end's certificate")?;
        let key = parse_key(&self.key_pem, "this end's private key")?;
        Ok((chain[0].to_vec(), key.secret_der().to_vec()))
    }
}

/// [`TlsError::WrongUsage`]).
pub fn server_config(id: &TlsIdentity) -> Result<quinn::ServerConfig, TlsError> {
    server_config_with_crl(id, None)
}

/// [`server_config`] that also refuses the node certificates a revocation list names
/// (`crl`: the PEM text of `fd-certs revoke`'s `crl.pem`, and where it came from, for errors).
/// rustls checks the list's signature against the federation CA; a revoked certificate fails
/// the handshake with a `certificate_revoked` alert.
pub fn server_config_with_crl(
    id: &TlsIdentity,
    crl: Option<(&str, &str)>,
) -> Result<quinn::ServerConfig, TlsError> {
    let chain = parse_certs(&id.cert_pem, "the server certificate")?;
    if let Some(leaf) = chain.first() {
        check_usage(leaf, Usage::Server, "the coordinator's certificate")?;
    }
    build_server_config(id, parse_crls(crl)?)
}

/// The revocation lists in `crl` (PEM text, and where it came from, for errors); none without
/// one. A text without a CRL block is an error, not an empty list.
fn parse_crls(
    crl: Option<(&str, &str)>,
) -> Result<Vec<rustls_pki_types::CertificateRevocationListDer<'static>>, TlsError> {
    let Some((pem, origin)) = crl else {
        return Ok(Vec::new());
    };
    let bad = |reason: String| TlsError::Crl {
        origin: origin.to_owned(),
        reason,
    };
    let crls = rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if crls.is_empty() {
        return Err(bad("no X509 CRL block".into()));
    }
    Ok(crls)
}

/// [`server_config`] without the usage check: what an impostor could build, for tests that
/// show nodes refuse it.
#[cfg(test)]
pub(crate) fn unchecked_server_config(id: &TlsIdentity) -> Result<quinn::ServerConfig, TlsError> {
    build_server_config(id, Vec::new())
}

fn build_server_config(
    id: &TlsIdentity,
    crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let roots = Arc::new(root_store(&id.ca_pem)?);
    // Client certificate REQUIRED: the builder's default rejects anonymous clients. With a
    // revocation list, the default also refuses a certificate whose status it cannot tell.
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(crls)
        .build()?;
    let chain = parse_certs(&id.cert_pem, "the server certificate")?;
    let key = parse_key(&id.key_pem, "the server private key")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Tls {
            side: "server",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Tls {
            side: "server",
            source,
        })?;
    tls.alpn_protocols = vec![fd_protocol::ALPN.to_vec()];
    // 0-RTT off (rustls' default, restated so no one "optimises" it on): early data can be
    // replayed.
    tls.max_early_data_size = 0;
    // No resumption: every connection re-verifies the client certificate.
    tls.session_storage = Arc::new(NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    cfg.transport_config(transport());
    // Connection attempts not yet accepted, and what quinn buffers for them: its defaults
    // (65,536 attempts, 10 MiB each, 100 MiB in all) are sized for 0-RTT data, which we refuse.
    // The coordinator accepts or refuses each attempt as it comes, so these only bound a flood.
    cfg.max_incoming(MAX_INCOMING);
    cfg.incoming_buffer_size(INCOMING_BUFFER);
    cfg.incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    Ok(cfg)
}

/// A node's QUIC client configuration: trusts only `id`'s CA and presents `id`'s node
/// certificate.
pub fn client_config(id: &TlsIdentity) -> Result<quinn::ClientConfig, TlsError> {
    let roots = root_store(&id.ca_pem)?;
    let chain = parse_certs(&id.cert_pem, "the node certificate")?;
    if let Some(leaf) = chain.first() {
        check_usage(leaf, Usage::Node, "this node's certificate")?;
    }
    let key = parse_key(&id.key_pem, "the node private key")?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Tls {
            side: "client",
            source,
        })?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|source| TlsError::Tls {
            side: "client",
            source,
        })?;
    tls.alpn_protocols = vec![fd_protocol::ALPN.to_vec()];
    tls.enable_early_data = false;
    tls.resumption = Resumption::disabled();
    let mut cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// The identity of the peer of `conn`: the first DNS subject alternative name of its
/// end-entity certificate (for a node, its name).
///
/// Only meaningful on connections made with [`server_config`] / [`client_config`], where the
/// handshake has already verified the certificate against the federation CA.
pub fn peer_name(conn: &quinn::Connection) -> Result<String, TlsError> {
    name_in_certificate(&peer_leaf(conn)?)
}

/// The end-entity certificate `conn`'s peer presented.
fn peer_leaf(conn: &quinn::Connection) -> Result<CertificateDer<'static>, TlsError> {
    let identity = conn.peer_identity().ok_or(TlsError::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::PeerIdentity {
            reason: "the connection's peer identity is not an X.509 certificate chain".into(),
        })?;
    chain.first().cloned().ok_or(TlsError::NoPeerCertificate)
}

/// The name of the node at the other end of `conn` ([`peer_name`]), once its certificate is
/// known to be a node certificate (client-authentication usage): what the coordinator admits.
pub fn node_name(conn: &quinn::Connection) -> Result<String, TlsError> {
    let leaf = peer_leaf(conn)?;
    check_usage(&leaf, Usage::Node, "the peer's certificate")?;
    name_in_certificate(&leaf)
}

/// Another node's certificate, checked as the coordinator checks a connecting node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode {
    /// The node's name (its certificate's DNS subject alternative name).
    pub name: String,
    /// The certificate's public key as it appears there (for a P-256 key, the uncompressed
    /// SEC1 point): what the node's signatures verify against.
    pub public_key: Vec<u8>,
}

/// Checks certificates the coordinator relays as other nodes', with the checks the
/// coordinator's handshake makes: signed by the federation CA, valid now, not on the
/// revocation list if one is given, and a node certificate. Secure aggregation uses it so that
/// a coordinator that relays the nodes' key advertisements cannot slip in keys of its own: they
/// would have to be signed by a key the CA certified for a node. Built once (the CA and list
/// parsed once) for all of a round's peers.
pub struct PeerVerifier {
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl PeerVerifier {
    /// Trusting `ca_pem`, and refusing what the revocation list `crl` (PEM text, and where it
    /// came from, for errors) names, if one is given.
    pub fn new(ca_pem: &str, crl: Option<(&str, &str)>) -> Result<PeerVerifier, TlsError> {
        let roots = Arc::new(root_store(ca_pem)?);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .with_crls(parse_crls(crl)?)
            .build()?;
        Ok(PeerVerifier { verifier })
    }

    /// The node `cert_der` certifies, if it passes.
    pub fn verify(&self, cert_der: &[u8]) -> Result<PeerNode, TlsError> {
        let leaf = CertificateDer::from(cert_der.to_vec());
        self.verifier
            .verify_client_cert(&leaf, &[], rustls_pki_types::UnixTime::now())
            .map_err(|e| TlsError::PeerIdentity {
                reason: format!(
                    "the peer's certificate does not verify against the federation CA: {e}"
                ),
            })?;
        check_usage(&leaf, Usage::Node, "the peer's certificate")?;
        let name = name_in_certificate(&leaf)?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&leaf).map_err(|e| TlsError::PeerIdentity {
                reason: format!("the peer's certificate is not a valid X.509 certificate ({e})"),
            })?;
        Ok(PeerNode {
            name,
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }
}

/// What a certificate of the federation is for, by its extended key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    /// A node: TLS client authentication.
    Node,
    /// The coordinator: TLS server authentication.
    Server,
}

/// Checks that the leaf certificate `der` carries the extended key usage of `usage`. webpki
/// accepts a certificate without the extension for any purpose; the federation does not, so
/// that only certificates `fd-certs` issued for the role can play it.
fn check_usage(der: &[u8], usage: Usage, what: &str) -> Result<(), TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::PeerIdentity {
            reason: format!("{what} is not a valid X.509 certificate ({e})"),
        })?;
    let eku = cert.extended_key_usage().ok().flatten().map(|e| e.value);
    let (ok, needs, purpose, flag) = match usage {
        Usage::Node => (eku.is_some_and(|e| e.client_auth), "node", "clientAuth", ""),
        Usage::Server => (
            eku.is_some_and(|e| e.server_auth),
            "server",
            "serverAuth",
            " --server",
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(TlsError::WrongUsage {
            what: what.to_owned(),
            needs,
            purpose,
            flag,
        })
    }
}

/// The first DNS subject alternative name in a DER certificate, checked like a node name.
fn name_in_certificate(der: &[u8]) -> Result<String, TlsError> {
    let bad = |reason: String| TlsError::PeerIdentity { reason };
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| bad(format!("it is not a valid X.509 certificate ({e})")))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("its subject alternative names are malformed ({e})")))?
        .ok_or_else(|| bad("it has no subject alternative names".into()))?;
    let name = sans
        .value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(name) => Some(*name),
            _ => None,
        })
        .ok_or_else(|| bad("it has no DNS subject alternative name".into()))?;
    // The CA only signs valid names, but the check is cheap and keeps odd bytes out of logs,
    // allow-lists and file names downstream.
    validate_name(name).map_err(|e| bad(e.to_string()))?;
    Ok(name.to_owned())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Connection attempts quinn holds before the coordinator takes them (beyond: refused, and the
/// node retries): a burst of 10,000 nodes reconnecting at once, with room to spare.
const MAX_INCOMING: usize = 16_384;
/// Bytes quinn buffers for one attempt before it is accepted: its Initial packets (a few KB; no
/// 0-RTT data is accepted).
const INCOMING_BUFFER: u64 = 64 * 1024;
/// Bytes quinn buffers for all attempts not yet accepted.
const INCOMING_BUFFER_TOTAL: u64 = 8 * 1024 * 1024;

/// Bytes of a stream's data quinn holds for a peer that has not read them yet. Its default,
/// 10 MB, let a node that stopped reading pin that much of the coordinator each (a dozen
/// RoundOpens of 800 KB) before its writer ever waited; beyond this, a write waits for the
/// node, and the coordinator's send deadline decides.
pub const SEND_WINDOW: u64 = 2 * 1024 * 1024;

fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    transport.send_window(SEND_WINDOW);
    // One bidirectional stream per connection, opened by the node, is the whole protocol.
    // quinn's defaults (100 of each kind) would let a peer open streams the coordinator never
    // reads and have it buffer a stream window (1.25 MB) on each; no datagrams either.
    transport.max_concurrent_bidi_streams(1u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.datagram_receive_buffer_size(None);
    // 60 s is far below the QUIC varint limit (2^62 ms), so this conversion cannot fail; the
    // fallback (no idle timeout) is unreachable.
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    Arc::new(transport)
}

fn root_store(ca_pem: &str) -> Result<RootCertStore, CertError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem, "the CA certificate")? {
        roots.add(cert).map_err(|e| CertError::BadCa {
            origin: "the CA certificate".into(),
            reason: format!("rustls will not use it as a trust anchor ({e})"),
        })?;
    }
    Ok(roots)
}

/// Every CERTIFICATE block in `pem`; at least one.
fn parse_certs(pem: &str, origin: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bad = |reason: String| CertError::BadPem {
        origin: origin.to_owned(),
        expected: "a PEM CERTIFICATE block",
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    Ok(certs)
}

fn parse_key(pem: &str, origin: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertError::BadPem {
        origin: origin.to_owned(),
        expected: "a PEM private key",
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no private key found".into(),
            e => e.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fd_certs::pki::Ca;
    use std::fs;

    #[test]
    fn a_peer_node_certificate_verifies_only_if_the_ca_issued_it_for_a_node_and_not_revoked() {
        let ca = Ca::generate("test").expect("CA");
        let node = ca.issue_node("hospital-a").expect("node");
        let der = CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).expect("PEM");
        let verifier = PeerVerifier::new(&ca.cert_pem(), None).expect("verifier");
        let peer = verifier.verify(&der).expect("verifies");
        assert_eq!(peer.name, "hospital-a");
        // A P-256 public key: the uncompressed point, 0x04 then two 32-byte coordinates.
        assert_eq!(peer.public_key.len(), 65);
        assert_eq!(peer.public_key[0], 4);

        // Another federation's CA did not issue it.
        let other = Ca::generate("other").expect("CA");
        let other = PeerVerifier::new(&other.cert_pem(), None).expect("verifier");
        let err = other.verify(&der).unwrap_err();
        assert!(err.to_string().contains("federation CA"), "{err}");
        // A server certificate of this CA is not a node's.
        let server = ca.issue_server("coord", &[]).expect("server");
        let sder = CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).expect("PEM");
        assert!(verifier.verify(&sder).is_err());
        // Revoked.
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let serial = parsed.raw_serial().to_vec();
        let crl = ca
            .crl_pem(&[(serial, time::OffsetDateTime::now_utc())], 1)
            .expect("CRL");
        let revoking =
            PeerVerifier::new(&ca.cert_pem(), Some((&crl, "crl.pem"))).expect("verifier");
        let err = revoking.verify(&der).unwrap_err();
        assert!(err.to_string().to_lowercase().contains("revoked"), "{err}");
        assert!(verifier.verify(b"garbage").is_err());
        // A revocation list file without a list in it is an error, not "nothing revoked".
        let err = PeerVerifier::new(&ca.cert_pem(), Some(("", "crl.pem")))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("crl.pem"), "{err}");
    }

    #[test]
    fn name_comes_from_the_first_dns_san() {
        let ca = Ca::generate("test").expect("CA");
        let node = ca.issue_node("hospital-a").expect("node");
        let der = CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).expect("PEM");
        assert_eq!(name_in_certificate(&der).expect("name"), "hospital-a");

        // IP SANs are skipped; the first DNS SAN wins.
        let server = ca
            .issue_server("coord", &["10.0.0.1".into(), "coord.example.org".into()])
            .expect("server");
        let der = CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).expect("PEM");
        assert_eq!(
            name_in_certificate(&der).expect("name"),
            "coord.example.org"
        );

        assert!(name_in_certificate(b"garbage").is_err());
    }

    #[test]
    fn configs_build_from_issued_identities() {
        let ca = Ca::generate("test").expect("CA");
        let server = ca
            .issue_server("coordinator", &["localhost".into()])
            .expect("server");
        let node = ca.issue_node("hospital-a").expect("node");
        let id = |i: &fd_certs::pki::Identity| TlsIdentity {
            ca_pem: ca.cert_pem(),
            cert_pem: i.cert_pem.clone(),
            key_pem: i.key_pem.clone(),
        };
        server_config(&id(&server)).expect("server config");
        client_config(&id(&node)).expect("client config");

        // A key that does not belong to the certificate is refused up front.
        let mismatched = TlsIdentity {
            key_pem: server.key_pem.clone(),
            ..id(&node)
        };
        assert!(client_config(&mismatched).is_err());
    }

    #[test]
    fn each_role_needs_its_certificate_kind() {
        let ca = Ca::generate("test").expect("CA");
        let server = ca
            .issue_server("coordinator", &["localhost".into()])
            .expect("server");
        let node = ca.issue_node("hospital-a").expect("node");
        let id = |i: &fd_certs::pki::Identity| TlsIdentity {
            ca_pem: ca.cert_pem(),
            cert_pem: i.cert_pem.clone(),
            key_pem: i.key_pem.clone(),
        };
        // A coordinator started with a node certificate fails at once, saying what to do.
        let err = server_config(&id(&node)).expect_err("node cert as the server's");
        assert!(
            matches!(
                err,
                TlsError::WrongUsage {
                    needs: "server",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("--server"), "{err}");
        // A node with a server certificate is refused on its own side...
        let err = client_config(&id(&server)).expect_err("server cert as a node's");
        assert!(
            matches!(err, TlsError::WrongUsage { needs: "node", .. }),
            "{err}"
        );
        // ...and by the coordinator, which reads the peer's certificate the same way.
        let der = CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).expect("PEM");
        assert!(check_usage(&der, Usage::Node, "the peer's certificate").is_err());
        let der = CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).expect("PEM");
        assert!(check_usage(&der, Usage::Node, "the peer's certificate").is_ok());
    }

    /// webpki accepts a certificate with no extended key usage for any purpose; the
    /// federation does not admit one as a node.
    #[test]
    fn a_certificate_without_extended_key_usage_is_no_node() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["hospital-a".to_owned()]).expect("params");
        params.extended_key_usages = Vec::new();
        let cert = params.self_signed(&key).expect("self-signed");
        let err =
            check_usage(cert.der(), Usage::Node, "the peer's certificate").expect_err("no EKU");
        assert!(err.to_string().contains("clientAuth"), "{err}");
    }

    #[test]
    fn load_names_the_file_that_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::generate("test").expect("CA");
        let node = ca.issue_node("n1").expect("node");
        let ca_path = dir.path().join("ca.pem");
        let cert_path = dir.path().join("n1.pem");
        let key_path = dir.path().join("n1.key");
        fs::write(&ca_path, ca.cert_pem()).expect("write");
        fs::write(&cert_path, &node.cert_pem).expect("write");
        fs::write(&key_path, &node.key_pem).expect("write");
        let loaded = TlsIdentity::load(&ca_path, &cert_path, &key_path).expect("load");
        assert_eq!(loaded.cert_pem, node.cert_pem);

        let missing = dir.path().join("absent.pem");
        let err = TlsIdentity::load(&missing, &cert_path, &key_path).expect_err("missing");
        assert!(matches!(err, TlsError::Cert(CertError::NotFound { .. })));
        assert!(err.to_string().contains("absent.pem"), "{err}");

        // A certificate where the key should be: PEM, but no key inside.
        let err = TlsIdentity::load(&ca_path, &cert_path, &cert_path).expect_err("no key");
        assert!(err.to_string().contains("n1.pem"), "{err}");
        assert!(err.to_string().contains("no private key"), "{err}");

        // Not PEM at all.
        let junk = dir.path().join("junk.pem");
        fs::write(&junk, "hello").expect("write");
        let err = TlsIdentity::load(&junk, &cert_path, &key_path).expect_err("junk");
        assert!(err.to_string().contains("junk.pem"), "{err}");
    }
}

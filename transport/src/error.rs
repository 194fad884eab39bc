//! The error type of the TLS half of the transport.

/// Why a TLS configuration could not be made, or a peer's identity not read.
///
/// Every message says what was wrong, where (file or field) and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file is missing or does not hold what it should.
    #[error(transparent)]
    Cert(#[from] fd_certs::CertError),
    /// rustls refused the certificates or key while building a TLS configuration.
    #[error(
        "cannot build the TLS {side} configuration: {source}; check that the certificate and \
         key files belong together and were issued by this federation's CA"
    )]
    Tls {
        /// "server" or "client".
        side: &'static str,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built from the CA certificate.
    #[error("cannot build the client-certificate verifier from the CA certificate: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The certificate revocation list is unreadable.
    #[error(
        "{origin}: not a certificate revocation list ({reason}); make it with `fd-certs revoke`"
    )]
    Crl {
        /// Where the list came from.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The TLS configuration lacks the cipher suite QUIC needs for its initial packets.
    #[error("the TLS configuration cannot be used for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The peer of a connection presented no certificate.
    #[error(
        "the peer presented no certificate; both ends must use configurations from \
         fd_transport::tls (mutual TLS)"
    )]
    NoPeerCertificate,
    /// The peer's certificate does not carry a usable identity.
    #[error("cannot read the peer's identity from its certificate: {reason}")]
    PeerIdentity {
        /// What is wrong with the certificate.
        reason: String,
    },
    /// A certificate is not for what it is used for (its extended key usage lacks the
    /// purpose): a node certificate as the coordinator's, a server certificate as a node's, or
    /// a certificate with no extended key usage at all.
    #[error(
        "{what} is not a {needs} certificate (its extended key usage lacks {purpose}); issue it \
         with `fd-certs issue{flag}`"
    )]
    WrongUsage {
        /// Which certificate, e.g. "the coordinator's certificate".
        what: String,
        /// "node" or "server".
        needs: &'static str,
        /// The missing purpose: "clientAuth" or "serverAuth".
        purpose: &'static str,
        /// The `fd-certs issue` flag that makes the right kind ("" or " --server").
        flag: &'static str,
    },
}

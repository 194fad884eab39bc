//! The error type of the PKI.

use std::io;
use std::path::PathBuf;

/// Why a certificate, key or TLS configuration could not be made, read or used.
///
/// Every message says what was wrong, where (file or field) and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A node or server name is not acceptable as a certificate name and file name.
    #[error(
        "invalid name {name:?}: {reason}; use 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' \
         or '-', starting with a letter or digit (for example hospital-a)"
    )]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A federation name is not acceptable in the CA's common name.
    #[error(
        "invalid federation name {name:?}: {reason}; use 1 to {max} printable characters \
         (for example \"cancer-study-2025\")",
        max = crate::pki::MAX_FEDERATION_LEN
    )]
    InvalidFederation {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A subject alternative name is neither an IP address nor a usable DNS name.
    #[error(
        "invalid subject alternative name {san:?}: {reason}; give a DNS name (for example \
         coordinator.example.org or localhost) or an IP address (for example 127.0.0.1)"
    )]
    InvalidSan {
        /// The name as given.
        san: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rcgen could not generate a key or sign a certificate.
    #[error("could not {action}: {source}")]
    Generate {
        /// What was being done, e.g. "sign the node certificate for hospital-a".
        action: String,
        /// The underlying rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// A file that is needed does not exist.
    #[error("{} not found; {hint}", path.display())]
    NotFound {
        /// The missing file.
        path: PathBuf,
        /// What to do about it.
        hint: String,
    },
    /// Reading, writing or creating a file or directory failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: "read", "create", "write", ...
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
    /// A key or certificate file exists and overwriting it was not asked for.
    #[error("{} already exists; refusing to overwrite it ({hint})", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
        /// What to do about it.
        hint: &'static str,
    },
    /// PEM text (a file or a string) does not hold what it should.
    #[error("{origin} does not hold {expected}: {reason}")]
    BadPem {
        /// Where the text came from: a file path, or a description such as "the CA certificate".
        origin: String,
        /// What it should hold, e.g. "a PEM CERTIFICATE block".
        expected: &'static str,
        /// What was found instead.
        reason: String,
    },
    /// A certificate and key cannot serve as the federation CA.
    #[error("{origin} cannot be used as the federation CA: {reason}")]
    BadCa {
        /// Where the CA came from (its certificate file, or "the CA certificate").
        origin: String,
        /// Why not, and what to do.
        reason: String,
    },
}

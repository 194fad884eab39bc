//! The federation's certificate authority and the certificates it issues.
//!
//! One CA per federation, made once by the operator (`fd-certs init`). It signs two kinds of
//! leaf certificate:
//!
//! - **node** certificates ([`Ca::issue_node`]): extended key usage `clientAuth` only, common
//!   name and one DNS subject alternative name both equal to the node's name. That name *is* the
//!   node's identity: the coordinator reads it back with [`crate::tls::peer_name`] and ignores
//!   anything a node claims in a message.
//! - **server** certificates ([`Ca::issue_server`]): extended key usage `serverAuth` only, with
//!   the DNS names and IP addresses nodes dial the coordinator by.
//!
//! Because the usages are disjoint, a node's certificate cannot be used to impersonate the
//! coordinator, nor the coordinator's to join as a node. The CA is constrained to path length 0:
//! it signs leaves only.
//!
//! On disk a CA directory holds `ca.pem` (public: copy it to every node and the coordinator) and
//! `ca.key` (secret: it stays with the operator). Private keys are created with mode 0600 in
//! one step and never loosened afterwards; existing keys are never overwritten unless asked.

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

use crate::CertError;

/// File name of the CA certificate inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// The certificate revocation list the coordinator loads (`crl` in its config), in the CA
/// directory; `fd-certs revoke` rewrites it.
pub const CRL_FILE: &str = "crl.pem";
/// The revocations behind [`CRL_FILE`], one per line: serial (hex), name, time (RFC 3339).
pub const REVOKED_FILE: &str = "revoked.txt";
/// Longest accepted node or server name (also the X.509 upper bound for a common name).
pub const MAX_NAME_LEN: usize = 64;
/// Longest accepted federation name: the CA's common name "`<federation> federation CA`" must fit
/// the X.509 upper bound of 64 characters, and the suffix takes 14.
pub const MAX_FEDERATION_LEN: usize = 50;

/// How long a new CA is valid: ten years. Replacing a CA means re-issuing every certificate,
/// so it should outlive any one study.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a node or server certificate is valid: one year (never beyond the CA's own end).
const LEAF_VALIDITY: Duration = Duration::days(365);
/// Certificates start being valid this long before they are made, so a peer whose clock runs a
/// little behind still accepts them.
const CLOCK_SKEW: Duration = Duration::hours(1);

/// Mode of private key files: owner read/write only.
const KEY_MODE: u32 = 0o600;
/// Mode of certificate files: public.
const CERT_MODE: u32 = 0o644;
/// Mode of a CA directory this crate creates: owner only, since it holds `ca.key`.
const DIR_MODE: u32 = 0o700;

/// The federation CA: its certificate and private key, in memory.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("Ca")
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A leaf certificate and its private key, both PEM: what a node or the coordinator presents.
#[derive(Clone)]
pub struct Identity {
    /// The certificate (one PEM `CERTIFICATE` block).
    pub cert_pem: String,
    /// The private key (one PEM `PRIVATE KEY` block, PKCS#8).
    pub key_pem: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Ca {
    /// Makes a new self-signed CA whose common name is "`federation` federation CA".
    pub fn generate(federation: &str) -> Result<Ca, CertError> {
        validate_federation(federation)?;
        let key = KeyPair::generate().map_err(|source| CertError::Generate {
            action: "generate the CA key pair".into(),
            source,
        })?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{federation} federation CA"));
        dn.push(DnType::OrganizationName, federation);
        params.distinguished_name = dn;
        // Path length 0: this CA signs leaves only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        let cert = params
            .self_signed(&key)
            .map_err(|source| CertError::Generate {
                action: format!("self-sign the CA certificate for federation {federation:?}"),
                source,
            })?;
        let not_after = params.not_after;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            not_after,
        })
    }

    /// The CA certificate, PEM. Public: every node and the coordinator need it.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA private key, PEM (PKCS#8). Secret: it stays with the operator.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Rebuilds a CA from its certificate and private key.
    ///
    /// Fails if the certificate is not a CA certificate, has expired, or does not match the key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CertError> {
        Ca::parse(
            cert_pem,
            key_pem,
            "the CA certificate",
            "the CA private key",
        )
    }

    /// Loads the CA from `dir/ca.pem` and `dir/ca.key`.
    pub fn load(dir: &Path) -> Result<Ca, CertError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let init_hint = format!(
            "the federation CA ({CA_CERT_FILE} and {CA_KEY_FILE}) is not in {dir}; run \
             `fd-certs init --dir {dir}` to create it, or point --dir at the operator's CA directory",
            dir = dir.display()
        );
        let cert_pem = read_text(&cert_path, &init_hint)?;
        let key_pem = read_text(&key_path, &init_hint)?;
        warn_if_key_readable_by_others(&key_path);
        Ca::parse(
            &cert_pem,
            &key_pem,
            &cert_path.display().to_string(),
            &key_path.display().to_string(),
        )
    }

    fn parse(
        cert_pem: &str,
        key_pem: &str,
        cert_origin: &str,
        key_origin: &str,
    ) -> Result<Ca, CertError> {
        let der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| CertError::BadPem {
                origin: cert_origin.to_owned(),
                expected: "a PEM CERTIFICATE block",
                reason: e.to_string(),
            })?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| CertError::BadPem {
                origin: cert_origin.to_owned(),
                expected: "an X.509 certificate",
                reason: e.to_string(),
            })?;
        if !x509.is_ca() {
            return Err(CertError::BadCa {
                origin: cert_origin.to_owned(),
                reason: "it is not a CA certificate (basicConstraints CA:TRUE is missing); \
                         point at the ca.pem written by `fd-certs init`"
                    .into(),
            });
        }
        let not_after = x509.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::now_utc() {
            return Err(CertError::BadCa {
                origin: cert_origin.to_owned(),
                reason: format!(
                    "it expired on {not_after}; make a new CA with `fd-certs init --force` and \
                     re-issue every certificate"
                ),
            });
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::BadPem {
            origin: key_origin.to_owned(),
            expected: "a PEM PRIVATE KEY block (PKCS#8)",
            reason: e.to_string(),
        })?;
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(CertError::BadCa {
                origin: cert_origin.to_owned(),
                reason: format!(
                    "the private key in {key_origin} does not belong to this certificate; \
                     ca.pem and ca.key must come from the same `fd-certs init`"
                ),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| CertError::BadCa {
            origin: cert_origin.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            issuer,
            not_after,
        })
    }

    /// Issues a node (client-authentication) certificate whose common name and single DNS
    /// subject alternative name are `name`.
    pub fn issue_node(&self, name: &str) -> Result<Identity, CertError> {
        validate_name(name)?;
        let san = dns_san(name)?;
        self.issue(name, vec![san], ExtendedKeyUsagePurpose::ClientAuth, "node")
    }

    /// Issues a server (server-authentication) certificate with common name `name`, valid for
    /// the DNS names and IP addresses in `sans` (just `name` if `sans` is empty).
    pub fn issue_server(&self, name: &str, sans: &[String]) -> Result<Identity, CertError> {
        validate_name(name)?;
        let sans = if sans.is_empty() {
            vec![dns_san(name)?]
        } else {
            sans.iter()
                .map(|s| parse_san(s))
                .collect::<Result<Vec<_>, _>>()?
        };
        self.issue(name, sans, ExtendedKeyUsagePurpose::ServerAuth, "server")
    }

    /// A certificate revocation list signed by this CA listing `revoked` (serial and time of
    /// revocation), numbered `number` (CRL numbers must grow with each list). It is valid until
    /// the CA expires: the coordinator reads it at start, and `fd-certs revoke` replaces it.
    pub fn crl_pem(
        &self,
        revoked: &[(Vec<u8>, OffsetDateTime)],
        number: u64,
    ) -> Result<String, CertError> {
        let now = OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - CLOCK_SKEW,
            next_update: self.not_after.max(now + Duration::days(1)),
            crl_number: rcgen::SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, at)| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(serial),
                    revocation_time: *at,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let generate = |source| CertError::Generate {
            action: "sign the certificate revocation list".into(),
            source,
        };
        params
            .signed_by(&self.issuer)
            .map_err(generate)?
            .pem()
            .map_err(generate)
    }

    fn issue(
        &self,
        name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        kind: &str,
    ) -> Result<Identity, CertError> {
        let key = KeyPair::generate().map_err(|source| CertError::Generate {
            action: format!("generate the key pair of {kind} {name}"),
            source,
        })?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        // No basicConstraints extension at all: a leaf that states `cA: FALSE` encodes a
        // DEFAULT value, which DER forbids and strict parsers (Python's `cryptography`, and so
        // aioquic) refuse; without the extension the certificate is an end entity anyway.
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - CLOCK_SKEW;
        params.not_after = (now + LEAF_VALIDITY).min(self.not_after);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CertError::Generate {
                action: format!("sign the {kind} certificate of {name}"),
                source,
            })?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Creates the federation CA in `dir` (made, mode 0700, if missing): `dir/ca.pem` (mode 0644)
/// and `dir/ca.key` (mode 0600).
///
/// Refuses if either file already exists, unless `force`, in which case both are replaced
/// (each atomically) and every certificate the old CA issued stops being trusted.
pub fn init_ca_dir(dir: &Path, federation: &str, force: bool) -> Result<(), CertError> {
    // Check the name before touching the file system.
    validate_federation(federation)?;
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| CertError::Io {
            action: "create directory",
            path: dir.to_path_buf(),
            source,
        })?;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if !force {
        // ca.pem alone also counts: on a node's machine it is the federation's CA certificate,
        // and silently replacing it would cut the node off.
        for path in [&key_path, &cert_path] {
            if exists(path) {
                return Err(CertError::AlreadyExists {
                    path: path.clone(),
                    hint: "pass --force to replace the CA; every certificate the old CA issued \
                           will stop being trusted",
                });
            }
        }
    }
    let ca = Ca::generate(federation)?;
    if force {
        replace_file(&key_path, ca.key_pem().as_bytes(), KEY_MODE)?;
        replace_file(&cert_path, ca.cert_pem().as_bytes(), CERT_MODE)?;
    } else {
        write_pair(
            &key_path,
            ca.key_pem().as_bytes(),
            &cert_path,
            ca.cert_pem().as_bytes(),
        )?;
    }
    Ok(())
}

/// Loads the CA from `dir` and issues a certificate for `name` into `dir/<name>.pem` (mode 0644)
/// and `dir/<name>.key` (mode 0600); returns `(certificate path, key path)`.
///
/// With `server_sans` a server certificate is issued for those names and addresses (see
/// [`Ca::issue_server`]), otherwise a node certificate. Refuses if either file exists.
pub fn issue_to_dir(
    dir: &Path,
    name: &str,
    server_sans: Option<&[String]>,
) -> Result<(PathBuf, PathBuf), CertError> {
    // The name becomes a file name: validation keeps it inside `dir` (no '/', no leading '.').
    validate_name(name)?;
    if name == "ca" {
        return Err(CertError::InvalidName {
            name: name.to_owned(),
            reason: "\"ca\" is reserved for the CA's own files",
        });
    }
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    for path in [&key_path, &cert_path] {
        if exists(path) {
            return Err(CertError::AlreadyExists {
                path: path.clone(),
                hint: "delete both the .pem and the .key to re-issue, or choose another name",
            });
        }
    }
    let ca = Ca::load(dir)?;
    let identity = match server_sans {
        Some(sans) => ca.issue_server(name, sans)?,
        None => ca.issue_node(name)?,
    };
    write_pair(
        &key_path,
        identity.key_pem.as_bytes(),
        &cert_path,
        identity.cert_pem.as_bytes(),
    )?;
    Ok((cert_path, key_path))
}

/// Revokes the certificate `dir/<name>.pem` (issued by the CA in `dir`): adds its serial to
/// `dir/revoked.txt` and rewrites `dir/crl.pem`, signed by the CA, listing every revocation so
/// far. Returns the CRL's path and whether the certificate was newly revoked (revoking twice
/// changes nothing). The coordinator refuses a revoked certificate in the TLS handshake once it
/// loads the new list (`crl` in its config; read at start, so restart it).
pub fn revoke_in_dir(dir: &Path, name: &str) -> Result<(PathBuf, bool), CertError> {
    validate_name(name)?;
    let ca = Ca::load(dir)?;
    let cert_path = dir.join(format!("{name}.pem"));
    let pem = read_text(
        &cert_path,
        "revoke names a certificate this CA directory issued (fd-certs issue writes <name>.pem here)",
    )?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertError::BadPem {
        origin: cert_path.display().to_string(),
        expected: "a PEM CERTIFICATE block",
        reason: e.to_string(),
    })?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der).map_err(|e| CertError::BadPem {
        origin: cert_path.display().to_string(),
        expected: "an X.509 certificate",
        reason: e.to_string(),
    })?;
    let ca_der =
        CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).map_err(|e| CertError::BadPem {
            origin: CA_CERT_FILE.into(),
            expected: "a PEM CERTIFICATE block",
            reason: e.to_string(),
        })?;
    let ca_subject = x509_parser::parse_x509_certificate(&ca_der)
        .map(|(_, c)| c.subject().as_raw().to_vec())
        .unwrap_or_default();
    if x509.issuer().as_raw() != ca_subject.as_slice() {
        return Err(CertError::BadCa {
            origin: cert_path.display().to_string(),
            reason: "this certificate was not issued by the CA in this directory".into(),
        });
    }
    let serial = x509.raw_serial().to_vec();
    let serial_hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
    let list_path = dir.join(REVOKED_FILE);
    let text = match fs::read_to_string(&list_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(CertError::Io {
                action: "read",
                path: list_path,
                source,
            });
        }
    };
    let mut revoked = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |reason: &str| CertError::BadPem {
            origin: format!("{} line {}", list_path.display(), i + 1),
            expected: "a revocation: serial (hex), name, time (RFC 3339)",
            reason: reason.to_owned(),
        };
        let mut fields = line.split_whitespace();
        let (Some(hex), Some(_name), Some(at)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad("fewer than three fields"));
        };
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|k| {
                hex.get(k..k + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| bad("the serial is not hex"))?;
        let at = OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .map_err(|e| bad(&e.to_string()))?;
        revoked.push((bytes, at));
    }
    let newly = !revoked.iter().any(|(s, _)| *s == serial);
    let mut new_text = text.clone();
    if newly {
        let now = OffsetDateTime::now_utc();
        let stamp = now
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| CertError::BadPem {
                origin: "the clock".into(),
                expected: "a time",
                reason: e.to_string(),
            })?;
        if !new_text.is_empty() && !new_text.ends_with('\n') {
            new_text.push('\n');
        }
        new_text.push_str(&format!("{serial_hex} {name} {stamp}\n"));
        revoked.push((serial, now));
    }
    // CRL numbers must grow: the seconds since the epoch do, one list per second at most.
    let number = OffsetDateTime::now_utc().unix_timestamp().max(1) as u64;
    let crl = ca.crl_pem(&revoked, number)?;
    let crl_path = dir.join(CRL_FILE);
    replace_file(&list_path, new_text.as_bytes(), CERT_MODE)?;
    replace_file(&crl_path, crl.as_bytes(), CERT_MODE)?;
    Ok((crl_path, newly))
}

/// Checks a node or server name: 1..=64 characters of `[A-Za-z0-9._-]`, starting with a letter
/// or digit (so it is a safe file name and a valid DNS name).
pub fn validate_name(name: &str) -> Result<(), CertError> {
    let invalid = |reason| {
        Err(CertError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("it is longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("it contains a character other than A-Z, a-z, 0-9, '.', '_' and '-'");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return invalid("it does not start with a letter or digit");
    }
    Ok(())
}

fn validate_federation(name: &str) -> Result<(), CertError> {
    let invalid = |reason| {
        Err(CertError::InvalidFederation {
            name: name.to_owned(),
            reason,
        })
    };
    if name.trim().is_empty() {
        return invalid("it is empty");
    }
    if name.chars().count() > MAX_FEDERATION_LEN {
        return invalid("it is too long");
    }
    if name.chars().any(char::is_control) {
        return invalid("it contains a control character");
    }
    Ok(())
}

fn dns_san(name: &str) -> Result<SanType, CertError> {
    // Also rejects names rustls could never match, e.g. a label longer than 63 bytes.
    rustls_pki_types::DnsName::try_from(name).map_err(|e| CertError::InvalidSan {
        san: name.to_owned(),
        reason: e.to_string(),
    })?;
    let ia5 = name
        .try_into()
        .map_err(|e: rcgen::Error| CertError::InvalidSan {
            san: name.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(SanType::DnsName(ia5))
}

fn parse_san(san: &str) -> Result<SanType, CertError> {
    let san = san.trim();
    if san.is_empty() {
        return Err(CertError::InvalidSan {
            san: san.to_owned(),
            reason: "it is empty".into(),
        });
    }
    match san.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => dns_san(san),
    }
}

/// Reads a UTF-8 text file; a missing file is [`CertError::NotFound`] with `hint`.
pub fn read_text(path: &Path, hint: &str) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => CertError::NotFound {
            path: path.to_path_buf(),
            hint: hint.to_owned(),
        },
        _ => CertError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Logs a warning if a private key file can be read by anyone but its owner.
pub fn warn_if_key_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "private key {} has mode {mode:o}; only its owner should be able to read it \
                 (chmod 600 {})",
                path.display(),
                path.display()
            );
        }
    }
}

/// Whether anything, even a dangling symlink, occupies `path`.
fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Writes a new key file and then a new certificate file; if the certificate cannot be
/// written, the key is removed again so no half-issued pair is left behind.
fn write_pair(key_path: &Path, key: &[u8], cert_path: &Path, cert: &[u8]) -> Result<(), CertError> {
    write_new(key_path, key, KEY_MODE)?;
    if let Err(e) = write_new(cert_path, cert, CERT_MODE) {
        let _ = fs::remove_file(key_path);
        return Err(e);
    }
    Ok(())
}

/// Creates `path` with `mode` from the start (never a chmod after writing) and writes
/// `contents`; fails if anything is already there.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => CertError::AlreadyExists {
                path: path.to_path_buf(),
                hint: "delete it first if it should be replaced",
            },
            _ => CertError::Io {
                action: "create",
                path: path.to_path_buf(),
                source,
            },
        })?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(source) = written {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(CertError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(())
}

/// Replaces `path` atomically: writes a new file (created with `mode`) beside it, then renames
/// it over `path`. Readers see the old file or the new one, never a mix or a looser mode.
fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
    // A leftover from a crashed run of this same process id; it holds nothing we need.
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        CertError::Io {
            action: "replace",
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pem: &str) -> (Vec<u8>, CertificateDer<'static>) {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate");
        (der.to_vec(), der)
    }

    /// Every BOOLEAN with value FALSE in `der`, descending into constructed values and into
    /// OCTET STRINGs that hold DER (extension values do). In an X.509 certificate every
    /// BOOLEAN (an extension's `critical`, basicConstraints' `cA`) is `DEFAULT FALSE`, and DER
    /// forbids encoding a default: any FALSE found is a strictness violation.
    fn encoded_false_booleans(der: &[u8]) -> Option<usize> {
        let mut found = 0;
        let mut rest = der;
        while !rest.is_empty() {
            let tag = rest[0];
            let first = *rest.get(1)?;
            let (len, header) = if first < 0x80 {
                (usize::from(first), 2)
            } else {
                let n = usize::from(first & 0x7f);
                let bytes = rest.get(2..2 + n)?;
                (
                    bytes.iter().fold(0usize, |l, &b| (l << 8) | usize::from(b)),
                    2 + n,
                )
            };
            let content = rest.get(header..header + len)?;
            if tag == 0x01 && content == [0x00] {
                found += 1;
            } else if tag & 0x20 != 0 {
                found += encoded_false_booleans(content)?;
            } else if tag == 0x04 {
                // Not every OCTET STRING holds DER (key identifiers do not): count only those
                // that parse whole.
                found += encoded_false_booleans(content).unwrap_or(0);
            }
            rest = &rest[header + len..];
        }
        Some(found)
    }

    #[test]
    fn certificates_are_strict_der_without_encoded_defaults() {
        let ca = Ca::generate("test").expect("CA");
        let node = ca.issue_node("hospital-a").expect("node");
        let server = ca
            .issue_server("coordinator", &["localhost".into(), "127.0.0.1".into()])
            .expect("server");
        for (what, pem) in [
            ("CA", ca.cert_pem()),
            ("node", node.cert_pem.clone()),
            ("server", server.cert_pem.clone()),
        ] {
            let (bytes, _) = parse(&pem);
            assert_eq!(
                encoded_false_booleans(&bytes),
                Some(0),
                "the {what} certificate encodes a DEFAULT FALSE (or is not DER)"
            );
            let (rest, x509) = x509_parser::parse_x509_certificate(&bytes).expect("X.509");
            assert!(rest.is_empty(), "{what}: trailing bytes");
            // Leaves carry no basicConstraints at all; the CA states cA: TRUE.
            let bc = x509.basic_constraints().expect("basicConstraints parses");
            assert_eq!(
                bc.map(|b| b.value.ca),
                (what == "CA").then_some(true),
                "{what}"
            );
        }
        // The bytes a strict parser refused before: basicConstraints { cA: FALSE }.
        assert_eq!(
            encoded_false_booleans(&[0x30, 0x03, 0x01, 0x01, 0x00]),
            Some(1)
        );
    }

    /// Python's `cryptography` (the parser behind aioquic) refuses any DER violation; where
    /// it is installed, it must read every certificate fd-certs makes. The DER check above
    /// runs everywhere.
    #[test]
    fn python_cryptography_reads_the_certificates_where_installed() {
        let probe = std::process::Command::new("python3")
            .args(["-c", "import cryptography"])
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            eprintln!("python3 with cryptography not installed: strict DER checked above only");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::generate("test").expect("CA");
        let node = ca.issue_node("hospital-a").expect("node");
        let server = ca
            .issue_server("coordinator", &["localhost".into()])
            .expect("server");
        let mut files = Vec::new();
        for (name, pem) in [
            ("ca", ca.cert_pem()),
            ("node", node.cert_pem),
            ("server", server.cert_pem),
        ] {
            let path = dir.path().join(format!("{name}.pem"));
            std::fs::write(&path, pem).expect("write");
            files.push(path);
        }
        let script = "import sys\nfrom cryptography import x509\nfor f in sys.argv[1:]:\n    \
                      c = x509.load_pem_x509_certificate(open(f, 'rb').read())\n    \
                      [e.value for e in c.extensions]\nprint('ok')";
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(&files)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "cryptography refused a certificate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn node_certificate_names_the_node_and_is_client_only() {
        let ca = Ca::generate("test").expect("CA");
        let id = ca.issue_node("hospital-a").expect("node cert");
        let (bytes, _) = parse(&id.cert_pem);
        let (_, x509) = x509_parser::parse_x509_certificate(&bytes).expect("X.509");
        let cn: Vec<_> = x509
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().expect("utf-8 CN"))
            .collect();
        assert_eq!(cn, ["hospital-a"]);
        let sans = &x509
            .subject_alternative_name()
            .expect("SAN parses")
            .expect("SAN present")
            .value
            .general_names;
        assert_eq!(
            sans,
            &[x509_parser::extensions::GeneralName::DNSName("hospital-a")]
        );
        let eku = x509
            .extended_key_usage()
            .expect("EKU parses")
            .expect("EKU present")
            .value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!x509.is_ca());
        // Issued by our CA: the issuer is the CA's subject.
        assert!(x509.issuer().to_string().contains("test federation CA"));
    }

    #[test]
    fn server_certificate_carries_dns_and_ip_sans() {
        let ca = Ca::generate("test").expect("CA");
        let sans = ["localhost".to_string(), "127.0.0.1".to_string()];
        let id = ca.issue_server("coordinator", &sans).expect("server cert");
        let (bytes, _) = parse(&id.cert_pem);
        let (_, x509) = x509_parser::parse_x509_certificate(&bytes).expect("X.509");
        let names = &x509
            .subject_alternative_name()
            .expect("SAN parses")
            .expect("SAN present")
            .value
            .general_names;
        use x509_parser::extensions::GeneralName;
        assert_eq!(
            names,
            &[
                GeneralName::DNSName("localhost"),
                GeneralName::IPAddress(&[127, 0, 0, 1])
            ]
        );
        let eku = x509
            .extended_key_usage()
            .expect("EKU parses")
            .expect("EKU present")
            .value;
        assert!(eku.server_auth && !eku.client_auth);
    }

    #[test]
    fn ca_round_trips_through_pem_and_still_issues() {
        let ca = Ca::generate("round trip").expect("CA");
        let again = Ca::from_pem(&ca.cert_pem(), &ca.key_pem()).expect("reload");
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let id = again.issue_node("node-1").expect("issue after reload");
        let (bytes, _) = parse(&id.cert_pem);
        let (_, x509) = x509_parser::parse_x509_certificate(&bytes).expect("X.509");
        assert!(
            x509.issuer()
                .to_string()
                .contains("round trip federation CA")
        );
    }

    #[test]
    fn from_pem_rejects_a_key_from_another_ca_and_a_leaf_as_ca() {
        let ca = Ca::generate("one").expect("CA");
        let other = Ca::generate("two").expect("CA");
        let err = Ca::from_pem(&ca.cert_pem(), &other.key_pem()).expect_err("mismatch");
        assert!(err.to_string().contains("does not belong"), "{err}");

        let leaf = ca.issue_node("n").expect("leaf");
        let err = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem).expect_err("leaf is no CA");
        assert!(err.to_string().contains("not a CA certificate"), "{err}");

        let err = Ca::from_pem("not pem", &ca.key_pem()).expect_err("garbage");
        assert!(matches!(err, CertError::BadPem { .. }), "{err}");
    }

    #[test]
    fn names_are_validated() {
        for good in ["hospital-a", "a", "node_7.eu", &"x".repeat(MAX_NAME_LEN)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "..",
            ".hidden",
            "-flag",
            "a/b",
            "a b",
            "hôpital",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        let ca = Ca::generate("test").expect("CA");
        assert!(ca.issue_node("../etc").is_err());
        assert!(
            ca.issue_server("coordinator", &["bad name!".to_string()])
                .is_err()
        );
        assert!(Ca::generate("").is_err());
        assert!(Ca::generate(&"f".repeat(MAX_FEDERATION_LEN + 1)).is_err());
    }

    #[test]
    fn init_and_issue_write_files_with_owner_only_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("pki");
        init_ca_dir(&ca_dir, "test", false).expect("init");
        let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        // 0o600: keys readable by their owner only; 0o700: the CA directory likewise.
        assert_eq!(mode(&ca_dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&ca_dir), 0o700);

        let (cert, key) = issue_to_dir(&ca_dir, "hospital-a", None).expect("issue");
        assert_eq!(cert, ca_dir.join("hospital-a.pem"));
        assert_eq!(key, ca_dir.join("hospital-a.key"));
        assert_eq!(mode(&key), 0o600);

        // The files load back: the CA and a key that matches the certificate.
        let ca = Ca::load(&ca_dir).expect("load CA");
        let id = Identity {
            cert_pem: fs::read_to_string(&cert).expect("cert"),
            key_pem: fs::read_to_string(&key).expect("key"),
        };
        let (bytes, _) = parse(&id.cert_pem);
        let (_, x509) = x509_parser::parse_x509_certificate(&bytes).expect("X.509");
        let key_pair = KeyPair::from_pem(&id.key_pem).expect("key parses");
        assert_eq!(
            key_pair.public_key_raw(),
            x509.public_key().subject_public_key.data.as_ref()
        );
        let (ca_bytes, _) = parse(&ca.cert_pem());
        let (_, ca_x509) = x509_parser::parse_x509_certificate(&ca_bytes).expect("X.509");
        assert!(
            x509.verify_signature(Some(ca_x509.public_key())).is_ok(),
            "leaf must be signed by the CA"
        );

        let (_, server_key) =
            issue_to_dir(&ca_dir, "coordinator", Some(&["localhost".to_string()])).expect("server");
        assert_eq!(mode(&server_key), 0o600);
    }

    #[test]
    fn existing_files_are_never_overwritten_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca_dir(dir.path(), "test", false).expect("init");
        let key_before = fs::read_to_string(dir.path().join(CA_KEY_FILE)).expect("ca.key");

        let err = init_ca_dir(dir.path(), "test", false).expect_err("second init");
        assert!(matches!(err, CertError::AlreadyExists { .. }), "{err}");
        assert_eq!(
            fs::read_to_string(dir.path().join(CA_KEY_FILE)).expect("ca.key"),
            key_before
        );

        let (_, key) = issue_to_dir(dir.path(), "n1", None).expect("issue");
        let node_key = fs::read_to_string(&key).expect("node key");
        let err = issue_to_dir(dir.path(), "n1", None).expect_err("re-issue");
        assert!(matches!(err, CertError::AlreadyExists { .. }), "{err}");
        assert_eq!(fs::read_to_string(&key).expect("node key"), node_key);
        assert!(issue_to_dir(dir.path(), "ca", None).is_err());

        // --force replaces the CA, and the new key is still owner-only.
        init_ca_dir(dir.path(), "test", true).expect("forced init");
        let key_path = dir.path().join(CA_KEY_FILE);
        assert_ne!(fs::read_to_string(&key_path).expect("ca.key"), key_before);
        assert_eq!(
            fs::metadata(&key_path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        // No temporary file is left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("read_dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn issuing_without_a_ca_names_the_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = issue_to_dir(dir.path(), "n1", None).expect_err("no CA");
        let msg = err.to_string();
        assert!(
            msg.contains("ca.pem") && msg.contains("fd-certs init"),
            "{msg}"
        );
        // Nothing was written.
        assert!(!dir.path().join("n1.key").exists());
    }
}

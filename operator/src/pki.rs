//! The certificates of a cluster with `spec.tls`: a CA the operator makes once, a serving and
//! peer certificate per member naming the hosts it is reached by, and the operator's own client
//! certificate. Keys are written readable by their owner only, from the start. A certificate
//! is issued again before it expires ([`needs_renewal`]); the CA lives ten years.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;

/// How long a member or client certificate is valid.
pub const CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// How long before its expiry a certificate is issued again.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The Common Name of the operator's client certificate.
pub const OPERATOR_CN: &str = "mend-operator";

/// The Common Name of the certificate issued for users' clients (etcdctl, applications): with
/// auth on they still log in as a user; the certificate only lets them through the TLS
/// handshake, which the members' client-cert-auth requires.
pub const CLIENT_CN: &str = "client";

/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why a certificate could not be made, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key or certificate could not be made or parsed.
    #[error("{what}: {reason}")]
    Certificate {
        /// What was being made.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

/// This module's result.
pub type Result<T> = std::result::Result<T, Error>;

/// A certificate and its key on disk, with the CA that signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
}

/// A certificate and its private key, in PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a private key in a log line.
        f.debug_struct("Pem")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// The cluster's CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

fn failed(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> Error {
    let what = what.into();
    move |e| Error::Certificate {
        what,
        reason: e.to_string(),
    }
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::File {
        path: path.to_path_buf(),
        source,
    }
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = OffsetDateTime::now_utc();
    // An hour of slack for clocks a little behind the operator's.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + valid_for;
}

/// Who a certificate is for: the TLS roles it may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A member: it serves clients and peers, and presents it to the peers it dials.
    ServerAndClient,
    /// A client only (the operator, users).
    Client,
}

impl Ca {
    /// A new CA named `<name> CA`, valid ten years.
    pub fn generate(name: &str) -> Result<Ca> {
        let key_pair = KeyPair::generate().map_err(failed("the CA key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed("the CA"))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, CA_VALIDITY);
        let certificate = params
            .self_signed(&key_pair)
            .map_err(failed("the CA certificate"))?;
        Ok(Ca {
            cert_pem: certificate.pem(),
            issuer: Issuer::new(params, key_pair),
        })
    }

    /// The CA whose certificate and key are `cert_pem` and `key_pem`.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let key_pair = KeyPair::from_pem(key_pem).map_err(failed("the CA key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key_pair).map_err(failed("the CA certificate"))?;
        Ok(Ca {
            issuer,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate and key, in PEM (the key: to be stored readable by its owner only).
    pub fn to_pem(&self) -> Pem {
        Pem {
            cert: self.cert_pem.clone(),
            key: self.issuer.key().serialize_pem(),
        }
    }

    /// The CA certificate, in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA kept in `dir` (`ca.pem`, `ca-key.pem`), made the first time.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<Ca> {
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        if cert.exists() && key.exists() {
            let key_pem = std::fs::read_to_string(&key).map_err(file_error(&key))?;
            let cert_pem = std::fs::read_to_string(&cert).map_err(file_error(&cert))?;
            return Ca::from_pem(&cert_pem, &key_pem);
        }
        std::fs::create_dir_all(dir).map_err(file_error(dir))?;
        let ca = Ca::generate(name)?;
        let pem = ca.to_pem();
        storage_node::tls::write_private(&key, pem.key.as_bytes()).map_err(file_error(&key))?;
        std::fs::write(&cert, &pem.cert).map_err(file_error(&cert))?;
        Ok(ca)
    }

    /// A certificate for `common_name` naming `hosts` (DNS names or IP addresses), for
    /// `usage`, valid [`CERT_VALIDITY`].
    pub fn issue_pem(&self, common_name: &str, hosts: &[String], usage: Usage) -> Result<Pem> {
        self.issue_pem_for(common_name, hosts, usage, CERT_VALIDITY)
    }

    /// The same, valid `valid_for`.
    pub fn issue_pem_for(
        &self,
        common_name: &str,
        hosts: &[String],
        usage: Usage,
        valid_for: Duration,
    ) -> Result<Pem> {
        let what = format!("the certificate of {common_name}");
        let key_pair = KeyPair::generate().map_err(failed(what.clone()))?;
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(failed(what.clone()))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        validity(&mut params, valid_for);
        let certificate = params
            .signed_by(&key_pair, &self.issuer)
            .map_err(failed(what))?;
        Ok(Pem {
            cert: certificate.pem(),
            key: key_pair.serialize_pem(),
        })
    }

    /// A certificate for `common_name` naming `hosts` (DNS names or IP addresses), usable to
    /// serve and as a client (members present theirs to peers), written as `<file>.pem` and
    /// `<file>-key.pem` in `dir`, beside the CA's `ca.pem`.
    pub fn issue(
        &self,
        dir: &Path,
        file: &str,
        common_name: &str,
        hosts: &[String],
    ) -> Result<Issued> {
        let pem = self.issue_pem(common_name, hosts, Usage::ServerAndClient)?;
        std::fs::create_dir_all(dir).map_err(file_error(dir))?;
        let issued = Issued {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}-key.pem")),
            ca: dir.join("ca.pem"),
        };
        storage_node::tls::write_private(&issued.key, pem.key.as_bytes())
            .map_err(file_error(&issued.key))?;
        std::fs::write(&issued.cert, &pem.cert).map_err(file_error(&issued.cert))?;
        Ok(issued)
    }
}

/// A member's TLS flags: both ports serve `cert` (with `key`) and require client
/// certificates signed by the CA in `ca`.
pub fn member_flags(cert: &str, key: &str, ca: &str) -> Vec<String> {
    [
        ("--cert-file", cert),
        ("--key-file", key),
        ("--trusted-ca-file", ca),
        ("--peer-cert-file", cert),
        ("--peer-key-file", key),
        ("--peer-trusted-ca-file", ca),
    ]
    .into_iter()
    .map(|(flag, value)| format!("{flag}={value}"))
    .chain([
        "--client-cert-auth".to_string(),
        "--peer-client-cert-auth".to_string(),
    ])
    .collect()
}

/// When the certificate in `pem` expires; `None` when it cannot be read (read as "renew").
pub fn expiry(pem: &str) -> Option<OffsetDateTime> {
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = der.parse_x509().ok()?;
    Some(cert.validity().not_after.to_datetime())
}

/// Whether the certificate in `pem` must be issued again at `now`: it expires within
/// [`RENEW_BEFORE`], or cannot be read.
pub fn needs_renewal(pem: &str, now: OffsetDateTime) -> bool {
    expiry(pem).is_none_or(|expires| expires - now < RENEW_BEFORE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_is_made_once_and_signs_member_certificates_with_private_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        Ca::load_or_create(dir.path(), "c1").expect("CA");
        let first = std::fs::read(dir.path().join("ca.pem")).expect("CA file");
        let again = Ca::load_or_create(dir.path(), "c1").expect("CA again");
        assert_eq!(again.cert_pem().as_bytes(), first);
        let hosts = vec!["127.0.0.1".to_string(), "m1.c1.svc".to_string()];
        let issued = again
            .issue(dir.path(), "m1", "m1", &hosts)
            .expect("member certificate");
        for key in [&issued.key, &dir.path().join("ca-key.pem")] {
            let mode = std::fs::metadata(key).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        let pem = std::fs::read_to_string(&issued.cert).expect("cert");
        let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
        let cert = der.parse_x509().expect("X.509");
        let names = storage_node::tls::subject(&rustls_pki_types::CertificateDer::from(
            der.contents.clone(),
        ));
        assert_eq!(names.0.as_deref(), Some("m1"));
        assert_eq!(names.1, hosts);
        // Signed by the CA made first, not by a new one.
        let ca_pem = String::from_utf8(first).expect("PEM");
        let (_, ca_der) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).expect("PEM");
        let ca_cert = ca_der.parse_x509().expect("X.509");
        assert_eq!(
            cert.issuer().to_string(),
            ca_cert.subject().to_string(),
            "issued by the kept CA"
        );
    }

    #[test]
    fn a_certificate_is_renewed_within_its_last_month_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path(), "c1").expect("CA");
        let issued = ca
            .issue(dir.path(), "client", "mend-operator", &[])
            .expect("client certificate");
        let pem = std::fs::read_to_string(&issued.cert).expect("cert");
        let now = OffsetDateTime::now_utc();
        assert!(!needs_renewal(&pem, now));
        let late = now + time::Duration::days(61);
        assert!(needs_renewal(&pem, late), "31 days before expiry");
        assert!(
            needs_renewal("not a certificate", now),
            "unreadable is renewed"
        );
    }
}

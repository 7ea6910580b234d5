//! holysheep-certs: the CA and serving certificate of the admission webhook, and caBundle
//! handling.
//!
//! What it does: generate a CA and a serving certificate for `S.N.svc` with rcgen (ECDSA
//! P-256), read both back from PEM (checking that key and certificate belong together),
//! report expiry and decide renewal, verify a serving certificate the way a TLS client
//! would, and encode or compare a webhook `caBundle` ([`bundle`]).
//!
//! What it does not do: talk to Kubernetes (that is `holysheep-webhook`'s `bootstrap`), or
//! any file I/O except the one explicit [`write_to_dir`].

pub mod bundle;
mod error;
mod files;
mod parse;
mod verify;

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use time::OffsetDateTime;

pub use error::{CertError, Result};
pub use files::{CA_CERT_FILE, TLS_CERT_FILE, TLS_KEY_FILE, write_to_dir};

use parse::CertInfo;

const DAY: u64 = 24 * 60 * 60;

/// Default lifetime of a generated CA: ten years, so the caBundle rarely has to change.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(3650 * DAY);
/// Default lifetime of a serving certificate: one year.
pub const DEFAULT_SERVING_VALIDITY: Duration = Duration::from_secs(365 * DAY);
/// Default renewal margin: renew when less than this is left before `notAfter`.
pub const DEFAULT_RENEWAL_MARGIN: Duration = Duration::from_secs(30 * DAY);
/// Default CA common name.
pub const DEFAULT_CA_COMMON_NAME: &str = "holysheep-webhook-ca";

/// Certificates are back-dated by this much, so a replica or an apiserver whose clock runs
/// slightly behind does not see a "not yet valid" certificate.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// The DNS names a webhook Service `S` in namespace `N` is reached by, in this order:
/// `S.N.svc` (what kube-apiserver dials), `S.N.svc.cluster.local`, `S.N`, `S`.
///
/// Both names must be DNS-1123 labels; the error names the offending field.
pub fn serving_dns_names(service: &str, namespace: &str) -> Result<Vec<String>> {
    check_label("service", service)?;
    check_label("namespace", namespace)?;
    Ok(vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_owned(),
    ])
}

fn check_label(field: &'static str, value: &str) -> Result<()> {
    let bytes = value.as_bytes();
    let ok_char = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(ok_char)
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-');
    if ok {
        Ok(())
    } else {
        Err(CertError::InvalidName {
            field,
            value: value.to_owned(),
        })
    }
}

/// `[now - skew, now + validity]`, capped at `cap` (a leaf must not outlive its CA).
fn validity_window(
    field: &'static str,
    validity: Duration,
    cap: Option<OffsetDateTime>,
) -> Result<(OffsetDateTime, OffsetDateTime)> {
    if validity.is_zero() {
        return Err(CertError::InvalidValidity {
            field,
            reason: "must be greater than zero",
        });
    }
    let too_long = || CertError::InvalidValidity {
        field,
        reason: "is too long (the end date must be before year 9999)",
    };
    let now = OffsetDateTime::now_utc();
    // X.509 times have whole seconds; truncating here makes not_after() round-trip exactly.
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let span = time::Duration::try_from(validity).map_err(|_| too_long())?;
    let not_after = now
        .checked_add(span)
        .filter(|t| t.year() < 9999)
        .ok_or_else(too_long)?;
    let not_after = cap.map_or(not_after, |cap| not_after.min(cap));
    Ok((now - CLOCK_SKEW, not_after))
}

fn ecdsa_key(what: &'static str) -> Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| CertError::Generate { what, source })
}

fn renewal_due(not_after: OffsetDateTime, now: OffsetDateTime, margin: Duration) -> bool {
    // A margin too large to represent means "always renew", the safe side.
    match time::Duration::try_from(margin) {
        Ok(margin) => now.checked_add(margin).is_none_or(|t| t >= not_after),
        Err(_) => true,
    }
}

/// Generates a new self-signed CA (ECDSA P-256, `CA:TRUE, pathlen:0`, keyCertSign) valid
/// for `validity` from now.
pub fn generate_ca(common_name: &str, validity: Duration) -> Result<Ca> {
    let (not_before, not_after) = validity_window("CA validity", validity, None)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "holysheep-injector");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = ecdsa_key("CA key")?;
    let cert = params
        .self_signed(&key)
        .map_err(|source| CertError::Generate {
            what: "CA certificate",
            source,
        })?;
    // Parse our own output back, so a generated and a loaded CA are the very same value.
    Ca::from_pem(&cert.pem(), &key.serialize_pem())
}

/// A certificate authority: its certificate and private key, both PEM.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    info: CertInfo,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is deliberately left out: Debug output ends up in logs.
        f.debug_struct("Ca")
            .field("not_before", &self.info.not_before)
            .field("not_after", &self.info.not_after)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads a CA from PEM. `cert_pem` may be a trust bundle: its first certificate is the
    /// signing CA. Fails when that certificate is not a CA or the key is not its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let info = parse::first_certificate(cert_pem, CA_CERT_FILE)?;
        if !info.is_ca {
            return Err(CertError::NotACa);
        }
        parse::matching_key(key_pem, &info, CA_CERT_FILE, "ca.key")?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            info,
        })
    }

    /// The CA certificate PEM exactly as given (possibly a bundle): `ca.crt` and the caBundle.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The signing CA certificate alone, PEM, even when [`Ca::from_pem`] was given a bundle
    /// whose first certificate is the CA.
    pub fn signing_cert_pem(&self) -> String {
        bundle::to_pem(self.info.der.as_ref())
    }

    /// The CA private key, PEM (PKCS#8). Keep it out of logs.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Start of validity, as read back from the certificate.
    pub fn not_before(&self) -> OffsetDateTime {
        self.info.not_before
    }

    /// End of validity, as read back from the certificate.
    pub fn not_after(&self) -> OffsetDateTime {
        self.info.not_after
    }

    /// True when less than `margin` is left at `now` before the CA expires.
    pub fn needs_renewal(&self, now: OffsetDateTime, margin: Duration) -> bool {
        renewal_due(self.info.not_after, now, margin)
    }

    /// Issues a serving certificate (ECDSA P-256, serverAuth) for Service `service` in
    /// `namespace`, with the SANs of [`serving_dns_names`], valid for `validity` from now
    /// but never beyond the CA's own `notAfter`.
    pub fn issue_serving(
        &self,
        service: &str,
        namespace: &str,
        validity: Duration,
    ) -> Result<ServingCert> {
        let names = serving_dns_names(service, namespace)?;
        let (not_before, not_after) =
            validity_window("serving validity", validity, Some(self.info.not_after))?;
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(|source| CertError::Generate {
            what: "CA signer from ca.key",
            source,
        })?;
        let issuer = Issuer::from_ca_cert_der(&self.info.der, ca_key).map_err(|source| {
            CertError::Generate {
                what: "CA signer from ca.crt",
                source,
            }
        })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names[0].as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| {
                n.clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|_| CertError::InvalidName {
                        field: "service",
                        value: n.clone(),
                    })
            })
            .collect::<Result<_>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = ecdsa_key("serving key")?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|source| CertError::Generate {
                what: "serving certificate",
                source,
            })?;
        ServingCert::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Checks that `serving` chains to this CA, is valid at `now`, is a serverAuth
    /// certificate and names every DNS name of Service `service` in `namespace`.
    pub fn verify_serving(
        &self,
        serving: &ServingCert,
        service: &str,
        namespace: &str,
        now: OffsetDateTime,
    ) -> Result<()> {
        let names = serving_dns_names(service, namespace)?;
        verify::verify_leaf(&self.info.der, &serving.info.der, &names, now)
    }
}

/// A serving certificate and its private key, both PEM.
pub struct ServingCert {
    cert_pem: String,
    key_pem: String,
    info: CertInfo,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is deliberately left out: Debug output ends up in logs.
        f.debug_struct("ServingCert")
            .field("dns_names", &self.info.dns_names)
            .field("not_after", &self.info.not_after)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// Loads a serving certificate from PEM. Fails when the key is not the certificate's.
    /// Only the first certificate of `cert_pem` (the leaf) is considered.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let info = parse::first_certificate(cert_pem, TLS_CERT_FILE)?;
        parse::matching_key(key_pem, &info, TLS_CERT_FILE, TLS_KEY_FILE)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            info,
        })
    }

    /// The certificate, PEM (`tls.crt`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM PKCS#8 (`tls.key`). Keep it out of logs.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The DNS subjectAltNames, as read back from the certificate.
    pub fn dns_names(&self) -> &[String] {
        &self.info.dns_names
    }

    /// Start of validity, as read back from the certificate.
    pub fn not_before(&self) -> OffsetDateTime {
        self.info.not_before
    }

    /// End of validity, as read back from the certificate.
    pub fn not_after(&self) -> OffsetDateTime {
        self.info.not_after
    }

    /// True when less than `margin` is left at `now` before the certificate expires.
    pub fn needs_renewal(&self, now: OffsetDateTime, margin: Duration) -> bool {
        renewal_due(self.info.not_after, now, margin)
    }
}

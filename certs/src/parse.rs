//! Reading certificates and keys back from PEM: the facts the rest of the crate needs
//! (expiry, CA flag, public key, DNS names), pulled out once with x509-parser.
//!
//! It does not verify signatures or chains; `verify` does that with webpki.

use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use crate::error::{CertError, Result};

/// What the crate needs to know about one parsed certificate.
#[derive(Debug, Clone)]
pub(crate) struct CertInfo {
    pub(crate) der: CertificateDer<'static>,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
    pub(crate) is_ca: bool,
    pub(crate) spki_der: Vec<u8>,
    pub(crate) dns_names: Vec<String>,
}

/// Decodes the first `CERTIFICATE` block of `pem` and inspects it.
pub(crate) fn first_certificate(pem: &str, what: &'static str) -> Result<CertInfo> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertError::Parse {
        what,
        reason: format!("no PEM CERTIFICATE block found ({e})"),
    })?;
    inspect(der, what)
}

/// Decodes every `CERTIFICATE` block of `pem`, in order. Blocks of other types are skipped.
pub(crate) fn all_certificates(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| CertError::Parse {
            what,
            reason: format!("bad PEM ({e})"),
        })
}

pub(crate) fn inspect(der: CertificateDer<'static>, what: &'static str) -> Result<CertInfo> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| CertError::Parse {
            what,
            reason: format!("not an X.509 certificate ({e})"),
        })?;
    let dns_names = match x509.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            return Err(CertError::Parse {
                what,
                reason: format!("bad subjectAltName extension ({e})"),
            });
        }
    };
    // `der` is moved last, after the fields that borrow it through `x509`.
    Ok(CertInfo {
        not_before: x509.validity().not_before.to_datetime(),
        not_after: x509.validity().not_after.to_datetime(),
        is_ca: x509.is_ca(),
        spki_der: x509.public_key().raw.to_vec(),
        dns_names,
        der,
    })
}

/// Parses a PEM private key and checks that it belongs to the certificate `cert`.
pub(crate) fn matching_key(
    key_pem: &str,
    cert: &CertInfo,
    cert_what: &'static str,
    key_what: &'static str,
) -> Result<KeyPair> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Parse {
        what: key_what,
        reason: format!("not a PEM private key ({e})"),
    })?;
    if key.subject_public_key_info() != cert.spki_der {
        return Err(CertError::KeyMismatch {
            cert: cert_what,
            key: key_what,
        });
    }
    Ok(key)
}

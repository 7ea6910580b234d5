//! Public-API tests of holysheep-certs: chain verification with rustls' own webpki
//! verifier, PEM round trips, renewal margins, file output and caBundle comparison.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns may unwrap"
)]

use std::sync::Arc;
use std::time::Duration;

use holysheep_certs::{
    CertError, DEFAULT_CA_VALIDITY, DEFAULT_SERVING_VALIDITY, bundle, generate_ca,
    serving_dns_names, write_to_dir,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// A verifier trusting only `ca_pem`, built the way a Rust TLS client would.
fn verifier_for(ca_pem: &str) -> Arc<WebPkiServerVerifier> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap()
}

fn verify(ca_pem: &str, leaf_pem: &str, name: &str) -> Result<(), rustls::Error> {
    let leaf = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).unwrap();
    verifier_for(ca_pem)
        .verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

#[test]
fn serving_cert_verifies_against_ca_for_every_san() {
    let ca = generate_ca("test-ca", DEFAULT_CA_VALIDITY).unwrap();
    let serving = ca
        .issue_serving(
            "holysheep-webhook",
            "holysheep-system",
            DEFAULT_SERVING_VALIDITY,
        )
        .unwrap();
    let expected = [
        "holysheep-webhook.holysheep-system.svc",
        "holysheep-webhook.holysheep-system.svc.cluster.local",
        "holysheep-webhook.holysheep-system",
        "holysheep-webhook",
    ];
    assert_eq!(serving.dns_names(), expected);
    for name in expected {
        verify(ca.cert_pem(), serving.cert_pem(), name)
            .unwrap_or_else(|e| panic!("{name} rejected: {e}"));
    }
    ca.verify_serving(
        &serving,
        "holysheep-webhook",
        "holysheep-system",
        OffsetDateTime::now_utc(),
    )
    .unwrap();
}

#[test]
fn serving_cert_is_rejected_for_other_names_and_other_cas() {
    let ca = generate_ca("test-ca", DEFAULT_CA_VALIDITY).unwrap();
    let other_ca = generate_ca("other-ca", DEFAULT_CA_VALIDITY).unwrap();
    let serving = ca.issue_serving("svc", "ns", DAY).unwrap();

    assert!(verify(ca.cert_pem(), serving.cert_pem(), "other.ns.svc").is_err());
    assert!(verify(other_ca.cert_pem(), serving.cert_pem(), "svc.ns.svc").is_err());

    let now = OffsetDateTime::now_utc();
    let err = other_ca
        .verify_serving(&serving, "svc", "ns", now)
        .unwrap_err();
    assert!(matches!(err, CertError::Verify { .. }), "{err}");
    let err = ca
        .verify_serving(&serving, "svc", "other-ns", now)
        .unwrap_err();
    assert!(err.to_string().contains("svc.other-ns.svc"), "{err}");
    // Expired at a later instant.
    let err = ca
        .verify_serving(&serving, "svc", "ns", now + 2 * DAY)
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
}

#[test]
fn serving_cert_is_ecdsa_p256_server_auth_and_not_a_ca() {
    let ca = generate_ca("test-ca", DAY).unwrap();
    let serving = ca.issue_serving("svc", "ns", HOUR).unwrap();
    let der = CertificateDer::from_pem_slice(serving.cert_pem().as_bytes()).unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth);
    assert!(!x509.is_ca());
    assert_eq!(
        x509.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    assert!(serving.key_pem().contains("BEGIN PRIVATE KEY"));
}

#[test]
fn pem_round_trip_keeps_everything() {
    let ca = generate_ca("test-ca", DEFAULT_CA_VALIDITY).unwrap();
    let again = holysheep_certs::Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    assert_eq!(again.not_after(), ca.not_after());
    assert_eq!(again.cert_pem(), ca.cert_pem());

    let serving = again.issue_serving("svc", "ns", DAY).unwrap();
    let loaded =
        holysheep_certs::ServingCert::from_pem(serving.cert_pem(), serving.key_pem()).unwrap();
    assert_eq!(loaded.not_after(), serving.not_after());
    assert_eq!(loaded.dns_names(), serving.dns_names());
    // A CA loaded back from PEM still issues certificates that chain to the original.
    verify(ca.cert_pem(), loaded.cert_pem(), "svc.ns.svc").unwrap();
}

#[test]
fn expiry_is_read_back_from_the_certificate_and_capped_by_the_ca() {
    let before = OffsetDateTime::now_utc();
    let ca = generate_ca("test-ca", 10 * DAY).unwrap();
    let delta = ca.not_after() - (before + 10 * DAY);
    assert!(
        delta.abs() <= time::Duration::seconds(5),
        "CA not_after off by {delta}"
    );
    assert!(ca.not_before() < before);

    let serving = ca.issue_serving("svc", "ns", 100 * DAY).unwrap();
    assert_eq!(
        serving.not_after(),
        ca.not_after(),
        "leaf must not outlive its CA"
    );
}

#[test]
fn renewal_margin_logic() {
    let ca = generate_ca("test-ca", DEFAULT_CA_VALIDITY).unwrap();
    let serving = ca.issue_serving("svc", "ns", 10 * DAY).unwrap();
    let now = OffsetDateTime::now_utc();
    assert!(!serving.needs_renewal(now, 9 * DAY));
    assert!(serving.needs_renewal(now, 11 * DAY));
    assert!(serving.needs_renewal(now + 2 * DAY, 9 * DAY));
    // Exactly at the boundary counts as due.
    assert!(serving.needs_renewal(serving.not_after() - 9 * DAY, 9 * DAY));
    assert!(!serving.needs_renewal(
        serving.not_after() - 9 * DAY - time::Duration::SECOND,
        9 * DAY
    ));
    // An absurd margin means renew, not overflow.
    assert!(serving.needs_renewal(now, Duration::from_secs(u64::MAX)));
    assert!(!ca.needs_renewal(now, 30 * DAY));
}

#[test]
fn bad_inputs_give_errors_that_name_the_input() {
    let ca = generate_ca("test-ca", DAY).unwrap();
    let serving = ca.issue_serving("svc", "ns", HOUR).unwrap();
    let other = ca.issue_serving("svc", "ns", HOUR).unwrap();

    let err = holysheep_certs::Ca::from_pem("garbage", ca.key_pem()).unwrap_err();
    assert!(err.to_string().contains("ca.crt"), "{err}");
    let err = holysheep_certs::Ca::from_pem(serving.cert_pem(), serving.key_pem()).unwrap_err();
    assert!(matches!(err, CertError::NotACa), "{err}");
    let err = holysheep_certs::Ca::from_pem(ca.cert_pem(), serving.key_pem()).unwrap_err();
    assert!(matches!(err, CertError::KeyMismatch { .. }), "{err}");
    let err =
        holysheep_certs::ServingCert::from_pem(serving.cert_pem(), other.key_pem()).unwrap_err();
    assert!(err.to_string().contains("tls.key"), "{err}");
    let err = holysheep_certs::ServingCert::from_pem(serving.cert_pem(), "nope").unwrap_err();
    assert!(err.to_string().contains("tls.key"), "{err}");
    assert!(!err.to_string().contains("nope"));

    let err = ca.issue_serving("Bad_Name", "ns", HOUR).unwrap_err();
    assert!(
        err.to_string().contains("invalid service \"Bad_Name\""),
        "{err}"
    );
    let err = serving_dns_names("svc", "-ns").unwrap_err();
    assert!(err.to_string().contains("invalid namespace"), "{err}");
    let err = generate_ca("x", Duration::ZERO).unwrap_err();
    assert!(err.to_string().contains("CA validity"), "{err}");
    let err = generate_ca("x", Duration::from_secs(u64::MAX)).unwrap_err();
    assert!(err.to_string().contains("too long"), "{err}");
    // Debug output never carries a key.
    assert!(!format!("{ca:?}{serving:?}").contains("PRIVATE KEY"));
}

#[test]
fn write_to_dir_writes_the_three_files_and_protects_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let ca = generate_ca("test-ca", DAY).unwrap();
    let first = ca.issue_serving("svc", "ns", HOUR).unwrap();
    let [ca_path, cert_path, key_path] = write_to_dir(&dir, ca.cert_pem(), &first).unwrap();
    assert_eq!(std::fs::read_to_string(&ca_path).unwrap(), ca.cert_pem());
    assert_eq!(
        std::fs::read_to_string(&cert_path).unwrap(),
        first.cert_pem()
    );
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), first.key_pem());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Overwriting replaces the contents and leaves no temp files behind.
    let second = ca.issue_serving("svc", "ns", HOUR).unwrap();
    write_to_dir(&dir, ca.cert_pem(), &second).unwrap();
    assert_eq!(
        std::fs::read_to_string(&key_path).unwrap(),
        second.key_pem()
    );
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["ca.crt", "tls.crt", "tls.key"]);
}

#[test]
fn ca_bundle_encoding_and_comparison() {
    let ca = generate_ca("test-ca", DAY).unwrap();
    let other = generate_ca("other-ca", DAY).unwrap();
    let pem = ca.cert_pem();

    let encoded = bundle::encode(pem);
    assert_eq!(bundle::decode(&encoded).unwrap(), pem.as_bytes());
    assert!(
        bundle::decode("not base64!")
            .unwrap_err()
            .to_string()
            .contains("caBundle")
    );

    let crlf = format!("\n\n{}\n  \n", pem.replace('\n', "\r\n"));
    assert!(bundle::same_certificates(pem.as_bytes(), crlf.as_bytes()));
    assert!(!bundle::same_certificates(
        pem.as_bytes(),
        other.cert_pem().as_bytes()
    ));
    assert!(!bundle::same_certificates(b"", b""));
    assert!(!bundle::same_certificates(pem.as_bytes(), b""));

    let both = format!("{pem}{}", other.cert_pem());
    let both_reversed = format!("{}{pem}", other.cert_pem());
    assert!(bundle::same_certificates(
        both.as_bytes(),
        both_reversed.as_bytes()
    ));
    assert!(!bundle::same_certificates(both.as_bytes(), pem.as_bytes()));
    assert_eq!(bundle::certificates(both.as_bytes()).unwrap().len(), 2);
}

#[test]
fn rotate_puts_the_new_ca_first_and_keeps_old_cas_until_they_expire() {
    let old = generate_ca("old-ca", DAY).unwrap();
    let new = generate_ca("new-ca", 10 * DAY).unwrap();
    let now = OffsetDateTime::now_utc();

    let rotated = bundle::rotate(new.cert_pem(), old.cert_pem().as_bytes(), now);
    let certs = bundle::certificates(rotated.as_bytes()).unwrap();
    assert_eq!(certs.len(), 2);
    // The first certificate is the signing CA, so Ca::from_pem(bundle, key) still works.
    holysheep_certs::Ca::from_pem(&rotated, new.key_pem()).unwrap();
    let expected = format!("{}{}", new.cert_pem(), old.cert_pem());
    assert!(bundle::same_certificates(
        rotated.as_bytes(),
        expected.as_bytes()
    ));

    // Rotating again with the same CA neither duplicates it nor the old one.
    let again = bundle::rotate(new.cert_pem(), rotated.as_bytes(), now);
    assert_eq!(bundle::certificates(again.as_bytes()).unwrap().len(), 2);

    // Once the old CA has expired it is dropped; garbage in the old bundle is dropped too.
    let later = bundle::rotate(new.cert_pem(), rotated.as_bytes(), now + 2 * DAY);
    assert!(bundle::same_certificates(
        later.as_bytes(),
        new.cert_pem().as_bytes()
    ));
    let from_garbage = bundle::rotate(new.cert_pem(), b"not pem at all", now);
    assert!(bundle::same_certificates(
        from_garbage.as_bytes(),
        new.cert_pem().as_bytes()
    ));
}

#[test]
fn to_pem_round_trips_der() {
    let ca = generate_ca("test-ca", DAY).unwrap();
    let der = bundle::certificates(ca.cert_pem().as_bytes())
        .unwrap()
        .remove(0);
    let pem = bundle::to_pem(&der);
    assert!(pem.lines().all(|l| l.len() <= 64));
    assert_eq!(bundle::certificates(pem.as_bytes()).unwrap(), [der]);
}

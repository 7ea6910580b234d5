//! Property tests: any Service/namespace input either gives a certificate that verifies
//! for all its names, or a clear error naming the field; never a panic.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns may unwrap"
)]

use std::sync::OnceLock;
use std::time::Duration;

use holysheep_certs::{Ca, CertError, generate_ca, serving_dns_names};
use proptest::prelude::*;
use time::OffsetDateTime;

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| generate_ca("props-ca", Duration::from_secs(86_400)).unwrap())
}

/// DNS-1123 labels, the names Kubernetes accepts for Services and namespaces.
fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn valid_names_give_certificates_that_verify(service in label(), namespace in label()) {
        let serving = ca().issue_serving(&service, &namespace, Duration::from_secs(3600)).unwrap();
        prop_assert_eq!(serving.dns_names()[0].clone(), format!("{service}.{namespace}.svc"));
        ca().verify_serving(&serving, &service, &namespace, OffsetDateTime::now_utc()).unwrap();
    }

    #[test]
    fn any_input_is_a_result_never_a_panic(service in any::<String>(), namespace in "\\PC{0,70}") {
        match serving_dns_names(&service, &namespace) {
            Ok(names) => prop_assert_eq!(names.len(), 4),
            Err(CertError::InvalidName { field, .. }) => {
                prop_assert!(field == "service" || field == "namespace");
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }
}

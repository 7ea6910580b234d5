//! The CA file on top of the base roots: loaded, refused, missing, reloaded on a watch event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

/// A fresh self-signed certificate for `localhost`, as PEM.
fn cert_pem() -> String {
    rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .unwrap()
        .cert
        .pem()
}

fn trust(ca_file: Option<PathBuf>) -> Trust {
    Trust::new(RootCertStore::empty(), RootsSource::Bundled, ca_file).unwrap()
}

fn status(t: &Trust) -> CaStatus {
    t.ca_status().1
}

/// Runs `f` under a JSON log subscriber; returns the `message` and `error` of each
/// warning line it wrote.
fn warnings(f: impl FnOnce()) -> Vec<(String, String)> {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let sink = buf.clone();
    let filter = tracing_subscriber::EnvFilter::new("warn");
    let subscriber = crate::logging::subscriber(filter, move || sink.clone());
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let field = |name: &str| v["fields"][name].as_str().unwrap_or("").to_owned();
            (field("message"), field("error"))
        })
        .collect()
}

#[test]
fn no_ca_file_is_unset() {
    assert_eq!(status(&trust(None)), CaStatus::Unset);
}

#[test]
fn every_certificate_of_the_bundle_is_trusted_in_addition() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ca.crt");
    std::fs::write(&file, format!("{}\n{}", cert_pem(), cert_pem())).unwrap();
    let t = trust(Some(file));
    assert_eq!(status(&t), CaStatus::Loaded(2));
}

#[test]
fn bad_versions_keep_the_previous_roots_and_a_good_one_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ca.crt");
    std::fs::write(&file, cert_pem()).unwrap();
    let t = trust(Some(file.clone()));
    assert_eq!(status(&t), CaStatus::Loaded(1));
    let first = t.current();
    let key_only = rcgen::KeyPair::generate().unwrap().serialize_pem();
    for bad in [
        "not pem at all".to_owned(),
        String::new(),
        key_only,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_owned(),
    ] {
        std::fs::write(&file, &bad).unwrap();
        t.check();
        assert_eq!(status(&t), CaStatus::Loaded(1), "{bad:?}");
        assert!(Arc::ptr_eq(&first, &t.current()), "{bad:?}");
    }
    std::fs::remove_file(&file).unwrap();
    t.check();
    assert!(
        Arc::ptr_eq(&first, &t.current()),
        "a briefly missing file keeps the roots"
    );
    std::fs::write(&file, format!("{}{}", cert_pem(), cert_pem())).unwrap();
    t.check();
    assert_eq!(status(&t), CaStatus::Loaded(2));
    assert!(!Arc::ptr_eq(&first, &t.current()));
}

#[test]
fn a_missing_file_is_not_fatal_and_is_picked_up_when_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ca.crt");
    let logged = warnings(|| {
        let t = trust(Some(file.clone()));
        assert_eq!(status(&t), CaStatus::Missing);
        for _ in 0..50 {
            t.check();
        }
        std::fs::write(&file, cert_pem()).unwrap();
        t.check();
        assert_eq!(status(&t), CaStatus::Loaded(1));
    });
    assert_eq!(logged.len(), 1, "warned once: {logged:?}");
    assert!(logged[0].0.contains("--upstream-ca-file"), "{logged:?}");
}

#[test]
fn a_file_that_stays_bad_is_logged_once_per_version() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ca.crt");
    std::fs::write(&file, "garbage one").unwrap();
    let logged = warnings(|| {
        let t = trust(Some(file.clone()));
        for _ in 0..50 {
            t.check();
        }
        std::fs::write(&file, "garbage two").unwrap();
        for _ in 0..50 {
            t.check();
        }
    });
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert!(
        logged
            .iter()
            .all(|(m, e)| m.contains("refused") && e.contains("CERTIFICATE")),
        "{logged:?}"
    );
}

#[tokio::test]
async fn the_watcher_takes_a_configmap_data_swap() {
    let dir = tempfile::tempdir().unwrap();
    // The kubelet's layout: ca.crt -> ..data/ca.crt, ..data -> ..v1.
    let v1 = dir.path().join("..v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("ca.crt"), cert_pem()).unwrap();
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/ca.crt", dir.path().join("ca.crt")).unwrap();
    let t = Arc::new(trust(Some(dir.path().join("ca.crt"))));
    assert_eq!(status(&t), CaStatus::Loaded(1));
    let options = ReloadOptions {
        // An hour-long safety net: only the directory watch can make this pass.
        poll_interval: Duration::from_secs(3600),
        settle: Duration::from_millis(20),
    };
    let watcher = t.spawn_watcher(options).unwrap();
    let applied = t.wait_applied(0).await;

    let v2 = dir.path().join("..v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("ca.crt"), format!("{}{}", cert_pem(), cert_pem())).unwrap();
    let tmp = dir.path().join("..data_tmp");
    std::os::unix::fs::symlink("..v2", &tmp).unwrap();
    std::fs::rename(&tmp, dir.path().join("..data")).unwrap();

    tokio::time::timeout(Duration::from_secs(10), t.wait_applied(applied))
        .await
        .unwrap();
    assert_eq!(status(&t), CaStatus::Loaded(2));
    watcher.abort();
}

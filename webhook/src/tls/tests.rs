//! Unit tests of `tls`.

use super::*;

fn write_pair(dir: &Path, service: &str) -> TlsFiles {
    let ca = holysheep_certs::generate_ca("test-ca", Duration::from_secs(3600)).unwrap();
    let serving = ca
        .issue_serving(service, "ns", Duration::from_secs(3600))
        .unwrap();
    let files = TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    std::fs::write(&files.cert, serving.cert_pem()).unwrap();
    std::fs::write(&files.key, serving.key_pem()).unwrap();
    files
}

#[test]
fn loads_then_reloads_only_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_pair(dir.path(), "a");
    let tls = ReloadingTls::load(files.clone(), None).unwrap();
    let first = tls.current_leaf().unwrap();
    assert!(!tls.reload().unwrap(), "unchanged files are not a reload");
    write_pair(dir.path(), "b");
    assert!(tls.reload().unwrap());
    assert_ne!(tls.current_leaf().unwrap(), first);
    assert_eq!(
        *tls.subscribe().borrow(),
        ReloadStatus {
            successes: 1,
            failures: 0
        }
    );
}

#[test]
fn a_bad_key_keeps_the_old_certificate_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_pair(dir.path(), "a");
    let tls = ReloadingTls::load(files.clone(), None).unwrap();
    let before = tls.current_leaf().unwrap();
    std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\ngarbage").unwrap();
    let err = tls.reload().unwrap_err();
    assert!(err.to_string().contains("tls.key"), "{err}");
    assert_eq!(tls.current_leaf().unwrap(), before);
    // The same bad bytes are not reported again on the next check.
    assert!(!tls.reload().unwrap());
    assert_eq!(tls.subscribe().borrow().failures, 1);
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_pair(dir.path(), "a");
    let other = tempfile::tempdir().unwrap();
    let other_files = write_pair(other.path(), "b");
    std::fs::copy(&other_files.key, &files.key).unwrap();
    let err = ReloadingTls::load(files, None).unwrap_err();
    assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
}

#[test]
fn empty_or_missing_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    let err = ReloadingTls::load(files.clone(), None).unwrap_err();
    assert!(
        err.to_string().contains("failed to read certificate file"),
        "{err}"
    );
    std::fs::write(&files.cert, "").unwrap();
    std::fs::write(&files.key, "").unwrap();
    let err = ReloadingTls::load(files, None).unwrap_err();
    assert!(err.to_string().contains("no BEGIN CERTIFICATE"), "{err}");
}

#[test]
fn watch_dirs_dedups_and_handles_bare_names() {
    let files = TlsFiles {
        cert: PathBuf::from("tls.crt"),
        key: PathBuf::from("/certs/tls.key"),
    };
    let expected: BTreeSet<PathBuf> = [PathBuf::from("."), PathBuf::from("/certs")].into();
    assert_eq!(watch_dirs(&files), expected);
    let same_dir = TlsFiles {
        cert: PathBuf::from("/certs/tls.crt"),
        key: PathBuf::from("/certs/tls.key"),
    };
    assert_eq!(watch_dirs(&same_dir).len(), 1);
}

#[tokio::test]
async fn the_periodic_check_reloads_without_a_watch() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_pair(dir.path(), "a");
    let tls = ReloadingTls::load(files, None).unwrap();
    let first = tls.current_leaf().unwrap();
    // A closed event channel is what a failed directory watch leaves behind.
    let (tx, rx) = mpsc::unbounded_channel();
    drop(tx);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tls.spawn_loop(None, rx, Duration::from_secs(1), async move {
        let _ = stop_rx.await;
    });
    write_pair(dir.path(), "b");
    let mut status = tls.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.successes >= 1),
    )
    .await
    .expect("the periodic check never reloaded")
    .unwrap();
    assert_ne!(tls.current_leaf().unwrap(), first);
    drop(stop_tx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

//! Tests of the key store (keys.rs) on real files in a temporary directory.

use std::sync::Mutex;

use super::*;

fn source(file: PathBuf, env: Option<&str>) -> KeySource {
    KeySource {
        file,
        env_key: env.map(SecretString::from),
    }
}

#[test]
fn file_is_trimmed_and_wins_over_env() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    std::fs::write(&file, "  sk-file\n").unwrap();
    let store = KeyStore::load(source(file, Some("sk-env")));
    assert_eq!(store.current().unwrap().authorization(), "Bearer sk-file");
    assert!(store.is_loaded());
    assert_eq!(store.changes(), 1);
}

#[test]
fn env_is_used_when_the_file_is_absent() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::load(source(dir.path().join("nope"), Some("sk-env")));
    assert_eq!(store.current().unwrap().authorization(), "Bearer sk-env");
}

#[test]
fn no_key_anywhere_is_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    assert!(!KeyStore::load(source(file.clone(), None)).is_loaded());
    std::fs::write(&file, " \n").unwrap();
    assert!(!KeyStore::load(source(file, Some(""))).is_loaded());
}

#[test]
fn bad_or_missing_file_keeps_the_previous_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    std::fs::write(&file, "sk-1").unwrap();
    let store = KeyStore::load(source(file.clone(), None));
    std::fs::write(&file, "").unwrap();
    assert!(!store.reload());
    std::fs::write(&file, "sk\u{1}bad").unwrap();
    assert!(!store.reload());
    std::fs::remove_file(&file).unwrap();
    assert!(!store.reload());
    assert_eq!(store.current().unwrap().authorization(), "Bearer sk-1");
    std::fs::write(&file, "sk-2").unwrap();
    assert!(store.reload());
    assert_eq!(store.current().unwrap().authorization(), "Bearer sk-2");
    assert_eq!(store.changes(), 2);
}

#[test]
fn a_bad_file_counts_one_failure_per_streak_and_keeps_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    std::fs::write(&file, "sk-1").unwrap();
    let store = KeyStore::load(source(file.clone(), None));
    assert_eq!(store.failures(), 0);

    // A bad rotation, re-read by several watch events and periodic re-checks.
    std::fs::write(&file, "").unwrap();
    for _ in 0..3 {
        assert!(!store.reload());
    }
    // Still bad, in another way: the same streak, not a new failure.
    std::fs::write(&file, "sk\u{1}bad").unwrap();
    assert!(!store.reload());
    assert_eq!(store.failures(), 1, "a file stuck bad counts once");
    assert_eq!(store.current().unwrap().authorization(), "Bearer sk-1");
    assert_eq!(store.changes(), 1);

    // A good key ends the streak; a later bad rotation counts again.
    std::fs::write(&file, "sk-2").unwrap();
    assert!(store.reload());
    std::fs::write(&file, " \n").unwrap();
    assert!(!store.reload());
    assert!(!store.reload());
    assert_eq!(store.failures(), 2);
    assert_eq!(store.current().unwrap().authorization(), "Bearer sk-2");
}

#[test]
fn re_reading_the_same_good_key_also_ends_a_failure_streak() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    std::fs::write(&file, "sk-1").unwrap();
    let store = KeyStore::load(source(file.clone(), None));
    std::fs::write(&file, "").unwrap();
    store.reload();
    // The Secret is put back to the very key in force: no change, but good again.
    std::fs::write(&file, "sk-1").unwrap();
    assert!(!store.reload());
    std::fs::write(&file, "").unwrap();
    store.reload();
    assert_eq!(store.failures(), 2);
    assert_eq!(store.changes(), 1);
}

#[test]
fn an_unreadable_key_file_is_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    std::fs::write(&file, "sk-1").unwrap();
    let store = KeyStore::load(source(file.clone(), None));
    // A directory in place of the file: it exists but cannot be read as text
    // (works as root too, unlike a 0000 mode).
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    assert!(!store.reload());
    assert_eq!(store.failures(), 1);
    assert_eq!(store.current().unwrap().authorization(), "Bearer sk-1");
}

#[test]
fn an_absent_file_is_never_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    // Absent with the env fallback, at start and on re-checks.
    let with_env = KeyStore::load(source(file.clone(), Some("sk-env")));
    assert!(!with_env.reload());
    assert_eq!(with_env.failures(), 0);
    // Absent with no env key at all: not loaded, but nothing bad was provided.
    let without = KeyStore::load(source(file.clone(), None));
    assert!(!without.reload());
    assert_eq!(without.failures(), 0);
    // A good file that then disappears (kubelet swap, env fallback) is not one either.
    std::fs::write(&file, "sk-file").unwrap();
    assert!(with_env.reload());
    std::fs::remove_file(&file).unwrap();
    assert!(with_env.reload(), "back to the env key");
    assert_eq!(with_env.failures(), 0);
}

#[test]
fn a_bad_file_at_start_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    std::fs::write(&file, "\n").unwrap();
    let store = KeyStore::load(source(file.clone(), Some("sk-env")));
    assert!(
        !store.is_loaded(),
        "the env key only stands in for an absent file"
    );
    assert!(!store.reload());
    assert_eq!(store.failures(), 1);
    std::fs::write(&file, "sk-ok").unwrap();
    assert!(store.reload());
    assert_eq!(store.failures(), 1);
}

#[tokio::test]
async fn wait_loaded_resolves_when_a_key_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    let store = KeyStore::load(source(file.clone(), None));
    let waiter = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.wait_loaded().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "no key yet");
    std::fs::write(&file, "sk-now").unwrap();
    assert!(store.reload());
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    // Already loaded: resolves at once.
    store.wait_loaded().await;
}

#[test]
fn debug_never_shows_the_key() {
    let key = ApiKey::new("sk-secret-value").unwrap();
    let shown = format!("{key:?} {:?}", key.authorization());
    assert!(!shown.contains("sk-secret-value"), "{shown}");
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::load(source(dir.path().join("k"), Some("sk-secret-value")));
    assert!(!format!("{store:?}").contains("sk-secret-value"));
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
fn a_key_file_that_stays_bad_is_logged_once() {
    for (case, content) in [("empty", ""), ("control character", "sk\u{1}bad")] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-key");
        std::fs::write(&file, content).unwrap();
        let logged = warnings(|| {
            let store = KeyStore::load(source(file.clone(), None));
            // What the re-checks and watch events of a long idle stretch do.
            for _ in 0..100 {
                assert!(!store.reload());
            }
            assert_eq!(store.failures(), 1, "{case}");
        });
        let refusals: Vec<_> = logged
            .iter()
            .filter(|(message, _)| message == "key file refused")
            .collect();
        assert_eq!(refusals.len(), 1, "{case}: {logged:?}");
        assert!(
            refusals[0].1.contains("--api-key-file"),
            "{case}: {logged:?}"
        );
    }
}

#[test]
fn each_new_refusal_is_logged_once_and_the_counter_stays_per_streak() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    std::fs::write(&file, "sk-1").unwrap();
    let store = KeyStore::load(source(file.clone(), None));
    let step = |content: Option<&str>| {
        match content {
            Some(text) => std::fs::write(&file, text).unwrap(),
            None => {
                // A directory in place of the file: it exists but cannot be read.
                std::fs::remove_file(&file).unwrap();
                std::fs::create_dir(&file).unwrap();
            }
        }
        let logged = warnings(|| {
            store.reload();
            store.reload();
        });
        if content.is_none() {
            std::fs::remove_dir(&file).unwrap();
        }
        logged.len()
    };
    assert_eq!(step(Some("")), 1, "a new bad content");
    assert_eq!(step(Some("")), 0, "the same bad content again");
    assert_eq!(step(Some("sk\u{1}one")), 1, "another bad content");
    assert_eq!(step(Some("sk\u{1}two")), 1, "yet another");
    assert_eq!(step(None), 1, "a read error");
    assert_eq!(store.failures(), 1, "one streak: counted once");
    assert_eq!(step(Some("sk-1")), 0, "good again");
    assert_eq!(step(Some("")), 1, "bad again after a good key");
    assert_eq!(store.failures(), 2);
    assert_eq!(store.current().unwrap().authorization(), "Bearer sk-1");
}

#[test]
fn refusal_messages_never_show_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    std::fs::write(&file, "sk-secret-value\u{7}").unwrap();
    let logged = warnings(|| {
        KeyStore::load(source(file.clone(), None));
    });
    assert!(!logged.is_empty());
    for (message, error) in &logged {
        assert!(!message.contains("sk-secret"), "{message}");
        assert!(!error.contains("sk-secret"), "{error}");
    }
    // Not UTF-8 at all: refused as invalid, not as a read error.
    std::fs::write(&file, b"sk-\xff").unwrap();
    let logged = warnings(|| {
        KeyStore::load(source(file.clone(), None));
    });
    assert!(
        logged.iter().any(|(_, e)| e.contains("not allowed")),
        "{logged:?}"
    );
}

#[tokio::test]
async fn the_watcher_reads_a_key_rewritten_in_place_once_whole() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    std::fs::write(&file, "sk-1").unwrap();
    let store = KeyStore::load(source(file.clone(), None));
    let mut changes = store.subscribe();
    // An hour-long safety net: only the directory watch can make this pass.
    let watcher = store.spawn_watcher(Duration::from_secs(3600));
    // Truncate then write then close, as `echo sk-2 > api-key` does: the watcher waits
    // for the burst to settle, so it never sees the empty file in between.
    std::fs::write(&file, "sk-2\n").unwrap();
    tokio::time::timeout(Duration::from_secs(5), changes.wait_for(|n| *n == 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.current().unwrap().authorization(), "Bearer sk-2");
    assert_eq!(store.failures(), 0);
    watcher.abort();
}

//! Tests of the config watcher (reload.rs) on real files in a temporary directory.

use super::*;
use notify::event::{AccessKind, AccessMode};
use prometheus_client::registry::Registry;
use std::time::Instant;

const OPTIONS: ReloadOptions = ReloadOptions {
    poll_interval: Duration::from_secs(3600),
    settle: Duration::from_millis(20),
};

/// Replaces `path` atomically, as editors and kubelet do.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `cond` until it holds, for at most 5 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    live: Arc<ArcSwap<Config>>,
    metrics: Metrics,
}

fn fixture(initial: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, initial).unwrap();
    let live = Arc::new(ArcSwap::from_pointee(config::load_file(&path).unwrap()));
    let metrics = Metrics::register(&mut Registry::default());
    Fixture {
        _dir: dir,
        path,
        live,
        metrics,
    }
}

fn attempts(live: &ArcSwap<Config>) -> u32 {
    live.load().retry.max_attempts
}

#[tokio::test]
async fn a_valid_change_is_applied() {
    let f = fixture("retry:\n  max_attempts: 2\n");
    let _reloader = ConfigReloader::spawn(
        f.path.clone(),
        f.live.clone(),
        count_reloads(f.metrics.clone()),
        OPTIONS,
    );
    write_atomic(&f.path, "retry:\n  max_attempts: 5\n");
    eventually("a successful reload", || {
        f.metrics.config_reloads(ReloadResult::Success) == 1
    })
    .await;
    assert_eq!(attempts(&f.live), 5);
    assert_eq!(f.metrics.config_reloads(ReloadResult::Failure), 0);
}

#[tokio::test]
async fn a_bad_file_keeps_the_last_good_config_then_a_fix_applies() {
    let f = fixture("retry:\n  max_attempts: 2\n");
    let _reloader = ConfigReloader::spawn(
        f.path.clone(),
        f.live.clone(),
        count_reloads(f.metrics.clone()),
        OPTIONS,
    );
    for bad in [
        "retry:\n  max_attemps: 4\n",
        "retry: [unclosed\n",
        "retry:\n  max_attempts: 0\n",
    ] {
        let before = f.metrics.config_reloads(ReloadResult::Failure);
        write_atomic(&f.path, bad);
        eventually("a refused reload", || {
            f.metrics.config_reloads(ReloadResult::Failure) == before + 1
        })
        .await;
        assert_eq!(attempts(&f.live), 2, "old config kept after {bad:?}");
    }
    write_atomic(&f.path, "retry:\n  max_attempts: 4\n");
    eventually("the fix applied", || attempts(&f.live) == 4).await;
    assert_eq!(f.metrics.config_reloads(ReloadResult::Success), 1);
}

#[cfg(unix)]
#[tokio::test]
async fn a_configmap_symlink_swap_is_seen() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The kubelet layout: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>.
    std::fs::create_dir(root.join("..v1")).unwrap();
    std::fs::write(root.join("..v1/config.yaml"), "retry:\n  max_attempts: 2\n").unwrap();
    symlink("..v1", root.join("..data")).unwrap();
    symlink("..data/config.yaml", root.join("config.yaml")).unwrap();
    let path = root.join("config.yaml");
    let live = Arc::new(ArcSwap::from_pointee(config::load_file(&path).unwrap()));
    let metrics = Metrics::register(&mut Registry::default());
    let _reloader =
        ConfigReloader::spawn(path, live.clone(), count_reloads(metrics.clone()), OPTIONS);

    std::fs::create_dir(root.join("..v2")).unwrap();
    std::fs::write(root.join("..v2/config.yaml"), "retry:\n  max_attempts: 7\n").unwrap();
    symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..v1")).unwrap();

    eventually("the swapped config", || attempts(&live) == 7).await;
    assert_eq!(metrics.config_reloads(ReloadResult::Failure), 0);
}

#[tokio::test]
async fn periodic_check_catches_changes_without_events() {
    let f = fixture("retry:\n  max_attempts: 2\n");
    let mut reloader = Reloader {
        baseline: std::fs::read(&f.path).ok(),
        path: f.path.clone(),
        live: f.live.clone(),
        on_reload: count_reloads(f.metrics.clone()),
    };
    reloader.check();
    assert_eq!(
        f.metrics.config_reloads(ReloadResult::Success),
        0,
        "same content is no reload"
    );
    std::fs::write(&f.path, "retry:\n  max_attempts: 3\n").unwrap();
    reloader.check();
    reloader.check();
    assert_eq!(attempts(&f.live), 3);
    assert_eq!(
        f.metrics.config_reloads(ReloadResult::Success),
        1,
        "each version counts once"
    );

    // And the spawned task polls by itself.
    let options = ReloadOptions {
        poll_interval: Duration::from_millis(20),
        ..OPTIONS
    };
    let _reloader = ConfigReloader::spawn(
        f.path.clone(),
        f.live.clone(),
        count_reloads(f.metrics.clone()),
        options,
    );
    std::fs::write(&f.path, "retry:\n  max_attempts: 6\n").unwrap();
    eventually("the polled change", || attempts(&f.live) == 6).await;
}

#[tokio::test]
async fn a_vanished_file_keeps_the_config_and_counts_once() {
    let f = fixture("retry:\n  max_attempts: 2\n");
    let mut reloader = Reloader {
        baseline: std::fs::read(&f.path).ok(),
        path: f.path.clone(),
        live: f.live.clone(),
        on_reload: count_reloads(f.metrics.clone()),
    };
    std::fs::remove_file(&f.path).unwrap();
    reloader.check();
    reloader.check();
    assert_eq!(f.metrics.config_reloads(ReloadResult::Failure), 1);
    assert_eq!(attempts(&f.live), 2);
}

#[tokio::test]
async fn dropping_the_reloader_stops_it() {
    let f = fixture("retry:\n  max_attempts: 2\n");
    let reloader = ConfigReloader::spawn(
        f.path.clone(),
        f.live.clone(),
        count_reloads(f.metrics.clone()),
        OPTIONS,
    );
    assert_eq!(
        Arc::strong_count(&f.live),
        2,
        "the task holds the live config"
    );
    drop(reloader);
    // The aborted task releases what it held, its watcher included.
    eventually("the task to end", || Arc::strong_count(&f.live) == 1).await;
}

#[test]
fn only_events_that_can_change_content_wake_a_watch() {
    use notify::event::{CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind, RenameMode};
    let cases = [
        // What reads raise: never.
        (
            "open",
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            false,
        ),
        ("read", EventKind::Access(AccessKind::Read), false),
        (
            "close without write",
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            false,
        ),
        ("other access", EventKind::Access(AccessKind::Any), false),
        // What writers, the kubelet and editors raise: always.
        (
            "close after write",
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            true,
        ),
        ("create", EventKind::Create(CreateKind::File), true),
        ("remove", EventKind::Remove(RemoveKind::File), true),
        (
            "write",
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            true,
        ),
        (
            "chmod",
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            true,
        ),
        (
            "rename from",
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            true,
        ),
        (
            "rename to",
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            true,
        ),
        ("lost events", EventKind::Other, true),
        ("unknown", EventKind::Any, true),
    ];
    for (case, kind, wakes) in cases {
        assert_eq!(changes_content(&kind), wakes, "{case}");
    }
}

#[test]
fn reading_the_watched_file_raises_no_content_event_and_writing_does() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    let sentinel = dir.path().join("sentinel");
    std::fs::write(&file, "sk-1").unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(PathBuf, EventKind)>();
    let _watcher = watch_dir(&file, "test", move |event| {
        for path in &event.paths {
            let _ = tx.send((path.clone(), event.kind));
        }
    })
    .unwrap();

    // What a watcher's own re-read does, many times over.
    for _ in 0..20 {
        std::fs::read(&file).unwrap();
    }
    std::fs::write(&file, "sk-2").unwrap();
    // One inotify queue keeps order: once the sentinel shows, all earlier events have.
    std::fs::write(&sentinel, "").unwrap();
    let mut on_file = Vec::new();
    loop {
        let (path, kind) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        if path == sentinel {
            break;
        }
        if path == file {
            on_file.push(kind);
        }
    }
    let (woke, ignored): (Vec<EventKind>, Vec<EventKind>) =
        on_file.into_iter().partition(changes_content);
    // The kernel merges identical queued events, so fewer than 20 may show; but some
    // must, and a filter that let reads through would leave none here.
    assert!(!ignored.is_empty(), "the reads were seen by the watch");
    assert!(ignored.iter().all(|k| matches!(k, EventKind::Access(_))));
    let read_like = |k: &EventKind| {
        matches!(
            k,
            EventKind::Access(
                AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
            )
        )
    };
    assert!(!woke.iter().any(read_like), "{woke:?}");
    assert!(
        woke.iter().any(|k| matches!(k, EventKind::Modify(_))),
        "{woke:?}"
    );
    assert!(
        woke.contains(&EventKind::Access(AccessKind::Close(AccessMode::Write))),
        "{woke:?}"
    );
}

#[tokio::test]
async fn a_write_in_place_is_applied_once() {
    let f = fixture("retry:\n  max_attempts: 2\n");
    let _reloader = ConfigReloader::spawn(
        f.path.clone(),
        f.live.clone(),
        count_reloads(f.metrics.clone()),
        OPTIONS,
    );
    // Truncate, write, close: not atomic, so the watcher must not read it half-done.
    std::fs::write(&f.path, "retry:\n  max_attempts: 8\n").unwrap();
    eventually("the rewritten config", || attempts(&f.live) == 8).await;
    assert_eq!(f.metrics.config_reloads(ReloadResult::Failure), 0);
}

#[tokio::test]
async fn a_config_whose_directory_appears_later_is_polled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-yet/config.yaml");
    let live = Arc::new(ArcSwap::from_pointee(Config::default()));
    let metrics = Metrics::register(&mut Registry::default());
    let options = ReloadOptions {
        poll_interval: Duration::from_millis(20),
        ..OPTIONS
    };
    let _reloader = ConfigReloader::spawn(
        path.clone(),
        live.clone(),
        count_reloads(metrics.clone()),
        options,
    );
    std::fs::create_dir(dir.path().join("not-yet")).unwrap();
    std::fs::write(&path, "retry:\n  max_attempts: 9\n").unwrap();
    eventually("the polled config", || attempts(&live) == 9).await;
}

#[tokio::test]
async fn a_zero_poll_interval_does_not_panic() {
    let f = fixture("");
    let options = ReloadOptions {
        poll_interval: Duration::ZERO,
        ..OPTIONS
    };
    let mut watch = DirWatch::start(&f.path, "test", options);
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .unwrap();
}

/// Runs `f` under a JSON log subscriber; returns how many warning lines it wrote.
fn count_warnings(f: impl FnOnce()) -> usize {
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
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
    text.lines().count()
}

#[test]
fn a_bad_config_is_logged_once_per_version() {
    let f = fixture("retry:\n  max_attempts: 2\n");
    let mut reloader = Reloader {
        baseline: std::fs::read(&f.path).ok(),
        path: f.path.clone(),
        live: f.live.clone(),
        on_reload: count_reloads(f.metrics.clone()),
    };
    let mut checks = |content: Option<&str>| {
        match content {
            Some(text) => std::fs::write(&f.path, text).unwrap(),
            None => std::fs::remove_file(&f.path).unwrap(),
        }
        count_warnings(|| {
            for _ in 0..10 {
                reloader.check();
            }
        })
    };
    assert_eq!(
        checks(Some("retry:\n  max_attemps: 4\n")),
        1,
        "a bad version"
    );
    assert_eq!(
        checks(Some("retry:\n  max_attemps: 4\n")),
        0,
        "the same again"
    );
    assert_eq!(checks(Some("retry: \u{1}\n")), 1, "another bad version");
    assert_eq!(checks(None), 1, "the file gone");
    assert_eq!(f.metrics.config_reloads(ReloadResult::Failure), 3);
    assert_eq!(attempts(&f.live), 2);
}

/// An optional ConfigMap that is absent: the sidecar starts on the defaults, and the
/// file is applied when it appears (its directory exists, as the kubelet makes it).
#[tokio::test]
async fn a_file_absent_at_start_is_applied_when_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let live = Arc::new(ArcSwap::from_pointee(config::load_startup(&path).unwrap()));
    let metrics = Metrics::register(&mut Registry::default());
    let _reloader = ConfigReloader::spawn(
        path.clone(),
        live.clone(),
        count_reloads(metrics.clone()),
        OPTIONS,
    );
    assert_eq!(*live.load_full(), Config::default());
    write_atomic(&path, "retry:\n  max_attempts: 4\n");
    eventually("the new file applied", || {
        metrics.config_reloads(ReloadResult::Success) == 1
    })
    .await;
    assert_eq!(attempts(&live), 4);
    assert_eq!(metrics.config_reloads(ReloadResult::Failure), 0);
}

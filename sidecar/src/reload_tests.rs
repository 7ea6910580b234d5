//! Tests of the config watcher (reload.rs) on real files in a temporary directory.

use super::*;
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

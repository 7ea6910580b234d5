//! Reads the raw files one run of `scripts/bench-proxy.sh` leaves in its output directory
//! into plain values. Knows the file layout, nothing about what the figures mean.
//!
//! Layout (written by the script):
//! - `meta.env`: `key=value` lines (machine, tools, durations, pinning, `clk_tck`);
//! - `oha/<target>-<scenario>-r<rep>.json`: oha's `--output-format json`;
//! - `cpu.tsv`: `target scenario rep proxy_ticks upstream_ticks` (utime+stime deltas);
//! - `cpu_ns.tsv`: the same in nanoseconds on CPU (schedstat), for the runs too light for
//!   clock ticks (50 req/s);
//! - `ttfb/<target>-r<rep>.json`: the `ttfb-probe` output line;
//! - `rss.tsv`: `target phase rep vmrss_kib vmhwm_kib` (phase `idle` or `load`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a run directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("failed to read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file did not have the expected shape.
    #[error("failed to parse {path}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A TSV line or file name did not have the expected shape.
    #[error("{path}: malformed entry {entry:?} (expected {expected})")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The offending line or name.
        entry: String,
        /// What was expected there.
        expected: &'static str,
    },
}

/// One oha run, reduced to what the report uses.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadRun {
    /// Requests per second over the run (all answers, as oha reports it).
    pub rps: f64,
    /// Median latency, seconds.
    pub p50: f64,
    /// 99th percentile latency, seconds.
    pub p99: f64,
    /// Answers with status 200.
    pub ok: u64,
    /// Answers with another status, plus transport errors other than the deadline cut.
    pub failed: u64,
}

/// Key of one measurement: target (`direct`, `nginx`, `sidecar`), scenario, repetition.
pub type Key = (String, String, u32);

/// Everything one run left behind.
#[derive(Debug, Default)]
pub struct RunData {
    /// `meta.env` entries.
    pub meta: BTreeMap<String, String>,
    /// oha runs by (target, scenario, rep).
    pub load: BTreeMap<Key, LoadRun>,
    /// (proxy ticks, upstream ticks) by (target, scenario, rep).
    pub cpu: BTreeMap<Key, (u64, u64)>,
    /// (proxy ns, upstream ns) on CPU by (target, scenario, rep), from schedstat.
    pub cpu_ns: BTreeMap<Key, (u64, u64)>,
    /// (ttfb p50 µs, ttfb p99 µs) by (target, "stream", rep).
    pub ttfb: BTreeMap<Key, (f64, f64)>,
    /// (VmRSS KiB, VmHWM KiB) by (target, phase, rep).
    pub rss: BTreeMap<Key, (u64, u64)>,
}

#[derive(Deserialize)]
struct OhaJson {
    summary: OhaSummary,
    #[serde(rename = "latencyPercentiles")]
    latency: OhaPercentiles,
    #[serde(rename = "statusCodeDistribution", default)]
    statuses: BTreeMap<String, u64>,
    #[serde(rename = "errorDistribution", default)]
    errors: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct OhaSummary {
    #[serde(rename = "requestsPerSec")]
    rps: f64,
}

#[derive(Deserialize)]
struct OhaPercentiles {
    p50: Option<f64>,
    p99: Option<f64>,
}

#[derive(Deserialize)]
struct TtfbJson {
    ttfb_p50_us: f64,
    ttfb_p99_us: f64,
}

/// Parses oha's JSON output. The deadline cut ("aborted due to deadline") is not a failure:
/// it is how every fixed-duration run ends.
pub fn parse_oha(text: &str) -> Result<LoadRun, serde_json::Error> {
    let oha: OhaJson = serde_json::from_str(text)?;
    let ok = oha.statuses.get("200").copied().unwrap_or(0);
    let other: u64 = oha
        .statuses
        .iter()
        .filter(|(code, _)| code.as_str() != "200")
        .map(|(_, n)| n)
        .sum();
    let errors: u64 = oha
        .errors
        .iter()
        .filter(|(what, _)| !what.contains("deadline"))
        .map(|(_, n)| n)
        .sum();
    Ok(LoadRun {
        rps: oha.summary.rps,
        p50: oha.latency.p50.unwrap_or(f64::NAN),
        p99: oha.latency.p99.unwrap_or(f64::NAN),
        ok,
        failed: other + errors,
    })
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Splits `<target>-<scenario>-r<rep>` (or `<target>-r<rep>` with `scenario` given).
fn parse_name(stem: &str, default_scenario: Option<&str>) -> Option<Key> {
    let (head, rep) = stem.rsplit_once("-r")?;
    let rep: u32 = rep.parse().ok()?;
    match default_scenario {
        Some(scenario) => Some((head.to_owned(), scenario.to_owned(), rep)),
        None => {
            // Target names may hold a `-` (`sidecar-tls`); scenario names do not.
            let (target, scenario) = head.rsplit_once('-')?;
            Some((target.to_owned(), scenario.to_owned(), rep))
        }
    }
}

/// JSON files of `dir` as (stem, path), sorted; a missing dir is empty.
fn json_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, LoadError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LoadError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                files.push((stem.to_owned(), path.clone()));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Rows of a whitespace-separated file with `N` columns: key columns then numbers.
fn tsv_rows(path: &Path) -> Result<Vec<Vec<String>>, LoadError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    Ok(read(path)?
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect())
}

/// A whitespace-separated file of `target kind rep a b` lines (a missing file is empty).
fn keyed_pairs(
    path: &Path,
    expected: &'static str,
) -> Result<BTreeMap<Key, (u64, u64)>, LoadError> {
    let mut map = BTreeMap::new();
    for row in tsv_rows(path)? {
        let parsed = match row.as_slice() {
            [t, s, r, a, b] => (|| {
                Some((
                    (t.clone(), s.clone(), r.parse().ok()?),
                    (a.parse().ok()?, b.parse().ok()?),
                ))
            })(),
            _ => None,
        };
        let (key, value) = parsed.ok_or_else(|| malformed(path, &row.join(" "), expected))?;
        map.insert(key, value);
    }
    Ok(map)
}

fn malformed(path: &Path, entry: &str, expected: &'static str) -> LoadError {
    LoadError::Malformed {
        path: path.to_owned(),
        entry: entry.to_owned(),
        expected,
    }
}

/// Reads a whole run directory.
pub fn load(dir: &Path) -> Result<RunData, LoadError> {
    let mut data = RunData::default();
    let meta_path = dir.join("meta.env");
    if meta_path.exists() {
        for line in read(&meta_path)?.lines() {
            if let Some((k, v)) = line.split_once('=') {
                data.meta.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        }
    }
    for (stem, path) in json_files(&dir.join("oha"))? {
        let key = parse_name(&stem, None)
            .ok_or_else(|| malformed(&path, &stem, "<target>-<scenario>-r<rep>"))?;
        let run = parse_oha(&read(&path)?).map_err(|source| LoadError::Json {
            path: path.clone(),
            source,
        })?;
        data.load.insert(key, run);
    }
    for (stem, path) in json_files(&dir.join("ttfb"))? {
        let key = parse_name(&stem, Some("stream"))
            .ok_or_else(|| malformed(&path, &stem, "<target>-r<rep>"))?;
        let t: TtfbJson =
            serde_json::from_str(&read(&path)?).map_err(|source| LoadError::Json {
                path: path.clone(),
                source,
            })?;
        data.ttfb.insert(key, (t.ttfb_p50_us, t.ttfb_p99_us));
    }
    data.cpu = keyed_pairs(
        &dir.join("cpu.tsv"),
        "target scenario rep proxy_ticks upstream_ticks",
    )?;
    data.cpu_ns = keyed_pairs(
        &dir.join("cpu_ns.tsv"),
        "target scenario rep proxy_ns upstream_ns",
    )?;
    data.rss = keyed_pairs(&dir.join("rss.tsv"), "target phase rep vmrss_kib vmhwm_kib")?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oha_json_reduced_and_deadline_aborts_not_failures() {
        let text = r#"{"summary":{"requestsPerSec":1234.5},
            "latencyPercentiles":{"p50":0.001,"p99":0.004},
            "statusCodeDistribution":{"200":1000,"502":3},
            "errorDistribution":{"aborted due to deadline":16,"connection closed":2}}"#;
        let run = parse_oha(text).unwrap();
        assert_eq!(
            run,
            LoadRun {
                rps: 1234.5,
                p50: 0.001,
                p99: 0.004,
                ok: 1000,
                failed: 5
            }
        );
    }

    #[test]
    fn file_names_split_into_keys() {
        assert_eq!(
            parse_name("sidecar-c16-r2", None),
            Some(("sidecar".into(), "c16".into(), 2))
        );
        assert_eq!(
            parse_name("nginx-r3", Some("stream")),
            Some(("nginx".into(), "stream".into(), 3))
        );
        assert_eq!(
            parse_name("sidecar-tls-c16-r2", None),
            Some(("sidecar-tls".into(), "c16".into(), 2))
        );
        assert_eq!(
            parse_name("direct-tls-r1", Some("stream")),
            Some(("direct-tls".into(), "stream".into(), 1))
        );
        assert_eq!(parse_name("garbage", None), None);
    }

    #[test]
    fn run_dir_round_trip() {
        let dir = std::env::temp_dir().join(format!("holysheep-bench-load-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("oha")).unwrap();
        std::fs::create_dir_all(dir.join("ttfb")).unwrap();
        std::fs::write(dir.join("meta.env"), "clk_tck=100\nnproc=2\n").unwrap();
        std::fs::write(
            dir.join("oha/nginx-c16-r1.json"),
            r#"{"summary":{"requestsPerSec":10.0},"latencyPercentiles":{"p50":0.1,"p99":0.2},"statusCodeDistribution":{"200":50}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("ttfb/direct-r1.json"),
            r#"{"ttfb_p50_us":80.5,"ttfb_p99_us":120.0}"#,
        )
        .unwrap();
        std::fs::write(dir.join("cpu.tsv"), "nginx c16 1 120 300\n").unwrap();
        std::fs::write(dir.join("cpu_ns.tsv"), "sidecar q50 2 5000000 700\n").unwrap();
        std::fs::write(dir.join("rss.tsv"), "sidecar idle 1 4096 4100\n").unwrap();
        let data = load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(data.meta["clk_tck"], "100");
        assert_eq!(data.load[&("nginx".into(), "c16".into(), 1)].ok, 50);
        assert_eq!(
            data.ttfb[&("direct".into(), "stream".into(), 1)],
            (80.5, 120.0)
        );
        assert_eq!(data.cpu[&("nginx".into(), "c16".into(), 1)], (120, 300));
        assert_eq!(
            data.cpu_ns[&("sidecar".into(), "q50".into(), 2)],
            (5_000_000, 700)
        );
        assert_eq!(
            data.rss[&("sidecar".into(), "idle".into(), 1)],
            (4096, 4100)
        );
    }

    #[test]
    fn malformed_tsv_names_the_file() {
        let dir = std::env::temp_dir().join(format!("holysheep-bench-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.tsv"), "nginx c16 one 2 3\n").unwrap();
        let err = load(&dir).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.to_string().contains("cpu.tsv"), "{err}");
    }
}

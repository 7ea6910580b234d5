//! The figures of one run: medians over repetitions, per target, of each measurement.
//! Pairwise figures ("added" latency) are differences against the direct run of the same
//! repetition, taken before the median so that slow drift of the machine cancels.
//! Rendering and verdicts live in the parent module.

use super::load::{LoadRun, RunData};
use crate::stats::median;

/// Targets in the order they are shown: the upstream called directly, `relay` (mini-proxy
/// `--mode relay`: tokio copying bytes, no HTTP, the floor of tokio's I/O), nginx, `lean`
/// (mini-proxy `--mode affine`: the least work hyper can do per request), `hyper`
/// (mini-proxy's default pooled mode: bare hyper, the sidecar's HTTP stack without its own
/// work) and the sidecar. The mini-proxy targets run on a current-thread runtime except
/// `hyper`, as the script starts them.
pub const TARGETS: [&str; 6] = ["direct", "relay", "nginx", "lean", "hyper", "sidecar"];

/// Index of each target in a [`Row`].
pub const DIRECT: usize = 0;
/// See [`DIRECT`].
pub const RELAY: usize = 1;
/// See [`DIRECT`].
pub const NGINX: usize = 2;
/// See [`DIRECT`].
pub const LEAN: usize = 3;
/// See [`DIRECT`].
pub const HYPER: usize = 4;
/// See [`DIRECT`].
pub const SIDECAR: usize = 5;

/// Byte-wise string equality usable in a const context.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

// Each index names its target: reordering TARGETS without the indexes fails to compile
// instead of putting one target's figures under another's column.
const _: () = assert!(
    same(TARGETS[DIRECT], "direct")
        && same(TARGETS[RELAY], "relay")
        && same(TARGETS[NGINX], "nginx")
        && same(TARGETS[LEAN], "lean")
        && same(TARGETS[HYPER], "hyper")
        && same(TARGETS[SIDECAR], "sidecar")
);

/// The targets of the HTTPS production path, in the order they are shown: the TLS
/// upstream called directly, nginx with `proxy_pass https://`, the sidecar to the https
/// upstream, and the sidecar tunnelling through tinyproxy with CONNECT.
pub const TLS_TARGETS: [&str; 4] = ["direct-tls", "nginx-tls", "sidecar-tls", "sidecar-proxy"];

/// One table of the report: its targets in column order, the direct call that pairwise
/// figures are taken against, and the columns the ratios compare.
#[derive(Debug)]
pub struct Columns {
    /// Target names, one column each.
    pub targets: &'static [&'static str],
    /// The target called without a proxy (no proxy CPU; the base of "added" figures).
    pub direct: &'static str,
    /// Index of the nginx column.
    pub nginx: usize,
    /// Index of the sidecar column.
    pub sidecar: usize,
    /// Index of the lean-hyper column (the sidecar's stack with nothing on top), where the
    /// table has one.
    pub lean: Option<usize>,
}

/// The plain-HTTP table: [`TARGETS`].
pub const PLAIN: Columns = Columns {
    targets: &TARGETS,
    direct: "direct",
    nginx: NGINX,
    sidecar: SIDECAR,
    lean: Some(LEAN),
};

/// The HTTPS table: [`TLS_TARGETS`]; its ratios compare `sidecar-tls` with `nginx-tls`.
pub const TLS: Columns = Columns {
    targets: &TLS_TARGETS,
    direct: "direct-tls",
    nginx: 1,
    sidecar: 2,
    lean: None,
};

const _: () = assert!(
    same(TLS_TARGETS[0], TLS.direct)
        && same(TLS_TARGETS[TLS.nginx], "nginx-tls")
        && same(TLS_TARGETS[TLS.sidecar], "sidecar-tls")
);

/// A figure per target of a [`Columns`], `None` where the run has no data (or the figure
/// has no meaning, like the proxy CPU of a direct call).
pub type Row = Vec<Option<f64>>;

impl RunData {
    pub(super) fn reps(&self) -> Vec<u32> {
        let mut reps: Vec<u32> = self.load.keys().map(|(_, _, r)| *r).collect();
        reps.extend(self.ttfb.keys().map(|(_, _, r)| *r));
        reps.sort_unstable();
        reps.dedup();
        reps
    }

    fn clk_tck(&self) -> f64 {
        self.meta
            .get("clk_tck")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100.0)
    }

    /// Median over repetitions of `f(target, rep)`, for each target of `cols`.
    fn per_target(&self, cols: &Columns, f: impl Fn(&str, u32) -> Option<f64>) -> Row {
        let reps = self.reps();
        cols.targets
            .iter()
            .map(|t| {
                let values: Vec<f64> = reps.iter().filter_map(|r| f(t, *r)).collect();
                median(&values)
            })
            .collect()
    }

    pub(super) fn load_figure(
        &self,
        cols: &Columns,
        scenario: &str,
        f: impl Fn(&LoadRun) -> f64,
    ) -> Row {
        self.per_target(cols, |t, r| {
            self.load
                .get(&(t.to_owned(), scenario.to_owned(), r))
                .map(&f)
        })
    }

    /// Proxy (or upstream) CPU microseconds per successful request.
    pub(super) fn cpu_per_request(&self, cols: &Columns, scenario: &str, upstream: bool) -> Row {
        let tck = self.clk_tck();
        self.per_target(cols, |t, r| {
            if t == cols.direct && !upstream {
                return None;
            }
            let key = (t.to_owned(), scenario.to_owned(), r);
            let (proxy, up) = self.cpu.get(&key)?;
            let ok = self.load.get(&key)?.ok;
            let ticks = if upstream { *up } else { *proxy };
            (ok > 0).then(|| ticks as f64 / tck * 1e6 / ok as f64)
        })
    }

    /// Proxy CPU microseconds per successful request from schedstat nanoseconds (fine
    /// enough for the light fixed-rate run, where clock ticks are too coarse).
    pub(super) fn cpu_ns_per_request(&self, cols: &Columns, scenario: &str) -> Row {
        self.per_target(cols, |t, r| {
            if t == cols.direct {
                return None;
            }
            let key = (t.to_owned(), scenario.to_owned(), r);
            let (proxy, _) = self.cpu_ns.get(&key)?;
            let ok = self.load.get(&key)?.ok;
            (ok > 0).then(|| *proxy as f64 / 1e3 / ok as f64)
        })
    }

    /// p50 at the fixed rate minus direct's p50 of the same repetition, µs.
    pub(super) fn added_p50_fixed_rate(&self, cols: &Columns) -> Row {
        self.per_target(cols, |t, r| {
            let p50 = |t: &str| {
                self.load
                    .get(&(t.to_owned(), "q50".to_owned(), r))
                    .map(|l| l.p50)
            };
            if t == cols.direct {
                return None;
            }
            Some((p50(t)? - p50(cols.direct)?) * 1e6)
        })
    }

    pub(super) fn ttfb(&self, cols: &Columns, p99: bool) -> Row {
        self.per_target(cols, |t, r| {
            self.ttfb
                .get(&(t.to_owned(), "stream".to_owned(), r))
                .map(|(p50, p99v)| if p99 { *p99v } else { *p50 })
        })
    }

    pub(super) fn ttfb_added(&self, cols: &Columns) -> Row {
        self.per_target(cols, |t, r| {
            let p50 = |t: &str| {
                self.ttfb
                    .get(&(t.to_owned(), "stream".to_owned(), r))
                    .map(|v| v.0)
            };
            if t == cols.direct {
                return None;
            }
            Some(p50(t)? - p50(cols.direct)?)
        })
    }

    /// KiB figure from rss.tsv: `hwm` picks VmHWM, else VmRSS; `max` over reps else median.
    pub(super) fn rss(&self, cols: &Columns, phase: &str, hwm: bool, max: bool) -> Row {
        cols.targets
            .iter()
            .map(|t| {
                let values: Vec<f64> = self
                    .rss
                    .iter()
                    .filter(|((target, p, _), _)| target == *t && p == phase)
                    .map(|(_, (rss, peak))| (if hwm { *peak } else { *rss }) as f64 / 1024.0)
                    .collect();
                if max {
                    values.into_iter().reduce(f64::max)
                } else {
                    median(&values)
                }
            })
            .collect()
    }

    pub(super) fn failures(&self) -> u64 {
        self.load.values().map(|l| l.failed).sum()
    }
}

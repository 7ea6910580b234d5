//! The sidecar image's allocator setting: the Dockerfile's `ENV GLIBC_TUNABLES` line
//! (raising glibc's per-thread cache so malloc's cost per request stays flat with
//! concurrency) must be one glibc applies. glibc ignores what it does not know without a word: a misspelt
//! name, or a `tcache_count` above its maximum, would leave the image on the defaults
//! while the benchmark, which reads the same line, still passes. So every tunable of the
//! line is checked against this machine's glibc loader (`--list-tunables` prints the
//! values it parsed) and glibc's documented bound. The test fails, never skips, where
//! the loader is missing: the image is glibc-based (distroless cc-debian12).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure should panic"
)]

use std::process::Command;

use holysheep_bench::soak::procs::sidecar_stage_env;

/// glibc's upper bound for `glibc.malloc.tcache_count` (the manual's "Memory Allocation
/// Tunables"): a larger value is ignored.
const TCACHE_COUNT_MAX: u64 = 65_535;

/// The glibc dynamic loader of this architecture (its `--list-tunables` needs glibc 2.33+).
const LOADER: &str = if cfg!(target_arch = "aarch64") {
    "/lib/ld-linux-aarch64.so.1"
} else {
    "/lib64/ld-linux-x86-64.so.2"
};

/// The `NAME=VALUE` pairs of the sidecar stage's `ENV GLIBC_TUNABLES=` line, as the
/// benchmark tools read it (so this checks what they apply).
fn image_tunables() -> Vec<(String, u64)> {
    let line = sidecar_stage_env()
        .into_iter()
        .find_map(|(name, value)| (name == "GLIBC_TUNABLES").then_some(value))
        .expect("Dockerfile: the sidecar stage has no `ENV GLIBC_TUNABLES=` line");
    line.split(':')
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("GLIBC_TUNABLES: `{pair}` is not NAME=VALUE"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("GLIBC_TUNABLES: {name}: `{value}` is not a number"));
            (name.to_owned(), value)
        })
        .collect()
}

/// The loader's `NAME: 0xVALUE (min: .., max: ..)` lines under `GLIBC_TUNABLES=tunables`.
fn parsed_by_glibc(tunables: &str) -> Vec<(String, u64)> {
    let out = Command::new(LOADER)
        .arg("--list-tunables")
        .env("GLIBC_TUNABLES", tunables)
        .output()
        .unwrap_or_else(|e| {
            panic!("{LOADER} --list-tunables: {e} (a glibc 2.33+ system is needed)")
        });
    assert!(
        out.status.success(),
        "{LOADER} --list-tunables: {}",
        out.status
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(": 0x")?;
            let hex = rest.split_whitespace().next()?;
            Some((name.to_owned(), u64::from_str_radix(hex, 16).ok()?))
        })
        .collect()
}

#[test]
fn glibc_applies_every_tunable_of_the_sidecar_image() {
    let tunables = image_tunables();
    assert!(
        tunables
            .iter()
            .any(|(n, _)| n == "glibc.malloc.tcache_count"),
        "the sidecar image no longer sets glibc.malloc.tcache_count: {tunables:?}"
    );
    let line = tunables
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(":");
    // Unset tunables list as 0, so a value of 0 would prove nothing: none is 0 here.
    let parsed = parsed_by_glibc(&line);
    for (name, value) in &tunables {
        assert_ne!(*value, 0, "{name}=0: this test cannot tell it from unset");
        let got = parsed.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        assert_eq!(
            got,
            Some(*value),
            "glibc does not know or did not take {name}={value}"
        );
    }
    let (_, count) = tunables
        .iter()
        .find(|(n, _)| n == "glibc.malloc.tcache_count")
        .unwrap();
    assert!(
        (8..=TCACHE_COUNT_MAX).contains(count),
        "glibc.malloc.tcache_count={count}: above glibc's default of 7 and at most \
         {TCACHE_COUNT_MAX} (larger values are ignored)"
    );
}

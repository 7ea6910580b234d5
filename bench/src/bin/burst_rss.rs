//! Memory of the sidecar holding many concurrent streams: starts the sidecar binary in
//! front of the soak's fake upstream, reads its RSS idle, then opens `--streams` slow
//! streams at once (one connection each, as many apps would), reads the RSS once all are
//! open and again when they have ended, and prints one line per phase.
//!
//! With `--tls` the fake upstream speaks HTTPS and offers `h2`, as production does. The
//! sidecar gets the image's environment (the Dockerfile's `ENV` lines of its stage, its
//! allocator setting) unless the caller's environment sets the same names:
//! `GLIBC_TUNABLES= burst-rss` measures glibc's defaults.
//!
//! It isolates the "N concurrent streams" figure of the soak run so a change to buffers or
//! per-connection state can be measured in a minute, A/B against another build
//! (`--sidecar`). Not part of the test suite.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use holysheep_bench::soak::chaos::{self, ChaosConfig};
use holysheep_bench::soak::layout::Volume;
use holysheep_bench::soak::procs::{self, Child, Sample};
use holysheep_bench::soak::sidecar_load::{self, Burst};

/// Peak memory of the sidecar with many concurrent streams.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The sidecar binary.
    #[arg(long, default_value = "target/release/holysheep-sidecar")]
    sidecar: PathBuf,
    /// Concurrent streams.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Events per stream.
    #[arg(long, default_value_t = 40)]
    events: usize,
    /// Time between two events of a stream: long enough that all streams are open at once.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pace: Duration,
    /// Bursts, one after the other (the second and later show whether memory is kept).
    #[arg(long, default_value_t = 2)]
    bursts: u32,
    /// Serve the fake upstream over TLS (a fresh private CA, trusted with
    /// `--upstream-ca-file`), offering `h2` by ALPN: the production path, where the streams
    /// past the sidecar's HTTP/1.1 connections share multiplexed connections.
    #[arg(long)]
    tls: bool,
    /// Where the sidecar's log goes.
    #[arg(long, default_value = "bench/out/burst-rss")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The load side gets its own threads: the sidecar is measured, not this process.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

fn mib(sample: Sample) -> String {
    format!(
        "rss {:.1} MiB, peak {:.1} MiB, {} fds",
        sample.rss_kib as f64 / 1024.0,
        sample.hwm_kib as f64 / 1024.0,
        sample.fds
    )
}

async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.canonicalize()?;
    let config = ChaosConfig {
        chunk_delay: Duration::ZERO,
        stall: Duration::from_secs(1),
    };
    let tls_dir = out.join("tls");
    let (_counts, upstream_flags) =
        chaos::spawn_for_sidecar(config, args.tls.then_some(tls_dir.as_path())).await?;
    // A fresh key volume each run (a rerun into the same directory must not fail).
    let _ = std::fs::remove_dir_all(out.join("secret"));
    let key = Volume::create(&out.join("secret"), "api-key", "sk-burst")?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let sidecar = Child::spawn_sidecar(
        &args.sidecar,
        &[
            format!("--listen={listen}"),
            format!("--admin-listen={admin}"),
            format!("--api-key-file={}", key.path().display()),
        ]
        .into_iter()
        .chain(upstream_flags)
        .collect::<Vec<_>>(),
        &[("RUST_LOG", "warn".to_owned())],
        &out.join("sidecar.log"),
    )?;
    let pid = sidecar.pid();
    let sample = || procs::sample(pid).context("the sidecar exited (see its log)");
    wait_ready(&format!("http://{admin}/readyz")).await?;
    println!("idle: {}", mib(sample()?));

    let base = format!("http://{listen}/v1");
    for burst in 1..=args.bursts {
        let started = Instant::now();
        let streams = Burst::start(&base, args.streams, args.events, args.pace);
        let whole = args.pace * u32::try_from(args.events).unwrap_or(u32::MAX);
        while streams.open.load(Ordering::Relaxed) < args.streams {
            if started.elapsed() > whole {
                bail!(
                    "only {} of {} streams opened",
                    streams.open.load(Ordering::Relaxed),
                    args.streams
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Every stream is open and sending: read the RSS a few times while they run.
        let mut during = sample()?;
        for _ in 0..5 {
            tokio::time::sleep(args.pace).await;
            let now = sample()?;
            if now.rss_kib > during.rss_kib {
                during = now;
            }
        }
        println!(
            "burst {burst}, {} streams open: {}",
            args.streams,
            mib(during)
        );
        let completed = streams.finish().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!(
            "burst {burst} ended ({completed} completed): {}",
            mib(sample()?)
        );
    }
    Ok(())
}

async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let client = sidecar_load::client();
    for _ in 0..400 {
        let req = http::Request::get(url).body(http_body_util::Full::new(bytes::Bytes::new()))?;
        if let Ok(resp) = client.request(req).await
            && resp.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} not ready within 20 s")
}

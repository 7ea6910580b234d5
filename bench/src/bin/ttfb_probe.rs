//! `ttfb-probe`: time to first byte of streamed chat responses (see
//! `holysheep_bench::ttfb`). Prints one JSON object with the percentiles in microseconds.

use anyhow::Context;
use clap::Parser;
use holysheep_bench::{stats, ttfb};

/// Sequential streamed requests over one keep-alive connection; prints JSON timings.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Full URL of the chat completions endpoint, e.g. http://127.0.0.1:8080/v1/chat/completions
    #[arg(long)]
    url: String,
    /// Measured requests.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Unmeasured requests sent first (connection set-up, caches, pools).
    #[arg(long, default_value_t = 20)]
    warmup: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.requests > 0, "--requests must be at least 1");
    // The probe is one sequential client: a single thread keeps it off the other core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    let timings = runtime
        .block_on(ttfb::probe(&args.url, args.warmup, args.requests))
        .with_context(|| format!("probing {} failed", args.url))?;
    let micros = |f: fn(&ttfb::StreamTiming) -> std::time::Duration| -> Vec<f64> {
        timings.iter().map(|t| f(t).as_secs_f64() * 1e6).collect()
    };
    let first = micros(|t| t.first_byte);
    let total = micros(|t| t.total);
    let summary = serde_json::json!({
        "url": args.url,
        "requests": timings.len(),
        "ttfb_p50_us": stats::percentile(&first, 50.0),
        "ttfb_p99_us": stats::percentile(&first, 99.0),
        "total_p50_us": stats::percentile(&total, 50.0),
        "total_p99_us": stats::percentile(&total, 99.0),
    });
    println!("{summary}");
    Ok(())
}

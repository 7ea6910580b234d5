//! `fake-upstream`: the benchmark's fake OpenAI server (see `holysheep_bench::upstream`).
//! Binds, writes the bound address to `--addr-file` for the script, serves until
//! `--max-runtime` passes or it is signalled.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use holysheep_bench::upstream::{self, UpstreamConfig};

/// Fast fake OpenAI upstream for the proxy benchmark.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to bind; port 0 picks a free one (see --addr-file).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// File to write the bound `host:port` to, once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Pause between SSE events of a streamed answer.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    chunk_delay: Duration,
    /// Content events per streamed answer.
    #[arg(long, default_value_t = 6)]
    stream_words: usize,
    /// Exit after this long even if nobody stops us (a forgotten fake must not linger).
    #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
    max_runtime: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One worker: the fake must not take both cores from the proxy and the load generator.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = UpstreamConfig {
        chunk_delay: args.chunk_delay,
        stream_words: args.stream_words,
    };
    let (addr, state) = upstream::spawn(args.listen, config)
        .await
        .with_context(|| format!("failed to bind --listen {}", args.listen))?;
    if let Some(path) = &args.addr_file {
        // Write then rename, so a reader polling the file never sees half an address.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string())
            .with_context(|| format!("failed to write --addr-file {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("failed to write --addr-file {}", path.display()))?;
    }
    println!("fake-upstream listening on {addr}");
    tokio::select! {
        () = tokio::time::sleep(args.max_runtime) => {
            eprintln!("fake-upstream: --max-runtime reached, exiting");
        }
        result = tokio::signal::ctrl_c() => {
            result.context("failed to wait for ctrl-c")?;
        }
    }
    println!("fake-upstream served {} requests", state.requests());
    Ok(())
}

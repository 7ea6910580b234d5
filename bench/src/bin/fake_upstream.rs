//! `fake-upstream`: the benchmark's fake OpenAI server (see `holysheep_bench::upstream`).
//! Binds, writes the bound address to `--addr-file` for the script, serves until
//! `--max-runtime` passes or it is signalled. With `--tls-dir` it also serves HTTPS for
//! `localhost` on a second listener, with a fresh private CA from holysheep-certs whose
//! `ca.crt` (and the serving `tls.crt`, `tls.key`) it writes to that directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    /// Also serve HTTPS, with a new CA and a certificate for `localhost` written here
    /// (`ca.crt`, `tls.crt`, `tls.key`).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Address of the HTTPS listener (with --tls-dir); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    tls_listen: SocketAddr,
    /// File to write the HTTPS listener's bound `host:port` to, once listening.
    #[arg(long)]
    tls_addr_file: Option<PathBuf>,
    /// Offer only `http/1.1` by ALPN on the HTTPS listener (default: `h2` and `http/1.1`).
    #[arg(long)]
    tls_http1_only: bool,
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
    if let Some(dir) = &args.tls_dir {
        let acceptor = holysheep_bench::tls::acceptor(dir, !args.tls_http1_only)?;
        let tls_addr = upstream::spawn_tls(args.tls_listen, Arc::clone(&state), acceptor)
            .await
            .with_context(|| format!("failed to bind --tls-listen {}", args.tls_listen))?;
        if let Some(path) = &args.tls_addr_file {
            write_addr(path, tls_addr, "--tls-addr-file")?;
        }
        println!("fake-upstream listening on {tls_addr} (https, localhost)");
    }
    if let Some(path) = &args.addr_file {
        write_addr(path, addr, "--addr-file")?;
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

/// Writes `addr` to `path`, then renames, so a reader polling the file never sees half an
/// address.
fn write_addr(path: &Path, addr: SocketAddr, flag: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())
        .with_context(|| format!("failed to write {flag} {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("failed to write {flag} {}", path.display()))
}

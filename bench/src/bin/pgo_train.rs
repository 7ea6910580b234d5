//! `pgo-train`: the training load of the sidecar's profile-guided build (see
//! `holysheep_bench::pgo`), run by `scripts/pgo-build.sh` against the instrumented binary.

use std::path::PathBuf;

use clap::Parser;
use holysheep_bench::pgo::{self, Plan};

/// Drives an (instrumented) sidecar with the requests pods send, to a plain-http and an
/// HTTPS fake upstream, and stops it with SIGTERM so that it writes its profile.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The sidecar binary.
    #[arg(long)]
    sidecar: PathBuf,
    /// Where the upstream's CA and the sidecar's logs go.
    #[arg(long)]
    work_dir: PathBuf,
    /// JSON chat requests of each connection-count phase (streams: a tenth of it).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let plan = Plan {
        sidecar: args.sidecar,
        work_dir: args.work_dir,
        requests: args.requests,
    };
    let phases = runtime.block_on(pgo::train(&plan))?;
    for phase in phases {
        println!(
            "{:5} {:12} {} requests",
            phase.upstream, phase.name, phase.requests
        );
    }
    Ok(())
}

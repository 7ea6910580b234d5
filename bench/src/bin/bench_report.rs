//! `bench-report`: prints the Markdown tables for one run directory of
//! `scripts/bench-proxy.sh` (see `holysheep_bench::report`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Builds the BENCHMARKS.md tables from a benchmark run directory.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The run directory written by scripts/bench-proxy.sh (bench/out/<run id>).
    #[arg(long)]
    dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = holysheep_bench::report::load(&args.dir)
        .with_context(|| format!("failed to read run directory {}", args.dir.display()))?;
    anyhow::ensure!(
        !data.load.is_empty(),
        "no oha results under {}/oha: did the run finish?",
        args.dir.display()
    );
    print!("{}", holysheep_bench::report::render(&data));
    Ok(())
}

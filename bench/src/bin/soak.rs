//! `soak`: drives the sidecar and the webhook (real release binaries) for many minutes with
//! mixed, faulty and hostile traffic, samples their RSS, CPU time and open descriptors, and
//! prints a Markdown summary (see `holysheep_bench::soak`). Run by `scripts/soak.sh`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use holysheep_bench::soak::chaos::{self, ChaosConfig};
use holysheep_bench::soak::layout::Volume;
use holysheep_bench::soak::procs::{self, Child, Sample};
use holysheep_bench::soak::sidecar_load::{self, Burst, Tally};
use holysheep_bench::soak::webhook_load::{self, WebhookClient};
use holysheep_bench::stats;
use tokio::sync::Mutex;

/// Soak run of the sidecar and the webhook.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The sidecar binary.
    #[arg(long, default_value = "target/release/holysheep-sidecar")]
    sidecar: PathBuf,
    /// The webhook binary.
    #[arg(long, default_value = "target/release/holysheep-webhook")]
    webhook: PathBuf,
    /// Whole run.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Growth is measured from the end of the warm-up.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Sampling period of /proc.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    sample_every: Duration,
    /// Concurrent clients of the mixed traffic.
    #[arg(long, default_value_t = 8)]
    workers: u64,
    /// Concurrent streams of each burst.
    #[arg(long, default_value_t = 1000)]
    burst_streams: usize,
    /// Bursts, spread evenly from the end of the warm-up to 80 % of the run: with three or
    /// more, a step at every burst tells retained memory (a leak) from the allocator
    /// keeping its high-water mark.
    #[arg(long, default_value_t = 3)]
    bursts: u32,
    /// Serve the fake upstream over HTTPS offering `h2` (a fresh private CA, trusted with
    /// `--upstream-ca-file`): the production path.
    #[arg(long)]
    tls: bool,
    /// Where the logs, samples.csv and summary.md go.
    #[arg(long)]
    out: PathBuf,
    /// RUST_LOG of the sidecar and the webhook.
    #[arg(long, default_value = "warn")]
    log: String,
}

const SERVICE: &str = "holysheep-webhook";
const NAMESPACE: &str = "holysheep-system";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    // Pick-then-rebind: acceptable in a soak script (a failed start is reported).
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn config_yaml(variant: u64) -> String {
    match variant % 3 {
        // A refused edit: the sidecar keeps the last good config and logs once.
        2 => "retry:\n  max_attempts: 3\n  no_such_knob: true\n".to_owned(),
        v => format!(
            "aliases:\n  gpt-4: gpt-4.1\n  soak-{v}: gpt-4.1\nretry:\n  max_attempts: 3\n  base_backoff: 10ms\n  max_backoff: 100ms\n  deadline: 10s\nlimits:\n  max_body_bytes: 65536\n  stream_idle_timeout: 2s\n"
        ),
    }
}

async fn wait_http_ok(url: &str, within: Duration) -> anyhow::Result<()> {
    let client = sidecar_load::client();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let req = http::Request::get(url).body(http_body_util::Full::new(bytes::Bytes::new()))?;
        if let Ok(resp) = client.request(req).await {
            if resp.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} not ready within {within:?}")
}

#[derive(Debug, Default)]
struct Events {
    lines: Vec<String>,
}

async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.canonicalize()?;
    let chaos_config = ChaosConfig {
        chunk_delay: Duration::from_millis(2),
        stall: Duration::from_secs(4),
    };
    let tls_dir = out.join("tls");
    let (counts, upstream_flags) =
        chaos::spawn_for_sidecar(chaos_config, args.tls.then_some(tls_dir.as_path())).await?;

    // Sidecar, with key and config in the kubelet's layout.
    let mut key = Volume::create(&out.join("secret"), "api-key", "sk-soak-0")?;
    let mut config = Volume::create(&out.join("config"), "config.yaml", &config_yaml(0))?;
    let (listen, admin) = (free_addr()?, free_addr()?);
    let mut sidecar = Child::spawn_sidecar(
        &args.sidecar,
        &[
            format!("--listen={listen}"),
            format!("--admin-listen={admin}"),
            format!("--api-key-file={}", key.path().display()),
            format!("--config={}", config.path().display()),
        ]
        .into_iter()
        .chain(upstream_flags)
        .collect::<Vec<_>>(),
        &[("RUST_LOG", args.log.clone())],
        &out.join("sidecar.log"),
    )?;
    wait_http_ok(&format!("http://{admin}/readyz"), Duration::from_secs(20))
        .await
        .context("sidecar (see sidecar.log)")?;

    // Webhook, with a certificate from its own `certs` command.
    let certs = out.join("certs");
    let status = std::process::Command::new(&args.webhook)
        .args([
            "certs",
            "--service",
            SERVICE,
            "--namespace",
            NAMESPACE,
            "--out",
        ])
        .arg(&certs)
        .status()?;
    if !status.success() {
        bail!("holysheep-webhook certs failed");
    }
    let webhook_addr = free_addr()?;
    let mut webhook = Child::spawn(
        &args.webhook,
        &[
            "serve".to_owned(),
            format!("--listen={webhook_addr}"),
            format!("--tls-cert={}", certs.join("tls.crt").display()),
            format!("--tls-key={}", certs.join("tls.key").display()),
        ],
        &[("RUST_LOG", args.log.clone())],
        &out.join("webhook.log"),
    )?;
    let hook = WebhookClient::new(
        webhook_addr,
        &certs.join("ca.crt"),
        &format!("{SERVICE}.{NAMESPACE}.svc"),
    )?;
    let started = Instant::now();
    while hook.healthz().await.is_err() {
        if started.elapsed() > Duration::from_secs(20) {
            bail!("webhook not healthy (see webhook.log)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let events = Arc::new(Mutex::new(Events::default()));
    let base = format!("http://{listen}/v1");
    let mut tasks = Vec::new();
    for seed in 0..args.workers {
        tasks.push(tokio::spawn(sidecar_load::mixed_worker(
            sidecar_load::client(),
            base.clone(),
            seed * 7,
            Arc::clone(&tally),
            Arc::clone(&stop),
        )));
    }

    // Steady admission traffic: latencies of ordinary reviews and of /healthz.
    let review_latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let health_latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let review_failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let (hook, stop) = (hook.clone(), Arc::clone(&stop));
        let (reviews, health, failures) = (
            Arc::clone(&review_latencies),
            Arc::clone(&health_latencies),
            Arc::clone(&review_failures),
        );
        tasks.push(tokio::spawn(async move {
            let mut uid = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                uid += 1;
                match hook.review(webhook_load::review(uid, 2_000, 1)).await {
                    Ok((200, took, Some(true))) => {
                        reviews.lock().await.push(took.as_secs_f64() * 1e3)
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if uid % 5 == 0 {
                    if let Ok((200, took)) = hook.healthz().await {
                        health.lock().await.push(took.as_secs_f64() * 1e3);
                    }
                }
            }
        }));
    }

    let csv_path = out.join("samples.csv");
    let mut csv = std::fs::File::create(&csv_path)?;
    writeln!(
        csv,
        "t_s,sidecar_rss_kib,sidecar_hwm_kib,sidecar_cpu_ticks,sidecar_fds,webhook_rss_kib,webhook_hwm_kib,webhook_cpu_ticks,webhook_fds,responses"
    )?;
    let mut samples: Vec<(f64, Sample, Sample)> = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut next_rotation = Duration::from_secs(30);
    let mut next_config = Duration::from_secs(45);
    let mut next_storm = Duration::from_secs(60);
    let mut rotations = 0u64;
    let mut config_edits = 0u64;
    let last_burst = args.duration.mul_f64(0.8).max(args.warmup);
    let mut bursts_due: Vec<Duration> = (0..args.bursts)
        .map(|i| {
            let share = f64::from(i) / f64::from(args.bursts.saturating_sub(1).max(1));
            args.warmup + (last_burst - args.warmup).mul_f64(share)
        })
        .collect();
    let mut burst_reports = Vec::new();
    let mut storm = 0u64;
    let mut storm_task: Option<tokio::task::JoinHandle<()>> = None;

    while start.elapsed() < args.duration {
        let now = start.elapsed();
        if let Some(status) = sidecar.exited() {
            bail!("sidecar exited during the soak: {status} (see sidecar.log)");
        }
        if let Some(status) = webhook.exited() {
            bail!("webhook exited during the soak: {status} (see webhook.log)");
        }
        if now >= next_sample {
            next_sample += args.sample_every;
            let s = procs::sample(sidecar.pid()).unwrap_or_default();
            let w = procs::sample(webhook.pid()).unwrap_or_default();
            let responses = tally.responses().await;
            writeln!(
                csv,
                "{:.1},{},{},{},{},{},{},{},{},{}",
                now.as_secs_f64(),
                s.rss_kib,
                s.hwm_kib,
                s.cpu_ticks,
                s.fds,
                w.rss_kib,
                w.hwm_kib,
                w.cpu_ticks,
                w.fds,
                responses
            )?;
            samples.push((now.as_secs_f64(), s, w));
        }
        if now >= next_rotation {
            next_rotation += Duration::from_secs(30);
            rotations += 1;
            key.update(&format!("sk-soak-{rotations}"))?;
        }
        if now >= next_config {
            next_config += Duration::from_secs(45);
            config_edits += 1;
            config.update(&config_yaml(config_edits))?;
        }
        if bursts_due.first().is_some_and(|due| now >= *due) {
            bursts_due.remove(0);
            burst_reports.push(burst(&base, args.burst_streams, sidecar.pid()).await);
        }
        // A storm runs beside the loop (it holds connections for a while), one at a time,
        // so sampling, rotations and config edits keep their pace.
        if now >= next_storm && storm_task.as_ref().is_none_or(|t| t.is_finished()) {
            next_storm = now + Duration::from_secs(60);
            storm += 1;
            let (hook, events) = (hook.clone(), Arc::clone(&events));
            storm_task = Some(tokio::spawn(async move {
                let line = hostile_storm(&hook, storm).await;
                let line = format!("t={:.0}s {line}", now.as_secs_f64());
                events.lock().await.lines.push(line);
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(task) = storm_task {
        let _ = tokio::time::timeout(Duration::from_secs(90), task).await;
    }
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
    let final_sidecar = procs::sample(sidecar.pid()).unwrap_or_default();
    let final_webhook = procs::sample(webhook.pid()).unwrap_or_default();

    let summary = summarise(
        &args,
        &samples,
        (final_sidecar, final_webhook),
        &tally,
        &counts,
        &burst_reports,
        &events.lock().await.lines,
        (
            &mut *review_latencies.lock().await,
            &mut *health_latencies.lock().await,
            review_failures.load(Ordering::Relaxed),
        ),
        (rotations, config_edits),
    )
    .await;
    std::fs::write(out.join("summary.md"), &summary)?;
    println!("{summary}");
    drop(sidecar);
    drop(webhook);
    Ok(())
}

/// Opens the burst, samples the sidecar while every stream is open, and waits it out.
async fn burst(base: &str, n: usize, pid: u32) -> String {
    let before = procs::sample(pid).unwrap_or_default();
    let burst = Burst::start(base, n, 60, Duration::from_millis(250));
    let started = Instant::now();
    let mut peak = before;
    while burst.open.load(Ordering::Relaxed) < n && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // All open (or as many as would open): sample a few times mid-stream.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(s) = procs::sample(pid) {
            if s.rss_kib > peak.rss_kib {
                peak = s;
            }
        }
    }
    let open = burst.open.load(Ordering::Relaxed);
    let completed = burst.finish().await;
    let after = procs::sample(pid).unwrap_or_default();
    format!(
        "{n} concurrent streams: {open} opened, {completed} completed; sidecar RSS before {:.1} MiB, \
         with all open {:.1} MiB ({} fds), after {:.1} MiB",
        mib(before.rss_kib),
        mib(peak.rss_kib),
        peak.fds,
        mib(after.rss_kib)
    )
}

/// One round of hostile admission traffic; returns a line for the report.
async fn hostile_storm(hook: &WebhookClient, round: u64) -> String {
    // Silent connections: plain TCP that never starts TLS, and TLS that never sends a request.
    let mut tcp = hook.silent_tcp(1500).await;
    let mut tls = hook.silent_tls(300).await;
    let slow = {
        let hook = hook.clone();
        tokio::spawn(async move {
            hook.slow_body(Duration::from_millis(500), Duration::from_secs(40))
                .await
        })
    };
    // Big reviews in parallel: four just under 3 MiB (two of them colliding over 3,000
    // ports), one over the limit.
    let mut big = Vec::new();
    for i in 0..5u64 {
        let hook = hook.clone();
        let review = match i {
            0 | 1 => webhook_load::review(round * 100 + i, 2_900_000, 1),
            2 | 3 => webhook_load::review(round * 100 + i, 2_700_000, 3000),
            _ => webhook_load::review(round * 100 + i, 4_500_000, 1),
        };
        big.push(tokio::spawn(async move { hook.review(review).await }));
    }
    let mut statuses = Vec::new();
    for task in big {
        statuses.push(match task.await {
            Ok(Ok((status, took, allowed))) => {
                let verdict = match allowed {
                    Some(true) => " allowed",
                    Some(false) => " denied",
                    None => "",
                };
                format!("{status}{verdict} in {:.0} ms", took.as_secs_f64() * 1e3)
            }
            _ => "failed".to_owned(),
        });
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (tcp_n, tls_n) = (tcp.len(), tls.len());
    let tcp_closed = webhook_load::closed_by_server(&mut tcp).await;
    let tls_closed = webhook_load::closed_by_server(&mut tls).await;
    drop((tcp, tls));
    let slow = match slow.await {
        Ok(Some(after)) => format!("cut after {:.1} s", after.as_secs_f64()),
        _ => "never cut within 40 s".to_owned(),
    };
    format!(
        "storm {round}: silent TCP closed by the server after 20 s: {tcp_closed}/{tcp_n}, silent TLS: \
         {tls_closed}/{tls_n}; slow body {slow}; big reviews [2.9 MB, 2.9 MB, 2.7 MB x 3000 ports, \
         2.7 MB x 3000 ports, 4.5 MB]: {}",
        statuses.join(", ")
    )
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site, each part of the report"
)]
async fn summarise(
    args: &Args,
    samples: &[(f64, Sample, Sample)],
    (final_sidecar, final_webhook): (Sample, Sample),
    tally: &Tally,
    counts: &chaos::ChaosCounts,
    bursts: &[String],
    storms: &[String],
    (reviews, health, review_failures): (&mut Vec<f64>, &mut Vec<f64>, u64),
    (rotations, config_edits): (u64, u64),
) -> String {
    let warm = args.warmup.as_secs_f64();
    // Steady-state samples: after the warm-up, outside the bursts is not separable here, so
    // the report gives the warm-up sample, the last sample and the extremes in between.
    let after: Vec<&(f64, Sample, Sample)> = samples.iter().filter(|(t, ..)| *t >= warm).collect();
    let first = after.first().map(|(_, s, w)| (*s, *w)).unwrap_or_default();
    let minmax = |f: &dyn Fn(&(f64, Sample, Sample)) -> u64| {
        let values: Vec<u64> = after.iter().map(|x| f(x)).collect();
        (
            values.iter().copied().min().unwrap_or(0),
            values.iter().copied().max().unwrap_or(0),
        )
    };
    let (s_rss_min, s_rss_max) = minmax(&|(_, s, _)| s.rss_kib);
    let (w_rss_min, w_rss_max) = minmax(&|(_, _, w)| w.rss_kib);
    let (s_fd_min, s_fd_max) = minmax(&|(_, s, _)| s.fds);
    let (w_fd_min, w_fd_max) = minmax(&|(_, _, w)| w.fds);
    let secs = samples.last().map_or(1.0, |(t, ..)| *t).max(1.0);
    let statuses = tally.statuses.lock().await.clone();
    let responses: u64 = statuses.values().sum();
    reviews.sort_by(f64::total_cmp);
    health.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| stats::percentile(v, p).unwrap_or(f64::NAN);
    let mut s = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "## Soak: {:.0} s, warm-up {:.0} s, {} mixed clients\n",
        secs, warm, args.workers
    );
    let _ = writeln!(s, "| | sidecar | webhook |\n| --- | --- | --- |");
    let _ = writeln!(
        s,
        "| RSS at end of warm-up / at end, MiB | {:.1} / {:.1} | {:.1} / {:.1} |",
        mib(first.0.rss_kib),
        mib(final_sidecar.rss_kib),
        mib(first.1.rss_kib),
        mib(final_webhook.rss_kib)
    );
    let _ = writeln!(
        s,
        "| RSS min / max after warm-up, MiB | {:.1} / {:.1} | {:.1} / {:.1} |",
        mib(s_rss_min),
        mib(s_rss_max),
        mib(w_rss_min),
        mib(w_rss_max)
    );
    let _ = writeln!(
        s,
        "| peak RSS (VmHWM), MiB | {:.1} | {:.1} |",
        mib(final_sidecar.hwm_kib),
        mib(final_webhook.hwm_kib)
    );
    let _ = writeln!(
        s,
        "| open fds at end of warm-up / at end (min-max after) | {} / {} ({}-{}) | {} / {} ({}-{}) |",
        first.0.fds,
        final_sidecar.fds,
        s_fd_min,
        s_fd_max,
        first.1.fds,
        final_webhook.fds,
        w_fd_min,
        w_fd_max
    );
    let _ = writeln!(
        s,
        "| CPU time, s (share of one core) | {:.1} ({:.0} %) | {:.1} ({:.0} %) |\n",
        final_sidecar.cpu_ticks as f64 / 100.0,
        final_sidecar.cpu_ticks as f64 / secs,
        final_webhook.cpu_ticks as f64 / 100.0,
        final_webhook.cpu_ticks as f64 / secs
    );
    let _ = writeln!(
        s,
        "Sidecar traffic: {responses} responses ({:.0}/s), by status {statuses:?}; transport errors {}; \
         streams completed {} (with a final error event {}), abandoned by the client {}; clients gone \
         before headers {}. Upstream chaos: {} chat attempts, {} 5xx/429, {} streams cut mid-event, {} \
         stalled; {} embeddings. Key rotations {rotations}, config edits {config_edits} (every third refused).\n",
        responses as f64 / secs,
        tally.transport_errors.load(Ordering::Relaxed),
        tally.streams_completed.load(Ordering::Relaxed),
        tally.streams_with_error_event.load(Ordering::Relaxed),
        tally.streams_abandoned.load(Ordering::Relaxed),
        tally.gone_before_headers.load(Ordering::Relaxed),
        counts.chat.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
        counts.cuts.load(Ordering::Relaxed),
        counts.stalls.load(Ordering::Relaxed),
        counts.embeddings.load(Ordering::Relaxed),
    );
    for line in bursts {
        let _ = writeln!(s, "- burst: {line}");
    }
    let _ = writeln!(
        s,
        "\nWebhook steady reviews (10/s, one TLS connection each): {} answered, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {review_failures} failed; /healthz p50 {:.2} ms, max {:.2} ms.\n",
        reviews.len(),
        pct(reviews, 50.0),
        pct(reviews, 99.0),
        reviews.last().copied().unwrap_or(f64::NAN),
        pct(health, 50.0),
        health.last().copied().unwrap_or(f64::NAN),
    );
    for line in storms {
        let _ = writeln!(s, "- {line}");
    }
    s
}

//! `holysheep-webhook`: parse the command line, start logging, run the command, turn
//! an error into a non-zero exit code. Everything else lives in the library.

use std::error::Error as _;
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser as _;
use holysheep_webhook::cli::{Cli, Command};
use holysheep_webhook::error::WebhookError;
use holysheep_webhook::{certs_cli, inject_cli, server};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` runs in a container: JSON lines for the log pipeline. `inject` and `certs`
    // run in a terminal: plain lines. HOLYSHEEP_LOG_FORMAT=json|text overrides.
    let json = match std::env::var("HOLYSHEEP_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => matches!(cli.command, Command::Serve(_)),
    };
    if let Err(error) = init_tracing(json) {
        eprintln!("holysheep-webhook: {error}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The full cause chain, once, at the edge.
            let mut message = error.to_string();
            let mut source = error.source();
            while let Some(cause) = source {
                // thiserror messages often embed their source already; don't repeat it.
                let text = cause.to_string();
                if !message.contains(&text) {
                    message.push_str(": ");
                    message.push_str(&text);
                }
                source = cause.source();
            }
            tracing::error!(error = %message, "holysheep-webhook failed");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), WebhookError> {
    match cli.command {
        Command::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|source| WebhookError::Io {
                    action: "start",
                    path: "the async runtime".into(),
                    source,
                })?;
            runtime.block_on(server::run(*args, server::shutdown_signal()))
        }
        Command::Inject(args) => {
            let settings = args.settings.into_settings()?;
            let stdout = std::io::stdout().lock();
            let mut out = std::io::BufWriter::new(stdout);
            let report = inject_cli::run_path(&args.filename, &mut out, &settings)?;
            // As kubectl prints an admission response's warnings.
            for warning in &report.warnings {
                eprintln!("Warning: {warning}");
            }
            out.flush().map_err(|source| WebhookError::Io {
                action: "write",
                path: "-".into(),
                source,
            })?;
            tracing::info!(
                documents = report.documents,
                injected = ?report.injected,
                "inject done"
            );
            Ok(())
        }
        Command::Certs(args) => certs_cli::run(&args).map(|_| ()),
    }
}

/// Logs on stderr (stdout carries `inject`'s YAML), level from RUST_LOG, `info` by
/// default; one JSON object per line when `json`.
fn init_tracing(json: bool) -> Result<(), WebhookError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder
            .without_time()
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    result.map_err(|e| WebhookError::Logging(e.to_string()))
}

//! `holysheep-webhook`: parse the command line, start logging, run the command, turn
//! an error into a non-zero exit code. Everything else lives in the library.

use std::error::Error as _;
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser as _;
use holysheep_webhook::cli::{CheckArgs, OutputFormat};
use holysheep_webhook::cli::{Cli, Command};
use holysheep_webhook::error::WebhookError;
use holysheep_webhook::{certs_cli, check, inject_cli, server};
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
    // `check` reports its own errors once, on stderr: the kube client's error logs for the
    // same failure would only repeat them less clearly.
    let default_level = match cli.command {
        Command::Check(_) => "warn,kube_client=off",
        _ => "info",
    };
    if let Err(error) = init_tracing(json, default_level) {
        eprintln!("holysheep-webhook: {error}");
        return ExitCode::FAILURE;
    }
    match run(cli.command) {
        Ok(code) => code,
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

/// Runs the command; `check` reports its own errors and picks its own exit code.
fn run(command: Command) -> Result<ExitCode, WebhookError> {
    match command {
        Command::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|source| WebhookError::Io {
                    action: "start",
                    path: "the async runtime".into(),
                    source,
                })?;
            runtime.block_on(server::run(*args, server::shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
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
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(args) => certs_cli::run(&args).map(|_| ExitCode::SUCCESS),
        Command::Check(args) => Ok(ExitCode::from(run_check(&args))),
    }
}

/// `check`: the report on stdout, an error on stderr; the exit code from `check`.
fn run_check(args: &CheckArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("holysheep-webhook check: cannot start the async runtime: {error}");
            return check::EXIT_ERROR;
        }
    };
    let result = runtime.block_on(async {
        let client = check::client(&check::ClientOptions {
            kubeconfig: args.kubeconfig.clone(),
            context: args.context.clone(),
        })
        .await?;
        // Like kubectl: the context's namespace unless -n or -A.
        let namespace = match (&args.namespace, args.all_namespaces) {
            (_, true) => None,
            (Some(ns), false) => Some(ns.clone()),
            (None, false) => Some(client.default_namespace().to_owned()),
        };
        let opts = check::CheckOptions {
            namespace,
            webhook_namespace: args.webhook_namespace.clone(),
            webhook_deployment: args.webhook_deployment.clone(),
            webhook_config: args.webhook_config.clone(),
            tls_secret: args.tls_secret.clone(),
        };
        check::run(&client, &opts).await
    });
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            eprintln!("holysheep-webhook check: {error}");
            return check::EXIT_ERROR;
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = match args.output {
        OutputFormat::Json => serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out)),
        OutputFormat::Text => check::write_text(&report, &mut out),
    };
    if let Err(error) = written.and_then(|()| out.flush()) {
        eprintln!("holysheep-webhook check: cannot write the report: {error}");
        return check::EXIT_ERROR;
    }
    check::exit_code(&report)
}

/// Logs on stderr (stdout carries `inject`'s YAML and `check`'s report), level from
/// RUST_LOG, `default_level` otherwise; one JSON object per line when `json`.
fn init_tracing(json: bool, default_level: &str) -> Result<(), WebhookError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
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

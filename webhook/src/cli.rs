//! Command-line interface of `holysheep-webhook`: clap derive structs only, flags as in
//! the README, each with an environment twin where a Deployment would set it.
//!
//! What it does not do: validate values beyond their type (the sidecar defaults are
//! validated by `SettingsArgs::into_settings`) or run anything (`main` dispatches).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::settings::SettingsArgs;

/// Mutating admission webhook that injects the holysheep LLM-forwarding sidecar.
///
/// Logs go to stderr (JSON lines for `serve`, plain text otherwise; HOLYSHEEP_LOG_FORMAT=json|text
/// overrides); set the level with RUST_LOG (default `info`).
#[derive(Debug, Parser)]
#[command(name = "holysheep-webhook", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the admission webhook over HTTPS (POST /mutate, /healthz, /readyz, /metrics).
    // The usage line is what a missing-flag error prints: it names both ways to get TLS.
    #[command(
        override_usage = "holysheep-webhook serve --tls-cert FILE --tls-key FILE [OPTIONS]\n       holysheep-webhook serve --self-signed --namespace NS [OPTIONS]"
    )]
    Serve(Box<ServeArgs>),
    /// Inject the sidecar into annotated pod templates of YAML manifests, offline.
    Inject(Box<InjectArgs>),
    /// Write a CA and a serving certificate for the webhook Service to a directory.
    Certs(CertsArgs),
    /// Read-only fleet report: pods without the sidecar, stale sidecars, webhook health.
    ///
    /// Lists annotated pods running without the sidecar and why, injected pods whose
    /// stamps differ from what the webhook injects now (with the restart to run), and the
    /// webhook's replicas, caBundle and certificate expiry. Sends GET requests only.
    /// Exit 0: nothing needs action, 1: findings, 2: the check could not run (no
    /// kubeconfig, API server unreachable, RBAC refused a read).
    Check(CheckArgs),
}

/// `serve`: where to listen, which certificate to serve, and the sidecar defaults.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "HOLYSHEEP_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Serving certificate chain, PEM, leaf first. Re-read when it changes.
    #[arg(
        long,
        env = "HOLYSHEEP_TLS_CERT",
        required_unless_present = "self_signed",
        conflicts_with = "self_signed",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// Private key of the serving certificate, PEM. Re-read when it changes.
    #[arg(
        long,
        env = "HOLYSHEEP_TLS_KEY",
        required_unless_present = "self_signed",
        conflicts_with = "self_signed",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Backstop re-check of the certificate files, besides the directory watch.
    #[arg(
        long,
        env = "HOLYSHEEP_TLS_RELOAD_INTERVAL",
        default_value = "60s",
        value_parser = humantime::parse_duration
    )]
    pub tls_reload_interval: Duration,

    /// After SIGTERM, keep serving (with /readyz failing) this long so endpoints update
    /// before the listener closes; then drain open requests.
    #[arg(
        long,
        env = "HOLYSHEEP_SHUTDOWN_DELAY",
        default_value = "5s",
        value_parser = humantime::parse_duration
    )]
    pub shutdown_delay: Duration,

    /// Bootstrap a self-signed CA and serving certificate, shared through a Secret, and
    /// keep the caBundle of the webhook configuration in sync (needs Kubernetes RBAC).
    #[command(flatten)]
    pub self_signed: SelfSignedArgs,

    /// Webhook-level sidecar defaults, overridden per pod by annotations.
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// Flags of `serve --self-signed`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Self-signed certificate bootstrap (needs Kubernetes RBAC)")]
pub struct SelfSignedArgs {
    /// Bootstrap the certificate instead of reading --tls-cert/--tls-key.
    #[arg(
        long = "self-signed",
        id = "self_signed",
        env = "HOLYSHEEP_SELF_SIGNED"
    )]
    pub enabled: bool,

    /// Secret shared by all replicas holding the CA and the serving certificate.
    #[arg(
        long,
        env = "HOLYSHEEP_TLS_SECRET",
        default_value = "holysheep-webhook-tls"
    )]
    pub tls_secret: String,

    /// MutatingWebhookConfiguration whose caBundle is kept equal to the CA.
    #[arg(
        long,
        env = "HOLYSHEEP_WEBHOOK_CONFIG",
        default_value = "holysheep-sidecar-injector"
    )]
    pub webhook_config: String,

    /// Service the apiserver calls; the certificate is issued for `<service>.<namespace>.svc`.
    #[arg(long, env = "HOLYSHEEP_SERVICE", default_value = "holysheep-webhook")]
    pub service: String,

    /// Namespace of the Secret and the Service (the pod's own, via the downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,

    /// Local directory the bootstrapped ca.crt, tls.crt and tls.key are written to and
    /// served from (an emptyDir: the root filesystem is read-only).
    #[arg(
        long,
        env = "HOLYSHEEP_CERT_DIR",
        default_value = "/var/run/holysheep-webhook/certs"
    )]
    pub cert_dir: PathBuf,
}

/// `inject`: like `linkerd inject`, YAML in, YAML out.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Manifest file (YAML or JSON; JSON comes out as JSON), a directory (its .yaml, .yml
    /// and .json files in name order), or `-` for stdin.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    pub filename: String,

    /// Webhook-level sidecar defaults, overridden per pod by annotations.
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// `certs`: a CA and a serving certificate for the webhook Service.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Service name; SANs are S.N.svc, S.N.svc.cluster.local, S.N and S.
    #[arg(long, env = "HOLYSHEEP_SERVICE")]
    pub service: String,

    /// Namespace of the Service.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,

    /// Directory to write ca.crt and tls.crt (mode 0644) and tls.key (mode 0600) into;
    /// created if absent.
    #[arg(long)]
    pub out: PathBuf,
}

/// Output format of `check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human tables.
    Text,
    /// One JSON document (`apiVersion: holysheep.ai/check/v1`).
    Json,
}

/// `check`: which namespaces, how to print, where the webhook lives.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Only this namespace (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,

    /// All namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: OutputFormat,

    /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context (default: its current-context).
    #[arg(long)]
    pub context: Option<String>,

    /// Namespace of the webhook Deployment and its TLS Secret.
    #[arg(long, default_value = crate::check::DEFAULT_WEBHOOK_NAMESPACE)]
    pub webhook_namespace: String,

    /// The webhook Deployment; its container args and env give the settings the expected
    /// stamps are computed with.
    #[arg(long, default_value = crate::check::DEFAULT_WEBHOOK_DEPLOYMENT)]
    pub webhook_deployment: String,

    /// The MutatingWebhookConfiguration.
    #[arg(long, default_value = crate::bootstrap::DEFAULT_WEBHOOK_CONFIG_NAME)]
    pub webhook_config: String,

    /// The Secret holding the webhook's ca.crt and tls.crt.
    #[arg(long, default_value = crate::bootstrap::DEFAULT_SECRET_NAME)]
    pub tls_secret: String,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("holysheep-webhook").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_with_files() {
        let cli = parse(&[
            "serve",
            "--tls-cert",
            "/c/tls.crt",
            "--tls-key",
            "/c/tls.key",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(args.tls_cert, Some(PathBuf::from("/c/tls.crt")));
        assert!(!args.self_signed.enabled);
        assert_eq!(args.tls_reload_interval, Duration::from_secs(60));
        assert_eq!(args.self_signed.tls_secret, "holysheep-webhook-tls");
        assert_eq!(
            args.self_signed.webhook_config,
            "holysheep-sidecar-injector"
        );
    }

    #[test]
    fn serve_needs_a_certificate_source() {
        let err = parse(&["serve"]).unwrap_err();
        assert!(err.to_string().contains("--tls-cert"), "{err}");
        assert!(
            parse(&["serve", "--tls-cert", "a"]).is_err(),
            "key required with cert"
        );
        assert!(
            parse(&[
                "serve",
                "--self-signed",
                "--tls-cert",
                "a",
                "--tls-key",
                "b"
            ])
            .is_err(),
            "self-signed conflicts with files"
        );
        let cli = parse(&[
            "serve",
            "--self-signed",
            "--namespace",
            "hs",
            "--listen",
            "127.0.0.1:9443",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert!(args.self_signed.enabled);
        assert_eq!(args.self_signed.namespace.as_deref(), Some("hs"));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = parse(&["serve", "--self-signed", "--listen", "nope"]).unwrap_err();
        assert!(err.to_string().contains("--listen"), "{err}");
        let err = parse(&["serve", "--self-signed", "--tls-reload-interval", "often"]).unwrap_err();
        assert!(err.to_string().contains("--tls-reload-interval"), "{err}");
    }

    #[test]
    fn inject_and_certs() {
        let cli = parse(&["inject", "-f", "app.yaml"]).unwrap();
        assert!(matches!(cli.command, Command::Inject(ref a) if a.filename == "app.yaml"));
        let cli = parse(&["inject"]).unwrap();
        assert!(matches!(cli.command, Command::Inject(ref a) if a.filename == "-"));
        let cli = parse(&["certs", "--service", "s", "--namespace", "n", "--out", "d"]).unwrap();
        assert!(
            matches!(cli.command, Command::Certs(CertsArgs { ref service, .. }) if service == "s")
        );
        assert!(parse(&["certs", "--service", "s"]).is_err());
    }

    #[test]
    fn check_flags() {
        let cli = parse(&["check", "-A", "-o", "json"]).unwrap();
        let Command::Check(args) = cli.command else {
            panic!("not check")
        };
        assert!(args.all_namespaces);
        assert_eq!(args.output, OutputFormat::Json);
        assert_eq!(args.webhook_namespace, "holysheep-system");
        assert_eq!(args.webhook_config, "holysheep-sidecar-injector");
        assert_eq!(args.tls_secret, "holysheep-webhook-tls");
        let cli = parse(&["check", "-n", "shop"]).unwrap();
        assert!(
            matches!(cli.command, Command::Check(ref a) if a.namespace.as_deref() == Some("shop") && a.output == OutputFormat::Text)
        );
        assert!(parse(&["check", "-n", "shop", "-A"]).is_err());
        let err = parse(&["check", "-o", "yaml"]).unwrap_err().to_string();
        assert!(err.contains("json"), "{err}");
    }

    #[test]
    fn serve_without_tls_names_both_ways_and_certs_help_tells_the_modes() {
        let err = parse(&["serve"]).unwrap_err().to_string();
        assert!(err.contains("--tls-cert FILE --tls-key FILE"), "{err}");
        assert!(err.contains("--self-signed"), "{err}");
        let help = Cli::command()
            .find_subcommand_mut("certs")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(
            help.contains("tls.crt (mode 0644) and tls.key (mode 0600)"),
            "{help}"
        );
    }
}

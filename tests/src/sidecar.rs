//! The sidecar as the injected container runs it: [`argv`] turns the container's args and
//! env into the command line the sidecar's own clap parser sees, [`parse`] parses it
//! without reading this process's environment, and [`Running::start`] runs the sidecar
//! in-process from those flags, on ephemeral loopback ports and with its files moved to
//! where [`crate::kubelet::Mounted`] laid the volumes out.
//!
//! Env is given as flags (`HOLYSHEEP_LISTEN=v` -> `--listen=v`) because tests may not set
//! process env; the env-name -> flag table is read from the sidecar's own `Args`, so an
//! env var the webhook sets but the sidecar does not read is an error, not a silent no-op.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use k8s_openapi::api::core::v1::Container;
use tokio::sync::oneshot;

use holysheep_sidecar::config::Args;
use holysheep_sidecar::server::{self, RunError, Settings};

use crate::kubelet::Mounted;
use crate::{eventually, http_client};

/// The sidecar's binary name, `argv[0]`.
pub const BINARY: &str = "holysheep-sidecar";

/// Namespace the kubelet stand-in gives `metadata.namespace` in the downward API.
pub const POD_NAMESPACE: &str = "shop";

/// Name it gives `metadata.name`.
pub const POD_NAME: &str = "pod-0";

/// The sidecar's command line for `container`: its `args` (the image's entrypoint is the
/// sidecar binary, so `command` must be unset) and one `--flag=value` per literal
/// `HOLYSHEEP_*` env var, with `$(VAR)` references to earlier env expanded as the kubelet
/// does (the downward API's namespace and name are [`POD_NAMESPACE`] and [`POD_NAME`]).
/// Env from `valueFrom` is not a flag and is skipped; a `HOLYSHEEP_*` var no sidecar flag
/// reads is an error.
pub fn argv(container: &Container) -> Result<Vec<String>, String> {
    if let Some(command) = &container.command {
        return Err(format!(
            "container {} overrides the image entrypoint with {command:?}",
            container.name
        ));
    }
    let command = Args::command();
    let mut argv = vec![BINARY.to_owned()];
    argv.extend(container.args.iter().flatten().cloned());
    let mut defined: Vec<(&str, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => Some(expand(value, &defined)),
            (None, Some(from)) => {
                from.field_ref
                    .as_ref()
                    .and_then(|field| match field.field_path.as_str() {
                        "metadata.namespace" => Some(POD_NAMESPACE.to_owned()),
                        "metadata.name" => Some(POD_NAME.to_owned()),
                        _ => None,
                    })
            }
            (None, None) => Some(String::new()),
        };
        if let Some(value) = &value {
            defined.push((var.name.as_str(), value.clone()));
        }
        let flag = command.get_arguments().find(|arg| {
            arg.get_env()
                .is_some_and(|env| env.to_str() == Some(var.name.as_str()))
        });
        let literal = var.value.as_ref().and(value.as_ref());
        match (flag.and_then(|a| a.get_long()), literal, &var.value_from) {
            (Some(long), Some(value), _) => argv.push(format!("--{long}={value}")),
            (Some(_), None, _) => {
                return Err(format!(
                    "env {} is a sidecar flag but has no literal value",
                    var.name
                ));
            }
            (None, _, _) if var.name.starts_with("HOLYSHEEP_") => {
                return Err(format!(
                    "env {} is set on {} but no flag of the sidecar reads it",
                    var.name, container.name
                ));
            }
            (None, _, _) => {}
        }
    }
    Ok(argv)
}

/// Expands `$(NAME)` with the value of an env var defined earlier in the container, `$$`
/// to `$`, and leaves anything else (an unknown name included) as written: the kubelet's
/// rules for env values.
fn expand(value: &str, defined: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        if let Some(after) = tail.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some((name, after)) = tail
            .strip_prefix('(')
            .and_then(|inner| inner.split_once(')'))
        {
            // The last definition wins, as with duplicate env names.
            match defined.iter().rev().find(|(n, _)| *n == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[at..at + 3 + name.len()]),
            }
            rest = after;
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// Parses `argv` with the sidecar's `Args`, with every env twin switched off so that
/// only the given flags and the defaults count (whatever this process's env holds).
pub fn parse(argv: &[String]) -> Result<Args, clap::Error> {
    let command = Args::command().mut_args(|arg| arg.env(None));
    let matches = command.try_get_matches_from(argv)?;
    Args::from_arg_matches(&matches)
}

/// [`argv`] then [`parse`], panicking with the reason.
pub fn args_of(container: &Container) -> Args {
    let argv = argv(container).unwrap_or_else(|e| panic!("{e}"));
    parse(&argv).unwrap_or_else(|e| panic!("the sidecar refuses its injected flags {argv:?}: {e}"))
}

/// A sidecar running in-process.
pub struct Running {
    /// Where the proxy listens (the flags' IP, an ephemeral port).
    pub proxy_addr: SocketAddr,
    /// Where the admin server listens (127.0.0.1, an ephemeral port).
    pub admin_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), RunError>>>,
}

impl Running {
    /// Starts the sidecar with `args` (as parsed from the injected container): files under
    /// the container's mounts are read from `mounted`, both ports become ephemeral (the
    /// admin one on loopback, not 0.0.0.0), the `HOLYSHEEP_API_KEY` env fallback is off
    /// (the key must come from the file). Waits until `/readyz` answers 200.
    pub async fn start(args: Args, mounted: &Mounted) -> Self {
        let running = Self::spawn(args, mounted).await;
        running.wait_for(200, "/readyz").await;
        running
    }

    /// Like [`Running::start`], but only waits until `/healthz` answers 200 (the
    /// sidecar is up, not necessarily ready).
    pub async fn spawn(mut args: Args, mounted: &Mounted) -> Self {
        args.api_key_file = mounted
            .host_path(&args.api_key_file)
            .unwrap_or_else(|| panic!("no volume holds {}", args.api_key_file.display()));
        if let Some(config) = &args.config {
            let host = mounted
                .host_path(config)
                .unwrap_or_else(|| panic!("no volume holds {}", config.display()));
            args.config = Some(host);
        }
        args.listen.set_port(0);
        args.admin_listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut settings =
            Settings::from_args(&args).unwrap_or_else(|e| panic!("sidecar settings: {e}"));
        settings.key_source.env_key = None;
        settings.shutdown_grace = Duration::from_secs(5);
        let (proxy, admin) = server::bind(&args)
            .await
            .unwrap_or_else(|e| panic!("sidecar bind: {e}"));
        let proxy_addr = proxy.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let admin_addr = admin.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(settings, proxy, admin, async {
            let _ = rx.await;
        }));
        let running = Self {
            proxy_addr,
            admin_addr,
            shutdown: Some(tx),
            task: Some(task),
        };
        running.wait_for(200, "/healthz").await;
        running
    }

    /// Polls `path` on the admin listener (bounded, 10s) until it answers `status`.
    pub async fn wait_for(&self, status: u16, path: &str) {
        let http = http_client();
        let url = self.admin_url(path);
        let what = format!("sidecar {path} {status}");
        eventually(Duration::from_secs(10), &what, || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == status)
            }
        })
        .await;
    }

    /// `http://<admin>` + `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// Asks for shutdown and waits (bounded) for the sidecar to return.
    pub async fn stop(mut self) -> Result<(), RunError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap_or_else(|_| panic!("the sidecar did not stop within 10s"))
            .unwrap_or_else(|e| panic!("the sidecar task failed: {e}"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expands_like_the_kubelet() {
        let defined = [("NS", "shop".to_owned()), ("NS", "prod".to_owned())];
        assert_eq!(expand("$(NS)/web", &defined), "prod/web");
        assert_eq!(
            expand("$$(NS) $(OTHER) $x $", &defined),
            "$(NS) $(OTHER) $x $"
        );
        assert_eq!(expand("a$(NS", &defined), "a$(NS");
        assert_eq!(expand("é$(NS)é", &defined), "éprodé");
    }
}

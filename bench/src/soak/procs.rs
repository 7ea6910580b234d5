//! Child processes of the soak run and what `/proc` says about them.
//!
//! A [`Child`] is stopped when dropped, so an aborted run leaves nothing behind.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context;

/// A spawned binary, stopped on drop (see [`Child::terminate`]); its stdout and stderr go
/// to a log file.
#[derive(Debug)]
pub struct Child {
    inner: std::process::Child,
}

impl Child {
    /// Starts `program` with `args` and `env`, stdout and stderr appended to `log`.
    pub fn spawn(
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (key, value) in env {
            cmd.env(key, value);
        }
        let inner = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self { inner })
    }

    /// [`Child::spawn`] of the sidecar with the image's environment added (see
    /// [`sidecar_image_env`]), which it reports on stderr.
    pub fn spawn_sidecar(
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let image = sidecar_image_env();
        for (name, value) in &image {
            eprintln!("sidecar environment from the image's Dockerfile: {name}={value}");
        }
        let env: Vec<_> = image.into_iter().chain(env.iter().cloned()).collect();
        Self::spawn(program, args, &env, log)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.inner.try_wait().ok().flatten()
    }

    /// Stops it as the kubelet does: SIGTERM, so the process drains and exits cleanly (and
    /// a profiler wrapping it, or an instrumented build, writes its output), SIGKILL after
    /// `grace`. Its exit status, or `None` when it had to be killed. Blocks.
    pub fn terminate(&mut self, grace: std::time::Duration) -> Option<std::process::ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.inner.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.inner.kill();
        let _ = self.inner.wait();
        None
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.terminate(std::time::Duration::from_secs(10));
    }
}

/// The image's Dockerfile, read at build time for the sidecar stage's `ENV` lines.
const DOCKERFILE: &str = include_str!("../../../Dockerfile");

/// The `ENV NAME=value` lines of `dockerfile`'s `sidecar` stage (from its `FROM ... AS
/// sidecar` line to the next `FROM`).
fn stage_env(dockerfile: &str) -> Vec<(&str, &str)> {
    dockerfile
        .lines()
        .skip_while(|l| !(l.starts_with("FROM ") && l.ends_with(" AS sidecar")))
        .skip(1)
        .take_while(|l| !l.starts_with("FROM "))
        .filter_map(|l| l.strip_prefix("ENV ")?.split_once('='))
        .collect()
}

/// The `ENV NAME=value` lines of the Dockerfile's `sidecar` stage, as this crate was built
/// with them (the sidecar_image test checks that glibc takes them).
pub fn sidecar_stage_env() -> Vec<(&'static str, &'static str)> {
    stage_env(DOCKERFILE)
}

/// The environment the sidecar image gives the sidecar (its allocator setting), so a run
/// measures the sidecar as shipped; minus the names the caller's own environment sets, so
/// `GLIBC_TUNABLES= burst-rss ...` still measures glibc's defaults.
pub fn sidecar_image_env() -> Vec<(&'static str, String)> {
    sidecar_stage_env()
        .into_iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
        .map(|(name, value)| (name, value.to_owned()))
        .collect()
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Resident set size, KiB (VmRSS).
    pub rss_kib: u64,
    /// Peak resident set size so far, KiB (VmHWM).
    pub hwm_kib: u64,
    /// User plus system CPU time, clock ticks (normally 1/100 s).
    pub cpu_ticks: u64,
    /// Open file descriptors (sockets, files, the watcher's inotify).
    pub fds: u64,
}

/// Reads `/proc/<pid>`; `None` once the process is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `)` that closes the command name: utime and stime are the 12th and
    // 13th of them (fields 14 and 15 of proc(5)).
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(Sample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        cpu_ticks: ticks(11) + ticks(12),
        fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_gives_the_sidecar_its_allocator_setting() {
        let env = sidecar_stage_env();
        assert!(
            env.iter()
                .any(|(n, v)| *n == "GLIBC_TUNABLES" && v.contains("tcache_count")),
            "{env:?}"
        );
    }

    #[test]
    fn only_the_sidecar_stage_counts() {
        let dockerfile = "FROM a AS builder\nENV A=1\nFROM b AS sidecar\nENV B=2\n\
                          ENV C=x=y\nUSER 1\nFROM c AS webhook\nENV D=4\n";
        assert_eq!(stage_env(dockerfile), [("B", "2"), ("C", "x=y")]);
        assert!(stage_env("FROM b AS webhook\nENV B=2\n").is_empty());
    }
}

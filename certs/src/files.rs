//! The crate's only file I/O: writing `ca.crt`, `tls.crt` and `tls.key` into the directory
//! the webhook's TLS server reads.
//!
//! Each file is written to a temporary name in the same directory and renamed into place,
//! so a file watcher never sees a half-written PEM. The key file is created with mode 0600
//! before any byte of the key is written.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ServingCert;
use crate::error::{CertError, Result};

/// File name of the CA certificate, as in a `kubernetes.io/tls` Secret.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the serving certificate, as in a `kubernetes.io/tls` Secret.
pub const TLS_CERT_FILE: &str = "tls.crt";
/// File name of the serving key, as in a `kubernetes.io/tls` Secret.
pub const TLS_KEY_FILE: &str = "tls.key";

/// Writes `ca.crt` (from `ca_cert_pem`), `tls.crt` and `tls.key` (mode 0600) into `dir`,
/// creating `dir` if needed, and returns the three paths in that order.
///
/// The key is written before the certificate: a reader that reloads on the certificate's
/// change then finds the matching key already in place.
pub fn write_to_dir(dir: &Path, ca_cert_pem: &str, serving: &ServingCert) -> Result<[PathBuf; 3]> {
    fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let key = write_atomic(dir, TLS_KEY_FILE, serving.key_pem(), 0o600)?;
    let ca = write_atomic(dir, CA_CERT_FILE, ca_cert_pem, 0o644)?;
    let cert = write_atomic(dir, TLS_CERT_FILE, serving.cert_pem(), 0o644)?;
    Ok([ca, cert, key])
}

fn write_atomic(dir: &Path, name: &str, contents: &str, mode: u32) -> Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let wrap = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertError::Write { path, source }
    };
    // A stale temp file from a crash may have another mode; start from scratch.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(wrap(&tmp)(e)),
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    set_mode(&mut options, mode);
    let mut file = options.open(&tmp).map_err(wrap(&tmp))?;
    file.write_all(contents.as_bytes()).map_err(wrap(&tmp))?;
    file.sync_all().map_err(wrap(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(wrap(&path))?;
    Ok(path)
}

#[cfg(unix)]
fn set_mode(options: &mut OpenOptions, mode: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(mode);
}

#[cfg(not(unix))]
fn set_mode(_options: &mut OpenOptions, _mode: u32) {}

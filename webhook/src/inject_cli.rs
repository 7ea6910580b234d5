//! `holysheep-webhook inject`: offline injection of multi-document YAML, like
//! `linkerd inject`. The pod template of every annotated workload (Pod, Deployment,
//! StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob, also inside a
//! `kind: List`) gets the very patch the webhook would apply; every other document passes
//! through unchanged.
//!
//! Input is a file, stdin, or a directory (every `.yaml`, `.yml` and `.json` file in it,
//! not recursive, in name order). JSON comes out as JSON, YAML as YAML. Comments and
//! formatting are not kept (the documents are re-serialized), but key order is. It does
//! not add the opt-in annotation: only templates that carry `holysheep/inject: "true"`
//! are injected, exactly as in the cluster.
//!
//! Warnings (the webhook's, plus two only the YAML shows: `holysheep/inject` on the
//! workload instead of its pod template, and an unquoted `holysheep/*` value, which is
//! quoted in the output) are collected in the report, each prefixed with its document.

use std::fmt;
use std::io::{Read, Write};

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::Value;

use crate::annotations::{self, PREFIX};
use crate::mutation::{MutationError, OwnerRef, PodFacts, plan};
use crate::settings::Settings;
use crate::warnings::{self, Warnings};

/// Workload kinds with a pod template: (API group, kind, JSON pointer to the template).
/// A kind of another group (a CRD that happens to be called `Job`) is left alone.
const TEMPLATES: &[(&str, &str, &str)] = &[
    ("", "Pod", ""),
    ("apps", "Deployment", "/spec/template"),
    ("apps", "StatefulSet", "/spec/template"),
    ("apps", "DaemonSet", "/spec/template"),
    ("apps", "ReplicaSet", "/spec/template"),
    ("", "ReplicationController", "/spec/template"),
    ("batch", "Job", "/spec/template"),
    ("batch", "CronJob", "/spec/jobTemplate/spec/template"),
];

/// What `inject` did, for a summary on stderr.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InjectReport {
    /// Documents read (empty documents not counted).
    pub documents: usize,
    /// Pod templates injected, as `kind/name`.
    pub injected: Vec<String>,
    /// Warnings, each `document N (kind/name): ...`, for stderr.
    pub warnings: Vec<String>,
}

impl fmt::Display for InjectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} document(s), {} injected",
            self.documents,
            self.injected.len()
        )?;
        if !self.injected.is_empty() {
            write!(f, ": {}", self.injected.join(", "))?;
        }
        Ok(())
    }
}

/// Why `inject` failed; names the document (1-based) and, once known, its kind and name.
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
    /// Writing the output failed.
    #[error("failed to write the injected YAML")]
    Write(#[source] std::io::Error),
    /// A directory given to `-f` holds no manifest file.
    #[error(
        "no .yaml, .yml or .json file in directory {dir}; pass a directory of manifests, a file, or - for stdin"
    )]
    EmptyDir {
        /// The directory.
        dir: String,
    },
    /// A failure in one file of a directory; names the file.
    #[error("{file}: {inner}")]
    InFile {
        /// The file's path.
        file: String,
        /// What failed in it (shown in this message, so not also a `source`).
        inner: Box<InjectError>,
    },
    /// A JSON input (it starts with `{` or `[`) that does not parse.
    #[error("document {index} is not valid JSON")]
    Json {
        /// 1-based document index.
        index: usize,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A document that is not valid YAML.
    #[error("document {index} is not valid YAML")]
    Yaml {
        /// 1-based document index.
        index: usize,
        /// The parser's error, with line and column.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A workload whose pod template is not a valid pod, or not representable as JSON.
    #[error("{location} ({object}): the pod template is not a valid Pod: {source}")]
    InvalidTemplate {
        /// `document N` or `document N, item M`.
        location: String,
        /// `Kind/name`.
        object: String,
        /// The decoding error.
        source: serde_json::Error,
    },
    /// The pod template cannot be injected (bad annotation, hostNetwork, port collision).
    #[error("{location} ({object}): {source}")]
    Mutation {
        /// `document N` or `document N, item M`.
        location: String,
        /// `Kind/name`.
        object: String,
        /// Why, with the fix.
        source: MutationError,
    },
    /// Applying the patch or writing YAML failed (a bug, not a user error).
    #[error("{location} ({object}): internal error: {message}")]
    Internal {
        /// `document N` or `document N, item M`.
        location: String,
        /// `Kind/name`.
        object: String,
        /// What failed.
        message: String,
    },
}

/// Injects every annotated pod template in `input` and returns the YAML out.
pub fn inject_yaml(input: &str, settings: &Settings) -> Result<String, InjectError> {
    inject_documents(input, settings).map(|(out, _)| out)
}

/// [`inject_yaml`] with the report (what was injected, the warnings).
pub fn inject_yaml_report(
    input: &str,
    settings: &Settings,
) -> Result<(String, InjectReport), InjectError> {
    inject_documents(input, settings)
}

/// Reads YAML from `input`, writes the injected YAML to `output`. Nothing is written when
/// any document fails, so a pipe into `kubectl apply` never applies half a file.
pub fn run(
    mut input: impl Read,
    mut output: impl Write,
    settings: &Settings,
) -> Result<InjectReport, InjectError> {
    run_named("-", &mut input, &mut output, settings)
}

/// Like [`run`], reading the file at `path`, stdin when `path` is `-`, or every manifest
/// file of a directory (see [`manifest_files`]), their outputs joined by `---`.
pub fn run_path(
    path: &str,
    mut output: impl Write,
    settings: &Settings,
) -> Result<InjectReport, InjectError> {
    if path == "-" {
        return run(std::io::stdin().lock(), output, settings);
    }
    if !std::path::Path::new(path).is_dir() {
        let mut file = std::fs::File::open(path).map_err(|source| InjectError::Read {
            source_name: path.to_owned(),
            source,
        })?;
        return run_named(path, &mut file, &mut output, settings);
    }
    let mut report = InjectReport::default();
    let mut out = String::new();
    for file in manifest_files(path)? {
        let name = file.display().to_string();
        let in_file = |inner| InjectError::InFile {
            file: name.clone(),
            inner: Box::new(inner),
        };
        let text = std::fs::read_to_string(&file).map_err(|source| InjectError::Read {
            source_name: name.clone(),
            source,
        })?;
        let (text, one) = inject_documents(&text, settings).map_err(in_file)?;
        report.documents += one.documents;
        report.injected.extend(one.injected);
        if text.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&text);
    }
    output
        .write_all(out.as_bytes())
        .map_err(InjectError::Write)?;
    Ok(report)
}

/// The `.yaml`, `.yml` and `.json` files directly in `dir`, in name order.
fn manifest_files(dir: &str) -> Result<Vec<std::path::PathBuf>, InjectError> {
    let read_err = |source| InjectError::Read {
        source_name: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let manifest = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["yaml", "yml", "json"].contains(&e.to_ascii_lowercase().as_str()));
        if manifest && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(InjectError::EmptyDir {
            dir: dir.to_owned(),
        });
    }
    files.sort();
    Ok(files)
}

fn run_named(
    name: &str,
    input: &mut dyn Read,
    output: &mut dyn Write,
    settings: &Settings,
) -> Result<InjectReport, InjectError> {
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .map_err(|source| InjectError::Read {
            source_name: name.to_owned(),
            source,
        })?;
    let (out, report) = inject_documents(&text, settings)?;
    output
        .write_all(out.as_bytes())
        .map_err(InjectError::Write)?;
    Ok(report)
}

fn inject_documents(
    input: &str,
    settings: &Settings,
) -> Result<(String, InjectReport), InjectError> {
    if input.trim_start().starts_with(['{', '[']) {
        return inject_json(input, settings);
    }
    let mut report = InjectReport::default();
    let mut out = String::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let index = i + 1;
        let yaml = serde_yaml_ng::Value::deserialize(document)
            .map_err(|source| InjectError::Yaml { index, source })?;
        if yaml.is_null() {
            continue;
        }
        report.documents += 1;
        let location = format!("document {index}");
        let text = match Target::of(&yaml) {
            Target::Untouched => to_yaml(&yaml, &location, "?")?,
            Target::Workload(_) | Target::List => {
                let object = describe(&yaml);
                let mut json =
                    serde_json::to_value(&yaml).map_err(|source| InjectError::InvalidTemplate {
                        location: location.clone(),
                        object: object.clone(),
                        source,
                    })?;
                inject_object(&mut json, &location, settings, &mut report)?;
                to_yaml(&json, &location, &object)?
            }
        };
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&text);
    }
    Ok((out, report))
}

/// JSON in, JSON out: one or more JSON values (a `kubectl get -o json` output, or
/// several objects one after the other), each written back pretty-printed.
fn inject_json(input: &str, settings: &Settings) -> Result<(String, InjectReport), InjectError> {
    let mut report = InjectReport::default();
    let mut out = String::new();
    let documents = serde_json::Deserializer::from_str(input).into_iter::<Value>();
    for (i, document) in documents.enumerate() {
        let index = i + 1;
        let mut json = document.map_err(|source| InjectError::Json { index, source })?;
        report.documents += 1;
        let location = format!("document {index}");
        inject_object(&mut json, &location, settings, &mut report)?;
        let text = serde_json::to_string_pretty(&json).map_err(|error| InjectError::Internal {
            location: location.clone(),
            object: describe(&json),
            message: format!("failed to write JSON: {error}"),
        })?;
        out.push_str(&text);
        out.push('\n');
    }
    Ok((out, report))
}

/// What a document is, as far as injection goes.
enum Target {
    /// A workload; the pointer to its pod template.
    Workload(&'static str),
    /// A `kind: List` whose items may be workloads.
    List,
    /// Anything else.
    Untouched,
}

impl Target {
    fn of<V: ObjectView>(object: &V) -> Self {
        let (Some(api_version), Some(kind)) = (object.str_at("apiVersion"), object.str_at("kind"))
        else {
            return Self::Untouched;
        };
        let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
        if group.is_empty() && kind == "List" {
            return Self::List;
        }
        TEMPLATES
            .iter()
            .find(|(g, k, _)| *g == group && *k == kind)
            .map_or(Self::Untouched, |(_, _, pointer)| Self::Workload(pointer))
    }
}

/// Reads top-level string fields of a YAML or JSON object alike.
trait ObjectView {
    fn str_at(&self, key: &str) -> Option<&str>;
}

impl ObjectView for serde_yaml_ng::Value {
    fn str_at(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }
}

impl ObjectView for Value {
    fn str_at(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }
}

/// Injects one object (a workload, or every item of a List) in place.
fn inject_object(
    object: &mut Value,
    location: &str,
    settings: &Settings,
    report: &mut InjectReport,
) -> Result<(), InjectError> {
    match Target::of(&*object) {
        Target::Untouched => Ok(()),
        Target::List => {
            let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) else {
                return Ok(());
            };
            for (i, item) in items.iter_mut().enumerate() {
                let location = format!("{location}, item {}", i + 1);
                inject_object(item, &location, settings, report)?;
            }
            Ok(())
        }
        Target::Workload(pointer) => {
            let name = describe(&*object);
            let kind = object.str_at("kind").unwrap_or_default().to_owned();
            let api_version = object.str_at("apiVersion").unwrap_or_default().to_owned();
            let workload_name = object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let mut warnings = Warnings::default();
            if !pointer.is_empty() && has_inject(object) {
                let on_template = object.pointer(pointer).is_some_and(has_inject);
                if !on_template {
                    warnings::inject_on_workload(&kind, &mut warnings);
                }
            }
            let Some(template) = object.pointer_mut(pointer) else {
                report.push_warnings(location, &name, warnings);
                return Ok(());
            };
            quote_scalars(template, &mut warnings);
            // The template's pods are owned by the workload (a Job's or CronJob's by a Job),
            // which names them: the webhook sees the same owner, or its ReplicaSet or Job.
            let owner = (!pointer.is_empty()).then(|| OwnerRef {
                api_version: api_version.clone(),
                kind: match kind.as_str() {
                    "CronJob" => "Job",
                    kind => kind,
                }
                .to_owned(),
                name: workload_name.unwrap_or_default(),
                ..OwnerRef::default()
            });
            let injected =
                inject_template(template, settings, location, &name, owner, &mut warnings);
            report.push_warnings(location, &name, warnings);
            if injected? {
                report.injected.push(name);
            }
            Ok(())
        }
    }
}

impl InjectReport {
    fn push_warnings(&mut self, location: &str, object: &str, warnings: Warnings) {
        self.warnings.extend(
            warnings
                .into_lines()
                .into_iter()
                .map(|line| format!("{location} ({object}): {line}")),
        );
    }
}

/// Whether `metadata.annotations` holds `holysheep/inject` (any value).
fn has_inject(object: &Value) -> bool {
    object
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key(annotations::INJECT))
}

/// Turns a `holysheep/*` annotation written as a YAML boolean or number into the string
/// the API server requires, with a warning: `holysheep/inject: true` is a boolean.
fn quote_scalars(template: &mut Value, warnings: &mut Warnings) {
    let Some(annotations) = template
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for (key, value) in annotations.iter_mut() {
        if !key.starts_with(PREFIX) {
            continue;
        }
        let text = match value {
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            _ => continue,
        };
        warnings::unquoted(key, &text, warnings);
        *value = Value::String(text);
    }
}

/// Applies the mutation's patch to a pod template (an object with `metadata` and `spec`,
/// as the patch's paths expect), collecting its warnings. Returns whether anything was
/// injected.
fn inject_template(
    template: &mut Value,
    settings: &Settings,
    location: &str,
    object: &str,
    owner: Option<OwnerRef>,
    warnings: &mut Warnings,
) -> Result<bool, InjectError> {
    let pod: Pod = Pod::deserialize(&*template).map_err(|source| InjectError::InvalidTemplate {
        location: location.to_owned(),
        object: object.to_owned(),
        source,
    })?;
    let mut facts = PodFacts::from_pod(&pod);
    if owner.is_some() {
        facts.owner = owner;
    }
    let plan = plan(&facts, settings);
    for line in plan.warnings {
        warnings.push(line);
    }
    let patch = plan.outcome.map_err(|source| InjectError::Mutation {
        location: location.to_owned(),
        object: object.to_owned(),
        source,
    })?;
    let Some(patch) = patch else {
        return Ok(false);
    };
    json_patch::patch(template, &patch).map_err(|error| InjectError::Internal {
        location: location.to_owned(),
        object: object.to_owned(),
        message: format!("the patch does not apply: {error}"),
    })?;
    Ok(true)
}

/// `Kind/name` for messages and the report (`generateName` when there is no name).
fn describe<V: ObjectView + Named>(object: &V) -> String {
    let kind = object.str_at("kind").unwrap_or("?");
    let name = object.name().unwrap_or("<unnamed>");
    format!("{}/{name}", kind.to_ascii_lowercase())
}

/// `metadata.name`, else `metadata.generateName`.
trait Named {
    fn name(&self) -> Option<&str>;
}

impl Named for serde_yaml_ng::Value {
    fn name(&self) -> Option<&str> {
        let metadata = self.get("metadata")?;
        metadata
            .get("name")
            .or_else(|| metadata.get("generateName"))?
            .as_str()
    }
}

impl Named for Value {
    fn name(&self) -> Option<&str> {
        let metadata = self.get("metadata")?;
        metadata
            .get("name")
            .or_else(|| metadata.get("generateName"))?
            .as_str()
    }
}

fn to_yaml(
    value: &impl serde::Serialize,
    location: &str,
    object: &str,
) -> Result<String, InjectError> {
    serde_yaml_ng::to_string(value).map_err(|error| InjectError::Internal {
        location: location.to_owned(),
        object: object.to_owned(),
        message: format!("failed to write YAML: {error}"),
    })
}

#[cfg(test)]
mod tests;

//! The kubelet's part: lays a container's Secret and ConfigMap volumes out on disk the way
//! the kubelet's atomic writer does (`..<version>/<item path>`, `..data -> ..<version>`,
//! `<item path> -> ..data/<item path>`, item modes applied), so the sidecar reads the very
//! paths the injected pod spec names, only moved under a temp dir.
//!
//! Objects come from manifests ([`Objects::from_manifests`]), so the examples in
//! `manifests/examples/` are checked against the injection too. A missing object or key is
//! an error, as it is for the kubelet (the pod would stay in ContainerCreating).
//! Not covered: `subPath`, projected and other volume types (the webhook uses neither).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, PodSpec, Secret, VolumeMount};
use serde::Deserialize;

/// Secrets and ConfigMaps of the pod's namespace: name -> key -> bytes.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl Objects {
    /// Reads every Secret (`data` and `stringData`) and ConfigMap of multi-document YAML.
    pub fn from_manifests(yaml: &str) -> Self {
        let mut objects = Self::default();
        for document in serde_yaml_ng::Deserializer::from_str(yaml) {
            let value = serde_json::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("manifest is not YAML: {e}"));
            match value.get("kind").and_then(|k| k.as_str()) {
                Some("Secret") => {
                    let secret: Secret = serde_json::from_value(value)
                        .unwrap_or_else(|e| panic!("not a Secret: {e}"));
                    let mut data: BTreeMap<String, Vec<u8>> = secret
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    // The apiserver merges stringData over data.
                    for (k, v) in secret.string_data.unwrap_or_default() {
                        data.insert(k, v.into_bytes());
                    }
                    let name = secret.metadata.name.unwrap_or_default();
                    objects.secrets.insert(name, data);
                }
                Some("ConfigMap") => {
                    let map: ConfigMap = serde_json::from_value(value)
                        .unwrap_or_else(|e| panic!("not a ConfigMap: {e}"));
                    let data = map
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    let name = map.metadata.name.unwrap_or_default();
                    objects.config_maps.insert(name, data);
                }
                _ => {}
            }
        }
        objects
    }

    /// Sets one key of a Secret (e.g. a test key over an example's placeholder).
    pub fn set_secret(&mut self, name: &str, key: &str, value: &str) {
        self.secrets
            .entry(name.to_owned())
            .or_default()
            .insert(key.to_owned(), value.as_bytes().to_vec());
    }

    /// Sets one key of a ConfigMap.
    pub fn set_config_map(&mut self, name: &str, key: &str, value: &str) {
        self.config_maps
            .entry(name.to_owned())
            .or_default()
            .insert(key.to_owned(), value.as_bytes().to_vec());
    }

    /// The value of one key of a ConfigMap, if present and UTF-8.
    pub fn config_map(&self, name: &str, key: &str) -> Option<&str> {
        std::str::from_utf8(self.config_maps.get(name)?.get(key)?).ok()
    }

    /// The value of one key of a Secret, if present.
    pub fn secret(&self, name: &str, key: &str) -> Option<&[u8]> {
        self.secrets.get(name)?.get(key).map(Vec::as_slice)
    }
}

/// A container's volumes materialized under a temp dir; dropped with it.
#[derive(Debug)]
pub struct Mounted {
    root: tempfile::TempDir,
    /// (mount path in the container, directory on this machine).
    mounts: Vec<(PathBuf, PathBuf)>,
    spec: PodSpec,
    container: Container,
    generation: u32,
}

impl Mounted {
    /// Materializes every volume `container` mounts, from `spec.volumes` and `objects`.
    pub fn mount(spec: &PodSpec, container: &Container, objects: &Objects) -> Result<Self, String> {
        let root = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let mut mounted = Self {
            root,
            mounts: Vec::new(),
            spec: spec.clone(),
            container: container.clone(),
            generation: 0,
        };
        mounted.refresh(objects)?;
        Ok(mounted)
    }

    /// Writes the volumes again from `objects` as the kubelet does when a Secret or
    /// ConfigMap changes: a new `..<version>` directory, then `..data` swapped to it by
    /// one atomic rename, so a reader never sees half an update.
    pub fn refresh(&mut self, objects: &Objects) -> Result<(), String> {
        self.generation += 1;
        let (spec, container) = (&self.spec, &self.container);
        let mut mounts = Vec::new();
        for (index, mount) in container.volume_mounts.iter().flatten().enumerate() {
            if mount.sub_path.is_some() || mount.sub_path_expr.is_some() {
                return Err(format!(
                    "volumeMount {}: subPath is not simulated",
                    mount.name
                ));
            }
            let volume = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .ok_or_else(|| format!("volumeMount {} names no volume of the pod", mount.name))?;
            let files = if let Some(source) = &volume.secret {
                let name = source.secret_name.clone().unwrap_or_default();
                let data = objects.secrets.get(&name);
                let optional = source.optional == Some(true);
                project(
                    "Secret",
                    &name,
                    data,
                    source.items.as_deref(),
                    source.default_mode,
                    optional,
                )?
            } else if let Some(source) = &volume.config_map {
                let name = source.name.clone();
                let data = objects.config_maps.get(&name);
                let optional = source.optional == Some(true);
                project(
                    "ConfigMap",
                    &name,
                    data,
                    source.items.as_deref(),
                    source.default_mode,
                    optional,
                )?
            } else {
                return Err(format!(
                    "volume {}: only secret and configMap volumes are simulated",
                    volume.name
                ));
            };
            let dir = self.root.path().join(format!("{index}-{}", volume.name));
            write_atomic_layout(&dir, &files, self.generation)
                .map_err(|e| format!("volume {}: {e}", volume.name))?;
            mounts.push((PathBuf::from(&mount.mount_path), dir));
        }
        self.mounts = mounts;
        Ok(())
    }

    /// Where the container path `path` is on this machine, through the longest mount
    /// that holds it; `None` when no mounted volume holds it.
    pub fn host_path(&self, path: &Path) -> Option<PathBuf> {
        self.mounts
            .iter()
            .filter_map(|(mount, dir)| Some((mount, dir.join(path.strip_prefix(mount).ok()?))))
            .max_by_key(|(mount, _)| mount.components().count())
            .map(|(_, host)| host)
    }
}

/// The volume mount of `container` that holds `path` (longest prefix) and the path
/// relative to it.
pub fn mount_holding<'a>(
    container: &'a Container,
    path: &Path,
) -> Option<(&'a VolumeMount, PathBuf)> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| Some((m, path.strip_prefix(&m.mount_path).ok()?.to_path_buf())))
        .max_by_key(|(m, _)| Path::new(&m.mount_path).components().count())
}

/// One file of a volume: relative path, content, mode.
type File = (PathBuf, Vec<u8>, u32);

/// The files a Secret or ConfigMap volume shows: the `items` (key -> path, own mode), or
/// every key under its own name.
fn project(
    kind: &str,
    name: &str,
    data: Option<&BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<Vec<File>, String> {
    let mode = |m: Option<i32>| u32::try_from(m.or(default_mode).unwrap_or(0o644)).unwrap_or(0o644);
    let Some(data) = data else {
        return if optional {
            Ok(Vec::new())
        } else {
            Err(format!("{kind} {name:?} not found"))
        };
    };
    let Some(items) = items else {
        return Ok(data
            .iter()
            .map(|(k, v)| (PathBuf::from(k), v.clone(), mode(None)))
            .collect());
    };
    let mut files = Vec::new();
    for item in items {
        let path = PathBuf::from(&item.path);
        if path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(format!(
                "{kind} {name:?}: item path {:?} must be relative",
                item.path
            ));
        }
        match data.get(&item.key) {
            Some(value) => files.push((path, value.clone(), mode(item.mode))),
            None if optional => {}
            None => return Err(format!("{kind} {name:?} has no key {:?}", item.key)),
        }
    }
    Ok(files)
}

/// The kubelet's atomic writer layout: files in `..<version>/`, `..data` pointing at it,
/// and a symlink per top-level entry through `..data`.
fn write_atomic_layout(dir: &Path, files: &[File], generation: u32) -> std::io::Result<()> {
    let version = format!("..2026_01_01_00_00_00.{generation:09}");
    let versioned = dir.join(&version);
    std::fs::create_dir_all(&versioned)?;
    let mut top_level = Vec::new();
    for (path, content, mode) in files {
        let target = versioned.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, content)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))?;
        if let Some(Component::Normal(first)) = path.components().next() {
            if !top_level.contains(&first) {
                top_level.push(first);
            }
        }
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&version, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    for first in top_level {
        let link = dir.join(first);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(first), link)?;
        }
    }
    Ok(())
}

//! Files in the kubelet's projected-volume layout: `<dir>/<name>` is a symlink to
//! `..data/<name>`, `..data` a symlink to a timestamped directory. An update writes a new
//! directory, points `..data_tmp` at it and renames that over `..data` (one atomic step),
//! then removes the old directory, exactly as a Secret or ConfigMap update reaches a pod.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// One volume directory holding one file.
#[derive(Debug)]
pub struct Volume {
    dir: PathBuf,
    name: String,
    generation: u64,
}

impl Volume {
    /// Creates `dir` with `name` holding `content`.
    pub fn create(dir: &Path, name: &str, content: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut volume = Self {
            dir: dir.to_owned(),
            name: name.to_owned(),
            generation: 0,
        };
        volume.update(content)?;
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name))?;
        Ok(volume)
    }

    /// The path the consumer reads (`<dir>/<name>`).
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Swaps in new content atomically.
    pub fn update(&mut self, content: &str) -> anyhow::Result<()> {
        self.generation += 1;
        let fresh = format!("..soak_{:06}", self.generation);
        let fresh_dir = self.dir.join(&fresh);
        std::fs::create_dir(&fresh_dir)?;
        std::fs::write(fresh_dir.join(&self.name), content)?;
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&fresh, &tmp)?;
        std::fs::rename(&tmp, self.dir.join("..data"))?;
        if self.generation > 1 {
            let old = self.dir.join(format!("..soak_{:06}", self.generation - 1));
            std::fs::remove_dir_all(old)?;
        }
        Ok(())
    }
}

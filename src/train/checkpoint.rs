//! Checkpoint directories written whole or not at all: files go to `<dir>.tmp`, then the old
//! directory steps aside to `<dir>.old` and the new one takes its name, so a kill at any moment
//! leaves one complete checkpoint (DESIGN "runs/<name>/checkpoints").

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Tensor;

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes a checkpoint directory: `fill` puts the files into the temporary directory it is
/// given; then the swap makes it `dir`.
pub fn write_dir<F>(dir: &Path, fill: F) -> anyhow::Result<()>
where
    F: FnOnce(&Path) -> anyhow::Result<()>,
{
    let tmp = sibling(dir, ".tmp");
    let old = sibling(dir, ".old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    fill(&tmp).with_context(|| format!("writing checkpoint {}", dir.display()))?;
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        std::fs::rename(dir, &old).with_context(|| format!("moving {} aside", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("renaming {}", tmp.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(())
}

/// The complete checkpoint at `dir`: the directory itself, or `<dir>.old` when a kill came
/// between the two renames. None when neither holds `marker`.
pub fn find_complete(dir: &Path, marker: &str) -> Option<PathBuf> {
    [dir.to_path_buf(), sibling(dir, ".old")]
        .into_iter()
        .find(|d| d.join(marker).is_file())
}

/// Saves named tensors (made contiguous) as safetensors.
pub fn save_tensors(map: &HashMap<String, Tensor>, path: &Path) -> anyhow::Result<()> {
    let mut out = HashMap::with_capacity(map.len());
    for (k, v) in map {
        out.insert(k.clone(), v.contiguous()?);
    }
    candle_core::safetensors::save(&out, path)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_keeps_one_complete_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ck");
        write_dir(&dir, |d| Ok(std::fs::write(d.join("state.json"), "1")?)).unwrap();
        write_dir(&dir, |d| Ok(std::fs::write(d.join("state.json"), "2")?)).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("state.json")).unwrap(),
            "2"
        );
        // A failing writer leaves the previous checkpoint in place.
        let err = write_dir(&dir, |_| anyhow::bail!("disk full"));
        assert!(err.is_err());
        assert_eq!(
            std::fs::read_to_string(dir.join("state.json")).unwrap(),
            "2"
        );
        // A kill between the renames: only .old is complete.
        std::fs::rename(&dir, root.path().join("ck.old")).unwrap();
        let found = find_complete(&dir, "state.json").unwrap();
        assert!(found.ends_with("ck.old"));
    }
}

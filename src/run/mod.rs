//! The run directory `runs/<name>/` as one type (DESIGN "The run directory is one type"):
//! every path, the record each training stage writes when it starts, the one checkpoint
//! resolver (with the `.old` fallback after a kill), and `open`, which loads the dataset, split,
//! index, ID tokens and prompts as the run trained them.

pub mod model;

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::train::{Stage, TrainConfig};
use crate::data::{Dataset, Split, SplitConfig, DEFAULT_MAX_HISTORY};
use crate::tasks::Prompts;

/// A run directory. Only paths: nothing is read or created until asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

/// What a training stage records in `train/<stage>/config.json` before step 0: everything a
/// later stage needs to see the data as this one trained on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRecord {
    /// Dataset directory (LC-Rec JSON) as given.
    pub data: PathBuf,
    /// The item index the ID tokens come from.
    pub index: PathBuf,
    /// The backbone the stage started from (`--model` as resolved).
    pub model: String,
    /// The prompt templates, inline: the run does not depend on a prompts file staying put.
    pub prompts: Prompts,
    pub train: TrainConfig,
    /// The compute dtype and, for `--dtype auto`, the GEMM probe that chose it.
    #[serde(default)]
    pub compute: Option<crate::device::DtypeChoice>,
}

/// The data of a run, as its training saw it (defaults where the run has not trained yet).
pub struct RunData {
    pub data_dir: PathBuf,
    pub ds: Dataset,
    pub split: Split,
    pub max_history: usize,
    pub index_path: PathBuf,
    /// Each item's ID tokens, dataset order.
    pub tokens: Vec<Vec<String>>,
    pub prompts: Prompts,
    /// The initial stage's record, when it has trained.
    pub trained: Option<StageRecord>,
}

/// Paths and files a caller may set instead of the run's own.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions<'a> {
    pub data: Option<&'a Path>,
    pub index: Option<&'a Path>,
    pub prompts: Option<&'a Path>,
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// `config.json`: the resolved pipeline config.
    pub fn config_path(&self) -> PathBuf {
        self.join("config.json")
    }

    pub fn stats_path(&self) -> PathBuf {
        self.join("data/stats.json")
    }

    /// Z^s.
    pub fn semantic_path(&self) -> PathBuf {
        self.join("embeddings/semantic.safetensors")
    }

    /// Z^b.
    pub fn behavior_path(&self) -> PathBuf {
        self.join("embeddings/behavior.safetensors")
    }

    /// The report folder of a behavior encoder (`din`, `sasrec`).
    pub fn behavior_report_dir(&self, encoder: &str) -> PathBuf {
        self.join("behavior").join(encoder)
    }

    /// `index/<Name>.index.json`, where `llmbs index` writes a dataset's IDs.
    pub fn index_path(&self, dataset: &str) -> PathBuf {
        self.join("index").join(format!("{dataset}.index.json"))
    }

    /// The only `index/*.index.json` of the run.
    pub fn find_index(&self) -> anyhow::Result<PathBuf> {
        let dir = self.join("index");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("no --index given and {} is not readable", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".index.json"))
            .collect();
        found.sort();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => anyhow::bail!(
                "{}: no *.index.json (run `llmbs index` or pass --index)",
                dir.display()
            ),
            _ => anyhow::bail!("{}: several *.index.json, pass --index", dir.display()),
        }
    }

    /// `checkpoints/<stage>`: the latest, resumable checkpoint.
    pub fn checkpoint_dir(&self, stage: Stage) -> PathBuf {
        self.join("checkpoints").join(stage.name())
    }

    /// `checkpoints/<stage>-best`: the best validation step.
    pub fn best_dir(&self, stage: Stage) -> PathBuf {
        self.join("checkpoints")
            .join(format!("{}-best", stage.name()))
    }

    /// `train/<stage>`: config, log, curves and report of a stage.
    pub fn train_dir(&self, stage: Stage) -> PathBuf {
        self.join("train").join(stage.name())
    }

    pub fn eval_dir(&self) -> PathBuf {
        self.join("eval")
    }

    pub fn pipeline_dir(&self) -> PathBuf {
        self.join("pipeline")
    }

    /// The complete latest checkpoint of `stage` (holding `marker`): the directory, or its
    /// `.old` twin when a kill came between the two renames of a save.
    pub fn latest_checkpoint(&self, stage: Stage, marker: &str) -> Option<PathBuf> {
        complete(&self.checkpoint_dir(stage), marker)
    }

    /// What a consumer of `stage` should use: the best checkpoint, else the latest (each with
    /// its `.old` fallback). None when the stage has left nothing complete.
    pub fn best_checkpoint(&self, stage: Stage, marker: &str) -> Option<PathBuf> {
        complete(&self.best_dir(stage), marker).or_else(|| self.latest_checkpoint(stage, marker))
    }

    /// Every directory a stage writes, for `--overwrite` (checkpoints with their `.tmp` and
    /// `.old` twins, and `train/<stage>`).
    pub fn stage_outputs(&self, stage: Stage) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for d in [self.checkpoint_dir(stage), self.best_dir(stage)] {
            v.push(sibling(&d, ".tmp"));
            v.push(sibling(&d, ".old"));
            v.push(d);
        }
        v.push(self.train_dir(stage));
        v
    }

    /// `train/<stage>/config.json`.
    pub fn record_path(&self, stage: Stage) -> PathBuf {
        self.train_dir(stage).join("config.json")
    }

    /// Writes the stage's record (before step 0).
    pub fn write_record(&self, rec: &StageRecord) -> anyhow::Result<()> {
        crate::util::write_json(&self.record_path(rec.train.stage), rec)
    }

    /// The record `stage` wrote when it started, if it has.
    pub fn record(&self, stage: Stage) -> anyhow::Result<Option<StageRecord>> {
        let p = self.record_path(stage);
        let Ok(text) = std::fs::read_to_string(&p) else {
            return Ok(None);
        };
        let rec: StageRecord =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
        Ok(Some(rec))
    }

    /// Loads the run's data as its initial stage trained on it: the recorded dataset,
    /// history cap, index and prompts. `opt` may name them where the run has no record; where it
    /// has one, a different choice is refused (a model is only meaningful with its own IDs).
    pub fn open(&self, opt: &OpenOptions) -> anyhow::Result<RunData> {
        let trained = self.record(Stage::Initial)?;
        let run = self.root.display();
        let data_dir = match (&trained, opt.data) {
            (Some(r), Some(d)) => {
                same_dir(&r.data, d).with_context(|| format!("--data for run {run}"))?;
                d.to_path_buf()
            }
            (Some(r), None) => r.data.clone(),
            (None, Some(d)) => d.to_path_buf(),
            (None, None) => anyhow::bail!(
                "{run} has not trained (no {}): pass --data",
                self.record_path(Stage::Initial).display()
            ),
        };
        let index_path = match (&trained, opt.index) {
            (Some(r), Some(i)) if !same_file(&r.index, i) => anyhow::bail!(
                "--index {}: run {run} trained with {} (its ID tokens come from that index)",
                i.display(),
                r.index.display()
            ),
            (_, Some(i)) => i.to_path_buf(),
            (Some(r), None) => r.index.clone(),
            (None, None) => self.find_index()?,
        };
        let prompts = match (&trained, opt.prompts) {
            (Some(_), Some(p)) => anyhow::bail!(
                "--prompts {}: run {run} trained with the prompts recorded in {}",
                p.display(),
                self.record_path(Stage::Initial).display()
            ),
            (Some(r), None) => r.prompts.clone(),
            (None, Some(p)) => Prompts::load(p)?,
            (None, None) => Prompts::embedded()?,
        };
        let max_history = trained
            .as_ref()
            .map_or(DEFAULT_MAX_HISTORY, |r| r.train.max_history);
        RunData::load(&data_dir, &index_path, prompts, max_history, trained)
    }
}

impl RunData {
    /// Loads a dataset, its leave-one-out split with `max_history`, and the items' ID tokens
    /// from `index_path`.
    pub fn load(
        data_dir: &Path,
        index_path: &Path,
        prompts: Prompts,
        max_history: usize,
        trained: Option<StageRecord>,
    ) -> anyhow::Result<Self> {
        let ds = Dataset::load_lcrec(data_dir)?;
        let split = ds
            .split(&SplitConfig { max_history })
            .with_context(|| format!("splitting {}", data_dir.display()))?;
        let (index, report) = crate::index::load_external(index_path, &ds)?;
        if report.disambiguation.collisions > 0 {
            eprintln!("{report}");
        }
        let tokens = (0..index.len()).map(|i| index.id_strings(i)).collect();
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            ds,
            split,
            max_history,
            index_path: index_path.to_path_buf(),
            tokens,
            prompts,
            trained,
        })
    }
}

fn complete(dir: &Path, marker: &str) -> Option<PathBuf> {
    [dir.to_path_buf(), sibling(dir, ".old")]
        .into_iter()
        .find(|d| d.join(marker).is_file())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Two dataset directories are the same when they resolve to one place, or (the data moved)
/// when their interaction and item files are byte-identical in size and name.
fn same_dir(recorded: &Path, given: &Path) -> anyhow::Result<()> {
    if same_file(recorded, given) {
        return Ok(());
    }
    let listing = |d: &Path| -> Option<Vec<(String, u64)>> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(d)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| {
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().ok()?.len(),
                ))
            })
            .collect();
        v.sort();
        Some(v)
    };
    match (listing(recorded), listing(given)) {
        (Some(a), Some(b)) if a == b => Ok(()),
        _ => anyhow::bail!(
            "{} is not the dataset the run trained on ({})",
            given.display(),
            recorded.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_checkpoint_falls_back_to_old_then_latest() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path());
        let put = |d: PathBuf| {
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("model.safetensors"), b"").unwrap();
        };
        assert_eq!(
            run.best_checkpoint(Stage::Initial, "model.safetensors"),
            None
        );
        // A kill between the two renames of the latest checkpoint: only `initial.old` is whole.
        put(sibling(&run.checkpoint_dir(Stage::Initial), ".old"));
        assert!(run
            .best_checkpoint(Stage::Initial, "model.safetensors")
            .unwrap()
            .ends_with("initial.old"));
        put(sibling(&run.best_dir(Stage::Initial), ".old"));
        assert!(run
            .best_checkpoint(Stage::Initial, "model.safetensors")
            .unwrap()
            .ends_with("initial-best.old"));
        put(run.best_dir(Stage::Initial));
        assert_eq!(
            run.best_checkpoint(Stage::Initial, "model.safetensors"),
            Some(run.best_dir(Stage::Initial))
        );
        assert_eq!(
            run.best_checkpoint(Stage::Anneal, "model.safetensors"),
            None
        );
    }
}

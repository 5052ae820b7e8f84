//! A trained behavior model read back from its report directory (`RUN/behavior/<encoder>/`:
//! `model.safetensors` beside the `report.json` whose config rebuilds it), for the
//! distillation teacher and the SASRec baseline row.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::job::MODEL_FILE;
use super::{BehaviorConfig, EncoderKind, SasRec, SasRecConfig};

/// The report fields a model is rebuilt from.
#[derive(Debug, Clone, Deserialize)]
pub struct SavedReport {
    pub items: usize,
    pub config: BehaviorConfig,
}

/// The report directory of `path`: the path itself, or the directory of a model file.
pub fn report_dir(path: &Path) -> PathBuf {
    if path.is_file() {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        path.to_path_buf()
    }
}

/// `dir/report.json`'s model fields.
pub fn read_report(dir: &Path) -> anyhow::Result<SavedReport> {
    let report = dir.join("report.json");
    let text = std::fs::read_to_string(&report)
        .with_context(|| format!("reading {}", report.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", report.display()))
}

/// The SASRec of `dir` (on the CPU), built as its report `r` says.
pub fn build_sasrec(dir: &Path, r: &SavedReport) -> anyhow::Result<SasRec> {
    let weights = dir.join(MODEL_FILE);
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
        .with_context(|| format!("reading {}", weights.display()))?;
    let b = &r.config;
    let cfg = SasRecConfig {
        n_items: r.items,
        dim: b.dim,
        max_len: b.max_history,
        blocks: b.blocks,
        heads: b.heads,
        dropout: b.dropout,
        history_bias: b.history_bias,
    };
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    SasRec::new(cfg, vb).with_context(|| format!("building SASRec from {}", weights.display()))
}

/// The SASRec at `path` (its report directory or model file), which must rank `n_items`.
pub fn load_sasrec(path: &Path, n_items: usize) -> anyhow::Result<SasRec> {
    let dir = report_dir(path);
    let r = read_report(&dir)?;
    anyhow::ensure!(
        r.config.encoder == EncoderKind::Sasrec,
        "{}: a {} model, not SASRec",
        dir.display(),
        r.config.encoder.name()
    );
    anyhow::ensure!(
        r.items == n_items,
        "{}: the SASRec ranks {} items, the run's dataset has {n_items}",
        dir.display(),
        r.items
    );
    build_sasrec(&dir, &r)
}

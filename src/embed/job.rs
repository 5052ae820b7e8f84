//! One embedding job (paper Eq. 2): a dataset's whole catalogue through the backbone into the
//! table Z^s, with a sidecar recording the model, text template, throughput and settings.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};

use super::EmbedConfig;
use crate::data::{text::ITEM_TEXT_TEMPLATE, Dataset};
use crate::device::device_name;
use crate::llm::{Loaded, ModelSource};
use crate::util::{progress_bar, write_json};

/// What to embed and where to.
#[derive(Debug, Clone)]
pub struct EmbedJob {
    pub data: PathBuf,
    /// Backbone: `default`, a .gguf, a HF directory or a Hub id.
    pub model: String,
    /// The table (`RUN/embeddings/semantic.safetensors`); a `.json` sidecar goes beside it.
    pub out: PathBuf,
    pub config: EmbedConfig,
    /// Only the first N items (quick checks, device parity).
    pub limit: Option<usize>,
}

/// The sidecar written next to an embedding table.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct EmbedSidecar {
    pub kind: String,
    pub model: String,
    pub data: String,
    pub text_template: String,
    pub n_items: usize,
    pub dim: usize,
    pub dtype: String,
    pub device: String,
    pub config: EmbedConfig,
    pub tokens: usize,
    pub seconds: f64,
    pub items_per_s: f64,
    #[serde(default)]
    pub tokens_per_s: f64,
    /// Seconds the whole catalogue would take at this speed (when `limit` embedded a part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected_seconds_all_items: Option<f64>,
    /// Peak host (and CUDA) memory of the process, loading included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory: Option<crate::memory::PeakMemory>,
    pub llmbs_version: String,
}

/// The finished job: its sidecar, the table and the dataset it came from.
pub struct Embedded {
    pub sidecar: EmbedSidecar,
    pub table: Tensor,
    pub ds: Dataset,
}

/// Embeds the catalogue and writes the table and sidecar.
pub fn embed_catalogue(job: &EmbedJob, device: &Device, dtype: DType) -> anyhow::Result<Embedded> {
    let ds = Dataset::load_lcrec(&job.data)?;
    let n = job.limit.unwrap_or(ds.items.len()).min(ds.items.len());
    let texts: Vec<String> = ds.items[..n].iter().map(|it| it.text.clone()).collect();
    let src = ModelSource::parse(&job.model)?;
    eprintln!(
        "loading {} on {} ({dtype:?})",
        src.describe(),
        device_name(device)
    );
    let mut loaded = Loaded::load(&src, device, dtype)?;
    let cfg = &job.config;
    if let Some(k) = cfg.layers {
        let n = loaded.cfg.num_hidden_layers;
        loaded.keep_layers(k).context("embed config: layers")?;
        eprintln!("layers: pooling after the first {k} of {n} decoder layers");
    }
    let model = loaded.build(device)?;
    let seqs = super::tokenize_all(&loaded.tokenizer, &texts, cfg.max_tokens)
        .with_context(|| format!("tokenizing item texts of {}", job.data.display()))?;
    let tokens: usize = seqs.iter().map(|s| s.len()).sum();
    let pb = progress_bar(n as u64, "items");
    let start = Instant::now();
    let table = super::mean_pool(&model, &seqs, cfg.batch_size, |k| pb.inc(k as u64))?;
    let secs = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    super::save_table(&job.out, &table)?;
    let dim = table.dim(1)?;
    let peak = crate::memory::peak(device);
    let all = ds.items.len();
    let projected = (n < all && n > 0).then(|| secs / n as f64 * all as f64);
    let sidecar = EmbedSidecar {
        kind: "semantic".into(),
        model: src.describe(),
        data: job.data.display().to_string(),
        text_template: ITEM_TEXT_TEMPLATE.into(),
        n_items: n,
        dim,
        dtype: format!("{dtype:?}").to_lowercase(),
        device: device_name(device),
        config: cfg.clone(),
        tokens,
        seconds: secs,
        items_per_s: n as f64 / secs,
        tokens_per_s: tokens as f64 / secs,
        projected_seconds_all_items: projected,
        peak_memory: Some(peak),
        llmbs_version: env!("CARGO_PKG_VERSION").into(),
    };
    write_json(&job.out.with_extension("json"), &sidecar)?;
    eprintln!(
        "embedded {n} items ({tokens} tokens) in {secs:.1}s: {:.1} items/s, {:.0} tokens/s -> {} [{n}, {dim}]",
        n as f64 / secs,
        tokens as f64 / secs,
        job.out.display()
    );
    eprintln!("peak memory: {}", peak.describe());
    if let Some(p) = projected {
        eprintln!(
            "all {all} items at this speed: {p:.0} s ({:.1} min)",
            p / 60.0
        );
    }
    Ok(Embedded { sidecar, table, ds })
}

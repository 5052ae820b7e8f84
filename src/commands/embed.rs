//! `llmbs embed`: the semantic item table Z^s (paper Eq. 2) for a whole catalogue.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use crate::data::{text::ITEM_TEXT_TEMPLATE, Dataset};
use crate::device::{device_name, DeviceArgs};
use crate::embed::{self, EmbedConfig};
use crate::llm::{Loaded, ModelSource};
use crate::util::{progress_bar, write_json};

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// Dataset directory (LC-Rec JSON format)
    #[arg(long)]
    pub data: PathBuf,
    /// Backbone: `default` (the fetched SmolLM2 GGUF), a .gguf file, a HF directory or a Hub id
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Output table, e.g. runs/NAME/embeddings/semantic.safetensors (a .json sidecar is written beside it)
    #[arg(long)]
    pub out: PathBuf,
    /// Sequences per forward pass
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Truncate item texts to this many tokens
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Embed only the first N items (quick checks, device parity)
    #[arg(long)]
    pub limit: Option<usize>,
    /// Afterwards, print the K nearest items of a few items and the category agreement@K
    #[arg(long)]
    pub neighbors: Option<usize>,
    #[command(flatten)]
    pub dev: DeviceArgs,
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
    /// Seconds the whole catalogue would take at this speed (when `--limit` embedded a part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected_seconds_all_items: Option<f64>,
    /// Peak host (and CUDA) memory of the run, loading included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory: Option<crate::memory::PeakMemory>,
    pub llmbs_version: String,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    let (device, dtype) = args.dev.resolve()?;
    let ds = Dataset::load_lcrec(&args.data)?;
    let n = args.limit.unwrap_or(ds.items.len()).min(ds.items.len());
    let texts: Vec<String> = ds.items[..n].iter().map(|it| it.text.clone()).collect();
    let src = ModelSource::parse(&args.model)?;
    eprintln!(
        "loading {} on {} ({dtype:?})",
        src.describe(),
        device_name(&device)
    );
    let loaded = Loaded::load(&src, &device, dtype)?;
    let model = loaded.build(&device)?;
    let cfg = EmbedConfig {
        batch_size: args.batch,
        max_tokens: args.max_tokens,
    };
    let seqs = embed::tokenize_all(&loaded.tokenizer, &texts, cfg.max_tokens)
        .with_context(|| format!("tokenizing item texts of {}", args.data.display()))?;
    let tokens: usize = seqs.iter().map(|s| s.len()).sum();
    let pb = progress_bar(n as u64, "items");
    let start = Instant::now();
    let table = embed::mean_pool(&model, &seqs, cfg.batch_size, |k| pb.inc(k as u64))?;
    let secs = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    embed::save_table(&args.out, &table)?;
    let dim = table.dim(1)?;
    let peak = crate::memory::peak(&device);
    let all = ds.items.len();
    let projected = (n < all && n > 0).then(|| secs / n as f64 * all as f64);
    let sidecar = EmbedSidecar {
        kind: "semantic".into(),
        model: src.describe(),
        data: args.data.display().to_string(),
        text_template: ITEM_TEXT_TEMPLATE.into(),
        n_items: n,
        dim,
        dtype: format!("{dtype:?}").to_lowercase(),
        device: device_name(&device),
        config: cfg,
        tokens,
        seconds: secs,
        items_per_s: n as f64 / secs,
        tokens_per_s: tokens as f64 / secs,
        projected_seconds_all_items: projected,
        peak_memory: Some(peak),
        llmbs_version: env!("CARGO_PKG_VERSION").into(),
    };
    write_json(&args.out.with_extension("json"), &sidecar)?;
    eprintln!(
        "embedded {n} items ({tokens} tokens) in {secs:.1}s: {:.1} items/s, {:.0} tokens/s -> {} [{n}, {dim}]",
        n as f64 / secs,
        tokens as f64 / secs,
        args.out.display()
    );
    eprintln!("peak memory: {}", peak.describe());
    if let Some(p) = projected {
        eprintln!(
            "all {all} items at this speed: {p:.0} s (about {:.1} min)",
            p / 60.0
        );
    }
    if let Some(k) = args.neighbors {
        super::inspect::report(&ds, &table, k, 5, false)?;
    }
    Ok(())
}

//! `llmbs embed`: the semantic item table Z^s (paper Eq. 2) for a whole catalogue.

use std::path::PathBuf;

use crate::device::DeviceArgs;
use crate::embed::job::{embed_catalogue, EmbedJob};
use crate::embed::EmbedConfig;

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
    /// Pool after the first K decoder layers instead of the last (all layers when absent)
    #[arg(long)]
    pub layers: Option<usize>,
    /// Embed only the first N items (quick checks, device parity)
    #[arg(long)]
    pub limit: Option<usize>,
    /// Afterwards, print the K nearest items of a few items and the category agreement@K
    #[arg(long)]
    pub neighbors: Option<usize>,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    let (device, dtype) = args.dev.resolve()?;
    let job = EmbedJob {
        data: args.data,
        model: args.model,
        out: args.out,
        config: EmbedConfig {
            batch_size: args.batch,
            max_tokens: args.max_tokens,
            layers: args.layers,
        },
        limit: args.limit,
    };
    let e = embed_catalogue(&job, &device, dtype)?;
    if let Some(k) = args.neighbors {
        super::inspect::report(&e.ds, &e.table, k, 5, false)?;
    }
    Ok(())
}

//! `llmbs ppl`: perplexity of the held-out items' plain text (title and categories), with the
//! adapter on or off, to show how much language ability training kept (paper 3.4.2).

use std::path::PathBuf;

use crate::data::{text, Dataset};
use crate::device::{device_name, DeviceArgs};
use crate::eval::perplexity;
use crate::llm::{tokenizer::encode, Loaded, ModelSource};
use crate::tasks::heldout::heldout_items;
use crate::util::write_json;

use super::checkpoint;

/// The text scored for each held-out item.
pub const PPL_TEXT_TEMPLATE: &str = "{title}. Categories: {categories}";

#[derive(clap::Args, Debug)]
pub struct PplArgs {
    /// Dataset directory (LC-Rec JSON format)
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub m: super::checkpoint::ModelArgs,
    /// Run directory: the report goes to RUN/eval/ppl-<label>.json
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Share of the catalogue held out (must match the training run's)
    #[arg(long, default_value_t = 0.02)]
    pub fraction: f64,
    /// Seed of the held-out sample (must match the training run's)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Texts per forward pass
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Truncate each text to this many tokens (BOS included)
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Report name (default: model and adapter short names, e.g. initial-anneal)
    #[arg(long)]
    pub label: Option<String>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn run(a: PplArgs) -> anyhow::Result<()> {
    let (device, dtype) = a.dev.resolve()?;
    let run = a.run.as_deref();
    let model_arg = checkpoint::resolve_model(a.m.model.as_deref(), run);
    let adapter = checkpoint::resolve_adapter(&a.m.adapter, run)?;
    let ds = Dataset::load_lcrec(&a.data)?;
    let items = heldout_items(ds.items.len(), a.fraction, a.seed);
    if items.is_empty() {
        anyhow::bail!("--fraction {}: no held-out items", a.fraction);
    }
    let src = ModelSource::parse(&model_arg)?;
    let loaded = Loaded::load(&src, &device, dtype)?;
    let mut model = loaded.build(&device)?;
    let bundled = checkpoint::merge_bundled_adapter(&mut model, &src)?;
    if let Some(dir) = &adapter {
        checkpoint::attach_adapter(&mut model, dir)?;
    }
    let bos = loaded.cfg.bos_token_id;
    let mut lists = Vec::with_capacity(items.len());
    for &i in &items {
        let it = &ds.items[i as usize];
        let body = text::item_text(&it.title, &it.categories, None, None);
        let mut ids: Vec<u32> = bos.into_iter().collect();
        ids.extend(encode(&loaded.tokenizer, &body)?);
        ids.truncate(a.max_tokens.max(2));
        lists.push(ids);
    }
    let checkpoint = checkpoint::describe_with(&src, bundled, adapter.as_deref());
    eprintln!(
        "perplexity of {} held-out item texts, {checkpoint}, on {} ({dtype:?})",
        items.len(),
        device_name(&device)
    );
    let rep = perplexity(&model, &lists, a.batch)?;
    let label = a.label.clone().unwrap_or_else(|| {
        let m = checkpoint::short_name(&model_arg, run);
        match &adapter {
            Some(p) => format!(
                "{m}-{}",
                checkpoint::short_name(&p.display().to_string(), run)
            ),
            None => m,
        }
    });
    let report = serde_json::json!({
        "label": label, "checkpoint": checkpoint, "model": src.describe(),
        "adapter": adapter.as_ref().map(|p| p.display().to_string()),
        "data": a.data.display().to_string(), "dataset": ds.name,
        "heldout_fraction": a.fraction, "heldout_seed": a.seed, "items": items.len(),
        "text_template": PPL_TEXT_TEMPLATE, "bos": bos.is_some(), "max_tokens": a.max_tokens,
        "texts": rep.texts, "tokens": rep.tokens, "nll": rep.nll, "ppl": rep.ppl,
        "seconds": rep.seconds, "device": device_name(&device),
        "dtype": format!("{dtype:?}").to_lowercase(),
    });
    if let Some(r) = run {
        let path = r.join("eval").join(format!("ppl-{label}.json"));
        write_json(&path, &report)?;
        eprintln!("wrote {}", path.display());
    }
    if a.json {
        println!("{report}");
    } else {
        println!(
            "{label}: perplexity {:.3} (NLL {:.4} nats/token) over {} tokens of {} held-out item texts ({checkpoint}), {:.1}s",
            rep.ppl, rep.nll, rep.tokens, rep.texts, rep.seconds
        );
    }
    Ok(())
}

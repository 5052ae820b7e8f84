//! `llmbs ppl`: perplexity of the held-out items' plain text (title and categories), with the
//! adapter on or off, to show how much language ability training kept (paper 3.4.2).

use std::path::PathBuf;

use crate::data::{text, Dataset};
use crate::device::{device_name, DeviceArgs};
use crate::eval::perplexity;
use crate::llm::{tokenizer::encode, Loaded, ModelSource};
use crate::tasks::heldout::heldout_items;
use crate::util::write_json;

use crate::run::model::{attach_adapter, describe, merge_bundled_adapter, resolve};
use crate::run::RunDir;
use crate::train::Stage;

/// The text scored for each held-out item.
pub const PPL_TEXT_TEMPLATE: &str = "{title}. Categories: {categories}";

#[derive(clap::Args, Debug)]
pub struct PplArgs {
    /// Dataset directory (LC-Rec JSON format)
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub m: super::ModelArgs,
    /// Run directory: the report goes to RUN/eval/ppl-<label>.json
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Share of the catalogue held out (default: the run's recorded heldout_fraction, else 0.02)
    #[arg(long)]
    pub fraction: Option<f64>,
    /// Seed of the held-out sample (default: the run's recorded seed, else 0)
    #[arg(long)]
    pub seed: Option<u64>,
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
    let run = a.run.as_ref().map(RunDir::new);
    let resolved = resolve(run.as_ref(), &a.m.choice())?;
    // The held-out items are the ones the run's initial stage kept out of training.
    let trained = match &run {
        Some(r) => r.record(Stage::Initial)?.map(|rec| rec.train),
        None => None,
    };
    let fraction = a
        .fraction
        .or(trained.as_ref().map(|t| t.heldout_fraction))
        .unwrap_or(0.02);
    let seed = a.seed.or(trained.as_ref().map(|t| t.seed)).unwrap_or(0);
    let ds = Dataset::load_lcrec(&a.data)?;
    let items = heldout_items(ds.items.len(), fraction, seed);
    if items.is_empty() {
        anyhow::bail!("--fraction {fraction}: no held-out items");
    }
    let src = ModelSource::parse(&resolved.model)?;
    let loaded = Loaded::load(&src, &device, dtype)?;
    let mut model = loaded.build(&device)?;
    let bundled = merge_bundled_adapter(&mut model, &src)?;
    if let Some(dir) = &resolved.adapter {
        attach_adapter(&mut model, dir)?;
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
    let checkpoint = describe(&src, bundled, resolved.adapter.as_deref());
    eprintln!(
        "perplexity of {} held-out item texts, {checkpoint}, on {} ({dtype:?})",
        items.len(),
        device_name(&device)
    );
    let rep = perplexity(&model, &lists, a.batch)?;
    let label = a.label.clone().unwrap_or_else(|| match &resolved.adapter {
        Some(_) => format!("{}-{}", resolved.model_name, resolved.adapter_name),
        None => resolved.model_name.clone(),
    });
    let report = serde_json::json!({
        "label": label, "checkpoint": checkpoint, "model": src.describe(),
        "adapter": resolved.adapter.as_ref().map(|p| p.display().to_string()),
        "data": a.data.display().to_string(), "dataset": ds.name,
        "heldout_fraction": fraction, "heldout_seed": seed, "items": items.len(),
        "text_template": PPL_TEXT_TEMPLATE, "bos": bos.is_some(), "max_tokens": a.max_tokens,
        "texts": rep.texts, "tokens": rep.tokens, "nll": rep.nll, "ppl": rep.ppl,
        "seconds": rep.seconds, "device": device_name(&device),
        "dtype": format!("{dtype:?}").to_lowercase(),
    });
    if let Some(r) = &run {
        let path = r.eval_dir().join(format!("ppl-{label}.json"));
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

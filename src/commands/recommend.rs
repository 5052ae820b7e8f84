//! `llmbs recommend`: the top-K next items for a user of the dataset or for a given history,
//! decoded by trie-constrained beam search with a run's trained model (paper 3.4.3).

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use crate::data::Dataset;
use crate::device::DeviceArgs;
use crate::eval::{beam_search_norm, Scoring};
use crate::llm::tokenizer::encode;
use crate::run::model::{load_run_model, resolve, trained_record};
use crate::run::{OpenOptions, RunDir};

#[derive(clap::Args, Debug)]
pub struct RecommendArgs {
    /// Run directory (its index and checkpoints are used)
    #[arg(long)]
    pub run: PathBuf,
    /// Dataset directory; default: the one the run's initial stage recorded
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A user of the dataset: their whole known sequence is the history
    #[arg(long, conflicts_with = "history", required_unless_present = "history")]
    pub user: Option<String>,
    /// Item ids (the dataset's keys), oldest first, comma-separated
    #[arg(long)]
    pub history: Option<String>,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Beam width (at least k)
    #[arg(long, default_value_t = 20)]
    pub beam: usize,
    #[command(flatten)]
    pub m: super::ModelArgs,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

#[derive(Debug, Serialize)]
struct Rec {
    rank: usize,
    item: String,
    title: String,
    /// Sum of the ID tokens' log-probabilities.
    score: f32,
}

/// The history as dense item indices, oldest first; unknown users or items are errors naming them.
fn history(a: &RecommendArgs, ds: &Dataset, max_history: usize) -> anyhow::Result<Vec<u32>> {
    let mut h: Vec<u32> = match (&a.user, &a.history) {
        (Some(u), _) => {
            let i = ds
                .users
                .iter()
                .position(|x| x == u)
                .with_context(|| format!("--user {u}: no such user in {}", ds.name))?;
            ds.sequences[i].clone()
        }
        (None, Some(h)) => h
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|id| {
                ds.item_index(id)
                    .with_context(|| format!("--history: unknown item id '{id}' in {}", ds.name))
            })
            .collect::<anyhow::Result<_>>()?,
        (None, None) => anyhow::bail!("give --user or --history"),
    };
    if h.is_empty() {
        anyhow::bail!("--history: no item ids");
    }
    let from = h.len().saturating_sub(max_history);
    h.drain(..from);
    Ok(h)
}

pub fn run(a: RecommendArgs) -> anyhow::Result<()> {
    let (device, dtype) = a.dev.resolve()?;
    let run = RunDir::new(&a.run);
    let d = run.open(&OpenOptions {
        data: a.data.as_deref(),
        ..Default::default()
    })?;
    let hist = history(&a, &d.ds, d.max_history)?;
    let ds = &d.ds;
    let resolved = resolve(Some(&run), &a.m.choice())?;
    let trained = trained_record(&run, &resolved, d.trained.as_ref())?;
    let rm = load_run_model(resolved, d.tokens.clone(), 0, &device, dtype)?;
    if rm.fresh_rows > 0 {
        eprintln!(
            "warning: {} has no trained ID tokens ({} added untrained): run `llmbs train` first",
            rm.src.describe(),
            rm.fresh_rows
        );
    }
    let (loaded, model, items) = (&rm.loaded, &rm.model, &rm.items);
    let prompts = &d.prompts;
    let h: Vec<&[String]> = hist
        .iter()
        .map(|&i| items.tokens[i as usize].as_slice())
        .collect();
    let prompt = encode(&loaded.tokenizer, &prompts.srt_prompt(0, &h))?;
    // Scores normalised as the evaluated model's stage trained (the item-ID tokens after the
    // item loss).
    let own = crate::eval::run::EvalConfig {
        model: a.m.choice(),
        ..Default::default()
    };
    let norm = crate::eval::run::normalize_for(&own, trained.as_ref());
    let beam = a.beam.max(a.k);
    let ranked = beam_search_norm(model, &[prompt], &items.trie, beam, Scoring::All, norm)?;
    let recs: Vec<Rec> = ranked
        .first()
        .map(|r| r.as_slice())
        .unwrap_or_default()
        .iter()
        .take(a.k)
        .enumerate()
        .map(|(n, &(i, score))| Rec {
            rank: n + 1,
            item: ds.items[i as usize].id.clone(),
            title: ds.items[i as usize].title.clone(),
            score,
        })
        .collect();
    if a.json {
        let hist_ids: Vec<&str> = hist
            .iter()
            .map(|&i| ds.items[i as usize].id.as_str())
            .collect();
        let v = serde_json::json!({
            "user": a.user, "history": hist_ids, "k": a.k,
            "model": rm.desc, "recommendations": recs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "history ({} items, most recent last): {}",
            hist.len(),
            hist.iter()
                .map(|&i| ds.items[i as usize].id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("| rank | item | score | title |\n|---:|---|---:|---|");
        for r in &recs {
            println!("| {} | {} | {:.3} | {} |", r.rank, r.item, r.score, r.title);
        }
    }
    Ok(())
}

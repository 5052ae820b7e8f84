//! Evaluation (paper 3.4.3, 4.1.2): trie-constrained beam search over all item IDs, exact
//! Recall/NDCG over full rankings, predictions and reports.

pub mod ab;
pub mod baselines;
mod baselines_md;
pub mod beam;
pub mod config;
pub mod paired;
pub mod partial;
pub mod ppl;
pub mod report;
pub mod run;
pub mod slices;

use std::time::Instant;

use serde::Serialize;
use tokenizers::Tokenizer;

use crate::data::Sample;
use crate::llm::{tokenizer::encode, Llama};
use crate::metrics::{MetricAccumulator, Metrics};
use crate::tasks::Prompts;

pub use crate::index::tokens::ItemIds;
pub use crate::index::trie::{self, Trie};
pub use beam::{
    beam_search, beam_search_norm, beam_search_with, score_all_items, Normalize, Ranked, Scoring,
};
pub use ppl::{perplexity, PplReport};

/// One user's prediction, as written to `predictions.jsonl`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Prediction {
    pub user: String,
    pub target: String,
    pub rank: Option<usize>,
    pub top: Vec<(String, f32)>,
}

/// The outcome of evaluating a set of samples.
pub struct EvalOutput {
    pub metrics: Metrics,
    pub ranked: Vec<Ranked>,
    pub seconds: f64,
}

/// Builds the SRT prompt token ids of each sample (template `template`).
pub fn prompt_ids(
    samples: &[Sample],
    items: &ItemIds,
    prompts: &Prompts,
    template: usize,
    tok: &Tokenizer,
) -> anyhow::Result<Vec<Vec<u32>>> {
    samples
        .iter()
        .map(|s| {
            let hist: Vec<&[String]> = s
                .history
                .iter()
                .map(|&i| items.tokens[i as usize].as_slice())
                .collect();
            let text = prompts.srt_prompt(template, &hist);
            Ok(encode(tok, &text)?)
        })
        .collect()
}

/// How a beam search runs: width, users per batch, what scores sum.
#[derive(Debug, Clone, Copy)]
pub struct Search {
    pub beam: usize,
    pub batch: usize,
    pub scoring: Scoring,
    pub normalize: Normalize,
}

/// Beam search for every sample in batches of `batch` users, with metrics. `on_batch` sees
/// each batch's sample indices and results as they come (progress, partial files).
pub fn evaluate(
    model: &Llama,
    prompts_ids: &[Vec<u32>],
    samples: &[Sample],
    items: &ItemIds,
    search: Search,
    mut on_batch: impl FnMut(&[usize], &[Ranked]) -> anyhow::Result<()>,
) -> anyhow::Result<EvalOutput> {
    let start = Instant::now();
    let mut acc = MetricAccumulator::default();
    let mut ranked = Vec::with_capacity(samples.len());
    // Similar prompt lengths in a batch waste less on padding.
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| (prompts_ids[i].len(), i));
    let mut results: Vec<Option<Ranked>> = vec![None; samples.len()];
    for chunk in order.chunks(search.batch.max(1)) {
        let ps: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts_ids[i].clone()).collect();
        let (trie, beam) = (&items.trie, search.beam);
        let out = beam_search_norm(model, &ps, trie, beam, search.scoring, search.normalize)?;
        on_batch(chunk, &out)?;
        for (&i, r) in chunk.iter().zip(out) {
            results[i] = Some(r);
        }
    }
    for (s, r) in samples.iter().zip(results) {
        let r = r.unwrap_or_default();
        let list: Vec<u32> = r.iter().map(|x| x.0).collect();
        acc.add(&list, s.target);
        ranked.push(r);
    }
    Ok(EvalOutput {
        metrics: acc.finish(),
        ranked,
        seconds: start.elapsed().as_secs_f64(),
    })
}

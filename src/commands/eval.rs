//! `llmbs eval`: flags into an `EvalConfig`, then `eval::run::evaluate_run` (paper 3.4.3,
//! 4.1.2).

use std::path::PathBuf;

use crate::device::DeviceArgs;
use crate::eval::run::{evaluate_run, EvalConfig, EvalJob, SplitName};
use crate::eval::{Normalize, Scoring};
use crate::run::RunDir;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Run directory: reports go to RUN/eval/<label>.{json,md}
    #[arg(long)]
    pub run: PathBuf,
    /// Dataset directory; default: the one the run's initial stage recorded
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub m: super::ModelArgs,
    /// Item index (LC-Rec format); default: the recorded one, else the only RUN/index/*.index.json
    #[arg(long)]
    pub index: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = SplitName::Test)]
    pub split: SplitName,
    /// Beam width (at least 10: the report ranks 10 items)
    #[arg(long, default_value_t = 20)]
    pub beam: usize,
    /// Users per beam-search batch
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Evaluate a seeded random sample of N users (all users without it)
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// SRT prompt template (the run's recorded prompts; 0 is the first)
    #[arg(long, default_value_t = 0)]
    pub template: usize,
    /// What a beam's score sums: all ID tokens' log-probabilities, or only the choices the trie
    /// leaves (forced tokens add nothing)
    #[arg(long, value_enum, default_value_t = Scoring::All)]
    pub scoring: Scoring,
    /// Prompt file, only for a run that has not trained (a trained run uses its recorded prompts)
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Output name (default: split, model, adapter and user sample, e.g. test-initial-best-anneal-best)
    #[arg(long)]
    pub label: Option<String>,
    /// Continue an interrupted evaluation from RUN/eval/<label>.predictions.jsonl.partial
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace an interrupted evaluation's partial predictions
    #[arg(long)]
    pub overwrite: bool,
    /// Seed of the fresh ID-token rows (an untrained backbone)
    #[arg(long, default_value_t = 0)]
    pub vocab_seed: u64,
    /// Time budget in minutes of beam search: users go in a seeded random order (--seed) and
    /// the evaluation stops after the round of 8 batches that passes it; the report covers the
    /// users done (a random sample) and says how many were planned
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// What the log-probabilities are normalised over: vocab (every token) or ids (the item-ID
    /// tokens); default: as the run's model trained (ids after the item-vocabulary loss)
    #[arg(long, value_enum)]
    pub normalize: Option<Normalize>,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let (device, dtype) = a.dev.resolve()?;
    let job = EvalJob {
        config: EvalConfig {
            split: a.split,
            beam: a.beam,
            batch: a.batch,
            limit: a.limit,
            seed: a.seed,
            model: a.m.choice(),
            template: a.template,
            scoring: a.scoring,
            label: a.label,
            vocab_seed: a.vocab_seed,
            max_minutes: a.max_minutes,
            normalize: a.normalize,
        },
        data: a.data,
        index: a.index,
        prompts: a.prompts,
        resume: a.resume,
        overwrite: a.overwrite,
        quiet: false,
    };
    evaluate_run(&RunDir::new(&a.run), &job, &device, dtype)?;
    Ok(())
}

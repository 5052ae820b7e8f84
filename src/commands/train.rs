//! `llmbs train --stage initial|anneal`: flags into a `TrainConfig` and a `StageJob`, then
//! `train::run_stage` (paper 3.4.1 and 3.4.2).

use std::path::PathBuf;

use crate::device::DeviceArgs;
use crate::run::RunDir;
use crate::train::stage::run_stage_parallel;
use crate::train::stage::saved_state;
use crate::train::{run_stage, IdInit, ReduceDType, Stage, StageJob, Start, TrainConfig, Tune};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[arg(long, value_enum)]
    pub stage: Stage,
    /// Run directory (index, embeddings; checkpoints and logs are written here)
    #[arg(long)]
    pub run: PathBuf,
    /// Dataset directory (LC-Rec JSON format); the anneal stage and --resume default to the one
    /// the initial stage recorded
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Initial stage: the backbone to start from (default, a .gguf, a HF directory or a Hub id).
    /// Anneal: default is RUN/checkpoints/initial-best (or initial)
    #[arg(long)]
    pub model: Option<String>,
    /// Item index (default: the only RUN/index/*.index.json; later stages: the recorded one)
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// JSON file with TrainConfig fields (any subset; the rest keep the stage's defaults)
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue from RUN/checkpoints/<stage>; flags that differ from its saved config are refused
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace the stage's checkpoints and logs if the run already has them
    #[arg(long)]
    pub overwrite: bool,
    /// Optimizer steps (initial 3000, anneal 200)
    #[arg(long)]
    pub steps: Option<usize>,
    /// Samples per optimizer step, the effective batch (128)
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Samples per forward/backward; gradients accumulate to --batch-size (8)
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Peak learning rate of the cosine schedule (initial 5e-5, anneal 2e-4)
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear warmup steps (initial 100, anneal 10)
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Initial stage: every weight (full) or LoRA + the grown embedding (lora)
    #[arg(long, value_enum)]
    pub tune: Option<Tune>,
    /// Start of the fresh ID-token rows: from the items' text (text) or the vocabulary mean (mean)
    #[arg(long, value_enum)]
    pub id_init: Option<IdInit>,
    /// Weight of the semantic InfoNCE term (paper lambda1, 0.1); both 0 switch GCT off
    #[arg(long)]
    pub lambda_s: Option<f64>,
    /// Weight of the behavior InfoNCE term (paper lambda2, 0.1)
    #[arg(long)]
    pub lambda_b: Option<f64>,
    /// InfoNCE temperature of GCT (0.07)
    #[arg(long)]
    pub tau: Option<f64>,
    /// Task weights, e.g. srt=2,id2text=0.25,text2id=0.25,hist_text2id=0.25,hist_id2text=0.25
    #[arg(long)]
    pub mix: Option<String>,
    /// History cap of the recommendation samples (20)
    #[arg(long)]
    pub max_history: Option<usize>,
    /// Dense SRT: one sample per window of --max-history items, every later history ID carrying
    /// loss too (all the window's prefixes in one pass; off: one sample per prefix, as the paper)
    #[arg(long)]
    pub srt_dense: bool,
    /// Validate (loss, beam-search R@10/N@10) and checkpoint every N steps
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Validation users for the beam search that picks the best checkpoint (a fixed seeded
    /// sample; 2000)
    #[arg(long)]
    pub valid_users: Option<usize>,
    /// Stop with a checkpoint after the step that passes this many minutes
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Fit the schedule to this many minutes of the whole stage: a probe times a few steps, a
    /// validation slice and a save, then the step count is chosen so that warmup, the whole
    /// cosine and the validations end inside it (replaces --steps and --eval-every; recorded)
    #[arg(long, conflicts_with_all = ["steps", "eval_every"])]
    pub budget_minutes: Option<f64>,
    /// With --budget-minutes: validation passes, evenly spaced, the last after the last step (1)
    #[arg(long, requires = "budget_minutes")]
    pub budget_validations: Option<usize>,
    /// With --budget-minutes: the validations are not paid from the budget (A/B arms, whose
    /// final validation is their measurement)
    #[arg(long, requires = "budget_minutes")]
    pub budget_excludes_validation: bool,
    /// Seed of the sample plan, templates, new rows, adapters, projectors (0)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Prompt file (default: the embedded configs/prompts.json; later stages: the recorded one)
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Recompute each decoder layer in the backward instead of keeping its activations
    #[arg(long)]
    pub checkpoint_activations: bool,
    /// Data parallelism, one rank per device: cuda:0,cuda:1,... (NCCL build) or cpu,cpu
    /// (overrides --device; several machines: docs/scale.md)
    #[arg(long)]
    pub devices: Option<String>,
    /// dtype of the data-parallel gradient sums: f32 (exact) or bf16 (half the traffic)
    #[arg(long, value_enum)]
    pub dp_reduce: Option<ReduceDType>,
    /// Initial stage: keep the first K decoder layers of the backbone (layer pruning, SLMRec)
    #[arg(long)]
    pub layers: Option<usize>,
    /// Item-vocabulary loss: item-ID targets scored by a softmax over the ID tokens only (the
    /// run's evaluations then normalise over them too)
    #[arg(long)]
    pub item_loss: bool,
    /// Initial stage: each history item's ID also brings the run's behavior vector (Z^b)
    /// through a learned projection into the input (LLaRA/CoLLM style; saved with the model)
    #[arg(long)]
    pub behavior_input: bool,
    /// Peak learning rate of the new parameters (ID-token and [CON] rows, GCT projectors);
    /// default: --lr
    #[arg(long)]
    pub lr_new: Option<f64>,
    /// Weight decay of the new parameters; default: the backbone's (0.01)
    #[arg(long)]
    pub weight_decay_new: Option<f64>,
    /// Distillation from the run's SASRec teacher (RUN/behavior/sasrec): the teacher's share of
    /// each item-ID target, in (0, 1]
    #[arg(long)]
    pub distill_weight: Option<f64>,
    /// Temperature of the teacher's softmax (1)
    #[arg(long, requires = "distill_weight")]
    pub distill_temperature: Option<f64>,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

/// The flags that were given, as a `TrainConfig` overlay.
fn flags(a: &TrainArgs) -> anyhow::Result<serde_json::Value> {
    let mut o = serde_json::Map::new();
    macro_rules! put {
        ($($f:ident),*) => { $( if let Some(x) = &a.$f { o.insert(stringify!($f).into(), serde_json::to_value(x)?); } )* };
    }
    put!(
        steps,
        batch_size,
        micro_batch,
        lr,
        warmup_steps,
        tune,
        id_init,
        lambda_s,
        lambda_b
    );
    put!(
        tau,
        max_history,
        eval_every,
        valid_users,
        max_minutes,
        seed,
        dp_reduce,
        layers,
        lr_new,
        weight_decay_new
    );
    if a.item_loss {
        o.insert("item_loss".into(), true.into());
    }
    if a.behavior_input {
        o.insert("behavior_input".into(), true.into());
    }
    if let Some(w) = a.distill_weight {
        let d = crate::train::distill::DistillConfig {
            weight: w,
            temperature: a.distill_temperature.unwrap_or(1.0),
            ..Default::default()
        };
        o.insert("distill".into(), serde_json::to_value(d)?);
    }
    if a.srt_dense {
        o.insert("srt_dense".into(), true.into());
    }
    if let Some(m) = a.budget_minutes {
        let mut b = crate::config::train::Budget::minutes(m);
        b.validations = a.budget_validations.unwrap_or(b.validations);
        b.count_validation = !a.budget_excludes_validation;
        o.insert("budget".into(), serde_json::to_value(b)?);
    }
    if a.checkpoint_activations {
        o.insert("checkpoint_activations".into(), true.into());
    }
    if let Some(m) = &a.mix {
        let pairs = crate::tasks::build::TaskMix::parse_pairs(m)?;
        let mix: serde_json::Map<String, serde_json::Value> = pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        o.insert("mix".into(), mix.into());
    }
    Ok(serde_json::Value::Object(o))
}

pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let (device, dtype, choice) = a.dev.resolve_train()?;
    let run = RunDir::new(&a.run);
    let start = match (a.resume, a.overwrite) {
        (true, _) => Start::Resume,
        (_, true) => Start::Overwrite,
        _ => Start::Fresh,
    };
    let base = match start {
        Start::Resume => saved_state(&run, a.stage)?.1.config,
        _ => TrainConfig::new(a.stage),
    };
    let job = StageJob {
        config: TrainConfig::resolve(&base, a.config.as_deref(), &flags(&a)?)?,
        data: a.data,
        model: a.model,
        index: a.index,
        prompts: a.prompts,
        start,
        quiet: false,
        dtype_choice: Some(choice),
        deadline: None,
    };
    match &a.devices {
        Some(list) => {
            let devices = list
                .split(',')
                .map(|d| crate::device::parse_device(d.trim()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            run_stage_parallel(&run, &job, &devices, dtype)?;
        }
        None => {
            run_stage(&run, &job, &device, dtype)?;
        }
    }
    Ok(())
}

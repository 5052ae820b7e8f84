//! The training stage's typed config (paper 3.4, 4.1.3): what `llmbs train` and the pipeline
//! resolve, what the run directory records in `train/<stage>/config.json` before step 0 and
//! what every checkpoint's `state.json` holds. Below `run` and `train`, which both read it.

use serde::{Deserialize, Serialize};

use crate::behavior::EncoderKind;

use crate::llm::LoraConfig;
use crate::tasks::build::{TaskMix, TextLimits};

/// Which stage a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Initial,
    Anneal,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Initial => "initial",
            Stage::Anneal => "anneal",
        }
    }
}

/// What the initial stage updates: every weight, or LoRA adapters plus the (grown) embedding
/// and head, as PEFT's `modules_to_save` does for new tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Tune {
    Full,
    Lora,
}

/// The anneal stage's high-grade subset (paper 3.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AnnealSelect {
    /// Each user's most recent training sample (the longest history).
    LatestPerUser,
    /// Every training sample whose history holds at least `anneal_min_history` items.
    LongHistories,
}

/// How the initial stage starts the fresh item-ID token rows (`[CON]` always starts at the
/// vocabulary mean plus noise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum IdInit {
    /// The mean of the existing rows plus N(0, 0.02^2) noise (what `llmbs eval` gives an
    /// untrained model).
    Mean,
    /// Each token from its items' title and category text (`llm::vocab::init_id_rows_from_text`).
    Text,
}

/// The dtype data-parallel ranks exchange gradients in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ReduceDType {
    /// Exact sums of the f32 gradients.
    #[default]
    F32,
    /// Half the traffic; each gradient rounded to bf16 before the sum.
    Bf16,
}

impl ReduceDType {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            ReduceDType::F32 => candle_core::DType::F32,
            ReduceDType::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// Runs saved before `id_init` existed started from the mean.
fn id_init_mean() -> IdInit {
    IdInit::Mean
}

/// Every setting of a training run; the resolved value is written to the run directory before
/// step 0 and into each checkpoint's `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub stage: Stage,
    pub tune: Tune,
    /// Optimizer steps.
    pub steps: usize,
    /// Samples per optimizer step (the effective batch; paper: 128).
    pub batch_size: usize,
    /// Samples per forward/backward pass; gradients accumulate to `batch_size`.
    pub micro_batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    /// The cosine ends at `lr * min_lr_ratio`.
    pub min_lr_ratio: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip (0: off).
    pub clip_norm: f64,
    /// GCT weights (paper Eq. 7); 0 and 0 switch GCT off (no `[CON]` in the inputs).
    pub lambda_s: f64,
    pub lambda_b: f64,
    pub tau: f64,
    /// Catalogue items sampled as extra GCT negatives per micro-batch.
    pub gct_negatives: usize,
    pub mix: TaskMix,
    pub text: TextLimits,
    /// History cap of SRT samples (paper: 20).
    pub max_history: usize,
    /// Dense SRT (`tasks::dense`): one sample per window of `max_history` items with loss on
    /// every later history ID as well, i.e. all the window's prefixes in one pass. Off: one
    /// sample per prefix, loss on the target only (the paper).
    #[serde(default)]
    pub srt_dense: bool,
    /// Share of items whose text never enters training (for the perplexity check).
    pub heldout_fraction: f64,
    /// Validate (and checkpoint) every N steps, and after the last one.
    pub eval_every: usize,
    /// Validation users (a fixed seeded sample) for beam-search Recall/NDCG; 0: loss only.
    pub valid_users: usize,
    pub valid_beam: usize,
    pub valid_batch: usize,
    /// Write the resumable checkpoint every N steps (besides validation points).
    pub save_every: usize,
    /// Stop (with a checkpoint) after the step that passes this many minutes.
    pub max_minutes: Option<f64>,
    pub lora: LoraConfig,
    pub anneal_select: AnnealSelect,
    pub anneal_min_history: usize,
    /// Start of the fresh ID-token rows (initial stage, fresh runs only).
    #[serde(default = "id_init_mean")]
    pub id_init: IdInit,
    pub seed: u64,
    /// Recompute each decoder layer in the backward instead of keeping its activations
    /// (less memory, one more forward); the gradients are the same.
    #[serde(default)]
    pub checkpoint_activations: bool,
    /// The dtype data-parallel ranks sum gradients in (`--devices` with several devices).
    #[serde(default)]
    pub dp_reduce: ReduceDType,
    /// Initial stage: keep only the first K decoder layers of the backbone (then the final norm
    /// and the head), as SLMRec does; checkpoints say `num_hidden_layers = K`. None: all.
    #[serde(default)]
    pub layers: Option<usize>,
    /// Item-vocabulary loss: a target that is an item-ID token is scored by a softmax over the
    /// ID tokens only (what the trie decodes among), so those positions skip the text head;
    /// text targets keep the full vocabulary. The run's evaluations then normalise over the
    /// ID tokens too (`eval::Normalize::Ids`).
    #[serde(default)]
    pub item_loss: bool,
    /// Initial stage: each history item's ID also brings its behavior vector (the run's Z^b)
    /// through a learned projection into the input embeddings (`llm::behavior_input`); saved
    /// with the checkpoint, so later stages and evaluations use it too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub behavior_input: bool,
    /// Parameter groups: peak learning rate of the new parameters (ID-token and `[CON]` rows,
    /// GCT projectors); None: `lr`, as the backbone. Same schedule shape.
    #[serde(default)]
    pub lr_new: Option<f64>,
    /// Weight decay of the new parameters; None: `weight_decay`.
    #[serde(default)]
    pub weight_decay_new: Option<f64>,
    /// Distillation from the run's behavior teacher (`distill::DistillConfig`); None: off.
    #[serde(default)]
    pub distill: Option<DistillConfig>,
    /// A time budget: `steps` and `eval_every` are chosen by a probe so that warmup, the whole
    /// cosine and the validations end inside it (`train::budget`). None: `steps` as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// What the budget's probe measured and chose (written by the stage, never by a user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit: Option<Fit>,
}

/// A stage's time budget (`llmbs train --budget-minutes`, a config's `budget`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Minutes of the whole stage, from its start (loading and the probe included) to its last
    /// checkpoint.
    pub minutes: f64,
    /// Validation passes, evenly spaced, the last one after the last step.
    #[serde(default = "one")]
    pub validations: usize,
    /// Whether the validation passes are paid from the budget (a stage's own time) or not (an
    /// A/B arm whose final validation is its measurement, the same for every arm).
    #[serde(default = "yes")]
    pub count_validation: bool,
    /// Steps the probe times; the first two are dropped (allocation, caches).
    #[serde(default = "probe_steps")]
    pub probe_steps: usize,
    /// Share of the budget left free for the steps' spread.
    #[serde(default = "margin")]
    pub margin: f64,
    /// Whether the schedule is checked against the real steps' time, an eighth and half of the
    /// way in, and shortened or lengthened (by at most a half) to what fits at their speed
    /// (`train::schedule::refit`).
    #[serde(default = "yes")]
    pub refit: bool,
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn probe_steps() -> usize {
    12
}
fn margin() -> f64 {
    0.04
}

impl Budget {
    pub fn minutes(minutes: f64) -> Self {
        Self {
            minutes,
            validations: one(),
            count_validation: yes(),
            probe_steps: probe_steps(),
            margin: margin(),
            refit: yes(),
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let bad = |k: &str, why: &str| Err(anyhow::anyhow!("train config: budget.{k}: {why}"));
        if !(self.minutes > 0.0 && self.minutes.is_finite()) {
            return bad("minutes", "must be a positive number");
        }
        if self.validations == 0 {
            return bad(
                "validations",
                "must be > 0 (the last one follows the last step)",
            );
        }
        if self.probe_steps < 4 {
            return bad("probe_steps", "must be >= 4 (two are dropped as warm-up)");
        }
        if !(0.0..0.5).contains(&self.margin) {
            return bad("margin", "must be in [0, 0.5)");
        }
        Ok(())
    }
}

/// What a budget's probe measured on this machine and the schedule it chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fit {
    pub budget_seconds: f64,
    /// Wall time from the stage's start to the end of the probe.
    pub elapsed_seconds: f64,
    /// Steps timed (after the two dropped), their mean, min and max seconds.
    pub timed_steps: usize,
    pub step_seconds: f64,
    pub step_seconds_min: f64,
    pub step_seconds_max: f64,
    /// Building the trainer, plan and validation set again for the real run.
    pub setup_seconds: f64,
    /// One validation pass (CE plus beam search over `valid_users`), scaled from a slice.
    pub validation_seconds: f64,
    /// One checkpoint write (the best model and the resumable state).
    pub save_seconds: f64,
    /// The chosen schedule.
    pub steps: usize,
    pub eval_every: usize,
    /// The stage's predicted wall time with that schedule.
    pub planned_seconds: f64,
    /// Seconds kept free for the beam search after the stage when a deadline cut the budget
    /// (`llmbs pipeline --deadline-minutes`; `budget_seconds` is then the cut budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_reserved_seconds: Option<f64>,
    /// The last change of the schedule at a check of the real steps' time
    /// (`train::schedule::refit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refit: Option<Refit>,
}

/// A budget's schedule refit on the real steps' time: at `at_step`, the steps so far took
/// `step_seconds` each on average, and `steps` of them fit the budget (the schedule ended at
/// `from_steps` before; 0 in records older than the field: the probe's).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Refit {
    pub at_step: usize,
    pub step_seconds: f64,
    pub steps: usize,
    #[serde(default)]
    pub from_steps: usize,
}

impl TrainConfig {
    /// The paper's settings for a stage (4.1.3): AdamW 5e-5, wd 0.01, cosine with warmup,
    /// effective batch 128, lambda 0.1 each. Anneal trains only the adapter, at a higher rate.
    pub fn new(stage: Stage) -> Self {
        let anneal = stage == Stage::Anneal;
        Self {
            stage,
            tune: if anneal { Tune::Lora } else { Tune::Full },
            steps: if anneal { 200 } else { 3000 },
            batch_size: 128,
            micro_batch: 8,
            lr: if anneal { 2e-4 } else { 5e-5 },
            weight_decay: 0.01,
            warmup_steps: if anneal { 10 } else { 100 },
            min_lr_ratio: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_norm: 1.0,
            lambda_s: if anneal { 0.0 } else { 0.1 },
            lambda_b: if anneal { 0.0 } else { 0.1 },
            tau: 0.07,
            gct_negatives: 64,
            mix: if anneal {
                TaskMix::srt_only()
            } else {
                TaskMix::default()
            },
            text: TextLimits::default(),
            max_history: crate::data::DEFAULT_MAX_HISTORY,
            srt_dense: false,
            heldout_fraction: 0.02,
            eval_every: if anneal { 50 } else { 500 },
            // NDCG@10 of the validation sample picks the best checkpoint. At the level this
            // model aims for (N@10 ~0.03) its standard error is ~0.012 on 200 users, as large
            // as the differences between checkpoints; 2,000 users bring it to ~0.004 (the
            // report prints it beside each validation), ~25 s of beam search on an H200.
            valid_users: 2000,
            valid_beam: 20,
            valid_batch: 8,
            save_every: 50,
            max_minutes: None,
            lora: LoraConfig::default(),
            anneal_select: AnnealSelect::LatestPerUser,
            anneal_min_history: 10,
            id_init: IdInit::Text,
            seed: 0,
            checkpoint_activations: false,
            dp_reduce: ReduceDType::F32,
            layers: None,
            item_loss: false,
            behavior_input: false,
            lr_new: None,
            weight_decay_new: None,
            distill: None,
            budget: None,
            fit: None,
        }
    }

    /// The stage's defaults, then `file`'s keys (a JSON object, any subset of the fields; unknown
    /// keys are refused by name), then `over` (the same, e.g. from command-line flags).
    pub fn resolve(
        base: &TrainConfig,
        file: Option<&std::path::Path>,
        over: &serde_json::Value,
    ) -> anyhow::Result<TrainConfig> {
        use anyhow::Context;
        let mut v = base.overlay_base()?;
        if let Some(p) = file {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let o: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
            crate::util::overlay(&mut v, &o, "").with_context(|| format!("{}", p.display()))?;
        }
        crate::util::overlay(&mut v, over, "").context("train settings")?;
        // The stage is the caller's, whatever a file says.
        v["stage"] = serde_json::to_value(base.stage)?;
        let c: TrainConfig = serde_json::from_value(v).context("train config")?;
        c.validate()?;
        Ok(c)
    }

    /// The config as the JSON a file or flags overlay, with the optional sections that
    /// serialize only when set (so older runs' fingerprints stay) present as null.
    pub fn overlay_base(&self) -> serde_json::Result<serde_json::Value> {
        let mut v = serde_json::to_value(self)?;
        if let Some(o) = v.as_object_mut() {
            o.entry("budget").or_insert(serde_json::Value::Null);
            o.entry("behavior_input").or_insert(false.into());
        }
        Ok(v)
    }

    pub fn gct(&self) -> bool {
        self.lambda_s > 0.0 || self.lambda_b > 0.0
    }

    /// Refuses settings that cannot train, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let bad = |k: &str, why: &str| Err(anyhow::anyhow!("train config: {k}: {why}"));
        if self.steps == 0 {
            return bad("steps", "must be > 0");
        }
        if self.batch_size == 0 || self.micro_batch == 0 {
            return bad("batch_size/micro_batch", "must be > 0");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be a positive number");
        }
        if self.gct() && self.tau <= 0.0 {
            return bad("tau", "must be > 0");
        }
        if !(0.0..1.0).contains(&self.heldout_fraction) {
            return bad("heldout_fraction", "must be in [0, 1)");
        }
        if self.eval_every == 0 || self.save_every == 0 {
            return bad("eval_every/save_every", "must be > 0");
        }
        // The best checkpoint is the one of the highest validation R@10: a beam of fewer than
        // 10 items would rank it on a shorter list.
        if self.valid_users > 0 && self.valid_beam < 10 {
            return bad(
                "valid_beam",
                &format!(
                    "{}: validation ranks by R@10, so the beam must be at least 10",
                    self.valid_beam
                ),
            );
        }
        if self.stage == Stage::Anneal && self.tune != Tune::Lora {
            return bad("tune", "the anneal stage trains a LoRA adapter only");
        }
        if self.lora.r == 0 {
            return bad("lora.r", "must be > 0");
        }
        if self.layers == Some(0) {
            return bad("layers", "must be > 0 (or null for every layer)");
        }
        if self.layers.is_some() && self.stage == Stage::Anneal {
            return bad(
                "layers",
                "the anneal stage keeps the initial model's layers (prune in the initial stage)",
            );
        }
        if self.behavior_input && self.stage == Stage::Anneal {
            return bad(
                "behavior_input",
                "an option of the initial stage (the anneal stage keeps the initial model's)",
            );
        }
        if self.lr_new.is_some_and(|l| !(l > 0.0 && l.is_finite())) {
            return bad("lr_new", "must be a positive number");
        }
        if self
            .weight_decay_new
            .is_some_and(|w| !(w >= 0.0 && w.is_finite()))
        {
            return bad("weight_decay_new", "must be >= 0");
        }
        if let Some(d) = &self.distill {
            d.validate()?;
        }
        if let Some(b) = &self.budget {
            b.validate()?;
        }
        Ok(())
    }
}

/// Settings of the distillation term.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// The teacher: a behavior encoder trained into the run (`RUN/behavior/<teacher>/`, its
    /// `model.safetensors` and `report.json`). SASRec only: one forward gives its next-item
    /// distribution after every prefix, where DIN scores each (history, item) pair apart.
    pub teacher: EncoderKind,
    /// alpha, the teacher's share of each item-ID target: `(1 - alpha) onehot + alpha q`.
    pub weight: f64,
    /// Softmax temperature of the teacher's scores.
    pub temperature: f64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        Self {
            teacher: EncoderKind::Sasrec,
            weight: 0.5,
            temperature: 1.0,
        }
    }
}

impl DistillConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.teacher != EncoderKind::Sasrec {
            anyhow::bail!(
                "train config: distill.teacher: {} (only sasrec: DIN would score every item \
                 against every prefix apart)",
                self.teacher.name()
            );
        }
        if !(0.0..=1.0).contains(&self.weight) {
            anyhow::bail!("train config: distill.weight: must be in [0, 1]");
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            anyhow::bail!("train config: distill.temperature: must be > 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validation_beam_below_ten_is_refused() {
        // R@10 over fewer than 10 ranked items would pick the best checkpoint.
        let mut c = TrainConfig::new(Stage::Initial);
        c.valid_beam = 9;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("valid_beam") && err.contains("10"), "{err}");
        c.valid_beam = 10;
        c.validate().unwrap();
        // Without validation users no beam search runs, so no beam is needed.
        c.valid_beam = 1;
        c.valid_users = 0;
        c.validate().unwrap();
    }
}

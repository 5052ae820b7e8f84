//! One evaluation's settings (paper 4.1.2): the split, the beam, the user sample, the model
//! and adapter, what the scores sum and are normalised over, and the label its outputs get.
//! Below both the evaluation (`eval::run`) and its report (`eval::report`).

use serde::{Deserialize, Serialize};

use super::{Normalize, Scoring};
use crate::metrics::{NDCG_KS, RECALL_KS};
use crate::run::model::ModelChoice;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SplitName {
    Test,
    Valid,
}

impl SplitName {
    pub fn name(self) -> &'static str {
        match self {
            SplitName::Test => "test",
            SplitName::Valid => "valid",
        }
    }
}

/// One evaluation's settings (a pipeline config's `eval` entries are these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    pub split: SplitName,
    /// Beam width: the number of ranked items (at least the largest K reported, 10).
    pub beam: usize,
    /// Users per beam-search batch.
    pub batch: usize,
    /// A seeded random sample of this many users (None: all).
    pub limit: Option<usize>,
    pub seed: u64,
    pub model: ModelChoice,
    /// The SRT template of the prompts (the run's recorded prompts).
    pub template: usize,
    /// What a beam's score sums (`all` ID tokens, or only the `choices` the trie leaves).
    pub scoring: Scoring,
    /// Output name (default: split, model, adapter and sample, e.g. `test-initial-best-anneal-best`).
    pub label: Option<String>,
    /// Seed of fresh ID-token rows (an untrained backbone).
    pub vocab_seed: u64,
    /// A time budget: users are taken in a seeded random order (`seed`), in rounds of 8
    /// batches, and the evaluation stops after the round that passes it; the report covers the
    /// users done, a random sample of the planned ones.
    pub max_minutes: Option<f64>,
    /// What the scores are normalised over; None: as the model trained (the item-ID tokens
    /// for a run whose initial stage used the item-vocabulary loss, else the vocabulary).
    pub normalize: Option<Normalize>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            split: SplitName::Test,
            beam: 20,
            batch: 8,
            limit: None,
            seed: 0,
            model: ModelChoice::default(),
            template: 0,
            scoring: Scoring::All,
            label: None,
            vocab_seed: 0,
            max_minutes: None,
            normalize: None,
        }
    }
}

impl EvalConfig {
    /// Refuses settings whose report would be wrong or empty, naming the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        let k = RECALL_KS
            .iter()
            .chain(&NDCG_KS)
            .copied()
            .max()
            .unwrap_or(10);
        if self.beam < k {
            anyhow::bail!(
                "--beam {}: the report ranks {k} items (R@{k}, N@{k}), so the beam must be at least {k}",
                self.beam
            );
        }
        if self.limit == Some(0) {
            anyhow::bail!("--limit 0: no users to evaluate (leave it out for all users)");
        }
        if self.batch == 0 {
            anyhow::bail!("--batch 0: at least one user per batch");
        }
        if let Some(m) = self.max_minutes {
            if !(m > 0.0 && m.is_finite()) {
                anyhow::bail!("--max-minutes {m}: a time budget must be a positive number");
            }
        }
        Ok(())
    }
}

/// The default output name of an evaluation: split, model, adapter, user sample and any
/// non-default scoring.
pub fn default_label(c: &EvalConfig, model: &str, adapter: &str) -> String {
    let mut l = format!("{}-{model}-{adapter}", c.split.name());
    if let Some(n) = c.limit {
        l.push_str(&format!("-{n}u"));
    }
    if let Some(m) = c.max_minutes {
        l.push_str(&format!("-{m}min"));
    }
    if c.limit.is_some() || c.max_minutes.is_some() {
        l.push_str(&format!("-seed{}", c.seed));
    }
    if c.template != 0 {
        l.push_str(&format!("-t{}", c.template));
    }
    if c.scoring == Scoring::Choices {
        l.push_str("-choices");
    }
    match c.normalize {
        Some(Normalize::Ids) => l.push_str("-norm-ids"),
        Some(Normalize::Vocab) => l.push_str("-norm-vocab"),
        None => {}
    }
    l
}

/// The normalisation an evaluation uses: the asked one, else the one the run's own model
/// trained with (another `--model` is a plain language model: the vocabulary).
pub fn normalize_for(c: &EvalConfig, trained: Option<&crate::run::StageRecord>) -> Normalize {
    let own = c.model.model.is_none();
    c.normalize.unwrap_or(match trained {
        Some(r) if own && r.train.item_loss => Normalize::Ids,
        _ => Normalize::Vocab,
    })
}

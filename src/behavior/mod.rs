//! Behavior item embeddings Z^b (paper 3.2, Eq. 3): a DIN encoder (target attention over the
//! user's history) trained on ID sequences of the training split only, plus the ID-only SASRec
//! baseline measured the same way (full ranking over the whole catalogue).
//!
//! - [`din`]: the DIN model and its batched full-catalogue scorer.
//! - [`sasrec`]: causal self-attention with full cross-entropy over all items.
//! - [`batch`]: the exact training examples each encoder sees (from `Split::train` only).
//! - [`train`]: the seeded training loop with early stopping on validation.
//! - [`eval`]: top-K full ranking, metrics and the co-occurrence check of item neighbours.
//! - [`init`]: seeded weight initialisation and dropout (candle's CPU RNG cannot be seeded).

pub mod batch;
pub mod ce;
pub mod din;
pub mod eval;
pub mod init;
pub mod job;
pub mod sasrec;
pub mod saved;
pub mod train;

use serde::{Deserialize, Serialize};

pub use din::{Din, DinConfig};
pub use eval::{cooccurrence_check, evaluate, top_k, Cooccurrence, Evaluation};
pub use sasrec::{SasRec, SasRecConfig};
pub use train::{train, EpochLog, Observer, Silent, TrainOutcome};

/// Which behavior encoder to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    /// Deep Interest Network: target attention over the history (the paper's encoder, Eq. 3).
    Din,
    /// SASRec: causal self-attention, full cross-entropy over all items (ID-only baseline).
    Sasrec,
}

impl EncoderKind {
    pub fn name(self) -> &'static str {
        match self {
            EncoderKind::Din => "din",
            EncoderKind::Sasrec => "sasrec",
        }
    }
}

/// DIN's training objective over one positive and `negatives` uniformly sampled items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DinLoss {
    /// Binary cross-entropy: the positive labelled 1, each negative 0 (DIN's CTR loss).
    Bce,
    /// Sampled softmax: cross-entropy of the positive against its negatives.
    Softmax,
}

/// Everything that decides a behavior training run; written into its report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BehaviorConfig {
    pub encoder: EncoderKind,
    /// Item embedding size d_b (SASRec's hidden size too).
    pub dim: usize,
    /// Most epochs to train.
    pub epochs: usize,
    /// DIN: samples per batch. SASRec: sequences (users' windows) per batch.
    pub batch_size: usize,
    /// Adam learning rate (no weight decay).
    pub lr: f64,
    pub seed: u64,
    /// Histories (DIN) and sequences (SASRec) keep the most recent this many items.
    pub max_history: usize,
    /// Stop after this many validations without a better validation NDCG@10.
    pub patience: usize,
    /// Validate every this many epochs; 0 = never (train all epochs, keep the last weights).
    pub eval_every: usize,
    /// Validate on this many users (a seeded fixed subset) during training; 0 = all users.
    /// The reported validation and test figures always cover all users.
    pub valid_users: usize,
    /// Stop training (after the current epoch) once this many minutes have passed.
    pub max_minutes: Option<f64>,
    /// DIN: uniformly sampled negatives per positive.
    pub negatives: usize,
    /// DIN: the loss over the positive and its negatives.
    pub din_loss: DinLoss,
    /// DIN: hidden units of the activation unit (the paper's figure: 36).
    pub att_hidden: usize,
    /// SASRec: transformer blocks.
    pub blocks: usize,
    /// SASRec: attention heads (must divide `dim`).
    pub heads: usize,
    /// SASRec: learn one extra score for items already in the history (see
    /// [`SasRecConfig::history_bias`]).
    pub history_bias: bool,
    /// Dropout: SASRec on embeddings, attention weights and sublayer outputs; DIN on the
    /// looked-up embeddings.
    pub dropout: f32,
}

impl BehaviorConfig {
    /// Defaults for an encoder: d_b = 64, Adam 1e-3, histories of 20, early stopping on
    /// validation NDCG@10. DIN: BCE with 4 negatives, batch 256, validation on 2,000 users per
    /// epoch (its full-catalogue scoring is costly). SASRec: 2 blocks, 1 head, dropout 0.5,
    /// 128 sequences per batch, validation on all users.
    pub fn new(encoder: EncoderKind) -> Self {
        let din = encoder == EncoderKind::Din;
        BehaviorConfig {
            encoder,
            dim: 64,
            epochs: 200,
            batch_size: if din { 256 } else { 128 },
            lr: 1e-3,
            seed: 42,
            max_history: crate::data::DEFAULT_MAX_HISTORY,
            patience: if din { 5 } else { 10 },
            eval_every: 1,
            valid_users: if din { 2000 } else { 0 },
            max_minutes: None,
            negatives: 4,
            din_loss: DinLoss::Bce,
            att_hidden: 36,
            blocks: 2,
            heads: 1,
            dropout: 0.5,
            history_bias: !din,
        }
    }

    /// Rejects settings no model can be built from.
    pub fn validate(&self) -> Result<(), BehaviorError> {
        let bad = |msg: String| Err(BehaviorError::Config(msg));
        if self.dim == 0 || self.batch_size == 0 || self.max_history == 0 {
            return bad("dim, batch size and max history must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("learning rate {} must be positive", self.lr));
        }
        match self.encoder {
            EncoderKind::Din => {
                if self.negatives == 0 || self.att_hidden == 0 {
                    return bad("DIN needs at least 1 negative and 1 attention unit".into());
                }
            }
            EncoderKind::Sasrec => {
                if self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
                    return bad(format!(
                        "{} heads do not divide dim {}",
                        self.heads, self.dim
                    ));
                }
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        Ok(())
    }
}

/// What can go wrong building or training a behavior encoder.
#[derive(Debug, thiserror::Error)]
pub enum BehaviorError {
    #[error("behavior config: {0}")]
    Config(String),
    #[error("no training examples: every user's training part has fewer than 2 items")]
    NoTrainingData,
    #[error("loss became {0} at epoch {1}; lower the learning rate")]
    Diverged(f64, usize),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A model that ranks the whole catalogue for histories and owns an item embedding table.
pub trait Ranker {
    /// For each history (oldest first), the `k` best items over the whole catalogue, best
    /// first; ties go to the lower item index. History items are not excluded.
    fn top_k(&self, histories: &[&[u32]], k: usize) -> candle_core::Result<Vec<Vec<u32>>>;
    /// The item embedding table `[n_items, d]`.
    fn item_table(&self) -> candle_core::Result<candle_core::Tensor>;
}

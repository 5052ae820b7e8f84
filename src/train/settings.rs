//! What one optimizer step is told (schedule, loss weights, micro-batching) and what it
//! measured: below the step (`train::step`), the micro-batch (`train::micro`) and the log.

use serde::{Deserialize, Serialize};

/// The schedule and loss weights a step needs.
#[derive(Debug, Clone, Copy)]
pub struct StepConfig {
    pub lr: f64,
    pub warmup: usize,
    pub total: usize,
    pub min_lr_ratio: f64,
    pub clip_norm: f64,
    pub lambda_s: f64,
    pub lambda_b: f64,
    pub micro_batch: usize,
    pub seed: u64,
    /// Recompute each decoder layer in the backward instead of keeping its activations.
    pub checkpoint_activations: bool,
    /// Item-vocabulary loss: the item-ID token range `[a, b)`, whose targets are scored by a
    /// softmax over it only (`loss::CeMode`); None: every target over the whole vocabulary.
    pub id_rows: Option<(u32, u32)>,
    /// Distillation: the teacher's share of each ID target (used when a teacher is set).
    pub distill_alpha: f64,
}

/// What one step measured (a line of the JSONL log).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepStats {
    pub step: usize,
    pub lr: f64,
    /// What trains: the response cross-entropy (of the mixed targets with distillation) +
    /// lambda_s * gct_s + lambda_b * gct_b.
    pub loss: f64,
    /// Mean (one-hot) cross-entropy per response token.
    pub ce: f64,
    /// Mean semantic / behavior InfoNCE per SRT sample (0 without GCT).
    pub gct_s: f64,
    pub gct_b: f64,
    pub grad_norm: f64,
    pub samples: usize,
    pub tokens: usize,
    pub padded_tokens: usize,
    pub seconds: f64,
    /// Peak resident memory of the process so far, bytes (Linux).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_peak_bytes: Option<u64>,
    /// Peak device memory so far, bytes (CUDA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_peak_bytes: Option<u64>,
}

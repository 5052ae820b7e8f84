//! One optimizer step: micro-batches accumulated to the effective batch, the Eq. 7 loss,
//! clipping, the schedule and AdamW (paper 3.4.1, 4.1.3).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Result, Tensor};
use rand::SeedableRng;
use serde::Serialize;

use super::batch::{bucket, MicroBatch};
use super::loss::{response_ce_sum, Gct};
use super::mixed::MixedPrecision;
use super::optim::{cosine_lr, AdamW, Params};
use crate::llm::{Llama, Mode};
use crate::tasks::build::Encoded;

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
}

/// What one step measured (a line of the JSONL log).
#[derive(Debug, Clone, Serialize)]
pub struct StepStats {
    pub step: usize,
    pub lr: f64,
    /// ce + lambda_s * gct_s + lambda_b * gct_b.
    pub loss: f64,
    /// Mean cross-entropy per response token.
    pub ce: f64,
    /// Mean semantic / behavior InfoNCE per SRT sample (0 without GCT).
    pub gct_s: f64,
    pub gct_b: f64,
    pub grad_norm: f64,
    pub samples: usize,
    pub tokens: usize,
    pub padded_tokens: usize,
    pub seconds: f64,
}

/// The model, its trainable parameters (projectors included), the GCT head and the optimizer.
pub struct Trainer {
    pub model: Llama,
    pub params: Params,
    pub gct: Option<Gct>,
    pub opt: AdamW,
    pub cfg: StepConfig,
    /// Optimizer steps completed.
    pub step: usize,
    /// bf16 compute over the f32 variables (`--dtype bf16`); None trains in f32.
    pub mixed: Option<MixedPrecision>,
}

impl Trainer {
    /// Runs one optimizer step over `samples` (the whole effective batch). Returns None, with
    /// the parameters untouched, when `stop` is raised before the update.
    pub fn train_step(
        &mut self,
        samples: &[Encoded],
        stop: &AtomicBool,
    ) -> Result<Option<StepStats>> {
        let start = Instant::now();
        let c = self.cfg;
        let resp_tokens: usize = samples.iter().map(|s| s.loss_tokens()).sum();
        let n_gct = samples.iter().filter(|s| s.gct_item.is_some()).count();
        let mut grads: Vec<Option<Tensor>> = vec![None; self.params.vars.len()];
        let (mut ce, mut gs, mut gb) = (0f64, 0f64, 0f64);
        let (mut tokens, mut padded) = (0, 0);
        // Negatives for the contrastive terms come from the step's own seed so a resumed run
        // draws the same ones.
        let step_seed = c.seed ^ (self.step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = rand::rngs::StdRng::seed_from_u64(step_seed);
        self.model.seed_dropout(step_seed ^ 0xD0_0D);
        // bf16 on a CPU with AVX512-BF16: the f32 model with bf16 matmul inputs (llm::ops).
        let cpu_bf16 = self.mixed.as_ref().is_some_and(|m| m.dtype == DType::BF16)
            && self.model.device().is_cpu()
            && crate::llm::ops::bf16_matmul_available()
            && crate::llm::kernels::fused_enabled();
        let _bf16 = crate::llm::ops::Bf16Matmul::new(cpu_bf16);
        crate::llm::ops::allow_tf32(self.model.device());
        let low = match &self.mixed {
            Some(_) if cpu_bf16 => None,
            Some(mp) => {
                let mut m = mp.model(&self.model)?;
                m.seed_dropout(step_seed ^ 0xD0_0D);
                Some(m)
            }
            None => None,
        };
        let model = low.as_ref().unwrap_or(&self.model);
        // The fused ops add weight gradients into these buffers (llm::ops::grad).
        let bufs = self.opt.grad_buffers(&self.params)?;
        let active = bufs.activate();
        for group in bucket(samples, c.micro_batch) {
            if stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let refs: Vec<&Encoded> = group.iter().map(|&i| &samples[i]).collect();
            let mb = MicroBatch::new(&refs, model.device())?;
            tokens += mb.tokens;
            padded += mb.padded;
            let hidden = model.forward_hidden(&mb.ids, None, None, None, Mode::Train)?; // [b, t, d]
            let ce_sum = response_ce_sum(model, &hidden, &mb.at, &mb.targets)?;
            ce += ce_sum.to_scalar::<f32>()? as f64;
            let mut loss = (ce_sum / resp_tokens.max(1) as f64)?;
            if let (Some(gct), false) = (&self.gct, mb.con_at.is_empty()) {
                let h = Llama::gather(&hidden, &mb.con_at)?;
                let gl = gct.loss(&h, &mb.con_items, &mut rng)?;
                gs += gl.sem.to_scalar::<f32>()? as f64;
                gb += gl.beh.to_scalar::<f32>()? as f64;
                let w = n_gct.max(1) as f64;
                loss = ((loss + (gl.sem * (c.lambda_s / w))?)? + (gl.beh * (c.lambda_b / w))?)?;
            }
            let g = loss.backward()?;
            for (acc, var) in grads.iter_mut().zip(&self.params.vars) {
                if let Some(gi) = g.get(var.as_tensor()) {
                    *acc = Some(match acc.take() {
                        Some(a) => (a + gi)?,
                        None => gi.clone(),
                    });
                }
            }
        }
        drop(active);
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        bufs.merge(&mut grads)?;
        let lr = cosine_lr(c.lr, self.step, c.total, c.warmup, c.min_lr_ratio);
        let grad_norm = self
            .opt
            .clip_and_step(&self.params, &grads, lr, c.clip_norm)?;
        self.step += 1;
        let ce = ce / resp_tokens.max(1) as f64;
        let (gs, gb) = if n_gct > 0 {
            (gs / n_gct as f64, gb / n_gct as f64)
        } else {
            (0.0, 0.0)
        };
        Ok(Some(StepStats {
            step: self.step,
            lr,
            loss: ce + c.lambda_s * gs + c.lambda_b * gb,
            ce,
            gct_s: gs,
            gct_b: gb,
            grad_norm,
            samples: samples.len(),
            tokens,
            padded_tokens: padded,
            seconds: start.elapsed().as_secs_f64(),
        }))
    }

    /// Mean response cross-entropy of `samples` without gradients (validation loss).
    pub fn response_loss(&self, samples: &[Encoded]) -> Result<f64> {
        let (mut sum, mut n) = (0f64, 0usize);
        for group in bucket(samples, self.cfg.micro_batch.max(1) * 2) {
            let refs: Vec<&Encoded> = group.iter().map(|&i| &samples[i]).collect();
            let mb = MicroBatch::new(&refs, self.model.device())?;
            let hidden = self
                .model
                .forward_hidden(&mb.ids, None, None, None, Mode::Infer)?;
            let s = response_ce_sum(&self.model, &hidden, &mb.at, &mb.targets)?;
            sum += s.to_scalar::<f32>()? as f64;
            n += mb.targets.len();
        }
        Ok(sum / n.max(1) as f64)
    }
}

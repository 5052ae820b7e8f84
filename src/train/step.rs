//! One optimizer step: micro-batches accumulated to the effective batch, the Eq. 7 loss,
//! clipping, the schedule and AdamW (paper 3.4.1, 4.1.3).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Result};
use rand::SeedableRng;

use super::batch::{bucket, MicroBatch};
use super::dist::{agree, Communicator, Reducer};
use super::loss::{response_ce, CeMode, Gct};
use super::micro::{self, GradAcc, Norms, Sums};
use super::mixed::MixedPrecision;
use super::optim::{cosine_lr, AdamW, Params};
pub use super::settings::{StepConfig, StepStats};
use crate::llm::{Llama, Mode};
use crate::tasks::build::Encoded;

/// The other data-parallel ranks, driven from rank 0's trainer: `train::parallel` builds them
/// (`Trainer::enable_data_parallel`) and wraps the step from above; the step only hands its
/// batch over.
pub trait Ranks: Send {
    /// One step on every rank; rank 0's statistics (the global sums). None: stopped.
    fn step(
        &mut self,
        rank0: &mut Trainer,
        samples: &[Encoded],
        stop: &AtomicBool,
    ) -> Result<Option<StepStats>>;
    /// The dtype gradients travel in.
    fn reduce_dtype(&self) -> DType;
    /// Ranks in all processes.
    fn world(&self) -> usize;
    /// Whether this process holds global rank 0 (the one that validates and writes).
    fn is_leader(&self) -> bool;
    /// Tells ranks in other processes that training ended early.
    fn release(&mut self, rank0: &mut Trainer) -> Result<()>;
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
    /// The other ranks of data-parallel training (`Trainer::enable_data_parallel`); this
    /// trainer is rank 0.
    pub dp: Option<Box<dyn Ranks>>,
    /// Distillation: the behavior teacher whose soft targets join the ID targets.
    pub teacher: Option<super::distill::Teacher>,
}

impl Trainer {
    /// Runs one optimizer step over `samples` (the whole effective batch). Returns None, with
    /// the parameters untouched, when `stop` is raised before the update.
    pub fn train_step(
        &mut self,
        samples: &[Encoded],
        stop: &AtomicBool,
    ) -> Result<Option<StepStats>> {
        match self.dp.take() {
            Some(mut dp) => {
                let out = dp.step(self, samples, stop);
                self.dp = Some(dp);
                out
            }
            None => self.local_step(samples, None, stop),
        }
    }

    /// This rank's share of a step: its micro-batches (every `world`-th of the step's
    /// length-sorted micro-batches, from its rank on), the gradient all-reduce when `comm` is
    /// given, then the same clipping and AdamW update as every other rank.
    ///
    /// Every random draw of a micro-batch (GCT negatives, adapter dropout) is seeded from the
    /// step and the micro-batch's index, not from the rank, so any number of ranks computes
    /// the same loss terms as one rank; the loss is divided by the whole batch's counts.
    pub fn local_step(
        &mut self,
        samples: &[Encoded],
        comm: Option<&dyn Communicator>,
        stop: &AtomicBool,
    ) -> Result<Option<StepStats>> {
        let start = Instant::now();
        let _t = crate::llm::ops::timing::scope("step");
        let c = self.cfg;
        let norms = Norms::of(samples);
        let (rank, world) = comm.map_or((0, 1), |m| (m.rank(), m.world()));
        if let Some(m) = comm {
            if !agree(m, stop.load(Ordering::SeqCst))? {
                return Ok(None);
            }
        }
        let cpu_bf16 = self.cpu_bf16();
        let _bf16 = crate::llm::ops::Bf16Matmul::new(cpu_bf16);
        crate::llm::ops::allow_tf32(self.model.device());
        self.refresh_model(cpu_bf16)?;
        let step_seed = c.seed ^ (self.step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let groups = bucket(samples, c.micro_batch);
        let mine: Vec<usize> = (rank..groups.len()).step_by(world).collect();
        let reduce_dtype = self.dp.as_ref().map_or(DType::F32, |d| d.reduce_dtype());
        let mut reducer =
            comm.map(|_| Reducer::new(&self.params, self.model.num_layers(), reduce_dtype));
        let mut acc = GradAcc::new(self.params.vars.len());
        let mut sums = Sums::default();
        // One rank without checkpointing: the fused ops add weight gradients into buffers kept
        // across steps (llm::ops::grad). Checkpointing and data parallelism hand gradients on
        // layer by layer, so there every gradient comes through candle's autograd.
        let bufs = match comm.is_none() && !c.checkpoint_activations {
            true => Some(self.opt.grad_buffers(&self.params)?),
            false => None,
        };
        let active = bufs.as_ref().map(|b| b.activate());
        for (j, &k) in mine.iter().enumerate() {
            if comm.is_none() && stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let mb_seed = step_seed ^ (k as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407);
            let mb = self.micro_batch(samples, &groups[k])?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(mb_seed);
            let dropout_seed = mb_seed ^ 0xD0_0D;
            self.model.seed_dropout(dropout_seed);
            let s = if c.checkpoint_activations {
                let last = j + 1 == mine.len();
                let params = &self.params;
                let mut on_layer = |i: usize, acc: &mut GradAcc| match (comm, reducer.as_mut()) {
                    (Some(m), Some(r)) if last => r.layer_done(m, i, &mut acc.grads, params),
                    _ => Ok(()),
                };
                micro::checkpointed_grads(
                    &mut self.model,
                    self.gct.as_ref(),
                    &mb,
                    norms,
                    &c,
                    &mut rng,
                    dropout_seed,
                    params,
                    &mut acc,
                    &mut on_layer,
                )?
            } else {
                let (m, g) = (&self.model, self.gct.as_ref());
                micro::plain_grads(m, g, &mb, norms, &c, &mut rng, &self.params, &mut acc)?
            };
            sums.add(s);
        }
        drop(active);
        let mut grads = acc.grads;
        if let Some(b) = &bufs {
            let _t = crate::llm::ops::timing::scope("step: gradient merge");
            b.merge(&mut grads)?;
        }
        let mut stopping = stop.load(Ordering::SeqCst);
        if let (Some(m), Some(r)) = (comm, reducer.as_mut()) {
            (sums, stopping) = r.finish(m, &mut grads, &self.params, sums, stopping)?;
        }
        if stopping {
            return Ok(None);
        }
        let lr = cosine_lr(c.lr, self.step, c.total, c.warmup, c.min_lr_ratio);
        let grad_norm = {
            let _t = crate::llm::ops::timing::scope("step: clip and AdamW");
            self.opt
                .clip_and_step(&self.params, &grads, lr, c.clip_norm)?
        };
        drop(grads);
        self.step += 1;
        // Validation between steps sees the updated weights.
        self.refresh_model(cpu_bf16)?;
        Ok(Some(self.stats(
            sums,
            norms,
            lr,
            grad_norm,
            samples.len(),
            start,
        )))
    }

    /// bf16 on a CPU with AVX512-BF16: the f32 model with bf16 matmul inputs (llm::ops),
    /// where every weight trains in f32 anyway; a frozen bf16 base keeps the bf16 model
    /// (no f32 copy of it, the point of loading it in bf16).
    fn cpu_bf16(&self) -> bool {
        self.mixed
            .as_ref()
            .is_some_and(|m| m.dtype == DType::BF16 && !m.has_low_precision_frozen())
            && self.model.device().is_cpu()
            && crate::llm::ops::bf16_matmul_available()
            && crate::llm::kernels::fused_enabled()
    }

    /// The micro-batch of `samples[group]`, with the teacher's soft targets when distilling.
    fn micro_batch(&self, samples: &[Encoded], group: &[usize]) -> Result<MicroBatch> {
        let refs: Vec<&Encoded> = group.iter().map(|&i| &samples[i]).collect();
        let mut mb = MicroBatch::new(&refs, self.model.device())?;
        if let Some(t) = &self.teacher {
            mb.soft = t.soft_targets(&refs, &mb.targets)?;
        }
        Ok(mb)
    }

    /// With mixed precision, rebuilds the compute model from the (just updated) variables;
    /// `cpu_bf16` keeps it in f32 (the matmuls take bf16 inputs instead, llm::ops).
    fn refresh_model(&mut self, cpu_bf16: bool) -> Result<()> {
        if let Some(mp) = &self.mixed {
            let dtype = if cpu_bf16 { DType::F32 } else { mp.dtype };
            self.model = mp.model_in(&self.model, dtype)?;
        }
        Ok(())
    }

    fn stats(
        &self,
        sums: Sums,
        norms: Norms,
        lr: f64,
        grad_norm: f64,
        samples: usize,
        start: Instant,
    ) -> StepStats {
        let c = self.cfg;
        let ce = sums.ce / norms.resp_tokens.max(1) as f64;
        let mixed = sums.mixed / norms.resp_tokens.max(1) as f64;
        let (gs, gb) = if norms.n_gct > 0 {
            (sums.gs / norms.n_gct as f64, sums.gb / norms.n_gct as f64)
        } else {
            (0.0, 0.0)
        };
        let mem = crate::memory::peak(self.model.device());
        StepStats {
            step: self.step,
            lr,
            loss: mixed + c.lambda_s * gs + c.lambda_b * gb,
            ce,
            gct_s: gs,
            gct_b: gb,
            grad_norm,
            samples,
            tokens: sums.tokens,
            padded_tokens: sums.padded,
            seconds: start.elapsed().as_secs_f64(),
            host_peak_bytes: mem.host_peak_bytes,
            device_peak_bytes: mem.device_peak_bytes,
        }
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
            let mode = CeMode {
                id_rows: self.cfg.id_rows,
                soft: None,
            };
            sum += response_ce(&self.model, &hidden, &mb.at, &mb.targets, &mode)?.hard;
            n += mb.targets.len();
        }
        Ok(sum / n.max(1) as f64)
    }
}

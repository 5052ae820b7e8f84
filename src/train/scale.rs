//! Scale checks: the trainer's own optimizer step (mixed precision, activation checkpointing,
//! LoRA or full tuning) on random tokens for any backbone, e.g. `synthetic:llama-7b`, timed
//! and with its peak memory; and the memory a configuration needs, estimated from the shapes.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::{DType, Device};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::optim::AdamWConfig;
use super::setup::{trainer_for, trains};
use super::step::StepConfig;
use crate::config::train::{Stage, Tune};
use crate::llm::{LlamaConfig, Loaded, LoraConfig, ModelSource};
use crate::memory::{self, PeakMemory};
use crate::tasks::build::{Encoded, TaskKind};

/// What one step probe trains and on how much.
#[derive(Debug, Clone)]
pub struct StepProbe {
    pub tune: Tune,
    pub lora: LoraConfig,
    pub checkpoint_activations: bool,
    /// Sequences per step and tokens per sequence (every position carries the loss).
    pub batch: usize,
    pub seq: usize,
    /// Sequences per forward/backward pass.
    pub micro_batch: usize,
    /// Untimed steps first, then timed ones.
    pub warmup: usize,
    pub runs: usize,
    /// Learning rate of every step (constant): small for timing, larger when the losses of
    /// successive steps serve as a check of the backward and the optimizer.
    pub lr: f64,
}

/// What a step probe measured.
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    /// Seconds of each timed step.
    pub runs: Vec<f64>,
    pub tokens_per_step: usize,
    pub trainable_parameters: usize,
    pub losses: Vec<f64>,
    /// Global gradient norm of each step (before clipping).
    pub grad_norms: Vec<f64>,
    /// Peaks over loading and every step.
    pub peak: PeakMemory,
}

/// `batch` sequences of `seq` random tokens, the loss on every next token.
pub fn random_samples(vocab: usize, batch: usize, seq: usize, seed: u64) -> Vec<Encoded> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..batch)
        .map(|_| Encoded {
            kind: TaskKind::Srt,
            input: (0..seq.max(2))
                .map(|_| rng.random_range(3..vocab as u32))
                .collect(),
            prompt_len: 1,
            response_len: seq.max(2) - 1,
            gct_item: None,
            history_loss: Vec::new(),
            srt_items: Vec::new(),
        })
        .collect()
}

/// Loads `src` as the trainer would for `p.tune` and times `p.runs` optimizer steps.
pub fn probe_step(
    src: &ModelSource,
    dev: &Device,
    dtype: DType,
    p: &StepProbe,
) -> anyhow::Result<StepTiming> {
    let loaded = Loaded::load_with(src, dev, dtype, &|n| trains(Stage::Initial, p.tune, n))?;
    let cfg = StepConfig {
        lr: p.lr,
        warmup: 0,
        total: p.warmup + p.runs,
        min_lr_ratio: 1.0,
        clip_norm: 1.0,
        lambda_s: 0.0,
        lambda_b: 0.0,
        micro_batch: p.micro_batch,
        seed: 0,
        checkpoint_activations: p.checkpoint_activations,
        id_rows: None,
        distill_alpha: 0.0,
    };
    let adamw = AdamWConfig::default();
    let vocab = loaded.cfg.vocab_size;
    let mut t = trainer_for(&loaded, p.tune, &p.lora, dtype, cfg, adamw)?;
    drop(loaded);
    let samples = random_samples(vocab, p.batch, p.seq, 1);
    let stop = AtomicBool::new(false);
    let (mut runs, mut losses, mut grad_norms) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..p.warmup + p.runs {
        let start = Instant::now();
        let st = t
            .train_step(&samples, &stop)?
            .ok_or_else(|| anyhow::anyhow!("step interrupted"))?;
        dev.synchronize()?;
        losses.push(st.loss);
        grad_norms.push(st.grad_norm);
        if i >= p.warmup {
            runs.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(StepTiming {
        runs,
        tokens_per_step: p.batch * p.seq.max(2),
        trainable_parameters: t.params.count(),
        losses,
        grad_norms,
        peak: memory::peak(dev),
    })
}

/// Bytes a training configuration keeps for its weights, gradients and AdamW moments (no
/// activations): frozen weights in the compute dtype, trainable ones as f32 variables plus
/// their compute-dtype copy, an f32 gradient and two f32 moments.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryEstimate {
    pub trainable_parameters: usize,
    pub frozen_parameters: usize,
    pub bytes: u64,
}

/// [`MemoryEstimate`] of `cfg` tuned with `tune` (LoRA with `lora`) computing in `dtype`.
pub fn estimate_memory(
    cfg: &LlamaConfig,
    tune: Tune,
    lora: &LoraConfig,
    dtype: DType,
) -> MemoryEstimate {
    let total = cfg.num_params();
    let embed = cfg.vocab_size * cfg.hidden_size * if cfg.tie_word_embeddings { 1 } else { 2 };
    let (base_trainable, adapter) = match tune {
        Tune::Full => (total, 0),
        Tune::Lora => {
            let (d, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim());
            let (h, kv) = (cfg.num_attention_heads, cfg.num_kv_heads());
            let shapes = [
                ("q_proj", d, h * hd),
                ("k_proj", d, kv * hd),
                ("v_proj", d, kv * hd),
                ("o_proj", h * hd, d),
                ("gate_proj", d, i),
                ("up_proj", d, i),
                ("down_proj", i, d),
            ];
            let per_layer: usize = shapes
                .iter()
                .filter(|(n, _, _)| lora.target_modules.iter().any(|m| m == n))
                .map(|(_, inp, out)| lora.r * (inp + out))
                .sum();
            (embed, per_layer * cfg.num_hidden_layers)
        }
    };
    let frozen = total - base_trainable;
    let half = dtype.size_in_bytes() as u64;
    let copy = if dtype == DType::F32 { 0 } else { half };
    let trainable = (base_trainable + adapter) as u64;
    let bytes = frozen as u64 * half + trainable * (4 + copy + 4 + 8);
    MemoryEstimate {
        trainable_parameters: trainable as usize,
        frozen_parameters: frozen,
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_synthetic_model_takes_probe_steps_with_and_without_checkpointing() {
        let src = ModelSource::parse("synthetic:tiny").unwrap();
        for (tune, ckpt) in [(Tune::Lora, true), (Tune::Full, false)] {
            let p = StepProbe {
                tune,
                lora: LoraConfig::default(),
                checkpoint_activations: ckpt,
                batch: 3,
                seq: 9,
                micro_batch: 2,
                warmup: 1,
                runs: 2,
                lr: 1e-5,
            };
            let t = probe_step(&src, &Device::Cpu, DType::F32, &p).unwrap();
            assert_eq!(t.runs.len(), 2);
            assert_eq!(t.losses.len(), 3);
            assert_eq!(t.tokens_per_step, 27);
            assert!(t.losses.iter().all(|l| l.is_finite() && *l > 0.0));
        }
    }

    #[test]
    fn lora_in_bf16_keeps_no_f32_copy_of_the_frozen_base() {
        let src = ModelSource::parse("synthetic:tiny").unwrap();
        let tune = Tune::Lora;
        let keep = |n: &str| trains(Stage::Initial, tune, n);
        let loaded = Loaded::load_with(&src, &Device::Cpu, DType::BF16, &keep).unwrap();
        for (n, w) in &loaded.weights {
            let want = if keep(n) { DType::F32 } else { DType::BF16 };
            assert_eq!(w.dtype(), want, "{n}");
        }
        let cfg = StepConfig {
            lr: 1e-3,
            warmup: 0,
            total: 1,
            min_lr_ratio: 1.0,
            clip_norm: 1.0,
            lambda_s: 0.0,
            lambda_b: 0.0,
            micro_batch: 2,
            seed: 0,
            checkpoint_activations: true,
            id_rows: None,
            distill_alpha: 0.0,
        };
        let adamw = AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let mut t = trainer_for(
            &loaded,
            tune,
            &LoraConfig::default(),
            DType::BF16,
            cfg,
            adamw,
        )
        .unwrap();
        // Variables: the embedding (tied head) and the adapters, all f32.
        assert!(t.params.vars.iter().all(|v| v.dtype() == DType::F32));
        assert!(t
            .params
            .names
            .iter()
            .all(|n| n == "model.embed_tokens.weight" || n.contains("lora_")));
        let stop = AtomicBool::new(false);
        let samples = random_samples(512, 2, 8, 0);
        assert!(t.train_step(&samples, &stop).unwrap().is_some());
        // The compute model holds every base weight once, in bf16.
        assert!(t.model.weights().values().all(|w| w.dtype() == DType::BF16));
    }

    #[test]
    fn the_memory_estimate_counts_llama_7b() {
        let cfg = crate::llm::synthetic::config("llama-7b").unwrap();
        let full = estimate_memory(&cfg, Tune::Full, &LoraConfig::default(), DType::BF16);
        assert_eq!(full.trainable_parameters, 6_738_415_616);
        // f32 weights + bf16 copy + f32 gradient + two f32 moments: 18 bytes a parameter.
        assert_eq!(full.bytes, 6_738_415_616 * 18);
        let lora = estimate_memory(&cfg, Tune::Lora, &LoraConfig::default(), DType::BF16);
        // r = 8 on all seven projections: 8 * (4 * 2 * 4096 + 3 * (4096 + 11008)) per layer.
        let adapter = 32 * 8 * (4 * 2 * 4096 + 3 * (4096 + 11008));
        assert_eq!(lora.trainable_parameters, 2 * 32_000 * 4096 + adapter);
    }
}

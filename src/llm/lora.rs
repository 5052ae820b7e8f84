//! Linear projections with an optional LoRA adapter (paper 3.4.2, the Annealing Adapter).

use std::sync::{Arc, Mutex};

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// LoRA hyper-parameters, with the field names of PEFT's `adapter_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f32,
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 32.0,
            lora_dropout: 0.05,
            target_modules: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }
}

#[derive(Debug, Clone)]
struct LoraPair {
    a: Tensor, // [r, in]
    b: Tensor, // [out, r]
    scale: f64,
    dropout: f32,
    /// Seeded dropout masks (candle's own dropout draws from an unseeded RNG).
    rng: Option<Arc<Mutex<StdRng>>>,
}

/// A bias-free linear layer `y = x W^T (+ scale * dropout(x) A^T B^T)`.
#[derive(Debug, Clone)]
pub struct Proj {
    weight: Tensor, // [out, in]
    lora: Option<LoraPair>,
}

impl Proj {
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        Ok(Self { weight, lora: None })
    }

    pub fn from_weight(weight: Tensor) -> Self {
        Self { weight, lora: None }
    }

    /// Attaches a LoRA pair read from (or, for a `VarMap`, initialised into) `vb`, named as
    /// PEFT names them: `lora_A.weight` [r, in] (Kaiming-uniform) and `lora_B.weight` [out, r]
    /// (zeros, so a fresh adapter leaves the output unchanged).
    pub fn attach_lora(&mut self, cfg: &LoraConfig, vb: VarBuilder) -> Result<()> {
        let (out_dim, in_dim) = self.weight.dims2()?;
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a = vb.get_with_hints(
            (cfg.r, in_dim),
            "lora_A.weight",
            candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let b = vb.get_with_hints(
            (out_dim, cfg.r),
            "lora_B.weight",
            candle_nn::Init::Const(0.),
        )?;
        self.lora = Some(LoraPair {
            a,
            b,
            scale: cfg.scale(),
            dropout: cfg.lora_dropout,
            rng: None,
        });
        Ok(())
    }

    /// Draws this adapter's dropout masks from a generator seeded with `seed` (no-op without
    /// an adapter), so adapter training is reproducible.
    pub fn seed_dropout(&mut self, seed: u64) {
        if let Some(l) = &mut self.lora {
            l.rng = Some(Arc::new(Mutex::new(StdRng::seed_from_u64(seed))));
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn has_lora(&self) -> bool {
        self.lora.is_some()
    }

    /// The adapter's `(lora_A, lora_B)` tensors, when one is attached.
    pub fn lora_weights(&self) -> Option<(&Tensor, &Tensor)> {
        self.lora.as_ref().map(|l| (&l.a, &l.b))
    }

    /// Folds the adapter into the weight (`W += scale * B A`) and drops it. The product is
    /// taken in f32 so a bf16 model loses precision once, in the final cast, not in the GEMM.
    pub fn merge(&mut self) -> Result<()> {
        if let Some(l) = &self.lora {
            let dtype = self.weight.dtype();
            let (a, b) = (l.a.to_dtype(DType::F32)?, l.b.to_dtype(DType::F32)?);
            let delta = (b.matmul(&a)? * l.scale)?;
            // Assigned only once everything succeeded, so an error leaves the Proj as it was.
            self.weight = self
                .weight
                .to_dtype(DType::F32)?
                .add(&delta)?
                .to_dtype(dtype)?;
        }
        self.lora = None;
        Ok(())
    }

    /// `W + scale * B A`, the merged weight (or `W` without an adapter).
    pub fn merged_weight(&self) -> Result<Tensor> {
        match &self.lora {
            None => Ok(self.weight.clone()),
            Some(l) => self.weight.add(&(l.b.matmul(&l.a)? * l.scale)?),
        }
    }

    /// x: [..., in] -> [..., out]. `adapter` selects whether the LoRA branch runs and
    /// `train` whether its dropout is active.
    pub fn forward_with(&self, x: &Tensor, adapter: bool, train: bool) -> Result<Tensor> {
        if !(adapter && self.lora.is_some()) {
            // One 2-D GEMM over all rows (cheaper than candle's broadcast batched matmul).
            return crate::llm::ops::linear::linear(x, &self.weight);
        }
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim.max(1);
        // One 2-D GEMM over all rows: cheaper than candle's broadcast batched matmul.
        let x2 = x.reshape((rows, in_dim))?;
        let mut y = crate::llm::ops::linear::linear(&x2, &self.weight)?;
        if adapter {
            if let Some(l) = &self.lora {
                let xd = if train && l.dropout > 0.0 {
                    dropout(&x2, l.dropout, l.rng.as_deref())?
                } else {
                    x2.clone()
                };
                let delta = xd.matmul(&l.a.t()?)?.matmul(&l.b.t()?)?;
                y = (y + (delta * l.scale)?)?;
            }
        }
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = y.dim(1)?;
        y.reshape(out_dims)
    }
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, true, false)
    }
}

/// Inverted dropout of `x` with rate `p`; seeded when `rng` is given.
fn dropout(x: &Tensor, p: f32, rng: Option<&Mutex<StdRng>>) -> Result<Tensor> {
    let Some(rng) = rng else {
        return candle_nn::ops::dropout(x, p);
    };
    let mut rng = rng
        .lock()
        .map_err(|_| candle_core::Error::Msg("dropout RNG lock poisoned".into()))?;
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.random::<f32>() >= p { keep } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}

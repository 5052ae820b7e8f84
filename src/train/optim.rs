//! AdamW with decoupled weight decay (none on norms and biases), a cosine schedule with linear
//! warmup and global-norm gradient clipping (paper 4.1.3). Its state saves to safetensors so a
//! resumed run continues bit for bit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};

use crate::llm::ops::{with_cpu, GradBuffers};

mod cpu;
mod flat;
pub use cpu::bench_adamw;
use flat::Flat;

/// The per-parameter constants of one update.
#[derive(Clone, Copy)]
struct Hyper {
    lr: f64,
    wd: f64,
    bc1: f64,
    bc2: f64,
    scale: f64,
}

/// The learning rate at optimizer step `step` (0-based) of `total`: linear warmup from 0 over
/// `warmup` steps, then a cosine from `lr` down to `lr * min_ratio` at the last step.
pub fn cosine_lr(lr: f64, step: usize, total: usize, warmup: usize, min_ratio: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    let min = lr * min_ratio;
    min + (lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Whether a parameter gets weight decay: not norms, not biases (the usual LLM recipe).
pub fn decays(name: &str) -> bool {
    !(name.contains("norm") || name.ends_with(".bias") || name.ends_with("bias"))
}

/// Named trainable variables.
pub struct Params {
    pub names: Vec<String>,
    pub vars: Vec<Var>,
}

impl Params {
    pub fn count(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }
}

/// Hyper-parameters of AdamW.
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's `torch.optim.AdamW` defaults.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Parameter groups: the new parameters (item-ID and `[CON]` rows, GCT projectors) with a
/// learning rate and weight decay of their own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewGroup {
    /// Their learning rate over the backbone's at every step (the schedule's shape is shared).
    pub lr_scale: f64,
    pub weight_decay: f64,
}

/// Which part of each parameter is new: the elements from `from[i]` on (0: all of it, None:
/// none), so a grown embedding's fresh rows are a group of their own.
#[derive(Debug, Clone)]
pub struct Groups {
    pub new: NewGroup,
    pub from: Vec<Option<usize>>,
}

/// AdamW over `Params`, with first and second moments in f32.
pub struct AdamW {
    pub cfg: AdamWConfig,
    /// None: one group, every parameter at the step's rate and `cfg.weight_decay`.
    pub groups: Option<Groups>,
    pub t: usize,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Gradient buffers for the fused ops (made on first use, kept across steps).
    grads: Option<Arc<GradBuffers>>,
    /// On CUDA: every moment as one flat tensor (`m[i]`, `v[i]` are views of it), for the
    /// multi-tensor step.
    flat: Option<Flat>,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, params: &Params) -> candle_core::Result<Self> {
        if let Some(flat) = Flat::new(params)? {
            let view = |all: &Tensor, i: usize| -> candle_core::Result<Tensor> {
                let (a, b) = (flat.offsets[i] as usize, flat.offsets[i + 1] as usize);
                all.narrow(0, a, b - a)?.reshape(params.vars[i].shape())
            };
            let n = params.vars.len();
            let m = (0..n)
                .map(|i| view(&flat.m, i))
                .collect::<candle_core::Result<_>>()?;
            let v = (0..n)
                .map(|i| view(&flat.v, i))
                .collect::<candle_core::Result<_>>()?;
            return Ok(Self {
                cfg,
                groups: None,
                t: 0,
                m,
                v,
                grads: None,
                flat: Some(flat),
            });
        }
        let zeros = |v: &Var| Tensor::zeros(v.shape(), DType::F32, v.device());
        Ok(Self {
            cfg,
            groups: None,
            t: 0,
            m: params
                .vars
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
            v: params
                .vars
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
            grads: None,
            flat: None,
        })
    }

    /// Zeroed gradient buffers for `params` (the same ones every step: no allocation after
    /// the first), to [`GradBuffers::activate`] around a step's forward and backward passes.
    pub fn grad_buffers(&mut self, params: &Params) -> candle_core::Result<Arc<GradBuffers>> {
        let _t = crate::llm::ops::timing::scope("step: gradient buffers zeroed");
        match &self.grads {
            Some(g) => g.zero()?,
            None => self.grads = Some(Arc::new(GradBuffers::new(&params.vars)?)),
        }
        self.grads
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("gradient buffers".into()))
    }

    /// One update with gradients `grads[i]` for `params.vars[i]` (None: no gradient this step).
    pub fn step(
        &mut self,
        params: &Params,
        grads: &[Option<Tensor>],
        lr: f64,
    ) -> candle_core::Result<()> {
        if self.groups.is_none() && self.step_cuda(params, grads, lr, 0.0)?.is_some() {
            return Ok(());
        }
        self.step_scaled(params, grads, lr, 1.0)
    }

    /// Global-norm clipping to `max_norm` (0: none) folded into the update: the gradients are
    /// scaled inside the update's single pass instead of by a pass of their own. Returns the
    /// norm before clipping; same result as [`clip_grad_norm`] then [`AdamW::step`].
    pub fn clip_and_step(
        &mut self,
        params: &Params,
        grads: &[Option<Tensor>],
        lr: f64,
        max_norm: f64,
    ) -> candle_core::Result<f64> {
        if self.groups.is_none() {
            if let Some(norm) = self.step_cuda(params, grads, lr, max_norm)? {
                return Ok(norm);
            }
        }
        let norm = grad_norm(grads)?;
        self.step_scaled(params, grads, lr, clip_scale(norm, max_norm))?;
        Ok(norm)
    }

    /// The update with every gradient multiplied by `scale` first.
    fn step_scaled(
        &mut self,
        params: &Params,
        grads: &[Option<Tensor>],
        lr: f64,
        scale: f64,
    ) -> candle_core::Result<()> {
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (i, (var, g)) in params.vars.iter().zip(grads).enumerate() {
            let Some(g) = g else { continue };
            let wd = if decays(&params.names[i]) {
                c.weight_decay
            } else {
                0.0
            };
            let h = Hyper {
                lr,
                wd,
                bc1,
                bc2,
                scale,
            };
            // The new part of this parameter, from element `from` on, and its constants.
            let new = self.groups.as_ref().and_then(|gr| {
                let from = gr.from.get(i).copied().flatten()?;
                let wd = if decays(&params.names[i]) {
                    gr.new.weight_decay
                } else {
                    0.0
                };
                let lr = lr * gr.new.lr_scale;
                Some((from, Hyper { lr, wd, ..h }))
            });
            if self.fused_cpu(var, g, i, h, new)? {
                continue;
            }
            let g = (g.to_dtype(DType::F32)? * scale)?;
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let w = var.as_tensor().to_dtype(DType::F32)?;
            let w = match new {
                None => ((w * (1.0 - lr * wd))? - (update * lr)?)?,
                Some((from, n)) => {
                    // Per-element constants: the old part, then the new one.
                    let len = w.elem_count();
                    let at = |x: f64, y: f64| -> Vec<f32> {
                        (0..len)
                            .map(|j| if j < from { x as f32 } else { y as f32 })
                            .collect()
                    };
                    let dev = w.device();
                    let keep =
                        Tensor::from_vec(at(1.0 - lr * wd, 1.0 - n.lr * n.wd), w.shape(), dev)?;
                    let rate = Tensor::from_vec(at(lr, n.lr), w.shape(), dev)?;
                    ((w * keep)? - (update * rate)?)?
                }
            };
            var.set(&w.to_dtype(var.dtype())?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Writes the moments (`m.<name>`, `v.<name>`) and the step count to a safetensors file.
    pub fn save(&self, params: &Params, path: &Path) -> anyhow::Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (i, n) in params.names.iter().enumerate() {
            map.insert(format!("m.{n}"), self.m[i].clone());
            map.insert(format!("v.{n}"), self.v[i].clone());
        }
        map.insert(
            "t".into(),
            Tensor::new(&[self.t as u32], &Device::Cpu).context("optimizer step")?,
        );
        crate::util::atomic_write_with(path, |tmp| {
            candle_core::safetensors::save(&map, tmp)?;
            Ok(())
        })
    }

    /// Restores what `save` wrote; every parameter's moments must be there with its shape.
    pub fn load(&mut self, params: &Params, path: &Path) -> anyhow::Result<()> {
        let dev = params
            .vars
            .first()
            .map(|v| v.device().clone())
            .unwrap_or(Device::Cpu);
        let map = candle_core::safetensors::load(path, &dev)
            .with_context(|| format!("reading optimizer state {}", path.display()))?;
        let get = |k: &str, like: &Var| -> anyhow::Result<Tensor> {
            let t = map
                .get(k)
                .with_context(|| format!("{}: missing key {k}", path.display()))?;
            if t.dims() != like.dims() {
                anyhow::bail!(
                    "{}: {k} has shape {:?}, the parameter {:?}",
                    path.display(),
                    t.dims(),
                    like.dims()
                );
            }
            Ok(t.to_dtype(DType::F32)?)
        };
        for (i, n) in params.names.iter().enumerate() {
            let (m, v) = (
                get(&format!("m.{n}"), &params.vars[i])?,
                get(&format!("v.{n}"), &params.vars[i])?,
            );
            self.set_moments(i, m, v)?;
        }
        let t = map
            .get("t")
            .with_context(|| format!("{}: missing key t", path.display()))?;
        self.t = t.to_vec1::<u32>()?.first().copied().unwrap_or(0) as usize;
        Ok(())
    }

    /// Sets variable `i`'s moments (copied into the flat tensors where the moments are views).
    fn set_moments(&mut self, i: usize, m: Tensor, v: Tensor) -> candle_core::Result<()> {
        match &self.flat {
            Some(f) => {
                let at = f.offsets[i] as usize;
                f.m.slice_set(&m.flatten_all()?, 0, at)?;
                f.v.slice_set(&v.flatten_all()?, 0, at)?;
            }
            None => (self.m[i], self.v[i]) = (m, v),
        }
        Ok(())
    }

    /// This optimizer's state for `params`: the same parameters (same order, maybe on other
    /// devices), e.g. a data-parallel rank's replica.
    pub fn replicate(&self, params: &Params) -> candle_core::Result<Self> {
        let mut r = Self::new(self.cfg, params)?;
        r.t = self.t;
        r.groups = self.groups.clone();
        for (i, var) in params.vars.iter().enumerate() {
            let m = self.m[i].to_device(var.device())?.copy()?;
            let v = self.v[i].to_device(var.device())?.copy()?;
            r.set_moments(i, m, v)?;
        }
        Ok(r)
    }
}

/// The global L2 norm of `grads`: one parallel pass over each contiguous f32 CPU gradient,
/// composed tensor ops for the others.
pub fn grad_norm(grads: &[Option<Tensor>]) -> candle_core::Result<f64> {
    use rayon::prelude::*;
    let mut sq = 0f64;
    for g in grads.iter().flatten() {
        if g.device().is_cpu() && g.dtype() == DType::F32 && g.is_contiguous() {
            // Chunk sums collected in order, then added in order: rayon's own reduction tree
            // follows the work stealing, so the same gradients could give another last bit
            // (and, through clipping, other weights).
            sq += with_cpu(&[g], "grad_norm", |s| {
                let parts: Vec<f64> = s[0]
                    .par_chunks(1 << 14)
                    .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                    .collect();
                Ok(parts.iter().sum::<f64>())
            })?;
        } else {
            sq += g
                .to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()? as f64;
        }
    }
    Ok(sq.sqrt())
}

/// The factor that brings a gradient of norm `norm` down to `max_norm` (1 when it is below,
/// or when `max_norm` is 0).
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// Scales `grads` in place so their global L2 norm is at most `max_norm`; returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> candle_core::Result<f64> {
    let norm = grad_norm(grads)?;
    let s = clip_scale(norm, max_norm);
    if s != 1.0 {
        for g in grads.iter_mut().flatten() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests;

//! The CPU AdamW update in one parallel pass per parameter (paper 4.1.3's optimizer), and its
//! benchmark at the shapes a training run updates (`llmbs bench llm --workload adamw`).

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};

use super::{AdamW, AdamWConfig, Groups, Hyper, NewGroup, Params};
use crate::llm::ops::{mutate_cpu, with_cpu};

/// The element-wise AdamW update of [`AdamW::fused_cpu`], with one set of constants.
#[derive(Clone, Copy)]
struct AdamKernel {
    b1: f32,
    b2: f32,
    eps: f32,
    bc1: f32,
    bc2: f32,
    lr: f32,
    decay: f32,
    scale: f32,
}

impl AdamKernel {
    fn new(c: &AdamWConfig, h: Hyper) -> Self {
        Self {
            b1: c.beta1 as f32,
            b2: c.beta2 as f32,
            eps: c.eps as f32,
            bc1: h.bc1 as f32,
            bc2: h.bc2 as f32,
            lr: h.lr as f32,
            decay: (1.0 - h.lr * h.wd) as f32,
            scale: h.scale as f32,
        }
    }

    /// Updates `w`, `m`, `v` in place from the gradient `g` (all the same length).
    #[inline]
    fn run(&self, w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        let k = *self;
        for (((w, m), v), &g) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            let gj = g * k.scale;
            let mj = k.b1 * *m + (1.0 - k.b1) * gj;
            let vj = k.b2 * *v + (1.0 - k.b2) * gj * gj;
            let upd = (mj / k.bc1) / ((vj / k.bc2).sqrt() + k.eps);
            *w = *w * k.decay - k.lr * upd;
            *m = mj;
            *v = vj;
        }
    }
}

impl AdamW {
    /// The update of one f32 CPU parameter in a single parallel pass, in place, over w, g, m
    /// and v (the composed tensor ops make about three times as many passes over memory and
    /// allocate three new parameter-sized tensors, which is most of an optimizer step's time on
    /// a CPU). False when the tensors are elsewhere or not f32.
    /// `new`: the element from which the parameter is new, with that part's constants.
    pub(super) fn fused_cpu(
        &self,
        var: &Var,
        g: &Tensor,
        i: usize,
        h: Hyper,
        new: Option<(usize, Hyper)>,
    ) -> candle_core::Result<bool> {
        use rayon::prelude::*;
        let w_t = var.as_tensor();
        let all_cpu_f32 = [w_t, g, &self.m[i], &self.v[i]]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous());
        if !all_cpu_f32 || !crate::llm::kernels::fused_enabled() || g.shape() != w_t.shape() {
            return Ok(false);
        }
        // Past the end (no new group): every chunk runs the old constants only.
        let (from, new) = new.unwrap_or((usize::MAX, h));
        let (old_k, new_k) = (
            AdamKernel::new(&self.cfg, h),
            AdamKernel::new(&self.cfg, new),
        );
        const CHUNK: usize = 1 << 14;
        mutate_cpu(w_t, |w| {
            mutate_cpu(&self.m[i], |m| {
                mutate_cpu(&self.v[i], |v| {
                    with_cpu(&[g], "adamw", |gs| {
                        let gr = gs[0];
                        w.par_chunks_mut(CHUNK)
                            .zip(m.par_chunks_mut(CHUNK))
                            .zip(v.par_chunks_mut(CHUNK))
                            .zip(gr.par_chunks(CHUNK))
                            .enumerate()
                            .for_each(|(k, (((w, m), v), g))| {
                                // The chunk's elements before `from` take the old constants,
                                // the rest the new: two branch-free loops the compiler
                                // vectorises, instead of a test per element.
                                let cut = from.saturating_sub(k * CHUNK).min(w.len());
                                let (w0, w1) = w.split_at_mut(cut);
                                let (m0, m1) = m.split_at_mut(cut);
                                let (v0, v1) = v.split_at_mut(cut);
                                let (g0, g1) = g.split_at(cut);
                                old_k.run(w0, m0, v0, g0);
                                new_k.run(w1, m1, v1, g1);
                            });
                        Ok(())
                    })
                })
            })
        })?;
        Ok(true)
    }
}

/// Seconds of `runs` clipped AdamW steps (after one warm-up) over parameters of `sizes`
/// elements, the first `new_from` elements of `sizes[0]` old and the rest a new group (a grown
/// embedding, as the trainer's parameter groups), with fixed random gradients.
pub fn bench_adamw(sizes: &[usize], new_from: usize, runs: usize) -> candle_core::Result<Vec<f64>> {
    let dev = Device::Cpu;
    let mut names = Vec::new();
    let mut vars = Vec::new();
    let mut grads = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        names.push(format!("p{i}.weight"));
        vars.push(Var::from_tensor(&Tensor::randn(0f32, 0.02, n, &dev)?)?);
        grads.push(Some(Tensor::randn(0f32, 1e-3, n, &dev)?));
    }
    let params = Params { names, vars };
    let mut opt = AdamW::new(AdamWConfig::default(), &params)?;
    let mut from = vec![None; sizes.len()];
    from[0] = Some(new_from);
    opt.groups = Some(Groups {
        new: NewGroup {
            lr_scale: 3.0,
            weight_decay: 0.0,
        },
        from,
    });
    let mut out = Vec::with_capacity(runs);
    for r in 0..=runs {
        let t = Instant::now();
        opt.clip_and_step(&params, &grads, 2e-3, 1.0)?;
        if r > 0 {
            out.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(out)
}

//! RMSNorm `y = x / sqrt(mean(x^2) + eps) * w` with its backward in one pass per row
//! (candle's fused `rms_norm` has no backward; its composed `rms_norm_slow` makes six forward
//! and about fifteen backward passes over the activations).
//!
//! Backward, with r = 1 / sqrt(mean(x^2) + eps) per row of width d:
//! dx = r * (dy * w) - x * r^3 * sum(dy * w * x) / d, dw = sum over rows of dy * x * r.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::grad::{sink_for, Sink};
use super::{tensor, with_cpu};
use crate::llm::switch::{slice, use_fused};

/// Rows per parallel task.
const ROWS: usize = 16;

struct RmsNorm {
    eps: f32,
    sink: Option<Sink>,
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

/// `x / rms(x) * w` for each row of width `w.len()`.
pub(crate) fn rows_fwd(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(d * ROWS)
        .zip(x.par_chunks(d * ROWS))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_mut(d).zip(x.chunks(d)) {
                let r = inv_rms(x, eps);
                for j in 0..d {
                    y[j] = x[j] * r * w[j];
                }
            }
        });
    y
}

/// (dx, dw) of [`rows_fwd`] given the output gradient `g`; dw is empty unless `want_w`.
pub(crate) fn rows_bwd(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
    want_w: bool,
) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut dx = vec![0f32; x.len()];
    let width = if want_w { d } else { 0 };
    // Per-chunk partial sums collected in chunk order, then added in that order: a rayon
    // fold/reduce follows the work stealing, so the same input could give another last bit
    // of dw from run to run (seen as a flaky bit-identity test on CI).
    let parts: Vec<Vec<f32>> = dx
        .par_chunks_mut(d * ROWS)
        .zip(x.par_chunks(d * ROWS).zip(g.par_chunks(d * ROWS)))
        .map(|(dx, (x, g))| {
            let mut dw = vec![0f32; width];
            for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                let r = inv_rms(x, eps);
                let dot: f32 = (0..d).map(|j| g[j] * w[j] * x[j]).sum();
                let c = r * r * r * dot / d as f32;
                for j in 0..d {
                    dx[j] = r * g[j] * w[j] - x[j] * c;
                }
                for j in 0..width {
                    dw[j] += g[j] * x[j] * r;
                }
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; width];
    for p in &parts {
        dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    (dx, dw)
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "llmbs-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::scope("rms_norm fwd");
        let (x, w) = (slice(s1, l1, "rms_norm")?, slice(s2, l2, "rms_norm")?);
        Ok((
            CpuStorage::F32(rows_fwd(x, w, self.eps)),
            l1.shape().clone(),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::rms_norm_fwd((s1, l1), (s2, l2), self.eps)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _t = super::timing::scope("rms_norm bwd");
        let g = g.contiguous()?;
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let (dx, dw) = super::cuda::rms_norm_bwd(x, w, &g, self.eps)?;
            return Ok((Some(dx), w.track_op().then_some(dw)));
        }
        let want_w = self.sink.is_some() || w.track_op();
        let (dx, dw) = with_cpu(&[x, w, &g], "rms_norm bwd", |s| {
            Ok(rows_bwd(s[0], s[1], s[2], self.eps, want_w))
        })?;
        let dx = tensor(dx, x.dims(), x)?;
        let dw = match &self.sink {
            Some(sink) => {
                sink.accumulate(|buf| {
                    buf.iter_mut().zip(&dw).for_each(|(b, v)| *b += v);
                    Ok(())
                })?;
                None
            }
            None if want_w => Some(tensor(dw, w.dims(), w)?),
            None => None,
        };
        Ok((Some(dx), dw))
    }
}

/// RMSNorm over the last dimension: x [..., d], w [d] -> [..., d]. Off the fused path this is
/// candle's composed (differentiable) `rms_norm_slow`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let on = (use_fused(x) && use_fused(w)) || (super::on_cuda(x) && w.dtype() == x.dtype());
    if on && w.rank() == 1 && x.dims().last() == Some(&w.dim(0)?) {
        x.contiguous()?.apply_op2(
            &w.contiguous()?,
            RmsNorm {
                eps: eps as f32,
                sink: sink_for(w),
            },
        )
    } else {
        candle_nn::ops::rms_norm_slow(x, w, eps as f32)
    }
}

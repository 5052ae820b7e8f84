//! The pre-norm residual wrapper of a sub-layer, `x + f(rms_norm(x) * w)`, for the attention
//! and MLP ops: with it a whole sub-layer is one autograd node, so candle's backward makes one
//! zero tensor and one addition per sub-layer instead of one per norm, sub-layer and residual
//! sum (six nodes and eight additions per decoder layer, each through candle's thread pool).

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::norm::{rows_bwd, rows_fwd};
use super::Weight;

/// The norm in front of a sub-layer (its output is the sub-layer's input `h`), and the
/// residual connection around both.
pub(crate) struct PreNorm {
    pub norm: Weight,
    pub eps: f32,
}

impl PreNorm {
    /// None when the norm weight cannot be read directly (see [`Weight::new`]).
    pub fn new(w: &Tensor, eps: f64) -> Option<Self> {
        Some(Self {
            norm: Weight::new(w)?,
            eps: eps as f32,
        })
    }

    /// h = rms_norm(x) * w.
    pub fn forward(&self, x: &[f32], w: &[f32]) -> Vec<f32> {
        rows_fwd(x, w, self.eps)
    }

    /// dx = dout (the residual path) + the norm's input gradient given dh; the norm weight's
    /// gradient goes to its buffer.
    pub fn backward(&self, x: &[f32], w: &[f32], dh: &[f32], dout: &[f32]) -> Result<Vec<f32>> {
        let (mut dx, dw) = rows_bwd(x, w, dh, self.eps, self.norm.sink.is_some());
        if let Some(sink) = &self.norm.sink {
            sink.accumulate(|buf| {
                buf.iter_mut().zip(&dw).for_each(|(b, v)| *b += v);
                Ok(())
            })?;
        }
        dx.par_chunks_mut(1 << 14)
            .zip(dout.par_chunks(1 << 14))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
        Ok(dx)
    }
}

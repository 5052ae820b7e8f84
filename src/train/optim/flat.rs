//! AdamW's moments as two flat tensors on CUDA, and the multi-tensor step over them: every
//! parameter updated by three kernel launches (llm::ops::cuda::adamw_multi) instead of about
//! fifteen elementwise kernels per parameter tensor.

use candle_core::{DType, Tensor};

#[cfg(feature = "cuda")]
use super::decays;
use super::{AdamW, Params};

/// Flat f32 moments: parameter i at `offsets[i]..offsets[i + 1]`.
pub(super) struct Flat {
    pub m: Tensor,
    pub v: Tensor,
    pub offsets: Vec<i64>,
}

impl Flat {
    /// Flat moments when every variable is a contiguous f32 tensor on one CUDA device (the
    /// multi-tensor kernel is CUDA-only); None otherwise.
    pub fn new(params: &Params) -> candle_core::Result<Option<Self>> {
        let Some(first) = params.vars.first() else {
            return Ok(None);
        };
        let dev = first.device();
        let ok = cfg!(feature = "cuda")
            && dev.is_cuda()
            && params.vars.iter().all(|v| {
                v.device().same_device(dev) && v.dtype() == DType::F32 && v.is_contiguous()
            });
        if !ok {
            return Ok(None);
        }
        let mut offsets = vec![0i64];
        for v in &params.vars {
            offsets.push(offsets[offsets.len() - 1] + v.elem_count() as i64);
        }
        let total = *offsets.last().unwrap_or(&0) as usize;
        Ok(Some(Self {
            m: Tensor::zeros(total, DType::F32, dev)?,
            v: Tensor::zeros(total, DType::F32, dev)?,
            offsets,
        }))
    }
}

impl AdamW {
    /// The multi-tensor CUDA step (`llm::ops::cuda::adamw_multi`, three launches for every
    /// parameter at once) when the moments are flat and every gradient is a contiguous f32
    /// CUDA tensor; None otherwise. Returns the gradients' global norm.
    #[cfg(feature = "cuda")]
    pub(super) fn step_cuda(
        &mut self,
        params: &Params,
        grads: &[Option<Tensor>],
        lr: f64,
        max_norm: f64,
    ) -> candle_core::Result<Option<f64>> {
        let Some(flat) = &self.flat else {
            return Ok(None);
        };
        let mut gs = Vec::with_capacity(grads.len());
        for (g, v) in grads.iter().zip(&params.vars) {
            match g {
                Some(g)
                    if g.device().is_cuda()
                        && g.dtype() == DType::F32
                        && g.is_contiguous()
                        && g.shape() == v.shape() =>
                {
                    gs.push(g)
                }
                _ => return Ok(None),
            }
        }
        if !crate::llm::kernels::fused_enabled() {
            return Ok(None);
        }
        self.t += 1;
        let c = self.cfg;
        let decay: Vec<f32> = params
            .names
            .iter()
            .map(|n| (1.0 - lr * if decays(n) { c.weight_decay } else { 0.0 }) as f32)
            .collect();
        let h = crate::llm::ops::cuda::AdamWStep {
            lr: lr as f32,
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            eps: c.eps as f32,
            bc1: (1.0 - c.beta1.powi(self.t as i32)) as f32,
            bc2: (1.0 - c.beta2.powi(self.t as i32)) as f32,
            max_norm: max_norm as f32,
        };
        let ws: Vec<&Tensor> = params.vars.iter().map(|v| v.as_tensor()).collect();
        let norm = crate::llm::ops::cuda::adamw_multi(
            &ws,
            &gs,
            (&flat.m, &flat.v),
            &flat.offsets,
            &decay,
            h,
        )?;
        Ok(Some(norm))
    }

    #[cfg(not(feature = "cuda"))]
    pub(super) fn step_cuda(
        &mut self,
        _: &Params,
        _: &[Option<Tensor>],
        _: f64,
        _: f64,
    ) -> candle_core::Result<Option<f64>> {
        Ok(None)
    }
}

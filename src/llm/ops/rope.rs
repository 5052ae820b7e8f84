//! Rotate-half RoPE as one op with its backward (the inverse rotation), for the composed
//! attention path on CUDA: candle's fused `rope` has no backward, and composing it makes two
//! concatenations, two narrows, a negation, two products and a sum per call. On the CPU the
//! rotation is part of the fused attention op instead.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

struct Rope {
    cos: Tensor,
    sin: Tensor,
    inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "llmbs-rope"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("llmbs-rope runs on CUDA; the CPU rotates inside the attention op")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::rope((s, l), &self.cos, &self.sin, self.inverse)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let op = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            inverse: !self.inverse,
        };
        Ok(Some(g.contiguous()?.apply_op1(op)?))
    }
}

/// x [b, h, t, hd] rotated by `cos`/`sin` ([t, hd / 2] or per row [b, t, hd / 2], x's dtype).
/// None where there is no kernel for x's device and dtype (the caller composes the rotation).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    if !super::on_cuda(x) || cos.dtype() != x.dtype() || x.rank() != 4 {
        return Ok(None);
    }
    let op = Rope {
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
        inverse: false,
    };
    Ok(Some(x.contiguous()?.apply_op1(op)?))
}

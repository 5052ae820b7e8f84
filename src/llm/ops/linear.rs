//! `y = x W^T` as one op whose backward adds `dW = dy^T x` straight into the weight's gradient
//! buffer (a GEMM with accumulation). candle's matmul backward instead makes `x^T dy`, adds it
//! into a zero tensor for `W^T`, transposes it and adds that into a second zero tensor for `W`:
//! five weight-sized allocations per layer per micro-batch.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::grad::{sink_for, Sink};
use super::{gemm_mode, sgemm, tensor, with_cpu, Gemm, View};
use crate::llm::switch::{slice, use_fused};

struct Linear {
    sink: Option<Sink>,
    mode: Gemm,
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "llmbs-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1, "linear")?, slice(s2, l2, "linear")?);
        let (d_out, d_in) = l2.shape().dims2()?;
        let y = super::matmul_t(x, w, x.len() / d_in, d_in, self.mode)?;
        let mut dims = l1.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = d_out;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let (d_out, d_in) = w.dims2()?;
        let rows = x.elem_count() / d_in;
        with_cpu(&[x, w, &g], "linear bwd", |s| {
            let (xs, ws, gs) = (s[0], s[1], s[2]);
            let dx = if x.track_op() {
                let mut dx = vec![0f32; rows * d_in];
                let (gv, wv) = (View::rows(gs, d_out), View::rows(ws, d_in));
                sgemm((rows, d_in, d_out), &mut dx, d_in, false, gv, wv, self.mode)?;
                Some(tensor(dx, x.dims(), x)?)
            } else {
                None
            };
            // dW [out, in] = dy^T [out, rows] · x [rows, in]
            let (gt, xv) = (View::t(gs, d_out), View::rows(xs, d_in));
            let dims = (d_out, d_in, rows);
            let dw = match &self.sink {
                Some(sink) => {
                    sink.accumulate(|buf| sgemm(dims, buf, d_in, true, gt, xv, self.mode))?;
                    None
                }
                None if w.track_op() => {
                    let mut dw = vec![0f32; d_out * d_in];
                    sgemm(dims, &mut dw, d_in, false, gt, xv, self.mode)?;
                    Some(tensor(dw, &[d_out, d_in], w)?)
                }
                None => None,
            };
            Ok((dx, dw))
        })
    }
}

/// x: [..., in], w: [out, in] -> [..., out].
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let fits = w.rank() == 2 && x.rank() >= 1 && x.dims().last() == w.dims().get(1);
    if use_fused(x) && use_fused(w) && w.is_contiguous() && fits {
        x.contiguous()?.apply_op2(
            w,
            Linear {
                sink: sink_for(w),
                mode: gemm_mode(),
            },
        )
    } else {
        let d_in = w.dim(1)?;
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = w.dim(0)?;
        }
        let rows = x.elem_count() / d_in.max(1);
        x.reshape((rows, d_in))?.matmul(&w.t()?)?.reshape(dims)
    }
}

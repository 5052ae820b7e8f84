//! Embedding lookup whose backward scatter-adds each position's gradient into its token's row,
//! in parallel over tokens (every row is written by one task, in position order, so the sum is
//! deterministic), straight into the weight's gradient buffer. candle's `index_select`
//! backward adds into a vocabulary-sized zero tensor and `index_add` copies that again: two
//! `[vocab, d]` allocations per micro-batch for a few hundred touched rows.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::grad::{sink_for, Sink};
use super::{tensor, with_cpu};
use crate::llm::switch::{slice, use_fused};

struct Embedding {
    ids: Vec<u32>,
    sink: Option<Sink>,
}

impl Embedding {
    /// dst[id] += g[p] for every position p, rows in parallel.
    fn scatter(&self, dst: &mut [f32], g: &[f32], d: usize) {
        let vocab = dst.len() / d;
        // Positions grouped by token: order[start[id]..start[id + 1]].
        let mut start = vec![0u32; vocab + 1];
        for &id in &self.ids {
            start[id as usize + 1] += 1;
        }
        for i in 0..vocab {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut order = vec![0u32; self.ids.len()];
        for (p, &id) in self.ids.iter().enumerate() {
            order[fill[id as usize] as usize] = p as u32;
            fill[id as usize] += 1;
        }
        dst.par_chunks_mut(d).enumerate().for_each(|(id, row)| {
            for &p in &order[start[id] as usize..start[id + 1] as usize] {
                let src = &g[p as usize * d..][..d];
                row.iter_mut().zip(src).for_each(|(r, s)| *r += s);
            }
        });
    }
}

impl CustomOp1 for Embedding {
    fn name(&self) -> &'static str {
        "llmbs-embedding"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::scope("embedding fwd");
        let w = slice(s, l, "embedding")?;
        let d = l.shape().dims2()?.1;
        let mut out = vec![0f32; self.ids.len() * d];
        out.par_chunks_mut(d)
            .zip(self.ids.par_iter())
            .for_each(|(o, &id)| o.copy_from_slice(&w[id as usize * d..][..d]));
        Ok((CpuStorage::F32(out), Shape::from((self.ids.len(), d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::embedding_fwd((s, l), &self.ids)
    }

    fn bwd(&self, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let _t = super::timing::scope("embedding bwd");
        let g = g.contiguous()?;
        let d = w.dim(1)?;
        #[cfg(feature = "cuda")]
        if g.device().is_cuda() {
            return Ok(Some(super::cuda::embedding_bwd(&g, &self.ids, w.dim(0)?)?));
        }
        with_cpu(&[&g], "embedding bwd", |s| match &self.sink {
            Some(sink) => {
                sink.accumulate(|buf| {
                    self.scatter(buf, s[0], d);
                    Ok(())
                })?;
                Ok(None)
            }
            None => {
                let mut dw = vec![0f32; w.elem_count()];
                self.scatter(&mut dw, s[0], d);
                Ok(Some(tensor(dw, w.dims(), w)?))
            }
        })
    }
}

/// Rows of `w` [vocab, d] for the token ids `ids` (u32, any shape) -> [ids..., d]. On CUDA
/// only for training (`train`): the op reads the ids on the host, a device sync that a
/// decoding step should not pay.
pub fn embedding(w: &Tensor, ids: &Tensor, train: bool) -> Result<Tensor> {
    let mut dims = ids.dims().to_vec();
    dims.push(w.dim(1)?);
    let flat = ids.flatten_all()?;
    let on = use_fused(w) || (train && super::on_cuda(w));
    if !(on && w.is_contiguous() && ids.dtype() == DType::U32 && !flat.dims().contains(&0)) {
        return w.index_select(&flat, 0)?.reshape(dims);
    }
    let ids = flat.to_vec1::<u32>()?;
    let vocab = w.dim(0)?;
    if let Some(t) = ids.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("embedding: token id {t} outside the vocabulary of {vocab}")
    }
    let op = Embedding {
        ids,
        sink: sink_for(w),
    };
    w.apply_op1(op)?.reshape(dims)
}

//! The LM head and its cross-entropy as one op: `sum_i lse(h_i W^T) - (h_i W^T)[target_i]`.
//! The forward turns the logits into probabilities in place (one `[n, vocab]` buffer, kept for
//! the backward); the backward subtracts the one-hot targets from them in place and runs the
//! two GEMMs of the head, adding `dW` straight into the weight's gradient buffer. candle's
//! composed `log_softmax` + `gather` keeps about ten vocabulary-wide temporaries per position
//! and the head's matmul backward three weight-sized ones.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::grad::{sink_for, Sink};
use super::{gemm_mode, sgemm, tensor, with_cpu, Gemm, View};
use crate::llm::kernels::{slice, use_fused};

struct HeadCe {
    targets: Vec<u32>,
    sink: Option<Sink>,
    mode: Gemm,
    /// softmax(h W^T) `[n, vocab]` from the forward, taken by the backward.
    probs: Mutex<Option<Vec<f32>>>,
}

impl HeadCe {
    /// Softmax rows of `h W^T` in place and the summed loss.
    fn probs(&self, h: &[f32], w: &[f32], d: usize) -> Result<(Vec<f32>, f64)> {
        let n = self.targets.len();
        let vocab = w.len() / d;
        let mut p = vec![0f32; n * vocab];
        sgemm(
            (n, vocab, d),
            &mut p,
            vocab,
            false,
            View::rows(h, d),
            View::t(w, d),
            self.mode,
        )?;
        let loss: f64 = p
            .par_chunks_mut(vocab)
            .zip(self.targets.par_iter())
            .map(|(row, &tgt)| {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let target = row[tgt as usize];
                let mut sum = 0f32;
                for x in row.iter_mut() {
                    *x = (*x - m).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|x| *x *= inv);
                (m + sum.ln() - target) as f64
            })
            .sum();
        Ok((p, loss))
    }
}

impl CustomOp2 for HeadCe {
    fn name(&self) -> &'static str {
        "llmbs-head-ce"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::scope("head ce fwd");
        let (h, w) = (slice(s1, l1, "head_ce")?, slice(s2, l2, "head_ce")?);
        let d = l1.shape().dims2()?.1;
        let (p, loss) = self.probs(h, w, d)?;
        if let Ok(mut slot) = self.probs.lock() {
            *slot = Some(p);
        }
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _loss: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _t = super::timing::scope("head ce bwd");
        let scale = g.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let (n, d) = h.dims2()?;
        let vocab = w.dim(0)?;
        let kept = self.probs.lock().ok().and_then(|mut s| s.take());
        with_cpu(&[h, w], "head_ce bwd", |s| {
            let (hs, ws) = (s[0], s[1]);
            let mut p = match kept {
                Some(p) => p,
                None => self.probs(hs, ws, d)?.0,
            };
            // dlogits = scale * (softmax - onehot(target))
            p.par_chunks_mut(vocab)
                .zip(self.targets.par_iter())
                .for_each(|(row, &tgt)| {
                    row[tgt as usize] -= 1.0;
                    row.iter_mut().for_each(|x| *x *= scale);
                });
            let mut dh = vec![0f32; n * d];
            let (pv, wv) = (View::rows(&p, vocab), View::rows(ws, d));
            sgemm((n, d, vocab), &mut dh, d, false, pv, wv, self.mode)?;
            let dh = tensor(dh, &[n, d], h)?;
            // dW [vocab, d] = dlogits^T [vocab, n] · h [n, d]
            let (pt, hv) = (View::t(&p, vocab), View::rows(hs, d));
            let dims = (vocab, d, n);
            let dw = match &self.sink {
                Some(sink) => {
                    sink.accumulate(|buf| sgemm(dims, buf, d, true, pt, hv, self.mode))?;
                    None
                }
                None if w.track_op() => {
                    let mut dw = vec![0f32; vocab * d];
                    sgemm(dims, &mut dw, d, false, pt, hv, self.mode)?;
                    Some(tensor(dw, &[vocab, d], w)?)
                }
                None => None,
            };
            Ok((Some(dh), dw))
        })
    }
}

/// Summed cross-entropy of `targets` under the logits `h W^T`: h [n, d], w [vocab, d]; a
/// scalar. None where this device/dtype has no fused kernel (the caller composes it).
pub fn head_ce_sum(h: &Tensor, w: &Tensor, targets: &[u32]) -> Result<Option<Tensor>> {
    if !(use_fused(h) && use_fused(w) && w.is_contiguous()) {
        return Ok(None);
    }
    let (n, d) = h.dims2()?;
    let (vocab, dw) = w.dims2()?;
    if n != targets.len() || d != dw {
        candle_core::bail!(
            "head_ce: hidden {:?}, head {:?}, {} targets",
            h.dims(),
            w.dims(),
            targets.len()
        )
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("head_ce: target {t} outside the vocabulary of {vocab}")
    }
    let op = HeadCe {
        targets: targets.to_vec(),
        sink: sink_for(w),
        mode: gemm_mode(),
        probs: Mutex::new(None),
    };
    Ok(Some(h.contiguous()?.apply_op2(w, op)?))
}

/// Cross-entropy over logits already computed (the CUDA path, where the head is a cuBLAS
/// GEMM): the forward keeps only each row's log-sum-exp, the backward writes the logits'
/// gradient `g * (softmax - onehot)` in one kernel; no softmax tensor is ever stored.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct CeSum {
    /// The targets on the logits' device (u32 [n]).
    targets: Tensor,
    /// Per-row log-sum-exp from the forward.
    lse: Mutex<Option<Tensor>>,
}

impl candle_core::CustomOp1 for CeSum {
    fn name(&self) -> &'static str {
        "llmbs-ce"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("llmbs-ce runs on CUDA; the CPU fuses the head into head_ce_sum")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (total, lse) = super::cuda::ce_fwd((s, l), &self.targets)?;
        if let Ok(mut slot) = self.lse.lock() {
            *slot = Some(lse);
        }
        Ok((total, Shape::from(())))
    }

    fn bwd(&self, logits: &Tensor, _loss: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        #[cfg(feature = "cuda")]
        {
            let kept = self.lse.lock().ok().and_then(|mut s| s.take());
            let lse = match kept {
                Some(l) => l,
                None => {
                    let (st, l) = logits.storage_and_layout();
                    let candle_core::Storage::Cuda(cs) = &*st else {
                        candle_core::bail!("llmbs-ce: expected CUDA logits")
                    };
                    super::cuda::ce_fwd((cs, l), &self.targets)?.1
                }
            };
            let dl = super::cuda::ce_bwd(&logits.contiguous()?, &self.targets, &lse, g)?;
            Ok(Some(dl))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (logits, g);
            candle_core::bail!("llmbs-ce: built without CUDA")
        }
    }
}

/// Summed cross-entropy of `targets` under `logits` [n, vocab] with the CUDA kernels; None
/// where they do not apply (the caller composes log-softmax and gather).
pub fn ce_sum(logits: &Tensor, targets: &[u32]) -> Result<Option<Tensor>> {
    if !super::on_cuda(logits) || logits.rank() != 2 {
        return Ok(None);
    }
    let (n, vocab) = logits.dims2()?;
    if n != targets.len() {
        candle_core::bail!("ce: {n} rows of logits, {} targets", targets.len())
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("ce: target {t} outside the vocabulary of {vocab}")
    }
    let op = CeSum {
        targets: Tensor::from_slice(targets, n, logits.device())?,
        lse: Mutex::new(None),
    };
    Ok(Some(logits.contiguous()?.apply_op1(op)?))
}

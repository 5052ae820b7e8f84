//! The LM head and its cross-entropy as one op: `sum_i lse(h_i W^T) - (h_i W^T)[target_i]`.
//! The forward keeps `E = exp(logits - rowmax)` (one `[n, vocab]` buffer, no normalising
//! pass) and each row's `1 / sum(E)`; the backward never forms the softmax either: with
//! `D = diag(g / sum)`, `dlogits = D E - g onehot`, so `dh = D (E W) - g W[target]` and
//! `dW += E^T (D h) - g onehot^T h`: two GEMMs over E and row-sized corrections, the weight
//! gradient added straight into its buffer. candle's composed `log_softmax` + `gather` keeps
//! about ten vocabulary-wide temporaries per position and the head's matmul backward three
//! weight-sized ones.

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
    /// (E, 1 / row sums) from the forward, taken by the backward.
    saved: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl HeadCe {
    /// E = exp(h W^T - rowmax), 1 / rowsum(E), and the summed loss.
    fn exps(&self, h: &[f32], w: &[f32], d: usize) -> Result<(Vec<f32>, Vec<f32>, f64)> {
        let n = self.targets.len();
        let vocab = w.len() / d;
        let mut e = super::take_big(n * vocab);
        super::matmul_t_into(&mut e, h, w, d, self.mode)?;
        let rows: Vec<(f32, f64)> = e
            .par_chunks_mut(vocab)
            .zip(self.targets.par_iter())
            .map(|(row, &tgt)| {
                let m = super::vmath::max(row);
                let target = row[tgt as usize];
                let sum = super::vmath::exp_shift_sum(row, m);
                (1.0 / sum, (m + sum.ln() - target) as f64)
            })
            .collect();
        let loss = rows.iter().map(|r| r.1).sum();
        Ok((e, rows.into_iter().map(|r| r.0).collect(), loss))
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
        let (e, inv, loss) = self.exps(h, w, d)?;
        if let Ok(mut slot) = self.saved.lock() {
            *slot = Some((e, inv));
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
        let kept = self.saved.lock().ok().and_then(|mut s| s.take());
        with_cpu(&[h, w], "head_ce bwd", |s| {
            let (hs, ws) = (s[0], s[1]);
            let (e, inv) = match kept {
                Some(k) => k,
                None => {
                    let (e, inv, _) = self.exps(hs, ws, d)?;
                    (e, inv)
                }
            };
            let tgt = |r: usize| self.targets[r] as usize;
            // dh = D (E W) - g W[target]
            let mut dh = vec![0f32; n * d];
            let (ev, wv) = (View::rows(&e, vocab), View::rows(ws, d));
            sgemm((n, d, vocab), &mut dh, d, false, ev, wv, self.mode)?;
            dh.par_chunks_mut(d).enumerate().for_each(|(r, row)| {
                let (k, wt) = (scale * inv[r], &ws[tgt(r) * d..][..d]);
                row.iter_mut()
                    .zip(wt)
                    .for_each(|(x, w)| *x = *x * k - scale * w);
            });
            let dh = tensor(dh, &[n, d], h)?;
            // dW [vocab, d] += E^T (D h) - g onehot^T h
            let mut dhs = hs.to_vec();
            dhs.par_chunks_mut(d).enumerate().for_each(|(r, row)| {
                let k = scale * inv[r];
                row.iter_mut().for_each(|x| *x *= k);
            });
            let add = |buf: &mut [f32], acc: bool| -> Result<()> {
                let (et, hv) = (View::t(&e, vocab), View::rows(&dhs, d));
                sgemm((vocab, d, n), buf, d, acc, et, hv, self.mode)?;
                for r in 0..n {
                    let row = &mut buf[tgt(r) * d..][..d];
                    row.iter_mut()
                        .zip(&hs[r * d..][..d])
                        .for_each(|(b, x)| *b -= scale * x);
                }
                Ok(())
            };
            let dw = match &self.sink {
                Some(sink) => {
                    sink.accumulate(|buf| add(buf, true))?;
                    None
                }
                None if w.track_op() => {
                    let mut dw = vec![0f32; vocab * d];
                    add(&mut dw, false)?;
                    Some(tensor(dw, &[vocab, d], w)?)
                }
                None => None,
            };
            super::give_big(e);
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
        saved: Mutex::new(None),
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

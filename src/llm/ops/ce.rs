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
use crate::llm::switch::{slice, use_fused};

struct HeadCe {
    /// Each row's hard target, relative to `rows`.
    targets: Vec<u32>,
    /// Each row's other target weights `(token relative to rows, weight)`: the distillation
    /// part of a mixed target (empty: one-hot).
    soft: Vec<Vec<(u32, f32)>>,
    /// Share of the soft part in each mixed target (0 without soft targets).
    alpha: f32,
    /// The softmax runs over rows `rows.0 .. rows.0 + rows.1` of the head (all of them, or
    /// the item-ID tokens for the item-vocabulary loss).
    rows: (usize, usize),
    sink: Option<Sink>,
    mode: Gemm,
    /// (E, 1 / row sums) from the forward, taken by the backward.
    saved: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl HeadCe {
    /// E = exp(h W^T - rowmax) over the op's head rows, 1 / rowsum(E), and the summed mixed
    /// and hard cross-entropies.
    fn exps(&self, h: &[f32], w: &[f32], d: usize) -> Result<(Vec<f32>, Vec<f32>, [f64; 2])> {
        let n = self.targets.len();
        let (r0, vocab) = self.rows;
        let w = &w[r0 * d..(r0 + vocab) * d];
        let mut e = super::take_big(n * vocab);
        super::matmul_t_into(&mut e, h, w, d, self.mode)?;
        let alpha = self.alpha as f64;
        let rows: Vec<(f32, f64, f64)> = e
            .par_chunks_mut(vocab)
            .enumerate()
            .map(|(r, row)| {
                let tgt = self.targets[r] as usize;
                let m = super::vmath::max(row);
                let target = row[tgt];
                // -sum_k q_k z_k of the soft part, read before the row is exponentiated.
                let soft: Option<f64> = self.soft.get(r).filter(|s| !s.is_empty()).map(|s| {
                    s.iter()
                        .map(|&(k, q)| q as f64 * row[k as usize] as f64)
                        .sum()
                });
                let sum = super::vmath::exp_shift_sum(row, m);
                let lse = m + sum.ln();
                let hard = (lse - target) as f64;
                let mixed = match soft {
                    Some(zq) => (1.0 - alpha) * hard + alpha * (lse as f64 - zq),
                    None => hard,
                };
                (1.0 / sum, mixed, hard)
            })
            .collect();
        let loss = [
            rows.iter().map(|r| r.1).sum(),
            rows.iter().map(|r| r.2).sum(),
        ];
        Ok((e, rows.into_iter().map(|r| r.0).collect(), loss))
    }

    /// Row `r`'s target weights scaled by the upstream gradients (g of the mixed loss, g of the
    /// hard one): `dlogits_r = (g0 + g1) softmax_r - sum_k c_k onehot_k`.
    fn corrections(&self, r: usize, g: [f32; 2]) -> Vec<(usize, f32)> {
        let soft = self.soft.get(r).filter(|s| !s.is_empty());
        let hard_w = match soft {
            Some(_) => g[0] * (1.0 - self.alpha) + g[1],
            None => g[0] + g[1],
        };
        let mut c = vec![(self.targets[r] as usize, hard_w)];
        if let Some(s) = soft {
            c.extend(s.iter().map(|&(k, q)| (k as usize, g[0] * self.alpha * q)));
        }
        c
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
        let out = vec![loss[0] as f32, loss[1] as f32];
        Ok((CpuStorage::F32(out), Shape::from(2)))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _loss: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _t = super::timing::scope("head ce bwd");
        let gv = g.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        let g2 = [
            gv.first().copied().unwrap_or(0.0),
            gv.get(1).copied().unwrap_or(0.0),
        ];
        let scale = g2[0] + g2[1];
        let (n, d) = h.dims2()?;
        let (r0, vocab) = self.rows;
        let full = w.dim(0)?;
        let kept = self.saved.lock().ok().and_then(|mut s| s.take());
        with_cpu(&[h, w], "head_ce bwd", |s| {
            let (hs, ws_all) = (s[0], s[1]);
            let ws = &ws_all[r0 * d..(r0 + vocab) * d];
            let (e, inv) = match kept {
                Some(k) => k,
                None => {
                    let (e, inv, _) = self.exps(hs, ws_all, d)?;
                    (e, inv)
                }
            };
            let corr: Vec<Vec<(usize, f32)>> = (0..n).map(|r| self.corrections(r, g2)).collect();
            // dh = D (E W) - sum_k c_k W[k]
            let mut dh = vec![0f32; n * d];
            let (ev, wv) = (View::rows(&e, vocab), View::rows(ws, d));
            sgemm((n, d, vocab), &mut dh, d, false, ev, wv, self.mode)?;
            dh.par_chunks_mut(d).enumerate().for_each(|(r, row)| {
                let k = scale * inv[r];
                row.iter_mut().for_each(|x| *x *= k);
                for &(t, c) in &corr[r] {
                    row.iter_mut()
                        .zip(&ws[t * d..][..d])
                        .for_each(|(x, w)| *x -= c * w);
                }
            });
            let dh = tensor(dh, &[n, d], h)?;
            // dW [rows, d] += E^T (D h) - sum_k c_k onehot_k^T h
            let mut dhs = hs.to_vec();
            dhs.par_chunks_mut(d).enumerate().for_each(|(r, row)| {
                let k = scale * inv[r];
                row.iter_mut().for_each(|x| *x *= k);
            });
            let add = |buf: &mut [f32], acc: bool| -> Result<()> {
                let buf = &mut buf[r0 * d..(r0 + vocab) * d];
                let (et, hv) = (View::t(&e, vocab), View::rows(&dhs, d));
                sgemm((vocab, d, n), buf, d, acc, et, hv, self.mode)?;
                for (r, cr) in corr.iter().enumerate() {
                    for &(t, c) in cr {
                        buf[t * d..][..d]
                            .iter_mut()
                            .zip(&hs[r * d..][..d])
                            .for_each(|(b, x)| *b -= c * x);
                    }
                }
                Ok(())
            };
            let dw = match &self.sink {
                Some(sink) => {
                    sink.accumulate(|buf| add(buf, true))?;
                    None
                }
                None if w.track_op() => {
                    let mut dw = vec![0f32; full * d];
                    add(&mut dw, false)?;
                    Some(tensor(dw, &[full, d], w)?)
                }
                None => None,
            };
            super::give_big(e);
            Ok((Some(dh), dw))
        })
    }
}

/// What a head cross-entropy scores: row `i` of the hidden states against `targets[i]`, over
/// the head rows `rows` (token ids are relative to `rows.start`), optionally mixed with a
/// soft target: `(1 - alpha) onehot + alpha q` (distillation).
pub struct HeadTargets<'a> {
    pub targets: &'a [u32],
    pub rows: std::ops::Range<usize>,
    /// Per row, `q` as `(token, weight)` pairs summing to 1 (empty: one-hot only).
    pub soft: &'a [Vec<(u32, f32)>],
    pub alpha: f64,
}

impl HeadTargets<'_> {
    /// Checks the ids against the rows; names the first bad one.
    fn check(&self, n: usize, vocab: usize) -> Result<()> {
        let width = self.rows.len();
        if n != self.targets.len() || !(self.soft.is_empty() || self.soft.len() == n) {
            candle_core::bail!(
                "head_ce: {n} hidden rows, {} targets, {} soft rows",
                self.targets.len(),
                self.soft.len()
            )
        }
        if self.rows.end > vocab || self.rows.is_empty() {
            candle_core::bail!("head_ce: rows {:?} outside the head of {vocab}", self.rows)
        }
        let soft = self.soft.iter().flatten().map(|x| &x.0);
        if let Some(t) = self
            .targets
            .iter()
            .chain(soft)
            .find(|&&t| t as usize >= width)
        {
            candle_core::bail!("head_ce: target {t} outside the {width} rows scored")
        }
        Ok(())
    }
}

/// The summed cross-entropies of `spec` under the logits `h W[rows]^T`: h [n, d], w [vocab, d];
/// a `[2]` tensor (the mixed loss, the hard-target cross-entropy). None where this device and
/// dtype have no fused kernel (the caller composes it).
pub fn head_ce(h: &Tensor, w: &Tensor, spec: &HeadTargets) -> Result<Option<Tensor>> {
    if !(use_fused(h) && use_fused(w) && w.is_contiguous()) {
        return Ok(None);
    }
    let (n, d) = h.dims2()?;
    let (vocab, dw) = w.dims2()?;
    if d != dw {
        candle_core::bail!("head_ce: hidden {:?}, head {:?}", h.dims(), w.dims())
    }
    spec.check(n, vocab)?;
    let op = HeadCe {
        targets: spec.targets.to_vec(),
        soft: spec.soft.to_vec(),
        alpha: if spec.soft.is_empty() {
            0.0
        } else {
            spec.alpha as f32
        },
        rows: (spec.rows.start, spec.rows.len()),
        sink: sink_for(w),
        mode: gemm_mode(),
        saved: Mutex::new(None),
    };
    Ok(Some(h.contiguous()?.apply_op2(w, op)?))
}

/// Summed cross-entropy of `targets` under the logits `h W^T` over the whole head: h [n, d],
/// w [vocab, d]; a scalar. None where this device/dtype has no fused kernel.
pub fn head_ce_sum(h: &Tensor, w: &Tensor, targets: &[u32]) -> Result<Option<Tensor>> {
    let spec = HeadTargets {
        targets,
        rows: 0..w.dim(0)?,
        soft: &[],
        alpha: 0.0,
    };
    head_ce(h, w, &spec)?.map(|t| t.get(0)).transpose()
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

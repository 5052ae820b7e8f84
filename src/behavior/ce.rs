//! Full cross-entropy over the whole catalogue for SASRec (paper 3.2 baseline), fused on CPU:
//! one pass per row forward (log-sum-exp) and one backward (softmax minus one-hot), instead of
//! half a dozen catalogue-sized temporaries. Other devices use candle's composed ops.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Shape, Tensor};

/// Mean over rows of `logsumexp(logits[r]) - logits[r, targets[r]]`.
/// `logits` [m, n] f32, `targets` [m] u32 → scalar.
pub fn full_cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    match logits.device() {
        Device::Cpu => logits.contiguous()?.apply_op2(targets, FusedCe)?.mean_all(),
        _ => candle_nn::loss::cross_entropy(logits, targets),
    }
}

struct FusedCe;
struct FusedCeGrad;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("fused cross-entropy: {what} must be contiguous f32"),
    }
}

fn u32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [u32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("fused cross-entropy: {what} must be contiguous u32"),
    }
}

/// Checks shapes and returns (m, n).
fn dims(logits: &Layout, targets: &Layout) -> candle_core::Result<(usize, usize)> {
    let (m, n) = logits.shape().dims2()?;
    let mt = targets.shape().dims1()?;
    if mt != m || n == 0 {
        candle_core::bail!("fused cross-entropy: logits [{m}, {n}] with {mt} targets");
    }
    Ok((m, n))
}

/// Runs `f(row index, output chunk)` over rows split between threads; each row is computed the
/// same way whatever the split, so results do not depend on the thread count.
fn par_rows(out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = out.len() / row_len.max(1);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, rows.max(1));
    let per = rows.div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        for (c, chunk) in out.chunks_mut(per * row_len).enumerate() {
            let f = &f;
            sc.spawn(move || {
                for (i, row) in chunk.chunks_mut(row_len).enumerate() {
                    f(c * per + i, row);
                }
            });
        }
    });
}

/// max and log-sum-exp of a row.
fn lse(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    (max, max + sum.ln())
}

fn target_of(targets: &[u32], r: usize, n: usize) -> candle_core::Result<usize> {
    let t = targets[r] as usize;
    if t >= n {
        candle_core::bail!("fused cross-entropy: target {t} out of {n} classes");
    }
    Ok(t)
}

impl CustomOp2 for FusedCe {
    fn name(&self) -> &'static str {
        "fused-full-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, n) = dims(l1, l2)?;
        let logits = f32_slice(s1, l1, "logits")?;
        let targets = u32_slice(s2, l2, "targets")?;
        for r in 0..m {
            target_of(targets, r, n)?;
        }
        let mut out = vec![0f32; m];
        par_rows(&mut out, 1, |r, o| {
            let row = &logits[r * n..(r + 1) * n];
            o[0] = lse(row).1 - row[targets[r] as usize];
        });
        Ok((CpuStorage::F32(out), Shape::from(m)))
    }

    fn bwd(&self, logits: &Tensor, targets: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = logits.apply_op3_no_bwd(targets, &grad.contiguous()?, &FusedCeGrad)?;
        Ok((Some(g), None))
    }
}

impl CustomOp3 for FusedCeGrad {
    fn name(&self) -> &'static str {
        "fused-full-cross-entropy-grad"
    }

    /// `grad[r] * (softmax(logits[r]) - onehot(targets[r]))`, [m, n].
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, n) = dims(l1, l2)?;
        let logits = f32_slice(s1, l1, "logits")?;
        let targets = u32_slice(s2, l2, "targets")?;
        let grad = f32_slice(s3, l3, "gradient")?;
        if grad.len() != m {
            candle_core::bail!("fused cross-entropy: {} gradients for {m} rows", grad.len());
        }
        for r in 0..m {
            target_of(targets, r, n)?;
        }
        let mut out = vec![0f32; m * n];
        par_rows(&mut out, n, |r, o| {
            let row = &logits[r * n..(r + 1) * n];
            let (_, l) = lse(row);
            let g = grad[r];
            for (y, &x) in o.iter_mut().zip(row) {
                *y = g * (x - l).exp();
            }
            o[targets[r] as usize] -= g;
        });
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

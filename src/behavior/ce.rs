//! Full cross-entropy over the whole catalogue for SASRec (paper 3.2 baseline), fused on CPU:
//! one pass per row forward (log-sum-exp) and one backward (softmax minus one-hot), instead of
//! half a dozen catalogue-sized temporaries. Other devices use candle's composed ops.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Shape, Tensor};

/// Sum over rows of `logsumexp(logits[r]) - logits[r, targets[r]]`.
/// `logits` [m, n] f32, `targets` [m] u32 → scalar.
pub fn full_cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    match logits.device() {
        Device::Cpu => logits.contiguous()?.apply_op2(targets, FusedCe)?.sum_all(),
        _ => {
            let m = targets.dim(0)?;
            candle_nn::loss::cross_entropy(logits, targets)? * m as f64
        }
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
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, rows.max(1));
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

/// Lanes of the vectorisable reductions (a fixed order, so results are reproducible).
const LANES: usize = 8;

/// `exp(x)` for `x <= 0` (larger inputs are fine up to ~88) in a form the compiler vectorises:
/// range reduction by ln 2, a degree-6 Taylor polynomial (relative error < 2e-7), and the power
/// of two put into the exponent bits. Inputs below -87 give ~0.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let bits = ((k as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// max and log-sum-exp of a row.
fn lse(row: &[f32]) -> (f32, f32) {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &x) in mx.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = mx
        .iter()
        .chain(tail)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut acc = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += fast_exp(x - max);
        }
    }
    let sum: f32 = acc.iter().sum::<f32>() + tail.iter().map(|&x| fast_exp(x - max)).sum::<f32>();
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

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
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

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
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
                *y = g * fast_exp(x - l);
            }
            o[targets[r] as usize] -= g;
        });
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        for i in 0..=2000 {
            let x = -20.0 + i as f32 * 0.0125;
            let (got, want) = (fast_exp(x), x.exp());
            assert!((got - want).abs() <= 3e-7 * want, "{x}: {got} vs {want}");
        }
        assert!(fast_exp(-200.0) < 1e-37);
    }
}

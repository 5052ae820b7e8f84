//! Fused training ops with analytic backward passes (RMSNorm, RoPE + causal attention, the
//! linear layers, the LM head with its cross-entropy, the embedding) and the gradient buffers
//! they accumulate into. Why: candle's autograd composes these from dozens of small ops, each
//! allocating and filling a fresh tensor and each gradient contribution adding into a fresh
//! zero tensor; on a 2-core CPU that memory traffic cost as much as the matmuls (docs/perf.md).
//!
//! Every op falls back to the composed candle ops off the CPU, for non-f32 tensors, or when
//! `LLMBS_NO_FUSED_CPU` is set ([`crate::llm::kernels::fused_enabled`]).

pub mod attn;
pub mod ce;
pub mod embed;
pub mod grad;
pub mod linear;
pub mod mlp;
pub mod norm;

use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Storage, Tensor};

pub use grad::GradBuffers;

/// Runs `f` on the contiguous f32 data of the CPU tensors `ts`.
pub(crate) fn with_cpu<R>(
    ts: &[&Tensor],
    name: &str,
    f: impl FnOnce(&[&[f32]]) -> Result<R>,
) -> Result<R> {
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(ts.len());
    for (g, l) in &guards {
        match &**g {
            Storage::Cpu(c) => slices.push(crate::llm::kernels::slice(c, l, name)?),
            _ => candle_core::bail!("{name}: expected CPU tensors"),
        }
    }
    f(&slices)
}

/// An in-place op that hands the tensor's f32 data to a closure once.
struct Mutate<'a>(std::cell::RefCell<Option<MutateFn<'a>>>);

type MutateFn<'a> = Box<dyn FnOnce(&mut [f32]) -> Result<()> + 'a>;

impl InplaceOp1 for Mutate<'_> {
    fn name(&self) -> &'static str {
        "llmbs-mutate"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("in-place update of a non-contiguous tensor")
        };
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("in-place update: expected f32")
        };
        match self.0.borrow_mut().take() {
            Some(f) => f(&mut v[a..b]),
            None => Ok(()),
        }
    }
}

/// Runs `f` on the data of the contiguous f32 CPU tensor `t`, in place. `f` must not touch `t`
/// itself through another handle (its storage is write-locked meanwhile).
pub(crate) fn mutate_cpu(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
    t.inplace_op1(&Mutate(std::cell::RefCell::new(Some(Box::new(f)))))
}

/// A row-major view of a matrix inside a slice: element (i, j) at `i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A contiguous `[rows, cols]` matrix.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a contiguous `[rows, cols]` matrix.
    pub fn t(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }

    fn check(&self, r: usize, c: usize, what: &str) -> Result<()> {
        if r > 0 && c > 0 && (r - 1) * self.rs + (c - 1) * self.cs >= self.data.len() {
            candle_core::bail!("sgemm: {what} [{r}, {c}] does not fit its data")
        }
        Ok(())
    }
}

/// `dst[m, n] = (accumulate ? dst : 0) + a[m, k] · b[k, n]`, dst contiguous with row stride
/// `dst_rs`. `parallel` splits the work over the rayon pool (off inside a rayon task).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    parallel: bool,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    a.check(m, k, "lhs")?;
    b.check(k, n, "rhs")?;
    if (m - 1) * dst_rs + n > dst.len() {
        candle_core::bail!("sgemm: dst [{m}, {n}] does not fit its data")
    }
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(dst_rs)
                .take(m)
                .for_each(|r| r[..n].fill(0.0));
        }
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    let par = if parallel && threads > 1 && m * n * k >= 64 * 64 * 64 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the gemm touches was bounds-checked above against its slice, and
    // dst is borrowed mutably so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

/// A weight that a block op reads itself rather than taking as an input: its gradient goes to
/// its buffer, or nowhere when it is frozen.
pub(crate) struct Weight {
    pub w: Tensor,
    pub sink: Option<grad::Sink>,
}

impl Weight {
    /// None when `w` cannot be read directly (not contiguous f32 on the CPU) or needs a
    /// gradient that has nowhere to go but candle's autograd (no active buffer for it).
    pub fn new(w: &Tensor) -> Option<Self> {
        if !(crate::llm::kernels::use_fused(w) && w.is_contiguous()) {
            return None;
        }
        let sink = grad::sink_for(w);
        if sink.is_none() && w.track_op() {
            return None;
        }
        Some(Self { w: w.clone(), sink })
    }

    /// `dW (+)= a^T [n, k] · b [k, m]` given `a` as `[k, n]` rows and `b` as `[k, m]` rows, when
    /// the weight trains.
    pub fn add_grad(&self, a: &[f32], b: &[f32], (n, m, k): (usize, usize, usize)) -> Result<()> {
        match &self.sink {
            Some(s) => s.accumulate(|buf| {
                sgemm(
                    (n, m, k),
                    buf,
                    m,
                    true,
                    View::t(a, n),
                    View::rows(b, m),
                    true,
                )
            }),
            None => Ok(()),
        }
    }
}

/// `y [rows, out] = x [rows, in] · w^T` for a contiguous `w [out, in]`, into a new vector.
pub(crate) fn matmul_t(x: &[f32], w: &[f32], rows: usize, d_in: usize) -> Result<Vec<f32>> {
    let d_out = w.len() / d_in.max(1);
    let mut y = vec![0f32; rows * d_out];
    let (xv, wv) = (View::rows(x, d_in), View::t(w, d_in));
    sgemm((rows, d_out, d_in), &mut y, d_out, false, xv, wv, true)?;
    Ok(y)
}

/// `dx [rows, in] (+)= dy [rows, out] · w [out, in]`.
pub(crate) fn matmul_acc(
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    d_in: usize,
    acc: bool,
) -> Result<()> {
    let d_out = w.len() / d_in.max(1);
    let rows = dy.len() / d_out.max(1);
    let (gv, wv) = (View::rows(dy, d_out), View::rows(w, d_in));
    sgemm((rows, d_in, d_out), dx, d_in, acc, gv, wv, true)
}

/// A new contiguous f32 tensor of `shape` on `like`'s device from host data.
pub(crate) fn tensor(v: Vec<f32>, shape: &[usize], like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(v, shape, like.device())
}

#[cfg(test)]
mod tests;

//! Fused training ops with analytic backward passes (RMSNorm, RoPE + causal attention, the
//! linear layers, the LM head with its cross-entropy, the embedding) and the gradient buffers
//! they accumulate into. Why: candle's autograd composes these from dozens of small ops, each
//! allocating and filling a fresh tensor and each gradient contribution adding into a fresh
//! zero tensor; on a 2-core CPU that memory traffic cost as much as the matmuls (docs/perf.md).
//!
//! Every op falls back to the composed candle ops where it has no kernel (the CPU: f32; CUDA,
//! with the `cuda` feature: f32 and bf16) or when `LLMBS_NO_FUSED` is set
//! ([`crate::llm::switch::fused_enabled`]).

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attn;
#[cfg(target_arch = "x86_64")]
pub mod bgemm;
pub mod ce;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod embed;
pub mod grad;
pub mod linear;
pub mod mlp;
pub mod norm;
#[cfg(target_arch = "x86_64")]
pub mod peaks;
mod probe;
mod residual;
pub mod rope;
#[cfg(test)]
pub(crate) mod skip;
pub mod timing;
pub mod vmath;

use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Storage, Tensor};

pub use grad::GradBuffers;
pub use probe::{probe_cpu_gemm, time_gemm};

/// Other CPUs have no bf16 GEMM here: [`with_bf16_matmul`] has no effect there.
#[cfg(not(target_arch = "x86_64"))]
pub mod bgemm {
    pub fn available() -> bool {
        false
    }

    pub(crate) fn gemm(
        _: (usize, usize, usize),
        _: &mut [f32],
        _: usize,
        _: bool,
        _: (super::View, super::View),
        _: bool,
    ) {
        unreachable!("bgemm::available() is false off x86-64")
    }
}

/// Whether `t` goes through the CUDA kernels of the fused ops (`cuda` feature, f32 or bf16 on
/// a CUDA device, fused ops switched on).
pub fn on_cuda(t: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    {
        crate::llm::switch::fused_enabled() && cuda::supports(t.device(), t.dtype())
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = t;
        false
    }
}

/// Lets cuBLAS run f32 matmuls with TF32 inputs on `dev` (training; `LLMBS_NO_TF32` keeps full
/// f32). A process-wide cuBLAS setting; a no-op off CUDA.
pub fn allow_tf32(dev: &candle_core::Device) {
    if dev.is_cuda() && std::env::var_os("LLMBS_NO_TF32").is_none() {
        candle_core::cuda::set_gemm_reduced_precision_f32(true);
    }
}

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
            Storage::Cpu(c) => slices.push(crate::llm::switch::slice(c, l, name)?),
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

/// How a GEMM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gemm {
    /// f32 on the calling thread (inside a rayon task).
    Serial,
    /// f32 over the rayon pool.
    Parallel,
    /// bf16 products with f32 accumulation over the rayon pool ([`bgemm`]).
    Bf16,
    /// bf16 products with f32 accumulation on the calling thread.
    SerialBf16,
}

impl Gemm {
    /// The same precision on the calling thread (for GEMMs inside a rayon task).
    pub fn serial(self) -> Self {
        match self {
            Gemm::Bf16 | Gemm::SerialBf16 => Gemm::SerialBf16,
            Gemm::Serial | Gemm::Parallel => Gemm::Serial,
        }
    }
}

thread_local! {
    static BF16_MATMUL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the large matmuls of the fused ops built meanwhile on this thread (forward
/// and backward) taking bf16 inputs with f32 accumulation, where the CPU has AVX512-BF16:
/// `--dtype bf16` training on the CPU, f32 storage everywhere else.
pub fn with_bf16_matmul<R>(on: bool, f: impl FnOnce() -> R) -> R {
    let _scope = Bf16Matmul::new(on);
    f()
}

/// [`with_bf16_matmul`] as a guard: on until dropped.
pub struct Bf16Matmul(bool);

impl Bf16Matmul {
    pub fn new(on: bool) -> Self {
        Self(BF16_MATMUL.with(|c| c.replace(on)))
    }
}

impl Drop for Bf16Matmul {
    fn drop(&mut self) {
        BF16_MATMUL.with(|c| c.set(self.0));
    }
}

/// The bf16 GEMM: on AMX tiles where the CPU has them, else on VDPBF16PS
/// ([`bf16_kernel_name`]). The caller has checked the views and [`bgemm::available`].
fn bf16_gemm(
    dims: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    ab: (View, View),
    parallel: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if amx::available() {
        return amx::gemm(dims, dst, dst_rs, accumulate, ab, parallel);
    }
    bgemm::gemm(dims, dst, dst_rs, accumulate, ab, parallel)
}

/// Which kernel `--dtype bf16` GEMMs run on here: `amx`, `avx512-bf16` or `none`.
pub fn bf16_kernel_name() -> &'static str {
    if amx_available() {
        "amx"
    } else if bgemm::available() {
        "avx512-bf16"
    } else {
        "none"
    }
}

/// Whether this CPU runs the bf16 GEMM on AMX tiles.
pub fn amx_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`with_bf16_matmul`] would take effect on this CPU.
pub fn bf16_matmul_available() -> bool {
    bgemm::available()
}

/// The mode of the large GEMMs of an op built now on this thread.
pub(crate) fn gemm_mode() -> Gemm {
    if BF16_MATMUL.with(|c| c.get()) && bgemm::available() {
        Gemm::Bf16
    } else {
        Gemm::Parallel
    }
}

/// `dst[m, n] = (accumulate ? dst : 0) + a[m, k] · b[k, n]`, dst contiguous with row stride
/// `dst_rs`.
pub(crate) fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: View,
    b: View,
    mode: Gemm,
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
    if matches!(mode, Gemm::Bf16 | Gemm::SerialBf16) {
        bf16_gemm(
            (m, n, k),
            dst,
            dst_rs,
            accumulate,
            (a, b),
            mode == Gemm::Bf16,
        );
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    let par = if mode == Gemm::Parallel && threads > 1 && m * n * k >= 64 * 64 * 64 {
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
    pub mode: Gemm,
}

impl Weight {
    /// None when `w` cannot be read directly (not contiguous f32 on the CPU) or needs a
    /// gradient that has nowhere to go but candle's autograd (no active buffer for it).
    pub fn new(w: &Tensor) -> Option<Self> {
        if !(crate::llm::switch::use_fused(w) && w.is_contiguous()) {
            return None;
        }
        let sink = grad::sink_for(w);
        if sink.is_none() && w.track_op() {
            return None;
        }
        Some(Self {
            w: w.clone(),
            sink,
            mode: gemm_mode(),
        })
    }

    /// `dW (+)= a^T [n, k] · b [k, m]` given `a` as `[k, n]` rows and `b` as `[k, m]` rows, when
    /// the weight trains.
    pub fn add_grad(&self, a: &[f32], b: &[f32], (n, m, k): (usize, usize, usize)) -> Result<()> {
        match &self.sink {
            Some(s) => s.accumulate(|buf| {
                let (av, bv) = (View::t(a, n), View::rows(b, m));
                sgemm((n, m, k), buf, m, true, av, bv, self.mode)
            }),
            None => Ok(()),
        }
    }
}

/// `y [rows, out] = x [rows, in] · w^T` for a contiguous `w [out, in]`, into a new vector.
pub(crate) fn matmul_t(
    x: &[f32],
    w: &[f32],
    rows: usize,
    d_in: usize,
    mode: Gemm,
) -> Result<Vec<f32>> {
    let mut y = vec![0f32; rows * (w.len() / d_in.max(1))];
    matmul_t_into(&mut y, x, w, d_in, mode)?;
    Ok(y)
}

/// [`matmul_t`] into `y` [rows, out] (overwritten), e.g. a reused buffer.
pub(crate) fn matmul_t_into(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    d_in: usize,
    mode: Gemm,
) -> Result<()> {
    let d_out = w.len() / d_in.max(1);
    let rows = x.len() / d_in.max(1);
    let (xv, wv) = (View::rows(x, d_in), View::t(w, d_in));
    sgemm((rows, d_out, d_in), y, d_out, false, xv, wv, mode)
}

/// `dx [rows, in] (+)= dy [rows, out] · w [out, in]` (`acc`: add to dx).
pub(crate) fn matmul_acc(
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    (d_in, acc): (usize, bool),
    mode: Gemm,
) -> Result<()> {
    let d_out = w.len() / d_in.max(1);
    let rows = dy.len() / d_out.max(1);
    let (gv, wv) = (View::rows(dy, d_out), View::rows(w, d_in));
    sgemm((rows, d_in, d_out), dx, d_in, acc, gv, wv, mode)
}

/// Buffers too large for the allocator to keep (glibc maps anything above 32 MiB afresh and
/// unmaps it on free), kept here between uses: the LM head's `[n, vocab]` buffer was 200 MB of
/// fresh pages, ~50 k page faults, per step.
static BIG: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());
const BIG_BYTES: usize = 32 << 20;

/// A buffer of `len` floats with unspecified contents (callers overwrite all of it), reused
/// from [`give_big`] when one is large enough.
pub(crate) fn take_big(len: usize) -> Vec<f32> {
    if len * 4 >= BIG_BYTES {
        if let Ok(mut pool) = BIG.lock() {
            let best = (0..pool.len())
                .filter(|&i| pool[i].capacity() >= len)
                .min_by_key(|&i| pool[i].capacity());
            if let Some(i) = best {
                let mut v = pool.swap_remove(i);
                v.resize(len, 0.0);
                v.truncate(len);
                return v;
            }
        }
    }
    vec![0f32; len]
}

/// Returns a buffer from [`take_big`] for reuse (small ones are simply freed).
pub(crate) fn give_big(v: Vec<f32>) {
    if v.capacity() * 4 >= BIG_BYTES {
        if let Ok(mut pool) = BIG.lock() {
            if pool.len() < 4 {
                pool.push(v);
            }
        }
    }
}

/// A new contiguous f32 tensor of `shape` on `like`'s device from host data.
pub(crate) fn tensor(v: Vec<f32>, shape: &[usize], like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(v, shape, like.device())
}

#[cfg(test)]
mod tests;

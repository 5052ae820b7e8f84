//! CUDA launchers of the fused ops and of the multi-tensor AdamW step. The kernels
//! (`cuda/kernels.cu`) are compiled to PTX by `build.rs` with nvcc when the `cuda` feature is
//! on: compile errors show on the build machine (which has no GPU), nothing is compiled at
//! run time, and the driver JIT-compiles the PTX for the GPU it finds.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DevicePtr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Layout, Result, Shape, Storage, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/llmbs_kernels.ptx"));
const MODULE: &str = "llmbs_ops";
const THREADS: u32 = 256;

fn suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        d => candle_core::bail!("llmbs CUDA kernels: unsupported dtype {d:?}"),
    }
}

/// Whether the CUDA kernels take tensors of this device and dtype.
pub fn supports(dev: &Device, dtype: DType) -> bool {
    dev.is_cuda() && matches!(dtype, DType::F32 | DType::BF16)
}

/// The kernel `$name` of our module (loaded once per device).
macro_rules! kernel {
    ($dev:expr, $name:expr) => {
        $dev.get_or_load_custom_func(&$name, MODULE, PTX)?
    };
}

fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn rows_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn cuda_dev(t: &Tensor) -> Result<&CudaDevice> {
    match t.device() {
        Device::Cuda(d) => Ok(d),
        _ => candle_core::bail!("expected a CUDA tensor"),
    }
}

/// The contiguous data of a CUDA storage as a typed view.
fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, name: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<T>()?.slice(a..b)),
        None => candle_core::bail!("{name}: input must be contiguous"),
    }
}

fn storage<'a>(s: &'a Storage, name: &str) -> Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => candle_core::bail!("{name}: expected a CUDA tensor"),
    }
}

fn wrap<T: CudaDType>(s: CudaSlice<T>, dev: &CudaDevice, shape: impl Into<Shape>) -> Tensor {
    let st = Storage::Cuda(CudaStorage::wrap_cuda_slice(s, dev.clone()));
    Tensor::from_storage(st, shape, BackpropOp::none(), false)
}

/// Runs `$body` with `$t` bound to the Rust element type of `$dtype` (f32 or bf16).
macro_rules! typed {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            d => candle_core::bail!("llmbs CUDA kernels: unsupported dtype {d:?}"),
        }
    };
}

// ------------------------------------------------------------------ RMSNorm

/// y = rms_norm(x) * w over the last dimension.
pub fn rms_norm_fwd(
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let d = l2.shape().elem_count();
    let rows = l1.shape().elem_count() / d.max(1);
    let name = format!("rms_norm_fwd_{}", suffix(s1.dtype())?);
    typed!(s1.dtype(), T => {
        let x = view::<T>(s1, l1, "rms_norm")?;
        let w = view::<T>(s2, l2, "rms_norm")?;
        // SAFETY: every element is written by the kernel.
        let mut y = unsafe { dev.alloc::<T>(rows * d)? };
        let f = kernel!(dev, name);
        let mut b = f.builder();
        let (di, e) = (d as i32, eps);
        b.arg(&x).arg(&w).arg(&mut y).arg(&di).arg(&e);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { b.launch(rows_cfg(rows)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), l1.shape().clone()))
    })
}

/// (dx, dw) of RMSNorm for x [rows, d], w [d], output gradient g.
pub fn rms_norm_bwd(x: &Tensor, w: &Tensor, g: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let dev = cuda_dev(x)?.clone();
    let d = w.elem_count();
    if d > 8 * THREADS as usize {
        candle_core::bail!("rms_norm bwd: width {d} above {}", 8 * THREADS)
    }
    let rows = x.elem_count() / d.max(1);
    let rpb = 32usize;
    let parts = rows.div_ceil(rpb).max(1);
    let sfx = suffix(x.dtype())?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (gs, gl) = g.storage_and_layout();
    typed!(x.dtype(), T => {
        let xv = view::<T>(storage(&xs, "rms_norm bwd")?, xl, "rms_norm bwd")?;
        let wv = view::<T>(storage(&ws, "rms_norm bwd")?, wl, "rms_norm bwd")?;
        let gv = view::<T>(storage(&gs, "rms_norm bwd")?, gl, "rms_norm bwd")?;
        // SAFETY: dx and the partials are fully written by the first kernel, dw by the second.
        let mut dx = unsafe { dev.alloc::<T>(rows * d)? };
        let mut part = unsafe { dev.alloc::<f32>(parts * d)? };
        let mut dw = unsafe { dev.alloc::<T>(d)? };
        let f = kernel!(dev, format!("rms_norm_bwd_{sfx}"));
        let mut b = f.builder();
        let (ri, di, pi, e) = (rows as i32, d as i32, rpb as i32, eps);
        b.arg(&xv).arg(&wv).arg(&gv).arg(&mut dx).arg(&mut part);
        b.arg(&ri).arg(&di).arg(&pi).arg(&e);
        // SAFETY: as above.
        unsafe { b.launch(rows_cfg(parts)) }.w()?;
        let f = kernel!(dev, format!("col_sum_{sfx}"));
        let mut b = f.builder();
        let ni = parts as i32;
        b.arg(&part).arg(&mut dw).arg(&ni).arg(&di);
        // SAFETY: as above.
        unsafe { b.launch(grid(d)) }.w()?;
        Ok((wrap(dx, &dev, x.shape().clone()), wrap(dw, &dev, w.shape().clone())))
    })
}

// ------------------------------------------------------------------ RoPE

/// Rotate-half RoPE of x [b, h, t, hd] (contiguous) by cos/sin [t | b t, hd / 2] (of x's
/// dtype); `inverse` rotates back (the gradient).
pub fn rope(
    (s, l): (&CudaStorage, &Layout),
    cos: &Tensor,
    sin: &Tensor,
    inverse: bool,
) -> Result<(CudaStorage, Shape)> {
    let dev = s.device().clone();
    let (b, h, t, hd) = l.shape().dims4()?;
    let per_row = cos.rank() == 3;
    let sfx = suffix(s.dtype())?;
    let (cs, cl) = cos.storage_and_layout();
    let (ss, sl) = sin.storage_and_layout();
    let n = l.shape().elem_count();
    typed!(s.dtype(), T => {
        let xv = view::<T>(s, l, "rope")?;
        let cv = view::<T>(storage(&cs, "rope")?, cl, "rope")?;
        let sv = view::<T>(storage(&ss, "rope")?, sl, "rope")?;
        // SAFETY: every element is written by the kernel.
        let mut y = unsafe { dev.alloc::<T>(n)? };
        let f = kernel!(dev, format!("rope_{sfx}"));
        let mut bld = f.builder();
        let dims = [b as i32, t as i32, h as i32, hd as i32, per_row as i32, inverse as i32];
        bld.arg(&xv).arg(&cv).arg(&sv).arg(&mut y);
        for v in &dims {
            bld.arg(v);
        }
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { bld.launch(grid(n / 2)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), l.shape().clone()))
    })
}

// ------------------------------------------------------------------ causal softmax

/// Masked softmax of `scale * att` (see `kernels::CausalSoftmax`): att [b, kv, rows, kv_len],
/// valid [b, kv_len] (u8).
pub fn causal_softmax_fwd(
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (t, past, scale): (usize, usize, f32),
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let dims = l1.shape().dims();
    let kv_len = dims[dims.len() - 1];
    let n = l1.shape().elem_count();
    let rows = n / kv_len.max(1);
    let rows_per_batch = rows / dims[0].max(1);
    let name = format!("causal_softmax_fwd_{}", suffix(s1.dtype())?);
    typed!(s1.dtype(), T => {
        let x = view::<T>(s1, l1, "causal_softmax")?;
        let valid = view::<u8>(s2, l2, "causal_softmax")?;
        // SAFETY: every element is written by the kernel.
        let mut y = unsafe { dev.alloc::<T>(n)? };
        let f = kernel!(dev, name);
        let mut b = f.builder();
        let (kl, ti, pi, rpb, sc) = (kv_len as i32, t as i32, past as i32, rows_per_batch as i32, scale);
        b.arg(&x).arg(&valid).arg(&mut y).arg(&kl).arg(&ti).arg(&pi).arg(&rpb).arg(&sc);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { b.launch(rows_cfg(rows)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), l1.shape().clone()))
    })
}

/// dx = scale * y * (g - rowsum(g * y)) over the last dimension.
pub fn softmax_bwd(y: &Tensor, g: &Tensor, scale: f32) -> Result<Tensor> {
    let dev = cuda_dev(y)?.clone();
    let cols = y.dim(candle_core::D::Minus1)?;
    let rows = y.elem_count() / cols.max(1);
    let sfx = suffix(y.dtype())?;
    let (ys, yl) = y.storage_and_layout();
    let (gs, gl) = g.storage_and_layout();
    typed!(y.dtype(), T => {
        let yv = view::<T>(storage(&ys, "softmax bwd")?, yl, "softmax bwd")?;
        let gv = view::<T>(storage(&gs, "softmax bwd")?, gl, "softmax bwd")?;
        // SAFETY: every element is written by the kernel.
        let mut dx = unsafe { dev.alloc::<T>(y.elem_count())? };
        let f = kernel!(dev, format!("softmax_bwd_{sfx}"));
        let mut b = f.builder();
        let (ci, sc) = (cols as i32, scale);
        b.arg(&yv).arg(&gv).arg(&mut dx).arg(&ci).arg(&sc);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { b.launch(rows_cfg(rows)) }.w()?;
        Ok(wrap(dx, &dev, y.shape().clone()))
    })
}

// ------------------------------------------------------------------ SiLU x up

pub fn silu_mul_fwd(
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let n = l1.shape().elem_count();
    let name = format!("silu_mul_fwd_{}", suffix(s1.dtype())?);
    typed!(s1.dtype(), T => {
        let g = view::<T>(s1, l1, "silu_mul")?;
        let u = view::<T>(s2, l2, "silu_mul")?;
        // SAFETY: every element is written by the kernel.
        let mut y = unsafe { dev.alloc::<T>(n)? };
        let f = kernel!(dev, name);
        let mut b = f.builder();
        let nn = n;
        b.arg(&g).arg(&u).arg(&mut y).arg(&nn);
        // SAFETY: the argument list matches the kernel's signature (size_t n).
        unsafe { b.launch(grid(n)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), l1.shape().clone()))
    })
}

/// (dg, du) of silu(g) * u.
pub fn silu_mul_bwd(g: &Tensor, u: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    let dev = cuda_dev(g)?.clone();
    let n = g.elem_count();
    let sfx = suffix(g.dtype())?;
    let (gs, gl) = g.storage_and_layout();
    let (us, ul) = u.storage_and_layout();
    let (ds, dl) = grad.storage_and_layout();
    let both = typed!(g.dtype(), T => {
        let gv = view::<T>(storage(&gs, "silu_mul bwd")?, gl, "silu_mul bwd")?;
        let uv = view::<T>(storage(&us, "silu_mul bwd")?, ul, "silu_mul bwd")?;
        let dv = view::<T>(storage(&ds, "silu_mul bwd")?, dl, "silu_mul bwd")?;
        // SAFETY: every element is written by the kernel.
        let mut out = unsafe { dev.alloc::<T>(2 * n)? };
        let f = kernel!(dev, format!("silu_mul_bwd_{sfx}"));
        let mut b = f.builder();
        let nn = n;
        b.arg(&gv).arg(&uv).arg(&dv).arg(&mut out).arg(&nn);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { b.launch(grid(n)) }.w()?;
        wrap(out, &dev, 2 * n)
    });
    Ok((
        both.narrow(0, 0, n)?.reshape(g.shape())?,
        both.narrow(0, n, n)?.reshape(g.shape())?,
    ))
}

// ------------------------------------------------------------------ cross-entropy

/// The summed loss of `targets` (a device u32 tensor [n]) under logits [n, vocab], and the
/// per-row log-sum-exp [n] (f32) for the backward.
pub fn ce_fwd((s, l): (&CudaStorage, &Layout), targets: &Tensor) -> Result<(CudaStorage, Tensor)> {
    let dev = s.device().clone();
    let (n, vocab) = l.shape().dims2()?;
    let sfx = suffix(s.dtype())?;
    let (ts, tl) = targets.storage_and_layout();
    typed!(s.dtype(), T => {
        let lv = view::<T>(s, l, "cross-entropy")?;
        let tv = view::<u32>(storage(&ts, "cross-entropy")?, tl, "cross-entropy")?;
        // SAFETY: every element is written by the kernels.
        let mut loss = unsafe { dev.alloc::<f32>(n.max(1))? };
        let mut lse = unsafe { dev.alloc::<f32>(n.max(1))? };
        let mut total = dev.alloc_zeros::<f32>(1)?;
        if n > 0 {
            let f = kernel!(dev, format!("ce_fwd_{sfx}"));
            let mut b = f.builder();
            let vi = vocab as i32;
            b.arg(&lv).arg(&tv).arg(&mut loss).arg(&mut lse).arg(&vi);
            // SAFETY: the argument list matches the kernel's signature.
            unsafe { b.launch(rows_cfg(n)) }.w()?;
            let f = kernel!(dev, "sum_f32");
            let mut b = f.builder();
            let ni = n as i32;
            b.arg(&loss).arg(&mut total).arg(&ni);
            // SAFETY: as above; one block.
            unsafe { b.launch(rows_cfg(1)) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(total, dev.clone()), wrap(lse, &dev, n.max(1))))
    })
}

/// dlogits = g * (softmax - onehot(targets)), g the loss gradient (a scalar).
pub fn ce_bwd(logits: &Tensor, targets: &Tensor, lse: &Tensor, g: &Tensor) -> Result<Tensor> {
    let dev = cuda_dev(logits)?.clone();
    let (n, vocab) = logits.dims2()?;
    let sfx = suffix(logits.dtype())?;
    let g = g.to_dtype(DType::F32)?.reshape(1)?;
    let (ls, ll) = logits.storage_and_layout();
    let (ts, tl) = targets.storage_and_layout();
    let (zs, zl) = lse.storage_and_layout();
    let (gs, gl) = g.storage_and_layout();
    typed!(logits.dtype(), T => {
        let lv = view::<T>(storage(&ls, "cross-entropy bwd")?, ll, "cross-entropy bwd")?;
        let tv = view::<u32>(storage(&ts, "cross-entropy bwd")?, tl, "cross-entropy bwd")?;
        let zv = view::<f32>(storage(&zs, "cross-entropy bwd")?, zl, "cross-entropy bwd")?;
        let gv = view::<f32>(storage(&gs, "cross-entropy bwd")?, gl, "cross-entropy bwd")?;
        // SAFETY: every element is written by the kernel.
        let mut dl = unsafe { dev.alloc::<T>((n * vocab).max(1))? };
        if n > 0 {
            let f = kernel!(dev, format!("ce_bwd_{sfx}"));
            let mut b = f.builder();
            let vi = vocab as i32;
            b.arg(&lv).arg(&tv).arg(&zv).arg(&gv).arg(&mut dl).arg(&vi);
            // SAFETY: the argument list matches the kernel's signature.
            unsafe { b.launch(rows_cfg(n)) }.w()?;
        }
        Ok(wrap(dl, &dev, (n * vocab).max(1)).narrow(0, 0, n * vocab)?.reshape((n, vocab))?)
    })
}

// ------------------------------------------------------------------ embedding

/// Rows `ids` (host) of w [vocab, d] -> [n, d].
pub fn embedding_fwd((s, l): (&CudaStorage, &Layout), ids: &[u32]) -> Result<(CudaStorage, Shape)> {
    let dev = s.device().clone();
    let d = l.shape().dims2()?.1;
    let n = ids.len();
    let name = format!("embedding_fwd_{}", suffix(s.dtype())?);
    typed!(s.dtype(), T => {
        let w = view::<T>(s, l, "embedding")?;
        if n == 0 || d == 0 {
            candle_core::bail!("embedding: no ids")
        }
        let idv = dev.clone_htod(ids)?;
        // SAFETY: every element is written by the kernel.
        let mut out = unsafe { dev.alloc::<T>(n * d)? };
        let f = kernel!(dev, name);
        let mut b = f.builder();
        let (ni, di) = (n as i32, d as i32);
        b.arg(&w).arg(&idv).arg(&mut out).arg(&ni).arg(&di);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { b.launch(grid(n * d)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((n, d))))
    })
}

/// dW [vocab, d] from the output gradient g [n, d]: one block per distinct id sums its
/// positions in order (positions grouped by id on the host: `ids` are host data anyway).
pub fn embedding_bwd(g: &Tensor, ids: &[u32], vocab: usize) -> Result<Tensor> {
    let dev = cuda_dev(g)?.clone();
    let d = g.dim(1)?;
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&p| (ids[p as usize], p));
    let (mut uniq, mut offs) = (Vec::new(), Vec::new());
    for (k, &p) in order.iter().enumerate() {
        let id = ids[p as usize];
        if uniq.last() != Some(&id) {
            uniq.push(id);
            offs.push(k as u32);
        }
    }
    offs.push(order.len() as u32);
    let sfx = suffix(g.dtype())?;
    let (gs, gl) = g.storage_and_layout();
    typed!(g.dtype(), T => {
        let gv = view::<T>(storage(&gs, "embedding bwd")?, gl, "embedding bwd")?;
        let mut dw = dev.alloc_zeros::<T>(vocab * d)?;
        if !uniq.is_empty() {
            let (uv, ov, pv) = (dev.clone_htod(&uniq)?, dev.clone_htod(&offs)?, dev.clone_htod(&order)?);
            let f = kernel!(dev, format!("embedding_bwd_{sfx}"));
            let mut b = f.builder();
            let di = d as i32;
            b.arg(&gv).arg(&uv).arg(&ov).arg(&pv).arg(&mut dw).arg(&di);
            // SAFETY: the argument list matches the kernel's signature.
            unsafe { b.launch(rows_cfg(uniq.len())) }.w()?;
        }
        Ok(wrap(dw, &dev, (vocab, d)))
    })
}

// ------------------------------------------------------------------ multi-tensor AdamW

/// Elements per block of the AdamW kernels (`CHUNK` in kernels.cu).
const ADAMW_CHUNK: usize = 4096;

/// The hyper-parameters of one multi-tensor step.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub bc1: f32,
    pub bc2: f32,
    pub max_norm: f32,
}

/// One AdamW step over every parameter at once: `w[i]` (contiguous f32 CUDA variables,
/// updated in place), `g[i]` their gradients, `m`/`v` the flat f32 moments (parameter i at
/// `offsets[i]..offsets[i + 1]`), `decay[i] = 1 - lr * wd_i`. Three launches: the gradients'
/// sum of squares by chunk, the global norm and clip factor, the update. Returns the norm.
pub fn adamw_multi(
    w: &[&Tensor],
    g: &[&Tensor],
    (m, v): (&Tensor, &Tensor),
    offsets: &[i64],
    decay: &[f32],
    h: AdamWStep,
) -> Result<f64> {
    let Some(first) = w.first() else {
        return Ok(0.0);
    };
    let dev = cuda_dev(first)?.clone();
    let stream = dev.cuda_stream();
    let n = w.len();
    let total = *offsets.last().unwrap_or(&0);
    if g.len() != n || offsets.len() != n + 1 || decay.len() != n {
        candle_core::bail!("adamw_multi: {n} parameters, {} gradients", g.len())
    }
    let guards: Vec<_> = w.iter().chain(g).map(|t| t.storage_and_layout()).collect();
    let mut ptrs = Vec::with_capacity(2 * n);
    let mut syncs = Vec::with_capacity(2 * n);
    for (i, (st, l)) in guards.iter().enumerate() {
        let s = storage(st, "adamw")?.as_cuda_slice::<f32>()?;
        let (a, b) = match l.contiguous_offsets() {
            Some(o) => o,
            None => candle_core::bail!("adamw: parameter or gradient {i} is not contiguous"),
        };
        let want = offsets[i % n + 1] - offsets[i % n];
        if (b - a) as i64 != want {
            candle_core::bail!(
                "adamw: parameter {} has {} elements, expected {want}",
                i % n,
                b - a
            )
        }
        let (p, sync) = s.device_ptr(&stream);
        ptrs.push(p + (a * std::mem::size_of::<f32>()) as u64);
        syncs.push(sync);
    }
    let w_ptrs = dev.clone_htod(&ptrs[..n])?;
    let g_ptrs = dev.clone_htod(&ptrs[n..])?;
    let offs = dev.clone_htod(offsets)?;
    let dec = dev.clone_htod(decay)?;
    let chunks = (total as usize).div_ceil(ADAMW_CHUNK).max(1);
    let mut partial = dev.alloc_zeros::<f64>(chunks)?;
    let mut norm_sq = dev.alloc_zeros::<f64>(1)?;
    let mut scale = dev.alloc_zeros::<f32>(1)?;
    let cfg = LaunchConfig {
        grid_dim: (chunks as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let (ni, tot) = (n as i32, total);
    let f = kernel!(dev, "adamw_sumsq");
    let mut b = f.builder();
    b.arg(&g_ptrs)
        .arg(&offs)
        .arg(&ni)
        .arg(&tot)
        .arg(&mut partial);
    // SAFETY: the argument list matches the kernel's signature; the pointers stay valid while
    // `guards` hold the storages.
    unsafe { b.launch(cfg) }.w()?;
    let f = kernel!(dev, "adamw_norm");
    let mut b = f.builder();
    let (ci, mx) = (chunks as i32, h.max_norm);
    b.arg(&partial)
        .arg(&ci)
        .arg(&mut norm_sq)
        .arg(&mut scale)
        .arg(&mx);
    // SAFETY: as above; one thread does the work.
    unsafe { b.launch(rows_cfg(1)) }.w()?;
    let (ms, ml) = m.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let mv = view::<f32>(storage(&ms, "adamw")?, ml, "adamw")?;
    let vv = view::<f32>(storage(&vs, "adamw")?, vl, "adamw")?;
    let f = kernel!(dev, "adamw_step");
    let mut b = f.builder();
    let hs = [h.lr, h.beta1, h.beta2, h.eps, h.bc1, h.bc2];
    b.arg(&w_ptrs)
        .arg(&g_ptrs)
        .arg(&offs)
        .arg(&dec)
        .arg(&ni)
        .arg(&tot);
    b.arg(&mv).arg(&vv).arg(&scale);
    for x in &hs {
        b.arg(x);
    }
    // SAFETY: as above. m and v are written through views of their storages, which only this
    // optimizer holds.
    unsafe { b.launch(cfg) }.w()?;
    let norm_sq = dev.clone_dtoh(&norm_sq)?;
    drop(syncs);
    Ok(norm_sq.first().copied().unwrap_or(0.0).sqrt())
}

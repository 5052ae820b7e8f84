//! Fused kernels for the elementwise parts of the decoder, each with a backward pass so the
//! training path can use them too: on 2 cores candle's single-threaded elementwise ops cost as
//! much as the matmuls. f32 on the CPU; f32 and bf16 on CUDA with the `cuda` feature
//! (llm::ops::cuda); other devices and dtypes take the composed candle ops.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

const CHUNK: usize = 16 * 1024;

pub use super::switch::{fused_enabled, with_fused};
use super::switch::{slice, use_fused};

/// The CPU kernels or the CUDA ones.
fn fused_any(t: &Tensor) -> bool {
    use_fused(t) || crate::llm::ops::on_cuda(t)
}

/// Whether [`causal_softmax`] has a kernel for this device and dtype (the model then builds no
/// additive mask).
pub fn causal_softmax_supported(dev: &candle_core::Device, dtype: DType) -> bool {
    if !fused_enabled() {
        return false;
    }
    #[cfg(feature = "cuda")]
    if crate::llm::ops::cuda::supports(dev, dtype) {
        return true;
    }
    dev.is_cpu() && dtype == DType::F32
}

/// `f(a[i], b[i])` over two same-sized contiguous f32 inputs, in parallel chunks.
fn zip_map(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    name: &str,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<(CpuStorage, Shape)> {
    let (a, b) = (slice(s1, l1, name)?, slice(s2, l2, name)?);
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            o.iter_mut()
                .zip(a.iter().zip(b))
                .for_each(|(o, (&a, &b))| *o = f(a, b))
        });
    Ok((CpuStorage::F32(out), l1.shape().clone()))
}

struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "llmbs-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        zip_map(s1, l1, s2, l2, "add", |a, b| a + b)
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(g.clone()), Some(g.clone())))
    }
}

/// `a + b` for same-shaped tensors (the residual connections).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if use_fused(a) && a.shape() == b.shape() {
        a.contiguous()?.apply_op2(&b.contiguous()?, Add)
    } else {
        a + b
    }
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "llmbs-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (slice(s1, l1, "silu_mul")?, slice(s2, l2, "silu_mul")?);
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| crate::llm::ops::vmath::silu_mul(g, u, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::llm::ops::cuda::silu_mul_fwd((s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if use_fused(grad) {
            let (dg, du) = silu_mul_bwd_cpu(g, u, &grad.contiguous()?)?;
            return Ok((Some(dg), Some(du)));
        }
        #[cfg(feature = "cuda")]
        if crate::llm::ops::on_cuda(grad) {
            let (dg, du) = crate::llm::ops::cuda::silu_mul_bwd(g, u, &grad.contiguous()?)?;
            return Ok((Some(dg), Some(du)));
        }
        let sig = candle_nn::ops::sigmoid(g)?;
        let silu = (g * &sig)?;
        // d silu / dg = sig * (1 + g * (1 - sig))
        let dsilu = (&sig * ((g * (1.0 - &sig)?)? + 1.0)?)?;
        let dg = (grad * u)?.mul(&dsilu)?;
        let du = (grad * silu)?;
        Ok((Some(dg), Some(du)))
    }
}

/// Both input gradients of `silu(g) * u` in one pass over g, u and the output gradient (the
/// composed backward makes eight passes and as many temporaries):
/// dg = grad * u * sig * (1 + g * (1 - sig)), du = grad * silu(g).
fn silu_mul_bwd_cpu(g: &Tensor, u: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = g.elem_count();
    let mut out = vec![0f32; 2 * n];
    {
        let (gs, gl) = g.storage_and_layout();
        let (us, ul) = u.storage_and_layout();
        let (ds, dl) = grad.storage_and_layout();
        let (g, u, d) = match (&*gs, &*us, &*ds) {
            (
                candle_core::Storage::Cpu(g),
                candle_core::Storage::Cpu(u),
                candle_core::Storage::Cpu(d),
            ) => (
                slice(g, gl, "silu_mul bwd")?,
                slice(u, ul, "silu_mul bwd")?,
                slice(d, dl, "silu_mul bwd")?,
            ),
            _ => candle_core::bail!("silu_mul bwd: expected CPU tensors"),
        };
        let (dg, du) = out.split_at_mut(n);
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, (dg, du))| {
                let o = c * CHUNK;
                dg.copy_from_slice(&g[o..o + dg.len()]);
                du.copy_from_slice(&u[o..o + du.len()]);
                crate::llm::ops::vmath::silu_mul_bwd_inplace(dg, du, &d[o..o + dg.len()]);
            });
    }
    let both = Tensor::from_vec(out, 2 * n, g.device())?;
    Ok((
        both.narrow(0, 0, n)?.reshape(g.shape())?,
        both.narrow(0, n, n)?.reshape(g.shape())?,
    ))
}

/// `silu(g) * u` (the SwiGLU gate).
pub fn silu_mul(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if fused_any(g) && g.shape() == u.shape() && g.dtype() == u.dtype() {
        g.contiguous()?.apply_op2(&u.contiguous()?, SiluMul)
    } else {
        candle_nn::ops::silu(g)? * u
    }
}

/// Scaled, masked softmax over attention scores laid out `[b, kv, n_rep * t, kv_len]`: query
/// row `i` (of the `t` new positions, after `past` cached ones) sees keys `j <= past + i` that
/// `valid` (`[b, kv_len]`, u8) marks real.
struct CausalSoftmax {
    scale: f32,
    t: usize,
    past: usize,
}

impl CustomOp2 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "llmbs-causal-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "causal_softmax")?;
        let valid: &[u8] = match l2.contiguous_offsets() {
            Some((a, b)) => &s2.as_slice::<u8>()?[a..b],
            None => candle_core::bail!("causal_softmax: mask must be contiguous"),
        };
        let dims = l1.shape().dims();
        let kv_len = dims[dims.len() - 1];
        let rows_per_batch = x.len() / kv_len / dims[0].max(1);
        let (t, past, scale) = (self.t, self.past, self.scale);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(kv_len)
            .zip(x.par_chunks(kv_len))
            .enumerate()
            .for_each(|(r, (o, x))| {
                let bi = r / rows_per_batch;
                let i = r % t;
                let vmask = &valid[bi * kv_len..(bi + 1) * kv_len];
                let limit = (past + i + 1).min(kv_len);
                let mut m = f32::NEG_INFINITY;
                for j in 0..limit {
                    if vmask[j] != 0 {
                        m = m.max(x[j] * scale);
                    }
                }
                if m == f32::NEG_INFINITY {
                    return; // no visible key: zeros
                }
                let mut sum = 0f32;
                for j in 0..limit {
                    if vmask[j] != 0 {
                        let e = (x[j] * scale - m).exp();
                        o[j] = e;
                        sum += e;
                    }
                }
                let inv = 1.0 / sum;
                o[..limit].iter_mut().for_each(|v| *v *= inv);
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let p = (self.t, self.past, self.scale);
        crate::llm::ops::cuda::causal_softmax_fwd((s1, l1), (s2, l2), p)
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if crate::llm::ops::on_cuda(y) {
            let dx = crate::llm::ops::cuda::softmax_bwd(y, &grad.contiguous()?, self.scale)?;
            return Ok((Some(dx), None));
        }
        let gy = (grad * y)?;
        let s = gy.sum_keepdim(D::Minus1)?;
        let dx = ((gy - y.broadcast_mul(&s)?)? * self.scale as f64)?;
        Ok((Some(dx), None))
    }
}

/// Softmax of `scale * att` under the causal + key-validity mask; see [`CausalSoftmax`].
/// `None` when this device/dtype has no fused kernel (the caller composes the ops instead).
pub fn causal_softmax(
    att: &Tensor,
    scale: f64,
    t: usize,
    past: usize,
    valid: &Tensor,
) -> Result<Option<Tensor>> {
    if !fused_any(att) {
        return Ok(None);
    }
    let op = CausalSoftmax {
        scale: scale as f32,
        t,
        past,
    };
    Ok(Some(att.contiguous()?.apply_op2(
        &valid.to_dtype(DType::U8)?.contiguous()?,
        op,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn fused_ops_match_composed_ops_forward_and_backward() {
        let g = Var::from_tensor(&rand(&[3, 5, 7], 1)).unwrap();
        let u = Var::from_tensor(&rand(&[3, 5, 7], 2)).unwrap();
        let w = rand(&[3, 5, 7], 3);
        let fused = silu_mul(&g, &u).unwrap();
        let plain = (candle_nn::ops::silu(&g).unwrap() * u.as_tensor()).unwrap();
        assert!(close(&fused, &plain) < 1e-5);
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&g, &u] {
            assert!(close(gf.get(v).unwrap(), gp.get(v).unwrap()) < 1e-4);
        }
        let s = add(&g, &u).unwrap();
        assert!(close(&s, &(g.as_tensor() + u.as_tensor()).unwrap()) < 1e-6);

        // [b=2, kv=1, n_rep*t = 2*3, kv_len = 2 past + 3 new]
        let (t, past) = (3usize, 2usize);
        let x = Var::from_tensor(&rand(&[2, 1, 6, 5], 4)).unwrap();
        let valid = Tensor::new(&[[1u8, 1, 1, 1, 1], [0, 1, 1, 1, 0]], &Device::Cpu).unwrap();
        let fused = causal_softmax(&x, 0.5, t, past, &valid).unwrap().unwrap();
        let mut mask = vec![0f32; 2 * 6 * 5];
        for b in 0..2 {
            for r in 0..6 {
                for j in 0..5 {
                    let i = r % t;
                    let ok = j <= past + i && valid.to_vec2::<u8>().unwrap()[b][j] == 1;
                    mask[(b * 6 + r) * 5 + j] = if ok { 0.0 } else { f32::NEG_INFINITY };
                }
            }
        }
        let mask = Tensor::from_vec(mask, (2, 1, 6, 5), &Device::Cpu).unwrap();
        let plain = candle_nn::ops::softmax(
            &(x.as_tensor() * 0.5).unwrap().add(&mask).unwrap(),
            D::Minus1,
        )
        .unwrap();
        assert!(close(&fused, &plain) < 1e-5);
        let w = rand(&[2, 1, 6, 5], 5);
        let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(close(gf.get(&x).unwrap(), gp.get(&x).unwrap()) < 1e-4);
    }
}

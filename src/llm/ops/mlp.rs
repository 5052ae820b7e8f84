//! The SwiGLU MLP `down(silu(gate(x)) * up(x))` as one op when its three weights either train
//! into gradient buffers or are frozen: one autograd node instead of four (each of which
//! costs candle a zero tensor and an addition in the backward), the gate and up activations
//! kept inside the op for the backward, the weight gradients added in place.
//!
//! Backward, with a = silu(g) * u: dWd += dy^T a, da = dy Wd, dg = da * u * silu'(g),
//! du = da * silu(g), dWg += dg^T x, dWu += du^T x, dx = dg Wg + du Wu.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::residual::PreNorm;
use super::{matmul_acc, matmul_t, tensor, with_cpu, Weight};
use crate::llm::switch::{slice, use_fused};

const CHUNK: usize = 1 << 14;

struct Mlp {
    gate: Weight,
    up: Weight,
    down: Weight,
    /// The pre-norm and residual around the MLP (see [`mlp_sublayer`]).
    pre: Option<PreNorm>,
    /// (h, g, u) from the forward (h, the norm output, only with `pre`), for the backward.
    saved: Mutex<Option<[Vec<f32>; 3]>>,
}

fn silu_mul(g: &[f32], u: &[f32]) -> Vec<f32> {
    let mut a = vec![0f32; g.len()];
    a.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(a, (g, u))| super::vmath::silu_mul(g, u, a));
    a
}

impl Mlp {
    fn gate_up(&self, x: &[f32], w: [&[f32]; 2], d: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let rows = x.len() / d;
        let m = self.gate.mode;
        Ok((
            matmul_t(x, w[0], rows, d, m)?,
            matmul_t(x, w[1], rows, d, m)?,
        ))
    }

    /// gate, up, down, then the norm's weight.
    fn tensors(&self) -> Vec<&Tensor> {
        let mut ts = vec![&self.gate.w, &self.up.w, &self.down.w];
        if let Some(p) = &self.pre {
            ts.push(&p.norm.w);
        }
        ts
    }

    /// [h, g, u] and the output for input x.
    fn forward(&self, x: &[f32], w: &[&[f32]], d: usize) -> Result<([Vec<f32>; 3], Vec<f32>)> {
        let rows = x.len() / d.max(1);
        let h = match &self.pre {
            Some(p) => p.forward(x, w[3]),
            None => Vec::new(),
        };
        let input = if self.pre.is_some() { &h[..] } else { x };
        let (g, u) = self.gate_up(input, [w[0], w[1]], d)?;
        let a = silu_mul(&g, &u);
        let mut y = matmul_t(&a, w[2], rows, g.len() / rows.max(1), self.down.mode)?;
        if self.pre.is_some() {
            y.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y += x));
        }
        Ok(([h, g, u], y))
    }
}

impl CustomOp1 for Mlp {
    fn name(&self) -> &'static str {
        "llmbs-mlp"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::scope("mlp fwd");
        let x = slice(s, l, "mlp")?;
        let d = *l.shape().dims().last().unwrap_or(&1);
        let (saved, y) = with_cpu(&self.tensors(), "mlp", |w| self.forward(x, w, d))?;
        if let Ok(mut slot) = self.saved.lock() {
            *slot = Some(saved);
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let _t = super::timing::scope("mlp bwd");
        let dy = dy.contiguous()?;
        let d = x.dim(candle_core::D::Minus1)?;
        let kept = self.saved.lock().ok().and_then(|mut s| s.take());
        let mut ts = vec![x, &dy];
        ts.extend(self.tensors());
        let dx = with_cpu(&ts, "mlp bwd", |s| {
            let (x, dy, w) = (s[0], s[1], &s[2..]);
            let (wg, wu, wd) = (w[0], w[1], w[2]);
            let rows = x.len() / d;
            let [h, mut g, mut u] = match kept {
                Some(saved) => saved,
                None => self.forward(x, w, d)?.0,
            };
            let input = if self.pre.is_some() { &h[..] } else { x };
            let inter = g.len() / rows.max(1);
            let mut a = silu_mul(&g, &u);
            self.down.add_grad(dy, &a, (d, inter, rows))?;
            // da = dy · Wd, into a's buffer.
            matmul_acc(&mut a, dy, wd, (inter, false), self.down.mode)?;
            g.par_chunks_mut(CHUNK)
                .zip(u.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)))
                .for_each(|(g, (u, da))| super::vmath::silu_mul_bwd_inplace(g, u, da));
            self.gate.add_grad(&g, input, (inter, d, rows))?;
            self.up.add_grad(&u, input, (inter, d, rows))?;
            let mut din = vec![0f32; x.len()];
            matmul_acc(&mut din, &g, wg, (d, false), self.gate.mode)?;
            matmul_acc(&mut din, &u, wu, (d, true), self.up.mode)?;
            match &self.pre {
                Some(p) => p.backward(x, w[3], &din, dy),
                None => Ok(din),
            }
        })?;
        Ok(Some(tensor(dx, x.dims(), x)?))
    }
}

/// `down(silu(gate(x)) * up(x))` for x [..., d] and weights [inter, d], [inter, d], [d, inter],
/// or None where the op does not apply (not the CPU, not f32, or a weight whose gradient
/// must go through candle's autograd).
pub fn mlp(x: &Tensor, gate: &Tensor, up: &Tensor, down: &Tensor) -> Result<Option<Tensor>> {
    build(x, None, [gate, up, down])
}

/// `x + mlp(rms_norm(x) * norm)` (the pre-norm and the residual too): the MLP half of a
/// decoder layer as one autograd node. None where it does not apply.
pub fn mlp_sublayer(
    x: &Tensor,
    (norm, eps): (&Tensor, f64),
    [gate, up, down]: [&Tensor; 3],
) -> Result<Option<Tensor>> {
    build(x, Some((norm, eps)), [gate, up, down])
}

fn build(x: &Tensor, pre: Option<(&Tensor, f64)>, w: [&Tensor; 3]) -> Result<Option<Tensor>> {
    if !use_fused(x) {
        return Ok(None);
    }
    let (Some(gate), Some(up), Some(down)) =
        (Weight::new(w[0]), Weight::new(w[1]), Weight::new(w[2]))
    else {
        return Ok(None);
    };
    let pre = match pre {
        Some((n, eps)) => match PreNorm::new(n, eps) {
            Some(p) => Some(p),
            None => return Ok(None),
        },
        None => None,
    };
    let d = x.dim(candle_core::D::Minus1)?;
    let (inter, dg) = gate.w.dims2()?;
    if dg != d
        || up.w.dims() != [inter, d]
        || down.w.dims() != [d, inter]
        || pre.as_ref().is_some_and(|p| p.norm.w.dims() != [d])
    {
        candle_core::bail!(
            "mlp: x {:?}, gate {:?}, up {:?}, down {:?}",
            x.dims(),
            gate.w.dims(),
            up.w.dims(),
            down.w.dims()
        )
    }
    let op = Mlp {
        gate,
        up,
        down,
        pre,
        saved: Mutex::new(None),
    };
    Ok(Some(x.contiguous()?.apply_op1(op)?))
}

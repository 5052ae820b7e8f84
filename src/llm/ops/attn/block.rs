//! The whole attention sub-layer as one autograd node: the q/k/v/o projections around the
//! fused attention core, optionally with its pre-norm and residual (`llm::ops::attn`).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::super::residual::PreNorm;
use super::super::{matmul_acc, matmul_t, tensor, with_cpu, Weight};
use super::{core, Attention, AttnShape};
use crate::llm::switch::{slice, use_fused};

/// The whole attention sub-layer `o(attention(q(x), k(x), v(x)))` as one op (see
/// [`attention_block`]), optionally with its pre-norm and residual, `x + o(attention(..(h)))`
/// for h = rms_norm(x) ([`attention_sublayer`]).
struct AttnBlock {
    core: Attention,
    /// q, k, v, o projections.
    w: [Weight; 4],
    pre: Option<PreNorm>,
    /// From the forward for the backward: the norm output h (with `pre`), q, k, v and the
    /// attention output.
    saved: Mutex<Option<Saved>>,
}

/// The norm output h (empty without a pre-norm) and [q, k, v, attention output].
type Saved = (Vec<f32>, [Vec<f32>; 4]);

impl AttnBlock {
    fn qkv(&self, x: &[f32], w: &[&[f32]], d: usize) -> Result<[Vec<f32>; 3]> {
        let rows = x.len() / d;
        let m = self.w[0].mode;
        Ok([
            matmul_t(x, w[0], rows, d, m)?,
            matmul_t(x, w[1], rows, d, m)?,
            matmul_t(x, w[2], rows, d, m)?,
        ])
    }

    /// The weights' data (q, k, v, o, then the norm's) for `with_cpu`.
    fn tensors(&self) -> Vec<&Tensor> {
        let mut ts: Vec<&Tensor> = self.w.iter().map(|w| &w.w).collect();
        if let Some(p) = &self.pre {
            ts.push(&p.norm.w);
        }
        ts
    }

    /// (h, [q, k, v, y]) and the sub-layer output for input x.
    #[allow(clippy::type_complexity)]
    fn forward(
        &self,
        x: &[f32],
        w: &[&[f32]],
        d: usize,
    ) -> Result<((Vec<f32>, [Vec<f32>; 4]), Vec<f32>)> {
        let h = match &self.pre {
            Some(p) => p.forward(x, w[4]),
            None => Vec::new(),
        };
        let input = if self.pre.is_some() { &h[..] } else { x };
        let [q, k, v] = self.qkv(input, w, d)?;
        let y = self.core.forward(&q, &k, &v)?;
        let hd = self.core.s.n_heads * self.core.s.head_dim;
        let mut out = matmul_t(&y, w[3], x.len() / d, hd, self.w[3].mode)?;
        if self.pre.is_some() {
            out.par_chunks_mut(1 << 14)
                .zip(x.par_chunks(1 << 14))
                .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, x)| *o += x));
        }
        Ok(((h, [q, k, v, y]), out))
    }
}

impl CustomOp1 for AttnBlock {
    fn name(&self) -> &'static str {
        "llmbs-attention-block"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _t = super::super::timing::scope("attention block fwd");
        let x = slice(s, l, "attention block")?;
        let d = *l.shape().dims().last().unwrap_or(&1);
        let (saved, out) = with_cpu(&self.tensors(), "attention block", |w| {
            self.forward(x, w, d)
        })?;
        if let Ok(mut slot) = self.saved.lock() {
            *slot = Some(saved);
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, dout: &Tensor) -> Result<Option<Tensor>> {
        let _t = super::super::timing::scope("attention block bwd");
        let dout = dout.contiguous()?;
        let d = x.dim(candle_core::D::Minus1)?;
        let kept = self.saved.lock().ok().and_then(|mut s| s.take());
        let mut ts = vec![x, &dout];
        ts.extend(self.tensors());
        let dx = with_cpu(&ts, "attention block bwd", |s| {
            let (x, dout, w) = (s[0], s[1], &s[2..]);
            let rows = x.len() / d;
            let hd = self.core.s.n_heads * self.core.s.head_dim;
            let (h, [q, k, v, y]) = match kept {
                Some(saved) => saved,
                None => self.forward(x, w, d)?.0,
            };
            let input = if self.pre.is_some() { &h[..] } else { x };
            self.w[3].add_grad(dout, &y, (d, hd, rows))?;
            let mut dy = y;
            matmul_acc(&mut dy, dout, w[3], (hd, false), self.w[3].mode)?;
            let grads = self.core.backward([&q, &k, &v, &dy])?;
            let mut din = vec![0f32; x.len()];
            for (i, g) in grads.iter().enumerate() {
                let out = g.len() / rows.max(1);
                self.w[i].add_grad(g, input, (out, d, rows))?;
                matmul_acc(&mut din, g, w[i], (d, i > 0), self.w[i].mode)?;
            }
            match &self.pre {
                Some(p) => p.backward(x, w[4], &din, dout),
                None => Ok(din),
            }
        })?;
        Ok(Some(tensor(dx, x.dims(), x)?))
    }
}

/// The attention sub-layer `x [b, t, d] -> o(attention(q(x), k(x), v(x))) [b, t, d]` as one
/// op: `w` holds the q, k, v, o projection weights ([h * hd, d], [kv * hd, d] twice,
/// [d, h * hd]). None where it does not apply (not the CPU, not f32, or a weight whose
/// gradient must go through candle's autograd); the caller then composes the projections with
/// [`attention`].
pub fn attention_block(
    x: &Tensor,
    w: [&Tensor; 4],
    cs: (&Tensor, &Tensor),
    valid: Option<&Tensor>,
    s: AttnShape,
) -> Result<Option<Tensor>> {
    block(x, None, w, (cs, valid), s)
}

/// `x + attention_block(rms_norm(x) * norm)` (the pre-norm and the residual too): the whole
/// attention half of a decoder layer as one autograd node. None where it does not apply.
pub fn attention_sublayer(
    x: &Tensor,
    (norm, eps): (&Tensor, f64),
    w: [&Tensor; 4],
    cs: (&Tensor, &Tensor),
    valid: Option<&Tensor>,
    s: AttnShape,
) -> Result<Option<Tensor>> {
    block(x, Some((norm, eps)), w, (cs, valid), s)
}

fn block(
    x: &Tensor,
    pre: Option<(&Tensor, f64)>,
    w: [&Tensor; 4],
    (cs, valid): ((&Tensor, &Tensor), Option<&Tensor>),
    s: AttnShape,
) -> Result<Option<Tensor>> {
    if !use_fused(x) {
        return Ok(None);
    }
    let (Some(wq), Some(wk), Some(wv), Some(wo)) = (
        Weight::new(w[0]),
        Weight::new(w[1]),
        Weight::new(w[2]),
        Weight::new(w[3]),
    ) else {
        return Ok(None);
    };
    let pre = match pre {
        Some((n, eps)) => match PreNorm::new(n, eps) {
            Some(p) => Some(p),
            None => return Ok(None),
        },
        None => None,
    };
    let (b, t, d) = x.dims3()?;
    let (hq, hkv) = (s.n_heads * s.head_dim, s.n_kv * s.head_dim);
    if wq.w.dims() != [hq, d]
        || wk.w.dims() != [hkv, d]
        || wv.w.dims() != [hkv, d]
        || wo.w.dims() != [d, hq]
        || pre.as_ref().is_some_and(|p| p.norm.w.dims() != [d])
    {
        candle_core::bail!(
            "attention block: x {:?} and weights do not fit {s:?}",
            x.dims()
        )
    }
    let op = AttnBlock {
        core: core((b, t), cs, valid, s)?,
        w: [wq, wk, wv, wo],
        pre,
        saved: Mutex::new(None),
    };
    Ok(Some(x.contiguous()?.apply_op1(op)?))
}

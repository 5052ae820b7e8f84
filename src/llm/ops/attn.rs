//! Causal grouped-query attention with RoPE and key padding as one op, flash-style: the
//! forward keeps no attention matrix, the backward recomputes it per head. It takes q/k/v
//! straight from their projections (`[b, t, heads * hd]`) and returns `[b, t, h * hd]` for the
//! output projection, so the head transposes, the RoPE of q and k, the scores, the masked
//! softmax and both attention matmuls (each a node with its own temporaries and gradient
//! buffers in candle's autograd) become one node.
//!
//! Per head, with Q = rope(q), K = rope(k), S = scale * Q K^T, P = softmax over the visible
//! keys (j <= i and valid[j]), Y = P V. Backward: dV = P^T dY, dP = dY V^T,
//! dS = P * (dP - rowsum(dP * P)), dQ = scale * dS K, dK = scale * dS^T Q, and the inverse
//! rotation takes dQ, dK back through RoPE. Query rows that see no key give zeros.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{sgemm, tensor, with_cpu, Gemm, View};
use crate::llm::switch::{slice, use_fused};

/// The geometry of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
}

/// Rows per causal block of the per-head GEMMs.
const CAUSAL_BLOCK: usize = 32;

struct Attention {
    s: AttnShape,
    /// The per-head GEMMs (on the calling thread: heads run in parallel).
    mode: Gemm,
    b: usize,
    t: usize,
    scale: f32,
    /// RoPE tables `[1 or b, t, hd / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    per_row: bool,
    /// Key validity `[b, t]`; None: every key is real.
    valid: Option<Vec<u8>>,
}

/// One head's rows inside a `[b, t, heads * hd]` tensor.
#[derive(Clone, Copy)]
struct Rows {
    /// Offset of row 0.
    off: usize,
    /// Distance between consecutive positions.
    stride: usize,
}

impl Attention {
    fn tables(&self, bi: usize) -> (&[f32], &[f32]) {
        let n = self.t * self.s.head_dim / 2;
        let o = if self.per_row { bi * n } else { 0 };
        (&self.cos[o..o + n], &self.sin[o..o + n])
    }

    fn rows(&self, bi: usize, head: usize, heads: usize) -> Rows {
        let hd = self.s.head_dim;
        Rows {
            off: bi * self.t * heads * hd + head * hd,
            stride: heads * hd,
        }
    }

    /// `[t, hd]` rows of `src` rotated by RoPE (forward), or un-rotated (`inverse`, the
    /// gradient: the transpose of a rotation is the opposite rotation).
    fn rope(&self, src: &[f32], r: Rows, bi: usize, inverse: bool) -> Vec<f32> {
        let (t, hd) = (self.t, self.s.head_dim);
        let half = hd / 2;
        let (cos, sin) = self.tables(bi);
        let sign = if inverse { -1.0 } else { 1.0 };
        let mut out = vec![0f32; t * hd];
        for i in 0..t {
            let x = &src[r.off + i * r.stride..][..hd];
            let (c, s) = (&cos[i * half..][..half], &sin[i * half..][..half]);
            let o = &mut out[i * hd..][..hd];
            for j in 0..half {
                let (x1, x2, sj) = (x[j], x[j + half], sign * s[j]);
                o[j] = x1 * c[j] - x2 * sj;
                o[j + half] = x2 * c[j] + x1 * sj;
            }
        }
        out
    }

    /// Copies `[t, hd]` rows out of a `[b, t, heads * hd]` tensor.
    fn gather(&self, src: &[f32], r: Rows) -> Vec<f32> {
        let hd = self.s.head_dim;
        let mut out = vec![0f32; self.t * hd];
        for (i, o) in out.chunks_mut(hd).enumerate() {
            o.copy_from_slice(&src[r.off + i * r.stride..][..hd]);
        }
        out
    }

    /// Row blocks `[r0, r1)` of the causal square: block products only reach column r1 (the
    /// rest of a row is masked), so the per-head GEMMs do a little over half the work.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> {
        let t = self.t;
        (0..t)
            .step_by(CAUSAL_BLOCK)
            .map(move |r0| (r0, (r0 + CAUSAL_BLOCK).min(t)))
    }

    /// `out[r0..r1] (+)= a[r0..r1, ..r1] · b[..r1]` over the causal row blocks: a is `[t, t]`
    /// (lower-triangular), b and out `[t, hd]`.
    fn rows_times(&self, a: &[f32], b: &[f32], out: &mut [f32], acc: bool) -> Result<()> {
        let (t, hd) = (self.t, self.s.head_dim);
        for (r0, r1) in self.blocks() {
            let av = View::rows(&a[r0 * t..], t);
            let dst = &mut out[r0 * hd..];
            sgemm(
                (r1 - r0, hd, r1),
                dst,
                hd,
                acc,
                av,
                View::rows(b, hd),
                self.mode,
            )?;
        }
        Ok(())
    }

    /// `out[c0..c1] (+)= a[c0.., c0..c1]^T · b[c0..]` over the causal column blocks (the
    /// transpose of a lower-triangular `[t, t]` a times `[t, hd]` b).
    fn cols_times(&self, a: &[f32], b: &[f32], out: &mut [f32], acc: bool) -> Result<()> {
        let (t, hd) = (self.t, self.s.head_dim);
        for (c0, c1) in self.blocks() {
            let at = View {
                data: &a[c0 * t + c0..],
                rs: 1,
                cs: t,
            };
            let (bv, dst) = (View::rows(&b[c0 * hd..], hd), &mut out[c0 * hd..]);
            sgemm((c1 - c0, hd, t - c0), dst, hd, acc, at, bv, self.mode)?;
        }
        Ok(())
    }

    /// `out[r0..r1, ..r1] = a[r0..r1] · b[..r1]^T` over the causal row blocks: a and b `[t, hd]`,
    /// out `[t, t]` (zero above the blocks).
    fn rows_times_t(&self, a: &[f32], b: &[f32]) -> Result<Vec<f32>> {
        let (t, hd) = (self.t, self.s.head_dim);
        let mut out = vec![0f32; t * t];
        for (r0, r1) in self.blocks() {
            let (av, bt) = (View::rows(&a[r0 * hd..], hd), View::t(b, hd));
            sgemm(
                (r1 - r0, r1, hd),
                &mut out[r0 * t..],
                t,
                false,
                av,
                bt,
                self.mode,
            )?;
        }
        Ok(out)
    }

    /// P = masked softmax(scale * Q K^T), `[t, t]`.
    fn probs(&self, q: &[f32], k: &[f32], bi: usize) -> Result<Vec<f32>> {
        let t = self.t;
        let mut p = self.rows_times_t(q, k)?;
        let valid = self.valid.as_ref().map(|v| &v[bi * t..(bi + 1) * t]);
        let visible = |j: usize| match valid {
            Some(v) => v[j] != 0,
            None => true,
        };
        for (i, row) in p.chunks_mut(t).enumerate() {
            let (seen, rest) = row.split_at_mut(i + 1);
            rest.fill(0.0);
            for (j, s) in seen.iter_mut().enumerate() {
                *s = if visible(j) {
                    *s * self.scale
                } else {
                    f32::NEG_INFINITY
                };
            }
            let m = super::vmath::max(seen);
            if m == f32::NEG_INFINITY {
                seen.fill(0.0); // no visible key
                continue;
            }
            // exp(-inf - m) is 0: masked keys drop out.
            let inv = 1.0 / super::vmath::exp_shift_sum(seen, m);
            seen.iter_mut().for_each(|s| *s *= inv);
        }
        Ok(p)
    }

    /// One head's output `[t, hd]`.
    fn head_fwd(&self, q: &[f32], k: &[f32], v: &[f32], bi: usize, h: usize) -> Result<Vec<f32>> {
        let (t, hd) = (self.t, self.s.head_dim);
        let (nh, nkv) = (self.s.n_heads, self.s.n_kv);
        let kvh = h / (nh / nkv);
        let qr = self.rope(q, self.rows(bi, h, nh), bi, false);
        let kr = self.rope(k, self.rows(bi, kvh, nkv), bi, false);
        let vv = self.gather(v, self.rows(bi, kvh, nkv));
        let p = self.probs(&qr, &kr, bi)?;
        let mut y = vec![0f32; t * hd];
        self.rows_times(&p, &vv, &mut y, false)?;
        Ok(y)
    }

    /// The gradients of one KV group: (dq of each of its query heads, dk, dv), each `[t, hd]`.
    fn group_bwd(&self, ins: [&[f32]; 4], bi: usize, kvh: usize) -> Result<GroupGrads> {
        let [q, k, v, g] = ins;
        let (t, hd) = (self.t, self.s.head_dim);
        let (nh, nkv) = (self.s.n_heads, self.s.n_kv);
        let n_rep = nh / nkv;
        let kr = self.rope(k, self.rows(bi, kvh, nkv), bi, false);
        let vv = self.gather(v, self.rows(bi, kvh, nkv));
        let (mut dkr, mut dv) = (vec![0f32; t * hd], vec![0f32; t * hd]);
        let mut dq = Vec::with_capacity(n_rep);
        for h in kvh * n_rep..(kvh + 1) * n_rep {
            let qr = self.rope(q, self.rows(bi, h, nh), bi, false);
            let p = self.probs(&qr, &kr, bi)?;
            let dy = self.gather(g, self.rows(bi, h, nh));
            self.cols_times(&p, &dy, &mut dv, true)?; // dV += P^T dY
            let mut ds = self.rows_times_t(&dy, &vv)?; // dP = dY V^T
            for (dsr, pr) in ds.chunks_mut(t).zip(p.chunks(t)) {
                let dot: f32 = dsr.iter().zip(pr).map(|(a, b)| a * b).sum();
                for (d, &pj) in dsr.iter_mut().zip(pr) {
                    *d = pj * (*d - dot) * self.scale;
                }
            }
            let mut dqr = vec![0f32; t * hd];
            self.rows_times(&ds, &kr, &mut dqr, false)?; // dQ = dS K
            self.cols_times(&ds, &qr, &mut dkr, true)?; // dK += dS^T Q
            dq.push(self.rope(&dqr, Rows { off: 0, stride: hd }, bi, true));
        }
        let dk = self.rope(&dkr, Rows { off: 0, stride: hd }, bi, true);
        Ok(GroupGrads { dq, dk, dv })
    }

    /// Writes per-head `[t, hd]` blocks (`blocks[bi * heads + h]`) into `[b, t, heads * hd]`.
    fn assemble(&self, blocks: &[&[f32]], heads: usize) -> Vec<f32> {
        let (t, hd) = (self.t, self.s.head_dim);
        let mut out = vec![0f32; self.b * t * heads * hd];
        out.par_chunks_mut(heads * hd)
            .enumerate()
            .for_each(|(row, o)| {
                let (bi, i) = (row / t, row % t);
                for (h, o) in o.chunks_mut(hd).enumerate() {
                    o.copy_from_slice(&blocks[bi * heads + h][i * hd..][..hd]);
                }
            });
        out
    }
}

struct GroupGrads {
    dq: Vec<Vec<f32>>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

impl Attention {
    /// The attention output `[b, t, h * hd]` of q/k/v projections.
    fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
        let _t = super::timing::scope("attention core fwd");
        let nh = self.s.n_heads;
        let heads: Vec<Vec<f32>> = (0..self.b * nh)
            .into_par_iter()
            .map(|i| self.head_fwd(q, k, v, i / nh, i % nh))
            .collect::<Result<_>>()?;
        let blocks: Vec<&[f32]> = heads.iter().map(|h| h.as_slice()).collect();
        Ok(self.assemble(&blocks, nh))
    }

    /// (dq, dk, dv) in the layouts of q, k, v from the output gradient `g`.
    fn backward(&self, ins: [&[f32]; 4]) -> Result<[Vec<f32>; 3]> {
        let _t = super::timing::scope("attention core bwd");
        let nkv = self.s.n_kv;
        let groups: Vec<GroupGrads> = (0..self.b * nkv)
            .into_par_iter()
            .map(|i| self.group_bwd(ins, i / nkv, i % nkv))
            .collect::<Result<_>>()?;
        let dq: Vec<&[f32]> = groups
            .iter()
            .flat_map(|g| g.dq.iter().map(|d| d.as_slice()))
            .collect();
        let dk: Vec<&[f32]> = groups.iter().map(|g| g.dk.as_slice()).collect();
        let dv: Vec<&[f32]> = groups.iter().map(|g| g.dv.as_slice()).collect();
        Ok([
            self.assemble(&dq, self.s.n_heads),
            self.assemble(&dk, nkv),
            self.assemble(&dv, nkv),
        ])
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "llmbs-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = slice(s1, l1, "attention")?;
        let k = slice(s2, l2, "attention")?;
        let v = slice(s3, l3, "attention")?;
        Ok((CpuStorage::F32(self.forward(q, k, v)?), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let [dq, dk, dv] = with_cpu(&[q, k, v, &g], "attention bwd", |s| {
            self.backward([s[0], s[1], s[2], s[3]])
        })?;
        Ok((
            Some(tensor(dq, q.dims(), q)?),
            Some(tensor(dk, k.dims(), k)?),
            Some(tensor(dv, v.dims(), v)?),
        ))
    }
}

/// The attention core for q [b, t, h * hd], k and v [b, t, kv * hd]; None when the shapes or
/// tables do not fit the fused kernel.
fn core(
    (b, t): (usize, usize),
    (cos, sin): (&Tensor, &Tensor),
    valid: Option<&Tensor>,
    s: AttnShape,
) -> Result<Attention> {
    if s.n_kv == 0 || !s.n_heads.is_multiple_of(s.n_kv) || !s.head_dim.is_multiple_of(2) {
        candle_core::bail!("attention: unsupported {s:?}")
    }
    let half = s.head_dim / 2;
    let per_row = cos.rank() == 3;
    let want: &[usize] = if per_row { &[b, t, half] } else { &[t, half] };
    if cos.dims() != want || sin.dims() != want {
        candle_core::bail!("attention: RoPE tables {:?}, expected {want:?}", cos.dims())
    }
    let flat = |x: &Tensor| x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
    Ok(Attention {
        s,
        mode: super::gemm_mode().serial(),
        b,
        t,
        scale: 1.0 / (s.head_dim as f32).sqrt(),
        cos: flat(cos)?,
        sin: flat(sin)?,
        per_row,
        valid: valid
            .map(|v| v.to_dtype(DType::U8)?.flatten_all()?.to_vec1::<u8>())
            .transpose()?,
    })
}

/// Fused attention: q [b, t, h * hd], k and v [b, t, kv * hd] (projection outputs, before
/// RoPE), `cos`/`sin` the RoPE tables `[t, hd / 2]` (shared) or `[b, t, hd / 2]` (per row),
/// `valid` `[b, t]` (u8) marking real keys. Returns [b, t, h * hd], or None where this
/// device/dtype has no fused kernel.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cs: (&Tensor, &Tensor),
    valid: Option<&Tensor>,
    s: AttnShape,
) -> Result<Option<Tensor>> {
    if !(use_fused(q) && use_fused(k) && use_fused(v)) {
        return Ok(None);
    }
    let (b, t, _) = q.dims3()?;
    let hd = s.head_dim;
    if q.dims() != [b, t, s.n_heads * hd] || k.dims() != [b, t, s.n_kv * hd] || v.dims() != k.dims()
    {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit {s:?}",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    let op = core((b, t), cs, valid, s)?;
    Ok(Some(q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        op,
    )?))
}

mod block;
pub use block::{attention_block, attention_sublayer};

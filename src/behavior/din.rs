//! DIN (Zhou et al., KDD 2018), the paper's behavior encoder (3.2, Eq. 3): an item embedding
//! table, an activation unit scoring each history item against the target from
//! `[h, t, h - t, h * t]`, the weighted sum of the history as the user's interest in that target,
//! and a dot product of interest and target (plus an item bias) as the score.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, VarBuilder};
use serde::{Deserialize, Serialize};

use super::eval::TopK;
use super::init::dropout;
use super::Ranker;
use rand::rngs::StdRng;

/// Sizes of a DIN model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DinConfig {
    pub n_items: usize,
    /// Item embedding size d_b.
    pub dim: usize,
    /// Hidden units of the activation unit.
    pub att_hidden: usize,
    /// Dropout on the looked-up embeddings while training.
    pub dropout: f32,
}

/// Scoring all items: rows (user, history item, attention unit) per matmul, and items per chunk.
const EVAL_ROWS: usize = 8192;
const EVAL_ITEM_CHUNK: usize = 4096;

/// The DIN model. Variables: `item_emb` [n, d], `item_bias` [n], `att.w1` [h, 4d], `att.b1` [h],
/// `att.prelu` [h], `att.w2` [1, h], `att.b2` [1].
pub struct Din {
    cfg: DinConfig,
    emb: Embedding,
    bias: Embedding,
    w1: Tensor,
    b1: Tensor,
    alpha: Tensor,
    w2: Tensor,
    b2: Tensor,
}

/// PReLU with a learned slope per unit: `relu(x) - alpha * relu(-x)` (differentiable).
fn prelu(x: &Tensor, alpha: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()?
        .broadcast_sub(&x.neg()?.relu()?.broadcast_mul(alpha)?)
}

impl Din {
    pub fn new(cfg: DinConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let (n, d, h) = (cfg.n_items, cfg.dim, cfg.att_hidden);
        let emb = Embedding::new(vb.get((n, d), "item_emb")?, d);
        let bias = Embedding::new(vb.get((n, 1), "item_bias")?, 1);
        let att = vb.pp("att");
        Ok(Din {
            cfg,
            emb,
            bias,
            w1: att.get((h, 4 * d), "w1")?,
            b1: att.get(h, "b1")?,
            alpha: att.get(h, "prelu")?,
            w2: att.get((1, h), "w2")?,
            b2: att.get(1, "b2")?,
        })
    }

    pub fn config(&self) -> &DinConfig {
        &self.cfg
    }

    /// Where the weights live.
    pub fn device(&self) -> &Device {
        self.emb.embeddings().device()
    }

    /// The first layer of the activation unit split by input block: `w1 = [A | B | C | Dm]` on
    /// `[h, t, h - t, h * t]` acts as `(A + C) h + (B - C) t + Dm (h * t)`.
    /// Returns (A + C, B - C, Dm), each `[att_hidden, d]`.
    fn split_w1(&self) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let d = self.cfg.dim;
        let block = |i: usize| self.w1.narrow(1, i * d, d);
        let (a, b, c, dm) = (block(0)?, block(1)?, block(2)?, block(3)?);
        Ok(((a + &c)?, (b - c)?, dm))
    }

    /// Scores of candidate items given histories.
    /// `hist` [b, t] u32, `mask` [b, t] f32 (1 real, 0 padding), `cands` [b, c] u32 → [b, c].
    /// Dropout on the embeddings is on when `rng` is given (training).
    pub fn forward(
        &self,
        hist: &Tensor,
        mask: &Tensor,
        cands: &Tensor,
        rng: Option<&mut StdRng>,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = hist.dims2()?;
        let c = cands.dim(1)?;
        let (d, nh) = (self.cfg.dim, self.cfg.att_hidden);
        let mut h = self.emb.forward(hist)?; // [b, t, d]
        let mut e = self.emb.forward(cands)?; // [b, c, d]
        if let Some(rng) = rng {
            h = dropout(&h, self.cfg.dropout, rng)?;
            e = dropout(&e, self.cfg.dropout, rng)?;
        }
        let (wh, wt, wd) = self.split_w1()?;
        let q = h
            .reshape((b * t, d))?
            .matmul(&wh.t()?)?
            .reshape((b, 1, t, nh))?;
        let p = e
            .reshape((b * c, d))?
            .matmul(&wt.t()?)?
            .reshape((b, c, 1, nh))?;
        let he = e.unsqueeze(2)?.broadcast_mul(&h.unsqueeze(1)?)?; // [b, c, t, d]
        let bil = he
            .reshape((b * c * t, d))?
            .matmul(&wd.t()?)?
            .reshape((b, c, t, nh))?;
        let pre = bil
            .broadcast_add(&q)?
            .broadcast_add(&p)?
            .broadcast_add(&self.b1)?;
        let act = prelu(&pre, &self.alpha)?; // [b, c, t, nh]
        let w = act
            .reshape((b * c * t, nh))?
            .matmul(&self.w2.t()?)?
            .reshape((b, c, t))?
            .broadcast_add(&self.b2)?;
        let w = w.broadcast_mul(&mask.unsqueeze(1)?)?; // [b, c, t], padding weight 0
        let dots = e.matmul(&h.transpose(1, 2)?.contiguous()?)?; // [b, c, t]
        let bias = self.bias.forward(cands)?.squeeze(D::Minus1)?; // [b, c]
        (w * dots)?.sum(D::Minus1)? + bias
    }

    /// Scores of every catalogue item for each history, `[histories][n_items]`, computed in
    /// chunks: the bilinear part `Dm (h * t)` for all (user, history item, unit) rows against a
    /// chunk of items is one matmul; the rest is a fused loop. Same function as [`Din::forward`].
    pub fn score_all(&self, histories: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(histories.len());
        self.for_each_group(histories, |scores| {
            out.extend(scores);
        })?;
        Ok(out)
    }

    /// Scores users a group at a time (each group under [`EVAL_ROWS`] bilinear rows) and hands
    /// each group's `[users][n_items]` scores to `f`, so memory stays bounded.
    fn for_each_group(
        &self,
        histories: &[&[u32]],
        mut f: impl FnMut(Vec<Vec<f32>>),
    ) -> candle_core::Result<()> {
        let weights = EvalWeights::new(self)?;
        let rows_of = |h: &[u32]| h.len().max(1) * self.cfg.att_hidden;
        let mut start = 0;
        while start < histories.len() {
            let mut end = start + 1;
            let mut rows = rows_of(histories[start]);
            while end < histories.len() && rows + rows_of(histories[end]) <= EVAL_ROWS {
                rows += rows_of(histories[end]);
                end += 1;
            }
            f(weights.score_users(&histories[start..end])?);
            start = end;
        }
        Ok(())
    }
}

/// The model's weights as CPU vectors and the per-item parts of the activation unit.
struct EvalWeights {
    n: usize,
    d: usize,
    nh: usize,
    /// Item table on the model's device, for the matmuls.
    emb: Tensor,
    /// `[n * d]` item table.
    emb_v: Vec<f32>,
    /// `[nh * d]` A + C and Dm.
    wh: Vec<f32>,
    wd: Vec<f32>,
    /// `[nh * n]` (B - C) t for every item, unit-major.
    pt: Vec<f32>,
    b1: Vec<f32>,
    alpha: Vec<f32>,
    w2: Vec<f32>,
    b2: f32,
    bias: Vec<f32>,
}

fn cpu_vec(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()
}

impl EvalWeights {
    fn new(m: &Din) -> candle_core::Result<Self> {
        let emb = m.emb.embeddings().clone();
        let (wh, wt, wd) = m.split_w1()?;
        let pt = wt.matmul(&emb.t()?)?; // [nh, n]
        Ok(EvalWeights {
            n: m.cfg.n_items,
            d: m.cfg.dim,
            nh: m.cfg.att_hidden,
            emb_v: cpu_vec(&emb)?,
            emb,
            wh: cpu_vec(&wh)?,
            wd: cpu_vec(&wd)?,
            pt: cpu_vec(&pt)?,
            b1: cpu_vec(&m.b1)?,
            alpha: cpu_vec(&m.alpha)?,
            w2: cpu_vec(&m.w2)?,
            b2: cpu_vec(&m.b2)?.first().copied().unwrap_or(0.0),
            bias: cpu_vec(m.bias.embeddings())?,
        })
    }

    /// Full-catalogue scores of a few users.
    fn score_users(&self, histories: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let (d, nh, n) = (self.d, self.nh, self.n);
        let dev = self.emb.device();
        // Rows: history items of all users, and (history item, unit) pairs h * Dm_k.
        let mut hrows: Vec<f32> = Vec::new();
        let mut grows: Vec<f32> = Vec::new();
        let mut q: Vec<f32> = Vec::new(); // [(user, i), nh] (A + C) h + b1
        for h in histories {
            for &it in *h {
                let e = &self.emb_v[it as usize * d..(it as usize + 1) * d];
                hrows.extend_from_slice(e);
                for k in 0..nh {
                    let wdk = &self.wd[k * d..(k + 1) * d];
                    grows.extend(e.iter().zip(wdk).map(|(a, b)| a * b));
                    let whk = &self.wh[k * d..(k + 1) * d];
                    q.push(self.b1[k] + e.iter().zip(whk).map(|(a, b)| a * b).sum::<f32>());
                }
            }
        }
        let s = hrows.len() / d;
        let mut scores: Vec<Vec<f32>> = histories.iter().map(|_| self.bias.clone()).collect();
        if s == 0 {
            return Ok(scores);
        }
        let hrows = Tensor::from_vec(hrows, (s, d), dev)?;
        let grows = Tensor::from_vec(grows, (s * nh, d), dev)?;
        let mut start = 0;
        while start < n {
            let len = EVAL_ITEM_CHUNK.min(n - start);
            let chunk_t = self.emb.narrow(0, start, len)?.t()?;
            let dots = cpu_vec(&hrows.matmul(&chunk_t)?)?; // [s, len]
            let bil = cpu_vec(&grows.matmul(&chunk_t)?)?; // [s * nh, len]
            let job = ChunkJob {
                w: self,
                start,
                len,
                dots: &dots,
                bil: &bil,
                q: &q,
            };
            job.run(histories, &mut scores);
            start += len;
        }
        Ok(scores)
    }
}

/// The fused part of scoring one chunk of items, split over threads by user.
struct ChunkJob<'a> {
    w: &'a EvalWeights,
    start: usize,
    len: usize,
    dots: &'a [f32],
    bil: &'a [f32],
    q: &'a [f32],
}

impl ChunkJob<'_> {
    fn run(&self, histories: &[&[u32]], scores: &mut [Vec<f32>]) {
        // Row offset of each user's first history item.
        let mut offsets = Vec::with_capacity(histories.len());
        let mut acc = 0;
        for h in histories {
            offsets.push(acc);
            acc += h.len();
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(histories.len())
            .max(1);
        let per = histories.len().div_ceil(threads);
        std::thread::scope(|sc| {
            for ((hs, offs), out) in histories
                .chunks(per)
                .zip(offsets.chunks(per))
                .zip(scores.chunks_mut(per))
            {
                sc.spawn(move || {
                    for ((h, &off), row) in hs.iter().zip(offs).zip(out.iter_mut()) {
                        self.user(h.len(), off, &mut row[self.start..self.start + self.len]);
                    }
                });
            }
        });
    }

    /// Adds `sum_i w_i(t) <h_i, t>` to one user's scores of the chunk's items.
    fn user(&self, hist_len: usize, off: usize, out: &mut [f32]) {
        let (nh, n, len, start) = (self.w.nh, self.w.n, self.len, self.start);
        let mut weight = vec![0f32; len];
        for i in 0..hist_len {
            let row = off + i;
            weight.fill(self.w.b2);
            for k in 0..nh {
                let q = self.q[row * nh + k];
                let (alpha, w2) = (self.w.alpha[k], self.w.w2[k]);
                let bil = &self.bil[(row * nh + k) * len..(row * nh + k + 1) * len];
                let pt = &self.w.pt[k * n + start..k * n + start + len];
                for ((wt, &b), &p) in weight.iter_mut().zip(bil).zip(pt) {
                    let x = b + p + q;
                    let a = if x > 0.0 { x } else { alpha * x };
                    *wt += w2 * a;
                }
            }
            let dots = &self.dots[row * len..(row + 1) * len];
            for ((o, &wt), &dt) in out.iter_mut().zip(&weight).zip(dots) {
                *o += wt * dt;
            }
        }
    }
}

impl Ranker for Din {
    fn top_k(&self, histories: &[&[u32]], k: usize) -> candle_core::Result<Vec<Vec<u32>>> {
        let mut out = Vec::with_capacity(histories.len());
        self.for_each_group(histories, |scores| {
            out.extend(scores.iter().map(|s| TopK::of(s, k)));
        })?;
        Ok(out)
    }

    fn item_table(&self) -> candle_core::Result<Tensor> {
        self.emb.embeddings().copy()
    }
}

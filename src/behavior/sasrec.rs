//! SASRec (Kang & McAuley, ICDM 2018), the ID-only baseline beside the paper's behavior encoder
//! (3.2): causal self-attention over the history with learned positions, pre-norm blocks,
//! dropout, and item embeddings shared between input and output, trained with full
//! cross-entropy over every item at every position.

use candle_core::{Device, Module, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::batch::{pad_right, SeqBatch};
use super::ce::full_cross_entropy_sum;
use super::eval::TopK;
use super::init::dropout;
use super::Ranker;

/// Sizes of a SASRec model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SasRecConfig {
    pub n_items: usize,
    /// Hidden size = item embedding size.
    pub dim: usize,
    /// Longest input (learned positions 0..max_len, oldest kept item first).
    pub max_len: usize,
    pub blocks: usize,
    pub heads: usize,
    /// On embeddings, attention weights and sublayer outputs.
    pub dropout: f32,
    /// Add one learned scalar to the score of every item already in the history (a repeat
    /// bias learned from the training sequences; the ranking still covers all items).
    pub history_bias: bool,
}

/// Histories per forward when ranking.
const EVAL_BATCH: usize = 512;
const LN_EPS: f32 = 1e-6;
/// Rows of logits per cross-entropy chunk (256 x 12,101 items is 12 MB).
const CE_ROWS: usize = 256;

/// Layer norm through differentiable ops (candle's fused one has no backward).
struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
}

impl LayerNorm {
    fn new(d: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(LayerNorm {
            gamma: vb.get(d, "gamma")?,
            beta: vb.get(d, "beta")?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm_slow(x, &self.gamma, &self.beta, LN_EPS)
    }
}

struct Block {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln2: LayerNorm,
    ff1: Linear,
    ff2: Linear,
}

/// Dropout only when training (an RNG is given).
fn drop(x: &Tensor, p: f32, rng: Option<&mut StdRng>) -> candle_core::Result<Tensor> {
    match rng {
        Some(rng) => dropout(x, p, rng),
        None => Ok(x.clone()),
    }
}

impl Block {
    fn new(d: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let lin = |name: &str| candle_nn::linear(d, d, vb.pp(name));
        Ok(Block {
            ln1: LayerNorm::new(d, vb.pp("ln1"))?,
            q: lin("q")?,
            k: lin("k")?,
            v: lin("v")?,
            o: lin("o")?,
            ln2: LayerNorm::new(d, vb.pp("ln2"))?,
            ff1: lin("ff1")?,
            ff2: lin("ff2")?,
        })
    }

    /// `x` [b, t, d], `mask` [t, t] additive causal mask → [b, t, d].
    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        heads: usize,
        p: f32,
        mut rng: Option<&mut StdRng>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let dh = d / heads;
        let x = x.reshape((b * t, d))?; // rows: one matmul per linear layer
        let y = self.ln1.forward(&x)?;
        let split = |l: &Linear| -> candle_core::Result<Tensor> {
            l.forward(&y)?
                .reshape((b, t, heads, dh))?
                .transpose(1, 2)?
                .contiguous() // [b, h, t, dh]
        };
        let (q, k, v) = (split(&self.q)?, split(&self.k)?, split(&self.v)?);
        let att = (q.matmul(&k.t()?)? / (dh as f64).sqrt())?.broadcast_add(mask)?; // [b, h, t, t]
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let att = drop(&att, p, rng.as_deref_mut())?;
        let ctx = att.matmul(&v)?.transpose(1, 2)?.reshape((b * t, d))?; // [b t, d]
        let x = (x + drop(&self.o.forward(&ctx)?, p, rng.as_deref_mut())?)?;
        let y = self.ln2.forward(&x)?;
        let f = drop(&self.ff1.forward(&y)?.relu()?, p, rng.as_deref_mut())?;
        let f = self.ff2.forward(&f)?;
        (x + drop(&f, p, rng)?)?.reshape((b, t, d))
    }
}

/// The SASRec model. Variables: `item_emb` [n, d], `pos_emb` [max_len, d], `blocks.{i}.*`,
/// `ln_f.*`.
pub struct SasRec {
    cfg: SasRecConfig,
    emb: Embedding,
    pos: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// `[1]` the repeat bias, when configured.
    hist_bias: Option<Tensor>,
}

impl SasRec {
    pub fn new(cfg: SasRecConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = cfg.dim;
        let emb = Embedding::new(vb.get((cfg.n_items, d), "item_emb")?, d);
        let pos = vb.get((cfg.max_len.max(1), d), "pos_emb")?;
        let blocks = (0..cfg.blocks)
            .map(|i| Block::new(d, vb.pp(format!("blocks.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let hist_bias = if cfg.history_bias {
            Some(vb.get(1, "history_bias")?)
        } else {
            None
        };
        Ok(SasRec {
            cfg,
            emb,
            pos,
            blocks,
            ln_f: LayerNorm::new(d, vb.pp("ln_f"))?,
            hist_bias,
        })
    }

    pub fn config(&self) -> &SasRecConfig {
        &self.cfg
    }

    /// Hidden states of right-padded sequences: `ids` [b, t] u32 → [b, t, d]. Position j sees
    /// inputs 0..=j only, so padding after a sequence never reaches its real positions.
    /// Dropout is on when `rng` is given (training).
    pub fn forward(
        &self,
        ids: &Tensor,
        mut rng: Option<&mut StdRng>,
    ) -> candle_core::Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if t > self.cfg.max_len {
            candle_core::bail!(
                "sequence of {t} items, the model has {} positions",
                self.cfg.max_len
            );
        }
        let p = self.cfg.dropout;
        let scale = (self.cfg.dim as f64).sqrt();
        let x = (self.emb.forward(ids)? * scale)?.broadcast_add(&self.pos.narrow(0, 0, t)?)?;
        let mut x = drop(&x, p, rng.as_deref_mut())?;
        let mask = causal_mask(t, ids.device())?;
        for block in &self.blocks {
            x = block.forward(&x, &mask, self.cfg.heads, p, rng.as_deref_mut())?;
        }
        self.ln_f.forward(&x)
    }

    /// Scores of every item from hidden states: `h` [m, d] → [m, n_items] (shared embeddings).
    pub fn logits(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        h.matmul(&self.emb.embeddings().t()?)
    }

    /// Mean full cross-entropy over the batch's real positions. Logits are built
    /// [`CE_ROWS`] rows at a time so no catalogue-sized temporary grows with the batch.
    pub fn loss(&self, batch: &SeqBatch, rng: Option<&mut StdRng>) -> candle_core::Result<Tensor> {
        let dev = self.emb.embeddings().device();
        let ids = Tensor::from_slice(&batch.ids, (batch.size, batch.t), dev)?;
        let h = self
            .forward(&ids, rng)?
            .reshape((batch.size * batch.t, self.cfg.dim))?;
        let m = batch.positions.len();
        if m == 0 {
            candle_core::bail!("a batch without targets");
        }
        let mut total: Option<Tensor> = None;
        for (pos, tgt) in batch
            .positions
            .chunks(CE_ROWS)
            .zip(batch.targets.chunks(CE_ROWS))
        {
            let rows = h.index_select(&Tensor::from_slice(pos, pos.len(), dev)?, 0)?; // [r, d]
            let tgt = Tensor::from_slice(tgt, tgt.len(), dev)?;
            let mut logits = self.logits(&rows)?; // [r, n]
            if let Some(beta) = &self.hist_bias {
                // Position j of row r has seen inputs 0..=j of that row.
                let seen = pos.iter().map(|&p| {
                    let (r, j) = (p as usize / batch.t, p as usize % batch.t);
                    &batch.ids[r * batch.t..r * batch.t + j + 1]
                });
                logits = add_history_bias(&logits, beta, seen)?;
            }
            let l = full_cross_entropy_sum(&logits, &tgt)?;
            total = Some(match total {
                Some(t) => (t + l)?,
                None => l,
            });
        }
        match total {
            Some(t) => t / m as f64,
            None => candle_core::bail!("a batch without targets"),
        }
    }

    /// The user representation after each history: the last real position's hidden state,
    /// `[histories, d]` (histories longer than `max_len` keep their most recent items).
    pub fn user_states(&self, histories: &[&[u32]]) -> candle_core::Result<Tensor> {
        let dev = self.emb.embeddings().device();
        let hs: Vec<&[u32]> = histories
            .iter()
            .map(|h| &h[h.len().saturating_sub(self.cfg.max_len)..])
            .collect();
        let (ids, t) = pad_right(&hs);
        let ids = Tensor::from_vec(ids, (hs.len(), t), dev)?;
        let h = self
            .forward(&ids, None)?
            .reshape((hs.len() * t, self.cfg.dim))?;
        let last: Vec<u32> = (0..hs.len())
            .map(|r| (r * t + hs[r].len().max(1) - 1) as u32)
            .collect();
        h.index_select(&Tensor::from_vec(last, hs.len(), dev)?, 0)
    }
}

/// `logits` [r, n] plus `beta` at each row's history items (each distinct item once).
fn add_history_bias<'a>(
    logits: &Tensor,
    beta: &Tensor,
    histories: impl Iterator<Item = &'a [u32]>,
) -> candle_core::Result<Tensor> {
    let (r, n) = logits.dims2()?;
    let mut idx: Vec<u32> = Vec::new();
    for (row, h) in histories.enumerate() {
        let start = idx.len();
        idx.extend(h.iter().map(|&i| (row * n) as u32 + i));
        idx[start..].sort_unstable();
        let mut kept = start;
        for k in start..idx.len() {
            if k == start || idx[k] != idx[kept - 1] {
                idx[kept] = idx[k];
                kept += 1;
            }
        }
        idx.truncate(kept);
    }
    if idx.is_empty() {
        return Ok(logits.clone());
    }
    let k = idx.len();
    let idx = Tensor::from_vec(idx, k, logits.device())?;
    logits
        .flatten_all()?
        .index_add(&idx, &beta.broadcast_as(k)?.contiguous()?, 0)?
        .reshape((r, n))
}

/// `[t, t]` additive mask: 0 where key j <= query i, a large negative number above.
fn causal_mask(t: usize, dev: &Device) -> candle_core::Result<Tensor> {
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { -1e9 }))
        .collect();
    Tensor::from_vec(m, (t, t), dev)
}

impl SasRec {
    /// Every item's score after each history, the repeat bias included: `[histories, n_items]`.
    pub fn scores(&self, histories: &[&[u32]]) -> candle_core::Result<Tensor> {
        let mut logits = self.logits(&self.user_states(histories)?)?;
        if let Some(beta) = &self.hist_bias {
            let max = self.cfg.max_len;
            let seen = histories.iter().map(|h| &h[h.len().saturating_sub(max)..]);
            logits = add_history_bias(&logits, beta, seen)?;
        }
        Ok(logits)
    }
}

impl Ranker for SasRec {
    fn top_k(&self, histories: &[&[u32]], k: usize) -> candle_core::Result<Vec<Vec<u32>>> {
        let mut out = Vec::with_capacity(histories.len());
        for chunk in histories.chunks(EVAL_BATCH) {
            let scores: Vec<Vec<f32>> = self.scores(chunk)?.to_vec2()?;
            out.extend(scores.iter().map(|s| TopK::of(s, k)));
        }
        Ok(out)
    }

    fn item_table(&self) -> candle_core::Result<Tensor> {
        self.emb.embeddings().copy()
    }
}

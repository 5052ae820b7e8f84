//! The training objective (paper Eq. 7): response-only cross-entropy plus, for SRT samples, the
//! Global Contrast Decompression Task (GCT, Eq. 4-6): InfoNCE between projections of the
//! `[CON]` hidden state and the target item's semantic (Z^s) and behavior (Z^b) embeddings.

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use rand::Rng;

use crate::llm::Llama;

/// Summed (not averaged) cross-entropy of `targets` under the logits of the hidden rows `at`:
/// hidden [b, t, d], at: (row, pos) pairs, targets: one token id per pair. The caller divides
/// by the token count of the whole accumulated batch.
pub fn response_ce_sum(
    model: &Llama,
    hidden: &Tensor,
    at: &[(usize, usize)],
    targets: &[u32],
) -> Result<Tensor> {
    let h = Llama::gather(hidden, at)?; // [n, d]
                                        // One op for head + cross-entropy where there is a fused kernel (crate::llm::ops::ce).
    if let Some(loss) = crate::llm::ops::ce::head_ce_sum(&h, model.lm_head(), targets)? {
        return Ok(loss);
    }
    let logits = model.logits(&h)?; // [n, vocab]
    nll_sum(&logits, targets)
}

/// -sum_i log softmax(logits_i)[targets_i]; logits [n, c].
pub fn nll_sum(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    // One kernel each way on CUDA (crate::llm::ops::ce::ce_sum).
    if let Some(loss) = crate::llm::ops::ce::ce_sum(logits, targets)? {
        return Ok(loss);
    }
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let idx = Tensor::from_slice(targets, (targets.len(), 1), logits.device())?;
    logp.gather(&idx, 1)?.sum_all()?.neg()
}

/// Summed InfoNCE: row i of `q` [n, e] against `keys` [m, e] (both L2-normalised here), the
/// positive of row i being key `i`; keys whose item equals row i's item (other than key i)
/// are masked out, so a target repeated in the batch is never its own negative.
/// `items`: the item of each key (the first n are the rows' positives).
pub fn info_nce_sum(q: &Tensor, keys: &Tensor, items: &[u32], tau: f64) -> Result<Tensor> {
    let n = q.dim(0)?;
    let m = keys.dim(0)?;
    let q = l2_normalize(q)?;
    let k = l2_normalize(keys)?;
    let sim = (q.matmul(&k.t()?)? / tau)?; // [n, m]
    let mut mask = vec![0f32; n * m];
    for i in 0..n {
        for j in 0..m {
            if j != i && items[j] == items[i] {
                mask[i * m + j] = -1e9;
            }
        }
    }
    let mask = Tensor::from_vec(mask, (n, m), q.device())?;
    let labels: Vec<u32> = (0..n as u32).collect();
    nll_sum(&(sim + mask)?, &labels)
}

/// x / ||x|| per row.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    x.broadcast_div(&norm)
}

/// The two GCT projectors and the exogenous tables they are contrasted with.
pub struct Gct {
    pub proj_s: Linear,
    pub proj_b: Linear,
    /// Z^s [n_items, d_s] and Z^b [n_items, d_b], on the training device.
    pub zs: Tensor,
    pub zb: Tensor,
    pub tau: f64,
    pub negatives: usize,
}

/// The summed semantic and behavior InfoNCE terms of one micro-batch.
pub struct GctLoss {
    pub sem: Tensor,
    pub beh: Tensor,
}

impl Gct {
    /// Projectors `proj_s` (d -> d_s) and `proj_b` (d -> d_b) under `vb` (names `proj_s.weight`,
    /// `proj_s.bias`, ...).
    pub fn new(
        d: usize,
        zs: Tensor,
        zb: Tensor,
        tau: f64,
        negatives: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let proj_s = candle_nn::linear(d, zs.dim(1)?, vb.pp("proj_s"))?;
        let proj_b = candle_nn::linear(d, zb.dim(1)?, vb.pp("proj_b"))?;
        Ok(Self {
            proj_s,
            proj_b,
            zs: center(&zs)?,
            zb: center(&zb)?,
            tau,
            negatives,
        })
    }

    /// h_con [n, d]: the last hidden state at each SRT sample's `[CON]`; `targets`: its item.
    /// Negatives: the other targets of the micro-batch plus `negatives` catalogue items drawn
    /// from `rng`.
    pub fn loss<R: Rng>(&self, h_con: &Tensor, targets: &[u32], rng: &mut R) -> Result<GctLoss> {
        let n_items = self.zs.dim(0)?;
        let mut items: Vec<u32> = targets.to_vec();
        for _ in 0..self.negatives {
            items.push(rng.random_range(0..n_items as u32));
        }
        let idx = Tensor::from_slice(&items, items.len(), self.zs.device())?;
        let h = h_con.to_dtype(DType::F32)?;
        let qs = h.apply(&self.proj_s)?;
        let qb = h.apply(&self.proj_b)?;
        let ks = self.zs.index_select(&idx, 0)?;
        let kb = self.zb.index_select(&idx, 0)?;
        Ok(GctLoss {
            sem: info_nce_sum(&qs, &ks, &items, self.tau)?,
            beh: info_nce_sum(&qb, &kb, &items, self.tau)?,
        })
    }
}

/// Rows minus the column mean. Mean-pooled LLM states share one dominant direction (random
/// Beauty items have cosine 0.94 in Z^s, 0.41 in the DIN Z^b), so uncentered keys are nearly identical after
/// normalisation and the InfoNCE sits at chance (ln of the key count) whatever the query.
pub fn center(t: &Tensor) -> Result<Tensor> {
    t.broadcast_sub(&t.mean_keepdim(0)?)
}

/// A table as f32 on `dev`.
pub fn table_to(t: &Tensor, dev: &Device) -> Result<Tensor> {
    t.to_dtype(DType::F32)?.to_device(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_nce_matches_the_closed_form() {
        // q0 = e0, q1 = e1; keys e0, e1, -e0 with tau 0.5:
        // row 0: sims (1, 0, -1)/0.5 = (2, 0, -2) -> loss ln(e^2 + 1 + e^-2) - 2.
        // row 1: sims (0, 1, 0)/0.5 = (0, 2, 0)  -> loss ln(2 + e^2) - 2.
        let dev = Device::Cpu;
        let q = Tensor::new(&[[1f32, 0.0], [0.0, 3.0]], &dev).unwrap();
        let k = Tensor::new(&[[2f32, 0.0], [0.0, 1.0], [-1.0, 0.0]], &dev).unwrap();
        let got = info_nce_sum(&q, &k, &[0, 1, 2], 0.5)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let e2 = 2f64.exp();
        let want = ((e2 + 1.0 + (-2f64).exp()).ln() - 2.0) + ((2.0 + e2).ln() - 2.0);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // Key 2 as the same item as row 0: masked for row 0 -> ln(e^2 + 1) - 2.
        let got = info_nce_sum(&q, &k, &[0, 1, 0], 0.5)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let want = ((e2 + 1.0).ln() - 2.0) + ((2.0 + e2).ln() - 2.0);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn centering_removes_the_shared_direction() {
        let t = Tensor::new(&[[10f32, 1.0], [10.0, -1.0]], &Device::Cpu).unwrap();
        let c: Vec<Vec<f32>> = center(&t).unwrap().to_vec2().unwrap();
        assert_eq!(c, vec![vec![0.0, 1.0], vec![0.0, -1.0]]);
    }

    #[test]
    fn nll_sum_is_the_summed_cross_entropy() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[0f32, 0.0], [(3f32).ln(), 0.0]], &dev).unwrap();
        let got = nll_sum(&logits, &[1, 0])
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let want = 2f64.ln() + (4.0f64 / 3.0).ln();
        assert!((got - want).abs() < 1e-6);
    }
}

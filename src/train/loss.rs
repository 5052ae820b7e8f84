//! The training objective (paper Eq. 7): response-only cross-entropy plus, for SRT samples, the
//! Global Contrast Decompression Task (GCT, Eq. 4-6): InfoNCE between projections of the
//! `[CON]` hidden state and the target item's semantic (Z^s) and behavior (Z^b) embeddings.

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use rand::Rng;

use crate::llm::Llama;

/// Per response target, a soft target as `(token, weight)` pairs (empty: none).
pub type SoftTargets<'a> = &'a [Vec<(u32, f32)>];

/// How the response cross-entropy scores its targets.
#[derive(Debug, Clone, Copy, Default)]
pub struct CeMode<'a> {
    /// Item-vocabulary loss: a target inside this token range (the item-ID tokens) is scored
    /// by a softmax over the range only; other targets over the whole vocabulary.
    pub id_rows: Option<(u32, u32)>,
    /// Distillation: per target, the teacher's distribution `q` over tokens (empty: none) and
    /// its share alpha in the target `(1 - alpha) onehot + alpha q`.
    pub soft: Option<(SoftTargets<'a>, f64)>,
}

/// Summed response cross-entropies of a micro-batch: `loss` (scalar, what trains: the mixed
/// targets with distillation) and `hard` (the one-hot cross-entropy, what is logged).
pub struct CeSums {
    pub loss: Tensor,
    pub hard: f64,
}

/// Summed (not averaged) cross-entropy of `targets` under the logits of the hidden rows `at`:
/// hidden [b, t, d], at: (row, pos) pairs, targets: one token id per pair. The caller divides
/// by the token count of the whole accumulated batch.
pub fn response_ce_sum(
    model: &Llama,
    hidden: &Tensor,
    at: &[(usize, usize)],
    targets: &[u32],
) -> Result<Tensor> {
    Ok(response_ce(model, hidden, at, targets, &CeMode::default())?.loss)
}

/// [`response_ce_sum`] as `mode` says (item-vocabulary softmax, distillation targets).
pub fn response_ce(
    model: &Llama,
    hidden: &Tensor,
    at: &[(usize, usize)],
    targets: &[u32],
    mode: &CeMode,
) -> Result<CeSums> {
    let vocab = model.lm_head().dim(0)?;
    let in_ids = |t: u32| mode.id_rows.is_some_and(|(a, b)| (a..b).contains(&t));
    let (ids, text): (Vec<usize>, Vec<usize>) =
        (0..targets.len()).partition(|&i| in_ids(targets[i]));
    let mut parts = Vec::new();
    for (group, rows) in [(ids, mode.id_rows), (text, None)] {
        if group.is_empty() {
            continue;
        }
        let (r0, r1) = rows.map_or((0, vocab), |(a, b)| (a as usize, b as usize));
        let h = Llama::gather(hidden, &group.iter().map(|&i| at[i]).collect::<Vec<_>>())?; // [n, d]
        let local: Vec<u32> = group.iter().map(|&i| targets[i] - r0 as u32).collect();
        let soft: Vec<Vec<(u32, f32)>> = match mode.soft {
            Some((q, _)) => group
                .iter()
                .map(|&i| {
                    q.get(i).map_or(Vec::new(), |row| {
                        row.iter()
                            .filter(|(t, _)| (r0..r1).contains(&(*t as usize)))
                            .map(|&(t, w)| (t - r0 as u32, w))
                            .collect()
                    })
                })
                .collect(),
            None => Vec::new(),
        };
        let spec = crate::llm::ops::ce::HeadTargets {
            targets: &local,
            rows: r0..r1,
            soft: &soft,
            alpha: mode.soft.map_or(0.0, |s| s.1),
        };
        parts.push(head_rows_ce(model, &h, &spec)?);
    }
    let mut loss: Option<Tensor> = None;
    let mut hard = 0f64;
    for (l, h) in parts {
        loss = Some(match loss {
            Some(x) => (x + l)?,
            None => l,
        });
        hard += h;
    }
    let loss = match loss {
        Some(l) => l,
        None => Tensor::zeros((), DType::F32, hidden.device())?,
    };
    Ok(CeSums { loss, hard })
}

/// One group of [`response_ce`]: the fused head op where there is one, else the logits of the
/// scored rows, log-softmax and gathers (the CUDA cross-entropy kernel for one-hot targets).
fn head_rows_ce(
    model: &Llama,
    h: &Tensor,
    spec: &crate::llm::ops::ce::HeadTargets,
) -> Result<(Tensor, f64)> {
    let w = model.lm_head();
    if let Some(t) = crate::llm::ops::ce::head_ce(h, w, spec)? {
        let hard = t.get(1)?.to_scalar::<f32>()? as f64;
        return Ok((t.get(0)?, hard));
    }
    let full = spec.rows.start == 0 && spec.rows.end == w.dim(0)?;
    let logits = match full {
        true => model.logits(h)?,
        false => h
            .matmul(&w.narrow(0, spec.rows.start, spec.rows.len())?.t()?)?
            .to_dtype(DType::F32)?,
    }; // [n, rows]
    let hard = nll_sum(&logits, spec.targets)?;
    if spec.soft.iter().all(|s| s.is_empty()) {
        let v = hard.to_scalar::<f32>()? as f64;
        return Ok((hard, v));
    }
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let width = logits.dim(1)?;
    let (mut idx, mut wts, mut hard_w) = (Vec::new(), Vec::new(), Vec::new());
    for (r, q) in spec.soft.iter().enumerate() {
        if q.is_empty() {
            hard_w.push(1f32);
            continue;
        }
        hard_w.push(1.0 - spec.alpha as f32);
        for &(t, w) in q {
            idx.push((r * width) as u32 + t);
            wts.push(spec.alpha as f32 * w);
        }
    }
    let dev = logits.device();
    let tgt = Tensor::from_slice(spec.targets, (spec.targets.len(), 1), dev)?;
    let hard_rows = logp.gather(&tgt, 1)?.squeeze(1)?; // [n]
    let hard_part = (hard_rows * Tensor::from_vec(hard_w, spec.targets.len(), dev)?)?.sum_all()?;
    let n = idx.len();
    let soft_part = (logp
        .flatten_all()?
        .index_select(&Tensor::from_vec(idx, n, dev)?, 0)?
        * Tensor::from_vec(wts, n, dev)?)?
    .sum_all()?;
    let v = hard.to_scalar::<f32>()? as f64;
    Ok(((hard_part + soft_part)?.neg()?, v))
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

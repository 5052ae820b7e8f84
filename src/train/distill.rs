//! Distillation from the run's own behavior teacher (issue 22, lever 4): the teacher's
//! next-item distribution after each history prefix, decomposed along the item IDs, joins each
//! item-ID target of SRT as a soft target. With teacher forcing the ID of item `i` is
//! `(c_1, .., c_L)`; the teacher's distribution `p` over items becomes, at level `l`,
//! `q_l(c) = sum p(i) over items whose ID starts with (c_1, .., c_{l-1}, c)`, normalised over
//! the items that share the true prefix: exactly the factorisation the decoder learns, so a
//! student that matched every `q_l` would rank items as the teacher does.

use std::path::Path;

use anyhow::Context;
use candle_core::Result;

use crate::behavior::{saved, SasRec};
pub use crate::config::train::DistillConfig;
use crate::tasks::build::Encoded;

/// The teacher and the item IDs its distribution is decomposed along.
pub struct Teacher {
    model: SasRec,
    temperature: f64,
    /// Each item's ID as vocabulary ids.
    ids: Vec<Vec<u32>>,
    /// Items sorted by ID: the items sharing any ID prefix form one contiguous run of it.
    order: Vec<u32>,
}

impl Teacher {
    /// Loads the teacher of `c` from `dir` (`RUN/behavior/<teacher>`); `ids`: each item's ID
    /// tokens, in dataset order.
    pub fn load(dir: &Path, c: &DistillConfig, ids: &[Vec<u32>]) -> anyhow::Result<Self> {
        let hint = "train it with `llmbs behavior --encoder sasrec --out RUN/embeddings/behavior-sasrec.safetensors` or the pipeline's `teacher` section";
        let r = saved::read_report(dir)
            .with_context(|| format!("distillation teacher in {} ({hint})", dir.display()))?;
        let report = dir.join("report.json");
        if r.config.encoder != c.teacher {
            anyhow::bail!(
                "{}: a {} model, distill.teacher asks for {}",
                report.display(),
                r.config.encoder.name(),
                c.teacher.name()
            );
        }
        if r.items != ids.len() {
            anyhow::bail!(
                "{}: the teacher ranks {} items, the run's index has {}",
                report.display(),
                r.items,
                ids.len()
            );
        }
        let model = saved::build_sasrec(dir, &r)
            .with_context(|| format!("distillation teacher ({hint})"))?;
        Ok(Self::new(model, c.temperature, ids))
    }

    /// A teacher over `model` (ranking the items of `ids`, each item's ID tokens).
    pub fn new(model: SasRec, temperature: f64, ids: &[Vec<u32>]) -> Self {
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        order.sort_by(|&a, &b| ids[a as usize].cmp(&ids[b as usize]));
        Self {
            model,
            temperature,
            ids: ids.to_vec(),
            order,
        }
    }

    /// The soft target of every loss token of `samples`, in `MicroBatch` order (each sample's
    /// history positions, then its response); empty rows for tokens of non-SRT samples.
    /// `targets` are the micro-batch's hard targets, checked against the IDs walked here.
    pub fn soft_targets(
        &self,
        samples: &[&Encoded],
        targets: &[u32],
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        // Each predicted item's history prefix and the item; the prefix of every loss token.
        let mut prefixes: Vec<&[u32]> = Vec::new();
        let mut nexts: Vec<u32> = Vec::new();
        let mut plan: Vec<Option<usize>> = Vec::with_capacity(targets.len()); // prefix per token
        for s in samples {
            let n = s.srt_items.len();
            if n < 2 {
                plan.extend(std::iter::repeat_n(None, s.loss_tokens()));
                continue;
            }
            let start = if s.history_loss.is_empty() { n - 1 } else { 1 };
            let tokens: usize = s.srt_items[start..]
                .iter()
                .map(|&i| self.ids[i as usize].len())
                .sum();
            if tokens != s.loss_tokens() {
                candle_core::bail!(
                    "distillation: an SRT sample has {} loss tokens, its items' IDs {tokens}",
                    s.loss_tokens()
                )
            }
            for j in start..n {
                let k = prefixes.len();
                prefixes.push(&s.srt_items[..j]);
                nexts.push(s.srt_items[j]);
                let len = self.ids[s.srt_items[j] as usize].len();
                plan.extend(std::iter::repeat_n(Some(k), len));
            }
        }
        if plan.len() != targets.len() {
            candle_core::bail!(
                "distillation: {} loss tokens planned, {} targets",
                plan.len(),
                targets.len()
            )
        }
        if prefixes.is_empty() {
            return Ok(vec![Vec::new(); targets.len()]);
        }
        let probs = self.distributions(&prefixes)?;
        // Tokens of one predicted item are adjacent: the level counts up along them.
        let mut out = Vec::with_capacity(targets.len());
        let mut level = 0usize;
        for (t, p) in plan.iter().enumerate() {
            let Some(k) = *p else {
                out.push(Vec::new());
                continue;
            };
            if t > 0 && plan[t - 1] != Some(k) {
                level = 0;
            }
            let id = &self.ids[nexts[k] as usize];
            if id[level] != targets[t] {
                candle_core::bail!(
                    "distillation: target token {} where the ID walk has {}",
                    targets[t],
                    id[level]
                )
            }
            out.push(self.level_target(&probs[k], &id[..level]));
            level += 1;
        }
        Ok(out)
    }

    /// The teacher's next-item distribution after each prefix, `[prefixes][n_items]`.
    fn distributions(&self, prefixes: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(prefixes.len());
        for chunk in prefixes.chunks(256) {
            let s = (self.model.scores(chunk)? / self.temperature)?;
            out.extend(candle_nn::ops::softmax_last_dim(&s)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    /// `q` at the level after `prefix`: the mass of each next token among the items whose ID
    /// starts with `prefix`, normalised over them.
    fn level_target(&self, p: &[f32], prefix: &[u32]) -> Vec<(u32, f32)> {
        let l = prefix.len();
        let key = |i: &u32| &self.ids[*i as usize][..l.min(self.ids[*i as usize].len())];
        let lo = self.order.partition_point(|i| key(i) < prefix);
        let hi = self.order.partition_point(|i| key(i) <= prefix);
        let mut mass: Vec<(u32, f32)> = Vec::new();
        for &i in &self.order[lo..hi] {
            let id = &self.ids[i as usize];
            let Some(&tok) = id.get(l) else { continue };
            match mass.last_mut() {
                // Sorted by ID, so equal next tokens are adjacent.
                Some(last) if last.0 == tok => last.1 += p[i as usize],
                _ => mass.push((tok, p[i as usize])),
            }
        }
        let total: f32 = mass.iter().map(|m| m.1).sum();
        if total > 0.0 {
            mass.iter_mut().for_each(|m| m.1 /= total);
        }
        mass
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::behavior::SasRecConfig;
    use crate::tasks::build::TaskKind;
    use candle_core::Device;
    use candle_nn::{VarBuilder, VarMap};

    #[test]
    fn level_targets_are_the_teacher_mass_under_each_id_prefix() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
        let cfg = SasRecConfig {
            n_items: 6,
            dim: 8,
            max_len: 5,
            blocks: 1,
            heads: 1,
            dropout: 0.0,
            history_bias: false,
        };
        let model = SasRec::new(cfg, vb).unwrap();
        let ids: Vec<Vec<u32>> = vec![
            vec![10, 20],
            vec![10, 21],
            vec![11, 20],
            vec![11, 22, 30],
            vec![11, 22, 31],
            vec![12, 20],
        ];
        let p: Vec<f32> = candle_nn::ops::softmax_last_dim(&model.scores(&[&[0, 1]]).unwrap())
            .unwrap()
            .to_vec2()
            .unwrap()
            .remove(0);
        let t = Teacher::new(model, 1.0, &ids);
        // History [0, 1], target item 3: its three ID tokens carry the loss.
        let s = Encoded {
            kind: TaskKind::Srt,
            input: vec![1, 10, 20, 10, 21, 2, 11, 22, 30],
            prompt_len: 6,
            response_len: 3,
            gct_item: None,
            history_loss: Vec::new(),
            srt_items: vec![0, 1, 3],
        };
        let got = t.soft_targets(&[&s], &[11, 22, 30]).unwrap();
        let close = |a: &[(u32, f32)], b: &[(u32, f32)]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() < 1e-6)
        };
        let l1 = [(10, p[0] + p[1]), (11, p[2] + p[3] + p[4]), (12, p[5])];
        let z2 = p[2] + p[3] + p[4];
        let l2 = [(20, p[2] / z2), (22, (p[3] + p[4]) / z2)];
        let z3 = p[3] + p[4];
        let l3 = [(30, p[3] / z3), (31, p[4] / z3)];
        assert!(close(&got[0], &l1), "{:?} vs {l1:?}", got[0]);
        assert!(close(&got[1], &l2), "{:?} vs {l2:?}", got[1]);
        assert!(close(&got[2], &l3), "{:?} vs {l3:?}", got[2]);
        // A target that is not the walked ID is refused.
        assert!(t.soft_targets(&[&s], &[11, 22, 31]).is_err());
        // Non-SRT samples get no soft targets.
        let text = Encoded {
            srt_items: Vec::new(),
            ..s.clone()
        };
        assert!(t
            .soft_targets(&[&text], &[11, 22, 30])
            .unwrap()
            .iter()
            .all(|r| r.is_empty()));
    }
}

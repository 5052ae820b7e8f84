//! Length-bucketed, right-padded micro-batches of encoded task samples (DESIGN "Training").

use candle_core::{Device, Result, Tensor};

use crate::tasks::build::Encoded;

/// One right-padded micro-batch with the positions that carry loss.
pub struct MicroBatch {
    /// [b, t] u32, padded with token 0 (right padding never reaches a real position: causal).
    pub ids: Tensor,
    /// (row, pos) of every response-predicting position and the token it must predict.
    pub at: Vec<(usize, usize)>,
    pub targets: Vec<u32>,
    /// Distillation: per target in `targets`, the teacher's soft target over tokens (empty
    /// rows: none); empty without a teacher (`train::distill`).
    pub soft: Vec<Vec<(u32, f32)>>,
    /// (row, pos) of each `[CON]` and the GCT target item.
    pub con_at: Vec<(usize, usize)>,
    pub con_items: Vec<u32>,
    /// Real (unpadded) tokens in the batch.
    pub tokens: usize,
    /// Padded size b * t.
    pub padded: usize,
}

impl MicroBatch {
    pub fn new(samples: &[&Encoded], dev: &Device) -> Result<Self> {
        let b = samples.len();
        let t = samples.iter().map(|s| s.input.len()).max().unwrap_or(1);
        let mut ids = vec![0u32; b * t];
        let (mut at, mut targets, mut con_at, mut con_items) = (vec![], vec![], vec![], vec![]);
        let mut tokens = 0;
        for (r, s) in samples.iter().enumerate() {
            ids[r * t..r * t + s.input.len()].copy_from_slice(&s.input);
            tokens += s.input.len();
            for &p in &s.history_loss {
                at.push((r, p));
                targets.push(s.input[p + 1]);
            }
            for p in s.prompt_len - 1..s.prompt_len + s.response_len - 1 {
                at.push((r, p));
                targets.push(s.input[p + 1]);
            }
            if let Some(item) = s.gct_item {
                con_at.push((r, s.input.len() - 1));
                con_items.push(item);
            }
        }
        Ok(Self {
            ids: Tensor::from_vec(ids, (b, t), dev)?,
            at,
            targets,
            soft: Vec::new(),
            con_at,
            con_items,
            tokens,
            padded: b * t,
        })
    }
}

/// Splits one optimizer step's samples into micro-batches of at most `micro` samples after
/// sorting by length, so each micro-batch pads little. Returns sample indices per micro-batch.
pub fn bucket(samples: &[Encoded], micro: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| (samples[i].input.len(), i));
    order.chunks(micro.max(1)).map(|c| c.to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::build::TaskKind;

    fn enc(input: Vec<u32>, prompt_len: usize, response_len: usize, con: bool) -> Encoded {
        Encoded {
            kind: TaskKind::Srt,
            input,
            prompt_len,
            response_len,
            gct_item: con.then_some(7),
            history_loss: Vec::new(),
            srt_items: Vec::new(),
        }
    }

    #[test]
    fn only_response_tokens_carry_loss() {
        // prompt [10, 11, 12], response [20, 21], then [CON] = 99.
        let a = enc(vec![10, 11, 12, 20, 21, 99], 3, 2, true);
        let b = enc(vec![10, 11, 30], 2, 1, false);
        let mb = MicroBatch::new(&[&a, &b], &Device::Cpu).unwrap();
        assert_eq!(mb.at, vec![(0, 2), (0, 3), (1, 1)]);
        assert_eq!(mb.targets, vec![20, 21, 30]);
        assert_eq!(mb.con_at, vec![(0, 5)]);
        assert_eq!(mb.con_items, vec![7]);
        assert_eq!((mb.tokens, mb.padded), (9, 12));
        let rows: Vec<Vec<u32>> = mb.ids.to_vec2().unwrap();
        assert_eq!(rows[1], vec![10, 11, 30, 0, 0, 0]);
    }

    #[test]
    fn dense_history_positions_carry_loss_first() {
        let mut a = enc(vec![10, 11, 12, 20, 21], 3, 2, false);
        a.history_loss = vec![0, 1];
        let mb = MicroBatch::new(&[&a], &Device::Cpu).unwrap();
        assert_eq!(mb.at, vec![(0, 0), (0, 1), (0, 2), (0, 3)]);
        assert_eq!(mb.targets, vec![11, 12, 20, 21]);
        assert_eq!(a.loss_tokens(), 4);
    }

    #[test]
    fn buckets_group_similar_lengths() {
        let s: Vec<Encoded> = [5usize, 2, 9, 3]
            .iter()
            .map(|&n| enc(vec![1; n], 1, 1, false))
            .collect();
        assert_eq!(bucket(&s, 2), vec![vec![1, 3], vec![0, 2]]);
    }
}

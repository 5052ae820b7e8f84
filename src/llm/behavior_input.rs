//! Behavior knowledge in the input (issue 33 lever a; LLaRA and CoLLM feed a recommender's item
//! vectors to the LLM): at the position where a history item's ID is complete, the input
//! embedding also gets a learned projection of that item's behavior vector (Z^b, SASRec's or
//! DIN's item embedding), so the LLM sees what the behavior model learned about the item from
//! its first step on, not only what its ID tokens have learned so far.
//!
//! Why at the ID's last token only: the vector is then a function of the tokens up to that
//! position, so the causal model cannot peek at an item's later ID tokens through it, and a
//! target item's ID gets no help while it is being generated (teacher forcing and beam search
//! agree). Why a lookup of the token ids rather than positions carried with each batch: every
//! forward (training, validation, beam search, perplexity) then gets it from the ids alone.
//!
//! The three tensors travel in the model's own weights (`model.safetensors` of a checkpoint),
//! so a trained checkpoint is self-contained: [`PROJ`] `[d_b, d]` (trains; starts at zero, so a
//! fresh model computes exactly what it did without it), [`TABLE`] `[n_items, d_b]` (the unit
//! rows of Z^b, frozen) and [`ITEMS`] `[n_items, L]` (u32: each item's ID token ids, shorter
//! IDs padded with [`PAD`]).

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

/// The learned projection `[d_b, d]`.
pub const PROJ: &str = "llmbs.behavior_input.proj";
/// The items' behavior vectors `[n_items, d_b]`, unit length.
pub const TABLE: &str = "llmbs.behavior_input.table";
/// The items' ID token ids `[n_items, L]` (u32).
pub const ITEMS: &str = "llmbs.behavior_input.items";
/// Prefix of the three keys.
pub const PREFIX: &str = "llmbs.behavior_input.";
/// Fills the [`ITEMS`] row of an ID shorter than the longest.
pub const PAD: u32 = u32::MAX;

/// The behavior input of a model: what [`BehaviorInput::extra`] adds to the token embeddings.
#[derive(Debug, Clone)]
pub struct BehaviorInput {
    proj: Tensor,  // [d_b, d], f32 (the variable's tensor while training)
    table: Tensor, // [n_items + 1, d_b], f32; the last row is zero (no item ends here)
    lookup: HashMap<Vec<u32>, u32>,
    /// The ID lengths there are, longest first (the longest match wins where one item's ID
    /// ends with another's).
    lens: Vec<usize>,
    /// Which token ids are ID tokens: an item can end only where L of them are in a row.
    id_range: (u32, u32),
    n_items: usize,
    /// The three tensors as loaded (for [`BehaviorInput::weights`]).
    items: Tensor,
    table_raw: Tensor,
}

impl BehaviorInput {
    /// Reads the three tensors from `vb` when [`PROJ`] is there; `None` for a plain model.
    pub fn from_vb(vb: &VarBuilder) -> Result<Option<Self>> {
        if !vb.contains_tensor(PROJ) {
            return Ok(None);
        }
        let proj = vb.get_unchecked_dtype(PROJ, DType::F32)?;
        let table = vb.get_unchecked_dtype(TABLE, DType::F32)?;
        let items = vb.get_unchecked_dtype(ITEMS, DType::U32)?;
        Self::new(proj, table, items).map(Some)
    }

    /// proj `[d_b, d]`, table `[n_items, d_b]`, items `[n_items, L]` u32.
    pub fn new(proj: Tensor, table: Tensor, items: Tensor) -> Result<Self> {
        let (n_items, db) = table.dims2()?;
        let (pdb, _d) = proj.dims2()?;
        let (ni, width) = items.dims2()?;
        if pdb != db || ni != n_items || width == 0 {
            candle_core::bail!(
                "behavior input: {PROJ} {:?}, {TABLE} {:?} and {ITEMS} {:?} do not fit together",
                proj.dims(),
                table.dims(),
                items.dims()
            );
        }
        let rows: Vec<Vec<u32>> = items.to_vec2()?;
        let mut lookup = HashMap::with_capacity(n_items);
        let (mut lo, mut hi) = (u32::MAX, 0u32);
        let mut lens = Vec::new();
        for (i, mut r) in rows.into_iter().enumerate() {
            r.retain(|&t| t != PAD);
            for &t in &r {
                lo = lo.min(t);
                hi = hi.max(t + 1);
            }
            if r.is_empty() || lookup.insert(r.clone(), i as u32).is_some() {
                candle_core::bail!("behavior input: {ITEMS} row {i} is empty or repeats an ID");
            }
            lens.push(r.len());
        }
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        let dev = table.device();
        let zero = Tensor::zeros((1, db), DType::F32, dev)?;
        let padded = Tensor::cat(&[&table.to_dtype(DType::F32)?, &zero], 0)?;
        Ok(Self {
            proj,
            table: padded,
            lookup,
            lens,
            id_range: (lo, hi),
            n_items,
            items,
            table_raw: table,
        })
    }

    /// The tensors a fresh model starts with: `zb` `[n_items, d_b]` (normalised to unit rows
    /// here), each item's ID token ids, and the model's hidden size. The projection is zero.
    pub fn fresh_tensors(
        zb: &Tensor,
        item_ids: &[Vec<u32>],
        hidden: usize,
        dev: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        let (n, db) = zb.dims2()?;
        if n != item_ids.len() {
            candle_core::bail!(
                "behavior input: {n} behavior vectors for {} items",
                item_ids.len()
            );
        }
        let len = item_ids.iter().map(|r| r.len()).max().unwrap_or(0);
        if len == 0 || item_ids.iter().any(|r| r.is_empty()) {
            candle_core::bail!("behavior input: an item has an empty ID");
        }
        let zb = zb.to_dtype(DType::F32)?.to_device(dev)?;
        let norm = zb.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        let table = zb.broadcast_div(&norm)?;
        let flat: Vec<u32> = item_ids
            .iter()
            .flat_map(|r| {
                r.iter()
                    .copied()
                    .chain(std::iter::repeat_n(PAD, len - r.len()))
            })
            .collect();
        let items = Tensor::from_vec(flat, (n, len), dev)?;
        let proj = Tensor::zeros((db, hidden), DType::F32, dev)?;
        Ok(HashMap::from([
            (PROJ.to_string(), proj),
            (TABLE.to_string(), table),
            (ITEMS.to_string(), items),
        ]))
    }

    /// The three tensors under their keys (checkpoints).
    pub fn weights(&self) -> [(&'static str, Tensor); 3] {
        [
            (PROJ, self.proj.clone()),
            (TABLE, self.table_raw.clone()),
            (ITEMS, self.items.clone()),
        ]
    }

    /// Per position of one row, the item whose ID ends there (its last token), else
    /// `n_items`. Only the row's own tokens up to the position decide (causal).
    pub fn items_ending(&self, row: &[u32]) -> Vec<u32> {
        let (lo, hi) = self.id_range;
        let mut run = 0usize; // ID tokens in a row ending here
        row.iter()
            .enumerate()
            .map(|(p, &t)| {
                run = if (lo..hi).contains(&t) { run + 1 } else { 0 };
                let hit = self
                    .lens
                    .iter()
                    .filter(|&&l| l <= run)
                    .find_map(|&l| self.lookup.get(&row[p + 1 - l..=p]).copied());
                hit.unwrap_or(self.n_items as u32)
            })
            .collect()
    }

    /// ids `[b, t]` (u32) -> what the input embeddings gain `[b, t, d]` (f32), or `None` when
    /// no item ends in the chunk (a decoding step, a text-only sample).
    pub fn extra(&self, ids: &Tensor) -> Result<Option<Tensor>> {
        let (b, t) = ids.dims2()?;
        // No ID fits in a shorter chunk (a decoding step): skip reading the ids back, a device
        // sync on CUDA.
        if self.lens.last().is_none_or(|&l| t < l) {
            return Ok(None);
        }
        let rows: Vec<Vec<u32>> = ids.to_dtype(DType::U32)?.to_vec2()?;
        let at: Vec<u32> = rows.iter().flat_map(|r| self.items_ending(r)).collect();
        if at.iter().all(|&i| i as usize == self.n_items) {
            return Ok(None);
        }
        let idx = Tensor::from_vec(at, b * t, self.table.device())?;
        let z = self.table.index_select(&idx, 0)?; // [b*t, d_b]
        let x = z.matmul(&self.proj.to_dtype(DType::F32)?)?; // [b*t, d]
        x.reshape((b, t, ())).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> BehaviorInput {
        // Three items with 2-token IDs over ID tokens 10..14; behavior vectors in 2 dims.
        let ids = vec![vec![10, 12], vec![10, 13], vec![11, 12]];
        let zb = Tensor::new(&[[3f32, 4.], [1., 0.], [0., 2.]], &Device::Cpu).unwrap();
        let mut w = BehaviorInput::fresh_tensors(&zb, &ids, 3, &Device::Cpu).unwrap();
        let proj = Tensor::new(&[[1f32, 0., 1.], [0., 1., 1.]], &Device::Cpu).unwrap();
        w.insert(PROJ.into(), proj);
        BehaviorInput::new(w[PROJ].clone(), w[TABLE].clone(), w[ITEMS].clone()).unwrap()
    }

    #[test]
    fn an_item_is_found_at_its_last_token_only() {
        let b = toy();
        // text, item 1 (10 13), text, item 2 (11 12), then 10 alone and "12 10 12" = item 0
        // ending at the last position; (13 11) is no item.
        let row = [1, 10, 13, 2, 11, 12, 10, 12, 10, 12, 13, 11];
        let none = 3;
        assert_eq!(
            b.items_ending(&row),
            vec![none, none, 1, none, none, 2, none, 0, none, 0, none, none]
        );
        // A prefix gives the same answer at every position it has (causal).
        for k in 0..row.len() {
            assert_eq!(b.items_ending(&row[..k]), b.items_ending(&row)[..k]);
        }
    }

    #[test]
    fn ragged_ids_are_padded_and_the_longest_match_wins() {
        // Item 1's ID ends with item 0's (as a dedup level can make them): the longer wins.
        let ids = vec![vec![11, 12], vec![10, 11, 12], vec![13]];
        let zb = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        let w = BehaviorInput::fresh_tensors(&zb, &ids, 4, &Device::Cpu).unwrap();
        assert_eq!(
            w[ITEMS].to_vec2::<u32>().unwrap(),
            vec![vec![11, 12, PAD], vec![10, 11, 12], vec![13, PAD, PAD]]
        );
        let b = BehaviorInput::new(w[PROJ].clone(), w[TABLE].clone(), w[ITEMS].clone()).unwrap();
        assert_eq!(
            b.items_ending(&[1, 10, 11, 12, 2, 11, 12, 13]),
            vec![3, 3, 3, 1, 3, 3, 0, 2]
        );
    }

    #[test]
    fn the_extra_is_the_projected_unit_vector_at_item_ends() {
        let b = toy();
        let ids = Tensor::new(&[[1u32, 10, 12], [11, 12, 2]], &Device::Cpu).unwrap();
        let x: Vec<Vec<Vec<f32>>> = b.extra(&ids).unwrap().unwrap().to_vec3().unwrap();
        // item 0's unit vector (0.6, 0.8) at row 0 pos 2; item 2's (0, 1) at row 1 pos 1.
        let want = [
            [[0., 0., 0.], [0., 0., 0.], [0.6, 0.8, 1.4]],
            [[0., 0., 0.], [0., 1., 1.], [0., 0., 0.]],
        ];
        for (r, wr) in x.iter().zip(want) {
            for (p, wp) in r.iter().zip(wr) {
                for (a, w) in p.iter().zip(wp) {
                    assert!((a - w).abs() < 1e-6, "{x:?}");
                }
            }
        }
        let text = Tensor::new(&[[1u32, 2, 10]], &Device::Cpu).unwrap();
        assert!(b.extra(&text).unwrap().is_none());
    }

    #[test]
    fn mismatched_tensors_and_ragged_ids_are_refused() {
        let zb = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let empty = vec![vec![10, 11], vec![]];
        assert!(BehaviorInput::fresh_tensors(&zb, &empty, 8, &Device::Cpu).is_err());
        let twice = vec![vec![10, 11], vec![10, 11]];
        let w = BehaviorInput::fresh_tensors(&zb, &twice, 8, &Device::Cpu).unwrap();
        assert!(BehaviorInput::new(w[PROJ].clone(), w[TABLE].clone(), w[ITEMS].clone()).is_err());
        let w = BehaviorInput::fresh_tensors(&zb, &[vec![1], vec![2]], 8, &Device::Cpu).unwrap();
        let wrong = Tensor::zeros((3, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(BehaviorInput::new(wrong, w[TABLE].clone(), w[ITEMS].clone()).is_err());
    }
}

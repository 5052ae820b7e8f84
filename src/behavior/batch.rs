//! The training examples of the behavior encoders (paper 3.2 and 4.1.2), built from the
//! training part of the leave-one-out split only: validation and test targets never enter.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::data::{Sample, Split};

/// Batches of similar length are formed inside pools of this many batches.
const POOL_BATCHES: usize = 50;

/// DIN's examples: every prefix of each training part → its next item (histories capped).
pub fn din_samples(split: &Split, max_history: usize) -> Vec<Sample> {
    split.train_samples(max_history)
}

/// One DIN training batch, right-padded: row r holds a history and its candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct DinBatch {
    /// Rows.
    pub size: usize,
    /// Padded history length.
    pub t: usize,
    /// Candidates per row: the positive (column 0) then the negatives.
    pub c: usize,
    /// `[size * t]` item ids, 0 where padded.
    pub hist: Vec<u32>,
    /// `[size * t]` 1 for a real history item, 0 for padding.
    pub mask: Vec<f32>,
    /// `[size * c]` candidate ids.
    pub cands: Vec<u32>,
}

/// Shuffled DIN batches with `negatives` items per positive drawn uniformly from the catalogue
/// (any item but the positive). Everything random comes from `rng`.
pub fn din_batches(
    samples: &[Sample],
    n_items: usize,
    negatives: usize,
    batch_size: usize,
    rng: &mut StdRng,
) -> Vec<DinBatch> {
    let lens: Vec<usize> = samples.iter().map(|s| s.history.len()).collect();
    let c = 1 + negatives;
    bucketed(&lens, batch_size, rng)
        .into_iter()
        .map(|rows| {
            let t = rows.iter().map(|&i| lens[i]).max().unwrap_or(1).max(1);
            let mut b = DinBatch {
                size: rows.len(),
                t,
                c,
                hist: vec![0; rows.len() * t],
                mask: vec![0.0; rows.len() * t],
                cands: Vec::with_capacity(rows.len() * c),
            };
            for (r, &i) in rows.iter().enumerate() {
                let s = &samples[i];
                b.hist[r * t..r * t + s.history.len()].copy_from_slice(&s.history);
                b.mask[r * t..r * t + s.history.len()].fill(1.0);
                b.cands.push(s.target);
                for _ in 0..negatives {
                    b.cands.push(sample_other(n_items, s.target, rng));
                }
            }
            b
        })
        .collect()
}

/// A uniformly random item other than `not` (any item when the catalogue has one).
fn sample_other(n_items: usize, not: u32, rng: &mut StdRng) -> u32 {
    if n_items < 2 {
        return 0;
    }
    // Uniform over the n - 1 others: draw from 0..n-1 and skip over `not`.
    let j = rng.random_range(0..n_items as u32 - 1);
    if j >= not {
        j + 1
    } else {
        j
    }
}

/// A stretch of one user's training part: position j of `inputs` predicts `targets[j]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub user: u32,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
}

/// SASRec's examples: each training part cut into windows of at most `max_len` inputs, from the
/// end backwards, so every training item after the first is a target exactly once (the same
/// targets as [`din_samples`]) and the most recent window is as long as possible.
pub fn sasrec_windows(split: &Split, max_len: usize) -> Vec<Window> {
    let max_len = max_len.max(1);
    let mut out = Vec::new();
    for (user, part) in (0u32..).zip(&split.train) {
        let mut end = part.len();
        while end >= 2 {
            let start = end.saturating_sub(max_len + 1);
            out.push(Window {
                user,
                inputs: part[start..end - 1].to_vec(),
                targets: part[start + 1..end].to_vec(),
            });
            if start == 0 {
                break;
            }
            end = start + 1;
        }
    }
    out
}

/// One SASRec batch of right-padded sequences; only real positions carry a target.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqBatch {
    pub size: usize,
    pub t: usize,
    /// `[size * t]` input ids, 0 where padded.
    pub ids: Vec<u32>,
    /// Flat positions `r * t + j` of the real inputs, row by row.
    pub positions: Vec<u32>,
    /// The next item at each of `positions`.
    pub targets: Vec<u32>,
}

/// Shuffled SASRec batches of `batch_size` windows.
pub fn sasrec_batches(windows: &[Window], batch_size: usize, rng: &mut StdRng) -> Vec<SeqBatch> {
    let lens: Vec<usize> = windows.iter().map(|w| w.inputs.len()).collect();
    bucketed(&lens, batch_size, rng)
        .into_iter()
        .map(|rows| {
            let t = rows.iter().map(|&i| lens[i]).max().unwrap_or(1).max(1);
            let mut b = SeqBatch {
                size: rows.len(),
                t,
                ids: vec![0; rows.len() * t],
                positions: Vec::new(),
                targets: Vec::new(),
            };
            for (r, &i) in rows.iter().enumerate() {
                let w = &windows[i];
                b.ids[r * t..r * t + w.inputs.len()].copy_from_slice(&w.inputs);
                b.positions
                    .extend((0..w.inputs.len()).map(|j| (r * t + j) as u32));
                b.targets.extend_from_slice(&w.targets);
            }
            b
        })
        .collect()
}

/// Right-pads histories into `[n * t]` ids; returns the ids and `t`.
pub fn pad_right(histories: &[&[u32]]) -> (Vec<u32>, usize) {
    let t = histories.iter().map(|h| h.len()).max().unwrap_or(1).max(1);
    let mut ids = vec![0u32; histories.len() * t];
    for (r, h) in histories.iter().enumerate() {
        ids[r * t..r * t + h.len()].copy_from_slice(h);
    }
    (ids, t)
}

/// Row indices in batches: shuffled, then inside pools of [`POOL_BATCHES`] batches sorted by
/// length (so a batch pads little), then the batch order shuffled again.
fn bucketed(lens: &[usize], batch_size: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.shuffle(rng);
    let mut batches = Vec::with_capacity(lens.len().div_ceil(batch_size));
    for pool in order.chunks_mut(batch_size * POOL_BATCHES) {
        // Stable sort keeps the shuffled order among equal lengths.
        pool.sort_by_key(|&i| lens[i]);
        batches.extend(pool.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(rng);
    batches
}

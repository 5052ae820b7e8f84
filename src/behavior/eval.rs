//! Full-ranking evaluation of the behavior encoders (paper 4.1.2: Recall@1/5/10, NDCG@5/10 over
//! the whole catalogue), and the behavior check of an item table: how often an item's nearest
//! neighbours co-occur with it in a training sequence, against random item pairs.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::Ranker;
use crate::data::Sample;
use crate::embed::neighbors::knn;
use crate::metrics::{MetricAccumulator, Metrics, NDCG_KS, RECALL_KS};

/// The deepest cut-off the metrics need.
pub const MAX_K: usize = 10;

/// Top-K selection over one score row.
pub struct TopK;

impl TopK {
    /// The `k` highest-scoring indices, best first; equal scores go to the lower index and NaN
    /// ranks last. One pass, no full sort.
    pub fn of(scores: &[f32], k: usize) -> Vec<u32> {
        let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
        let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
        if k == 0 {
            return Vec::new();
        }
        for (i, &s) in (0u32..).zip(scores) {
            let s = key(s);
            // Indices come in increasing order, so an equal score never displaces an earlier one.
            if best.len() == k && s <= best[k - 1].0 {
                continue;
            }
            let at = best.partition_point(|&(b, _)| b >= s);
            best.insert(at, (s, i));
            best.truncate(k);
        }
        best.into_iter().map(|(_, i)| i).collect()
    }
}

/// Full-ranking metrics of one split, under the primary protocol and with history excluded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The primary figures: every catalogue item ranked, history items included.
    pub all_items: Metrics,
    /// The same ranking with the user's history items removed first (the S3-Rec-style
    /// full-sort protocol), for comparison with published rows measured that way.
    pub history_excluded: Metrics,
}

/// Ranks the whole catalogue for each sample's history and scores the target's rank, with and
/// without the history's items in the ranking.
pub fn evaluate(model: &dyn Ranker, samples: &[Sample]) -> candle_core::Result<Evaluation> {
    evaluate_with(model, samples, &mut |_| {})
}

/// [`evaluate`], calling `done(users)` after each chunk of users (progress).
pub fn evaluate_with(
    model: &dyn Ranker,
    samples: &[Sample],
    done: &mut dyn FnMut(usize),
) -> candle_core::Result<Evaluation> {
    let histories: Vec<&[u32]> = samples.iter().map(|s| s.history.as_slice()).collect();
    let mut all = MetricAccumulator::new(&RECALL_KS, &NDCG_KS);
    let mut excl = MetricAccumulator::new(&RECALL_KS, &NDCG_KS);
    // Enough candidates that MAX_K remain after dropping the longest history.
    let k = MAX_K + histories.iter().map(|h| h.len()).max().unwrap_or(0);
    // 1,024 users per chunk: big enough for the matmul, small enough for a live progress bar.
    for (hs, ss) in histories.chunks(1024).zip(samples.chunks(1024)) {
        for (ranked, s) in top_k(model, hs, k)?.iter().zip(ss) {
            all.add(&ranked[..MAX_K.min(ranked.len())], s.target);
            let kept: Vec<u32> = ranked
                .iter()
                .copied()
                .filter(|i| !s.history.contains(i))
                .take(MAX_K)
                .collect();
            excl.add(&kept, s.target);
        }
        done(ss.len());
    }
    Ok(Evaluation {
        all_items: all.finish(),
        history_excluded: excl.finish(),
    })
}

/// The model's top-`k` items for each history.
pub fn top_k(
    model: &dyn Ranker,
    histories: &[&[u32]],
    k: usize,
) -> candle_core::Result<Vec<Vec<u32>>> {
    model.top_k(histories, k)
}

/// The co-occurrence check of an item table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cooccurrence {
    /// Neighbours per item (cosine similarity).
    pub k: usize,
    pub items: usize,
    /// Share of (item, neighbour) pairs that occur together in some training sequence.
    pub neighbor_rate: f64,
    /// The same share for uniformly random pairs of distinct items (exact expectation:
    /// mean over items of co-occurring items / (n - 1)).
    pub random_rate: f64,
    /// neighbor_rate / random_rate.
    pub lift: f64,
    /// Items that appear in at least one training sequence.
    pub items_in_training: usize,
}

/// For each item, its `k` nearest neighbours by cosine in `table`, and how often they share a
/// training sequence (`train`: each user's training part) with it, against random pairs.
pub fn cooccurrence_check(
    table: &Tensor,
    train: &[Vec<u32>],
    k: usize,
) -> candle_core::Result<Cooccurrence> {
    let n = table.dim(0)?;
    let adj = cooccurring(train, n);
    let nb = knn(table, k)?;
    let (mut hits, mut total) = (0usize, 0usize);
    for (i, list) in nb.iter().enumerate() {
        for &(j, _) in list {
            total += 1;
            if adj[i].binary_search(&j).is_ok() {
                hits += 1;
            }
        }
    }
    let random_rate = if n > 1 {
        adj.iter()
            .map(|a| a.len() as f64 / (n - 1) as f64)
            .sum::<f64>()
            / n as f64
    } else {
        0.0
    };
    let neighbor_rate = if total == 0 {
        0.0
    } else {
        hits as f64 / total as f64
    };
    let mut seen = vec![false; n];
    for seq in train {
        for &i in seq {
            if let Some(s) = seen.get_mut(i as usize) {
                *s = true;
            }
        }
    }
    Ok(Cooccurrence {
        k,
        items: n,
        neighbor_rate,
        random_rate,
        lift: if random_rate > 0.0 {
            neighbor_rate / random_rate
        } else {
            0.0
        },
        items_in_training: seen.iter().filter(|&&s| s).count(),
    })
}

/// Per item, the sorted distinct other items it shares at least one sequence with.
pub fn cooccurring(seqs: &[Vec<u32>], n_items: usize) -> Vec<Vec<u32>> {
    let mut adj: Vec<Vec<u32>> = vec![Vec::new(); n_items];
    for seq in seqs {
        let mut items: Vec<u32> = seq
            .iter()
            .copied()
            .filter(|&i| (i as usize) < n_items)
            .collect();
        items.sort_unstable();
        items.dedup();
        for &a in &items {
            adj[a as usize].extend(items.iter().copied().filter(|&b| b != a));
        }
    }
    for a in &mut adj {
        a.sort_unstable();
        a.dedup();
    }
    adj
}

//! Index statistics and prefix-sharing coherence checks (paper 3.2: items that share ID prefixes
//! should be similar): category agreement for semantic tokens, co-occurrence for behavior ones.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::ids::{Disambiguation, ItemIndex};
use crate::data::Dataset;

/// One token position of an index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelStats {
    pub level: String,
    /// Distinct tokens at this position.
    pub tokens_used: usize,
    /// The most items carrying one token at this position.
    pub largest_token: usize,
    /// Distinct ID prefixes up to and including this position.
    pub prefix_groups: usize,
    /// The most items sharing one such prefix.
    pub largest_prefix_group: usize,
}

/// How often a pair of items sharing a token has a property, against a random pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairRate {
    /// Over all pairs of items sharing the token.
    pub within: f64,
    /// Over all pairs of items.
    pub random: f64,
    /// `within / random`.
    pub lift: f64,
    /// How many pairs share the token.
    pub within_pairs: u64,
}

impl PairRate {
    fn new(hits: u64, pairs: u64, random: f64) -> PairRate {
        let within = if pairs > 0 {
            hits as f64 / pairs as f64
        } else {
            0.0
        };
        PairRate {
            within,
            random,
            lift: if random > 0.0 { within / random } else { 0.0 },
            within_pairs: pairs,
        }
    }
}

/// Coherence of the first token of one source (e.g. `s1`), computed exactly over all pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coherence {
    pub level: String,
    pub clusters: usize,
    /// The pair shares its second-level category ("Beauty,Makeup,..." → "Makeup").
    pub category2: PairRate,
    /// The pair shares its whole category path.
    pub category_path: PairRate,
    /// The pair co-occurs in some user's training sequence (validation and test targets are
    /// never looked at).
    pub cooccurrence: PairRate,
}

/// Everything `stats.json` reports about an index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexStats {
    pub items: usize,
    pub id_length_min: usize,
    pub id_length_max: usize,
    pub levels: Vec<LevelStats>,
    pub distinct_ids_before: usize,
    pub distinct_ids_after: usize,
    /// The most items sharing a whole ID before disambiguation.
    pub largest_leaf: usize,
    pub collisions: usize,
    pub collision_groups: usize,
    pub items_disambiguated: usize,
    /// Distinct tokens over all IDs: the vocabulary the LLM gains.
    pub vocab_size: usize,
    pub prefix_conflicts: usize,
    /// Present when the dataset was given.
    pub coherence: Vec<Coherence>,
}

/// Statistics of an index (already disambiguated by `d`), without the coherence checks.
pub fn index_stats(index: &ItemIndex, d: &Disambiguation) -> IndexStats {
    let mut order: Vec<usize> = (0..index.len()).collect();
    order.sort_by(|&a, &b| index.ids[a].cmp(&index.ids[b]));
    let levels = index
        .levels
        .iter()
        .enumerate()
        .map(|(j, name)| {
            let mut counts: HashMap<u32, usize> = HashMap::new();
            let (mut groups, mut largest, mut run) = (0, 0, 0);
            let mut prev: Option<&[u32]> = None;
            for &i in &order {
                let id = &index.ids[i];
                let Some(&t) = id.get(j) else { continue };
                *counts.entry(t).or_default() += 1;
                let prefix = &id[..=j];
                if prev == Some(prefix) {
                    run += 1;
                } else {
                    groups += 1;
                    run = 1;
                    prev = Some(prefix);
                }
                largest = largest.max(run);
            }
            LevelStats {
                level: name.clone(),
                tokens_used: counts.len(),
                largest_token: counts.values().copied().max().unwrap_or(0),
                prefix_groups: groups,
                largest_prefix_group: largest,
            }
        })
        .collect();
    IndexStats {
        items: index.len(),
        id_length_min: index.ids.iter().map(Vec::len).min().unwrap_or(0),
        id_length_max: index.ids.iter().map(Vec::len).max().unwrap_or(0),
        levels,
        distinct_ids_before: d.distinct_before,
        distinct_ids_after: d.distinct_after,
        largest_leaf: d.largest_group,
        collisions: d.collisions,
        collision_groups: d.groups,
        items_disambiguated: d.items_disambiguated,
        vocab_size: index.used_vocab().len(),
        prefix_conflicts: d.prefix_conflicts,
        coherence: Vec::new(),
    }
}

/// Pairs `(a, b)`, `a < b`, of distinct items that appear in one user's training sequence,
/// packed as `a << 32 | b`.
pub fn cooccurrence_pairs(train: &[Vec<u32>]) -> HashSet<u64> {
    let mut set = HashSet::new();
    for seq in train {
        let mut items: Vec<u32> = seq.clone();
        items.sort_unstable();
        items.dedup();
        for (x, &a) in items.iter().enumerate() {
            for &b in &items[x + 1..] {
                set.insert(((a as u64) << 32) | b as u64);
            }
        }
    }
    set
}

/// Same-label pair rate within each cluster against over all pairs, exactly.
fn label_rate(clusters: &[u32], labels: &[u32]) -> PairRate {
    let pairs = |c: u64| c * c.saturating_sub(1) / 2;
    let mut by_label: HashMap<u32, u64> = HashMap::new();
    let mut by_cluster: HashMap<u32, u64> = HashMap::new();
    let mut by_both: HashMap<(u32, u32), u64> = HashMap::new();
    for (&c, &l) in clusters.iter().zip(labels) {
        *by_label.entry(l).or_default() += 1;
        *by_cluster.entry(c).or_default() += 1;
        *by_both.entry((c, l)).or_default() += 1;
    }
    let all = pairs(labels.len() as u64);
    let random = if all > 0 {
        by_label.values().map(|&c| pairs(c)).sum::<u64>() as f64 / all as f64
    } else {
        0.0
    };
    let hits = by_both.values().map(|&c| pairs(c)).sum();
    let within = by_cluster.values().map(|&c| pairs(c)).sum();
    PairRate::new(hits, within, random)
}

/// Interns strings into dense labels.
fn intern<'a>(values: impl Iterator<Item = &'a str>) -> Vec<u32> {
    let mut map: HashMap<&str, u32> = HashMap::new();
    values
        .map(|v| {
            let next = map.len() as u32;
            *map.entry(v).or_insert(next)
        })
        .collect()
}

/// The coherence checks for the first token of every source of `index` (positions
/// `index.source_starts`), against the dataset's categories and training co-occurrences.
pub fn coherence(index: &ItemIndex, ds: &Dataset, train: &[Vec<u32>]) -> Vec<Coherence> {
    let n = index.len().min(ds.items.len());
    let cat2 = intern(
        ds.items[..n]
            .iter()
            .map(|it| it.categories.split(',').nth(1).map_or("", str::trim)),
    );
    let path = intern(ds.items[..n].iter().map(|it| it.categories.as_str()));
    let cooc = cooccurrence_pairs(train);
    let all_pairs = (n as u64) * (n as u64).saturating_sub(1) / 2;
    let cooc_random = if all_pairs > 0 {
        cooc.len() as f64 / all_pairs as f64
    } else {
        0.0
    };
    index
        .source_starts
        .iter()
        .filter(|&&p| p < index.levels.len())
        .map(|&p| {
            let clusters: Vec<u32> = index.ids[..n]
                .iter()
                .map(|id| id.get(p).copied().unwrap_or(u32::MAX))
                .collect();
            let sizes = clusters
                .iter()
                .fold(HashMap::<u32, u64>::new(), |mut m, &c| {
                    *m.entry(c).or_default() += 1;
                    m
                });
            let within: u64 = sizes.values().map(|&c| c * c.saturating_sub(1) / 2).sum();
            let hits = cooc
                .iter()
                .filter(|&&pair| {
                    let (a, b) = ((pair >> 32) as usize, (pair & 0xFFFF_FFFF) as usize);
                    a < n && b < n && clusters[a] == clusters[b]
                })
                .count() as u64;
            Coherence {
                level: index.levels[p].clone(),
                clusters: sizes.len(),
                category2: label_rate(&clusters, &cat2),
                category_path: label_rate(&clusters, &path),
                cooccurrence: PairRate::new(hits, within, cooc_random),
            }
        })
        .collect()
}

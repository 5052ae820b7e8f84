//! Hierarchical k-means codes (paper 3.2): level 1 clusters every item into k clusters, each
//! cluster is clustered again into k children, and so on; plus the conflict-free random codes
//! of the paper's Figure 5 "Random" baseline.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::kmeans::{kmeans, mix_seed, KMeansConfig};

/// Nodes at least this large (and every node of a level with fewer nodes than threads) are
/// clustered one at a time with every thread on their assignment steps; the others are
/// spread over the threads, one node per thread.
const BIG_NODE: usize = 16_384;

/// A node's child label per item, and the Lloyd iterations it took.
type NodeResult = (Vec<u32>, usize);

/// How many children a node of `m` items gets when `remaining` levels of its source are left
/// (this one included): `k` while the node has more than `k` items, else the smallest `c`
/// with `c^remaining >= m`, so the last level of a source separates every item (`c = m`) and
/// earlier ones spread the node over the levels left instead of leaving them constant.
pub fn children(m: usize, k: usize, remaining: usize) -> usize {
    if m > k {
        return k;
    }
    let mut c = 1usize;
    while c < m && c.saturating_pow(remaining.max(1) as u32) < m {
        c += 1;
    }
    c
}

/// Clusters one node (the rows `items` of `data`) into at most `kk` children; returns a child
/// label per item and the Lloyd iterations run. With `balanced` and `kk >= m`, each item gets
/// its own child in item order (k-means would only permute those labels).
fn cluster_node(
    data: &[f32],
    dim: usize,
    items: &[u32],
    kk: usize,
    cfg: &KMeansConfig,
    seed: u64,
    threads: usize,
) -> NodeResult {
    let m = items.len();
    if m <= 1 || kk <= 1 {
        return (vec![0; m], 0);
    }
    if cfg.balanced && kk >= m {
        return ((0..m as u32).collect(), 0);
    }
    let whole = m * dim == data.len();
    let gathered: Vec<f32>;
    let rows: &[f32] = if whole {
        // Only the root node (or a lone child holding every item) covers all rows, in order.
        data
    } else {
        let mut g = Vec::with_capacity(m * dim);
        for &i in items {
            let i = i as usize;
            g.extend_from_slice(&data[i * dim..(i + 1) * dim]);
        }
        gathered = g;
        &gathered
    };
    let c = kmeans(rows, dim, kk.min(m), cfg, seed, threads);
    (c.labels, c.iters)
}

/// How one level of a hierarchical k-means went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelReport {
    /// Nodes split at this level (nodes of one item included).
    pub nodes: usize,
    /// Nodes that ran k-means (the others were too small to need it).
    pub kmeans_runs: usize,
    pub mean_iters: f64,
    pub max_iters: usize,
    pub seconds: f64,
}

/// Hierarchical k-means over the `n = data.len() / dim` rows of `data`: `levels` codes per
/// item, row-major `[n, levels]`. Level `l` splits every node of level `l - 1` into
/// [`children`] children. Reproducible for a seed whatever the thread count; `progress` is
/// called with the number of items finished in a node.
#[allow(clippy::too_many_arguments)]
pub fn hierarchical_kmeans(
    data: &[f32],
    dim: usize,
    levels: usize,
    k: usize,
    cfg: &KMeansConfig,
    seed: u64,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> (Vec<u32>, Vec<LevelReport>) {
    let n = data.len() / dim.max(1);
    let mut codes = vec![0u32; n * levels];
    let mut reports = Vec::with_capacity(levels);
    let mut nodes: Vec<Vec<u32>> = vec![(0..n as u32).collect()];
    for level in 0..levels {
        let t0 = std::time::Instant::now();
        let lseed = mix_seed(seed, level as u64 + 1);
        let node_seed = |g: usize| mix_seed(lseed, g as u64);
        let kk = |g: usize| children(nodes[g].len(), k, levels - level);
        let mut labels: Vec<NodeResult> = vec![(Vec::new(), 0); nodes.len()];
        let (big, small): (Vec<usize>, Vec<usize>) =
            (0..nodes.len()).partition(|&g| nodes.len() < threads || nodes[g].len() >= BIG_NODE);
        for g in big {
            labels[g] = cluster_node(data, dim, &nodes[g], kk(g), cfg, node_seed(g), threads);
            progress(nodes[g].len() as u64);
        }
        let workers = threads.clamp(1, small.len().max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let done: Vec<Vec<(usize, NodeResult)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(&g) = small.get(j) else { break };
                            out.push((
                                g,
                                cluster_node(data, dim, &nodes[g], kk(g), cfg, node_seed(g), 1),
                            ));
                            progress(nodes[g].len() as u64);
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        for (g, l) in done.into_iter().flatten() {
            labels[g] = l;
        }
        let runs: Vec<usize> = labels
            .iter()
            .filter(|(_, it)| *it > 0)
            .map(|&(_, it)| it)
            .collect();
        reports.push(LevelReport {
            nodes: nodes.len(),
            kmeans_runs: runs.len(),
            mean_iters: runs.iter().sum::<usize>() as f64 / runs.len().max(1) as f64,
            max_iters: runs.iter().copied().max().unwrap_or(0),
            seconds: t0.elapsed().as_secs_f64(),
        });
        let mut next_nodes = Vec::with_capacity(nodes.len());
        for (node, (lab, _)) in nodes.iter().zip(&labels) {
            let kk = lab.iter().copied().max().map_or(0, |m| m as usize + 1);
            let mut kids: Vec<Vec<u32>> = vec![Vec::new(); kk];
            for (&item, &l) in node.iter().zip(lab) {
                codes[item as usize * levels + level] = l;
                kids[l as usize].push(item);
            }
            next_nodes.extend(kids.into_iter().filter(|c| !c.is_empty()));
        }
        nodes = next_nodes;
    }
    (codes, reports)
}

/// Random codes (paper Figure 5 "Random"): every level drawn uniformly from `0..k`, redrawn
/// (up to 64 times) while the whole code equals an earlier item's. Row-major `[n, levels]`.
pub fn random_codes(n: usize, levels: usize, k: usize, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen: HashSet<u64> = HashSet::with_capacity(n);
    let mut codes = vec![0u32; n * levels];
    for row in codes.chunks_exact_mut(levels.max(1)).take(n) {
        for _ in 0..64 {
            for c in row.iter_mut() {
                *c = rng.random_range(0..k as u32);
            }
            // A hash match of different codes only costs a redraw; equal codes always match.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            row.hash(&mut h);
            if seen.insert(h.finish()) {
                break;
            }
        }
    }
    codes
}

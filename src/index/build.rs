//! Hierarchical k-means codes (paper 3.2): level 1 clusters every item into k clusters, each
//! cluster is clustered again into k children, and so on; plus the conflict-free random codes
//! of the paper's Figure 5 "Random" baseline.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::kmeans::{kmeans, mix_seed, KMeansConfig};

/// Nodes at least this large are clustered one at a time with every thread on their
/// assignment steps; smaller ones are spread over the threads, one node per thread.
const BIG_NODE: usize = 16_384;

/// Clusters one node (the rows `items` of `data`) into at most `k` children; returns a child
/// label per item. Nodes of one item get label 0; with `balanced`, nodes of at most `k` items
/// give each item its own child in item order (k-means would only permute those labels).
fn cluster_node(
    data: &[f32],
    dim: usize,
    items: &[u32],
    k: usize,
    cfg: &KMeansConfig,
    seed: u64,
    threads: usize,
) -> Vec<u32> {
    let m = items.len();
    if m <= 1 {
        return vec![0; m];
    }
    if cfg.balanced && m <= k {
        return (0..m as u32).collect();
    }
    let whole = m * dim == data.len();
    let gathered: Vec<f32>;
    let rows: &[f32] = if whole {
        // The root node holds every item in order: no copy.
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
    kmeans(rows, dim, k.min(m), cfg, seed, threads).labels
}

/// Hierarchical k-means over the `n = data.len() / dim` rows of `data`: `levels` codes per
/// item, row-major `[n, levels]`. Level `l` splits every node of level `l - 1` into at most
/// `k` children (fewer when the node has fewer items). Reproducible for a seed whatever the
/// thread count; `progress` is called with the number of items finished in a node.
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
) -> Vec<u32> {
    let n = data.len() / dim.max(1);
    let mut codes = vec![0u32; n * levels];
    let mut nodes: Vec<Vec<u32>> = vec![(0..n as u32).collect()];
    for level in 0..levels {
        let lseed = mix_seed(seed, level as u64 + 1);
        let node_seed = |g: usize| mix_seed(lseed, g as u64);
        let mut labels: Vec<Vec<u32>> = vec![Vec::new(); nodes.len()];
        let (big, small): (Vec<usize>, Vec<usize>) =
            (0..nodes.len()).partition(|&g| nodes[g].len() >= BIG_NODE);
        for g in big {
            labels[g] = cluster_node(data, dim, &nodes[g], k, cfg, node_seed(g), threads);
            progress(nodes[g].len() as u64);
        }
        let workers = threads.clamp(1, small.len().max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let done: Vec<Vec<(usize, Vec<u32>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(&g) = small.get(j) else { break };
                            out.push((g, cluster_node(data, dim, &nodes[g], k, cfg, node_seed(g), 1)));
                            progress(nodes[g].len() as u64);
                        }
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        });
        for (g, l) in done.into_iter().flatten() {
            labels[g] = l;
        }
        let mut children_all = Vec::with_capacity(nodes.len());
        for (node, lab) in nodes.iter().zip(&labels) {
            let kk = lab.iter().copied().max().map_or(0, |m| m as usize + 1);
            let mut children: Vec<Vec<u32>> = vec![Vec::new(); kk];
            for (&item, &l) in node.iter().zip(lab) {
                codes[item as usize * levels + level] = l;
                children[l as usize].push(item);
            }
            children_all.extend(children.into_iter().filter(|c| !c.is_empty()));
        }
        nodes = children_all;
    }
    codes
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

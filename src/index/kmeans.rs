//! Flat k-means, the building block of the hierarchical item indexer (paper 3.2): k-means++
//! seeding, Lloyd iterations, empty-cluster repair and a capacity-balanced assignment.
//!
//! Matrices are plain row-major `&[f32]` slices with an explicit row width `dim`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Below this many rows a step runs on the calling thread (spawning would cost more).
const MIN_PAR_ROWS: usize = 2048;

/// How one flat k-means run behaves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KMeansConfig {
    /// Lloyd iterations at most.
    pub max_iters: usize,
    /// Stop once at most this fraction of the points changed cluster in an iteration.
    pub tol: f64,
    /// No cluster holds more than its fair share `ceil(n / k)` of the points.
    pub balanced: bool,
    /// Centroids are trained on a seeded sample of at most this many points per centroid;
    /// the final assignment always covers every point.
    pub max_points_per_centroid: usize,
    /// Balanced assignment: how many nearest centroids each point may be placed in before it
    /// falls back to a scan over every centroid with room left.
    pub candidates: usize,
}

impl Default for KMeansConfig {
    fn default() -> Self {
        KMeansConfig {
            max_iters: 25,
            tol: 1e-3,
            balanced: true,
            max_points_per_centroid: 256,
            candidates: 8,
        }
    }
}

/// The result of one flat k-means run.
#[derive(Debug, Clone)]
pub struct Clustering {
    /// Per point: its cluster in `0..k`.
    pub labels: Vec<u32>,
    /// Row-major `[k, dim]` centroids.
    pub centroids: Vec<f32>,
    /// Lloyd iterations run.
    pub iters: usize,
    /// Sum of squared distances of every point to its centroid.
    pub inertia: f64,
}

/// SplitMix64: derives independent, reproducible seeds (per level, per node) from one seed.
pub fn mix_seed(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Dot product with eight independent lanes, so the compiler vectorises it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Squared L2 norm of every row.
pub fn row_norms(data: &[f32], dim: usize) -> Vec<f32> {
    data.chunks_exact(dim).map(|r| dot(r, r)).collect()
}

/// Subtracts the column means from every row in place.
pub fn center_columns(data: &mut [f32], dim: usize) {
    let rows = data.len() / dim.max(1);
    if rows == 0 {
        return;
    }
    let mut mean = vec![0f64; dim];
    for row in data.chunks_exact(dim) {
        mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v as f64);
    }
    let mean: Vec<f32> = mean.iter().map(|m| (m / rows as f64) as f32).collect();
    for row in data.chunks_exact_mut(dim) {
        row.iter_mut().zip(&mean).for_each(|(v, m)| *v -= m);
    }
}

/// Scales every row to unit L2 norm in place (all-zero rows stay zero).
pub fn normalize_rows(data: &mut [f32], dim: usize) {
    for row in data.chunks_exact_mut(dim) {
        let n = dot(row, row).sqrt();
        if n > 0.0 {
            row.iter_mut().for_each(|v| *v /= n);
        }
    }
}

/// Runs `f(first_row, chunk)` over up to `threads` contiguous chunks of `out`, whose rows are
/// `width` values wide, on scoped threads. Results do not depend on the thread count.
pub fn par_rows<T: Send>(
    out: &mut [T],
    width: usize,
    threads: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let width = width.max(1);
    let rows = out.len() / width;
    if threads <= 1 || rows < MIN_PAR_ROWS {
        f(0, out);
        return;
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        for (c, chunk) in out.chunks_mut(per * width).enumerate() {
            let f = &f;
            s.spawn(move || f(c * per, chunk));
        }
    });
}

/// Squared distances from row `x` (squared norm `xn`) to every centroid, into `out`.
#[inline]
fn distances(x: &[f32], xn: f32, centroids: &[f32], cnorms: &[f32], dim: usize, out: &mut [f32]) {
    for ((o, c), &cn) in out.iter_mut().zip(centroids.chunks_exact(dim)).zip(cnorms) {
        *o = (xn + cn - 2.0 * dot(x, c)).max(0.0);
    }
}

/// The `m` nearest centroids of every row, nearest first: `(clusters, distances)`, `[n, m]`.
fn nearest(
    data: &[f32],
    norms: &[f32],
    centroids: &[f32],
    dim: usize,
    m: usize,
    threads: usize,
) -> (Vec<u32>, Vec<f32>) {
    let k = centroids.len() / dim;
    let n = norms.len();
    let cnorms = row_norms(centroids, dim);
    let mut best: Vec<(u32, f32)> = vec![(0, 0.0); n * m];
    par_rows(&mut best, m, threads, |first, chunk| {
        let mut d = vec![0f32; k];
        for (r, slot) in chunk.chunks_exact_mut(m).enumerate() {
            let i = first + r;
            distances(
                &data[i * dim..(i + 1) * dim],
                norms[i],
                centroids,
                &cnorms,
                dim,
                &mut d,
            );
            // Insertion into a sorted list of m: k is small and m smaller.
            let mut len = 0;
            for (c, &dc) in d.iter().enumerate() {
                if len == m && dc >= slot[m - 1].1 {
                    continue;
                }
                let mut p = len.min(m - 1);
                if len < m {
                    len += 1;
                }
                while p > 0 && slot[p - 1].1 > dc {
                    slot[p] = slot[p - 1];
                    p -= 1;
                }
                slot[p] = (c as u32, dc);
            }
        }
    });
    best.into_iter().unzip()
}

/// Assigns every row to a centroid: the nearest one, or with `balanced` the nearest one that
/// still has room (capacity `ceil(n / k)`), filling greedily in order of increasing distance.
/// Returns labels and each row's squared distance to its centroid.
pub fn assign(
    data: &[f32],
    norms: &[f32],
    centroids: &[f32],
    dim: usize,
    cfg: &KMeansConfig,
    threads: usize,
) -> (Vec<u32>, Vec<f32>) {
    let k = centroids.len() / dim;
    let n = norms.len();
    if !cfg.balanced || k <= 1 {
        return nearest(data, norms, centroids, dim, 1, threads);
    }
    // Candidate keys pack (distance bits, row * m + rank) into one u64; distances are >= 0,
    // so their bit patterns sort like the values.
    let mut m = cfg.candidates.clamp(1, k);
    while m > 1 && (n as u64) * (m as u64) > u32::MAX as u64 {
        m -= 1;
    }
    let (cand, cdist) = nearest(data, norms, centroids, dim, m, threads);
    let mut keys: Vec<u64> = cdist
        .iter()
        .enumerate()
        .map(|(j, d)| ((d.to_bits() as u64) << 32) | j as u64)
        .collect();
    keys.sort_unstable();
    let cap = n.div_ceil(k);
    let mut counts = vec![0usize; k];
    let mut labels = vec![u32::MAX; n];
    let mut dist = vec![0f32; n];
    for key in keys {
        let j = (key & 0xFFFF_FFFF) as usize;
        let (i, c) = (j / m, cand[j] as usize);
        if labels[i] == u32::MAX && counts[c] < cap {
            labels[i] = c as u32;
            dist[i] = cdist[j];
            counts[c] += 1;
        }
    }
    // Rows whose m candidates all filled up: nearest centroid with room left.
    let cnorms = row_norms(centroids, dim);
    let mut d = vec![0f32; k];
    for i in 0..n {
        if labels[i] != u32::MAX {
            continue;
        }
        distances(
            &data[i * dim..(i + 1) * dim],
            norms[i],
            centroids,
            &cnorms,
            dim,
            &mut d,
        );
        let mut best: Option<(usize, f32)> = None;
        for (c, &dc) in d.iter().enumerate() {
            if counts[c] < cap && best.is_none_or(|(_, b)| dc < b) {
                best = Some((c, dc));
            }
        }
        // Total capacity k * ceil(n / k) >= n, so some centroid always has room.
        let (c, dc) = best.unwrap_or((0, d[0]));
        labels[i] = c as u32;
        dist[i] = dc;
        counts[c] += 1;
    }
    (labels, dist)
}

/// k-means++ seeding: the first centre uniformly, each next one with probability proportional
/// to the squared distance to the nearest centre chosen so far. When every remaining point
/// sits on a centre (duplicates), the next centre is a uniformly drawn unchosen point.
pub fn kmeans_pp(
    data: &[f32],
    norms: &[f32],
    dim: usize,
    k: usize,
    rng: &mut StdRng,
    threads: usize,
) -> Vec<f32> {
    let n = norms.len();
    let mut chosen = vec![false; n];
    let mut centroids = Vec::with_capacity(k * dim);
    let first = rng.random_range(0..n);
    let mut mind = vec![f32::INFINITY; n];
    let mut next = first;
    for c in 0..k {
        chosen[next] = true;
        let centre = &data[next * dim..(next + 1) * dim];
        centroids.extend_from_slice(centre);
        if c + 1 == k {
            break;
        }
        let cn = norms[next];
        par_rows(&mut mind, 1, threads, |first_row, chunk| {
            for (r, md) in chunk.iter_mut().enumerate() {
                let i = first_row + r;
                let d = (norms[i] + cn - 2.0 * dot(&data[i * dim..(i + 1) * dim], centre)).max(0.0);
                if d < *md {
                    *md = d;
                }
            }
        });
        let total: f64 = mind
            .iter()
            .zip(&chosen)
            .filter(|(_, &ch)| !ch)
            .map(|(&d, _)| d as f64)
            .sum();
        next = if total > 0.0 {
            let mut r = rng.random::<f64>() * total;
            let mut pick = None;
            for (i, (&d, &ch)) in mind.iter().zip(&chosen).enumerate() {
                if ch || d <= 0.0 {
                    continue;
                }
                pick = Some(i);
                r -= d as f64;
                if r <= 0.0 {
                    break;
                }
            }
            pick.unwrap_or(0)
        } else {
            let free = n - (c + 1);
            let mut skip = rng.random_range(0..free.max(1));
            let mut pick = 0;
            for (i, &ch) in chosen.iter().enumerate() {
                if !ch {
                    if skip == 0 {
                        pick = i;
                        break;
                    }
                    skip -= 1;
                }
            }
            pick
        };
    }
    centroids
}

/// Recomputes centroids as the means of their rows. An empty cluster is re-seeded on the row
/// farthest from its own centroid among clusters of two or more; returns how many were.
fn update(data: &[f32], dim: usize, labels: &[u32], dist: &[f32], centroids: &mut [f32]) -> usize {
    let k = centroids.len() / dim;
    let mut sums = vec![0f64; k * dim];
    let mut counts = vec![0usize; k];
    for (row, &l) in data.chunks_exact(dim).zip(labels) {
        let l = l as usize;
        counts[l] += 1;
        for (s, &v) in sums[l * dim..(l + 1) * dim].iter_mut().zip(row) {
            *s += v as f64;
        }
    }
    for c in 0..k {
        if counts[c] > 0 {
            let inv = 1.0 / counts[c] as f64;
            for (o, &s) in centroids[c * dim..(c + 1) * dim]
                .iter_mut()
                .zip(&sums[c * dim..(c + 1) * dim])
            {
                *o = (s * inv) as f32;
            }
        }
    }
    let empty: Vec<usize> = (0..k).filter(|&c| counts[c] == 0).collect();
    if empty.is_empty() {
        return 0;
    }
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| dist[b].total_cmp(&dist[a]).then(a.cmp(&b)));
    let mut order = order.into_iter();
    let mut repaired = 0;
    for c in empty {
        for i in order.by_ref() {
            let from = labels[i] as usize;
            if counts[from] >= 2 {
                counts[from] -= 1;
                counts[c] = 1;
                centroids[c * dim..(c + 1) * dim].copy_from_slice(&data[i * dim..(i + 1) * dim]);
                repaired += 1;
                break;
            }
        }
    }
    repaired
}

/// Clusters the `n = data.len() / dim` rows into `k` clusters (`1 <= k <= n`), reproducibly
/// for a seed whatever the thread count.
pub fn kmeans(
    data: &[f32],
    dim: usize,
    k: usize,
    cfg: &KMeansConfig,
    seed: u64,
    threads: usize,
) -> Clustering {
    let n = data.len() / dim.max(1);
    let k = k.clamp(1, n.max(1));
    if n == 0 || k == 1 {
        let mut centroids = vec![0f32; dim];
        if n > 0 {
            update(data, dim, &vec![0; n], &vec![0.0; n], &mut centroids);
        }
        return Clustering {
            labels: vec![0; n],
            centroids,
            iters: 0,
            inertia: 0.0,
        };
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let norms = row_norms(data, dim);
    // Train on a sample when there are many points per centroid (as faiss does).
    let limit = cfg.max_points_per_centroid.max(1).saturating_mul(k);
    let sample: Option<(Vec<f32>, Vec<f32>)> = (n > limit).then(|| {
        let mut idx = rand::seq::index::sample(&mut rng, n, limit).into_vec();
        idx.sort_unstable();
        let mut rows = Vec::with_capacity(limit * dim);
        for &i in &idx {
            rows.extend_from_slice(&data[i * dim..(i + 1) * dim]);
        }
        let sn = idx.iter().map(|&i| norms[i]).collect();
        (rows, sn)
    });
    let (tdata, tnorms): (&[f32], &[f32]) = match &sample {
        Some((r, nn)) => (r, nn),
        None => (data, &norms),
    };
    let tn = tnorms.len();
    let mut centroids = kmeans_pp(tdata, tnorms, dim, k, &mut rng, threads);
    let mut prev: Vec<u32> = Vec::new();
    let mut iters = 0;
    for it in 0..cfg.max_iters {
        let (labels, dist) = assign(tdata, tnorms, &centroids, dim, cfg, threads);
        let changed = if it == 0 {
            tn
        } else {
            labels.iter().zip(&prev).filter(|(a, b)| a != b).count()
        };
        let repaired = update(tdata, dim, &labels, &dist, &mut centroids);
        iters = it + 1;
        prev = labels;
        if it > 0 && repaired == 0 && (changed as f64) <= cfg.tol * tn as f64 {
            break;
        }
    }
    let (labels, dist) = assign(data, &norms, &centroids, dim, cfg, threads);
    Clustering {
        labels,
        centroids,
        iters,
        inertia: dist.iter().map(|&d| d as f64).sum(),
    }
}

//! Nearest neighbours by cosine over an embedding table, and the category agreement@K check of
//! how much item semantics an embedding table carries.

use candle_core::{Device, Tensor, D};

/// For every row, the `k` most cosine-similar other rows (best first) with their similarity.
pub fn knn(table: &Tensor, k: usize) -> candle_core::Result<Vec<Vec<(u32, f32)>>> {
    let t = table
        .to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F32)?;
    let norm = t
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    let t = t.broadcast_div(&norm)?;
    let n = t.dim(0)?;
    let mut out = Vec::with_capacity(n);
    // Blocks of rows keep the similarity matrix small for large catalogues.
    let block = 1024;
    for start in (0..n).step_by(block) {
        let len = block.min(n - start);
        let sims: Vec<Vec<f32>> = t.narrow(0, start, len)?.matmul(&t.t()?)?.to_vec2()?;
        for (r, row) in sims.iter().enumerate() {
            let me = start + r;
            let mut idx: Vec<u32> = (0..n as u32).filter(|&j| j as usize != me).collect();
            let kk = k.min(idx.len());
            if kk == 0 {
                out.push(Vec::new());
                continue;
            }
            let cmp =
                |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
            idx.select_nth_unstable_by(kk - 1, cmp);
            idx.truncate(kk);
            idx.sort_by(cmp);
            out.push(idx.into_iter().map(|j| (j, row[j as usize])).collect());
        }
    }
    Ok(out)
}

/// How often a neighbour has the same label as its item (labels: e.g. full category paths),
/// and the exact expectation for uniformly random other items, `sum_c n_c (n_c - 1) / (N (N - 1))`.
pub fn label_agreement(neighbors: &[Vec<(u32, f32)>], labels: &[&str]) -> (f64, f64) {
    let (mut same, mut total) = (0usize, 0usize);
    for (i, nb) in neighbors.iter().enumerate() {
        for &(j, _) in nb {
            total += 1;
            if labels[i] == labels[j as usize] {
                same += 1;
            }
        }
    }
    let mut counts = std::collections::HashMap::new();
    for l in labels {
        *counts.entry(*l).or_insert(0usize) += 1;
    }
    let n = labels.len() as f64;
    let random = counts
        .values()
        .map(|&c| c as f64 * (c as f64 - 1.0))
        .sum::<f64>()
        / (n * (n - 1.0)).max(1.0);
    let observed = if total == 0 {
        0.0
    } else {
        same as f64 / total as f64
    };
    (observed, random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_finds_closest_and_agreement_is_exact() {
        let t = Tensor::new(
            &[[1f32, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]],
            &Device::Cpu,
        )
        .unwrap();
        let nb = knn(&t, 1).unwrap();
        let firsts: Vec<u32> = nb.iter().map(|v| v[0].0).collect();
        assert_eq!(firsts, vec![1, 0, 3, 2]);
        let (obs, rnd) = label_agreement(&nb, &["a", "a", "b", "b"]);
        assert_eq!(obs, 1.0);
        // 2 labels of 2 items: (2 + 2) / (4 * 3)
        assert!((rnd - 4.0 / 12.0).abs() < 1e-12);
    }
}

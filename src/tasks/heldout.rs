//! Held-out items: a seeded sample of the catalogue whose text the model never trains on, so
//! perplexity on it measures language ability kept, not text memorised (`llmbs ppl`).

use rand::SeedableRng;

/// `round(n_items * fraction)` distinct item indices drawn with a seeded `StdRng`, sorted; at
/// least one when `fraction > 0` (and the catalogue is not empty), all of them when
/// `fraction >= 1`, none when `fraction <= 0` (or NaN). The same arguments give the same items.
pub fn heldout_items(n_items: usize, fraction: f64, seed: u64) -> Vec<u32> {
    if n_items == 0 || fraction.is_nan() || fraction <= 0.0 {
        return Vec::new();
    }
    let k = ((n_items as f64 * fraction).round() as usize).clamp(1, n_items);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut items: Vec<u32> = rand::seq::index::sample(&mut rng, n_items, k)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    items.sort_unstable();
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_determinism() {
        assert!(heldout_items(100, 0.0, 0).is_empty());
        assert!(heldout_items(0, 0.5, 0).is_empty());
        assert_eq!(heldout_items(100, 0.001, 0).len(), 1);
        assert_eq!(heldout_items(100, 0.02, 0).len(), 2);
        assert_eq!(heldout_items(10, 1.5, 0), (0..10).collect::<Vec<u32>>());
        let a = heldout_items(12_101, 0.02, 7);
        assert_eq!(a.len(), 242);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a, heldout_items(12_101, 0.02, 7));
        assert_ne!(a, heldout_items(12_101, 0.02, 8));
    }
}

//! Synthetic embedding tables for tests and the indexing benchmark (paper 3.2 at scale): a
//! seeded Gaussian mixture, so the clusters have real structure to find.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Table;

/// One standard normal draw (Box-Muller).
fn normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// `n` rows of `dim` values: `centres` standard-normal centres, each row a uniformly drawn
/// centre plus normal noise of standard deviation `noise`.
pub fn gaussian_mixture(n: usize, dim: usize, centres: usize, noise: f32, seed: u64) -> Table {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres = centres.max(1);
    let c: Vec<f32> = (0..centres * dim).map(|_| normal(&mut rng)).collect();
    let mut data = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let ci = rng.random_range(0..centres);
        for v in &c[ci * dim..(ci + 1) * dim] {
            data.push(v + noise * normal(&mut rng));
        }
    }
    Table { rows: n, dim, data }
}

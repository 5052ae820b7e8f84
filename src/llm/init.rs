//! Seeded random weights (candle's CPU RNG cannot be seeded): tiny test models and
//! random-weight speed checks of a real model's shape.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};

use super::{Llama, LlamaConfig};

/// Fills every variable of `vm` from a seeded RNG, in name order: norms near 1, matrices
/// uniform in ±1/sqrt(fan_in). The same seed gives the same weights.
pub fn reseed(vm: &VarMap, seed: u64) -> candle_core::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = vm
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let vals: Vec<f32> = if shape.rank() == 1 {
            (0..n)
                .map(|_| 1.0 + rng.random_range(-0.1f32..0.1))
                .collect()
        } else {
            let fan_in = *shape.dims().last().unwrap_or(&1) as f32;
            let a = 1.0 / fan_in.sqrt();
            (0..n).map(|_| rng.random_range(-a..a)).collect()
        };
        let t = Tensor::from_vec(vals, shape, &Device::Cpu)?
            .to_dtype(var.dtype())?
            .to_device(var.device())?;
        var.set(&t)?;
    }
    Ok(())
}

/// A model of shape `cfg` with seeded random weights, and the `VarMap` holding them.
pub fn random_model(
    cfg: &LlamaConfig,
    seed: u64,
    dtype: DType,
    dev: &Device,
) -> candle_core::Result<(VarMap, Llama)> {
    let vm = VarMap::new();
    let model = Llama::new(cfg, VarBuilder::from_varmap(&vm, dtype, dev))?;
    reseed(&vm, seed)?;
    Ok((vm, model))
}

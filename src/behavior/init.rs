//! Seeded weights and dropout for the behavior encoders (paper 3.2): candle's CPU RNG cannot be
//! seeded, so every random number here comes from a `rand::rngs::StdRng`.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How one variable starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Every entry equal to this value.
    Const(f32),
    /// Uniform in ±a.
    Uniform(f32),
    /// Xavier/Glorot uniform from the two dimensions of a matrix `[out, in]`.
    Xavier,
}

/// Sets every variable of `vm` from a seeded RNG, in name order, as `rule(name, dims)` says.
/// The same seed and names give the same weights.
pub fn seeded_init(
    vm: &VarMap,
    seed: u64,
    rule: impl Fn(&str, &[usize]) -> Init,
) -> candle_core::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let data = vm
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let shape = var.shape().clone();
        let dims = shape.dims();
        let n = shape.elem_count();
        let vals: Vec<f32> = match rule(name, dims) {
            Init::Const(v) => vec![v; n],
            Init::Uniform(a) => (0..n).map(|_| rng.random_range(-a..=a)).collect(),
            Init::Xavier => {
                let (fan_out, fan_in) = match dims {
                    [o, i] => (*o, *i),
                    _ => (n, n),
                };
                let a = (6.0 / (fan_in + fan_out).max(1) as f32).sqrt();
                (0..n).map(|_| rng.random_range(-a..=a)).collect()
            }
        };
        let t = Tensor::from_vec(vals, shape, &Device::Cpu)?
            .to_dtype(var.dtype())?
            .to_device(var.device())?;
        var.set(&t)?;
    }
    Ok(())
}

/// Inverted dropout with a mask drawn from `rng`: each entry is zeroed with probability `p`,
/// the rest scaled by 1 / (1 - p). Differentiable (a product with a constant mask).
pub fn dropout(x: &Tensor, p: f32, rng: &mut StdRng) -> candle_core::Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

/// A snapshot of every variable's value (to keep the best epoch's weights).
pub fn snapshot(vm: &VarMap) -> candle_core::Result<Vec<(String, Tensor)>> {
    let data = vm
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
    let mut out = Vec::with_capacity(data.len());
    for (name, var) in data.iter() {
        out.push((name.clone(), var.as_tensor().copy()?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Puts a [`snapshot`] back.
pub fn restore(vm: &VarMap, snap: &[(String, Tensor)]) -> candle_core::Result<()> {
    let data = vm
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
    for (name, t) in snap {
        match data.get(name) {
            Some(var) => var.set(t)?,
            None => candle_core::bail!("snapshot has unknown variable {name}"),
        }
    }
    Ok(())
}

//! Turning loaded weights into trainable variables: which tensors train in each tuning mode,
//! seeded initialisation of new modules (candle's own initialisers cannot be seeded), and
//! restoring variables from checkpoint files.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};

use super::mixed::MixedPrecision;
use super::optim::{AdamW, AdamWConfig, Params};
use super::step::{StepConfig, Trainer};
use crate::config::train::{Stage, Tune};
use crate::llm::{Llama, Loaded, LoraConfig};

/// Whether the base weight `name` trains (is an f32 variable) in `stage` with `tune`: every
/// weight (full), or the embedding and LM head, which grow new token rows (LoRA, as PEFT's
/// `modules_to_save`); none in the anneal stage, which trains the adapter only. The behavior
/// input's projection trains in the initial stage whatever `tune` says.
pub fn trains(stage: Stage, tune: Tune, name: &str) -> bool {
    if name.starts_with(crate::llm::behavior_input::PREFIX) {
        // The projection trains with the ID rows; the behavior table and item IDs are data.
        return stage == Stage::Initial && name == crate::llm::behavior_input::PROJ;
    }
    match (stage, tune) {
        (Stage::Initial, Tune::Full) => true,
        (Stage::Initial, Tune::Lora) => {
            name == "model.embed_tokens.weight" || name == "lm_head.weight"
        }
        (Stage::Anneal, _) => false,
    }
}

/// A trainer of the initial stage without GCT over `loaded` (read with
/// `Loaded::load_with(.., dtype, |n| trains(Stage::Initial, tune, n))`): variables in f32, the
/// compute in `dtype` through [`MixedPrecision`] when it is not f32, a fresh seeded adapter
/// with `tune` lora. What the scale checks time; `llmbs train` builds the same parts.
pub fn trainer_for(
    loaded: &Loaded,
    tune: Tune,
    lora: &LoraConfig,
    dtype: DType,
    cfg: StepConfig,
    adamw: AdamWConfig,
) -> candle_core::Result<Trainer> {
    let dev = loaded
        .weights
        .get("model.embed_tokens.weight")
        .map(|t| t.device().clone())
        .unwrap_or(Device::Cpu);
    let mut weights = loaded.weights.clone();
    let base_vars = make_vars(&mut weights, |n| trains(Stage::Initial, tune, n))?;
    let mut model = Llama::new(&loaded.cfg, VarBuilder::from_tensors(weights, dtype, &dev))?;
    let lora_vm = match tune {
        Tune::Lora => {
            let vm = VarMap::new();
            model.attach_lora(lora, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
            seed_new_modules(&vm, cfg.seed ^ 0x10_4A)?;
            Some(vm)
        }
        Tune::Full => None,
    };
    let lora_vars = lora_vm
        .as_ref()
        .map(|vm| varmap_vars(vm, ""))
        .unwrap_or_default();
    let mixed = if dtype == DType::F32 {
        None
    } else {
        let l = lora_vm.map(|_| (lora.clone(), named(&lora_vars, "")));
        Some(MixedPrecision::new(
            dtype,
            &model,
            &named(&base_vars, ""),
            l,
        )?)
    };
    let params = params(vec![base_vars, lora_vars]);
    let opt = AdamW::new(adamw, &params)?;
    Ok(Trainer {
        model,
        params,
        gct: None,
        opt,
        cfg,
        step: 0,
        mixed,
        dp: None,
        teacher: None,
    })
}

/// Replaces every tensor of `weights` for which `trainable(name)` holds by a variable (the map
/// then holds the variable's tensor, so a model built from it trains it). Returns the
/// variables sorted by name.
pub fn make_vars(
    weights: &mut HashMap<String, Tensor>,
    trainable: impl Fn(&str) -> bool,
) -> candle_core::Result<Vec<(String, Var)>> {
    let mut names: Vec<String> = weights.keys().filter(|k| trainable(k)).cloned().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let t = weights[&n].to_dtype(DType::F32)?;
        let var = Var::from_tensor(&t)?;
        weights.insert(n.clone(), var.as_tensor().clone());
        out.push((n, var));
    }
    Ok(out)
}

/// The variables of a `VarMap`, sorted by name, with `prefix` prepended to each name.
pub fn varmap_vars(vm: &VarMap, prefix: &str) -> Vec<(String, Var)> {
    let data = vm.data().lock().map(|d| d.clone()).unwrap_or_default();
    let mut v: Vec<(String, Var)> = data
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub fn params(groups: Vec<Vec<(String, Var)>>) -> Params {
    let (names, vars) = groups.into_iter().flatten().unzip();
    Params { names, vars }
}

fn uniform(shape: &[usize], bound: f64, rng: &mut rand::rngs::StdRng) -> Vec<f32> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect()
}

/// Seeded initialisation of new modules, in name order: `lora_B` and biases zero (a fresh
/// adapter leaves the model unchanged), other matrices Kaiming-uniform ±1/sqrt(fan_in).
pub fn seed_new_modules(vm: &VarMap, seed: u64) -> candle_core::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (name, var) in varmap_vars(vm, "") {
        let dims = var.dims().to_vec();
        let vals = if name.contains("lora_B") || dims.len() == 1 {
            vec![0f32; var.elem_count()]
        } else {
            let fan_in = *dims.last().unwrap_or(&1) as f64;
            uniform(&dims, 1.0 / fan_in.sqrt(), &mut rng)
        };
        let t = Tensor::from_vec(vals, dims, &Device::Cpu)?
            .to_dtype(var.dtype())?
            .to_device(var.device())?;
        var.set(&t)?;
    }
    Ok(())
}

/// Sets every variable of `vars` from the tensor named `key(name)` in `path`.
pub fn restore(
    vars: &[(String, Var)],
    path: &Path,
    key: impl Fn(&str) -> String,
) -> anyhow::Result<()> {
    let dev = vars
        .first()
        .map(|v| v.1.device().clone())
        .unwrap_or(Device::Cpu);
    let map = candle_core::safetensors::load(path, &dev)
        .with_context(|| format!("reading {}", path.display()))?;
    for (name, var) in vars {
        let key = key(name);
        let t = map
            .get(&key)
            .with_context(|| format!("{}: missing tensor {key}", path.display()))?;
        if t.dims() != var.dims() {
            anyhow::bail!(
                "{}: {key} has shape {:?}, expected {:?}",
                path.display(),
                t.dims(),
                var.dims()
            );
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// The named tensors of `vars` with `strip` removed from the names (for saving).
pub fn named(vars: &[(String, Var)], strip: &str) -> HashMap<String, Tensor> {
    vars.iter()
        .map(|(n, v)| {
            (
                n.strip_prefix(strip).unwrap_or(n).to_string(),
                v.as_tensor().clone(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_vars_shares_storage_with_the_map() {
        let mut w: HashMap<String, Tensor> = HashMap::new();
        w.insert("a".into(), Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap());
        w.insert("b.norm".into(), Tensor::new(&[3f32], &Device::Cpu).unwrap());
        let vars = make_vars(&mut w, |n| n == "a").unwrap();
        assert_eq!(vars.len(), 1);
        vars[0]
            .1
            .set(&Tensor::new(&[5f32, 6.0], &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!(w["a"].to_vec1::<f32>().unwrap(), vec![5.0, 6.0]);
        assert!(!w["b.norm"].is_variable());
    }
}

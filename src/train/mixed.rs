//! Mixed precision for training (paper 4.1.3 trains in bf16 on GPUs): the forward and backward
//! run in bf16 while the variables, the optimizer and every checkpoint stay f32.
//!
//! Why this shape: the variables are the f32 master weights, and each step builds a bf16 model
//! whose trainable weights are differentiable casts of them (`to_dtype` passes gradients back
//! as f32), so AdamW, clipping, checkpoints and `--resume` are the f32 code paths unchanged.
//! Frozen weights are cast once (or loaded in bf16 directly: `Loaded::load_with`), so a frozen
//! base never exists in f32. bf16 needs no loss scaling (its exponent range is f32's); f16
//! would, so it is refused.
//!
//! With dtype f32 the same struct is the trainer's model recipe for data parallelism: each
//! rank's model is built from it with the rank's own variables (`MixedPrecision::replicate`).

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Result, Tensor, TensorId};
use candle_nn::VarBuilder;

use crate::llm::{Llama, LoraConfig};

/// What a step needs to build its low-precision model.
pub struct MixedPrecision {
    pub dtype: DType,
    /// Every base weight by HF name: trainable ones as their f32 variable tensors, frozen
    /// ones already in `dtype`.
    base: HashMap<String, Tensor>,
    /// The adapter's f32 variable tensors under `Llama::lora_keys` names.
    lora: Option<(LoraConfig, HashMap<String, Tensor>)>,
    /// Where the weights live and the model is built.
    device: Device,
}

impl MixedPrecision {
    /// `model` is the f32 training model (a merged adapter, if any, is part of its weights);
    /// `trainable` the base weights that are variables; `lora` the adapter being trained.
    pub fn new(
        dtype: DType,
        model: &Llama,
        trainable: &HashMap<String, Tensor>,
        lora: Option<(LoraConfig, HashMap<String, Tensor>)>,
    ) -> Result<Self> {
        if dtype == DType::F16 {
            candle_core::bail!(
                "f16 training needs loss scaling, which llmbs does not do: use bf16 or f32"
            );
        }
        let names: HashSet<&String> = trainable.keys().collect();
        let mut base = HashMap::new();
        for (name, t) in model.weights() {
            let t = match trainable.get(&name) {
                Some(v) => v.clone(),
                // Integer tensors (the behavior input's item IDs) keep their dtype.
                None if !t.dtype().is_float() => t.clone(),
                None => t.to_dtype(dtype)?.detach(),
            };
            base.insert(name, t);
        }
        if let Some(n) = names.iter().find(|n| !base.contains_key(**n)) {
            candle_core::bail!("trainable weight {n} is not a weight of the model");
        }
        Ok(Self {
            dtype,
            base,
            lora,
            device: model.device().clone(),
        })
    }

    /// The same recipe on `dev`, each tensor that is a key of `subst` (by id: the variables)
    /// replaced by its value, every other tensor copied to `dev`.
    pub fn replicate(&self, dev: &Device, subst: &HashMap<TensorId, Tensor>) -> Result<Self> {
        let move_map = |m: &HashMap<String, Tensor>| -> Result<HashMap<String, Tensor>> {
            m.iter()
                .map(|(k, t)| {
                    let t = match subst.get(&t.id()) {
                        Some(v) => v.clone(),
                        None => t.to_device(dev)?,
                    };
                    Ok((k.clone(), t))
                })
                .collect()
        };
        let lora = match &self.lora {
            Some((c, t)) => Some((c.clone(), move_map(t)?)),
            None => None,
        };
        Ok(Self {
            dtype: self.dtype,
            base: move_map(&self.base)?,
            lora,
            device: dev.clone(),
        })
    }

    /// The model for one step, in `self.dtype`; gradients of its trainable weights reach the
    /// f32 variables. `like` gives the config.
    pub fn model(&self, like: &Llama) -> Result<Llama> {
        self.model_in(like, self.dtype)
    }

    /// Whether frozen weights are held in the low precision (a LoRA or anneal base): building
    /// the model in f32 would then make an f32 copy of them every step.
    pub fn has_low_precision_frozen(&self) -> bool {
        self.base.values().any(|t| t.dtype() != DType::F32)
    }

    /// [`MixedPrecision::model`] in `dtype` (f32 for a CPU whose matmuls take bf16 inputs).
    pub fn model_in(&self, like: &Llama, dtype: DType) -> Result<Llama> {
        let vb = VarBuilder::from_tensors(self.base.clone(), dtype, &self.device);
        let mut m = Llama::new(like.config(), vb)?;
        if let Some((cfg, t)) = &self.lora {
            m.attach_lora_from(cfg, t)?;
        }
        Ok(m)
    }
}

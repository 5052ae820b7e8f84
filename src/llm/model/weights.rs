//! Adapter and weight plumbing of the decoder: attaching a saved LoRA adapter, merging it, and
//! exporting every weight under its Hugging Face name (checkpoints, `llmbs merge`).

use std::collections::{HashMap, HashSet};

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::{Block, Llama, LoraConfig, Proj};

impl Block {
    /// The seven projections as `(group, name, proj)`, named as in the HF checkpoint keys
    /// (`model.layers.{i}.{group}.{name}.weight`).
    pub(super) fn projs(&self) -> [(&'static str, &'static str, &Proj); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            ("self_attn", "q_proj", &a.q_proj),
            ("self_attn", "k_proj", &a.k_proj),
            ("self_attn", "v_proj", &a.v_proj),
            ("self_attn", "o_proj", &a.o_proj),
            ("mlp", "gate_proj", &m.gate_proj),
            ("mlp", "up_proj", &m.up_proj),
            ("mlp", "down_proj", &m.down_proj),
        ]
    }

    pub(super) fn projs_mut(&mut self) -> [(&'static str, &'static str, &mut Proj); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            ("self_attn", "q_proj", &mut a.q_proj),
            ("self_attn", "k_proj", &mut a.k_proj),
            ("self_attn", "v_proj", &mut a.v_proj),
            ("self_attn", "o_proj", &mut a.o_proj),
            ("mlp", "gate_proj", &mut m.gate_proj),
            ("mlp", "up_proj", &mut m.up_proj),
            ("mlp", "down_proj", &mut m.down_proj),
        ]
    }
}

impl Llama {
    /// The names `attach_lora` reads for `cfg` on this model, in layer order.
    pub fn lora_keys(&self, cfg: &LoraConfig) -> Vec<String> {
        let mut keys = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (group, name, _) in layer.projs() {
                if cfg.target_modules.iter().any(|m| m == name) {
                    for ab in ["lora_A", "lora_B"] {
                        keys.push(format!("model.layers.{i}.{group}.{name}.{ab}.weight"));
                    }
                }
            }
        }
        keys
    }

    /// Attaches an adapter from tensors keyed as [`Llama::lora_keys`] names them (what
    /// `llm::peft::load_adapter` returns). Every expected key must be there and nothing else,
    /// so an adapter for another model or another `target_modules` is refused, naming the key.
    pub fn attach_lora_from(
        &mut self,
        cfg: &LoraConfig,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<()> {
        let expected = self.lora_keys(cfg);
        if let Some(k) = expected.iter().find(|k| !tensors.contains_key(*k)) {
            candle_core::bail!("adapter tensor {k} is missing");
        }
        let known: HashSet<&str> = expected.iter().map(|k| k.as_str()).collect();
        let mut extra: Vec<&String> = tensors
            .keys()
            .filter(|k| !known.contains(k.as_str()))
            .collect();
        extra.sort();
        if let Some(k) = extra.first() {
            candle_core::bail!(
                "adapter tensor {k} has no place in this model ({} layers, target_modules {:?})",
                self.layers.len(),
                cfg.target_modules
            );
        }
        let vb = VarBuilder::from_tensors(tensors.clone(), self.dtype(), self.device());
        self.attach_lora(cfg, vb)
    }

    /// Whether any projection carries a LoRA adapter.
    pub fn has_adapter(&self) -> bool {
        self.layers
            .iter()
            .any(|l| l.projs().iter().any(|(_, _, p)| p.has_lora()))
    }

    /// The attached adapter's tensors under [`Llama::lora_keys`] names (what
    /// `llm::peft::save_adapter` takes); empty without an adapter.
    pub fn adapter_weights(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (group, name, proj) in layer.projs() {
                if let Some((a, b)) = proj.lora_weights() {
                    let p = format!("model.layers.{i}.{group}.{name}");
                    out.insert(format!("{p}.lora_A.weight"), a.clone());
                    out.insert(format!("{p}.lora_B.weight"), b.clone());
                }
            }
        }
        out
    }

    /// Folds every adapter into its projection (`W += scale * B A`) and removes it: the
    /// result runs as a plain model, whatever `set_adapter_enabled` says.
    pub fn merge_adapter(&mut self) -> Result<()> {
        for layer in self.layers.iter_mut() {
            for (_, _, proj) in layer.projs_mut() {
                proj.merge()?;
            }
        }
        Ok(())
    }

    /// Every weight under its Hugging Face name, so the model can be written as an HF
    /// directory; `lm_head.weight` only when untied (transformers re-ties it on load). An
    /// attached, unmerged adapter is not included (see [`Llama::merge_adapter`]).
    pub fn weights(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        out.insert(
            "model.embed_tokens.weight".into(),
            self.embed_tokens.clone(),
        );
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.insert(
                format!("{p}.input_layernorm.weight"),
                layer.input_layernorm.weight.clone(),
            );
            out.insert(
                format!("{p}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.weight.clone(),
            );
            for (group, name, proj) in layer.projs() {
                out.insert(format!("{p}.{group}.{name}.weight"), proj.weight().clone());
            }
        }
        out.insert("model.norm.weight".into(), self.norm.weight.clone());
        if !self.cfg.tie_word_embeddings {
            out.insert("lm_head.weight".into(), self.lm_head.clone());
        }
        if let Some(b) = &self.behavior {
            out.extend(b.weights().map(|(k, t)| (k.to_string(), t)));
        }
        out
    }
}

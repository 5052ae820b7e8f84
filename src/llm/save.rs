//! Writing a model as a Hugging Face directory (`config.json`, `tokenizer.json`,
//! `model.safetensors`) that both our loader and `transformers.LlamaForCausalLM` read: the
//! checkpoint format of a run and the output of `llmbs merge`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::LlamaConfig;
use crate::util::{atomic_write, atomic_write_with};

/// `config.json` for `cfg`: our fields (unset optional ones left out rather than written as
/// null) plus what transformers needs to pick the class (`architectures`, `model_type`,
/// `hidden_act`) and the weights' dtype.
pub fn hf_config_json(cfg: &LlamaConfig, dtype: DType) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(cfg).context("serialising the model config")?;
    let obj = v
        .as_object_mut()
        .context("model config did not serialise to an object")?;
    obj.retain(|_, x| !x.is_null());
    obj.insert(
        "architectures".into(),
        serde_json::json!(["LlamaForCausalLM"]),
    );
    obj.insert("model_type".into(), "llama".into());
    obj.insert("hidden_act".into(), "silu".into());
    obj.insert("attention_bias".into(), false.into());
    obj.insert("mlp_bias".into(), false.into());
    let dt = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    };
    obj.insert("torch_dtype".into(), dt.into());
    Ok(v)
}

/// Writes `weights` (HF names, e.g. from [`crate::llm::Llama::weights`]) as a Hugging Face
/// directory. Files are written atomically and `model.safetensors` last, so a directory that
/// has it (what `llmbs eval` looks for) is complete. Tensors keep their dtype.
pub fn save_hf_dir(
    dir: &Path,
    cfg: &LlamaConfig,
    tokenizer: &Tokenizer,
    weights: &HashMap<String, Tensor>,
) -> anyhow::Result<()> {
    let embed = weights
        .get("model.embed_tokens.weight")
        .with_context(|| format!("{}: no model.embed_tokens.weight to save", dir.display()))?;
    let rows = embed.dim(0)?;
    if rows != cfg.vocab_size {
        anyhow::bail!(
            "{}: embedding has {rows} rows but the config says vocab_size {}",
            dir.display(),
            cfg.vocab_size
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut text = serde_json::to_string_pretty(&hf_config_json(cfg, embed.dtype())?)?;
    text.push('\n');
    atomic_write(&dir.join("config.json"), text.as_bytes())?;
    let tok_path = dir.join("tokenizer.json");
    atomic_write_with(&tok_path, |tmp| {
        tokenizer
            .save(tmp, false)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))
    })?;
    let mut out: Vec<(&str, Tensor)> = Vec::with_capacity(weights.len());
    for (k, t) in weights {
        let t = t
            .to_device(&Device::Cpu)
            .and_then(|t| t.contiguous())
            .with_context(|| format!("{k}: copying to CPU"))?;
        out.push((k.as_str(), t));
    }
    out.sort_by(|a, b| a.0.cmp(b.0));
    let path = dir.join("model.safetensors");
    atomic_write_with(&path, |tmp| {
        // What `save_pretrained` writes; transformers 4.x checks the "format" it names.
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(out.iter().map(|(k, t)| (*k, t)), Some(meta), tmp)
            .with_context(|| format!("writing {}", tmp.display()))
    })
}

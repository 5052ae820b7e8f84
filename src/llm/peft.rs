//! LoRA adapters on disk in Python PEFT's layout (`adapter_config.json` +
//! `adapter_model.safetensors`), so the paper's Annealing Adapter (3.4.2) trained here loads with
//! `peft.PeftModel.from_pretrained`, and adapters made with PEFT load here.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Map, Value};

use super::LoraConfig;
use crate::util::atomic_write_with;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// What `peft.get_peft_model_state_dict` puts before a `LlamaForCausalLM` parameter name:
/// `PeftModel.base_model` (the `LoraModel`) then its `.model` (the wrapped HF model).
pub const PEFT_PREFIX: &str = "base_model.model.";

const ATTN: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
const MLP: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// A LoRA tensor name of ours, `model.layers.{i}.{group}.{module}.lora_{A|B}.weight`, taken
/// apart: `(layer, module, is_a)`. `None` for anything else (including PEFT's in-memory
/// `.lora_A.default.weight`, which never appears in a saved adapter).
fn parse_lora_key(key: &str) -> Option<(usize, &str, bool)> {
    let rest = key.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (group, rest) = rest.split_once('.')?;
    let (module, rest) = rest.split_once('.')?;
    let is_a = match rest {
        "lora_A.weight" => true,
        "lora_B.weight" => false,
        _ => return None,
    };
    let ok = match group {
        "self_attn" => ATTN.contains(&module),
        "mlp" => MLP.contains(&module),
        _ => false,
    };
    ok.then_some((layer, module, is_a))
}

/// Checks one adapter tensor against the config: a LoRA name, a targeted module, rank-2 with
/// `r` where LoRA puts it (`lora_A` [r, in], `lora_B` [out, r]).
fn check_tensor(cfg: &LoraConfig, key: &str, t: &Tensor) -> anyhow::Result<()> {
    let (_, module, is_a) = parse_lora_key(key).with_context(|| {
        format!("{key}: not a LoRA tensor name (expected model.layers.N.self_attn|mlp.MODULE.lora_A|lora_B.weight)")
    })?;
    if !cfg.target_modules.iter().any(|m| m == module) {
        anyhow::bail!(
            "{key}: module {module} is not in target_modules {:?}",
            cfg.target_modules
        );
    }
    let (d0, d1) = t
        .dims2()
        .with_context(|| format!("{key}: expected a matrix, got shape {:?}", t.dims()))?;
    let r = if is_a { d0 } else { d1 };
    if r != cfg.r {
        anyhow::bail!(
            "{key}: shape [{d0}, {d1}] does not have rank r = {} in its {} dimension",
            cfg.r,
            if is_a { "first" } else { "second" }
        );
    }
    Ok(())
}

/// `lora_alpha` as PEFT types it (an int) when it is integral, so the file reads like PEFT's.
fn alpha_json(alpha: f64) -> Value {
    if alpha.fract() == 0.0 && alpha.abs() < 1e15 {
        json!(alpha as i64)
    } else {
        json!(alpha)
    }
}

/// The `adapter_config.json` PEFT writes for a LoRA on a causal LM. Only fields that PEFT has
/// had since 0.9 are written (newer versions default the rest; older ones refuse unknown
/// keys), in PEFT's sorted order.
pub fn adapter_config_json(cfg: &LoraConfig, base_model: &str) -> Value {
    // Through the shortest decimal of the f32, so 0.05 is written as 0.05, not 0.0500000007.
    let dropout: f64 = format!("{}", cfg.lora_dropout)
        .parse()
        .unwrap_or(cfg.lora_dropout as f64);
    json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": alpha_json(cfg.lora_alpha),
        "lora_dropout": dropout,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": cfg.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": cfg.target_modules,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false,
    })
}

/// Writes `tensors` (keyed by our names, e.g. `model.layers.0.self_attn.q_proj.lora_A.weight`,
/// as [`crate::llm::Llama::adapter_weights`] gives them) into `dir` as a PEFT adapter: f32 CPU
/// tensors under `base_model.model.` + name, with `{"format": "pt"}` metadata as
/// `safetensors.torch.save_file` writes. Each file is written atomically, the config last, so a
/// directory holding `adapter_config.json` always holds the matching weights.
pub fn save_adapter(
    dir: &Path,
    cfg: &LoraConfig,
    base_model: &str,
    tensors: &HashMap<String, Tensor>,
) -> anyhow::Result<()> {
    if tensors.is_empty() {
        anyhow::bail!("{}: no adapter tensors to save", dir.display());
    }
    let mut out: Vec<(String, Tensor)> = Vec::with_capacity(tensors.len());
    for (k, t) in tensors {
        check_tensor(cfg, k, t).with_context(|| format!("saving adapter to {}", dir.display()))?;
        let t = t
            .to_device(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.contiguous())
            .with_context(|| format!("{k}: copying to CPU f32"))?;
        out.push((format!("{PEFT_PREFIX}{k}"), t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let weights = dir.join(ADAPTER_WEIGHTS);
    atomic_write_with(&weights, |tmp| {
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(out.iter().map(|(k, t)| (k.as_str(), t)), Some(meta), tmp)
            .with_context(|| format!("writing {}", tmp.display()))
    })?;
    let mut text = serde_json::to_string_pretty(&adapter_config_json(cfg, base_model))?;
    text.push('\n');
    crate::util::atomic_write(&dir.join(ADAPTER_CONFIG), text.as_bytes())
}

/// A field of `adapter_config.json` that must be absent, null, false, empty or equal to
/// `allowed`: the PEFT options llmbs does not implement.
fn require_default(obj: &Map<String, Value>, key: &str, allowed: &Value) -> anyhow::Result<()> {
    let v = match obj.get(key) {
        None | Some(Value::Null) => return Ok(()),
        Some(v) => v,
    };
    let trivial = match v {
        Value::Bool(b) => !b,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    if trivial || v == allowed {
        return Ok(());
    }
    anyhow::bail!("{key} = {v} is not supported by llmbs (only plain LoRA)")
}

/// Parses and checks an `adapter_config.json` (text already read; `name` for errors).
pub fn parse_adapter_config(text: &str) -> anyhow::Result<(LoraConfig, String)> {
    let v: Value = serde_json::from_str(text).context("malformed JSON")?;
    let obj = v.as_object().context("not a JSON object")?;
    match obj.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => anyhow::bail!("peft_type is {other:?}, expected \"LORA\""),
    }
    for (key, allowed) in [
        ("bias", json!("none")),
        ("fan_in_fan_out", Value::Null),
        ("use_rslora", Value::Null),
        ("use_dora", Value::Null),
        ("modules_to_save", Value::Null),
        ("rank_pattern", Value::Null),
        ("alpha_pattern", Value::Null),
        ("layers_to_transform", Value::Null),
        ("lora_bias", Value::Null),
        ("layer_replication", Value::Null),
        ("trainable_token_indices", Value::Null),
        ("target_parameters", Value::Null),
    ] {
        require_default(obj, key, &allowed)?;
    }
    let r = obj
        .get("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .context("r: missing or not a positive integer")? as usize;
    let lora_alpha = obj
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .context("lora_alpha: missing or not a number")?;
    let lora_dropout = obj
        .get("lora_dropout")
        .map(|d| d.as_f64().context("lora_dropout: not a number"))
        .transpose()?
        .unwrap_or(0.0) as f32;
    let target_modules = match obj.get("target_modules") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|m| m.as_str().map(String::from))
            .collect::<Option<Vec<String>>>()
            .context("target_modules: not a list of strings")?,
        Some(Value::String(s)) => {
            anyhow::bail!("target_modules = {s:?}: a regex is not supported, list the module names")
        }
        _ => anyhow::bail!("target_modules: missing"),
    };
    if let Some(m) = target_modules
        .iter()
        .find(|m| !ATTN.contains(&m.as_str()) && !MLP.contains(&m.as_str()))
    {
        anyhow::bail!("target_modules has {m:?}; llmbs adapts only {ATTN:?} and {MLP:?}");
    }
    let base = obj
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let cfg = LoraConfig {
        r,
        lora_alpha,
        lora_dropout,
        target_modules,
    };
    Ok((cfg, base))
}

/// Reads a PEFT adapter directory: its config and its tensors under our names (the
/// `base_model.model.` prefix stripped), on `device` in `dtype`. Anything that is not a LoRA
/// tensor of a targeted module, with rank `r`, is an error naming the file and the key.
pub fn load_adapter(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<(LoraConfig, HashMap<String, Tensor>)> {
    let cfg_path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("reading {}", cfg_path.display()))?;
    let (cfg, _) =
        parse_adapter_config(&text).with_context(|| format!("{}", cfg_path.display()))?;
    let path = dir.join(ADAPTER_WEIGHTS);
    if !path.is_file() {
        anyhow::bail!(
            "{}: missing (only the safetensors form of a PEFT adapter is read)",
            path.display()
        );
    }
    let raw = candle_core::safetensors::load(&path, device)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut tensors = HashMap::with_capacity(raw.len());
    for (key, t) in raw {
        let name = key.strip_prefix(PEFT_PREFIX).with_context(|| {
            format!(
                "{}: tensor {key} lacks PEFT's {PEFT_PREFIX:?} prefix",
                path.display()
            )
        })?;
        check_tensor(&cfg, name, &t).with_context(|| format!("{}: {key}", path.display()))?;
        let t = t
            .to_dtype(dtype)
            .with_context(|| format!("{}: {key}", path.display()))?;
        tensors.insert(name.to_string(), t);
    }
    if tensors.is_empty() {
        anyhow::bail!("{}: no tensors", path.display());
    }
    Ok((cfg, tensors))
}

/// Whether `dir` holds a PEFT adapter (its config; the weights are written before it).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_key_names() {
        assert_eq!(
            parse_lora_key("model.layers.3.self_attn.q_proj.lora_A.weight"),
            Some((3, "q_proj", true))
        );
        assert_eq!(
            parse_lora_key("model.layers.0.mlp.down_proj.lora_B.weight"),
            Some((0, "down_proj", false))
        );
        for bad in [
            "model.layers.0.self_attn.q_proj.lora_A.default.weight",
            "model.layers.0.mlp.q_proj.lora_A.weight",
            "model.layers.x.mlp.up_proj.lora_A.weight",
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ] {
            assert_eq!(parse_lora_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn config_refuses_what_llmbs_does_not_do() {
        let ok = adapter_config_json(&LoraConfig::default(), "m").to_string();
        assert!(parse_adapter_config(&ok).is_ok());
        for (k, v) in [
            ("peft_type", json!("IA3")),
            ("use_rslora", json!(true)),
            ("use_dora", json!(true)),
            ("bias", json!("all")),
            ("modules_to_save", json!(["lm_head"])),
            ("rank_pattern", json!({"q_proj": 4})),
            ("target_modules", json!(".*proj")),
            ("target_modules", json!(["lm_head"])),
        ] {
            let mut c = adapter_config_json(&LoraConfig::default(), "m");
            c[k] = v.clone();
            let e = parse_adapter_config(&c.to_string()).unwrap_err();
            assert!(format!("{e:#}").contains(k), "{k}={v}: {e:#}");
        }
    }
}
